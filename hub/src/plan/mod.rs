//! The pure core of the hub: from observed state (the MCM, the ManagedClusters and their
//! kernel claims, what the image pipeline knows, the ManifestWorks) to desired objects (build
//! pods, ManifestWorks) and the MCM status. No I/O here.

pub mod build_pod;
pub mod images;
pub mod render;
pub mod status;
