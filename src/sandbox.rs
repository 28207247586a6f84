//! The agents' sandbox (Linux: Landlock). An agent may write only its
//! workspace, its HOME and TMPDIR as its role sets them, and the paths its
//! role lists; it reads the system and the root (or only what the role
//! lists). Landlock rules only grant, so a role whose workspace holds
//! taskq's own folders (`workspace: root`) runs in a private mount
//! namespace where `tasks/`, `approvals/`, `agents/` and `.git/` are bound
//! read-only. A sandboxed process cannot ptrace (nor read the /proc files
//! of) a process outside its domain; where the kernel has it (ABI 6) it
//! cannot signal one either, nor reach its abstract unix sockets.
//!
//! The ruleset is built in the factory; the child only calls
//! `landlock_restrict_self` (and, in a namespace, a few mount calls)
//! between fork and exec, all async-signal-safe system calls.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `sandbox:` in a role (or config.yaml's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// On where the kernel has Landlock, off (said so) elsewhere.
    #[default]
    Auto,
    /// The role's agents do not start without it.
    Required,
    /// No sandbox (said loudly in `status`).
    Off,
}

impl Mode {
    /// The name roles use.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Required => "required",
            Mode::Off => "off",
        }
    }
}

/// A role's `sandbox:`: a mode (`sandbox: auto`), or a map with the mode
/// and the paths and ports it grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Setting")]
pub struct Policy {
    /// None: config.yaml's `sandbox:`.
    pub mode: Option<Mode>,
    /// More paths the agent may write (absolute, or from the root;
    /// `{workspace}`, `{root}`, `{agent_id}` replaced).
    pub write: Vec<String>,
    /// When set, the agent reads only these (plus the system, its
    /// workspace and what it may write), not the whole root.
    pub read: Option<Vec<String>>,
    /// When set (and the kernel has ABI 4), the only TCP ports the agent
    /// may connect to or bind.
    pub net: Option<Vec<u16>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Setting {
    Mode(Mode),
    Full(Full),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Full {
    #[serde(default)]
    mode: Option<Mode>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    read: Option<Vec<String>>,
    #[serde(default)]
    net: Option<Vec<u16>>,
}

impl From<Setting> for Policy {
    fn from(s: Setting) -> Policy {
        match s {
            Setting::Mode(m) => Policy {
                mode: Some(m),
                ..Policy::default()
            },
            Setting::Full(f) => Policy {
                mode: f.mode,
                write: f.write,
                read: f.read,
                net: f.net,
            },
        }
    }
}

/// The Landlock ABI version of the running kernel (0: none), asked once.
pub fn abi() -> i32 {
    static ABI: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *ABI.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: LANDLOCK_CREATE_RULESET_VERSION with a null
            // attribute only returns the version (or an error).
            let v = unsafe {
                libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    std::ptr::null::<u8>(),
                    0usize,
                    1u32,
                )
            };
            v.max(0) as i32
        }
        #[cfg(not(target_os = "linux"))]
        {
            0
        }
    })
}

/// The mode a role runs with: its own, else config.yaml's.
pub fn mode(policy: &Policy, default: Mode) -> Mode {
    policy.mode.unwrap_or(default)
}

/// How `status` names an agent's sandbox before it starts: `off (...)`,
/// or `landlock abi N` with `+ mount ns` (a workspace that holds taskq's
/// folders) and `+ net` (ports limited).
pub fn label(policy: &Policy, default: Mode, abi: i32, root_workspace: bool) -> String {
    match (mode(policy, default), abi) {
        (Mode::Off, _) => "off (sandbox: off)".into(),
        (_, ..=0) => "off (no Landlock on this system)".into(),
        (_, abi) => {
            let mut s = format!("landlock abi {abi}");
            if root_workspace {
                s.push_str(" + mount ns");
            }
            if policy.net.is_some() && abi >= 4 {
                s.push_str(" + net");
            }
            s
        }
    }
}

/// What ABI `abi` covers, for `taskq run`'s first lines.
pub fn covers(abi: i32) -> String {
    if abi <= 0 {
        return "none: agents run unsandboxed (Landlock is not available on this kernel or system)"
            .into();
    }
    let mut what = vec![
        "file writes and reads",
        "ptrace and /proc of other processes",
    ];
    if abi >= 2 {
        what.push("renames across folders");
    }
    if abi >= 3 {
        what.push("truncation");
    }
    if abi >= 4 {
        what.push("TCP ports (`sandbox.net`)");
    }
    if abi >= 5 {
        what.push("device ioctls");
    }
    if abi >= 6 {
        what.push("signals and abstract unix sockets outside the agent");
    }
    what.join(", ")
}

/// Whether unprivileged user and mount namespaces work here (asked once,
/// by starting `true` in one): the means for roles whose workspace holds
/// taskq's folders.
pub fn namespaces() -> bool {
    static NS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NS.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            let mut cmd = std::process::Command::new("/bin/sh");
            cmd.args(["-c", ":"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            // SAFETY: unshare(2) is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            cmd.status().is_ok_and(|s| s.success())
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    })
}

/// What one agent's sandbox grants, decided by the factory (plain data;
/// [`Prepared`] turns it into a ruleset just before the start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Writable (and readable) trees.
    pub write: Vec<PathBuf>,
    /// Writable single files (no new entries beside them).
    pub write_files: Vec<PathBuf>,
    /// Readable trees; `/` unless the role narrowed it.
    pub read: Vec<PathBuf>,
    /// TCP ports, when limited.
    pub net: Option<Vec<u16>>,
    /// Bound read-only in a private mount namespace (taskq's folders under
    /// a writable tree).
    pub read_only: Vec<PathBuf>,
    /// Writable trees inside those, bound again (writable) after them.
    pub rebind: Vec<PathBuf>,
}

/// The system folders a narrowed `read:` still reads.
const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt", "/proc", "/sys", "/dev",
    "/run", "/nix", "/tmp",
];

/// What the agent needs: `workspace`, `grants` (HOME/TMPDIR, the role's
/// `write:`), read `narrow` or all, taskq's `protected` folders (any under
/// a writable tree is bound read-only).
pub fn rules(
    workspace: &Path,
    grants: &[PathBuf],
    narrow: Option<&[PathBuf]>,
    net: Option<Vec<u16>>,
    protected: &[PathBuf],
) -> Rules {
    let mut write = vec![workspace.to_path_buf()];
    write.extend(grants.iter().cloned());
    // The terminal, /dev/null and shared memory.
    let write_files: Vec<PathBuf> = ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"]
        .iter()
        .map(PathBuf::from)
        .collect();
    write.push("/dev/shm".into());
    write.push("/dev/pts".into());
    let read = match narrow {
        None => vec![PathBuf::from("/")],
        Some(list) => SYSTEM
            .iter()
            .map(PathBuf::from)
            .chain(list.iter().cloned())
            .collect(),
    };
    let read_only: Vec<PathBuf> = protected
        .iter()
        .filter(|p| write.iter().any(|w| p.starts_with(w) && *p != w))
        .cloned()
        .collect();
    // What it may write inside those (its workspace under agents/) is
    // bound again, writable, over the read-only bind.
    let rebind = write
        .iter()
        .filter(|w| read_only.iter().any(|p| w.starts_with(p)))
        .cloned()
        .collect();
    Rules {
        write,
        write_files,
        read,
        net,
        read_only,
        rebind,
    }
}

/// A ruleset ready to apply in the child, with the namespace to make.
#[derive(Debug)]
pub struct Prepared {
    #[cfg(target_os = "linux")]
    ruleset: std::os::fd::OwnedFd,
    ns: Option<Namespace>,
}

#[derive(Debug)]
struct Namespace {
    uid_map: CString,
    gid_map: CString,
    /// Each path with the flags a read-only remount of it must keep.
    binds: Vec<(CString, libc::c_ulong)>,
    /// Bound again, writable, after those (with the flags to keep).
    rebind: Vec<(CString, libc::c_ulong)>,
}

/// Builds the ruleset (in the factory). An error names what failed.
#[cfg(target_os = "linux")]
pub fn prepare(rules: &Rules) -> Result<Prepared, String> {
    use landlock::{
        Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd,
        Ruleset, RulesetAttr, RulesetCreatedAttr, Scope, ABI,
    };
    let abi = match abi() {
        ..=0 => return Err("Landlock is not available".into()),
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        _ => ABI::V7,
    };
    let fail = |e: landlock::RulesetError| format!("landlock: {e}");
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(fail)?;
    if rules.net.is_some() && abi >= ABI::V4 {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(fail)?;
    }
    if abi >= ABI::V6 {
        ruleset = ruleset.scope(Scope::from_all(abi)).map_err(fail)?;
    }
    let mut created = ruleset.create().map_err(fail)?;
    // A path that does not exist grants nothing (it cannot be opened).
    let open = |p: &Path| PathFd::new(p).ok();
    for p in &rules.read {
        if let Some(fd) = open(p) {
            created = created
                .add_rule(PathBeneath::new(fd, AccessFs::from_read(abi)))
                .map_err(fail)?;
        }
    }
    for p in &rules.write {
        if let Some(fd) = open(p) {
            created = created
                .add_rule(PathBeneath::new(fd, AccessFs::from_all(abi)))
                .map_err(fail)?;
        }
    }
    let file = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    for p in &rules.write_files {
        if let Some(fd) = open(p) {
            created = created.add_rule(PathBeneath::new(fd, file)).map_err(fail)?;
        }
    }
    if let (Some(ports), true) = (&rules.net, abi >= ABI::V4) {
        for port in ports {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::from_all(abi)))
                .map_err(fail)?;
        }
    }
    let fd: Option<std::os::fd::OwnedFd> = created.into();
    let ruleset = fd.ok_or("Landlock is not available")?;
    let ns = match rules.read_only.is_empty() {
        true => None,
        false => Some(namespace(&rules.read_only, &rules.rebind)?),
    };
    Ok(Prepared { ruleset, ns })
}

#[cfg(not(target_os = "linux"))]
pub fn prepare(_rules: &Rules) -> Result<Prepared, String> {
    Err("the sandbox is Linux only (Landlock)".into())
}

#[cfg(target_os = "linux")]
fn namespace(paths: &[PathBuf], rebind: &[PathBuf]) -> Result<Namespace, String> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let binds = paths
        .iter()
        .filter(|p| p.exists())
        .map(|p| locked_flags(p))
        .collect::<Result<_, _>>()?;
    let line = |id: u32| CString::new(format!("{id} {id} 1")).map_err(|e| e.to_string());
    let rebind = rebind
        .iter()
        .filter(|p| p.exists())
        .map(|p| locked_flags(p))
        .collect::<Result<_, _>>()?;
    Ok(Namespace {
        uid_map: line(uid)?,
        gid_map: line(gid)?,
        binds,
        rebind,
    })
}

/// `path` as a C string, with the mount flags a remount of it inside a
/// user namespace must keep (they are locked).
#[cfg(target_os = "linux")]
fn locked_flags(p: &Path) -> Result<(CString, libc::c_ulong), String> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: statvfs fills `st`, a valid out-pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statvfs {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        ));
    }
    let mut keep: libc::c_ulong = 0;
    for (st_flag, ms) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            keep |= ms;
        }
    }
    Ok((c, keep))
}

impl Prepared {
    /// In the child, between fork and exec: make the namespace, then
    /// restrict this process for good. Only system calls (no allocation).
    ///
    /// # Safety
    /// Call only in a forked child (`pre_exec`).
    #[cfg(target_os = "linux")]
    pub unsafe fn apply(&self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let err = std::io::Error::last_os_error;
        // SAFETY (all below): plain system calls on valid C strings and
        // fds owned by `self`.
        unsafe {
            if let Some(ns) = &self.ns {
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                    return Err(err());
                }
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/uid_map", ns.uid_map.as_bytes())?;
                write_file(c"/proc/self/gid_map", ns.gid_map.as_bytes())?;
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(err());
                }
                for (path, keep) in &ns.binds {
                    let p = path.as_ptr();
                    if libc::mount(
                        p,
                        p,
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                        || libc::mount(
                            std::ptr::null(),
                            p,
                            std::ptr::null(),
                            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | keep,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(err());
                    }
                }
                // A bind copies the read-only flag: remount it writable.
                for (path, keep) in &ns.rebind {
                    let p = path.as_ptr();
                    if libc::mount(
                        p,
                        p,
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                        || libc::mount(
                            std::ptr::null(),
                            p,
                            std::ptr::null(),
                            libc::MS_REMOUNT | libc::MS_BIND | keep,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(err());
                    }
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(err());
            }
            if libc::syscall(
                libc::SYS_landlock_restrict_self,
                self.ruleset.as_raw_fd(),
                0u32,
            ) != 0
            {
                return Err(err());
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` with open/write/close only.
#[cfg(target_os = "linux")]
unsafe fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> std::io::Result<()> {
    // SAFETY: a valid C string; the fd is closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(e);
        }
    }
    Ok(())
}

/// Makes this process non-dumpable: other processes of the same user (an
/// agent with the sandbox off) cannot read its /proc/PID/environ nor
/// ptrace it. Its children become dumpable again at exec.
pub fn harden_factory() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) has no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mode_or_a_map() {
        let p: Policy = serde_yaml::from_str("off").unwrap();
        assert_eq!(p.mode, Some(Mode::Off));
        let p: Policy = serde_yaml::from_str("{write: [out], net: [443]}").unwrap();
        assert_eq!(
            (p.mode, p.write, p.net),
            (None, vec!["out".into()], Some(vec![443]))
        );
        assert!(serde_yaml::from_str::<Policy>("{wrte: [x]}").is_err());
    }

    #[test]
    fn taskq_folders_under_a_writable_tree_are_bound_read_only() {
        let root = PathBuf::from("/r");
        let protected = [root.join("tasks"), root.join("agents")];
        let ws = rules(&root, &[], None, None, &protected);
        assert_eq!(ws.read_only, protected.to_vec());
        assert_eq!(ws.read, vec![PathBuf::from("/")]);
        let own = rules(
            &root.join("agents/workspaces/A-1"),
            &[],
            None,
            None,
            &protected,
        );
        assert!(own.read_only.is_empty());
        let p = Policy::default();
        assert_eq!(label(&p, Mode::Auto, 5, false), "landlock abi 5");
        assert_eq!(label(&p, Mode::Auto, 6, true), "landlock abi 6 + mount ns");
        assert_eq!(label(&p, Mode::Off, 6, true), "off (sandbox: off)");
        assert!(label(&p, Mode::Required, 0, false).starts_with("off"));
    }

    /// Spawn latency of `/bin/true` (prepare + start + exit): plain
    /// (posix_spawn), sandboxed (fork, Landlock), and sandboxed in a mount
    /// namespace. `cargo test --release --lib sandbox::tests::latency --
    /// --ignored --nocapture`; BENCHMARKS.md has the figures.
    #[test]
    #[ignore]
    #[cfg(target_os = "linux")]
    fn latency() {
        use std::os::unix::process::CommandExt;
        use std::time::Instant;
        let dir = std::env::temp_dir().join(format!("taskq-sbx-{}", std::process::id()));
        for d in ["tasks", "approvals", "agents/workspaces/A-1"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let protected = [dir.join("tasks"), dir.join("approvals"), dir.join("agents")];
        let own = rules(
            &dir.join("agents/workspaces/A-1"),
            &[],
            None,
            None,
            &protected,
        );
        let root = rules(&dir, &[], None, None, &protected);
        let run = |rules: Option<&Rules>| {
            let t = Instant::now();
            let mut cmd = std::process::Command::new("/bin/true");
            cmd.process_group(0);
            if let Some(r) = rules {
                let p = std::sync::Arc::new(prepare(r).unwrap());
                // SAFETY: apply makes system calls only.
                unsafe {
                    cmd.pre_exec(move || p.apply());
                }
            }
            assert!(cmd.status().unwrap().success());
            t.elapsed().as_secs_f64() * 1000.0
        };
        let mut samples: [Vec<f64>; 3] = Default::default();
        for _ in 0..200 {
            samples[0].push(run(None));
            samples[1].push(run(Some(&own)));
            samples[2].push(run(Some(&root)));
        }
        for (name, mut v) in ["plain", "landlock", "landlock + mount ns"]
            .into_iter()
            .zip(samples)
        {
            v.sort_by(f64::total_cmp);
            println!(
                "{name:>20}: p50 {:.2} ms, p90 {:.2} ms, min {:.2} ms",
                v[100], v[180], v[0]
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
