//! The resolved command line: the root, output mode and the time, built
//! once so commands never read the environment themselves.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::output::Out;
use crate::store::{self, Root};
use crate::task::Timestamp;

/// What every command gets.
pub struct Ctx {
    /// The taskq root.
    pub root: Root,
    /// stdout / stderr, JSON or text.
    pub out: Out,
    /// The time of this command (`TASKQ_NOW` fixes it).
    pub now: Timestamp,
}

impl Ctx {
    /// Resolves the root: `--root`/`$TASKQ_ROOT` (already merged by clap),
    /// else the nearest ancestor of the current directory holding `tasks/`.
    pub fn new(root: Option<PathBuf>, out: Out) -> Result<Ctx> {
        let dir = match root {
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(Error::usage_hint(
                        format!("root `{}` is not a directory", dir.display()),
                        "run `taskq init DIR` to create one",
                    ));
                }
                dir
            }
            None => find_root()?,
        };
        Ok(Ctx {
            root: Root::new(dir),
            out,
            now: store::now(),
        })
    }

    /// Shows `path` (relative to the root) the way a user can open it: as
    /// given when the root was named, relative to the current directory
    /// when the root was discovered.
    pub fn display_path(&self, rel: &Path) -> PathBuf {
        let full = self.root.dir.join(rel);
        match std::env::current_dir() {
            Ok(cwd) => full
                .strip_prefix(&cwd)
                .map(Path::to_path_buf)
                .unwrap_or(full),
            Err(_) => full,
        }
    }
}

fn find_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
    let mut dir = cwd.as_path();
    loop {
        if dir.join("tasks").is_dir() {
            return Ok(dir.to_path_buf());
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => return Err(Error::NoRoot { cwd }),
        }
    }
}
