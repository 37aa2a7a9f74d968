//! Pure planning for `kmm-spoke`: from observed cluster state to desired objects and actions.
//! No I/O here; the controllers read caches, call these functions and apply the results.

pub mod device_plugin;
pub mod module_plan;
pub mod node_plan;
pub mod node_writes;
pub mod selection;
pub mod worker_pod;

/// The first `bytes` bytes of the SHA-256 of `data`, in lowercase hex: the short stable hashes
/// in object names, field managers and spec annotations.
pub fn short_sha256(data: &[u8], bytes: usize) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A Module's identity on a node: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleKey {
    /// Namespace of the Module.
    pub namespace: String,
    /// Name of the Module.
    pub name: String,
}

impl ModuleKey {
    /// A key from parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ModuleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
