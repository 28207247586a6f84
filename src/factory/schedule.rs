//! Which agents start now: the one scheduler.
//!
//! [`schedule`] is a function of a read-only [`Snapshot`] (the queue, the
//! registry, the roles, the config, the time, the agents at work, the
//! limits and the approval files' state) to a [`Schedule`]: what starts,
//! with which role and model; what the gates do to the tasks they stop; and
//! why each other ready task waits. The factory's step acts on it, and
//! `run --dry-run` and `why` print it, so what they say is what the
//! factory does.
//!
//! The order: testers for tasks in review first (finishing work beats
//! starting more), then ready tasks in queue order (see `queue`). A task
//! starts when the global limit, its role's limit, the memory budget and
//! `spawn_stagger` leave room and every gate lets it through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::gate::{self, gate, Committed, Forecast, Gate, GateAction, GateInput};
use crate::agent::{self, Adapter};
use crate::pause::Pause;
use crate::queue::Queue;
use crate::role::{self, Role};
use crate::root::workspace_path;
use crate::task::{Folder, Status};

/// Everything the scheduler looks at.
pub struct Snapshot<'a> {
    /// The queue's view of the tasks (states, order).
    pub queue: &'a Queue<'a>,
    /// The roles.
    pub roles: &'a [Role],
    /// The gates' inputs (config, registry, spend, approvals, programs).
    pub gates: GateInput<'a>,
    /// Agents at work: `(agent id, role name)`.
    pub running: &'a [(&'a str, &'a str)],
    /// Agents that ended but whose end is not recorded yet.
    pub ending: &'a [&'a str],
    /// Tasks an agent of this factory works on (or whose end is not
    /// recorded yet): never a second agent for one, whatever its file says
    /// (a person's editor may have saved an old copy over its claim).
    pub busy: &'a [&'a str],
    /// Memory the running agents use now, in KiB (with a memory budget).
    pub memory_used_kb: u64,
    /// Time since the last agent started (`None`: none yet).
    pub since_last_spawn: Option<Duration>,
    /// A person paused the factory (`taskq pause`): nothing starts.
    pub pause: Option<&'a Pause>,
}

/// One agent to start.
#[derive(Debug, Clone)]
pub struct Start {
    /// The task (index into the scan).
    pub task: usize,
    /// The role.
    pub role: Role,
    /// The model of this attempt.
    pub model: Option<String>,
    /// A fixed workspace (a tester works in its builder's).
    pub workspace: Option<PathBuf>,
    /// The builder agent whose work this agent reviews.
    pub review_of: Option<String>,
    /// What it is expected to cost (with a daily cost cap).
    pub forecast: Option<Forecast>,
}

/// Why a ready task (or a task in review) does not start now.
#[derive(Debug, Clone, PartialEq)]
pub enum Wait {
    /// The factory runs `max_concurrent` agents.
    Full {
        /// Its limit.
        max: usize,
    },
    /// Its role runs its `max_concurrent` agents.
    RoleFull {
        /// The role (index into the roles).
        role: usize,
        /// Its limit.
        max: usize,
    },
    /// The memory budget has no room for another agent of its role.
    Memory {
        /// `max_agent_memory_mb`.
        budget_mb: u64,
    },
    /// `spawn_stagger` holds it back.
    Stagger,
    /// No role takes it (an unknown `role:`, or tags no role takes).
    NoRole,
    /// A gate holds it (a person's approval, the cost forecast).
    Gate(String),
    /// The daily cost cap pauses every start.
    Paused(String),
    /// A person paused the factory (`taskq pause`; the reason in words).
    PausedByPerson(String),
    /// Its tester is at work (or its end is not recorded yet).
    TesterAtWork,
    /// In review, but its review role has no template.
    NoReviewRole(String),
    /// An agent of the factory still works on it.
    Busy,
}

impl Wait {
    /// True when the task waits only for room (a slot, memory, time).
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            Wait::Full { .. } | Wait::RoleFull { .. } | Wait::Memory { .. } | Wait::Stagger
        )
    }

    /// The reason in words.
    pub fn describe(&self, roles: &[Role], task: &crate::task::Task) -> String {
        match self {
            Wait::Full { max } => format!("factory full ({max}/{max} agents)"),
            Wait::RoleFull { role, max } => {
                format!("role {} full ({max}/{max})", roles[*role].name)
            }
            Wait::Memory { budget_mb } => {
                format!("no room in the memory budget (max_agent_memory_mb {budget_mb})")
            }
            Wait::Stagger => "spawn_stagger: starts after the agent before it".into(),
            Wait::NoRole => no_role(task),
            Wait::Gate(why) | Wait::Paused(why) | Wait::PausedByPerson(why) => why.clone(),
            Wait::TesterAtWork => "in review: its tester is at work".into(),
            Wait::Busy => "an agent still works on it".into(),
            Wait::NoReviewRole(name) => {
                format!("in review, but no role `{name}` (agents/templates/{name}.md)")
            }
        }
    }
}

/// Why no role takes a task, in words.
pub fn no_role(t: &crate::task::Task) -> String {
    match &t.role {
        Some(name) => format!("no role `{name}` (agents/templates/{name}.md)"),
        None => format!(
            "no role: tags [{}] match no template and the config has no default_role",
            t.tags.join(", ")
        ),
    }
}

/// What to do now.
#[derive(Debug, Default)]
pub struct Schedule {
    /// Agents to start, in this order.
    pub starts: Vec<Start>,
    /// What the gates do to tasks they stopped (task index, action).
    pub actions: Vec<(usize, GateAction)>,
    /// Why each other candidate waits (task index, reason), in the order
    /// looked at.
    pub waits: Vec<(usize, Wait)>,
    /// Tasks that could start but for room (the factory is not idle).
    pub startable: usize,
    /// Why every start is paused (the daily cost cap), if it is.
    pub paused: Option<String>,
    /// A person paused the factory (`taskq pause`), in words: nothing
    /// starts, and no gate acts (no approval is requested) until resumed.
    pub paused_by_person: Option<String>,
    /// `spawn_stagger` held a start back (wake up for it).
    pub staggered: bool,
}

/// The expected peak memory of an agent of `role`, in KiB: its role's
/// median past peak; before any run is measured, 300 MB for a model CLI
/// (measured: 150 MB to 1 GB) and 10 MB for a shell command.
fn expected_kb(s: &Snapshot<'_>, role: &Role) -> u64 {
    s.gates
        .registry
        .median_rss_kb(&role.name)
        .unwrap_or(match role.settings.agent {
            Adapter::Shell | Adapter::Command => 10 * 1024,
            Adapter::Claude | Adapter::Codex | Adapter::Gemini | Adapter::Openclaw => 300 * 1024,
        })
}

/// Decides what starts now (see the module documentation).
pub fn schedule(s: &Snapshot<'_>) -> Schedule {
    let config = s.gates.config;
    let scan = s.queue.scan;
    let mut out = Schedule::default();
    if let Some(pause) = s.pause {
        // Every candidate waits for the person, in the order it would have
        // been looked at: testers for tasks in review, then ready tasks.
        let why = pause.describe();
        for (i, t) in scan.tasks.iter().enumerate() {
            if t.folder == Folder::Todo && t.status == Status::Review && !t.broken {
                out.waits.push((i, Wait::PausedByPerson(why.clone())));
            }
        }
        for r in s.queue.ready(|_| true) {
            out.waits.push((r.index, Wait::PausedByPerson(why.clone())));
        }
        out.paused_by_person = Some(why);
        return out;
    }
    let mut per_role = vec![0usize; s.roles.len()];
    for (_, r) in s.running {
        if let Some(k) = s.roles.iter().position(|x| x.name == *r) {
            per_role[k] += 1;
        }
    }
    // Under a cost cap: what the agents at work are expected to cost (they
    // have spent nothing the registry knows of yet), and, as they start,
    // the agents of this step.
    let capped = config.daily_cost_cap_usd.is_some();
    let mut committed = Committed::default();
    if capped {
        for (id, r) in s.running {
            let model = s
                .gates
                .registry
                .agents
                .get(*id)
                .and_then(|a| a.model_asked.as_deref().or(a.model.as_deref()));
            let f = match s.roles.iter().find(|x| x.name == *r) {
                Some(role) => gate::forecast(s.gates.registry, role, model),
                None => Forecast::Unknown,
            };
            committed.add(r, model, f);
        }
    }
    let budget_kb = config.max_agent_memory_mb.map(|mb| mb * 1024);
    let mut used_kb = s.memory_used_kb;
    let stagger = config.spawn_stagger;
    let held_by_stagger = |starts: usize| {
        !stagger.is_zero() && (starts > 0 || s.since_last_spawn.is_some_and(|d| d < stagger))
    };
    // Room for one more agent of role k: the global and role limits, then
    // the memory budget (with nothing running, one agent always may start).
    let room = |starts: usize, per_role: &[usize], used_kb: u64, k: usize| -> Result<u64, Wait> {
        let role = &s.roles[k];
        if s.running.len() + starts >= config.max_concurrent {
            return Err(Wait::Full {
                max: config.max_concurrent,
            });
        }
        if per_role[k] >= role.settings.max_concurrent {
            return Err(Wait::RoleFull {
                role: k,
                max: role.settings.max_concurrent,
            });
        }
        let need = match budget_kb {
            Some(budget) => {
                let need = expected_kb(s, role);
                if used_kb > 0 && used_kb + need > budget {
                    return Err(Wait::Memory {
                        budget_mb: budget / 1024,
                    });
                }
                need
            }
            None => 0,
        };
        Ok(need)
    };
    // Reviews first.
    for (i, t) in scan.tasks.iter().enumerate() {
        if t.folder != Folder::Todo || t.status != Status::Review || t.broken {
            continue;
        }
        let e = t.extra();
        let (Some(review_role), Some(builder)) = (e.review_role.as_deref(), e.builder.as_deref())
        else {
            continue;
        };
        let assigned = t.assigned.as_deref().unwrap_or("");
        if s.running.iter().any(|(a, _)| *a == assigned) || s.ending.contains(&assigned) {
            out.waits.push((i, Wait::TesterAtWork));
            continue;
        }
        let Some(k) = s.roles.iter().position(|r| r.name == review_role) else {
            out.waits
                .push((i, Wait::NoReviewRole(review_role.to_string())));
            continue;
        };
        let role = &s.roles[k];
        let need = match room(out.starts.len(), &per_role, used_kb, k) {
            Ok(need) if !held_by_stagger(out.starts.len()) => need,
            Ok(_) => {
                out.startable += 1;
                out.staggered = true;
                out.waits.push((i, Wait::Stagger));
                continue;
            }
            Err(wait) => {
                out.startable += 1;
                out.waits.push((i, wait));
                continue;
            }
        };
        let model = agent::model_for_attempt(role, None, 1);
        match gate(&s.gates, t, role, model.as_deref(), &committed) {
            Gate::Go => {}
            Gate::Wait(why) => {
                out.waits.push((i, Wait::Gate(why)));
                continue;
            }
            Gate::Pause(why) => {
                out.waits.push((i, Wait::Paused(why.clone())));
                out.paused = Some(why);
                continue;
            }
            Gate::Act(action) => {
                out.actions.push((i, action));
                continue;
            }
        }
        per_role[k] += 1;
        used_kb += need;
        let forecast = capped.then(|| gate::forecast(s.gates.registry, role, model.as_deref()));
        if let Some(f) = forecast {
            committed.add(&role.name, model.as_deref(), f);
        }
        let workspace = s
            .gates
            .registry
            .agents
            .get(builder)
            .and_then(|a| a.workspace.clone())
            .map_or_else(|| workspace_path(builder), PathBuf::from);
        out.starts.push(Start {
            task: i,
            role: role.clone(),
            model,
            workspace: Some(workspace),
            review_of: Some(builder.to_string()),
            forecast,
        });
    }
    // Then ready tasks, in queue order.
    let ready = s.queue.ready(|_| true);
    let mut rest = ready.iter();
    for r in rest.by_ref() {
        let i = r.index;
        let t = &scan.tasks[i];
        if s.busy.contains(&&*t.id) {
            out.waits.push((i, Wait::Busy));
            continue;
        }
        let Some(role) = role::route(t, s.roles, config) else {
            out.waits.push((i, Wait::NoRole));
            continue;
        };
        let k = s
            .roles
            .iter()
            .position(|x| std::ptr::eq(x, role))
            .expect("route returns one of the roles");
        let need = match room(out.starts.len(), &per_role, used_kb, k) {
            Ok(need) => need,
            Err(wait) => {
                out.startable += 1;
                out.waits.push((i, wait));
                continue;
            }
        };
        let model = agent::model_for_attempt(role, t.extra().model.as_deref(), t.attempts + 1);
        match gate(&s.gates, t, role, model.as_deref(), &committed) {
            Gate::Go => {}
            Gate::Wait(why) => {
                out.waits.push((i, Wait::Gate(why)));
                continue;
            }
            Gate::Act(action) => {
                out.actions.push((i, action));
                continue;
            }
            Gate::Pause(why) => {
                // Nothing else starts: the rest wait for the same reason.
                out.waits.push((i, Wait::Paused(why.clone())));
                out.paused = Some(why);
                break;
            }
        }
        if held_by_stagger(out.starts.len()) {
            out.startable += 1;
            out.staggered = true;
            out.waits.push((i, Wait::Stagger));
            break;
        }
        per_role[k] += 1;
        used_kb += need;
        let forecast = capped.then(|| gate::forecast(s.gates.registry, role, model.as_deref()));
        if let Some(f) = forecast {
            committed.add(&role.name, model.as_deref(), f);
        }
        out.starts.push(Start {
            task: i,
            role: role.clone(),
            model,
            workspace: None,
            review_of: None,
            forecast,
        });
    }
    // The cap is reached even with no task to start (`cap_mode: stop_all`
    // stops the agents at work, `status` and the hook say so).
    if out.paused.is_none() {
        out.paused = gate::cap_reached(&s.gates);
    }
    // After a pause or a staggered start, the rest were not looked at.
    let after = match (&out.paused, out.staggered) {
        (Some(why), _) => Some(Wait::Paused(why.clone())),
        (None, true) => Some(Wait::Stagger),
        _ => None,
    };
    if let Some(wait) = after {
        for r in rest {
            out.waits.push((r.index, wait.clone()));
        }
    }
    out
}

/// A path shown relative to the root when it is inside it.
pub fn shown(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::Decision;
    use crate::config::Config;
    use crate::factory::test_support::{role, task};
    use crate::registry::Registry;
    use crate::root::Root;
    use crate::store::Scan;

    /// The schedule of `tasks` with `roles` and `config`, nothing running.
    fn plan(
        tasks: Vec<crate::task::Task>,
        roles: &[Role],
        config: &Config,
        running: &[(&str, &str)],
        busy: &[&str],
        since_last_spawn: Option<Duration>,
    ) -> (Schedule, Vec<String>) {
        plan_with(
            tasks,
            roles,
            config,
            running,
            busy,
            since_last_spawn,
            &Registry::default(),
            None,
        )
    }

    /// [`plan`], with a registry and a person's pause.
    #[allow(clippy::too_many_arguments)]
    fn plan_with(
        tasks: Vec<crate::task::Task>,
        roles: &[Role],
        config: &Config,
        running: &[(&str, &str)],
        busy: &[&str],
        since_last_spawn: Option<Duration>,
        reg: &Registry,
        pause: Option<&Pause>,
    ) -> (Schedule, Vec<String>) {
        let scan = Scan::from_tasks(tasks);
        let queue = Queue::new(&scan, crate::store::now());
        let root = Root::new("/r");
        let decision = |_: &crate::task::Task| Decision::Missing;
        let missing = |_: &Role| None;
        let s = Snapshot {
            queue: &queue,
            roles,
            gates: GateInput {
                root: &root,
                config,
                registry: reg,
                spent_today: crate::money::Usd::ZERO,
                decision: &decision,
                missing_program: &missing,
            },
            running,
            ending: &[],
            busy,
            memory_used_kb: 0,
            since_last_spawn,
            pause,
        };
        let out = schedule(&s);
        let ids = out
            .starts
            .iter()
            .map(|st| scan.tasks[st.task].id.to_string())
            .collect();
        (out, ids)
    }

    #[test]
    fn testers_first_then_queue_order_within_the_limits() {
        let roles = [
            role("build", "prefix: B\ntags: [b]\nmax_concurrent: 2"),
            role("tester", "prefix: T\ntags: [t]"),
        ];
        let mut config = Config {
            max_concurrent: 3,
            ..Config::default()
        };
        let tasks = || {
            vec![
                task("TASK-001", "tags: [b]\npriority: low"),
                task("TASK-002", "tags: [b]\npriority: high"),
                task("TASK-003", "tags: [b]"),
                task(
                    "TASK-004",
                    "status: review\nreview_role: tester\nbuilder: B-9",
                ),
                task("TASK-005", "tags: [nobody]"),
            ]
        };
        let (s, ids) = plan(tasks(), &roles, &config, &[], &[], None);
        // The tester first, then by priority, within the global limit.
        assert_eq!(ids, ["TASK-004", "TASK-002", "TASK-003"]);
        assert_eq!(s.starts[0].review_of.as_deref(), Some("B-9"));
        assert!(s
            .waits
            .iter()
            .any(|(i, w)| *i == 0 && *w == Wait::Full { max: 3 }));
        // The role's limit.
        let roomy = Config {
            max_concurrent: 9,
            ..Config::default()
        };
        let (s, _) = plan(tasks(), &roles, &roomy, &[], &[], None);
        assert!(s
            .waits
            .iter()
            .any(|(i, w)| *i == 0 && *w == Wait::RoleFull { role: 0, max: 2 }));
        assert!(s.waits.iter().any(|(_, w)| *w == Wait::NoRole));
        assert_eq!(s.startable, 1);
        // The global limit, counting what runs.
        let (_, ids) = plan(tasks(), &roles, &config, &[("B-1", "build")], &[], None);
        assert_eq!(ids, ["TASK-004", "TASK-002"]);
        // Never a second agent for a task one works on.
        let (s, ids) = plan(tasks(), &roles, &config, &[], &["TASK-002"], None);
        assert_eq!(ids, ["TASK-004", "TASK-003", "TASK-001"]);
        assert!(s.waits.iter().any(|(_, w)| *w == Wait::Busy));
        // spawn_stagger: one start per stagger; none right after a start.
        config.spawn_stagger = Duration::from_secs(60);
        let (s, ids) = plan(tasks(), &roles, &config, &[], &[], None);
        assert_eq!(ids, ["TASK-004"]);
        assert!(s.staggered);
        let (_, ids) = plan(
            tasks(),
            &roles,
            &config,
            &[],
            &[],
            Some(Duration::from_secs(1)),
        );
        assert!(ids.is_empty());
        // The memory budget: model CLIs count 300 MB each before any run.
        config.spawn_stagger = Duration::ZERO;
        config.max_agent_memory_mb = Some(500);
        let (s, ids) = plan(tasks(), &roles, &config, &[], &[], None);
        assert_eq!(ids, ["TASK-004"]);
        assert!(s
            .waits
            .iter()
            .any(|(_, w)| *w == Wait::Memory { budget_mb: 500 }));
    }

    /// A $1.00 cap, runs that cost $0.40, three at a time: the step starts
    /// two (the third would make $1.20 with them), and an agent at work
    /// counts the same way.
    #[test]
    fn a_same_step_fan_out_counts_the_agents_it_starts() {
        let roles = [role(
            "build",
            "prefix: B\ntags: [b]\nmax_concurrent: 5\nmodel: sonnet",
        )];
        let config = Config {
            daily_cost_cap_usd: crate::money::Usd::from_f64(1.0),
            ..Config::default()
        };
        let mut reg = Registry::default();
        let past: crate::registry::Agent = serde_json::from_value(serde_json::json!({
            "id": "B-001", "type": "build", "task": "TASK-009", "status": "completed",
            "model": "claude-sonnet-4-5-20250929", "spawned": "2026-01-01T00:00:00Z", "cost_usd": 0.4
        }))
        .unwrap();
        reg.agents.insert(past.id.clone(), past);
        let tasks = || {
            (1..=3)
                .map(|n| task(&format!("TASK-00{n}"), "tags: [b]"))
                .collect::<Vec<_>>()
        };
        let (s, ids) = plan_with(tasks(), &roles, &config, &[], &[], None, &reg, None);
        assert_eq!(ids, ["TASK-001", "TASK-002"]);
        assert!(
            matches!(&s.waits[..], [(2, Wait::Gate(why))] if why.contains("would pass the daily cost cap")),
            "{:?}",
            s.waits
        );
        assert_eq!(
            s.starts[0].forecast,
            Some(Forecast::Median {
                usd: crate::money::Usd::from_f64(0.4).unwrap(),
                runs: 1
            })
        );
        // One at work (asked for `sonnet`): one more starts.
        let mut at_work: crate::registry::Agent = serde_json::from_value(serde_json::json!({
            "id": "B-002", "type": "build", "task": "TASK-008", "status": "active",
            "model": "sonnet", "spawned": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        at_work.status = crate::registry::AgentStatus::Active;
        reg.agents.insert(at_work.id.clone(), at_work);
        let (_, ids) = plan_with(
            tasks(),
            &roles,
            &config,
            &[("B-002", "build")],
            &[],
            None,
            &reg,
            None,
        );
        assert_eq!(ids, ["TASK-001"]);
        // Without a cap, all three.
        let (_, ids) = plan_with(
            tasks(),
            &roles,
            &Config::default(),
            &[],
            &[],
            None,
            &reg,
            None,
        );
        assert_eq!(ids.len(), 3);
    }

    #[test]
    fn a_gate_that_pauses_stops_every_start() {
        let roles = [role("build", "prefix: B\ntags: [b]\nmax_concurrent: 5")];
        let config = Config {
            daily_cost_cap_usd: Some(crate::money::Usd::ZERO),
            ..Config::default()
        };
        let tasks = vec![task("TASK-001", "tags: [b]"), task("TASK-002", "tags: [b]")];
        let (s, ids) = plan(tasks, &roles, &config, &[], &[], None);
        assert!(ids.is_empty());
        assert!(s.paused.is_some());
        assert_eq!(
            s.waits
                .iter()
                .filter(|(_, w)| matches!(w, Wait::Paused(_)))
                .count(),
            2
        );
    }

    #[test]
    fn a_persons_pause_starts_nothing_and_says_so_apart_from_the_cost_cap() {
        let roles = [
            role("build", "prefix: B\ntags: [b]\nmax_concurrent: 5"),
            role("tester", "prefix: T\ntags: [t]"),
        ];
        let config = Config {
            approval_tags: vec!["b".into()],
            ..Config::default()
        };
        let tasks = || {
            vec![
                task("TASK-001", "tags: [b]"),
                task("TASK-002", "tags: [b]"),
                task(
                    "TASK-003",
                    "status: review\nreview_role: tester\nbuilder: B-001\nassigned: B-001",
                ),
            ]
        };
        let pause = Pause {
            by: Some("ada".into()),
            ..Pause::default()
        };
        let (s, ids) = plan_with(
            tasks(),
            &roles,
            &config,
            &[],
            &[],
            None,
            &Registry::default(),
            Some(&pause),
        );
        assert!(ids.is_empty(), "nothing starts while paused");
        assert!(s.actions.is_empty(), "no gate acts (no approval requested)");
        assert!(s.paused.is_none(), "not the cost cap");
        assert_eq!(
            s.paused_by_person.as_deref(),
            Some("paused by ada (`taskq resume` resumes)")
        );
        assert_eq!(s.waits.len(), 3, "the tester and both ready tasks wait");
        assert!(s
            .waits
            .iter()
            .all(|(_, w)| matches!(w, Wait::PausedByPerson(_)) && !w.is_capacity()));
        // Resumed: the same queue starts its tester and requests approvals.
        let (s, ids) = plan_with(
            tasks(),
            &roles,
            &config,
            &[],
            &[],
            None,
            &Registry::default(),
            None,
        );
        assert_eq!(ids, ["TASK-003"]);
        assert_eq!(s.actions.len(), 2);
        assert!(s.paused_by_person.is_none());
    }
}
