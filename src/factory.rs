//! `taskq run`: the factory. It watches the files, and on every change
//! (debounced) rescans the queue (on a heartbeat, when a stat walk says
//! something changed) and spawns role agents for
//! ready tasks within the global and per-role limits; it monitors them,
//! records everything in the task files and the registry, retries with
//! backoff and fallback models, enforces timeouts, and survives its own
//! crash (`kill -9`) without losing or repeating work.
//!
//! Crash safety comes from the order of writes, always under the queue
//! lock: registry entry `spawning` → task `running` → child started →
//! registry `active` with pid and process start time; on exit, task first,
//! then registry. A restarted factory adopts agents still alive, finishes
//! the ones that ended while it was down (their exit code is in
//! `agents/logs/exit-codes`), and marks the rest `lost`.
//!
//! A step's writes go out in batches (see `fsutil::Disk::stage`): the registry
//! and the claimed tasks before any agent starts, then the ends of the
//! agents they replace while the new ones start.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::agent::{self, Invocation, Outcome, Session};
use crate::approval::{self, Decision};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::frontmatter::{self, Change, Layout};
use crate::fsutil;
use crate::hooks;
use crate::lock::LockGuard;
use crate::output::Out;
use crate::queue::{Queue, State};
use crate::registry::{Agent, AgentStatus, Registry};
use crate::role::{self, Role};
use crate::spawn;
use crate::store::{self, Root, Writer};
use crate::task::{format_timestamp, Folder, Status, Task, Timestamp};
use crate::watch;

/// How `taskq run` was asked to behave.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Exit 0 once nothing is running or runnable.
    pub until_idle: bool,
}

/// The daemon lock: one factory per root.
pub fn run_lock(root: &Root) -> PathBuf {
    root.factory_dir().join("run.lock")
}

/// Runs the factory until a signal (or idle, with `--until-idle`).
pub fn run(root: &Root, out: Out, opts: Options) -> Result<ExitCode> {
    keep_freed_memory();
    let config = Config::load(root)?;
    let (roles, problems) = role::load_all(root);
    if let Some(p) = problems.into_iter().next() {
        return Err(p.into());
    }
    let Some(mut lock) = LockGuard::try_acquire(&run_lock(root))? else {
        let pid = crate::lock::read_pid(&run_lock(root))
            .map_or_else(|| "unknown".into(), |p| p.to_string());
        return Err(Error::conflict(format!(
            "a factory is already running in {} (pid {pid})",
            root.dir.display()
        )));
    };
    lock.write_pid()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    // Absolute paths: the watcher's events and the writer's paths must
    // compare equal (the factory tells its own writes by path).
    let root = Root::new(std::fs::canonicalize(&root.dir).map_err(|e| Error::io(&root.dir, e))?);
    // Rewrites swap inodes with spare files instead of creating and freeing
    // one per write (see fsutil). Only this process uses the directory: it
    // holds the run lock. Each step rereads task files the step before
    // wrote: from memory while they are as written. Directory fsyncs wait
    // for the end of the step. The spares are emptied when the factory,
    // which owns the Disk, ends.
    let spare_dir = root.dir.join("agents").join("factory").join(".spare");
    let disk = fsutil::Disk::factory(&spare_dir);
    let factory = Factory::new(root, config, roles, out, opts, disk);
    let counts_line = factory.counts_line;
    let code = runtime.block_on(factory.main());
    if counts_line && code.is_err() {
        // The error goes on a line of its own, not after the counts.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\r\x1b[K");
    }
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
}

/// The end of one agent process.
#[derive(Debug)]
struct Finished {
    agent: String,
    exit_code: Option<i32>,
    timed_out: bool,
    stopped: bool,
    max_rss_kb: Option<u64>,
}

/// One agent to start in this step.
struct Planned {
    task: String,
    role: Role,
    model: Option<String>,
    /// A fixed workspace (a tester works in its builder's).
    workspace: Option<PathBuf>,
    /// The builder agent whose work this agent reviews.
    review_of: Option<String>,
}

/// Whether a ready task may start now.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Yes.
    Go,
    /// Not yet, for this reason (a person must act, or a forecast).
    Wait(String),
    /// Not now, and nothing else either (the daily cost cap).
    Pause(String),
    /// Never as it is: the factory changes the task.
    Act(GateAction),
}

/// What the factory does to a task a gate stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum GateAction {
    /// Fail it with this reason (a model outside the whitelist).
    Fail(String),
    /// Cancel it (its approval was rejected).
    Cancel(String),
    /// Write its pending approval file.
    RequestApproval {
        /// The role that would run it.
        role: String,
        /// The model it would run with.
        model: Option<String>,
    },
}

/// The gates a ready task passes before it runs: the model whitelist, a
/// person's approval, the daily cost cap and the cost forecast.
pub fn gate(
    root: &Root,
    config: &Config,
    t: &Task,
    role: &Role,
    model: Option<&str>,
    reg: &Registry,
    spent: f64,
) -> Gate {
    if !config.model_whitelist.is_empty() {
        if let Some(m) = model {
            if !config.model_whitelist.iter().any(|w| w == m) {
                return Gate::Act(GateAction::Fail(format!(
                    "model `{m}` is not in model_whitelist ({}); refused, not swapped",
                    config.model_whitelist.join(", ")
                )));
            }
        }
    }
    if approval::needs_approval(t, Some(role), config) {
        match approval::decision(root, &t.id) {
            Decision::Approved(_) => {}
            Decision::Rejected(_, reason) => {
                return Gate::Act(GateAction::Cancel(format!(
                    "approval rejected{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                )))
            }
            Decision::Pending(p) => {
                let shown = p
                    .strip_prefix(&root.dir)
                    .unwrap_or(&p)
                    .display()
                    .to_string();
                return Gate::Wait(format!("waiting for approval: {shown}"));
            }
            Decision::Missing => {
                return Gate::Act(GateAction::RequestApproval {
                    role: role.name.clone(),
                    model: model.map(str::to_string),
                })
            }
        }
    }
    if let Some(cap) = config.daily_cost_cap_usd {
        if spent >= cap {
            return Gate::Pause(format!(
                "daily cost cap reached (${spent:.2} of ${cap:.2} spent today); resumes at local midnight"
            ));
        }
        if let Some(estimate) = reg.median_cost(&role.name, model) {
            if spent + estimate > cap {
                return Gate::Wait(format!(
                    "forecast ${estimate:.2} (median of past {} runs) would pass the daily cost cap (${spent:.2} of ${cap:.2} spent)",
                    role.name
                ));
            }
        }
    }
    Gate::Go
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
    /// When the last agent started (for `spawn_stagger`).
    last_spawn: Option<Instant>,
    /// Wake up for the next staggered start.
    stagger_wake: Option<Instant>,
    /// Hooks still running.
    hook_threads: Vec<std::thread::JoinHandle<()>>,
    /// Programs already found on a PATH (looked up once, not per agent).
    found: std::collections::HashSet<(String, Option<String>)>,
    /// Approval files already warned about (stray ones).
    warned: std::collections::HashSet<PathBuf>,
    /// The task files' errors already shown (each once while it lasts).
    reported: std::collections::HashSet<String>,
    /// stderr is a terminal: the counts stay on its last line, redrawn
    /// after each step (see [`Factory::draw_counts`]).
    counts_line: bool,
    /// The counts line is on screen (progress lines clear it first).
    counts_shown: std::cell::Cell<bool>,
    stats: Stats,
    rng: u64,
    /// How this factory writes (see `fsutil::Disk::factory`): handed to
    /// each step's writer and taken back after.
    disk: fsutil::Disk,
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
            last_spawn: None,
            stagger_wake: None,
            warned: std::collections::HashSet::new(),
            reported: std::collections::HashSet::new(),
            counts_line: !out.quiet
                && std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("TERM").is_none_or(|t| t != "dumb"),
            counts_shown: std::cell::Cell::new(false),
            hook_threads: Vec::new(),
            found: std::collections::HashSet::new(),
            stats: Stats::default(),
            rng: seed | 1,
            disk,
        }
    }

    /// Says which id-less files the writer's repairs adopted (before
    /// anything they start).
    fn report_adopted(&self, w: &Writer) {
        for t in w.transitions.iter().filter(|t| t.from.is_none()) {
            self.progress(format!(
                "adopted {} as {}",
                t.note.trim_start_matches("adopted "),
                t.id
            ));
        }
    }

    /// Shows each error of the task files once, as it appears (a broken
    /// header dropped into tasks/todo while the factory runs), at its file
    /// and line; one fixed and broken again is shown again.
    fn report_problems(&mut self, scan: &store::Scan) {
        let now: std::collections::HashSet<String> = scan
            .problems
            .iter()
            .filter(|p| !p.warning)
            .map(|p| {
                let key = p.to_string();
                if !self.reported.contains(&key) {
                    self.out.warn(p);
                }
                key
            })
            .collect();
        self.reported = now;
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

    /// Fires a hook, keeping its thread so the factory waits for it
    /// before it exits (`--until-idle` would otherwise cut it off).
    fn hook(&mut self, event: &str, payload: serde_json::Value) {
        self.hook_threads.retain(|h| !h.is_finished());
        if let Some(h) = hooks::fire(&self.root, event, payload, self.config.hook_timeout) {
            self.hook_threads.push(h);
        }
    }

    /// Waits for the hooks still running (each is time-limited).
    fn join_hooks(&mut self) {
        for h in self.hook_threads.drain(..) {
            let _ = h.join();
        }
    }

    fn progress(&self, text: impl AsRef<str>) {
        self.clear_counts();
        let now = chrono::Local::now().format("%H:%M:%S");
        self.out.note(format!("{now} {}", text.as_ref()));
    }

    /// Takes the counts line off the screen (before anything else is
    /// printed on stderr).
    fn clear_counts(&self) {
        if self.counts_shown.replace(false) {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\r\x1b[K");
        }
    }

    /// In a terminal: the queue's counts on the last line of stderr, in
    /// place (`running 3 · queued 12 · review 1 · failed 0 · done 40`).
    fn draw_counts(&self, scan: &store::Scan) {
        if !self.counts_line {
            return;
        }
        let (mut queued, mut review, mut failed, mut done) = (0, 0, 0, 0);
        for t in &scan.tasks {
            match (t.folder, t.status) {
                (Folder::Done, Status::Done) => done += 1,
                (Folder::Todo, Status::Ready) => queued += 1,
                (Folder::Todo, Status::Review) => review += 1,
                (Folder::Todo, Status::Failed) => failed += 1,
                _ => {}
            }
        }
        let line = format!(
            "\r\x1b[Krunning {} · queued {queued} · review {review} · failed {failed} · done {done}",
            self.running.len()
        );
        use std::io::Write as _;
        let mut stderr = std::io::stderr().lock();
        if stderr
            .write_all(line.as_bytes())
            .and_then(|()| stderr.flush())
            .is_ok()
        {
            self.counts_shown.set(true);
        }
    }

    async fn main(mut self) -> Result<ExitCode> {
        use tokio::signal::unix::{signal, SignalKind};
        let _watcher = match self.config.watch {
            true => Some(watch::start(
                &self.root,
                Arc::clone(&self.seen),
                self.tx.clone(),
                || Event::Changed,
            )?),
            false => None,
        };
        let mut sigterm =
            signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
        let mut sigint =
            signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
        self.progress(format!(
            "factory started in {} (max_concurrent {}, {} roles)",
            self.root.dir.display(),
            self.config.max_concurrent,
            self.roles.len()
        ));
        let finished = self.recover()?;
        self.step(finished)?;
        let mut heartbeat = tokio::time::Instant::now() + self.jittered(self.config.heartbeat);
        loop {
            if self.opts.until_idle && self.is_idle() {
                self.progress(format!(
                    "idle: {} spawned, {} done, {} failed, {} retried",
                    self.stats.spawned, self.stats.done, self.stats.failed, self.stats.retried
                ));
                self.join_hooks();
                return Ok(ExitCode::SUCCESS);
            }
            let far = tokio::time::Instant::now() + Duration::from_secs(86400);
            let wake = self.wake_at.map_or(far, tokio::time::Instant::from_std);
            let mut finished = Vec::new();
            // Someone else changed a file (or the heartbeat): read the queue
            // afresh. Events on files this factory just wrote are its own.
            let mut rescan = false;
            let mut due = false;
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(Event::Changed) => rescan |= self.external_change(),
                    Some(Event::Finished(f)) => finished.push(f),
                    None => return Ok(ExitCode::SUCCESS),
                },
                () = tokio::time::sleep_until(heartbeat) => {
                    heartbeat = tokio::time::Instant::now() + self.jittered(self.config.heartbeat);
                    // Reread the queue if anything changed that the watcher
                    // may have missed; step anyway (leases and backoffs run
                    // out with time, not with files). The fresh step walks
                    // the files again for the next heartbeat.
                    rescan = match self.fingerprint {
                        Some(before) => watch::fingerprint(&self.root, !self.config.watch) != before,
                        None => true,
                    };
                    self.full_rescan |= rescan;
                    due = true;
                    self.rotate_history();
                }
                () = tokio::time::sleep_until(wake) => due = true,
                _ = sigterm.recv() => return self.shutdown("SIGTERM").await,
                _ = sigint.recv() => return self.shutdown("SIGINT").await,
            }
            if !rescan && !due && finished.is_empty() {
                continue; // only the echo of this factory's own writes
            }
            // Debounce: let an editor's save or a `git checkout` settle
            // (quiet for 5 ms, at most 50 ms); take the agents that have
            // ended meanwhile too (without waiting for more: a step is
            // slower than a short job, so ends pile up on their own), then
            // act once.
            let settle = tokio::time::Instant::now() + Duration::from_millis(50);
            loop {
                let event = if rescan {
                    let until =
                        (tokio::time::Instant::now() + Duration::from_millis(5)).min(settle);
                    tokio::time::timeout_at(until, self.rx.recv())
                        .await
                        .ok()
                        .flatten()
                } else {
                    // What is already there, without a timer (tokio's
                    // round up to the next millisecond).
                    self.rx.try_recv().ok()
                };
                match event {
                    Some(Event::Changed) => rescan |= self.external_change(),
                    Some(Event::Finished(f)) => finished.push(f),
                    None => break,
                }
            }
            if rescan {
                self.absorb_changes();
            }
            let was_idle = self.is_idle();
            let (ended, began) = (finished.len(), std::time::Instant::now());
            self.step(finished)?;
            tracing::debug!(ended, running = self.running.len(), took = ?began.elapsed(), "step");
            if self.is_idle() && !was_idle {
                self.hook("on-idle",
                    json!({"status": "idle", "spawned": self.stats.spawned, "done": self.stats.done, "failed": self.stats.failed}));
            }
        }
    }

    /// True when the watcher saw a change this factory did not make
    /// itself (a file it wrote still as it left it is its own echo).
    fn external_change(&mut self) -> bool {
        let seen = watch::take(&self.seen);
        if seen.overflow {
            self.full_rescan = true;
            return true;
        }
        let mut any = false;
        for p in seen.paths {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            if name.starts_with(crate::fsutil::TEMP_PREFIX) {
                continue;
            }
            let external = match self.own.get(&p) {
                Some(stamp) => *stamp != file_stamp(&p),
                None => true,
            };
            if external {
                any = true;
                self.external_paths.push(p);
            }
        }
        any
    }

    /// What the changes others made mean for the queue in memory: the task
    /// files that changed are read again (a new file in a queue of 10,000
    /// is one read, not 10,000), or, after a watcher overflow, a heartbeat
    /// that found a change, or a change a patch cannot follow (see
    /// `Scan::refresh`), the whole queue.
    fn absorb_changes(&mut self) {
        let paths = std::mem::take(&mut self.external_paths);
        self.disk.forget_writes();
        let templates = self.root.dir.join("agents").join("templates");
        if paths.iter().any(|p| p.starts_with(&templates)) {
            self.roles_stale = true;
        }
        if std::mem::take(&mut self.full_rescan) {
            self.cache = None;
            return;
        }
        let tasks = self.root.dir.join("tasks");
        let task_paths: Vec<PathBuf> = paths
            .into_iter()
            .filter(|p| p.starts_with(&tasks))
            .collect();
        if task_paths.is_empty() {
            return; // approvals are read from the files at every step
        }
        let refreshed = self
            .cache
            .as_mut()
            .is_some_and(|scan| scan.refresh(&self.root, &task_paths));
        if refreshed {
            self.patched = true;
        } else {
            self.cache = None;
        }
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.startable == 0 && self.wake_at.is_none()
    }

    /// One scheduling step under the queue lock: record finished agents,
    /// then spawn what the limits allow.
    fn step(&mut self, finished: Vec<Finished>) -> Result<()> {
        // The queue: as the last step left it while no one else changed a
        // file, else read afresh (with the repairs a writer makes).
        let fresh = self.cache.is_none();
        let patched = std::mem::take(&mut self.patched);
        let disk = std::mem::take(&mut self.disk);
        let mut w = Writer::with_disk(&self.root, self.cache.take(), disk)?;
        // Files read again: the repairs a full read makes (adoption of
        // id-less files above all).
        if patched {
            if let Err(e) = w.repair() {
                w.commit_git();
                self.disk = w.into_disk();
                return Err(e);
            }
        }
        self.clear_counts();
        if fresh || patched {
            self.report_problems(&w.scan);
        }
        // The registry: as this factory last wrote it, unless someone
        // (`taskq stop`) changed the file since.
        let path = Registry::path(&self.root);
        let mut reg = match self.reg_cache.take() {
            Some((reg, stamp)) if stamp == file_stamp(&path) => reg,
            _ => match Registry::load(&self.root) {
                Ok(reg) => reg,
                Err(e) => {
                    w.commit_git();
                    self.disk = w.into_disk();
                    return Err(e);
                }
            },
        };
        // The step's writes are staged and written together (see fsutil):
        // before any agent starts, and at the end, under the lock.
        w.disk.stage();
        let mut result = self.step_with(&mut w, &mut reg, finished, fresh);
        let committed = w.disk.commit();
        if result.is_ok() {
            result = committed;
        }
        // The renames of this step become durable together, under the lock.
        w.disk.flush_dir_syncs();
        // Remember what this step wrote, so its echo is not a "change".
        if fresh {
            self.own.clear();
        }
        let wrote = w.changed.iter().any(|p| watch::is_watched(&self.root, p));
        if fresh || (patched && !wrote) {
            // The files as this factory now knows them (read in full, or
            // brought up to date from the events' paths): what the next
            // heartbeat compares with (after the step, so it delays no
            // agent).
            self.fingerprint = Some(watch::fingerprint(&self.root, !self.config.watch));
        } else if wrote {
            // It wrote task files itself: agents starting and ending will
            // change them again before the heartbeat, so a walk now would be
            // out of date by then. The next heartbeat reads the queue once
            // instead.
            self.fingerprint = None;
        }
        for p in &w.changed {
            let stamp = w.disk.written_stamp(p).unwrap_or_else(|| file_stamp(p));
            self.own.insert(p.clone(), stamp);
        }
        // Git: a commit per step, unless steps come faster than that is
        // worth (a commit is two git processes, 20-40 ms): then the step's
        // transitions wait in git's pending file and go in the next commit,
        // at most GIT_BATCH later (a crash loses nothing; see git::defer).
        if w.in_git() {
            let recent = self.last_commit.is_some_and(|t| t.elapsed() < GIT_BATCH);
            if recent && !self.shutting_down && !w.changed.is_empty() {
                w.git_mode = store::GitMode::Defer;
                self.git_deferred = true;
            } else if !w.changed.is_empty() || self.git_deferred {
                if self.git_deferred {
                    w.git_mode = store::GitMode::Flush;
                }
                self.last_commit = Some(Instant::now());
                self.git_deferred = false;
            }
            if self.git_deferred {
                let at = self
                    .last_commit
                    .map_or_else(Instant::now, |t| t + GIT_BATCH);
                self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
            }
        }
        // After an error, read both afresh: what is in memory may not have
        // reached the files.
        if result.is_ok() {
            self.draw_counts(&w.scan);
            self.reg_cache = Some((reg, file_stamp(&path)));
            self.cache = Some(std::mem::take(&mut w.scan));
        } else {
            w.disk.forget_writes();
        }
        // The step's git commit (or its place in the pending file), under
        // the lock; then the Disk is the factory's again.
        w.commit_git();
        self.disk = w.into_disk();
        result
    }

    fn step_with(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        finished: Vec<Finished>,
        fresh: bool,
    ) -> Result<()> {
        // Agents that ended free their slots at once: their successors
        // start first, then the ends are recorded while those run (a step
        // is longer than a short job; this keeps the cores busy).
        let mut ended: Vec<(Finished, Option<Live>)> = finished
            .into_iter()
            .map(|f| {
                let live = self.running.remove(&f.agent);
                (f, live)
            })
            .collect();
        if fresh || std::mem::take(&mut self.roles_stale) {
            self.reload_roles();
        }
        self.report_adopted(w);
        let strays = approval::stray(&self.root, |task| {
            w.scan.get(task).map(|t| {
                (t.folder == Folder::Done || t.status.is_closed()).then(|| {
                    t.extra()
                        .completed
                        .unwrap_or(w.now - chrono::Duration::days(36500))
                })
            })
        });
        for (path, why) in strays {
            if self.warned.insert(path.clone()) {
                let shown = path
                    .strip_prefix(&self.root.dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                self.progress(format!("warning: {shown} {why}"));
            }
        }
        let any_ended = !ended.is_empty();
        let mut dirty = any_ended;
        // Under a daily cost cap, what the ended agents cost counts before
        // anything new starts: then the ends are recorded first.
        let early = !self.shutting_down && self.config.daily_cost_cap_usd.is_none();
        if early {
            // Records the ends while the new agents start.
            dirty |= self.spawn_ready(w, reg, &mut ended)?;
        }
        for (f, live) in ended {
            self.finish(w, reg, f, live)?;
        }
        // What the ends made runnable (retries, reviews, dependents).
        if !self.shutting_down && (any_ended || !early) {
            dirty |= self.spawn_ready(w, reg, &mut Vec::new())?;
        }
        if dirty {
            reg.max_concurrent = self.config.max_concurrent;
            reg.save(&self.root, &mut w.disk, w.now)?;
            // Registry changes go in the same commit as their task changes.
            w.touch(Registry::path(&self.root));
        }
        self.schedule_wake(w);
        Ok(())
    }

    fn reload_roles(&mut self) {
        let (roles, problems) = role::load_all(&self.root);
        if problems.is_empty() {
            self.roles = roles;
        } else {
            for p in problems {
                tracing::warn!("{p} (keeping the roles loaded before)");
            }
        }
    }

    /// The next retry backoff to wake up for, if any.
    fn schedule_wake(&mut self, w: &Writer) {
        let now = w.now;
        self.wake_at = w
            .scan
            .tasks
            .iter()
            .filter(|t| t.status == Status::Ready && t.assigned.is_none())
            .filter_map(|t| t.extra().retry_after)
            .filter(|r| *r > now)
            .min()
            .map(|r| {
                let wait = (r - now).to_std().unwrap_or_default();
                Instant::now() + wait + Duration::from_millis(5)
            });
        if let Some(s) = self.stagger_wake.take() {
            self.wake_at = Some(self.wake_at.map_or(s, |w| w.min(s)));
        }
    }

    /// Decides whether a ready task may start now (see [`Gate`]).
    fn gate(&self, t: &Task, role: &Role, model: Option<&str>, reg: &Registry, spent: f64) -> Gate {
        gate(&self.root, &self.config, t, role, model, reg, spent)
    }

    /// Spawns agents for reviews and ready tasks in queue order, within the
    /// limits and gates; records the `ended` agents (draining it) while
    /// those start. Returns true when the registry changed.
    fn spawn_ready(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        ended: &mut Vec<(Finished, Option<Live>)>,
    ) -> Result<bool> {
        let mut per_role: HashMap<String, usize> = HashMap::new();
        for live in self.running.values() {
            *per_role.entry(live.role.clone()).or_default() += 1;
        }
        // Only the cost cap reads it, and it sums the whole registry.
        let spent = match self.config.daily_cost_cap_usd {
            Some(_) => reg.spent_today(w.now),
            None => 0.0,
        };
        // The memory budget: what running agents use now, plus each new
        // agent's expected peak as it is planned.
        let budget_kb = self.config.max_agent_memory_mb.map(|mb| mb * 1024);
        let mut used_kb: u64 = if budget_kb.is_some() {
            self.running
                .values()
                .filter_map(|l| spawn::tree_rss_kb(l.pid))
                .sum()
        } else {
            0
        };
        let mut fits = |role: &Role| -> bool {
            let Some(budget) = budget_kb else { return true };
            // Expected peak: the role's median past peak; before any run is
            // measured, 300 MB for a model CLI (measured: 150 MB to 1 GB).
            let need =
                reg.median_rss_kb(&role.name)
                    .unwrap_or(match role.settings.agent.as_str() {
                        "shell" | "command" => 10 * 1024,
                        _ => 300 * 1024,
                    });
            // With nothing running, one agent always may start.
            if used_kb > 0 && used_kb + need > budget {
                return false;
            }
            used_kb += need;
            true
        };
        let mut plan: Vec<Planned> = Vec::new();
        let mut actions: Vec<(String, GateAction)> = Vec::new();
        let mut startable = 0;
        let mut paused = None;
        let stagger = self.config.spawn_stagger;
        let staggered = |plan: &[Planned], last: Option<Instant>| {
            !stagger.is_zero() && (!plan.is_empty() || last.is_some_and(|l| l.elapsed() < stagger))
        };
        // Reviews first: finishing work beats starting more.
        for t in &w.scan.tasks {
            if t.folder != Folder::Todo || t.status != Status::Review || t.broken {
                continue;
            }
            let e = t.extra();
            let (Some(review_role), Some(builder)) =
                (e.review_role.as_deref(), e.builder.as_deref())
            else {
                continue;
            };
            let assigned = t.assigned.as_deref().unwrap_or("");
            if self.running.contains_key(assigned) || ended.iter().any(|(f, _)| f.agent == assigned)
            {
                continue; // its tester is at work, or its end not yet recorded
            }
            let Some(role) = self.role(review_role).cloned() else {
                continue;
            };
            let used = per_role.entry(role.name.clone()).or_default();
            if self.running.len() + plan.len() >= self.config.max_concurrent
                || *used >= role.settings.max_concurrent
                || staggered(&plan, self.last_spawn)
                || !fits(&role)
            {
                startable += 1;
                continue;
            }
            let model = agent::model_for_attempt(&role, None, 1);
            match self.gate(t, &role, model.as_deref(), reg, spent) {
                Gate::Go => {}
                Gate::Wait(_) => continue,
                Gate::Pause(why) => {
                    paused = Some(why);
                    continue;
                }
                Gate::Act(action) => {
                    actions.push((t.id.to_string(), action));
                    continue;
                }
            }
            *used += 1;
            let workspace = reg
                .agents
                .get(builder)
                .and_then(|a| a.workspace.clone())
                .map_or_else(
                    || Path::new("agents").join("workspaces").join(builder),
                    PathBuf::from,
                );
            plan.push(Planned {
                task: t.id.to_string(),
                role,
                model,
                workspace: Some(workspace),
                review_of: Some(builder.to_string()),
            });
        }
        {
            let queue = Queue::new(&w.scan, w.now);
            for r in queue.ready(|_| true) {
                let t = &w.scan.tasks[r.index];
                let Some(role) = role::route(t, &self.roles, &self.config) else {
                    continue;
                };
                let used = per_role.entry(role.name.clone()).or_default();
                if self.running.len() + plan.len() >= self.config.max_concurrent
                    || *used >= role.settings.max_concurrent
                    || !fits(role)
                {
                    startable += 1;
                    continue;
                }
                let model =
                    agent::model_for_attempt(role, t.extra().model.as_deref(), t.attempts + 1);
                match self.gate(t, role, model.as_deref(), reg, spent) {
                    Gate::Go => {}
                    Gate::Wait(_) => continue,
                    Gate::Act(action) => {
                        actions.push((t.id.to_string(), action));
                        continue;
                    }
                    Gate::Pause(why) => {
                        paused = Some(why);
                        break;
                    }
                }
                if staggered(&plan, self.last_spawn) {
                    startable += 1;
                    break;
                }
                *used += 1;
                plan.push(Planned {
                    task: t.id.to_string(),
                    role: role.clone(),
                    model,
                    workspace: None,
                    review_of: None,
                });
            }
        }
        self.startable = startable;
        if !stagger.is_zero() && startable > 0 {
            self.stagger_wake = Some(Instant::now() + stagger);
        }
        match (&paused, &self.paused) {
            (Some(why), None) => {
                self.progress(format!("paused: {why}"));
                self.hook("on-cost-cap",
                    json!({"reason": why, "spent_today_usd": spent, "cap_usd": self.config.daily_cost_cap_usd}));
            }
            (None, Some(_)) => self.progress("resumed: under the daily cost cap"),
            _ => {}
        }
        self.paused = paused;
        for (task, action) in actions {
            self.apply_gate_action(w, &task, action)?;
        }
        if plan.is_empty() {
            return Ok(false);
        }
        // 1. Register every agent as `spawning` before anything starts.
        let mut spawns = Vec::new();
        for p in plan {
            let i = w.scan.position(&p.task).expect("planned from this scan");
            let t = &w.scan.tasks[i];
            let attempt = if p.review_of.is_some() {
                t.extra().review_errors + 1
            } else {
                t.attempts + 1
            };
            let agent_id = reg.allocate(&p.role.settings.prefix);
            let workspace =
                p.workspace
                    .clone()
                    .unwrap_or_else(|| match p.role.settings.workspace.as_str() {
                        "root" => PathBuf::new(),
                        _ => Path::new("agents").join("workspaces").join(&agent_id),
                    });
            let resumed = if p.review_of.is_none() {
                resume_session(reg, &p.role, &p.task)
            } else {
                None
            };
            let workspace = match resumed.as_ref().and_then(|(_, ws)| ws.clone()) {
                Some(ws) if p.role.settings.workspace == "dir" => PathBuf::from(ws),
                _ => workspace,
            };
            let resume = resumed.map(|(session, _)| session);
            let session = resume.clone().unwrap_or_else(new_session_id);
            let parent = p
                .review_of
                .clone()
                .or_else(|| t.extra().parent.as_deref().map(str::to_string));
            reg.agents.insert(
                agent_id.clone(),
                Agent {
                    id: agent_id.clone(),
                    role: p.role.name.clone(),
                    task: p.task.clone(),
                    status: AgentStatus::Spawning,
                    adapter: p.role.settings.agent.clone(),
                    model: p.model.clone(),
                    pid: None,
                    pid_start: None,
                    parent,
                    attempt,
                    spawned: w.now,
                    completed: None,
                    exit_code: None,
                    duration_ms: None,
                    cost_usd: None,
                    tokens: None,
                    num_turns: None,
                    session_id: (p.role.settings.agent == "claude").then(|| session.clone()),
                    result: None,
                    reason: None,
                    workspace: Some(path_str(&workspace)),
                    log: Some(path_str(&log_path(&agent_id))),
                    max_rss_kb: None,
                    branch: None,
                    repo: None,
                    test_status: None,
                    tested_by: None,
                    cancel_task: false,
                },
            );
            spawns.push((agent_id, p, workspace, session, resume.is_some()));
        }
        reg.save(&self.root, &mut w.disk, w.now)?;
        w.touch(Registry::path(&self.root));
        // 2. Mark the tasks.
        for (agent_id, p, ..) in &spawns {
            let i = w.scan.position(&p.task).expect("still in the scan");
            let role = &p.role;
            let model = p.model.as_deref();
            let note = format!(
                "{agent_id} {} {}",
                role.name,
                model.unwrap_or(&role.settings.agent)
            );
            if p.review_of.is_some() {
                w.set(
                    i,
                    &[Change::set("assigned", agent_id)],
                    Status::Review,
                    &format!("review by {note}"),
                )?;
            } else {
                w.set(
                    i,
                    &[
                        Change::set("status", "running"),
                        Change::set("assigned", agent_id),
                        Change::set("started", &format_timestamp(w.now)),
                        Change::remove("retry_after"),
                        Change::remove("lease_expires"),
                    ],
                    Status::Running,
                    &note,
                )?;
            }
            tag_last(w, agent_id, None);
            if approval::needs_approval(&w.scan.tasks[i], Some(role), &self.config) {
                touch_gate(w, &self.root, &p.task);
            }
        }
        // The registry, then the tasks, are on disk before any agent
        // starts (written as one batch, see `step`).
        w.disk.commit()?;
        // 3. Start the children, 4. record their pids.
        let mut batch = Vec::with_capacity(spawns.len());
        for (agent_id, p, workspace, session, resuming) in spawns {
            let i = w.scan.position(&p.task).expect("still in the scan");
            let review = p
                .review_of
                .as_deref()
                .map(|b| (b, reg.agents.get(b).cloned()));
            let prepared = self.prepare_agent(
                w,
                i,
                &agent_id,
                &p.role,
                p.model.as_deref(),
                &workspace,
                &session,
                resuming,
                review,
            );
            batch.push((agent_id, p, workspace, resuming, prepared));
        }
        let mut recorded = Ok(());
        let children = start_all(
            batch
                .iter()
                .map(|b| b.4.as_ref().ok().map(|prepared| &prepared.spec))
                .collect(),
            || {
                // While they start: the ends of the agents they replace,
                // written as one batch.
                w.disk.stage();
                for (f, live) in ended.drain(..) {
                    recorded = self.finish(w, reg, f, live);
                    if recorded.is_err() {
                        break;
                    }
                }
                let committed = w.disk.commit();
                if recorded.is_ok() {
                    recorded = committed;
                }
            },
        );
        for ((agent_id, p, workspace, resuming, prepared), child) in batch.into_iter().zip(children)
        {
            let i = w.scan.position(&p.task).expect("still in the scan");
            let role = &p.role;
            let model = p.model.as_deref();
            let started = prepared.and_then(|prepared| {
                let child = child.expect("every prepared agent is started")?;
                let pid = child
                    .id()
                    .ok_or("the process ended before it could be recorded")?;
                Ok(Started {
                    child,
                    pid,
                    worktree: prepared.worktree,
                })
            });
            match started {
                Ok(Started {
                    child,
                    pid,
                    worktree,
                }) => {
                    let a = reg.agents.get_mut(&agent_id).expect("registered above");
                    if let Some((branch, repo)) = worktree {
                        a.branch = Some(branch);
                        a.repo = Some(repo.display().to_string());
                    }
                    a.pid = Some(pid);
                    a.pid_start = spawn::start_time(pid);
                    a.status = AgentStatus::Active;
                    // A task's own `timeout:` wins over its role's.
                    let timeout = w.scan.tasks[i]
                        .extra()
                        .timeout
                        .as_deref()
                        .and_then(|t| crate::duration::parse(t).ok())
                        .unwrap_or(role.settings.timeout);
                    let deadline = Instant::now() + timeout;
                    let parent = a.parent.clone();
                    self.watch_agent(
                        &agent_id,
                        Some(child),
                        pid,
                        a.pid_start,
                        (deadline, timeout),
                        &role.name,
                        parent,
                    );
                    self.stats.spawned += 1;
                    self.last_spawn = Some(Instant::now());
                    let what = if p.review_of.is_some() {
                        "to review"
                    } else {
                        "for"
                    };
                    self.progress(format!(
                        "spawned {agent_id} {what} {} ({}, {}{})",
                        p.task,
                        role.name,
                        model.unwrap_or(&role.settings.agent),
                        if resuming {
                            ", resuming its session"
                        } else {
                            ""
                        }
                    ));
                    self.hook("on-spawn",
                        json!({"task": p.task, "agent": agent_id, "role": role.name, "model": model, "status": "active",
                               "workspace": path_str(&workspace), "log": path_str(&log_path(&agent_id))}));
                }
                Err(reason) => {
                    let a = reg.agents.get_mut(&agent_id).expect("registered above");
                    a.status = AgentStatus::Failed;
                    a.completed = Some(w.now);
                    a.reason = Some(reason.clone());
                    self.progress(format!(
                        "could not start {agent_id} for {}: {reason}",
                        p.task
                    ));
                    let role = role.clone();
                    if p.review_of.is_some() {
                        self.review_error(
                            w,
                            i,
                            &role,
                            &format!("could not start the tester: {reason}"),
                        )?;
                    } else {
                        self.fail_attempt(
                            w,
                            i,
                            &role,
                            &format!("could not start the agent: {reason}"),
                        )?;
                    }
                }
            }
        }
        // The rest of the step is written as one batch again.
        w.disk.stage();
        recorded?;
        Ok(true)
    }

    /// Applies what a gate decided for a task it did not let run.
    fn apply_gate_action(&mut self, w: &mut Writer, task: &str, action: GateAction) -> Result<()> {
        let Some(i) = w.scan.position(task) else {
            return Ok(());
        };
        match action {
            GateAction::Fail(reason) => {
                w.set(
                    i,
                    &[
                        Change::set("status", "failed"),
                        Change::set("reason", &reason),
                    ],
                    Status::Failed,
                    &reason,
                )?;
                self.stats.failed += 1;
                self.progress(format!("refused {task}: {reason}"));
                self.hook(
                    "on-fail",
                    json!({"task": task, "status": "failed", "reason": reason}),
                );
            }
            GateAction::Cancel(reason) => {
                touch_gate(w, &self.root, task);
                w.set(
                    i,
                    &[
                        Change::set("status", "cancelled"),
                        Change::set("reason", &reason),
                    ],
                    Status::Cancelled,
                    &reason,
                )?;
                self.progress(format!("cancelled {task}: {reason}"));
            }
            GateAction::RequestApproval { role, model } => {
                let t = &w.scan.tasks[i];
                let title = store::display_title(&self.root, t);
                let file = w.disk.read(&self.root.task_path(t)).unwrap_or_default();
                let (_, body) = task_body_and_command(&file);
                let prompt = build_prompt(
                    &self.root,
                    w,
                    i,
                    &body,
                    Path::new("agents/workspaces/<agent-id>"),
                );
                let path = approval::request_task(
                    &self.root,
                    &mut w.disk,
                    t,
                    &title,
                    &role,
                    model.as_deref(),
                    &prompt,
                    w.now,
                )?;
                w.touch(path.clone());
                w.notes.push(crate::git::Entry {
                    line: format!(
                        "{task} needs approval ({})",
                        path.strip_prefix(&self.root.dir).unwrap_or(&path).display()
                    ),
                    trailers: vec![("Task".into(), task.to_string())],
                });
                let shown = path
                    .strip_prefix(&self.root.dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                self.progress(format!("{task} waits for approval: {shown}"));
                self.hook("on-approval-pending",
                    json!({"task": task, "role": role, "model": model, "status": "pending", "file": shown}));
            }
        }
        Ok(())
    }

    /// Prepares the workspace and prompt and builds the command line (the
    /// process is started by [`start_all`]).
    #[allow(clippy::too_many_arguments)]
    fn prepare_agent(
        &mut self,
        w: &mut Writer,
        i: usize,
        agent_id: &str,
        role: &Role,
        model: Option<&str>,
        workspace: &Path,
        session: &str,
        resuming: bool,
        review: Option<(&str, Option<Agent>)>,
    ) -> std::result::Result<Prepared, String> {
        // `run` made the root absolute and canonical.
        let root_abs = self.root.dir.clone();
        let ws_abs = root_abs.join(workspace);
        let mut worktree = None;
        if role.settings.workspace == "worktree" && review.is_none() {
            worktree = Some(self.add_worktree(w, i, agent_id, role, &root_abs, &ws_abs)?);
        }
        if ws_abs != root_abs && !ws_abs.is_dir() {
            std::fs::create_dir_all(&ws_abs).map_err(|e| format!("{}: {e}", ws_abs.display()))?;
        }
        let task = &w.scan.tasks[i];
        let file = w
            .disk
            .read(&self.root.task_path(task))
            .map_err(|e| e.to_string())?;
        let (fields_cmd, body) = task_body_and_command(&file);
        let prompt = match &review {
            None => build_prompt(&self.root, w, i, &body, &ws_abs),
            Some((builder, record)) => {
                build_review_prompt(&self.root, w, i, &body, builder, record.as_ref(), &ws_abs)
            }
        };
        let prompt_file = root_abs.join(prompt_path(agent_id));
        let full = if role.soul.trim().is_empty() {
            prompt.clone()
        } else {
            format!("{}\n\n---\n\n{prompt}", role.soul.trim())
        };
        // The shell adapter runs the task's own sh blocks: no prompt to keep.
        if role.settings.agent != "shell" {
            w.disk
                .write(&prompt_file, full.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let inv = Invocation {
            role,
            task_id: &task.id,
            agent_id,
            model,
            prompt: &prompt,
            prompt_file: &prompt_file,
            soul: &role.soul,
            workspace: &ws_abs,
            session: if resuming {
                Session::Resume(session)
            } else {
                Session::New(session)
            },
            task_body: &body,
            task_command: fields_cmd.as_deref(),
            config: &self.config,
        };
        let line = agent::command(&inv)?;
        let mut extra = vec![
            ("TASKQ_ROOT".to_string(), root_abs.display().to_string()),
            ("TASKQ_TASK_ID".to_string(), task.id.to_string()),
            ("TASKQ_AGENT_ID".to_string(), agent_id.to_string()),
            ("TASKQ_ROLE".to_string(), role.name.clone()),
            ("TASKQ_WORKSPACE".to_string(), ws_abs.display().to_string()),
        ];
        static EXE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
        if let Some(me) = EXE.get_or_init(|| std::env::current_exe().ok()) {
            extra.push(("TASKQ_BIN".to_string(), me.display().to_string()));
            // Agents call `taskq approval request`: put taskq on their PATH.
            if let (Some(dir), Ok(path)) = (me.parent(), std::env::var("PATH")) {
                if role.settings.env.iter().any(|e| e == "PATH") {
                    extra.push(("PATH".to_string(), format!("{}:{path}", dir.display())));
                }
            }
        }
        for (k, v) in &role.settings.set_env {
            let v = v
                .replace("{workspace}", &ws_abs.display().to_string())
                .replace("{root}", &root_abs.display().to_string())
                .replace("{agent_id}", agent_id);
            // Config and temp dirs an agent is pointed at must exist (codex
            // panics on a missing TMPDIR).
            if (k.ends_with("HOME") || k.ends_with("DIR")) && Path::new(&v).is_absolute() {
                let _ = std::fs::create_dir_all(&v);
            }
            extra.push((k.clone(), v));
        }
        extra.extend(line.env.iter().cloned());
        let env = spawn::environment(&role.settings.env, &extra);
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let key = (line.program.clone(), path.map(str::to_string));
        if !self.found.contains(&key) {
            if spawn::find_program(&line.program, path).is_none() {
                return Err(format!("`{}` not found on PATH", line.program));
            }
            self.found.insert(key);
        }
        // A recycled empty file as the log, when there is one: no new inode.
        w.disk.place_empty(&root_abs.join(log_path(agent_id)));
        let spec = spawn::Spec {
            program: line.program,
            args: line.args,
            env,
            cwd: ws_abs,
            log: root_abs.join(log_path(agent_id)),
            exit_file: root_abs.join(EXIT_CODES),
            exit_tag: agent_id.to_string(),
        };
        Ok(Prepared { spec, worktree })
    }

    /// `git worktree add agents/workspaces/<agent-id> -b taskq/<task-id>`
    /// in the root's repository, or the task's `repo:`, from the task's
    /// `base:` or the role's (default HEAD). Returns `(branch, repo top)`.
    fn add_worktree(
        &self,
        w: &Writer,
        i: usize,
        agent_id: &str,
        role: &Role,
        root_abs: &Path,
        ws_abs: &Path,
    ) -> std::result::Result<(String, PathBuf), String> {
        let t = &w.scan.tasks[i];
        let file = w
            .disk
            .read(&self.root.task_path(t))
            .map_err(|e| e.to_string())?;
        let repo_dir =
            raw_field(&file, "repo").map_or_else(|| root_abs.to_path_buf(), |r| root_abs.join(r));
        let git = crate::git::Git::detect(&repo_dir).ok_or_else(|| {
            format!(
                "`workspace: worktree` needs a git repository: {} is not in one",
                repo_dir.display()
            )
        })?;
        let base = raw_field(&file, "base")
            .or_else(|| role.settings.base.clone())
            .unwrap_or_else(|| "HEAD".into());
        let mut branch = format!("taskq/{}", t.id);
        if git.has_branch(&branch) {
            branch = format!("taskq/{}-{agent_id}", t.id);
        }
        if let Some(parent) = ws_abs.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        git.worktree_add(ws_abs, &branch, &base)
            .map_err(|e| e.to_string())?;
        Ok((branch, git.top))
    }

    /// Starts the supervisor of one agent: it waits for the process (or,
    /// for an adopted agent, polls it), enforces the deadline, samples
    /// memory, and reports the end.
    #[allow(clippy::too_many_arguments)]
    fn watch_agent(
        &mut self,
        agent_id: &str,
        child: Option<tokio::process::Child>,
        pid: u32,
        pid_start: Option<u64>,
        (deadline, limit): (Instant, Duration),
        role: &str,
        parent: Option<String>,
    ) {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.running.insert(
            agent_id.to_string(),
            Live {
                pid,
                role: role.to_string(),
                parent,
                stop: Some(stop_tx),
                timeout: limit,
            },
        );
        let tx = self.tx.clone();
        let grace = self.config.stop_grace;
        let exit_file = self.root.dir.join(EXIT_CODES);
        let agent = agent_id.to_string();
        tokio::spawn(async move {
            let finished = supervise(
                agent, child, pid, pid_start, deadline, grace, exit_file, stop_rx,
            )
            .await;
            let _ = tx.send(Event::Finished(finished));
        });
    }

    /// Records one agent's end: registry entry, result file, and the
    /// task's transition (task first, then registry, for crash safety).
    fn finish(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        f: Finished,
        live: Option<Live>,
    ) -> Result<()> {
        let Some(agent) = reg.agents.get(&f.agent).cloned() else {
            tracing::warn!(agent = %f.agent, "finished agent is not in the registry");
            return Ok(());
        };
        let stopping = f.stopped || agent.status == AgentStatus::Stopping;
        let output = spawn::read_tail(&self.root.dir.join(log_path(&agent.id)), 8 << 20);
        let outcome = if stopping {
            Outcome {
                reason: Some("stopped".into()),
                ..Outcome::default()
            }
        } else if f.timed_out {
            let role_timeout = live
                .as_ref()
                .map(|l| l.timeout)
                .or_else(|| self.role(&agent.role).map(|r| r.settings.timeout));
            Outcome {
                reason: Some(format!(
                    "timed out after {}",
                    crate::duration::format(role_timeout.unwrap_or_default())
                )),
                ..Outcome::default()
            }
        } else {
            agent::parse(
                &agent.adapter,
                &output,
                f.exit_code,
                agent.model.as_deref(),
                &self.config,
            )
        };
        let status = if stopping {
            AgentStatus::Stopped
        } else if f.timed_out || outcome.timed_out {
            AgentStatus::Timeout
        } else if outcome.success {
            AgentStatus::Completed
        } else {
            AgentStatus::Failed
        };
        let mut summary = outcome
            .result
            .as_deref()
            .map(agent::summary)
            .filter(|s| !s.is_empty());
        // A worktree: commit what the agent left to its branch, remove the
        // worktree, keep the branch (for review, or for inspection).
        if let (Some(branch), Some(repo)) = (&agent.branch, &agent.repo) {
            let ws = self.root.dir.join(agent.workspace.as_deref().unwrap_or(""));
            let what = if outcome.success { "work" } else { "leftovers" };
            let msg = format!(
                "taskq: {} {what} of {} ({})",
                agent.task,
                agent.id,
                status.as_str()
            );
            if let Err(e) = crate::git::Git::commit_all(&ws, &msg) {
                tracing::warn!("{}: committing the worktree: {e}", ws.display());
            }
            // Under review, the tester works in it; it goes after the verdict.
            let reviewed = outcome.success
                && !stopping
                && self
                    .role(&agent.role)
                    .is_some_and(|r| r.settings.review.is_some());
            if !reviewed {
                remove_worktree(repo, &ws);
            }
            if outcome.success {
                summary = Some(summary.map_or_else(
                    || format!("branch: {branch}"),
                    |s| format!("{s} (branch: {branch})"),
                ));
            }
        }
        let is_tester = w
            .scan
            .get(&agent.task)
            .is_some_and(|t| t.status == Status::Review);
        if outcome.success && !is_tester {
            if let Some(text) = &outcome.result {
                let path = self.root.dir.join(result_path(&agent.task));
                w.disk.write(&path, text.as_bytes())?;
                w.touch(path);
            }
        }
        // The task, if it is still this agent's.
        let transitions_before = w.transitions.len();
        let mut builder_verdict = None;
        let still_mine = w
            .scan
            .get(&agent.task)
            .map(|t| t.assigned.as_deref() == Some(agent.id.as_str()) && t.folder == Folder::Todo);
        if !stopping && still_mine != Some(true) {
            // Deleted, moved or reassigned by someone while it ran: say so
            // rather than record its result silently in the registry only.
            self.progress(format!(
                "{} ended; {} {}, so the result is only in the registry",
                agent.id,
                agent.task,
                match still_mine {
                    None => "is no longer in tasks/ (deleted or moved while it ran)",
                    Some(_) => "was changed while it ran (no longer assigned to it)",
                }
            ));
        }
        if let Some(i) = w.scan.position(&agent.task) {
            let t = &w.scan.tasks[i];
            let mine = still_mine == Some(true);
            let role = self
                .role(&agent.role)
                .cloned()
                .unwrap_or_else(|| fallback_role(&agent.role));
            if mine && t.status == Status::Review && !stopping {
                builder_verdict = self.finish_review(w, i, &agent, &role, &outcome, f.timed_out)?;
            } else if mine && t.status == Status::Review {
                // A stopped tester: the review is redone by the next one.
                w.set(
                    i,
                    &[Change::remove("assigned")],
                    Status::Review,
                    &format!("{} stopped", agent.id),
                )?;
            } else if mine && t.status == Status::Running {
                if stopping {
                    w.return_stopped(i, &agent.id, agent.cancel_task)?;
                    self.progress(format!("stopped {} ({})", agent.id, agent.task));
                } else if outcome.success
                    && role
                        .settings
                        .review
                        .as_deref()
                        .is_some_and(|r| r != role.name)
                {
                    // The tester gate: a builder's success is not done yet.
                    let reviewer = role.settings.review.clone().expect("checked");
                    let mut changes = vec![
                        Change::set("status", "review"),
                        Change::set("review_role", &reviewer),
                        Change::set("builder", &agent.id),
                        Change::remove("reason"),
                    ];
                    if let Some(s) = &summary {
                        changes.push(Change::set("result", s));
                    }
                    if outcome.result.is_some() {
                        changes.push(Change::set(
                            "result_file",
                            &path_str(&result_path(&agent.task)),
                        ));
                    }
                    w.set(
                        i,
                        &changes,
                        Status::Review,
                        &format!("by {}, for {reviewer}", agent.id),
                    )?;
                    self.progress(format!(
                        "{} built by {}; review by {reviewer}",
                        agent.task, agent.id
                    ));
                    self.hook("on-review",
                        json!({"task": agent.task, "agent": agent.id, "role": agent.role, "reviewer": reviewer,
                               "status": "review", "cost_usd": outcome.cost_usd, "result": summary}));
                } else if outcome.success {
                    let mut changes = vec![
                        Change::set("status", "done"),
                        Change::set("completed", &format_timestamp(w.now)),
                        Change::remove("reason"),
                    ];
                    match &summary {
                        Some(s) => changes.push(Change::set("result", s)),
                        None => changes.push(Change::remove("result")),
                    }
                    if outcome.result.is_some() {
                        changes.push(Change::set(
                            "result_file",
                            &path_str(&result_path(&agent.task)),
                        ));
                    }
                    w.set(i, &changes, Status::Done, &format!("by {}", agent.id))?;
                    w.move_to_done(i)?;
                    self.stats.done += 1;
                    self.progress(format!(
                        "done {} by {} in {}{}",
                        agent.task,
                        agent.id,
                        crate::duration::format(elapsed(&agent, w.now)),
                        outcome
                            .cost_usd
                            .map(|c| format!(" (${c:.2})"))
                            .unwrap_or_default()
                    ));
                    self.hook("on-done",
                        json!({"task": agent.task, "agent": agent.id, "role": agent.role, "model": agent.model,
                               "status": "done", "cost_usd": outcome.cost_usd, "result": summary,
                               "log": agent.log, "workspace": agent.workspace}));
                } else {
                    let reason = outcome.reason.clone().unwrap_or_else(|| "failed".into());
                    self.fail_attempt(w, i, &role, &reason)?;
                }
            }
        }
        for t in w.transitions[transitions_before..].iter_mut() {
            t.agent.get_or_insert_with(|| agent.id.clone());
            if t.cost.is_none() {
                t.cost = outcome.cost_usd;
            }
        }
        if let Some((builder, passed)) = builder_verdict {
            if let Some(b) = reg.agents.get_mut(&builder) {
                b.test_status = Some(if passed { "passed" } else { "failed" }.into());
                b.tested_by = Some(agent.id.clone());
            }
        }
        let a = reg.agents.get_mut(&f.agent).expect("checked above");
        a.status = status;
        a.completed = Some(w.now);
        a.exit_code = f.exit_code;
        a.duration_ms = Some(elapsed(&agent, w.now).as_millis() as u64);
        a.cost_usd = outcome.cost_usd;
        a.tokens = outcome.tokens;
        a.num_turns = outcome.num_turns;
        if let Some(model) = &outcome.model {
            // The model that answered (a CLI-side fallback may have).
            a.model = Some(model.clone());
        }
        if outcome.session_id.is_some() {
            a.session_id = outcome.session_id.clone();
        }
        a.result = summary;
        a.reason = if outcome.success {
            None
        } else {
            outcome.reason
        };
        a.max_rss_kb = f.max_rss_kb.or(a.max_rss_kb);
        // An agent that printed nothing: its log's inode goes to the next
        // agent's log, and the log becomes a link to a shared empty file
        // (no inode made or freed per job; see fsutil).
        if output.is_empty() {
            w.disk
                .recycle_empty(&self.root.dir.join(log_path(&agent.id)));
        }
        // The task's cost: every attempt and review, summed.
        let total = reg.task_cost(&agent.task);
        if total > 0.0 {
            if let Some(i) = w.scan.position(&agent.task) {
                w.rewrite(i, &[Change::set_raw("cost_usd", format!("{total:.4}"))])?;
            }
        }
        Ok(())
    }

    /// A tester ended: PASS finishes the task, FAIL sends it back to the
    /// builder with the findings under `## Review` (at most
    /// `max_review_rounds` times), no verdict retries the tester.
    /// Returns `(builder, passed)` when there was a verdict.
    fn finish_review(
        &mut self,
        w: &mut Writer,
        i: usize,
        agent: &Agent,
        role: &Role,
        outcome: &Outcome,
        timed_out: bool,
    ) -> Result<Option<(String, bool)>> {
        let t = &w.scan.tasks[i];
        let builder = t.extra().builder.as_deref().unwrap_or("").to_string();
        let exit_coded = matches!(agent.adapter.as_str(), "shell" | "command");
        let verdict = if exit_coded && !timed_out {
            let text = outcome.result.clone().unwrap_or_default();
            Some((
                outcome.success,
                spawn::read_tail(&self.root.dir.join(log_path(&agent.id)), 4000)
                    .trim()
                    .to_string(),
            ))
            .map(|(p, log)| (p, if p { text } else { log }))
        } else if outcome.success {
            outcome.result.as_deref().and_then(verdict)
        } else {
            None
        };
        let id = t.id.to_string();
        let Some((passed, findings)) = verdict else {
            let reason = if outcome.success {
                "the tester gave no `VERDICT: PASS` or `VERDICT: FAIL` line".to_string()
            } else {
                outcome
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the tester failed".into())
            };
            self.review_error(w, i, role, &reason)?;
            return Ok(None);
        };
        if passed {
            self.close_builder_worktree(&builder);
            w.set(
                i,
                &[
                    Change::set("status", "done"),
                    Change::set("completed", &format_timestamp(w.now)),
                    Change::set("tested_by", &agent.id),
                    Change::set("assigned", &builder),
                    Change::remove("reason"),
                ],
                Status::Done,
                &format!("passed review by {}", agent.id),
            )?;
            w.move_to_done(i)?;
            self.stats.done += 1;
            self.progress(format!(
                "done {id}: {} passed the work of {builder}",
                agent.id
            ));
            self.hook(
                "on-done",
                json!({"task": id, "agent": builder, "tested_by": agent.id, "status": "done"}),
            );
            return Ok(Some((builder, true)));
        }
        let rounds = t.extra().review_rounds + 1;
        self.close_builder_worktree(&builder);
        let section = format!(
            "## Review (round {rounds}, {})\n\n{}",
            agent.id,
            findings.trim()
        );
        if rounds > self.config.max_review_rounds {
            let reason = format!(
                "failed review {rounds} times (max_review_rounds {})",
                self.config.max_review_rounds
            );
            w.rewrite_appending(
                i,
                &[
                    Change::set("status", "failed"),
                    Change::set_raw("review_rounds", rounds.to_string()),
                    Change::set("assigned", &builder),
                    Change::set("reason", &reason),
                ],
                Some(&section),
            )?;
            self.stats.failed += 1;
            self.progress(format!("failed {id}: {reason}"));
            self.hook(
                "on-fail",
                json!({"task": id, "agent": agent.id, "status": "failed", "reason": reason}),
            );
        } else {
            w.rewrite_appending(
                i,
                &[
                    Change::set("status", "ready"),
                    Change::set_raw("review_rounds", rounds.to_string()),
                    Change::set("reason", &format!("review {rounds} failed ({})", agent.id)),
                    Change::remove("assigned"),
                    Change::remove("started"),
                    Change::remove("review_role"),
                ],
                Some(&section),
            )?;
            self.progress(format!(
                "{id} failed review {rounds} by {}: back to its builder",
                agent.id
            ));
        }
        Ok(Some((builder, false)))
    }

    /// Removes the worktree a reviewed builder left (its branch stays).
    fn close_builder_worktree(&self, builder: &str) {
        let Ok(reg) = Registry::load(&self.root) else {
            return;
        };
        if let Some(b) = reg.agents.get(builder) {
            if let (Some(repo), Some(ws)) = (&b.repo, &b.workspace) {
                remove_worktree(repo, &self.root.dir.join(ws));
            }
        }
    }

    /// A tester run that gave no verdict: retried (it stays in review)
    /// up to the tester role's retries, then the task fails.
    fn review_error(&mut self, w: &mut Writer, i: usize, role: &Role, reason: &str) -> Result<()> {
        let t = &w.scan.tasks[i];
        let errors = t.extra().review_errors + 1;
        let id = t.id.to_string();
        if errors <= role.settings.retries {
            w.set(
                i,
                &[
                    Change::set_raw("review_errors", errors.to_string()),
                    Change::set("reason", reason),
                    Change::remove("assigned"),
                ],
                Status::Review,
                "review retried",
            )?;
            self.progress(format!(
                "review of {id} gave no verdict ({reason}); retrying the tester"
            ));
        } else {
            let reason = format!("review could not be completed: {reason}");
            w.set(
                i,
                &[
                    Change::set("status", "failed"),
                    Change::set_raw("review_errors", errors.to_string()),
                    Change::set("reason", &reason),
                ],
                Status::Failed,
                &reason,
            )?;
            self.stats.failed += 1;
            self.progress(format!("failed {id}: {reason}"));
            self.hook(
                "on-fail",
                json!({"task": id, "role": role.name, "status": "failed", "reason": reason}),
            );
        }
        Ok(())
    }

    /// A failed attempt: back to ready after a backoff while attempts ≤
    /// retries (the next attempt takes the next fallback model), else
    /// failed with the reason.
    fn fail_attempt(&mut self, w: &mut Writer, i: usize, role: &Role, reason: &str) -> Result<()> {
        let t = &w.scan.tasks[i];
        let attempts = t.attempts + 1;
        let retries = t.extra().retries.unwrap_or(role.settings.retries);
        let id = t.id.to_string();
        if attempts <= retries {
            let base = self
                .config
                .retry_backoff
                .mul_f64(2f64.powi(attempts as i32 - 1));
            let wait = self.jittered(base.min(Duration::from_secs(3600)));
            let at = w.now + chrono::Duration::from_std(wait).unwrap_or_default();
            w.set(
                i,
                &[
                    Change::set("status", "ready"),
                    Change::set_raw("attempts", attempts.to_string()),
                    Change::set("reason", reason),
                    Change::set("retry_after", &format_timestamp(at)),
                    Change::remove("assigned"),
                    Change::remove("started"),
                ],
                Status::Ready,
                &format!("retry {attempts}/{retries}"),
            )?;
            self.stats.retried += 1;
            self.progress(format!(
                "failed {id} (attempt {attempts}): {reason}; retry {attempts}/{retries} in {}",
                crate::duration::format(wait)
            ));
        } else {
            w.set(
                i,
                &[
                    Change::set("status", "failed"),
                    Change::set_raw("attempts", attempts.to_string()),
                    Change::set("reason", reason),
                    Change::remove("retry_after"),
                ],
                Status::Failed,
                reason,
            )?;
            self.stats.failed += 1;
            self.progress(format!("failed {id} after {attempts} attempt(s): {reason}"));
            self.hook("on-fail",
                json!({"task": id, "role": role.name, "status": "failed", "attempts": attempts, "reason": reason}));
        }
        Ok(())
    }

    fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// At start: adopt live agents, finish those that ended while no
    /// factory watched (exit file), mark the rest lost.
    fn recover(&mut self) -> Result<Vec<Finished>> {
        let disk = std::mem::take(&mut self.disk);
        let mut w = Writer::with_disk(&self.root, None, disk)?;
        let finished = self.recover_with(&mut w);
        w.commit_git();
        self.disk = w.into_disk();
        finished
    }

    fn recover_with(&mut self, w: &mut Writer) -> Result<Vec<Finished>> {
        self.report_adopted(w);
        let mut reg = Registry::load(&self.root)?;
        let mut finished = Vec::new();
        let mut lost = Vec::new();
        let live: Vec<Agent> = reg.live().cloned().collect();
        let mut codes = spawn::exit_codes(&self.root.dir.join(EXIT_CODES));
        for a in &live {
            // Agents started by a taskq before 0.2 wrote `<id>.exit`.
            let old = self.root.dir.join(log_path(&a.id)).with_extension("exit");
            if let Some(code) = std::fs::read_to_string(old)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                codes.entry(a.id.clone()).or_insert(code);
            }
        }
        for a in live {
            let alive = a.pid.is_some_and(|pid| spawn::is_alive(pid, a.pid_start));
            if alive {
                let pid = a.pid.expect("alive implies a pid");
                let timeout = self
                    .role(&a.role)
                    .map_or(Duration::from_secs(1200), |r| r.settings.timeout);
                let ran = (w.now - a.spawned).to_std().unwrap_or_default();
                let deadline = Instant::now() + timeout.saturating_sub(ran);
                self.watch_agent(
                    &a.id,
                    None,
                    pid,
                    a.pid_start,
                    (deadline, timeout),
                    &a.role,
                    a.parent.clone(),
                );
                self.progress(format!(
                    "adopted {} (pid {pid}) still working on {}",
                    a.id, a.task
                ));
            } else if let Some(&code) = codes.get(&a.id) {
                finished.push(Finished {
                    agent: a.id.clone(),
                    exit_code: Some(code),
                    timed_out: false,
                    stopped: false,
                    max_rss_kb: None,
                });
            } else if a.status == AgentStatus::Stopping {
                finished.push(Finished {
                    agent: a.id.clone(),
                    exit_code: None,
                    timed_out: false,
                    stopped: true,
                    max_rss_kb: None,
                });
            } else {
                lost.push(a);
            }
        }
        for a in lost {
            let reason = match a.pid {
                Some(pid) => {
                    format!("lost: its process (pid {pid}) ended while no factory was watching")
                }
                None => "lost: the factory stopped before the process started".into(),
            };
            if let Some(i) = w.scan.position(&a.task) {
                let t = &w.scan.tasks[i];
                if t.status == Status::Running && t.assigned.as_deref() == Some(a.id.as_str()) {
                    let role = self
                        .role(&a.role)
                        .cloned()
                        .unwrap_or_else(|| fallback_role(&a.role));
                    self.fail_attempt(w, i, &role, &reason)?;
                }
            }
            let e = reg.agents.get_mut(&a.id).expect("from the registry");
            e.status = AgentStatus::Lost;
            e.completed = Some(w.now);
            e.reason = Some(reason);
            self.progress(format!("{} marked lost ({})", a.id, a.task));
        }
        reg.save(&self.root, &mut w.disk, w.now)?;
        Ok(finished)
    }

    /// Stops every agent (children before parents), records them, exits 0.
    async fn shutdown(mut self, why: &str) -> Result<ExitCode> {
        self.shutting_down = true;
        self.progress(format!("{why}: stopping {} agent(s)", self.running.len()));
        // Depth of each agent in the parent chain: deepest stop first.
        let depth = |id: &str, running: &HashMap<String, Live>| {
            let mut d = 0;
            let mut cur = running.get(id).and_then(|l| l.parent.clone());
            while let Some(p) = cur {
                d += 1;
                cur = running.get(&p).and_then(|l| l.parent.clone());
                if d > 64 {
                    break;
                }
            }
            d
        };
        let mut levels: Vec<(usize, String)> = self
            .running
            .keys()
            .map(|id| (depth(id, &self.running), id.clone()))
            .collect();
        levels.sort_by_key(|l| std::cmp::Reverse(l.0));
        let mut finished = Vec::new();
        let mut i = 0;
        while i < levels.len() {
            let level = levels[i].0;
            let ids: Vec<String> = levels[i..]
                .iter()
                .take_while(|(d, _)| *d == level)
                .map(|(_, id)| id.clone())
                .collect();
            i += ids.len();
            for id in &ids {
                if let Some(stop) = self.running.get_mut(id).and_then(|l| l.stop.take()) {
                    let _ = stop.send(());
                }
            }
            let mut waiting: std::collections::HashSet<String> = ids.into_iter().collect();
            while !waiting.is_empty() {
                match self.rx.recv().await {
                    Some(Event::Finished(f)) => {
                        waiting.remove(&f.agent);
                        finished.push(f);
                    }
                    Some(Event::Changed) => {}
                    None => break,
                }
            }
        }
        self.step(finished)?;
        self.join_hooks();
        self.progress(format!(
            "stopped: {} spawned, {} done, {} failed",
            self.stats.spawned, self.stats.done, self.stats.failed
        ));
        Ok(ExitCode::SUCCESS)
    }

    fn rotate_history(&mut self) {
        // With no agent alive, every exit record is in the registry: the
        // shared record file starts over (it grows ~15 bytes per agent).
        if self.running.is_empty() {
            let path = self.root.dir.join(EXIT_CODES);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&path);
            }
        }
        // The lock and a git commit, not the queue: the step after the
        // heartbeat reads that afresh anyway. The factory's Disk goes to the
        // writer only once it holds the lock (a lock timeout here is a
        // warning, and must not lose the Disk).
        let result = Writer::with_scan(&self.root, store::Scan::default()).and_then(|mut w| {
            std::mem::swap(&mut w.disk, &mut self.disk);
            let rotated = self.rotate_registry(&mut w);
            w.commit_git();
            std::mem::swap(&mut w.disk, &mut self.disk);
            rotated
        });
        if let Err(e) = result {
            tracing::warn!("history rotation: {e}");
        }
    }

    fn rotate_registry(&self, w: &mut Writer) -> Result<()> {
        let mut reg = Registry::load(&self.root)?;
        let cutoff = w.now
            - chrono::Duration::from_std(self.config.history_after)
                .unwrap_or(chrono::Duration::MAX);
        let moved = reg.rotate(&self.root, cutoff)?;
        if moved > 0 {
            reg.save(&self.root, &mut w.disk, w.now)?;
            w.touch(Registry::path(&self.root));
            w.touch(self.root.factory_dir().join("history"));
            w.notes.push(crate::git::Entry {
                line: format!("registry: {moved} finished agents moved to agents/factory/history/"),
                trailers: Vec::new(),
            });
        }
        Ok(())
    }
}

/// Waits for an agent to end, enforcing its deadline and stop requests.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    agent: String,
    mut child: Option<tokio::process::Child>,
    pid: u32,
    pid_start: Option<u64>,
    deadline: Instant,
    grace: Duration,
    exit_file: PathBuf,
    mut stop: oneshot::Receiver<()>,
) -> Finished {
    let mut rss: Option<u64> = None;
    // First sample after 100 ms (at 0 only the sh wrapper exists), then
    // every 250 ms: a short run still gets a real figure.
    let mut sample = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(100),
        Duration::from_millis(250),
    );
    let mut timed_out = false;
    let mut stopped = false;
    let exit_code = loop {
        tokio::select! {
            code = wait_exit(&mut child, pid, pid_start, &exit_file, &agent) => break code,
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)), if !timed_out && !stopped => {
                timed_out = true;
                let _ = tokio::task::spawn_blocking(move || spawn::terminate_group(pid, grace)).await;
            }
            r = &mut stop, if !stopped && !timed_out => {
                if r.is_ok() {
                    stopped = true;
                    let _ = tokio::task::spawn_blocking(move || spawn::terminate_group(pid, grace)).await;
                }
            }
            _ = sample.tick() => {
                if let Some(kb) = spawn::tree_rss_kb(pid) {
                    rss = Some(rss.map_or(kb, |r| r.max(kb)));
                }
            }
        }
    };
    // What the agent left running in its group goes too.
    if spawn::group_alive(pid) {
        let _ = tokio::task::spawn_blocking(move || spawn::terminate_group(pid, grace)).await;
    }
    Finished {
        agent,
        exit_code,
        timed_out,
        stopped,
        max_rss_kb: rss,
    }
}

/// The exit code of our child, or of an adopted process (polled, then
/// read from its exit file). `None` when killed by a signal.
async fn wait_exit(
    child: &mut Option<tokio::process::Child>,
    pid: u32,
    pid_start: Option<u64>,
    exit_file: &Path,
    agent: &str,
) -> Option<i32> {
    match child {
        Some(c) => match c.wait().await {
            Ok(status) => status.code(),
            Err(_) => None,
        },
        None => {
            while spawn::is_alive(pid, pid_start) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            spawn::read_exit_file(exit_file, agent)
        }
    }
}

/// Puts a task's approval files (a person may have moved them by hand)
/// into the writer's commit.
fn touch_gate(w: &mut Writer, root: &Root, task: &str) {
    if matches!(approval::decision(root, task), Decision::Missing) {
        return;
    }
    for state in ["pending", "approved", "rejected"] {
        w.touch(root.approvals(state).join(format!("{task}.md")));
    }
}

/// A file's size and mtime, or `None` when it does not exist.
fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()?))
}

/// Names the agent (and cost) of the writer's last transition, for the
/// commit's trailers.
fn tag_last(w: &mut Writer, agent: &str, cost: Option<f64>) {
    if let Some(t) = w.transitions.last_mut() {
        t.agent = Some(agent.to_string());
        t.cost = cost;
    }
}

/// A fresh session id (a random UUID v4). /dev/urandom is read once per
/// process for two seeds; each id is then SplitMix64 of a seed plus a
/// counter, a bijection of the counter, so no two ids of one process are
/// equal.
fn new_session_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEEDS: OnceLock<[u64; 2]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seeds = SEEDS.get_or_init(|| {
        let mut bytes = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            use std::io::Read;
            let _ = f.read_exact(&mut bytes);
        }
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let half = |k: usize| u64::from_le_bytes(bytes[k..k + 8].try_into().expect("8 bytes"));
        [half(0) ^ clock, half(8) ^ u64::from(std::process::id())]
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // SplitMix64: the finalizer of seed + (n + 1) * golden ratio.
    let splitmix = |seed: u64| {
        crate::mix::splitmix64(
            seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        )
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&splitmix(seeds[0]).to_le_bytes());
    bytes[8..].copy_from_slice(&splitmix(seeds[1]).to_le_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The session to resume: the last lost attempt of this task, when the
/// role allows resuming (claude only).
///
/// Returns the session id and the lost agent's workspace: `claude --resume`
/// finds a session only from the directory it was saved for, so the
/// resumed agent works where the lost one did.
fn resume_session(reg: &Registry, role: &Role, task: &str) -> Option<(String, Option<String>)> {
    if !role.settings.resume || role.settings.agent != "claude" {
        return None;
    }
    reg.agents
        .values()
        .filter(|a| a.task == task && a.status == AgentStatus::Lost)
        .max_by_key(|a| a.spawned)
        .and_then(|a| Some((a.session_id.clone()?, a.workspace.clone())))
}

fn fallback_role(name: &str) -> Role {
    Role {
        name: name.to_string(),
        path: PathBuf::new(),
        settings: serde_yaml::from_str("prefix: X").expect("minimal settings parse"),
        soul: String::new(),
    }
}

fn elapsed(agent: &Agent, now: Timestamp) -> Duration {
    (now - agent.spawned).to_std().unwrap_or_default()
}

/// `agents/logs/<id>.log`.
pub fn log_path(agent: &str) -> PathBuf {
    Path::new("agents")
        .join("logs")
        .join(format!("{agent}.log"))
}

/// Where agents' wrappers append `<agent-id> <exit code>` (see spawn).
const EXIT_CODES: &str = "agents/logs/exit-codes";

fn prompt_path(agent: &str) -> PathBuf {
    Path::new("agents")
        .join("logs")
        .join(format!("{agent}.prompt.md"))
}

/// `agents/results/<task>.md`: the full final message of the run that
/// finished the task.
pub fn result_path(task: &str) -> PathBuf {
    Path::new("agents")
        .join("results")
        .join(format!("{task}.md"))
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Removes a worktree workspace; its branch stays.
fn remove_worktree(repo: &str, ws: &Path) {
    if !ws.exists() {
        return;
    }
    if let Some(git) = crate::git::Git::detect(Path::new(repo)) {
        if let Err(e) = git.worktree_remove(ws) {
            tracing::warn!("{}: removing the worktree: {e}", ws.display());
        }
    }
}

/// What `start_agent` started.
/// An agent ready to start: its process and, for a worktree role, the
/// branch made for it.
struct Prepared {
    spec: spawn::Spec,
    worktree: Option<(String, PathBuf)>,
}

/// Starts the agents' processes (`None` where there is nothing to start),
/// runs `meanwhile` while they start, and returns when both are done.
/// Several start at once, on threads: each start returns only once its child has
/// exec'd (vfork), and on a machine busy with other agents the child waits
/// for a CPU slice first. One after the other, a step waited for the sum
/// of those waits (measured: 8 `true` jobs, ~4 ms); at once, for the
/// longest.
fn start_all(
    specs: Vec<Option<&spawn::Spec>>,
    meanwhile: impl FnOnce(),
) -> Vec<Option<std::result::Result<tokio::process::Child, String>>> {
    let start = |spec: &spawn::Spec| spawn::start(spec).map_err(|e| e.to_string());
    if specs.iter().flatten().count() <= 1 {
        let started = specs.into_iter().map(|s| s.map(start)).collect();
        meanwhile();
        return started;
    }
    // The threads register the children with this runtime's reaper.
    let handle = tokio::runtime::Handle::current();
    std::thread::scope(|scope| {
        let threads: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                spec.map(|spec| {
                    let handle = &handle;
                    scope.spawn(move || {
                        let _runtime = handle.enter();
                        start(spec)
                    })
                })
            })
            .collect();
        meanwhile();
        threads
            .into_iter()
            .map(|t| {
                t.map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err("starting the process panicked".into()))
                })
            })
            .collect()
    })
}

struct Started {
    child: tokio::process::Child,
    pid: u32,
    /// `(branch, repo top)` of a worktree workspace.
    worktree: Option<(String, PathBuf)>,
}

/// A scalar field of a task file's header, read raw (for fields only the
/// factory uses: `command`, `repo`, `base`).
fn raw_field(file: &[u8], key: &str) -> Option<String> {
    frontmatter::scalar_field(file, key)
}

/// A task file's body and its `command:` field, if any.
fn task_body_and_command(file: &[u8]) -> (Option<String>, String) {
    let body = match frontmatter::split(file, true) {
        Some(Layout::Header { body, .. } | Layout::None { body }) => {
            String::from_utf8_lossy(&file[body..]).into_owned()
        }
        _ => String::new(),
    };
    (raw_field(file, "command"), body)
}

/// The task prompt: the task, its body, and the results of its
/// dependencies (so builders read research outputs automatically).
fn build_prompt(root: &Root, w: &Writer, i: usize, body: &str, workspace: &Path) -> String {
    let t = &w.scan.tasks[i];
    let mut p = String::new();
    let _ = writeln!(p, "# Task {}: {}\n", t.id, store::display_title(root, t));
    let body = body.trim();
    if !body.is_empty() {
        p.push_str(body);
        p.push_str("\n\n");
    }
    let deps: Vec<_> = t
        .dependencies
        .iter()
        .filter_map(|d| w.scan.get(d))
        .collect();
    if !deps.is_empty() {
        p.push_str("# Results of the tasks this one depends on\n\n");
        for d in deps {
            let _ = writeln!(p, "## {}: {}", d.id, store::display_title(root, d));
            if let Some(r) = &d.extra().result {
                let _ = writeln!(p, "Result: {r}");
            }
            let file = root.dir.join(result_path(&d.id));
            if let Ok(text) = std::fs::read_to_string(&file) {
                let text: String = text.chars().take(8000).collect();
                let _ = writeln!(
                    p,
                    "Full result ({}):\n\n{}",
                    path_str(&result_path(&d.id)),
                    text.trim()
                );
            }
            p.push('\n');
        }
    }
    let _ = writeln!(p, "Your working directory is {}.", workspace.display());
    p
}

/// The tester's prompt: the task, the builder's result and where its work
/// is, and how to answer.
fn build_review_prompt(
    root: &Root,
    w: &Writer,
    i: usize,
    body: &str,
    builder: &str,
    record: Option<&Agent>,
    workspace: &Path,
) -> String {
    let t = &w.scan.tasks[i];
    let mut p = String::new();
    let _ = writeln!(p, "# Review {}: {}\n", t.id, store::display_title(root, t));
    p.push_str("Check the work a builder agent did for this task. The task:\n\n");
    for line in body.trim().lines() {
        let _ = writeln!(p, "> {line}");
    }
    let _ = writeln!(p, "\n# The builder's result ({builder})\n");
    match std::fs::read_to_string(root.dir.join(result_path(&t.id))) {
        Ok(text) => p.push_str(text.trim()),
        Err(_) => p.push_str(
            record
                .and_then(|a| a.result.as_deref())
                .unwrap_or("(no result text)"),
        ),
    }
    let _ = writeln!(
        p,
        "\n\nThe builder worked in {} (your working directory): inspect and test the files there.\n\n\
         Your final message must contain exactly one line `VERDICT: PASS` or `VERDICT: FAIL`; put your findings after that line.",
        workspace.display()
    );
    p
}

/// The tester's verdict in a result text: the last `VERDICT: PASS|FAIL`
/// line, and for FAIL the findings after it (or the whole text).
fn verdict(text: &str) -> Option<(bool, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let (k, pass) = lines.iter().enumerate().rev().find_map(|(k, l)| {
        let u = l
            .trim()
            .trim_matches(|c| c == '*' || c == '`')
            .to_ascii_uppercase();
        if u.starts_with("VERDICT: PASS") || u.starts_with("VERDICT:PASS") {
            Some((k, true))
        } else if u.starts_with("VERDICT: FAIL") || u.starts_with("VERDICT:FAIL") {
            Some((k, false))
        } else {
            None
        }
    })?;
    let after = lines[k + 1..].join("\n").trim().to_string();
    let findings = if after.is_empty() {
        text.trim().to_string()
    } else {
        after
    };
    Some((pass, findings))
}

/// One line of the plan `taskq run --dry-run` prints.
#[derive(Debug, Serialize)]
pub struct PlanItem {
    /// The task.
    pub task: String,
    /// Its title.
    pub title: String,
    /// `spawn` or `wait`.
    pub action: &'static str,
    /// The role it goes to.
    pub role: Option<String>,
    /// The adapter.
    pub agent: Option<String>,
    /// The model of the next attempt.
    pub model: Option<String>,
    /// Why it waits.
    pub why: Option<String>,
}

/// What the factory would do now, without doing it: every open task in
/// queue order, with the role and model it would get, or why it waits.
pub fn plan(root: &Root, scan: &store::Scan, now: Timestamp) -> Result<(Vec<PlanItem>, Config)> {
    let config = Config::load(root)?;
    let (roles, problems) = role::load_all(root);
    if let Some(p) = problems.into_iter().next() {
        return Err(p.into());
    }
    let reg = Registry::load(root)?;
    let queue = Queue::new(scan, now);
    let spent = reg.spent_today(now);
    let mut per_role: HashMap<String, usize> = HashMap::new();
    let mut running = 0;
    for a in reg.live() {
        *per_role.entry(a.role.clone()).or_default() += 1;
        running += 1;
    }
    let mut items = Vec::new();
    let ready = queue.ready(|_| true);
    let ready_set: std::collections::HashSet<usize> = ready.iter().map(|r| r.index).collect();
    for r in &ready {
        let t = &scan.tasks[r.index];
        let mut item = PlanItem {
            task: t.id.to_string(),
            title: store::display_title(root, t),
            action: "wait",
            role: None,
            agent: None,
            model: None,
            why: None,
        };
        match role::route(t, &roles, &config) {
            None => {
                item.why = Some(match &t.role {
                    Some(name) => format!("no role `{name}` (agents/templates/{name}.md)"),
                    None => format!(
                        "no role: tags [{}] match no template and the config has no default_role",
                        t.tags.join(", ")
                    ),
                })
            }
            Some(role) => {
                item.role = Some(role.name.clone());
                item.agent = Some(role.settings.agent.clone());
                item.model =
                    agent::model_for_attempt(role, t.extra().model.as_deref(), t.attempts + 1);
                let used = per_role.entry(role.name.clone()).or_default();
                if running >= config.max_concurrent {
                    item.why = Some(format!(
                        "factory full ({running}/{} agents)",
                        config.max_concurrent
                    ));
                } else if *used >= role.settings.max_concurrent {
                    item.why = Some(format!(
                        "role {} full ({used}/{})",
                        role.name, role.settings.max_concurrent
                    ));
                } else {
                    match gate(root, &config, t, role, item.model.as_deref(), &reg, spent) {
                        Gate::Go => {
                            item.action = "spawn";
                            *used += 1;
                            running += 1;
                        }
                        Gate::Wait(why) | Gate::Pause(why) => item.why = Some(why),
                        Gate::Act(GateAction::Fail(why)) => {
                            item.why = Some(format!("will fail: {why}"))
                        }
                        Gate::Act(GateAction::Cancel(why)) => {
                            item.why = Some(format!("will be cancelled: {why}"))
                        }
                        Gate::Act(GateAction::RequestApproval { .. }) => {
                            item.why = Some(format!(
                                "needs approval: the factory will write approvals/pending/{}.md",
                                t.id
                            ))
                        }
                    }
                }
            }
        }
        items.push(item);
    }
    // Open tasks that are not ready, with the reason.
    let mut rest: Vec<usize> = (0..scan.tasks.len())
        .filter(|i| !ready_set.contains(i))
        .filter(|&i| {
            matches!(
                queue.state[i],
                State::Blocked
                    | State::Waiting
                    | State::Running
                    | State::Review
                    | State::Hold
                    | State::Invalid
            )
        })
        .collect();
    rest.sort_by(|&a, &b| crate::task::id_order(&scan.tasks[a].id, &scan.tasks[b].id));
    for i in rest {
        let t = &scan.tasks[i];
        let why = match queue.state[i] {
            State::Blocked => format!("waits for {}", queue.open_dependencies(i).join(", ")),
            State::Running => format!("running ({})", t.assigned.as_deref().unwrap_or("?")),
            State::Review => "in review".into(),
            State::Hold => "on hold".into(),
            State::Invalid => "invalid fields (see `taskq check`)".into(),
            _ => match t.extra().retry_after {
                Some(at) if at > now => {
                    format!("retry {} at {}", t.attempts + 1, format_timestamp(at))
                }
                _ if !t.has_id => "no id yet (adopted on the next write)".into(),
                _ => format!("assigned to {}", t.assigned.as_deref().unwrap_or("?")),
            },
        };
        items.push(PlanItem {
            task: t.id.to_string(),
            title: store::display_title(root, t),
            action: "wait",
            role: None,
            agent: None,
            model: None,
            why: Some(why),
        });
    }
    Ok((items, config))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_distinct_uuid_v4s() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_session_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(50) {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(parts[2].starts_with('4'), "version 4: {id}");
            assert!("89ab".contains(&parts[3][..1]), "variant: {id}");
            assert!(
                id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
                "{id}"
            );
        }
    }
}
