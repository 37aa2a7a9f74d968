//! What `kmm-hub` and `kmm-spoke` share at run time: leader election, the health and metrics
//! endpoints, logging, shutdown on signals, and registry clients.

pub mod leader;
pub mod process;
pub mod registry;
pub mod serve;
