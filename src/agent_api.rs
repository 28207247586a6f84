//! The agent API (issue 14, item 2): agents are untrusted, so when
//! `taskq` runs inside an agent (`TASKQ_AGENT_ID` is set for this root) its
//! writing commands are not written to the files by the agent's own
//! process: they go to the running factory over a unix socket,
//! `agents/factory/agent.sock`, as one JSON request line answered by one
//! JSON response line. The factory checks who asks (the per-agent secret
//! `TASKQ_AGENT_TOKEN` it gave the agent, kept in its memory only, and that
//! the agent still runs) and what (its own task only), writes under the
//! queue lock with its own writer, and names the agent in the git trail
//! (see `factory/api.rs`).
//!
//! Allowed: `add` (the new task records `created_by:` and `parent:`),
//! `approval request`, `note` on the agent's own task. Read commands stay
//! local. Everything else that writes is refused here with exit 3 and a
//! message saying what to do instead ([`route`], pure). With no factory
//! answering, writing commands are refused too: never written directly.
//! docs/reference/agent-api.md is the reference.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::Command;
use crate::commands::approval::ApprovalCommand;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::root::Root;

/// The longest request or response line (one JSON line, its newline
/// included): a task's body sent by an agent must fit.
pub const MAX_LINE: u64 = 1 << 20;

/// How long a client waits for its answer: the factory answers after its
/// next step, which waits for the queue lock (taken by other writers for
/// milliseconds; `TASKQ_LOCK_TIMEOUT` bounds it).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable holding an agent's secret.
pub const TOKEN_VAR: &str = "TASKQ_AGENT_TOKEN";

/// One request: who asks, with what secret, for what.
#[derive(Clone, Serialize, Deserialize)]
pub struct Request {
    /// The agent's id (`TASKQ_AGENT_ID`).
    pub agent: String,
    /// Its secret (`TASKQ_AGENT_TOKEN`).
    pub token: String,
    /// What it asks for.
    #[serde(flatten)]
    pub op: Op,
}

impl std::fmt::Debug for Request {
    /// Never prints the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("agent", &self.agent)
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

/// What an agent may ask the factory to write.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `taskq add`: a new task, created by the agent.
    Add {
        /// The title.
        title: String,
        /// The body (may be empty).
        #[serde(default)]
        body: String,
        /// Tags.
        #[serde(default)]
        tags: Vec<String>,
        /// Dependency ids as typed.
        #[serde(default)]
        deps: Vec<String>,
        /// `critical`, `high`, `medium` or `low`.
        priority: String,
        /// A role, if named.
        #[serde(default)]
        role: Option<String>,
    },
    /// `taskq approval request`: a pending request for the agent's task.
    ApprovalRequest {
        /// The task (must be the agent's own).
        task: String,
        /// What needs approval.
        text: String,
    },
    /// `taskq note`: the agent's progress on its own task.
    Note {
        /// The task, when named (must be the agent's own).
        #[serde(default)]
        task: Option<String>,
        /// One line.
        text: String,
    },
}

/// The factory's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Response {
    /// Done as asked.
    pub ok: bool,
    /// The exit code the command ends with (0, 2 invalid, 3 refused).
    pub code: u8,
    /// Why not (one line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The task created or noted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The pending approval file (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Response {
    /// A refusal (exit 3).
    pub fn refused(error: impl Into<String>, hint: impl Into<String>) -> Response {
        Response {
            ok: false,
            code: 3,
            error: Some(error.into()),
            hint: Some(hint.into()),
            ..Response::default()
        }
    }

    /// The answer for a command that failed with `e`.
    pub fn from_error(e: &Error) -> Response {
        Response {
            ok: false,
            code: e.exit_code(),
            error: Some(e.to_string()),
            hint: e.hint(),
            ..Response::default()
        }
    }
}

/// Who runs this `taskq`: an agent of the factory of `root`.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `TASKQ_AGENT_ID`.
    pub agent: String,
    /// `TASKQ_AGENT_TOKEN` (empty when missing: the factory refuses).
    pub token: String,
}

/// The agent this process runs in, when it works on `root`: its id is in
/// the environment and the root is the one the factory gave it
/// (`TASKQ_ROOT`, compared as canonical paths, so a link or `..` names the
/// same root). An agent that works on another root (a project's own test
/// queue) is a person there: what it may write then is the sandbox's
/// business.
pub fn caller(root: &Root) -> Option<Caller> {
    let agent = std::env::var("TASKQ_AGENT_ID").ok()?;
    if agent.trim().is_empty() {
        return None;
    }
    if let Some(given) = std::env::var_os("TASKQ_ROOT") {
        let same = match (
            std::fs::canonicalize(&given),
            std::fs::canonicalize(&root.dir),
        ) {
            (Ok(a), Ok(b)) => a == b,
            // Unresolvable: treat it as the agent's root (the safe side).
            _ => true,
        };
        if !same {
            return None;
        }
    }
    Some(Caller {
        agent,
        token: std::env::var(TOKEN_VAR).unwrap_or_default(),
    })
}

/// What an agent's command does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A read: runs here, as for a person.
    Local,
    /// A write agents may ask for: sent to the factory.
    Factory,
    /// A write agents may not make: exit 3 with this message and hint.
    Refused {
        /// What is refused.
        message: String,
        /// What to do instead.
        hint: String,
    },
}

fn refused(message: impl Into<String>, hint: impl Into<String>) -> Route {
    Route::Refused {
        message: message.into(),
        hint: hint.into(),
    }
}

const OWN_END: &str = "your own task ends with your exit status and final output: exit 0 when the work is done, non-zero when it failed; `taskq note TEXT` records progress, `taskq add TITLE` hands work on";

/// Where an agent's command goes (pure: the command line alone decides).
pub fn route(command: &Command) -> Route {
    use Command as C;
    match command {
        C::List(_)
        | C::Show(_)
        | C::Deps(_)
        | C::Check(_)
        | C::Graph(_)
        | C::Status(_)
        | C::Why(_)
        | C::Log(_)
        | C::Report(_)
        | C::Logs(_)
        | C::Completions(_) => Route::Local,
        C::Next(args) => match &args.claim {
            None => Route::Local,
            Some(_) => refused(
                "agents cannot claim tasks: the factory assigns them",
                "`taskq next` without `--claim` shows what is next; `taskq add TITLE` creates a task the factory will run",
            ),
        },
        C::Approval(ApprovalCommand::Wait { .. }) => Route::Local,
        C::Approval(ApprovalCommand::Request { .. }) | C::Add(_) | C::Note(_) => Route::Factory,
        C::Service(args) if matches!(args.action, crate::commands::service::Action::Status) => {
            Route::Local
        }
        C::Approve(a) => refused(
            format!("agents cannot approve: a person approves `{}` with `taskq approve`", a.what),
            "your request stays in approvals/pending/ until a person decides; wait for it with `taskq approval wait FILE`",
        ),
        C::Reject(a) => refused(
            format!("agents cannot reject: a person decides `{}` with `taskq reject`", a.what),
            "your request stays in approvals/pending/ until a person decides; wait for it with `taskq approval wait FILE`",
        ),
        C::Claim(a) => refused(
            format!("agents cannot claim `{}`: the factory assigns tasks", a.id),
            OWN_END,
        ),
        C::Done(a) => refused(format!("agents cannot mark `{}` done", a.id), OWN_END),
        C::Fail(a) => refused(format!("agents cannot mark `{}` failed", a.id), OWN_END),
        C::Hold(a) => refused(format!("agents cannot put `{}` on hold", a.id), OWN_END),
        C::Release(a) => refused(format!("agents cannot release `{}`", a.id), OWN_END),
        C::Cancel(a) => refused(format!("agents cannot cancel `{}`", a.id), OWN_END),
        C::Renew(a) => refused(
            format!("agents cannot renew the lease of `{}`", a.id),
            "the factory keeps its agents' tasks assigned while they run",
        ),
        C::Adopt => refused(
            "agents cannot adopt files into the queue",
            "create tasks with `taskq add TITLE`",
        ),
        C::Run(_) => refused(
            "agents cannot start a factory on their own root",
            "a person runs `taskq run`; this agent already runs under one",
        ),
        C::Stop(_) => refused(
            "agents cannot stop agents",
            "a person stops agents with `taskq stop`; to end your own work, exit",
        ),
        C::Service(_) => refused(
            "agents cannot install or remove the factory's service",
            "a person runs `taskq service install|uninstall`",
        ),
        C::Pause(_) | C::Resume => refused(
            "agents cannot pause or resume the factory",
            "a person runs `taskq pause` / `taskq resume`",
        ),
        C::Top(_) => refused(
            "agents cannot run `taskq top`: its keys approve, stop and pause",
            "`taskq status` and `taskq logs` show the same from inside an agent",
        ),
        C::Init(_) => refused(
            "agents cannot initialise their own root",
            "templates, config and hooks are a person's to change",
        ),
    }
}

/// Sends `command` (a [`Route::Factory`] one) to the factory for `caller`
/// and prints the answer as the command would.
pub fn forward(ctx: &Ctx, caller: &Caller, command: Command) -> Result<ExitCode> {
    let op = match command {
        Command::Add(args) => {
            let new = crate::commands::add::new_task(args)?;
            Op::Add {
                title: new.title,
                body: new.body,
                tags: new.tags,
                deps: new.deps,
                priority: new.priority.to_string(),
                role: new.role,
            }
        }
        Command::Approval(ApprovalCommand::Request { task, text }) => {
            if text.trim().is_empty() {
                return Err(Error::usage("say what needs approval"));
            }
            Op::ApprovalRequest { task, text }
        }
        Command::Note(args) => Op::Note {
            task: args.task,
            text: crate::commands::note::one_line(&args.text)?,
        },
        other => {
            return Err(Error::conflict(format!(
                "`{other:?}` is not sent to the factory"
            )))
        }
    };
    let request = Request {
        agent: caller.agent.clone(),
        token: caller.token.clone(),
        op: op.clone(),
    };
    let response = send(&ctx.root, &request)?;
    if !response.ok {
        let message = response
            .error
            .unwrap_or_else(|| "the factory refused the request".into());
        return Err(match (response.code, response.hint) {
            (2, Some(h)) => Error::usage_hint(message, h),
            (2, None) => Error::usage(message),
            (_, Some(h)) => Error::conflict_hint(message, h),
            (_, None) => Error::conflict(message),
        });
    }
    let task = response.task.unwrap_or_default();
    match op {
        Op::Add { .. } => {
            ctx.out
                .note(format!("{task}: new → ready (created by {})", caller.agent));
            ctx.out.line(&task)?;
        }
        Op::ApprovalRequest { .. } => ctx.out.line(response.file.unwrap_or_default())?,
        Op::Note { text, .. } => {
            if ctx.out.json {
                ctx.out
                    .json(&serde_json::json!({"task": task, "progress": text}))?;
            } else {
                ctx.out.note(format!("{task}: progress noted"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One request, one answer, over the factory's socket. No factory
/// answering is a refusal (exit 3): an agent never writes the files
/// itself.
pub fn send(root: &Root, request: &Request) -> Result<Response> {
    let shown = "agents/factory/agent.sock";
    let unreachable = |why: String| {
        Error::conflict_hint(
            format!("no factory answers on {shown} ({why}): agents write through the running factory"),
            "run this command where a person can (outside the agent), or ask the person to start `taskq run`",
        )
    };
    let mut line = serde_json::to_vec(request).map_err(|e| Error::usage(e.to_string()))?;
    line.push(b'\n');
    if line.len() as u64 > MAX_LINE {
        return Err(Error::usage_hint(
            format!(
                "the request is larger than the agent API takes ({})",
                crate::fsutil::size_text(MAX_LINE)
            ),
            "keep long text in a file in your workspace and name it in the task",
        ));
    }
    let path = root.agent_socket();
    let (path, _dir) = short_path(&path).map_err(|e| unreachable(e.to_string()))?;
    let mut stream = UnixStream::connect(&path).map_err(|e| unreachable(e.to_string()))?;
    let io = |e: std::io::Error| Error::io(root.agent_socket(), e);
    stream
        .set_write_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|()| stream.set_read_timeout(Some(ANSWER_TIMEOUT)))
        .map_err(io)?;
    stream.write_all(&line).map_err(io)?;
    let mut answer = Vec::new();
    BufReader::new((&stream).take(MAX_LINE))
        .read_until(b'\n', &mut answer)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => Error::conflict_hint(
                format!(
                    "the factory did not answer within {}s",
                    ANSWER_TIMEOUT.as_secs()
                ),
                "`taskq status` shows whether the factory is stuck; try again",
            ),
            _ => io(e),
        })?;
    if answer.is_empty() {
        return Err(unreachable("it closed the connection".into()));
    }
    serde_json::from_slice(&answer)
        .map_err(|e| unreachable(format!("its answer is not understood: {e}")))
}

/// A path to `socket` short enough for a unix socket address (108 bytes
/// on Linux): `socket` itself when it fits, else on Linux the same file
/// through the open directory (`/proc/self/fd/N/agent.sock`), the
/// directory kept open while the path is used.
pub fn short_path(socket: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    if socket.as_os_str().len() < 100 {
        return Ok((socket.to_path_buf(), None));
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let dir = socket.parent().unwrap_or(Path::new("."));
        let name = socket.file_name().unwrap_or_default();
        let f = std::fs::File::open(dir)?;
        let short = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())).join(name);
        Ok((short, Some(f)))
    }
    #[cfg(not(target_os = "linux"))]
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "the socket path is too long ({} bytes)",
            socket.as_os_str().len()
        ),
    ))
}

/// A new agent secret: 128 random bits from the kernel, as hex.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares two secrets in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn route_of(args: &[&str]) -> Route {
        let mut all = vec!["taskq"];
        all.extend_from_slice(args);
        route(
            &crate::cli::Cli::try_parse_from(all)
                .expect("parses")
                .command,
        )
    }

    #[test]
    fn reads_stay_local_and_agent_writes_go_to_the_factory() {
        for args in [
            &["list"][..],
            &["show", "1"],
            &["next"],
            &["status"],
            &["why", "1"],
            &["approval", "wait", "f"],
            &["service", "status"],
        ] {
            assert_eq!(route_of(args), Route::Local, "{args:?}");
        }
        for args in [
            &["add", "x"][..],
            &["approval", "request", "--task", "1", "x"],
            &["note", "half way"],
        ] {
            assert_eq!(route_of(args), Route::Factory, "{args:?}");
        }
    }

    #[test]
    fn gates_and_transitions_are_refused_with_what_to_do() {
        for args in [
            &["approve", "TASK-1"][..],
            &["reject", "TASK-1"],
            &["claim", "1", "--agent", "me"],
            &["next", "--claim", "me"],
            &["done", "1"],
            &["fail", "1", "--reason", "x"],
            &["hold", "1"],
            &["release", "1"],
            &["cancel", "1"],
            &["adopt"],
            &["run"],
            &["stop", "X-1"],
            &["service", "uninstall"],
        ] {
            match route_of(args) {
                Route::Refused { message, hint } => {
                    assert!(message.starts_with("agents cannot"), "{args:?}: {message}");
                    assert!(!hint.is_empty());
                }
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()));
        assert!(!same_token(&a, &b));
        assert!(!same_token(&a, &a[..31]));
        assert!(!same_token("", ""));
    }

    #[test]
    fn requests_are_one_json_line_without_the_token_in_debug() {
        let r = Request {
            agent: "JOB-1".into(),
            token: "secret".into(),
            op: Op::Note {
                task: None,
                text: "half way".into(),
            },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        assert!(line.contains(r#""op":"note""#), "{line}");
        let back: Request = serde_json::from_str(&line).unwrap();
        assert_eq!(back.op, r.op);
        assert!(!format!("{r:?}").contains("secret"));
    }
}
