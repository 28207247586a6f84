//! Roles: `agents/templates/<role>.md`. The frontmatter is the role's
//! settings, the body its SOUL prompt. Templates are whole documents read
//! once, so they go through gray_matter; the settings then through
//! serde_yaml for typed values and `file:line` errors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gray_matter::engine::YAML;
use gray_matter::Matter;
use serde::{Deserialize, Serialize};

use crate::agent::Adapter;
use crate::config::{dur, yaml_problem, Config};
use crate::error::{Error, Problem, Result};
use crate::root::Root;
use crate::task::{validate_id, Task};

/// A role's settings (the template's frontmatter).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Agent id prefix: `BLD` gives BLD-001, BLD-002, ...
    pub prefix: String,
    /// The adapter: claude, codex, gemini, openclaw, shell or command.
    #[serde(default = "default_agent")]
    pub agent: Adapter,
    /// The model.
    #[serde(default)]
    pub model: Option<String>,
    /// Models tried, in order, by the retries after a failure.
    #[serde(default)]
    pub fallback_models: Vec<String>,
    /// Tasks with any of these tags go to this role.
    #[serde(default)]
    pub tags: Vec<String>,
    /// At most this many agents of this role at once.
    #[serde(default = "default_max")]
    pub max_concurrent: usize,
    /// The agent is stopped after this long.
    #[serde(default = "default_timeout", with = "dur")]
    pub timeout: Duration,
    /// Failed runs are retried this many times.
    #[serde(default)]
    pub retries: u32,
    /// Only these environment variables reach the agent (plus TASKQ_*).
    #[serde(default = "default_env")]
    pub env: Vec<String>,
    /// Variables set for the agent (`HOME: /tmp/x`); `{workspace}` and
    /// `{root}` are replaced.
    #[serde(default)]
    pub set_env: std::collections::BTreeMap<String, String>,
    /// `dir`: agents/workspaces/<agent-id>/; `root`: the root itself.
    #[serde(default)]
    pub workspace: Workspace,
    /// Another role that must pass the work (`tester`).
    #[serde(default)]
    pub review: Option<String>,
    /// claude: `--max-turns`.
    #[serde(default)]
    pub max_turns: Option<u32>,
    /// claude: `--permission-mode`.
    #[serde(default)]
    pub permission_mode: Option<String>,
    /// claude: `--allowedTools`.
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    /// The command line for `agent: command` (placeholders: `{prompt}`,
    /// `{prompt_file}`, `{task_id}`, `{agent_id}`, `{model}`,
    /// `{workspace}`).
    #[serde(default)]
    pub command: Option<String>,
    /// Extra arguments appended to the adapter's command line.
    #[serde(default)]
    pub args: Vec<String>,
    /// A task needs a person's approval before it runs.
    #[serde(default)]
    pub approval: Option<String>,
    /// Resume the agent's session on a retry after a crash (claude).
    #[serde(default)]
    pub resume: bool,
    /// openclaw: `--config FILE`.
    #[serde(default)]
    pub config: Option<String>,
    /// `workspace: worktree`: the ref new branches start from (default
    /// HEAD; a task's `base:` wins).
    #[serde(default)]
    pub base: Option<String>,
    /// Under a daily cost cap: the expected cost of a run while the role
    /// (with its model) has no usable cost history.
    #[serde(default)]
    pub cost_prior_usd: Option<crate::money::Usd>,
    /// Under a daily cost cap, with no usable history and no prior: one run
    /// at a time (per model) until one has finished and set the forecast.
    #[serde(default)]
    pub require_cost_history: bool,
    /// The agents' sandbox: `auto`, `required`, `off`, or a map with
    /// `mode`, `write`, `read`, `net` (see [`crate::sandbox`]).
    #[serde(default)]
    pub sandbox: crate::sandbox::Policy,
}

fn default_agent() -> Adapter {
    Adapter::Claude
}
fn default_max() -> usize {
    1
}
fn default_timeout() -> Duration {
    Duration::from_secs(20 * 60)
}
fn default_env() -> Vec<String> {
    vec!["PATH".into(), "HOME".into()]
}
/// Where a role's agents work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum Workspace {
    /// `agents/workspaces/<agent-id>/`, made for the agent.
    #[default]
    Dir,
    /// The root itself.
    Root,
    /// A git worktree on branch `taskq/<task-id>` (see `base:`).
    Worktree,
}

impl TryFrom<String> for Workspace {
    type Error = String;

    fn try_from(s: String) -> std::result::Result<Workspace, String> {
        [Workspace::Dir, Workspace::Root, Workspace::Worktree]
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown workspace `{s}` (one of: dir, root, worktree)"))
    }
}

impl Workspace {
    /// The name roles use.
    pub fn name(self) -> &'static str {
        match self {
            Workspace::Dir => "dir",
            Workspace::Root => "root",
            Workspace::Worktree => "worktree",
        }
    }
}

/// One role: its name (the template's file stem), settings and SOUL.
#[derive(Debug, Clone)]
pub struct Role {
    /// `builder` for agents/templates/builder.md.
    pub name: String,
    /// The template file.
    pub path: PathBuf,
    /// The frontmatter.
    pub settings: Settings,
    /// The body: the SOUL prompt.
    pub soul: String,
}

/// Every role of a root, sorted by name, and the templates that failed.
pub fn load_all(root: &Root) -> (Vec<Role>, Vec<Problem>) {
    let dir = root.templates_dir();
    let mut roles = Vec::new();
    let mut problems = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (roles, problems);
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    for path in paths {
        match load(
            &path,
            Path::new("agents/templates")
                .join(path.file_name().unwrap_or_default())
                .as_path(),
        ) {
            Ok(role) => roles.push(role),
            Err(Error::Invalid { problem }) => problems.push(problem),
            Err(e) => problems.push(Problem::new(&path, e.to_string())),
        }
    }
    (roles, problems)
}

/// Loads one template; errors name `shown` and the line.
pub fn load(path: &Path, shown: &Path) -> Result<Role> {
    use crate::fsutil::{self, Links};
    // Only a regular file (a link to one is fine), at most MAX_SETTINGS: a
    // FIFO named `x.md` is skipped with a problem, never waited on.
    let bytes =
        fsutil::read_whole_with(path, fsutil::MAX_SETTINGS, Links::Follow).map_err(|e| {
            let skipped = if fsutil::is_not_regular(&e) {
                "; skipped"
            } else {
                ""
            };
            Problem::new(shown, format!("{}{skipped}", fsutil::reason(&e)))
        })?;
    let text = String::from_utf8(bytes).map_err(|_| Problem::new(shown, "not valid UTF-8"))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    validate_id(&name)
        .map_err(|why| Problem::new(shown, format!("invalid role name `{name}`: {why}")))?;
    // gray_matter and serde_yaml take super-linear time (or stack) on deep
    // nesting: refuse it first, in one pass, at its line.
    if let Some(crate::frontmatter::Layout::Header { start, end, .. }) =
        crate::frontmatter::split(text.as_bytes(), true)
    {
        crate::frontmatter::check_nesting(&text[start..end]).map_err(|e| {
            Problem::at(
                shown,
                e.line + crate::frontmatter::Layout::FIRST_LINE,
                e.message,
            )
            .column(e.column)
        })?;
    }
    let parsed = Matter::<YAML>::new()
        .parse::<gray_matter::Pod>(text)
        .map_err(|e| Problem::new(shown, format!("invalid frontmatter: {e}")))?;
    if parsed.matter.trim().is_empty() {
        return Err(Problem::new(
            shown,
            "a role template needs frontmatter with at least `prefix:`",
        )
        .hint("see agents/templates/builder.md for the format")
        .into());
    }
    // The frontmatter starts on line 2 of the file.
    let settings: Settings = serde_yaml::from_str(&parsed.matter).map_err(|e| {
        // An unknown adapter or workspace name: at its key's line (serde
        // places errors of `try_from` types at the start of the map).
        let text = e.to_string();
        for key in ["agent", "workspace"] {
            let what = format!("unknown {key} `");
            if let (Some(at), Some(line)) = (
                text.find(&what),
                crate::frontmatter::key_line(&parsed.matter, key),
            ) {
                let message = text[at..].split(" at line ").next().unwrap_or(&text[at..]);
                return Problem::at(shown, line + 1, message.to_string());
            }
        }
        yaml_problem(shown, &e, 2, &parsed.matter)
    })?;
    // A value serde accepted but taskq does not: at the key's line (the
    // frontmatter starts on line 2).
    let at = |key: &str, message: String| match crate::frontmatter::key_line(&parsed.matter, key) {
        Some(line) => Problem::at(shown, line + 1, message),
        None => Problem::new(shown, message),
    };
    if settings.prefix.is_empty() || !settings.prefix.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(at(
            "prefix",
            format!("prefix `{}` must be letters and digits", settings.prefix),
        )
        .into());
    }
    if settings.max_concurrent == 0 {
        return Err(at(
            "max_concurrent",
            "`max_concurrent` must be at least 1".into(),
        )
        .into());
    }
    if settings.timeout.is_zero() {
        return Err(at("timeout", "`timeout` must be longer than 0s".into())
            .hint("every agent would be stopped as it starts; write e.g. `timeout: 20m`")
            .into());
    }
    if settings.agent == Adapter::Command && settings.command.is_none() {
        return Err(at("agent", "`agent: command` needs a `command:` line".into()).into());
    }
    Ok(Role {
        name,
        path: path.to_path_buf(),
        settings,
        soul: parsed.content,
    })
}

/// The role a task goes to: its `role:` field, else the first role (by
/// name) whose tags meet the task's tags, else the config's
/// `default_role`.
pub fn route<'r>(task: &Task, roles: &'r [Role], config: &Config) -> Option<&'r Role> {
    if let Some(name) = task.role.as_deref() {
        return roles.iter().find(|r| r.name == name);
    }
    roles
        .iter()
        .find(|r| {
            r.settings
                .tags
                .iter()
                .any(|t| task.tags.iter().any(|x| **x == **t))
        })
        .or_else(|| {
            let name = config.default_role.as_deref()?;
            roles.iter().find(|r| r.name == name)
        })
}

/// The name of the role a task goes to, without needing the role to exist
/// (for `next --role` on a root whose templates are partial).
pub fn route_name(task: &Task, roles: &[Role], config: &Config) -> Option<String> {
    if let Some(name) = task.role.as_deref() {
        return Some(name.to_string());
    }
    route(task, roles, config).map(|r| r.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_templates_load() {
        let root = Root::new(env!("CARGO_MANIFEST_DIR"));
        let (roles, problems) = load_all(&root);
        assert!(problems.is_empty(), "{problems:?}");
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["builder", "fixer", "openclaw", "research", "shell", "tester"]
        );
        let builder = &roles[0];
        assert_eq!(builder.settings.prefix, "BLD");
        assert_eq!(builder.settings.review.as_deref(), Some("tester"));
        assert!(builder.soul.contains("builder"));
    }

    #[test]
    fn bad_template_names_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.md");
        std::fs::write(&p, "---\nprefix: X\nmax_concurent: 2\n---\nsoul").unwrap();
        let e = load(&p, Path::new("agents/templates/x.md")).unwrap_err();
        assert!(e.to_string().starts_with("agents/templates/x.md:3:"), "{e}");
        // Values taskq refuses after parsing: at their key's line too.
        for (header, line, message) in [
            (
                "prefix: X\nagent: shel",
                3,
                "unknown agent `shel` (one of: claude, codex, gemini, openclaw, shell, command)",
            ),
            ("prefix: X-1", 2, "prefix `X-1` must be letters and digits"),
            (
                "prefix: X\nmax_concurrent: 0",
                3,
                "`max_concurrent` must be at least 1",
            ),
            (
                "prefix: X\n\ntimeout: 0s",
                4,
                "`timeout` must be longer than 0s",
            ),
            (
                "prefix: X\nworkspace: home",
                3,
                "unknown workspace `home` (one of: dir, root, worktree)",
            ),
            (
                "prefix: X\nagent: command",
                3,
                "`agent: command` needs a `command:` line",
            ),
        ] {
            std::fs::write(&p, format!("---\n{header}\n---\nsoul")).unwrap();
            let e = load(&p, Path::new("x.md")).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("x.md:{line}: {message}")),
                "{header:?}: {e}"
            );
        }
    }
}
