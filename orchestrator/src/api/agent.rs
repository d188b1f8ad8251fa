//! The agent API, called by `netreset-agent.ps1` on restored stations with the agent
//! token of station.json (the station's current reset):
//!
//! - `POST /api/v1/agent/report`: one family's activation result (event 12289 and
//!   the CMID of its 12288), recorded once in the KMS ledger;
//! - `GET /api/v1/agent/commands?station=MAC`: a long poll for `reboot` / `shutdown`;
//!   204 after about a minute with nothing to do.
//!
//! Admins queue commands with `POST /api/v1/stations/{mac}/command`.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use pxe::MacAddr;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::engine::ledger::Report;
use crate::engine::Family;

/// How long a command poll waits before it answers 204 (the agent times out at 70 s).
const POLL: Duration = Duration::from_secs(55);

fn parse_mac(text: &str) -> Result<MacAddr, ApiError> {
    text.parse()
        .map_err(|e: pxe::Error| ApiError::BadRequest(e.to_string()))
}

/// Check the agent token of `mac`: the one its current reset injected, or, until that
/// reset is done, the one of the image the station still runs. Returns the reset
/// generation the token belongs to.
fn authorized(state: &AppState, mac: MacAddr, headers: &HeaderMap) -> Result<u64, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("the agent token is needed (Authorization: Bearer ...)".into())
        })?;
    let store = state.policy.store();
    let reset = store.reset(mac)?;
    let running = store.station(mac)?.and_then(|st| st.agent_generation);
    if reset.is_none() && running.is_none() {
        return Err(ApiError::Unauthorized(format!(
            "{mac} was never reset by netreset: it has no agent token"
        )));
    }
    let secret = &state.policy.restore().secret;
    let mut candidates: Vec<u64> = reset.iter().flat_map(|r| r.agent_generations()).collect();
    candidates.extend(running);
    let found = candidates
        .into_iter()
        .find(|g| secret.check_agent_token(token, mac, *g));
    if let Some(generation) = found {
        Ok(generation)
    } else {
        Err(ApiError::Unauthorized(format!(
            "not the agent token of {mac}'s current reset"
        )))
    }
}

/// The result code as the agent sends it: "0xC004F038", "none" (no reply yet), or a
/// number.
#[derive(Deserialize)]
#[serde(untagged)]
enum ResultCode {
    Number(u32),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportBody {
    station: String,
    family: Family,
    #[serde(default)]
    cmid: String,
    result: ResultCode,
    activated: bool,
    count: u32,
    #[serde(default)]
    logged_in_user: bool,
}

pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    payload: Result<Json<ReportBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) =
        payload.map_err(|e| ApiError::BadRequest(format!("request body: {}", e.body_text())))?;
    let mac = parse_mac(&body.station)?;
    let generation = authorized(&state, mac, &headers)?;
    let store = state.policy.store();
    store.agent_seen(mac, body.logged_in_user)?;
    let result = match body.result {
        ResultCode::Number(n) => Some(n),
        ResultCode::Text(t) if t == "none" => None,
        ResultCode::Text(t) => Some(
            u32::from_str_radix(t.trim_start_matches("0x").trim_start_matches("0X"), 16).map_err(
                |_| {
                    ApiError::BadRequest(format!(
                        "result {t:?}: expected a code like \"0xC004F038\" or \"none\""
                    ))
                },
            )?,
        ),
    };
    let Some(result) = result else {
        if body.logged_in_user {
            state
                .campaigns
                .station(mac, crate::engine::campaign::Event::InUse(mac));
        }
        // No reply from the KMS host (12288 without 12289): nothing to count, nothing
        // for the ledger; the campaign learns that this cycle's activation failed.
        store.record(
            mac,
            "agent-report",
            format!("{}: no reply from the KMS host", body.family),
        )?;
        state.campaigns.station(
            mac,
            crate::engine::campaign::Event::Report {
                mac,
                family: body.family,
                result: None,
                count: 0,
                duplicate_cmid: false,
            },
        );
        return Ok((StatusCode::ACCEPTED, Json(json!({ "recorded": false }))).into_response());
    };
    if body.cmid.len() > 64
        || !body
            .cmid
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-')
    {
        return Err(ApiError::BadRequest(format!(
            "cmid {:?}: expected a GUID",
            body.cmid
        )));
    }
    let report = Report {
        at: state.policy.store().clock().now_ms() / 1000,
        station: mac,
        family: body.family,
        cmid: body.cmid.to_ascii_lowercase(),
        result,
        activated: body.activated,
        count: body.count,
        cycle: generation,
    };
    let (new, duplicate) = store.add_report(&report)?;
    if new {
        store.record(
            mac,
            "agent-report",
            format!(
                "{}: result 0x{result:08X}, activated {}, count {}",
                report.family, report.activated, report.count
            ),
        )?;
    }
    if let Some(d) = &duplicate {
        store.record(
            mac,
            "duplicate-cmid",
            format!(
                "{} CMID {} again after a reset (cycles {} and {}): the image is not generalized (sysprep /generalize)",
                d.family, d.cmid, d.first_cycle, d.again_cycle
            ),
        )?;
        tracing::warn!(%mac, family = %d.family, cmid = %d.cmid, "duplicate CMID: image not generalized");
    }
    // Forwarded even when it is a retry: the campaign takes a report once, and a
    // retry after a crash of the daemon is how a lost one reaches it.
    {
        state.campaigns.station(
            mac,
            crate::engine::campaign::Event::Report {
                mac,
                family: report.family,
                result: Some(report.result),
                count: report.count,
                duplicate_cmid: duplicate.is_some(),
            },
        );
    }
    // After the report: the cycle it ends is counted, then the station drops out.
    if body.logged_in_user {
        state
            .campaigns
            .station(mac, crate::engine::campaign::Event::InUse(mac));
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({ "recorded": new, "duplicate_cmid": duplicate.is_some() })),
    )
        .into_response())
}

#[derive(Deserialize)]
pub struct Poll {
    station: String,
    /// Seconds to wait for a command, at most (and by default) 55.
    wait: Option<u64>,
}

pub async fn commands(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(poll): Query<Poll>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&poll.station)?;
    authorized(&state, mac, &headers)?;
    // A polling agent is a running station: campaigns reboot it rather than wake it.
    state.policy.store().agent_polled(mac)?;
    let wait = poll.wait.map_or(POLL, |s| Duration::from_secs(s).min(POLL));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        // Listen before looking, so a command queued in between is not missed.
        let queued = state.commands_queued.notified();
        tokio::pin!(queued);
        queued.as_mut().enable();
        if let Some(cmd) = state.policy.store().take_command(mac)? {
            state.policy.store().record(
                mac,
                "command-sent",
                format!("{} ({})", cmd.command, cmd.id),
            )?;
            return Ok(Json(json!({ "command": cmd.command, "id": cmd.id })).into_response());
        }
        tokio::select! {
            _ = &mut queued => {}
            _ = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NO_CONTENT.into_response()),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandBody {
    command: String,
    #[serde(default)]
    force: bool,
}

pub async fn queue(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    payload: Result<Json<CommandBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let Json(body) =
        payload.map_err(|e| ApiError::BadRequest(format!("request body: {}", e.body_text())))?;
    if !matches!(body.command.as_str(), "reboot" | "shutdown") {
        return Err(ApiError::BadRequest(format!(
            "command {:?}: expected \"reboot\" or \"shutdown\"",
            body.command
        )));
    }
    let store = state.policy.store();
    let station = store
        .station(mac)?
        .ok_or_else(|| ApiError::NotFound(format!("no station {mac}")))?;
    if station.logged_in && !body.force {
        return Err(ApiError::Conflict(format!(
            "{mac} is in use (its agent reports a logged-in user): not sent; add \"force\": true to {} it anyway",
            body.command
        )));
    }
    let cmd = store.queue_command(mac, &body.command)?;
    store.record(
        mac,
        "command-queued",
        format!("{} ({})", cmd.command, cmd.id),
    )?;
    state.commands_queued.notify_waiters();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "station": mac, "id": cmd.id, "command": cmd.command })),
    )
        .into_response())
}
