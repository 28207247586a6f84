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
        refuse_unpriced(ctx)?;
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
    let (roles, _) = crate::role::load_all(&ctx.root);
    let unpriced = factory::gate::unpriced_models(&roles, &config);
    let pause = crate::pause::read(&ctx.root);
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({
            "paused": pause,
            "max_concurrent": config.max_concurrent,
            "daily_cost_cap_usd": config.daily_cost_cap_usd,
            "cap_mode": config.cap_mode.as_str(),
            "model_whitelist": config.model_whitelist,
            "unpriced": unpriced.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "plan": items,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    for p in &unpriced {
        ctx.out.warn(p);
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
                    "  {:<width$}  spawn  {} ({}{}){}{}  {}",
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
                    item.forecast
                        .as_deref()
                        .map(|f| format!(", forecast {f}"))
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
            let _ = writeln!(
                out,
                "daily cost cap: {cap} (cap_mode {})",
                config.cap_mode.as_str()
            );
            if !unpriced.is_empty() && !config.allow_unpriced_models {
                let _ = writeln!(
                    out,
                    "refused: `taskq run` will not start with {} (allow_unpriced_models: true runs them anyway)",
                    crate::output::count(unpriced.len(), "unpriced model")
                );
            }
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

/// With a daily cost cap, a model whose runs' cost would be unknown (no
/// price, and a CLI that reports none) would make the cap blind: `run`
/// refuses to start unless `allow_unpriced_models: true`.
fn refuse_unpriced(ctx: &Ctx) -> Result<()> {
    let config = crate::config::Config::load(&ctx.root)?;
    if config.daily_cost_cap_usd.is_none() || config.allow_unpriced_models {
        return Ok(());
    }
    let (roles, _) = crate::role::load_all(&ctx.root);
    let unpriced = factory::gate::unpriced_models(&roles, &config);
    let Some(first) = unpriced.into_iter().next() else {
        return Ok(());
    };
    let mut p = first;
    p.warning = false;
    p.message = format!(
        "{} (daily_cost_cap_usd is set: the cap could not see this spend)",
        p.message
    );
    p.hint = Some(
        "add the model to `prices` in agents/factory/config.yaml (input, output, cached_input: USD per million tokens), or set allow_unpriced_models: true"
            .into(),
    );
    Err(p.into())
}
