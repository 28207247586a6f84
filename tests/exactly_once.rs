//! Exactly once and nothing lost, whoever touches the files: the human
//! gates hold for scripts as they do for the factory.

use crate::util::TestRoot;

#[test]
fn scripts_cannot_pass_a_human_gate() {
    let root = TestRoot::new();
    root.write(
        "agents/templates/gated.md",
        "---\nprefix: GAT\nagent: shell\ntags: [g]\napproval: required\n---\n",
    );
    let a = root.add(&["Deploy", "--tag", "g"]);
    let b = root.add(&["Field gate"]);
    // `approval: required` on the task itself.
    let file = root.task_file(&b);
    let text = root.read(&file);
    root.write(
        &file,
        text.replacen("---\n", "---\napproval: required\n", 1),
    );
    // Neither is handed out, and a direct claim, done or fail is refused.
    root.taskq(&["next"]).code(1);
    root.taskq(&["next", "--claim", "w1"]).code(1);
    for (cmd, extra) in [
        ("claim", vec!["--agent", "w1"]),
        ("done", vec![]),
        ("fail", vec!["--reason", "x"]),
    ] {
        let mut args = vec![cmd, a.as_str()];
        args.extend(extra.iter().copied());
        let run = root.taskq(&args).code(3);
        assert!(
            run.stderr.contains(&format!(
                "`{a}` needs a person's approval: approvals/pending/{a}.md is not written yet"
            )),
            "{cmd}: {}",
            run.stderr
        );
    }
    // A pending request is named as such.
    root.write(&format!("approvals/pending/{a}.md"), "---\ntask: x\n---\n");
    let run = root.taskq(&["done", &a]).code(3);
    assert!(
        run.stderr
            .contains(&format!("waits for approval: approvals/pending/{a}.md")),
        "{}",
        run.stderr
    );
    let run = root.taskq(&["claim", &b, "--agent", "w1"]).code(3);
    assert!(
        run.stderr.contains("needs a person's approval"),
        "{}",
        run.stderr
    );
    // Approved: handed out.
    root.taskq(&["approve", &a]).ok();
    assert_eq!(root.taskq(&["next", "--claim", "w1"]).ok().stdout.trim(), a);
    root.taskq(&["done", &a]).ok();
    // Rejected: refused too.
    root.write(
        &format!("approvals/rejected/{b}.md"),
        "---\ntask: x\nreason: no\n---\n",
    );
    let run = root.taskq(&["claim", &b, "--agent", "w1"]).code(3);
    assert!(
        run.stderr.contains("its approval was rejected"),
        "{}",
        run.stderr
    );
    root.taskq(&["next"]).code(1);
}

#[test]
fn a_task_in_review_is_for_its_tester() {
    let root = TestRoot::new();
    let a = root.add(&["Built"]);
    let file = root.task_file(&a);
    let text = root.read(&file);
    root.write(
        &file,
        text.replace(
            "status: ready",
            "status: review\nreview_role: tester\nbuilder: BLD-001",
        ),
    );
    root.taskq(&["next"]).code(1);
    for args in [vec!["done", &a], vec!["fail", &a, "--reason", "x"]] {
        let run = root.taskq(&args).code(3);
        assert!(
            run.stderr.contains(&format!(
                "`{a}` is in review: its tester (`tester`) decides"
            )),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn ids_never_repeat_when_counters_are_set_back() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    let a = root.add(&["First", "--tag", "job", "--body", "```sh\necho one\n```"]);
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let first: Vec<String> = root
        .agents()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(first.len(), 1);
    // The registry set back (as a `git checkout` of an old one would).
    std::fs::remove_file(root.path().join("agents/factory/registry.json")).unwrap();
    root.add(&["Second", "--tag", "job", "--body", "```sh\necho two\n```"]);
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let second: Vec<String> = root
        .agents()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(second.len(), 1);
    assert_ne!(second[0], first[0], "an agent id was used twice");
    // The task id counter set back, the task gone: its result remains.
    std::fs::remove_file(root.path().join(format!(
        "tasks/done/{}",
        root.task_file(&a).rsplit('/').next().unwrap()
    )))
    .ok();
    root.write("agents/results/TASK-007.md", "a result\n");
    root.write("agents/factory/last-task-id", "0\n");
    let c = root.add(&["Third"]);
    assert_eq!(c, "TASK-008");
}

/// An editor that saves an old copy of a task over the factory's claim
/// (it read the file before the claim, wrote it after) makes the file
/// say `ready` while the factory's agent runs it: scripts still cannot
/// claim it (`claim` exits 3 naming the agent, `next --claim` passes it
/// by), and when the agent ends the task is done, once.
#[test]
fn a_claim_an_editor_saved_over_still_keeps_scripts_off_the_task() {
    use crate::util::{wait_for, LONG};
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    let before = root.write_task(
        "a",
        "id: TASK-001\ntags: [job]",
        "```sh\necho run >> scratch/runs\nwhile [ ! -f scratch/go ]; do sleep 0.02; done\n```",
    );
    let old = std::fs::read_to_string(&before).unwrap();
    let daemon = root.daemon(&[], &[]);
    wait_for("the agent to run", LONG, || {
        root.path().join("scratch/runs").exists()
    });
    // The editor's blind save of the copy it read before the claim.
    let tmp = root.path().join("tasks/todo/.a.md.swp");
    std::fs::write(&tmp, &old).unwrap();
    std::fs::rename(&tmp, &before).unwrap();
    let run = root.taskq(&["claim", "TASK-001", "--agent", "w"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("factory's agent `JOB-001`"),
        "{}",
        run.stderr
    );
    root.taskq(&["next", "--claim", "w"]).code(1);
    root.write("scratch/go", "");
    wait_for("TASK-001 done", LONG, || {
        root.show("TASK-001")["status"] == "done"
    });
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(root.read("scratch/runs"), "run\n", "ran once");
}
