//! Hooks: executables in `agents/hooks/` named after an event (`on-spawn`,
//! `on-done`, `on-fail`, `on-review`, `on-approval-pending`, `on-cost-cap`,
//! `on-idle`) run with the event's JSON on stdin. They run in the
//! background, in their own process group, killed after the config's
//! `hook_timeout`; their output goes to `agents/logs/hooks.log`; a failing
//! hook is logged and never blocks or stops the factory.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::root::Root;

/// The events hooks can be named after.
pub const EVENTS: &[&str] = &[
    "on-spawn",
    "on-done",
    "on-fail",
    "on-review",
    "on-approval-pending",
    "on-cost-cap",
    "on-idle",
];

/// Runs `agents/hooks/<event>` (if it exists) with `payload` on stdin, in
/// a background thread. Returns the thread's handle (tests may join it).
pub fn fire(
    root: &Root,
    event: &str,
    mut payload: Value,
    timeout: Duration,
) -> Option<std::thread::JoinHandle<()>> {
    debug_assert!(EVENTS.contains(&event), "unknown hook event {event}");
    let path = root.hook(event);
    if !path.is_file() {
        return None;
    }
    if let Value::Object(map) = &mut payload {
        map.insert("event".into(), Value::String(event.into()));
        map.insert("root".into(), Value::String(root.dir.display().to_string()));
    }
    let log_path = root.dir.join("agents").join("logs").join("hooks.log");
    let event = event.to_string();
    Some(std::thread::spawn(move || {
        let _ = std::fs::create_dir_all(log_path.parent().expect("has a parent"));
        let log = crate::fsutil::open_append(&log_path)
            .ok()
            .and_then(|l| Some((l.try_clone().ok()?, l)));
        let (out, err) = match log {
            Some((a, b)) => (Stdio::from(a), Stdio::from(b)),
            None => (Stdio::null(), Stdio::null()),
        };
        let mut cmd = Command::new(&path);
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(hook = %path.display(), error = %e, "hook could not start");
                return;
            }
        };
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(payload.to_string().as_bytes());
        }
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return,
                Ok(Some(status)) => {
                    tracing::warn!(hook = %event, %status, "hook failed (see agents/logs/hooks.log)");
                    return;
                }
                Ok(None) if start.elapsed() >= timeout => {
                    crate::spawn::signal_group(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    tracing::warn!(hook = %event, "hook killed after {timeout:?}");
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => return,
            }
        }
    }))
}
