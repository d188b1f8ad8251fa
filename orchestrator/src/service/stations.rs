//! The inventory as the admin sees and changes it: the stations, one with its reset
//! and its recent events, and a station's settings.

use pxe::MacAddr;

use super::{Error, Services};
use crate::store::{Event, Reset, Settings, Station};

/// One station, its reset (if one was asked for) and its recent events.
pub struct Detail {
    pub station: Station,
    pub reset: Option<Reset>,
    pub events: Vec<Event>,
}

pub fn list(state: &Services) -> Result<Vec<Station>, Error> {
    Ok(state.policy.store().stations()?)
}

pub fn show(state: &Services, mac: MacAddr) -> Result<Detail, Error> {
    let store = state.policy.store();
    let station = store
        .station(mac)?
        .ok_or_else(|| Error::NotFound(format!("no station {mac}")))?;
    Ok(Detail {
        station,
        reset: store.reset(mac)?,
        events: store.events(mac)?,
    })
}

fn label(key: &str, value: &str) -> Result<(), Error> {
    if value.is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{key} {value:?}: 1 to 64 characters, no control characters"
        )));
    }
    Ok(())
}

/// Change the settings of `mac` (name, room, image, kms_activation, disk); what
/// `settings` leaves out stays as it is. Every value is checked before anything is
/// written. The KMS flag takes effect at the station's next reset.
pub fn configure(state: &Services, mac: MacAddr, settings: &Settings) -> Result<Station, Error> {
    if let Some(name) = &settings.name {
        label("name", name)?;
    }
    if let Some(room) = &settings.room {
        label("room", room)?;
    }
    if let Some(image) = &settings.image {
        images::check_name(image).map_err(|e| Error::Invalid(e.to_string()))?;
    }
    if let Some(disk) = &settings.disk {
        crate::config::check_disk("disk", disk).map_err(|e| Error::Invalid(e.to_string()))?;
    }
    let store = state.policy.store();
    if store.station(mac)?.is_none() {
        return Err(Error::NotFound(format!(
            "no station {mac} (stations register at their first PXE boot, or in [[inventory.stations]])"
        )));
    }
    Ok(store.configure(mac, settings)?)
}
