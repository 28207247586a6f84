//! `taskq graph`: the whole dependency graph as mermaid or dot.

use std::process::ExitCode;

use crate::context::Ctx;
use crate::error::Result;
use crate::graph::{render_graph, Graph, GraphFormat};

use super::scan_and_warn;

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
    let scan = scan_and_warn(ctx);
    let graph = Graph::build(&scan);
    let title = |i: usize| crate::store::display_title(&ctx.root, &scan.tasks[i]);
    ctx.out
        .text(render_graph(&scan, &graph, args.format, &title))?;
    Ok(ExitCode::SUCCESS)
}
