//! The spoke crate: `kmm-spoke` (the controller) and `kmm-worker` (the program in worker pods).

pub mod controller;
pub mod metrics;
pub mod plan;
pub mod trim;
pub mod worker;
