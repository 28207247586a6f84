//! `taskq service` (issue 17) through the binary, in a temp HOME: the unit
//! it writes, `--dry-run`, uninstall, and `status` naming the service the
//! factory runs as. Without a user bus (a container, CI) nothing asks
//! systemctl: the commands to run are printed instead.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::{taskq_bin, Run, TestRoot};

/// `taskq ARGS` with HOME and XDG_CONFIG_HOME in `home`, and no user bus.
fn taskq_home(root: &TestRoot, home: &Path, args: &[&str]) -> Run {
    let out = root
        .cmd(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("XDG_RUNTIME_DIR")
        .output()
        .unwrap();
    Run::from(out)
}

#[test]
fn install_writes_a_user_unit_and_status_names_the_service() {
    let root = TestRoot::new();
    let home = tempfile::tempdir().unwrap();
    let canonical = std::fs::canonicalize(root.path()).unwrap();
    let dry = taskq_home(&root, home.path(), &["service", "install", "--dry-run"]).ok();
    let exe = std::fs::canonicalize(taskq_bin()).unwrap();
    assert!(
        dry.stdout.contains(&format!(
            "ExecStart={} --root {} run\n",
            exe.display(),
            canonical.display()
        )),
        "{}",
        dry.stdout
    );
    assert!(dry.stdout.contains("Restart=on-failure"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("systemctl --user enable --now taskq-"),
        "{}",
        dry.stdout
    );
    let units = home.path().join("config/systemd/user");
    assert!(!units.exists(), "--dry-run writes nothing");

    let run = taskq_home(&root, home.path(), &["service", "install"]).ok();
    let files: Vec<PathBuf> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        name.starts_with("taskq-") && name.ends_with(".service"),
        "{name}"
    );
    let unit = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        unit.contains(&format!("Environment=TASKQ_SERVICE={name}\n")),
        "{unit}"
    );
    assert!(unit.contains("WantedBy=default.target"), "{unit}");
    assert!(
        run.stdout.contains("no user service manager answers here")
            && run
                .stdout
                .contains(&format!("systemctl --user enable --now {name}")),
        "{}",
        run.stdout
    );

    let status = taskq_home(&root, home.path(), &["service", "status"]).ok();
    assert!(status.stdout.contains("installed"), "{}", status.stdout);
    assert!(
        status.stdout.contains("factory: not running"),
        "{}",
        status.stdout
    );

    // The factory as the unit starts it.
    root.factory("");
    let daemon = root.daemon(&[], &[("TASKQ_SERVICE", &name)]);
    root.wait_factory_started();
    crate::util::wait_for("the runtime file", crate::util::LONG, || {
        root.path().join("agents/factory/runtime.json").exists()
    });
    let s = root.taskq(&["status"]).ok();
    assert!(
        s.stdout
            .contains(&format!("factory: running as service {name} (pid")),
        "{}",
        s.stdout
    );
    let j: Value = serde_json::from_str(&root.taskq(&["--json", "status"]).ok().stdout).unwrap();
    assert_eq!(j["service"], name.as_str());
    let status = taskq_home(&root, home.path(), &["--json", "service", "status"]).ok();
    let j: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(j["running_as_service"], true, "{j}");
    assert_eq!(j["installed"], true, "{j}");
    daemon.wait_after_term();

    let run = taskq_home(&root, home.path(), &["service", "uninstall"]).ok();
    assert!(run.stdout.contains("removed"), "{}", run.stdout);
    assert!(!files[0].exists());
    taskq_home(&root, home.path(), &["service", "status"]).code(1);
    taskq_home(&root, home.path(), &["service", "uninstall"]).code(1);
}
