//! N subscribers of netreset's live events at once: `sse-subscribers ADDR TOKEN N
//! SECONDS`. Each connects from an address of its own (127.0.100.x: the daemon caps
//! connections per address) to `GET /api/v1/events` (HTTP/1.0, so the stream is not
//! chunked), reads until a `campaign` event says `done` or SECONDS pass, and counts
//! its events, the gaps in their ids (ids rise by one across all kinds: a gap is a
//! lost event) and `lagged` notices. Prints one JSON line; exits 1 if any subscriber
//! lost an event or saw no campaign end.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Seen {
    events: u64,
    campaign_events: u64,
    gaps: u64,
    lagged: u64,
    done: bool,
    first: Option<u64>,
    last: Option<u64>,
}

fn subscribe(addr: &str, token: &str, from: u32, until: Instant) -> std::io::Result<Seen> {
    let source =
        std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(127, 0, 100, 1)) + from);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&std::net::SocketAddr::from((source, 0)).into())?;
    let target: std::net::SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    socket.connect(&target.into())?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    write!(
        stream,
        "GET /api/v1/events HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )?;
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next().transpose()?.unwrap_or_default();
    if !status.contains(" 200 ") {
        return Err(std::io::Error::other(format!("events: {status}")));
    }
    for line in lines.by_ref() {
        if line?.is_empty() {
            break;
        }
    }
    let mut seen = Seen::default();
    let (mut event, mut data) = (String::new(), String::new());
    for line in lines {
        let line = line?;
        if let Some(v) = line.strip_prefix("id:") {
            let id: u64 = v.trim().parse().map_err(std::io::Error::other)?;
            if let Some(last) = seen.last {
                seen.gaps += id.saturating_sub(last + 1);
            }
            seen.first.get_or_insert(id);
            seen.last = Some(id);
        } else if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if line.is_empty() && !event.is_empty() {
            seen.events += 1;
            match event.as_str() {
                "lagged" => seen.lagged += 1,
                "campaign" => {
                    seen.campaign_events += 1;
                    if data.contains("\"state\":\"done\"") {
                        seen.done = true;
                        return Ok(seen);
                    }
                }
                _ => {}
            }
            event.clear();
            data.clear();
        }
        if Instant::now() > until {
            break;
        }
    }
    Ok(seen)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, token, n, seconds] = &args[..] else {
        eprintln!("usage: sse-subscribers ADDR TOKEN N SECONDS");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N");
    let until = Instant::now() + Duration::from_secs(seconds.parse().expect("SECONDS"));
    let started = Instant::now();
    let threads: Vec<_> = (0..n as u32)
        .map(|i| {
            let (addr, token) = (addr.clone(), token.clone());
            std::thread::spawn(move || subscribe(&addr, &token, i, until))
        })
        .collect();
    let results: Vec<Result<Seen, String>> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .map_err(|_| "panicked".to_owned())?
                .map_err(|e| e.to_string())
        })
        .collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let ok: Vec<&Seen> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let events: Vec<u64> = ok.iter().map(|s| s.events).collect();
    let gaps: u64 = ok.iter().map(|s| s.gaps).sum();
    let lagged: u64 = ok.iter().map(|s| s.lagged).sum();
    let done = ok.iter().filter(|s| s.done).count();
    let campaign: Vec<u64> = ok.iter().map(|s| s.campaign_events).collect();
    let same_range = ok
        .iter()
        .map(|s| s.last.zip(s.first).map_or(0, |(l, f)| l - f + 1))
        .max()
        .unwrap_or(0);
    println!(
        "{{\"subscribers\": {n}, \"failed\": {}, \"saw_campaign_done\": {done}, \"events_min\": {}, \"events_max\": {}, \"campaign_events_min\": {}, \"campaign_events_max\": {}, \"widest_id_range\": {same_range}, \"gaps\": {gaps}, \"lagged\": {lagged}, \"seconds\": {:.1}}}",
        failed.len(),
        events.iter().min().unwrap_or(&0),
        events.iter().max().unwrap_or(&0),
        campaign.iter().min().unwrap_or(&0),
        campaign.iter().max().unwrap_or(&0),
        started.elapsed().as_secs_f64()
    );
    for e in failed.iter().take(3) {
        eprintln!("sse-subscribers: {e}");
    }
    if !failed.is_empty() || gaps > 0 || lagged > 0 || done < n {
        std::process::exit(1);
    }
}
