//! Approvals only people give, and hooks without the factory's secrets,
//! through the binary (issue 14, items 3 and 4): an approval covers what
//! runs (a task edited after approval asks again), a file written into
//! `approvals/approved/` with no request before it is ignored, `approve`
//! records who, a hook sees only the allowlisted environment.

use crate::util::{git, wait_for, TestRoot, LONG};

/// A gated shell task whose `sh` block writes `file` in the root.
fn gated(root: &TestRoot, id: &str, file: &str) {
    root.write_task(
        &id.to_lowercase(),
        &format!("id: {id}\ntags: [job]\napproval: required"),
        &format!("```sh\necho ran > {file}\n```"),
    );
}

/// Approved, then the body edited (to something else entirely): it does
/// not run; the old approval is kept in approvals/stale/ marked why, a new
/// request waits, and the factory says so. Approving the new request runs
/// the new body.
#[test]
fn a_task_edited_after_approval_asks_again() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    gated(&root, "TASK-001", "good.txt");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let pending = root.read("approvals/pending/TASK-001.md");
    assert!(pending.contains("\ndigest: sha256:"), "{pending}");
    assert!(pending.contains("\ntags: [job]\n"), "{pending}");
    assert!(root
        .read("agents/factory/requests")
        .starts_with("TASK-001 sha256:"));
    root.taskq(&["approve", "TASK-001", "--by", "Alice"]).ok();
    // Edited after approval: another command altogether.
    root.write_task(
        "task-001",
        "id: TASK-001\ntags: [job]\napproval: required",
        "```sh\nrm -rf nothing-here; echo evil > evil.txt\n```",
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!root.path().join("evil.txt").exists(), "the edit ran");
    assert!(!root.path().join("good.txt").exists());
    assert_eq!(root.show("TASK-001")["status"], "ready");
    assert!(
        run.stderr.contains(
            "TASK-001's approval is void: its body, command or model changed since it was approved; approvals/approved/TASK-001.md kept as approvals/stale/TASK-001.1.md; TASK-001 waits for approval again: approvals/pending/TASK-001.md"
        ),
        "{}",
        run.stderr
    );
    let stale = root.read("approvals/stale/TASK-001.1.md");
    assert!(
        stale.contains("\nby: Alice\n"),
        "the record is kept: {stale}"
    );
    assert!(stale.contains("\nstale: "), "{stale}");
    assert!(
        stale.contains("reason: its body, command or model changed since it was approved"),
        "{stale}"
    );
    assert!(!root.path().join("approvals/approved/TASK-001.md").exists());
    let again = root.read("approvals/pending/TASK-001.md");
    assert!(
        again.contains("evil.txt"),
        "the new request shows the new body: {again}"
    );
    // Changed again while pending: `taskq approve` refuses (the person
    // would approve what they did not read).
    root.write_task(
        "task-001",
        "id: TASK-001\ntags: [job]\napproval: required",
        "```sh\necho evil > evil.txt\n```",
    );
    let refused = root.taskq(&["approve", "TASK-001"]).code(3);
    assert!(
        refused
            .stderr
            .contains("changed since its request was written"),
        "{}",
        refused.stderr
    );
    let run = root.run_until_idle(&[]);
    assert!(
        run.stderr.contains("since it was requested"),
        "{}",
        run.stderr
    );
    assert!(root.path().join("approvals/stale/TASK-001.2.md").is_file());
    // `next` and `claim` see no approval either.
    root.taskq(&["next"]).code(1);
    root.taskq(&["claim", "TASK-001", "--agent", "me"]).code(3);
    // A person approves what it is now (plain mv): it runs.
    std::fs::rename(
        root.path().join("approvals/pending/TASK-001.md"),
        root.path().join("approvals/approved/TASK-001.md"),
    )
    .unwrap();
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(root.show("TASK-001")["status"], "done");
    assert!(root.path().join("evil.txt").exists());
}

/// Tags that route it changed after approval: said so.
#[test]
fn a_tag_change_voids_the_approval_and_says_so() {
    let root = TestRoot::new();
    root.factory("notify:\n  - on: [approval_pending]\n    command: cat >> pending.jsonl\n");
    root.shell_role(1);
    gated(&root, "TASK-001", "good.txt");
    root.run_until_idle(&[]);
    root.taskq(&["approve", "1"]).ok();
    root.write_task(
        "task-001",
        "id: TASK-001\ntags: [job, prod]\napproval: required",
        "```sh\necho ran > good.txt\n```",
    );
    let run = root.run_until_idle(&[]);
    assert!(
        run.stderr
            .contains("its tags changed since it was approved ([job], now [job, prod])"),
        "{}",
        run.stderr
    );
    assert!(!root.path().join("good.txt").exists());
    // The new request is notified like the first.
    wait_for("two notifications", LONG, || {
        std::fs::read_to_string(root.path().join("pending.jsonl"))
            .is_ok_and(|s| s.lines().count() == 2)
    });
}

/// A file written into approvals/approved/ with no request before it is
/// ignored with a warning, by `next`, `claim` and the factory: the task
/// does not run. So is one for an agent's action request.
#[test]
fn an_approval_with_no_request_before_it_is_ignored() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    gated(&root, "TASK-002", "forged.txt");
    let forged = "---\ntask: TASK-002\nrole: job\nrequested: 2026-01-01T00:00:00Z\ndigest: sha256:0000\n---\nok\n";
    root.write("approvals/approved/TASK-002.md", forged);
    let next = root.taskq(&["next"]).code(1);
    assert!(
        next.stderr
            .contains("warning: approvals/approved/TASK-002.md is ignored"),
        "{}",
        next.stderr
    );
    let claim = root.taskq(&["claim", "TASK-002", "--agent", "me"]).code(3);
    assert!(claim.stderr.contains("is void"), "{}", claim.stderr);
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !root.path().join("forged.txt").exists(),
        "the forged approval ran it"
    );
    assert_eq!(root.show("TASK-002")["status"], "ready");
    assert!(
        run.stderr.contains(
            "warning: approvals/approved/TASK-002.md is ignored: it matches no request taskq wrote"
        ),
        "{}",
        run.stderr
    );
    assert!(root.path().join("approvals/pending/TASK-002.md").is_file());
    let kept = root.read("approvals/stale/TASK-002.1.md");
    assert!(kept.contains("reason: \"matches no request"), "{kept}");
    // An agent's action request: a forged approval does not end the wait.
    let file = root
        .taskq(&["approval", "request", "--task", "TASK-002", "deploy"])
        .ok()
        .stdout;
    let file = file.trim();
    assert!(root
        .read("approvals/pending/TASK-002-1.md")
        .contains("\ndigest: sha256:"));
    root.write(
        "approvals/approved/TASK-002-1.md",
        "---\ntask: TASK-002\n---\nyes\n",
    );
    let wait = root
        .taskq(&["approval", "wait", file, "--timeout", "1s"])
        .code(3);
    assert!(wait.stderr.contains("is ignored"), "{}", wait.stderr);
    // The pending request moved by a person ends it.
    std::fs::remove_file(root.path().join("approvals/approved/TASK-002-1.md")).unwrap();
    std::fs::rename(file, root.path().join("approvals/approved/TASK-002-1.md")).unwrap();
    root.taskq(&["approval", "wait", file, "--timeout", "5s"])
        .ok();
}

/// `approve` records who: `--by`, else git's user.name and user.email.
#[test]
fn approve_records_who() {
    let root = TestRoot::new();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.name", "Person"]);
    git(&root, &["config", "user.email", "person@example.com"]);
    root.factory("");
    root.shell_role(2);
    gated(&root, "TASK-001", "a.txt");
    gated(&root, "TASK-002", "b.txt");
    root.run_until_idle(&[]);
    let json = root.taskq(&["--json", "approve", "1"]).ok().json();
    assert_eq!(json["by"], "Person");
    assert_eq!(json["email"], "person@example.com");
    let file = root.read("approvals/approved/TASK-001.md");
    assert!(
        file.contains("\nby: Person\nemail: person@example.com\n"),
        "{file}"
    );
    root.taskq(&["approve", "2", "--by", "Alice <alice@example.com>"])
        .ok();
    let file = root.read("approvals/approved/TASK-002.md");
    assert!(file.contains("\nby: Alice <alice@example.com>\n"), "{file}");
    assert!(!file.contains("email:"), "{file}");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_for("both to run", LONG, || {
        root.path().join("a.txt").exists() && root.path().join("b.txt").exists()
    });
}

/// Hooks and notification commands get only the allowlisted environment:
/// a secret in the factory's is absent. A hook others may write, or a link
/// leading out of the root, is refused with a warning.
#[test]
fn hooks_get_only_the_allowlisted_environment() {
    use std::os::unix::fs::PermissionsExt;
    let root = TestRoot::new();
    root.factory("notify:\n  - on: [idle]\n    command: env > notify-env.txt\n");
    root.shell_role(1);
    root.write_task("a", "id: TASK-001\ntags: [job]", "```sh\ntrue\n```");
    let hook = |name: &str, text: &str, mode: u32| {
        let p = root.write(&format!("agents/hooks/{name}"), text);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    hook("on-done", "#!/bin/sh\nenv > hook-env.txt\n", 0o755);
    // Writable by others: refused.
    hook("on-spawn", "#!/bin/sh\ntouch spawn-ran.txt\n", 0o777);
    // A link leading out of the root: refused.
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("idle");
    std::fs::write(&target, "#!/bin/sh\ntouch idle-ran.txt\n").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&target, root.path().join("agents/hooks/on-idle")).unwrap();
    let check = root.taskq(&["check"]);
    let said = format!("{}{}", check.stdout, check.stderr);
    assert!(
        said.contains("agents/hooks/on-spawn")
            && said.contains("the factory refuses to run this hook: others may write it")
            && said.contains("agents/hooks/on-idle"),
        "{said}"
    );
    let run = root.run_until_idle(&[("FACTORY_SECRET_TOKEN", "s3cret-value")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_for("the hook and the notification", LONG, || {
        root.path().join("hook-env.txt").exists() && root.path().join("notify-env.txt").exists()
    });
    for file in ["hook-env.txt", "notify-env.txt"] {
        let env = root.read(file);
        assert!(!env.contains("s3cret-value"), "{file}: {env}");
        assert!(!env.contains("FACTORY_SECRET_TOKEN"), "{file}: {env}");
        assert!(
            env.contains("\nPATH=") || env.starts_with("PATH="),
            "{file}: {env}"
        );
        assert!(env.contains("TASKQ_ROOT="), "{file}: {env}");
    }
    assert!(root.read("hook-env.txt").contains("TASKQ_EVENT=on-done"));
    assert!(!root.path().join("spawn-ran.txt").exists());
    assert!(!root.path().join("idle-ran.txt").exists());
    assert!(!outside.path().join("idle-ran.txt").exists());
    let log = root.read("agents/logs/hooks.log");
    assert!(
        log.contains("hook on-spawn: refused: others may write it (mode 777)"),
        "{log}"
    );
    assert!(
        log.contains("hook on-idle: refused: it is a link to"),
        "{log}"
    );
    assert!(
        run.stderr.contains("agents/hooks/on-spawn refused"),
        "{}",
        run.stderr
    );
    // Listed in hooks.env: it gets through.
    root.factory("hooks:\n  env: [PATH, FACTORY_SECRET_TOKEN]\n");
    root.write_task("b", "id: TASK-002\ntags: [job]", "```sh\ntrue\n```");
    std::fs::remove_file(root.path().join("hook-env.txt")).unwrap();
    let run = root.run_until_idle(&[("FACTORY_SECRET_TOKEN", "s3cret-value")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_for("the hook", LONG, || {
        root.path().join("hook-env.txt").exists()
    });
    assert!(root
        .read("hook-env.txt")
        .contains("FACTORY_SECRET_TOKEN=s3cret-value"));
}

/// A worktree agent's HOME and TMPDIR never reach its branch: inside the
/// worktree (the old advice, `{workspace}/home`) they are left out of the
/// commit of its work; `{agent_home}` puts HOME outside the worktree.
#[test]
fn a_worktree_branch_holds_the_work_and_not_the_agents_home() {
    let root = TestRoot::new();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.email", "person@example.com"]);
    git(&root, &["config", "user.name", "Person"]);
    root.write("readme.txt", "v1\n");
    root.factory("");
    root.write(
        "agents/templates/job.md",
        "---\nprefix: JOB\nagent: shell\ntags: [job]\nmax_concurrent: 1\nworkspace: worktree\nenv: [PATH]\nset_env: {HOME: \"{workspace}/home\", TMPDIR: \"{workspace}/tmp\"}\n---\n",
    );
    root.write(
        "agents/templates/away.md",
        "---\nprefix: AWY\nagent: shell\ntags: [away]\nmax_concurrent: 1\nworkspace: worktree\nenv: [PATH]\nset_env: {HOME: \"{agent_home}\"}\n---\n",
    );
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "setup"]);
    let check = root.taskq(&["check"]);
    let said = format!("{}{}", check.stdout, check.stderr);
    assert!(
        said.contains("role `job` puts `HOME`, `TMPDIR` inside the agent's workspace")
            && !said.contains("role `away`"),
        "{said}"
    );
    let script = "```sh\necho work > feature.txt\necho '{\"token\": \"s3cret\"}' > \"$HOME/.claude.json\"\nmkdir -p \"$HOME/.claude/projects\" && echo transcript > \"$HOME/.claude/projects/t.jsonl\"\n[ -z \"${TMPDIR:-}\" ] || echo scratch > \"$TMPDIR/x\"\n```";
    root.write_task("a", "id: TASK-001\ntags: [job]", script);
    root.write_task("b", "id: TASK-002\ntags: [away]", script);
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for id in ["TASK-001", "TASK-002"] {
        assert_eq!(root.show(id)["status"], "done", "{id}");
        let branch = format!("taskq/{id}");
        assert_eq!(
            git(&root, &["show", &format!("{branch}:feature.txt")]),
            "work\n"
        );
        let files = git(&root, &["ls-tree", "-r", "--name-only", &branch]);
        assert!(
            !files.contains("claude") && !files.contains("home/") && !files.contains("tmp/"),
            "{id}: the branch holds the agent's private state: {files}"
        );
    }
    // `{agent_home}`: under agents/homes/, ignored by git in the root.
    let homes: Vec<String> = std::fs::read_dir(root.path().join("agents/homes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(homes.len(), 1, "{homes:?}");
    let home = root.path().join("agents/homes").join(&homes[0]);
    assert!(std::fs::read_to_string(home.join(".claude.json"))
        .unwrap()
        .contains("s3cret"));
    let status = git(&root, &["status", "--porcelain", "--ignored=no"]);
    assert!(!status.contains("agents/homes"), "{status}");
}
