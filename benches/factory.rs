//! `cargo bench --bench factory`: how fast and how lean `taskq run` (the
//! factory) is, against the targets of the factory issue:
//!
//! 1. **Latency**: from a task file appearing in `tasks/todo` to its agent
//!    process starting: p50 <= 25 ms, p99 <= 100 ms. A `command` role runs
//!    this binary in a hidden mode that writes `CLOCK_REALTIME` to
//!    `started/<task-id>` as the first thing it does; the task file is
//!    written outside the watched tree and renamed into `tasks/todo`, and
//!    the time just after the rename is the start. One task at a time,
//!    spaced, so the figure is reaction, not queueing. The registry's
//!    `spawned` time (taken when the factory's scan is done) splits it in
//!    two. Baseline: the probe's command line as the `command` adapter
//!    runs it (`sh -c 'exec STAMP'`) spawned directly, without taskq.
//! 2. **Throughput**: N shell tasks running `true` (a ```sh block), global
//!    and role `max_concurrent: 8`, wall time of `taskq run --until-idle`
//!    (tasks pre-created) against `seq N | xargs -P8 -n1 sh -e -c true` in
//!    the same run, rounds interleaved: taskq's wall <= 2x xargs'. Once in
//!    a root that is not a git repository, and once in one (the audit
//!    trail commits every step; no target).
//! 3. **Peak memory** of `taskq run` with Q tasks queued (all waiting on
//!    one task on hold): VmHWM < 30 MB at Q = 10,000.
//! 4. **Idle CPU**: the same factory, settled, over a window of idleness
//!    (CPU from /proc, wake-ups from the context-switch counters); plus the
//!    cost of one rescan (what each file event and each heartbeat costs).
//!
//! ```text
//! cargo bench --bench factory                              # full (~1.5 min after the build)
//! TASKQ_FACTORY_BENCH_QUICK=1 cargo bench --bench factory  # short form for CI (~15 s)
//! cargo bench --bench factory -- --only latency --keep /tmp/fb
//! ```
//!
//! Every `taskq` process is started by a small launcher process (this
//! binary re-executed) that reaps it with `wait4`, so its `ru_maxrss` does
//! not inherit this process's memory (see benches/queue.rs). It is a
//! benchmark, not a test: it exits 0 whether targets pass or fail, and
//! non-zero only when something crashed or produced the wrong result (a
//! task not done, an agent that never started). BENCHMARKS.md has the
//! figures.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{env, median, sync_all, End, Launcher, Replies, LAUNCHER_FLAG, TASKQ};

/// The hidden first argument that turns this binary into the probe agent.
const STAMP_FLAG: &str = "--internal-stamp";
/// Marks a directory made by this benchmark (so `--keep` may replace it).
const MARKER: &str = ".taskq-factory-bench";

/// Targets (from the factory issue).
const P50_LIMIT_MS: f64 = 25.0;
const P99_LIMIT_MS: f64 = 100.0;
const XARGS_RATIO_LIMIT: f64 = 2.0;
const HWM_LIMIT: u64 = 30_000_000;
/// "Idle CPU ~0", made concrete: at most 1 ms of CPU per second idle
/// (0.1% of one core).
const IDLE_CPU_LIMIT_MS_PER_S: f64 = 1.0;
/// Concurrency of both taskq and xargs in the throughput test.
const CONCURRENCY: usize = 8;
/// taskq's default heartbeat (the roots here do not change it).
const HEARTBEAT_S: f64 = 30.0;

fn main() -> ExitCode {
    // First, before anything else: the probe agent's start time.
    let t_start = realtime_ns();
    match std::env::args().nth(1).as_deref() {
        Some(STAMP_FLAG) => return stamp_main(t_start),
        Some(LAUNCHER_FLAG) => return launcher_main(),
        _ => {}
    }
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("factory bench: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    print_machine(&opts);
    let (dir, _tmp) = match work_dir(&opts) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("factory bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("  work dir: {} ({})", dir.display(), common::fs_type(&dir));
    println!();
    let mut launcher = match Launcher::start() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("factory bench: cannot start the launcher process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut crashed = false;
    let mut verdicts: Vec<Verdict> = Vec::new();
    let parts: [(Part, PartFn); 3] = [
        (Part::Latency, bench_latency),
        (Part::Throughput, bench_throughput),
        (Part::Memory, bench_memory),
    ];
    for (part, f) in parts {
        if !opts.only.contains(&part) {
            continue;
        }
        match f(&opts, &mut launcher, &dir) {
            Ok(v) => verdicts.extend(v),
            Err(e) => {
                println!("{}: CRASHED: {e}", part.name());
                println!();
                eprintln!("factory bench: {}: {e}", part.name());
                crashed = true;
            }
        }
    }
    launcher.stop();
    println!("load average at the end: {}", loadavg());
    println!();
    if !verdicts.is_empty() {
        println!("### Targets");
        println!();
        println!(
            "| {:<52} | {:<24} | {:<46} | {:<6} |",
            "target", "limit", "measured", "result"
        );
        println!("|{:-<54}|{:-<26}|{:-<48}|{:-<8}|", ":", ":", ":", ":");
        for v in &verdicts {
            println!(
                "| {:<52} | {:<24} | {:<46} | {:<6} |",
                v.name,
                v.limit,
                v.measured,
                if v.pass { "PASS" } else { "FAIL" }
            );
        }
        println!();
    }
    if crashed {
        eprintln!("factory bench: something crashed (see above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

const USAGE: &str = "usage: cargo bench --bench factory -- [--quick] [--only latency,throughput,memory] [--keep DIR]
  env (each optional; --quick / TASKQ_FACTORY_BENCH_QUICK=1 changes the defaults to the short form):
    TASKQ_FACTORY_BENCH_QUICK=1        30 latency samples, 200 tasks x 1 run, 1,000 queued, 3 s idle,
                                       no heartbeat wait
    TASKQ_FACTORY_BENCH_LATENCY_N      latency samples (default 200)
    TASKQ_FACTORY_BENCH_SPACING_MS     pause after each latency task is done (default 50)
    TASKQ_FACTORY_BENCH_LATENCY_QUEUED blocked tasks already in the latency root (default 0)
    TASKQ_FACTORY_BENCH_TASKS          throughput tasks (default 1000)
    TASKQ_FACTORY_BENCH_RUNS           throughput rounds (default 3; medians are reported)
    TASKQ_FACTORY_BENCH_GIT=0          skip the throughput run in a git repository
    TASKQ_FACTORY_BENCH_QUEUED         queued tasks for memory and idle CPU (default 10000)
    TASKQ_FACTORY_BENCH_IDLE_SECS      idle window (default 10)
    TASKQ_FACTORY_BENCH_HEARTBEAT=0    do not wait for the first heartbeat (~30 s after the start)
    TASKQ_FACTORY_BENCH_ONLY           latency,throughput,memory (default all)
    TASKQ_FACTORY_BENCH_KEEP           like --keep
    TASKQ_FACTORY_BENCH_SANDBOX        the agents' sandbox: auto (default), off, required
  Roots go to a temporary directory ($TMPDIR) unless --keep DIR is given;
  then DIR/factory-bench is (re)created and left in place.";

/// One part of the benchmark: its verdicts, or why it crashed.
type PartFn = fn(&Opts, &mut Launcher, &Path) -> Result<Vec<Verdict>, String>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Latency,
    Throughput,
    Memory,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Latency => "latency",
            Part::Throughput => "throughput",
            Part::Memory => "memory",
        }
    }
}

struct Opts {
    quick: bool,
    latency_n: usize,
    latency_queued: usize,
    spacing: Duration,
    tasks: usize,
    runs: usize,
    git: bool,
    queued: usize,
    idle: Duration,
    heartbeat: bool,
    only: Vec<Part>,
    keep: Option<PathBuf>,
}

/// The count `s` given in the environment variable `name`; it must be at
/// least `min`.
fn number(name: &str, s: &str, min: usize) -> Result<usize, String> {
    match common::parse_count(s) {
        Some(n) if n >= min => Ok(n),
        _ => Err(format!("bad {name} `{s}` (want a number >= {min})")),
    }
}

fn parse_only(s: &str) -> Result<Vec<Part>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p {
            "latency" => Ok(Part::Latency),
            "throughput" => Ok(Part::Throughput),
            "memory" | "idle" => Ok(Part::Memory),
            other => Err(format!(
                "unknown part `{other}` (want latency, throughput, memory)"
            )),
        })
        .collect()
}

impl Opts {
    fn parse() -> Result<Opts, String> {
        let mut quick = env("TASKQ_FACTORY_BENCH_QUICK").is_some_and(|v| v != "0");
        let mut only = match env("TASKQ_FACTORY_BENCH_ONLY") {
            Some(s) => parse_only(&s)?,
            None => vec![Part::Latency, Part::Throughput, Part::Memory],
        };
        let mut keep = env("TASKQ_FACTORY_BENCH_KEEP").map(PathBuf::from);
        let mut args = common::Args::new(USAGE);
        while let Some(flag) = args.next_flag() {
            match flag.as_str() {
                "--quick" => quick = true,
                "--only" => only = parse_only(&args.value("--only")?)?,
                "--keep" => keep = Some(PathBuf::from(args.value("--keep")?)),
                other => eprintln!("factory bench: ignoring argument `{other}`"),
            }
        }
        let pick = |name: &str, full: usize, short: usize, min: usize| match env(name) {
            Some(s) => number(name, &s, min),
            None => Ok(if quick { short } else { full }),
        };
        Ok(Opts {
            quick,
            latency_n: pick("TASKQ_FACTORY_BENCH_LATENCY_N", 200, 30, 1)?,
            latency_queued: pick("TASKQ_FACTORY_BENCH_LATENCY_QUEUED", 0, 0, 0)?,
            spacing: Duration::from_millis(
                pick("TASKQ_FACTORY_BENCH_SPACING_MS", 50, 50, 0)? as u64
            ),
            tasks: pick("TASKQ_FACTORY_BENCH_TASKS", 1000, 200, 1)?,
            runs: pick("TASKQ_FACTORY_BENCH_RUNS", 3, 1, 1)?,
            git: env("TASKQ_FACTORY_BENCH_GIT").is_none_or(|v| v != "0"),
            queued: pick("TASKQ_FACTORY_BENCH_QUEUED", 10_000, 1_000, 2)?,
            idle: Duration::from_secs(pick("TASKQ_FACTORY_BENCH_IDLE_SECS", 10, 3, 1)? as u64),
            heartbeat: pick("TASKQ_FACTORY_BENCH_HEARTBEAT", 1, 0, 0)? != 0,
            only,
            keep,
        })
    }
}

// ---------------------------------------------------------------------------
// Machine and work directory

/// Prints the report's header: the binary, the source it was built from,
/// the machine and its load, and the settings of this run.
fn print_machine(opts: &Opts) {
    common::print_header(
        &format!(
            "taskq factory benchmark{}",
            if opts.quick { " (quick)" } else { "" }
        ),
        &[
            ("source:", source_commit()),
            ("git:", common::first_line_of("git", "--version")),
            (
                "load:",
                format!("{} (1, 5, 15 min; at the start)", loadavg()),
            ),
        ],
    );
    println!(
        "  settings: {} latency samples ({} ms apart, {} blocked tasks around); {} tasks x {} rounds (git run: {}); {} queued, {} s idle",
        opts.latency_n,
        opts.spacing.as_millis(),
        opts.latency_queued,
        opts.tasks,
        opts.runs,
        if opts.git { "yes" } else { "no" },
        opts.queued,
        opts.idle.as_secs()
    );
}

/// The commit of the working tree the binary was built from (as it is
/// now), with `+ changes` when `src/` differs from it.
fn source_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--", "src"]).is_some_and(|s| !s.is_empty());
            format!("{head}{}", if dirty { " + changes in src/" } else { "" })
        }
        None => "? (not a git checkout)".into(),
    }
}

/// The load averages, for the report (a busy machine skews every figure).
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn work_dir(opts: &Opts) -> io::Result<(PathBuf, Option<tempfile::TempDir>)> {
    match &opts.keep {
        Some(dir) => {
            let root = dir.join("factory-bench");
            common::recreate_kept_dir(&root, MARKER)?;
            fs::write(root.join(MARKER), "made by benches/factory.rs\n")?;
            let root = fs::canonicalize(&root)?;
            Ok((root, None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("taskq-factory-bench-")
                .tempdir()?;
            let root = fs::canonicalize(tmp.path())?;
            Ok((root, Some(tmp)))
        }
    }
}

// ---------------------------------------------------------------------------
// Small helpers

fn realtime_ns() -> i128 {
    // SAFETY: an all-zero timespec is valid; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn io_err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

fn write(path: &Path, text: impl AsRef<[u8]>) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_err(dir.display(), e))?;
    }
    fs::write(path, text).map_err(|e| io_err(path.display(), e))
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Polls `cond` every `every` until it holds or `limit` passes.
fn wait_for(limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(every);
    }
}

struct Verdict {
    name: String,
    limit: String,
    measured: String,
    pass: bool,
}

/// The factory config and `.gitignore` every root gets.
fn base_root(root: &Path, roles: &[(&str, String)]) -> Result<(), String> {
    for d in ["tasks/todo", "tasks/done", "approvals", "agents/factory"] {
        fs::create_dir_all(root.join(d)).map_err(|e| io_err(root.join(d).display(), e))?;
    }
    write(
        &root.join("agents/factory/config.yaml"),
        format!(
            "# made by benches/factory.rs\nmax_concurrent: {CONCURRENCY}\nsandbox: {}\n",
            std::env::var("TASKQ_FACTORY_BENCH_SANDBOX").unwrap_or_else(|_| "auto".into())
        ),
    )?;
    write(
        &root.join(".gitignore"),
        "/agents/workspaces/\n/agents/logs/\n/agents/factory/*.lock\n/started/\n/.staging/\n",
    )?;
    for (name, text) in roles {
        write(
            &root.join("agents/templates").join(format!("{name}.md")),
            text,
        )?;
    }
    Ok(())
}

/// The `job` role: the `shell` adapter, CONCURRENCY at once, in the root.
fn job_role() -> String {
    format!(
        "---\nprefix: JOB\nagent: shell\ntags: [job]\nmax_concurrent: {CONCURRENCY}\ntimeout: 10m\nretries: 0\nenv: [PATH, HOME]\nworkspace: root\n---\nRuns the task's sh blocks (benches/factory.rs).\n"
    )
}

/// A task file as `taskq add` writes one.
fn task_text(
    id: &str,
    title: &str,
    status: &str,
    tags: &str,
    deps: Option<&str>,
    body: &str,
) -> String {
    let mut s = format!(
        "---\nid: {id}\ntitle: {title}\nstatus: {status}\npriority: medium\ntags: [{tags}]\n"
    );
    if let Some(d) = deps {
        let _ = writeln!(s, "dependencies: [{d}]");
    }
    s.push_str("created: 2026-01-05T09:00:00Z\n---\n");
    s.push_str(body);
    s
}

/// `taskq check` must find nothing wrong in a generated root (a broken
/// header or a missing dependency would change what is measured).
fn check_root(root: &Path) -> Result<(), String> {
    let out = Command::new(TASKQ)
        .arg("--root")
        .arg(root)
        .arg("check")
        .env_remove("TASKQ_ROOT")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_err(TASKQ, e))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(format!(
        "taskq check found problems in the generated root {}: {}",
        root.display(),
        text.lines().take(3).collect::<Vec<_>>().join(" | ")
    ))
}

fn registry(root: &Path) -> Result<serde_json::Value, String> {
    let path = root.join("agents/factory/registry.json");
    let text = fs::read_to_string(&path).map_err(|e| io_err(path.display(), e))?;
    serde_json::from_str(&text).map_err(|e| io_err(path.display(), e))
}

fn ts_ns(v: &serde_json::Value) -> Option<i128> {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(t.timestamp() as i128 * 1_000_000_000 + t.timestamp_subsec_nanos() as i128)
}

fn taskq_cmd(root: &Path, args: &[&str]) -> Request {
    let mut all: Vec<std::ffi::OsString> = vec!["--root".into(), root.as_os_str().to_owned()];
    all.extend(args.iter().map(Into::into));
    Request {
        program: TASKQ.into(),
        args: all,
        cwd: Some(root.to_path_buf()),
        stderr: None,
        timeout_ms: 0,
    }
}

// ---------------------------------------------------------------------------
// 1. Latency

/// The probe agent: writes its start time to `$TASKQ_ROOT/started/$TASKQ_TASK_ID`.
fn stamp_main(t: i128) -> ExitCode {
    let (Some(root), Some(id)) = (
        std::env::var_os("TASKQ_ROOT"),
        std::env::var_os("TASKQ_TASK_ID"),
    ) else {
        eprintln!("{STAMP_FLAG}: TASKQ_ROOT and TASKQ_TASK_ID must be set");
        return ExitCode::FAILURE;
    };
    let dir = Path::new(&root).join("started");
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&id);
    let tmp = dir.join(tmp_name);
    if let Err(e) = fs::write(&tmp, format!("{t}\n")).and_then(|()| fs::rename(&tmp, dir.join(&id)))
    {
        eprintln!("{STAMP_FLAG}: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

struct Dist {
    label: String,
    ms: Vec<f64>,
}

impl Dist {
    fn row(&self, target: &str, result: &str) {
        let mut s = self.ms.clone();
        s.sort_by(f64::total_cmp);
        println!(
            "| {:<64} | {:>7} | {:>7.1} | {:>7.1} | {:>7.1} | {:>7.1} | {:>7.1} | {:<22} | {:<10} |",
            self.label,
            s.len(),
            percentile(&s, 0.0),
            percentile(&s, 0.5),
            percentile(&s, 0.95),
            percentile(&s, 0.99),
            s.last().copied().unwrap_or(f64::NAN),
            target,
            result
        );
    }
}

fn bench_latency(opts: &Opts, launcher: &mut Launcher, dir: &Path) -> Result<Vec<Verdict>, String> {
    let root = dir.join("latency");
    let me = std::env::current_exe().map_err(|e| io_err("current_exe", e))?;
    let me_s = me.display().to_string();
    if me_s.contains(['\'', '"', '\\', '\n']) {
        return Err(format!(
            "{me_s}: a path with quotes cannot go in the probe's command"
        ));
    }
    let probe = format!(
        "---\nprefix: PRB\nagent: command\ncommand: \"exec '{me_s}' {STAMP_FLAG}\"\ntags: [probe]\nmax_concurrent: {CONCURRENCY}\ntimeout: 1m\nretries: 0\nenv: [PATH, HOME]\nworkspace: root\n---\nWrites its start time to started/<task id> (benches/factory.rs).\n"
    );
    base_root(&root, &[("probe", probe)])?;
    if opts.latency_queued > 0 {
        // A backlog the factory rescans on every event (none can run).
        write_blocked(&root, "BACKLOG", opts.latency_queued, "probe")?;
    }
    check_root(&root)?;
    let started = root.join("started");
    let staging = root.join(".staging");
    for d in [&started, &staging] {
        fs::create_dir_all(d).map_err(|e| io_err(d.display(), e))?;
    }
    sync_all();

    println!("## 1. Latency: task file in tasks/todo -> agent process started");
    println!();
    if opts.latency_queued > 0 {
        println!(
            "  the root also holds {} blocked tasks (TASKQ_FACTORY_BENCH_LATENCY_QUEUED)",
            opts.latency_queued
        );
    }
    // Baseline first (no factory running): the probe's command line as the
    // `command` adapter gives it (`sh -c COMMAND`), spawned directly. What
    // taskq adds around it (its wrapper or exit trap, env, cwd, log) is
    // part of taskq's figure.
    let mut base = Vec::with_capacity(opts.latency_n);
    for k in 0..opts.latency_n + 3 {
        let id = format!("BASE-{k:04}");
        let t0 = realtime_ns();
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("exec '{me_s}' {STAMP_FLAG}"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TASKQ_ROOT", &root)
            .env("TASKQ_TASK_ID", &id)
            .current_dir(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| io_err("/bin/sh", e))?;
        if !status.success() {
            return Err(format!("the baseline chain exited with {status}"));
        }
        let stamp = read_stamp(&started.join(&id))?;
        if k >= 3 {
            base.push((stamp - t0) as f64 / 1e6);
        }
        let _ = fs::remove_file(started.join(&id));
    }

    let log = dir.join("latency-run.log");
    let mut req = taskq_cmd(&root, &["run"]);
    req.stderr = Some(log.clone());
    req.timeout_ms = (120_000 + opts.latency_n as u64 * 10_000).min(3_600_000);
    let pid = launcher.begin(&req)?;
    let result = latency_samples(opts, &root, &log, &staging, &started);
    // Stop the factory whatever happened, then collect it.
    // SAFETY: kill has no memory-safety preconditions; the pid is our
    // launcher's unreaped child, so it cannot have been reused.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let reply = launcher.end()?;
    let samples = result?;
    reply.check_exit("taskq run (SIGTERM)", &[0])?;

    // Split each sample at the registry's `spawned` (set when the
    // factory's scan is done).
    let reg = registry(&root)?;
    let spawned: std::collections::HashMap<String, i128> = reg["agents"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|a| Some((a["task"].as_str()?.to_string(), ts_ns(&a["spawned"])?)))
                .collect()
        })
        .unwrap_or_default();
    let total = Dist {
        label: "file appears -> agent starts (taskq run)".into(),
        ms: samples
            .iter()
            .map(|s| (s.stamp - s.file) as f64 / 1e6)
            .collect(),
    };
    let mut react = Vec::new();
    let mut launch = Vec::new();
    for s in &samples {
        if let Some(&sp) = spawned.get(&s.id) {
            react.push((sp - s.file) as f64 / 1e6);
            launch.push((s.stamp - sp) as f64 / 1e6);
        }
    }
    let react = Dist {
        label: "  part 1: -> scan done (notify, 5 ms quiet window, lock, scan)".into(),
        ms: react,
    };
    let launch = Dist {
        label: "  part 2: scan done -> agent starts (writes, fsyncs, spawn)".into(),
        ms: launch,
    };
    let base = Dist {
        label: "baseline: `sh -c COMMAND` spawned directly".into(),
        ms: base,
    };
    let mut sorted = total.ms.clone();
    sorted.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&sorted, 0.5), percentile(&sorted, 0.99));
    let (ok50, ok99) = (p50 <= P50_LIMIT_MS, p99 <= P99_LIMIT_MS);
    let word = |p: bool| if p { "PASS" } else { "FAIL" };

    println!(
        "  {} samples after 3 warm-up ones, one task at a time, {} ms after each task is done;",
        samples.len(),
        opts.spacing.as_millis()
    );
    println!(
        "  ms, nearest-rank percentiles; the agent stamps CLOCK_REALTIME first thing in main()"
    );
    println!();
    println!(
        "| {:<64} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:>7} | {:<22} | {:<10} |",
        "measure", "samples", "min", "p50", "p95", "p99", "max", "target", "result"
    );
    println!(
        "|{:-<66}|{:->9}|{:->9}|{:->9}|{:->9}|{:->9}|{:->9}|{:-<24}|{:-<12}|",
        ":", ":", ":", ":", ":", ":", ":", ":", ":"
    );
    total.row(
        &format!("p50 <= {P50_LIMIT_MS}, p99 <= {P99_LIMIT_MS}"),
        &format!("{}, {}", word(ok50), word(ok99)),
    );
    react.row("-", "-");
    launch.row("-", "-");
    base.row("-", "-");
    println!();
    Ok(vec![
        Verdict {
            name: "latency file -> agent start, p50".into(),
            limit: format!("<= {P50_LIMIT_MS} ms"),
            measured: format!("{p50:.1} ms"),
            pass: ok50,
        },
        Verdict {
            name: "latency file -> agent start, p99".into(),
            limit: format!("<= {P99_LIMIT_MS} ms"),
            measured: format!("{p99:.1} ms"),
            pass: ok99,
        },
    ])
}

struct LatencySample {
    id: String,
    file: i128,
    stamp: i128,
}

fn read_stamp(path: &Path) -> Result<i128, String> {
    let text = fs::read_to_string(path).map_err(|e| io_err(path.display(), e))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: not a timestamp: `{}`", path.display(), text.trim()))
}

fn latency_samples(
    opts: &Opts,
    root: &Path,
    log: &Path,
    staging: &Path,
    started: &Path,
) -> Result<Vec<LatencySample>, String> {
    // The watcher is up once the factory says it started.
    let up = wait_for(Duration::from_secs(30), Duration::from_millis(5), || {
        fs::read_to_string(log).is_ok_and(|s| s.contains("factory started"))
    });
    if !up {
        return Err(format!(
            "taskq run did not start within 30 s; its log {}:\n{}",
            log.display(),
            fs::read_to_string(log).unwrap_or_default()
        ));
    }
    std::thread::sleep(Duration::from_millis(200));
    let warm = 3;
    let mut samples = Vec::with_capacity(opts.latency_n);
    for i in 1..=opts.latency_n + warm {
        let id = format!("TASK-{i:04}");
        let name = format!("{id}-probe.md");
        let tmp = staging.join(&name);
        write(
            &tmp,
            task_text(
                &id,
                &format!("Probe {i}"),
                "ready",
                "probe",
                None,
                "\nStarts the probe agent.\n",
            ),
        )?;
        let dest = root.join("tasks/todo").join(&name);
        fs::rename(&tmp, &dest).map_err(|e| io_err(dest.display(), e))?;
        let file = realtime_ns();
        let stamp_path = started.join(&id);
        if !wait_for(Duration::from_secs(20), Duration::from_millis(1), || {
            stamp_path.exists()
        }) {
            return Err(format!(
                "{id}: no agent started within 20 s (log tail: {})",
                tail(log, 600)
            ));
        }
        let stamp = read_stamp(&stamp_path)?;
        let done = root.join("tasks/done").join(&name);
        if !wait_for(Duration::from_secs(20), Duration::from_millis(2), || {
            done.exists()
        }) {
            return Err(format!(
                "{id}: not done within 20 s of its agent starting (log tail: {})",
                tail(log, 600)
            ));
        }
        if i > warm {
            samples.push(LatencySample { id, file, stamp });
        }
        std::thread::sleep(opts.spacing);
    }
    Ok(samples)
}

fn tail(path: &Path, max: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let start = s.len().saturating_sub(max);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].replace('\n', " | ")
}

// ---------------------------------------------------------------------------
// 2. Throughput

/// A root with `n` ready jobs `TASK-0001` ... for the throughput run, in
/// a git repository (everything committed) when `git` is set.
fn throughput_root(root: &Path, n: usize, git: bool) -> Result<(), String> {
    base_root(root, &[("job", job_role())])?;
    write_jobs(root, "TASK", 4, 1..=n, "job", None)?;
    write(&root.join("agents/factory/last-task-id"), format!("{n}\n"))?;
    check_root(root)?;
    if git {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("git")
                .args(args)
                .current_dir(root)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| io_err("git", e))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "git {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(&["init", "-q"])?;
        run(&["config", "user.name", "taskq bench"])?;
        run(&["config", "user.email", "bench@taskq.invalid"])?;
        run(&["config", "commit.gpgsign", "false"])?;
        run(&["add", "-A"])?;
        run(&["commit", "-q", "-m", "queue for benches/factory.rs"])?;
    }
    sync_all();
    Ok(())
}

/// Checks a finished throughput root; returns the mean number of agents
/// running (sum of the agents' durations / wall time).
fn check_throughput_root(root: &Path, n: usize, wall: Duration) -> Result<f64, String> {
    let done = fs::read_dir(root.join("tasks/done"))
        .map_err(|e| io_err("tasks/done", e))?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".md"))
        })
        .count();
    if done != n {
        return Err(format!("{done} of {n} tasks are in tasks/done"));
    }
    let reg = registry(root)?;
    let agents = reg["agents"].as_object().ok_or("registry: no agents")?;
    let completed = agents
        .values()
        .filter(|a| a["status"] == "completed")
        .count();
    if completed != n {
        return Err(format!(
            "{completed} of {n} agents completed in the registry"
        ));
    }
    let busy_ns: i128 = agents
        .values()
        .filter_map(|a| Some(ts_ns(&a["completed"])? - ts_ns(&a["spawned"])?))
        .sum();
    Ok(busy_ns as f64 / wall.as_nanos() as f64)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Xargs,
    Taskq,
    TaskqGit,
}

struct ThroughputRow {
    runner: Runner,
    label: String,
    walls: Vec<Duration>,
    cpus: Vec<Duration>,
    rss_kib: u64,
    busy: Vec<f64>,
}

fn bench_throughput(
    opts: &Opts,
    launcher: &mut Launcher,
    dir: &Path,
) -> Result<Vec<Verdict>, String> {
    let n = opts.tasks;
    println!("## 2. Throughput: {n} tasks running `true`, {CONCURRENCY} at a time");
    println!();
    let mut rows: Vec<ThroughputRow> = [
        (
            Runner::Xargs,
            format!("seq {n} \\| xargs -P{CONCURRENCY} -n1 sh -e -c true"),
        ),
        (Runner::Taskq, "taskq run --until-idle".to_string()),
        (
            Runner::TaskqGit,
            "taskq run --until-idle, root in a git repo".to_string(),
        ),
    ]
    .into_iter()
    .filter(|(r, _)| *r != Runner::TaskqGit || opts.git)
    .map(|(runner, label)| ThroughputRow {
        runner,
        label,
        walls: Vec::new(),
        cpus: Vec::new(),
        rss_kib: 0,
        busy: Vec::new(),
    })
    .collect();
    for round in 1..=opts.runs {
        for row in &mut rows {
            let (req, root) = match row.runner {
                Runner::Xargs => (
                    Request {
                        program: "sh".into(),
                        args: vec![
                            "-c".into(),
                            format!("seq {n} | xargs -P{CONCURRENCY} -n1 sh -e -c true").into(),
                        ],
                        cwd: Some(dir.to_path_buf()),
                        stderr: None,
                        timeout_ms: 600_000,
                    },
                    None,
                ),
                Runner::Taskq | Runner::TaskqGit => {
                    let git = row.runner == Runner::TaskqGit;
                    let root = dir.join(format!(
                        "throughput-{}-{round}",
                        if git { "git" } else { "plain" }
                    ));
                    throughput_root(&root, n, git)?;
                    let mut req = taskq_cmd(&root, &["run", "--until-idle"]);
                    req.stderr = Some(dir.join(format!(
                        "throughput-{}-{round}.log",
                        if git { "git" } else { "plain" }
                    )));
                    req.timeout_ms = 120_000 + n as u64 * 500;
                    (req, Some(root))
                }
            };
            let reply = launcher.run(&req)?;
            reply.check_exit(&row.label, &[0])?;
            let wall = Duration::from_nanos(reply.wall_ns);
            row.walls.push(wall);
            row.cpus.push(Duration::from_nanos(reply.cpu_ns));
            row.rss_kib = row.rss_kib.max(reply.max_rss_kib);
            if let Some(root) = root {
                row.busy.push(check_throughput_root(&root, n, wall)?);
                if opts.keep.is_none() {
                    let _ = fs::remove_dir_all(&root);
                }
            }
        }
    }
    let med = |ds: &[Duration]| median(ds.iter().map(Duration::as_secs_f64).collect());
    let xargs_wall = rows
        .iter()
        .find(|r| r.runner == Runner::Xargs)
        .map(|r| med(&r.walls))
        .unwrap_or(f64::NAN);
    println!(
        "  {} rounds, interleaved; wall: spawn to exit, median (min-max); cpu: user+sys of the \
         whole tree (wait4), median; busy: mean agents running (sum of agent lifetimes in the \
         registry / wall); RSS: max ru_maxrss of the tree, MB = 10^6 bytes",
        opts.runs
    );
    println!();
    println!(
        "| {:<44} | {:>7} | {:>15} | {:>8} | {:>7} | {:>6} | {:>8} | {:>5} | {:>6} | {:<12} | {:<6} |",
        "command", "wall s", "(min-max)", "tasks/s", "ms/task", "cpu s", "x xargs", "busy", "RSS MB",
        "target", "result"
    );
    println!(
        "|{:-<46}|{:->9}|{:->17}|{:->10}|{:->9}|{:->8}|{:->10}|{:->7}|{:->8}|{:-<14}|{:-<8}|",
        ":", ":", ":", ":", ":", ":", ":", ":", ":", ":", ":"
    );
    let mut verdicts = Vec::new();
    for row in &rows {
        let w = med(&row.walls);
        let lo = row
            .walls
            .iter()
            .map(Duration::as_secs_f64)
            .fold(f64::INFINITY, f64::min);
        let hi = row
            .walls
            .iter()
            .map(Duration::as_secs_f64)
            .fold(0.0, f64::max);
        let ratio = w / xargs_wall;
        let (target, result) = match row.runner {
            Runner::Taskq => {
                let pass = ratio <= XARGS_RATIO_LIMIT;
                verdicts.push(Verdict {
                    name: format!("throughput, {n} x `true`: taskq wall vs xargs -P8"),
                    limit: format!("<= {XARGS_RATIO_LIMIT}x"),
                    measured: format!("{ratio:.1}x ({w:.2} s vs {xargs_wall:.2} s)"),
                    pass,
                });
                (
                    format!("<= {XARGS_RATIO_LIMIT}x"),
                    if pass { "PASS" } else { "FAIL" }.to_string(),
                )
            }
            _ => ("-".into(), "-".into()),
        };
        let busy = if row.busy.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", median(row.busy.clone()))
        };
        println!(
            "| {:<44} | {:>7.2} | {:>15} | {:>8.0} | {:>7.2} | {:>6.2} | {:>8.2} | {:>5} | {:>6.1} | {:<12} | {:<6} |",
            row.label,
            w,
            format!("({lo:.2}-{hi:.2})"),
            n as f64 / w,
            w * 1e3 / n as f64,
            med(&row.cpus),
            ratio,
            busy,
            mb(row.rss_kib * 1024),
            target,
            result
        );
    }
    println!();
    Ok(verdicts)
}

// ---------------------------------------------------------------------------
// 3 and 4. Peak memory and idle CPU

/// CPU use and wake-ups of a running process, from /proc.
#[derive(Clone, Copy, Default)]
struct ProcCpu {
    /// utime + stime of the whole process (dead threads included), ns,
    /// at clock-tick resolution.
    total_ns: u64,
    /// Sum over live threads of /proc/PID/task/TID/schedstat (ns, exact).
    threads_ns: u64,
    /// Sum over live threads of voluntary + involuntary context switches.
    switches: u64,
    threads: usize,
}

fn proc_cpu(pid: i32) -> Option<ProcCpu> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut c = ProcCpu {
        total_ns: ticks * 1_000_000_000 / hz,
        ..ProcCpu::default()
    };
    for t in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let p = t.path();
        if let Some(ns) = fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            c.threads_ns += ns;
            c.threads += 1;
        }
        if let Ok(s) = fs::read_to_string(p.join("status")) {
            for l in s.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    c.switches += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    Some(c)
}

/// `VmHWM` and `VmRSS` of a process, in bytes.
fn proc_mem(pid: i32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Waits until the process has used (almost) no CPU for `quiet`: returns
/// the time it took, or an error after `limit`.
fn settle(pid: i32, quiet: Duration, limit: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let step = Duration::from_millis(50);
    let mut last = proc_cpu(pid).ok_or("the factory is gone")?;
    let mut quiet_since = Instant::now();
    loop {
        std::thread::sleep(step);
        let now = proc_cpu(pid).ok_or("the factory is gone")?;
        // "No CPU": under 0.2 ms in 50 ms, and no tick counted.
        let busy =
            now.total_ns != last.total_ns || now.threads_ns.abs_diff(last.threads_ns) > 200_000;
        if busy {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= quiet {
            return Ok(quiet_since.duration_since(start));
        }
        last = now;
        if start.elapsed() > limit {
            return Err(format!(
                "the factory did not settle within {} s",
                limit.as_secs()
            ));
        }
    }
}

fn queued_root(root: &Path, q: usize) -> Result<(), String> {
    base_root(root, &[("job", job_role())])?;
    write_blocked(root, "TASK", q, "job")?;
    write(&root.join("agents/factory/last-task-id"), format!("{q}\n"))?;
    check_root(root)?;
    sync_all();
    Ok(())
}

/// `q` tasks `PREFIX-00001` ... in tasks/todo: the first on hold, every
/// other one ready but depending on it, so none can run.
fn write_blocked(root: &Path, prefix: &str, q: usize, tag: &str) -> Result<(), String> {
    let first = format!("{prefix}-00001");
    write(
        &root.join("tasks/todo").join(format!("{first}-gate.md")),
        task_text(
            &first,
            "Gate, everything waits for this",
            "hold",
            tag,
            None,
            "\n# Gate\n\nOn hold: the rest of the queue depends on it.\n\n```sh\ntrue\n```\n",
        ),
    )?;
    write_jobs(root, prefix, 5, 2..=q, tag, Some(&first))
}

/// Ready jobs in tasks/todo, one for each number `i` in `numbers`: id
/// `PREFIX-i` (`i` zero-padded to `width` digits), file `PREFIX-i-job-i.md`,
/// tagged `tag`; each runs `true`, after the task `gate` when there is one.
fn write_jobs(
    root: &Path,
    prefix: &str,
    width: usize,
    numbers: std::ops::RangeInclusive<usize>,
    tag: &str,
    gate: Option<&str>,
) -> Result<(), String> {
    let todo = root.join("tasks/todo");
    for i in numbers {
        let id = format!("{prefix}-{i:0width$}");
        let (title, body) = match gate {
            None => (format!("Job {i}"), "\n# Job\n\n```sh\ntrue\n```\n"),
            Some(_) => (
                format!("Job {i} after the gate"),
                "\n# Job\n\nWaits for the gate, then runs:\n\n```sh\ntrue\n```\n",
            ),
        };
        write(
            &todo.join(format!("{id}-job-{i}.md")),
            task_text(&id, &title, "ready", tag, gate, body),
        )?;
    }
    Ok(())
}

fn bench_memory(opts: &Opts, launcher: &mut Launcher, dir: &Path) -> Result<Vec<Verdict>, String> {
    let q = opts.queued;
    println!("## 3-4. Peak memory and idle CPU of `taskq run` with {q} tasks queued");
    println!();
    let root = dir.join(format!("queued-{q}"));
    let t0 = Instant::now();
    queued_root(&root, q)?;
    println!(
        "  {q} tasks in tasks/todo: TASK-00001 on hold, every other one depends on it (generated in {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    let log = dir.join("queued-run.log");
    let mut req = taskq_cmd(&root, &["run"]);
    req.stderr = Some(log.clone());
    req.timeout_ms = 600_000 + opts.idle.as_millis() as u64;
    let started = Instant::now();
    let pid = launcher.begin(&req)?;
    let result = measure_running(opts, pid, &root, started);
    // SAFETY: as in bench_latency.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let reply = launcher.end()?;
    let m = result?;
    reply.check_exit("taskq run (SIGTERM)", &[0])?;
    let spawned = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" spawned "))
        .count();
    if spawned != 0 {
        return Err(format!(
            "the factory spawned {spawned} agents; nothing should be runnable"
        ));
    }

    let idle_s = opts.idle.as_secs_f64();
    let idle_ms = m.idle_ns as f64 / 1e6;
    let idle_ok = idle_ms <= IDLE_CPU_LIMIT_MS_PER_S * idle_s;
    let hwm_ok = m.hwm_end < HWM_LIMIT;
    // Mean, not median: the deltas are whole 10 ms clock ticks.
    let rescan_ms = m.rescans.iter().sum::<u64>() as f64 / 1e6 / m.rescans.len().max(1) as f64;
    // Idle CPU with the heartbeats, averaged: one heartbeat per period.
    let (hb_ms, hb_measured) = match m.heartbeat {
        Some((_, ns)) => (ns as f64 / 1e6, true),
        None => (rescan_ms, false),
    };
    let idle_avg = hb_ms / HEARTBEAT_S + idle_ms / idle_s;
    let avg_ok = idle_avg <= IDLE_CPU_LIMIT_MS_PER_S;
    let word = |p: bool| if p { "PASS" } else { "FAIL" };
    let at = if q == 10_000 {
        String::new()
    } else {
        format!(" (target is at 10,000; this is {q})")
    };
    println!(
        "  MB = 10^6 bytes; CPU from /proc/PID/stat (all threads, 10 ms ticks) and \
         /proc/PID/task/*/schedstat (live threads, ns)"
    );
    println!();
    println!(
        "| {:<62} | {:>36} | {:<18} | {:<6} |",
        "measure", "value", "target", "result"
    );
    println!("|{:-<64}|{:->38}|{:-<20}|{:-<8}|", ":", ":", ":", ":");
    let row = |m: &str, v: String, t: &str, r: &str| {
        println!("| {m:<62} | {v:>36} | {t:<18} | {r:<6} |");
    };
    row(
        "start until settled (1 s without CPU)",
        format!(
            "{:.0} ms, {:.0} ms CPU",
            m.settle.as_secs_f64() * 1e3,
            m.settle_cpu_ns as f64 / 1e6
        ),
        "-",
        "-",
    );
    row(
        "VmHWM once settled",
        format!("{:.1} MB", mb(m.hwm_settled)),
        "-",
        "-",
    );
    row(
        "VmRSS once settled",
        format!("{:.1} MB", mb(m.rss_settled)),
        "-",
        "-",
    );
    row(
        &format!(
            "idle CPU over {} s (threads: {})",
            opts.idle.as_secs(),
            m.threads
        ),
        format!(
            "{idle_ms:.2} ms, {} wake-ups ({} ticks)",
            m.idle_switches,
            m.idle_ticks_ns / 10_000_000
        ),
        &format!("<= {:.0} ms", IDLE_CPU_LIMIT_MS_PER_S * idle_s),
        word(idle_ok),
    );
    row(
        &format!(
            "one rescan (a file event; each heartbeat), mean of {}",
            m.rescans.len()
        ),
        format!("{rescan_ms:.0} ms CPU"),
        "-",
        "-",
    );
    match m.heartbeat {
        Some((at, ns)) => row(
            &format!(
                "the first heartbeat, {:.1} s after the start",
                at.as_secs_f64()
            ),
            format!("{:.0} ms CPU", ns as f64 / 1e6),
            "-",
            "-",
        ),
        None => row("the first heartbeat", "not waited for".into(), "-", "-"),
    }
    row(
        &format!(
            "idle CPU with a heartbeat every {HEARTBEAT_S:.0} s, averaged{}",
            if hb_measured { "" } else { " (est.)" }
        ),
        format!("{:.1} ms per 10 s", idle_avg * 10.0),
        &format!("<= {:.0} ms", IDLE_CPU_LIMIT_MS_PER_S * 10.0),
        word(avg_ok),
    );
    row(
        "VmHWM at the end (peak of taskq run)",
        format!("{:.1} MB", mb(m.hwm_end)),
        "< 30 MB",
        word(hwm_ok),
    );
    row(
        "ru_maxrss from wait4 (cross-check)",
        format!("{:.1} MB", mb(reply.max_rss_kib * 1024)),
        "-",
        "-",
    );
    row(
        "CPU of the whole run (wait4)",
        format!("{:.0} ms", reply.cpu_ns as f64 / 1e6),
        "-",
        "-",
    );
    println!();
    Ok(vec![
        Verdict {
            name: format!("peak memory (VmHWM), {q} tasks queued"),
            limit: "< 30 MB at 10,000".into(),
            measured: format!("{:.1} MB{at}", mb(m.hwm_end)),
            pass: hwm_ok,
        },
        Verdict {
            name: format!("idle CPU over {} s, {q} tasks queued", opts.idle.as_secs()),
            limit: format!("~0 (<= {IDLE_CPU_LIMIT_MS_PER_S} ms/s)"),
            measured: format!("{idle_ms:.2} ms, {} wake-ups", m.idle_switches),
            pass: idle_ok,
        },
        Verdict {
            name: format!(
                "idle CPU incl. heartbeats (averaged{}), {q} queued",
                if hb_measured { "" } else { ", est." }
            ),
            limit: format!("~0 (<= {IDLE_CPU_LIMIT_MS_PER_S} ms/s)"),
            measured: format!("{:.1} ms per 10 s", idle_avg * 10.0),
            pass: avg_ok,
        },
    ])
}

struct Running {
    settle: Duration,
    settle_cpu_ns: u64,
    hwm_settled: u64,
    rss_settled: u64,
    idle_ns: u64,
    idle_ticks_ns: u64,
    idle_switches: u64,
    threads: usize,
    /// CPU ns (whole ticks) per forced rescan.
    rescans: Vec<u64>,
    /// The first heartbeat: when (since the start) and its CPU ns.
    heartbeat: Option<(Duration, u64)>,
    hwm_end: u64,
}

fn measure_running(
    opts: &Opts,
    pid: i32,
    root: &Path,
    started: Instant,
) -> Result<Running, String> {
    let limit = Duration::from_secs(300);
    let settle_t = settle(pid, Duration::from_secs(1), limit)?;
    let c0 = proc_cpu(pid).ok_or("the factory is gone")?;
    let (hwm_settled, rss_settled) = proc_mem(pid).ok_or("the factory is gone")?;
    std::thread::sleep(opts.idle);
    let c1 = proc_cpu(pid).ok_or("the factory is gone")?;
    // Force rescans: a dot file in tasks/todo is an event, not a task.
    let mut rescans = Vec::new();
    for k in 0..5 {
        let before = proc_cpu(pid).ok_or("the factory is gone")?;
        write(&root.join(format!("tasks/todo/.bench-poke-{k}")), "poke\n")?;
        settle(pid, Duration::from_millis(500), limit)?;
        let after = proc_cpu(pid).ok_or("the factory is gone")?;
        rescans.push(after.total_ns.saturating_sub(before.total_ns));
    }
    // The first heartbeat comes 27-33 s after the startup step: wait for
    // the CPU to move, then for it to stop again.
    let mut heartbeat = None;
    if opts.heartbeat {
        // At most 33 s apart (30 s +- 10%), whenever the wait starts.
        let until = Instant::now() + Duration::from_secs(40);
        let mut last = proc_cpu(pid).ok_or("the factory is gone")?;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            let now = proc_cpu(pid).ok_or("the factory is gone")?;
            if now.total_ns != last.total_ns || now.threads_ns.abs_diff(last.threads_ns) > 200_000 {
                let at = started.elapsed();
                settle(pid, Duration::from_millis(500), limit)?;
                let after = proc_cpu(pid).ok_or("the factory is gone")?;
                heartbeat = Some((at, after.total_ns.saturating_sub(last.total_ns)));
                break;
            }
            last = now;
        }
        if heartbeat.is_none() {
            return Err("no heartbeat seen within 40 s".into());
        }
    }
    let (hwm_end, _) = proc_mem(pid).ok_or("the factory is gone")?;
    Ok(Running {
        settle: settle_t,
        settle_cpu_ns: c0.total_ns,
        hwm_settled,
        rss_settled,
        idle_ns: c1.threads_ns.saturating_sub(c0.threads_ns),
        idle_ticks_ns: c1.total_ns.saturating_sub(c0.total_ns),
        idle_switches: c1.switches.saturating_sub(c0.switches),
        threads: c1.threads,
        rescans,
        heartbeat,
        hwm_end,
    })
}

// ---------------------------------------------------------------------------
// The launcher

// The launcher ([`Launcher`]) answers this bench's request with two lines:
// the pid once the command started ([`Begun`]), then its exit status and
// resource usage once it ended ([`Reply`]). In between, the benchmark may
// signal the pid (it stays unreaped, so it cannot be reused).

/// What this bench asks the launcher: run one command (stdin and stdout on
/// /dev/null) and say how it went.
#[derive(serde::Serialize, serde::Deserialize)]
struct Request {
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    cwd: Option<PathBuf>,
    /// stderr goes here (truncated); else /dev/null.
    stderr: Option<PathBuf>,
    /// SIGTERM after this long, SIGKILL 15 s later (0: no limit).
    timeout_ms: u64,
}

/// The launcher's first answer: the command's pid, or why it did not start.
#[derive(serde::Serialize, serde::Deserialize)]
struct Begun {
    pid: i32,
    error: Option<String>,
}

/// The launcher's last answer: how the command ended, and what it used.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reply {
    wall_ns: u64,
    cpu_ns: u64,
    max_rss_kib: u64,
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    error: Option<String>,
}

impl Reply {
    /// `Ok` when the command `what` exited with a code in `ok`; else what
    /// went wrong.
    fn check_exit(&self, what: &str, ok: &[i32]) -> Result<(), String> {
        if let Some(e) = &self.error {
            return Err(format!("{what}: {e}"));
        }
        if self.timed_out {
            return Err(format!("{what}: timed out (killed by the launcher)"));
        }
        match (self.exit_code, self.signal) {
            (Some(c), _) if ok.contains(&c) => Ok(()),
            (Some(c), _) => Err(format!("{what}: exit code {c}")),
            (None, Some(s)) => Err(format!("{what}: killed by signal {s}")),
            _ => Err(format!("{what}: unknown end")),
        }
    }

    /// The reply for a command that could not be measured; `e` is empty
    /// when [`Begun`] already said why.
    fn failed(e: String) -> Reply {
        Reply {
            wall_ns: 0,
            cpu_ns: 0,
            max_rss_kib: 0,
            exit_code: None,
            signal: None,
            timed_out: false,
            error: (!e.is_empty()).then_some(e),
        }
    }
}

impl Launcher {
    /// Starts a command; returns its pid. Call [`Launcher::end`] next.
    fn begin(&mut self, req: &Request) -> Result<i32, String> {
        self.send(req)?;
        let begun: Begun = self.receive()?;
        match begun.error {
            Some(e) => {
                // The launcher still sends its (empty) end reply.
                let _: Reply = self.receive()?;
                Err(format!("{}: {e}", req.program.display()))
            }
            None => Ok(begun.pid),
        }
    }

    /// Waits for the command started by [`Launcher::begin`] to end.
    fn end(&mut self) -> Result<Reply, String> {
        self.receive()
    }

    /// Runs a command to its end.
    fn run(&mut self, req: &Request) -> Result<Reply, String> {
        self.begin(req)?;
        self.end()
    }
}

/// The launcher's loop: for each request, a [`Begun`] line (sent by
/// [`launch`] once the command started, or here when it did not), then a
/// [`Reply`] line.
fn launcher_main() -> ExitCode {
    common::serve(|request: Result<Request, String>, out| {
        let (begun, reply) = match request {
            Ok(req) => launch(&req, out),
            Err(e) => not_started(e),
        };
        if let Some(b) = begun {
            if !out.send(&b) {
                return false;
            }
        }
        out.send(&reply)
    })
}

/// The answers for a command that did not start, for the reason `error`.
fn not_started(error: String) -> (Option<Begun>, Reply) {
    (
        Some(Begun {
            pid: 0,
            error: Some(error),
        }),
        Reply::failed(String::new()),
    )
}

/// Starts the request's command, announces its pid through `out`, waits
/// for it (with the watchdog), reaps it with `wait4`. Returns the `Begun`
/// still to send (when the start failed) and the final reply.
fn launch(req: &Request, out: &mut Replies) -> (Option<Begun>, Reply) {
    let mut cmd = Command::new(&req.program);
    cmd.args(&req.args)
        .env_remove("TASKQ_ROOT")
        .env_remove("TASKQ_NOW")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    match &req.stderr {
        Some(p) => match fs::File::create(p) {
            Ok(f) => {
                cmd.stderr(f);
            }
            Err(e) => return not_started(format!("{}: {e}", p.display())),
        },
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    if let Some(dir) = &req.cwd {
        cmd.current_dir(dir);
    }
    let start = Instant::now();
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return not_started(format!("cannot start: {e}")),
    };
    let pid = child.id() as libc::pid_t;
    out.send(&Begun { pid, error: None });
    // The watchdog: TERM after the timeout, KILL 15 s later. The child is
    // only reaped after the watchdog has been told it ended, so the pid
    // it signals is always ours.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let timed_out = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = (req.timeout_ms > 0).then(|| {
        let limit = Duration::from_millis(req.timeout_ms);
        let flag = std::sync::Arc::clone(&timed_out);
        std::thread::spawn(move || {
            use std::sync::mpsc::RecvTimeoutError::Timeout;
            if done_rx.recv_timeout(limit) == Err(Timeout) {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                if done_rx.recv_timeout(Duration::from_secs(15)) == Err(Timeout) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        })
    });
    // Wait for the end without reaping (WNOWAIT), so the pid stays ours.
    loop {
        // SAFETY: an all-zero siginfo_t is valid; waitid only writes it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    let wall = start.elapsed();
    drop(done_tx);
    if let Some(w) = watchdog {
        let _ = w.join();
    }
    let reaped = match common::reap(child) {
        Ok(r) => r,
        Err(e) => return (None, Reply::failed(e)),
    };
    let (exit_code, signal) = match reaped.end {
        End::Code(code) => (Some(code), None),
        End::Signal(signal) => (None, Some(signal)),
    };
    (
        None,
        Reply {
            wall_ns: wall.as_nanos() as u64,
            cpu_ns: reaped.cpu.as_nanos() as u64,
            max_rss_kib: reaped.max_rss_kib,
            exit_code,
            signal,
            timed_out: timed_out.load(std::sync::atomic::Ordering::SeqCst),
            error: None,
        },
    )
}
