//! The network boot of a simulated station, as its firmware and iPXE do it, against
//! the daemon's real ProxyDHCP and TFTP servers on loopback: the PXE ROM's DISCOVER
//! (option 60 `PXEClient`, 93, 97) gets the proxy offer, its REQUEST to port 4011
//! the boot file; the ROM reads that file over TFTP (blksize and tsize options, an
//! ACK per block); iPXE asks again with user class `iPXE` and gets its script's URL.
//! Replies come back to the station's own socket (a station that has no address yet
//! would be answered by broadcast; on loopback each station has one).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use dhcproto::v4::{Architecture, DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use pxe::MacAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// Where the daemon's boot servers listen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootServers {
    /// ProxyDHCP's port-67 socket, and its port-4011 socket.
    pub dhcp: SocketAddr,
    pub pxe: SocketAddr,
    pub tftp: SocketAddr,
}

const RRQ: u16 = 1;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// How long a station waits for a reply before it asks again, and how often.
const WAIT: Duration = Duration::from_secs(1);
const TRIES: u32 = 4;
const BLKSIZE: usize = 1432;
/// PXE ROMs load at most this much (the 640 KiB of base memory, give or take).
const MAX_FILE: usize = 16 << 20;

/// What the firmware got: the boot file it loaded and the iPXE script URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Booted {
    pub boot_file: String,
    pub boot_file_len: usize,
    pub script_url: String,
}

/// PXE ROM, then iPXE: DHCP, TFTP, DHCP again. `xid` seeds the transaction ids.
/// The station's packets come from `ip`.
pub async fn boot(
    servers: &BootServers,
    mac: MacAddr,
    ip: Ipv4Addr,
    xid: u32,
) -> Result<Booted, String> {
    let file = boot_file(servers, mac, ip, xid, false).await?;
    let loaded = tftp_get(servers.tftp, ip, &file).await?;
    let script_url = boot_file(servers, mac, ip, xid.wrapping_add(2), true).await?;
    if !script_url.starts_with("http://") && !script_url.starts_with("https://") {
        return Err(format!("iPXE was offered {script_url:?}, not a script URL"));
    }
    Ok(Booted {
        boot_file: file,
        boot_file_len: loaded.len(),
        script_url,
    })
}

/// DISCOVER to port 67 for the offer, REQUEST to port 4011 for the boot file.
async fn boot_file(
    servers: &BootServers,
    mac: MacAddr,
    ip: Ipv4Addr,
    xid: u32,
    ipxe: bool,
) -> Result<String, String> {
    let socket = UdpSocket::bind((ip, 0))
        .await
        .map_err(|e| format!("DHCP socket: {e}"))?;
    let offer = exchange(
        &socket,
        servers.dhcp,
        &packet(MessageType::Discover, xid, mac, None, ipxe),
    )
    .await
    .map_err(|e| format!("no ProxyDHCP offer: {e}"))?;
    if offer.opts().msg_type() != Some(MessageType::Offer) {
        return Err(format!("ProxyDHCP answered {:?}", offer.opts().msg_type()));
    }
    let ack = exchange(
        &socket,
        servers.pxe,
        // By now the school's DHCP server has leased the station its address.
        &packet(
            MessageType::Request,
            xid.wrapping_add(1),
            mac,
            Some(ip),
            ipxe,
        ),
    )
    .await
    .map_err(|e| format!("no boot server ACK on port 4011: {e}"))?;
    let file = file_of(&ack);
    if file.is_empty() {
        return Err("the boot server ACK names no boot file".into());
    }
    Ok(file)
}

fn packet(
    kind: MessageType,
    xid: u32,
    mac: MacAddr,
    ciaddr: Option<Ipv4Addr>,
    ipxe: bool,
) -> Vec<u8> {
    let octets = mac.octets();
    let mut msg = Message::new_with_id(
        xid,
        ciaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &octets,
    );
    msg.set_flags(Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(0)));
    let mut uuid = vec![0u8];
    uuid.extend(octets.iter().cycle().take(16));
    opts.insert(DhcpOption::ClientMachineIdentifier(uuid));
    if ipxe {
        // iPXE sends its user class raw, not in RFC 3004 form.
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    let mut buf = Vec::new();
    msg.encode(&mut Encoder::new(&mut buf))
        .expect("a DHCP message encodes");
    buf
}

/// Send `request` until a reply with its xid comes (at most `TRIES` times).
async fn exchange(socket: &UdpSocket, to: SocketAddr, request: &[u8]) -> Result<Message, String> {
    let xid = u32::from_be_bytes(request[4..8].try_into().expect("a DHCP header"));
    let mut buf = vec![0u8; 1500];
    for _ in 0..TRIES {
        socket
            .send_to(request, to)
            .await
            .map_err(|e| format!("send to {to}: {e}"))?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Ok(got) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
            let Ok((n, _)) = got else { continue };
            let Ok(reply) = Message::decode(&mut Decoder::new(&buf[..n])) else {
                continue;
            };
            if reply.opcode() == Opcode::BootReply && reply.xid() == xid {
                return Ok(reply);
            }
        }
    }
    Err(format!("{TRIES} tries {} s apart to {to}", WAIT.as_secs()))
}

/// The boot file: option 67, else the `file` field.
fn file_of(reply: &Message) -> String {
    if let Some(DhcpOption::BootfileName(name)) = reply.opts().get(OptionCode::BootfileName) {
        return String::from_utf8_lossy(name)
            .trim_end_matches('\0')
            .to_owned();
    }
    reply
        .fname_str()
        .and_then(Result::ok)
        .map(|s| s.trim_end_matches('\0').to_owned())
        .unwrap_or_default()
}

/// The script at `url`, fetched as iPXE does: an HTTP/1.1 GET from the station's own
/// address `ip` (the daemon hands a restore token only to the address DHCP saw).
pub async fn fetch_script(url: &str, ip: Ipv4Addr) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: iPXE here fetches http:// only"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let server: SocketAddr = host
        .parse()
        .map_err(|e| format!("{url:?}: the server is not an address: {e}"))?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| format!("HTTP socket: {e}"))?;
    socket
        .bind(SocketAddr::from((ip, 0)))
        .map_err(|e| format!("HTTP bind {ip}: {e}"))?;
    let fetch = async {
        let mut stream = socket.connect(server).await?;
        let path = if path.is_empty() { "/" } else { path };
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream
            .take(MAX_SCRIPT as u64 + 4096)
            .read_to_end(&mut raw)
            .await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| format!("{url}: no answer in 10 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: not an HTTP answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(body.to_owned())
}

/// The largest script iPXE here reads.
const MAX_SCRIPT: usize = 64 << 10;

/// Read `name` over TFTP as a PXE ROM does: octet mode, blksize and tsize asked for.
pub async fn tftp_get(server: SocketAddr, ip: Ipv4Addr, name: &str) -> Result<Vec<u8>, String> {
    let socket = UdpSocket::bind((ip, 0))
        .await
        .map_err(|e| format!("TFTP socket: {e}"))?;
    let mut rrq = RRQ.to_be_bytes().to_vec();
    for field in [name, "octet", "blksize", &BLKSIZE.to_string(), "tsize", "0"] {
        rrq.extend_from_slice(field.as_bytes());
        rrq.push(0);
    }
    let mut out = Vec::new();
    let mut blksize = 512;
    let mut expect: u16 = 1;
    // The last packet sent (the request, then each ACK), resent on a timeout.
    let mut last = rrq;
    let mut peer = server;
    let mut buf = vec![0u8; 65_536];
    let mut silent = 0;
    loop {
        socket
            .send_to(&last, peer)
            .await
            .map_err(|e| format!("TFTP send to {peer}: {e}"))?;
        let (n, from) = match tokio::time::timeout(WAIT, socket.recv_from(&mut buf)).await {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => return Err(format!("TFTP receive: {e}")),
            Err(_) => {
                silent += 1;
                if silent >= TRIES {
                    return Err(format!("TFTP {name}: no answer from {peer}"));
                }
                continue;
            }
        };
        silent = 0;
        if n < 4 || from.ip() != server.ip() {
            continue;
        }
        // The transfer runs from the server's new port (its transfer ID).
        peer = from;
        let op = u16::from_be_bytes([buf[0], buf[1]]);
        let arg = u16::from_be_bytes([buf[2], buf[3]]);
        match op {
            OACK if expect == 1 && out.is_empty() => {
                let fields: Vec<&[u8]> = buf[2..n].split(|b| *b == 0).collect();
                for pair in fields.chunks(2) {
                    if let [k, v] = pair {
                        if k.eq_ignore_ascii_case(b"blksize") {
                            blksize = std::str::from_utf8(v)
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .filter(|b| (8..=BLKSIZE).contains(b))
                                .ok_or("TFTP OACK: a blksize not asked for")?;
                        }
                    }
                }
                last = [ACK.to_be_bytes(), 0u16.to_be_bytes()].concat();
            }
            DATA if arg == expect => {
                let data = &buf[4..n];
                out.extend_from_slice(data);
                if out.len() > MAX_FILE {
                    return Err(format!("TFTP {name}: more than {MAX_FILE} bytes"));
                }
                last = [ACK.to_be_bytes(), arg.to_be_bytes()].concat();
                expect = expect.wrapping_add(1);
                if data.len() < blksize {
                    // The final ACK; the server stops resending on it.
                    socket
                        .send_to(&last, peer)
                        .await
                        .map_err(|e| format!("TFTP send to {peer}: {e}"))?;
                    return Ok(out);
                }
            }
            // A duplicate block: our ACK was lost; it goes out again.
            DATA => {}
            ERROR => {
                let message = String::from_utf8_lossy(&buf[4..n]);
                return Err(format!(
                    "TFTP {name}: error {arg}: {}",
                    message.trim_end_matches('\0')
                ));
            }
            _ => return Err(format!("TFTP {name}: unexpected packet {op}")),
        }
    }
}
