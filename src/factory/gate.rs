//! The gates a ready task passes before an agent starts for it: the model
//! whitelist, the adapter's program, a person's approval, the daily cost
//! cap and the cost forecast. Pure: the approval files' state is an input.

use crate::agent;
use crate::approval::{self, Decision};
use crate::config::Config;
use crate::money::Usd;
use crate::registry::Registry;
use crate::role::Role;
use crate::root::Root;
use crate::task::Task;

/// Whether a ready task may start now.
#[derive(Debug, Clone, PartialEq)]
pub enum Gate {
    /// Yes.
    Go,
    /// Not yet, for this reason (a person must act, or a forecast).
    Wait(String),
    /// Not now, and nothing else either (the daily cost cap).
    Pause(String),
    /// Never as it is: the factory changes the task.
    Act(GateAction),
}

/// What the factory does to a task a gate stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum GateAction {
    /// Fail it with this reason (a model outside the whitelist, a program
    /// that is not installed): no retry would help.
    Fail(String),
    /// Cancel it (its approval was rejected).
    Cancel(String),
    /// Write its pending approval file.
    RequestApproval {
        /// The role that would run it.
        role: String,
        /// The model it would run with.
        model: Option<String>,
    },
    /// Its approval (or pending request) no longer covers it: move that
    /// file to `approvals/stale/`, marked why, and ask again.
    Renew {
        /// The role that would run it.
        role: String,
        /// The model it would run with.
        model: Option<String>,
        /// The void file.
        stale: std::path::PathBuf,
        /// Why it is void.
        void: approval::Void,
    },
}

/// What a gate needs besides the task and its role.
pub struct GateInput<'a> {
    /// The root (approval paths are shown relative to it).
    pub root: &'a Root,
    /// The factory's config.
    pub config: &'a Config,
    /// Past runs (for the forecast).
    pub registry: &'a Registry,
    /// Spent today (the known amounts).
    pub spent_today: Usd,
    /// The approval files of a task, as they are now, checked against the
    /// task (see [`approval::verified`]).
    pub decision: &'a dyn Fn(&Task) -> Decision,
    /// Why a role's program cannot be started (not on the PATH), if so.
    pub missing_program: &'a dyn Fn(&Role) -> Option<String>,
}

/// Why every start is paused, when today's spend has reached the daily
/// cost cap (exactly: ten dimes make the dollar).
pub fn cap_reached(input: &GateInput<'_>) -> Option<String> {
    let cap = input.config.daily_cost_cap_usd?;
    let spent = input.spent_today;
    (spent >= cap).then(|| {
        format!("daily cost cap reached ({spent} of {cap} spent today); resumes at local midnight")
    })
}

/// The roles' models whose runs would end with an unknown cost (see
/// [`agent::unpriced`]): each as a problem at the role's template (its
/// `model:` line), a warning. `run` refuses them under a cap unless
/// `allow_unpriced_models`.
pub fn unpriced_models(roles: &[Role], config: &Config) -> Vec<crate::error::Problem> {
    let mut out = Vec::new();
    for r in roles {
        let mut models: Vec<Option<&str>> = vec![r.settings.model.as_deref()];
        models.extend(r.settings.fallback_models.iter().map(|m| Some(m.as_str())));
        for m in models {
            let Some(why) = agent::unpriced(config, r.settings.agent, m) else {
                continue;
            };
            let shown = std::path::PathBuf::from(format!("agents/templates/{}.md", r.name));
            let line = std::fs::read_to_string(&r.path).ok().and_then(|text| {
                crate::frontmatter::key_line(&text, "model")
                    .or_else(|| crate::frontmatter::key_line(&text, "agent"))
            });
            let message = format!("role `{}`: {why}, so what its runs cost is unknown", r.name);
            let p = match line {
                Some(l) => crate::error::Problem::at(shown, l, message),
                None => crate::error::Problem::new(shown, message),
            };
            let example = m.unwrap_or("MODEL");
            out.push(
                p.hint(format!(
                    "add `prices: {{{example}: {{input: 1.25, output: 10.0, cached_input: 0.125}}}}` (USD per million tokens) to agents/factory/config.yaml; with a daily_cost_cap_usd, `taskq run` refuses it unless allow_unpriced_models: true"
                ))
                .warning(),
            );
        }
    }
    out
}

/// The expected cost of an agent, for the cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forecast {
    /// The median known, non-zero cost of `runs` past runs of its role
    /// with its model.
    Median {
        /// The median.
        usd: Usd,
        /// How many runs it is the median of.
        runs: usize,
    },
    /// No usable history: the role's `cost_prior_usd`.
    Prior(Usd),
    /// No usable history and no prior: the cap cannot foresee it.
    Unknown,
}

impl Forecast {
    /// The expected amount, if there is one.
    pub fn usd(self) -> Option<Usd> {
        match self {
            Forecast::Median { usd, .. } | Forecast::Prior(usd) => Some(usd),
            Forecast::Unknown => None,
        }
    }

    /// In words: `$0.40 (median of 3 runs)`.
    pub fn describe(self) -> String {
        match self {
            Forecast::Median { usd, runs: 1 } => format!("{usd} (its one past run)"),
            Forecast::Median { usd, runs } => format!("{usd} (median of {runs} past runs)"),
            Forecast::Prior(usd) => format!("{usd} (the role's cost_prior_usd)"),
            Forecast::Unknown => "unknown (no usable cost history, no cost_prior_usd)".into(),
        }
    }
}

/// The forecast of a run of `role` with `model` (see [`Forecast`]).
pub fn forecast(registry: &Registry, role: &Role, model: Option<&str>) -> Forecast {
    if let Some((usd, runs)) = registry.forecast(&role.name, model) {
        return Forecast::Median { usd, runs };
    }
    match role.settings.cost_prior_usd {
        Some(p) => Forecast::Prior(p),
        None => Forecast::Unknown,
    }
}

/// What the agents at work, and those this step already starts, are
/// expected to cost (they have spent nothing the registry knows of yet).
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// Their forecasts, summed.
    pub usd: Usd,
    /// How many of them there are.
    pub agents: usize,
    /// `(role, model)` of those without a forecast.
    pub unforeseen: Vec<(String, Option<String>)>,
}

impl Committed {
    /// Counts one more agent of `role` with `model`, expected to cost `f`.
    pub fn add(&mut self, role: &str, model: Option<&str>, f: Forecast) {
        self.agents += 1;
        match f.usd() {
            Some(u) => self.usd += u,
            None => self
                .unforeseen
                .push((role.to_string(), model.map(str::to_string))),
        }
    }
}

/// Decides whether `t` may start now with `role` and `model`, with
/// `committed` expected from the agents at work and those starting in the
/// same step.
pub fn gate(
    input: &GateInput<'_>,
    t: &Task,
    role: &Role,
    model: Option<&str>,
    committed: &Committed,
) -> Gate {
    let config = input.config;
    if !config.model_whitelist.is_empty() {
        if let Some(m) = model {
            if !config.model_whitelist.iter().any(|w| w == m) {
                return Gate::Act(GateAction::Fail(format!(
                    "model `{m}` is not in model_whitelist ({}); refused, not swapped",
                    config.model_whitelist.join(", ")
                )));
            }
        }
    }
    if let Some(why) = (input.missing_program)(role) {
        return Gate::Act(GateAction::Fail(why));
    }
    if approval::needs_approval(t, Some(role), config) {
        match (input.decision)(t) {
            Decision::Approved(_) => {}
            Decision::Void(stale, void) => {
                return Gate::Act(GateAction::Renew {
                    role: role.name.clone(),
                    model: model.map(str::to_string),
                    stale,
                    void,
                })
            }
            Decision::Rejected(_, reason) => {
                return Gate::Act(GateAction::Cancel(format!(
                    "approval rejected{}",
                    reason.map(|r| format!(": {r}")).unwrap_or_default()
                )))
            }
            Decision::Pending(p) => {
                let shown = p.strip_prefix(&input.root.dir).unwrap_or(&p).display();
                return Gate::Wait(format!("waiting for approval: {shown}"));
            }
            Decision::Missing => {
                return Gate::Act(GateAction::RequestApproval {
                    role: role.name.clone(),
                    model: model.map(str::to_string),
                })
            }
        }
    }
    if let Some(cap) = config.daily_cost_cap_usd {
        let spent = input.spent_today;
        if let Some(why) = cap_reached(input) {
            return Gate::Pause(why);
        }
        if !config.allow_unpriced_models {
            if let Some(why) = agent::unpriced(config, role.settings.agent, model) {
                return Gate::Wait(format!(
                    "{why}: under the daily cost cap its spend would be unknown (add it to `prices`, or set allow_unpriced_models: true)"
                ));
            }
        }
        let f = forecast(input.registry, role, model);
        match f.usd() {
            Some(estimate) if spent + committed.usd + estimate > cap => {
                let at_work = match committed.agents {
                    0 => String::new(),
                    n => format!(
                        " + {} expected from {n} agent{} at work",
                        committed.usd,
                        if n == 1 { "" } else { "s" }
                    ),
                };
                return Gate::Wait(format!(
                    "forecast {} for role {}{at_work} would pass the daily cost cap ({spent} of {cap} spent)",
                    f.describe(),
                    role.name
                ));
            }
            Some(_) => {}
            None if role.settings.require_cost_history
                && committed
                    .unforeseen
                    .iter()
                    .any(|(r, m)| *r == role.name && m.as_deref() == model) =>
            {
                return Gate::Wait(format!(
                    "no cost history for role {}{}: one run at a time until one has finished (require_cost_history)",
                    role.name,
                    model.map(|m| format!(" with model `{m}`")).unwrap_or_default()
                ));
            }
            None => {}
        }
    }
    Gate::Go
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factory::test_support::{role, task};
    use std::path::PathBuf;

    fn decide(
        config: &Config,
        t: &Task,
        r: &Role,
        model: Option<&str>,
        decision: Decision,
        missing: Option<&str>,
        spent: f64,
    ) -> Gate {
        decide_with(
            config,
            t,
            r,
            model,
            decision,
            missing,
            spent,
            &Registry::default(),
            &Committed::default(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn decide_with(
        config: &Config,
        t: &Task,
        r: &Role,
        model: Option<&str>,
        decision: Decision,
        missing: Option<&str>,
        spent: f64,
        reg: &Registry,
        committed: &Committed,
    ) -> Gate {
        let root = Root::new("/r");
        let decision = move |_: &Task| decision.clone();
        let missing = move |_: &Role| missing.map(str::to_string);
        let input = GateInput {
            root: &root,
            config,
            registry: reg,
            spent_today: Usd::from_f64(spent).unwrap(),
            decision: &decision,
            missing_program: &missing,
        };
        gate(&input, t, r, model, committed)
    }

    #[test]
    fn each_gate_in_its_order() {
        let mut config = Config::default();
        let t = task("TASK-001", "approval: required\n");
        let r = role("builder", "prefix: BLD\n");
        // No approval file yet: the factory writes the request.
        assert_eq!(
            decide(&config, &t, &r, Some("m"), Decision::Missing, None, 0.0),
            Gate::Act(GateAction::RequestApproval {
                role: "builder".into(),
                model: Some("m".into())
            })
        );
        let pending = Decision::Pending(PathBuf::from("/r/approvals/pending/TASK-001.md"));
        assert_eq!(
            decide(&config, &t, &r, None, pending, None, 0.0),
            Gate::Wait("waiting for approval: approvals/pending/TASK-001.md".into())
        );
        let rejected = Decision::Rejected(PathBuf::new(), Some("no".into()));
        assert_eq!(
            decide(&config, &t, &r, None, rejected, None, 0.0),
            Gate::Act(GateAction::Cancel("approval rejected: no".into()))
        );
        let approved = || Decision::Approved(PathBuf::new());
        assert_eq!(
            decide(&config, &t, &r, None, approved(), None, 0.0),
            Gate::Go
        );
        // A void approval is set aside and asked for again.
        let void = approval::Void {
            why: "its body, command or model changed since it was approved".into(),
            unrequested: false,
        };
        let stale = PathBuf::from("/r/approvals/approved/TASK-001.md");
        assert_eq!(
            decide(
                &config,
                &t,
                &r,
                None,
                Decision::Void(stale.clone(), void.clone()),
                None,
                0.0
            ),
            Gate::Act(GateAction::Renew {
                role: "builder".into(),
                model: None,
                stale,
                void
            })
        );
        // A missing program fails before a person is asked.
        assert!(matches!(
            decide(&config, &t, &r, None, Decision::Missing, Some("`claude` not found"), 0.0),
            Gate::Act(GateAction::Fail(why)) if why.contains("claude")
        ));
        // The whitelist comes first of all.
        config.model_whitelist = vec!["ok".into()];
        assert!(matches!(
            decide(&config, &t, &r, Some("bad"), Decision::Missing, Some("x"), 0.0),
            Gate::Act(GateAction::Fail(why)) if why.contains("model_whitelist")
        ));
        // The cap pauses once reached.
        config.model_whitelist.clear();
        config.daily_cost_cap_usd = Usd::from_f64(1.0);
        assert!(matches!(
            decide(&config, &t, &r, None, approved(), None, 1.0),
            Gate::Pause(_)
        ));
        assert_eq!(
            decide(&config, &t, &r, None, approved(), None, 0.5),
            Gate::Go
        );
        // Ten dimes reach a dollar exactly: paused.
        let spent: Usd = std::iter::repeat_n(Usd::from_f64(0.1).unwrap(), 10).sum();
        assert!(matches!(
            decide(&config, &t, &r, None, approved(), None, spent.as_f64()),
            Gate::Pause(why) if why.contains("($1.00 of $1.00 spent today)")
        ));
    }

    #[test]
    fn the_forecast_counts_agents_at_work_and_says_when_it_has_none() {
        let config = Config {
            daily_cost_cap_usd: Usd::from_f64(1.0),
            ..Config::default()
        };
        let t = task("TASK-001", "");
        let r = role("builder", "prefix: BLD\n");
        let go = |reg: &Registry, r: &Role, committed: &Committed, spent: f64| {
            decide_with(
                &config,
                &t,
                r,
                Some("sonnet"),
                Decision::Missing,
                None,
                spent,
                reg,
                committed,
            )
        };
        let mut reg = Registry::default();
        assert_eq!(forecast(&reg, &r, Some("sonnet")), Forecast::Unknown);
        // No history: the cap cannot hold it back.
        assert_eq!(go(&reg, &r, &Committed::default(), 0.0), Gate::Go);
        let mut a: crate::registry::Agent = serde_json::from_value(serde_json::json!({
            "id": "BLD-001", "type": "builder", "task": "TASK-009", "status": "completed",
            "model": "claude-sonnet-4-5", "spawned": "2026-01-01T00:00:00Z", "cost_usd": 0.4
        }))
        .unwrap();
        reg.agents.insert(a.id.clone(), a.clone());
        a.id = "BLD-002".into();
        reg.agents.insert(a.id.clone(), a);
        // The alias finds the resolved model's runs.
        assert_eq!(
            forecast(&reg, &r, Some("sonnet")),
            Forecast::Median {
                usd: Usd::from_f64(0.4).unwrap(),
                runs: 2
            }
        );
        // $0.40 spent, one agent at work expected at $0.40: another would
        // make $1.20.
        let mut committed = Committed::default();
        assert_eq!(go(&reg, &r, &committed, 0.4), Gate::Go);
        committed.add(
            "builder",
            Some("sonnet"),
            forecast(&reg, &r, Some("sonnet")),
        );
        assert!(matches!(
            go(&reg, &r, &committed, 0.4),
            Gate::Wait(why) if why.contains("+ $0.40 expected from 1 agent at work")
        ));
        // At exactly the cap it may start.
        assert_eq!(go(&reg, &r, &committed, 0.2), Gate::Go);
        // A prior stands in for history; require_cost_history runs one at
        // a time without either.
        let fresh = Registry::default();
        let prior = role("builder", "prefix: BLD\ncost_prior_usd: 0.6\n");
        assert_eq!(
            forecast(&fresh, &prior, Some("sonnet")),
            Forecast::Prior(Usd::from_f64(0.6).unwrap())
        );
        let mut one = Committed::default();
        one.add(
            "builder",
            Some("sonnet"),
            Forecast::Prior(Usd::from_f64(0.6).unwrap()),
        );
        assert!(matches!(go(&fresh, &prior, &one, 0.0), Gate::Wait(_)));
        let strict = role("builder", "prefix: BLD\nrequire_cost_history: true\n");
        let mut calibrating = Committed::default();
        assert_eq!(go(&fresh, &strict, &calibrating, 0.0), Gate::Go);
        calibrating.add("builder", Some("sonnet"), Forecast::Unknown);
        assert!(matches!(
            go(&fresh, &strict, &calibrating, 0.0),
            Gate::Wait(why) if why.contains("require_cost_history")
        ));
    }

    #[test]
    fn an_unpriced_model_waits_under_a_cap_unless_allowed() {
        let mut config = Config {
            daily_cost_cap_usd: Usd::from_f64(5.0),
            ..Config::default()
        };
        let t = task("TASK-001", "");
        let r = role("coder", "prefix: COD\nagent: codex\n");
        assert!(matches!(
            decide(&config, &t, &r, Some("gpt-x"), Decision::Missing, None, 0.0),
            Gate::Wait(why) if why.contains("model `gpt-x` has no price")
        ));
        config.allow_unpriced_models = true;
        assert_eq!(
            decide(&config, &t, &r, Some("gpt-x"), Decision::Missing, None, 0.0),
            Gate::Go
        );
    }
}
