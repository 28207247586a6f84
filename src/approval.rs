//! Human gates as files: `approvals/pending/`, `approved/`, `rejected/`.
//!
//! A task that needs approval gets `approvals/pending/<TASK-ID>.md`, written
//! once by the factory; a person approves by moving it to `approved/` (by
//! hand, `git mv`, or `taskq approve`) and rejects by moving it to
//! `rejected/` (or `taskq reject --reason`). An agent can gate one action
//! of its own with `taskq approval request` / `taskq approval wait`.
//! Approval files are never deleted: they are the record of who allowed
//! what.
//!
//! An approval covers what runs, not only a task id: a request records a
//! digest ([`Subject`]) of what decides what the task runs (its body and
//! `command:`, the role that routes it, its model, its tags), and taskq
//! notes every request it writes in `agents/factory/requests` ([`Ledger`]).
//! An approval counts only when its file carries a digest taskq requested
//! under that name and the task still has that digest: a task changed after
//! approval, or a file that appeared in `approved/` with no request before
//! it, is void ([`Decision::Void`]); the factory moves it to
//! `approvals/stale/` (marked `stale:` with the `reason:`) and asks again.

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
    /// A pending or approved file that does not cover the task as it is
    /// now (see [`verify`]): it counts for nothing.
    Void(PathBuf, Void),
}

/// Why an approval file counts for nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Void {
    /// In words (`its body, command or model changed since it was
    /// approved`).
    pub why: String,
    /// True when taskq never requested it (a file written into
    /// `approved/`): a warning, not only a change.
    pub unrequested: bool,
}

/// What decides what a task runs, as a request records it: the role that
/// routes it, its model (the task's `model:`, else the role's), its tags,
/// and a digest of those with its body and `command:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The role that routes the task.
    pub role: String,
    /// Its model, as asked (not a fallback model of a retry).
    pub model: Option<String>,
    /// Its tags, sorted.
    pub tags: Vec<String>,
    /// `sha256:<hex>` of all of it and the body and command.
    pub digest: String,
}

impl Subject {
    /// The subject of a task with this body, command, role, model and tags.
    pub fn new(
        body: &str,
        command: Option<&str>,
        role: &str,
        model: Option<&str>,
        tags: &[&str],
    ) -> Subject {
        let mut tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        tags.sort();
        tags.dedup();
        // Canonical bytes: each field as `name length:value`, so no value
        // can pass for another field.
        let mut bytes = Vec::new();
        let mut field = |name: &str, value: Option<&str>| {
            let v = value.unwrap_or("");
            let tag = if value.is_some() { "" } else { "~" };
            bytes.extend_from_slice(format!("{name}{tag} {}:", v.len()).as_bytes());
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(b'\n');
        };
        field("body", Some(body));
        field("command", command);
        field("role", Some(role));
        field("model", model);
        for t in &tags {
            field("tag", Some(t));
        }
        Subject {
            role: role.to_string(),
            model: model.map(str::to_string),
            tags,
            digest: sha256(&bytes),
        }
    }

    /// The subject of `t` as its file is now (`None` when the file cannot
    /// be read). A task no role takes has the role it names, or none.
    pub fn of_task(root: &Root, t: &Task, roles: &[Role], config: &Config) -> Option<Subject> {
        let file = fsutil::read(&root.task_path(t)).ok()?;
        Some(match crate::role::route(t, roles, config) {
            Some(role) => Subject::of_file(&file, t, role),
            None => Subject::of_parts(&file, t, t.role.as_deref().unwrap_or(""), None),
        })
    }

    /// The subject of `t` (read from `file`) routed to `role`.
    pub fn of_file(file: &[u8], t: &Task, role: &Role) -> Subject {
        Subject::of_parts(file, t, &role.name, role.settings.model.as_deref())
    }

    fn of_parts(file: &[u8], t: &Task, role: &str, role_model: Option<&str>) -> Subject {
        let (command, body) = crate::factory::prompt::body_and_command(file);
        let model = t.extra().model.as_deref().or(role_model);
        let tags: Vec<&str> = t.tags.iter().map(|t| &**t).collect();
        Subject::new(&body, command.as_deref(), role, model, &tags)
    }

    /// The digest of an action request's text.
    pub fn of_text(text: &str) -> String {
        sha256(text.trim().as_bytes())
    }
}

/// `sha256:<hex>` of `bytes`: SHA-256, not a fast hash, because an
/// approval must not be forgeable by a chosen edit that keeps the digest.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What an approval file records: its digest and, for a task's gate, the
/// role and tags it was requested for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// `digest:`.
    pub digest: Option<String>,
    /// `role:`.
    pub role: Option<String>,
    /// `tags:`, as written (`[a, b]`).
    pub tags: Option<String>,
    /// True when taskq wrote a request with this digest under this name
    /// (the [`Ledger`] knows it).
    pub requested: bool,
}

impl Recorded {
    /// Reads the fields of the approval file at `path` (named `name`).
    pub fn read(path: &Path, name: &str, ledger: &Ledger) -> Recorded {
        let text = fsutil::read(path).unwrap_or_default();
        let field = |k: &str| frontmatter::scalar_field(&text, k);
        let digest = field("digest");
        let requested = digest.as_deref().is_some_and(|d| ledger.knows(name, d));
        Recorded {
            role: field("role"),
            tags: raw_field(&text, "tags"),
            digest,
            requested,
        }
    }
}

/// A header line's value as written (`tags: [a, b]` gives `[a, b]`).
fn raw_field(text: &[u8], key: &str) -> Option<String> {
    let text = String::from_utf8_lossy(text);
    let mut lines = text.lines();
    if lines.next()?.trim_end() != "---" {
        return None;
    }
    lines
        .take_while(|l| l.trim_end() != "---")
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_string())
}

/// Whether a pending or approved file covers the task as `now` is (pure):
/// `None` when it does, else why not.
pub fn verdict(state: &str, rec: &Recorded, now: &Subject) -> Option<Void> {
    if state == "approved" && !rec.requested {
        let why = match rec.digest {
            None => "carries no request digest: no pending request was written before it (only taskq writes requests; a person approves by moving the pending file)".to_string(),
            Some(_) => "matches no request taskq wrote: no pending request was written before it".to_string(),
        };
        return Some(Void {
            why,
            unrequested: true,
        });
    }
    if rec.digest.as_deref() == Some(now.digest.as_str()) {
        return None;
    }
    let since = match state {
        "approved" => "since it was approved",
        _ => "since it was requested",
    };
    let why = match (&rec.digest, &rec.role, &rec.tags) {
        (None, ..) => "was written before requests carried a digest".to_string(),
        (_, Some(r), _) if *r != now.role && *r != frontmatter::yaml_str(&now.role) => {
            format!("its role changed {since} (`{r}`, now `{}`)", now.role)
        }
        (_, _, Some(t)) if *t != tags_field(&now.tags) => {
            format!(
                "its tags changed {since} ({t}, now {})",
                tags_field(&now.tags)
            )
        }
        _ => format!("its body, command or model changed {since}"),
    };
    Some(Void {
        why,
        unrequested: false,
    })
}

/// Tags as a request writes them: `[a, b]`.
pub fn tags_field(tags: &[String]) -> String {
    let shown: Vec<String> = tags.iter().map(|t| frontmatter::yaml_str(t)).collect();
    format!("[{}]", shown.join(", "))
}

/// The requests taskq wrote: `agents/factory/requests`, one line each,
/// `<name> <digest> <time>`. An approval counts only when this knows its
/// name and digest (agents cannot write `agents/` under the sandbox).
#[derive(Debug, Default)]
pub struct Ledger {
    known: std::collections::HashSet<(String, String)>,
}

impl Ledger {
    /// `agents/factory/requests`.
    pub fn path(root: &Root) -> PathBuf {
        root.approval_ledger()
    }

    /// Reads the ledger (empty when it is missing).
    pub fn load(root: &Root) -> Ledger {
        let text = fsutil::read(&Ledger::path(root)).unwrap_or_default();
        Ledger::parse(&String::from_utf8_lossy(&text))
    }

    fn parse(text: &str) -> Ledger {
        let known = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                Some((w.next()?.to_string(), w.next()?.to_string()))
            })
            .collect();
        Ledger { known }
    }

    /// True when taskq wrote a request `name` with `digest`.
    pub fn knows(&self, name: &str, digest: &str) -> bool {
        self.known.contains(&(name.to_string(), digest.to_string()))
    }

    /// The ledger's bytes with one more request.
    pub fn appended(mut old: Vec<u8>, name: &str, digest: &str, now: Timestamp) -> Vec<u8> {
        if !old.is_empty() && !old.ends_with(b"\n") {
            old.push(b'\n');
        }
        old.extend_from_slice(format!("{name} {digest} {}\n", format_timestamp(now)).as_bytes());
        old
    }
}

/// The state of `t`'s gate, checked against the task as it is now: a
/// pending or approved file that does not cover it is [`Decision::Void`].
pub fn verified(
    root: &Root,
    t: &Task,
    roles: &[Role],
    config: &Config,
    ledger: &dyn Fn() -> std::rc::Rc<Ledger>,
) -> Decision {
    let d = decision(root, &t.id);
    let (state, path) = match &d {
        Decision::Approved(p) => ("approved", p.clone()),
        Decision::Pending(p) => ("pending", p.clone()),
        _ => return d,
    };
    let Some(now) = Subject::of_task(root, t, roles, config) else {
        return d;
    };
    let rec = Recorded::read(&path, &t.id, &ledger());
    match verdict(state, &rec, &now) {
        None => d,
        Some(v) => Decision::Void(path, v),
    }
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
    let ledger = lazy_ledger(root);
    let mut out = Vec::new();
    for (i, t) in tasks {
        let role = crate::role::route(&t, &roles, &config);
        if !needs_approval(&t, role, &config) {
            continue;
        }
        match verified(root, &t, &roles, &config, &ledger) {
            Decision::Void(p, v) => out.push((
                i,
                format!(
                    "{} is void: {}; `taskq run` asks again",
                    p.strip_prefix(&root.dir).unwrap_or(&p).display(),
                    v.why
                ),
            )),
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
    /// The request ledger, read when first needed.
    ledger: std::cell::OnceCell<std::rc::Rc<Ledger>>,
    /// Void approvals already warned about.
    warned: std::cell::RefCell<std::collections::HashSet<PathBuf>>,
}

/// The ledger of `root`, read once on first use.
pub fn lazy_ledger(root: &Root) -> impl Fn() -> std::rc::Rc<Ledger> + '_ {
    let cell = std::cell::OnceCell::new();
    move || std::rc::Rc::clone(cell.get_or_init(|| std::rc::Rc::new(Ledger::load(root))))
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
            ledger: std::cell::OnceCell::new(),
            warned: Default::default(),
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
        let ledger = || {
            std::rc::Rc::clone(
                self.ledger
                    .get_or_init(|| std::rc::Rc::new(Ledger::load(root))),
            )
        };
        match verified(root, t, &self.roles, &self.config, &ledger) {
            Decision::Approved(_) => None,
            Decision::Void(p, _) if p.starts_with(root.approvals("pending")) => {
                Some(format!("waits for approval: {}", shown(&p)))
            }
            Decision::Void(p, v) => {
                if v.unrequested && self.warned.borrow_mut().insert(p.clone()) {
                    eprintln!(
                        "taskq: warning: {} is ignored: it {}\nhint: `taskq run` writes the request to approvals/pending/; approve that file",
                        shown(&p),
                        v.why
                    );
                }
                Some(format!(
                    "has no valid approval: {} is void ({}); `taskq run` asks again",
                    shown(&p),
                    v.why
                ))
            }
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
    subject: &Subject,
    now: Timestamp,
) -> Result<PathBuf> {
    let path = root.approvals("pending").join(format!("{}.md", task.id));
    let mut text = format!(
        "---\ntask: {}\nrole: {}\n{}requested: {}\ntags: {}\ndigest: {}\n---\n# Approve {}: {}\n\n\
         Move this file to approvals/approved/ to let the agent run (or run \
         `taskq approve {}`); move it to approvals/rejected/ to cancel the task \
         (`taskq reject {} --reason ...`).\n\nThe agent will be asked:\n\n",
        task.id,
        yaml_str(role),
        model.map_or_else(String::new, |m| format!("model: {}\n", yaml_str(m))),
        format_timestamp(now),
        tags_field(&subject.tags),
        subject.digest,
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
    if !disk.create_new(&path, text.as_bytes())? {
        // Written meanwhile (by this step, or a person): that one stands.
        return Ok(path);
    }
    let ledger = Ledger::path(root);
    let old = disk.read(&ledger).unwrap_or_default();
    disk.write(
        &ledger,
        &Ledger::appended(old, &task.id, &subject.digest, now),
    )?;
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
    let digest = Subject::of_text(text);
    let body = format!(
        "---\ntask: {task}\nagent: {}\nrequested: {}\ndigest: {digest}\n---\n{}\n",
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
            let ledger = Ledger::path(root);
            let old = fsutil::read(&ledger).unwrap_or_default();
            fsutil::write_atomic(&ledger, &Ledger::appended(old, &name, &digest, now))?;
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
    by: &Decider,
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
        Change::set("by", &by.name),
    ];
    if let Some(e) = &by.email {
        changes.push(Change::set("email", e));
    }
    if let Some(r) = reason {
        changes.push(Change::set("reason", r));
    }
    let old = fsutil::read(&to)?;
    if let Ok(new) = frontmatter::edit(&old, &changes) {
        fsutil::write_atomic(&to, &new)?;
    }
    Ok(to)
}

/// After `taskq approve` moved a request to `approved/`: a person
/// approved it, so taskq records the request if it has not (a pending file
/// written by hand, or by a taskq before digests): the approved file gets
/// the digest of what it covers now (`now`, for a task's gate; else its
/// text) and the ledger notes it.
pub fn record_approval(
    root: &Root,
    path: &Path,
    now: Option<&Subject>,
    at: Timestamp,
) -> Result<()> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = fsutil::read(path)?;
    let digest = match now {
        Some(s) => s.digest.clone(),
        None => frontmatter::scalar_field(&text, "digest").unwrap_or_else(|| {
            let body = match frontmatter::split(&text, true) {
                Some(frontmatter::Layout::Header { body, .. }) => &text[body..],
                _ => &text[..],
            };
            Subject::of_text(&String::from_utf8_lossy(body))
        }),
    };
    let mut changes = vec![Change::set("digest", &digest)];
    if let Some(s) = now {
        changes.push(Change::set_raw("tags", tags_field(&s.tags)));
    }
    if frontmatter::scalar_field(&text, "digest").as_deref() != Some(digest.as_str())
        || now.is_some_and(|s| raw_field(&text, "tags") != Some(tags_field(&s.tags)))
    {
        if let Ok(new) = frontmatter::edit(&text, &changes) {
            fsutil::write_atomic(path, &new)?;
        }
    }
    if !Ledger::load(root).knows(&name, &digest) {
        let ledger = Ledger::path(root);
        let old = fsutil::read(&ledger).unwrap_or_default();
        fsutil::write_atomic(&ledger, &Ledger::appended(old, &name, &digest, at))?;
    }
    Ok(())
}

/// Who approves or rejects: a name, and git's `user.email` when the name
/// came from git.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decider {
    /// `--by`, git's `user.name`, `$USER`, or `someone`.
    pub name: String,
    /// git's `user.email`, when the name is git's.
    pub email: Option<String>,
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
        Decision::Missing | Decision::Void(..) => Err(Error::usage_hint(
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
    let mut warned = false;
    loop {
        match decision(root, &name) {
            // Only a request taskq wrote counts, approved as it was asked.
            Decision::Approved(p) => {
                let rec = Recorded::read(&p, &name, &Ledger::load(root));
                if rec.requested {
                    return Ok(0);
                }
                if !std::mem::replace(&mut warned, true) {
                    eprintln!(
                        "taskq: warning: {} is ignored: it matches no request taskq wrote\nhint: a person approves the pending file taskq wrote (`taskq approve {name}`)",
                        p.display()
                    );
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(body: &str, role: &str, tags: &[&str]) -> Subject {
        Subject::new(body, Some("make"), role, Some("m"), tags)
    }

    #[test]
    fn the_digest_covers_each_field_and_no_field_passes_for_another() {
        let a = subject("do it", "builder", &["x", "y"]);
        assert!(a.digest.starts_with("sha256:") && a.digest.len() == 71);
        // Tag order does not matter; every field does.
        assert_eq!(a, subject("do it", "builder", &["y", "x"]));
        assert_ne!(a.digest, subject("do it!", "builder", &["x", "y"]).digest);
        assert_ne!(a.digest, subject("do it", "fixer", &["x", "y"]).digest);
        assert_ne!(a.digest, subject("do it", "builder", &["x"]).digest);
        let no_cmd = Subject::new("do it", None, "builder", Some("m"), &["x", "y"]);
        assert_ne!(a.digest, no_cmd.digest);
        assert_ne!(
            Subject::new("", Some(""), "r", None, &[]).digest,
            Subject::new("", None, "r", Some(""), &[]).digest
        );
        // Known vector.
        assert_eq!(
            sha256(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn a_verdict_names_what_changed_and_refuses_unrequested_approvals() {
        let now = subject("do it", "builder", &["x"]);
        let rec = |digest: Option<&str>, role: &str, tags: &str, requested: bool| Recorded {
            digest: digest.map(str::to_string),
            role: Some(role.into()),
            tags: Some(tags.into()),
            requested,
        };
        let ok = rec(Some(&now.digest), "builder", "[x]", true);
        assert_eq!(verdict("approved", &ok, &now), None);
        assert_eq!(verdict("pending", &ok, &now), None);
        // Approved, but taskq never wrote that request.
        let forged = rec(Some(&now.digest), "builder", "[x]", false);
        assert!(verdict("approved", &forged, &now).unwrap().unrequested);
        assert_eq!(verdict("pending", &forged, &now), None);
        let why = |r: Recorded| verdict("approved", &r, &now).unwrap().why;
        assert_eq!(
            why(rec(Some("sha256:1"), "fixer", "[x]", true)),
            "its role changed since it was approved (`fixer`, now `builder`)"
        );
        assert_eq!(
            why(rec(Some("sha256:1"), "builder", "[x, y]", true)),
            "its tags changed since it was approved ([x, y], now [x])"
        );
        assert_eq!(
            why(rec(Some("sha256:1"), "builder", "[x]", true)),
            "its body, command or model changed since it was approved"
        );
        assert!(
            verdict("approved", &rec(None, "builder", "[x]", false), &now)
                .unwrap()
                .why
                .contains("carries no request digest")
        );
    }

    #[test]
    fn the_ledger_knows_what_it_recorded() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let bytes = Ledger::appended(Vec::new(), "TASK-001", "sha256:aa", now);
        let bytes = Ledger::appended(bytes, "TASK-001-1", "sha256:bb", now);
        let l = Ledger::parse(&String::from_utf8(bytes).unwrap());
        assert!(l.knows("TASK-001", "sha256:aa"));
        assert!(!l.knows("TASK-001", "sha256:bb"));
        assert!(l.knows("TASK-001-1", "sha256:bb"));
        assert_eq!(
            raw_field(b"---\ntags: [a, b]\n---\ntags: no\n", "tags").as_deref(),
            Some("[a, b]")
        );
    }
}
