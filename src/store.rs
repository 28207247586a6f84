//! The queue on disk: where things live, reading every task (the scan), and
//! changing them under the queue lock.
//!
//! Reading takes no lock and tolerates files renamed or deleted mid-scan: a
//! task moved from `todo/` to `done/` while we look is found in `done/`.
//! Writing goes through [`Writer`], which holds `agents/factory/queue.lock`
//! for its whole read-modify-write, re-reads the queue under it, and first
//! repairs what an earlier crash or a person left: id-less files get ids,
//! expired leases are returned to ready, a done task left in `todo/` by a
//! crash between edit and move is moved.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Local;

use crate::error::{Error, Problem, Result};
use crate::frontmatter::{self, Change, Layout};
use crate::fsutil;
use crate::lock::LockGuard;
use crate::task::{self, Folder, Status, Task, Timestamp};

pub use crate::root::Root;

/// Everything read from the queue: the tasks, and what is wrong.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every loaded task (files with fatal problems are left out).
    pub tasks: Vec<Task>,
    /// Every problem found, warnings included.
    pub problems: Vec<Problem>,
    /// Task positions sorted by id (stable: among equal ids, scan order),
    /// for binary search. 4 bytes a task, where a map would copy every id.
    index: Vec<u32>,
}

impl Scan {
    /// A scan made of the given tasks (for tests and benchmarks).
    pub fn from_tasks(tasks: Vec<Task>) -> Scan {
        let mut scan = Scan {
            tasks,
            problems: Vec::new(),
            index: Vec::new(),
        };
        scan.reindex();
        scan
    }

    /// The task with exactly this id.
    pub fn get(&self, id: &str) -> Option<&Task> {
        self.position(id).map(|i| &self.tasks[i])
    }

    /// The index of the task with exactly this id.
    pub fn position(&self, id: &str) -> Option<usize> {
        let k = self
            .index
            .partition_point(|&i| &*self.tasks[i as usize].id < id);
        self.index
            .get(k)
            .map(|&i| i as usize)
            .filter(|&i| &*self.tasks[i].id == id)
    }

    /// Resolves what a user typed (`TASK-006`, `task-6`, `6`) to a task's
    /// index, or a usage error naming the id.
    pub fn resolve(&self, input: &str) -> Result<usize> {
        if let Some(i) = self.position(input) {
            return Ok(i);
        }
        let wanted = input
            .trim()
            .to_ascii_uppercase()
            .strip_prefix("TASK-")
            .map(str::to_string)
            .unwrap_or_else(|| input.trim().to_string());
        if let Ok(n) = wanted.parse::<u64>() {
            let matches: Vec<usize> = self
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| {
                    t.has_id && t.id.starts_with("TASK-") && task::id_number(&t.id) == Some(n)
                })
                .map(|(i, _)| i)
                .collect();
            if let [i] = matches[..] {
                return Ok(i);
            }
        }
        Err(Error::usage_hint(
            format!("no task `{input}`"),
            "`taskq list` shows every task and its id",
        ))
    }

    /// The tasks by file name, for dependencies written as a file name
    /// rather than an id (see [`Files`]).
    pub fn files(&self) -> Files<'_> {
        let mut by_rel: HashMap<&str, [Option<usize>; 2]> = HashMap::new();
        for (i, t) in self.tasks.iter().enumerate() {
            by_rel.entry(&t.rel).or_default()[t.folder as usize] = Some(i);
        }
        Files { by_rel }
    }

    /// Rebuilds the id index after tasks were added or changed.
    fn reindex(&mut self) {
        let tasks = &self.tasks;
        let mut index: Vec<u32> = (0..tasks.len() as u32).collect();
        index.sort_by(|&a, &b| tasks[a as usize].id.cmp(&tasks[b as usize].id));
        self.index = index;
    }
}

/// The tasks of a scan by their file (path under `tasks/todo/` or
/// `tasks/done/`), built once for the dependencies that name no id.
pub struct Files<'a> {
    /// Each path's task in todo/ and in done/.
    by_rel: HashMap<&'a str, [Option<usize>; 2]>,
}

impl Files<'_> {
    /// The task a dependency names as a file: `setup-db.md`,
    /// `tasks/todo/setup-db.md`, or the bare stem `setup-db` (how an id-less
    /// file is listed, so a person writes it before adoption). Without a
    /// folder, the file in todo/ wins over the one in done/.
    pub fn find(&self, dep: &str) -> Option<usize> {
        let (folder, rel) = task::dependency_file(dep).unwrap_or((None, dep));
        let slots = if rel.ends_with(".md") {
            self.by_rel.get(rel)
        } else {
            self.by_rel.get(format!("{rel}.md").as_str())
        }?;
        match folder {
            Some(f) => slots[f as usize],
            None => slots[0].or(slots[1]),
        }
    }
}

/// One file found by the directory walk.
struct Entry {
    folder: Folder,
    rel: String,
    symlink: bool,
}

/// How much of each task a scan keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Every field.
    Full,
    /// For read commands that only order and show the queue (`next`,
    /// `deps`, `status`): tasks in done/ keep only what makes them
    /// satisfied dependencies and labels (id, status, title, deps).
    Lean,
    /// When the queue holds more than [`OPEN_FULL_ABOVE`] tasks: those in
    /// todo/ in full, those in done/ lean, with their tags if `tags` (`list`:
    /// the open tasks are few and small, the finished ones many, with
    /// results; `--tag` filters before the tasks are read again). A smaller
    /// queue is read in full, which is faster and small anyway.
    OpenFull {
        /// Keep the tags of finished tasks (4 MB at 100,000 tasks).
        tags: bool,
    },
}

/// Below this many task files, [`Detail::OpenFull`] keeps everything
/// (about 20 MB at this size).
pub const OPEN_FULL_ABOVE: usize = 30_000;

/// Reads every task of the root, in parallel, header only.
pub fn scan(root: &Root) -> Scan {
    scan_with(root, Detail::Full)
}

/// [`scan`] keeping less of each finished task (see [`Detail::Lean`]).
pub fn scan_lean(root: &Root) -> Scan {
    scan_with(root, Detail::Lean)
}

/// [`scan`] keeping open tasks in full and finished ones lean, with their
/// tags if `tags` (see [`Detail::OpenFull`]).
pub fn scan_open_full(root: &Root, tags: bool) -> Scan {
    scan_with(root, Detail::OpenFull { tags })
}

fn scan_with(root: &Root, detail: Detail) -> Scan {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    for folder in [Folder::Todo, Folder::Done] {
        list_folder(root, folder, &mut entries, &mut problems);
    }
    let detail = match detail {
        Detail::OpenFull { .. } if entries.len() <= OPEN_FULL_ABOVE => Detail::Full,
        other => other,
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let threads = if entries.len() < 256 { 1 } else { threads };
    let chunk = entries.len().div_ceil(threads).max(1);
    // Each thread fills its own part of one array of slots, so the tasks
    // are never held twice (100,000 of them must fit in 50 MB).
    let mut slots: Vec<Option<Task>> = std::iter::repeat_with(|| None)
        .take(entries.len())
        .collect();
    let results: Vec<Vec<Problem>> = std::thread::scope(|s| {
        let handles: Vec<_> = entries
            .chunks_mut(chunk)
            .zip(slots.chunks_mut(chunk))
            .map(|(part, out)| s.spawn(move || read_tasks(root, part, out, detail)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan threads do not panic"))
            .collect()
    });
    drop(entries);
    // `filter_map` over a vec's own items collects in place (std's in-place
    // iteration), reusing the slots' allocation instead of a second array.
    #[allow(clippy::filter_map_identity)]
    let tasks: Vec<Task> = slots.into_iter().filter_map(|t| t).collect();
    let mut scan = Scan {
        tasks,
        problems,
        index: Vec::new(),
    };
    for problems in results {
        scan.problems.extend(problems);
    }
    scan.order();
    // Duplicate ids: every copy is held; the problem is reported on each
    // copy after the first (todo/ before done/, then by name).
    let mut broken = Vec::new();
    for k in 1..scan.index.len() {
        let (first, i) = (scan.index[k - 1] as usize, scan.index[k] as usize);
        let t = &scan.tasks[i];
        if scan.tasks[first].id == t.id {
            let first = scan.index[..k]
                .iter()
                .map(|&j| j as usize)
                .find(|&j| scan.tasks[j].id == t.id)
                .expect("k-1 has it");
            let other = &scan.tasks[first];
            if t.has_id {
                scan.problems.push(
                    Problem::at(
                        root.rel_path(t.folder, &t.rel),
                        t.id_line as usize,
                        format!(
                            "duplicate id `{}` (also in {})",
                            t.id,
                            root.rel_path(other.folder, &other.rel).display()
                        ),
                    )
                    .hint("give one of them a new id, or delete the copy"),
                );
            }
            // Hold every copy: running either could run the task twice.
            broken.push(i);
            broken.push(first);
        }
    }
    for i in broken {
        scan.tasks[i].broken = true;
    }
    for t in &scan.tasks {
        task_problems(root, t, &mut scan.problems);
    }
    scan
}

/// What is wrong with one task as it stands in the queue (besides its
/// file's own problems and duplicate ids).
fn task_problems(root: &Root, t: &Task, out: &mut Vec<Problem>) {
    if t.folder == Folder::Done && t.status != Status::Done && t.has_id {
        out.push(
            Problem::new(
                root.rel_path(t.folder, &t.rel),
                format!("`{}` is in done/ but its status is `{}`", t.id, t.status),
            )
            .hint("set `status: done`, or move it back to tasks/todo/"),
        );
    }
    if !t.has_id && !t.broken {
        out.push(
            Problem::new(
                root.rel_path(t.folder, &t.rel),
                format!("no `id` yet: listed as `{}`", t.id),
            )
            .hint("`taskq adopt` (or any writing command) gives it the next id")
            .warning(),
        );
    }
}

impl Scan {
    /// Brings a full scan up to date with the files at `paths` (absolute;
    /// the watcher's events): each task file among them is read again, or
    /// dropped when it is gone; other files are ignored as a full scan
    /// ignores them. False when that cannot be exact and the whole queue
    /// must be read again: a directory changed (a folder moved in or out),
    /// a name is not UTF-8, or ids are duplicated (before or after).
    pub fn refresh(&mut self, root: &Root, paths: &[PathBuf]) -> bool {
        if self.has_duplicates() {
            return false;
        }
        let mut buf = Vec::with_capacity(8192);
        for path in paths {
            let meta = fs::symlink_metadata(path).ok();
            if meta.as_ref().is_some_and(fs::Metadata::is_dir) {
                return false;
            }
            let located = [Folder::Todo, Folder::Done].into_iter().find_map(|folder| {
                let rel = path.strip_prefix(root.folder(folder)).ok()?;
                Some((folder, rel))
            });
            let Some((folder, rel)) = located else {
                // tasks/ itself, tasks/todo or tasks/done: a folder.
                if path.starts_with(root.dir.join("tasks")) && meta.is_none() {
                    return false;
                }
                continue;
            };
            let Some(rel) = rel.to_str() else {
                return false;
            };
            let rel = rel.replace(std::path::MAIN_SEPARATOR, "/");
            if rel.is_empty() {
                return false;
            }
            // A folder that vanished (moved away whole) held tasks.
            let prefix = format!("{rel}/");
            if meta.is_none()
                && self
                    .tasks
                    .iter()
                    .any(|t| t.folder == folder && t.rel.starts_with(&prefix))
            {
                return false;
            }
            // What the walk skips: hidden names, README.md, not `.md`.
            let name = rel.rsplit('/').next().unwrap_or(&rel);
            let listed = !rel.split('/').any(|c| c.starts_with('.'))
                && name.ends_with(".md")
                && !name.eq_ignore_ascii_case("README.md");
            if !listed {
                continue;
            }
            let shown = root.rel_path(folder, &rel);
            self.tasks
                .retain(|t| !(t.folder == folder && *t.rel == *rel));
            self.problems.retain(|p| p.path != shown);
            let Some(meta) = meta else { continue };
            let mut problems = Vec::new();
            if let Some(t) = read_task(
                root,
                folder,
                &rel,
                meta.file_type().is_symlink(),
                &mut buf,
                &mut problems,
            ) {
                // Read through the fallback (moved to done/ meanwhile):
                // that path's own event brings it.
                if t.folder == folder {
                    task_problems(root, &t, &mut problems);
                    self.tasks.push(t);
                }
            }
            self.problems.extend(problems);
        }
        self.order();
        !self.has_duplicates()
    }

    /// Sorts the tasks by folder and file, keeps one copy of a file read
    /// twice (a file moved from todo/ to done/ mid-scan can be, once through
    /// the fallback in `read_task`), and rebuilds the id index. Unstable: in
    /// place, where a stable sort allocates a buffer (8 MB at 100,000
    /// tasks); equal keys still end up side by side for `dedup_by`.
    fn order(&mut self) {
        self.tasks
            .sort_unstable_by(|a, b| (a.folder, &a.rel).cmp(&(b.folder, &b.rel)));
        self.tasks
            .dedup_by(|a, b| a.folder == b.folder && a.rel == b.rel);
        self.reindex();
    }

    fn has_duplicates(&self) -> bool {
        self.index
            .windows(2)
            .any(|w| self.tasks[w[0] as usize].id == self.tasks[w[1] as usize].id)
    }
}

/// Lists the `*.md` files of one folder (recursively), sorted by name.
fn list_folder(root: &Root, folder: Folder, out: &mut Vec<Entry>, problems: &mut Vec<Problem>) {
    let base = root.folder(folder);
    if !base.is_dir() {
        return;
    }
    // Unsorted: `scan` sorts the tasks once at the end.
    let walk = walkdir::WalkDir::new(&base)
        .min_depth(1)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| !e.file_name().to_string_lossy().starts_with('.'));
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().map_or_else(|| base.clone(), Path::to_path_buf);
                let rel = path.strip_prefix(&root.dir).unwrap_or(&path).to_path_buf();
                // A file that vanished mid-walk was moved or deleted: fine.
                if e.io_error()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                {
                    continue;
                }
                problems.push(Problem::new(rel, format!("cannot read: {e}")));
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy();
        if entry.file_type().is_dir()
            || !name.ends_with(".md")
            || name.eq_ignore_ascii_case("README.md")
        {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(&base) else {
            continue;
        };
        let Some(rel) = rel.to_str() else {
            problems.push(Problem::new(
                entry.path().strip_prefix(&root.dir).unwrap_or(entry.path()),
                "file name is not valid UTF-8; rename it",
            ));
            continue;
        };
        out.push(Entry {
            folder,
            rel: rel.replace(std::path::MAIN_SEPARATOR, "/"),
            symlink: entry.path_is_symlink(),
        });
    }
}

fn read_tasks(
    root: &Root,
    entries: &mut [Entry],
    out: &mut [Option<Task>],
    detail: Detail,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut buf = Vec::with_capacity(8192);
    for (entry, slot) in entries.iter_mut().zip(out.iter_mut()) {
        // The file name moves into the task; free the walk's copy now.
        let rel = std::mem::take(&mut entry.rel);
        *slot = read_task(
            root,
            entry.folder,
            &rel,
            entry.symlink,
            &mut buf,
            &mut problems,
        );
        if let Some(t) = slot.as_mut().filter(|t| match detail {
            Detail::Full => false,
            Detail::Lean => true,
            Detail::OpenFull { .. } => t.folder == Folder::Done,
        }) {
            t.title = None;
            t.created = None;
            t.lean = true;
            if t.folder == Folder::Done {
                t.extra = None;
                t.created = None;
                t.assigned = None;
                t.role = None;
                if detail != (Detail::OpenFull { tags: true }) {
                    t.tags = Box::new([]);
                }
            }
        }
    }
    problems
}

/// Reads one task's header. `None` (with a problem) when the file cannot be
/// a task at all, or silently when it vanished (moved by another process).
fn read_task(
    root: &Root,
    folder: Folder,
    rel: &str,
    symlink: bool,
    buf: &mut Vec<u8>,
    problems: &mut Vec<Problem>,
) -> Option<Task> {
    let shown = root.rel_path(folder, rel);
    if symlink {
        let target = fs::canonicalize(root.folder(folder).join(rel)).ok();
        let root_abs = fs::canonicalize(&root.dir).ok();
        let outside = match (&target, &root_abs) {
            (Some(t), Some(r)) => !t.starts_with(r),
            _ => true,
        };
        let what = if outside {
            "is a symbolic link pointing outside the root (or nowhere); ignored"
        } else {
            "is a symbolic link; ignored (taskq never writes through links)"
        };
        problems.push(Problem::new(&shown, what).hint("replace the link with the file itself"));
        return None;
    }
    let path = root.folder(folder).join(rel);
    // Never a plain open: a FIFO named `x.md` would block it forever.
    let (mut file, len, version) = match fsutil::open_regular_meta(&path, fsutil::Links::Refuse) {
        Ok(Some((f, m))) => (f, m.len(), fsutil::version(&m)),
        Ok(None) => {
            // Moved mid-scan? A task leaving todo/ shows up in done/.
            if folder == Folder::Todo {
                return read_task(root, Folder::Done, rel, false, buf, &mut Vec::new());
            }
            return None;
        }
        Err(e) if fsutil::is_not_regular(&e) => {
            problems.push(
                Problem::new(&shown, format!("{}; skipped", fsutil::reason(&e)))
                    .hint("a task is a regular markdown file; remove or rename this one"),
            );
            return None;
        }
        Err(e) => {
            problems.push(Problem::new(
                &shown,
                format!("cannot read: {}", fsutil::reason(&e)),
            ));
            return None;
        }
    };
    let layout = match frontmatter::read_header(&mut file, buf) {
        Ok(l) => l,
        Err(e) => {
            problems.push(Problem::new(&shown, format!("cannot read: {e}")));
            return None;
        }
    };
    let mut task = task_from_bytes(buf, layout, folder, rel, &shown, problems)?;
    task.version = version;
    // Changing a task means reading all of it: one too large to read whole
    // is held (never claimed, run or rewritten) rather than read.
    if len > fsutil::MAX_FILE && folder == Folder::Todo {
        problems.push(
            Problem::new(
                &shown,
                format!(
                    "the file is {}, more than taskq reads whole ({}); held",
                    fsutil::size_text(len),
                    fsutil::size_text(fsutil::MAX_FILE)
                ),
            )
            .hint("keep long text (logs, data) in another file and name it in the task"),
        );
        task.broken = true;
    }
    Some(task)
}

/// Builds a task from the bytes of (at least) its header.
pub fn task_from_bytes(
    bytes: &[u8],
    layout: Layout,
    folder: Folder,
    rel: &str,
    shown: &Path,
    problems: &mut Vec<Problem>,
) -> Option<Task> {
    let header: &[u8] = match layout {
        Layout::None { .. } => b"",
        Layout::Unterminated if bytes.len() >= frontmatter::MAX_HEADER => {
            problems.push(
                Problem::at(
                    shown,
                    1,
                    "frontmatter is longer than 256 KiB (or never ends)",
                )
                .hint("keep long text in the body, below the closing `---`"),
            );
            return None;
        }
        Layout::Unterminated => {
            problems.push(
                Problem::at(shown, 1, "frontmatter starts with `---` but never ends")
                    .hint("add a `---` line after the last `key: value` line"),
            );
            return None;
        }
        Layout::Header { start, end, .. } => &bytes[start..end],
    };
    // The whole file is in `bytes` when it is shorter than the first read.
    if matches!(layout, Layout::None { .. })
        && bytes.len() < 4096
        && bytes.iter().all(u8::is_ascii_whitespace)
    {
        problems.push(
            Problem::new(
                shown,
                "empty file: not a task until it has a title or a description",
            )
            .hint("write what should be done in it, or delete it"),
        );
        return None;
    }
    let header = match std::str::from_utf8(header) {
        Ok(h) => h,
        Err(e) => {
            let good = &header[..e.valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + Layout::FIRST_LINE;
            let col = good.len() - good.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1) + 1;
            problems
                .push(Problem::at(shown, line, "frontmatter is not valid UTF-8").column(Some(col)));
            return None;
        }
    };
    if let Some(line) = header.lines().position(|l| l.starts_with('\t')) {
        problems.push(
            Problem::at(
                shown,
                line + Layout::FIRST_LINE,
                "tab used for indentation; YAML allows only spaces",
            )
            .column(Some(1)),
        );
        return None;
    }
    let fields = match frontmatter::parse(header) {
        Ok(f) => f,
        Err(e) => {
            problems.push(
                Problem::at(
                    shown,
                    e.line + Layout::FIRST_LINE,
                    format!("invalid YAML: {}", e.message),
                )
                .column(e.column),
            );
            return None;
        }
    };
    Some(Task::from_fields(&fields, folder, rel, shown, problems))
}

/// The title to show: the header's `title`, else the body's first `# `
/// heading (outside code fences), else the file stem. Reads the body only
/// when the header has no title.
pub fn display_title(root: &Root, task: &Task) -> String {
    if let Some(t) = &task.title {
        return t.to_string();
    }
    if task.lean {
        if let Some(t) = header_title(&root.task_path(task)) {
            return t;
        }
    }
    heading_title(&root.task_path(task)).unwrap_or_else(|| task.title_or_stem().to_string())
}

/// The task with every field: `t` itself, or for a task a lean scan kept
/// in part, its file read again (`t` as it is if that fails: the file moved
/// or changed since the scan). For commands that print tasks one by one
/// from a lean scan, so the whole queue is never held in full.
pub fn full<'a>(root: &Root, t: &'a Task) -> std::borrow::Cow<'a, Task> {
    use std::borrow::Cow;
    if !t.lean {
        return Cow::Borrowed(t);
    }
    let mut buf = Vec::new();
    match read_task(root, t.folder, &t.rel, false, &mut buf, &mut Vec::new()) {
        Some(again) if again.id == t.id && again.folder == t.folder => Cow::Owned(again),
        _ => Cow::Borrowed(t),
    }
}

/// The `title:` of a task file's header (for tasks a lean scan kept
/// without it).
fn header_title(path: &Path) -> Option<String> {
    let mut file = fsutil::open_regular(path, fsutil::Links::Refuse).ok()??;
    let mut buf = Vec::new();
    let layout = frontmatter::read_header(&mut file, &mut buf).ok()?;
    let Layout::Header { start, end, .. } = layout else {
        return None;
    };
    let header = std::str::from_utf8(&buf[start..end]).ok()?;
    frontmatter::parse(header)
        .ok()?
        .into_iter()
        .find(|f| f.key == "title")
        .and_then(|f| match f.value {
            frontmatter::Value::Scalar(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            _ => None,
        })
}

/// The body's first `# ` heading, looked for in the first
/// [`HEADING_SCAN`] bytes of the file only.
fn heading_title(path: &Path) -> Option<String> {
    let capped = fsutil::read_capped(path, HEADING_SCAN).ok()??;
    let bytes = capped.bytes;
    let body = match frontmatter::split(&bytes, !capped.truncated)? {
        Layout::None { body } | Layout::Header { body, .. } => &bytes[body..],
        Layout::Unterminated => return None,
    };
    let text = String::from_utf8_lossy(body);
    let mut fence = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = !fence;
            continue;
        }
        if !fence {
            if let Some(h) = line.strip_prefix("# ") {
                let h = h.trim();
                if !h.is_empty() {
                    return Some(h.to_string());
                }
            }
        }
    }
    None
}

/// How far into a task file [`display_title`] looks for a `# ` heading.
pub const HEADING_SCAN: u64 = 64 * 1024;

/// How long a writing command waits for the queue lock before giving up
/// (exit 3). `TASKQ_LOCK_TIMEOUT` (seconds, up to `duration::MAX`)
/// overrides it.
pub fn lock_timeout() -> Duration {
    std::env::var("TASKQ_LOCK_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .and_then(crate::duration::seconds)
        .unwrap_or(Duration::from_secs(30))
}

/// The current time, as the queue sees it. `TASKQ_NOW` (RFC 3339) fixes it
/// for tests and demos.
pub fn now() -> Timestamp {
    std::env::var("TASKQ_NOW")
        .ok()
        .and_then(|s| task::parse_timestamp(&s))
        .unwrap_or_else(|| Local::now().fixed_offset())
}

/// A transition made by a writing command (for messages and, later, the
/// git trail).
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The task.
    pub id: String,
    /// Status before (None for a new task).
    pub from: Option<Status>,
    /// Status after.
    pub to: Status,
    /// What happened, in a few words (`claimed by BLD-001`, `lease expired`).
    pub note: String,
    /// The agent involved, for the `Agent:` trailer.
    pub agent: Option<String>,
    /// The cost recorded, for the `Cost-USD:` trailer.
    pub cost: Option<crate::money::Cost>,
}

impl Transition {
    /// What changed, without the id: `ready → running (claimed by BLD-002)`,
    /// `new → ready`; a change that keeps the status names it once
    /// (`review (review by TST-002 tester)`), and a word the note repeats
    /// back to back (a model named like its role) is said once.
    pub fn change(&self) -> String {
        let mut text = match self.from {
            None => format!("new → {}", self.to),
            Some(from) if from == self.to => self.to.to_string(),
            Some(from) => format!("{from} → {}", self.to),
        };
        if !self.note.is_empty() {
            let mut words: Vec<&str> = self.note.split(' ').collect();
            words.dedup_by(|a, b| !a.is_empty() && a == b);
            text.push_str(&format!(" ({})", words.join(" ")));
        }
        text
    }

    /// The commit-message line and trailers of this transition.
    pub fn entry(&self) -> crate::git::Entry {
        let mut trailers = vec![("Task".to_string(), self.id.clone())];
        if let Some(a) = &self.agent {
            trailers.push(("Agent".into(), a.clone()));
        }
        match self.cost {
            Some(crate::money::Cost::Known(c)) => {
                trailers.push(("Cost-USD".into(), c.decimal(4)));
            }
            Some(crate::money::Cost::Unknown) => {
                trailers.push(("Cost-USD".into(), "unknown".into()));
            }
            None => {}
        }
        crate::git::Entry {
            line: format!("{} {}", self.id, self.change()),
            trailers,
        }
    }
}

/// The queue, locked for writing. Dropping it releases the lock; its git
/// commit is an explicit call ([`Writer::commit_git`]), made before.
pub struct Writer {
    /// The root.
    pub root: Root,
    /// The queue as read under the lock (kept current by every change).
    pub scan: Scan,
    /// The time of this command.
    pub now: Timestamp,
    /// Every transition made so far.
    pub transitions: Vec<Transition>,
    /// Other things to say in the commit (approvals moved, ...).
    pub notes: Vec<crate::git::Entry>,
    /// Every file this writer changed since its last
    /// [`Writer::commit_git`].
    pub changed: std::collections::BTreeSet<PathBuf>,
    /// What [`Writer::commit_git`] does (the factory sets it).
    pub git_mode: GitMode,
    /// How every write of this writer reaches the disk (plain, unless the
    /// factory hands it its own: see [`Writer::with_disk`]).
    pub disk: fsutil::Disk,
    /// Tasks rewritten in a staged batch: their new versions are known once
    /// it is committed (see [`Writer::settle_versions`]).
    unsettled: Vec<Box<str>>,
    git: Option<crate::git::Git>,
    _lock: LockGuard,
}

/// What [`Writer::commit_git`] does with the writer's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GitMode {
    /// Commit them (with anything queued before).
    #[default]
    Commit,
    /// Queue them for the next commit.
    Defer,
    /// Commit, and commit what is queued even when this writer changed
    /// nothing.
    Flush,
}

impl Writer {
    /// Whether this writer's changes go to git.
    pub fn in_git(&self) -> bool {
        self.git.is_some()
    }
}

impl Writer {
    /// Commits what this writer changed since the last call, under the
    /// lock (when the root is in a git work tree and `git.autocommit` is
    /// not off), as [`Writer::git_mode`] says; then the writer has nothing
    /// left to commit. Every writer calls it before it is dropped, on
    /// success and after an error alike (what was written before the error
    /// is on disk and goes into git too). A git failure is a warning: the
    /// state is already safe in the files.
    pub fn commit_git(&mut self) {
        let changed = std::mem::take(&mut self.changed);
        let mode = std::mem::take(&mut self.git_mode);
        let mut entries: Vec<crate::git::Entry> =
            self.transitions.drain(..).map(|t| t.entry()).collect();
        entries.append(&mut self.notes);
        let Some(git) = &self.git else {
            return;
        };
        let nothing = changed.is_empty() || entries.is_empty();
        // Transitions a blocked commit left waiting land with the next
        // writer, even one that changed nothing.
        if nothing && mode != GitMode::Flush && !git.should_retry() {
            return;
        }
        if mode == GitMode::Defer {
            git.defer(&changed, &entries);
            return;
        }
        let (paths, entries) = if nothing {
            (std::collections::BTreeSet::new(), Vec::new())
        } else {
            (changed, entries)
        };
        if let Err(e) = git.commit(&paths, &entries) {
            tracing::warn!("git commit: {e}");
        }
    }

    /// The writer's [`fsutil::Disk`], back to its owner (the factory, after
    /// a step); releases the lock. Call [`Writer::commit_git`] first.
    pub fn into_disk(mut self) -> fsutil::Disk {
        std::mem::take(&mut self.disk)
    }
}

impl Drop for Writer {
    /// Releases the lock. Everything must have been committed to git
    /// ([`Writer::commit_git`]): a forgotten call fails the tests here.
    fn drop(&mut self) {
        debug_assert!(
            std::thread::panicking()
                || (self.changed.is_empty()
                    && self.transitions.is_empty()
                    && self.notes.is_empty()
                    && self.git_mode != GitMode::Flush),
            "a Writer was dropped with changes not committed to git: call Writer::commit_git"
        );
    }
}

/// The git work tree of a root, when autocommit applies (the work tree is
/// detected once per process and root; the config's `git.autocommit` is
/// read again only when the config file changed, which the factory, with a
/// writer per step, would otherwise parse each time).
fn git_for(root: &Root) -> Option<crate::git::Git> {
    use std::sync::{Mutex, OnceLock};
    struct Known {
        /// Detected when first needed.
        git: Option<Option<crate::git::Git>>,
        config: Option<fsutil::Stamp>,
        autocommit_off: bool,
        sign: Option<bool>,
    }
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Known>>> = OnceLock::new();
    let stamp = fsutil::stamp_of(&root.config_file());
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let known = cache.entry(root.dir.clone()).or_insert(Known {
        git: None,
        config: None,
        autocommit_off: false,
        sign: None,
    });
    if stamp.is_none() || known.config != stamp {
        let config = crate::config::Config::load(root).unwrap_or_default();
        known.autocommit_off = config.git.autocommit == Some(false);
        known.sign = config.git.sign;
        known.config = stamp;
    }
    if known.autocommit_off {
        return None;
    }
    known
        .git
        .get_or_insert_with(|| crate::git::Git::detect(&root.dir))
        .clone()
        .map(|git| git.signing(known.sign))
}

impl Writer {
    /// Takes the queue lock, reads the queue and repairs it (adopt id-less
    /// files, expire leases, finish interrupted moves). Writes plainly.
    pub fn open(root: &Root) -> Result<Writer> {
        Writer::with_disk(root, None, &mut fsutil::Disk::plain())
    }

    /// Takes the queue lock over a scan the caller already holds and knows
    /// to be current (the factory, between its own writes), skipping the
    /// re-read and the repairs. Writes plainly.
    pub fn with_scan(root: &Root, scan: Scan) -> Result<Writer> {
        Writer::with_disk(root, Some(scan), &mut fsutil::Disk::plain())
    }

    /// Takes the queue lock; writes through `disk` (the factory's: see
    /// [`fsutil::Disk::factory`]; get it back with [`Writer::into_disk`]).
    /// With `scan`, as [`Writer::with_scan`]; with `None`, reads the queue
    /// and repairs it as [`Writer::open`] does (what the repairs wrote
    /// before an error is committed to git all the same). The disk is taken
    /// only once the lock is held, and given back on an error: a factory
    /// that waits out a held lock keeps its spares and memory.
    pub fn with_disk(root: &Root, scan: Option<Scan>, disk: &mut fsutil::Disk) -> Result<Writer> {
        let lock = LockGuard::acquire(&root.queue_lock(), lock_timeout())?;
        let Some(scan) = scan else {
            let mut writer = Writer::locked(root, self::scan(root), lock, std::mem::take(disk));
            if let Err(e) = writer.repair() {
                writer.commit_git();
                *disk = std::mem::take(&mut writer.disk);
                return Err(e);
            }
            return Ok(writer);
        };
        Ok(Writer::locked(root, scan, lock, std::mem::take(disk)))
    }

    fn locked(root: &Root, scan: Scan, lock: LockGuard, disk: fsutil::Disk) -> Writer {
        Writer {
            root: root.clone(),
            scan,
            now: now(),
            transitions: Vec::new(),
            notes: Vec::new(),
            changed: std::collections::BTreeSet::new(),
            git_mode: GitMode::Commit,
            disk,
            unsettled: Vec::new(),
            git: git_for(root),
            _lock: lock,
        }
    }

    /// After a staged batch is committed: the versions of the task files it
    /// wrote, so the next write to each is a compare-and-swap against what
    /// this writer left (one `stat` per task written).
    pub fn settle_versions(&mut self) {
        for id in std::mem::take(&mut self.unsettled) {
            if let Some(i) = self.scan.position(&id) {
                let path = self.root.task_path(&self.scan.tasks[i]);
                self.scan.tasks[i].version = fsutil::version_of(&path).unwrap_or(0);
            }
        }
    }

    /// Reads again the task files that changed since this writer read them
    /// (their version differs), among `ids`: the factory's check before it
    /// acts on a task from its cached queue. Returns false when that is not
    /// enough (read the whole queue again): `Ok(true)` when some were read
    /// again, `Ok(false)` when none had changed, an [`Error::changed`] when
    /// only a full read will do.
    pub fn reread_if_changed(&mut self, ids: &[&str]) -> Result<bool> {
        let stale: Vec<PathBuf> = ids
            .iter()
            .filter_map(|id| self.scan.position(id))
            .map(|i| &self.scan.tasks[i])
            .filter(|t| t.version != 0)
            .map(|t| (self.root.task_path(t), t.version))
            .filter(|(p, v)| !self.disk.is_staged(p) && fsutil::version_of(p) != Some(*v))
            .map(|(p, _)| p)
            .collect();
        if stale.is_empty() {
            return Ok(false);
        }
        // A task that left todo/ is found in done/ by the refresh.
        let mut paths = stale.clone();
        for p in &stale {
            if let (Some(name), Some(parent)) = (p.file_name(), p.parent()) {
                if parent.ends_with("todo") {
                    paths.push(self.root.folder(Folder::Done).join(name));
                }
            }
        }
        match self.scan.refresh(&self.root, &paths) {
            true => Ok(true),
            false => Err(Error::changed(&stale[0], "it changed")),
        }
    }

    /// The repairs every writer makes when it reads the queue: adopts
    /// id-less files, returns expired leases, finishes a half-done move.
    pub fn repair(&mut self) -> Result<()> {
        // Adopt id-less files in todo/, oldest name first.
        let orphans: Vec<usize> = (0..self.scan.tasks.len())
            .filter(|&i| {
                let t = &self.scan.tasks[i];
                !t.has_id && !t.broken && t.folder == Folder::Todo
            })
            .collect();
        for i in orphans {
            let id = self.allocate_id()?;
            let status = self.scan.tasks[i].status;
            let mut changes = vec![Change::set("id", &id)];
            // Keep a valid status the person wrote; else it is ready.
            changes.push(Change::set("status", status.as_str()));
            if self.scan.tasks[i].created.is_none() {
                changes.push(Change::set("created", &task::format_timestamp(self.now)));
            }
            self.rewrite(i, &changes)?;
            self.transitions.push(Transition {
                id,
                from: None,
                to: status,
                note: format!("adopted {}", self.scan.tasks[i].rel),
                agent: None,
                cost: None,
            });
        }
        self.relink()?;
        // Expired leases go back to ready (not in a file too large to
        // change: that one is held, and its rewrite would fail every
        // writer).
        let expired: Vec<usize> = (0..self.scan.tasks.len())
            .filter(|&i| {
                let t = &self.scan.tasks[i];
                t.folder == Folder::Todo
                    && t.lease_expired(self.now)
                    && fsutil::stamp_of(&self.root.task_path(t))
                        .is_none_or(|(len, ..)| len <= fsutil::MAX_FILE)
            })
            .collect();
        for i in expired {
            let who = self.scan.tasks[i]
                .assigned
                .as_deref()
                .unwrap_or("nobody")
                .to_string();
            self.set(
                i,
                &[
                    Change::set("status", "ready"),
                    Change::remove("assigned"),
                    Change::remove("lease_expires"),
                    Change::remove("started"),
                ],
                Status::Ready,
                &format!("lease of {who} expired"),
            )?;
        }
        // A crash between "status: done" and the move leaves it in todo/.
        let unmoved: Vec<usize> = (0..self.scan.tasks.len())
            .filter(|&i| {
                let t = &self.scan.tasks[i];
                t.folder == Folder::Todo && t.status == Status::Done && t.has_id && !t.broken
            })
            .collect();
        for i in unmoved {
            self.move_to_done(i)?;
        }
        Ok(())
    }

    /// Rewrites dependencies written as task files (`setup-db.md`,
    /// `tasks/todo/setup-db.md`, or `setup-db`, the name an id-less file is
    /// listed under) to the ids those files have now, in the open tasks,
    /// changing only their `dependencies:` line.
    fn relink(&mut self) -> Result<()> {
        let scan = &self.scan;
        let unknown = |t: &Task| {
            t.folder == Folder::Todo
                && t.has_id
                && !t.broken
                && t.dependencies.iter().any(|d| scan.position(d).is_none())
        };
        if !scan.tasks.iter().any(unknown) {
            return Ok(());
        }
        let files = scan.files();
        let mut edits = Vec::new();
        for (i, t) in scan.tasks.iter().enumerate().filter(|(_, t)| unknown(t)) {
            let mut renamed = Vec::new();
            let deps: Vec<String> = t
                .dependencies
                .iter()
                .map(|d| {
                    let target = scan.position(d).is_none().then(|| files.find(d)).flatten();
                    match target.map(|j| &scan.tasks[j]) {
                        Some(dt) if dt.has_id && dt.id != t.id => {
                            renamed.push(format!("{d} → {}", dt.id));
                            dt.id.to_string()
                        }
                        _ => d.to_string(),
                    }
                })
                .collect();
            if !renamed.is_empty() {
                edits.push((i, deps, renamed));
            }
        }
        for (i, deps, renamed) in edits {
            let status = self.scan.tasks[i].status;
            self.set(
                i,
                &[Change::set_raw(
                    "dependencies",
                    frontmatter::yaml_list(&deps),
                )],
                status,
                &format!("dependencies: {}", renamed.join(", ")),
            )?;
        }
        Ok(())
    }

    /// Task `i`'s agent was stopped: back to ready (not a failed attempt),
    /// or cancelled when the stop asked for it.
    pub fn return_stopped(&mut self, i: usize, agent: &str, cancel: bool) -> Result<()> {
        if cancel {
            self.set(
                i,
                &[
                    Change::set("status", "cancelled"),
                    Change::set("reason", "stopped and cancelled"),
                ],
                Status::Cancelled,
                &format!("{agent} stopped"),
            )
        } else {
            self.set(
                i,
                &[
                    Change::set("status", "ready"),
                    Change::remove("assigned"),
                    Change::remove("started"),
                ],
                Status::Ready,
                &format!("{agent} stopped"),
            )
        }
    }

    /// Records a file changed outside the task files (registry, result,
    /// approval), so it goes into this writer's commit.
    pub fn touch(&mut self, path: impl Into<PathBuf>) {
        self.changed.insert(path.into());
    }

    /// Allocates the next task id: one more than the largest ever used.
    pub fn allocate_id(&mut self) -> Result<String> {
        let path = self.root.last_id_file();
        let stored = self
            .disk
            .read(&path)
            .ok()
            .and_then(|s| String::from_utf8_lossy(&s).trim().parse::<u64>().ok())
            .unwrap_or(0);
        let seen = self
            .scan
            .tasks
            .iter()
            .filter(|t| t.has_id && t.id.starts_with("TASK-"))
            .filter_map(|t| task::id_number(&t.id))
            .max()
            .unwrap_or(0);
        // Names under agents/results and approvals/ count too: a task
        // deleted with its id's counter set back leaves them behind.
        let mut left = 0;
        for dir in [
            self.root.dir.join("agents").join("results"),
            self.root.approvals("pending"),
            self.root.approvals("approved"),
            self.root.approvals("rejected"),
        ] {
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    let id = name.split('.').next().unwrap_or("");
                    if id.starts_with("TASK-") {
                        // `TASK-006-2` is a request of TASK-006.
                        let task_id = id.splitn(3, '-').take(2).collect::<Vec<_>>().join("-");
                        if let Some(n) = task::id_number(&task_id) {
                            left = left.max(n);
                        }
                    }
                }
            }
        }
        let next = stored
            .max(seen)
            .max(left)
            .checked_add(1)
            .filter(|n| *n < 10u64.pow(18))
            .ok_or_else(|| {
                Error::conflict(format!(
                    "the task id counter ({}) is exhausted",
                    path.display()
                ))
            })?;
        self.disk.write(&path, format!("{next}\n").as_bytes())?;
        self.changed.insert(path);
        Ok(task::format_id(next))
    }

    /// Applies header changes to task `i` and records the transition.
    pub fn set(&mut self, i: usize, changes: &[Change], to: Status, note: &str) -> Result<()> {
        let from = self.scan.tasks[i].status;
        self.rewrite(i, changes)?;
        self.transitions.push(Transition {
            id: self.scan.tasks[i].id.to_string(),
            from: Some(from),
            to,
            note: note.to_string(),
            agent: None,
            cost: None,
        });
        Ok(())
    }

    /// Rewrites task `i`'s file with `changes` (atomically) and reloads it.
    /// Refuses, changing nothing, if the result would not parse back.
    pub fn rewrite(&mut self, i: usize, changes: &[Change]) -> Result<()> {
        self.rewrite_appending(i, changes, None)
    }

    /// Like [`Writer::rewrite`], also appending `text` to the body (after a
    /// blank line) in the same atomic write.
    pub fn rewrite_appending(
        &mut self,
        i: usize,
        changes: &[Change],
        append: Option<&str>,
    ) -> Result<()> {
        let (folder, rel) = {
            let t = &self.scan.tasks[i];
            (t.folder, t.rel.to_string())
        };
        let path = self.root.folder(folder).join(&rel);
        let shown = self.root.rel_path(folder, &rel);
        // Compare and swap: the file must still be the version this task
        // was read from, now and when the new one takes its place (see
        // `Disk::write_if`). A write already staged in this batch carries
        // the expectation of the first one.
        let known = self.scan.tasks[i].version;
        let expected = (known != 0 && !self.disk.is_staged(&path)).then_some(known);
        if let Some(v) = expected {
            match fsutil::version_of(&path) {
                Some(now) if now == v => {}
                Some(_) => return Err(Error::changed(&shown, "it changed")),
                None => return Err(Error::changed(&shown, "it was moved or deleted")),
            }
        }
        let old = self.disk.read(&path)?;
        let mut new = frontmatter::edit(&old, changes).map_err(|e| {
            Error::from(Problem::new(
                &shown,
                match e {
                    frontmatter::EditError::Unterminated => "frontmatter never ends; not changed",
                    frontmatter::EditError::NotUtf8 => {
                        "frontmatter is not valid UTF-8; not changed"
                    }
                },
            ))
        })?;
        if let Some(text) = append {
            while new.ends_with(b"\n\n") {
                new.pop();
            }
            if !new.ends_with(b"\n") {
                new.push(b'\n');
            }
            new.push(b'\n');
            new.extend_from_slice(text.trim_end().as_bytes());
            new.push(b'\n');
        }
        let layout = frontmatter::split(&new, true).expect("complete");
        let mut problems = Vec::new();
        let Some(mut task) = task_from_bytes(&new, layout, folder, &rel, &shown, &mut problems)
        else {
            let why = problems
                .first()
                .map_or_else(String::new, |p| format!(": {}", p.message));
            return Err(Error::from(Problem::new(
                &shown,
                format!("the change would make the file unreadable{why}; not changed"),
            )));
        };
        self.disk
            .write_if(&path, &new, expected)
            .map_err(|e| match e.is_changed() {
                true => Error::changed(&shown, "it changed"),
                false => e,
            })?;
        // The new version: known now, or once a staged batch is committed
        // (see `Writer::settle_versions`).
        task.version = match self.disk.is_staged(&path) {
            true => {
                self.unsettled.push(task.id.clone());
                self.scan.tasks[i].version
            }
            false => fsutil::version_of(&path).unwrap_or(0),
        };
        self.changed.insert(path);
        let renamed = self.scan.tasks[i].id != task.id;
        self.scan.tasks[i] = task;
        if renamed {
            self.scan.reindex();
        }
        Ok(())
    }

    /// Moves task `i` from `todo/` to `done/` (a rename; a name already
    /// taken in `done/` gets the id appended).
    pub fn move_to_done(&mut self, i: usize) -> Result<()> {
        let t = &self.scan.tasks[i];
        if t.folder == Folder::Done {
            return Ok(());
        }
        let from = self.root.task_path(t);
        let done = self.root.folder(Folder::Done);
        let mut rel = t.rel.to_string();
        if self.disk.exists(&done.join(&rel)) {
            let stem = task::file_stem(&rel).to_string();
            let dir = rel
                .rsplit_once('/')
                .map(|(d, _)| format!("{d}/"))
                .unwrap_or_default();
            rel = format!("{dir}{stem}-{}.md", t.id);
        }
        self.disk.rename(&from, &done.join(&rel))?;
        self.changed.insert(from);
        self.changed.insert(done.join(&rel));
        let t = &mut self.scan.tasks[i];
        t.folder = Folder::Done;
        t.rel = rel.into();
        Ok(())
    }

    /// Writes a brand-new task file `tasks/todo/<name>` (never replacing an
    /// existing file) and adds it to the scan.
    pub fn create(&mut self, name: &str, content: &[u8]) -> Result<usize> {
        let dir = self.root.folder(Folder::Todo);
        let mut rel = name.to_string();
        let mut n = 2;
        while !self.disk.create_new(&dir.join(&rel), content)? {
            rel = format!("{}-{n}.md", name.trim_end_matches(".md"));
            n += 1;
        }
        self.changed.insert(dir.join(&rel));
        let shown = self.root.rel_path(Folder::Todo, &rel);
        let layout = frontmatter::split(content, true).expect("complete");
        let mut problems = Vec::new();
        let task = task_from_bytes(content, layout, Folder::Todo, &rel, &shown, &mut problems)
            .ok_or_else(|| Error::from(problems.remove(0)))?;
        self.scan.tasks.push(task);
        self.scan.reindex();
        Ok(self.scan.tasks.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        fs::create_dir_all(dir.path().join("tasks/done")).unwrap();
        fs::create_dir_all(dir.path().join("tasks/todo")).unwrap();
        let root = Root::new(dir.path());
        (dir, root)
    }

    /// What a scan holds, comparable: each task's place and header, and
    /// the problems as printed.
    fn summary(scan: &Scan) -> (Vec<String>, Vec<String>) {
        let mut tasks: Vec<String> = scan
            .tasks
            .iter()
            .map(|t| {
                format!(
                    "{:?} {} {} {} {} {} {:?} {:?} {:?} {:?}",
                    t.folder,
                    t.rel,
                    t.id,
                    t.has_id,
                    t.status,
                    t.broken,
                    t.dependencies,
                    t.tags,
                    t.priority,
                    t.title
                )
            })
            .collect();
        tasks.sort();
        let mut problems: Vec<String> = scan.problems.iter().map(ToString::to_string).collect();
        problems.sort();
        (tasks, problems)
    }

    /// After any mix of file changes, refreshing a scan with the changed
    /// paths gives what a full scan gives (or says it cannot).
    #[test]
    fn refresh_with_the_changed_paths_equals_a_full_scan() {
        let (d, root) = root_with(&[
            ("tasks/todo/a.md", "---\nid: TASK-001\n---\nbody"),
            (
                "tasks/todo/b.md",
                "---\nid: TASK-002\ndependencies: [TASK-001]\n---\n",
            ),
            ("tasks/done/c.md", "---\nid: TASK-003\nstatus: done\n---\n"),
        ]);
        let mut cached = scan(&root);
        let mut seed = 11u64;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize % n
        };
        let names = [
            "tasks/todo/a.md",
            "tasks/todo/b.md",
            "tasks/todo/sub/e.md",
            "tasks/done/c.md",
            "tasks/done/a.md",
            "tasks/todo/README.md",
            "tasks/todo/.swap.md",
            "tasks/todo/notes.txt",
        ];
        let contents = [
            "---\nid: TASK-010\nstatus: ready\n---\nx",
            "---\nid: TASK-011\nstatus: done\n---\n",
            "---\nid: TASK-012\ndependencies: [TASK-010]\npriority: high\n---\n",
            "# no header, no id\n",
            "---\nid: TASK-013\nstatus: bogus\n---\n",
            "---\nid: [not, a, string]\n---\n",
            "---\nunterminated\n",
        ];
        let (mut refreshed, mut fallbacks) = (0, 0);
        for round in 0..400 {
            let mut changed = Vec::new();
            for _ in 0..1 + next(3) {
                let name = names[next(names.len())];
                let path = d.path().join(name);
                match next(4) {
                    0 => {
                        let _ = fs::remove_file(&path);
                    }
                    1 => {
                        // A move within tasks/: both names change.
                        let to = d.path().join(names[next(names.len())]);
                        if path.exists() && fs::rename(&path, &to).is_ok() {
                            changed.push(to);
                        }
                    }
                    _ => {
                        fs::create_dir_all(path.parent().unwrap()).unwrap();
                        fs::write(&path, contents[next(contents.len())]).unwrap();
                    }
                }
                changed.push(path);
            }
            let full = scan(&root);
            if cached.refresh(&root, &changed) {
                refreshed += 1;
                assert_eq!(
                    summary(&cached),
                    summary(&full),
                    "round {round}: {changed:?}"
                );
            } else {
                fallbacks += 1;
                cached = full;
            }
        }
        assert!(refreshed > 100, "{refreshed} refreshed, {fallbacks} full");
    }

    #[test]
    fn scan_reads_tasks_and_collects_problems() {
        let (_d, root) = root_with(&[
            (
                "tasks/todo/a.md",
                "---\nid: TASK-001\nstatus: ready\n---\nbody",
            ),
            ("tasks/todo/b.md", "---\nid: TASK-001\n---\n"),
            ("tasks/todo/c.md", "# Heading title\n\ntext"),
            ("tasks/todo/README.md", "# not a task"),
            ("tasks/todo/.x.md.swp", "junk"),
            ("tasks/done/d.md", "---\nid: TASK-002\nstatus: ready\n---\n"),
        ]);
        let scan = scan(&root);
        assert_eq!(scan.tasks.len(), 4);
        assert!(scan.get("TASK-001").is_some());
        let msgs: Vec<String> = scan.problems.iter().map(ToString::to_string).collect();
        assert!(
            msgs.iter().any(|m| m.contains("duplicate id `TASK-001`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("in done/ but its status is `ready`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.contains("no `id` yet: listed as `c`")),
            "{msgs:?}"
        );
        let c = scan.get("c").unwrap();
        assert_eq!(display_title(&root, c), "Heading title");
    }

    #[test]
    fn a_change_says_each_thing_once() {
        let t = |from, to, note: &str| Transition {
            id: "TASK-3".into(),
            from,
            to,
            note: note.into(),
            agent: None,
            cost: None,
        };
        let review = t(Some(Status::Review), Status::Review, "assigned TST-002");
        assert_eq!(review.entry().line, "TASK-3 review (assigned TST-002)");
        let claim = t(
            Some(Status::Ready),
            Status::Running,
            "BLD-002 builder builder",
        );
        assert_eq!(claim.change(), "ready → running (BLD-002 builder)");
        assert_eq!(t(None, Status::Ready, "").change(), "new → ready");
    }

    #[test]
    fn writer_adopts_and_never_reuses_ids() {
        let (_d, root) = root_with(&[
            ("tasks/todo/a.md", "---\nid: TASK-007\n---\n"),
            ("tasks/todo/new.md", "Just text.\n"),
        ]);
        let mut w = Writer::open(&root).unwrap();
        assert_eq!(w.transitions.len(), 1);
        assert_eq!(w.transitions[0].id, "TASK-008");
        let text = fs::read_to_string(root.dir.join("tasks/todo/new.md")).unwrap();
        assert!(
            text.starts_with("---\nid: TASK-008\nstatus: ready\ncreated: "),
            "{text}"
        );
        assert!(text.ends_with("---\nJust text.\n"));
        let i = w.scan.resolve("8").unwrap();
        w.set(i, &[Change::set("status", "done")], Status::Done, "")
            .unwrap();
        w.move_to_done(i).unwrap();
        w.commit_git();
        drop(w);
        fs::remove_file(root.dir.join("tasks/done/new.md")).unwrap();
        let mut w = Writer::open(&root).unwrap();
        assert_eq!(w.allocate_id().unwrap(), "TASK-009");
        w.commit_git();
    }

    /// Dropping a writer commits nothing to git: a writer dropped with
    /// changes it never committed is a bug the tests catch.
    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "not committed to git")]
    fn a_writer_dropped_without_its_commit_fails_in_tests() {
        let (_d, root) = root_with(&[("tasks/todo/new.md", "Just text.\n")]);
        // Opening adopts the file: a change to commit.
        let w = Writer::open(&root).unwrap();
        assert_eq!(w.transitions.len(), 1);
        drop(w);
    }

    /// The writer's writes go through its own Disk: staged there, they are
    /// read back through it and land at its commit.
    #[test]
    fn a_writer_writes_through_the_disk_it_is_given() {
        let (_d, root) = root_with(&[("tasks/todo/a.md", "---\nid: TASK-001\n---\n")]);
        let mut disk = fsutil::Disk::plain();
        disk.stage();
        let mut w = Writer::with_disk(&root, None, &mut disk).unwrap();
        let i = w.scan.resolve("1").unwrap();
        w.set(i, &[Change::set("status", "hold")], Status::Hold, "")
            .unwrap();
        let path = root.dir.join("tasks/todo/a.md");
        assert!(!fs::read_to_string(&path).unwrap().contains("hold"));
        assert!(String::from_utf8(w.disk.read(&path).unwrap())
            .unwrap()
            .contains("status: hold"));
        w.disk.commit().unwrap();
        w.commit_git();
        let _disk = w.into_disk();
        assert!(fs::read_to_string(&path).unwrap().contains("status: hold"));
    }
}
