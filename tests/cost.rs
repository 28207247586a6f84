//! Every dollar counted, through the binary: cost recorded on every exit
//! path (timeout, stop, SIGTERM of the factory, a crash), a cap reached
//! exactly, a same-step fan-out and an alias under the forecast, a task's
//! total across attempts, and models without a price.
//!
//! A shell script stands in for `claude -p` where the fake agent cannot:
//! like Claude Code, it prints its result, with what it spent, when taskq's
//! SIGTERM cuts it off.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::util::{fake_agent_bin, pid_alive, wait_for, TestRoot, LONG};

/// `claude -p` as a script; `MODE` (the role's `set_env`) says how it
/// behaves:
/// * `json`: prints `started`; on SIGTERM an error result costing $1.20;
///   when `$GO` exists, a success costing `$COST` (default 0.30).
/// * `quiet`: prints nothing and sleeps (SIGTERM ends it without output).
/// * `flaky`: the first run fails having spent $0.25, the next succeeds
///   for $0.15.
/// * `done`: a success costing `$COST` at once.
const CLAUDE: &str = r#"#!/bin/sh
result() { printf '{"type":"result","subtype":"%s","is_error":%s,"result":"%s","total_cost_usd":%s,"usage":{"input_tokens":9000,"output_tokens":300},"session_id":"s","permission_denials":[]}\n' "$1" "$2" "$3" "$4"; }
case "$MODE" in
quiet) exec sleep 600 ;;
done) result success false done "${COST:-0.30}"; exit 0 ;;
flaky)
  if [ -f "$MARK" ]; then result success false fixed 0.15; exit 0; fi
  : > "$MARK"; result success true "API Error: 500" 0.25; exit 1 ;;
esac
trap 'result error_during_execution true cut 1.2; exit 143' TERM
echo started
while [ ! -f "$GO" ]; do sleep 0.05; done
result success false built "${COST:-0.30}"
"#;

/// A root whose `claude` is the script above, with `extra` config.
fn root_with_script(extra: &str) -> TestRoot {
    let root = TestRoot::new();
    root.factory("");
    let script = root.write("scratch/claude.sh", CLAUDE);
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    root.write(
        "agents/factory/config.yaml",
        format!(
            "max_concurrent: 4\nretry_backoff: 0s\nstop_grace: 5s\nheartbeat: 1s\nadapters:\n  claude: {}\n  codex: {}\n{extra}",
            script.display(),
            fake_agent_bin().display()
        ),
    );
    root
}

/// A role running the script in `mode`.
fn script_role(root: &TestRoot, name: &str, prefix: &str, mode: &str, extra: &str) {
    root.write(
        &format!("agents/templates/{name}.md"),
        format!(
            "---\nprefix: {prefix}\nagent: claude\nmodel: m\ntags: [{name}]\nmax_concurrent: 3\nenv: [PATH, HOME, COST]\nset_env:\n  MODE: {mode}\n  GO: \"{{root}}/scratch/go\"\n  MARK: \"{{root}}/scratch/mark\"\n{extra}\n---\nYou are {name}.\n"
        ),
    );
}

fn agent_of(root: &TestRoot, task: &str) -> Value {
    root.agents()
        .into_iter()
        .filter(|a| a["task"] == task)
        .max_by_key(|a| a["id"].as_str().unwrap().to_string())
        .unwrap_or(Value::Null)
}

fn status_json(root: &TestRoot, now: Option<&str>) -> Value {
    let run = match now {
        Some(now) => root.taskq_at(now, &["status", "--json"]),
        None => root.taskq(&["status", "--json"]),
    };
    serde_json::from_str(&run.ok().stdout).unwrap()
}

/// Claude prints `total_cost_usd` after taskq's SIGTERM: a timeout, a
/// `taskq stop` and a SIGTERM of the factory each record it; an agent that
/// printed nothing is recorded as unknown, never as $0, and `status`
/// counts it on a line of its own.
#[test]
fn cost_is_recorded_after_a_timeout_a_stop_and_sigterm_of_the_factory() {
    let root = root_with_script("");
    script_role(&root, "slow", "SLW", "json", "timeout: 2s");
    script_role(&root, "long", "LNG", "json", "timeout: 10m");
    script_role(&root, "mute", "MUT", "quiet", "timeout: 2s");
    root.write_task("a", "id: TASK-001\ntags: [slow]", "x");
    root.write_task("b", "id: TASK-002\ntags: [long]", "x");
    root.write_task("c", "id: TASK-003\ntags: [long]", "x");
    root.write_task("d", "id: TASK-004\ntags: [mute]", "x");
    let daemon = root.daemon(&[], &[]);
    wait_for("both timeouts recorded", LONG, || {
        ["TASK-001", "TASK-004"]
            .iter()
            .all(|t| agent_of(&root, t)["status"] == "timeout")
    });
    wait_for("the long agents to start", LONG, || {
        ["TASK-002", "TASK-003"].iter().all(|t| {
            let a = agent_of(&root, t);
            a["status"] == "active"
                && std::fs::read_to_string(root.path().join(a["log"].as_str().unwrap_or("-")))
                    .is_ok_and(|l| l.contains("started"))
        })
    });
    let stopped = agent_of(&root, "TASK-002")["id"]
        .as_str()
        .unwrap()
        .to_string();
    // --cancel: the task does not start again before the shutdown.
    root.taskq(&["stop", "--cancel", &stopped]).ok();
    let agent = |id: &str| root.registry()["agents"][id].clone();
    wait_for("the stop recorded", LONG, || {
        agent(&stopped)["status"] == "stopped"
    });
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let timeout = agent_of(&root, "TASK-001");
    assert_eq!(timeout["cost_usd"], 1.2, "{timeout}");
    assert_eq!(timeout["tokens"]["input"], 9000, "{timeout}");
    assert_eq!(agent(&stopped)["cost_usd"], 1.2);
    let shutdown = agent_of(&root, "TASK-003");
    assert_eq!(shutdown["status"], "stopped", "{shutdown}");
    assert_eq!(shutdown["cost_usd"], 1.2, "{shutdown}");
    let mute = agent_of(&root, "TASK-004");
    assert_eq!(mute["cost_usd"], "unknown", "{mute}");
    let s = status_json(&root, None);
    assert_eq!(s["spend"]["today_usd"], 3.6, "{s}");
    assert_eq!(s["spend"]["unknown_today"], 1, "{s}");
    assert_eq!(s["spend"]["by_role"]["long"], 2.4, "{s}");
    let text = root.taskq(&["status"]).ok().stdout;
    assert!(text.contains("spend: today $3.60"), "{text}");
    assert!(text.contains("cost unknown: 1 agent today"), "{text}");
    let detail = root
        .taskq(&["status", mute["id"].as_str().unwrap()])
        .ok()
        .stdout;
    assert!(
        detail.contains("cost unknown (no cost in its output"),
        "{detail}"
    );
}

/// An agent that ends while no factory watches is recorded by the next
/// one with its cost and its own end time, not the restart's.
#[test]
fn an_agent_recovered_after_a_crash_keeps_its_cost_and_end_time() {
    let root = root_with_script("");
    script_role(&root, "long", "LNG", "json", "timeout: 10m");
    root.write_task("a", "id: TASK-001\ntags: [long]", "x");
    let daemon = root.daemon(&[], &[("COST", "0.42")]);
    wait_for("the agent to start", LONG, || {
        agent_of(&root, "TASK-001")["status"] == "active"
    });
    let pid = agent_of(&root, "TASK-001")["pid"].as_u64().unwrap() as u32;
    daemon.signal("KILL");
    let _ = daemon.wait(LONG);
    root.write("scratch/go", "");
    wait_for("the agent to end", LONG, || !pid_alive(pid));
    let ended_by = chrono::Utc::now();
    // The restart comes visibly later than the end.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("done TASK-001"), "{}", run.stderr);
    let a = agent_of(&root, "TASK-001");
    assert_eq!(a["status"], "completed", "{a}");
    assert_eq!(a["cost_usd"], 0.42, "{a}");
    let completed = crate::util::timestamp(&a, "completed");
    assert!(
        completed <= ended_by,
        "recorded at the restart ({completed}), not at its end (by {ended_by})"
    );
}

/// Ten agents at $0.10 against a $1.00 cap: exactly ten run, the factory
/// pauses, and `status --json` carries the cap and the paused state.
#[test]
fn a_cap_reached_exactly_pauses() {
    let root = TestRoot::new();
    root.factory("daily_cost_cap_usd: 1.00\n");
    root.role(
        "fake",
        "prefix: FAK\nmodel: m\ntags: [x]\nmax_concurrent: 2",
    );
    for n in 1..=12 {
        root.write_task(
            &format!("t{n}"),
            &format!("id: TASK-{n:03}\ntags: [x]"),
            "x",
        );
    }
    let now = "2026-03-01T10:00:00Z";
    let run = root.run_until_idle(&[("TASKQ_NOW", now), ("FAKE_AGENT_COST", "0.10")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("paused: daily cost cap reached ($1.00 of $1.00 spent today)"),
        "{}",
        run.stderr
    );
    let done = root
        .agents()
        .iter()
        .filter(|a| a["status"] == "completed")
        .count();
    assert_eq!(done, 10, "{}", run.stderr);
    let s = status_json(&root, Some(now));
    assert_eq!(s["cap"]["daily_usd"], 1.0, "{s}");
    assert_eq!(s["cap"]["paused"], true, "{s}");
    assert_eq!(s["cap"]["left_usd"], 0.0, "{s}");
    assert_eq!(s["cap"]["mode"], "stop_new", "{s}");
    assert_eq!(s["spend"]["today_usd"], 1.0, "{s}");
    assert_eq!(s["spend"]["by_day"]["2026-03-01"], 1.0, "{s}");
    assert_eq!(s["spend"]["by_task"]["TASK-001"], 0.1, "{s}");
    assert_eq!(s["spend"]["by_model"]["m"], 1.0, "{s}");
}

/// A $1.00 cap, runs of $0.40, three at a time: the forecast counts the
/// agents the same step starts, so two run ($0.80), not three ($1.20). The
/// forecast comes from the role's prior here, and from an alias's
/// resolved-model history in the second half.
#[test]
fn a_same_step_fan_out_and_an_alias_stop_before_the_cap() {
    for (extra, seed) in [("cost_prior_usd: 0.40", false), ("", true)] {
        let root = TestRoot::new();
        root.factory("daily_cost_cap_usd: 1.00\n");
        root.role(
            "fake",
            &format!("prefix: FAK\nmodel: sonnet\ntags: [x]\nmax_concurrent: 3\n{extra}"),
        );
        if seed {
            // Yesterday's runs, recorded under the resolved model name.
            root.write(
                "agents/factory/registry.json",
                r#"{"version":"1.0.0","agents":{
                  "FAK-001":{"id":"FAK-001","type":"fake","task":"TASK-099","status":"completed","model":"claude-sonnet-4-5-20250929","spawned":"2026-02-28T10:00:00Z","completed":"2026-02-28T10:01:00Z","cost_usd":0.4},
                  "FAK-002":{"id":"FAK-002","type":"fake","task":"TASK-098","status":"completed","model":"claude-sonnet-4-5-20250929","spawned":"2026-02-28T10:00:00Z","completed":"2026-02-28T10:01:00Z","cost_usd":0.4}
                },"nextId":3,"maxConcurrent":3,"updated":null}"#,
            );
        }
        for n in 1..=5 {
            root.write_task(&format!("t{n}"), &format!("id: TASK-00{n}\ntags: [x]"), "x");
        }
        let now = "2026-03-01T10:00:00Z";
        let plan = root.taskq_at(now, &["run", "--dry-run"]).ok().stdout;
        assert_eq!(plan.matches(" spawn ").count(), 2, "{plan}");
        assert!(plan.contains("forecast $0.40"), "{plan}");
        assert!(plan.contains("would pass the daily cost cap"), "{plan}");
        let run = root.run_until_idle(&[("TASKQ_NOW", now), ("FAKE_AGENT_COST", "0.40")]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        let s = status_json(&root, Some(now));
        assert_eq!(s["spend"]["today_usd"], 0.8, "{extra}: {s}\n{}", run.stderr);
    }
}

/// A task's `done` line and file carry its total across attempts; with
/// `cap_mode: stop_all` the agents at work stop when the cap is reached,
/// and what they spent still counts.
#[test]
fn a_tasks_total_across_attempts_and_stop_all_at_the_cap() {
    let root = root_with_script("");
    script_role(&root, "flaky", "FLK", "flaky", "retries: 1");
    root.write_task("a", "id: TASK-001\ntags: [flaky]", "x");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("done TASK-001 by FLK-002") && run.stderr.contains("($0.40)"),
        "{}",
        run.stderr
    );
    assert_eq!(root.show("TASK-001")["cost_usd"], 0.4);

    let root = root_with_script("daily_cost_cap_usd: 0.50\ncap_mode: stop_all\n");
    script_role(&root, "long", "LNG", "json", "timeout: 10m");
    script_role(&root, "quick", "QCK", "done", "");
    root.write_task("b", "id: TASK-002\ntags: [long]", "x");
    let daemon = root.daemon(&[], &[("COST", "0.60")]);
    wait_for("the long agent to start", LONG, || {
        let a = agent_of(&root, "TASK-002");
        a["status"] == "active"
            && std::fs::read_to_string(root.path().join(a["log"].as_str().unwrap_or("-")))
                .is_ok_and(|l| l.contains("started"))
    });
    root.write_task("c", "id: TASK-003\ntags: [quick]", "x");
    wait_for("the long agent stopped at the cap", LONG, || {
        agent_of(&root, "TASK-002")["status"] == "stopped"
    });
    let run = daemon.wait_after_term();
    assert!(
        run.stderr.contains("cap_mode stop_all: stopping LNG-001"),
        "{}",
        run.stderr
    );
    assert_eq!(agent_of(&root, "TASK-002")["cost_usd"], 1.2);
    assert_eq!(root.show("TASK-002")["status"], "ready");
    let s = status_json(&root, None);
    assert_eq!(s["spend"]["today_usd"], 1.8, "{s}");
    assert_eq!(s["cap"]["mode"], "stop_all", "{s}");
}

/// A Codex model with no price: a warning in `check` and `run --dry-run`;
/// under a cap `run` refuses it, unless `allow_unpriced_models: true`. Once
/// priced, its runs cost tokens × the price.
#[test]
fn an_unpriced_model_is_warned_about_and_refused_under_a_cap() {
    let root = root_with_script("daily_cost_cap_usd: 5\n");
    root.write(
        "agents/templates/coder.md",
        "---\nprefix: COD\nagent: codex\nmodel: gpt-x\ntags: [code]\nenv: [PATH, HOME]\n---\nYou code.\n",
    );
    root.write_task("a", "id: TASK-001\ntags: [code]", "x");
    let check = root.taskq(&["check"]);
    let check = format!("{}{}", check.stdout, check.stderr);
    assert!(
        check.contains("agents/templates/coder.md:4:")
            && check.contains(
                "model `gpt-x` has no price in the config's `prices` and codex reports no cost"
            ),
        "{check}"
    );
    let plan = root.taskq(&["run", "--dry-run"]);
    assert!(
        plan.stderr.contains("model `gpt-x` has no price"),
        "{}",
        plan.stderr
    );
    assert!(
        plan.stdout.contains("refused: `taskq run` will not start"),
        "{}",
        plan.stdout
    );
    let run = root.taskq(&["run", "--until-idle"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("the cap could not see this spend")
            && run.stderr.contains("hint: add the model to `prices`"),
        "{}",
        run.stderr
    );
    assert!(root.agents().is_empty());
    // Allowed: it runs, and its cost is unknown (never $0).
    let config = root.read("agents/factory/config.yaml");
    root.write(
        "agents/factory/config.yaml",
        format!("{config}allow_unpriced_models: true\n"),
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(agent_of(&root, "TASK-001")["cost_usd"], "unknown");
    // Priced: tokens × the price.
    root.write(
        "agents/factory/config.yaml",
        format!("{config}prices:\n  gpt-x: {{input: 1000000, output: 0}}\n"),
    );
    root.write_task("b", "id: TASK-002\ntags: [code]", "x");
    let check = root.taskq(&["check"]);
    assert!(!format!("{}{}", check.stdout, check.stderr).contains("gpt-x"));
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let a = agent_of(&root, "TASK-002");
    // At $1,000,000 per million input tokens, one dollar per input token.
    assert_eq!(a["cost_usd"].as_f64(), a["tokens"]["input"].as_f64(), "{a}");
}
