//! Recording an agent's end: its outcome read from its log, the worktree
//! committed, the result file, the task's transition (see [`outcome`] for
//! which), then the registry (task first, for crash safety).

use serde_json::json;

use super::outcome::{self, End, Limits, Resolution};
use super::{path_str, Factory, Finished, Live};
use crate::agent::{self, Outcome};
use crate::error::Result;
use crate::frontmatter::Change;
use crate::money::{Cost, Usd};
use crate::registry::{Agent, AgentStatus, Registry};
use crate::role::Role;
use crate::root::result_path;
use crate::spawn;
use crate::store::Writer;
use crate::task::{format_timestamp, Folder, Status, Timestamp};

impl Factory {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            retry_backoff: self.config.retry_backoff,
            max_review_rounds: self.config.max_review_rounds,
        }
    }

    /// Records one agent's end: registry entry, result file, and the
    /// task's transition (task first, then registry, for crash safety).
    pub(super) fn finish(
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
        if !agent.status.is_live() {
            // Recorded already (a step that failed after recording it is
            // being redone).
            return Ok(());
        }
        let stopping = f.stopped || agent.status == AgentStatus::Stopping;
        let output = spawn::read_tail(&self.root.log(&agent.id), 8 << 20);
        // The output is read on every end: Claude prints its result, with
        // what it spent, even after taskq's SIGTERM (a timeout, a stop, a
        // shutdown). Only the verdict is taskq's own then.
        let parsed = agent::parse(
            agent.adapter,
            &output,
            f.exit_code,
            agent.model.as_deref(),
            &self.config,
        );
        let outcome = if stopping {
            Outcome {
                success: false,
                reason: Some("stopped".into()),
                result: None,
                timed_out: false,
                ..parsed
            }
        } else if f.timed_out {
            let role_timeout = live
                .as_ref()
                .map(|l| l.timeout)
                .or_else(|| self.role(&agent.role).map(|r| r.settings.timeout));
            Outcome {
                success: false,
                reason: Some(format!(
                    "timed out after {}",
                    crate::duration::format(role_timeout.unwrap_or_default())
                )),
                result: None,
                ..parsed
            }
        } else {
            parsed
        };
        // What it cost: reported, or priced, or unknown: never a silent
        // zero for a model CLI. Shell and command agents cost nothing.
        let cost = agent::recorded_cost(agent.adapter, outcome.cost_usd);
        let ended = f.ended_at.unwrap_or(w.now);
        let status = if stopping {
            AgentStatus::Stopped
        } else if f.timed_out || outcome.timed_out {
            AgentStatus::Timeout
        } else if outcome.success {
            AgentStatus::Completed
        } else {
            AgentStatus::Failed
        };
        let role = self.role_or_fallback(&agent.role);
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
            // Its HOME, TMPDIR and the like stay out of the branch.
            let root_abs =
                std::fs::canonicalize(&self.root.dir).unwrap_or_else(|_| self.root.dir.clone());
            let ws_abs = root_abs.join(agent.workspace.as_deref().unwrap_or(""));
            let private = super::launch::private_paths(&role, &ws_abs, &root_abs, &agent.id);
            if let Err(e) = crate::git::Git::commit_all(&ws, &msg, &private) {
                tracing::warn!("{}: committing the worktree: {e}", ws.display());
            }
            // Under review, the tester works in it; it goes after the verdict.
            let reviewed = outcome.success && !stopping && role.settings.review.is_some();
            if !reviewed {
                super::launch::remove_worktree(repo, &ws);
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
                let path = self.root.result(&agent.task);
                w.disk.write(&path, text.as_bytes())?;
                w.touch(path);
            }
        }
        // The task: what the end does to it, as its file is now (a script
        // may have changed it since the cached queue was read).
        w.reread_if_changed(&[&agent.task])?;
        let transitions_before = w.transitions.len();
        // Ready and unclaimed while its agent ran: someone saved an old copy
        // of the file over the claim (an editor open since before it). The
        // claim is put back, so the end is recorded and the task not run
        // twice (no other agent may start it meanwhile: see `busy`).
        if let Some(i) = w.scan.position(&agent.task) {
            let t = &w.scan.tasks[i];
            if !stopping
                && t.folder == Folder::Todo
                && t.status == Status::Ready
                && t.assigned.is_none()
                && agent.attempt > t.attempts
                && !t.broken
            {
                w.set(
                    i,
                    &[
                        Change::set("status", "running"),
                        Change::set("assigned", &agent.id),
                    ],
                    Status::Running,
                    &format!(
                        "claim by {} restored (the file was saved over it)",
                        agent.id
                    ),
                )?;
            }
        }
        let position = w.scan.position(&agent.task);
        let task = position.map(|i| &w.scan.tasks[i]);
        let mine = task.is_some_and(|t| {
            t.assigned.as_deref() == Some(agent.id.as_str()) && t.folder == Folder::Todo
        });
        let log_tail = if is_tester && !agent.adapter.is_model_cli() {
            spawn::read_tail(&self.root.log(&agent.id), 4000)
        } else {
            String::new()
        };
        let end = End {
            stopped: stopping,
            timed_out: f.timed_out,
        };
        let jitter = self.random();
        let resolution = outcome::resolve(
            task,
            mine,
            &role,
            agent.adapter,
            end,
            &outcome,
            &log_tail,
            self.limits(),
            jitter,
        );
        if let (Resolution::NotMine { gone }, false) = (&resolution, stopping) {
            // Deleted, moved or reassigned by someone while it ran: say so
            // rather than record its result silently in the registry only.
            self.progress(format!(
                "{} ended; {} {}, so the result is only in the registry",
                agent.id,
                agent.task,
                match gone {
                    true => "is no longer in tasks/ (deleted or moved while it ran)",
                    false => "was changed while it ran (no longer assigned to it)",
                }
            ));
        }
        // The task's cost so far: every attempt and review, this one too.
        let (before, unknown_before) = reg.task_cost(&agent.task);
        let spent = Spent {
            agent: cost,
            task: before + cost.and_then(Cost::known).unwrap_or_default(),
            task_unknown: unknown_before + usize::from(cost == Some(Cost::Unknown)),
        };
        let mut builder_verdict = None;
        if let Some(i) = position {
            builder_verdict =
                self.apply(w, i, &agent, &role, resolution, &summary, &outcome, &spent)?;
        }
        for t in w.transitions[transitions_before..].iter_mut() {
            t.agent.get_or_insert_with(|| agent.id.clone());
            if t.cost.is_none() {
                t.cost = cost;
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
        // Its real end (an agent that ended while no factory watched keeps
        // its own time, not the restart's: its spend stays on its day).
        a.completed = Some(ended);
        a.exit_code = f.exit_code;
        a.duration_ms = Some(elapsed(&agent, ended).as_millis() as u64);
        a.cost_usd = cost;
        a.tokens = outcome.tokens;
        a.num_turns = outcome.num_turns;
        if let Some(model) = &outcome.model {
            // The model that answered (an alias resolved, a CLI-side
            // fallback): the one asked for stays, for the forecast.
            if a.model.as_deref() != Some(model) {
                a.model_asked = a.model.take();
            }
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
            w.disk.recycle_empty(&self.root.log(&agent.id));
        }
        // The task's cost: every attempt and review, summed (the known
        // amounts; `status TASK` names the unknown ones).
        if !spent.task.is_zero() {
            if let Some(i) = w.scan.position(&agent.task) {
                w.rewrite(i, &[Change::set_raw("cost_usd", spent.task.decimal(4))])?;
            }
        }
        Ok(())
    }

    /// Writes a resolution to task `i`. Returns `(builder, passed)` when a
    /// tester gave a verdict.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn apply(
        &mut self,
        w: &mut Writer,
        i: usize,
        agent: &Agent,
        role: &Role,
        resolution: Resolution,
        summary: &Option<String>,
        outcome: &Outcome,
        spent: &Spent,
    ) -> Result<Option<(String, bool)>> {
        let cost_json = spent.agent.map(Cost::to_json);
        let result_file = path_str(&result_path(&agent.task));
        match resolution {
            Resolution::NotMine { .. } => {}
            Resolution::TesterStopped => {
                // The review is redone by the next tester.
                w.set(
                    i,
                    &[Change::remove("assigned")],
                    Status::Review,
                    &format!("{} stopped", agent.id),
                )?;
            }
            Resolution::Stopped { .. } => {
                w.return_stopped(i, &agent.id, agent.cancel_task)?;
                self.progress(format!("stopped {} ({})", agent.id, agent.task));
            }
            Resolution::Review { reviewer } => {
                // The tester gate: a builder's success is not done yet.
                let mut changes = vec![
                    Change::set("status", "review"),
                    Change::set("review_role", &reviewer),
                    Change::set("builder", &agent.id),
                    Change::remove("reason"),
                ];
                if let Some(s) = summary {
                    changes.push(Change::set("result", s));
                }
                if outcome.result.is_some() {
                    changes.push(Change::set("result_file", &result_file));
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
                           "status": "review", "cost_usd": cost_json, "result": summary}));
            }
            Resolution::Done => {
                let mut changes = vec![
                    Change::set("status", "done"),
                    Change::set("completed", &format_timestamp(w.now)),
                    Change::remove("reason"),
                ];
                match summary {
                    Some(s) => changes.push(Change::set("result", s)),
                    None => changes.push(Change::remove("result")),
                }
                if outcome.result.is_some() {
                    changes.push(Change::set("result_file", &result_file));
                }
                w.set(i, &changes, Status::Done, &format!("by {}", agent.id))?;
                w.move_to_done(i)?;
                self.stats.done += 1;
                self.progress(format!(
                    "done {} by {} in {}{}",
                    agent.task,
                    agent.id,
                    crate::duration::format(elapsed(agent, w.now)),
                    spent.describe()
                ));
                self.hook("on-done",
                    json!({"task": agent.task, "agent": agent.id, "role": agent.role, "model": agent.model,
                           "status": "done", "cost_usd": cost_json, "task_cost_usd": spent.task.as_f64(), "result": summary,
                           "log": agent.log, "workspace": agent.workspace}));
            }
            r @ (Resolution::Retry { .. } | Resolution::Failed { .. }) => {
                self.write_attempt(w, i, role, r)?;
            }
            r @ Resolution::ReviewError { .. } => self.write_review_error(w, i, role, r)?,
            Resolution::ReviewPassed { builder } => {
                let id = agent.task.clone();
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
                    "done {id}: {} passed the work of {builder}{}",
                    agent.id,
                    spent.describe()
                ));
                self.hook(
                    "on-done",
                    json!({"task": id, "agent": builder, "tested_by": agent.id, "status": "done"}),
                );
                return Ok(Some((builder, true)));
            }
            Resolution::ReviewFailed {
                builder,
                round,
                findings,
                last,
            } => {
                let id = agent.task.clone();
                self.close_builder_worktree(&builder);
                let section = format!(
                    "## Review (round {round}, {})\n\n{}",
                    agent.id,
                    findings.trim()
                );
                if last {
                    let reason = format!(
                        "failed review {round} times (max_review_rounds {})",
                        self.config.max_review_rounds
                    );
                    w.rewrite_appending(
                        i,
                        &[
                            Change::set("status", "failed"),
                            Change::set_raw("review_rounds", round.to_string()),
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
                            Change::set_raw("review_rounds", round.to_string()),
                            Change::set("reason", &format!("review {round} failed ({})", agent.id)),
                            Change::remove("assigned"),
                            Change::remove("started"),
                            Change::remove("review_role"),
                        ],
                        Some(&section),
                    )?;
                    self.progress(format!(
                        "{id} failed review {round} by {}: back to its builder",
                        agent.id
                    ));
                }
                return Ok(Some((builder, false)));
            }
        }
        Ok(None)
    }

    /// A failed attempt (of an agent, of a start, or lost after a crash):
    /// written as [`outcome::attempt_failed`] resolves it.
    pub(super) fn fail_attempt(
        &mut self,
        w: &mut Writer,
        i: usize,
        role: &Role,
        reason: &str,
    ) -> Result<()> {
        let jitter = self.random();
        let r = outcome::attempt_failed(&w.scan.tasks[i], role, reason, self.limits(), jitter);
        self.write_attempt(w, i, role, r)
    }

    /// Writes a `Retry` or `Failed` resolution.
    pub(super) fn write_attempt(
        &mut self,
        w: &mut Writer,
        i: usize,
        role: &Role,
        r: Resolution,
    ) -> Result<()> {
        let id = w.scan.tasks[i].id.to_string();
        match r {
            Resolution::Retry {
                attempt,
                retries,
                reason,
                wait,
            } => {
                let at = w.now + chrono::Duration::from_std(wait).unwrap_or_default();
                w.set(
                    i,
                    &[
                        Change::set("status", "ready"),
                        Change::set_raw("attempts", attempt.to_string()),
                        Change::set("reason", &reason),
                        Change::set("retry_after", &format_timestamp(at)),
                        Change::remove("assigned"),
                        Change::remove("started"),
                    ],
                    Status::Ready,
                    &format!("retry {attempt}/{retries}"),
                )?;
                self.stats.retried += 1;
                self.progress(format!(
                    "failed {id} (attempt {attempt}): {reason}; retry {attempt}/{retries} in {}",
                    crate::duration::format(wait)
                ));
            }
            Resolution::Failed { attempts, reason } => {
                w.set(
                    i,
                    &[
                        Change::set("status", "failed"),
                        Change::set_raw("attempts", attempts.to_string()),
                        Change::set("reason", &reason),
                        Change::remove("retry_after"),
                    ],
                    Status::Failed,
                    &reason,
                )?;
                self.stats.failed += 1;
                let times = match attempts {
                    1 => "1 attempt".to_string(),
                    n => format!("{n} attempts"),
                };
                self.progress(format!("failed {id} after {times}: {reason}"));
                self.hook("on-fail",
                    json!({"task": id, "role": role.name, "status": "failed", "attempts": attempts, "reason": reason}));
            }
            other => unreachable!("not an attempt's resolution: {other:?}"),
        }
        Ok(())
    }

    /// A tester run that gave no verdict (or could not start).
    pub(super) fn review_error(
        &mut self,
        w: &mut Writer,
        i: usize,
        role: &Role,
        reason: &str,
    ) -> Result<()> {
        let r = outcome::review_errored(&w.scan.tasks[i], role, reason);
        self.write_review_error(w, i, role, r)
    }

    pub(super) fn write_review_error(
        &mut self,
        w: &mut Writer,
        i: usize,
        role: &Role,
        r: Resolution,
    ) -> Result<()> {
        let Resolution::ReviewError {
            errors,
            reason,
            retry,
        } = r
        else {
            unreachable!("not a review error: {r:?}");
        };
        let id = w.scan.tasks[i].id.to_string();
        if retry {
            w.set(
                i,
                &[
                    Change::set_raw("review_errors", errors.to_string()),
                    Change::set("reason", &reason),
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

    /// Removes the worktree a reviewed builder left (its branch stays).
    pub(super) fn close_builder_worktree(&self, builder: &str) {
        let Ok(reg) = Registry::load(&self.root) else {
            return;
        };
        if let Some(b) = reg.agents.get(builder) {
            if let (Some(repo), Some(ws)) = (&b.repo, &b.workspace) {
                super::launch::remove_worktree(repo, &self.root.dir.join(ws));
            }
        }
    }
}

/// What an agent's end adds to the money: its own cost, and its task's
/// total over every attempt and review.
pub(super) struct Spent {
    /// This agent's cost (`None`: a shell or command agent).
    pub agent: Option<Cost>,
    /// The task's known total, this agent included.
    pub task: Usd,
    /// The task's agents whose cost is unknown.
    pub task_unknown: usize,
}

impl Spent {
    /// ` ($0.40)`, ` ($0.40 + 1 unknown)`, or nothing for a task that cost
    /// nothing to anyone's knowledge and had no model agent.
    fn describe(&self) -> String {
        match (self.task.is_zero(), self.task_unknown) {
            (true, 0) if self.agent.is_none() => String::new(),
            (_, 0) => format!(" ({})", self.task),
            (_, n) => format!(" ({} + {n} unknown)", self.task),
        }
    }
}

fn elapsed(agent: &Agent, now: Timestamp) -> std::time::Duration {
    (now - agent.spawned).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_done_line_shows_the_tasks_total() {
        let usd = |s: &str| Usd::parse(s).unwrap();
        let spent = |agent, task: &str, unknown| Spent {
            agent,
            task: usd(task),
            task_unknown: unknown,
        };
        assert_eq!(
            spent(Some(Cost::Known(usd("0.15"))), "0.40", 0).describe(),
            " ($0.40)"
        );
        assert_eq!(
            spent(Some(Cost::Unknown), "0.40", 1).describe(),
            " ($0.40 + 1 unknown)"
        );
        assert_eq!(
            spent(Some(Cost::Known(usd("0.0035"))), "0.0035", 0).describe(),
            " ($0.0035)"
        );
        // A shell task that cost nothing says nothing.
        assert_eq!(spent(None, "0", 0).describe(), "");
    }
}
