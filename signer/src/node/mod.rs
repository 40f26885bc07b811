//! The node daemon's wiring: builds the infrastructure handle and each service's
//! context, the message router (every service's kinds and queue), starts the
//! background tasks and the API server. Nothing below this module knows it.

pub mod liveness;
mod notify;
mod run;
mod unseal;

pub use run::run;
