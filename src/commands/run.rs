//! `taskq run`: the factory (see `factory.rs`), or its plan.

use std::fmt::Write as _;
use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::Result;
use crate::factory::{self, Options};

/// Arguments of `taskq run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Exit 0 once nothing is running or runnable (for scripts, CI and
    /// demos). Without it the factory runs until SIGINT/SIGTERM.
    #[arg(long)]
    pub until_idle: bool,

    /// Print the plan (which task would go to which role and model, in
    /// what order, and why every other task waits) and change nothing.
    #[arg(long, conflicts_with = "until_idle")]
    pub dry_run: bool,
}

/// Runs `taskq run`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    if !args.dry_run {
        return factory::run(
            &ctx.root,
            ctx.out,
            Options {
                until_idle: args.until_idle,
            },
        );
    }
    // What a real run would skip, said as `list` says it: broken files,
    // unknown dependencies, cycles.
    let scan = super::scan_and_warn(ctx);
    super::warn_graph(ctx, &scan, &crate::graph::Graph::build(&scan));
    let (items, config) = factory::plan(&ctx.root, &scan, ctx.now)?;
    let pause = crate::pause::read(&ctx.root);
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({
            "paused": pause,
            "max_concurrent": config.max_concurrent,
            "daily_cost_cap_usd": config.daily_cost_cap_usd,
            "model_whitelist": config.model_whitelist,
            "plan": items,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = String::new();
    if let Some(p) = &pause {
        let _ = writeln!(out, "{}: nothing starts", p.describe());
    }
    let _ = writeln!(out, "plan (max_concurrent {}):", config.max_concurrent);
    let width = items.iter().map(|i| i.task.len()).max().unwrap_or(8);
    for item in &items {
        match item.action {
            "spawn" => {
                let _ = writeln!(
                    out,
                    "  {:<width$}  spawn  {} ({}{}){}  {}",
                    item.task,
                    item.role.as_deref().unwrap_or("?"),
                    item.agent.as_deref().unwrap_or("?"),
                    item.model
                        .as_deref()
                        .map(|m| format!(", {m}"))
                        .unwrap_or_default(),
                    item.review_of
                        .as_deref()
                        .map(|b| format!(" to review the work of {b}"))
                        .unwrap_or_default(),
                    item.title
                );
            }
            _ => {
                let _ = writeln!(
                    out,
                    "  {:<width$}  {}  {}  {}",
                    item.task,
                    if item.never { "never" } else { "wait " },
                    item.why.as_deref().unwrap_or(""),
                    item.title
                );
            }
        }
    }
    if items.is_empty() {
        out.push_str("  nothing to do: no open tasks\n");
    }
    match config.daily_cost_cap_usd {
        Some(cap) => {
            let _ = writeln!(out, "daily cost cap: ${cap:.2}");
        }
        None => out.push_str("daily cost cap: none\n"),
    }
    if !config.model_whitelist.is_empty() {
        let _ = writeln!(
            out,
            "model whitelist: {}",
            config.model_whitelist.join(", ")
        );
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}
