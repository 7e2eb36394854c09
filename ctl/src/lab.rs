//! `twillctl lab`: a Twill cluster on this machine (see the twill-lab crate).

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;
use twill_lab::probe::{table, ProbeResult};
use twill_lab::topology::{Port, Topology};
use twill_lab::{Lab, UpOptions};

use crate::{usage, Failure};

#[derive(Debug, clap::Args)]
pub struct LabArgs {
    #[command(subcommand)]
    command: LabCommand,
    /// The lab's name (its namespaces are twl-NAME.*, its state /run/twill/lab/NAME/).
    #[arg(long, global = true, default_value = "twill")]
    name: String,
}

/// What `lab node` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeAction {
    /// SIGTERM.
    Stop,
    /// SIGKILL.
    Kill,
    /// Start again.
    Start,
}

/// Output formats of `lab status` and `lab probe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LabOutput {
    /// A table.
    Table,
    /// JSON.
    Json,
}

#[derive(Debug, Subcommand)]
enum TorCommand {
    /// Print the rack router's RIB, as its own command line shows it.
    Routes,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build the lab: nodes, namespaces and pods of the topology; returns when every pod answers.
    Up {
        /// The topology file (namespaces, pods, ports).
        #[arg(long)]
        topology: Option<String>,
        /// How many nodes.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Give pods an IPv6 address too.
        #[arg(long)]
        dual_stack: bool,
        /// Policy-only: pods wired by the reference ptp CNI plugin (host-local addresses),
        /// twill-node in --mode policy-only with interfacePrefix veth.
        #[arg(long, conflicts_with = "dual_stack")]
        policy_only: bool,
        /// A top-of-rack router in the underlay namespace (AS 65000), peering eBGP with every
        /// node through a BGPPeer the lab writes: bird, frr or gobgp.
        #[arg(long, conflicts_with = "policy_only")]
        tor: Option<String>,
        /// How pods reach other nodes: none (BGP-routed), vxlan, vxlan-cross-subnet.
        #[arg(long, default_value = "none", conflicts_with = "policy_only")]
        encap: String,
        /// Underlay subnets (198.18.K.0/24, routed by the underlay namespace); nodes are
        /// spread over them (for CrossSubnet encapsulation).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
        subnets: u8,
        /// A Kubernetes cluster: the control plane in the underlay namespace, containerd,
        /// kubelet and kube-proxy per node, Twill installed from deploy/kubernetes/twill.yaml,
        /// pods as Kubernetes Pods (`lab status -o json` gives the kubeconfig).
        #[arg(long, conflicts_with_all = ["policy_only", "dual_stack", "tor"])]
        kubernetes: bool,
        /// With --kubernetes: the cluster without Twill (nodes NotReady, no network) for an
        /// install by hand: `kubectl apply -f deploy/kubernetes/twill.yaml`.
        #[arg(long, requires = "kubernetes")]
        without_twill: bool,
    },
    /// The top-of-rack router.
    Tor {
        #[command(subcommand)]
        command: TorCommand,
    },
    /// Remove everything the lab made (also after its processes were killed).
    Down,
    /// Apply a file to the lab's datastore; `v1` Pod documents create pods.
    Apply {
        /// The file (`-` reads standard input).
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Delete what a file names; `v1` Pod documents remove pods.
    Delete {
        /// The file (`-` reads standard input).
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Nodes and pods.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: LabOutput,
    },
    /// The pod × pod matrix, observed on the wire from inside each source pod.
    Probe {
        /// N/PROTO (repeatable); default: the topology's and the pods' ports.
        #[arg(long = "port")]
        ports: Vec<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "table")]
        output: LabOutput,
        /// How long each probe waits for a reply, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Probe the pods' IPv6 addresses (dual-stack labs) instead of their IPv4 ones.
        #[arg(long)]
        ipv6: bool,
    },
    /// Stop, kill or start a node's twill-node (fault tests).
    Node {
        /// stop (SIGTERM), kill (SIGKILL) or start.
        #[arg(value_enum)]
        action: NodeAction,
        /// The node, e.g. node-1.
        node: String,
    },
    /// Wait until every node's dataplane reflects the datastore's current revision.
    Sync {
        /// Give up after this many seconds (exit 1).
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// Run a command in a pod (pod names resolve to pod addresses).
    Exec {
        /// NS/POD.
        pod: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// (internal) Serve ports inside a pod, answering NS/POD.
    #[command(hide = true)]
    Responder {
        /// What to answer.
        #[arg(long)]
        answer: String,
        /// N/PROTO (repeatable).
        #[arg(long = "port")]
        ports: Vec<String>,
    },
    /// (internal) Relay TCP from an address in one namespace to an address in another.
    #[command(hide = true)]
    Relay {
        /// The namespace to listen in (a /run/netns path; default: this one).
        #[arg(long)]
        netns: Option<std::path::PathBuf>,
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The namespace to connect from (a /run/netns path; default: this one).
        #[arg(long)]
        connect_netns: Option<std::path::PathBuf>,
        /// Address to connect to.
        #[arg(long)]
        connect: std::net::SocketAddr,
    },
    /// (internal) Hold a Kubernetes lab node's mount namespace (run inside `unshare --mount`).
    #[command(hide = true)]
    NodeNs {
        /// The node's disk directory.
        #[arg(long)]
        disk: std::path::PathBuf,
    },
    /// (internal) Probe targets read as JSON from standard input; print outcomes as JSON.
    #[command(hide = true)]
    ProbeAgent {
        /// How long each probe waits, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

/// Runs `twillctl lab …`; `datastore_flag` is `--datastore` when given on the command line
/// (the lab's own SQLite file otherwise).
pub async fn run(args: LabArgs, datastore_flag: Option<String>) -> Result<(), Failure> {
    match args.command {
        LabCommand::Responder { answer, ports } => {
            let ports = parse_ports(&ports)?;
            return Ok(twill_lab::agent::respond(answer, ports).await?);
        }
        LabCommand::Relay {
            netns,
            listen,
            connect_netns,
            connect,
        } => {
            return Ok(twill_lab::agent::relay(netns, listen, connect_netns, connect).await?);
        }
        LabCommand::NodeNs { disk } => {
            return Ok(twill_lab::cluster::hold_node_namespace(&disk)?);
        }
        LabCommand::ProbeAgent { timeout_ms } => {
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
            let targets = serde_json::from_str(&input)?;
            let outcomes =
                twill_lab::agent::probe_all(targets, Duration::from_millis(timeout_ms)).await;
            println!("{}", serde_json::to_string(&outcomes)?);
            return Ok(());
        }
        _ => {}
    }
    let lab = Lab::new(&args.name).map_err(|err| usage(format!("{err:#}")))?;
    match args.command {
        LabCommand::Up {
            topology,
            nodes,
            dual_stack,
            policy_only,
            tor,
            encap,
            subnets,
            kubernetes,
            without_twill,
        } => {
            let tor = tor
                .map(|t| t.parse::<twill_lab::tor::TorKind>())
                .transpose()
                .map_err(|err| usage(format!("--tor {err}")))?;
            if !matches!(
                encap.as_str(),
                "none" | "vxlan" | "vxlan-cross-subnet" | "ipip" | "ipip-cross-subnet"
            ) {
                return Err(usage(format!(
                    "--encap {encap:?} is not none, vxlan, vxlan-cross-subnet, ipip or ipip-cross-subnet"
                )));
            }
            let topology = match topology {
                Some(path) => Topology::parse(&read(&path)?)
                    .map_err(|err| anyhow::anyhow!("{path}: {err:#}"))?,
                None => Topology::default(),
            };
            let options = UpOptions {
                topology,
                nodes,
                datastore: datastore_flag,
                dual_stack,
                policy_only,
                tor,
                encap: Some(encap),
                subnets: usize::from(subnets),
                kubernetes,
                without_twill,
            };
            let state = lab.up(options).await?;
            println!(
                "lab {} is up: {} node(s), {} pod(s), datastore {}",
                state.name,
                state.nodes.len(),
                state.pods.len(),
                state.datastore
            );
        }
        LabCommand::Down => {
            let removed = lab.down().await?;
            println!(
                "lab {} is down ({} objects removed)",
                lab.name(),
                removed.len()
            );
        }
        LabCommand::Apply { file } => {
            for line in lab.apply(&read(&file)?).await? {
                println!("{line}");
            }
        }
        LabCommand::Delete { file } => {
            for line in lab.delete(&read(&file)?).await? {
                println!("{line}");
            }
        }
        LabCommand::Status { output } => status(&lab, output)?,
        LabCommand::Tor {
            command: TorCommand::Routes,
        } => print!("{}", lab.tor_routes()?),
        LabCommand::Probe {
            ports,
            output,
            timeout_ms,
            ipv6,
        } => {
            let ports = parse_ports(&ports)?;
            let results = lab
                .probe_family(&ports, Duration::from_millis(timeout_ms), ipv6)
                .await?;
            print_probe(&results, output)?;
        }
        LabCommand::Node { action, node } => {
            let action = match action {
                NodeAction::Stop => twill_lab::AgentAction::Stop,
                NodeAction::Kill => twill_lab::AgentAction::Kill,
                NodeAction::Start => twill_lab::AgentAction::Start,
            };
            lab.node_agent(&node, action)?;
            println!("twill-node on {node}: {action:?} done");
        }
        LabCommand::Sync { timeout } => {
            lab.sync(Duration::from_secs_f64(timeout)).await?;
            println!("every node reflects the datastore's current revision");
        }
        LabCommand::Exec { pod, command } => {
            let code = lab.exec(&pod, &command)?;
            if code != 0 {
                std::process::exit(code);
            }
        }
        LabCommand::Responder { .. }
        | LabCommand::ProbeAgent { .. }
        | LabCommand::Relay { .. }
        | LabCommand::NodeNs { .. } => {
            unreachable!("handled above")
        }
    }
    Ok(())
}

fn parse_ports(ports: &[String]) -> Result<Vec<Port>, Failure> {
    ports
        .iter()
        .map(|p| Port::parse(p).map_err(|err| usage(format!("--port {err:#}"))))
        .collect()
}

fn read(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(|err| anyhow::anyhow!("cannot read {path}: {err}"))
}

fn status(lab: &Lab, output: LabOutput) -> Result<(), Failure> {
    let state = lab.state()?;
    let mut value = json!({
        "name": state.name,
        "datastore": state.datastore,
        "tor": state.tor,
        "encap": state.encap,
        "nodes": state.nodes.iter().map(|n| json!({
            "name": n.name, "address": n.address,
            "bgp": lab.bgp_peers(&n.name).iter().map(|p| json!({
                "peer": p["address"], "description": p["description"],
                "state": p["state"], "uptime_s": p["uptime_s"], "accepted": p["accepted"],
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "pods": state.pods.iter().map(|p| json!({
            "namespace": p.namespace, "name": p.name, "node": p.node,
            "ip": p.ips.first(), "ips": p.ips, "labels": p.labels,
        })).collect::<Vec<_>>(),
    });
    if let Some(kubeconfig) = &state.kubeconfig {
        value["kubeconfig"] = json!(kubeconfig);
    }
    match output {
        LabOutput::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        LabOutput::Table => {
            println!("lab {} (datastore {})", state.name, state.datastore);
            if let Some(kubeconfig) = &state.kubeconfig {
                println!("kubectl --kubeconfig {kubeconfig} …");
            }
            println!("{:<10} {:<14} BGP SESSIONS", "NODE", "ADDRESS");
            for node in value["nodes"].as_array().into_iter().flatten() {
                let sessions: Vec<String> = node["bgp"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        format!(
                            "{} {}",
                            s["peer"].as_str().unwrap_or("?"),
                            s["state"].as_str().unwrap_or("?")
                        )
                    })
                    .collect();
                println!(
                    "{:<10} {:<14} {}",
                    node["name"].as_str().unwrap_or(""),
                    node["address"].as_str().unwrap_or(""),
                    if sessions.is_empty() {
                        "-".to_string()
                    } else {
                        sessions.join(", ")
                    }
                );
            }
            println!();
            println!("{:<24} {:<10} {:<28} LABELS", "POD", "NODE", "IPS");
            for pod in &state.pods {
                let labels: Vec<String> =
                    pod.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!(
                    "{:<24} {:<10} {:<28} {}",
                    pod.id(),
                    pod.node,
                    pod.ips.join(","),
                    labels.join(",")
                );
            }
        }
    }
    Ok(())
}

fn print_probe(results: &[ProbeResult], output: LabOutput) -> Result<(), Failure> {
    match output {
        LabOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"results": results}))?
        ),
        LabOutput::Table => print!("{}", table(results)),
    }
    Ok(())
}
