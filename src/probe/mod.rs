//! Reachability probes sent natively from inside the source namespace.

pub mod firewall;
pub mod fwstate;
pub mod icmp;
pub mod outcome;
pub mod reach;
pub mod transport;
