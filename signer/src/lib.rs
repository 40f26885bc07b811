//! The signer node: daemon, operator CLI and the cluster plumbing they share.
#![forbid(unsafe_code)]

pub mod ca;
pub mod p2p;
