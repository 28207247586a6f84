//! `taskq show ID`: one task in full.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::frontmatter::{self, Layout};
use crate::queue::Queue;
use crate::store::display_title;
use crate::task::{format_timestamp, Priority};

use super::{scan_and_warn, TaskJson};

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
    body: String,
}

/// Runs `taskq show`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let mut scan = scan_and_warn(ctx);
    let mut tries = 0;
    let (i, bytes) = loop {
        let i = scan.resolve(&args.id)?;
        let path = ctx.root.task_path(&scan.tasks[i]);
        match std::fs::read(&path) {
            Ok(bytes) => break (i, bytes),
            // Moved (a factory finished it) between the scan and the read:
            // look again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => {
                tries += 1;
                scan = crate::store::scan(&ctx.root);
            }
            Err(e) => return Err(Error::io(path, e)),
        }
    };
    let queue = Queue::new(&scan, ctx.now);
    let t = &scan.tasks[i];
    let body = match frontmatter::split(&bytes, true) {
        Some(Layout::Header { body, .. } | Layout::None { body }) => {
            String::from_utf8_lossy(&bytes[body..]).into_owned()
        }
        _ => String::new(),
    };
    let title = display_title(&ctx.root, t);
    let unblocks = queue.unblocks(i, &mut vec![0; scan.tasks.len()], 1);
    if ctx.out.json {
        ctx.out.json(&ShowJson {
            task: TaskJson::new(&ctx.root, &queue, i, title),
            unblocks,
            body,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let e = t.extra();
    let mut out = String::new();
    let _ = writeln!(out, "{}  {}", t.id, title);
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
        (unblocks > 0).then(|| format!("{unblocks} task(s)")),
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
    if !body.trim().is_empty() {
        out.push('\n');
        out.push_str(body.trim_end());
        out.push('\n');
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}
