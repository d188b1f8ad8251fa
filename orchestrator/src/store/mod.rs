//! The daemon's state in sled, one module per concern: stations (and the index
//! from IPv4 address to MAC), events, resets, agent commands, the KMS ledger,
//! campaigns and the admins' audit log. Keys are binary (6-octet MAC, MAC + 8-octet big-endian sequence,
//! 4-octet IPv4, big-endian ids); values are JSON. Every change of one record is one
//! atomic sled operation (update_and_fetch, compare_and_swap, remove), and what a
//! side effect depends on is flushed before it.

mod audit;
mod campaigns;
mod captures;
mod commands;
mod events;
mod feed;
mod ledger;
mod resets;
mod stations;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use pxe::MacAddr;
use serde::{Deserialize, Serialize};

use crate::clock::Clock;

pub use audit::{Audit, AUDIT_KEEP};
pub use captures::Capture;
pub use commands::Command;
pub use events::Event;
pub use feed::Change;
pub use resets::{Reset, ResetState};
pub use stations::{Settings, Sighting, Station};

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

/// The inventory.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    stations: sled::Tree,
    resets: sled::Tree,
    captures: sled::Tree,
    campaigns: sled::Tree,
    ledger: sled::Tree,
    commands: sled::Tree,
    events: sled::Tree,
    by_ip: sled::Tree,
    audit: sled::Tree,
    events_per_station: usize,
    /// The keys of `stations`, in memory, each with whether the admin confirmed the
    /// station: the DHCP hot path asks for every packet whether a MAC is known, and
    /// a read lock is cheaper than a sled lookup. Every station write goes through
    /// [`Store::update`], which keeps it in step.
    known: Arc<RwLock<HashMap<MacAddr, bool>>>,
    /// How many stations registered by themselves (from DHCP) the store keeps at
    /// most (`inventory.max_unknown`); past it, new ones are answered, not stored.
    max_unknown: usize,
    /// When the store last warned that it is full (Unix ms), so it says so once a
    /// minute.
    full_warned: Arc<std::sync::atomic::AtomicU64>,
    /// The ledger, decoded once at open and kept in step by [`Store::add_report`]
    /// (the only writer): a report does not decode every entry again. Its lock is
    /// also held while an entry is merged and written back.
    ledger_mem: Arc<std::sync::Mutex<crate::engine::ledger::Ledger>>,
    clock: Clock,
    /// Announces every write the API shows ([`Store::changes`]).
    feed: tokio::sync::broadcast::Sender<Change>,
    version: Arc<std::sync::atomic::AtomicU64>,
}

/// `inventory.max_unknown` by default.
pub const DEFAULT_MAX_UNKNOWN: usize = 2_000;

/// The key, in the default tree, of the campaign runner's monotonic time.
const MONO_MARK: &[u8] = b"mono-mark";

impl Store {
    /// Open (or create) the store under `dir`.
    pub fn open(dir: &Path, events_per_station: usize) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(Some(500))
            .open()?;
        let stations = db.open_tree("stations")?;
        let mut known = HashMap::new();
        for entry in stations.iter() {
            let (key, value) = entry?;
            if let Ok(octets) = <[u8; 6]>::try_from(key.as_ref()) {
                // A record that does not decode is replaced at its next write; until
                // then it counts as a station nobody confirmed.
                let confirmed = serde_json::from_slice::<Station>(&value)
                    .map(|st| st.confirmed)
                    .unwrap_or(false);
                known.insert(MacAddr(octets), confirmed);
            }
        }
        let ledger = db.open_tree("ledger")?;
        let ledger_mem = Store::load_ledger(&ledger)?;
        Ok(Store {
            stations,
            resets: db.open_tree("resets")?,
            captures: db.open_tree("captures")?,
            campaigns: db.open_tree("campaigns")?,
            ledger,
            commands: db.open_tree("commands")?,
            events: db.open_tree("events")?,
            by_ip: db.open_tree("by_ip")?,
            audit: db.open_tree("audit")?,
            db,
            events_per_station,
            known: Arc::new(RwLock::new(known)),
            max_unknown: DEFAULT_MAX_UNKNOWN,
            full_warned: Arc::default(),
            ledger_mem: Arc::new(std::sync::Mutex::new(ledger_mem)),
            clock: Clock::system(),
            feed: feed::channel(),
            version: Arc::default(),
        })
    }

    /// The same store keeping at most `n` stations that registered by themselves.
    pub fn with_max_unknown(mut self, n: usize) -> Store {
        self.max_unknown = n;
        self
    }

    /// The same store on `clock` (the simulator's), for every time it writes.
    pub fn with_clock(mut self, clock: Clock) -> Store {
        self.clock = clock;
        self
    }

    /// The store's size on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// The calendar clock of this daemon.
    pub fn clock(&self) -> &Clock {
        &self.clock
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

    /// Write everything to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// The record under `key` in `tree`, decoded; `what` names it in an error.
fn get<T: for<'de> Deserialize<'de>>(
    tree: &sled::Tree,
    key: impl AsRef<[u8]>,
    what: impl FnOnce() -> String,
) -> Result<Option<T>, StoreError> {
    tree.get(key)?.map(|v| decode(&what(), &v)).transpose()
}

/// Write `value` under `key` in `tree` and flush it: what is done next depends on it.
fn put_durably<T: Serialize>(
    tree: &sled::Tree,
    key: impl AsRef<[u8]>,
    value: &T,
) -> Result<(), StoreError> {
    tree.insert(
        key.as_ref(),
        serde_json::to_vec(value).expect("records serialize"),
    )?;
    tree.flush()?;
    Ok(())
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
    use std::net::Ipv4Addr;

    use pxe::{Arch, Firmware};

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
