//! `taskq top`: the factory at a glance, live, in a terminal.
//!
//! ratatui draws it (the crossterm backend: pure Rust, works over ssh in
//! any terminal, no curses library needed). The screen changes on file
//! events, not on a timer: a notify watcher on `tasks/`, `approvals/`,
//! `agents/factory/` and `agents/logs/` sends the paths; they are
//! debounced (100 ms) and only what they touched is read again (see
//! `load`). A 1 s tick redraws elapsed times while agents run, reading
//! nothing. Keys act through the commands' own library functions
//! (`approve`, `reject`, `stop`, `hold`, `release`, `pause`, `resume`) in
//! a worker thread, so a `stop`'s grace period never freezes the screen.
//!
//! `state` is pure (the model, the keys, the actions) and `draw` renders it;
//! both are unit-tested without a terminal (ratatui's `TestBackend`).

pub mod draw;
pub mod load;
pub mod state;

use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{EventKind, EventKindMask, RecommendedWatcher, RecursiveMode, Watcher};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind, KeyModifiers};

use self::load::{Loader, Touched};
use self::state::{Action, App, Key, Mode};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::Out;

/// Arguments of `taskq top`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Look only: every key that would change a file is refused.
    #[arg(long)]
    pub read_only: bool,
}

/// What wakes the screen.
enum Msg {
    Key(Key),
    Resize,
    Files(Vec<std::path::PathBuf>),
    /// An action ended: its message.
    Done(String),
}

/// How long file events are gathered before the model is read again.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often elapsed times are redrawn while agents run.
const TICK: Duration = Duration::from_secs(1);

/// Runs `taskq top`.
pub fn run(ctx: &Ctx, args: Args) -> Result<ExitCode> {
    use std::io::IsTerminal;
    if ctx.out.json {
        return Err(Error::usage_hint(
            "`top` is interactive and has no --json",
            "`taskq status --json` gives the same data once",
        ));
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Error::usage_hint(
            "`top` needs a terminal",
            "`taskq status` prints the same once; `watch taskq status` repeats it",
        ));
    }
    let (tx, rx) = mpsc::channel::<Msg>();
    let _watcher = watch(ctx, tx.clone())?;
    let mut loader = Loader::new(ctx.root.clone());
    let mut app = App::new(args.read_only);
    let mut terminal = ratatui::try_init().map_err(|e| Error::io("<terminal>", e))?;
    // Keys come from a thread of their own (a blocking read).
    {
        let tx = tx.clone();
        std::thread::spawn(move || keys(&tx));
    }
    let result = main_loop(ctx, &mut terminal, &mut loader, &mut app, &tx, &rx);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

fn main_loop(
    ctx: &Ctx,
    terminal: &mut ratatui::DefaultTerminal,
    loader: &mut Loader,
    app: &mut App,
    tx: &mpsc::Sender<Msg>,
    rx: &mpsc::Receiver<Msg>,
) -> Result<()> {
    let mut touched = Touched::default();
    let mut settle: Option<Instant> = None;
    let mut next_tick = Instant::now() + TICK;
    loop {
        terminal
            .draw(|f| draw::draw(f, &loader.model, app))
            .map_err(|e| Error::io("<terminal>", e))?;
        if app.quit {
            return Ok(());
        }
        // Sleep until a message, the end of a debounce, or the tick (only
        // while agents run: nothing else on screen moves with time).
        let ticking = !loader.model.agents.is_empty();
        let wake = match (settle, ticking) {
            (Some(s), true) => Some(s.min(next_tick)),
            (Some(s), false) => Some(s),
            (None, true) => Some(next_tick),
            (None, false) => None,
        };
        let msg = match wake {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(m) => Some(m),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            },
            None => match rx.recv() {
                Ok(m) => Some(m),
                Err(_) => return Ok(()),
            },
        };
        match msg {
            Some(Msg::Key(key)) => {
                if let Some(action) = app.key(&loader.model, key) {
                    act(ctx, loader, app, action, tx);
                }
            }
            Some(Msg::Resize) => {}
            Some(Msg::Files(paths)) => {
                let had_tasks = touched.tasks;
                for p in &paths {
                    touched.add(&ctx.root, p);
                }
                if touched.any() {
                    let mut at = settle.unwrap_or_else(|| Instant::now() + DEBOUNCE);
                    if touched.tasks && !had_tasks {
                        at = loader.queue_due().map_or(at, |due| due.max(at));
                    }
                    settle = Some(at);
                }
            }
            Some(Msg::Done(message)) => {
                app.message = Some(message);
                // What it changed is read now (the watcher's events may
                // come after).
                touched = Touched::all();
                settle = Some(Instant::now());
            }
            None => {}
        }
        let now = Instant::now();
        if settle.is_some_and(|s| s <= now) {
            loader.reload(std::mem::take(&mut touched));
            settle = None;
            app.clamp(&loader.model);
            if let Mode::Log { agent } = &app.mode {
                app.log_lines = loader.log_lines(agent);
            }
        }
        if next_tick <= now {
            loader.model.now = Some(crate::store::now());
            next_tick = now + TICK;
        }
    }
}

/// Carries out an action: the log pane at once, the rest in a worker
/// thread whose outcome comes back as a message.
fn act(ctx: &Ctx, loader: &Loader, app: &mut App, action: Action, tx: &mpsc::Sender<Msg>) {
    if let Action::OpenLog(agent) = &action {
        app.log_lines = loader.log_lines(agent);
        return;
    }
    app.message = Some(format!("{}...", action.describe()));
    let root = ctx.root.clone();
    let tx = tx.clone();
    std::thread::spawn(move || {
        let quiet = Ctx {
            root,
            out: Out {
                json: false,
                quiet: true,
            },
            now: crate::store::now(),
        };
        let what = action.describe();
        let message = match perform(&quiet, action) {
            Ok(done) => done,
            Err(e) => format!(
                "could not {what}: {e}{}",
                e.hint()
                    .map(|h| format!(" (hint: {h})"))
                    .unwrap_or_default()
            ),
        };
        let _ = tx.send(Msg::Done(message));
    });
}

/// One action through the commands' library functions.
pub fn perform(ctx: &Ctx, action: Action) -> Result<String> {
    use crate::commands::{approval, pause, stop, transition};
    let what = action.describe();
    match action {
        Action::Approve(name) => {
            approval::approve(
                ctx,
                approval::ApproveArgs {
                    what: name,
                    by: None,
                },
            )?;
        }
        Action::Reject(name, reason) => {
            approval::reject(
                ctx,
                approval::RejectArgs {
                    what: name,
                    reason: Some(reason),
                    by: None,
                },
            )?;
        }
        Action::Stop(agent) => {
            stop::run(
                ctx,
                stop::Args {
                    agent,
                    cancel: false,
                },
            )?;
        }
        Action::Hold(id) => {
            transition::hold(ctx, transition::IdArgs { id })?;
        }
        Action::Release(id) => {
            transition::release(ctx, transition::IdArgs { id })?;
        }
        Action::Pause => {
            let by = approval::decider(ctx, None)?.name;
            if !pause::pause_root(ctx, &by, None)?.1 {
                return Ok("already paused".into());
            }
        }
        Action::Resume => {
            if pause::resume_root(ctx)?.is_none() {
                return Ok("not paused".into());
            }
        }
        Action::OpenLog(_) => {}
    }
    Ok(format!("done: {what}"))
}

/// Reads keys until the terminal goes away; maps them to [`Key`].
fn keys(tx: &mpsc::Sender<Msg>) {
    while let Ok(ev) = event::read() {
        let msg = match ev {
            TermEvent::Key(k) if k.kind != KeyEventKind::Release => {
                let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
                let key = match k.code {
                    KeyCode::Char('c') if ctrl => Key::CtrlC,
                    KeyCode::Char(c) if !ctrl => Key::Char(c),
                    KeyCode::Up => Key::Up,
                    KeyCode::Down => Key::Down,
                    KeyCode::Tab => Key::Tab,
                    KeyCode::BackTab => Key::BackTab,
                    KeyCode::Enter => Key::Enter,
                    KeyCode::Esc => Key::Esc,
                    KeyCode::Backspace => Key::Backspace,
                    _ => continue,
                };
                Msg::Key(key)
            }
            TermEvent::Resize(..) => Msg::Resize,
            _ => continue,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}

/// The watcher: changed paths go to the screen's channel (never blocking:
/// the channel is unbounded; the loop takes them in batches).
fn watch(ctx: &Ctx, tx: mpsc::Sender<Msg>) -> Result<RecommendedWatcher> {
    let config = notify::Config::default().with_event_kinds(EventKindMask::CORE);
    let mut watcher = RecommendedWatcher::new(
        move |res: notify::Result<notify::Event>| {
            let paths = match res {
                Ok(e) if matches!(e.kind, EventKind::Access(_)) => return,
                Ok(e) => e.paths,
                // Missed events: read everything again.
                Err(_) => vec![],
            };
            let _ = tx.send(Msg::Files(match paths.is_empty() {
                true => vec!["tasks".into(), "approvals".into(), "agents/factory".into()],
                false => paths,
            }));
        },
        config,
    )
    .map_err(|e| Error::io(&ctx.root.dir, std::io::Error::other(e.to_string())))?;
    let root = &ctx.root;
    for (dir, mode) in [
        (root.dir.join("tasks"), RecursiveMode::Recursive),
        (root.dir.join("approvals"), RecursiveMode::Recursive),
        (root.factory_dir(), RecursiveMode::NonRecursive),
        (
            root.dir.join("agents").join("logs"),
            RecursiveMode::NonRecursive,
        ),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        watcher.watch(&dir, mode).map_err(|e| {
            Error::usage_hint(
                format!("{}: cannot watch files: {e}", dir.display()),
                "raise fs.inotify.max_user_watches / max_user_instances (sysctl)",
            )
        })?;
    }
    Ok(watcher)
}
