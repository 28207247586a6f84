//! File writes that no reader can ever see half done.
//!
//! [`write_atomic`] writes a hidden temp file in the destination's own
//! directory, fsyncs it, renames it over the destination and fsyncs the
//! directory: a crash leaves either the old file or the new one, never a
//! mix. Temp files start with `.taskq-tmp-`, so scans skip them and
//! `cleanup_temp` can remove ones a crash left behind.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

/// Prefix of every temp file taskq writes.
pub const TEMP_PREFIX: &str = ".taskq-tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replaces `path` with `bytes` atomically (temp file, fsync, rename, fsync
/// of the directory). Creates the parent directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = temp_path(&dir);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        file.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(&dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` with `bytes` only if it does not exist yet (atomically:
/// written to a temp file first, then hard-linked into place). Returns
/// false when the file already existed.
pub fn create_new_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    let dir = parent_of(path);
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let tmp = temp_path(&dir);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e));
    let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    });
    let _ = fs::remove_file(&tmp);
    if matches!(linked, Ok(true)) {
        sync_dir(&dir);
    }
    linked
}

/// Renames `from` to `to` (same filesystem), then fsyncs both directories.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    let to_dir = parent_of(to);
    fs::create_dir_all(&to_dir).map_err(|e| Error::io(&to_dir, e))?;
    fs::rename(from, to).map_err(|e| Error::io(from, e))?;
    sync_dir(&to_dir);
    sync_dir(&parent_of(from));
    Ok(())
}

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| Error::io(path, e))
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_path(dir: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
}

/// Directories whose fsync is deferred (see [`defer_dir_syncs`]).
static DEFERRED: std::sync::Mutex<Option<std::collections::BTreeSet<PathBuf>>> =
    std::sync::Mutex::new(None);

/// From now on, directory fsyncs after renames are collected and done by
/// [`flush_dir_syncs`], once per directory. Each file is still fsynced
/// before its rename, so no reader and no crash ever sees half a file; a
/// power loss before the flush can only lose the newest renames (the old
/// files stay). The factory flushes at the end of every step, before it
/// releases the queue lock: one fsync per directory per step instead of
/// one per file.
pub fn defer_dir_syncs() {
    let mut d = DEFERRED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    d.get_or_insert_with(Default::default);
}

/// Does the deferred directory fsyncs.
pub fn flush_dir_syncs() {
    let dirs = {
        let mut d = DEFERRED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match d.as_mut() {
            Some(set) => std::mem::take(set),
            None => return,
        }
    };
    for dir in dirs {
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    }
}

/// fsync a directory so a rename in it is durable. Best effort: some
/// filesystems refuse to open directories for sync.
fn sync_dir(dir: &Path) {
    {
        let mut d = DEFERRED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(set) = d.as_mut() {
            set.insert(dir.to_path_buf());
            return;
        }
    }
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.md");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!create_new_atomic(&path, b"three").unwrap());
        assert!(create_new_atomic(&dir.path().join("sub/b.md"), b"b").unwrap());
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
