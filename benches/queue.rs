//! `cargo bench --bench queue`: how fast the built `taskq` answers on a big
//! synthetic queue, compared with `cat` of the same files.
//!
//! For each size N it generates a queue of N tasks (half done, mostly the
//! older ids; 30% with 1-3 dependencies on older tasks; mixed priorities and
//! statuses; ~1 KB markdown bodies; at least one chain of >= 20 open tasks),
//! warms the page cache with one untimed run of every command, then times
//! each command as a child process, rounds interleaved, and prints per
//! command the median wall time, its ratio to the baselines (`find | xargs
//! cat`, `xargs cat` of a prepared file list, and a one-thread
//! open+read+close "floor" built into this binary), and the peak RSS
//! (`ru_maxrss` from `wait4`, taken in a small launcher process; see
//! [`Launcher`]).
//!
//! ```text
//! cargo bench --bench queue                                   # 1k, 10k, 100k; 11 runs
//! TASKQ_BENCH_SIZES=1000 TASKQ_BENCH_RUNS=5 cargo bench --bench queue   # short (CI)
//! cargo bench --bench queue -- --sizes 10k --runs 21 --keep /tmp/q   # keep the queues
//! ```
//!
//! It is a benchmark, not a test: it exits 0 whether targets pass or fail,
//! and non-zero only when something crashed (a command died or exited with
//! an unexpected code, or its output was wrong). BENCHMARKS.md explains the
//! baselines and has the figures.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset, NaiveDate, SecondsFormat, TimeDelta};

mod common;
use common::{median, End, Launcher, LAUNCHER_FLAG, TASKQ};

const DEFAULT_SIZES: &[usize] = &[1_000, 10_000, 100_000];
const DEFAULT_RUNS: usize = 11;
/// Planted chain of open tasks, so `deps` on the deepest chain has depth.
const PLANTED_CHAIN: usize = 24;
/// The memory target at N = 100,000, in bytes (decimal megabytes).
const RSS_LIMIT: u64 = 50_000_000;
/// Marks a directory made by this benchmark (so `--keep` may replace it).
const MARKER: &str = ".taskq-bench";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some(LAUNCHER_FLAG) => return launcher_main(),
        Some(READ_ALL_FLAG) => return read_all_main(),
        _ => {}
    }
    let opts = match Opts::parse() {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("queue bench: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut crashed = false;
    common::print_header("taskq queue benchmark", &[]);
    println!();
    let mut launcher = match Launcher::start() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("queue bench: cannot start the launcher process: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut verdicts = Vec::new();
    for &n in &opts.sizes {
        match bench_size(n, &opts, &mut launcher) {
            Ok((ok, v)) => {
                crashed |= !ok;
                verdicts.extend(v);
            }
            Err(e) => {
                eprintln!("queue bench: N={n}: {e}");
                crashed = true;
            }
        }
    }
    launcher.stop();
    if !verdicts.is_empty() {
        println!("targets:");
        for v in &verdicts {
            println!("  {v}");
        }
    }
    if crashed {
        eprintln!("queue bench: something crashed (see above)");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

const USAGE: &str =
    "usage: cargo bench --bench queue -- [--sizes 1000,10000,100000] [--runs 11] [--keep DIR]
  env: TASKQ_BENCH_SIZES (e.g. 1000 or 10k,100k), TASKQ_BENCH_RUNS, TASKQ_BENCH_KEEP
  Queues are generated in a temporary directory ($TMPDIR) unless --keep DIR
  is given; then DIR/queue-N is (re)created and left in place.";

struct Opts {
    sizes: Vec<usize>,
    runs: usize,
    keep: Option<PathBuf>,
}

impl Opts {
    fn parse() -> Result<Opts, String> {
        let mut sizes = match common::env("TASKQ_BENCH_SIZES") {
            Some(s) => parse_sizes(&s)?,
            None => DEFAULT_SIZES.to_vec(),
        };
        let mut runs = match common::env("TASKQ_BENCH_RUNS") {
            Some(s) => parse_runs(&s)?,
            None => DEFAULT_RUNS,
        };
        let mut keep = std::env::var_os("TASKQ_BENCH_KEEP")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let mut args = common::Args::new(USAGE);
        while let Some(flag) = args.next_flag() {
            match flag.as_str() {
                "--sizes" => sizes = parse_sizes(&args.value("--sizes")?)?,
                "--runs" => runs = parse_runs(&args.value("--runs")?)?,
                "--keep" => keep = Some(PathBuf::from(args.value("--keep")?)),
                other => eprintln!("queue bench: ignoring argument `{other}`"),
            }
        }
        Ok(Opts { sizes, runs, keep })
    }
}

/// The queue sizes of a comma-separated list (`1000,10k`), each at least 2.
fn parse_sizes(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match common::parse_count(p) {
            Some(n) if n >= 2 => Ok(n),
            _ => Err(format!("bad size `{p}` (want e.g. 1000,10k,100000)")),
        })
        .collect()
}

fn parse_runs(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("bad run count `{s}`")),
    }
}

// ---------------------------------------------------------------------------
// Deterministic generator

/// SplitMix64: tiny, seeded, good enough for synthetic data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum St {
    Ready,
    Running,
    Hold,
    Failed,
    Cancelled,
    Done,
}

impl St {
    fn word(self) -> &'static str {
        match self {
            St::Ready => "ready",
            St::Running => "running",
            St::Hold => "hold",
            St::Failed => "failed",
            St::Cancelled => "cancelled",
            St::Done => "done",
        }
    }
    /// Not done and not cancelled: part of the open work.
    fn open(self) -> bool {
        !matches!(self, St::Done | St::Cancelled)
    }
}

struct Gen {
    /// 1-based task number (index + 1).
    num: usize,
    status: St,
    priority: &'static str,
    deps: Vec<usize>,
}

/// What was generated, for the report and the `deps` command.
struct Generated {
    n: usize,
    done: usize,
    with_deps: usize,
    ready: usize,
    blocked: usize,
    other_open: usize,
    /// Id of the task at the end of the deepest chain of open tasks.
    head: String,
    chain: usize,
    /// Tasks in the head's dependency tree (all reachable deps, head included).
    tree: usize,
    bytes: u64,
    files: Vec<PathBuf>,
}

fn task_id(num: usize) -> String {
    format!("TASK-{num:03}")
}

fn generate(root: &Path, n: usize) -> io::Result<Generated> {
    let mut rng = Rng(0x7A5C_0B3E_u64 ^ (n as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));

    // Status: the done half is mostly the older ids.
    let mut tasks: Vec<Gen> = (1..=n)
        .map(|num| {
            let age = (num - 1) as f64 / n as f64;
            let p_done = if age < 0.4 {
                0.95
            } else if age < 0.6 {
                0.5
            } else {
                0.05
            };
            let status = if rng.chance(p_done) {
                St::Done
            } else {
                match rng.below(100) {
                    0..=87 => St::Ready,
                    88..=92 => St::Running,
                    93..=95 => St::Hold,
                    96..=97 => St::Failed,
                    _ => St::Cancelled,
                }
            };
            let priority = match rng.below(100) {
                0..=3 => "critical",
                4..=23 => "high",
                24..=74 => "medium",
                _ => "low",
            };
            Gen {
                num,
                status,
                priority,
                deps: Vec::new(),
            }
        })
        .collect();

    // Dependencies: 30% of tasks, 1-3 each, on older tasks, mostly recent
    // ones. A done task depends only on done tasks; nothing on cancelled.
    for i in 1..n {
        if !rng.chance(0.30) {
            continue;
        }
        let want = 1 + rng.below(3);
        let window = i.min(300);
        let mut deps = Vec::with_capacity(want);
        for _ in 0..want * 8 {
            if deps.len() == want {
                break;
            }
            let u = rng.unit();
            let j = i - 1 - ((u * u * window as f64) as usize).min(window - 1);
            let ok = match tasks[i].status {
                St::Done => tasks[j].status == St::Done,
                _ => tasks[j].status != St::Cancelled,
            };
            if ok && !deps.contains(&j) {
                deps.push(j);
            }
        }
        deps.sort_unstable();
        tasks[i].deps = deps;
    }

    // Plant a chain of PLANTED_CHAIN open, ready tasks in the newer half,
    // each depending on the previous one (chosen among tasks that already
    // have dependencies, so the 30% stays 30%).
    let pool: Vec<usize> = (n / 2..n)
        .filter(|&i| tasks[i].status == St::Ready && !tasks[i].deps.is_empty())
        .collect();
    if pool.len() >= PLANTED_CHAIN {
        let chain: Vec<usize> = (0..PLANTED_CHAIN)
            .map(|k| pool[k * (pool.len() - 1) / (PLANTED_CHAIN - 1)])
            .collect();
        for w in chain.windows(2) {
            let (prev, cur) = (w[0], w[1]);
            let deps = &mut tasks[cur].deps;
            deps.retain(|&d| d != prev);
            if deps.is_empty() {
                deps.push(prev);
            } else {
                deps[0] = prev;
            }
            deps.sort_unstable();
        }
    }

    // The deepest chain of open tasks (deps point backwards: one pass).
    let mut depth = vec![0usize; n];
    for i in 0..n {
        if tasks[i].status.open() {
            depth[i] = 1 + tasks[i]
                .deps
                .iter()
                .filter(|&&d| tasks[d].status.open())
                .map(|&d| depth[d])
                .max()
                .unwrap_or(0);
        }
    }
    let head = (0..n)
        .max_by_key(|&i| (depth[i], std::cmp::Reverse(i)))
        .unwrap_or(0);
    let chain = depth[head];
    let mut seen = vec![false; n];
    let mut stack = vec![head];
    let mut tree = 0;
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        tree += 1;
        stack.extend(&tasks[i].deps);
    }

    let done = tasks.iter().filter(|t| t.status == St::Done).count();
    let with_deps = tasks.iter().filter(|t| !t.deps.is_empty()).count();
    let unblocked = |t: &Gen| t.deps.iter().all(|&d| tasks[d].status == St::Done);
    let ready = tasks
        .iter()
        .filter(|t| t.status == St::Ready && unblocked(t))
        .count();
    let blocked = tasks
        .iter()
        .filter(|t| t.status == St::Ready && !unblocked(t))
        .count();
    let other_open = n - done - ready - blocked;

    // Write the files.
    let todo = root.join("tasks").join("todo");
    let done_dir = root.join("tasks").join("done");
    fs::create_dir_all(&todo)?;
    fs::create_dir_all(&done_dir)?;
    fs::create_dir_all(root.join("agents").join("factory"))?;
    fs::write(
        root.join("agents").join("factory").join("last-task-id"),
        format!("{n}\n"),
    )?;
    fs::write(
        root.join(MARKER),
        format!("generated by benches/queue.rs, N={n}\n"),
    )?;

    let tz = FixedOffset::west_opt(5 * 3600).expect("valid offset");
    let start = NaiveDate::from_ymd_opt(2025, 1, 6)
        .and_then(|d| d.and_hms_opt(9, 0, 0))
        .and_then(|t| t.and_local_timezone(tz).single())
        .expect("valid start date");
    // Creation times spread over about a year, whatever N.
    let step = (365 * 86_400 / n as i64).max(1);
    let mut text = String::with_capacity(2048);
    let mut files = Vec::with_capacity(n);
    let mut bytes = 0u64;
    for t in &tasks {
        text.clear();
        let created =
            start + TimeDelta::seconds(t.num as i64 * step + rng.below(step as usize) as i64);
        let title = title(&mut rng);
        let id = task_id(t.num);
        let _ = write!(
            text,
            "---\nid: {id}\ntitle: {title}\nstatus: {}\npriority: {}\n",
            t.status.word(),
            t.priority
        );
        let ntags = rng.below(4);
        if ntags > 0 {
            let mut tags: Vec<&str> = Vec::with_capacity(ntags);
            while tags.len() < ntags {
                let tag = rng.pick(TAGS);
                if !tags.contains(&tag) {
                    tags.push(tag);
                }
            }
            let _ = writeln!(text, "tags: [{}]", tags.join(", "));
        }
        if !t.deps.is_empty() {
            let ids: Vec<String> = t.deps.iter().map(|&d| task_id(d + 1)).collect();
            let _ = writeln!(text, "dependencies: [{}]", ids.join(", "));
        }
        let _ = writeln!(text, "created: {}", ts(created));
        match t.status {
            St::Done => {
                let completed = created + TimeDelta::minutes(30 + rng.below(14 * 24 * 60) as i64);
                let _ = writeln!(text, "completed: {}", ts(completed));
                let _ = writeln!(
                    text,
                    "result: merged in commit {:07x}",
                    rng.next_u64() >> 36
                );
            }
            St::Running => {
                let _ = writeln!(
                    text,
                    "assigned: agent-{}-{}",
                    rng.pick(ROLES),
                    1 + rng.below(4)
                );
                let _ = writeln!(text, "started: {}", ts(created + TimeDelta::hours(2)));
            }
            St::Failed => {
                let _ = writeln!(text, "attempts: 3\nreason: {}", rng.pick(FAILURES));
            }
            St::Cancelled => {
                let _ = writeln!(text, "reason: superseded by {}", task_id(1 + rng.below(n)));
            }
            St::Ready | St::Hold => {}
        }
        text.push_str("---\n");
        body(&mut rng, &title, &mut text);
        let dir = if t.status == St::Done {
            &done_dir
        } else {
            &todo
        };
        let path = dir.join(format!("{id}-{}.md", slug(&title)));
        fs::write(&path, text.as_bytes())?;
        bytes += text.len() as u64;
        files.push(path);
    }
    Ok(Generated {
        n,
        done,
        with_deps,
        ready,
        blocked,
        other_open,
        head: task_id(head + 1),
        chain,
        tree,
        bytes,
        files,
    })
}

fn ts(t: DateTime<FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The file-name slug, as `taskq add` makes it.
fn slug(title: &str) -> String {
    let mut s = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
        if s.len() >= 40 {
            break;
        }
    }
    s.trim_end_matches('-').to_string()
}

const TAGS: &[&str] = &[
    "build", "backend", "frontend", "docs", "infra", "test", "security", "perf", "db", "api", "ci",
    "ux",
];
const ROLES: &[&str] = &["builder", "tester", "reviewer", "docs"];
const FAILURES: &[&str] = &[
    "tests time out on CI after 20 minutes",
    "cannot reproduce the crash locally",
    "blocked on credentials for the staging bucket",
    "the migration fails on the replica",
];
const VERBS: &[&str] = &[
    "Add", "Fix", "Refactor", "Document", "Speed up", "Remove", "Migrate", "Test", "Harden",
    "Split", "Rename", "Cache", "Validate", "Retry", "Log",
];
const THINGS: &[&str] = &[
    "retry budget",
    "session tokens",
    "upload worker",
    "rate limiter",
    "config loader",
    "search index",
    "billing export",
    "audit log",
    "health check",
    "feature flags",
    "email templates",
    "job scheduler",
    "password reset",
    "webhook handler",
    "image resizer",
    "CSV import",
    "cache eviction",
    "metrics endpoint",
];
const PLACES: &[&str] = &[
    "in the API gateway",
    "for the mobile client",
    "in the admin dashboard",
    "behind the load balancer",
    "in the nightly batch",
    "for enterprise tenants",
    "in the CLI",
    "on the staging cluster",
    "in the payments service",
    "for the public docs",
];
const SUBJECTS: &[&str] = &[
    "The current implementation",
    "The worker pool",
    "Our integration test",
    "The on-call runbook",
    "The database layer",
    "Every request handler",
    "The deploy script",
    "The client library",
    "The scheduler",
    "This code path",
];
const PREDICATES: &[&str] = &[
    "holds a global lock while it talks to the network",
    "retries forever when the upstream returns a 503",
    "allocates a fresh buffer for every record it reads",
    "does not distinguish a timeout from a refused connection",
    "logs the full payload, including personal data",
    "was written before we moved to the new queue",
    "assumes the clock never goes backwards",
    "silently drops rows whose encoding is not UTF-8",
    "reads the whole file when it only needs the first line",
    "has no test that covers the empty case",
    "breaks when two agents run it at the same time",
    "keeps a connection open per tenant",
];
const STEPS: &[&str] = &[
    "Write a failing test that reproduces the problem",
    "Measure the current latency and write the numbers down",
    "Move the slow part behind a feature flag",
    "Replace the ad-hoc parsing with the shared helper",
    "Add a metric and an alert threshold",
    "Update the runbook and the changelog",
    "Ask the security team to review the change",
    "Remove the old code path once the flag is on everywhere",
    "Backfill the missing rows with a one-off script",
    "Check the behaviour on an empty and on a very large input",
];
const CHECKS: &[&str] = &[
    "the new test passes on CI",
    "p99 latency is below 200 ms on staging",
    "no personal data appears in the logs",
    "the docs describe the new flag",
    "a rollback was tried on staging",
    "the error message names the file and the line",
    "memory stays flat over a one-hour soak test",
];

fn title(rng: &mut Rng) -> String {
    format!(
        "{} {} {}",
        rng.pick(VERBS),
        rng.pick(THINGS),
        rng.pick(PLACES)
    )
}

/// About 1 KB of markdown: context, steps, acceptance checklist, notes.
fn body(rng: &mut Rng, title: &str, out: &mut String) {
    let target = out.len() + 900 + rng.below(350);
    let _ = write!(out, "\n# {title}\n\n## Context\n\n");
    let context = 2 + rng.below(2);
    sentences(rng, out, |_, k| k < context);
    out.push_str("\n\n## Steps\n\n");
    let steps = 3 + rng.below(3);
    for (k, step) in distinct(rng, STEPS, steps).iter().enumerate() {
        let _ = writeln!(out, "{}. {step}.", k + 1);
    }
    out.push_str("\n## Done when\n\n");
    let checks = 2 + rng.below(3);
    for check in distinct(rng, CHECKS, checks) {
        let _ = writeln!(out, "- [ ] {check}");
    }
    if rng.chance(0.25) {
        out.push_str("\n```sh\ncargo test --workspace -- --nocapture\n```\n");
    }
    out.push_str("\n## Notes\n\n");
    sentences(rng, out, |len, _| len < target);
    out.push('\n');
}

/// Appends sentences separated by spaces while `more(len, count)` holds.
fn sentences(rng: &mut Rng, out: &mut String, more: impl Fn(usize, usize) -> bool) {
    let mut k = 0;
    while more(out.len(), k) {
        if k > 0 {
            out.push(' ');
        }
        let _ = write!(out, "{} {}.", rng.pick(SUBJECTS), rng.pick(PREDICATES));
        k += 1;
    }
}

/// `count` different items of `from`, in random order.
fn distinct(rng: &mut Rng, from: &[&'static str], count: usize) -> Vec<&'static str> {
    let mut pool = from.to_vec();
    let mut picked = Vec::with_capacity(count);
    while picked.len() < count && !pool.is_empty() {
        picked.push(pool.swap_remove(rng.below(pool.len())));
    }
    picked
}

// ---------------------------------------------------------------------------
// Measuring

struct Sample {
    wall: Duration,
    cpu: Duration,
    max_rss_kib: u64,
}

/// The hidden first argument that turns this binary into the floor reader.
const READ_ALL_FLAG: &str = "--internal-read-all";

/// The floor: `open`, `read` (64 KiB buffer, until EOF), `close` on every
/// file of the NUL-separated list, one thread, nothing else. Prints the
/// byte count.
fn read_all_main() -> ExitCode {
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    let Some(list) = std::env::args_os().nth(2) else {
        eprintln!("{READ_ALL_FLAG} LIST");
        return ExitCode::FAILURE;
    };
    let names = match fs::read(&list) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{}: {e}", Path::new(&list).display());
            return ExitCode::FAILURE;
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let path = Path::new(std::ffi::OsStr::from_bytes(name));
        let mut f = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        };
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("{}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!("{total}");
    ExitCode::SUCCESS
}

/// What this bench asks the [`Launcher`]: run one command, stdin, stdout
/// and stderr on /dev/null, and say how it went.
#[derive(serde::Serialize, serde::Deserialize)]
struct Request {
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    cwd: Option<PathBuf>,
    ok_codes: Vec<i32>,
    /// Pin the command to one CPU (the first one the launcher may use).
    one_cpu: bool,
}

/// The launcher's answer to a [`Request`]: the sample, or why there is none.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reply {
    wall_ns: u64,
    cpu_ns: u64,
    max_rss_kib: u64,
    error: Option<String>,
}

impl Reply {
    /// The reply for a command that could not be measured.
    fn failed(error: String) -> Reply {
        Reply {
            wall_ns: 0,
            cpu_ns: 0,
            max_rss_kib: 0,
            error: Some(error),
        }
    }
}

impl Launcher {
    /// Runs `cmd` (stdin, stdout and stderr on /dev/null) in the launcher.
    fn run(&mut self, cmd: &Command, ok_codes: &[i32], one_cpu: bool) -> Result<Sample, String> {
        self.send(&Request {
            program: cmd.get_program().into(),
            args: cmd.get_args().map(Into::into).collect(),
            cwd: cmd.get_current_dir().map(Path::to_path_buf),
            ok_codes: ok_codes.to_vec(),
            one_cpu,
        })?;
        let reply: Reply = self.receive()?;
        if let Some(e) = reply.error {
            return Err(e);
        }
        Ok(Sample {
            wall: Duration::from_nanos(reply.wall_ns),
            cpu: Duration::from_nanos(reply.cpu_ns),
            max_rss_kib: reply.max_rss_kib,
        })
    }
}

/// The launcher's loop: one JSON request per line in, one reply per line out.
fn launcher_main() -> ExitCode {
    common::serve(|request: Result<Request, String>, out| {
        let reply = match request {
            Ok(req) => {
                let mut cmd = Command::new(&req.program);
                cmd.args(&req.args)
                    .env_remove("TASKQ_ROOT")
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if let Some(dir) = &req.cwd {
                    cmd.current_dir(dir);
                }
                if req.one_cpu {
                    pin_to_one_cpu(&mut cmd);
                }
                match run_reaped(&mut cmd, &req.ok_codes) {
                    Ok(s) => Reply {
                        wall_ns: s.wall.as_nanos() as u64,
                        cpu_ns: s.cpu.as_nanos() as u64,
                        max_rss_kib: s.max_rss_kib,
                        error: None,
                    },
                    Err(e) => Reply::failed(e),
                }
            }
            Err(e) => Reply::failed(e),
        };
        out.send(&reply)
    })
}

/// Makes `cmd` run on a single CPU, so a multi-threaded program shows its
/// one-core cost (Rust's `available_parallelism` follows the mask too).
fn pin_to_one_cpu(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure only calls
    // async-signal-safe libc functions on stack values; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, size, &mut set) != 0 {
                return Err(io::Error::last_os_error());
            }
            let first = (0..libc::CPU_SETSIZE as usize)
                .find(|&c| libc::CPU_ISSET(c, &set))
                .unwrap_or(0);
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(first, &mut one);
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts `cmd`, reaps it with `wait4` (never `Child::wait`), and returns
/// its wall time and resource usage. `Err` with a message when it could not
/// run, died from a signal, or exited with a code not in `ok_codes`.
fn run_reaped(cmd: &mut Command, ok_codes: &[i32]) -> Result<Sample, String> {
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let reaped = common::reap(child)?;
    let wall = start.elapsed();
    match reaped.end {
        End::Signal(signal) => Err(format!("killed by signal {signal}")),
        End::Code(code) if !ok_codes.contains(&code) => Err(format!("exit code {code}")),
        End::Code(_) => Ok(Sample {
            wall,
            cpu: reaped.cpu,
            max_rss_kib: reaped.max_rss_kib,
        }),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `find | xargs cat`: the directory walk plus reading every byte.
    FindCat,
    /// `xargs cat` on a prepared file list: reading every byte only.
    Cat,
    /// open + read + close per file, one thread: the cost of the bytes.
    Floor,
    Next,
    /// `taskq next` pinned to one CPU (informative, no target).
    NextOneCpu,
    List,
    Deps,
}

struct Bench {
    kind: Kind,
    label: String,
    samples: Vec<Sample>,
    failed: Option<String>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn command(kind: Kind, root: &Path, list: &Path, head: &str) -> Command {
    let mut c = match kind {
        Kind::FindCat => {
            let mut c = Command::new("sh");
            c.args([
                "-c",
                "find tasks -name '*.md' -print0 | xargs -0 cat > /dev/null",
            ]);
            c
        }
        Kind::Cat => {
            let mut c = Command::new("xargs");
            c.args(["-0", "-a"]).arg(list).arg("cat");
            c
        }
        Kind::Floor => {
            let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("queue-bench"));
            let mut c = Command::new(me);
            c.arg(READ_ALL_FLAG).arg(list);
            c
        }
        Kind::Next | Kind::NextOneCpu | Kind::List | Kind::Deps => {
            let mut c = Command::new(TASKQ);
            c.arg("--root").arg(root);
            match kind {
                Kind::List => c.args(["--json", "list"]),
                Kind::Deps => c.args(["deps", head]),
                _ => c.arg("next"),
            };
            c.env_remove("TASKQ_ROOT").env_remove("RUST_LOG");
            c
        }
    };
    c.current_dir(root);
    c
}

/// Exit codes that mean "worked": `next` exits 1 when nothing is ready.
fn ok_codes(kind: Kind) -> &'static [i32] {
    match kind {
        Kind::Next | Kind::NextOneCpu => &[0, 1],
        _ => &[0],
    }
}

/// The untimed warm-up run: also checks that the output makes sense.
fn warm_up(kind: Kind, root: &Path, list: &Path, g: &Generated) -> Result<String, String> {
    let mut cmd = command(kind, root, list, &g.head);
    if kind == Kind::NextOneCpu {
        pin_to_one_cpu(&mut cmd);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot start: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    if code.is_none_or(|c| !ok_codes(kind).contains(&c)) {
        return Err(format!(
            "{:?} ({})",
            out.status,
            stderr.lines().take(5).collect::<Vec<_>>().join(" | ")
        ));
    }
    let mut note = match kind {
        Kind::FindCat | Kind::Cat => String::new(),
        Kind::Floor => {
            let read: u64 = stdout
                .trim()
                .parse()
                .map_err(|_| format!("the floor reader printed `{}`", stdout.trim()))?;
            if read != g.bytes {
                return Err(format!(
                    "the floor reader read {read} bytes, expected {}",
                    g.bytes
                ));
            }
            String::new()
        }
        Kind::Next | Kind::NextOneCpu => match stdout.trim() {
            "" => "nothing ready".into(),
            id => format!("-> {id}"),
        },
        Kind::List => {
            let items: Vec<serde::de::IgnoredAny> = serde_json::from_str(&stdout)
                .map_err(|e| format!("--json list is not a JSON array: {e}"))?;
            let len = items.len();
            if len != g.n {
                return Err(format!("--json list has {len} tasks, expected {}", g.n));
            }
            format!("{len} tasks, {:.1} MB of JSON", stdout.len() as f64 / 1e6)
        }
        Kind::Deps => {
            let lines = stdout.lines().count();
            if lines < g.chain {
                return Err(format!(
                    "deps printed {lines} lines for a chain of {}",
                    g.chain
                ));
            }
            format!("{lines} lines")
        }
    };
    if !stderr.trim().is_empty() {
        let _ = write!(
            note,
            "; stderr: {} lines, first: {}",
            stderr.lines().count(),
            stderr.lines().next().unwrap_or("")
        );
    }
    Ok(note)
}

// ---------------------------------------------------------------------------
// One size

fn bench_size(n: usize, opts: &Opts, launcher: &mut Launcher) -> io::Result<(bool, Vec<String>)> {
    let (root, _tmp) = match &opts.keep {
        Some(dir) => {
            let root = dir.join(format!("queue-{n}"));
            common::recreate_kept_dir(&root, MARKER)?;
            (root, None)
        }
        None => {
            let tmp = tempfile::Builder::new().prefix("taskq-bench-").tempdir()?;
            (tmp.path().to_path_buf(), Some(tmp))
        }
    };
    let t0 = Instant::now();
    let g = generate(&root, n)?;
    let gen_time = t0.elapsed();
    // The prepared list for the pure-`cat` baseline (outside tasks/).
    let list = root.join("files.lst");
    let mut names = Vec::with_capacity(g.files.len() * 48);
    for f in &g.files {
        use std::os::unix::ffi::OsStrExt;
        let rel = f.strip_prefix(&root).unwrap_or(f);
        names.extend_from_slice(rel.as_os_str().as_bytes());
        names.push(0);
    }
    fs::write(&list, names)?;
    // Flush the new files so write-back does not run during the timings.
    common::sync_all();

    println!(
        "N = {n}: {} done, {} ready, {} blocked, {} running/hold/failed/cancelled; {} with dependencies",
        g.done, g.ready, g.blocked, g.other_open, g.with_deps
    );
    println!(
        "  deepest open chain: {} tasks, head {} (its deps tree: {} tasks)",
        g.chain, g.head, g.tree
    );
    println!(
        "  {:.1} MB in {} files (avg {} B), generated in {:.1} s in {} ({}){}",
        g.bytes as f64 / 1e6,
        g.files.len(),
        g.bytes / g.files.len().max(1) as u64,
        gen_time.as_secs_f64(),
        root.display(),
        common::fs_type(&root),
        if opts.keep.is_some() { ", kept" } else { "" }
    );

    let mut benches: Vec<Bench> = [
        (Kind::FindCat, "find \\| xargs cat (baseline)".to_string()),
        (Kind::Cat, "xargs cat, listed files".to_string()),
        (Kind::Floor, "open+read+close, 1 thread".to_string()),
        (Kind::Next, "taskq next".to_string()),
        (Kind::NextOneCpu, "taskq next, pinned to 1 CPU".to_string()),
        (Kind::List, "taskq --json list".to_string()),
        (Kind::Deps, format!("taskq deps {}", g.head)),
    ]
    .into_iter()
    .map(|(kind, label)| Bench {
        kind,
        label,
        samples: Vec::with_capacity(opts.runs),
        failed: None,
    })
    .collect();

    // Warm the page cache (and check the outputs) once, untimed.
    for b in &mut benches {
        match warm_up(b.kind, &root, &list, &g) {
            Ok(note) if !note.is_empty() => println!("  warm-up {}: {note}", b.label),
            Ok(_) => {}
            Err(e) => b.failed = Some(e),
        }
    }
    // Timed rounds, interleaved so drift hits every command alike.
    for _ in 0..opts.runs {
        for b in benches.iter_mut().filter(|b| b.failed.is_none()) {
            let cmd = command(b.kind, &root, &list, &g.head);
            match launcher.run(&cmd, ok_codes(b.kind), b.kind == Kind::NextOneCpu) {
                Ok(s) => b.samples.push(s),
                Err(e) => b.failed = Some(e),
            }
        }
    }

    let med = |b: &Bench| median(b.samples.iter().map(|s| ms(s.wall)).collect());
    let base = |kind: Kind| {
        benches
            .iter()
            .find(|b| b.kind == kind && b.failed.is_none())
            .map(med)
    };
    let (base_find, base_cat, base_floor) =
        (base(Kind::FindCat), base(Kind::Cat), base(Kind::Floor));
    let ratio = |x: f64, base: Option<f64>| base.filter(|b| *b > 0.0).map(|b| x / b);

    println!(
        "  {} timed runs each. ms: wall time, median (min-max); cpu: user+sys, median; \
         xB: median / median of B; RSS: max ru_maxrss over the runs, MB = 10^6 bytes",
        opts.runs
    );
    println!();
    println!(
        "| {:<30} | {:>9} | {:>15} | {:>7} | {:>11} | {:>6} | {:>7} | {:>6} | {:<20} | {:<10} |",
        "command",
        "median ms",
        "(min-max)",
        "cpu ms",
        "x find+cat",
        "x cat",
        "x floor",
        "RSS MB",
        "target",
        "result"
    );
    println!(
        "|{:-<32}|{:->11}|{:->17}|{:->9}|{:->13}|{:->8}|{:->9}|{:->8}|{:-<22}|{:-<12}|",
        ":", ":", ":", ":", ":", ":", ":", ":", ":", ":"
    );
    let mut ok = true;
    let mut verdicts = Vec::new();
    for b in &benches {
        if let Some(e) = &b.failed {
            ok = false;
            println!("| {:<30} | CRASHED: {e}", b.label);
            verdicts.push(format!("N={n} {}: CRASHED ({e})", b.label));
            continue;
        }
        let walls: Vec<f64> = b.samples.iter().map(|s| ms(s.wall)).collect();
        let m = median(walls.clone());
        let lo = walls.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = walls.iter().copied().fold(0.0, f64::max);
        let cpu = median(b.samples.iter().map(|s| ms(s.cpu)).collect());
        let rss = b.samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0) * 1024;
        let r_find = ratio(m, base_find);

        // Targets (from the issue): `next` within 1.5x of the baseline at
        // 10k and 2x at 100k; peak RSS under 50 MB at 100k, applied here
        // to every taskq command measured.
        let mut checks: Vec<(String, bool)> = Vec::new();
        if b.kind == Kind::Next {
            let limit = match n {
                10_000 => Some(1.5),
                100_000 => Some(2.0),
                _ => None,
            };
            if let Some(limit) = limit {
                checks.push((format!("<= {limit}x"), r_find.is_some_and(|r| r <= limit)));
            }
        }
        if matches!(b.kind, Kind::Next | Kind::List | Kind::Deps) && n == 100_000 {
            checks.push(("RSS < 50 MB".to_string(), rss < RSS_LIMIT));
        }
        let word = |pass: bool| if pass { "PASS" } else { "FAIL" };
        let (target, result) = if checks.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let t: Vec<&str> = checks.iter().map(|(t, _)| t.as_str()).collect();
            let r: Vec<&str> = checks.iter().map(|(_, p)| word(*p)).collect();
            let each: Vec<String> = checks
                .iter()
                .map(|(t, p)| format!("{t} {}", word(*p)))
                .collect();
            verdicts.push(format!(
                "N={n} {}: {} ({:.2}x, {:.1} MB)",
                b.label,
                each.join(", "),
                r_find.unwrap_or(f64::NAN),
                rss as f64 / 1e6
            ));
            (t.join(", "), r.join(", "))
        };
        let fmt_ratio = |r: Option<f64>| r.map_or_else(|| "?".to_string(), |r| format!("{r:.2}"));
        println!(
            "| {:<30} | {:>9.1} | {:>15} | {:>7.1} | {:>11} | {:>6} | {:>7} | {:>6.1} | {:<20} | {:<10} |",
            b.label,
            m,
            format!("({lo:.1}-{hi:.1})"),
            cpu,
            fmt_ratio(r_find),
            fmt_ratio(ratio(m, base_cat)),
            fmt_ratio(ratio(m, base_floor)),
            rss as f64 / 1e6,
            target,
            result
        );
    }
    println!();
    Ok((ok, verdicts))
}
