//! `taskq status [AGENT-ID|TASK-ID]`: what the factory is doing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::ExitCode;

use chrono::{Datelike, Local};
use serde::Serialize;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::money::{Cost, Usd};
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

/// Spend, in exact amounts (known costs only; the agents whose cost is
/// unknown are counted apart).
#[derive(Serialize)]
struct Spend {
    today_usd: Usd,
    week_usd: Usd,
    /// Agents that ended today (this week) with an unknown cost.
    unknown_today: usize,
    unknown_week: usize,
    /// Every local day the registry holds.
    by_day: BTreeMap<String, Usd>,
    /// This week.
    by_role: BTreeMap<String, Usd>,
    by_model: BTreeMap<String, Usd>,
    by_task: BTreeMap<String, Usd>,
}

/// The daily cost cap and where today stands against it.
#[derive(Serialize)]
struct CapJson {
    daily_usd: Usd,
    mode: &'static str,
    spent_today_usd: Usd,
    left_usd: Usd,
    /// Reached: no new agent starts until local midnight.
    paused: bool,
    reason: Option<String>,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    factory_pid: Option<u32>,
    /// A person paused the factory (`taskq pause`): who, when, why.
    paused: Option<crate::pause::Pause>,
    active: Vec<&'a Agent>,
    queue: BTreeMap<&'static str, usize>,
    spend: Spend,
    /// The daily cost cap, when one is set.
    cap: Option<CapJson>,
    recent: Vec<&'a Agent>,
    /// Transitions waiting for a git commit, and why.
    git: Option<crate::git::Waiting>,
    /// How agents' process trees are kept together (the running factory's,
    /// else what `taskq run` would use here).
    containment: String,
    /// The service unit the factory runs as (`taskq service install`).
    service: Option<String>,
    /// Agents with no output and no CPU time for `stuck_after`.
    stuck: Vec<StuckJson>,
}

#[derive(Serialize)]
struct StuckJson {
    agent: String,
    task: String,
    role: String,
    since: Timestamp,
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
    let containment = spawn::containment(&ctx.root.dir, factory_pid);
    let config = crate::config::Config::load(&ctx.root).ok();
    let cap = config.as_ref().and_then(|c| {
        let cap = c.daily_cost_cap_usd?;
        let paused = spend.today_usd >= cap;
        Some(CapJson {
            daily_usd: cap,
            mode: c.cap_mode.as_str(),
            spent_today_usd: spend.today_usd,
            left_usd: cap.saturating_sub(spend.today_usd),
            paused,
            reason: paused.then(|| {
                format!(
                    "daily cost cap reached ({} of {cap} spent today); resumes at local midnight",
                    spend.today_usd
                )
            }),
        })
    });
    // What the running factory flagged (a file left by one that is gone
    // says nothing).
    let runtime = crate::notify::Runtime::load(&ctx.root);
    let runtime = match factory_pid.is_some() && runtime.pid == factory_pid {
        true => runtime,
        false => crate::notify::Runtime::default(),
    };
    let stuck: Vec<StuckJson> = runtime
        .stuck
        .iter()
        .filter(|(id, _)| reg.agents.get(*id).is_some_and(|a| a.status.is_live()))
        .map(|(id, s)| StuckJson {
            agent: id.clone(),
            task: s.task.clone(),
            role: s.role.clone(),
            since: s.since,
        })
        .collect();
    let paused = crate::pause::read(&ctx.root);
    if ctx.out.json {
        ctx.out.json(&StatusJson {
            factory_pid,
            paused,
            active,
            queue: counts,
            spend,
            cap,
            recent,
            git,
            containment,
            service: runtime.service.clone(),
            stuck,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    match factory_pid {
        Some(pid) => match &runtime.service {
            Some(unit) => {
                let _ = writeln!(out, "factory: running as service {unit} (pid {pid})");
            }
            None => {
                let _ = writeln!(out, "factory: running (pid {pid})");
            }
        },
        None => out.push_str("factory: not running (`taskq run` starts it)\n"),
    }
    let _ = writeln!(out, "containment: {containment}");
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
        let flag = match stuck.iter().find(|s| s.agent == a.id) {
            Some(s) => format!("  STUCK (no output or CPU for {})", ago(s.since, ctx.now)),
            None => String::new(),
        };
        // Which sandbox it runs in; an agent without one is said loudly.
        let sandbox = match a.sandbox.as_deref() {
            Some(s) if s.starts_with("off") => format!("  UNSANDBOXED{}", &s[3..]),
            Some(s) => format!("  sandbox: {s}"),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "  {:<8} {:<9} {:<10} {:<20} {}  {}{rss}{sandbox}{flag}",
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
        "spend: today {}, this week {}",
        spend.today_usd, spend.week_usd
    );
    if spend.unknown_week > 0 {
        let _ = writeln!(
            out,
            "cost unknown: {} today, {} this week (not in these sums; `taskq status AGENT` says why)",
            crate::output::count(spend.unknown_today, "agent"),
            crate::output::count(spend.unknown_week, "agent"),
        );
    }
    if let Some(cap) = &cap {
        if cap.paused {
            let _ = writeln!(
                out,
                "paused: daily cost cap reached ({} of {}); no new agents until local midnight",
                cap.spent_today_usd, cap.daily_usd
            );
        } else {
            let _ = writeln!(
                out,
                "daily cost cap: {} ({} left today; cap_mode {})",
                cap.daily_usd, cap.left_usd, cap.mode
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
            .map(|(r, c)| format!("{r} {c}"))
            .collect();
        let _ = writeln!(out, "  this week by role: {}", roles.join(", "));
        let models: Vec<String> = spend
            .by_model
            .iter()
            .map(|(m, c)| format!("{m} {c}"))
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
                a.cost_usd.map(|c| format!("  {c}")).unwrap_or_default(),
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
        match a.cost_usd {
            Some(Cost::Known(c)) => {
                let _ = writeln!(out, "  cost {c}");
            }
            Some(Cost::Unknown) => {
                let _ = writeln!(
                    out,
                    "  cost unknown (no cost in its output, and {})",
                    match (a.tokens, a.adapter.is_model_cli()) {
                        (Some(_), _) => "no price for its model in the config's `prices`",
                        _ => "no token counts to price",
                    }
                );
            }
            None => {}
        }
        if let Some(t) = a.tokens {
            let cached = match t.cached_input {
                0 => String::new(),
                n => format!(" ({n} cached)"),
            };
            let _ = writeln!(out, "  tokens {} in{cached}, {} out", t.input, t.output);
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
        today_usd: Usd::ZERO,
        week_usd: Usd::ZERO,
        unknown_today: 0,
        unknown_week: 0,
        by_day: BTreeMap::new(),
        by_role: BTreeMap::new(),
        by_model: BTreeMap::new(),
        by_task: BTreeMap::new(),
    };
    for a in reg.agents.values() {
        let Some(cost) = a.cost_usd else { continue };
        let day = a
            .completed
            .unwrap_or(a.spawned)
            .with_timezone(&Local)
            .date_naive();
        let cost = match cost {
            Cost::Known(c) => c,
            Cost::Unknown => {
                s.unknown_today += usize::from(day == today);
                s.unknown_week += usize::from(day >= week_start);
                continue;
            }
        };
        *s.by_day.entry(day.to_string()).or_default() += cost;
        if day == today {
            s.today_usd += cost;
        }
        if day >= week_start {
            s.week_usd += cost;
            *s.by_role.entry(a.role.clone()).or_default() += cost;
            *s.by_model
                .entry(a.model.clone().unwrap_or_else(|| a.adapter.to_string()))
                .or_default() += cost;
            *s.by_task.entry(a.task.clone()).or_default() += cost;
        }
    }
    s
}

fn ago(t: Timestamp, now: Timestamp) -> String {
    crate::duration::format((now - t).to_std().unwrap_or_default())
}
