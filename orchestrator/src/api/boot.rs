//! `GET /boot/{mac}.ipxe`: the iPXE script for a station (`service::boot`).
//! `GET /ipxe/{file}`: the iPXE binaries, for UEFI HTTP boot. Neither needs a token.
//! The one secret a script carries is the per-restore token of a station being reset:
//! good for that station, its staged image and `[restore] token_ttl` only. (It lets
//! whoever holds it fetch the station's station.json and with it the agent token of
//! that reset; the next reset makes a new one.)

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::header;
use axum::response::IntoResponse;

use super::{blocking, ApiError, AppState};

pub async fn script(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let text = blocking(&state, move |s| {
        crate::service::boot::script(s, &file, peer.ip())
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    ))
}

pub async fn binary(
    State(state): State<AppState>,
    Path(file): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let path = pxe::tftp::resolve(&state.tftp_root, &file)
        .map_err(|why| ApiError::NotFound(format!("{file:?}: {why}")))?;
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::NotFound(format!("{file:?}: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/efi")], bytes))
}
