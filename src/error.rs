//! The crate's error type and the exit-code contract.
//!
//! Every error that leaves the library says *where* (a path, and a line where
//! there is one) and *what*. `Error::exit_code` is the single place that maps
//! an error to the process exit status documented in docs/reference/exit-codes.md:
//!
//! | code | meaning                                                       |
//! |------|---------------------------------------------------------------|
//! | 0    | ok                                                            |
//! | 1    | nothing found (`next` with nothing ready), `check` problems   |
//! | 2    | usage error or invalid input                                  |
//! | 3    | conflict: already claimed, not ready, lock held too long      |

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Convenience alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in taskq, by kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory being read or written.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },

    /// A file whose content is not acceptable (bad YAML, wrong type, ...).
    #[error("{problem}")]
    Invalid {
        /// Where and what.
        problem: Problem,
    },

    /// The command line asks for something impossible (unknown id, bad
    /// flag value, a cycle the command would create, ...).
    #[error("{message}")]
    Usage {
        /// One line, lowercase, user values in backticks.
        message: String,
        /// An optional second line: what to do instead.
        hint: Option<String>,
    },

    /// The queue is not in the state the command needs: the task is
    /// already claimed, not ready, or the lock is held too long.
    #[error("{message}")]
    Conflict {
        /// One line, lowercase, user values in backticks.
        message: String,
        /// An optional second line: what to do instead.
        hint: Option<String>,
    },

    /// No taskq root was found.
    #[error("no taskq root found: no `tasks/` directory in {} or any parent", .cwd.display())]
    NoRoot {
        /// Where the search started.
        cwd: PathBuf,
    },
}

impl Error {
    /// The process exit status for this error (see the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Conflict { .. } => 3,
            Error::Io { .. }
            | Error::Invalid { .. }
            | Error::Usage { .. }
            | Error::NoRoot { .. } => 2,
        }
    }

    /// A hint line printed after the error, if there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } | Error::Conflict { hint, .. } => hint.clone(),
            Error::Invalid { problem } => problem.hint.clone(),
            Error::NoRoot { .. } => Some(
                "run `taskq init` to create one, or pass `--root DIR` / set `TASKQ_ROOT`".into(),
            ),
            _ => None,
        }
    }

    /// Builds an [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Usage`] without a hint.
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint: None,
        }
    }

    /// Builds an [`Error::Usage`] with a hint.
    pub fn usage_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// Builds an [`Error::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
            hint: None,
        }
    }

    /// A file changed under taskq between its read and its write (see
    /// `fsutil::Disk::write_if`): a conflict the writer resolves by
    /// deciding again on the new file. `why`: `it changed`, `it was moved
    /// or deleted`.
    pub fn changed(path: &std::path::Path, why: &str) -> Self {
        Error::Conflict {
            message: format!("{}: {why} while taskq was writing it", path.display()),
            hint: Some(CHANGED_HINT.into()),
        }
    }

    /// True for [`Error::changed`].
    pub fn is_changed(&self) -> bool {
        matches!(self, Error::Conflict { hint: Some(h), .. } if h == CHANGED_HINT)
    }

    /// Builds an [`Error::Conflict`] with a hint.
    pub fn conflict_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

const CHANGED_HINT: &str = "someone else changed the file at the same moment; nothing was overwritten: run the command again";

impl From<Problem> for Error {
    fn from(problem: Problem) -> Self {
        Error::Invalid { problem }
    }
}

/// One thing wrong with one file: compiler style `path:line:col: message`.
///
/// Problems are collected, not thrown, while scanning the queue (one bad
/// file must not stop `taskq next`); `taskq check` prints all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, relative to the root where possible.
    pub path: PathBuf,
    /// 1-based line, where the problem has one.
    pub line: Option<usize>,
    /// 1-based column, where the problem has one.
    pub column: Option<usize>,
    /// What is wrong: one line, lowercase.
    pub message: String,
    /// What to do about it, if we can tell.
    pub hint: Option<String>,
    /// A warning does not make `taskq check` fail.
    pub warning: bool,
}

impl Problem {
    /// A problem with the file as a whole.
    pub fn new(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Problem {
            path: path.as_ref().to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
            hint: None,
            warning: false,
        }
    }

    /// A problem at a line of the file.
    pub fn at(path: impl AsRef<Path>, line: usize, message: impl Into<String>) -> Self {
        Problem {
            line: Some(line),
            ..Problem::new(path, message)
        }
    }

    /// Adds a column.
    #[must_use]
    pub fn column(mut self, column: Option<usize>) -> Self {
        self.column = column;
        self
    }

    /// Adds a hint line.
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Marks the problem as a warning.
    #[must_use]
    pub fn warning(mut self) -> Self {
        self.warning = true;
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        if self.warning {
            write!(f, ": warning")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Suggests the candidate closest to `input` (for "did you mean" hints).
pub fn suggest<'a>(input: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (levenshtein(&input.to_ascii_lowercase(), c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_display_is_compiler_style() {
        let p = Problem::at("tasks/todo/a.md", 3, "unknown status `redy`").column(Some(9));
        assert_eq!(p.to_string(), "tasks/todo/a.md:3:9: unknown status `redy`");
        assert_eq!(Problem::new("x.md", "empty").to_string(), "x.md: empty");
    }

    #[test]
    fn suggests_close_words_only() {
        let statuses = ["ready", "running", "done"];
        assert_eq!(suggest("redy", &statuses), Some("ready"));
        assert_eq!(suggest("Done", &statuses), Some("done"));
        assert_eq!(suggest("xyzzy", &statuses), None);
    }

    #[test]
    fn exit_codes_follow_the_contract() {
        assert_eq!(Error::conflict("x").exit_code(), 3);
        assert_eq!(Error::usage("x").exit_code(), 2);
    }
}
