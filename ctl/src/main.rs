//! twillctl: Twill's command line.
//!
//! Exit codes: 0 success, 1 failure (the datastore refused, an object is missing, a document
//! is invalid), 2 usage (bad flags, unknown resource kind).

mod bgp;
mod ipam;
mod lab;
mod policy;
mod resources;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Twill's command line: manage resources in a Twill datastore.
#[derive(Debug, Parser)]
#[command(name = "twillctl", version, about)]
struct Cli {
    /// Datastore URL: sqlite:PATH, etcd://HOST:PORT[,HOST:PORT...] or kubernetes (default:
    /// $TWILL_DATASTORE, else sqlite:/var/lib/twill/twill.db; for `lab up`, the lab's own file).
    #[arg(long, global = true)]
    datastore: Option<String>,

    #[command(subcommand)]
    command: Command,
}

/// Output formats of `get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table of the main fields.
    Table,
    /// A table with more fields.
    Wide,
    /// YAML documents, applicable again.
    Yaml,
    /// JSON, applicable again.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or update the resources of a file (all or nothing).
    Apply(FileArgs),
    /// Create the resources of a file; fails if any exists (all or nothing).
    Create(FileArgs),
    /// Replace the resources of a file; fails if any is missing (all or nothing).
    Replace(FileArgs),
    /// Show resources.
    Get(GetArgs),
    /// Delete resources, by kind and name or by file (all or nothing).
    Delete(DeleteArgs),
    /// Ask a running twill-bgpd.
    Bgp(BgpArgs),
    /// IP address management: usage, consistency, release.
    Ipam(ipam::IpamArgs),
    /// A Twill cluster on this machine, in network namespaces.
    Lab(lab::LabArgs),
    /// Policy: which rule of which policy decides, and why.
    Policy(PolicyArgs),
    /// This node's agent.
    Node(NodeArgs),
}

#[derive(Debug, clap::Args)]
struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// For each direction, the tiers and policies that select the endpoint, in order, the
    /// rule that decided (or the default that applied), and the verdict.
    Explain {
        /// Source pod, NS/POD.
        #[arg(long)]
        from: String,
        /// Destination pod, NS/POD.
        #[arg(long)]
        to: String,
        /// Destination port, N[/tcp|udp|sctp].
        #[arg(long)]
        port: String,
        /// Output format (table or json).
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Debug, clap::Args)]
struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// The policy agent's state: in sync, applied revision, last apply, errors.
    Status {
        /// twill-node's status file.
        #[arg(long, default_value = "/run/twill/node-status.json")]
        status_file: std::path::PathBuf,
        /// Output format (table or json).
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
}

#[derive(Debug, clap::Args)]
struct BgpArgs {
    #[command(subcommand)]
    command: BgpCommand,
    /// twill-bgpd's control socket.
    #[arg(long, global = true, default_value = "/run/twill/bgpd.sock")]
    control: std::path::PathBuf,
    /// Output format (table or json).
    #[arg(short, long, global = true, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Debug, Subcommand)]
enum BgpCommand {
    /// Neighbours and their sessions.
    Peers,
    /// Paths in the RIB (every one, or one prefix's); with --peer, a neighbour's Adj-RIB-In
    /// (--in: what it sent, before import policy) or Adj-RIB-Out (--out: what we announce).
    Rib {
        /// A prefix (exact match) or an address (longest match, as forwarding would).
        target: Option<String>,
        /// The neighbour whose Adj-RIB-In or -Out to show.
        #[arg(long, requires = "direction")]
        peer: Option<String>,
        /// What the neighbour sent (before import policy).
        #[arg(long = "in", group = "direction", requires = "peer")]
        received: bool,
        /// What we announce to the neighbour (after export policy).
        #[arg(long = "out", group = "direction", requires = "peer")]
        sent: bool,
    },
    /// Stop a neighbour's session (Cease / Administrative Shutdown) until `enable`.
    Disable {
        /// The neighbour's address.
        address: String,
    },
    /// Start a neighbour's session again after `disable`.
    Enable {
        /// The neighbour's address.
        address: String,
    },
    /// Reload the configuration file (as SIGHUP does).
    Reload,
    /// Ask a neighbour to send its routes again (route refresh).
    Refresh {
        /// The neighbour's address.
        address: String,
    },
}

#[derive(Debug, clap::Args)]
struct FileArgs {
    /// File of YAML or JSON documents; `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    file: String,
    /// Namespace for namespaced documents that name none.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// Resource kind: e.g. networkpolicy, globalnetworkpolicy, ippool, node, knp, pod.
    kind: String,
    /// Only this object.
    name: Option<String>,
    /// Namespace of namespaced kinds.
    #[arg(
        short,
        long,
        default_value = "default",
        conflicts_with = "all_namespaces"
    )]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    output: Output,
}

#[derive(Debug, clap::Args)]
struct DeleteArgs {
    /// Resource kind (with NAME).
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    kind: Option<String>,
    /// Object name.
    #[arg(required_unless_present = "file")]
    name: Option<String>,
    /// Delete the objects a file names instead.
    #[arg(short = 'f', long = "filename")]
    file: Option<String>,
    /// Namespace of namespaced kinds.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Do not fail for objects that do not exist.
    #[arg(long)]
    skip_not_exists: bool,
}

/// A failure, and whether it is a usage error (exit 2) or not (exit 1).
#[derive(Debug)]
pub struct Failure {
    usage: bool,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure {
            usage: false,
            error: error.into(),
        }
    }
}

/// A usage error: exit code 2.
pub fn usage(message: String) -> Failure {
    Failure {
        usage: true,
        error: anyhow::anyhow!(message),
    }
}

/// The command line with the datastore resolved.
struct ResolvedCli {
    datastore: String,
    command: Command,
}

/// A reader that stops early (`twillctl get … | head`) closes the pipe: Rust ignores SIGPIPE,
/// so the next print panics. Exit quietly as a command killed by SIGPIPE does (128 + 13),
/// and leave every other panic to the default hook.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TWILL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            ExitCode::from(if failure.usage { 2 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    use twill_shared::client::WriteMode;
    let datastore_flag = cli.datastore.clone();
    let datastore = cli
        .datastore
        .or_else(|| {
            std::env::var("TWILL_DATASTORE")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| twill_shared::datastore::DEFAULT_URL.to_string());
    let cli = ResolvedCli {
        datastore,
        command: cli.command,
    };
    match cli.command {
        Command::Ipam(args) => ipam::run(args, &cli.datastore).await,
        Command::Lab(args) => lab::run(args, datastore_flag).await,
        Command::Policy(PolicyArgs {
            command:
                PolicyCommand::Explain {
                    from,
                    to,
                    port,
                    output,
                },
        }) => {
            policy::explain_command(&cli.datastore, &from, &to, &port, output == Output::Json).await
        }
        Command::Node(NodeArgs {
            command:
                NodeCommand::Status {
                    status_file,
                    output,
                },
        }) => policy::node_status(&status_file, output == Output::Json),
        Command::Apply(args) => {
            resources::write(
                &cli.datastore,
                &args.file,
                &args.namespace,
                WriteMode::Apply,
            )
            .await
        }
        Command::Create(args) => {
            resources::write(
                &cli.datastore,
                &args.file,
                &args.namespace,
                WriteMode::Create,
            )
            .await
        }
        Command::Replace(args) => {
            resources::write(
                &cli.datastore,
                &args.file,
                &args.namespace,
                WriteMode::Replace,
            )
            .await
        }
        Command::Get(args) => {
            let namespace = (!args.all_namespaces).then_some(args.namespace.as_str());
            resources::get(
                &cli.datastore,
                &args.kind,
                args.name.as_deref(),
                namespace,
                args.output,
            )
            .await
        }
        Command::Bgp(args) => match args.command {
            BgpCommand::Peers => bgp::peers(&args.control, args.output),
            BgpCommand::Rib {
                target,
                peer,
                received,
                sent,
            } => {
                let request = bgp::rib_request(target.as_deref(), peer.as_deref(), received, sent);
                bgp::rib(&args.control, &request, args.output)
            }
            BgpCommand::Disable { address } => {
                bgp::command(&args.control, &format!("disable {address}"))
            }
            BgpCommand::Enable { address } => {
                bgp::command(&args.control, &format!("enable {address}"))
            }
            BgpCommand::Reload => bgp::command(&args.control, "reload"),
            BgpCommand::Refresh { address } => {
                bgp::command(&args.control, &format!("refresh {address}"))
            }
        },
        Command::Delete(args) => match (&args.file, &args.kind, &args.name) {
            (Some(file), _, _) => {
                resources::delete_file(&cli.datastore, file, &args.namespace, args.skip_not_exists)
                    .await
            }
            (None, Some(kind), Some(name)) => {
                resources::delete_one(
                    &cli.datastore,
                    kind,
                    name,
                    &args.namespace,
                    args.skip_not_exists,
                )
                .await
            }
            _ => Err(usage("delete needs KIND NAME or -f FILE".into())),
        },
    }
}
