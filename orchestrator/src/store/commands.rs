//! Commands queued for agents, under MAC + sequence: handed out oldest first, each
//! once (the take is a remove).

use pxe::MacAddr;
use serde::{Deserialize, Serialize};

use super::{decode, Store, StoreError};

/// A command for a station's agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: String,
    /// `reboot` or `shutdown`.
    pub command: String,
    /// Even with a user logged on (the agent warns the user first).
    #[serde(default)]
    pub force: bool,
    /// Unix milliseconds.
    pub queued_at: u64,
}

impl Command {
    /// As the station's events show it: `reboot (00000000000000a1, forced)`.
    pub fn describe(&self) -> String {
        let forced = if self.force { ", forced" } else { "" };
        format!("{} ({}{forced})", self.command, self.id)
    }
}

impl Store {
    /// Queue a command for the agent of `mac`; `force`: even with a user logged on.
    pub fn queue_command(
        &self,
        mac: MacAddr,
        command: &str,
        force: bool,
    ) -> Result<Command, StoreError> {
        let seq = self.db.generate_id()?;
        let cmd = Command {
            id: format!("{seq:016x}"),
            command: command.to_owned(),
            force,
            queued_at: self.clock.now_ms(),
        };
        let mut key = [0u8; 14];
        key[..6].copy_from_slice(&mac.octets());
        key[6..].copy_from_slice(&seq.to_be_bytes());
        self.commands
            .insert(key, serde_json::to_vec(&cmd).expect("command serializes"))?;
        self.commands.flush()?;
        Ok(cmd)
    }

    /// Take the oldest queued command of `mac`: it is handed out once.
    pub fn take_command(&self, mac: MacAddr) -> Result<Option<Command>, StoreError> {
        while let Some((key, value)) = self.commands.scan_prefix(mac.octets()).next().transpose()? {
            if self.commands.remove(&key)?.is_some() {
                self.commands.flush()?;
                return decode(&mac.to_string(), &value).map(Some);
            }
        }
        Ok(None)
    }
}
