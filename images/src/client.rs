//! The restore client: what `netreset-restore` does, as a library call so that tests
//! can run it in-process. Fetch the staged image, check the tools injection needs,
//! restore the disk in place, inject, and report progress and the outcome to the
//! orchestrator.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pxe::MacAddr;

use crate::http::Client;
use crate::{inject, partition, ChunkId, Error, RestoreStats, Target};

/// What to restore where; the command line of `netreset-restore`.
#[derive(Clone)]
pub struct Options {
    pub server: String,
    pub station: String,
    pub token: String,
    pub image: String,
    pub disk: PathBuf,
    pub parallel: usize,
    pub max_mbit: Option<f64>,
    /// How long a failed request is retried (the server restarting, a cable pulled).
    pub retry_for: Duration,
    /// Where to serve chunks to the other stations of the restore's wave (the
    /// orchestrator passes `netreset.peer_port=` to a restore in a wave); `None`:
    /// fetch from the server only.
    pub peer_listen: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("server", &self.server)
            .field("station", &self.station)
            .field("token", &"(redacted)")
            .field("image", &self.image)
            .field("disk", &self.disk)
            .finish_non_exhaustive()
    }
}

/// What a restore did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub stats: RestoreStats,
    pub seconds: f64,
    pub image: String,
    pub injected: usize,
    /// What the peer exchange did, in a wave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<crate::peer::SwarmStats>,
}

/// The staged image id and the station's MAC of `opts`, checked.
fn identify(opts: &Options) -> Result<(ChunkId, MacAddr), Error> {
    let id: ChunkId = opts.image.parse().map_err(|_| {
        Error::Usage(format!(
            "--image {:?} is not a staged image id (64 hex digits)",
            opts.image
        ))
    })?;
    Ok((id, station(opts)?))
}

/// The station's MAC of `opts`, checked.
fn station(opts: &Options) -> Result<MacAddr, Error> {
    opts.station
        .parse()
        .map_err(|e: pxe::Error| Error::Usage(format!("--station {:?}: {e}", opts.station)))
}

/// What a capture did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CaptureOutcome {
    pub image: String,
    pub chunk_size: u64,
    pub total_bytes: u64,
    pub chunks_data: u64,
    pub chunks_free: u64,
    pub chunks_zero: u64,
    pub chunks_uploaded: u64,
    pub bytes_uploaded: u64,
    pub disk_bytes_read: u64,
    pub seconds: f64,
}

/// Capture the disk `opts.disk` into a new image on the server (the capture the
/// token is for); `log` gets the console lines. The disk is only read.
pub fn run_capture(opts: &Options, log: &(dyn Fn(&str) + Sync)) -> Result<CaptureOutcome, Error> {
    let started = Instant::now();
    let mac = station(opts)?;
    let client = Client::new(
        &opts.server,
        &opts.token,
        opts.parallel,
        opts.max_mbit,
        opts.retry_for,
    )?;
    let result = capture(opts, &client, &mac, started, log);
    if let Err(e) = &result {
        let _ = client.capture_report(
            &mac,
            &serde_json::json!({"state": "failed", "error": e.to_string()}),
            false,
        );
    }
    result
}

fn capture(
    opts: &Options,
    client: &Client,
    mac: &MacAddr,
    started: Instant,
    log: &(dyn Fn(&str) + Sync),
) -> Result<CaptureOutcome, Error> {
    let file = std::fs::File::open(&opts.disk).map_err(crate::error::io(&opts.disk))?;
    let total = crate::import::size(&file).map_err(crate::error::io(&opts.disk))?;
    drop(file);
    // The first report binds the capture to this address and names the chunk size.
    let plan = client.capture_report(
        mac,
        &serde_json::json!({"state": "running", "done_bytes": 0, "total_bytes": total}),
        true,
    )?;
    let (Some(name), Some(chunk_size)) = (plan["image"].as_str(), plan["chunk_size"].as_u64())
    else {
        return Err(Error::Usage(format!(
            "the server's answer names no image and chunk size: {plan}"
        )));
    };
    log(&format!(
        "capture of {} ({:.1} GiB) into image {name}, {} KiB chunks",
        opts.disk.display(),
        total as f64 / f64::from(1u32 << 30),
        chunk_size >> 10
    ));
    let upload = crate::capture::Upload::new(client, *mac);
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let figures = |d: u64| {
        let (chunks, bytes) = upload.uploaded();
        serde_json::json!({"state": "running", "done_bytes": d, "total_bytes": total,
            "chunks_uploaded": chunks, "bytes_uploaded": bytes})
    };
    let captured = std::thread::scope(|scope| {
        scope.spawn(|| {
            each_second_until(&finished, || {
                let d = done.load(Relaxed);
                let (chunks, bytes) = upload.uploaded();
                log(&format!(
                    "{:5.1}%  {chunks} chunks uploaded ({:.1} MB)",
                    d as f64 * 100.0 / total.max(1) as f64,
                    bytes as f64 / 1e6
                ));
                let _ = client.capture_report(mac, &figures(d), false);
            });
        });
        let captured =
            crate::capture::capture(&opts.disk, chunk_size, &upload, |d| done.store(d, Relaxed));
        finished.store(true, Relaxed);
        captured
    })?;
    for note in &captured.imported.notes {
        log(note);
    }
    let index = &captured.imported.index;
    // The figures first: the index ends the capture.
    let mut last = figures(total);
    last["chunks_data"] = (index.ids.len() as u64).into();
    last["chunks_free"] = captured.imported.free_chunks.into();
    last["disk_bytes_read"] = captured.imported.bytes_read.into();
    client.capture_report(mac, &last, true)?;
    client.finish_capture(mac, index.encode())?;
    let seconds = started.elapsed().as_secs_f64();
    let outcome = CaptureOutcome {
        image: name.to_owned(),
        chunk_size,
        total_bytes: total,
        chunks_data: index.ids.len() as u64,
        chunks_free: captured.imported.free_chunks,
        chunks_zero: captured.imported.zero_chunks,
        chunks_uploaded: captured.chunks_uploaded,
        bytes_uploaded: captured.bytes_uploaded,
        disk_bytes_read: captured.imported.bytes_read,
        seconds,
    };
    log(&format!(
        "captured in {seconds:.1} s: {} chunks of data, {} uploaded ({:.1} MB), {} free, \
         {:.1} GB read from the disk; image {name}",
        outcome.chunks_data,
        outcome.chunks_uploaded,
        outcome.bytes_uploaded as f64 / 1e6,
        outcome.chunks_free,
        outcome.disk_bytes_read as f64 / 1e9
    ));
    Ok(outcome)
}

/// Tell the orchestrator that this station's capture failed outside the capture
/// itself, with `message` (the end of a log).
pub fn report_capture_failure(opts: &Options, message: &str) -> Result<(), Error> {
    let mac = station(opts)?;
    let client = Client::new(&opts.server, &opts.token, 1, None, opts.retry_for)?;
    client
        .capture_report(
            &mac,
            &serde_json::json!({"state": "failed", "error": log_tail(message)}),
            true,
        )
        .map(|_| ())
}

/// The end of a log: at most 2000 characters, the last ones kept.
fn log_tail(message: &str) -> String {
    let chars: Vec<char> = message.trim().chars().collect();
    chars[chars.len().saturating_sub(2000)..].iter().collect()
}

/// Run a restore; `log` gets the console lines (start, progress every second, end).
pub fn run(opts: &Options, log: &(dyn Fn(&str) + Sync)) -> Result<Outcome, Error> {
    let started = Instant::now();
    let (id, mac) = identify(opts)?;
    let client = Client::new(
        &opts.server,
        &opts.token,
        opts.parallel,
        opts.max_mbit,
        opts.retry_for,
    )?;
    let result = restore(opts, &client, &id, &mac, started, log);
    if let Err(e) = &result {
        // Best effort: the server learns why; the caller says it anyway.
        let _ = client.report(
            &mac,
            &serde_json::json!({"state": "failed", "image": id.to_string(), "error": e.to_string()}),
            false,
        );
    }
    result
}

/// Tell the orchestrator that this station's restore failed before or outside the
/// restore itself (no disk, the restore program ended badly), with `message` (the
/// end of the log: at most 2000 characters, the last ones kept).
pub fn report_failure(opts: &Options, message: &str) -> Result<(), Error> {
    let (id, mac) = identify(opts)?;
    let client = Client::new(&opts.server, &opts.token, 1, None, opts.retry_for)?;
    client.report(
        &mac,
        &serde_json::json!({"state": "failed", "image": id.to_string(), "error": log_tail(message)}),
        true,
    )
}

fn restore(
    args: &Options,
    client: &Client,
    id: &ChunkId,
    mac: &MacAddr,
    started: Instant,
    log: &(dyn Fn(&str) + Sync),
) -> Result<Outcome, Error> {
    let staged = client.staged(id)?;
    // Every file this restore will inject, checked for tools before the disk is touched.
    let mut files = staged.files.clone();
    if staged.needs_station_json() {
        files.extend(staged.station_files(&client.station_json(mac)?)?);
    }
    inject::check_tools(&files, staged.windows_fs)?;
    let summary = client.summary(&staged.index)?;
    let summary_bytes = summary.encode().len() as u64;
    let index = &summary.layout;
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    log(&format!(
        "{} ({} profile), {:.1} GiB in {} KiB chunks, {:.1} GiB of data, {:.1} GiB free -> {}",
        staged.base,
        staged.profile,
        gib(index.total_size),
        index.chunk_size >> 10,
        gib(index.bytes_of(crate::index::RunKind::Data)),
        gib(index.bytes_of(crate::index::RunKind::Free)),
        args.disk.display()
    ));
    // The first report says whether the firmware runs Secure Boot.
    let mut first = progress_body(id, 0, index.total_size, &RestoreStats::default(), None);
    let secure_boot = secure_boot(Path::new(EFIVARS));
    if let Some(on) = secure_boot {
        first["secure_boot"] = on.into();
        log(&format!("Secure Boot {}", if on { "on" } else { "off" }));
    }
    let _ = client.report(mac, &first, false);

    let wave = join_wave(args, client, mac, log);
    let pace = |b: u64| client.pace(b);
    let swarm = wave.as_ref().map(|(_, wave, _)| {
        let swarm = crate::peer::Swarm::new(client, &mac.to_string(), &pace);
        swarm.update(wave);
        swarm
    });
    let done = AtomicU64::new(0);
    let latest = Mutex::new(RestoreStats::default());
    let finished = AtomicBool::new(false);
    let stop_serving = AtomicBool::new(false);
    let served_on = wave.as_ref().map(|w| w.2);
    let stats = std::thread::scope(|scope| {
        if let (Some((listener, _, port)), Some(swarm)) = (wave, &swarm) {
            match crate::peer::serve(scope, listener, swarm, &args.disk, &stop_serving) {
                Ok(_) => log(&format!("serving chunks to the wave on port {port}")),
                Err(e) => log(&format!("not serving chunks to the wave: {e}")),
            }
        }
        // Progress goes to the console and the orchestrator from a thread of its own,
        // so a slow server never stalls the restore; in a wave, the members serving
        // are asked for every second.
        scope.spawn(|| {
            each_second_until(&finished, || {
                let d = done.load(Relaxed);
                let s = latest.lock().expect("not poisoned").clone();
                let peers = swarm.as_ref().map(|w| w.stats());
                log(&format!(
                    "{:5.1}%  {} in place, {} fetched ({:.1} MB), {} emptied{}",
                    d as f64 * 100.0 / index.total_size.max(1) as f64,
                    s.chunks_in_place,
                    s.chunks_fetched,
                    s.bytes_fetched as f64 / 1e6,
                    s.chunks_emptied,
                    match &peers {
                        Some(p) => format!(
                            "; {} from peers, {} from the server, {} served",
                            p.chunks_from_peers, p.chunks_from_server, p.chunks_served
                        ),
                        None => String::new(),
                    }
                ));
                let _ = client.report(
                    mac,
                    &progress_body(id, d, index.total_size, &s, peers.as_ref()),
                    false,
                );
                if let (Some(swarm), Some(port)) = (&swarm, served_on) {
                    if let Ok(wave) = client.wave(mac, port) {
                        swarm.update(&wave);
                    }
                }
            });
        });
        let on_progress = |d: u64, s: &RestoreStats| {
            done.fetch_max(d, Relaxed);
            if let Ok(mut l) = latest.try_lock() {
                *l = s.clone();
            }
        };
        let stats = match &swarm {
            Some(swarm) => crate::restore(&summary, &args.disk, swarm, args.parallel, &on_progress),
            None => crate::restore(&summary, &args.disk, client, args.parallel, &on_progress),
        };
        // Nothing is served once the restore ends: injection changes the disk.
        if let Some(swarm) = &swarm {
            swarm.shelf().close();
        }
        stop_serving.store(true, Relaxed);
        finished.store(true, Relaxed);
        stats
    })?;
    let peers = swarm.as_ref().map(|w| w.stats());
    let mut stats = stats;
    stats.index_bytes_fetched += summary_bytes;

    // The staged files and the Windows station.json must go in; the FAT copy of
    // station.json is for people and is written where the disk has the partition.
    let (fat_copy, required): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|f| f.target == Target::Fat && !staged.files.contains(f));
    inject::inject(&args.disk, &staged.fat_label, &required)?;
    let mut injected = required.len();
    if !fat_copy.is_empty() {
        let parts = partition::partitions(&args.disk)?;
        let written = match inject::fat_partition(&args.disk, &parts, &staged.fat_label)? {
            Some(_) => inject::inject(&args.disk, &staged.fat_label, &fat_copy),
            None => Err(Error::Inject("the disk has no such FAT partition".into())),
        };
        match written {
            Ok(()) => injected += fat_copy.len(),
            Err(e) => log(&format!(
                "station.json not copied to the FAT partition: {e}"
            )),
        }
    }

    let seconds = started.elapsed().as_secs_f64();
    let mut body = progress_body(
        id,
        index.total_size,
        index.total_size,
        &stats,
        peers.as_ref(),
    );
    body["state"] = "done".into();
    body["seconds"] = seconds.into();
    body["injected"] = injected.into();
    client.report(mac, &body, true)?;
    log(&format!(
        "done in {seconds:.1} s: {} chunks in place, {} fetched ({:.1} MB), {} emptied, {} zeroed, \
         {:.1} GB read from the disk, {:.1} kB of index, {} files injected",
        stats.chunks_in_place,
        stats.chunks_fetched,
        stats.bytes_fetched as f64 / 1e6,
        stats.chunks_emptied,
        stats.zero_chunks_written,
        stats.disk_bytes_read as f64 / 1e9,
        stats.index_bytes_fetched as f64 / 1e3,
        injected
    ));
    if let Some(p) = &peers {
        log(&format!(
            "peers: {} chunks from peers ({:.1} MB), {} from the server, {} served ({:.1} MB), {} peers dropped",
            p.chunks_from_peers,
            p.bytes_from_peers as f64 / 1e6,
            p.chunks_from_server,
            p.chunks_served,
            p.bytes_served as f64 / 1e6,
            p.peers_dropped
        ));
    }
    Ok(Outcome {
        stats,
        seconds,
        image: id.to_string(),
        injected,
        peers,
    })
}

/// Join the restore's wave when told where to serve: bind the listener, tell the
/// server the port, and learn the wave. `None` (a unicast restore) when this restore
/// is in no wave, or the port cannot be bound, or the server cannot say.
fn join_wave(
    args: &Options,
    client: &Client,
    mac: &MacAddr,
    log: &(dyn Fn(&str) + Sync),
) -> Option<(std::net::TcpListener, crate::peer::Wave, u16)> {
    let listen = args.peer_listen?;
    let listener = match std::net::TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            log(&format!(
                "cannot serve chunks on {listen} ({e}): fetching from the server only"
            ));
            return None;
        }
    };
    let port = listener.local_addr().ok()?.port();
    match client.wave(mac, port) {
        Ok(wave) if wave.wave.is_some() => {
            log(&format!(
                "restore wave {}: {} other stations serving now",
                wave.wave.unwrap_or_default(),
                wave.peers.len()
            ));
            Some((listener, wave, port))
        }
        Ok(_) => None,
        Err(e) => {
            log(&format!(
                "the wave is unknown ({e}): fetching from the server only"
            ));
            None
        }
    }
}

/// Call `tick` once a second until `finished` (polled every 100 ms, so the end is
/// not held up): the console and server progress of a restore or capture, from a
/// thread of its own, so a slow server never stalls the work.
fn each_second_until(finished: &AtomicBool, mut tick: impl FnMut()) {
    let mut last = Instant::now();
    while !finished.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            tick();
        }
    }
}

/// Where the kernel shows the firmware's variables (efivarfs).
const EFIVARS: &str = "/sys/firmware/efi/efivars";
/// The `SecureBoot` variable of the UEFI global variable GUID (UEFI 2.10 §3.3).
const SECURE_BOOT_VAR: &str = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

/// Whether the firmware booted with Secure Boot on, from efivarfs at `efivars`:
/// the variable is 4 bytes of attributes, then one byte, 1 for on. `None` when the
/// machine has no UEFI variables to read (BIOS, or efivarfs not mounted); a UEFI
/// firmware without the variable predates Secure Boot: off.
fn secure_boot(efivars: &Path) -> Option<bool> {
    match std::fs::read(efivars.join(SECURE_BOOT_VAR)) {
        Ok(bytes) => Some(bytes.get(4) == Some(&1)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // An empty directory is efivarfs not mounted, not a firmware without it.
            let mounted = std::fs::read_dir(efivars).is_ok_and(|mut d| d.next().is_some());
            mounted.then_some(false)
        }
        Err(_) => None,
    }
}

fn progress_body(
    id: &ChunkId,
    done: u64,
    total: u64,
    s: &RestoreStats,
    peers: Option<&crate::peer::SwarmStats>,
) -> serde_json::Value {
    let mut body = serde_json::to_value(s).expect("plain struct");
    if let Some(serde_json::Value::Object(p)) =
        peers.map(|p| serde_json::to_value(p).expect("plain struct"))
    {
        body.as_object_mut().expect("an object").extend(p);
    }
    body["state"] = "running".into();
    body["image"] = id.to_string().into();
    body["done_bytes"] = done.into();
    body["total_bytes"] = total.into();
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(station: &str) -> Options {
        Options {
            server: "http://127.0.0.1:1".into(),
            station: station.into(),
            token: "t".into(),
            image: "ab".repeat(32),
            disk: PathBuf::from("/nonexistent"),
            parallel: 1,
            max_mbit: None,
            retry_for: Duration::ZERO,
            peer_listen: None,
        }
    }

    #[test]
    fn secure_boot_is_read_from_the_firmware_variable_and_unknown_without_efivarfs() {
        let dir = tempfile::tempdir().unwrap();
        let vars = dir.path();
        assert_eq!(secure_boot(&vars.join("absent")), None, "BIOS: no efivars");
        assert_eq!(
            secure_boot(vars),
            None,
            "efivarfs not mounted: an empty directory"
        );
        std::fs::write(
            vars.join("BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
            [6, 0, 0, 0, 1, 0],
        )
        .unwrap();
        assert_eq!(secure_boot(vars), Some(false), "UEFI without the variable");
        std::fs::write(vars.join(SECURE_BOOT_VAR), [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(secure_boot(vars), Some(true));
        std::fs::write(vars.join(SECURE_BOOT_VAR), [6, 0, 0, 0, 0]).unwrap();
        assert_eq!(secure_boot(vars), Some(false));
        std::fs::write(vars.join(SECURE_BOOT_VAR), [6, 0, 0]).unwrap();
        assert_eq!(secure_boot(vars), Some(false), "a short variable is not on");
    }

    #[test]
    fn the_station_is_read_as_the_orchestrator_reads_a_mac_and_a_bad_one_is_a_usage_error() {
        for form in ["52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "525400abcdef"] {
            let (_, mac) = identify(&options(form)).unwrap();
            assert_eq!(mac.to_string(), "52:54:00:ab:cd:ef", "{form}");
        }
        for bad in ["52:54-00:ab:cd:ef", "52:54:00:ab:cd", "../../etc", ""] {
            match identify(&options(bad)) {
                Err(Error::Usage(why)) => assert!(why.contains("--station"), "{why}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
