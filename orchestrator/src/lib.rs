//! netreset's orchestrator: configuration, the station inventory, the boot policy, the
//! HTTP API and the daemon that wires them to the `pxe` servers.

pub mod api;
pub mod boot;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod http;
pub mod lock;
pub mod power;
pub mod runner;
pub mod service;
pub mod sim;
pub mod staging;
pub mod store;

pub use config::Config;
pub use daemon::Daemon;
