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
    /// GRUB (the Secure Boot path) asks for its configuration over TFTP.
    GrubConfig,
}

/// The kernel, initrd and command line a station should boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainTarget {
    /// Where the loader fetches the kernel: an absolute http(s) URL for iPXE, a path
    /// on our TFTP server (`/netreset/restore/vmlinuz`) for GRUB.
    pub kernel: String,
    /// The initrds, in load order, named as the kernel is.
    pub initrds: Vec<String>,
    /// Kernel command line, without `initrd=` (the iPXE renderer adds it).
    pub cmdline: String,
}

/// The boot loader a UEFI machine is given over the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loader {
    /// Debian's iPXE (unsigned): fetches its script over HTTP.
    #[default]
    Ipxe,
    /// The Secure Boot path: Microsoft-signed shim, then Debian-signed GRUB, which
    /// fetches its configuration, kernel and initrd over TFTP.
    Signed,
}

/// A file the policy makes for a TFTP request instead of the static root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TftpFile {
    /// Contents made for this request (a GRUB configuration).
    Bytes(std::sync::Arc<[u8]>),
    /// A file outside the root (the signed loaders, the restore kernel).
    Path(std::path::PathBuf),
    /// The name is the policy's, but not for this client: refused with the reason.
    Refused(String),
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

    /// The loader a UEFI x86-64 `machine` gets from DHCP. The default is iPXE.
    fn loader(&self, machine: &Machine) -> Loader {
        let _ = machine;
        Loader::Ipxe
    }

    /// A TFTP file the policy serves itself, for the checked relative `name` (`/`
    /// separators, no `..`) asked by `peer`; `None` leaves it to the static root.
    /// The default serves none.
    fn tftp_file(&self, peer: SocketAddr, name: &str) -> Option<TftpFile> {
        let _ = (peer, name);
        None
    }

    /// Record what a server did. The default drops it.
    fn observe(&self, observation: Observation) {
        let _ = observation;
    }
}
