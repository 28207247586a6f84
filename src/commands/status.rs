//! `taskq status [AGENT-ID|TASK-ID]`: what the factory is doing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use chrono::{Datelike, Local};
use serde::Serialize;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::queue::{Queue, State};
use crate::registry::{Agent, Registry};
use crate::root::log_path;
use crate::spawn;
use crate::task::Timestamp;

/// Arguments of `taskq status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// An agent id (`BLD-004`) or a task id (`TASK-006`) to show in detail,
    /// with the tail of its log.
    pub id: Option<String>,

    /// Lines of log to show in detail views.
    #[arg(long, default_value_t = 20)]
    pub lines: usize,
}

#[derive(Serialize)]
struct Spend {
    today_usd: f64,
    week_usd: f64,
    by_role: BTreeMap<String, f64>,
    by_model: BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    factory_pid: Option<u32>,
    /// A person paused the factory (`taskq pause`): who, when, why.
    paused: Option<crate::pause::Pause>,
    active: Vec<&'a Agent>,
    queue: BTreeMap<&'static str, usize>,
    spend: Spend,
    recent: Vec<&'a Agent>,
    /// Transitions waiting for a git commit, and why.
    git: Option<crate::git::Waiting>,
}

/// Runs `taskq status`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let reg = Registry::load(&ctx.root)?;
    if let Some(id) = &args.id {
        return detail(ctx, &reg, id, args.lines);
    }
    let scan = super::scan_lean_and_warn(ctx);
    let queue = Queue::new(&scan, ctx.now);
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    for s in [
        "ready",
        "blocked",
        "waiting",
        "running",
        "review",
        "hold",
        "failed",
        "done",
        "cancelled",
        "invalid",
    ] {
        counts.insert(s, 0);
    }
    for s in &queue.state {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    let factory_pid = factory_pid(ctx);
    let active: Vec<&Agent> = reg.live().collect();
    let mut recent: Vec<&Agent> = reg
        .agents
        .values()
        .filter(|a| !a.status.is_live())
        .collect();
    recent.sort_by_key(|a| std::cmp::Reverse(a.completed.unwrap_or(a.spawned)));
    recent.truncate(5);
    let spend = spend(&reg, ctx.now);
    let git = crate::git::Git::detect(&ctx.root.dir).and_then(|g| g.waiting());
    let paused = crate::pause::read(&ctx.root);
    if ctx.out.json {
        ctx.out.json(&StatusJson {
            factory_pid,
            paused,
            active,
            queue: counts,
            spend,
            recent,
            git,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    match factory_pid {
        Some(pid) => {
            let _ = writeln!(out, "factory: running (pid {pid})");
        }
        None => out.push_str("factory: not running (`taskq run` starts it)\n"),
    }
    if let Some(p) = &paused {
        let _ = writeln!(
            out,
            "{}: no new agents start; running agents go on",
            p.describe()
        );
    }
    let _ = writeln!(out, "agents: {} active", active.len());
    for a in &active {
        let rss = a
            .pid
            .filter(|p| spawn::is_alive(*p, a.pid_start))
            .and_then(spawn::tree_rss_kb)
            .map(|kb| format!("  {} MB", kb / 1024))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<8} {:<9} {:<10} {:<20} {}  {}{rss}",
            a.id,
            a.role,
            a.task,
            a.model.as_deref().unwrap_or(a.adapter.name()),
            a.status.as_str(),
            ago(a.spawned, ctx.now)
        );
    }
    let _ = writeln!(
        out,
        "queue: {} ready, {} blocked, {} running, {} review, {} failed, {} done ({} waiting, {} hold, {} cancelled, {} invalid)",
        counts["ready"], counts["blocked"], counts["running"], counts["review"], counts["failed"], counts["done"],
        counts["waiting"], counts["hold"], counts["cancelled"], counts["invalid"]
    );
    let _ = writeln!(
        out,
        "spend: today ${:.2}, this week ${:.2}",
        spend.today_usd, spend.week_usd
    );
    if let Some(cap) = crate::config::Config::load(&ctx.root)
        .ok()
        .and_then(|c| c.daily_cost_cap_usd)
    {
        if spend.today_usd >= cap {
            let _ = writeln!(
                out,
                "paused: daily cost cap reached (${:.2} of ${cap:.2}); no new agents until local midnight",
                spend.today_usd
            );
        } else {
            let _ = writeln!(
                out,
                "daily cost cap: ${cap:.2} (${:.2} left today)",
                cap - spend.today_usd
            );
        }
    }
    if let Some(w) = &git {
        let what = crate::output::count(w.transitions, "transition");
        let _ = writeln!(out, "git: {what} waiting ({})", w.reason);
    }
    let approvals = crate::approval::waiting(
        &ctx.root,
        (0..scan.tasks.len())
            .filter(|&i| queue.state[i] == State::Ready)
            .map(|i| (i, scan.tasks[i].clone())),
    );
    for (i, file) in &approvals {
        let _ = writeln!(out, "waiting for approval: {} ({file})", scan.tasks[*i].id);
    }
    if !spend.by_role.is_empty() {
        let roles: Vec<String> = spend
            .by_role
            .iter()
            .map(|(r, c)| format!("{r} ${c:.2}"))
            .collect();
        let _ = writeln!(out, "  this week by role: {}", roles.join(", "));
        let models: Vec<String> = spend
            .by_model
            .iter()
            .map(|(m, c)| format!("{m} ${c:.2}"))
            .collect();
        let _ = writeln!(out, "  this week by model: {}", models.join(", "));
    }
    if !recent.is_empty() {
        out.push_str("recent:\n");
        for a in &recent {
            let _ = writeln!(
                out,
                "  {:<8} {:<10} {:<9} {} ago{}  {}",
                a.id,
                a.task,
                a.status.as_str(),
                ago(a.completed.unwrap_or(a.spawned), ctx.now),
                a.cost_usd.map(|c| format!("  ${c:.2}")).unwrap_or_default(),
                a.reason.as_deref().or(a.result.as_deref()).unwrap_or("")
            );
        }
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}

fn detail(ctx: &Ctx, reg: &Registry, id: &str, lines: usize) -> Result<ExitCode> {
    let agents: Vec<&Agent> = match reg.agents.get(id) {
        Some(a) => vec![a],
        None => {
            let scan = crate::store::scan(&ctx.root);
            let i = scan.resolve(id).map_err(|_| {
                Error::usage_hint(
                    format!("no agent or task `{id}`"),
                    "`taskq status` lists the agents",
                )
            })?;
            let task = &scan.tasks[i].id;
            let mut v: Vec<&Agent> = reg.agents.values().filter(|a| *a.task == **task).collect();
            v.sort_by_key(|a| a.spawned);
            if v.is_empty() {
                let queue = Queue::new(&scan, ctx.now);
                if ctx.out.json {
                    ctx.out.json(&serde_json::json!({"task": task.to_string(), "state": queue.state[i], "agents": []}))?;
                } else {
                    ctx.out.line(format!(
                        "{task}: {} (no agent has run it)",
                        queue.state[i].as_str()
                    ))?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
    };
    let last = agents.last().expect("non-empty");
    let log = spawn::read_tail(&ctx.root.dir.join(log_path(&last.id)), 64 * 1024);
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .take(lines)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if ctx.out.json {
        ctx.out
            .json(&serde_json::json!({"agents": agents, "log_tail": tail}))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    for a in &agents {
        let _ = writeln!(
            out,
            "{} ({} for {}, attempt {}): {}",
            a.id,
            a.role,
            a.task,
            a.attempt,
            a.status.as_str()
        );
        let _ = writeln!(
            out,
            "  adapter {}  model {}",
            a.adapter,
            a.model.as_deref().unwrap_or("-")
        );
        let _ = writeln!(
            out,
            "  spawned {}  ({} ago)",
            crate::task::format_timestamp(a.spawned),
            ago(a.spawned, ctx.now)
        );
        if let Some(pid) = a.pid {
            let _ = writeln!(
                out,
                "  pid {pid}{}",
                if a.status.is_live() && spawn::is_alive(pid, a.pid_start) {
                    " (alive)"
                } else {
                    ""
                }
            );
        }
        if let Some(c) = a.completed {
            let _ = writeln!(
                out,
                "  ended {}  exit {}",
                crate::task::format_timestamp(c),
                a.exit_code.map_or("-".into(), |c| c.to_string())
            );
        }
        if let Some(c) = a.cost_usd {
            let _ = writeln!(out, "  cost ${c:.4}");
        }
        if let Some(t) = a.tokens {
            let _ = writeln!(out, "  tokens {} in, {} out", t.input, t.output);
        }
        if let Some(kb) = a.max_rss_kb {
            let _ = writeln!(out, "  peak memory {} MB", kb / 1024);
        }
        if let Some(r) = &a.result {
            let _ = writeln!(out, "  result: {r}");
        }
        if let Some(r) = &a.reason {
            let _ = writeln!(out, "  reason: {r}");
        }
        if let Some(l) = &a.log {
            let _ = writeln!(out, "  log {l}");
        }
    }
    if !tail.is_empty() {
        let _ = writeln!(
            out,
            "--- last {} of {} ---",
            crate::output::count(tail.len(), "line"),
            log_path(&last.id).display()
        );
        for l in tail {
            let _ = writeln!(out, "{l}");
        }
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}

/// The pid of the running factory, if one holds the daemon lock.
pub(crate) fn factory_pid(ctx: &Ctx) -> Option<u32> {
    let path = ctx.root.run_lock();
    match crate::lock::LockGuard::try_acquire(&path) {
        Ok(Some(_free)) => None,
        Ok(None) => crate::lock::read_pid(&path),
        Err(_) => None,
    }
}

fn spend(reg: &Registry, now: Timestamp) -> Spend {
    let today = now.with_timezone(&Local).date_naive();
    let week_start =
        today - chrono::Duration::days(i64::from(today.weekday().num_days_from_monday()));
    let mut s = Spend {
        today_usd: 0.0,
        week_usd: 0.0,
        by_role: BTreeMap::new(),
        by_model: BTreeMap::new(),
    };
    for a in reg.agents.values() {
        let Some(cost) = a.cost_usd else { continue };
        let day = a
            .completed
            .unwrap_or(a.spawned)
            .with_timezone(&Local)
            .date_naive();
        if day == today {
            s.today_usd += cost;
        }
        if day >= week_start {
            s.week_usd += cost;
            *s.by_role.entry(a.role.clone()).or_default() += cost;
            *s.by_model
                .entry(a.model.clone().unwrap_or_else(|| a.adapter.to_string()))
                .or_default() += cost;
        }
    }
    s
}

fn ago(t: Timestamp, now: Timestamp) -> String {
    crate::duration::format((now - t).to_std().unwrap_or_default())
}
