//! The types the protocol servers speak with the orchestrator, and the [`BootPolicy`]
//! trait that holds every decision (pixiecore's `Booter` idea).

use std::net::{Ipv4Addr, SocketAddr};

use serde::Serialize;

use crate::MacAddr;

/// The processor a booting machine reports (DHCP option 93, RFC 4578 and IANA's
/// "Processor Architecture Types" registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// 32-bit x86 (BIOS PXE, option 93 value 0, or x86 BIOS HTTP boot).
    X86,
    /// x86-64.
    X64,
    /// Itanium.
    Ia64,
    /// 32-bit ARM.
    Arm32,
    /// 64-bit ARM.
    Arm64,
    /// 32-bit RISC-V.
    RiscV32,
    /// 64-bit RISC-V.
    RiscV64,
    /// 128-bit RISC-V.
    RiscV128,
    /// 32-bit LoongArch.
    LoongArch32,
    /// 64-bit LoongArch.
    LoongArch64,
    /// Any other registered or unregistered value, kept as sent.
    Other(u16),
}

/// The firmware that sent a request, which decides what it can load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// Legacy BIOS PXE ROM: loads a TFTP file.
    Bios,
    /// UEFI PXE (EDK2 and vendor firmware): loads an EFI binary over TFTP.
    Uefi,
    /// UEFI HTTP boot (vendor class `HTTPClient`): loads an EFI binary from an http URL.
    UefiHttp,
    /// BIOS HTTP boot (option 93 value 20).
    BiosHttp,
    /// Something we have no boot file for (U-Boot, Open Firmware, s390, ...).
    Other,
}

/// What the protocol servers know of a booting machine when they ask the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub mac: MacAddr,
    pub arch: Arch,
    pub firmware: Firmware,
    /// The request came from iPXE (user class `iPXE` or option 175): it wants a script.
    pub ipxe: bool,
    /// Client machine identifier (option 97), as sent: type octet then the UUID.
    pub uuid: Option<Vec<u8>>,
    /// The address the client has or asks for, when the packet says.
    pub ip: Option<Ipv4Addr>,
}

/// Which step of a boot attempt is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootStep {
    /// DISCOVER or REQUEST on port 67 (the ProxyDHCP offer).
    DhcpOffer,
    /// REQUEST on port 4011 (PXE boot server discovery).
    Pxe4011,
    /// iPXE asks for its script over HTTP.
    Script,
}

/// The kernel, initrd and command line a station should boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainTarget {
    /// Absolute http(s) URL of the kernel.
    pub kernel: String,
    /// Absolute http(s) URLs of the initrds, in load order.
    pub initrds: Vec<String>,
    /// Kernel command line.
    pub cmdline: String,
}

/// What to do with a machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum BootDecision {
    /// Do not answer: the machine falls through to its next boot device.
    Ignore,
    /// Boot the local disk (the iPXE script exits or sanboots drive 0x80).
    LocalDisk,
    /// Boot this kernel and initrd (the restore environment).
    Chain(ChainTarget),
}

/// Something a protocol server saw, for the orchestrator's records.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A ProxyDHCP answer was sent on port 67.
    DhcpOffer {
        machine: Machine,
        xid: u32,
        boot_file: String,
    },
    /// A boot server answer was sent on port 4011.
    Pxe4011 {
        machine: Machine,
        xid: u32,
        boot_file: String,
    },
    /// A TFTP read request was accepted. TFTP knows only the peer's address.
    Tftp {
        peer: SocketAddr,
        file: String,
        size: u64,
    },
    /// A TFTP read request was refused.
    TftpRefused {
        peer: SocketAddr,
        file: String,
        reason: String,
    },
}

/// The one place boot decisions are made. The servers call it on their own tasks, so
/// it must be cheap and must not block for long.
pub trait BootPolicy: Send + Sync + 'static {
    /// Decide what `machine` boots. Called at each step of a boot attempt.
    fn decide(&self, machine: &Machine, step: BootStep) -> BootDecision;

    /// Record what a server did. The default drops it.
    fn observe(&self, observation: Observation) {
        let _ = observation;
    }
}
