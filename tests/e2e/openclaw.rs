//! OpenClaw end to end: the real `openclaw` (pinned, from the npm
//! registry, run with Node 24 also from the npm registry; installed by
//! `clis.rs`) driven by `taskq run --until-idle` against the model mock on
//! 127.0.0.1, in an `E2e` root.
//!
//! OpenClaw ignores ANTHROPIC_BASE_URL: each test writes an OpenClaw
//! config file in its root that points the `anthropic` provider at the
//! mock (`api: anthropic-messages`), and the role passes its absolute path
//! with `config:` (taskq's `--config`). Each agent gets its own HOME and
//! TMPDIR under its workspace (`set_env`), so OpenClaw's state
//! (`~/.openclaw`, its session database) never touches the user's.
//!
//! Measured here (2 CPUs): a run is ~5-7 s wall, almost all of it
//! OpenClaw's own start-up (the model request comes ~4-5 s after spawn),
//! and ~0.9 GB peak RSS per agent. OpenClaw keeps a Node compile cache in
//! `$TMPDIR/node-compile-cache` unless `NODE_COMPILE_CACHE` says where:
//! with a TMPDIR per agent every run would start cold (~13-16 s), so the
//! roles here point `NODE_COMPILE_CACHE` at one shared directory next to
//! the install, warmed once by the installer. OpenClaw's `--timeout`
//! deadline starts only after its start-up, so taskq's own deadline (the
//! same number of seconds, counted from spawn) always fires first.
//!
//! The tests of this module run one at a time (each OpenClaw is ~7 CPU
//! seconds and ~0.9 GB): their figures are OpenClaw's, not contention's.
//!
//! `TASKQ_SKIP_AGENT_CLIS=1` skips these tests (CI never sets it).

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use super::clis::{compile_cache, openclaw};
use super::mock::{Api, Mock, Reply, INPUT_TOKENS, OUTPUT_TOKENS};
use super::{close, default_timeout, E2e};
use crate::util::{pid_alive, timestamp};

/// The model the config's catalog lists (provider/model).
const MODEL: &str = "anthropic/claude-haiku-4-5";
/// USD per million tokens in taskq's price table: (input, output).
const PRICE: (f64, f64) = (1.0, 5.0);
/// Every `taskq run` here must end well within this.
const LIMIT: Duration = Duration::from_secs(150);
/// The body of every task here.
const ASK: &str = "Answer in one line.";

// ---------------------------------------------------------------------
// A root for OpenClaw
// ---------------------------------------------------------------------

/// An e2e root with the OpenClaw wrapper as the `openclaw` adapter.
struct Oc {
    e: E2e,
    /// One OpenClaw test at a time (dropped last, after the root).
    _serial: MutexGuard<'static, ()>,
}

impl Deref for Oc {
    type Target = E2e;

    fn deref(&self) -> &E2e {
        &self.e
    }
}

impl Oc {
    /// A fresh root; `None` when skipped.
    fn new(name: &'static str) -> Option<Oc> {
        let wrapper = openclaw()?;
        static SERIAL: Mutex<()> = Mutex::new(());
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let e = E2e::with_config(
            "openclaw",
            name,
            4,
            &format!(
                "  openclaw: {}\n",
                serde_json::to_string(&wrapper.display().to_string()).unwrap()
            ),
            &format!("  {MODEL}: {{input: {}, output: {}}}\n", PRICE.0, PRICE.1),
        );
        Some(Oc { e, _serial: serial })
    }

    /// Writes the OpenClaw config (the `anthropic` provider at `url`, one
    /// model in its catalog) and returns its absolute path.
    fn provider_config(&self, url: &str) -> PathBuf {
        let config = serde_json::json!({"models": {"mode": "merge", "providers": {
            "anthropic": {"baseUrl": url, "apiKey": "mock-key", "api": "anthropic-messages",
                "models": [{"id": "claude-haiku-4-5", "name": "Haiku"}]}}}});
        self.root.write(
            "openclaw.json",
            serde_json::to_string_pretty(&config).unwrap(),
        )
    }

    /// Writes `agents/templates/<name>.md`: an OpenClaw role with its own
    /// HOME and TMPDIR per agent, the shared compile cache (writable in the
    /// sandbox), and `config`
    /// as `--config`. `settings` adds frontmatter lines.
    fn role(&self, name: &str, prefix: &str, model: &str, config: &Path, settings: &str) {
        self.template(
            name,
            &format!(
                "prefix: {prefix}\nagent: openclaw\nmodel: {model}\nconfig: {}\nsandbox: {{write: [{}]}}\n{}{settings}",
                serde_json::to_string(&config.display().to_string()).unwrap(),
                // The shared compile cache is the agents' to fill (start-up
                // takes seconds without it).
                serde_json::to_string(&compile_cache().display().to_string()).unwrap(),
                default_timeout(settings)
            ),
            &[
                ("HOME", "{workspace}/.home".into()),
                ("TMPDIR", "{workspace}/.tmp".into()),
                ("NODE_COMPILE_CACHE", compile_cache().display().to_string()),
            ],
        );
    }

    /// The registry entries of `role`, by id.
    fn agents_of(&self, role: &str) -> Vec<Value> {
        let mut v: Vec<Value> = self
            .root
            .agents()
            .into_iter()
            .filter(|a| a["type"] == role)
            .collect();
        v.sort_by_key(|a| a["id"].as_str().unwrap_or("").to_string());
        v
    }

    /// The one registry entry of `role`.
    #[track_caller]
    fn agent_of(&self, role: &str) -> Value {
        let v = self.agents_of(role);
        assert_eq!(v.len(), 1, "one agent of {role}: {:#?}", self.root.agents());
        v.into_iter().next().unwrap()
    }
}

/// A registry entry's id.
fn id(a: &Value) -> &str {
    a["id"].as_str().unwrap()
}

/// OpenClaw's `--json` envelope in a log (pretty-printed, mixed with its
/// stderr diagnostics): the last object with `ok` and `status`.
fn envelope(log: &str) -> Value {
    taskq::agent::last_json_object(log, |v| v.get("ok").is_some() && v.get("status").is_some())
        .unwrap_or_else(|| panic!("no OpenClaw envelope in the log:\n{log}"))
}

/// Live processes still in process group `pgid`.
fn group_members(pgid: u64) -> Vec<u32> {
    taskq::spawn::group_members(u32::try_from(pgid).expect("a pid"))
}

/// The cost of one model response at `PRICE`.
fn one_response_cost() -> f64 {
    (INPUT_TOKENS as f64 * PRICE.0 + OUTPUT_TOKENS as f64 * PRICE.1) / 1_000_000.0
}

// ---------------------------------------------------------------------
// The scenarios
// ---------------------------------------------------------------------

/// A text reply: the task is done with OpenClaw's final text; the
/// registry holds the envelope's tokens, turns, session id and model, and
/// the cost from taskq's price table (OpenClaw reports 0 for a provider
/// pointed at a custom baseUrl); the log holds the envelope.
#[test]
fn openclaw_text_reply_is_done_with_tokens_and_cost() {
    let Some(oc) = Oc::new("openclaw_text_reply_is_done_with_tokens_and_cost") else {
        return;
    };
    // A short pause so taskq's 500 ms memory samples see OpenClaw itself.
    let mock =
        Mock::always(Reply::text("Hello from the mock model.").after(Duration::from_millis(600)));
    let config = oc.provider_config(&mock.url());
    oc.role("oc", "OC", MODEL, &config, "");
    oc.task("TASK-001", "oc", "Say hello", ASK);
    oc.run(LIMIT);

    let t = oc.root.show("TASK-001");
    assert_eq!(t["status"], "done", "{t}");
    assert_eq!(t["result"], "Hello from the mock model.", "{t}");
    let a = oc.agent_of("oc");
    assert_eq!(a["status"], "completed", "{a}");
    assert_eq!(a["adapter"], "openclaw", "{a}");
    assert_eq!(a["exit_code"], 0, "{a}");
    assert_eq!(
        a["tokens"],
        serde_json::json!({"input": INPUT_TOKENS, "output": OUTPUT_TOKENS}),
        "{a}"
    );
    assert_eq!(a["num_turns"], 1, "{a}");
    assert_eq!(a["model"], MODEL, "{a}");

    // The envelope in the log, and the registry read from it.
    let log = oc.log(id(&a));
    let env = envelope(&log);
    assert_eq!(env["ok"], true, "{env}");
    assert_eq!(env["status"], "ok", "{env}");
    assert_eq!(env["final"], "Hello from the mock model.", "{env}");
    assert_eq!(env["provider"], "anthropic", "{env}");
    assert_eq!(env["model"], "claude-haiku-4-5", "{env}");
    assert_eq!(env["usage"]["input"], INPUT_TOKENS, "{env}");
    assert_eq!(env["usage"]["output"], OUTPUT_TOKENS, "{env}");
    let session = env["sessionId"].as_str().expect("a session id");
    assert!(!session.is_empty());
    assert_eq!(a["session_id"], session, "{a}");
    // OpenClaw prices a custom-baseUrl model at 0: the cost is taskq's.
    assert_eq!(
        env["usage"]["cost"]["total"].as_f64(),
        Some(0.0),
        "OpenClaw's own cost: {env}"
    );
    let cost = a["cost_usd"].as_f64().expect("cost recorded");
    assert!(
        close(cost, one_response_cost()),
        "{cost} vs {}",
        one_response_cost()
    );

    // One Anthropic Messages request, for the catalog's model, carrying
    // taskq's prompt.
    let posts = mock.model_requests();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    assert_eq!(posts[0].api(), Api::Anthropic);
    assert_eq!(posts[0].model(), "claude-haiku-4-5");
    assert_eq!(posts[0].header("x-api-key"), Some("mock-key"));
    let ws = oc
        .root
        .path()
        .join("agents/workspaces")
        .join(a["id"].as_str().unwrap());
    assert_eq!(posts[0].workspace().as_deref(), Some(ws.to_str().unwrap()));
    assert!(
        posts[0].body.contains("Say hello"),
        "the task reached the model"
    );
    // Its own HOME: OpenClaw's state is in the workspace.
    assert!(
        ws.join(".home/.openclaw").is_dir(),
        "OpenClaw state under its HOME"
    );

    oc.figures("one text reply", &mock, &a, Duration::from_millis(600));
    let rss = a["max_rss_kb"].as_u64().expect("max_rss_kb recorded");
    assert!(rss > 100_000, "OpenClaw's memory is recorded: {rss} kB");
    let ms = a["duration_ms"].as_u64().expect("duration_ms recorded");
    assert!(ms < 60_000, "{ms} ms");
}

/// A model whose provider the `--config` does not define fails at once,
/// with OpenClaw's own message as the task's reason, and never reaches the
/// model server.
#[test]
fn openclaw_unknown_model_fails_at_once() {
    let Some(oc) = Oc::new("openclaw_unknown_model_fails_at_once") else {
        return;
    };
    let mock = Mock::always(Reply::text("Answered."));
    let config = oc.provider_config(&mock.url());
    oc.role("bad", "BAD", "local/no-such-model", &config, "");
    oc.task("TASK-001", "bad", "Unknown model", ASK);
    oc.run(LIMIT);

    let a = oc.agent_of("bad");
    assert_eq!(a["status"], "failed", "{a}");
    assert_eq!(a["exit_code"], 1, "{a}");
    let reason = a["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("openclaw: Unknown model: local/no-such-model"),
        "{reason}"
    );
    let t = oc.root.show("TASK-001");
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["reason"], reason, "{t}");
    let env = envelope(&oc.log(id(&a)));
    assert_eq!(env["ok"], false, "{env}");
    assert_eq!(env["status"], "error", "{env}");
    assert_eq!(
        reason,
        format!("openclaw: {}", env["error"]["message"].as_str().unwrap()),
        "{env}"
    );
    assert!(mock.model_requests().is_empty(), "no model request");
    let ms = a["duration_ms"].as_u64().unwrap();
    eprintln!("openclaw figures: unknown model failed after {ms} ms");
    assert!(
        ms < 20_000,
        "an unknown model fails at once (start-up only): {ms} ms"
    );
}

/// Two findings about OpenClaw's model resolution, pinned: a provider the
/// config defines passes any model id through to its server
/// (`anthropic/no-such-model` reaches the mock and succeeds: the
/// catalog's `models` list is not a whitelist, only an unknown provider
/// fails); and an unknown primary with a `--fallback` is answered by the
/// fallback within the same run (no taskq retry), which is what taskq
/// prices.
#[test]
fn openclaw_model_resolution() {
    let Some(oc) = Oc::new("openclaw_model_resolution") else {
        return;
    };
    let mock = Mock::always(Reply::text("Answered."));
    let config = oc.provider_config(&mock.url());
    oc.role("typo", "TYP", "anthropic/no-such-model", &config, "");
    oc.role(
        "fb",
        "FB",
        "local/no-such-model",
        &config,
        &format!("fallback_models: [{MODEL}]"),
    );
    oc.task(
        "TASK-001",
        "typo",
        "Model id under a configured provider",
        ASK,
    );
    oc.task("TASK-002", "fb", "Unknown model with a fallback", ASK);
    oc.run(LIMIT);

    // A configured provider takes any model id to its server.
    let typo = oc.agent_of("typo");
    assert_eq!(typo["status"], "completed", "{typo}");
    let sent: Vec<String> = mock
        .model_requests_of(id(&typo))
        .iter()
        .map(|r| r.model())
        .collect();
    assert_eq!(sent, ["no-such-model"], "the id went to the server as is");
    assert_eq!(oc.root.show("TASK-001")["status"], "done");

    // The fallback answered, in the same run, and is what is priced.
    let fb = oc.agent_of("fb");
    assert_eq!(fb["status"], "completed", "{fb}");
    assert_eq!(
        fb["attempt"], 1,
        "OpenClaw fell back itself, no retry: {fb}"
    );
    let env = envelope(&oc.log(id(&fb)));
    assert_eq!(
        (env["provider"].as_str(), env["model"].as_str()),
        (Some("anthropic"), Some("claude-haiku-4-5")),
        "{env}"
    );
    let sent: Vec<String> = mock
        .model_requests_of(id(&fb))
        .iter()
        .map(|r| r.model())
        .collect();
    assert_eq!(sent, ["claude-haiku-4-5"]);
    // Priced as the model that answered (the table has no price for the
    // role's model).
    assert!(
        fb["cost_usd"]
            .as_f64()
            .is_some_and(|c| close(c, one_response_cost())),
        "{fb}"
    );
    assert_eq!(oc.root.show("TASK-002")["status"], "done");
    eprintln!(
        "openclaw: the registry's model for {}: {} (OpenClaw's envelope: {}/{})",
        fb["id"], fb["model"], env["provider"], env["model"]
    );
}

/// Known gap, pinned: the registry's `model` stays the role's model even
/// when OpenClaw's envelope says a fallback answered (the factory does not
/// record `Outcome::model`; only the pricing uses it).
#[test]
fn openclaw_fallback_model_is_recorded() {
    let Some(oc) = Oc::new("openclaw_fallback_model_is_recorded") else {
        return;
    };
    let mock = Mock::always(Reply::text("Answered."));
    let config = oc.provider_config(&mock.url());
    oc.role(
        "fb",
        "FB",
        "local/no-such-model",
        &config,
        &format!("fallback_models: [{MODEL}]"),
    );
    oc.task("TASK-001", "fb", "Unknown model with a fallback", ASK);
    oc.run(LIMIT);
    let fb = oc.agent_of("fb");
    assert_eq!(fb["status"], "completed", "{fb}");
    assert_eq!(fb["model"], MODEL, "the model that answered: {fb}");
}

/// The role's `timeout: 3s` against a model that answers after 20 s:
/// taskq kills the agent (TERM, then KILL after `stop_grace`) and records
/// a timeout. What really happens: taskq's deadline counts from spawn,
/// OpenClaw's `--timeout 3` only from the start of its run, after its
/// ~4-5 s start-up; so taskq's deadline always fires first, usually before
/// OpenClaw has even sent the model request, and OpenClaw's own timeout
/// envelope (`status: "timeout"`, exit 2) is never written.
#[test]
fn openclaw_timeout_kills_it_and_is_recorded() {
    let Some(oc) = Oc::new("openclaw_timeout_kills_it_and_is_recorded") else {
        return;
    };
    let mock = Mock::always(Reply::text("Too late.").after(Duration::from_secs(20)));
    let config = oc.provider_config(&mock.url());
    oc.role("oc", "OC", MODEL, &config, "timeout: 3s");
    oc.task("TASK-001", "oc", "Slow model", ASK);
    let (_, took) = oc.run(LIMIT);
    assert!(
        took < Duration::from_secs(15),
        "did not wait for the model: {took:?}"
    );

    let a = oc.agent_of("oc");
    assert_eq!(a["status"], "timeout", "{a}");
    assert_eq!(a["reason"], "timed out after 3s", "{a}");
    assert!(a["exit_code"].is_null(), "killed by a signal: {a}");
    let ms = a["duration_ms"].as_u64().unwrap();
    assert!(
        (3_000..10_000).contains(&ms),
        "3 s, plus at most the grace: {ms} ms"
    );
    let t = oc.root.show("TASK-001");
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["reason"], "timed out after 3s", "{t}");
    // Nothing of it survives: not the wrapper, not node.
    let pid = a["pid"].as_u64().unwrap();
    assert!(!pid_alive(pid as u32), "agent {pid} still alive");
    assert!(
        group_members(pid).is_empty(),
        "left in its group: {:?}",
        group_members(pid)
    );
    // No envelope: OpenClaw was killed before its own deadline.
    let log = oc.log(id(&a));
    assert!(
        !log.contains("\"status\": \"timeout\""),
        "OpenClaw reported its own timeout first:\n{log}"
    );
    eprintln!(
        "openclaw figures: timeout after {ms} ms; the model request {} the mock before the kill",
        if mock.model_requests_of(id(&a)).is_empty() {
            "never reached"
        } else {
            "reached"
        }
    );
}

/// OpenClaw's own deadline (here forced shorter with `args: [--timeout,
/// "1"]`, which OpenClaw takes as the last `--timeout`): the envelope says
/// `status: "timeout"` (exit 2). It should be recorded as a timeout; taskq
/// records it as `failed` with "openclaw timed out: ...".
#[test]
fn openclaw_own_timeout_is_recorded_as_a_timeout() {
    let Some(oc) = Oc::new("openclaw_own_timeout_is_recorded_as_a_timeout") else {
        return;
    };
    let mock = Mock::always(Reply::text("Too late.").after(Duration::from_secs(20)));
    let config = oc.provider_config(&mock.url());
    oc.role(
        "oc",
        "OC",
        MODEL,
        &config,
        "timeout: 60s\nargs: [\"--timeout\", \"1\"]",
    );
    oc.task("TASK-001", "oc", "Slow model", ASK);
    oc.run(LIMIT);
    let a = oc.agent_of("oc");
    let env = envelope(&oc.log(id(&a)));
    assert_eq!(env["status"], "timeout", "{env}");
    assert_eq!(a["exit_code"], 2, "{a}");
    assert_eq!(a["status"], "timeout", "{a}");
}

/// Two OpenClaw tasks for one role; returns the role's two agents sorted by
/// spawn time, after checking both finished.
fn two_agents(oc: &Oc, max_concurrent: usize) -> (Mock, Vec<Value>) {
    // Each answer takes 2 s, so two agents that run at once overlap at the
    // mock too.
    let mock = Mock::always(Reply::text("Done.").after(Duration::from_secs(2)));
    let config = oc.provider_config(&mock.url());
    oc.role(
        "oc",
        "OC",
        MODEL,
        &config,
        &format!("max_concurrent: {max_concurrent}"),
    );
    oc.task("TASK-001", "oc", "First", ASK);
    oc.task("TASK-002", "oc", "Second", ASK);
    oc.run(LIMIT);
    let mut agents = oc.agents_of("oc");
    assert_eq!(agents.len(), 2, "{agents:#?}");
    agents.sort_by_key(|a| timestamp(a, "spawned"));
    for a in &agents {
        assert_eq!(a["status"], "completed", "{a}");
        assert_eq!(mock.model_requests_of(id(a)).len(), 1, "{a}");
        oc.figures(
            &format!("max_concurrent {max_concurrent}"),
            &mock,
            a,
            Duration::from_secs(2),
        );
    }
    for id in ["TASK-001", "TASK-002"] {
        assert_eq!(oc.root.show(id)["status"], "done");
    }
    (mock, agents)
}

/// `max_concurrent: 1`: the second agent starts only after the first
/// ended, and its model request comes after that.
#[test]
fn openclaw_role_limit_one_runs_them_in_turn() {
    let Some(oc) = Oc::new("openclaw_role_limit_one_runs_them_in_turn") else {
        return;
    };
    let (mock, agents) = two_agents(&oc, 1);
    let first_end = timestamp(&agents[0], "completed");
    assert!(
        timestamp(&agents[1], "spawned") >= first_end,
        "the second started before the first ended: {agents:#?}"
    );
    let second: Vec<chrono::DateTime<chrono::Utc>> = mock
        .model_requests_of(id(&agents[1]))
        .iter()
        .map(|r| r.at.into())
        .collect();
    assert!(
        second
            .iter()
            .all(|at| *at > first_end.with_timezone(&chrono::Utc)),
        "the second agent's request came while the first ran"
    );
}

/// `max_concurrent: 2`: both run at once (their spans overlap, and both
/// requests are at the mock together).
#[test]
fn openclaw_role_limit_two_runs_them_together() {
    let Some(oc) = Oc::new("openclaw_role_limit_two_runs_them_together") else {
        return;
    };
    let (mock, agents) = two_agents(&oc, 2);
    let first_end = agents
        .iter()
        .map(|a| timestamp(a, "completed"))
        .min()
        .unwrap();
    assert!(
        timestamp(&agents[1], "spawned") < first_end,
        "the two did not overlap: {agents:#?}"
    );
    let before: Vec<&Value> = agents
        .iter()
        .filter(|a| {
            mock.model_requests_of(id(a)).iter().any(|r| {
                chrono::DateTime::<chrono::Utc>::from(r.at) < first_end.with_timezone(&chrono::Utc)
            })
        })
        .collect();
    assert_eq!(
        before.len(),
        2,
        "both agents reached the model before either ended"
    );
}
