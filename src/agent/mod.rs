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

use crate::config::{Config, Price};
use crate::money::Usd;
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
    /// Reported cost (Claude, OpenClaw); after [`parse`], tokens × the
    /// config's prices when the CLI reported none. `None`: unknown.
    pub cost_usd: Option<Usd>,
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
/// `None` when the process was killed by a signal. Read on every end (a
/// timeout and a stop too: Claude prints its result, with its cost, after
/// a SIGTERM).
pub fn parse(
    adapter: Adapter,
    output: &str,
    exit_code: Option<i32>,
    model: Option<&str>,
    config: &Config,
) -> Outcome {
    let mut outcome = adapter.parse_output(output, exit_code);
    let priced = outcome.model.clone();
    outcome.cost_usd = cost(&outcome, priced.as_deref().or(model), config);
    outcome
}

/// What a run cost: the CLI's own report when it is above zero; else its
/// tokens × the model's price; else a report of zero with no token spent
/// (nothing reached a model). `None`: unknown (no report, and no tokens or
/// no price: OpenClaw reports 0 for a custom provider whatever it spent).
pub fn cost(outcome: &Outcome, model: Option<&str>, config: &Config) -> Option<Usd> {
    if let Some(c) = outcome.cost_usd.filter(|c| !c.is_zero()) {
        return Some(c);
    }
    let tokens = outcome.tokens;
    if let (Some(t), Some(p)) = (tokens, model.and_then(|m| price_for(config, m))) {
        return Some(price_tokens(&t, &p));
    }
    match (outcome.cost_usd, tokens) {
        (Some(zero), t) if t.is_none_or(|t| t.is_empty()) => Some(zero),
        (None, Some(t)) if t.is_empty() => Some(Usd::ZERO),
        _ => None,
    }
}

/// The cost recorded for a run of `adapter`: the amount, else `unknown`
/// for a model CLI (never a silent zero); shell and command agents cost
/// nothing (`None`).
pub fn recorded_cost(adapter: Adapter, cost: Option<Usd>) -> Option<crate::money::Cost> {
    use crate::money::Cost;
    match (cost, adapter.is_model_cli()) {
        (Some(c), _) => Some(Cost::Known(c)),
        (None, true) => Some(Cost::Unknown),
        (None, false) => None,
    }
}

/// Tokens × a price per million tokens: non-cached input at `input`,
/// cache reads at `cached_input` (default `input`), output (reasoning
/// included) at `output`; rounded once, to the micro-dollar.
pub fn price_tokens(t: &Tokens, p: &Price) -> Usd {
    let cached = t.cached_input.min(t.input);
    // A price per million tokens is micro-dollars per token.
    let micros = (t.input - cached) as f64 * p.input
        + cached as f64 * p.cached_input.unwrap_or(p.input)
        + t.output as f64 * p.output;
    Usd::from_micros_f64(micros).unwrap_or(Usd(i64::MAX))
}

/// The price of a model: exact name, else the name without a
/// `provider/` prefix.
pub fn price_for(config: &Config, model: &str) -> Option<Price> {
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

/// Why a run of `adapter` with `model` would end with an unknown cost: it
/// is a model CLI that reports no cost of its own (Codex, Gemini) and
/// `prices` has no entry for the model. Claude and OpenClaw report their
/// cost (OpenClaw's is 0 for a custom provider: such a run is then priced
/// from `prices`, or recorded as unknown). `None`: its cost is known.
pub fn unpriced(config: &Config, adapter: Adapter, model: Option<&str>) -> Option<String> {
    if !matches!(adapter, Adapter::Codex | Adapter::Gemini) {
        return None;
    }
    match model {
        Some(m) if price_for(config, m).is_some() => None,
        Some(m) => Some(format!(
            "model `{m}` has no price in the config's `prices` and {adapter} reports no cost"
        )),
        None => Some(format!(
            "{adapter} runs its default model, which `prices` cannot name, and reports no cost"
        )),
    }
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

    fn price(input: f64, output: f64, cached: Option<f64>) -> Price {
        Price {
            input,
            output,
            cached_input: cached,
        }
    }

    #[test]
    fn tokens_are_priced_to_the_micro_dollar() {
        let t = Tokens {
            input: 100_000,
            output: 20_000,
            cached_input: 40_000,
        };
        // 60k × $1.25 + 40k × $0.125 + 20k × $10 per million.
        assert_eq!(
            price_tokens(&t, &price(1.25, 10.0, Some(0.125))),
            Usd::parse("0.28").unwrap()
        );
        // Without a cached price, cache reads cost the input price.
        assert_eq!(
            price_tokens(&t, &price(1.25, 10.0, None)),
            Usd::parse("0.325").unwrap()
        );
    }

    #[test]
    fn cost_prefers_the_report_then_prices_else_unknown() {
        let mut config = Config::default();
        let tokens = Some(Tokens {
            input: 1_000_000,
            output: 0,
            cached_input: 0,
        });
        let o = |cost: Option<f64>, tokens: Option<Tokens>| Outcome {
            cost_usd: cost.and_then(Usd::from_f64),
            tokens,
            ..Outcome::default()
        };
        assert_eq!(
            cost(&o(Some(1.2), tokens), Some("m"), &config),
            Usd::from_f64(1.2)
        );
        // A report of zero for tokens spent, no price: unknown, never $0.
        assert_eq!(cost(&o(Some(0.0), tokens), Some("m"), &config), None);
        assert_eq!(cost(&o(None, tokens), Some("m"), &config), None);
        assert_eq!(cost(&o(None, None), Some("m"), &config), None);
        // Nothing reached a model: $0 is the truth.
        assert_eq!(
            cost(&o(Some(0.0), None), Some("m"), &config),
            Some(Usd::ZERO)
        );
        config.prices.insert("m".into(), price(3.0, 15.0, None));
        assert_eq!(
            cost(&o(Some(0.0), tokens), Some("p/m"), &config),
            Usd::from_f64(3.0)
        );
        assert_eq!(unpriced(&config, Adapter::Codex, Some("m")), None);
        assert!(unpriced(&config, Adapter::Codex, Some("x")).is_some());
        assert!(unpriced(&config, Adapter::Gemini, None).is_some());
        assert_eq!(unpriced(&config, Adapter::Claude, Some("x")), None);
        assert_eq!(unpriced(&config, Adapter::Shell, None), None);
    }

    #[test]
    fn summary_is_the_first_line() {
        assert_eq!(summary("\n  Built the API.\nDetails..."), "Built the API.");
    }
}
