//! The last N boot and agent events of each station, under MAC + an 8-octet
//! big-endian sequence: a station's events are one ordered prefix scan.

use pxe::MacAddr;
use serde::{Deserialize, Serialize};

use super::{decode, Store, StoreError};

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

impl Store {
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
        self.announce(super::Change::Event(mac, event));
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
}
