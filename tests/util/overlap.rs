//! How many spans ran at once: from registry times or from the fake
//! agent's `FAKE_AGENT_LOG`.

use std::collections::HashMap;

/// The most spans open at once, from their events: `(time, 1)` where one
/// starts, `(time, -1)` where one ends. An end and a start at the same time
/// count as one after the other.
pub fn max_overlap<T: Ord>(events: impl IntoIterator<Item = (T, i32)>) -> i32 {
    let mut events: Vec<(T, i32)> = events.into_iter().collect();
    events.sort(); // ends before starts at the same time
    let (mut now, mut max) = (0, 0);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max
}

/// The most fake agents that ran at once, overall and per model.
#[derive(Debug)]
pub struct FakeAgentOverlap {
    /// All agents together.
    pub all: i32,
    /// By the model their `start` line names (one model per role here).
    pub per_model: HashMap<String, i32>,
}

/// Replays a `FAKE_AGENT_LOG` (`start <unix_millis> <pid> <model>` and
/// `end <unix_millis> <pid> <exit_code>` lines): +1 at a start, -1 at its
/// end, overall and per model. Panics on any other line.
pub fn fake_agent_overlap(log: &str) -> FakeAgentOverlap {
    let mut events = Vec::new();
    let mut model_of = HashMap::new();
    for line in log.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (t, pid): (u64, &str) = (f[1].parse().unwrap(), f[2]);
        match f[0] {
            "start" => {
                model_of.insert(pid, f[3]);
                events.push((t, 1, f[3]));
            }
            "end" => events.push((t, -1, model_of[pid])),
            other => panic!("bad log line {other}"),
        }
    }
    let mut per_model = HashMap::new();
    for &m in model_of.values() {
        per_model.entry(m.to_string()).or_insert_with(|| {
            max_overlap(events.iter().filter(|e| e.2 == m).map(|&(t, d, _)| (t, d)))
        });
    }
    FakeAgentOverlap {
        all: max_overlap(events.iter().map(|&(t, d, _)| (t, d))),
        per_model,
    }
}
