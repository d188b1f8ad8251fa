//! Captures: one per station (key: its MAC), the image a station's disk is being
//! read into. Kept beside its reset, never in its place: a capture reads the disk
//! and leaves the station running what it ran (its agent's token, its last reset).

use std::net::Ipv4Addr;

use pxe::MacAddr;
use serde::{Deserialize, Serialize};

use super::{get, ResetState, Store, StoreError};

/// A station's capture into a new image, and how far it got. Its states are a
/// reset's: pending (the next PXE boot captures), restoring (reading and
/// uploading), done (the image is in `image ls`), failed (the next boot tries again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capture {
    /// The image it makes.
    pub name: String,
    pub chunk_size: u32,
    pub state: ResetState,
    /// Unix milliseconds.
    pub requested_at: u64,
    pub updated_at: u64,
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// The capture client's last figures (chunks_uploaded, bytes_uploaded, ...).
    #[serde(default)]
    pub stats: serde_json::Map<String, serde_json::Value>,
    pub error: Option<String>,
    /// Unique (the store's id sequence): the capture token is bound to it.
    pub generation: u64,
    /// The disk the restore environment reads, passed as `netreset.disk=`.
    pub disk: String,
    /// The address the capture runs from: the first that used its token.
    #[serde(default)]
    pub capturing_from: Option<Ipv4Addr>,
    /// The index id of the image, once done.
    #[serde(default)]
    pub index: Option<String>,
}

impl Capture {
    /// Whether the station's PXE boot goes to the capture: pending or running. A
    /// failed capture does not bring the PC back (a BitLocker disk would loop): it
    /// boots its disk, and the admin asks again once the cause is fixed.
    pub fn under_way(&self) -> bool {
        matches!(self.state, ResetState::Pending | ResetState::Restoring)
    }

    /// What a capture token is bound to: never a restore's scope (a staged id).
    pub fn token_scope(&self) -> String {
        format!("capture:{}#{}", self.name, self.generation)
    }
}

impl Store {
    /// The capture of `mac`, if one was ever asked for.
    pub fn capture(&self, mac: MacAddr) -> Result<Option<Capture>, StoreError> {
        get(&self.captures, mac.octets(), || mac.to_string())
    }

    /// Change the capture of `mac` in one step, as [`Store::change_reset`] does.
    pub fn change_capture<T, E: From<StoreError>>(
        &self,
        mac: MacAddr,
        change: impl FnMut(Option<Capture>) -> Result<(Option<Capture>, T), E>,
    ) -> Result<T, E> {
        self.change_record(&self.captures, mac, super::Change::Capture(mac), change)
    }
}
