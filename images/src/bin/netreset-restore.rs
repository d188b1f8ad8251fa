//! netreset-restore: reset a station's disk to a staged image, in place, fetching only
//! the chunks that differ from the orchestrator, then inject the staged files. Runs
//! in the restore environment; the iPXE script passes the same values on the kernel
//! command line (`netreset.server=` and so on).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::Parser;
use images::http::Client;
use images::{inject, partition, ChunkId, Error, RestoreStats, Target};

#[derive(Parser, Debug)]
#[command(version, about = "Reset a disk to a staged netreset image, fetching only what differs")]
struct Args {
    /// The orchestrator's URL, e.g. http://10.0.0.1:8080
    #[arg(long)]
    server: String,
    /// This station's MAC address (aa:bb:cc:dd:ee:ff)
    #[arg(long)]
    station: String,
    /// The per-restore token the orchestrator issued
    #[arg(long)]
    token: String,
    /// The staged image id (64 hex digits)
    #[arg(long)]
    image: String,
    /// The disk to reset: a block device (/dev/sda, /dev/nvme0n1) or an image file
    #[arg(long)]
    disk: PathBuf,
    /// Print one JSON line with the figures at the end
    #[arg(long)]
    json: bool,
    /// Chunk fetches in flight at once
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Cap the bandwidth chunk fetches use, in Mbit/s
    #[arg(long, value_name = "MBIT")]
    max_mbit: Option<f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = Instant::now();
    match run(&args, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netreset-restore: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args, started: Instant) -> Result<(), Error> {
    let id: ChunkId = args
        .image
        .parse()
        .map_err(|_| Error::Usage(format!("--image {:?} is not a staged image id (64 hex digits)", args.image)))?;
    let mac = check_mac(&args.station)?;
    if let Some(m) = args.max_mbit.filter(|m| !(m.is_finite() && *m > 0.0)) {
        return Err(Error::Usage(format!("--max-mbit {m}: expected a positive number")));
    }
    let client = Client::new(&args.server, &args.token, usize::from(args.parallel), args.max_mbit)?;
    let result = restore(args, &client, &id, &mac, started);
    if let Err(e) = &result {
        // Best effort: the server learns why, the console says it anyway.
        let _ = client.report(
            &mac,
            &serde_json::json!({"state": "failed", "image": id.to_string(), "error": e.to_string()}),
            1,
        );
    }
    result
}

fn restore(args: &Args, client: &Client, id: &ChunkId, mac: &str, started: Instant) -> Result<(), Error> {
    let staged = client.staged(id)?;
    // Every file this restore will inject, checked for tools before the disk is touched.
    let mut files = staged.files.clone();
    if staged.needs_station_json() {
        files.extend(staged.station_files(&client.station_json(mac)?)?);
    }
    inject::check_tools(&files)?;
    let index = &staged.index;
    eprintln!(
        "netreset-restore: {} ({} profile), {} chunks of {} KiB, {:.1} GiB -> {}",
        staged.base,
        staged.profile,
        index.chunks.len(),
        index.chunk_size >> 10,
        index.total_size as f64 / f64::from(1u32 << 30),
        args.disk.display()
    );
    let _ = client.report(mac, &progress_body(id, 0, index.total_size, &RestoreStats::default()), 1);

    let done = AtomicU64::new(0);
    let latest = Mutex::new(RestoreStats::default());
    let finished = AtomicBool::new(false);
    let stats = std::thread::scope(|scope| {
        // Progress goes to the console and the orchestrator from a thread of its own,
        // so a slow server never stalls the restore.
        scope.spawn(|| {
            let mut last = Instant::now();
            while !finished.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() < Duration::from_secs(2) {
                    continue;
                }
                last = Instant::now();
                let d = done.load(Relaxed);
                let s = latest.lock().expect("not poisoned").clone();
                eprintln!(
                    "netreset-restore: {:5.1}%  {} in place, {} fetched ({:.1} MB)",
                    d as f64 * 100.0 / index.total_size.max(1) as f64,
                    s.chunks_in_place,
                    s.chunks_fetched,
                    s.bytes_fetched as f64 / 1e6
                );
                let _ = client.report(mac, &progress_body(id, d, index.total_size, &s), 1);
            }
        });
        let on_progress = |d: u64, s: &RestoreStats| {
            done.fetch_max(d, Relaxed);
            if let Ok(mut l) = latest.try_lock() {
                *l = s.clone();
            }
        };
        let stats = images::restore(index, &args.disk, client, usize::from(args.parallel), &on_progress);
        finished.store(true, Relaxed);
        stats
    })?;

    // The FAT copy of station.json goes only where the disk has the FAT partition.
    if files.iter().any(|f| f.target == Target::Fat) {
        let parts = partition::partitions(&args.disk)?;
        if inject::fat_partition(&args.disk, &parts, &staged.fat_label)?.is_none() {
            files.retain(|f| f.target != Target::Fat || staged.files.contains(f));
        }
    }
    inject::inject(&args.disk, &staged.fat_label, &files)?;

    let seconds = started.elapsed().as_secs_f64();
    let mut body = progress_body(id, index.total_size, index.total_size, &stats);
    body["state"] = "done".into();
    body["seconds"] = seconds.into();
    body["injected"] = files.len().into();
    client.report(mac, &body, 3)?;
    eprintln!(
        "netreset-restore: done in {seconds:.1} s: {} chunks in place, {} fetched ({:.1} MB), {} zeroed, {} files injected",
        stats.chunks_in_place,
        stats.chunks_fetched,
        stats.bytes_fetched as f64 / 1e6,
        stats.zero_chunks_written,
        files.len()
    );
    if args.json {
        let mut line = serde_json::to_value(&stats).expect("plain struct");
        line["seconds"] = seconds.into();
        line["image"] = id.to_string().into();
        line["injected"] = files.len().into();
        println!("{line}");
    }
    Ok(())
}

fn progress_body(id: &ChunkId, done: u64, total: u64, s: &RestoreStats) -> serde_json::Value {
    let mut body = serde_json::to_value(s).expect("plain struct");
    body["state"] = "running".into();
    body["image"] = id.to_string().into();
    body["done_bytes"] = done.into();
    body["total_bytes"] = total.into();
    body
}

/// A MAC as aa:bb:cc:dd:ee:ff (lowercase), the form the orchestrator's URLs use.
fn check_mac(s: &str) -> Result<String, Error> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    let ok = parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(parts.join(":").to_ascii_lowercase())
    } else {
        Err(Error::Usage(format!("--station {s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")))
    }
}
