//! `taskq service install|uninstall|status`: run the factory of a root in
//! the background the way daemons run, as a systemd user unit (a launchd
//! agent on macOS), started on login (on boot with `loginctl
//! enable-linger`) and restarted when it fails.
//!
//! The unit sets `TASKQ_SERVICE=<unit>`; the factory records it in
//! `agents/factory/runtime.json`, so `taskq status` says it runs as a
//! service.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use serde::Serialize;

use crate::context::Ctx;
use crate::error::{Error, Result};

/// Arguments of `taskq service`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// The service actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Write the unit (`~/.config/systemd/user/taskq-<root>-<hash>.service`;
    /// on macOS a plist in `~/Library/LaunchAgents/`) running `taskq --root
    /// <root> run`, then enable and start it (`systemctl --user`), or print
    /// the commands to run when no user service manager answers.
    Install(InstallArgs),
    /// Stop and disable the unit and remove its file.
    Uninstall(DryRun),
    /// Whether the unit is installed and active, and whether the running
    /// factory was started by it.
    Status,
}

/// Arguments of `taskq service install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Print the unit and what would be run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--dry-run` alone.
#[derive(Debug, clap::Args)]
pub struct DryRun {
    /// Print what would be run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// The unit of one root.
#[derive(Debug, Serialize)]
struct Unit {
    /// `taskq-<root>-<hash>.service` (launchd: `org.taskq.<root>-<hash>`).
    name: String,
    /// Where its file goes.
    path: PathBuf,
    /// The root it runs.
    root: PathBuf,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    unit: &'a str,
    path: &'a Path,
    installed: bool,
    /// `systemctl --user is-active` (null when it cannot be asked).
    active: Option<String>,
    factory_pid: Option<u32>,
    /// The running factory was started by this unit.
    running_as_service: bool,
}

/// Runs `taskq service`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let root = std::fs::canonicalize(&ctx.root.dir).map_err(|e| Error::io(&ctx.root.dir, e))?;
    let unit = unit_for(&root)?;
    match args.action {
        Action::Install(a) => install(ctx, &unit, a.dry_run),
        Action::Uninstall(a) => uninstall(ctx, &unit, a.dry_run),
        Action::Status => status(ctx, &unit),
    }
}

/// A name safe in a unit name: the root's last component, then a hash of
/// its whole path (two roots named alike get two units).
pub fn unit_name(root: &Path) -> String {
    let base: String = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(
            |c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '-',
            },
        )
        .take(40)
        .collect();
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let hash = root
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    let base = base.trim_matches('-');
    match base.is_empty() {
        true => format!("taskq-{:08x}", hash as u32),
        false => format!("taskq-{base}-{:08x}", hash as u32),
    }
}

fn unit_for(root: &Path) -> Result<Unit> {
    let name = unit_name(root);
    let home = || {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| {
                Error::usage_hint("`HOME` is not set", "set HOME to your home directory")
            })
    };
    if cfg!(target_os = "macos") {
        let label = name.replacen("taskq-", "org.taskq.", 1);
        let path = home()?
            .join("Library/LaunchAgents")
            .join(format!("{label}.plist"));
        return Ok(Unit {
            name: label,
            path,
            root: root.to_path_buf(),
        });
    }
    let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|c| !c.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => home()?.join(".config"),
    };
    let name = format!("{name}.service");
    Ok(Unit {
        path: config.join("systemd/user").join(&name),
        name,
        root: root.to_path_buf(),
    })
}

/// A word of a systemd command line or assignment, quoted when it needs
/// to be (`%` is a specifier there: doubled).
fn systemd_quote(s: &str) -> String {
    let s = s.replace('%', "%%");
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c))
    {
        return s;
    }
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The systemd user unit (pure).
pub fn systemd_unit(exe: &Path, root: &Path, name: &str, path_env: &str) -> String {
    let q = |p: &Path| systemd_quote(&p.to_string_lossy());
    format!(
        "# Written by `taskq service install`; removed by `taskq service uninstall`.\n\
         [Unit]\n\
         Description=taskq factory for {root_text}\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         WorkingDirectory={root}\n\
         Environment={service}\n\
         Environment={path}\n\
         ExecStart={exe} --root {root} run\n\
         Restart=on-failure\n\
         RestartSec=10\n\
         # SIGTERM to taskq alone: it stops its agents itself (returning\n\
         # their tasks to ready), then exits.\n\
         KillMode=mixed\n\
         TimeoutStopSec=120\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        root_text = root.display().to_string().replace('%', "%%"),
        root = q(root),
        exe = q(exe),
        service = systemd_quote(&format!("TASKQ_SERVICE={name}")),
        path = systemd_quote(&format!("PATH={path_env}")),
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The launchd agent (pure).
pub fn launchd_plist(exe: &Path, root: &Path, label: &str, path_env: &str) -> String {
    let x = |s: &str| xml_escape(s);
    let log = root.join("agents/logs/service.log");
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>Label</key><string>{label}</string>
  <key>ProgramArguments</key>
  <array><string>{exe}</string><string>--root</string><string>{root}</string><string>run</string></array>
  <key>WorkingDirectory</key><string>{root}</string>
  <key>EnvironmentVariables</key>
  <dict><key>TASKQ_SERVICE</key><string>{label}</string><key>PATH</key><string>{path}</string></dict>
  <key>RunAtLoad</key><true/>
  <key>KeepAlive</key><dict><key>SuccessfulExit</key><false/></dict>
  <key>StandardErrorPath</key><string>{log}</string>
</dict>
</plist>
"#,
        label = x(label),
        exe = x(&exe.to_string_lossy()),
        root = x(&root.to_string_lossy()),
        path = x(path_env),
        log = x(&log.to_string_lossy()),
    )
}

fn unit_text(unit: &Unit) -> Result<String> {
    let exe = std::env::current_exe().map_err(|e| Error::io("the taskq executable", e))?;
    let path_env = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    Ok(match cfg!(target_os = "macos") {
        true => launchd_plist(&exe, &unit.root, &unit.name, &path_env),
        false => systemd_unit(&exe, &unit.root, &unit.name, &path_env),
    })
}

/// The service manager's commands for `verb` (pure).
fn commands(unit: &Unit, verb: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let path = unit.path.to_string_lossy();
    match (cfg!(target_os = "macos"), verb) {
        (true, "install") => vec![s(&["launchctl", "load", "-w", &path])],
        (true, _) => vec![s(&["launchctl", "unload", "-w", &path])],
        (false, "install") => vec![
            s(&["systemctl", "--user", "daemon-reload"]),
            s(&["systemctl", "--user", "enable", "--now", &unit.name]),
        ],
        (false, _) => vec![s(&["systemctl", "--user", "disable", "--now", &unit.name])],
    }
}

/// True when a user service manager can be asked: launchd on macOS; on
/// Linux `systemctl` on the PATH and a user bus (`systemctl --user` needs
/// one: absent in containers and plain ssh sessions without lingering).
fn manager_available() -> bool {
    if cfg!(target_os = "macos") {
        return crate::spawn::find_program("launchctl", None).is_some();
    }
    if crate::spawn::find_program("systemctl", None).is_none() {
        return false;
    }
    let bus = std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|b| !b.is_empty())
        || std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| Path::new(&d).join("bus").exists());
    bus && Command::new("systemctl")
        .args(["--user", "show-environment"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn shell_line(cmd: &[String]) -> String {
    cmd.iter()
        .map(|w| {
            match w
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c))
            {
                true => w.clone(),
                false => format!("'{}'", w.replace('\'', r"'\''")),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs the commands; the first failure is an error with its output.
fn run_all(cmds: &[Vec<String>]) -> Result<()> {
    for c in cmds {
        let out = Command::new(&c[0])
            .args(&c[1..])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(&c[0], e))?;
        if !out.status.success() {
            return Err(Error::conflict_hint(
                format!(
                    "`{}` failed ({}): {}",
                    shell_line(c),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                "see `journalctl --user -xe`; the unit file stays in place",
            ));
        }
    }
    Ok(())
}

fn install(ctx: &Ctx, unit: &Unit, dry_run: bool) -> Result<ExitCode> {
    let text = unit_text(unit)?;
    let cmds = commands(unit, "install");
    if dry_run {
        let mut out = format!("# {}\n{text}", unit.path.display());
        for c in &cmds {
            out.push_str(&format!("# then: {}\n", shell_line(c)));
        }
        if ctx.out.json {
            ctx.out.json(
                &serde_json::json!({"unit": unit.name, "path": unit.path, "text": text,
                "commands": cmds.iter().map(|c| shell_line(c)).collect::<Vec<_>>()}),
            )?;
        } else {
            ctx.out.text(out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(dir) = unit.path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::fsutil::write_atomic(&unit.path, text.as_bytes())?;
    let started = manager_available();
    if started {
        run_all(&cmds)?;
    }
    if ctx.out.json {
        ctx.out.json(
            &serde_json::json!({"unit": unit.name, "path": unit.path, "started": started,
            "commands": cmds.iter().map(|c| shell_line(c)).collect::<Vec<_>>()}),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!("wrote {}\n", unit.path.display());
    let runtime = crate::notify::Runtime::load(&ctx.root);
    if let Some(pid) = super::status::factory_pid(ctx) {
        if runtime.pid != Some(pid) || runtime.service.as_deref() != Some(&unit.name) {
            out.push_str(&format!(
                "note: a factory already runs in this root outside the service (pid {pid}); the service's starts (retrying every 10s) once it stops\n"
            ));
        }
    }
    match started {
        true => out.push_str(&format!(
            "enabled and started {}; it starts again on login (on boot too after `loginctl enable-linger`)\n",
            unit.name
        )),
        false => {
            out.push_str("no user service manager answers here; to start it, run:\n");
            for c in &cmds {
                out.push_str(&format!("  {}\n", shell_line(c)));
            }
        }
    }
    ctx.out.text(out)?;
    Ok(ExitCode::SUCCESS)
}

fn uninstall(ctx: &Ctx, unit: &Unit, dry_run: bool) -> Result<ExitCode> {
    if !unit.path.exists() {
        ctx.out.note(format!(
            "no service installed for this root (no `{}`)\nhint: `taskq service install` writes one",
            unit.path.display()
        ));
        return Ok(ExitCode::from(1));
    }
    let cmds = commands(unit, "uninstall");
    if dry_run {
        let mut out = String::new();
        for c in &cmds {
            out.push_str(&format!("{}\n", shell_line(c)));
        }
        out.push_str(&format!(
            "rm {}\n",
            shell_line(&[unit.path.to_string_lossy().into_owned()])
        ));
        ctx.out.text(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let managed = manager_available();
    if managed {
        run_all(&cmds)?;
    }
    std::fs::remove_file(&unit.path).map_err(|e| Error::io(&unit.path, e))?;
    if managed && !cfg!(target_os = "macos") {
        let _ = run_all(&[vec![
            "systemctl".into(),
            "--user".into(),
            "daemon-reload".into(),
        ]]);
    }
    let mut out = format!("removed {}\n", unit.path.display());
    if !managed {
        out.push_str(
            "no user service manager answers here; if it was started elsewhere, stop it with:\n",
        );
        for c in &cmds {
            out.push_str(&format!("  {}\n", shell_line(c)));
        }
    }
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({"unit": unit.name, "path": unit.path, "removed": true, "stopped": managed}))?;
    } else {
        ctx.out.text(out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn status(ctx: &Ctx, unit: &Unit) -> Result<ExitCode> {
    let installed = unit.path.exists();
    let active = match (installed, cfg!(target_os = "macos"), manager_available()) {
        (true, false, true) => Command::new("systemctl")
            .args(["--user", "is-active", &unit.name])
            .stderr(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        _ => None,
    };
    let factory_pid = super::status::factory_pid(ctx);
    let runtime = crate::notify::Runtime::load(&ctx.root);
    let running_as_service = factory_pid.is_some()
        && runtime.pid == factory_pid
        && runtime.service.as_deref() == Some(&unit.name);
    if ctx.out.json {
        ctx.out.json(&StatusJson {
            unit: &unit.name,
            path: &unit.path,
            installed,
            active,
            factory_pid,
            running_as_service,
        })?;
    } else {
        let mut out = format!(
            "service {}: {}\n",
            unit.name,
            match installed {
                true => format!("installed ({})", unit.path.display()),
                false => "not installed (`taskq service install` installs it)".into(),
            }
        );
        if let Some(a) = &active {
            out.push_str(&format!("systemd: {a}\n"));
        }
        match (factory_pid, running_as_service) {
            (Some(pid), true) => {
                out.push_str(&format!("factory: running as this service (pid {pid})\n"))
            }
            (Some(pid), false) => out.push_str(&format!(
                "factory: running outside the service (pid {pid})\n"
            )),
            (None, _) => out.push_str("factory: not running\n"),
        }
        ctx.out.text(out)?;
    }
    Ok(match installed {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_safe_and_differ_by_path() {
        let a = unit_name(Path::new("/home/me/my proj"));
        let b = unit_name(Path::new("/srv/my proj"));
        assert!(a.starts_with("taskq-my-proj-"), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, unit_name(Path::new("/home/me/my proj")));
        assert!(unit_name(Path::new("/")).starts_with("taskq-"));
    }

    #[test]
    fn the_unit_quotes_paths_and_escapes_specifiers() {
        let u = systemd_unit(
            Path::new("/opt/bin/taskq"),
            Path::new("/home/me/50% done"),
            "taskq-x.service",
            "/usr/bin:/bin",
        );
        assert!(
            u.contains("ExecStart=/opt/bin/taskq --root \"/home/me/50%% done\" run\n"),
            "{u}"
        );
        assert!(
            u.contains("Environment=TASKQ_SERVICE=taskq-x.service\n"),
            "{u}"
        );
        assert!(u.contains("Restart=on-failure\n"), "{u}");
        assert!(u.contains("WantedBy=default.target\n"), "{u}");
        let p = launchd_plist(
            Path::new("/bin/t"),
            Path::new("/a&b"),
            "org.taskq.x",
            "/bin",
        );
        assert!(p.contains("<string>/a&amp;b</string>"), "{p}");
    }
}
