//! Real git in a test root.

use std::process::Command;

use super::root::TestRoot;

/// Runs `git -C <root> ARGS`, asserts it succeeded and returns its stdout.
#[track_caller]
pub fn git(root: &TestRoot, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(root.path())
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
