//! Bounded everything (issue 13, part 5): no file makes taskq hang, no
//! input makes it do unbounded work, no deep graph overflows its stack, no
//! duration makes it panic or write a date it cannot read back.
//!
//! Every command here runs under a deadline ([`within`]): a hang fails the
//! test (and the process is killed) instead of blocking the suite.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::{Run, TestRoot};

/// Runs `taskq ARGS` in `root`, killed (and the test failed) past `limit`.
#[track_caller]
fn within(root: &TestRoot, limit: Duration, args: &[&str]) -> Run {
    let start = Instant::now();
    let mut child = root
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start taskq");
    // Read the pipes on threads: a large output must not block the child.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).map(|_| v)
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).map(|_| v)
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`taskq {}` did not finish within {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.join().unwrap().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.join().unwrap().unwrap()).into_owned(),
    }
}

/// Generous: a debug build on a loaded machine; a hang is forever.
const PROMPT: Duration = Duration::from_secs(30);

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

#[track_caller]
fn assert_names(run: &Run, what: &str) {
    assert!(
        run.stderr.contains(what) || run.stdout.contains(what),
        "expected `{what}`\nstdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

/// A FIFO named `*.md` in tasks/todo/, tasks/done/ or agents/templates/
/// blocked `list`, `check`, `next` and `run` forever in open(): now each is
/// skipped with a warning at the file, and the commands answer.
#[test]
fn fifos_are_skipped_with_a_warning_never_waited_on() {
    let root = TestRoot::new();
    let good = root.add(&["Good task"]);
    for rel in ["tasks/todo/fifo.md", "tasks/done/fifo-done.md"] {
        mkfifo(&root.path().join(rel));
    }
    let fifo = "is a FIFO (not a regular file); skipped";
    let run = within(&root, PROMPT, &["list"]).ok();
    assert!(run.stdout.contains(&good), "{}", run.stdout);
    assert_names(&run, &format!("tasks/todo/fifo.md: {fifo}"));
    assert_names(&run, &format!("tasks/done/fifo-done.md: {fifo}"));
    let run = within(&root, PROMPT, &["next"]).ok();
    assert_eq!(run.stdout.trim(), good);
    assert_names(&run, &format!("tasks/todo/fifo.md: {fifo}"));
    let run = within(&root, PROMPT, &["run", "--dry-run"]).ok();
    assert_names(&run, &format!("tasks/todo/fifo.md: {fifo}"));
    // A template: skipped by `check` with the rest; `run` refuses to start
    // with a broken template, as for any other.
    mkfifo(&root.path().join("agents/templates/fifo-role.md"));
    let run = within(&root, PROMPT, &["check"]).code(1);
    for rel in [
        "tasks/todo/fifo.md",
        "tasks/done/fifo-done.md",
        "agents/templates/fifo-role.md",
    ] {
        assert_names(&run, &format!("{rel}: {fifo}"));
    }
    let run = within(&root, PROMPT, &["run", "--dry-run"]).code(2);
    assert_names(&run, &format!("agents/templates/fifo-role.md: {fifo}"));
    let run = within(&root, PROMPT, &["next"]).ok();
    assert_eq!(run.stdout.trim(), good);
    let run = within(&root, PROMPT, &["show", &good]).ok();
    assert!(run.stdout.contains("Good task"), "{}", run.stdout);
    // Writers too: the FIFO is never opened for a rewrite or an adoption.
    within(&root, PROMPT, &["claim", &good, "--agent", "me"]).ok();
    within(&root, PROMPT, &["deps", &good]).ok();
    within(&root, PROMPT, &["graph"]).ok();

    // The config as a FIFO: an error at the file where the config is
    // needed, a problem for `check`, nothing for commands that never read it.
    mkfifo(&root.path().join("agents/factory/config.yaml"));
    let config = "agents/factory/config.yaml: is a FIFO (not a regular file)";
    assert_names(&within(&root, PROMPT, &["check"]).code(1), config);
    assert_names(
        &within(&root, PROMPT, &["run", "--dry-run"]).code(2),
        config,
    );
    assert_names(
        &within(&root, PROMPT, &["next", "--role", "builder"]).code(2),
        config,
    );
    within(&root, PROMPT, &["list"]).ok();
    within(&root, PROMPT, &["release", &good]).ok();
}

/// Links to a FIFO or to /dev/zero are refused the same way.
#[test]
fn links_to_special_files_are_refused() {
    let root = TestRoot::new();
    let good = root.add(&["Good task"]);
    let target = root.path().join("elsewhere/fifo");
    mkfifo(&target);
    std::os::unix::fs::symlink(&target, root.path().join("agents/templates/linked.md")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", root.path().join("agents/templates/zero.md")).unwrap();
    let run = within(&root, PROMPT, &["check"]).code(1);
    assert_names(
        &run,
        "agents/templates/linked.md: is a FIFO (not a regular file); skipped",
    );
    assert_names(
        &run,
        "agents/templates/zero.md: is a character device (not a regular file); skipped",
    );
    let run = within(&root, PROMPT, &["next"]).ok();
    assert_eq!(run.stdout.trim(), good);
}

/// A task file is read whole only to change it, up to 16 MiB: a larger one
/// in todo/ is held (never claimed, run or rewritten), and `show` prints
/// at most 1 MiB of any, saying so.
#[test]
fn task_files_are_read_up_to_their_caps() {
    let root = TestRoot::new();
    let good = root.add(&["Good task"]);
    // Sparse: 20 MiB of zero bytes after the header, nothing written.
    let huge = root.write(
        "tasks/todo/huge.md",
        "---\nid: TASK-500\nstatus: ready\ntitle: Huge\n---\n# Huge\n",
    );
    std::fs::File::options()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let run = within(&root, PROMPT, &["check"]).code(1);
    assert_names(
        &run,
        "tasks/todo/huge.md: the file is 20 MiB, more than taskq reads whole (16 MiB); held",
    );
    let run = within(&root, PROMPT, &["next"]).ok();
    assert_eq!(run.stdout.trim(), good);
    let run = within(&root, PROMPT, &["claim", "TASK-500", "--agent", "me"]).code(2);
    assert_names(&run, "has invalid fields; not changed");
    assert_eq!(std::fs::metadata(&huge).unwrap().len(), 20 << 20);
    let run = within(&root, PROMPT, &["show", "TASK-500"]).ok();
    assert!(run.stdout.len() < (1 << 20) + 4096, "{}", run.stdout.len());
    assert_names(
        &run,
        "(only the first 1 MiB of the file is shown; the rest is in",
    );
    let run = within(&root, PROMPT, &["--json", "show", "TASK-500"]).ok();
    let json = run.json();
    assert_eq!(json["body_truncated"], true);
    assert!(json["body"].as_str().unwrap().len() <= 1 << 20);
    // Under 16 MiB: changed as usual; shown in part.
    let body = format!("---\ntitle: Long\n---\n{}", "word ".repeat(400_000));
    root.write("tasks/todo/long.md", &body);
    let run = within(&root, PROMPT, &["show", "long"]).ok();
    assert_names(&run, "only the first 1 MiB of the file is shown");
    within(&root, PROMPT, &["adopt"]).ok();
    assert!(root
        .read("tasks/todo/long.md")
        .ends_with(&"word ".repeat(1000)));
    let run = within(&root, PROMPT, &["--json", "show", &good]).ok();
    assert!(run.json().get("body_truncated").is_none());
}

/// `add --body -` reads at most 8 MiB of stdin (`/dev/zero` once grew it
/// without end).
#[test]
fn a_body_on_stdin_is_capped() {
    let root = TestRoot::new();
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let run = Run::from(
        root.cmd(&["add", "Endless", "--body", "-"])
            .stdin(zero)
            .output()
            .unwrap(),
    )
    .code(2);
    assert_names(&run, "the body on stdin is longer than 8 MiB");
    let run = within(&root, PROMPT, &["list"]).ok();
    assert!(!run.stdout.contains("Endless"), "{}", run.stdout);
}

/// A config or template larger than 1 MiB is an error at the file.
#[test]
fn settings_files_are_capped() {
    let root = TestRoot::new();
    let good = root.add(&["Good task"]);
    root.write(
        "agents/templates/big.md",
        format!(
            "---\nprefix: BIG\nagent: shell\n---\n{}",
            "x".repeat(1 << 20)
        ),
    );
    let run = within(&root, PROMPT, &["check"]).code(1);
    assert_names(
        &run,
        "agents/templates/big.md: is larger than 1 MiB (taskq reads at most that much of it)",
    );
    root.write(
        "agents/factory/config.yaml",
        format!("max_concurrent: 2\n{}", "# padding\n".repeat(120_000)),
    );
    let run = within(&root, PROMPT, &["run", "--dry-run"]).code(2);
    assert_names(&run, "agents/factory/config.yaml: is larger than 1 MiB");
    assert_eq!(within(&root, PROMPT, &["next"]).ok().stdout.trim(), good);
}

/// `x: [[[[…` 250,000 levels deep (under the 256 KiB header cap) took
/// minutes in serde_yaml; now it is refused at its line, at once, and the
/// rest of the queue works.
#[test]
fn deep_yaml_nesting_is_refused_at_its_line() {
    let root = TestRoot::new();
    let good = root.add(&["Good task"]);
    root.write(
        "tasks/todo/deep.md",
        format!("---\nid: TASK-700\nx: {}\n---\n", "[".repeat(250_000)),
    );
    root.write(
        "tasks/todo/deep-map.md",
        format!("---\nid: TASK-701\nx:\n{}---\n", {
            let mut s = String::new();
            for k in 1..200 {
                s.push_str(&format!("{}k{k}:\n", " ".repeat(k)));
            }
            s
        }),
    );
    let limit = Duration::from_secs(10);
    let run = within(&root, limit, &["check"]).code(1);
    assert_names(
        &run,
        "tasks/todo/deep.md:3:67: invalid YAML: nesting deeper than 64 levels",
    );
    assert_names(
        &run,
        "tasks/todo/deep-map.md:67:65: invalid YAML: nesting deeper than 64 levels",
    );
    let run = within(&root, limit, &["next"]).ok();
    assert_eq!(run.stdout.trim(), good);
    assert_names(&run, "tasks/todo/deep.md:3:67");
    // The config and templates too.
    root.write(
        "agents/factory/config.yaml",
        format!("max_concurrent: 2\nadapters: {}\n", "{a: ".repeat(200_000)),
    );
    root.write(
        "agents/templates/deep.md",
        format!(
            "---\nprefix: DEEP\nargs: {}\n---\nsoul\n",
            "[".repeat(200_000)
        ),
    );
    let run = within(&root, limit, &["check"]).code(1);
    assert_names(
        &run,
        "agents/factory/config.yaml:2:263: nesting deeper than 64 levels",
    );
    assert_names(
        &run,
        "agents/templates/deep.md:3:70: nesting deeper than 64 levels",
    );
}

/// `deps`, `deps --reverse` and `--json deps` overflowed the stack on a
/// chain of ~20,000 tasks, and `--json deps` was quadratic in its depth.
/// (20,000 rather than 30,000: each command reads every file twice, once to
/// scan and once for the titles, and the test should stay near 10 s of CPU
/// in a debug build; the unit tests walk a 1,000,000-deep chain in memory.)
#[test]
fn a_chain_of_20000_tasks_is_walked_without_recursion() {
    let root = TestRoot::empty();
    let n = 20_000;
    let id = |k: usize| format!("TASK-{k:05}");
    for k in 1..=n {
        let deps = if k < n {
            format!("dependencies: [{}]\n", id(k + 1))
        } else {
            String::new()
        };
        root.write(
            &format!("tasks/todo/t{k:05}.md"),
            format!("---\nid: {}\ntitle: Step {k}\n{deps}---\n", id(k)),
        );
    }
    let limit = Duration::from_secs(60);
    let run = within(&root, limit, &["deps", &id(1)]).ok();
    assert_eq!(run.stdout.lines().count(), 1);
    assert!(
        run.stdout
            .starts_with("TASK-00001 [blocked] → TASK-00002 [blocked] → "),
        "{}",
        &run.stdout[..200]
    );
    assert!(run.stdout.ends_with("→ TASK-20000 [ready]\n"));
    assert_eq!(run.stdout.matches(" → ").count(), n - 1);
    let run = within(&root, limit, &["deps", "--reverse", &id(n)]).ok();
    assert!(run
        .stdout
        .starts_with("TASK-20000 [ready] → TASK-19999 [blocked]"));
    assert_eq!(run.stdout.matches(" → ").count(), n - 1);
    let run = within(&root, limit, &["--json", "deps", &id(1)]).ok();
    // Linear in the depth: pretty at the top, compact further down.
    assert!(run.stdout.len() < n * 120, "{} bytes", run.stdout.len());
    assert!(run.stdout.starts_with("{\n  \"id\": \"TASK-00001\",\n  \"status\": \"blocked\",\n  \"title\": \"Step 1\",\n  \"children\": [\n"));
    assert_eq!(run.stdout.matches("\"id\": ").count(), n);
    let open = run.stdout.matches(['{', '[']).count();
    let close = run.stdout.matches(['}', ']']).count();
    assert_eq!(open, close);
    assert!(run
        .stdout
        .contains("{\"id\": \"TASK-20000\",\"status\": \"ready\","));
    let run = within(&root, limit, &["graph"]).ok();
    assert_eq!(run.stdout.matches(" --> ").count(), n - 1);
}

/// `--lease 1000000000d` and `--lease 18446744073709551615s` panicked;
/// `--lease 3000000d` wrote a date taskq could not parse, and the task
/// turned invalid. Each is now a usage error naming the bound, and the task
/// stays as it was.
#[test]
fn out_of_range_leases_are_refused_and_no_task_turns_invalid() {
    let root = TestRoot::new();
    let a = root.add(&["Leased task"]);
    let before = root.read(&root.task_file(&a));
    for lease in ["1000000000d", "18446744073709551615s", "3000000d"] {
        let message = format!("--lease: duration `{lease}` is out of range (at most 36500d)");
        for args in [
            vec!["claim", a.as_str(), "--agent", "me", "--lease", lease],
            vec!["next", "--claim", "me", "--lease", lease],
        ] {
            let run = within(&root, PROMPT, &args).code(2);
            assert_names(&run, &message);
            assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        }
        assert_eq!(root.read(&root.task_file(&a)), before);
    }
    // A lease whose end would pass 9999-12-31 is refused too.
    let mut cmd = root.cmd(&["claim", &a, "--agent", "me", "--lease", "36500d"]);
    cmd.env("TASKQ_NOW", "9990-01-01T00:00:00Z");
    let run = Run::from(cmd.output().unwrap()).code(2);
    assert_names(&run, "is past 9999-12-31, the last date taskq can write");
    assert_eq!(root.read(&root.task_file(&a)), before);
    // The longest lease works, and reads back.
    within(
        &root,
        PROMPT,
        &["claim", &a, "--agent", "me", "--lease", "36500d"],
    )
    .ok();
    let run = within(&root, PROMPT, &["renew", &a, "--lease", "1000000000d"]).code(2);
    assert_names(&run, "is out of range (at most 36500d)");
    within(&root, PROMPT, &["check"]).ok();
    let json = within(&root, PROMPT, &["--json", "show", &a]).ok().json();
    assert_eq!(json["state"], "running");
    assert!(json["lease_expires"].as_str().is_some());
}

/// `history_after: 99999999999d` passed `check`, then the factory panicked
/// on its first heartbeat (`now - history_after` overflowed).
#[test]
fn config_durations_past_the_bound_are_refused_by_check() {
    let root = TestRoot::new();
    root.add(&["A task"]);
    root.write(
        "agents/factory/config.yaml",
        "max_concurrent: 2\nhistory_after: 99999999999d\n",
    );
    let run = within(&root, PROMPT, &["check"]).code(1);
    assert_names(
        &run,
        "agents/factory/config.yaml:2:16: duration `99999999999d` is out of range (at most 36500d)",
    );
    assert_names(
        &within(&root, PROMPT, &["run", "--dry-run"]).code(2),
        "is out of range (at most 36500d)",
    );
    // A role's timeout, through the same reader; a task's own timeout.
    root.write("agents/factory/config.yaml", "max_concurrent: 2\n");
    root.write(
        "agents/templates/slow.md",
        "---\nprefix: SLW\nagent: shell\ntimeout: 18446744073709551615s\n---\n",
    );
    root.write(
        "tasks/todo/t.md",
        "---\nid: TASK-800\ntimeout: 1000000000d\n---\n",
    );
    let run = within(&root, PROMPT, &["check"]).code(1);
    assert_names(
        &run,
        "agents/templates/slow.md:4:10: duration `18446744073709551615s` is out of range",
    );
    assert_names(&run, "`timeout`: duration `1000000000d` is out of range");
}
