//! Agent processes: start one in its own process group, know whether it is
//! still the same process, stop it (TERM, grace, KILL) with everything it
//! started.
//!
//! Every agent runs under a tiny `sh` wrapper (or an EXIT trap) that
//! appends `<agent-id> <exit code>` to `agents/logs/exit-codes` when it
//! ends. The factory normally learns the code from `wait`, but after a
//! factory crash a restarted factory adopts agents that are not its
//! children; the record is how it still learns whether they succeeded, so a
//! task that already succeeded never runs again. One shared file, appended
//! with one short write each (atomic with O_APPEND), instead of a file per
//! agent: no inode is created per job.
//!
//! What an agent starts ends with it, even the processes that leave its
//! process group and session: see [`contain`].

pub mod contain;

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The program (resolved on the child's PATH, else ours).
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The complete environment of the child (nothing else is passed).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: PathBuf,
    /// stdout and stderr go here (appended).
    pub log: PathBuf,
    /// The wrapper appends `<exit_tag> <code>` here.
    pub exit_file: PathBuf,
    /// Names the agent in the exit record (its id; no spaces).
    pub exit_tag: String,
    /// The sandbox, or none (off).
    pub sandbox: Option<crate::sandbox::Rules>,
}

/// The wrapper script: record its pid (`<tag> start <pid>`: a factory
/// killed between starting an agent and recording its pid finds it there),
/// run the agent, record its exit code, exit with it. A record that cannot
/// be written (a full disk) never changes the code.
const WRAPPER: &str = r#"printf '%s start %s\n' "$TASKQ_EXIT_TAG" "$$" >> "$TASKQ_EXIT_FILE" 2>/dev/null || :; "$@"; rc=$?; printf '%s %s\n' "$TASKQ_EXIT_TAG" "$rc" >> "$TASKQ_EXIT_FILE" 2>/dev/null || :; exit "$rc""#;

/// The wrapper of a sandboxed agent, which may not open the exit-code
/// file: the factory hands it open as fd 9, which the agent itself never
/// gets (`9>&-`).
const SANDBOXED_WRAPPER: &str = r#"printf '%s start %s\n' "$TASKQ_EXIT_TAG" "$$" >&9 2>/dev/null || :; "$@" 9>&-; rc=$?; printf '%s %s\n' "$TASKQ_EXIT_TAG" "$rc" >&9 2>/dev/null || :; exit "$rc""#;

/// Records the shell's exit status when it exits (not when a signal kills
/// it: then taskq knows the cause itself), and exits with that status even
/// when the record cannot be written (`|| :`: the agent may run with `sh -e`).
const EXIT_TRAP: &str = r#"printf '%s start %s\n' "$TASKQ_EXIT_TAG" "$$" >> "$TASKQ_EXIT_FILE" 2>/dev/null || :; trap 'rc=$?; printf "%s %s\n" "$TASKQ_EXIT_TAG" "$rc" >> "$TASKQ_EXIT_FILE" 2>/dev/null || :; exit "$rc"' EXIT"#;

/// Moves the wrapper into the agent's cgroup before it runs anything, so
/// all the agent starts is in it (see [`contain`]); on the same line as
/// what follows, so the agent's script keeps its line numbers.
const JOIN_CGROUP: &str = r#"{ echo 0 >"$TASKQ_CGROUP/cgroup.threads"; } 2>/dev/null || echo "taskq: warning: not in cgroup $TASKQ_CGROUP" >&2; "#;

/// `(flags, script)` when the agent is `sh [flags] -c SCRIPT` and the
/// script can carry the EXIT trap: not one that may `exec` (the shell it
/// replaces takes its trap along; then the wrapper records the code).
fn inline_script(spec: &Spec) -> Option<(&[String], &str)> {
    if spec.program != "sh" {
        return None;
    }
    match spec.args.as_slice() {
        [flags @ .., c, script] if c == "-c" && flags.iter().all(|f| f.starts_with('-')) => {
            let execs = script
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|word| word == "exec");
            (!execs).then_some((flags, script.as_str()))
        }
        _ => None,
    }
}

/// Starts the agent in a new process group (its pid is the group id), with
/// stdin from /dev/null (`claude -p` and `codex exec` wait for EOF on an
/// open stdin) and stdout+stderr appended to the log.
pub fn start(spec: &Spec) -> Result<tokio::process::Child> {
    // The wrapper appends to the exit-code file with `>>`, which follows
    // links: none may stand there (nor a FIFO, which would block it).
    crate::fsutil::refuse_link(&spec.exit_file)?;
    if fs::symlink_metadata(&spec.exit_file).is_ok_and(|m| !m.file_type().is_file()) {
        return Err(Error::io(
            &spec.exit_file,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a regular file"),
        ));
    }
    let open_log = || crate::fsutil::open_append(&spec.log);
    let log = match open_log() {
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = spec.log.parent() {
                fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            open_log()
        }
        log => log,
    }?;
    let log2 = log.try_clone().map_err(|e| Error::io(&spec.log, e))?;
    let cgroup = contain::enter(&spec.exit_tag);
    let join = if cgroup.is_some() { JOIN_CGROUP } else { "" };
    let mut cmd = tokio::process::Command::new("/bin/sh");
    let sandboxed = match &spec.sandbox {
        Some(rules) => match sandboxed(spec, rules, cgroup.as_deref()) {
            Ok(s) => Some(s),
            Err(e) => {
                contain::not_started(&spec.exit_tag);
                return Err(e);
            }
        },
        None => None,
    };
    let inline = match sandboxed {
        Some(_) => None,
        None => inline_script(spec),
    };
    match inline {
        // `sh [-e] -c SCRIPT` (the shell and command adapters): the exit
        // code is recorded by an EXIT trap in that same shell, one process
        // instead of two (it halves the cost of a short job).
        Some((flags, script)) => {
            cmd.args(flags)
                .arg("-c")
                .arg(format!("{join}{EXIT_TRAP}\n{script}"));
        }
        // `sh -c SCRIPT prog prog args`: "$@" is the agent.
        None => {
            let base = match sandboxed {
                Some(_) => SANDBOXED_WRAPPER,
                None => WRAPPER,
            };
            let wrapper = match join {
                "" => Cow::Borrowed(base),
                join => Cow::Owned(format!("{join}{base}")),
            };
            cmd.arg("-c")
                .arg(wrapper.as_ref())
                .arg(&spec.program)
                .arg(&spec.program)
                .args(&spec.args);
        }
    }
    cmd.env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("TASKQ_EXIT_FILE", &spec.exit_file)
        .env("TASKQ_EXIT_TAG", &spec.exit_tag)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cg) = &cgroup {
        cmd.env("TASKQ_CGROUP", cg);
    }
    #[cfg(target_os = "linux")]
    if let Some((prepared, exit_fd)) = sandboxed {
        use std::os::fd::AsRawFd;
        let exit_fd = std::sync::Arc::new(exit_fd);
        let prepared = std::sync::Arc::new(prepared);
        // SAFETY: the closure makes system calls only (see
        // `sandbox::Prepared::apply`); it runs in the forked child.
        unsafe {
            cmd.pre_exec(move || {
                prepared.apply()?;
                let fd = exit_fd.as_raw_fd();
                let ok = match fd {
                    9 => libc::fcntl(9, libc::F_SETFD, 0) == 0,
                    _ => libc::dup2(fd, 9) == 9,
                };
                match ok {
                    true => Ok(()),
                    false => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }
    // The wrapper's `"$@"` needs $0 then the program: `sh -c SCRIPT prog prog args`.
    let child = match cmd.spawn() {
        // The factory makes the workspace before it prepares the agent, but
        // a process can remove it in between: make it again rather than
        // fail as if the program were missing.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !spec.cwd.is_dir() => {
            if let Err(e) = fs::create_dir_all(&spec.cwd) {
                contain::not_started(&spec.exit_tag);
                return Err(Error::io(&spec.cwd, e));
            }
            cmd.spawn()
        }
        spawned => spawned,
    };
    match child {
        Ok(child) => {
            if let Some(pid) = child.id() {
                contain::started(pid);
            }
            Ok(child)
        }
        Err(e) => {
            contain::not_started(&spec.exit_tag);
            Err(Error::io(PathBuf::from(&spec.program), e))
        }
    }
}

/// The sandbox made ready for the start: the ruleset, and the exit-code
/// file opened for the wrapper (it may not open it itself).
fn sandboxed(
    spec: &Spec,
    rules: &crate::sandbox::Rules,
    cgroup: Option<&Path>,
) -> Result<(crate::sandbox::Prepared, fs::File)> {
    let mut rules = rules.clone();
    if let Some(cg) = cgroup {
        rules.write_files.push(cg.join("cgroup.threads"));
    }
    let prepared = crate::sandbox::prepare(&rules).map_err(|e| {
        Error::io(
            &spec.cwd,
            std::io::Error::other(format!("cannot set up the sandbox: {e}")),
        )
    })?;
    use std::os::unix::fs::OpenOptionsExt;
    let exit = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&spec.exit_file)
        .map_err(|e| Error::io(&spec.exit_file, e))?;
    Ok((prepared, exit))
}

/// Which containment keeps the agents' process trees together (see
/// [`contain`]), for `taskq status`: what the factory of `root` whose pid
/// is `factory` uses, or with none running, what `taskq run` would use
/// here. `cgroup v2 (<path>)`, or `subreaper (...)` with what it misses.
pub fn containment(root: &Path, factory: Option<u32>) -> String {
    contain::describe(root, factory)
}

/// Checks that `program` can be found on `path` (or is a path that exists),
/// so a missing CLI is reported clearly instead of as exit 127.
pub fn find_program(program: &str, path: Option<&str>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = path
        .map(str::to_string)
        .or_else(|| std::env::var("PATH").ok())?;
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// The state letter and start time (clock ticks since boot, field 22) of
/// /proc/PID/stat; `None` when the process does not exist.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// The process's start time in clock ticks since boot; a zombie still has
/// it (an agent may end before its start is read).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// True when `pid` is running (not a zombie) and is the process that
/// started at `start` (a reused pid is not the agent).
pub fn is_alive(pid: u32, start: Option<u64>) -> bool {
    match (stat(pid), start) {
        (Some((state, _)), _) if state == 'Z' || state == 'X' => false,
        (Some((_, now)), Some(then)) => now == then,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// True when some process of the group may still run: `kill(-pgid, 0)`
/// answers "none" in one call (the common case); zombies count as members
/// there, so a "yes" is confirmed through /proc.
pub fn group_alive(pgid: u32) -> bool {
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence; no memory is involved.
    let rc = unsafe { libc::kill(-(pgid as libc::pid_t), 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    !group_members(pgid).is_empty()
}

/// Live (non-zombie) processes of a process group, found through /proc.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            fields.first().is_some_and(|s| *s != "Z" && *s != "X")
                && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        })
        .collect()
}

/// Sends `signal` to every process of the group.
pub fn signal_group(pgid: u32, signal: i32) {
    if pgid > 1 {
        // SAFETY: killpg has no memory-safety preconditions; a stale group
        // id only yields ESRCH.
        unsafe {
            libc::killpg(pgid as libc::pid_t, signal);
        }
    }
}

/// TERM to the group, then KILL once `grace` has passed with any member
/// still alive. Returns true when KILL was needed. Blocking; call from a
/// blocking context.
pub fn terminate_group(pgid: u32, grace: Duration) -> bool {
    signal_group(pgid, libc::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if !group_alive(pgid) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    if !group_alive(pgid) {
        return false;
    }
    signal_group(pgid, libc::SIGKILL);
    true
}

/// The exit code the wrapper recorded, if it finished.
pub fn read_exit_file(path: &Path, tag: &str) -> Option<i32> {
    exit_codes(path).remove(tag)
}

/// The pid each agent's wrapper recorded as it started (`<tag> start
/// <pid>` lines of `path`).
pub fn start_pids(path: &Path) -> std::collections::HashMap<String, u32> {
    let bytes = crate::fsutil::read_whole_with(path, u64::MAX, crate::fsutil::Links::Refuse)
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let (tag, word, pid) = (parts.next()?, parts.next()?, parts.next()?);
            (word == "start").then(|| Some((tag.to_string(), pid.trim().parse().ok()?)))?
        })
        .collect()
}

/// True when process `pid` is alive and is agent `tag`'s wrapper (its
/// environment names it): a recorded pid since reused by another process
/// is not mistaken for the agent.
pub fn runs_agent(pid: u32, tag: &str) -> bool {
    let Ok(Some(env)) =
        crate::fsutil::read_capped(Path::new(&format!("/proc/{pid}/environ")), 1 << 20)
    else {
        return false;
    };
    let want = format!("TASKQ_EXIT_TAG={tag}");
    env.bytes.split(|b| *b == 0).any(|kv| kv == want.as_bytes())
}

/// Every exit record in `path` (the last one of each agent).
pub fn exit_codes(path: &Path) -> std::collections::HashMap<String, i32> {
    // A regular file only, never a FIFO. Read whole, uncapped: a record
    // cut off would leave its agent unfinished, and the factory empties
    // the file whenever no agent is alive (~15 bytes an agent).
    let bytes = crate::fsutil::read_whole_with(path, u64::MAX, crate::fsutil::Links::Refuse)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    text.lines()
        .filter_map(|l| {
            let (tag, code) = l.split_once(' ')?;
            Some((tag.to_string(), code.trim().parse().ok()?))
        })
        .collect()
}

/// CPU time (utime + stime, clock ticks) of every process group, summed
/// over its live members, in one pass over /proc (stuck detection).
pub fn cpu_ticks_by_group() -> std::collections::HashMap<u32, u64> {
    let mut by_group = std::collections::HashMap::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return by_group;
    };
    for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((pgid, ticks)) = group_ticks(&stat) {
            *by_group.entry(pgid).or_insert(0) += ticks;
        }
    }
    by_group
}

/// A /proc/PID/stat line's process group and utime + stime.
fn group_ticks(stat: &str) -> Option<(u32, u64)> {
    let close = stat.rfind(')')?;
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // After the name: state(0) ppid(1) pgrp(2) … utime(11) stime(12).
    let pgid = fields.get(2)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((pgid, utime + stime))
}

/// Resident memory (KiB) of a process and all its descendants, from
/// /proc/PID/status and /proc/PID/task/*/children.
pub fn tree_rss_kb(pid: u32) -> Option<u64> {
    let mut total = 0;
    let mut stack = vec![pid];
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 4096 {
            break;
        }
        if let Ok(status) = fs::read_to_string(format!("/proc/{p}/status")) {
            if let Some(line) = status.lines().find(|l| l.starts_with("VmRSS:")) {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        } else if p == pid {
            return None;
        }
        if let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(children) = fs::read_to_string(t.path().join("children")) {
                    stack.extend(
                        children
                            .split_whitespace()
                            .filter_map(|c| c.parse::<u32>().ok()),
                    );
                }
            }
        }
    }
    Some(total)
}

/// Builds the child's environment: the allowlisted variables of ours
/// (`NAME`, or `PREFIX*` for every variable starting with PREFIX), then
/// `extra` (which wins).
pub fn environment(allow: &[String], extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            allow.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => k.starts_with(prefix),
                None => a == k,
            })
        })
        .collect();
    for (k, v) in extra {
        env.retain(|(x, _)| x != k);
        env.push((k.clone(), v.clone()));
    }
    env
}

/// The last `max` bytes (at most) of a log file: empty when it is missing,
/// or is no regular file (a FIFO would block the read, a link to
/// `/dev/zero` would never end; see [`crate::fsutil::open_regular`]).
/// Bounded even while the agent still writes to it.
pub fn read_tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(Some((mut f, len))) =
        crate::fsutil::open_regular_sized(path, crate::fsutil::Links::Refuse)
    else {
        return String::new();
    };
    if len > max {
        let _ = f.seek(SeekFrom::Start(len - max));
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ticks_reads_pgrp_utime_and_stime() {
        let line = "42 (a (weird) name) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 100 0 0";
        assert_eq!(group_ticks(line), Some((42, 10)));
        // This process's group exists and has used some CPU.
        let me = cpu_ticks_by_group();
        // SAFETY: getpgrp has no preconditions.
        let pgid = unsafe { libc::getpgrp() } as u32;
        assert!(me.contains_key(&pgid));
    }

    #[test]
    fn own_process_start_time_is_stable() {
        let me = std::process::id();
        let t = start_time(me).expect("we exist");
        assert!(is_alive(me, Some(t)));
        assert!(
            !is_alive(me, Some(t + 1)),
            "a different start time is another process"
        );
        assert!(!is_alive(4_000_000, None));
    }

    #[test]
    fn the_exit_code_is_recorded_even_when_the_script_execs() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (script, code) in [
            ("exit 4", 4),
            ("exec sh -c 'exit 3'", 3),
            ("echo hi; exec true", 0),
        ] {
            let spec = Spec {
                program: "sh".into(),
                args: vec!["-e".into(), "-c".into(), script.into()],
                env: vec![("PATH".into(), std::env::var("PATH").unwrap())],
                cwd: dir.path().to_path_buf(),
                log: dir.path().join("job.log"),
                exit_file: dir.path().join("exit-codes"),
                exit_tag: format!("SH-{code}"),
                sandbox: None,
            };
            let status = rt.block_on(async { start(&spec).unwrap().wait().await.unwrap() });
            assert_eq!(status.code(), Some(code), "{script}");
            assert_eq!(
                read_exit_file(&spec.exit_file, &spec.exit_tag),
                Some(code),
                "{script}"
            );
        }
        let all = exit_codes(&dir.path().join("exit-codes"));
        assert_eq!(all.len(), 3, "{all:?}");
    }

    #[test]
    fn environment_is_an_allowlist() {
        std::env::set_var("TASKQ_UNIT_A", "1");
        std::env::set_var("TASKQ_UNIT_B", "2");
        let env = environment(
            &["TASKQ_UNIT_*".into(), "NOPE".into()],
            &[("X".into(), "y".into())],
        );
        let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            keys.contains(&"TASKQ_UNIT_A") && keys.contains(&"TASKQ_UNIT_B") && keys.contains(&"X")
        );
        assert!(!keys.contains(&"PATH"));
    }
}
