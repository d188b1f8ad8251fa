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

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use super::extract::{AgentToken, Body, Mac, QueryOf};
use super::openapi::Errors;
use super::{blocking, ApiError, AppState};
use crate::service::agent::{self, CommandBody, CommandResult, Poll, ReportAnswer, ReportBody};
use crate::store::Command;

/// `?station=MAC`: the station whose agent calls (its token is checked before the
/// body is read).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // only its schema: `AgentToken` reads the query
pub struct StationQuery {
    /// The station's MAC address.
    station: String,
}

/// A command for a station's agent.
#[derive(Serialize, ToSchema)]
pub struct CommandView {
    /// `reboot` or `shutdown`.
    pub command: String,
    pub id: String,
    /// Run it even with a user logged on (after a warning).
    pub force: bool,
    /// The station, in the admin's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub station: Option<String>,
}

impl CommandView {
    fn new(cmd: &Command, station: Option<pxe::MacAddr>) -> CommandView {
        CommandView {
            command: cmd.command.clone(),
            id: cmd.id.clone(),
            force: cmd.force,
            station: station.map(|m| m.to_string()),
        }
    }
}

/// What the agent did with a command, as recorded.
#[derive(Serialize, ToSchema)]
pub struct CommandDone {
    pub station: String,
    pub id: String,
    pub outcome: String,
}

/// How long a command poll waits before it answers 204 (the agent times out at 70 s).
const POLL: Duration = Duration::from_secs(55);

/// What the agent saw: the Software Protection events, the licences, whether a user
/// is logged on, the families it gave up on.
// The token is checked (`AgentToken`) before the body is read (`Body`).
#[utoipa::path(
    post,
    path = "/api/v1/agent/report",
    tag = "agent",
    params(StationQuery),
    request_body = ReportBody,
    security(("agent" = [])),
    responses((status = 201, body = ReportAnswer), Errors)
)]
pub async fn report(
    State(state): State<AppState>,
    AgentToken(agent): AgentToken,
    Body(body): Body<ReportBody>,
) -> Result<Response, ApiError> {
    let answer = blocking(&state, move |s| agent::report(s, &agent, body)).await?;
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// A long poll for a command (`reboot`, `shutdown`); 204 after about a minute with
/// nothing to do.
#[utoipa::path(
    get,
    path = "/api/v1/agent/commands",
    tag = "agent",
    params(StationQuery, Poll),
    security(("agent" = [])),
    responses(
        (status = 200, body = CommandView),
        (status = 204, description = "Nothing to do: poll again"),
        Errors
    )
)]
pub async fn commands(
    State(state): State<AppState>,
    AgentToken(agent): AgentToken,
    QueryOf(poll): QueryOf<Poll>,
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
            return Ok(Json(CommandView::new(&cmd, None)).into_response());
        }
        tokio::select! {
            _ = &mut queued => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

/// What the agent did with a command: `run`, `warned` or `refused`.
#[utoipa::path(
    post,
    path = "/api/v1/agent/command-result",
    tag = "agent",
    params(StationQuery),
    request_body = CommandResult,
    security(("agent" = [])),
    responses((status = 200, body = CommandDone), Errors)
)]
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
    Ok(Json(CommandDone {
        station: mac.to_string(),
        id: body.id,
        outcome: body.outcome,
    })
    .into_response())
}

/// Queue `reboot` or `shutdown` for a station's agent; refused while a user is
/// logged on, unless forced.
#[utoipa::path(
    post,
    path = "/api/v1/stations/{mac}/command",
    tag = "stations",
    params(("mac" = String, Path, description = "The station's MAC address", example = "52:54:00:12:34:56")),
    request_body = CommandBody,
    security(("admin" = [])),
    responses((status = 202, body = CommandView), Errors)
)]
pub async fn queue(
    State(state): State<AppState>,
    Mac(mac): Mac,
    Body(body): Body<CommandBody>,
) -> Result<Response, ApiError> {
    let cmd = blocking(&state, move |s| agent::queue_command(s, mac, &body)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CommandView::new(&cmd, Some(mac))),
    )
        .into_response())
}
