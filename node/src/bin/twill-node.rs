//! `twill-node`: the per-node agent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use twill_node::agent::{self, Mode, Options};

/// Twill's per-node agent: enforces policy (iptables + ipsets) and keeps endpoint routes.
#[derive(Debug, Parser)]
#[command(name = "twill-node", version, about)]
struct Cli {
    /// Datastore URL: sqlite:PATH or etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "TWILL_DATASTORE", default_value = twill_shared::datastore::DEFAULT_URL)]
    datastore: String,
    /// This node's name (default: the host name).
    #[arg(long, env = "TWILL_NODE_NAME")]
    node_name: Option<String>,
    /// full: policy and endpoint routes; policy-only: policy alone (another CNI wires pods).
    #[arg(long, value_enum, default_value = "full")]
    mode: CliMode,
    /// Where /livez, /readyz and /metrics listen.
    #[arg(long, default_value = "127.0.0.1:9099")]
    health_listen: String,
    /// Where the status file goes (read by `twillctl node status`).
    #[arg(long, default_value = "/run/twill/node-status.json")]
    status_file: PathBuf,
    /// Seconds between comparisons of the kernel with the desired state (drift repair).
    #[arg(long, default_value_t = 10.0)]
    refresh_interval: f64,
    /// Where the BGP speaker's configuration (bgpd.toml) and control socket (bgpd.sock) go.
    #[arg(long, default_value = "/run/twill")]
    run_dir: PathBuf,
    /// BGP passwords' Secrets, as files DIR/NAME/KEY.
    #[arg(long, default_value = "/etc/twill/secrets")]
    secrets_dir: PathBuf,
    /// Where the MTU pods should use goes (the twill CNI plugin reads it when its network
    /// configuration names no mtu).
    #[arg(long, default_value = "/var/lib/twill/mtu")]
    mtu_file: PathBuf,
    /// Seconds without progress of the main loop after which /livez fails (default: 3
    /// refresh intervals, at least 30).
    #[arg(long, env = "TWILL_WATCHDOG_TIMEOUT")]
    watchdog_timeout: Option<f64>,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CliMode {
    Full,
    PolicyOnly,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    twill_node::init_logging(cli.log_json);
    let node = cli.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    });
    let options = Options {
        datastore: cli.datastore,
        node,
        mode: match cli.mode {
            CliMode::Full => Mode::Full,
            CliMode::PolicyOnly => Mode::PolicyOnly,
        },
        health_listen: cli.health_listen,
        status_file: cli.status_file,
        refresh: Duration::from_secs_f64(cli.refresh_interval.max(0.1)),
        run_dir: cli.run_dir,
        secrets_dir: cli.secrets_dir,
        mtu_file: cli.mtu_file,
        watchdog: Duration::from_secs_f64(
            cli.watchdog_timeout
                .unwrap_or((3.0 * cli.refresh_interval).max(30.0))
                .max(1.0),
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(agent::run(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "twill-node stopped");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
