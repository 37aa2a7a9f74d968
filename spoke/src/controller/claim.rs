//! Managed mode: publishes the cluster's kernel versions as the ClusterClaim
//! `kernel-versions.kmm.node.kubernetes.io`, which OCM's registration agent copies into the
//! hub's ManagedCluster status. The value is the sorted, distinct kernels, one per line.

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use serde_json::json;
use shared_api::kernel;
use shared_api::ocm::{ClusterClaim, KERNEL_VERSIONS_CLAIM};

use super::{Error, kube_err};

/// Field manager of the claim.
pub const MANAGER: &str = "kmm-spoke-claim";

/// The claim's value for the nodes in `nodes`.
pub fn claim_value(nodes: &Store<Node>) -> String {
    let state = nodes.state();
    kernel::claim_value(
        state
            .iter()
            .filter_map(|n| n.status.as_ref()?.node_info.as_ref())
            .map(|i| i.kernel_version.as_str()),
    )
}

/// Applies the claim with `value`.
pub async fn publish(client: &kube::Client, value: &str) -> Result<(), Error> {
    let api: Api<ClusterClaim> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "cluster.open-cluster-management.io/v1alpha1",
        "kind": "ClusterClaim",
        "metadata": {
            "name": KERNEL_VERSIONS_CLAIM,
            "labels": { "app.kubernetes.io/managed-by": "kmm-spoke" },
        },
        "spec": { "value": value },
    });
    api.patch(
        KERNEL_VERSIONS_CLAIM,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(kube_err(format!("publishing ClusterClaim {KERNEL_VERSIONS_CLAIM}")))?;
    Ok(())
}
