//! The orchestrator's [`BootPolicy`]: what each station boots, and the record of every
//! step it takes. A station marked for reset chains the restore environment with a
//! fresh per-restore token, but only when it asks for its script from the address
//! DHCP saw it use in this boot (or the kernel's ARP table says is its own): a student
//! on the LAN who asks for another station's script gets no token. Every other
//! station boots its local disk.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pxe::{
    Arch, BootDecision, BootPolicy, BootStep, ChainTarget, Firmware, Loader, MacAddr, Machine,
    Observation, TftpFile,
};
use tracing::{debug, warn};

use crate::boot::recorder::Recorder;
use crate::boot::tokens::Secret;
use crate::config::{BootConfig, InventoryConfig, RoomConfig, UnknownMode};
use crate::store::{Sighting, Station, Store};

/// What the boot script of a station being reset chains: the restore environment,
/// with `netreset.*` arguments `netreset-restore` takes.
#[derive(Clone, Debug)]
pub struct RestoreBoot {
    /// URLs of the restore environment's kernel and initrd.
    pub kernel: String,
    pub initrd: String,
    /// Extra kernel arguments from the configuration.
    pub cmdline: String,
    /// The server URL the restore environment talks to.
    pub server_url: String,
    pub token_ttl: Duration,
    /// `restore.max_mbit`, passed on as `netreset.max_mbit=`.
    pub max_mbit: Option<u32>,
    /// `restore.peer_port`, passed on as `netreset.peer_port=` to a reset in a wave.
    pub peer_port: u16,
    pub secret: Secret,
    /// The kernel and initrd as files here, which the Secure Boot path's GRUB loads
    /// over TFTP (as [`TFTP_KERNEL`] and [`TFTP_INITRD`]); `None` when they are
    /// elsewhere (http(s) URLs).
    pub files: Option<(PathBuf, PathBuf)>,
}

/// The TFTP names of the signed loaders: shim loads `grubx64.efi` from the
/// directory it was loaded from.
pub const TFTP_SHIM: &str = "netreset/signed/shimx64.efi";
pub const TFTP_GRUB: &str = "netreset/signed/grubx64.efi";
/// The restore environment over TFTP, for GRUB (which has no http here).
pub const TFTP_KERNEL: &str = "netreset/restore/vmlinuz";
pub const TFTP_INITRD: &str = "netreset/restore/initrd.img";
/// The module lists GRUB's normal mode reads from its prefix at start: served
/// empty (it has every command it needs built in, and under Secure Boot loads no
/// module), so that they are not refused and recorded at every boot.
const GRUB_LISTS: [&str; 4] = [
    "grub/x86_64-efi/command.lst",
    "grub/x86_64-efi/fs.lst",
    "grub/x86_64-efi/crypto.lst",
    "grub/x86_64-efi/terminal.lst",
];

/// The boot policy over the inventory.
#[derive(Clone)]
pub struct Orchestrator {
    store: Store,
    recorder: Arc<Recorder>,
    boot: Arc<BootConfig>,
    /// Rooms, for their Secure Boot setting.
    rooms: Arc<Vec<RoomConfig>>,
    inventory: Arc<InventoryConfig>,
    restore: Arc<RestoreBoot>,
    /// Where DHCP last saw each known station, and when (calendar ms): its script
    /// must come from there to carry a restore token. In memory and synchronous (the
    /// script follows the DHCP answer within milliseconds); one entry per station of
    /// the inventory at most.
    seen: Arc<Mutex<HashMap<MacAddr, (Ipv4Addr, u64)>>>,
    /// New stations registered from DHCP, at most this fast: a flood of made-up MACs
    /// is answered, not stored.
    registrations: Arc<Mutex<RateLimit>>,
}

/// A token bucket: `burst` at once, then `per_s` a second.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    per_s: f64,
    burst: f64,
    at: std::time::Instant,
}

impl RateLimit {
    fn new(per_s: f64, burst: f64) -> RateLimit {
        RateLimit {
            tokens: burst,
            per_s,
            burst,
            at: std::time::Instant::now(),
        }
    }

    /// Whether one more may go at `now`; takes a token when it may.
    fn allow(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// New stations registered a second at most (after a first `REGISTER_BURST`): a
/// school's rooms powering on at 8:00 register within a minute; a flood does not fill
/// the store.
const REGISTER_PER_S: f64 = 50.0;
const REGISTER_BURST: f64 = 500.0;

/// How long after DHCP saw a station's address its script may come from there: one
/// boot, from iPXE's DHCP to its script, takes seconds.
const BOOT_WINDOW_MS: u64 = 10 * 60 * 1000;

impl Orchestrator {
    pub fn new(
        store: Store,
        boot: BootConfig,
        rooms: Vec<RoomConfig>,
        inventory: InventoryConfig,
        restore: RestoreBoot,
    ) -> Orchestrator {
        Orchestrator {
            recorder: Recorder::start(store.clone()),
            store,
            boot: Arc::new(boot),
            rooms: Arc::new(rooms),
            inventory: Arc::new(inventory),
            restore: Arc::new(restore),
            seen: Arc::default(),
            registrations: Arc::new(Mutex::new(RateLimit::new(REGISTER_PER_S, REGISTER_BURST))),
        }
    }

    /// The restore settings (and the server secret behind the tokens).
    pub fn restore(&self) -> &RestoreBoot {
        &self.restore
    }

    /// Note that DHCP saw known station `mac` at `ip` (an address the packet came
    /// from or was relayed for). An address the kernel's ARP table gives another MAC
    /// is not noted: that packet was written by someone else.
    fn saw_address(&self, mac: MacAddr, ip: Ipv4Addr) {
        if !self.store.contains(mac) || arp_mac(ip).is_some_and(|other| other != mac) {
            return;
        }
        let now = self.store.clock().now_ms();
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mac, (ip, now));
    }

    /// Whether a script asked for from `peer` goes to station `mac`: DHCP saw `mac`
    /// there in this boot, or the kernel's ARP table says `peer` is `mac` (a station
    /// that took its address from the school's server and never told us). `Err` says
    /// why not.
    fn bound(&self, mac: MacAddr, peer: Option<Ipv4Addr>) -> Result<(), String> {
        let Some(peer) = peer else {
            return Err("the request has no IPv4 address".into());
        };
        let arp = arp_mac(peer);
        if let Some(other) = arp.filter(|other| *other != mac) {
            return Err(format!("{peer} is {other} in the ARP table"));
        }
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&mac)
            .copied();
        let now = self.store.clock().now_ms();
        match seen {
            Some((ip, at)) if ip == peer && now.saturating_sub(at) <= BOOT_WINDOW_MS => Ok(()),
            _ if arp == Some(mac) => Ok(()),
            Some((ip, _)) if ip != peer => Err(format!("DHCP saw {mac} at {ip}, not {peer}")),
            Some(_) => Err(format!(
                "DHCP saw {mac} at {peer} more than {} minutes ago",
                BOOT_WINDOW_MS / 60_000
            )),
            None => Err(format!("DHCP has not seen {mac} in this boot")),
        }
    }

    /// Record that `mac`'s pending restore was not handed out, and why.
    fn withheld(&self, mac: MacAddr, detail: String) {
        self.recorder.submit(move |store| {
            if let Err(e) = store.record(mac, "script-withheld", detail) {
                warn!(%mac, error = %e, "cannot record boot event");
            }
        });
    }

    /// The chain to the restore environment, when `machine` has a reset under way and
    /// asks from its own address. Each call mints a new token, valid for
    /// `restore.token_ttl`.
    fn restore_target(&self, machine: &Machine, step: BootStep) -> Option<ChainTarget> {
        let mac = machine.mac;
        // What the environment does: a restore (`netreset.image=`), or a capture.
        let (scope, work, disk) = match (self.store.reset(mac), self.store.capture(mac)) {
            (Ok(Some(r)), _) if r.state.active() => (
                r.token_scope(),
                match r.wave {
                    // In a wave: serve chunks to its other members on this port.
                    Some(_) => format!(
                        "netreset.image={} netreset.peer_port={}",
                        r.staged, self.restore.peer_port
                    ),
                    None => format!("netreset.image={}", r.staged),
                },
                r.disk,
            ),
            (Ok(_), Ok(Some(c))) if c.under_way() => (
                c.token_scope(),
                "netreset.mode=capture".to_owned(),
                Some(c.disk),
            ),
            (Ok(_), Ok(_)) => return None,
            (Err(e), _) | (_, Err(e)) => {
                warn!(%mac, error = %e, "cannot read the station's reset or capture; booting local disk");
                return None;
            }
        };
        let r = &self.restore;
        let (kernel, initrd) = match step {
            BootStep::GrubConfig => match &r.files {
                Some(_) => (format!("/{TFTP_KERNEL}"), format!("/{TFTP_INITRD}")),
                None => {
                    warn!(%mac, "a reset is pending, but the Secure Boot path loads the restore environment over TFTP and restore.kernel/initrd are URLs: booting local disk");
                    self.withheld(mac, "restore withheld: the Secure Boot path loads restore.kernel and restore.initrd over TFTP from restore.dir, and they are URLs".to_owned());
                    return None;
                }
            },
            _ => (r.kernel.clone(), r.initrd.clone()),
        };
        if let Err(why) = self.bound(mac, machine.ip) {
            warn!(%mac, %why, "a reset is pending, but the script request is not the station's: no restore token");
            self.withheld(mac, format!("restore token withheld: {why}"));
            return None;
        }
        let expires = self.store.clock().now_ms() / 1000 + r.token_ttl.as_secs();
        let token = r.secret.restore_token(mac, &scope, expires);
        // quiet: the kernel does not print its command line (and the token in it) on
        // the station's screen; panic=10: a restore environment that dies reboots.
        // restore.cmdline comes after, so loglevel=7 there shows everything again.
        let mut cmdline = format!(
            "quiet panic=10 netreset.server={} netreset.station={mac} netreset.token={token} {work}",
            r.server_url
        );
        if let Some(disk) = &disk {
            cmdline.push_str(" netreset.disk=");
            cmdline.push_str(disk);
        }
        if let Some(mbit) = r.max_mbit {
            cmdline.push_str(&format!(" netreset.max_mbit={mbit}"));
        }
        if !r.cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&r.cmdline);
        }
        Some(ChainTarget {
            kernel,
            initrds: vec![initrd],
            cmdline,
        })
    }

    /// The store behind the policy.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Wait until every boot event queued so far is in the store.
    pub fn drain_events(&self, deadline: std::time::Duration) -> bool {
        self.recorder.drain(deadline)
    }

    /// The boot settings.
    pub fn boot(&self) -> &BootConfig {
        &self.boot
    }

    /// What the inventory knows of `mac`, as the servers would describe it.
    pub fn machine(&self, mac: MacAddr) -> Machine {
        let station = self.store.station(mac).ok().flatten();
        let firmware = match station.as_ref().and_then(|s| s.firmware.as_deref()) {
            Some("bios") => Firmware::Bios,
            Some("uefi") => Firmware::Uefi,
            Some("uefi-http") => Firmware::UefiHttp,
            Some("bios-http") => Firmware::BiosHttp,
            _ => Firmware::Other,
        };
        let arch = match station.as_ref().and_then(|s| s.arch.as_deref()) {
            Some("x86") => Arch::X86,
            Some("x64") => Arch::X64,
            Some("arm64") => Arch::Arm64,
            _ => Arch::Other(u16::MAX),
        };
        Machine {
            mac,
            arch,
            firmware,
            ipxe: true,
            uuid: None,
            ip: station.and_then(|s| s.ip),
        }
    }

    /// Record that `mac` fetched its iPXE script (`step` `Script`, event `script`)
    /// or its GRUB configuration (`GrubConfig`, event `grub-config`) from `peer`.
    /// Only DHCP registers a station or moves its recorded address: anyone can ask
    /// for any script.
    pub fn script_served(
        &self,
        mac: MacAddr,
        peer: IpAddr,
        step: BootStep,
        decision: &BootDecision,
    ) {
        let what = match decision {
            BootDecision::Ignore => "local-disk (unknown station, not registered)".to_owned(),
            BootDecision::LocalDisk => format!("local-disk (from {peer})"),
            BootDecision::Chain(t) => format!("chain {} (from {peer})", t.kernel),
        };
        let kind = match step {
            BootStep::GrubConfig => "grub-config",
            _ => "script",
        };
        self.sighted(mac, Sighting::default(), false, kind, what);
    }

    /// The loader `station`'s firmware gets: the signed path when its setting, its
    /// room's or the default says Secure Boot.
    pub fn loader_of(&self, station: Option<&Station>) -> Loader {
        if crate::config::secure_boot(&self.boot, &self.rooms, station) {
            Loader::Signed
        } else {
            Loader::Ipxe
        }
    }

    fn sighted(
        &self,
        mac: MacAddr,
        sighting: Sighting,
        create: bool,
        kind: &'static str,
        detail: String,
    ) {
        let create = create
            && self.inventory.register_unknown
            && (self.store.contains(mac)
                || self
                    .registrations
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .allow(std::time::Instant::now()));
        self.recorder
            .submit(move |store| record(store, mac, &sighting, create, kind, detail));
    }
}

/// Merge a sighting into the inventory and append the event (on the recorder thread).
fn record(
    store: &Store,
    mac: MacAddr,
    sighting: &Sighting,
    create: bool,
    kind: &str,
    detail: String,
) {
    let result = store
        .saw(mac, sighting, create)
        .and_then(|known| match known {
            Some(_) => store.record(mac, kind, detail),
            None => Ok(()),
        });
    if let Err(e) = result {
        warn!(%mac, error = %e, "cannot record boot event");
    }
}

/// The station at `ip`: the address DHCP last saw it use, else the kernel's ARP table.
fn tftp_mac(store: &Store, ip: Ipv4Addr) -> Option<MacAddr> {
    if let Ok(Some(mac)) = store.mac_at(ip) {
        return Some(mac);
    }
    // A UEFI client that took its address from the school's server and loaded the
    // file named in our offer never told us its address; the kernel's ARP table has
    // it, since the TFTP exchange just happened.
    arp_mac(ip)
}

/// The MAC the kernel's ARP table has for `ip` (none on loopback).
fn arp_mac(ip: Ipv4Addr) -> Option<MacAddr> {
    if ip.is_loopback() {
        return None;
    }
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    arp_lookup(&table, ip)
}

/// Find `ip` in the text of /proc/net/arp.
fn arp_lookup(table: &str, ip: Ipv4Addr) -> Option<MacAddr> {
    table.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let addr: Ipv4Addr = cols.next()?.parse().ok()?;
        let mac: MacAddr = cols.nth(2)?.parse().ok()?;
        (addr == ip && mac.octets() != [0; 6]).then_some(mac)
    })
}

impl BootPolicy for Orchestrator {
    fn decide(&self, machine: &Machine, step: BootStep) -> BootDecision {
        let known = self.store.contains(machine.mac);
        if !known && self.boot.unknown == UnknownMode::Ignore {
            debug!(mac = %machine.mac, ?step, "unknown station ignored");
            return BootDecision::Ignore;
        }
        // The DHCP steps only decide whether to answer (and `loader` with what);
        // what the loader boots is decided when it asks for its script.
        if matches!(step, BootStep::Script | BootStep::GrubConfig) {
            if let Some(target) = self.restore_target(machine, step) {
                return BootDecision::Chain(target);
            }
        }
        BootDecision::LocalDisk
    }

    fn loader(&self, machine: &Machine) -> Loader {
        self.loader_of(self.store.station(machine.mac).ok().flatten().as_ref())
    }

    /// The files of the Secure Boot path that are the same for every station: the
    /// signed loaders, GRUB's first configuration and module lists, the restore
    /// environment. A station's own GRUB configuration is `service::boot`'s.
    fn tftp_file(&self, _peer: SocketAddr, name: &str) -> Option<TftpFile> {
        let path = |p: &PathBuf| Some(TftpFile::Path(p.clone()));
        match name {
            TFTP_SHIM => path(&self.boot.shim),
            TFTP_GRUB => path(&self.boot.grub),
            "grub/grub.cfg" | "grub/x86_64-efi/grub.cfg" => {
                Some(TftpFile::Bytes(pxe::grub::BOOTSTRAP.as_bytes().into()))
            }
            n if GRUB_LISTS.contains(&n) => Some(TftpFile::Bytes(Arc::from(&b""[..]))),
            TFTP_KERNEL => self
                .restore
                .files
                .as_ref()
                .map(|(k, _)| TftpFile::Path(k.clone())),
            TFTP_INITRD => self
                .restore
                .files
                .as_ref()
                .map(|(_, i)| TftpFile::Path(i.clone())),
            _ => None,
        }
    }

    fn observe(&self, observation: Observation) {
        match observation {
            Observation::DhcpOffer {
                machine, boot_file, ..
            } => {
                if let Some(ip) = machine.ip {
                    self.saw_address(machine.mac, ip);
                }
                self.sighted(
                    machine.mac,
                    sighting(&machine),
                    true,
                    "dhcp-offer",
                    boot_file,
                );
            }
            Observation::Pxe4011 {
                machine, boot_file, ..
            } => {
                if let Some(ip) = machine.ip {
                    self.saw_address(machine.mac, ip);
                }
                self.sighted(machine.mac, sighting(&machine), true, "pxe-4011", boot_file);
            }
            Observation::Tftp { peer, file, size } => {
                self.tftp_event(peer.ip(), "tftp", format!("{file} ({size} bytes)"));
            }
            Observation::TftpRefused { peer, file, reason } => {
                self.tftp_event(peer.ip(), "tftp-refused", format!("{file:?}: {reason}"));
            }
            other => debug!(?other, "observation not recorded"),
        }
    }
}

impl Orchestrator {
    /// TFTP knows only addresses: its events go to the station at that address, and
    /// register nobody.
    fn tftp_event(&self, peer: IpAddr, kind: &'static str, detail: String) {
        let ip = ipv4(peer);
        self.recorder
            .submit(move |store| match ip.and_then(|ip| tftp_mac(store, ip)) {
                Some(mac) => record(store, mac, &Sighting::default(), false, kind, detail),
                None => debug!(%peer, kind, detail, "tftp peer has no known MAC"),
            });
    }
}

/// The IPv4 address of a peer (also when it reached a dual-stack socket).
pub fn ipv4(peer: IpAddr) -> Option<Ipv4Addr> {
    match peer {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

fn sighting(machine: &Machine) -> Sighting {
    Sighting {
        arch: Some(machine.arch),
        firmware: Some(machine.firmware),
        uuid: machine.uuid.clone(),
        ip: machine.ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_come_in_a_burst_then_at_the_rate() {
        let start = std::time::Instant::now();
        let mut limit = RateLimit::new(50.0, 500.0);
        limit.at = start;
        let burst = (0..600).filter(|_| limit.allow(start)).count();
        assert_eq!(burst, 500, "the burst, then nothing at the same instant");
        let later = start + Duration::from_secs(2);
        let refilled = (0..600).filter(|_| limit.allow(later)).count();
        assert_eq!(refilled, 100, "two seconds at 50 a second");
        let much_later = later + Duration::from_secs(3600);
        let capped = (0..600).filter(|_| limit.allow(much_later)).count();
        assert_eq!(capped, 500, "an hour of quiet refills the burst, no more");
    }

    #[test]
    fn arp_table_lookup_finds_complete_entries_only() {
        let table =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
                     10.0.0.50        0x1         0x2         52:54:00:12:34:56     *        br0\n\
                     10.0.0.51        0x1         0x0         00:00:00:00:00:00     *        br0\n";
        assert_eq!(
            arp_lookup(table, Ipv4Addr::new(10, 0, 0, 50)),
            Some("52:54:00:12:34:56".parse().unwrap())
        );
        assert_eq!(arp_lookup(table, Ipv4Addr::new(10, 0, 0, 51)), None);
        assert_eq!(arp_lookup(table, Ipv4Addr::new(10, 0, 0, 52)), None);
    }
}
