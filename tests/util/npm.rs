//! Pinned npm packages for the tests that run real agent CLIs: installed on
//! first use from the npm registry into a directory under
//! `target/agent-clis/` (`npm install --no-save`), once for every test and
//! every parallel `cargo test` (a file lock), reused after.
//! `TASKQ_SKIP_AGENT_CLIS=1` skips those tests on a laptop without npm or
//! network; CI never sets it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The skip switch.
pub const SKIP_VAR: &str = "TASKQ_SKIP_AGENT_CLIS";

/// True when `TASKQ_SKIP_AGENT_CLIS` is set to anything but empty or `0`.
pub fn skip_requested() -> bool {
    std::env::var(SKIP_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `target/agent-clis` (honouring `CARGO_TARGET_DIR`, taken relative to
/// the crate when it is relative).
pub fn agent_clis_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        manifest.join(target)
    };
    target.join("agent-clis")
}

/// One `npm install` of pinned packages into a directory of its own.
pub struct NpmInstall<'a> {
    /// What the notes on stderr start with (`e2e`, `openclaw`).
    pub label: &'a str,
    /// The `--prefix` directory. Its lock is `<dir>.lock` beside it; its
    /// `.installed` marker lists the packages of the finished install.
    pub dir: PathBuf,
    /// The pinned packages, all in one command: a second
    /// `npm install --no-save` into the same prefix prunes what the first
    /// one installed.
    pub packages: &'a [&'a str],
    /// More `npm install` flags, after `--no-save --no-audit --no-fund`.
    pub flags: &'a [&'a str],
    /// The files npm must create.
    pub creates: Vec<PathBuf>,
    /// The files `finish` writes; an install is reused only when these and
    /// `creates` exist.
    pub writes: Vec<PathBuf>,
    /// What a reused install is called: `<label>: reusing <name> in <dir>`.
    pub name: String,
    /// What a failed install is called: `npm install of <failed_name>
    /// failed`.
    pub failed_name: String,
    /// Who needs npm for what: `npm not found: <needs> into <dir>. Install
    /// Node.js and npm, or set TASKQ_SKIP_AGENT_CLIS=1 ...`.
    pub needs: String,
}

/// The install lock (an exclusive `flock` on `<dir>.lock`), held until
/// dropped.
#[must_use = "the install lock is released when dropped"]
pub struct InstallLock(File);

impl InstallLock {
    /// Waits for the lock at `path`, across threads and processes.
    fn acquire(path: &Path) -> InstallLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        fs2::FileExt::lock_exclusive(&file)
            .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
        InstallLock(file)
    }
}

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = fs2::FileExt::unlock(&self.0);
    }
}

impl NpmInstall<'_> {
    /// Installs the packages unless a finished install of the same ones is
    /// there, one installer at a time. After a fresh `npm install`,
    /// `finish` runs before the install is recorded: it writes `writes` and
    /// returns what the `installed ... in N s` note names. Returns the lock,
    /// so the caller can do more under it. Panics with a clear message when
    /// npm is missing or the install fails.
    pub fn install(&self, finish: impl FnOnce() -> String) -> InstallLock {
        let (label, dir) = (self.label, &self.dir);
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let marker = dir.join(".installed");
        let wanted = self.packages.join("\n");
        let installed = || {
            std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == wanted)
                && self.creates.iter().chain(&self.writes).all(|p| p.exists())
        };
        let lock = InstallLock::acquire(&dir.with_extension("lock"));
        if installed() {
            eprintln!("{label}: reusing {} in {}", self.name, dir.display());
            return lock;
        }
        let npm = Command::new("npm")
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        if !matches!(npm, Ok(ref o) if o.status.success()) {
            panic!(
                "npm not found: {} into {}. Install Node.js and npm, or set {SKIP_VAR}=1 to \
                 skip these tests (CI must not).",
                self.needs,
                dir.display()
            );
        }
        let _ = std::fs::remove_file(&marker);
        eprintln!(
            "{label}: installing {} into {} ...",
            self.packages.join(" "),
            dir.display()
        );
        let start = Instant::now();
        let out = Command::new("npm")
            .args(["install", "--no-save", "--no-audit", "--no-fund"])
            .args(self.flags)
            .arg("--prefix")
            .arg(dir)
            .args(self.packages)
            .stdin(Stdio::null())
            .output()
            .expect("run npm install");
        let took = start.elapsed();
        if !out.status.success() {
            panic!(
                "npm install of {} failed ({}):\n{}\n{}",
                self.failed_name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for p in &self.creates {
            assert!(p.exists(), "npm install did not create {}", p.display());
        }
        let what = finish();
        std::fs::write(&marker, &wanted).expect("write the install marker");
        eprintln!("{label}: installed {what} in {:.1} s", took.as_secs_f64());
        lock
    }
}
