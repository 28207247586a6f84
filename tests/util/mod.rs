//! The test harness: a temp taskq root and a builder for running the real
//! binary in it.

#![allow(dead_code)]

pub mod npm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the built taskq binary.
pub fn taskq_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taskq"))
}

/// A temp directory initialised as a taskq root; removed on drop.
pub struct TestRoot {
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    /// `taskq init` in a new temp dir.
    pub fn new() -> TestRoot {
        let root = TestRoot::empty();
        root.taskq(&["init", "."]).ok();
        root
    }

    /// A temp dir with only empty `tasks/todo` and `tasks/done`.
    pub fn empty() -> TestRoot {
        let dir = tempfile::Builder::new()
            .prefix("taskq-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("tasks/todo")).unwrap();
        std::fs::create_dir_all(dir.path().join("tasks/done")).unwrap();
        TestRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating directories), relative to the root.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Reads a file relative to the root.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Reads a file's bytes relative to the root.
    pub fn read_bytes(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// A `taskq` command running in the root (cwd = root, clean env).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(taskq_bin());
        c.args(args)
            .current_dir(self.path())
            .env_remove("TASKQ_ROOT")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs `taskq ARGS` in the root.
    pub fn taskq(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("run taskq"))
    }

    /// Adds a task through the CLI and returns its id.
    pub fn add(&self, args: &[&str]) -> String {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        self.taskq(&all).ok().stdout.trim().to_string()
    }

    /// The file of a task (todo or done) relative to the root.
    pub fn task_file(&self, id: &str) -> String {
        for folder in ["todo", "done"] {
            for e in std::fs::read_dir(self.path().join("tasks").join(folder)).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                if name.starts_with(&format!("{id}-")) || name == format!("{id}.md") {
                    return format!("tasks/{folder}/{name}");
                }
            }
        }
        panic!("no file for {id}")
    }
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts exit 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Asserts the exit code and returns self.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Parses stdout as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Waits until `cond` holds, polling every 20 ms, up to `timeout`; panics
/// with `what` past it. Tests wait on conditions, never on sleeps.
#[track_caller]
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of the fake agent CLI (tests/bin/fake_agent.rs).
pub fn fake_agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-agent"))
}

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

/// A `taskq run` in the background. Dropping it stops the factory (TERM,
/// then KILL); dropping the `TestRoot` kills every agent process group its
/// registry names, so a failing test leaves no process behind.
pub struct Daemon {
    pub child: std::process::Child,
}

impl TestRoot {
    /// Sets up a factory root for the fake agent: config (fake agent as the
    /// claude adapter, no retry backoff, short grace) plus a role template.
    pub fn factory(&self, config_extra: &str) {
        self.write(
            "agents/factory/config.yaml",
            format!(
                "max_concurrent: 3\nretry_backoff: 0s\nstop_grace: 1s\nheartbeat: 2s\nadapters:\n  claude: {}\n{config_extra}",
                fake_agent_bin().display()
            ),
        );
        // The shipped model roles would route nothing here; keep them out.
        for r in ["research", "builder", "tester", "fixer"] {
            let _ = std::fs::remove_file(self.path().join(format!("agents/templates/{r}.md")));
        }
    }

    /// Writes a role template for the fake agent.
    pub fn role(&self, name: &str, settings: &str) {
        self.write(
            &format!("agents/templates/{name}.md"),
            format!("---\nagent: claude\nenv: [PATH, HOME, \"FAKE_AGENT_*\"]\n{settings}\n---\nYou are the {name} role.\n"),
        );
    }

    /// Writes role `job` (prefix JOB, tag `job`): the `shell` adapter
    /// running the tasks' `sh` blocks in the root, no model.
    pub fn shell_role(&self, max_concurrent: u32) {
        self.write(
            "agents/templates/job.md",
            format!("---\nprefix: JOB\nagent: shell\ntags: [job]\nmax_concurrent: {max_concurrent}\nworkspace: root\nenv: [PATH, HOME]\n---\n"),
        );
    }

    /// Starts `taskq run` in the background with `env`.
    pub fn daemon(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let mut cmd = self.cmd(&all);
        cmd.envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Daemon {
            child: cmd.spawn().expect("start taskq run"),
        }
    }

    /// Waits until a factory runs in this root: it has written its pid in
    /// the run lock.
    pub fn wait_factory_started(&self) {
        wait_for("the factory to start", Duration::from_secs(30), || {
            std::fs::read_to_string(self.path().join("agents/factory/run.lock"))
                .is_ok_and(|s| !s.trim().is_empty())
        });
    }

    /// Runs `taskq run --until-idle` with `env` to the end.
    pub fn run_until_idle(&self, env: &[(&str, &str)]) -> Run {
        let mut cmd = self.cmd(&["run", "--until-idle"]);
        cmd.envs(env.iter().copied());
        Run::from(cmd.output().expect("run taskq run"))
    }

    /// `taskq run --until-idle`, killed (and failed) past `limit`; asserts
    /// exit 0 and prints `<label>: taskq run --until-idle took N s` with
    /// its stderr. Returns the run and how long it took.
    #[track_caller]
    pub fn run_until_idle_within(&self, limit: Duration, label: &str) -> (Run, Duration) {
        let start = Instant::now();
        let mut child = self
            .cmd(&["run", "--until-idle"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start taskq run");
        loop {
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "taskq run --until-idle did not finish within {limit:?}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = start.elapsed();
        let run = Run::from(child.wait_with_output().unwrap());
        eprintln!(
            "{label}: taskq run --until-idle took {:.1} s\n{}",
            took.as_secs_f64(),
            run.stderr.trim_end()
        );
        assert_eq!(run.code, 0, "taskq run failed:\n{}", run.stderr);
        (run, took)
    }

    /// The registry as JSON.
    pub fn registry(&self) -> serde_json::Value {
        serde_json::from_str(&self.read("agents/factory/registry.json"))
            .expect("registry is valid JSON")
    }

    /// The agents of the registry, as JSON objects.
    pub fn agents(&self) -> Vec<serde_json::Value> {
        match std::fs::read_to_string(self.path().join("agents/factory/registry.json")) {
            Ok(text) => {
                let v: serde_json::Value =
                    serde_json::from_str(&text).expect("registry is valid JSON");
                v["agents"]
                    .as_object()
                    .map(|m| m.values().cloned().collect())
                    .unwrap_or_default()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        }
        Err(_) => false,
    }
}

impl Daemon {
    /// Sends a signal to the factory process.
    pub fn signal(&self, sig: &str) {
        let signal = match sig {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "KILL" => libc::SIGKILL,
            other => panic!("unknown signal {other}"),
        };
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill -{sig} {}", self.child.id());
    }

    /// SIGTERM, then waits for the exit.
    pub fn wait_after_term(self) -> Run {
        self.signal("TERM");
        self.wait(Duration::from_secs(30))
    }

    /// Waits for the factory to exit (up to `timeout`) and returns its
    /// outcome.
    pub fn wait(mut self, timeout: Duration) -> Run {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                let mut stdout = String::new();
                let mut stderr = String::new();
                use std::io::Read;
                if let Some(mut o) = self.child.stdout.take() {
                    let _ = o.read_to_string(&mut stdout);
                }
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut stderr);
                }
                return Run {
                    code: status.code().unwrap_or(-1),
                    stdout,
                    stderr,
                };
            }
            if start.elapsed() > timeout {
                panic!("taskq run did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let start = Instant::now();
            while self.child.try_wait().ok().flatten().is_none()
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for TestRoot {
    /// At the end of a test, no agent process it started may survive.
    fn drop(&mut self) {
        kill_agents(self.dir.path());
    }
}

/// Kills the process group of every agent the registry of `root` names.
pub fn kill_agents(root: &Path) {
    let Ok(text) = std::fs::read_to_string(root.join("agents/factory/registry.json")) else {
        return;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return;
    };
    if let Some(agents) = v["agents"].as_object() {
        for a in agents.values() {
            // Agents lead their own process group (pgid == pid). Never
            // signal a group id that could be ours or init's.
            if let Some(pid) = a["pid"].as_u64().filter(|p| *p > 1) {
                // SAFETY: killpg(2) has no memory-safety preconditions.
                unsafe { libc::killpg(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
    }
}
