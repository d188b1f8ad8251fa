//! A virtual school for the tests and the demo: stations that listen for
//! Wake-on-LAN on their room's loopback address, network-boot through the daemon's
//! ProxyDHCP, TFTP and HTTP (`sim::firmware`), restore with the real restore client onto a file-backed disk, "boot
//! Windows" by reading what was injected into that disk, activate against the
//! simulated KMS host, report through the agent API and obey reboot commands.
//!
//! A station that finds no KMS settings on its disk cannot activate; a station of a
//! non-generalized image keeps its CMID across resets.

use std::collections::HashMap;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pxe::MacAddr;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::firmware::BootServers;
use super::kms_host::{KmsHost, Product};

/// One simulated station.
#[derive(Clone, Debug)]
pub struct StationSpec {
    pub mac: MacAddr,
    /// The station's own loopback address (127.x.y.z), as DHCP and TFTP see it.
    pub ip: Ipv4Addr,
    /// The room's Wake-on-LAN address (127.x.y.z) and port (9, or a high port
    /// without root).
    pub room_ip: Ipv4Addr,
    pub wol_port: u16,
    pub disk: PathBuf,
    /// Whether the image is generalized: a new CMID at every reset.
    pub generalized: bool,
    /// A station that never wakes.
    pub dead: bool,
}

/// The school: its KMS host and what happened.
#[derive(Debug, Default)]
pub struct Log {
    pub activations: Vec<(MacAddr, String, String, u32)>,
    pub boots: HashMap<MacAddr, u32>,
    /// Each completed cycle: from the wake (or reboot command) to the last report.
    pub cycles: Vec<Duration>,
}

impl Log {
    /// The host's count after each request of `family` ("windows", "office"), in order.
    pub fn counts(&self, family: &str) -> Vec<u32> {
        self.activations
            .iter()
            .filter(|a| a.1 == family)
            .map(|a| a.3)
            .collect()
    }
}

#[derive(Clone)]
pub struct School {
    pub host: Arc<Mutex<KmsHost>>,
    /// The daemon's ProxyDHCP and TFTP, where the stations' firmware boots from.
    pub boot: BootServers,
    pub kms_name: String,
    pub log: Arc<Mutex<Log>>,
    /// The calendar clock the KMS host ages CMIDs by and the stations' clocks say:
    /// the daemon's, so that a simulated holiday passes for both.
    pub clock: crate::clock::Clock,
    /// How long Windows takes to boot, run SetupComplete.cmd and activate (zero by
    /// default; real stations take minutes).
    pub windows_boot: Duration,
    /// The KMS host cannot be reached: requests get no reply.
    pub kms_down: Arc<AtomicBool>,
    /// How far the stations' clocks are off the host's, in seconds.
    pub station_clock_skew_s: Arc<AtomicI64>,
    /// Raised by [`School::power_off`]: running stations shut down.
    power_offs: Arc<(std::sync::atomic::AtomicU64, tokio::sync::Notify)>,
}

/// What the station found on its disk after a restore.
struct Windows {
    server: String,
    token: String,
    families: Vec<String>,
    kms_host: Option<String>,
    image: String,
}

impl School {
    pub fn new(kms_name: &str, boot: BootServers) -> School {
        School {
            host: Arc::new(Mutex::new(KmsHost::new())),
            boot,
            kms_name: kms_name.to_owned(),
            log: Arc::default(),
            clock: crate::clock::Clock::system(),
            windows_boot: Duration::ZERO,
            power_offs: Arc::default(),
            kms_down: Arc::default(),
            station_clock_skew_s: Arc::default(),
        }
    }

    /// Shut every running station down (the caretaker at the start of a holiday):
    /// they wait for Wake-on-LAN again.
    pub fn power_off(&self) {
        let (count, notify) = &*self.power_offs;
        count.fetch_add(1, Ordering::SeqCst);
        notify.notify_waiters();
    }

    /// The simulated KMS host's count for `product` now.
    pub fn count(&self, product: Product) -> usize {
        let now = Duration::from_millis(self.clock.now_ms());
        self.host
            .lock()
            .expect("not poisoned")
            .current_count(product, now)
    }

    /// Start the stations; they run until `cancel`. Each room address gets one
    /// Wake-on-LAN listener (port 9 needs root or CAP_NET_BIND_SERVICE).
    pub async fn start(
        &self,
        stations: Vec<StationSpec>,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let mut rooms: HashMap<(Ipv4Addr, u16), HashMap<MacAddr, mpsc::UnboundedSender<()>>> =
            HashMap::new();
        for spec in stations {
            let (tx, rx) = mpsc::unbounded_channel();
            rooms
                .entry((spec.room_ip, spec.wol_port))
                .or_default()
                .insert(spec.mac, tx);
            let school = self.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { school.station(spec, rx, cancel).await });
        }
        for ((ip, port), macs) in rooms {
            let socket = tokio::net::UdpSocket::bind((ip, port)).await?;
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    let got = tokio::select! {
                        _ = cancel.cancelled() => return,
                        got = socket.recv_from(&mut buf) => got,
                    };
                    let Ok((n, _)) = got else { continue };
                    // A magic packet: 6 x 0xff, then the MAC 16 times.
                    if n < 102 || buf[..6] != [0xff; 6] {
                        continue;
                    }
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&buf[6..12]);
                    if let Some(tx) = macs.get(&MacAddr(mac)) {
                        let _ = tx.send(());
                    }
                }
            });
        }
        Ok(())
    }

    async fn station(
        self,
        spec: StationSpec,
        mut wake: mpsc::UnboundedReceiver<()>,
        cancel: CancellationToken,
    ) {
        let mut running: Option<Windows> = None;
        let mut resets = 0u32;
        let (power_offs, power_off) = &*self.power_offs;
        let mut seen_power_offs = power_offs.load(Ordering::SeqCst);
        loop {
            let off = power_off.notified();
            let now_power_offs = power_offs.load(Ordering::SeqCst);
            if now_power_offs != seen_power_offs {
                seen_power_offs = now_power_offs;
                running = None;
            }
            // Off: wait for a magic packet. On: poll the agent's commands.
            let boot = match &running {
                None => tokio::select! {
                    _ = cancel.cancelled() => return,
                    w = wake.recv() => w.is_some() && !spec.dead,
                },
                Some(win) => tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = off => continue,
                    cmd = self.poll(&spec, win) => cmd.as_deref() == Some("reboot"),
                },
            };
            if !boot {
                continue;
            }
            *self
                .log
                .lock()
                .expect("not poisoned")
                .boots
                .entry(spec.mac)
                .or_default() += 1;
            let woke = std::time::Instant::now();
            let boots = self.log.lock().expect("not poisoned").boots[&spec.mac];
            match self.pxe_boot(&spec, boots).await {
                Ok(Some(win)) => {
                    resets += 1;
                    self.activate(&spec, &win, resets).await;
                    self.log
                        .lock()
                        .expect("not poisoned")
                        .cycles
                        .push(woke.elapsed());
                    running = Some(win);
                }
                // Local disk: Windows as it was.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(mac = %spec.mac, error = %e, "simulated station: boot failed")
                }
            }
        }
    }

    /// The network boot (DHCP, TFTP, iPXE's DHCP, its script), and when the script
    /// chains the restore environment, the restore. Returns what the restored Windows
    /// finds on its disk.
    async fn pxe_boot(&self, spec: &StationSpec, boots: u32) -> Result<Option<Windows>, String> {
        let m = spec.mac.octets();
        let xid = u32::from_be_bytes([m[3], m[4], m[5], 0]) ^ (boots << 1);
        let booted = super::firmware::boot(&self.boot, spec.mac, spec.ip, xid).await?;
        let script = get(&booted.script_url, None).await?;
        let args: HashMap<String, String> = script
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("netreset."))
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let Some(image) = args.get("image").cloned() else {
            return Ok(None);
        };
        let opts = images::client::Options {
            server: args.get("server").cloned().unwrap_or_default(),
            station: args.get("station").cloned().unwrap_or_default(),
            token: args.get("token").cloned().unwrap_or_default(),
            image,
            disk: spec.disk.clone(),
            parallel: 2,
            max_mbit: None,
            retry_for: Duration::from_secs(5),
        };
        let disk = spec.disk.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<Windows>, String> {
            images::client::run(&opts, &|_| {}).map_err(|e| e.to_string())?;
            Ok(read_windows(&disk))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Windows starts: SetupComplete.cmd points it at the KMS host, the agent reports.
    async fn activate(&self, spec: &StationSpec, win: &Windows, resets: u32) {
        tokio::time::sleep(self.windows_boot).await;
        if win.kms_host.as_deref() != Some(self.kms_name.as_str()) {
            return; // no KMS settings injected: nothing to activate against
        }
        for family in &win.families {
            let product = match family.as_str() {
                "windows" => Product::WindowsClient,
                "office" => Product::Office,
                _ => continue,
            };
            let cmid = if spec.generalized {
                format!("{}-{family}-{resets}", spec.mac)
            } else {
                format!("{}-{family}", spec.mac)
            };
            let cmid = cmid_guid(&cmid);
            let now = Duration::from_millis(self.clock.now_ms());
            let skew = self.station_clock_skew_s.load(Ordering::SeqCst);
            let client_time = if skew >= 0 {
                now + Duration::from_secs(skew.unsigned_abs())
            } else {
                now.saturating_sub(Duration::from_secs(skew.unsigned_abs()))
            };
            let body = if self.kms_down.load(Ordering::SeqCst) {
                // 12288 with no 12289: the agent reports "none" when its wait is over.
                serde_json::json!({
                    "station": spec.mac,
                    "family": family,
                    "cmid": cmid,
                    "result": "none",
                    "activated": false,
                    "count": 0,
                    "logged_in_user": false,
                })
            } else {
                let reply = self.host.lock().expect("not poisoned").request(
                    &cmid,
                    product,
                    client_time,
                    now,
                );
                self.log.lock().expect("not poisoned").activations.push((
                    spec.mac,
                    family.clone(),
                    cmid.clone(),
                    reply.count as u32,
                ));
                serde_json::json!({
                    "station": spec.mac,
                    "family": family,
                    "cmid": cmid,
                    "result": format!("0x{:08X}", reply.result),
                    "activated": reply.activated,
                    "count": reply.count,
                    "logged_in_user": false,
                })
            };
            // Like the real agent, a report that does not get through is sent again.
            let url = format!("{}/api/v1/agent/report", win.server);
            for attempt in 1..=20 {
                match post(&url, &win.token, &body).await {
                    Ok(()) => break,
                    Err(e) if attempt == 20 => {
                        tracing::warn!(mac = %spec.mac, error = %e, image = %win.image, "simulated agent: report given up")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        }
    }

    /// One command poll; the command, if any.
    async fn poll(&self, spec: &StationSpec, win: &Windows) -> Option<String> {
        let url = format!(
            "{}/api/v1/agent/commands?station={}&wait=1",
            win.server, spec.mac
        );
        match get(&url, Some(&win.token)).await {
            Ok(text) if !text.is_empty() => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["command"].as_str().map(str::to_owned)),
            Ok(_) => None,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        }
    }
}

/// A CMID in the form Windows reports: a GUID (hex digits and dashes).
fn cmid_guid(seed: &str) -> String {
    let h = blake3::hash(seed.as_bytes()).to_hex();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Read station.json and SetupComplete.cmd from the Windows partition (FAT on the
/// simulator's sample image).
fn read_windows(disk: &std::path::Path) -> Option<Windows> {
    let parts = images::partition::partitions(disk).ok()?;
    let file = std::fs::File::open(disk).ok()?;
    let read = |part: &images::partition::Partition, path: &str| -> Option<Vec<u8>> {
        let fs = fatfs::FileSystem::new(
            images::partition::Slice::new(&file, part),
            fatfs::FsOptions::new(),
        )
        .ok()?;
        let mut f = fs.root_dir().open_file(path).ok()?;
        let mut out = Vec::new();
        f.read_to_end(&mut out).ok()?;
        Some(out)
    };
    for part in &parts {
        let Some(json) = read(part, "Windows/Setup/Scripts/station.json") else {
            continue;
        };
        let doc: serde_json::Value = serde_json::from_slice(&json).ok()?;
        let setup = read(part, "Windows/Setup/Scripts/SetupComplete.cmd")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let kms_host = setup
            .lines()
            .find_map(|l| l.trim().strip_prefix("set \"NR_KMS="))
            .map(|v| v.trim_end_matches('"').to_owned());
        return Some(Windows {
            server: doc["server"].as_str()?.to_owned(),
            token: doc["token"].as_str()?.to_owned(),
            families: doc["families"]
                .as_array()?
                .iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect(),
            kms_host,
            image: doc["image"].as_str().unwrap_or_default().to_owned(),
        });
    }
    None
}

async fn get(url: &str, token: Option<&str>) -> Result<String, String> {
    let (url, token) = (url.to_owned(), token.map(str::to_owned));
    tokio::task::spawn_blocking(move || {
        let mut req = ureq::get(&url).timeout(Duration::from_secs(10));
        if let Some(t) = token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        match req.call() {
            Ok(resp) => resp.into_string().map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn post(url: &str, token: &str, body: &serde_json::Value) -> Result<(), String> {
    let (url, token, body) = (url.to_owned(), token.to_owned(), body.to_string());
    tokio::task::spawn_blocking(move || {
        ureq::post(&url)
            .timeout(Duration::from_secs(10))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json")
            .send_string(&body)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}
