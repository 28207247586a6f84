//! `taskq logs [-f] AGENT|TASK`: print an agent's log, or follow it as it
//! is written (for a task: its latest agent).
//!
//! Reads only regular files, through `fsutil` (never a FIFO, never through
//! a symbolic link), in bounded chunks: a log of gigabytes streams with
//! constant memory. `-f` polls the file every 100 ms (one `read` that
//! returns nothing when idle) and ends by itself once the agent has ended
//! and its log is drained; SIGINT ends it at once, and a closed pipe
//! (`taskq logs -f X | head`) ends it quietly.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::fsutil::{self, Links};
use crate::registry::{Agent, Registry};
use crate::spawn;

/// Arguments of `taskq logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// An agent id (`BLD-004`), or a task id (`42`, `TASK-042`) for the
    /// latest agent that worked on it.
    #[arg(value_name = "AGENT|TASK")]
    pub what: String,

    /// Follow the log as it is written; ends when the agent has ended and
    /// every line is printed (or on Ctrl-C).
    #[arg(short, long)]
    pub follow: bool,

    /// Only the last N lines (then follow, with `-f`).
    #[arg(short = 'n', long, value_name = "N")]
    pub lines: Option<usize>,
}

/// The most read at once (and the most of a log `--lines` looks back
/// through).
const CHUNK: usize = 64 * 1024;
const TAIL_MAX: u64 = 1 << 20;

/// Which log: the agent and its file.
pub struct Target {
    /// The agent id.
    pub agent: String,
    /// Its registry entry, when it is still in the registry.
    pub entry: Option<Agent>,
    /// The log file (absolute).
    pub path: PathBuf,
}

/// Finds the agent `what` names (an agent id, else a task's latest agent).
pub fn resolve(ctx: &Ctx, reg: &Registry, what: &str) -> Result<Target> {
    let found = |a: &Agent| Target {
        agent: a.id.clone(),
        entry: Some(a.clone()),
        path: ctx.root.log(&a.id),
    };
    if let Some(a) = reg.agents.get(what) {
        return Ok(found(a));
    }
    // An agent moved to history keeps its log file.
    if crate::task::validate_id(what).is_ok() && ctx.root.log(what).is_file() {
        return Ok(Target {
            agent: what.to_string(),
            entry: None,
            path: ctx.root.log(what),
        });
    }
    let scan = crate::store::scan_lean(&ctx.root);
    let i = scan.resolve(what).map_err(|_| {
        Error::usage_hint(
            format!("no agent or task `{what}`"),
            "`taskq status` lists the agents, `taskq list` the tasks",
        )
    })?;
    let task = &scan.tasks[i].id;
    reg.agents
        .values()
        .filter(|a| *a.task == **task)
        .max_by_key(|a| (a.spawned, a.attempt))
        .map(found)
        .ok_or_else(|| {
            Error::conflict_hint(
                format!("`{task}`: no agent has run it yet, so it has no log"),
                format!("`taskq why {task}` says what it waits for"),
            )
        })
}

/// Runs `taskq logs`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let reg = Registry::load(&ctx.root)?;
    let target = resolve(ctx, &reg, &args.what)?;
    let rel = target
        .path
        .strip_prefix(&ctx.root.dir)
        .unwrap_or(&target.path)
        .display()
        .to_string();
    let Some((mut file, len)) = fsutil::open_regular_sized(&target.path, Links::Refuse)? else {
        if !args.follow {
            return Err(Error::conflict_hint(
                format!("`{}` has no log yet ({rel})", target.agent),
                format!("`taskq logs -f {}` waits for it", target.agent),
            ));
        }
        return follow_from(ctx, &target, None, 0, args.json_lines(ctx));
    };
    // Where to start: the whole log, or its last N lines.
    let start = match args.lines {
        Some(n) => tail_start(&mut file, len, n).map_err(|e| Error::io(&target.path, e))?,
        None => 0,
    };
    if ctx.out.json && !args.follow {
        let text = spawn::read_tail(&target.path, TAIL_MAX.min(len - start));
        let lines: Vec<&str> = text.lines().collect();
        ctx.out.json(&serde_json::json!({
            "agent": target.agent,
            "task": target.entry.as_ref().map(|a| a.task.clone()),
            "status": target.entry.as_ref().map(|a| a.status.as_str()),
            "log": rel,
            "truncated": len - start > TAIL_MAX,
            "lines": lines,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    if !args.follow {
        let mut out = std::io::BufWriter::with_capacity(CHUNK, std::io::stdout().lock());
        let mut buf = vec![0u8; CHUNK];
        file.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(&target.path, e))?;
        // What was there when we looked: a log still growing does not keep
        // this going.
        let mut left = len - start;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            let n = file
                .read(&mut buf[..want])
                .map_err(|e| Error::io(&target.path, e))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(|e| Error::io("<stdout>", e))?;
            left -= n as u64;
        }
        out.flush().map_err(|e| Error::io("<stdout>", e))?;
        return Ok(ExitCode::SUCCESS);
    }
    follow_from(ctx, &target, Some(file), start, args.json_lines(ctx))
}

impl Args {
    fn json_lines(&self, ctx: &Ctx) -> bool {
        ctx.out.json && self.follow
    }
}

/// The offset of the last `n` lines (looking back at most [`TAIL_MAX`]).
fn tail_start(file: &mut std::fs::File, len: u64, n: usize) -> std::io::Result<u64> {
    let from = len.saturating_sub(TAIL_MAX);
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    file.take(len - from).read_to_end(&mut buf)?;
    // A last line without its newline counts as a line.
    let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
    let mut seen = 0;
    for (k, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return Ok(from + k as u64 + 1);
            }
        }
    }
    Ok(if n == 0 { len } else { from })
}

/// Follows the log from `offset`: prints what is written, until the agent
/// has ended and the log is drained.
fn follow_from(
    ctx: &Ctx,
    target: &Target,
    mut file: Option<std::fs::File>,
    mut offset: u64,
    json: bool,
) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; CHUNK];
    let mut partial: Vec<u8> = Vec::new();
    let reg_path = ctx.root.registry_file();
    let mut reg_stamp = fsutil::stamp_of(&reg_path);
    let mut entry = target.entry.clone();
    let mut last_check = Instant::now();
    let mut ended = entry.as_ref().is_none_or(has_ended);
    loop {
        if file.is_none() {
            file = fsutil::open_regular(&target.path, Links::Refuse)?;
        }
        let mut got = false;
        if let Some(f) = file.as_mut() {
            // Truncated (or replaced by a shorter file): from its start.
            if f.metadata().is_ok_and(|m| m.len() < offset) {
                offset = 0;
            }
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| Error::io(&target.path, e))?;
            loop {
                let n = f.read(&mut buf).map_err(|e| Error::io(&target.path, e))?;
                if n == 0 {
                    break;
                }
                got = true;
                offset += n as u64;
                emit(&mut out, &buf[..n], json, &target.agent, &mut partial)?;
            }
            out.flush().map_err(|e| Error::io("<stdout>", e))?;
        }
        if ended && !got {
            if json && !partial.is_empty() {
                let line = String::from_utf8_lossy(&partial).into_owned();
                json_line(&mut out, &target.agent, &line)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !got {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Has it ended? The registry when it changed, at most twice a
        // second; its process when the registry still says it lives.
        if !ended && last_check.elapsed() >= Duration::from_millis(500) {
            last_check = Instant::now();
            let stamp = fsutil::stamp_of(&reg_path);
            if stamp != reg_stamp {
                reg_stamp = stamp;
                if let Ok(reg) = Registry::load(&ctx.root) {
                    entry = reg.agents.get(&target.agent).cloned();
                }
            }
            ended = entry.as_ref().is_none_or(has_ended);
        }
    }
}

/// Ended: the registry says so, or its process is gone.
fn has_ended(a: &Agent) -> bool {
    if !a.status.is_live() {
        return true;
    }
    a.pid.is_some_and(|pid| !spawn::is_alive(pid, a.pid_start))
}

fn emit(
    out: &mut impl Write,
    bytes: &[u8],
    json: bool,
    agent: &str,
    partial: &mut Vec<u8>,
) -> Result<()> {
    if !json {
        return out.write_all(bytes).map_err(|e| Error::io("<stdout>", e));
    }
    partial.extend_from_slice(bytes);
    while let Some(k) = partial.iter().position(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(&partial[..k]).into_owned();
        partial.drain(..=k);
        json_line(out, agent, &line)?;
    }
    Ok(())
}

fn json_line(out: &mut impl Write, agent: &str, line: &str) -> Result<()> {
    let v = serde_json::json!({"agent": agent, "line": line});
    writeln!(out, "{v}").map_err(|e| Error::io("<stdout>", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_start_where_they_should() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        for (text, n, want) in [
            ("a\nb\nc\n", 2, "b\nc\n"),
            ("a\nb\nc", 2, "b\nc"),
            ("a\nb\nc\n", 5, "a\nb\nc\n"),
            ("a\nb\nc\n", 0, ""),
            ("", 3, ""),
        ] {
            std::fs::write(&p, text).unwrap();
            let mut f = std::fs::File::open(&p).unwrap();
            let start = tail_start(&mut f, text.len() as u64, n).unwrap();
            assert_eq!(&text[start as usize..], want, "{text:?} {n}");
        }
    }
}
