//! The daemon killed with SIGKILL at five points of a campaign and started again on
//! the same data: the campaign completes, no station runs a cycle twice (the KMS
//! count rises by exactly one per activation and ends at the targets), and the ledger
//! holds every report once.

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
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
async fn a_campaign_survives_five_kills_of_the_daemon_and_ends_exactly_at_the_targets() {
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
         [campaigns]\ntick = \"100ms\"\nwake_timeout = \"3s\"\nwake_attempts = 5\nrestore_timeout = \"30s\"\nreport_timeout = \"30s\"\n"
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
    let school = School::new(
        "kms.sim",
        BootServers {
            dhcp: local(dhcp),
            pxe: local(pxe),
            tftp: local(tftp),
        },
    );
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

    // Five kills at points spread over the campaign (the seed keeps them repeatable).
    let mut x = 0x9e37_79b9u64;
    for _ in 0..5 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(300 + (x >> 33) % 1200)).await;
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

    assert_eq!(c["state"], "done", "{c}");
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
    let (windows, office) = {
        let log = school.log.lock().unwrap();
        (log.counts("windows"), log.counts("office"))
    };
    assert_eq!(
        windows,
        (1..=27).collect::<Vec<u32>>(),
        "no cycle ran twice"
    );
    assert_eq!(office, (1..=7).collect::<Vec<u32>>());
    let store = orchestrator::store::Store::open(&data.join("store"), 50).unwrap();
    let reports = store.ledger().unwrap().reports().to_vec();
    assert_eq!(reports.len(), 27 + 7, "every report once");
    let mut cmids: Vec<&str> = reports.iter().map(|r| r.cmid.as_str()).collect();
    cmids.sort_unstable();
    cmids.dedup();
    assert_eq!(cmids.len(), 34);
}
