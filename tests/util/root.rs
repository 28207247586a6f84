//! `TestRoot`: a temp directory initialised as a taskq root, and the files
//! a test writes and reads in it (tasks, role templates, factory config).

use std::path::{Path, PathBuf};

use super::process::{fake_agent_bin, kill_agents};

/// A temp directory initialised as a taskq root; removed on drop.
pub struct TestRoot {
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    /// `taskq init` in a new temp dir.
    pub fn new() -> TestRoot {
        let root = TestRoot::empty();
        root.taskq(&["init", "."]).ok();
        root
    }

    /// A temp dir with only empty `tasks/todo` and `tasks/done`.
    pub fn empty() -> TestRoot {
        let dir = tempfile::Builder::new()
            .prefix("taskq-test-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("tasks/todo")).unwrap();
        std::fs::create_dir_all(dir.path().join("tasks/done")).unwrap();
        TestRoot { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating directories), relative to the root.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    /// Reads a file relative to the root.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Reads a file's bytes relative to the root.
    pub fn read_bytes(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Writes `tasks/todo/<name>.md`: `header` as its frontmatter (without
    /// the `---` lines), then `body`.
    pub fn write_task(&self, name: &str, header: &str, body: &str) -> PathBuf {
        self.write(
            &format!("tasks/todo/{name}.md"),
            format!("---\n{header}\n---\n{body}\n"),
        )
    }

    /// The file of a task (todo or done) relative to the root.
    pub fn task_file(&self, id: &str) -> String {
        for folder in ["todo", "done"] {
            for e in std::fs::read_dir(self.path().join("tasks").join(folder)).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                if name.starts_with(&format!("{id}-")) || name == format!("{id}.md") {
                    return format!("tasks/{folder}/{name}");
                }
            }
        }
        panic!("no file for {id}")
    }

    /// Sets up a factory root for the fake agent: config (fake agent as the
    /// claude adapter, no retry backoff, short grace) plus a role template.
    pub fn factory(&self, config_extra: &str) {
        self.write(
            "agents/factory/config.yaml",
            format!(
                "max_concurrent: 3\nretry_backoff: 0s\nstop_grace: 1s\nheartbeat: 2s\nadapters:\n  claude: {}\n{config_extra}",
                fake_agent_bin().display()
            ),
        );
        // The shipped model roles would route nothing here; keep them out.
        for r in ["research", "builder", "tester", "fixer"] {
            let _ = std::fs::remove_file(self.path().join(format!("agents/templates/{r}.md")));
        }
    }

    /// Writes a role template for the fake agent.
    pub fn role(&self, name: &str, settings: &str) {
        self.write(
            &format!("agents/templates/{name}.md"),
            format!("---\nagent: claude\nenv: [PATH, HOME, \"FAKE_AGENT_*\"]\n{settings}\n---\nYou are the {name} role.\n"),
        );
    }

    /// Writes role `job` (prefix JOB, tag `job`): the `shell` adapter
    /// running the tasks' `sh` blocks in the root, no model.
    pub fn shell_role(&self, max_concurrent: u32) {
        self.write(
            "agents/templates/job.md",
            format!("---\nprefix: JOB\nagent: shell\ntags: [job]\nmax_concurrent: {max_concurrent}\nworkspace: root\nenv: [PATH, HOME]\n---\n"),
        );
    }
}

impl Drop for TestRoot {
    /// At the end of a test, no agent process it started may survive.
    fn drop(&mut self) {
        kill_agents(self.dir.path());
    }
}
