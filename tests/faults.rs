//! The factory outlives faults while it has agents: a full disk, a
//! suspended factory, SIGHUP.

use std::process::Command;
use std::time::Duration;

use crate::util::{wait_for, TestRoot};

fn shell_task(root: &TestRoot, id: u32, script: &str) {
    root.write(
        &format!("tasks/todo/TASK-{id:03}.md"),
        format!("---\nid: TASK-{id:03}\ntags: [job]\n---\n```sh\n{script}\n```\n"),
    );
}

/// The fake agent's factory config with another heartbeat.
fn factory(root: &TestRoot, extra: &str) {
    root.factory("");
    let config = root.read("agents/factory/config.yaml");
    root.write(
        "agents/factory/config.yaml",
        config.replace("heartbeat: 2s\n", "") + extra,
    );
}

fn signal(daemon: &crate::util::Daemon, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(daemon.child.id() as libc::pid_t, sig) },
        0
    );
}

/// A small tmpfs mounted on `dir` (root only); `None` where mounting is
/// not allowed (the test then says so and passes).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_steps_but_not_the_factory() {
    let root = TestRoot::empty();
    let dir = root.path().to_path_buf();
    let Some(_fs) = Tmpfs::mount(&dir, "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    root.taskq(&["init", "."]).ok();
    factory(&root, "heartbeat: 200ms\n");
    root.shell_role(2);
    // The job prints a long line (its result: a file of 16 KB to write
    // when it ends), then waits for a go file.
    shell_task(
        &root,
        1,
        "head -c 16000 /dev/zero | tr '\\0' x; echo\nwhile [ ! -e go ]; do sleep 0.05; done",
    );
    root.write(
        "tasks/todo/TASK-002.md",
        "---\nid: TASK-002\ntags: [job]\ndependencies: [TASK-001]\n---\n```sh\ntrue\n```\n",
    );
    root.write("agents/factory/last-task-id", "2\n");
    // Its messages go to a file outside the full disk.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = root.cmd(&["run"]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap());
    let mut daemon = crate::util::Daemon {
        child: cmd.spawn().unwrap(),
    };
    let said = |what: &str| std::fs::read_to_string(log.path()).unwrap().contains(what);
    wait_for("TASK-001's output", Duration::from_secs(30), || {
        std::fs::metadata(dir.join("agents/logs/JOB-001.log")).is_ok_and(|m| m.len() > 16000)
    });
    // Fill the disk, then let the job end: recording its end needs room.
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    std::fs::File::create(dir.join("go")).unwrap();
    wait_for("a step to fail", Duration::from_secs(30), || {
        said("error: a step failed")
    });
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the factory exited on a full disk: {}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    assert!(
        said("No space left on device"),
        "{}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    std::fs::remove_file(&filler).unwrap();
    wait_for("both tasks done", Duration::from_secs(60), || {
        dir.join("tasks/done/TASK-001.md").exists() && dir.join("tasks/done/TASK-002.md").exists()
    });
    assert!(said("recovered: a step succeeded"));
    let run = daemon.wait_after_term();
    assert_eq!(
        run.code,
        0,
        "{}",
        std::fs::read_to_string(log.path()).unwrap()
    );
    // Each task ran exactly once, and TASK-001's result was kept.
    let agents = root.agents();
    for id in ["TASK-001", "TASK-002"] {
        let n = agents.iter().filter(|a| a["task"] == id).count();
        assert_eq!(n, 1, "{id}: {agents:?}");
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("agents/results/TASK-001.md"))
            .unwrap()
            .trim()
            .len(),
        16000
    );
}

#[test]
fn a_suspended_factory_does_not_turn_a_finished_agent_into_a_timeout() {
    let root = TestRoot::new();
    root.factory("");
    root.write(
        "agents/templates/job.md",
        "---\nprefix: JOB\nagent: shell\ntags: [job]\nworkspace: root\ntimeout: 2s\nretries: 2\nenv: [PATH, HOME]\n---\n",
    );
    shell_task(&root, 1, "sleep 0.5");
    root.write("agents/factory/last-task-id", "1\n");
    let daemon = root.daemon(&[], &[]);
    wait_for("the agent to start", Duration::from_secs(30), || {
        root.agents().iter().any(|a| a["status"] == "active")
    });
    signal(&daemon, libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(4));
    signal(&daemon, libc::SIGCONT);
    wait_for("TASK-001 done", Duration::from_secs(30), || {
        root.path().join("tasks/done/TASK-001.md").exists()
    });
    let agents = root.agents();
    assert_eq!(agents.len(), 1, "run once: {agents:?}");
    assert_eq!(agents[0]["status"], "completed", "{agents:?}");
    assert_eq!(agents[0]["exit_code"], 0, "{agents:?}");
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn sighup_reloads_the_config_and_the_roles() {
    let root = TestRoot::new();
    // No watcher and a long heartbeat: only SIGHUP makes it look again.
    factory(&root, "watch: false\nheartbeat: 1h\n");
    std::fs::remove_file(root.path().join("agents/templates/shell.md")).unwrap();
    shell_task(&root, 1, "true");
    root.write("agents/factory/last-task-id", "1\n");
    let daemon = root.daemon(&[], &[]);
    root.wait_factory_started();
    wait_for("the first step", Duration::from_secs(30), || {
        root.taskq(&["why", "TASK-001"])
            .ok()
            .stdout
            .contains("no role")
    });
    root.shell_role(1);
    signal(&daemon, libc::SIGHUP);
    wait_for("TASK-001 done", Duration::from_secs(30), || {
        root.path().join("tasks/done/TASK-001.md").exists()
    });
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("SIGHUP: reloaded the config (max_concurrent 3) and"),
        "{}",
        run.stderr
    );
}
