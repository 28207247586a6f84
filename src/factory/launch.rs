//! Launching agents: register each as `spawning`, mark its task, then
//! prepare its workspace, prompt, command line and environment, start the
//! processes (several at once), and record their pids.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;

use super::prompt::{self, DependencyResult};
use super::schedule::Start;
use super::session::{new_session_id, resume_session};
use super::step::{tag_last, touch_gate};
use super::{path_str, Factory, Finished, Live};
use crate::agent::{self, Adapter, Invocation, Session};
use crate::approval;
use crate::config::Config;
use crate::error::Result;
use crate::frontmatter;
use crate::frontmatter::Change;
use crate::fsutil;
use crate::registry::{Agent, AgentStatus, Registry};
use crate::role::{Role, Workspace};
use crate::root::Root;
use crate::root::{log_path, workspace_path};
use crate::spawn;
use crate::store::{self, Writer};
use crate::task::{format_timestamp, Status};

/// A scheduled start, by task id.
struct Planned {
    task: String,
    role: Role,
    model: Option<String>,
    workspace: Option<PathBuf>,
    review_of: Option<String>,
}

impl Factory {
    /// Starts the scheduled agents (see the module documentation), and
    /// records the `ended` agents while they start.
    pub(super) fn launch(
        &mut self,
        w: &mut Writer,
        reg: &mut Registry,
        plan: Vec<Start>,
        ended: &mut Vec<(Finished, Option<Live>)>,
    ) -> Result<()> {
        // By id from here on: recording the ended agents may move tasks.
        let plan: Vec<Planned> = plan
            .into_iter()
            .map(|s| Planned {
                task: w.scan.tasks[s.task].id.to_string(),
                role: s.role,
                model: s.model,
                workspace: s.workspace,
                review_of: s.review_of,
            })
            .collect();
        // 1. Register every agent as `spawning` before anything starts.
        let mut spawns = Vec::new();
        for p in plan {
            let i = w.scan.position(&p.task).expect("planned from this scan");
            let t = &w.scan.tasks[i];
            let attempt = if p.review_of.is_some() {
                t.extra().review_errors + 1
            } else {
                t.attempts + 1
            };
            let agent_id = reg.allocate(&p.role.settings.prefix)?;
            let workspace =
                p.workspace
                    .clone()
                    .unwrap_or_else(|| match p.role.settings.workspace {
                        Workspace::Root => PathBuf::new(),
                        Workspace::Dir | Workspace::Worktree => workspace_path(&agent_id),
                    });
            let resumed = if p.review_of.is_none() {
                resume_session(reg, &p.role, &p.task)
            } else {
                None
            };
            let workspace = match resumed.as_ref().and_then(|(_, ws)| ws.clone()) {
                Some(ws) if p.role.settings.workspace == Workspace::Dir => PathBuf::from(ws),
                _ => workspace,
            };
            let resume = resumed.map(|(session, _)| session);
            let session = resume.clone().unwrap_or_else(new_session_id);
            let parent = p
                .review_of
                .clone()
                .or_else(|| t.extra().parent.as_deref().map(str::to_string));
            reg.agents.insert(
                agent_id.clone(),
                Agent {
                    id: agent_id.clone(),
                    role: p.role.name.clone(),
                    task: p.task.clone(),
                    status: AgentStatus::Spawning,
                    adapter: p.role.settings.agent,
                    model: p.model.clone(),
                    model_asked: None,
                    pid: None,
                    pid_start: None,
                    parent,
                    attempt,
                    spawned: w.now,
                    completed: None,
                    exit_code: None,
                    duration_ms: None,
                    cost_usd: None,
                    tokens: None,
                    num_turns: None,
                    session_id: p
                        .role
                        .settings
                        .agent
                        .resumes_sessions()
                        .then(|| session.clone()),
                    result: None,
                    reason: None,
                    workspace: Some(path_str(&workspace)),
                    log: Some(path_str(&log_path(&agent_id))),
                    max_rss_kb: None,
                    branch: None,
                    repo: None,
                    test_status: None,
                    tested_by: None,
                    cancel_task: false,
                    sandbox: Some(crate::sandbox::label(
                        &p.role.settings.sandbox,
                        self.config.sandbox,
                        crate::sandbox::abi(),
                        p.role.settings.workspace == Workspace::Root,
                    )),
                },
            );
            spawns.push((agent_id, p, workspace, session, resume.is_some()));
        }
        reg.save(&self.root, &mut w.disk, w.now)?;
        w.touch(Registry::path(&self.root));
        // 2. Mark the tasks.
        for (agent_id, p, ..) in &spawns {
            let i = w.scan.position(&p.task).expect("still in the scan");
            let role = &p.role;
            let model = p.model.as_deref();
            let note = format!(
                "{agent_id} {} {}",
                role.name,
                model.unwrap_or(role.settings.agent.name())
            );
            if p.review_of.is_some() {
                w.set(
                    i,
                    &[Change::set("assigned", agent_id)],
                    Status::Review,
                    &format!("review by {note}"),
                )?;
            } else {
                w.set(
                    i,
                    &[
                        Change::set("status", "running"),
                        Change::set("assigned", agent_id),
                        Change::set("started", &format_timestamp(w.now)),
                        Change::remove("retry_after"),
                        Change::remove("lease_expires"),
                    ],
                    Status::Running,
                    &note,
                )?;
            }
            tag_last(w, agent_id, None);
            if approval::needs_approval(&w.scan.tasks[i], Some(role), &self.config) {
                touch_gate(w, &self.root, &p.task);
            }
        }
        // The registry, then the tasks, are on disk before any agent
        // starts (written as one batch, see `step`).
        w.disk.commit()?;
        w.settle_versions();
        // 3. Start the children, 4. record their pids.
        let mut batch = Vec::with_capacity(spawns.len());
        for (agent_id, p, workspace, session, resuming) in spawns {
            let i = w.scan.position(&p.task).expect("still in the scan");
            let review = p
                .review_of
                .as_deref()
                .map(|b| (b, reg.agents.get(b).cloned()));
            let prepared = self.prepare_agent(
                w,
                i,
                &agent_id,
                &p.role,
                p.model.as_deref(),
                &workspace,
                &session,
                resuming,
                review,
            );
            batch.push((agent_id, p, workspace, resuming, prepared));
        }
        let mut recorded = Ok(());
        let children = start_all(
            batch
                .iter()
                .map(|b| b.4.as_ref().ok().map(|prepared| &prepared.spec))
                .collect(),
            || {
                // While they start: the ends of the agents they replace,
                // written as one batch.
                w.disk.stage();
                for (f, live) in ended.drain(..) {
                    recorded = self.finish(w, reg, f, live);
                    if recorded.is_err() {
                        break;
                    }
                }
                let committed = match recorded.is_ok() {
                    true => w.disk.commit(),
                    false => {
                        w.disk.discard_staged();
                        Ok(())
                    }
                };
                w.settle_versions();
                if recorded.is_ok() {
                    recorded = committed;
                }
            },
        );
        for ((agent_id, p, workspace, resuming, prepared), child) in batch.into_iter().zip(children)
        {
            let i = w.scan.position(&p.task).expect("still in the scan");
            let role = &p.role;
            let model = p.model.as_deref();
            let started = prepared.and_then(|prepared| {
                let child = child.expect("every prepared agent is started")?;
                let pid = child
                    .id()
                    .ok_or("the process ended before it could be recorded")?;
                Ok(Started {
                    child,
                    pid,
                    worktree: prepared.worktree,
                })
            });
            match started {
                Ok(Started {
                    child,
                    pid,
                    worktree,
                }) => {
                    let a = reg.agents.get_mut(&agent_id).expect("registered above");
                    if let Some((branch, repo)) = worktree {
                        a.branch = Some(branch);
                        a.repo = Some(repo.display().to_string());
                    }
                    a.pid = Some(pid);
                    a.pid_start = spawn::start_time(pid);
                    a.status = AgentStatus::Active;
                    // A task's own `timeout:` wins over its role's.
                    let timeout = w.scan.tasks[i]
                        .extra()
                        .timeout
                        .as_deref()
                        .and_then(|t| crate::duration::parse(t).ok())
                        .unwrap_or(role.settings.timeout);
                    let deadline = Instant::now() + timeout;
                    let parent = a.parent.clone();
                    self.watch_agent(
                        &agent_id,
                        Some(child),
                        pid,
                        a.pid_start,
                        (deadline, timeout),
                        &role.name,
                        parent,
                    );
                    self.stats.spawned += 1;
                    self.last_spawn = Some(Instant::now());
                    let what = if p.review_of.is_some() {
                        "to review"
                    } else {
                        "for"
                    };
                    self.progress(format!(
                        "spawned {agent_id} {what} {} ({}, {}{})",
                        p.task,
                        role.name,
                        model.unwrap_or(role.settings.agent.name()),
                        if resuming {
                            ", resuming its session"
                        } else {
                            ""
                        }
                    ));
                    self.hook("on-spawn",
                        json!({"task": p.task, "agent": agent_id, "role": role.name, "model": model, "status": "active",
                               "workspace": path_str(&workspace), "log": path_str(&log_path(&agent_id))}));
                }
                Err(reason) => {
                    let a = reg.agents.get_mut(&agent_id).expect("registered above");
                    a.status = AgentStatus::Failed;
                    a.completed = Some(w.now);
                    a.reason = Some(reason.clone());
                    self.progress(format!(
                        "could not start {agent_id} for {}: {reason}",
                        p.task
                    ));
                    let role = role.clone();
                    if p.review_of.is_some() {
                        self.review_error(
                            w,
                            i,
                            &role,
                            &format!("could not start the tester: {reason}"),
                        )?;
                    } else {
                        let reason = format!("could not start the agent: {reason}");
                        if reason.contains(NOT_ON_PATH) {
                            // No retry installs a program: failed at once.
                            let r = super::outcome::attempt_refused(&w.scan.tasks[i], &reason);
                            self.write_attempt(w, i, &role, r)?;
                        } else {
                            self.fail_attempt(w, i, &role, &reason)?;
                        }
                    }
                }
            }
        }
        // The rest of the step is written as one batch again.
        w.disk.stage();
        recorded
    }

    /// Prepares the workspace and prompt and builds the command line (the
    /// process is started by [`start_all`]).
    #[allow(clippy::too_many_arguments)]
    fn prepare_agent(
        &mut self,
        w: &mut Writer,
        i: usize,
        agent_id: &str,
        role: &Role,
        model: Option<&str>,
        workspace: &Path,
        session: &str,
        resuming: bool,
        review: Option<(&str, Option<Agent>)>,
    ) -> std::result::Result<Prepared, String> {
        // `run` made the root absolute and canonical.
        let root_abs = self.root.dir.clone();
        let ws_abs = root_abs.join(workspace);
        // A link planted where the agent's workspace goes would run the
        // agent wherever it leads: reported, left alone, not followed.
        if ws_abs != root_abs {
            fsutil::refuse_link(&ws_abs).map_err(|e| e.to_string())?;
        }
        let mut worktree = None;
        if role.settings.workspace == Workspace::Worktree && review.is_none() {
            worktree = Some(self.add_worktree(w, i, agent_id, role, &root_abs, &ws_abs)?);
        }
        if ws_abs != root_abs && !ws_abs.is_dir() {
            std::fs::create_dir_all(&ws_abs).map_err(|e| format!("{}: {e}", ws_abs.display()))?;
        }
        let task = &w.scan.tasks[i];
        let file = w
            .disk
            .read(&self.root.task_path(task))
            .map_err(|e| e.to_string())?;
        let (fields_cmd, body) = prompt::body_and_command(&file);
        let title = store::display_title(&self.root, task);
        let shown_ws = ws_abs.display().to_string();
        let prompt = match &review {
            None => {
                let deps = dependency_results(&self.root, w, i);
                prompt::task_prompt(&task.id, &title, &body, &deps, &shown_ws)
            }
            Some((builder, record)) => {
                let result = read_capped(&self.root.result(&task.id), RESULT_BYTES)
                    .or_else(|| record.as_ref().and_then(|a| a.result.clone()))
                    .unwrap_or_else(|| "(no result text)".into());
                prompt::review_prompt(&task.id, &title, &body, builder, &result, &shown_ws)
            }
        };
        let prompt_file = self.root.prompt(agent_id);
        let full = if role.soul.trim().is_empty() {
            prompt.clone()
        } else {
            format!("{}\n\n---\n\n{prompt}", role.soul.trim())
        };
        // The shell adapter runs the task's own sh blocks: no prompt to keep.
        if role.settings.agent != Adapter::Shell {
            w.disk
                .write(&prompt_file, full.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let inv = Invocation {
            role,
            task_id: &task.id,
            agent_id,
            model,
            prompt: &prompt,
            prompt_file: &prompt_file,
            soul: &role.soul,
            workspace: &ws_abs,
            session: if resuming {
                Session::Resume(session)
            } else {
                Session::New(session)
            },
            task_body: &body,
            task_command: fields_cmd.as_deref(),
            config: &self.config,
        };
        let line = agent::command(&inv)?;
        let mut extra = vec![
            ("TASKQ_ROOT".to_string(), root_abs.display().to_string()),
            ("TASKQ_TASK_ID".to_string(), task.id.to_string()),
            ("TASKQ_AGENT_ID".to_string(), agent_id.to_string()),
            ("TASKQ_ROLE".to_string(), role.name.clone()),
            ("TASKQ_WORKSPACE".to_string(), ws_abs.display().to_string()),
        ];
        static EXE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
        if let Some(me) = EXE.get_or_init(|| std::env::current_exe().ok()) {
            extra.push(("TASKQ_BIN".to_string(), me.display().to_string()));
            // Agents call `taskq approval request`: put taskq on their PATH.
            if let (Some(dir), Ok(path)) = (me.parent(), std::env::var("PATH")) {
                if role.settings.env.iter().any(|e| e == "PATH") {
                    extra.push(("PATH".to_string(), format!("{}:{path}", dir.display())));
                }
            }
        }
        for (k, v) in &role.settings.set_env {
            let v = expand_set_env(v, &ws_abs, &root_abs, agent_id);
            // Config and temp dirs an agent is pointed at must exist (codex
            // panics on a missing TMPDIR).
            if (k.ends_with("HOME") || k.ends_with("DIR")) && Path::new(&v).is_absolute() {
                let _ = std::fs::create_dir_all(&v);
            }
            extra.push((k.clone(), v));
        }
        extra.extend(line.env.iter().cloned());
        // The agent's secret for the agent API, last: no role setting
        // replaces it. In memory and in the agent's environment only.
        let token = self.new_token(agent_id)?;
        extra.push((crate::agent_api::TOKEN_VAR.to_string(), token));
        let env = spawn::environment(&role.settings.env, &extra);
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let key = (line.program.clone(), path.map(str::to_string));
        if !self.found.contains(&key) {
            if spawn::find_program(&line.program, path).is_none() {
                return Err(format!("`{}` {NOT_ON_PATH}", line.program));
            }
            self.found.insert(key);
        }
        // A recycled empty file as the log, when there is one: no new inode.
        w.disk.place_empty(&self.root.log(agent_id));
        let sandbox = sandbox_rules(role, self.config.sandbox, &root_abs, &ws_abs, &env)?;
        let mut line = line;
        if sandbox.is_some()
            && role.settings.agent == Adapter::Codex
            && role.settings.permission_mode.is_none()
        {
            // Codex's own sandbox needs bubblewrap, whose mounts Landlock
            // refuses inside ours; ours confines its writes the same way
            // (the workspace), so codex runs without its own.
            if let Some(i) = line.args.iter().position(|a| a == "--sandbox") {
                if let Some(mode) = line.args.get_mut(i + 1) {
                    *mode = "danger-full-access".into();
                }
            }
        }
        let spec = spawn::Spec {
            program: line.program,
            args: line.args,
            env,
            cwd: ws_abs,
            log: self.root.log(agent_id),
            exit_file: self.root.exit_codes(),
            exit_tag: agent_id.to_string(),
            sandbox,
        };
        Ok(Prepared { spec, worktree })
    }

    /// `git worktree add agents/workspaces/<agent-id> -b taskq/<task-id>`
    /// in the root's repository, or the task's `repo:`, from the task's
    /// `base:` or the role's (default HEAD). Returns `(branch, repo top)`.
    fn add_worktree(
        &self,
        w: &mut Writer,
        i: usize,
        agent_id: &str,
        role: &Role,
        root_abs: &Path,
        ws_abs: &Path,
    ) -> std::result::Result<(String, PathBuf), String> {
        let t = &w.scan.tasks[i];
        let file = w
            .disk
            .read(&self.root.task_path(t))
            .map_err(|e| e.to_string())?;
        let repo_dir = match frontmatter::scalar_field(&file, "repo") {
            None => root_abs.to_path_buf(),
            Some(repo) => allowed_repo(root_abs, &repo, &self.config.git.repos)?,
        };
        let git = crate::git::Git::detect(&repo_dir).ok_or_else(|| {
            format!(
                "`workspace: worktree` needs a git repository: {} is not in one",
                repo_dir.display()
            )
        })?;
        let base = frontmatter::scalar_field(&file, "base")
            .or_else(|| role.settings.base.clone())
            .unwrap_or_else(|| "HEAD".into());
        let mut branch = format!("taskq/{}", t.id);
        if git.has_branch(&branch) {
            branch = format!("taskq/{}-{agent_id}", t.id);
        }
        if let Some(parent) = ws_abs.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        git.worktree_add(ws_abs, &branch, &base)
            .map_err(|e| e.to_string())?;
        Ok((branch, git.top))
    }
}

/// A role's `set_env` value with its placeholders replaced: `{workspace}`,
/// `{root}`, `{agent_id}`, and `{agent_home}` (`agents/homes/<agent-id>`
/// in the root: outside any worktree, so a work branch holds only the
/// work).
pub fn expand_set_env(v: &str, ws_abs: &Path, root_abs: &Path, agent_id: &str) -> String {
    let home = crate::root::Root::new(root_abs).agent_home(agent_id);
    v.replace("{workspace}", &ws_abs.display().to_string())
        .replace("{root}", &root_abs.display().to_string())
        .replace("{agent_id}", agent_id)
        .replace("{agent_home}", &home.display().to_string())
}

/// The agent's private state inside its workspace: the `set_env` values of
/// `HOME`, `TMPDIR`, `TMP`, `TEMP`, `XDG_*` and any `*HOME` or `*DIR`
/// variable that lead into `ws_abs`, relative to it. Committing a
/// worktree leaves them out (a CLI's config, transcripts and credentials
/// are not work).
pub fn private_paths(role: &Role, ws_abs: &Path, root_abs: &Path, agent_id: &str) -> Vec<String> {
    let mut out: Vec<String> = role
        .settings
        .set_env
        .iter()
        .filter(|(k, _)| {
            matches!(k.as_str(), "HOME" | "TMPDIR" | "TMP" | "TEMP")
                || k.starts_with("XDG_")
                || k.ends_with("HOME")
                || k.ends_with("DIR")
        })
        .filter_map(|(_, v)| {
            let v = expand_set_env(v, ws_abs, root_abs, agent_id);
            let rel = Path::new(&v).strip_prefix(ws_abs).ok()?;
            // Only a plain path below it (never the workspace itself).
            let plain = rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            (plain && !rel.as_os_str().is_empty()).then(|| rel.display().to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What an agent of `role` may write and read (none: unsandboxed), or
/// why it may not start (`sandbox: required` without Landlock).
fn sandbox_rules(
    role: &Role,
    default: crate::sandbox::Mode,
    root: &Path,
    ws: &Path,
    env: &[(String, String)],
) -> std::result::Result<Option<crate::sandbox::Rules>, String> {
    use crate::sandbox::{self, Mode};
    let policy = &role.settings.sandbox;
    match (sandbox::mode(policy, default), sandbox::abi()) {
        (Mode::Off, _) | (Mode::Auto, ..=0) => return Ok(None),
        (Mode::Required, ..=0) => {
            return Err(format!(
                "role `{}` has `sandbox: required` but this system has no Landlock (Linux 5.13+ with Landlock enabled); hint: set `sandbox: auto` or `off` in agents/templates/{}.md to run it unsandboxed",
                role.name, role.name
            ))
        }
        _ => {}
    }
    let expand = |p: &str| {
        let p = p
            .replace("{workspace}", &ws.display().to_string())
            .replace("{root}", &root.display().to_string());
        root.join(p)
    };
    // The HOME and TMPDIR the agent gets (set by the role, or passed
    // through by its `env`): CLIs keep their state there.
    let var = |k: &str| {
        env.iter()
            .find(|(n, v)| n == k && Path::new(v).is_absolute())
            .map(|(_, v)| PathBuf::from(v))
    };
    let mut grants: Vec<PathBuf> = ["HOME", "TMPDIR"].iter().filter_map(|k| var(k)).collect();
    // The state directories the role sets (`*HOME`, `*DIR`: made for the
    // agent above): CLAUDE_CONFIG_DIR, CODEX_HOME, XDG_*_HOME.
    grants.extend(
        role.settings
            .set_env
            .keys()
            .filter(|k| k.ends_with("HOME") || k.ends_with("DIR"))
            .filter_map(|k| var(k)),
    );
    // The system temp dir, whatever TMPDIR says: tools write there
    // anyway (OpenClaw's state locks).
    grants.push(PathBuf::from("/tmp"));
    grants.extend(policy.write.iter().map(|p| expand(p)));
    // A worktree commits into its repository's objects and refs (never
    // its config or hooks).
    if let Ok(link) = std::fs::read_to_string(ws.join(".git")) {
        if let Some(dir) = link.trim().strip_prefix("gitdir: ").map(PathBuf::from) {
            if let Some(common) = dir.parent().and_then(Path::parent) {
                for sub in ["objects", "refs", "logs"] {
                    grants.push(common.join(sub));
                }
            }
            grants.push(dir);
        }
    }
    let narrow: Option<Vec<PathBuf>> = policy
        .read
        .as_ref()
        .map(|list| list.iter().map(|p| expand(p)).collect());
    let protected: Vec<PathBuf> = ["tasks", "approvals", "agents", ".git"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    let mut rules = sandbox::rules(
        ws,
        &grants,
        narrow.as_deref(),
        policy.net.clone(),
        &protected,
    );
    if !rules.read_only.is_empty() && !sandbox::namespaces() {
        // No private mount namespace here: the workspace's own entries
        // other than taskq's folders, each (nothing new at its top).
        rules.write.retain(|w| w != ws);
        if let Ok(dir) = std::fs::read_dir(ws) {
            rules.write.extend(
                dir.flatten()
                    .map(|e| e.path())
                    .filter(|p| !protected.contains(p)),
            );
        }
        rules.read_only.clear();
    }
    Ok(Some(rules))
}

/// Where a task's `repo:` leads, if it may: inside the root, or inside a
/// repository listed in `git.repos` (both compared after resolving links).
fn allowed_repo(
    root: &Path,
    repo: &str,
    listed: &[PathBuf],
) -> std::result::Result<PathBuf, String> {
    let real = |p: &Path| std::fs::canonicalize(p).ok();
    let dir = real(&root.join(repo)).ok_or_else(|| {
        format!(
            "repo `{repo}`: no such directory (from the root {})",
            root.display()
        )
    })?;
    let inside_root = real(root).is_some_and(|r| dir.starts_with(r));
    let listed_ok = listed
        .iter()
        .filter_map(|l| real(&root.join(l)))
        .any(|l| dir.starts_with(l));
    if inside_root || listed_ok {
        return Ok(dir);
    }
    Err(format!(
        "repo `{repo}` leads outside the root (to {}) and is not listed in `git.repos` of agents/factory/config.yaml; list it there to let agents work in it",
        dir.display()
    ))
}

/// What a start that failed for want of a program says (no retry helps).
const NOT_ON_PATH: &str = "is not on the PATH";

/// How much of a result file is read for a prompt (the prompt keeps
/// [`prompt::RESULT_CHARS`] of it).
const RESULT_BYTES: u64 = 64 * 1024;

/// The start of a regular file, at most `max` bytes (`None` when it is
/// missing or not a regular file: a FIFO or a device is never opened,
/// a link to /dev/zero never read whole).
fn read_capped(path: &Path, max: u64) -> Option<String> {
    match fsutil::read_capped(path, max) {
        Ok(Some(capped)) => Some(capped.text()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("{e}");
            None
        }
    }
}

/// What the dependencies of task `i` left (their result lines and files).
pub(super) fn dependency_results(root: &Root, w: &Writer, i: usize) -> Vec<DependencyResult> {
    w.scan.tasks[i]
        .dependencies
        .iter()
        .filter_map(|d| w.scan.get(d))
        .map(|d| DependencyResult {
            id: d.id.to_string(),
            title: store::display_title(root, d),
            result: d.extra().result.as_deref().map(str::to_string),
            full: read_capped(&root.result(&d.id), RESULT_BYTES)
                .map(|text| (path_str(&crate::root::result_path(&d.id)), text)),
        })
        .collect()
}

/// Where an agent of `role` will work, in words (for approval requests,
/// before its agent id exists).
pub(super) fn workspace_description(root: &Root, role: &Role, task: &str) -> String {
    match role.settings.workspace {
        Workspace::Root => root.dir.display().to_string(),
        Workspace::Dir => path_str(&root.workspace("<agent-id>")),
        Workspace::Worktree => format!(
            "{} (a git worktree on branch taskq/{task})",
            path_str(&root.workspace("<agent-id>"))
        ),
    }
}

/// Why the program a role's agents need cannot be started, if it cannot:
/// a model CLI not on the PATH the agent gets. Programs found before are
/// in `found` (looked up once).
pub fn missing_program(
    role: &Role,
    config: &Config,
    found: &std::collections::HashSet<(String, Option<String>)>,
) -> Option<String> {
    let program = role.settings.agent.program(config)?;
    let path = role.settings.set_env.get("PATH").cloned().or_else(|| {
        role.settings
            .env
            .iter()
            .any(|e| e == "PATH")
            .then(|| std::env::var("PATH").ok())
            .flatten()
    });
    if found.contains(&(program.clone(), path.clone())) {
        return None;
    }
    if spawn::find_program(&program, path.as_deref()).is_some() {
        return None;
    }
    let shown = format!("agents/templates/{}.md", role.name);
    let at = read_capped(&role.path, 64 * 1024)
        .and_then(|text| crate::frontmatter::key_line(&text, "agent"))
        .map_or(shown.clone(), |l| format!("{shown}:{l}"));
    Some(format!(
        "`{program}` (agent: {}) {NOT_ON_PATH}; install it or set `adapters: {{{}: /path/to/it}}` in the config ({at}, role {})",
        role.settings.agent,
        role.settings.agent,
        role.name
    ))
}

/// Removes a worktree workspace; its branch stays.
pub(super) fn remove_worktree(repo: &str, ws: &Path) {
    if !ws.exists() {
        return;
    }
    if let Some(git) = crate::git::Git::detect(Path::new(repo)) {
        if let Err(e) = git.worktree_remove(ws) {
            tracing::warn!("{}: removing the worktree: {e}", ws.display());
        }
    }
}

/// What `start_agent` started.
/// An agent ready to start: its process and, for a worktree role, the
/// branch made for it.
struct Prepared {
    spec: spawn::Spec,
    worktree: Option<(String, PathBuf)>,
}

/// Starts the agents' processes (`None` where there is nothing to start),
/// runs `meanwhile` while they start, and returns when both are done.
/// Several start at once, on threads: each start returns only once its child has
/// exec'd (vfork), and on a machine busy with other agents the child waits
/// for a CPU slice first. One after the other, a step waited for the sum
/// of those waits (measured: 8 `true` jobs, ~4 ms); at once, for the
/// longest.
pub(super) fn start_all(
    specs: Vec<Option<&spawn::Spec>>,
    meanwhile: impl FnOnce(),
) -> Vec<Option<std::result::Result<tokio::process::Child, String>>> {
    let start = |spec: &spawn::Spec| spawn::start(spec).map_err(|e| e.to_string());
    if specs.iter().flatten().count() <= 1 {
        let started = specs.into_iter().map(|s| s.map(start)).collect();
        meanwhile();
        return started;
    }
    // The threads register the children with this runtime's reaper.
    let handle = tokio::runtime::Handle::current();
    std::thread::scope(|scope| {
        let threads: Vec<_> = specs
            .into_iter()
            .map(|spec| {
                spec.map(|spec| {
                    let handle = &handle;
                    scope.spawn(move || {
                        let _runtime = handle.enter();
                        start(spec)
                    })
                })
            })
            .collect();
        meanwhile();
        threads
            .into_iter()
            .map(|t| {
                t.map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err("starting the process panicked".into()))
                })
            })
            .collect()
    })
}

struct Started {
    child: tokio::process::Child,
    pid: u32,
    /// `(branch, repo top)` of a worktree workspace.
    worktree: Option<(String, PathBuf)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factory::test_support::role;

    #[test]
    fn private_paths_are_the_state_dirs_inside_the_workspace() {
        let r = role(
            "coder",
            "prefix: COD\nset_env: {HOME: \"{workspace}/home\", TMPDIR: \"{workspace}/tmp/x\", XDG_CONFIG_HOME: \"{agent_home}\", CACHE_DIR: \"{workspace}\", LANG: \"{workspace}/l\", GOPATH_DIR: \"{workspace}/../up\"}\n",
        );
        let ws = Path::new("/r/agents/workspaces/COD-001");
        assert_eq!(
            private_paths(&r, ws, Path::new("/r"), "COD-001"),
            ["home", "tmp/x"]
        );
        assert_eq!(
            expand_set_env("{agent_home}/tmp", ws, Path::new("/r"), "COD-001"),
            "/r/agents/homes/COD-001/tmp"
        );
    }
}
