//! `agents/factory/registry.json`: every agent spawned, in the seed's shape
//! (`version`, `updated`, `agents` keyed by id, `nextId`, `maxConcurrent`).
//!
//! Written atomically, always under the queue lock, so it is valid JSON at
//! every instant. Finished agents older than the config's `history_after`
//! move to `agents/factory/history/YYYY-MM.jsonl` (appended and fsynced
//! before the registry drops them: a crash can duplicate a history line,
//! never lose one), which keeps the file small at 100,000 agents.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Problem, Result};
use crate::fsutil::Disk;
use crate::money::{Cost, Usd};
use crate::root::Root;
use crate::task::Timestamp;

/// The states of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Registered; the process is being started.
    Spawning,
    /// Running.
    Active,
    /// Asked to stop (`taskq stop`); the factory finishes the bookkeeping.
    Stopping,
    /// Finished with success.
    Completed,
    /// Finished with a failure.
    Failed,
    /// Killed after its time limit.
    Timeout,
    /// Stopped by a person or a shutdown.
    Stopped,
    /// Its process vanished while no factory watched it.
    Lost,
}

impl AgentStatus {
    /// Still running (or about to).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AgentStatus::Spawning | AgentStatus::Active | AgentStatus::Stopping
        )
    }

    /// The lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Spawning => "spawning",
            AgentStatus::Active => "active",
            AgentStatus::Stopping => "stopping",
            AgentStatus::Completed => "completed",
            AgentStatus::Failed => "failed",
            AgentStatus::Timeout => "timeout",
            AgentStatus::Stopped => "stopped",
            AgentStatus::Lost => "lost",
        }
    }
}

/// Token counts reported by an agent, mapped from each CLI's own fields
/// (see `agent/`): `cached_input` is part of `input`, reasoning ("thought")
/// tokens are part of `output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Input tokens (cache reads and writes included).
    pub input: u64,
    /// Output tokens (reasoning included).
    pub output: u64,
    /// The part of `input` read from the provider's cache (priced at the
    /// `cached_input` price).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Tokens {
    /// No token at all.
    pub fn is_empty(&self) -> bool {
        self.input == 0 && self.output == 0
    }
}

/// One agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub struct Agent {
    /// `BLD-002`.
    pub id: String,
    /// The role (`builder`); `type` in the seed's registry.
    #[serde(rename = "type")]
    pub role: String,
    /// The task id.
    pub task: String,
    /// Where it is.
    pub status: AgentStatus,
    /// The adapter (`claude`, `shell`, ...).
    #[serde(default)]
    pub adapter: crate::agent::Adapter,
    /// The model it ran with (the one that answered, where the CLI says).
    #[serde(default)]
    pub model: Option<String>,
    /// The model it was asked for, when the one that answered differs (an
    /// alias such as `sonnet`, a CLI-side fallback): the cost forecast of
    /// the next run asked for it finds this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_asked: Option<String>,
    /// Process id (the process group leader).
    #[serde(default)]
    pub pid: Option<u32>,
    /// The process's start time (clock ticks since boot, from
    /// /proc/PID/stat), so a reused pid is not mistaken for the agent.
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The agent that spawned it (a tester's builder), or none.
    #[serde(default)]
    pub parent: Option<String>,
    /// Which attempt of the task this is (1-based).
    #[serde(default)]
    pub attempt: u32,
    /// When it was registered.
    pub spawned: Timestamp,
    /// When it ended.
    #[serde(default)]
    pub completed: Option<Timestamp>,
    /// Exit code (none when killed by a signal or lost).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Wall time in milliseconds.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Cost in USD (reported, or tokens × the config's price table), or
    /// `unknown`; none while it runs, and for shell and command agents.
    #[serde(default)]
    pub cost_usd: Option<Cost>,
    /// Tokens used.
    #[serde(default)]
    pub tokens: Option<Tokens>,
    /// Agent turns, where the CLI reports them.
    #[serde(default)]
    pub num_turns: Option<u32>,
    /// The CLI's session id.
    #[serde(default)]
    pub session_id: Option<String>,
    /// A one-line summary of the result.
    #[serde(default)]
    pub result: Option<String>,
    /// Why it failed, timed out, stopped or was lost.
    #[serde(default)]
    pub reason: Option<String>,
    /// Its working directory, relative to the root.
    #[serde(default)]
    pub workspace: Option<String>,
    /// Its log file, relative to the root.
    #[serde(default)]
    pub log: Option<String>,
    /// Peak resident memory in KiB, where measured.
    #[serde(default)]
    pub max_rss_kb: Option<u64>,
    /// `workspace: worktree`: the branch the agent worked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// `workspace: worktree`: the repository the worktree belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// For a builder under review: `passed` or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_status: Option<String>,
    /// For a builder under review: the tester agent that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tested_by: Option<String>,
    /// `--cancel` given to `taskq stop`: cancel the task instead of
    /// returning it to ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_task: bool,
    /// Its sandbox (`landlock abi 6`, `landlock abi 6 + mount ns`, `off`);
    /// none in registries written before there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// Whether past agent `a` ran the model a forecast for `model` asks about.
fn model_matches(a: &Agent, model: Option<&str>) -> bool {
    let Some(m) = model else {
        return a.model.is_none() && a.model_asked.is_none();
    };
    if a.model.as_deref() == Some(m) || a.model_asked.as_deref() == Some(m) {
        return true;
    }
    // An alias (`sonnet`, `opus`): a whole word of the resolved name.
    !m.contains(['/', '-', '.'])
        && a.model.as_deref().is_some_and(|full| {
            full.rsplit('/')
                .next()
                .unwrap_or(full)
                .split(['-', '.', '_'])
                .any(|w| w == m)
        })
}

/// The whole registry file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registry {
    /// Format version.
    pub version: String,
    /// Last write.
    pub updated: Option<Timestamp>,
    /// Every agent not yet moved to history, by id.
    pub agents: BTreeMap<String, Agent>,
    /// The next agent number (agent ids are `<PREFIX>-<nextId>`).
    #[serde(rename = "nextId")]
    pub next_id: u64,
    /// The factory's global concurrency limit when it last ran.
    #[serde(rename = "maxConcurrent", default)]
    pub max_concurrent: usize,
    /// The serialized line of each finished agent, by id, with the state
    /// it was made from (finished agents rarely change; at 100,000 agents
    /// re-serializing them on every save would dominate the factory).
    #[serde(skip)]
    lines: std::collections::HashMap<String, (AgentStatus, Option<String>, bool, String)>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            version: "1.0.0".into(),
            updated: None,
            agents: BTreeMap::new(),
            next_id: 1,
            max_concurrent: 0,
            lines: std::collections::HashMap::new(),
        }
    }
}

/// The largest `registry.json` taskq reads (finished agents move to
/// `history/` after `history_after`; 1,000 agents take 450 KB).
pub const MAX_REGISTRY: u64 = 256 << 20;

impl Registry {
    /// `agents/factory/registry.json`.
    pub fn path(root: &Root) -> PathBuf {
        root.registry_file()
    }

    /// Loads the registry (empty when absent). A corrupt file is an error
    /// naming it: taskq never silently starts over.
    pub fn load(root: &Root) -> Result<Registry> {
        let path = Registry::path(root);
        // A regular file only (a FIFO would block the read forever), and a
        // bounded one.
        let bytes =
            match crate::fsutil::read_whole_with(&path, MAX_REGISTRY, crate::fsutil::Links::Refuse)
            {
                Ok(b) => b,
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(Registry::default())
                }
                Err(e) => return Err(e),
            };
        serde_json::from_slice(&bytes).map_err(|e| {
            Problem::at(
                "agents/factory/registry.json",
                e.line(),
                format!("invalid registry: {e}"),
            )
            .column(Some(e.column()))
            .hint("restore it from git (`git checkout agents/factory/registry.json`)")
            .into()
        })
    }

    /// Writes the registry atomically, through `disk` (the writer's). Call
    /// only under the queue lock.
    ///
    /// The seed's shape, one agent per line: readable, and a `git diff` of
    /// a transition is the lines of the agents it touched.
    pub fn save(&mut self, root: &Root, disk: &mut Disk, now: Timestamp) -> Result<()> {
        self.updated = Some(now);
        let err = |e: serde_json::Error| Error::io(Registry::path(root), e.into());
        let mut text = String::with_capacity(64 + self.agents.len() * 512);
        // `updated` goes last: what changes between two saves is then at
        // the end of the file (new and recent agents, the counters), and a
        // rewrite touches only the end (see fsutil).
        text.push_str("{\n  \"version\": ");
        text.push_str(&serde_json::to_string(&self.version).map_err(err)?);
        text.push_str(",\n  \"agents\": {");
        let mut first = true;
        for (id, agent) in &self.agents {
            text.push_str(if first { "\n    " } else { ",\n    " });
            first = false;
            // Agent ids are plain (`BLD-004`); anything else is escaped.
            if id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                text.push('"');
                text.push_str(id);
                text.push('"');
            } else {
                text.push_str(&serde_json::to_string(id).map_err(err)?);
            }
            text.push_str(": ");
            match self.lines.get(id) {
                Some((status, test, cancel, line))
                    if *status == agent.status
                        && *test == agent.test_status
                        && *cancel == agent.cancel_task =>
                {
                    text.push_str(line);
                }
                _ => {
                    let line = serde_json::to_string(agent).map_err(err)?;
                    text.push_str(&line);
                    // A finished agent's line no longer changes: keep it.
                    if !agent.status.is_live() {
                        let key = (agent.status, agent.test_status.clone(), agent.cancel_task);
                        self.lines.insert(id.clone(), (key.0, key.1, key.2, line));
                    }
                }
            }
        }
        text.push_str(if first { "},\n" } else { "\n  },\n" });
        text.push_str(&format!(
            "  \"nextId\": {},\n  \"maxConcurrent\": {},\n  \"updated\": {}\n}}\n",
            self.next_id,
            self.max_concurrent,
            serde_json::to_string(&self.updated).map_err(err)?
        ));
        disk.write(&Registry::path(root), text.as_bytes())
    }

    /// Raises the agent id counter above every agent id on disk: in the
    /// registry, its history and the logs. A registry set back (`git
    /// checkout` of an old one, a hand edit) then never hands out an id
    /// that was used: a log is never appended to by a second agent.
    pub fn raise_to_high_water(&mut self, root: &Root) {
        let mut top = self
            .agents
            .keys()
            .filter_map(|id| crate::task::id_number(id))
            .max()
            .unwrap_or(0);
        if let Ok(dir) = std::fs::read_dir(root.dir.join("agents").join("logs")) {
            for e in dir.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                // `<ID>.log`, `<ID>.prompt.md`, `<ID>.exit`.
                let id = name.split('.').next().unwrap_or("");
                if let Some(n) = crate::task::id_number(id) {
                    top = top.max(n);
                }
            }
        }
        if let Ok(dir) = std::fs::read_dir(root.history_dir()) {
            for e in dir.flatten() {
                let Ok(Some(text)) = crate::fsutil::read_capped(&e.path(), MAX_REGISTRY) else {
                    continue;
                };
                for line in text.text().lines() {
                    let id = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v["id"].as_str().and_then(crate::task::id_number));
                    if let Some(n) = id {
                        top = top.max(n);
                    }
                }
            }
        }
        if top >= self.next_id {
            self.next_id = top.saturating_add(1);
        }
    }

    /// Allocates an agent id with the role's prefix; an error once the
    /// counter is exhausted (it never wraps).
    pub fn allocate(&mut self, prefix: &str) -> Result<String> {
        let n = self.next_id;
        self.next_id = n
            .checked_add(1)
            .filter(|n| *n < 10u64.pow(18))
            .ok_or_else(|| {
                Error::conflict(
                    "the agent id counter (nextId in agents/factory/registry.json) is exhausted",
                )
            })?;
        Ok(format!("{prefix}-{n:03}"))
    }

    /// Agents still running (or about to).
    pub fn live(&self) -> impl Iterator<Item = &Agent> {
        self.agents.values().filter(|a| a.status.is_live())
    }

    /// The tasks the factory's agents hold, with the agent: every agent
    /// whose end no factory has recorded yet (alive, or ended a moment ago,
    /// or ended while no factory ran). A script must not claim these even
    /// when a task's file says it is ready (an editor that saved an old
    /// copy over the factory's claim): the agent may have done the task.
    pub fn working_on(&self) -> HashMap<String, String> {
        self.live()
            .map(|a| (a.task.clone(), a.id.clone()))
            .collect()
    }

    /// Spend recorded on the local day of `now`: the known amounts, exact.
    pub fn spent_today(&self, now: Timestamp) -> Usd {
        self.day_spend(now).0
    }

    /// Spend on the local day of `now`: the known amounts, and how many
    /// agents ended that day with an unknown cost.
    pub fn day_spend(&self, now: Timestamp) -> (Usd, usize) {
        let today = now.with_timezone(&chrono::Local).date_naive();
        let mut sum = Usd::ZERO;
        let mut unknown = 0;
        for a in self.agents.values().filter(|a| {
            a.completed
                .unwrap_or(a.spawned)
                .with_timezone(&chrono::Local)
                .date_naive()
                == today
        }) {
            match a.cost_usd {
                Some(Cost::Known(u)) => sum += u,
                Some(Cost::Unknown) => unknown += 1,
                None => {}
            }
        }
        (sum, unknown)
    }

    /// The cost forecast of the next run of `role` with `model`: the
    /// median known, non-zero cost of its past runs (a run that failed
    /// before it spent anything says nothing about what a run costs). A
    /// past run matches when it ran, or was asked for, that model, or when
    /// `model` is an alias contained in its model's name (`sonnet` in
    /// `claude-sonnet-4-5`). `None`: no usable history.
    pub fn median_cost(&self, role: &str, model: Option<&str>) -> Option<Usd> {
        self.forecast(role, model).map(|(u, _)| u)
    }

    /// [`median_cost`](Self::median_cost) and how many runs it is the
    /// median of.
    pub fn forecast(&self, role: &str, model: Option<&str>) -> Option<(Usd, usize)> {
        let mut costs: Vec<Usd> = self
            .agents
            .values()
            .filter(|a| a.role == role && !a.status.is_live() && model_matches(a, model))
            .filter_map(|a| a.cost_usd.and_then(Cost::known))
            .filter(|c| !c.is_zero())
            .collect();
        if costs.is_empty() {
            return None;
        }
        costs.sort_unstable();
        let n = costs.len();
        let median = if n % 2 == 1 {
            costs[n / 2]
        } else {
            Usd((costs[n / 2 - 1].0 + costs[n / 2].0) / 2)
        };
        Some((median, n))
    }

    /// The median peak memory (KiB) of past runs of `role`, if measured.
    pub fn median_rss_kb(&self, role: &str) -> Option<u64> {
        let mut v: Vec<u64> = self
            .agents
            .values()
            .filter(|a| a.role == role && !a.status.is_live())
            .filter_map(|a| a.max_rss_kb)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(v[v.len() / 2])
    }

    /// Total known cost of every agent that worked on `task` (every
    /// attempt and review), and how many of them have an unknown cost.
    pub fn task_cost(&self, task: &str) -> (Usd, usize) {
        let mut sum = Usd::ZERO;
        let mut unknown = 0;
        for a in self.agents.values().filter(|a| a.task == task) {
            match a.cost_usd {
                Some(Cost::Known(u)) => sum += u,
                Some(Cost::Unknown) => unknown += 1,
                None => {}
            }
        }
        (sum, unknown)
    }

    /// Moves finished agents that completed before `cutoff` to
    /// `history/YYYY-MM.jsonl`. Returns how many moved.
    pub fn rotate(&mut self, root: &Root, cutoff: Timestamp) -> Result<usize> {
        let old: Vec<String> = self
            .agents
            .values()
            .filter(|a| !a.status.is_live() && a.completed.is_some_and(|c| c < cutoff))
            .map(|a| a.id.clone())
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        let mut by_month: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in &old {
            let a = &self.agents[id];
            let month = a.completed.unwrap_or(a.spawned).format("%Y-%m").to_string();
            let line = serde_json::to_string(a).map_err(|e| Error::io("history", e.into()))?;
            by_month.entry(month).or_default().push(line);
        }
        let dir = root.factory_dir().join("history");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (month, lines) in by_month {
            let path = dir.join(format!("{month}.jsonl"));
            let mut f = crate::fsutil::open_append(&path)?;
            let mut buf = lines.join("\n");
            buf.push('\n');
            f.write_all(buf.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io(&path, e))?;
        }
        for id in &old {
            self.agents.remove(id);
            self.lines.remove(id);
        }
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::parse_timestamp;

    fn agent(id: &str, status: AgentStatus, completed: Option<&str>) -> Agent {
        Agent {
            id: id.into(),
            role: "builder".into(),
            task: "TASK-001".into(),
            status,
            adapter: crate::agent::Adapter::Shell,
            model: None,
            model_asked: None,
            pid: None,
            pid_start: None,
            parent: None,
            attempt: 1,
            spawned: parse_timestamp("2026-01-01T00:00:00Z").unwrap(),
            completed: completed.map(|c| parse_timestamp(c).unwrap()),
            exit_code: None,
            duration_ms: None,
            cost_usd: None,
            tokens: None,
            num_turns: None,
            session_id: None,
            result: None,
            reason: None,
            workspace: None,
            log: None,
            max_rss_kb: None,
            branch: None,
            repo: None,
            test_status: None,
            tested_by: None,
            cancel_task: false,
            sandbox: None,
        }
    }

    #[test]
    fn the_forecast_matches_aliases_and_skips_unusable_costs() {
        let mut r = Registry::default();
        let add =
            |r: &mut Registry, id: &str, model: &str, asked: Option<&str>, cost: Option<Cost>| {
                let mut a = agent(id, AgentStatus::Completed, Some("2026-01-02T00:00:00Z"));
                a.model = Some(model.into());
                a.model_asked = asked.map(str::to_string);
                a.cost_usd = cost;
                r.agents.insert(id.into(), a);
            };
        let usd = |s: &str| Some(Cost::Known(Usd::parse(s).unwrap()));
        // Failures that spent nothing, and unknown costs, say nothing.
        add(&mut r, "B-1", "claude-sonnet-4-5-20250929", None, usd("0"));
        add(&mut r, "B-2", "claude-sonnet-4-5-20250929", None, usd("0"));
        add(
            &mut r,
            "B-3",
            "claude-sonnet-4-5-20250929",
            None,
            Some(Cost::Unknown),
        );
        assert_eq!(r.median_cost("builder", Some("sonnet")), None);
        add(
            &mut r,
            "B-4",
            "claude-sonnet-4-5-20250929",
            None,
            usd("0.40"),
        );
        add(
            &mut r,
            "B-5",
            "claude-sonnet-4-5-20250929",
            Some("sonnet"),
            usd("0.60"),
        );
        // The alias finds the resolved model's runs.
        assert_eq!(
            r.median_cost("builder", Some("sonnet")),
            Some(Usd::parse("0.50").unwrap())
        );
        assert_eq!(
            r.median_cost("builder", Some("claude-sonnet-4-5-20250929")),
            Some(Usd::parse("0.50").unwrap())
        );
        // Not another model's, nor a partial word's.
        assert_eq!(r.median_cost("builder", Some("opus")), None);
        assert_eq!(r.median_cost("builder", Some("son")), None);
        assert_eq!(r.median_cost("tester", Some("sonnet")), None);
        assert_eq!(r.task_cost("TASK-001"), (Usd::parse("1.00").unwrap(), 1));
    }

    #[test]
    fn saves_loads_and_rotates_old_agents_to_history() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let mut r = Registry::default();
        let id = r.allocate("BLD").unwrap();
        assert_eq!(id, "BLD-001");
        r.agents.insert(
            id.clone(),
            agent(&id, AgentStatus::Completed, Some("2026-01-02T00:00:00Z")),
        );
        r.agents.insert(
            "BLD-002".into(),
            agent("BLD-002", AgentStatus::Active, None),
        );
        r.agents.insert(
            "BLD-003".into(),
            agent("BLD-003", AgentStatus::Failed, Some("2026-02-20T00:00:00Z")),
        );
        let now = parse_timestamp("2026-03-01T00:00:00Z").unwrap();
        r.save(&root, &mut Disk::plain(), now).unwrap();
        let text = std::fs::read_to_string(Registry::path(&root)).unwrap();
        assert!(
            text.contains("\"nextId\": 2")
                && text.contains("\"type\":\"builder\"")
                && text.lines().filter(|l| l.starts_with("    \"BLD-")).count() == 3,
            "{text}"
        );
        let mut back = Registry::load(&root).unwrap();
        assert_eq!(back.agents.len(), 3);
        let moved = back
            .rotate(&root, parse_timestamp("2026-02-01T00:00:00Z").unwrap())
            .unwrap();
        assert_eq!(moved, 1);
        assert_eq!(back.agents.len(), 2);
        let hist =
            std::fs::read_to_string(root.factory_dir().join("history/2026-01.jsonl")).unwrap();
        assert!(hist.contains("\"BLD-001\""));
    }

    #[test]
    fn a_corrupt_registry_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.factory_dir()).unwrap();
        std::fs::write(Registry::path(&root), "{\"agents\": [").unwrap();
        let e = Registry::load(&root).unwrap_err();
        assert!(
            e.to_string().starts_with("agents/factory/registry.json:1:"),
            "{e}"
        );
    }
}
