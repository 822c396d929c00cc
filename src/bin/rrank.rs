//! `rrank`: parse vLLM-style flags, run, exit 2 on validation errors and 1 on failures.

use std::process::ExitCode;

use clap::Parser;
use rrun::rank::cli::{Cli, normalize_args};

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    match rrun::rank::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let rank = std::env::var("RANK").unwrap_or_else(|_| "0".into());
            rrun::eline!("rrank: error (rank {rank}): {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
