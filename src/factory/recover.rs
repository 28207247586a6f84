//! At start: adopt the agents a crashed factory left alive, finish the
//! ones that ended while no factory watched (their exit code is in
//! `agents/logs/exit-codes`), and mark the rest lost (a failed attempt).

use std::time::{Duration, Instant};

use super::{Factory, Finished};
use crate::error::Result;
use crate::registry::{Agent, AgentStatus, Registry};
use crate::spawn;
use crate::store::Writer;
use crate::task::{Status, Timestamp};

impl Factory {
    /// At start: adopt live agents, finish those that ended while no
    /// factory watched (exit file), mark the rest lost.
    pub(super) fn recover(&mut self) -> Result<Vec<Finished>> {
        let mut w = Writer::with_disk(&self.root, None, &mut self.disk)?;
        let result = self.recover_with(&mut w);
        w.commit_git();
        self.disk = w.into_disk();
        result
    }

    fn recover_with(&mut self, w: &mut Writer) -> Result<Vec<Finished>> {
        self.report_adopted(w);
        let mut reg = Registry::load(&self.root)?;
        reg.raise_to_high_water(&self.root);
        let mut finished = Vec::new();
        let mut lost = Vec::new();
        let live: Vec<Agent> = reg.live().cloned().collect();
        let mut codes = spawn::exit_codes(&self.root.exit_codes());
        for a in &live {
            // Agents started by a taskq before 0.2 wrote `<id>.exit`.
            let old = self.root.log(&a.id).with_extension("exit");
            if let Some(code) = crate::fsutil::read_capped(&old, 64)
                .ok()
                .flatten()
                .and_then(|t| t.text().trim().parse().ok())
            {
                codes.entry(a.id.clone()).or_insert(code);
            }
        }
        // Agents whose start a crash cut before their pid was recorded:
        // their wrappers recorded it.
        let started = spawn::start_pids(&self.root.exit_codes());
        let live: Vec<Agent> = live
            .into_iter()
            .map(|mut a| {
                if a.pid.is_none() {
                    // No record yet: the wrapper may not have written it
                    // when the crash came, or not even started.
                    let pid = started.get(&a.id).copied().or_else(|| {
                        spawn::contain::leader_of(&a.id, &self.root.dir)
                            .filter(|_| a.status == AgentStatus::Spawning)
                    });
                    if let Some(pid) = pid {
                        if spawn::runs_agent(pid, &a.id) {
                            a.pid = Some(pid);
                            a.pid_start = spawn::start_time(pid);
                            if let Some(e) = reg.agents.get_mut(&a.id) {
                                e.pid = a.pid;
                                e.pid_start = a.pid_start;
                                e.status = AgentStatus::Active;
                            }
                        } else if started.contains_key(&a.id) {
                            // It started and has ended: never "unstarted"
                            // (its end comes from its exit record).
                            if let Some(e) = reg.agents.get_mut(&a.id) {
                                e.status = AgentStatus::Active;
                            }
                        }
                    }
                }
                a
            })
            .collect();
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
                    ended_at: self.ended_at(&a, w.now),
                });
            } else if a.status == AgentStatus::Stopping {
                finished.push(Finished {
                    agent: a.id.clone(),
                    exit_code: None,
                    timed_out: false,
                    stopped: true,
                    max_rss_kb: None,
                    ended_at: self.ended_at(&a, w.now),
                });
            } else {
                lost.push(a);
            }
        }
        for a in lost {
            let pid = a.pid.or_else(|| started.get(&a.id).copied());
            // Someone may change the task file meanwhile (a script, an
            // editor): read it again and decide again, never an error that
            // ends the factory before it supervises anything.
            let mut tries = 0;
            loop {
                let settled = match pid {
                    Some(pid) => self.settle_lost(w, &mut reg, &a, pid),
                    // Its wrapper never wrote its start and no process of
                    // it runs: it never ran, so its task is ready again,
                    // with no attempt counted (as when a step fails before
                    // the start).
                    None => self.never_started(w, &mut reg, &a.id, &a.task).map(|done| {
                        // Its task not in the queue this instant: a later
                        // step decides (see `undo_unstarted`).
                        self.reconcile |= !done;
                    }),
                };
                match settled {
                    Err(e) if e.is_changed() && tries < 5 => {
                        tries += 1;
                        w.reread_if_changed(&[a.task.as_str()])?;
                    }
                    other => break other?,
                }
            }
        }
        reg.save(&self.root, &mut w.disk, w.now)?;
        Ok(finished)
    }

    /// An agent whose process (`pid`) ended while no factory watched,
    /// leaving no exit code: its attempt failed.
    fn settle_lost(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        a: &Agent,
        pid: u32,
    ) -> Result<()> {
        let reason = format!("lost: its process (pid {pid}) ended while no factory was watching");
        if let Some(i) = w.scan.position(&a.task) {
            let t = &w.scan.tasks[i];
            if t.status == Status::Running && t.assigned.as_deref() == Some(a.id.as_str()) {
                let role = self.role_or_fallback(&a.role);
                self.fail_attempt(w, i, &role, &reason)?;
            }
        }
        // What it printed before it died may still say what it spent.
        let output = spawn::read_tail(&self.root.log(&a.id), 8 << 20);
        let outcome =
            crate::agent::parse(a.adapter, &output, None, a.model.as_deref(), &self.config);
        let ended = self.ended_at(a, w.now).unwrap_or(w.now);
        if let Some(e) = reg.agents.get_mut(&a.id) {
            e.status = AgentStatus::Lost;
            e.completed = Some(ended);
            e.duration_ms =
                Some((ended - a.spawned).to_std().unwrap_or_default().as_millis() as u64);
            e.tokens = outcome.tokens;
            e.cost_usd = crate::agent::recorded_cost(a.adapter, outcome.cost_usd);
            e.reason = Some(reason);
        }
        self.progress(format!("{} marked lost ({})", a.id, a.task));
        Ok(())
    }

    /// When an agent that ended while no factory watched really ended: its
    /// log's last write (its final output), between its start and now.
    /// `None` when its log is gone.
    fn ended_at(&self, a: &Agent, now: Timestamp) -> Option<Timestamp> {
        let log = a
            .log
            .as_ref()
            .map_or_else(|| self.root.log(&a.id), |l| self.root.dir.join(l));
        let modified = std::fs::metadata(log).ok()?.modified().ok()?;
        let at: Timestamp = chrono::DateTime::<chrono::Utc>::from(modified).fixed_offset();
        // (Not `clamp`: a clock set back could make the start the later.)
        Some(at.max(a.spawned).min(now))
    }
}
