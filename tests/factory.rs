//! The factory through the real binary: real files, real child processes
//! (the fake agent standing in for `claude -p`), real signals. Every test
//! waits on conditions, never on sleeps, and its `Daemon` guard kills every
//! process group it started.

use std::time::Duration;

use serde_json::json;

use crate::util::{fake_agent_overlap, pid_alive, wait_for, FakeAgentOverlap, TestRoot, LONG};

/// A file dropped into tasks/todo while the factory runs is adopted,
/// spawned with the exact claude flags, and done; the registry and the
/// task record the run.
#[test]
fn a_dropped_file_is_spawned_and_done() {
    let root = TestRoot::new();
    root.factory("");
    root.role("fake", "prefix: FAK\nmodel: fake-model-a\ntags: [fake]\nmax_concurrent: 2\nmax_turns: 7\npermission_mode: acceptEdits");
    let daemon = root.daemon(
        &[],
        &[
            ("FAKE_AGENT_WRITE", "out.txt"),
            ("FAKE_AGENT_RESULT", "Wrote out.txt.\nDetails follow."),
            ("FAKE_AGENT_COST", "0.25"),
            ("FAKE_AGENT_STDIN_CHECK", "1"),
        ],
    );
    root.wait_factory_started();
    root.write(
        "tasks/todo/hello.md",
        "---\ntags: [fake]\n---\n# Say hello\n\nWrite a greeting.\n",
    );
    wait_for("the task to be done", LONG, || {
        std::fs::read_dir(root.path().join("tasks/done"))
            .unwrap()
            .any(|e| e.unwrap().file_name() == "hello.md")
    });
    // The task moves first, the registry entry is finished right after.
    wait_for("the agent to be recorded", LONG, || {
        root.agents()
            .first()
            .is_some_and(|a| a["status"] == "completed")
    });
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "done");
    assert_eq!(t["result"], "Wrote out.txt.");
    assert_eq!(t["assigned"], "FAK-001");
    // The agent's cost is summed into the task file, and `show` reports it.
    assert_eq!(t["cost_usd"], 0.25, "{t}");
    let agents = root.agents();
    assert_eq!(agents.len(), 1);
    let a = &agents[0];
    assert_eq!(a["status"], "completed", "{a}");
    assert_eq!(a["exit_code"], 0);
    assert_eq!(a["cost_usd"], 0.25);
    assert!(a["tokens"]["input"].as_u64().unwrap() > 10, "{a}");
    assert!(
        a["session_id"].as_str().unwrap().len() == 36,
        "taskq chose the session id: {a}"
    );
    // The agent ran in its own workspace, with its output in the log.
    assert!(root
        .path()
        .join("agents/workspaces/FAK-001/out.txt")
        .is_file());
    let log = root.read("agents/logs/FAK-001.log");
    assert!(log.contains("\"type\":\"result\""), "{log}");
    assert!(root
        .read("agents/results/TASK-001.md")
        .starts_with("Wrote out.txt."));
    // The exact command line: the prompt holds the task, the SOUL goes in
    // --append-system-prompt, limits and permissions come from the role.
    let prompt = root.read("agents/logs/FAK-001.prompt.md");
    assert!(prompt.starts_with("You are the fake role."), "{prompt}");
    assert!(
        prompt.contains("# Task TASK-001: Say hello") && prompt.contains("Write a greeting."),
        "{prompt}"
    );
    assert!(log.contains("fake-agent: model fake-model-a"), "{log}");
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("spawned FAK-001 for TASK-001"),
        "{}",
        run.stderr
    );
}

/// Global and per-role limits hold at every instant (the fake agent logs
/// its start and end; the maximum overlap is computed from the log).
#[test]
fn concurrency_limits_are_never_exceeded() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "alpha",
        "prefix: ALP\nmodel: model-alpha\ntags: [a]\nmax_concurrent: 2",
    );
    root.role(
        "beta",
        "prefix: BET\nmodel: model-beta\ntags: [b]\nmax_concurrent: 2",
    );
    for n in 0..6 {
        root.write_task(
            &format!("a{n}"),
            &format!("id: TASK-{:03}\ntags: [a]", n + 1),
            "work",
        );
        root.write_task(
            &format!("b{n}"),
            &format!("id: TASK-{:03}\ntags: [b]", n + 11),
            "work",
        );
    }
    let log = root.path().join("fake.log");
    let run = root.run_until_idle(&[
        ("FAKE_AGENT_DELAY_MS", "150"),
        ("FAKE_AGENT_LOG", log.to_str().unwrap()),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(root.path().join("tasks/done"))
            .unwrap()
            .count(),
        13
    ); // + README
       // Replay the log: +1 at start, -1 at end, per model (role) and overall.
    let text = std::fs::read_to_string(&log).unwrap();
    let FakeAgentOverlap {
        all: max_all,
        per_model: max_per,
    } = fake_agent_overlap(&text);
    assert_eq!(text.lines().filter(|l| l.starts_with("start")).count(), 12);
    assert!(max_all <= 3, "global limit 3 exceeded: {max_all}");
    assert!(
        max_per["model-alpha"] <= 2 && max_per["model-beta"] <= 2,
        "{max_per:?}"
    );
    assert!(max_all >= 2, "agents ran in parallel");
}

/// A timeout stops the whole process group: the agent and the grandchild
/// it started; it is recorded as a timeout.
#[test]
fn a_timeout_kills_the_agent_and_its_grandchildren() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "slow",
        "prefix: SLO\nmodel: m\ntags: [slow]\nmax_concurrent: 1\ntimeout: 1s\nretries: 0",
    );
    root.write_task("t", "id: TASK-001\ntags: [slow]", "sleep");
    let pidfile = root.path().join("grandchild.pid");
    let run = root.run_until_idle(&[
        ("FAKE_AGENT_DELAY_MS", "60000"),
        ("FAKE_AGENT_SPAWN_CHILD", pidfile.to_str().unwrap()),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "failed");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .starts_with("timed out after 1s"),
        "{t}"
    );
    let a = &root.agents()[0];
    assert_eq!(a["status"], "timeout");
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let agent: u32 = a["pid"].as_u64().unwrap() as u32;
    wait_for("the agent and its grandchild to die", LONG, || {
        !pid_alive(grandchild) && !pid_alive(agent)
    });
}

/// A failure is retried with the next fallback model, then the task fails
/// with the reason; one that succeeds on the fallback is done.
#[test]
fn failures_retry_with_fallback_models_then_fail() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "fb",
        "prefix: FB\nmodel: model-a\nfallback_models: [model-b]\ntags: [fb]\nmax_concurrent: 1\nretries: 1",
    );
    root.write_task("t", "id: TASK-001\ntags: [fb]", "x");
    let run = root.run_until_idle(&[("FAKE_AGENT_FAIL_MODELS", "model-a,model-b")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "failed");
    assert_eq!(t["attempts"], 2);
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("model model-b unavailable"),
        "{t}"
    );
    let mut agents = root.agents();
    agents.sort_by_key(|a| a["id"].as_str().unwrap().to_string());
    let models: Vec<&str> = agents
        .iter()
        .map(|a| a["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["model-a", "model-b"]);
    assert!(agents.iter().all(|a| a["status"] == "failed"));

    // Only the first model fails: the retry on the fallback succeeds.
    std::fs::remove_file(root.path().join("tasks/todo/t.md")).unwrap();
    root.write_task("u", "id: TASK-002\ntags: [fb]", "x");
    let run = root.run_until_idle(&[("FAKE_AGENT_FAIL_MODELS", "model-a")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-002");
    assert_eq!(t["status"], "done", "{t}");
    assert_eq!(t["attempts"], 1);
}

/// Claude's traps: an API error with `subtype: success` and exit 0 is a
/// failed attempt; a denied write is a failure with the reason, not a
/// success.
#[test]
fn claude_errors_and_denials_are_failures() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "c",
        "prefix: C\nmodel: m\ntags: [c]\nmax_concurrent: 1\nretries: 0",
    );
    root.write_task("t", "id: TASK-001\ntags: [c]", "x");
    let run = root.run_until_idle(&[("FAKE_AGENT_IS_ERROR", "1"), ("FAKE_AGENT_EXIT", "0")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "failed");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .starts_with("claude reported an error"),
        "{t}"
    );

    root.write_task("u", "id: TASK-002\ntags: [c]", "x");
    let run = root.run_until_idle(&[("FAKE_AGENT_DENY", "out.txt")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t = root.show("TASK-002");
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["reason"], "blocked: permission denied for Write");
}

/// SIGTERM stops every agent and its children, marks them stopped, returns
/// their tasks to ready and exits 0.
#[test]
fn sigterm_stops_every_agent_and_returns_tasks_to_ready() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "slow",
        "prefix: SLO\nmodel: m\ntags: [slow]\nmax_concurrent: 3\ntimeout: 10m",
    );
    for n in 1..=3 {
        root.write_task(
            &format!("t{n}"),
            &format!("id: TASK-00{n}\ntags: [slow]"),
            "x",
        );
    }
    let daemon = root.daemon(
        &[],
        &[
            ("FAKE_AGENT_DELAY_MS", "600000"),
            ("FAKE_AGENT_SPAWN_CHILD", "grandchild.pid"),
        ],
    );
    wait_for("3 active agents with grandchildren", LONG, || {
        let agents = root.agents();
        agents.len() == 3
            && agents.iter().all(|a| a["status"] == "active")
            && (1..=3).all(|n| {
                root.path()
                    .join(format!("agents/workspaces/SLO-00{n}/grandchild.pid"))
                    .is_file()
            })
    });
    let mut pids: Vec<u32> = root
        .agents()
        .iter()
        .map(|a| a["pid"].as_u64().unwrap() as u32)
        .collect();
    for n in 1..=3 {
        pids.push(
            root.read(&format!("agents/workspaces/SLO-00{n}/grandchild.pid"))
                .trim()
                .parse()
                .unwrap(),
        );
    }
    daemon.signal("TERM");
    let run = daemon.wait(LONG);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for pid in &pids {
        assert!(
            !pid_alive(*pid),
            "pid {pid} survived SIGTERM of the factory"
        );
    }
    for a in root.agents() {
        assert_eq!(a["status"], "stopped", "{a}");
    }
    for n in 1..=3 {
        let t = root.show(&format!("TASK-00{n}"));
        assert_eq!(t["status"], "ready", "{t}");
        assert_eq!(t["assigned"], serde_json::Value::Null);
        assert_eq!(t["attempts"], 0, "a stop is not a failed attempt");
    }
}

/// `kill -9` of the factory mid-run, then a restart: every task finishes,
/// agents that were running are adopted, and no task that succeeded runs
/// again.
#[test]
fn kill_9_and_restart_finishes_every_task_exactly_once() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "w",
        "prefix: W\nmodel: m\ntags: [w]\nmax_concurrent: 2\nretries: 2",
    );
    for n in 1..=6 {
        root.write_task(&format!("t{n}"), &format!("id: TASK-00{n}\ntags: [w]"), "x");
    }
    let env = [("FAKE_AGENT_DELAY_MS", "400")];
    let daemon = root.daemon(&[], &env);
    wait_for("two tasks done and two running", LONG, || {
        let agents = root.agents();
        agents.iter().filter(|a| a["status"] == "completed").count() >= 2
            && agents.iter().filter(|a| a["status"] == "active").count() == 2
    });
    daemon.signal("KILL");
    let _ = daemon.wait(LONG);
    // The registry is valid JSON at every instant, crash included.
    let _ = root.registry();
    let run = root.run_until_idle(&env);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("adopted W-") || run.stderr.contains("finished"),
        "{}",
        run.stderr
    );
    let agents = root.agents();
    for n in 1..=6 {
        let id = format!("TASK-00{n}");
        assert_eq!(root.show(&id)["status"], "done", "{id}");
        let completed = agents
            .iter()
            .filter(|a| a["task"] == id.as_str() && a["status"] == "completed")
            .count();
        assert_eq!(completed, 1, "{id} succeeded {completed} times: {agents:?}");
    }
    assert!(
        agents.iter().all(|a| a["status"] == "completed"),
        "none lost: {agents:?}"
    );
}

/// One factory per root: a second one exits 3 naming the first's pid.
#[test]
fn a_second_factory_exits_3_naming_the_first() {
    let root = TestRoot::new();
    root.factory("");
    let daemon = root.daemon(&[], &[]);
    root.wait_factory_started();
    let run = root.taskq(&["run", "--until-idle"]).code(3);
    assert!(
        run.stderr.contains(&format!("pid {}", daemon.child.id())),
        "{}",
        run.stderr
    );
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0);
}

/// `--dry-run` shows who would run what and why the others wait, and
/// changes nothing.
#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "one",
        "prefix: ONE\nmodel: model-one\ntags: [x]\nmax_concurrent: 1",
    );
    root.write_task("a", "id: TASK-001\ntags: [x]\npriority: high", "x");
    root.write_task("b", "id: TASK-002\ntags: [x]", "x");
    root.write_task(
        "c",
        "id: TASK-003\ntags: [x]\ndependencies: [TASK-001]",
        "x",
    );
    root.write_task("d", "id: TASK-004\ntags: [nothing]", "x");
    root.write(
        "tasks/todo/e.md",
        "---\nid: TASK-005\nstatus: redy\n---\nx\n",
    );
    let before = root.read("tasks/todo/a.md");
    let run = root.taskq(&["run", "--dry-run"]).ok();
    // What a real run would skip is said too, at its line.
    assert!(
        run.stderr
            .contains("taskq: warning: tasks/todo/e.md:3: unknown status `redy`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("TASK-001  spawn  one (claude, model-one)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("TASK-002  wait   role one full (1/1)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("TASK-003  wait   waits for TASK-001"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("TASK-004  never  no role: tags [nothing]"),
        "{}",
        run.stdout
    );
    assert_eq!(root.read("tasks/todo/a.md"), before);
    assert!(!root.path().join("agents/factory/registry.json").exists());
    let json = root.taskq(&["--json", "run", "--dry-run"]).ok().json();
    assert_eq!(json["plan"][0]["action"], "spawn");
}

/// `taskq stop` stops one agent (its task back to ready, or cancelled).
#[test]
fn stop_one_agent_returns_or_cancels_its_task() {
    let root = TestRoot::new();
    root.factory("");
    root.role(
        "slow",
        "prefix: SLO\nmodel: m\ntags: [slow]\nmax_concurrent: 2\ntimeout: 10m",
    );
    root.write_task("a", "id: TASK-001\ntags: [slow]", "x");
    root.write_task("b", "id: TASK-002\ntags: [slow]", "x");
    let daemon = root.daemon(&[], &[("FAKE_AGENT_DELAY_MS", "600000")]);
    wait_for("2 active agents", LONG, || {
        root.agents()
            .iter()
            .filter(|a| a["status"] == "active")
            .count()
            == 2
    });
    let agents = root.agents();
    let of = |task: &str| {
        agents.iter().find(|a| a["task"] == task).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a1, a2) = (of("TASK-001"), of("TASK-002"));
    root.taskq(&["stop", &a2, "--cancel"]).ok();
    wait_for("TASK-002 cancelled", LONG, || {
        root.show("TASK-002")["status"] == "cancelled"
    });
    // Stop the other; with the factory still running it is spawned again,
    // so stop the factory first for a stable end state.
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(root.show("TASK-001")["status"], "ready");
    let reg = root.registry();
    assert_eq!(reg["agents"][&a1]["status"], "stopped");
    assert_eq!(reg["agents"][&a2]["status"], "stopped");
    root.taskq(&["stop", &a1]).code(3);
    root.taskq(&["stop", "NOPE-1"]).code(2);
}

/// The shell role needs no model: the bundled example factory runs end to
/// end, dependencies feeding each other's files.
#[test]
fn the_bundled_shell_factory_runs_end_to_end() {
    let root = TestRoot::new();
    for e in std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/shell-factory"
    ))
    .unwrap()
    {
        let e = e.unwrap();
        std::fs::copy(e.path(), root.path().join("tasks/todo").join(e.file_name())).unwrap();
    }
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list = root.taskq(&["--json", "list"]).ok().json();
    for t in list.as_array().unwrap() {
        assert_eq!(t["status"], "done", "{t}");
    }
    assert!(root.path().join("out/report.md").is_file());
    let status = root.taskq(&["--json", "status"]).ok().json();
    assert_eq!(status["queue"]["done"], 5);
}

/// `max_agent_memory_mb`: with no room for a second agent's expected peak,
/// agents run one at a time even though the slots would allow three.
#[test]
fn the_memory_cap_holds_back_new_agents() {
    let root = TestRoot::new();
    root.factory("max_agent_memory_mb: 1\n");
    root.role(
        "fake",
        "prefix: FAK\nmodel: m\ntags: [x]\nmax_concurrent: 3",
    );
    for n in 1..=3 {
        root.write_task(&format!("t{n}"), &format!("id: TASK-00{n}\ntags: [x]"), "x");
    }
    let log = root.path().join("fake.log");
    let run = root.run_until_idle(&[
        ("FAKE_AGENT_DELAY_MS", "300"),
        ("FAKE_AGENT_LOG", log.to_str().unwrap()),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(&log).unwrap();
    let max = fake_agent_overlap(&text).all;
    assert_eq!(max, 1, "one agent at a time under the memory cap:\n{text}");
    assert_eq!(root.agents().len(), 3);
}

/// An agent that printed nothing keeps a log (a link to a shared empty
/// file; its inode goes to the next log), unless a process it left behind
/// still writes to it (here, when the factory ends it after the agent:
/// see tests/orphans.rs): then the log stays its own, and what comes late
/// lands there, never in another agent's log.
#[test]
fn logs_stay_with_their_agents_even_when_a_leftover_process_writes_late() {
    use std::os::unix::fs::MetadataExt;
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    // The escapee leaves the agent's process group (setsid) and writes
    // when the factory ends it, after the agent; the agent waits until it
    // runs.
    root.write_task(
        "a",
        "id: TASK-001\ntags: [job]",
        "```sh\nsetsid sh -c 'trap \"echo late; exit\" TERM; touch scratch/up; sleep 30 & wait' &\nwhile [ ! -f scratch/up ]; do sleep 0.01; done\n```",
    );
    root.write_task("b", "id: TASK-002\ntags: [job]", "```sh\ntrue\n```");
    root.write_task("c", "id: TASK-003\ntags: [job]", "```sh\ntrue\n```");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    wait_for("the late line", LONG, || {
        std::fs::read_to_string(root.path().join("agents/logs/JOB-001.log"))
            .is_ok_and(|t| t.contains("late"))
    });
    let log = |id: &str| root.path().join(format!("agents/logs/{id}.log"));
    assert_eq!(std::fs::metadata(log("JOB-001")).unwrap().nlink(), 1);
    for id in ["JOB-002", "JOB-003"] {
        let m = std::fs::metadata(log(id)).unwrap();
        assert_eq!(m.len(), 0, "{id}: nothing printed, nothing written");
        assert!(m.nlink() >= 2, "{id}: a link to the shared empty file");
    }
    assert_eq!(
        std::fs::read_to_string(log("JOB-001")).unwrap(),
        "late\n",
        "the late line is in the log of the agent that left the writer"
    );
    for a in root.agents() {
        assert_eq!(a["status"], "completed", "{a:?}");
        assert_eq!(
            a["log"],
            format!("agents/logs/{}.log", a["id"].as_str().unwrap())
        );
    }
}

/// A `command:` that ends by `exec`-ing its program still records its exit
/// code: after a `kill -9` of the factory, the restarted one finishes the
/// task from the record instead of running it again.
#[test]
fn an_exec_command_that_ends_while_the_factory_is_down_is_not_run_again() {
    let root = TestRoot::new();
    root.factory("");
    root.write(
        "agents/templates/cmd.md",
        "---\nprefix: CMD\nagent: command\ncommand: \"echo run >> scratch/runs; exec sh -c 'while [ ! -f scratch/go ]; do sleep 0.02; done'\"\ntags: [cmd]\nworkspace: root\nenv: [PATH, HOME]\n---\n",
    );
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    root.write_task("a", "id: TASK-001\ntags: [cmd]", "x");
    let daemon = root.daemon(&[], &[]);
    wait_for("the agent to start", LONG, || {
        root.agents().iter().any(|a| a["status"] == "active")
    });
    let pid = root.agents()[0]["pid"].as_u64().unwrap() as u32;
    daemon.signal("KILL");
    let _ = daemon.wait(LONG);
    // The agent ends (exit 0) while no factory watches.
    root.write("scratch/go", "");
    wait_for("the agent to end", LONG, || !crate::util::pid_alive(pid));
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(root.show("TASK-001")["status"], "done");
    assert_eq!(root.read("scratch/runs"), "run\n", "ran once");
    let agents = root.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!(agents[0]["status"], "completed");
    assert_eq!(agents[0]["exit_code"], 0);
}

/// The state a `kill -9` leaves between registering an agent and
/// creating its process: `TASK-002` claimed by `JOB-002`, which the
/// registry lists as spawning with no pid. `runs` is where each run of
/// the task appends a line.
fn crashed_between_register_and_spawn(root: &TestRoot) {
    root.factory("");
    root.shell_role(2);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    root.write_task("a", "id: TASK-001\ntags: [job]", "```sh\ntrue\n```");
    assert_eq!(root.run_until_idle(&[]).code, 0);
    let mut reg: serde_json::Value =
        serde_json::from_str(&root.read("agents/factory/registry.json")).unwrap();
    let mut agent = reg["agents"]["JOB-001"].clone();
    assert!(agent.is_object(), "{reg}");
    for (k, v) in [
        ("id", json!("JOB-002")),
        ("task", json!("TASK-002")),
        ("status", json!("spawning")),
        ("pid", json!(null)),
        ("pid_start", json!(null)),
        ("completed", json!(null)),
        ("exit_code", json!(null)),
        ("duration_ms", json!(null)),
        ("log", json!("agents/logs/JOB-002.log")),
    ] {
        agent[k] = v;
    }
    reg["agents"]["JOB-002"] = agent;
    root.write(
        "agents/factory/registry.json",
        serde_json::to_string_pretty(&reg).unwrap(),
    );
    root.write(
        "tasks/todo/b.md",
        "---\nid: TASK-002\ntags: [job]\nstatus: running\nassigned: JOB-002\nstarted: 2026-01-01T00:00:00Z\n---\n```sh\necho run >> scratch/runs\n```\n",
    );
}

/// A factory killed after it registered an agent but before the agent's
/// process existed: the next one finds no process and no start record,
/// so the task never ran: it is ready again and runs once, with no
/// attempt counted and no failure.
#[test]
fn an_agent_a_crash_cut_before_its_process_started_is_undone_not_failed() {
    let root = TestRoot::new();
    crashed_between_register_and_spawn(&root);
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("JOB-002 never started"),
        "{}",
        run.stderr
    );
    let task = root.show("TASK-002");
    assert_eq!(task["status"], "done", "{task}");
    assert_eq!(root.read("scratch/runs"), "run\n");
    let agents = root.agents();
    let job2 = agents.iter().find(|a| a["id"] == "JOB-002").unwrap();
    assert_eq!(job2["status"], "failed", "{job2}");
    assert!(
        job2["reason"].as_str().unwrap().contains("never started"),
        "{job2}"
    );
    assert_eq!(
        agents
            .iter()
            .filter(|a| a["task"] == "TASK-002" && a["status"] == "completed")
            .count(),
        1,
        "{agents:?}"
    );
}

/// The same crash a moment later: the agent's wrapper exists but had not
/// written its start record yet. The next factory finds it by its
/// environment and adopts it instead of running the task again.
#[test]
fn an_agent_whose_start_record_a_crash_cut_is_adopted_not_run_again() {
    use std::os::unix::process::CommandExt;
    let root = TestRoot::new();
    crashed_between_register_and_spawn(&root);
    let dir = std::fs::canonicalize(root.path()).unwrap();
    // What the dead factory started: a group leader with the agent's
    // environment that runs the task, waits, and records its exit code.
    let mut wrapper = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("echo run >> scratch/runs; while [ ! -f scratch/go ]; do sleep 0.02; done; printf 'JOB-002 0\\n' >> agents/logs/exit-codes")
        .current_dir(&dir)
        .env("TASKQ_AGENT_ID", "JOB-002")
        .env("TASKQ_EXIT_TAG", "JOB-002")
        .env("TASKQ_ROOT", &dir)
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = wrapper.id();
    let reaper = std::thread::spawn(move || wrapper.wait());
    wait_for("the wrapper to run", LONG, || {
        root.path().join("scratch/runs").exists()
    });
    let daemon = root.daemon(&[], &[]);
    wait_for("the factory to adopt it", LONG, || {
        root.agents()
            .iter()
            .any(|a| a["id"] == "JOB-002" && a["pid"] == pid)
    });
    root.write("scratch/go", "");
    let _ = reaper.join();
    wait_for("TASK-002 done", LONG, || {
        root.show("TASK-002")["status"] == "done"
    });
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("adopted JOB-002"), "{}", run.stderr);
    assert_eq!(root.read("scratch/runs"), "run\n", "ran once");
    let job2 = root
        .agents()
        .into_iter()
        .find(|a| a["id"] == "JOB-002")
        .unwrap();
    assert_eq!(job2["status"], "completed", "{job2}");
}

/// With `watch: false` (file systems inotify cannot see, like NFS) the
/// heartbeat alone finds new task files: after the factory's own writes,
/// and after heartbeats that found nothing to do.
#[test]
fn without_the_watcher_the_heartbeat_finds_new_files() {
    let root = TestRoot::new();
    root.factory("watch: false\n");
    root.shell_role(2);
    let daemon = root.daemon(&[], &[]);
    root.wait_factory_started();
    let done = |name: &str| root.path().join(format!("tasks/done/{name}.md")).is_file();
    root.write_task("a", "tags: [job]", "```sh\ntrue\n```");
    wait_for("a to be done", LONG, || done("a"));
    root.write_task("b", "tags: [job]", "```sh\ntrue\n```");
    wait_for("b to be done", LONG, || done("b"));
    // Two heartbeats (2 s each) with nothing new: the next file is found by
    // comparing the files' stat digest with the last one.
    std::thread::sleep(Duration::from_secs(5));
    root.write_task("c", "tags: [job]", "```sh\ntrue\n```");
    wait_for("c to be done", LONG, || done("c"));
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let agents = root.agents();
    assert_eq!(agents.len(), 3, "{agents:?}");
    assert!(
        agents.iter().all(|a| a["status"] == "completed"),
        "{agents:?}"
    );
}

/// A task file deleted while its agent runs: the agent's end is recorded in
/// the registry, the factory says where the result went, and goes on.
#[test]
fn a_task_deleted_while_its_agent_runs_is_reported_not_lost() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(2);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    root.write_task(
        "a",
        "id: TASK-001\ntags: [job]",
        "```sh\nwhile [ ! -f scratch/go ]; do sleep 0.02; done\necho finished anyway\n```",
    );
    let daemon = root.daemon(&[], &[]);
    wait_for("the agent to start", LONG, || {
        root.agents().iter().any(|a| a["status"] == "active")
    });
    std::fs::remove_file(root.path().join("tasks/todo/a.md")).unwrap();
    root.write("scratch/go", "");
    wait_for("the agent to be recorded", LONG, || {
        root.agents().iter().any(|a| a["status"] == "completed")
    });
    assert_eq!(root.agents()[0]["result"], "finished anyway");
    // The factory still works.
    root.write_task("b", "id: TASK-002\ntags: [job]", "```sh\ntrue\n```");
    wait_for("b to be done", LONG, || {
        root.path().join("tasks/done/b.md").is_file()
    });
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "JOB-001 ended; TASK-001 is no longer in tasks/ (deleted or moved while it ran)"
        ),
        "{}",
        run.stderr
    );
}

/// A broken task file is shown by the running factory at its file and
/// line, once (one there at the start, one dropped in later), and the rest
/// of the queue runs.
#[test]
fn broken_task_files_are_reported_once_at_their_line() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(2);
    root.write("tasks/todo/early.md", "---\ntags: [job\n---\nbroken\n");
    let daemon = root.daemon(&[], &[]);
    root.wait_factory_started();
    root.write(
        "tasks/todo/late.md",
        "---\nid: TASK-050\nstatus: redy\n---\nbroken\n",
    );
    root.write_task("good", "tags: [job]", "```sh\ntrue\n```");
    wait_for("the good task to be done", LONG, || {
        root.path().join("tasks/done/good.md").is_file()
    });
    let run = daemon.wait_after_term();
    assert_eq!(run.code, 0, "{}", run.stderr);
    for line in [
        "taskq: warning: tasks/todo/early.md:2:",
        "taskq: warning: tasks/todo/late.md:3: unknown status `redy`",
    ] {
        assert_eq!(
            run.stderr.matches(line).count(),
            1,
            "{line}\n{}",
            run.stderr
        );
    }
}

/// The progress lines tell the story in order: an id-less file is adopted
/// (named with its new id) before its agent is spawned.
#[test]
fn progress_says_adopted_before_spawned() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(1);
    root.write_task("first", "tags: [job]", "```sh\ntrue\n```");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let adopted = run
        .stderr
        .find("adopted first.md as TASK-001")
        .expect(&run.stderr);
    let spawned = run
        .stderr
        .find("spawned JOB-001 for TASK-001")
        .expect(&run.stderr);
    assert!(adopted < spawned, "{}", run.stderr);
}

/// In a terminal, the queue's counts stay on the last line of stderr,
/// redrawn in place; progress lines go above them and the last line is
/// the final one, not the counts. Piped, stderr has plain lines only.
#[test]
fn a_terminal_shows_the_counts_in_place() {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(2);
    root.write_task("a", "tags: [job]", "```sh\ntrue\n```");
    root.write_task("b", "tags: [job]", "```sh\ntrue\n```");
    // util-linux `script` gives the factory a pseudo-terminal.
    let command = format!(
        "'{}' --root '{}' run --until-idle",
        crate::util::taskq_bin().display(),
        root.path().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run `script` (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("\r\x1b[Krunning 0 · queued 0 · review 0 · failed 0 · done 2"),
        "{text:?}"
    );
    let last = text.rsplit("\x1b[K").next().unwrap();
    assert!(last.contains("idle: 2 spawned, 2 done"), "{text:?}");
    assert!(!last.contains("running"), "{text:?}");
    // Piped: no escape sequences.
    root.write_task("c", "tags: [job]", "```sh\ntrue\n```");
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
}
