//! The audit log: every admin action that changes state, under an 8-octet
//! big-endian sequence (oldest first), the newest [`AUDIT_KEEP`] kept.

use serde::{Deserialize, Serialize};

use super::{decode, Store, StoreError};

/// How many audit entries the store keeps (the oldest go first).
pub const AUDIT_KEEP: usize = 10_000;

/// One admin action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// Its place in the log (ascending).
    pub seq: u64,
    /// Unix milliseconds.
    pub at: u64,
    /// `reset`, `cancel-reset`, `station-settings`, `command`, `campaign-start`,
    /// `campaign-cancel`.
    pub action: String,
    /// The station's MAC or the campaign's id.
    pub target: String,
    /// The admin's address, as the server saw it.
    pub client: String,
    /// The HTTP status the action got (a refused action is logged too).
    pub status: u16,
}

impl Store {
    /// Log an admin action; past [`AUDIT_KEEP`] entries the oldest go.
    pub fn audit(
        &self,
        action: &str,
        target: &str,
        client: &str,
        status: u16,
    ) -> Result<Audit, StoreError> {
        let seq = self.db.generate_id()?;
        let entry = Audit {
            seq,
            at: self.clock.now_ms(),
            action: action.to_owned(),
            target: target.to_owned(),
            client: client.to_owned(),
            status,
        };
        self.audit.insert(
            seq.to_be_bytes(),
            serde_json::to_vec(&entry).expect("audit serializes"),
        )?;
        // Trim now and then rather than at every entry: counting is a scan.
        if seq % 64 == 0 {
            let excess = self.audit.len().saturating_sub(AUDIT_KEEP);
            for key in self.audit.iter().keys().take(excess) {
                self.audit.remove(key?)?;
            }
        }
        Ok(entry)
    }

    /// The newest `limit` audit entries after `since` (a `seq`), oldest first.
    pub fn audit_log(&self, since: Option<u64>, limit: usize) -> Result<Vec<Audit>, StoreError> {
        let start = since.map_or(0, |s| s.saturating_add(1));
        let mut entries: Vec<Audit> = self
            .audit
            .range(start.to_be_bytes()..)
            .values()
            .rev()
            .take(limit)
            .map(|v| decode("audit", &v?))
            .collect::<Result<_, _>>()?;
        entries.reverse();
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_log_keeps_the_newest_entries_in_order_and_pages_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 10).unwrap();
        let mut seqs = Vec::new();
        for i in 0..(AUDIT_KEEP + 200) {
            seqs.push(
                store
                    .audit("reset", &format!("t{i}"), "127.0.0.1", 202)
                    .unwrap()
                    .seq,
            );
        }
        let all = store.audit_log(None, usize::MAX).unwrap();
        assert!(all.len() <= AUDIT_KEEP + 64, "bounded: {}", all.len());
        assert!(all.len() >= AUDIT_KEEP);
        assert_eq!(all.last().unwrap().target, format!("t{}", AUDIT_KEEP + 199));
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
        let newest = store.audit_log(None, 3).unwrap();
        assert_eq!(newest.len(), 3);
        assert_eq!(newest[2].seq, *seqs.last().unwrap());
        let after = store.audit_log(Some(seqs[seqs.len() - 2]), 100).unwrap();
        assert_eq!(after.len(), 1, "only what came after `since`");
    }
}
