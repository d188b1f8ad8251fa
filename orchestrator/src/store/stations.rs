//! Stations: one record per MAC (key: the 6 octets), changed only through
//! [`Store::update`], which keeps the in-memory set of known MACs in step; and an
//! index from the last IPv4 address seen to the MAC (TFTP knows only addresses).

use std::net::Ipv4Addr;

use pxe::{Arch, Firmware, MacAddr};
use serde::{Deserialize, Serialize};

use super::{decode, get, label, Store, StoreError};

/// One station as the inventory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Station {
    pub mac: MacAddr,
    pub name: Option<String>,
    pub room: Option<String>,
    /// Processor from option 93, as text (`x64`, `x86`, ...).
    pub arch: Option<String>,
    /// Firmware family (`bios`, `uefi`, `uefi-http`, ...).
    pub firmware: Option<String>,
    /// SMBIOS UUID from option 97, as 32 hex digits.
    pub uuid: Option<String>,
    pub ip: Option<Ipv4Addr>,
    /// Unix milliseconds.
    pub first_seen: Option<u64>,
    pub last_seen: Option<u64>,
    /// Whether the agent last said an interactive user is logged on (it says so with
    /// every command poll and report): such a station is `in-use` and is not
    /// rebooted unless the admin forces it.
    #[serde(default)]
    pub logged_in: bool,
    /// Unix milliseconds of that word.
    #[serde(default)]
    pub logged_in_at: Option<u64>,
    /// Unix milliseconds of the agent's last report, and of its last command poll.
    #[serde(default)]
    pub last_report: Option<u64>,
    #[serde(default)]
    pub last_poll: Option<u64>,
    /// The image the station is reset to when a reset names none.
    #[serde(default)]
    pub image: Option<String>,
    /// The reset generation of the image the station runs (its last completed reset):
    /// that image's agent token stays good whatever happens to later resets.
    #[serde(default)]
    pub agent_generation: Option<u64>,
    /// The KMS families that image's agent was asked to activate.
    #[serde(default)]
    pub agent_families: Vec<String>,
    /// KMS activation: its resets use the kms profile unless a reset says otherwise.
    /// Like the vendor's manual says, it takes effect at the station's next reset.
    #[serde(default)]
    pub kms_activation: bool,
    /// The disk its restores write (`/dev/...` in the restore environment); unset:
    /// `restore.disk`. netreset never guesses a disk.
    #[serde(default)]
    pub disk: Option<String>,
    /// It boots the signed path (shim, GRUB) for Secure Boot; unset: its room's
    /// setting, else `boot.secure_boot`.
    #[serde(default)]
    pub secure_boot: Option<bool>,
    /// The admin vouched for it: listed in `[[inventory.stations]]` or set with
    /// `PUT /api/v1/stations/{mac}`. Only confirmed stations count toward the KMS
    /// guard; one that registered by itself from DHCP could be anyone's laptop.
    #[serde(default)]
    pub confirmed: bool,
}

/// The admin's settings of a station (the body of `PUT /api/v1/stations/{mac}`);
/// `None` leaves a setting as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub name: Option<String>,
    pub room: Option<String>,
    pub image: Option<String>,
    pub kms_activation: Option<bool>,
    pub disk: Option<String>,
    /// Boot the signed path (shim, GRUB) for Secure Boot, or iPXE.
    pub secure_boot: Option<bool>,
}

impl Station {
    /// A station known by MAC only.
    pub fn new(mac: MacAddr) -> Station {
        Station {
            mac,
            name: None,
            room: None,
            arch: None,
            firmware: None,
            uuid: None,
            ip: None,
            first_seen: None,
            last_seen: None,
            logged_in: false,
            logged_in_at: None,
            last_report: None,
            last_poll: None,
            image: None,
            agent_generation: None,
            agent_families: Vec::new(),
            kms_activation: false,
            disk: None,
            secure_boot: None,
            confirmed: false,
        }
    }
}

/// What a booting station told us, merged into its record by [`Store::saw`].
#[derive(Clone, Debug, Default)]
pub struct Sighting {
    pub arch: Option<Arch>,
    pub firmware: Option<Firmware>,
    pub uuid: Option<Vec<u8>>,
    pub ip: Option<Ipv4Addr>,
}

impl Store {
    /// One station, if known.
    pub fn station(&self, mac: MacAddr) -> Result<Option<Station>, StoreError> {
        get(&self.stations, mac.octets(), || mac.to_string())
    }

    /// Whether the inventory has `mac` (a read error counts as unknown). Cheap: the
    /// DHCP hot path asks it for every packet.
    pub fn contains(&self, mac: MacAddr) -> bool {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&mac)
    }

    /// How many stations the inventory holds.
    pub fn station_count(&self) -> usize {
        self.known.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many known stations the admin has not confirmed.
    fn unconfirmed(&self) -> usize {
        self.known
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|confirmed| !**confirmed)
            .count()
    }

    /// All stations, in MAC order.
    pub fn stations(&self) -> Result<Vec<Station>, StoreError> {
        self.stations
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&format!("{k:?}"), &v)
            })
            .collect()
    }

    /// Add a station or change its settings (from the configuration's inventory at
    /// start, or `PUT /api/v1/stations/{mac}`); what `settings` leaves `None` is kept.
    /// The station is confirmed from then on.
    pub fn configure(&self, mac: MacAddr, settings: &Settings) -> Result<Station, StoreError> {
        self.update(mac, |st| {
            st.confirmed = true;
            if let Some(name) = &settings.name {
                st.name = Some(name.clone());
            }
            if let Some(room) = &settings.room {
                st.room = Some(room.clone());
            }
            if let Some(image) = &settings.image {
                st.image = Some(image.clone());
            }
            if let Some(flag) = settings.kms_activation {
                st.kms_activation = flag;
            }
            if let Some(disk) = &settings.disk {
                st.disk = Some(disk.clone());
            }
            if let Some(flag) = settings.secure_boot {
                st.secure_boot = Some(flag);
            }
        })
    }

    /// Record a sighting of `mac`: create the record when `create` is set, merge what
    /// the packet said, refresh last_seen. Returns the record, or `None` when the
    /// station is unknown and `create` is false.
    pub fn saw(
        &self,
        mac: MacAddr,
        sighting: &Sighting,
        create: bool,
    ) -> Result<Option<Station>, StoreError> {
        if !self.contains(mac) {
            if !create {
                return Ok(None);
            }
            if self.unconfirmed() >= self.max_unknown {
                self.warn_full();
                return Ok(None);
            }
        }
        let now = self.clock.now_ms();
        let station = self.update(mac, |st| {
            if let Some(arch) = sighting.arch {
                st.arch = Some(label(arch));
            }
            if let Some(fw) = sighting.firmware {
                st.firmware = Some(label(fw));
            }
            if let Some(uuid) = &sighting.uuid {
                // Option 97 is a type octet followed by the 16-octet UUID.
                st.uuid = Some(uuid.iter().skip(1).map(|b| format!("{b:02x}")).collect());
            }
            if sighting.ip.is_some() {
                st.ip = sighting.ip;
            }
            st.first_seen.get_or_insert(now);
            st.last_seen = Some(now);
        })?;
        if let Some(ip) = sighting.ip {
            self.by_ip.insert(ip.octets(), &mac.octets())?;
        }
        Ok(Some(station))
    }

    /// The station last seen at `ip`.
    pub fn mac_at(&self, ip: Ipv4Addr) -> Result<Option<MacAddr>, StoreError> {
        Ok(self
            .by_ip
            .get(ip.octets())?
            .and_then(|v| <[u8; 6]>::try_from(v.as_ref()).ok())
            .map(MacAddr))
    }

    /// Note that the agent of `mac` asked for commands just now (a sign of life),
    /// and what it said of its user, when it said anything.
    pub fn agent_polled(&self, mac: MacAddr, logged_in: Option<bool>) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        self.update(mac, |st| {
            st.last_poll = Some(now);
            if let Some(logged_in) = logged_in {
                st.logged_in = logged_in;
                st.logged_in_at = Some(now);
            }
        })?;
        Ok(())
    }

    /// Note that `mac` now runs the image of reset `generation`, whose agent
    /// activates `families`.
    pub fn set_agent_generation(
        &self,
        mac: MacAddr,
        generation: u64,
        families: &[String],
    ) -> Result<(), StoreError> {
        self.update(mac, |st| {
            st.agent_generation = Some(generation);
            st.agent_families = families.to_vec();
        })?;
        Ok(())
    }

    /// Note that the agent of `mac` reported just now, and what it said of its user.
    pub fn agent_seen(&self, mac: MacAddr, logged_in: bool) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        self.update(mac, |st| {
            st.logged_in = logged_in;
            st.logged_in_at = Some(now);
            st.last_report = Some(now);
        })?;
        Ok(())
    }

    pub(super) fn update(
        &self,
        mac: MacAddr,
        change: impl Fn(&mut Station),
    ) -> Result<Station, StoreError> {
        let mut corrupt = None;
        let new = self.stations.update_and_fetch(mac.octets(), |old| {
            let mut st = match old.map(serde_json::from_slice::<Station>) {
                Some(Ok(st)) => st,
                Some(Err(e)) => {
                    corrupt = Some(e);
                    Station::new(mac)
                }
                None => Station::new(mac),
            };
            change(&mut st);
            Some(serde_json::to_vec(&st).expect("station serializes"))
        })?;
        if let Some(e) = corrupt {
            tracing::warn!(%mac, error = %e, "replaced a corrupt station record");
        }
        let bytes = new.expect("update_and_fetch with Some returns Some");
        let station: Station = decode(&mac.to_string(), &bytes)?;
        self.known
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mac, station.confirmed);
        self.announce(super::Change::Station(mac));
        Ok(station)
    }

    /// Say, at most once a minute, that unknown stations are no longer stored.
    fn warn_full(&self) {
        use std::sync::atomic::Ordering;
        let now = self.clock.now_ms();
        let last = self.full_warned.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 60_000
            && self
                .full_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                max_unknown = self.max_unknown,
                "inventory.max_unknown stations registered by themselves: new ones are answered but not stored (confirm real ones in [[inventory.stations]] or with PUT)"
            );
        }
    }
}
