//! The surgical-edit guarantee, byte for byte: taskq changes only the lines
//! of the keys it changes; comments, order, quoting, blank lines, unknown
//! fields and the body stay exactly as they were.

use crate::util::TestRoot;

const ODD: &str = r#"---
# Task header: hand-written, odd on purpose
id:   TASK-042      # the id
title: 'It''s: a "title"'

status:    ready   # ready until claimed
tags:
  - build
  -   backend
dependencies: []
priority: "high"
x-owner: { team: core, on_call: [ana, bo] }
notes: |
  multi
  line
---
Body with --- inside
---
and trailing spaces   

"#;

#[test]
fn claim_and_done_change_only_their_lines() {
    let root = TestRoot::new();
    root.write("tasks/todo/odd.md", ODD);
    root.taskq_at(
        "2026-03-01T10:00:00Z",
        &["claim", "TASK-042", "--agent", "BLD-001", "--lease", "1h"],
    )
    .ok();
    let expected_claimed = ODD
        .replace("status:    ready   # ready", "status: running   # ready")
        .replace(
            "  line\n---\n",
            "  line\nassigned: BLD-001\nstarted: 2026-03-01T10:00:00Z\nlease_expires: 2026-03-01T11:00:00Z\n---\n",
        );
    assert_eq!(root.read("tasks/todo/odd.md"), expected_claimed);

    root.taskq_at(
        "2026-03-01T10:30:00Z",
        &["done", "TASK-042", "--result", "shipped: v1"],
    )
    .ok();
    assert!(
        !root.path().join("tasks/todo/odd.md").exists(),
        "moved out of todo/"
    );
    let expected_done = expected_claimed
        .replace("status: running   # ready", "status: done   # ready")
        .replace("lease_expires: 2026-03-01T11:00:00Z\n", "")
        .replace(
            "---\nBody",
            "completed: 2026-03-01T10:30:00Z\nresult: \"shipped: v1\"\n---\nBody",
        );
    assert_eq!(root.read("tasks/done/odd.md"), expected_done);
    // And it still parses to what we wrote.
    let show = root.show("TASK-042");
    assert_eq!(show["title"], "It's: a \"title\"");
    assert_eq!(show["tags"], serde_json::json!(["build", "backend"]));
    assert_eq!(show["result"], "shipped: v1");
    assert_eq!(show["priority"], "high");
}

#[test]
fn adoption_keeps_the_body_byte_for_byte_with_crlf_and_bom() {
    let root = TestRoot::new();
    let body = b"\xEF\xBB\xBF# Fix the login bug\r\n\r\nSteps:\r\n- open   \r\n\tindented\r\n";
    root.write("tasks/todo/login.md", body);
    root.write(
        "tasks/todo/partial.md",
        "---\n# has a comment, no id\npriority: low\n---\nBody\n",
    );
    let run = root.taskq_at("2026-03-01T10:00:00Z", &["adopt"]).ok();
    assert!(
        run.stderr
            .contains("TASK-001: new → ready (adopted login.md)"),
        "{}",
        run.stderr
    );
    let mut expected = b"\xEF\xBB\xBF---\r\nid: TASK-001\r\nstatus: ready\r\ncreated: 2026-03-01T10:00:00Z\r\n---\r\n".to_vec();
    expected.extend_from_slice(&body[3..]);
    assert_eq!(root.read_bytes("tasks/todo/login.md"), expected);
    assert_eq!(
        root.read("tasks/todo/partial.md"),
        "---\n# has a comment, no id\npriority: low\nid: TASK-002\nstatus: ready\ncreated: 2026-03-01T10:00:00Z\n---\nBody\n"
    );
    // Title falls back to the heading.
    let show = root.show("TASK-001");
    assert_eq!(show["title"], "Fix the login bug");
}

#[test]
fn read_commands_never_write() {
    let root = TestRoot::new();
    root.write("tasks/todo/a.md", "no frontmatter at all\n");
    root.write("tasks/todo/b.md", ODD);
    let before_a = root.read_bytes("tasks/todo/a.md");
    let before_b = root.read_bytes("tasks/todo/b.md");
    for args in [
        &["list"][..],
        &["--json", "list"],
        &["next"],
        &["show", "TASK-042"],
        &["deps", "TASK-042"],
        &["check"],
        &["graph"],
    ] {
        let run = root.taskq(args);
        assert!(run.code == 0 || run.code == 1, "{args:?}: {}", run.stderr);
    }
    assert_eq!(root.read_bytes("tasks/todo/a.md"), before_a);
    assert_eq!(root.read_bytes("tasks/todo/b.md"), before_b);
    let run = root.taskq(&["list"]).ok();
    assert!(
        run.stdout.contains("a "),
        "listed under its stem: {}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("taskq: warning: tasks/todo/a.md: no `id` yet"),
        "{}",
        run.stderr
    );
}

#[test]
fn every_transition_is_a_minimal_diff() {
    let root = TestRoot::new();
    let id = root.add(&[
        "Write docs",
        "--tags",
        "docs",
        "--priority",
        "low",
        "--body",
        "Text.",
    ]);
    let file = root.task_file(&id);
    let lines = |s: &str| s.lines().map(str::to_string).collect::<Vec<_>>();
    let mut prev = lines(&root.read(&file));
    for (args, changed) in [
        (vec!["hold", &id], vec!["status: hold"]),
        (vec!["release", &id], vec!["status: ready"]),
        (
            vec!["fail", &id, "--reason", "flaky"],
            vec!["status: failed", "reason: flaky"],
        ),
        (vec!["cancel", &id], vec!["status: cancelled"]),
    ] {
        root.taskq(&args).ok();
        let now = lines(&root.read(&file));
        let added: Vec<&String> = now.iter().filter(|l| !prev.contains(l)).collect();
        let removed: Vec<&String> = prev.iter().filter(|l| !now.contains(l)).collect();
        assert_eq!(
            added,
            changed
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .iter()
                .collect::<Vec<_>>(),
            "{args:?}"
        );
        assert!(removed.len() <= 1, "{args:?} removed {removed:?}");
        prev = now;
    }
    // Done and cancelled are final.
    root.taskq(&["done", &id]).code(3);
    root.taskq(&["hold", &id]).code(3);
}
