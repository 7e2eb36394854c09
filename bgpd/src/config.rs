//! The `twill-bgpd` configuration file (TOML), parsed and checked without I/O. Every error
//! names the key path (`neighbor[1].remote_asn`) and the reason.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::fsm::{self, GracefulRestartConfig};
use crate::policy::{
    parse_extended_community, AsPathRegex, DeletePattern, Filter, Match, Modify, PrefixMatch,
    PrependTimes, Rule, SetNextHop,
};
use crate::speaker::{LimitAction, LocalAs, NeighborConfig, PrefixLimit, SpeakerConfig};
use crate::wire::attribute::{community, Origin, PathAttributes};
use crate::wire::Family;

/// A TCP-MD5 key (RFC 2385). Its `Debug` output is redacted, so no log line, error or
/// debug dump of a configuration prints it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Password(String);

impl Password {
    /// A key.
    pub fn new(text: impl Into<String>) -> Password {
        Password(text.into())
    }

    /// The key itself, for the socket option that needs it (and the file that holds it).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A configuration problem: the key path and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `neighbor[0].families[1]`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

fn err(path: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        reason: reason.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    global: Global,
    #[serde(default)]
    neighbor: Vec<Neighbor>,
    #[serde(default)]
    originate: Vec<Originate>,
    kernel: Option<Kernel>,
    #[serde(default)]
    filter: Vec<FilterSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Global {
    asn: u32,
    router_id: Ipv4Addr,
    #[serde(default = "default_listen")]
    listen: Vec<SocketAddr>,
    cluster_id: Option<Ipv4Addr>,
    #[serde(default = "one")]
    max_paths: usize,
    /// Serve Prometheus metrics here (`/metrics`).
    metrics_listen: Option<SocketAddr>,
    /// Compare MED between paths from different neighbouring ASes too (FRR's
    /// `bgp always-compare-med`, BIRD's `med metric`; both off by default, as here).
    #[serde(default)]
    always_compare_med: bool,
    /// Choose the best path as RFC 4271 §9.1.2.2 says, whatever the order paths arrived in
    /// (BIRD's `deterministic med`, FRR's `bgp deterministic-med`). Twill has no other mode:
    /// `true` is the default and `false` is refused rather than silently ignored.
    #[serde(default = "yes")]
    deterministic_med: bool,
    /// After a restart with `--graceful-restart`, the longest wait for every neighbour's
    /// End-of-RIB before routes are selected, installed and sent anyway (RFC 4724 §4.1,
    /// the Selection_Deferral_Timer; FRR's `select-defer-time`, BIRD's `graceful restart
    /// wait`).
    #[serde(default = "default_selection_deferral")]
    selection_deferral_time: u64,
    /// RFC 8212: an eBGP neighbour without import (export) filters accepts (sends) no
    /// routes. `false` lets everything through instead, as before RFC 8212 (FRR's
    /// `no bgp ebgp-requires-policy`).
    #[serde(default = "yes")]
    ebgp_requires_policy: bool,
}

fn default_selection_deferral() -> u64 {
    120
}

fn default_listen() -> Vec<SocketAddr> {
    vec!["0.0.0.0:179".parse().expect("constant address")]
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Neighbor {
    address: IpAddr,
    remote_asn: u32,
    /// A name shown by `twillctl bgp peers` (twill-node writes Calico's protocol names,
    /// `Mesh_198_18_0_12`, from which `node status` takes the peer type). Changing it
    /// resets nothing.
    description: Option<String>,
    #[serde(default)]
    passive: bool,
    password: Option<Password>,
    #[serde(default = "default_hold")]
    hold_time: u16,
    /// Seconds between KEEPALIVEs; default a third of the hold time (RFC 4271 §10).
    keepalive_time: Option<u16>,
    /// Accept paths with our AS in them up to this many times (Calico's
    /// `numAllowedLocalASNumbers`, BIRD's `allow local as`, FRR's `allowas-in`): 0 to 10.
    #[serde(default)]
    allowas_in: u8,
    /// Use this AS on the session instead of `global.asn` (FRR's `local-as`; Calico's
    /// `localASNumber`); eBGP only.
    local_as: Option<u32>,
    /// With `local_as`: do not put it in front of the paths received (FRR's `no-prepend`).
    #[serde(default)]
    local_as_no_prepend: bool,
    /// With `local_as`: send it instead of `global.asn`, not in front of it (FRR's
    /// `replace-as`).
    #[serde(default)]
    local_as_replace_as: bool,
    families: Option<Vec<String>>,
    #[serde(default)]
    route_reflector_client: bool,
    #[serde(default)]
    next_hop_self: bool,
    /// eBGP: the subnet shared with this neighbour; routes whose next hop is another router
    /// on it keep that next hop (RFC 4271 §5.1.3 (2), BIRD's behaviour on a shared
    /// interface).
    shared_subnet: Option<IpNet>,
    /// Send paths with their own next hop, also to an eBGP neighbour (BIRD's `next hop
    /// keep`; Calico's `nextHopMode: Keep`). Not with `next_hop_self`.
    #[serde(default)]
    next_hop_keep: bool,
    /// Our IPv6 next hop on an IPv4 session (BIRD's `next hop address`).
    next_hop_v6: Option<std::net::Ipv6Addr>,
    /// Our IPv4 next hop on an IPv6 session.
    next_hop_v4: Option<Ipv4Addr>,
    #[serde(default)]
    ttl_security: bool,
    /// Hops to the neighbour; default 1 for eBGP, 64 for iBGP (as BIRD does).
    multihop: Option<u8>,
    #[serde(default = "yes")]
    graceful_restart: bool,
    #[serde(default = "default_restart")]
    restart_time: u16,
    #[serde(default = "default_port")]
    port: u16,
    source_address: Option<IpAddr>,
    #[serde(default = "default_connect_retry")]
    connect_retry: u64,
    add_path: Option<String>,
    #[serde(default)]
    extended_messages: bool,
    /// Import filters by name; `all` accepts everything, `none` nothing. RFC 8212: an eBGP
    /// neighbour with none takes no routes (unless `global.ebgp_requires_policy = false`).
    #[serde(default)]
    import: Vec<String>,
    /// Export filters by name, as `import`; RFC 8212: an eBGP neighbour with none is sent
    /// nothing.
    #[serde(default)]
    export: Vec<String>,
    /// Most prefixes accepted per family, after import policy (BIRD's `import limit`, FRR's
    /// `maximum-prefix`): `{ "ipv4-unicast" = 1000 }`.
    #[serde(default)]
    prefix_limit: BTreeMap<String, u32>,
    /// Above the limit: `warn`, `drop` (Cease, down until `twillctl bgp enable`; the
    /// default) or `restart` (Cease, back after `prefix_limit_restart` seconds).
    #[serde(default = "default_limit_action")]
    prefix_limit_action: String,
    /// Seconds before a session dropped by its prefix limit starts again (`restart`).
    prefix_limit_restart: Option<u64>,
}

fn default_limit_action() -> String {
    "drop".into()
}

fn default_hold() -> u16 {
    90
}
fn default_restart() -> u16 {
    120
}
fn default_port() -> u16 {
    179
}
fn default_connect_retry() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Originate {
    prefix: IpNet,
    #[serde(default)]
    communities: Vec<String>,
    med: Option<u32>,
    local_pref: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kernel {
    #[serde(default = "main_table")]
    table: u32,
    metric: Option<u32>,
    /// Prefixes inside these are not written to the kernel (something else routes them:
    /// twill-node's encapsulation writes the routes to encapsulated pools itself).
    #[serde(default)]
    exclude: Vec<IpNet>,
}

fn main_table() -> u32 {
    254
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterSpec {
    name: String,
    #[serde(default = "accept")]
    default: String,
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

fn accept() -> String {
    "accept".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    #[serde(default)]
    prefix: Vec<String>,
    /// The prefix is in none of these.
    #[serde(default)]
    not_prefix: Vec<String>,
    /// Learned from a BGP peer (true) or our own origination (false).
    learned: Option<bool>,
    /// The path's LOCAL_PREF is this.
    match_local_pref: Option<u32>,
    #[serde(default)]
    community: Vec<String>,
    as_path_max_len: Option<usize>,
    as_path_min_len: Option<usize>,
    #[serde(default)]
    as_path_prefix: Vec<u32>,
    /// AS path regular expressions, FRR's `bgp as-path access-list` syntax (any matches).
    #[serde(default)]
    as_path_regex: Vec<String>,
    /// Origin ASes: the last AS of the path (BIRD's `bgp_path.last`; any matches).
    #[serde(default)]
    origin_as: Vec<u32>,
    /// Extended communities: `rt:ASN:N`, `ro:ASN:N`, `rt:A.B.C.D:N`, `0x` + 16 hex digits.
    #[serde(default)]
    ext_community: Vec<String>,
    action: String,
    /// Communities to delete: `65001:100`, `65001:*`, `65001:1:*`, `no-export`.
    #[serde(default)]
    delete_community: Vec<String>,
    #[serde(default)]
    add_community: Vec<String>,
    local_pref: Option<u32>,
    /// LOCAL_PREF for routes without one.
    default_local_pref: Option<u32>,
    med: Option<u32>,
    /// MED for routes without one.
    default_med: Option<u32>,
    #[serde(default)]
    prepend: Vec<u32>,
    /// Prepend an AS this many times (1 to 32): `prepend_as`, or our AS on the session.
    prepend_times: Option<u8>,
    prepend_as: Option<u32>,
    /// `self` or an address.
    next_hop: Option<String>,
}

/// How to reach one neighbour: what the socket layer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    /// The neighbour's address and port.
    pub remote: SocketAddr,
    /// Bind to this address when connecting.
    pub source: Option<IpAddr>,
    /// TCP-MD5 key (RFC 2385).
    pub password: Option<Password>,
    /// GTSM (RFC 5082): accept only packets with TTL ≥ 256 − `multihop`; send with TTL 255.
    pub ttl_security: bool,
    /// Hops to the neighbour (1: directly connected).
    pub multihop: u8,
}

/// Kernel route sync settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    /// Routing table.
    pub table: u32,
    /// Route metric (priority); Calico's normal routes use 1024.
    pub metric: u32,
    /// Routes inside these prefixes are not written (and are removed if they were).
    pub exclude: Vec<IpNet>,
}

/// The whole checked configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Speaker-wide settings.
    pub speaker: SpeakerConfig,
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Neighbours with their transport.
    pub neighbors: Vec<(NeighborConfig, Transport)>,
    /// Prefixes to originate.
    pub originate: BTreeMap<IpNet, PathAttributes>,
    /// Kernel sync, when `[kernel]` is present.
    pub kernel: Option<KernelConfig>,
    /// Prometheus endpoint.
    pub metrics_listen: Option<SocketAddr>,
    /// After a graceful restart, the longest wait for End-of-RIBs (RFC 4724 §4.1).
    pub selection_deferral: Duration,
    /// Neighbours' descriptions, for the peer listing.
    pub descriptions: BTreeMap<IpAddr, String>,
}

/// `65001:100`, `65001:1:2`, `no-export`, `no-advertise`: a standard or large community.
pub fn parse_community(text: &str) -> Result<Result<u32, (u32, u32, u32)>, String> {
    match text {
        "no-export" | "NO_EXPORT" => return Ok(Ok(community::NO_EXPORT)),
        "no-advertise" | "NO_ADVERTISE" => return Ok(Ok(community::NO_ADVERTISE)),
        _ => {}
    }
    let parts: Vec<&str> = text.split(':').collect();
    let bad = || {
        format!("{text:?} is not a community (\"ASN:VALUE\", \"ASN:VALUE:VALUE\", no-export or no-advertise)")
    };
    match parts.as_slice() {
        [high, low] => {
            let high: u16 = high.parse().map_err(|_| bad())?;
            let low: u16 = low.parse().map_err(|_| bad())?;
            Ok(Ok((u32::from(high) << 16) | u32::from(low)))
        }
        [a, b, c] => Ok(Err((
            a.parse().map_err(|_| bad())?,
            b.parse().map_err(|_| bad())?,
            c.parse().map_err(|_| bad())?,
        ))),
        _ => Err(bad()),
    }
}

/// Parses community strings into standard and large communities; errors name `path[i]`.
fn sort_communities(
    texts: &[String],
    path: &str,
    standard: &mut Vec<u32>,
    large: &mut Vec<(u32, u32, u32)>,
) -> Result<(), ConfigError> {
    for (at, text) in texts.iter().enumerate() {
        match parse_community(text).map_err(|reason| err(format!("{path}[{at}]"), reason))? {
            Ok(community) => standard.push(community),
            Err(community) => large.push(community),
        }
    }
    Ok(())
}

fn parse_family(text: &str) -> Option<Family> {
    match text {
        "ipv4-unicast" => Some(Family::Ipv4Unicast),
        "ipv6-unicast" => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

impl DaemonConfig {
    /// Parses and checks a configuration file's text.
    pub fn parse(text: &str) -> Result<DaemonConfig, ConfigError> {
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|e| err("(file)", e.to_string().trim().to_string()))?;
        let file: File = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let reason = e.inner().message().to_string();
            err(
                if path == "." {
                    "(file)".to_string()
                } else {
                    path
                },
                reason,
            )
        })?;
        file.check()
    }
}

impl File {
    fn check(self) -> Result<DaemonConfig, ConfigError> {
        if self.global.router_id.is_unspecified() {
            return Err(err(
                "global.router_id",
                "0.0.0.0 is not a valid BGP identifier",
            ));
        }
        if self.global.max_paths == 0 || self.global.max_paths > 64 {
            return Err(err(
                "global.max_paths",
                format!("{} is not from 1 to 64", self.global.max_paths),
            ));
        }
        if !self.global.deterministic_med {
            return Err(err(
                "global.deterministic_med",
                "twill-bgpd always chooses the best path as RFC 4271 §9.1.2.2 says, whatever \
                 the order paths arrive in; an order-dependent choice (false) is not offered",
            ));
        }
        let filters = self.filters()?;
        let mut neighbors = Vec::new();
        let mut seen = BTreeMap::new();
        for (index, neighbor) in self.neighbor.iter().enumerate() {
            if let Some(first) = seen.insert(neighbor.address, index) {
                return Err(err(
                    format!("neighbor[{index}].address"),
                    format!("{} is already neighbor[{first}]", neighbor.address),
                ));
            }
            neighbors.push(neighbor.check(index, &self.global, &filters)?);
        }
        let mut originate = BTreeMap::new();
        for (index, entry) in self.originate.iter().enumerate() {
            let path = format!("originate[{index}]");
            if entry.prefix != entry.prefix.trunc() {
                return Err(err(
                    format!("{path}.prefix"),
                    format!(
                        "{} has host bits set; did you mean {}?",
                        entry.prefix,
                        entry.prefix.trunc()
                    ),
                ));
            }
            let mut attributes = PathAttributes {
                origin: Some(Origin::Igp),
                med: entry.med,
                local_pref: entry.local_pref,
                ..PathAttributes::default()
            };
            let mut large = Vec::new();
            sort_communities(
                &entry.communities,
                &format!("{path}.communities"),
                &mut attributes.communities,
                &mut large,
            )?;
            attributes.large_communities = large.into_boxed_slice();
            if originate.insert(entry.prefix, attributes).is_some() {
                return Err(err(
                    format!("{path}.prefix"),
                    format!("{} is originated twice", entry.prefix),
                ));
            }
        }
        let descriptions = self
            .neighbor
            .iter()
            .filter_map(|n| Some((n.address, n.description.clone()?)))
            .collect();
        Ok(DaemonConfig {
            descriptions,
            speaker: SpeakerConfig {
                local_as: self.global.asn,
                router_id: self.global.router_id,
                cluster_id: self.global.cluster_id,
                max_paths: self.global.max_paths,
                always_compare_med: self.global.always_compare_med,
            },
            listen: self.global.listen,
            neighbors,
            originate,
            kernel: self.kernel.map(|k| KernelConfig {
                table: k.table,
                metric: k.metric.unwrap_or(1024),
                exclude: k.exclude.iter().map(IpNet::trunc).collect(),
            }),
            metrics_listen: self.global.metrics_listen,
            selection_deferral: Duration::from_secs(self.global.selection_deferral_time.max(1)),
        })
    }

    fn filters(&self) -> Result<BTreeMap<String, Filter>, ConfigError> {
        let mut filters = BTreeMap::new();
        for (index, spec) in self.filter.iter().enumerate() {
            let path = format!("filter[{index}]");
            let default_accept = match spec.default.as_str() {
                "accept" => true,
                "reject" => false,
                other => {
                    return Err(err(
                        format!("{path}.default"),
                        format!("{other:?} is not accept or reject"),
                    ))
                }
            };
            if matches!(spec.name.as_str(), "all" | "none") {
                return Err(err(
                    format!("{path}.name"),
                    format!(
                        "{:?} is built in (accept everything, or nothing)",
                        spec.name
                    ),
                ));
            }
            let mut rules = Vec::new();
            for (at, rule) in spec.rule.iter().enumerate() {
                rules.push(rule.check(&format!("{path}.rule[{at}]"))?);
            }
            if filters
                .insert(
                    spec.name.clone(),
                    Filter {
                        rules,
                        default_accept,
                    },
                )
                .is_some()
            {
                return Err(err(
                    format!("{path}.name"),
                    format!("a filter named {:?} exists already", spec.name),
                ));
            }
        }
        Ok(filters)
    }
}

impl RuleSpec {
    fn check(&self, path: &str) -> Result<Rule, ConfigError> {
        let accept = match self.action.as_str() {
            "accept" => true,
            "reject" => false,
            other => {
                return Err(err(
                    format!("{path}.action"),
                    format!("{other:?} is not accept or reject"),
                ))
            }
        };
        let mut matches = Match {
            as_path_max_len: self.as_path_max_len,
            as_path_min_len: self.as_path_min_len,
            as_path_prefix: self.as_path_prefix.clone(),
            origin_as: self.origin_as.clone(),
            learned: self.learned,
            local_pref: self.match_local_pref,
            ..Match::default()
        };
        for (at, text) in self.not_prefix.iter().enumerate() {
            matches.not_prefixes.push(
                text.parse::<PrefixMatch>()
                    .map_err(|reason| err(format!("{path}.not_prefix[{at}]"), reason))?,
            );
        }
        for (at, text) in self.as_path_regex.iter().enumerate() {
            matches.as_path_regex.push(
                text.parse::<AsPathRegex>()
                    .map_err(|reason| err(format!("{path}.as_path_regex[{at}]"), reason))?,
            );
        }
        for (at, text) in self.ext_community.iter().enumerate() {
            matches.extended_communities.push(
                parse_extended_community(text)
                    .map_err(|reason| err(format!("{path}.ext_community[{at}]"), reason))?,
            );
        }
        for (at, text) in self.prefix.iter().enumerate() {
            matches.prefixes.push(
                text.parse::<PrefixMatch>()
                    .map_err(|reason| err(format!("{path}.prefix[{at}]"), reason))?,
            );
        }
        sort_communities(
            &self.community,
            &format!("{path}.community"),
            &mut matches.communities,
            &mut matches.large_communities,
        )?;
        let mut modify = self.modify(path)?;
        sort_communities(
            &self.add_community,
            &format!("{path}.add_community"),
            &mut modify.add_communities,
            &mut modify.add_large_communities,
        )?;
        Ok(Rule {
            matches,
            accept,
            modify,
        })
    }

    /// The actions besides adding communities, each checked.
    fn modify(&self, path: &str) -> Result<Modify, ConfigError> {
        if self.local_pref.is_some() && self.default_local_pref.is_some() {
            return Err(err(
                format!("{path}.default_local_pref"),
                "local_pref is set too: it always wins; keep one",
            ));
        }
        if self.med.is_some() && self.default_med.is_some() {
            return Err(err(
                format!("{path}.default_med"),
                "med is set too: it always wins; keep one",
            ));
        }
        let prepend_times = match (self.prepend_times, self.prepend_as) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(err(
                    format!("{path}.prepend_as"),
                    "needs prepend_times, how many times to prepend it",
                ))
            }
            (Some(times @ 1..=32), asn) => Some(PrependTimes { asn, times }),
            (Some(times), _) => {
                return Err(err(
                    format!("{path}.prepend_times"),
                    format!("{times} is not from 1 to 32"),
                ))
            }
        };
        let next_hop = match self.next_hop.as_deref() {
            None => None,
            Some("self") => Some(SetNextHop::Own),
            Some(text) => Some(SetNextHop::Address(text.parse().map_err(|_| {
                err(
                    format!("{path}.next_hop"),
                    format!("{text:?} is not an IP address or self"),
                )
            })?)),
        };
        let mut delete_communities = Vec::new();
        for (at, text) in self.delete_community.iter().enumerate() {
            delete_communities.push(
                text.parse::<DeletePattern>()
                    .map_err(|reason| err(format!("{path}.delete_community[{at}]"), reason))?,
            );
        }
        Ok(Modify {
            delete_communities,
            local_pref: self.local_pref,
            default_local_pref: self.default_local_pref,
            med: self.med,
            default_med: self.default_med,
            prepend: self.prepend.clone(),
            prepend_times,
            next_hop,
            ..Modify::default()
        })
    }
}

impl Neighbor {
    /// RFC 4271 §10 suggests a third of the hold time; more would let the peer's hold timer
    /// expire between two KEEPALIVEs.
    fn keepalive_time(&self, path: &str) -> Result<Option<u16>, ConfigError> {
        match (self.keepalive_time, self.hold_time) {
            (None, _) | (Some(0), 0) => Ok(None),
            (Some(_), 0) => Err(err(
                format!("{path}.keepalive_time"),
                "hold_time = 0 sends no KEEPALIVEs; leave keepalive_time out or 0",
            )),
            (Some(time), hold) if time >= 1 && time <= hold / 3 => Ok(Some(time)),
            (Some(time), hold) => Err(err(
                format!("{path}.keepalive_time"),
                format!(
                    "{time} is not from 1 to {} (a third of hold_time {hold}, RFC 4271 §10)",
                    hold / 3
                ),
            )),
        }
    }

    /// `local_as` and its options, checked: eBGP only, as FRR's `local-as`.
    fn check_local_as(&self, path: &str, global: &Global) -> Result<Option<LocalAs>, ConfigError> {
        let Some(asn) = self.local_as else {
            for (set, key) in [
                (self.local_as_no_prepend, "local_as_no_prepend"),
                (self.local_as_replace_as, "local_as_replace_as"),
            ] {
                if set {
                    return Err(err(format!("{path}.{key}"), "only with local_as"));
                }
            }
            return Ok(None);
        };
        let reason = if self.remote_asn == global.asn {
            "is for eBGP neighbours only (remote_asn is global.asn)"
        } else if asn == self.remote_asn {
            "is the neighbour's own AS: that would make the session iBGP"
        } else if asn == global.asn || asn == 0 {
            "is global.asn (or 0): leave it out"
        } else {
            return Ok(Some(LocalAs {
                asn,
                no_prepend: self.local_as_no_prepend,
                replace_as: self.local_as_replace_as,
            }));
        };
        Err(err(format!("{path}.local_as"), format!("{asn} {reason}")))
    }

    fn prefix_limits(&self, path: &str) -> Result<Vec<PrefixLimit>, ConfigError> {
        let action = match (self.prefix_limit_action.as_str(), self.prefix_limit_restart) {
            ("warn", None) => LimitAction::Warn,
            ("drop", None) => LimitAction::Drop,
            ("restart", Some(seconds)) if seconds > 0 => {
                LimitAction::Restart(Duration::from_secs(seconds))
            }
            ("restart", _) => {
                return Err(err(
                    format!("{path}.prefix_limit_restart"),
                    "restart needs the seconds to wait, at least 1",
                ))
            }
            ("warn" | "drop", Some(_)) => {
                return Err(err(
                    format!("{path}.prefix_limit_restart"),
                    "only with prefix_limit_action = \"restart\"",
                ))
            }
            (other, _) => {
                return Err(err(
                    format!("{path}.prefix_limit_action"),
                    format!("{other:?} is not warn, drop or restart"),
                ))
            }
        };
        self.prefix_limit
            .iter()
            .map(|(family, max)| {
                let family = parse_family(family).ok_or_else(|| {
                    err(
                        format!("{path}.prefix_limit.{family}"),
                        format!("{family:?} is not ipv4-unicast or ipv6-unicast"),
                    )
                })?;
                Ok(PrefixLimit {
                    family,
                    max: *max,
                    action,
                })
            })
            .collect()
    }

    fn check(
        &self,
        index: usize,
        global: &Global,
        filters: &BTreeMap<String, Filter>,
    ) -> Result<(NeighborConfig, Transport), ConfigError> {
        let path = format!("neighbor[{index}]");
        if self.hold_time == 1 || self.hold_time == 2 {
            return Err(err(
                format!("{path}.hold_time"),
                "must be 0 or at least 3 seconds (RFC 4271)",
            ));
        }
        let multihop = self
            .multihop
            .unwrap_or(if self.remote_asn == global.asn { 64 } else { 1 });
        if multihop == 0 {
            return Err(err(format!("{path}.multihop"), "must be at least 1"));
        }
        let families = match &self.families {
            None => vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            Some(list) => {
                let mut families = Vec::new();
                for (at, text) in list.iter().enumerate() {
                    families.push(parse_family(text).ok_or_else(|| {
                        err(
                            format!("{path}.families[{at}]"),
                            format!("{text:?} is not ipv4-unicast or ipv6-unicast"),
                        )
                    })?);
                }
                families
            }
        };
        let direction = match self.add_path.as_deref() {
            None => 0,
            Some("receive") => 1,
            Some("send") => 2,
            Some("both") => 3,
            Some(other) => {
                return Err(err(
                    format!("{path}.add_path"),
                    format!("{other:?} is not receive, send or both"),
                ))
            }
        };
        let ebgp = self.remote_asn != global.asn;
        let pick = |names: &[String], key: &str| -> Result<Vec<Filter>, ConfigError> {
            if names.is_empty() && ebgp && global.ebgp_requires_policy {
                // RFC 8212 §2: no policy on an eBGP session means nothing in or out.
                return Ok(vec![Filter {
                    rules: Vec::new(),
                    default_accept: false,
                }]);
            }
            names
                .iter()
                .enumerate()
                .filter(|(_, name)| name.as_str() != "all")
                .map(|(at, name)| match name.as_str() {
                    "none" => Ok(Filter {
                        rules: Vec::new(),
                        default_accept: false,
                    }),
                    _ => filters.get(name).cloned().ok_or_else(|| {
                        err(
                            format!("{path}.{key}[{at}]"),
                            format!("no filter named {name:?} (all and none are built in)"),
                        )
                    }),
                })
                .collect()
        };
        if self.allowas_in > 10 {
            return Err(err(
                format!("{path}.allowas_in"),
                format!(
                    "{} is not from 0 to 10 (as FRR's allowas-in)",
                    self.allowas_in
                ),
            ));
        }
        let local_as = self.check_local_as(&path, global)?;
        let session_as = local_as.map_or(global.asn, |l| l.asn);
        let mut session = fsm::Config::new(session_as, self.remote_asn, global.router_id);
        session.hold_time = self.hold_time;
        session.keepalive_time = self.keepalive_time(&path)?;
        session.passive = self.passive;
        session.connect_retry = Duration::from_secs(self.connect_retry.max(1));
        session.families = families.clone();
        session.extended_messages = self.extended_messages;
        session.graceful_restart = self.graceful_restart.then_some(GracefulRestartConfig {
            restart_time: self.restart_time.min(4095),
            restarting: false,
            forwarding_preserved: false,
        });
        if direction != 0 {
            session.add_path = families.iter().map(|f| (*f, direction)).collect();
        }
        if self.next_hop_self && self.next_hop_keep {
            return Err(err(
                format!("{path}.next_hop_keep"),
                "next_hop_self is set too: a neighbour gets our next hop or the path's, not both",
            ));
        }
        let neighbor = NeighborConfig {
            address: self.address,
            session,
            rr_client: self.route_reflector_client,
            next_hop_self: self.next_hop_self,
            shared_subnet: self.shared_subnet.map(|net| net.trunc()),
            next_hop_keep: self.next_hop_keep,
            next_hop_other: match self.address {
                IpAddr::V4(_) => self.next_hop_v6.map(IpAddr::V6),
                IpAddr::V6(_) => self.next_hop_v4.map(IpAddr::V4),
            },
            import: pick(&self.import, "import")?,
            export: pick(&self.export, "export")?,
            prefix_limits: self.prefix_limits(&path)?,
            allowas_in: self.allowas_in,
            local_as,
        };
        let transport = Transport {
            remote: SocketAddr::new(self.address, self.port),
            source: self.source_address,
            password: self.password.clone().filter(|p| !p.expose().is_empty()),
            ttl_security: self.ttl_security,
            multihop,
        };
        if transport
            .password
            .as_ref()
            .is_some_and(|p| p.expose().len() > 80)
        {
            return Err(err(
                format!("{path}.password"),
                "TCP-MD5 keys are at most 80 bytes",
            ));
        }
        Ok((neighbor, transport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Route;

    const BRIEF: &str = r#"
[global]
asn = 65001
router_id = "198.18.0.1"
listen = ["0.0.0.0:179"]
[[neighbor]]
address = "198.18.0.2"
remote_asn = 65002
passive = false
password = "secret"
hold_time = 90
families = ["ipv4-unicast", "ipv6-unicast"]
route_reflector_client = false
next_hop_self = false
ttl_security = false
multihop = 1
graceful_restart = true
restart_time = 120
[[originate]]
prefix = "10.10.0.0/24"
communities = ["65001:100", "65001:1:2"]
[kernel]
table = 254
"#;

    #[test]
    fn the_briefs_example_parses() {
        let config = DaemonConfig::parse(BRIEF).unwrap();
        assert_eq!(config.speaker.local_as, 65001);
        let (neighbor, transport) = &config.neighbors[0];
        assert_eq!(neighbor.session.remote_as, 65002);
        assert_eq!(
            neighbor.session.graceful_restart,
            Some(GracefulRestartConfig {
                restart_time: 120,
                restarting: false,
                forwarding_preserved: false,
            })
        );
        assert_eq!(
            transport.password.as_ref().map(Password::expose),
            Some("secret")
        );
        assert!(
            !format!("{transport:?}").contains("secret"),
            "a configuration printed for debugging never shows the key"
        );
        assert_eq!(transport.remote, "198.18.0.2:179".parse().unwrap());
        let attributes = &config.originate[&"10.10.0.0/24".parse().unwrap()];
        assert_eq!(attributes.communities, vec![(65001 << 16) | 100]);
        assert_eq!(*attributes.large_communities, [(65001, 1, 2)]);
        assert_eq!(
            config.kernel,
            Some(KernelConfig {
                table: 254,
                metric: 1024,
                exclude: Vec::new(),
            })
        );
    }

    #[test]
    fn the_readmes_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("# /etc/twill/bgpd.toml\n")
            .expect("the README shows a twill-bgpd config");
        let block = &readme[start..];
        let block = &block[..block.find("```").expect("the block ends")];
        let config = DaemonConfig::parse(block).unwrap_or_else(|e| panic!("README config: {e}"));
        assert!(config.neighbors[0].1.ttl_security);
        assert_eq!(config.neighbors[0].0.import.len(), 1);
        assert_eq!(config.speaker.max_paths, 4);
    }

    #[test]
    fn errors_name_the_key_path() {
        let cases = [
            (
                BRIEF.replace("remote_asn = 65002", "remote_asn = 4294967296"),
                "neighbor[0].remote_asn",
            ),
            (
                BRIEF.replace("hold_time = 90", "hold_time = 2"),
                "neighbor[0].hold_time: must be 0 or at least 3",
            ),
            (
                BRIEF.replace("\"ipv6-unicast\"]", "\"ipv6-flowspec\"]"),
                "neighbor[0].families[1]: \"ipv6-flowspec\" is not",
            ),
            (
                BRIEF.replace("passive = false", "pasive = false"),
                "neighbor[0].pasive: unknown field `pasive`, expected one of",
            ),
            (
                BRIEF.replace("\"65001:1:2\"", "\"65001-100\""),
                "originate[0].communities[1]: \"65001-100\" is not a community",
            ),
            (
                BRIEF.replace("10.10.0.0/24", "10.10.0.1/24"),
                "originate[0].prefix: 10.10.0.1/24 has host bits set",
            ),
            (
                BRIEF.replace("198.18.0.1", "198.18.0.300"),
                "global.router_id",
            ),
            (
                format!("{BRIEF}\n[[neighbor]]\naddress = \"198.18.0.2\"\nremote_asn = 1\n"),
                "neighbor[1].address: 198.18.0.2 is already neighbor[0]",
            ),
            (
                BRIEF.replace(
                    "remote_asn = 65002",
                    "remote_asn = 65002\nimport = [\"nope\"]",
                ),
                "neighbor[0].import[0]: no filter named \"nope\"",
            ),
            (
                "[global]\nasn = 1\n".to_string(),
                "global: missing field `router_id`",
            ),
            (
                BRIEF.replace("[global]", "[global]\ndeterministic_med = false"),
                "global.deterministic_med: twill-bgpd always chooses the best path as RFC 4271",
            ),
            ("not toml at all [".to_string(), "(file)"),
        ];
        for (text, expected) in cases {
            let message = DaemonConfig::parse(&text).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "expected {expected:?} in {message:?}"
            );
        }
    }

    #[test]
    fn med_options_reach_the_speaker() {
        let config = DaemonConfig::parse(BRIEF).unwrap();
        assert!(
            !config.speaker.always_compare_med,
            "off by default, as in BIRD and FRR"
        );
        let text = BRIEF.replace(
            "[global]",
            "[global]\nalways_compare_med = true\ndeterministic_med = true",
        );
        let config = DaemonConfig::parse(&text).unwrap();
        assert!(config.speaker.always_compare_med);
    }

    fn accepts(filters: &[Filter]) -> bool {
        let mut attributes = PathAttributes::default();
        let prefix: IpNet = "10.1.0.0/24".parse().unwrap();
        Filter::apply_all(filters, &mut Route::new(prefix, &mut attributes, 65001))
    }

    #[test]
    fn an_ebgp_neighbour_without_policy_takes_and_sends_nothing() {
        // RFC 8212 §2, as BIRD 2 and FRR (bgp ebgp-requires-policy) do by default.
        let config = DaemonConfig::parse(BRIEF).unwrap();
        let neighbor = &config.neighbors[0].0;
        assert!(!accepts(&neighbor.import) && !accepts(&neighbor.export));
        let explicit = BRIEF.replace(
            "remote_asn = 65002",
            "remote_asn = 65002\nimport = [\"all\"]\nexport = [\"all\"]",
        );
        let neighbor = &DaemonConfig::parse(&explicit).unwrap().neighbors[0].0;
        assert!(neighbor.import.is_empty() && neighbor.export.is_empty());
        let none = BRIEF.replace(
            "remote_asn = 65002",
            "remote_asn = 65002\nexport = [\"none\"]",
        );
        assert!(!accepts(
            &DaemonConfig::parse(&none).unwrap().neighbors[0].0.export
        ));
        let hatch = BRIEF.replace("[global]", "[global]\nebgp_requires_policy = false");
        let neighbor = &DaemonConfig::parse(&hatch).unwrap().neighbors[0].0;
        assert!(accepts(&neighbor.import) && accepts(&neighbor.export));
        let ibgp = BRIEF.replace("remote_asn = 65002", "remote_asn = 65001");
        let neighbor = &DaemonConfig::parse(&ibgp).unwrap().neighbors[0].0;
        assert!(
            neighbor.import.is_empty() && neighbor.export.is_empty(),
            "iBGP needs no policy"
        );
        let named_all = format!("{BRIEF}\n[[filter]]\nname = \"all\"\n");
        assert!(DaemonConfig::parse(&named_all)
            .unwrap_err()
            .to_string()
            .contains("filter[0].name: \"all\" is built in"));
    }

    #[test]
    fn prefix_limits_are_read_with_their_action() {
        let with = |extra: &str| {
            DaemonConfig::parse(&BRIEF.replace(
                "remote_asn = 65002",
                &format!("remote_asn = 65002\n{extra}"),
            ))
        };
        let config =
            with("prefix_limit = { \"ipv4-unicast\" = 1000, \"ipv6-unicast\" = 10 }").unwrap();
        assert_eq!(
            config.neighbors[0].0.prefix_limits,
            vec![
                PrefixLimit {
                    family: Family::Ipv4Unicast,
                    max: 1000,
                    action: LimitAction::Drop
                },
                PrefixLimit {
                    family: Family::Ipv6Unicast,
                    max: 10,
                    action: LimitAction::Drop
                },
            ]
        );
        let config = with("prefix_limit = { \"ipv4-unicast\" = 5 }\nprefix_limit_action = \"restart\"\nprefix_limit_restart = 60").unwrap();
        assert_eq!(
            config.neighbors[0].0.prefix_limits[0].action,
            LimitAction::Restart(Duration::from_secs(60))
        );
        for (extra, expected) in [
            (
                "prefix_limit = { \"l2vpn\" = 5 }",
                "neighbor[0].prefix_limit.l2vpn",
            ),
            (
                "prefix_limit_action = \"restart\"",
                "neighbor[0].prefix_limit_restart: restart needs",
            ),
            (
                "prefix_limit_action = \"shout\"",
                "neighbor[0].prefix_limit_action: \"shout\" is not",
            ),
            (
                "prefix_limit_restart = 5",
                "only with prefix_limit_action = \"restart\"",
            ),
        ] {
            let message = with(extra).unwrap_err().to_string();
            assert!(message.contains(expected), "{extra}: {message}");
        }
    }

    #[test]
    fn keepalive_local_as_and_allowas_in_are_read_and_checked() {
        let with = |extra: &str| {
            DaemonConfig::parse(&BRIEF.replace(
                "remote_asn = 65002",
                &format!("remote_asn = 65002\n{extra}"),
            ))
        };
        let config = with(
            "keepalive_time = 10\nallowas_in = 2\nlocal_as = 64999\nlocal_as_replace_as = true",
        )
        .unwrap();
        let neighbor = &config.neighbors[0].0;
        assert_eq!(neighbor.session.keepalive_time, Some(10));
        assert_eq!(neighbor.allowas_in, 2);
        assert_eq!(
            neighbor.local_as,
            Some(LocalAs {
                asn: 64999,
                no_prepend: false,
                replace_as: true
            })
        );
        assert_eq!(neighbor.session.local_as, 64999, "the OPEN carries it");
        assert_eq!(
            with("").unwrap().neighbors[0].0.session.keepalive_time,
            None
        );
        for (extra, expected) in [
            (
                "keepalive_time = 31",
                "neighbor[0].keepalive_time: 31 is not from 1 to 30 (a third of hold_time 90",
            ),
            (
                "keepalive_time = 0",
                "neighbor[0].keepalive_time: 0 is not from 1 to 30",
            ),
            (
                "allowas_in = 11",
                "neighbor[0].allowas_in: 11 is not from 0 to 10",
            ),
            (
                "local_as = 65002",
                "neighbor[0].local_as: 65002 is the neighbour's own AS",
            ),
            (
                "local_as = 65001",
                "neighbor[0].local_as: 65001 is global.asn",
            ),
            (
                "local_as_no_prepend = true",
                "neighbor[0].local_as_no_prepend: only with local_as",
            ),
        ] {
            let message = with(extra).unwrap_err().to_string();
            assert!(message.contains(expected), "{extra}: {message}");
        }
        let ibgp = BRIEF.replace("remote_asn = 65002", "remote_asn = 65001\nlocal_as = 64999");
        assert!(DaemonConfig::parse(&ibgp)
            .unwrap_err()
            .to_string()
            .contains("neighbor[0].local_as: 64999 is for eBGP neighbours only"));
        let no_hold = BRIEF.replace("hold_time = 90", "hold_time = 0\nkeepalive_time = 5");
        assert!(DaemonConfig::parse(&no_hold)
            .unwrap_err()
            .to_string()
            .contains("hold_time = 0 sends no KEEPALIVEs"));
    }

    #[test]
    fn the_selection_deferral_time_is_read() {
        let config = DaemonConfig::parse(BRIEF).unwrap();
        assert_eq!(config.selection_deferral, Duration::from_secs(120));
        let text = BRIEF.replace("[global]", "[global]\nselection_deferral_time = 300");
        let config = DaemonConfig::parse(&text).unwrap();
        assert_eq!(config.selection_deferral, Duration::from_secs(300));
    }

    #[test]
    fn the_new_match_and_action_keys_are_read_and_checked() {
        let rule = |body: &str| {
            DaemonConfig::parse(
                &format!(
                    "{BRIEF}\n[[filter]]\nname = \"f\"\n[[filter.rule]]\naction = \"accept\"\n{body}\n"
                )
                .replace("remote_asn = 65002", "remote_asn = 65002\nimport = [\"f\"]"),
            )
        };
        let config = rule(
            r#"as_path_regex = ["^65002_", "_64512$"]
origin_as = [64512]
ext_community = ["rt:65000:100", "0x0003fde800000001"]
delete_community = ["65002:*", "65002:1:*", "no-export"]
default_med = 10
default_local_pref = 150
prepend_times = 3
prepend_as = 64999
next_hop = "self""#,
        )
        .unwrap();
        let rule_of = &config.neighbors[0].0.import[0].rules[0];
        assert_eq!(rule_of.matches.as_path_regex.len(), 2);
        assert_eq!(rule_of.matches.as_path_regex[1].as_str(), "_64512$");
        assert_eq!(rule_of.matches.origin_as, vec![64512]);
        assert_eq!(
            rule_of.matches.extended_communities[0],
            [0, 2, 0xfd, 0xe8, 0, 0, 0, 100]
        );
        assert_eq!(rule_of.modify.delete_communities.len(), 3);
        assert_eq!(
            (
                rule_of.modify.default_med,
                rule_of.modify.default_local_pref
            ),
            (Some(10), Some(150))
        );
        assert_eq!(
            rule_of.modify.prepend_times,
            Some(PrependTimes {
                asn: Some(64999),
                times: 3
            })
        );
        assert_eq!(rule_of.modify.next_hop, Some(SetNextHop::Own));
        for (body, expected) in [
            (
                "as_path_regex = [\"(\"]",
                "filter[0].rule[0].as_path_regex[0]: \"(\" is not a regular expression",
            ),
            (
                "ext_community = [\"rt:1\"]",
                "filter[0].rule[0].ext_community[0]: \"rt:1\" is not an extended community",
            ),
            (
                "delete_community = [\"65002:x\"]",
                "filter[0].rule[0].delete_community[0]: \"65002:x\" is not a community pattern",
            ),
            (
                "next_hop = \"here\"",
                "filter[0].rule[0].next_hop: \"here\" is not an IP address or self",
            ),
            (
                "prepend_times = 40",
                "filter[0].rule[0].prepend_times: 40 is not from 1 to 32",
            ),
            (
                "prepend_as = 1",
                "filter[0].rule[0].prepend_as: needs prepend_times",
            ),
            (
                "med = 1\ndefault_med = 2",
                "filter[0].rule[0].default_med: med is set too",
            ),
        ] {
            let message = rule(body).unwrap_err().to_string();
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn filters_are_built_and_attached() {
        let text = format!(
            "{BRIEF}\n[[filter]]\nname = \"pods\"\ndefault = \"reject\"\n[[filter.rule]]\nprefix = [\"10.0.0.0/8 le 26\"]\naction = \"accept\"\nadd_community = [\"65001:7\"]\n"
        )
        .replace("remote_asn = 65002", "remote_asn = 65002\nexport = [\"pods\"]");
        let config = DaemonConfig::parse(&text).unwrap();
        let export = &config.neighbors[0].0.export;
        assert_eq!(export.len(), 1);
        assert!(!export[0].default_accept);
        assert_eq!(
            export[0].rules[0].modify.add_communities,
            vec![(65001 << 16) | 7]
        );
    }
}
