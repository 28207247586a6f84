//! Adapters: how each agent CLI is started and how its output is read.
//!
//! One file per CLI, each with `command` (the exact command line, as
//! measured in shared/agent-clis.md) and `parse` (the final structured
//! output into an [`Outcome`]). Success is never guessed from terminal
//! text: it is the CLI's own structured verdict plus its exit code.

pub mod claude;
pub mod codex;
pub mod gemini;
pub mod openclaw;
pub mod shell;

use std::path::Path;

use serde_json::Value;

use crate::config::Config;
use crate::registry::Tokens;
use crate::role::Role;

/// Everything an adapter needs to build a command line.
#[derive(Debug)]
pub struct Invocation<'a> {
    /// The role.
    pub role: &'a Role,
    /// The task id.
    pub task_id: &'a str,
    /// The agent id.
    pub agent_id: &'a str,
    /// The model for this attempt.
    pub model: Option<&'a str>,
    /// The task prompt (task, its body, its dependencies' results).
    pub prompt: &'a str,
    /// The same prompt, written to a file.
    pub prompt_file: &'a Path,
    /// The role's SOUL (template body).
    pub soul: &'a str,
    /// The agent's working directory.
    pub workspace: &'a Path,
    /// The session to start or resume (claude).
    pub session: Session<'a>,
    /// The task's body (the shell adapter runs its ```sh blocks).
    pub task_body: &'a str,
    /// A `command:` given by the task itself (command adapter).
    pub task_command: Option<&'a str>,
    /// The factory config (adapter programs).
    pub config: &'a Config,
}

/// Session handling for CLIs that support it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session<'a> {
    /// Start a session with this id.
    New(&'a str),
    /// Resume this session.
    Resume(&'a str),
}

/// A command line to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The program.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Variables the adapter itself needs set.
    pub env: Vec<(String, String)>,
}

/// What an agent run came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The agent did what it was asked.
    pub success: bool,
    /// Why not, in one line.
    pub reason: Option<String>,
    /// The final message / result text.
    pub result: Option<String>,
    /// Reported cost in USD (Claude); computed from tokens otherwise.
    pub cost_usd: Option<f64>,
    /// Tokens.
    pub tokens: Option<Tokens>,
    /// Turns.
    pub num_turns: Option<u32>,
    /// Session id.
    pub session_id: Option<String>,
    /// The model that actually answered, where the CLI names exactly one.
    pub model: Option<String>,
    /// The CLI itself stopped on its own time limit.
    pub timed_out: bool,
}

/// The agent CLIs taskq can drive. Adding one is a file in this folder
/// and a variant here: every `match` on it is then pointed out by the
/// compiler.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Adapter {
    /// Claude Code (`claude -p`), the default.
    #[default]
    Claude,
    /// OpenAI Codex CLI (`codex exec`).
    Codex,
    /// Gemini CLI (`gemini -p`).
    Gemini,
    /// OpenClaw (`openclaw agent exec`).
    Openclaw,
    /// The task's own ```sh blocks, run by `sh -e`.
    Shell,
    /// A command line from the role (`command:`).
    Command,
}

impl Adapter {
    /// Every adapter, in the order the docs list them.
    pub const ALL: [Adapter; 6] = [
        Adapter::Claude,
        Adapter::Codex,
        Adapter::Gemini,
        Adapter::Openclaw,
        Adapter::Shell,
        Adapter::Command,
    ];

    /// The name roles and the registry use.
    pub fn name(self) -> &'static str {
        match self {
            Adapter::Claude => "claude",
            Adapter::Codex => "codex",
            Adapter::Gemini => "gemini",
            Adapter::Openclaw => "openclaw",
            Adapter::Shell => "shell",
            Adapter::Command => "command",
        }
    }

    /// A model CLI (as opposed to a shell command): it takes a prompt and
    /// a model, reports tokens, and gives its verdict in its final message.
    pub fn is_model_cli(self) -> bool {
        match self {
            Adapter::Claude | Adapter::Codex | Adapter::Gemini | Adapter::Openclaw => true,
            Adapter::Shell | Adapter::Command => false,
        }
    }

    /// Sessions taskq can resume after a crash (`--resume`).
    pub fn resumes_sessions(self) -> bool {
        matches!(self, Adapter::Claude)
    }

    /// The program started, unless a role or the config names another
    /// (`None`: the command line decides, as for `command:`).
    pub fn program(self, config: &Config) -> Option<String> {
        match self {
            Adapter::Shell | Adapter::Command => None,
            model => Some(config.adapter_program(model.name())),
        }
    }

    /// Builds the command line for this adapter.
    pub fn command(self, inv: &Invocation<'_>) -> Result<CommandLine, String> {
        let mut line = match self {
            Adapter::Claude => claude::command(inv),
            Adapter::Codex => codex::command(inv),
            Adapter::Gemini => gemini::command(inv),
            Adapter::Openclaw => openclaw::command(inv),
            Adapter::Shell => shell::shell_command(inv)?,
            Adapter::Command => shell::custom_command(inv)?,
        };
        line.args.extend(inv.role.settings.args.iter().cloned());
        Ok(line)
    }

    fn parse_output(self, output: &str, exit_code: Option<i32>) -> Outcome {
        match self {
            Adapter::Claude => claude::parse(output, exit_code),
            Adapter::Codex => codex::parse(output, exit_code),
            Adapter::Gemini => gemini::parse(output, exit_code),
            Adapter::Openclaw => openclaw::parse(output, exit_code),
            Adapter::Shell | Adapter::Command => shell::parse(output, exit_code),
        }
    }
}

impl std::fmt::Display for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Adapter {
    type Err = String;

    fn from_str(s: &str) -> Result<Adapter, String> {
        Adapter::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Adapter::ALL.iter().map(|a| a.name()).collect();
                format!("unknown agent `{s}` (one of: {})", names.join(", "))
            })
    }
}

impl TryFrom<String> for Adapter {
    type Error = String;

    fn try_from(s: String) -> Result<Adapter, String> {
        s.parse()
    }
}

/// Builds the command line for a role's adapter.
pub fn command(inv: &Invocation<'_>) -> Result<CommandLine, String> {
    inv.role.settings.agent.command(inv)
}

/// Reads an agent's output (its log) into an outcome. `exit_code` is
/// `None` when the process was killed by a signal.
pub fn parse(
    adapter: Adapter,
    output: &str,
    exit_code: Option<i32>,
    model: Option<&str>,
    config: &Config,
) -> Outcome {
    let mut outcome = adapter.parse_output(output, exit_code);
    // CLIs that report only tokens: cost from the config's price table.
    if outcome.cost_usd.is_none_or(|c| c == 0.0) {
        let priced = outcome.model.as_deref().or(model);
        if let (Some(tokens), Some(price)) =
            (outcome.tokens, priced.and_then(|m| price_for(config, m)))
        {
            outcome.cost_usd = Some(
                (tokens.input as f64 * price.input + tokens.output as f64 * price.output)
                    / 1_000_000.0,
            );
        }
    }
    outcome
}

/// The price of a model: exact name, else the name without a
/// `provider/` prefix.
fn price_for(config: &Config, model: &str) -> Option<crate::config::Price> {
    config
        .prices
        .get(model)
        .or_else(|| {
            model
                .rsplit_once('/')
                .and_then(|(_, m)| config.prices.get(m))
        })
        .copied()
}

/// The last complete JSON object in `output` for which `accept` holds:
/// logs mix stderr lines and (possibly pretty-printed) JSON, so try each
/// line that starts with `{`, from the end.
pub fn last_json_object(output: &str, accept: impl Fn(&Value) -> bool) -> Option<Value> {
    let starts: Vec<usize> = std::iter::once(0)
        .chain(output.match_indices('\n').map(|(i, _)| i + 1))
        .filter(|&i| output[i..].starts_with('{'))
        .collect();
    for &start in starts.iter().rev() {
        let mut de = serde_json::Deserializer::from_str(&output[start..]).into_iter::<Value>();
        if let Some(Ok(v)) = de.next() {
            if v.is_object() && accept(&v) {
                return Some(v);
            }
        }
    }
    None
}

/// Every JSON object that fills a line of `output` (JSONL events).
pub fn json_lines(output: &str) -> impl Iterator<Item = Value> + '_ {
    output
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
}

/// A result's first non-empty line, at most 200 characters: what goes in
/// a task's `result:`.
pub fn summary(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut s: String = line.chars().take(200).collect();
    if line.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// The output's last non-empty line (what a CLI said before it failed
/// without structured output), at most 200 characters.
pub fn last_line(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(summary)
}

/// The `exit N` part of a failure reason.
fn exit_reason(exit_code: Option<i32>) -> String {
    match exit_code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".into(),
    }
}

/// The model list for attempt `attempt` (1-based): the task's or role's
/// model first, then the role's fallbacks, the last one repeating.
pub fn model_for_attempt(role: &Role, task_model: Option<&str>, attempt: u32) -> Option<String> {
    let mut models: Vec<&str> = Vec::new();
    if let Some(m) = task_model.or(role.settings.model.as_deref()) {
        models.push(m);
    }
    models.extend(role.settings.fallback_models.iter().map(String::as_str));
    if models.is_empty() {
        return None;
    }
    let k = (attempt.max(1) as usize - 1).min(models.len() - 1);
    Some(models[k].to_string())
}

fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_json_object_among_log_lines() {
        let log = "starting\n{\"type\":\"x\"}\nwarn: {not json\n{\n  \"type\": \"result\",\n  \"n\": 1\n}\ntrailing\n";
        let v = last_json_object(log, |v| v["type"] == "result").unwrap();
        assert_eq!(v["n"], 1);
        assert!(last_json_object("nothing", |_| true).is_none());
    }

    #[test]
    fn summary_is_the_first_line() {
        assert_eq!(summary("\n  Built the API.\nDetails..."), "Built the API.");
    }
}
