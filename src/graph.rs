//! The dependency graph: edges, cycles, chains and trees, and the mermaid /
//! dot renderings. Pure: it takes the scanned tasks and returns values.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::store::Scan;
use crate::task::{Folder, Status, Task};

/// Adjacency lists in one flat array (compressed sparse rows): 4 bytes a
/// node plus 4 an edge, where a `Vec` per node would cost 24 bytes a node.
/// `adj[i]` is node `i`'s list.
#[derive(Debug, Default, Clone)]
pub struct Adjacency {
    offsets: Vec<u32>,
    targets: Vec<u32>,
}

impl Adjacency {
    /// Builds the lists of `n` nodes from `(from, to)` edges (kept in order).
    fn from_edges(n: usize, edges: &[(u32, u32)]) -> Adjacency {
        let mut offsets = vec![0u32; n + 1];
        for &(from, _) in edges {
            offsets[from as usize + 1] += 1;
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let mut fill = offsets.clone();
        let mut targets = vec![0u32; edges.len()];
        for &(from, to) in edges {
            targets[fill[from as usize] as usize] = to;
            fill[from as usize] += 1;
        }
        Adjacency { offsets, targets }
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// True when there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::ops::Index<usize> for Adjacency {
    type Output = [u32];

    fn index(&self, i: usize) -> &[u32] {
        &self.targets[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// Edges between the tasks of a scan, by index.
#[derive(Debug, Default)]
pub struct Graph {
    /// `deps[i]`: the tasks `i` depends on.
    pub deps: Adjacency,
    /// `dependents[i]`: the tasks that depend on `i`.
    pub dependents: Adjacency,
    /// `(task, dependency id)` for every dependency that names no task.
    pub missing: Vec<(usize, Box<str>)>,
}

impl Graph {
    /// Builds the graph of a scan.
    pub fn build(scan: &Scan) -> Graph {
        let n = scan.tasks.len();
        let mut edges: Vec<(u32, u32)> = Vec::new();
        let mut missing = Vec::new();
        for (i, t) in scan.tasks.iter().enumerate() {
            for d in t.dependencies.iter() {
                match scan.position(d) {
                    Some(j) if j != i => edges.push((i as u32, j as u32)),
                    Some(_) => {} // self-dependency: reported by the parser
                    None => missing.push((i, d.clone())),
                }
            }
        }
        // A dependency may name a task file (`setup-db.md`) until adoption
        // rewrites it to the id; read commands already follow it.
        if !missing.is_empty() {
            let files = scan.files();
            missing.retain(|(i, d)| match files.find(d) {
                Some(j) if j != *i => {
                    edges.push((*i as u32, j as u32));
                    false
                }
                _ => true,
            });
        }
        let deps = Adjacency::from_edges(n, &edges);
        for e in &mut edges {
            *e = (e.1, e.0);
        }
        let dependents = Adjacency::from_edges(n, &edges);
        Graph {
            deps,
            dependents,
            missing,
        }
    }

    /// Every dependency cycle, each as task indices in dependency order
    /// (`a` depends on `b` depends on ... on `a`), found with Tarjan's
    /// strongly connected components (iterative, so deep chains do not
    /// overflow the stack).
    pub fn cycles(&self) -> Vec<Vec<usize>> {
        let n = self.deps.len();
        let mut index = vec![u32::MAX; n];
        let mut low = vec![0u32; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut next = 0u32;
        let mut sccs = Vec::new();
        for start in 0..n {
            if index[start] != u32::MAX {
                continue;
            }
            let mut work: Vec<(usize, usize)> = vec![(start, 0)];
            index[start] = next;
            low[start] = next;
            next += 1;
            stack.push(start);
            on_stack[start] = true;
            while let Some(&mut (v, ref mut edge)) = work.last_mut() {
                if let Some(&w) = self.deps[v].get(*edge) {
                    *edge += 1;
                    let w = w as usize;
                    if index[w] == u32::MAX {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        work.push((w, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                } else {
                    work.pop();
                    if let Some(&(parent, _)) = work.last() {
                        low[parent] = low[parent].min(low[v]);
                    }
                    if low[v] == index[v] {
                        let mut scc = Vec::new();
                        while let Some(w) = stack.pop() {
                            on_stack[w] = false;
                            scc.push(w);
                            if w == v {
                                break;
                            }
                        }
                        if scc.len() > 1 {
                            sccs.push(scc);
                        }
                    }
                }
            }
        }
        sccs.into_iter().map(|scc| self.cycle_in(&scc)).collect()
    }

    /// One concrete cycle through the component, starting at its smallest
    /// index, in dependency order.
    fn cycle_in(&self, scc: &[usize]) -> Vec<usize> {
        let members: HashSet<usize> = scc.iter().copied().collect();
        let start = *scc.iter().min().expect("non-empty");
        // Walk dependency edges inside the component until a node repeats.
        let mut path = vec![start];
        let mut seen = HashSet::from([start]);
        let mut v = start;
        loop {
            let w = self.deps[v]
                .iter()
                .map(|&w| w as usize)
                .find(|w| members.contains(w))
                .expect("a component member has an edge inside it");
            if let Some(pos) = path.iter().position(|&p| p == w) {
                return path[pos..].to_vec();
            }
            if !seen.insert(w) {
                return path;
            }
            path.push(w);
            v = w;
        }
    }

    /// True when adding edges from `from` to `to` would close a cycle (some
    /// of `to` already reaches `from`).
    pub fn would_cycle(&self, from: usize, to: &[usize]) -> bool {
        let mut seen = vec![false; self.deps.len()];
        let mut stack: Vec<usize> = to.to_vec();
        while let Some(v) = stack.pop() {
            if v == from {
                return true;
            }
            if !std::mem::replace(&mut seen[v], true) {
                stack.extend(self.deps[v].iter().map(|&w| w as usize));
            }
        }
        false
    }
}

/// The dependency problems of a scan, at each task's file (paths relative
/// to the root): unknown ids and cycles. `check` reports them; read
/// commands warn with them.
pub fn problems(
    root: &crate::store::Root,
    scan: &Scan,
    graph: &Graph,
) -> Vec<crate::error::Problem> {
    use crate::error::Problem;
    let mut out = Vec::new();
    // The line that names the dependency (read again: the scan keeps no
    // lines but the id's, and these problems are rare).
    let line = |t: &Task, dep: &str| {
        crate::fsutil::read(&root.task_path(t))
            .ok()
            .and_then(|bytes| crate::frontmatter::value_line(&bytes, "dependencies", dep))
            .unwrap_or(t.id_line.max(1) as usize)
    };
    // A dependency written twice is one problem.
    let mut seen = HashSet::new();
    for (i, missing) in &graph.missing {
        if !seen.insert((*i, missing)) {
            continue;
        }
        let t = &scan.tasks[*i];
        out.push(Problem::at(
            root.rel_path(t.folder, &t.rel),
            line(t, missing),
            format!("`{}` depends on `{missing}`, which does not exist", t.id),
        ));
    }
    for cycle in graph.cycles() {
        let first = &scan.tasks[cycle[0]];
        let mut ids: Vec<&str> = cycle.iter().map(|&i| &*scan.tasks[i].id).collect();
        ids.push(&first.id);
        out.push(
            Problem::at(
                root.rel_path(first.folder, &first.rel),
                line(first, ids[1]),
                format!("dependency cycle: {}", ids.join(" → ")),
            )
            .hint("remove one of these dependencies; no task of a cycle can ever run"),
        );
    }
    out
}

/// True when a dependency counts as satisfied: the task is in `done/` with
/// status done.
pub fn is_satisfied(t: &Task) -> bool {
    t.folder == Folder::Done && t.status == Status::Done
}

/// A node of a printed dependency tree.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    /// The task id (or the missing id).
    pub id: String,
    /// The task's status, `missing` or `cycle`.
    pub status: String,
    /// The task's title, empty when missing.
    pub title: String,
    /// True when this node was already printed above (its subtree is
    /// omitted).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
    /// Its dependencies (or dependents, for `--reverse`).
    pub children: Vec<Node>,
}

/// The tree of `root`'s dependencies (`reverse`: of what depends on it).
/// A node already shown is not expanded again; a node that leads back to
/// one of its own ancestors is marked `cycle`.
///
/// `label(i)` gives a node's `(status, title)` as they should be shown.
pub fn tree(
    scan: &Scan,
    graph: &Graph,
    root: usize,
    reverse: bool,
    label: &dyn Fn(usize) -> (String, String),
) -> Node {
    let mut shown = HashSet::new();
    let mut path = Vec::new();
    let ctx = TreeCtx {
        scan,
        graph,
        reverse,
        label,
    };
    build_node(&ctx, root, &mut shown, &mut path)
}

struct TreeCtx<'a> {
    scan: &'a Scan,
    graph: &'a Graph,
    reverse: bool,
    label: &'a dyn Fn(usize) -> (String, String),
}

fn build_node(
    ctx: &TreeCtx<'_>,
    i: usize,
    shown: &mut HashSet<usize>,
    path: &mut Vec<usize>,
) -> Node {
    let (scan, graph, reverse) = (ctx.scan, ctx.graph, ctx.reverse);
    let t = &scan.tasks[i];
    let (status, title) = (ctx.label)(i);
    let mut node = Node {
        id: t.id.to_string(),
        status,
        title,
        repeated: false,
        children: Vec::new(),
    };
    if path.contains(&i) {
        node.status = "cycle".into();
        return node;
    }
    if !shown.insert(i) {
        node.repeated = true;
        return node;
    }
    path.push(i);
    let edges = if reverse {
        &graph.dependents[i]
    } else {
        &graph.deps[i]
    };
    let mut children: Vec<usize> = edges.iter().map(|&w| w as usize).collect();
    children.sort_by(|&a, &b| crate::task::id_order(&scan.tasks[a].id, &scan.tasks[b].id));
    for c in children {
        node.children.push(build_node(ctx, c, shown, path));
    }
    if !reverse {
        for (_, missing) in graph.missing.iter().filter(|(j, _)| *j == i) {
            node.children.push(Node {
                id: missing.to_string(),
                status: "missing".into(),
                title: String::new(),
                repeated: false,
                children: Vec::new(),
            });
        }
    }
    path.pop();
    node
}

/// Renders a tree: one line `A [ready] → B [done] → C [done]` while it does
/// not branch, an indented tree once it does.
pub fn render_tree(node: &Node) -> String {
    let mut out = String::new();
    if is_chain(node) {
        let mut n = node;
        loop {
            let _ = write!(out, "{}", label(n));
            match n.children.first() {
                Some(c) => {
                    out.push_str(" → ");
                    n = c;
                }
                None => break,
            }
        }
        out.push('\n');
        return out;
    }
    let _ = writeln!(out, "{}  {}", label(node), node.title);
    render_children(node, "", &mut out);
    out
}

fn render_children(node: &Node, prefix: &str, out: &mut String) {
    let count = node.children.len();
    for (k, child) in node.children.iter().enumerate() {
        let last = k + 1 == count;
        let branch = if last { "└── " } else { "├── " };
        let title = if child.title.is_empty() {
            String::new()
        } else {
            format!("  {}", child.title)
        };
        let more = if child.repeated {
            "  (shown above)"
        } else {
            ""
        };
        let _ = writeln!(out, "{prefix}{branch}{}{title}{more}", label(child));
        let next = format!("{prefix}{}", if last { "    " } else { "│   " });
        render_children(child, &next, out);
    }
}

fn label(n: &Node) -> String {
    format!("{} [{}]", n.id, n.status)
}

fn is_chain(node: &Node) -> bool {
    let mut n = node;
    loop {
        match n.children.len() {
            0 => return true,
            1 => n = &n.children[0],
            _ => return false,
        }
    }
}

/// The whole graph as mermaid (`flowchart`) or Graphviz dot, nodes labelled
/// `ID: title` and styled by status; edges point from a dependency to the
/// task that needs it.
///
/// `label(i)` gives the `(state, title)` to show for task `i`.
pub fn render_graph(
    scan: &Scan,
    graph: &Graph,
    format: GraphFormat,
    label: &dyn Fn(usize) -> (String, String),
) -> String {
    let mut order: Vec<usize> = (0..scan.tasks.len()).collect();
    order.sort_by(|&a, &b| crate::task::id_order(&scan.tasks[a].id, &scan.tasks[b].id));
    let mut out = String::new();
    match format {
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for &i in &order {
                let t = &scan.tasks[i];
                let _ = writeln!(
                    out,
                    "    {}[\"{}: {}\"]:::{}",
                    mermaid_id(&t.id),
                    t.id,
                    escape_mermaid(&label(i).1),
                    label(i).0
                );
            }
            for &i in &order {
                for &d in &graph.deps[i] {
                    let _ = writeln!(
                        out,
                        "    {} --> {}",
                        mermaid_id(&scan.tasks[d as usize].id),
                        mermaid_id(&scan.tasks[i].id)
                    );
                }
            }
            for (i, missing) in &graph.missing {
                let _ = writeln!(
                    out,
                    "    {}[\"{}: missing\"]:::missing --> {}",
                    mermaid_id(missing),
                    missing,
                    mermaid_id(&scan.tasks[*i].id)
                );
            }
            for (status, style) in STYLES {
                let _ = writeln!(out, "    classDef {status} {style}");
            }
        }
        GraphFormat::Dot => {
            out.push_str("digraph taskq {\n    rankdir=LR;\n    node [shape=box, style=\"rounded,filled\"];\n");
            for &i in &order {
                let t = &scan.tasks[i];
                let fill = STYLES
                    .iter()
                    .find(|(s, _)| *s == label(i).0)
                    .map_or("#ffffff", |(_, style)| &style[5..12]);
                let _ = writeln!(
                    out,
                    "    \"{}\" [label=\"{}\\n{}\\n[{}]\", fillcolor=\"{}\"];",
                    t.id,
                    t.id,
                    escape_dot(&label(i).1),
                    label(i).0,
                    fill
                );
            }
            for &i in &order {
                for &d in &graph.deps[i] {
                    let _ = writeln!(
                        out,
                        "    \"{}\" -> \"{}\";",
                        scan.tasks[d as usize].id, scan.tasks[i].id
                    );
                }
            }
            for (i, missing) in &graph.missing {
                let _ = writeln!(
                    out,
                    "    \"{missing}\" [label=\"{missing}\\n[missing]\", fillcolor=\"#ff8888\", style=\"dashed,filled\"];\n    \"{missing}\" -> \"{}\";",
                    scan.tasks[*i].id
                );
            }
            out.push_str("}\n");
        }
    }
    out
}

/// Output formats of `taskq graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Mermaid flowchart (renders in GitHub markdown).
    Mermaid,
    /// Graphviz dot.
    Dot,
}

/// Fill colours per status (`fill:#rrggbb,...` so dot can reuse them).
const STYLES: &[(&str, &str)] = &[
    ("ready", "fill:#ffffff,stroke:#333"),
    ("blocked", "fill:#f1f3f5,stroke:#495057"),
    ("waiting", "fill:#f1f3f5,stroke:#495057"),
    ("invalid", "fill:#ff8888,stroke:#c92a2a"),
    ("running", "fill:#fff3b0,stroke:#b08800"),
    ("review", "fill:#e0d4ff,stroke:#6a4bc4"),
    ("failed", "fill:#ffc9c9,stroke:#c92a2a"),
    ("done", "fill:#c3fac8,stroke:#2b8a3e"),
    ("cancelled", "fill:#e9ecef,stroke:#868e96"),
    ("hold", "fill:#ffe8cc,stroke:#d9480f"),
    ("missing", "fill:#ff8888,stroke:#c92a2a,stroke-dasharray:4"),
];

fn mermaid_id(id: &str) -> String {
    id.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn escape_mermaid(s: &str) -> String {
    s.replace('"', "#quot;")
}

fn escape_dot(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}
