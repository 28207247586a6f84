//! `taskq log ID` / `taskq log --agent A`: a task's (or agent's) history,
//! read back from git, with the approval steps of the task's gates.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::git::{Commit, Git};
use crate::store;

/// Arguments of `taskq log`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task whose history to show (its file's commits, following the
    /// move from todo/ to done/, and its approval files' moves).
    #[arg(required_unless_present = "agent")]
    pub id: Option<String>,

    /// Show the commits of one agent instead (its `Agent:` trailer).
    #[arg(long, conflicts_with = "id")]
    pub agent: Option<String>,
}

#[derive(Serialize)]
struct Event {
    commit: String,
    date: String,
    author: String,
    subject: String,
    body: String,
    /// What the text view shows for this commit: this task's (or agent's)
    /// own lines, and the approval steps it made.
    lines: Vec<String>,
}

/// Runs `taskq log`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let git = Git::detect(&ctx.root.dir).ok_or_else(|| {
        Error::usage_hint(
            format!("{} is not in a git work tree", ctx.root.dir.display()),
            "taskq records its history as git commits: run `git init` in the root",
        )
    })?;
    let events: Vec<Event> = match (&args.id, &args.agent) {
        (Some(id), _) => {
            let (scan, i, path) = super::open_task(ctx, store::scan(&ctx.root), id, |p| {
                std::fs::canonicalize(p)
            })?;
            let id = scan.tasks[i].id.to_string();
            task_history(ctx, &git, &id, &path)?
        }
        (None, Some(agent)) => {
            let grep = format!("^Agent: {}$", regex_escape(agent));
            git.log(&[], false, Some(&grep))?
                .into_iter()
                .map(|c| {
                    let lines = own_lines(&c, agent);
                    event(c, lines)
                })
                .collect()
        }
        (None, None) => unreachable!("clap requires one"),
    };
    if ctx.out.json {
        ctx.out.json(&events)?;
        return Ok(ExitCode::from(if events.is_empty() { 1 } else { 0 }));
    }
    if events.is_empty() {
        return Ok(ExitCode::from(1));
    }
    let mut out = String::new();
    // Oldest first reads as a timeline.
    for e in events.iter().rev() {
        let date = e.date.get(..16).unwrap_or(&e.date).replace('T', " ");
        for l in &e.lines {
            out.push_str(&format!("{date}  {l}  {}\n", e.commit));
        }
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}

/// The commits of task `id`: its file's (at `path`, following renames) and
/// those that wrote or moved its approval files, in git's order.
fn task_history(ctx: &Ctx, git: &Git, id: &str, path: &Path) -> Result<Vec<Event>> {
    // --follow can take a similar new task file for a copy of this one:
    // keep taskq's commits only where they name this task.
    let own: Vec<Commit> = git
        .log(&[path.to_path_buf()], true, None)?
        .into_iter()
        .filter(|c| {
            !c.subject.starts_with("taskq:") || mentions(&c.subject, id) || mentions(&c.body, id)
        })
        .collect();
    // The approval files: approvals/<state>/ID.md, and ID-<n>.md for the
    // requests of its agents.
    let approvals = std::fs::canonicalize(&ctx.root.dir)
        .ok()
        .and_then(|d| d.strip_prefix(&git.top).ok().map(|d| d.join("approvals")))
        .unwrap_or_else(|| PathBuf::from("approvals"));
    let gates = [
        approvals.join(format!("*/{id}.md")),
        approvals.join(format!("*/{id}-*.md")),
    ];
    let steps = git.log(&gates, false, None)?;
    if steps.is_empty() {
        return Ok(own
            .into_iter()
            .map(|c| {
                let lines = own_lines(&c, id);
                event(c, lines)
            })
            .collect());
    }
    // Both in one log, for git's order: every name the task file had, and
    // the approval files; then only the commits found above.
    let mine: HashSet<String> = own.iter().map(|c| c.hash.clone()).collect();
    let stepped: HashSet<String> = steps.iter().map(|c| c.hash.clone()).collect();
    let mut paths: Vec<PathBuf> = own
        .iter()
        .flat_map(|c| &c.files)
        .flat_map(|f| [Some(&f.path), f.from.as_ref()])
        .flatten()
        .map(|p| git.top.join(p))
        .collect();
    paths.sort();
    paths.dedup();
    paths.extend(gates);
    Ok(git
        .log(&paths, false, None)?
        .into_iter()
        .filter(|c| mine.contains(&c.hash) || stepped.contains(&c.hash))
        .map(|c| {
            let own = if mine.contains(&c.hash) {
                own_lines(&c, id)
            } else {
                Vec::new()
            };
            // The decision first: it is what let the task start (or
            // cancelled it) in the same commit.
            let mut lines = approval_steps(&c, id, &approvals);
            let own: Vec<String> = own.into_iter().filter(|l| !lines.contains(l)).collect();
            lines.extend(own);
            event(c, lines)
        })
        .collect())
}

/// The lines of a commit that concern `who` (a task or an agent): in a
/// batch commit its own `- ` lines, else the subject.
fn own_lines(c: &Commit, who: &str) -> Vec<String> {
    let lines: Vec<String> = c
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("- "))
        .filter(|l| mentions(l, who))
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        vec![c
            .subject
            .strip_prefix("taskq: ")
            .unwrap_or(&c.subject)
            .to_string()]
    } else {
        lines
    }
}

/// The approval steps commit `c` made for task `id`'s gates:
/// `TASK-006 needs approval`,
/// `TASK-006 approved by alice`, `TASK-006-1 rejected (moved by hand: ...)`.
/// A person's commit names its author; taskq's own `approve` and `reject`
/// name the approver in their line.
fn approval_steps(c: &Commit, id: &str, approvals: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in c
        .files
        .iter()
        .filter(|f| matches!(f.status, 'A' | 'R' | 'C'))
    {
        let Ok(rel) = Path::new(&f.path).strip_prefix(approvals) else {
            continue;
        };
        let (Some(state), Some(name)) = (
            rel.parent().and_then(|p| p.to_str()),
            rel.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".md")),
        ) else {
            continue;
        };
        let ours = name == id
            || name
                .strip_prefix(id)
                .and_then(|n| n.strip_prefix('-'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let (what, taskq_says) = match state {
            "pending" => ("approval requested", "needs approval"),
            "approved" => ("approved", "approved"),
            "rejected" => ("rejected", "rejected"),
            _ => continue,
        };
        if !ours {
            continue;
        }
        let shown = Path::new("approvals").join(rel);
        if !c.subject.starts_with("taskq:") {
            out.push(format!(
                "{name} {what} by {} ({})",
                c.author,
                shown.display()
            ));
            continue;
        }
        // taskq's own line for it (`TASK-006 approved by alice (...)`),
        // else taskq swept up a file a person moved (the factory commits
        // the gate with the task it starts).
        let prefix = format!("{name} {taskq_says}");
        let line = std::iter::once(c.subject.trim_start_matches("taskq: "))
            .chain(c.body.lines().filter_map(|l| l.strip_prefix("- ")))
            .find(|l| l.starts_with(&prefix))
            .map_or_else(
                || match state {
                    "pending" => format!("{name} {what} ({})", shown.display()),
                    _ => format!("{name} {what} (moved by hand: {})", shown.display()),
                },
                str::to_string,
            );
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out
}

fn event(c: Commit, lines: Vec<String>) -> Event {
    Event {
        subject: c
            .subject
            .strip_prefix("taskq: ")
            .unwrap_or(&c.subject)
            .to_string(),
        commit: c.hash,
        date: c.date,
        author: c.author,
        body: c.body,
        lines,
    }
}

/// True when `text` names the task `id` as a whole word.
fn mentions(text: &str, id: &str) -> bool {
    text.match_indices(id).any(|(k, _)| {
        let after = text[k + id.len()..].chars().next();
        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.^$|?*+()[]{}".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}
