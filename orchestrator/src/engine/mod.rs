//! The KMS campaign engine's pure parts: the campaign state machine (events in,
//! actions out), the planner (which stations run the next cycles, and for which
//! families) and the KMS ledger (every activation report, and the count projected
//! forward). The runner that persists campaigns and carries out their actions (WoL,
//! agent reboots, resets), the schedule and the API build on these.

pub mod campaign;
pub mod keepalive;
pub mod ledger;
pub mod planner;
pub mod schedule;
pub mod spp;

use serde::{Deserialize, Serialize};

/// 0xC004F038, count insufficient: the host answered and counted the request, but
/// its count is below the client's threshold (docs/kms.md).
pub const COUNT_INSUFFICIENT: u32 = 0xC004_F038;

/// Why the engine refuses a plan. Each message is for the admin.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Microsoft counts computers: a family needs its threshold of registered
    /// stations before a campaign for it can reach the count.
    #[error(
        "only {registered} stations with {family} are confirmed (listed in [[inventory.stations]] \
         or set with PUT /api/v1/stations/{{mac}}; stations that registered by themselves from \
         DHCP do not count), and the KMS host activates {family} only once {threshold} distinct \
         computers have asked. KMS is for sites with at \
         least {threshold}; smaller ones use MAK keys or Active Directory-based activation"
    )]
    TooFewStations {
        family: Family,
        registered: usize,
        threshold: usize,
    },
}

/// A KMS count a campaign drives: Windows (client and server share the host's count)
/// or Office (a count of its own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Windows,
    Office,
}

impl Family {
    /// The count the KMS host needs before it activates this family's clients
    /// (docs/kms.md: Windows client 25, Office 5).
    pub fn threshold(self) -> u32 {
        match self {
            Family::Windows => 25,
            Family::Office => 5,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Windows => "windows",
            Family::Office => "office",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
