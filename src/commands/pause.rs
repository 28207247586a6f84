//! `taskq pause` and `taskq resume`: no new agents start while paused;
//! agents at work go on. The pause is a file (see `pause`), so it holds
//! across restarts of the factory and both commands are idempotent.

use std::process::ExitCode;

use serde::Serialize;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::pause::{self, Pause};

/// Arguments of `taskq pause`.
#[derive(Debug, clap::Args)]
pub struct PauseArgs {
    /// Why (shown by `status`, `top`, `why` and the factory's log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Who pauses. Default: git's `user.name` for the root, else `$USER`.
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
}

#[derive(Serialize)]
struct PauseJson {
    /// Paused now (after the command).
    paused: bool,
    /// This command changed it (false: it already was so).
    changed: bool,
    /// The pause in force (for `pause`) or the one ended (for `resume`).
    pause: Option<Pause>,
    /// The pause file, relative to the root.
    file: &'static str,
}

const FILE: &str = "agents/factory/paused";

/// Runs `taskq pause`.
pub fn pause(ctx: &Ctx, args: PauseArgs) -> Result<ExitCode> {
    let by = super::approval::decider(ctx, args.by)?.name;
    if args.reason.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return Err(Error::usage_hint(
            "--reason is empty",
            "say why, or leave --reason out",
        ));
    }
    let (p, changed) = pause_root(ctx, &by, args.reason.as_deref())?;
    if ctx.out.json {
        ctx.out.json(&PauseJson {
            paused: true,
            changed,
            pause: Some(p),
            file: FILE,
        })?;
    } else if changed {
        ctx.out.note(format!(
            "paused: no new agents start; running agents go on ({}; `taskq resume` resumes)",
            factory_note(ctx)
        ));
    } else {
        ctx.out.note(format!("already {}", p.describe()));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `taskq resume`.
pub fn resume(ctx: &Ctx) -> Result<ExitCode> {
    let ended = resume_root(ctx)?;
    if ctx.out.json {
        ctx.out.json(&PauseJson {
            paused: false,
            changed: ended.is_some(),
            pause: ended,
            file: FILE,
        })?;
    } else if ended.is_some() {
        ctx.out.note(format!(
            "resumed: agents start again ({})",
            factory_note(ctx)
        ));
    } else {
        ctx.out.note("not paused: nothing to resume");
    }
    Ok(ExitCode::SUCCESS)
}

/// Pauses the root as `by` (the library call `top` makes too).
pub fn pause_root(ctx: &Ctx, by: &str, reason: Option<&str>) -> Result<(Pause, bool)> {
    pause::pause(&ctx.root, by, reason, ctx.now)
}

/// Resumes the root; the pause it ended, if any.
pub fn resume_root(ctx: &Ctx) -> Result<Option<Pause>> {
    pause::resume(&ctx.root)
}

fn factory_note(ctx: &Ctx) -> String {
    match super::status::factory_pid(ctx) {
        Some(pid) => format!("the factory (pid {pid}) sees it at once"),
        None => "no factory is running; it holds when one starts".into(),
    }
}
