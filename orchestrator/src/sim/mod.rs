//! The simulator behind the demo and the campaign tests: the simulated KMS host of
//! docs/kms.md, and a virtual school whose stations wake, boot, restore, activate and
//! report over loopback.

pub mod firmware;
pub mod kms_host;
pub mod school;
