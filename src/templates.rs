//! Files `taskq init` writes, embedded in the binary from this repository
//! (which is itself a taskq root).

/// `(path relative to the root, content)` of every file `init` writes.
pub const INIT_FILES: &[(&str, &str)] = &[
    (
        "agents/templates/research.md",
        include_str!("../agents/templates/research.md"),
    ),
    (
        "agents/templates/builder.md",
        include_str!("../agents/templates/builder.md"),
    ),
    (
        "agents/templates/tester.md",
        include_str!("../agents/templates/tester.md"),
    ),
    (
        "agents/templates/fixer.md",
        include_str!("../agents/templates/fixer.md"),
    ),
    (
        "agents/templates/shell.md",
        include_str!("../agents/templates/shell.md"),
    ),
    (
        "tasks/todo/README.md",
        include_str!("../tasks/todo/README.md"),
    ),
    (
        "tasks/done/README.md",
        include_str!("../tasks/done/README.md"),
    ),
    (
        "approvals/pending/README.md",
        include_str!("../approvals/pending/README.md"),
    ),
    (
        "approvals/approved/README.md",
        include_str!("../approvals/approved/README.md"),
    ),
    (
        "approvals/rejected/README.md",
        include_str!("../approvals/rejected/README.md"),
    ),
    (
        "agents/factory/config.yaml",
        include_str!("../agents/factory/config.yaml"),
    ),
    (".gitignore", GITIGNORE),
];

/// Ignored by git in a taskq root: agent scratch space, logs, locks and
/// the running factory's runtime file.
pub const GITIGNORE: &str = "\
# taskq: agent workspaces and logs are scratch space; locks are per machine.
/agents/workspaces/
/agents/homes/
/agents/logs/
/agents/factory/*.lock
/agents/factory/runtime.json
";

/// Directories `init` creates even when empty.
pub const INIT_DIRS: &[&str] = &[
    "tasks/todo",
    "tasks/done",
    "approvals/pending",
    "approvals/approved",
    "approvals/rejected",
    "agents/templates",
    "agents/factory",
];
