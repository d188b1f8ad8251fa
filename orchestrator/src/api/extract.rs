//! What handlers take from a request, each failing with a clear [`ApiError`]: the
//! station's MAC from the path, the bearer token, the peer's address, a JSON body.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::Json;
use serde::de::DeserializeOwned;

use super::ApiError;

/// The station of a `/api/v1/stations/{mac}/...` path; a 400 when it is not a MAC.
pub struct Mac(pub pxe::MacAddr);

impl<S: Send + Sync> FromRequestParts<S> for Mac {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::Invalid(e.body_text()))?;
        crate::service::parse_mac(&text).map(Mac)
    }
}

/// The `Authorization: Bearer` token of the request, if it carries one; the service
/// that needs it says what is missing.
pub struct Bearer(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Bearer(super::bearer(&parts.headers).map(str::to_owned)))
    }
}

/// An agent whose token was checked: the `?station=MAC` of the request and its
/// bearer token, looked up before any body is read (a 400 without a station, a 401
/// for a token that is not the station's).
pub struct AgentToken(pub crate::service::agent::Agent);

impl FromRequestParts<super::AppState> for AgentToken {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &super::AppState,
    ) -> Result<Self, ApiError> {
        #[derive(serde::Deserialize)]
        struct Station {
            station: Option<String>,
        }
        let Query(Station { station }) = Query::<Station>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::Invalid(e.body_text()))?;
        let station = station.ok_or_else(|| {
            ApiError::Invalid("?station=MAC is needed: the station whose agent this is".into())
        })?;
        let token = super::bearer(&parts.headers).map(str::to_owned);
        super::blocking(state, move |s| {
            crate::service::agent::authorize(s, &station, token.as_deref())
        })
        .await
        .map(AgentToken)
    }
}

/// The IPv4 address the request comes from (also when it reached a dual-stack
/// socket), if it has one.
pub struct Peer(pub Option<std::net::Ipv4Addr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .and_then(|info| crate::boot::policy::ipv4(info.0.ip()));
        Ok(Peer(peer))
    }
}

/// A JSON body, or a 400 that says what is wrong with it (413 past the body limit).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(|e| {
                let why = format!("request body: {}", e.body_text());
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                    // Read no further than the limit (2 MiB), and say so.
                    let body = axum::Json(serde_json::json!({ "error": why }));
                    (axum::http::StatusCode::PAYLOAD_TOO_LARGE, body).into_response()
                } else {
                    ApiError::Invalid(why).into_response()
                }
            })
    }
}

/// The query string as `T`, or a 400 in the API's JSON error shape that says what
/// is wrong with it.
pub struct QueryOf<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| QueryOf(v))
            .map_err(|e| ApiError::Invalid(e.body_text()))
    }
}
