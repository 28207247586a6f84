//! Supervision: one tokio task per agent waits for its process (or, for an
//! agent adopted after a crash, polls its pid), enforces its time limit
//! and stop requests (TERM to its group, a grace period, KILL), samples its
//! memory, and reports its end to the event loop once everything the agent
//! started has ended too (see [`spawn::contain`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Event, Factory, Finished, Live};
use crate::spawn;

impl Factory {
    /// Starts the supervisor of one agent: it waits for the process (or,
    /// for an adopted agent, polls it), enforces the deadline, samples
    /// memory, and reports the end.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn watch_agent(
        &mut self,
        agent_id: &str,
        child: Option<tokio::process::Child>,
        pid: u32,
        pid_start: Option<u64>,
        (deadline, limit): (Instant, Duration),
        role: &str,
        parent: Option<String>,
    ) {
        let (stop_tx, stop_rx) = oneshot::channel();
        self.running.insert(
            agent_id.to_string(),
            Live {
                pid,
                role: role.to_string(),
                parent,
                stop: Some(stop_tx),
                timeout: limit,
            },
        );
        let tx = self.tx.clone();
        let grace = self.config.stop_grace;
        let exit_file = self.root.exit_codes();
        let agent = agent_id.to_string();
        if child.is_none() {
            // Started by a factory before a crash: where its leftovers are.
            spawn::contain::adopt(&agent, pid);
        }
        tokio::spawn(async move {
            let finished = supervise(
                agent, child, pid, pid_start, deadline, grace, exit_file, stop_rx,
            )
            .await;
            let _ = tx.send(Event::Finished(finished));
        });
    }
}

/// Waits for an agent to end, enforcing its deadline and stop requests.
#[allow(clippy::too_many_arguments)]
async fn supervise(
    agent: String,
    mut child: Option<tokio::process::Child>,
    pid: u32,
    pid_start: Option<u64>,
    deadline: Instant,
    grace: Duration,
    exit_file: PathBuf,
    mut stop: oneshot::Receiver<()>,
) -> Finished {
    let mut rss: Option<u64> = None;
    // First sample after 100 ms (at 0 only the sh wrapper exists), then
    // every 250 ms: a short run still gets a real figure.
    let mut sample = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_millis(100),
        Duration::from_millis(250),
    );
    let mut timed_out = false;
    let mut stopped = false;
    let exit_code = loop {
        tokio::select! {
            code = wait_exit(&mut child, pid, pid_start, &exit_file, &agent) => break code,
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)), if !timed_out && !stopped => {
                // A factory that was suspended (SIGSTOP) or slow wakes up
                // past the deadline: an agent that ended meanwhile did not
                // time out, and its recorded exit code wins.
                if let Some(code) = ended_already(&mut child, pid, pid_start, &exit_file, &agent) {
                    break code;
                }
                timed_out = true;
                let _ = tokio::task::spawn_blocking(move || spawn::terminate_group(pid, grace)).await;
            }
            r = &mut stop, if !stopped && !timed_out => {
                if r.is_ok() {
                    stopped = true;
                    let _ = tokio::task::spawn_blocking(move || spawn::terminate_group(pid, grace)).await;
                }
            }
            _ = sample.tick() => {
                if let Some(kb) = spawn::tree_rss_kb(pid) {
                    rss = Some(rss.map_or(kb, |r| r.max(kb)));
                }
            }
        }
    };
    // What the agent left running in its group goes too.
    if spawn::group_alive(pid) {
        let _ = tokio::task::spawn_blocking(move || spawn::terminate_group(pid, grace)).await;
    }
    // And what left the group (`setsid`, a double fork): its cgroup, or
    // the orphans whose environment names it. Checked here at once (one
    // read); ended on a blocking thread only when something is left.
    if !spawn::contain::ended(&agent, pid) {
        let agent = agent.clone();
        let _ =
            tokio::task::spawn_blocking(move || spawn::contain::end_tree(&agent, pid, grace)).await;
    }
    Finished {
        agent,
        exit_code,
        timed_out,
        stopped,
        max_rss_kb: rss,
        ended_at: None,
    }
}

/// The exit code of an agent that has ended already (`Some(None)`: killed
/// by a signal), without waiting; `None` while it runs. Its wrapper
/// records the job's exit code before it exits: a recorded code means the
/// job is over even if the wrapper still is not.
fn ended_already(
    child: &mut Option<tokio::process::Child>,
    pid: u32,
    pid_start: Option<u64>,
    exit_file: &Path,
    agent: &str,
) -> Option<Option<i32>> {
    let recorded = spawn::read_exit_file(exit_file, agent);
    match child {
        Some(c) => match c.try_wait() {
            Ok(Some(status)) => Some(status.code().or(recorded)),
            _ => recorded.map(Some),
        },
        None if !spawn::is_alive(pid, pid_start) => Some(recorded),
        None => recorded.map(Some),
    }
}

/// The exit code of our child, or of an adopted process (polled, then
/// read from its exit file). `None` when killed by a signal.
async fn wait_exit(
    child: &mut Option<tokio::process::Child>,
    pid: u32,
    pid_start: Option<u64>,
    exit_file: &Path,
    agent: &str,
) -> Option<i32> {
    match child {
        Some(c) => match c.wait().await {
            Ok(status) => status.code(),
            Err(_) => None,
        },
        None => {
            while spawn::is_alive(pid, pid_start) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            spawn::read_exit_file(exit_file, agent)
        }
    }
}
