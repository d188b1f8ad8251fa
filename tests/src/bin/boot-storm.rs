//! Boot storm generator: N simulated stations boot at once through netreset's real
//! servers, each as a BIOS PXE ROM and then iPXE do it: a DISCOVER on the ProxyDHCP
//! port, the REQUEST to the boot server (4011), the boot file over TFTP (blksize and
//! tsize negotiated, every block acknowledged), then the iPXE script over HTTP. Each
//! station has an address of its own on loopback (127.77.x.y), as stations have on a
//! LAN, so that per-client limits apply to each.
//!
//! Usage: boot-storm --dhcp 127.0.0.1:P --pxe 127.0.0.1:P --tftp 127.0.0.1:P
//!                   --http 127.0.0.1:P [--stations 1000]
//!        boot-storm --dhcp 127.0.0.1:P --discovers 10000 --stations 1000
//!
//! The first form prints one JSON line: stations, served (every stage answered and
//! right), and per stage (dhcp, pxe4011, tftp, script) p50/p99/max in ms and the
//! failures with the first error. The second sends DISCOVERS DISCOVERs from STATIONS
//! MACs (each MAC again and again, from its own address) and prints sent, answered
//! and the reply latency p50/p99.
//!
//! Loopback only: it refuses any other address.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use netreset_tests::{boot_file, boot_server_request, discover, mac, xid};

const STAGES: [&str; 4] = ["dhcp", "pxe4011", "tftp", "script"];
/// A PXE ROM's first DHCP timeout is 4 s; loopback answers in far less, so one
/// second per try and four tries.
const TRY: Duration = Duration::from_secs(1);
const TRIES: u32 = 4;

#[derive(Default)]
struct Stage {
    ms: Vec<f64>,
    failed: u32,
    first_error: Option<String>,
}

struct Args {
    dhcp: SocketAddr,
    pxe: Option<SocketAddr>,
    tftp: Option<SocketAddr>,
    http: Option<SocketAddr>,
    stations: u32,
    discovers: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut dhcp = None;
    let (mut pxe, mut tftp, mut http, mut discovers) = (None, None, None, None);
    let mut stations = 1000u32;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        let addr = || -> Result<SocketAddr, String> {
            let a: SocketAddr = value.parse().map_err(|e| bad(&e))?;
            if !a.ip().is_loopback() {
                return Err(format!("{flag} {a}: a boot storm goes to loopback only"));
            }
            Ok(a)
        };
        match flag.as_str() {
            "--dhcp" => dhcp = Some(addr()?),
            "--pxe" => pxe = Some(addr()?),
            "--tftp" => tftp = Some(addr()?),
            "--http" => http = Some(addr()?),
            "--stations" => stations = value.parse().map_err(|e| bad(&e))?,
            "--discovers" => discovers = Some(value.parse().map_err(|e| bad(&e))?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(1..=60_000).contains(&stations) {
        return Err(format!("--stations {stations}: 1 to 60000"));
    }
    Ok(Args {
        dhcp: dhcp.ok_or("--dhcp is required")?,
        pxe,
        tftp,
        http,
        stations,
        discovers,
    })
}

/// Station `i`'s own loopback address: 127.77.0.1, 127.77.0.2, ...
fn station_ip(i: u32) -> Ipv4Addr {
    let n = i + 1;
    Ipv4Addr::new(127, 77, (n / 250) as u8, (n % 250 + 1) as u8)
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    if let Some(count) = args.discovers {
        return discovers(&args, count);
    }
    let (pxe, tftp, http) = match (args.pxe, args.tftp, args.http) {
        (Some(p), Some(t), Some(h)) => (p, t, h),
        _ => return Err("--pxe, --tftp and --http are required for a boot storm".into()),
    };
    let n = args.stations as usize;
    let stages: Arc<Mutex<Vec<Stage>>> =
        Arc::new(Mutex::new((0..4).map(|_| Stage::default()).collect()));
    let seconds = {
        let stages = stages.clone();
        every_station(
            args.stations,
            |_| (),
            move |i, ()| {
                let mut times = [0f64; 4];
                let result = boot(i, args.dhcp, pxe, tftp, http, &mut times);
                let mut stages = stages.lock().expect("not poisoned");
                // A stage's time counts when the station got through it.
                let through = result.as_ref().map_or_else(|(stage, _)| *stage, |()| 4);
                for (s, t) in stages.iter_mut().zip(times).take(through) {
                    s.ms.push(t);
                }
                if let Err((stage, why)) = result {
                    let s = &mut stages[stage];
                    s.failed += 1;
                    s.first_error.get_or_insert(format!("station {i}: {why}"));
                }
            },
        )?
    };
    let stages = stages.lock().expect("not poisoned");
    // Served: through the last stage.
    let mut out = format!(
        "{{\"stations\":{n},\"served\":{},\"seconds\":{seconds:.3}",
        stages[3].ms.len()
    );
    for (name, s) in STAGES.iter().zip(stages.iter()) {
        let (p50, p99, max) = percentiles(&s.ms);
        out += &format!(
            ",\"{name}\":{{\"p50_ms\":{p50:.2},\"p99_ms\":{p99:.2},\"max_ms\":{max:.2},\"failed\":{},\"first_error\":{}}}",
            s.failed,
            s.first_error
                .as_ref()
                .map_or("null".to_owned(), |e| format!("{e:?}"))
        );
    }
    println!("{out}}}");
    Ok(())
}

/// One station's boot; on failure, the stage it failed in and why.
fn boot(
    i: u32,
    dhcp: SocketAddr,
    pxe: SocketAddr,
    tftp: SocketAddr,
    http: SocketAddr,
    times: &mut [f64; 4],
) -> Result<(), (usize, String)> {
    let ip = station_ip(i);
    let socket =
        UdpSocket::bind(SocketAddrV4::new(ip, 0)).map_err(|e| (0, format!("bind {ip}: {e}")))?;
    socket
        .set_read_timeout(Some(TRY))
        .map_err(|e| (0, e.to_string()))?;

    let t = Instant::now();
    let offer = exchange(&socket, dhcp, &discover(i, 0), i).map_err(|e| (0, e))?;
    times[0] = ms(t);
    boot_file(&offer).ok_or((0, "the offer names no boot file".to_owned()))?;

    let t = Instant::now();
    let ack = exchange(&socket, pxe, &boot_server_request(i, 0, ip), i).map_err(|e| (1, e))?;
    times[1] = ms(t);
    let file = boot_file(&ack).ok_or((1, "the ACK names no boot file".to_owned()))?;

    let t = Instant::now();
    let size = tftp_get(ip, tftp, &file).map_err(|e| (2, e))?;
    times[2] = ms(t);
    if size == 0 {
        return Err((2, format!("{file}: empty")));
    }

    let t = Instant::now();
    let script = http_get(ip, http, &format!("/boot/{}.ipxe", mac_text(i))).map_err(|e| (3, e))?;
    times[3] = ms(t);
    if !script.starts_with("#!ipxe") {
        return Err((
            3,
            format!("not an iPXE script: {:?}", &script[..script.len().min(80)]),
        ));
    }
    Ok(())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn mac_text(i: u32) -> String {
    let m = mac(i);
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Send `packet` and wait for the reply to station `i`'s xid, retrying as a ROM does.
fn exchange(socket: &UdpSocket, to: SocketAddr, packet: &[u8], i: u32) -> Result<Vec<u8>, String> {
    let mut buf = [0u8; 1500];
    for _ in 0..TRIES {
        socket
            .send_to(packet, to)
            .map_err(|e| format!("send to {to}: {e}"))?;
        let deadline = Instant::now() + TRY;
        while Instant::now() < deadline {
            match socket.recv_from(&mut buf) {
                Ok((len, _)) if len >= 240 && buf[0] == 2 && buf[4..8] == xid(i).to_be_bytes() => {
                    return Ok(buf[..len].to_vec())
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Err(format!("no answer from {to} in {TRIES} tries"))
}

/// Download `file` as a PXE ROM does (blksize 1432, tsize); its size.
fn tftp_get(ip: Ipv4Addr, server: SocketAddr, file: &str) -> Result<u64, String> {
    let socket = UdpSocket::bind(SocketAddrV4::new(ip, 0)).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(TRY))
        .map_err(|e| e.to_string())?;
    let mut rrq = vec![0, 1];
    for field in [file, "octet", "blksize", "1432", "tsize", "0"] {
        rrq.extend_from_slice(field.as_bytes());
        rrq.push(0);
    }
    let mut block_size = 512usize;
    let mut expected: u16 = 1;
    let mut received = 0u64;
    let mut peer: Option<SocketAddr> = None;
    let mut last_sent = rrq.clone();
    let mut last_to = server;
    let mut buf = vec![0u8; 65_536];
    let mut silent = 0;
    loop {
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => {
                silent += 1;
                if silent > TRIES {
                    return Err(format!("{file}: no data after block {}", expected - 1));
                }
                socket
                    .send_to(&last_sent, last_to)
                    .map_err(|e| e.to_string())?;
                continue;
            }
        };
        silent = 0;
        if peer.is_some_and(|p| p != from) || len < 4 {
            continue;
        }
        peer = Some(from);
        let packet = &buf[..len];
        match u16::from_be_bytes([packet[0], packet[1]]) {
            6 => {
                // OACK: take blksize, acknowledge block 0.
                let fields: Vec<&[u8]> = packet[2..].split(|&b| b == 0).collect();
                for pair in fields.chunks(2) {
                    if let [name, value] = pair {
                        if name.eq_ignore_ascii_case(b"blksize") {
                            block_size = String::from_utf8_lossy(value)
                                .parse()
                                .map_err(|_| "bad blksize")?;
                        }
                    }
                }
                last_sent = vec![0, 4, 0, 0];
            }
            3 => {
                let block = u16::from_be_bytes([packet[2], packet[3]]);
                if block == expected {
                    received += (len - 4) as u64;
                    expected = expected.wrapping_add(1);
                }
                last_sent = vec![0, 4, packet[2], packet[3]];
                if block == expected.wrapping_sub(1) && len - 4 < block_size {
                    socket
                        .send_to(&last_sent, from)
                        .map_err(|e| e.to_string())?;
                    return Ok(received);
                }
            }
            5 => {
                return Err(format!(
                    "{file}: TFTP error {}",
                    String::from_utf8_lossy(&packet[4..]).trim_end_matches('\0')
                ))
            }
            _ => continue,
        }
        last_to = from;
        socket
            .send_to(&last_sent, from)
            .map_err(|e| e.to_string())?;
    }
}

/// GET `path` from `ip`, as iPXE fetches its script; the body of a 200.
fn http_get(ip: Ipv4Addr, server: SocketAddr, path: &str) -> Result<String, String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    socket
        .bind(&SocketAddr::V4(SocketAddrV4::new(ip, 0)).into())
        .map_err(|e| format!("bind {ip}: {e}"))?;
    socket
        .connect_timeout(&server.into(), Duration::from_secs(5))
        .map_err(|e| format!("connect {server}: {e}"))?;
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    Ok(body.to_owned())
}

/// DISCOVERs again and again from `args.stations` MACs, each from its own address,
/// `count` in all, sent as fast as the threads go; answered and reply latencies.
fn discovers(args: &Args, count: u32) -> Result<(), String> {
    let per = count.div_ceil(args.stations);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(count as usize)));
    let sent = Arc::new(AtomicU32::new(0));
    let seconds = {
        let (latencies, sent, dhcp) = (latencies.clone(), sent.clone(), args.dhcp);
        every_station(
            args.stations,
            |i| {
                let socket = UdpSocket::bind(SocketAddrV4::new(station_ip(i), 0)).ok()?;
                socket
                    .set_read_timeout(Some(Duration::from_millis(500)))
                    .ok()?;
                Some(socket)
            },
            move |i, socket| {
                let Some(socket) = socket else { return };
                let packet = discover(i, 0);
                let mut buf = [0u8; 1500];
                for _ in 0..per {
                    let t = Instant::now();
                    if socket.send_to(&packet, dhcp).is_err() {
                        continue;
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    while let Ok((len, _)) = socket.recv_from(&mut buf) {
                        if len >= 240 && buf[4..8] == xid(i).to_be_bytes() {
                            latencies.lock().expect("not poisoned").push(ms(t));
                            break;
                        }
                    }
                }
            },
        )?
    };
    let latencies = latencies.lock().expect("not poisoned");
    let (p50, p99, max) = percentiles(&latencies);
    println!(
        "{{\"macs\":{},\"sent\":{},\"answered\":{},\"seconds\":{seconds:.3},\"p50_ms\":{p50:.2},\"p99_ms\":{p99:.2},\"max_ms\":{max:.2}}}",
        args.stations,
        sent.load(Ordering::Relaxed),
        latencies.len()
    );
    Ok(())
}

/// Run `station(i, prepare(i))` on a thread of its own for each of `n` stations,
/// released together once every one has prepared (a failed preparation still
/// arrives, so nobody waits for it); the seconds from the first spawn to the last
/// station done.
fn every_station<P: Send + 'static>(
    n: u32,
    prepare: impl Fn(u32) -> P + Send + Sync + 'static,
    station: impl Fn(u32, P) + Send + Sync + 'static,
) -> Result<f64, String> {
    let barrier = Arc::new(Barrier::new(n as usize));
    let (prepare, station) = (Arc::new(prepare), Arc::new(station));
    let start = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, prepare, station) = (barrier.clone(), prepare.clone(), station.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let prepared = prepare(i);
                    barrier.wait();
                    station(i, prepared);
                })
                .map_err(|e| format!("thread {i}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    for t in threads {
        t.join().map_err(|_| "a station thread panicked")?;
    }
    Ok(start.elapsed().as_secs_f64())
}

fn percentiles(values: &[f64]) -> (f64, f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    (at(0.5), at(0.99), sorted[sorted.len() - 1])
}
