//! `rrun-bench`: drive an OpenAI-compatible server and report latency and throughput.
//! Exit status 0 when every request completed, 1 on any failure.

use std::process::ExitCode;

use clap::Parser;
use rrun::bench::{BenchArgs, report, run, write_result};

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let done = run(&args).and_then(|r| {
        print!("{}", report(&r));
        write_result(&args, &r).map(|()| r)
    });
    match done {
        Ok(r) if r["failed"].as_u64().unwrap_or(0) == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            rrun::eline!("rrun-bench: error: {e}");
            ExitCode::from(1)
        }
    }
}
