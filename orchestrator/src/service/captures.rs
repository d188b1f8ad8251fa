//! Captures: a station's disk made into a new image through the restore environment.
//! The admin asks ([`request`]); the station's next PXE boot runs the restore
//! environment in capture mode, which reads its disk (never writes it), asks which
//! chunks the store lacks ([`missing`]), uploads those ([`upload`]: each checked
//! against its id before it is stored), reports progress ([`progress`]) and ends by
//! sending the index ([`finish`]), which becomes the image.

use std::net::Ipv4Addr;

use images::{ChunkId, Index};
use pxe::MacAddr;
use serde::Deserialize;
use serde_json::Value;

use super::resets::{
    bind_from, check_token, disk_of, log_tail, not_listed, numbers, restore_env_ready, token_of,
};
use super::{Error, Services};
use crate::store::{Capture, ResetState};

/// Most ids in one question of [`missing`].
pub const MAX_ASKED: usize = 4096;
/// The largest upload body: a batch of chunks as the restore client frames them.
pub const MAX_UPLOAD_BYTES: usize = 33 << 20;
/// The largest index a capture may send: 8 M chunks (512 GiB of data at 64 KiB
/// chunks, 8 TiB at 1 MiB).
pub const MAX_INDEX_BYTES: usize = 256 << 20;
/// The largest disk a capture makes an image of.
const MAX_DISK_BYTES: u64 = 16 << 40;

/// `POST /api/v1/stations/{mac}/capture` `{"name", "chunk_size"?}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// The new image's name (it must not exist yet).
    name: String,
    /// Bytes per chunk, a power of two from 64 KiB to 16 MiB (default 64 KiB, as
    /// `image import`).
    #[serde(default)]
    chunk_size: Option<u64>,
}

/// An admin's capture of `mac` into the image `req.name`: the station's next PXE
/// boot captures its disk. Refused while it is being reset, or captured already.
pub fn request(state: &Services, mac: MacAddr, req: CaptureRequest) -> Result<Capture, Error> {
    let store = state.policy.store().clone();
    restore_env_ready(state)?;
    let station = store.station(mac)?.ok_or_else(|| not_listed(mac))?;
    let disk = disk_of(state, mac, &station)?;
    images::check_name(&req.name).map_err(|e| Error::Invalid(e.to_string()))?;
    let chunk_size = images::check_chunk_size(req.chunk_size.unwrap_or(images::DEFAULT_CHUNK_SIZE))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    match state.images.get(&req.name) {
        Err(images::Error::NoImage(_)) => {}
        Ok(_) => {
            return Err(Error::Conflict(format!(
            "an image named {:?} exists already (netreset image rm {0}, or choose another name)",
            req.name
        )))
        }
        Err(e) => return Err(Error::Internal(e.to_string())),
    }
    if let Some(r) = store.reset(mac)?.filter(|r| r.state.active()) {
        return Err(Error::Conflict(format!(
            "{mac} has a reset to {} under way ({:?}): its disk would be captured half restored; \
             let it finish, or cancel it (DELETE /api/v1/stations/{mac}/reset)",
            r.image, r.state
        )));
    }
    let now = store.clock().now_ms();
    let capture = Capture {
        name: req.name,
        chunk_size,
        state: ResetState::Pending,
        requested_at: now,
        updated_at: now,
        done_bytes: 0,
        total_bytes: 0,
        stats: Default::default(),
        error: None,
        generation: store.next_id()?,
        disk,
        capturing_from: None,
        index: None,
    };
    let capture = store.change_capture(mac, |old| match old {
        Some(old) if old.under_way() => Err(Error::Conflict(format!(
            "{mac} is being captured into {:?} already (cancel it first: DELETE /api/v1/stations/{mac}/capture)",
            old.name
        ))),
        _ => Ok((Some(capture.clone()), capture.clone())),
    })?;
    store.record(
        mac,
        "capture-requested",
        format!("{} from {}", capture.name, capture.disk),
    )?;
    tracing::info!(%mac, image = %capture.name, disk = %capture.disk, "capture requested");
    Ok(capture)
}

/// Cancel the capture of `mac`, pending, running (it only reads the disk; the chunks
/// it uploaded stay until `netreset image gc`) or failed.
pub fn cancel(state: &Services, mac: MacAddr) -> Result<(), Error> {
    let store = state.policy.store();
    let name = store.change_capture(mac, |current| match current {
        Some(c) if c.state.active() => Ok((None, c.name)),
        _ => Err(Error::NotFound(format!("no capture under way for {mac}"))),
    })?;
    store.record(mac, "capture-cancelled", name)?;
    Ok(())
}

/// The capture that `token` (from the station's kernel command line) is for, when
/// it is under way and called from the address it runs from.
pub fn authorize(
    state: &Services,
    mac: MacAddr,
    token: Option<&str>,
    from: Option<Ipv4Addr>,
) -> Result<Capture, Error> {
    let token = token_of(token)?;
    let capture = state
        .policy
        .store()
        .capture(mac)?
        .filter(Capture::under_way)
        .ok_or_else(|| Error::Unauthorized(format!("no capture under way for {mac}")))?;
    check_token(state, mac, token, &capture.token_scope(), true)?;
    match (capture.capturing_from, from) {
        (Some(ip), Some(from)) if ip == from => Ok(capture),
        (Some(ip), _) => Err(Error::Unauthorized(format!(
            "this capture runs from {ip}: its calls are taken from there only"
        ))),
        (None, _) => Err(Error::Unauthorized(
            "a capture's first call is its progress report".into(),
        )),
    }
}

/// What the capture client reports. Unknown numeric fields are kept as figures.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CaptureReport {
    /// `running` or `failed` (a capture is done when its index is in).
    state: String,
    #[serde(default)]
    done_bytes: Option<u64>,
    #[serde(default)]
    total_bytes: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    figures: serde_json::Map<String, Value>,
}

/// Take a capture client's report: its first binds the capture to the address it
/// came from (and the token must not have expired then).
pub fn progress(
    state: &Services,
    mac: MacAddr,
    token: Option<&str>,
    from: Option<Ipv4Addr>,
    report: CaptureReport,
) -> Result<Capture, Error> {
    let token = token_of(token)?;
    let next = match report.state.as_str() {
        "running" => ResetState::Restoring,
        "failed" => ResetState::Failed,
        other => {
            return Err(Error::Invalid(format!(
                "state {other:?}: expected running or failed (the index ends a capture)"
            )))
        }
    };
    let store = state.policy.store();
    let now = store.clock().now_ms();
    let error = report.error.map(log_tail);
    let figures = numbers(report.figures);
    let (capture, previous) = store.change_capture(mac, |current| {
        let Some(mut c) = current.filter(|c| c.state.active()) else {
            return Err(Error::Unauthorized(format!(
                "no capture under way for {mac} (cancelled?)"
            )));
        };
        if c.state == ResetState::Failed && next == ResetState::Restoring {
            return Err(Error::Conflict(format!(
                "the capture of {mac} failed ({}): ask for it again",
                c.error.clone().unwrap_or_default()
            )));
        }
        // The first report may not use an expired token; later ones may.
        check_token(
            state,
            mac,
            token,
            &c.token_scope(),
            c.capturing_from.is_some(),
        )?;
        bind_from(&mut c.capturing_from, from, "capture")?;
        let previous = c.state;
        c.state = next;
        c.updated_at = now;
        c.done_bytes = report.done_bytes.unwrap_or(c.done_bytes);
        c.total_bytes = report.total_bytes.unwrap_or(c.total_bytes);
        c.error = error.clone();
        if !figures.is_empty() {
            c.stats = figures.clone();
        }
        Ok((Some(c.clone()), (c, previous)))
    })?;
    match (previous, next) {
        (ResetState::Restoring, ResetState::Restoring) => {}
        (_, ResetState::Restoring) => store.record(mac, "capture-started", capture.disk.clone())?,
        (ResetState::Failed, ResetState::Failed) => {}
        (_, _) => store.record(
            mac,
            "capture-failed",
            capture.error.clone().unwrap_or_default(),
        )?,
    }
    Ok(capture)
}

/// Which of the chunks `ids` (32 bytes each, at most [`MAX_ASKED`]) the store lacks:
/// one byte per id, 1 for missing.
pub fn missing(state: &Services, body: &[u8]) -> Result<Vec<u8>, Error> {
    let ids = images::ids_from_bytes(body).map_err(|e| Error::Invalid(e.to_string()))?;
    if ids.is_empty() || ids.len() > MAX_ASKED {
        return Err(Error::Invalid(format!(
            "{} ids: ask about 1 to {MAX_ASKED} at a time",
            ids.len()
        )));
    }
    Ok(ids
        .iter()
        .map(|id| u8::from(!state.chunks.has(id)))
        .collect())
}

/// Store the chunks of an upload: frames of a 32-byte id, a u32 (little endian)
/// length and the zstd-compressed chunk. Each is decompressed (to at most the
/// capture's chunk size) and checked against its id before anything is stored; a
/// batch with one bad chunk stores none. Returns how many were new.
pub fn upload(state: &Services, capture: &Capture, body: &[u8]) -> Result<usize, Error> {
    let chunks = frames(body, capture.chunk_size)?;
    let mut batch = state.chunks.batch();
    let mut new = 0;
    for (id, bytes) in chunks {
        new += usize::from(
            batch
                .put_checked(&id, bytes)
                .map_err(|e| Error::Internal(e.to_string()))?,
        );
    }
    batch.commit().map_err(|e| Error::Internal(e.to_string()))?;
    Ok(new)
}

/// The chunks of an upload body, each decompressed (to at most `chunk_size` bytes)
/// and checked against its id: all of them, or the first reason to refuse the lot.
pub fn frames(mut body: &[u8], chunk_size: u32) -> Result<Vec<(ChunkId, &[u8])>, Error> {
    let mut chunks: Vec<(ChunkId, &[u8])> = Vec::new();
    while !body.is_empty() {
        let (Some(id), Some(len)) = (body.get(..32), body.get(32..36)) else {
            return Err(Error::Invalid("a torn chunk frame".into()));
        };
        let id = ChunkId(id.try_into().expect("32 bytes"));
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(bytes) = body.get(36..36 + len) else {
            return Err(Error::Invalid(format!(
                "chunk {id}: its frame says {len} bytes, the body ends first"
            )));
        };
        images::decode_chunk(&id, bytes, chunk_size as usize)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        chunks.push((id, bytes));
        body = &body[36 + len..];
    }
    Ok(chunks)
}

/// The capture's index: checked (its chunk size, its size, every chunk it names in
/// the store), then written as the image; the capture is done. Sent again after a
/// lost answer, the same index is fine.
pub fn finish(
    state: &Services,
    mac: MacAddr,
    capture: &Capture,
    body: &[u8],
) -> Result<Capture, Error> {
    let index = Index::decode(body).map_err(|e| Error::Invalid(e.to_string()))?;
    let layout = &index.layout;
    if layout.chunk_size != capture.chunk_size {
        return Err(Error::Invalid(format!(
            "the index has {} byte chunks; this capture asked for {}",
            layout.chunk_size, capture.chunk_size
        )));
    }
    if layout.total_size > MAX_DISK_BYTES {
        return Err(Error::Invalid(format!(
            "a disk of {} bytes: captures stop at {MAX_DISK_BYTES}",
            layout.total_size
        )));
    }
    if let Some(id) = index.ids.iter().find(|id| !state.chunks.has(id)) {
        return Err(Error::Conflict(format!(
            "the index names chunk {id}, which was not uploaded"
        )));
    }
    let id = index.id();
    match state.images.add(&capture.name, &index) {
        Ok(()) => {}
        Err(images::Error::ImageExists(_))
            if state.images.get(&capture.name).is_ok_and(|i| i.id() == id) => {}
        Err(images::Error::ImageExists(n)) => {
            return Err(Error::Conflict(format!(
                "an image named {n:?} was made while the capture ran"
            )))
        }
        Err(e) => return Err(Error::Internal(e.to_string())),
    }
    let store = state.policy.store();
    let now = store.clock().now_ms();
    let generation = capture.generation;
    let done = store.change_capture(mac, |current| {
        let Some(mut c) = current.filter(|c| c.generation == generation) else {
            return Err(Error::Conflict(format!(
                "the capture of {mac} was cancelled; the image {:?} is kept",
                capture.name
            )));
        };
        c.state = ResetState::Done;
        c.updated_at = now;
        c.done_bytes = layout.total_size;
        c.total_bytes = layout.total_size;
        c.index = Some(id.to_string());
        Ok((Some(c.clone()), c))
    })?;
    let n = |k: &str| done.stats.get(k).and_then(Value::as_u64).unwrap_or(0);
    // Said now, as an import says it, not at a campaign's second cycle.
    let checks = match images::inspect::inspect(&state.chunks, &index, &done.name) {
        Ok(seen) => {
            let version = seen.version.as_ref().map(|v| format!("; {}", v.describe()));
            let refusal = seen
                .kms_refusal(&done.name)
                .map(|why| format!("; warning: {why}"));
            format!(
                "{}{}",
                version.unwrap_or_default(),
                refusal.unwrap_or_default()
            )
        }
        Err(e) => format!("; not inspected: {e}"),
    };
    store.record(
        mac,
        "capture-done",
        format!(
            "{}: {} chunks of data, {} uploaded ({} bytes), index {id}{checks}",
            done.name,
            index.ids.len(),
            n("chunks_uploaded"),
            n("bytes_uploaded")
        ),
    )?;
    tracing::info!(%mac, image = %done.name, index = %id, "capture done");
    Ok(done)
}
