//! ProxyDHCP for PXE: the school's DHCP server hands out addresses, netreset only tells
//! PXE clients what to boot (PXE 2.1 §2.2.4, "DHCP and ProxyDHCP on different servers").
//!
//! One path per packet, in file order: [`server`] receives, [`classify`] decides whether
//! and what the packet asks, the [`crate::BootPolicy`] decides what the machine boots,
//! [`offer`] builds the answer, [`server`] sends it.

pub mod classify;
pub mod offer;
pub mod server;

pub use classify::{classify, Listener, Request, RequestKind, Skip, VendorClass};
pub use offer::{boot_file, build, reply_addr, BootFile, BootFiles};
pub use server::{DhcpServer, DhcpSettings};
