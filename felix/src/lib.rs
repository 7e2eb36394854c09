//! twill-felix: Twill's policy agent: Calico's NetworkPolicy, GlobalNetworkPolicy, tiers,
//! profiles, network sets and Kubernetes NetworkPolicy, compiled into iptables chains and
//! ipsets on each node.
//!
//! Four rooms (docs/design/felix.md):
//! - [`model`] and [`calc`] (pure): resources in, the desired dataplane ([`ir`]) out.
//! - `render` (pure): the IR as iptables-restore and ipset text.
//! - `plan` (pure): observed kernel text + desired → the minimal restore scripts.
//! - `apply` (edge, feature `runtime`): runs them.
//!
//! Nothing touches the kernel before the datastore is in sync; every kernel object is
//! recognisable as Twill's (`twl-` names, a hash comment per rule); unknown workload
//! interfaces are dropped.

pub mod calc;
pub mod explain;
pub mod invalid;
pub mod ir;
pub mod model;
pub mod plan;
pub mod render;

#[cfg(feature = "runtime")]
pub mod apply;
