//! Resets: stage an image for a station and mark it, so its next PXE boot chains the
//! restore environment.

use images::Profile;
use pxe::MacAddr;

use super::{Error, Services};
use crate::store::{Reset, ResetState};

/// Stage the image and mark `mac` for a reset to it; its next PXE boot chains the
/// restore environment. `image` and `profile` default to the station's settings;
/// `families` (campaign cycles) narrows the KMS families the staged image activates.
pub async fn mark(
    state: &Services,
    mac: MacAddr,
    image: Option<String>,
    profile: Option<Profile>,
    families: Option<Vec<crate::engine::Family>>,
) -> Result<Reset, Error> {
    let station = state.policy.store().station(mac)?;
    let missing = restore_env_missing(&state.restore);
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Conflict(format!(
            "the restore environment is not installed ({} missing): a station sent to it would fail to boot",
            names.join(", ")
        )));
    }
    let store = state.policy.store().clone();
    let Some(station) = station else {
        return Err(Error::NotFound(format!(
            "no station {mac} in the inventory (it registers at its first PXE boot, or list it in [[inventory.stations]])"
        )));
    };
    let profile = match profile {
        Some(p) => p,
        None if station.kms_activation => Profile::Kms,
        None => Profile::Plain,
    };
    let disk = station.disk.clone().or_else(|| state.restore.disk.clone()).ok_or_else(|| {
        Error::Conflict(format!(
            "no disk to restore {mac} to: set restore.disk, or the station's disk (PUT /api/v1/stations/{mac} {{\"disk\": \"/dev/nvme0n1\"}}); netreset never guesses a disk"
        ))
    })?;
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
    let (images, name) = (state.images.clone(), image.clone());
    let chunks = state.chunks.clone();
    let kms = staging.kms.clone();
    let (id, _) =
        tokio::task::spawn_blocking(move || staging.stage(&images, &chunks, &name, profile))
            .await
            .map_err(|e| Error::Internal(e.to_string()))?
            .map_err(|e| match e {
                crate::staging::StageError::Images(images::Error::NoImage(n)) => {
                    Error::NotFound(format!("no image named {n:?} (netreset image ls)"))
                }
                crate::staging::StageError::NoKms => Error::Conflict(e.to_string()),
                crate::staging::StageError::Images(images::Error::BadStaged(why)) => {
                    Error::Conflict(why)
                }
                other => Error::Internal(other.to_string()),
            })?;
    let now = state.policy.store().clock().now_ms();
    let reset = Reset {
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
        // The station runs the image of its last completed reset until this one is.
        previous_generation: match store.reset(mac)? {
            Some(old) if old.state == ResetState::Done => Some(old.generation),
            Some(old) => old.previous_generation,
            None => None,
        },
        families: match (profile, &kms) {
            (Profile::Kms, Some(kms)) => kms.families(),
            _ => Vec::new(),
        },
        disk: Some(disk),
    };
    store.put_reset(mac, &reset)?;
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
