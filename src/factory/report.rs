//! What the factory tells people: progress lines on stderr (and, in a
//! terminal, the queue's counts on the last line), broken files and stuck
//! tasks once each, hooks; and the heartbeat's housekeeping (history
//! rotation).

use std::collections::HashSet;

use super::Factory;
use crate::error::Result;
use crate::hooks;
use crate::registry::Registry;
use crate::store::{self, Writer};
use crate::task::{Folder, Status};

impl Factory {
    /// Says which id-less files the writer's repairs adopted (before
    /// anything they start).
    pub(super) fn report_adopted(&self, w: &Writer) {
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
    pub(super) fn report_problems(&mut self, scan: &store::Scan) {
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

    /// Fires a hook, keeping its thread so the factory waits for it
    /// before it exits (`--until-idle` would otherwise cut it off).
    pub(super) fn hook(&mut self, event: &str, payload: serde_json::Value) {
        self.hook_threads.retain(|h| !h.is_finished());
        // The notification commands' events that are hooks' too: a
        // failure and idle (both transitions, once each).
        let also = match event {
            "on-fail" => Some(crate::notify::NotifyEvent::Failed),
            "on-idle" => Some(crate::notify::NotifyEvent::Idle),
            _ => None,
        };
        if let Some(n) = also {
            let mut payload = payload.clone();
            if let serde_json::Value::Object(map) = &mut payload {
                let message = match n {
                    crate::notify::NotifyEvent::Idle => format!(
                        "idle: {} spawned, {} done, {} failed",
                        self.stats.spawned, self.stats.done, self.stats.failed
                    ),
                    _ => format!(
                        "{} failed: {}",
                        map.get("task").and_then(|t| t.as_str()).unwrap_or("a task"),
                        map.get("reason").and_then(|t| t.as_str()).unwrap_or("")
                    ),
                };
                map.insert("message".into(), message.into());
            }
            self.notify(n, payload);
        }
        if let Some(h) = hooks::fire(&self.root, event, payload, &self.config) {
            self.hook_threads.push(h);
        }
    }

    /// Waits for the hooks still running (each is time-limited).
    pub(super) fn join_hooks(&mut self) {
        for h in self.hook_threads.drain(..) {
            let _ = h.join();
        }
    }

    pub(super) fn progress(&self, text: impl AsRef<str>) {
        self.clear_counts();
        let now = chrono::Local::now().format("%H:%M:%S");
        self.out.note(format!("{now} {}", text.as_ref()));
    }

    /// Takes the counts line off the screen (before anything else is
    /// printed on stderr).
    pub(super) fn clear_counts(&self) {
        if self.counts_shown.replace(false) {
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\r\x1b[K");
        }
    }

    /// In a terminal: the queue's counts on the last line of stderr, in
    /// place (`running 3 · queued 12 · review 1 · failed 0 · done 40`).
    pub(super) fn draw_counts(&self, scan: &store::Scan) {
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

    /// Moves finished agents older than `history_after` from the registry
    /// to agents/factory/history/.
    pub(super) fn rotate_history(&mut self) {
        let result = (|| -> Result<()> {
            // The lock and a git commit, not the queue: the step after the
            // heartbeat reads that afresh anyway.
            let mut w =
                Writer::with_disk(&self.root, Some(store::Scan::default()), &mut self.disk)?;
            let rotated = self.rotate_registry(&mut w);
            // With no agent live in the registry on disk (every end that
            // was read is recorded there: none waits in a failed step's
            // retry), the shared exit record starts over (it grows ~15
            // bytes per agent). Not while an end is unrecorded: a crash
            // now would leave the next factory no exit code for it.
            if matches!(rotated, Ok(false)) && self.running.is_empty() && self.retry_ends.is_empty()
            {
                let path = self.root.exit_codes();
                if std::fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
                    use std::os::unix::fs::OpenOptionsExt;
                    // Never through a link (see fsutil::refuse_link).
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                        .open(&path);
                }
            }
            w.commit_git();
            self.disk = w.into_disk();
            rotated.map(|_| ())
        })();
        if let Err(e) = result {
            tracing::warn!("history rotation: {e}");
        }
    }

    /// Moves old finished agents to the history; true when the registry
    /// still has a live agent.
    fn rotate_registry(&self, w: &mut Writer) -> Result<bool> {
        {
            let mut reg = Registry::load(&self.root)?;
            let live = reg.live().next().is_some();
            let cutoff = crate::duration::before(w.now, self.config.history_after);
            let moved = reg.rotate(&self.root, cutoff)?;
            if moved > 0 {
                reg.save(&self.root, &mut w.disk, w.now)?;
                w.touch(Registry::path(&self.root));
                w.touch(self.root.history_dir());
                w.notes.push(crate::git::Entry {
                    line: format!(
                        "registry: {moved} finished agents moved to agents/factory/history/"
                    ),
                    trailers: Vec::new(),
                });
            }
            Ok(live)
        }
    }
}

impl Factory {
    /// Shows each task that can never run as things are (no role, a
    /// dependency cycle, a missing or failed dependency) once while it
    /// lasts, with the reason.
    pub(super) fn report_stuck(&mut self, stuck: &[(usize, String)], w: &Writer) {
        let mut now = HashSet::new();
        for (i, why) in stuck {
            let t = &w.scan.tasks[*i];
            let key = format!("{} {why}", t.id);
            if !self.stuck_reported.contains(&key) {
                let shown = self.root.rel_path(t.folder, &t.rel);
                self.progress(format!(
                    "warning: {} can never run: {why} ({})",
                    t.id,
                    shown.display()
                ));
            }
            now.insert(key);
        }
        self.stuck_reported = now;
        let blocked: Vec<(String, String)> = stuck
            .iter()
            .map(|(i, why)| (w.scan.tasks[*i].id.to_string(), why.clone()))
            .collect();
        self.notify_blocked(&blocked);
    }

    /// How `--until-idle` ends: a line naming the tasks that can never run
    /// as things are, and exit 1 when there are any.
    pub(super) fn idle_exit(&mut self) -> std::process::ExitCode {
        let Some(scan) = self.cache.as_ref() else {
            return std::process::ExitCode::SUCCESS;
        };
        let queue = crate::queue::Queue::new(scan, crate::store::now());
        let stuck = super::plan::never_runs(&queue, &self.roles, &self.config);
        if stuck.is_empty() {
            return std::process::ExitCode::SUCCESS;
        }
        let names: Vec<String> = stuck
            .iter()
            .map(|(i, why)| format!("{} ({why})", scan.tasks[*i].id))
            .collect();
        let n = stuck.len();
        self.progress(format!(
            "{n} task{} can never run as things are: {}",
            if n == 1 { "" } else { "s" },
            names.join("; ")
        ));
        std::process::ExitCode::from(1)
    }
}
