//! Campaign records, by id; written (and flushed) by the runner before it acts.

use crate::engine::campaign::Record;

use super::{decode, get, put_durably, Store, StoreError};

impl Store {
    /// Every campaign, oldest first.
    pub fn campaigns(&self) -> Result<Vec<Record>, StoreError> {
        self.campaigns
            .iter()
            .values()
            .map(|v| decode("campaign", &v?))
            .collect()
    }

    pub fn campaign(&self, id: u64) -> Result<Option<Record>, StoreError> {
        get(&self.campaigns, id.to_be_bytes(), || {
            format!("campaign {id}")
        })
    }

    /// Write a campaign, durably: the runner acts on it only after this.
    pub fn put_campaign(&self, id: u64, record: &Record) -> Result<(), StoreError> {
        put_durably(&self.campaigns, id.to_be_bytes(), record)?;
        self.announce(super::Change::Campaign(id));
        Ok(())
    }
}
