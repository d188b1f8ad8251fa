//! Network boot protocol servers for netreset: ProxyDHCP (`dhcp`), TFTP (`tftp`), and
//! the scripts the loaders run: iPXE's (`ipxe`) and GRUB's (`grub`, the Secure Boot
//! path).
//!
//! The servers hold no policy and no campaign state. Every decision about a machine
//! ("boot the local disk", "chain this kernel", "stay silent") is asked of one trait,
//! [`BootPolicy`], which the orchestrator implements. The servers may ask it several
//! times per boot attempt, once per step.
//!
//! Without its default feature `servers`, the crate is only what every netreset
//! crate shares: [`MacAddr`], the policy's types and the script renderer.

#[cfg(feature = "servers")]
pub mod dhcp;
mod error;
pub mod grub;
pub mod ipxe;
mod mac;
mod policy;
#[cfg(feature = "servers")]
pub mod stats;
#[cfg(feature = "servers")]
pub mod tftp;
#[cfg(feature = "servers")]
mod workers;

pub use error::Error;
pub use mac::MacAddr;
pub use policy::{
    Arch, BootDecision, BootPolicy, BootStep, ChainTarget, Firmware, Loader, Machine, Observation,
    TftpFile,
};
