//! `host-bridge`: parse flags, set up logging, run the chosen subcommand until Ctrl-C or
//! SIGTERM. Exit codes: 0 clean, 1 runtime failure, 2 usage or configuration error.

use std::process::ExitCode;

use clap::Parser;
use host_bridge::cli::{Cli, Command, LogFormat};
use host_bridge::commands;
use host_bridge::config::Config;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let metrics = host_bridge::serve::live::MetricsBind::from_flags(
                args.metrics_addr,
                args.no_metrics,
            );
            let pipeline = match args.attribution.pipeline_config() {
                Ok(p) => p,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    return ExitCode::from(2);
                }
            };
            let config = match Config::try_from(args) {
                Ok(config) => config,
                Err(err) => {
                    eprintln!("error: {:#}", anyhow::Error::new(err));
                    return ExitCode::from(2);
                }
            };
            exit_code(runtime.block_on(host_bridge::serve::live::serve(
                config,
                metrics,
                pipeline,
                shutdown_signal(),
            )))
        }
        Command::Measure(args) => {
            if let Err(err) = host_bridge::sources::power::PowerConfig::try_from(&args.power) {
                eprintln!("error: {:#}", anyhow::Error::new(err));
                return ExitCode::from(2);
            }
            let mut out = std::io::stdout();
            match runtime.block_on(commands::measure::run(&args, shutdown_signal(), &mut out)) {
                Ok(code) => ExitCode::from(code),
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Report(args) => {
            exit_code(commands::report::run(&args, &mut std::io::stdout().lock()))
        }
        Command::Compare(args) => {
            match commands::compare::run(&args, &mut std::io::stdout().lock()) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(commands::EXIT_THRESHOLD),
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::ExportGmt(args) => exit_code(commands::export_gmt::run(
            &args,
            &mut std::io::stdout().lock(),
        )),
        Command::Completions(args) => exit_code(
            commands::completions::run(&args, &mut std::io::stdout().lock()).map_err(Into::into),
        ),
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
