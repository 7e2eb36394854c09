//! `twill-kube-controllers`: IPAM clean-up on the Kubernetes datastore, one leader at a time.

use std::time::Duration;

use clap::Parser;
use twill_node::controllers::{self, Options};

/// Calico kube-controllers' IPAM jobs: a deleted node's addresses, blocks and affinities are
/// released; a handle whose pod is gone is released after the leak grace period. Replicas
/// elect one leader through a Lease.
#[derive(Debug, Parser)]
#[command(name = "twill-kube-controllers", version, about)]
struct Cli {
    /// `kubernetes` (KUBECONFIG, ~/.kube/config or the pod's account) or
    /// `kubernetes:KUBECONFIG`.
    #[arg(long, env = "TWILL_DATASTORE", default_value = "kubernetes")]
    datastore: String,
    /// This replica's name in the Lease (default: the host name, or POD_NAME).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The Lease's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "twill-system")]
    lease_namespace: String,
    /// The Lease's name.
    #[arg(long, default_value = "twill-kube-controllers")]
    lease_name: String,
    /// Seconds a Lease holds without renewal.
    #[arg(long, default_value_t = 15.0)]
    lease_duration: f64,
    /// Seconds after its last renewal at which a leader stops acting (less than the lease
    /// duration).
    #[arg(long, default_value_t = 10.0)]
    renew_deadline: f64,
    /// Seconds between renewals (and attempts to take the Lease).
    #[arg(long, default_value_t = 2.0)]
    retry_period: f64,
    /// Where /livez, /readyz and /metrics listen.
    #[arg(long, default_value = "0.0.0.0:9094")]
    health_listen: String,
    /// Seconds between full passes (default: the KubeControllersConfiguration's
    /// reconcilerPeriod, else 300).
    #[arg(long)]
    reconcile_period: Option<f64>,
    /// Seconds a handle must look leaked before it is released (default: the
    /// KubeControllersConfiguration's leakGracePeriod, else 900).
    #[arg(long)]
    leak_grace_period: Option<f64>,
    /// Seconds without progress of the main loop after which /livez fails.
    #[arg(long, default_value_t = 60.0)]
    watchdog_timeout: f64,
    /// Log as JSON.
    #[arg(long)]
    log_json: bool,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    twill_node::init_logging(cli.log_json);
    if cli.renew_deadline >= cli.lease_duration {
        eprintln!(
            "error: --renew-deadline ({}) must be shorter than --lease-duration ({}), or two replicas could act at once",
            cli.renew_deadline, cli.lease_duration
        );
        return std::process::ExitCode::from(2);
    }
    let seconds = |s: f64| Duration::from_secs_f64(s.max(0.1));
    let identity = cli.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| format!("twill-kube-controllers-{}", std::process::id()))
    });
    let options = Options {
        datastore: cli.datastore,
        identity,
        lease_namespace: cli.lease_namespace,
        lease_name: cli.lease_name,
        lease_duration: seconds(cli.lease_duration),
        renew_deadline: seconds(cli.renew_deadline),
        retry_period: seconds(cli.retry_period),
        health_listen: cli.health_listen,
        reconcile_period: cli.reconcile_period.map(seconds),
        leak_grace_period: cli.leak_grace_period.map(seconds),
        watchdog: seconds(cli.watchdog_timeout),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(controllers::run(options)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
