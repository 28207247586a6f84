//! Gemini CLI: `gemini -p PROMPT --output-format json -m M
//! --approval-mode MODE --skip-trust`. It has no system-prompt flag, so the
//! SOUL leads the prompt. Its output is one JSON object `{session_id,
//! response, stats: {models: {ID: {tokens}}}}`, or `error` on failure.

use serde_json::Value;

use super::{exit_reason, last_json_object, CommandLine, Invocation, Outcome};
use crate::registry::Tokens;

/// The command line.
pub fn command(inv: &Invocation<'_>) -> CommandLine {
    let prompt = if inv.soul.trim().is_empty() {
        inv.prompt.to_string()
    } else {
        format!("{}\n\n---\n\n{}", inv.soul.trim(), inv.prompt)
    };
    let mut args = vec![
        "-p".to_string(),
        prompt,
        "--output-format".into(),
        "json".into(),
    ];
    if let Some(m) = inv.model {
        args.extend(["-m".into(), m.to_string()]);
    }
    args.extend([
        "--approval-mode".into(),
        inv.role
            .settings
            .permission_mode
            .clone()
            .unwrap_or_else(|| "auto_edit".into()),
        "--skip-trust".into(),
    ]);
    CommandLine {
        program: inv.config.adapter_program("gemini"),
        args,
        env: Vec::new(),
    }
}

/// Reads the final JSON object.
pub fn parse(output: &str, exit_code: Option<i32>) -> Outcome {
    let Some(v) = last_json_object(output, |v| {
        v.get("response").is_some() || v.get("error").is_some()
    }) else {
        return Outcome {
            success: false,
            reason: Some(match exit_code {
                Some(41) => "gemini: not authenticated (exit 41)".into(),
                Some(55) => "gemini: untrusted directory (exit 55)".into(),
                c => format!("no result from gemini ({})", exit_reason(c)),
            }),
            ..Outcome::default()
        };
    };
    let mut tokens = Tokens::default();
    let mut model = None;
    if let Some(models) = v.pointer("/stats/models").and_then(Value::as_object) {
        for (name, m) in models {
            model.get_or_insert_with(|| name.clone());
            let t = m.get("tokens");
            let get = |k: &str| {
                t.and_then(|t| t.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            // Gemini CLI (uiTelemetry): `prompt` is the whole prompt,
            // `cached` the part of it read from the cache, `input` = prompt
            // - cached; `tool` (tool-use prompts) and `thoughts` are
            // counted apart from `prompt` and `candidates`, and billed as
            // input and output.
            let prompt = match t.and_then(|t| t.get("prompt")) {
                Some(_) => get("prompt"),
                None => get("input") + get("cached"),
            };
            tokens.input += prompt + get("tool");
            tokens.cached_input += get("cached").min(prompt);
            tokens.output += get("candidates") + get("thoughts");
        }
    }
    let error = v.get("error").filter(|e| !e.is_null()).map(|e| {
        e.get("message")
            .and_then(Value::as_str)
            .map_or_else(|| e.to_string(), str::to_string)
    });
    let reason = match (error, exit_code) {
        (Some(e), _) => Some(format!("gemini reported an error: {e}")),
        (None, Some(0)) => None,
        (None, c) => Some(format!("gemini ended with {}", exit_reason(c))),
    };
    Outcome {
        success: reason.is_none(),
        reason,
        result: v
            .get("response")
            .and_then(Value::as_str)
            .map(str::to_string),
        cost_usd: None,
        tokens: Some(tokens),
        num_turns: None,
        session_id: v
            .get("session_id")
            .and_then(Value::as_str)
            .map(str::to_string),
        // Name the model only when a single one answered.
        model: model.filter(|_| {
            v.pointer("/stats/models")
                .and_then(Value::as_object)
                .is_some_and(|m| m.len() == 1)
        }),
        timed_out: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_response_and_tokens() {
        let out = "{\n  \"session_id\": \"g1\",\n  \"response\": \"Wrote it.\",\n  \"stats\": {\"models\": {\"gemini-2.5-pro\": {\"tokens\": {\"input\": 50, \"candidates\": 10, \"total\": 60, \"cached\": 0, \"thoughts\": 2}}}}\n}\n";
        let o = parse(out, Some(0));
        assert!(o.success);
        assert_eq!(
            o.tokens,
            Some(Tokens {
                input: 50,
                output: 12,
                cached_input: 0
            })
        );
        assert_eq!(o.model.as_deref(), Some("gemini-2.5-pro"));
        assert!(!parse("", Some(41)).success);
    }

    /// Priced to the cent with cached, tool and thought tokens: prompt
    /// 200k (50k cached), tool 10k, candidates 8k, thoughts 12k at $1.25
    /// input, $0.31 cached, $10 output per million: 160k × 1.25 + 50k ×
    /// 0.31 + 20k × 10 = $0.4155.
    #[test]
    fn cached_tool_and_thought_tokens_are_priced_by_their_definitions() {
        let out = r#"{"response":"ok","stats":{"models":{"gemini-2.5-pro":{"tokens":{"input":150000,"prompt":200000,"candidates":8000,"total":230000,"cached":50000,"thoughts":12000,"tool":10000}}}}}"#;
        let mut config = crate::config::Config::default();
        config.prices.insert(
            "gemini-2.5-pro".into(),
            crate::config::Price {
                input: 1.25,
                output: 10.0,
                cached_input: Some(0.31),
            },
        );
        let o = super::super::parse(crate::agent::Adapter::Gemini, out, Some(0), None, &config);
        assert_eq!(
            o.tokens,
            Some(Tokens {
                input: 210_000,
                output: 20_000,
                cached_input: 50_000
            })
        );
        assert_eq!(o.cost_usd.unwrap().to_string(), "$0.4155");
        // Without `prompt` (older versions): input + cached.
        let old = out.replace(r#""prompt":200000,"#, "");
        let o = super::super::parse(crate::agent::Adapter::Gemini, &old, Some(0), None, &config);
        assert_eq!(o.cost_usd.unwrap().to_string(), "$0.4155");
    }
}
