//! `GET /api/v1/events`: live events as server-sent events (see `service::events`),
//! and the task that turns the store's changes into them.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::openapi::Errors;
use super::AppState;
use crate::service::events::{Frame, Lagged, Publisher};

/// Changes taken into one batch of events at most.
const BATCH: usize = 512;

fn sse(frame: &Frame) -> Event {
    Event::default()
        .id(frame.id.to_string())
        .event(frame.event)
        .data(&frame.data)
}

fn lagged(missed: u64) -> Event {
    Event::default()
        .event("lagged")
        .data(serde_json::to_string(&Lagged { missed }).expect("serializes"))
}

/// Live events: `station`, `boot`, `restore`, `capture`, `campaign`, `kms`, and `lagged` when
/// this subscriber missed some (load the views again). With `Last-Event-ID`, the
/// events after it come first (the last 4,096 are kept).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "admin",
    params(("Last-Event-ID" = Option<String>, Header, description = "The id of the last event seen, to get what came after it")),
    security(("admin" = [])),
    responses(
        (status = 200, description = "A stream of server-sent events: `event:` station (StationView), boot (BootEvent), restore (ResetView), campaign (CampaignView), kms (Overview), lagged (Lagged); `data:` the JSON", content_type = "text/event-stream", body = String),
        Errors
    )
)]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    let sub = state.events.subscribe(after);
    let first: Vec<Event> = sub
        .lost
        .then(|| lagged(0))
        .into_iter()
        .chain(sub.replay.iter().map(|f| sse(f)))
        .collect();
    let live = BroadcastStream::new(sub.live).map(|item| match item {
        Ok(frame) => sse(&frame),
        Err(BroadcastStreamRecvError::Lagged(n)) => lagged(n),
    });
    let events = futures_util::StreamExt::take_until(
        tokio_stream::iter(first).chain(live).map(Ok),
        state.events.closed(),
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Turn the store's changes into events until `stop`: each batch on a blocking
/// thread (it reads the store).
pub async fn publish(state: AppState, stop: CancellationToken) {
    let mut changes = state.policy.store().changes();
    let mut publisher = Publisher::default();
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => {
                state.events.close();
                return;
            }
            change = changes.recv() => change,
        };
        let mut batch = Vec::new();
        let mut missed = 0;
        match first {
            Ok(change) => batch.push(change),
            Err(RecvError::Lagged(n)) => missed += n,
            Err(RecvError::Closed) => return,
        }
        while batch.len() < BATCH {
            match changes.try_recv() {
                Ok(change) => batch.push(change),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => missed += n,
                Err(_) => break,
            }
        }
        if missed > 0 {
            // The store outran the publisher: what subscribers see may be stale.
            tracing::warn!(missed, "live events: store changes dropped");
            state.events.publish("lagged", &Lagged { missed });
        }
        let shared = state.clone();
        let done = tokio::task::spawn_blocking(move || {
            let result = publisher.publish(&shared, batch);
            (publisher, result)
        })
        .await;
        match done {
            Ok((p, result)) => {
                publisher = p;
                if let Err(e) = result {
                    tracing::error!(error = %e, "live events: a change could not be shown");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "live events: the publisher panicked");
                publisher = Publisher::default();
            }
        }
    }
}
