//! The two adapters that need no model: `shell` runs the task's ```sh
//! blocks with `sh -e`; `command` runs any command line from the role (or
//! the task) with placeholders. Success is exit code 0.

use super::{exit_reason, CommandLine, Invocation, Outcome};

/// The ```sh (or ```shell) fenced blocks of a markdown body, in order.
pub fn sh_blocks(body: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None; // (fence, text)
    for line in body.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None => {
                for fence in ["```", "~~~"] {
                    if let Some(info) = trimmed.strip_prefix(fence) {
                        let lang = info.split_whitespace().next().unwrap_or("");
                        if matches!(lang, "sh" | "shell") {
                            current = Some((fence.to_string(), String::new()));
                        } else {
                            current = Some((format!("{fence}skip"), String::new()));
                        }
                        break;
                    }
                }
            }
            Some((fence, text)) => {
                let plain = fence.trim_end_matches("skip");
                if trimmed.starts_with(plain)
                    && trimmed
                        .trim_start_matches(plain.chars().next().unwrap_or('`'))
                        .trim()
                        .is_empty()
                {
                    if !fence.ends_with("skip") {
                        blocks.push(std::mem::take(text));
                    }
                    current = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    blocks
}

/// `sh -e -c <the task's sh blocks>`.
pub fn shell_command(inv: &Invocation<'_>) -> Result<CommandLine, String> {
    let blocks = sh_blocks(inv.task_body);
    if blocks.is_empty() {
        return Err("the task has no ```sh block to run (the shell role runs only those)".into());
    }
    Ok(CommandLine {
        program: "sh".into(),
        args: vec!["-e".into(), "-c".into(), blocks.join("\n")],
        env: Vec::new(),
    })
}

/// `sh -c <command>` with `{prompt}`, `{prompt_file}`, `{task_id}`,
/// `{agent_id}`, `{model}`, `{workspace}` replaced by shell-quoted values.
pub fn custom_command(inv: &Invocation<'_>) -> Result<CommandLine, String> {
    let template = inv
        .task_command
        .or(inv.role.settings.command.as_deref())
        .ok_or("`agent: command` needs a `command:` in the role or the task")?;
    let values = [
        ("{prompt_file}", inv.prompt_file.display().to_string()),
        ("{prompt}", inv.prompt.to_string()),
        ("{task_id}", inv.task_id.to_string()),
        ("{agent_id}", inv.agent_id.to_string()),
        ("{model}", inv.model.unwrap_or("").to_string()),
        ("{workspace}", inv.workspace.display().to_string()),
    ];
    let mut line = template.to_string();
    for (key, value) in &values {
        line = line.replace(key, &shell_quote(value));
    }
    Ok(CommandLine {
        program: "sh".into(),
        args: vec!["-c".into(), line],
        env: Vec::new(),
    })
}

/// Single-quotes a value for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Exit code 0 is success; the result is the output's last non-empty line.
pub fn parse(output: &str, exit_code: Option<i32>) -> Outcome {
    let last = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string);
    let success = exit_code == Some(0);
    Outcome {
        success,
        reason: (!success).then(|| match &last {
            Some(l) => format!("{}: {}", exit_reason(exit_code), super::summary(l)),
            None => exit_reason(exit_code),
        }),
        result: last,
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_only_sh_blocks() {
        let body = "# T\n```sh\necho one\n```\ntext\n```python\nprint(1)\n```\n~~~shell\necho two\n~~~\n```\nplain\n```\n";
        assert_eq!(sh_blocks(body), ["echo one\n", "echo two\n"]);
    }

    #[test]
    fn quotes_placeholders() {
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
