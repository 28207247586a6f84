//! taskq: a directory of markdown files as a work queue and an agent
//! factory.
//!
//! The library holds everything; `main.rs` only parses and calls [`run`].
//! Pure logic sits in the middle ([`queue`], [`graph`], [`frontmatter`]),
//! I/O at the edges ([`store`], [`fsutil`], [`lock`]).

pub mod agent;
pub mod agent_api;
pub mod approval;
pub mod cli;
pub mod commands;
pub mod config;
pub mod context;
pub mod duration;
pub mod error;
pub mod factory;
pub mod frontmatter;
pub mod fsutil;
pub mod git;
pub mod graph;
pub mod hooks;
pub mod lock;
pub mod logging;
pub mod mix;
pub mod money;
pub mod notify;
pub mod output;
pub mod pause;
pub mod queue;
pub mod registry;
pub mod report;
pub mod role;
pub mod root;
pub mod sandbox;
pub mod spawn;
pub mod store;
pub mod task;
pub mod templates;
pub mod top;
pub mod watch;

use std::io::Write;
use std::process::ExitCode;

use crate::error::Error;

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: cli::Cli) -> ExitCode {
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            if is_broken_pipe(&err) {
                // `taskq list | head -1` is not an error.
                return ExitCode::SUCCESS;
            }
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "taskq: error: {err}");
            if let Some(hint) = err.hint() {
                let _ = writeln!(stderr, "hint: {hint}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}

fn is_broken_pipe(err: &Error) -> bool {
    matches!(err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}
