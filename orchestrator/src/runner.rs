//! The campaign runner: one task that owns the running campaigns. Station events
//! (script served, restore progress, agent reports) and a tick reach it over a
//! channel; it feeds them to the campaign's state machine (`engine::campaign`),
//! writes the campaign to sled, and only then carries out the actions: reset marks,
//! Wake-on-LAN, reboot commands. A restarted daemon loads the running campaigns and
//! goes on where they stood.

use std::collections::BTreeMap;

use pxe::MacAddr;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::campaign::{Action, Event, Phase, Record, State};
use crate::service::campaigns::Msg;
use crate::service::{Error as ServiceError, Services};

/// Run until `cancel`: load the running campaigns, then take messages and ticks.
/// The runner reads and writes the store and stages images between its awaits: run
/// it on a thread of its own (`daemon` drives it with `Handle::block_on` on a
/// blocking thread), never on the async workers.
pub async fn run(state: Services, mut rx: mpsc::UnboundedReceiver<Msg>, cancel: CancellationToken) {
    let store = state.policy.store().clone();
    let mut running: BTreeMap<u64, Record> = match store.campaigns() {
        Ok(all) => all
            .into_iter()
            .filter(|r| r.campaign.state == State::Running)
            .map(|r| (r.id, r))
            .collect(),
        Err(e) => {
            tracing::error!(error = %e, "cannot load the campaigns; none runs");
            BTreeMap::new()
        }
    };
    // Time-outs go on where the last run left them: at the monotonic time it last
    // wrote, or at least the latest its campaigns hold.
    let latest = running
        .values()
        .flat_map(|r| r.campaign.stations.iter().map(|s| s.since))
        .chain(store.mono_mark().ok().flatten())
        .max()
        .unwrap_or(0);
    store.clock().resume_mono(latest);
    // What happened while the daemon was down (or between saving a step and acting
    // on it): restores that finished and reports that arrived.
    let mut pending: std::collections::VecDeque<(u64, Event)> = Default::default();
    if !running.is_empty() {
        tracing::info!(campaigns = running.len(), "resuming campaigns");
        for r in running.values() {
            for s in &r.campaign.stations {
                pending.extend(recover(&state, r, s.mac).into_iter().map(|e| (r.id, e)));
            }
        }
    }
    let mut last_keepalive = tokio::time::Instant::now() - state.campaign_settings.keepalive_check;
    let mut keepalive_said = String::new();
    let mut tick = tokio::time::interval(state.campaign_settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => None,
            msg = rx.recv() => match msg {
                Some(m) => Some(m),
                None => return,
            },
        };
        // The calendar for windows and keep-alive; the monotonic clock for the
        // campaigns' time-outs (an NTP step must not time out every station at once).
        let now = store.clock().now_ms() / 1000;
        let mono = store.clock().mono_s();
        if msg.is_none() && !running.is_empty() {
            // Written on every tick, flushed with sled's own rhythm: a restart loses
            // at most that much of the stations' waiting.
            let _ = store.set_mono_mark(mono);
        }
        if msg.is_none()
            && running.is_empty()
            && last_keepalive.elapsed() >= state.campaign_settings.keepalive_check
        {
            last_keepalive = tokio::time::Instant::now();
            let said = keepalive(&state, now);
            if !said.is_empty() && said != keepalive_said {
                tracing::info!(what = %said, "keep-alive");
            }
            keepalive_said = said;
        }
        let mut work = std::mem::take(&mut pending);
        match msg {
            None => work.extend(running.keys().map(|id| (*id, Event::Tick))),
            Some(Msg::Started(id)) => match store.campaign(id) {
                Ok(Some(r)) => {
                    running.insert(id, r);
                    work.push_back((id, Event::Tick));
                }
                other => tracing::error!(id, ?other, "a new campaign cannot be loaded"),
            },
            Some(Msg::Cancel(id)) => work.push_back((id, Event::Cancel)),
            Some(Msg::Station(mac, event)) => {
                if let Some(id) = running
                    .iter()
                    .find(|(_, r)| r.campaign.stations.iter().any(|s| s.mac == mac))
                    .map(|(id, _)| *id)
                {
                    work.push_back((id, event));
                }
            }
        }
        while let Some((id, event)) = work.pop_front() {
            if cancel.is_cancelled() {
                // Stopping: what is saved is carried out after a restart, as after
                // a crash between saving a step and acting on it.
                return;
            }
            let Some(record) = running.get_mut(&id) else {
                continue;
            };
            // A top-up counts what will still be there at its horizon.
            let event = match (event, record.horizon) {
                (
                    Event::Report {
                        mac,
                        generation,
                        family,
                        result,
                        duplicate_cmid,
                        ..
                    },
                    Some(h),
                ) => Event::Report {
                    mac,
                    generation,
                    family,
                    result,
                    count: store.ledger().map_or(0, |l| l.projected(family, h)),
                    duplicate_cmid,
                },
                (event, _) => event,
            };
            let before = record.campaign.clone();
            if record.window {
                // In its window it plans cycles; outside, the ones under way finish.
                let open = state
                    .schedule
                    .as_ref()
                    .as_ref()
                    .is_some_and(|w| w.contains(now as i64));
                record.campaign.paused = !open;
            }
            let actions = record.campaign.handle(event, mono);
            if record.campaign == before && actions.is_empty() {
                continue;
            }
            record.updated_at = store.clock().now_ms();
            // Written before anything is done about it.
            if let Err(e) = store.put_campaign(id, record) {
                tracing::error!(id, error = %e, "cannot save the campaign; its actions wait");
                record.campaign = before;
                continue;
            }
            let record = record.clone();
            for action in actions {
                if cancel.is_cancelled() {
                    return;
                }
                let follow = carry_out(&state, &record, action);
                work.extend(follow.into_iter().map(|e| (id, e)));
            }
            if record.campaign.state != State::Running {
                tracing::info!(id, state = ?record.campaign.state, "campaign ended");
                for s in &record.campaign.stations {
                    if s.phase != Phase::Idle {
                        // Nothing of an ended campaign stays marked for reset.
                        let _ = store.remove_reset_if_pending(s.mac);
                    }
                }
                running.remove(&id);
            }
        }
    }
}

/// Carry out one action; the events it leads to (the reset's generation, a failure)
/// go back into the campaign at once.
fn carry_out(state: &Services, record: &Record, action: Action) -> Vec<Event> {
    let store = state.policy.store();
    let image = record.campaign.image.clone();
    let run = record
        .campaign
        .stations
        .iter()
        .find(|s| s.mac == action_mac(&action));
    let mut follow = Vec::new();
    let result: Result<(), ServiceError> = match &action {
        Action::Reset { mac, families } => crate::service::resets::mark(
            state,
            *mac,
            Some(image),
            Some(images::Profile::Kms),
            Some(families.clone()),
        )
        .map(|reset| follow.push(Event::Marked(*mac, reset.generation))),
        Action::Wake(mac) | Action::Reboot(mac) => match store.reset(*mac) {
            Ok(Some(r)) if r.state.active() => {
                // The daemon may have stopped between marking and saving the mark.
                if run.is_some_and(|s| s.generation.is_none()) {
                    follow.push(Event::Marked(*mac, r.generation));
                }
                power_on(state, record, &action)
            }
            // The cycle's restore is done. Restored and silent since: the station
            // may be off, wake it (its firmware boots the restored disk). Else the
            // daemon missed saying that the restore is done: nothing to boot again.
            Ok(Some(r))
                if r.state == crate::store::ResetState::Done
                    && run.and_then(|s| s.generation) == Some(r.generation) =>
            {
                match run.map(|s| &s.phase) {
                    Some(Phase::BootingOs { .. }) => power_on(state, record, &action),
                    _ => {
                        follow.extend(recover(state, record, *mac));
                        Ok(())
                    }
                }
            }
            // The cycle's mark is not there (the daemon stopped between saving the
            // cycle and marking it, or it was withdrawn): mark it before the boot.
            _ => {
                let families = run.map(|s| s.families.clone()).unwrap_or_default();
                match crate::service::resets::mark(
                    state,
                    *mac,
                    Some(image),
                    Some(images::Profile::Kms),
                    Some(families),
                ) {
                    Ok(reset) => {
                        follow.push(Event::Marked(*mac, reset.generation));
                        power_on(state, record, &action)
                    }
                    Err(e) => Err(e),
                }
            }
        },
        Action::CancelReset(mac) => store
            .remove_reset_if_pending(*mac)
            .map(|_| ())
            .map_err(ServiceError::from),
    };
    if let Err(e) = result {
        let why = e.to_string();
        let mac = action_mac(&action);
        tracing::warn!(campaign = record.id, ?action, %why, "campaign action failed");
        let _ = store.record(mac, "campaign-action-failed", why.clone());
        if let Action::Reset { .. } = action {
            // A station that cannot be marked cannot restore: count it as a failed
            // restore, so it is retried and then quarantined with the reason.
            follow.push(Event::RestoreFailed(mac, why));
        }
    }
    follow
}

fn action_mac(action: &Action) -> MacAddr {
    match action {
        Action::Reset { mac, .. }
        | Action::Wake(mac)
        | Action::Reboot(mac)
        | Action::CancelReset(mac) => *mac,
    }
}

/// The events a station's current cycle missed: when its marked reset is done, the
/// restore's end and the reports its agent sent since (the ledger has them, by the
/// reset generation of their token).
fn recover(state: &Services, record: &Record, mac: MacAddr) -> Vec<Event> {
    let Some(run) = record.campaign.stations.iter().find(|s| s.mac == mac) else {
        return Vec::new();
    };
    let Some(generation) = run.generation else {
        return Vec::new();
    };
    let store = state.policy.store();
    let done = matches!(store.reset(mac), Ok(Some(r)) if r.generation == generation && r.state == crate::store::ResetState::Done);
    if !done {
        return Vec::new();
    }
    let mut events = vec![Event::RestoreDone(mac)];
    if let Ok(ledger) = store.ledger() {
        events.extend(
            ledger
                .reports()
                .iter()
                .filter(|r| r.station == mac && r.cycle == generation)
                .map(|r| Event::Report {
                    mac,
                    generation,
                    family: r.family,
                    result: Some(r.result),
                    count: r.count,
                    duplicate_cmid: false,
                }),
        );
    }
    events
}

/// Wake the station, or reboot it through its agent.
fn power_on(state: &Services, record: &Record, action: &Action) -> Result<(), ServiceError> {
    let store = state.policy.store();
    match action {
        Action::Wake(mac) => wake(state, *mac),
        Action::Reboot(mac) if !session_free(store, *mac) => {
            // Never reboot a station with a user at it, or one whose agent has not
            // said lately that nobody is: it is in use until its agent says
            // otherwise. The agent says so with every command poll, and itself
            // refuses an unforced reboot with a user logged on.
            state.campaigns.station(*mac, Event::InUse(*mac));
            Err(ServiceError::Conflict(format!(
                "{mac} is in use (its agent says a user is logged on, or has not said for {} s that nobody is): not rebooted",
                SESSION_FRESH_MS / 1000
            )))
        }
        Action::Reboot(mac) => store
            .queue_command(*mac, "reboot", false)
            .map(|cmd| {
                let _ = store.record(
                    *mac,
                    "command-queued",
                    format!("reboot ({}) for campaign {}", cmd.id, record.id),
                );
                state.commands_queued.notify_waiters();
            })
            .map_err(ServiceError::from),
        _ => Ok(()),
    }
}

/// How recent the agent's word on its session must be for a campaign to reboot the
/// station: two long polls (55 s each) and some slack.
const SESSION_FRESH_MS: u64 = 180_000;

/// Whether the agent of `mac` said within [`SESSION_FRESH_MS`] that nobody is logged
/// on. An agent from before session reports never says so: its station is not
/// rebooted by a campaign.
fn session_free(store: &crate::store::Store, mac: MacAddr) -> bool {
    let now = store.clock().now_ms();
    store.station(mac).ok().flatten().is_some_and(|s| {
        !s.logged_in
            && s.logged_in_at
                .is_some_and(|t| now.saturating_sub(t) < SESSION_FRESH_MS)
    })
}

fn wake(state: &Services, mac: MacAddr) -> Result<(), ServiceError> {
    let station = state.policy.store().station(mac)?;
    let room_name = station.as_ref().and_then(|s| s.room.clone());
    let room = crate::power::room(&state.rooms, room_name.as_deref()).ok_or_else(|| {
        ServiceError::Conflict(format!(
            "{mac} has no room with a wol_broadcast address ([[rooms]] in the configuration, room {room_name:?})"
        ))
    })?;
    crate::power::wake(mac, room)?;
    let _ = state.policy.store().record(
        mac,
        "wake",
        format!("Wake-on-LAN to {}:{}", room.wol_broadcast, room.wol_port),
    );
    Ok(())
}

/// Plan a top-up campaign when the keep-alive says one is due; what happened, for
/// the log.
fn keepalive(state: &Services, now: u64) -> String {
    let plan = match crate::service::campaigns::top_up_plan(state, now) {
        Ok(Some(plan)) => plan,
        Ok(None) => return String::new(),
        Err(e) => return format!("cannot plan the keep-alive: {e}"),
    };
    let due = &plan.families;
    let opens = crate::clock::rfc3339(plan.opens.max(0) as u64 * 1000);
    if !plan.next_window {
        return format!(
            "a top-up of {due:?} is planned for the window at {opens}, the last before school on {}",
            plan.school_day
        );
    }
    let store = state.policy.store();
    let flagged: Vec<String> = match store.stations() {
        Ok(all) => all
            .iter()
            .filter(|s| s.kms_activation)
            .map(|s| s.mac.to_string())
            .collect(),
        Err(e) => return e.to_string(),
    };
    if flagged.is_empty() {
        return format!("a top-up of {due:?} is due, but no station has KMS activation on");
    }
    let body = crate::service::campaigns::CreateBody {
        room: None,
        stations: Some(flagged),
        families: due.clone(),
        margin: Some(crate::engine::keepalive::MARGIN),
        start: "window".into(),
        image: None,
    };
    match crate::service::campaigns::start(state, body, Some(plan.horizon)) {
        Ok(id) => format!(
            "top-up campaign {id} for {due:?} planned for the window at {opens}, before school on {}",
            plan.school_day
        ),
        Err(e) => format!("a top-up of {due:?} is due but cannot start: {e}"),
    }
}
