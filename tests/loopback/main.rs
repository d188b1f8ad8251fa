//! Loopback integration tests: the real daemon on 127.0.0.1 with ephemeral ports,
//! clients speaking real DHCP, TFTP and HTTP to it. No root needed.

mod agent;
mod auth;
mod boot_path;
mod campaign;
mod capture;
mod chunks;
mod events;
mod metrics;
mod openapi;
mod peers;
mod restore;
mod secure_boot;
mod support;
mod tftp;
