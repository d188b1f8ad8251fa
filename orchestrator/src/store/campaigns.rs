//! Campaign records, by id; written (and flushed) by the runner before it acts.

use crate::engine::campaign::Record;

use super::{decode, Store, StoreError};

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
        self.campaigns
            .get(id.to_be_bytes())?
            .map(|v| decode(&format!("campaign {id}"), &v))
            .transpose()
    }

    /// Write a campaign, durably: the runner acts on it only after this.
    pub fn put_campaign(&self, id: u64, record: &Record) -> Result<(), StoreError> {
        self.campaigns.insert(
            id.to_be_bytes(),
            serde_json::to_vec(record).expect("campaign serializes"),
        )?;
        self.campaigns.flush()?;
        Ok(())
    }
}
