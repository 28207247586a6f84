//! stdout is data (ids, tables, JSON); stderr is messages. Commands print
//! through [`Out`] so `--json` and `--quiet` are honoured in one place.

use std::io::Write;

use serde::Serialize;

use crate::error::{Error, Problem, Result};

/// The output mode of this run.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--json`: stdout carries JSON only.
    pub json: bool,
    /// `--quiet`: no confirmations or warnings on stderr.
    pub quiet: bool,
}

impl Out {
    /// Prints one line of data on stdout.
    pub fn line(&self, text: impl AsRef<str>) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{}", text.as_ref()).map_err(|e| Error::io("<stdout>", e))
    }

    /// Prints text (already ending in newlines) on stdout.
    pub fn text(&self, text: impl AsRef<str>) -> Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(text.as_ref().as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("<stdout>", e))
    }

    /// Prints data on stdout as `write` produces it (buffered): for output
    /// too large, or too deep, to build first (`deps` of a long chain).
    pub fn stream(&self, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
        let mut stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
        write(&mut stdout)
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("<stdout>", e))
    }

    /// Prints a value as pretty JSON on stdout.
    pub fn json<T: Serialize>(&self, value: &T) -> Result<()> {
        let mut stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
        serde_json::to_writer_pretty(&mut stdout, value)
            .map_err(|e| Error::io("<stdout>", e.into()))?;
        writeln!(stdout)
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("<stdout>", e))
    }

    /// Prints a JSON array on stdout, serializing each item as it comes
    /// (a 100,000-task list is never built in memory).
    pub fn json_seq<T: Serialize>(&self, items: impl IntoIterator<Item = T>) -> Result<()> {
        use serde::Serializer as _;
        let stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
        let mut ser = serde_json::Serializer::pretty(stdout);
        ser.collect_seq(items)
            .map_err(|e| Error::io("<stdout>", e.into()))?;
        let mut stdout = ser.into_inner();
        writeln!(stdout)
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("<stdout>", e))
    }

    /// A confirmation on stderr (`TASK-006: ready → running`), unless quiet.
    pub fn note(&self, text: impl AsRef<str>) {
        if !self.quiet {
            // One write per line: stderr is unbuffered, and `eprintln!`
            // would write the newline on its own.
            let mut line = String::with_capacity(text.as_ref().len() + 1);
            line.push_str(text.as_ref());
            line.push('\n');
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    /// A problem on stderr as `taskq: warning: path:line: message`, unless
    /// quiet.
    pub fn warn(&self, problem: &Problem) {
        if !self.quiet {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(
                stderr,
                "taskq: warning: {}",
                problem.to_string().replacen(": warning:", ":", 1)
            );
            if let Some(hint) = &problem.hint {
                let _ = writeln!(stderr, "hint: {hint}");
            }
        }
    }
}

/// `1 task`, `2 tasks`, `0 problems`: a count with its noun (a regular
/// plural; every noun taskq counts is one).
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_agree_with_their_noun() {
        assert_eq!(super::count(0, "problem"), "0 problems");
        assert_eq!(super::count(1, "task"), "1 task");
        assert_eq!(super::count(2, "line"), "2 lines");
    }
}
