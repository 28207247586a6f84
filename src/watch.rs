//! notify → the factory's event channel.
//!
//! The notify callback never blocks: it sets a "changed" flag and sends one
//! wake-up only when the flag was clear, so a `git checkout` of thousands
//! of files is one message, not thousands. An event means "rescan", never
//! "apply this change": events can be missed (inotify overflow), so the
//! factory's heartbeat rescans too.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{Error, Result};
use crate::store::Root;

/// Set while a wake-up is in flight; the factory clears it before it
/// rescans.
pub type Pending = Arc<AtomicBool>;

/// Watches `tasks/`, `approvals/` and `agents/templates/` (created if
/// missing). Keep the returned watcher alive.
pub fn start<E: Send + 'static>(
    root: &Root,
    pending: Pending,
    tx: UnboundedSender<E>,
    make: fn() -> E,
) -> Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(event) => {
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            if !pending.swap(true, Ordering::AcqRel) {
                let _ = tx.send(make());
            }
        }
        Err(e) => tracing::warn!(error = %e, "file watcher error; the heartbeat keeps the queue going"),
    })
    .map_err(|e| watch_error(&root.dir, e))?;
    for dir in watch_dirs(root) {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|e| watch_error(&dir, e))?;
    }
    Ok(watcher)
}

/// The directories the factory reacts to.
pub fn watch_dirs(root: &Root) -> Vec<PathBuf> {
    vec![
        root.dir.join("tasks"),
        root.dir.join("approvals"),
        root.dir.join("agents").join("templates"),
    ]
}

fn watch_error(path: &std::path::Path, e: notify::Error) -> Error {
    let limit = matches!(&e.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&e.kind, notify::ErrorKind::Io(io) if matches!(io.raw_os_error(), Some(28) | Some(24)));
    if limit {
        Error::usage_hint(
            format!("{}: cannot watch files: {e}", path.display()),
            "raise fs.inotify.max_user_watches / max_user_instances (sysctl)",
        )
    } else {
        Error::io(path, std::io::Error::other(e.to_string()))
    }
}
