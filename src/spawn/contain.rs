//! Containment: an agent's whole process tree ends with it, including the
//! processes that left its process group and session (`setsid`, a double
//! fork), which killing the group misses (issue 13, "no orphans").
//!
//! Chosen once, when the factory starts (`TASKQ_CONTAINMENT`: `auto`, the
//! default, `cgroup` or `subreaper`):
//!
//! - **cgroup v2**, where the factory may create cgroups under its own (the
//!   v2 hierarchy as root, or a delegated subtree such as a systemd user
//!   service): the factory moves into a cgroup of its own,
//!   `<its cgroup>/taskq-<root hash>-<pid>`, and each agent runs in a
//!   threaded cgroup below it, `.../<n>`. Every process the agent starts
//!   stays in it, whatever it does with sessions and groups; only one that
//!   writes itself into another cgroup (which takes rights over that
//!   cgroup) gets out. When the agent ends, what is left gets SIGTERM, the
//!   grace period, then SIGKILL while the cgroup is frozen.
//! - **subreaper** otherwise: the factory is a child subreaper
//!   (`PR_SET_CHILD_SUBREAPER`), so its agents' orphans become its own
//!   children instead of init's. When an agent ends, the factory's children
//!   whose environment names it (`TASKQ_AGENT_ID` and `TASKQ_ROOT`) are
//!   ended with all their descendants, and reaped. It misses a process
//!   that drops those variables (`env -i`) before its parent dies, and the
//!   orphans another subreaper below the agent takes.
//!
//! The agent's wrapper shell moves itself into its cgroup (`echo 0 >
//! cgroup.threads`) before it runs anything: a `pre_exec` hook would make
//! std fork the factory instead of using `posix_spawn` (vfork), and copy
//! its page tables for every agent. Cgroups are reused once empty (a
//! `mkdir` and an `rmdir` cost ~100 µs of the factory's thread per agent,
//! a tenth of what a short job costs it). Why threaded, and why each keeps
//! a zombie: see [`Cgroups::create`] and [`pin`].
//!
//! The factory reaps only processes it identified as orphans, by pid
//! (`waitpid(pid, WNOHANG)` after checking the pid is its zombie child
//! with the start time it saw): tokio and std reap their own children by
//! pid, and a `waitpid(-1)` would steal their exit statuses.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The variable that chooses the containment: `auto` (or unset),
/// `cgroup`, `subreaper`.
pub const ENV: &str = "TASKQ_CONTAINMENT";

/// How the factory keeps each agent's process tree together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Containment {
    /// A cgroup v2 per agent, under `base`.
    Cgroup {
        /// `<factory's cgroup>/taskq-<root hash>-<pid>`.
        base: PathBuf,
    },
    /// The factory is a child subreaper.
    Subreaper,
}

impl fmt::Display for Containment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Containment::Cgroup { base } => write!(f, "cgroup v2 ({})", base.display()),
            Containment::Subreaper => f.write_str(
                "subreaper (setsid'd and double-forked processes are killed when their agent \
                 ends; a process that drops TASKQ_AGENT_ID from its environment before it is \
                 orphaned is missed)",
            ),
        }
    }
}

impl Containment {
    /// One line for the factory's start line: `cgroup v2 (<path>)` or
    /// `subreaper`.
    pub fn summary(&self) -> String {
        match self {
            Containment::Cgroup { .. } => self.to_string(),
            Containment::Subreaper => "subreaper".into(),
        }
    }
}

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Auto,
    Cgroup,
    Subreaper,
}

fn want() -> Result<Want> {
    match std::env::var(ENV).unwrap_or_default().as_str() {
        "" | "auto" => Ok(Want::Auto),
        "cgroup" => Ok(Want::Cgroup),
        "subreaper" => Ok(Want::Subreaper),
        other => Err(Error::usage_hint(
            format!("unknown containment `{other}` in {ENV}"),
            "use `auto` (the default), `cgroup` or `subreaper`",
        )),
    }
}

/// The factory's containment state (one per process: the subreaper flag
/// is the process's, and so are its children).
struct State {
    containment: Containment,
    /// `TASKQ_ROOT` as the agents have it (the canonical root).
    root: String,
    me: u32,
    pgid: u32,
    cgroups: Option<Cgroups>,
    /// Adopted agents (started by a factory before a crash): their cgroup
    /// if they have a taskq one; without one, their leftovers are looked
    /// for in all of /proc.
    adopted: HashMap<String, Option<PathBuf>>,
    /// Subreaper: agents started and not ended, and their wrappers' pids
    /// (tokio's children, never reaped here).
    live: HashSet<String>,
    pids: HashSet<u32>,
    /// Leftovers signalled, by pid and start time: reaped once they are
    /// this process's zombies.
    doomed: HashMap<u32, u64>,
    /// Zombie children seen by the last sweep (pid, start time).
    zombies: HashSet<(u32, u64)>,
    /// The agent each foreign child belongs to, by (pid, start time),
    /// so a long-lived orphan's environment is read once.
    owners: HashMap<(u32, u64), Option<String>>,
}

/// The cgroups of one factory.
struct Cgroups {
    /// The factory's cgroup before it moved into `base`.
    home: PathBuf,
    base: PathBuf,
    /// Empty cgroups ready for the next agents.
    spares: Vec<PathBuf>,
    next: u64,
    /// Each running agent's cgroup.
    agents: HashMap<String, PathBuf>,
    /// One zombie per cgroup, reaped at the end (see [`pin`]).
    pins: Vec<std::process::Child>,
}

static STATE: OnceLock<Mutex<State>> = OnceLock::new();

fn state() -> Option<MutexGuard<'static, State>> {
    STATE
        .get()
        .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Sets up the containment for this process's agents (the factory calls
/// it once; later calls return the first answer). `root` is the canonical
/// root, as `TASKQ_ROOT` names it to agents.
pub fn init(root: &Path) -> Result<Containment> {
    if let Some(s) = state() {
        return Ok(s.containment.clone());
    }
    let want = want()?;
    let cgroups = match want {
        Want::Subreaper => None,
        Want::Auto | Want::Cgroup => match Cgroups::create(root) {
            Ok(c) => Some(c),
            Err(why) if want == Want::Cgroup => {
                return Err(Error::usage_hint(
                    format!("{ENV}=cgroup: no writable cgroup v2 for the agents: {why}"),
                    format!("unset {ENV} (or set it to `subreaper`) to contain agents with a child subreaper"),
                ))
            }
            Err(why) => {
                tracing::debug!(%why, "no cgroup v2 for the agents: using a child subreaper");
                None
            }
        },
    };
    let containment = match &cgroups {
        Some(c) => Containment::Cgroup {
            base: c.base.clone(),
        },
        None => {
            // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only sets a flag
            // of this process.
            let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
            if rc != 0 {
                return Err(Error::io(
                    "prctl(PR_SET_CHILD_SUBREAPER)",
                    std::io::Error::last_os_error(),
                ));
            }
            Containment::Subreaper
        }
    };
    // SAFETY: getpgrp has no preconditions.
    let pgid = unsafe { libc::getpgrp() } as u32;
    let _ = STATE.set(Mutex::new(State {
        containment: containment.clone(),
        root: root.display().to_string(),
        me: std::process::id(),
        pgid,
        cgroups,
        adopted: HashMap::new(),
        live: HashSet::new(),
        pids: HashSet::new(),
        doomed: HashMap::new(),
        zombies: HashSet::new(),
        owners: HashMap::new(),
    }));
    Ok(containment)
}

/// The containment in use in this process, if [`init`] ran.
pub fn current() -> Option<Containment> {
    state().map(|s| s.containment.clone())
}

/// Which containment the factory of `root` whose pid is `factory` uses,
/// or, with no factory running, which one `taskq run` would use here.
pub fn describe(root: &Path, factory: Option<u32>) -> String {
    let root = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    if let Some(pid) = factory {
        // A factory with cgroups runs in its own (see `Cgroups::create`).
        let name = base_name(&root, pid);
        return match cgroup_dir_of(pid) {
            Some(base) if base.file_name().is_some_and(|n| *n == *name) => {
                Containment::Cgroup { base }.to_string()
            }
            _ => Containment::Subreaper.to_string(),
        };
    }
    let writable = |dir: &Path| {
        let procs = path_cstring(&dir.join("cgroup.procs"));
        let dir_c = path_cstring(dir);
        // SAFETY: access(2) on NUL-terminated paths.
        unsafe {
            libc::access(dir_c.as_ptr(), libc::W_OK) == 0
                && libc::access(procs.as_ptr(), libc::W_OK) == 0
        }
    };
    match (want(), cgroup_dir_of(std::process::id())) {
        (Ok(Want::Subreaper), _) | (Err(_), _) => Containment::Subreaper.to_string(),
        (_, Some(dir)) if writable(&dir) => format!(
            "cgroup v2 (a cgroup per agent under {}, when `taskq run` starts)",
            dir.display()
        ),
        _ => Containment::Subreaper.to_string(),
    }
}

fn path_cstring(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// `taskq-<hash of the root>-<pid>`: the root's hash tells a restarted
/// factory which dead factories' cgroups were its root's.
fn base_name(root: &Path, pid: u32) -> String {
    format!("taskq-{:08x}-{pid}", root_hash(root))
}

/// FNV-1a of the root's path (32 bits are plenty to tell roots apart).
fn root_hash(root: &Path) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    root.as_os_str()
        .as_bytes()
        .iter()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        })
}

/// The directory of the cgroup v2 process `pid` is in: its `0::` line in
/// /proc/PID/cgroup under the cgroup2 mount of /proc/self/mountinfo.
fn cgroup_dir_of(pid: u32) -> Option<PathBuf> {
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split_whitespace().collect();
        let (mount_root, mount_point) = (*fields.get(3)?, unescape(fields.get(4)?));
        let rel = match mount_root {
            "/" => path,
            r => path.strip_prefix(r)?,
        };
        Some(PathBuf::from(mount_point).join(rel.trim_start_matches('/')))
    })
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                let n = d.iter().fold(0u32, |n, c| n * 8 + u32::from(c - b'0'));
                out.push(n as u8);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cgroups {
    /// Makes this factory's cgroup under its own and moves the factory
    /// into it, or says why it cannot.
    ///
    /// Agents' cgroups are *threaded* children of it: an agent's shell
    /// moves into its cgroup by writing to `cgroup.threads`, which is
    /// cheap. Moving a process between domain cgroups (`cgroup.procs`)
    /// takes a system-wide lock whose writer first waits for an RCU grace
    /// period, milliseconds on a busy machine, during which every fork
    /// waits too: measured, 1,000 `true` jobs took 26% longer (median of
    /// 10) that way. A thread moves only within its domain, so the factory
    /// moves into `base` (once) and its children start there.
    fn create(root: &Path) -> std::result::Result<Cgroups, String> {
        let me = std::process::id();
        let home = cgroup_dir_of(me).ok_or("no cgroup v2 hierarchy is mounted")?;
        remove_stale(&home);
        let base = home.join(base_name(root, me));
        match fs::create_dir(&base) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", base.display())),
        }
        let mut c = Cgroups {
            home,
            base,
            spares: Vec::new(),
            next: 0,
            agents: HashMap::new(),
            pins: Vec::new(),
        };
        if let Err(e) = write_file(&c.base.join("cgroup.procs"), &me.to_string()) {
            let _ = fs::remove_dir(&c.base);
            return Err(format!(
                "cannot move the factory into {}: {e}",
                c.base.display()
            ));
        }
        // A first agent cgroup proves threaded ones can be made.
        match c.make() {
            Ok(cg) => c.spares.push(cg),
            Err(e) => {
                c.close();
                return Err(e);
            }
        }
        Ok(c)
    }

    /// A new threaded cgroup for agents, with its pin.
    fn make(&mut self) -> std::result::Result<PathBuf, String> {
        self.next += 1;
        let cg = self.base.join(self.next.to_string());
        fs::create_dir(&cg).map_err(|e| format!("cannot create {}: {e}", cg.display()))?;
        if let Err(e) = write_file(&cg.join("cgroup.type"), "threaded") {
            let _ = fs::remove_dir(&cg);
            return Err(format!("cannot make {} threaded: {e}", cg.display()));
        }
        if let Some(pin) = pin(&cg) {
            self.pins.push(pin);
        }
        Ok(cg)
    }

    /// An empty cgroup for `agent`.
    fn take(&mut self, agent: &str) -> Option<PathBuf> {
        let cg = match self.spares.pop() {
            Some(cg) => cg,
            None => match self.make() {
                Ok(cg) => cg,
                Err(e) => {
                    tracing::warn!("{e} ({agent} runs without a cgroup of its own)");
                    return None;
                }
            },
        };
        self.agents.insert(agent.to_string(), cg.clone());
        Some(cg)
    }

    /// Reaps the pins, removes the empty cgroups, moves the factory back
    /// and removes its cgroup (unless agents still run in it: an exit on
    /// an error leaves them to the next factory).
    fn close(&mut self) {
        for pin in &mut self.pins {
            let _ = pin.wait();
        }
        for cg in &self.spares {
            remove_tree(cg);
        }
        let _ = write_file(
            &self.home.join("cgroup.procs"),
            &std::process::id().to_string(),
        );
        let _ = fs::remove_dir(&self.base);
    }
}

fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A process that moves into `cg` and exits, left unreaped while the
/// factory runs. Moving a process into a cgroup makes the kernel build the
/// set of cgroups it is in (one per hierarchy: ten on a v1+v2 machine)
/// unless a process with that set exists; a zombie keeps it, and is not a
/// member for `cgroup.events` or a kill. Measured with 2,000 spawns each
/// moving its process in: +100-150 µs per move into an empty cgroup, ~0
/// with the zombie (a thread's move builds the same set).
fn pin(cg: &Path) -> Option<std::process::Child> {
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo 0 >"$0/cgroup.threads""#)
        .arg(cg)
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()
}

/// Removes the empty cgroups that dead factories left (a `kill -9`):
/// the ones still holding processes belong to agents a restarted factory
/// adopts, and are removed when those end.
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("taskq-"))
            .and_then(|n| n.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            remove_tree(&e.path());
        }
    }
}

/// Removes a cgroup and the cgroups below it, deepest first (each only if
/// empty). True when it is gone.
fn remove_tree(cg: &Path) -> bool {
    if let Ok(entries) = fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    fs::remove_dir(cg).is_ok() || !cg.exists()
}

/// True while a process runs in the cgroup or below it.
fn populated(cg: &Path) -> bool {
    let mut buf = [0u8; 128];
    let n = fs::File::open(cg.join("cgroup.events"))
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    // A cgroup that cannot be read (gone) holds nothing.
    n > 0 && !buf[..n].starts_with(b"populated 0")
}

/// The threads in the cgroup and below it (a threaded cgroup lists no
/// processes; a signal to a thread's id goes to its whole process).
fn members(cg: &Path) -> Vec<u32> {
    let mut tids: Vec<u32> = fs::read_to_string(cg.join("cgroup.threads"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(cg) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                tids.extend(members(&e.path()));
            }
        }
    }
    tids
}

/// TERM to everything in the cgroup, `grace`, then KILL to everything in
/// it while it is frozen (no fork can slip through; `cgroup.kill` does not
/// work in threaded cgroups). True once it is empty.
fn end_cgroup(cg: &Path, grace: Duration) -> bool {
    if !populated(cg) {
        return true;
    }
    for tid in members(cg) {
        signal(tid, libc::SIGTERM);
    }
    let until = Instant::now() + grace;
    while populated(cg) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(25));
    }
    let freeze = cg.join("cgroup.freeze");
    let until = Instant::now() + Duration::from_secs(5);
    while populated(cg) && Instant::now() < until {
        let frozen = write_file(&freeze, "1").is_ok();
        if frozen {
            // Frozen when cgroup.events says so; a task stuck in the
            // kernel may take a while: KILL meanwhile anyway.
            let by = Instant::now() + Duration::from_millis(100);
            while !is_frozen(cg) && Instant::now() < by {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        for tid in members(cg) {
            signal(tid, libc::SIGKILL);
        }
        if frozen {
            let _ = write_file(&freeze, "0");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    !populated(cg)
}

fn is_frozen(cg: &Path) -> bool {
    fs::read_to_string(cg.join("cgroup.events")).is_ok_and(|e| e.contains("frozen 1"))
}

fn signal(pid: u32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// Called by `spawn::start` before it starts `agent`: its cgroup (the
/// wrapper moves itself there), if there is one.
pub(super) fn enter(agent: &str) -> Option<PathBuf> {
    let mut s = state()?;
    if let Some(c) = s.cgroups.as_mut() {
        return c.take(agent);
    }
    s.live.insert(agent.to_string());
    None
}

/// Called by `spawn::start` once `agent`'s wrapper runs as `pid`.
pub(super) fn started(pid: u32) {
    if let Some(mut s) = state() {
        if s.cgroups.is_none() {
            s.pids.insert(pid);
        }
    }
}

/// `agent` could not be started: nothing of it runs.
pub(super) fn not_started(agent: &str) {
    if let Some(mut s) = state() {
        release(&mut s, agent, 0, true);
    }
}

/// `agent` (pid `pid`) was started by an earlier factory and is adopted:
/// its cgroup, if a taskq one, is where its leftovers will be.
pub fn adopt(agent: &str, pid: u32) {
    let Some(mut s) = state() else {
        return;
    };
    let cg = cgroup_dir_of(pid).filter(|cg| {
        cg.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("taskq-"))
    });
    s.adopted.insert(agent.to_string(), cg);
}

/// Forgets `agent`: its cgroup goes back to the spares when `emptied`
/// (an adopted agent's is removed, with its dead factory's once empty).
fn release(s: &mut State, agent: &str, pid: u32, emptied: bool) {
    s.live.remove(agent);
    s.pids.remove(&pid);
    if let Some(adopted) = s.adopted.remove(agent) {
        if let Some(cg) = adopted.filter(|_| emptied) {
            remove_tree(&cg);
            // The dead factory's cgroup, with its spare ones, once no
            // other adopted agent runs there.
            if let Some(parent) = cg.parent() {
                remove_tree(parent);
            }
        }
        return;
    }
    if let Some(c) = s.cgroups.as_mut() {
        if let Some(cg) = c.agents.remove(agent) {
            if emptied {
                c.spares.push(cg);
            }
        }
    }
}

/// Cheap, called when `agent` (its wrapper was `pid`) ended: true when
/// nothing of its tree is left (and its state is released); false when
/// [`end_tree`] must run (blocking: it waits for the leftovers to end).
pub fn ended(agent: &str, pid: u32) -> bool {
    let Some(mut s) = state() else {
        return true;
    };
    let cg = match s.adopted.get(agent) {
        Some(None) => return false,
        Some(Some(cg)) => Some(cg.clone()),
        None => s
            .cgroups
            .as_ref()
            .and_then(|c| c.agents.get(agent).cloned()),
    };
    let clean = match cg {
        Some(cg) => !populated(&cg),
        None if s.cgroups.is_some() => true,
        None => {
            let s = &mut *s;
            let mut clean = true;
            for child in foreign_children(s) {
                match child.zombie {
                    // Members of its group, killed with it and reparented
                    // here: no one else waits for them.
                    true if child.pgid == pid => {
                        reap(s.me, child.pid, child.start);
                    }
                    true => {}
                    false => clean &= owner(s, &child).as_deref() != Some(agent),
                }
            }
            clean
        }
    };
    if clean {
        release(&mut s, agent, pid, true);
    }
    clean
}

/// Ends what `agent` left running: TERM, `grace`, KILL; reaps it; then
/// releases the agent. Blocking (it sleeps while the leftovers end).
pub fn end_tree(agent: &str, pid: u32, grace: Duration) {
    let plan = {
        let Some(s) = state() else {
            return;
        };
        match s.adopted.get(agent) {
            Some(Some(cg)) => Plan::Cgroup(cg.clone()),
            Some(None) => Plan::Scan {
                all: true,
                root: s.root.clone(),
            },
            None => match &s.cgroups {
                Some(c) => match c.agents.get(agent) {
                    Some(cg) => Plan::Cgroup(cg.clone()),
                    None => Plan::Nothing,
                },
                None => Plan::Scan {
                    all: false,
                    root: s.root.clone(),
                },
            },
        }
    };
    let emptied = match plan {
        Plan::Nothing => true,
        Plan::Cgroup(cg) => end_cgroup(&cg, grace),
        Plan::Scan { all, root } => {
            end_leftovers(agent, &root, all, grace);
            true
        }
    };
    if let Some(mut s) = state() {
        release(&mut s, agent, pid, emptied);
    }
}

enum Plan {
    Nothing,
    /// The agent's cgroup.
    Cgroup(PathBuf),
    /// Look for the agent's processes by their environment: among this
    /// process's children, or (an adopted agent) in all of /proc.
    Scan {
        all: bool,
        root: String,
    },
}

/// A process, from /proc/PID/stat.
#[derive(Debug, Clone, Copy)]
struct Proc {
    pid: u32,
    ppid: u32,
    pgid: u32,
    start: u64,
    zombie: bool,
}

fn proc_stat(pid: u32) -> Option<Proc> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    Some(Proc {
        pid,
        zombie: matches!(*f.first()?, "Z" | "X"),
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// The children of a process (all its threads').
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// This process's children that are not its agents' wrappers. Orphans
/// are reparented to a subreaper's main thread (the kernel picks its
/// first live thread): one read.
fn foreign_children(s: &State) -> Vec<Proc> {
    fs::read_to_string(format!("/proc/{}/task/{}/children", s.me, s.me))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|p| !s.pids.contains(p))
        .filter_map(proc_stat)
        .collect()
}

/// The agent a child of this process belongs to (cached by pid and start
/// time: a long-lived orphan is read once).
fn owner(s: &mut State, p: &Proc) -> Option<String> {
    let root = &s.root;
    s.owners
        .entry((p.pid, p.start))
        .or_insert_with(|| agent_of(p.pid, root))
        .clone()
}

/// `TASKQ_AGENT_ID` of a process whose `TASKQ_ROOT` is `root`, from its
/// environment (the first 256 KiB of it).
fn agent_of(pid: u32, root: &str) -> Option<String> {
    let mut env = Vec::new();
    fs::File::open(format!("/proc/{pid}/environ"))
        .ok()?
        .take(256 << 10)
        .read_to_end(&mut env)
        .ok()?;
    let (mut agent, mut ours) = (None, false);
    for var in env.split(|b| *b == 0) {
        if let Some(id) = var.strip_prefix(b"TASKQ_AGENT_ID=") {
            agent = Some(String::from_utf8_lossy(id).into_owned());
        } else if let Some(r) = var.strip_prefix(b"TASKQ_ROOT=") {
            ours = r == root.as_bytes();
        }
    }
    agent.filter(|_| ours)
}

/// The wrapper of `agent` (the process that leads its own group and
/// whose environment names the agent and `root`), if it runs: for a
/// factory that recovers an agent whose start a crash cut before its
/// wrapper wrote its pid. Blocking; reads every process's environment.
pub fn leader_of(agent: &str, root: &Path) -> Option<u32> {
    let root = root.display().to_string();
    let me = std::process::id();
    fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| proc_stat(*pid).is_some_and(|p| p.pgid == p.pid && !p.zombie))
        .find(|pid| agent_of(*pid, &root).as_deref() == Some(agent))
}

/// The live processes `agent` left: processes whose environment names it
/// (this process's children, or with `all` every process), and all their
/// descendants.
fn leftovers(agent: &str, root: &str, all: bool) -> Vec<Proc> {
    let me = std::process::id();
    let candidates: Vec<u32> = match all {
        true => fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default(),
        false => children_of_main(me),
    };
    let mut stack: Vec<u32> = candidates
        .into_iter()
        .filter(|p| *p != me && agent_of(*p, root).as_deref() == Some(agent))
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) || seen.len() > 100_000 {
            continue;
        }
        if let Some(p) = proc_stat(pid).filter(|p| !p.zombie) {
            out.push(p);
            stack.extend(children(pid));
        }
    }
    out
}

fn children_of_main(me: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{me}/task/{me}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// TERM to `agent`'s leftovers (and the groups they lead), `grace`,
/// then KILL until none is left; reaps the ones that are this process's.
fn end_leftovers(agent: &str, root: &str, all: bool, grace: Duration) {
    let first = leftovers(agent, root, all);
    if first.is_empty() {
        return;
    }
    let me = std::process::id();
    // SAFETY: getpgrp has no preconditions.
    let my_group = unsafe { libc::getpgrp() } as u32;
    let mut signalled: HashMap<u32, u64> = HashMap::new();
    let mut send = |procs: &[Proc], sig: i32| {
        for p in procs {
            signal(p.pid, sig);
            if p.pgid == p.pid && p.pgid != my_group && p.pgid > 1 {
                // SAFETY: killpg(2) on a group the leftover leads.
                unsafe { libc::killpg(p.pgid as libc::pid_t, sig) };
            }
            signalled.insert(p.pid, p.start);
        }
    };
    send(&first, libc::SIGTERM);
    let poll = Duration::from_millis(if all { 100 } else { 25 });
    let until = Instant::now() + grace;
    while Instant::now() < until {
        std::thread::sleep(poll);
        if leftovers(agent, root, all).is_empty() {
            break;
        }
    }
    for _ in 0..500 {
        let left = leftovers(agent, root, all);
        if left.is_empty() {
            break;
        }
        send(&left, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(10));
    }
    // Reap the ones that are (or become, as their parents die) this
    // process's zombies; the periodic sweep takes the stragglers.
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        signalled.retain(|pid, start| match proc_stat(*pid) {
            Some(p) if p.start == *start => !(p.zombie && p.ppid == me && reap(me, *pid, *start)),
            _ => false,
        });
        if signalled.is_empty() || Instant::now() >= until {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(mut s) = state() {
        s.doomed.extend(signalled);
    }
}

/// Reaps `pid` if it is this process's zombie child started at `start`
/// (only this process can reap it then, so the pid cannot be reused
/// between the check and the wait). True when reaped.
fn reap(me: u32, pid: u32, start: u64) -> bool {
    match proc_stat(pid) {
        Some(p) if p.zombie && p.ppid == me && p.start == start => {
            let mut status = 0;
            // SAFETY: waitpid on one pid, WNOHANG; `status` is a valid
            // pointer.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) == pid as i32 }
        }
        _ => false,
    }
}

/// The subreaper's periodic pass (cheap: one read, plus one per orphan):
/// reaps the orphans that ended (the ones signalled here, and zombies no
/// one reaped since the last pass that are not in the factory's own
/// process group: tokio reaps an agent's wrapper and std a hook or a
/// `git` at once, and `git` runs in the factory's group). Returns the
/// agents whose leftovers still run though their agent ended.
pub fn sweep() -> Vec<String> {
    let Some(mut guard) = state() else {
        return Vec::new();
    };
    let s = &mut *guard;
    if s.cgroups.is_some() {
        return Vec::new();
    }
    let doomed: Vec<(u32, u64)> = s.doomed.iter().map(|(p, t)| (*p, *t)).collect();
    for (pid, start) in doomed {
        match proc_stat(pid) {
            Some(p) if p.start == start && !(p.zombie && reap(s.me, pid, start)) => {}
            _ => {
                s.doomed.remove(&pid);
            }
        }
    }
    let children = foreign_children(s);
    let mut zombies = HashSet::new();
    let mut ended = Vec::new();
    for child in &children {
        let key = (child.pid, child.start);
        if child.zombie {
            if s.zombies.contains(&key) && child.pgid != s.pgid {
                reap(s.me, child.pid, child.start);
            } else {
                zombies.insert(key);
            }
        } else if let Some(agent) = owner(s, child) {
            if !s.live.contains(&agent) && !ended.contains(&agent) {
                ended.push(agent);
            }
        }
    }
    s.zombies = zombies;
    s.owners
        .retain(|(pid, start), _| children.iter().any(|c| c.pid == *pid && c.start == *start));
    ended
}

/// Once, after the factory adopted what a factory before it left running
/// (a `kill -9`, a crash): ends what the agents that ended while no
/// factory watched left behind (their ends were read from the exit-code
/// file, never supervised): the cgroups of this root's dead factories
/// that no adopted agent runs in, and the processes anywhere whose
/// environment names an agent of this root that no one supervises.
/// Blocking; reads every process's environment, once.
pub fn end_stale(grace: Duration) {
    let Some((root, home)) = state().map(|s| {
        let home = match &s.cgroups {
            Some(c) => Some(c.home.clone()),
            None => cgroup_dir_of(s.me),
        };
        (s.root.clone(), home)
    }) else {
        return;
    };
    // Checked when acting, not before: an agent started meanwhile is
    // registered before its process exists.
    let supervised = |agent: &str| {
        state().is_none_or(|s| {
            s.live.contains(agent)
                || s.adopted.contains_key(agent)
                || s.cgroups
                    .as_ref()
                    .is_some_and(|c| c.agents.contains_key(agent))
        })
    };
    let adopted_cgroup =
        |cg: &Path| state().is_none_or(|s| s.adopted.values().any(|a| a.as_deref() == Some(cg)));
    let me = std::process::id();
    let prefix = format!("taskq-{:08x}-", root_hash(Path::new(&root)));
    let bases = home
        .and_then(|h| fs::read_dir(h).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| pid != me && !Path::new(&format!("/proc/{pid}")).exists())
        });
    for base in bases {
        let slots = fs::read_dir(base.path()).into_iter().flatten().flatten();
        for slot in slots.filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
            let cg = slot.path();
            if !adopted_cgroup(&cg) && end_cgroup(&cg, grace) {
                remove_tree(&cg);
            }
        }
        let _ = fs::remove_dir(base.path());
    }
    let mut agents: Vec<String> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter_map(|pid| agent_of(pid, &root))
        .collect();
    agents.sort();
    agents.dedup();
    for agent in agents.iter().filter(|a| !supervised(a)) {
        end_leftovers(agent, &root, true, grace);
    }
}

/// At the factory's exit: the leftovers of agents that ended go (with a
/// short grace), zombies are reaped, empty cgroups removed. Agents still
/// running (an exit on an error) are left to the next factory.
pub fn close() {
    let cgroups = state().and_then(|mut s| s.cgroups.take());
    if let Some(mut c) = cgroups {
        c.close();
        return;
    }
    for agent in sweep() {
        end_tree(&agent, 0, Duration::from_millis(500));
    }
    // The zombies of this last pass need no second sighting: nothing
    // waits for them any more, except the factory's own group's.
    if let Some(s) = state() {
        for child in foreign_children(&s) {
            if child.zombie && child.pgid != s.pgid {
                reap(s.me, child.pid, child.start);
            }
        }
    }
}

/// Whether this process is a subreaper (the periodic sweep runs then).
pub fn is_subreaper() -> bool {
    state().is_some_and(|s| s.cgroups.is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/sys/fs/cgroup"), "/sys/fs/cgroup");
        assert_eq!(unescape(r"/mnt/a\040b"), "/mnt/a b");
        assert_eq!(unescape(r"/x\"), r"/x\");
    }

    #[test]
    fn base_names_differ_by_root_and_pid() {
        let a = base_name(Path::new("/a"), 1);
        assert!(a.starts_with("taskq-") && a.ends_with("-1"), "{a}");
        assert_ne!(a, base_name(Path::new("/b"), 1));
        assert_ne!(a, base_name(Path::new("/a"), 2));
    }

    #[test]
    fn the_environment_names_the_agent_of_this_root_only() {
        // This test process has neither variable.
        assert_eq!(agent_of(std::process::id(), "/r"), None);
    }
}
