//! Live events (`GET /api/v1/events`): the store's changes turned into the API's
//! views once, numbered, kept for a while (a client that reconnects with
//! `Last-Event-ID` gets what it missed) and handed to every subscriber.
//!
//! Events: `station` (a [`StationView`] whose state, settings or address changed),
//! `boot` (a station's boot-path or restore event), `restore` (a [`ResetView`]),
//! `capture` (a [`super::views::CaptureView`]), `campaign` (a [`CampaignView`]), `kms` (the [`super::kms::Overview`]), and `lagged` (this
//! subscriber missed events: load the views again).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use pxe::MacAddr;
use serde::Serialize;
use tokio::sync::broadcast;

use super::views::{CampaignView, CaptureView, EventView, ResetView, StationView};
use super::{Error, Services};
use crate::engine::campaign::Phase;
use crate::store::Change;

/// Events kept for subscribers that reconnect.
const KEEP: usize = 4_096;
/// Events that wait for a slow subscriber before it is told it lagged.
const BACKLOG: usize = 4_096;

/// One event as it goes on the wire.
#[derive(Debug)]
pub struct Frame {
    pub id: u64,
    pub event: &'static str,
    /// JSON.
    pub data: String,
}

/// Where the events go out: numbered, kept, broadcast.
#[derive(Debug)]
pub struct Hub {
    tx: broadcast::Sender<Arc<Frame>>,
    /// The newest events and the id of the next; one lock, so that a subscriber's
    /// replay and its live events neither overlap nor leave a gap.
    kept: Mutex<(VecDeque<Arc<Frame>>, u64)>,
    /// Cancelled when the daemon stops: every stream ends, so that shutdown does
    /// not wait for subscribers to hang up.
    closing: tokio_util::sync::CancellationToken,
}

/// What a subscriber gets: the events it missed, then the live ones.
pub struct Subscription {
    pub replay: Vec<Arc<Frame>>,
    /// Events between `Last-Event-ID` and the oldest kept that are gone.
    pub lost: bool,
    pub live: broadcast::Receiver<Arc<Frame>>,
}

impl Hub {
    /// Ids start at the calendar time in microseconds, so they keep rising across
    /// restarts and a client's `Last-Event-ID` of an earlier run asks for nothing
    /// that was never sent.
    pub fn new(now_ms: u64) -> Hub {
        Hub {
            tx: broadcast::channel(BACKLOG).0,
            kept: Mutex::new((VecDeque::with_capacity(KEEP), now_ms.saturating_mul(1000))),
            closing: Default::default(),
        }
    }

    /// End every stream (the daemon stops).
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// Resolves when the daemon stops.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closing.clone().cancelled_owned()
    }

    pub fn publish(&self, event: &'static str, data: &impl Serialize) {
        let data = serde_json::to_string(data).expect("views serialize");
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let frame = Arc::new(Frame {
            id: kept.1,
            event,
            data,
        });
        kept.1 += 1;
        if kept.0.len() == KEEP {
            kept.0.pop_front();
        }
        kept.0.push_back(frame.clone());
        let _ = self.tx.send(frame);
    }

    /// Subscribe; with `after` (a `Last-Event-ID`), the kept events after it first.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.tx.subscribe();
        let Some(after) = after else {
            return Subscription {
                replay: Vec::new(),
                lost: false,
                live,
            };
        };
        let oldest = kept.0.front().map_or(kept.1, |f| f.id);
        Subscription {
            replay: kept.0.iter().filter(|f| f.id > after).cloned().collect(),
            // An id of the future (another daemon) or older than what is kept.
            lost: after.saturating_add(1) < oldest || after >= kept.1,
            live,
        }
    }

    /// How many subscribers listen now.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// A boot-path or restore event of a station.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BootEvent {
    pub mac: String,
    #[serde(flatten)]
    pub event: EventView,
}

/// How many events a subscriber missed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Lagged {
    /// Events dropped for this subscriber (0: unknown, its `Last-Event-ID` is
    /// older than what is kept).
    pub missed: u64,
}

/// Turns the store's changes into events: what each station showed last (so a
/// sighting that changes only `last_seen` is not an event), the phases of the running
/// campaigns.
#[derive(Default)]
pub struct Publisher {
    shown: HashMap<MacAddr, String>,
    phases: HashMap<MacAddr, Phase>,
    loaded: bool,
}

impl Publisher {
    /// Publish the events of `changes` (a batch, in the order they were written).
    pub fn publish(&mut self, state: &Services, changes: Vec<Change>) -> Result<(), Error> {
        let hub = &state.events;
        if !self.loaded {
            self.phases = super::stations::running_phases(state)?;
            self.loaded = true;
        }
        let mut stations = Vec::new();
        let mut ledger = false;
        for change in changes {
            match change {
                Change::Station(mac) => stations.push(mac),
                Change::Event(mac, e) => hub.publish(
                    "boot",
                    &BootEvent {
                        mac: mac.to_string(),
                        event: EventView::from(&e),
                    },
                ),
                Change::Reset(mac) => {
                    if let Some(reset) = state.policy.store().reset(mac)? {
                        hub.publish("restore", &ResetView::of(mac, &reset));
                    }
                    stations.push(mac);
                }
                Change::Capture(mac) => {
                    if let Some(capture) = state.policy.store().capture(mac)? {
                        hub.publish("capture", &CaptureView::of(mac, &capture));
                    }
                    stations.push(mac);
                }
                Change::Campaign(id) => {
                    let Some(record) = state.policy.store().campaign(id)? else {
                        continue;
                    };
                    hub.publish("campaign", &CampaignView::new(&record));
                    let running = record.campaign.state == crate::engine::campaign::State::Running;
                    for s in &record.campaign.stations {
                        let before = if running {
                            self.phases.insert(s.mac, s.phase.clone())
                        } else {
                            self.phases.remove(&s.mac)
                        };
                        if before.as_ref() != Some(&s.phase) || !running {
                            stations.push(s.mac);
                        }
                    }
                }
                Change::Ledger => ledger = true,
            }
        }
        stations.sort();
        stations.dedup();
        for mac in stations {
            self.station(state, mac)?;
        }
        if ledger {
            hub.publish("kms", &super::kms::overview(state)?);
        }
        Ok(())
    }

    /// A `station` event when what the station shows changed (not its timestamps).
    fn station(&mut self, state: &Services, mac: MacAddr) -> Result<(), Error> {
        let Some(st) = state.policy.store().station(mac)? else {
            return Ok(());
        };
        let view = super::stations::view(state, &st, &self.phases)?;
        let key = serde_json::to_string(&StationView {
            first_seen: None,
            last_seen: None,
            last_report: None,
            ..view.clone()
        })
        .expect("views serialize");
        if self.shown.get(&mac) != Some(&key) {
            self.shown.insert(mac, key);
            state.events.publish("station", &view);
        }
        Ok(())
    }
}
