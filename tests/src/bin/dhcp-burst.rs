//! DHCP burst generator for the ProxyDHCP benchmark: sends N PXE DISCOVERs from
//! distinct MACs as fast as possible (or paced) and measures what comes back.
//!
//! Usage: dhcp-burst --server 10.78.0.1:67 --bind ADDR:PORT [--count 1000]
//!                   [--pace-us 0] [--wait-ms 2000] [--arch 0]
//! Prints one JSON line: sent, answered, lost, seconds, per_second, p50_ms, p99_ms, max_ms,
//! pace_us, send_ms (how long sending the burst took).
//!
//! It refuses to send anywhere but loopback unless it runs in a network namespace other
//! than the host's (tests/bench/dhcp_burst.sh makes one): a burst of DISCOVERs must
//! never reach a real network.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use netreset_tests::{discover, in_own_network_namespace, xid};

fn main() -> Result<(), String> {
    let mut server: Option<SocketAddr> = None;
    let mut bind: Option<SocketAddr> = None;
    let (mut count, mut pace_us, mut wait_ms, mut arch) = (1000usize, 0u64, 2000u64, 0u16);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--server" => server = Some(value.parse().map_err(|e| bad(&e))?),
            "--bind" => bind = Some(value.parse().map_err(|e| bad(&e))?),
            "--count" => count = value.parse().map_err(|e| bad(&e))?,
            "--pace-us" => pace_us = value.parse().map_err(|e| bad(&e))?,
            "--wait-ms" => wait_ms = value.parse().map_err(|e| bad(&e))?,
            "--arch" => arch = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let server = server.ok_or("--server is required")?;
    let bind = bind.ok_or("--bind is required (inside the bench namespace: 0.0.0.0:68)")?;
    if !server.ip().is_loopback() && !in_own_network_namespace() {
        return Err(format!(
            "refusing to send to {server} from the host's network namespace: run inside a namespace of your own (tests/bench/dhcp_burst.sh)"
        ));
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
        .map_err(|e| e.to_string())?;
    // Room for every reply of the burst, so that losses counted are the server's.
    socket
        .set_recv_buffer_size(8 << 20)
        .map_err(|e| e.to_string())?;
    socket.set_reuse_address(true).map_err(|e| e.to_string())?;
    socket
        .bind(&bind.into())
        .map_err(|e| format!("bind {bind}: {e}"))?;
    let socket: UdpSocket = socket.into();
    socket.set_broadcast(true).map_err(|e| e.to_string())?;
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;

    let packets: Vec<Vec<u8>> = (0..count).map(|i| discover(i as u32, arch)).collect();
    // Send times in nanoseconds after `start` (0 = not sent yet), one slot per packet:
    // lock-free, so that timing the burst does not slow it.
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    if pace_us > 0 {
        precise_sleeps();
    }
    let start = Instant::now();
    let receiver = {
        let socket = socket.try_clone().map_err(|e| e.to_string())?;
        let sent_at = Arc::clone(&sent_at);
        std::thread::spawn(move || receive(socket, sent_at, start, Duration::from_millis(wait_ms)))
    };
    for (i, packet) in packets.iter().enumerate() {
        if pace_us > 0 {
            // Sleep, not spin: on a 2-core machine a spinning sender would take a
            // whole core from the server it measures.
            let due = start + Duration::from_micros(pace_us * i as u64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        sent_at[i].store(start.elapsed().as_nanos().max(1) as u64, Ordering::Release);
        socket
            .send_to(packet, server)
            .map_err(|e| format!("send to {server}: {e}"))?;
    }
    let send_ms = start.elapsed().as_secs_f64() * 1000.0;
    let (latencies, last_reply) = receiver.join().map_err(|_| "receiver panicked")?;
    let answered = latencies.len();
    let mut sorted = latencies.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        if sorted.is_empty() {
            f64::NAN
        } else {
            sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1)]
        }
    };
    let seconds = last_reply
        .map(|t| t.duration_since(start).as_secs_f64())
        .unwrap_or(f64::NAN);
    println!(
        "{{\"sent\":{count},\"answered\":{answered},\"lost\":{},\"seconds\":{seconds:.4},\"per_second\":{:.0},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"pace_us\":{pace_us},\"send_ms\":{send_ms:.3}}}",
        count - answered,
        answered as f64 / seconds,
        pct(0.50),
        pct(0.99),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    Ok(())
}

/// Linux lets a sleep overrun by the thread's timer slack (50 µs by default), as much
/// as the whole pacing interval; 1 ns makes 50 µs sleeps land on time.
#[allow(unsafe_code)]
fn precise_sleeps() {
    // SAFETY: prctl(PR_SET_TIMERSLACK) takes plain integers and touches no memory.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
}

fn receive(
    socket: UdpSocket,
    sent_at: Arc<Vec<AtomicU64>>,
    start: Instant,
    wait: Duration,
) -> (Vec<f64>, Option<Instant>) {
    let count = sent_at.len();
    let mut latencies = Vec::with_capacity(count);
    let mut seen = vec![false; count];
    let mut answered = 0;
    let mut last_reply = None;
    let mut last_progress = Instant::now();
    let mut buf = [0u8; 1500];
    while answered < count && last_progress.elapsed() < wait {
        let Ok((len, _)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let now = Instant::now();
        if len < 240 || buf[0] != 2 {
            continue;
        }
        let i = (u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) ^ xid(0)) as usize;
        let sent = match sent_at.get(i).map(|t| t.load(Ordering::Acquire)) {
            Some(nanos) if nanos > 0 => nanos,
            _ => continue, // not one of ours
        };
        if !seen[i] {
            seen[i] = true;
            answered += 1;
            let at = now.duration_since(start).as_nanos() as u64;
            latencies.push(at.saturating_sub(sent) as f64 / 1e6);
            last_reply = Some(now);
            last_progress = now;
        }
    }
    (latencies, last_reply)
}
