//! Station resets:
//!
//! - `POST /api/v1/stations/{mac}/reset` `{"image": NAME, "profile": "kms"|"plain"}`
//!   stages the image and marks the station; its next PXE boot chains the restore
//!   environment. `DELETE` on the same path cancels.
//! - `GET /images/{staged_id}/index`: the staged image, for the restore client.
//! - `GET /api/v1/stations/{mac}/station.json` and
//!   `POST /api/v1/stations/{mac}/restore-progress`: the restore client's calls, with
//!   the per-restore token from its kernel command line.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use images::{ChunkId, Profile};
use pxe::MacAddr;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body, parse_mac, ApiError, AppState};
use crate::store::{Reset, ResetState};

/// What a restore report tells the station's campaign. One failure is one failure:
/// the restore environment reports it again, with the end of its log, after the
/// restore client did, and that must not count twice against the restore attempts.
fn campaign_event(
    mac: MacAddr,
    previous: ResetState,
    next: ResetState,
    reset: &Reset,
) -> Option<crate::engine::campaign::Event> {
    use crate::engine::campaign::Event;
    Some(match (previous, next) {
        (ResetState::Failed, ResetState::Failed) => return None,
        (_, ResetState::Done) => Event::RestoreDone(mac),
        (_, ResetState::Failed) => {
            Event::RestoreFailed(mac, reset.error.clone().unwrap_or_default())
        }
        _ => Event::RestoreProgress(mac),
    })
}

/// The reset as the API shows it.
pub fn reset_json(r: &Reset) -> Value {
    let percent = if r.total_bytes > 0 {
        (r.done_bytes as f64 * 1000.0 / r.total_bytes as f64).round() / 10.0
    } else {
        0.0
    };
    json!({
        "image": r.image,
        "profile": r.profile,
        "staged": r.staged,
        "disk": r.disk,
        "state": r.state,
        "percent": percent,
        "done_bytes": r.done_bytes,
        "total_bytes": r.total_bytes,
        "stats": r.stats,
        "error": r.error,
        "requested_at": crate::clock::rfc3339(r.requested_at),
        "updated_at": crate::clock::rfc3339(r.updated_at),
    })
}

/// `{"image"?, "profile"?}`: by default the station's own image, and the kms
/// profile when the station has KMS activation on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    image: Option<String>,
    profile: Option<String>,
}

pub async fn request(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    payload: Result<Json<ResetRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let mac = parse_mac(&mac)?;
    let req = body(payload)?;
    let profile = match &req.profile {
        Some(p) => Some(p.parse::<Profile>().map_err(ApiError::Invalid)?),
        None => None,
    };
    let reset = crate::service::resets::mark(&state, mac, req.image, profile, None).await?;
    let mut answer = reset_json(&reset);
    answer["station"] = json!(mac);
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

#[derive(Deserialize)]
pub struct CancelQuery {
    #[serde(default)]
    force: bool,
}

pub async fn cancel(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    axum::extract::Query(query): axum::extract::Query<CancelQuery>,
) -> Result<Json<Value>, ApiError> {
    let mac = parse_mac(&mac)?;
    let store = state.policy.store();
    let staged = store.change_reset(mac, |current| match current {
        Some(r) if r.state == ResetState::Restoring && !query.force => {
            Err(ApiError::Conflict(format!(
                "{mac} is restoring ({:.0} %): its disk is half written and would not boot. \
             Let it finish, or cancel with ?force=true and reset it again later",
                r.done_bytes as f64 * 100.0 / r.total_bytes.max(1) as f64
            )))
        }
        Some(r) if r.state.active() => Ok((None, r.staged)),
        _ => Err(ApiError::NotFound(format!("no reset under way for {mac}"))),
    })?;
    store.record(mac, "reset-cancelled", staged)?;
    Ok(Json(json!({ "station": mac, "cancelled": true })))
}

pub async fn staged_index(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id: ChunkId = id.parse().map_err(|_| {
        ApiError::Invalid(format!("{id:?} is not a staged image id (64 hex digits)"))
    })?;
    let images = state.images.clone();
    super::immutable(&headers, id, "application/octet-stream", move || {
        images.staged_bytes(&id).map_err(|e| match e {
            images::Error::NoImage(_) => ApiError::NotFound(format!("no staged image {id}")),
            other => ApiError::Internal(other.to_string()),
        })
    })
    .await
}

/// The reset of `mac`, when `headers` carry a valid restore token for it. With
/// `expired_ok`, a genuine token past its expiry is accepted while the reset it was
/// issued for is still under way: a restore of a large disk over a slow link may
/// outlive the token it started with, and must still be able to report.
fn authorized(
    state: &AppState,
    mac: MacAddr,
    headers: &HeaderMap,
    expired_ok: bool,
) -> Result<Reset, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::Unauthorized("a restore token is needed (Authorization: Bearer ...)".into())
        })?;
    let reset = state
        .policy
        .store()
        .reset(mac)?
        .ok_or_else(|| ApiError::Unauthorized(format!("no reset was asked for {mac}")))?;
    let restore = state.policy.restore();
    match restore.secret.restore_token_expiry(token, mac, &reset.token_scope()) {
        None => Err(ApiError::Unauthorized(
            "the restore token is not one issued for this station and its current reset".into(),
        )),
        Some(expires) if state.policy.store().clock().now_ms() / 1000 >= expires && !(expired_ok && reset.state.active()) => {
            Err(ApiError::Unauthorized(format!(
                "the restore token expired (tokens last [restore] token_ttl = {}); PXE-boot the station again for a new one",
                humantime::format_duration(restore.token_ttl)
            )))
        }
        Some(_) => Ok(reset),
    }
}

pub async fn station_json(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let mac = parse_mac(&mac)?;
    let reset = authorized(&state, mac, &headers, false)?;
    let restore = state.policy.restore();
    let mut doc = json!({
        "server": restore.server_url,
        "station": mac,
        "token": restore.secret.agent_token(mac, reset.generation),
        "image": reset.staged,
        "base": reset.image,
        "profile": reset.profile,
        "families": reset.families,
    });
    // The agent points the licences it activates at the school's KMS host.
    if let (false, Some(kms)) = (reset.families.is_empty(), &state.staging.kms) {
        doc["kms_host"] = json!(kms.host);
        doc["kms_port"] = json!(kms.port);
    }
    Ok(Json(doc))
}

/// What the restore client reports. Unknown fields are kept as figures.
#[derive(Deserialize)]
pub struct ProgressReport {
    state: String,
    image: String,
    #[serde(default)]
    done_bytes: Option<u64>,
    #[serde(default)]
    total_bytes: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(flatten)]
    figures: serde_json::Map<String, Value>,
}

pub async fn progress(
    State(state): State<AppState>,
    Path(mac): Path<String>,
    headers: HeaderMap,
    payload: Result<Json<ProgressReport>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let mac = parse_mac(&mac)?;
    let token_of = authorized(&state, mac, &headers, true)?;
    let report = body(payload)?;
    let next = match report.state.as_str() {
        "running" => ResetState::Restoring,
        "done" => ResetState::Done,
        "failed" => ResetState::Failed,
        other => {
            return Err(ApiError::Invalid(format!(
                "state {other:?}: expected running, done or failed"
            )))
        }
    };
    let now = state.policy.store().clock().now_ms();
    // The end of a log says the most: the last 2000 characters are kept.
    let error = report.error.map(|e| {
        let chars: Vec<char> = e.chars().collect();
        chars[chars.len().saturating_sub(2000)..]
            .iter()
            .collect::<String>()
    });
    let figures: serde_json::Map<String, Value> = report
        .figures
        .into_iter()
        .filter(|(_, v)| v.is_number())
        .take(32)
        .collect();
    // Read, checked and written in one step: a cancel or another report in between
    // is seen, never overwritten.
    let changed = state.policy.store().change_reset(mac, |current| {
        let Some(mut reset) = current else {
            return Err(ApiError::Unauthorized(format!(
                "no reset was asked for {mac} (cancelled?)"
            )));
        };
        if reset.generation != token_of.generation {
            return Err(ApiError::Unauthorized(
                "the restore token is not one issued for this station and its current reset".into(),
            ));
        }
        if report.image != reset.staged {
            return Err(ApiError::Conflict(format!(
                "the report is for staged image {}, the station is being reset to {}",
                report.image, reset.staged
            )));
        }
        if reset.state == ResetState::Done && next == ResetState::Done {
            // A rerun after a completed restore (say, killed after its report) is fine.
            return Ok((Some(reset.clone()), (reset, None)));
        }
        if reset.state == ResetState::Done {
            return Err(ApiError::Conflict(format!(
                "the reset of {mac} to {} is complete already",
                reset.staged
            )));
        }
        let previous = reset.state;
        reset.state = next;
        reset.updated_at = now;
        reset.done_bytes = report.done_bytes.unwrap_or(reset.done_bytes);
        reset.total_bytes = report.total_bytes.unwrap_or(reset.total_bytes);
        reset.error = error.clone();
        if !figures.is_empty() {
            reset.stats = figures.clone();
        }
        Ok((Some(reset.clone()), (reset, Some(previous))))
    })?;
    let (reset, Some(previous)) = changed else {
        return Ok(Json(reset_json(&changed.0)));
    };
    let store = state.policy.store();
    if next == ResetState::Done {
        store.set_agent_generation(mac, reset.generation, &reset.families)?;
    }
    let event = match (previous, next) {
        (ResetState::Restoring, ResetState::Restoring) => None,
        (_, ResetState::Restoring) => Some(("restore-started", reset.staged.clone())),
        (_, ResetState::Done) => Some(("restore-done", summary(&reset))),
        (_, ResetState::Failed) => {
            Some(("restore-failed", reset.error.clone().unwrap_or_default()))
        }
        _ => None,
    };
    if let Some(event) = campaign_event(mac, previous, next, &reset) {
        state.campaigns.station(mac, event);
    }
    if let Some((kind, detail)) = event {
        store.record(mac, kind, detail)?;
        tracing::info!(%mac, kind, "restore report");
    }
    Ok(Json(reset_json(&reset)))
}

fn summary(r: &Reset) -> String {
    let n = |k: &str| r.stats.get(k).and_then(Value::as_u64).unwrap_or(0);
    format!(
        "{}: {} chunks in place, {} fetched ({} bytes)",
        r.staged,
        n("chunks_in_place"),
        n("chunks_fetched"),
        n("bytes_fetched")
    )
}

/// `GET /restore/{file}`: the restore environment's kernel and initrd, streamed with
/// Content-Length (iPXE shows progress and fails cleanly on a short read).
pub async fn restore_file(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let path = pxe::tftp::resolve(&state.restore.dir, &file)
        .map_err(|why| ApiError::NotFound(format!("{file:?}: {why}")))?;
    let handle = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::NotFound(format!("{file:?}: {e}")))?;
    let len = handle
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .len();
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(handle, 1 << 20));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::campaign::Event;

    #[test]
    fn a_failure_reported_twice_reaches_the_campaign_once() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let reset = Reset {
            image: "lab".into(),
            profile: "kms".into(),
            staged: "0".repeat(64),
            state: ResetState::Failed,
            requested_at: 0,
            updated_at: 0,
            done_bytes: 0,
            total_bytes: 0,
            stats: Default::default(),
            error: Some("disk /dev/sdz not found".into()),
            families: Vec::new(),
            generation: 1,
            previous_generation: None,
            disk: Some("/dev/sdz".into()),
        };
        let first = campaign_event(mac, ResetState::Restoring, ResetState::Failed, &reset);
        assert_eq!(
            first,
            Some(Event::RestoreFailed(mac, "disk /dev/sdz not found".into()))
        );
        assert_eq!(
            campaign_event(mac, ResetState::Pending, ResetState::Failed, &reset),
            first,
            "a failure before the restore started counts too"
        );
        assert_eq!(
            campaign_event(mac, ResetState::Failed, ResetState::Failed, &reset),
            None,
            "the environment's second report of the same failure"
        );
        assert_eq!(
            campaign_event(mac, ResetState::Restoring, ResetState::Done, &reset),
            Some(Event::RestoreDone(mac))
        );
    }
}
