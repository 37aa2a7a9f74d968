//! `kmm-hub` as a library: the parts the binary, the tests and the benchmarks share.

pub mod plan;
pub mod sign;
