//! The test harness: a temp taskq root and a builder for running the real
//! binary in it.

#![allow(dead_code)]

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
