//! The audit log's HTTP side: a route layer that records every admin call that
//! changes state (after it ran, with the status it got), and `GET /api/v1/audit`.

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;

use super::openapi::Errors;
use super::{blocking, ApiError, AppState};
use crate::service::audit;

/// The target an action created, for the audit log (a new campaign's id); other
/// actions' targets come from their path.
#[derive(Clone)]
pub struct Target(pub String);

/// The audit name of an admin call that changes state, from its method and route.
fn action(method: &axum::http::Method, route: &str) -> Option<&'static str> {
    use axum::http::Method;
    Some(match (method, route) {
        (&Method::POST, "/api/v1/stations/{mac}/reset") => "reset",
        (&Method::DELETE, "/api/v1/stations/{mac}/reset") => "cancel-reset",
        (&Method::POST, "/api/v1/stations/{mac}/capture") => "capture",
        (&Method::DELETE, "/api/v1/stations/{mac}/capture") => "cancel-capture",
        (&Method::PUT, "/api/v1/stations/{mac}") => "station-settings",
        (&Method::POST, "/api/v1/stations/{mac}/command") => "command",
        (&Method::POST, "/api/v1/campaigns") => "campaign-start",
        (&Method::DELETE, "/api/v1/campaigns/{id}") => "campaign-cancel",
        _ => return None,
    })
}

/// Run the call; when it is an admin action, log it with its target, the client's
/// address and its status (refused ones too: they say who tried what).
pub async fn layer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let Some(action) = route.as_deref().and_then(|r| action(request.method(), r)) else {
        return next.run(request).await;
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |c| c.0.ip().to_string());
    // The station or campaign of the path: its `{mac}` or `{id}`.
    let (mut parts, body) = request.into_parts();
    let path_target = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .and_then(|p| p.iter().last().map(|(_, v)| v.to_owned()))
        .unwrap_or_else(|| "-".to_owned());
    let request = Request::from_parts(parts, body);
    let response = next.run(request).await;
    let target = match response.extensions().get::<Target>() {
        Some(Target(t)) => t.clone(),
        None => path_target,
    };
    let status = response.status().as_u16();
    let logged = blocking(&state, move |s| {
        audit::record(s, action, &target, &client, status)
    })
    .await;
    if let Err(e) = logged {
        // The action happened; losing its log entry must not undo or hide it.
        tracing::error!(error = %e, action, "audit log not written");
    }
    response
}

/// The audit log's newest entries, oldest first: every admin call that changed (or
/// tried to change) state.
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "admin",
    params(audit::Query),
    security(("admin" = [])),
    responses((status = 200, body = crate::service::views::AuditLog), Errors)
)]
pub async fn list(
    State(state): State<AppState>,
    super::extract::QueryOf(query): super::extract::QueryOf<audit::Query>,
) -> Result<Json<crate::service::views::AuditLog>, ApiError> {
    Ok(Json(
        blocking(&state, move |s| audit::list(s, &query)).await?,
    ))
}
