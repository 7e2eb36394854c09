//! Tables in calicoctl's style: upper-case headers, columns padded with three spaces.

use twill_shared::resource::{Kind, Resource};

/// Renders resources of one kind as a table.
pub fn render(kind: Kind, resources: &[Resource], wide: bool, with_namespace: bool) -> String {
    let mut header: Vec<&str> = Vec::new();
    if with_namespace {
        header.push("NAMESPACE");
    }
    header.extend(columns(kind, wide));
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for resource in resources {
        let mut row = Vec::new();
        if with_namespace {
            row.push(resource.namespace().unwrap_or("").to_string());
        }
        row.extend(cells(resource, wide));
        rows.push(row);
    }
    layout(&rows)
}

fn columns(kind: Kind, wide: bool) -> Vec<&'static str> {
    match (kind, wide) {
        (Kind::IpPool, false) => vec!["NAME", "CIDR", "SELECTOR"],
        (Kind::IpPool, true) => vec![
            "NAME",
            "CIDR",
            "NAT",
            "IPIPMODE",
            "VXLANMODE",
            "DISABLED",
            "DISABLEBGPEXPORT",
            "SELECTOR",
        ],
        (Kind::Node, false) => vec!["NAME"],
        (Kind::Node, true) => vec!["NAME", "ASN", "IPV4", "IPV6"],
        (Kind::BgpPeer, _) => vec!["NAME", "PEERIP", "NODE", "ASN"],
        (Kind::NetworkPolicy | Kind::GlobalNetworkPolicy, true) => {
            vec!["NAME", "TIER", "ORDER", "TYPES", "SELECTOR"]
        }
        (Kind::KubernetesNetworkPolicy, _) => vec!["NAME", "POD-SELECTOR", "TYPES"],
        (Kind::WorkloadEndpoint, _) => vec!["WORKLOAD", "NODE", "NETWORKS", "INTERFACE"],
        (Kind::HostEndpoint, false) => vec!["NAME", "NODE"],
        (Kind::HostEndpoint, true) => vec!["NAME", "NODE", "INTERFACE", "IPS", "PROFILES"],
        (Kind::NetworkSet | Kind::GlobalNetworkSet, true) => vec!["NAME", "NETS"],
        (Kind::Pod, _) => vec!["NAME", "LABELS"],
        (Kind::Namespace, _) => vec!["NAME", "LABELS"],
        _ => vec!["NAME"],
    }
}

fn text<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn joined<T: ToString>(values: Option<&Vec<T>>) -> String {
    values
        .map(|list| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn labels(resource: &Resource) -> String {
    let labels = resource
        .meta()
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"));
    labels.collect::<Vec<_>>().join(",")
}

fn cells(resource: &Resource, wide: bool) -> Vec<String> {
    let name = resource.name().to_string();
    match (resource, wide) {
        (Resource::IpPool(o), false) => {
            vec![
                name,
                text(o.spec.cidr),
                text(o.spec.node_selector.as_ref().map(|s| s.as_str())).if_empty("all()"),
            ]
        }
        (Resource::IpPool(o), true) => vec![
            name,
            text(o.spec.cidr),
            o.spec.nat_outgoing.unwrap_or(false).to_string(),
            text(o.spec.ipip_mode).if_empty("Never"),
            text(o.spec.vxlan_mode).if_empty("Never"),
            o.spec.disabled.unwrap_or(false).to_string(),
            o.spec.disable_bgp_export.unwrap_or(false).to_string(),
            text(o.spec.node_selector.as_ref().map(|s| s.as_str())).if_empty("all()"),
        ],
        (Resource::Node(o), true) => {
            let bgp = o.spec.bgp.as_ref();
            vec![
                name,
                text(bgp.and_then(|b| b.as_number).map(|a| a.0)).if_empty("(64512)"),
                text(bgp.and_then(|b| b.ipv4_address)),
                text(bgp.and_then(|b| b.ipv6_address)),
            ]
        }
        (Resource::BgpPeer(o), _) => vec![
            name,
            text(o.spec.peer_ip.as_deref())
                .if_empty(&text(o.spec.peer_selector.as_ref().map(|s| s.as_str()))),
            text(o.spec.node.as_deref())
                .if_empty(&text(o.spec.node_selector.as_ref().map(|s| s.as_str())))
                .if_empty("(global)"),
            text(o.spec.as_number.map(|a| a.0)),
        ],
        (Resource::NetworkPolicy(o), true) => vec![
            name,
            text(o.spec.tier.as_deref()).if_empty("default"),
            text(o.spec.order),
            joined(o.spec.types.as_ref()),
            text(o.spec.selector.as_ref().map(|s| s.as_str())).if_empty("all()"),
        ],
        (Resource::GlobalNetworkPolicy(o), true) => vec![
            name,
            text(o.spec.tier.as_deref()).if_empty("default"),
            text(o.spec.order),
            joined(o.spec.types.as_ref()),
            text(o.spec.selector.as_ref().map(|s| s.as_str())).if_empty("all()"),
        ],
        (Resource::KubernetesNetworkPolicy(o), _) => {
            let selector = o.spec.pod_selector.clone().unwrap_or_default();
            let shown = twill_shared::convert::label_selector_to_calico(&selector, false);
            vec![name, shown, joined(o.spec.policy_types.as_ref())]
        }
        (Resource::WorkloadEndpoint(o), _) => vec![
            text(o.spec.workload.as_deref().or(o.spec.pod.as_deref())).if_empty(&name),
            text(o.spec.node.as_deref()),
            joined(o.spec.ip_networks.as_ref()),
            text(o.spec.interface_name.as_deref()),
        ],
        (Resource::HostEndpoint(o), false) => vec![name, text(o.spec.node.as_deref())],
        (Resource::HostEndpoint(o), true) => vec![
            name,
            text(o.spec.node.as_deref()),
            text(o.spec.interface_name.as_deref()),
            joined(
                o.spec
                    .expected_ips
                    .as_ref()
                    .map(|ips| ips.iter().map(|ip| ip.0).collect::<Vec<_>>())
                    .as_ref(),
            ),
            joined(o.spec.profiles.as_ref()),
        ],
        (Resource::NetworkSet(o) | Resource::GlobalNetworkSet(o), true) => {
            vec![name, joined(o.spec.nets.as_ref())]
        }
        (Resource::Pod(_) | Resource::Namespace(_), _) => vec![name, labels(resource)],
        _ => vec![name],
    }
}

trait IfEmpty {
    fn if_empty(self, fallback: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, fallback: &str) -> String {
        if self.is_empty() {
            fallback.to_string()
        } else {
            self
        }
    }
}

/// Pads columns to their widest cell plus three spaces.
pub fn layout(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[index]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
