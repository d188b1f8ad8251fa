//! Boot events go to the store through one thread of their own: the protocol servers
//! only queue them, so a classroom switching on at once is answered at socket speed
//! and not at sled's. Events keep their order (one FIFO queue, one writer).
//!
//! The writer works in batches: after a batch it sleeps for [`BATCH_PAUSE`], so that
//! during a burst queuing an event never has to wake it. It runs under SCHED_IDLE, so
//! its sled work waits until the DHCP replies are out instead of competing with them
//! for the CPU.
//!
//! Only the record of what happened goes through here. State that an action depends
//! on (a campaign step, a station's lifecycle) is written by its caller, durably,
//! before the action; under sustained load this queue may lag or, when full, drop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::store::Store;

/// How many events may wait; beyond that new ones are dropped (and counted), since a
/// boot must never wait for its own record.
const QUEUE: usize = 16_384;

/// Pause between batches: the longest an event waits before it is written.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

type Job = Box<dyn FnOnce(&Store) + Send>;

/// Run this thread under SCHED_IDLE: it gets the CPU only when nothing else wants it,
/// so the writer never delays a protocol server (on a small boot server they share
/// two cores); it catches up as soon as a burst is answered. Falls back to nice 19.
#[allow(unsafe_code)]
fn lower_priority() {
    // SAFETY: sched_setscheduler and setpriority read a plain struct we own and take
    // integers; 0 / gettid() name this thread only.
    let ok = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0
            || libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) == 0
    };
    if !ok {
        tracing::debug!("recorder thread keeps normal priority");
    }
}

/// The queue in front of the writer thread.
pub struct Recorder {
    tx: SyncSender<Job>,
    dropped: AtomicU64,
}

impl Recorder {
    /// Start the writer thread for `store`. It ends when the last `Recorder` handle is
    /// dropped.
    pub fn start(store: Store) -> Arc<Recorder> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("netreset-recorder".into())
            .spawn(move || {
                lower_priority();
                while let Ok(job) = rx.recv() {
                    job(&store);
                    while let Ok(job) = rx.try_recv() {
                        job(&store);
                    }
                    std::thread::sleep(BATCH_PAUSE);
                }
            })
            .expect("spawn the recorder thread");
        Arc::new(Recorder {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue a write. Never blocks.
    pub fn submit(&self, job: impl FnOnce(&Store) + Send + 'static) {
        match self.tx.try_send(Box::new(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    warn!(dropped = n, "boot event queue full; events dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Wait until everything queued so far is written (at most `deadline`).
    pub fn drain(&self, deadline: Duration) -> bool {
        let (done_tx, done_rx) = sync_channel(1);
        if self
            .tx
            .send(Box::new(move |_: &Store| {
                let _ = done_tx.send(());
            }))
            .is_err()
        {
            return false;
        }
        done_rx.recv_timeout(deadline).is_ok()
    }
}
