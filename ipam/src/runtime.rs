//! The edge: the compare-and-swap retry loop against the datastore.
//!
//! Every write is one object, compare-and-swapped on the revision it was read at, so the same
//! algorithm runs on every backend, the Kubernetes API (which has no multi-object
//! transaction) included. The order of the writes keeps one invariant through any crash:
//! **a handle names every block that holds one of its addresses** (it may name more). An
//! allocation raises the handle's count for the block first, then writes the block; a block
//! write that loses a race gives the count back. A release writes the blocks first, the
//! handle last. So `release_handle` always finds every address, and what a crash leaves is a
//! handle that counts more than it holds — `ipam check` reports it, the GC removes it.
//!
//! A new block is claimed in three steps, as Calico claims blocks on Kubernetes: the node's
//! affinity is written `pending`, the block is created (a second node creating the same block
//! fails with "already exists" and tries the next one), the affinity is confirmed. Only
//! confirmed affinities are allocated from; the next allocation of the node repairs what a
//! crash left (a pending affinity whose block exists and is the node's is confirmed, one
//! whose block does not exist or is another's is removed; a block of the node without its
//! affinity gets one). On one machine, allocations are serialised by an exclusive lock on a
//! file, so compare-and-swap conflicts happen only between machines.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ipnet::IpNet;
use twill_shared::client::{decode, rfc3339};
use twill_shared::datastore::{Datastore, DatastoreError, Revision, Stored, TxnOp};
use twill_shared::resource::ipam::{
    BlockAffinitySpec, IpPoolSpec, IpamBlockSpec, IpamConfigurationSpec, IpamHandleSpec,
};
use twill_shared::resource::{Key, Kind, Object, ObjectMeta, Resource};

use crate::block::{self, BlockError, Request};
use crate::pool::{self, Family, Pool, Use};

/// How often a write is retried after another writer changed what it read (Calico: 100).
const ATTEMPTS: usize = 100;

/// Why IPAM could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The datastore failed.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
    /// A stored IPAM object is not what IPAM writes.
    #[error("{key}: {reason}")]
    Corrupt {
        /// The object.
        key: Key,
        /// What is wrong.
        reason: String,
    },
    /// No pool can serve the request.
    #[error("no {family} pool is usable on node {node}{detail}")]
    NoPool {
        /// The family asked for.
        family: &'static str,
        /// The node.
        node: String,
        /// Which pools were asked for, if any.
        detail: String,
    },
    /// Every usable pool is full (or the node may claim no more blocks).
    #[error("no free {family} address in {pools} for node {node}")]
    Exhausted {
        /// The family asked for.
        family: &'static str,
        /// The pools tried.
        pools: String,
        /// The node.
        node: String,
    },
    /// A specific address cannot be had.
    #[error("cannot allocate {ip}: {reason}")]
    Unavailable {
        /// The address.
        ip: IpAddr,
        /// Why.
        reason: String,
    },
    /// Other writers kept changing the same objects.
    #[error("gave up after {ATTEMPTS} attempts: the IPAM objects kept changing under concurrent writers")]
    Contended,
    /// The host-wide lock file could not be used.
    #[error("cannot lock {path}: {reason}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What to allocate.
#[derive(Debug, Clone, Default)]
pub struct AssignArgs {
    /// The handle the addresses belong to (`<network>.<containerID>` for pods).
    pub handle: String,
    /// Who holds them: namespace, pod, node.
    pub attributes: BTreeMap<String, String>,
    /// One IPv4 address.
    pub ipv4: bool,
    /// One IPv6 address.
    pub ipv6: bool,
    /// Only these IPv4 pools (names or CIDRs), in this order.
    pub ipv4_pools: Vec<String>,
    /// Only these IPv6 pools.
    pub ipv6_pools: Vec<String>,
    /// Exactly these addresses instead (Calico's `cni.projectcalico.org/ipAddrs`).
    pub addresses: Vec<IpAddr>,
    /// What the addresses are for.
    pub tunnel: bool,
}

/// Addresses IPAM handed out, with the pool each came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// Each address as a host prefix (/32 or /128).
    pub addresses: Vec<IpNet>,
}

/// The IPAM client of one node.
#[derive(Debug, Clone)]
pub struct Ipam {
    store: Arc<dyn Datastore>,
    node: String,
    lock_path: Option<PathBuf>,
    /// The block the last allocation used: tried first next time (it is re-read, so a stale
    /// hint costs one read). With a lock file it is also kept beside it (`LOCK.hint`), so the
    /// next process on the node (a CNI plugin lives for one call) starts from it too, without
    /// listing every block affinity.
    hint: Arc<std::sync::Mutex<Option<IpNet>>>,
}

/// The settings and pools every allocation reads first.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    pools: Vec<(String, IpPoolSpec)>,
    reserved: Vec<IpNet>,
    config: IpamConfigurationSpec,
    node_labels: BTreeMap<String, String>,
}

/// A block as read, with the revision to write it back at.
#[derive(Debug, Clone)]
struct ReadBlock {
    spec: IpamBlockSpec,
    revision: Revision,
}

/// Time since the Unix epoch, at full precision (the edge reads the clock).
pub fn now_since_epoch() -> std::time::Duration {
    #[allow(clippy::disallowed_methods)] // The runtime is an edge.
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn now_seconds() -> u64 {
    #[allow(clippy::disallowed_methods)] // The runtime is an edge.
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Ipam {
    /// The IPAM client of `node`; `lock_path` serialises this machine's allocations.
    pub fn new(store: Arc<dyn Datastore>, node: &str, lock_path: Option<PathBuf>) -> Ipam {
        Ipam {
            store,
            node: node.to_string(),
            lock_path,
            hint: Arc::default(),
        }
    }

    /// The hint file beside the lock file.
    fn hint_path(&self) -> Option<PathBuf> {
        self.lock_path.as_ref().map(|lock| {
            let mut name = lock.file_name().unwrap_or_default().to_os_string();
            name.push(".hint");
            lock.with_file_name(name)
        })
    }

    /// The block to try first: this client's last, else the node's last (read under the lock).
    fn hint(&self) -> Option<IpNet> {
        let mine = *self.hint.lock().expect("the hint lock is never poisoned");
        mine.or_else(|| {
            let text = std::fs::read_to_string(self.hint_path()?).ok()?;
            text.trim().parse().ok()
        })
    }

    /// Remembers the block an allocation used (the file is best effort: a hint is only ever
    /// a first guess, checked against the block itself).
    fn set_hint(&self, cidr: IpNet) {
        *self.hint.lock().expect("the hint lock is never poisoned") = Some(cidr);
        if let Some(path) = self.hint_path() {
            let _ = std::fs::write(path, format!("{cidr}\n"));
        }
    }

    /// Forgets the hint (in memory and beside the lock file).
    fn clear_hint(&self) {
        *self.hint.lock().expect("the hint lock is never poisoned") = None;
        if let Some(path) = self.hint_path() {
            let _ = std::fs::remove_file(path);
        }
    }

    /// One write of one object.
    async fn write(&self, op: TxnOp) -> Result<Revision, DatastoreError> {
        self.store.txn(vec![op]).await
    }

    /// Gives back the count an allocation raised on a handle before its block write lost a
    /// race (best effort: a count left behind only makes the handle name one block too many,
    /// which `ipam check` reports and the GC removes).
    async fn undo_handle(&self, handle: &str, cidr: IpNet) {
        for _ in 0..5 {
            match self.handle_decrement(handle, cidr).await {
                Ok(Some(op)) => match self.write(op).await {
                    Ok(_) => return,
                    Err(err) if is_race(&err) => continue,
                    Err(err) => {
                        tracing::warn!(%handle, block = %cidr, error = %err, "cannot give back a handle's count");
                        return;
                    }
                },
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(%handle, block = %cidr, error = %err, "cannot give back a handle's count");
                    return;
                }
            }
        }
    }

    /// The node this client allocates for.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The datastore.
    pub fn store(&self) -> &Arc<dyn Datastore> {
        &self.store
    }

    /// Allocates what `args` asks for; all or nothing (a dual-stack request that gets its
    /// IPv4 address but no IPv6 one gives the IPv4 one back).
    pub async fn assign(&self, args: &AssignArgs) -> Result<Assigned, IpamError> {
        // The configuration read does not depend on the lock: read before taking it, so the
        // lock is held for the block and handle writes alone (on Kubernetes every read is a
        // round trip to the API server, and every other ADD on the node waits for the lock).
        let snapshot = self.snapshot().await?;
        let _lock = self.lock().await?;
        let mut addresses = Vec::new();
        let result = self.assign_locked(args, &snapshot, &mut addresses).await;
        match result {
            Ok(()) => Ok(Assigned {
                addresses: addresses.into_iter().map(IpNet::from).collect(),
            }),
            Err(err) => {
                if !addresses.is_empty() {
                    if let Err(undo) = self.release_ips_locked(&addresses).await {
                        tracing::error!(error = %undo, "cannot give back a half-done allocation");
                    }
                }
                Err(err)
            }
        }
    }

    async fn assign_locked(
        &self,
        args: &AssignArgs,
        snapshot: &Snapshot,
        addresses: &mut Vec<IpAddr>,
    ) -> Result<(), IpamError> {
        if !args.addresses.is_empty() {
            for &ip in &args.addresses {
                self.assign_specific(ip, args, snapshot).await?;
                addresses.push(ip);
            }
            return Ok(());
        }
        let families = [
            (args.ipv4, Family::V4, &args.ipv4_pools),
            (args.ipv6, Family::V6, &args.ipv6_pools),
        ];
        for (wanted, family, pools) in families {
            if wanted {
                // The first address of a handle usually creates it: try that without reading.
                let handle_new = addresses.is_empty();
                addresses.push(
                    self.assign_one(family, pools, args, snapshot, handle_new)
                        .await?,
                );
            }
        }
        Ok(())
    }

    /// One address of `family`: from an affine block, else a newly claimed block, else
    /// (unless strictAffinity) borrowed from any block with room.
    async fn assign_one(
        &self,
        family: Family,
        wanted: &[String],
        args: &AssignArgs,
        snapshot: &Snapshot,
        handle_new: bool,
    ) -> Result<IpAddr, IpamError> {
        let purpose = if args.tunnel {
            Use::Tunnel
        } else {
            Use::Workload
        };
        let pools = pool::usable_pools(
            &snapshot.pools,
            family,
            &snapshot.node_labels,
            wanted,
            purpose,
        );
        if pools.is_empty() {
            return Err(IpamError::NoPool {
                family: family.name(),
                node: self.node.clone(),
                detail: if wanted.is_empty() {
                    String::new()
                } else {
                    format!(" among {}", wanted.join(", "))
                },
            });
        }
        let mut optimistic = handle_new;
        for _ in 0..ATTEMPTS {
            match self
                .try_assign_one(&pools, args, snapshot, optimistic)
                .await
            {
                Ok(Some(ip)) => return Ok(ip),
                Ok(None) => {
                    return Err(IpamError::Exhausted {
                        family: family.name(),
                        pools: pools
                            .iter()
                            .map(|p| p.cidr.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        node: self.node.clone(),
                    })
                }
                Err(IpamError::Datastore(err)) if is_race(&err) => {
                    if matches!(&err, DatastoreError::AlreadyExists { key } if key.kind == Kind::IpamHandle)
                    {
                        optimistic = false;
                    }
                    tracing::debug!(error = %err, "IPAM write raced another writer; retrying");
                }
                Err(err) => return Err(err),
            }
        }
        Err(IpamError::Contended)
    }

    /// One pass; `Ok(None)` when there is no room anywhere, a race error when a write lost.
    async fn try_assign_one(
        &self,
        pools: &[Pool],
        args: &AssignArgs,
        snapshot: &Snapshot,
        optimistic: bool,
    ) -> Result<Option<IpAddr>, IpamError> {
        let hint = self.hint();
        let mine = format!("host:{}", self.node);
        if let Some(cidr) = hint.filter(|c| pools.iter().any(|p| p.cidr.contains(c))) {
            // A new handle is created while the block is read (either way it names the block
            // before the block holds its address); if the block cannot take the address,
            // the handle's count for it goes back.
            let (read, handle_written) = if optimistic {
                let create = async {
                    let op = self.handle_op(&args.handle, &[(cidr, 1)], true).await?;
                    self.write(op).await.map_err(IpamError::from)
                };
                let (read, created) = tokio::join!(self.read_block(cidr), create);
                created?;
                match read {
                    Ok(read) => (read, true),
                    Err(err) => {
                        self.undo_handle(&args.handle, cidr).await;
                        return Err(err);
                    }
                }
            } else {
                (self.read_block(cidr).await?, false)
            };
            let mut assigned = None;
            if let Some(read) = read.filter(|r| r.spec.affinity.as_deref() == Some(mine.as_str())) {
                let result = self
                    .assign_in_with(read, args, snapshot, false, optimistic, handle_written)
                    .await;
                if handle_written && matches!(result, Err(IpamError::Corrupt { .. })) {
                    self.undo_handle(&args.handle, cidr).await;
                }
                assigned = result?;
            } else if handle_written {
                self.undo_handle(&args.handle, cidr).await;
            }
            if let Some(ip) = assigned {
                return Ok(Some(ip));
            }
            // The hinted block is full or no longer this node's: the next allocation does not
            // start from it.
            self.clear_hint();
        }
        let affine = self.affine_blocks(pools).await?;
        for cidr in affine.iter().filter(|c| Some(**c) != hint) {
            let Some(read) = self.read_block(*cidr).await? else {
                continue;
            };
            if let Some(ip) = self
                .assign_in(read, args, snapshot, false, optimistic)
                .await?
            {
                return Ok(Some(ip));
            }
        }
        let may_claim = snapshot.config.auto_allocate_blocks != Some(false)
            && snapshot
                .config
                .max_blocks_per_host
                .is_none_or(|max| max == 0 || (affine.len() as u32) < max);
        let all_blocks = self.list_blocks().await?;
        if may_claim {
            if let Some(ip) = self
                .claim_block(pools, &all_blocks, args, snapshot, optimistic)
                .await?
            {
                return Ok(Some(ip));
            }
        }
        if snapshot.config.strict_affinity == Some(true) {
            return Ok(None);
        }
        for (cidr, read) in all_blocks {
            let in_pools = pools.iter().any(|p| p.cidr.contains(&cidr));
            if in_pools && !affine.contains(&cidr) {
                if let Some(ip) = self
                    .assign_in(read, args, snapshot, true, optimistic)
                    .await?
                {
                    return Ok(Some(ip));
                }
            }
        }
        Ok(None)
    }

    /// Allocates in a block already read; `Ok(None)` when it has no room.
    async fn assign_in(
        &self,
        read: ReadBlock,
        args: &AssignArgs,
        snapshot: &Snapshot,
        borrowed: bool,
        optimistic: bool,
    ) -> Result<Option<IpAddr>, IpamError> {
        self.assign_in_with(read, args, snapshot, borrowed, optimistic, false)
            .await
    }

    /// [`Ipam::assign_in`], the handle's count for the block already raised when
    /// `handle_written` (given back if the block has no room).
    async fn assign_in_with(
        &self,
        read: ReadBlock,
        args: &AssignArgs,
        snapshot: &Snapshot,
        borrowed: bool,
        optimistic: bool,
        handle_written: bool,
    ) -> Result<Option<IpAddr>, IpamError> {
        let request = Request {
            count: 1,
            handle: &args.handle,
            attributes: &args.attributes,
            reserved: &snapshot.reserved,
        };
        let (next, got) =
            block::assign(&read.spec, &request).map_err(|err| self.corrupt_block(&read, err))?;
        let cidr = block::cidr_of(&next).map_err(|err| self.corrupt_block(&read, err))?;
        let Some(&ip) = got.first() else {
            if handle_written {
                self.undo_handle(&args.handle, cidr).await;
            }
            return Ok(None);
        };
        // The handle first (it must name the block before the block holds its address).
        if !handle_written {
            self.write(
                self.handle_op(&args.handle, &[(cidr, 1)], optimistic)
                    .await?,
            )
            .await?;
        }
        let block_write = TxnOp::Update {
            key: block_key(cidr),
            value: block_value(cidr, next),
            expected: Some(read.revision),
        };
        if let Err(err) = self.write(block_write).await {
            self.undo_handle(&args.handle, cidr).await;
            return Err(err.into());
        }
        if !borrowed {
            self.set_hint(cidr);
        }
        if borrowed {
            tracing::info!(%ip, block = %cidr, node = %self.node, "borrowed an address from another node's block");
        }
        Ok(Some(ip))
    }

    /// Claims the first free block of the pools (in this node's order) with the address in
    /// it: the handle, the affinity (pending), the block, the affinity confirmed.
    async fn claim_block(
        &self,
        pools: &[Pool],
        existing: &BTreeMap<IpNet, ReadBlock>,
        args: &AssignArgs,
        snapshot: &Snapshot,
        optimistic: bool,
    ) -> Result<Option<IpAddr>, IpamError> {
        let now = rfc3339(now_seconds());
        for pool in pools {
            for cidr in pool::blocks_for_node(pool, &self.node) {
                if existing.contains_key(&cidr) {
                    continue;
                }
                let fresh =
                    block::new_block(cidr, Some(format!("host:{}", self.node)), Some(now.clone()));
                let request = Request {
                    count: 1,
                    handle: &args.handle,
                    attributes: &args.attributes,
                    reserved: &snapshot.reserved,
                };
                let (next, got) =
                    block::assign(&fresh, &request).expect("a new block is consistent");
                let Some(&ip) = got.first() else {
                    continue; // wholly reserved
                };
                self.write(
                    self.handle_op(&args.handle, &[(cidr, 1)], optimistic)
                        .await?,
                )
                .await?;
                let affinity_key =
                    Key::cluster(Kind::BlockAffinity, &pool::affinity_name(&self.node, cidr));
                let pending = match self.put_affinity(&affinity_key, cidr, "pending").await {
                    Ok(revision) => revision,
                    Err(err) => {
                        self.undo_handle(&args.handle, cidr).await;
                        return Err(err);
                    }
                };
                let created = self
                    .write(TxnOp::Create {
                        key: block_key(cidr),
                        value: block_value(cidr, next),
                    })
                    .await;
                if let Err(err) = created {
                    // Another node has it (or it appeared meanwhile): no trace of ours stays.
                    let _ = self
                        .write(TxnOp::Delete {
                            key: affinity_key,
                            expected: Some(pending),
                        })
                        .await;
                    self.undo_handle(&args.handle, cidr).await;
                    return Err(err.into());
                }
                if let Err(err) = self
                    .write(TxnOp::Update {
                        key: affinity_key,
                        value: affinity_value(&self.node, cidr, "confirmed"),
                        expected: Some(pending),
                    })
                    .await
                {
                    // The block is ours; the next allocation confirms the affinity.
                    tracing::warn!(block = %cidr, error = %err, "cannot confirm the block's affinity yet");
                }
                self.set_hint(cidr);
                tracing::info!(block = %cidr, node = %self.node, "claimed a block");
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }

    async fn assign_specific(
        &self,
        ip: IpAddr,
        args: &AssignArgs,
        snapshot: &Snapshot,
    ) -> Result<(), IpamError> {
        let unavailable = |reason: String| IpamError::Unavailable { ip, reason };
        let pool = pool::pool_of(&snapshot.pools, ip)
            .ok_or_else(|| unavailable("it is in no IPPool".into()))?;
        let cidr = pool::block_containing(&pool, ip);
        let request = Request {
            count: 1,
            handle: &args.handle,
            attributes: &args.attributes,
            reserved: &snapshot.reserved,
        };
        for _ in 0..ATTEMPTS {
            let (op, next) = match self.read_block(cidr).await? {
                Some(read) => {
                    let next =
                        block::assign_specific(&read.spec, ip, &request).map_err(
                            |err| match err {
                                BlockError::Corrupt { .. } => self.corrupt_block(&read, err),
                                other => unavailable(other.to_string()),
                            },
                        )?;
                    (Some(read.revision), next)
                }
                None => {
                    // Nobody has the block yet: create it without affinity, as Calico does
                    // for a specific address outside the node's blocks.
                    let fresh = block::new_block(cidr, None, None);
                    let next = block::assign_specific(&fresh, ip, &request)
                        .map_err(|err| unavailable(err.to_string()))?;
                    (None, next)
                }
            };
            let write = match op {
                Some(revision) => TxnOp::Update {
                    key: block_key(cidr),
                    value: block_value(cidr, next),
                    expected: Some(revision),
                },
                None => TxnOp::Create {
                    key: block_key(cidr),
                    value: block_value(cidr, next),
                },
            };
            match self
                .write(self.handle_op(&args.handle, &[(cidr, 1)], false).await?)
                .await
            {
                Ok(_) => {}
                Err(err) if is_race(&err) => continue,
                Err(err) => return Err(err.into()),
            }
            match self.write(write).await {
                Ok(_) => return Ok(()),
                Err(err) => {
                    self.undo_handle(&args.handle, cidr).await;
                    if is_race(&err) {
                        continue;
                    }
                    return Err(err.into());
                }
            }
        }
        Err(IpamError::Contended)
    }

    /// The addresses a handle holds now.
    pub async fn addresses_of_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let key = Key::cluster(Kind::IpamHandle, &pool::handle_name(handle));
        let Some(stored) = self.store.get(&key).await? else {
            return Ok(Vec::new());
        };
        let mut addresses = Vec::new();
        for cidr_text in handle_spec(&stored)?.block.keys() {
            let Ok(cidr) = cidr_text.parse::<IpNet>() else {
                continue;
            };
            if let Some(read) = self.read_block(cidr).await? {
                addresses.extend(
                    block::allocated(&read.spec)
                        .into_iter()
                        .filter(|(_, a)| a.handle_id.as_deref() == Some(handle))
                        .map(|(ip, _)| ip),
                );
            }
        }
        Ok(addresses)
    }

    /// Releases every address of a handle, block by block, then the handle; returns the
    /// addresses. A handle that does not exist releases nothing (DEL is idempotent); one cut
    /// short is finished by the next call.
    pub async fn release_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let _lock = self.lock().await?;
        for _ in 0..ATTEMPTS {
            match self.try_release_handle(handle).await {
                Err(IpamError::Datastore(err)) if is_race(&err) => continue,
                other => return other,
            }
        }
        Err(IpamError::Contended)
    }

    async fn try_release_handle(&self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        let key = Key::cluster(Kind::IpamHandle, &pool::handle_name(handle));
        let Some(stored) = self.store.get(&key).await? else {
            return Ok(Vec::new());
        };
        let spec = handle_spec(&stored)?;
        let mut released = Vec::new();
        let now = rfc3339(now_seconds());
        for cidr_text in spec.block.keys() {
            let cidr: IpNet = cidr_text.parse().map_err(|_| IpamError::Corrupt {
                key: key.clone(),
                reason: format!("block {cidr_text:?} is not a CIDR"),
            })?;
            let Some(read) = self.read_block(cidr).await? else {
                continue;
            };
            let (mut next, ips) = block::release_handle(&read.spec, handle)
                .map_err(|err| self.corrupt_block(&read, err))?;
            if ips.is_empty() {
                continue;
            }
            block::mark_empty(&mut next, &now);
            // The blocks first, the handle last: a handle never stops naming a block that
            // still holds one of its addresses.
            self.write(TxnOp::Update {
                key: block_key(cidr),
                value: block_value(cidr, next),
                expected: Some(read.revision),
            })
            .await?;
            released.extend(ips);
        }
        self.write(TxnOp::Delete {
            key,
            expected: Some(stored.revision),
        })
        .await?;
        Ok(released)
    }

    /// Releases addresses, whoever holds them; returns those that were allocated, with their
    /// handles. Each handle's count goes down in the same transaction.
    pub async fn release_ips(
        &self,
        ips: &[IpAddr],
    ) -> Result<Vec<(IpAddr, Option<String>)>, IpamError> {
        let _lock = self.lock().await?;
        self.release_ips_locked(ips).await
    }

    async fn release_ips_locked(
        &self,
        ips: &[IpAddr],
    ) -> Result<Vec<(IpAddr, Option<String>)>, IpamError> {
        let mut released = Vec::new();
        for &ip in ips {
            for attempt in 0..=ATTEMPTS {
                if attempt == ATTEMPTS {
                    return Err(IpamError::Contended);
                }
                match self.try_release_ip(ip).await {
                    Ok(found) => {
                        released.extend(found);
                        break;
                    }
                    Err(IpamError::Datastore(err)) if is_race(&err) => continue,
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(released)
    }

    async fn try_release_ip(
        &self,
        ip: IpAddr,
    ) -> Result<Option<(IpAddr, Option<String>)>, IpamError> {
        let blocks = self.list_blocks().await?;
        let Some((cidr, read)) = blocks.into_iter().find(|(cidr, _)| cidr.contains(&ip)) else {
            return Ok(None);
        };
        let (mut next, found) =
            block::release_ips(&read.spec, &[ip]).map_err(|err| self.corrupt_block(&read, err))?;
        let Some((ip, handle)) = found.into_iter().next() else {
            return Ok(None);
        };
        block::mark_empty(&mut next, &rfc3339(now_seconds()));
        self.write(TxnOp::Update {
            key: block_key(cidr),
            value: block_value(cidr, next),
            expected: Some(read.revision),
        })
        .await?;
        // Then the handle's count (a count left behind is harmless: see the module doc).
        if let Some(handle) = &handle {
            self.undo_handle(handle, cidr).await;
        }
        Ok(Some((ip, handle)))
    }

    /// Removes this node's affinity for blocks that have been empty for at least `grace`
    /// seconds (the block goes too, so another node may claim it). Returns the blocks freed.
    pub async fn release_empty_blocks(
        &self,
        grace: u64,
        now: u64,
    ) -> Result<Vec<IpNet>, IpamError> {
        let _lock = self.lock().await?;
        let mut freed = Vec::new();
        let affinity = format!("host:{}", self.node);
        for (cidr, read) in self.list_blocks().await? {
            let since = read
                .spec
                .empty_since
                .as_deref()
                .and_then(crate::parse_rfc3339);
            let old_enough = since.is_some_and(|since| now.saturating_sub(since) >= grace);
            if read.spec.affinity.as_deref() != Some(affinity.as_str())
                || !block::is_empty(&read.spec)
                || !old_enough
            {
                continue;
            }
            let affinity_key =
                Key::cluster(Kind::BlockAffinity, &pool::affinity_name(&self.node, cidr));
            // The block first (conditional: an allocation in between keeps it), then the
            // affinity (one left behind is removed by the next allocation's repair).
            match self
                .write(TxnOp::Delete {
                    key: block_key(cidr),
                    expected: Some(read.revision),
                })
                .await
            {
                Ok(_) => freed.push(cidr),
                Err(err) if is_race(&err) => continue, // it was used meanwhile: keep it
                Err(err) => return Err(err.into()),
            }
            match self
                .write(TxnOp::Delete {
                    key: affinity_key,
                    expected: None,
                })
                .await
            {
                Ok(_) | Err(DatastoreError::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(freed)
    }

    /// This node is gone (its Kubernetes Node was deleted): its empty blocks go with their
    /// affinities, and affinities with no block behind them (a claim cut short). Blocks that
    /// still hold addresses stay until those are released (their pods' handles, freed by the
    /// leak collector); a later call frees them. Returns the blocks freed and the affinities
    /// removed.
    pub async fn release_node(&self) -> Result<(Vec<IpNet>, usize), IpamError> {
        let affinity = format!("host:{}", self.node);
        let blocks = self.list_blocks().await?;
        let mut freed = Vec::new();
        let mut kept = BTreeSet::new();
        for (cidr, read) in &blocks {
            if read.spec.affinity.as_deref() != Some(affinity.as_str()) {
                continue;
            }
            if !block::is_empty(&read.spec) {
                kept.insert(*cidr);
                continue;
            }
            match self
                .write(TxnOp::Delete {
                    key: block_key(*cidr),
                    expected: Some(read.revision),
                })
                .await
            {
                Ok(_) => freed.push(*cidr),
                // Changed meanwhile: looked at again on the next call.
                Err(err) if is_race(&err) => {
                    kept.insert(*cidr);
                }
                Err(err) => return Err(err.into()),
            }
        }
        let mut removed = 0;
        for stored in self
            .store
            .list(Some(Kind::BlockAffinity), None)
            .await?
            .items
        {
            let spec = &stored.value["spec"];
            if spec["node"].as_str() != Some(self.node.as_str()) {
                continue;
            }
            let block = spec["cidr"].as_str().and_then(|c| c.parse::<IpNet>().ok());
            if block.is_some_and(|b| kept.contains(&b)) {
                continue;
            }
            match self
                .write(TxnOp::Delete {
                    key: stored.key.clone(),
                    expected: Some(stored.revision),
                })
                .await
            {
                Ok(_) => removed += 1,
                Err(err) if is_race(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok((freed, removed))
    }

    /// The handle write of an allocation: create it, or add to its counts.
    /// With `optimistic`, the handle is assumed new (no read; a transaction that finds it
    /// fails with AlreadyExists and the caller reads next time).
    async fn handle_op(
        &self,
        handle: &str,
        add: &[(IpNet, u32)],
        optimistic: bool,
    ) -> Result<TxnOp, IpamError> {
        let key = Key::cluster(Kind::IpamHandle, &pool::handle_name(handle));
        let existing = if optimistic {
            None
        } else {
            self.store.get(&key).await?
        };
        let (mut spec, expected) = match &existing {
            Some(stored) => (handle_spec(stored)?, Some(stored.revision)),
            None => (
                IpamHandleSpec {
                    handle_id: Some(handle.to_string()),
                    ..IpamHandleSpec::default()
                },
                None,
            ),
        };
        for (cidr, count) in add {
            *spec.block.entry(cidr.to_string()).or_default() += count;
        }
        let value = handle_value(&key.name, spec);
        Ok(match expected {
            Some(revision) => TxnOp::Update {
                key,
                value,
                expected: Some(revision),
            },
            None => TxnOp::Create { key, value },
        })
    }

    /// The handle write of releasing one of its addresses in `cidr`.
    async fn handle_decrement(
        &self,
        handle: &str,
        cidr: IpNet,
    ) -> Result<Option<TxnOp>, IpamError> {
        let key = Key::cluster(Kind::IpamHandle, &pool::handle_name(handle));
        let Some(stored) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let mut spec = handle_spec(&stored)?;
        let name = cidr.to_string();
        if let Some(count) = spec.block.get_mut(&name) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                spec.block.remove(&name);
            }
        }
        Ok(Some(if spec.block.is_empty() {
            TxnOp::Delete {
                key,
                expected: Some(stored.revision),
            }
        } else {
            let value = handle_value(&key.name, spec);
            TxnOp::Update {
                key,
                value,
                expected: Some(stored.revision),
            }
        }))
    }

    /// Writes this node's affinity for `cidr` in `state`, whether it exists or not; its
    /// revision.
    async fn put_affinity(
        &self,
        key: &Key,
        cidr: IpNet,
        state: &str,
    ) -> Result<Revision, IpamError> {
        let value = affinity_value(&self.node, cidr, state);
        match self.store.get(key).await? {
            None => Ok(self
                .write(TxnOp::Create {
                    key: key.clone(),
                    value,
                })
                .await?),
            Some(stored) => Ok(self
                .write(TxnOp::Update {
                    key: key.clone(),
                    value,
                    expected: Some(stored.revision),
                })
                .await?),
        }
    }

    /// Repairs what a crash in a block claim or release left of this node's affinities: a
    /// pending affinity whose block is this node's is confirmed, one whose block is missing
    /// or another's goes; a block of this node without a confirmed affinity gets one. (This
    /// machine's allocations hold the IPAM lock, so no claim of this node is under way.)
    async fn repair_affinities(
        &self,
        affinities: &[(Stored, BlockAffinitySpec)],
        blocks: &BTreeMap<IpNet, ReadBlock>,
    ) -> Result<(), IpamError> {
        let mine = format!("host:{}", self.node);
        for (stored, spec) in affinities {
            let (Some(cidr), Some("pending")) = (spec.cidr, spec.state.as_deref()) else {
                continue;
            };
            let result = match blocks.get(&cidr.0) {
                Some(read) if read.spec.affinity.as_deref() == Some(mine.as_str()) => {
                    self.write(TxnOp::Update {
                        key: stored.key.clone(),
                        value: affinity_value(&self.node, cidr.0, "confirmed"),
                        expected: Some(stored.revision),
                    })
                    .await
                }
                _ => {
                    self.write(TxnOp::Delete {
                        key: stored.key.clone(),
                        expected: Some(stored.revision),
                    })
                    .await
                }
            };
            match result {
                Ok(_) => {
                    tracing::info!(block = %cidr.0, node = %self.node, "repaired a block affinity a claim left pending")
                }
                Err(err) if is_race(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        for (cidr, read) in blocks {
            if read.spec.affinity.as_deref() != Some(mine.as_str()) {
                continue;
            }
            let confirmed = affinities.iter().any(|(_, spec)| {
                spec.cidr.map(|c| c.0) == Some(*cidr) && spec.state.as_deref() == Some("confirmed")
            });
            if !confirmed {
                let key =
                    Key::cluster(Kind::BlockAffinity, &pool::affinity_name(&self.node, *cidr));
                match self.put_affinity(&key, *cidr, "confirmed").await {
                    Ok(_) => {
                        tracing::info!(block = %cidr, node = %self.node, "restored the affinity of a block of this node")
                    }
                    Err(IpamError::Datastore(err)) if is_race(&err) => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }

    /// The CIDRs of this node's confirmed blocks inside `pools`, in address order (after
    /// repairing what a crash left, see [`Ipam::repair_affinities`]).
    async fn affine_blocks(&self, pools: &[Pool]) -> Result<Vec<IpNet>, IpamError> {
        let listing = self.store.list(Some(Kind::BlockAffinity), None).await?;
        let mut affinities = Vec::new();
        for stored in listing.items {
            let Resource::BlockAffinity(object) = decode_stored(stored.clone())? else {
                continue;
            };
            if object.spec.node.as_deref() == Some(self.node.as_str()) {
                affinities.push((stored, object.spec));
            }
        }
        let needs_repair = affinities
            .iter()
            .any(|(_, spec)| spec.state.as_deref() == Some("pending"));
        if needs_repair {
            let blocks = self.list_blocks().await?;
            self.repair_affinities(&affinities, &blocks).await?;
            return Box::pin(self.affine_blocks(pools)).await;
        }
        let mut cidrs = Vec::new();
        for (_, spec) in affinities {
            let mine = spec.node.as_deref() == Some(self.node.as_str())
                && spec.state.as_deref() == Some("confirmed")
                && spec.deleted != Some(true);
            if let (true, Some(cidr)) = (mine, spec.cidr) {
                if pools.iter().any(|p| p.cidr.contains(&cidr.0)) {
                    cidrs.push(cidr.0);
                }
            }
        }
        cidrs.sort();
        Ok(cidrs)
    }

    async fn read_block(&self, cidr: IpNet) -> Result<Option<ReadBlock>, IpamError> {
        let Some(stored) = self.store.get(&block_key(cidr)).await? else {
            return Ok(None);
        };
        Ok(Some(read_block(stored)?))
    }

    async fn list_blocks(&self) -> Result<BTreeMap<IpNet, ReadBlock>, IpamError> {
        let listing = self.store.list(Some(Kind::IpamBlock), None).await?;
        let mut blocks = BTreeMap::new();
        for stored in listing.items {
            let read = read_block(stored)?;
            if let Some(cidr) = read.spec.cidr {
                blocks.insert(cidr.0, read);
            }
        }
        Ok(blocks)
    }

    async fn snapshot(&self) -> Result<Snapshot, IpamError> {
        let config_key = Key::cluster(Kind::IpamConfiguration, "default");
        let node_key = Key::cluster(Kind::Node, &self.node);
        // Four independent reads, at once.
        let (pools, reservations, config, node) = tokio::join!(
            self.store.list(Some(Kind::IpPool), None),
            self.store.list(Some(Kind::IpReservation), None),
            self.store.get(&config_key),
            self.store.get(&node_key),
        );
        let mut snapshot = Snapshot::default();
        for stored in pools?.items {
            if let Resource::IpPool(object) = decode_stored(stored)? {
                let name = object.metadata.name.clone().unwrap_or_default();
                snapshot.pools.push((name, object.spec));
            }
        }
        for stored in reservations?.items {
            if let Resource::IpReservation(object) = decode_stored(stored)? {
                snapshot.reserved.extend(
                    object
                        .spec
                        .reserved_cidrs
                        .into_iter()
                        .flatten()
                        .map(|c| c.0),
                );
            }
        }
        if let Some(stored) = config? {
            if let Resource::IpamConfiguration(object) = decode_stored(stored)? {
                snapshot.config = object.spec;
            }
        }
        if let Some(stored) = node? {
            if let Resource::Node(object) = decode_stored(stored)? {
                snapshot.node_labels = object.metadata.labels.unwrap_or_default();
            }
        }
        Ok(snapshot)
    }

    fn corrupt_block(&self, read: &ReadBlock, err: BlockError) -> IpamError {
        let cidr = read.spec.cidr.map(|c| c.0);
        IpamError::Corrupt {
            key: Key::cluster(
                Kind::IpamBlock,
                &cidr.map(pool::block_name).unwrap_or_default(),
            ),
            reason: err.to_string(),
        }
    }

    /// Takes the machine-wide IPAM lock (if configured); released when dropped.
    async fn lock(&self) -> Result<Option<std::fs::File>, IpamError> {
        let Some(path) = self.lock_path.clone() else {
            return Ok(None);
        };
        let fail = |path: &PathBuf, err: std::io::Error| IpamError::Lock {
            path: path.clone(),
            reason: err.to_string(),
        };
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|err| fail(&path, err))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|err| fail(&path, err))?;
            file.lock().map_err(|err| fail(&path, err))?;
            Ok(Some(file))
        })
        .await
        .map_err(|err| IpamError::Lock {
            path: self.lock_path.clone().unwrap_or_default(),
            reason: err.to_string(),
        })?
    }
}

/// Whether a write lost a race with another writer (and should read again).
fn is_race(err: &DatastoreError) -> bool {
    matches!(
        err,
        DatastoreError::Conflict { .. }
            | DatastoreError::AlreadyExists { .. }
            | DatastoreError::NotFound { .. }
    )
}

fn decode_stored(stored: Stored) -> Result<Resource, IpamError> {
    let key = stored.key.clone();
    decode(stored).map_err(|err| IpamError::Corrupt {
        key,
        reason: err.to_string(),
    })
}

fn read_block(stored: Stored) -> Result<ReadBlock, IpamError> {
    let revision = stored.revision;
    let key = stored.key.clone();
    match decode_stored(stored)? {
        Resource::IpamBlock(object) => {
            block::cidr_of(&object.spec).map_err(|err| IpamError::Corrupt {
                key,
                reason: err.to_string(),
            })?;
            Ok(ReadBlock {
                spec: object.spec,
                revision,
            })
        }
        _ => Err(IpamError::Corrupt {
            key,
            reason: "not an IPAM block".into(),
        }),
    }
}

fn handle_spec(stored: &Stored) -> Result<IpamHandleSpec, IpamError> {
    match decode_stored(stored.clone())? {
        Resource::IpamHandle(object) => Ok(object.spec),
        _ => Err(IpamError::Corrupt {
            key: stored.key.clone(),
            reason: "not an IPAM handle".into(),
        }),
    }
}

/// The key of a block.
pub fn block_key(cidr: IpNet) -> Key {
    Key::cluster(Kind::IpamBlock, &pool::block_name(cidr))
}

fn object<S>(kind: Kind, name: &str, spec: S) -> Object<S> {
    Object {
        api_version: kind.api_version().to_string(),
        kind: kind.name().to_string(),
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec,
    }
}

fn block_value(cidr: IpNet, spec: IpamBlockSpec) -> serde_json::Value {
    Resource::IpamBlock(object(Kind::IpamBlock, &pool::block_name(cidr), spec)).to_value()
}

fn handle_value(name: &str, spec: IpamHandleSpec) -> serde_json::Value {
    Resource::IpamHandle(object(Kind::IpamHandle, name, spec)).to_value()
}

fn affinity_value(node: &str, cidr: IpNet, state: &str) -> serde_json::Value {
    let spec = BlockAffinitySpec {
        state: Some(state.into()),
        node: Some(node.to_string()),
        affinity_type: Some("host".into()),
        cidr: Some(twill_shared::resource::fields::Cidr(cidr)),
        deleted: None,
    };
    Resource::BlockAffinity(object(
        Kind::BlockAffinity,
        &pool::affinity_name(node, cidr),
        spec,
    ))
    .to_value()
}
