//! Notifications (issue 17) through the binary: each `notify:` command
//! receives each event once (not again on the next heartbeat, nor after a
//! restart); stuck agents are flagged in `status` and notified once per
//! stall; an unknown event is an error at its line.

use std::time::Duration;

use serde_json::Value;

use crate::util::{wait_for, TestRoot, LONG};

/// The JSON lines a notification command appended to `rel`.
fn notes(root: &TestRoot, rel: &str) -> Vec<Value> {
    std::fs::read_to_string(root.path().join(rel))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{rel}: {l}: {e}")))
        .collect()
}

/// `(event, task)` of each note, sorted.
fn events(notes: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = notes
        .iter()
        .map(|n| {
            (
                n["event"].as_str().unwrap().to_string(),
                n["task"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// `TestRoot::factory` with `extra` (which may set its own heartbeat).
fn factory(root: &TestRoot, extra: &str) {
    root.factory("");
    let config = root
        .read("agents/factory/config.yaml")
        .replace("heartbeat: 2s\n", "");
    root.write("agents/factory/config.yaml", format!("{config}{extra}"));
}

#[test]
fn each_command_receives_each_event_once_across_heartbeats_and_restarts() {
    let root = TestRoot::new();
    factory(
        &root,
        "heartbeat: 200ms\napproval_tags: [deploy]\nnotify:\n  - on: [approval_pending, failed, blocked, stuck, idle]\n    command: cat >> all.jsonl\n  - on: [failed]\n    command: cat >> failed.jsonl\n  - on: [idle]\n    command: exit 7\n",
    );
    root.shell_role(3);
    root.write_task(
        "a",
        "id: TASK-001\ntags: [job]\nretries: 0",
        "```sh\necho no; exit 3\n```",
    );
    root.write_task("b", "id: TASK-002\ntags: [job, deploy]", "```sh\ntrue\n```");
    root.write_task(
        "c",
        "id: TASK-003\ntags: [job]\ndependencies: [TASK-999]",
        "```sh\ntrue\n```",
    );
    root.write_task("d", "id: TASK-004\ntags: [job]", "```sh\nsleep 0.5\n```");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 1, "TASK-003 can never run\n{}", run.stderr);
    let all = notes(&root, "all.jsonl");
    assert_eq!(
        events(&all),
        [
            ("approval_pending".into(), "TASK-002".into()),
            ("blocked".into(), "TASK-003".into()),
            ("failed".into(), "TASK-001".into()),
            ("idle".into(), String::new()),
        ],
        "{all:#?}"
    );
    for n in &all {
        assert!(n["time"].as_str().is_some_and(|t| t.len() >= 20), "{n}");
        assert!(n["message"].as_str().is_some_and(|m| !m.is_empty()), "{n}");
    }
    let blocked = all.iter().find(|n| n["event"] == "blocked").unwrap();
    assert!(
        blocked["reason"].as_str().unwrap().contains("TASK-999"),
        "{blocked}"
    );
    let pending = all
        .iter()
        .find(|n| n["event"] == "approval_pending")
        .unwrap();
    assert_eq!(
        pending["file"], "approvals/pending/TASK-002.md",
        "{pending}"
    );
    assert_eq!(
        events(&notes(&root, "failed.jsonl")),
        [("failed".into(), "TASK-001".into())]
    );
    // A failing command is logged, and stops nothing.
    let log = root.read("agents/logs/notify.log");
    assert!(
        log.contains("notify[2] idle: failed (exit status: 7)"),
        "{log}"
    );

    // A restart: the same standing conditions are not told again.
    let daemon = root.daemon(&[], &[]);
    root.wait_factory_started();
    // A few heartbeats.
    std::thread::sleep(Duration::from_secs(1));
    // A new pending request (an agent's) is told, once.
    root.write(
        "approvals/pending/TASK-004-1.md",
        "---\ntask: TASK-004\nagent: JOB-009\nrequested: 2026-01-01T00:00:00Z\n---\nmay I?\n",
    );
    wait_for("the new request's notification", LONG, || {
        notes(&root, "all.jsonl").len() == 5
    });
    std::thread::sleep(Duration::from_secs(1));
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let all = notes(&root, "all.jsonl");
    assert_eq!(all.len(), 5, "{all:#?}");
    assert_eq!(all[4]["event"], "approval_pending");
    assert_eq!(all[4]["agent"], "JOB-009");
    assert_eq!(all[4]["request"], "TASK-004-1");
    assert_eq!(notes(&root, "failed.jsonl").len(), 1);
}

#[test]
fn budget_and_cap_reached_fire_once_a_day() {
    let root = TestRoot::new();
    root.factory(
        "daily_cost_cap_usd: 0.03\nbudget_warning: 0.5\nnotify:\n  - on: [budget, cap_reached]\n    command: cat >> money.jsonl\n",
    );
    root.role(
        "fake",
        "prefix: FAK\nmodel: m\ntags: [x]\nmax_concurrent: 1",
    );
    for n in 1..=5 {
        root.write_task(
            &format!("t{n}"),
            &format!("id: TASK-00{n}\ntags: [x]"),
            "Do it.",
        );
    }
    let env = [
        ("FAKE_AGENT_COST", "0.01"),
        ("TASKQ_NOW", "2026-03-01T10:00:00Z"),
    ];
    for _ in 0..2 {
        let run = root.run_until_idle(&env);
        assert_eq!(run.code, 0, "{}", run.stderr);
    }
    let money = notes(&root, "money.jsonl");
    let names: Vec<&str> = money.iter().map(|n| n["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["budget", "cap_reached"], "{money:#?}");
    assert_eq!(money[0]["cap_usd"], 0.03);
    assert!(money[0]["spent_today_usd"].as_f64().unwrap() >= 0.015);
    assert!(money[1]["spent_today_usd"].as_f64().unwrap() >= 0.03);
}

#[test]
fn a_sleeping_agent_is_stuck_once_per_stall_and_shown_in_status() {
    let root = TestRoot::new();
    factory(
        &root,
        "heartbeat: 100ms\nstuck_after: 1s\nnotify:\n  - on: [stuck]\n    command: cat >> stuck.jsonl\n",
    );
    root.shell_role(1);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    let fifo = root.path().join("scratch/go");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Stalls (blocked on a FIFO: no CPU, no output), moves (a line of
    // output) when told to, stalls again.
    root.write_task(
        "a",
        "id: TASK-001\ntags: [job]",
        "```sh\nread line < scratch/go\necho moved\nsleep 60\n```",
    );
    let daemon = root.daemon(&[], &[]);
    wait_for("the stuck notification", LONG, || {
        !notes(&root, "stuck.jsonl").is_empty()
    });
    let status = root.taskq(&["status"]).ok();
    assert!(
        status.stdout.contains("STUCK (no output or CPU for"),
        "{}",
        status.stdout
    );
    let json: Value = serde_json::from_str(&root.taskq(&["--json", "status"]).ok().stdout).unwrap();
    assert_eq!(json["stuck"][0]["agent"], "JOB-001", "{json}");
    assert_eq!(json["stuck"][0]["task"], "TASK-001", "{json}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(notes(&root, "stuck.jsonl").len(), 1, "once per stall");
    // Progress, then a new stall: told again.
    std::fs::write(&fifo, "go\n").unwrap();
    wait_for("the second stall", LONG, || {
        notes(&root, "stuck.jsonl").len() == 2
    });
    let n = &notes(&root, "stuck.jsonl")[1];
    assert_eq!(n["agent"], "JOB-001");
    assert_eq!(n["role"], "job");
    assert!(n["message"].as_str().unwrap().contains("is stuck"), "{n}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(notes(&root, "stuck.jsonl").len(), 2);
    let run = daemon.wait_after_term();
    assert!(run.stderr.contains("is moving again"), "{}", run.stderr);
}

#[test]
fn check_names_an_unknown_event_at_its_line() {
    let root = TestRoot::new();
    root.write(
        "agents/factory/config.yaml",
        "max_concurrent: 2\nnotify:\n  - on: [failed, aproval_pending]\n    command: cat\n",
    );
    let run = root.taskq(&["check"]).code(1);
    assert!(
        run.stdout.contains("agents/factory/config.yaml:3:")
            && run.stdout.contains("unknown variant `aproval_pending`"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
}
