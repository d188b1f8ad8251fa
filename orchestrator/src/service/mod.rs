//! The domain operations the HTTP API, the campaign runner and the CLI share:
//! resets (stage and mark, restore progress), campaigns (create, the keep-alive's
//! plan) and the runner's mailbox. Typed errors ([`Error`]); no HTTP here: `api`
//! maps the errors to status codes, and only `daemon` sees `api`.

pub mod agent;
pub mod audit;
pub mod boot;
pub mod campaigns;
pub mod captures;
pub mod chunks;
pub mod events;
pub mod kms;
pub mod metrics;
pub mod resets;
pub mod stations;
pub mod views;

use std::sync::Arc;
use std::time::Instant;

use crate::boot::policy::Orchestrator;
use crate::store::StoreError;

/// What the domain operations share: the boot policy and its store, images,
/// settings, and the campaign runner's mailbox.
#[derive(Clone)]
pub struct Services {
    pub policy: Orchestrator,
    /// The TFTP root, also served over HTTP under `/ipxe/`.
    pub tftp_root: Arc<std::path::PathBuf>,
    /// Image chunks, served to restore clients under `/chunks/`.
    pub chunks: Arc<images::ChunkStore>,
    /// The image catalog and staged images.
    pub images: Arc<images::Images>,
    pub staging: Arc<crate::staging::StageSettings>,
    /// The restore environment, served under `/restore/`.
    pub restore: Arc<crate::config::RestoreConfig>,
    /// Woken when a command is queued for some agent (their long polls look again).
    pub commands_queued: Arc<tokio::sync::Notify>,
    /// The admin token every `/api/v1` call needs but health and the stations' own.
    pub admin: crate::boot::tokens::AdminToken,
    /// The campaign runner's mailbox, and its settings.
    pub campaigns: campaigns::Handle,
    pub campaign_settings: crate::engine::campaign::Settings,
    /// Rooms, for Wake-on-LAN.
    pub rooms: Arc<Vec<crate::config::RoomConfig>>,
    /// Overnight windows, for campaigns that start in one.
    pub schedule: Arc<Option<crate::engine::schedule::Schedule>>,
    pub started: Instant,
    /// Live events for `GET /api/v1/events`.
    pub events: Arc<events::Hub>,
    /// The station list's JSON, made once per change.
    pub station_list: Arc<stations::ListCache>,
    /// Counts for `GET /metrics`.
    pub metrics: Arc<metrics::Metrics>,
}

/// A station's MAC address from a request, or [`Error::Invalid`] saying why not.
pub fn parse_mac(text: &str) -> Result<pxe::MacAddr, Error> {
    text.parse()
        .map_err(|e: pxe::Error| Error::Invalid(e.to_string()))
}

/// Why a domain operation was refused or failed. Each message is for the admin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong (a bad value, a missing field).
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A token is missing or wrong.
    #[error("{0}")]
    Unauthorized(String),
    /// The request is fine, but not now or not here (a station in use, no restore
    /// environment, a campaign already running).
    #[error("{0}")]
    Conflict(String),
    /// The engine refuses the plan (too few stations for a family).
    #[error(transparent)]
    Refused(#[from] crate::engine::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wake(#[from] crate::power::WakeError),
    #[error("{0}")]
    Internal(String),
}
