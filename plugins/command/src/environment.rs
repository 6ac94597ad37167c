//! `command`: an environment run by a long-lived child process (see [`crate::protocol`]). The tools are asked
//! for once (a `tools` request), then every round of finished turns goes out as one `step` request with each
//! episode's row, conversation, turn number and `last` flag; one reply per turn comes back.

use sdk::{from_table, register_environment, replies_from_json, tools_from_json, EnvReply, EnvTurn, Environment, Plugin, PluginError};
use serde_json::{json, Value};

use crate::child::{ChildProcess, ChildSettings};

pub struct CommandEnvironment {
    settings: ChildSettings,
    child: Option<ChildProcess>,
}

impl Plugin for CommandEnvironment {
    const NAME: &'static str = "command";
    const SUMMARY: &'static str = "an environment in a child process in any language (JSON lines; python/host_plugin.py)";
    fn from_config(config: &sdk::toml::Table) -> Result<Self, PluginError> {
        let settings: ChildSettings = from_table(config)?;
        settings.check().map_err(PluginError::Config)?;
        Ok(CommandEnvironment { settings, child: None })
    }
}

impl CommandEnvironment {
    fn request(&mut self, request: Value, expected: &str, key: &str) -> Result<(Value, String), PluginError> {
        let child = match &mut self.child {
            Some(c) => c,
            None => self.child.insert(ChildProcess::start(&self.settings, "environment").map_err(PluginError::Failed)?),
        };
        match child.request(request, expected, key) {
            Ok(a) => Ok((a, child.what().to_owned())),
            Err(e) => {
                // The process is in an unknown state: a later call (if any) starts a fresh one.
                self.child = None;
                Err(PluginError::Failed(e))
            }
        }
    }
}

impl Environment for CommandEnvironment {
    fn tools(&mut self) -> Result<Vec<Value>, PluginError> {
        let (answer, what) = self.request(json!({"type": "tools"}), "tools", "tools")?;
        tools_from_json(&answer).map_err(|e| PluginError::Invalid(format!("{what}: {e}")))
    }

    fn step(&mut self, turns: &[EnvTurn]) -> Result<Vec<EnvReply>, PluginError> {
        let request = json!({"type": "step", "turns": turns.iter().map(EnvTurn::to_json).collect::<Vec<Value>>()});
        let (answer, what) = self.request(request, "replies", "replies")?;
        replies_from_json(&answer, turns.len()).map_err(|e| PluginError::Invalid(format!("{what}: {e}")))
    }
}

register_environment!(CommandEnvironment);
