//! The prompts agents are given. Pure: the task's text and its
//! dependencies' results come in as values (read by `launch`).

use std::fmt::Write as _;

use crate::frontmatter::{self, Layout};

/// What a dependency left for the tasks that wait on it.
#[derive(Debug, Clone, PartialEq)]
pub struct DependencyResult {
    /// Its id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its one-line `result:`.
    pub result: Option<String>,
    /// Its result file (relative path) and the start of its text.
    pub full: Option<(String, String)>,
}

/// How much of a dependency's result file goes into a prompt.
pub const RESULT_CHARS: usize = 8000;

/// The task prompt: the task, its body, and the results of its
/// dependencies (so builders read research outputs automatically).
pub fn task_prompt(
    id: &str,
    title: &str,
    body: &str,
    deps: &[DependencyResult],
    workspace: &str,
) -> String {
    let mut p = String::new();
    let _ = writeln!(p, "# Task {id}: {title}\n");
    let body = body.trim();
    if !body.is_empty() {
        p.push_str(body);
        p.push_str("\n\n");
    }
    if !deps.is_empty() {
        p.push_str("# Results of the tasks this one depends on\n\n");
        for d in deps {
            let _ = writeln!(p, "## {}: {}", d.id, d.title);
            if let Some(r) = &d.result {
                let _ = writeln!(p, "Result: {r}");
            }
            if let Some((path, text)) = &d.full {
                let text: String = text.chars().take(RESULT_CHARS).collect();
                let _ = writeln!(p, "Full result ({path}):\n\n{}", text.trim());
            }
            p.push('\n');
        }
    }
    let _ = writeln!(p, "Your working directory is {workspace}.");
    p
}

/// The tester's prompt: the task, the builder's result and where its work
/// is, and how to answer.
pub fn review_prompt(
    id: &str,
    title: &str,
    body: &str,
    builder: &str,
    builder_result: &str,
    workspace: &str,
) -> String {
    let mut p = String::new();
    let _ = writeln!(p, "# Review {id}: {title}\n");
    p.push_str("Check the work a builder agent did for this task. The task:\n\n");
    for line in body.trim().lines() {
        let _ = writeln!(p, "> {line}");
    }
    let _ = writeln!(p, "\n# The builder's result ({builder})\n");
    p.push_str(builder_result.trim());
    let _ = writeln!(
        p,
        "\n\nThe builder worked in {workspace} (your working directory): inspect and test the files there.\n\n\
         Your final message must contain exactly one line `VERDICT: PASS` or `VERDICT: FAIL`; put your findings after that line."
    );
    p
}

/// A task file's body and its `command:` field, if any.
pub fn body_and_command(file: &[u8]) -> (Option<String>, String) {
    let body = match frontmatter::split(file, true) {
        Some(Layout::Header { body, .. } | Layout::None { body }) => {
            String::from_utf8_lossy(&file[body..]).into_owned()
        }
        _ => String::new(),
    };
    (frontmatter::scalar_field(file, "command"), body)
}

/// The tester's verdict in a result text: the last `VERDICT: PASS|FAIL`
/// line, and for FAIL the findings after it (or the whole text).
pub fn verdict(text: &str) -> Option<(bool, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let (k, pass) = lines.iter().enumerate().rev().find_map(|(k, l)| {
        let u = l
            .trim()
            .trim_matches(|c| c == '*' || c == '`')
            .to_ascii_uppercase();
        if u.starts_with("VERDICT: PASS") || u.starts_with("VERDICT:PASS") {
            Some((k, true))
        } else if u.starts_with("VERDICT: FAIL") || u.starts_with("VERDICT:FAIL") {
            Some((k, false))
        } else {
            None
        }
    })?;
    let after = lines[k + 1..].join("\n").trim().to_string();
    let findings = if after.is_empty() {
        text.trim().to_string()
    } else {
        after
    };
    Some((pass, findings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_prompt_has_the_body_the_dependencies_and_the_workspace() {
        let deps = [DependencyResult {
            id: "TASK-001".into(),
            title: "Research".into(),
            result: Some("found it".into()),
            full: Some(("agents/results/TASK-001.md".into(), "x".repeat(9000))),
        }];
        let p = task_prompt("TASK-002", "Build", "\n  Do it.\n", &deps, "/w");
        assert!(p.starts_with("# Task TASK-002: Build\n\nDo it.\n\n"), "{p}");
        assert!(p.contains("## TASK-001: Research\nResult: found it\n"));
        assert!(p.contains("Full result (agents/results/TASK-001.md):"));
        assert_eq!(
            p.matches('x').count(),
            RESULT_CHARS,
            "cut at {RESULT_CHARS}"
        );
        assert!(p.ends_with("Your working directory is /w.\n"));
        let alone = task_prompt("TASK-003", "T", "", &[], "/w");
        assert_eq!(
            alone,
            "# Task TASK-003: T\n\nYour working directory is /w.\n"
        );
    }

    #[test]
    fn review_prompt_quotes_the_task_and_asks_for_a_verdict() {
        let p = review_prompt(
            "TASK-004",
            "T",
            "line 1\nline 2",
            "BLD-001",
            " built ",
            "/ws",
        );
        assert!(p.contains("> line 1\n> line 2\n"));
        assert!(p.contains("# The builder's result (BLD-001)\n\nbuilt\n"));
        assert!(p.contains("The builder worked in /ws"));
        assert!(p.contains("`VERDICT: PASS` or `VERDICT: FAIL`"));
    }

    #[test]
    fn verdicts_are_read_from_the_last_verdict_line() {
        assert_eq!(
            verdict("all good\nVERDICT: PASS"),
            Some((true, "all good\nVERDICT: PASS".into()))
        );
        assert_eq!(
            verdict("**VERDICT: FAIL**\n- test 3 fails\n"),
            Some((false, "- test 3 fails".into()))
        );
        assert_eq!(
            verdict("VERDICT: FAIL\nfirst\n`verdict:pass`"),
            Some((true, "VERDICT: FAIL\nfirst\n`verdict:pass`".into()))
        );
        assert_eq!(verdict("no verdict here"), None);
    }

    #[test]
    fn body_and_command_split_the_file() {
        let file = b"---\nid: TASK-1\ncommand: make test\n---\n# Title\nbody\n";
        let (cmd, body) = body_and_command(file);
        assert_eq!(cmd.as_deref(), Some("make test"));
        assert_eq!(body, "# Title\nbody\n");
        assert_eq!(
            body_and_command(b"just text\n"),
            (None, "just text\n".into())
        );
    }
}
