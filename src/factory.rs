//! `taskq run`: the factory. It watches the files, and on every change
//! (debounced) or heartbeat rescans the queue and spawns role agents for
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
//! `agents/logs/<id>.exit`), and marks the rest `lost`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::agent::{self, Invocation, Outcome, Session};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::frontmatter::{self, Change, Layout, Value};
use crate::fsutil;
use crate::lock::LockGuard;
use crate::output::Out;
use crate::queue::{Queue, State};
use crate::registry::{Agent, AgentStatus, Registry};
use crate::role::{self, Role};
use crate::spawn;
use crate::store::{self, Root, Writer};
use crate::task::{format_timestamp, Status, Timestamp};
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
    let factory = Factory::new(root.clone(), config, roles, out, opts);
    let code = runtime.block_on(factory.main())?;
    drop(lock);
    Ok(code)
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

/// An agent this factory watches.
struct Live {
    role: String,
    parent: Option<String>,
    stop: Option<oneshot::Sender<()>>,
}

struct Factory {
    root: Root,
    config: Config,
    roles: Vec<Role>,
    out: Out,
    opts: Options,
    running: HashMap<String, Live>,
    tx: mpsc::UnboundedSender<Event>,
    rx: mpsc::UnboundedReceiver<Event>,
    pending: watch::Pending,
    /// The earliest retry backoff to wake up for.
    wake_at: Option<Instant>,
    /// Ready, routable tasks left unspawned in the last step (capacity).
    startable: usize,
    shutting_down: bool,
    stats: Stats,
    rng: u64,
}

#[derive(Default)]
struct Stats {
    spawned: usize,
    done: usize,
    failed: usize,
    retried: usize,
}

impl Factory {
    fn new(root: Root, config: Config, roles: Vec<Role>, out: Out, opts: Options) -> Factory {
        let (tx, rx) = mpsc::unbounded_channel();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 32;
        Factory {
            root,
            config,
            roles,
            out,
            opts,
            running: HashMap::new(),
            tx,
            rx,
            pending: Arc::new(AtomicBool::new(false)),
            wake_at: None,
            startable: 0,
            shutting_down: false,
            stats: Stats::default(),
            rng: seed | 1,
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

    fn progress(&self, text: impl AsRef<str>) {
        let now = chrono::Local::now().format("%H:%M:%S");
        self.out.note(format!("{now} {}", text.as_ref()));
    }

    async fn main(mut self) -> Result<ExitCode> {
        use tokio::signal::unix::{signal, SignalKind};
        let _watcher = watch::start(
            &self.root,
            Arc::clone(&self.pending),
            self.tx.clone(),
            || Event::Changed,
        )?;
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
                return Ok(ExitCode::SUCCESS);
            }
            let far = tokio::time::Instant::now() + Duration::from_secs(86400);
            let wake = self.wake_at.map_or(far, tokio::time::Instant::from_std);
            let mut finished = Vec::new();
            let mut changed = false;
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    Some(Event::Changed) => changed = true,
                    Some(Event::Finished(f)) => finished.push(f),
                    None => return Ok(ExitCode::SUCCESS),
                },
                () = tokio::time::sleep_until(heartbeat) => {
                    heartbeat = tokio::time::Instant::now() + self.jittered(self.config.heartbeat);
                    changed = true;
                    self.rotate_history();
                }
                () = tokio::time::sleep_until(wake) => changed = true,
                _ = sigterm.recv() => return self.shutdown("SIGTERM").await,
                _ = sigint.recv() => return self.shutdown("SIGINT").await,
            }
            // Debounce: let an editor's save or a `git checkout` settle
            // (quiet for 5 ms, at most 50 ms), then act once.
            let settle = tokio::time::Instant::now() + Duration::from_millis(50);
            loop {
                let quiet = if changed {
                    Duration::from_millis(5)
                } else {
                    Duration::ZERO
                };
                let until = (tokio::time::Instant::now() + quiet).min(settle);
                match tokio::time::timeout_at(until, self.rx.recv()).await {
                    Ok(Some(Event::Changed)) => changed = true,
                    Ok(Some(Event::Finished(f))) => finished.push(f),
                    Ok(None) | Err(_) => break,
                }
            }
            self.pending.store(false, Ordering::Release);
            self.step(finished)?;
        }
    }

    fn is_idle(&self) -> bool {
        self.running.is_empty() && self.startable == 0 && self.wake_at.is_none()
    }

    /// One scheduling step under the queue lock: record finished agents,
    /// then spawn what the limits allow.
    fn step(&mut self, finished: Vec<Finished>) -> Result<()> {
        let mut w = Writer::open(&self.root)?;
        let mut reg = Registry::load(&self.root)?;
        let mut dirty = false;
        for f in finished {
            self.finish(&mut w, &mut reg, f)?;
            dirty = true;
        }
        self.reload_roles();
        if !self.shutting_down {
            dirty |= self.spawn_ready(&mut w, &mut reg)?;
        }
        if dirty {
            reg.max_concurrent = self.config.max_concurrent;
            reg.save(&self.root, w.now)?;
        }
        for t in &w.transitions {
            if t.from.is_none() {
                self.progress(format!(
                    "adopted {} as {}",
                    t.note.trim_start_matches("adopted "),
                    t.id
                ));
            }
        }
        self.schedule_wake(&w);
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
    }

    /// Spawns agents for ready tasks in queue order, within the limits.
    /// Returns true when the registry changed.
    fn spawn_ready(&mut self, w: &mut Writer, reg: &mut Registry) -> Result<bool> {
        let plan = {
            let queue = Queue::new(&w.scan, w.now);
            let ready = queue.ready(|_| true);
            let mut per_role: HashMap<String, usize> = HashMap::new();
            for live in self.running.values() {
                *per_role.entry(live.role.clone()).or_default() += 1;
            }
            let mut plan = Vec::new();
            let mut startable = 0;
            for r in ready {
                let t = &w.scan.tasks[r.index];
                let Some(role) = role::route(t, &self.roles, &self.config) else {
                    continue;
                };
                let used = per_role.entry(role.name.clone()).or_default();
                if self.running.len() + plan.len() >= self.config.max_concurrent
                    || *used >= role.settings.max_concurrent
                {
                    startable += 1;
                    continue;
                }
                *used += 1;
                plan.push((t.id.to_string(), role.clone()));
            }
            self.startable = startable;
            plan
        };
        if plan.is_empty() {
            return Ok(false);
        }
        // 1. Register every agent as `spawning` before anything starts.
        let mut spawns = Vec::new();
        for (task_id, role) in plan {
            let i = w.scan.position(&task_id).expect("planned from this scan");
            let t = &w.scan.tasks[i];
            let attempt = t.attempts + 1;
            let model = agent::model_for_attempt(&role, t.extra().model.as_deref(), attempt);
            let agent_id = reg.allocate(&role.settings.prefix);
            let workspace = match role.settings.workspace.as_str() {
                "root" => PathBuf::new(),
                _ => Path::new("agents").join("workspaces").join(&agent_id),
            };
            let resume = resume_session(reg, &role, &task_id);
            let session = resume.clone().unwrap_or_else(new_session_id);
            reg.agents.insert(
                agent_id.clone(),
                Agent {
                    id: agent_id.clone(),
                    role: role.name.clone(),
                    task: task_id.clone(),
                    status: AgentStatus::Spawning,
                    adapter: role.settings.agent.clone(),
                    model: model.clone(),
                    pid: None,
                    pid_start: None,
                    parent: t.extra().parent.as_deref().map(str::to_string),
                    attempt,
                    spawned: w.now,
                    completed: None,
                    exit_code: None,
                    duration_ms: None,
                    cost_usd: None,
                    tokens: None,
                    num_turns: None,
                    session_id: (role.settings.agent == "claude").then(|| session.clone()),
                    result: None,
                    reason: None,
                    workspace: Some(path_str(&workspace)),
                    log: Some(path_str(&log_path(&agent_id))),
                    max_rss_kb: None,
                    cancel_task: false,
                },
            );
            spawns.push((
                agent_id,
                task_id,
                role,
                model,
                workspace,
                session,
                resume.is_some(),
            ));
        }
        reg.save(&self.root, w.now)?;
        // 2. Mark the tasks running, 3. start the children, 4. record pids.
        for (agent_id, task_id, role, model, workspace, session, resuming) in spawns {
            let i = w.scan.position(&task_id).expect("still in the scan");
            let note = format!(
                "{agent_id} {} {}",
                role.name,
                model.as_deref().unwrap_or(&role.settings.agent)
            );
            w.set(
                i,
                &[
                    Change::set("status", "running"),
                    Change::set("assigned", &agent_id),
                    Change::set("started", &format_timestamp(w.now)),
                    Change::remove("retry_after"),
                    Change::remove("lease_expires"),
                ],
                Status::Running,
                &note,
            )?;
            match self.start_agent(
                w,
                i,
                &agent_id,
                &role,
                model.as_deref(),
                &workspace,
                &session,
                resuming,
            ) {
                Ok((child, pid)) => {
                    let a = reg.agents.get_mut(&agent_id).expect("registered above");
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
                    self.watch_agent(
                        &agent_id,
                        Some(child),
                        pid,
                        a.pid_start,
                        deadline,
                        &role.name,
                        a.parent.clone(),
                    );
                    self.stats.spawned += 1;
                    self.progress(format!(
                        "spawned {agent_id} for {task_id} ({}, {}{})",
                        role.name,
                        model.as_deref().unwrap_or(&role.settings.agent),
                        if resuming {
                            ", resuming its session"
                        } else {
                            ""
                        }
                    ));
                }
                Err(reason) => {
                    let a = reg.agents.get_mut(&agent_id).expect("registered above");
                    a.status = AgentStatus::Failed;
                    a.completed = Some(w.now);
                    a.reason = Some(reason.clone());
                    self.progress(format!(
                        "could not start {agent_id} for {task_id}: {reason}"
                    ));
                    self.fail_attempt(
                        w,
                        i,
                        &role,
                        &format!("could not start the agent: {reason}"),
                    )?;
                }
            }
        }
        Ok(true)
    }

    /// Prepares the workspace and prompt, builds the command line and
    /// starts the process.
    #[allow(clippy::too_many_arguments)]
    fn start_agent(
        &mut self,
        w: &Writer,
        i: usize,
        agent_id: &str,
        role: &Role,
        model: Option<&str>,
        workspace: &Path,
        session: &str,
        resuming: bool,
    ) -> std::result::Result<(tokio::process::Child, u32), String> {
        if role.settings.workspace == "worktree" {
            return Err("`workspace: worktree` needs the git integration, which this build does not have yet".into());
        }
        let root_abs = std::fs::canonicalize(&self.root.dir).map_err(|e| e.to_string())?;
        let ws_abs = root_abs.join(workspace);
        std::fs::create_dir_all(&ws_abs).map_err(|e| format!("{}: {e}", ws_abs.display()))?;
        let task = &w.scan.tasks[i];
        let file = std::fs::read(self.root.task_path(task)).map_err(|e| e.to_string())?;
        let (fields_cmd, body) = task_body_and_command(&file);
        let prompt = build_prompt(&self.root, w, i, &body, &ws_abs);
        let prompt_file = root_abs.join(prompt_path(agent_id));
        let full = if role.soul.trim().is_empty() {
            prompt.clone()
        } else {
            format!("{}\n\n---\n\n{prompt}", role.soul.trim())
        };
        fsutil::write_atomic(&prompt_file, full.as_bytes()).map_err(|e| e.to_string())?;
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
        if let Ok(me) = std::env::current_exe() {
            extra.push(("TASKQ_BIN".to_string(), me.display().to_string()));
        }
        for (k, v) in &role.settings.set_env {
            let v = v
                .replace("{workspace}", &ws_abs.display().to_string())
                .replace("{root}", &root_abs.display().to_string())
                .replace("{agent_id}", agent_id);
            extra.push((k.clone(), v));
        }
        extra.extend(line.env.iter().cloned());
        let env = spawn::environment(&role.settings.env, &extra);
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        if spawn::find_program(&line.program, path).is_none() {
            return Err(format!("`{}` not found on PATH", line.program));
        }
        let spec = spawn::Spec {
            program: line.program,
            args: line.args,
            env,
            cwd: ws_abs,
            log: root_abs.join(log_path(agent_id)),
            exit_file: root_abs.join(exit_path(agent_id)),
        };
        let child = spawn::start(&spec).map_err(|e| e.to_string())?;
        let pid = child
            .id()
            .ok_or("the process ended before it could be recorded")?;
        Ok((child, pid))
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
        deadline: Instant,
        role: &str,
        parent: Option<String>,
    ) {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.running.insert(
            agent_id.to_string(),
            Live {
                role: role.to_string(),
                parent,
                stop: Some(stop_tx),
            },
        );
        let tx = self.tx.clone();
        let grace = self.config.stop_grace;
        let exit_file = self.root.dir.join(exit_path(agent_id));
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
    fn finish(&mut self, w: &mut Writer, reg: &mut Registry, f: Finished) -> Result<()> {
        self.running.remove(&f.agent);
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
            let role_timeout = self.role(&agent.role).map(|r| r.settings.timeout);
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
        } else if f.timed_out {
            AgentStatus::Timeout
        } else if outcome.success {
            AgentStatus::Completed
        } else {
            AgentStatus::Failed
        };
        let summary = outcome
            .result
            .as_deref()
            .map(agent::summary)
            .filter(|s| !s.is_empty());
        if outcome.success {
            if let Some(text) = &outcome.result {
                let path = self.root.dir.join(result_path(&agent.task));
                fsutil::write_atomic(&path, text.as_bytes())?;
            }
        }
        // The task, if it is still this agent's.
        if let Some(i) = w.scan.position(&agent.task) {
            let t = &w.scan.tasks[i];
            let ours =
                t.status == Status::Running && t.assigned.as_deref() == Some(agent.id.as_str());
            if ours {
                let role = self.role(&agent.role).cloned();
                if stopping {
                    if agent.cancel_task {
                        w.set(
                            i,
                            &[
                                Change::set("status", "cancelled"),
                                Change::set("reason", "stopped and cancelled"),
                            ],
                            Status::Cancelled,
                            "stopped",
                        )?;
                    } else {
                        w.set(
                            i,
                            &[
                                Change::set("status", "ready"),
                                Change::remove("assigned"),
                                Change::remove("started"),
                            ],
                            Status::Ready,
                            &format!("{} stopped", agent.id),
                        )?;
                    }
                    self.progress(format!("stopped {} ({})", agent.id, agent.task));
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
                } else {
                    let reason = outcome.reason.clone().unwrap_or_else(|| "failed".into());
                    match role {
                        Some(role) => self.fail_attempt(w, i, &role, &reason)?,
                        None => self.fail_attempt(w, i, &fallback_role(&agent.role), &reason)?,
                    }
                }
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
        }
        Ok(())
    }

    fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }

    /// At start: adopt live agents, finish those that ended while no
    /// factory watched (exit file), mark the rest lost.
    fn recover(&mut self) -> Result<Vec<Finished>> {
        let mut w = Writer::open(&self.root)?;
        let mut reg = Registry::load(&self.root)?;
        let mut finished = Vec::new();
        let mut lost = Vec::new();
        let live: Vec<Agent> = reg.live().cloned().collect();
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
                    deadline,
                    &a.role,
                    a.parent.clone(),
                );
                self.progress(format!(
                    "adopted {} (pid {pid}) still working on {}",
                    a.id, a.task
                ));
            } else if let Some(code) = spawn::read_exit_file(&self.root.dir.join(exit_path(&a.id)))
            {
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
                    self.fail_attempt(&mut w, i, &role, &reason)?;
                }
            }
            let e = reg.agents.get_mut(&a.id).expect("from the registry");
            e.status = AgentStatus::Lost;
            e.completed = Some(w.now);
            e.reason = Some(reason);
            self.progress(format!("{} marked lost ({})", a.id, a.task));
        }
        reg.save(&self.root, w.now)?;
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
        self.progress(format!(
            "stopped: {} spawned, {} done, {} failed",
            self.stats.spawned, self.stats.done, self.stats.failed
        ));
        Ok(ExitCode::SUCCESS)
    }

    fn rotate_history(&mut self) {
        let result = (|| -> Result<()> {
            let w = Writer::open(&self.root)?;
            let mut reg = Registry::load(&self.root)?;
            let cutoff = w.now
                - chrono::Duration::from_std(self.config.history_after)
                    .unwrap_or(chrono::Duration::MAX);
            if reg.rotate(&self.root, cutoff)? > 0 {
                reg.save(&self.root, w.now)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            tracing::warn!("history rotation: {e}");
        }
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
    let mut sample = tokio::time::interval(Duration::from_millis(500));
    let mut timed_out = false;
    let mut stopped = false;
    let exit_code = loop {
        tokio::select! {
            code = wait_exit(&mut child, pid, pid_start, &exit_file) => break code,
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
    if !spawn::group_members(pid).is_empty() {
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
            spawn::read_exit_file(exit_file)
        }
    }
}

/// A fresh session id (a random UUID v4).
fn new_session_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut bytes);
    }
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
fn resume_session(reg: &Registry, role: &Role, task: &str) -> Option<String> {
    if !role.settings.resume || role.settings.agent != "claude" {
        return None;
    }
    reg.agents
        .values()
        .filter(|a| a.task == task && a.status == AgentStatus::Lost)
        .max_by_key(|a| a.spawned)
        .and_then(|a| a.session_id.clone())
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

fn exit_path(agent: &str) -> PathBuf {
    Path::new("agents")
        .join("logs")
        .join(format!("{agent}.exit"))
}

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

/// A task file's body and its `command:` field, if any.
fn task_body_and_command(file: &[u8]) -> (Option<String>, String) {
    match frontmatter::split(file, true) {
        Some(Layout::Header { start, end, body }) => {
            let header = std::str::from_utf8(&file[start..end]).unwrap_or("");
            let command = frontmatter::parse(header).ok().and_then(|fields| {
                fields
                    .into_iter()
                    .find(|f| f.key == "command")
                    .and_then(|f| match f.value {
                        Value::Scalar(s) => Some(s.into_owned()),
                        _ => None,
                    })
            });
            (command, String::from_utf8_lossy(&file[body..]).into_owned())
        }
        Some(Layout::None { body }) => (None, String::from_utf8_lossy(&file[body..]).into_owned()),
        _ => (None, String::new()),
    }
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
pub fn plan(root: &Root, now: Timestamp) -> Result<(Vec<PlanItem>, Config)> {
    let config = Config::load(root)?;
    let (roles, problems) = role::load_all(root);
    if let Some(p) = problems.into_iter().next() {
        return Err(p.into());
    }
    let scan = store::scan(root);
    let reg = Registry::load(root)?;
    let queue = Queue::new(&scan, now);
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
                    item.action = "spawn";
                    *used += 1;
                    running += 1;
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
