//! Issue 17: `taskq top` in a real terminal. tmux runs it at 80x24
//! against a root with a factory and running shell agents; the test reads
//! the screen with `tmux capture-pane -p` (waiting until the expected text
//! appears) and types keys with `tmux send-keys`.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{taskq_bin, wait_for, TestRoot, LONG};

/// A tmux server of the test's own (its own socket); killed on drop with
/// everything running in it.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `taskq ARGS` in a new 80x24 session; when it exits, its exit
    /// code goes to `exit_file`.
    fn start(root: &Path, args: &str, exit_file: &Path) -> Tmux {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let socket = format!(
            "taskq-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let tmux = Tmux { socket };
        let script = format!(
            "'{}' --root '{}' top {args}; echo $? > '{}'; sleep 600",
            taskq_bin().display(),
            root.display(),
            exit_file.display()
        );
        let ok = tmux
            .cmd(&["new-session", "-d", "-x", "80", "-y", "24", &script])
            .status()
            .expect("tmux is installed (apt-get install tmux)")
            .success();
        assert!(ok, "tmux new-session failed");
        tmux
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .env_remove("TASKQ_ROOT")
            .stdin(Stdio::null());
        c
    }

    fn screen(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows every one of `texts`.
    #[track_caller]
    fn wait_screen(&self, what: &str, texts: &[&str]) -> String {
        let mut last = String::new();
        let start = std::time::Instant::now();
        while start.elapsed() < LONG {
            last = self.screen();
            if texts.iter().all(|t| last.contains(t)) {
                return last;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}: {texts:?}; the screen:\n{last}");
    }

    /// Types one key (`Tab`, `a`): one at a time, so no two read as an
    /// escape sequence.
    fn key(&self, key: &str) {
        assert!(self.cmd(&["send-keys", key]).status().unwrap().success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]).stderr(Stdio::null()).status();
    }
}

fn root_with_running_agents() -> TestRoot {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(2);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    root.write_task(
        "a",
        "id: TASK-001\ntitle: Long job\ntags: [job]",
        "```sh\necho working hard\nwhile [ ! -f scratch/go ]; do sleep 0.05; done\n```",
    );
    root.write_task(
        "b",
        "id: TASK-002\ntitle: Deploy\ntags: [job]\napproval: required",
        "```sh\necho deployed\n```",
    );
    root.write_task(
        "c",
        "id: TASK-003\ntitle: Later\ntags: [job]\nstatus: hold",
        "x",
    );
    root
}

#[test]
fn top_shows_agents_and_tasks_and_approves_with_a_key() {
    let root = root_with_running_agents();
    let daemon = root.daemon(&[], &[]);
    wait_for("the agent and the approval request", LONG, || {
        root.agents().iter().any(|a| a["status"] == "active")
            && root.path().join("approvals/pending/TASK-002.md").is_file()
    });
    let exit = root.path().join("scratch/top-exit");
    let tmux = Tmux::start(root.path(), "", &exit);
    let screen = tmux.wait_screen(
        "the agent, its last log line, the request and the held task",
        &[
            "factory running",
            "JOB-001",
            "TASK-001",
            "working hard",
            "pending approvals (1)",
            "TASK-002     Approve TASK-002: Deploy",
            "TASK-003   hold   Later",
            "queue: 1 ready, 1 running",
        ],
    );
    assert!(screen.lines().count() <= 24, "{screen}");
    // Tab to the approvals, `a`: the file moves, the screen follows.
    tmux.key("Tab");
    tmux.key("a");
    wait_for("the request to be approved", LONG, || {
        root.path().join("approvals/approved/TASK-002.md").is_file()
    });
    assert!(!root.path().join("approvals/pending/TASK-002.md").exists());
    tmux.wait_screen(
        "the outcome",
        &["done: approve TASK-002", "pending approvals (0)"],
    );
    // The approved task runs and the recent events say so.
    tmux.wait_screen("the approved task's run", &["completed TASK-002"]);
    // An agent asks to do something; `r` asks for the reason, Enter
    // rejects with it.
    root.taskq(&["approval", "request", "--task", "TASK-001", "Post the note"])
        .ok();
    tmux.wait_screen("the new request", &["TASK-001-1   Post the note"]);
    tmux.key("r");
    tmux.wait_screen("the reason prompt", &["reject TASK-001-1, reason: _"]);
    for c in ["n", "o", "t", "Space", "n", "o", "w"] {
        tmux.key(c);
    }
    tmux.key("Enter");
    // (The file is moved, then the decision written into it.)
    wait_for("the request to be rejected with the reason", LONG, || {
        std::fs::read_to_string(root.path().join("approvals/rejected/TASK-001-1.md"))
            .is_ok_and(|t| t.contains("reason: not now"))
    });
    tmux.wait_screen("the outcome", &["done: reject TASK-001-1"]);
    // `q` quits with 0.
    tmux.key("q");
    wait_for("top to exit", LONG, || {
        std::fs::read_to_string(&exit).is_ok_and(|s| !s.trim().is_empty())
    });
    assert_eq!(std::fs::read_to_string(&exit).unwrap().trim(), "0");
    root.write("scratch/go", "");
    drop(daemon);
}

#[test]
fn top_read_only_refuses_actions() {
    let root = root_with_running_agents();
    let daemon = root.daemon(&[], &[]);
    wait_for("the approval request", LONG, || {
        root.path().join("approvals/pending/TASK-002.md").is_file()
    });
    let exit = root.path().join("scratch/top-exit");
    let tmux = Tmux::start(root.path(), "--read-only", &exit);
    tmux.wait_screen("the screen", &["read-only", "TASK-002     Approve"]);
    tmux.key("a");
    tmux.wait_screen("the refusal", &["read-only: cannot approve TASK-002"]);
    tmux.key("p");
    tmux.wait_screen("the refusal", &["read-only: cannot pause the factory"]);
    tmux.key("Tab");
    tmux.key("Tab");
    tmux.key("u");
    tmux.wait_screen("the refusal", &["read-only: cannot release TASK-003"]);
    assert!(root.path().join("approvals/pending/TASK-002.md").is_file());
    assert!(!root.path().join("agents/factory/paused").exists());
    assert_eq!(root.show("TASK-003")["status"], "hold");
    tmux.key("q");
    wait_for("top to exit", LONG, || {
        std::fs::read_to_string(&exit).is_ok_and(|s| !s.trim().is_empty())
    });
    assert_eq!(std::fs::read_to_string(&exit).unwrap().trim(), "0");
    root.write("scratch/go", "");
    drop(daemon);
}

#[test]
fn top_needs_a_terminal_and_has_no_json() {
    let root = TestRoot::new();
    let run = root.taskq(&["top"]).code(2);
    assert!(
        run.stderr.contains("`top` needs a terminal"),
        "{}",
        run.stderr
    );
    let run = root.taskq(&["--json", "top"]).code(2);
    assert!(run.stderr.contains("no --json"), "{}", run.stderr);
}
