//! One integration test binary (as ripgrep and jj do): every module drives
//! the built `taskq` binary in temp directories.

mod util;

mod agent_api;
mod approvals_trust;
mod bad_input;
mod bounded;
mod chaos;
mod claim;
mod cli;
mod confine;
mod control;
mod cost;
mod docs;
mod e2e;
mod edits;
mod exactly_once;
mod factory;
mod faults;
mod firsthour;
mod gates;
mod git;
mod gittrail;
mod newcomer;
mod notify;
mod orphans;
mod properties;
mod report;
mod sandbox;
mod schedule;
mod service;
mod top;
