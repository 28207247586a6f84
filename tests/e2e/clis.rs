//! The real agent CLIs, installed on first use from the npm registry into
//! `target/agent-clis/` (pinned versions, `npm install --no-save`), once
//! for every test and every parallel `cargo test` (a file lock), reused
//! after. `TASKQ_SKIP_AGENT_CLIS=1` skips the end-to-end tests on a laptop
//! without npm or network; CI never sets it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The pinned packages (shared/agent-clis.md: the versions measured).
pub const PACKAGES: &[&str] = &[
    "@anthropic-ai/claude-code@2.1.197",
    "@openai/codex@0.169.0",
    "@google/gemini-cli@0.61.0",
];

/// The skip switch.
pub const SKIP_VAR: &str = "TASKQ_SKIP_AGENT_CLIS";

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
    if std::env::var(SKIP_VAR).is_ok_and(|v| !v.is_empty() && v != "0") {
        eprintln!(
            "e2e: skipped: {SKIP_VAR} is set, so the real claude/codex/gemini CLIs are not \
             installed or run (CI never sets it)"
        );
        return None;
    }
    static CLIS: OnceLock<Clis> = OnceLock::new();
    Some(CLIS.get_or_init(install))
}

/// `target/agent-clis` (honouring `CARGO_TARGET_DIR`).
pub fn install_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(target)
    };
    target.join("agent-clis")
}

fn install() -> Clis {
    let dir = install_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let bin = dir.join("node_modules").join(".bin");
    let clis = Clis {
        claude: bin.join("claude"),
        codex: bin.join("codex"),
        gemini: bin.join("gemini"),
    };
    let marker = dir.join(".installed");
    let wanted = PACKAGES.join("\n");
    let installed = || {
        std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == wanted)
            && [&clis.claude, &clis.codex, &clis.gemini]
                .iter()
                .all(|p| p.exists())
    };
    // One installer at a time, across threads and processes.
    let lock_path = dir.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    fs2::FileExt::lock_exclusive(&lock)
        .unwrap_or_else(|e| panic!("lock {}: {e}", lock_path.display()));
    if installed() {
        eprintln!("e2e: reusing the agent CLIs in {}", dir.display());
        let _ = fs2::FileExt::unlock(&lock);
        return clis;
    }
    let npm = Command::new("npm")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match npm {
        Ok(o) if o.status.success() => {}
        _ => panic!(
            "npm not found: the end-to-end tests install the real agent CLIs ({}) with npm \
             (Node.js >= 20) into {}. Install Node.js and npm, or set {SKIP_VAR}=1 to skip \
             these tests (CI must not).",
            PACKAGES.join(", "),
            dir.display()
        ),
    }
    let _ = std::fs::remove_file(&marker);
    eprintln!(
        "e2e: installing {} into {} ...",
        PACKAGES.join(" "),
        dir.display()
    );
    let start = Instant::now();
    let out = Command::new("npm")
        .args([
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefix",
        ])
        .arg(&dir)
        .args(PACKAGES)
        .stdin(Stdio::null())
        .output()
        .expect("run npm install");
    let took = start.elapsed();
    if !out.status.success() {
        panic!(
            "npm install of the agent CLIs failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for p in [&clis.claude, &clis.codex, &clis.gemini] {
        assert!(p.exists(), "npm install did not create {}", p.display());
    }
    std::fs::write(&marker, &wanted).expect("write the install marker");
    eprintln!(
        "e2e: installed the agent CLIs in {:.1} s",
        took.as_secs_f64()
    );
    let _ = fs2::FileExt::unlock(&lock);
    clis
}
