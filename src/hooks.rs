//! Hooks: executables in `agents/hooks/` named after an event (`on-spawn`,
//! `on-done`, `on-fail`, `on-review`, `on-approval-pending`, `on-cost-cap`,
//! `on-idle`) run with the event's JSON on stdin. They run in the
//! background, in their own process group, killed after the config's
//! `hook_timeout`; their output goes to `agents/logs/hooks.log`; a failing
//! hook is logged and never blocks or stops the factory.
//!
//! Hooks never see the factory's whole environment: only the variables the
//! config's `hooks.env` allows (default [`crate::config::DEFAULT_HOOK_ENV`])
//! and `TASKQ_ROOT`, `TASKQ_EVENT`. A hook file others may write (group- or
//! world-writable), or a link leading out of the root, is refused with a
//! warning: a hook runs as the person who runs the factory.
//!
//! [`run_detached`] is that runner; the config's notification commands
//! (see [`crate::notify`]) use it too.

use std::io::{Read, Write};
use std::path::PathBuf;
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

/// At most this much of a hook's or notification's output (stdout and
/// stderr together) reaches its log; the rest is read and dropped (a
/// command printing forever fills no disk and never blocks on a full pipe).
pub const OUTPUT_CAP: usize = 64 * 1024;

/// Runs `agents/hooks/<event>` (if it exists) with `payload` on stdin, in
/// a background thread. Returns the thread's handle (tests may join it).
pub fn fire(
    root: &Root,
    event: &str,
    mut payload: Value,
    config: &crate::config::Config,
) -> Option<std::thread::JoinHandle<()>> {
    debug_assert!(EVENTS.contains(&event), "unknown hook event {event}");
    let path = root.hook(event);
    if !path.is_file() {
        return None;
    }
    let log_path = root.dir.join("agents").join("logs").join("hooks.log");
    if let Some(why) = untrusted(root, &path) {
        let _ = std::fs::create_dir_all(log_path.parent().expect("has a parent"));
        append_log(
            &log_path,
            &format!("hook {event}"),
            &format!("refused: {why}"),
            &[],
        );
        tracing::warn!("agents/hooks/{event} refused: {why}");
        return None;
    }
    if let Value::Object(map) = &mut payload {
        map.insert("event".into(), Value::String(event.into()));
        map.insert("root".into(), Value::String(root.dir.display().to_string()));
    }
    let label = format!("hook {event}");
    let mut cmd = Command::new(&path);
    cmd.current_dir(&root.dir);
    let env = crate::spawn::environment(
        &config.hooks.env,
        &[
            ("TASKQ_ROOT".into(), root.dir.display().to_string()),
            ("TASKQ_EVENT".into(), event.to_string()),
        ],
    );
    Some(run_detached(
        cmd,
        label,
        payload.to_string().into_bytes(),
        config.hook_timeout,
        log_path,
        env,
    ))
}

/// Why the hook file at `path` may not run, if so: a link leading out of
/// the root, or a file others may write (group- or world-writable; a hook
/// runs with the factory's rights). Agents cannot write `agents/` under the
/// sandbox; this holds for the rest.
pub fn untrusted(root: &Root, path: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let link = std::fs::symlink_metadata(path).ok()?;
    if link.file_type().is_symlink() {
        let target = std::fs::canonicalize(path).ok()?;
        let top = std::fs::canonicalize(&root.dir).ok()?;
        if !target.starts_with(&top) {
            return Some(format!(
                "it is a link to {}, outside the root (a hook must live in the root)",
                target.display()
            ));
        }
    }
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Some(format!(
            "others may write it (mode {:o}); `chmod go-w` it to let it run",
            mode & 0o7777
        ));
    }
    None
}

/// Runs `cmd` in a background thread, in its own process group, with
/// `input` on stdin and exactly the environment `env`: its output (capped at [`OUTPUT_CAP`]) is appended to
/// `log_path`; past `timeout` its whole group is killed. A command that
/// cannot start, fails or times out is logged (a warning naming `label`);
/// nothing it does can block or stop the caller.
pub fn run_detached(
    mut cmd: Command,
    label: String,
    input: Vec<u8>,
    timeout: Duration,
    log_path: PathBuf,
    env: Vec<(String, String)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let _ = std::fs::create_dir_all(log_path.parent().expect("has a parent"));
        // Only the environment given: never the factory's secrets.
        cmd.env_clear().envs(env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                append_log(&log_path, &label, &format!("could not start: {e}"), &[]);
                tracing::warn!(%label, error = %e, "could not start");
                return;
            }
        };
        let pgid = child.id();
        if let Some(mut stdin) = child.stdin.take() {
            // In a thread of its own: a command that never reads its stdin
            // must not hold the runner up.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&input);
            });
        }
        // stdout and stderr into one capped buffer, in arrival order.
        let kept = std::sync::Arc::new(std::sync::Mutex::new((Vec::new(), 0u64)));
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        .map(|r| {
            let kept = std::sync::Arc::clone(&kept);
            std::thread::spawn(move || read_capped(r, &kept))
        })
        .collect();
        let start = Instant::now();
        let verdict = loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break None,
                Ok(Some(status)) => break Some(format!("failed ({status})")),
                Ok(None) if start.elapsed() >= timeout => {
                    crate::spawn::signal_group(pgid, libc::SIGKILL);
                    let _ = child.wait();
                    break Some(format!("killed after {}", crate::duration::format(timeout)));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Some(format!("could not be waited for: {e}")),
            }
        };
        // A background process it left holds the pipe open: give it a
        // moment, then end the group (nothing a notification starts
        // outlives it).
        let until = Instant::now() + Duration::from_secs(1);
        let done = |rs: &[std::thread::JoinHandle<()>]| rs.iter().all(|r| r.is_finished());
        while !done(&readers) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !done(&readers) {
            crate::spawn::signal_group(pgid, libc::SIGKILL);
        }
        for r in readers {
            let _ = r.join();
        }
        let (text, dropped) = std::mem::take(&mut *kept.lock().unwrap_or_else(|e| e.into_inner()));
        let status = match &verdict {
            None => "ok".to_string(),
            Some(why) => why.clone(),
        };
        let status = match dropped {
            0 => status,
            n => format!("{status}; {n} more bytes of output dropped"),
        };
        append_log(&log_path, &label, &status, &text);
        if let Some(why) = verdict {
            tracing::warn!(%label, "{why} (see {})", log_path.display());
        }
    })
}

/// Output kept so far (at most [`OUTPUT_CAP`] bytes) and how many bytes
/// were dropped.
type Kept = std::sync::Mutex<(Vec<u8>, u64)>;

/// Reads a pipe to its end into `kept`, up to [`OUTPUT_CAP`] bytes in all;
/// the rest is read and counted.
fn read_capped(mut reader: Box<dyn Read + Send>, kept: &Kept) {
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                let room = OUTPUT_CAP.saturating_sub(k.0.len()).min(n);
                k.0.extend_from_slice(&buf[..room]);
                k.1 += (n - room) as u64;
            }
        }
    }
}

/// Appends `<time> <label>: <status>` and the output to the log.
fn append_log(path: &std::path::Path, label: &str, status: &str, output: &[u8]) {
    // Never through a link, never a FIFO (see fsutil::open_append).
    let Ok(mut log) = crate::fsutil::open_append(path) else {
        return;
    };
    let now = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%:z");
    let mut text = output.to_vec();
    if !text.is_empty() && !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    let _ = log.write_all(&text);
    let _ = writeln!(log, "{now} {label}: {status}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that prints a lot and never ends: its output is capped,
    /// its group killed at the timeout, both logged.
    #[test]
    fn output_is_capped_and_a_hanging_command_killed() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/n.log");
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("head -c 200000 /dev/zero | tr '\\0' x; sleep 30 & sleep 30");
        let start = Instant::now();
        run_detached(
            cmd,
            "test".into(),
            b"{}".to_vec(),
            Duration::from_secs(1),
            log.clone(),
            vec![("PATH".into(), std::env::var("PATH").unwrap())],
        )
        .join()
        .unwrap();
        assert!(start.elapsed() < Duration::from_secs(10));
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.len() < OUTPUT_CAP + 200, "{}", text.len());
        assert!(
            text.contains("test: killed after 1s; 134464 more bytes of output dropped"),
            "{}",
            &text[text.len() - 200..]
        );
    }
}
