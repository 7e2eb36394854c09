//! `twill-bgpd --config FILE.toml [--control PATH] [--graceful-restart]`: Twill's BGP speaker
//! as a daemon. SIGHUP reloads the configuration; SIGTERM and SIGINT stop it (every session
//! ends with Cease / Administrative Shutdown, and Twill's kernel routes are removed); SIGUSR2
//! stops it for a graceful restart (no NOTIFICATION, kernel routes kept: start it again with
//! `--graceful-restart`).

#![allow(clippy::disallowed_methods)] // The binary is an edge.

use std::path::PathBuf;

use clap::Parser;
use tokio::sync::mpsc;
use twill_bgpd::io::{control, daemon};

/// Twill's BGP-4 speaker.
#[derive(Debug, Parser)]
#[command(name = "twill-bgpd", version, about)]
struct Args {
    /// Configuration file (TOML).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Control socket for `twillctl bgp`.
    #[arg(long, default_value = "/run/twill/bgpd.sock")]
    control: PathBuf,
    /// Start as a restarting speaker (graceful restart R bit): peers keep our routes.
    #[arg(long)]
    graceful_restart: bool,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("TWILL_LOG").unwrap_or_else(|_| "info".into());
    if std::env::var("TWILL_LOG_FORMAT").is_ok_and(|f| f == "json") {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colours only on a terminal: logs in files and journals stay plain text.
        tracing_subscriber::fmt()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
            .with_env_filter(filter)
            .init();
    }
    if args.check {
        return match std::fs::read_to_string(&args.config)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                twill_bgpd::config::DaemonConfig::parse(&text).map_err(|e| e.to_string())
            }) {
            Ok(_) => std::process::ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {}: {err}", args.config.display());
                std::process::ExitCode::FAILURE
            }
        };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "twill-bgpd stopped");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let daemon = daemon::Daemon::new(args.config, args.graceful_restart, sender.clone())?;
    control::serve(&args.control, sender.clone())?;
    if let Some(address) = daemon.metrics_listen() {
        control::serve_metrics(address, sender.clone()).await?;
    }
    use tokio::signal::unix::{signal, SignalKind};
    for (kind, event) in [
        (SignalKind::hangup(), None),
        (SignalKind::terminate(), Some(daemon::StopMode::Shutdown)),
        (SignalKind::interrupt(), Some(daemon::StopMode::Shutdown)),
        (
            SignalKind::user_defined2(),
            Some(daemon::StopMode::GracefulRestart),
        ),
    ] {
        let events = sender.clone();
        let mut signals = signal(kind)?;
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                let event = event.map_or(daemon::Event::Reload, daemon::Event::Stop);
                if events.send(event).is_err() {
                    return;
                }
            }
        });
    }
    tracing::info!(control = %args.control.display(), "twill-bgpd started");
    daemon.run(&mut receiver).await
}
