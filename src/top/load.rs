//! Reading the [`Model`] from the files, and again only what a batch of
//! file events touched: a change under `tasks/` rereads the queue (a lean
//! scan; 10,000 tasks take ~60 ms), one in `approvals/` lists the pending
//! requests, the registry rereads the agents, spend and events, a log
//! rereads the end of that log only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::state::{AgentRow, ApprovalRow, EventRow, Model, TaskRow};
use crate::queue::{Queue, State};
use crate::registry::Registry;
use crate::root::Root;
use crate::spawn;
use crate::store;

/// How many held and next-ready tasks the tasks pane keeps.
const TASK_ROWS: usize = 50;
/// How many recent events.
const EVENT_ROWS: usize = 30;
/// How much of a log's end is read for its last line.
const LAST_LINE_BYTES: u64 = 4096;
/// How much of a log's end the log pane shows.
const LOG_PANE_BYTES: u64 = 64 * 1024;

/// What a batch of file events touched.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Touched {
    /// Task files.
    pub tasks: bool,
    /// Approval files.
    pub approvals: bool,
    /// The registry, the run lock, the pause file or the config.
    pub factory: bool,
    /// Some agent's log.
    pub logs: bool,
}

impl Touched {
    /// Everything.
    pub fn all() -> Touched {
        Touched {
            tasks: true,
            approvals: true,
            factory: true,
            logs: true,
        }
    }

    /// Anything.
    pub fn any(self) -> bool {
        self.tasks || self.approvals || self.factory || self.logs
    }

    /// Adds what `path` touches.
    pub fn add(&mut self, root: &Root, path: &Path) {
        let rel = path.strip_prefix(&root.dir).unwrap_or(path);
        if rel.starts_with("tasks") {
            self.tasks = true;
        } else if rel.starts_with("approvals") {
            self.approvals = true;
        } else if rel.starts_with("agents/factory") {
            self.factory = true;
        } else if rel.starts_with("agents/logs") {
            self.logs = true;
        }
    }
}

/// The model and what it was read from.
pub struct Loader {
    /// When the queue was last read, and how long that took: the next
    /// read waits at least four times that (see [`Loader::queue_due`]).
    queue_read: Option<(std::time::Instant, std::time::Duration)>,
    root: Root,
    reg: Registry,
    tails: HashMap<String, String>,
    /// The model as last read.
    pub model: Model,
}

impl Loader {
    /// Reads everything.
    pub fn new(root: Root) -> Loader {
        let mut l = Loader {
            queue_read: None,
            root,
            reg: Registry::default(),
            tails: HashMap::new(),
            model: Model::default(),
        };
        l.reload(Touched::all());
        l
    }

    /// Rereads what `t` touched.
    pub fn reload(&mut self, t: Touched) {
        let now = store::now();
        self.model.now = Some(now);
        if t.factory {
            if let Ok(reg) = Registry::load(&self.root) {
                self.reg = reg;
            }
            self.model.factory_pid = crate::lock::read_pid(&self.root.run_lock())
                .filter(|pid| spawn::is_alive(*pid, None));
            self.model.paused = crate::pause::read(&self.root);
            self.model.cap = crate::config::Config::load(&self.root)
                .ok()
                .and_then(|c| c.daily_cost_cap_usd)
                .map(|u| u.as_f64());
            self.model.spent_today = self.reg.spent_today(now).as_f64();
            self.model.events = events(&self.reg);
        }
        if t.factory || t.logs {
            let live: Vec<String> = self.reg.live().map(|a| a.id.clone()).collect();
            self.tails.retain(|id, _| live.contains(id));
            for id in &live {
                let text = spawn::read_tail(&self.root.log(id), LAST_LINE_BYTES);
                let last = text.lines().rev().find(|l| !l.trim().is_empty());
                self.tails
                    .insert(id.clone(), last.unwrap_or_default().trim().to_string());
            }
            let live: Vec<&crate::registry::Agent> = self.reg.live().collect();
            let parents: Vec<Option<&str>> = live.iter().map(|a| a.parent.as_deref()).collect();
            let ids: Vec<&str> = live.iter().map(|a| a.id.as_str()).collect();
            let order = tree_order(&ids, &parents);
            self.model.agents = order
                .into_iter()
                .map(|(k, depth)| {
                    let a = live[k];
                    AgentRow {
                        id: a.id.clone(),
                        depth,
                        role: a.role.clone(),
                        task: a.task.clone(),
                        model: a.model.clone().unwrap_or_else(|| a.adapter.to_string()),
                        status: a.status.as_str().to_string(),
                        spawned: a.spawned,
                        // (Unknown shows as none: it is in no sum.)
                        cost: a.cost_usd.and_then(|c| c.known()).map(|u| u.as_f64()),
                        tokens: a.tokens.map(|t| t.input + t.output),
                        last_line: self.tails.get(&a.id).cloned().unwrap_or_default(),
                    }
                })
                .collect();
        }
        if t.tasks {
            let began = std::time::Instant::now();
            let scan = store::scan_lean(&self.root);
            let queue = Queue::new(&scan, now);
            let mut counts: Vec<(&'static str, usize)> = [
                "ready",
                "running",
                "review",
                "blocked",
                "waiting",
                "hold",
                "failed",
                "done",
                "cancelled",
                "invalid",
            ]
            .iter()
            .map(|s| (*s, 0))
            .collect();
            for s in &queue.state {
                if let Some(c) = counts.iter_mut().find(|(n, _)| *n == s.as_str()) {
                    c.1 += 1;
                }
            }
            self.model.counts = counts;
            let row = |i: usize| TaskRow {
                id: scan.tasks[i].id.to_string(),
                state: queue.state[i].as_str(),
                title: store::display_title(&self.root, &scan.tasks[i]),
            };
            let mut tasks: Vec<TaskRow> = (0..scan.tasks.len())
                .filter(|&i| queue.state[i] == State::Hold)
                .take(TASK_ROWS)
                .map(row)
                .collect();
            tasks.extend(
                queue
                    .ready(|_| true)
                    .iter()
                    .take(TASK_ROWS)
                    .map(|r| row(r.index)),
            );
            self.model.tasks = tasks;
            self.queue_read = Some((began, began.elapsed()));
        }
        if t.approvals {
            self.model.approvals = pending(&self.root.approvals("pending"));
        }
    }

    /// The earliest time the queue should be read again: a busy factory
    /// over 10,000 tasks changes task files many times a second, and each
    /// read costs ~60 ms, so reads are spaced to keep them under a fifth
    /// of a core (at most every 2 s).
    pub fn queue_due(&self) -> Option<std::time::Instant> {
        self.queue_read
            .map(|(at, took)| at + (took * 4).min(std::time::Duration::from_secs(2)))
    }

    /// The end of an agent's log, for the log pane.
    pub fn log_lines(&self, agent: &str) -> Vec<String> {
        spawn::read_tail(&self.root.log(agent), LOG_PANE_BYTES)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The agents as a tree (room for the delegation tree): each agent
/// followed by the agents it spawned, depth first; `(index, depth)`. An
/// agent whose parent is not among them is a root. Cycles cannot hang it.
pub fn tree_order(ids: &[&str], parents: &[Option<&str>]) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(ids.len());
    let mut placed = vec![false; ids.len()];
    let roots: Vec<usize> = (0..ids.len())
        .filter(|&k| parents[k].is_none_or(|p| !ids.contains(&p)))
        .collect();
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|k| (k, 0)).collect();
    loop {
        while let Some((k, depth)) = stack.pop() {
            if std::mem::replace(&mut placed[k], true) {
                continue;
            }
            out.push((k, depth));
            for c in (0..ids.len()).rev() {
                if parents[c] == Some(ids[k]) && !placed[c] {
                    stack.push((c, depth + 1));
                }
            }
        }
        // Agents only in a cycle of parents: shown as roots.
        match (0..ids.len()).find(|&k| !placed[k]) {
            Some(k) => stack.push((k, 0)),
            None => return out,
        }
    }
}

/// Agents starting and ending, newest first.
fn events(reg: &Registry) -> Vec<EventRow> {
    let mut out: Vec<EventRow> = Vec::new();
    for a in reg.agents.values() {
        out.push(EventRow {
            at: a.spawned,
            text: format!("{} started for {} ({})", a.id, a.task, a.role),
        });
        if let Some(done) = a.completed {
            let cost = a.cost_usd.map(|c| format!(" ${c:.2}")).unwrap_or_default();
            let why = a
                .reason
                .as_deref()
                .or(a.result.as_deref())
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            out.push(EventRow {
                at: done,
                text: format!("{} {} {}{cost}{why}", a.id, a.status.as_str(), a.task),
            });
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.at));
    out.truncate(EVENT_ROWS);
    out
}

/// The pending requests, by name: each with the first line of its body.
fn pending(dir: &Path) -> Vec<ApprovalRow> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter(|p| p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text = crate::fsutil::read_capped(&p, 8192)
                .ok()
                .flatten()
                .map(|c| first_body_line(&c.text()))
                .unwrap_or_default();
            ApprovalRow { name, text }
        })
        .collect()
}

/// The first non-empty line after the frontmatter, without a heading's `#`.
fn first_body_line(text: &str) -> String {
    let mut lines = text.lines();
    let mut body: Box<dyn Iterator<Item = &str>> = Box::new(text.lines());
    if lines.next().is_some_and(|l| l.trim() == "---") {
        let rest: Vec<&str> = lines.skip_while(|l| l.trim() != "---").skip(1).collect();
        body = Box::new(rest.into_iter());
    }
    body.map(|l| l.trim().trim_start_matches('#').trim())
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requests_line_is_the_first_of_its_body() {
        assert_eq!(
            first_body_line("---\ntask: TASK-1\n---\n# Approve TASK-1: x\n\nmore"),
            "Approve TASK-1: x"
        );
        assert_eq!(
            first_body_line("---\ntask: T\n---\n\nPost the note\n"),
            "Post the note"
        );
        assert_eq!(first_body_line("no header"), "no header");
    }

    #[test]
    fn agents_are_ordered_as_a_tree() {
        let ids = ["B-1", "T-2", "B-3", "X-4", "Y-5"];
        let parents = [None, Some("B-1"), None, Some("Y-5"), Some("X-4")];
        assert_eq!(
            tree_order(&ids, &parents),
            [(0, 0), (1, 1), (2, 0), (3, 0), (4, 1)]
        );
    }

    #[test]
    fn paths_say_what_to_read_again() {
        let root = Root::new("/r");
        let mut t = Touched::default();
        t.add(&root, Path::new("/r/agents/logs/JOB-001.log"));
        assert_eq!(
            t,
            Touched {
                logs: true,
                ..Touched::default()
            }
        );
        t.add(&root, Path::new("/r/tasks/todo/a.md"));
        t.add(&root, Path::new("/r/agents/factory/registry.json"));
        assert!(t.tasks && t.factory && !t.approvals);
    }
}
