//! `taskq stop AGENT-ID|TASK-ID`: stop one agent (or the agent running a
//! task) and everything it spawned.
//!
//! Marks them `stopping` in the registry (under the queue lock), then
//! signals their process groups (TERM, grace, KILL). A running factory sees
//! them end and records them as stopped, returning (or with `--cancel`,
//! cancelling) their tasks; with no factory running, this command does that
//! bookkeeping itself.

use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::context::Ctx;
use crate::error::{Error, Result};

use crate::lock::LockGuard;
use crate::registry::{AgentStatus, Registry};
use crate::spawn;
use crate::task::Status;

/// Arguments of `taskq stop`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent id (`BLD-004`), or a task id (`42`, `TASK-042`) to stop
    /// the agent running that task.
    #[arg(value_name = "AGENT|TASK")]
    pub agent: String,

    /// Cancel its task instead of returning it to ready.
    #[arg(long)]
    pub cancel: bool,
}

/// Runs `taskq stop`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let config = Config::load(&ctx.root)?;
    // Mark the agent and its live descendants `stopping`, deepest first.
    let targets = super::with_writer(ctx, |w| {
        let mut reg = Registry::load(&ctx.root)?;
        let agent_id = match reg.agents.get(&args.agent) {
            Some(_) => args.agent.clone(),
            None => agent_of_task(w, &reg, &args.agent)?,
        };
        let agent = &reg.agents[&agent_id];
        if !agent.status.is_live() {
            return Err(Error::conflict(format!(
                "`{agent_id}` is not running (it is {})",
                agent.status.as_str()
            )));
        }
        let mut targets = vec![(0usize, agent_id.clone())];
        let mut k = 0;
        while k < targets.len() {
            let (depth, parent) = targets[k].clone();
            for a in reg.live() {
                if a.parent.as_deref() == Some(parent.as_str())
                    && !targets.iter().any(|(_, t)| *t == a.id)
                {
                    targets.push((depth + 1, a.id.clone()));
                }
            }
            k += 1;
        }
        targets.sort_by_key(|t| std::cmp::Reverse(t.0));
        for (_, id) in &targets {
            let a = reg.agents.get_mut(id).expect("listed from the registry");
            a.status = AgentStatus::Stopping;
            a.cancel_task = args.cancel && *id == agent_id;
        }
        reg.save(&ctx.root, &mut w.disk, w.now)?;
        Ok(targets
            .into_iter()
            .map(|(_, id)| {
                let a = &reg.agents[&id];
                (id, a.pid, a.pid_start)
            })
            .collect::<Vec<_>>())
    })?;
    for (id, pid, start) in &targets {
        if let Some(pid) = pid.filter(|p| spawn::is_alive(*p, *start)) {
            let killed = spawn::terminate_group(pid, config.stop_grace);
            ctx.out.note(format!(
                "{id}: stopped (pid {pid}{})",
                if killed {
                    ", killed after the grace period"
                } else {
                    ""
                }
            ));
        } else {
            ctx.out.note(format!("{id}: its process had already ended"));
        }
    }
    // No factory running: record the stop ourselves (holding the daemon
    // lock so none starts meanwhile).
    if let Some(_daemon) = LockGuard::try_acquire(&ctx.root.run_lock())? {
        super::with_writer(ctx, |w| {
            let mut reg = Registry::load(&ctx.root)?;
            for (id, _, _) in &targets {
                let Some(a) = reg.agents.get_mut(id) else {
                    continue;
                };
                if a.status != AgentStatus::Stopping {
                    continue;
                }
                a.status = AgentStatus::Stopped;
                a.completed = Some(w.now);
                a.reason = Some("stopped".into());
                // What it spent until the stop: Claude prints its result,
                // with its cost, after the SIGTERM.
                let log = spawn::read_tail(&ctx.root.log(id), 8 << 20);
                let outcome =
                    crate::agent::parse(a.adapter, &log, None, a.model.as_deref(), &config);
                a.tokens = outcome.tokens;
                a.cost_usd = crate::agent::recorded_cost(a.adapter, outcome.cost_usd);
                let (task, cancel) = (a.task.clone(), a.cancel_task);
                if let Some(i) = w.scan.position(&task) {
                    let t = &w.scan.tasks[i];
                    if t.status == Status::Running && t.assigned.as_deref() == Some(id.as_str()) {
                        w.return_stopped(i, id, cancel)?;
                    }
                }
            }
            reg.save(&ctx.root, &mut w.disk, w.now)?;
            super::report(ctx, w);
            Ok(())
        })?;
    }
    let _ = Duration::ZERO;
    Ok(ExitCode::SUCCESS)
}

/// The live agent running the task `input` names (`42`, `TASK-042`): the
/// task's `assigned` agent, else the newest live agent on it.
fn agent_of_task(w: &crate::store::Writer, reg: &Registry, input: &str) -> Result<String> {
    let i = w.scan.resolve(input).map_err(|_| {
        Error::usage_hint(
            format!("no agent or task `{input}`"),
            "`taskq status` lists the agents, `taskq list` the tasks",
        )
    })?;
    let t = &w.scan.tasks[i];
    let assigned = t
        .assigned
        .as_deref()
        .and_then(|a| reg.agents.get(a))
        .filter(|a| a.status.is_live() && *a.task == *t.id);
    let newest = || {
        reg.live()
            .filter(|a| *a.task == *t.id)
            .max_by_key(|a| a.spawned)
    };
    match assigned.or_else(newest) {
        Some(a) => Ok(a.id.clone()),
        None => Err(Error::conflict(format!(
            "`{}` has no running agent (it is {})",
            t.id,
            crate::queue::Queue::new(&w.scan, w.now).state[i].as_str()
        ))),
    }
}
