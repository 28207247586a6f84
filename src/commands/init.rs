//! `taskq init [DIR]`: write the layout, never overwriting a file.

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::output::Out;
use crate::templates::{INIT_DIRS, INIT_FILES};

/// Arguments of `taskq init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to create the root (default: `--root`, else the current
    /// directory). Existing files are kept as they are.
    pub dir: Option<PathBuf>,
}

/// Runs `taskq init`.
pub fn run(out: Out, root: Option<PathBuf>, args: Args) -> Result<ExitCode> {
    let dir = args.dir.or(root).unwrap_or_else(|| PathBuf::from("."));
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut created = Vec::new();
    for d in INIT_DIRS {
        let path = dir.join(d);
        if !path.is_dir() {
            fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            created.push(format!("{d}/"));
        }
    }
    for (rel, content) in INIT_FILES {
        if fsutil::create_new_atomic(&dir.join(rel), content.as_bytes())? {
            created.push((*rel).to_string());
        }
    }
    if out.json {
        out.json(&serde_json::json!({ "root": dir, "created": created }))?;
    } else if created.is_empty() {
        out.note(format!(
            "{} is already a taskq root; nothing changed",
            dir.display()
        ));
    } else {
        for c in &created {
            out.note(format!("created {c}"));
        }
        out.note(format!(
            "taskq root ready in {}: add a task with `taskq add \"Title\"` or drop a .md file in tasks/todo/",
            dir.display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}
