//! The `taskq` binary: parse, set up logging, run, exit with the code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // One malloc arena: the scan's threads allocate tasks that outlive
    // them, and per-thread arenas would keep their slack (measured: 100,000
    // tasks must fit in 50 MB; BENCHMARKS.md).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = taskq::cli::Cli::parse();
    taskq::logging::init(cli.verbose, cli.quiet);
    taskq::run(cli)
}
