//! Issue 17: `taskq pause` / `taskq resume` with a real factory (a paused
//! factory starts nothing while its running agent finishes; resumed, the
//! next task starts), and `taskq logs` (`-f` prints lines as they are
//! written and ends with the agent).

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use crate::util::{wait_for, TestRoot, LONG};

#[test]
fn a_paused_factory_lets_running_agents_finish_and_starts_nothing_until_resumed() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(2);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    root.write_task(
        "a",
        "id: TASK-001\ntags: [job]",
        "```sh\nwhile [ ! -f scratch/go ]; do sleep 0.02; done\necho a finished\n```",
    );
    let daemon = root.daemon(&[], &[]);
    wait_for("the first agent to start", LONG, || {
        root.agents().iter().any(|a| a["status"] == "active")
    });
    let run = root
        .taskq(&["pause", "--reason", "a release", "--by", "ada"])
        .ok();
    assert!(
        run.stderr.contains("paused: no new agents start"),
        "{}",
        run.stderr
    );
    assert!(root.path().join("agents/factory/paused").is_file());
    // Idempotent: a second pause changes nothing and says so.
    let again = root.taskq(&["--json", "pause", "--by", "bob"]).ok();
    let v: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(v["paused"], true);
    assert_eq!(v["changed"], false);
    assert_eq!(v["pause"]["by"], "ada", "the first pause stays");
    // status, why and the dry run say so.
    let status = root.taskq(&["status"]).ok().stdout;
    assert!(status.contains("paused by ada since "), "{status}");
    let status = root.taskq(&["--json", "status"]).ok().stdout;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["paused"]["reason"], "a release", "{v}");
    // A new task while paused, then the running agent finishes.
    root.write_task("b", "id: TASK-002\ntags: [job]", "```sh\necho b ran\n```");
    let why = root.taskq(&["why", "TASK-002"]).ok().stdout;
    assert!(why.contains("ready, but paused by ada"), "{why}");
    let plan = root.taskq(&["run", "--dry-run"]).ok().stdout;
    assert!(plan.starts_with("paused by ada"), "{plan}");
    root.write("scratch/go", "");
    wait_for("the running agent to finish", LONG, || {
        root.path().join("tasks/done/a.md").is_file()
            && root.agents().iter().all(|a| a["status"] == "completed")
    });
    // A step after both the new task and the end has run (a heartbeat is
    // 2 s; another file event forces one now): still nothing started.
    root.write_task("c", "id: TASK-003\ntags: [job]", "```sh\necho c ran\n```");
    wait_for(
        "the factory to adopt nothing new and start nothing",
        LONG,
        || root.taskq(&["why", "TASK-003"]).stdout.contains("paused"),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(root.agents().len(), 1, "{:?}", root.agents());
    assert_eq!(root.show("TASK-002")["status"], "ready");
    // Resume: the next ones start.
    let run = root.taskq(&["resume"]).ok();
    assert!(
        run.stderr.contains("resumed: agents start again"),
        "{}",
        run.stderr
    );
    assert!(!root.path().join("agents/factory/paused").exists());
    let again = root.taskq(&["--json", "resume"]).ok();
    let v: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(
        (v["paused"].clone(), v["changed"].clone()),
        (false.into(), false.into())
    );
    wait_for("the waiting tasks to run", LONG, || {
        root.path().join("tasks/done/b.md").is_file()
            && root.path().join("tasks/done/c.md").is_file()
    });
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("paused by ada since ") && run.stderr.contains(": a release"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("resumed: agents start again"),
        "{}",
        run.stderr
    );
}

#[test]
fn logs_follow_prints_lines_as_they_are_written_and_ends_with_the_agent() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    root.write_task(
        "a",
        "id: TASK-001\ntags: [job]",
        "```sh\necho first line\nwhile [ ! -f scratch/two ]; do sleep 0.02; done\necho second line\nwhile [ ! -f scratch/end ]; do sleep 0.02; done\necho last line\n```",
    );
    // No agent yet: a clear refusal.
    let run = root.taskq(&["logs", "TASK-001"]).code(3);
    assert!(
        run.stderr.contains("no agent has run it yet"),
        "{}",
        run.stderr
    );
    root.taskq(&["logs", "NOPE-1"]).code(2);
    let daemon = root.daemon(&[], &[]);
    wait_for("the agent to start", LONG, || {
        root.agents().iter().any(|a| a["status"] == "active")
    });
    // Follow it by its task's id.
    let mut child = root
        .cmd(&["logs", "-f", "TASK-001"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let seen = Arc::clone(&seen);
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                seen.lock().unwrap().push(line.unwrap());
            }
        })
    };
    let has = |l: &str| seen.lock().unwrap().iter().any(|x| x == l);
    wait_for("the first line", LONG, || has("first line"));
    assert!(!has("second line"));
    root.write("scratch/two", "");
    wait_for("the second line, as it is written", LONG, || {
        has("second line")
    });
    assert!(child.try_wait().unwrap().is_none(), "still following");
    root.write("scratch/end", "");
    // The agent ends: `logs -f` prints the rest and exits by itself.
    let mut status = None;
    wait_for("logs -f to end with the agent", LONG, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    reader.join().unwrap();
    assert!(status.unwrap().success());
    assert_eq!(
        *seen.lock().unwrap(),
        ["first line", "second line", "last line"]
    );
    // Without -f: the whole log; --lines; --json; by agent id.
    let all = root.taskq(&["logs", "JOB-001"]).ok().stdout;
    assert_eq!(all, "first line\nsecond line\nlast line\n");
    let last = root.taskq(&["logs", "-n", "1", "TASK-001"]).ok().stdout;
    assert_eq!(last, "last line\n");
    let v: serde_json::Value =
        serde_json::from_str(&root.taskq(&["--json", "logs", "TASK-001"]).ok().stdout).unwrap();
    assert_eq!(v["agent"], "JOB-001");
    assert_eq!(v["lines"][2], "last line");
    // `-f` on an agent that has ended prints its log and ends at once.
    let run = root.cmd(&["logs", "-f", "JOB-001"]).output().unwrap();
    assert!(run.status.success());
    drop(daemon);
}
