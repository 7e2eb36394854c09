//! twill-lab: a Twill cluster on one machine, for users (`twillctl lab`), tests and
//! benchmarks — the workspace's one way to build namespaces, links and processes.
//!
//! A lab `NAME` is a set of network namespaces named `twl-NAME.*`: an underlay with a bridge,
//! one per node (attached to the underlay, forwarding on), one per pod (wired by the real
//! `twill` CNI plugin called inside the node's namespace, exactly as a container runtime
//! calls it). Each pod runs a responder answering `NS/POD` on every port of the topology, or
//! its own command. State lives in `/run/twill/lab/NAME/`; `down` removes every object the
//! lab made, even after its processes were killed. Nothing touches the root namespace.
//!
//! - [`topology`]: the topology file.
//! - [`cluster`]: up, apply, delete, exec, down; split by concern: `underlay` (subnets, nodes'
//!   namespaces, relays, the rack's RIB), `agents` (twill-node per node), `datastore`, `pods`
//!   (CNI calls, workloads, apply/delete), `sync` (waiting for nodes and pods).
//! - [`probe`]: the pod × pod matrix.
//! - [`agent`]: the responder and the probe agent, run inside pods by `twillctl`.
//! - [`tor`]: the top-of-rack router (bird2, frr or gobgpd) in the underlay namespace.
//! - [`kube`]: a Kubernetes control plane (etcd, kube-apiserver, Twill's CRDs) in the
//!   underlay namespace, for labs on the Kubernetes datastore and for tests.
//! - [`netns`]: namespaces and processes, for the lab and for tests.

#![allow(clippy::disallowed_methods)] // The lab is an edge: it starts processes and waits.

pub mod agent;
pub mod cluster;
pub mod image;
pub mod kube;
pub mod netns;
pub mod probe;
pub mod state;
pub mod topology;
pub mod tor;

pub use cluster::{AgentAction, Lab, UpOptions};
