//! `taskq report`'s model and renderers (pure: no disk, no clock): what
//! the factory did, as one self-contained HTML page (inline CSS and SVG,
//! no external URL, works offline), as a pull-request-sized markdown
//! summary, or as JSON.
//!
//! Task titles, reasons and every other text from the files are hostile:
//! everything written into the page goes through [`escape`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::task::Timestamp;

/// More tasks than this: the graph draws the open ones (and what they
/// wait on) up to this many, and says how many it left out.
pub const MAX_GRAPH_NODES: usize = 300;
/// The timeline shows the latest agents, at most this many.
pub const MAX_TIMELINE: usize = 200;
/// Failures listed, at most.
pub const MAX_FAILURES: usize = 100;

/// One task, as the report needs it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskRow {
    /// Its id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its state (`ready`, `done`, …).
    pub state: String,
    /// Indices (in the report's task list) of the tasks it depends on.
    #[serde(skip)]
    pub deps: Vec<usize>,
    /// The reason recorded when it failed or was cancelled.
    pub reason: Option<String>,
}

/// One agent run.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    /// Its id.
    pub id: String,
    /// Its role.
    pub role: String,
    /// Its task.
    pub task: String,
    /// Its model (or adapter).
    pub model: String,
    /// `done`, `failed`, `active`, …
    pub status: String,
    /// When it started.
    pub start: Timestamp,
    /// When it ended (`None`: still running).
    pub end: Option<Timestamp>,
    /// What it cost.
    pub cost_usd: Option<f64>,
    /// Why it failed, if it did.
    pub reason: Option<String>,
}

/// A cost total with its number of agents.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Spend {
    /// USD.
    pub usd: f64,
    /// Agent runs.
    pub agents: usize,
}

/// A failure: a task in state failed, or an agent run that failed.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// The task.
    pub task: String,
    /// Its title.
    pub title: String,
    /// The agent, when an agent run failed.
    pub agent: Option<String>,
    /// Why.
    pub reason: String,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it was made.
    pub generated: Timestamp,
    /// The root.
    pub root: String,
    /// Tasks by state.
    pub states: BTreeMap<String, usize>,
    /// Every task.
    pub tasks: Vec<TaskRow>,
    /// Every agent run known (registry and history), oldest first.
    pub agents: Vec<AgentRow>,
    /// Total spend.
    pub total: Spend,
    /// Spend per local day (`2026-03-01`).
    pub by_day: BTreeMap<String, Spend>,
    /// Spend per role.
    pub by_role: BTreeMap<String, Spend>,
    /// Spend per model.
    pub by_model: BTreeMap<String, Spend>,
    /// Failed tasks and failed agent runs (latest first).
    pub failures: Vec<Failure>,
}

impl Report {
    /// Builds the report from the tasks and the agents (sorted here).
    pub fn new(
        generated: Timestamp,
        root: String,
        tasks: Vec<TaskRow>,
        mut agents: Vec<AgentRow>,
    ) -> Report {
        agents.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        let mut states = BTreeMap::new();
        for t in &tasks {
            *states.entry(t.state.clone()).or_insert(0) += 1;
        }
        let (mut total, mut by_day, mut by_role, mut by_model) = (
            Spend::default(),
            BTreeMap::new(),
            BTreeMap::new(),
            BTreeMap::new(),
        );
        for a in &agents {
            let usd = a.cost_usd.unwrap_or(0.0);
            let day = a
                .end
                .unwrap_or(a.start)
                .with_timezone(&chrono::Local)
                .date_naive()
                .to_string();
            for s in [
                &mut total,
                by_day.entry(day).or_insert_with(Spend::default),
                by_role.entry(a.role.clone()).or_insert_with(Spend::default),
                by_model
                    .entry(a.model.clone())
                    .or_insert_with(Spend::default),
            ] {
                s.usd += usd;
                s.agents += 1;
            }
        }
        let title = |id: &str| {
            tasks
                .iter()
                .find(|t| t.id == id)
                .map(|t| t.title.clone())
                .unwrap_or_default()
        };
        let mut failures: Vec<Failure> = tasks
            .iter()
            .filter(|t| t.state == "failed")
            .map(|t| Failure {
                task: t.id.clone(),
                title: t.title.clone(),
                agent: None,
                reason: t.reason.clone().unwrap_or_default(),
            })
            .collect();
        // Agent runs that failed, latest first; the one whose reason is
        // its failed task's names the agent there instead of a second row.
        for a in agents
            .iter()
            .rev()
            .filter(|a| matches!(a.status.as_str(), "failed" | "lost" | "timeout"))
        {
            let reason = a.reason.clone().unwrap_or_else(|| a.status.clone());
            match failures
                .iter_mut()
                .find(|f| f.agent.is_none() && f.task == a.task && f.reason == reason)
            {
                Some(f) => f.agent = Some(a.id.clone()),
                None => failures.push(Failure {
                    task: a.task.clone(),
                    title: title(&a.task),
                    agent: Some(a.id.clone()),
                    reason,
                }),
            }
        }
        failures.truncate(MAX_FAILURES);
        Report {
            generated,
            root,
            states,
            tasks,
            agents,
            total,
            by_day,
            by_role,
            by_model,
            failures,
        }
    }
}

/// Text for HTML (element content and attribute values alike).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// At most `n` characters, with `…` when cut.
fn cut(s: &str, n: usize) -> String {
    match s.chars().count() > n {
        true => format!(
            "{}…",
            s.chars().take(n.saturating_sub(1)).collect::<String>()
        ),
        false => s.to_string(),
    }
}

/// The layered layout of a dependency graph (pure): `deps[i]` are the
/// nodes `i` depends on. Returns each node's `(rank, position)`: rank is
/// the longest path from a node with no dependencies (edges closing a
/// cycle are ignored); within a rank, nodes are ordered by the mean
/// position of their dependencies (one barycenter pass), then by index.
pub fn layers(deps: &[Vec<usize>]) -> Vec<(usize, usize)> {
    let n = deps.len();
    let mut rank = vec![usize::MAX; n];
    // Iterative depth-first search; 1 = on the stack (a back edge there
    // closes a cycle and is ignored).
    let mut mark = vec![0u8; n];
    for start in 0..n {
        if rank[start] != usize::MAX {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        mark[start] = 1;
        while let Some(&mut (v, ref mut next)) = stack.last_mut() {
            if let Some(&d) = deps[v].get(*next) {
                *next += 1;
                if d < n && mark[d] == 0 {
                    mark[d] = 1;
                    stack.push((d, 0));
                }
                continue;
            }
            rank[v] = deps[v]
                .iter()
                .filter(|&&d| d < n && mark[d] == 2)
                .map(|&d| rank[d] + 1)
                .max()
                .unwrap_or(0);
            mark[v] = 2;
            stack.pop();
        }
    }
    let ranks = rank.iter().copied().max().map_or(0, |r| r + 1);
    let mut by_rank: Vec<Vec<usize>> = vec![Vec::new(); ranks];
    for (i, &r) in rank.iter().enumerate() {
        by_rank[r].push(i);
    }
    let mut pos = vec![0usize; n];
    for members in &mut by_rank {
        let key = |i: usize| -> f64 {
            let ds: Vec<usize> = deps[i]
                .iter()
                .copied()
                .filter(|&d| d < n && rank[d] < rank[i])
                .collect();
            match ds.is_empty() {
                true => f64::MAX,
                false => ds.iter().map(|&d| pos[d] as f64).sum::<f64>() / ds.len() as f64,
            }
        };
        let mut keyed: Vec<(f64, usize)> = members.iter().map(|&i| (key(i), i)).collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (p, (_, i)) in keyed.iter().enumerate() {
            pos[*i] = p;
        }
        *members = keyed.into_iter().map(|(_, i)| i).collect();
    }
    rank.into_iter().zip(pos).collect()
}

/// Which tasks the graph draws: all when few; else the open ones and
/// what they depend on, up to [`MAX_GRAPH_NODES`].
fn drawn(tasks: &[TaskRow]) -> Vec<usize> {
    if tasks.len() <= MAX_GRAPH_NODES {
        return (0..tasks.len()).collect();
    }
    let closed = |t: &TaskRow| matches!(t.state.as_str(), "done" | "cancelled");
    let mut keep = vec![false; tasks.len()];
    let mut count = 0;
    for (i, t) in tasks.iter().enumerate() {
        if count >= MAX_GRAPH_NODES {
            break;
        }
        if !closed(t) && !keep[i] {
            keep[i] = true;
            count += 1;
            for &d in &t.deps {
                if count < MAX_GRAPH_NODES && !keep[d] {
                    keep[d] = true;
                    count += 1;
                }
            }
        }
    }
    (0..tasks.len()).filter(|&i| keep[i]).collect()
}

fn state_color(state: &str) -> &'static str {
    match state {
        "done" | "completed" => "#b7e4c7",
        "running" | "active" | "spawning" | "stopping" => "#a0c4ff",
        "review" => "#cdb4db",
        "failed" | "lost" | "timeout" => "#ffadad",
        "blocked" | "waiting" | "hold" => "#ffd6a5",
        "cancelled" | "stopped" => "#dddddd",
        "ready" => "#fdffb6",
        _ => "#eeeeee",
    }
}

/// The dependency graph as inline SVG.
fn graph_svg(r: &Report, out: &mut String) {
    let shown = drawn(&r.tasks);
    if shown.is_empty() {
        out.push_str("<p>No tasks.</p>\n");
        return;
    }
    if shown.len() < r.tasks.len() {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} of {} tasks drawn: the open ones and what they wait on, up to {MAX_GRAPH_NODES} (dependencies on tasks not drawn are left out).</p>",
            shown.len(),
            r.tasks.len()
        );
    }
    let index: BTreeMap<usize, usize> = shown.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    let deps: Vec<Vec<usize>> = shown
        .iter()
        .map(|&i| {
            r.tasks[i]
                .deps
                .iter()
                .filter_map(|d| index.get(d).copied())
                .collect()
        })
        .collect();
    let place = layers(&deps);
    let (w, h, gx, gy) = (180.0, 36.0, 60.0, 14.0);
    let ranks = place.iter().map(|p| p.0 + 1).max().unwrap_or(1);
    let rows = place.iter().map(|p| p.1 + 1).max().unwrap_or(1);
    let width = ranks as f64 * (w + gx) + 20.0;
    let height = rows as f64 * (h + gy) + 20.0;
    let at = |k: usize| {
        let (rank, p) = place[k];
        (10.0 + rank as f64 * (w + gx), 10.0 + p as f64 * (h + gy))
    };
    let _ = writeln!(
        out,
        "<svg class=\"graph\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" aria-label=\"dependency graph\">"
    );
    out.push_str("<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#666\"/></marker></defs>\n");
    for (k, ds) in deps.iter().enumerate() {
        let (x2, y2) = at(k);
        for &d in ds {
            let (x1, y1) = at(d);
            let _ = writeln!(
                out,
                "<path d=\"M {:.0} {:.0} C {:.0} {:.0}, {:.0} {:.0}, {:.0} {:.0}\" fill=\"none\" stroke=\"#888\" marker-end=\"url(#arrow)\"/>",
                x1 + w, y1 + h / 2.0,
                x1 + w + gx / 2.0, y1 + h / 2.0,
                x2 - gx / 2.0, y2 + h / 2.0,
                x2, y2 + h / 2.0
            );
        }
    }
    for (k, &i) in shown.iter().enumerate() {
        let t = &r.tasks[i];
        let (x, y) = at(k);
        let _ = writeln!(
            out,
            "<g><title>{} ({}): {}</title><rect x=\"{x:.0}\" y=\"{y:.0}\" width=\"{w:.0}\" height=\"{h:.0}\" rx=\"5\" fill=\"{}\" stroke=\"#555\"/><text x=\"{:.0}\" y=\"{:.0}\" class=\"id\">{}</text><text x=\"{:.0}\" y=\"{:.0}\">{}</text></g>",
            escape(&t.id),
            escape(&t.state),
            escape(&t.title),
            state_color(&t.state),
            x + 6.0,
            y + 14.0,
            escape(&format!("{} · {}", cut(&t.id, 16), t.state)),
            x + 6.0,
            y + 29.0,
            escape(&cut(&t.title, 24)),
        );
    }
    out.push_str("</svg>\n");
}

/// The agents' timeline as inline SVG: a bar per agent run.
fn timeline_svg(r: &Report, out: &mut String) {
    let skip = r.agents.len().saturating_sub(MAX_TIMELINE);
    let agents = &r.agents[skip..];
    if agents.is_empty() {
        out.push_str("<p>No agent has run.</p>\n");
        return;
    }
    let end = |a: &AgentRow| a.end.unwrap_or(r.generated).max(a.start);
    let t0 = agents.iter().map(|a| a.start).min().expect("not empty");
    let t1 = agents.iter().map(end).max().expect("not empty");
    let span = ((t1 - t0).num_milliseconds().max(1)) as f64;
    let (label, bar_w, row) = (230.0, 700.0, 18.0);
    let width = label + bar_w + 20.0;
    let height = agents.len() as f64 * row + 30.0;
    let _ = writeln!(
        out,
        "<svg class=\"timeline\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" aria-label=\"agent timeline\">"
    );
    for (n, a) in agents.iter().enumerate() {
        let y = 5.0 + n as f64 * row;
        let x = label + bar_w * ((a.start - t0).num_milliseconds() as f64 / span);
        let bw = (bar_w * ((end(a) - a.start).num_milliseconds() as f64 / span)).max(2.0);
        let _ = writeln!(
            out,
            "<g><title>{} {} on {} ({}, {}): {} → {}{}</title><text x=\"4\" y=\"{:.0}\">{}</text><rect x=\"{x:.1}\" y=\"{y:.0}\" width=\"{bw:.1}\" height=\"{:.0}\" fill=\"{}\" stroke=\"#555\" stroke-width=\"0.5\"/></g>",
            escape(&a.id),
            escape(&a.role),
            escape(&a.task),
            escape(&a.model),
            escape(&a.status),
            a.start.format("%Y-%m-%d %H:%M:%S"),
            a.end.map_or_else(|| "running".to_string(), |e| e.format("%H:%M:%S").to_string()),
            a.cost_usd.map(|c| format!(", ${c:.2}")).unwrap_or_default(),
            y + 12.0,
            escape(&cut(&format!("{} {}", a.id, a.task), 32)),
            row - 4.0,
            state_color(&a.status),
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{label:.0}\" y=\"{:.0}\" class=\"axis\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" class=\"axis\" text-anchor=\"end\">{}</text>",
        height - 6.0,
        t0.format("%Y-%m-%d %H:%M:%S"),
        label + bar_w,
        height - 6.0,
        match t0.date_naive() == t1.date_naive() {
            true => t1.format("%H:%M:%S").to_string(),
            false => t1.format("%Y-%m-%d %H:%M:%S").to_string(),
        },
    );
    out.push_str("</svg>\n");
    if skip > 0 {
        let _ = writeln!(
            out,
            "<p class=\"note\">The latest {MAX_TIMELINE} of {} agent runs.</p>",
            r.agents.len()
        );
    }
}

/// A table of spend with proportional bars.
fn spend_table(title: &str, rows: &BTreeMap<String, Spend>, out: &mut String) {
    let _ = writeln!(out, "<h3>{}</h3>", escape(title));
    if rows.is_empty() {
        out.push_str("<p>Nothing yet.</p>\n");
        return;
    }
    // Bars by cost; by agent runs when nothing cost anything (shell jobs).
    let by_cost = rows.values().any(|s| s.usd > 0.0);
    let value = |s: &Spend| match by_cost {
        true => s.usd,
        false => s.agents as f64,
    };
    let top = rows.values().map(value).fold(0.0, f64::max);
    out.push_str("<table><tr><th></th><th>agents</th><th>USD</th><th></th></tr>\n");
    for (k, s) in rows {
        let pct = match top > 0.0 {
            true => 100.0 * value(s) / top,
            false => 0.0,
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.2}</td><td class=\"bar\"><svg width=\"200\" height=\"12\"><rect width=\"{:.1}\" height=\"12\" fill=\"#4a7bd0\"/></svg></td></tr>",
            escape(k),
            s.agents,
            s.usd,
            2.0 * pct
        );
    }
    out.push_str("</table>\n");
}

/// The whole page: one file, inline CSS and SVG, no external URL.
pub fn html(r: &Report) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <title>taskq report: {}</title>\n<style>\n{CSS}</style></head><body>\n",
        escape(&r.root)
    );
    let _ = writeln!(
        out,
        "<h1>taskq report</h1><p class=\"meta\">{} · generated {}</p>",
        escape(&r.root),
        r.generated.format("%Y-%m-%d %H:%M:%S %:z")
    );
    out.push_str("<section><h2>Summary</h2><table><tr>");
    for (state, n) in &r.states {
        let _ = write!(
            out,
            "<td class=\"chip\" style=\"background:{}\">{} <b>{n}</b></td>",
            state_color(state),
            escape(state)
        );
    }
    let _ = writeln!(
        out,
        "</tr></table><p>{} tasks · {} agent runs · ${:.2} spent</p></section>",
        r.tasks.len(),
        r.agents.len(),
        r.total.usd
    );
    out.push_str("<section><h2>Dependency graph</h2><div class=\"scroll\">\n");
    graph_svg(r, &mut out);
    out.push_str("</div></section>\n<section><h2>Agents over time</h2><div class=\"scroll\">\n");
    timeline_svg(r, &mut out);
    out.push_str("</div></section>\n<section><h2>Cost</h2>\n");
    spend_table("Per day", &r.by_day, &mut out);
    spend_table("Per role", &r.by_role, &mut out);
    spend_table("Per model", &r.by_model, &mut out);
    out.push_str("</section>\n<section><h2>Failures</h2>\n");
    if r.failures.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<table><tr><th>task</th><th>title</th><th>agent</th><th>reason</th></tr>\n");
        for f in &r.failures {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&f.task),
                escape(&cut(&f.title, 80)),
                escape(f.agent.as_deref().unwrap_or("")),
                escape(&cut(&f.reason, 400))
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</section>\n</body></html>\n");
    out
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}\n\
h1{margin:0 0 4px}h2{border-bottom:1px solid #ccc;padding-bottom:2px;margin-top:28px}\n\
.meta,.note{color:#666}table{border-collapse:collapse}td,th{padding:2px 8px;text-align:left;vertical-align:top}\n\
tr:nth-child(even){background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums}\n\
.chip{border-radius:4px;padding:2px 8px;margin-right:4px}.scroll{overflow:auto;max-height:80vh;border:1px solid #eee}\n\
svg text{font:11px system-ui,sans-serif;fill:#222}svg text.id{font-weight:bold}svg text.axis{fill:#666}\n";

/// Markdown for `|`-tables and running text: nothing in it can become
/// markup (links, HTML, emphasis) or break the table.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '#' | '|' | '!' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A pull-request-comment-sized summary (about 40 lines at most).
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let states: Vec<String> = r.states.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(out, "### taskq report\n");
    let states = match states.is_empty() {
        true => String::new(),
        false => format!(": {}", md_escape(&states.join(", "))),
    };
    let _ = writeln!(
        out,
        "**{}** tasks{states} · **{}** agent runs · **${:.2}** spent\n",
        r.tasks.len(),
        r.agents.len(),
        r.total.usd
    );
    if !r.by_role.is_empty() {
        out.push_str("| role | agents | USD |\n|---|---:|---:|\n");
        for (k, s) in r.by_role.iter().take(10) {
            let _ = writeln!(out, "| {} | {} | {:.2} |", md_escape(k), s.agents, s.usd);
        }
        out.push('\n');
    }
    if !r.by_model.is_empty() {
        let models: Vec<String> = r
            .by_model
            .iter()
            .take(8)
            .map(|(m, s)| format!("{} ${:.2}", md_escape(m), s.usd))
            .collect();
        let _ = writeln!(out, "By model: {}\n", models.join(", "));
    }
    if let Some((day, s)) = r.by_day.iter().next_back() {
        let _ = writeln!(
            out,
            "Last day ({day}): ${:.2} over {} agent runs\n",
            s.usd, s.agents
        );
    }
    if !r.failures.is_empty() {
        let _ = writeln!(out, "**Failures** ({}):\n", r.failures.len());
        for f in r.failures.iter().take(10) {
            let who = f
                .agent
                .as_deref()
                .map(|a| format!(" ({})", md_escape(a)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "- {}{who} {}: {}",
                md_escape(&f.task),
                md_escape(&cut(&f.title, 60)),
                md_escape(&cut(&f.reason, 160))
            );
        }
        if r.failures.len() > 10 {
            let _ = writeln!(
                out,
                "- … and {} more (see `taskq report --html`)",
                r.failures.len() - 10
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_rank_by_longest_path_and_survive_cycles() {
        // 0 <- 1 <- 2, 0 <- 2 (2 is at rank 2, not 1); 3 alone; 4 <-> 5.
        let deps = vec![vec![], vec![0], vec![1, 0], vec![], vec![5], vec![4]];
        let l = layers(&deps);
        assert_eq!(l[0].0, 0);
        assert_eq!(l[1].0, 1);
        assert_eq!(l[2].0, 2);
        assert_eq!(l[3].0, 0);
        assert_ne!(l[4].0, l[5].0, "a cycle is cut, not looped");
        // Positions within a rank are distinct.
        let mut seen = std::collections::HashSet::new();
        assert!(l.iter().all(|p| seen.insert(*p)));
        // Deep chains without recursion.
        let chain: Vec<Vec<usize>> = (0..100_000)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        assert_eq!(layers(&chain)[99_999].0, 99_999);
    }

    #[test]
    fn hostile_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(
            md_escape("a|b <img> [x](http://e)"),
            "a\\|b &lt;img&gt; \\[x\\](http://e)"
        );
    }

    #[test]
    fn the_page_has_no_external_reference_and_escapes_titles() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-01T10:00:00+00:00").unwrap();
        let tasks = vec![
            TaskRow {
                id: "TASK-001".into(),
                title: "<img src=http://evil/x>".into(),
                state: "done".into(),
                deps: vec![],
                reason: None,
            },
            TaskRow {
                id: "TASK-002".into(),
                title: "b".into(),
                state: "failed".into(),
                deps: vec![0],
                reason: Some("exit 3 </td>".into()),
            },
        ];
        let agents = vec![AgentRow {
            id: "BLD-001".into(),
            role: "builder".into(),
            task: "TASK-001".into(),
            model: "m".into(),
            status: "done".into(),
            start: now - chrono::Duration::minutes(5),
            end: Some(now),
            cost_usd: Some(0.5),
            reason: None,
        }];
        let r = Report::new(now, "/r".into(), tasks, agents);
        let page = html(&r);
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("&lt;img src=http://evil/x&gt;"));
        assert!(page.contains("exit 3 &lt;/td&gt;"));
        // No reference out of the page: only the escaped title names a URL.
        assert_eq!(
            page.matches("http:").count() + page.matches("https:").count(),
            page.matches("src=http://evil/x&gt;").count(),
            "{page}"
        );
        assert!(!page.contains("src=\""), "{page}");
        assert!(!page.contains("href"));
        assert_eq!(r.total.usd, 0.5);
        assert_eq!(r.failures.len(), 1);
        let md = markdown(&r);
        assert!(md.contains("| builder | 1 | 0.50 |"), "{md}");
        assert!(md.lines().count() < 60);
    }

    #[test]
    fn a_large_graph_is_bounded_and_says_so() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-03-01T10:00:00+00:00").unwrap();
        let tasks: Vec<TaskRow> = (0..2000)
            .map(|i| TaskRow {
                id: format!("TASK-{i:04}"),
                title: format!("t{i}"),
                state: if i < 1500 {
                    "done".into()
                } else {
                    "ready".into()
                },
                deps: if i > 0 { vec![i - 1, i / 2] } else { vec![] },
                reason: None,
            })
            .collect();
        let page = html(&Report::new(now, "/r".into(), tasks, Vec::new()));
        let nodes = page.matches("rx=\"5\"").count();
        assert_eq!(nodes, MAX_GRAPH_NODES);
        assert!(page.contains("300 of 2000 tasks drawn"), "note");
        assert!(page.len() < 400_000, "{}", page.len());
    }
}
