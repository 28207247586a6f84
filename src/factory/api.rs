//! The factory's side of the agent API (see [`crate::agent_api`]): a unix
//! socket, `agents/factory/agent.sock` (mode 0600), where agents' writing
//! commands arrive as one JSON line each.
//!
//! Connections are accepted and read on the event loop's runtime, bounded
//! (at most [`MAX_CONNECTIONS`] at once, a line of at most
//! [`agent_api::MAX_LINE`] read within [`READ_TIMEOUT`]); a request then
//! waits for the next step, which serves it under the queue lock with the
//! step's own writer (so the new task is scheduled in that same step, and
//! the writes go into the step's batch and git commit); the answer is sent
//! once the step's writes are in place. A step that fails keeps its
//! requests for the next try.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Event, Factory};
use crate::agent_api::{self, Op, Request, Response};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::store::Writer;

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A request waiting for a step, and where its answer goes.
pub(super) struct Call {
    pub(super) request: Request,
    pub(super) reply: oneshot::Sender<Response>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.request.fmt(f)
    }
}

/// The socket while the factory runs: removed when dropped.
pub(super) struct Socket {
    path: PathBuf,
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Factory {
    /// Binds `agents/factory/agent.sock` (a stale one from a crashed
    /// factory is replaced: this factory holds the run lock) and serves it
    /// on the runtime. A socket that cannot be bound is said loudly: the
    /// agents' writing commands are then refused, never written directly.
    pub(super) fn start_api(&self) -> Option<Socket> {
        let path = self.root.agent_socket();
        match bind(&path) {
            Ok(listener) => {
                tokio::spawn(accept(listener, self.tx.clone()));
                Some(Socket { path })
            }
            Err(e) => {
                self.progress(format!(
                    "warning: the agent API is off: {}: {e}; agents' writing commands (add, approval request, note) will be refused",
                    path.display()
                ));
                None
            }
        }
    }

    /// Serves the requests waiting for this step with its writer; their
    /// answers wait in `api_answers` until the step's writes are in place.
    pub(super) fn serve_api(&mut self, w: &mut Writer, reg: &Registry) {
        for call in std::mem::take(&mut self.api_queue) {
            let response = match self.serve(w, reg, &call.request) {
                Ok(r) => r,
                Err(e) if e.is_changed() => {
                    // The step decides again on the new file: so does this.
                    self.api_retry.push(call);
                    continue;
                }
                Err(e) => Response::from_error(&e),
            };
            self.api_answers.push((call, response));
        }
    }

    /// Sends the answers of a step whose writes are in place; after a
    /// failed step, its requests wait for the next try.
    pub(super) fn answer_api(&mut self, step_ok: bool) {
        let answers = std::mem::take(&mut self.api_answers);
        let mut again = std::mem::take(&mut self.api_retry);
        for (call, response) in answers {
            if step_ok || !response.ok {
                let _ = call.reply.send(response);
            } else {
                again.push(call);
            }
        }
        if !again.is_empty() {
            again.append(&mut self.api_queue);
            self.api_queue = again;
        }
    }

    /// One request: who asks (the agent's secret matches, it still runs),
    /// whether it may, then the write.
    fn serve(&mut self, w: &mut Writer, reg: &Registry, r: &Request) -> Result<Response> {
        let refuse = |m: String, h: &str| Ok(Response::refused(m, h));
        let known = self
            .tokens
            .get(&r.agent)
            .is_some_and(|t| agent_api::same_token(t, &r.token));
        if !known {
            tracing::warn!(agent = %r.agent, "agent API: refused a request with a wrong or missing token");
            self.progress(format!(
                "warning: the agent API refused a request as `{}`: its token does not match",
                r.agent
            ));
            return refuse(
                format!("refused: the token does not match agent `{}`", r.agent),
                "only the agent the factory started with this id and its TASKQ_AGENT_TOKEN can write through the factory (an agent adopted after a factory restart has no token: a person must do it)",
            );
        }
        let own = match (
            self.running.contains_key(&r.agent),
            reg.agents.get(&r.agent),
        ) {
            (true, Some(a)) => a.task.clone(),
            _ => {
                return refuse(
                    format!("refused: agent `{}` is no longer running", r.agent),
                    "only a running agent writes through the factory",
                )
            }
        };
        let own_only = |named: &str, w: &Writer| -> Result<Option<Response>> {
            let i = w.scan.resolve(named)?;
            let id = &w.scan.tasks[i].id;
            Ok((**id != *own).then(|| {
                Response::refused(
                    format!("refused: `{id}` is not your task (`{own}`)"),
                    "an agent notes and requests approval on its own task only",
                )
            }))
        };
        match &r.op {
            Op::Add {
                title,
                body,
                tags,
                deps,
                priority,
                role,
            } => {
                let priority = priority
                    .parse()
                    .map_err(|_| Error::usage(format!("unknown priority `{priority}`")))?;
                let new = crate::commands::add::NewTask {
                    title: title.trim().to_string(),
                    body: body.clone(),
                    tags: crate::commands::tag_list(tags),
                    deps: deps.clone(),
                    priority,
                    role: role.clone(),
                    created_by: Some(r.agent.clone()),
                    parent: Some(own.clone()),
                };
                let id = crate::commands::add::create(w, &new)?;
                self.progress(format!("{id}: created by {} ({own})", r.agent));
                Ok(Response {
                    ok: true,
                    task: Some(id),
                    ..Response::default()
                })
            }
            Op::ApprovalRequest { task, text } => {
                if let Some(no) = own_only(task, w)? {
                    return Ok(no);
                }
                if text.trim().is_empty() || text.len() > 64 * 1024 {
                    return Err(Error::usage("say what needs approval, in at most 64 KiB"));
                }
                let path =
                    crate::approval::request_action(&self.root, &own, Some(&r.agent), text, w.now)?;
                let rel = path
                    .strip_prefix(&self.root.dir)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                w.touch(path.clone());
                w.notes.push(crate::git::Entry {
                    line: format!("{name} requested by {} ({rel})", r.agent),
                    trailers: vec![
                        ("Task".into(), own.clone()),
                        ("Agent".into(), r.agent.clone()),
                    ],
                });
                self.progress(format!("{rel}: approval requested by {}", r.agent));
                self.hook(
                    "on-approval-pending",
                    serde_json::json!({"task": own, "agent": r.agent, "status": "pending", "file": path, "text": text}),
                );
                Ok(Response {
                    ok: true,
                    task: Some(own),
                    file: Some(path.display().to_string()),
                    ..Response::default()
                })
            }
            Op::Note { task, text } => {
                if let Some(no) = task
                    .as_deref()
                    .map(|t| own_only(t, w))
                    .transpose()?
                    .flatten()
                {
                    return Ok(no);
                }
                let text = crate::commands::note::one_line(text)?;
                let i = w.scan.resolve(&own)?;
                let id = crate::commands::note::write(w, i, &text, Some(&r.agent))?;
                Ok(Response {
                    ok: true,
                    task: Some(id),
                    ..Response::default()
                })
            }
        }
    }

    /// A new secret for `agent`, kept in memory only (the agent gets it in
    /// its environment).
    pub(super) fn new_token(&mut self, agent: &str) -> std::result::Result<String, String> {
        let token = agent_api::new_token().map_err(|e| format!("/dev/urandom: {e}"))?;
        self.tokens.insert(agent.to_string(), token.clone());
        Ok(token)
    }
}

/// Binds the socket, readable and writable by this user only.
fn bind(path: &std::path::Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a directory is in the way",
            ))
        }
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    let (short, _dir) = agent_api::short_path(path)?;
    // Created 0600 (the umask applies to bind): no window where another
    // user could connect.
    // SAFETY: umask only changes this process's file creation mask, set
    // back at once; the factory's other threads create no files meanwhile
    // (the event loop is this thread, and it is here).
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(&short);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections, each served on its own task, at most
/// [`MAX_CONNECTIONS`] at once.
async fn accept(listener: UnixListener, tx: mpsc::UnboundedSender<Event>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    serve_connection(stream, tx).await;
                    drop(permit);
                });
            }
            // Out of descriptors, say: wait a little rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// One connection: one request line in, one response line out.
async fn serve_connection(stream: UnixStream, tx: mpsc::UnboundedSender<Event>) {
    // Another user cannot connect (mode 0600), but a socket's mode is not
    // honoured everywhere: check the peer too.
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let same_user = stream.peer_cred().is_ok_and(|c| c.uid() == me);
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(agent_api::MAX_LINE + 1));
    let got = tokio::time::timeout(READ_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let response = if !same_user {
        Response::refused(
            "refused: the agent API answers this user's agents only",
            "run taskq as the user the factory runs as",
        )
    } else {
        match got {
            Err(_) => Response::refused(
                format!("no request line within {}s", READ_TIMEOUT.as_secs()),
                "send one JSON line ending in a newline",
            ),
            Ok(Err(e)) => Response::refused(format!("reading the request: {e}"), "try again"),
            Ok(Ok(_)) if line.len() as u64 > agent_api::MAX_LINE || !line.ends_with(b"\n") => {
                Response::from_error(&Error::usage_hint(
                    format!(
                        "the request is not one line of at most {}",
                        crate::fsutil::size_text(agent_api::MAX_LINE)
                    ),
                    "keep long text in a file and name it",
                ))
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => Response::from_error(&Error::usage(format!(
                    "the request is not understood: {e}"
                ))),
                Ok(request) => ask(request, &tx).await,
            },
        }
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    let _ = tokio::time::timeout(READ_TIMEOUT, write.write_all(&out)).await;
}

/// Hands `request` to the event loop and waits for the step's answer.
async fn ask(request: Request, tx: &mpsc::UnboundedSender<Event>) -> Response {
    let stopping = || {
        Response::refused(
            "the factory is stopping: the request was not made",
            "a person can make the change once the factory is gone, or run the command again once it runs",
        )
    };
    let (reply, answer) = oneshot::channel();
    if tx.send(Event::Api(Call { request, reply })).is_err() {
        return stopping();
    }
    match tokio::time::timeout(agent_api::ANSWER_TIMEOUT, answer).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => stopping(),
        Err(_) => Response::refused(
            "the factory did not get to the request in time",
            "`taskq status` shows whether it is stuck; try again",
        ),
    }
}
