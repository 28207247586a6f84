//! The command line: global flags and one variant per subcommand. Each
//! subcommand's arguments live beside its code in `commands/<name>.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{
    add, approval, check, deps, graph, init, list, log, logs, next, note, pause, report, run,
    service, show, status, stop, transition, why,
};

/// A directory of markdown files as a work queue and an agent factory.
///
/// Tasks are markdown files with YAML frontmatter in `tasks/todo/`; finished
/// ones move to `tasks/done/`. Git and a text editor are the interface;
/// taskq answers shell scripts fast and exactly.
///
/// Exit codes: 0 ok, 1 nothing found / check found problems, 2 usage error
/// or invalid input, 3 conflict (already claimed, not ready, lock held too
/// long, a factory already running). `approval wait`: 0 approved, 1
/// rejected, 3 timed out.
#[derive(Debug, Parser)]
#[command(name = "taskq", version, about, long_about, max_term_width = 100)]
pub struct Cli {
    /// The taskq root (the directory holding `tasks/`). Default: `$TASKQ_ROOT`,
    /// else the nearest ancestor of the current directory holding `tasks/`.
    #[arg(long, global = true, value_name = "DIR", env = "TASKQ_ROOT")]
    pub root: Option<PathBuf>,

    /// Print machine-readable JSON on stdout (schemas in docs/reference/json.md).
    #[arg(long, global = true)]
    pub json: bool,

    /// More logging on stderr (-v info, -vv debug). `RUST_LOG` overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Print no confirmations or warnings on stderr, only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a taskq root: tasks/, approvals/, agents/ with the default
    /// SOUL templates, a config and a .gitignore. Never overwrites a file.
    Init(init::Args),
    /// Add a task; prints only its new id.
    Add(add::Args),
    /// Give every id-less file in tasks/todo an id and status ready.
    ///
    /// Every writing command does this first; `adopt` does only this.
    Adopt,
    /// List tasks (all, or filtered), one line each or `--json`.
    List(list::Args),
    /// Show one task: its file, or `--json` with its computed state.
    Show(show::Args),
    /// Print the id of the next ready task; exit 1 when none is ready.
    ///
    /// Ready: in tasks/todo, status ready, unassigned, every dependency in
    /// tasks/done with status done. Order: effective priority (a task
    /// inherits the highest priority of any task that waits on it), then
    /// the number of tasks it unblocks, then the oldest id. Made for
    /// `while id=$(taskq next --claim me); do ...; done`.
    Next(next::Args),
    /// Print a task's dependency chain (or tree), each node with its status.
    Deps(deps::Args),
    /// Claim a ready task for an agent (status running); exit 3 if it is
    /// not ready or already claimed.
    Claim(transition::ClaimArgs),
    /// Mark a task done and move it to tasks/done.
    Done(transition::DoneArgs),
    /// Mark a task failed with a reason (it stays in tasks/todo).
    Fail(transition::FailArgs),
    /// Put a task on hold: it will not run until released.
    Hold(transition::IdArgs),
    /// Return a task to ready (from running, hold, failed or review).
    Release(transition::IdArgs),
    /// Cancel a task (it stays in tasks/todo with status cancelled).
    Cancel(transition::CancelArgs),
    /// Extend the lease of a claimed task.
    Renew(transition::RenewArgs),
    /// Validate the whole root; print `path:line: message` per problem and
    /// exit 1 if any. Usable as a git pre-commit hook.
    Check(check::Args),
    /// Print the dependency graph as mermaid (default) or dot.
    Graph(graph::Args),
    /// The factory: watch the files and run role agents for ready tasks,
    /// within the concurrency, time and retry limits.
    ///
    /// Reacts at once to files dropped in tasks/todo, approvals moved by
    /// hand and edited templates; a heartbeat catches anything missed.
    /// SIGINT/SIGTERM stop every agent and return their tasks to ready.
    Run(run::Args),
    /// Show active agents, queue counts and spend; or one agent or task in
    /// detail with the tail of its log.
    Status(status::Args),
    /// Stop an agent, or the agent running a task (and every agent it
    /// spawned); its task returns to ready, or is cancelled with `--cancel`.
    Stop(stop::Args),
    /// Pause the factory: no new agents start; agents at work go on.
    ///
    /// Writes agents/factory/paused (git and editors see it; it holds
    /// across restarts of the factory). Pausing twice changes nothing.
    Pause(pause::PauseArgs),
    /// Resume a paused factory: agents start again. Removes
    /// agents/factory/paused; resuming twice changes nothing.
    Resume,
    /// Approve a pending request: moves approvals/pending/<ID>.md to
    /// approvals/approved/ (the same as `mv`).
    Approve(approval::ApproveArgs),
    /// Reject a pending request: moves it to approvals/rejected/ and, for
    /// a task's gate, cancels the task with the reason.
    Reject(approval::RejectArgs),
    /// For agents: ask for approval of one action, and wait for it.
    #[command(subcommand)]
    Approval(approval::ApprovalCommand),
    /// Note progress on a task (its `progress:` field; each note is a
    /// commit in the git trail).
    ///
    /// For agents: `taskq note "tests pass, writing the docs"` notes on
    /// the agent's own task (`$TASKQ_TASK_ID`), through the factory.
    Note(note::Args),
    /// Explain in a line or two why a task is or is not running.
    Why(why::Args),
    /// A task's history from git (following its move to done/), or an
    /// agent's with `--agent`, as a compact timeline.
    Log(log::Args),
    /// Run the factory in the background as a systemd user unit (launchd
    /// on macOS): install, uninstall, status.
    ///
    /// The unit runs `taskq --root <root> run` on login (on boot with
    /// `loginctl enable-linger`), restarts it when it fails, and sets
    /// `TASKQ_SERVICE` so that `taskq status` says it runs as a service.
    Service(service::Args),
    /// A report of the factory's work: `--html FILE` (one self-contained
    /// page: the dependency graph, a timeline of agents, cost per day, role
    /// and model, failures), `--markdown [FILE]` (a pull-request comment),
    /// or `--json`.
    Report(report::Args),
    /// A live view of the factory in the terminal: running agents, queue
    /// counts, pending approvals, spend against the cap, recent events.
    ///
    /// Keys: Tab switches pane, arrows (or j/k) select; `a` approves and
    /// `r` rejects (asking for a reason) the selected request; `l` opens
    /// the selected agent's log, `s` stops it; `h` holds and `u` releases
    /// the selected task; `p` pauses or resumes the factory; `q` quits.
    /// Updates on file events; works in 80x24 over ssh, without a mouse.
    Top(crate::top::Args),
    /// Print an agent's log, or follow it with `-f` as it is written (for
    /// a task: its latest agent's). `-f` ends once the agent has ended and
    /// its log is printed.
    Logs(logs::Args),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

/// Arguments of `taskq completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
