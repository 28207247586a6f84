//! The `taskq` binary: parse, set up logging, run, exit with the code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = taskq::cli::Cli::parse();
    taskq::logging::init(cli.verbose, cli.quiet);
    taskq::run(cli)
}
