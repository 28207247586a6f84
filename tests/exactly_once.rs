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
