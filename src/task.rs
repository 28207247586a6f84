//! The task: its fields, statuses and priorities, and how a parsed header
//! becomes a [`Task`] (with a [`Problem`] for every field that is wrong).
//!
//! A task is kept compact (100,000 of them fit in the memory budget of
//! `taskq next`): fields most tasks never set live in [`Extra`], allocated
//! only when one of them is present.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::Serialize;

use crate::error::{suggest, Problem};
use crate::frontmatter::{Field, Layout, Value};

/// A point in time as written in a task file (the offset is kept).
pub type Timestamp = DateTime<FixedOffset>;

/// Where a task file lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Folder {
    /// `tasks/todo/`
    Todo,
    /// `tasks/done/`
    Done,
}

impl Folder {
    /// The directory name under `tasks/`.
    pub fn dir_name(self) -> &'static str {
        match self {
            Folder::Todo => "todo",
            Folder::Done => "done",
        }
    }
}

macro_rules! word_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal { $($(#[$vmeta:meta])* $variant:ident = $word:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every accepted word, in order.
            pub const WORDS: &'static [&'static str] = &[$($word),+];

            /// The word written in task files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($word => Ok($name::$variant),)+
                    _ => Err(format!(concat!("unknown ", $what, " `{}`"), s)),
                }
            }
        }
    };
}

word_enum! {
    /// The `status:` of a task.
    Status, "status" {
        /// Waiting to run (once its dependencies are done).
        Ready = "ready",
        /// Claimed by an agent or a script.
        Running = "running",
        /// Finished by a builder, waiting for a tester's verdict.
        Review = "review",
        /// Gave up after its retries; stays in `todo/`.
        Failed = "failed",
        /// Finished; lives in `done/`.
        Done = "done",
        /// Will not be done; stays in `todo/`.
        Cancelled = "cancelled",
        /// Put aside by a person; not run until released.
        Hold = "hold",
    }
}

word_enum! {
    /// The `priority:` of a task; `critical` runs first.
    Priority, "priority" {
        /// Runs before everything else.
        Critical = "critical",
        /// Runs before medium and low.
        High = "high",
        /// The default.
        Medium = "medium",
        /// Runs last.
        Low = "low",
    }
}

impl Priority {
    /// 3 for critical down to 0 for low.
    pub fn rank(self) -> u8 {
        match self {
            Priority::Critical => 3,
            Priority::High => 2,
            Priority::Medium => 1,
            Priority::Low => 0,
        }
    }

    /// The inverse of [`Priority::rank`].
    pub fn from_rank(rank: u8) -> Self {
        match rank {
            3.. => Priority::Critical,
            2 => Priority::High,
            1 => Priority::Medium,
            0 => Priority::Low,
        }
    }
}

impl Status {
    /// Terminal statuses: nothing more will happen to the task by itself.
    pub fn is_closed(self) -> bool {
        matches!(self, Status::Done | Status::Cancelled)
    }
}

/// Fields most tasks do not set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extra {
    /// `model:` asked for by the task.
    pub model: Option<Box<str>>,
    /// `approval:` (e.g. `required`).
    pub approval: Option<Box<str>>,
    /// `parent:` task or agent.
    pub parent: Option<Box<str>>,
    /// `timeout:` (a duration like `20m`).
    pub timeout: Option<Box<str>>,
    /// `result:` recorded when done.
    pub result: Option<Box<str>>,
    /// `reason:` recorded when failed or cancelled.
    pub reason: Option<Box<str>>,
    /// `result_file:` the agent's full final message.
    pub result_file: Option<Box<str>>,
    /// `review_role:` the role that reviews the work (set by the factory).
    pub review_role: Option<Box<str>>,
    /// `builder:` the agent whose work is under review.
    pub builder: Option<Box<str>>,
    /// `created_by:` the agent that created the task (through the agent
    /// API; docs/reference/agent-api.md).
    pub created_by: Option<Box<str>>,
    /// `progress:` the last progress note (`taskq note`).
    pub progress: Option<Box<str>>,
    /// `review_rounds:` times a tester sent the task back.
    pub review_rounds: u32,
    /// `review_errors:` tester runs that gave no verdict.
    pub review_errors: u32,
    /// `retries:` allowed.
    pub retries: Option<u32>,
    /// `started:` when claimed.
    pub started: Option<Timestamp>,
    /// `completed:` when done.
    pub completed: Option<Timestamp>,
    /// `lease_expires:` when a claim's lease runs out.
    pub lease_expires: Option<Timestamp>,
    /// `retry_after:` the end of a retry backoff.
    pub retry_after: Option<Timestamp>,
}

/// One task, as read from its file's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The id (`TASK-006`), or the file stem when the file has none yet.
    pub id: Box<str>,
    /// Path relative to its folder (`TASK-006-jwt.md`), `/`-separated.
    pub rel: Box<str>,
    /// `todo/` or `done/`.
    pub folder: Folder,
    /// False when the file has no `id:` yet (it is listed under its stem).
    pub has_id: bool,
    /// True when a known field is invalid: the task is shown but never
    /// ready and never changed until fixed.
    pub broken: bool,
    /// 1-based line of the `id:` key (for messages), 0 when absent.
    pub id_line: u32,
    /// Read by a lean scan: the title (and, in done/, more) was not kept.
    pub lean: bool,
    /// The version of the file this was read from (`fsutil::version`; 0
    /// when unknown): a write that changes the task is a compare-and-swap
    /// against it, so nobody's change in between is lost.
    pub version: u64,
    /// `title:`, when the header has one (see [`Task::title_or_stem`]).
    pub title: Option<Box<str>>,
    /// `status:`.
    pub status: Status,
    /// `priority:`.
    pub priority: Priority,
    /// `tags:`.
    pub tags: Box<[Box<str>]>,
    /// `dependencies:` (task ids).
    pub dependencies: Box<[Box<str>]>,
    /// `assigned:` agent or person.
    pub assigned: Option<Box<str>>,
    /// `role:` to run it.
    pub role: Option<Box<str>>,
    /// `attempts:` made so far.
    pub attempts: u32,
    /// `created:`.
    pub created: Option<Timestamp>,
    /// The rarely set fields.
    pub extra: Option<Box<Extra>>,
}

/// Known keys of a task header, for "did you mean" hints on typos.
pub const KNOWN_KEYS: &[&str] = &[
    "id",
    "title",
    "status",
    "tags",
    "dependencies",
    "priority",
    "assigned",
    "created",
    "role",
    "model",
    "timeout",
    "retries",
    "attempts",
    "approval",
    "parent",
    "created_by",
    "progress",
    "started",
    "completed",
    "result",
    "reason",
    "result_file",
    "review_role",
    "builder",
    "review_rounds",
    "review_errors",
    "tested_by",
    "cost_usd",
    "lease_expires",
    "retry_after",
];

impl Task {
    /// The rarely set fields, or defaults.
    pub fn extra(&self) -> &Extra {
        static EMPTY: Extra = Extra {
            model: None,
            approval: None,
            parent: None,
            timeout: None,
            result: None,
            reason: None,
            result_file: None,
            review_role: None,
            builder: None,
            created_by: None,
            progress: None,
            review_rounds: 0,
            review_errors: 0,
            retries: None,
            started: None,
            completed: None,
            lease_expires: None,
            retry_after: None,
        };
        self.extra.as_deref().unwrap_or(&EMPTY)
    }

    /// The title, else the file stem (the `# heading` fallback needs the
    /// body; see `store::display_title`).
    pub fn title_or_stem(&self) -> &str {
        match &self.title {
            Some(t) => t,
            None => file_stem(&self.rel),
        }
    }

    /// True when the claim's lease has run out at `now`.
    pub fn lease_expired(&self, now: Timestamp) -> bool {
        self.status == Status::Running && self.extra().lease_expires.is_some_and(|t| t <= now)
    }

    /// The status as the queue sees it at `now`: a running task whose lease
    /// expired counts as ready again.
    pub fn effective_status(&self, now: Timestamp) -> Status {
        if self.lease_expired(now) {
            Status::Ready
        } else {
            self.status
        }
    }

    /// The assignee as the queue sees it at `now` (none once the lease
    /// expired).
    pub fn effective_assigned(&self, now: Timestamp) -> Option<&str> {
        if self.lease_expired(now) {
            None
        } else {
            self.assigned.as_deref()
        }
    }

    /// Builds a task from the fields of its header. Every problem found is
    /// pushed to `problems`, with `path` and the file line.
    pub fn from_fields(
        fields: &[Field<'_>],
        folder: Folder,
        rel: &str,
        path: &Path,
        problems: &mut Vec<Problem>,
    ) -> Task {
        let mut task = Task {
            id: Box::from(file_stem(rel)),
            rel: Box::from(rel),
            folder,
            has_id: false,
            broken: false,
            id_line: 0,
            lean: false,
            version: 0,
            title: None,
            status: match folder {
                Folder::Todo => Status::Ready,
                Folder::Done => Status::Done,
            },
            priority: Priority::Medium,
            tags: Box::new([]),
            dependencies: Box::new([]),
            assigned: None,
            role: None,
            attempts: 0,
            created: None,
            extra: None,
        };
        let mut extra = Extra::default();
        let mut has_extra = false;
        let problems_before = problems.len();
        let mut status_seen = false;
        for field in fields {
            let line = field.line + Layout::FIRST_LINE;
            let mut bad = |message: String, hint: Option<String>| {
                let mut p = Problem::at(path, line, message);
                p.hint = hint;
                problems.push(p);
            };
            let key = field.key;
            match key {
                "id" => match scalar(&field.value) {
                    Some(id) => match validate_id(id) {
                        Ok(()) => {
                            task.id = Box::from(id);
                            task.has_id = true;
                            task.id_line = line as u32;
                        }
                        Err(why) => {
                            bad(format!("invalid id `{id}`: {why}"), None);
                            task.broken = true;
                        }
                    },
                    None => {
                        bad(wrong_type("id", "a single value", &field.value), None);
                        task.broken = true;
                    }
                },
                "title" => match &field.value {
                    Value::Scalar(s) if !s.trim().is_empty() => {
                        task.title = Some(Box::from(s.trim()))
                    }
                    Value::Null | Value::Scalar(_) => {}
                    other => bad(wrong_type("title", "a single value", other), None),
                },
                "status" => match scalar(&field.value) {
                    Some(s) => match s.parse::<Status>() {
                        Ok(status) => {
                            task.status = status;
                            status_seen = true;
                        }
                        Err(e) => {
                            let hint = suggest(s, Status::WORDS)
                                .map(|w| {
                                    format!(
                                        "did you mean `{w}`? (one of: {})",
                                        Status::WORDS.join(", ")
                                    )
                                })
                                .or_else(|| Some(format!("one of: {}", Status::WORDS.join(", "))));
                            bad(e, hint);
                            task.broken = true;
                        }
                    },
                    None if field.value == Value::Null => {}
                    None => {
                        bad(wrong_type("status", "a single value", &field.value), None);
                        task.broken = true;
                    }
                },
                "priority" => match scalar(&field.value) {
                    Some(s) => match s.parse::<Priority>() {
                        Ok(p) => task.priority = p,
                        Err(e) => {
                            let hint = suggest(s, Priority::WORDS)
                                .map(|w| {
                                    format!(
                                        "did you mean `{w}`? (one of: {})",
                                        Priority::WORDS.join(", ")
                                    )
                                })
                                .or_else(|| {
                                    Some(format!("one of: {}", Priority::WORDS.join(", ")))
                                });
                            bad(e, hint);
                            task.broken = true;
                        }
                    },
                    None if field.value == Value::Null => {}
                    None => {
                        bad(wrong_type("priority", "a single value", &field.value), None);
                        task.broken = true;
                    }
                },
                "tags" => match list(&field.value) {
                    Some(items) => task.tags = items,
                    None => {
                        bad(
                            wrong_type("tags", "a list like `[build, backend]`", &field.value),
                            None,
                        );
                        task.broken = true;
                    }
                },
                "dependencies" => match list(&field.value) {
                    Some(items) => {
                        for dep in items.iter() {
                            if let Err(why) = validate_dependency(dep) {
                                bad(format!("invalid dependency `{dep}`: {why}"), None);
                                task.broken = true;
                            }
                        }
                        task.dependencies = items;
                    }
                    None => {
                        bad(
                            wrong_type(
                                "dependencies",
                                "a list of task ids like `[TASK-003]`",
                                &field.value,
                            ),
                            None,
                        );
                        task.broken = true;
                    }
                },
                "assigned" | "role" | "model" | "approval" | "parent" | "timeout" | "result"
                | "reason" | "result_file" | "review_role" | "builder" | "created_by"
                | "progress" => {
                    let v = match &field.value {
                        Value::Null => None,
                        Value::Scalar(s) if s.trim().is_empty() => None,
                        Value::Scalar(s) => Some(Box::<str>::from(s.as_ref())),
                        other => {
                            bad(wrong_type(key, "a single value", other), None);
                            if key == "assigned" || key == "role" {
                                task.broken = true;
                            }
                            None
                        }
                    };
                    // A timeout the factory cannot use would silently be
                    // the role's: refuse the task until it is fixed.
                    if let (Some(t), "timeout") = (&v, key) {
                        let why = match crate::duration::parse(t) {
                            Ok(d) if d.is_zero() => {
                                Some("`timeout` must be longer than 0s".to_string())
                            }
                            Ok(_) => None,
                            Err(e) => Some(format!("`timeout`: {e}")),
                        };
                        if let Some(why) = why {
                            bad(why, Some("write a duration like `20m` or `1h30m`".into()));
                            task.broken = true;
                        }
                    }
                    match key {
                        "assigned" => task.assigned = v,
                        "role" => task.role = v,
                        _ => {
                            has_extra |= v.is_some();
                            let slot = match key {
                                "model" => &mut extra.model,
                                "approval" => &mut extra.approval,
                                "parent" => &mut extra.parent,
                                "timeout" => &mut extra.timeout,
                                "result" => &mut extra.result,
                                "result_file" => &mut extra.result_file,
                                "review_role" => &mut extra.review_role,
                                "builder" => &mut extra.builder,
                                "created_by" => &mut extra.created_by,
                                "progress" => &mut extra.progress,
                                _ => &mut extra.reason,
                            };
                            *slot = v;
                        }
                    }
                }
                "attempts" | "retries" | "review_rounds" | "review_errors" => match &field.value {
                    Value::Null => {}
                    Value::Scalar(s) => match s.trim().parse::<u32>() {
                        Ok(n) if key == "attempts" => task.attempts = n,
                        Ok(n) if key == "review_rounds" => {
                            extra.review_rounds = n;
                            has_extra = true;
                        }
                        Ok(n) if key == "review_errors" => {
                            extra.review_errors = n;
                            has_extra = true;
                        }
                        Ok(n) => {
                            extra.retries = Some(n);
                            has_extra = true;
                        }
                        Err(_) => bad(format!("`{key}` must be a whole number, found `{s}`"), None),
                    },
                    other => bad(wrong_type(key, "a whole number", other), None),
                },
                "created" | "started" | "completed" | "lease_expires" | "retry_after" => {
                    let ts = match &field.value {
                        Value::Null => None,
                        Value::Scalar(s) => {
                            match parse_timestamp(s) {
                                Some(t) => Some(t),
                                None => {
                                    bad(
                                    format!("`{key}` is not a date-time: `{s}`"),
                                    Some("write it as RFC 3339, e.g. `2026-02-03T12:04:30-05:00`".into()),
                                );
                                    None
                                }
                            }
                        }
                        other => {
                            bad(wrong_type(key, "a date-time", other), None);
                            None
                        }
                    };
                    match key {
                        "created" => task.created = ts,
                        _ => {
                            has_extra |= ts.is_some();
                            let slot = match key {
                                "started" => &mut extra.started,
                                "completed" => &mut extra.completed,
                                "lease_expires" => &mut extra.lease_expires,
                                _ => &mut extra.retry_after,
                            };
                            *slot = ts;
                        }
                    }
                }
                // Unknown fields are kept in the file untouched; a near miss of
                // a known key is worth a warning.
                other => {
                    if let Some(known) = suggest(other, KNOWN_KEYS).filter(|k| *k != other) {
                        problems.push(
                            Problem::at(
                                path,
                                line,
                                format!("unknown field `{other}` (kept as is)"),
                            )
                            .hint(format!("did you mean `{known}`?"))
                            .warning(),
                        );
                    }
                }
            }
        }
        // Any invalid known field (not a mere warning) holds the task: it is
        // shown, but never ready and never changed until fixed.
        if problems[problems_before..].iter().any(|p| !p.warning) {
            task.broken = true;
        }
        let _ = status_seen;
        if has_extra {
            task.extra = Some(Box::new(extra));
        }
        if task.dependencies.iter().any(|d| **d == *task.id) && task.has_id {
            problems.push(Problem::at(
                path,
                dependency_line(fields),
                format!("`{}` depends on itself", task.id),
            ));
            task.broken = true;
        }
        task
    }
}

fn dependency_line(fields: &[Field<'_>]) -> usize {
    fields
        .iter()
        .find(|f| f.key == "dependencies")
        .map_or(1, |f| f.line + Layout::FIRST_LINE)
}

fn scalar<'a>(value: &'a Value<'_>) -> Option<&'a str> {
    match value {
        Value::Scalar(s) => Some(s.as_ref()),
        _ => None,
    }
}

/// A list field: a list, a single value (one item, or comma-separated
/// items), or nothing.
fn list(value: &Value<'_>) -> Option<Box<[Box<str>]>> {
    match value {
        Value::Null => Some(Box::new([])),
        Value::Seq(items) => Some(
            items
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(Box::from)
                .collect(),
        ),
        Value::Scalar(s) => Some(
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Box::from)
                .collect(),
        ),
        Value::Complex => None,
    }
}

fn wrong_type(key: &str, expected: &str, found: &Value<'_>) -> String {
    format!("`{key}` must be {expected}, found {}", found.kind())
}

/// The file name without directories and without `.md`.
pub fn file_stem(rel: &str) -> &str {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    name.strip_suffix(".md").unwrap_or(name)
}

/// Checks that `id` is safe as a name: letters, digits, `-`, `_`, `.`; no
/// path separators or `..`; at most 100 characters.
pub fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > 100 {
        return Err("it is longer than 100 characters");
    }
    if id.contains("..") || id.contains('/') || id.contains('\\') {
        return Err("ids may not contain `/`, `\\` or `..`");
    }
    if id.starts_with(['.', '-']) {
        return Err("ids start with a letter or a digit");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        return Err("ids use only letters, digits, `-`, `_` and `.`");
    }
    Ok(())
}

/// The task file a dependency names when it is written as a file rather
/// than an id (`setup-db.md`, `tasks/todo/setup-db.md`, `tasks/done/a/b`):
/// the folder, when the path gives it, and the path inside the folder.
/// `None` for anything else (an id, or a bare stem like `setup-db`).
pub fn dependency_file(dep: &str) -> Option<(Option<Folder>, &str)> {
    let dep = dep.strip_prefix("./").unwrap_or(dep);
    for folder in [Folder::Todo, Folder::Done] {
        if let Some(rel) = dep
            .strip_prefix("tasks/")
            .and_then(|d| d.strip_prefix(folder.dir_name()))
            .and_then(|d| d.strip_prefix('/'))
        {
            return Some((Some(folder), rel));
        }
    }
    dep.ends_with(".md").then_some((None, dep))
}

/// Checks a dependency: a task id (see [`validate_id`]), or a task file
/// (see [`dependency_file`]) as a relative path without `.` or `..` parts,
/// which `taskq adopt` (any writing command) rewrites to the file's id.
pub fn validate_dependency(dep: &str) -> Result<(), &'static str> {
    let Some((_, rel)) = dependency_file(dep) else {
        return validate_id(dep);
    };
    let bad_part = |c: &str| c.is_empty() || c == "." || c == "..";
    if rel.split('/').any(bad_part) || rel.contains('\\') || rel.chars().any(char::is_control) {
        return Err("a task file is named by its path under tasks/todo/ or tasks/done/, without `.` or `..`");
    }
    Ok(())
}

/// Parses RFC 3339 (`2026-02-03T12:04:30-05:00`, `...Z`), also with a space
/// instead of `T`, or a bare date (midnight UTC).
pub fn parse_timestamp(s: &str) -> Option<Timestamp> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(&s.replacen(' ', "T", 1)) {
        return Some(t);
    }
    let date = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc().fixed_offset())
}

/// Formats a timestamp the way taskq writes it (seconds, with offset).
pub fn format_timestamp(t: Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The number in `TASK-006` (any `PREFIX-<digits>` id), for ordering and
/// for id allocation.
pub fn id_number(id: &str) -> Option<u64> {
    let (_, digits) = id.rsplit_once('-')?;
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Orders ids "oldest first": by number where both have one, else by text.
pub fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (id_number(a), id_number(b)) {
        (Some(x), Some(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.cmp(b),
    }
}

/// Formats the id for number `n`: `TASK-007`, `TASK-1000`.
pub fn format_id(n: u64) -> String {
    format!("TASK-{n:03}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontmatter::parse;

    fn task(header: &str) -> (Task, Vec<Problem>) {
        let fields = parse(header).unwrap();
        let mut problems = Vec::new();
        let t = Task::from_fields(
            &fields,
            Folder::Todo,
            "x.md",
            Path::new("tasks/todo/x.md"),
            &mut problems,
        );
        (t, problems)
    }

    #[test]
    fn reads_every_known_field() {
        let (t, p) = task(
            "id: TASK-006\ntitle: JWT\nstatus: running\ntags: [a, b]\ndependencies: [TASK-003]\n\
             priority: high\nassigned: BLD-002\ncreated: 2026-02-03T12:04:30-05:00\nattempts: 2\n\
             retries: 3\nlease_expires: 2026-02-03 13:00:00Z\nresult: ok\nx-custom: kept\n",
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(&*t.id, "TASK-006");
        assert_eq!(t.status, Status::Running);
        assert_eq!(t.priority, Priority::High);
        assert_eq!(t.tags.len(), 2);
        assert_eq!(&*t.dependencies[0], "TASK-003");
        assert_eq!(t.attempts, 2);
        assert_eq!(t.extra().retries, Some(3));
        assert_eq!(t.extra().result.as_deref(), Some("ok"));
        assert!(t.extra().lease_expires.is_some());
        assert!(!t.broken);
    }

    #[test]
    fn reports_bad_fields_with_lines_and_hints() {
        let (t, p) = task("id: TASK-1\nstatus: redy\npriority: urgent\ntags: {a: 1}\nstatuss: x\n");
        assert!(t.broken);
        assert_eq!(p[0].to_string(), "tasks/todo/x.md:3: unknown status `redy`");
        assert!(p[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("did you mean `ready`"));
        assert_eq!(p[1].line, Some(4));
        assert!(p[2].message.contains("`tags` must be a list"));
        assert!(p[3].warning && p[3].message.contains("statuss"));
    }

    #[test]
    fn rejects_unsafe_ids() {
        for id in ["../etc/passwd", "a/b", "", ".hidden", "sp ace"] {
            assert!(validate_id(id).is_err(), "{id}");
        }
        assert!(validate_id("TASK-006").is_ok());
        let (t, p) = task("id: TASK-1\ndependencies: [TASK-1]\n");
        assert!(t.broken && p[0].message.contains("depends on itself"));
    }

    #[test]
    fn dependencies_may_name_task_files() {
        assert_eq!(dependency_file("setup-db.md"), Some((None, "setup-db.md")));
        assert_eq!(
            dependency_file("tasks/todo/setup-db.md"),
            Some((Some(Folder::Todo), "setup-db.md"))
        );
        assert_eq!(
            dependency_file("./tasks/done/a/b"),
            Some((Some(Folder::Done), "a/b"))
        );
        assert_eq!(dependency_file("setup-db"), None);
        assert_eq!(dependency_file("TASK-003"), None);
        for ok in [
            "setup-db.md",
            "tasks/todo/sub/x.md",
            "setup-db",
            "my notes.md",
        ] {
            assert!(validate_dependency(ok).is_ok(), "{ok}");
        }
        for bad in [
            "../x.md",
            "tasks/todo/../../x.md",
            "tasks/todo/",
            "a/b",
            "a\\b.md",
        ] {
            assert!(validate_dependency(bad).is_err(), "{bad}");
        }
        let (t, p) = task("dependencies: [tasks/todo/setup-db.md, api]\n");
        assert!(p.is_empty() && !t.broken, "{p:?}");
    }

    #[test]
    fn ids_order_by_number() {
        assert_eq!(id_order("TASK-9", "TASK-10"), std::cmp::Ordering::Less);
        assert_eq!(format_id(7), "TASK-007");
        assert_eq!(format_id(1234), "TASK-1234");
        assert_eq!(id_number("TASK-0042"), Some(42));
        assert_eq!(id_number("notes"), None);
    }
}
