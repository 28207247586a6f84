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

/// Tasks whose `role:` names no template: they can never run.
fn routing_problems(
    ctx: &Ctx,
    scan: &store::Scan,
    roles: &[role::Role],
    broken: &[String],
) -> Vec<Problem> {
    let mut out = Vec::new();
    for t in &scan.tasks {
        let Some(name) = t.role.as_deref() else {
            continue;
        };
        if t.folder == crate::task::Folder::Done
            || t.status.is_closed()
            || roles.iter().any(|r| r.name == name)
            || broken.iter().any(|b| b == name)
        {
            continue;
        }
        let line = crate::fsutil::read(&ctx.root.task_path(t))
            .ok()
            .and_then(|bytes| crate::frontmatter::value_line(&bytes, "role", name))
            .unwrap_or(1);
        out.push(
            Problem::at(
                ctx.root.rel_path(t.folder, &t.rel),
                line,
                format!("`{}` has role `{name}`, which has no template (agents/templates/{name}.md)", t.id),
            )
            .hint(format!(
                "the factory can never run it: write agents/templates/{name}.md, or name one of: {}",
                roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
        );
    }
    out
}

/// Roles whose agent CLI is not on the PATH (a warning: the factory may
/// run on another machine; there, such a task fails at once).
fn program_problems(roles: &[role::Role], config: &Config) -> Vec<Problem> {
    let found = std::collections::HashSet::new();
    roles
        .iter()
        .filter_map(|r| {
            let why = crate::factory::missing_program(r, config, &found)?;
            let shown = std::path::PathBuf::from(format!("agents/templates/{}.md", r.name));
            let line = std::fs::read_to_string(&r.path)
                .ok()
                .and_then(|text| crate::frontmatter::key_line(&text, "agent"));
            let p = match line {
                Some(l) => Problem::at(shown, l, why),
                None => Problem::new(shown, why),
            };
            Some(p.warning())
        })
        .collect()
}

/// Roles that put an agent's HOME or temp dir inside its workspace (the
/// old `{workspace}/home` advice), and hook files the factory would refuse
/// to run: warnings.
fn isolation_problems(ctx: &Ctx, roles: &[role::Role]) -> Vec<Problem> {
    let mut out = Vec::new();
    for r in roles {
        let shown = std::path::PathBuf::from(format!("agents/templates/{}.md", r.name));
        let inside: Vec<&String> = r
            .settings
            .set_env
            .iter()
            .filter(|(k, v)| {
                (matches!(k.as_str(), "HOME" | "TMPDIR" | "TMP" | "TEMP")
                    || k.starts_with("XDG_")
                    || k.ends_with("HOME")
                    || k.ends_with("DIR"))
                    && v.starts_with("{workspace}")
            })
            .map(|(k, _)| k)
            .collect();
        if inside.is_empty() {
            continue;
        }
        let line = std::fs::read_to_string(&r.path)
            .ok()
            .and_then(|text| crate::frontmatter::key_line(&text, "set_env"));
        let names: Vec<String> = inside.iter().map(|k| format!("`{k}`")).collect();
        let message = format!(
            "role `{}` puts {} inside the agent's workspace: its CLI's config, transcripts and credentials live among the work",
            r.name,
            names.join(", ")
        );
        let p = match line {
            Some(l) => Problem::at(shown, l, message),
            None => Problem::new(shown, message),
        };
        out.push(
            p.hint("use `{agent_home}` (agents/homes/<agent-id>, outside the workspace): `set_env: {HOME: \"{agent_home}\"}`")
                .warning(),
        );
    }
    for event in crate::hooks::EVENTS {
        let path = ctx.root.hook(event);
        if let Some(why) = crate::hooks::untrusted(&ctx.root, &path) {
            out.push(
                Problem::new(
                    std::path::PathBuf::from(format!("agents/hooks/{event}")),
                    format!("the factory refuses to run this hook: {why}"),
                )
                .hint("a hook runs with the rights of whoever runs the factory: keep it a file only you can write")
                .warning(),
            );
        }
    }
    out
}

/// Runs `taskq check`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let scan = store::scan(&ctx.root);
    let mut problems = scan.problems.clone();
    let graph = Graph::build(&scan);
    problems.extend(crate::graph::problems(&ctx.root, &scan, &graph));
    // Roles and the config are part of the root too.
    let (roles, role_problems) = role::load_all(&ctx.root);
    let bad_roles: Vec<String> = role_problems
        .iter()
        .filter_map(|p| p.path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    problems.extend(role_problems);
    let config = match Config::load(&ctx.root) {
        Ok(c) => Some(c),
        Err(Error::Invalid { problem }) => {
            problems.push(problem);
            None
        }
        Err(_) => None,
    };
    problems.extend(routing_problems(ctx, &scan, &roles, &bad_roles));
    problems.extend(isolation_problems(ctx, &roles));
    if let Some(config) = &config {
        problems.extend(program_problems(&roles, config));
        problems.extend(crate::factory::gate::unpriced_models(&roles, config));
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
