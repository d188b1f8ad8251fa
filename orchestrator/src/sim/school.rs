//! A virtual school for the tests and the demo: stations that listen for
//! Wake-on-LAN on their room's loopback address, network-boot through the daemon's
//! ProxyDHCP, TFTP and HTTP (`sim::firmware`), restore with the real restore client onto a file-backed disk, "boot
//! Windows" by reading what was injected into that disk, activate against the
//! simulated KMS host, report through the agent API and obey reboot commands.
//!
//! A station that finds no KMS settings on its disk cannot activate; a station of a
//! non-generalized image keeps its CMID across resets.
//!
//! The agent behaves as `netreset-agent.ps1` does: it writes the Software Protection
//! events 12288/12289 Windows would log (as event XML, `engine::spp::render_*`) and
//! posts them raw with its licences and session state; while the station runs it
//! renews each activation every 7 days on the calendar clock, as a KMS client does;
//! it says with every command poll whether a user is logged on, and refuses an
//! unforced reboot while one is.

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
use crate::engine::spp;

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
    /// Renewals of running stations: (station, family, count).
    pub renewals: Vec<(MacAddr, String, u32)>,
    pub boots: HashMap<MacAddr, u32>,
    /// Commands the agent refused because a user was logged on.
    pub refused: Vec<MacAddr>,
    /// Forced commands run with a user logged on (the user was warned).
    pub warned: Vec<MacAddr>,
    /// The boots a station had when its user logged on ([`School::user_after_report`]).
    pub boots_at_logon: HashMap<MacAddr, u32>,
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

/// How a station runs the restore client: in-process by default; a test may run it
/// as a process of its own, to kill it (a power cut mid-restore).
pub type RestoreClient = Arc<dyn Fn(&images::client::Options) -> Result<(), String> + Send + Sync>;

/// Why a network boot did not bring Windows up.
enum BootFailure {
    /// Before the restore began: the firmware boots the local disk as it was.
    Pxe(String),
    /// The restore began and did not finish: the disk is half written and the
    /// station is off until it is woken again.
    Restore(String),
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
    /// The licence channel of the image's Windows and Office ("Volume:GVLK", a KMS
    /// client, unless a test makes it "Volume:MAK" or "Retail").
    pub license_channel: Arc<Mutex<String>>,
    /// Stations with a user logged on.
    users: Arc<Mutex<std::collections::HashSet<MacAddr>>>,
    /// Stations where a user logs on as soon as the agent has reported.
    users_after_report: Arc<Mutex<std::collections::HashSet<MacAddr>>>,
    /// The restore client the stations run.
    pub restore: RestoreClient,
    /// Raised by [`School::power_off`]: running stations shut down.
    power_offs: Arc<(std::sync::atomic::AtomicU64, tokio::sync::Notify)>,
}

/// What the station found on its disk after a restore, and what its Windows did
/// since.
struct Windows {
    server: String,
    token: String,
    families: Vec<String>,
    kms_host: Option<String>,
    image: String,
    /// The Application log's SPP events, as XML.
    events: Vec<String>,
    next_record: u64,
    /// Per family: its CMID and the calendar time of its last request (ms).
    activations: HashMap<String, (String, u64)>,
    gave_up: Vec<String>,
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
            license_channel: Arc::new(Mutex::new("Volume:GVLK".into())),
            users: Arc::default(),
            users_after_report: Arc::default(),
            restore: Arc::new(|opts| {
                images::client::run(opts, &|_| {})
                    .map(drop)
                    .map_err(|e| e.to_string())
            }),
        }
    }

    /// A user logs on at `mac` right after its agent's next activation report (a
    /// student sits down once Windows is up); the boots it had then go into
    /// [`Log::boots_at_logon`].
    pub fn user_after_report(&self, mac: MacAddr) {
        self.users_after_report
            .lock()
            .expect("not poisoned")
            .insert(mac);
    }

    /// A user logs on at `mac` (`true`) or off.
    pub fn set_user(&self, mac: MacAddr, logged_on: bool) {
        let mut users = self.users.lock().expect("not poisoned");
        if logged_on {
            users.insert(mac);
        } else {
            users.remove(&mac);
        }
    }

    fn user_at(&self, mac: MacAddr) -> bool {
        self.users.lock().expect("not poisoned").contains(&mac)
    }

    /// Shut every running station down (the caretaker at the start of a holiday):
    /// they wait for Wake-on-LAN again.
    pub fn power_off(&self) {
        let (count, notify) = &*self.power_offs;
        count.fetch_add(1, Ordering::SeqCst);
        notify.notify_waiters();
    }

    /// Whether the host's Windows and Office counts rose by exactly one with every
    /// request, to `windows` and `office`: no cycle ran twice, none after a target.
    /// Else the counts after each request, to say what happened.
    pub fn counts_rose_one_by_one(&self, windows: u32, office: u32) -> Result<(), String> {
        let log = self.log.lock().expect("not poisoned");
        let (w, o) = (log.counts("windows"), log.counts("office"));
        if w == (1..=windows).collect::<Vec<u32>>() && o == (1..=office).collect::<Vec<u32>>() {
            Ok(())
        } else {
            Err(format!("windows counts {w:?}, office counts {o:?}"))
        }
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
        // The agent token of the Windows that last ran from the disk: a restored
        // Windows that never ran (its power went right after the restore's last
        // report) runs its first boot at the next local boot.
        let mut booted = disk_token(&spec.disk).await;
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
                Some(_) => {
                    let win = running.as_mut().expect("running");
                    self.renew(&spec, win).await;
                    let win = running.as_ref().expect("running");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = off => continue,
                        cmd = self.poll(&spec, win) => cmd.as_deref() == Some("reboot"),
                    }
                }
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
                Ok(Some(mut win)) => {
                    resets += 1;
                    booted = Some(win.token.clone());
                    self.activate(&spec, &mut win, resets).await;
                    self.log
                        .lock()
                        .expect("not poisoned")
                        .cycles
                        .push(woke.elapsed());
                    running = Some(win);
                }
                // Local disk: Windows as it was, or a restored one's first boot.
                Ok(None) => {
                    let disk = spec.disk.clone();
                    let fresh = tokio::task::spawn_blocking(move || read_windows(&disk))
                        .await
                        .ok()
                        .flatten()
                        .filter(|w| booted.as_ref() != Some(&w.token));
                    if let Some(mut win) = fresh {
                        resets += 1;
                        booted = Some(win.token.clone());
                        self.activate(&spec, &mut win, resets).await;
                        running = Some(win);
                    }
                }
                Err(BootFailure::Pxe(e)) => {
                    tracing::warn!(mac = %spec.mac, error = %e, "simulated station: boot failed")
                }
                Err(BootFailure::Restore(e)) => {
                    tracing::warn!(mac = %spec.mac, error = %e, "simulated station: restore failed, off");
                    running = None;
                }
            }
        }
    }

    /// The network boot (DHCP, TFTP, iPXE's DHCP, its script), and when the script
    /// chains the restore environment, the restore. Returns what the restored Windows
    /// finds on its disk.
    async fn pxe_boot(
        &self,
        spec: &StationSpec,
        boots: u32,
    ) -> Result<Option<Windows>, BootFailure> {
        let m = spec.mac.octets();
        let xid = u32::from_be_bytes([m[3], m[4], m[5], 0]) ^ (boots << 1);
        let booted = super::firmware::boot(&self.boot, spec.mac, spec.ip, xid)
            .await
            .map_err(BootFailure::Pxe)?;
        let script = super::firmware::fetch_script(&booted.script_url, spec.ip)
            .await
            .map_err(BootFailure::Pxe)?;
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
            peer_listen: None,
        };
        let disk = spec.disk.clone();
        let restore = self.restore.clone();
        tokio::task::spawn_blocking(move || -> Result<Option<Windows>, String> {
            restore(&opts)?;
            Ok(read_windows(&disk))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(BootFailure::Restore)
    }

    /// Windows starts: the agent points each family at the KMS host and activates it
    /// (the host answers, or, when it is down, the agent gives up), then reports.
    async fn activate(&self, spec: &StationSpec, win: &mut Windows, resets: u32) {
        tokio::time::sleep(self.windows_boot).await;
        if win.kms_host.as_deref() != Some(self.kms_name.as_str()) {
            return; // no KMS settings injected: nothing to activate against
        }
        let kms_client =
            self.license_channel.lock().expect("not poisoned").as_str() == "Volume:GVLK";
        for family in win.families.clone() {
            if product(&family).is_none() {
                continue;
            }
            let cmid = if spec.generalized {
                format!("{}-{family}-{resets}", spec.mac)
            } else {
                format!("{}-{family}", spec.mac)
            };
            // The agent never activates a licence that is no KMS client.
            if kms_client {
                self.request(spec, win, &family, &cmid_guid(&cmid), false);
            }
        }
        self.report(spec, win).await;
        if self
            .users_after_report
            .lock()
            .expect("not poisoned")
            .remove(&spec.mac)
        {
            let mut log = self.log.lock().expect("not poisoned");
            let boots = log.boots.get(&spec.mac).copied().unwrap_or(0);
            log.boots_at_logon.insert(spec.mac, boots);
            self.set_user(spec.mac, true);
        }
    }

    /// One KMS request of `family` with `cmid`, logged as Windows logs it: 12288,
    /// then 12289 unless the host is down (the agent then gives up on the family).
    fn request(
        &self,
        spec: &StationSpec,
        win: &mut Windows,
        family: &str,
        cmid: &str,
        renewal: bool,
    ) {
        let Some((product, _, _)) = product(family) else {
            return;
        };
        let now_ms = self.clock.now_ms();
        let now = Duration::from_millis(now_ms);
        let skew = self.station_clock_skew_s.load(Ordering::SeqCst);
        let client_time = if skew >= 0 {
            now + Duration::from_secs(skew.unsigned_abs())
        } else {
            now.saturating_sub(Duration::from_secs(skew.unsigned_abs()))
        };
        let station_ms = client_time.as_millis() as u64;
        let down = self.kms_down.load(Ordering::SeqCst);
        let event = Logged {
            at_ms: station_ms,
            family,
            cmid,
            host: &self.kms_name,
            pc: &computer(spec.mac),
        };
        win.next_record += 1;
        win.events
            .push(event.request(win.next_record, if down { 0xC004_F074 } else { 0 }));
        win.activations
            .insert(family.to_owned(), (cmid.to_owned(), now_ms));
        if down {
            if !win.gave_up.iter().any(|f| f == family) {
                win.gave_up.push(family.to_owned());
            }
            return;
        }
        let reply =
            self.host
                .lock()
                .expect("not poisoned")
                .request(cmid, product, client_time, now);
        {
            let mut log = self.log.lock().expect("not poisoned");
            if renewal {
                log.renewals
                    .push((spec.mac, family.to_owned(), reply.count as u32));
            } else {
                log.activations.push((
                    spec.mac,
                    family.to_owned(),
                    cmid.to_owned(),
                    reply.count as u32,
                ));
            }
        }
        win.next_record += 1;
        win.events.push(event.reply(
            win.next_record,
            reply.result,
            reply.count as u32,
            reply.activated,
        ));
        win.gave_up.retain(|f| f != family);
    }

    /// A KMS client renews every 7 days while it runs; the agent posts what it saw.
    async fn renew(&self, spec: &StationSpec, win: &mut Windows) {
        let now_ms = self.clock.now_ms();
        let due: Vec<(String, String)> = win
            .activations
            .iter()
            .filter(|(_, (_, last))| now_ms.saturating_sub(*last) >= RENEWAL_MS)
            .map(|(f, (cmid, _))| (f.clone(), cmid.clone()))
            .collect();
        if due.is_empty() {
            return;
        }
        for (family, cmid) in due {
            self.request(spec, win, &family, &cmid, true);
        }
        self.report(spec, win).await;
    }

    /// Post the events, licences and session as the agent does; a report that does
    /// not get through is sent again, one the server refuses (4xx) is not.
    async fn report(&self, spec: &StationSpec, win: &Windows) {
        let channel = self.license_channel.lock().expect("not poisoned").clone();
        let families: Vec<&str> = win.families.iter().map(String::as_str).collect();
        let licenses = licenses(&families, &channel);
        let body = serde_json::json!({
            "station": spec.mac,
            "interactive_user": self.user_at(spec.mac),
            "licenses": licenses,
            "events": win.events,
            "gave_up": win.gave_up,
        });
        let url = format!("{}/api/v1/agent/report?station={}", win.server, spec.mac);
        for attempt in 1..=20 {
            match post(&url, &win.token, &body).await {
                Ok(_) => break,
                Err((Some(status), e)) if (400..500).contains(&status) => {
                    tracing::warn!(mac = %spec.mac, status, error = %e, "simulated agent: report refused");
                    break;
                }
                Err((_, e)) if attempt == 20 => {
                    tracing::warn!(mac = %spec.mac, error = %e, image = %win.image, "simulated agent: report given up")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// One command poll, saying whether a user is logged on; the command to carry
    /// out, if any. Like the agent, it refuses an unforced one while a user is
    /// logged on, and tells the server what it did.
    async fn poll(&self, spec: &StationSpec, win: &Windows) -> Option<String> {
        let user = self.user_at(spec.mac);
        let url = format!(
            "{}/api/v1/agent/commands?station={}&wait=1&interactive_user={}",
            win.server,
            spec.mac,
            u8::from(user)
        );
        let text = match get(&url, Some(&win.token)).await {
            Ok(text) if !text.is_empty() => text,
            Ok(_) => return None,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                return None;
            }
        };
        let cmd: serde_json::Value = serde_json::from_str(&text).ok()?;
        let force = cmd["force"].as_bool().unwrap_or(false);
        let user = self.user_at(spec.mac);
        let outcome = match (user, force) {
            (true, false) => "refused",
            (true, true) => "warned",
            (false, _) => "run",
        };
        {
            let mut log = self.log.lock().expect("not poisoned");
            match outcome {
                "refused" => log.refused.push(spec.mac),
                "warned" => log.warned.push(spec.mac),
                _ => {}
            }
        }
        let result = serde_json::json!({
            "station": spec.mac, "id": cmd["id"], "outcome": outcome,
        });
        let _ = post(
            &format!(
                "{}/api/v1/agent/command-result?station={}",
                win.server, spec.mac
            ),
            &win.token,
            &result,
        )
        .await;
        (outcome != "refused").then(|| cmd["command"].as_str().map(str::to_owned))?
    }
}

/// The station's computer name, as its events carry it.
fn computer(mac: MacAddr) -> String {
    let m = mac.octets();
    format!("LAB-PC{:02X}{:02X}", m[4], m[5])
}

/// How often a running KMS client renews its activation (docs/kms.md: every 7 days).
const RENEWAL_MS: u64 = 7 * 86_400 * 1000;

/// The simulated product of a family: the model host's pool, the licence's
/// activation id (Windows 11 Education and Office LTSC 2021 KMS clients) and the
/// count it needs.
fn product(family: &str) -> Option<(Product, &'static str, u32)> {
    match family {
        "windows" => Some((
            Product::WindowsClient,
            "e0c42288-980c-4788-a014-c080d2e1926e",
            25,
        )),
        "office" => Some((Product::Office, "fbdb3e18-a8ef-4fb3-9183-dffd60bd0984", 5)),
        _ => None,
    }
}

/// The licence rows the agent reports for `families` (SoftwareLicensingProduct with
/// a partial key) on a licence `channel`: "Volume:GVLK" is a KMS client, "Retail" a
/// retail key, anything else a MAK.
pub fn licenses(families: &[&str], channel: &str) -> Vec<serde_json::Value> {
    let kind = match channel {
        "Volume:GVLK" => "VOLUME_KMSCLIENT",
        "Retail" => "RETAIL",
        _ => "VOLUME_MAK",
    };
    families
        .iter()
        .filter_map(|f| product(f).map(|(_, id, _)| (f, id)))
        .map(|(f, id)| {
            let app = if *f == "windows" {
                spp::WINDOWS_APP_ID
            } else {
                spp::OFFICE_APP_ID
            };
            serde_json::json!({
                "id": id, "application_id": app, "name": format!("{f} (simulated)"),
                "description": format!("{f}, {kind} channel"), "channel": channel,
                "license_status": 1,
            })
        })
        .collect()
}

/// A KMS request of `family` by `cmid` at `at_ms` and the host's answer (`count`,
/// `activated`), as Windows logs them: event records `record` and `record + 1`.
pub fn kms_events(
    record: u64,
    at_ms: u64,
    family: &str,
    cmid: &str,
    count: u32,
    activated: bool,
) -> Vec<String> {
    let event = Logged {
        at_ms,
        family,
        cmid,
        host: "kms.school.example",
        pc: "LAB-PC01",
    };
    let result = if activated {
        0
    } else {
        crate::engine::COUNT_INSUFFICIENT
    };
    vec![
        event.request(record, 0),
        event.reply(record + 1, result, count, activated),
    ]
}

/// One KMS request as a station's Application log holds it.
struct Logged<'a> {
    /// The station's clock when it asked.
    at_ms: u64,
    family: &'a str,
    cmid: &'a str,
    host: &'a str,
    pc: &'a str,
}

impl Logged<'_> {
    /// Event 12288, with the result of sending it.
    fn request(&self, record: u64, hresult: u32) -> String {
        let (_, activation_id, needed) = product(self.family).expect("windows or office");
        spp::render_request(
            &spp::Request {
                record_id: record,
                time_ms: self.at_ms,
                hresult,
                host: format!("{}:1688", self.host),
                cmid: self.cmid.to_owned(),
                client_time: client_stamp(self.at_ms),
                activation_id: activation_id.to_owned(),
                needed,
            },
            self.pc,
        )
    }

    /// Event 12289 for the host's `result`. As in Microsoft's own example, a count
    /// too low is logged as 0x0 with the count-insufficient flag, not as 0xC004F038.
    fn reply(&self, record: u64, result: u32, count: u32, activated: bool) -> String {
        let short = result == crate::engine::COUNT_INSUFFICIENT;
        spp::render_reply(
            &spp::Reply {
                record_id: record,
                time_ms: self.at_ms,
                hresult: if short { 0 } else { result },
                status: if short {
                    spp::STATUS_COUNT_INSUFFICIENT
                } else {
                    0
                },
                activated,
                count,
                client_time: client_stamp(self.at_ms),
            },
            self.pc,
        )
    }
}

/// The request time as the event's text has it, to the minute as Windows writes it
/// ("2026/12/4 8:15", UTC here).
fn client_stamp(unix_ms: u64) -> String {
    let t =
        jiff::Timestamp::from_millisecond(unix_ms as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let dt = t.to_zoned(jiff::tz::TimeZone::UTC).datetime();
    format!(
        "{}/{}/{} {}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute()
    )
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

/// Read station.json from the Windows partition (FAT on the
/// simulator's sample image).
/// The agent token of the Windows on `disk`, if it has one.
async fn disk_token(disk: &std::path::Path) -> Option<String> {
    let disk = disk.to_owned();
    tokio::task::spawn_blocking(move || read_windows(&disk).map(|w| w.token))
        .await
        .ok()
        .flatten()
}

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
        // The agent points the licences at the host station.json names.
        let kms_host = doc["kms_host"].as_str().map(str::to_owned);
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
            events: Vec::new(),
            next_record: 1000,
            activations: HashMap::new(),
            gave_up: Vec::new(),
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

/// POST JSON; an error carries the HTTP status when there was an answer.
async fn post(
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> Result<(), (Option<u16>, String)> {
    let (url, token, body) = (url.to_owned(), token.to_owned(), body.to_string());
    tokio::task::spawn_blocking(move || {
        ureq::post(&url)
            .timeout(Duration::from_secs(10))
            .set("Authorization", &format!("Bearer {token}"))
            .set("Content-Type", "application/json")
            .send_string(&body)
            .map(|_| ())
            .map_err(|e| match e {
                ureq::Error::Status(code, resp) => {
                    (Some(code), resp.into_string().unwrap_or_default())
                }
                other => (None, other.to_string()),
            })
    })
    .await
    .map_err(|e| (None, e.to_string()))?
}
