//! `taskq report` (issue 17) through the binary: the HTML page is one
//! self-contained file that headless Chromium renders (a screenshot that
//! is not blank) without a single network request, hostile titles
//! escaped; `--markdown` and `--json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::TestRoot;

const HOSTILE: &str = "<script>document.title='pwned'</script><img src=\"https://evil.example/x.png\"> | *bold* [link](https://evil.example)";

/// A root where the factory ran: a chain of done tasks, a failure with a
/// hostile title, a blocked task.
fn worked_root() -> TestRoot {
    let root = TestRoot::new();
    root.factory("");
    root.shell_role(2);
    root.write_task(
        "a",
        "id: TASK-001\ntitle: first\ntags: [job]",
        "```sh\ntrue\n```",
    );
    root.write_task(
        "b",
        "id: TASK-002\ntitle: second\ntags: [job]\ndependencies: [TASK-001]",
        "```sh\nsleep 0.2\n```",
    );
    root.write_task(
        "c",
        &format!(
            "id: TASK-003\ntitle: {}\ntags: [job]\nretries: 0\ndependencies: [TASK-001]",
            serde_json::to_string(HOSTILE).unwrap()
        ),
        "```sh\necho 'boom </td><script>x</script>'; exit 4\n```",
    );
    root.write_task(
        "d",
        "id: TASK-004\ntitle: after the failure\ntags: [job]\ndependencies: [TASK-003, TASK-002]",
        "```sh\ntrue\n```",
    );
    let run = root.run_until_idle(&[]);
    assert_eq!(run.code, 1, "TASK-004 can never run\n{}", run.stderr);
    root
}

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome", "chrome"]
        .iter()
        .find_map(|name| taskq::spawn::find_program(name, None))
}

/// Runs headless Chromium on `page` with every host name unresolvable and
/// network logging on; returns its stderr. Killed after 90 s.
fn screenshot(chromium: &Path, page: &Path, png: &Path, profile: &Path) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1600",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=1",
            "--vmodule=*url_request*=3,*network*=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .env("HOME", profile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        use std::io::Read;
        let _ = std::io::BufReader::new(stderr).read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

#[test]
fn the_html_report_renders_offline_in_headless_chromium() {
    let root = worked_root();
    let page = root.path().join("report.html");
    let run = root.taskq(&["report", "--html", "report.html"]).ok();
    assert!(
        run.stderr
            .contains("wrote report.html (4 tasks, 3 agent runs)"),
        "{}",
        run.stderr
    );
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: no reference out of the page. The hostile title's
    // URLs are there only as escaped text.
    assert!(!html.contains("<script"), "titles are escaped");
    assert!(!html.contains("<img"), "titles are escaped");
    for attr in ["src=\"", "src='", "href=", "@import", "url(http", "url(//"] {
        assert!(!html.contains(attr), "`{attr}` in the page");
    }
    let urls = html.matches("http://").count() + html.matches("https://").count();
    let escaped = html
        .matches("&quot;https://evil.example/x.png&quot;")
        .count()
        + html.matches("(https://evil.example)").count();
    assert_eq!(urls, escaped, "every URL in the page is the escaped title");
    for section in [
        "Dependency graph",
        "Agents over time",
        "Per day",
        "Per role",
        "Per model",
        "Failures",
    ] {
        assert!(html.contains(section), "{section}");
    }
    assert!(
        html.contains("exit 4") || html.contains("exit code 4"),
        "the failure's reason"
    );

    let Some(chromium) = chromium() else {
        eprintln!("SKIPPED the Chromium part: no chromium, chromium-browser or google-chrome on the PATH (apt-get install chromium)");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let png = profile.path().join("shot.png");
    let log = screenshot(&chromium, &page, &png, profile.path());
    assert!(png.is_file(), "no screenshot\n{log}");
    // Not blank: the pixels differ.
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let bytes = &buf[..info.buffer_size()];
    let px = info.color_type.samples()
        * if info.bit_depth == png::BitDepth::Sixteen {
            2
        } else {
            1
        };
    let first = &bytes[..px];
    let differing = bytes.chunks(px).filter(|p| *p != first).count();
    let total = bytes.len() / px;
    eprintln!(
        "chromium screenshot {}x{}: {differing} of {total} pixels differ from the first",
        info.width, info.height
    );
    assert!(differing > total / 100, "the screenshot is (nearly) blank");
    // No network request from the page: every URL request Chromium
    // logged is one of its own background services (time, accounts, made
    // and failed to resolve here), and the only file it loaded is the page.
    let requests: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("NotifyBeforeURLRequest: ").nth(1))
        .collect();
    let own = |url: &str| {
        let host = url
            .split("://")
            .nth(1)
            .unwrap_or("")
            .split(['/', ':', '?'])
            .next()
            .unwrap_or("");
        [
            "google.com",
            "googleapis.com",
            "gstatic.com",
            "gvt1.com",
            "chromium.org",
        ]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
    };
    let foreign: Vec<&&str> = requests.iter().filter(|u| !own(u)).collect();
    assert!(
        foreign.is_empty(),
        "the page made network requests: {foreign:?}"
    );
    assert!(
        !log.contains("evil.example"),
        "the hostile title's URL was fetched"
    );
    let files: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("FileURLLoader::Start: ").nth(1))
        .collect();
    assert!(
        files
            .iter()
            .all(|f| f.trim() == format!("file://{}", page.display())),
        "{files:?}"
    );
    eprintln!(
        "chromium: {} request(s) of its own background services, none from the page; {} file load(s)",
        requests.len(),
        files.len()
    );
}

#[test]
fn markdown_and_json_reports() {
    let root = worked_root();
    let md = root.taskq(&["report", "--markdown"]).ok().stdout;
    assert!(md.starts_with("### taskq report"), "{md}");
    assert!(md.contains("**4** tasks"), "{md}");
    assert!(md.contains("| job | 3 |"), "{md}");
    assert!(md.contains("TASK-003"), "{md}");
    assert!(!md.contains("<script"), "{md}");
    assert!(!md.contains("](https"), "no live link from a title: {md}");
    assert!(md.lines().count() <= 60, "{md}");
    root.taskq(&["report", "--markdown", "pr.md"]).ok();
    assert_eq!(root.read("pr.md"), md);
    let j: Value = serde_json::from_str(&root.taskq(&["--json", "report"]).ok().stdout).unwrap();
    assert_eq!(j["tasks"].as_array().unwrap().len(), 4);
    assert_eq!(j["agents"].as_array().unwrap().len(), 3);
    assert_eq!(j["states"]["done"], 2);
    assert_eq!(j["failures"][0]["task"], "TASK-003");
    assert_eq!(j["failures"][0]["title"], HOSTILE);
    // No format: a usage error with a hint.
    let run = root.taskq(&["report"]).code(2);
    assert!(run.stderr.contains("hint:"), "{}", run.stderr);
}
