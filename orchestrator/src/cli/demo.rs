//! `netreset demo`: the main job on the embedded default, on loopback, no root. A
//! temporary store, a generated sample image, a simulated school of 3 rooms × 10
//! stations with 5 stations flagged for KMS activation (the vendor manual's example),
//! and a campaign to the Windows and Office targets with live progress, then a
//! summary. The daemon's API is served while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pxe::MacAddr;
use tokio_util::sync::CancellationToken;

use crate::sim::firmware::BootServers;
use crate::sim::kms_host::Product;
use crate::sim::school::{School, StationSpec};
use crate::{Config, Daemon};

const ROOMS: [&str; 3] = ["A", "B", "C"];
const PER_ROOM: u8 = 10;
const FLAGGED: u8 = 5;
const KMS_HOST: &str = "kms.demo.invalid";
const IMAGE: &str = "demo";
const DISK: u64 = 40 << 20;

fn mac(room: usize, i: u8) -> MacAddr {
    MacAddr([0x02, 0x00, 0xde, 0x00, room as u8 + 1, i + 1])
}

/// Run the demo; with `json`, the summary is one JSON line on stdout. Each simulated
/// station takes `windows_boot` to boot Windows and activate after a restore. With
/// `keep_serving`, the daemon and the school go on after the summary (the dashboard
/// stays up) until Ctrl-C or SIGTERM.
pub async fn run(json: bool, windows_boot: Duration, keep_serving: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    // Set before anything runs: Ctrl-C or SIGTERM ends the demo cleanly at any point.
    let interrupted = crate::cli::stop_token()?;
    let dir = tempfile::Builder::new()
        .prefix("netreset-demo-")
        .tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("restore"))?;
    let tftp = dir.path().join("tftp");
    std::fs::create_dir_all(&tftp)?;
    for name in ["undionly.kpxe", "snponly.efi"] {
        std::fs::write(
            tftp.join(name),
            b"stand-in: the demo's stations load this over TFTP, then act as iPXE in-process\n",
        )?;
    }
    // The simulated stations restore in-process: no kernel is booted, but resets are
    // refused while the restore environment is missing.
    std::fs::write(
        data.join("restore/vmlinuz"),
        b"stand-in: the demo's stations restore in-process\n",
    )?;
    std::fs::write(data.join("restore/initrd.img"), b"stand-in\n")?;

    let sample = dir.path().join("golden.img");
    images::sample::sample_disk(&sample, DISK, 2026).context("building the sample image")?;
    let store = images::ChunkStore::open(&data)?;
    let index = images::import(&store, &sample, 64 << 10, |_| {})?.index;
    images::Images::open(&data)?.add(IMAGE, &index)?;

    // A port free on every room's address: two demos (or a demo and the tests) can
    // run side by side.
    let wol_port = free_wol_port()?;
    let token = format!("demo-{:016x}", rand_u64());
    let mut toml = format!(
        "data_dir = \"{data}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[dhcp]\nserver_ip = \"127.0.0.1\"\nlisten = \"127.0.0.1:0\"\npxe_listen = \"127.0.0.1:0\"\nbroadcast = \"127.0.0.1:9\"\n\
         [tftp]\nlisten = \"127.0.0.1:0\"\nroot = \"{tftp}\"\n[kms]\nhost = \"{KMS_HOST}\"\n[api]\ntoken = \"{token}\"\n[restore]\ndisk = \"/dev/sda\"\n\
         [campaigns]\nmax_parallel = 5\ntick = \"100ms\"\nwake_timeout = \"5s\"\nrestore_timeout = \"60s\"\nreport_timeout = \"60s\"\n",
        data = data.display(),
        tftp = dir.path().join("tftp").display(),
    );
    for (r, name) in ROOMS.iter().enumerate() {
        toml.push_str(&format!(
            "[[rooms]]\nname = \"{name}\"\nwol_broadcast = \"127.91.{}.255\"\nwol_source = \"127.0.0.1\"\nwol_port = {wol_port}\n",
            r + 1
        ));
        for i in 0..PER_ROOM {
            toml.push_str(&format!(
                "[[inventory.stations]]\nmac = \"{}\"\nname = \"{}{:02}\"\nroom = \"{name}\"\nimage = \"{IMAGE}\"\nkms_activation = {}\n",
                mac(r, i),
                name.to_lowercase(),
                i + 1,
                r == 0 && i < FLAGGED
            ));
        }
    }
    let config = Config::parse(&toml, &dir.path().join("demo.toml"))?;
    let daemon = Daemon::start(config).await?;
    let url = daemon.public_url.clone();

    let (dhcp, pxe) = daemon
        .dhcp_addrs
        .context("the demo's ProxyDHCP is on loopback")?;
    let boot = BootServers {
        dhcp,
        pxe,
        tftp: daemon.tftp_addr,
    };
    let mut school = School::new(KMS_HOST, boot);
    school.windows_boot = windows_boot;
    let disks = dir.path().join("disks");
    std::fs::create_dir_all(&disks)?;
    let mut specs = Vec::new();
    for r in 0..ROOMS.len() {
        for i in 0..PER_ROOM {
            let disk = disks.join(format!("{}.img", mac(r, i)).replace(':', ""));
            std::fs::File::create(&disk)?.set_len(DISK)?;
            specs.push(StationSpec {
                mac: mac(r, i),
                ip: Ipv4Addr::new(127, 91, r as u8 + 1, 10 + i),
                room_ip: Ipv4Addr::new(127, 91, r as u8 + 1, 255),
                wol_port,
                disk,
                generalized: true,
                dead: false,
            });
        }
    }
    let stop = CancellationToken::new();
    school
        .start(specs, stop.clone())
        .await
        .context("the simulated rooms' Wake-on-LAN listeners")?;
    if !json || keep_serving {
        eprintln!("netreset demo: {} stations in rooms A, B, C; {FLAGGED} in room A have KMS activation on", ROOMS.len() * PER_ROOM as usize);
        // The token after '#' stays in the browser (a fragment is never sent).
        eprintln!("  dashboard: {url}/#token={token}");
        eprintln!("  API while it runs: {url}/api/v1 (Authorization: Bearer {token})");
        eprintln!("  campaign: room A, windows + office, margin 2 -> targets 27 and 7");
    }

    let client = Api {
        base: url.clone(),
        token: token.clone(),
    };
    let created = client
        .post(
            "/api/v1/campaigns",
            r#"{"room": "A", "families": ["windows", "office"], "margin": 2, "start": "now"}"#,
        )
        .await?;
    let id = created["id"].as_u64().context("campaign id")?;

    let bars = MultiProgress::new();
    if json {
        bars.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let windows = bars.add(
        ProgressBar::new(27)
            .with_style(style.clone())
            .with_prefix("windows"),
    );
    let office = bars.add(ProgressBar::new(7).with_style(style).with_prefix("office"));
    let states = bars.add(ProgressBar::new_spinner());
    let deadline = Instant::now() + Duration::from_secs(300);
    let campaign = loop {
        let c = client.get(&format!("/api/v1/campaigns/{id}")).await?;
        windows.set_position(c["families"]["windows"]["reported"].as_u64().unwrap_or(0));
        office.set_position(c["families"]["office"]["reported"].as_u64().unwrap_or(0));
        let mut phases: BTreeMap<String, usize> = BTreeMap::new();
        for s in c["stations"].as_array().into_iter().flatten() {
            *phases
                .entry(s["phase"].as_str().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        let text: Vec<String> = phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
        states.set_message(format!("stations: {}", text.join(", ")));
        states.tick();
        if c["state"] != "running" {
            break c;
        }
        if Instant::now() > deadline {
            bail!("the campaign did not finish within 5 minutes: {c}");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = interrupted.cancelled() => {
                stop.cancel();
                daemon.shutdown().await?;
                bail!("interrupted: campaign {id} was still running");
            }
        }
    };
    windows.finish();
    office.finish();
    states.finish_and_clear();

    let cycles: BTreeMap<String, u64> = campaign["stations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["mac"].as_str().unwrap_or("?").to_owned(),
                s["cycles_done"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let (cmids, stations, mut cycle_times): (BTreeSet<String>, BTreeSet<MacAddr>, Vec<f64>) = {
        let log = school.log.lock().expect("not poisoned");
        (
            log.activations.iter().map(|a| a.2.clone()).collect(),
            log.activations.iter().map(|a| a.0).collect(),
            log.cycles.iter().map(Duration::as_secs_f64).collect(),
        )
    };
    cycle_times.sort_by(f64::total_cmp);
    let cycle_median = cycle_times
        .get(cycle_times.len() / 2)
        .copied()
        .unwrap_or(0.0);
    let campaign_seconds = campaign_span(&campaign);
    // The least time 27 cycles take on 5 stations, 5 at a time: ceil(27 / 5) rounds.
    let lower_bound = f64::from(crate::engine::planner::lower_bound_cycles(
        27,
        FLAGGED as usize,
        5,
    )) * cycle_median;
    let counts = (
        school.count(Product::WindowsClient),
        school.count(Product::Office),
    );
    let seconds = started.elapsed().as_secs_f64();
    let summary = serde_json::json!({
        "state": campaign["state"],
        "targets": { "windows": 27, "office": 7 },
        "reported_counts": {
            "windows": campaign["families"]["windows"]["reported"],
            "office": campaign["families"]["office"]["reported"],
        },
        "kms_host_counts": { "windows": counts.0, "office": counts.1 },
        "cycles": campaign["cycles_done"],
        "cycles_per_station": cycles,
        "cmids_generated": cmids.len(),
        "distinct_stations": stations.len(),
        "seconds": (seconds * 10.0).round() / 10.0,
        "campaign_seconds": (campaign_seconds * 100.0).round() / 100.0,
        "cycle_seconds_median": (cycle_median * 1000.0).round() / 1000.0,
        "lower_bound_seconds": (lower_bound * 100.0).round() / 100.0,
    });
    if json {
        println!("{summary}");
    } else {
        println!(
            "campaign {}: windows {}/27, office {}/7 (the simulated KMS host counts {} and {})",
            campaign["state"].as_str().unwrap_or("?"),
            summary["reported_counts"]["windows"],
            summary["reported_counts"]["office"],
            counts.0,
            counts.1
        );
        println!(
            "{} cycles on {} distinct stations, {} CMIDs generated, {:.1} s",
            summary["cycles"],
            stations.len(),
            cmids.len(),
            seconds
        );
        for (mac, n) in &cycles {
            println!("  {mac}: {n} cycles");
        }
    }
    if keep_serving {
        eprintln!("  the dashboard stays up: {url}/#token={token}  (Ctrl-C ends the demo)");
        interrupted.cancelled().await;
    }
    stop.cancel();
    daemon.shutdown().await?;
    if campaign["state"] != "done" {
        bail!(
            "the campaign ended {}: {}",
            campaign["state"],
            campaign["reason"]
        );
    }
    drop(dir);
    Ok(())
}

/// A UDP port that is free on the three rooms' broadcast addresses just now.
fn free_wol_port() -> anyhow::Result<u16> {
    let room = |r: u8| Ipv4Addr::new(127, 91, r, 255);
    for _ in 0..20 {
        let first = std::net::UdpSocket::bind((room(1), 0))?;
        let port = first.local_addr()?.port();
        let others: Result<Vec<_>, _> = (2..=ROOMS.len() as u8)
            .map(|r| std::net::UdpSocket::bind((room(r), port)))
            .collect();
        if others.is_ok() {
            return Ok(port);
        }
    }
    bail!("no UDP port is free on the demo rooms' addresses 127.91.1-3.255")
}

/// Seconds from the campaign's creation to its last change (its end).
fn campaign_span(c: &serde_json::Value) -> f64 {
    let at = |k: &str| {
        c[k].as_str()
            .and_then(crate::clock::parse_rfc3339)
            .map_or(0.0, |ms| ms as f64 / 1000.0)
    };
    (at("updated_at") - at("created_at")).max(0.0)
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b) ^ u64::from(std::process::id())
}

/// A tiny admin API client (blocking ureq on a blocking thread).
struct Api {
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.call("GET", path, None).await
    }

    async fn post(&self, path: &str, body: &str) -> anyhow::Result<serde_json::Value> {
        self.call("POST", path, Some(body.to_owned())).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<serde_json::Value> {
        let (url, token, method) = (
            format!("{}{path}", self.base),
            self.token.clone(),
            method.to_owned(),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<serde_json::Value> {
            let req = ureq::request(&method, &url)
                .timeout(Duration::from_secs(10))
                .set("Authorization", &format!("Bearer {token}"));
            let resp = match body {
                Some(b) => req.set("Content-Type", "application/json").send_string(&b),
                None => req.call(),
            };
            let text = match resp {
                Ok(r) => r.into_string()?,
                Err(ureq::Error::Status(code, r)) => bail!(
                    "{method} {url}: {code} {}",
                    r.into_string().unwrap_or_default()
                ),
                Err(e) => bail!("{method} {url}: {e}"),
            };
            Ok(serde_json::from_str(&text)?)
        })
        .await?
    }
}
