//! `taskq add TITLE`: a new task file in tasks/todo; prints only its id.

use std::io::Read;
use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::frontmatter::{yaml_list, yaml_str};
use crate::graph::Graph;
use crate::store::{Transition, Writer};
use crate::task::{format_timestamp, validate_id, Priority, Status};

use super::{report, split_list, tag_list};

/// Arguments of `taskq add`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task's title (one line).
    pub title: String,

    /// The task's description: the text the agent is given. `-` reads it
    /// from standard input.
    #[arg(long, value_name = "TEXT|-")]
    pub body: Option<String>,

    /// Its tags (they route the task to a role): `--tag a,b`, or the flag
    /// repeated.
    #[arg(long = "tag", visible_alias = "tags", value_name = "A,B")]
    pub tags: Vec<String>,

    /// Comma-separated ids of tasks that must be done first (`3`,
    /// `TASK-003`). Unknown ids are refused.
    #[arg(long, value_name = "TASK-1,TASK-2")]
    pub deps: Option<String>,

    /// critical, high, medium or low.
    #[arg(long, value_enum, default_value_t = Priority::Medium)]
    pub priority: Priority,

    /// The role (agents/templates/<role>.md) that runs it, overriding tags.
    #[arg(long)]
    pub role: Option<String>,
}

/// A task to create: what `taskq add` was given, checked; also what the
/// factory creates for an agent (docs/reference/agent-api.md).
#[derive(Debug, Clone)]
pub struct NewTask {
    /// One non-empty line.
    pub title: String,
    /// The body (empty: none).
    pub body: String,
    /// Tags, once each.
    pub tags: Vec<String>,
    /// Dependency ids as typed (`3`, `TASK-003`).
    pub deps: Vec<String>,
    /// The priority.
    pub priority: Priority,
    /// The role, if one is named.
    pub role: Option<String>,
    /// The agent that asked for it (`created_by:`).
    pub created_by: Option<String>,
    /// The task it was created from (`parent:`).
    pub parent: Option<String>,
}

impl NewTask {
    /// Checks the title, the body's size and the role's name.
    pub fn check(&self) -> Result<()> {
        let title = self.title.trim();
        if title.is_empty() || title.contains(['\n', '\r']) {
            return Err(Error::usage("the title must be one non-empty line"));
        }
        // Bounded: the task file must stay small enough to change.
        let cap = crate::fsutil::MAX_FILE / 2;
        if self.body.len() as u64 > cap {
            return Err(Error::usage_hint(
                format!("the body is longer than {}", crate::fsutil::size_text(cap)),
                "keep long text (logs, data) in another file and name it in the task",
            ));
        }
        if let Some(role) = &self.role {
            validate_id(role)
                .map_err(|why| Error::usage(format!("invalid role `{role}`: {why}")))?;
        }
        Ok(())
    }
}

/// Runs `taskq add`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let new = new_task(args)?;
    super::with_writer(ctx, |writer| {
        let id = create(writer, &new)?;
        report(ctx, writer);
        ctx.out.line(&id)?;
        Ok(ExitCode::SUCCESS)
    })
}

/// The task `taskq add ARGS` asks for, checked (a body on stdin read).
pub fn new_task(args: Args) -> Result<NewTask> {
    let body = match args.body.as_deref() {
        Some("-") => {
            let cap = crate::fsutil::MAX_FILE / 2;
            let mut bytes = Vec::new();
            std::io::stdin()
                .take(cap + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Error::io("<stdin>", e))?;
            if bytes.len() as u64 > cap {
                return Err(Error::usage_hint(
                    format!(
                        "the body on stdin is longer than {}",
                        crate::fsutil::size_text(cap)
                    ),
                    "keep long text (logs, data) in another file and name it in the task",
                ));
            }
            String::from_utf8(bytes).map_err(|_| Error::usage("the body on stdin is not UTF-8"))?
        }
        Some(text) => text.to_string(),
        None => String::new(),
    };
    let new = NewTask {
        title: args.title.trim().to_string(),
        body,
        tags: tag_list(&args.tags),
        deps: args.deps.as_deref().map(split_list).unwrap_or_default(),
        priority: args.priority,
        role: args.role,
        created_by: None,
        parent: None,
    };
    new.check()?;
    Ok(new)
}

/// Writes the new task under the writer's lock; returns its id.
pub fn create(writer: &mut Writer, new: &NewTask) -> Result<String> {
    new.check()?;
    let title = new.title.trim();
    let body = &new.body;
    // Dependencies must exist; store them under their canonical ids.
    let mut deps = Vec::new();
    let mut dep_indices = Vec::new();
    for d in &new.deps {
        let i = writer.scan.resolve(d).map_err(|_| {
            Error::usage_hint(
                format!("unknown dependency `{d}`"),
                "`taskq list` shows the ids; a dependency must exist before it is named",
            )
        })?;
        let id = writer.scan.tasks[i].id.to_string();
        if !deps.contains(&id) {
            deps.push(id);
            dep_indices.push(i);
        }
    }
    let id = writer.allocate_id()?;
    let graph = Graph::build(&writer.scan);
    // A brand-new task cannot close a cycle unless a dependency already
    // reaches it (possible when a file names the id before it exists).
    if let Some(me) = writer.scan.position(&id) {
        if graph.would_cycle(me, &dep_indices) {
            return Err(Error::usage(format!(
                "adding `{id}` with these dependencies would make a cycle"
            )));
        }
    }

    let mut text = format!(
        "---\nid: {id}\ntitle: {}\nstatus: ready\npriority: {}\n",
        yaml_str(title),
        new.priority
    );
    if !new.tags.is_empty() {
        text.push_str(&format!("tags: {}\n", yaml_list(&new.tags)));
    }
    if !deps.is_empty() {
        text.push_str(&format!("dependencies: {}\n", yaml_list(&deps)));
    }
    if let Some(role) = &new.role {
        text.push_str(&format!("role: {role}\n"));
    }
    if let Some(parent) = &new.parent {
        text.push_str(&format!("parent: {}\n", yaml_str(parent)));
    }
    if let Some(agent) = &new.created_by {
        text.push_str(&format!("created_by: {}\n", yaml_str(agent)));
    }
    text.push_str(&format!("created: {}\n---\n", format_timestamp(writer.now)));
    if !body.is_empty() {
        text.push_str(body);
        if !body.ends_with('\n') {
            text.push('\n');
        }
    }
    let name = format!("{id}-{}.md", slug(title));
    writer.create(&name, text.as_bytes())?;
    writer.transitions.push(Transition {
        id: id.clone(),
        from: None,
        to: Status::Ready,
        note: new
            .created_by
            .as_ref()
            .map(|a| format!("created by {a}"))
            .unwrap_or_default(),
        agent: new.created_by.clone(),
        cost: None,
    });
    Ok(id)
}

/// `JWT middleware: v2!` → `jwt-middleware-v2` (at most 40 characters).
fn slug(title: &str) -> String {
    let mut s = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
        if s.len() >= 40 {
            break;
        }
    }
    let s = s.trim_end_matches('-').to_string();
    if s.is_empty() {
        "task".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slugs() {
        assert_eq!(super::slug("JWT middleware: v2!"), "jwt-middleware-v2");
        assert_eq!(super::slug("日本"), "task");
    }
}
