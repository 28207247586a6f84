//! One module per subcommand; `dispatch` is the only place that knows them
//! all. Helpers shared by several commands (the task JSON shape, warnings)
//! live here too.

pub mod add;
pub mod approval;
pub mod check;
pub mod deps;
pub mod graph;
pub mod init;
pub mod list;
pub mod log;
pub mod logs;
pub mod next;
pub mod note;
pub mod pause;
pub mod report;
pub mod run;
pub mod service;
pub mod show;
pub mod status;
pub mod stop;
pub mod transition;
pub mod why;

use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::{Cli, Command};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::Out;
use crate::queue::{Queue, State};
use crate::store::{self, Root, Scan, Writer};
use crate::task::{format_timestamp, Task};

/// Runs one command.
pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    let out = Out {
        json: cli.json,
        quiet: cli.quiet,
    };
    match cli.command {
        Command::Init(args) if inside_agent(cli.root.as_deref(), args.dir.as_deref()) => {
            return Err(refusal(&Command::Init(args)));
        }
        Command::Init(args) => return init::run(out, cli.root, args),
        Command::Completions(args) => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut cmd, "taskq", &mut script);
            out.text(String::from_utf8_lossy(&script))?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let ctx = Ctx::new(cli.root, out)?;
    ctx.root.confine()?;
    // Inside an agent, writes go through the factory or are refused (see
    // agent_api); reads run here.
    if let Some(caller) = crate::agent_api::caller(&ctx.root) {
        match crate::agent_api::route(&cli.command) {
            crate::agent_api::Route::Local => {}
            crate::agent_api::Route::Factory => {
                return crate::agent_api::forward(&ctx, &caller, cli.command)
            }
            crate::agent_api::Route::Refused { .. } => return Err(refusal(&cli.command)),
        }
    }
    let result = match cli.command {
        Command::Init(_) | Command::Completions(_) => unreachable!("handled above"),
        Command::Add(args) => add::run(&ctx, args),
        Command::Adopt => adopt(&ctx),
        Command::List(args) => list::run(&ctx, args),
        Command::Show(args) => show::run(&ctx, args),
        Command::Next(args) => next::run(&ctx, args),
        Command::Deps(args) => deps::run(&ctx, args),
        Command::Service(args) => service::run(&ctx, args),
        Command::Report(args) => report::run(&ctx, args),
        Command::Claim(args) => transition::claim(&ctx, args),
        Command::Done(args) => transition::done(&ctx, args),
        Command::Fail(args) => transition::fail(&ctx, args),
        Command::Hold(args) => transition::hold(&ctx, args),
        Command::Release(args) => transition::release(&ctx, args),
        Command::Cancel(args) => transition::cancel(&ctx, args),
        Command::Renew(args) => transition::renew(&ctx, args),
        Command::Check(args) => check::run(&ctx, args),
        Command::Graph(args) => graph::run(&ctx, args),
        Command::Run(args) => run::run(&ctx, args),
        Command::Status(args) => status::run(&ctx, args),
        Command::Stop(args) => stop::run(&ctx, args),
        Command::Approve(args) => approval::approve(&ctx, args),
        Command::Reject(args) => approval::reject(&ctx, args),
        Command::Approval(cmd) => approval::approval(&ctx, cmd),
        Command::Note(args) => note::run(&ctx, args),
        Command::Why(args) => why::run(&ctx, args),
        Command::Log(args) => log::run(&ctx, args),
        Command::Logs(args) => logs::run(&ctx, args),
        Command::Top(args) => crate::top::run(&ctx, args),
        Command::Pause(args) => pause::pause(&ctx, args),
        Command::Resume => pause::resume(&ctx),
    };
    // Paths in problems are relative to the root: show them from here.
    result.map_err(|err| match err {
        Error::Invalid { mut problem } => {
            problem.path = ctx.display_path(&problem.path);
            Error::Invalid { problem }
        }
        other => other,
    })
}

/// The refusal of `command` for an agent (exit 3).
fn refusal(command: &Command) -> Error {
    match crate::agent_api::route(command) {
        crate::agent_api::Route::Refused { message, hint } => Error::conflict_hint(message, hint),
        _ => Error::conflict("refused inside an agent"),
    }
}

/// True when `taskq init` inside an agent would initialise the agent's own
/// root (`$TASKQ_ROOT`): templates and config are a person's.
fn inside_agent(root: Option<&Path>, dir: Option<&Path>) -> bool {
    if std::env::var("TASKQ_AGENT_ID").map_or(true, |a| a.trim().is_empty()) {
        return false;
    }
    let Some(own) = std::env::var_os("TASKQ_ROOT") else {
        return false;
    };
    let target = dir.or(root).unwrap_or(Path::new("."));
    match (std::fs::canonicalize(own), std::fs::canonicalize(target)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `taskq adopt`: opening the writer adopts; report what it did.
fn adopt(ctx: &Ctx) -> Result<ExitCode> {
    with_writer(ctx, |writer| {
        report(ctx, writer);
        if ctx.out.json {
            let ids: Vec<&str> = writer
                .transitions
                .iter()
                .filter(|t| t.from.is_none())
                .map(|t| t.id.as_str())
                .collect();
            ctx.out.json(&ids)?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Opens the queue's writer (see [`Writer::open`]), runs `work` with it,
/// then commits to git what was written: after an error too, as what was
/// written before it is on disk. When a task file changed under the write
/// (a person's editor saved it between taskq's read and its rename:
/// nothing was overwritten), the queue is read again and `work` decides
/// again on the new bytes.
pub fn with_writer<T>(ctx: &Ctx, mut work: impl FnMut(&mut Writer) -> Result<T>) -> Result<T> {
    let mut tries = 0;
    loop {
        let mut writer = Writer::open(&ctx.root)?;
        let result = work(&mut writer);
        writer.commit_git();
        match result {
            Err(e) if e.is_changed() && tries < 10 => tries += 1,
            result => return result,
        }
    }
}

/// Prints every transition a writer made on stderr.
pub fn report(ctx: &Ctx, writer: &Writer) {
    for t in &writer.transitions {
        ctx.out.note(format!("{}: {}", t.id, t.change()));
    }
}

/// Scans for a read-only command and warns about every problem on stderr
/// (the command still answers).
pub fn scan_and_warn(ctx: &Ctx) -> Scan {
    let scan = store::scan(&ctx.root);
    warn_problems(ctx, &scan);
    scan
}

/// Resolves `id` and applies `open` to its file. A factory can move the
/// file to done/ between the scan and `open`: then the queue is scanned
/// again and the file looked up anew (a few times), so the caller never
/// reports a task that exists as missing.
pub fn open_task<T>(
    ctx: &Ctx,
    mut scan: Scan,
    id: &str,
    open: impl Fn(&std::path::Path) -> std::io::Result<T>,
) -> Result<(Scan, usize, T)> {
    let mut tries = 0;
    loop {
        let i = scan.resolve(id)?;
        let path = ctx.root.task_path(&scan.tasks[i]);
        match open(&path) {
            Ok(v) => return Ok((scan, i, v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < 3 => {
                tries += 1;
                scan = store::scan(&ctx.root);
            }
            Err(e) => return Err(crate::error::Error::io(path, e)),
        }
    }
}

/// [`scan_and_warn`] keeping less of each finished task (for commands
/// that only order and label the queue).
pub fn scan_lean_and_warn(ctx: &Ctx) -> Scan {
    let scan = store::scan_lean(&ctx.root);
    warn_problems(ctx, &scan);
    scan
}

/// Warns about dependency problems (unknown ids, cycles) on stderr, at the
/// task's file, so a read command still answers but says what is wrong.
pub fn warn_graph(ctx: &Ctx, scan: &Scan, graph: &crate::graph::Graph) {
    if ctx.out.quiet {
        return;
    }
    for mut p in crate::graph::problems(&ctx.root, scan, graph) {
        p.path = ctx.display_path(&p.path);
        p.hint = None;
        warn_once(ctx, &p);
    }
}

/// Warns about every problem of a scan on stderr.
pub fn warn_problems(ctx: &Ctx, scan: &Scan) {
    for p in &scan.problems {
        let mut p = p.clone();
        p.path = ctx.display_path(&p.path);
        warn_once(ctx, &p);
    }
}

/// Warns about `p` unless this command already did: one that scans twice,
/// or warns about a scan and then its graph, says each thing once.
fn warn_once(ctx: &Ctx, p: &crate::error::Problem) {
    static SHOWN: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut shown = SHOWN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if shown.insert(p.to_string()) {
        ctx.out.warn(p);
    }
}

/// The JSON shape of a task (documented in docs/reference/json.md; stable).
#[derive(Debug, Serialize)]
pub struct TaskJson {
    /// The id (or the file stem, for a file without one).
    pub id: String,
    /// Title, heading or file stem.
    pub title: String,
    /// `status:` as written.
    pub status: String,
    /// Computed: ready, blocked, waiting, running, review, hold, failed,
    /// done, cancelled, invalid.
    pub state: State,
    /// `priority:`.
    pub priority: String,
    /// The priority it runs with (inherited from what waits on it).
    pub effective_priority: String,
    /// `tags:`.
    pub tags: Vec<String>,
    /// `dependencies:`.
    pub dependencies: Vec<String>,
    /// Dependencies not done yet (missing ones included).
    pub blocked_by: Vec<String>,
    /// `assigned:`.
    pub assigned: Option<String>,
    /// `role:`.
    pub role: Option<String>,
    /// `model:`.
    pub model: Option<String>,
    /// `attempts:`.
    pub attempts: u32,
    /// `retries:`.
    pub retries: Option<u32>,
    /// `created:` (RFC 3339).
    pub created: Option<String>,
    /// `started:`.
    pub started: Option<String>,
    /// `completed:`.
    pub completed: Option<String>,
    /// `lease_expires:`.
    pub lease_expires: Option<String>,
    /// `retry_after:`.
    pub retry_after: Option<String>,
    /// `result:`.
    pub result: Option<String>,
    /// `reason:`.
    pub reason: Option<String>,
    /// `result_file:` (the agent's full final message).
    pub result_file: Option<String>,
    /// `approval:`.
    pub approval: Option<String>,
    /// `parent:`.
    pub parent: Option<String>,
    /// `created_by:` (the agent that added it through the agent API).
    pub created_by: Option<String>,
    /// `progress:` (the last `taskq note`).
    pub progress: Option<String>,
    /// `timeout:`.
    pub timeout: Option<String>,
    /// False for a file with no `id:` yet.
    pub has_id: bool,
    /// The file, relative to the root.
    pub path: String,
}

impl TaskJson {
    /// Builds the JSON view of task `i` (read again in full if the scan
    /// was lean).
    pub fn new(root: &Root, queue: &Queue<'_>, i: usize) -> TaskJson {
        TaskJson::of(root, queue, i, &store::full(root, &queue.scan.tasks[i]))
    }

    /// Builds the JSON view of task `i` from `t`, its fields in full.
    pub fn of(root: &Root, queue: &Queue<'_>, i: usize, t: &Task) -> TaskJson {
        let title = store::display_title(root, t);
        let e = t.extra();
        let s = |v: &Option<Box<str>>| v.as_deref().map(str::to_string);
        TaskJson {
            id: t.id.to_string(),
            title,
            status: t.status.to_string(),
            state: queue.state[i],
            priority: t.priority.to_string(),
            effective_priority: crate::task::Priority::from_rank(queue.effective[i]).to_string(),
            tags: t.tags.iter().map(|x| x.to_string()).collect(),
            dependencies: t.dependencies.iter().map(|x| x.to_string()).collect(),
            blocked_by: queue.open_dependencies(i),
            assigned: s(&t.assigned),
            role: s(&t.role),
            model: s(&e.model),
            attempts: t.attempts,
            retries: e.retries,
            created: t.created.map(format_timestamp),
            started: e.started.map(format_timestamp),
            completed: e.completed.map(format_timestamp),
            lease_expires: e.lease_expires.map(format_timestamp),
            retry_after: e.retry_after.map(format_timestamp),
            result: s(&e.result),
            reason: s(&e.reason),
            result_file: s(&e.result_file),
            approval: s(&e.approval),
            parent: s(&e.parent),
            created_by: s(&e.created_by),
            progress: s(&e.progress),
            timeout: s(&e.timeout),
            has_id: t.has_id,
            path: path_string(&root.rel_path(t.folder, &t.rel)),
        }
    }
}

/// A path as a `/`-separated string.
pub fn path_string(p: &Path) -> String {
    p.to_string_lossy().replace('\\', "/")
}

/// The tags of every `--tag` (each `a,b` or one tag), once each.
pub fn tag_list(values: &[String]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    for t in values.iter().flat_map(|v| split_list(v)) {
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    tags
}

/// True when `task` has every tag of `wanted`.
pub fn has_tags(task: &Task, wanted: &[String]) -> bool {
    wanted.iter().all(|w| task.tags.iter().any(|t| **t == **w))
}

/// Splits `a,b, c` into trimmed, non-empty items.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
