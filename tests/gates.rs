//! Human gates and safety rails through the binary: approvals moved with
//! plain `mv`, rejection, the tester gate, the daily cost cap (with an
//! injected clock), the model whitelist, hooks, and `taskq why`.

use std::time::{Duration, Instant};

use crate::util::{wait_for, Run, TestRoot, LONG};

/// `taskq run --until-idle` with the clock at `now` and `env`.
fn until_idle_at(root: &TestRoot, now: &str, env: &[(&str, &str)]) -> Run {
    root.run_until_idle(&[&[("TASKQ_NOW", now)], env].concat())
}

/// A task that needs approval waits with a pending file; moving it with
/// plain `mv` starts the agent at once.
#[test]
fn an_approval_moved_by_mv_starts_the_agent_within_a_second() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "fake",
        "prefix: FAK\nmodel: m\ntags: [x]\nmax_concurrent: 1",
    );
    root.write_task("a", "id: TASK-001\ntags: [x]\napproval: required", "Do it.");
    let daemon = root.daemon(&[], &[]);
    let pending = root.path().join("approvals/pending/TASK-001.md");
    wait_for("the pending approval file", LONG, || pending.is_file());
    let text = std::fs::read_to_string(&pending).unwrap();
    assert!(
        text.starts_with("---\ntask: TASK-001\nrole: fake\nmodel: m\nrequested: "),
        "{text}"
    );
    assert!(
        text.contains("> Do it."),
        "the body says what the agent will be asked: {text}"
    );
    let list = root.taskq(&["list"]).ok();
    assert!(
        list.stdout
            .contains("(waits for approval: approvals/pending/TASK-001.md)"),
        "{}",
        list.stdout
    );
    let status = root.taskq(&["status"]).ok();
    assert!(
        status
            .stdout
            .contains("waiting for approval: TASK-001 (approvals/pending/TASK-001.md)"),
        "{}",
        status.stdout
    );
    let why = root.taskq(&["why", "TASK-001"]).ok();
    assert!(
        why.stdout
            .contains("waiting for approval: approvals/pending/TASK-001.md"),
        "{}",
        why.stdout
    );
    let list = root.taskq(&["--json", "run", "--dry-run"]).ok().json();
    assert!(list["plan"][0]["why"]
        .as_str()
        .unwrap()
        .contains("approvals/pending/TASK-001.md"));
    assert!(root.agents().is_empty(), "nothing runs before approval");
    // A person approves with mv.
    let approved = root.path().join("approvals/approved/TASK-001.md");
    std::fs::rename(&pending, &approved).unwrap();
    let moved = Instant::now();
    wait_for("the agent to start", LONG, || !root.agents().is_empty());
    assert!(
        moved.elapsed() < Duration::from_secs(1),
        "started {:?} after the mv",
        moved.elapsed()
    );
    wait_for("the task to be done", LONG, || {
        root.show("TASK-001")["status"] == "done"
    });
    assert!(approved.is_file(), "approval files are never deleted");
    daemon.wait_after_term();
}

/// Rejecting (with taskq reject, or by mv to rejected/) cancels the task
/// with the reason; nothing runs.
#[test]
fn rejection_cancels_the_task_with_the_reason() {
    let root = TestRoot::new();
    root.factory("approval_tags: [deploy]\n");
    root.role(
        "fake",
        "prefix: FAK\nmodel: m\ntags: [x, deploy]\nmax_concurrent: 1",
    );
    root.write_task("a", "id: TASK-001\ntags: [deploy]", "Do it.");
    root.write_task("b", "id: TASK-002\ntags: [deploy]", "Do it.");
    let run = root.run_until_idle(&[]);
    assert!(
        run.stderr.contains("TASK-001 waits for approval"),
        "{}",
        run.stderr
    );
    root.taskq(&["reject", "TASK-001", "--reason", "not on a Friday"])
        .ok();
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "cancelled");
    assert_eq!(t["reason"], "approval rejected: not on a Friday");
    let file = root.read("approvals/rejected/TASK-001.md");
    assert!(file.contains("reason: not on a Friday"), "{file}");
    // By hand: the factory cancels it on its next look.
    std::fs::rename(
        root.path().join("approvals/pending/TASK-002.md"),
        root.path().join("approvals/rejected/TASK-002.md"),
    )
    .unwrap();
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(root.show("TASK-002")["status"], "cancelled");
    assert!(root.agents().is_empty());
    root.taskq(&["approve", "TASK-001"]).code(3);
}

fn review_root(tester_command: &str, extra_config: &str) -> TestRoot {
    let root = TestRoot::new();
    root.factory(extra_config);
    root.role(
        "builder",
        "prefix: BLD\nmodel: m\ntags: [build]\nmax_concurrent: 1\nreview: tester",
    );
    root.write(
        "agents/templates/tester.md",
        format!("---\nprefix: TST\nagent: command\ncommand: {tester_command:?}\nmax_concurrent: 1\nenv: [PATH, HOME]\n---\nTest it.\n"),
    );
    root.write_task("a", "id: TASK-001\ntags: [build]", "Do it.");
    root
}

#[test]
fn tester_gate_pass() {
    let root = review_root("echo looks good", "");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}");
    let file = root.read("tasks/done/a.md");
    assert!(file.contains("tested_by: TST-002"), "{file}");
    // `show` reports the review fields as written in the file.
    assert_eq!(t["tested_by"], "TST-002", "{t}");
    assert_eq!(t["builder"], "BLD-001", "{t}");
    assert_eq!(t["review_rounds"], 0, "{t}");
    let text = root.taskq(&["show", "TASK-001"]).ok().stdout;
    assert!(text.contains("tested by:   TST-002"), "{text}");
    let reg = root.registry();
    assert_eq!(reg["agents"]["BLD-001"]["test_status"], "passed");
    assert_eq!(reg["agents"]["BLD-001"]["tested_by"], "TST-002");
    assert_eq!(reg["agents"]["TST-002"]["parent"], "BLD-001");
    // The tester ran in the builder's workspace.
    assert_eq!(
        reg["agents"]["TST-002"]["workspace"],
        "agents/workspaces/BLD-001"
    );
}

#[test]
fn tester_gate_fail_then_pass() {
    let root = review_root(
        "if [ -f \"$TASKQ_ROOT/.failed-once\" ]; then echo fine now; else touch \"$TASKQ_ROOT/.failed-once\"; echo 'the login test fails'; exit 1; fi",
        "",
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}\n{}", run.stderr);
    let file = root.read("tasks/done/a.md");
    assert!(file.contains("review_rounds: 1"), "{file}");
    assert!(
        file.contains("\n## Review (round 1, TST-002)\n\nthe login test fails"),
        "{file}"
    );
    assert!(file.contains("tested_by: TST-004"), "{file}");
    assert_eq!(t["review_rounds"], 1, "{t}");
    assert_eq!(t["tested_by"], "TST-004", "{t}");
    let agents: Vec<String> = root
        .agents()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        agents.len(),
        4,
        "builder, tester, builder, tester: {agents:?}"
    );
}

#[test]
fn tester_gate_fail_past_the_limit() {
    let root = review_root("echo still broken; exit 1", "max_review_rounds: 1\n");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["reason"], "failed review 2 times (max_review_rounds 1)");
    let file = root.read("tasks/todo/a.md");
    assert_eq!(file.matches("## Review (round").count(), 2, "{file}");
}

/// A model agent's verdict comes from its final text.
#[test]
fn tester_gate_reads_the_verdict_line_of_a_model_agent() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "builder",
        "prefix: BLD\nmodel: m\ntags: [build]\nmax_concurrent: 1\nreview: tester",
    );
    root.role("tester", "prefix: TST\nmodel: m\nmax_concurrent: 1");
    root.write_task("a", "id: TASK-001\ntags: [build]", "Do it.");
    let run = root.run_until_idle(&[("FAKE_AGENT_RESULT", "Checked.\nVERDICT: PASS")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(root.show("TASK-001")["status"], "done");
    let prompt = root.read("agents/logs/TST-002.prompt.md");
    assert!(
        prompt.contains("# The builder's result (BLD-001)") && prompt.contains("VERDICT: PASS"),
        "{prompt}"
    );
}

/// Once today's spend reaches the cap nothing new starts; `status` says
/// why and when it resumes; the next day it resumes.
#[test]
fn the_cost_cap_stops_new_spawns_and_resumes_next_day() {
    let root = TestRoot::new();
    root.factory("daily_cost_cap_usd: 0.02\n");
    root.role(
        "fake",
        "prefix: FAK\nmodel: m\ntags: [x]\nmax_concurrent: 1",
    );
    for n in 1..=4 {
        root.write_task(
            &format!("t{n}"),
            &format!("id: TASK-00{n}\ntags: [x]"),
            "Do it.",
        );
    }
    let env = [("FAKE_AGENT_COST", "0.01")];
    let run = until_idle_at(&root, "2026-03-01T10:00:00Z", &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("paused: daily cost cap reached ($0.02 of $0.02"),
        "{}",
        run.stderr
    );
    let done = |root: &TestRoot| {
        (1..=4)
            .filter(|n| root.show(&format!("TASK-00{n}"))["status"] == "done")
            .count()
    };
    assert_eq!(done(&root), 2);
    let status = root.taskq_at("2026-03-01T11:00:00Z", &["status"]);
    assert!(
        status
            .stdout
            .contains("paused: daily cost cap reached ($0.02 of $0.02)"),
        "{}",
        status.stdout
    );
    let plan = root.taskq_at("2026-03-01T11:00:00Z", &["run", "--dry-run"]);
    assert!(
        plan.stdout.contains("daily cost cap: $0.02"),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("resumes at local midnight"),
        "{}",
        plan.stdout
    );
    let run = until_idle_at(&root, "2026-03-02T09:00:00Z", &env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(done(&root), 4);
}

/// A role naming a model outside the whitelist: the task fails with the
/// reason; the model is never swapped.
#[test]
fn a_model_outside_the_whitelist_is_refused() {
    let root = TestRoot::new();
    root.factory("model_whitelist: [good-model]\n");
    root.role("fake", "prefix: FAK\nmodel: bad-model\nfallback_models: [good-model]\ntags: [x]\nmax_concurrent: 1");
    root.write_task("a", "id: TASK-001\ntags: [x]", "Do it.");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "failed");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("model `bad-model` is not in model_whitelist"),
        "{t}"
    );
    assert!(root.agents().is_empty(), "nothing ran");
}

/// Hooks get the event's JSON on stdin and never block the factory, even
/// when they fail.
#[test]
fn hooks_run_with_the_event_json() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "fake",
        "prefix: FAK\nmodel: m\ntags: [x]\nmax_concurrent: 1",
    );
    root.write_task("a", "id: TASK-001\ntags: [x]", "Do it.");
    let out = root.path().join("events.jsonl");
    root.write(
        "agents/hooks/on-done",
        format!(
            "#!/bin/sh\ncat >> {}\necho >> {}\n",
            out.display(),
            out.display()
        ),
    );
    root.write("agents/hooks/on-spawn", "#!/bin/sh\nexit 3\n");
    for h in ["on-done", "on-spawn"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.path().join("agents/hooks").join(h),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_for("the on-done hook", LONG, || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.ends_with('\n'))
    });
    let event: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert_eq!(event["event"], "on-done");
    assert_eq!(event["task"], "TASK-001");
    assert_eq!(event["agent"], "FAK-001");
    assert_eq!(event["status"], "done");
}

/// An agent gates one action of its own: request, a person approves, the
/// wait returns 0; a rejected one returns 1; a timeout 3.
#[test]
fn an_agent_requests_and_waits_for_approval() {
    let root = TestRoot::new();
    root.factory("");
    // `sandbox: off`: `approval request` writes approvals/pending/ itself,
    // which the sandbox refuses until agents' writing commands go through
    // the factory (issue 14, item 2).
    root.write(
        "agents/templates/poster.md",
        "---\nprefix: PST\nagent: command\ncommand: 'f=$(taskq approval request \"Post the release note\") && taskq approval wait \"$f\" --timeout 20s && echo posted'\ntags: [post]\nmax_concurrent: 1\nenv: [PATH, HOME]\nsandbox: off\n---\n",
    );
    root.write_task("a", "id: TASK-001\ntags: [post]", "Do it.");
    let daemon = root.daemon(&[], &[]);
    let pending = root.path().join("approvals/pending/TASK-001-1.md");
    wait_for("the agent's request", LONG, || pending.is_file());
    let text = std::fs::read_to_string(&pending).unwrap();
    assert!(
        text.contains("task: TASK-001\nagent: PST-001\n") && text.contains("Post the release note"),
        "{text}"
    );
    root.taskq(&["approve", "TASK-001-1"]).ok();
    wait_for("the task to be done", LONG, || {
        root.show("TASK-001")["status"] == "done"
    });
    assert_eq!(root.show("TASK-001")["result"], "posted");
    daemon.wait_after_term();
    // Rejected and timed-out waits, from a shell.
    let f = root
        .taskq(&["approval", "request", "--task", "TASK-001", "Delete prod"])
        .ok()
        .stdout;
    let f = f.trim();
    root.taskq(&["reject", f, "--reason", "no"]).ok();
    root.taskq(&["approval", "wait", f]).code(1);
    let g = root
        .taskq(&["approval", "request", "--task", "TASK-001", "Maybe"])
        .ok()
        .stdout;
    root.taskq(&["approval", "wait", g.trim(), "--timeout", "300ms"])
        .code(3);
}

#[test]
fn why_explains_waiting_tasks() {
    let root = TestRoot::new();
    let a = root.add(&["A"]);
    let b = root.add(&["B", "--deps", &a]);
    root.taskq(&["hold", &a]).ok();
    let run = root.taskq(&["why", &b]).ok();
    assert_eq!(run.stdout, format!("{b}: waits for {a} (hold)\n"));
    let run = root.taskq(&["why", &a]).ok();
    assert!(
        run.stdout
            .contains("on hold; `taskq release TASK-001` returns it to ready"),
        "{}",
        run.stdout
    );
    let json = root.taskq(&["--json", "why", &b]).ok().json();
    assert_eq!(json["state"], "blocked");
    assert_eq!(json["blocked_by"], serde_json::json!([a]));
}
