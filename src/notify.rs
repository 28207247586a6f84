//! Notifications: the config's `notify:` list runs a command (`sh -c`) for
//! the events it names, with the event as one JSON object on stdin; and
//! `agents/factory/runtime.json`, what the running factory knows that
//! others want to see (which agents are stuck, whether it runs as a
//! service) and which notifications it already delivered, so that a
//! restart does not deliver them again.
//!
//! Each event is delivered once per occurrence to each command that names
//! it: transitions (`failed`, `idle`) happen once; standing conditions
//! (`approval_pending` per pending file, `blocked` per task and reason,
//! `stuck` per stall, `budget` and `cap_reached` per day) are keyed in the
//! runtime file and fire again only after they ended and came back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::root::Root;
use crate::task::Timestamp;

/// What a notification can be about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A request waits in `approvals/pending/` (once per file).
    ApprovalPending,
    /// A task failed for good (its retries used up, or refused by a gate).
    Failed,
    /// A task can never run as things are: no role takes it, a dependency
    /// cycle, a missing, failed or cancelled dependency.
    Blocked,
    /// An agent made no output and used no CPU for `stuck_after`.
    Stuck,
    /// Today's spend crossed `budget_warning` of the daily cost cap.
    Budget,
    /// Today's spend reached the daily cost cap: no new agents today.
    CapReached,
    /// The last agent ended and nothing else can start.
    Idle,
}

impl NotifyEvent {
    /// Every event, in the order the docs list them.
    pub const ALL: [NotifyEvent; 7] = [
        NotifyEvent::ApprovalPending,
        NotifyEvent::Failed,
        NotifyEvent::Blocked,
        NotifyEvent::Stuck,
        NotifyEvent::Budget,
        NotifyEvent::CapReached,
        NotifyEvent::Idle,
    ];

    /// The name used in the config and the JSON (`approval_pending`).
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::ApprovalPending => "approval_pending",
            NotifyEvent::Failed => "failed",
            NotifyEvent::Blocked => "blocked",
            NotifyEvent::Stuck => "stuck",
            NotifyEvent::Budget => "budget",
            NotifyEvent::CapReached => "cap_reached",
            NotifyEvent::Idle => "idle",
        }
    }
}

/// One entry of `notify:`: run `command` for the events `on`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notifier {
    /// The events this command is told about.
    pub on: Vec<NotifyEvent>,
    /// A shell command (`sh -c`); the event is one JSON object on stdin.
    pub command: String,
}

/// Runs every notifier that listens for `event` with `payload` (completed
/// with `event`, `time` and `root`) on stdin. Returns their threads (the
/// factory waits for them before it exits; each is time-limited).
pub fn deliver(
    root: &Root,
    notifiers: &[Notifier],
    event: NotifyEvent,
    mut payload: Value,
    now: Timestamp,
    timeout: Duration,
    allow: &[String],
) -> Vec<std::thread::JoinHandle<()>> {
    if let Value::Object(map) = &mut payload {
        map.insert("event".into(), Value::String(event.as_str().into()));
        map.insert(
            "time".into(),
            Value::String(crate::task::format_timestamp(now)),
        );
        map.insert("root".into(), Value::String(root.dir.display().to_string()));
    }
    let input = payload.to_string().into_bytes();
    let log = log_path(root);
    notifiers
        .iter()
        .enumerate()
        .filter(|(_, n)| n.on.contains(&event))
        .map(|(i, n)| {
            let mut cmd = Command::new("sh");
            cmd.arg("-c").arg(&n.command).current_dir(&root.dir);
            // The allowlisted environment (`hooks.env`), never all of ours.
            let env = crate::spawn::environment(
                allow,
                &[
                    ("TASKQ_ROOT".into(), root.dir.display().to_string()),
                    ("TASKQ_EVENT".into(), event.as_str().to_string()),
                ],
            );
            let mut input = input.clone();
            input.push(b'\n');
            crate::hooks::run_detached(
                cmd,
                format!("notify[{i}] {}", event.as_str()),
                input,
                timeout,
                log.clone(),
                env,
            )
        })
        .collect()
}

/// Where notification commands' output and failures are logged.
pub fn log_path(root: &Root) -> PathBuf {
    root.dir.join("agents").join("logs").join("notify.log")
}

/// `agents/factory/runtime.json`: written by the running factory only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Runtime {
    /// The factory that wrote it.
    pub pid: Option<u32>,
    /// The service unit it runs as (`TASKQ_SERVICE`), if any.
    pub service: Option<String>,
    /// Agents flagged stuck, and since when they made no progress.
    pub stuck: BTreeMap<String, Stuck>,
    /// Standing conditions already notified (see the module doc).
    pub sent: BTreeSet<String>,
}

/// An agent flagged stuck.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stuck {
    /// Its task.
    pub task: String,
    /// Its role.
    pub role: String,
    /// When it last made output or used CPU (as this factory saw it).
    pub since: Timestamp,
}

impl Runtime {
    /// The file's path.
    pub fn path(root: &Root) -> PathBuf {
        root.factory_dir().join("runtime.json")
    }

    /// Reads the file (empty when absent or unreadable: it is only a
    /// memory of what was said).
    pub fn load(root: &Root) -> Runtime {
        crate::fsutil::read_capped(&Runtime::path(root), crate::fsutil::MAX_SETTINGS)
            .ok()
            .flatten()
            .and_then(|c| serde_json::from_slice(&c.bytes).ok())
            .unwrap_or_default()
    }

    /// Writes the file.
    pub fn save(&self, root: &Root) -> crate::error::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serializable");
        crate::fsutil::write_atomic(&Runtime::path(root), text.as_bytes())
    }

    /// Keeps only the keys of `kind` (`blocked`, …) that are in `now`;
    /// returns the keys of `now` not sent yet (and marks them sent).
    pub fn standing(&mut self, kind: &str, now: &BTreeSet<String>) -> Vec<String> {
        let prefix = format!("{kind}:");
        self.sent
            .retain(|k| !k.starts_with(&prefix) || now.contains(&k[prefix.len()..]));
        now.iter()
            .filter(|k| self.sent.insert(format!("{prefix}{k}")))
            .cloned()
            .collect()
    }
}

/// What the factory last saw of an agent's progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// CPU ticks of its process group (utime + stime).
    pub cpu: u64,
    /// Its log's size.
    pub output: u64,
    /// When either last changed.
    pub since: std::time::Instant,
}

/// What a new look at an agent means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// It made progress (or stalled less than `stuck_after`).
    Fine,
    /// It moved again after being flagged.
    Recovered,
    /// It stalled for `stuck_after`: flag it (once).
    Stuck,
    /// Still stuck, already flagged.
    StillStuck,
}

/// Compares an agent's CPU time and output with the last sample (pure);
/// returns the new sample and the verdict.
pub fn stall(
    prev: Option<Sample>,
    cpu: u64,
    output: u64,
    now: std::time::Instant,
    stuck_after: Duration,
    flagged: bool,
) -> (Sample, Stall) {
    let moved = |p: &Sample| p.cpu != cpu || p.output != output;
    match prev {
        Some(p) if !moved(&p) => {
            let stalled = now.saturating_duration_since(p.since) >= stuck_after;
            let verdict = match (stalled, flagged) {
                (true, false) => Stall::Stuck,
                (_, true) => Stall::StillStuck,
                (false, false) => Stall::Fine,
            };
            (p, verdict)
        }
        _ => {
            let sample = Sample {
                cpu,
                output,
                since: now,
            };
            // A factory restarted under a flagged agent starts with no
            // sample: the flag stays until the agent moves.
            let verdict = match (prev.is_some(), flagged) {
                (true, true) => Stall::Recovered,
                (false, true) => Stall::StillStuck,
                _ => Stall::Fine,
            };
            (sample, verdict)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_stall_is_flagged_once_and_again_only_after_progress() {
        let t0 = Instant::now();
        let after = Duration::from_secs(600);
        let s = |secs| t0 + Duration::from_secs(secs);
        let (a, v) = stall(None, 10, 0, s(0), after, false);
        assert_eq!(v, Stall::Fine);
        let (a, v) = stall(Some(a), 10, 0, s(599), after, false);
        assert_eq!(v, Stall::Fine);
        let (a, v) = stall(Some(a), 10, 0, s(600), after, false);
        assert_eq!(v, Stall::Stuck);
        let (a, v) = stall(Some(a), 10, 0, s(900), after, true);
        assert_eq!(v, Stall::StillStuck);
        // Output (or CPU) moves: recovered, the clock starts again.
        let (a, v) = stall(Some(a), 10, 5, s(901), after, true);
        assert_eq!(v, Stall::Recovered);
        assert_eq!(a.since, s(901));
        let (a, v) = stall(Some(a), 11, 5, s(1400), after, false);
        assert_eq!(v, Stall::Fine);
        let (_, v) = stall(Some(a), 11, 5, s(2000), after, false);
        assert_eq!(v, Stall::Stuck);
        // After a restart: no sample, the flag holds until it moves.
        let (_, v) = stall(None, 11, 5, s(2001), after, true);
        assert_eq!(v, Stall::StillStuck);
    }

    #[test]
    fn standing_conditions_fire_once_while_they_last() {
        let mut r = Runtime::default();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            r.standing("approval_pending", &set(&["A", "B"])),
            ["A", "B"]
        );
        assert!(r.standing("approval_pending", &set(&["A", "B"])).is_empty());
        // Other kinds are kept.
        assert_eq!(r.standing("blocked", &set(&["A"])), ["A"]);
        // B resolved, then requested again: a new occurrence.
        assert!(r.standing("approval_pending", &set(&["A"])).is_empty());
        assert_eq!(r.standing("approval_pending", &set(&["A", "B"])), ["B"]);
        assert!(r.sent.contains("blocked:A"));
    }

    #[test]
    fn events_parse_by_name() {
        let n: Notifier =
            serde_yaml::from_str("on: [approval_pending, cap_reached]\ncommand: cat\n").unwrap();
        assert_eq!(
            n.on,
            [NotifyEvent::ApprovalPending, NotifyEvent::CapReached]
        );
        for e in NotifyEvent::ALL {
            let back: NotifyEvent = serde_yaml::from_str(e.as_str()).unwrap();
            assert_eq!(back, e);
        }
    }
}
