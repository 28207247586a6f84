//! Claude Code: `claude -p PROMPT --output-format json --model M
//! --append-system-prompt SOUL [--max-turns N] [--permission-mode MODE]
//! [--allowedTools "A B"] (--session-id ID | --resume ID)`.
//!
//! Its final output is one JSON object. Success is `is_error == false` and
//! exit 0, never `subtype` (which says "success" on an API error); a
//! non-empty `permission_denials` means the agent was blocked.

use serde_json::Value;

use super::{exit_reason, last_json_object, u64_at, CommandLine, Invocation, Outcome, Session};
use crate::money::Usd;
use crate::registry::Tokens;

/// The command line.
pub fn command(inv: &Invocation<'_>) -> CommandLine {
    let s = &inv.role.settings;
    let mut args = vec![
        "-p".to_string(),
        inv.prompt.to_string(),
        "--output-format".into(),
        "json".into(),
    ];
    if let Some(m) = inv.model {
        args.extend(["--model".into(), m.to_string()]);
    }
    if !inv.soul.trim().is_empty() {
        args.extend(["--append-system-prompt".into(), inv.soul.trim().to_string()]);
    }
    if let Some(n) = s.max_turns {
        args.extend(["--max-turns".into(), n.to_string()]);
    }
    if let Some(mode) = &s.permission_mode {
        args.extend(["--permission-mode".into(), mode.clone()]);
    }
    if !s.allowed_tools.is_empty() {
        args.extend(["--allowedTools".into(), s.allowed_tools.join(" ")]);
    }
    match inv.session {
        Session::New(id) => args.extend(["--session-id".into(), id.to_string()]),
        Session::Resume(id) => args.extend(["--resume".into(), id.to_string()]),
    }
    CommandLine {
        program: inv.config.adapter_program("claude"),
        args,
        env: Vec::new(),
    }
}

/// Reads the final `{"type":"result",...}` object.
pub fn parse(output: &str, exit_code: Option<i32>) -> Outcome {
    let Some(v) = last_json_object(output, |v| {
        v.get("type").and_then(Value::as_str) == Some("result")
    }) else {
        return Outcome {
            success: false,
            reason: Some(format!(
                "no result from claude ({}){}",
                exit_reason(exit_code),
                super::last_line(output)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            )),
            ..Outcome::default()
        };
    };
    let is_error = v.get("is_error").and_then(Value::as_bool).unwrap_or(true);
    let result = v.get("result").and_then(Value::as_str).map(str::to_string);
    let denials: Vec<String> = v
        .get("permission_denials")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|d| {
                    d.get("tool_name")
                        .and_then(Value::as_str)
                        .unwrap_or("a tool")
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    let usage = v.get("usage");
    // Claude's input fields are disjoint: total input is their sum. Cache
    // writes are priced as input (Claude reports its own cost anyway).
    let tokens = usage.map(|u| Tokens {
        input: u64_at(u, &["input_tokens"]).unwrap_or(0)
            + u64_at(u, &["cache_creation_input_tokens"]).unwrap_or(0)
            + u64_at(u, &["cache_read_input_tokens"]).unwrap_or(0),
        output: u64_at(u, &["output_tokens"]).unwrap_or(0),
        cached_input: u64_at(u, &["cache_read_input_tokens"]).unwrap_or(0),
    });
    let subtype = v.get("subtype").and_then(Value::as_str).unwrap_or("");
    let reason = if !denials.is_empty() {
        let mut tools = denials.clone();
        tools.dedup();
        Some(format!(
            "blocked: permission denied for {}",
            tools.join(", ")
        ))
    } else if is_error {
        Some(match subtype {
            "error_max_turns" => format!(
                "hit the turn limit ({} turns)",
                v.get("num_turns").and_then(Value::as_u64).unwrap_or(0)
            ),
            "error_max_budget_usd" => "hit the budget limit (--max-budget-usd)".into(),
            _ => format!(
                "claude reported an error: {}",
                result
                    .as_deref()
                    .map(super::summary)
                    .unwrap_or_else(|| subtype.to_string())
            ),
        })
    } else if exit_code != Some(0) {
        Some(format!("claude ended with {}", exit_reason(exit_code)))
    } else {
        None
    };
    Outcome {
        success: reason.is_none(),
        reason,
        result,
        cost_usd: v
            .get("total_cost_usd")
            .and_then(Value::as_f64)
            .and_then(Usd::from_f64),
        tokens,
        num_turns: v.get("num_turns").and_then(Value::as_u64).map(|n| n as u32),
        session_id: v
            .get("session_id")
            .and_then(Value::as_str)
            .map(str::to_string),
        // Claude Code also uses a small model for side work: name the model
        // only when a single one answered.
        model: v
            .get("modelUsage")
            .and_then(Value::as_object)
            .filter(|m| m.len() == 1)
            .and_then(|m| m.keys().next().cloned()),
        timed_out: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Claude Code prints when taskq's SIGTERM (a timeout, a stop)
    /// cuts it off: an error result that still carries what it spent.
    #[test]
    fn a_result_after_sigterm_still_gives_the_cost() {
        let out = "{\"type\":\"result\",\"subtype\":\"error_during_execution\",\"is_error\":true,\"total_cost_usd\":1.2,\"usage\":{\"input_tokens\":9000,\"output_tokens\":300}}\n";
        let o = parse(out, None);
        assert!(!o.success);
        assert_eq!(o.cost_usd, Some(Usd::parse("1.20").unwrap()));
    }

    #[test]
    fn api_error_with_subtype_success_is_a_failure() {
        let out = r#"{"type":"result","subtype":"success","is_error":true,"result":"API Error: 500 boom","total_cost_usd":0,"session_id":"s1","permission_denials":[]}"#;
        let o = parse(out, Some(1));
        assert!(!o.success);
        assert!(o.reason.unwrap().contains("API Error: 500"));
    }

    #[test]
    fn permission_denials_block_even_with_exit_0() {
        let out = r#"{"type":"result","subtype":"success","is_error":false,"result":"I wrote it","permission_denials":[{"tool_name":"Write"}]}"#;
        let o = parse(out, Some(0));
        assert_eq!(
            o.reason.as_deref(),
            Some("blocked: permission denied for Write")
        );
    }

    #[test]
    fn success_reads_cost_tokens_and_session() {
        let out = "log line\n{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"ok\",\"total_cost_usd\":0.42,\
                   \"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":7},\"num_turns\":3,\"session_id\":\"abc\",\
                   \"modelUsage\":{\"claude-sonnet-4-5\":{}},\"permission_denials\":[]}\n";
        let o = parse(out, Some(0));
        assert!(o.success, "{o:?}");
        assert_eq!(o.cost_usd, Usd::from_f64(0.42));
        assert_eq!(
            o.tokens,
            Some(Tokens {
                input: 15,
                output: 7,
                cached_input: 5
            })
        );
        assert_eq!(o.session_id.as_deref(), Some("abc"));
        assert_eq!(o.model.as_deref(), Some("claude-sonnet-4-5"));
        let o = parse(
            r#"{"type":"result","subtype":"error_max_turns","is_error":true,"num_turns":2}"#,
            Some(1),
        );
        assert_eq!(o.reason.as_deref(), Some("hit the turn limit (2 turns)"));
    }
}
