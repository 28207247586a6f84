//! `agents/factory/paused`: a person paused the factory (`taskq pause`).
//!
//! While the file exists no new agent starts; agents at work go on and
//! their ends are recorded. A file, not a flag in the daemon's memory: it
//! survives a restart of the factory, git and editors see it, and
//! `rm agents/factory/paused` resumes as well as `taskq resume` does. Its
//! lines (`since:`, `by:`, `reason:`) only describe the pause; an empty or
//! garbled file pauses all the same.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::fsutil;
use crate::root::Root;
use crate::task::{format_timestamp, parse_timestamp, Timestamp};

/// The most of the pause file read (it holds three short lines).
const MAX_PAUSE_FILE: u64 = 4096;

/// A pause, as its file describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Pause {
    /// When it was paused.
    pub since: Option<Timestamp>,
    /// Who paused it.
    pub by: Option<String>,
    /// Why, if they said.
    pub reason: Option<String>,
}

impl Pause {
    /// The pause in words: `paused by alice since 2026-…: a release`.
    pub fn describe(&self) -> String {
        let mut s = String::from("paused");
        if let Some(by) = &self.by {
            s.push_str(&format!(" by {by}"));
        }
        if let Some(since) = self.since {
            s.push_str(&format!(" since {}", format_timestamp(since)));
        }
        if let Some(reason) = &self.reason {
            s.push_str(&format!(": {reason}"));
        }
        s.push_str(" (`taskq resume` resumes)");
        s
    }

    /// The file's text.
    pub fn to_file(&self) -> String {
        let mut s = String::from(
            "# No new agents start while this file exists; `taskq resume` (or deleting it) resumes.\n",
        );
        if let Some(since) = self.since {
            s.push_str(&format!("since: {}\n", format_timestamp(since)));
        }
        if let Some(by) = &self.by {
            s.push_str(&format!("by: {}\n", one_line(by)));
        }
        if let Some(reason) = &self.reason {
            s.push_str(&format!("reason: {}\n", one_line(reason)));
        }
        s
    }

    /// Reads the file's text (unknown lines are ignored).
    pub fn parse(text: &str) -> Pause {
        let mut p = Pause::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match key.trim() {
                "since" => p.since = parse_timestamp(value),
                "by" => p.by = Some(value.to_string()),
                "reason" => p.reason = Some(value.to_string()),
                _ => {}
            }
        }
        p
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The pause, if the factory is paused. Anything at the path that cannot
/// be read as a small regular file (a directory, a FIFO) still pauses, with
/// no details: its presence is what counts.
pub fn read(root: &Root) -> Option<Pause> {
    read_at(&root.pause_file())
}

fn read_at(path: &Path) -> Option<Pause> {
    match fsutil::read_capped(path, MAX_PAUSE_FILE) {
        Ok(Some(capped)) => Some(Pause::parse(&capped.text())),
        Ok(None) => None,
        Err(_) => path.symlink_metadata().ok().map(|_| Pause::default()),
    }
}

/// Pauses the factory: writes the file unless it exists. Returns the pause
/// now in force and whether this call made it.
pub fn pause(root: &Root, by: &str, reason: Option<&str>, now: Timestamp) -> Result<(Pause, bool)> {
    if let Some(p) = read(root) {
        return Ok((p, false));
    }
    let p = Pause {
        since: Some(now),
        by: Some(one_line(by)),
        reason: reason.map(one_line).filter(|r| !r.is_empty()),
    };
    if fsutil::create_new_atomic(&root.pause_file(), p.to_file().as_bytes())? {
        Ok((p, true))
    } else {
        // Someone else paused it meanwhile.
        Ok((read(root).unwrap_or_default(), false))
    }
}

/// Resumes the factory: removes the file. Returns the pause it ended, if
/// it was paused.
pub fn resume(root: &Root) -> Result<Option<Pause>> {
    let path = root.pause_file();
    let Some(p) = read(root) else {
        return Ok(None);
    };
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(Some(p)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::error::Error::io(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_says_who_when_and_why_and_reads_back() {
        let now = crate::store::now();
        let p = Pause {
            since: Some(now),
            by: Some("ada".into()),
            reason: Some("a release\nat noon".into()),
        };
        let back = Pause::parse(&p.to_file());
        assert_eq!(back.by.as_deref(), Some("ada"));
        assert_eq!(back.reason.as_deref(), Some("a release at noon"));
        assert_eq!(
            back.since.map(format_timestamp),
            Some(format_timestamp(now))
        );
        assert!(back.describe().starts_with("paused by ada since "));
        assert!(back.describe().contains(": a release at noon"));
    }

    #[test]
    fn an_empty_or_garbled_file_pauses_all_the_same() {
        assert_eq!(Pause::parse(""), Pause::default());
        assert_eq!(
            Pause::parse("\u{0}\u{1}garbage\nsince: not a date"),
            Pause::default()
        );
        assert_eq!(
            Pause::default().describe(),
            "paused (`taskq resume` resumes)"
        );
    }

    #[test]
    fn pause_and_resume_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let now = crate::store::now();
        assert_eq!(read(&root), None);
        let (p, made) = pause(&root, "ada", None, now).unwrap();
        assert!(made);
        assert_eq!(p.by.as_deref(), Some("ada"));
        let (again, made) = pause(&root, "bob", Some("x"), now).unwrap();
        assert!(!made, "already paused");
        assert_eq!(again.by.as_deref(), Some("ada"), "the first pause stays");
        assert!(read(&root).is_some());
        assert_eq!(
            resume(&root).unwrap().and_then(|p| p.by).as_deref(),
            Some("ada")
        );
        assert_eq!(resume(&root).unwrap(), None, "already running");
        // A directory in its place still pauses.
        std::fs::create_dir_all(root.pause_file()).unwrap();
        assert_eq!(read(&root), Some(Pause::default()));
    }
}
