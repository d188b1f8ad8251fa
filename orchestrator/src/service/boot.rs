//! The iPXE script of a station: the boot policy decides (it reads and records in
//! the store), `pxe::ipxe::render` writes it, and a campaign hears that its station
//! is booting into a restore.

use std::net::IpAddr;

use pxe::ipxe::{render, LocalBoot};
use pxe::{BootDecision, BootPolicy, BootStep, Firmware, MacAddr};

use super::{Error, Services};

/// The script `{mac}.ipxe`, asked for from `peer`.
pub fn script(state: &Services, file: &str, peer: IpAddr) -> Result<String, Error> {
    let mac: MacAddr = file
        .strip_suffix(".ipxe")
        .ok_or_else(|| Error::NotFound(format!("{file:?}: scripts are named {{mac}}.ipxe")))?
        .parse()
        .map_err(|e: pxe::Error| Error::NotFound(e.to_string()))?;
    let policy = &state.policy;
    let mut machine = policy.machine(mac);
    // The address the request comes from: a restore token goes only to the station's.
    machine.ip = crate::boot::policy::ipv4(peer);
    let decision = policy.decide(&machine, BootStep::Script);
    // sanboot --drive 0x80 is a BIOS disk number; UEFI firmware boots its next boot
    // option after `exit`.
    let local = match machine.firmware {
        Firmware::Bios => policy.boot().local,
        _ => LocalBoot::Exit,
    };
    let text = render(mac, &decision, local).map_err(|e| Error::Internal(e.to_string()))?;
    policy.script_served(mac, peer, &decision);
    if matches!(decision, BootDecision::Chain(_)) {
        state
            .campaigns
            .station(mac, crate::engine::campaign::Event::PxeSeen(mac));
    }
    tracing::info!(%mac, %peer, "script served");
    Ok(text)
}
