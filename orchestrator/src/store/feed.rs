//! What changed in the store, as it is written: every write that the API shows
//! (a station, its events, its reset, a campaign, the ledger) is announced here
//! after it succeeded, for the live events of `GET /api/v1/events`. Sending costs
//! nothing when nobody listens; a listener that falls behind is told how much it
//! missed (`tokio::sync::broadcast`), never blocks a writer.

use pxe::MacAddr;

use super::{Event, Store};

/// How many changes wait for a slow listener before the oldest are dropped.
const BACKLOG: usize = 8_192;

/// One change of the store.
#[derive(Clone, Debug)]
pub enum Change {
    /// A station's record (a sighting, its settings, what its agent said).
    Station(MacAddr),
    /// An event of a station's boot path or restore.
    Event(MacAddr, Event),
    /// A station's reset (marked, progress, done, failed, cancelled).
    Reset(MacAddr),
    /// A station's capture (asked for, progress, done, failed, cancelled).
    Capture(MacAddr),
    /// A campaign was saved.
    Campaign(u64),
    /// A report reached the ledger.
    Ledger,
}

pub(super) fn channel() -> tokio::sync::broadcast::Sender<Change> {
    tokio::sync::broadcast::channel(BACKLOG).0
}

impl Store {
    /// Listen to the changes written from now on.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.feed.subscribe()
    }

    pub(super) fn announce(&self, change: Change) {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // An error only says that nobody listens.
        let _ = self.feed.send(change);
    }

    /// Rises with every change announced: a view made after reading version `v`
    /// is current while the version is still `v` (read it before the data).
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }
}
