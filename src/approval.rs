//! Human gates as files: `approvals/pending/`, `approved/`, `rejected/`.
//!
//! A task that needs approval gets `approvals/pending/<TASK-ID>.md`, written
//! once by the factory; a person approves by moving it to `approved/` (by
//! hand, `git mv`, or `taskq approve`) and rejects by moving it to
//! `rejected/` (or `taskq reject --reason`). An agent can gate one action
//! of its own with `taskq approval request` / `taskq approval wait`.
//! Approval files are never deleted: they are the record of who allowed
//! what.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::frontmatter::{self, yaml_str, Change};
use crate::fsutil::{self, Disk};
use crate::role::Role;
use crate::root::Root;
use crate::task::{format_timestamp, Task, Timestamp};

/// Where a gate stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No approval file yet.
    Missing,
    /// Waiting for a person: `approvals/pending/<name>.md`.
    Pending(PathBuf),
    /// Approved.
    Approved(PathBuf),
    /// Rejected, with the reason given (if any).
    Rejected(PathBuf, Option<String>),
}

/// The three folders, in the order a decision is looked up (a decision
/// wins over a pending request).
const STATES: [&str; 3] = ["rejected", "approved", "pending"];

/// True when a task may not run without a person's approval: its
/// `approval: required`, its role's, or one of its tags in the config's
/// `approval_tags`.
pub fn needs_approval(task: &Task, role: Option<&Role>, config: &Config) -> bool {
    let required =
        |v: Option<&str>| v.is_some_and(|a| matches!(a.trim(), "required" | "yes" | "true"));
    required(task.extra().approval.as_deref())
        || role.is_some_and(|r| required(r.settings.approval.as_deref()))
        || task
            .tags
            .iter()
            .any(|t| config.approval_tags.iter().any(|a| **t == **a))
}

/// For tasks in the ready state that may not run until a person approves:
/// the approval file each waits for (pending, or still to be written).
/// Loads the roles and the config (a few small files).
pub fn waiting(root: &Root, tasks: impl Iterator<Item = (usize, Task)>) -> Vec<(usize, String)> {
    let config = crate::config::Config::load(root).unwrap_or_default();
    let (roles, _) = crate::role::load_all(root);
    let mut out = Vec::new();
    for (i, t) in tasks {
        let role = crate::role::route(&t, &roles, &config);
        if !needs_approval(&t, role, &config) {
            continue;
        }
        match decision(root, &t.id) {
            Decision::Pending(p) => {
                out.push((
                    i,
                    p.strip_prefix(&root.dir)
                        .unwrap_or(&p)
                        .display()
                        .to_string(),
                ));
            }
            Decision::Missing => out.push((
                i,
                format!(
                    "approvals/pending/{}.md, written when the factory runs",
                    t.id
                ),
            )),
            _ => {}
        }
    }
    out
}

/// The human gates of a root, for commands other than the factory: a task
/// that needs a person's approval and has none is not handed out by
/// `next`, and `claim`, `done` and `fail` refuse it.
pub struct Gates {
    config: crate::config::Config,
    roles: Vec<Role>,
    /// Some role needs approval (else only tasks and tags can).
    any_role: bool,
}

impl Gates {
    /// The config and roles of `root` (defaults when they are broken:
    /// `check` reports that).
    pub fn load(root: &Root) -> Gates {
        let config = crate::config::Config::load(root).unwrap_or_default();
        let (roles, _) = crate::role::load_all(root);
        let any_role = roles
            .iter()
            .any(|r| needs_approval_field(r.settings.approval.as_deref()));
        Gates {
            config,
            roles,
            any_role,
        }
    }

    /// Why `t` may not be handed out or finished now: it waits for a
    /// person's approval (naming the file), or it was rejected. `None`
    /// when no approval is needed or it was given.
    pub fn blocks(&self, root: &Root, t: &Task) -> Option<String> {
        let cheap = needs_approval_field(t.extra().approval.as_deref())
            || t.tags
                .iter()
                .any(|g| self.config.approval_tags.iter().any(|a| **g == **a));
        if !cheap && !self.any_role {
            return None;
        }
        let role = crate::role::route(t, &self.roles, &self.config);
        if !needs_approval(t, role, &self.config) {
            return None;
        }
        let shown = |p: &Path| p.strip_prefix(&root.dir).unwrap_or(p).display().to_string();
        match decision(root, &t.id) {
            Decision::Approved(_) => None,
            Decision::Pending(p) => Some(format!("waits for approval: {}", shown(&p))),
            Decision::Rejected(p, _) => Some(format!("its approval was rejected: {}", shown(&p))),
            Decision::Missing => Some(format!(
                "needs a person's approval: approvals/pending/{}.md is not written yet (`taskq run` writes it)",
                t.id
            )),
        }
    }
}

fn needs_approval_field(v: Option<&str>) -> bool {
    v.is_some_and(|a| matches!(a.trim(), "required" | "yes" | "true"))
}

/// The state of the gate named `name` (`TASK-006` for a task's gate).
pub fn decision(root: &Root, name: &str) -> Decision {
    for state in STATES {
        let path = root.approvals(state).join(format!("{name}.md"));
        // A plain file (never through a link), named by a plain name.
        if !name.contains('/') && fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_file())
        {
            return match state {
                "rejected" => {
                    let reason = read_field(&path, "reason");
                    Decision::Rejected(path, reason)
                }
                "approved" => Decision::Approved(path),
                _ => Decision::Pending(path),
            };
        }
    }
    Decision::Missing
}

/// Writes `approvals/pending/<TASK-ID>.md` for a task, once (never
/// replacing a file), through `disk` (the factory's writer's). Returns its
/// path.
#[allow(clippy::too_many_arguments)]
pub fn request_task(
    root: &Root,
    disk: &mut Disk,
    task: &Task,
    title: &str,
    role: &str,
    model: Option<&str>,
    prompt: &str,
    now: Timestamp,
) -> Result<PathBuf> {
    let path = root.approvals("pending").join(format!("{}.md", task.id));
    let mut text = format!(
        "---\ntask: {}\nrole: {}\n{}requested: {}\n---\n# Approve {}: {}\n\n\
         Move this file to approvals/approved/ to let the agent run (or run \
         `taskq approve {}`); move it to approvals/rejected/ to cancel the task \
         (`taskq reject {} --reason ...`).\n\nThe agent will be asked:\n\n",
        task.id,
        yaml_str(role),
        model.map_or_else(String::new, |m| format!("model: {}\n", yaml_str(m))),
        format_timestamp(now),
        task.id,
        title,
        task.id,
        task.id
    );
    for line in prompt.lines() {
        text.push_str("> ");
        text.push_str(line);
        text.push('\n');
    }
    disk.create_new(&path, text.as_bytes())?;
    Ok(path)
}

/// Writes a pending request for one action of a running agent; returns
/// its path (`approvals/pending/<TASK-ID>-<n>.md`).
pub fn request_action(
    root: &Root,
    task: &str,
    agent: Option<&str>,
    text: &str,
    now: Timestamp,
) -> Result<PathBuf> {
    let dir = root.approvals("pending");
    let body = format!(
        "---\ntask: {task}\nagent: {}\nrequested: {}\n---\n{}\n",
        agent.map_or_else(|| "~".to_string(), yaml_str),
        format_timestamp(now),
        text.trim()
    );
    for n in 1.. {
        let name = format!("{task}-{n}");
        if STATES
            .iter()
            .any(|s| root.approvals(s).join(format!("{name}.md")).exists())
        {
            continue;
        }
        let path = dir.join(format!("{name}.md"));
        if fsutil::create_new_atomic(&path, body.as_bytes())? {
            return Ok(path);
        }
    }
    unreachable!("an unbounded range always yields a free name")
}

/// Moves a pending file to `approved/` or `rejected/`, recording who (`by`)
/// and when (and why, for a rejection) in its frontmatter. `what` is a gate
/// name (`TASK-006`, `TASK-006-1`) or a path to the pending file.
pub fn decide(
    root: &Root,
    what: &str,
    approve: bool,
    reason: Option<&str>,
    by: &str,
    now: Timestamp,
) -> Result<PathBuf> {
    let pending = locate_pending(root, what)?;
    let name = pending.file_name().expect("a file").to_owned();
    let to = root
        .approvals(if approve { "approved" } else { "rejected" })
        .join(&name);
    if to.exists() {
        return Err(Error::conflict(format!("{} already exists", to.display())));
    }
    fsutil::rename(&pending, &to)?;
    let mut changes = vec![
        Change::set(
            if approve { "approved" } else { "rejected" },
            &format_timestamp(now),
        ),
        Change::set("by", by),
    ];
    if let Some(r) = reason {
        changes.push(Change::set("reason", r));
    }
    let old = fsutil::read(&to)?;
    if let Ok(new) = frontmatter::edit(&old, &changes) {
        fsutil::write_atomic(&to, &new)?;
    }
    Ok(to)
}

fn locate_pending(root: &Root, what: &str) -> Result<PathBuf> {
    let name = request_name(root, what)?;
    let name = name.as_str();
    if let Some(link) = STATES
        .iter()
        .map(|s| root.approvals(s).join(format!("{name}.md")))
        .find(|p| fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()))
    {
        return Err(Error::conflict_hint(
            format!(
                "{} is a symbolic link, not an approval file; left alone",
                link.display()
            ),
            "approval files are plain files that taskq writes; remove the link",
        ));
    }
    match decision(root, name) {
        Decision::Pending(p) => Ok(p),
        Decision::Approved(p) => Err(Error::conflict(format!(
            "{} is already approved",
            p.display()
        ))),
        Decision::Rejected(p, _) => Err(Error::conflict(format!(
            "{} is already rejected",
            p.display()
        ))),
        Decision::Missing => Err(Error::usage_hint(
            format!("no pending approval `{name}`"),
            "the pending requests are the files in approvals/pending/",
        )),
    }
}

/// The name of the request `what` names: an id or request name
/// (`TASK-006`, `TASK-006-1`, with or without `.md`), or the path of a file
/// directly in this root's `approvals/` folders. Nothing else: no `/` in a
/// name, no path that leads anywhere else (`../`, another root's
/// `pending/`).
pub fn request_name(root: &Root, what: &str) -> Result<String> {
    let bad = || {
        Error::usage_hint(
            format!("`{what}` is not an approval id"),
            "name a request by its id (`TASK-006`, `TASK-006-1`) or its file in approvals/pending/",
        )
    };
    if what.contains('/') {
        // A path: only to a file in one of this root's approval folders.
        let path = Path::new(what);
        let dir = path.parent().and_then(|d| fs::canonicalize(d).ok());
        let ours = STATES
            .iter()
            .filter_map(|s| fs::canonicalize(root.approvals(s)).ok())
            .any(|a| dir.as_ref() == Some(&a));
        let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
        if !ours {
            return Err(Error::usage_hint(
                format!("`{what}` is not in this root's approvals/ folders"),
                "name a request by its id (`TASK-006`, `TASK-006-1`) or its file in approvals/pending/",
            ));
        }
        return request_name(root, name);
    }
    let name = what.strip_suffix(".md").unwrap_or(what);
    let valid = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    match valid {
        true => Ok(name.to_string()),
        false => Err(bad()),
    }
}

/// Waits until the request at `path` is approved (`Ok(0)`), rejected
/// (`Ok(1)`) or `timeout` passes (`Ok(3)`), checking every 200 ms.
pub fn wait(root: &Root, path: &Path, timeout: Option<Duration>) -> Result<u8> {
    let name = path
        .file_stem()
        .ok_or_else(|| Error::usage(format!("`{}` is not an approval file", path.display())))?
        .to_string_lossy()
        .into_owned();
    if matches!(decision(root, &name), Decision::Missing) {
        return Err(Error::usage_hint(
            format!("no approval request `{name}`"),
            "`taskq approval request` prints the file to wait for",
        ));
    }
    let start = Instant::now();
    loop {
        match decision(root, &name) {
            Decision::Approved(_) => return Ok(0),
            Decision::Rejected(..) => return Ok(1),
            _ => {}
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            return Ok(3);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A scalar field of an approval file's frontmatter.
pub fn read_field(path: &Path, key: &str) -> Option<String> {
    frontmatter::scalar_field(&crate::fsutil::read(path).ok()?, key)
}

/// Every file in `approved/` that names a task that does not exist, or
/// that was moved there after its task had already finished: `(path,
/// why)`, for warnings. `task(id)` gives `None` for an unknown task, else
/// the time it finished (`Some(None)` while it is open).
pub fn stray(
    root: &Root,
    task: impl Fn(&str) -> Option<Option<Timestamp>>,
) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(root.approvals("approved")) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".md") || name.eq_ignore_ascii_case("README.md") || name.starts_with('.')
        {
            continue;
        }
        let id =
            read_field(&path, "task").unwrap_or_else(|| name.trim_end_matches(".md").to_string());
        match task(&id) {
            None => out.push((
                path,
                format!("names no known task `{id}`; it starts nothing"),
            )),
            Some(Some(finished)) => {
                // A rename sets ctime: the file came after the task ended.
                use std::os::unix::fs::MetadataExt;
                let moved = e.metadata().ok().map(|m| m.ctime());
                if moved.is_some_and(|c| c > finished.timestamp()) {
                    out.push((
                        path,
                        format!("`{id}` is already finished; it starts nothing"),
                    ));
                }
            }
            Some(None) => {}
        }
    }
    out
}
