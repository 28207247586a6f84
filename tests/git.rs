//! Git as the audit trail, with real git in temp repositories.

use std::time::{Duration, Instant};

use crate::util::{git, TestRoot};

/// A taskq root that is a git repository with one commit, plus the user's
/// own staged, unstaged and untracked changes.
fn repo() -> TestRoot {
    let root = TestRoot::new();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.email", "person@example.com"]);
    git(&root, &["config", "user.name", "Person"]);
    root.write("notes.txt", "v1\n");
    root.write("readme.txt", "v1\n");
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "init"]);
    root.write("notes.txt", "v2 staged\n");
    git(&root, &["add", "notes.txt"]);
    root.write("readme.txt", "v2 unstaged\n");
    root.write("scratch.txt", "untracked\n");
    root
}

/// The templates, config and tasks are the user's files: commits them
/// first (the user's other changes stay as they are).
fn commit_setup(root: &TestRoot) {
    let paths = ["agents", "tasks", "approvals", ".gitignore"];
    git(root, &[&["add", "--"][..], &paths[..]].concat());
    git(
        root,
        &[&["commit", "-q", "-m", "setup", "--"][..], &paths[..]].concat(),
    );
}

fn user_changes_untouched(root: &TestRoot) {
    let status = git(root, &["status", "--porcelain"]);
    let mut lines: Vec<&str> = status.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [" M readme.txt", "?? scratch.txt", "M  notes.txt"],
        "git status:\n{status}"
    );
    assert_eq!(root.read("notes.txt"), "v2 staged\n");
    assert_eq!(
        git(root, &["show", ":notes.txt"]),
        "v2 staged\n",
        "still staged"
    );
}

#[test]
fn transitions_are_commits_of_only_taskq_paths() {
    let root = repo();
    let a = root.add(&["Write the spec"]);
    root.taskq(&["claim", &a, "--agent", "BLD-002"]).ok();
    root.taskq(&["done", &a, "--result", "spec.md"]).ok();
    let log = git(&root, &["log", "--format=%s"]);
    let subjects: Vec<&str> = log.lines().collect();
    assert_eq!(
        subjects,
        [
            "taskq: TASK-001 running → done",
            "taskq: TASK-001 ready → running (claimed by BLD-002)",
            "taskq: TASK-001 new → ready",
            "init"
        ]
    );
    let body = git(&root, &["log", "-1", "--format=%B", "HEAD~1"]);
    assert!(body.contains("\n\nTask: TASK-001\n"), "{body}");
    // Each commit holds taskq's own paths only.
    let files = git(&root, &["show", "--name-status", "--format=", "HEAD"]);
    assert!(
        files.contains("tasks/done/TASK-001-write-the-spec.md"),
        "{files}"
    );
    assert!(
        !files.contains("notes.txt") && !files.contains("readme.txt"),
        "{files}"
    );
    user_changes_untouched(&root);
    // taskq log follows the move from todo/ to done/.
    let run = root.taskq(&["log", &a]).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(
        lines[0].contains("TASK-001 new → ready") && lines[2].contains("TASK-001 running → done"),
        "{}",
        run.stdout
    );
    let json = root.taskq(&["--json", "log", &a]).ok().json();
    assert_eq!(json.as_array().unwrap().len(), 3);
}

#[test]
fn a_factory_run_commits_its_steps_and_leaves_status_clean() {
    let root = repo();
    root.factory("");
    root.role("w", "prefix: W\nmodel: m\ntags: [w]\nmax_concurrent: 2");
    for n in 1..=3 {
        root.write(
            &format!("tasks/todo/t{n}.md"),
            format!("---\nid: TASK-00{n}\ntags: [w]\n---\nx\n"),
        );
    }
    commit_setup(&root);
    let run = root.run_until_idle(&[("FAKE_AGENT_COST", "0.42")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    user_changes_untouched(&root);
    let log = git(&root, &["log", "--format=%B%x00"]);
    assert!(
        log.contains("Agent: W-001") && log.contains("Cost-USD: 0.4200"),
        "{log}"
    );
    for n in 1..=3 {
        assert!(log.contains(&format!("TASK-00{n} running → done")), "{log}");
    }
    // The registry went in with the task changes.
    let files = git(&root, &["log", "--name-only", "--format="]);
    assert!(files.contains("agents/factory/registry.json"), "{files}");
    assert!(
        !files.contains("agents/logs/") && !files.contains("agents/workspaces/"),
        "{files}"
    );
    let run = root.taskq(&["log", "--agent", "W-001"]).ok();
    assert!(run.stdout.contains("running → done"), "{}", run.stdout);
}

/// The user's own git command holds index.lock: taskq waits, retries, and
/// loses nothing.
#[test]
fn a_held_index_lock_delays_but_loses_nothing() {
    let root = repo();
    let lock = root.path().join(".git/index.lock");
    std::fs::write(&lock, "").unwrap();
    let releaser = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            std::fs::remove_file(lock).unwrap();
        })
    };
    let start = Instant::now();
    let id = root.add(&["Survive the lock"]);
    releaser.join().unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "it waited for the lock"
    );
    let log = git(&root, &["log", "--format=%s"]);
    assert!(log.contains(&format!("taskq: {id} new → ready")), "{log}");
    // Held for longer than taskq retries: the transition is queued and
    // lands with the next commit.
    std::fs::write(&lock, "").unwrap();
    let b = root.add(&["Queued"]);
    assert!(
        !git(&root, &["log", "--format=%s"]).contains(&b),
        "not committed while locked"
    );
    std::fs::remove_file(&lock).unwrap();
    let c = root.add(&["Next"]);
    let last = git(&root, &["log", "-1", "--format=%B"]);
    assert!(
        last.contains(&format!("{b} new → ready")) && last.contains(&format!("{c} new → ready")),
        "{last}"
    );
    user_changes_untouched(&root);
}

/// A worktree role: the agent works on its own branch; its file is
/// committed there; no worktree is left behind.
#[test]
fn a_worktree_role_leaves_a_branch_and_no_worktree() {
    let root = repo();
    root.factory("");
    root.role(
        "coder",
        "prefix: COD\nmodel: m\ntags: [code]\nmax_concurrent: 1\nworkspace: worktree",
    );
    git(&root, &["add", "agents", ".gitignore"]);
    git(
        &root,
        &["commit", "-q", "-m", "setup", "--", "agents", ".gitignore"],
    );
    root.write(
        "tasks/todo/f.md",
        "---\nid: TASK-001\ntags: [code]\n---\nAdd a feature file.\n",
    );
    let run = root.run_until_idle(&[
        ("FAKE_AGENT_WRITE", "feature.txt"),
        ("FAKE_AGENT_WRITE_CONTENT", "the feature\n"),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}");
    assert!(
        t["result"]
            .as_str()
            .unwrap()
            .contains("branch: taskq/TASK-001"),
        "{t}"
    );
    assert_eq!(
        git(&root, &["show", "taskq/TASK-001:feature.txt"]),
        "the feature\n"
    );
    let worktrees = git(&root, &["worktree", "list", "--porcelain"]);
    assert_eq!(
        worktrees.matches("worktree ").count(),
        1,
        "only the main one: {worktrees}"
    );
    assert!(!root.path().join("agents/workspaces/COD-001").exists());
    assert_eq!(
        root.registry()["agents"]["COD-001"]["branch"],
        "taskq/TASK-001"
    );
    user_changes_untouched(&root);
}

/// Many short jobs: steps come faster than commits are worth, so their
/// transitions share commits, and every one of them still reaches git
/// before `taskq run --until-idle` exits, with nothing left queued.
#[test]
fn fast_steps_share_commits_and_every_transition_lands() {
    let root = repo();
    root.factory("");
    root.shell_role(3);
    for n in 1..=40 {
        root.write(
            &format!("tasks/todo/t{n}.md"),
            format!("---\nid: TASK-{n:03}\ntags: [job]\n---\n```sh\ntrue\n```\n"),
        );
    }
    commit_setup(&root);
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    user_changes_untouched(&root);
    assert!(
        !root.path().join(".git/taskq-pending").exists(),
        "nothing left queued"
    );
    let log = git(&root, &["log", "--format=%B%x00"]);
    for n in 1..=40 {
        assert!(
            log.contains(&format!("TASK-{n:03} ready → running")),
            "{log}"
        );
        assert!(
            log.contains(&format!("TASK-{n:03} running → done")),
            "{log}"
        );
    }
    let out = root.taskq(&["log", "TASK-007"]).ok();
    assert!(out.stdout.contains("running → done"), "{}", out.stdout);
}
