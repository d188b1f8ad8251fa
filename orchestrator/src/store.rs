//! The station inventory in sled: one record per MAC, the last N boot events per MAC,
//! and an index from the last IPv4 address seen to the MAC (TFTP knows only addresses).
//!
//! Keys are binary (6-octet MAC, MAC + 8-octet big-endian sequence, 4-octet IPv4) so
//! that a station's events are one ordered prefix scan; values are JSON.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use pxe::{Arch, Firmware, MacAddr};

use crate::clock::Clock;
use serde::{Deserialize, Serialize};

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt record for {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

/// One station as the inventory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Station {
    pub mac: MacAddr,
    pub name: Option<String>,
    pub room: Option<String>,
    /// Processor from option 93, as text (`x64`, `x86`, ...).
    pub arch: Option<String>,
    /// Firmware family (`bios`, `uefi`, `uefi-http`, ...).
    pub firmware: Option<String>,
    /// SMBIOS UUID from option 97, as 32 hex digits.
    pub uuid: Option<String>,
    pub ip: Option<Ipv4Addr>,
    /// Unix milliseconds.
    pub first_seen: Option<u64>,
    pub last_seen: Option<u64>,
    /// Whether the agent last said an interactive user is logged on (it says so with
    /// every command poll and report): such a station is `in-use` and is not
    /// rebooted unless the admin forces it.
    #[serde(default)]
    pub logged_in: bool,
    /// Unix milliseconds of that word.
    #[serde(default)]
    pub logged_in_at: Option<u64>,
    /// Unix milliseconds of the agent's last report, and of its last command poll.
    #[serde(default)]
    pub last_report: Option<u64>,
    #[serde(default)]
    pub last_poll: Option<u64>,
    /// The image the station is reset to when a reset names none.
    #[serde(default)]
    pub image: Option<String>,
    /// The reset generation of the image the station runs (its last completed reset):
    /// that image's agent token stays good whatever happens to later resets.
    #[serde(default)]
    pub agent_generation: Option<u64>,
    /// The KMS families that image's agent was asked to activate.
    #[serde(default)]
    pub agent_families: Vec<String>,
    /// KMS activation: its resets use the kms profile unless a reset says otherwise.
    /// Like the vendor's manual says, it takes effect at the station's next reset.
    #[serde(default)]
    pub kms_activation: bool,
    /// The disk its restores write (`/dev/...` in the restore environment); unset:
    /// `restore.disk`. netreset never guesses a disk.
    #[serde(default)]
    pub disk: Option<String>,
}

/// The admin's settings of a station (the body of `PUT /api/v1/stations/{mac}`);
/// `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub name: Option<String>,
    pub room: Option<String>,
    pub image: Option<String>,
    pub kms_activation: Option<bool>,
    pub disk: Option<String>,
}

impl Station {
    /// A station known by MAC only.
    pub fn new(mac: MacAddr) -> Station {
        Station {
            mac,
            name: None,
            room: None,
            arch: None,
            firmware: None,
            uuid: None,
            ip: None,
            first_seen: None,
            last_seen: None,
            logged_in: false,
            logged_in_at: None,
            last_report: None,
            last_poll: None,
            image: None,
            agent_generation: None,
            agent_families: Vec::new(),
            kms_activation: false,
            disk: None,
        }
    }
}

/// What a booting station told us, merged into its record by [`Store::saw`].
#[derive(Clone, Debug, Default)]
pub struct Sighting {
    pub arch: Option<Arch>,
    pub firmware: Option<Firmware>,
    pub uuid: Option<Vec<u8>>,
    pub ip: Option<Ipv4Addr>,
}

/// One step of a station's boot path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `dhcp-offer`, `pxe-4011`, `tftp`, `tftp-refused`, `script`.
    pub kind: String,
    /// Unix milliseconds.
    pub at: u64,
    /// What was handed out or refused.
    pub detail: String,
}

/// Where a station's reset stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetState {
    /// Marked; the next PXE boot chains the restore environment.
    Pending,
    /// The restore environment reported progress.
    Restoring,
    /// Completed; the station boots its local disk again.
    Done,
    /// The restore failed; the next PXE boot tries again.
    Failed,
}

impl ResetState {
    /// Whether the station's PXE boot goes to the restore environment.
    pub fn active(self) -> bool {
        !matches!(self, ResetState::Done)
    }
}

/// A station's reset to a staged image, and how far its restore got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reset {
    /// The base image's name and the profile it was staged with.
    pub image: String,
    pub profile: String,
    /// The staged image id.
    pub staged: String,
    pub state: ResetState,
    /// Unix milliseconds.
    pub requested_at: u64,
    pub updated_at: u64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// The restore client's last figures (chunks_in_place, bytes_fetched, ...).
    #[serde(default)]
    pub stats: serde_json::Map<String, serde_json::Value>,
    pub error: Option<String>,
    /// The KMS families the staged image activates (empty for a plain reset), as
    /// they were when the reset was asked for: the agent reports these.
    #[serde(default)]
    pub families: Vec<String>,
    /// Unique per reset (the store's id sequence): the agent token is derived from it.
    #[serde(default)]
    pub generation: u64,
    /// The generation of the image the station runs until this reset is done: its
    /// agent keeps its token (to be told to reboot) until then.
    #[serde(default)]
    pub previous_generation: Option<u64>,
    /// The disk the restore environment writes, passed as `netreset.disk=`.
    #[serde(default)]
    pub disk: Option<String>,
}

impl Reset {
    /// What a restore token for this reset is bound to: the staged image and the
    /// reset's generation, so a token of an earlier reset to the same staged image
    /// is worthless.
    pub fn token_scope(&self) -> String {
        format!("{}#{}", self.staged, self.generation)
    }

    /// The resets whose agent tokens are good now: this one, and until it is done,
    /// the one before it.
    pub fn agent_generations(&self) -> impl Iterator<Item = u64> + '_ {
        std::iter::once(self.generation).chain(
            self.previous_generation
                .filter(|_| self.state != ResetState::Done),
        )
    }
}

/// A command for a station's agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    /// `reboot` or `shutdown`.
    pub command: String,
    /// Even with a user logged on (the agent warns the user first).
    #[serde(default)]
    pub force: bool,
    /// Unix milliseconds.
    pub queued_at: u64,
}

impl Command {
    /// As the station's events show it: `reboot (00000000000000a1, forced)`.
    pub fn describe(&self) -> String {
        let forced = if self.force { ", forced" } else { "" };
        format!("{} ({}{forced})", self.command, self.id)
    }
}

/// The inventory.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    stations: sled::Tree,
    resets: sled::Tree,
    campaigns: sled::Tree,
    ledger: sled::Tree,
    commands: sled::Tree,
    events: sled::Tree,
    by_ip: sled::Tree,
    events_per_station: usize,
    /// The keys of `stations`, in memory: the DHCP hot path asks for every packet
    /// whether a MAC is known, and a read lock is cheaper than a sled lookup. Every
    /// station write goes through [`Store::update`], which keeps it in step.
    known: Arc<RwLock<HashSet<MacAddr>>>,
    /// The ledger, decoded once at open and kept in step by [`Store::add_report`]
    /// (the only writer): a report does not decode every entry again. Its lock is
    /// also held while an entry is merged and written back.
    ledger_mem: Arc<std::sync::Mutex<crate::engine::ledger::Ledger>>,
    clock: Clock,
}

/// The key, in the default tree, of the campaign runner's monotonic time.
const MONO_MARK: &[u8] = b"mono-mark";

/// The ledger key of an entry: its station, family, CMID and cycle. 0xff first, so
/// these keys sort after the ids rows had before entries were merged.
fn ledger_key(entry: &crate::engine::ledger::Report) -> Vec<u8> {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&entry.station.octets());
    hasher.update(entry.family.name().as_bytes());
    hasher.update(&entry.cycle.to_be_bytes());
    hasher.update(entry.cmid.as_bytes());
    let mut key = vec![0xff];
    key.extend_from_slice(&hasher.finalize().as_bytes()[..16]);
    key
}

impl Store {
    /// Open (or create) the store under `dir`.
    pub fn open(dir: &Path, events_per_station: usize) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .open()?;
        let stations = db.open_tree("stations")?;
        let mut known = HashSet::new();
        for key in stations.iter().keys() {
            if let Ok(octets) = <[u8; 6]>::try_from(key?.as_ref()) {
                known.insert(MacAddr(octets));
            }
        }
        let ledger = db.open_tree("ledger")?;
        let ledger_mem = Store::load_ledger(&ledger)?;
        Ok(Store {
            stations,
            resets: db.open_tree("resets")?,
            campaigns: db.open_tree("campaigns")?,
            ledger,
            commands: db.open_tree("commands")?,
            events: db.open_tree("events")?,
            by_ip: db.open_tree("by_ip")?,
            db,
            events_per_station,
            known: Arc::new(RwLock::new(known)),
            ledger_mem: Arc::new(std::sync::Mutex::new(ledger_mem)),
            clock: Clock::system(),
        })
    }

    /// Every ledger row, decoded. Duplicates were recorded on purpose; here only the
    /// reports matter. Rows of one entry (from before entries had a key of their
    /// own) merge.
    fn load_ledger(tree: &sled::Tree) -> Result<crate::engine::ledger::Ledger, StoreError> {
        let mut ledger = crate::engine::ledger::Ledger::new();
        for value in tree.iter().values() {
            let _ = ledger.add(decode("ledger", &value?)?);
        }
        Ok(ledger)
    }

    /// The same store on `clock` (the simulator's), for every time it writes.
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The calendar clock of this daemon.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// One station, if known.
    pub fn station(&self, mac: MacAddr) -> Result<Option<Station>, StoreError> {
        self.stations
            .get(mac.octets())?
            .map(|v| decode(&mac.to_string(), &v))
            .transpose()
    }

    /// Whether the inventory has `mac` (a read error counts as unknown). Cheap: the
    /// DHCP hot path asks it for every packet.
    pub fn contains(&self, mac: MacAddr) -> bool {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&mac)
    }

    /// All stations, in MAC order.
    pub fn stations(&self) -> Result<Vec<Station>, StoreError> {
        self.stations
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&format!("{k:?}"), &v)
            })
            .collect()
    }

    /// Add a station or change its settings (from the configuration's inventory at
    /// start, or `PUT /api/v1/stations/{mac}`); what `settings` leaves `None` is kept.
    pub fn configure(&self, mac: MacAddr, settings: &Settings) -> Result<Station, StoreError> {
        self.update(mac, |st| {
            if let Some(name) = &settings.name {
                st.name = Some(name.clone());
            }
            if let Some(room) = &settings.room {
                st.room = Some(room.clone());
            }
            if let Some(image) = &settings.image {
                st.image = Some(image.clone());
            }
            if let Some(flag) = settings.kms_activation {
                st.kms_activation = flag;
            }
            if let Some(disk) = &settings.disk {
                st.disk = Some(disk.clone());
            }
        })
    }

    /// Record a sighting of `mac`: create the record when `create` is set, merge what
    /// the packet said, refresh last_seen. Returns the record, or `None` when the
    /// station is unknown and `create` is false.
    pub fn saw(
        &self,
        mac: MacAddr,
        sighting: &Sighting,
        create: bool,
    ) -> Result<Option<Station>, StoreError> {
        if !create && !self.contains(mac) {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let station = self.update(mac, |st| {
            if let Some(arch) = sighting.arch {
                st.arch = Some(label(arch));
            }
            if let Some(fw) = sighting.firmware {
                st.firmware = Some(label(fw));
            }
            if let Some(uuid) = &sighting.uuid {
                // Option 97 is a type octet followed by the 16-octet UUID.
                st.uuid = Some(uuid.iter().skip(1).map(|b| format!("{b:02x}")).collect());
            }
            if sighting.ip.is_some() {
                st.ip = sighting.ip;
            }
            st.first_seen.get_or_insert(now);
            st.last_seen = Some(now);
        })?;
        if let Some(ip) = sighting.ip {
            self.by_ip.insert(ip.octets(), &mac.octets())?;
        }
        Ok(Some(station))
    }

    /// The station last seen at `ip`.
    pub fn mac_at(&self, ip: Ipv4Addr) -> Result<Option<MacAddr>, StoreError> {
        Ok(self
            .by_ip
            .get(ip.octets())?
            .and_then(|v| <[u8; 6]>::try_from(v.as_ref()).ok())
            .map(MacAddr))
    }

    /// Append an event for `mac`, dropping the oldest beyond the configured number.
    pub fn record(
        &self,
        mac: MacAddr,
        kind: &str,
        detail: impl Into<String>,
    ) -> Result<(), StoreError> {
        let seq = self.db.generate_id()?;
        let mut key = [0u8; 14];
        key[..6].copy_from_slice(&mac.octets());
        key[6..].copy_from_slice(&seq.to_be_bytes());
        let event = Event {
            kind: kind.to_owned(),
            at: self.clock.now_ms(),
            detail: detail.into(),
        };
        self.events
            .insert(key, serde_json::to_vec(&event).expect("event serializes"))?;
        let keys: Vec<sled::IVec> = self
            .events
            .scan_prefix(mac.octets())
            .keys()
            .collect::<Result<_, _>>()?;
        if keys.len() > self.events_per_station {
            for old in &keys[..keys.len() - self.events_per_station] {
                self.events.remove(old)?;
            }
        }
        Ok(())
    }

    /// The events of `mac`, oldest first.
    pub fn events(&self, mac: MacAddr) -> Result<Vec<Event>, StoreError> {
        self.events
            .scan_prefix(mac.octets())
            .values()
            .map(|v| decode(&mac.to_string(), &v?))
            .collect()
    }

    /// Every campaign, oldest first.
    pub fn campaigns(&self) -> Result<Vec<crate::engine::campaign::Record>, StoreError> {
        self.campaigns
            .iter()
            .values()
            .map(|v| decode("campaign", &v?))
            .collect()
    }

    pub fn campaign(&self, id: u64) -> Result<Option<crate::engine::campaign::Record>, StoreError> {
        self.campaigns
            .get(id.to_be_bytes())?
            .map(|v| decode(&format!("campaign {id}"), &v))
            .transpose()
    }

    /// Write a campaign, durably: the runner acts on it only after this.
    pub fn put_campaign(
        &self,
        id: u64,
        record: &crate::engine::campaign::Record,
    ) -> Result<(), StoreError> {
        self.campaigns.insert(
            id.to_be_bytes(),
            serde_json::to_vec(record).expect("campaign serializes"),
        )?;
        self.campaigns.flush()?;
        Ok(())
    }

    /// Forget the reset of `mac` when its restore has not started; returns whether
    /// it did. A restore under way is left to finish (a half-written disk would not
    /// boot).
    pub fn remove_reset_if_pending(&self, mac: MacAddr) -> Result<bool, StoreError> {
        self.change_reset(mac, |current| {
            Ok::<_, StoreError>(match current {
                Some(r) if r.state == ResetState::Pending => (None, true),
                other => (other, false),
            })
        })
    }

    /// Every activation report, oldest first.
    pub fn ledger(&self) -> Result<crate::engine::ledger::Ledger, StoreError> {
        Ok(self.ledger_mem.lock().expect("not poisoned").clone())
    }

    /// Record a KMS request: a new entry, or a renewal of one (its last request
    /// moves); a retried POST changes nothing.
    pub fn add_report(
        &self,
        report: &crate::engine::ledger::Report,
    ) -> Result<crate::engine::ledger::Added, StoreError> {
        use crate::engine::ledger::Added;
        // One writer at a time: a renewal is read, merged and written back.
        let mut ledger = self.ledger_mem.lock().expect("not poisoned");
        let added = ledger.add(report.clone());
        if added == Added::Known {
            return Ok(added);
        }
        let entry = ledger.entry(report).expect("the entry was just added");
        let written = self
            .ledger
            .insert(
                ledger_key(entry),
                serde_json::to_vec(entry).expect("report serializes"),
            )
            .and_then(|_| self.ledger.flush());
        if let Err(e) = written {
            // Memory holds only what reached the disk: read it back.
            *ledger = Self::load_ledger(&self.ledger)?;
            return Err(e.into());
        }
        Ok(added)
    }

    /// Note that the agent of `mac` asked for commands just now (a sign of life),
    /// and what it said of its user, when it said anything.
    pub fn agent_polled(&self, mac: MacAddr, logged_in: Option<bool>) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        self.update(mac, |st| {
            st.last_poll = Some(now);
            if let Some(logged_in) = logged_in {
                st.logged_in = logged_in;
                st.logged_in_at = Some(now);
            }
        })?;
        Ok(())
    }

    /// Note that `mac` now runs the image of reset `generation`, whose agent
    /// activates `families`.
    pub fn set_agent_generation(
        &self,
        mac: MacAddr,
        generation: u64,
        families: &[String],
    ) -> Result<(), StoreError> {
        self.update(mac, |st| {
            st.agent_generation = Some(generation);
            st.agent_families = families.to_vec();
        })?;
        Ok(())
    }

    /// Note that the agent of `mac` reported just now, and what it said of its user.
    pub fn agent_seen(&self, mac: MacAddr, logged_in: bool) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        self.update(mac, |st| {
            st.logged_in = logged_in;
            st.logged_in_at = Some(now);
            st.last_report = Some(now);
        })?;
        Ok(())
    }

    /// Queue a command for the agent of `mac`; `force`: even with a user logged on.
    pub fn queue_command(
        &self,
        mac: MacAddr,
        command: &str,
        force: bool,
    ) -> Result<Command, StoreError> {
        let seq = self.db.generate_id()?;
        let cmd = Command {
            id: format!("{seq:016x}"),
            command: command.to_owned(),
            force,
            queued_at: self.clock.now_ms(),
        };
        let mut key = [0u8; 14];
        key[..6].copy_from_slice(&mac.octets());
        key[6..].copy_from_slice(&seq.to_be_bytes());
        self.commands
            .insert(key, serde_json::to_vec(&cmd).expect("command serializes"))?;
        self.commands.flush()?;
        Ok(cmd)
    }

    /// Take the oldest queued command of `mac`: it is handed out once.
    pub fn take_command(&self, mac: MacAddr) -> Result<Option<Command>, StoreError> {
        while let Some((key, value)) = self.commands.scan_prefix(mac.octets()).next().transpose()? {
            if self.commands.remove(&key)?.is_some() {
                self.commands.flush()?;
                return decode(&mac.to_string(), &value).map(Some);
            }
        }
        Ok(None)
    }

    /// The monotonic time the campaign runner last noted (seconds), if any.
    pub fn mono_mark(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .db
            .get(MONO_MARK)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Note the runner's monotonic time; not flushed (sled flushes it within 500 ms).
    pub fn set_mono_mark(&self, s: u64) -> Result<(), StoreError> {
        self.db.insert(MONO_MARK, &s.to_be_bytes())?;
        Ok(())
    }

    /// A number never handed out before by this store.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// The reset of `mac`, if one was ever asked for.
    pub fn reset(&self, mac: MacAddr) -> Result<Option<Reset>, StoreError> {
        self.resets
            .get(mac.octets())?
            .map(|v| decode(&mac.to_string(), &v))
            .transpose()
    }

    /// Write the reset of `mac`, durably: the next boot decision depends on it.
    pub fn put_reset(&self, mac: MacAddr, reset: &Reset) -> Result<(), StoreError> {
        self.resets.insert(
            mac.octets(),
            serde_json::to_vec(reset).expect("reset serializes"),
        )?;
        self.resets.flush()?;
        Ok(())
    }

    /// Change the reset of `mac` in one step: `change` sees the reset as it is and
    /// says what it becomes (`None`: removed) and what to return, or refuses. When
    /// another writer came in between, `change` runs again on what that one wrote,
    /// so no change is lost or made on a state that is gone.
    pub fn change_reset<T, E: From<StoreError>>(
        &self,
        mac: MacAddr,
        mut change: impl FnMut(Option<Reset>) -> Result<(Option<Reset>, T), E>,
    ) -> Result<T, E> {
        loop {
            let old = self.resets.get(mac.octets()).map_err(StoreError::from)?;
            let current = match &old {
                Some(bytes) => Some(decode(&mac.to_string(), bytes)?),
                None => None,
            };
            let (new, out) = change(current)?;
            let new = new.map(|r| serde_json::to_vec(&r).expect("reset serializes"));
            let swapped = self
                .resets
                .compare_and_swap(mac.octets(), old, new)
                .map_err(StoreError::from)?;
            if swapped.is_ok() {
                self.resets.flush().map_err(StoreError::from)?;
                return Ok(out);
            }
        }
    }

    /// Forget the reset of `mac`; returns whether there was one.
    pub fn remove_reset(&self, mac: MacAddr) -> Result<bool, StoreError> {
        let had = self.resets.remove(mac.octets())?.is_some();
        self.resets.flush()?;
        Ok(had)
    }

    /// Write everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn update(&self, mac: MacAddr, change: impl Fn(&mut Station)) -> Result<Station, StoreError> {
        let mut corrupt = None;
        let new = self.stations.update_and_fetch(mac.octets(), |old| {
            let mut st = match old.map(serde_json::from_slice::<Station>) {
                Some(Ok(st)) => st,
                Some(Err(e)) => {
                    corrupt = Some(e);
                    Station::new(mac)
                }
                None => Station::new(mac),
            };
            change(&mut st);
            Some(serde_json::to_vec(&st).expect("station serializes"))
        })?;
        if let Some(e) = corrupt {
            tracing::warn!(%mac, error = %e, "replaced a corrupt station record");
        }
        let bytes = new.expect("update_and_fetch with Some returns Some");
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mac);
        decode(&mac.to_string(), &bytes)
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

/// The serde name of an enum value (`x64`, `uefi-http`, `other-12`...).
fn label<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(map)) => map.iter().map(|(k, v)| format!("{k}-{v}")).collect(),
        Ok(other) => other.to_string(),
        Err(_) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    #[test]
    fn sighting_creates_and_merges_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        assert!(
            store
                .saw(MAC, &Sighting::default(), false)
                .unwrap()
                .is_none(),
            "unknown and not created"
        );
        let mut uuid = vec![0u8];
        uuid.extend([0xab; 16]);
        let s = Sighting {
            arch: Some(Arch::X64),
            firmware: Some(Firmware::UefiHttp),
            uuid: Some(uuid),
            ip: Some(Ipv4Addr::new(10, 0, 0, 9)),
        };
        let st = store.saw(MAC, &s, true).unwrap().unwrap();
        assert_eq!(st.arch.as_deref(), Some("x64"));
        assert_eq!(st.firmware.as_deref(), Some("uefi-http"));
        assert_eq!(st.uuid.as_deref(), Some("abababababababababababababababab"));
        assert_eq!(store.mac_at(Ipv4Addr::new(10, 0, 0, 9)).unwrap(), Some(MAC));
        let st = store
            .saw(
                MAC,
                &Sighting {
                    arch: Some(Arch::Other(12)),
                    ..Sighting::default()
                },
                false,
            )
            .unwrap()
            .unwrap();
        assert_eq!(st.arch.as_deref(), Some("other-12"));
        assert_eq!(
            st.ip,
            Some(Ipv4Addr::new(10, 0, 0, 9)),
            "an address is kept until a new one is seen"
        );
    }

    #[test]
    fn events_keep_only_the_newest_n_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 3).unwrap();
        for i in 0..5 {
            store.record(MAC, "tftp", format!("file{i}")).unwrap();
        }
        store
            .record(MacAddr([9; 6]), "script", "other station")
            .unwrap();
        let details: Vec<String> = store
            .events(MAC)
            .unwrap()
            .into_iter()
            .map(|e| e.detail)
            .collect();
        assert_eq!(details, ["file2", "file3", "file4"]);
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), 10).unwrap();
            let settings = Settings {
                name: Some("pc01".into()),
                room: Some("room-1".into()),
                ..Settings::default()
            };
            store.configure(MAC, &settings).unwrap();
            store.record(MAC, "dhcp-offer", "undionly.kpxe").unwrap();
            let report = crate::engine::ledger::Report {
                at: 10,
                station: MAC,
                family: crate::engine::Family::Windows,
                cmid: "cmid-a".into(),
                result: 0,
                activated: true,
                count: 26,
                cycle: 3,
                last: 0,
            };
            store.add_report(&report).unwrap();
            let renewal = crate::engine::ledger::Report { at: 20, ..report };
            store.add_report(&renewal).unwrap();
            store.flush().unwrap();
        }
        // sled's flusher thread lets go of the file lock a moment after the drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path(), 10) {
                Ok(store) => break store,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert!(e.to_string().contains("lock"), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(
            store.station(MAC).unwrap().unwrap().name.as_deref(),
            Some("pc01")
        );
        assert_eq!(store.events(MAC).unwrap().len(), 1);
        let ledger = store.ledger().unwrap();
        assert_eq!(
            ledger.reports().len(),
            1,
            "the entry and its renewal, merged"
        );
        assert_eq!(ledger.reports()[0].last_request(), 20);
    }
}
