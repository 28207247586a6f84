//! File writes that no reader can ever see half done.
//!
//! [`write_atomic`] writes a hidden temp file in the destination's own
//! directory, fsyncs it, renames it over the destination and fsyncs the
//! directory: a crash leaves either the old file or the new one, never a
//! mix. Temp files start with `.taskq-tmp-`, so scans skip them.
//!
//! The free functions here are those plain operations. A [`Disk`] does the
//! same through a value its owner passes around: [`Disk::plain`] is exactly
//! the free functions; the factory, a long-lived writer doing many small
//! writes per second, uses [`Disk::factory`], which adds (nothing of it is
//! hidden: only writes through that `Disk` behave so):
//!
//! - spare files: a replacement is written into a spare file and
//!   *exchanged* with the destination (`renameat2(RENAME_EXCHANGE)`); the
//!   spare name then holds the old inode for the next write. Readers still
//!   see the old file or the new one, but no inode is created or freed per
//!   write. A spare is rewritten only while no one has it open (whoever
//!   opened the old file before it was replaced still reads it). On ext4
//!   without a journal every freed inode makes each later file creation
//!   scan past it for minutes (`recently_deleted`): measured here, that
//!   cost a factory ~3 ms of kernel time per job.
//! - remembered writes: [`Disk::read`] answers from memory while a file is
//!   still as this `Disk` wrote it (see [`Disk::written_stamp`]).
//! - deferred directory fsyncs: once per directory per step
//!   ([`Disk::flush_dir_syncs`]).
//!
//! And any `Disk` can batch: after [`Disk::stage`], writes (and renames of
//! written files) are held in memory until [`Disk::commit`], which writes
//! them all, starts their writeback together, waits once per file
//! (`fdatasync`), and only then puts each in place, in the order they were
//! made. Every file is still durable before its name points at it; the
//! device sees one batch instead of a write-flush round trip per file.
//! Reads through [`Disk::read`] and [`Disk::exists`] see staged writes.

use std::collections::{BTreeSet, HashMap};
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
    Disk::plain().write(path, bytes)
}

/// Creates `path` with `bytes` only if it does not exist yet (atomically:
/// written to a temp file first, then hard-linked into place). Returns
/// false when the file already existed.
pub fn create_new_atomic(path: &Path, bytes: &[u8]) -> Result<bool> {
    Disk::plain().create_new(path, bytes)
}

/// Renames `from` to `to` (same filesystem), then fsyncs both directories.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    Disk::plain().rename(from, to)
}

/// Reads a whole file, naming it in the error. Only a regular file, not
/// through a symbolic link, and at most [`MAX_FILE`] bytes: anything else
/// is an error, never a hang or an unbounded read (see [`open_regular`]).
pub fn read(path: &Path) -> Result<Vec<u8>> {
    read_whole(path, MAX_FILE)
}

/// Whether `path` exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// The largest file taskq reads whole: a task file it changes, an approval
/// file, a small state file. A larger one is refused with an error naming
/// it (a task file that large is held, see `store`): changing a file means
/// reading all of it, and a 200 MB task once cost the factory 1 GB.
pub const MAX_FILE: u64 = 16 << 20;

/// The most of a task file read to show it or to put it in a prompt (the
/// header alone stops at `frontmatter::MAX_HEADER`); the rest is left out
/// and the reader says so.
pub const MAX_TASK_BODY: u64 = 1 << 20;

/// The most of a result file (`agents/results/<TASK>.md`, an agent's final
/// message) read into another task's prompt or a review; the rest is left
/// out and the prompt says so.
pub const MAX_RESULT: u64 = 64 << 10;

/// The largest config file (`agents/factory/config.yaml`) or role template
/// (`agents/templates/*.md`) taskq reads; a larger one is an error at the
/// file.
pub const MAX_SETTINGS: u64 = 1 << 20;

/// How [`open_regular`] treats a symbolic link at the path itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Refused: the files taskq writes (task files, results, logs,
    /// approvals) are never links, and following one could read anything.
    Refuse,
    /// Followed (to a regular file only): files a person keeps where they
    /// like (the config, role templates).
    Follow,
}

/// Opens `path` for reading only if it is a regular file; `Ok(None)` when
/// it does not exist.
///
/// The open itself can never block: `O_NONBLOCK` makes opening a FIFO
/// (`mkfifo tasks/todo/x.md`) return at once instead of waiting for a
/// writer, and `fstat` on the open file then refuses anything that is not
/// a regular file (a FIFO, a socket, `/dev/zero` behind a link) with an
/// error that names the kind (`is a FIFO (not a regular file)`). With
/// [`Links::Refuse`], `O_NOFOLLOW` refuses a symbolic link at `path`.
/// `O_NONBLOCK` has no effect on reads of regular files, so it stays set.
pub fn open_regular(path: &Path, links: Links) -> Result<Option<File>> {
    Ok(open_regular_sized(path, links)?.map(|(file, _)| file))
}

/// [`open_regular`], also giving the file's size (from the same `fstat`).
pub fn open_regular_sized(path: &Path, links: Links) -> Result<Option<(File, u64)>> {
    Ok(open_regular_meta(path, links)?.map(|(file, m)| (file, m.len())))
}

/// A file's version: a digest of its size, mtime and inode. Two reads of a
/// file with the same version saw the same file (taskq's own rewrites and
/// a person's edits, in place or by rename, all change it). Never 0.
pub fn version(m: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut h = crate::mix::splitmix64(m.len() ^ 0x5851_f42d_4c95_7f2d);
    h = crate::mix::splitmix64(h ^ m.mtime() as u64);
    h = crate::mix::splitmix64(h ^ m.mtime_nsec() as u64);
    h = crate::mix::splitmix64(h ^ m.ino());
    h.max(1)
}

/// The [`version`] of the file at `path` (not through a link); `None` when
/// it is missing.
pub fn version_of(path: &Path) -> Option<u64> {
    fs::symlink_metadata(path).ok().map(|m| version(&m))
}

/// [`open_regular`], also giving the file's metadata (from the same
/// `fstat`).
pub fn open_regular_meta(path: &Path, links: Links) -> Result<Option<(File, fs::Metadata)>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match OpenOptions::new().read(true).custom_flags(flags).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) && links == Links::Refuse => {
            return Err(not_regular(path, "a symbolic link"));
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(Some((file, meta)));
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "a special file"
    };
    Err(not_regular(path, what))
}

/// Refuses to write where a symbolic link stands: taskq's own files are
/// never links, and one found where taskq expects its file is reported
/// and left alone (replacing it would hide it; following it would write
/// wherever it leads).
pub fn refuse_link(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                NotRegular(
                    "is a symbolic link where taskq keeps its own file; taskq writes no file through a link and leaves it alone (remove it to go on)".into(),
                ),
            ),
        }),
        _ => Ok(()),
    }
}

/// Opens (creating it if needed) a file taskq appends to (a log, a
/// history file): never through a symbolic link (`O_NOFOLLOW`), never
/// blocking on a FIFO (`O_NONBLOCK`), and only a regular file.
pub fn open_append(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => not_regular(path, "a symbolic link"),
            _ => Error::io(path, e),
        })?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(not_regular(path, "a special file"));
    }
    Ok(file)
}

fn not_regular(path: &Path, what: &str) -> Error {
    Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            NotRegular(format!("is {what} (not a regular file)")),
        ),
    )
}

/// The error [`open_regular`] gives for a path that exists but is no
/// regular file; [`is_not_regular`] recognises it.
#[derive(Debug)]
struct NotRegular(String);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotRegular {}

/// True for [`open_regular`]'s refusal of a FIFO, device, directory or
/// (with [`Links::Refuse`]) symbolic link: the file is skipped with a
/// warning, not reported as unreadable.
pub fn is_not_regular(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. }
        if source.get_ref().is_some_and(|inner| inner.is::<NotRegular>()))
}

/// The reason alone (`is a FIFO (not a regular file)`) of an
/// [`open_regular`] error, or the I/O error's text: for messages that name
/// the file themselves.
pub fn reason(e: &Error) -> String {
    match e {
        Error::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// At most `cap` bytes of a file, read by [`read_capped`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capped {
    /// The first bytes of the file (all of it unless `truncated`).
    pub bytes: Vec<u8>,
    /// The file is longer than the cap: the rest was not read.
    pub truncated: bool,
}

impl Capped {
    /// The bytes as text (invalid UTF-8 replaced; a character cut by the cap
    /// dropped).
    pub fn text(&self) -> String {
        let mut bytes = &self.bytes[..];
        if self.truncated {
            // A multi-byte character cut in two at the cap.
            if let Err(e) = std::str::from_utf8(bytes) {
                if e.error_len().is_none() {
                    bytes = &bytes[..e.valid_up_to()];
                }
            }
        }
        String::from_utf8_lossy(bytes).into_owned()
    }
}

/// Reads at most `cap` bytes of the regular file at `path` (never a FIFO or
/// device, never through a symbolic link; see [`open_regular`]): memory and
/// time stay bounded whatever the file is. `Ok(None)` when it does not
/// exist.
pub fn read_capped(path: &Path, cap: u64) -> Result<Option<Capped>> {
    use std::io::Read;
    let Some(file) = open_regular(path, Links::Refuse)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    let truncated = bytes.len() as u64 > cap;
    bytes.truncate(usize::try_from(cap).unwrap_or(usize::MAX));
    Ok(Some(Capped { bytes, truncated }))
}

/// A whole regular file of at most `cap` bytes (a larger one is an error
/// naming it and its size); through a symbolic link when `links` says so.
/// A missing file is the usual `NotFound` error.
pub fn read_whole_with(path: &Path, cap: u64, links: Links) -> Result<Vec<u8>> {
    use std::io::Read;
    let Some((file, len)) = open_regular_sized(path, links)? else {
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        return Err(Error::io(path, gone));
    };
    let too_big = || {
        let why = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "is larger than {} (taskq reads at most that much of it)",
                size_text(cap)
            ),
        );
        Error::io(path, why)
    };
    // The size first: a huge file is refused without reading any of it.
    if len > cap {
        return Err(too_big());
    }
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > cap {
        return Err(too_big());
    }
    Ok(bytes)
}

fn read_whole(path: &Path, cap: u64) -> Result<Vec<u8>> {
    read_whole_with(path, cap, Links::Refuse)
}

/// `16 MiB`, `64 KiB`, `300 bytes`: a size for messages.
pub fn size_text(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{bytes} bytes")
    }
}

/// A file's identity for remembered writes and other caches: size, mtime,
/// inode.
pub type Stamp = (u64, std::time::SystemTime, u64);

fn stamp(m: &fs::Metadata) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    Some((m.len(), m.modified().ok()?, m.ino()))
}

/// The [`Stamp`] of the file at `path` now (`None` if it is missing).
pub fn stamp_of(path: &Path) -> Option<Stamp> {
    fs::metadata(path).ok().and_then(|m| stamp(&m))
}

/// What a [`Disk`] last wrote to each path: the bytes and the file's stamp
/// then, or `None` when it moved the file away.
type Written = HashMap<PathBuf, Option<(Vec<u8>, Stamp)>>;

/// How writes reach the disk: a value its owner passes to whatever writes
/// (see the module docs). Each `Disk` has its own staged writes, spares and
/// memory of what it wrote; two never see each other's.
#[derive(Default)]
pub struct Disk {
    /// Writes held until [`Disk::commit`], while staging.
    staged: Option<Vec<Staged>>,
    /// The spare files, when kept.
    spares: Option<Spares>,
    /// What this `Disk` wrote, when it remembers.
    written: Option<Written>,
    /// Directories whose fsync waits for [`Disk::flush_dir_syncs`], when
    /// deferred.
    deferred: Option<BTreeSet<PathBuf>>,
}

impl Disk {
    /// Every write durable at once, nothing held or remembered: what
    /// commands use (and the free functions of this module).
    pub fn plain() -> Disk {
        Disk::default()
    }

    /// The factory's: spare files kept in `spare_dir` (see
    /// `keep_spares`; without them, with a warning, if that
    /// fails), remembered writes, deferred directory fsyncs. Only one
    /// process may use `spare_dir` at a time: the factory holds its run
    /// lock.
    pub fn factory(spare_dir: &Path) -> Disk {
        let mut disk = Disk::plain();
        disk.defer_dir_syncs();
        if let Err(e) = disk.keep_spares(spare_dir) {
            tracing::warn!("{e} (writing without spare files)");
        }
        disk.remember_writes();
        disk
    }

    /// Replaces `path` with `bytes` atomically (see [`write_atomic`]).
    /// While staging, only records the write (see [`Disk::stage`]).
    pub fn write(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        self.write_if(path, bytes, None)
    }

    /// [`Disk::write`] as a compare-and-swap: `expected` is the
    /// [`version`] of the file the bytes were made from. When the file is
    /// no longer that version as the new one takes its place (a person's
    /// editor, a script, anyone who changed, replaced or removed it
    /// meanwhile), their file stays, ours is dropped, and the error is
    /// [`Error::Changed`]: the caller decides again on the new bytes. While
    /// staging, the check happens when the batch is committed; a later
    /// write to the same path keeps the first write's expectation.
    pub fn write_if(&mut self, path: &Path, bytes: &[u8], expected: Option<u64>) -> Result<()> {
        if let Some(list) = self.staged.as_mut() {
            match list.iter_mut().find(|s| s.dest == path) {
                Some(s) => s.bytes = bytes.to_vec(),
                None => list.push(Staged {
                    path: path.to_path_buf(),
                    dest: path.to_path_buf(),
                    bytes: bytes.to_vec(),
                    expected,
                }),
            }
            return Ok(());
        }
        let dir = parent_of(path);
        let mut pending = self.prepare(path, &dir, bytes)?;
        pending.expected = expected;
        if self.written.is_some() {
            pending.bytes = bytes.to_vec();
        }
        self.sync(&mut pending)?;
        self.place(pending)
    }

    /// Drops every staged write (nothing of the batch reaches the disk) and
    /// stops staging: for a batch whose work failed halfway.
    pub fn discard_staged(&mut self) {
        self.staged = None;
    }

    /// True while a write to `path` is staged (its expectation is set).
    pub fn is_staged(&self, path: &Path) -> bool {
        self.staged
            .as_ref()
            .is_some_and(|l| l.iter().any(|s| s.dest == path || s.path == path))
    }

    /// Creates `path` with `bytes` only if it does not exist yet, nor will
    /// once staged writes are committed (see [`create_new_atomic`]).
    /// Returns false when the file already existed.
    pub fn create_new(&mut self, path: &Path, bytes: &[u8]) -> Result<bool> {
        if self.exists(path) {
            return Ok(false);
        }
        let dir = parent_of(path);
        let tmp = temp_path(&dir);
        let mut file = in_dir(&dir, || {
            OpenOptions::new().write(true).create_new(true).open(&tmp)
        })
        .map_err(|e| Error::io(&tmp, e))?;
        let written = file
            .write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(&tmp, e));
        if let Some(w) = self.written.as_mut() {
            w.remove(path);
        }
        let linked = written.and_then(|()| match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(path, e)),
        });
        let _ = fs::remove_file(&tmp);
        if matches!(linked, Ok(true)) {
            self.sync_dir(&dir);
        }
        linked
    }

    /// Renames `from` to `to` (same filesystem), then fsyncs both
    /// directories. A staged file is renamed when it is committed, after it
    /// is written.
    pub fn rename(&mut self, from: &Path, to: &Path) -> Result<()> {
        if let Some(s) = self
            .staged
            .as_mut()
            .and_then(|l| l.iter_mut().find(|s| s.dest == from))
        {
            s.dest = to.to_path_buf();
            return Ok(());
        }
        refuse_link(to)?;
        let to_dir = parent_of(to);
        in_dir(&to_dir, || fs::rename(from, to)).map_err(|e| Error::io(from, e))?;
        if let Some(w) = self.written.as_mut() {
            let known = w.remove(from);
            w.insert(from.to_path_buf(), None);
            match known.flatten() {
                Some(entry) => w.insert(to.to_path_buf(), Some(entry)),
                None => w.remove(to),
            };
        }
        self.sync_dir(&to_dir);
        self.sync_dir(&parent_of(from));
        Ok(())
    }

    /// Reads a whole file, naming it in the error (a staged write is read
    /// as it will be; a remembered one from memory while the file is still
    /// as written: same size, mtime and inode, one `stat`, no open).
    pub fn read(&self, path: &Path) -> Result<Vec<u8>> {
        match self.staged_state(path) {
            Some(Some(bytes)) => Ok(bytes),
            Some(None) => {
                let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
                Err(Error::io(path, gone))
            }
            None => match self.remembered(path) {
                Some(bytes) => Ok(bytes),
                None => read(path),
            },
        }
    }

    /// Whether `path` exists (or will, once staged writes are committed).
    pub fn exists(&self, path: &Path) -> bool {
        match self.staged_state(path) {
            Some(state) => state.is_some(),
            None => path.exists(),
        }
    }

    /// What staged writes make of `path`: `Some(Some(bytes))` its content,
    /// `Some(None)` gone (renamed away), `None` as on disk.
    fn staged_state(&self, path: &Path) -> Option<Option<Vec<u8>>> {
        let list = self.staged.as_ref()?;
        // A file written there (perhaps after another was moved away).
        if let Some(s) = list.iter().find(|s| s.dest == path) {
            return Some(Some(s.bytes.clone()));
        }
        list.iter().any(|s| s.path == path).then_some(None)
    }

    /// From now on, hold writes until [`Disk::commit`]. Only for an owner
    /// that commits before anyone may read them: the factory stages under
    /// the queue lock and commits before it starts an agent or releases
    /// the lock.
    pub fn stage(&mut self) {
        self.staged.get_or_insert_with(Vec::new);
    }

    /// Writes everything staged since [`Disk::stage`] and stops staging:
    /// all files are written, their writeback started together, each
    /// synced, then each put in place in the order the writes were made. On
    /// an error, the files not yet in place are dropped (none is half
    /// written).
    pub fn commit(&mut self) -> Result<()> {
        let Some(list) = self.staged.take() else {
            return Ok(());
        };
        let mut pending = Vec::with_capacity(list.len());
        let mut failed = None;
        for s in list {
            let dir = parent_of(&s.path);
            match self.prepare(&s.path, &dir, &s.bytes) {
                Ok(mut p) => {
                    p.dest = s.dest;
                    p.bytes = s.bytes;
                    p.expected = s.expected;
                    pending.push(p);
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() {
            for p in &pending {
                p.start_sync();
            }
        }
        let mut ready = Vec::with_capacity(pending.len());
        for mut p in pending {
            if failed.is_some() {
                self.discard(&mut p);
                continue;
            }
            match self.sync(&mut p) {
                Ok(()) => ready.push(p),
                Err(e) => failed = Some(e),
            }
        }
        for mut p in ready {
            if failed.is_some() {
                self.discard(&mut p);
                continue;
            }
            if let Err(e) = self.place(p) {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// From now on, directory fsyncs after renames are collected and done
    /// by [`Disk::flush_dir_syncs`], once per directory. Each file is still
    /// synced before its rename, so no reader and no crash ever sees half
    /// a file; a power loss before the flush can only lose the newest
    /// renames (the old files stay). The factory flushes at the end of
    /// every step, before it releases the queue lock: one fsync per
    /// directory per step instead of one per file.
    fn defer_dir_syncs(&mut self) {
        self.deferred.get_or_insert_with(Default::default);
    }

    /// Does the deferred directory fsyncs (see [`Disk::factory`]).
    pub fn flush_dir_syncs(&mut self) {
        let dirs = match self.deferred.as_mut() {
            Some(set) => std::mem::take(set),
            None => return,
        };
        for dir in dirs {
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
        }
    }

    /// fsync a directory so a rename in it is durable (or later, when
    /// deferred). Best effort: some filesystems refuse to open directories
    /// for sync.
    fn sync_dir(&mut self, dir: &Path) {
        if let Some(set) = self.deferred.as_mut() {
            set.insert(dir.to_path_buf());
            return;
        }
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }

    /// From now on, remember what this `Disk` writes: [`Disk::read`]
    /// answers from memory while the file is still as written, and
    /// [`Disk::written_stamp`] tells its own writes from anyone else's
    /// without a `stat`. For the factory, which rereads the task files it
    /// wrote the step before.
    fn remember_writes(&mut self) {
        self.written.get_or_insert_with(Default::default);
    }

    /// Drops what was remembered (the factory does on every rescan).
    pub fn forget_writes(&mut self) {
        if let Some(w) = self.written.as_mut() {
            w.clear();
        }
    }

    fn remember(&mut self, path: &Path, entry: Option<(Vec<u8>, Stamp)>) {
        if let Some(w) = self.written.as_mut() {
            // Bounded: a step writes a few dozen files.
            if w.len() >= 4096 {
                w.clear();
            }
            w.insert(path.to_path_buf(), entry);
        }
    }

    fn remembered(&self, path: &Path) -> Option<Vec<u8>> {
        let (bytes, was) = self.written.as_ref()?.get(path)?.as_ref()?;
        let now = stamp_of(path)?;
        (now == *was).then(|| bytes.clone())
    }

    /// Size and mtime of `path` as this `Disk` last left it: `Some(None)`
    /// when it moved the file away, `None` when it does not know (it does
    /// not remember writes, or did not write `path`).
    pub fn written_stamp(&self, path: &Path) -> Option<Option<(u64, std::time::SystemTime)>> {
        let entry = self.written.as_ref()?.get(path)?;
        Some(entry.as_ref().map(|(_, (len, mtime, _))| (*len, *mtime)))
    }

    /// Remembers a file as placed (see `remember_writes`).
    fn remember_placed(&mut self, p: &Pending) {
        if self.written.is_none() {
            return;
        }
        if p.dest != p.path {
            self.remember(&p.path, None);
        }
        let entry = p
            .file
            .metadata()
            .ok()
            .and_then(|m| stamp(&m))
            .map(|s| (p.bytes.clone(), s));
        self.remember(&p.dest, entry);
    }

    /// Writes `bytes` into a spare (when spares are kept and work for
    /// `dir`) or a new temp file beside `path`; not yet synced.
    fn prepare(&mut self, path: &Path, dir: &Path, bytes: &[u8]) -> Result<Pending> {
        // Spares someone still reads are passed over (see `open_elsewhere`)
        // and kept for later; a few at most, then a new one is made.
        let mut busy = Vec::new();
        let result = self.prepare_spare(path, dir, bytes, &mut busy);
        if let Some(s) = self.spares.as_mut() {
            // Tried last next time.
            s.free.splice(0..0, busy);
        }
        match result {
            Some(p) => Ok(p),
            None => self.prepare_temp(path, dir, bytes),
        }
    }

    /// [`Disk::prepare`] into a spare, if one can be used.
    fn prepare_spare(
        &mut self,
        path: &Path,
        dir: &Path,
        bytes: &[u8],
        busy: &mut Vec<PathBuf>,
    ) -> Option<Pending> {
        for _ in 0..8 {
            // After a few in use, a new one: no one has that open.
            let spare = match busy.len() < 4 {
                true => self.take_spare(dir, path)?,
                false => self.new_spare()?,
            };
            let e = match write_spare(&spare, bytes) {
                Ok(file) => {
                    return Some(Pending {
                        expected: None,
                        path: path.to_path_buf(),
                        dest: path.to_path_buf(),
                        dir: dir.to_path_buf(),
                        bytes: Vec::new(),
                        file,
                        tmp: spare.clone(),
                        spare: Some(spare),
                    })
                }
                Err(e) => e,
            };
            match e.kind() {
                std::io::ErrorKind::WouldBlock => busy.push(spare),
                std::io::ErrorKind::Unsupported => {
                    tracing::warn!("{}: {e} (writing without spare files)", spare.display());
                    self.put_spare(spare);
                    self.refuse_spares(dir);
                    return None;
                }
                // A link or a FIFO planted among the spares is left alone
                // (and never used); a spare linked elsewhere, or not ours,
                // loses only our name.
                _ => {
                    match fs::symlink_metadata(&spare) {
                        Ok(m) if !m.file_type().is_file() => {
                            tracing::warn!(
                                "{}: {e}: not a spare file; left alone",
                                spare.display()
                            );
                        }
                        _ => {
                            let _ = fs::remove_file(&spare);
                        }
                    }
                    return None;
                }
            }
        }
        None
    }

    /// [`Disk::prepare`] into a new temp file beside `path`.
    fn prepare_temp(&mut self, path: &Path, dir: &Path, bytes: &[u8]) -> Result<Pending> {
        let tmp = temp_path(dir);
        let result = (|| {
            let mut file = in_dir(dir, || {
                OpenOptions::new().write(true).create_new(true).open(&tmp)
            })?;
            file.write_all(bytes)?;
            Ok(file)
        })();
        match result {
            Ok(file) => Ok(Pending {
                expected: None,
                path: path.to_path_buf(),
                dest: path.to_path_buf(),
                dir: dir.to_path_buf(),
                bytes: Vec::new(),
                file,
                spare: None,
                tmp,
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(Error::io(&tmp, e))
            }
        }
    }

    fn sync(&mut self, p: &mut Pending) -> Result<()> {
        match p.file.sync_data() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.discard(p);
                Err(Error::io(&p.path, e))
            }
        }
    }

    /// Puts the written file in place (exchanging it with the old one when
    /// it is a spare), then does a staged rename.
    fn place(&mut self, mut p: Pending) -> Result<()> {
        if let Err(e) = refuse_link(&p.path) {
            self.discard(&mut p);
            return Err(e);
        }
        if let Some(expected) = p.expected {
            return self.place_if(p, expected);
        }
        let placed = match p.spare.take() {
            Some(spare) => match exchange(&spare, &p.path) {
                Ok(()) => {
                    self.note_previous(&p.path, &spare);
                    self.put_spare(spare);
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Nothing to exchange with: a new file (the spare is
                    // used up).
                    in_dir(&p.dir, || fs::rename(&spare, &p.path))
                        .map_err(|e| Error::io(&p.path, e))
                }
                Err(_) => {
                    // Another filesystem, or no RENAME_EXCHANGE here: from
                    // now on, temp files in this directory.
                    return self.place_without_spare(p, spare);
                }
            },
            None => fs::rename(&p.tmp, &p.path).map_err(|e| {
                let _ = fs::remove_file(&p.tmp);
                Error::io(&p.path, e)
            }),
        };
        placed?;
        self.after_place(p)
    }

    /// Writes `p` again through a temp file, its spare given back and
    /// spares refused in its directory from now on (no RENAME_EXCHANGE
    /// there).
    fn place_without_spare(&mut self, p: Pending, spare: PathBuf) -> Result<()> {
        self.put_spare(spare);
        self.refuse_spares(&p.dir);
        let bytes = p.bytes_or_read();
        let mut again = self.prepare(&p.path, &p.dir, &bytes)?;
        again.dest.clone_from(&p.dest);
        again.bytes = bytes;
        self.sync(&mut again)?;
        self.place(again)
    }

    /// [`Disk::place`] as a compare-and-swap: the new file is exchanged
    /// with the old one, and the old one, now under the spare's (or temp
    /// file's) name, must be the `expected` version; if it is not, the two
    /// are exchanged back and the write is refused with
    /// [`Error::Changed`]. Nothing a person wrote is ever replaced unseen.
    fn place_if(&mut self, mut p: Pending, expected: u64) -> Result<()> {
        let side = p.spare.clone().unwrap_or_else(|| p.tmp.clone());
        match exchange(&side, &p.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The file is gone (moved or deleted): not ours to create.
                self.discard(&mut p);
                return Err(Error::changed(&p.path, "it was moved or deleted"));
            }
            Err(_) => {
                // No RENAME_EXCHANGE here: check, then rename (a window
                // of a few microseconds instead of none).
                if version_of(&p.path) != Some(expected) {
                    self.discard(&mut p);
                    return Err(Error::changed(&p.path, "it changed"));
                }
                if let Some(spare) = p.spare.take() {
                    return self.place_without_spare(p, spare);
                }
                fs::rename(&p.tmp, &p.path).map_err(|e| {
                    let _ = fs::remove_file(&p.tmp);
                    Error::io(&p.path, e)
                })?;
                return self.after_place(p);
            }
        }
        if version_of(&side) != Some(expected) {
            // Someone's version: put it back where it was.
            let _ = exchange(&side, &p.path);
            self.discard(&mut p);
            return Err(Error::changed(&p.path, "it changed"));
        }
        match p.spare.take() {
            Some(spare) => {
                self.note_previous(&p.path, &spare);
                self.put_spare(spare);
            }
            None => {
                let _ = fs::remove_file(&p.tmp);
            }
        }
        self.after_place(p)
    }

    /// What follows putting a file in place: the directory sync, a staged
    /// rename, remembering it.
    fn after_place(&mut self, p: Pending) -> Result<()> {
        self.sync_dir(&p.dir);
        if p.dest != p.path {
            self.rename(&p.path, &p.dest)?;
        }
        self.remember_placed(&p);
        Ok(())
    }

    fn discard(&mut self, p: &mut Pending) {
        match p.spare.take() {
            Some(spare) => self.put_spare(spare),
            None => {
                let _ = fs::remove_file(&p.tmp);
            }
        }
    }

    /// From now on, writes go through spare files kept in `dir` (created,
    /// with a `.gitignore` of `*`; files already there are reused).
    fn keep_spares(&mut self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let ignore = dir.join(".gitignore");
        if fs::symlink_metadata(&ignore).is_err() {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&ignore)
                .and_then(|mut f| f.write_all(b"*\n"))
                .map_err(|e| Error::io(&ignore, e))?;
        }
        let mut free = Vec::new();
        let mut empty = Vec::new();
        let mut next = 0;
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let (is_empty, digits) = match name.strip_prefix('e') {
                Some(d) => (true, d),
                None => (false, name),
            };
            let Ok(n) = digits.parse::<u64>() else {
                continue;
            };
            next = next.max(n + 1);
            // Regular files only: a link or a FIFO planted here is left
            // alone, never written through.
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.file_type().is_file() {
                tracing::warn!(
                    "{}: not a regular file; not used as a spare",
                    entry.path().display()
                );
                continue;
            }
            let size = meta.len();
            if is_empty && size == 0 {
                empty.push(entry.path());
            } else {
                free.push(entry.path());
            }
        }
        self.spares = Some(Spares {
            dir: dir.to_path_buf(),
            free,
            empty,
            next,
            refused: Vec::new(),
            twin: HashMap::new(),
        });
        Ok(())
    }

    /// Stops using spare files and empties them (their inodes stay for the
    /// next run; what they held was replaced content). Dropping a `Disk`
    /// does it too.
    pub fn release_spares(&mut self) {
        if let Some(s) = self.spares.take() {
            use std::os::unix::fs::OpenOptionsExt;
            for f in s.free {
                // Never through a link someone put in a spare's place, nor
                // under someone who still reads it (see `open_elsewhere`).
                let file = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(f);
                if let Ok(file) = file {
                    if matches!(open_elsewhere(&file), Ok(false)) {
                        let _ = file.set_len(0);
                    }
                }
            }
        }
    }

    /// Puts an empty spare file at `path`, which must not exist yet, so
    /// that a log opened there next needs no new inode. False when no
    /// empty spare is kept (or `path` exists): then opening it creates it
    /// as usual.
    pub fn place_empty(&mut self, path: &Path) -> bool {
        let Some(spare) = self.spares.as_mut().and_then(|s| s.empty.pop()) else {
            return false;
        };
        // No directory sync: where a log is matters only while it runs.
        if rename_noreplace(&spare, path).is_ok() {
            return true;
        }
        if let Some(s) = self.spares.as_mut() {
            s.empty.push(spare);
        }
        false
    }

    /// Takes the inode of the empty file `path` (a log an agent left
    /// empty) back as an empty spare, and leaves in its place a hard link
    /// to one shared, read-only empty file: the log still exists, and no
    /// inode is made or freed per job. Not done when some process still
    /// has the file open for writing (a read lease is refused then: a
    /// process that outlived its agent could still write). True when it
    /// was done.
    pub fn recycle_empty(&mut self, path: &Path) -> bool {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let Some(spares) = self.spares.as_mut() else {
                return false;
            };
            let Ok(Some(file)) = open_regular(path, Links::Refuse) else {
                return false;
            };
            // Only a plain empty log with no other name.
            if !file.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.is_file() && m.len() == 0 && m.nlink() == 1 && !m.permissions().readonly()
            }) {
                return false;
            }
            let fd = file.as_raw_fd();
            quiet_lease_breaks(fd);
            // SAFETY: a valid open descriptor; F_SETLEASE takes an int.
            if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } != 0 {
                return false;
            }
            let swapped = swap_for_shared_empty(spares, path);
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
            match swapped {
                Some(spare) => {
                    spares.empty.push(spare);
                    true
                }
                None => false,
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            false
        }
    }

    /// A spare file to write into, if spares are kept and work for `dir`
    /// (a new name when none is free: the file is created when it is
    /// written). Prefers the spare that holds `path`'s previous version
    /// (when the last write to it exchanged one in).
    fn take_spare(&mut self, dir: &Path, path: &Path) -> Option<PathBuf> {
        let s = self.spares.as_mut()?;
        if s.refused.iter().any(|d| d == dir) {
            return None;
        }
        let twin = s
            .twin
            .remove(path)
            .and_then(|t| s.free.iter().position(|f| *f == t))
            .map(|i| s.free.swap_remove(i));
        match twin.or_else(|| s.free.pop()).or_else(|| s.empty.pop()) {
            Some(spare) => Some(spare),
            None => self.new_spare(),
        }
    }

    /// A new spare name (the file is created when it is written).
    fn new_spare(&mut self) -> Option<PathBuf> {
        let s = self.spares.as_mut()?;
        let p = s.dir.join(s.next.to_string());
        s.next += 1;
        Some(p)
    }

    fn put_spare(&mut self, path: PathBuf) {
        if let Some(s) = self.spares.as_mut() {
            s.free.push(path);
        }
    }

    fn refuse_spares(&mut self, dir: &Path) {
        if let Some(s) = self.spares.as_mut() {
            s.refused.push(dir.to_path_buf());
        }
    }

    /// After an exchange, `spare` holds `path`'s previous version: the
    /// next write to the file starts from it (see [`write_spare`]).
    fn note_previous(&mut self, path: &Path, spare: &Path) {
        if let Some(s) = self.spares.as_mut() {
            // Bounded (a twin only helps a file rewritten often).
            if s.twin.len() >= 64 {
                s.twin.clear();
            }
            s.twin.insert(path.to_path_buf(), spare.to_path_buf());
        }
    }
}

impl Drop for Disk {
    /// Empties the spare files (see [`Disk::release_spares`]). Staged
    /// writes must have been committed: dropped, they would be lost.
    fn drop(&mut self) {
        debug_assert!(
            std::thread::panicking() || self.staged.as_ref().is_none_or(Vec::is_empty),
            "a Disk was dropped with staged writes: call Disk::commit first"
        );
        self.release_spares();
    }
}

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Runs `op`, which creates a file in `dir`; when it fails because `dir`
/// is missing, creates `dir` and runs `op` once more. Cheaper than making
/// sure of the directory before every write: the common case costs no
/// system call.
fn in_dir<T>(dir: &Path, mut op: impl FnMut() -> std::io::Result<T>) -> std::io::Result<T> {
    match op() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.is_dir() => {
            fs::create_dir_all(dir)?;
            op()
        }
        result => result,
    }
}

fn temp_path(dir: &Path) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()))
}

/// A new version of a file, written but not yet in place.
struct Pending {
    /// The version the file at `path` must have when this one replaces it
    /// (see [`Disk::write_if`]).
    expected: Option<u64>,
    /// Where it goes.
    path: PathBuf,
    /// Then renamed here (a staged rename), if not `path`.
    dest: PathBuf,
    dir: PathBuf,
    bytes: Vec<u8>,
    file: File,
    /// The spare it was written into, or else a temp file in `dir`.
    spare: Option<PathBuf>,
    tmp: PathBuf,
}

/// Whether a process other than through `file` has its inode open: a
/// spare is the old version of a replaced file, and whoever opened that
/// file before it was replaced (an editor, `sed -i`, `tail -f`, a `taskq`
/// reading it) still reads this inode. Rewriting it would show them
/// another file's bytes under the old name, and `sed -i` saves what it
/// read. A write lease is granted only when no other open file
/// description exists; it is dropped at once. `Err` when the filesystem
/// cannot tell.
#[cfg(target_os = "linux")]
fn open_elsewhere(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    quiet_lease_breaks(fd);
    // SAFETY: a valid open descriptor; F_SETLEASE takes an int.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_WRLCK) } != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(true),
            _ => Err(e),
        };
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    Ok(false)
}

/// Someone opening a file while this process holds a lease on it is
/// signalled to the lease holder, SIGIO by default, whose default action
/// ends the process: SIGURG instead, ignored unless handled.
#[cfg(target_os = "linux")]
fn quiet_lease_breaks(fd: std::os::fd::RawFd) {
    // F_SETSIG (linux/fcntl.h; not in the libc crate).
    const F_SETSIG: libc::c_int = 10;
    // SAFETY: a valid open descriptor; F_SETSIG takes a signal number.
    unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) };
}

#[cfg(not(target_os = "linux"))]
fn open_elsewhere(_: &File) -> std::io::Result<bool> {
    // No RENAME_EXCHANGE either: spares are never used there.
    Ok(false)
}

/// Writes `bytes` into the spare file `spare` (made if missing); not yet
/// synced. [`std::io::ErrorKind::WouldBlock`] when someone still has the
/// spare open (see [`open_elsewhere`]): it is left as it is, for later.
fn write_spare(spare: &Path, bytes: &[u8]) -> std::io::Result<File> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link planted among the spares, never a FIFO.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(spare)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    // An old file with another name elsewhere (a hard-linked backup of the
    // queue): not ours to write. Dropping our name leaves it intact and
    // frees no inode.
    if std::os::unix::fs::MetadataExt::nlink(&file.metadata()?) > 1 {
        return Err(std::io::Error::other("linked elsewhere"));
    }
    match open_elsewhere(&file) {
        Ok(false) => {}
        Ok(true) => return Err(std::io::ErrorKind::WouldBlock.into()),
        // Not our file (another user's task file, replaced): drop it.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {
            return Err(std::io::Error::other(format!("not ours to rewrite: {e}")));
        }
        Err(e) => {
            let why = format!("cannot tell whether someone has it open: {e}");
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, why));
        }
    }
    // Overwrite from the first byte that differs from what the spare holds
    // (often an earlier version of this same file), then cut: a big file
    // changed near its end (the registry) dirties, and syncs, a page or
    // two instead of all of them, and a small one keeps its block
    // (truncating to zero would free and reallocate it). Read, not
    // assumed: the spare may hold anything.
    let mut old = Vec::with_capacity(bytes.len() + 1);
    (&file).take(bytes.len() as u64 + 1).read_to_end(&mut old)?;
    let from = old.iter().zip(bytes).take_while(|(a, b)| a == b).count();
    if from < bytes.len() {
        file.write_all_at(&bytes[from..], from as u64)?;
    }
    if old.len() != bytes.len() {
        file.set_len(bytes.len() as u64)?;
    }
    Ok(file)
}

impl Pending {
    /// Starts the writeback without waiting (so a batch goes together).
    fn start_sync(&self) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open file descriptor; offsets 0, 0 mean the
            // whole file. Only a hint: errors show up in the sync after.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
    }

    /// The bytes written (kept for staged writes and remembered ones; else
    /// read back).
    fn bytes_or_read(&self) -> Vec<u8> {
        if self.bytes.is_empty() {
            fs::read(&self.tmp).unwrap_or_default()
        } else {
            self.bytes.clone()
        }
    }
}

/// A write held until [`Disk::commit`].
struct Staged {
    /// The version the file must have when it is replaced.
    expected: Option<u64>,
    /// The file it replaces (or creates).
    path: PathBuf,
    /// Where the file is renamed after it is written (`path` if not).
    dest: PathBuf,
    bytes: Vec<u8>,
}

/// The spare files of a [`Disk`] (see [`Disk::factory`]).
struct Spares {
    dir: PathBuf,
    free: Vec<PathBuf>,
    /// Empty ones (names `e<n>`), for files that must start empty: logs.
    empty: Vec<PathBuf>,
    /// For new names.
    next: u64,
    /// Directories the spares cannot be exchanged into (another
    /// filesystem, or no RENAME_EXCHANGE there).
    refused: Vec<PathBuf>,
    /// The free spare holding the previous version of a file.
    twin: HashMap<PathBuf, PathBuf>,
}

/// Links the shared empty file in the spares' directory (made, read-only,
/// when missing or full of links) beside `path`, exchanges the link with
/// `path`, and moves what was at `path` into that directory as a new empty
/// spare, returned.
#[cfg(target_os = "linux")]
fn swap_for_shared_empty(spares: &mut Spares, path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let dir = &spares.dir;
    let link = temp_path(&parent_of(path));
    // The shared file in use (each takes 65,000 links on ext4).
    static SHARED: AtomicU64 = AtomicU64::new(0);
    let mut linked = false;
    let first = SHARED.load(Ordering::Relaxed);
    for n in first..first + 4 {
        let shared = dir.join(format!("empty-{n}"));
        if !shared.exists() {
            let made = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&shared)
                .and_then(|f| f.set_permissions(fs::Permissions::from_mode(0o444)));
            if made.is_err() {
                continue;
            }
        }
        // EMLINK past 65,000 links: the next one.
        if fs::hard_link(&shared, &link).is_ok() {
            SHARED.store(n, Ordering::Relaxed);
            linked = true;
            break;
        }
    }
    if !linked {
        return None;
    }
    if exchange(&link, path).is_err() {
        let _ = fs::remove_file(&link);
        return None;
    }
    let spare = dir.join(format!("e{}", spares.next));
    spares.next += 1;
    if rename_noreplace(&link, &spare).is_err() {
        // Keep the log as it was.
        let _ = exchange(&link, path);
        let _ = fs::remove_file(&link);
        return None;
    }
    Some(spare)
}

/// Atomically swaps two paths on one filesystem.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    renameat2(a, b, libc::RENAME_EXCHANGE)
}

#[cfg(target_os = "linux")]
fn renameat2(a: &Path, b: &Path, flags: libc::c_uint) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths, relative to the cwd.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Renames `a` to `b` unless `b` exists.
#[cfg(target_os = "linux")]
fn rename_noreplace(a: &Path, b: &Path) -> std::io::Result<()> {
    renameat2(a, b, libc::RENAME_NOREPLACE)
}

#[cfg(not(target_os = "linux"))]
fn rename_noreplace(a: &Path, b: &Path) -> std::io::Result<()> {
    if b.exists() {
        return Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists));
    }
    fs::rename(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    }

    /// A FIFO named like a task once blocked every command forever in
    /// `open`; a link to /dev/zero grew a reader past 1 GB.
    #[test]
    fn only_regular_files_are_opened_and_never_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("x.md");
        mkfifo(&fifo);
        for links in [Links::Refuse, Links::Follow] {
            let e = open_regular(&fifo, links).unwrap_err();
            assert!(is_not_regular(&e), "{e}");
            assert_eq!(reason(&e), "is a FIFO (not a regular file)");
            assert!(
                e.to_string()
                    .ends_with("x.md: is a FIFO (not a regular file)"),
                "{e}"
            );
        }
        assert!(read(&fifo).is_err());
        assert!(read_capped(&fifo, 10).is_err());
        // Links: refused, or followed to a regular file only.
        let file = dir.path().join("a.md");
        fs::write(&file, "0123456789abcdef").unwrap();
        let link = dir.path().join("link.md");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = open_regular(&link, Links::Refuse).unwrap_err();
        assert_eq!(reason(&e), "is a symbolic link (not a regular file)");
        assert!(open_regular(&link, Links::Follow).unwrap().is_some());
        let zero = dir.path().join("zero.md");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = open_regular(&zero, Links::Follow).unwrap_err();
        assert_eq!(reason(&e), "is a character device (not a regular file)");
        assert!(read_capped(&zero, 10).is_err());
        let e = open_regular(dir.path(), Links::Follow).unwrap_err();
        assert_eq!(reason(&e), "is a directory (not a regular file)");
        assert!(open_regular(&dir.path().join("gone"), Links::Refuse)
            .unwrap()
            .is_none());
        assert!(read_capped(&dir.path().join("gone"), 10).unwrap().is_none());
    }

    #[test]
    fn reads_stop_at_their_cap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.md");
        fs::write(&file, "0123456789abcdef").unwrap();
        let c = read_capped(&file, 10).unwrap().unwrap();
        assert_eq!(
            (c.bytes.as_slice(), c.truncated),
            (&b"0123456789"[..], true)
        );
        let c = read_capped(&file, 16).unwrap().unwrap();
        assert_eq!(
            (c.text().as_str(), c.truncated),
            ("0123456789abcdef", false)
        );
        // A character cut in two by the cap is dropped, not mangled.
        fs::write(&file, "ab→cd").unwrap();
        assert_eq!(read_capped(&file, 3).unwrap().unwrap().text(), "ab");
        // Whole reads refuse a file past their cap, without reading it.
        let e = read_whole_with(&file, 4, Links::Refuse).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("a.md: is larger than 4 bytes (taskq reads at most that much of it)"),
            "{e}"
        );
        assert_eq!(
            read_whole_with(&file, 7, Links::Refuse).unwrap(),
            "ab→cd".as_bytes()
        );
        assert_eq!(size_text(MAX_FILE), "16 MiB");
        assert_eq!(size_text(200 * 1024 * 1024 + 1), "200.0 MiB");
        assert_eq!(size_text(MAX_RESULT), "64 KiB");
    }

    /// A `Disk` with spare files in `dir` only (nothing remembered or
    /// deferred).
    fn with_spares(dir: &Path) -> Disk {
        let mut disk = Disk::plain();
        disk.keep_spares(dir).unwrap();
        disk
    }

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
        // A missing directory is made when a file goes there: by a rename,
        // and by a staged write.
        let moved = dir.path().join("done/deeper/a.md");
        rename(&path, &moved).unwrap();
        assert_eq!(fs::read(&moved).unwrap(), b"two");
        let mut disk = Disk::plain();
        disk.stage();
        let staged = dir.path().join("later/c.md");
        disk.write(&staged, b"c").unwrap();
        assert!(!staged.exists());
        disk.commit().unwrap();
        assert_eq!(fs::read(&staged).unwrap(), b"c");
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn spares_swap_inodes_instead_of_making_new_ones() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spare_dir = dir.path().join("spare");
        let mut disk = with_spares(&spare_dir);
        let path = dir.path().join("tasks/a.md");
        disk.write(&path, b"first version, a long one").unwrap();
        disk.write(&path, b"second").unwrap();
        let mut inodes = std::collections::BTreeSet::new();
        for n in 0..20 {
            let text = format!("version {n}");
            disk.write(&path, text.as_bytes()).unwrap();
            assert_eq!(fs::read_to_string(&path).unwrap(), text);
            inodes.insert(fs::metadata(&path).unwrap().ino());
        }
        // Two inodes take turns: the file's and the spare's.
        assert_eq!(inodes.len(), 2, "{inodes:?}");
        assert_eq!(names(&dir.path().join("tasks")), ["a.md"]);
        assert_eq!(names(&spare_dir).len(), 2, "{:?}", names(&spare_dir));
        disk.release_spares();
        // Without spares: the classic temp file and rename.
        disk.write(&path, b"classic").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"classic");
        assert_eq!(names(&dir.path().join("tasks")), ["a.md"]);
    }

    /// What the chaos suite's `sed -i` met: it opened a task file, the
    /// factory replaced that file (its old inode became a spare) and then
    /// wrote another task into the spare; `sed` read on from its open file
    /// and saved the other task's bytes under the first one's name.
    #[test]
    fn a_replaced_file_someone_still_reads_is_never_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = with_spares(&dir.path().join("spare"));
        let (a, b) = (dir.path().join("a.md"), dir.path().join("b.md"));
        disk.write(&a, b"a, first version\n").unwrap();
        disk.write(&b, b"b, first version\n").unwrap();
        // A reader (an editor, `sed -i`, `tail -f`) opens a.md...
        let mut reader = File::open(&a).unwrap();
        // ...which is replaced: its inode is now a spare...
        disk.write(&a, b"a, second version\n").unwrap();
        // ...and the next writes take spares.
        for n in 0..4 {
            disk.write(&b, format!("b, version {n} of b.md\n").as_bytes())
                .unwrap();
            disk.write(&dir.path().join(format!("c{n}.md")), b"c\n")
                .unwrap();
        }
        // The reader still reads a.md as it was when opened.
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut reader, &mut seen).unwrap();
        assert_eq!(seen, "a, first version\n");
        assert_eq!(fs::read(&a).unwrap(), b"a, second version\n");
        assert_eq!(fs::read(&b).unwrap(), b"b, version 3 of b.md\n");
        // Once it is closed, its inode is a spare like any other: releasing
        // the spares empties those no one holds, and leaves the rest.
        drop(reader);
        let mut reader = File::open(&b).unwrap();
        disk.write(&b, b"b, last\n").unwrap();
        disk.release_spares();
        let mut seen = String::new();
        std::io::Read::read_to_string(&mut reader, &mut seen).unwrap();
        assert_eq!(seen, "b, version 3 of b.md\n");
    }

    #[test]
    fn empty_logs_give_their_inodes_to_the_next_logs() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let mut disk = with_spares(&dir.path().join("spare"));
        let logs = dir.path().join("logs");
        fs::create_dir_all(&logs).unwrap();
        let (a, b, c) = (logs.join("A.log"), logs.join("B.log"), logs.join("C.log"));
        // Still open for writing (a process outlived its agent): kept.
        let writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&a)
            .unwrap();
        let ino_a = fs::metadata(&a).unwrap().ino();
        assert!(!disk.recycle_empty(&a));
        drop(writer);
        assert!(disk.recycle_empty(&a));
        // The log is still there, empty and read-only; its inode is spare.
        let m = fs::metadata(&a).unwrap();
        assert_eq!(m.len(), 0);
        assert!(m.permissions().readonly());
        assert_ne!(m.ino(), ino_a);
        assert!(!disk.recycle_empty(&a), "the shared file is never taken");
        assert!(disk.place_empty(&b));
        assert_eq!(fs::metadata(&b).unwrap().ino(), ino_a);
        assert!(!disk.place_empty(&c), "only one spare so far");
        let mut f = OpenOptions::new().append(true).open(&b).unwrap();
        f.write_all(b"output").unwrap();
        assert!(!disk.recycle_empty(&b), "not empty");
        assert_eq!(fs::read(&a).unwrap(), b"");
        // No temp files are left beside the logs.
        assert_eq!(names(&logs), ["A.log", "B.log"]);
        // A plain Disk keeps no spares: nothing recycled, nothing placed.
        let mut plain = Disk::plain();
        assert!(!plain.place_empty(&c));
        assert!(!c.exists());
    }

    #[test]
    fn partial_rewrites_of_known_spares_always_give_the_whole_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = with_spares(&dir.path().join("spare"));
        disk.remember_writes();
        let paths = [dir.path().join("q/a.json"), dir.path().join("q/b.md")];
        // A deterministic mix: shared prefixes, growing, shrinking, equal,
        // a prefix of the old text, and someone else's edits in between.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for round in 0..300 {
            let path = &paths[next() % 2];
            let base = "x".repeat(next() % 5000);
            let text = match next() % 4 {
                0 => base.clone(),
                1 => format!("{base}{round}"),
                2 => format!("{}{round}", &base[..base.len() / 2]),
                _ => format!("{round}{base}"),
            };
            if next() % 10 == 0 && path.exists() {
                // An edit by someone else, same size: never trusted.
                let old = fs::read(path).unwrap();
                fs::write(path, vec![b'y'; old.len()]).unwrap();
            }
            if next() % 3 == 0 {
                disk.stage();
                disk.write(path, text.as_bytes()).unwrap();
                disk.commit().unwrap();
            } else {
                disk.write(path, text.as_bytes()).unwrap();
            }
            assert_eq!(fs::read_to_string(path).unwrap(), text, "round {round}");
            assert_eq!(disk.read(path).unwrap(), text.as_bytes(), "round {round}");
        }
        disk.forget_writes();
        assert_eq!(disk.written_stamp(&paths[0]), None);
    }

    #[test]
    fn a_hard_linked_copy_of_a_replaced_file_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = with_spares(&dir.path().join("spare"));
        let path = dir.path().join("q/a.md");
        disk.write(&path, b"one").unwrap();
        let backup = dir.path().join("backup-a.md");
        fs::hard_link(&path, &backup).unwrap();
        for n in 0..6 {
            disk.write(&path, format!("version {n}").as_bytes())
                .unwrap();
            disk.write(&dir.path().join("q/b.md"), format!("b {n}").as_bytes())
                .unwrap();
        }
        assert_eq!(fs::read(&backup).unwrap(), b"one");
        assert_eq!(fs::read_to_string(&path).unwrap(), "version 5");
    }

    #[test]
    fn staged_writes_are_read_back_and_land_together_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let todo = dir.path().join("todo/t.md");
        let done = dir.path().join("done/t.md");
        let other = dir.path().join("todo/u.md");
        let mut disk = Disk::plain();
        disk.write(&todo, b"old").unwrap();
        disk.stage();
        disk.write(&todo, b"new").unwrap();
        disk.write(&other, b"made").unwrap();
        // Nothing on disk yet; reads see what will be.
        assert_eq!(fs::read(&todo).unwrap(), b"old");
        assert!(!other.exists());
        assert_eq!(disk.read(&todo).unwrap(), b"new");
        assert!(disk.exists(&other));
        disk.rename(&todo, &done).unwrap();
        assert!(!disk.exists(&todo));
        assert!(disk.read(&todo).is_err());
        assert_eq!(disk.read(&done).unwrap(), b"new");
        assert!(!disk.create_new(&done, b"again").unwrap());
        disk.write(&done, b"newer").unwrap();
        disk.commit().unwrap();
        assert!(!todo.exists());
        assert_eq!(fs::read(&done).unwrap(), b"newer");
        assert_eq!(fs::read(&other).unwrap(), b"made");
        assert_eq!(names(&dir.path().join("todo")), ["u.md"]);
        assert_eq!(names(&dir.path().join("done")), ["t.md"]);
        // Staging ended with the commit: writes go straight to disk.
        disk.write(&other, b"direct").unwrap();
        assert_eq!(fs::read(&other).unwrap(), b"direct");
    }

    #[test]
    fn staging_with_spares_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut disk = with_spares(&dir.path().join("spare"));
        let a = dir.path().join("q/a.md");
        let b = dir.path().join("q/b.md");
        disk.write(&a, b"a0").unwrap();
        for n in 0..5 {
            disk.stage();
            disk.write(&a, format!("a{n}").as_bytes()).unwrap();
            disk.write(&b, format!("b{n}").as_bytes()).unwrap();
            disk.commit().unwrap();
            assert_eq!(fs::read_to_string(&a).unwrap(), format!("a{n}"));
            assert_eq!(fs::read_to_string(&b).unwrap(), format!("b{n}"));
        }
        assert_eq!(names(&dir.path().join("q")), ["a.md", "b.md"]);
    }

    /// No state is shared: what one `Disk` stages, remembers or defers,
    /// another in the same thread (and the free functions) never sees.
    #[test]
    fn two_disks_in_one_thread_do_not_see_each_others_staged_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q/a.md");
        let moved = dir.path().join("q/b.md");
        let mut one = Disk::factory(&dir.path().join("spare"));
        let mut two = Disk::plain();
        one.stage();
        one.write(&path, b"staged by one").unwrap();
        assert_eq!(one.read(&path).unwrap(), b"staged by one");
        assert!(!two.exists(&path));
        assert!(two.read(&path).is_err());
        assert!(!exists(&path));
        // The other writes and renames straight to disk meanwhile.
        two.write(&path, b"written by two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"written by two");
        assert_eq!(one.read(&path).unwrap(), b"staged by one");
        two.stage();
        assert!(!two.exists(&moved));
        two.commit().unwrap();
        one.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"staged by one");
        // One remembers its writes; the other, plain, knows none.
        assert!(one.written_stamp(&path).is_some());
        assert_eq!(two.written_stamp(&path), None);
        two.rename(&path, &moved).unwrap();
        assert_eq!(two.read(&moved).unwrap(), b"staged by one");
        assert!(one.written_stamp(&moved).is_none());
    }
}
