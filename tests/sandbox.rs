//! The agents' sandbox (Landlock) through the binary: a shell agent that
//! attacks the gates is refused by the kernel, the refusals are in its
//! log, and nothing it aimed at changed; a role whose workspace is the
//! root still writes the root but not taskq's folders; `status` names
//! each running agent's sandbox, and `sandbox: off` loudly.

use crate::util::{wait_for, TestRoot, LONG};

/// Whether this kernel runs Landlock (the tests that need it say SKIPPED
/// otherwise).
fn landlock() -> bool {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION only returns the version.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    if abi <= 0 {
        eprintln!("SKIPPED: this kernel has no Landlock");
    }
    abi > 0
}

/// What the attacker tries, each followed by a word the test looks for.
const ATTACKS: &str = r##"
R="$TASKQ_ROOT"
echo x > "$R/tasks/todo/x.md" && echo BROKE-tasks || echo REFUSED-tasks
i=0; while [ ! -f "$R/approvals/pending/TASK-002.md" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
mv "$R/approvals/pending/TASK-002.md" "$R/approvals/approved/" && echo BROKE-approval || echo REFUSED-approval
echo "# edited" >> "$R/agents/templates/attacker.md" && echo BROKE-template || echo REFUSED-template
echo 'echo pwned' > "$R/agents/hooks/on-spawn" && echo BROKE-hook || echo REFUSED-hook
cat "/proc/$(cat "$R/agents/factory/run.lock" | tr -dc 0-9)/environ" && echo BROKE-environ || echo REFUSED-environ
echo mine > own.txt && echo WROTE-workspace
"##;

/// Every attack of a shell agent is refused by the kernel (EACCES/EPERM
/// in its log); the gate stays closed, the other task and the files stay
/// as they were; its own workspace is writable.
#[test]
fn a_sandboxed_agent_cannot_open_the_gates_nor_read_the_factory() {
    if !landlock() {
        return;
    }
    let root = TestRoot::new();
    root.factory("");
    root.write(
        "agents/templates/attacker.md",
        "---\nprefix: ATK\nagent: shell\nmax_concurrent: 2\nenv: [PATH, HOME]\n---\n",
    );
    let template = root.read("agents/templates/attacker.md");
    std::fs::create_dir_all(root.path().join("agents/hooks")).unwrap();
    root.write_task(
        "attack",
        "id: TASK-001\nrole: attacker",
        &format!("```sh{ATTACKS}```"),
    );
    root.write_task(
        "gated",
        "id: TASK-002\nrole: attacker\napproval: required",
        "```sh\necho should not run\n```",
    );
    let daemon = root.daemon(&[], &[("TASKQ_SECRET_FOR_TEST", "s3cr3t")]);
    wait_for("the attacker to finish", LONG, || {
        root.show("TASK-001")["status"] == "done"
    });
    let run = daemon.wait_after_term();
    assert!(
        run.stderr.contains("agents sandboxed by landlock abi"),
        "{}",
        run.stderr
    );
    let log = root.read("agents/logs/ATK-001.log");
    for what in ["tasks", "approval", "template", "hook", "environ"] {
        assert!(log.contains(&format!("REFUSED-{what}")), "{what}: {log}");
        assert!(!log.contains(&format!("BROKE-{what}")), "{what}: {log}");
    }
    assert!(log.contains("Permission denied"), "{log}");
    assert!(!log.contains("s3cr3t"), "{log}");
    assert!(log.contains("WROTE-workspace"), "{log}");
    assert_eq!(
        root.read("agents/workspaces/ATK-001/own.txt"),
        "mine\n",
        "the workspace is the agent's"
    );
    // Nothing it aimed at changed.
    assert!(!root.path().join("tasks/todo/x.md").exists());
    assert!(root.path().join("approvals/pending/TASK-002.md").is_file());
    assert!(!root.path().join("approvals/approved/TASK-002.md").exists());
    assert_eq!(root.read("agents/templates/attacker.md"), template);
    assert!(!root.path().join("agents/hooks/on-spawn").exists());
    assert_eq!(
        root.show("TASK-002")["status"],
        "ready",
        "the gate is closed"
    );
    let agents = root.agents();
    assert_eq!(agents.len(), 1, "TASK-002 never ran: {agents:?}");
    assert!(
        agents[0]["sandbox"]
            .as_str()
            .is_some_and(|s| s.starts_with("landlock abi ")),
        "{agents:?}"
    );
}

/// A role whose workspace is the root itself (the quick start's) writes
/// anywhere in the root, new top-level files too, but taskq's folders are
/// read-only to it.
#[test]
fn a_root_workspace_agent_writes_the_root_but_not_taskq_folders() {
    if !landlock() {
        return;
    }
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    root.write_task(
        "job",
        "id: TASK-001\ntags: [job]",
        "```sh\nmkdir -p scratch && echo hi > scratch/new.txt && echo top > top.txt\necho x > tasks/todo/x.md && echo BROKE-tasks || echo REFUSED-tasks\nmv tasks/todo/*.md approvals/approved/ && echo BROKE-approval || echo REFUSED-approval\necho x > agents/templates/job.md && echo BROKE-template || echo REFUSED-template\n```",
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let log = root.read("agents/logs/JOB-001.log");
    for what in ["tasks", "approval", "template"] {
        assert!(log.contains(&format!("REFUSED-{what}")), "{what}: {log}");
    }
    assert!(log.contains("Read-only file system"), "{log}");
    assert_eq!(root.read("scratch/new.txt"), "hi\n");
    assert_eq!(root.read("top.txt"), "top\n");
    assert!(!root.path().join("tasks/todo/x.md").exists());
    assert_eq!(root.show("TASK-001")["status"], "done");
    assert_eq!(
        root.agents()[0]["sandbox"],
        "landlock abi ".to_string() + &abi_of(&root.agents()[0]) + " + mount ns"
    );
}

fn abi_of(agent: &serde_json::Value) -> String {
    agent["sandbox"]
        .as_str()
        .and_then(|s| s.strip_prefix("landlock abi "))
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?")
        .to_string()
}

/// `status` and `status --json` name each running agent's sandbox; a role
/// with `sandbox: off` is said loudly, and its agent runs unconfined.
#[test]
fn status_shows_each_running_agents_sandbox_and_off_loudly() {
    let root = TestRoot::new();
    root.factory("");
    let wait = "```sh\nwhile [ ! -f \"$TASKQ_ROOT/scratch/go\" ]; do sleep 0.05; done\n```";
    root.write(
        "agents/templates/boxed.md",
        "---\nprefix: BOX\nagent: shell\nenv: [PATH, HOME]\n---\n",
    );
    root.write(
        "agents/templates/open.md",
        "---\nprefix: OPN\nagent: shell\nenv: [PATH, HOME]\nsandbox: off\n---\n",
    );
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    root.write_task("a", "id: TASK-001\nrole: boxed", wait);
    root.write_task(
        "b",
        "id: TASK-002\nrole: open",
        &format!("{wait}\n\n```sh\necho x > \"$TASKQ_ROOT/scratch/unconfined\"\n```"),
    );
    let daemon = root.daemon(&[], &[]);
    wait_for("both agents to run", LONG, || {
        root.agents()
            .iter()
            .filter(|a| a["status"] == "active")
            .count()
            == 2
    });
    let text = root.taskq(&["status"]).ok().stdout;
    let boxed = text.lines().find(|l| l.contains("BOX-001")).unwrap();
    let open = text.lines().find(|l| l.contains("OPN-002")).unwrap();
    assert!(open.contains("UNSANDBOXED (sandbox: off)"), "{text}");
    let json = root.taskq(&["--json", "status"]).ok().json();
    let active = json["active"].as_array().unwrap();
    let of = |id: &str| {
        active.iter().find(|a| a["id"] == id).unwrap()["sandbox"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(of("OPN-002"), "off (sandbox: off)");
    match landlock() {
        true => {
            assert!(boxed.contains("sandbox: landlock abi "), "{text}");
            assert!(of("BOX-001").starts_with("landlock abi "));
        }
        false => assert!(boxed.contains("UNSANDBOXED"), "{text}"),
    }
    root.write("scratch/go", "");
    wait_for("both tasks to be done", LONG, || {
        root.show("TASK-001")["status"] == "done" && root.show("TASK-002")["status"] == "done"
    });
    let run = daemon.wait_after_term();
    if landlock() {
        assert!(
            run.stderr.contains("UNSANDBOXED (sandbox: off): open"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(root.read("scratch/unconfined"), "x\n");
}
