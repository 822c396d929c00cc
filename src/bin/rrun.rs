//! `rrun`: parse torchrun's flags, run the launch, exit with its status.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = rrun::launch::cli::Cli::parse();
    match rrun::launch::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("rrun: error: {e}");
            ExitCode::from(1)
        }
    }
}
