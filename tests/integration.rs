//! One integration test binary (as ripgrep and jj do): every module drives
//! the built `taskq` binary in temp directories.

mod util;

mod bad_input;
mod bounded;
mod claim;
mod cli;
mod e2e;
mod edits;
mod factory;
mod gates;
mod git;
mod openclaw;
mod properties;
