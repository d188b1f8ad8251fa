//! The configuration file as written: serde structs that mirror the TOML, every
//! value optional, unknown keys refused. `Config::from_raw` (in the parent) checks
//! them and fills the defaults.

use serde::Deserialize;

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub data_dir: Option<String>,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub dhcp: RawDhcp,
    #[serde(default)]
    pub tftp: RawTftp,
    #[serde(default)]
    pub boot: RawBoot,
    #[serde(default)]
    pub inventory: RawInventory,
    pub kms: Option<RawKms>,
    #[serde(default)]
    pub images: RawImages,
    #[serde(default)]
    pub restore: RawRestore,
    #[serde(default)]
    pub api: RawApi,
    #[serde(default)]
    pub rooms: Vec<RawRoom>,
    #[serde(default)]
    pub campaigns: RawCampaigns,
    #[serde(default)]
    pub schedule: RawSchedule,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    pub time_zone: Option<String>,
    #[serde(default)]
    pub windows: Vec<RawWindow>,
    pub school_days: Option<Vec<String>>,
    #[serde(default)]
    pub holidays: Vec<RawHoliday>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHoliday {
    pub name: Option<String>,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCampaigns {
    pub max_parallel: Option<usize>,
    pub wake_timeout: Option<String>,
    pub wake_attempts: Option<u32>,
    pub restore_timeout: Option<String>,
    pub restore_attempts: Option<u32>,
    pub report_timeout: Option<String>,
    pub tick: Option<String>,
    pub keepalive_check: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoom {
    pub name: String,
    pub wol_broadcast: String,
    pub wol_source: Option<String>,
    pub wol_port: Option<u16>,
    pub secure_boot: Option<bool>,
    pub peers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    pub token: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKms {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub families: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImages {
    pub fat_label: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestore {
    pub dir: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub token_ttl: Option<String>,
    pub disk: Option<String>,
    pub max_mbit: Option<u32>,
    pub peers: Option<bool>,
    pub peer_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub max_connections: Option<usize>,
    pub max_per_client: Option<usize>,
    pub header_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDhcp {
    pub mode: Option<DhcpMode>,
    pub interface: Option<String>,
    pub server_ip: Option<String>,
    pub listen: Option<String>,
    pub pxe_listen: Option<String>,
    pub broadcast: Option<String>,
    #[serde(default)]
    pub relays: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTftp {
    pub listen: Option<String>,
    pub root: Option<String>,
    pub mtu: Option<u32>,
    pub max_per_client: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    pub bios: Option<String>,
    pub uefi_x64: Option<String>,
    pub uefi_arm64: Option<String>,
    pub local: Option<LocalMode>,
    pub unknown: Option<UnknownMode>,
    pub secure_boot: Option<bool>,
    pub shim: Option<String>,
    pub grub: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub register_unknown: Option<bool>,
    pub max_unknown: Option<usize>,
    pub events_per_station: Option<usize>,
    #[serde(default)]
    pub stations: Vec<RawStation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStation {
    pub mac: String,
    pub name: Option<String>,
    pub room: Option<String>,
    pub image: Option<String>,
    pub kms_activation: Option<bool>,
    pub disk: Option<String>,
    pub secure_boot: Option<bool>,
}

/// `[dhcp] mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// ProxyDHCP beside the school's DHCP server.
    Proxy,
    /// No DHCP: the school's DHCP server points stations at us itself.
    Off,
}

/// `[boot] local`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalMode {
    Exit,
    Sanboot,
}

/// `[boot] unknown`: what a machine that is not in the inventory gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownMode {
    /// iPXE, then its local disk (recorded, so that the admin sees it).
    Local,
    /// No answer at all: staff laptops and other PXE devices are left alone.
    Ignore,
}
