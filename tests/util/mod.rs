//! The test harness, by concern: `root` (the temp taskq root and the files
//! written in it), `process` (running the binaries, waiting, process
//! clean-up), `json` (reading `--json` output and the registry), `git`,
//! `overlap` (how many agents ran at once) and `npm` (installing the real
//! agent CLIs). Everything but `npm` is re-exported here, so tests name
//! `crate::util::TestRoot`, `crate::util::wait_for`, ...

#![allow(dead_code)]

pub mod git;
pub mod json;
pub mod npm;
pub mod overlap;
pub mod process;
pub mod root;

pub use git::*;
pub use json::*;
pub use overlap::*;
pub use process::*;
pub use root::*;
