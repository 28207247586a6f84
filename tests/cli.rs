//! The shell-facing CLI end to end: init, add, list, show, next, deps,
//! graph, check, root discovery, exit codes and JSON shapes.

use crate::util::{taskq_bin, Run, TestRoot};

#[test]
fn init_writes_the_layout_and_never_overwrites() {
    let root = TestRoot::empty();
    root.write(
        "agents/templates/builder.md",
        "---\nprefix: MINE\n---\nmine\n",
    );
    root.taskq(&["init", "."]).ok();
    for d in [
        "tasks/todo",
        "tasks/done",
        "approvals/pending",
        "approvals/approved",
        "agents/factory",
    ] {
        assert!(root.path().join(d).is_dir(), "{d}");
    }
    for f in [
        "agents/templates/research.md",
        "agents/templates/tester.md",
        "agents/templates/fixer.md",
        ".gitignore",
    ] {
        assert!(root.path().join(f).is_file(), "{f}");
    }
    assert_eq!(
        root.read("agents/templates/builder.md"),
        "---\nprefix: MINE\n---\nmine\n"
    );
    assert!(root.read(".gitignore").contains("/agents/workspaces/"));
    let again = root.taskq(&["init", "."]).ok();
    assert!(
        again.stderr.contains("already a taskq root"),
        "{}",
        again.stderr
    );
    // The embedded templates are the repository's own.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/agents/templates/tester.md"
    ))
    .unwrap();
    assert_eq!(root.read("agents/templates/tester.md"), shipped);
}

#[test]
fn add_prints_only_the_id_and_writes_the_file() {
    let root = TestRoot::new();
    let run = root.taskq(&["add", "First"]).ok();
    assert_eq!(run.stdout, "TASK-001\n");
    let mut child = root
        .cmd(&[
            "add",
            "JWT middleware",
            "--body",
            "-",
            "--tags",
            "build, backend",
            "--deps",
            "1",
            "--priority",
            "high",
            "--role",
            "builder",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Implement JWT.\n\n```sh\necho hi\n```\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "TASK-002\n");
    let file = root.task_file("TASK-002");
    assert_eq!(file, "tasks/todo/TASK-002-jwt-middleware.md");
    let text = root.read(&file);
    assert!(text.starts_with(
        "---\nid: TASK-002\ntitle: JWT middleware\nstatus: ready\npriority: high\ntags: [build, backend]\ndependencies: [TASK-001]\nrole: builder\ncreated: "
    ), "{text}");
    assert!(
        text.ends_with("---\nImplement JWT.\n\n```sh\necho hi\n```\n"),
        "{text}"
    );
    // Unknown dependencies are refused with exit 2, and no id is used up.
    let run = root.taskq(&["add", "Bad", "--deps", "TASK-404"]).code(2);
    assert!(
        run.stderr.contains("unknown dependency `TASK-404`"),
        "{}",
        run.stderr
    );
    root.taskq(&["add", "   "]).code(2);
    assert_eq!(root.add(&["Third"]), "TASK-003");
}

#[test]
fn next_orders_by_inherited_priority_then_unblocked_work_then_id() {
    let root = TestRoot::new();
    let low = root.add(&["Low but blocks critical", "--priority", "low"]);
    let high = root.add(&["High", "--priority", "high"]);
    let _crit = root.add(&["Critical", "--priority", "critical", "--deps", &low]);
    let m1 = root.add(&["Medium one"]);
    let m2 = root.add(&["Medium two"]);
    let _m3 = root.add(&["Needs m2", "--deps", &m2]);
    let run = root.taskq(&["list", "--ready"]).ok();
    let order: Vec<&str> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        order,
        [low.as_str(), high.as_str(), m2.as_str(), m1.as_str()]
    );
    assert_eq!(root.taskq(&["next"]).ok().stdout.trim(), low);
    let json = root.taskq(&["--json", "next"]).ok().json();
    assert_eq!(json["id"], low.as_str());
    assert_eq!(json["effective_priority"], "critical");
    assert_eq!(json["unblocks"], 1);
    // Filters.
    root.taskq(&["next", "--tag", "nope"]).code(1);
}

#[test]
fn next_role_routes_by_role_field_then_template_tags() {
    let root = TestRoot::new();
    let research = root.add(&[
        "Find things",
        "--tags",
        "research",
        "--priority",
        "critical",
    ]);
    let build = root.add(&["Build things", "--tags", "build"]);
    let explicit = root.add(&[
        "Explicit",
        "--role",
        "tester",
        "--tags",
        "build",
        "--priority",
        "high",
    ]);
    assert_eq!(
        root.taskq(&["next", "--role", "builder"])
            .ok()
            .stdout
            .trim(),
        build
    );
    assert_eq!(
        root.taskq(&["next", "--role", "research"])
            .ok()
            .stdout
            .trim(),
        research
    );
    assert_eq!(
        root.taskq(&["next", "--role", "tester"]).ok().stdout.trim(),
        explicit
    );
    root.taskq(&["next", "--role", "fixer"]).code(1);
}

#[test]
fn claim_loop_in_a_shell_script_works() {
    let root = TestRoot::new();
    for t in ["a", "b", "c"] {
        root.add(&[t]);
    }
    let script = format!(
        "while id=$({bin} next --claim me -q); do {bin} done \"$id\" --result ok -q; echo \"$id\"; done",
        bin = taskq_bin().display()
    );
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(root.path())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "TASK-001\nTASK-002\nTASK-003\n"
    );
    assert_eq!(
        std::fs::read_dir(root.path().join("tasks/done"))
            .unwrap()
            .count(),
        4
    ); // + README
}

#[test]
fn deps_prints_a_chain_a_tree_and_the_reverse() {
    let root = TestRoot::new();
    let a = root.add(&["Schema"]);
    let b = root.add(&["API", "--deps", &a]);
    let c = root.add(&["Auth", "--deps", &b]);
    root.taskq(&["claim", &a, "--agent", "x"]).ok();
    let run = root.taskq(&["deps", &c]).ok();
    assert_eq!(
        run.stdout,
        "TASK-003 [blocked] → TASK-002 [blocked] → TASK-001 [running]\n"
    );
    let d = root.add(&["UI", "--deps", &format!("{a},{c}")]);
    let run = root.taskq(&["deps", &d]).ok();
    assert_eq!(
        run.stdout,
        "TASK-004 [blocked]  UI\n\
         ├── TASK-001 [running]  Schema\n\
         └── TASK-003 [blocked]  Auth\n    \
             └── TASK-002 [blocked]  API\n        \
                 └── TASK-001 [running]  Schema  (shown above)\n"
    );
    let run = root.taskq(&["deps", &a, "--reverse"]).ok();
    assert!(
        run.stdout
            .starts_with("TASK-001 [running]  Schema\n├── TASK-002"),
        "{}",
        run.stdout
    );
    let json = root.taskq(&["--json", "deps", &c]).ok().json();
    assert_eq!(json["id"], "TASK-003");
    assert_eq!(json["children"][0]["children"][0]["status"], "running");
    // Missing and cyclic dependencies are shown as such.
    root.write(
        "tasks/todo/x.md",
        "---\nid: TASK-010\ndependencies: [TASK-011, TASK-099]\n---\n",
    );
    root.write(
        "tasks/todo/y.md",
        "---\nid: TASK-011\ndependencies: [TASK-010]\n---\n",
    );
    let run = root.taskq(&["deps", "TASK-010"]).ok();
    assert!(
        run.stdout.contains("TASK-010 [blocked]  [cycle]")
            || run.stdout.contains("TASK-010 [cycle]"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("TASK-099 [missing]"), "{}", run.stdout);
    root.taskq(&["deps", "TASK-404"]).code(2);
}

#[test]
fn check_reports_cycles_and_unknown_dependencies_compiler_style() {
    let root = TestRoot::new();
    root.write(
        "tasks/todo/a.md",
        "---\nid: TASK-001\ndependencies: [TASK-002]\n---\n",
    );
    root.write(
        "tasks/todo/b.md",
        "---\nid: TASK-002\ndependencies: [TASK-003]\n---\n",
    );
    root.write(
        "tasks/todo/c.md",
        "---\nid: TASK-003\ndependencies: [TASK-001, TASK-404]\n---\n",
    );
    root.write(
        "tasks/done/d.md",
        "---\nid: TASK-004\nstatus: running\n---\n",
    );
    let run = root.taskq(&["check"]).code(1);
    assert!(
        run.stdout.contains(
            "tasks/todo/a.md:3: dependency cycle: TASK-001 → TASK-002 → TASK-003 → TASK-001"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("tasks/todo/c.md:3: `TASK-003` depends on `TASK-404`, which does not exist"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("tasks/done/d.md: `TASK-004` is in done/ but its status is `running`"),
        "{}",
        run.stdout
    );
    let json = root.taskq(&["--json", "check"]).code(1).json();
    assert_eq!(json["ok"], false);
    assert_eq!(json["errors"], 3);
    std::fs::remove_file(root.path().join("tasks/todo/c.md")).unwrap();
    std::fs::remove_file(root.path().join("tasks/done/d.md")).unwrap();
    root.write("tasks/todo/c.md", "---\nid: TASK-003\n---\n");
    root.taskq(&["check"]).ok();
}

#[test]
fn root_is_found_from_subdirectories_env_and_flag() {
    let root = TestRoot::new();
    let id = root.add(&["Anything"]);
    std::fs::create_dir_all(root.path().join("src/deep")).unwrap();
    let run = Run::from(
        std::process::Command::new(taskq_bin())
            .arg("next")
            .current_dir(root.path().join("src/deep"))
            .env_remove("TASKQ_ROOT")
            .output()
            .unwrap(),
    );
    assert_eq!(run.stdout.trim(), id);
    let elsewhere = tempfile::tempdir().unwrap();
    let run = Run::from(
        std::process::Command::new(taskq_bin())
            .arg("next")
            .current_dir(elsewhere.path())
            .env("TASKQ_ROOT", root.path())
            .output()
            .unwrap(),
    );
    assert_eq!(run.stdout.trim(), id);
    let run = Run::from(
        std::process::Command::new(taskq_bin())
            .arg("next")
            .current_dir(elsewhere.path())
            .env_remove("TASKQ_ROOT")
            .output()
            .unwrap(),
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.starts_with("taskq: error: no taskq root found"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("hint: run `taskq init`"),
        "{}",
        run.stderr
    );
    let run = Run::from(
        std::process::Command::new(taskq_bin())
            .args(["--root", root.path().to_str().unwrap(), "next"])
            .current_dir(elsewhere.path())
            .output()
            .unwrap(),
    );
    assert_eq!(run.stdout.trim(), id);
}

#[test]
fn json_shapes_are_stable() {
    let root = TestRoot::new();
    let a = root.add(&["Alpha", "--tags", "x"]);
    root.add(&["Beta", "--deps", &a]);
    let list = root.taskq(&["list", "--json"]).ok().json();
    let keys: Vec<&str> = list[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "id",
        "title",
        "status",
        "state",
        "priority",
        "effective_priority",
        "tags",
        "dependencies",
        "blocked_by",
        "assigned",
        "role",
        "model",
        "attempts",
        "retries",
        "created",
        "started",
        "completed",
        "lease_expires",
        "retry_after",
        "result",
        "reason",
        "has_id",
        "path",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
    assert_eq!(list[1]["state"], "blocked");
    assert_eq!(list[1]["blocked_by"], serde_json::json!([a]));
    let show = root.taskq(&["show", &a, "--json"]).ok().json();
    assert_eq!(show["unblocks"], 1);
    assert_eq!(show["body"], "");
    // Every command gives a task's fields as its file has them, whatever
    // the command keeps of the queue while it works (`next` and `list` read
    // it lean): the same object from list, show and next.
    assert!(list[0]["created"].is_string(), "{}", list[0]);
    let next = root.taskq(&["next", "--json"]).ok().json();
    for k in ["title", "created", "tags", "path"] {
        assert_eq!(next[k], show[k], "{k}: next {next} vs show {show}");
        assert_eq!(list[0][k], show[k], "{k}: list {} vs show {show}", list[0]);
    }
    // A finished task too (list keeps those lean, then reads them again).
    root.taskq(&["done", &a, "--result", "built it"]).ok();
    let list = root.taskq(&["list", "--json"]).ok().json();
    let done = root.taskq(&["show", &a, "--json"]).ok().json();
    assert_eq!(list[0]["result"], "built it", "{}", list[0]);
    for k in ["title", "created", "completed", "tags", "assigned", "path"] {
        assert_eq!(list[0][k], done[k], "{k}: list {} vs show {done}", list[0]);
    }
    let text = root.taskq(&["list"]).ok().stdout;
    assert!(text.contains("Alpha  [x]"), "{text}");
}

#[test]
fn list_filters_and_survives_a_closed_pipe() {
    let root = TestRoot::new();
    for n in 0..300 {
        root.add(&[
            &format!("Task {n}"),
            "--tags",
            if n % 2 == 0 { "even" } else { "odd" },
        ]);
    }
    let run = root.taskq(&["list", "--tag", "odd"]).ok();
    assert_eq!(run.stdout.lines().count(), 150);
    root.taskq(&["list", "--status", "redy"]).code(2);
    assert_eq!(root.taskq(&["list", "--status", "blocked"]).ok().stdout, "");
    let script = format!("{} list | head -1", taskq_bin().display());
    let out = std::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", &script])
        .current_dir(root.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
}

#[test]
fn graph_renders_mermaid_and_dot() {
    let root = TestRoot::new();
    let a = root.add(&["Alpha \"quoted\""]);
    root.add(&["Beta", "--deps", &a]);
    let run = root.taskq(&["graph"]).ok();
    assert!(run.stdout.starts_with("flowchart LR\n"));
    assert!(
        run.stdout
            .contains("TASK_001[\"TASK-001: Alpha #quot;quoted#quot;\"]:::ready"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("TASK_001 --> TASK_002"));
    let run = root.taskq(&["graph", "--format", "dot"]).ok();
    assert!(run.stdout.starts_with("digraph taskq {"));
    assert!(run.stdout.contains("\"TASK-001\" -> \"TASK-002\";"));
}

#[test]
fn usage_errors_exit_2_without_a_backtrace() {
    let root = TestRoot::new();
    for args in [
        &["frobnicate"][..],
        &["next", "--lease", "5m"],
        &["show"],
        &["done", "TASK-9"],
        &["claim", "1", "--agent", "../x"],
    ] {
        let run = root.taskq(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
            "{}",
            run.stderr
        );
    }
    let run = root.taskq(&["completions", "bash"]).ok();
    assert!(run.stdout.contains("taskq"));
}

#[test]
fn ids_are_never_reused() {
    let root = TestRoot::new();
    let a = root.add(&["A"]);
    let b = root.add(&["B"]);
    std::fs::remove_file(root.path().join(root.task_file(&b))).unwrap();
    assert_eq!(a, "TASK-001");
    assert_eq!(root.add(&["C"]), "TASK-003");
    // Growing past 999.
    root.write("tasks/todo/big.md", "---\nid: TASK-999\n---\n");
    assert_eq!(root.add(&["D"]), "TASK-1000");
}

/// Over 30,000 tasks `list` keeps finished tasks lean and reads each again
/// as it prints: every field still comes out, `--tag` still finds finished
/// tasks, and the text lines show their tags and assignee.
#[test]
fn list_of_a_big_queue_prints_finished_tasks_in_full() {
    let root = TestRoot::empty();
    let done = root.path().join("tasks/done");
    let n = 30_001;
    for k in 1..=n {
        let tag = if k % 10_000 == 7 { "special" } else { "bulk" };
        std::fs::write(
            done.join(format!("TASK-{k:05}.md")),
            format!(
                "---\nid: TASK-{k:05}\ntitle: Job {k}\nstatus: done\ntags: [{tag}]\nassigned: BLD-{k:03}\ncreated: 2026-01-05T09:00:00Z\ncompleted: 2026-01-06T10:00:00Z\nresult: made {k}\n---\nBody {k}.\n"
            ),
        )
        .unwrap();
    }
    root.write(
        "tasks/todo/open.md",
        "---\nid: TASK-99999\ntags: [special]\n---\nStill open.\n",
    );
    let special = root
        .taskq(&["--json", "list", "--tag", "special"])
        .ok()
        .json();
    let ids: Vec<&str> = special
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["TASK-00007", "TASK-10007", "TASK-20007", "TASK-99999"]
    );
    let t = &special[1];
    assert_eq!(t["title"], "Job 10007", "{t}");
    assert_eq!(t["tags"], serde_json::json!(["special"]), "{t}");
    assert_eq!(t["assigned"], "BLD-10007", "{t}");
    assert_eq!(t["created"], "2026-01-05T09:00:00Z", "{t}");
    assert_eq!(t["completed"], "2026-01-06T10:00:00Z", "{t}");
    assert_eq!(t["result"], "made 10007", "{t}");
    let text = root.taskq(&["list", "--status", "done"]).ok().stdout;
    assert_eq!(text.lines().count(), n);
    let line = text.lines().find(|l| l.starts_with("TASK-20007 ")).unwrap();
    assert!(line.contains("Job 20007  [special]  @BLD-20007"), "{line}");
}
