//! The JSON a test reads: `taskq --json` output, the factory registry and
//! its timestamps.

use serde_json::Value;

use super::process::Run;
use super::root::TestRoot;

impl Run {
    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

impl TestRoot {
    /// `taskq --json show ID`, asserted to succeed.
    #[track_caller]
    pub fn show(&self, id: &str) -> Value {
        self.taskq(&["--json", "show", id]).ok().json()
    }

    /// The registry as JSON.
    pub fn registry(&self) -> Value {
        serde_json::from_str(&self.read("agents/factory/registry.json"))
            .expect("registry is valid JSON")
    }

    /// The agents of the registry, as JSON objects.
    pub fn agents(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.path().join("agents/factory/registry.json")) {
            Ok(text) => {
                let v: Value = serde_json::from_str(&text).expect("registry is valid JSON");
                v["agents"]
                    .as_object()
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// A timestamp of a registry entry (`spawned`, `completed`, ...).
#[track_caller]
pub fn timestamp(agent: &Value, key: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(
        agent[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {agent}")),
    )
    .unwrap_or_else(|e| panic!("{key} in {agent}: {e}"))
}
