//! `completions SHELL`: print a completion script for bash, zsh, fish, elvish or PowerShell.

use std::io::Write;

use clap::CommandFactory as _;

use crate::cli::{Cli, CompletionsArgs};

/// Write the completion script to `out`. A closed pipe (`| head`) is not an error.
///
/// # Errors
/// Writing to `out` failed for another reason.
pub fn run(args: &CompletionsArgs, out: &mut dyn Write) -> std::io::Result<()> {
    let mut cmd = Cli::command();
    // clap_complete panics on write errors, so render into memory first.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "host-bridge", &mut script);
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
