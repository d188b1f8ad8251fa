//! Staging: a base image + a profile -> a staged image in the catalog. Shared by
//! `netreset image stage` and `POST /api/v1/stations/{mac}/reset`. The staged image
//! names the base index by id; the index is read once and kept in memory
//! ([`Images::get_shared`]), so marking a reset costs the injection set (and, for
//! the KMS profile, the few chunks that hold the partition table and State.ini).

use images::{ChunkId, ChunkStore, Images, KmsSettings, Profile, Staged, WindowsFs};

use crate::config::{Config, KmsConfig};

/// What staging needs from the configuration.
#[derive(Clone, Debug)]
pub struct StageSettings {
    pub kms: Option<KmsConfig>,
    pub fat_label: String,
}

impl StageSettings {
    pub fn from_config(config: &Config) -> StageSettings {
        StageSettings {
            kms: config.kms.clone(),
            fat_label: config.images.fat_label.clone(),
        }
    }

    /// Stage image `name` with `profile` and keep it in the catalog. The kms profile
    /// first looks into the image (its partitions, from the chunks) for where Windows
    /// is.
    pub fn stage(
        &self,
        images: &Images,
        store: &ChunkStore,
        name: &str,
        profile: Profile,
    ) -> Result<(ChunkId, Staged), StageError> {
        let kms = match (profile, &self.kms) {
            (Profile::Kms, None) => return Err(StageError::NoKms),
            (_, kms) => kms.as_ref().map(|k| KmsSettings {
                host: k.host.clone(),
                port: k.port,
                windows: k.windows,
                office: k.office,
            }),
        };
        let (index_id, index) = images.get_shared(name)?;
        if profile == Profile::Kms {
            let seen = images::inspect::inspect(store, &index, name)?;
            if let Some(why) = seen.kms_refusal(name) {
                return Err(StageError::NotForKms(why));
            }
        }
        let windows_fs = match profile {
            Profile::Kms => images::inject::image_windows_fs(store, &index, name)?,
            Profile::Plain => WindowsFs::None,
        };
        let staged = Staged::new(
            name,
            index_id,
            profile,
            kms.as_ref(),
            &self.fat_label,
            windows_fs,
        )?;
        let id = images.put_staged(&staged)?;
        Ok((id, staged))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("the kms profile needs the KMS host: add [kms] host = \"...\" to the configuration")]
    NoKms,
    /// The image cannot be staged with the KMS profile (not generalized, or an
    /// encrypted Windows): the message says why and what to do.
    #[error("{0}")]
    NotForKms(String),
    #[error(transparent)]
    Images(#[from] images::Error),
}
