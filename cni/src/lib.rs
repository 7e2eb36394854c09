//! twill-cni: Twill's CNI plugins `twill` and `twill-ipam` (CNI spec 1.1.0: ADD, DEL, CHECK,
//! VERSION, GC, STATUS; results also in the 0.3.x / 0.4.0 form for older callers).
//!
//! Layers:
//! - [`types`], [`config`], [`endpoint`] (pure): the protocol's JSON, the network
//!   configuration and CNI_* environment (checked before anything changes), the
//!   WorkloadEndpoint a pod gets.
//! - [`dataplane`] (edge): the veth pair, addresses, routes and sysctls, through rtnetlink.
//! - [`plugin`] (edge): the commands against the datastore, IPAM and the kernel; an ADD that
//!   fails undoes what it did.
//! - [`node`] (edge): whether twill-node is ready, and when a new endpoint is programmed.
//!
//! `twill` wires pods exactly as Calico's plugin does (host end `tw` + a hash, MAC
//! ee:ee:ee:ee:ee:ee, proxy ARP, /32 and /128 addresses, default route via 169.254.1.1 or
//! fe80::ecee:eeff:feee:eeee, host routes with protocol 211). `twill-ipam` also serves other
//! main plugins, as calico-ipam does.

pub mod config;
pub mod dataplane;
pub mod endpoint;
pub mod logging;
pub mod node;
pub mod plugin;
pub mod types;
