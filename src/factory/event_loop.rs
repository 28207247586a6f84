//! The event loop: signals, file events and the heartbeat, debounced
//! into steps; and which file events are someone else's changes (the
//! factory's own writes echo back through the watcher).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{file_stamp, Event, Factory};
use crate::error::{Error, Result};
use crate::watch;

impl Factory {
    pub(super) async fn main(mut self, lock: &mut crate::lock::LockGuard) -> Result<ExitCode> {
        use tokio::signal::unix::{signal, SignalKind};
        // Agents of the same user cannot read this process's environment
        // (its secrets) through /proc, nor ptrace it.
        crate::sandbox::harden_factory();
        let mut sigterm =
            signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
        let mut sigint =
            signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
        let mut sighup =
            signal(SignalKind::hangup()).map_err(|e| Error::io("SIGHUP handler", e))?;
        // Now others may see the factory (see `run`).
        lock.write_pid()?;
        let _watcher = match self.config.watch {
            true => Some(watch::start(
                &self.root,
                Arc::clone(&self.seen),
                self.tx.clone(),
                || Event::Changed,
            )?),
            false => None,
        };
        // After the signal handlers: a SIGTERM right after the run lock
        // names this process must find them in place.
        self.load_runtime();
        self.progress(format!(
            "factory started in {} (max_concurrent {}, {})",
            self.root.dir.display(),
            self.config.max_concurrent,
            crate::output::count(self.roles.len(), "role")
        ));
        if let Some(c) = crate::spawn::contain::current() {
            // Which containment keeps agents' process trees together, and
            // what it misses (docs/reference/roles.md#no-orphans).
            self.progress(format!("agents contained by {c}"));
        }
        // The agent API: agents' writing commands come in here.
        let _api = self.start_api();
        self.progress(self.sandbox_summary());
        let finished = self.recover()?;
        self.step_or_retry(finished);
        let mut heartbeat = tokio::time::Instant::now() + self.jittered(self.config.heartbeat);
        loop {
            if self.opts.until_idle && self.is_idle() {
                self.progress(format!(
                    "idle: {} spawned, {} done, {} failed, {} retried",
                    self.stats.spawned, self.stats.done, self.stats.failed, self.stats.retried
                ));
                self.join_hooks();
                return Ok(self.idle_exit());
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
                    Some(Event::Api(call)) => {
                        self.api_queue.push(call);
                        due = true;
                    }
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
                    self.check_stuck();
                }
                () = tokio::time::sleep_until(wake) => due = true,
                _ = sigterm.recv() => return self.shutdown("SIGTERM").await,
                _ = sigint.recv() => return self.shutdown("SIGINT").await,
                _ = sighup.recv() => {
                    self.reload();
                    due = true;
                }
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
                    Some(Event::Api(call)) => self.api_queue.push(call),
                    None => break,
                }
            }
            if rescan {
                self.absorb_changes();
            }
            let was_idle = self.is_idle();
            let (ended, began) = (finished.len(), std::time::Instant::now());
            self.step_or_retry(finished);
            tracing::debug!(ended, running = self.running.len(), took = ?began.elapsed(), "step");
            if self.is_idle() && !was_idle {
                self.hook("on-idle",
                    json!({"status": "idle", "spawned": self.stats.spawned, "done": self.stats.done, "failed": self.stats.failed}));
            }
        }
    }

    /// A step; when it fails (a full disk, an I/O error, the queue lock
    /// held too long, a file gone mid-step), the factory says so loudly,
    /// keeps supervising its agents, reads everything afresh and tries
    /// again after a backoff. The ends the failed step took are taken
    /// again (recording an end twice changes nothing).
    pub(super) fn step_or_retry(&mut self, mut finished: Vec<super::Finished>) {
        // Ends a failed step took first.
        if !self.retry_ends.is_empty() {
            let mut earlier = std::mem::take(&mut self.retry_ends);
            earlier.retain(|a| !finished.iter().any(|f| f.agent == a.agent));
            finished.splice(0..0, earlier);
        }
        let again = finished.clone();
        let result = self.step(finished);
        self.answer_api(result.is_ok());
        match result {
            Ok(()) => {
                self.changed_retries = 0;
                self.after_step();
                if let Some(n) = self.step_failures.take() {
                    self.progress(format!(
                        "recovered: a step succeeded after {n} failed one{}",
                        if n == 1 { "" } else { "s" }
                    ));
                }
            }
            Err(e) if e.is_changed() && self.changed_retries < 5 => {
                // Someone changed a file this step was about to write:
                // nothing was overwritten; decide again on the files as
                // they are now, at once.
                self.changed_retries += 1;
                self.reconcile = true;
                self.retry_ends.extend(again);
                self.cache = None;
                self.reg_cache = None;
                tracing::info!("{e}; deciding again");
                let at = std::time::Instant::now();
                self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
            }
            Err(e) => {
                self.changed_retries = 0;
                let n = self.step_failures.map_or(1, |n| n + 1);
                self.step_failures = Some(n);
                self.reconcile = true;
                self.retry_ends.extend(again);
                // What is in memory may not have reached the files.
                self.cache = None;
                self.reg_cache = None;
                let wait = Duration::from_millis(250)
                    .saturating_mul(1 << (n - 1).min(7))
                    .min(Duration::from_secs(30));
                let running = self.running.len();
                let wait_s = wait.as_secs_f64();
                self.progress(format!(
                    "error: a step failed: {e}; {running} agent{} still supervised; trying again in {wait_s:.2}s",
                    if running == 1 { "" } else { "s" },
                ));
                let at = std::time::Instant::now() + wait;
                self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
            }
        }
    }

    /// SIGHUP: the config and the roles are read again (each kept as it
    /// was when the new one has an error).
    fn reload(&mut self) {
        match crate::config::Config::load(&self.root) {
            Ok(config) => self.config = config,
            Err(e) => self.progress(format!("SIGHUP: {e} (keeping the config loaded before)")),
        }
        self.reload_roles();
        self.recheck_stuck = true;
        self.progress(format!(
            "SIGHUP: reloaded the config (max_concurrent {}) and {} role{}",
            self.config.max_concurrent,
            self.roles.len(),
            if self.roles.len() == 1 { "" } else { "s" }
        ));
    }

    /// True when the watcher saw a change this factory did not make
    /// itself (a file it wrote still as it left it is its own echo).
    pub(super) fn external_change(&mut self) -> bool {
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
    pub(super) fn absorb_changes(&mut self) {
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

    pub(super) fn is_idle(&self) -> bool {
        self.running.is_empty() && self.startable == 0 && self.wake_at.is_none()
    }
}

impl Factory {
    /// `taskq run`'s line on the agents' sandbox: the Landlock ABI and what
    /// it covers, and the roles that run without it.
    fn sandbox_summary(&self) -> String {
        use crate::sandbox::{self, Mode};
        let abi = sandbox::abi();
        let off: Vec<&str> = self
            .roles
            .iter()
            .filter(|r| {
                abi <= 0 || sandbox::mode(&r.settings.sandbox, self.config.sandbox) == Mode::Off
            })
            .map(|r| r.name.as_str())
            .collect();
        let mut line = match abi {
            ..=0 => format!("agents NOT sandboxed: {}", sandbox::covers(0)),
            abi => format!(
                "agents sandboxed by landlock abi {abi}: {}",
                sandbox::covers(abi)
            ),
        };
        if abi > 0 && !off.is_empty() {
            line.push_str(&format!("; UNSANDBOXED (sandbox: off): {}", off.join(", ")));
        }
        line
    }
}
