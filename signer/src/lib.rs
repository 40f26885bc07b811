//! The signer node: daemon, operator CLI and the cluster plumbing they share.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod ca;
pub mod chain;
pub mod cli;
pub mod compliance;
pub mod config;
pub mod coord;
pub mod crash;
pub mod custody;
pub mod dkg;
pub mod fault;
pub mod hwi;
pub mod infra;
pub mod net;
pub mod node;
pub mod p2p;
pub mod presign;
pub mod router;
pub mod session;
pub mod store;
pub mod tls;
pub mod tx;
