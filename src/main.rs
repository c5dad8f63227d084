//! The `keygate` binary: daemon, CLI and dev environment in one.
#![forbid(unsafe_code)]

use clap::Parser;

/// mimalloc: fewer cycles in malloc/free than glibc under the daemon's many small, short-lived
/// allocations (docs/performance.md).
#[cfg(not(feature = "test-hooks"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Test builds count allocations (tests/alloc_budget.rs reads them from /metrics).
#[cfg(feature = "test-hooks")]
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn main() {
    let cli = keygate::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // blocking work is store flushes and file I/O: a few threads suffice, and each idle
        // thread would keep its own allocator heap
        .max_blocking_threads(16)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(keygate::cli::run(cli));
    std::process::exit(code);
}
