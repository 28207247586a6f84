//! What `taskq top` shows and how keys change it: pure, no disk, no
//! terminal. [`Model`] is the factory as last read from the files;
//! [`App`] is the screen's own state (focused pane, selections, prompt);
//! [`App::key`] turns a key into a state change and, at most, one
//! [`Action`] for the runner to carry out.

use crate::pause::Pause;
use crate::task::Timestamp;

/// One running agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRow {
    /// `JOB-001`.
    pub id: String,
    /// How deep in the tree of agents spawning agents (0: started by
    /// the factory for a task; 1: spawned by the agent above it).
    pub depth: usize,
    /// Its role.
    pub role: String,
    /// Its task.
    pub task: String,
    /// The model (or the adapter when it has none).
    pub model: String,
    /// `spawning`, `active`, `stopping`.
    pub status: String,
    /// When it was registered.
    pub spawned: Timestamp,
    /// Cost so far, where reported.
    pub cost: Option<f64>,
    /// Tokens in + out, where reported.
    pub tokens: Option<u64>,
    /// The last non-empty line of its log.
    pub last_line: String,
}

/// One pending approval request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    /// The file's name without `.md` (`TASK-006`, `TASK-006-1`): what
    /// `approve` and `reject` take.
    pub name: String,
    /// What it asks, in a line.
    pub text: String,
}

/// One task in the tasks pane (held ones, then the next ready ones).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// `TASK-006`.
    pub id: String,
    /// `ready`, `hold`, ...
    pub state: &'static str,
    /// Its title.
    pub title: String,
}

/// One line of recent events.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// When.
    pub at: Timestamp,
    /// What.
    pub text: String,
}

/// The factory as last read.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// The factory's pid when one runs.
    pub factory_pid: Option<u32>,
    /// A person's pause.
    pub paused: Option<Pause>,
    /// Queue counts by state, in display order.
    pub counts: Vec<(&'static str, usize)>,
    /// Agents at work.
    pub agents: Vec<AgentRow>,
    /// Pending approvals.
    pub approvals: Vec<ApprovalRow>,
    /// Held tasks, then the next ready ones (queue order), capped.
    pub tasks: Vec<TaskRow>,
    /// Recent events, newest first.
    pub events: Vec<EventRow>,
    /// Spent today, USD.
    pub spent_today: f64,
    /// The daily cost cap, if any.
    pub cap: Option<f64>,
    /// The time of the last read (elapsed times count from the clock).
    pub now: Option<Timestamp>,
}

/// The panes that have a selection, in Tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    /// Running agents.
    Agents,
    /// Pending approvals.
    Approvals,
    /// Held and next tasks.
    Tasks,
}

impl Pane {
    fn index(self) -> usize {
        match self {
            Pane::Agents => 0,
            Pane::Approvals => 1,
            Pane::Tasks => 2,
        }
    }

    fn next(self) -> Pane {
        match self {
            Pane::Agents => Pane::Approvals,
            Pane::Approvals => Pane::Tasks,
            Pane::Tasks => Pane::Agents,
        }
    }

    fn prev(self) -> Pane {
        self.next().next()
    }
}

/// What the screen is doing besides showing.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Browsing.
    Normal,
    /// Typing the reason of a rejection.
    Reject {
        /// The request.
        name: String,
        /// The reason so far.
        reason: String,
    },
    /// Asking `y/n` before an action.
    Confirm(Action),
    /// The log pane of an agent is open.
    Log {
        /// The agent.
        agent: String,
    },
}

/// What the runner does for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// `taskq approve NAME`.
    Approve(String),
    /// `taskq reject NAME --reason R`.
    Reject(String, String),
    /// `taskq stop AGENT`.
    Stop(String),
    /// `taskq hold TASK`.
    Hold(String),
    /// `taskq release TASK`.
    Release(String),
    /// `taskq pause`.
    Pause,
    /// `taskq resume`.
    Resume,
    /// Read an agent's log into the log pane.
    OpenLog(String),
}

impl Action {
    /// The action in words, for the confirmation prompt.
    pub fn describe(&self) -> String {
        match self {
            Action::Approve(n) => format!("approve {n}"),
            Action::Reject(n, _) => format!("reject {n}"),
            Action::Stop(a) => format!("stop {a}"),
            Action::Hold(t) => format!("hold {t}"),
            Action::Release(t) => format!("release {t}"),
            Action::Pause => "pause the factory".into(),
            Action::Resume => "resume the factory".into(),
            Action::OpenLog(a) => format!("open the log of {a}"),
        }
    }

    /// Changes files (refused with `--read-only`).
    pub fn writes(&self) -> bool {
        !matches!(self, Action::OpenLog(_))
    }
}

/// A key, as `top` understands them (terminal-independent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A printable character.
    Char(char),
    /// Up arrow (or `k`).
    Up,
    /// Down arrow (or `j`).
    Down,
    /// Tab: the next pane.
    Tab,
    /// Shift-Tab: the previous pane.
    BackTab,
    /// Enter.
    Enter,
    /// Escape.
    Esc,
    /// Backspace.
    Backspace,
    /// Ctrl-C.
    CtrlC,
}

/// The screen's state.
#[derive(Debug, Clone)]
pub struct App {
    /// The focused pane.
    pub pane: Pane,
    /// The selection in each pane.
    pub selected: [usize; 3],
    /// Prompt, confirmation or log pane.
    pub mode: Mode,
    /// The last action's outcome, or a refusal, on the message line.
    pub message: Option<String>,
    /// `--read-only`: no action changes a file.
    pub read_only: bool,
    /// `q` was pressed.
    pub quit: bool,
    /// The log pane's lines (the end of the log).
    pub log_lines: Vec<String>,
}

impl App {
    /// A new screen, focused on the agents.
    pub fn new(read_only: bool) -> App {
        App {
            pane: Pane::Agents,
            selected: [0; 3],
            mode: Mode::Normal,
            message: None,
            read_only,
            quit: false,
            log_lines: Vec::new(),
        }
    }

    /// The selection in `pane`, clamped to what `model` has.
    pub fn selection(&self, model: &Model, pane: Pane) -> Option<usize> {
        let len = pane_len(model, pane);
        (len > 0).then(|| self.selected[pane.index()].min(len - 1))
    }

    /// Keeps every selection inside its list after the model changed.
    pub fn clamp(&mut self, model: &Model) {
        for pane in [Pane::Agents, Pane::Approvals, Pane::Tasks] {
            let len = pane_len(model, pane);
            let s = &mut self.selected[pane.index()];
            *s = (*s).min(len.saturating_sub(1));
        }
    }

    /// Handles one key; returns the action to carry out, if any.
    pub fn key(&mut self, model: &Model, key: Key) -> Option<Action> {
        if key == Key::CtrlC {
            self.quit = true;
            return None;
        }
        match self.mode.clone() {
            Mode::Reject { name, mut reason } => {
                match key {
                    Key::Esc => {
                        self.mode = Mode::Normal;
                        self.message = Some("reject cancelled".into());
                    }
                    Key::Enter if reason.trim().is_empty() => {
                        self.message = Some("say why (Esc cancels)".into());
                    }
                    Key::Enter => {
                        self.mode = Mode::Normal;
                        return Some(Action::Reject(name, reason.trim().to_string()));
                    }
                    Key::Backspace => {
                        reason.pop();
                        self.mode = Mode::Reject { name, reason };
                    }
                    Key::Char(c) if !c.is_control() && reason.len() < 500 => {
                        reason.push(c);
                        self.mode = Mode::Reject { name, reason };
                    }
                    _ => {}
                }
                None
            }
            Mode::Confirm(action) => {
                self.mode = Mode::Normal;
                match key {
                    Key::Char('y') | Key::Char('Y') => Some(action),
                    _ => {
                        self.message = Some(format!("not done: {}", action.describe()));
                        None
                    }
                }
            }
            Mode::Log { .. } => {
                match key {
                    Key::Esc | Key::Char('l') => self.mode = Mode::Normal,
                    Key::Char('q') => self.quit = true,
                    _ => {}
                }
                None
            }
            Mode::Normal => self.normal_key(model, key),
        }
    }

    fn normal_key(&mut self, model: &Model, key: Key) -> Option<Action> {
        let len = pane_len(model, self.pane);
        let sel = &mut self.selected[self.pane.index()];
        match key {
            Key::Char('q') => self.quit = true,
            Key::Tab => self.pane = self.pane.next(),
            Key::BackTab => self.pane = self.pane.prev(),
            Key::Up | Key::Char('k') => *sel = sel.saturating_sub(1).min(len.saturating_sub(1)),
            Key::Down | Key::Char('j') => *sel = (*sel + 1).min(len.saturating_sub(1)),
            Key::Esc => self.message = None,
            Key::Char(c) => return self.command(model, c),
            _ => {}
        }
        None
    }

    /// A command key in the normal mode.
    fn command(&mut self, model: &Model, c: char) -> Option<Action> {
        let agent = self
            .selection(model, Pane::Agents)
            .map(|i| model.agents[i].id.clone());
        let request = self
            .selection(model, Pane::Approvals)
            .map(|i| model.approvals[i].name.clone());
        let task = self
            .selection(model, Pane::Tasks)
            .map(|i| model.tasks[i].id.clone());
        let (action, confirm) = match c {
            'a' => (request.map(Action::Approve), false),
            'r' => (request.map(|n| Action::Reject(n, String::new())), false),
            'l' => (agent.map(Action::OpenLog), false),
            's' => (agent.map(Action::Stop), true),
            'h' => (task.map(Action::Hold), false),
            'u' => (task.map(Action::Release), false),
            'p' => (
                Some(match model.paused {
                    Some(_) => Action::Resume,
                    None => Action::Pause,
                }),
                true,
            ),
            _ => return None,
        };
        let Some(action) = action else {
            let what = match c {
                'a' | 'r' => "no pending approval to select",
                'l' | 's' => "no running agent to select",
                _ => "no task to select",
            };
            self.message = Some(what.into());
            return None;
        };
        if self.read_only && action.writes() {
            self.message = Some(format!(
                "read-only: cannot {} (started with --read-only)",
                action.describe()
            ));
            return None;
        }
        match action {
            Action::Reject(name, _) => {
                self.mode = Mode::Reject {
                    name,
                    reason: String::new(),
                };
                None
            }
            Action::OpenLog(agent) => {
                self.mode = Mode::Log {
                    agent: agent.clone(),
                };
                Some(Action::OpenLog(agent))
            }
            action if confirm => {
                self.mode = Mode::Confirm(action);
                None
            }
            action => Some(action),
        }
    }

    /// The help line for the current mode.
    pub fn help(&self) -> &'static str {
        match (&self.mode, self.read_only) {
            (Mode::Reject { .. }, _) => "type the reason  Enter reject  Esc cancel",
            (Mode::Confirm(_), _) => "y yes  any other key: no",
            (Mode::Log { .. }, _) => "Esc/l close the log  q quit",
            (Mode::Normal, true) => "read-only  Tab pane  ↑↓/jk select  l log  q quit",
            (Mode::Normal, false) => {
                "Tab pane ↑↓ a approve r reject l log s stop h hold u release p pause q quit"
            }
        }
    }
}

/// How many rows `pane` has.
pub fn pane_len(model: &Model, pane: Pane) -> usize {
    match pane {
        Pane::Agents => model.agents.len(),
        Pane::Approvals => model.approvals.len(),
        Pane::Tasks => model.tasks.len(),
    }
}

/// The first row to show so that `selected` is visible in `height` rows.
pub fn window(len: usize, selected: usize, height: usize) -> usize {
    if height == 0 || len <= height {
        return 0;
    }
    selected.saturating_sub(height - 1).min(len - height)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let now = crate::store::now();
        Model {
            agents: vec![AgentRow {
                id: "JOB-001".into(),
                depth: 0,
                role: "job".into(),
                task: "TASK-001".into(),
                model: "shell".into(),
                status: "active".into(),
                spawned: now,
                cost: None,
                tokens: None,
                last_line: "hello".into(),
            }],
            approvals: vec![
                ApprovalRow {
                    name: "TASK-002".into(),
                    text: "Approve TASK-002".into(),
                },
                ApprovalRow {
                    name: "TASK-003-1".into(),
                    text: "Post the note".into(),
                },
            ],
            tasks: vec![TaskRow {
                id: "TASK-004".into(),
                state: "ready",
                title: "four".into(),
            }],
            now: Some(now),
            ..Model::default()
        }
    }

    #[test]
    fn keys_select_and_act_on_the_focused_pane() {
        let m = model();
        let mut app = App::new(false);
        assert_eq!(
            app.key(&m, Key::Char('a')),
            Some(Action::Approve("TASK-002".into())),
            "the first request is selected"
        );
        // `a` acts on the approvals pane's selection whatever the focus.
        let mut app2 = App::new(false);
        app2.key(&m, Key::Tab);
        app2.key(&m, Key::Down);
        assert_eq!(
            app2.key(&m, Key::Char('a')),
            Some(Action::Approve("TASK-003-1".into()))
        );
        assert_eq!(app.pane, Pane::Agents);
        app.key(&m, Key::Down);
        assert_eq!(
            app.selection(&m, Pane::Agents),
            Some(0),
            "clamped to one agent"
        );
        assert_eq!(
            app.key(&m, Key::Char('h')),
            Some(Action::Hold("TASK-004".into()))
        );
        assert_eq!(
            app.key(&m, Key::Char('u')),
            Some(Action::Release("TASK-004".into()))
        );
        app.key(&m, Key::BackTab);
        assert_eq!(app.pane, Pane::Tasks);
        app.key(&m, Key::Char('q'));
        assert!(app.quit);
    }

    #[test]
    fn stop_and_pause_ask_first() {
        let m = model();
        let mut app = App::new(false);
        assert_eq!(app.key(&m, Key::Char('s')), None);
        assert_eq!(app.mode, Mode::Confirm(Action::Stop("JOB-001".into())));
        assert_eq!(
            app.key(&m, Key::Char('y')),
            Some(Action::Stop("JOB-001".into()))
        );
        assert_eq!(app.mode, Mode::Normal);
        app.key(&m, Key::Char('p'));
        assert_eq!(app.key(&m, Key::Char('n')), None, "anything but y: no");
        assert_eq!(app.message.as_deref(), Some("not done: pause the factory"));
        let mut paused = m.clone();
        paused.paused = Some(Pause::default());
        app.key(&paused, Key::Char('p'));
        assert_eq!(app.key(&paused, Key::Char('y')), Some(Action::Resume));
    }

    #[test]
    fn reject_asks_for_a_reason_in_a_prompt_line() {
        let m = model();
        let mut app = App::new(false);
        assert_eq!(app.key(&m, Key::Char('r')), None);
        for c in "no!".chars() {
            app.key(&m, Key::Char(c));
        }
        app.key(&m, Key::Backspace);
        assert_eq!(
            app.mode,
            Mode::Reject {
                name: "TASK-002".into(),
                reason: "no".into()
            }
        );
        // `q` while typing is text, not quit.
        app.key(&m, Key::Char('q'));
        assert!(!app.quit);
        app.key(&m, Key::Backspace);
        assert_eq!(
            app.key(&m, Key::Enter),
            Some(Action::Reject("TASK-002".into(), "no".into()))
        );
        // An empty reason is refused; Esc cancels.
        app.key(&m, Key::Char('r'));
        assert_eq!(app.key(&m, Key::Enter), None);
        assert!(matches!(app.mode, Mode::Reject { .. }));
        app.key(&m, Key::Esc);
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn read_only_refuses_every_change_but_opens_logs() {
        let m = model();
        let mut app = App::new(true);
        for c in ['a', 'r', 's', 'h', 'u', 'p'] {
            assert_eq!(app.key(&m, Key::Char(c)), None, "{c}");
            assert_eq!(app.mode, Mode::Normal, "{c}");
            assert!(app
                .message
                .as_deref()
                .unwrap()
                .starts_with("read-only: cannot"));
        }
        assert_eq!(
            app.key(&m, Key::Char('l')),
            Some(Action::OpenLog("JOB-001".into()))
        );
        assert_eq!(app.key(&m, Key::Esc), None);
        assert_eq!(app.mode, Mode::Normal);
    }

    #[test]
    fn nothing_to_act_on_is_said() {
        let m = Model::default();
        let mut app = App::new(false);
        assert_eq!(app.key(&m, Key::Char('a')), None);
        assert_eq!(
            app.message.as_deref(),
            Some("no pending approval to select")
        );
        assert_eq!(app.key(&m, Key::Char('s')), None);
        assert_eq!(app.key(&m, Key::Down), None);
        assert_eq!(app.selection(&m, Pane::Agents), None);
    }

    #[test]
    fn the_window_keeps_the_selection_in_view() {
        assert_eq!(window(3, 2, 5), 0);
        assert_eq!(window(10, 0, 4), 0);
        assert_eq!(window(10, 3, 4), 0);
        assert_eq!(window(10, 4, 4), 1);
        assert_eq!(window(10, 9, 4), 6);
        assert_eq!(window(10, 9, 0), 0);
    }
}
