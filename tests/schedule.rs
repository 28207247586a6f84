//! The one scheduler: on random queues (priorities, dependencies, roles,
//! approvals, reviews, per-role and global limits, stagger, memory
//! budget), what `run --dry-run` says the factory starts first is what
//! `taskq run` really starts first (driven with the fake agent), and `why`
//! agrees with both.

use std::collections::BTreeSet;
use std::time::Duration;

use proptest::prelude::*;

use crate::util::{wait_for, TestRoot};

/// One generated task.
#[derive(Debug, Clone)]
struct Spec {
    priority: &'static str,
    tag: &'static str,
    /// Dependencies on earlier tasks (offsets back).
    deps: Vec<usize>,
    /// `approval: required`, and the approval file's state.
    approval: Option<&'static str>,
    /// In review by `tester` (its builder is gone).
    review: bool,
    hold: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(vec!["critical", "high", "medium", "low"]),
        prop::sample::select(vec!["a", "b", "c", "none"]),
        prop::collection::vec(1usize..4, 0..2),
        prop::option::weighted(
            0.3,
            prop::sample::select(vec!["missing", "pending", "approved", "rejected"]),
        ),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(priority, tag, deps, approval, review, hold)| Spec {
            priority,
            tag,
            deps,
            approval,
            review,
            hold,
        })
}

/// The factory-wide and per-role settings.
#[derive(Debug, Clone)]
struct Limits {
    max: usize,
    role_a: usize,
    role_b: usize,
    tester: usize,
    stagger: bool,
    memory_mb: Option<u64>,
    /// Role `b` needs approval.
    b_approval: bool,
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        1usize..5,
        1usize..4,
        1usize..3,
        1usize..3,
        prop::bool::weighted(0.2),
        prop::option::weighted(0.25, prop::sample::select(vec![200u64, 700, 1000])),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(max, role_a, role_b, tester, stagger, memory_mb, b_approval)| Limits {
                max,
                role_a,
                role_b,
                tester,
                stagger,
                memory_mb,
                b_approval,
            },
        )
}

fn build(root: &TestRoot, specs: &[Spec], l: &Limits) {
    let mut extra = format!("heartbeat: 1h\nmax_concurrent: {}\n", l.max);
    if l.stagger {
        extra.push_str("spawn_stagger: 1h\n");
    }
    if let Some(mb) = l.memory_mb {
        extra.push_str(&format!("max_agent_memory_mb: {mb}\n"));
    }
    // `factory` writes max_concurrent 3 first; the later key would be a
    // duplicate, so write the whole config here.
    root.factory("");
    let config = root.read("agents/factory/config.yaml");
    root.write(
        "agents/factory/config.yaml",
        config
            .replace("max_concurrent: 3\n", "")
            .replace("heartbeat: 2s\n", "")
            + &extra,
    );
    root.role(
        "alpha",
        &format!(
            "prefix: ALP\nmodel: m-a\ntags: [a]\nmax_concurrent: {}",
            l.role_a
        ),
    );
    root.role(
        "beta",
        &format!(
            "prefix: BET\nmodel: m-b\nfallback_models: [m-b2]\ntags: [b]\nmax_concurrent: {}{}",
            l.role_b,
            if l.b_approval {
                "\napproval: required"
            } else {
                ""
            }
        ),
    );
    root.role(
        "tester",
        &format!(
            "prefix: TST\nmodel: m-t\ntags: [t]\nmax_concurrent: {}",
            l.tester
        ),
    );
    for (k, s) in specs.iter().enumerate() {
        let id = format!("TASK-{:03}", k + 1);
        let deps: BTreeSet<String> = s
            .deps
            .iter()
            .filter(|&&d| d <= k)
            .map(|d| format!("TASK-{:03}", k + 1 - d))
            .collect();
        let mut header = format!("id: {id}\ntitle: task {k}\npriority: {}\n", s.priority);
        if s.tag != "none" {
            header.push_str(&format!("tags: [{}]\n", s.tag));
        }
        if !deps.is_empty() {
            let deps: Vec<String> = deps.into_iter().collect();
            header.push_str(&format!("dependencies: [{}]\n", deps.join(", ")));
        }
        if s.review {
            header.push_str("status: review\nreview_role: tester\nbuilder: BLD-9\n");
        } else if s.hold {
            header.push_str("status: hold\n");
        } else {
            header.push_str("status: ready\n");
        }
        if let Some(state) = s.approval {
            header.push_str("approval: required\n");
            if state != "missing" {
                root.write(
                    &format!("approvals/{state}/{id}.md"),
                    format!("---\ntask: {id}\n---\n"),
                );
            }
        }
        root.write(
            &format!("tasks/todo/{id}.md"),
            format!("---\n{header}---\nx\n"),
        );
    }
    root.write("agents/factory/last-task-id", format!("{}\n", specs.len()));
}

/// `(task, role, model)` of each start the dry run plans.
fn planned(root: &TestRoot) -> (BTreeSet<(String, String, String)>, serde_json::Value) {
    let plan = root.taskq(&["--json", "run", "--dry-run"]).ok().json();
    let starts = plan["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["action"] == "spawn")
        .map(|p| {
            (
                p["task"].as_str().unwrap().to_string(),
                p["role"].as_str().unwrap().to_string(),
                p["model"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (starts, plan)
}

fn check(specs: Vec<Spec>, l: Limits) -> Result<(), TestCaseError> {
    let root = TestRoot::new();
    build(&root, &specs, &l);
    let (plan, json) = planned(&root);
    // `why` says the same as the plan, task by task.
    for item in json["plan"].as_array().unwrap() {
        let id = item["task"].as_str().unwrap();
        let why = root.taskq(&["why", id]).ok().stdout;
        if item["action"] == "spawn" && item["review_of"].is_null() {
            let expect = format!(
                "the factory runs it next as {}",
                item["role"].as_str().unwrap()
            );
            prop_assert!(why.contains(&expect), "{id}: {why} / {item}");
        } else if why.contains("ready, but ") {
            let reason = item["why"].as_str().unwrap_or("");
            prop_assert!(why.contains(reason), "{id}: {why} / {item}");
        }
    }
    // What the factory really starts first.
    let started: BTreeSet<(String, String, String)> = if plan.is_empty() {
        // Nothing startable: the factory's first step starts nothing and
        // it is idle at once.
        let run = root.cmd(&["run", "--until-idle"]).output().unwrap();
        prop_assert!(
            matches!(run.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        BTreeSet::new()
    } else {
        let daemon = root.daemon(&[], &[("FAKE_AGENT_DELAY_MS", "600000")]);
        // The first step registers all its agents in one write.
        wait_for("the first step's agents", Duration::from_secs(30), || {
            root.path().join("agents/factory/registry.json").exists()
                && root.agents().len() >= plan.len()
                && root.agents().iter().all(|a| a["status"] == "active")
        });
        let agents = root.agents();
        let run = daemon.wait_after_term();
        prop_assert_eq!(run.code, 0, "{}", run.stderr);
        agents
            .iter()
            .map(|a| {
                (
                    a["task"].as_str().unwrap().to_string(),
                    a["type"].as_str().unwrap().to_string(),
                    a["model"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    prop_assert_eq!(&started, &plan, "plan: {}", json);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("TASKQ_SCHEDULE_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12),
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    })]

    #[test]
    fn dry_run_and_why_say_what_the_factory_starts_first(
        specs in prop::collection::vec(spec(), 1..9),
        limits in limits(),
    ) {
        check(specs, limits)?;
    }
}
