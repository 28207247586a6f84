//! Notifications (the config's `notify:` commands, see [`crate::notify`])
//! and stuck detection: which events happened, delivered once each, and
//! the runtime file that remembers them across restarts.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::Factory;
use crate::notify::{self, NotifyEvent, Runtime, Stall};
use crate::registry::Registry;
use crate::task::Timestamp;

impl Factory {
    /// Reads the runtime file a factory before left (what it already
    /// notified, which agents it flagged stuck) and records this one.
    pub(super) fn load_runtime(&mut self) {
        self.runtime = Runtime::load(&self.root);
        self.runtime.pid = Some(std::process::id());
        self.runtime.service = std::env::var("TASKQ_SERVICE")
            .ok()
            .filter(|s| !s.is_empty());
        self.runtime_dirty = true;
        self.save_runtime();
    }

    /// Writes the runtime file when it changed.
    pub(super) fn save_runtime(&mut self) {
        if !std::mem::take(&mut self.runtime_dirty) {
            return;
        }
        if let Err(e) = self.runtime.save(&self.root) {
            tracing::warn!("runtime file: {e}");
        }
    }

    /// True when some notification command listens for `event`.
    pub(super) fn listens(&self, event: NotifyEvent) -> bool {
        self.config.notify.iter().any(|n| n.on.contains(&event))
    }

    /// Runs the notification commands listening for `event`.
    pub(super) fn notify(&mut self, event: NotifyEvent, payload: Value) {
        if !self.listens(event) {
            return;
        }
        self.hook_threads.retain(|h| !h.is_finished());
        let now = crate::store::now();
        let threads = notify::deliver(
            &self.root,
            &self.config.notify,
            event,
            payload,
            now,
            self.config.notify_timeout,
            &self.config.hooks.env,
        );
        self.hook_threads.extend(threads);
    }

    /// `event` once per local day (`budget`, `cap_reached`), across
    /// restarts.
    pub(super) fn notify_daily(&mut self, event: NotifyEvent, now: Timestamp, payload: Value) {
        if !self.listens(event) {
            return;
        }
        let day = now.with_timezone(&chrono::Local).date_naive().to_string();
        let today = BTreeSet::from([day]);
        if self.runtime.standing(event.as_str(), &today).is_empty() {
            return;
        }
        self.runtime_dirty = true;
        self.notify(event, payload);
    }

    /// `budget`: today's spend crossed `budget_warning` of the cap.
    pub(super) fn check_budget(&mut self, reg: &Registry, now: Timestamp) {
        let Some(cap) = self.config.daily_cost_cap_usd else {
            return;
        };
        if !self.listens(NotifyEvent::Budget) {
            return;
        }
        let (spent, cap) = (reg.spent_today(now).as_f64(), cap.as_f64());
        let fraction = self.config.budget_warning;
        if spent < cap * fraction {
            return;
        }
        let message = format!(
            "spent ${spent:.2} today, {:.0}% of the daily cap ${cap:.2}",
            100.0 * spent / cap
        );
        self.notify_daily(
            NotifyEvent::Budget,
            now,
            json!({"spent_today_usd": spent, "cap_usd": cap, "budget_warning": fraction, "message": message}),
        );
    }

    /// After each step: a notification per new pending approval file;
    /// the runtime file written if it changed.
    pub(super) fn after_step(&mut self) {
        if self.listens(NotifyEvent::ApprovalPending) {
            let names = pending_names(&self.root);
            let new = self.runtime.standing("approval_pending", &names);
            if !new.is_empty() {
                self.runtime_dirty = true;
            }
            for name in new {
                // Only a new request's file is read (once).
                let path = self.root.approvals("pending").join(format!("{name}.md"));
                let task =
                    crate::approval::read_field(&path, "task").unwrap_or_else(|| name.clone());
                let agent = crate::approval::read_field(&path, "agent").filter(|a| a != "~");
                let file = format!("approvals/pending/{name}.md");
                let message = match &agent {
                    Some(a) => format!("{a} asks for approval: {file}"),
                    None => format!("{task} waits for approval: {file}"),
                };
                self.notify(
                    NotifyEvent::ApprovalPending,
                    json!({"request": name, "task": task, "agent": agent, "file": file, "message": message}),
                );
            }
        }
        self.save_runtime();
    }

    /// `blocked`: each task that can never run as things are, once while
    /// it lasts (`stuck` holds `(id, why)` for all of them).
    pub(super) fn notify_blocked(&mut self, stuck: &[(String, String)]) {
        if !self.listens(NotifyEvent::Blocked) {
            return;
        }
        let by_key: BTreeMap<String, &(String, String)> = stuck
            .iter()
            .map(|s| (format!("{} {}", s.0, s.1), s))
            .collect();
        let keys: BTreeSet<String> = by_key.keys().cloned().collect();
        let before = self.runtime.sent.len();
        let new = self.runtime.standing("blocked", &keys);
        if self.runtime.sent.len() != before || !new.is_empty() {
            self.runtime_dirty = true;
        }
        for key in new {
            let (task, why) = by_key[&key].clone();
            self.notify(
                NotifyEvent::Blocked,
                json!({"task": task, "reason": why, "message": format!("{task} can never run: {why}")}),
            );
        }
        self.save_runtime();
    }

    /// Stuck detection (on each heartbeat): an agent whose process group
    /// used no CPU time and whose log did not grow for `stuck_after` is
    /// flagged (in the runtime file, for `status`) and `stuck` fires, once;
    /// again only after it moved and stalled again.
    pub(super) fn check_stuck(&mut self) {
        if self.running.is_empty() && self.samples.is_empty() && self.runtime.stuck.is_empty() {
            return; // nothing to look at: no walk of /proc
        }
        let cpu = crate::spawn::cpu_ticks_by_group();
        let now = std::time::Instant::now();
        let ids: Vec<String> = self.running.keys().cloned().collect();
        self.samples.retain(|id, _| self.running.contains_key(id));
        let before = self.runtime.stuck.len();
        self.runtime
            .stuck
            .retain(|id, _| self.running.contains_key(id));
        if self.runtime.stuck.len() != before {
            self.runtime_dirty = true;
        }
        let mut reg: Option<Registry> = None;
        for id in ids {
            let live = &self.running[&id];
            let ticks = cpu.get(&live.pid).copied().unwrap_or(0);
            let output = std::fs::metadata(self.root.log(&id)).map_or(0, |m| m.len());
            let flagged = self.runtime.stuck.contains_key(&id);
            let (sample, verdict) = notify::stall(
                self.samples.get(&id).copied(),
                ticks,
                output,
                now,
                self.config.stuck_after,
                flagged,
            );
            self.samples.insert(id.clone(), sample);
            match verdict {
                Stall::Fine | Stall::StillStuck => {}
                Stall::Recovered => {
                    self.runtime.stuck.remove(&id);
                    self.runtime_dirty = true;
                    self.progress(format!("{id} is moving again"));
                }
                Stall::Stuck => {
                    let reg =
                        reg.get_or_insert_with(|| Registry::load(&self.root).unwrap_or_default());
                    let task = reg
                        .agents
                        .get(&id)
                        .map(|a| a.task.clone())
                        .unwrap_or_default();
                    let role = live.role.clone();
                    let idle = crate::duration::format(sample.since.elapsed());
                    let since = crate::store::now()
                        - chrono::Duration::from_std(sample.since.elapsed()).unwrap_or_default();
                    let message =
                        format!("{id} ({task}) is stuck: no output and no CPU time for {idle}");
                    self.progress(format!("warning: {message}"));
                    self.runtime.stuck.insert(
                        id.clone(),
                        notify::Stuck {
                            task: task.clone(),
                            role: role.clone(),
                            since,
                        },
                    );
                    self.runtime_dirty = true;
                    self.notify(
                        NotifyEvent::Stuck,
                        json!({"agent": id, "task": task, "role": role, "reason": message,
                               "message": message, "since": crate::task::format_timestamp(since)}),
                    );
                }
            }
        }
        self.save_runtime();
    }
}

/// The names of the pending approval files (`TASK-006`, `TASK-006-1`).
fn pending_names(root: &crate::root::Root) -> BTreeSet<String> {
    let Ok(dir) = std::fs::read_dir(root.approvals("pending")) else {
        return BTreeSet::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let name = e.file_name().into_string().ok()?;
        let stem = name.strip_suffix(".md")?;
        if stem.eq_ignore_ascii_case("readme") || !e.file_type().ok()?.is_file() {
            return None;
        }
        Some(stem.to_string())
    })
    .collect()
}
