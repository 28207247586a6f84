//! taskq stays in its root (issue 13, item 6): no write follows a link
//! where taskq expects its own file (the link is reported and left alone),
//! folders that lead outside the root are refused, `repo:` stays inside
//! the root unless listed, `base:` is never an option to git, and
//! approvals are named by id, never by a path that leads elsewhere.
//!
//! Each test plants its link towards a file outside the root (`outside`)
//! and checks that the file is untouched afterwards.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::util::{git, TestRoot};

/// A directory outside the root with a file a link can lead to.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Outside {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious"), "keep me\n").unwrap();
        Outside { dir }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("precious")
    }

    #[track_caller]
    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.file()).unwrap(),
            "keep me\n",
            "the file outside the root was written"
        );
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "nothing created outside: {names:?}");
    }
}

fn is_link(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// Links planted among the factory's spare files (and a FIFO) are never
/// written through: the run finishes its tasks, the file outside is
/// untouched, the links are still links, and `registry.json` is a file.
#[test]
fn links_among_the_spare_files_are_never_written_through() {
    let root = TestRoot::new();
    let outside = Outside::new();
    root.factory("");
    root.shell_role(2);
    let spare = root.path().join("agents/factory/.spare");
    std::fs::create_dir_all(&spare).unwrap();
    for name in ["0", "1", "2", "e0", "e1"] {
        symlink(outside.file(), spare.join(name)).unwrap();
    }
    let fifo = spare.join("3");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for n in 1..=4 {
        root.write_task(
            &format!("t{n}"),
            &format!("id: TASK-00{n}\ntags: [job]"),
            "```sh\necho hi\n```",
        );
    }
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for n in 1..=4 {
        assert_eq!(root.show(&format!("TASK-00{n}"))["status"], "done");
    }
    outside.assert_untouched();
    for name in ["0", "1", "2", "e0", "e1"] {
        assert!(is_link(&spare.join(name)), "{name}: left alone");
    }
    let reg = root.path().join("agents/factory/registry.json");
    assert!(!is_link(&reg) && reg.is_file());
}

/// A link where a task's file goes when it is done: `taskq done` never
/// writes through it nor replaces it: the task lands beside it (as with
/// any name already taken), the link stays, nothing is written outside.
#[test]
fn a_link_where_a_done_task_goes_is_left_alone() {
    let root = TestRoot::new();
    let outside = Outside::new();
    root.write_task("a", "id: TASK-001", "body");
    root.taskq(&["claim", "TASK-001", "--agent", "w"]).ok();
    std::fs::create_dir_all(root.path().join("tasks/done")).unwrap();
    let link = root.path().join("tasks/done/a.md");
    symlink(outside.file(), &link).unwrap();
    root.taskq(&["done", "TASK-001"]).ok();
    assert!(is_link(&link));
    assert_eq!(root.show("TASK-001")["status"], "done");
    assert!(!root.path().join("tasks/todo/a.md").exists());
    outside.assert_untouched();
}

/// `tasks/done` (or any folder taskq writes in) that is a link leading
/// outside the root: every command refuses, exit 2, naming the folder.
/// A link that stays inside the root is fine.
#[test]
fn folders_that_lead_outside_the_root_are_refused() {
    let root = TestRoot::new();
    let outside = Outside::new();
    root.write_task("a", "id: TASK-001", "body");
    let done = root.path().join("tasks/done");
    let _ = std::fs::remove_dir_all(&done);
    symlink(outside.dir.path(), &done).unwrap();
    for args in [
        vec!["list"],
        vec!["next"],
        vec!["done", "TASK-001"],
        vec!["run", "--until-idle"],
        vec!["status"],
    ] {
        let run = root.taskq(&args).code(2);
        assert!(
            run.stderr
                .contains("`tasks/done` is a symbolic link leading outside the root"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stderr.contains("hint:"), "{}", run.stderr);
    }
    outside.assert_untouched();
    // Inside the root: allowed.
    std::fs::remove_file(&done).unwrap();
    std::fs::create_dir_all(root.path().join("archive/done")).unwrap();
    symlink(root.path().join("archive/done"), &done).unwrap();
    root.taskq(&["claim", "TASK-001", "--agent", "w"]).ok();
    root.taskq(&["done", "TASK-001"]).ok();
    assert!(root.path().join("archive/done/a.md").is_file());
}

/// A link where the factory appends its agents' exit codes: the
/// factory never writes through it (the agent does not start and says
/// why); one where a log would go: that id is skipped (ids never repeat).
/// Either way the link stays and the file outside is untouched.
#[test]
fn links_where_the_factory_appends_are_never_followed() {
    for rel in ["agents/logs/exit-codes", "agents/logs/JOB-001.log"] {
        let root = TestRoot::new();
        let outside = Outside::new();
        root.factory("");
        root.shell_role(1);
        std::fs::create_dir_all(root.path().join("agents/logs")).unwrap();
        symlink(outside.file(), root.path().join(rel)).unwrap();
        root.write_task("a", "id: TASK-001\ntags: [job]", "```sh\necho hi\n```");
        let run = root.run_until_idle(&[]);
        if rel.ends_with("exit-codes") {
            assert!(
                run.stderr.contains("could not start JOB-001")
                    && run.stderr.contains("symbolic link"),
                "{rel}: {}",
                run.stderr
            );
        } else {
            assert_eq!(run.code, 0, "{}", run.stderr);
            assert_eq!(root.show("TASK-001")["status"], "done");
        }
        assert!(is_link(&root.path().join(rel)), "{rel}: left alone");
        outside.assert_untouched();
    }
}

/// The queue lock as a link: commands refuse rather than write a pid
/// through it.
#[test]
fn a_lock_file_that_is_a_link_is_refused() {
    let root = TestRoot::new();
    let outside = Outside::new();
    root.write_task("a", "id: TASK-001", "body");
    let lock = root.path().join("agents/factory/queue.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&lock);
    symlink(outside.file(), &lock).unwrap();
    let run = root.taskq(&["claim", "TASK-001", "--agent", "w"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("queue.lock"), "{}", run.stderr);
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    outside.assert_untouched();
}

/// `approve` and `reject` take an id or a file in this root's
/// `approvals/`: names with `/` or `..`, and files elsewhere (even in a
/// folder called `pending`), are refused with exit 2 and left where they
/// are.
#[test]
fn approvals_are_named_by_id_never_by_a_path_elsewhere() {
    let root = TestRoot::new();
    let outside = Outside::new();
    let other = tempfile::tempdir().unwrap();
    let elsewhere = other.path().join("pending");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let foreign = elsewhere.join("TASK-009.md");
    std::fs::write(&foreign, "---\ntask: TASK-009\n---\n").unwrap();
    let escape = format!(
        "../../../../../../../../..{}",
        foreign.with_extension("").display()
    );
    let foreign_s = foreign.display().to_string();
    for what in [
        foreign_s.as_str(),
        escape.as_str(),
        "..",
        "../TASK-009",
        ".hidden",
    ] {
        for cmd in ["approve", "reject"] {
            let run = root.taskq(&[cmd, what]);
            assert_eq!(run.code, 2, "{cmd} {what}: {}", run.stderr);
        }
    }
    assert!(foreign.is_file(), "the file elsewhere stays");
    // By id, and by the path of the pending file: both work.
    root.write(
        "approvals/pending/TASK-001.md",
        "---\ntask: TASK-001\n---\n",
    );
    root.write(
        "approvals/pending/TASK-002.md",
        "---\ntask: TASK-002\n---\n",
    );
    root.taskq(&["approve", "TASK-001"]).ok();
    root.taskq(&["reject", "approvals/pending/TASK-002.md"])
        .ok();
    assert!(root.path().join("approvals/approved/TASK-001.md").is_file());
    assert!(root.path().join("approvals/rejected/TASK-002.md").is_file());
    // A link in approvals/pending is reported and left alone.
    symlink(
        outside.file(),
        root.path().join("approvals/pending/TASK-003.md"),
    )
    .unwrap();
    let run = root.taskq(&["approve", "TASK-003"]);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("symbolic link"), "{}", run.stderr);
    assert!(is_link(&root.path().join("approvals/pending/TASK-003.md")));
    outside.assert_untouched();
}

/// A git root with a worktree role (the fake agent writes a file).
fn worktree_root(config_extra: &str) -> TestRoot {
    let root = TestRoot::new();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.email", "person@example.com"]);
    git(&root, &["config", "user.name", "Person"]);
    root.factory(config_extra);
    root.role(
        "coder",
        "prefix: COD\nmodel: m\ntags: [code]\nmax_concurrent: 1\nworkspace: worktree",
    );
    git(&root, &["add", "-A"]);
    git(&root, &["commit", "-q", "-m", "setup"]);
    root
}

fn outside_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        assert!(std::process::Command::new("git")
            .arg("-C")
            .arg(dir.path())
            .args(args)
            .status()
            .unwrap()
            .success());
    };
    git(&["init", "-q"]);
    git(&[
        "-c",
        "user.name=P",
        "-c",
        "user.email=p@e",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "x",
    ]);
    dir
}

/// A task's `repo:` outside the root is refused (the task fails, saying
/// why, and no branch or worktree appears there) unless `git.repos` lists
/// it; then the agent works there.
#[test]
fn a_repo_outside_the_root_needs_to_be_listed() {
    let other = outside_repo();
    let root = worktree_root("");
    root.write(
        "tasks/todo/f.md",
        format!(
            "---\nid: TASK-001\ntags: [code]\nrepo: {}\n---\nWork elsewhere.\n",
            other.path().display()
        ),
    );
    let run = root.run_until_idle(&[]);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "failed", "{t}\n{}", run.stderr);
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("not listed in `git.repos`"),
        "{t}"
    );
    let branches = std::process::Command::new("git")
        .arg("-C")
        .arg(other.path())
        .args(["branch", "--list", "taskq/*"])
        .output()
        .unwrap();
    assert!(branches.stdout.is_empty(), "no branch made outside");
    // Listed: allowed.
    let listed = worktree_root(&format!("git:\n  repos: [{}]\n", other.path().display()));
    listed.write(
        "tasks/todo/f.md",
        format!(
            "---\nid: TASK-001\ntags: [code]\nrepo: {}\n---\nWork elsewhere.\n",
            other.path().display()
        ),
    );
    let run = listed.run_until_idle(&[("FAKE_AGENT_WRITE", "feature.txt")]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(listed.show("TASK-001")["status"], "done");
}

/// `base: --no-checkout` (or any base that reads as an option) never
/// reaches git as an option: the start fails naming the base.
#[test]
fn a_base_that_reads_as_an_option_is_refused() {
    let root = worktree_root("");
    root.write(
        "tasks/todo/f.md",
        "---\nid: TASK-001\ntags: [code]\nbase: --no-checkout\n---\nWork.\n",
    );
    let run = root.run_until_idle(&[]);
    let t = root.show("TASK-001");
    assert_eq!(t["status"], "failed", "{t}\n{}", run.stderr);
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("base `--no-checkout` starts with `-`"),
        "{t}"
    );
    assert!(!root.path().join("agents/workspaces/COD-001").exists());
}
