//! `taskq deps ID`: the dependency chain or tree of a task.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::Result;
use crate::graph::{tree, write_tree, write_tree_json};
use crate::queue::Queue;
use crate::store::display_title;

use super::scan_lean_and_warn;

/// Arguments of `taskq deps`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The task id.
    pub id: String,

    /// Show what depends on the task instead (what it unblocks).
    #[arg(long)]
    pub reverse: bool,
}

/// Runs `taskq deps`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let scan = scan_lean_and_warn(ctx);
    let i = scan.resolve(&args.id)?;
    let queue = Queue::new(&scan, ctx.now);
    super::warn_graph(ctx, &scan, &queue.graph);
    let label = |j: usize| {
        (
            queue.state[j].as_str().to_string(),
            display_title(&ctx.root, &scan.tasks[j]),
        )
    };
    let tree = tree(&scan, &queue.graph, i, args.reverse, &label);
    // Written as it goes, without recursion: a chain can be 1,000,000 deep.
    if ctx.out.json {
        ctx.out.stream(|w| write_tree_json(&tree, w))?;
    } else {
        ctx.out.stream(|w| write_tree(&tree, w))?;
    }
    Ok(ExitCode::SUCCESS)
}
