//! Drawing `taskq top`: the [`Model`] and the [`App`] to a ratatui frame.
//! Made for 80x24 (over ssh, no mouse): one line per agent, request and
//! task, each cut to the width; panes share the rows left after the
//! header, the message line and the help line.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use ratatui::Frame;

use super::state::{window, App, Mode, Model, Pane};
use crate::task::Timestamp;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, model: &Model, app: &App) {
    let area = frame.area();
    let [header, counts, body, message, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(4),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_line(model)), header);
    frame.render_widget(Paragraph::new(counts_line(model)), counts);
    if let Mode::Log { agent } = &app.mode {
        let [agents, log] =
            Layout::vertical([Constraint::Length(4), Constraint::Min(3)]).areas(body);
        draw_agents(frame, agents, model, app);
        draw_log(frame, log, agent, &app.log_lines);
    } else {
        let approvals = (model.approvals.len().clamp(1, 4) + 1) as u16;
        let [agents, requests, tasks, events] = Layout::vertical([
            Constraint::Fill(3),
            Constraint::Length(approvals),
            Constraint::Fill(2),
            Constraint::Fill(2),
        ])
        .areas(body);
        draw_agents(frame, agents, model, app);
        draw_approvals(frame, requests, model, app);
        draw_tasks(frame, tasks, model, app);
        draw_events(frame, events, model);
    }
    let msg = match &app.mode {
        Mode::Reject { name, reason } => format!("reject {name}, reason: {reason}_"),
        Mode::Confirm(action) => format!("{}? (y/n)", action.describe()),
        _ => app.message.clone().unwrap_or_default(),
    };
    frame.render_widget(
        Paragraph::new(msg).style(Style::default().add_modifier(Modifier::BOLD)),
        message,
    );
    frame.render_widget(
        Paragraph::new(app.help()).style(Style::default().add_modifier(Modifier::REVERSED)),
        help,
    );
}

fn header_line(model: &Model) -> Line<'static> {
    let factory = match model.factory_pid {
        Some(pid) => format!("factory running (pid {pid})"),
        None => "factory not running".into(),
    };
    // A sum of no costs can be -0.0.
    let spent = model.spent_today + 0.0;
    let spend = match model.cap {
        Some(cap) => format!("today ${spent:.2} of ${cap:.2}"),
        None => format!("today ${spent:.2}"),
    };
    let mut spans = vec![
        Span::styled("taskq top", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!("  {factory}  {spend}")),
    ];
    if let Some(p) = &model.paused {
        spans.push(Span::styled(
            format!(
                "  PAUSED{}",
                p.by.as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default()
            ),
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        ));
    }
    if model.cap.is_some_and(|cap| model.spent_today >= cap) {
        spans.push(Span::styled(
            "  CAP REACHED",
            Style::default().add_modifier(Modifier::BOLD),
        ));
    }
    Line::from(spans)
}

fn counts_line(model: &Model) -> String {
    let parts: Vec<String> = model
        .counts
        .iter()
        .filter(|(s, n)| *n > 0 || matches!(*s, "ready" | "running"))
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    format!("queue: {}", parts.join(", "))
}

/// A pane's block: a top border with the title; focused panes say so.
fn block(title: String, focused: bool) -> Block<'static> {
    let style = match focused {
        true => Style::default().add_modifier(Modifier::BOLD),
        false => Style::default(),
    };
    Block::default()
        .borders(Borders::TOP)
        .title(Span::styled(title, style))
}

/// Rows with the selected one reversed (when the pane has focus, bold
/// otherwise), windowed so the selection is visible.
fn list(
    frame: &mut Frame<'_>,
    area: Rect,
    block: Block<'static>,
    rows: Vec<String>,
    selected: Option<usize>,
    focused: bool,
    empty: &str,
) {
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let height = inner.height as usize;
    let width = inner.width as usize;
    if rows.is_empty() {
        frame.render_widget(Paragraph::new(format!("  {empty}")), inner);
        return;
    }
    let start = window(rows.len(), selected.unwrap_or(0), height);
    let lines: Vec<Line<'static>> = rows
        .into_iter()
        .enumerate()
        .skip(start)
        .take(height)
        .map(|(i, text)| {
            let text = cut(&text, width);
            match (Some(i) == selected, focused) {
                (true, true) => Line::styled(
                    format!("{text:<width$}"),
                    Style::default().add_modifier(Modifier::REVERSED),
                ),
                (true, false) => Line::styled(text, Style::default().add_modifier(Modifier::BOLD)),
                _ => Line::raw(text),
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_agents(frame: &mut Frame<'_>, area: Rect, model: &Model, app: &App) {
    let now = model.now;
    let rows = model
        .agents
        .iter()
        .map(|a| {
            format!(
                "{:<8} {:<7} {:<8} {:<9} {:>6} {:>6} {:>5} {}",
                cut(&tree_id(&a.id, a.depth), 8),
                cut(&a.role, 7),
                cut(&a.task, 8),
                cut(&a.model, 9),
                elapsed(a.spawned, now),
                a.cost.map_or("-".into(), |c| format!("${c:.2}")),
                a.tokens.map_or("-".into(), short_count),
                a.last_line
            )
        })
        .collect();
    let focused = app.pane == Pane::Agents;
    let title = format!(
        " agents ({}): id role task model elapsed cost tokens last line ",
        model.agents.len()
    );
    list(
        frame,
        area,
        block(title, focused),
        rows,
        app.selection(model, Pane::Agents),
        focused,
        "no agent at work",
    );
}

fn draw_approvals(frame: &mut Frame<'_>, area: Rect, model: &Model, app: &App) {
    let rows = model
        .approvals
        .iter()
        .map(|r| format!("{:<12} {}", r.name, r.text))
        .collect();
    let focused = app.pane == Pane::Approvals;
    list(
        frame,
        area,
        block(
            format!(" pending approvals ({}) ", model.approvals.len()),
            focused,
        ),
        rows,
        app.selection(model, Pane::Approvals),
        focused,
        "none",
    );
}

fn draw_tasks(frame: &mut Frame<'_>, area: Rect, model: &Model, app: &App) {
    let rows = model
        .tasks
        .iter()
        .map(|t| format!("{:<10} {:<6} {}", t.id, t.state, t.title))
        .collect();
    let focused = app.pane == Pane::Tasks;
    list(
        frame,
        area,
        block(" tasks: held, then next ready ".into(), focused),
        rows,
        app.selection(model, Pane::Tasks),
        focused,
        "none ready or held",
    );
}

fn draw_events(frame: &mut Frame<'_>, area: Rect, model: &Model) {
    let rows = model
        .events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.at.with_timezone(&chrono::Local).format("%H:%M:%S"),
                e.text
            )
        })
        .collect();
    list(
        frame,
        area,
        block(" recent ".into(), false),
        rows,
        None,
        false,
        "nothing yet",
    );
}

fn draw_log(frame: &mut Frame<'_>, area: Rect, agent: &str, lines: &[String]) {
    let b = block(format!(" log of {agent} (end) "), true);
    let inner = b.inner(area);
    frame.render_widget(b, area);
    let height = inner.height as usize;
    let width = inner.width as usize;
    let shown: Vec<Line<'static>> = lines
        .iter()
        .skip(lines.len().saturating_sub(height))
        .map(|l| Line::raw(cut(l, width)))
        .collect();
    let shown = match shown.is_empty() {
        true => vec![Line::raw("  (empty)")],
        false => shown,
    };
    frame.render_widget(Paragraph::new(shown), inner);
}

/// An agent's id under its parent: `└T-002`, one space more per level.
fn tree_id(id: &str, depth: usize) -> String {
    match depth {
        0 => id.to_string(),
        d => format!("{}└{id}", " ".repeat(d - 1)),
    }
}

/// `text` cut to `width` characters (control characters dropped: a log
/// line may hold escapes that would move the cursor).
pub fn cut(text: &str, width: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(width)
        .collect()
}

fn elapsed(since: Timestamp, now: Option<Timestamp>) -> String {
    let Some(now) = now else {
        return "-".into();
    };
    let secs = (now - since).num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn short_count(n: u64) -> String {
    match n {
        n if n < 10_000 => n.to_string(),
        n if n < 10_000_000 => format!("{}k", n / 1000),
        n => format!("{}M", n / 1_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{Action, AgentRow, ApprovalRow, EventRow, Key, TaskRow};
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(model: &Model, app: &App) -> String {
        let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
        terminal.draw(|f| draw(f, model, app)).unwrap();
        let buf = terminal.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn model() -> Model {
        let now = crate::store::now();
        Model {
            factory_pid: Some(42),
            counts: vec![("ready", 10_000), ("running", 1), ("hold", 1), ("done", 0)],
            agents: vec![AgentRow {
                id: "JOB-001".into(),
                depth: 0,
                role: "job".into(),
                task: "TASK-001".into(),
                model: "shell".into(),
                status: "active".into(),
                spawned: now - chrono::Duration::seconds(75),
                cost: Some(0.5),
                tokens: Some(12_345),
                last_line: "working on it \u{1b}[2J".into(),
            }],
            approvals: vec![ApprovalRow {
                name: "TASK-002".into(),
                text: "Approve TASK-002: deploy".into(),
            }],
            tasks: vec![TaskRow {
                id: "TASK-003".into(),
                state: "hold",
                title: "held one".into(),
            }],
            events: vec![EventRow {
                at: now,
                text: "JOB-000 completed TASK-000".into(),
            }],
            spent_today: 1.5,
            cap: Some(10.0),
            now: Some(now),
            ..Model::default()
        }
    }

    #[test]
    fn agents_spawned_by_agents_sit_under_them() {
        let mut m = model();
        let mut child = m.agents[0].clone();
        child.id = "TST-002".into();
        child.depth = 1;
        m.agents.push(child);
        let s = screen(&m, &App::new(false));
        assert!(s.contains("\nJOB-001  job"), "{s}");
        assert!(s.contains("\n└TST-002 job"), "{s}");
    }

    #[test]
    fn everything_fits_in_80x24() {
        let s = screen(&model(), &App::new(false));
        assert!(
            s.contains("factory running (pid 42)  today $1.50 of $10.00"),
            "{s}"
        );
        assert!(s.contains("queue: 10000 ready, 1 running, 1 hold"), "{s}");
        assert!(
            s.contains("JOB-001  job     TASK-001 shell      1m15s  $0.50   12k working on it"),
            "{s}"
        );
        assert!(
            !s.contains('\u{1b}'),
            "no escape from a log line reaches the screen"
        );
        assert!(s.contains("TASK-002     Approve TASK-002: deploy"), "{s}");
        assert!(s.contains("TASK-003   hold   held one"), "{s}");
        assert!(s.contains("JOB-000 completed TASK-000"), "{s}");
        assert!(s.lines().last().unwrap().starts_with("Tab pane"), "{s}");
    }

    #[test]
    fn prompts_pause_and_the_log_pane_show() {
        let mut m = model();
        m.paused = Some(crate::pause::Pause {
            by: Some("ada".into()),
            ..Default::default()
        });
        let mut app = App::new(false);
        app.key(&m, Key::Char('r'));
        app.key(&m, Key::Char('x'));
        let s = screen(&m, &app);
        assert!(s.contains("PAUSED by ada"), "{s}");
        assert!(s.contains("reject TASK-002, reason: x_"), "{s}");
        assert!(s.contains("type the reason"), "{s}");
        let mut app = App::new(false);
        assert_eq!(
            app.key(&m, Key::Char('l')),
            Some(Action::OpenLog("JOB-001".into()))
        );
        app.log_lines = (1..=40).map(|n| format!("line {n}")).collect();
        let s = screen(&m, &app);
        assert!(s.contains("log of JOB-001"), "{s}");
        assert!(s.contains("line 40") && !s.contains("line 1\n"), "{s}");
        let s = screen(&Model::default(), &App::new(true));
        assert!(s.contains("no agent at work"), "{s}");
        assert!(s.lines().last().unwrap().starts_with("read-only"), "{s}");
    }
}
