//! Cross-process locks. The only module that touches `fs2`.
//!
//! Since Rust 1.89 std's `File` has inherent `lock`/`try_lock` methods that
//! shadow fs2's trait methods, so fs2 is always called fully qualified here.
//!
//! Two locks exist per root, both under `agents/factory/`:
//! * `queue.lock`: held by every command that writes task files, for the
//!   few milliseconds of one read-modify-write; this is what makes a claim
//!   exactly-once across any number of processes.
//! * `run.lock`: held by `taskq run` for its whole life (one factory per
//!   root); it holds the factory's pid so a second one can name it.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// An exclusive lock, released when dropped.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// Takes the exclusive lock on `path`, waiting up to `timeout`.
    ///
    /// Waits by polling with a short, growing sleep (fs2 has no timed lock);
    /// past the timeout it fails with a conflict naming the holder's pid
    /// when the holder wrote one.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard> {
        let file = open(path)?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(200);
        loop {
            match fs2::FileExt::try_lock_exclusive(&file) {
                Ok(()) => {
                    return Ok(LockGuard {
                        file,
                        path: path.to_path_buf(),
                    })
                }
                Err(e) if is_contended(&e) => {}
                Err(e) => return Err(Error::io(path, e)),
            }
            if start.elapsed() >= timeout {
                let holder = read_pid(path)
                    .map(|pid| format!(" by pid {pid}"))
                    .unwrap_or_default();
                return Err(Error::conflict(format!(
                    "{}: lock held{holder} for more than {} s",
                    path.display(),
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Takes the lock only if it is free right now; `None` when another
    /// process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<LockGuard>> {
        let file = open(path)?;
        match fs2::FileExt::try_lock_exclusive(&file) {
            Ok(()) => Ok(Some(LockGuard {
                file,
                path: path.to_path_buf(),
            })),
            Err(e) if is_contended(&e) => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Records this process's pid in the lock file (for "held by pid N").
    pub fn write_pid(&mut self) -> Result<()> {
        let pid = std::process::id().to_string();
        self.file
            .set_len(0)
            .and_then(|()| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| self.file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = fs2::FileExt::unlock(&self.file);
    }
}

/// The pid written into a lock file, if any.
pub fn read_pid(path: &Path) -> Option<u32> {
    // A regular file only, a few bytes: never a read that waits.
    let pid = crate::fsutil::read_capped(path, 64).ok()??;
    pid.text().trim().parse().ok()
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link, never a FIFO: a lock file taskq writes its
    // pid into stays inside the root.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => crate::fsutil::refuse_link(path)
                .err()
                .unwrap_or_else(|| Error::io(path, e)),
            _ => Error::io(path, e),
        })?;
    match file.metadata() {
        Ok(m) if m.file_type().is_file() => Ok(file),
        Ok(_) => Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "is not a regular file"),
        )),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn is_contended(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.raw_os_error() == fs2::lock_contended_error().raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_waits_then_times_out_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let mut first = LockGuard::acquire(&path, Duration::from_secs(1)).unwrap();
        first.write_pid().unwrap();
        assert!(LockGuard::try_acquire(&path).unwrap().is_none());
        let err = LockGuard::acquire(&path, Duration::from_millis(50)).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(
            err.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        assert!(LockGuard::try_acquire(&path).unwrap().is_some());
    }
}
