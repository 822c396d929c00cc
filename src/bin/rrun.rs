//! `rrun`: parse torchrun's flags, run the launch, exit with its status.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use rrun::console;

/// Prints a clap usage error (stderr), or help/version (stdout), in one write, and
/// returns clap's exit status (2 for usage errors, 0 for help and version).
fn usage(e: clap::Error) -> ExitCode {
    let to_stderr = e.use_stderr();
    let styled = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    } && std::env::var_os("NO_COLOR").is_none();
    let rendered = e.render();
    let text = if styled {
        rendered.ansi().to_string()
    } else {
        rendered.to_string()
    };
    if to_stderr {
        console::stderr_bytes(text.as_bytes());
    } else {
        console::stdout_bytes(text.as_bytes());
    }
    ExitCode::from(e.exit_code() as u8)
}

fn main() -> ExitCode {
    let cli = match rrun::launch::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage(e),
    };
    match rrun::launch::run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            rrun::eline!("rrun: error: {e}");
            ExitCode::from(1)
        }
    }
}
