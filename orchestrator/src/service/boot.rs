//! What a station's loader runs: the iPXE script (over HTTP) or, on the Secure Boot
//! path, GRUB's configuration (over TFTP). The boot policy decides (it reads and
//! records in the store), `pxe::ipxe::render` or `pxe::grub::render` writes it, and a
//! campaign hears that its station is booting into a restore.

use std::net::{IpAddr, SocketAddr};

use pxe::ipxe::LocalBoot;
use pxe::{
    BootDecision, BootPolicy, BootStep, Firmware, Loader, MacAddr, Machine, Observation, TftpFile,
};

use super::{campaigns, Error, Services};
use crate::boot::policy::Orchestrator;

/// The script `{mac}.ipxe`, asked for from `peer`.
pub fn script(state: &Services, file: &str, peer: IpAddr) -> Result<String, Error> {
    let mac: MacAddr = file
        .strip_suffix(".ipxe")
        .ok_or_else(|| Error::NotFound(format!("{file:?}: scripts are named {{mac}}.ipxe")))?
        .parse()
        .map_err(|e: pxe::Error| Error::NotFound(e.to_string()))?;
    let (machine, decision) = decide(&state.policy, mac, peer, BootStep::Script);
    // sanboot --drive 0x80 is a BIOS disk number; UEFI firmware boots its next boot
    // option after `exit`.
    let local = match machine.firmware {
        Firmware::Bios => state.policy.boot().local,
        _ => LocalBoot::Exit,
    };
    let text =
        pxe::ipxe::render(mac, &decision, local).map_err(|e| Error::Internal(e.to_string()))?;
    served(
        &state.policy,
        &state.campaigns,
        mac,
        peer,
        BootStep::Script,
        &decision,
    );
    tracing::info!(%mac, %peer, "script served");
    Ok(text)
}

/// GRUB's configuration `{mac}.cfg` (under `pxe::grub::STATION_DIR`), asked for
/// over TFTP from `peer`: the same decision as the iPXE script, with the restore
/// environment loaded over TFTP.
pub fn grub_config(
    policy: &Orchestrator,
    campaigns: &campaigns::Handle,
    file: &str,
    peer: IpAddr,
) -> Result<String, Error> {
    let mac: MacAddr = file
        .strip_suffix(".cfg")
        .ok_or_else(|| Error::NotFound(format!("{file:?}: GRUB configurations are {{mac}}.cfg")))?
        .parse()
        .map_err(|e: pxe::Error| Error::NotFound(e.to_string()))?;
    let (_, decision) = decide(policy, mac, peer, BootStep::GrubConfig);
    let text = pxe::grub::render(mac, &decision).map_err(|e| Error::Internal(e.to_string()))?;
    served(
        policy,
        campaigns,
        mac,
        peer,
        BootStep::GrubConfig,
        &decision,
    );
    tracing::info!(%mac, %peer, "grub configuration served");
    Ok(text)
}

/// What `mac` boots when its loader asks from `peer`: a restore token goes only to
/// the station's own address.
fn decide(
    policy: &Orchestrator,
    mac: MacAddr,
    peer: IpAddr,
    step: BootStep,
) -> (Machine, BootDecision) {
    let mut machine = policy.machine(mac);
    machine.ip = crate::boot::policy::ipv4(peer);
    let decision = policy.decide(&machine, step);
    (machine, decision)
}

fn served(
    policy: &Orchestrator,
    campaigns: &campaigns::Handle,
    mac: MacAddr,
    peer: IpAddr,
    step: BootStep,
    decision: &BootDecision,
) {
    policy.script_served(mac, peer, step, decision);
    if matches!(decision, BootDecision::Chain(_)) {
        campaigns.station(mac, crate::engine::campaign::Event::PxeSeen(mac));
    }
}

/// The policy the TFTP server asks: the boot policy, and beside it the stations'
/// GRUB configurations, which (like a script) tell a campaign that its station is
/// booting into a restore.
#[derive(Clone)]
pub struct TftpPolicy {
    pub policy: Orchestrator,
    pub campaigns: campaigns::Handle,
}

impl BootPolicy for TftpPolicy {
    fn decide(&self, machine: &Machine, step: BootStep) -> BootDecision {
        self.policy.decide(machine, step)
    }

    fn loader(&self, machine: &Machine) -> Loader {
        self.policy.loader(machine)
    }

    fn tftp_file(&self, peer: SocketAddr, name: &str) -> Option<TftpFile> {
        let Some(file) = name
            .strip_prefix(pxe::grub::STATION_DIR)
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return self.policy.tftp_file(peer, name);
        };
        Some(
            match grub_config(&self.policy, &self.campaigns, file, peer.ip()) {
                Ok(text) => TftpFile::Bytes(text.into_bytes().into()),
                Err(e) => TftpFile::Refused(e.to_string()),
            },
        )
    }

    fn observe(&self, observation: Observation) {
        self.policy.observe(observation)
    }
}
