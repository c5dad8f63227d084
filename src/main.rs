//! The `keygate` binary: daemon, CLI and dev environment in one.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = keygate::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
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
