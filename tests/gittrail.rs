//! The git trail never touches the person's index and never stops
//! silently (issue 13, item 7): commits are built in a private index, wait
//! out a merge or cherry-pick, and survive a signer that fails. Real git,
//! in temp repositories.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{git, pid_alive, TestRoot};

/// `git status --porcelain`, sorted.
fn status(root: &TestRoot) -> Vec<String> {
    let mut lines: Vec<String> = git(root, &["status", "--porcelain"])
        .lines()
        .map(String::from)
        .collect();
    lines.sort_unstable();
    lines
}

fn subjects(root: &TestRoot) -> Vec<String> {
    git(root, &["log", "--format=%s"])
        .lines()
        .map(String::from)
        .collect()
}

/// A taskq root that is a git repository whose first commit holds
/// everything `taskq init` wrote and the person's two files.
fn repo() -> TestRoot {
    let root = TestRoot::new();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.email", "person@example.com"]);
    git(&root, &["config", "user.name", "Person"]);
    root.write("notes.txt", "v1\n");
    root.write("readme.txt", "v1\n");
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "init"]);
    root
}

/// The person's own work in progress: a staged change, a staged new file,
/// an unstaged change and an untracked file.
fn person_works(root: &TestRoot) {
    root.write("notes.txt", "v2 staged\n");
    root.write("added.txt", "new and staged\n");
    git(root, &["add", "notes.txt", "added.txt"]);
    root.write("readme.txt", "v2 unstaged\n");
    root.write("scratch.txt", "untracked\n");
}

/// Exactly the person's work is staged and unstaged, as they left it; none
/// of taskq's files is (even for `git diff-files`, which does not refresh
/// the index first).
#[track_caller]
fn person_work_untouched(root: &TestRoot) {
    assert_eq!(
        status(root),
        [
            " M readme.txt",
            "?? scratch.txt",
            "A  added.txt",
            "M  notes.txt"
        ]
    );
    person_index_untouched(root);
    assert_eq!(git(root, &["diff-files", "--name-only"]), "readme.txt\n");
}

/// The index holds the person's staging and nothing of taskq's (whose
/// files may be waiting, changed in the work tree only).
#[track_caller]
fn person_index_untouched(root: &TestRoot) {
    assert_eq!(
        git(root, &["diff", "--cached", "--name-only"]),
        "added.txt\nnotes.txt\n"
    );
    assert_eq!(git(root, &["show", ":notes.txt"]), "v2 staged\n");
    assert_eq!(git(root, &["show", ":readme.txt"]), "v1\n", "not staged");
}

/// A script outside the repository (so it never shows in `git status`).
fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

const FAILING_SIGNER: &str = "cat >/dev/null\necho 'no secret key' >&2\nexit 2\n";

/// What git wants from `gpg --status-fd=2 -bsau KEY`: a status line and a
/// signature.
const WORKING_SIGNER: &str = "cat >/dev/null\n\
    printf '\\n[GNUPG:] SIG_CREATED D 1 8 00 1 FAKE\\n' >&2\n\
    printf -- '-----BEGIN PGP SIGNATURE-----\\n\\nfake\\n-----END PGP SIGNATURE-----\\n'\n";

fn is_signed(root: &TestRoot, rev: &str) -> bool {
    git(root, &["cat-file", "commit", rev]).contains("\ngpgsig ")
}

#[test]
fn the_persons_staging_survives_commands_and_a_factory_run() {
    let root = repo();
    person_works(&root);
    let a = root.add(&["Write the spec"]);
    root.taskq(&["claim", &a, "--agent", "BLD-002"]).ok();
    root.taskq(&["done", &a]).ok();
    person_work_untouched(&root);
    assert_eq!(
        &subjects(&root)[..3],
        [
            "taskq: TASK-001 running → done",
            "taskq: TASK-001 ready → running (claimed by BLD-002)",
            "taskq: TASK-001 new → ready",
        ]
    );
    // Each commit holds only taskq's paths.
    let files = git(&root, &["log", "-3", "--name-only", "--format="]);
    assert!(
        !files.contains("notes.txt") && !files.contains("added.txt"),
        "{files}"
    );
    // A factory run, with commits batched across fast steps.
    root.factory("");
    root.shell_role(2);
    for n in 2..=6 {
        root.write(
            &format!("tasks/todo/t{n}.md"),
            format!("---\nid: TASK-00{n}\ntags: [job]\n---\n```sh\ntrue\n```\n"),
        );
    }
    git(&root, &["add", "agents", "tasks"]);
    git(
        &root,
        &["commit", "-q", "-m", "setup", "--", "agents", "tasks"],
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    person_work_untouched(&root);
    let log = git(&root, &["log", "--format=%B"]);
    for n in 2..=6 {
        assert!(log.contains(&format!("TASK-00{n} running → done")), "{log}");
    }
    assert!(!root.path().join(".git/taskq-pending").exists());
}

#[test]
fn commits_follow_one_another_in_order() {
    let root = repo();
    person_works(&root);
    let a = root.add(&["First"]);
    let b = root.add(&["Second"]);
    root.taskq(&["done", &a]).ok();
    root.taskq(&["cancel", &b]).ok();
    assert_eq!(
        subjects(&root),
        [
            format!("taskq: {b} ready → cancelled"),
            format!("taskq: {a} ready → done"),
            format!("taskq: {b} new → ready"),
            format!("taskq: {a} new → ready"),
            "init".to_string(),
        ]
    );
    // The moved file is a rename in the commit, the old path gone.
    let files = git(&root, &["show", "--name-status", "--format=", "HEAD~1"]);
    assert!(files.starts_with('R'), "{files}");
    person_work_untouched(&root);
}

/// The person commits between two of taskq's commits: taskq's next one
/// starts from their HEAD (its private index is rebuilt), so it keeps
/// their change instead of undoing it.
#[test]
fn the_persons_commit_in_between_is_kept() {
    let root = repo();
    person_works(&root);
    let a = root.add(&["Before"]);
    git(&root, &["commit", "-q", "-m", "mine"]);
    root.taskq(&["done", &a]).ok();
    assert_eq!(
        subjects(&root)[..3],
        [
            format!("taskq: {a} ready → done"),
            "mine".to_string(),
            format!("taskq: {a} new → ready")
        ]
    );
    assert_eq!(git(&root, &["show", "HEAD:notes.txt"]), "v2 staged\n");
    assert_eq!(git(&root, &["show", "HEAD:added.txt"]), "new and staged\n");
    assert_eq!(status(&root), [" M readme.txt", "?? scratch.txt"]);
}

/// A new repository, no commit yet: taskq's first commit starts the
/// branch, and the files the person staged stay staged.
#[test]
fn the_first_commit_of_a_new_repository() {
    let root = TestRoot::new();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.email", "person@example.com"]);
    git(&root, &["config", "user.name", "Person"]);
    root.write("mine.txt", "staged before any commit\n");
    git(&root, &["add", "mine.txt"]);
    let a = root.add(&["Begin"]);
    assert_eq!(subjects(&root), [format!("taskq: {a} new → ready")]);
    let files = git(&root, &["show", "--name-only", "--format=", "HEAD"]);
    assert!(!files.contains("mine.txt"), "{files}");
    assert_eq!(
        git(&root, &["diff", "--cached", "--name-only"]),
        "mine.txt\n"
    );
}

/// `.gitignore` applies to taskq's new files as it does to `git add`.
#[test]
fn an_ignored_path_is_left_out() {
    let root = repo();
    root.write(".gitignore", "/tasks/done/\n");
    git(&root, &["add", ".gitignore"]);
    git(&root, &["commit", "-q", "-m", "ignore done"]);
    let a = root.add(&["Private"]);
    let run = root.taskq(&["done", &a]).ok();
    assert!(!run.stderr.contains("git"), "{}", run.stderr);
    let files = git(&root, &["show", "--name-status", "--format=", "HEAD"]);
    assert!(
        files.contains("D\ttasks/todo/") && !files.contains("tasks/done/"),
        "{files}"
    );
    assert!(!root.path().join(".git/taskq-pending").exists());
}

/// The person signs their commits (`commit.gpgsign`), but no signer works
/// here (a daemon, no agent): taskq commits unsigned, and leaves nothing
/// staged.
#[test]
fn a_failing_signer_does_not_stop_unsigned_commits() {
    let root = repo();
    let bin = tempfile::tempdir().unwrap();
    let signer = script(bin.path(), "gpg", FAILING_SIGNER);
    git(&root, &["config", "commit.gpgsign", "true"]);
    git(&root, &["config", "gpg.program", &signer]);
    person_works(&root);
    let a = root.add(&["Unsigned"]);
    let run = root.taskq(&["done", &a]).ok();
    assert_eq!(run.stderr.matches("warning").count(), 0, "{}", run.stderr);
    assert_eq!(
        &subjects(&root)[..2],
        [
            format!("taskq: {a} ready → done"),
            format!("taskq: {a} new → ready")
        ]
    );
    assert!(!is_signed(&root, "HEAD"));
    person_work_untouched(&root);
    assert!(!root.path().join(".git/taskq-pending").exists());
}

/// `git.sign: true` with a signer that fails: transitions wait, say so
/// every time, show in `status`, and land, in order and signed, once the
/// signer works.
#[test]
fn with_git_sign_transitions_wait_for_a_working_signer() {
    let root = repo();
    let bin = tempfile::tempdir().unwrap();
    let failing = script(bin.path(), "failing", FAILING_SIGNER);
    let working = script(bin.path(), "working", WORKING_SIGNER);
    let config = root.read("agents/factory/config.yaml");
    root.write(
        "agents/factory/config.yaml",
        format!("{config}git:\n  sign: true\n"),
    );
    git(&root, &["commit", "-q", "-m", "sign", "--", "agents"]);
    git(&root, &["config", "gpg.program", &failing]);
    person_works(&root);
    let head = git(&root, &["rev-parse", "HEAD"]);
    let a = root.add(&["Signed later"]);
    let run = root.taskq(&["done", &a]).ok();
    assert!(
        run.stderr
            .contains("git: commit signing failed: 2 transitions waiting in `.git/taskq-pending`")
            && run.stderr.contains("no secret key")
            && run.stderr.contains("hint: "),
        "{}",
        run.stderr
    );
    assert_eq!(git(&root, &["rev-parse", "HEAD"]), head, "no commit");
    person_index_untouched(&root);
    let text = root.taskq(&["status"]).ok().stdout;
    assert!(
        text.contains("git: 2 transitions waiting (commit signing failed)"),
        "{text}"
    );
    let json = root.taskq(&["--json", "status"]).ok().json();
    assert_eq!(json["git"]["transitions"], 2, "{json}");
    assert_eq!(json["git"]["reason"], "commit signing failed", "{json}");
    // The signer is fixed: taskq's next write lands everything, in order,
    // in one signed commit.
    git(&root, &["config", "gpg.program", &working]);
    let b = root.add(&["Now signed"]);
    assert_eq!(
        subjects(&root)[0],
        format!("taskq: 3 transitions ({a}, {b})")
    );
    let body = git(&root, &["log", "-1", "--format=%b"]);
    assert!(
        body.starts_with(&format!(
            "- {a} new → ready\n- {a} ready → done\n- {b} new → ready\n"
        )),
        "{body}"
    );
    assert!(is_signed(&root, "HEAD"));
    assert_eq!(git(&root, &["rev-parse", "HEAD~1"]), head);
    person_work_untouched(&root);
    assert!(!root.path().join(".git/taskq-pending").exists());
    let json = root.taskq(&["--json", "status"]).ok().json();
    assert!(json["git"].is_null(), "{json}");
}

/// A signer that would wait for a passphrase forever is killed, and the
/// transition waits instead of the command hanging.
#[test]
fn a_signer_that_hangs_is_killed() {
    let root = repo();
    let bin = tempfile::tempdir().unwrap();
    let pid_file = bin.path().join("pid");
    let hanging = script(
        bin.path(),
        "hanging",
        &format!("echo $$ > {}\nsleep 120\n", pid_file.display()),
    );
    let config = root.read("agents/factory/config.yaml");
    root.write(
        "agents/factory/config.yaml",
        format!("{config}git:\n  sign: true\n"),
    );
    git(&root, &["commit", "-q", "-m", "sign", "--", "agents"]);
    git(&root, &["config", "gpg.program", &hanging]);
    let start = Instant::now();
    let run = root.taskq(&["add", "Patience"]).ok();
    assert!(start.elapsed() < Duration::from_secs(60));
    assert!(
        run.stderr.contains("git: commit signing timed out"),
        "{}",
        run.stderr
    );
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    crate::util::wait_for("the signer to be killed", Duration::from_secs(10), || {
        !pid_alive(pid)
    });
    assert_eq!(subjects(&root)[0], "sign");
    assert!(root
        .taskq(&["status"])
        .ok()
        .stdout
        .contains("git: 1 transition waiting (commit signing timed out)"));
    // For a minute taskq does not wait for the signer again.
    let start = Instant::now();
    let run = root.taskq(&["add", "No wait"]).ok();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(
        run.stderr.contains(
            "git: commit signing timed out: 2 transitions waiting in `.git/taskq-pending`: the signer hung last time"
        ),
        "{}",
        run.stderr
    );
    // Signing turned off in the config: the next write lands them all.
    let config = root.read("agents/factory/config.yaml");
    root.write(
        "agents/factory/config.yaml",
        config.replace("sign: true", "sign: false"),
    );
    root.add(&["Unsigned"]);
    assert_eq!(
        subjects(&root)[..2],
        [
            "taskq: 3 transitions (TASK-001, TASK-002, TASK-003)",
            "sign"
        ]
    );
    assert!(!is_signed(&root, "HEAD"));
}

/// A real conflicting merge: taskq's transitions stay out of the index and
/// out of the merge, and land in order after the person commits it.
#[test]
fn transitions_wait_out_a_merge() {
    let root = repo();
    git(&root, &["checkout", "-q", "-b", "theirs"]);
    root.write("notes.txt", "theirs\n");
    git(&root, &["commit", "-q", "-am", "theirs"]);
    git(&root, &["checkout", "-q", "-"]);
    root.write("notes.txt", "ours\n");
    git(&root, &["commit", "-q", "-am", "ours"]);
    let merge = Command::new("git")
        .arg("-C")
        .arg(root.path())
        .args(["merge", "theirs"])
        .output()
        .unwrap();
    assert!(!merge.status.success(), "a conflict");
    root.write("readme.txt", "v2 unstaged\n");
    let head = git(&root, &["rev-parse", "HEAD"]);
    let a = root.add(&["During the merge"]);
    root.taskq(&["claim", &a, "--agent", "BLD-001"]).ok();
    let run = root.taskq(&["done", &a]).ok();
    assert!(
        run.stderr.contains(
            "git: a merge is in progress: 3 transitions waiting in `.git/taskq-pending`, kept out of your index and of the merge"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(git(&root, &["rev-parse", "HEAD"]), head, "no commit");
    assert!(root.path().join(".git/MERGE_HEAD").exists());
    // The index holds the merge and nothing of taskq's.
    let unmerged = git(&root, &["ls-files", "-u"]);
    assert_eq!(unmerged.lines().count(), 3, "{unmerged}");
    assert!(unmerged.lines().all(|l| l.ends_with("\tnotes.txt")));
    assert_eq!(
        git(&root, &["diff", "--cached", "--name-only"]),
        "notes.txt\n"
    );
    for line in status(&root) {
        assert!(
            line.starts_with("UU notes.txt") || line.starts_with(" M") || line.starts_with("??"),
            "staged: {line}"
        );
    }
    let text = root.taskq(&["status"]).ok().stdout;
    assert!(
        text.contains("git: 3 transitions waiting (merge in progress)"),
        "{text}"
    );
    // The person resolves and commits the merge: none of taskq's files is
    // in it.
    root.write("notes.txt", "resolved\n");
    git(&root, &["add", "notes.txt"]);
    git(&root, &["commit", "-q", "--no-edit"]);
    assert_eq!(
        git(&root, &["diff", "--name-only", "HEAD^1", "HEAD"]),
        "notes.txt\n"
    );
    let text = root.taskq(&["status"]).ok().stdout;
    assert!(
        text.contains("git: 3 transitions waiting (merge over; taskq's next write commits them)"),
        "{text}"
    );
    // taskq's next command lands them, in order, before its own.
    let b = root.add(&["After the merge"]);
    assert_eq!(
        subjects(&root)[..2],
        [
            format!("taskq: 4 transitions ({a}, {b})"),
            "Merge branch 'theirs'".to_string()
        ]
    );
    let body = git(&root, &["log", "-1", "--format=%b"]);
    assert!(
        body.starts_with(&format!(
            "- {a} new → ready\n- {a} ready → running (claimed by BLD-001)\n- {a} running → done\n- {b} new → ready\n"
        )),
        "{body}"
    );
    assert_eq!(status(&root), [" M readme.txt"]);
    assert!(!root.path().join(".git/taskq-pending").exists());
}

/// A cherry-pick stopped on a conflict holds the factory's transitions
/// too; once the person finishes it, a factory step lands them, even one
/// that changes nothing.
#[test]
fn a_factory_step_lands_what_waited_out_a_cherry_pick() {
    let root = repo();
    root.factory("");
    root.shell_role(1);
    root.write(
        "tasks/todo/t1.md",
        "---\nid: TASK-001\ntags: [job]\n---\n```sh\ntrue\n```\n",
    );
    git(&root, &["add", "agents", "tasks"]);
    git(&root, &["commit", "-q", "-m", "setup"]);
    git(&root, &["checkout", "-q", "-b", "side"]);
    root.write("notes.txt", "side\n");
    git(&root, &["commit", "-q", "-am", "side"]);
    git(&root, &["checkout", "-q", "-"]);
    root.write("notes.txt", "main\n");
    git(&root, &["commit", "-q", "-am", "main"]);
    let pick = Command::new("git")
        .arg("-C")
        .arg(root.path())
        .args(["cherry-pick", "side"])
        .output()
        .unwrap();
    assert!(!pick.status.success(), "a conflict");
    let head = git(&root, &["rev-parse", "HEAD"]);
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr.matches("a cherry-pick is in progress").count(),
        1,
        "once per run: {}",
        run.stderr
    );
    assert_eq!(git(&root, &["rev-parse", "HEAD"]), head, "no commit");
    assert_eq!(
        git(&root, &["diff", "--cached", "--name-only"]),
        "notes.txt\n"
    );
    let json = root.taskq(&["--json", "status"]).ok().json();
    assert_eq!(json["git"]["reason"], "cherry-pick in progress", "{json}");
    root.write("notes.txt", "picked\n");
    git(&root, &["add", "notes.txt"]);
    git(&root, &["commit", "-q", "--no-edit"]);
    // Nothing left to run: the factory's step changes nothing, and still
    // commits what waited.
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let body = git(&root, &["log", "-1", "--format=%B"]);
    assert!(
        body.contains("- TASK-001 ready → running") && body.contains("- TASK-001 running → done"),
        "{body}"
    );
    assert_eq!(
        git(&root, &["log", "-1", "--skip=1", "--format=%s"]),
        "side\n"
    );
    assert!(status(&root).is_empty(), "{:?}", status(&root));
    assert!(!root.path().join(".git/taskq-pending").exists());
}
