//! Broken task files (`tests/fixtures/bad/`): each gives a clear error
//! naming the file (and the line, where there is one) or is accepted where
//! it is harmless; its bytes never change by a read, a failed write or a
//! write to another task; the rest of the queue keeps working.
//!
//! One table, one runner: every row is put alone (or with its group) next to
//! a good ready task `TASK-900` in a fresh root, then `check`, `next`,
//! `list`, `claim TASK-900` and a write on the broken task itself run
//! against it. Large files, symlinks and a non-UTF-8 file name are made at
//! run time (see [`fixture`] and the tests at the end).
//!
//! The runner can skip steps of a row (for a known bug, with its own
//! `#[ignore]`d test); today no row needs to.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::util::TestRoot;

/// What `taskq check` must say about a fixture.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Harmless: `check` exits 0 and prints no line for the file at all.
    Accepted,
    /// Accepted with a warning: `check` exits 0 and prints
    /// `path[:line]: warning: ...contains...`.
    Warning {
        line: Option<usize>,
        contains: &'static str,
    },
    /// An error: `check` exits 1 and prints `path[:line[:col]]: ...contains...`.
    Error {
        line: Option<usize>,
        contains: &'static str,
    },
}

/// One assertion step of the runner (so a known bug can skip just its step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// `check` names the file with the expected line and text.
    CheckReport,
    /// `next` warns about the file on stderr.
    NextWarns,
    /// `next` answers `TASK-900` (the broken task is never handed out).
    NextPicksGood,
    /// The fixture's bytes are unchanged after `claim TASK-900`.
    BytesAfterWrite,
    /// Writing commands on the broken task itself fail (exit 2 or 3).
    OwnWriteRefused,
}

/// A writing command aimed at the broken task itself.
#[derive(Debug, Clone, Copy)]
enum Own {
    /// Not tested (the task is legitimately writable, or has no handle).
    Skip,
    /// `claim ID` and `done ID` both fail with exit 2 or 3.
    Refused(&'static str),
    /// `claim ID` fails with exit 2 or 3 (`done` is legitimately allowed:
    /// the task is merely blocked).
    ClaimRefused(&'static str),
}

/// One row of the table.
#[derive(Debug, Clone)]
struct Case {
    /// The fixture files copied together into `tasks/todo/`.
    files: Vec<&'static str>,
    /// The file the problem is reported on.
    reported: &'static str,
    expect: Expect,
    /// The fixture's own task is legitimately ready and would win `next`:
    /// the good task gets `priority: critical`.
    runnable: bool,
    own: Own,
}

impl Case {
    fn name(&self) -> String {
        self.files.join("+")
    }

    fn runnable(mut self) -> Self {
        self.runnable = true;
        self
    }

    /// `claim ID` and `done ID` must fail and change nothing.
    fn refuses(mut self, id: &'static str) -> Self {
        self.own = Own::Refused(id);
        self
    }

    /// `claim ID` must fail and change nothing.
    fn claim_refused(mut self, id: &'static str) -> Self {
        self.own = Own::ClaimRefused(id);
        self
    }
}

fn case(files: &[&'static str], reported: &'static str, expect: Expect) -> Case {
    Case {
        files: files.to_vec(),
        reported,
        expect,
        runnable: false,
        own: Own::Skip,
    }
}

/// An error at `file:line`.
fn err(file: &'static str, line: usize, contains: &'static str) -> Case {
    case(
        &[file],
        file,
        Expect::Error {
            line: Some(line),
            contains,
        },
    )
}

fn warn(file: &'static str, line: Option<usize>, contains: &'static str) -> Case {
    case(&[file], file, Expect::Warning { line, contains })
}

fn accepted(file: &'static str) -> Case {
    case(&[file], file, Expect::Accepted)
}

/// The table. Ids: each fixture has its own `TASK-1xx`, smaller than the
/// good task's `TASK-900`, so a broken task that were wrongly handed out by
/// `next` would win.
fn cases() -> Vec<Case> {
    vec![
        // --- invalid YAML (the file is not a task at all) ----------------
        err("invalid-yaml-unclosed-bracket.md", 4, "invalid YAML").refuses("TASK-101"),
        err("invalid-yaml-unclosed-quote.md", 3, "invalid YAML").refuses("TASK-102"),
        err(
            "invalid-yaml-bad-indent.md",
            3,
            "invalid YAML: mapping values are not allowed",
        )
        .refuses("TASK-103"),
        err(
            "invalid-yaml-duplicate-key.md",
            4,
            "invalid YAML: duplicate key `status`",
        )
        .refuses("TASK-104"),
        err(
            "invalid-yaml-undefined-alias.md",
            4,
            "invalid YAML: unknown anchor",
        )
        .refuses("TASK-105"),
        err("invalid-yaml-line-without-key.md", 4, "invalid YAML").refuses("TASK-106"),
        err("tab-indent.md", 5, "tab used for indentation").refuses("TASK-107"),
        err("yaml-list-not-map.md", 2, "frontmatter must be a map").refuses("yaml-list-not-map"),
        err("yaml-scalar-not-map.md", 2, "frontmatter must be a map")
            .refuses("yaml-scalar-not-map"),
        err("non-utf8-header.md", 3, "frontmatter is not valid UTF-8").refuses("TASK-130"),
        // --- frontmatter that never ends ----------------------------------
        err("unterminated.md", 1, "never ends").refuses("TASK-108"),
        err("unterminated-indented-close.md", 1, "never ends").refuses("TASK-109"),
        err("only-dashes.md", 1, "never ends").refuses("only-dashes"),
        err("large-5mb-unterminated.md", 1, "never ends").refuses("TASK-161"),
        // A header that does close, but only after 1 MB (taskq reads at most
        // 256 KiB of header).
        err("huge-header-1mb.md", 1, "frontmatter").refuses("TASK-162"),
        // --- wrong types ---------------------------------------------------
        err("tags-is-a-map.md", 4, "`tags` must be a list").refuses("TASK-110"),
        err(
            "dependencies-is-a-map.md",
            4,
            "`dependencies` must be a list",
        )
        .refuses("TASK-111"),
        err(
            "dependencies-nested-list.md",
            4,
            "`dependencies` must be a list",
        )
        .refuses("TASK-112"),
        err("status-is-a-list.md", 3, "`status` must be a single value").refuses("TASK-114"),
        err("nested-map-status.md", 3, "`status` must be a single value").refuses("TASK-115"),
        err(
            "assigned-is-a-list.md",
            4,
            "`assigned` must be a single value",
        )
        .refuses("TASK-122"),
        err("id-is-a-list.md", 2, "`id` must be a single value").refuses("id-is-a-list"),
        err("title-is-a-map.md", 4, "`title` must be a single value").refuses("TASK-123"),
        err(
            "timeout-not-a-duration.md",
            4,
            "`timeout`: invalid duration `soon`",
        )
        .refuses("TASK-155"),
        err(
            "retries-not-number.md",
            4,
            "`retries` must be a whole number",
        )
        .refuses("TASK-118"),
        err(
            "attempts-negative.md",
            4,
            "`attempts` must be a whole number",
        )
        .refuses("TASK-119"),
        err("created-not-a-date.md", 4, "`created` is not a date-time").refuses("TASK-120"),
        err(
            "lease-expires-not-a-date.md",
            5,
            "`lease_expires` is not a date-time",
        )
        .refuses("TASK-121"),
        // --- bad words -----------------------------------------------------
        err("status-typo.md", 3, "unknown status `redy`").refuses("TASK-113"),
        err("priority-typo.md", 4, "unknown priority `urgnt`").refuses("TASK-116"),
        err("priority-is-a-number.md", 4, "unknown priority `1`").refuses("TASK-117"),
        // --- unsafe ids (listed under the file stem, never changed) --------
        err("id-dotdot.md", 2, "invalid id `../../etc/passwd`").refuses("id-dotdot"),
        err("id-with-slash.md", 2, "invalid id `TASK/126`").refuses("id-with-slash"),
        err("id-with-space.md", 2, "invalid id `TASK 127`").refuses("id-with-space"),
        err("id-empty-string.md", 2, "invalid id ``: it is empty").refuses("id-empty-string"),
        err(
            "dependency-dotdot.md",
            4,
            "invalid dependency `../TASK-900`",
        )
        .refuses("TASK-128"),
        // --- the dependency graph -----------------------------------------
        err("self-dep.md", 4, "`TASK-131` depends on itself").refuses("TASK-131"),
        err(
            "unknown-dep.md",
            4,
            "depends on `TASK-999`, which does not exist",
        )
        .claim_refused("TASK-132"),
        case(
            &["cycle-a.md", "cycle-b.md", "cycle-c.md"],
            "cycle-a.md",
            Expect::Error {
                line: Some(4),
                contains: "dependency cycle: TASK-141 → TASK-142 → TASK-143 → TASK-141",
            },
        )
        .claim_refused("TASK-141"),
        // Both copies are held until one is renamed: either could otherwise
        // run the task a second time.
        case(
            &["dup-id-a.md", "dup-id-b.md"],
            "dup-id-b.md",
            Expect::Error {
                line: Some(2),
                contains: "duplicate id `TASK-133` (also in tasks/todo/dup-id-a.md)",
            },
        )
        .refuses("TASK-133"),
        // --- harmless --------------------------------------------------------
        accepted("crlf.md").runnable(),
        accepted("bom.md").runnable(),
        accepted("bom-crlf.md").runnable(),
        accepted("non-utf8-body.md").runnable(),
        accepted("large-5mb.md").runnable(),
        warn("field-name-typo.md", Some(4), "unknown field `prioirty`").runnable(),
        // An empty file is not a task (and is never adopted into one).
        case(
            &["empty.md"],
            "empty.md",
            Expect::Error {
                line: None,
                contains: "empty file",
            },
        ),
    ]
}

/// Files made at run time rather than committed.
const GENERATED: &[&str] = &[
    "large-5mb.md",
    "large-5mb-unterminated.md",
    "huge-header-1mb.md",
];

/// The bytes of a fixture: committed, or generated.
fn fixture(name: &str) -> Vec<u8> {
    const MB5: usize = 5 * 1024 * 1024;
    let body = |fill: u8| {
        let mut b = Vec::with_capacity(MB5);
        while b.len() < MB5 {
            b.extend_from_slice(&[fill; 99]);
            b.push(b'\n');
        }
        b
    };
    match name {
        // A valid header and a 5 MB body: only the header is read.
        "large-5mb.md" => {
            let mut b = b"---\nid: TASK-160\nstatus: ready\n---\n# Large\n".to_vec();
            b.extend(body(b'x'));
            b
        }
        // 5 MB of "header" that never closes.
        "large-5mb-unterminated.md" => {
            let mut b = b"---\nid: TASK-161\nstatus: ready\n".to_vec();
            b.extend(body(b'y'));
            b
        }
        // 1 MB of comment lines, then a proper close.
        "huge-header-1mb.md" => {
            let mut b = b"---\nid: TASK-162\nstatus: ready\n".to_vec();
            while b.len() < 1024 * 1024 {
                b.extend_from_slice(b"# padding padding padding padding padding padding padding\n");
            }
            b.extend_from_slice(b"---\nbody\n");
            b
        }
        _ => std::fs::read(fixtures_dir().join(name))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}")),
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad")
}

const GOOD: &str = "---\nid: TASK-900\nstatus: ready\n---\n";
const GOOD_CRITICAL: &str = "---\nid: TASK-900\nstatus: ready\npriority: critical\n---\n";

/// `return Err(...)` naming the case unless `cond`.
macro_rules! ensure {
    ($case:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!("[{}] {}", $case.name(), format!($($fmt)+)));
        }
    };
}

/// `tasks/todo/<file>:<line>:` or `tasks/todo/<file>: `.
fn prefix(file: &str, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("tasks/todo/{file}:{l}:"),
        None => format!("tasks/todo/{file}: "),
    }
}

/// Runs every step of `case`, except `skip`; the first failure is returned.
fn run_case(case: &Case, skip: &[Step]) -> Result<(), String> {
    let runs = |s: Step| !skip.contains(&s);
    let root = TestRoot::new();
    root.write(
        "tasks/todo/good.md",
        if case.runnable { GOOD_CRITICAL } else { GOOD },
    );
    let originals: Vec<(String, Vec<u8>)> = case
        .files
        .iter()
        .map(|f| {
            let rel = format!("tasks/todo/{f}");
            let bytes = fixture(f);
            root.write(&rel, &bytes);
            (rel, bytes)
        })
        .collect();
    let unchanged = |after: &str| -> Result<(), String> {
        for (rel, bytes) in &originals {
            let now = std::fs::read(root.path().join(rel))
                .map_err(|e| format!("[{}] {rel} after {after}: {e}", case.name()))?;
            ensure!(
                case,
                now == *bytes,
                "{rel} changed after `{after}` ({} bytes before, {} after)",
                bytes.len(),
                now.len()
            );
        }
        Ok(())
    };
    let ours = |line: &str| {
        case.files
            .iter()
            .any(|f| line.starts_with(&format!("tasks/todo/{f}:")))
    };

    // (a) check
    let check = root.taskq(&["check"]);
    let out = &check.stdout;
    match case.expect {
        Expect::Error { line, contains } => {
            ensure!(
                case,
                check.code == 1,
                "check exited {}, want 1\nstdout:\n{out}",
                check.code
            );
            let file_prefix = prefix(case.reported, None);
            let file_prefix = file_prefix.trim_end();
            ensure!(
                case,
                out.lines()
                    .any(|l| l.starts_with(file_prefix) && !l.contains(": warning: ")),
                "check printed no error line for {file_prefix}\nstdout:\n{out}"
            );
            if runs(Step::CheckReport) {
                let want = prefix(case.reported, line);
                ensure!(
                    case,
                    out.lines().any(|l| l.starts_with(&want)
                        && !l.contains(": warning: ")
                        && l.contains(contains)),
                    "check printed no error line starting with `{want}` containing `{contains}`\nstdout:\n{out}"
                );
            }
        }
        Expect::Warning { line, contains } => {
            ensure!(
                case,
                check.code == 0,
                "check exited {}, want 0\nstdout:\n{out}",
                check.code
            );
            let want = format!(
                "{}warning: ",
                match line {
                    Some(l) => format!("tasks/todo/{}:{l}: ", case.reported),
                    None => format!("tasks/todo/{}: ", case.reported),
                }
            );
            ensure!(
                case,
                out.lines().any(|l| l.starts_with(&want) && l.contains(contains)),
                "check printed no line starting with `{want}` containing `{contains}`\nstdout:\n{out}"
            );
            ensure!(
                case,
                !out.lines().any(|l| ours(l) && !l.contains(": warning: ")),
                "check printed an error line for an accepted file\nstdout:\n{out}"
            );
        }
        Expect::Accepted => {
            ensure!(
                case,
                check.code == 0,
                "check exited {}, want 0\nstdout:\n{out}",
                check.code
            );
            ensure!(
                case,
                !out.lines().any(ours),
                "check printed a line about an accepted file\nstdout:\n{out}"
            );
        }
    }
    unchanged("check")?;

    // (b) next
    let next = root.taskq(&["next"]);
    ensure!(
        case,
        next.code == 0,
        "next exited {}, want 0\nstdout:\n{}\nstderr:\n{}",
        next.code,
        next.stdout,
        next.stderr
    );
    if runs(Step::NextPicksGood) {
        ensure!(
            case,
            next.stdout.split_whitespace().next() == Some("TASK-900"),
            "next answered {:?}, want TASK-900\nstderr:\n{}",
            next.stdout,
            next.stderr
        );
    }
    match case.expect {
        Expect::Accepted => ensure!(
            case,
            !case
                .files
                .iter()
                .any(|f| next.stderr.contains(&format!("tasks/todo/{f}"))),
            "next warned about an accepted file\nstderr:\n{}",
            next.stderr
        ),
        Expect::Error { line, .. } | Expect::Warning { line, .. } => {
            if runs(Step::NextWarns) {
                // The same place as `check` (just the file when the line is
                // the known-wrong part).
                let want = if runs(Step::CheckReport) {
                    format!("taskq: warning: {}", prefix(case.reported, line))
                } else {
                    format!("taskq: warning: tasks/todo/{}:", case.reported)
                };
                ensure!(
                    case,
                    next.stderr.contains(&want),
                    "next's stderr does not contain `{want}`\nstderr:\n{}",
                    next.stderr
                );
            }
        }
    }
    unchanged("next")?;

    // list
    let list = root.taskq(&["list"]);
    ensure!(
        case,
        list.code == 0,
        "list exited {}\nstderr:\n{}",
        list.code,
        list.stderr
    );
    ensure!(
        case,
        list.stdout.contains("TASK-900"),
        "list lost TASK-900:\n{}",
        list.stdout
    );
    unchanged("list")?;

    // (c) a write to another task
    let claim = root.taskq(&["claim", "TASK-900", "--agent", "t"]);
    ensure!(
        case,
        claim.code == 0,
        "claim TASK-900 exited {}\nstderr:\n{}",
        claim.code,
        claim.stderr
    );
    if runs(Step::BytesAfterWrite) {
        unchanged("claim TASK-900 --agent t")?;
    }

    // A write on the broken task itself.
    if runs(Step::OwnWriteRefused) {
        let cmds: Vec<Vec<&str>> = match case.own {
            Own::Skip => vec![],
            Own::Refused(id) => vec![vec!["claim", id, "--agent", "x"], vec!["done", id]],
            Own::ClaimRefused(id) => vec![vec!["claim", id, "--agent", "x"]],
        };
        for cmd in cmds {
            let run = root.taskq(&cmd);
            let shown = cmd.join(" ");
            ensure!(
                case,
                run.code == 2 || run.code == 3,
                "`{shown}` exited {}, want 2 or 3\nstdout:\n{}\nstderr:\n{}",
                run.code,
                run.stdout,
                run.stderr
            );
            ensure!(
                case,
                run.stderr.contains("taskq: error: "),
                "`{shown}` printed no error\nstderr:\n{}",
                run.stderr
            );
            if runs(Step::BytesAfterWrite) {
                unchanged(&shown)?;
            }
        }
    }
    Ok(())
}

/// Runs `cases` on a few threads; panics listing every failure.
fn run_all(cases: Vec<(Case, Vec<Step>)>) {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    let next = AtomicUsize::new(0);
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut failed = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some((case, skip)) = cases.get(i) else {
                            break;
                        };
                        if let Err(e) = run_case(case, skip) {
                            failed.push(e);
                        }
                    }
                    failed
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("runner thread"))
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// Every fixture, every step.
#[test]
fn every_bad_fixture_is_reported_and_harmless() {
    run_all(cases().into_iter().map(|c| (c, Vec::new())).collect());
}

/// A writing command never turns an empty file into a task, not even
/// through the repairs `Writer::open` makes before it fails.
#[test]
fn failed_write_never_adopts_an_empty_file() {
    let root = TestRoot::new();
    root.write("tasks/todo/good.md", GOOD);
    let empty = fixture("empty.md");
    root.write("tasks/todo/empty.md", &empty);
    root.taskq(&["claim", "TASK-999", "--agent", "x"]).code(2);
    assert_eq!(
        root.read_bytes("tasks/todo/empty.md"),
        empty,
        "empty.md changed by a failed claim"
    );
}

/// A symlink pointing outside the root is reported and never followed:
/// its target is neither read as a task nor written.
#[cfg(unix)]
#[test]
fn symlink_outside_the_root_is_reported_and_never_followed() {
    let root = TestRoot::new();
    root.write("tasks/todo/good.md", GOOD);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("TASK-700.md");
    let target_bytes = b"---\nid: TASK-700\nstatus: ready\npriority: critical\n---\n# Outside\n";
    std::fs::write(&target, target_bytes).unwrap();
    std::fs::create_dir(outside.path().join("dir")).unwrap();
    std::fs::write(
        outside.path().join("dir/TASK-701.md"),
        "---\nid: TASK-701\nstatus: ready\npriority: critical\n---\n",
    )
    .unwrap();
    let todo = root.path().join("tasks/todo");
    std::os::unix::fs::symlink(&target, todo.join("link-outside.md")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("nowhere.md"),
        todo.join("link-dangling.md"),
    )
    .unwrap();
    std::os::unix::fs::symlink(outside.path().join("dir"), todo.join("linked-dir")).unwrap();
    let snapshot = || {
        (
            std::fs::read(&target).unwrap(),
            std::fs::read_link(todo.join("link-outside.md")).unwrap(),
            std::fs::read_link(todo.join("link-dangling.md")).unwrap(),
            std::fs::read(outside.path().join("dir/TASK-701.md")).unwrap(),
        )
    };
    let before = snapshot();
    assert_eq!(before.0, target_bytes);

    let check = root.taskq(&["check"]).code(1);
    for (name, what) in [
        ("link-outside.md", "symbolic link pointing outside the root"),
        ("link-dangling.md", "symbolic link"),
    ] {
        assert!(
            check
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("tasks/todo/{name}: ")) && l.contains(what)),
            "check does not report {name} ({what}):\n{}",
            check.stdout
        );
    }
    assert_eq!(snapshot(), before, "changed by check");

    let next = root.taskq(&["next"]).ok();
    assert_eq!(
        next.stdout.trim(),
        "TASK-900",
        "the linked tasks must not run"
    );
    assert!(
        next.stderr
            .contains("taskq: warning: tasks/todo/link-outside.md: "),
        "next does not warn about the link:\n{}",
        next.stderr
    );
    let list = root.taskq(&["list"]).ok();
    assert!(
        !list.stdout.contains("TASK-700") && !list.stdout.contains("TASK-701"),
        "list shows a task read through a link:\n{}",
        list.stdout
    );
    assert_eq!(snapshot(), before, "changed by next/list");

    root.taskq(&["claim", "TASK-700", "--agent", "x"]).code(2);
    root.taskq(&["done", "TASK-701"]).code(2);
    root.taskq(&["claim", "TASK-900", "--agent", "t"]).ok();
    assert_eq!(snapshot(), before, "changed by a write");
    assert!(std::fs::symlink_metadata(todo.join("link-outside.md"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A file name that is not UTF-8 is reported (lossily shown), not fatal.
#[cfg(target_os = "linux")]
#[test]
fn non_utf8_file_name_is_reported() {
    use std::os::unix::ffi::OsStrExt;
    let root = TestRoot::new();
    root.write("tasks/todo/good.md", GOOD);
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff.md");
    let path = root.path().join("tasks/todo").join(name);
    let bytes = b"---\nid: TASK-170\nstatus: ready\npriority: critical\n---\n";
    std::fs::write(&path, bytes).unwrap();
    let check = root.taskq(&["check"]).code(1);
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("tasks/todo/bad-") && l.contains("not valid UTF-8")),
        "{}",
        check.stdout
    );
    let next = root.taskq(&["next"]).ok();
    assert_eq!(next.stdout.trim(), "TASK-900");
    assert!(next.stderr.contains("not valid UTF-8"), "{}", next.stderr);
    root.taskq(&["claim", "TASK-900", "--agent", "t"]).ok();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

/// The 5 MB task is read header-only: `check`, `next` and `list` on it stay
/// quick (generous bound: a debug build reads just 4 KiB).
#[test]
fn large_file_is_read_quickly() {
    let root = TestRoot::new();
    let big = fixture("large-5mb.md");
    assert!(big.len() >= 5 * 1024 * 1024);
    root.write("tasks/todo/large-5mb.md", &big);
    root.write(
        "tasks/todo/large-5mb-unterminated.md",
        fixture("large-5mb-unterminated.md"),
    );
    for cmd in [&["check"][..], &["next"], &["list"], &["show", "TASK-160"]] {
        let start = Instant::now();
        let run = root.taskq(cmd);
        let took = start.elapsed();
        assert!(run.code == 0 || run.code == 1, "{cmd:?}: {run:?}");
        assert!(took < Duration::from_secs(2), "{cmd:?} took {took:?}");
    }
    assert_eq!(root.taskq(&["next"]).ok().stdout.trim(), "TASK-160");
}

/// Harmless encodings survive a write: `claim` keeps the BOM, CRLF line
/// endings and the (non-UTF-8) body byte for byte, and the title reads back
/// without a stray `\r`.
#[test]
fn accepted_files_keep_their_encoding_through_a_write() {
    for (file, id) in [
        ("crlf.md", "TASK-150"),
        ("bom.md", "TASK-151"),
        ("bom-crlf.md", "TASK-152"),
        ("non-utf8-body.md", "TASK-153"),
    ] {
        let root = TestRoot::new();
        let rel = format!("tasks/todo/{file}");
        let before = fixture(file);
        root.write(&rel, &before);
        root.taskq(&["claim", id, "--agent", "t"]).ok();
        let after = root.read_bytes(&rel);
        let bom = b"\xEF\xBB\xBF";
        assert_eq!(
            before.starts_with(bom),
            after.starts_with(bom),
            "{file}: BOM"
        );
        let crlf = before.windows(2).any(|w| w == b"\r\n");
        if crlf {
            let bare_lf = after
                .iter()
                .enumerate()
                .any(|(i, b)| *b == b'\n' && (i == 0 || after[i - 1] != b'\r'));
            assert!(
                !bare_lf,
                "{file}: a bare LF after the write: {:?}",
                String::from_utf8_lossy(&after)
            );
        }
        // The body (after the closing `---` line) is kept byte for byte.
        let body = |b: &[u8]| {
            let close = if crlf {
                &b"\n---\r\n"[..]
            } else {
                &b"\n---\n"[..]
            };
            let at = b
                .windows(close.len())
                .position(|w| w == close)
                .expect("closing ---");
            b[at + close.len()..].to_vec()
        };
        assert_eq!(body(&before), body(&after), "{file}: body changed");
        let text = String::from_utf8_lossy(&after);
        assert!(text.contains("status: running"), "{file}: {text}");
        let check = root.taskq(&["check"]);
        assert_eq!(check.code, 0, "{file} after the write:\n{}", check.stdout);
        let json = root.taskq(&["--json", "list"]).ok().json();
        let title = json[0]["title"].as_str().unwrap_or_default().to_string();
        assert!(
            !title.contains('\r') && !title.starts_with('\u{feff}'),
            "{file}: title {title:?}"
        );
    }
}

/// The committed fixtures are exactly those the table (and the generated
/// ones) use: a new file must get a row.
#[test]
fn every_committed_fixture_has_a_row() {
    let mut used: Vec<&str> = cases().iter().flat_map(|c| c.files.clone()).collect();
    used.retain(|f| !GENERATED.contains(f));
    used.sort_unstable();
    let mut on_disk: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort_unstable();
    assert_eq!(used, on_disk);
    assert!(cases().iter().map(|c| c.files.len()).sum::<usize>() >= 30);
}
