//! The writing commands that move one task between statuses: claim, done,
//! fail, hold, release, cancel, renew. Each runs under the queue lock; an
//! impossible transition exits 3 and changes nothing.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::frontmatter::Change;
use crate::queue::{Queue, State};
use crate::store::Writer;
use crate::task::{format_timestamp, validate_id, Status};

use super::report;

/// `taskq claim`.
#[derive(Debug, clap::Args)]
pub struct ClaimArgs {
    /// The task id.
    pub id: String,
    /// Who claims it (an agent id like `BLD-002`, or a name).
    #[arg(long)]
    pub agent: String,
    /// The claim expires after this long unless renewed (`30m`, `2h`).
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,
}

/// `taskq done`.
#[derive(Debug, clap::Args)]
pub struct DoneArgs {
    /// The task id.
    pub id: String,
    /// What came out of it: a short text, or a path to the output.
    #[arg(long, value_name = "TEXT|PATH")]
    pub result: Option<String>,
}

/// `taskq fail`.
#[derive(Debug, clap::Args)]
pub struct FailArgs {
    /// The task id.
    pub id: String,
    /// Why it failed (recorded as `reason:`).
    #[arg(long)]
    pub reason: String,
}

/// `taskq cancel`.
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The task id.
    pub id: String,
    /// Why (recorded as `reason:`).
    #[arg(long)]
    pub reason: Option<String>,
}

/// `taskq renew`.
#[derive(Debug, clap::Args)]
pub struct RenewArgs {
    /// The task id.
    pub id: String,
    /// The new lease, from now.
    #[arg(long, value_name = "DURATION", default_value = "30m")]
    pub lease: String,
    /// Refuse (exit 3) unless the task is claimed by this agent.
    #[arg(long)]
    pub agent: Option<String>,
}

/// Commands that take only an id.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The task id.
    pub id: String,
}

/// Parses a `--lease` value.
pub fn parse_lease(s: &str) -> Result<Duration> {
    let d = crate::duration::parse(s).map_err(|e| {
        Error::usage_hint(
            format!("--lease: {e}"),
            "give a lease like `30m` or `2h`; `taskq renew` extends it",
        )
    })?;
    if d.is_zero() {
        return Err(Error::usage("--lease must be longer than zero"));
    }
    Ok(d)
}

/// Checks an agent name given on the command line.
pub fn validate_agent(agent: &str) -> Result<()> {
    validate_id(agent).map_err(|why| Error::usage(format!("invalid agent `{agent}`: {why}")))
}

/// When a lease taken now ends, as written; a usage error when that date
/// is past what taskq can write (so no task ever gets a date it cannot
/// read back).
fn lease_until(writer: &Writer, lease: Duration) -> Result<String> {
    crate::duration::after(writer.now, lease)
        .map(format_timestamp)
        .map_err(|e| Error::usage(format!("--lease: {e}")))
}

/// Claims task `i` for `agent`; a conflict (exit 3) unless it is ready.
pub fn claim_index(
    writer: &mut Writer,
    i: usize,
    agent: &str,
    lease: Option<Duration>,
) -> Result<()> {
    let queue = Queue::new(&writer.scan, writer.now);
    let t = &writer.scan.tasks[i];
    match queue.state[i] {
        State::Ready => {}
        State::Blocked => {
            return Err(Error::conflict(format!(
                "`{}` is not ready: it waits for {}",
                t.id,
                queue.open_dependencies(i).join(", ")
            )))
        }
        State::Running | State::Review | State::Waiting if t.assigned.is_some() => {
            return Err(Error::conflict(format!(
                "`{}` is already claimed by `{}`",
                t.id,
                t.assigned.as_deref().unwrap_or_default()
            )))
        }
        State::Invalid => return Err(invalid(writer, i)),
        state => {
            return Err(Error::conflict(format!(
                "`{}` is not ready: it is {}",
                t.id,
                state.as_str()
            )));
        }
    }
    let mut changes = vec![
        Change::set("status", "running"),
        Change::set("assigned", agent),
        Change::set("started", &format_timestamp(writer.now)),
        Change::remove("retry_after"),
    ];
    match lease {
        Some(l) => changes.push(Change::set("lease_expires", &lease_until(writer, l)?)),
        None => changes.push(Change::remove("lease_expires")),
    }
    writer.set(i, &changes, Status::Running, &format!("claimed by {agent}"))
}

fn invalid(writer: &Writer, i: usize) -> Error {
    let t = &writer.scan.tasks[i];
    Error::usage_hint(
        format!(
            "{}: `{}` has invalid fields; not changed",
            writer.root.rel_path(t.folder, &t.rel).display(),
            t.id
        ),
        "`taskq check` shows what is wrong",
    )
}

/// Opens the writer, resolves the id (refusing broken tasks) and runs
/// `work` on the task; then commits to git what was written, after an
/// error too (see [`super::with_writer`]).
fn with_task(
    ctx: &Ctx,
    id: &str,
    mut work: impl FnMut(&mut Writer, usize) -> Result<ExitCode>,
) -> Result<ExitCode> {
    super::with_writer(ctx, |writer| {
        let i = writer.scan.resolve(id)?;
        if writer.scan.tasks[i].broken {
            return Err(invalid(writer, i));
        }
        work(writer, i)
    })
}

/// The human gates hold for scripts too: a task that waits for a
/// person's approval, or for its tester's verdict, is refused (exit 3).
pub fn check_gates(writer: &Writer, i: usize, gates: &crate::approval::Gates) -> Result<()> {
    let t = &writer.scan.tasks[i];
    if t.folder == crate::task::Folder::Todo && t.status == Status::Review {
        return Err(Error::conflict_hint(
            format!(
                "`{}` is in review: its tester (`{}`) decides",
                t.id,
                t.extra().review_role.as_deref().unwrap_or("tester")
            ),
            format!(
                "`taskq release {}` returns it to its builder; `taskq why {}` says more",
                t.id, t.id
            ),
        ));
    }
    if let Some(why) = gates.blocks(&writer.root, t) {
        return Err(Error::conflict_hint(
            format!("`{}` {why}", t.id),
            "a person approves with `taskq approve ID` (or moves the file to approvals/approved/)",
        ));
    }
    Ok(())
}

/// The tasks the factory's agents work on now (see
/// [`crate::registry::Registry::working_on`]), read under the queue lock.
/// An unreadable registry hides nothing (a warning says why).
pub fn factory_work(root: &crate::store::Root) -> std::collections::HashMap<String, String> {
    match crate::registry::Registry::load(root) {
        Ok(reg) => reg.working_on(),
        Err(e) => {
            tracing::warn!("{e} (claims cannot see the factory's agents)");
            Default::default()
        }
    }
}

/// Refuses to claim a task one of the factory's agents works on.
fn check_factory(writer: &Writer, i: usize) -> Result<()> {
    let t = &writer.scan.tasks[i];
    match factory_work(&writer.root).get(&*t.id) {
        Some(agent) => Err(Error::conflict_hint(
            format!(
                "`{}` is being worked on by the factory's agent `{agent}`",
                t.id
            ),
            format!(
                "`taskq stop {agent}` ends that agent; `taskq why {}` says more",
                t.id
            ),
        )),
        None => Ok(()),
    }
}

fn finish(ctx: &Ctx, writer: &Writer) -> Result<ExitCode> {
    report(ctx, writer);
    Ok(ExitCode::SUCCESS)
}

/// `taskq claim ID --agent A [--lease D]`.
pub fn claim(ctx: &Ctx, args: ClaimArgs) -> Result<ExitCode> {
    validate_agent(&args.agent)?;
    let lease = args.lease.as_deref().map(parse_lease).transpose()?;
    with_task(ctx, &args.id, |writer, i| {
        check_gates(writer, i, &crate::approval::Gates::load(&ctx.root))?;
        check_factory(writer, i)?;
        claim_index(writer, i, &args.agent, lease)?;
        finish(ctx, writer)
    })
}

/// `taskq done ID [--result TEXT|PATH]`.
pub fn done(ctx: &Ctx, args: DoneArgs) -> Result<ExitCode> {
    with_task(ctx, &args.id, |writer, i| {
        let t = &writer.scan.tasks[i];
        if t.status.is_closed() {
            return Err(Error::conflict(format!(
                "`{}` is already {}",
                t.id, t.status
            )));
        }
        check_gates(writer, i, &crate::approval::Gates::load(&ctx.root))?;
        let mut changes = vec![
            Change::set("status", "done"),
            Change::set("completed", &format_timestamp(writer.now)),
            Change::remove("lease_expires"),
            Change::remove("retry_after"),
        ];
        if let Some(result) = &args.result {
            let result = result.trim();
            // A path to an existing file is recorded relative to the root.
            let recorded = match Path::new(result).canonicalize() {
                Ok(p) => match p.strip_prefix(writer.root.dir.canonicalize().unwrap_or_default()) {
                    Ok(rel) => rel.to_string_lossy().into_owned(),
                    Err(_) => result.to_string(),
                },
                Err(_) => result.to_string(),
            };
            changes.push(Change::set("result", &recorded));
        }
        writer.set(i, &changes, Status::Done, "")?;
        writer.move_to_done(i)?;
        finish(ctx, writer)
    })
}

/// `taskq fail ID --reason TEXT`.
pub fn fail(ctx: &Ctx, args: FailArgs) -> Result<ExitCode> {
    with_task(ctx, &args.id, |writer, i| {
        let t = &writer.scan.tasks[i];
        if t.status.is_closed() || t.status == Status::Failed {
            return Err(Error::conflict(format!(
                "`{}` is already {}",
                t.id, t.status
            )));
        }
        check_gates(writer, i, &crate::approval::Gates::load(&ctx.root))?;
        let changes = [
            Change::set("status", "failed"),
            Change::set("reason", args.reason.trim()),
            Change::remove("lease_expires"),
        ];
        writer.set(i, &changes, Status::Failed, args.reason.trim())?;
        finish(ctx, writer)
    })
}

/// `taskq hold ID`.
pub fn hold(ctx: &Ctx, args: IdArgs) -> Result<ExitCode> {
    with_task(ctx, &args.id, |writer, i| {
        let t = &writer.scan.tasks[i];
        match t.status {
            Status::Hold => {
                ctx.out.note(format!("{}: already on hold", t.id));
                return Ok(ExitCode::SUCCESS);
            }
            Status::Done | Status::Cancelled => {
                return Err(Error::conflict(format!(
                    "`{}` is {}; it cannot be put on hold",
                    t.id, t.status
                )))
            }
            _ => {}
        }
        writer.set(
            i,
            &[
                Change::set("status", "hold"),
                Change::remove("lease_expires"),
            ],
            Status::Hold,
            "",
        )?;
        finish(ctx, writer)
    })
}

/// `taskq release ID`.
pub fn release(ctx: &Ctx, args: IdArgs) -> Result<ExitCode> {
    with_task(ctx, &args.id, |writer, i| {
        let t = &writer.scan.tasks[i];
        match t.status {
            Status::Ready if t.assigned.is_none() && t.extra().retry_after.is_none() => {
                ctx.out.note(format!("{}: already ready", t.id));
                return Ok(ExitCode::SUCCESS);
            }
            Status::Done | Status::Cancelled => {
                return Err(Error::conflict(format!(
                    "`{}` is {}; it cannot be released",
                    t.id, t.status
                )))
            }
            _ => {}
        }
        let changes = [
            Change::set("status", "ready"),
            Change::remove("assigned"),
            Change::remove("started"),
            Change::remove("lease_expires"),
            Change::remove("retry_after"),
            Change::remove("reason"),
            // A person's retry starts the counts afresh.
            Change::remove("attempts"),
            Change::remove("review_rounds"),
            Change::remove("review_errors"),
            Change::remove("review_role"),
        ];
        writer.set(i, &changes, Status::Ready, "")?;
        finish(ctx, writer)
    })
}

/// `taskq cancel ID [--reason TEXT]`.
pub fn cancel(ctx: &Ctx, args: CancelArgs) -> Result<ExitCode> {
    with_task(ctx, &args.id, |writer, i| {
        let t = &writer.scan.tasks[i];
        match t.status {
            Status::Cancelled => {
                ctx.out.note(format!("{}: already cancelled", t.id));
                return Ok(ExitCode::SUCCESS);
            }
            Status::Done => {
                return Err(Error::conflict(format!(
                    "`{}` is done; it cannot be cancelled",
                    t.id
                )))
            }
            _ => {}
        }
        let mut changes = vec![
            Change::set("status", "cancelled"),
            Change::remove("lease_expires"),
        ];
        if let Some(r) = &args.reason {
            changes.push(Change::set("reason", r.trim()));
        }
        writer.set(
            i,
            &changes,
            Status::Cancelled,
            args.reason.as_deref().unwrap_or_default(),
        )?;
        finish(ctx, writer)
    })
}

/// `taskq renew ID [--lease D] [--agent A]`.
pub fn renew(ctx: &Ctx, args: RenewArgs) -> Result<ExitCode> {
    let lease = parse_lease(&args.lease)?;
    with_task(ctx, &args.id, |writer, i| {
        let t = &writer.scan.tasks[i];
        if t.status != Status::Running {
            return Err(Error::conflict(format!(
                "`{}` is {}, not running: only a claimed task has a lease",
                t.id, t.status
            )));
        }
        if let Some(agent) = &args.agent {
            if t.assigned.as_deref() != Some(agent.as_str()) {
                return Err(Error::conflict(format!(
                    "`{}` is claimed by `{}`, not `{agent}`",
                    t.id,
                    t.assigned.as_deref().unwrap_or("nobody")
                )));
            }
        }
        let until = lease_until(writer, lease)?;
        writer.set(
            i,
            &[Change::set("lease_expires", &until)],
            Status::Running,
            &format!("lease until {until}"),
        )?;
        finish(ctx, writer)
    })
}
