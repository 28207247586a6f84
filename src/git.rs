//! Git as the audit trail: every transition taskq makes is a commit of
//! exactly the paths taskq changed, and code agents work in worktrees.
//!
//! A commit never goes through the person's index: a pathspec commit
//! (`git add -- P; git commit -- P`) that failed, for want of a signature
//! or during a merge, left taskq's files staged there, to ride along in
//! the person's next commit (issue 13, item 7). The commit is built in a
//! private index, `<git-dir>/taskq-index`: HEAD's tree (kept from taskq's
//! last commit while HEAD has not moved), taskq's paths added or removed
//! (like `git add`, an untracked path that `.gitignore` ignores is left
//! out), `write-tree`, `commit-tree` (unsigned unless `git.sign`), then
//! `update-ref HEAD NEW OLD`, a compare-and-swap redone on the new HEAD if
//! HEAD moved. All that time taskq holds the person's `index.lock`, as
//! `git commit` would, so no commit of theirs starts from an index that
//! does not know taskq's commit; before letting go it sets their index
//! entries for taskq's paths, and no others, to what it committed (`git
//! reset NEW -- PATHS` on a copy of their index, renamed into place).
//! Their staged and unstaged changes stay as they were.
//!
//! Transitions wait, in order, in `<git-dir>/taskq-pending` while git is
//! busy (`index.lock` held past the retries), while a merge, rebase, am,
//! cherry-pick, revert or bisect is in progress (taskq's files stay out of
//! it), or when a commit cannot be made (a signer that fails, or would
//! prompt: git runs with no terminal, and a signing commit is killed after
//! 10 s, then not tried again for a minute). Each time says so in a
//! warning, and `taskq status` says how many wait and why. They land
//! together, one commit with all their lines in order, as soon as a commit
//! can be made: with taskq's next write once nothing blocks, even a
//! command or factory step that changed nothing. The state itself is
//! already safe in the files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};

/// How long a signing `git commit-tree` may take before taskq gives up on
/// it: a passphrase prompt that no one will answer.
const SIGN_TIMEOUT: Duration = Duration::from_secs(10);

/// After a signer hung, how long commits wait before the next attempt.
const SIGN_BACKOFF: Duration = Duration::from_secs(60);

const SIGN_TIMED_OUT: &str = "commit signing timed out";

const SIGN_HINT: &str = "make `git commit-tree -S` work here with no terminal (gpg-agent with the passphrase cached), or set `git: {sign: false}` in agents/factory/config.yaml";

/// A root inside a git work tree.
#[derive(Debug, Clone)]
pub struct Git {
    /// The work tree's top directory.
    pub top: PathBuf,
    /// The git directory (for the pending file and the private index).
    pub git_dir: PathBuf,
    /// Sign taskq's commits (config `git.sign`; off by default, so that a
    /// person's `commit.gpgsign` never stops the audit trail).
    pub sign: bool,
}

/// One transition, for the commit message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `TASK-006 ready → running (BLD-002 builder claude-sonnet-4-5)`.
    pub line: String,
    /// `Task: ...`, `Agent: ...`, `Cost-USD: ...` trailers.
    pub trailers: Vec<(String, String)>,
}

/// Transitions waiting for a commit (`taskq status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    /// How many.
    pub transitions: usize,
    /// Why: `merge in progress`, `commit signing failed`, `waiting for the
    /// next commit` (the factory batching short steps), ...
    pub reason: String,
}

/// The transitions queued in `<git-dir>/taskq-pending`, in order.
#[derive(Debug, Default)]
struct Pending {
    paths: BTreeSet<PathBuf>,
    entries: Vec<Entry>,
    /// Why they wait when a commit was stopped; none when the factory
    /// deferred them on purpose.
    reason: Option<String>,
    /// No new attempt before this time (seconds since the epoch): set
    /// when a signer hung, so that not every factory step waits for it.
    not_before: Option<u64>,
}

/// Why a commit cannot be made now.
enum Blocked {
    /// A merge, rebase, ... (the word).
    InProgress(&'static str),
    /// Someone else's `index.lock`, held past the retries.
    Busy,
    /// Git refused: a short reason for `status`, git's words, a hint.
    Failed {
        reason: String,
        detail: String,
        hint: String,
    },
}

impl Blocked {
    fn reason(&self) -> String {
        match self {
            Blocked::InProgress(op) => format!("{op} in progress"),
            Blocked::Busy => "git busy: index.lock held".into(),
            Blocked::Failed { reason, .. } => reason.clone(),
        }
    }

    fn failed(reason: &str, detail: impl Into<String>, hint: &str) -> Blocked {
        Blocked::Failed {
            reason: reason.into(),
            detail: detail.into(),
            hint: hint.into(),
        }
    }
}

impl Git {
    /// The work tree holding `dir`, if any (and git is installed).
    pub fn detect(dir: &Path) -> Option<Git> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "--show-toplevel", "--absolute-git-dir"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        Some(Git {
            top: PathBuf::from(lines.next()?),
            git_dir: PathBuf::from(lines.next()?),
            sign: false,
        })
    }

    /// The same, signing its commits when `sign` says so (config
    /// `git.sign`; unset means off).
    pub fn signing(mut self, sign: Option<bool>) -> Git {
        self.sign = sign.unwrap_or(false);
        self
    }

    /// A git command in the work tree: never a prompt (no terminal
    /// prompt, stdin empty), and the person's `GIT_INDEX_FILE`, if taskq
    /// runs inside a git hook, is not taskq's business.
    fn git(&self) -> Command {
        let mut c = Command::new("git");
        c.arg("-C")
            .arg(&self.top)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_INDEX_FILE")
            .stdin(Stdio::null());
        c
    }

    /// A git command on taskq's private index.
    fn private(&self) -> Command {
        let mut c = self.git();
        c.env("GIT_INDEX_FILE", self.git_dir.join("taskq-index"));
        c
    }

    /// Commits `paths` (absolute or relative to the top; deleted ones
    /// included), with a message built from `entries`, after whatever
    /// waits in the queue, without touching the person's index beyond
    /// those paths. When a commit cannot be made now (git busy, a merge in
    /// progress, signing failed), queues it all with the reason, warns,
    /// and returns Ok: nothing is lost, and the next commit lands it. An
    /// error means the queue itself could not be written.
    pub fn commit(&self, paths: &BTreeSet<PathBuf>, entries: &[Entry]) -> Result<()> {
        let mut queue = self.read_pending();
        queue.paths.extend(self.relative(paths));
        queue.entries.extend(entries.iter().cloned());
        if queue.paths.is_empty() || queue.entries.is_empty() {
            return Ok(());
        }
        let blocked = match (self.operation(), &queue.reason) {
            (Some(op), _) => Blocked::InProgress(op),
            (None, Some(reason)) if self.backing_off(&queue) => Blocked::failed(
                reason,
                format!(
                    "the signer hung last time; taskq tries it again {}s after that",
                    SIGN_BACKOFF.as_secs()
                ),
                SIGN_HINT,
            ),
            (None, _) => match self.land(&queue.paths, &message(&queue.entries)) {
                Ok(()) => {
                    self.clear_pending();
                    return Ok(());
                }
                Err(blocked) => {
                    if blocked.reason() == SIGN_TIMED_OUT {
                        queue.not_before = Some(now_secs() + SIGN_BACKOFF.as_secs());
                    }
                    blocked
                }
            },
        };
        queue.reason = Some(blocked.reason());
        self.save_pending(&queue)?;
        self.warn(&blocked, queue.entries.len());
        Ok(())
    }

    /// Queues `paths` and `entries` for the next commit instead of
    /// committing now (the factory, when its steps come faster than a
    /// commit is worth: see `Factory::step`). Kept in the same
    /// `<git-dir>/taskq-pending` as commits that could not be made, so a
    /// crash loses nothing: the next commit by any taskq takes them.
    pub fn defer(&self, paths: &BTreeSet<PathBuf>, entries: &[Entry]) {
        let mut queue = self.read_pending();
        queue.paths.extend(self.relative(paths));
        queue.entries.extend(entries.iter().cloned());
        if let Err(e) = self.save_pending(&queue) {
            tracing::warn!("git: {e}");
        }
    }

    /// True when transitions wait because a commit was stopped (not
    /// deferred on purpose) and no merge, rebase, ... is in progress now:
    /// a taskq command or factory step that changed nothing should still
    /// commit, to land them. A stat and a short read: no git process.
    pub fn should_retry(&self) -> bool {
        if !self.pending_path().exists() || self.git_dir.join("index.lock").exists() {
            return false;
        }
        let queue = self.read_pending();
        queue.reason.is_some() && !self.backing_off(&queue) && self.operation().is_none()
    }

    /// A signer hung a short while ago, and signing is still asked for.
    fn backing_off(&self, queue: &Pending) -> bool {
        self.sign && queue.not_before.is_some_and(|t| now_secs() < t)
    }

    /// What waits for a commit, and why (`taskq status`).
    pub fn waiting(&self) -> Option<Waiting> {
        let queue = self.read_pending();
        if queue.entries.is_empty() {
            return None;
        }
        let reason = match (self.operation(), queue.reason) {
            (Some(op), _) => format!("{op} in progress"),
            (None, Some(r)) if r.ends_with(" in progress") => format!(
                "{} over; taskq's next write commits them",
                r.trim_end_matches(" in progress")
            ),
            (None, Some(r)) => r,
            (None, None) => "waiting for the next commit".into(),
        };
        Some(Waiting {
            transitions: queue.entries.len(),
            reason,
        })
    }

    /// The git operation in progress in this work tree, if any: taskq's
    /// commits wait until it is over.
    pub fn operation(&self) -> Option<&'static str> {
        let has = |name: &str| self.git_dir.join(name).exists();
        if has("MERGE_HEAD") {
            Some("merge")
        } else if has("rebase-apply/applying") {
            Some("am")
        } else if has("rebase-merge") || has("rebase-apply") {
            Some("rebase")
        } else if has("CHERRY_PICK_HEAD") {
            Some("cherry-pick")
        } else if has("REVERT_HEAD") {
            Some("revert")
        } else if has("BISECT_LOG") {
            Some("bisect")
        } else {
            None
        }
    }

    fn relative<'a>(&'a self, paths: &'a BTreeSet<PathBuf>) -> impl Iterator<Item = PathBuf> + 'a {
        paths
            .iter()
            .map(|p| p.strip_prefix(&self.top).unwrap_or(p).to_path_buf())
    }

    /// Makes the commit of `paths` on HEAD, under the person's
    /// `index.lock`, and brings their index entries for `paths` up to it.
    fn land(&self, paths: &BTreeSet<PathBuf>, message: &str) -> std::result::Result<(), Blocked> {
        let lock = IndexLock::acquire(&self.git_dir)?;
        let failed = |e: Error| {
            Blocked::failed(
                "git failed",
                e.to_string(),
                "`git status` in the work tree may say why; taskq retries with its next change",
            )
        };
        // HEAD moves under a commit only by a ref update that takes no
        // index.lock (a script's update-ref): redone on the new HEAD.
        let mut attempts = 0;
        let commit = loop {
            attempts += 1;
            let head = self.head().map_err(failed)?;
            let tree = self.build_tree(head.as_deref(), paths).map_err(failed)?;
            let commit = self.commit_tree(&tree, head.as_deref(), message)?;
            match self.update_ref(&commit, head.as_deref(), message) {
                Ok(()) => break commit,
                Err(_) if attempts < 3 => {}
                Err(e) => return Err(failed(e)),
            }
        };
        let _ = std::fs::write(self.git_dir.join("taskq-index.head"), &commit);
        if let Err(e) = self.sync_index(&lock, &commit, paths) {
            // The commit is made; only the person's index lags behind it.
            drop(lock);
            let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            tracing::warn!(
                "git: committed, but could not update taskq's files in your index: {e}\n\
                 hint: `git reset -q -- {}` does it",
                shown.join(" ")
            );
        }
        Ok(())
    }

    /// HEAD's commit, or None on an unborn branch.
    fn head(&self) -> Result<Option<String>> {
        let out = self
            .git()
            .args(["rev-parse", "--verify", "--quiet", "HEAD"])
            .output()
            .map_err(|e| Error::io("git", e))?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.success(), id.is_empty()) {
            (true, false) => Ok(Some(id)),
            (false, true) if out.stderr.is_empty() => Ok(None),
            _ => Err(failure(&out)),
        }
    }

    /// The tree of `head` with `paths` as they are in the work tree,
    /// written from the private index.
    fn build_tree(&self, head: Option<&str>, paths: &BTreeSet<PathBuf>) -> Result<String> {
        let stamp = self.git_dir.join("taskq-index.head");
        let current = head.is_some_and(|h| {
            std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == h)
                && self.git_dir.join("taskq-index").exists()
        });
        // The stamp is written again only once the index matches a commit.
        let _ = std::fs::remove_file(&stamp);
        // Under the person's index.lock no other taskq is here: a lock on
        // the private index is left from a taskq that was killed.
        let _ = std::fs::remove_file(self.git_dir.join("taskq-index.lock"));
        if !current {
            output(
                self.private()
                    .arg("read-tree")
                    .arg(head.unwrap_or("--empty")),
            )?;
        }
        let existing: Vec<&PathBuf> = paths.iter().filter(|p| self.top.join(p).exists()).collect();
        let ignored: BTreeSet<PathBuf> = if existing.is_empty() {
            BTreeSet::new()
        } else {
            // Exit 1 when none is ignored; tracked paths never are.
            let out = with_input(
                self.private().args(["check-ignore", "-z", "--stdin"]),
                &nul_list(existing.iter().copied()),
            )?;
            if !out.status.success() && out.status.code() != Some(1) {
                return Err(failure(&out));
            }
            out.stdout
                .split(|b| *b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
                .collect()
        };
        let listed = nul_list(paths.iter().filter(|p| !ignored.contains(*p)));
        let out = with_input(
            self.private()
                .args(["update-index", "--add", "--remove", "-z", "--stdin"]),
            &listed,
        )?;
        if !out.status.success() {
            return Err(failure(&out));
        }
        output(self.private().arg("write-tree"))
    }

    /// `git commit-tree`: unsigned unless `git.sign`; as `taskq` when git
    /// has no identity; a signer that hangs (a prompt) is killed.
    fn commit_tree(
        &self,
        tree: &str,
        parent: Option<&str>,
        message: &str,
    ) -> std::result::Result<String, Blocked> {
        let file = self.git_dir.join("taskq-message");
        std::fs::write(&file, message).map_err(|e| {
            Blocked::failed(
                "could not write the commit message",
                format!("{}: {e}", file.display()),
                "check the space and permissions of the git directory",
            )
        })?;
        let make = |anonymous: bool| {
            let mut c = self.git();
            if anonymous {
                c.args(["-c", "user.name=taskq", "-c", "user.email=taskq@localhost"]);
            }
            c.args(["commit-tree", tree]);
            if let Some(p) = parent {
                c.args(["-p", p]);
            }
            c.arg("-F").arg(&file);
            c.arg(if self.sign { "-S" } else { "--no-gpg-sign" });
            if self.sign {
                // gpg would otherwise find the terminal through GPG_TTY.
                c.env_remove("GPG_TTY");
                output_within(&mut c, SIGN_TIMEOUT)
            } else {
                c.output().map(Some)
            }
        };
        let mut out = make(false);
        if let Ok(Some(o)) = &out {
            let err = String::from_utf8_lossy(&o.stderr);
            // No identity configured: commit as taskq rather than not at all.
            if !o.status.success() && (err.contains("tell me who you are") || err.contains("ident"))
            {
                out = make(true);
            }
        }
        let out = match out {
            Ok(Some(o)) => o,
            Ok(None) => {
                return Err(Blocked::failed(
                    SIGN_TIMED_OUT,
                    format!(
                        "`git commit-tree -S` took more than {}s (a passphrase prompt?)",
                        SIGN_TIMEOUT.as_secs()
                    ),
                    SIGN_HINT,
                ))
            }
            Err(e) => {
                return Err(Blocked::failed(
                    "git failed",
                    e.to_string(),
                    "is git installed?",
                ))
            }
        };
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !id.is_empty() {
            let _ = std::fs::remove_file(&file);
            return Ok(id);
        }
        let detail = failure(&out).to_string();
        Err(if self.sign {
            Blocked::failed("commit signing failed", detail, SIGN_HINT)
        } else {
            Blocked::failed(
                "git commit-tree failed",
                detail,
                "`git fsck` may say why; taskq retries with its next change",
            )
        })
    }

    /// `git update-ref HEAD NEW OLD`: fails if HEAD moved meanwhile.
    fn update_ref(&self, commit: &str, old: Option<&str>, message: &str) -> Result<()> {
        let zero = "0".repeat(commit.len());
        let subject = message.lines().next().unwrap_or("taskq");
        output(self.git().args([
            "update-ref",
            "-m",
            &format!("commit: {subject}"),
            "HEAD",
            commit,
            old.unwrap_or(&zero),
        ]))
        .map(|_| ())
    }

    /// Sets the person's index entries for `paths` to `commit`'s, leaving
    /// every other entry as it was: `git reset COMMIT -- PATHS` on a copy
    /// of their index (with its time, which git's racy-entry check reads),
    /// renamed into place while taskq holds `index.lock`. The reset also
    /// refreshes the copy's stat data, so `git diff-files` sees taskq's
    /// files clean without a `git status` first.
    fn sync_index(&self, _lock: &IndexLock, commit: &str, paths: &BTreeSet<PathBuf>) -> Result<()> {
        let index = self.git_dir.join("index");
        let next = self.git_dir.join("taskq-index.next");
        let _ = std::fs::remove_file(self.git_dir.join("taskq-index.next.lock"));
        match std::fs::copy(&index, &next) {
            Ok(_) => {
                let modified = std::fs::metadata(&index).and_then(|m| m.modified());
                if let Ok(t) = modified {
                    std::fs::File::options()
                        .write(true)
                        .open(&next)
                        .and_then(|f| f.set_modified(t))
                        .map_err(|e| Error::io(&next, e))?;
                }
            }
            // No index yet (a new repository): it starts with taskq's.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_file(&next);
            }
            Err(e) => return Err(Error::io(&index, e)),
        }
        // Paths, not patterns: a `[` in a file name matches itself.
        let mut reset = self.git();
        reset
            .env("GIT_INDEX_FILE", &next)
            .env("GIT_LITERAL_PATHSPECS", "1")
            .args([
                "reset",
                "--pathspec-from-file=-",
                "--pathspec-file-nul",
                commit,
            ]);
        let out = with_input(&mut reset, &nul_list(paths.iter()))?;
        // 1 is "unstaged changes after reset": the person's own.
        if !out.status.success() && out.status.code() != Some(1) {
            return Err(failure(&out));
        }
        std::fs::rename(&next, &index).map_err(|e| Error::io(&index, e))
    }

    fn warn(&self, blocked: &Blocked, waiting: usize) {
        let pending = self.pending_path();
        let pending = pending.strip_prefix(&self.top).unwrap_or(&pending);
        let what = crate::output::count(waiting, "transition");
        let (text, hint) = match blocked {
            Blocked::InProgress(op) => (
                format!(
                    "git: a {op} is in progress: {what} waiting in `{}`, kept out of your index and of the {op}",
                    pending.display()
                ),
                format!("taskq's first write after the {op} commits them; `taskq status` counts them"),
            ),
            Blocked::Busy => (
                format!(
                    "git: busy (`index.lock` held): {what} waiting in `{}`",
                    pending.display()
                ),
                "taskq's next write commits them; if no git command is running, remove the stale `.git/index.lock`".to_string(),
            ),
            Blocked::Failed {
                reason,
                detail,
                hint,
            } => (
                format!(
                    "git: {reason}: {what} waiting in `{}`: {detail}",
                    pending.display()
                ),
                hint.clone(),
            ),
        };
        // Once per process and reason: a factory in a long merge would
        // otherwise say it at every step.
        use std::sync::{Mutex, OnceLock};
        static SAID: OnceLock<Mutex<BTreeSet<String>>> = OnceLock::new();
        let said = SAID.get_or_init(Default::default);
        let fresh = said
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(blocked.reason());
        if fresh {
            tracing::warn!("{text}\nhint: {hint}");
        }
    }

    fn pending_path(&self) -> PathBuf {
        self.git_dir.join("taskq-pending")
    }

    fn clear_pending(&self) {
        let _ = std::fs::remove_file(self.pending_path());
    }

    fn read_pending(&self) -> Pending {
        let Ok(text) = std::fs::read_to_string(self.pending_path()) else {
            return Pending::default();
        };
        let mut queue = Pending::default();
        for line in text.lines() {
            if let Some(r) = line.strip_prefix("reason ") {
                queue.reason = Some(r.to_string());
            } else if let Some(t) = line.strip_prefix("not-before ") {
                queue.not_before = t.parse().ok();
            } else if let Some(p) = line.strip_prefix("path ") {
                queue.paths.insert(PathBuf::from(p));
            } else if let Some(l) = line.strip_prefix("line ") {
                queue.entries.push(Entry {
                    line: l.to_string(),
                    trailers: Vec::new(),
                });
            } else if let Some(t) = line.strip_prefix("trailer ") {
                if let (Some(e), Some((k, v))) = (queue.entries.last_mut(), t.split_once(": ")) {
                    e.trailers.push((k.to_string(), v.to_string()));
                }
            }
        }
        queue
    }

    fn save_pending(&self, queue: &Pending) -> Result<()> {
        let mut text = String::new();
        if let Some(r) = &queue.reason {
            text.push_str(&format!("reason {}\n", r.replace('\n', " ")));
        }
        if let Some(t) = queue.not_before {
            text.push_str(&format!("not-before {t}\n"));
        }
        for p in &queue.paths {
            text.push_str(&format!("path {}\n", p.display()));
        }
        for e in &queue.entries {
            text.push_str(&format!("line {}\n", e.line));
            for (k, v) in &e.trailers {
                text.push_str(&format!("trailer {k}: {v}\n"));
            }
        }
        crate::fsutil::write_atomic(&self.pending_path(), text.as_bytes())
    }

    /// `git worktree add DIR -b BRANCH BASE`.
    pub fn worktree_add(&self, dir: &Path, branch: &str, base: &str) -> Result<()> {
        check_base(base).map_err(Error::usage)?;
        // After `--`: a `base:` of `--no-checkout` is a ref git refuses,
        // never an option.
        run(self
            .git()
            .args(["worktree", "add", "--quiet", "-b", branch, "--"])
            .arg(dir)
            .arg(base))
    }

    /// Commits everything left in worktree `dir` to its branch (the
    /// agent's uncommitted work); no-op when it is clean.
    ///
    /// Unsigned, never prompting: a person's `commit.gpgsign` with no
    /// signer at hand must not lose the agent's work (`git.sign` is not
    /// passed down to here yet).
    /// `exclude`: paths relative to `dir` left out (the agent's HOME and
    /// temp dirs, when a role put them in its worktree).
    pub fn commit_all(dir: &Path, message: &str, exclude: &[String]) -> Result<bool> {
        let git = |args: &[&str]| {
            let mut c = Command::new("git");
            c.arg("-C")
                .arg(dir)
                .args(["-c", "commit.gpgsign=false"])
                .args(args)
                .env("GIT_TERMINAL_PROMPT", "0")
                .stdin(Stdio::null());
            c
        };
        let mut add = vec!["add".to_string(), "-A".into(), "--".into(), ".".into()];
        add.extend(exclude.iter().map(|p| format!(":(exclude,literal){p}")));
        let add: Vec<&str> = add.iter().map(String::as_str).collect();
        run(&mut git(&add))?;
        let clean = git(&["diff", "--cached", "--quiet"])
            .status()
            .is_ok_and(|s| s.success());
        if clean {
            return Ok(false);
        }
        run(&mut git(&[
            "commit",
            "--quiet",
            "--no-verify",
            "-m",
            message,
        ]))
        .or_else(|_| {
            run(&mut git(&[
                "-c",
                "user.name=taskq",
                "-c",
                "user.email=taskq@localhost",
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                message,
            ]))
        })?;
        Ok(true)
    }

    /// Removes a worktree (its branch stays).
    pub fn worktree_remove(&self, dir: &Path) -> Result<()> {
        run(self.git().args(["worktree", "remove", "--force"]).arg(dir))?;
        let _ = run(self.git().args(["worktree", "prune"]));
        Ok(())
    }

    /// True when `branch` exists.
    pub fn has_branch(&self, branch: &str) -> bool {
        self.git()
            .args([
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The commits, newest first, that touch `paths` (pathspecs, relative
    /// to the top or absolute; one path with `follow` follows its renames),
    /// or whose message matches `grep`; each with the files it changed
    /// among `paths`.
    pub fn log(&self, paths: &[PathBuf], follow: bool, grep: Option<&str>) -> Result<Vec<Commit>> {
        let mut c = self.git();
        c.args([
            "log",
            "--date=iso-strict",
            "--format=%x1e%h%x1f%ad%x1f%an%x1f%s%x1f%b%x1f",
        ]);
        if let Some(g) = grep {
            c.arg(format!("--grep={g}"));
        }
        if !paths.is_empty() {
            c.arg("--name-status");
            if follow {
                c.arg("--follow");
            }
            c.arg("--").args(paths);
        }
        let out = c.output().map_err(|e| Error::io("git", e))?;
        if !out.status.success() {
            return Err(Error::usage(format!(
                "git log failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .split('\u{1e}')
            .filter_map(|rec| {
                let mut f = rec.splitn(6, '\u{1f}');
                let hash = f.next()?.trim().to_string();
                let (date, author, subject) = (f.next()?, f.next()?, f.next()?);
                let body = f.next().unwrap_or("").trim().to_string();
                let files = f
                    .next()
                    .unwrap_or("")
                    .lines()
                    .filter_map(|l| {
                        let mut parts = l.split('\t');
                        let status = parts.next()?.chars().next()?;
                        let first = parts.next()?.to_string();
                        Some(match parts.next() {
                            Some(to) => FileChange {
                                status,
                                path: to.to_string(),
                                from: Some(first),
                            },
                            None => FileChange {
                                status,
                                path: first,
                                from: None,
                            },
                        })
                    })
                    .collect();
                Some(Commit {
                    hash,
                    date: date.to_string(),
                    author: author.to_string(),
                    subject: subject.to_string(),
                    body,
                    files,
                })
            })
            .filter(|c| !c.hash.is_empty())
            .collect())
    }

    /// `user.name` as git would use it for a commit in `dir` (the repo's,
    /// else the global one).
    pub fn user_name(dir: &Path) -> Option<String> {
        Git::config_value(dir, "user.name")
    }

    /// git's `user.email` for `dir`, if set.
    pub fn user_email(dir: &Path) -> Option<String> {
        Git::config_value(dir, "user.email")
    }

    fn config_value(dir: &Path, key: &str) -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["config", key])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !name.is_empty()).then_some(name)
    }
}

/// One commit of [`Git::log`].
#[derive(Debug, Clone)]
pub struct Commit {
    /// The short hash.
    pub hash: String,
    /// The author date, RFC 3339.
    pub date: String,
    /// The author's name.
    pub author: String,
    /// The subject line.
    pub subject: String,
    /// The rest of the message, trimmed.
    pub body: String,
    /// The files it changed among the paths asked for.
    pub files: Vec<FileChange>,
}

/// One file a commit changed (`git log --name-status`).
#[derive(Debug, Clone)]
pub struct FileChange {
    /// `A`dded, `M`odified, `D`eleted, `R`enamed, `C`opied.
    pub status: char,
    /// The path, relative to the top (the new one for a rename).
    pub path: String,
    /// The old path of a rename or copy.
    pub from: Option<String>,
}

/// The commit message: one transition → its line as the subject; several
/// → a count in the subject and one line each in the body. Trailers last.
pub fn message(entries: &[Entry]) -> String {
    let mut msg = match entries {
        [one] => format!("taskq: {}\n", one.line),
        many => {
            let mut ids: Vec<&str> = many
                .iter()
                .filter_map(|e| e.line.split_whitespace().next())
                .collect();
            ids.dedup();
            let shown: Vec<&str> = ids.iter().take(4).copied().collect();
            let more = if ids.len() > 4 {
                format!(", +{}", ids.len() - 4)
            } else {
                String::new()
            };
            let mut m = format!(
                "taskq: {} transitions ({}{more})\n\n",
                many.len(),
                shown.join(", ")
            );
            for e in many {
                m.push_str(&format!("- {}\n", e.line));
            }
            m
        }
    };
    let mut trailers: Vec<(String, String)> = Vec::new();
    for e in entries {
        for t in &e.trailers {
            if !trailers.contains(t) {
                trailers.push(t.clone());
            }
        }
    }
    if !trailers.is_empty() {
        msg.push('\n');
        for (k, v) in trailers {
            msg.push_str(&format!("{k}: {v}\n"));
        }
    }
    msg
}

/// The person's `index.lock`, taken as git takes it (created exclusively;
/// removed when dropped), so that none of their git commands writes the
/// index or HEAD while taskq commits.
struct IndexLock {
    path: PathBuf,
}

impl IndexLock {
    /// Retries with backoff for about 3 s while someone else holds it.
    fn acquire(git_dir: &Path) -> std::result::Result<IndexLock, Blocked> {
        let path = git_dir.join("index.lock");
        let mut pause = Duration::from_millis(50);
        for attempt in 0..8 {
            match std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(IndexLock { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if attempt < 7 {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(800));
                    }
                }
                Err(e) => {
                    return Err(Blocked::failed(
                        "could not lock the index",
                        format!("{}: {e}", path.display()),
                        "check the permissions of the git directory",
                    ))
                }
            }
        }
        Err(Blocked::Busy)
    }
}

impl Drop for IndexLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Paths for a `-z --stdin` git command.
fn nul_list<'a>(paths: impl Iterator<Item = &'a PathBuf>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for p in paths {
        bytes.extend_from_slice(p.as_os_str().as_encoded_bytes());
        bytes.push(0);
    }
    bytes
}

/// Runs `cmd` with `input` on its stdin.
fn with_input(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("git", e))?;
    // Git reads all of its input before it writes much: no deadlock.
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(|e| Error::io("git", e))?;
    }
    child.wait_with_output().map_err(|e| Error::io("git", e))
}

/// Runs `cmd`; its stdout, trimmed, when it succeeds.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| Error::io("git", e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(failure(&out))
    }
}

/// A failed git command as an error: its words.
fn failure(out: &Output) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Error::usage(format!("git: {}", words.join("; ")))
}

/// Runs `cmd` to its end, or kills it after `limit` (None). It leads a
/// session of its own: with no controlling terminal, a program that would
/// prompt on `/dev/tty` (ssh-keygen for a passphrase) fails at once, and
/// killing the session's group takes its children (gpg) with it.
fn output_within(cmd: &mut Command, limit: Duration) -> std::io::Result<Option<Output>> {
    use std::os::unix::process::CommandExt as _;
    use std::sync::mpsc;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and
    // calls only setsid, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id();
    let (done, ended) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let late = ended.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout);
        if late {
            crate::spawn::signal_group(pid, libc::SIGKILL);
        }
        late
    });
    let out = child.wait_with_output();
    drop(done);
    let late = watchdog.join().unwrap_or(false);
    let out = out?;
    Ok((!late).then_some(out))
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdout(Stdio::null())
        .output()
        .map_err(|e| Error::io("git", e))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        Err(Error::usage(format!(
            "git: {}{}",
            stderr.trim(),
            stdout.trim()
        )))
    }
}

/// Checks a `base:` (a branch, tag, commit or `HEAD~2`) before it reaches
/// git: not empty, no leading `-` (it would read as an option), no
/// whitespace or control characters, no `..` range, at most 256 bytes.
pub fn check_base(base: &str) -> std::result::Result<(), String> {
    let why = if base.is_empty() {
        "is empty"
    } else if base.starts_with('-') {
        "starts with `-`"
    } else if base.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains whitespace or control characters"
    } else if base.contains("..") {
        "is a range (`..`), not one commit"
    } else if base.len() > 256 {
        "is longer than 256 bytes"
    } else {
        return Ok(());
    };
    Err(format!(
        "base `{}` {why}: it must name one commit (a branch, tag, hash or `HEAD~N`)",
        base.chars().take(80).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_each_transition_and_carry_trailers() {
        let e = |l: &str, t: &[(&str, &str)]| Entry {
            line: l.into(),
            trailers: t
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let one = message(&[e(
            "TASK-006 ready → running (BLD-002 builder m)",
            &[("Task", "TASK-006"), ("Agent", "BLD-002")],
        )]);
        assert_eq!(one, "taskq: TASK-006 ready → running (BLD-002 builder m)\n\nTask: TASK-006\nAgent: BLD-002\n");
        let many = message(&[
            e("TASK-1 new → ready", &[("Task", "TASK-1")]),
            e("TASK-2 new → ready", &[("Task", "TASK-2")]),
        ]);
        assert!(many.starts_with("taskq: 2 transitions (TASK-1, TASK-2)\n\n- TASK-1 new → ready\n- TASK-2 new → ready\n\nTask: TASK-1\nTask: TASK-2\n"), "{many}");
    }
}
