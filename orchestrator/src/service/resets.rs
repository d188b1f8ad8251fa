//! Resets: stage an image for a station and mark it, so its next PXE boot chains the
//! restore environment; the restore client's calls (station.json, progress) and
//! cancels.

use std::net::Ipv4Addr;

use images::Profile;
use pxe::MacAddr;
use serde::Deserialize;
use serde_json::{json, Value};

use super::views::{PeerView, WaveView};
use super::{Error, Services};
use crate::store::{Capture, Reset, ResetState};

/// `POST /api/v1/stations/{mac}/reset` `{"image"?, "profile"?}`: by default the
/// station's own image, and the kms profile when the station has KMS activation on.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    image: Option<String>,
    profile: Option<String>,
}

/// An admin's reset of `mac`: [`mark`] with what the request names.
pub fn request(state: &Services, mac: MacAddr, req: ResetRequest) -> Result<Reset, Error> {
    let profile = match &req.profile {
        Some(p) => Some(p.parse::<Profile>().map_err(Error::Invalid)?),
        None => None,
    };
    mark(state, mac, req.image, profile, None)
}

/// Stage the image and mark `mac` for a reset to it; its next PXE boot chains the
/// restore environment. `image` and `profile` default to the station's settings;
/// `families` (campaign cycles) narrows the KMS families the staged image activates.
/// Staging reads and writes the image store: call this off the async workers.
pub fn mark(
    state: &Services,
    mac: MacAddr,
    image: Option<String>,
    profile: Option<Profile>,
    families: Option<Vec<crate::engine::Family>>,
) -> Result<Reset, Error> {
    let store = state.policy.store().clone();
    let station = store.station(mac)?;
    restore_env_ready(state)?;
    let Some(station) = station else {
        return Err(not_listed(mac));
    };
    if let Some(c) = store.capture(mac)?.filter(Capture::under_way) {
        return Err(Error::Conflict(format!(
            "{mac} is being captured into {:?} ({:?}): a reset would overwrite the disk it reads; \
             let the capture finish, or cancel it (DELETE /api/v1/stations/{mac}/capture)",
            c.name, c.state
        )));
    }
    let profile = match profile {
        Some(p) => p,
        None if station.kms_activation => Profile::Kms,
        None => Profile::Plain,
    };
    let disk = disk_of(state, mac, &station)?;
    let room = station.room.clone();
    let image = image.or(station.image).ok_or_else(|| {
        Error::Invalid(format!(
            "no image: name one, or set the image of {mac} (PUT /api/v1/stations/{mac})"
        ))
    })?;
    images::check_name(&image).map_err(|e| Error::Invalid(e.to_string()))?;
    let staging = match (&families, &state.staging.kms) {
        (Some(only), Some(kms)) => {
            let mut narrowed = (*state.staging).clone();
            narrowed.kms = Some(crate::config::KmsConfig {
                windows: kms.windows && only.contains(&crate::engine::Family::Windows),
                office: kms.office && only.contains(&crate::engine::Family::Office),
                ..kms.clone()
            });
            std::sync::Arc::new(narrowed)
        }
        _ => state.staging.clone(),
    };
    let kms = staging.kms.clone();
    let (id, staged) = staging
        .stage(&state.images, &state.chunks, &image, profile)
        .map_err(|e| match e {
            crate::staging::StageError::Images(images::Error::NoImage(n)) => {
                Error::NotFound(format!("no image named {n:?} (netreset image ls)"))
            }
            crate::staging::StageError::NoKms | crate::staging::StageError::NotForKms(_) => {
                Error::Conflict(e.to_string())
            }
            crate::staging::StageError::Images(images::Error::BadStaged(why)) => {
                Error::Conflict(why)
            }
            other => Error::Internal(other.to_string()),
        })?;
    let index = staged.index.to_string();
    let wave = match crate::config::peers(&state.restore, &state.rooms, room.as_deref()) {
        true => Some(wave_for(state, mac, room.as_deref(), &index)?),
        false => None,
    };
    let now = state.policy.store().clock().now_ms();
    let mut reset = Reset {
        image,
        profile: profile.to_string(),
        staged: id.to_string(),
        state: ResetState::Pending,
        requested_at: now,
        updated_at: now,
        done_bytes: 0,
        total_bytes: 0,
        stats: Default::default(),
        error: None,
        generation: store.next_id()?,
        previous_generation: None,
        families: match (profile, &kms) {
            (Profile::Kms, Some(kms)) => kms.families(),
            _ => Vec::new(),
        },
        disk: Some(disk),
        restoring_from: None,
        secure_boot: None,
        wave,
        index: Some(index),
        peer_port: None,
    };
    // Written in one step with what it replaces: the station runs the image of its
    // last completed reset until this one is, also when that restore finished just
    // now.
    let reset = store.change_reset(mac, |old| {
        reset.previous_generation = match old {
            Some(old) if old.state == ResetState::Done => Some(old.generation),
            Some(old) => old.previous_generation,
            None => None,
        };
        Ok::<_, Error>((Some(reset.clone()), reset.clone()))
    })?;
    store.record(
        mac,
        "reset-requested",
        format!(
            "{} ({}) staged {}",
            reset.image, reset.profile, reset.staged
        ),
    )?;
    tracing::info!(%mac, image = %reset.image, profile = %reset.profile, staged = %reset.staged, "reset requested");
    Ok(reset)
}

/// The restore wave a reset of `mac` to `index` joins: the wave of another station
/// of its room with a reset to the same index under way, else a new one.
fn wave_for(state: &Services, mac: MacAddr, room: Option<&str>, index: &str) -> Result<u64, Error> {
    let store = state.policy.store();
    for (other, r) in store.resets()? {
        if other == mac || !r.state.active() || r.index.as_deref() != Some(index) {
            continue;
        }
        let Some(wave) = r.wave else { continue };
        let same_room = store
            .station(other)?
            .is_some_and(|s| s.room.as_deref() == room);
        if same_room {
            return Ok(wave);
        }
    }
    Ok(store.next_id()?)
}

/// `POST /api/v1/stations/{mac}/peers` `{"port": 7410}`: a restore environment
/// serving chunks on `port` asks for its wave.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PeersRequest {
    /// The TCP port it serves chunks on.
    port: u16,
}

/// A restore client's question about its wave, with its restore token: the caller's
/// address and port are noted (the first call binds the restore to that address, as
/// a progress report does), and the answer names the wave's token and the members
/// restoring and serving now. A reset in no wave gets `wave: null`.
pub fn peers(
    state: &Services,
    mac: MacAddr,
    token: Option<&str>,
    from: Option<Ipv4Addr>,
    req: PeersRequest,
) -> Result<WaveView, Error> {
    let reset = authorize(state, mac, token, true)?;
    if req.port == 0 {
        return Err(Error::Invalid(
            "port 0: the TCP port chunks are served on".into(),
        ));
    }
    let Some(wave) = reset.wave else {
        return Ok(WaveView {
            wave: None,
            token: None,
            peers: Vec::new(),
        });
    };
    let store = state.policy.store();
    if reset.restoring_from.is_none()
        || reset.restoring_from != from
        || reset.peer_port != Some(req.port)
    {
        store.change_reset(mac, |current| {
            let Some(mut r) = current.filter(|r| r.generation == reset.generation) else {
                return Err(Error::Unauthorized(
                    "the restore token is not one issued for this station and its current reset"
                        .into(),
                ));
            };
            restoring_from(&mut r, from)?;
            r.peer_port = Some(req.port);
            Ok((Some(r), ()))
        })?;
    }
    let peers = store
        .resets()?
        .into_iter()
        .filter(|(other, r)| {
            *other != mac && r.wave == Some(wave) && r.state == ResetState::Restoring
        })
        .filter_map(|(other, r)| {
            Some(PeerView {
                station: other.to_string(),
                address: std::net::SocketAddrV4::new(r.restoring_from?, r.peer_port?).to_string(),
            })
        })
        .collect();
    Ok(WaveView {
        wave: Some(wave),
        token: Some(state.policy.restore().secret.wave_token(wave)),
        peers,
    })
}

/// Refuse to send a station to a restore environment that is not installed.
pub(super) fn restore_env_ready(state: &Services) -> Result<(), Error> {
    let missing = restore_env_missing(&state.restore);
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
    Err(Error::Conflict(format!(
        "the restore environment is not installed ({} missing): a station sent to it would fail to boot",
        names.join(", ")
    )))
}

pub(super) fn not_listed(mac: MacAddr) -> Error {
    Error::NotFound(format!(
        "no station {mac} in the inventory (it registers at its first PXE boot, or list it in [[inventory.stations]])"
    ))
}

/// The disk the restore environment works on for `station`: its own setting, else
/// `restore.disk`; never a guess.
pub(super) fn disk_of(
    state: &Services,
    mac: MacAddr,
    station: &crate::store::Station,
) -> Result<String, Error> {
    station.disk.clone().or_else(|| state.restore.disk.clone()).ok_or_else(|| {
        Error::Conflict(format!(
            "no disk for {mac}: set restore.disk, or the station's disk (PUT /api/v1/stations/{mac} {{\"disk\": \"/dev/nvme0n1\"}}); netreset never guesses a disk"
        ))
    })
}

/// The restore environment's files that are not where `restore.dir` says (kernel
/// and initrd given as URLs are not checked).
pub fn restore_env_missing(restore: &crate::config::RestoreConfig) -> Vec<std::path::PathBuf> {
    [&restore.kernel, &restore.initrd]
        .into_iter()
        .filter(|l| !l.starts_with("http://") && !l.starts_with("https://"))
        .map(|l| restore.dir.join(l))
        .filter(|p| !p.is_file())
        .collect()
}

/// The restore environment's kernel and initrd as files here, when both are (not
/// http(s) URLs): the Secure Boot path's GRUB loads them over TFTP.
pub fn restore_files(
    restore: &crate::config::RestoreConfig,
) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let local = |l: &str| !l.starts_with("http://") && !l.starts_with("https://");
    (local(&restore.kernel) && local(&restore.initrd)).then(|| {
        (
            restore.dir.join(&restore.kernel),
            restore.dir.join(&restore.initrd),
        )
    })
}

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

/// What the restore client reports. Unknown fields are kept as figures.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct ProgressReport {
    state: String,
    image: String,
    #[serde(default)]
    done_bytes: Option<u64>,
    #[serde(default)]
    total_bytes: Option<u64>,
    #[serde(default)]
    error: Option<String>,
    /// Whether the restore environment runs under Secure Boot (the firmware's
    /// `SecureBoot` variable); absent on BIOS.
    #[serde(default)]
    secure_boot: Option<bool>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    figures: serde_json::Map<String, Value>,
}

/// Take a restore client's report, sent with `token`, on the reset that token is
/// for: read, checked and written in one step, then the station's event, the running
/// image's agent token on `done`, and the campaign's event.
pub fn progress(
    state: &Services,
    mac: MacAddr,
    token: Option<&str>,
    from: Option<Ipv4Addr>,
    report: ProgressReport,
) -> Result<Reset, Error> {
    let token_of = authorize(state, mac, token, true)?;
    let next = match report.state.as_str() {
        "running" => ResetState::Restoring,
        "done" => ResetState::Done,
        "failed" => ResetState::Failed,
        other => {
            return Err(Error::Invalid(format!(
                "state {other:?}: expected running, done or failed"
            )))
        }
    };
    let now = state.policy.store().clock().now_ms();
    let error = report.error.map(log_tail);
    let figures = numbers(report.figures);
    // Read, checked and written in one step: a cancel or another report in between
    // is seen, never overwritten.
    let changed = state.policy.store().change_reset(mac, |current| {
        let Some(mut reset) = current else {
            return Err(Error::Unauthorized(format!(
                "no reset was asked for {mac} (cancelled?)"
            )));
        };
        if reset.generation != token_of.generation {
            return Err(Error::Unauthorized(
                "the restore token is not one issued for this station and its current reset".into(),
            ));
        }
        if report.image != reset.staged {
            return Err(Error::Conflict(format!(
                "the report is for staged image {}, the station is being reset to {}",
                report.image, reset.staged
            )));
        }
        restoring_from(&mut reset, from)?;
        if reset.state == ResetState::Done && next == ResetState::Done {
            // A rerun after a completed restore (say, killed after its report) is fine.
            return Ok((Some(reset.clone()), (reset, None)));
        }
        if reset.state == ResetState::Done {
            return Err(Error::Conflict(format!(
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
        if report.secure_boot.is_some() {
            reset.secure_boot = report.secure_boot;
        }
        if !figures.is_empty() {
            reset.stats = figures.clone();
        }
        Ok((Some(reset.clone()), (reset, Some(previous))))
    })?;
    let (reset, Some(previous)) = changed else {
        return Ok(changed.0);
    };
    let store = state.policy.store();
    if next == ResetState::Done {
        store.set_agent_generation(mac, reset.generation, &reset.families)?;
    }
    let event = match (previous, next) {
        (ResetState::Restoring, ResetState::Restoring) => None,
        (_, ResetState::Restoring) => Some((
            "restore-started",
            match reset.secure_boot {
                Some(true) => format!("{} (Secure Boot on)", reset.staged),
                Some(false) => format!("{} (Secure Boot off)", reset.staged),
                None => reset.staged.clone(),
            },
        )),
        (_, ResetState::Done) => Some(("restore-done", summary(&reset))),
        (_, ResetState::Failed) => {
            Some(("restore-failed", reset.error.clone().unwrap_or_default()))
        }
        _ => None,
    };
    match (previous, next) {
        (ResetState::Restoring, ResetState::Restoring) => {}
        (_, ResetState::Restoring) => state.metrics.restore_started(),
        (_, ResetState::Done) => state.metrics.restore_ended(true, &reset.stats),
        (_, ResetState::Failed) => state.metrics.restore_ended(false, &reset.stats),
        _ => {}
    }
    if let Some(event) = campaign_event(mac, previous, next, &reset) {
        state.campaigns.station(mac, event);
    }
    if let Some((kind, detail)) = event {
        store.record(mac, kind, detail)?;
        tracing::info!(%mac, kind, "restore report");
    }
    Ok(reset)
}

/// The end of a log, which says the most: its last 2000 characters.
pub(super) fn log_tail(e: String) -> String {
    let chars: Vec<char> = e.chars().collect();
    chars[chars.len().saturating_sub(2000)..].iter().collect()
}

/// A client's figures: the numbers among its report's other fields, 32 at most.
pub(super) fn numbers(fields: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
    fields
        .into_iter()
        .filter(|(_, v)| v.is_number())
        .take(32)
        .collect()
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
/// The reset whose restore token `token` is (an expired one still reports on an
/// active reset when `expired_ok`: a restore of a large disk over a slow link may
/// outlive the token it started with, and must still be able to report).
fn authorize(
    state: &Services,
    mac: MacAddr,
    token: Option<&str>,
    expired_ok: bool,
) -> Result<Reset, Error> {
    let token = token_of(token)?;
    let reset = state
        .policy
        .store()
        .reset(mac)?
        .ok_or_else(|| Error::Unauthorized(format!("no reset was asked for {mac}")))?;
    check_token(
        state,
        mac,
        token,
        &reset.token_scope(),
        expired_ok && reset.state.active(),
    )?;
    Ok(reset)
}

/// The bearer token a restore environment's call must carry.
pub(super) fn token_of(token: Option<&str>) -> Result<&str, Error> {
    token.ok_or_else(|| {
        Error::Unauthorized("a restore token is needed (Authorization: Bearer ...)".into())
    })
}

/// Whether `token` is a restore token for `mac` and `scope` that has not expired
/// (or has, and `expired_ok`: work under way may outlive its token).
pub(super) fn check_token(
    state: &Services,
    mac: MacAddr,
    token: &str,
    scope: &str,
    expired_ok: bool,
) -> Result<(), Error> {
    let restore = state.policy.restore();
    match restore.secret.restore_token_expiry(token, mac, scope) {
        None => Err(Error::Unauthorized(
            "the restore token is not one issued for this station and its current reset".into(),
        )),
        Some(expires) if state.policy.store().clock().now_ms() / 1000 >= expires && !expired_ok => {
            Err(Error::Unauthorized(format!(
                "the restore token expired (tokens last [restore] token_ttl = {}); PXE-boot the station again for a new one",
                crate::clock::friendly(restore.token_ttl)
            )))
        }
        Some(_) => Ok(()),
    }
}

/// Staged image `id`, encoded as restore clients fetch it.
pub fn staged(images: &images::Images, id: &images::ChunkId) -> Result<Vec<u8>, Error> {
    images.staged_bytes(id).map_err(|e| match e {
        images::Error::NoImage(_) => Error::NotFound(format!("no staged image {id}")),
        other => Error::Internal(other.to_string()),
    })
}

/// station.json, for the restore client holding `token`: the server, the station's
/// agent token for this reset, the staged image and base, the profile and the
/// families, and, with families to activate, the school's KMS host.
pub fn station_json(
    state: &Services,
    mac: MacAddr,
    token: Option<&str>,
    from: Option<Ipv4Addr>,
) -> Result<Value, Error> {
    let token_of = authorize(state, mac, token, false)?;
    // Handed to the restoring address only (the first to use the token), and not
    // once the restore is done: the token ends with it.
    let reset = state.policy.store().change_reset(mac, |current| {
        let Some(mut reset) = current.filter(|r| r.generation == token_of.generation) else {
            return Err(Error::Unauthorized(format!(
                "no reset under way for {mac} (cancelled?)"
            )));
        };
        if reset.state == ResetState::Done {
            return Err(Error::Unauthorized(format!(
                "the reset of {mac} is done: its restore token has ended"
            )));
        }
        restoring_from(&mut reset, from)?;
        Ok((Some(reset.clone()), reset))
    })?;
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
    Ok(doc)
}

/// Bind `reset` to the address its restore runs from (the first one), or refuse a
/// call from another: the restore token was for the station, not for the LAN.
fn restoring_from(reset: &mut Reset, from: Option<Ipv4Addr>) -> Result<(), Error> {
    bind_from(&mut reset.restoring_from, from, "restore")
}

/// Bind `slot` to `from` (the first address to call), or refuse another address.
pub(super) fn bind_from(
    slot: &mut Option<Ipv4Addr>,
    from: Option<Ipv4Addr>,
    what: &str,
) -> Result<(), Error> {
    let Some(from) = from else {
        return Err(Error::Unauthorized(format!(
            "{what} calls come over IPv4 from the station"
        )));
    };
    match *slot {
        None => {
            *slot = Some(from);
            Ok(())
        }
        Some(ip) if ip == from => Ok(()),
        Some(ip) => Err(Error::Unauthorized(format!(
            "this {what} runs from {ip}: its calls are taken from there only, not from {from}"
        ))),
    }
}

/// Cancel the reset of `mac` while it is pending or failed; one mid-restore only
/// with `force` (its disk is half written).
pub fn cancel(state: &Services, mac: MacAddr, force: bool) -> Result<(), Error> {
    let store = state.policy.store();
    let staged = store.change_reset(mac, |current| match current {
        Some(r) if r.state == ResetState::Restoring && !force => Err(Error::Conflict(format!(
            "{mac} is restoring ({:.0} %): its disk is half written and would not boot. \
             Let it finish, or cancel with ?force=true and reset it again later",
            r.done_bytes as f64 * 100.0 / r.total_bytes.max(1) as f64
        ))),
        Some(r) if r.state.active() => Ok((None, r.staged)),
        _ => Err(Error::NotFound(format!("no reset under way for {mac}"))),
    })?;
    store.record(mac, "reset-cancelled", staged)?;
    Ok(())
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
            restoring_from: None,
            secure_boot: None,
            wave: None,
            index: None,
            peer_port: None,
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
