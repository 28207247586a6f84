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
        // Walk dependency edges inside the component until a node repeats
        // (its place on the path looked up, not searched: a cycle can be
        // 1,000,000 tasks long).
        let mut path = vec![start];
        let mut place = std::collections::HashMap::from([(start, 0usize)]);
        let mut v = start;
        loop {
            let w = self.deps[v]
                .iter()
                .map(|&w| w as usize)
                .find(|w| members.contains(w))
                .expect("a component member has an edge inside it");
            if let Some(&pos) = place.get(&w) {
                return path[pos..].to_vec();
            }
            place.insert(w, path.len());
            path.push(w);
            v = w;
        }
    }

    /// The dependencies of task `i` that name no task (`missing` is in
    /// task order, so this is a binary search, not a scan).
    pub fn missing_of(&self, i: usize) -> &[(usize, Box<str>)] {
        let from = self.missing.partition_point(|(j, _)| *j < i);
        let to = from + self.missing[from..].partition_point(|(j, _)| *j == i);
        &self.missing[from..to]
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

/// A node of a printed dependency tree (see [`Tree`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The task id (or the missing id).
    pub id: String,
    /// The task's status, `missing` or `cycle`.
    pub status: String,
    /// The task's title, empty when missing.
    pub title: String,
    /// True when this node was already printed above (its subtree is
    /// omitted).
    pub repeated: bool,
    /// Its dependencies (or dependents, for `--reverse`): indices into
    /// [`Tree::nodes`].
    pub children: Vec<u32>,
}

/// A printed dependency tree, flat: node 0 is the root, each node lists
/// its children by index. Flat because a chain of 1,000,000 tasks is a
/// tree 1,000,000 deep: nested values would be built, printed and dropped
/// by recursion, and overflow the stack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// Every node, the root first, each before its children.
    pub nodes: Vec<Node>,
}

/// Lines of `deps` text and `--json deps` stop indenting this many levels
/// down; deeper lines say their depth instead. Indenting every level of a
/// deep tree makes the output quadratic in its depth (a branch at each
/// level of a 30,000-task chain would print gigabytes of spaces).
pub const MAX_INDENT: usize = 40;

/// The tree of `root`'s dependencies (`reverse`: of what depends on it).
/// A node already shown is not expanded again; a node that leads back to
/// one of its own ancestors is marked `cycle`. Iterative and linear in the
/// size of the tree.
///
/// `label(i)` gives a node's `(status, title)` as they should be shown.
pub fn tree(
    scan: &Scan,
    graph: &Graph,
    root: usize,
    reverse: bool,
    label: &dyn Fn(usize) -> (String, String),
) -> Tree {
    /// A task being expanded: its node, its children still to visit.
    struct Frame {
        task: usize,
        node: u32,
        children: Vec<usize>,
        next: usize,
    }
    let n = scan.tasks.len();
    let mut shown = vec![false; n];
    let mut on_path = vec![false; n];
    let mut nodes: Vec<Node> = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    // Adds task `i`'s node (under `parent`), and a frame when it expands.
    let visit = |i: usize,
                 parent: Option<u32>,
                 nodes: &mut Vec<Node>,
                 stack: &mut Vec<Frame>,
                 shown: &mut Vec<bool>,
                 on_path: &mut Vec<bool>| {
        let t = &scan.tasks[i];
        let (status, title) = label(i);
        let at = nodes.len() as u32;
        let mut node = Node {
            id: t.id.to_string(),
            status,
            title,
            repeated: false,
            children: Vec::new(),
        };
        if on_path[i] {
            node.status = "cycle".into();
        } else if shown[i] {
            node.repeated = true;
        } else {
            shown[i] = true;
            on_path[i] = true;
            let edges = if reverse {
                &graph.dependents[i]
            } else {
                &graph.deps[i]
            };
            let mut children: Vec<usize> = edges.iter().map(|&w| w as usize).collect();
            children.sort_by(|&a, &b| crate::task::id_order(&scan.tasks[a].id, &scan.tasks[b].id));
            stack.push(Frame {
                task: i,
                node: at,
                children,
                next: 0,
            });
        }
        nodes.push(node);
        if let Some(p) = parent {
            nodes[p as usize].children.push(at);
        }
    };
    visit(root, None, &mut nodes, &mut stack, &mut shown, &mut on_path);
    while let Some(top) = stack.last_mut() {
        if let Some(&c) = top.children.get(top.next) {
            top.next += 1;
            let parent = top.node;
            visit(
                c,
                Some(parent),
                &mut nodes,
                &mut stack,
                &mut shown,
                &mut on_path,
            );
            continue;
        }
        let Frame { task, node, .. } = stack.pop().expect("a frame");
        on_path[task] = false;
        if !reverse {
            for (_, missing) in graph.missing_of(task) {
                let at = nodes.len() as u32;
                nodes.push(Node {
                    id: missing.to_string(),
                    status: "missing".into(),
                    title: String::new(),
                    repeated: false,
                    children: Vec::new(),
                });
                nodes[node as usize].children.push(at);
            }
        }
    }
    Tree { nodes }
}

/// Renders a tree: one line `A [ready] → B [done] → C [done]` while it does
/// not branch, an indented tree once it does (see [`write_tree`]).
pub fn render_tree(tree: &Tree) -> String {
    let mut out = Vec::new();
    write_tree(tree, &mut out).expect("writing to memory");
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

/// Writes a tree as [`render_tree`] shows it, as it goes (no recursion;
/// lines deeper than [`MAX_INDENT`] levels are indented no further and say
/// their depth).
pub fn write_tree(tree: &Tree, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let nodes = &tree.nodes;
    let Some(root) = nodes.first() else {
        return Ok(());
    };
    if is_chain(tree) {
        let mut n = root;
        loop {
            write!(out, "{}", label(n))?;
            match n.children.first() {
                Some(&c) => {
                    out.write_all(" → ".as_bytes())?;
                    n = &nodes[c as usize];
                }
                None => break,
            }
        }
        return out.write_all(b"\n");
    }
    writeln!(out, "{}  {}", label(root), root.title)?;
    // The node whose children are being written, the next one, and the
    // prefix length before its level's part was added.
    let mut stack: Vec<(u32, usize, usize)> = vec![(0, 0, 0)];
    let mut prefix = String::new();
    while let Some(top) = stack.last_mut() {
        let (parent, k, before) = *top;
        let siblings = &nodes[parent as usize].children;
        let Some(&c) = siblings.get(k) else {
            stack.pop();
            prefix.truncate(before);
            continue;
        };
        top.1 += 1;
        let child = &nodes[c as usize];
        let last = k + 1 == siblings.len();
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
        let depth = stack.len();
        let deep = if depth > MAX_INDENT {
            format!("[depth {depth}] ")
        } else {
            String::new()
        };
        writeln!(out, "{prefix}{branch}{deep}{}{title}{more}", label(child))?;
        if !child.children.is_empty() {
            let before = prefix.len();
            if depth < MAX_INDENT {
                prefix.push_str(if last { "    " } else { "│   " });
            }
            stack.push((c, 0, before));
        }
    }
    Ok(())
}

fn label(n: &Node) -> String {
    format!("{} [{}]", n.id, n.status)
}

fn is_chain(tree: &Tree) -> bool {
    tree.nodes.iter().all(|n| n.children.len() <= 1)
}

/// Writes a tree as JSON, nested as `{"id", "status", "title", "repeated"
/// (when true), "children": [...]}`, without recursion. The first
/// [`MAX_INDENT`] levels are pretty-printed exactly as serde_json's pretty
/// printer would; deeper ones are written compact (no line breaks, no
/// indentation), so the output stays linear in the size of the tree
/// whatever its depth (indenting each level of a 20,000-deep chain made
/// `--json deps` quadratic).
pub fn write_tree_json(tree: &Tree, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let nodes = &tree.nodes;
    if nodes.is_empty() {
        return out.write_all(b"null\n");
    }
    // A line break and indentation to JSON depth `depth` (two JSON levels,
    // the object and its `children` array, per tree level), or nothing
    // past the pretty-printed levels.
    let brk = |out: &mut dyn std::io::Write, depth: usize| -> std::io::Result<()> {
        if depth <= 2 * MAX_INDENT {
            out.write_all(b"\n")?;
            for _ in 0..depth {
                out.write_all(b"  ")?;
            }
        }
        Ok(())
    };
    let string = |out: &mut dyn std::io::Write, s: &str| -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, s).map_err(std::io::Error::from)
    };
    // Opens node `i` at JSON depth `depth`: its fields, then `children`
    // (closed at once when there are none).
    let open = |out: &mut dyn std::io::Write, i: u32, depth: usize| -> std::io::Result<()> {
        let n = &nodes[i as usize];
        out.write_all(b"{")?;
        for (key, value) in [("id", &n.id), ("status", &n.status), ("title", &n.title)] {
            brk(out, depth + 1)?;
            write!(out, "\"{key}\": ")?;
            string(out, value)?;
            out.write_all(b",")?;
        }
        if n.repeated {
            brk(out, depth + 1)?;
            out.write_all(b"\"repeated\": true,")?;
        }
        brk(out, depth + 1)?;
        if n.children.is_empty() {
            out.write_all(b"\"children\": []")?;
            brk(out, depth)?;
            out.write_all(b"}")
        } else {
            out.write_all(b"\"children\": [")
        }
    };
    // Nodes whose children are being written: (node, next child, depth).
    let mut stack: Vec<(u32, usize, usize)> = Vec::new();
    open(out, 0, 0)?;
    if !nodes[0].children.is_empty() {
        stack.push((0, 0, 0));
    }
    while let Some(top) = stack.last_mut() {
        let (i, k, depth) = *top;
        let children = &nodes[i as usize].children;
        if k == children.len() {
            brk(out, depth + 1)?;
            out.write_all(b"]")?;
            brk(out, depth)?;
            out.write_all(b"}")?;
            stack.pop();
            continue;
        }
        top.1 += 1;
        if k > 0 {
            out.write_all(b",")?;
        }
        let c = children[k];
        brk(out, depth + 2)?;
        open(out, c, depth + 2)?;
        if !nodes[c as usize].children.is_empty() {
            stack.push((c, 0, depth + 2));
        }
    }
    out.write_all(b"\n")
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
                // Once per task: a label can read the task's file.
                let (state, title) = label(i);
                let _ = writeln!(
                    out,
                    "    {}[\"{}: {}\"]:::{}",
                    mermaid_id(&t.id),
                    t.id,
                    escape_mermaid(&title),
                    state
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
                let (state, title) = label(i);
                let fill = STYLES
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or("#ffffff", |(_, style)| &style[5..12]);
                let _ = writeln!(
                    out,
                    "    \"{}\" [label=\"{}\\n{}\\n[{}]\", fillcolor=\"{}\"];",
                    t.id,
                    t.id,
                    escape_dot(&title),
                    state,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: String, deps: Vec<Box<str>>, folder: Folder) -> Task {
        Task {
            rel: format!("{id}.md").into(),
            id: id.into(),
            folder,
            has_id: true,
            broken: false,
            id_line: 2,
            lean: false,
            version: 0,
            title: None,
            status: if folder == Folder::Done {
                Status::Done
            } else {
                Status::Ready
            },
            priority: crate::task::Priority::Medium,
            tags: Box::new([]),
            dependencies: deps.into(),
            assigned: None,
            role: None,
            attempts: 0,
            created: None,
            extra: None,
        }
    }

    /// `T-0000000 → T-0000001 → …`: each task depends on the next; with
    /// `back`, the last depends on the first (one cycle through them all).
    /// The graph is made from the edges directly (what `Graph::build` would
    /// make, without a million binary searches in a debug build).
    fn chain(n: usize, back: bool) -> (Scan, Graph) {
        let id = |k: usize| format!("T-{k:07}");
        let tasks = (0..n)
            .map(|k| {
                let dep = if k + 1 < n {
                    Some(id(k + 1))
                } else {
                    back.then(|| id(0))
                };
                task(
                    id(k),
                    dep.into_iter().map(Into::into).collect(),
                    Folder::Todo,
                )
            })
            .collect();
        (Scan::from_tasks(tasks), chain_graph(n, back))
    }

    fn chain_graph(n: usize, back: bool) -> Graph {
        let mut edges: Vec<(u32, u32)> = (1..n as u32).map(|k| (k - 1, k)).collect();
        if back {
            edges.push((n as u32 - 1, 0));
        }
        let deps = Adjacency::from_edges(n, &edges);
        let reversed: Vec<(u32, u32)> = edges.iter().map(|&(a, b)| (b, a)).collect();
        Graph {
            deps,
            dependents: Adjacency::from_edges(n, &reversed),
            missing: Vec::new(),
        }
    }

    /// Counts what is written.
    #[derive(Default)]
    struct Meter {
        bytes: usize,
    }

    impl std::io::Write for Meter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Deep chains once overflowed the stack (`deps` of a 20,000-task chain
    /// aborted) and `--json deps` was quadratic in the depth: walked,
    /// printed and dropped without recursion now, in linear output.
    #[test]
    fn a_million_deep_chain_walks_prints_and_drops_without_recursion() {
        let n = 1_000_000;
        let (scan, graph) = chain(n, false);
        let label = |_: usize| ("ready".to_string(), String::new());
        let tree = tree(&scan, &graph, 0, false, &label);
        assert_eq!(tree.nodes.len(), n);
        assert_eq!(tree.nodes[n - 1].id, format!("T-{:07}", n - 1));
        let mut text = Vec::new();
        write_tree(&tree, &mut text).unwrap();
        // One line: `T-0000000 [ready] → T-0000001 [ready] → …`.
        assert!(text.ends_with(b"T-0999999 [ready]\n"));
        assert!(!text[..text.len() - 1].contains(&b'\n'));
        let mut json = Meter::default();
        write_tree_json(&tree, &mut json).unwrap();
        // Linear: the fields of each node, compact past MAX_INDENT levels.
        assert!(json.bytes < n * 80, "{} bytes", json.bytes);
        drop(tree);
        let reverse = super::tree(&scan, &graph, n - 1, true, &label);
        assert_eq!(reverse.nodes.len(), n);
        drop(reverse);
        // One cycle through all of them: found, and drawn, in linear time.
        let graph = chain_graph(n, true);
        let cycles = graph.cycles();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].len(), n);
        let looped = super::tree(&scan, &graph, 0, false, &label);
        assert_eq!(looped.nodes.len(), n + 1);
        assert_eq!(looped.nodes[n].status, "cycle");
    }

    /// A tree that branches at every level is drawn indented up to
    /// `MAX_INDENT` levels, then flat with its depth: bounded lines.
    #[test]
    fn deep_branching_trees_stop_indenting() {
        // Deeper than MAX_INDENT, shallower than serde_json's recursion
        // limit (128 JSON levels) for reading it back.
        let n = 60;
        // T-k depends on T-(k+1) and on the leaf L.
        let mut tasks: Vec<Task> = (0..n)
            .map(|k| {
                let mut deps: Vec<Box<str>> = vec!["L".into()];
                if k + 1 < n {
                    deps.push(format!("T-{}", k + 1).into());
                }
                task(format!("T-{k}"), deps, Folder::Todo)
            })
            .collect();
        tasks.push(task("L".into(), Vec::new(), Folder::Done));
        let scan = Scan::from_tasks(tasks);
        let graph = Graph::build(&scan);
        let root = scan.position("T-0").unwrap();
        let label = |i: usize| ("x".to_string(), scan.tasks[i].id.to_string());
        let tree = tree(&scan, &graph, root, false, &label);
        let text = render_tree(&tree);
        let longest = text.lines().map(|l| l.chars().count()).max().unwrap();
        assert!(longest < 4 * MAX_INDENT + 60, "{longest}");
        assert!(text.contains("[depth 59] T-59 [x]"), "{text}");
        let mut json = Vec::new();
        write_tree_json(&tree, &mut json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&json));
        });
        assert_eq!(v["children"][0]["children"][0]["id"], "T-2");
        assert_eq!(v["children"][1]["id"], "L");
    }

    /// Shallow trees print exactly as serde_json's pretty printer would.
    #[test]
    fn tree_json_matches_serde_json_pretty() {
        let tasks = vec![
            task(
                "A".into(),
                vec!["B".into(), "C".into(), "Z".into()],
                Folder::Todo,
            ),
            task("B".into(), vec!["C".into()], Folder::Todo),
            task("C".into(), Vec::new(), Folder::Done),
        ];
        let scan = Scan::from_tasks(tasks);
        let graph = Graph::build(&scan);
        let label = |i: usize| ("s".to_string(), format!("title \"{}\"", scan.tasks[i].id));
        let tree = tree(&scan, &graph, 0, false, &label);
        // The nested shape `deps --json` always had.
        #[derive(serde::Serialize)]
        struct Nested {
            id: String,
            status: String,
            title: String,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            repeated: bool,
            children: Vec<Nested>,
        }
        fn nested(tree: &Tree, i: u32) -> Nested {
            let n = &tree.nodes[i as usize];
            Nested {
                id: n.id.clone(),
                status: n.status.clone(),
                title: n.title.clone(),
                repeated: n.repeated,
                children: n.children.iter().map(|&c| nested(tree, c)).collect(),
            }
        }
        let mut ours = Vec::new();
        write_tree_json(&tree, &mut ours).unwrap();
        let theirs = serde_json::to_string_pretty(&nested(&tree, 0)).unwrap() + "\n";
        assert_eq!(String::from_utf8(ours).unwrap(), theirs);
        assert!(theirs.contains("\"repeated\": true"), "{theirs}");
        assert!(theirs.contains("\"missing\""), "{theirs}");
    }
}
