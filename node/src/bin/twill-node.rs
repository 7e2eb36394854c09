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
    #[arg(long, value_enum, env = "TWILL_MODE", default_value = "full")]
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
    /// How this node's IPv4 address is found and written on its Node resource at start:
    /// first-found, kubernetes-internal-ip, interface=REGEX, can-reach=DESTINATION, or none
    /// (leave the Node as it is).
    #[arg(long, env = "TWILL_IP_AUTODETECTION_METHOD", default_value = "none")]
    ip_autodetection: String,
    /// A pool to create at start when the cluster has none (Calico's CALICO_IPV4POOL_CIDR).
    #[arg(long, env = "TWILL_IPV4POOL_CIDR")]
    default_ipv4_pool: Option<ipnet::IpNet>,
    /// The default pool's block size.
    #[arg(long, env = "TWILL_IPV4POOL_BLOCK_SIZE", default_value_t = 26)]
    default_ipv4_pool_block_size: u8,
    /// The default pool's VXLAN mode: Never, Always, CrossSubnet.
    #[arg(long, env = "TWILL_IPV4POOL_VXLAN", default_value = "Never")]
    default_ipv4_pool_vxlan: String,
    /// The default pool's IP-in-IP mode: Never, Always, CrossSubnet.
    #[arg(long, env = "TWILL_IPV4POOL_IPIP", default_value = "Never")]
    default_ipv4_pool_ipip: String,
    /// The default pool masquerades traffic leaving it.
    #[arg(long, env = "TWILL_IPV4POOL_NAT_OUTGOING", default_value_t = true, action = clap::ArgAction::Set)]
    default_ipv4_pool_nat_outgoing: bool,
    /// Kubernetes installs: the CNI plugin's kubeconfig on the host (install-cni writes it
    /// first), renewed before its token expires.
    #[arg(long, env = "TWILL_CNI_KUBECONFIG")]
    cni_kubeconfig: Option<PathBuf>,
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
    let ip_autodetection = match twill_node::startup::Autodetect::parse(&cli.ip_autodetection) {
        Ok(method) => method,
        Err(err) => {
            eprintln!("error: --ip-autodetection: {err:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let default_pool = cli
        .default_ipv4_pool
        .map(|cidr| twill_node::startup::DefaultPool {
            cidr,
            block_size: cli.default_ipv4_pool_block_size,
            vxlan_mode: cli.default_ipv4_pool_vxlan.clone(),
            ipip_mode: cli.default_ipv4_pool_ipip.clone(),
            nat_outgoing: cli.default_ipv4_pool_nat_outgoing,
        });
    let options = Options {
        ip_autodetection,
        default_pool,
        cni_kubeconfig: cli.cni_kubeconfig.clone(),
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
