//! The inventory as the admin sees and changes it: the stations, one with its reset
//! and its recent events, and a station's settings.

use std::collections::HashMap;
use std::sync::Arc;

use pxe::MacAddr;

use super::views::{CaptureView, EventView, ResetView, StationDetail, StationState, StationView};
use super::{Error, Services};
use crate::engine::campaign::{Phase, State};
use crate::store::{Settings, Station};

/// The station list as JSON, made once per change of the store: the dashboard and
/// scripts ask for it often, and with 2,000 stations making it costs milliseconds.
#[derive(Debug, Default)]
pub struct ListCache(std::sync::Mutex<Option<(u64, Arc<[u8]>)>>);

/// [`list`] as JSON, and the store version it shows (an ETag).
pub fn list_json(state: &Services) -> Result<(u64, Arc<[u8]>), Error> {
    let version = state.policy.store().version();
    if let Some((v, json)) = &*state
        .station_list
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    {
        if *v == version {
            return Ok((version, json.clone()));
        }
    }
    let json: Arc<[u8]> = serde_json::to_vec(&list(state)?)
        .map_err(|e| Error::Internal(e.to_string()))?
        .into();
    *state
        .station_list
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some((version, json.clone()));
    Ok((version, json))
}

/// Every station with the state it shows (its phase in a running campaign, else
/// its reset's).
pub fn list(state: &Services) -> Result<Vec<StationView>, Error> {
    let store = state.policy.store();
    let phases = running_phases(state)?;
    store
        .stations()?
        .iter()
        .map(|st| view(state, st, &phases))
        .collect()
}

/// The view of one station.
pub fn view(
    state: &Services,
    st: &Station,
    phases: &HashMap<MacAddr, Phase>,
) -> Result<StationView, Error> {
    let reset = state.policy.store().reset(st.mac)?;
    let shown = StationState::of(st, phases.get(&st.mac), reset.as_ref());
    Ok(StationView::new(st, shown, reset.as_ref()))
}

/// The phase of every station in a running campaign.
pub fn running_phases(state: &Services) -> Result<HashMap<MacAddr, Phase>, Error> {
    Ok(state
        .policy
        .store()
        .campaigns()?
        .into_iter()
        .filter(|r| r.campaign.state == State::Running)
        .flat_map(|r| r.campaign.stations.into_iter().map(|s| (s.mac, s.phase)))
        .collect())
}

/// One station, its reset (if one was asked for) and its recent events.
pub fn show(state: &Services, mac: MacAddr) -> Result<StationDetail, Error> {
    let store = state.policy.store();
    let station = store
        .station(mac)?
        .ok_or_else(|| Error::NotFound(format!("no station {mac}")))?;
    let reset = store.reset(mac)?;
    let shown = StationState::of(&station, running_phases(state)?.get(&mac), reset.as_ref());
    let boot_loader = state.policy.loader_of(Some(&station)).into();
    Ok(StationDetail {
        station: StationView::new(&station, shown, reset.as_ref()),
        boot_loader,
        reset: reset.as_ref().map(ResetView::new),
        capture: store.capture(mac)?.as_ref().map(CaptureView::new),
        events: store.events(mac)?.iter().map(EventView::from).collect(),
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

/// Change the settings of `mac` (name, room, image, kms_activation, disk,
/// secure_boot); what
/// `settings` leaves out stays as it is. Every value is checked before anything is
/// written. The KMS flag takes effect at the station's next reset.
pub fn configure(
    state: &Services,
    mac: MacAddr,
    settings: &Settings,
) -> Result<StationView, Error> {
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
    let station = store.configure(mac, settings)?;
    view(state, &station, &running_phases(state)?)
}
