//! twill-ipip: Twill's encapsulation.
//!
//! This crate will own the IP-in-IP (tunl0) and VXLAN (`vxlan.twill`) devices, the
//! per-remote-node FDB, neighbour and route entries, the CrossSubnet decision and MTU
//! detection. Nothing is implemented yet; see the project's issues.
