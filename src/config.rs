//! `agents/factory/config.yaml`: the factory's settings. Every key is
//! optional; an unknown key or a wrong value is an error naming the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Problem, Result};
use crate::money::Usd;
use crate::root::Root;

/// The factory configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Agents running at once, all roles together.
    pub max_concurrent: usize,
    /// The role for tasks no template's tags match.
    pub default_role: Option<String>,
    /// The heartbeat: how often timeouts and the queue are re-checked even
    /// without file events (±10% jitter).
    #[serde(with = "dur")]
    pub heartbeat: Duration,
    /// Watch the files with inotify (notify). Off: only the heartbeat
    /// notices changes (for file systems whose changes inotify does not
    /// see: NFS and other network mounts, some container bind mounts).
    pub watch: bool,
    /// SIGTERM, then SIGKILL after this long.
    #[serde(with = "dur")]
    pub stop_grace: Duration,
    /// The first retry waits this long; each further attempt doubles it.
    #[serde(with = "dur")]
    pub retry_backoff: Duration,
    /// Finished agents older than this move from registry.json to
    /// `agents/factory/history/YYYY-MM.jsonl`.
    #[serde(with = "dur")]
    pub history_after: Duration,
    /// No new agents once today's recorded spend reaches this (dollars,
    /// held in exact micro-dollars).
    pub daily_cost_cap_usd: Option<Usd>,
    /// What reaching the cap does: `stop_new` (no new agents; the running
    /// ones finish) or `stop_all` (the running ones are stopped too).
    pub cap_mode: CapMode,
    /// With a cap set, `run` refuses to start when a role may run a model
    /// that has no price and whose CLI reports no cost (its spend would be
    /// unknown to the cap); `true` runs it anyway.
    pub allow_unpriced_models: bool,
    /// Only these models may be used (empty: any).
    pub model_whitelist: Vec<String>,
    /// The program each adapter runs (`claude`, `codex`, `gemini`).
    pub adapters: BTreeMap<String, String>,
    /// USD per million tokens, by model: `{input: 3.0, output: 15.0}`,
    /// optionally `cached_input: 0.3` (cache reads; default the input
    /// price).
    pub prices: BTreeMap<String, Price>,
    /// Tasks with any of these tags need a person's approval to run.
    pub approval_tags: Vec<String>,
    /// Space the starts of agents that become runnable at once.
    #[serde(with = "dur")]
    pub spawn_stagger: Duration,
    /// A tester's FAIL sends the task back to its builder at most this
    /// many times; the next FAIL fails the task.
    pub max_review_rounds: u32,
    /// Hooks (agents/hooks/<event>) are killed after this long.
    #[serde(with = "dur")]
    pub hook_timeout: Duration,
    /// Git: the audit trail.
    pub git: GitConfig,
    /// No new agent while the agents' resident memory plus the new one's
    /// expected peak (its role's median) would pass this many MB.
    pub max_agent_memory_mb: Option<u64>,
    /// Commands told about events (approval pending, a failure, …): a
    /// list of `{on: [events], command: CMD}`; see [`crate::notify`].
    pub notify: Vec<crate::notify::Notifier>,
    /// A running agent with no new output and no CPU time for this long
    /// is flagged stuck (in `status`, and the `stuck` notification).
    #[serde(with = "dur")]
    pub stuck_after: Duration,
    /// The `budget` notification fires once a day when today's spend
    /// crosses this fraction of `daily_cost_cap_usd`.
    pub budget_warning: f64,
    /// Notification commands are killed after this long.
    #[serde(with = "dur")]
    pub notify_timeout: Duration,
    /// Hooks and notification commands.
    pub hooks: HooksConfig,
    /// The agents' sandbox where a role does not say: `auto` (on where
    /// the kernel has Landlock), `required`, `off`.
    pub sandbox: crate::sandbox::Mode,
}

/// `hooks:` settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// The only variables of the factory's environment a hook or a
    /// notification command gets (`NAME`, or `PREFIX*`), besides the
    /// `TASKQ_ROOT` and `TASKQ_EVENT` taskq sets.
    pub env: Vec<String>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            env: DEFAULT_HOOK_ENV.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// What hooks get of the factory's environment by default: nothing secret.
pub const DEFAULT_HOOK_ENV: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_*", "TZ", "TMPDIR",
];

/// `git:` settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitConfig {
    /// Commit every transition (default: on when the root is in a git work
    /// tree).
    pub autocommit: Option<bool>,
    /// Sign taskq's commits (`git commit-tree -S`); default off, so that a
    /// person's `commit.gpgsign` with no signer at hand never stops the
    /// trail.
    pub sign: Option<bool>,
    /// Repositories outside the root that a task's `repo:` may name
    /// (absolute, or relative to the root). A `repo:` inside the root is
    /// always allowed; any other is refused.
    pub repos: Vec<PathBuf>,
}

/// A model's list price per million tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// USD per million input tokens (not read from a cache).
    pub input: f64,
    /// USD per million output tokens (reasoning tokens included).
    pub output: f64,
    /// USD per million input tokens read from the provider's cache;
    /// default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<f64>,
}

/// What reaching the daily cost cap does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapMode {
    /// No new agents; the agents at work finish (and what they cost counts
    /// on top of the cap).
    #[default]
    StopNew,
    /// No new agents, and the agents at work are stopped (their tasks go
    /// back to ready; what they cost until then still counts).
    StopAll,
}

impl CapMode {
    /// `stop_new` or `stop_all`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapMode::StopNew => "stop_new",
            CapMode::StopAll => "stop_all",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_concurrent: 3,
            default_role: None,
            heartbeat: Duration::from_secs(30),
            watch: true,
            stop_grace: Duration::from_secs(10),
            retry_backoff: Duration::from_secs(30),
            history_after: Duration::from_secs(7 * 86400),
            daily_cost_cap_usd: None,
            cap_mode: CapMode::StopNew,
            allow_unpriced_models: false,
            model_whitelist: Vec::new(),
            adapters: BTreeMap::new(),
            prices: BTreeMap::new(),
            approval_tags: Vec::new(),
            spawn_stagger: Duration::ZERO,
            max_review_rounds: 2,
            hook_timeout: Duration::from_secs(10),
            git: GitConfig::default(),
            max_agent_memory_mb: None,
            notify: Vec::new(),
            stuck_after: Duration::from_secs(600),
            budget_warning: 0.8,
            notify_timeout: Duration::from_secs(10),
            hooks: HooksConfig::default(),
            sandbox: crate::sandbox::Mode::Auto,
        }
    }
}

/// The shortest `heartbeat` accepted.
pub const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

impl Config {
    /// The path of the config file.
    pub fn path(root: &Root) -> std::path::PathBuf {
        root.config_file()
    }

    /// Loads the config (defaults when the file is absent). Only a regular
    /// file (through a link is fine) of at most
    /// [`fsutil::MAX_SETTINGS`](crate::fsutil::MAX_SETTINGS): a FIFO there
    /// is an error at the file, never a hang.
    pub fn load(root: &Root) -> Result<Config> {
        use crate::fsutil::{self, Links};
        let path = Config::path(root);
        let shown = Path::new("agents/factory/config.yaml");
        let bytes = match fsutil::read_whole_with(&path, fsutil::MAX_SETTINGS, Links::Follow) {
            Ok(b) => b,
            Err(crate::error::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Config::default())
            }
            Err(e) => {
                return Err(Problem::new(shown, fsutil::reason(&e))
                    .hint("the config is a YAML file; see `taskq init` for one")
                    .into())
            }
        };
        let text = String::from_utf8(bytes).map_err(|_| Problem::new(shown, "not valid UTF-8"))?;
        Config::parse(&text, shown)
    }

    /// Parses config text; errors name `shown` and the line.
    pub fn parse(text: &str, shown: &Path) -> Result<Config> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        // serde_yaml takes super-linear time on deep nesting: refuse it
        // first, in one pass.
        crate::frontmatter::check_nesting(text)
            .map_err(|e| Problem::at(shown, e.line + 1, e.message).column(e.column))?;
        let config: Config =
            serde_yaml::from_str(text).map_err(|e| yaml_problem(shown, &e, 1, text))?;
        let bad = |key: &str, message: &str| -> crate::error::Error {
            match crate::frontmatter::key_line(text, key) {
                Some(line) => Problem::at(shown, line, message).into(),
                None => Problem::new(shown, message).into(),
            }
        };
        if config.max_concurrent == 0 {
            return Err(bad("max_concurrent", "`max_concurrent` must be at least 1"));
        }
        // The heartbeat's timer would fire again at once: a busy loop.
        if config.heartbeat < MIN_HEARTBEAT {
            return Err(bad(
                "heartbeat",
                "`heartbeat` must be at least 100ms (it is how often the factory rechecks everything)",
            ));
        }
        if !(config.budget_warning > 0.0 && config.budget_warning <= 1.0) {
            return Err(bad(
                "budget_warning",
                "`budget_warning` must be a fraction of the cap, above 0 and at most 1 (0.8: at 80%)",
            ));
        }
        if config.stuck_after.is_zero() {
            return Err(bad("stuck_after", "`stuck_after` must be longer than 0s"));
        }
        if let Some(n) = config.notify.iter().position(|n| n.on.is_empty()) {
            let line = notify_entry_line(text, n);
            let message = "a `notify` entry with no events in `on`";
            let p = match line {
                Some(l) => Problem::at(shown, l, message),
                None => Problem::new(shown, message),
            };
            return Err(p
                .hint(format!("name some of: {}", notify_event_names()))
                .into());
        }
        Ok(config)
    }

    /// The program for an adapter (`claude` → `claude` unless configured).
    pub fn adapter_program(&self, adapter: &str) -> String {
        self.adapters
            .get(adapter)
            .cloned()
            .unwrap_or_else(|| adapter.to_string())
    }
}

/// The event names a `notify` entry accepts, for hints.
pub fn notify_event_names() -> String {
    crate::notify::NotifyEvent::ALL
        .iter()
        .map(|e| e.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The line of the `n`th entry (`- `) under `notify:`, if it can be found.
fn notify_entry_line(text: &str, n: usize) -> Option<usize> {
    let start = crate::frontmatter::key_line(text, "notify")?;
    text.lines()
        .enumerate()
        .skip(start)
        .filter(|(_, l)| l.trim_start().starts_with("- "))
        .nth(n)
        .map(|(i, _)| i + 1)
}

/// A serde_yaml error as a problem at `shown:line:column`, the YAML having
/// started at file line `first_line`.
pub fn yaml_problem(shown: &Path, e: &serde_yaml::Error, first_line: usize, text: &str) -> Problem {
    let message = e.to_string();
    let message = match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    };
    // serde_yaml puts a duplicate key at the start of its mapping: point at
    // the second occurrence instead.
    let duplicate = message
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.split('`').next())
        .and_then(|key| {
            text.lines()
                .enumerate()
                .filter(|(_, l)| {
                    l.trim_start()
                        .strip_prefix(key)
                        .is_some_and(|after| after.trim_start().starts_with(':'))
                })
                .nth(1)
                .map(|(i, _)| i + 1)
        });
    if let Some(line) = duplicate {
        return Problem::at(shown, line + first_line - 1, message);
    }
    // serde_yaml puts a value's own error (a duration out of range) at the
    // start of its mapping: point at the line holding the value instead.
    let value = ["duration `", "invalid duration `"]
        .iter()
        .find_map(|p| message.strip_prefix(p))
        .and_then(|rest| rest.split('`').next())
        .filter(|v| !v.is_empty())
        .and_then(|v| {
            text.lines().enumerate().find_map(|(n, l)| {
                let (_, after) = l.split_once(':')?;
                if after.trim().trim_matches(['"', '\'']) != v {
                    return None;
                }
                Some((n, l.rfind(v)? + 1))
            })
        });
    if let Some((line, column)) = value {
        return Problem::at(shown, line + first_line, message).column(Some(column));
    }
    match e.location() {
        Some(loc) => {
            Problem::at(shown, loc.line() + first_line - 1, message).column(Some(loc.column()))
        }
        None => Problem::new(shown, message),
    }
}

/// serde helpers for durations written as `30s`, `20m`, `1h`.
pub mod dur {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `90s`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}s", d.as_secs_f64()))
    }

    /// Reads `30s`, `20m`, `1h30m`, or a number of seconds, up to
    /// [`duration::MAX`](crate::duration::MAX): a longer one is an error
    /// at its line (the factory would overflow its date arithmetic).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => crate::duration::seconds(n)
                .ok_or_else(|| serde::de::Error::custom(crate::duration::seconds_error(n))),
            Raw::Text(t) => crate::duration::parse(&t).map_err(serde::de::Error::custom),
        }
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `90s` or nothing.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Reads an optional duration.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Duration);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_with_lines() {
        let c = Config::parse(
            "max_concurrent: 8\nheartbeat: 5s\ndefault_role: shell\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(c.max_concurrent, 8);
        assert_eq!(c.heartbeat, Duration::from_secs(5));
        let e =
            Config::parse("max_concurrent: 2\nheartbaet: 5s\n", Path::new("c.yaml")).unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:2:"), "{e}");
        assert!(e.to_string().contains("heartbaet"), "{e}");
        let e = Config::parse("heartbeat: soon\n", Path::new("c.yaml")).unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
        // A key given twice: the line of the second one.
        let e = Config::parse(
            "max_concurrent: 2\nheartbeat: 5s\nmax_concurrent: 3\n",
            Path::new("c.yaml"),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:3:"), "{e}");
        assert!(
            e.to_string().contains("duplicate field `max_concurrent`"),
            "{e}"
        );
        // Values out of range: at the key's line.
        let e = Config::parse("# limits\nmax_concurrent: 0\n", Path::new("c.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.yaml:2: `max_concurrent` must be at least 1"),
            "{e}"
        );
        let e = Config::parse("watch: false\nheartbeat: 0s\n", Path::new("c.yaml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("c.yaml:2: `heartbeat` must be at least 100ms"),
            "{e}"
        );
        assert!(Config::parse("heartbeat: 100ms\n", Path::new("c.yaml")).is_ok());
    }

    /// Durations past 100 years overflowed the factory's date arithmetic
    /// (`now - history_after` panicked on its first heartbeat).
    #[test]
    fn durations_past_the_bound_are_refused_at_their_line() {
        for (text, line) in [
            ("max_concurrent: 2\nhistory_after: 99999999999d\n", 2),
            ("heartbeat: 1e300\n", 1),
            ("# x\n\nretry_backoff: 18446744073709551615s\n", 3),
            ("stop_grace: 36500d1s\n", 1),
        ] {
            let e = Config::parse(text, Path::new("c.yaml"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("c.yaml:{line}:")), "{text}: {e}");
            assert!(
                e.contains("is out of range (at most 36500d)"),
                "{text}: {e}"
            );
        }
        let c = Config::parse("history_after: 36500d\n", Path::new("c.yaml")).unwrap();
        assert_eq!(c.history_after, crate::duration::MAX);
    }

    /// `notify:` entries: events by name, an unknown one at its line.
    #[test]
    fn notify_entries_are_checked_at_their_line() {
        let c = Config::parse(
            "max_concurrent: 2\nnotify:\n  - on: [failed, stuck]\n    command: cat >> /tmp/x\nstuck_after: 2m\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        assert_eq!(c.notify.len(), 1);
        assert_eq!(c.stuck_after, Duration::from_secs(120));
        let e = Config::parse(
            "max_concurrent: 2\nnotify:\n  - on: [failed]\n    command: a\n  - on: [failed, stuk]\n    command: b\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.yaml:5:"), "{e}");
        assert!(e.contains("unknown variant `stuk`"), "{e}");
        let e = Config::parse(
            "notify:\n  - on: [failed]\n    command: a\n  - on: []\n    command: b\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("c.yaml:4: a `notify` entry with no events"),
            "{e}"
        );
        let e = Config::parse(
            "notify:\n  - on: [idle]\n    comand: b\n",
            Path::new("c.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("c.yaml:3:"), "{e}");
        let e = Config::parse("budget_warning: 1.5\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("c.yaml:1: `budget_warning`"), "{e}");
    }

    /// serde_yaml is super-linear on deep nesting: refused first, fast.
    #[test]
    fn deep_nesting_is_refused_in_linear_time() {
        let text = format!("max_concurrent: 2\nadapters: {}\n", "{a: ".repeat(500_000));
        let start = std::time::Instant::now();
        let e = Config::parse(&text, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
        assert!(e.starts_with("c.yaml:2:"), "{e}");
        assert!(e.contains("nesting deeper than 64 levels"), "{e}");
    }
}
