//! The chaos suite: the factory, shell scripts claiming and finishing tasks
//! (`next --claim` / `done`), editors changing task files (`sed -i`, and
//! vim's save: move aside, write anew), hostile files (a FIFO named like a
//! task, links leading outside the root among the tasks, the spare files
//! and the approvals), and
//! a factory that is suspended (SIGSTOP/SIGCONT) and killed (`kill -9`,
//! then started again), all at once on one root. At the end:
//!
//! - every task ran exactly once (a ledger each run appends to);
//! - no edit was lost (every edit `sed` made is in a task file);
//! - the factory was alive throughout unless the test killed it;
//! - no agent process is left.
//!
//! A short form runs in CI; `TASKQ_CHAOS_LONG=1` runs the long form (more
//! tasks, more rounds). Each run prints its figures (`chaos: ...`).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::util::{wait_for, Daemon, TestRoot};

struct Form {
    tasks: usize,
    rounds: usize,
    workers: usize,
    edits: usize,
}

fn form() -> Form {
    match std::env::var("TASKQ_CHAOS_LONG").is_ok_and(|v| v != "0") {
        true => Form {
            tasks: 200,
            rounds: 5,
            workers: 3,
            edits: 1500,
        },
        false => Form {
            tasks: 120,
            rounds: 1,
            workers: 2,
            edits: 150,
        },
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

fn start_factory(root: &TestRoot) -> Daemon {
    let mut cmd = root.cmd(&["run"]);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.path().join("factory.log"))
        .unwrap();
    cmd.stdout(Stdio::null()).stderr(log);
    Daemon {
        child: cmd.spawn().expect("taskq run"),
    }
}

/// A tiny deterministic random source (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Saves `path` with `mark` appended the way vim does by default: rename
/// to `path~`, write the new text at `path`, remove the backup. False when
/// the file was gone (moved by taskq meanwhile): then nothing is written.
fn vim_save(path: &std::path::Path, mark: &str) -> bool {
    let backup = path.with_extension("md~");
    if std::fs::rename(path, &backup).is_err() {
        return false;
    }
    let Ok(mut text) = std::fs::read_to_string(&backup) else {
        let _ = std::fs::rename(&backup, path);
        return false;
    };
    text.push_str(mark);
    text.push('\n');
    let ok = std::fs::write(path, text).is_ok();
    let _ = std::fs::remove_file(&backup);
    ok
}

/// Copies the root of a failed round aside (see `TASKQ_CHAOS_KEEP`).
struct Keep(Option<std::path::PathBuf>);

impl Drop for Keep {
    fn drop(&mut self) {
        if let (true, Some(dir)) = (std::thread::panicking(), &self.0) {
            let to = std::env::temp_dir().join(format!("taskq-chaos-kept-{}", std::process::id()));
            let ok = Command::new("cp").arg("-a").arg(dir).arg(&to).status();
            eprintln!("kept: {} ({ok:?})", to.display());
        }
    }
}

fn one_round(f: &Form, seed: u64) -> (usize, usize, usize, usize, usize) {
    let root = TestRoot::new();
    // TASKQ_CHAOS_KEEP=1 keeps the root of a failed round to look into.
    let keep = Keep(std::env::var_os("TASKQ_CHAOS_KEEP").map(|_| root.path().to_path_buf()));
    root.factory("heartbeat: 500ms\n");
    let config = root.read("agents/factory/config.yaml");
    root.write(
        "agents/factory/config.yaml",
        config
            .replace("max_concurrent: 3\n", "max_concurrent: 4\n")
            .replace("heartbeat: 2s\n", ""),
    );
    root.shell_role(4);
    let ledger = root.path().join("ledger.txt");
    for k in 1..=f.tasks {
        root.write(
            &format!("tasks/todo/TASK-{k:03}.md"),
            format!(
                "---\nid: TASK-{k:03}\ntags: [job]\n---\n# Job {k}\n\n```sh\necho TASK-{k:03} >> {}\n```\n",
                ledger.display()
            ),
        );
    }
    root.write("agents/factory/last-task-id", format!("{}\n", f.tasks));
    // Hostile files: a FIFO named like a task, links leading outside the
    // root where taskq reads tasks and keeps spare files and approvals.
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    std::fs::write(&precious, "keep me\n").unwrap();
    assert!(Command::new("mkfifo")
        .arg(root.path().join("tasks/todo/fifo.md"))
        .status()
        .unwrap()
        .success());
    let link = |rel: &str| {
        let p = root.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&precious, p).unwrap();
    };
    link("tasks/todo/link.md");
    link("agents/factory/.spare/7");
    link("approvals/pending/TASK-999.md");
    let stop = Arc::new(AtomicBool::new(false));
    // Claims a script made that the editor then undid: `sed -i` read the
    // file before the claim and saved it after (a blind overwrite no tool
    // can see; taskq cannot tell it from `taskq release`). The script's
    // `done` then finds the task already done by the factory.
    let undone: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut factory = start_factory(&root);
    root.wait_factory_started();
    // Scripts: claim, "run" (the ledger), finish.
    let workers: Vec<_> = (0..f.workers)
        .map(|w| {
            let dir = root.path().to_path_buf();
            let ledger = ledger.clone();
            let stop = Arc::clone(&stop);
            let undone = Arc::clone(&undone);
            let bin = crate::util::taskq_bin();
            std::thread::spawn(move || {
                let run = |args: &[&str]| {
                    Command::new(&bin)
                        .args(args)
                        .current_dir(&dir)
                        .env_remove("TASKQ_ROOT")
                        .stdin(Stdio::null())
                        .output()
                        .expect("taskq")
                };
                while !stop.load(Ordering::Relaxed) {
                    let out = run(&["next", "--claim", &format!("w{w}")]);
                    if out.status.code() != Some(0) {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    use std::io::Write;
                    let mut l = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&ledger)
                        .unwrap();
                    writeln!(l, "{id}").unwrap();
                    drop(l);
                    // `done` retries its compare-and-swap itself; a conflict
                    // that remains is a failure of the suite.
                    // A script retries a `done` that finds no task: an
                    // editor may be in the middle of saving it (vim moves
                    // the file aside for a moment).
                    let mut done = run(&["done", &id]);
                    for _ in 0..100 {
                        let err = String::from_utf8_lossy(&done.stderr);
                        if done.status.code() == Some(0) || err.contains("is already done") {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                        done = run(&["done", &id]);
                    }
                    let err = String::from_utf8_lossy(&done.stderr);
                    if done.status.code() == Some(3) && err.contains("is already done") {
                        undone.lock().unwrap().push(id.clone());
                    } else if done.status.code() != Some(0) {
                        eprintln!(
                            "chaos: `taskq done {id}` exited {:?}: {}",
                            done.status.code(),
                            String::from_utf8_lossy(&done.stderr)
                        );
                    }
                }
            })
        })
        .collect();
    // The editor: `sed -i` appends a line to a random task's body.
    let edits: Arc<Mutex<Vec<String>>> = Arc::default();
    let editor = {
        let dir = root.path().to_path_buf();
        let edits = Arc::clone(&edits);
        let n = f.edits;
        let tasks = f.tasks;
        std::thread::spawn(move || {
            let mut rng = Rng(seed | 1);
            for e in 0..n {
                let k = 1 + rng.below(tasks);
                let path = dir.join(format!("tasks/todo/TASK-{k:03}.md"));
                if !path.exists() {
                    continue;
                }
                let mark = format!("edit-{e}-of-TASK-{k:03}");
                let ok = match e % 3 {
                    // vim's way (`backupcopy=auto`): the file moves to a
                    // backup name, the new text is written at its name,
                    // the backup goes. For a moment the task is not there.
                    2 => vim_save(&path, &mark),
                    _ => Command::new("sed")
                        .arg("-i")
                        .arg(format!("$a {mark}"))
                        .arg(&path)
                        .stderr(Stdio::null())
                        .status()
                        .is_ok_and(|s| s.success()),
                };
                if ok {
                    edits.lock().unwrap().push(mark);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    // The factory: suspended for a while, then killed and started again.
    std::thread::sleep(Duration::from_millis(300));
    signal(factory.child.id(), libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(400));
    signal(factory.child.id(), libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        factory.child.try_wait().unwrap().is_none(),
        "the factory died"
    );
    signal(factory.child.id(), libc::SIGKILL);
    let _ = factory.child.wait();
    factory = start_factory(&root);
    editor.join().unwrap();
    let all_done = || {
        (1..=f.tasks).all(|k| {
            root.path()
                .join(format!("tasks/done/TASK-{k:03}.md"))
                .exists()
        })
    };
    let deadline = Instant::now() + Duration::from_secs(240);
    while !all_done() && factory.child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let list = root.taskq(&["list"]).stdout;
            let open: Vec<String> = list
                .lines()
                .filter(|l| !l.contains(" done "))
                .map(str::to_string)
                .collect();
            stop.store(true, Ordering::Relaxed);
            panic!("not every task got done: {open:#?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        factory.child.try_wait().unwrap().is_none(),
        "the factory died"
    );
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let run = factory.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Every task ran exactly once.
    let text = std::fs::read_to_string(&ledger).unwrap_or_default();
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for id in text.lines() {
        *runs.entry(id).or_default() += 1;
    }
    let undone = undone.lock().unwrap();
    let doubles: Vec<&&str> = runs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    // A double run is allowed only where the editor undid a claim.
    let unexplained: Vec<&&&str> = doubles
        .iter()
        .filter(|id| !undone.iter().any(|u| u == **id))
        .collect();
    let missing = (1..=f.tasks)
        .filter(|k| !runs.contains_key(format!("TASK-{k:03}").as_str()))
        .count();
    // No edit lost: each is in some task file.
    let mut files = String::new();
    for dir in ["tasks/todo", "tasks/done"] {
        for e in std::fs::read_dir(root.path().join(dir)).unwrap().flatten() {
            // Regular files only: not the FIFO nor the links planted above.
            if e.file_type().is_ok_and(|t| t.is_file()) {
                files.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    let edits = edits.lock().unwrap();
    let lost: Vec<&String> = edits
        .iter()
        .filter(|m| !files.contains(m.as_str()))
        .collect();
    // No agent process left.
    for a in root.agents() {
        if let Some(pid) = a["pid"].as_u64() {
            let pid = pid as u32;
            wait_for("agent processes gone", Duration::from_secs(10), || {
                !crate::util::pid_alive(pid)
            });
        }
    }
    assert_eq!(
        std::fs::read_to_string(&precious).unwrap(),
        "keep me\n",
        "a file outside the root was written through a link"
    );
    assert_eq!(missing, 0, "tasks never run: {runs:?}");
    assert!(
        unexplained.is_empty(),
        "tasks run twice: {unexplained:?} (claims the editor undid: {undone:?})"
    );
    assert!(lost.is_empty(), "lost edits: {lost:?}");
    drop(keep);
    (
        f.tasks,
        doubles.len(),
        lost.len(),
        undone.len(),
        edits.len(),
    )
}

#[test]
fn exactly_once_and_nothing_lost_under_chaos() {
    let f = form();
    let start = Instant::now();
    let (mut tasks, mut doubles, mut lost, mut undone, mut edits) = (0, 0, 0, 0, 0);
    for round in 0..f.rounds {
        let (t, d, l, u, e) = one_round(&f, 0x9e37_79b9 + round as u64);
        tasks += t;
        doubles += d;
        lost += l;
        undone += u;
        edits += e;
    }
    eprintln!(
        "chaos: {} run(s) x {} tasks, {} workers, {} edits tried each ({edits} made): {doubles} double runs ({undone} claims undone by the editor's blind overwrite), {lost} lost edits ({tasks} tasks in {:.1} s)",
        f.rounds,
        f.tasks,
        f.workers,
        f.edits,
        start.elapsed().as_secs_f64()
    );
}
