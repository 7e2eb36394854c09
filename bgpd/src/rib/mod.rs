//! The routing information bases (RFC 4271 §3.2, §9), pure.
//!
//! - Adj-RIB-In (after import checks) and Loc-RIB are one table: per prefix, every usable
//!   path, kept ranked best first by the §9.1.2.2 decision process (`decision`: a procedure
//!   on the whole set, so the ranking never depends on arrival order); up to `max_paths`
//!   paths that tie with the best up to the multipath point form the ECMP set.
//! - [`Rib::update`], [`Rib::originate`], [`Rib::peer_down`] and friends return
//!   [`BestChange`]s: the prefixes whose best path or ECMP set changed, for the kernel and
//!   for Adj-RIB-Out.
//! - [`Rib::export`] applies the advertisement rules for one peer (split horizon, route
//!   reflection per RFC 4456, eBGP AS prepend and next hop, NO_EXPORT, NO_ADVERTISE).
//! - Attributes are interned: paths with equal attributes share one allocation, and paths
//!   through one next hop with equal attributes share one [`Hop`]; a path is 16 bytes.
//! - The table is compact: IPv4 prefixes are keyed by one integer, and a prefix with one
//!   path (nearly all of them) holds it inline, without an allocation of its own.

mod decision;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use hashbrown::HashTable;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::wire::attribute::{community, Origin, PathAttributes};

/// Identifies where a path came from. [`PeerId::LOCAL`] is this speaker's own origination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

impl PeerId {
    /// Routes this speaker originates.
    pub const LOCAL: PeerId = PeerId(0);
}

/// What the RIB needs to know about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address (the last tie-breaker).
    pub address: IpAddr,
    /// The peer's BGP identifier.
    pub router_id: Ipv4Addr,
    /// The peer's AS.
    pub remote_as: u32,
    /// Internal (same AS) peer.
    pub ibgp: bool,
    /// A route reflector client of ours (RFC 4456).
    pub rr_client: bool,
    /// Our address on the session: the next hop we announce as "self".
    pub local_address: IpAddr,
    /// Always announce ourselves as next hop, also to iBGP peers.
    pub next_hop_self: bool,
    /// Send paths with the next hop they have, also to an external peer (Calico's
    /// `nextHopMode: Keep`, BIRD's `next hop keep`); our own originations still go as us.
    pub next_hop_keep: bool,
    /// An external peer's subnet, shared with us: a path whose next hop is another router
    /// on it is sent with that next hop (RFC 4271 §5.1.3 (2), a "third party" next hop, as
    /// BIRD does on a shared interface), so the peer sends straight to that router.
    pub shared_subnet: Option<IpNet>,
    /// Paths from this peer with our AS in them up to this many times are accepted (Calico's
    /// `numAllowedLocalASNumbers`, BIRD's `allow local as`, FRR's `allowas-in`); 0 is the
    /// loop check of RFC 4271 §9.1.2.
    pub allowas_in: u8,
    /// The AS this session uses instead of ours, if any (FRR's `local-as`).
    pub local_as: Option<LocalAs>,
}

/// A session's own AS in place of the speaker's (FRR's `neighbor local-as`): the peer sees
/// it in our OPEN and in front of the paths we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAs {
    /// The AS.
    pub asn: u32,
    /// Not put in front of the paths received from the peer (FRR's `no-prepend`); by
    /// default they carry it, as if learned through that AS.
    pub no_prepend: bool,
    /// Paths sent to the peer carry it instead of our real AS, not in front of it (FRR's
    /// `replace-as`).
    pub replace_as: bool,
}

/// Speaker-wide RIB settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    /// Our AS.
    pub local_as: u32,
    /// Our BGP identifier.
    pub router_id: Ipv4Addr,
    /// Route reflector cluster ID (RFC 4456); our router ID unless set.
    pub cluster_id: Ipv4Addr,
    /// Paths per prefix in the ECMP set (1: no ECMP).
    pub max_paths: usize,
    /// Compare MED between paths from different neighbouring ASes too (FRR's
    /// `bgp always-compare-med`, BIRD's `med metric`); RFC 4271 §9.1.2.2 (c) compares it
    /// only within one neighbouring AS, which is the default.
    pub always_compare_med: bool,
}

/// A next hop with the attributes that go with it. Interned by the RIB: every path through
/// one next hop with equal attributes shares one.
#[derive(Debug, PartialEq, Eq)]
pub struct Hop {
    next_hop: IpAddr,
    attributes: Arc<PathAttributes>,
}

/// One path to a prefix: 16 bytes (the shared [`Hop`], the source with its flags, the
/// add-path identifier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    hop: Arc<Hop>,
    /// The source peer's number, with [`Path::STALE`] and [`Path::REFRESHING`].
    source: u32,
    path_id: u32,
}

impl Path {
    /// The bit of `source` that marks a stale path (graceful restart): ranked below fresh
    /// paths, removed unless announced again.
    const STALE: u32 = 1 << 31;
    /// The bit of `source` that marks a path not yet announced again during an enhanced route
    /// refresh (RFC 7313): ranked as before, removed at End-of-RIB-Refresh unless announced.
    const REFRESHING: u32 = 1 << 30;
    /// Both flags; peer numbers stay below them.
    const FLAGS: u32 = Path::STALE | Path::REFRESHING;

    /// A path of its own (the RIB shares hops between paths; this one shares nothing).
    pub fn new(
        peer: PeerId,
        path_id: u32,
        next_hop: IpAddr,
        attributes: Arc<PathAttributes>,
    ) -> Path {
        Path::with_hop(
            peer,
            path_id,
            Arc::new(Hop {
                next_hop,
                attributes,
            }),
        )
    }

    fn with_hop(peer: PeerId, path_id: u32, hop: Arc<Hop>) -> Path {
        debug_assert!(peer.0 & Path::FLAGS == 0, "peer numbers stay below 2^30");
        Path {
            hop,
            source: peer.0 & !Path::FLAGS,
            path_id,
        }
    }

    /// Where it came from.
    pub fn peer(&self) -> PeerId {
        PeerId(self.source & !Path::FLAGS)
    }

    /// The sender's add-path identifier (0 without add-path).
    pub fn path_id(&self) -> u32 {
        self.path_id
    }

    /// Next hop.
    pub fn next_hop(&self) -> IpAddr {
        self.hop.next_hop
    }

    /// Attributes (without NEXT_HOP and MP attributes), shared.
    pub fn attributes(&self) -> &Arc<PathAttributes> {
        &self.hop.attributes
    }

    /// Kept from a restarting peer until End-of-RIB or the restart timer (RFC 4724).
    pub fn stale(&self) -> bool {
        self.source & Path::STALE != 0
    }

    /// Not announced again since an enhanced route refresh began.
    pub fn refreshing(&self) -> bool {
        self.source & Path::REFRESHING != 0
    }

    fn mark_stale(&mut self) {
        self.source |= Path::STALE;
    }

    /// The same source and identifier: one path replaces the other.
    fn same_slot(&self, peer: PeerId, path_id: u32) -> bool {
        self.peer() == peer && self.path_id == path_id
    }
}

/// A prefix whose best path or ECMP set changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestChange {
    /// The prefix.
    pub prefix: IpNet,
    /// The ECMP set, best first; empty when the prefix is gone.
    pub paths: Vec<Path>,
}

/// Why an announced path was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Our AS is in the AS_PATH (RFC 4271 §9.1.2).
    AsPathLoop,
    /// ORIGINATOR_ID is our router ID (RFC 4456 §8).
    OriginatorLoop,
    /// CLUSTER_LIST holds our cluster ID (RFC 4456 §8).
    ClusterLoop,
}

/// The identity of one path: its source, its identifier, and its (interned) next hop and
/// attributes. Whether it is stale is left out: that changes neither forwarding nor what is
/// announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PathKey {
    peer: PeerId,
    path_id: u32,
    hop: *const Hop,
}

/// The identity of an ECMP set: up to four members inline, more spilled.
#[derive(Debug, Default, PartialEq, Eq)]
struct EcmpIdentity {
    inline: [Option<PathKey>; 4],
    more: Vec<PathKey>,
}

impl EcmpIdentity {
    fn push(&mut self, path: &Path) {
        let key = PathKey {
            peer: path.peer(),
            path_id: path.path_id,
            hop: Arc::as_ptr(&path.hop),
        };
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(key),
            None => self.more.push(key),
        }
    }
}

/// The paths of one prefix, best first: one inline (nearly every prefix), or several.
#[derive(Debug)]
enum Paths {
    One(Path),
    // Boxed so that the enum stays 16 bytes: a table bucket then holds one path inline.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Path>>),
}

impl Paths {
    fn as_slice(&self) -> &[Path] {
        match self {
            Paths::One(path) => std::slice::from_ref(path),
            Paths::Many(paths) => paths,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Path] {
        match self {
            Paths::One(path) => std::slice::from_mut(path),
            Paths::Many(paths) => paths,
        }
    }

    /// Rewrites the list as a `Vec` (only when a prefix has or gets several paths); a list
    /// left with one path goes back inline.
    fn edit<R>(&mut self, edit: impl FnOnce(&mut Vec<Path>) -> R) -> R {
        let (result, single) = match self {
            Paths::Many(list) => {
                let result = edit(list);
                (result, (list.len() == 1).then(|| list.pop()).flatten())
            }
            Paths::One(path) => {
                let mut list = vec![path.clone()];
                let result = edit(&mut list);
                if list.len() == 1 {
                    (result, list.pop())
                } else {
                    *self = Paths::Many(Box::new(list));
                    (result, None)
                }
            }
        };
        if let Some(path) = single {
            *self = Paths::One(path);
        }
        result
    }
}

/// Shares equal attribute sets, and equal (next hop, attribute set) pairs. Sets are found by
/// their hash, computed once per UPDATE and kept beside the set: a table of hundreds of
/// thousands of distinct sets (a real Internet table) grows without hashing any set again, and
/// a set seen before costs no allocation. Both tables hold bare entries (no key stored apart
/// from its value): a hop is found by its next hop and its set's address, hashed again when
/// the table grows.
#[derive(Debug, Default)]
struct Interner {
    hasher: ahash::RandomState,
    /// Each set with its hash.
    attributes: HashTable<(u64, Arc<PathAttributes>)>,
    hops: HashTable<Arc<Hop>>,
}

impl Interner {
    fn intern(&mut self, next_hop: IpAddr, attributes: PathAttributes) -> Arc<Hop> {
        let hash = self.hasher.hash_one(&attributes);
        let attributes = match self
            .attributes
            .find(hash, |(h, a)| *h == hash && **a == attributes)
        {
            Some((_, shared)) => shared.clone(),
            None => {
                let shared = Arc::new(attributes);
                self.attributes
                    .insert_unique(hash, (hash, shared.clone()), |(h, _)| *h);
                shared
            }
        };
        let hasher = &self.hasher;
        // The attribute set is interned, so its address identifies it.
        let hop_hash = |next_hop: IpAddr, attributes: &Arc<PathAttributes>| -> u64 {
            hasher.hash_one((next_hop, Arc::as_ptr(attributes) as usize))
        };
        let hash = hop_hash(next_hop, &attributes);
        let same =
            |hop: &Arc<Hop>| hop.next_hop == next_hop && Arc::ptr_eq(&hop.attributes, &attributes);
        if let Some(hop) = self.hops.find(hash, same) {
            return hop.clone();
        }
        let hop = Arc::new(Hop {
            next_hop,
            attributes,
        });
        self.hops.insert_unique(hash, hop.clone(), |hop| {
            hop_hash(hop.next_hop, &hop.attributes)
        });
        hop
    }

    /// Forgets hops and attribute sets no path uses any more.
    fn collect(&mut self) {
        self.hops.retain(|hop| Arc::strong_count(hop) > 1);
        self.attributes.retain(|(_, a)| Arc::strong_count(a) > 1);
    }
}

/// A prefix as a table key.
trait PrefixKey: Copy + Eq + Hash {
    fn prefix(self) -> IpNet;
}

/// An IPv4 prefix as one integer: the address above the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct V4Key(u64);

impl V4Key {
    fn new(net: Ipv4Net) -> V4Key {
        V4Key((u64::from(u32::from(net.network())) << 8) | u64::from(net.prefix_len()))
    }
}

impl PrefixKey for V4Key {
    fn prefix(self) -> IpNet {
        let address = Ipv4Addr::from((self.0 >> 8) as u32);
        IpNet::V4(Ipv4Net::new(address, (self.0 & 0xff) as u8).expect("stored from a valid prefix"))
    }
}

impl PrefixKey for Ipv6Net {
    fn prefix(self) -> IpNet {
        IpNet::V6(self)
    }
}

/// Hash maps of the RIB: aHash is several times faster than SipHash on small keys and, being
/// randomly keyed per process, gives a peer no way to craft colliding prefixes.
type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// Shards of the IPv4 map. Each grows (doubling, rehashing into a new allocation) on its
/// own, so growth holds only a sixteenth of the table twice, not all of it: at a million
/// prefixes that is the difference between a peak of about 80 and about 55 MB.
const V4_SHARDS: usize = 16;

/// Prefix → paths: IPv4 in [`V4_SHARDS`] maps, IPv6 in one. An IPv4 bucket is 24 bytes.
#[derive(Debug)]
struct Table {
    v4: [FastMap<V4Key, Paths>; V4_SHARDS],
    v6: FastMap<Ipv6Net, Paths>,
}

impl Default for Table {
    fn default() -> Table {
        Table {
            v4: std::array::from_fn(|_| FastMap::default()),
            v6: FastMap::default(),
        }
    }
}

impl V4Key {
    /// The shard: the top bits of a multiplicative hash, so neighbouring prefixes spread.
    fn shard(self) -> usize {
        (self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 60) as usize % V4_SHARDS
    }
}

/// Puts `path` into a vacant slot, or hands back the occupied slot with the path.
fn place<K: PrefixKey>(
    map: &mut FastMap<K, Paths>,
    key: K,
    path: Path,
) -> Option<(&mut Paths, Path)> {
    match map.entry(key) {
        std::collections::hash_map::Entry::Vacant(slot) => {
            slot.insert(Paths::One(path));
            None
        }
        std::collections::hash_map::Entry::Occupied(slot) => Some((slot.into_mut(), path)),
    }
}

/// Gives memory back once a map is mostly empty (a full table withdrawn, a peer gone), keeping
/// room to grow again without rehashing at once.
fn shrink_when_sparse<K: PrefixKey>(map: &mut FastMap<K, Paths>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 8 {
        map.shrink_to(map.len() * 2);
    }
}

impl Table {
    fn len(&self) -> usize {
        self.v4.iter().map(HashMap::len).sum::<usize>() + self.v6.len()
    }

    fn get(&self, prefix: &IpNet) -> Option<&Paths> {
        match prefix {
            IpNet::V4(net) => {
                let key = V4Key::new(*net);
                self.v4[key.shard()].get(&key)
            }
            IpNet::V6(net) => self.v6.get(net),
        }
    }

    fn get_mut(&mut self, prefix: &IpNet) -> Option<&mut Paths> {
        match prefix {
            IpNet::V4(net) => {
                let key = V4Key::new(*net);
                self.v4[key.shard()].get_mut(&key)
            }
            IpNet::V6(net) => self.v6.get_mut(net),
        }
    }

    fn place(&mut self, prefix: IpNet, path: Path) -> Option<(&mut Paths, Path)> {
        match prefix {
            IpNet::V4(net) => {
                let key = V4Key::new(net);
                place(&mut self.v4[key.shard()], key, path)
            }
            IpNet::V6(net) => place(&mut self.v6, net, path),
        }
    }

    fn remove(&mut self, prefix: &IpNet) {
        match prefix {
            IpNet::V4(net) => {
                let key = V4Key::new(*net);
                let shard = &mut self.v4[key.shard()];
                shard.remove(&key);
                shrink_when_sparse(shard);
            }
            IpNet::V6(net) => {
                self.v6.remove(net);
                shrink_when_sparse(&mut self.v6);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (IpNet, &Paths)> {
        let v4 = self.v4.iter().flatten().map(|(k, p)| (k.prefix(), p));
        v4.chain(self.v6.iter().map(|(k, p)| (k.prefix(), p)))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (IpNet, &mut Paths)> {
        let v4 = self.v4.iter_mut().flatten().map(|(k, p)| (k.prefix(), p));
        v4.chain(self.v6.iter_mut().map(|(k, p)| (k.prefix(), p)))
    }
}

/// The Loc-RIB with its Adj-RIBs-In.
#[derive(Debug)]
pub struct Rib {
    config: RibConfig,
    peers: HashMap<PeerId, PeerInfo>,
    table: Table,
    interner: Interner,
    /// Writes since the interner was last collected.
    churn: usize,
    /// Paths per peer and family (IPv4 or not), kept as paths come and go.
    path_counts: FastMap<(PeerId, bool), usize>,
    /// Whether writes report [`BestChange`]s (off when nothing consumes them).
    report_changes: bool,
}

/// LOCAL_PREF when absent (RFC 4271 leaves it to the implementation; 100 is universal).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

impl Rib {
    /// An empty RIB.
    pub fn new(config: RibConfig) -> Rib {
        Rib {
            config,
            peers: HashMap::new(),
            table: Table::default(),
            interner: Interner::default(),
            churn: 0,
            path_counts: FastMap::default(),
            report_changes: true,
        }
    }

    /// Whether writes return [`BestChange`]s (default on). Off, they return none, which saves
    /// the ECMP comparison on every write when no kernel consumes the changes.
    pub fn set_report_changes(&mut self, on: bool) {
        self.report_changes = on;
    }

    /// The configuration.
    pub fn config(&self) -> &RibConfig {
        &self.config
    }

    /// Registers (or updates) a peer. When what ranks its paths changed (router ID, address,
    /// internal or external), its prefixes are ranked again.
    pub fn set_peer(&mut self, peer: PeerId, info: PeerInfo) -> Vec<BestChange> {
        let rank_changed = self.peers.get(&peer).is_some_and(|old| {
            (old.router_id, old.address, old.ibgp, old.remote_as)
                != (info.router_id, info.address, info.ibgp, info.remote_as)
        });
        self.peers.insert(peer, info);
        let mut changes = Vec::new();
        if !rank_changed {
            return changes;
        }
        for (prefix, paths) in self.table.iter_mut() {
            let paths = paths.as_mut_slice();
            if !paths.iter().any(|p| p.peer() == peer) {
                continue;
            }
            let before = Rib::ecmp_of(&self.config, &self.peers, paths);
            decision::rank(&self.config, &self.peers, paths);
            let after = Rib::ecmp_of(&self.config, &self.peers, paths);
            if before != after {
                changes.push(BestChange {
                    prefix,
                    paths: after,
                });
            }
        }
        changes
    }

    /// Forgets a peer and its paths.
    pub fn remove_peer(&mut self, peer: PeerId) -> Vec<BestChange> {
        let changes = self.peer_down(peer, false);
        self.peers.remove(&peer);
        changes
    }

    /// Prefixes in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.len() == 0
    }

    /// How many paths a peer has in the table.
    pub fn path_count(&self, peer: PeerId) -> usize {
        self.family_path_count(peer, true) + self.family_path_count(peer, false)
    }

    /// Paths of one family (IPv4 or IPv6) a peer has in the table (prefix limits count these).
    pub fn family_path_count(&self, peer: PeerId, ipv4: bool) -> usize {
        self.path_counts.get(&(peer, ipv4)).copied().unwrap_or(0)
    }

    /// Distinct attribute sets in use.
    pub fn attribute_sets(&self) -> usize {
        self.interner.attributes.len()
    }

    /// Every path of a prefix, best first.
    pub fn paths(&self, prefix: &IpNet) -> &[Path] {
        self.table.get(prefix).map_or(&[], Paths::as_slice)
    }

    /// Every prefix with its paths, best first (unordered across prefixes).
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &[Path])> {
        self.table
            .iter()
            .map(|(prefix, paths)| (prefix, paths.as_slice()))
    }

    /// The ECMP set of a prefix, best first.
    pub fn best(&self, prefix: &IpNet) -> Vec<Path> {
        self.table
            .get(prefix)
            .map_or_else(Vec::new, |paths| self.ecmp_set(paths.as_slice()))
    }

    /// Checks the loop rules for a path from `peer` (RFC 4271 §9.1.2, RFC 4456 §8). Our AS
    /// may be in the path as often as the peer's `allowas_in` says; a session `local_as` is
    /// ours too, allowed once more when it was put in front on receipt.
    pub fn check_import(
        &self,
        peer: PeerId,
        attributes: &PathAttributes,
    ) -> Result<(), RejectReason> {
        let info = self.peers.get(&peer);
        let allowed = info.map_or(0, |p| usize::from(p.allowas_in));
        let count = |asn: u32| {
            attributes
                .as_path
                .as_ref()
                .map_or(0, |p| p.asns().filter(|a| *a == asn).count())
        };
        if count(self.config.local_as) > allowed {
            return Err(RejectReason::AsPathLoop);
        }
        if let Some(local) = info.and_then(|p| p.local_as) {
            let prepended = usize::from(!local.no_prepend);
            if local.asn != self.config.local_as && count(local.asn) > allowed + prepended {
                return Err(RejectReason::AsPathLoop);
            }
        }
        if attributes.originator_id == Some(self.config.router_id) {
            return Err(RejectReason::OriginatorLoop);
        }
        if attributes.cluster_list.contains(&self.config.cluster_id) {
            return Err(RejectReason::ClusterLoop);
        }
        Ok(())
    }

    /// Applies what `peer` announced and withdrew. Announced paths that fail the loop checks
    /// are treated as withdrawn. LOCAL_PREF is taken as given: the speaker drops the one an
    /// external peer sent before import policy (RFC 4271 §5.1.5), so a filter may set one.
    /// Returns the prefixes whose ECMP set changed.
    pub fn update(
        &mut self,
        peer: PeerId,
        announced: &[(IpNet, u32)],
        next_hop: IpAddr,
        attributes: PathAttributes,
        withdrawn: &[(IpNet, u32)],
    ) -> Vec<BestChange> {
        let mut changes = Vec::new();
        for (prefix, path_id) in withdrawn {
            self.remove_path(*prefix, peer, *path_id, &mut changes);
        }
        if announced.is_empty() {
            return changes;
        }
        let mut attributes = attributes;
        attributes.next_hop = None;
        attributes.mp_reach = None;
        attributes.mp_unreach = None;
        // Loop checks are for paths learned from peers, not our own originations.
        if peer != PeerId::LOCAL && self.check_import(peer, &attributes).is_err() {
            for (prefix, path_id) in announced {
                self.remove_path(*prefix, peer, *path_id, &mut changes);
            }
            return changes;
        }
        let hop = self.interner.intern(next_hop, attributes);
        for (prefix, path_id) in announced {
            let path = Path::with_hop(peer, *path_id, hop.clone());
            self.insert_path(prefix.trunc(), path, &mut changes);
        }
        self.maybe_collect(announced.len());
        changes
    }

    /// Originates a prefix from this speaker (next hop: ourselves, i.e. unspecified).
    pub fn originate(&mut self, prefix: IpNet, mut attributes: PathAttributes) -> Vec<BestChange> {
        attributes.origin.get_or_insert(Origin::Igp);
        attributes.as_path.get_or_insert_with(Default::default);
        let next_hop = if prefix.addr().is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
        };
        self.update(PeerId::LOCAL, &[(prefix, 0)], next_hop, attributes, &[])
    }

    /// Stops originating a prefix.
    pub fn withdraw_local(&mut self, prefix: IpNet) -> Vec<BestChange> {
        self.update(
            PeerId::LOCAL,
            &[],
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            PathAttributes::default(),
            &[(prefix, 0)],
        )
    }

    /// The peer's session went down: its paths are removed, or with `keep_stale` (graceful
    /// restart helper) kept and marked stale, except those still stale from a restart before,
    /// which go.
    pub fn peer_down(&mut self, peer: PeerId, keep_stale: bool) -> Vec<BestChange> {
        let mut changes = Vec::new();
        if keep_stale {
            // RFC 4724 §4.2: a peer that restarts again before its End-of-RIB loses what is
            // still stale from the restart before (BIRD ends its refresh cycle here, FRR
            // deletes stale paths); only what it announced since becomes stale.
            changes.extend(self.sweep(peer, true, Path::STALE));
            changes.extend(self.sweep(peer, false, Path::STALE));
            for (prefix, paths) in self.table.iter_mut() {
                let paths = paths.as_mut_slice();
                if !paths.iter().any(|p| p.peer() == peer) {
                    continue;
                }
                let before = self
                    .report_changes
                    .then(|| Rib::ecmp_identity(&self.config, &self.peers, paths));
                paths
                    .iter_mut()
                    .filter(|p| p.peer() == peer)
                    .for_each(Path::mark_stale);
                // Stale paths rank below fresh ones (RFC 4724 leaves it open; BIRD does so).
                decision::rank(&self.config, &self.peers, paths);
                if before.is_some_and(|b| b != Rib::ecmp_identity(&self.config, &self.peers, paths))
                {
                    changes.push(BestChange {
                        prefix,
                        paths: Rib::ecmp_of(&self.config, &self.peers, paths),
                    });
                }
            }
            return changes;
        }
        let gone: Vec<(IpNet, u32)> = self
            .table
            .iter()
            .flat_map(|(prefix, paths)| {
                paths
                    .as_slice()
                    .iter()
                    .filter(|p| p.peer() == peer)
                    .map(move |p| (prefix, p.path_id))
            })
            .collect();
        for (prefix, path_id) in gone {
            self.remove_path(prefix, peer, path_id, &mut changes);
        }
        changes
    }

    /// Removes the peer's paths still stale (End-of-RIB for a family, or restart timer):
    /// IPv4 prefixes when `ipv4`, IPv6 ones otherwise.
    pub fn sweep_stale(&mut self, peer: PeerId, ipv4: bool) -> Vec<BestChange> {
        self.sweep(peer, ipv4, Path::STALE)
    }

    /// An enhanced route refresh of a family begins (RFC 7313 Beginning-of-RIB-Refresh):
    /// every path of the peer in it is marked, to go at the end unless announced again.
    /// Rankings stay as they are, so nothing changes for forwarding meanwhile.
    pub fn begin_refresh(&mut self, peer: PeerId, ipv4: bool) {
        for (prefix, paths) in self.table.iter_mut() {
            if prefix.addr().is_ipv4() != ipv4 {
                continue;
            }
            for path in paths.as_mut_slice() {
                if path.peer() == peer {
                    path.source |= Path::REFRESHING;
                }
            }
        }
    }

    /// The refresh ends (End-of-RIB-Refresh, or its timer): the peer's paths of the family not
    /// announced again go.
    pub fn end_refresh(&mut self, peer: PeerId, ipv4: bool) -> Vec<BestChange> {
        self.sweep(peer, ipv4, Path::REFRESHING)
    }

    /// Removes the peer's paths of one family that carry `flag`.
    fn sweep(&mut self, peer: PeerId, ipv4: bool, flag: u32) -> Vec<BestChange> {
        let marked: Vec<(IpNet, u32)> = self
            .table
            .iter()
            .filter(|(prefix, _)| prefix.addr().is_ipv4() == ipv4)
            .flat_map(|(prefix, paths)| {
                paths
                    .as_slice()
                    .iter()
                    .filter(|p| p.peer() == peer && p.source & flag != 0)
                    .map(move |p| (prefix, p.path_id))
            })
            .collect();
        let mut changes = Vec::new();
        for (prefix, path_id) in marked {
            self.remove_path(prefix, peer, path_id, &mut changes);
        }
        changes
    }

    fn maybe_collect(&mut self, writes: usize) {
        self.churn += writes;
        if self.churn > 100_000 {
            self.interner.collect();
            self.churn = 0;
        }
    }

    fn insert_path(&mut self, prefix: IpNet, path: Path, changes: &mut Vec<BestChange>) {
        let report = self.report_changes;
        let peer = path.peer();
        // A prefix new to the table: its one path is the ECMP set.
        let fresh = report.then(|| path.clone());
        let Some((paths, path)) = self.table.place(prefix, path) else {
            *self
                .path_counts
                .entry((peer, prefix.addr().is_ipv4()))
                .or_default() += 1;
            changes.extend(fresh.map(|path| BestChange {
                prefix,
                paths: vec![path],
            }));
            return;
        };
        let (config, peers) = (&self.config, &self.peers);
        let before = report.then(|| Rib::ecmp_identity(config, peers, paths.as_slice()));
        let added = match &mut *paths {
            // The usual update: the prefix's only path replaced by the same source's new one.
            Paths::One(existing) if existing.same_slot(peer, path.path_id) => {
                *existing = path;
                false
            }
            _ => paths.edit(|list| {
                let count = list.len();
                list.retain(|p| !p.same_slot(peer, path.path_id));
                let added = list.len() == count;
                list.push(path);
                decision::rank(config, peers, list);
                added
            }),
        };
        if added {
            *self
                .path_counts
                .entry((peer, prefix.addr().is_ipv4()))
                .or_default() += 1;
        }
        if report && before != Some(Rib::ecmp_identity(config, peers, paths.as_slice())) {
            changes.push(BestChange {
                prefix,
                paths: Rib::ecmp_of(config, peers, paths.as_slice()),
            });
        }
    }

    fn remove_path(
        &mut self,
        prefix: IpNet,
        peer: PeerId,
        path_id: u32,
        changes: &mut Vec<BestChange>,
    ) {
        let prefix = prefix.trunc();
        let Some(paths) = self.table.get_mut(&prefix) else {
            return;
        };
        if !paths.as_slice().iter().any(|p| p.same_slot(peer, path_id)) {
            return;
        }
        if let Some(n) = self.path_counts.get_mut(&(peer, prefix.addr().is_ipv4())) {
            *n = n.saturating_sub(1);
        }
        let report = self.report_changes;
        if let Paths::One(_) = paths {
            // The prefix's only path goes, and the prefix with it.
            self.table.remove(&prefix);
            if report {
                changes.push(BestChange {
                    prefix,
                    paths: Vec::new(),
                });
            }
            return;
        }
        let (config, peers) = (&self.config, &self.peers);
        let before = report.then(|| Rib::ecmp_identity(config, peers, paths.as_slice()));
        // A path gone can change the rank of others: the MED it held down in its group no
        // longer eliminates them.
        paths.edit(|list| {
            list.retain(|p| !p.same_slot(peer, path_id));
            decision::rank(config, peers, list);
        });
        if report && before != Some(Rib::ecmp_identity(config, peers, paths.as_slice())) {
            changes.push(BestChange {
                prefix,
                paths: Rib::ecmp_of(config, peers, paths.as_slice()),
            });
        }
    }

    fn ecmp_set(&self, paths: &[Path]) -> Vec<Path> {
        Rib::ecmp_of(&self.config, &self.peers, paths)
    }

    /// Visits the ECMP set: the best path and those that tie with it up to the multipath
    /// point, through distinct next hops, at most `max_paths`. Allocates nothing for up to
    /// eight members.
    fn for_each_ecmp<'a>(
        config: &RibConfig,
        peers: &HashMap<PeerId, PeerInfo>,
        paths: &'a [Path],
        mut visit: impl FnMut(&'a Path),
    ) {
        let Some(best) = paths.first() else {
            return;
        };
        visit(best);
        let limit = config.max_paths.max(1);
        let mut hops: [Option<IpAddr>; 8] = [None; 8];
        hops[0] = Some(best.next_hop());
        let mut extra_hops: Vec<IpAddr> = Vec::new();
        let mut members = 1;
        for (at, path) in paths.iter().enumerate().skip(1) {
            if members >= limit {
                break;
            }
            match decision::ties_with_best(config, peers, paths, at) {
                None => break,
                Some(false) => continue,
                Some(true) => {}
            }
            // Equal paths through a next hop already in the set add nothing to forwarding.
            let next_hop = path.next_hop();
            let seen =
                hops.iter().flatten().any(|h| *h == next_hop) || extra_hops.contains(&next_hop);
            if !seen {
                match hops.get_mut(members) {
                    Some(slot) => *slot = Some(next_hop),
                    None => extra_hops.push(next_hop),
                }
                members += 1;
                visit(path);
            }
        }
    }

    /// The ECMP set, cloned.
    fn ecmp_of(config: &RibConfig, peers: &HashMap<PeerId, PeerInfo>, paths: &[Path]) -> Vec<Path> {
        let mut set = Vec::new();
        Rib::for_each_ecmp(config, peers, paths, |p| set.push(p.clone()));
        set
    }

    /// What identifies the ECMP set, to tell whether it changed, without cloning paths.
    fn ecmp_identity(
        config: &RibConfig,
        peers: &HashMap<PeerId, PeerInfo>,
        paths: &[Path],
    ) -> EcmpIdentity {
        let mut identity = EcmpIdentity::default();
        Rib::for_each_ecmp(config, peers, paths, |p| identity.push(p));
        identity
    }

    /// What to advertise to peer `to` for a path: `None` when the rules forbid it, else the
    /// attributes and next hop to send. Next hop `None` means "our session address".
    pub fn export(&self, to: PeerId, path: &Path) -> Option<(Option<IpAddr>, PathAttributes)> {
        let target = self.peers.get(&to)?;
        if path.peer() == to {
            return None; // Never back to where it came from.
        }
        let attributes = path.attributes();
        if attributes.communities.contains(&community::NO_ADVERTISE) {
            return None;
        }
        let source = self.peers.get(&path.peer());
        let source_ibgp = source.is_some_and(|s| s.ibgp);
        let source_client = source.is_some_and(|s| s.rr_client);
        let mut out = (**attributes).clone();
        if target.ibgp {
            if source_ibgp && !source_client && !target.rr_client {
                return None; // iBGP split horizon; a reflector reflects only to or from clients.
            }
            if source_ibgp {
                // Reflecting (RFC 4456 §8).
                out.originator_id
                    .get_or_insert(source.map_or(self.config.router_id, |s| s.router_id));
                out.cluster_list = std::iter::once(self.config.cluster_id)
                    .chain(out.cluster_list.iter().copied())
                    .collect();
            }
            out.local_pref.get_or_insert(DEFAULT_LOCAL_PREF);
            let next_hop = if target.next_hop_self || path.peer() == PeerId::LOCAL {
                None
            } else {
                Some(path.next_hop())
            };
            return Some((next_hop, out));
        }
        if attributes.communities.contains(&community::NO_EXPORT)
            || attributes
                .communities
                .contains(&community::NO_EXPORT_SUBCONFED)
        {
            return None;
        }
        let mut as_path = out.as_path.take().unwrap_or_default();
        match target.local_as {
            None => as_path.prepend(self.config.local_as),
            Some(local) => {
                // FRR's local-as: the peer sees the path through that AS (and, unless
                // replace-as, through ours behind it).
                if !local.replace_as {
                    as_path.prepend(self.config.local_as);
                }
                as_path.prepend(local.asn);
            }
        }
        out.as_path = Some(as_path);
        out.local_pref = None;
        out.originator_id = None;
        out.cluster_list = Box::default();
        if path.peer() != PeerId::LOCAL {
            // RFC 4271 §5.1.4: a MED received from a neighbouring AS is not passed to another,
            // and one learned over iBGP came from some neighbouring AS too. Our own
            // originations keep theirs (as FRR does); an export filter may set one.
            out.med = None;
        }
        if target.next_hop_keep && !target.next_hop_self && path.peer() != PeerId::LOCAL {
            return Some((Some(path.next_hop()), out));
        }
        let third_party = target
            .shared_subnet
            .filter(|_| !target.next_hop_self)
            .and_then(|subnet| {
                let hop = path.next_hop();
                (path.peer() != PeerId::LOCAL && subnet.contains(&hop) && hop != target.address)
                    .then_some(hop)
            });
        Some((third_party, out))
    }
}
