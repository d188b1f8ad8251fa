//! Chaos: a KMS campaign on the simulated school with the daemon killed (SIGKILL) at
//! 20 seeded random points and started again on the same data, and the stations'
//! restore clients, each a process of its own, killed at seeded random points (a
//! power cut mid-restore). The campaign completes, no station runs a cycle twice (the
//! KMS count rises by exactly one per activation and ends at the targets), the ledger
//! holds every report once, and every disk is the image again.
//!
//! `CHAOS_SEED=N cargo test -p orchestrator --test chaos` replays another run; a
//! failure names its seed.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orchestrator::sim::firmware::BootServers;
use orchestrator::sim::kms_host::Product;
use orchestrator::sim::school::{School, StationSpec};
use pxe::MacAddr;
use tokio_util::sync::CancellationToken;

const NETRESET: &str = env!("CARGO_BIN_EXE_netreset");
const TOKEN: &str = "crash-test-admin-token-0123";
const WOL_PORT: u16 = 40_209;

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0x0d, i])
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A seeded generator (PCG-style LCG): the same seed, the same kill points.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("CHAOS_SEED is a number"))
        .unwrap_or(0x9e37_79b9)
}

/// Restore clients killed so far: (station, after how many ms).
type Kills = Arc<Mutex<Vec<(String, u64)>>>;

/// The stations' restore client as a process of its own (this test binary again, in
/// [`restore_client_process`]), killed with SIGKILL after a seeded delay on about one
/// restore in three, at most `max` times and never the same station twice in a row.
fn killable_restore(
    rng: Arc<Mutex<Rng>>,
    kills: Kills,
    max: usize,
) -> orchestrator::sim::school::RestoreClient {
    Arc::new(move |opts: &images::client::Options| {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "restore_client_process",
                "--nocapture",
            ])
            .env("CHAOS_RESTORE_SERVER", &opts.server)
            .env("CHAOS_RESTORE_STATION", &opts.station)
            .env("CHAOS_RESTORE_TOKEN", &opts.token)
            .env("CHAOS_RESTORE_IMAGE", &opts.image)
            .env("CHAOS_RESTORE_DISK", &opts.disk)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let kill_after = {
            let mut rng = rng.lock().unwrap();
            let mut kills = kills.lock().unwrap();
            let killed_last = kills.last().is_some_and(|(s, _)| *s == opts.station);
            (rng.below(3) == 0 && kills.len() < max && !killed_last).then(|| {
                let ms = 20 + rng.below(400);
                kills.push((opts.station.clone(), ms));
                ms
            })
        };
        if let Some(ms) = kill_after {
            std::thread::sleep(Duration::from_millis(ms));
            if child.try_wait().map_err(|e| e.to_string())?.is_none() {
                child.kill().map_err(|e| e.to_string())?; // SIGKILL
                child.wait().map_err(|e| e.to_string())?;
                return Err(format!("restore client killed after {ms} ms"));
            }
            // Done before its kill point: it does not count as a kill.
            kills.lock().unwrap().pop();
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        let mut log = String::new();
        child.stderr.take().unwrap().read_to_string(&mut log).ok();
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("restore client: {status}: {log}"))
    })
}

/// The restore client process of [`killable_restore`]; without its environment (any
/// ordinary test run) there is nothing to do.
#[test]
#[ignore = "the restore client process of the chaos test, started by it"]
fn restore_client_process() {
    let Ok(server) = std::env::var("CHAOS_RESTORE_SERVER") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let opts = images::client::Options {
        server,
        station: var("CHAOS_RESTORE_STATION"),
        token: var("CHAOS_RESTORE_TOKEN"),
        image: var("CHAOS_RESTORE_IMAGE"),
        disk: var("CHAOS_RESTORE_DISK").into(),
        parallel: 2,
        max_mbit: None,
        retry_for: Duration::from_secs(5),
        peer_listen: None,
    };
    if let Err(e) = images::client::run(&opts, &|_| {}) {
        eprintln!("{e}");
        std::process::exit(1);
    }
}

/// The 64 KiB chunks where `disk` differs from `image`.
fn differing_chunks(disk: &Path, image: &Path) -> Vec<usize> {
    let (a, b) = (std::fs::read(disk).unwrap(), std::fs::read(image).unwrap());
    assert_eq!(a.len(), b.len(), "{}", disk.display());
    a.chunks(1 << 16)
        .zip(b.chunks(1 << 16))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect()
}

fn serve(config: &std::path::Path) -> Child {
    Command::new(NETRESET)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn call(method: &str, url: &str, body: Option<&str>) -> Result<serde_json::Value, String> {
    let req = ureq::request(method, url)
        .timeout(Duration::from_secs(5))
        .set("Authorization", &format!("Bearer {TOKEN}"));
    let resp = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    }
    .map_err(|e| e.to_string())?;
    serde_json::from_str(&resp.into_string().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

async fn call_async(
    method: &'static str,
    url: String,
    body: Option<String>,
) -> Result<serde_json::Value, String> {
    tokio::task::spawn_blocking(move || call(method, &url, body.as_deref()))
        .await
        .unwrap()
}

async fn healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while call_async("GET", format!("{base}/api/v1/health"), None)
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the daemon did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_campaign_survives_20_daemon_kills_and_killed_restores_and_ends_exactly_at_the_targets() {
    let seed = seed();
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} replays it)");
    let rng = Arc::new(Mutex::new(Rng(seed)));
    let kills: Kills = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("restore")).unwrap();
    std::fs::create_dir_all(dir.path().join("tftp")).unwrap();
    std::fs::write(dir.path().join("tftp/undionly.kpxe"), vec![0x55; 70_000]).unwrap();
    std::fs::write(data.join("restore/vmlinuz"), b"k").unwrap();
    std::fs::write(data.join("restore/initrd.img"), b"i").unwrap();
    let sample = dir.path().join("sample.img");
    images::sample::sample_disk(&sample, 40 << 20, 11).unwrap();
    let store = images::ChunkStore::open(&data).unwrap();
    let index = images::import(&store, &sample, 1 << 16, |_| {})
        .unwrap()
        .index;
    images::Images::open(&data)
        .unwrap()
        .add("lab", &index)
        .unwrap();

    let port = free_port();
    // Fixed ports, so that the stations find the restarted daemon where it was.
    let (dhcp, pxe, tftp) = (free_udp_port(), free_udp_port(), free_udp_port());
    let base = format!("http://127.0.0.1:{port}");
    let room = Ipv4Addr::new(127, 81, 0, 255);
    let mut toml = format!(
        "data_dir = \"data\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n[dhcp]\nserver_ip = \"127.0.0.1\"\nlisten = \"127.0.0.1:{dhcp}\"\npxe_listen = \"127.0.0.1:{pxe}\"\nbroadcast = \"127.0.0.1:9\"\n\
         [tftp]\nlisten = \"127.0.0.1:{tftp}\"\nroot = \"tftp\"\n[kms]\nhost = \"kms.sim\"\n[api]\ntoken = \"{TOKEN}\"\n[restore]\ndisk = \"/dev/sda\"\n\
         [[rooms]]\nname = \"lab\"\nwol_broadcast = \"{room}\"\nwol_source = \"127.0.0.1\"\nwol_port = {WOL_PORT}\n\
         [campaigns]\ntick = \"100ms\"\nwake_timeout = \"3s\"\nwake_attempts = 5\nrestore_timeout = \"8s\"\nrestore_attempts = 5\nreport_timeout = \"30s\"\n"
    );
    for i in 0..30u8 {
        let room = if i < 5 {
            "room = \"lab\"\nimage = \"lab\"\nkms_activation = true\n"
        } else {
            ""
        };
        toml.push_str(&format!(
            "[[inventory.stations]]\nmac = \"{}\"\n{room}",
            mac(i)
        ));
    }
    let config = dir.path().join("netreset.toml");
    std::fs::write(&config, toml).unwrap();

    let mut daemon = serve(&config);
    healthy(&base).await;
    let local = |port| std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut school = School::new(
        "kms.sim",
        BootServers {
            dhcp: local(dhcp),
            pxe: local(pxe),
            tftp: local(tftp),
        },
    );
    school.restore = killable_restore(rng.clone(), kills.clone(), 6);
    let specs = (0..5u8)
        .map(|i| {
            let disk = dir.path().join(format!("disk{i}"));
            std::fs::File::create(&disk)
                .unwrap()
                .set_len(40 << 20)
                .unwrap();
            StationSpec {
                mac: mac(i),
                ip: Ipv4Addr::new(127, 81, 0, 10 + i),
                room_ip: room,
                wol_port: WOL_PORT,
                disk,
                generalized: true,
                dead: false,
            }
        })
        .collect();
    let stop = CancellationToken::new();
    school.start(specs, stop.clone()).await.unwrap();
    let created = call_async(
        "POST",
        format!("{base}/api/v1/campaigns"),
        Some(r#"{"room": "lab", "families": ["windows", "office"], "start": "now"}"#.into()),
    )
    .await
    .unwrap();
    let id = created["id"].as_u64().unwrap();

    // Twenty kills at seeded points spread over the campaign.
    let mut points = Rng(seed ^ 0x5eed);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100 + points.below(900))).await;
        daemon.kill().unwrap(); // SIGKILL
        daemon.wait().unwrap();
        daemon = serve(&config);
        healthy(&base).await;
    }

    let deadline = Instant::now() + Duration::from_secs(120);
    let c = loop {
        let c = call_async("GET", format!("{base}/api/v1/campaigns/{id}"), None)
            .await
            .unwrap();
        if c["state"] != "running" {
            break c;
        }
        assert!(Instant::now() < deadline, "still running: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    stop.cancel();
    daemon.kill().unwrap();
    daemon.wait().unwrap();

    let kills = kills.lock().unwrap().clone();
    eprintln!("seed {seed}: restore clients killed: {kills:?}");
    assert_eq!(c["state"], "done", "seed {seed}: {c}");
    assert!(
        !kills.is_empty(),
        "seed {seed}: no restore client was killed"
    );
    let cycles: Vec<u64> = c["stations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            // A station may still wait for its last report when another's report
            // reaches the target; none may have dropped out.
            assert!(
                s["phase"] != "unreachable" && s["phase"] != "quarantined",
                "no station dropped out: {s}"
            );
            s["cycles_done"].as_u64().unwrap()
        })
        .collect();
    // (Spread evenly is the planner's aim, not a promise across crashes: a station
    // whose step was lost waits for its timeout while the others go on.)
    assert!(cycles.iter().sum::<u64>() <= 27, "{cycles:?}");
    assert_eq!(school.count(Product::WindowsClient), 27);
    assert_eq!(school.count(Product::Office), 7);
    school
        .counts_rose_one_by_one(27, 7)
        .expect("no cycle ran twice");
    let store = orchestrator::store::Store::open(&data.join("store"), 50).unwrap();
    let reports = store.ledger().unwrap().reports().to_vec();
    assert_eq!(reports.len(), 27 + 7, "every report once");
    let mut cmids: Vec<&str> = reports.iter().map(|r| r.cmid.as_str()).collect();
    cmids.sort_unstable();
    cmids.dedup();
    assert_eq!(cmids.len(), 34);

    // Every disk is the image again: the same few chunks differ on all of them, where
    // the restore injected station.json and the KMS settings.
    let differing: Vec<Vec<usize>> = (0..5)
        .map(|i| differing_chunks(&dir.path().join(format!("disk{i}")), &sample))
        .collect();
    eprintln!(
        "seed {seed}: chunks differing from the image on every disk: {:?}",
        differing[0]
    );
    assert!(
        differing.iter().all(|d| *d == differing[0]) && differing[0].len() <= 8,
        "seed {seed}: chunks that differ from the image, per disk: {differing:?}"
    );
}
