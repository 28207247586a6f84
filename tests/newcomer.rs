//! A newcomer's first hour (issue 12): hand-written files that name each
//! other by file name, approvals and who gave them, stopping a task's
//! agent, one warning per broken file, plain wording, one spelling for ids
//! and flags.

use crate::util::{git, Run, TestRoot};

fn at(root: &TestRoot, args: &[&str]) -> Run {
    Run::from(
        root.cmd(args)
            .env("TASKQ_NOW", "2026-03-01T10:00:00Z")
            .output()
            .unwrap(),
    )
}

/// The `id:` a file was given.
fn id_of(root: &TestRoot, rel: &str) -> String {
    root.read(rel)
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or_else(|| panic!("{rel} has no id"))
        .to_string()
}

const API: &str = "---\ntitle: The API   # after the db\ndependencies: [setup-db.md]  # by file\npriority: high\n---\nBuild it.\n";

/// Hand-written files name their dependencies by file (`setup-db.md`,
/// `tasks/todo/setup-db.md`) or by the stem they are listed under
/// (`setup-db`): read commands follow the name, and adoption rewrites
/// it to the id the file got, changing only the `dependencies:` line.
#[test]
fn adoption_rewrites_file_name_dependencies_to_ids() {
    let root = TestRoot::new();
    root.write("tasks/todo/setup-db.md", "# Set up the database\n");
    root.write("tasks/todo/api.md", API);
    root.write(
        "tasks/todo/cli.md",
        "---\ndependencies: [setup-db]\n---\nThe CLI.\n",
    );
    root.write(
        "tasks/todo/web.md",
        "---\ndependencies:\n  - tasks/todo/setup-db.md\n  - api\n---\n",
    );

    // Before adoption: the names already count as the files' tasks.
    let list = root.taskq(&["list"]).ok().stdout;
    assert!(list.contains("(waits for setup-db)"), "{list}");
    let check = root.taskq(&["check"]).ok();
    assert!(!check.stdout.contains("does not exist"), "{}", check.stdout);

    let adopt = at(&root, &["adopt"]).ok();
    let db = id_of(&root, "tasks/todo/setup-db.md");
    let api = id_of(&root, "tasks/todo/api.md");
    assert_eq!(
        root.read("tasks/todo/api.md"),
        API.replace("[setup-db.md]  # by file", &format!("[{db}]  # by file"))
            .replace(
                "priority: high\n",
                &format!(
                    "priority: high\nid: {api}\nstatus: ready\ncreated: 2026-03-01T10:00:00Z\n"
                )
            )
    );
    assert!(root
        .read("tasks/todo/cli.md")
        .starts_with(&format!("---\ndependencies: [{db}]\n")));
    assert!(root
        .read("tasks/todo/web.md")
        .starts_with(&format!("---\ndependencies: [{db}, {api}]\n")));
    assert!(
        adopt
            .stderr
            .contains(&format!("{api}: ready (dependencies: setup-db.md → {db})")),
        "{}",
        adopt.stderr
    );
    root.taskq(&["check"]).ok();
    let deps = root.taskq(&["deps", &api]).ok().stdout;
    assert!(
        deps.contains(&format!("{api} [blocked] → {db} [ready]")),
        "{deps}"
    );

    // A file written later naming an adopted file: the next writing
    // command rewrites it too.
    root.write(
        "tasks/todo/docs.md",
        "---\nid: TASK-100\ndependencies: [tasks/todo/api.md, nothing.md]\n---\n",
    );
    root.taskq(&["add", "Something else"]).ok();
    assert_eq!(
        root.read("tasks/todo/docs.md"),
        format!("---\nid: TASK-100\ndependencies: [{api}, nothing.md]\n---\n")
    );
    let check = root.taskq(&["check"]).code(1).stdout;
    assert!(
        check.contains(
            "tasks/todo/docs.md:3: `TASK-100` depends on `nothing.md`, which does not exist"
        ),
        "{check}"
    );
}

/// A taskq root in a git repository with everything committed, as
/// `Person`.
fn repo() -> TestRoot {
    let root = TestRoot::new();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.email", "person@example.com"]);
    git(&root, &["config", "user.name", "Person"]);
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "setup"]);
    root
}

/// Counts read `1 task`, `2 tasks`, never `task(s)`; a change that keeps
/// the status does not say it twice (`review → review`), nor a word twice
/// in a row (a model named like its role: `BLD-001 builder builder`).
#[test]
fn counts_are_plural_and_commit_subjects_say_each_thing_once() {
    let root = repo();
    root.factory("");
    root.role(
        "builder",
        "prefix: BLD\nmodel: builder\ntags: [build]\nmax_concurrent: 1\nreview: tester",
    );
    root.write(
        "agents/templates/tester.md",
        "---\nprefix: TST\nagent: command\ncommand: \"echo fine\"\nmax_concurrent: 1\nenv: [PATH, HOME]\n---\nTest it.\n",
    );
    let a = root.add(&["Build it", "--tag", "build"]);
    let b = root.add(&["Ship it", "--deps", &a]);
    let check = root.taskq(&["check"]).ok();
    assert!(
        check.stderr.contains("2 tasks checked: ok (0 warnings)"),
        "{}",
        check.stderr
    );
    let show = root.taskq(&["show", &a]).ok().stdout;
    assert!(show.contains("unblocks:    1 task\n"), "{show}");
    root.write(
        "tasks/todo/bad.md",
        "---\nid: TASK-050\nstatus: redy\n---\n",
    );
    let check = root.taskq(&["check"]).code(1);
    assert!(
        check
            .stderr
            .contains("3 tasks checked: 1 problem, 0 warnings"),
        "{}",
        check.stderr
    );
    std::fs::remove_file(root.path().join("tasks/todo/bad.md")).unwrap();

    let run = root.run_until_idle(&[]);
    // The second task has no role: the run ends saying so, with exit 1.
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("1 task can never run as things are:"),
        "{}",
        run.stderr
    );
    assert_eq!(
        root.taskq(&["--json", "show", &a]).ok().json()["status"],
        "done"
    );
    let log = git(&root, &["log", "--format=%B"]);
    assert!(
        log.contains(&format!("{a} review (review by TST-002 tester")),
        "{log}"
    );
    assert!(
        log.contains(&format!("{a} ready → running (BLD-001 builder)")),
        "{log}"
    );
    for line in log.lines() {
        assert!(!line.contains("review → review"), "{line}");
        let words: Vec<&str> = line.split_whitespace().collect();
        assert!(!words.windows(2).any(|w| w[0] == w[1]), "{line}");
    }
    let _ = b;
}

/// Every warning a read command prints, printed once: a broken file, a
/// bad field, and a dependency written twice that names nothing.
#[test]
fn each_problem_is_warned_about_once_per_command() {
    let root = TestRoot::new();
    let a = root.add(&["First"]);
    root.write("tasks/todo/broken.md", "---\nid: [x\n---\n");
    root.write(
        "tasks/todo/bad.md",
        "---\nid: TASK-009\nstatus: redy\ndependencies: [TASK-001, TASK-050, TASK-050]\n---\n",
    );
    root.write(
        "tasks/todo/c.md",
        "---\nid: TASK-010\ndependencies: [TASK-050, TASK-009, TASK-050]\n---\n",
    );
    for args in [
        &["list"][..],
        &["list", "--ready"],
        &["show", "9"],
        &["show", &a],
        &["deps", "10"],
        &["deps", "10", "--reverse"],
        &["next"],
        &["graph"],
        &["status"],
        &["why", "10"],
    ] {
        let run = root.taskq(args);
        assert!(run.code == 0 || run.code == 1, "{args:?}: {}", run.stderr);
        let warnings: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("taskq: warning:"))
            .collect();
        assert!(!warnings.is_empty(), "{args:?}: no warnings");
        for w in &warnings {
            assert_eq!(
                warnings.iter().filter(|x| *x == w).count(),
                1,
                "{args:?} says twice: {w}\n{}",
                run.stderr
            );
        }
    }
    let check = root.taskq(&["check"]).code(1);
    for line in check.stdout.lines() {
        assert_eq!(
            check.stdout.lines().filter(|l| *l == line).count(),
            1,
            "check says twice: {line}\n{}",
            check.stdout
        );
    }
    assert!(check.stderr.contains("4 problems"), "{}", check.stderr);
}

/// `taskq stop` takes a task id (`2`, `TASK-002`, `task-2`) as well as an
/// agent id: it stops the agent running the task; a task with no running
/// agent is a clear error.
#[test]
fn stop_takes_a_task_id() {
    use std::time::Duration;
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "slow",
        "prefix: SLO\nmodel: m\ntags: [slow]\nmax_concurrent: 2\ntimeout: 10m",
    );
    root.add(&["One", "--tag", "slow"]);
    root.add(&["Two", "--tags", "slow"]);
    let idle = root.add(&["Three, for no role"]);
    let daemon = root.daemon(&[], &[("FAKE_AGENT_DELAY_MS", "600000")]);
    crate::util::wait_for("2 active agents", Duration::from_secs(30), || {
        root.agents()
            .iter()
            .filter(|a| a["status"] == "active")
            .count()
            == 2
    });
    let agent = root
        .agents()
        .iter()
        .find(|a| a["task"] == "TASK-002")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stop = root.taskq(&["stop", "task-2", "--cancel"]).ok();
    assert!(
        stop.stderr.contains(&format!("{agent}: stopped")),
        "{}",
        stop.stderr
    );
    crate::util::wait_for("TASK-002 cancelled", Duration::from_secs(30), || {
        root.taskq(&["--json", "show", "2"]).json()["status"] == "cancelled"
    });
    let again = root.taskq(&["stop", "TASK-002"]).code(3);
    assert!(
        again
            .stderr
            .contains("`TASK-002` has no running agent (it is cancelled)"),
        "{}",
        again.stderr
    );
    let idle_stop = root.taskq(&["stop", &idle]).code(3);
    assert!(
        idle_stop
            .stderr
            .contains(&format!("`{idle}` has no running agent (it is ready)")),
        "{}",
        idle_stop.stderr
    );
    let nothing = root.taskq(&["stop", "99"]).code(2);
    assert!(
        nothing.stderr.contains("no agent or task `99`"),
        "{}",
        nothing.stderr
    );
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
}

/// `--tag` is the one spelling (`--tags` too), repeated or `a,b`, on
/// every command that takes tags; every argument naming a task takes `1`,
/// `TASK-001` or `task-1`.
#[test]
fn one_spelling_for_tags_and_for_ids() {
    let root = TestRoot::new();
    let a = root.add(&["Alpha", "--tag", "build", "--tag", "api,build"]);
    let b = root.add(&["Beta", "--tags", "build"]);
    let c = root.add(&["Gamma", "--deps", "1,task-2", "--tag", "docs"]);
    assert_eq!(
        (a.as_str(), b.as_str(), c.as_str()),
        ("TASK-001", "TASK-002", "TASK-003")
    );
    let alpha = root.taskq(&["--json", "show", "task-1"]).ok().json();
    assert_eq!(alpha["tags"], serde_json::json!(["build", "api"]));
    let gamma = root.taskq(&["--json", "show", "3"]).ok().json();
    assert_eq!(
        gamma["dependencies"],
        serde_json::json!(["TASK-001", "TASK-002"])
    );

    let ids = |run: Run| -> Vec<String> {
        run.stdout
            .lines()
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids(root.taskq(&["list", "--tag", "build"]).ok()),
        ["TASK-001", "TASK-002"]
    );
    assert_eq!(
        ids(root.taskq(&["list", "--tags", "build,api"]).ok()),
        ["TASK-001"]
    );
    assert_eq!(
        ids(root
            .taskq(&["list", "--tag", "build", "--tag", "docs"])
            .ok()),
        Vec::<String>::new()
    );
    assert_eq!(
        root.taskq(&["next", "--tags", "api"]).ok().stdout,
        "TASK-001\n"
    );
    assert_eq!(root.taskq(&["next", "--tag", "docs"]).code(1).stdout, "");
    for cmd in ["add", "list", "next"] {
        let help = root.taskq(&[cmd, "--help"]).ok().stdout;
        assert!(help.contains("--tag <"), "{cmd}: {help}");
        assert!(help.contains("[alias: --tags]"), "{cmd}: {help}");
    }

    root.taskq(&["claim", "TASK-1", "--agent", "me"]).ok();
    root.taskq(&["renew", "task-001", "--lease", "1h"]).ok();
    let deps = root.taskq(&["deps", "3"]).ok().stdout;
    assert!(deps.contains("TASK-001 [running]"), "{deps}");
    root.taskq(&["hold", "2"]).ok();
    root.taskq(&["release", "Task-2"]).ok();
    root.taskq(&["done", "1"]).ok();
    root.taskq(&["fail", "task-2", "--reason", "no"]).ok();
    root.taskq(&["release", "TASK-002"]).ok();
    let why = root.taskq(&["why", "3"]).ok().stdout;
    assert!(why.contains("TASK-002"), "{why}");
    root.taskq(&["status", "task-3"]).ok();
    root.taskq(&["cancel", "3"]).ok();
    assert_eq!(
        root.taskq(&["--json", "show", "TASK-003"]).ok().json()["status"],
        "cancelled"
    );
    let unknown = root.taskq(&["show", "task-9"]).code(2);
    assert!(
        unknown.stderr.contains("no task `task-9`"),
        "{}",
        unknown.stderr
    );
}

/// `taskq log` shows a task's approval steps and who approved: `approve`
/// records its approver (`--by`, else git's `user.name`); a file moved by
/// hand shows as approved by whoever committed the move, or as moved by
/// hand when the factory committed it.
#[test]
fn log_shows_approval_steps_and_who_approved() {
    let root = repo();
    root.factory("");
    root.role(
        "fake",
        "prefix: FAK\nmodel: m\ntags: [x]\nmax_concurrent: 1",
    );
    for title in ["By hand", "By command", "Committed by a person", "Rejected"] {
        root.add(&[title, "--tag", "x", "--body", "Do it."]);
    }
    for n in 1..=4 {
        root.taskq(&["hold", &n.to_string()]).ok();
        let file = root.task_file(&format!("TASK-00{n}"));
        let text = root
            .read(&file)
            .replace("status: hold", "status: hold\napproval: required");
        root.write(&file, text);
        root.taskq(&["release", &n.to_string()]).ok();
    }
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "approval: required"]);
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for n in 1..=4 {
        assert!(root
            .path()
            .join(format!("approvals/pending/TASK-00{n}.md"))
            .is_file());
    }
    // 1: a plain mv, committed by the factory with the start of the task.
    std::fs::rename(
        root.path().join("approvals/pending/TASK-001.md"),
        root.path().join("approvals/approved/TASK-001.md"),
    )
    .unwrap();
    // 2: taskq approve, by git's user.name; 4: rejected with --by.
    root.taskq(&["approve", "2"]).ok();
    assert!(root
        .read("approvals/approved/TASK-002.md")
        .contains("\nby: Person\n"));
    root.taskq(&["reject", "task-4", "--by", "Carol", "--reason", "not now"])
        .ok();
    assert!(root
        .read("approvals/rejected/TASK-004.md")
        .contains("\nby: Carol\n"));
    // 3: a person's own commit of the move.
    git(
        &root,
        &["mv", "approvals/pending/TASK-003.md", "approvals/approved/"],
    );
    git(
        &root,
        &["-c", "user.name=Alice", "commit", "-q", "-m", "ship it"],
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    let log = |id: &str| root.taskq(&["log", id]).ok().stdout;
    let one = log("1");
    assert_lines(
        &one,
        &[
            "TASK-001 new → ready",
            "TASK-001 needs approval (approvals/pending/TASK-001.md)",
            "TASK-001 approved (moved by hand: approvals/approved/TASK-001.md)",
            "TASK-001 ready → running (FAK-",
            "TASK-001 running → done",
        ],
    );
    assert_lines(
        &log("TASK-002"),
        &[
            "TASK-002 needs approval (approvals/pending/TASK-002.md)",
            "TASK-002 approved by Person (approvals/approved/TASK-002.md)",
            "TASK-002 ready → running (FAK-",
        ],
    );
    assert_lines(
        &log("3"),
        &[
            "TASK-003 needs approval (approvals/pending/TASK-003.md)",
            "TASK-003 approved by Alice (approvals/approved/TASK-003.md)",
            "TASK-003 ready → running (FAK-",
        ],
    );
    assert_lines(
        &log("4"),
        &[
            "TASK-004 needs approval (approvals/pending/TASK-004.md)",
            "TASK-004 rejected by Carol (approvals/rejected/TASK-004.md)",
            "TASK-004 ready → cancelled (approval rejected: not now)",
        ],
    );
    let json = root.taskq(&["--json", "log", "3"]).ok().json();
    let by_alice = json
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["author"] == "Alice")
        .expect("Alice's commit");
    assert_eq!(by_alice["subject"], "ship it");
    assert_eq!(
        by_alice["lines"],
        serde_json::json!(["TASK-003 approved by Alice (approvals/approved/TASK-003.md)"])
    );
}

/// Each of `wanted` starts a line of `log` (after the date), in this order.
#[track_caller]
fn assert_lines(log: &str, wanted: &[&str]) {
    let mut lines = log.lines().map(|l| l.get(18..).unwrap_or(""));
    for w in wanted {
        assert!(
            lines.any(|l| l.starts_with(w)),
            "no `{w}` (in this order) in:\n{log}"
        );
    }
}
