//! The end-to-end scenarios. Each test: a root, a mock, roles pointing
//! each CLI at it, tasks, `taskq run --until-idle` (bounded), assertions on
//! the workspace, the task, the registry and the log.

use std::time::Duration;

use serde_json::Value;

use super::mock::{self, Api, Mock, Reply, INPUT_TOKENS, OUTPUT_TOKENS};
use super::{claude_result, close, E2e, CODEX_PRICE, GEMINI_MODEL, GEMINI_PRICE};
use crate::util::{max_overlap, timestamp};

/// The success runs' mock waits this long before each answer, so that
/// taskq's memory sampling (every 500 ms) sees the CLI itself rather than
/// only its `sh` wrapper; the figures subtract it.
const PACE: Duration = Duration::from_millis(600);

/// Every run here must end well within this.
const LIMIT: Duration = Duration::from_secs(120);

/// Tokens of a two-request conversation (tool call, then text).
fn two_turns() -> Value {
    serde_json::json!({"input": 2 * INPUT_TOKENS, "output": 2 * OUTPUT_TOKENS})
}

/// Claude Code writes the file its `Write` tool call asks for; the task is
/// done; the registry holds exit 0, tokens, the session id taskq chose and
/// Claude's own `total_cost_usd`; the log holds its JSON result.
#[test]
fn claude_writes_a_file_and_reports_cost() {
    let Some(e) = E2e::new("claude_writes_a_file_and_reports_cost") else {
        return;
    };
    let mock =
        Mock::write_then_text_paced("hello.txt", "hello from claude", "Wrote hello.txt.", PACE);
    e.claude_role(
        "claude",
        "CLA",
        &mock.url(),
        "permission_mode: acceptEdits",
        &[],
    );
    e.task(
        "TASK-001",
        "claude",
        "Write hello",
        "Write hello.txt in your working directory.",
    );
    e.run(LIMIT);
    assert_eq!(
        e.workspace_file("CLA-001", "hello.txt").as_deref(),
        Some("hello from claude")
    );
    let t = e.root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}");
    assert_eq!(t["result"], "Wrote hello.txt.");
    let a = e.agent("CLA-001");
    assert_eq!(a["status"], "completed", "{a}");
    assert_eq!(a["exit_code"], 0);
    assert_eq!(a["tokens"], two_turns(), "{a}");
    assert_eq!(a["num_turns"], 2, "{a}");
    // The session id taskq chose (--session-id) is the one Claude used.
    let session = a["session_id"].as_str().unwrap();
    assert_eq!(session.len(), 36, "{a}");
    let posts = mock.model_requests();
    assert_eq!(posts.len(), 2, "tool call, then the answer");
    assert!(posts.iter().all(|r| r.api() == Api::Anthropic));
    assert!(
        posts[0].path.starts_with("/v1/messages"),
        "{}",
        posts[0].path
    );
    assert_eq!(posts[0].claude_session(), Some(session));
    assert_eq!(
        posts[1].tool_results(),
        1,
        "the second request carries the tool result"
    );
    // Claude's own cost, as its result reports it.
    let log = e.log("CLA-001");
    let result = claude_result(&log);
    let cost = a["cost_usd"].as_f64().expect("cost recorded");
    assert!(cost > 0.0, "{a}");
    assert!(
        close(cost, result["total_cost_usd"].as_f64().unwrap()),
        "{a}\n{result}"
    );
    assert_eq!(result["session_id"], session);
    e.figures("claude", &mock, &a, 2 * PACE);
    let rss = a["max_rss_kb"].as_u64().unwrap_or(0);
    assert!(rss > 50_000, "the CLI's memory is recorded: {a}");
}

/// Codex writes the file through the `exec_command` tool its request
/// offers (in its workspace-write sandbox). Its `error` item (a custom
/// provider's model has no metadata: "Model metadata for `gpt-5-mini` not
/// found") with `turn.completed` is a success; tokens come from
/// `turn.completed` and the cost from the config's price table.
#[test]
fn codex_writes_a_file_and_is_priced_from_tokens() {
    let Some(e) = E2e::new("codex_writes_a_file_and_is_priced_from_tokens") else {
        return;
    };
    let mock =
        Mock::write_then_text_paced("hello.txt", "hello from codex", "Wrote hello.txt.", PACE);
    e.codex_role("codex", "CDX", &mock.url(), "");
    e.task(
        "TASK-001",
        "codex",
        "Write hello",
        "Write hello.txt in your working directory.",
    );
    e.run(LIMIT);
    let posts = mock.model_requests();
    let tools: Vec<String> = posts[0].json()["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    assert!(
        tools.iter().any(|t| t == "exec_command"),
        "codex no longer offers exec_command; the mock must use one of {tools:?}"
    );
    assert_eq!(
        e.workspace_file("CDX-001", "hello.txt").as_deref(),
        Some("hello from codex\n"),
        "{}\n{}",
        e.log("CDX-001"),
        posts
            .last()
            .map(|p| p.json().to_string())
            .unwrap_or_default()
    );
    let t = e.root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}");
    assert_eq!(t["result"], "Wrote hello.txt.");
    let a = e.agent("CDX-001");
    assert_eq!(a["status"], "completed", "{a}");
    assert_eq!(a["exit_code"], 0);
    assert_eq!(a["tokens"], two_turns(), "{a}");
    let log = e.log("CDX-001");
    assert!(log.contains("\"type\":\"turn.completed\""), "{log}");
    assert!(
        log.contains("\"type\":\"error\""),
        "the non-fatal error item this test relies on is gone:\n{log}"
    );
    assert!(log.contains("\"type\":\"command_execution\""), "{log}");
    let thread = taskq::agent::json_lines(&log)
        .find(|v| v["type"] == "thread.started")
        .expect("thread.started");
    assert_eq!(a["session_id"], thread["thread_id"], "{a}");
    let want = (2.0 * INPUT_TOKENS as f64 * CODEX_PRICE.0
        + 2.0 * OUTPUT_TOKENS as f64 * CODEX_PRICE.1)
        / 1e6;
    assert!(
        close(a["cost_usd"].as_f64().expect("cost"), want),
        "{a} (want {want})"
    );
    e.figures("codex", &mock, &a, 2 * PACE);
    let rss = a["max_rss_kb"].as_u64().unwrap_or(0);
    assert!(rss > 50_000, "the CLI's memory is recorded: {a}");
}

/// Gemini CLI writes the file through `write_file`; tokens from its
/// `stats.models`, the cost from the price table.
#[test]
fn gemini_writes_a_file_and_is_priced_from_tokens() {
    let Some(e) = E2e::new("gemini_writes_a_file_and_is_priced_from_tokens") else {
        return;
    };
    let mock =
        Mock::write_then_text_paced("hello.txt", "hello from gemini", "Wrote hello.txt.", PACE);
    e.gemini_role("gemini", "GEM", &mock.url(), "");
    e.task(
        "TASK-001",
        "gemini",
        "Write hello",
        "Write hello.txt in your working directory.",
    );
    e.run(LIMIT);
    assert_eq!(
        e.workspace_file("GEM-001", "hello.txt").as_deref(),
        Some("hello from gemini")
    );
    let posts = mock.model_requests();
    assert_eq!(posts.len(), 2);
    assert!(
        posts[0].path.starts_with(&format!(
            "/v1beta/models/{GEMINI_MODEL}:streamGenerateContent"
        )),
        "{}",
        posts[0].path
    );
    let t = e.root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}");
    assert_eq!(t["result"], "Wrote hello.txt.");
    let a = e.agent("GEM-001");
    assert_eq!(a["status"], "completed", "{a}");
    assert_eq!(a["exit_code"], 0);
    assert_eq!(a["tokens"], two_turns(), "{a}");
    let log = e.log("GEM-001");
    assert!(log.contains("\"response\": \"Wrote hello.txt.\""), "{log}");
    let session = a["session_id"].as_str().expect("session id");
    assert!(log.contains(session), "{log}");
    let want = (2.0 * INPUT_TOKENS as f64 * GEMINI_PRICE.0
        + 2.0 * OUTPUT_TOKENS as f64 * GEMINI_PRICE.1)
        / 1e6;
    assert!(
        close(a["cost_usd"].as_f64().expect("cost"), want),
        "{a} (want {want})"
    );
    e.figures("gemini", &mock, &a, 2 * PACE);
    let rss = a["max_rss_kb"].as_u64().unwrap_or(0);
    assert!(rss > 50_000, "the CLI's memory is recorded: {a}");
}

/// Claude's API error (`is_error: true` with `subtype: "success"`) is a
/// failed attempt, retried: the second agent succeeds.
#[test]
fn claude_api_error_is_a_failed_attempt_and_retried() {
    let Some(e) = E2e::new("claude_api_error_is_a_failed_attempt_and_retried") else {
        return;
    };
    // A queue: the first attempt's request fails, the retry's two succeed.
    let mock = Mock::script(vec![
        Reply::Error(500, "mock overloaded".into()),
        Reply::write("retry.txt", "second attempt"),
        Reply::text("Done on the retry."),
    ]);
    e.claude_role(
        "claude",
        "CLA",
        &mock.url(),
        "permission_mode: acceptEdits\nretries: 1",
        &[],
    );
    e.task("TASK-001", "claude", "Write retry", "Write retry.txt.");
    e.run(LIMIT);
    let agents = e.root.agents();
    assert_eq!(agents.len(), 2, "{agents:#?}");
    let a1 = e.agent("CLA-001");
    assert_eq!(a1["status"], "failed", "{a1}");
    assert_eq!(a1["exit_code"], 1, "{a1}");
    let reason = a1["reason"].as_str().unwrap();
    assert!(reason.contains("API Error: 500"), "{reason}");
    let r1 = claude_result(&e.log("CLA-001"));
    assert_eq!(r1["subtype"], "success", "the trap: {r1}");
    assert_eq!(r1["is_error"], true, "{r1}");
    let a2 = e.agent("CLA-002");
    assert_eq!(a2["status"], "completed", "{a2}");
    assert_eq!(a2["attempt"], 2, "{a2}");
    assert_eq!(
        e.workspace_file("CLA-002", "retry.txt").as_deref(),
        Some("second attempt")
    );
    let t = e.root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}");
}

/// Claude without a permission mode does not write, yet exits 0 with
/// `permission_denials`: taskq fails it as blocked.
#[test]
fn claude_denied_write_is_blocked() {
    let Some(e) = E2e::new("claude_denied_write_is_blocked") else {
        return;
    };
    let mock = Mock::write_then_text("denied.txt", "never", "I wrote denied.txt.");
    e.claude_role("claude", "CLA", &mock.url(), "retries: 0", &[]);
    e.task("TASK-001", "claude", "Write denied", "Write denied.txt.");
    e.run(LIMIT);
    assert_eq!(e.workspace_file("CLA-001", "denied.txt"), None);
    let a = e.agent("CLA-001");
    assert_eq!(a["exit_code"], 0, "claude exits 0: {a}");
    assert_eq!(a["status"], "failed", "{a}");
    assert_eq!(a["reason"], "blocked: permission denied for Write", "{a}");
    let r = claude_result(&e.log("CLA-001"));
    assert_eq!(r["is_error"], false, "{r}");
    assert_eq!(r["permission_denials"][0]["tool_name"], "Write", "{r}");
    let t = e.root.show("TASK-001");
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["reason"], "blocked: permission denied for Write", "{t}");
}

/// `max_turns: 1` and a model that keeps calling tools: the turn limit
/// fails the task with the reason.
#[test]
fn claude_turn_limit_fails_with_the_reason() {
    let Some(e) = E2e::new("claude_turn_limit_fails_with_the_reason") else {
        return;
    };
    let mock = Mock::always(Reply::write("loop.txt", "again"));
    e.claude_role(
        "claude",
        "CLA",
        &mock.url(),
        "permission_mode: acceptEdits\nmax_turns: 1\nretries: 0",
        &[],
    );
    e.task("TASK-001", "claude", "Loop", "Keep writing loop.txt.");
    e.run(LIMIT);
    let a = e.agent("CLA-001");
    assert_eq!(a["status"], "failed", "{a}");
    let reason = a["reason"].as_str().unwrap();
    assert!(reason.starts_with("hit the turn limit"), "{reason}");
    let r = claude_result(&e.log("CLA-001"));
    assert_eq!(r["subtype"], "error_max_turns", "{r}");
    let t = e.root.show("TASK-001");
    assert_eq!(t["status"], "failed", "{t}");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .starts_with("hit the turn limit"),
        "{t}"
    );
}

/// An HTTP 400 from the model API: each CLI fails, and taskq says why —
/// Claude's error result, Codex's `turn.failed`, Gemini's `error` object.
#[test]
fn http_400_fails_each_cli_with_its_reason() {
    let Some(e) = E2e::new("http_400_fails_each_cli_with_its_reason") else {
        return;
    };
    let mock = Mock::always(Reply::Error(400, "mock: bad request".into()));
    e.claude_role(
        "claude",
        "CLA",
        &mock.url(),
        "permission_mode: acceptEdits",
        &[],
    );
    e.codex_role("codex", "CDX", &mock.url(), "");
    e.gemini_role("gemini", "GEM", &mock.url(), "");
    e.task("TASK-001", "claude", "Claude 400", "Say hi.");
    e.task("TASK-002", "codex", "Codex 400", "Say hi.");
    e.task("TASK-003", "gemini", "Gemini 400", "Say hi.");
    let (_, took) = e.run(LIMIT);
    assert!(took < Duration::from_secs(60), "{took:?}");
    let by_role = |role: &str| {
        e.root
            .agents()
            .into_iter()
            .find(|a| a["adapter"] == role)
            .unwrap_or_else(|| panic!("no {role} agent"))
    };
    let c = by_role("claude");
    assert_eq!(c["status"], "failed", "{c}");
    assert!(
        c["reason"].as_str().unwrap().contains("API Error: 400"),
        "{c}"
    );
    let x = by_role("codex");
    assert_eq!(x["status"], "failed", "{x}");
    assert_eq!(x["exit_code"], 1, "{x}");
    assert!(
        x["reason"]
            .as_str()
            .unwrap()
            .starts_with("codex turn failed"),
        "{x}"
    );
    let xlog = e.log(x["id"].as_str().unwrap());
    assert!(xlog.contains("\"type\":\"turn.failed\""), "{xlog}");
    let g = by_role("gemini");
    assert_eq!(g["status"], "failed", "{g}");
    assert!(
        g["reason"]
            .as_str()
            .unwrap()
            .starts_with("gemini reported an error"),
        "{g}"
    );
    for id in ["TASK-001", "TASK-002", "TASK-003"] {
        assert_eq!(e.root.show(id)["status"], "failed", "{id}");
    }
}

/// A dead server (a port nobody listens on) fails fast: Claude with
/// `CLAUDE_CODE_MAX_RETRIES=0` and Gemini with `general.maxAttempts: 1`
/// in about a second. Codex 0.169 retries a refused connection forever
/// ("Reconnecting... waiting for network", `request_max_retries = 0`
/// notwithstanding): only the role's `timeout` bounds it.
#[test]
fn dead_server_fails_fast() {
    let Some(e) = E2e::new("dead_server_fails_fast") else {
        return;
    };
    let url = format!("http://127.0.0.1:{}", mock::dead_port());
    e.claude_role("claude", "CLA", &url, "permission_mode: acceptEdits", &[]);
    e.gemini_role("gemini", "GEM", &url, "");
    e.codex_role("codex", "CDX", &url, "timeout: 5s");
    e.task("TASK-001", "claude", "Claude dead", "Say hi.");
    e.task("TASK-002", "gemini", "Gemini dead", "Say hi.");
    e.task("TASK-003", "codex", "Codex dead", "Say hi.");
    let (_, took) = e.run(LIMIT);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let by_role = |role: &str| {
        e.root
            .agents()
            .into_iter()
            .find(|a| a["adapter"] == role)
            .unwrap_or_else(|| panic!("no {role} agent"))
    };
    let c = by_role("claude");
    assert_eq!(c["status"], "failed", "{c}");
    assert!(
        c["reason"].as_str().unwrap().contains("Unable to connect"),
        "{c}"
    );
    assert!(c["duration_ms"].as_u64().unwrap() < 20_000, "{c}");
    let g = by_role("gemini");
    assert_eq!(g["status"], "failed", "{g}");
    assert!(
        g["reason"].as_str().unwrap().contains("fetch failed"),
        "{g}"
    );
    assert!(g["duration_ms"].as_u64().unwrap() < 20_000, "{g}");
    let x = by_role("codex");
    assert_eq!(x["status"], "timeout", "{x}");
    assert_eq!(x["reason"], "timed out after 5s", "{x}");
    let xlog = e.log(x["id"].as_str().unwrap());
    assert!(xlog.contains("Reconnecting"), "{xlog}");
    for id in ["TASK-001", "TASK-002", "TASK-003"] {
        assert_eq!(e.root.show(id)["status"], "failed", "{id}");
    }
}

/// The crash-and-resume scenario shared by the two resume tests: the first
/// agent is killed (with its factory) while the model holds its second
/// request; the restarted factory marks it lost and retries with
/// `--resume <session>`. Returns the mock.
fn crash_then_resume(e: &E2e, workspace: &str) -> Mock {
    let held = std::sync::atomic::AtomicBool::new(false);
    let mock = Mock::start(move |r| {
        if r.tool_results() == 0 {
            Reply::write("resume.txt", "before the crash")
        } else if !held.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::Hang
        } else {
            Reply::text("Finished after resuming.")
        }
    });
    e.claude_role(
        "claude",
        "CLA",
        &mock.url(),
        &format!("permission_mode: acceptEdits\nretries: 1\nresume: true\nworkspace: {workspace}"),
        // Sessions live in the config dir: share it between attempts.
        &[
            ("CLAUDE_CONFIG_DIR", "{root}/.claude-shared"),
            ("HOME", "{root}/.claude-home"),
        ],
    );
    e.task("TASK-001", "claude", "Resume", "Write resume.txt.");
    let daemon = e.root.daemon(&[], &[]);
    mock.wait_for(Duration::from_secs(60), |r| r.tool_results() > 0)
        .expect("the agent's second request (after the tool result)");
    let a1 = e.agent("CLA-001");
    let pid = a1["pid"].as_u64().expect("pid recorded");
    let session = a1["session_id"].as_str().unwrap().to_string();
    // Claude writes its transcript (`projects/<cwd>/<session>.jsonl`)
    // asynchronously: crash once the tool result is on disk (a crash
    // before that loses the turn, and `--resume` then finds nothing).
    let projects = e.root.path().join(".claude-shared/projects");
    crate::util::wait_for(
        "the transcript to hold the tool result",
        Duration::from_secs(20),
        || {
            walkdir::WalkDir::new(&projects)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|f| f.file_name().to_string_lossy() == format!("{session}.jsonl"))
                .any(|f| std::fs::read_to_string(f.path()).is_ok_and(|t| t.contains("tool_result")))
        },
    );
    daemon.signal("KILL");
    drop(daemon);
    // The agent's whole group dies too: a crash of the machine, say.
    crate::util::kill_agents(e.root.path());
    crate::util::wait_for("the agent to die", Duration::from_secs(10), || {
        !crate::util::pid_alive(pid as u32)
    });
    e.run(LIMIT);
    mock
}

/// Resume with `workspace: root`: the retry runs in the same directory,
/// so `claude --resume` finds the session and its first request carries
/// the earlier messages (the tool call and its result).
#[test]
fn claude_resumes_its_session_after_a_crash() {
    let Some(e) = E2e::new("claude_resumes_its_session_after_a_crash") else {
        return;
    };
    let mock = crash_then_resume(&e, "root");
    check_resumed(&e, &mock);
}

/// The same with the default `workspace: dir`: Claude keys sessions by
/// working directory, so the resumed agent works in the lost one's.
#[test]
fn claude_resumes_its_session_after_a_crash_in_a_dir_workspace() {
    let Some(e) = E2e::new("claude_resumes_its_session_after_a_crash_in_a_dir_workspace") else {
        return;
    };
    let mock = crash_then_resume(&e, "dir");
    check_resumed(&e, &mock);
}

fn check_resumed(e: &E2e, mock: &Mock) {
    let a1 = e.agent("CLA-001");
    assert_eq!(a1["status"], "lost", "{a1}");
    let session = a1["session_id"].as_str().unwrap().to_string();
    let a2 = e.agent("CLA-002");
    assert_eq!(a2["status"], "completed", "{a2}\n{}", e.log("CLA-002"));
    assert_eq!(a2["session_id"], session.as_str(), "{a2}");
    let posts = mock.model_requests();
    // Requests: first agent (tool call, held), then the resumed agent.
    assert!(posts.len() >= 3, "{}", posts.len());
    let resumed = &posts[2];
    let messages = resumed.json()["messages"].clone();
    let text = messages.to_string();
    assert!(
        resumed.tool_results() >= 1 && text.contains("toolu_mock_"),
        "the request after --resume carries the earlier tool call and result: {text}"
    );
    let t = e.root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}");
}

/// Three Claude agents at once against the mock (each response takes 1 s,
/// so they overlap); a fourth task waits for a free slot; each agent's
/// peak memory is recorded.
#[test]
fn three_claude_agents_at_once() {
    let Some(e) = E2e::new("three_claude_agents_at_once") else {
        return;
    };
    let mock = Mock::start(|r| {
        let reply = if r.tool_results() == 0 {
            Reply::write("par.txt", "parallel")
        } else {
            Reply::text("Done in parallel.")
        };
        reply.after(Duration::from_secs(1))
    });
    e.claude_role(
        "claude",
        "CLA",
        &mock.url(),
        "permission_mode: acceptEdits\nmax_concurrent: 3",
        &[],
    );
    for n in 1..=4 {
        e.task(
            &format!("TASK-00{n}"),
            "claude",
            &format!("Parallel {n}"),
            "Write par.txt.",
        );
    }
    e.run(LIMIT);
    let agents = e.root.agents();
    assert_eq!(agents.len(), 4, "{agents:#?}");
    // Overlap of [spawned, completed]: at most 3, and 3 did run at once.
    let mut events = Vec::new();
    for a in &agents {
        assert_eq!(a["status"], "completed", "{a}");
        events.push((timestamp(a, "spawned"), 1));
        events.push((timestamp(a, "completed"), -1));
    }
    let max = max_overlap(events);
    assert_eq!(max, 3, "three agents at once, never more");
    // The mock saw three sessions in flight together.
    let first_done = agents
        .iter()
        .map(|a| timestamp(a, "completed"))
        .min()
        .unwrap();
    let mut early: Vec<String> = mock
        .model_requests()
        .iter()
        .filter(|r| chrono::DateTime::<chrono::Utc>::from(r.at) < first_done)
        .filter_map(|r| r.claude_session().map(str::to_string))
        .collect();
    early.sort();
    early.dedup();
    assert_eq!(early.len(), 3, "{early:?}");
    for a in &agents {
        let id = a["id"].as_str().unwrap();
        assert_eq!(e.workspace_file(id, "par.txt").as_deref(), Some("parallel"));
        let rss = a["max_rss_kb"]
            .as_u64()
            .unwrap_or_else(|| panic!("no max_rss_kb: {a}"));
        assert!(rss > 50_000, "{id}: {rss} kB");
        e.figures("claude (3 at once)", &mock, a, Duration::from_secs(2));
    }
    for n in 1..=4 {
        assert_eq!(e.root.show(&format!("TASK-00{n}"))["status"], "done");
    }
}

/// Claude Code cut off by taskq's SIGTERM, at its time limit and by
/// `taskq stop`, while the model holds its second request: whatever it
/// printed on the way out is read, and what it spent is recorded, as its
/// reported `total_cost_usd` when it prints its result, else as `unknown`
/// (never $0, never nothing). Measured with 2.1.197 against the mock:
/// it prints nothing after SIGTERM (an empty log, ended by the signal),
/// so both are `unknown` and `status` counts them; the print-on-SIGTERM
/// path is covered with a script in `tests/cost.rs`.
#[test]
fn claude_cut_off_by_a_timeout_or_a_stop_has_its_cost_recorded() {
    let Some(e) = E2e::new("claude_cut_off_by_a_timeout_or_a_stop_has_its_cost_recorded") else {
        return;
    };
    let mock = Mock::start(|r| {
        if r.tool_results() == 0 {
            Reply::write("first.txt", "first turn")
        } else {
            Reply::text("too late").after(Duration::from_secs(120))
        }
    });
    e.claude_role(
        "timed",
        "TIM",
        &mock.url(),
        "permission_mode: acceptEdits\ntimeout: 20s",
        &[],
    );
    e.claude_role(
        "held",
        "HLD",
        &mock.url(),
        "permission_mode: acceptEdits\ntimeout: 300s",
        &[],
    );
    // Time for Claude to print its result after the SIGTERM, if it does.
    let config = e.root.read("agents/factory/config.yaml");
    e.root.write(
        "agents/factory/config.yaml",
        config.replace("stop_grace: 1s", "stop_grace: 10s"),
    );
    e.task(
        "TASK-001",
        "timed",
        "Cut by the time limit",
        "Write first.txt.",
    );
    e.task("TASK-002", "held", "Cut by a stop", "Write first.txt.");
    let daemon = e.root.daemon(&[], &[]);
    crate::util::wait_for(
        "both agents' second requests",
        Duration::from_secs(60),
        || {
            mock.model_requests()
                .iter()
                .filter(|r| r.tool_results() > 0)
                .count()
                >= 2
        },
    );
    e.root.taskq(&["stop", "--cancel", "TASK-002"]).ok();
    crate::util::wait_for("both ends recorded", LIMIT, || {
        e.agent("TIM-001")["status"] == "timeout" && e.agent("HLD-002")["status"] == "stopped"
    });
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let mut unknown = 0;
    for id in ["TIM-001", "HLD-002"] {
        let a = e.agent(id);
        let log = e.log(id);
        let reported = taskq::agent::json_lines(&log)
            .filter(|v| v["type"] == "result")
            .last()
            .and_then(|r| r["total_cost_usd"].as_f64());
        match reported {
            Some(reported) => {
                let cost = a["cost_usd"].as_f64().unwrap_or_else(|| panic!("{a}"));
                assert!(close(cost, reported), "{id}: {cost} vs {reported}");
                eprintln!("{id}: claude printed its cost after SIGTERM: {reported}");
            }
            None => {
                assert_eq!(a["cost_usd"], "unknown", "{id}: {a}\n{log}");
                unknown += 1;
                eprintln!("{id}: claude printed nothing after SIGTERM: cost unknown");
            }
        }
    }
    let status: Value =
        serde_json::from_str(&e.root.taskq(&["status", "--json"]).ok().stdout).unwrap();
    assert_eq!(status["spend"]["unknown_today"], unknown, "{status}");
}
