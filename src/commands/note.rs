//! `taskq note TEXT`: a progress note on a task, kept as its `progress:`
//! field (the latest note; each one is a commit in the git trail). Inside
//! an agent it goes through the factory and only to the agent's own task
//! (docs/reference/agent-api.md).

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::frontmatter::Change;
use crate::store::Writer;

/// The longest note, in characters: a line for `status` and `show`, not
/// a log (the agent's log is its output).
pub const MAX_NOTE: usize = 500;

/// Arguments of `taskq note`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The note: one line (at most 500 characters), such as `tests pass,
    /// writing the docs`. It replaces the task's `progress:` field; the
    /// notes before it stay in git (`taskq log`).
    pub text: String,

    /// The task (`6`, `TASK-006`). Default: `$TASKQ_TASK_ID`, the task of
    /// the agent this runs in.
    #[arg(long, env = "TASKQ_TASK_ID")]
    pub task: Option<String>,
}

/// Runs `taskq note` (a person's: any open task).
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let text = one_line(&args.text)?;
    let Some(task) = args.task else {
        return Err(Error::usage_hint(
            "which task? no `--task` and no `$TASKQ_TASK_ID`",
            "name it: `taskq note --task 6 TEXT`",
        ));
    };
    super::with_writer(ctx, |writer| {
        let i = writer.scan.resolve(&task)?;
        let id = write(writer, i, &text, None)?;
        if ctx.out.json {
            ctx.out
                .json(&serde_json::json!({"task": id, "progress": text}))?;
        } else {
            ctx.out.note(format!("{id}: progress noted"));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The note as it is stored: whitespace runs (newlines too) made one
/// space; refused when empty or longer than [`MAX_NOTE`].
pub fn one_line(text: &str) -> Result<String> {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return Err(Error::usage("the note is empty"));
    }
    if line.chars().count() > MAX_NOTE {
        return Err(Error::usage_hint(
            format!("the note is longer than {MAX_NOTE} characters"),
            "keep it to a line; what you print goes to your log anyway",
        ));
    }
    Ok(line)
}

/// Writes `text` as task `i`'s `progress:`, with a line for the git trail
/// naming `agent` when an agent wrote it. Returns the task's id.
pub fn write(writer: &mut Writer, i: usize, text: &str, agent: Option<&str>) -> Result<String> {
    let id = writer.scan.tasks[i].id.to_string();
    if writer.scan.tasks[i].folder == crate::task::Folder::Done {
        return Err(Error::conflict_hint(
            format!("`{id}` is finished: no progress to note"),
            "note progress on an open task",
        ));
    }
    writer.rewrite(i, &[Change::set("progress", text)])?;
    let mut trailers = vec![("Task".to_string(), id.clone())];
    if let Some(a) = agent {
        trailers.push(("Agent".into(), a.to_string()));
    }
    writer.notes.push(crate::git::Entry {
        line: format!(
            "{id} progress{}: {text}",
            agent.map(|a| format!(" ({a})")).unwrap_or_default()
        ),
        trailers,
    });
    Ok(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn notes_are_one_bounded_line() {
        assert_eq!(super::one_line(" half\n way ").unwrap(), "half way");
        assert!(super::one_line(" \n").is_err());
        assert!(super::one_line(&"x".repeat(501)).is_err());
    }
}
