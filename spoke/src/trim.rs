//! What the caches keep of each object: the fields the controllers read, not the rest. Applied
//! to every watched object before it reaches a store, so memory follows the number of objects,
//! not the size of what other controllers write into them (`managedFields`, a Node's image
//! list, a pod's full spec).

use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Pod, PodSpec};
use kube::Resource;

/// Drops `metadata.managedFields`, which no controller here reads.
pub fn managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// A Node as selection, the node plan and the kernel claim read it: metadata, taints and
/// `unschedulable`, and `status.nodeInfo` (kernel and boot ID).
pub fn node(n: &mut Node) {
    managed_fields(n);
    n.spec = n.spec.take().map(|s| NodeSpec {
        taints: s.taints,
        unschedulable: s.unschedulable,
        ..Default::default()
    });
    n.status = n.status.take().map(|s| NodeStatus {
        node_info: s.node_info,
        ..Default::default()
    });
}

/// A worker or device plugin pod as the node controller reads it: metadata (labels and
/// annotations carry what the worker pod does), the node it is on, and its status.
pub fn pod(p: &mut Pod) {
    managed_fields(p);
    p.spec = p.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        ..Default::default()
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerImage, NodeSystemInfo, PodStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn a_node_keeps_what_selection_reads() {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.labels = Some([("a".to_string(), "b".to_string())].into());
        n.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "k".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            unschedulable: Some(true),
            pod_cidr: Some("10.0.0.0/24".into()),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            node_info: Some(NodeSystemInfo {
                kernel_version: "6.1.0-28-amd64".into(),
                boot_id: "b1".into(),
                ..Default::default()
            }),
            images: Some(vec![ContainerImage::default(); 50]),
            ..Default::default()
        });
        let view_before = crate::plan::selection::NodeView::from_node(&n);
        node(&mut n);
        assert_eq!(crate::plan::selection::NodeView::from_node(&n), view_before);
        assert!(n.metadata.managed_fields.is_none());
        assert_eq!(n.status.as_ref().unwrap().images, None);
        assert_eq!(n.spec.as_ref().unwrap().pod_cidr, None);
        assert_eq!(n.status.as_ref().unwrap().node_info.as_ref().unwrap().boot_id, "b1");
    }

    #[test]
    fn a_pod_keeps_its_node_metadata_and_status() {
        let mut p = Pod::default();
        p.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        p.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        p.spec = Some(PodSpec {
            node_name: Some("n1".into()),
            containers: vec![Container::default(); 2],
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        pod(&mut p);
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert!(p.spec.as_ref().unwrap().containers.is_empty());
        assert!(p.metadata.managed_fields.is_none());
        assert!(p.metadata.labels.is_some());
        assert_eq!(p.status.unwrap().phase.as_deref(), Some("Succeeded"));
    }
}
