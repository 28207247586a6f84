//! End to end with the real agent CLIs: Claude Code, Codex and Gemini CLI
//! (`tests.rs`) and OpenClaw (`openclaw.rs`), installed from the npm
//! registry (pinned, see `clis.rs`), driven by `taskq run --until-idle`
//! against a model mock on 127.0.0.1 (`mock.rs`).
//! The model asks for real tool calls; the CLIs really write files in the
//! agents' workspaces; taskq reads their real structured output.
//!
//! Each agent gets its own config and temp dirs under its workspace
//! (`HOME`, `CLAUDE_CONFIG_DIR`, `CODEX_HOME`, `TMPDIR`) through the role's
//! `set_env`. Codex and Gemini read their endpoint from config files, which
//! the test writes into the workspaces before the run: agent ids are
//! predictable (one counter per root), so `agents/workspaces/<ID>/` is
//! prepared for the first few ids of each prefix.
//!
//! `TASKQ_SKIP_AGENT_CLIS=1` skips these tests (see `clis.rs`).

mod clis;
pub mod mock;
mod openclaw;
mod tests;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{timestamp, Run, TestRoot};
use mock::Mock;

/// The Codex model (its price is in the config).
pub const CODEX_MODEL: &str = "gpt-5-mini";
/// The Gemini model (its price is in the config).
pub const GEMINI_MODEL: &str = "gemini-2.5-flash";
/// The Claude model (Claude computes its own cost).
pub const CLAUDE_MODEL: &str = "claude-sonnet-4-5";
/// USD per million tokens in the test config: (input, output).
pub const CODEX_PRICE: (f64, f64) = (0.25, 2.0);
/// Same for Gemini.
pub const GEMINI_PRICE: (f64, f64) = (0.3, 2.5);

/// When the first e2e test started (for the total wall time).
fn first_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// A taskq root set up for the real CLIs.
pub struct E2e {
    pub root: TestRoot,
    /// What its notes on stderr start with: `e2e` or `openclaw`.
    label: &'static str,
    name: &'static str,
    started: Instant,
}

impl E2e {
    /// A fresh root with claude, codex and gemini as adapters; `None` when
    /// skipped.
    pub fn new(name: &'static str) -> Option<E2e> {
        first_start();
        let clis = clis::clis()?;
        Some(E2e::with_config(
            "e2e",
            name,
            3,
            &format!(
                "  claude: {}\n  codex: {}\n  gemini: {}\n",
                clis.claude.display(),
                clis.codex.display(),
                clis.gemini.display(),
            ),
            &format!(
                "  {CODEX_MODEL}: {{input: {}, output: {}}}\n  {GEMINI_MODEL}: {{input: {}, output: {}}}\n",
                CODEX_PRICE.0, CODEX_PRICE.1, GEMINI_PRICE.0, GEMINI_PRICE.1,
            ),
        ))
    }

    /// A fresh root whose factory config has `max_concurrent`, no retry
    /// backoff, a short grace and heartbeat, and the `adapters` and
    /// `prices` given (YAML map entries, one per line), without the
    /// shipped roles.
    fn with_config(
        label: &'static str,
        name: &'static str,
        max_concurrent: u32,
        adapters: &str,
        prices: &str,
    ) -> E2e {
        first_start();
        let root = TestRoot::new();
        root.write(
            "agents/factory/config.yaml",
            format!(
                "max_concurrent: {max_concurrent}\nretry_backoff: 0s\nstop_grace: 1s\nheartbeat: 2s\n\
                 adapters:\n{adapters}prices:\n{prices}"
            ),
        );
        // The shipped roles would route nothing here; keep them out.
        for r in [
            "research", "builder", "tester", "fixer", "shell", "openclaw",
        ] {
            let _ = std::fs::remove_file(root.path().join(format!("agents/templates/{r}.md")));
        }
        E2e {
            root,
            label,
            name,
            started: Instant::now(),
        }
    }

    /// Writes `agents/templates/<name>.md`.
    fn template(&self, name: &str, frontmatter: &str, set_env: &[(&str, String)]) {
        let mut s = format!("---\n{}\nenv: [PATH]\nset_env:\n", frontmatter.trim());
        for (k, v) in set_env {
            s.push_str(&format!("  {k}: {}\n", serde_json::to_string(v).unwrap()));
        }
        s.push_str("---\nYou are an end-to-end test agent. Do what the task asks.\n");
        self.root.write(&format!("agents/templates/{name}.md"), s);
    }

    /// A Claude Code role pointed at `url`. `settings` adds frontmatter
    /// lines (`permission_mode: acceptEdits`, `retries: 1`, ...);
    /// `set_env` overrides or adds variables.
    pub fn claude_role(
        &self,
        name: &str,
        prefix: &str,
        url: &str,
        settings: &str,
        set_env: &[(&str, &str)],
    ) {
        let mut env: Vec<(&str, String)> = vec![
            ("HOME", "{workspace}/.home".into()),
            ("CLAUDE_CONFIG_DIR", "{workspace}/.claude".into()),
            ("TMPDIR", "{workspace}/.tmp".into()),
            ("ANTHROPIC_BASE_URL", url.into()),
            ("ANTHROPIC_API_KEY", "mock-key".into()),
            ("CLAUDE_CODE_MAX_RETRIES", "0".into()),
            ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".into()),
            ("DISABLE_TELEMETRY", "1".into()),
            ("DISABLE_AUTOUPDATER", "1".into()),
            ("DISABLE_ERROR_REPORTING", "1".into()),
        ];
        override_env(&mut env, set_env);
        self.template(
            name,
            &format!(
                "prefix: {prefix}\nagent: claude\nmodel: {CLAUDE_MODEL}\n{}{settings}",
                default_timeout(settings)
            ),
            &env,
        );
    }

    /// A Codex role pointed at `url` through `$CODEX_HOME/config.toml`
    /// (a custom provider: codex ignores OPENAI_BASE_URL), written into
    /// the workspaces of the agent ids this root may hand out.
    pub fn codex_role(&self, name: &str, prefix: &str, url: &str, settings: &str) {
        let env: Vec<(&str, String)> = vec![
            ("HOME", "{workspace}/.home".into()),
            ("CODEX_HOME", "{workspace}/.codex".into()),
            ("TMPDIR", "{workspace}/.tmp".into()),
            ("MOCK_API_KEY", "mock-key".into()),
        ];
        self.template(
            name,
            &format!(
                "prefix: {prefix}\nagent: codex\nmodel: {CODEX_MODEL}\n{}{settings}",
                default_timeout(settings)
            ),
            &env,
        );
        let config = format!(
            "model_provider = \"mock\"\n\n[model_providers.mock]\nname = \"mock\"\n\
             base_url = \"{url}/v1\"\nwire_api = \"responses\"\nenv_key = \"MOCK_API_KEY\"\n\
             request_max_retries = 0\nstream_max_retries = 0\n\n[analytics]\nenabled = false\n\n\
             [features]\napps = false\nplugins = false\n"
        );
        for ws in self.workspaces(prefix) {
            self.root
                .write(&format!("{ws}/.codex/config.toml"), &config);
            // Codex's sandbox needs TMPDIR to exist (else the tool call
            // panics: "failed to resolve synthetic mount registry temp
            // directory"); taskq does not create set_env directories.
            std::fs::create_dir_all(self.root.path().join(&ws).join(".tmp")).unwrap();
        }
    }

    /// A Gemini role pointed at `url`; `$HOME/.gemini/settings.json` picks
    /// API-key auth and one attempt per request (the default, 10 attempts
    /// with backoff, takes ~2 min to give up on a 500 or a dead server).
    pub fn gemini_role(&self, name: &str, prefix: &str, url: &str, settings: &str) {
        let env: Vec<(&str, String)> = vec![
            ("HOME", "{workspace}/.home".into()),
            ("TMPDIR", "{workspace}/.tmp".into()),
            ("GOOGLE_GEMINI_BASE_URL", url.into()),
            ("GEMINI_API_KEY", "mock-key".into()),
        ];
        self.template(
            name,
            &format!(
                "prefix: {prefix}\nagent: gemini\nmodel: {GEMINI_MODEL}\n{}{settings}",
                default_timeout(settings)
            ),
            &env,
        );
        for ws in self.workspaces(prefix) {
            self.root.write(
                &format!("{ws}/.home/.gemini/settings.json"),
                r#"{"security":{"auth":{"selectedType":"gemini-api-key"}},"general":{"maxAttempts":1}}"#,
            );
            std::fs::create_dir_all(self.root.path().join(&ws).join(".tmp")).unwrap();
        }
    }

    /// The workspaces of the first agent ids of `prefix` (the registry
    /// numbers agents with one counter for all prefixes).
    fn workspaces(&self, prefix: &str) -> Vec<String> {
        (1..=8)
            .map(|n| format!("agents/workspaces/{prefix}-{n:03}"))
            .collect()
    }

    /// A task for `role`.
    pub fn task(&self, id: &str, role: &str, title: &str, body: &str) {
        self.root.write_task(
            &id.to_lowercase(),
            &format!("id: {id}\nrole: {role}"),
            &format!("# {title}\n\n{body}"),
        );
    }

    /// `taskq run --until-idle`, killed (and failed) past `limit`.
    #[track_caller]
    pub fn run(&self, limit: Duration) -> (Run, Duration) {
        self.root
            .run_until_idle_within(limit, &format!("{} {}", self.label, self.name))
    }

    /// A registry entry.
    #[track_caller]
    pub fn agent(&self, id: &str) -> Value {
        self.root
            .agents()
            .into_iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no agent {id} in the registry: {:#?}", self.root.agents()))
    }

    /// A file in an agent's workspace, if it exists.
    pub fn workspace_file(&self, agent: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.workspace(agent).join(name)).ok()
    }

    /// An agent's workspace.
    pub fn workspace(&self, agent: &str) -> PathBuf {
        self.root.path().join("agents/workspaces").join(agent)
    }

    /// An agent's log.
    pub fn log(&self, agent: &str) -> String {
        self.root.read(&format!("agents/logs/{agent}.log"))
    }

    /// Prints (and returns) the per-CLI figures of one agent: spawn to its
    /// first model request at the mock, run time, peak RSS.
    /// `paused` is how long the mock deliberately waited in total.
    pub fn figures(&self, cli: &str, mock: &Mock, agent: &Value, paused: Duration) -> Figures {
        let id = agent["id"].as_str().unwrap();
        let spawned = timestamp(agent, "spawned");
        let first = mock.model_requests_of(id).into_iter().map(|r| r.at).min();
        let first_request_ms = first.map(|at| {
            let at: chrono::DateTime<chrono::Utc> = at.into();
            (at - spawned.with_timezone(&chrono::Utc)).num_milliseconds()
        });
        let f = Figures {
            first_request_ms,
            duration_ms: agent["duration_ms"].as_u64(),
            max_rss_kb: agent["max_rss_kb"].as_u64(),
        };
        eprintln!(
            "{} figures: {cli} ({id}): spawn to first model request {} ms, run {} ms \
             ({} ms without the mock's {} ms of pauses), peak RSS {} MB",
            self.label,
            f.first_request_ms.map_or("?".into(), |v| v.to_string()),
            f.duration_ms.map_or("?".into(), |v| v.to_string()),
            f.duration_ms.map_or("?".into(), |v| v
                .saturating_sub(paused.as_millis() as u64)
                .to_string()),
            paused.as_millis(),
            f.max_rss_kb
                .map_or("?".into(), |v| format!("{:.0}", v as f64 / 1024.0)),
        );
        f
    }
}

impl Drop for E2e {
    fn drop(&mut self) {
        eprintln!(
            "{} {}: {:.1} s (e2e wall time so far: {:.1} s)",
            self.label,
            self.name,
            self.started.elapsed().as_secs_f64(),
            first_start().elapsed().as_secs_f64()
        );
    }
}

/// One agent's measured figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub first_request_ms: Option<i64>,
    pub duration_ms: Option<u64>,
    pub max_rss_kb: Option<u64>,
}

/// `timeout: 120s` unless the settings give one.
fn default_timeout(settings: &str) -> &'static str {
    if settings
        .lines()
        .any(|l| l.trim_start().starts_with("timeout:"))
    {
        ""
    } else {
        "timeout: 120s\n"
    }
}

fn override_env<'a>(env: &mut Vec<(&'a str, String)>, with: &[(&'a str, &str)]) {
    for (k, v) in with {
        env.retain(|(x, _)| x != k);
        env.push((k, v.to_string()));
    }
}

/// The `{"type":"result"}` object Claude printed in a log.
pub fn claude_result(log: &str) -> Value {
    taskq::agent::json_lines(log)
        .filter(|v| v["type"] == "result")
        .last()
        .unwrap_or_else(|| panic!("no claude result in the log:\n{log}"))
}

/// Equal but for floating-point rounding (costs are sums of products).
pub fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 + b.abs() * 1e-6
}
