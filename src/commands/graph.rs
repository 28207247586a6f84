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
    if ctx.out.json {
        let mut order: Vec<usize> = (0..scan.tasks.len()).collect();
        order.sort_by(|&a, &b| crate::task::id_order(&scan.tasks[a].id, &scan.tasks[b].id));
        let nodes: Vec<serde_json::Value> = order
            .into_iter()
            .map(|i| {
                let (state, title) = label(i);
                serde_json::json!({"id": scan.tasks[i].id.to_string(), "title": title, "state": state})
            })
            .collect();
        let mut edges: Vec<serde_json::Value> = Vec::new();
        for i in 0..scan.tasks.len() {
            for &d in &queue.graph.deps[i] {
                edges.push(serde_json::json!({"from": scan.tasks[d as usize].id.to_string(), "to": scan.tasks[i].id.to_string()}));
            }
        }
        for (i, missing) in &queue.graph.missing {
            edges.push(serde_json::json!({"from": missing.to_string(), "to": scan.tasks[*i].id.to_string(), "missing": true}));
        }
        ctx.out
            .json(&serde_json::json!({"nodes": nodes, "edges": edges}))?;
        return Ok(ExitCode::SUCCESS);
    }
    ctx.out
        .text(render_graph(&scan, &queue.graph, args.format, &label))?;
    Ok(ExitCode::SUCCESS)
}
