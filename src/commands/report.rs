//! `taskq report`: what the factory did, as one self-contained HTML page
//! (`--html FILE`), a pull-request comment (`--markdown [FILE]`) or JSON.
//! The model and the renderers are pure (see [`crate::report`]); this
//! reads the tasks, the registry and its history.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::registry::{Agent, Registry};
use crate::report::{self, AgentRow, Report, TaskRow};

/// Arguments of `taskq report`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("format").args(["html", "markdown"])))]
pub struct Args {
    /// Write one self-contained HTML page to FILE: the dependency graph
    /// (SVG), a timeline of agents, cost per day, role and model, failures
    /// with their reasons. No external URL: it works offline and can be
    /// mailed or attached as is.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,

    /// Print a short markdown summary for a pull-request comment (to FILE
    /// when given, else stdout).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub markdown: Option<PathBuf>,
}

/// Runs `taskq report`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let r = build(ctx)?;
    if let Some(path) = &args.html {
        write(path, &report::html(&r))?;
        ctx.out.note(format!(
            "wrote {} ({} tasks, {} agent runs)",
            path.display(),
            r.tasks.len(),
            r.agents.len()
        ));
    }
    if let Some(path) = &args.markdown {
        let text = report::markdown(&r);
        match path.as_os_str() == "-" {
            true => ctx.out.text(text)?,
            false => {
                write(path, &text)?;
                ctx.out.note(format!("wrote {}", path.display()));
            }
        }
    }
    if ctx.out.json {
        ctx.out.json(&r)?;
    } else if args.html.is_none() && args.markdown.is_none() {
        return Err(Error::usage_hint(
            "say which report: `--html FILE`, `--markdown [FILE]` or `--json`",
            "`taskq report --html report.html` writes a page that works offline",
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn write(path: &Path, text: &str) -> Result<()> {
    crate::fsutil::write_atomic(path, text.as_bytes())
}

/// Reads the tasks, the registry and its history into a report.
fn build(ctx: &Ctx) -> Result<Report> {
    let scan = super::scan_and_warn(ctx);
    let queue = Queue::new(&scan, ctx.now);
    let tasks: Vec<TaskRow> = scan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| TaskRow {
            id: t.id.to_string(),
            title: crate::store::display_title(&ctx.root, t),
            state: queue.state[i].as_str().to_string(),
            deps: queue.graph.deps[i].iter().map(|&d| d as usize).collect(),
            reason: t
                .extra
                .as_ref()
                .and_then(|e| e.reason.as_deref())
                .map(str::to_string),
        })
        .collect();
    let reg = Registry::load(&ctx.root)?;
    let mut agents: Vec<AgentRow> = reg.agents.values().map(row).collect();
    let known: std::collections::HashSet<String> = reg.agents.keys().cloned().collect();
    let mut history: Vec<AgentRow> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(ctx.root.history_dir()) {
        let mut files: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let Ok(Some(text)) = crate::fsutil::read_capped(&f, 256 << 20) else {
                continue;
            };
            for line in text.text().lines() {
                if let Ok(a) = serde_json::from_str::<Agent>(line) {
                    if !known.contains(&a.id) {
                        history.push(row(&a));
                    }
                }
            }
        }
    }
    // A crash can duplicate a history line: one row per agent.
    history.sort_by(|a, b| a.id.cmp(&b.id));
    history.dedup_by(|a, b| a.id == b.id);
    agents.extend(history);
    Ok(Report::new(
        ctx.now,
        ctx.root.dir.display().to_string(),
        tasks,
        agents,
    ))
}

fn row(a: &Agent) -> AgentRow {
    AgentRow {
        id: a.id.clone(),
        role: a.role.clone(),
        task: a.task.clone(),
        model: a
            .model
            .clone()
            .unwrap_or_else(|| a.adapter.name().to_string()),
        status: a.status.as_str().to_string(),
        start: a.spawned,
        end: a.completed,
        // (An unknown cost shows as none: it is in no sum.)
        cost_usd: a.cost_usd.and_then(|c| c.known()).map(|u| u.as_f64()),
        reason: a.reason.clone(),
    }
}
