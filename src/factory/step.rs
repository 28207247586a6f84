//! One step under the queue lock: read the queue and the registry (from
//! memory while no one else changed them), record the agents that ended,
//! ask the scheduler what starts, apply what the gates decided, launch,
//! and write it all in batches; then commit to git.
//!
//! Agents that ended free their slots at once: their successors start
//! first, then the ends are recorded while those start (a step is longer
//! than a short job; this keeps the cores busy). Under a daily cost cap the
//! ends are recorded first, so what they cost counts before anything new
//! starts.

use std::time::{Duration, Instant};

use serde_json::json;

use super::gate::{GateAction, GateInput};
use super::schedule::{self, Schedule, Snapshot};
use super::{file_stamp, Factory, Finished, Live, GIT_BATCH};
use crate::approval::{self, Decision};
use crate::error::Result;
use crate::frontmatter::Change;
use crate::queue::Queue;
use crate::registry::{AgentStatus, Registry};
use crate::role::{self, Role};
use crate::root::Root;
use crate::spawn;
use crate::store::{self, Writer};
use crate::task::{Folder, Status};
use crate::watch;

impl Factory {
    /// One scheduling step under the queue lock: record finished agents,
    /// then spawn what the limits allow.
    pub(super) fn step(&mut self, finished: Vec<Finished>) -> Result<()> {
        // A folder swapped for a link leading out of the root meanwhile:
        // this step fails (and is retried, loudly) rather than follow it.
        self.root.confine()?;
        // The queue: as the last step left it while no one else changed a
        // file, else read afresh (with the repairs a writer makes).
        let fresh = self.cache.is_none();
        let patched = std::mem::take(&mut self.patched);
        // The files as they are before a full read: what the next heartbeat
        // compares with. Taken before, not after: a file someone writes
        // while the step runs is then a change the heartbeat finds (with
        // `watch: false` nothing else would).
        let before = fresh.then(|| watch::fingerprint(&self.root, !self.config.watch));
        let mut w = Writer::with_disk(&self.root, self.cache.take(), &mut self.disk)?;
        let result = self.step_locked(&mut w, finished, fresh, patched, before);
        // Git: what this step changed, committed explicitly.
        w.commit_git();
        self.disk = w.into_disk();
        result
    }

    /// [`Factory::step`] with the queue locked.
    fn step_locked(
        &mut self,
        w: &mut Writer,
        finished: Vec<Finished>,
        fresh: bool,
        patched: bool,
        before: Option<u64>,
    ) -> Result<()> {
        // Files read again: the repairs a full read makes (adoption of
        // id-less files above all).
        if patched {
            w.repair()?;
        }
        self.clear_counts();
        if fresh || patched {
            self.report_problems(&w.scan);
            self.recheck_stuck = true;
        }
        // The registry: as this factory last wrote it, unless someone
        // (`taskq stop`) changed the file since.
        let path = Registry::path(&self.root);
        let mut reg = match self.reg_cache.take() {
            Some((reg, stamp)) if stamp == file_stamp(&path) => reg,
            _ => Registry::load(&self.root)?,
        };
        // The step's writes are staged and written together (see fsutil):
        // before any agent starts, and at the end, under the lock.
        w.disk.stage();
        let mut result = self.step_with(w, &mut reg, finished, fresh);
        // A step that failed leaves the files as they were (its batch is
        // dropped): the next one decides again from them, and takes the
        // same ends again.
        let committed = match result.is_ok() {
            true => w.disk.commit(),
            false => {
                w.disk.discard_staged();
                Ok(())
            }
        };
        w.settle_versions();
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
        if fresh && !wrote {
            self.fingerprint = before;
        } else if patched && !wrote {
            // Brought up to date from the watcher's paths (the watcher sees
            // what is written meanwhile): walked after the step, so it
            // delays no agent.
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
        result
    }

    pub(super) fn step_with(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        finished: Vec<Finished>,
        fresh: bool,
    ) -> Result<()> {
        let undone = match self.reconcile {
            true => self.undo_unstarted(w, reg, &finished)?,
            false => false,
        };
        // Agents' requests first: a task an agent adds is scheduled in
        // this same step.
        self.serve_api(w, reg);
        // Agents that ended free their slots at once: their successors
        // start first, then the ends are recorded while those run (a step
        // is longer than a short job; this keeps the cores busy).
        let mut ended: Vec<(Finished, Option<Live>)> = finished
            .into_iter()
            .map(|f| {
                let live = self.running.remove(&f.agent);
                self.tokens.remove(&f.agent);
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
        let mut dirty = any_ended || undone;
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

    pub(super) fn reload_roles(&mut self) {
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
    pub(super) fn schedule_wake(&mut self, w: &Writer) {
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

    /// After a failed step: agents it registered but never started (the
    /// batch that marked their tasks failed halfway, e.g. a person's edit
    /// refused by the compare-and-swap) are recorded as never started, and
    /// their tasks returned to ready without counting an attempt.
    fn undo_unstarted(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        finished: &[Finished],
    ) -> Result<bool> {
        // Not one whose end is being recorded (it ran: a recovered agent
        // whose end was read from its exit record, a step retried).
        let unstarted: Vec<(String, String)> = reg
            .agents
            .values()
            .filter(|a| a.status == AgentStatus::Spawning && !self.running.contains_key(&a.id))
            .filter(|a| !finished.iter().any(|f| f.agent == a.id))
            .map(|a| (a.id.clone(), a.task.clone()))
            .collect();
        let (mut settled, mut pending) = (false, false);
        for (id, task) in unstarted {
            match self.never_started(w, reg, &id, &task)? {
                true => settled = true,
                false => pending = true,
            }
        }
        // A task not in the queue at this moment (an editor's save moves
        // the file aside for an instant): decided at a later step.
        self.reconcile = pending;
        Ok(settled)
    }

    /// An agent registered whose process never started (a failed step, a
    /// factory killed in between): its task is ready again, no attempt
    /// counted; the agent is recorded as failed, never started. False (and
    /// nothing changed) while its task is not in the queue: its file may be
    /// moved aside for an instant (an editor's save), and marking the agent
    /// failed then would leave the task claimed by it for ever.
    pub(super) fn never_started(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        id: &str,
        task: &str,
    ) -> Result<bool> {
        let Some(i) = w.scan.position(task) else {
            return Ok(false);
        };
        let t = &w.scan.tasks[i];
        if t.status == Status::Running && t.assigned.as_deref() == Some(id) {
            w.set(
                i,
                &[
                    Change::set("status", "ready"),
                    Change::remove("assigned"),
                    Change::remove("started"),
                ],
                Status::Ready,
                &format!("{id} never started"),
            )?;
        }
        if let Some(a) = reg.agents.get_mut(id) {
            a.status = AgentStatus::Failed;
            a.completed = Some(w.now);
            a.reason = Some("never started: its process was never created".into());
        }
        self.progress(format!("{id} never started; {task} is ready again"));
        Ok(true)
    }

    /// Asks the scheduler what starts now, applies the gates' actions,
    /// and launches the agents; records the `ended` agents (draining it)
    /// while those start. Returns true when the registry changed.
    pub(super) fn spawn_ready(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        ended: &mut Vec<(Finished, Option<Live>)>,
    ) -> Result<bool> {
        // The tasks it is about to act on must be as the cached queue has
        // them: one that a script or a person changed meanwhile is read
        // again and the schedule made again (compare and swap: the writes
        // check once more).
        let mut plan = self.schedule(w, reg, ended);
        for _ in 0..3 {
            let ids: Vec<String> = plan
                .starts
                .iter()
                .map(|s| s.task)
                .chain(plan.actions.iter().map(|(i, _)| *i))
                .map(|i| w.scan.tasks[i].id.to_string())
                .collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            if !w.reread_if_changed(&ids)? {
                break;
            }
            plan = self.schedule(w, reg, ended);
        }
        self.startable = plan.startable;
        if plan.staggered {
            self.stagger_wake = Some(Instant::now() + self.config.spawn_stagger);
        }
        self.check_budget(reg, w.now);
        match (&plan.paused, &self.paused) {
            (Some(why), None) => {
                self.progress(format!("paused: {why}"));
                let spent = reg.spent_today(w.now);
                let payload = json!({"reason": why, "spent_today_usd": spent, "cap_usd": self.config.daily_cost_cap_usd,
                       "cap_mode": self.config.cap_mode.as_str()});
                self.hook("on-cost-cap", payload.clone());
                self.notify_daily(crate::notify::NotifyEvent::CapReached, w.now, payload);
            }
            (None, Some(_)) => self.progress("resumed: under the daily cost cap"),
            _ => {}
        }
        self.paused = plan.paused;
        // `cap_mode: stop_all`: the agents at work stop too (their tasks go
        // back to ready; what they spent until now is recorded as they end).
        if self.paused.is_some() && self.config.cap_mode == crate::config::CapMode::StopAll {
            let mut stopped = Vec::new();
            for (id, live) in self.running.iter_mut() {
                if let Some(stop) = live.stop.take() {
                    let _ = stop.send(());
                    stopped.push(id.clone());
                }
            }
            if !stopped.is_empty() {
                stopped.sort();
                self.progress(format!(
                    "cap_mode stop_all: stopping {}",
                    stopped.join(", ")
                ));
            }
        }
        match (&plan.paused_by_person, &self.paused_by_person) {
            (Some(why), None) => {
                let running = self.running.len();
                self.progress(format!(
                    "{why}: no new agents start; running ones go on ({running} now)"
                ));
            }
            (None, Some(_)) => self.progress("resumed: agents start again"),
            _ => {}
        }
        self.paused_by_person = plan.paused_by_person;
        for (i, action) in plan.actions {
            let task = w.scan.tasks[i].id.to_string();
            self.apply_gate_action(w, &task, action)?;
        }
        if plan.starts.is_empty() {
            return Ok(false);
        }
        self.launch(w, reg, plan.starts, ended)?;
        Ok(true)
    }

    /// The schedule for this step (see [`schedule`]).
    pub(super) fn schedule(
        &mut self,
        w: &Writer,
        reg: &Registry,
        ended: &[(Finished, Option<Live>)],
    ) -> Schedule {
        // Only the cost cap reads it, and it sums the whole registry.
        let spent_today = match self.config.daily_cost_cap_usd {
            Some(_) => reg.spent_today(w.now),
            None => crate::money::Usd::ZERO,
        };
        // The memory budget: what running agents use now.
        let memory_used_kb = match self.config.max_agent_memory_mb {
            Some(_) => self
                .running
                .values()
                .filter_map(|l| spawn::tree_rss_kb(l.pid))
                .sum(),
            None => 0,
        };
        let running: Vec<(&str, &str)> = self
            .running
            .iter()
            .map(|(id, l)| (id.as_str(), l.role.as_str()))
            .collect();
        let ending: Vec<&str> = ended.iter().map(|(f, _)| f.agent.as_str()).collect();
        let busy: Vec<&str> = self
            .running
            .keys()
            .map(String::as_str)
            .chain(ending.iter().copied())
            .filter_map(|id| reg.agents.get(id).map(|a| a.task.as_str()))
            .collect();
        let root = &self.root;
        // A person's pause: one small file, read at every step (the
        // watcher wakes the factory when it appears or goes; the heartbeat
        // steps anyway).
        let pause = crate::pause::read(root);
        let ledger = approval::lazy_ledger(root);
        let (roles, config) = (&self.roles, &self.config);
        let decision = |t: &crate::task::Task| approval::verified(root, t, roles, config, &ledger);
        let found = &self.found;
        let missing = |r: &Role| super::launch::missing_program(r, &self.config, found);
        let queue = Queue::new(&w.scan, w.now);
        let snapshot = Snapshot {
            queue: &queue,
            roles: &self.roles,
            gates: GateInput {
                root,
                config: &self.config,
                registry: reg,
                spent_today,
                decision: &decision,
                missing_program: &missing,
            },
            running: &running,
            ending: &ending,
            busy: &busy,
            memory_used_kb,
            since_last_spawn: self.last_spawn.map(|t| t.elapsed()),
            pause: pause.as_ref(),
        };
        let plan = schedule::schedule(&snapshot);
        drop(ledger);
        // After someone else changed the queue: the tasks that can never
        // run, said once each (a graph walk: not on every step).
        if std::mem::take(&mut self.recheck_stuck) {
            let stuck = super::plan::never_runs(&queue, &self.roles, &self.config);
            self.report_stuck(&stuck, w);
        }
        plan
    }

    /// Applies what a gate decided for a task it did not let run.
    pub(super) fn apply_gate_action(
        &mut self,
        w: &mut Writer,
        task: &str,
        action: GateAction,
    ) -> Result<()> {
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
                let shown = self.request_approval(w, i, task, &role, model)?;
                self.progress(format!("{task} waits for approval: {shown}"));
            }
            GateAction::Renew {
                role,
                model,
                stale,
                void,
            } => {
                let kept = self.set_aside(w, &stale, &void)?;
                let shown = |p: &std::path::Path| {
                    p.strip_prefix(&self.root.dir)
                        .unwrap_or(p)
                        .display()
                        .to_string()
                };
                let (was, kept) = (shown(&stale), shown(&kept));
                let pending = self.root.approvals("pending").join(format!("{task}.md"));
                let asked = match w.disk.exists(&pending) {
                    true => shown(&pending),
                    false => self.request_approval(w, i, task, &role, model)?,
                };
                let line = match void.unrequested {
                    true => format!(
                        "warning: {was} is ignored: it {}; kept as {kept}; {task} waits for approval: {asked}",
                        void.why
                    ),
                    false => format!(
                        "{task}'s approval is void: {}; {was} kept as {kept}; {task} waits for approval again: {asked}",
                        void.why
                    ),
                };
                self.progress(line);
            }
        }
        Ok(())
    }

    /// Writes a task's pending approval file (and notes the request in the
    /// ledger); returns its path, relative to the root.
    fn request_approval(
        &mut self,
        w: &mut Writer,
        i: usize,
        task: &str,
        role: &str,
        model: Option<String>,
    ) -> Result<String> {
        let t = &w.scan.tasks[i];
        let title = store::display_title(&self.root, t);
        let file = w.disk.read(&self.root.task_path(t)).unwrap_or_default();
        let (_, body) = super::prompt::body_and_command(&file);
        let the_role = self.role_or_fallback(role);
        // What the approval covers: the task as routed (a review's gate
        // is the same request as its builder's).
        let routed = role::route(t, &self.roles, &self.config)
            .cloned()
            .unwrap_or_else(|| the_role.clone());
        let subject = approval::Subject::of_file(&file, t, &routed);
        let workspace = super::launch::workspace_description(&self.root, &the_role, task);
        let deps = super::launch::dependency_results(&self.root, w, i);
        let prompt = super::prompt::task_prompt(task, &title, &body, &deps, &workspace);
        // Shell commands have no model to name.
        let model = model.filter(|_| the_role.settings.agent.is_model_cli());
        let t = &w.scan.tasks[i];
        let path = approval::request_task(
            &self.root,
            &mut w.disk,
            t,
            &title,
            &subject.role,
            model.as_deref(),
            &prompt,
            &subject,
            w.now,
        )?;
        w.touch(path.clone());
        w.touch(approval::Ledger::path(&self.root));
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
        self.hook(
            "on-approval-pending",
            json!({"task": task, "role": role, "model": model, "status": "pending", "file": shown}),
        );
        Ok(shown)
    }

    /// Moves a void approval file to `approvals/stale/<name>.<n>.md`,
    /// marked `stale: <time>` and `reason: <why>`; returns where.
    fn set_aside(
        &mut self,
        w: &mut Writer,
        path: &std::path::Path,
        void: &approval::Void,
    ) -> Result<std::path::PathBuf> {
        let dir = self.root.approvals("stale");
        std::fs::create_dir_all(&dir).map_err(|e| crate::error::Error::io(&dir, e))?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = (1..)
            .map(|n| dir.join(format!("{stem}.{n}.md")))
            .find(|p| !w.disk.exists(p) && std::fs::symlink_metadata(p).is_err())
            .expect("an unbounded range always yields a free name");
        let old = w.disk.read(path).unwrap_or_default();
        let changes = [
            Change::set("stale", &crate::task::format_timestamp(w.now)),
            Change::set("reason", &void.why),
        ];
        let new = crate::frontmatter::edit(&old, &changes).unwrap_or_else(|_| {
            let mut b = format!(
                "---\nstale: {}\nreason: {}\n---\n",
                crate::task::format_timestamp(w.now),
                crate::frontmatter::yaml_str(&void.why)
            )
            .into_bytes();
            b.extend_from_slice(&old);
            b
        });
        w.disk.rename(path, &to)?;
        w.disk.write(&to, &new)?;
        // The request that replaces it is news: notified again.
        if self
            .runtime
            .sent
            .remove(&format!("approval_pending:{stem}"))
        {
            self.runtime_dirty = true;
        }
        w.touch(path.to_path_buf());
        w.touch(to.clone());
        w.notes.push(crate::git::Entry {
            line: format!(
                "{stem} approval void: {} ({})",
                void.why,
                to.strip_prefix(&self.root.dir).unwrap_or(&to).display()
            ),
            trailers: vec![("Task".into(), stem.clone())],
        });
        Ok(to)
    }
}

/// Puts a task's approval files (a person may have moved them by hand)
/// into the writer's commit.
pub(super) fn touch_gate(w: &mut Writer, root: &Root, task: &str) {
    if matches!(approval::decision(root, task), Decision::Missing) {
        return;
    }
    for state in ["pending", "approved", "rejected"] {
        w.touch(root.approvals(state).join(format!("{task}.md")));
    }
}

/// Names the agent (and cost) of the writer's last transition, for the
/// commit's trailers.
pub(super) fn tag_last(w: &mut Writer, agent: &str, cost: Option<crate::money::Cost>) {
    if let Some(t) = w.transitions.last_mut() {
        t.agent = Some(agent.to_string());
        t.cost = cost;
    }
}
