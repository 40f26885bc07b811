//! The signer node: daemon, operator CLI and the cluster plumbing they share.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod ca;
pub mod chain;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod coord;
pub mod dkg;
pub mod fault;
pub mod node;
pub mod p2p;
pub mod presign;
pub mod session;
pub mod store;
pub mod tls;
pub mod tx;
pub mod vote;
pub mod wallet;
