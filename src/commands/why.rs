//! `taskq why ID`: why a task is or is not running, in a line or two.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::Result;
use crate::factory;
use crate::lock::LockGuard;
use crate::queue::{Queue, State};
use crate::registry::Registry;
use crate::task::format_timestamp;

use super::scan_and_warn;

/// Arguments of `taskq why`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task id.
    pub id: String,
}

/// Runs `taskq why`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let scan = scan_and_warn(ctx);
    let i = scan.resolve(&args.id)?;
    let queue = Queue::new(&scan, ctx.now);
    let t = &scan.tasks[i];
    let e = t.extra();
    let reg = Registry::load(&ctx.root)?;
    let state = queue.state[i];
    let mut lines: Vec<String> = Vec::new();
    match state {
        State::Done => lines.push(format!(
            "done{}{}",
            e.completed
                .map(|c| format!(" at {}", format_timestamp(c)))
                .unwrap_or_default(),
            e.result
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )),
        State::Cancelled => lines.push(format!(
            "cancelled{}",
            e.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        )),
        State::Hold => lines.push(format!(
            "on hold; `taskq release {}` returns it to ready",
            t.id
        )),
        State::Failed => lines.push(format!(
            "failed after {}{}; `taskq release {}` to try again",
            crate::output::count(t.attempts as usize, "attempt"),
            e.reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            t.id
        )),
        State::Invalid => {
            lines.push("its file has invalid fields; `taskq check` shows them".into())
        }
        State::Running => {
            let who = t.assigned.as_deref().unwrap_or("?");
            let alive = reg.agents.get(who).map(|a| a.status.as_str());
            lines.push(format!(
                "running: claimed by {who}{}{}",
                e.started
                    .map(|s| format!(" since {}", format_timestamp(s)))
                    .unwrap_or_default(),
                alive.map(|s| format!(" (agent {s})")).unwrap_or_default()
            ));
            if let Some(l) = e.lease_expires {
                lines.push(format!("its lease runs out at {}", format_timestamp(l)));
            }
        }
        State::Review => match (t.assigned.as_deref(), e.builder.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                lines.push(format!("in review: {a} checks the work of {b}"))
            }
            (_, b) => lines.push(format!(
                "built by {}; waiting for a {} to review it",
                b.unwrap_or("?"),
                e.review_role.as_deref().unwrap_or("tester")
            )),
        },
        State::Blocked => {
            let (plan, _) = factory::plan(&ctx.root, &scan, ctx.now)?;
            match plan.iter().find(|p| p.task == *t.id && p.never) {
                // A cycle, or a dependency that failed or does not exist.
                Some(p) => lines.push(format!(
                    "can never run as things are: {}",
                    p.why.as_deref().unwrap_or("?")
                )),
                None => {
                    let open: Vec<String> = queue
                        .open_dependencies(i)
                        .iter()
                        .map(|d| match scan.position(d) {
                            Some(j) => format!("{d} ({})", queue.state[j].as_str()),
                            None => format!("{d} (missing)"),
                        })
                        .collect::<Vec<_>>();
                    lines.push(format!("waits for {}", open.join(", ")));
                }
            }
        }
        State::Waiting => {
            if let Some(at) = e.retry_after.filter(|r| *r > ctx.now) {
                lines.push(format!(
                    "retry {} at {}{}",
                    t.attempts + 1,
                    format_timestamp(at),
                    e.reason
                        .as_deref()
                        .map(|r| format!(" (after: {r})"))
                        .unwrap_or_default()
                ));
            } else if !t.has_id {
                lines.push(
                    "has no id yet; the next writing command (or the factory) adopts it".into(),
                );
            } else if let Some(a) = &t.assigned {
                lines.push(format!(
                    "status ready but assigned to {a}; `taskq release {}` frees it",
                    t.id
                ));
            }
        }
        State::Ready => {
            let (plan, _) = factory::plan(&ctx.root, &scan, ctx.now)?;
            match plan.iter().find(|p| p.task == *t.id) {
                Some(p) if p.action == "spawn" => lines.push(format!(
                    "ready: the factory runs it next as {} ({}{})",
                    p.role.as_deref().unwrap_or("?"),
                    p.agent.as_deref().unwrap_or("?"),
                    p.model
                        .as_deref()
                        .map(|m| format!(", {m}"))
                        .unwrap_or_default()
                )),
                Some(p) if p.never => lines.push(format!(
                    "ready, but can never run as things are: {}",
                    p.why.as_deref().unwrap_or("?")
                )),
                Some(p) => lines.push(format!(
                    "ready, but {}",
                    p.why.as_deref().unwrap_or("waiting")
                )),
                None => lines.push("ready".into()),
            }
            if matches!(LockGuard::try_acquire(&ctx.root.run_lock()), Ok(Some(_))) {
                lines.push("no factory is running (`taskq run` starts one)".into());
            }
        }
    }
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({
            "task": t.id.to_string(),
            "state": state,
            "why": lines,
            "blocked_by": queue.open_dependencies(i),
        }))?;
    } else {
        ctx.out.line(format!("{}: {}", t.id, lines.join("\n  ")))?;
    }
    Ok(ExitCode::SUCCESS)
}
