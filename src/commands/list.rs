//! `taskq list`: every task, or those matching filters, one line each.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::queue::{Queue, State};
use crate::store::{self, display_title, Root, Scan};
use crate::task::{id_order, Status, Task};

use super::TaskJson;

/// Arguments of `taskq list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only tasks whose status or computed state is S (ready, blocked,
    /// waiting, running, review, hold, failed, done, cancelled, invalid).
    #[arg(long, value_name = "S")]
    pub status: Option<String>,

    /// Only tasks with this tag (`a,b` or the flag repeated: with every
    /// one of them).
    #[arg(long, visible_alias = "tags", value_name = "T")]
    pub tag: Vec<String>,

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
    // In a big queue, finished tasks lean: the queue's order and states
    // need little of them, and their full fields are read again a batch at
    // a time as they are printed (at 100,000 tasks, half of them done:
    // 45-49 MB, not 65-67 MB; 20% slower, so smaller queues are read in full).
    let tags = super::tag_list(&args.tag);
    let scan = store::scan_open_full(&ctx.root, !tags.is_empty());
    super::warn_problems(ctx, &scan);
    let queue = Queue::new(&scan, ctx.now);
    super::warn_graph(ctx, &scan, &queue.graph);
    let keep = |i: usize| {
        let t = &scan.tasks[i];
        super::has_tags(t, &tags)
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
        let items = order.chunks(CHUNK).flat_map(|chunk| {
            let fulls = read_full(&ctx.root, &scan, chunk);
            let queue = &queue;
            chunk
                .iter()
                .zip(fulls)
                .map(move |(&i, t)| TaskJson::of(&ctx.root, queue, i, &t))
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
    // Printed as it goes, 64 KiB at a time: 100,000 lines are never held.
    let mut out = String::with_capacity(80 * 1024);
    let fulls = order
        .chunks(CHUNK)
        .flat_map(|chunk| read_full(&ctx.root, &scan, chunk));
    for (&i, t) in order.iter().zip(fulls) {
        let t: &Task = &t;
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
        if out.len() >= 64 * 1024 {
            ctx.out.text(&out)?;
            out.clear();
        }
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}

/// Tasks printed per batch: each batch is read again in full (the scan
/// was lean) on every core, then printed in order.
const CHUNK: usize = 512;

/// The tasks `chunk` names, in full (see [`store::full`]); read in
/// parallel when many must be read again.
fn read_full<'a>(root: &Root, scan: &'a Scan, chunk: &[usize]) -> Vec<Cow<'a, Task>> {
    let lean = chunk.iter().filter(|&&i| scan.tasks[i].lean).count();
    let threads = match lean {
        0..256 => 1,
        _ => std::thread::available_parallelism().map_or(1, |n| n.get().min(8)),
    };
    if threads == 1 {
        return chunk
            .iter()
            .map(|&i| store::full(root, &scan.tasks[i]))
            .collect();
    }
    let per = chunk.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = chunk
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&i| store::full(root, &scan.tasks[i]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|h| h.join().expect("readers do not panic"))
            .collect()
    })
}
