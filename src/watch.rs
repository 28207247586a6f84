//! notify → the factory's event channel.
//!
//! The notify callback never blocks for long: it records the event's paths
//! and sends one wake-up only when none is in flight, so a `git checkout`
//! of thousands of files is one message, not thousands. The factory uses
//! the paths only to tell its own writes from anyone else's; any other
//! change means "rescan", never "apply this change": events can be missed
//! (inotify overflow), so the factory's heartbeat rescans too.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use notify::{EventKind, EventKindMask, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{Error, Result};
use crate::mix::{fnv1a, splitmix64};
use crate::root::Root;

/// What the watcher saw since the factory last looked: the changed paths
/// (so the factory can tell its own writes from anyone else's), and
/// whether a wake-up is in flight.
#[derive(Debug, Default)]
pub struct Seen {
    /// Paths of the events (each once), up to [`MAX_PATHS`].
    pub paths: HashSet<PathBuf>,
    /// More events than that, or an event without a path: rescan.
    pub overflow: bool,
    /// A wake-up was sent and not yet taken.
    pub pending: bool,
}

/// Shared between the notify callback and the factory.
pub type Shared = Arc<Mutex<Seen>>;

/// Beyond this many paths an event burst is just "rescan".
pub const MAX_PATHS: usize = 4096;

/// Takes what was seen, clearing it (and the in-flight flag).
pub fn take(shared: &Shared) -> Seen {
    let mut seen = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::mem::take(&mut *seen)
}

/// Watches `tasks/`, `approvals/` and `agents/templates/` (created if
/// missing), and the pause file (`agents/factory/paused`). Keep the returned watcher alive.
pub fn start<E: Send + 'static>(
    root: &Root,
    shared: Shared,
    tx: UnboundedSender<E>,
    make: fn() -> E,
) -> Result<RecommendedWatcher> {
    // Only changes: without the access kinds inotify is not even asked
    // for IN_OPEN, so a `taskq next` reading 10,000 task files costs the
    // factory nothing (with notify 8, whose mask included it, ~30 ms of CPU
    // and at times an overflowed queue and a full rescan).
    let config = notify::Config::default().with_event_kinds(EventKindMask::CORE);
    // `agents/factory` is watched too, for the pause file alone: the
    // factory's own files there (the registry, locks) are no event.
    let factory_dir = root.factory_dir();
    let pause_file = root.pause_file();
    let mut watcher = RecommendedWatcher::new(
        move |res: notify::Result<notify::Event>| match res {
            Ok(mut event) => {
                if matches!(event.kind, EventKind::Access(_)) {
                    return;
                }
                if event
                    .paths
                    .iter()
                    .any(|p| p.parent() == Some(&*factory_dir))
                {
                    event
                        .paths
                        .retain(|p| p.parent() != Some(&*factory_dir) || *p == pause_file);
                    if event.paths.is_empty() {
                        return;
                    }
                }
                let wake = {
                    let mut seen = shared
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if event.paths.is_empty() || seen.paths.len() + event.paths.len() > MAX_PATHS {
                        seen.overflow = true;
                        seen.paths.clear();
                    } else if !seen.overflow {
                        seen.paths.extend(event.paths);
                    }
                    !std::mem::replace(&mut seen.pending, true)
                };
                if wake {
                    let _ = tx.send(make());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error; rescanning");
                let mut seen = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                seen.overflow = true;
            }
        },
        config,
    )
    .map_err(|e| watch_error(&root.dir, e))?;
    for dir in watch_dirs(root) {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        watcher
            .watch(&dir, RecursiveMode::Recursive)
            .map_err(|e| watch_error(&dir, e))?;
    }
    let dir = root.factory_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| watch_error(&dir, e))?;
    Ok(watcher)
}

/// A digest of the files under the watched directories. The heartbeat
/// compares it with the last one and rereads the queue only when it
/// differs: an idle factory over 10,000 tasks then costs a directory walk
/// per heartbeat, not a read and parse of every file (~130 ms).
///
/// With `each_file`, every entry's size, mtime, inode and mode count too
/// (a `stat` each, relative to its directory's descriptor): for a factory
/// without a watcher, which learns of every change this way. With a
/// watcher, inotify reports writes (only an overflow loses them, and that
/// is flagged), so the names and kinds of the entries are enough: what the
/// walk is for then is a file created, removed or renamed where no watch
/// was yet (a folder made just before). That walk needs no `stat` per file
/// (10,000 tasks: ~2 ms instead of 10-20).
pub fn fingerprint(root: &Root, each_file: bool) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut sum: u64 = 0;
    let mut dirs: Vec<(PathBuf, u64)> = watch_dirs(root)
        .into_iter()
        .map(|d| {
            let h = fnv1a(d.as_os_str().as_bytes(), 0);
            (d, h)
        })
        .collect();
    while let Some((dir, dir_hash)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Missing or unreadable now: differs from any clean walk.
            Err(e) => {
                sum = sum.wrapping_add(splitmix64(dir_hash ^ (e.kind() as u64 + 1)));
                continue;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else {
                sum = sum.wrapping_add(splitmix64(dir_hash ^ 0x5eed));
                continue;
            };
            let name_hash = fnv1a(entry.file_name().as_bytes(), dir_hash);
            let mut h = name_hash;
            if each_file {
                if let Ok(m) = entry.metadata() {
                    for v in [
                        m.len(),
                        m.mtime() as u64,
                        m.mtime_nsec() as u64,
                        m.ino(),
                        u64::from(m.mode()),
                    ] {
                        h = splitmix64(h ^ v);
                    }
                }
            }
            // From the directory entry (d_type): no `stat`.
            if let Ok(kind) = entry.file_type() {
                h = splitmix64(h ^ (u64::from(kind.is_dir()) + 2 * u64::from(kind.is_symlink())));
                if kind.is_dir() {
                    dirs.push((entry.path(), name_hash));
                }
            }
            // Order-free (readdir order is not guaranteed).
            sum = sum.wrapping_add(splitmix64(h));
        }
    }
    sum
}

/// The directories the factory reacts to.
pub fn watch_dirs(root: &Root) -> Vec<PathBuf> {
    vec![
        root.dir.join("tasks"),
        root.dir.join("approvals"),
        root.templates_dir(),
    ]
}

/// True when `path` (absolute) is under one of [`watch_dirs`].
pub fn is_watched(root: &Root, path: &std::path::Path) -> bool {
    watch_dirs(root).iter().any(|dir| path.starts_with(dir))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_changes_with_any_file_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let todo = dir.path().join("tasks/todo");
        std::fs::create_dir_all(todo.join("sub")).unwrap();
        std::fs::write(todo.join("a.md"), "a").unwrap();
        std::fs::write(todo.join("sub/b.md"), "b").unwrap();
        let digests = || (fingerprint(&root, true), fingerprint(&root, false));
        let first = digests();
        assert_eq!(digests(), first, "nothing changed");
        let mut seen = vec![first];
        // `names`: whether the names-only digest sees it too.
        let mut changed = |what: &str, names: bool| {
            let (full, by_name) = digests();
            let (last_full, last_by_name) = *seen.last().unwrap();
            assert_ne!(full, last_full, "{what}: the full digest did not change");
            assert_eq!(
                by_name != last_by_name,
                names,
                "{what}: the names-only digest"
            );
            seen.push((full, by_name));
        };
        std::fs::write(todo.join("sub/b.md"), "bb").unwrap();
        changed("a file in a subdirectory rewritten in place", false);
        std::fs::rename(todo.join("a.md"), todo.join("c.md")).unwrap();
        changed("a file renamed", true);
        std::fs::create_dir_all(dir.path().join("approvals/pending")).unwrap();
        changed("a watched directory made", true);
        std::fs::write(dir.path().join("approvals/pending/TASK-1.md"), "").unwrap();
        changed("an empty file added", true);
        std::fs::remove_file(todo.join("c.md")).unwrap();
        changed("a file removed", true);
        // Outside the watched directories: no change.
        std::fs::write(dir.path().join("notes.md"), "x").unwrap();
        assert_eq!(digests(), *seen.last().unwrap());
    }
}
