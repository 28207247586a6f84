//! A newcomer's first hour with the factory: tasks that can never run are
//! named (by `check`, `run --dry-run`, `why` and the factory, once), a
//! missing agent program fails the task at once, and `run --until-idle`
//! ends by naming what can never run, with exit 1.

use crate::util::TestRoot;

fn task(root: &TestRoot, name: &str, header: &str) {
    root.write(
        &format!("tasks/todo/{name}.md"),
        format!("---\n{header}\n---\nx\n"),
    );
}

#[test]
fn an_unknown_role_is_named_everywhere_and_the_run_ends_with_it() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(2);
    task(&root, "ok", "id: TASK-001\ntags: [job]");
    root.write(
        "tasks/todo/ok.md",
        "---\nid: TASK-001\ntags: [job]\n---\n```sh\ntrue\n```\n",
    );
    task(&root, "lost", "id: TASK-002\ntitle: Lost\nrole: nope");
    root.write("agents/factory/last-task-id", "2\n");
    let check = root.taskq(&["check"]).code(1);
    assert!(
        check
            .stdout
            .contains("tasks/todo/lost.md:4: `TASK-002` has role `nope`, which has no template"),
        "{}",
        check.stdout
    );
    let plan = root.taskq(&["run", "--dry-run"]).ok();
    assert!(
        plan.stdout.contains("TASK-002  never  no role `nope`"),
        "{}",
        plan.stdout
    );
    let why = root.taskq(&["why", "TASK-002"]).ok();
    assert!(
        why.stdout
            .contains("can never run as things are: no role `nope`"),
        "{}",
        why.stdout
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    // Said once while it lasts, then in the last line.
    assert_eq!(
        run.stderr
            .matches("warning: TASK-002 can never run: no role `nope`")
            .count(),
        1,
        "{}",
        run.stderr
    );
    let last = run.stderr.trim_end().lines().last().unwrap();
    assert_eq!(
        last.split_once(' ').unwrap().1,
        "1 task can never run as things are: TASK-002 (no role `nope` (agents/templates/nope.md))",
        "{}",
        run.stderr
    );
    // The rest ran.
    assert!(root.path().join("tasks/done/ok.md").exists());
}

#[test]
fn a_missing_program_fails_the_task_at_once_without_retries() {
    let root = TestRoot::new();
    root.factory("");
    let config = root.read("agents/factory/config.yaml");
    let missing = root.path().join("no-such-cli");
    let config = config
        .lines()
        .map(|l| match l.trim_start().starts_with("claude:") {
            true => format!("  claude: {}", missing.display()),
            false => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    root.write("agents/factory/config.yaml", config + "\n");
    root.role("builder", "prefix: BLD\nmodel: m\ntags: [b]\nretries: 3");
    task(&root, "a", "id: TASK-001\ntags: [b]");
    root.write("agents/factory/last-task-id", "1\n");
    let check = root.taskq(&["check"]).ok();
    assert!(
        check
            .stdout
            .contains("agents/templates/builder.md:2: warning:")
            && check.stdout.contains("is not on the PATH"),
        "{}",
        check.stdout
    );
    let plan = root.taskq(&["run", "--dry-run"]).ok();
    assert!(
        plan.stdout.contains("TASK-001  wait   will fail: `")
            && plan.stdout.contains("is not on the PATH"),
        "{}",
        plan.stdout
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let show = root.taskq(&["--json", "show", "TASK-001"]).ok().json();
    assert_eq!(show["status"], "failed", "{show}");
    assert!(
        show["reason"]
            .as_str()
            .unwrap()
            .contains("is not on the PATH"),
        "{show}"
    );
    // No attempt was retried, and no agent was ever started.
    assert!(root.agents().is_empty(), "{:?}", root.agents());
    assert_eq!(
        run.stderr.matches("refused TASK-001").count(),
        1,
        "{}",
        run.stderr
    );
}

#[test]
fn a_dependency_cycle_is_named_by_why_and_the_factory() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    task(
        &root,
        "a",
        "id: TASK-036\ntags: [job]\ndependencies: [TASK-037]",
    );
    task(
        &root,
        "b",
        "id: TASK-037\ntags: [job]\ndependencies: [TASK-036]",
    );
    task(
        &root,
        "c",
        "id: TASK-038\ntags: [job]\ndependencies: [TASK-037]",
    );
    root.write("agents/factory/last-task-id", "38\n");
    let why = root.taskq(&["why", "TASK-036"]).ok();
    assert!(
        why.stdout
            .contains("in a dependency cycle: TASK-036 -> TASK-037 -> TASK-036"),
        "{}",
        why.stdout
    );
    let why = root.taskq(&["why", "TASK-038"]).ok();
    assert!(
        why.stdout
            .contains("waits for TASK-037, which can never run"),
        "{}",
        why.stdout
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "warning: TASK-036 can never run: in a dependency cycle: TASK-036 -> TASK-037 -> TASK-036"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("3 tasks can never run as things are"),
        "{}",
        run.stderr
    );
}
