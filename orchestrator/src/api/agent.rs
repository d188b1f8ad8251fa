//! The agent API, called by `netreset-agent.ps1` on restored stations with the agent
//! token of station.json (the station's current reset); the work is in
//! `service::agent`:
//!
//! - `POST /api/v1/agent/report`: what the agent saw, raw: the Software Protection
//!   events 12288/12289 as XML, the licences, whether a user is logged on, and the
//!   families it gave up activating;
//! - `GET /api/v1/agent/commands?station=MAC&interactive_user=0|1`: a long poll for
//!   `reboot` / `shutdown`, which also says whether a user is logged on; 204 after
//!   about a minute with nothing to do;
//! - `POST /api/v1/agent/command-result`: what the agent did with a command.
//!
//! Admins queue commands with `POST /api/v1/stations/{mac}/command`.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::{bearer, blocking, parse_mac, ApiError, AppState};
use crate::service::agent::{self, CommandBody, CommandResult, ReportBody};

/// How long a command poll waits before it answers 204 (the agent times out at 70 s).
const POLL: Duration = Duration::from_secs(55);

pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<ReportBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(payload)?;
    let mac = parse_mac(&body.station)?;
    let token = bearer(&headers).map(str::to_owned);
    let answer = blocking(&state, move |state| {
        let agent = agent::authorize(state, mac, token.as_deref())?;
        agent::report(state, mac, &agent, body)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Deserialize)]
pub struct Poll {
    station: String,
    /// Seconds to wait for a command, at most (and by default) 55.
    wait: Option<u64>,
    /// 1 while an interactive user is logged on, 0 when none is.
    interactive_user: Option<u8>,
}

pub async fn commands(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(poll): Query<Poll>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&poll.station)?;
    let logged_in = match poll.interactive_user {
        None => None,
        Some(0) => Some(false),
        Some(1) => Some(true),
        Some(n) => {
            return Err(ApiError::Invalid(format!(
                "interactive_user={n}: expected 0 or 1"
            )))
        }
    };
    let token = bearer(&headers).map(str::to_owned);
    blocking(&state, move |state| {
        agent::authorize(state, mac, token.as_deref())?;
        agent::polled(state, mac, logged_in)
    })
    .await?;
    let wait = poll.wait.map_or(POLL, |s| Duration::from_secs(s).min(POLL));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Listen before looking, so a command queued in between is not missed.
        let queued = state.commands_queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        if let Some(cmd) = blocking(&state, move |state| agent::take_command(state, mac)).await? {
            return Ok(
                Json(json!({ "command": cmd.command, "id": cmd.id, "force": cmd.force }))
                    .into_response(),
            );
        }
        tokio::select! {
            _ = &mut queued => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

pub async fn command_result(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<CommandResult>, JsonRejection>,
) -> Result<Response, ApiError> {
    let body = super::body(payload)?;
    let mac = parse_mac(&body.station)?;
    let token = bearer(&headers).map(str::to_owned);
    let body = blocking(&state, move |state| {
        agent::authorize(state, mac, token.as_deref())?;
        agent::command_result(state, mac, &body)?;
        Ok(body)
    })
    .await?;
    Ok(Json(json!({ "station": mac, "id": body.id, "outcome": body.outcome })).into_response())
}

pub async fn queue(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    payload: Result<Json<CommandBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let body = super::body(payload)?;
    let cmd = blocking(&state, move |state| agent::queue_command(state, mac, &body)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "station": mac, "id": cmd.id, "command": cmd.command, "force": cmd.force })),
    )
        .into_response())
}
