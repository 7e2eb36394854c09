//! What twill-node does when it starts on a cluster, before the policy loop, as calico-node's
//! startup does: this node's address on its Node resource (autodetected), the default IP pool
//! when the cluster has none, and — on a Kubernetes install — the CNI plugin's credentials,
//! kept fresh while the agent runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use ipnet::IpNet;
use serde_json::json;
use twill_shared::client::{Client, ClientError, WriteMode};
use twill_shared::datastore::{Datastore, DatastoreError};
use twill_shared::resource::{Key, Kind, Resource};

/// Interfaces that never carry the node's own address: Calico's first-found exclusions (as
/// patterns matched from the start), with Twill's own devices beside Calico's.
const EXCLUDED_INTERFACES: &[&str] = &[
    "^lo$",
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^vxlan.calico.*",
    "^vxlan-v6.calico.*",
    "^wireguard.cali.*",
    "^wg-v6.cali.*",
    "^nodelocaldns.*",
    "^vxlan.twill.*",
    "^vxlan-v6.twill.*",
    "^twl.*",
];

/// How the node's IPv4 address is found (Calico's `IP_AUTODETECTION_METHOD`).
#[derive(Debug, Clone)]
pub enum Autodetect {
    /// The first global address on an interface not excluded.
    FirstFound,
    /// The Kubernetes Node's InternalIP.
    KubernetesInternalIp,
    /// The first address on an interface whose name matches one of the patterns.
    Interface(Vec<regex::Regex>),
    /// As first-found, also skipping interfaces whose name matches one of the patterns.
    SkipInterface(Vec<regex::Regex>),
    /// The first address inside one of the ranges.
    Cidr(Vec<IpNet>),
    /// The source address of the route to this destination.
    CanReach(String),
    /// Leave the Node's address as it is.
    None,
}

impl Autodetect {
    /// Parses Calico's spelling: `first-found`, `kubernetes-internal-ip`,
    /// `interface=REGEX[,REGEX…]`, `skip-interface=REGEX[,…]`, `cidr=CIDR[,CIDR…]`,
    /// `can-reach=DESTINATION`, `none`. Patterns match anywhere in the name, as Go's
    /// `regexp.MatchString` (Calico's) does; anchor them with `^…$` for a whole name.
    pub fn parse(text: &str) -> anyhow::Result<Autodetect> {
        let text = text.trim();
        let patterns = |method: &str, list: &str| -> anyhow::Result<Vec<regex::Regex>> {
            list.split(',')
                .map(|p| {
                    regex::Regex::new(p.trim())
                        .with_context(|| format!("{method}={p}: not a regular expression"))
                })
                .collect()
        };
        Ok(match text.split_once('=') {
            None if text == "first-found" || text.is_empty() => Autodetect::FirstFound,
            None if text == "kubernetes-internal-ip" => Autodetect::KubernetesInternalIp,
            None if text == "none" => Autodetect::None,
            Some(("interface", list)) => Autodetect::Interface(patterns("interface", list)?),
            Some(("skip-interface", list)) => {
                Autodetect::SkipInterface(patterns("skip-interface", list)?)
            }
            Some(("cidr", list)) => Autodetect::Cidr(
                list.split(',')
                    .map(|c| {
                        c.trim()
                            .parse()
                            .with_context(|| format!("cidr={c}: not a CIDR"))
                    })
                    .collect::<anyhow::Result<_>>()?,
            ),
            Some(("can-reach", destination)) => Autodetect::CanReach(destination.to_string()),
            _ => bail!(
                "ip autodetection method {text:?}: expected first-found, kubernetes-internal-ip, \
                 interface=REGEX, skip-interface=REGEX, cidr=CIDR, can-reach=DESTINATION or none"
            ),
        })
    }
}

/// The pool created when the cluster has none (Calico's `CALICO_IPV4POOL_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultPool {
    /// The pool's range.
    pub cidr: IpNet,
    /// Its block size.
    pub block_size: u8,
    /// `Never`, `Always` or `CrossSubnet`.
    pub vxlan_mode: String,
    /// `Never`, `Always` or `CrossSubnet`.
    pub ipip_mode: String,
    /// Masquerade traffic leaving the pool.
    pub nat_outgoing: bool,
}

/// An address with its prefix on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InterfaceAddress {
    interface: String,
    address: IpNet,
}

/// The node's IPv4 addresses, as `ip -j -4 addr` lists them (global scope only).
fn interface_addresses() -> anyhow::Result<Vec<InterfaceAddress>> {
    let output = std::process::Command::new("ip")
        .args(["-j", "-4", "addr", "show"])
        .output()
        .context("cannot run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "ip addr: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_addresses(&output.stdout)
}

fn parse_addresses(json: &[u8]) -> anyhow::Result<Vec<InterfaceAddress>> {
    let links: Vec<serde_json::Value> = serde_json::from_slice(json).context("ip -j addr")?;
    let mut found = Vec::new();
    for link in links {
        let name = link["ifname"].as_str().unwrap_or_default().to_string();
        for info in link["addr_info"].as_array().into_iter().flatten() {
            if info["scope"] != "global" {
                continue;
            }
            let (Some(local), Some(prefix)) = (info["local"].as_str(), info["prefixlen"].as_u64())
            else {
                continue;
            };
            if let Ok(address) = format!("{local}/{prefix}").parse() {
                found.push(InterfaceAddress {
                    interface: name.clone(),
                    address,
                });
            }
        }
    }
    Ok(found)
}

/// The address `method` picks among `addresses` (`internal_ip`: the Node's InternalIP;
/// `route_source`: the source address towards can-reach's destination).
fn pick(
    method: &Autodetect,
    addresses: &[InterfaceAddress],
    internal_ip: Option<std::net::IpAddr>,
    route_source: Option<std::net::IpAddr>,
) -> Option<IpNet> {
    let with_address = |ip: std::net::IpAddr| {
        addresses
            .iter()
            .find(|a| a.address.addr() == ip)
            .map(|a| a.address)
    };
    let excluded = |name: &str| {
        EXCLUDED_INTERFACES
            .iter()
            .any(|p| regex::Regex::new(p).is_ok_and(|r| r.is_match(name)))
    };
    match method {
        Autodetect::None => None,
        Autodetect::FirstFound => addresses
            .iter()
            .find(|a| !excluded(&a.interface))
            .map(|a| a.address),
        Autodetect::SkipInterface(patterns) => addresses
            .iter()
            .find(|a| !excluded(&a.interface) && !patterns.iter().any(|p| p.is_match(&a.interface)))
            .map(|a| a.address),
        Autodetect::Cidr(ranges) => addresses
            .iter()
            .find(|a| ranges.iter().any(|r| r.contains(&a.address.addr())))
            .map(|a| a.address),
        Autodetect::Interface(patterns) => addresses
            .iter()
            .find(|a| patterns.iter().any(|p| p.is_match(&a.interface)))
            .map(|a| a.address),
        Autodetect::KubernetesInternalIp => internal_ip.and_then(with_address),
        Autodetect::CanReach(_) => route_source.and_then(with_address),
    }
}

/// The source address the kernel picks towards `destination` (`ip -j route get`).
fn route_source(destination: &str) -> anyhow::Result<std::net::IpAddr> {
    // A name is looked up first (`ip route get` takes addresses only).
    let address: std::net::IpAddr = match destination.parse() {
        Ok(address) => address,
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(destination, 0))
            .with_context(|| format!("can-reach={destination}: cannot resolve it"))?
            .find(|a| a.is_ipv4())
            .with_context(|| format!("can-reach={destination}: no IPv4 address"))?
            .ip(),
    };
    let output = std::process::Command::new("ip")
        .args(["-j", "route", "get", &address.to_string()])
        .output()
        .context("cannot run ip (iproute2)")?;
    if !output.status.success() {
        bail!(
            "no route to {destination}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let routes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("no route to {destination}"))?;
    routes
        .first()
        .and_then(|r| r["prefsrc"].as_str())
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no source address towards {destination}"))
}

/// Detects this node's IPv4 address and writes it on its Node resource (creating the Node on
/// datastores where nothing else does); a Node whose address is already right is left alone.
pub async fn node_address(
    store: &Arc<dyn Datastore>,
    node: &str,
    method: &Autodetect,
) -> anyhow::Result<()> {
    if matches!(method, Autodetect::None) {
        return Ok(());
    }
    // A concurrent change of the Node (the kubelet's status, most likely, as the network
    // turns ready) is read again and the address written on top of it.
    let mut attempt = 0;
    loop {
        match write_node_address(store, node, method).await {
            Err(err) if attempt < 10 && is_conflict(&err) => {
                attempt += 1;
                tracing::info!(
                    node,
                    attempt,
                    "the Node changed meanwhile: writing its address again"
                );
            }
            outcome => return outcome,
        }
    }
}

fn is_conflict(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::Datastore(DatastoreError::Conflict { .. }))
        ) || matches!(
            e.downcast_ref::<DatastoreError>(),
            Some(DatastoreError::Conflict { .. })
        )
    })
}

async fn write_node_address(
    store: &Arc<dyn Datastore>,
    node: &str,
    method: &Autodetect,
) -> anyhow::Result<()> {
    let client = Client::new(store.clone());
    let key = Key::cluster(Kind::Node, node);
    let existing = client.get(&key).await?;
    let internal_ip = match &existing {
        Some(Resource::Node(n)) => n
            .spec
            .addresses
            .iter()
            .flatten()
            .find(|a| a.address_type.as_deref() == Some("InternalIP"))
            .and_then(|a| a.address.as_deref()?.parse().ok()),
        _ => None,
    };
    let source = match method {
        Autodetect::CanReach(destination) => Some(route_source(destination)?),
        _ => None,
    };
    let addresses = interface_addresses()?;
    let Some(address) = pick(method, &addresses, internal_ip, source) else {
        bail!(
            "no IPv4 address for node {node} by {method:?} among {:?}",
            addresses
                .iter()
                .map(|a| format!("{} {}", a.interface, a.address))
                .collect::<Vec<_>>()
        );
    };
    let wanted = address.to_string();
    match existing {
        Some(Resource::Node(mut current)) => {
            let now = current
                .spec
                .bgp
                .as_ref()
                .and_then(|b| b.ipv4_address.as_ref())
                .map(|c| c.0.to_string());
            if now.as_deref() == Some(wanted.as_str()) {
                return Ok(());
            }
            let bgp = current.spec.bgp.get_or_insert_with(Default::default);
            bgp.ipv4_address = Some(wanted.parse().map_err(anyhow::Error::msg)?);
            tracing::info!(node, address = %wanted, previous = ?now, "node address autodetected");
            client
                .write_all(&[Resource::Node(current)], WriteMode::Replace)
                .await
                .context("writing the node's address")?;
        }
        _ => {
            let document = json!({"apiVersion": "projectcalico.org/v3", "kind": "Node",
                "metadata": {"name": node}, "spec": {"bgp": {"ipv4Address": wanted}}});
            let resource = Resource::decode(Kind::Node, document)?;
            tracing::info!(node, address = %wanted, "node created with its autodetected address");
            client
                .write_all(&[resource], WriteMode::Create)
                .await
                .context("creating the node")?;
        }
    }
    Ok(())
}

/// Creates `default-ipv4-ippool` from `pool` when the cluster has no pool at all (two nodes
/// starting at once: one creates it, the other finds it made).
pub async fn default_pool(store: &Arc<dyn Datastore>, pool: &DefaultPool) -> anyhow::Result<()> {
    if !store.list(Some(Kind::IpPool), None).await?.items.is_empty() {
        return Ok(());
    }
    let document = json!({"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "default-ipv4-ippool"},
        "spec": {"cidr": pool.cidr.to_string(), "blockSize": pool.block_size,
                 "vxlanMode": pool.vxlan_mode, "ipipMode": pool.ipip_mode,
                 "natOutgoing": pool.nat_outgoing, "nodeSelector": "all()"}});
    let resource = Resource::decode(Kind::IpPool, document)
        .context("the default pool's settings (TWILL_IPV4POOL_*)")?;
    match Client::new(store.clone())
        .write_all(&[resource], WriteMode::Create)
        .await
    {
        Ok(_) => {
            tracing::info!(cidr = %pool.cidr, "no IP pool: created default-ipv4-ippool");
            Ok(())
        }
        Err(ClientError::Datastore(DatastoreError::AlreadyExists { .. })) => Ok(()),
        Err(err) => Err(err).context("creating the default IP pool"),
    }
}

/// Keeps the CNI plugin's kubeconfig fresh: writes it now if it is missing, then again when
/// a third of its token's life is left; failures are retried every 30 s and logged.
pub fn spawn_cni_credentials(client: kube::Client, server: String, path: PathBuf) {
    use twill_shared::datastore::cni_credentials::{write_cni_kubeconfig, IN_CLUSTER_CA};
    tokio::spawn(async move {
        // The file install-cni wrote is renewed at the first pass: its token's issue time is
        // not known here.
        let mut due = SystemTime::now();
        loop {
            if SystemTime::now() >= due {
                match write_cni_kubeconfig(&client, &server, IN_CLUSTER_CA.as_ref(), &path).await {
                    Ok(credentials) => {
                        tracing::info!(path = %path.display(), "CNI plugin's kubeconfig written");
                        let life = credentials
                            .expires
                            .duration_since(credentials.issued)
                            .unwrap_or(Duration::from_secs(3600));
                        due = credentials.issued + life * 2 / 3;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot renew the CNI plugin's kubeconfig");
                        due = SystemTime::now() + Duration::from_secs(30);
                    }
                }
            }
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(Duration::from_secs(60));
            tokio::time::sleep(wait).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    // What `ip -j -4 addr show` printed in a lab node (iproute2 6.1), trimmed.
    const IP_ADDR: &str = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":3,"ifname":"vxlan.twill","addr_info":[{"family":"inet","local":"10.90.3.0","prefixlen":32,"scope":"global"}]},
      {"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.0.11","prefixlen":24,"scope":"global"}]},
      {"ifindex":4,"ifname":"ens5","addr_info":[{"family":"inet","local":"198.19.0.11","prefixlen":16,"scope":"global"}]}]"#;

    fn addresses() -> Vec<InterfaceAddress> {
        parse_addresses(IP_ADDR.as_bytes()).unwrap()
    }

    #[test]
    fn first_found_skips_loopback_and_tunnels() {
        let picked = pick(&Autodetect::FirstFound, &addresses(), None, None);
        assert_eq!(picked, Some("198.18.0.11/24".parse().unwrap()));
    }

    #[test]
    fn interface_and_internal_ip_and_can_reach_pick_their_address_with_its_prefix() {
        // Calico's spelling: a comma list, matched anywhere in the name.
        let by_name = Autodetect::parse("interface=wlan.*,ens").unwrap();
        assert_eq!(
            pick(&by_name, &addresses(), None, None),
            Some("198.19.0.11/16".parse().unwrap())
        );
        let internal = Some("198.19.0.11".parse().unwrap());
        assert_eq!(
            pick(
                &Autodetect::KubernetesInternalIp,
                &addresses(),
                internal,
                None
            ),
            Some("198.19.0.11/16".parse().unwrap())
        );
        let reach = Autodetect::parse("can-reach=198.18.0.1").unwrap();
        let source = Some("198.18.0.11".parse().unwrap());
        assert_eq!(
            pick(&reach, &addresses(), None, source),
            Some("198.18.0.11/24".parse().unwrap())
        );
        // An InternalIP no interface holds is no answer.
        let elsewhere = Some("203.0.113.9".parse().unwrap());
        assert_eq!(
            pick(
                &Autodetect::KubernetesInternalIp,
                &addresses(),
                elsewhere,
                None
            ),
            None
        );
    }

    #[test]
    fn skip_interface_and_cidr_pick_what_calico_picks() {
        let skip = Autodetect::parse("skip-interface=eth.*").unwrap();
        assert_eq!(
            pick(&skip, &addresses(), None, None),
            Some("198.19.0.11/16".parse().unwrap())
        );
        let cidr = Autodetect::parse("cidr=192.0.2.0/24,198.19.0.0/16").unwrap();
        assert_eq!(
            pick(&cidr, &addresses(), None, None),
            Some("198.19.0.11/16".parse().unwrap())
        );
        // first-found skips Calico's and Twill's tunnels by their own names only: an uplink
        // called vxlan0 is an uplink.
        let uplink = r#"[{"ifname":"vxlan0","addr_info":[{"local":"198.18.5.2","prefixlen":24,"scope":"global"}]}]"#;
        let uplink = parse_addresses(uplink.as_bytes()).unwrap();
        assert_eq!(
            pick(&Autodetect::FirstFound, &uplink, None, None),
            Some("198.18.5.2/24".parse().unwrap())
        );
    }

    #[test]
    fn methods_parse_as_calico_spells_them() {
        assert!(matches!(
            Autodetect::parse("").unwrap(),
            Autodetect::FirstFound
        ));
        assert!(matches!(
            Autodetect::parse("none").unwrap(),
            Autodetect::None
        ));
        assert!(matches!(
            Autodetect::parse("kubernetes-internal-ip").unwrap(),
            Autodetect::KubernetesInternalIp
        ));
        assert!(Autodetect::parse("interface=(").is_err());
        assert!(Autodetect::parse("bogus=eth0").is_err());
        assert!(Autodetect::parse("cidr=10.0.0.0/33").is_err());
    }
}
