//! `fake-agent`: a stand-in for the agent CLIs taskq drives, for tests.
//!
//! It speaks the command lines and final output formats of Claude Code (`claude -p`), Codex
//! (`codex exec --json`) and Gemini (`gemini -p --output-format json`) as recorded in
//! `agent-clis.md`, without a model: what a run does (how long it takes, whether it fails,
//! which file it writes, ...) is set through `FAKE_AGENT_*` environment variables.
//! Only the Rust standard library and `serde_json` are used.
//!
//! # Command lines
//!
//! * Claude style (the default):
//!   `fake-agent -p PROMPT --output-format json --model M [--append-system-prompt TEXT]
//!   [--max-turns N] [--permission-mode MODE] [--allowedTools X] [--session-id UUID]
//!   [--resume ID] [--fallback-model M] [--verbose]`.
//!   `-p`/`--print` takes the prompt as its value; a bare positional argument is also taken as
//!   the prompt when no `-p` was given.
//! * Codex style, whenever the first argument is `exec`:
//!   `fake-agent exec --json [-m M] [-C DIR] [--skip-git-repo-check] [--sandbox X]
//!   [-c key=val]... [-o FILE] PROMPT`. `-C` changes the working directory before the run starts
//!   (a missing DIR: message, exit 1); `-o`/`--output-last-message` writes the final message to FILE on success.
//!   Without `--json` the final message is printed as plain text.
//! * Gemini style: the Claude-style command line plus `--yolo`/`-y`, `--approval-mode MODE` or
//!   `--skip-trust` (flags only Gemini has), or `FAKE_AGENT_STYLE=gemini`;
//!   `-m` is accepted as `--model`.
//!
//! `--output-format` is `json` or `text`; without it the output is plain text, as with the real
//! CLIs (`stream-json` is refused with exit 2). `--flag=value` works for long flags.
//! Flags that take a value always consume the next argument, even if it starts with `-`.
//! Other real flags of the three CLIs (`--max-budget-usd`, `--add-dir`, `--profile`, ...) are
//! accepted and ignored; unknown flags are ignored with a note on stderr (an unknown flag's
//! value, if any, is then seen as a stray positional argument and also ignored with a note).
//! `-h`/`--help` prints a usage summary. A flag missing its value, a bad `--max-turns`, no
//! prompt, or a malformed `FAKE_AGENT_*` value is a usage error: message on stderr, exit 2,
//! nothing logged.
//!
//! # Output
//!
//! * stderr: always one progress line at start, `fake-agent: model M, prompt N bytes`, plus
//!   notes (ignored flags, `--verbose` details, errors).
//! * Claude, `--output-format json`: exactly one JSON object on one line with `type: "result"`,
//!   `subtype` (`"success"`, or `"error_max_turns"`), `is_error`, `duration_ms`,
//!   `duration_api_ms`, `num_turns` (always 1), `result` (absent on max turns), `session_id`
//!   (the `--session-id` value, else the `--resume` value, else a generated uuid-like id),
//!   `total_cost_usd`, `usage` {`input_tokens`, `cache_creation_input_tokens`,
//!   `cache_read_input_tokens`, `output_tokens`}, `modelUsage` {MODEL: {`inputTokens`,
//!   `outputTokens`, `cacheReadInputTokens`, `cacheCreationInputTokens`, `costUSD`}},
//!   `permission_denials` (list) and `terminal_reason` (`"completed"` or `"max_turns"`).
//!   Keys are in alphabetical order: parse it as an object, as with the real CLI.
//! * Codex, `--json`: JSON lines `thread.started` `{thread_id}`, `turn.started`, optionally an
//!   `item.completed` for the file (`file_change` when written, a failed `command_execution`
//!   when denied), then on success `item.completed` `{item: {type: "agent_message", text}}` and
//!   `turn.completed` `{usage: {input_tokens, cached_input_tokens, output_tokens,
//!   reasoning_output_tokens}}`; on failure an `error` event `{message}` and `turn.failed`
//!   `{error: {message}}`. No cost (the real Codex reports none).
//! * Gemini, `--output-format json`: one object `{session_id, response, stats: {models: {MODEL:
//!   {api, tokens: {input, candidates, total, cached, thoughts}}}, tools, files}}`; on failure
//!   `response` is replaced by `error: {type, message, code}` where `code` is the exit code.
//!   No cost.
//! * Text format: the result text on stdout (Claude), the final message on stdout and errors on
//!   stderr (Codex, Gemini).
//!
//! Token counts are deterministic: `input_tokens = prompt bytes / 4 + 10`,
//! `output_tokens = result bytes / 4 + 5` (cache and reasoning counts are 0). A run that fails
//! through `FAKE_AGENT_FAIL_MODELS` never reached a model: 0 tokens, cost 0, no `modelUsage`.
//!
//! # Environment variables
//!
//! "Flag" variables are on when set to anything except the empty string, `0`, `false`, `no` or
//! `off` (case-insensitive). Path variables are ignored when empty; relative paths are
//! relative to the working directory (after `-C` for Codex).
//!
//! * `FAKE_AGENT_STYLE` — `claude`, `codex` or `gemini`: force the output style (ignored when
//!   the first argument is `exec`, which is always Codex). Default: detect as described above.
//! * `FAKE_AGENT_DELAY_MS` — sleep this many milliseconds before finishing (default 0).
//! * `FAKE_AGENT_EXIT` — the exit code, 0..=255 (default: 1 when the run fails, else 0). Set
//!   `FAKE_AGENT_IS_ERROR=1 FAKE_AGENT_EXIT=0` to model trap 1 (an error reported with exit 0).
//!   It does not override the exits for usage errors (2), a bad `-C` (1) or the stdin check (7).
//! * `FAKE_AGENT_IS_ERROR` (flag) — the run fails like an API error: Claude reports
//!   `is_error: true` but keeps `subtype: "success"`, as the real one does; Codex ends in
//!   `turn.failed`; Gemini prints an `error` object. The result text is kept.
//! * `FAKE_AGENT_COST` — `total_cost_usd` and the model's `costUSD` (default 0.01).
//! * `FAKE_AGENT_RESULT` — the result text (default `done: <first 60 chars of the prompt>`);
//!   may be empty.
//! * `FAKE_AGENT_WRITE` — a file (relative to the working directory) that the agent writes,
//!   after the delay, creating parent directories; not written when the run fails through
//!   `FAKE_AGENT_FAIL_MODELS` or when `FAKE_AGENT_DENY` is on.
//! * `FAKE_AGENT_WRITE_CONTENT` — that file's content (default: the prompt); may be empty.
//! * `FAKE_AGENT_DENY` (flag) — the write is blocked, as when Claude runs without a permission
//!   flag (trap 2): the file is NOT written, the run still succeeds, and Claude's
//!   `permission_denials` gets one entry `{"tool_name": "Write", "tool_use_id": "toolu_fake",
//!   "tool_input": {"file_path": ABSOLUTE_PATH, "content": ...}}`. The path is that of
//!   `FAKE_AGENT_WRITE`, or `fake-agent-output.txt` when that is unset.
//! * `FAKE_AGENT_MAX_TURNS_HIT` (flag) — the turn limit is hit: Claude `subtype:
//!   "error_max_turns"`, `is_error: true`, no `result`, `terminal_reason: "max_turns"`; exit 1.
//! * `FAKE_AGENT_FAIL_MODELS` — comma-separated model names (spaces trimmed) for which the run
//!   fails at once: exit 1, `is_error: true`, result `model X unavailable`, no file written.
//!   `--fallback-model` is only recorded: the fake never switches models by itself, so
//!   fallback is up to the caller.
//! * `FAKE_AGENT_LOG` — a file to which two lines are appended, each with one `write()` on a
//!   file opened with `O_APPEND` (so concurrent agents do not interleave):
//!   `start <unix_millis> <pid> <model>` after the arguments are parsed and
//!   `end <unix_millis> <pid> <exit_code>` just before exiting. A run killed by a signal has no
//!   `end` line.
//! * `FAKE_AGENT_SPAWN_CHILD` — a file name: before the delay, spawn a grandchild
//!   `sleep 1000` (not waited for, stdio on /dev/null, same process group) and write its pid
//!   and a newline to this file (atomically, via rename; the directory must exist), so that
//!   tests can check a timeout kills grandchildren too. Where PID 1 does not reap orphans (as
//!   in some containers) a killed grandchild lingers as a zombie: check its state (`Z` in
//!   `/proc/PID/stat`), not just that the pid exists.
//! * `FAKE_AGENT_IGNORE_TERM` (flag) — the agent ignores SIGTERM. Without libc there is no
//!   `signal()`, so the process re-executes itself (same pid) through
//!   `/bin/sh -c 'trap "" TERM; exec "$0" "$@"'`: an ignored signal stays ignored across
//!   `exec`, so the fake, and every child it spawns, ignores SIGTERM and only SIGKILL ends it.
//!   `FAKE_AGENT_TERM_IGNORED=1` marks the re-executed process (internal; do not set it).
//!   If the re-exec fails, a note goes to stderr and the run goes on with SIGTERM not ignored.
//! * `FAKE_AGENT_STDIN_CHECK` (flag) — fail like a real CLI left waiting on an open stdin
//!   (trap 4): unless stdin is a terminal, a thread reads stdin to EOF; if that takes more than
//!   200 ms, print `stdin is open; the real claude -p would hang` (with the style's CLI name) to
//!   stderr and exit 7. Stdin from /dev/null passes at once.
//!
//! When several failures are asked for, `FAKE_AGENT_FAIL_MODELS` wins over
//! `FAKE_AGENT_MAX_TURNS_HIT`, which wins over `FAKE_AGENT_IS_ERROR`.
//!
//! # Order of a run
//!
//! parse arguments and environment → (`-C`) → progress line → log `start` → stdin check →
//! spawn grandchild → sleep → write the file → print the output → log `end` → exit.

use std::env;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, IsTerminal, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// Exit code for a bad command line or a malformed `FAKE_AGENT_*` value.
const USAGE_EXIT: i32 = 2;
/// Exit code when `FAKE_AGENT_STDIN_CHECK` finds stdin left open.
const STDIN_OPEN_EXIT: i32 = 7;
/// How long stdin may take to reach EOF under `FAKE_AGENT_STDIN_CHECK`.
const STDIN_GRACE: Duration = Duration::from_millis(200);
/// Model reported when no `--model`/`-m` is given.
const DEFAULT_MODEL: &str = "fake-model";
/// `total_cost_usd` when `FAKE_AGENT_COST` is unset.
const DEFAULT_COST_USD: f64 = 0.01;
/// File named in the permission denial when `FAKE_AGENT_DENY` is on but `FAKE_AGENT_WRITE` unset.
const DEFAULT_DENIED_FILE: &str = "fake-agent-output.txt";
/// Marks the process re-executed with SIGTERM ignored, so it does not re-execute again.
const TERM_IGNORED_MARKER: &str = "FAKE_AGENT_TERM_IGNORED";

const USAGE: &str = "\
usage: fake-agent -p PROMPT [--output-format json|text] [--model M] [--append-system-prompt TEXT]
                  [--max-turns N] [--permission-mode MODE] [--allowedTools X] [--session-id UUID]
                  [--resume ID] [--fallback-model M] [--verbose] [--yolo | --approval-mode MODE]
       fake-agent exec [--json] [-m M] [-C DIR] [--skip-git-repo-check] [--sandbox X]
                  [-c key=val]... [-o FILE] PROMPT
Behaviour is set by FAKE_AGENT_* environment variables; see the top of tests/bin/fake_agent.rs.";

fn main() {
    process::exit(run());
}

/// Runs the fake agent and returns its exit code.
fn run() -> i32 {
    let started = Instant::now();
    let raw_args: Vec<OsString> = env::args_os().skip(1).collect();

    if env_flag("FAKE_AGENT_IGNORE_TERM") && env::var_os(TERM_IGNORED_MARKER).is_none() {
        // Only returns if the re-exec failed; the run then goes on without ignoring SIGTERM.
        reexec_ignoring_sigterm(&raw_args);
    }

    // Lossy conversion: a non-UTF-8 argument must not panic.
    let args: Vec<String> = raw_args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cli = match parse_args(&args) {
        Ok(cli) => cli,
        Err(msg) => return usage_error(&msg),
    };
    if cli.help {
        print_stdout(USAGE);
        return 0;
    }
    let behaviour = match Behaviour::from_env() {
        Ok(b) => b,
        Err(msg) => return usage_error(&msg),
    };
    let style = pick_style(&cli, &behaviour);
    let format = match output_format(&cli) {
        Ok(f) => f,
        Err(msg) => return usage_error(&msg),
    };
    for n in &cli.notes {
        note(n);
    }
    let Some(prompt) = cli.prompt.clone() else {
        return usage_error("no prompt given");
    };
    let model = cli
        .model
        .clone()
        .unwrap_or_else(|| DEFAULT_MODEL.to_string());

    if let Some(dir) = &cli.cd {
        if let Err(e) = env::set_current_dir(dir) {
            note(&format!(
                "cannot change to directory {}: {e}",
                dir.display()
            ));
            return 1;
        }
    }

    note(&format!("model {model}, prompt {} bytes", prompt.len()));
    if cli.verbose {
        note_details(&cli, style);
    }

    if let Some(log) = &behaviour.log {
        let line = format!("start {} {} {model}\n", unix_millis(), process::id());
        append_line(log, &line);
    }
    let code = agent_turn(&cli, &behaviour, style, format, &prompt, &model, started);
    if let Some(log) = &behaviour.log {
        let line = format!("end {} {} {code}\n", unix_millis(), process::id());
        append_line(log, &line);
    }
    code
}

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

/// Which real CLI the fake imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Claude,
    Codex,
    Gemini,
}

impl Style {
    /// How the real CLI is invoked, for messages.
    fn cli_name(self) -> &'static str {
        match self {
            Style::Claude => "claude -p",
            Style::Codex => "codex exec",
            Style::Gemini => "gemini -p",
        }
    }
}

impl FromStr for Style {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "claude" => Ok(Style::Claude),
            "codex" => Ok(Style::Codex),
            "gemini" => Ok(Style::Gemini),
            other => Err(format!(
                "FAKE_AGENT_STYLE must be claude, codex or gemini, not {other:?}"
            )),
        }
    }
}

/// Machine-readable (`json`; JSON lines for Codex) or plain text output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Text,
}

/// What a recognised flag means to the fake.
#[derive(Clone, Copy, Debug)]
enum Opt {
    Prompt,
    OutputFormat,
    Model,
    AppendSystemPrompt,
    MaxTurns,
    PermissionMode,
    AllowedTools,
    SessionId,
    Resume,
    FallbackModel,
    Verbose,
    /// `--yolo` / `-y` / `--skip-trust`: Gemini-only switches.
    GeminiSwitch,
    ApprovalMode,
    Json,
    Cd,
    SkipGitRepoCheck,
    Sandbox,
    Config,
    OutputLastMessage,
    Help,
    /// A real flag of one of the CLIs that the fake accepts but does not model.
    Ignored {
        takes_value: bool,
    },
}

impl Opt {
    fn takes_value(self) -> bool {
        match self {
            Opt::Verbose | Opt::GeminiSwitch | Opt::Json | Opt::SkipGitRepoCheck | Opt::Help => {
                false
            }
            Opt::Ignored { takes_value } => takes_value,
            _ => true,
        }
    }
}

/// A real flag with a value that the fake accepts but does not model.
const IGNORED_WITH_VALUE: Opt = Opt::Ignored { takes_value: true };
/// A real switch that the fake accepts but does not model.
const IGNORED_SWITCH: Opt = Opt::Ignored { takes_value: false };

/// Flags of `claude` and `gemini` (which share most of their surface).
const CLAUDE_GEMINI_OPTS: &[(&str, Opt)] = &[
    ("-p", Opt::Prompt),
    ("--print", Opt::Prompt),
    ("--prompt", Opt::Prompt),
    ("--output-format", Opt::OutputFormat),
    ("-o", Opt::OutputFormat),
    ("--model", Opt::Model),
    ("-m", Opt::Model),
    ("--append-system-prompt", Opt::AppendSystemPrompt),
    ("--max-turns", Opt::MaxTurns),
    ("--permission-mode", Opt::PermissionMode),
    ("--allowedTools", Opt::AllowedTools),
    ("--allowed-tools", Opt::AllowedTools),
    ("--session-id", Opt::SessionId),
    ("--resume", Opt::Resume),
    ("-r", Opt::Resume),
    ("--fallback-model", Opt::FallbackModel),
    ("--verbose", Opt::Verbose),
    ("--yolo", Opt::GeminiSwitch),
    ("-y", Opt::GeminiSwitch),
    ("--skip-trust", Opt::GeminiSwitch),
    ("--approval-mode", Opt::ApprovalMode),
    ("--help", Opt::Help),
    ("-h", Opt::Help),
    // Real flags with a value that the fake does not model.
    ("--system-prompt", IGNORED_WITH_VALUE),
    ("--disallowedTools", IGNORED_WITH_VALUE),
    ("--disallowed-tools", IGNORED_WITH_VALUE),
    ("--max-budget-usd", IGNORED_WITH_VALUE),
    ("--add-dir", IGNORED_WITH_VALUE),
    ("--mcp-config", IGNORED_WITH_VALUE),
    ("--settings", IGNORED_WITH_VALUE),
    ("--setting-sources", IGNORED_WITH_VALUE),
    ("--input-format", IGNORED_WITH_VALUE),
    ("--agents", IGNORED_WITH_VALUE),
    ("--include-directories", IGNORED_WITH_VALUE),
    ("--extensions", IGNORED_WITH_VALUE),
    ("-e", IGNORED_WITH_VALUE),
    ("--allowed-mcp-server-names", IGNORED_WITH_VALUE),
    // Real switches that the fake does not model.
    ("--dangerously-skip-permissions", IGNORED_SWITCH),
    ("--continue", IGNORED_SWITCH),
    ("-c", IGNORED_SWITCH),
    ("--debug", IGNORED_SWITCH),
    ("-d", IGNORED_SWITCH),
    ("--sandbox", IGNORED_SWITCH),
    ("-s", IGNORED_SWITCH),
    ("--all-files", IGNORED_SWITCH),
    ("-a", IGNORED_SWITCH),
    ("--checkpointing", IGNORED_SWITCH),
    ("--strict-mcp-config", IGNORED_SWITCH),
    ("--include-partial-messages", IGNORED_SWITCH),
    ("--no-session-persistence", IGNORED_SWITCH),
];

/// Flags of `codex exec`.
const CODEX_OPTS: &[(&str, Opt)] = &[
    ("--json", Opt::Json),
    ("--experimental-json", Opt::Json),
    ("--model", Opt::Model),
    ("-m", Opt::Model),
    ("--cd", Opt::Cd),
    ("-C", Opt::Cd),
    ("--skip-git-repo-check", Opt::SkipGitRepoCheck),
    ("--sandbox", Opt::Sandbox),
    ("-s", Opt::Sandbox),
    ("--config", Opt::Config),
    ("-c", Opt::Config),
    ("--output-last-message", Opt::OutputLastMessage),
    ("-o", Opt::OutputLastMessage),
    ("--help", Opt::Help),
    ("-h", Opt::Help),
    ("--profile", IGNORED_WITH_VALUE),
    ("-p", IGNORED_WITH_VALUE),
    ("--image", IGNORED_WITH_VALUE),
    ("-i", IGNORED_WITH_VALUE),
    ("--color", IGNORED_WITH_VALUE),
    ("--output-schema", IGNORED_WITH_VALUE),
    ("--add-dir", IGNORED_WITH_VALUE),
    ("--local-provider", IGNORED_WITH_VALUE),
    ("--full-auto", IGNORED_SWITCH),
    ("--dangerously-bypass-approvals-and-sandbox", IGNORED_SWITCH),
    ("--oss", IGNORED_SWITCH),
    ("--ephemeral", IGNORED_SWITCH),
];

/// The parsed command line.
#[derive(Debug, Default)]
struct Cli {
    /// The first argument was `exec`: Codex style.
    codex_exec: bool,
    prompt: Option<String>,
    output_format: Option<String>,
    model: Option<String>,
    append_system_prompt: Option<String>,
    max_turns: Option<u32>,
    permission_mode: Option<String>,
    allowed_tools: Vec<String>,
    session_id: Option<String>,
    resume: Option<String>,
    fallback_model: Option<String>,
    verbose: bool,
    /// A Gemini-only flag was seen (`--yolo`, `-y`, `--approval-mode`, `--skip-trust`).
    gemini_flag: bool,
    approval_mode: Option<String>,
    /// Codex `--json`.
    json: bool,
    cd: Option<PathBuf>,
    skip_git_repo_check: bool,
    sandbox: Option<String>,
    config: Vec<String>,
    output_last_message: Option<PathBuf>,
    help: bool,
    /// Things ignored while parsing, printed to stderr once parsing succeeded.
    notes: Vec<String>,
}

/// Parses the arguments after the program name. `Err` is a usage error message.
fn parse_args(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli::default();
    let mut rest = args;
    if rest.first().map(String::as_str) == Some("exec") {
        cli.codex_exec = true;
        rest = &rest[1..];
    }
    let table = if cli.codex_exec {
        CODEX_OPTS
    } else {
        CLAUDE_GEMINI_OPTS
    };

    let mut i = 0;
    let mut only_positionals = false;
    while i < rest.len() {
        let arg = &rest[i];
        i += 1;
        if only_positionals || arg == "-" || !arg.starts_with('-') {
            cli.positional(arg);
            continue;
        }
        if arg == "--" {
            only_positionals = true;
            continue;
        }
        // `--name=value` for long flags.
        let (name, inline_value) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let Some(opt) = table.iter().find(|(n, _)| *n == name).map(|(_, o)| *o) else {
            cli.notes.push(format!("ignoring unknown flag {arg}"));
            continue;
        };
        let value = if !opt.takes_value() {
            if inline_value.is_some() {
                cli.notes
                    .push(format!("ignoring the value given to switch {name}"));
            }
            None
        } else if inline_value.is_some() {
            inline_value
        } else {
            // The next argument is the value, even if it starts with `-`.
            let v = rest
                .get(i)
                .cloned()
                .ok_or_else(|| format!("flag {name} needs a value"))?;
            i += 1;
            Some(v)
        };
        cli.apply(opt, name, value)?;
    }
    Ok(cli)
}

impl Cli {
    /// Handles a positional argument: the prompt if there is none yet.
    fn positional(&mut self, arg: &str) {
        if self.prompt.is_none() {
            self.prompt = Some(arg.to_string());
        } else {
            self.notes
                .push(format!("ignoring extra positional argument {arg:?}"));
        }
    }

    /// Records one recognised flag. `value` is `Some` exactly when `opt.takes_value()`.
    fn apply(&mut self, opt: Opt, name: &str, value: Option<String>) -> Result<(), String> {
        let v = value.unwrap_or_default();
        match opt {
            Opt::Prompt => self.prompt = Some(v),
            Opt::OutputFormat => self.output_format = Some(v),
            Opt::Model => self.model = Some(v),
            Opt::AppendSystemPrompt => self.append_system_prompt = Some(v),
            Opt::MaxTurns => {
                let n = v
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("{name} needs a whole number, got {v:?}"))?;
                self.max_turns = Some(n);
            }
            Opt::PermissionMode => self.permission_mode = Some(v),
            Opt::AllowedTools => self.allowed_tools.push(v),
            Opt::SessionId => self.session_id = Some(v),
            Opt::Resume => self.resume = Some(v),
            Opt::FallbackModel => self.fallback_model = Some(v),
            Opt::Verbose => self.verbose = true,
            Opt::GeminiSwitch => self.gemini_flag = true,
            Opt::ApprovalMode => {
                self.gemini_flag = true;
                self.approval_mode = Some(v);
            }
            Opt::Json => self.json = true,
            Opt::Cd => self.cd = Some(PathBuf::from(v)),
            Opt::SkipGitRepoCheck => self.skip_git_repo_check = true,
            Opt::Sandbox => self.sandbox = Some(v),
            Opt::Config => self.config.push(v),
            Opt::OutputLastMessage => self.output_last_message = Some(PathBuf::from(v)),
            Opt::Help => self.help = true,
            Opt::Ignored { .. } => {}
        }
        Ok(())
    }
}

/// `exec` is always Codex; otherwise `FAKE_AGENT_STYLE`, else Gemini-only flags, else Claude.
fn pick_style(cli: &Cli, behaviour: &Behaviour) -> Style {
    if cli.codex_exec {
        Style::Codex
    } else if let Some(style) = behaviour.style {
        style
    } else if cli.gemini_flag {
        Style::Gemini
    } else {
        Style::Claude
    }
}

/// Codex: `--json` or text. Claude/Gemini: `--output-format json|text`, text by default.
fn output_format(cli: &Cli) -> Result<Format, String> {
    if cli.codex_exec {
        return Ok(if cli.json { Format::Json } else { Format::Text });
    }
    match cli.output_format.as_deref() {
        None | Some("text") => Ok(Format::Text),
        Some("json") => Ok(Format::Json),
        Some(other) => Err(format!(
            "--output-format {other} is not supported by fake-agent (only json and text)"
        )),
    }
}

/// Prints the parsed options that the fake records but does not act on (`--verbose`).
fn note_details(cli: &Cli, style: Style) {
    note(&format!("style {style:?} (as {})", style.cli_name()));
    if let Some(s) = &cli.append_system_prompt {
        note(&format!("append-system-prompt: {} bytes", s.len()));
    }
    let fields: [(&str, Option<String>); 7] = [
        ("max-turns", cli.max_turns.map(|n| n.to_string())),
        ("permission-mode", cli.permission_mode.clone()),
        ("session-id", cli.session_id.clone()),
        ("resume", cli.resume.clone()),
        ("fallback-model (recorded only)", cli.fallback_model.clone()),
        ("approval-mode", cli.approval_mode.clone()),
        ("sandbox", cli.sandbox.clone()),
    ];
    for (label, value) in fields {
        if let Some(v) = value {
            note(&format!("{label}: {v}"));
        }
    }
    if !cli.allowed_tools.is_empty() {
        note(&format!("allowedTools: {}", cli.allowed_tools.join(" ")));
    }
    if cli.codex_exec {
        note(&format!("skip-git-repo-check: {}", cli.skip_git_repo_check));
    }
    for c in &cli.config {
        note(&format!("config: {c}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

/// What the run does, from the `FAKE_AGENT_*` variables (see the module documentation).
#[derive(Debug)]
struct Behaviour {
    style: Option<Style>,
    delay: Duration,
    exit: Option<i32>,
    is_error: bool,
    cost: f64,
    result: Option<String>,
    write: Option<PathBuf>,
    write_content: Option<String>,
    deny: bool,
    max_turns_hit: bool,
    log: Option<PathBuf>,
    spawn_child: Option<PathBuf>,
    fail_models: Vec<String>,
    stdin_check: bool,
}

impl Behaviour {
    fn from_env() -> Result<Self, String> {
        let exit = env_parse::<i32>("FAKE_AGENT_EXIT", "an exit code 0..=255")?;
        if let Some(code) = exit {
            if !(0..=255).contains(&code) {
                return Err(format!("FAKE_AGENT_EXIT must be in 0..=255, got {code}"));
            }
        }
        let cost = env_parse::<f64>("FAKE_AGENT_COST", "a number of US dollars")?
            .unwrap_or(DEFAULT_COST_USD);
        if !cost.is_finite() || cost < 0.0 {
            return Err(format!(
                "FAKE_AGENT_COST must be a non-negative number, got {cost}"
            ));
        }
        Ok(Behaviour {
            style: env_nonempty("FAKE_AGENT_STYLE")
                .map(|s| s.parse())
                .transpose()?,
            delay: Duration::from_millis(
                env_parse::<u64>("FAKE_AGENT_DELAY_MS", "a whole number of milliseconds")?
                    .unwrap_or(0),
            ),
            exit,
            is_error: env_flag("FAKE_AGENT_IS_ERROR"),
            cost,
            result: env_string("FAKE_AGENT_RESULT"),
            write: env_nonempty("FAKE_AGENT_WRITE").map(PathBuf::from),
            write_content: env_string("FAKE_AGENT_WRITE_CONTENT"),
            deny: env_flag("FAKE_AGENT_DENY"),
            max_turns_hit: env_flag("FAKE_AGENT_MAX_TURNS_HIT"),
            log: env_nonempty("FAKE_AGENT_LOG").map(PathBuf::from),
            spawn_child: env_nonempty("FAKE_AGENT_SPAWN_CHILD").map(PathBuf::from),
            fail_models: env_string("FAKE_AGENT_FAIL_MODELS")
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            stdin_check: env_flag("FAKE_AGENT_STDIN_CHECK"),
        })
    }
}

/// A variable's value, possibly empty; non-UTF-8 is converted lossily.
fn env_string(name: &str) -> Option<String> {
    env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// A variable's value, `None` when unset or empty.
fn env_nonempty(name: &str) -> Option<String> {
    env_string(name).filter(|v| !v.is_empty())
}

/// A flag variable: on unless unset, empty, `0`, `false`, `no` or `off`.
fn env_flag(name: &str) -> bool {
    env_string(name).is_some_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    })
}

/// A parsed variable; `Err` (a usage error) when set but malformed.
fn env_parse<T: FromStr>(name: &str, what: &str) -> Result<Option<T>, String> {
    match env_nonempty(name) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} must be {what}, got {v:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------------------

/// Why a run failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// `FAKE_AGENT_FAIL_MODELS` named the model: nothing ran.
    ModelUnavailable,
    /// `FAKE_AGENT_MAX_TURNS_HIT`.
    MaxTurns,
    /// `FAKE_AGENT_IS_ERROR`: like an API error in the middle of the run.
    ApiError,
}

/// What happened to `FAKE_AGENT_WRITE`.
#[derive(Debug)]
enum FileEffect {
    /// No file asked for, or the run never reached the model.
    Nothing,
    Written(PathBuf),
    /// `FAKE_AGENT_DENY`: the write was blocked (absolute path, content it would have had).
    Denied(PathBuf, String),
    /// The write was attempted and failed (a note went to stderr).
    Failed(PathBuf),
}

/// Everything the output formats need.
struct Report {
    model: String,
    session_id: String,
    failure: Option<Failure>,
    result_text: String,
    file: FileEffect,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    max_turns: Option<u32>,
    exit_code: i32,
    duration_ms: u64,
}

impl Report {
    /// The error message of a failed run, `None` on success.
    fn failure_message(&self) -> Option<String> {
        match self.failure? {
            Failure::ModelUnavailable | Failure::ApiError => Some(self.result_text.clone()),
            Failure::MaxTurns => Some(format!(
                "Reached max turns ({})",
                self.max_turns.unwrap_or(1)
            )),
        }
    }

    /// The permission denials Claude reports (at most one).
    fn permission_denials(&self) -> Vec<Value> {
        match &self.file {
            FileEffect::Denied(path, content) => vec![json!({
                "tool_name": "Write",
                "tool_use_id": "toolu_fake",
                "tool_input": {"file_path": path.to_string_lossy(), "content": content},
            })],
            _ => Vec::new(),
        }
    }
}

/// Everything after the `start` log line: stdin check, grandchild, delay, file, output.
/// Returns the exit code.
fn agent_turn(
    cli: &Cli,
    b: &Behaviour,
    style: Style,
    format: Format,
    prompt: &str,
    model: &str,
    started: Instant,
) -> i32 {
    if b.stdin_check && stdin_left_open() {
        note(&format!(
            "stdin is open; the real {} would hang",
            style.cli_name()
        ));
        return STDIN_OPEN_EXIT;
    }
    if let Some(pid_file) = &b.spawn_child {
        spawn_grandchild(pid_file);
    }
    if !b.delay.is_zero() {
        thread::sleep(b.delay);
    }

    let failure = if b.fail_models.iter().any(|m| m == model) {
        Some(Failure::ModelUnavailable)
    } else if b.max_turns_hit {
        Some(Failure::MaxTurns)
    } else if b.is_error {
        Some(Failure::ApiError)
    } else {
        None
    };
    let reached_model = failure != Some(Failure::ModelUnavailable);
    let result_text = if reached_model {
        b.result.clone().unwrap_or_else(|| default_result(prompt))
    } else {
        format!("model {model} unavailable")
    };

    let cwd = env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let content = b
        .write_content
        .clone()
        .unwrap_or_else(|| prompt.to_string());
    let file = if !reached_model {
        FileEffect::Nothing
    } else if b.deny {
        let name = b.write.as_deref().unwrap_or(Path::new(DEFAULT_DENIED_FILE));
        FileEffect::Denied(cwd.join(name), content)
    } else if let Some(name) = &b.write {
        let path = cwd.join(name);
        match write_file(&path, &content) {
            Ok(()) => FileEffect::Written(path),
            Err(e) => {
                note(&format!("cannot write {}: {e}", path.display()));
                FileEffect::Failed(path)
            }
        }
    } else {
        FileEffect::Nothing
    };

    let (input_tokens, output_tokens, cost) = if reached_model {
        (
            prompt.len() as u64 / 4 + 10,
            result_text.len() as u64 / 4 + 5,
            b.cost,
        )
    } else {
        (0, 0, 0.0)
    };
    let report = Report {
        model: model.to_string(),
        session_id: cli
            .session_id
            .clone()
            .or_else(|| cli.resume.clone())
            .unwrap_or_else(pseudo_uuid),
        failure,
        result_text,
        file,
        input_tokens,
        output_tokens,
        cost,
        max_turns: cli.max_turns,
        exit_code: b.exit.unwrap_or(i32::from(failure.is_some())),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };

    match (style, format) {
        (Style::Claude, Format::Json) => print_stdout(&claude_json(&report).to_string()),
        (Style::Claude, Format::Text) => {
            let text = report
                .failure_message()
                .map(|m| format!("Error: {m}"))
                .unwrap_or_else(|| report.result_text.clone());
            print_stdout(&text);
        }
        (Style::Codex, Format::Json) => {
            for event in codex_events(&report) {
                print_stdout(&event.to_string());
            }
        }
        (Style::Gemini, Format::Json) => print_stdout(&gemini_json(&report).to_string()),
        (Style::Codex | Style::Gemini, Format::Text) => match report.failure_message() {
            Some(m) => note(&format!("ERROR: {m}")),
            None => print_stdout(&report.result_text),
        },
    }
    if let (Some(path), None) = (&cli.output_last_message, report.failure) {
        if let Err(e) = write_file(path, &report.result_text) {
            note(&format!("cannot write {}: {e}", path.display()));
        }
    }
    report.exit_code
}

/// `done: ` and the first 60 characters (not bytes) of the prompt.
fn default_result(prompt: &str) -> String {
    let head: String = prompt.chars().take(60).collect();
    format!("done: {head}")
}

// ---------------------------------------------------------------------------------------------
// Output formats
// ---------------------------------------------------------------------------------------------

/// Claude Code's `--output-format json` result object.
fn claude_json(r: &Report) -> Value {
    let max_turns = r.failure == Some(Failure::MaxTurns);
    let mut model_usage = Map::new();
    if r.failure != Some(Failure::ModelUnavailable) {
        model_usage.insert(
            r.model.clone(),
            json!({
                "inputTokens": r.input_tokens,
                "outputTokens": r.output_tokens,
                "cacheReadInputTokens": 0,
                "cacheCreationInputTokens": 0,
                "costUSD": r.cost,
            }),
        );
    }
    let mut out = Map::new();
    out.insert("type".into(), json!("result"));
    out.insert(
        "subtype".into(),
        // An API error keeps "success": the real CLI does the same (trap 1).
        json!(if max_turns {
            "error_max_turns"
        } else {
            "success"
        }),
    );
    out.insert("is_error".into(), json!(r.failure.is_some()));
    out.insert("duration_ms".into(), json!(r.duration_ms));
    out.insert("duration_api_ms".into(), json!(r.duration_ms));
    out.insert("num_turns".into(), json!(1));
    if !max_turns {
        out.insert("result".into(), json!(r.result_text));
    }
    out.insert("session_id".into(), json!(r.session_id));
    out.insert("total_cost_usd".into(), json!(r.cost));
    out.insert(
        "usage".into(),
        json!({
            "input_tokens": r.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": r.output_tokens,
        }),
    );
    out.insert("modelUsage".into(), Value::Object(model_usage));
    out.insert("permission_denials".into(), json!(r.permission_denials()));
    out.insert(
        "terminal_reason".into(),
        json!(if max_turns { "max_turns" } else { "completed" }),
    );
    Value::Object(out)
}

/// Codex's `exec --json` events, one JSON object per line.
fn codex_events(r: &Report) -> Vec<Value> {
    let mut events = vec![
        json!({"type": "thread.started", "thread_id": r.session_id}),
        json!({"type": "turn.started"}),
    ];
    let mut next_id = 0;
    let mut item = |mut body: Value| {
        body["id"] = json!(format!("item_{next_id}"));
        next_id += 1;
        json!({"type": "item.completed", "item": body})
    };
    match &r.file {
        FileEffect::Nothing => {}
        FileEffect::Written(path) | FileEffect::Failed(path) => {
            let ok = matches!(r.file, FileEffect::Written(_));
            events.push(item(json!({
                "type": "file_change",
                "changes": [{"path": path.to_string_lossy(), "kind": "add"}],
                "status": if ok { "completed" } else { "failed" },
            })));
        }
        FileEffect::Denied(path, _) => {
            let path = path.to_string_lossy();
            events.push(item(json!({
                "type": "command_execution",
                "command": format!("bash -lc 'cat > {path}'"),
                "aggregated_output": format!("bash: {path}: Read-only file system\n"),
                "exit_code": 1,
                "status": "failed",
            })));
        }
    }
    match r.failure_message() {
        None => {
            events.push(item(
                json!({"type": "agent_message", "text": r.result_text}),
            ));
            events.push(json!({
                "type": "turn.completed",
                "usage": {
                    "input_tokens": r.input_tokens,
                    "cached_input_tokens": 0,
                    "output_tokens": r.output_tokens,
                    "reasoning_output_tokens": 0,
                },
            }));
        }
        Some(message) => {
            events.push(json!({"type": "error", "message": message}));
            events.push(json!({"type": "turn.failed", "error": {"message": message}}));
        }
    }
    events
}

/// Gemini's `--output-format json` object.
fn gemini_json(r: &Report) -> Value {
    let mut models = Map::new();
    if r.failure != Some(Failure::ModelUnavailable) {
        models.insert(
            r.model.clone(),
            json!({
                "api": {
                    "totalRequests": 1,
                    "totalErrors": u64::from(r.failure.is_some()),
                    "totalLatencyMs": r.duration_ms,
                },
                "tokens": {
                    "input": r.input_tokens,
                    "candidates": r.output_tokens,
                    "total": r.input_tokens + r.output_tokens,
                    "cached": 0,
                    "thoughts": 0,
                },
            }),
        );
    }
    let (calls, ok, failed, lines_added) = match &r.file {
        FileEffect::Nothing => (0, 0, 0, 0),
        FileEffect::Written(path) => {
            let lines = fs::read_to_string(path)
                .map(|s| s.lines().count())
                .unwrap_or(0);
            (1, 1, 0, lines)
        }
        FileEffect::Denied(..) | FileEffect::Failed(_) => (1, 0, 1, 0),
    };
    let mut out = Map::new();
    out.insert("session_id".into(), json!(r.session_id));
    match r.failure_message() {
        None => {
            out.insert("response".into(), json!(r.result_text));
        }
        Some(message) => {
            let kind = match r.failure {
                Some(Failure::MaxTurns) => "FatalTurnLimitedError",
                _ => "Error",
            };
            out.insert(
                "error".into(),
                json!({"type": kind, "message": message, "code": r.exit_code}),
            );
        }
    }
    out.insert(
        "stats".into(),
        json!({
            "models": Value::Object(models),
            "tools": {
                "totalCalls": calls,
                "totalSuccess": ok,
                "totalFail": failed,
                "totalDurationMs": 0,
                "byName": {},
            },
            "files": {"totalLinesAdded": lines_added, "totalLinesRemoved": 0},
        }),
    );
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------------
// Process and file helpers
// ---------------------------------------------------------------------------------------------

/// Re-executes this program (keeping its pid) through `sh`, with SIGTERM ignored.
/// Returns only if the `exec` failed.
fn reexec_ignoring_sigterm(args: &[OsString]) {
    let exe = match env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            note(&format!(
                "FAKE_AGENT_IGNORE_TERM: cannot find my own executable ({e}); SIGTERM is NOT ignored"
            ));
            return;
        }
    };
    // `trap '' TERM` sets SIGTERM to SIG_IGN, which survives `exec`; "$0" "$@" are the
    // executable and the original arguments, passed through untouched.
    let err = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"trap '' TERM; exec "$0" "$@""#)
        .arg(exe)
        .args(args)
        .env(TERM_IGNORED_MARKER, "1")
        .exec();
    note(&format!(
        "FAKE_AGENT_IGNORE_TERM: cannot re-exec under /bin/sh ({err}); SIGTERM is NOT ignored"
    ));
}

/// True if stdin (not a terminal) does not reach EOF within [`STDIN_GRACE`].
fn stdin_left_open() -> bool {
    if io::stdin().is_terminal() {
        // The real CLIs do not read a terminal in print mode.
        return false;
    }
    let (tx, rx) = mpsc::channel();
    // The thread may stay blocked in read(); process::exit ends it with the process.
    thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = io::stdin().lock().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    rx.recv_timeout(STDIN_GRACE).is_err()
}

/// Spawns `sleep 1000` without waiting for it and records its pid in `pid_file`.
fn spawn_grandchild(pid_file: &Path) {
    let child = Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        // Dropping a `Child` neither waits for nor kills it.
        Ok(child) => {
            if let Err(e) = write_atomically(pid_file, &format!("{}\n", child.id())) {
                note(&format!(
                    "cannot write pid file {}: {e}",
                    pid_file.display()
                ));
            }
        }
        Err(e) => note(&format!("cannot spawn grandchild `sleep 1000`: {e}")),
    }
}

/// Writes `content` to `path`, creating parent directories.
fn write_file(path: &Path, content: &str) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent)?;
        }
    }
    fs::write(path, content)
}

/// Writes through a temporary file and a rename, so a reader never sees a partial file.
fn write_atomically(path: &Path, content: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, content)?;
    fs::rename(&tmp, path)
}

/// Appends `line` to `path` with a single `write()` on an `O_APPEND` file, so lines from
/// concurrent processes never interleave. Failures are noted, not fatal.
fn append_line(path: &Path, line: &str) {
    let result = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write(line.as_bytes()));
    match result {
        Ok(n) if n == line.len() => {}
        Ok(n) => note(&format!(
            "short write to log {}: {n} of {} bytes",
            path.display(),
            line.len()
        )),
        Err(e) => note(&format!("cannot append to log {}: {e}", path.display())),
    }
}

/// Milliseconds since the Unix epoch.
fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// A version-4-shaped UUID derived from the time and the pid (unique enough for tests).
fn pseudo_uuid() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let pid = u64::from(process::id());
    let a = splitmix64(nanos ^ pid.rotate_left(32));
    let b = splitmix64(a ^ pid);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8 | (b >> 62),
        (b >> 48) & 0xfff,
        b & 0xffff_ffff_ffff,
    )
}

/// The `SplitMix64` mixing function: spreads the bits of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Prints one line on stdout and flushes; write errors (a closed pipe) are ignored.
fn print_stdout(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints `fake-agent: MESSAGE` on stderr; write errors are ignored (`eprintln!` would panic).
fn note(message: &str) {
    let _ = writeln!(io::stderr().lock(), "fake-agent: {message}");
}

/// Reports a usage error and returns its exit code.
fn usage_error(message: &str) -> i32 {
    note(message);
    note("run with --help for usage");
    USAGE_EXIT
}
