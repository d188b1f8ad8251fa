//! Resets: one per station (key: its MAC), every change a compare-and-swap
//! ([`Store::change_reset`]) and flushed before the boot decision that depends on it.

use pxe::MacAddr;
use serde::{Deserialize, Serialize};

use super::{decode, get, Store, StoreError};

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
    /// The address the restore runs from: the first that used this reset's restore
    /// token; station.json and progress reports are taken from there only.
    #[serde(default)]
    pub restoring_from: Option<std::net::Ipv4Addr>,
    /// What the restore environment found in the firmware's `SecureBoot` variable:
    /// on, off, or `None` (not said yet, or a BIOS station).
    #[serde(default)]
    pub secure_boot: Option<bool>,
    /// The restore wave the reset is in: the stations of one room restoring the same
    /// image at once, which take chunks from each other. `None`: peers are off.
    #[serde(default)]
    pub wave: Option<u64>,
    /// The id of the staged image's index (what a wave's members share).
    #[serde(default)]
    pub index: Option<String>,
    /// The port the restore environment serves its chunks to the wave on.
    #[serde(default)]
    pub peer_port: Option<u16>,
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

impl Store {
    /// The reset of `mac`, if one was ever asked for.
    pub fn reset(&self, mac: MacAddr) -> Result<Option<Reset>, StoreError> {
        get(&self.resets, mac.octets(), || mac.to_string())
    }

    /// Change the reset of `mac` in one step: `change` sees the reset as it is and
    /// says what it becomes (`None`: removed) and what to return, or refuses. When
    /// another writer came in between, `change` runs again on what that one wrote,
    /// so no change is lost or made on a state that is gone.
    pub fn change_reset<T, E: From<StoreError>>(
        &self,
        mac: MacAddr,
        change: impl FnMut(Option<Reset>) -> Result<(Option<Reset>, T), E>,
    ) -> Result<T, E> {
        self.change_record(&self.resets, mac, super::Change::Reset(mac), change)
    }

    /// [`Store::change_reset`] for the record of `mac` in any tree keyed by MAC:
    /// compare-and-swap until no other writer came in between, flushed, then
    /// `announce`d.
    pub(super) fn change_record<R, T, E>(
        &self,
        tree: &sled::Tree,
        mac: MacAddr,
        announce: super::Change,
        mut change: impl FnMut(Option<R>) -> Result<(Option<R>, T), E>,
    ) -> Result<T, E>
    where
        R: Serialize + for<'de> Deserialize<'de>,
        E: From<StoreError>,
    {
        loop {
            let old = tree.get(mac.octets()).map_err(StoreError::from)?;
            let current = match &old {
                Some(bytes) => Some(decode(&mac.to_string(), bytes)?),
                None => None,
            };
            let (new, out) = change(current)?;
            let new = new.map(|r| serde_json::to_vec(&r).expect("record serializes"));
            let swapped = tree
                .compare_and_swap(mac.octets(), old, new)
                .map_err(StoreError::from)?;
            if swapped.is_ok() {
                tree.flush().map_err(StoreError::from)?;
                self.announce(announce);
                return Ok(out);
            }
        }
    }

    /// Every station's reset.
    pub fn resets(&self) -> Result<Vec<(MacAddr, Reset)>, StoreError> {
        let mut out = Vec::new();
        for entry in self.resets.iter() {
            let (key, value) = entry.map_err(StoreError::from)?;
            let Ok(octets) = <[u8; 6]>::try_from(key.as_ref()) else {
                continue;
            };
            let mac = MacAddr(octets);
            out.push((mac, decode(&mac.to_string(), &value)?));
        }
        Ok(out)
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
}
