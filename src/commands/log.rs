//! `taskq log ID` / `taskq log --agent A`: a task's (or agent's) history,
//! read back from git.

use std::process::ExitCode;

use serde::Serialize;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::git::Git;
use crate::store;

/// Arguments of `taskq log`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task whose history to show (its file's commits, following the
    /// move from todo/ to done/).
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
    subject: String,
    body: String,
}

/// Runs `taskq log`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let git = Git::detect(&ctx.root.dir).ok_or_else(|| {
        Error::usage_hint(
            format!("{} is not in a git work tree", ctx.root.dir.display()),
            "taskq records its history as git commits: run `git init` in the root",
        )
    })?;
    let (records, wanted) = match (&args.id, &args.agent) {
        (Some(id), _) => {
            let (scan, i, path) = super::open_task(ctx, store::scan(&ctx.root), id, |p| {
                std::fs::canonicalize(p)
            })?;
            let id = scan.tasks[i].id.to_string();
            // --follow can take a similar new task file for a copy of this
            // one: keep taskq's commits only where they name this task.
            let records = git
                .log(Some(&path), None)?
                .into_iter()
                .filter(|(_, _, subject, body)| {
                    !subject.starts_with("taskq:") || mentions(subject, &id) || mentions(body, &id)
                })
                .collect::<Vec<_>>();
            (records, id)
        }
        (None, Some(agent)) => (
            git.log(None, Some(&format!("^Agent: {}$", regex_escape(agent))))?,
            agent.clone(),
        ),
        (None, None) => unreachable!("clap requires one"),
    };
    let events: Vec<Event> = records
        .into_iter()
        .map(|(commit, date, subject, body)| Event {
            commit,
            date,
            subject: subject
                .strip_prefix("taskq: ")
                .unwrap_or(&subject)
                .to_string(),
            body,
        })
        .collect();
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
        // In a batch commit, show this task's (or agent's) own lines.
        let lines: Vec<&str> = e
            .body
            .lines()
            .filter_map(|l| l.strip_prefix("- "))
            .filter(|l| mentions(l, &wanted))
            .collect();
        if lines.is_empty() {
            out.push_str(&format!("{date}  {}  {}\n", e.subject, e.commit));
        } else {
            for l in lines {
                out.push_str(&format!("{date}  {l}  {}\n", e.commit));
            }
        }
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
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
