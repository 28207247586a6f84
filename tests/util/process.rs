//! Running the built binaries: `taskq` commands and their outcome, a
//! factory in the background (`Daemon`), waiting on conditions, and the
//! process checks and clean-up (through the crate's own `taskq::spawn`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::root::TestRoot;

/// Path of the built taskq binary.
pub fn taskq_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_taskq"))
}

/// Path of the fake agent CLI (tests/bin/fake_agent.rs).
pub fn fake_agent_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-agent"))
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
}

/// How long a test waits for something that normally takes well under a
/// second (a factory start, an agent's spawn, a file move), so a slow
/// machine is not a failure.
pub const LONG: Duration = Duration::from_secs(30);

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

/// A `taskq run` in the background. Dropping it stops the factory (TERM,
/// then KILL); dropping the `TestRoot` kills every agent process group its
/// registry names, so a failing test leaves no process behind.
pub struct Daemon {
    pub child: std::process::Child,
}

impl TestRoot {
    /// A `taskq` command running in the root (cwd = root, clean env).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(taskq_bin());
        c.args(args)
            .current_dir(self.path())
            .env_remove("TASKQ_ROOT")
            // Tests run inside an agent are a person's shell here.
            .env_remove("TASKQ_AGENT_ID")
            .env_remove("TASKQ_AGENT_TOKEN")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// Runs `taskq ARGS` in the root.
    pub fn taskq(&self, args: &[&str]) -> Run {
        self.taskq_env(args, &[])
    }

    /// Runs `taskq ARGS` in the root with `env` added.
    pub fn taskq_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.cmd(args);
        cmd.envs(env.iter().copied());
        Run::from(cmd.output().expect("run taskq"))
    }

    /// Runs `taskq ARGS` in the root with the clock at `now`
    /// (`TASKQ_NOW`, RFC 3339).
    pub fn taskq_at(&self, now: &str, args: &[&str]) -> Run {
        self.taskq_env(args, &[("TASKQ_NOW", now)])
    }

    /// Adds a task through the CLI and returns its id.
    pub fn add(&self, args: &[&str]) -> String {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        self.taskq(&all).ok().stdout.trim().to_string()
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
        wait_for("the factory to start", LONG, || {
            std::fs::read_to_string(self.path().join("agents/factory/run.lock"))
                .is_ok_and(|s| !s.trim().is_empty())
        });
    }

    /// Runs `taskq run --until-idle` with `env` to the end.
    pub fn run_until_idle(&self, env: &[(&str, &str)]) -> Run {
        self.taskq_env(&["run", "--until-idle"], env)
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
        self.wait(LONG)
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

/// True when `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    taskq::spawn::is_alive(pid, None)
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
            // Agents lead their own process group (pgid == pid);
            // `signal_group` never signals a group id that could be ours
            // or init's.
            // Only the process the registry saw start (its start time):
            // a pid the kernel has since given to another test's factory
            // or agent is never killed (a flake seen under load).
            if let Some(pgid) = a["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                // With its leader gone, the group's number cannot have been
                // given to another process yet (Linux keeps a pid while a
                // group uses it): what is left of the group is the agent's.
                let now = taskq::spawn::start_time(pgid);
                if now.is_none() || now == a["pid_start"].as_u64() {
                    taskq::spawn::signal_group(pgid, libc::SIGKILL);
                }
            }
        }
    }
}
