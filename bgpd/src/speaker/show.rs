//! What `twillctl bgp rib` shows: the Loc-RIB, or one neighbour's Adj-RIB-In or Adj-RIB-Out,
//! all of it or one prefix. A listing is served in two steps so a large table never stalls
//! the driver: [`Speaker::rib_prefixes`] names the prefixes (cheap), and
//! [`Speaker::rib_rows`] renders them a chunk at a time, each chunk against the table as it
//! is then (a prefix gone meanwhile is left out).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::Speaker;
use crate::wire::attribute::PathAttributes;
use crate::wire::Family;

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RibTable {
    /// Every usable path, best marked (the Loc-RIB with the Adj-RIBs-In after policy).
    Loc,
    /// What a neighbour sent, before import policy (Adj-RIB-In).
    In(IpAddr),
    /// What we announce to a neighbour, after export policy (Adj-RIB-Out).
    Out(IpAddr),
}

/// Which prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixQuery {
    /// All of them.
    All,
    /// Exactly this prefix.
    Exact(IpNet),
    /// The longest prefix that covers this address (what forwarding would use).
    LongestMatch(IpAddr),
}

/// A `rib` request: `rib [PREFIX|ADDRESS] [--peer ADDRESS --in|--out]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RibQuery {
    /// The table.
    pub table: RibTable,
    /// The prefixes.
    pub prefixes: PrefixQuery,
}

impl std::str::FromStr for RibQuery {
    type Err = String;

    /// The words after `rib`: a prefix (exact match) or an address (longest match), and
    /// `--peer ADDRESS` with `--in` or `--out`.
    fn from_str(text: &str) -> Result<RibQuery, String> {
        let mut prefixes = PrefixQuery::All;
        let (mut peer, mut direction) = (None, None);
        let mut words = text.split_whitespace();
        while let Some(word) = words.next() {
            match word {
                "--peer" => {
                    let value = words.next().ok_or("--peer needs an address")?;
                    peer = Some(
                        value
                            .parse::<IpAddr>()
                            .map_err(|_| format!("--peer {value:?} is not an address"))?,
                    );
                }
                "--in" | "--out" => direction = Some(word),
                _ if prefixes != PrefixQuery::All => {
                    return Err(format!("{word:?}: one prefix or address at most"))
                }
                _ => {
                    prefixes = if let Ok(net) = word.parse::<IpNet>() {
                        PrefixQuery::Exact(net.trunc())
                    } else if let Ok(address) = word.parse::<IpAddr>() {
                        PrefixQuery::LongestMatch(address)
                    } else {
                        return Err(format!("{word:?} is neither a prefix nor an address"));
                    };
                }
            }
        }
        let table = match (peer, direction) {
            (None, None) => RibTable::Loc,
            (Some(peer), Some("--in")) => RibTable::In(peer),
            (Some(peer), Some(_)) => RibTable::Out(peer),
            (Some(_), None) => return Err("--peer needs --in or --out".into()),
            (None, Some(d)) => return Err(format!("{d} needs --peer ADDRESS")),
        };
        Ok(RibQuery { table, prefixes })
    }
}

/// One path as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibRow {
    /// The prefix.
    pub prefix: IpNet,
    /// Its add-path identifier (0 without add-path).
    pub path_id: u32,
    /// The next hop.
    pub next_hop: IpAddr,
    /// The attributes.
    pub attributes: Arc<PathAttributes>,
    /// The neighbour it came from (`None`: ours); for Adj-RIB-Out, the neighbour it goes to.
    pub from: Option<IpAddr>,
    /// In the ECMP set (Loc-RIB only).
    pub best: bool,
    /// Kept for a restarting neighbour (graceful restart).
    pub stale: bool,
    /// Awaiting re-announcement in an enhanced route refresh.
    pub refreshing: bool,
}

impl Speaker {
    /// The prefixes a query shows, in table order (the caller sorts); an unknown neighbour
    /// is an error.
    pub fn rib_prefixes(&self, query: &RibQuery) -> Result<Vec<IpNet>, String> {
        let all: Vec<IpNet> = match query.table {
            RibTable::Loc => match query.prefixes {
                PrefixQuery::All => return Ok(self.rib.iter().map(|(p, _)| p).collect()),
                _ => self.longest_or_exact(query.prefixes, |p| !self.rib.paths(p).is_empty()),
            },
            RibTable::In(address) => {
                let peer = self.peers.get(&address).ok_or_else(|| unknown(address))?;
                if peer.config.import.is_empty() {
                    let id = peer.id;
                    self.rib
                        .iter()
                        .filter(|(_, paths)| paths.iter().any(|p| p.peer() == id))
                        .map(|(p, _)| p)
                        .collect()
                } else {
                    let mut keys: Vec<IpNet> = peer.adj_in.keys().map(|(p, _)| *p).collect();
                    keys.sort();
                    keys.dedup();
                    keys
                }
            }
            RibTable::Out(address) => {
                let peer = self.peers.get(&address).ok_or_else(|| unknown(address))?;
                let mut keys: Vec<IpNet> = peer.adj_out.keys().map(|(p, _)| *p).collect();
                keys.dedup();
                keys
            }
        };
        match query.prefixes {
            PrefixQuery::All => Ok(all),
            _ if query.table == RibTable::Loc => Ok(all),
            other => Ok(self.longest_or_exact(other, |p| all.contains(p))),
        }
    }

    /// The one prefix an exact or longest-match query names, if `present`.
    fn longest_or_exact(&self, query: PrefixQuery, present: impl Fn(&IpNet) -> bool) -> Vec<IpNet> {
        match query {
            PrefixQuery::All => Vec::new(),
            PrefixQuery::Exact(net) => [net].into_iter().filter(|p| present(p)).collect(),
            PrefixQuery::LongestMatch(address) => {
                let longest: u8 = if address.is_ipv4() { 32 } else { 128 };
                (0..=longest)
                    .rev()
                    .filter_map(|len| IpNet::new(address, len).ok().map(|n| n.trunc()))
                    .find(|p| present(p))
                    .into_iter()
                    .collect()
            }
        }
    }

    /// The rows of `prefixes` in the query's table, as the table is now.
    pub fn rib_rows(&self, query: &RibQuery, prefixes: &[IpNet]) -> Vec<RibRow> {
        let mut rows = Vec::new();
        for prefix in prefixes {
            match query.table {
                RibTable::Loc => self.loc_rows(*prefix, &mut rows),
                RibTable::In(address) => self.in_rows(address, *prefix, &mut rows),
                RibTable::Out(address) => {
                    let Some(peer) = self.peers.get(&address) else {
                        continue;
                    };
                    rows.extend(
                        peer.adj_out
                            .range((*prefix, 0)..=(*prefix, u32::MAX))
                            .map(|entry| adj_row(address, entry)),
                    );
                }
            }
        }
        rows
    }

    fn loc_rows(&self, prefix: IpNet, rows: &mut Vec<RibRow>) {
        let best = self.rib.best(&prefix);
        for path in self.rib.paths(&prefix) {
            rows.push(RibRow {
                prefix,
                path_id: path.path_id(),
                next_hop: path.next_hop(),
                attributes: path.attributes().clone(),
                from: self.peer_address(path.peer()),
                best: best.iter().any(|b| b == path),
                stale: path.stale(),
                refreshing: path.refreshing(),
            });
        }
    }

    fn in_rows(&self, address: IpAddr, prefix: IpNet, rows: &mut Vec<RibRow>) {
        let Some(peer) = self.peers.get(&address) else {
            return;
        };
        if peer.config.import.is_empty() {
            for path in self
                .rib
                .paths(&prefix)
                .iter()
                .filter(|p| p.peer() == peer.id)
            {
                rows.push(RibRow {
                    prefix,
                    path_id: path.path_id(),
                    next_hop: path.next_hop(),
                    attributes: path.attributes().clone(),
                    from: Some(address),
                    best: false,
                    stale: path.stale(),
                    refreshing: path.refreshing(),
                });
            }
            return;
        }
        let row = |entry| adj_row(address, entry);
        let family = if prefix.addr().is_ipv4() {
            Family::Ipv4Unicast
        } else {
            Family::Ipv6Unicast
        };
        let add_path = peer
            .session
            .negotiated()
            .is_some_and(|n| n.context.add_path_receive.contains(&family));
        if !add_path {
            // One path per prefix, identifier 0: a lookup, not a scan.
            rows.extend(peer.adj_in.get_key_value(&(prefix, 0)).map(row));
            return;
        }
        let mut found: Vec<_> = peer
            .adj_in
            .iter()
            .filter(|((net, _), _)| *net == prefix)
            .map(row)
            .collect();
        found.sort_by_key(|row| row.path_id);
        rows.extend(found);
    }
}

fn unknown(address: IpAddr) -> String {
    format!("{address} is not a neighbour")
}

/// A row of an Adj-RIB-In (before policy) or Adj-RIB-Out (as announced) of `address`.
fn adj_row(
    address: IpAddr,
    ((net, path_id), (next_hop, attributes)): (&(IpNet, u32), &super::Received),
) -> RibRow {
    RibRow {
        prefix: *net,
        path_id: *path_id,
        next_hop: *next_hop,
        attributes: attributes.clone(),
        from: Some(address),
        best: false,
        stale: false,
        refreshing: false,
    }
}
