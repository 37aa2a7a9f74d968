//! `kmm-hub` as a library: the parts the binary, the tests and the benchmarks share.

pub mod controller;
pub mod metrics;
pub mod pipeline;
pub mod plan;
pub mod registry;
pub mod sign;
