//! The spoke crate: `kmm-spoke` (the controller) and `kmm-worker` (the program in worker pods).

pub mod worker;
