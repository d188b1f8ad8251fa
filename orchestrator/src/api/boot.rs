//! `GET /boot/{mac}.ipxe`: the iPXE script for a station -> policy -> `pxe::ipxe::render`.
//! `GET /ipxe/{file}`: the iPXE binaries, for UEFI HTTP boot. Neither needs a token.
//! The one secret a script carries is the per-restore token of a station being reset:
//! good for that station, its staged image and `[restore] token_ttl` only. (It lets
//! whoever holds it fetch the station's station.json and with it the agent token of
//! that reset; the next reset makes a new one.)

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use pxe::ipxe::{render, LocalBoot};
use pxe::{BootPolicy, BootStep, Firmware, MacAddr};

use super::{ApiError, AppState};

pub async fn script(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(file): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let mac: MacAddr = file
        .strip_suffix(".ipxe")
        .ok_or_else(|| ApiError::NotFound(format!("{file:?}: scripts are named {{mac}}.ipxe")))?
        .parse()
        .map_err(|e: pxe::Error| ApiError::NotFound(e.to_string()))?;
    let policy = &state.policy;
    let machine = policy.machine(mac);
    let decision = policy.decide(&machine, BootStep::Script);
    // sanboot --drive 0x80 is a BIOS disk number; UEFI firmware boots its next boot
    // option after `exit`.
    let local = match machine.firmware {
        Firmware::Bios => policy.boot().local,
        _ => LocalBoot::Exit,
    };
    let text = render(mac, &decision, local).map_err(|e| ApiError::Internal(e.to_string()))?;
    policy.script_served(mac, peer.ip(), &decision);
    if matches!(decision, pxe::BootDecision::Chain(_)) {
        state
            .campaigns
            .station(mac, crate::engine::campaign::Event::PxeSeen(mac));
    }
    tracing::info!(%mac, %peer, "script served");
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
