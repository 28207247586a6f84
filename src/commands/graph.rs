//! `taskq graph`: the whole dependency graph as mermaid or dot.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::Result;
use crate::graph::{render_graph, GraphFormat};
use crate::queue::Queue;

use super::scan_lean_and_warn;

/// Arguments of `taskq graph`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// mermaid renders in GitHub markdown (wrap it in a ```mermaid block);
    /// dot is for Graphviz (`| dot -Tsvg`).
    #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
    pub format: GraphFormat,
}

/// Runs `taskq graph`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    let scan = scan_lean_and_warn(ctx);
    let queue = Queue::new(&scan, ctx.now);
    super::warn_graph(ctx, &scan, &queue.graph);
    let label = |i: usize| {
        (
            queue.state[i].as_str().to_string(),
            crate::store::display_title(&ctx.root, &scan.tasks[i]),
        )
    };
    ctx.out
        .text(render_graph(&scan, &queue.graph, args.format, &label))?;
    Ok(ExitCode::SUCCESS)
}
