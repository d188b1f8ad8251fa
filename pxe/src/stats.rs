//! What the protocol servers did, counted: plain atomics the servers bump on their
//! hot paths (no lock, no allocation) and the daemon reads when it is scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::Firmware;

/// The firmware families answers are counted by.
pub const FIRMWARE: [&str; 5] = ["bios", "uefi", "uefi-http", "bios-http", "other"];
/// The two ProxyDHCP sockets.
pub const LISTENERS: [&str; 2] = ["dhcp", "pxe"];
/// Why a DHCP packet got no answer.
pub const DROPS: [&str; 12] = [
    "malformed",
    "not-request",
    "not-ethernet",
    "no-message-type",
    "message-type",
    "not-pxe",
    "other-server",
    "no-magic-cookie",
    "policy-ignore",
    "no-boot-file",
    "encode-failed",
    "send-failed",
];

fn firmware_index(f: Firmware) -> usize {
    match f {
        Firmware::Bios => 0,
        Firmware::Uefi => 1,
        Firmware::UefiHttp => 2,
        Firmware::BiosHttp => 3,
        Firmware::Other => 4,
    }
}

/// The ProxyDHCP server's counts.
#[derive(Debug, Default)]
pub struct DhcpStats {
    answers: [[AtomicU64; 2]; 5],
    drops: [AtomicU64; 12],
}

impl DhcpStats {
    pub(crate) fn answered(&self, firmware: Firmware, listener: usize) {
        self.answers[firmware_index(firmware)][listener].fetch_add(1, Relaxed);
    }

    /// Count a drop; `reason` is one of [`DROPS`].
    pub(crate) fn dropped(&self, reason: &str) {
        let i = DROPS
            .iter()
            .position(|d| *d == reason)
            .expect("a known reason");
        self.drops[i].fetch_add(1, Relaxed);
    }

    /// `(firmware, listener, answers)` for every pair.
    pub fn answers(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (f, row) in FIRMWARE.iter().zip(&self.answers) {
            for (l, n) in LISTENERS.iter().zip(row) {
                out.push((*f, *l, n.load(Relaxed)));
            }
        }
        out
    }

    /// `(reason, drops)` for every reason.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        DROPS
            .iter()
            .zip(&self.drops)
            .map(|(r, n)| (*r, n.load(Relaxed)))
            .collect()
    }
}

/// The TFTP server's counts.
#[derive(Debug, Default)]
pub struct TftpStats {
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Ended by the client after option negotiation (EDK2 asks for tsize first).
    pub(crate) negotiated_only: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

impl TftpStats {
    /// `(outcome, transfers)`: done, failed, negotiated-only, refused.
    pub fn transfers(&self) -> [(&'static str, u64); 4] {
        [
            ("done", self.done.load(Relaxed)),
            ("failed", self.failed.load(Relaxed)),
            ("negotiated-only", self.negotiated_only.load(Relaxed)),
            ("refused", self.refused.load(Relaxed)),
        ]
    }

    /// File bytes sent in completed transfers.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }
}
