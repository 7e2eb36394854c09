//! twill-cni: Twill's CNI plugin `twill` (CNI spec 1.0.0, also answering 0.3.1/0.4.0 callers).
//!
//! This crate will own ADD, DEL, CHECK, GC and STATUS: the pod's veth pair, its addresses
//! from `twill-ipam`, its host routes and its WorkloadEndpoint in the datastore. Nothing is
//! implemented yet; see the project's issues.
