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
            tokens.input += get("input").max(get("prompt"));
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
                output: 12
            })
        );
        assert_eq!(o.model.as_deref(), Some("gemini-2.5-pro"));
        assert!(!parse("", Some(41)).success);
    }
}
