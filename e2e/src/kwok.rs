//! KWOK: fake nodes and the stages that move pods on them through their life.
//!
//! Pods on fake nodes behave like this:
//! - every pod leaves `Pending` for `Running` with all containers ready
//!   (DaemonSet and Deployment pods stay there);
//! - pods with `restartPolicy: Never` or `OnFailure` (worker pods, build
//!   pods, Job pods) then finish: `Succeeded` with exit code 0 after
//!   [`COMPLETE_AFTER_MS`], or `Failed` with exit code 1 if annotated
//!   [`FAIL_ANNOTATION`]`: "true"`;
//! - pods annotated [`STUCK_ANNOTATION`]`: "true"` never start: they stay `Pending` with their
//!   container waiting in `ImagePullBackOff`, as a kubelet reports an image it cannot pull;
//! - pods being deleted are removed (no kubelet is there to confirm it).

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Annotation KWOK manages nodes by.
pub const NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Put `"true"` here on a run-to-completion pod to make it fail.
pub const FAIL_ANNOTATION: &str = "e2e.kmm.sigs.x-k8s.io/fail";
/// Put `"true"` here on a pod to keep it `Pending` for good (an image that cannot be pulled).
pub const STUCK_ANNOTATION: &str = "e2e.kmm.sigs.x-k8s.io/stuck";
/// Hub build pods (this label) run until the stand-in executor puts `"true"` in
/// [`BUILD_DONE_ANNOTATION`]; then they complete (or fail, with [`FAIL_ANNOTATION`]).
pub const BUILD_POD_LABEL: &str = "app.kubernetes.io/name=kmm-build";
/// See [`BUILD_POD_LABEL`].
pub const BUILD_DONE_ANNOTATION: &str = "e2e.kmm.sigs.x-k8s.io/build-done";
/// How long a run-to-completion pod stays `Running`.
pub const COMPLETE_AFTER_MS: u64 = 500;

/// A fake node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// `status.nodeInfo.kernelVersion`, e.g. `5.14.0-427.el9.x86_64`.
    pub kernel_version: String,
    pub os_image: String,
    pub architecture: String,
}

#[derive(Clone, Debug)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

impl NodeSpec {
    pub fn new(name: impl Into<String>, kernel_version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            kernel_version: kernel_version.into(),
            os_image: "Red Hat Enterprise Linux CoreOS (kwok)".into(),
            architecture: "amd64".into(),
        }
    }

    pub fn label(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.labels.insert(k.into(), v.into());
        self
    }

    pub fn taint(mut self, key: impl Into<String>, value: Option<&str>, effect: &str) -> Self {
        self.taints.push(Taint {
            key: key.into(),
            value: value.map(str::to_string),
            effect: effect.into(),
        });
        self
    }

    /// The Node object, status included (the API server keeps a node's
    /// status on create, as a kubelet's registration relies on).
    pub fn to_node(&self) -> Value {
        let mut labels = serde_json::Map::new();
        labels.insert("type".into(), json!("kwok"));
        labels.insert("kubernetes.io/hostname".into(), json!(self.name));
        labels.insert("kubernetes.io/os".into(), json!("linux"));
        labels.insert("kubernetes.io/arch".into(), json!(self.architecture));
        labels.insert("node-role.kubernetes.io/worker".into(), json!(""));
        for (k, v) in &self.labels {
            labels.insert(k.clone(), json!(v));
        }
        let taints: Vec<Value> = self
            .taints
            .iter()
            .map(|t| {
                let mut o = json!({"key": t.key, "effect": t.effect});
                if let Some(v) = &t.value {
                    o["value"] = json!(v);
                }
                o
            })
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {
                    NODE_ANNOTATION: "fake",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
            },
            "spec": { "taints": taints },
            "status": {
                "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                "nodeInfo": {
                    "architecture": self.architecture,
                    "bootID": format!("boot-{}", self.name),
                    "containerRuntimeVersion": "cri-o://1.35.0",
                    "kernelVersion": self.kernel_version,
                    "kubeProxyVersion": "",
                    "kubeletVersion": "v1.35.4",
                    "machineID": format!("machine-{}", self.name),
                    "operatingSystem": "linux",
                    "osImage": self.os_image,
                    "systemUUID": format!("uuid-{}", self.name),
                },
            },
        })
    }
}

/// The KWOK configuration file: options and our stages.
pub fn config_yaml() -> String {
    format!(
        r#"apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  manageAllNodes: false
  manageNodesWithAnnotationSelector: {NODE_ANNOTATION}=fake
  nodeLeaseDurationSeconds: 40
  nodeLeaseParallelism: 4
  nodePlayStageParallelism: 4
  podPlayStageParallelism: 4
  podsOnNodeSyncParallelism: 4
{STAGES}"#,
        STAGES = stages()
    )
}

fn stages() -> String {
    format!(
        r#"---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-initialize
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {{{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}}}
      conditions:
      {{{{ range NodeConditions }}}}
      - lastHeartbeatTime: {{{{ $now | Quote }}}}
        lastTransitionTime: {{{{ $lastTransitionTime | Quote }}}}
        message: {{{{ .message | Quote }}}}
        reason: {{{{ .reason | Quote }}}}
        status: {{{{ .status | Quote }}}}
        type: {{{{ .type  | Quote}}}}
      {{{{ end }}}}
      addresses:
      - address: {{{{ NodeIP | Quote }}}}
        type: InternalIP
      - address: {{{{ NodeName | Quote }}}}
        type: Hostname
      phase: Running
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-heartbeat-with-lease
spec:
  resourceRef:
    apiGroup: v1
    kind: Node
  selector:
    matchExpressions:
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['True']
  delay:
    durationMilliseconds: 600000
    jitterDurationMilliseconds: 610000
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      {{{{ $lastTransitionTime := or .metadata.creationTimestamp $now }}}}
      conditions:
      {{{{ range NodeConditions }}}}
      - lastHeartbeatTime: {{{{ $now | Quote }}}}
        lastTransitionTime: {{{{ $lastTransitionTime | Quote }}}}
        message: {{{{ .message | Quote }}}}
        reason: {{{{ .reason | Quote }}}}
        status: {{{{ .status | Quote }}}}
        type: {{{{ .type | Quote }}}}
      {{{{ end }}}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
    - key: '.metadata.annotations["{STUCK_ANNOTATION}"]'
      operator: 'NotIn'
      values: ['true']
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "True"
        type: Initialized
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "True"
        type: Ready
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "True"
        type: ContainersReady
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "True"
        type: PodScheduled
      {{{{ range .spec.readinessGates }}}}
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "True"
        type: {{{{ .conditionType | Quote }}}}
      {{{{ end }}}}
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      initContainerStatuses:
      {{{{ range .spec.initContainers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: true
        restartCount: 0
        state:
          terminated:
            exitCode: 0
            finishedAt: {{{{ $now | Quote }}}}
            reason: Completed
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      {{{{ $hostIPs := NodeIPsWith .spec.nodeName }}}}
      {{{{ with $hostIPs }}}}
      hostIP: {{{{ index . 0 | Quote }}}}
      hostIPs:
      {{{{ range . }}}}
      - ip: {{{{ . | Quote }}}}
      {{{{ end }}}}
      {{{{ end }}}}
      {{{{ $podIPs := PodIPsWith .spec.nodeName ( or .spec.hostNetwork false ) ( or .metadata.uid "" ) ( or .metadata.name "" ) ( or .metadata.namespace "" ) }}}}
      {{{{ with $podIPs }}}}
      podIP: {{{{ index . 0 | Quote }}}}
      podIPs:
      {{{{ range . }}}}
      - ip: {{{{ . | Quote }}}}
      {{{{ end }}}}
      {{{{ end }}}}
      phase: Running
      startTime: {{{{ $now | Quote }}}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-stuck
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Pending']
    - key: '.metadata.annotations["{STUCK_ANNOTATION}"]'
      operator: 'In'
      values: ['true']
    - key: '.status.containerStatuses'
      operator: 'DoesNotExist'
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "True"
        type: PodScheduled
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: Ready
        reason: ContainersNotReady
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        started: false
        restartCount: 0
        state:
          waiting:
            reason: ImagePullBackOff
            message: {{{{ printf "Back-off pulling image %q" .image | Quote }}}}
      {{{{ end }}}}
      phase: Pending
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.spec.restartPolicy'
      operator: 'In'
      values: ['Never', 'OnFailure']
    - key: '.metadata.annotations["{FAIL_ANNOTATION}"]'
      operator: 'NotIn'
      values: ['true']
    - key: '.metadata.labels["app.kubernetes.io/name"]'
      operator: 'NotIn'
      values: ['kmm-build']
  delay:
    durationMilliseconds: {COMPLETE_AFTER_MS}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: Ready
        reason: PodCompleted
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: ContainersReady
        reason: PodCompleted
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{{{ $now | Quote }}}}
            reason: Completed
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: Succeeded
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-fail
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.spec.restartPolicy'
      operator: 'In'
      values: ['Never', 'OnFailure']
    - key: '.metadata.annotations["{FAIL_ANNOTATION}"]'
      operator: 'In'
      values: ['true']
    - key: '.metadata.labels["app.kubernetes.io/name"]'
      operator: 'NotIn'
      values: ['kmm-build']
  delay:
    durationMilliseconds: {COMPLETE_AFTER_MS}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: Ready
        reason: PodFailed
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: ContainersReady
        reason: PodFailed
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 1
            finishedAt: {{{{ $now | Quote }}}}
            reason: Error
            message: failed on purpose ({FAIL_ANNOTATION})
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: Failed
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: build-pod-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.spec.restartPolicy'
      operator: 'In'
      values: ['Never', 'OnFailure']
    - key: '.metadata.annotations["{FAIL_ANNOTATION}"]'
      operator: 'NotIn'
      values: ['true']
    - key: '.metadata.labels["app.kubernetes.io/name"]'
      operator: 'In'
      values: ['kmm-build']
    - key: '.metadata.annotations["{BUILD_DONE_ANNOTATION}"]'
      operator: 'In'
      values: ['true']
  delay:
    durationMilliseconds: {COMPLETE_AFTER_MS}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: Ready
        reason: PodCompleted
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: ContainersReady
        reason: PodCompleted
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{{{ $now | Quote }}}}
            reason: Completed
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: Succeeded
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: build-pod-fail
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.spec.restartPolicy'
      operator: 'In'
      values: ['Never', 'OnFailure']
    - key: '.metadata.annotations["{FAIL_ANNOTATION}"]'
      operator: 'In'
      values: ['true']
    - key: '.metadata.labels["app.kubernetes.io/name"]'
      operator: 'In'
      values: ['kmm-build']
    - key: '.metadata.annotations["{BUILD_DONE_ANNOTATION}"]'
      operator: 'In'
      values: ['true']
  delay:
    durationMilliseconds: {COMPLETE_AFTER_MS}
  next:
    statusTemplate: |
      {{{{ $now := Now }}}}
      conditions:
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: Ready
        reason: PodFailed
      - lastTransitionTime: {{{{ $now | Quote }}}}
        status: "False"
        type: ContainersReady
        reason: PodFailed
      containerStatuses:
      {{{{ range .spec.containers }}}}
      - image: {{{{ .image | Quote }}}}
        name: {{{{ .name | Quote }}}}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 1
            finishedAt: {{{{ $now | Quote }}}}
            reason: Error
            message: failed on purpose ({FAIL_ANNOTATION})
            startedAt: {{{{ $now | Quote }}}}
      {{{{ end }}}}
      phase: Failed
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  next:
    delete: true
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_valid_yaml_with_our_stages() {
        let docs: Vec<Value> = serde_saphyr::from_multiple(&config_yaml()).unwrap();
        assert_eq!(docs[0]["kind"], "KwokConfiguration");
        let stages: Vec<&str> = docs[1..]
            .iter()
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            stages,
            [
                "node-initialize",
                "node-heartbeat-with-lease",
                "pod-ready",
                "pod-stuck",
                "pod-complete",
                "pod-fail",
                "build-pod-complete",
                "build-pod-fail",
                "pod-delete"
            ]
        );
        let stuck = &docs[4]["spec"]["selector"]["matchExpressions"];
        assert!(stuck.to_string().contains(STUCK_ANNOTATION));
        let complete = &docs[5]["spec"]["selector"]["matchExpressions"];
        assert!(complete.to_string().contains(FAIL_ANNOTATION));
    }

    #[test]
    fn node_carries_kernel_labels_and_taints() {
        let n = NodeSpec::new("n0", "6.1.0-1")
            .label("a", "b")
            .taint("k", Some("v"), "NoSchedule")
            .to_node();
        assert_eq!(n["status"]["nodeInfo"]["kernelVersion"], "6.1.0-1");
        assert_eq!(n["metadata"]["labels"]["a"], "b");
        assert_eq!(n["metadata"]["annotations"][NODE_ANNOTATION], "fake");
        assert_eq!(n["spec"]["taints"][0]["value"], "v");
        let _: k8s_openapi::api::core::v1::Node = serde_json::from_value(n).unwrap();
    }
}
