//! Agents are untrusted (issue 14, item 2): inside an agent, `taskq`'s
//! writing commands go through the running factory, which checks the
//! agent's secret and scope; gates and transitions are refused with exit 3
//! and a message in the agent's log; reads stay local. A shell agent does
//! it all through the real binary.

use crate::util::{git, TestRoot};

/// A root in git with a shell role, an agent task whose sh block tries
/// every command, and another task it must not touch.
fn agent_root(script: &str) -> TestRoot {
    let root = TestRoot::new();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.email", "person@example.com"]);
    git(&root, &["config", "user.name", "Person"]);
    root.factory("");
    root.shell_role(1);
    std::fs::create_dir_all(root.path().join("scratch")).unwrap();
    root.write_task(
        "TASK-002",
        "id: TASK-002\ntitle: other\nstatus: hold",
        "left alone",
    );
    root.write_task(
        "TASK-001",
        "id: TASK-001\ntitle: the agent's task\ntags: [job]",
        &format!("```sh\n{script}\n```"),
    );
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "init"]);
    root
}

/// The agent's script (`set -e` in the shell adapter: `try` records each
/// exit status).
const SCRIPT: &str = r#"try() { name=$1; shift; "$@" && r=0 || r=$?; echo "$name=$r"; }
printf %s "$TASKQ_AGENT_TOKEN" > scratch/token
f=$(taskq approval request "Post the release note") && r=0 || r=$?; echo "request=$r $f"
try approve taskq approve "$TASKQ_TASK_ID-1"
try reject taskq reject "$TASKQ_TASK_ID-1"
try done-other taskq done TASK-002
try done-own taskq done "$TASKQ_TASK_ID"
try claim taskq claim TASK-002 --agent me
try adopt taskq adopt
sub=$(printf '```sh\ntrue\n```\n' | taskq add "sub" --tag job --body -) && r=0 || r=$?; echo "add=$r $sub"
try note taskq note "half way"
try note-other taskq note --task TASK-002 "not mine"
try request-other taskq approval request --task TASK-002 "for another task"
try forged env TASKQ_AGENT_TOKEN=0123456789abcdef0123456789abcdef taskq note "forged"
try other-id env TASKQ_AGENT_ID=JOB-999 taskq note "another id"
try no-token env TASKQ_AGENT_TOKEN= taskq add "no token"
try list taskq list
try show taskq show "$TASKQ_TASK_ID" --json"#;

#[test]
fn an_agent_writes_through_the_factory_and_is_refused_the_gates() {
    let root = agent_root(SCRIPT);
    let other_before = root.read(&root.task_file("TASK-002"));
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let log = root.read("agents/logs/JOB-001.log");
    let said = |what: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(&format!("{what}=")))
            .unwrap_or_else(|| panic!("no `{what}=` in the log:\n{log}"))
            .to_string()
    };

    // approval request: through the factory, the pending file written.
    let request = said("request");
    assert!(request.starts_with("0 "), "{log}");
    assert!(
        request.ends_with("approvals/pending/TASK-001-1.md"),
        "{log}"
    );
    let pending = root.read("approvals/pending/TASK-001-1.md");
    assert!(pending.contains("agent: JOB-001"), "{pending}");

    // Gates and transitions: exit 3, a message the agent can act on, and
    // nothing changed.
    for what in [
        "approve",
        "reject",
        "done-other",
        "done-own",
        "claim",
        "adopt",
    ] {
        assert_eq!(said(what), "3", "{what}: {log}");
    }
    assert!(
        log.contains("agents cannot approve: a person approves `TASK-001-1` with `taskq approve`"),
        "{log}"
    );
    assert!(log.contains("agents cannot mark `TASK-002` done"), "{log}");
    assert!(
        log.contains("hint: your own task ends with your exit status"),
        "{log}"
    );
    assert!(root
        .path()
        .join("approvals/pending/TASK-001-1.md")
        .is_file());
    assert!(!root
        .path()
        .join("approvals/approved/TASK-001-1.md")
        .exists());
    assert_eq!(
        root.read(&root.task_file("TASK-002")),
        other_before,
        "TASK-002 unchanged"
    );

    // add: a task created by the agent, from its task; run by the factory.
    let add = said("add");
    assert_eq!(add, "0 TASK-003", "{log}");
    let sub = root.show("TASK-003");
    assert_eq!(sub["created_by"], "JOB-001", "{sub}");
    assert_eq!(sub["parent"], "TASK-001", "{sub}");
    assert_eq!(sub["status"], "done", "the factory ran it: {sub}");

    // note: on its own task only.
    assert_eq!(said("note"), "0", "{log}");
    assert_eq!(said("note-other"), "3", "{log}");
    assert!(
        log.contains("`TASK-002` is not your task (`TASK-001`)"),
        "{log}"
    );
    let own = root.show("TASK-001");
    assert_eq!(own["progress"], "half way", "{own}");
    assert_eq!(own["status"], "done", "its exit status ended it: {own}");

    // A forged secret, another agent's id, no secret: refused.
    assert_eq!(said("forged"), "3", "{log}");
    assert_eq!(said("other-id"), "3", "{log}");
    assert_eq!(said("no-token"), "3", "{log}");
    assert!(
        log.contains("the token does not match agent `JOB-001`"),
        "{log}"
    );
    assert!(
        log.contains("the token does not match agent `JOB-999`"),
        "{log}"
    );
    assert_eq!(
        root.taskq(&["list", "--json"])
            .ok()
            .stdout
            .matches("\"id\"")
            .count(),
        3,
        "only the one task the agent added"
    );

    // Reads stay local.
    assert_eq!(said("list"), "0", "{log}");
    assert_eq!(said("show"), "0", "{log}");

    // The git trail names the agent.
    let trail = git(&root, &["log", "--format=%B"]);
    assert!(trail.contains("TASK-001-1 requested by JOB-001"), "{trail}");
    assert!(
        trail.contains("TASK-003 new → ready (created by JOB-001)"),
        "{trail}"
    );
    assert!(
        trail.contains("TASK-001 progress (JOB-001): half way"),
        "{trail}"
    );
    assert!(trail.contains("Agent: JOB-001"), "{trail}");

    // The secret was in the agent's environment and in no file of the
    // root (the agent copied it to scratch/ for this check).
    let token = root.read("scratch/token");
    assert_eq!(token.len(), 32, "128 bits as hex: {token:?}");
    for e in walkdir::WalkDir::new(root.path()) {
        let e = e.unwrap();
        if !e.file_type().is_file() || e.path().starts_with(root.path().join("scratch")) {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the secret is in {}",
            e.path().display()
        );
    }
    assert!(
        !root.path().join("agents/factory/agent.sock").exists(),
        "the socket goes with the factory"
    );
}

/// With the agent's environment but no factory answering, a writing
/// command is refused (exit 3, saying so): never written directly. A
/// person's shell (no `TASKQ_AGENT_ID`) is unaffected.
#[test]
fn without_a_factory_an_agent_cannot_write_and_a_person_can() {
    let root = TestRoot::new();
    let dir = root.path().display().to_string();
    let agent = [
        ("TASKQ_AGENT_ID", "JOB-001"),
        ("TASKQ_ROOT", dir.as_str()),
        ("TASKQ_AGENT_TOKEN", "0123456789abcdef0123456789abcdef"),
    ];
    let add = root.taskq_env(&["add", "x"], &agent).code(3);
    assert!(
        add.stderr
            .contains("no factory answers on agents/factory/agent.sock"),
        "{}",
        add.stderr
    );
    assert!(root.taskq(&["list", "--json"]).ok().stdout.trim() == "[]");
    let note = root
        .taskq_env(&["note", "--task", "1", "x"], &agent)
        .code(3);
    assert!(
        note.stderr.contains("no factory answers"),
        "{}",
        note.stderr
    );
    root.taskq_env(&["list"], &agent).ok();
    // A stale socket file (a crashed factory) answers no one either.
    root.write("agents/factory/agent.sock", "");
    root.taskq_env(&["add", "x"], &agent).code(3);
    // The person adds and notes.
    let id = root.add(&["x"]);
    root.taskq(&["note", "--task", &id, "started"]).ok();
    assert_eq!(root.show(&id)["progress"], "started");
    // An agent working on another root is a person there.
    let other = TestRoot::new();
    let there = other.path().display().to_string();
    let run = root.taskq_env(&["--root", &there, "add", "y"], &agent).ok();
    assert_eq!(run.stdout.trim(), "TASK-001");
}

/// The socket: this user's only, one bounded JSON line each way; what is
/// not a request is answered as invalid (exit code 2 in the answer), a
/// request without the agent's secret is refused, and the factory goes on.
#[test]
fn the_socket_is_private_and_answers_one_line() {
    use std::io::{BufRead, Write};
    use std::os::unix::fs::PermissionsExt;
    let root = TestRoot::new();
    root.factory("");
    let daemon = root.daemon(&[], &[]);
    let sock = root.path().join("agents/factory/agent.sock");
    crate::util::wait_for("the socket", crate::util::LONG, || sock.exists());
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let ask = |line: &[u8]| -> serde_json::Value {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
        s.write_all(line).unwrap();
        let mut answer = String::new();
        std::io::BufReader::new(s).read_line(&mut answer).unwrap();
        serde_json::from_str(&answer).unwrap()
    };
    let garbage = ask(b"not json\n");
    assert_eq!(garbage["ok"], false);
    assert_eq!(garbage["code"], 2, "{garbage}");
    let forged = ask(
        br#"{"agent":"JOB-001","token":"00000000000000000000000000000000","op":"add","title":"x","priority":"high"}"#
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>()
            .as_slice(),
    );
    assert_eq!(forged["code"], 3, "{forged}");
    assert!(
        forged["error"]
            .as_str()
            .unwrap()
            .contains("token does not match"),
        "{forged}"
    );
    let big = vec![b'x'; (1 << 20) + 10];
    let too_big = ask(&big);
    assert_eq!(too_big["code"], 2, "{too_big}");
    assert_eq!(root.taskq(&["list", "--json"]).ok().stdout.trim(), "[]");
    let run = daemon.wait_after_term();
    assert!(
        run.stderr.contains("refused a request as `JOB-001`"),
        "{}",
        run.stderr
    );
    assert!(!sock.exists(), "removed when the factory ends");
}
