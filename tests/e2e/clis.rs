//! The real agent CLIs, installed on first use from the npm registry into
//! `target/agent-clis/` (pinned versions, `npm install --no-save`), once
//! for every test and every parallel `cargo test` (a file lock), reused
//! after (the installer is `util::npm`). `TASKQ_SKIP_AGENT_CLIS=1` skips
//! the end-to-end tests on a laptop without npm or network; CI never sets
//! it.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::util::npm::{self, NpmInstall, SKIP_VAR};

/// The pinned packages (shared/agent-clis.md: the versions measured).
pub const PACKAGES: &[&str] = &[
    "@anthropic-ai/claude-code@2.1.197",
    "@openai/codex@0.169.0",
    "@google/gemini-cli@0.61.0",
];

/// Absolute paths of the three CLIs.
#[derive(Debug, Clone)]
pub struct Clis {
    pub claude: PathBuf,
    pub codex: PathBuf,
    pub gemini: PathBuf,
}

/// The CLIs, installing them if needed; `None` (with a note on stderr)
/// when `TASKQ_SKIP_AGENT_CLIS=1`. Panics with a clear message when they
/// cannot be installed.
pub fn clis() -> Option<&'static Clis> {
    if npm::skip_requested() {
        eprintln!(
            "e2e: skipped: {SKIP_VAR} is set, so the real claude/codex/gemini CLIs are not \
             installed or run (CI never sets it)"
        );
        return None;
    }
    static CLIS: OnceLock<Clis> = OnceLock::new();
    Some(CLIS.get_or_init(install))
}

/// Installs the three CLIs into `target/agent-clis` (or reuses them).
fn install() -> Clis {
    let dir = npm::agent_clis_dir();
    let bin = dir.join("node_modules").join(".bin");
    let clis = Clis {
        claude: bin.join("claude"),
        codex: bin.join("codex"),
        gemini: bin.join("gemini"),
    };
    let spec = NpmInstall {
        label: "e2e",
        dir,
        packages: PACKAGES,
        flags: &[],
        creates: vec![clis.claude.clone(), clis.codex.clone(), clis.gemini.clone()],
        writes: Vec::new(),
        name: "the agent CLIs".into(),
        failed_name: "the agent CLIs".into(),
        needs: format!(
            "the end-to-end tests install the real agent CLIs ({}) with npm (Node.js >= 20)",
            PACKAGES.join(", ")
        ),
    };
    let _lock = spec.install(|| "the agent CLIs".into());
    clis
}
