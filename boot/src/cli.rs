//! Command-line handling shared by the host tools (`mkboot`, `hw-tests`,
//! `bench-ipc`): bad arguments give one line on stderr and exit status 2,
//! errors one line and status 1.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

/// Parses the command line of `tool`; on `--help`/`--version` or a usage
/// error, returns the exit code to leave with (after printing).
pub fn parse<C: Parser>(tool: &str) -> Result<C, ExitCode> {
    C::try_parse().map_err(|e| {
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        let first = if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            "missing subcommand".to_string()
        } else {
            let text = e.render().to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            line.strip_prefix("error: ").unwrap_or(line).to_string()
        };
        eprintln!("{tool}: {first} (try `{tool} --help`)");
        ExitCode::from(2)
    })
}

/// Prints `error` as one line prefixed with `tool` and returns failure.
pub fn fail(tool: &str, error: &anyhow::Error) -> ExitCode {
    eprintln!("{tool}: {}", format!("{error:#}").replace('\n', " "));
    ExitCode::FAILURE
}
