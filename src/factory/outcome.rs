//! What an agent's end does to its task. Pure: from the task as it is,
//! the role, the way the agent ended and what it reported, to a
//! [`Resolution`]; `record` writes it.
//!
//! | the end | the task |
//! |---|---|
//! | the task is no longer the agent's | untouched (the registry records it) |
//! | stopped | ready again, or cancelled (`stop --cancel`) |
//! | success, role without `review:` | done, moved to tasks/done |
//! | success, role with `review: R` | review by R |
//! | failure, timeout, lost, blocked | retried after a backoff while attempts ≤ retries, else failed |
//! | tester: PASS | done |
//! | tester: FAIL | back to the builder (ready), or failed after `max_review_rounds` |
//! | tester: no verdict | the tester again while ≤ its retries, else failed |

use std::time::Duration;

use crate::agent::{Adapter, Outcome};
use crate::role::Role;
use crate::task::{Status, Task};

use super::prompt::verdict;

/// How an agent ended, as the factory saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct End {
    /// Stopped on request (or its registry entry says `stopping`).
    pub stopped: bool,
    /// Stopped by the factory at its time limit.
    pub timed_out: bool,
}

/// What the end does to the task.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// The task is no longer this agent's: deleted or moved (`gone`), or
    /// reassigned while it ran.
    NotMine {
        /// Not in tasks/ any more.
        gone: bool,
    },
    /// Stopped: the task returns to ready, or is cancelled.
    Stopped {
        /// `taskq stop --cancel`.
        cancel: bool,
    },
    /// A stopped tester: the review is redone by the next one.
    TesterStopped,
    /// Done: the task moves to tasks/done.
    Done,
    /// A builder's success under the tester gate.
    Review {
        /// The role that checks it.
        reviewer: String,
    },
    /// A failed attempt, tried again after `wait`.
    Retry {
        /// This attempt's number.
        attempt: u32,
        /// The retries allowed.
        retries: u32,
        /// Why it failed.
        reason: String,
        /// The backoff.
        wait: Duration,
    },
    /// The last attempt failed.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: String,
    },
    /// The tester passed the builder's work: done.
    ReviewPassed {
        /// The builder agent.
        builder: String,
    },
    /// The tester failed it: back to the builder with the findings, or
    /// failed when this was the last round.
    ReviewFailed {
        /// The builder agent.
        builder: String,
        /// This round's number.
        round: u32,
        /// The tester's findings.
        findings: String,
        /// More than `max_review_rounds`: the task fails.
        last: bool,
    },
    /// The tester gave no verdict: it runs again, or the task fails.
    ReviewError {
        /// Tester runs without a verdict so far.
        errors: u32,
        /// Why.
        reason: String,
        /// Within the tester role's retries.
        retry: bool,
    },
}

impl Resolution {
    /// The status the task ends in.
    pub fn status(&self) -> Option<Status> {
        Some(match self {
            Resolution::NotMine { .. } => return None,
            Resolution::Stopped { cancel: true } => Status::Cancelled,
            Resolution::Stopped { cancel: false } | Resolution::Retry { .. } => Status::Ready,
            Resolution::TesterStopped | Resolution::Review { .. } => Status::Review,
            Resolution::Done | Resolution::ReviewPassed { .. } => Status::Done,
            Resolution::Failed { .. } => Status::Failed,
            Resolution::ReviewFailed { last, .. } => match last {
                true => Status::Failed,
                false => Status::Ready,
            },
            Resolution::ReviewError { retry, .. } => match retry {
                true => Status::Review,
                false => Status::Failed,
            },
        })
    }
}

/// The limits an outcome is resolved against.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `retry_backoff`: the first retry's wait (doubled each time).
    pub retry_backoff: Duration,
    /// `max_review_rounds`.
    pub max_review_rounds: u32,
}

/// The wait before retry number `attempts` (1 for the first): the base
/// doubled per attempt, at most an hour, times a jitter factor in
/// [0.9, 1.1) (`jitter` in [0, 1)).
pub fn backoff(base: Duration, attempts: u32, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30) as i32;
    base.mul_f64(2f64.powi(exp))
        .min(Duration::from_secs(3600))
        .mul_f64(0.9 + 0.2 * jitter.clamp(0.0, 1.0))
}

/// A failed attempt of task `t`: retried while attempts ≤ retries (the
/// task's `retries:`, else its role's), else failed.
pub fn attempt_failed(
    t: &Task,
    role: &Role,
    reason: &str,
    limits: Limits,
    jitter: f64,
) -> Resolution {
    let attempt = t.attempts + 1;
    let retries = t.extra().retries.unwrap_or(role.settings.retries);
    if attempt <= retries {
        Resolution::Retry {
            attempt,
            retries,
            reason: reason.to_string(),
            wait: backoff(limits.retry_backoff, attempt, jitter),
        }
    } else {
        Resolution::Failed {
            attempts: attempt,
            reason: reason.to_string(),
        }
    }
}

/// A failed attempt that no retry can mend (a program that is not
/// installed): failed at once.
pub fn attempt_refused(t: &Task, reason: &str) -> Resolution {
    Resolution::Failed {
        attempts: t.attempts + 1,
        reason: reason.to_string(),
    }
}

/// A tester run without a verdict: the tester again while within its
/// role's retries, else the task fails.
pub fn review_errored(t: &Task, tester: &Role, reason: &str) -> Resolution {
    let errors = t.extra().review_errors + 1;
    Resolution::ReviewError {
        errors,
        reason: reason.to_string(),
        retry: errors <= tester.settings.retries,
    }
}

/// Resolves an agent's end for task `t` (see the module table). `mine`:
/// the task is still assigned to this agent in tasks/todo (`None`: the
/// task is gone). `log_tail`: the end of its log (a shell tester's
/// findings).
#[allow(clippy::too_many_arguments)]
pub fn resolve(
    t: Option<&Task>,
    mine: bool,
    role: &Role,
    adapter: Adapter,
    end: End,
    outcome: &Outcome,
    log_tail: &str,
    limits: Limits,
    jitter: f64,
) -> Resolution {
    let Some(t) = t.filter(|_| mine) else {
        return Resolution::NotMine { gone: t.is_none() };
    };
    if t.status == Status::Review {
        if end.stopped {
            return Resolution::TesterStopped;
        }
        return resolve_review(t, role, adapter, end, outcome, log_tail, limits);
    }
    if t.status != Status::Running {
        return Resolution::NotMine { gone: false };
    }
    if end.stopped {
        return Resolution::Stopped { cancel: false };
    }
    if outcome.success && !end.timed_out {
        return match role.settings.review.as_deref() {
            Some(r) if r != role.name => Resolution::Review {
                reviewer: r.to_string(),
            },
            _ => Resolution::Done,
        };
    }
    let reason = outcome.reason.clone().unwrap_or_else(|| "failed".into());
    attempt_failed(t, role, &reason, limits, jitter)
}

/// A tester's end: exit code (shell and command testers) or a `VERDICT:`
/// line (model testers).
fn resolve_review(
    t: &Task,
    role: &Role,
    adapter: Adapter,
    end: End,
    outcome: &Outcome,
    log_tail: &str,
    limits: Limits,
) -> Resolution {
    let builder = t.extra().builder.as_deref().unwrap_or("").to_string();
    let verdict = if !adapter.is_model_cli() && !end.timed_out {
        Some(match outcome.success {
            true => (true, outcome.result.clone().unwrap_or_default()),
            false => (false, log_tail.trim().to_string()),
        })
    } else if outcome.success && !end.timed_out {
        outcome.result.as_deref().and_then(verdict)
    } else {
        None
    };
    let Some((passed, findings)) = verdict else {
        let reason = if outcome.success && !end.timed_out {
            "the tester gave no `VERDICT: PASS` or `VERDICT: FAIL` line".to_string()
        } else {
            outcome
                .reason
                .clone()
                .unwrap_or_else(|| "the tester failed".into())
        };
        return review_errored(t, role, &reason);
    };
    if passed {
        return Resolution::ReviewPassed { builder };
    }
    let round = t.extra().review_rounds + 1;
    Resolution::ReviewFailed {
        builder,
        round,
        findings,
        last: round > limits.max_review_rounds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factory::test_support::{role, task};

    const LIMITS: Limits = Limits {
        retry_backoff: Duration::from_secs(10),
        max_review_rounds: 2,
    };

    fn ok(result: &str) -> Outcome {
        Outcome {
            success: true,
            result: Some(result.into()),
            ..Outcome::default()
        }
    }

    fn failed(reason: &str) -> Outcome {
        Outcome {
            reason: Some(reason.into()),
            ..Outcome::default()
        }
    }

    const RAN: End = End {
        stopped: false,
        timed_out: false,
    };

    fn run(t: &Task, r: &Role, adapter: Adapter, end: End, o: &Outcome) -> Resolution {
        resolve(Some(t), true, r, adapter, end, o, "log tail", LIMITS, 0.5)
    }

    #[test]
    fn a_builders_end() {
        let running = task("TASK-001", "status: running\nassigned: BLD-001\n");
        let builder = role("builder", "prefix: BLD\nretries: 1\n");
        let c = Adapter::Claude;
        assert_eq!(run(&running, &builder, c, RAN, &ok("x")), Resolution::Done);
        let gated = role("builder", "prefix: BLD\nreview: tester\n");
        assert_eq!(
            run(&running, &gated, c, RAN, &ok("x")),
            Resolution::Review {
                reviewer: "tester".into()
            }
        );
        // Failure, then the last attempt.
        assert_eq!(
            run(
                &running,
                &builder,
                c,
                RAN,
                &failed("blocked: permission denied for Write")
            ),
            Resolution::Retry {
                attempt: 1,
                retries: 1,
                reason: "blocked: permission denied for Write".into(),
                wait: Duration::from_secs(10),
            }
        );
        let second = task("TASK-001", "status: running\nattempts: 1\n");
        assert_eq!(
            run(&second, &builder, c, RAN, &failed("exit 1")),
            Resolution::Failed {
                attempts: 2,
                reason: "exit 1".into()
            }
        );
        // A timeout is a failed attempt even when the CLI said success.
        let timeout = End {
            stopped: false,
            timed_out: true,
        };
        assert!(matches!(
            run(&second, &builder, c, timeout, &ok("x")),
            Resolution::Failed { .. }
        ));
        // Stopped; a task no longer its own; a task gone.
        let stopped = End {
            stopped: true,
            timed_out: false,
        };
        assert_eq!(
            run(&running, &builder, c, stopped, &ok("x")),
            Resolution::Stopped { cancel: false }
        );
        assert_eq!(
            resolve(
                Some(&running),
                false,
                &builder,
                c,
                RAN,
                &ok("x"),
                "",
                LIMITS,
                0.0
            ),
            Resolution::NotMine { gone: false }
        );
        assert_eq!(
            resolve(None, false, &builder, c, RAN, &ok("x"), "", LIMITS, 0.0),
            Resolution::NotMine { gone: true }
        );
        // Lost after a crash: a failed attempt like any other.
        assert!(matches!(
            attempt_failed(&running, &builder, "lost: its process ended", LIMITS, 0.0),
            Resolution::Retry { attempt: 1, .. }
        ));
        assert_eq!(
            attempt_refused(&running, "`claude` is not on the PATH"),
            Resolution::Failed {
                attempts: 1,
                reason: "`claude` is not on the PATH".into()
            }
        );
    }

    #[test]
    fn a_testers_end() {
        let review = task(
            "TASK-002",
            "status: review\nassigned: TST-001\nbuilder: BLD-001\nreview_role: tester\n",
        );
        let tester = role("tester", "prefix: TST\nretries: 1\n");
        let c = Adapter::Claude;
        assert_eq!(
            run(&review, &tester, c, RAN, &ok("fine\nVERDICT: PASS")),
            Resolution::ReviewPassed {
                builder: "BLD-001".into()
            }
        );
        assert_eq!(
            run(&review, &tester, c, RAN, &ok("VERDICT: FAIL\n- broken")),
            Resolution::ReviewFailed {
                builder: "BLD-001".into(),
                round: 1,
                findings: "- broken".into(),
                last: false
            }
        );
        let third = task(
            "TASK-002",
            "status: review\nbuilder: BLD-001\nreview_role: tester\nreview_rounds: 2\n",
        );
        assert!(matches!(
            run(&third, &tester, c, RAN, &ok("VERDICT: FAIL")),
            Resolution::ReviewFailed {
                round: 3,
                last: true,
                ..
            }
        ));
        // No verdict: the tester again, then the task fails.
        assert!(matches!(
            run(&review, &tester, c, RAN, &ok("looks fine")),
            Resolution::ReviewError {
                errors: 1,
                retry: true,
                ..
            }
        ));
        let erred = task(
            "TASK-002",
            "status: review\nbuilder: BLD-001\nreview_role: tester\nreview_errors: 1\n",
        );
        assert!(matches!(
            run(&erred, &tester, c, RAN, &failed("exit 2")),
            Resolution::ReviewError {
                errors: 2,
                retry: false,
                ..
            }
        ));
        // A shell tester's verdict is its exit code; its findings, the log.
        let sh = Adapter::Shell;
        assert_eq!(
            run(&review, &tester, sh, RAN, &failed("exit 1")),
            Resolution::ReviewFailed {
                builder: "BLD-001".into(),
                round: 1,
                findings: "log tail".into(),
                last: false
            }
        );
        let stopped = End {
            stopped: true,
            timed_out: false,
        };
        assert_eq!(
            run(&review, &tester, c, stopped, &ok("VERDICT: PASS")),
            Resolution::TesterStopped
        );
    }

    #[test]
    fn backoff_doubles_up_to_an_hour_with_jitter() {
        let base = Duration::from_secs(10);
        assert_eq!(backoff(base, 1, 0.5), Duration::from_secs(10));
        assert_eq!(backoff(base, 3, 0.5), Duration::from_secs(40));
        assert_eq!(backoff(base, 100, 0.5), Duration::from_secs(3600));
        assert_eq!(backoff(base, 1, 0.0), Duration::from_secs(9));
        assert!(backoff(base, 1, 0.999) < Duration::from_secs(11));
    }
}
