//! The OCM objects we read and write keep every field through a read and a write, including the
//! ones our types do not model.

use serde_json::{Value, json};
use shared_api::ocm::{ClusterClaim, ManagedCluster, ManifestWork};

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> (T, Value) {
    let typed: T = serde_json::from_value(v.clone()).unwrap();
    let out = serde_json::to_value(&typed).unwrap();
    (typed, out)
}

#[test]
fn manifest_work_keeps_unmodelled_fields_and_reads_feedback() {
    let work = json!({
        "apiVersion": "work.open-cluster-management.io/v1",
        "kind": "ManifestWork",
        "metadata": {
            "name": "my-mcm",
            "namespace": "spoke-1",
            "labels": {"kmm.node.kubernetes.io/managedclustermodule.name": "my-mcm"},
            "resourceVersion": "42"
        },
        "spec": {
            "workload": {"manifests": [{
                "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
                "kind": "Module",
                "metadata": {"name": "my-mcm", "namespace": "kmm"},
                "spec": {"selector": {}, "futureField": {"x": 1}}
            }]},
            "deleteOption": {"propagationPolicy": "Foreground", "ttlSecondsAfterFinished": 5},
            "executor": {"subject": {"type": "ServiceAccount", "serviceAccount": {"name": "sa", "namespace": "ns"}}},
            "manifestConfigs": [{
                "resourceIdentifier": {"group": "kmm.sigs.x-k8s.io", "resource": "modules", "name": "my-mcm", "namespace": "kmm"},
                "feedbackRules": [{"type": "JSONPaths", "jsonPaths": [
                    {"name": "moduleLoader.available", "path": ".moduleLoader.availableNumber"}
                ]}],
                "updateStrategy": {"type": "ServerSideApply", "serverSideApply": {"force": true, "fieldManager": "work-agent"}},
                "conditionRules": [{"type": "WellKnownConditions", "condition": "Complete"}]
            }]
        },
        "status": {
            "conditions": [{
                "type": "Applied", "status": "True", "reason": "AppliedManifestWorkComplete",
                "message": "Apply manifest work complete", "lastTransitionTime": "2026-11-22T02:00:00Z",
                "observedGeneration": 1
            }],
            "resourceStatus": {"manifests": [{
                "resourceMeta": {"ordinal": 0, "group": "kmm.sigs.x-k8s.io", "version": "v1beta1", "kind": "Module",
                                 "resource": "modules", "name": "my-mcm", "namespace": "kmm"},
                "statusFeedback": {"values": [
                    {"name": "moduleLoader.available", "fieldValue": {"type": "Integer", "integer": 3}},
                    {"name": "note", "fieldValue": {"type": "String", "string": "x"}}
                ], "rawFeedbackJsonString": "{}"},
                "conditions": [{
                    "type": "StatusFeedbackSynced", "status": "True", "reason": "StatusFeedbackSynced",
                    "message": "", "lastTransitionTime": "2026-11-22T02:00:01Z"
                }]
            }]}
        }
    });
    let (typed, out): (ManifestWork, _) = round_trip(&work);
    assert_eq!(out, work);
    let status = typed.status.as_ref().unwrap();
    assert!(status.condition_true("Applied"));
    assert!(!status.condition_true("Available"));
    assert_eq!(
        status.feedback_integer("Module", "kmm", "my-mcm", "moduleLoader.available"),
        Some(3)
    );
    assert_eq!(status.feedback_integer("Module", "kmm", "my-mcm", "note"), None);
    assert_eq!(
        status.feedback_integer("Module", "other", "my-mcm", "moduleLoader.available"),
        None
    );
    assert_eq!(typed.spec.workload.manifests[0]["spec"]["futureField"]["x"], 1);
}

#[test]
fn managed_cluster_and_claims() {
    let cluster = json!({
        "apiVersion": "cluster.open-cluster-management.io/v1",
        "kind": "ManagedCluster",
        "metadata": {"name": "spoke-1", "labels": {"wants-my-mcm": "true"}},
        "spec": {
            "hubAcceptsClient": true,
            "leaseDurationSeconds": 60,
            "managedClusterClientConfigs": [{"url": "https://127.0.0.1:6443", "caBundle": "Zm9v"}]
        },
        "status": {
            "clusterClaims": [
                {"name": "id.k8s.io", "value": "spoke-1"},
                {"name": "kernel-versions.kmm.node.kubernetes.io", "value": "6.1.0-28-amd64\n5.14.0-284.el9.x86_64"}
            ],
            "version": {"kubernetes": "v1.35.0"},
            "allocatable": {"cpu": "4"}
        }
    });
    let (typed, out): (ManagedCluster, _) = round_trip(&cluster);
    assert_eq!(out, cluster);
    assert_eq!(typed.claim("id.k8s.io"), Some("spoke-1"));
    assert_eq!(
        typed.kernel_versions().unwrap(),
        vec!["5.14.0-284.el9.x86_64", "6.1.0-28-amd64"]
    );

    let mut bare = cluster.clone();
    bare["status"] = json!({"clusterClaims": [{"name": "id.k8s.io", "value": "x"}]});
    let (typed, _): (ManagedCluster, _) = round_trip(&bare);
    assert_eq!(typed.kernel_versions(), None);

    let claim = json!({
        "apiVersion": "cluster.open-cluster-management.io/v1alpha1",
        "kind": "ClusterClaim",
        "metadata": {"name": "kernel-versions.kmm.node.kubernetes.io", "labels": {"open-cluster-management.io/hub-managed": "false"}},
        "spec": {"value": "6.1.0-28-amd64"}
    });
    let (typed, out): (ClusterClaim, _) = round_trip(&claim);
    assert_eq!(out, claim);
    assert_eq!(typed.spec.value, "6.1.0-28-amd64");
}
