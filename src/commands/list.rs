//! `taskq list`: every task, or those matching filters, one line each.

use std::fmt::Write as _;
use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::queue::{Queue, State};
use crate::store::display_title;
use crate::task::{id_order, Status};

use super::{scan_and_warn, TaskJson};

/// Arguments of `taskq list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only tasks whose status or computed state is S (ready, blocked,
    /// waiting, running, review, hold, failed, done, cancelled, invalid).
    #[arg(long, value_name = "S")]
    pub status: Option<String>,

    /// Only tasks with this tag.
    #[arg(long, value_name = "T")]
    pub tag: Option<String>,

    /// Only tasks that can be claimed now, in queue order (the order
    /// `taskq next` hands them out).
    #[arg(long)]
    pub ready: bool,
}

const STATES: &[&str] = &[
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
];

/// Runs `taskq list`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    if let Some(s) = &args.status {
        if !STATES.contains(&s.as_str()) {
            let hint = crate::error::suggest(s, STATES).map_or_else(
                || format!("one of: {}", STATES.join(", ")),
                |w| format!("did you mean `{w}`?"),
            );
            return Err(Error::usage_hint(format!("unknown status `{s}`"), hint));
        }
    }
    let scan = scan_and_warn(ctx);
    let queue = Queue::new(&scan, ctx.now);
    super::warn_graph(ctx, &scan, &queue.graph);
    let keep = |i: usize| {
        let t = &scan.tasks[i];
        args.tag
            .as_deref()
            .is_none_or(|tag| t.tags.iter().any(|x| &**x == tag))
            && args.status.as_deref().is_none_or(|s| {
                queue.state[i].as_str() == s || s.parse::<Status>().is_ok_and(|st| st == t.status)
            })
    };
    let order: Vec<usize> = if args.ready {
        queue
            .ready(|_| true)
            .into_iter()
            .map(|r| r.index)
            .filter(|&i| keep(i))
            .collect()
    } else {
        let mut all: Vec<usize> = (0..scan.tasks.len()).filter(|&i| keep(i)).collect();
        all.sort_by(|&a, &b| id_order(&scan.tasks[a].id, &scan.tasks[b].id));
        all
    };
    if ctx.out.json {
        let items = order.iter().map(|&i| {
            TaskJson::new(
                &ctx.root,
                &queue,
                i,
                display_title(&ctx.root, &scan.tasks[i]),
            )
        });
        ctx.out.json_seq(items)?;
        return Ok(ExitCode::SUCCESS);
    }
    let approvals = crate::approval::waiting(
        &ctx.root,
        order
            .iter()
            .filter(|&&i| queue.state[i] == State::Ready)
            .map(|&i| (i, scan.tasks[i].clone())),
    );
    let width = order
        .iter()
        .map(|&i| scan.tasks[i].id.len())
        .max()
        .unwrap_or(8);
    let mut out = String::with_capacity(order.len() * 64);
    for &i in &order {
        let t = &scan.tasks[i];
        let _ = write!(
            out,
            "{:<width$}  {:<9} {:<8} {}",
            t.id,
            queue.state[i].as_str(),
            t.priority,
            display_title(&ctx.root, t)
        );
        if !t.tags.is_empty() {
            let _ = write!(out, "  [{}]", t.tags.join(","));
        }
        if let Some(a) = t.effective_assigned(ctx.now) {
            let _ = write!(out, "  @{a}");
        }
        if let Some((_, file)) = approvals.iter().find(|(j, _)| *j == i) {
            let _ = write!(out, "  (waits for approval: {file})");
        }
        if queue.state[i] == State::Blocked {
            let _ = write!(
                out,
                "  (waits for {})",
                queue.open_dependencies(i).join(", ")
            );
        }
        out.push('\n');
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}
