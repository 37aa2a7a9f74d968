//! Shared API of kmm-hub and kmm-spoke: the CRD types (drop-in compatible with upstream Kernel
//! Module Management), typed views of the Open Cluster Management objects we use, and the pure
//! logic both sides need: kernel versions, kernel-mapping resolution, variable substitution,
//! node label keys, spec validation and registry credentials from pull secrets. Nothing here does
//! I/O except [`tool`], the command-line glue of the binaries.

pub mod conditions;
pub mod crds;
pub mod envsubst;
pub mod goregex;
pub mod image;
pub mod kernel;
pub mod labels;
pub mod mapping;
pub mod mcm;
pub mod module;
pub mod nmc;
pub mod ocm;
pub mod optional;
pub mod preflight;
pub mod recipe;
pub mod registry_auth;
pub mod tool;
pub mod validation;
pub mod vars;
