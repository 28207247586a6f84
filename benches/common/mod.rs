//! What the two benchmark programs (`benches/queue.rs`, `benches/factory.rs`)
//! share: the command line, the report's header (the machine), the
//! file-system type of a directory, the `--keep` directory, and the launcher
//! process that starts every measured command and reaps it with `wait4`.
//!
//! Each bench includes this file with `mod common;`; it is not a bench
//! target of its own.

use std::fs;
use std::io::{self, BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The `taskq` binary built for this benchmark.
pub const TASKQ: &str = env!("CARGO_BIN_EXE_taskq");

/// The hidden first argument that turns a bench binary into its launcher.
pub const LAUNCHER_FLAG: &str = "--internal-launcher";

// ---------------------------------------------------------------------------
// Command line and environment

/// The value of the environment variable `name`, unless it is unset, not
/// UTF-8, or only white space.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.trim().is_empty())
}

/// A count as the benches take it: digits with optional `_` separators and
/// an optional `k`/`K` suffix for thousands (`10k`, `100_000`), white space
/// around it ignored. `None` when it is not one.
pub fn parse_count(s: &str) -> Option<usize> {
    let t = s.trim();
    let (digits, mult) = match t.strip_suffix(['k', 'K']) {
        Some(d) => (d, 1_000),
        None => (t, 1),
    };
    digits
        .replace('_', "")
        .parse::<usize>()
        .ok()
        .map(|n| n * mult)
}

/// The command line of a bench (after the program name), read flag by flag;
/// a flag's value is either inline (`--flag=value`) or the next argument.
///
/// It answers two flags itself: `--bench`, which `cargo bench` passes to
/// `harness = false` targets, is skipped, and `-h`/`--help` prints the
/// usage and exits.
pub struct Args {
    rest: std::iter::Skip<std::env::Args>,
    usage: &'static str,
    /// The inline value of the flag last returned, if it had one.
    inline: Option<String>,
}

impl Args {
    /// The process's arguments; `usage` is what `--help` prints.
    pub fn new(usage: &'static str) -> Args {
        Args {
            rest: std::env::args().skip(1),
            usage,
            inline: None,
        }
    }

    /// The next flag (or stray argument), without its inline `=value`,
    /// which [`Args::value`] then gives. `None` at the end.
    pub fn next_flag(&mut self) -> Option<String> {
        loop {
            let arg = self.rest.next()?;
            let flag = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => {
                    self.inline = Some(v.to_string());
                    f.to_string()
                }
                _ => {
                    self.inline = None;
                    arg
                }
            };
            match flag.as_str() {
                "--bench" => {}
                "-h" | "--help" => {
                    println!("{}", self.usage);
                    std::process::exit(0);
                }
                _ => return Some(flag),
            }
        }
    }

    /// The value of the flag `name` just returned by [`Args::next_flag`]:
    /// its inline `=value`, else the next argument.
    pub fn value(&mut self, name: &str) -> Result<String, String> {
        self.inline
            .take()
            .or_else(|| self.rest.next())
            .ok_or_else(|| format!("{name} needs a value"))
    }
}

// ---------------------------------------------------------------------------
// The report's header and the work directory

/// Prints the report's header: `title`, the taskq binary and its version,
/// the `extra` lines (label, value) in order, then the machine (CPUs, CPU
/// model, RAM, kernel).
pub fn print_header(title: &str, extra: &[(&str, String)]) {
    println!("{title}");
    println!("  binary:  {TASKQ}");
    println!("  version: {}", first_line_of(TASKQ, "--version"));
    for (label, value) in extra {
        println!("  {label:<9}{value}");
    }
    println!("  machine: {}", machine());
}

/// The machine in one line: `nproc=N, CPU MODEL, X GiB RAM, Linux KERNEL`
/// (`?` for what /proc does not tell).
fn machine() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_else(|_| "?".into());
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or_else(
            || "?".into(),
            |kib| format!("{:.1} GiB", kib as f64 / 1048576.0),
        );
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("nproc={nproc}, {cpu}, {mem} RAM, Linux {}", kernel.trim())
}

/// The first line of what `program arg` prints, trimmed (a version, say),
/// or `(cannot run PROGRAM: ERROR)`.
pub fn first_line_of(program: &str, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("(cannot run {program}: {e})"))
}

/// The file-system type of `dir`, for the report.
pub fn fs_type(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return "?".into();
    };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out
    // pointer for the duration of the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "?".into();
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as i64;
    match magic {
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0x6573_5546 => "fuse".into(),
        other => format!("fs type {other:#x}"),
    }
}

/// Makes `root` (a directory under `--keep DIR`) a fresh, empty directory.
/// An existing one is removed first, but only when it holds the file
/// `marker`, which this benchmark writes in what it makes; any other
/// existing `root` is an error, and is left untouched.
pub fn recreate_kept_dir(root: &Path, marker: &str) -> io::Result<()> {
    if root.exists() {
        if !root.join(marker).exists() {
            return Err(io::Error::other(format!(
                "{} exists and was not made by this benchmark; not touching it",
                root.display()
            )));
        }
        fs::remove_dir_all(root)?;
    }
    fs::create_dir_all(root)
}

/// Flushes the file systems, so that write-back of files just generated
/// does not run during the timings.
pub fn sync_all() {
    // SAFETY: sync() has no preconditions.
    unsafe { libc::sync() };
}

/// The median of `xs` (the mean of the middle two for an even count);
/// NaN when there is none.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return f64::NAN;
    }
    let m = xs.len() / 2;
    if xs.len() % 2 == 1 {
        xs[m]
    } else {
        (xs[m - 1] + xs[m]) / 2.0
    }
}

// ---------------------------------------------------------------------------
// The launcher

/// A small helper process (this binary re-executed with [`LAUNCHER_FLAG`])
/// that starts the measured commands and reaps them with `wait4`, one at a
/// time. It reads one JSON request a line and writes JSON replies a line
/// each; what they hold is each bench's own (its `Request` and `Reply`, the
/// methods it adds to `Launcher`, and its `launcher_main` built on
/// [`serve`]).
///
/// Why not spawn from the benchmark itself: Linux counts in a child's
/// `ru_maxrss` the peak RSS of the address space it replaced at `exec`,
/// which for a `vfork`/`posix_spawn`ed child is the *parent's* memory. A
/// benchmark holds its generated data (the queue bench also parses 100 MB
/// of `list --json` in its warm-up), so its children would all inherit tens
/// of MB. The launcher stays at a few MB, which becomes the floor of every
/// figure (the queue bench's `cat` rows show it).
pub struct Launcher {
    child: Child,
    to: Option<ChildStdin>,
    from: io::BufReader<ChildStdout>,
}

impl Launcher {
    /// Starts the launcher process.
    pub fn start() -> io::Result<Launcher> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(LAUNCHER_FLAG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let to = child.stdin.take();
        let from = io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Launcher { child, to, from })
    }

    /// Sends one request (a line of JSON) to the launcher.
    pub fn send<T: Serialize>(&mut self, request: &T) -> Result<(), String> {
        let mut line = serde_json::to_string(request).map_err(|e| e.to_string())?;
        line.push('\n');
        let to = self.to.as_mut().ok_or("launcher stopped")?;
        to.write_all(line.as_bytes())
            .and_then(|()| to.flush())
            .map_err(|e| format!("launcher: {e}"))
    }

    /// Reads the launcher's next reply (a line of JSON).
    pub fn receive<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        let mut line = String::new();
        match self.from.read_line(&mut line) {
            Ok(0) => Err("launcher died".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("launcher: {e}")),
            Err(e) => Err(format!("launcher: {e}")),
        }
    }

    /// Closes the launcher's input, which ends it, and waits for it.
    pub fn stop(mut self) {
        drop(self.to.take());
        let _ = self.child.wait();
    }
}

/// Where the launcher writes its replies: its stdout, one JSON value a line.
pub struct Replies(io::StdoutLock<'static>);

impl Replies {
    /// Writes `reply` as one line and flushes it; `false` when stdout is
    /// gone (the benchmark ended).
    pub fn send<T: Serialize>(&mut self, reply: &T) -> bool {
        let text = serde_json::to_string(reply).expect("a reply serializes");
        writeln!(self.0, "{text}")
            .and_then(|()| self.0.flush())
            .is_ok()
    }
}

/// The launcher's loop: reads one JSON request a line from stdin and hands
/// it (or `bad request: ERROR` when it does not parse as `R`) to `answer`,
/// which replies through [`Replies`] and returns `false` once stdout is
/// gone. Ends then, or at the end of stdin.
pub fn serve<R: DeserializeOwned>(
    mut answer: impl FnMut(Result<R, String>, &mut Replies) -> bool,
) -> ExitCode {
    let stdin = io::stdin();
    let mut out = Replies(io::stdout().lock());
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let request = serde_json::from_str::<R>(&line).map_err(|e| format!("bad request: {e}"));
        if !answer(request, &mut out) {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// How a reaped process ended.
pub enum End {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

/// What `wait4` tells of a reaped process.
pub struct Reaped {
    pub end: End,
    /// User + system CPU time.
    pub cpu: Duration,
    /// Peak RSS (`ru_maxrss`), in KiB.
    pub max_rss_kib: u64,
}

/// Reaps `child` with `wait4` (never `Child::wait`, which gives no resource
/// usage), retrying when interrupted. `Err("wait4: ERROR")` when it fails.
pub fn reap(child: Child) -> Result<Reaped, String> {
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 only writes to the
    // two out pointers, which live across the call.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(format!("wait4: {err}"));
        }
    }
    // Reaped already: dropping the handle neither waits nor kills.
    drop(child);
    let end = if libc::WIFSIGNALED(status) {
        End::Signal(libc::WTERMSIG(status))
    } else {
        End::Code(libc::WEXITSTATUS(status))
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Reaped {
        end,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: usage.ru_maxrss.max(0) as u64,
    })
}
