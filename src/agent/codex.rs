//! Codex: `codex exec --json -m M --skip-git-repo-check --sandbox
//! workspace-write -C WORKSPACE -c developer_instructions="SOUL" PROMPT`.
//!
//! Its output is JSON lines. An `error` item does not mean failure;
//! `turn.completed` (with usage) vs `turn.failed` and the exit code decide.

use serde_json::Value;

use super::{exit_reason, json_lines, u64_at, CommandLine, Invocation, Outcome};
use crate::registry::Tokens;

/// The command line.
pub fn command(inv: &Invocation<'_>) -> CommandLine {
    let mut args = vec!["exec".to_string(), "--json".into()];
    if let Some(m) = inv.model {
        args.extend(["-m".into(), m.to_string()]);
    }
    args.extend([
        "--skip-git-repo-check".into(),
        "--sandbox".into(),
        inv.role
            .settings
            .permission_mode
            .clone()
            .unwrap_or_else(|| "workspace-write".into()),
        "-C".into(),
        inv.workspace.display().to_string(),
    ]);
    if !inv.soul.trim().is_empty() {
        args.extend([
            "-c".into(),
            format!("developer_instructions={}", toml_string(inv.soul.trim())),
        ]);
    }
    args.push(inv.prompt.to_string());
    CommandLine {
        program: inv.config.adapter_program("codex"),
        args,
        env: Vec::new(),
    }
}

/// A TOML basic string, so `-c` never misreads the SOUL as TOML syntax.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Reads the JSONL events.
pub fn parse(output: &str, exit_code: Option<i32>) -> Outcome {
    let mut completed = None::<Value>;
    let mut failed = None::<String>;
    let mut message = None::<String>;
    let mut session = None::<String>;
    let mut last_error = None::<String>;
    for ev in json_lines(output) {
        match ev.get("type").and_then(Value::as_str).unwrap_or("") {
            "thread.started" => {
                session = ev
                    .get("thread_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
            "item.completed" => {
                let item = ev.get("item").cloned().unwrap_or(Value::Null);
                match item.get("type").and_then(Value::as_str) {
                    Some("agent_message") => {
                        message = item.get("text").and_then(Value::as_str).map(str::to_string)
                    }
                    Some("error") => {
                        last_error = item
                            .get("message")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    }
                    _ => {}
                }
            }
            "turn.completed" => completed = Some(ev),
            "turn.failed" => {
                failed = Some(
                    ev.pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("turn failed")
                        .to_string(),
                )
            }
            "error" => {
                last_error = ev
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
            _ => {}
        }
    }
    let tokens = completed
        .as_ref()
        .and_then(|c| c.get("usage"))
        // codex-rs `TokenUsage`: `cached_input_tokens` is part of
        // `input_tokens` (its `non_cached_input()` subtracts it), and
        // `reasoning_output_tokens` part of `output_tokens` (its
        // `blended_total()` is non-cached input + output): adding reasoning
        // again would charge it twice.
        .map(|u| Tokens {
            input: u64_at(u, &["input_tokens"]).unwrap_or(0),
            output: u64_at(u, &["output_tokens"]).unwrap_or(0),
            cached_input: u64_at(u, &["cached_input_tokens"]).unwrap_or(0),
        });
    let reason = if let Some(f) = failed {
        Some(format!("codex turn failed: {f}"))
    } else if completed.is_none() {
        Some(match last_error {
            Some(e) => format!("codex did not complete the turn: {e}"),
            None => format!(
                "codex did not complete the turn ({})",
                exit_reason(exit_code)
            ),
        })
    } else if exit_code != Some(0) {
        Some(format!("codex ended with {}", exit_reason(exit_code)))
    } else {
        None
    };
    Outcome {
        success: reason.is_none(),
        reason,
        result: message,
        cost_usd: None,
        tokens,
        num_turns: None,
        session_id: session,
        model: None,
        timed_out: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_fatal_error_item_with_turn_completed_is_success() {
        let out = "{\"type\":\"thread.started\",\"thread_id\":\"t1\"}\n{\"type\":\"turn.started\"}\n\
                   {\"type\":\"item.completed\",\"item\":{\"type\":\"error\",\"message\":\"unknown model\"}}\n\
                   {\"type\":\"item.completed\",\"item\":{\"type\":\"agent_message\",\"text\":\"Done.\"}}\n\
                   {\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":100,\"cached_input_tokens\":0,\"output_tokens\":20,\"reasoning_output_tokens\":5}}\n";
        let o = parse(out, Some(0));
        assert!(o.success, "{o:?}");
        assert_eq!(o.result.as_deref(), Some("Done."));
        assert_eq!(
            o.tokens,
            Some(Tokens {
                input: 100,
                output: 20,
                cached_input: 0
            })
        );
        assert_eq!(o.session_id.as_deref(), Some("t1"));
        let o = parse(
            "{\"type\":\"turn.failed\",\"error\":{\"message\":\"stream error\"}}\n",
            Some(1),
        );
        assert_eq!(o.reason.as_deref(), Some("codex turn failed: stream error"));
    }

    /// The measured case: 100k input, 20k output of which 15k reasoning,
    /// at $1.25 / $10 per million: $0.325 (reasoning counted twice, it
    /// was $0.475); with 40k of the input from the cache at $0.125,
    /// $0.28.
    #[test]
    fn reasoning_is_inside_output_and_cached_input_priced_apart() {
        let out = "{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":100000,\"cached_input_tokens\":0,\"output_tokens\":20000,\"reasoning_output_tokens\":15000}}\n";
        let mut config = crate::config::Config::default();
        config.prices.insert(
            "gpt-5".into(),
            crate::config::Price {
                input: 1.25,
                output: 10.0,
                cached_input: Some(0.125),
            },
        );
        let o = super::super::parse(
            crate::agent::Adapter::Codex,
            out,
            Some(0),
            Some("gpt-5"),
            &config,
        );
        assert_eq!(o.cost_usd.unwrap().to_string(), "$0.325");
        let cached = out.replace("\"cached_input_tokens\":0", "\"cached_input_tokens\":40000");
        let o = super::super::parse(
            crate::agent::Adapter::Codex,
            &cached,
            Some(0),
            Some("gpt-5"),
            &config,
        );
        assert_eq!(o.cost_usd.unwrap().to_string(), "$0.28");
    }

    #[test]
    fn soul_is_passed_as_a_toml_string() {
        assert_eq!(toml_string("a \"b\"\nc"), "\"a \\\"b\\\"\\nc\"");
    }
}
