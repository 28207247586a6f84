//! `taskq next`: the id of the next ready task (exit 1 when none), and with
//! `--claim`, claim it atomically.

use std::process::ExitCode;

use serde::Serialize;

use crate::config::Config;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::queue::Queue;
use crate::role;
use crate::store::Root;
use crate::task::Task;

use super::{report, transition, TaskJson};

/// Arguments of `taskq next`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only tasks with this tag (`a,b` or the flag repeated: with every
    /// one of them).
    #[arg(long, visible_alias = "tags", value_name = "T")]
    pub tag: Vec<String>,

    /// Only tasks that go to this role (their `role:` field, else the tags
    /// of agents/templates/<R>.md, else the config's default_role).
    #[arg(long, value_name = "R")]
    pub role: Option<String>,

    /// Claim the task for AGENT in the same locked step (status running,
    /// assigned, started): no two callers ever get the same task.
    #[arg(long, value_name = "AGENT")]
    pub claim: Option<String>,

    /// With --claim: the claim expires after this long unless renewed
    /// (`taskq renew`); the task then returns to ready.
    #[arg(long, value_name = "DURATION", requires = "claim")]
    pub lease: Option<String>,
}

#[derive(Serialize)]
struct NextJson {
    #[serde(flatten)]
    task: TaskJson,
    unblocks: u32,
}

/// Runs `taskq next`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let lease = args
        .lease
        .as_deref()
        .map(transition::parse_lease)
        .transpose()?;
    let router = Router::new(&ctx.root, args.role.as_deref())?;
    let tags = super::tag_list(&args.tag);
    // A task waiting for a person's approval is never handed out.
    let gates = crate::approval::Gates::load(&ctx.root);
    let filter = |t: &Task| {
        super::has_tags(t, &tags) && router.accepts(t) && gates.blocks(&ctx.root, t).is_none()
    };
    let Some(agent) = args.claim else {
        let scan = super::scan_lean_and_warn(ctx);
        let queue = Queue::new(&scan, ctx.now);
        super::warn_graph(ctx, &scan, &queue.graph);
        return match queue.next(filter) {
            Some(r) => {
                print(ctx, &queue, r.index, r.unblocks)?;
                Ok(ExitCode::SUCCESS)
            }
            None => Ok(ExitCode::from(1)),
        };
    };
    transition::validate_agent(&agent)?;
    super::with_writer(ctx, |writer| {
        // Never a task the factory's agent works on, whatever its file
        // says (an editor may have saved an old copy over the claim).
        let busy = transition::factory_work(&writer.root);
        let picked = {
            let queue = Queue::new(&writer.scan, writer.now);
            queue
                .next(|t| filter(t) && !busy.contains_key(&*t.id))
                .map(|r| (r.index, r.unblocks))
        };
        let Some((i, unblocks)) = picked else {
            report(ctx, writer);
            return Ok(ExitCode::from(1));
        };
        transition::claim_index(writer, i, &agent, lease)?;
        report(ctx, writer);
        let queue = Queue::new(&writer.scan, writer.now);
        print(ctx, &queue, i, unblocks)?;
        Ok(ExitCode::SUCCESS)
    })
}

fn print(ctx: &Ctx, queue: &Queue<'_>, i: usize, unblocks: u32) -> Result<()> {
    let t = &queue.scan.tasks[i];
    if ctx.out.json {
        ctx.out.json(&NextJson {
            task: TaskJson::new(&ctx.root, queue, i),
            unblocks,
        })
    } else {
        ctx.out.line(&t.id)
    }
}

/// Decides whether a task goes to a role (for `--role`).
struct Router {
    wanted: Option<String>,
    roles: Vec<role::Role>,
    config: Config,
}

impl Router {
    fn new(root: &Root, wanted: Option<&str>) -> Result<Router> {
        let Some(wanted) = wanted else {
            return Ok(Router {
                wanted: None,
                roles: Vec::new(),
                config: Config::default(),
            });
        };
        let (roles, problems) = role::load_all(root);
        if let Some(p) = problems
            .into_iter()
            .find(|p| p.path.ends_with(format!("{wanted}.md")))
        {
            return Err(Error::from(p));
        }
        Ok(Router {
            wanted: Some(wanted.to_string()),
            roles,
            config: Config::load(root)?,
        })
    }

    fn accepts(&self, t: &Task) -> bool {
        match &self.wanted {
            None => true,
            Some(w) => {
                role::route_name(t, &self.roles, &self.config).as_deref() == Some(w.as_str())
            }
        }
    }
}
