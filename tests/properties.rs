//! Property tests: the queue against a simple reference model, and the
//! frontmatter line parser against serde_yaml.

use proptest::prelude::*;
use taskq::frontmatter::{self, Change, Value};
use taskq::queue::Queue;
use taskq::store::Scan;
use taskq::task::{parse_timestamp, Folder, Priority, Status, Task};

#[derive(Debug, Clone)]
struct Spec {
    priority: u8,
    status: u8,
    done_folder: bool,
    assigned: bool,
    deps: Vec<usize>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0u8..4,
        0u8..7,
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::collection::vec(0usize..40, 0..3),
    )
        .prop_map(|(priority, status, done_folder, assigned, deps)| Spec {
            priority,
            status,
            done_folder,
            assigned,
            deps,
        })
}

fn build(specs: &[Spec]) -> Scan {
    let statuses = [
        Status::Ready,
        Status::Running,
        Status::Review,
        Status::Failed,
        Status::Done,
        Status::Cancelled,
        Status::Hold,
    ];
    let n = specs.len();
    let tasks = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Mostly ready tasks in todo/ and done tasks in done/.
            let status = if s.status < 3 {
                Status::Ready
            } else {
                statuses[(s.status - 3) as usize % 7]
            };
            let status = if s.done_folder { Status::Done } else { status };
            Task {
                id: format!("TASK-{:03}", i + 1).into(),
                rel: format!("{i}.md").into(),
                folder: if s.done_folder {
                    Folder::Done
                } else {
                    Folder::Todo
                },
                has_id: true,
                broken: false,
                id_line: 2,
                lean: false,
                version: 0,
                title: None,
                status,
                priority: Priority::from_rank(s.priority),
                tags: Box::new([]),
                // Allow forward edges, cycles and missing ids (index >= n).
                dependencies: s
                    .deps
                    .iter()
                    .filter(|&&d| d != i)
                    .map(|&d| Box::from(format!("TASK-{:03}", d + 1).as_str()))
                    .collect(),
                assigned: s.assigned.then(|| Box::from("someone")),
                role: None,
                attempts: 0,
                created: None,
                extra: None,
            }
        })
        .collect::<Vec<_>>();
    let _ = n;
    Scan::from_tasks(tasks)
}

/// The reference: the definitions of the issue, computed the slow way.
fn reference(scan: &Scan) -> Vec<String> {
    let tasks = &scan.tasks;
    let find = |id: &str| tasks.iter().position(|t| &*t.id == id);
    let open = |t: &Task| {
        t.folder == Folder::Todo && t.status != Status::Done && t.status != Status::Cancelled
    };
    let ready = |t: &Task| {
        t.folder == Folder::Todo
            && t.status == Status::Ready
            && t.assigned.is_none()
            && t.dependencies.iter().all(|d| {
                find(d).is_some_and(|j| {
                    tasks[j].folder == Folder::Done && tasks[j].status == Status::Done
                })
            })
    };
    // Transitive dependents of i that are open, reached through open tasks.
    let dependents = |i: usize| -> Vec<usize> {
        let mut seen = vec![false; tasks.len()];
        seen[i] = true;
        let mut stack = vec![i];
        let mut out = Vec::new();
        while let Some(v) = stack.pop() {
            for (u, t) in tasks.iter().enumerate() {
                if !seen[u] && t.dependencies.iter().any(|d| *d == tasks[v].id) && open(t) {
                    seen[u] = true;
                    out.push(u);
                    stack.push(u);
                }
            }
        }
        out
    };
    let mut ready_ix: Vec<(u8, usize, usize)> = tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| ready(t))
        .map(|(i, t)| {
            let deps = dependents(i);
            let eff = deps
                .iter()
                .map(|&u| tasks[u].priority.rank())
                .chain([t.priority.rank()])
                .max()
                .unwrap();
            (eff, deps.len(), i)
        })
        .collect();
    ready_ix.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    ready_ix
        .into_iter()
        .map(|(_, _, i)| tasks[i].id.to_string())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn ready_order_matches_the_reference_model(specs in prop::collection::vec(spec(), 1..40)) {
        let scan = build(&specs);
        let now = parse_timestamp("2026-01-01T00:00:00Z").unwrap();
        let q = Queue::new(&scan, now);
        let got: Vec<String> = q.ready(|_| true).iter().map(|r| scan.tasks[r.index].id.to_string()).collect();
        let want = reference(&scan);
        prop_assert_eq!(&got, &want);
        let next = q.next(|_| true).map(|r| scan.tasks[r.index].id.to_string());
        prop_assert_eq!(next, want.first().cloned());
    }

    #[test]
    fn line_parser_agrees_with_serde_yaml(
        keys in prop::collection::btree_set("[a-z][a-z_]{0,8}", 1..6),
        values in prop::collection::vec(prop_oneof![
            "[A-Za-z0-9 ._:/#'\"-]{0,20}".prop_map(|s| Value::Scalar(s.into())),
            prop::collection::vec("[A-Za-z0-9 ._,:-]{1,10}", 0..4).prop_map(|v| Value::Seq(v.into_iter().map(Into::into).collect())),
        ], 6),
        flow in any::<bool>(),
    ) {
        // Write values the way taskq writes them, then read them back both ways.
        let mut header = String::new();
        for (k, v) in keys.iter().zip(&values) {
            match v {
                Value::Scalar(s) => header.push_str(&format!("{k}: {}\n", frontmatter::yaml_str(s))),
                Value::Seq(items) if flow => header.push_str(&format!("{k}: {}\n", frontmatter::yaml_list(items))),
                Value::Seq(items) => {
                    header.push_str(&format!("{k}:\n"));
                    for i in items {
                        header.push_str(&format!("  - {}\n", frontmatter::yaml_str(i)));
                    }
                }
                _ => unreachable!(),
            }
        }
        let yaml: serde_yaml::Mapping = serde_yaml::from_str(&header).unwrap();
        let fields = frontmatter::parse(&header).unwrap();
        prop_assert_eq!(fields.len(), yaml.len());
        for f in &fields {
            let y = &yaml[f.key];
            match (&f.value, y) {
                (Value::Scalar(s), serde_yaml::Value::String(t)) => prop_assert_eq!(s.as_ref(), t.as_str()),
                (Value::Seq(items), serde_yaml::Value::Sequence(ys)) => {
                    let ys: Vec<String> = ys.iter().map(|v| v.as_str().unwrap().to_string()).collect();
                    prop_assert_eq!(items.iter().map(|s| s.to_string()).collect::<Vec<_>>(), ys);
                }
                (Value::Null, serde_yaml::Value::Sequence(ys)) => prop_assert!(ys.is_empty()),
                (Value::Seq(items), serde_yaml::Value::Null) => prop_assert!(items.is_empty()),
                (Value::Null, serde_yaml::Value::Null) => {}
                (a, b) => prop_assert!(false, "{:?} vs {:?} in {:?}", a, b, header),
            }
        }
    }

    #[test]
    fn edits_touch_only_their_keys(
        comment in "[a-z ]{0,12}",
        value in "[A-Za-z0-9 :#,'\"-]{0,16}",
        body in "[ -~\n]{0,80}",
    ) {
        let original = format!("---\n# {comment}\nid: TASK-1   # keep\ntitle: x\nstatus: ready\n---\n{body}");
        let edited = frontmatter::edit(original.as_bytes(), &[Change::set("status", &value), Change::set("new_key", &value)]).unwrap();
        let edited = String::from_utf8(edited).unwrap();
        let tail = format!("---\n{body}");
        let head = format!("---\n# {comment}\nid: TASK-1   # keep\ntitle: x\nstatus: ");
        prop_assert!(edited.ends_with(&tail));
        prop_assert!(edited.starts_with(&head));
        let layout = frontmatter::split(edited.as_bytes(), true).unwrap();
        let frontmatter::Layout::Header { start, end, .. } = layout else { panic!("header") };
        let fields = frontmatter::parse(&edited[start..end]).unwrap();
        let status = fields.iter().find(|f| f.key == "status").unwrap();
        let expect = if value.trim().is_empty() && value.is_empty() { Value::Scalar("".into()) } else { Value::Scalar(value.clone().into()) };
        prop_assert_eq!(&status.value, &expect);
    }
}
