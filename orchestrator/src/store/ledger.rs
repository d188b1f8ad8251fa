//! The KMS ledger: one row per station, family, CMID and cycle (a deterministic
//! key, so a renewal overwrites its entry), decoded once at open and kept in memory
//! by its only writer, [`Store::add_report`].

use crate::engine::ledger::{Added, Ledger, Report};

use super::{decode, Store, StoreError};

/// The ledger key of an entry: its station, family, CMID and cycle. 0xff first, so
/// these keys sort after the ids rows had before entries were merged.
fn ledger_key(entry: &Report) -> Vec<u8> {
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
    /// Every ledger row, decoded. Duplicates were recorded on purpose; here only the
    /// reports matter. Rows of one entry (from before entries had a key of their
    /// own) merge.
    pub(super) fn load_ledger(tree: &sled::Tree) -> Result<Ledger, StoreError> {
        let mut ledger = Ledger::new();
        for value in tree.iter().values() {
            let _ = ledger.add(decode("ledger", &value?)?);
        }
        Ok(ledger)
    }

    /// Every activation report, oldest first.
    pub fn ledger(&self) -> Result<Ledger, StoreError> {
        Ok(self.ledger_mem.lock().expect("not poisoned").clone())
    }

    /// Record a KMS request: a new entry, or a renewal of one (its last request
    /// moves); a retried POST changes nothing.
    pub fn add_report(&self, report: &Report) -> Result<crate::engine::ledger::Added, StoreError> {
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
        drop(ledger);
        self.announce(super::Change::Ledger);
        Ok(added)
    }
}
