//! A daemon on loopback and small protocol clients for the tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use orchestrator::clock::Clock;
use orchestrator::{Config, Daemon};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// The admin token of every test daemon. Requests of these helpers carry it unless
/// they carry an Authorization header of their own, or `NO_AUTH`.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// An extra header line that makes a helper send no Authorization at all.
pub const NO_AUTH: &str = "X-Test-No-Auth: 1\r\n";

/// A daemon with its own data directory and TFTP root.
pub struct TestServer {
    pub daemon: Daemon,
    pub root: tempfile::TempDir,
    /// The daemon's data_dir (store, chunks, images).
    pub data: tempfile::TempDir,
}

/// Bytes of the fake iPXE binaries in every test root (not real programs; the e2e
/// layer uses Debian's).
pub fn fake_binary(name: &str, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(name.len() as u8))
        .collect()
}

/// Start a daemon on 127.0.0.1 (all ports ephemeral). `extra` is appended to the TOML.
pub async fn start(extra: &str) -> TestServer {
    start_in(tempfile::tempdir().unwrap(), extra).await
}

/// Start a daemon on the data directory `data` (a restart keeps the store, the images
/// and the secret).
pub async fn start_in(data: tempfile::TempDir, extra: &str) -> TestServer {
    start_on(data, extra, Clock::system()).await
}

/// Start a daemon whose calendar runs on `clock` (the simulator's).
pub async fn start_on(data: tempfile::TempDir, extra: &str, clock: Clock) -> TestServer {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(
        root.path().join("undionly.kpxe"),
        fake_binary("undionly.kpxe", 70_000),
    )
    .unwrap();
    std::fs::write(
        root.path().join("snponly.efi"),
        fake_binary("snponly.efi", 200_001),
    )
    .unwrap();
    // `dhcp.KEY = VALUE` lines of `extra` go into the [dhcp] table below.
    let dhcp_extra: String = extra
        .lines()
        .filter_map(|l| l.strip_prefix("dhcp."))
        .map(|l| format!("{l}\n"))
        .collect();
    let extra: String = extra
        .lines()
        .filter(|l| !l.starts_with("dhcp."))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!(
        "data_dir = \"{data}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [dhcp]\nserver_ip = \"127.0.0.1\"\nlisten = \"127.0.0.1:0\"\npxe_listen = \"127.0.0.1:0\"\nbroadcast = \"127.0.0.1:9\"\n{dhcp_extra}\
         [tftp]\nlisten = \"127.0.0.1:0\"\nroot = \"{root}\"\nmtu = 1500\n\
         {restore}[api]\ntoken = \"{ADMIN_TOKEN}\"\n{extra}",
        data = data.path().display(),
        root = root.path().display(),
        // The disk restores write, unless the test has a [restore] of its own.
        restore = if extra.contains("[restore]") {
            ""
        } else {
            "[restore]\ndisk = \"/dev/vda\"\n"
        },
    );
    let config = Config::parse(&text, Path::new("test.toml")).expect("test config is valid");
    let daemon = Daemon::start_with_clock(config, clock)
        .await
        .expect("daemon starts");
    TestServer { daemon, root, data }
}

impl TestServer {
    pub fn dhcp(&self) -> SocketAddr {
        self.daemon.dhcp_addrs.unwrap().0
    }
    pub fn pxe(&self) -> SocketAddr {
        self.daemon.dhcp_addrs.unwrap().1
    }
}

/// A simulated PXE client on its own loopback address, so that tests and stations
/// stay apart and the server can tell them apart by address.
pub struct PxeClient {
    pub socket: UdpSocket,
    pub mac: [u8; 6],
}

impl PxeClient {
    pub async fn new(ip: Ipv4Addr, mac: [u8; 6]) -> PxeClient {
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        PxeClient { socket, mac }
    }

    /// Build a client packet. `class` is option 60; `arch` option 93.
    pub fn packet(
        &self,
        kind: MessageType,
        xid: u32,
        class: Option<&str>,
        arch: u16,
        extra: &[DhcpOption],
    ) -> Vec<u8> {
        let mut msg = Message::new_with_id(
            xid,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        msg.set_flags(Flags::default().set_broadcast());
        msg.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(class) = class {
            msg.opts_mut()
                .insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
        }
        msg.opts_mut()
            .insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
                arch,
            )));
        let mut uuid = vec![0u8];
        uuid.extend(self.mac.iter().cycle().take(16));
        msg.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(uuid));
        for opt in extra {
            msg.opts_mut().insert(opt.clone());
        }
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf)).unwrap();
        buf
    }

    pub async fn send(&self, bytes: &[u8], to: SocketAddr) {
        self.socket.send_to(bytes, to).await.unwrap();
    }

    /// The next reply, or `None` after `wait`.
    pub async fn recv(&self, wait: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 1500];
        let (len, _) = tokio::time::timeout(wait, self.socket.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(
            Message::decode(&mut Decoder::new(&buf[..len])).expect("server sent a decodable reply"),
        )
    }
}

/// The boot file of a reply, from the file field or option 67.
pub fn boot_file(reply: &Message) -> String {
    if let Some(DhcpOption::BootfileName(name)) =
        reply.opts().get(dhcproto::v4::OptionCode::BootfileName)
    {
        return String::from_utf8(name.clone()).unwrap();
    }
    reply
        .fname_str()
        .map(|s| s.unwrap().trim_end_matches('\0').to_owned())
        .unwrap_or_default()
}

/// Let the daemon's boot server see station `mac` at `ip`, as iPXE's DHCP would tell
/// it: a REQUEST to port 4011 with ciaddr `ip`, sent from `ip`, answered. Its boot
/// script then carries a restore token when asked for from `ip`.
pub async fn dhcp_seen(server: &TestServer, mac: &str, ip: Ipv4Addr) {
    let mac: pxe::MacAddr = mac.parse().unwrap();
    let client = PxeClient::new(ip, mac.octets()).await;
    let mut request = Message::decode(&mut Decoder::new(&client.packet(
        MessageType::Request,
        0x5eed,
        Some("PXEClient:Arch:00000:UNDI:002001"),
        0,
        &[],
    )))
    .unwrap();
    request.set_ciaddr(ip);
    let mut bytes = Vec::new();
    request.encode(&mut Encoder::new(&mut bytes)).unwrap();
    client.send(&bytes, server.pxe()).await;
    assert!(
        client.recv(Duration::from_secs(5)).await.is_some(),
        "the boot server answered {mac} at {ip}"
    );
}

/// A GET from source address `from`, with no Authorization: status and body as text.
pub async fn http_get_from(addr: SocketAddr, from: Ipv4Addr, path: &str) -> (u16, String) {
    let (status, _, body) = http_send_from(addr, from, "GET", path, NO_AUTH, b"").await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A plain HTTP/1.1 GET: status and body as text.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, body) = http_get_bytes(addr, path).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A plain HTTP/1.1 GET: status and body bytes (no chunked encoding expected for
/// files, which carry Content-Length).
pub async fn http_get_bytes(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http_request(addr, path, "").await;
    (status, body)
}

/// A GET with extra header lines (each ending in CRLF): status, the response head in
/// lowercase, and the body.
pub async fn http_request(addr: SocketAddr, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    http_send(addr, "GET", path, extra, b"").await
}

/// Any method, with extra header lines and a body: status, lowercase head, body.
pub async fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    http_send_from(addr, Ipv4Addr::LOCALHOST, method, path, extra, body).await
}

/// [`http_send`] from source address `from` (a station's, or a student's).
pub async fn http_send_from(
    addr: SocketAddr,
    from: Ipv4Addr,
    method: &str,
    path: &str,
    extra: &str,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let extra = if extra.contains(NO_AUTH) {
        extra.replace(NO_AUTH, "")
    } else if extra.to_ascii_lowercase().contains("authorization:") {
        extra.to_owned()
    } else {
        format!("{extra}Authorization: Bearer {ADMIN_TOKEN}\r\n")
    };
    let length = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Length: {}\r\n", body.len())
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{length}{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response has a head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head.contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    (status, head, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let rest = &body[eol + 2..];
        out.extend_from_slice(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// GET a JSON document.
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(addr, path).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

/// Poll `check` until it returns `Some` or five seconds pass (no fixed sleeps).
pub async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The station's JSON and its event kinds, once it has at least `n` events (events
/// are written by the recorder thread, a moment after the answer went out).
pub async fn station_with_events(
    addr: SocketAddr,
    mac: &str,
    n: usize,
) -> (serde_json::Value, Vec<String>) {
    let path = format!("/api/v1/stations/{mac}");
    eventually(|| {
        let path = path.clone();
        async move {
            let (status, st) = get_json(addr, &path).await;
            if status != 200 {
                return None;
            }
            let kinds: Vec<String> = st["events"]
                .as_array()?
                .iter()
                .map(|e| e["kind"].as_str().unwrap().to_owned())
                .collect();
            (kinds.len() >= n).then_some((st, kinds))
        }
    })
    .await
}

/// Outcome of a TFTP read request.
#[derive(Debug, PartialEq, Eq)]
pub enum TftpResult {
    Data(Vec<u8>),
    Error(u16, String),
    /// Nothing came back within two seconds.
    NoAnswer,
}

/// A minimal RFC 1350 client (octet mode, lock-step, optional blksize), enough to
/// check the server's answers; the real clients run in the e2e layer.
pub async fn tftp_get(
    server: SocketAddr,
    from: Ipv4Addr,
    name: &[u8],
    blksize: Option<u16>,
) -> TftpResult {
    tftp_get_mode(server, from, name, "octet", blksize).await
}

/// [`tftp_get`] in a given transfer mode.
pub async fn tftp_get_mode(
    server: SocketAddr,
    from: Ipv4Addr,
    name: &[u8],
    mode: &str,
    blksize: Option<u16>,
) -> TftpResult {
    let socket = UdpSocket::bind((from, 0)).await.unwrap();
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(name);
    rrq.push(0);
    rrq.extend_from_slice(mode.as_bytes());
    rrq.push(0);
    if let Some(size) = blksize {
        rrq.extend_from_slice(format!("blksize\0{size}\0").as_bytes());
    }
    socket.send_to(&rrq, server).await.unwrap();
    let mut block_size = 512usize;
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    let mut buf = vec![0u8; 70_000];
    loop {
        let Ok(received) =
            tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buf)).await
        else {
            return TftpResult::NoAnswer;
        };
        let (len, peer) = received.unwrap();
        let pkt = &buf[..len];
        match u16::from_be_bytes([pkt[0], pkt[1]]) {
            3 => {
                let block = u16::from_be_bytes([pkt[2], pkt[3]]);
                if block == expect {
                    data.extend_from_slice(&pkt[4..]);
                    expect = expect.wrapping_add(1);
                }
                socket.send_to(&[0, 4, pkt[2], pkt[3]], peer).await.unwrap();
                if block + 1 == expect && pkt.len() - 4 < block_size {
                    return TftpResult::Data(data);
                }
            }
            5 => {
                let code = u16::from_be_bytes([pkt[2], pkt[3]]);
                let msg = String::from_utf8_lossy(&pkt[4..])
                    .trim_end_matches('\0')
                    .to_owned();
                return TftpResult::Error(code, msg);
            }
            6 => {
                // OACK: take the negotiated blksize, acknowledge with block 0.
                let fields: Vec<&[u8]> = pkt[2..].split(|&b| b == 0).collect();
                for pair in fields.chunks(2) {
                    if pair.len() == 2 && pair[0].eq_ignore_ascii_case(b"blksize") {
                        block_size = std::str::from_utf8(pair[1]).unwrap().parse().unwrap();
                    }
                }
                socket.send_to(&[0, 4, 0, 0], peer).await.unwrap();
            }
            other => panic!("unexpected TFTP opcode {other}"),
        }
    }
}

/// POST a JSON body: status and the JSON answer.
pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let extra = format!("Content-Type: application/json\r\n{headers}");
    let (status, _, answer) = http_send(addr, "POST", path, &extra, body.as_bytes()).await;
    let text = String::from_utf8_lossy(&answer);
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}")),
    )
}

/// PUT a JSON body: status and the JSON answer (`null` when there is none).
pub async fn put_json(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, _, answer) = http_send(
        addr,
        "PUT",
        path,
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
    .await;
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
    )
}

/// Install a stand-in restore environment (resets are refused without one) and
/// import a generated sample disk (`images::sample`) as image `name`.
pub fn install_sample(data: &Path, name: &str, seed: u64) {
    std::fs::create_dir_all(data.join("restore")).unwrap();
    std::fs::write(data.join("restore/vmlinuz"), b"kernel stand-in").unwrap();
    std::fs::write(data.join("restore/initrd.img"), b"initrd stand-in").unwrap();
    let disk = data.join(format!("{name}.raw"));
    images::sample::sample_disk(&disk, 40 << 20, seed).unwrap();
    let store = images::ChunkStore::open(data).unwrap();
    let index = images::import(&store, &disk, 1 << 16, |_| {})
        .unwrap()
        .index;
    images::Images::open(data)
        .unwrap()
        .add(name, &index)
        .unwrap();
}

/// `mac`'s boot script, asked from 127.0.0.1 after a DHCP sighting there, and the
/// `netreset.*` arguments in it (the restore environment's command line).
pub async fn boot_script(
    server: &TestServer,
    mac: &str,
) -> (String, std::collections::HashMap<String, String>) {
    dhcp_seen(server, mac, Ipv4Addr::LOCALHOST).await;
    let (status, text) = http_get(server.daemon.http_addr, &format!("/boot/{mac}.ipxe")).await;
    assert_eq!(status, 200, "{text}");
    let args = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("netreset."))
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (text, args)
}
