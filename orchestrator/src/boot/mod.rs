//! The boot side of the orchestrator: the `BootPolicy` the protocol servers ask at
//! every step of a boot (`policy`), the recorder of what each station's boot did
//! (`recorder`), and the tokens that bind restores and agents to a station
//! (`tokens`).

pub mod policy;
pub mod recorder;
pub mod tokens;
