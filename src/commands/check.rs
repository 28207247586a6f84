//! `taskq check`: validate the whole root, compiler style.

use std::process::ExitCode;

use serde::Serialize;

use crate::config::Config;
use crate::context::Ctx;
use crate::error::{Error, Problem, Result};
use crate::frontmatter::Layout;
use crate::graph::Graph;
use crate::output::count;
use crate::role;
use crate::store;

/// Arguments of `taskq check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Treat warnings (unknown-looking fields, files without an id) as
    /// problems too.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Serialize)]
struct ProblemJson {
    path: String,
    line: Option<usize>,
    column: Option<usize>,
    severity: &'static str,
    message: String,
    hint: Option<String>,
}

#[derive(Serialize)]
struct CheckJson {
    ok: bool,
    tasks: usize,
    errors: usize,
    warnings: usize,
    problems: Vec<ProblemJson>,
}

/// Runs `taskq check`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let scan = store::scan(&ctx.root);
    let mut problems = scan.problems.clone();
    let graph = Graph::build(&scan);
    problems.extend(crate::graph::problems(&ctx.root, &scan, &graph));
    // Roles and the config are part of the root too.
    let (_, role_problems) = role::load_all(&ctx.root);
    problems.extend(role_problems);
    if let Err(Error::Invalid { problem }) = Config::load(&ctx.root) {
        problems.push(problem);
    }
    problems.sort_by(|a, b| (&a.path, a.line).cmp(&(&b.path, b.line)));
    let _ = Layout::FIRST_LINE;
    let is_error = |p: &Problem| !p.warning || args.strict;
    let errors = problems.iter().filter(|p| is_error(p)).count();
    let warnings = problems.len() - errors;
    if ctx.out.json {
        ctx.out.json(&CheckJson {
            ok: errors == 0,
            tasks: scan.tasks.len(),
            errors,
            warnings,
            problems: problems
                .iter()
                .map(|p| ProblemJson {
                    path: super::path_string(&p.path),
                    line: p.line,
                    column: p.column,
                    severity: if is_error(p) { "error" } else { "warning" },
                    message: p.message.clone(),
                    hint: p.hint.clone(),
                })
                .collect(),
        })?;
    } else {
        let mut out = String::new();
        for p in &problems {
            let mut p = p.clone();
            p.path = ctx.display_path(&p.path);
            if args.strict {
                p.warning = false;
            }
            out.push_str(&p.to_string());
            out.push('\n');
            if let Some(h) = &p.hint {
                out.push_str(&format!("  hint: {h}\n"));
            }
        }
        ctx.out.text(out)?;
        if errors == 0 {
            ctx.out.note(format!(
                "{} checked: ok ({})",
                count(scan.tasks.len(), "task"),
                count(warnings, "warning")
            ));
        } else {
            ctx.out.note(format!(
                "{} checked: {}, {}",
                count(scan.tasks.len(), "task"),
                count(errors, "problem"),
                count(warnings, "warning")
            ));
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
