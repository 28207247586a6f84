//! A taskq root and every path in it.
//!
//! The one place that knows where things live: commands, the store and the
//! factory ask [`Root`] for a path instead of joining names themselves, so
//! moving a file is a change here. Paths that are also written into task
//! files or the registry (logs, results) exist in a relative form too.

use std::path::{Path, PathBuf};

use crate::task::{Folder, Task};

/// The directories and files of one taskq root.
#[derive(Debug, Clone)]
pub struct Root {
    /// The root directory.
    pub dir: PathBuf,
}

impl Root {
    /// A root at `dir` (not checked).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root { dir: dir.into() }
    }

    /// `tasks/todo` or `tasks/done`.
    pub fn folder(&self, folder: Folder) -> PathBuf {
        self.dir.join("tasks").join(folder.dir_name())
    }

    /// The absolute path of a task file.
    pub fn task_path(&self, task: &Task) -> PathBuf {
        self.folder(task.folder).join(&*task.rel)
    }

    /// `tasks/<folder>/<rel>` relative to the root, for messages.
    pub fn rel_path(&self, folder: Folder, rel: &str) -> PathBuf {
        Path::new("tasks").join(folder.dir_name()).join(rel)
    }

    /// `agents/factory`.
    pub fn factory_dir(&self) -> PathBuf {
        self.dir.join("agents").join("factory")
    }

    /// The queue lock every writing command takes.
    pub fn queue_lock(&self) -> PathBuf {
        self.factory_dir().join("queue.lock")
    }

    /// The daemon lock: one factory per root (it holds the factory's pid).
    pub fn run_lock(&self) -> PathBuf {
        self.factory_dir().join("run.lock")
    }

    /// The agent API's socket: the running factory answers agents' writing
    /// commands there (docs/reference/agent-api.md).
    pub fn agent_socket(&self) -> PathBuf {
        self.factory_dir().join("agent.sock")
    }

    /// The high-water mark of task ids (ids are never reused).
    pub fn last_id_file(&self) -> PathBuf {
        self.factory_dir().join("last-task-id")
    }

    /// `agents/factory/config.yaml`.
    pub fn config_file(&self) -> PathBuf {
        self.factory_dir().join("config.yaml")
    }

    /// `agents/factory/registry.json`.
    pub fn registry_file(&self) -> PathBuf {
        self.factory_dir().join("registry.json")
    }

    /// `agents/factory/paused`: while it exists no new agent starts
    /// (`taskq pause`, `taskq resume`; see `pause`).
    pub fn pause_file(&self) -> PathBuf {
        self.factory_dir().join("paused")
    }

    /// `agents/factory/requests`: every approval request taskq wrote (see
    /// [`crate::approval::Ledger`]).
    pub fn approval_ledger(&self) -> PathBuf {
        self.factory_dir().join("requests")
    }

    /// `agents/homes/<agent-id>`: an agent's `{agent_home}`, outside any
    /// workspace.
    pub fn agent_home(&self, agent_id: &str) -> PathBuf {
        self.dir.join("agents").join("homes").join(agent_id)
    }

    /// `agents/factory/history`: finished agents moved out of the registry.
    pub fn history_dir(&self) -> PathBuf {
        self.factory_dir().join("history")
    }

    /// `agents/factory/.spare`: the factory's spare files (see fsutil).
    pub fn spare_dir(&self) -> PathBuf {
        self.factory_dir().join(".spare")
    }

    /// `agents/templates`: one role per file.
    pub fn templates_dir(&self) -> PathBuf {
        self.dir.join("agents").join("templates")
    }

    /// `agents/hooks/<event>`.
    pub fn hook(&self, event: &str) -> PathBuf {
        self.dir.join("agents").join("hooks").join(event)
    }

    /// `approvals/<state>`.
    pub fn approvals(&self, state: &str) -> PathBuf {
        self.dir.join("approvals").join(state)
    }

    /// Where agents' wrappers append `<agent-id> <exit code>` (see spawn).
    pub fn exit_codes(&self) -> PathBuf {
        self.dir.join(EXIT_CODES)
    }

    /// An agent's log (absolute).
    pub fn log(&self, agent: &str) -> PathBuf {
        self.dir.join(log_path(agent))
    }

    /// An agent's prompt file (absolute).
    pub fn prompt(&self, agent: &str) -> PathBuf {
        self.dir.join(prompt_path(agent))
    }

    /// A task's result file (absolute).
    pub fn result(&self, task: &str) -> PathBuf {
        self.dir.join(result_path(task))
    }

    /// `agents/workspaces/<name>` (absolute).
    pub fn workspace(&self, name: &str) -> PathBuf {
        self.dir.join(workspace_path(name))
    }
}

/// The folders taskq writes its own files in, relative to the root:
/// each must stay inside the root (see [`Root::confine`]).
pub const OWN_FOLDERS: &[&str] = &[
    "tasks",
    "tasks/todo",
    "tasks/done",
    "approvals",
    "approvals/pending",
    "approvals/approved",
    "approvals/rejected",
    "agents",
    "agents/factory",
    "agents/factory/history",
    "agents/factory/.spare",
    "agents/templates",
    "agents/hooks",
    "agents/logs",
    "agents/results",
    "agents/workspaces",
];

impl Root {
    /// Refuses a root whose own folders lead outside it: a folder of
    /// [`OWN_FOLDERS`] that is (or lies below) a symbolic link resolving
    /// outside the root. A link that stays inside is allowed; a folder
    /// that does not exist yet is fine (taskq makes it as a real folder).
    /// Every command checks it before it reads or writes, the factory
    /// before every step: about 16 `lstat`s, and a `realpath` only where a
    /// link is found.
    pub fn confine(&self) -> crate::error::Result<()> {
        use std::sync::OnceLock;
        let real_root = OnceLock::new();
        for rel in OWN_FOLDERS {
            let path = self.dir.join(rel);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if !meta.file_type().is_symlink() {
                continue;
            }
            let root = real_root.get_or_init(|| std::fs::canonicalize(&self.dir).ok());
            let target = std::fs::canonicalize(&path);
            let inside = match (root, &target) {
                (Some(root), Ok(t)) => t.starts_with(root),
                _ => false,
            };
            if !inside {
                let to = match &target {
                    Ok(t) => format!("`{}`", t.display()),
                    Err(e) => format!("nowhere ({e})"),
                };
                return Err(crate::error::Error::usage_hint(
                    format!(
                        "`{rel}` is a symbolic link leading outside the root `{}` (to {to}); taskq keeps its files inside its root",
                        self.dir.display()
                    ),
                    format!(
                        "replace the link with a folder (`rm {rel} && mkdir {rel}`, then move its files in), or make it point inside the root"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `agents/logs/exit-codes`, relative to the root.
pub const EXIT_CODES: &str = "agents/logs/exit-codes";

/// `agents/logs/<id>.log`, relative to the root (as the registry records it).
pub fn log_path(agent: &str) -> PathBuf {
    Path::new("agents")
        .join("logs")
        .join(format!("{agent}.log"))
}

/// `agents/logs/<id>.prompt.md`, relative to the root.
pub fn prompt_path(agent: &str) -> PathBuf {
    Path::new("agents")
        .join("logs")
        .join(format!("{agent}.prompt.md"))
}

/// `agents/results/<task>.md`, relative to the root: the full final
/// message of the run that finished the task.
pub fn result_path(task: &str) -> PathBuf {
    Path::new("agents")
        .join("results")
        .join(format!("{task}.md"))
}

/// `agents/workspaces/<name>`, relative to the root.
pub fn workspace_path(name: &str) -> PathBuf {
    Path::new("agents").join("workspaces").join(name)
}
