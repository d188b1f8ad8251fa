//! The agent API, called by `netreset-agent.ps1` on restored stations with the agent
//! token of station.json (the station's current reset); the work is in
//! `service::agent`:
//!
//! Each carries `?station=MAC`, so that the token is checked before a body is read.
//!
//! - `POST /api/v1/agent/report?station=MAC`: what the agent saw, raw: the Software Protection
//!   events 12288/12289 as XML, the licences, whether a user is logged on, and the
//!   families it gave up activating;
//! - `GET /api/v1/agent/commands?station=MAC&interactive_user=0|1`: a long poll for
//!   `reboot` / `shutdown`, which also says whether a user is logged on; 204 after
//!   about a minute with nothing to do;
//! - `POST /api/v1/agent/command-result?station=MAC`: what the agent did with a command.
//!
//! Admins queue commands with `POST /api/v1/stations/{mac}/command`.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::extract::{AgentToken, Body, Mac};
use super::{blocking, ApiError, AppState};
use crate::service::agent::{self, CommandBody, CommandResult, Poll, ReportBody};
use crate::store::Command;

/// How long a command poll waits before it answers 204 (the agent times out at 70 s).
const POLL: Duration = Duration::from_secs(55);

// The token is checked (`AgentToken`) before the body is read (`Body`).
pub async fn report(
    State(state): State<AppState>,
    AgentToken(agent): AgentToken,
    Body(body): Body<ReportBody>,
) -> Result<Response, ApiError> {
    let answer = blocking(&state, move |s| agent::report(s, &agent, body)).await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub async fn commands(
    State(state): State<AppState>,
    AgentToken(agent): AgentToken,
    Query(poll): Query<Poll>,
) -> Result<Response, ApiError> {
    let wait = poll.wait.map_or(POLL, |s| Duration::from_secs(s).min(POLL));
    let mac = agent.mac;
    blocking(&state, move |s| agent::polled(s, &agent, &poll)).await?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Listen before looking, so a command queued in between is not missed.
        let queued = state.commands_queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        if let Some(cmd) = blocking(&state, move |s| agent::take_command(s, mac)).await? {
            return Ok(command_json(&cmd).into_response());
        }
        tokio::select! {
            _ = &mut queued => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

fn command_json(cmd: &Command) -> Json<serde_json::Value> {
    Json(json!({ "command": cmd.command, "id": cmd.id, "force": cmd.force }))
}

pub async fn command_result(
    State(state): State<AppState>,
    AgentToken(agent): AgentToken,
    Body(body): Body<CommandResult>,
) -> Result<Response, ApiError> {
    let mac = agent.mac;
    let body = blocking(&state, move |s| {
        agent::command_result(s, &agent, &body).map(|()| body)
    })
    .await?;
    Ok(Json(json!({ "station": mac, "id": body.id, "outcome": body.outcome })).into_response())
}

pub async fn queue(
    State(state): State<AppState>,
    Mac(mac): Mac,
    Body(body): Body<CommandBody>,
) -> Result<Response, ApiError> {
    let cmd = blocking(&state, move |s| agent::queue_command(s, mac, &body)).await?;
    let mut answer = command_json(&cmd);
    answer["station"] = json!(mac);
    Ok((StatusCode::ACCEPTED, answer).into_response())
}
