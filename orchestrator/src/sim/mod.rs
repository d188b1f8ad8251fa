//! The simulator behind the demo and the campaign tests: for now the simulated KMS
//! host of KMS.md; the virtual school (stations that wake, PXE-boot, restore and
//! report over loopback) and the simulated clock come with the campaign runner.

pub mod kms_host;
