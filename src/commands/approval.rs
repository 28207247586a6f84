//! `taskq approve`, `taskq reject`, `taskq approval request|wait`: the
//! human gates, as file moves.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::approval;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::frontmatter::Change;
use crate::lock::LockGuard;
use crate::store::{self, Writer};
use crate::task::Status;

use super::report;

/// `taskq approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The task id (`6`, `TASK-006`: its gate
    /// `approvals/pending/TASK-006.md`), a request's name (`TASK-006-1`) or
    /// the pending file's path (in this root's approvals/pending/ only).
    pub what: String,
    /// Who approves (recorded as `by:` in the file and in the commit).
    /// Default: git's `user.name` for the root (and its `user.email`, as
    /// `email:`), else `$USER`.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

/// `taskq reject`.
#[derive(Debug, clap::Args)]
pub struct RejectArgs {
    /// As for `approve`.
    pub what: String,
    /// Why (recorded in the approval file, and on the task it cancels).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who rejects, as for `approve`.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

/// `taskq approval`.
#[derive(Debug, clap::Subcommand)]
pub enum ApprovalCommand {
    /// Ask a person to approve one action; prints the pending file's path.
    ///
    /// For agents: `f=$(taskq approval request --task "$TASKQ_TASK_ID" "Post
    /// the release note")`, then `taskq approval wait "$f"`.
    Request {
        /// The task the action belongs to.
        #[arg(long, env = "TASKQ_TASK_ID")]
        task: String,
        /// What the agent wants to do, and why.
        text: String,
    },
    /// Wait until a request is approved (exit 0), rejected (exit 1) or the
    /// timeout passes (exit 3).
    Wait {
        /// The file `approval request` printed.
        file: PathBuf,
        /// Give up after this long (`30s`, `1h`); default: wait forever.
        #[arg(long)]
        timeout: Option<String>,
    },
}

/// Runs `taskq approve`.
pub fn approve(ctx: &Ctx, args: ApproveArgs) -> Result<ExitCode> {
    super::with_writer(ctx, |writer| {
        let what = gate_name(writer, &ctx.root, &args.what);
        let from = approval::decision(&ctx.root, &what);
        let by = decider(ctx, args.by.clone())?;
        let subject = task_subject(ctx, writer, &what, &from)?;
        let path = approval::decide(&ctx.root, &what, true, None, &by, writer.now)?;
        record_move(writer, &ctx.root, from, &path, "approved", &by.name);
        // A person approved: the request is recorded as what it covers.
        approval::record_approval(&ctx.root, &path, subject.as_ref(), writer.now)?;
        writer.touch(approval::Ledger::path(&ctx.root));
        let shown = ctx.display_path(path.strip_prefix(&ctx.root.dir).unwrap_or(&path));
        ctx.out.note(format!("approved: {}", shown.display()));
        if ctx.out.json {
            ctx.out
                .json(&serde_json::json!({"approved": shown, "by": by.name, "email": by.email}))?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `taskq reject`: moves the file, and cancels the task its gate is
/// for (a task gate, not an action request) with the reason.
pub fn reject(ctx: &Ctx, args: RejectArgs) -> Result<ExitCode> {
    super::with_writer(ctx, |writer| {
        let what = gate_name(writer, &ctx.root, &args.what);
        let from = approval::decision(&ctx.root, &what);
        let by = decider(ctx, args.by.clone())?;
        let path = approval::decide(
            &ctx.root,
            &what,
            false,
            args.reason.as_deref(),
            &by,
            writer.now,
        )?;
        record_move(writer, &ctx.root, from, &path, "rejected", &by.name);
        let gate = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(i) = writer.scan.position(&gate) {
            let t = &writer.scan.tasks[i];
            if !t.status.is_closed() && t.folder == crate::task::Folder::Todo {
                let reason = format!(
                    "approval rejected{}",
                    args.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                writer.set(
                    i,
                    &[
                        Change::set("status", "cancelled"),
                        Change::set("reason", &reason),
                    ],
                    Status::Cancelled,
                    &reason,
                )?;
            }
        }
        let shown = ctx.display_path(path.strip_prefix(&ctx.root.dir).unwrap_or(&path));
        ctx.out.note(format!("rejected: {}", shown.display()));
        report(ctx, writer);
        Ok(ExitCode::SUCCESS)
    })
}

/// For a task's gate: what the approval covers, the task as it is now.
/// Refused (exit 3) when the pending request was written for another
/// version of the task: the person would approve what they did not read.
fn task_subject(
    ctx: &Ctx,
    writer: &Writer,
    what: &str,
    from: &approval::Decision,
) -> Result<Option<approval::Subject>> {
    let approval::Decision::Pending(pending) = from else {
        return Ok(None);
    };
    let name = pending
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let Some(i) = writer.scan.position(&name) else {
        return Ok(None);
    };
    let config = crate::config::Config::load(&ctx.root).unwrap_or_default();
    let (roles, _) = crate::role::load_all(&ctx.root);
    let Some(now) = approval::Subject::of_task(&ctx.root, &writer.scan.tasks[i], &roles, &config)
    else {
        return Ok(None);
    };
    let asked = approval::read_field(pending, "digest");
    if asked.as_deref().is_some_and(|d| d != now.digest) {
        return Err(Error::conflict_hint(
            format!(
                "`{what}` changed since its request was written ({}): what it runs is not what the request shows",
                pending.strip_prefix(&ctx.root.dir).unwrap_or(pending).display()
            ),
            "`taskq run` writes a fresh request for the task as it is now; read and approve that one",
        ));
    }
    Ok(Some(now))
}

/// Who decides: `--by`, else git's `user.name` (with its `user.email`)
/// for the root, else `$USER`, else `someone`.
pub(crate) fn decider(ctx: &Ctx, by: Option<String>) -> Result<approval::Decider> {
    if let Some(by) = by {
        let by = by.trim();
        if by.is_empty() || by.contains(['\n', '\r']) {
            return Err(Error::usage_hint(
                "--by must be a name on one line",
                "e.g. `--by \"Alice <alice@example.com>\"`",
            ));
        }
        return Ok(approval::Decider {
            name: by.to_string(),
            email: None,
        });
    }
    if let Some(name) = crate::git::Git::user_name(&ctx.root.dir) {
        return Ok(approval::Decider {
            name,
            email: crate::git::Git::user_email(&ctx.root.dir),
        });
    }
    Ok(approval::Decider {
        name: std::env::var("USER")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "someone".into()),
        email: None,
    })
}

/// What the person typed, as a gate name: a path stays a path; `6` or
/// `task-6` becomes `TASK-006` when that task exists and no gate has the
/// name as typed.
fn gate_name(writer: &Writer, root: &crate::store::Root, what: &str) -> String {
    let name = what.trim_end_matches(".md");
    if std::path::Path::new(what).is_file()
        || !matches!(approval::decision(root, name), approval::Decision::Missing)
    {
        return what.to_string();
    }
    match writer.scan.resolve(name) {
        Ok(i) => writer.scan.tasks[i].id.to_string(),
        Err(_) => what.to_string(),
    }
}

/// Puts an approval file's move into the writer's commit.
fn record_move(
    writer: &mut Writer,
    root: &crate::store::Root,
    from: approval::Decision,
    to: &std::path::Path,
    what: &str,
    by: &str,
) {
    if let approval::Decision::Pending(p) = from {
        writer.touch(p);
    }
    writer.touch(to.to_path_buf());
    let name = to
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let task = approval::read_field(to, "task").unwrap_or_else(|| name.clone());
    writer.notes.push(crate::git::Entry {
        line: format!(
            "{name} {what} by {by} ({})",
            to.strip_prefix(&root.dir).unwrap_or(to).display()
        ),
        trailers: vec![("Task".into(), task)],
    });
}

/// Runs `taskq approval request|wait`.
pub fn approval(ctx: &Ctx, cmd: ApprovalCommand) -> Result<ExitCode> {
    match cmd {
        ApprovalCommand::Request { task, text } => {
            if text.trim().is_empty() {
                return Err(Error::usage("say what needs approval"));
            }
            let scan = store::scan(&ctx.root);
            let i = scan.resolve(&task)?;
            let id = scan.tasks[i].id.to_string();
            let agent = std::env::var("TASKQ_AGENT_ID").ok();
            let _lock = LockGuard::acquire(&ctx.root.queue_lock(), store::lock_timeout())?;
            let path = approval::request_action(&ctx.root, &id, agent.as_deref(), &text, ctx.now)?;
            let abs = std::fs::canonicalize(&path).unwrap_or(path);
            crate::hooks::fire(
                &ctx.root,
                "on-approval-pending",
                serde_json::json!({"task": id, "agent": agent, "status": "pending", "file": abs, "text": text}),
                &crate::config::Config::load(&ctx.root).unwrap_or_default(),
            )
            .map(|h| h.join());
            ctx.out.line(abs.display().to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        ApprovalCommand::Wait { file, timeout } => {
            let timeout = timeout
                .as_deref()
                .map(|t| {
                    crate::duration::parse(t).map_err(|e| Error::usage(format!("--timeout: {e}")))
                })
                .transpose()?;
            let code = approval::wait(&ctx.root, &file, timeout)?;
            let what = match code {
                0 => "approved",
                1 => "rejected",
                _ => "timed out waiting for approval",
            };
            ctx.out.note(format!("{}: {what}", file.display()));
            Ok(ExitCode::from(code))
        }
    }
}
