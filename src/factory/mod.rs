//! `taskq run`: the factory. It watches the files, and on every change
//! (debounced; on a heartbeat, when a walk says something changed) takes
//! one step under the queue lock: record the agents that ended, ask the
//! [scheduler](schedule) what starts now, apply what the gates decided,
//! and launch the agents. It supervises them (time limits, stops, memory),
//! records everything in the task files and the registry, retries with
//! backoff and fallback models, and survives its own crash (`kill -9`)
//! without losing or repeating work.
//!
//! The phases, a file each:
//!
//! | file | what it does | pure |
//! |---|---|---|
//! | [`event_loop`] | signals, file events, the heartbeat, debouncing; which changes are someone else's | |
//! | [`step`] | one locked step: read the queue and registry, schedule, write in batches, commit to git | |
//! | [`schedule`] | which agents start now, what waits and why | yes |
//! | [`gate`] | whitelist, program, approval, cost cap, forecast | yes |
//! | [`launch`] | register, mark the task, prepare the workspace and command, start the processes | |
//! | [`prompt`] | the prompts an agent is given | yes |
//! | [`session`] | session ids, and which session a retry resumes | |
//! | [`supervise`] | one task per agent: wait, time limit, stop, memory samples | |
//! | [`outcome`] | what an agent's end does to its task | yes |
//! | [`record`] | writes that resolution to the task, the registry and the result file | |
//! | [`recover`] | at start: adopt live agents, finish or mark lost the others | |
//! | [`shutdown`] | children before parents, then the last step | order: yes |
//! | [`report`] | progress lines, the counts line, hooks, history rotation | |
//! | [`notice`] | notifications (each event once, across restarts), stuck agents | |
//! | [`plan`] | what `run --dry-run` and `why` print, from the same schedule | |
//!
//! Crash safety comes from the order of writes, always under the queue
//! lock: registry entry `spawning` → task `running` → child started →
//! registry `active` with pid and process start time; on exit, task first,
//! then registry. A restarted factory adopts agents still alive, finishes
//! the ones that ended while it was down (their exit code is in
//! `agents/logs/exit-codes`), and marks the rest `lost`.

mod api;
mod event_loop;
pub mod gate;
pub mod launch;
mod notice;
pub mod outcome;
pub mod plan;
pub mod prompt;
mod record;
mod recover;
mod report;
pub mod schedule;
mod session;
pub mod shutdown;
mod step;
mod supervise;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::lock::LockGuard;
use crate::output::Out;
use crate::registry::Registry;
use crate::role::{self, Role};
use crate::root::Root;
use crate::store;
use crate::watch;

pub use gate::{Gate, GateAction};
pub use launch::missing_program;
pub use plan::{plan, PlanItem};

/// How `taskq run` was asked to behave.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Exit once nothing is running or runnable.
    pub until_idle: bool,
}

/// Runs the factory until a signal (or idle, with `--until-idle`).
pub fn run(root: &Root, out: Out, opts: Options) -> Result<ExitCode> {
    keep_freed_memory();
    let config = Config::load(root)?;
    let (roles, problems) = role::load_all(root);
    if let Some(p) = problems.into_iter().next() {
        return Err(p.into());
    }
    let Some(mut lock) = LockGuard::try_acquire(&root.run_lock())? else {
        let pid = crate::lock::read_pid(&root.run_lock())
            .map_or_else(|| "unknown".into(), |p| p.to_string());
        return Err(Error::conflict(format!(
            "a factory is already running in {} (pid {pid})",
            root.dir.display()
        )));
    };
    // Absolute paths: the watcher's events and the writer's paths must
    // compare equal (the factory tells its own writes by path).
    let root = Root::new(std::fs::canonicalize(&root.dir).map_err(|e| Error::io(&root.dir, e))?);
    // What agents start ends with them (see spawn::contain). Set up before
    // the pid is written, when others start to see a factory here (the
    // event loop writes it once its signal handlers are in place: a SIGTERM
    // sent as soon as the pid shows is then a clean stop, not a kill).
    crate::spawn::contain::init(&root.dir)?;
    let contained = Contained;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    // The factory's writes (see fsutil::Disk): rewrites swap inodes with
    // spare files instead of creating and freeing one per write (only this
    // process uses the directory: it holds the run lock); each step rereads
    // the task files the step before wrote from memory while they are as
    // written; directory fsyncs once per step.
    let disk = fsutil::Disk::factory(&root.spare_dir());
    let factory = Factory::new(root, config, roles, out, opts, disk);
    let counts_line = factory.counts_line;
    let reaper = runtime.spawn(reap_orphans(factory.config.stop_grace));
    let code = runtime.block_on(factory.main(&mut lock));
    reaper.abort();
    drop(contained);
    if counts_line && code.is_err() {
        // The error goes on a line of its own, not after the counts.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\r\x1b[K");
    }
    // (The factory's Disk, dropped with it, released the spares.)
    drop(lock);
    code
}

/// What the event loop reacts to.
#[derive(Debug)]
enum Event {
    /// Files changed (coalesced).
    Changed,
    /// An agent's process ended.
    Finished(Finished),
    /// An agent's request through the agent API (served by the next step).
    Api(api::Call),
}

/// The end of one agent process.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The agent.
    pub agent: String,
    /// Its exit code (`None`: killed by a signal, or unknown).
    pub exit_code: Option<i32>,
    /// The factory stopped it at its time limit.
    pub timed_out: bool,
    /// Stopped on request (`taskq stop`, shutdown).
    pub stopped: bool,
    /// Its process tree's peak memory.
    pub max_rss_kb: Option<u64>,
    /// When it ended, if before the factory saw it (an agent that ended
    /// while no factory watched); `None`: now.
    pub ended_at: Option<crate::task::Timestamp>,
}

/// An agent this factory watches.
struct Live {
    /// The process group leader.
    pid: u32,
    role: String,
    parent: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    /// The time limit that applies (the task's, else its role's).
    timeout: Duration,
}

/// How long the transitions of fast steps may wait for their git commit.
const GIT_BATCH: Duration = Duration::from_millis(200);

/// The factory's state between steps.
struct Factory {
    /// Paths others changed since the last step; whether only a full read
    /// of the queue will do; whether the cached queue was patched with
    /// them; whether the role templates changed (see `absorb_changes`).
    external_paths: Vec<PathBuf>,
    full_rescan: bool,
    patched: bool,
    roles_stale: bool,
    /// When this factory last committed to git, and whether transitions
    /// wait for the next commit (see `step`).
    last_commit: Option<Instant>,
    git_deferred: bool,
    /// The watched files as this factory last knew them all (after a full
    /// read, or an outside change it followed file by file; see
    /// [`watch::fingerprint`]); `None` once it wrote task files itself
    /// since: the next heartbeat then reads the queue afresh.
    fingerprint: Option<u64>,
    root: Root,
    config: Config,
    roles: Vec<Role>,
    out: Out,
    opts: Options,
    running: HashMap<String, Live>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    /// What the watcher saw.
    seen: watch::Shared,
    /// Files this factory wrote, with their size and mtime right after:
    /// an event on one of them that still matches is its own.
    own: HashMap<PathBuf, Option<(u64, std::time::SystemTime)>>,
    /// The queue as the last step left it (kept current by its writes),
    /// reused while no one else changed a file.
    cache: Option<store::Scan>,
    /// The registry as this factory last wrote it, and the file's stamp.
    reg_cache: Option<(Registry, Option<(u64, std::time::SystemTime)>)>,
    /// The earliest retry backoff to wake up for.
    wake_at: Option<Instant>,
    /// Ready, routable tasks left unspawned in the last step (capacity).
    startable: usize,
    shutting_down: bool,
    /// Why spawning is paused (the daily cost cap), if it is.
    paused: Option<String>,
    /// A person paused the factory (`taskq pause`), in words, if so.
    paused_by_person: Option<String>,
    /// When the last agent started (for `spawn_stagger`).
    last_spawn: Option<Instant>,
    /// Wake up for the next staggered start.
    stagger_wake: Option<Instant>,
    /// Hooks still running.
    hook_threads: Vec<std::thread::JoinHandle<()>>,
    /// Programs already found on a PATH (looked up once, not per agent).
    found: HashSet<(String, Option<String>)>,
    /// Approval files already warned about (stray ones).
    warned: HashSet<PathBuf>,
    /// The task files' errors already shown (each once while it lasts).
    reported: HashSet<String>,
    /// Tasks no role takes, or whose dependencies can never be met,
    /// already shown (each once while it lasts).
    stuck_reported: HashSet<String>,
    /// The queue changed from outside: look for stuck tasks again.
    recheck_stuck: bool,
    /// stderr is a terminal: the counts stay on its last line, redrawn
    /// after each step (see `report`).
    counts_line: bool,
    /// The counts line is on screen (progress lines clear it first).
    counts_shown: std::cell::Cell<bool>,
    stats: Stats,
    rng: u64,
    /// How the factory writes (staged batches, spares, remembered writes);
    /// lent to each step's writer.
    disk: fsutil::Disk,
    /// Steps failed in a row (see `step_or_retry`), while they do.
    step_failures: Option<u32>,
    /// Ends a failed step took, for the next one.
    retry_ends: Vec<Finished>,
    /// Steps in a row that found a file changed under them.
    changed_retries: u32,
    /// A step failed: look for agents it registered but never started.
    reconcile: bool,
    /// agents/factory/runtime.json as this factory keeps it (stuck agents,
    /// notifications sent, the service), and whether it needs writing.
    runtime: crate::notify::Runtime,
    runtime_dirty: bool,
    /// Each running agent's CPU time and output as last seen (stuck
    /// detection).
    samples: HashMap<String, crate::notify::Sample>,
    /// Each agent's secret for the agent API (`TASKQ_AGENT_TOKEN`), in
    /// memory only, while it runs.
    tokens: HashMap<String, String>,
    /// Agent API requests waiting for a step; answers waiting for the
    /// step's writes to be in place; requests to serve again.
    api_queue: Vec<api::Call>,
    api_answers: Vec<(api::Call, crate::agent_api::Response)>,
    api_retry: Vec<api::Call>,
}

#[derive(Default)]
struct Stats {
    spawned: usize,
    done: usize,
    failed: usize,
    retried: usize,
}

impl Factory {
    fn new(
        root: Root,
        config: Config,
        roles: Vec<Role>,
        out: Out,
        opts: Options,
        disk: fsutil::Disk,
    ) -> Factory {
        let (tx, rx) = mpsc::unbounded_channel();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Factory {
            external_paths: Vec::new(),
            full_rescan: false,
            patched: false,
            roles_stale: false,
            last_commit: None,
            git_deferred: false,
            fingerprint: None,
            root,
            config,
            roles,
            out,
            opts,
            running: HashMap::new(),
            tx,
            rx,
            seen: Arc::new(std::sync::Mutex::new(watch::Seen::default())),
            own: HashMap::new(),
            cache: None,
            reg_cache: None,
            wake_at: None,
            startable: 0,
            shutting_down: false,
            paused: None,
            paused_by_person: None,
            last_spawn: None,
            stagger_wake: None,
            warned: HashSet::new(),
            reported: HashSet::new(),
            stuck_reported: HashSet::new(),
            recheck_stuck: true,
            counts_line: !out.quiet
                && std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("TERM").is_none_or(|t| t != "dumb"),
            counts_shown: std::cell::Cell::new(false),
            hook_threads: Vec::new(),
            found: HashSet::new(),
            stats: Stats::default(),
            rng: seed | 1,
            step_failures: None,
            retry_ends: Vec::new(),
            changed_retries: 0,
            reconcile: false,
            disk,
            runtime: crate::notify::Runtime::default(),
            runtime_dirty: true,
            samples: HashMap::new(),
            tokens: HashMap::new(),
            api_queue: Vec::new(),
            api_answers: Vec::new(),
            api_retry: Vec::new(),
        }
    }

    /// A random number in [0, 1) (xorshift; jitter needs no more).
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        d.mul_f64(0.9 + 0.2 * self.random())
    }

    fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// The role an agent ran as (a minimal stand-in when its template is
    /// gone since).
    fn role_or_fallback(&self, name: &str) -> Role {
        self.role(name)
            .cloned()
            .unwrap_or_else(|| fallback_role(name))
    }
}

fn fallback_role(name: &str) -> Role {
    Role {
        name: name.to_string(),
        path: PathBuf::new(),
        settings: serde_yaml::from_str("prefix: X").expect("minimal settings parse"),
        soul: String::new(),
    }
}

/// A file's size and mtime, or `None` when it does not exist.
fn file_stamp(path: &std::path::Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn path_str(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Ends the containment when `run` returns, on an error too (see
/// [`crate::spawn::contain::close`]).
struct Contained;

impl Drop for Contained {
    fn drop(&mut self) {
        crate::spawn::contain::close();
    }
}

/// Once the factory has adopted the agents a crashed factory left, the
/// leftovers of the ones that ended meanwhile end (this task runs only
/// when the event loop first waits, after the recovery; the second is for
/// a runtime that would run tasks before the main future).
///
/// Then, for a subreaper: its orphans that end become its zombies, reaped
/// here every second (a read of the factory's children; nothing when none
/// is left), with the leftovers of an ended agent that escaped its end.
async fn reap_orphans(grace: Duration) {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = tokio::task::spawn_blocking(move || crate::spawn::contain::end_stale(grace)).await;
    if !crate::spawn::contain::is_subreaper() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for agent in crate::spawn::contain::sweep() {
            let end = move || crate::spawn::contain::end_tree(&agent, 0, Duration::from_secs(1));
            let _ = tokio::task::spawn_blocking(end).await;
        }
    }
}

/// A step allocates and frees the same buffers (the registry's text, the
/// scan's vectors) again and again. glibc would hand the top of the heap
/// back to the kernel after each, and each next step would fault the pages
/// in again (~20 faults per agent); keeping up to 8 MB freed costs no more
/// than the peak already used.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before the threads
    // of the factory start.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 8 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Builders for the pure phases' unit tests: tasks and roles from text,
/// no disk.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::role::Role;
    use crate::task::{Folder, Task};

    /// A task with id `id` and the extra header lines `header`.
    pub fn task(id: &str, header: &str) -> Task {
        let status = match header.contains("status:") {
            true => "",
            false => "status: ready\n",
        };
        let nl = if header.is_empty() || header.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        let text = format!("---\nid: {id}\ntitle: {id}\n{status}{header}{nl}---\nbody\n");
        let layout = crate::frontmatter::split(text.as_bytes(), true).expect("a header");
        let mut problems = Vec::new();
        let t = crate::store::task_from_bytes(
            text.as_bytes(),
            layout,
            Folder::Todo,
            &format!("{id}.md"),
            std::path::Path::new(id),
            &mut problems,
        )
        .expect("a task");
        assert!(problems.iter().all(|p| p.warning), "{id}: {problems:?}");
        t
    }

    /// A role named `name` with the settings `yaml`.
    pub fn role(name: &str, yaml: &str) -> Role {
        Role {
            name: name.to_string(),
            path: format!("agents/templates/{name}.md").into(),
            settings: serde_yaml::from_str(yaml).expect("role settings"),
            soul: String::new(),
        }
    }
}
