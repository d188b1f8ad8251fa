//! Configuration: one TOML file, read in two layers. [`RawConfig`] mirrors the file
//! (serde, unknown keys refused); [`Config::from_raw`] checks values and fills the
//! defaults, naming the key and value it rejects. Defaults live here and nowhere else.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

mod check;
mod raw;

use pxe::ipxe::LocalBoot;
use pxe::MacAddr;

pub use check::check_disk;
use check::{addr, boot_name, campaigns, http_limits, ipv4, kms, public_url, restore, schedule};
pub use raw::*;

/// A configuration error, with the key and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value:?}: {why}")]
    Invalid {
        key: String,
        value: String,
        why: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl Into<String>,
    why: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.into(),
        why: why.into(),
    }
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    /// Base URL stations use to reach us; `None` until the server address is known.
    pub public_url: Option<String>,
    /// Connection limits and the header timeout of the HTTP server.
    pub http_limits: crate::http::Limits,
    pub dhcp: DhcpConfig,
    pub tftp: TftpConfig,
    pub boot: BootConfig,
    pub inventory: InventoryConfig,
    /// The KMS host staged images point Windows and Office at; `None` when `[kms]` is
    /// absent (then only plain resets can be staged).
    pub kms: Option<KmsConfig>,
    pub images: ImagesConfig,
    pub restore: RestoreConfig,
    pub api: ApiConfig,
    /// Rooms by name: where their stations' Wake-on-LAN packets go.
    pub rooms: Vec<RoomConfig>,
    pub campaigns: crate::engine::campaign::Settings,
    /// Overnight windows for campaigns that start in one; `None` without windows.
    pub schedule: Option<crate::engine::schedule::Schedule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomConfig {
    pub name: String,
    /// The room subnet's directed broadcast address (UDP port 9).
    pub wol_broadcast: Ipv4Addr,
    /// The server's address on that subnet, to send from (multi-homed servers).
    pub wol_source: Option<Ipv4Addr>,
    /// UDP port of the magic packets: 9, what NICs listen to (anything else is for
    /// simulated rooms that cannot bind port 9, like the demo's without root).
    pub wol_port: u16,
    /// The room's stations boot the signed path (unless a station says otherwise).
    pub secure_boot: Option<bool>,
    /// The room's stations take chunks from each other in a restore wave (unless
    /// `false`: `restore.peers` otherwise).
    pub peers: Option<bool>,
}

/// Whether a station of `room` joins a restore wave: its room's `peers`, else
/// `restore.peers`.
pub fn peers(restore: &RestoreConfig, rooms: &[RoomConfig], room: Option<&str>) -> bool {
    room.and_then(|room| rooms.iter().find(|r| r.name == room)?.peers)
        .unwrap_or(restore.peers)
}

/// Where the admin token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiConfig {
    /// `api.token` in the file itself.
    Token(String),
    /// A file holding it; created with a random token (mode 0600) when missing.
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmsConfig {
    pub host: String,
    pub port: u16,
    pub windows: bool,
    pub office: bool,
}

impl KmsConfig {
    /// The families by name, as station.json lists them.
    pub fn families(&self) -> Vec<String> {
        [("windows", self.windows), ("office", self.office)]
            .into_iter()
            .filter(|(_, on)| *on)
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}

#[derive(Clone, Debug)]
pub struct ImagesConfig {
    /// The FAT partition station.json is written to; empty: the EFI system partition.
    pub fat_label: String,
}

#[derive(Clone, Debug)]
pub struct RestoreConfig {
    /// Where the restore environment's files are; served under `/restore/`.
    pub dir: PathBuf,
    /// The restore environment's kernel and initrd: file names under `dir` (served by
    /// us), or http(s) URLs of another server.
    pub kernel: String,
    pub initrd: String,
    /// Extra kernel command line.
    pub cmdline: String,
    /// How long a per-restore token stays valid after the boot script hands it out.
    pub token_ttl: std::time::Duration,
    /// The disk restores write when the station names none (`/dev/...`).
    pub disk: Option<String>,
    /// A cap on each restore's download, in Mbit/s (many stations share an uplink).
    pub max_mbit: Option<u32>,
    /// Whether stations restoring the same image in one room at once take chunks
    /// from each other (`restore.peers`, default on; a room's `peers` overrides).
    pub peers: bool,
    /// The TCP port a station of a wave serves chunks on (`restore.peer_port`).
    pub peer_port: u16,
}

#[derive(Clone, Debug)]
pub struct DhcpConfig {
    pub mode: DhcpMode,
    pub interface: Option<String>,
    pub server_ip: Option<Ipv4Addr>,
    pub listen: SocketAddr,
    pub pxe_listen: SocketAddr,
    pub broadcast: SocketAddrV4,
    /// DHCP relay agents (ip helper-address) whose giaddr is honoured.
    pub relays: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug)]
pub struct TftpConfig {
    pub listen: SocketAddr,
    pub root: PathBuf,
    pub mtu: Option<u32>,
    /// Transfers one client address may run at once.
    pub max_per_client: usize,
}

#[derive(Clone, Debug)]
pub struct BootConfig {
    pub bios: String,
    pub uefi_x64: String,
    pub uefi_arm64: Option<String>,
    pub local: LocalBoot,
    pub unknown: UnknownMode,
    /// Stations boot the signed path (shim, GRUB) unless their room or they say
    /// otherwise.
    pub secure_boot: bool,
    /// The signed loaders, served over TFTP as `netreset/signed/shimx64.efi` and
    /// `netreset/signed/grubx64.efi` (shim loads `grubx64.efi` from its own directory).
    pub shim: PathBuf,
    pub grub: PathBuf,
}

/// Debian's signed loaders (packages shim-signed and grub-efi-amd64-signed).
pub const DEBIAN_SHIM: &str = "/usr/lib/shim/shimx64.efi.signed";
pub const DEBIAN_GRUB: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";

/// Whether `station` boots the signed path: its own setting, else its room's, else
/// `boot.secure_boot`.
pub fn secure_boot(
    boot: &BootConfig,
    rooms: &[RoomConfig],
    station: Option<&crate::store::Station>,
) -> bool {
    let Some(station) = station else {
        return boot.secure_boot;
    };
    station
        .secure_boot
        .or_else(|| {
            let room = station.room.as_deref()?;
            rooms.iter().find(|r| r.name == room)?.secure_boot
        })
        .unwrap_or(boot.secure_boot)
}

#[derive(Clone, Debug)]
pub struct InventoryConfig {
    pub register_unknown: bool,
    /// The most stations kept that registered by themselves from DHCP.
    pub max_unknown: usize,
    pub events_per_station: usize,
    pub stations: Vec<StationConfig>,
}

/// A station of `[[inventory.stations]]`: its MAC and the settings the daemon
/// writes into the store at start (what it leaves out is kept as the admin set it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StationConfig {
    pub mac: MacAddr,
    pub settings: crate::store::Settings,
}

impl Config {
    /// Read and validate a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validate TOML text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_raw(raw, base)
    }

    /// The second layer: check every value, apply defaults. Relative paths are taken
    /// from `base`, the directory of the configuration file (systemd starts us in /).
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
        let data_dir = base.join(raw.data_dir.unwrap_or_else(|| "/var/lib/netreset".into()));

        let http_listen = addr(
            "http.listen",
            raw.http.listen.as_deref().unwrap_or("0.0.0.0:8080"),
        )?;
        let http_limits = http_limits(&raw.http)?;
        let public_url = match raw.http.public_url {
            Some(url) => Some(public_url(&url)?),
            None => None,
        };

        let mode = raw.dhcp.mode.unwrap_or(DhcpMode::Proxy);
        let server_ip = match raw.dhcp.server_ip.as_deref() {
            Some(text) => Some(ipv4("dhcp.server_ip", text)?),
            None => None,
        };
        if let Some(name) = &raw.dhcp.interface {
            if name.is_empty()
                || name.len() > 15
                || name.contains('/')
                || name.chars().any(char::is_whitespace)
            {
                return Err(invalid(
                    "dhcp.interface",
                    name,
                    "not a network interface name",
                ));
            }
        }
        let dhcp = DhcpConfig {
            mode,
            interface: raw.dhcp.interface,
            server_ip,
            listen: addr(
                "dhcp.listen",
                raw.dhcp.listen.as_deref().unwrap_or("0.0.0.0:67"),
            )?,
            pxe_listen: addr(
                "dhcp.pxe_listen",
                raw.dhcp.pxe_listen.as_deref().unwrap_or("0.0.0.0:4011"),
            )?,
            broadcast: match addr(
                "dhcp.broadcast",
                raw.dhcp
                    .broadcast
                    .as_deref()
                    .unwrap_or("255.255.255.255:68"),
            )? {
                SocketAddr::V4(v4) => v4,
                SocketAddr::V6(v6) => {
                    return Err(invalid("dhcp.broadcast", v6.to_string(), "DHCP is IPv4"))
                }
            },
            relays: raw
                .dhcp
                .relays
                .iter()
                .enumerate()
                .map(|(i, text)| ipv4(&format!("dhcp.relays[{i}]"), text))
                .collect::<Result<_, _>>()?,
        };
        if mode == DhcpMode::Proxy
            && dhcp.interface.is_none()
            && dhcp.listen.ip().is_unspecified()
            && server_ip.is_none()
        {
            return Err(invalid(
                "dhcp.interface",
                "",
                "proxy mode needs the lab interface (or dhcp.server_ip with dhcp.listen on a specific address)",
            ));
        }

        let root = base.join(raw.tftp.root.unwrap_or_else(|| "/usr/lib/ipxe".into()));
        if !root.is_dir() {
            return Err(invalid(
                "tftp.root",
                root.display().to_string(),
                "is not a directory (Debian's iPXE binaries come with: apt-get install ipxe)",
            ));
        }
        if let Some(mtu) = raw.tftp.mtu {
            if !(576..=65_535).contains(&mtu) {
                return Err(invalid(
                    "tftp.mtu",
                    mtu.to_string(),
                    "must be between 576 and 65535",
                ));
            }
        }
        let tftp = TftpConfig {
            listen: addr(
                "tftp.listen",
                raw.tftp.listen.as_deref().unwrap_or("0.0.0.0:69"),
            )?,
            root,
            mtu: raw.tftp.mtu,
            max_per_client: match raw.tftp.max_per_client.unwrap_or(4) {
                n @ 1..=64 => n,
                n => {
                    return Err(invalid(
                        "tftp.max_per_client",
                        n.to_string(),
                        "must be between 1 and 64",
                    ))
                }
            },
        };

        let boot = BootConfig {
            bios: boot_name(
                "boot.bios",
                raw.boot.bios.unwrap_or_else(|| "undionly.kpxe".into()),
            )?,
            uefi_x64: boot_name(
                "boot.uefi_x64",
                raw.boot.uefi_x64.unwrap_or_else(|| "snponly.efi".into()),
            )?,
            uefi_arm64: match raw.boot.uefi_arm64 {
                Some(name) => Some(boot_name("boot.uefi_arm64", name)?),
                None => None,
            },
            local: match raw.boot.local.unwrap_or(LocalMode::Exit) {
                LocalMode::Exit => LocalBoot::Exit,
                LocalMode::Sanboot => LocalBoot::Sanboot,
            },
            unknown: raw.boot.unknown.unwrap_or(UnknownMode::Local),
            secure_boot: raw.boot.secure_boot.unwrap_or(false),
            shim: base.join(raw.boot.shim.as_deref().unwrap_or(DEBIAN_SHIM)),
            grub: base.join(raw.boot.grub.as_deref().unwrap_or(DEBIAN_GRUB)),
        };

        let events_per_station = raw.inventory.events_per_station.unwrap_or(50);
        if !(1..=10_000).contains(&events_per_station) {
            return Err(invalid(
                "inventory.events_per_station",
                events_per_station.to_string(),
                "must be between 1 and 10000",
            ));
        }
        let max_unknown = raw
            .inventory
            .max_unknown
            .unwrap_or(crate::store::DEFAULT_MAX_UNKNOWN);
        if max_unknown > 1_000_000 {
            return Err(invalid(
                "inventory.max_unknown",
                max_unknown.to_string(),
                "must be between 0 and 1000000",
            ));
        }
        let mut stations = Vec::with_capacity(raw.inventory.stations.len());
        for (i, st) in raw.inventory.stations.into_iter().enumerate() {
            let key = format!("inventory.stations[{i}].mac");
            let mac: MacAddr = st
                .mac
                .parse()
                .map_err(|e: pxe::Error| invalid(&key, &st.mac, e.to_string()))?;
            if stations.iter().any(|s: &StationConfig| s.mac == mac) {
                return Err(invalid(key, &st.mac, "listed twice"));
            }
            if let Some(image) = &st.image {
                images::check_name(image).map_err(|e| {
                    invalid(
                        format!("inventory.stations[{i}].image"),
                        image,
                        e.to_string(),
                    )
                })?;
            }
            if let Some(disk) = &st.disk {
                check_disk(&format!("inventory.stations[{i}].disk"), disk)?;
            }
            stations.push(StationConfig {
                mac,
                settings: crate::store::Settings {
                    name: st.name,
                    room: st.room,
                    image: st.image,
                    kms_activation: st.kms_activation,
                    disk: st.disk,
                    secure_boot: st.secure_boot,
                },
            });
        }
        let inventory = InventoryConfig {
            register_unknown: raw.inventory.register_unknown.unwrap_or(true),
            max_unknown,
            events_per_station,
            stations,
        };

        let kms = match raw.kms {
            None => None,
            Some(k) => Some(kms(k)?),
        };
        let fat_label = raw.images.fat_label.unwrap_or_default();
        if fat_label.len() > 11 || !fat_label.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(invalid(
                "images.fat_label",
                fat_label,
                "a FAT volume label: at most 11 ASCII characters",
            ));
        }
        let images = ImagesConfig { fat_label };
        let restore_dir = match &raw.restore.dir {
            Some(d) => base.join(d),
            None => data_dir.join("restore"),
        };
        let restore = restore(raw.restore, restore_dir)?;
        let mut rooms: Vec<RoomConfig> = Vec::new();
        for (i, r) in raw.rooms.into_iter().enumerate() {
            let key = |k: &str| format!("rooms[{i}].{k}");
            if r.name.is_empty() || r.name.len() > 64 || r.name.chars().any(char::is_control) {
                return Err(invalid(key("name"), &r.name, "1 to 64 characters"));
            }
            if rooms.iter().any(|x| x.name == r.name) {
                return Err(invalid(key("name"), &r.name, "listed twice"));
            }
            let wol_broadcast = r.wol_broadcast.parse::<Ipv4Addr>().map_err(|_| {
                invalid(
                    key("wol_broadcast"),
                    &r.wol_broadcast,
                    "expected the room subnet's broadcast address, such as 10.1.1.255",
                )
            })?;
            let wol_source = match &r.wol_source {
                Some(t) => Some(ipv4(&key("wol_source"), t)?),
                None => None,
            };
            let wol_port = r.wol_port.unwrap_or(9);
            if wol_port == 0 {
                return Err(invalid(
                    key("wol_port"),
                    "0",
                    "a UDP port (NICs listen on 9)",
                ));
            }
            rooms.push(RoomConfig {
                name: r.name,
                wol_broadcast,
                wol_source,
                wol_port,
                secure_boot: r.secure_boot,
                peers: r.peers,
            });
        }
        let campaigns = campaigns(raw.campaigns)?;
        let schedule = schedule(raw.schedule)?;
        let api = match (raw.api.token, raw.api.token_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "api.token",
                    "",
                    "set api.token or api.token_file, not both",
                ))
            }
            (Some(t), None) => {
                if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid(
                        "api.token",
                        "(hidden)",
                        "at least 16 printable characters, no spaces",
                    ));
                }
                ApiConfig::Token(t)
            }
            (None, Some(f)) => ApiConfig::File(base.join(f)),
            (None, None) => ApiConfig::File(data_dir.join("admin-token")),
        };

        Ok(Config {
            data_dir,
            http_listen,
            public_url,
            http_limits,
            dhcp,
            tftp,
            boot,
            inventory,
            kms,
            images,
            restore,
            api,
            rooms,
            campaigns,
            schedule,
        })
    }

    /// The URL stations reach the HTTP server at, when the configuration alone tells
    /// (the daemon also knows its bound port).
    pub fn station_url(&self) -> Option<String> {
        self.public_url.clone().or_else(|| {
            let ip = self.dhcp.server_ip.or(match self.http_listen.ip() {
                IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
                _ => None,
            })?;
            Some(format!("http://{ip}:{}", self.http_listen.port()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn root() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn minimal(root: &Path) -> String {
        format!(
            "data_dir = \"/tmp/x\"\n[dhcp]\ninterface = \"eth0\"\n[tftp]\nroot = \"{}\"\n",
            root.display()
        )
    }

    #[test]
    fn minimal_file_gets_the_documented_defaults() {
        let dir = root();
        let c = parse(&minimal(dir.path())).unwrap();
        assert_eq!(c.http_listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.dhcp.mode, DhcpMode::Proxy);
        assert_eq!(c.dhcp.listen, "0.0.0.0:67".parse().unwrap());
        assert_eq!(c.dhcp.pxe_listen, "0.0.0.0:4011".parse().unwrap());
        assert_eq!(c.dhcp.broadcast, "255.255.255.255:68".parse().unwrap());
        assert_eq!(c.tftp.listen, "0.0.0.0:69".parse().unwrap());
        assert_eq!(c.boot.bios, "undionly.kpxe");
        assert_eq!(c.boot.uefi_x64, "snponly.efi");
        assert_eq!(c.boot.local, LocalBoot::Exit);
        assert!(c.inventory.register_unknown);
        assert_eq!(c.public_url, None);
        assert!(c.restore.peers, "restore waves are on by default");
        assert_eq!(c.restore.peer_port, 7410);
    }

    #[test]
    fn a_rooms_peers_setting_wins_over_restore_peers() {
        let dir = root();
        let rooms = "[[rooms]]\nname = \"101\"\nwol_broadcast = \"10.1.1.255\"\npeers = false\n\
                     [[rooms]]\nname = \"102\"\nwol_broadcast = \"10.1.2.255\"\n";
        let c = parse(&format!("{}{rooms}", minimal(dir.path()))).unwrap();
        assert!(!peers(&c.restore, &c.rooms, Some("101")));
        assert!(peers(&c.restore, &c.rooms, Some("102")), "102 says nothing");
        assert!(peers(&c.restore, &c.rooms, None), "no room");
        let off = format!("{}[restore]\npeers = false\n{rooms}", minimal(dir.path()));
        let c = parse(&off).unwrap();
        assert!(!peers(&c.restore, &c.rooms, Some("102")));
        let c = parse(&off.replace(
            "wol_broadcast = \"10.1.1.255\"\npeers = false",
            "wol_broadcast = \"10.1.1.255\"\npeers = true",
        ))
        .unwrap();
        assert!(!c.restore.peers);
        assert!(
            peers(&c.restore, &c.rooms, Some("101")),
            "the room's true wins over restore's false"
        );
    }

    #[test]
    fn kms_images_and_restore_sections_get_defaults_and_refuse_bad_values() {
        let dir = root();
        let base = minimal(dir.path());
        let c = parse(&format!("{base}[kms]\nhost = \"kms.school.example\"\n")).unwrap();
        let kms = c.kms.unwrap();
        assert_eq!((kms.port, kms.windows, kms.office), (1688, true, true));
        assert_eq!(c.restore.kernel, "vmlinuz");
        assert_eq!(c.restore.dir, Path::new("/tmp/x/restore"));
        assert_eq!(
            c.restore.token_ttl,
            std::time::Duration::from_secs(4 * 3600)
        );
        assert!(
            parse(&base).unwrap().kms.is_none(),
            "no [kms]: plain resets only"
        );
        let cases = [
            ("[kms]\nport = 1688\n", "kms.host"),
            ("[kms]\nhost = \"kms & del x\"\n", "kms.host"),
            (
                "[kms]\nhost = \"k\"\nfamilies = [\"linux\"]\n",
                "kms.families",
            ),
            ("[kms]\nhost = \"k\"\nfamilies = []\n", "kms.families"),
            (
                "[images]\nfat_label = \"FAR TOO LONG LABEL\"\n",
                "images.fat_label",
            ),
            ("[restore]\nkernel = \"../vmlinuz\"\n", "restore.kernel"),
            ("[restore]\ninitrd = \"a b\"\n", "restore.initrd"),
            (
                "[restore]\ncmdline = \"quiet || reboot\"\n",
                "restore.cmdline",
            ),
            (
                "[restore]\ncmdline = \"netreset.server=x\"\n",
                "restore.cmdline",
            ),
            ("[restore]\ntoken_ttl = \"10s\"\n", "restore.token_ttl"),
            ("[restore]\ndisk = \"sda\"\n", "restore.disk"),
            ("[restore]\ndisk = \"/dev/../sda\"\n", "restore.disk"),
            (
                "[restore]\ndisk = \"/dev/disk/by-id/nvme-x\"\n",
                "restore.disk",
            ),
            ("[restore]\ndisk = \"serial:\"\n", "restore.disk"),
            ("[restore]\ndisk = \"serial:AB 12\"\n", "restore.disk"),
            ("[restore]\nmax_mbit = 0\n", "restore.max_mbit"),
            ("[restore]\npeer_port = 0\n", "restore.peer_port"),
            (
                "[[inventory.stations]]\nmac = \"52:54:00:00:00:01\"\ndisk = \"/dev/sda 1\"\n",
                "inventory.stations[0].disk",
            ),
            ("[api]\ntoken = \"short\"\n", "api.token"),
            (
                "[[rooms]]\nname = \"101\"\nwol_broadcast = \"10.1.1\"\n",
                "rooms[0].wol_broadcast",
            ),
            (
                "[[rooms]]\nname = \"\"\nwol_broadcast = \"10.1.1.255\"\n",
                "rooms[0].name",
            ),
            (
                "[api]\ntoken = \"0123456789abcdef\"\ntoken_file = \"x\"\n",
                "api.token",
            ),
        ];
        for (extra, key) in cases {
            let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.starts_with(key), "{extra}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = root();
        let err = parse(&format!(
            "{}[http]\nlisten_addr = \"1.2.3.4:5\"\n",
            minimal(dir.path())
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let dir = root();
        let base = minimal(dir.path());
        let cases = [
            ("[http]\nlisten = \"8080\"\n", "http.listen", "8080"),
            (
                "[http]\npublic_url = \"ftp://x\"\n",
                "http.public_url",
                "ftp://x",
            ),
            (
                "[boot]\nbios = \"../../etc/passwd\"\n",
                "boot.bios",
                "../../etc/passwd",
            ),
            (
                "[inventory]\nstations = [{ mac = \"52:54:00:zz:00:01\" }]\n",
                "inventory.stations[0].mac",
                "52:54:00:zz:00:01",
            ),
            (
                "[inventory]\nevents_per_station = 0\n",
                "inventory.events_per_station",
                "0",
            ),
            (
                "[inventory]\nmax_unknown = 2000000\n",
                "inventory.max_unknown",
                "2000000",
            ),
        ];
        for (extra, key, value) in cases {
            let err = parse(&format!("{base}{extra}")).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(value), "{extra}: {err}");
        }
        let err = parse(&base.replace(
            "interface = \"eth0\"",
            "interface = \"eth0\"\nserver_ip = \"10.0.0.256\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("dhcp.server_ip") && err.contains("10.0.0.256"),
            "{err}"
        );
        let err = parse(&base.replace("interface = \"eth0\"", "mode = \"prox\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode") && err.contains("prox"), "{err}");
        let err = parse("[tftp]\nroot = \"/nonexistent/netreset\"\n[dhcp]\ninterface = \"eth0\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tftp.root") && err.contains("/nonexistent/netreset"),
            "{err}"
        );
    }

    #[test]
    fn schedule_windows_school_days_and_holidays_parse_and_bad_ones_are_named() {
        let dir = root();
        let base = format!(
            "{}[schedule]\ntime_zone = \"Europe/Berlin\"\n\
             [[schedule.windows]]\ndays = [\"mon\", \"fri\"]\nstart = \"22:00\"\nend = \"05:30\"\n",
            minimal(dir.path())
        );
        let ok = parse(&format!(
            "{base}[[schedule.holidays]]\nname = \"winter break\"\nfrom = \"2026-12-21\"\nto = \"2027-01-06\"\n"
        ))
        .unwrap();
        let s = ok.schedule.expect("a schedule");
        assert_eq!(s.school_days, crate::engine::schedule::WEEKDAYS);
        assert_eq!(s.holidays.len(), 1);
        assert_eq!(s.holidays[0].to, jiff::civil::date(2027, 1, 6));
        let six = parse(&base.replace(
            "[[schedule.windows]]",
            "school_days = [\"mon\", \"sat\"]\n[[schedule.windows]]",
        ))
        .unwrap();
        assert_eq!(
            six.schedule.unwrap().school_days,
            [true, false, false, false, false, true, false]
        );
        let cases = [
            (
                "from = \"2026-12-21\"\nto = \"2026-12-20\"",
                "schedule.holidays[0].to",
                "2026-12-20",
            ),
            (
                "from = \"2026-13-01\"\nto = \"2027-01-06\"",
                "schedule.holidays[0].from",
                "2026-13-01",
            ),
            (
                "from = \"21.12.2026\"\nto = \"2027-01-06\"",
                "schedule.holidays[0].from",
                "21.12.2026",
            ),
        ];
        for (holiday, key, value) in cases {
            let err = parse(&format!("{base}[[schedule.holidays]]\n{holiday}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(value), "{holiday}: {err}");
        }
        let err = parse(&base.replace(
            "[[schedule.windows]]",
            "school_days = [\"monday\"]\n[[schedule.windows]]",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("schedule.school_days") && err.contains("monday"),
            "{err}"
        );
    }

    #[test]
    fn disks_are_kernel_names_or_serial_numbers_and_nothing_else() {
        for good in [
            "/dev/nvme0n1",
            "/dev/sda",
            "/dev/mmcblk0",
            "serial:S64ANS0R123456",
            "serial:WD-WX12A3456789",
        ] {
            assert!(check_disk("disk", good).is_ok(), "{good}");
        }
        for bad in [
            "sda",
            "/dev/",
            "/dev//sda",
            "/dev/../sda",
            "/dev/sda;reboot",
            "/dev/disk/by-id/nvme-x",
            "serial:",
            "serial:a b",
            "serial:$(reboot)",
        ] {
            let err = check_disk("restore.disk", bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("restore.disk = {bad:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn proxy_mode_without_interface_or_address_is_refused() {
        let dir = root();
        let text = format!("[tftp]\nroot = \"{}\"\n", dir.path().display());
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("dhcp.interface"), "{err}");
        let off = format!("{text}[dhcp]\nmode = \"off\"\n");
        assert_eq!(parse(&off).unwrap().dhcp.mode, DhcpMode::Off);
    }

    #[test]
    fn the_shipped_example_files_are_valid() {
        for name in ["netreset.toml", "demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../configs")
                .join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let raw: RawConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            // tftp.root may not exist on a build machine without the ipxe package; the
            // rest must validate.
            let dir = root();
            let raw = RawConfig {
                tftp: RawTftp {
                    root: Some(dir.path().display().to_string()),
                    ..raw.tftp
                },
                ..raw
            };
            Config::from_raw(raw, Path::new(".")).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
