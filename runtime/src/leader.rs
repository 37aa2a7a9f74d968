//! Leader election with a `coordination.k8s.io/v1` Lease, so only one replica reconciles.
//! Optimistic concurrency on the Lease's resourceVersion decides races; a replica that cannot
//! renew within the lease duration stops, as controller-runtime's managers do.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};

/// Lease settings.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease (upstream: `kmm.sigs.x-k8s.io`).
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// How long the holder keeps trying to renew before it gives up and stops. Shorter than
    /// `duration`, so a holder that cannot renew stops reconciling before another replica may
    /// take the lease (controller-runtime: 15 s lease, 10 s renew deadline, 2 s retry period).
    pub renew_deadline: Duration,
    /// How often the holder renews, and a candidate retries.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// controller-runtime's defaults: a 15 s lease, renewed every 2 s, given up after 10 s.
    pub fn with_defaults(namespace: String, name: String, identity: String) -> Self {
        Self {
            namespace,
            name,
            identity,
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
        }
    }
}

/// Why the lease could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The API refused or failed.
    #[error("lease {0}: {1}")]
    Api(String, #[source] kube::Error),
    /// We held the lease and could not renew it in time.
    #[error("lost the leader lease {0}: not renewed within {1:?}")]
    Lost(String, Duration),
}

/// Whether a lease held by someone else has expired at `now`.
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.0 + SignedDuration::from_secs(secs) < now
}

/// One attempt to take or keep the lease; `Ok(true)` when we hold it afterwards.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, LeaseError> {
    let now = Timestamp::now();
    let err = |e| LeaseError::Api(format!("{}/{}", cfg.namespace, cfg.name), e);
    let mine = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs() as i32),
        acquire_time: acquired.or(Some(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    match api.get_opt(&cfg.name).await.map_err(err)? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    ..Default::default()
                },
                spec: Some(mine(0, None)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(err(e)),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.as_deref();
            let transitions = spec.lease_transitions.unwrap_or(0);
            let new_spec = if holder == Some(cfg.identity.as_str()) {
                mine(transitions, spec.acquire_time.clone())
            } else if holder.is_none_or(str::is_empty) || expired(&spec, now) {
                mine(transitions + 1, None)
            } else {
                return Ok(false);
            };
            lease.spec = Some(new_spec);
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(err(e)),
            }
        }
    }
}

/// Waits until this replica holds the lease.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), LeaseError> {
    loop {
        match try_acquire(api, cfg).await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the lease until renewal fails for the renew deadline, or another replica holds it;
/// returns why it stopped.
pub async fn hold(api: &Api<Lease>, cfg: &LeaseConfig) -> LeaseError {
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_acquire(api, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => return LeaseError::Lost(cfg.name.clone(), cfg.duration),
            Err(e) => tracing::warn!(error = %e, "renewing the leader lease"),
        }
        if last_ok.elapsed() > cfg.renew_deadline {
            return LeaseError::Lost(cfg.name.clone(), cfg.renew_deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_uses_the_renew_time_and_duration() {
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(t0)),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(!expired(&spec, t0 + SignedDuration::from_secs(15)));
        assert!(expired(&spec, t0 + SignedDuration::from_secs(16)));
        assert!(expired(&LeaseSpec::default(), t0), "a lease never renewed is free");
    }
}
