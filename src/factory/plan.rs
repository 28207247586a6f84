//! What `taskq run --dry-run` and `taskq why` say the factory will do:
//! the [scheduler](super::schedule)'s answer for a snapshot read from the
//! disk, and for every other open task the reason it waits, including the
//! tasks that can never run as things are (no role, a dependency cycle, a
//! missing or failed dependency).

use std::collections::HashSet;

use serde::Serialize;

use super::gate::{GateAction, GateInput};
use super::schedule::{self, Snapshot, Wait};
use crate::approval;
use crate::config::Config;
use crate::error::Result;
use crate::queue::{Queue, State};
use crate::registry::Registry;
use crate::role::{self, Role};
use crate::root::Root;
use crate::spawn;
use crate::store::{self, Scan};
use crate::task::{format_timestamp, Timestamp};

/// One line of the plan `taskq run --dry-run` prints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlanItem {
    /// The task.
    pub task: String,
    /// Its title.
    pub title: String,
    /// `spawn` or `wait`.
    pub action: &'static str,
    /// The role it goes to.
    pub role: Option<String>,
    /// The adapter.
    pub agent: Option<String>,
    /// The model of the next attempt.
    pub model: Option<String>,
    /// The builder whose work it reviews (a tester's start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub review_of: Option<String>,
    /// What it is expected to cost, with a daily cost cap (`$0.40 (median
    /// of 3 past runs)`, or `unknown (...)`: the cap cannot foresee it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<String>,
    /// Why it waits.
    pub why: Option<String>,
    /// It can never run as things are (see [`never_runs`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub never: bool,
}

/// What the factory would do now, without doing it: the agents it would
/// start first (testers first, then ready tasks in queue order), then
/// every other open task with the reason it waits.
pub fn plan(root: &Root, scan: &Scan, now: Timestamp) -> Result<(Vec<PlanItem>, Config)> {
    let config = Config::load(root)?;
    let (roles, problems) = role::load_all(root);
    if let Some(p) = problems.into_iter().next() {
        return Err(p.into());
    }
    let reg = Registry::load(root)?;
    let queue = Queue::new(scan, now);
    let live: Vec<_> = reg.live().collect();
    let running: Vec<(&str, &str)> = live
        .iter()
        .map(|a| (a.id.as_str(), a.role.as_str()))
        .collect();
    let memory_used_kb = match config.max_agent_memory_mb {
        Some(_) => live
            .iter()
            .filter_map(|a| a.pid.and_then(spawn::tree_rss_kb))
            .sum(),
        None => 0,
    };
    let pause = crate::pause::read(root);
    let ledger = approval::lazy_ledger(root);
    let decision = |t: &crate::task::Task| approval::verified(root, t, &roles, &config, &ledger);
    let found = HashSet::new();
    let missing = |r: &Role| super::launch::missing_program(r, &config, &found);
    let snapshot = Snapshot {
        queue: &queue,
        roles: &roles,
        gates: GateInput {
            root,
            config: &config,
            registry: &reg,
            spent_today: reg.spent_today(now),
            decision: &decision,
            missing_program: &missing,
        },
        running: &running,
        ending: &[],
        busy: &[],
        memory_used_kb,
        since_last_spawn: None,
        pause: pause.as_ref(),
    };
    let s = schedule::schedule(&snapshot);
    let never = never_runs(&queue, &roles, &config);
    let title = |i: usize| store::display_title(root, &scan.tasks[i]);
    let mut items = Vec::new();
    let mut seen = vec![false; scan.tasks.len()];
    for start in &s.starts {
        seen[start.task] = true;
        items.push(PlanItem {
            task: scan.tasks[start.task].id.to_string(),
            title: title(start.task),
            action: "spawn",
            role: Some(start.role.name.clone()),
            agent: Some(start.role.settings.agent.to_string()),
            model: start.model.clone(),
            review_of: start.review_of.clone(),
            forecast: start.forecast.map(|f| f.describe()),
            why: None,
            never: false,
        });
    }
    let mut waits: Vec<(usize, String, bool)> = Vec::new();
    for (i, action) in &s.actions {
        let t = &scan.tasks[*i];
        let why = match action {
            GateAction::Fail(why) => format!("will fail: {why}"),
            GateAction::Cancel(why) => format!("will be cancelled: {why}"),
            GateAction::RequestApproval { .. } => format!(
                "needs approval: the factory will write approvals/pending/{}.md",
                t.id
            ),
            GateAction::Renew { stale, void, .. } => format!(
                "needs approval again: {} is void ({}); the factory will move it to approvals/stale/ and write approvals/pending/{}.md",
                stale.strip_prefix(&root.dir).unwrap_or(stale).display(),
                void.why,
                t.id
            ),
        };
        waits.push((*i, why, false));
    }
    for (i, wait) in &s.waits {
        let t = &scan.tasks[*i];
        let stuck = matches!(wait, Wait::NoRole | Wait::NoReviewRole(_));
        waits.push((*i, wait.describe(&roles, t), stuck));
    }
    // In the order the scheduler looked at them.
    let order: Vec<usize> = s
        .waits
        .iter()
        .map(|(i, _)| *i)
        .chain(s.actions.iter().map(|(i, _)| *i))
        .collect();
    waits.sort_by_key(|(i, ..)| order.iter().position(|j| j == i));
    for (i, why, stuck) in waits {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let t = &scan.tasks[i];
        let role = role::route(t, &roles, &config);
        items.push(PlanItem {
            task: t.id.to_string(),
            title: title(i),
            action: "wait",
            role: role.map(|r| r.name.clone()),
            agent: role.map(|r| r.settings.agent.to_string()),
            model: role.and_then(|r| {
                crate::agent::model_for_attempt(r, t.extra().model.as_deref(), t.attempts + 1)
            }),
            review_of: None,
            forecast: None,
            why: Some(why),
            never: stuck,
        });
    }
    // Open tasks the scheduler did not look at, by id.
    let mut rest: Vec<usize> = (0..scan.tasks.len())
        .filter(|&i| !seen[i])
        .filter(|&i| {
            matches!(
                queue.state[i],
                State::Ready
                    | State::Blocked
                    | State::Waiting
                    | State::Running
                    | State::Review
                    | State::Hold
                    | State::Invalid
            )
        })
        .collect();
    rest.sort_by(|&a, &b| crate::task::id_order(&scan.tasks[a].id, &scan.tasks[b].id));
    for i in rest {
        let t = &scan.tasks[i];
        let stuck = never
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, why)| why.clone());
        let why = match (&stuck, queue.state[i]) {
            (Some(why), _) => why.clone(),
            (None, State::Blocked) => {
                format!("waits for {}", queue.open_dependencies(i).join(", "))
            }
            (None, State::Running) => format!("running ({})", t.assigned.as_deref().unwrap_or("?")),
            (None, State::Review) => "in review".into(),
            (None, State::Hold) => "on hold".into(),
            (None, State::Invalid) => "invalid fields (see `taskq check`)".into(),
            (None, _) => match t.extra().retry_after {
                Some(at) if at > now => {
                    format!("retry {} at {}", t.attempts + 1, format_timestamp(at))
                }
                _ if !t.has_id => "no id yet (adopted on the next write)".into(),
                _ => format!("assigned to {}", t.assigned.as_deref().unwrap_or("?")),
            },
        };
        items.push(PlanItem {
            task: t.id.to_string(),
            title: title(i),
            action: "wait",
            role: None,
            agent: None,
            model: None,
            review_of: None,
            forecast: None,
            why: Some(why),
            never: stuck.is_some(),
        });
    }
    Ok((items, config))
}

/// The open tasks that can never run as things are, each with the reason:
/// no role takes it; it is in a dependency cycle (`TASK-036 -> TASK-037 ->
/// TASK-036`); it depends on a task that does not exist, failed or was
/// cancelled; or on a task that can never run. Linear in the queue.
pub fn never_runs(queue: &Queue<'_>, roles: &[Role], config: &Config) -> Vec<(usize, String)> {
    let scan = queue.scan;
    let n = scan.tasks.len();
    let mut why: Vec<Option<String>> = vec![None; n];
    let open = |i: usize| {
        matches!(
            queue.state[i],
            State::Ready | State::Blocked | State::Waiting
        )
    };
    for cycle in queue.graph.cycles() {
        let mut ids: Vec<&str> = cycle.iter().map(|&i| &*scan.tasks[i].id).collect();
        ids.push(ids[0]);
        let text = format!("in a dependency cycle: {}", ids.join(" -> "));
        for &i in &cycle {
            why[i] = Some(text.clone());
        }
    }
    for (i, dep) in &queue.graph.missing {
        why[*i].get_or_insert_with(|| format!("depends on {dep}, which does not exist"));
    }
    for (i, t) in scan.tasks.iter().enumerate() {
        if why[i].is_none() && open(i) {
            if let Some(dead) = queue.graph.deps[i]
                .iter()
                .map(|&d| d as usize)
                .find(|&d| matches!(queue.state[d], State::Failed | State::Cancelled))
            {
                let d = &scan.tasks[dead];
                why[i] = Some(format!(
                    "depends on {}, which {}",
                    d.id,
                    queue.state[dead].as_str()
                ));
            } else if queue.state[i] != State::Blocked && role::route(t, roles, config).is_none() {
                // (A blocked task is said to wait for its dependencies
                // first; once ready, that no role takes it.)
                why[i] = Some(schedule::no_role(t));
            }
        }
    }
    // What waits on a task that can never run can never run either.
    let mut work: Vec<usize> = (0..n).filter(|&i| why[i].is_some()).collect();
    while let Some(d) = work.pop() {
        for &j in &queue.graph.dependents[d] {
            let j = j as usize;
            if why[j].is_none() && open(j) {
                why[j] = Some(format!(
                    "waits for {}, which can never run",
                    scan.tasks[d].id
                ));
                work.push(j);
            }
        }
    }
    (0..n)
        .filter(|&i| open(i) || queue.state[i] == State::Blocked)
        .filter_map(|i| why[i].take().map(|w| (i, w)))
        .collect()
}
