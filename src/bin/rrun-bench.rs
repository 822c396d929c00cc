//! `rrun-bench`: drive an OpenAI-compatible server and report latency and throughput.

use std::process::ExitCode;

use clap::Parser;
use rrun::bench::{BenchArgs, report, run};

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    match run(&args) {
        Ok(r) => {
            print!("{}", report(&r));
            if let Some(p) = &args.result_json
                && let Err(e) =
                    std::fs::write(p, serde_json::to_string_pretty(&r).unwrap_or_default())
            {
                rrun::eline!("rrun-bench: error: cannot write {}: {e}", p.display());
                return ExitCode::from(1);
            }
            if r["failed"].as_u64().unwrap_or(0) > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            rrun::eline!("rrun-bench: error: {e}");
            ExitCode::from(1)
        }
    }
}
