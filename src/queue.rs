//! What runs next. Pure: a function of the scanned tasks and the time.
//!
//! A task is *ready* when it is in `todo/` with status ready (or running
//! with an expired lease), unassigned, past any retry backoff, has an id,
//! is not broken, and every dependency is in `done/` with status done.
//!
//! Ready tasks run in this order:
//! 1. effective priority, highest first: a task inherits the highest
//!    priority of any open task that transitively depends on it (a low task
//!    blocking a critical one is critical);
//! 2. the number of open tasks it transitively unblocks, more first;
//! 3. the oldest id first.

use serde::Serialize;

use crate::graph::{is_satisfied, Graph};
use crate::store::Scan;
use crate::task::{id_order, Folder, Priority, Status, Task, Timestamp};

/// Where a task stands, as `list` and `status` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Can be claimed now.
    Ready,
    /// Status ready, but a dependency is not done (or missing).
    Blocked,
    /// Status ready, but assigned, in a retry backoff, or without an id yet.
    Waiting,
    /// Claimed and being worked on.
    Running,
    /// Waiting for a tester.
    Review,
    /// Put aside.
    Hold,
    /// Gave up.
    Failed,
    /// Finished.
    Done,
    /// Will not be done.
    Cancelled,
    /// A field is invalid (see `taskq check`).
    Invalid,
}

impl State {
    /// The lowercase word.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Blocked => "blocked",
            State::Waiting => "waiting",
            State::Running => "running",
            State::Review => "review",
            State::Hold => "hold",
            State::Failed => "failed",
            State::Done => "done",
            State::Cancelled => "cancelled",
            State::Invalid => "invalid",
        }
    }
}

/// The queue's view of every task: states, effective priorities.
#[derive(Debug)]
pub struct Queue<'a> {
    /// The scan this view is of.
    pub scan: &'a Scan,
    /// Its dependency graph.
    pub graph: Graph,
    /// `state[i]` of task i.
    pub state: Vec<State>,
    /// Effective priority rank (0 low .. 3 critical) of task i.
    pub effective: Vec<u8>,
}

/// One ready task with its ordering keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranked {
    /// Index into the scan.
    pub index: usize,
    /// Effective priority.
    pub priority: Priority,
    /// Open tasks it transitively unblocks.
    pub unblocks: u32,
}

/// True when task `t` counts as open (not finished, not cancelled): open
/// tasks pass their priority down and count as unblocked work.
fn is_open(t: &Task) -> bool {
    t.folder == Folder::Todo && !t.status.is_closed()
}

impl<'a> Queue<'a> {
    /// Computes states and effective priorities at `now`.
    pub fn new(scan: &'a Scan, now: Timestamp) -> Queue<'a> {
        let graph = Graph::build(scan);
        let tasks = &scan.tasks;
        let state: Vec<State> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| classify(t, &graph, scan, i, now))
            .collect();
        // Effective priority: propagate the max along dependency edges from
        // every open task. A node's value only rises, at most 3 times, so
        // this terminates even with cycles: O((V + E) * 4).
        let mut effective: Vec<u8> = tasks.iter().map(|t| t.priority.rank()).collect();
        let mut work: Vec<usize> = (0..tasks.len()).filter(|&i| is_open(&tasks[i])).collect();
        while let Some(v) = work.pop() {
            let p = effective[v];
            for &d in &graph.deps[v] {
                let d = d as usize;
                if effective[d] < p {
                    effective[d] = p;
                    if is_open(&tasks[d]) {
                        work.push(d);
                    }
                }
            }
        }
        Queue {
            scan,
            graph,
            state,
            effective,
        }
    }

    /// The number of distinct open tasks that transitively depend on `i`.
    pub fn unblocks(&self, i: usize, seen: &mut [u32], stamp: u32) -> u32 {
        let tasks = &self.scan.tasks;
        let mut count = 0;
        let mut stack: Vec<u32> = self.graph.dependents[i].to_vec();
        seen[i] = stamp;
        while let Some(v) = stack.pop() {
            let v = v as usize;
            if seen[v] == stamp {
                continue;
            }
            seen[v] = stamp;
            if is_open(&tasks[v]) {
                count += 1;
                stack.extend_from_slice(&self.graph.dependents[v]);
            }
        }
        count
    }

    /// Every ready task accepted by `filter`, in queue order.
    pub fn ready(&self, filter: impl Fn(&Task) -> bool) -> Vec<Ranked> {
        let candidates: Vec<usize> = (0..self.scan.tasks.len())
            .filter(|&i| self.state[i] == State::Ready && filter(&self.scan.tasks[i]))
            .collect();
        let mut ranked = self.rank(&candidates);
        self.sort(&mut ranked);
        ranked
    }

    /// The first ready task accepted by `filter`.
    ///
    /// Counts unblocked tasks only for the candidates of the highest
    /// effective priority, the only ones that can win.
    pub fn next(&self, filter: impl Fn(&Task) -> bool) -> Option<Ranked> {
        let mut best = None::<u8>;
        let mut candidates = Vec::new();
        for i in 0..self.scan.tasks.len() {
            if self.state[i] != State::Ready || !filter(&self.scan.tasks[i]) {
                continue;
            }
            let p = self.effective[i];
            match best {
                Some(b) if p < b => continue,
                Some(b) if p == b => candidates.push(i),
                _ => {
                    best = Some(p);
                    candidates.clear();
                    candidates.push(i);
                }
            }
        }
        let mut ranked = self.rank(&candidates);
        self.sort(&mut ranked);
        ranked.first().copied()
    }

    fn rank(&self, candidates: &[usize]) -> Vec<Ranked> {
        let mut seen = vec![0u32; self.scan.tasks.len()];
        candidates
            .iter()
            .enumerate()
            .map(|(k, &i)| Ranked {
                index: i,
                priority: Priority::from_rank(self.effective[i]),
                unblocks: self.unblocks(i, &mut seen, k as u32 + 1),
            })
            .collect()
    }

    fn sort(&self, ranked: &mut [Ranked]) {
        let tasks = &self.scan.tasks;
        ranked.sort_by(|a, b| {
            b.priority
                .rank()
                .cmp(&a.priority.rank())
                .then(b.unblocks.cmp(&a.unblocks))
                .then_with(|| id_order(&tasks[a.index].id, &tasks[b.index].id))
        });
    }

    /// The ids of `i`'s dependencies that are not satisfied yet (missing
    /// ones included), for "blocked by" messages.
    pub fn open_dependencies(&self, i: usize) -> Vec<String> {
        let mut open: Vec<String> = self.graph.deps[i]
            .iter()
            .map(|&d| &self.scan.tasks[d as usize])
            .filter(|d| !is_satisfied(d))
            .map(|d| d.id.to_string())
            .collect();
        open.extend(
            self.graph
                .missing_of(i)
                .iter()
                .map(|(_, id)| id.to_string()),
        );
        open
    }
}

fn classify(t: &Task, graph: &Graph, scan: &Scan, i: usize, now: Timestamp) -> State {
    if t.broken {
        return State::Invalid;
    }
    match t.effective_status(now) {
        Status::Ready if t.folder == Folder::Todo => {
            let deps_done = graph.deps[i]
                .iter()
                .all(|&d| is_satisfied(&scan.tasks[d as usize]))
                && graph.missing_of(i).is_empty();
            if !deps_done {
                State::Blocked
            } else if !t.has_id
                || t.effective_assigned(now).is_some()
                || t.extra().retry_after.is_some_and(|r| r > now)
            {
                State::Waiting
            } else {
                State::Ready
            }
        }
        Status::Ready => State::Invalid, // status ready in done/
        Status::Running => State::Running,
        Status::Review => State::Review,
        Status::Hold => State::Hold,
        Status::Failed => State::Failed,
        Status::Done => State::Done,
        Status::Cancelled => State::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::parse_timestamp;

    fn t(id: &str, priority: Priority, deps: &[&str], status: Status, folder: Folder) -> Task {
        Task {
            id: id.into(),
            rel: format!("{id}.md").into(),
            folder,
            has_id: true,
            broken: false,
            id_line: 2,
            lean: false,
            version: 0,
            title: None,
            status,
            priority,
            tags: Box::new([]),
            dependencies: deps.iter().map(|d| Box::from(*d)).collect(),
            assigned: None,
            role: None,
            attempts: 0,
            created: None,
            extra: None,
        }
    }

    fn now() -> Timestamp {
        parse_timestamp("2026-01-01T00:00:00Z").unwrap()
    }

    #[test]
    fn low_task_blocking_a_critical_one_goes_first() {
        use Priority::*;
        let scan = Scan::from_tasks(vec![
            t("TASK-001", High, &[], Status::Ready, Folder::Todo),
            t("TASK-002", Low, &[], Status::Ready, Folder::Todo),
            t(
                "TASK-003",
                Critical,
                &["TASK-002"],
                Status::Ready,
                Folder::Todo,
            ),
            t(
                "TASK-004",
                Medium,
                &["TASK-009"],
                Status::Ready,
                Folder::Todo,
            ),
        ]);
        let q = Queue::new(&scan, now());
        let order: Vec<&str> = q
            .ready(|_| true)
            .iter()
            .map(|r| &*scan.tasks[r.index].id)
            .collect();
        assert_eq!(order, ["TASK-002", "TASK-001"]);
        assert_eq!(q.state[2], State::Blocked);
        assert_eq!(q.state[3], State::Blocked);
        assert_eq!(q.open_dependencies(3), ["TASK-009"]);
        assert_eq!(q.next(|_| true).unwrap().index, 1);
    }

    #[test]
    fn more_unblocked_work_goes_first_then_oldest() {
        use Priority::*;
        let scan = Scan::from_tasks(vec![
            t("TASK-001", Medium, &[], Status::Ready, Folder::Todo),
            t("TASK-002", Medium, &[], Status::Ready, Folder::Todo),
            t(
                "TASK-003",
                Medium,
                &["TASK-002"],
                Status::Ready,
                Folder::Todo,
            ),
            t(
                "TASK-004",
                Medium,
                &["TASK-003"],
                Status::Ready,
                Folder::Todo,
            ),
            t("TASK-005", Medium, &[], Status::Ready, Folder::Todo),
            t(
                "TASK-006",
                Medium,
                &["TASK-001"],
                Status::Cancelled,
                Folder::Todo,
            ),
        ]);
        let q = Queue::new(&scan, now());
        let r = q.ready(|_| true);
        let order: Vec<(&str, u32)> = r
            .iter()
            .map(|r| (&*scan.tasks[r.index].id, r.unblocks))
            .collect();
        assert_eq!(order, [("TASK-002", 2), ("TASK-001", 0), ("TASK-005", 0)]);
    }

    #[test]
    fn deps_must_be_done_in_done_folder_and_cycles_terminate() {
        use Priority::*;
        let scan = Scan::from_tasks(vec![
            t("TASK-001", Medium, &[], Status::Done, Folder::Done),
            t("TASK-002", Medium, &[], Status::Done, Folder::Todo),
            t(
                "TASK-003",
                Medium,
                &["TASK-001"],
                Status::Ready,
                Folder::Todo,
            ),
            t(
                "TASK-004",
                Medium,
                &["TASK-002"],
                Status::Ready,
                Folder::Todo,
            ),
            t(
                "TASK-005",
                Critical,
                &["TASK-006"],
                Status::Ready,
                Folder::Todo,
            ),
            t("TASK-006", Low, &["TASK-005"], Status::Ready, Folder::Todo),
        ]);
        let q = Queue::new(&scan, now());
        assert_eq!(q.state[2], State::Ready);
        assert_eq!(q.state[3], State::Blocked);
        assert_eq!(q.effective[5], 3);
        assert_eq!(q.graph.cycles(), vec![vec![4, 5]]);
    }
}
