//! No orphans (issue 13, item 9): what an agent starts ends with it, even
//! the processes that called `setsid` or double-forked out of its process
//! group and session: when the agent exits, when `taskq stop` stops it,
//! and when the factory gets SIGTERM. Each runs twice: with a cgroup v2
//! per agent (skipped where the machine has no writable one) and with the
//! subreaper fallback, forced through `TASKQ_CONTAINMENT`.
//!
//! The sleeps of each test carry durations no other test (nor another run
//! of this one) uses, and a guard kills them whatever happens.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::util::{wait_for, TestRoot};

const LONG: Duration = Duration::from_secs(30);
const ENV: &str = "TASKQ_CONTAINMENT";

/// The two processes an agent leaves behind: `setsid sleep 131.<tag>`
/// and, through a double fork, `sleep 132.<tag>` in a session of its own.
/// Dropping this kills any of them still running.
struct Sleepers {
    a: String,
    b: String,
}

impl Sleepers {
    fn new() -> Sleepers {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{:07}{:02}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        Sleepers {
            a: format!("131.{tag}"),
            b: format!("132.{tag}"),
        }
    }

    /// The task body: start both, wait until both run (their pids written
    /// to scratch/), note the agent's cgroup, then `rest`.
    fn task(&self, rest: &str) -> String {
        format!(
            "```sh\nmkdir -p scratch\ngrep '^0::' /proc/self/cgroup > scratch/cgroup\n\
             setsid sleep {a} &\necho $! > scratch/a.pid\n\
             ( setsid sh -c 'sleep {b} & echo $! > scratch/b.pid' & )\n\
             until [ -s scratch/a.pid ] && [ -s scratch/b.pid ]; do sleep 0.01; done\n{rest}\n```",
            a = self.a,
            b = self.b
        )
    }

    /// The processes running either sleep, with their command lines.
    fn running(&self) -> Vec<(u32, String)> {
        let wanted = [format!("sleep {}", self.a), format!("sleep {}", self.b)];
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                wanted
                    .iter()
                    .any(|w| cmd.trim_end() == *w || cmd.ends_with(&format!("{w} ")))
                    .then_some((pid, cmd))
            })
            .collect()
    }

    /// Both were started (their pids recorded) and none runs any more,
    /// within a bounded wait.
    #[track_caller]
    fn assert_gone(&self, root: &TestRoot, after: &str) {
        let left = self.left_after(root);
        assert!(
            left.is_empty(),
            "still running 10 s after {after}: {left:?}"
        );
    }

    /// What still runs 10 s after the sleepers should have ended (with
    /// their cgroups), after checking both were started.
    #[track_caller]
    fn left_after(&self, root: &TestRoot) -> Vec<String> {
        for f in ["scratch/a.pid", "scratch/b.pid"] {
            assert!(
                !root.read(f).trim().is_empty(),
                "{f}: the agent did not start its sleepers"
            );
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.running();
            if left.is_empty() || std::time::Instant::now() > deadline {
                return left
                    .iter()
                    .map(|(pid, cmd)| {
                        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                            .unwrap_or_default();
                        let cg = cg.lines().find(|l| l.starts_with("0::")).unwrap_or("");
                        format!("{pid} {cmd}({cg})")
                    })
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for (pid, _) in self.running() {
            // SAFETY: kill(2) on a process this test started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// The cgroup v2 mount point, if there is one.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Whether a factory here can run its agents in cgroups (asked once).
fn cgroup_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let root = TestRoot::new();
        let run = root.run_until_idle(&[(ENV, "cgroup")]);
        match run.code {
            0 => true,
            _ if run.stderr.contains("no writable cgroup v2") => {
                eprintln!("no writable cgroup v2 here: the cgroup tests are skipped");
                false
            }
            _ => panic!("taskq run with {ENV}=cgroup: {}", run.stderr),
        }
    })
}

/// A root with the `job` shell role and the task `body` as TASK-001.
fn root_with(body: &str) -> TestRoot {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(2);
    root.write(
        "tasks/todo/a.md",
        format!("---\nid: TASK-001\ntags: [job]\n---\n{body}\n"),
    );
    root
}

/// The agent ran in a cgroup of the factory's under `cgroup`, and in
/// none under `subreaper`; after the factory's exit, that cgroup is gone.
#[track_caller]
fn assert_containment(root: &TestRoot, mode: &str, factory_exited: bool) {
    let line = root.read("scratch/cgroup");
    let path = line.trim().trim_start_matches("0::");
    match mode {
        "cgroup" => {
            assert!(path.contains("/taskq-"), "agent's cgroup: {line}");
            if factory_exited {
                let base = PathBuf::from(path.trim_start_matches('/'));
                let base = cgroup2_mount().unwrap().join(base.parent().unwrap());
                assert!(!base.exists(), "{} is left", base.display());
            }
        }
        _ => assert!(!path.contains("/taskq-"), "agent's cgroup: {line}"),
    }
}

fn agent_exits(mode: &str) {
    let sleepers = Sleepers::new();
    let root = root_with(&sleepers.task("exit 0"));
    let run = root.run_until_idle(&[(ENV, mode)]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        root.path().join("tasks/done/a.md").is_file(),
        "{}",
        run.stderr
    );
    sleepers.assert_gone(&root, "the agent exited 0");
    assert_containment(&root, mode, true);
}

/// Starts a factory whose agent runs the sleepers and then waits; returns
/// it once both sleepers run.
fn running_agent(root: &TestRoot, sleepers: &Sleepers, mode: &str) -> crate::util::Daemon {
    let daemon = root.daemon(&[], &[(ENV, mode)]);
    wait_for("the agent's sleepers to run", LONG, || {
        sleepers.running().len() == 2
    });
    assert_containment(root, mode, false);
    // What `taskq status` says.
    let said = taskq::spawn::containment(root.path(), Some(daemon.child.id()));
    match mode {
        "cgroup" => assert!(said.starts_with("cgroup v2 (/"), "{said}"),
        _ => assert!(said.starts_with("subreaper (setsid'd"), "{said}"),
    }
    daemon
}

fn taskq_stop(mode: &str) {
    let sleepers = Sleepers::new();
    let root = root_with(&sleepers.task("sleep 600"));
    let daemon = running_agent(&root, &sleepers, mode);
    let agent = root.agents()[0]["id"].as_str().unwrap().to_string();
    // Cancelled: returned to ready, the task would start them again.
    root.taskq(&["stop", &agent, "--cancel"]).ok();
    wait_for("the stop to be recorded", LONG, || {
        root.agents()[0]["status"] == "stopped"
    });
    sleepers.assert_gone(&root, "taskq stop");
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_containment(&root, mode, true);
}

fn factory_sigterm(mode: &str) {
    let sleepers = Sleepers::new();
    let root = root_with(&sleepers.task("sleep 600"));
    let daemon = running_agent(&root, &sleepers, mode);
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    sleepers.assert_gone(&root, "SIGTERM of the factory");
    assert_eq!(root.agents()[0]["status"], "stopped");
    assert_containment(&root, mode, true);
}

/// A factory whose agent runs the sleepers and waits for scratch/go,
/// killed (`kill -9`) once the agent is in the registry. Returns the
/// agent's pid.
fn killed_factory(root: &TestRoot, sleepers: &Sleepers, mode: &str) -> u32 {
    let first = running_agent(root, sleepers, mode);
    // Killed before its step recorded the agent's pid, the factory leaves
    // nothing to adopt (the next one starts the task again).
    wait_for("the agent's pid in the registry", LONG, || {
        root.agents()
            .first()
            .is_some_and(|a| a["status"] == "active" && a["pid"].is_u64())
    });
    first.signal("KILL");
    let _ = first.wait(LONG);
    assert_eq!(
        sleepers.running().len(),
        2,
        "the sleepers outlived the factory"
    );
    root.agents()[0]["pid"].as_u64().unwrap() as u32
}

/// The factory is killed while its agent runs; a new one adopts the
/// agent, and when it ends, what it left ends too (its cgroup; under the
/// subreaper, the processes whose environment names it, in all of /proc:
/// the orphans went to init, not to the new factory).
fn adopted_agent_exits(mode: &str) {
    let sleepers = Sleepers::new();
    let root = root_with(&sleepers.task("while [ ! -f scratch/go ]; do sleep 0.02; done"));
    killed_factory(&root, &sleepers, mode);
    let second = root.daemon(&[], &[(ENV, mode)]);
    // A task it runs: it has adopted the agent by then.
    root.write(
        "tasks/todo/b.md",
        "---\nid: TASK-002\ntags: [job]\n---\n```sh\ntrue\n```\n",
    );
    wait_for("the second factory's first task", LONG, || {
        root.path().join("tasks/done/b.md").is_file()
    });
    root.write("scratch/go", "");
    wait_for("the adopted agent's task to be done", LONG, || {
        root.path().join("tasks/done/a.md").is_file()
    });
    let left = sleepers.left_after(&root);
    let run = second.wait_after_term();
    assert!(
        left.is_empty(),
        "still running 10 s after the adopted agent exited 0: {left:?}\n{}",
        run.stderr
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("adopted JOB-001"), "{}", run.stderr);
}

/// The factory is killed while its agent runs, and the agent ends while
/// no factory runs: the next factory records its end from the exit-code
/// file, and ends what it left.
fn agent_ends_while_no_factory_runs(mode: &str) {
    let sleepers = Sleepers::new();
    let root = root_with(&sleepers.task("while [ ! -f scratch/go ]; do sleep 0.02; done"));
    let pid = killed_factory(&root, &sleepers, mode);
    root.write("scratch/go", "");
    wait_for("the agent to end", LONG, || !crate::util::pid_alive(pid));
    let second = root.daemon(&[], &[(ENV, mode)]);
    wait_for("its task to be done", LONG, || {
        root.path().join("tasks/done/a.md").is_file()
    });
    let left = sleepers.left_after(&root);
    let run = second.wait_after_term();
    assert!(
        left.is_empty(),
        "still running 10 s after the next factory started: {left:?}\n{}",
        run.stderr
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn setsid_processes_end_when_their_agent_ended_unwatched_cgroup() {
    if cgroup_available() {
        agent_ends_while_no_factory_runs("cgroup");
    }
}

#[test]
fn setsid_processes_end_when_their_agent_ended_unwatched_subreaper() {
    agent_ends_while_no_factory_runs("subreaper");
}

#[test]
fn setsid_processes_end_with_an_adopted_agent_cgroup() {
    if cgroup_available() {
        adopted_agent_exits("cgroup");
    }
}

#[test]
fn setsid_processes_end_with_an_adopted_agent_subreaper() {
    adopted_agent_exits("subreaper");
}

#[test]
fn setsid_processes_end_with_their_agent_cgroup() {
    if cgroup_available() {
        agent_exits("cgroup");
    }
}

#[test]
fn setsid_processes_end_with_their_agent_subreaper() {
    agent_exits("subreaper");
}

#[test]
fn setsid_processes_end_on_taskq_stop_cgroup() {
    if cgroup_available() {
        taskq_stop("cgroup");
    }
}

#[test]
fn setsid_processes_end_on_taskq_stop_subreaper() {
    taskq_stop("subreaper");
}

#[test]
fn setsid_processes_end_on_factory_sigterm_cgroup() {
    if cgroup_available() {
        factory_sigterm("cgroup");
    }
}

#[test]
fn setsid_processes_end_on_factory_sigterm_subreaper() {
    factory_sigterm("subreaper");
}

/// An unknown `TASKQ_CONTAINMENT` is a usage error, said before anything
/// runs.
#[test]
fn an_unknown_containment_is_refused() {
    let root = TestRoot::new();
    let run = root.run_until_idle(&[(ENV, "jail")]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("unknown containment `jail` in TASKQ_CONTAINMENT"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("hint: use `auto`"), "{}", run.stderr);
}
