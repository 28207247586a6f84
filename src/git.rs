//! Git as the audit trail: every transition taskq makes is a commit of
//! exactly the paths taskq changed, and code agents work in worktrees.
//!
//! Commits are pathspec commits (`git add -- P...` then `git commit --
//! P...`): the user's own staged and unstaged changes are never included,
//! reset or stashed. When git is busy (`index.lock` held by the user's own
//! git command) taskq retries with backoff; if it is still busy, the paths
//! and messages wait in `<git-dir>/taskq-pending` and go into the next
//! commit. The state itself is already safe in the files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::fsutil::Disk;

/// A root inside a git work tree.
#[derive(Debug, Clone)]
pub struct Git {
    /// The work tree's top directory.
    pub top: PathBuf,
    /// The git directory (for the pending file).
    pub git_dir: PathBuf,
}

/// One transition, for the commit message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `TASK-006 ready → running (BLD-002 builder claude-sonnet-4-5)`.
    pub line: String,
    /// `Task: ...`, `Agent: ...`, `Cost-USD: ...` trailers.
    pub trailers: Vec<(String, String)>,
}

impl Git {
    /// The work tree holding `dir`, if any (and git is installed).
    pub fn detect(dir: &Path) -> Option<Git> {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "--show-toplevel", "--absolute-git-dir"])
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
        })
    }

    fn git(&self) -> Command {
        let mut c = Command::new("git");
        c.arg("-C").arg(&self.top).stdin(Stdio::null());
        c
    }

    /// Commits `paths` (absolute or relative to the top; deleted ones
    /// included) with a message built from `entries`. Retries while the
    /// index is locked; if it stays locked, queues everything for the next
    /// commit and returns Ok (nothing is lost). The pending file is written
    /// through `disk` (the writer's).
    pub fn commit(
        &self,
        disk: &mut Disk,
        paths: &BTreeSet<PathBuf>,
        entries: &[Entry],
    ) -> Result<()> {
        let pending = self.take_pending();
        let mut all: BTreeSet<PathBuf> = pending.0;
        all.extend(
            paths
                .iter()
                .map(|p| p.strip_prefix(&self.top).unwrap_or(p).to_path_buf()),
        );
        let mut entries_all = pending.1;
        entries_all.extend(entries.iter().cloned());
        if all.is_empty() || entries_all.is_empty() {
            return Ok(());
        }
        let message = message(&entries_all);
        let mut pause = Duration::from_millis(50);
        for attempt in 0..8 {
            match self.try_commit(&all, &message) {
                Ok(()) => return Ok(()),
                Err(e) if e.to_string().contains("index.lock") && attempt < 7 => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(800));
                }
                Err(e) if e.to_string().contains("index.lock") => break,
                Err(e) => {
                    self.save_pending(disk, &all, &entries_all);
                    return Err(e);
                }
            }
        }
        tracing::warn!("git is busy (index.lock); the transition is queued for the next commit");
        self.save_pending(disk, &all, &entries_all);
        Ok(())
    }

    fn try_commit(&self, paths: &BTreeSet<PathBuf>, message: &str) -> Result<()> {
        // Paths that exist are added; vanished ones are committed as
        // deletions only when git knows them.
        let existing: Vec<&PathBuf> = paths.iter().filter(|p| self.top.join(p).exists()).collect();
        let gone: Vec<&PathBuf> = paths
            .iter()
            .filter(|p| !self.top.join(p).exists())
            .collect();
        let tracked_gone: Vec<&PathBuf> = if gone.is_empty() {
            Vec::new()
        } else {
            let out = self
                .git()
                .arg("ls-files")
                .arg("--")
                .args(&gone)
                .output()
                .map_err(|e| Error::io("git", e))?;
            let known: BTreeSet<PathBuf> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(PathBuf::from)
                .collect();
            gone.into_iter().filter(|p| known.contains(*p)).collect()
        };
        if !existing.is_empty() {
            run(self.git().args(["add", "--"]).args(&existing))?;
        }
        let mut commit = self.git();
        commit
            .args(["commit", "--quiet", "--no-verify", "-m", message, "--"])
            .args(&existing)
            .args(&tracked_gone);
        if existing.is_empty() && tracked_gone.is_empty() {
            return Ok(());
        }
        let result = run(&mut commit).or_else(|e| {
            // No identity configured: commit as taskq rather than not at all.
            if e.to_string().contains("tell me who you are") || e.to_string().contains("ident") {
                let mut again = self.git();
                again
                    .args(["-c", "user.name=taskq", "-c", "user.email=taskq@localhost"])
                    .args(["commit", "--quiet", "--no-verify", "-m", message, "--"])
                    .args(&existing)
                    .args(&tracked_gone);
                run(&mut again)
            } else {
                Err(e)
            }
        });
        match result {
            Ok(()) => Ok(()),
            // Nothing changed in those paths (already committed): fine.
            Err(e)
                if e.to_string().contains("nothing to commit")
                    || e.to_string().contains("no changes added") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Queues `paths` and `entries` for the next commit instead of
    /// committing now (the factory, when its steps come faster than a
    /// commit is worth: see `Factory::step`). Kept in the same
    /// `<git-dir>/taskq-pending` as commits git was too busy for, so a
    /// crash loses nothing: the next commit by any taskq takes them.
    pub fn defer(&self, disk: &mut Disk, paths: &BTreeSet<PathBuf>, entries: &[Entry]) {
        let (mut all, mut entries_all) = self.read_pending();
        all.extend(
            paths
                .iter()
                .map(|p| p.strip_prefix(&self.top).unwrap_or(p).to_path_buf()),
        );
        entries_all.extend(entries.iter().cloned());
        self.save_pending(disk, &all, &entries_all);
    }

    fn pending_path(&self) -> PathBuf {
        self.git_dir.join("taskq-pending")
    }

    fn take_pending(&self) -> (BTreeSet<PathBuf>, Vec<Entry>) {
        let pending = self.read_pending();
        if !pending.1.is_empty() || !pending.0.is_empty() {
            let _ = std::fs::remove_file(self.pending_path());
        }
        pending
    }

    fn read_pending(&self) -> (BTreeSet<PathBuf>, Vec<Entry>) {
        let path = self.pending_path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Default::default();
        };
        let mut paths = BTreeSet::new();
        let mut entries = Vec::new();
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("path ") {
                paths.insert(PathBuf::from(p));
            } else if let Some(l) = line.strip_prefix("line ") {
                entries.push(Entry {
                    line: l.to_string(),
                    trailers: Vec::new(),
                });
            } else if let Some(t) = line.strip_prefix("trailer ") {
                if let (Some(e), Some((k, v))) = (entries.last_mut(), t.split_once(": ")) {
                    e.trailers.push((k.to_string(), v.to_string()));
                }
            }
        }
        (paths, entries)
    }

    fn save_pending(&self, disk: &mut Disk, paths: &BTreeSet<PathBuf>, entries: &[Entry]) {
        let mut text = String::new();
        for p in paths {
            text.push_str(&format!("path {}\n", p.display()));
        }
        for e in entries {
            text.push_str(&format!("line {}\n", e.line));
            for (k, v) in &e.trailers {
                text.push_str(&format!("trailer {k}: {v}\n"));
            }
        }
        let _ = disk.write(&self.pending_path(), text.as_bytes());
    }

    /// `git worktree add DIR -b BRANCH BASE`.
    pub fn worktree_add(&self, dir: &Path, branch: &str, base: &str) -> Result<()> {
        run(self
            .git()
            .args(["worktree", "add", "--quiet", "-b", branch])
            .arg(dir)
            .arg(base))
    }

    /// Commits everything left in worktree `dir` to its branch (the
    /// agent's uncommitted work); no-op when it is clean.
    pub fn commit_all(dir: &Path, message: &str) -> Result<bool> {
        let git = |args: &[&str]| {
            let mut c = Command::new("git");
            c.arg("-C").arg(dir).args(args).stdin(Stdio::null());
            c
        };
        run(&mut git(&["add", "-A"]))?;
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
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["config", "user.name"])
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
