//! Exactly-once claims across processes, and the claim/lease rules.

use std::collections::HashMap;
use std::sync::Arc;

use crate::util::TestRoot;

/// 8 processes each loop on `taskq next --claim` over 500 ready tasks:
/// every task is claimed exactly once and none is lost.
#[test]
fn eight_processes_claim_500_tasks_exactly_once() {
    let root = Arc::new(TestRoot::empty());
    for n in 1..=500 {
        root.write(
            &format!("tasks/todo/TASK-{n:03}.md"),
            format!("---\nid: TASK-{n:03}\nstatus: ready\npriority: medium\n---\nbody {n}\n"),
        );
    }
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let root = Arc::clone(&root);
            std::thread::spawn(move || {
                let agent = format!("W-{w}");
                let mut claimed = Vec::new();
                loop {
                    let run = root.taskq(&["-q", "next", "--claim", &agent]);
                    match run.code {
                        0 => claimed.push(run.stdout.trim().to_string()),
                        1 => break,
                        _ => panic!("worker {w}: unexpected exit {}: {}", run.code, run.stderr),
                    }
                }
                (agent, claimed)
            })
        })
        .collect();
    let mut owner: HashMap<String, String> = HashMap::new();
    for w in workers {
        let (agent, claimed) = w.join().unwrap();
        for id in claimed {
            if let Some(prev) = owner.insert(id.clone(), agent.clone()) {
                panic!("{id} claimed twice: by {prev} and {agent}");
            }
        }
    }
    assert_eq!(owner.len(), 500, "every task claimed once");
    // The files agree with what the workers were told.
    let list = root.taskq(&["--json", "list"]).ok().json();
    let tasks = list.as_array().unwrap();
    assert_eq!(tasks.len(), 500);
    for t in tasks {
        let id = t["id"].as_str().unwrap();
        assert_eq!(t["status"], "running", "{id}");
        assert_eq!(
            t["assigned"].as_str(),
            owner.get(id).map(String::as_str),
            "{id}"
        );
    }
    // No temp file left behind.
    let stray: Vec<_> = std::fs::read_dir(root.path().join("tasks/todo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[test]
fn claiming_a_claimed_or_blocked_task_exits_3_and_changes_nothing() {
    let root = TestRoot::new();
    let a = root.add(&["A"]);
    let b = root.add(&["B", "--deps", &a]);
    root.taskq(&["claim", &a, "--agent", "one"]).ok();
    let before = root.read_bytes(&root.task_file(&a));
    let run = root.taskq(&["claim", &a, "--agent", "two"]).code(3);
    assert!(
        run.stderr.contains("already claimed by `one`"),
        "{}",
        run.stderr
    );
    assert_eq!(root.read_bytes(&root.task_file(&a)), before);
    let run = root.taskq(&["claim", &b, "--agent", "two"]).code(3);
    assert!(
        run.stderr.contains(&format!("waits for {a}")),
        "{}",
        run.stderr
    );
    // Nothing else is ready: next exits 1 with no output.
    let run = root.taskq(&["next"]).code(1);
    assert_eq!(run.stdout, "");
    root.taskq(&["done", &a]).ok();
    assert_eq!(root.taskq(&["next"]).ok().stdout.trim(), b);
}

#[test]
fn an_expired_lease_returns_the_task_to_ready() {
    let root = TestRoot::new();
    let a = root.add(&["A"]);
    root.taskq_at(
        "2026-03-01T10:00:00Z",
        &["next", "--claim", "crashy", "--lease", "10m"],
    )
    .ok();
    let file = root.task_file(&a);
    assert!(root
        .read(&file)
        .contains("lease_expires: 2026-03-01T10:10:00Z"));
    // Before expiry: still claimed. After: `next` (read-only) already sees
    // it as ready, and a writing command returns it to ready for real.
    assert_eq!(root.taskq_at("2026-03-01T10:05:00Z", &["next"]).code, 1);
    root.taskq_at(
        "2026-03-01T10:05:00Z",
        &["renew", &a, "--lease", "1h", "--agent", "crashy"],
    )
    .ok();
    assert_eq!(root.taskq_at("2026-03-01T10:30:00Z", &["next"]).code, 1);
    assert_eq!(
        root.taskq_at("2026-03-01T11:06:00Z", &["next"])
            .ok()
            .stdout
            .trim(),
        a
    );
    let before = root.read(&file);
    assert!(
        before.contains("status: running"),
        "read-only next never writes"
    );
    let run = root
        .taskq_at("2026-03-01T11:06:00Z", &["next", "--claim", "second"])
        .ok();
    assert_eq!(run.stdout.trim(), a);
    assert!(
        run.stderr.contains("lease of crashy expired"),
        "{}",
        run.stderr
    );
    let after = root.read(&file);
    assert!(
        after.contains("assigned: second") && !after.contains("crashy"),
        "{after}"
    );
}

#[test]
fn renew_checks_the_owner_and_state() {
    let root = TestRoot::new();
    let a = root.add(&["A"]);
    root.taskq(&["renew", &a]).code(3);
    root.taskq(&["claim", &a, "--agent", "me", "--lease", "5m"])
        .ok();
    let run = root.taskq(&["renew", &a, "--agent", "you"]).code(3);
    assert!(run.stderr.contains("claimed by `me`"), "{}", run.stderr);
    root.taskq(&["renew", &a, "--agent", "me", "--lease", "1h"])
        .ok();
    root.taskq(&["claim", &a, "--agent", "x", "--lease", "soon"])
        .code(2);
}
