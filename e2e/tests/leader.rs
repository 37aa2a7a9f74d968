//! Leader election between two real `kmm-spoke` processes on one real API server.
//!
//! The leader is frozen (SIGSTOP: a stalled VM, a long GC pause, a hung node) while a Module is
//! created. The other replica must wait for the lease to expire, take it and do the work; the
//! old leader, thawed, must notice that its term ended and stop without acting on what it
//! missed, so two replicas never reconcile at once.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::KubeCluster;
use e2e::kwok::NodeSpec;
use e2e::testkit::{SpokeProcess as Replica, run_on_own_cluster};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use libtest_mimic::{Arguments, Failed, Trial};
use nix::sys::signal::{Signal, kill};
use serde_json::json;
use shared_api::module::Module;
use shared_api::nmc::NodeModulesConfig;

const TIMEOUT: Duration = Duration::from_secs(90);
const K1: &str = "6.1.0-28-amd64";
const LEASE: &str = "kmm.sigs.x-k8s.io";
/// Said by a replica whose term has ended when an event reaches a controller.
const TERM_ENDED: &str = "this replica's leader term has ended";

async fn holder(cluster: &KubeCluster) -> Result<Option<String>> {
    let lease = Api::<Lease>::namespaced(cluster.client.clone(), "kmm-system")
        .get_opt(LEASE)
        .await?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

async fn wait_holder(cluster: &KubeCluster, who: &str) -> Result<()> {
    cluster
        .wait(&format!("{who} holds the lease"), TIMEOUT, || async {
            Ok((holder(cluster).await?.as_deref() == Some(who)).then_some(()))
        })
        .await
}

async fn a_frozen_leader_is_replaced_and_does_not_act_when_it_wakes(cluster: &KubeCluster, dir: &Path) -> Result<()> {
    cluster
        .add_nodes(&[NodeSpec::new("lead-a", K1).label("e2e/test", "t-leader")])
        .await?;
    let mut a = Replica::start(cluster, dir, "spoke-a")?;
    wait_holder(cluster, "spoke-a").await?;
    let b = Replica::start(cluster, dir, "spoke-b")?;
    cluster
        .wait("spoke-b waits for the lease", TIMEOUT, || async {
            Ok(b.log().contains("waiting for the leader lease").then_some(()))
        })
        .await?;

    // The leader stalls. Meanwhile a Module is created: the work it would have done.
    kill(a.pid()?, Signal::SIGSTOP)?;
    let ns = "t-leader";
    cluster.ensure_namespace(ns).await?;
    let module = json!({
        "apiVersion": "kmm.sigs.x-k8s.io/v1beta1",
        "kind": "Module",
        "metadata": {"name": "m", "namespace": ns},
        "spec": {
            "selector": {"e2e/test": "t-leader"},
            "moduleLoader": {"container": {
                "modprobe": {"moduleName": "kmm_ci_a"},
                "kernelMappings": [{"literal": K1, "containerImage": "registry.e2e.invalid/kmm-ci-a:1"}]
            }}
        }
    });
    Api::<Module>::namespaced(cluster.client.clone(), ns)
        .patch("m", &PatchParams::apply("e2e").force(), &Patch::Apply(module))
        .await?;
    ensure!(
        holder(cluster).await?.as_deref() == Some("spoke-a"),
        "the lease moved at once, before it expired"
    );

    // The other replica takes over once the lease expired, and loads the module.
    wait_holder(cluster, "spoke-b").await?;
    cluster
        .wait("spoke-b loads the module", TIMEOUT, || async {
            let nmc = Api::<NodeModulesConfig>::all(cluster.client.clone())
                .get_opt("lead-a")
                .await?;
            Ok(nmc
                .and_then(|n| n.status)
                .is_some_and(|s| s.modules.iter().any(|m| m.name == "m"))
                .then_some(()))
        })
        .await?;

    // The old leader wakes: it stops, and does nothing with the events it missed.
    let before = a.log().len();
    kill(a.pid()?, Signal::SIGCONT)?;
    let status = tokio::time::timeout(TIMEOUT, a.child.wait())
        .await
        .context("the thawed leader kept running")??;
    let after = a.log();
    let woke = after.get(before..).unwrap_or_default();
    ensure!(
        woke.contains("stopping") && woke.contains("lost the leader lease"),
        "the thawed leader did not say it lost the lease (exit {status}):\n{woke}"
    );
    for acted in [
        "worker pod created",
        "finalizer removed",
        "reconciling object",
        "published the kernel-versions ClusterClaim",
    ] {
        let acting: Vec<&str> = woke
            .lines()
            .filter(|l| l.contains(acted) && !l.contains(TERM_ENDED))
            .collect();
        ensure!(acting.is_empty(), "the thawed leader acted after its term: {acting:#?}");
    }
    ensure!(
        holder(cluster).await?.as_deref() == Some("spoke-b"),
        "the lease left spoke-b"
    );
    ensure!(
        !b.log().contains(TERM_ENDED) && !b.log().contains("lost the leader lease"),
        "spoke-b lost its term:\n{}",
        b.log()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Arguments::from_args();
    let dir = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/kmm-e2e/leader-tests"));
    let trial = Trial::test(
        "a_frozen_leader_is_replaced_and_does_not_act_when_it_wakes",
        move || {
            run_on_own_cluster("leader", &dir, Duration::from_secs(240), |c, d| {
                Box::pin(a_frozen_leader_is_replaced_and_does_not_act_when_it_wakes(c, d))
            })
            .map_err(Failed::from)
        },
    );
    libtest_mimic::run(&args, vec![trial]).exit_code()
}
