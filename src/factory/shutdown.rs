//! Stopping the factory (SIGINT, SIGTERM): every agent is stopped,
//! children before their parents, level by level, then their ends are
//! recorded in one last step.

use std::collections::{HashMap, HashSet};
use std::process::ExitCode;

use super::{Event, Factory};
use crate::error::Result;

/// The order agents are stopped in: levels of the parent tree, deepest
/// first (an agent's children stop, and end, before it is asked to).
/// `agents` is `(id, parent)`; a parent that is not among them counts as
/// none. Ids within a level are sorted; a cycle of parents ends at 64.
pub fn stop_order(agents: &[(String, Option<String>)]) -> Vec<Vec<String>> {
    let parent: HashMap<&str, &str> = agents
        .iter()
        .filter_map(|(id, p)| Some((id.as_str(), p.as_deref()?)))
        .collect();
    let depth = |id: &str| {
        let mut d = 0;
        let mut cur = parent.get(id);
        while let Some(p) = cur {
            if !agents.iter().any(|(a, _)| a == p) {
                break;
            }
            d += 1;
            cur = parent.get(p);
            if d > 64 {
                break;
            }
        }
        d
    };
    let mut levels: Vec<(usize, String)> = agents
        .iter()
        .map(|(id, _)| (depth(id), id.clone()))
        .collect();
    levels.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut last = None;
    for (d, id) in levels {
        if last != Some(d) {
            out.push(Vec::new());
            last = Some(d);
        }
        out.last_mut().expect("pushed above").push(id);
    }
    out
}

impl Factory {
    /// Stops every agent (children before parents), records them, exits 0.
    pub(super) async fn shutdown(mut self, why: &str) -> Result<ExitCode> {
        self.shutting_down = true;
        let n = self.running.len();
        self.progress(format!(
            "{why}: stopping {n} agent{}",
            if n == 1 { "" } else { "s" }
        ));
        let agents: Vec<(String, Option<String>)> = self
            .running
            .iter()
            .map(|(id, l)| (id.clone(), l.parent.clone()))
            .collect();
        let mut finished = Vec::new();
        for level in stop_order(&agents) {
            for id in &level {
                if let Some(stop) = self.running.get_mut(id).and_then(|l| l.stop.take()) {
                    let _ = stop.send(());
                }
            }
            let mut waiting: HashSet<String> = level.into_iter().collect();
            while !waiting.is_empty() {
                match self.rx.recv().await {
                    Some(Event::Finished(f)) => {
                        waiting.remove(&f.agent);
                        finished.push(f);
                    }
                    Some(Event::Changed) => {}
                    // Not served while stopping: dropped, it is answered so.
                    Some(Event::Api(_)) => {}
                    None => break,
                }
            }
        }
        // Ends an earlier failed step took, too.
        let earlier = std::mem::take(&mut self.retry_ends);
        finished.extend(
            earlier
                .into_iter()
                .filter(|a| !finished.iter().any(|f| f.agent == a.agent))
                .collect::<Vec<_>>(),
        );
        // Agents' requests are not served while stopping (each is answered
        // so when dropped).
        self.api_queue.clear();
        self.step(finished)?;
        self.join_hooks();
        self.progress(format!(
            "stopped: {} spawned, {} done, {} failed",
            self.stats.spawned, self.stats.done, self.stats.failed
        ));
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn a(id: &str, parent: Option<&str>) -> (String, Option<String>) {
        (id.to_string(), parent.map(str::to_string))
    }

    #[test]
    pub(super) fn children_stop_before_their_parents() {
        let agents = [
            a("CO-001", None),
            a("BLD-002", Some("CO-001")),
            a("TST-003", Some("BLD-002")),
            a("BLD-004", Some("CO-001")),
            a("RES-005", None),
            // Its parent is not running: a root.
            a("BLD-006", Some("GONE-001")),
        ];
        assert_eq!(
            stop_order(&agents),
            vec![
                vec!["TST-003".to_string()],
                vec!["BLD-002".into(), "BLD-004".into()],
                vec!["BLD-006".into(), "CO-001".into(), "RES-005".into()],
            ]
        );
        assert!(stop_order(&[]).is_empty());
        // A cycle of parents still ends.
        let cycle = [a("X-1", Some("X-2")), a("X-2", Some("X-1"))];
        assert_eq!(stop_order(&cycle).concat().len(), 2);
    }
}
