//! What `kmm-hub` and `kmm-spoke` share at run time: the configuration file, leader election,
//! the health, metrics and admission webhook servers, events, logging, shutdown on signals, and
//! registry clients.

pub mod admission;
pub mod config;
pub mod events;
pub mod leader;
pub mod process;
pub mod registry;
pub mod serve;
pub mod tls;
pub mod webhook;
pub mod webhook_certs;
