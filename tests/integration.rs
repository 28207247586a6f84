//! One integration test binary (as ripgrep and jj do): every module drives
//! the built `taskq` binary in temp directories.

mod util;

mod bad_input;
mod claim;
mod cli;
mod docs;
mod e2e;
mod edits;
mod factory;
mod faults;
mod firsthour;
mod gates;
mod git;
mod newcomer;
mod openclaw;
mod orphans;
mod properties;
mod schedule;
