//! `taskq show ID`: one task in full.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::frontmatter::{self, Layout};
use crate::fsutil;
use crate::output::count;
use crate::queue::Queue;
use crate::store::display_title;
use crate::task::{format_timestamp, Priority};

use super::{open_task, scan_and_warn, TaskJson};

/// Arguments of `taskq show`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task id (`TASK-006`, or just `6`).
    pub id: String,
}

#[derive(Serialize)]
struct ShowJson {
    #[serde(flatten)]
    task: TaskJson,
    unblocks: u32,
    /// `cost_usd:` the task's agents' total cost so far.
    cost_usd: Option<crate::money::Usd>,
    /// `review_role:` the role that reviews the work.
    review_role: Option<String>,
    /// `builder:` the agent whose work is (or was) under review.
    builder: Option<String>,
    /// `tested_by:` the tester agent that passed it.
    tested_by: Option<String>,
    /// `review_rounds:` times a tester sent it back.
    review_rounds: u32,
    /// `review_errors:` tester runs that gave no verdict.
    review_errors: u32,
    body: String,
    /// The file is longer than `fsutil::MAX_TASK_BODY`: `body` stops there.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    body_truncated: bool,
}

/// Runs `taskq show`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    // At most MAX_TASK_BODY of the file, and never a FIFO or a link.
    let (scan, i, capped) =
        open_task(
            ctx,
            scan_and_warn(ctx),
            &args.id,
            |p| match fsutil::read_capped(p, fsutil::MAX_TASK_BODY) {
                Ok(Some(capped)) => Ok(capped),
                Ok(None) => Err(std::io::ErrorKind::NotFound.into()),
                Err(Error::Io { source, .. }) => Err(source),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            },
        )?;
    let queue = Queue::new(&scan, ctx.now);
    let t = &scan.tasks[i];
    let truncated = capped.truncated;
    let text = capped.text();
    let bytes = text.as_bytes();
    let body = match frontmatter::split(bytes, true) {
        Some(Layout::Header { body, .. } | Layout::None { body }) => text[body..].to_string(),
        _ => String::new(),
    };
    let unblocks = queue.unblocks(i, &mut vec![0; scan.tasks.len()], 1);
    let e = t.extra();
    // Fields only this command shows: read from the bytes at hand, not kept
    // by the scan.
    let cost_usd = frontmatter::scalar_field(bytes, "cost_usd")
        .and_then(|c| crate::money::Usd::parse(&c).ok());
    let tested_by = frontmatter::scalar_field(bytes, "tested_by");
    let text = |v: &Option<Box<str>>| v.as_deref().map(str::to_string);
    if ctx.out.json {
        ctx.out.json(&ShowJson {
            task: TaskJson::new(&ctx.root, &queue, i),
            unblocks,
            cost_usd,
            review_role: text(&e.review_role),
            builder: text(&e.builder),
            tested_by,
            review_rounds: e.review_rounds,
            review_errors: e.review_errors,
            body,
            body_truncated: truncated,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", t.id, display_title(&ctx.root, t));
    let _ = writeln!(
        out,
        "file:        {}",
        ctx.display_path(&ctx.root.rel_path(t.folder, &t.rel))
            .display()
    );
    let _ = write!(
        out,
        "status:      {} ({})",
        t.status,
        queue.state[i].as_str()
    );
    let open = queue.open_dependencies(i);
    if !open.is_empty() {
        let _ = write!(out, ", waits for {}", open.join(", "));
    }
    out.push('\n');
    let eff = Priority::from_rank(queue.effective[i]);
    if eff == t.priority {
        let _ = writeln!(out, "priority:    {}", t.priority);
    } else {
        let _ = writeln!(
            out,
            "priority:    {} (runs as {eff}: a {eff} task waits on it)",
            t.priority
        );
    }
    let mut field = |name: &str, value: Option<String>| {
        if let Some(v) = value {
            let _ = writeln!(out, "{:<12} {v}", format!("{name}:"));
        }
    };
    field("tags", (!t.tags.is_empty()).then(|| t.tags.join(", ")));
    field(
        "depends on",
        (!t.dependencies.is_empty()).then(|| {
            t.dependencies
                .iter()
                .map(|d| match scan.get(d) {
                    Some(dt) => format!("{d} [{}]", dt.status),
                    None => format!("{d} [missing]"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }),
    );
    field(
        "unblocks",
        (unblocks > 0).then(|| count(unblocks as usize, "task")),
    );
    field("assigned", t.assigned.as_deref().map(str::to_string));
    field("role", t.role.as_deref().map(str::to_string));
    field("model", e.model.as_deref().map(str::to_string));
    field("attempts", (t.attempts > 0).then(|| t.attempts.to_string()));
    field("created", t.created.map(format_timestamp));
    field("started", e.started.map(format_timestamp));
    field("lease until", e.lease_expires.map(format_timestamp));
    field("retry after", e.retry_after.map(format_timestamp));
    field("completed", e.completed.map(format_timestamp));
    field("result", e.result.as_deref().map(str::to_string));
    field("reason", e.reason.as_deref().map(str::to_string));
    field("result file", e.result_file.as_deref().map(str::to_string));
    field("cost", cost_usd.map(|c| c.to_string()));
    field(
        "reviewed by",
        e.review_role.as_deref().map(|r| format!("the {r} role")),
    );
    field("builder", e.builder.as_deref().map(str::to_string));
    field("tested by", tested_by);
    field(
        "review",
        (e.review_rounds + e.review_errors > 0).then(|| {
            format!(
                "{} sent back, {} without a verdict",
                count(e.review_rounds as usize, "round"),
                e.review_errors
            )
        }),
    );
    if !body.trim().is_empty() {
        out.push('\n');
        out.push_str(body.trim_end());
        out.push('\n');
    }
    if truncated {
        let _ = writeln!(
            out,
            "\n… (only the first {} of the file is shown; the rest is in {})",
            fsutil::size_text(fsutil::MAX_TASK_BODY),
            ctx.display_path(&ctx.root.rel_path(t.folder, &t.rel))
                .display()
        );
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}
