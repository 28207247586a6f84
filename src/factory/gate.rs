//! The gates a ready task passes before an agent starts for it: the model
//! whitelist, the adapter's program, a person's approval, the daily cost
//! cap and the cost forecast. Pure: the approval files' state is an input.

use crate::approval::{self, Decision};
use crate::config::Config;
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
}

/// What a gate needs besides the task and its role.
pub struct GateInput<'a> {
    /// The root (approval paths are shown relative to it).
    pub root: &'a Root,
    /// The factory's config.
    pub config: &'a Config,
    /// Past runs (for the forecast).
    pub registry: &'a Registry,
    /// Spent today, in USD.
    pub spent_today: f64,
    /// The approval files of a task (or request) name, as they are now.
    pub decision: &'a dyn Fn(&str) -> Decision,
    /// Why a role's program cannot be started (not on the PATH), if so.
    pub missing_program: &'a dyn Fn(&Role) -> Option<String>,
}

/// Decides whether `t` may start now with `role` and `model`.
pub fn gate(input: &GateInput<'_>, t: &Task, role: &Role, model: Option<&str>) -> Gate {
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
        match (input.decision)(&t.id) {
            Decision::Approved(_) => {}
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
        if spent >= cap {
            return Gate::Pause(format!(
                "daily cost cap reached (${spent:.2} of ${cap:.2} spent today); resumes at local midnight"
            ));
        }
        if let Some(estimate) = input.registry.median_cost(&role.name, model) {
            if spent + estimate > cap {
                return Gate::Wait(format!(
                    "forecast ${estimate:.2} (median of past {} runs) would pass the daily cost cap (${spent:.2} of ${cap:.2} spent)",
                    role.name
                ));
            }
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
        let root = Root::new("/r");
        let reg = Registry::default();
        let decision = move |_: &str| decision.clone();
        let missing = move |_: &Role| missing.map(str::to_string);
        let input = GateInput {
            root: &root,
            config,
            registry: &reg,
            spent_today: spent,
            decision: &decision,
            missing_program: &missing,
        };
        gate(&input, t, r, model)
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
        config.daily_cost_cap_usd = Some(1.0);
        assert!(matches!(
            decide(&config, &t, &r, None, approved(), None, 1.0),
            Gate::Pause(_)
        ));
        assert_eq!(
            decide(&config, &t, &r, None, approved(), None, 0.5),
            Gate::Go
        );
    }
}
