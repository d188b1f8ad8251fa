//! The HTTP side: iPXE scripts (`/boot`), the iPXE binaries for UEFI HTTP boot
//! (`/ipxe`), and the admin API under `/api/v1`. Errors become HTTP responses in one
//! place, [`ApiError`].

mod agent;
mod audit;
mod boot;
mod campaigns;
mod captures;
mod chunks;
mod dashboard;
mod events;
mod extract;
mod kms;
mod openapi;
mod resets;
mod stations;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use crate::service::Error as ApiError;
pub use crate::service::Services as AppState;

/// Whether `path` is an admin endpoint: all of `/api/v1` but health, the agent's
/// endpoints and the restore client's (they carry tokens of their own).
fn needs_admin(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return false;
    };
    !(rest == "health"
        || rest == "openapi.json"
        || rest.starts_with("agent/")
        || (rest.starts_with("stations/")
            && (rest.ends_with("/station.json")
                || rest.ends_with("/restore-progress")
                || rest.ends_with("/peers")
                || rest.contains("/capture/"))))
}

async fn admin_auth(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A connection of the admin reserve (the server is at its connection cap) serves
    // the admin API and health only, with the admin token.
    if request.extensions().get::<crate::http::Reserve>().is_some() {
        let path = request.uri().path();
        let admin = bearer(request.headers()).is_some_and(|t| state.admin.matches(t));
        if !(path == "/api/v1/health" || (needs_admin(path) && admin)) {
            let mut answer = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "error": "the server is at its connection limit; try again" })),
            )
                .into_response();
            answer.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("5"),
            );
            return answer;
        }
    }
    if needs_admin(request.uri().path()) {
        let offered = bearer(request.headers());
        if !offered.is_some_and(|t| state.admin.matches(t)) {
            let why = match offered {
                None => "the admin token is needed: Authorization: Bearer <token> (api.token, or the file api.token_file / data_dir/admin-token)",
                Some(_) => "wrong admin token",
            };
            let mut answer = ApiError::Unauthorized(why.into()).into_response();
            answer.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return answer;
        }
    }
    next.run(request).await
}

/// `/api/v1`: every route with its OpenAPI operation, from one list, so that the
/// router and the document cannot differ.
fn api_routes() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(openapi::document))
        .routes(routes!(stations::list))
        .routes(routes!(stations::show, stations::update))
        .routes(routes!(resets::request, resets::cancel))
        .routes(routes!(resets::station_json))
        .routes(routes!(resets::progress))
        .routes(routes!(resets::peers))
        .routes(routes!(captures::request, captures::cancel))
        .routes(routes!(captures::progress))
        .routes(routes!(captures::missing))
        .routes(routes!(captures::chunks))
        .routes(routes!(captures::index))
        .routes(routes!(agent::queue))
        .routes(routes!(agent::report))
        .routes(routes!(agent::commands))
        .routes(routes!(agent::command_result))
        .routes(routes!(kms::show))
        .routes(routes!(campaigns::list, campaigns::create))
        .routes(routes!(campaigns::show, campaigns::cancel))
        .routes(routes!(audit::list))
        .routes(routes!(events::stream))
}

/// The OpenAPI document of `/api/v1`, made once.
pub fn openapi_json() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let (_, doc) = api_routes().split_for_parts();
        doc.to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

pub use events::publish as publish_events;

/// The router of the whole HTTP server: `/api/v1` (documented), and the boot side:
/// iPXE scripts and binaries, chunks and staged images, the restore environment.
pub fn router(state: AppState) -> Router {
    let (api, _) = api_routes().split_for_parts();
    Router::new()
        .route("/", get(dashboard::index))
        .route("/metrics", get(metrics))
        .route("/dashboard/{file}", get(dashboard::asset))
        .route("/boot/{file}", get(boot::script))
        .route("/ipxe/{*file}", get(boot::binary))
        .route("/chunks", get(chunks::batch))
        .route("/chunks/{id}", get(chunks::chunk))
        .route("/images/{id}/index", get(resets::staged_index))
        .route("/indexes/{id}", get(chunks::summary))
        .route("/indexes/{id}/groups", get(chunks::groups))
        .route("/restore/{*file}", get(resets::restore_file))
        .merge(api)
        // After routing (the route is known) and after admin_auth (outside it).
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::layer,
        ))
        .route_layer(axum::middleware::from_fn(route_of))
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin_auth,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_request,
        ))
        .with_state(state)
}

/// The route template a request matched, handed out on its response.
#[derive(Clone)]
struct Route(String);

async fn route_of(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| Route(p.as_str().to_owned()));
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Count every request by route template (`unmatched`: refused before routing, or
/// no such endpoint), method and status, with its time to the response head.
async fn count_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<Route>()
        .map_or("unmatched", |r| r.0.as_str());
    state.metrics.http_request(
        route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`: Prometheus metrics, OpenMetrics text (no token: keep the port to
/// the school's network, like any exporter's).
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    use crate::service::metrics::{render, Format};
    let format = Format::of_accept(
        headers
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    match blocking(&state, move |s| render(s, format)).await {
        Ok(text) => (
            [(axum::http::header::CONTENT_TYPE, format.content_type())],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// A content-addressed answer (a chunk, a staged image): `id` is its hash, so it never
/// changes, carries the id as ETag and may be cached forever. `load` runs on a
/// blocking thread, and not at all when the client already has it (304).
pub async fn immutable(
    headers: &axum::http::HeaderMap,
    id: images::ChunkId,
    content_type: &'static str,
    load: impl FnOnce() -> Result<Vec<u8>, ApiError> + Send + 'static,
) -> Result<Response, ApiError> {
    use axum::http::header;
    let etag = format!("\"{id}\"");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let bytes = tokio::task::spawn_blocking(load)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::ETAG, etag),
            (
                header::CACHE_CONTROL,
                "public, max-age=31536000, immutable".to_owned(),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// The daemon is up.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok`.
    status: &'static str,
    version: &'static str,
    uptime_s: u64,
}

/// Whether the daemon is up (no token needed).
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "admin",
    responses((status = 200, body = Health), openapi::Errors)
)]
async fn health(axum::extract::State(state): axum::extract::State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs(),
    })
}

/// Run a domain operation on a blocking thread: every service call reads or writes
/// sled (and its writes flush to disk), which must not stall the tokio workers that
/// serve long polls, chunks and boot scripts.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    op: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || op(&state))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

/// The bearer token of the request, if it has one.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Domain errors become HTTP answers here, and only here.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) | ApiError::Refused(_) => StatusCode::CONFLICT,
            ApiError::Store(_) | ApiError::Wake(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_auth_covers_api_v1_but_health_and_the_stations_own_endpoints() {
        for path in [
            "/api/v1/stations",
            "/api/v1/stations/52:54:00:12:34:56",
            "/api/v1/stations/52:54:00:12:34:56/reset",
            "/api/v1/stations/52:54:00:12:34:56/command",
            "/api/v1/campaigns",
            "/api/v1/audit",
        ] {
            assert!(super::needs_admin(path), "{path}");
        }
        for path in [
            "/api/v1/health",
            "/api/v1/agent/report",
            "/api/v1/agent/commands",
            "/api/v1/agent/command-result",
            "/api/v1/stations/52:54:00:12:34:56/station.json",
            "/api/v1/stations/52:54:00:12:34:56/restore-progress",
            "/boot/52:54:00:12:34:56.ipxe",
            "/chunks/abc",
            "/images/x/index",
        ] {
            assert!(!super::needs_admin(path), "{path}");
        }
    }
}
