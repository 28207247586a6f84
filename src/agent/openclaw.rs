//! OpenClaw: `openclaw agent exec --message-file FILE --json --model
//! provider/model --cwd WORKSPACE [--timeout SECONDS] [--fallback M]...
//! [--config FILE]`, one isolated headless turn. Its output is one JSON
//! envelope `{ok, status, final, usage, assistantTurns, model, provider,
//! sessionId, error}`.

use serde_json::Value;

use super::{exit_reason, last_json_object, u64_at, CommandLine, Invocation, Outcome};
use crate::registry::Tokens;

/// The command line.
pub fn command(inv: &Invocation<'_>) -> CommandLine {
    let s = &inv.role.settings;
    let mut args = vec![
        "agent".to_string(),
        "exec".into(),
        "--message-file".into(),
        inv.prompt_file.display().to_string(),
        "--json".into(),
    ];
    if let Some(m) = inv.model {
        args.extend(["--model".into(), m.to_string()]);
    }
    for f in &s.fallback_models {
        if Some(f.as_str()) != inv.model {
            args.extend(["--fallback".into(), f.clone()]);
        }
    }
    args.extend(["--cwd".into(), inv.workspace.display().to_string()]);
    // OpenClaw counts its --timeout from the start of its run (after
    // seconds of start-up); taskq counts from the spawn. Give OpenClaw the
    // smaller limit so it ends cleanly, with its envelope, before taskq
    // has to kill it.
    let secs = s.timeout.as_secs();
    let own = if secs > 20 {
        secs - 10
    } else {
        (secs / 2).max(1)
    };
    args.extend(["--timeout".into(), own.to_string()]);
    if let Some(config) = &s.config {
        args.extend(["--config".into(), config.clone()]);
    }
    CommandLine {
        program: inv.config.adapter_program("openclaw"),
        args,
        env: Vec::new(),
    }
}

/// Reads the JSON envelope.
pub fn parse(output: &str, exit_code: Option<i32>) -> Outcome {
    let Some(v) = last_json_object(output, |v| {
        v.get("ok").is_some() || v.get("status").is_some()
    }) else {
        return Outcome {
            success: false,
            reason: Some(format!(
                "no result from openclaw ({})",
                exit_reason(exit_code)
            )),
            ..Outcome::default()
        };
    };
    let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
    let status = v.get("status").and_then(Value::as_str).unwrap_or("");
    let usage = v.get("usage");
    // OpenClaw's `input`, `cacheRead` and `cacheWrite` are disjoint (its
    // `total` is their sum plus `output`); cache writes priced as input.
    let tokens = usage.map(|u| Tokens {
        input: u64_at(u, &["input"]).unwrap_or(0)
            + u64_at(u, &["cacheRead"]).unwrap_or(0)
            + u64_at(u, &["cacheWrite"]).unwrap_or(0),
        output: u64_at(u, &["output"]).unwrap_or(0),
        cached_input: u64_at(u, &["cacheRead"]).unwrap_or(0),
    });
    let error = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_string);
    let reason = if ok && status == "ok" && exit_code == Some(0) {
        None
    } else if status == "timeout" {
        Some(format!(
            "openclaw timed out{}",
            error.map(|e| format!(": {e}")).unwrap_or_default()
        ))
    } else {
        Some(match error {
            Some(e) => format!("openclaw: {e}"),
            None => format!("openclaw status `{status}` ({})", exit_reason(exit_code)),
        })
    };
    let model = match (
        v.get("provider").and_then(Value::as_str),
        v.get("model").and_then(Value::as_str),
    ) {
        (Some(p), Some(m)) if !m.contains('/') => Some(format!("{p}/{m}")),
        (_, Some(m)) => Some(m.to_string()),
        _ => None,
    };
    Outcome {
        success: reason.is_none(),
        reason,
        result: v.get("final").and_then(Value::as_str).map(str::to_string),
        cost_usd: v
            .pointer("/usage/cost/total")
            .and_then(Value::as_f64)
            .and_then(crate::money::Usd::from_f64),
        tokens,
        num_turns: v
            .get("assistantTurns")
            .and_then(Value::as_u64)
            .map(|n| n as u32),
        session_id: v
            .get("sessionId")
            .and_then(Value::as_str)
            .map(str::to_string),
        model,
        timed_out: status == "timeout",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_envelope() {
        let out = r#"{"ok":true,"status":"ok","final":"Hi.","usage":{"input":12,"output":3,"cacheRead":0,"cacheWrite":0,"total":15,"cost":{"total":0}},"assistantTurns":1,"model":"claude-haiku-4-5","provider":"anthropic","sessionId":"s"}"#;
        let o = parse(out, Some(0));
        assert!(o.success);
        assert_eq!(o.model.as_deref(), Some("anthropic/claude-haiku-4-5"));
        assert_eq!(
            o.tokens,
            Some(Tokens {
                input: 12,
                output: 3,
                cached_input: 0
            })
        );
        // A custom provider reports cost 0: priced from the tokens, cache
        // reads at their own price (10k × $3 + 30k × $0.30 + 1k × $15).
        let cached = r#"{"ok":true,"status":"ok","final":"Hi.","usage":{"input":10000,"output":1000,"cacheRead":30000,"cacheWrite":0,"total":41000,"cost":{"total":0}},"model":"claude-haiku-4-5","provider":"anthropic"}"#;
        let mut config = crate::config::Config::default();
        config.prices.insert(
            "claude-haiku-4-5".into(),
            crate::config::Price {
                input: 3.0,
                output: 15.0,
                cached_input: Some(0.3),
            },
        );
        let o = super::super::parse(
            crate::agent::Adapter::Openclaw,
            cached,
            Some(0),
            None,
            &config,
        );
        assert_eq!(o.cost_usd.unwrap().to_string(), "$0.054");
        // No price: unknown, not $0.
        let o = super::super::parse(
            crate::agent::Adapter::Openclaw,
            cached,
            Some(0),
            None,
            &crate::config::Config::default(),
        );
        assert_eq!(o.cost_usd, None);
        let bad = r#"{"ok":false,"status":"error","error":{"message":"Unknown model: x/y","kind":"model"}}"#;
        assert_eq!(
            parse(bad, Some(1)).reason.as_deref(),
            Some("openclaw: Unknown model: x/y")
        );
    }
}
