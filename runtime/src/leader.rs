//! Leader election with a `coordination.k8s.io/v1` Lease, so only one replica reconciles.
//! Optimistic concurrency on the Lease's resourceVersion decides races; a replica that cannot
//! renew within the lease duration stops, as controller-runtime's managers do.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

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

/// Until when this replica may act as the leader, shared by the lease loop and the
/// controllers. Each successful renewal extends it to the renewal's start plus the renew
/// deadline, which ends before any other replica can see the lease as expired: a leader that
/// stalls (a frozen process, a hung connection) finds on waking that it may no longer write,
/// before it has looked at a single event.
#[derive(Debug, Clone)]
pub struct Leadership(Arc<Mutex<Option<Instant>>>);

impl Leadership {
    /// For a replica that holds no lease yet (or, with [`Leadership::always`], needs none).
    pub fn pending() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    /// Leader election off: always allowed to act.
    pub fn always() -> Self {
        Self(Arc::new(Mutex::new(Some(
            Instant::now() + Duration::from_secs(100 * 365 * 86_400),
        ))))
    }

    /// Whether this replica may act now.
    pub fn is_valid(&self) -> bool {
        self.valid_until().is_some_and(|t| Instant::now() < t)
    }

    /// When the current term ends, if there is one.
    pub fn valid_until(&self) -> Option<Instant> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn extend(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    fn end(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// What a candidate last saw of a lease held by someone else, and when by its own monotonic
/// clock. As client-go does, a lease expires `leaseDurationSeconds` after it was last *seen
/// to change*, not after its `renewTime`: a candidate whose wall clock runs ahead of the
/// holder's never takes a lease that is still being renewed.
#[derive(Debug, Default)]
pub struct Observed {
    record: Option<(Option<String>, Option<MicroTime>, Option<i32>)>,
    at: Option<Instant>,
}

impl Observed {
    /// Notes the lease's current record at `now`; returns whether it has expired, i.e. not
    /// changed for its duration.
    pub fn expired(&mut self, spec: &LeaseSpec, now: Instant) -> bool {
        let record = Some((
            spec.holder_identity.clone(),
            spec.renew_time.clone(),
            spec.lease_transitions,
        ));
        if self.record != record || self.at.is_none() {
            self.record = record;
            self.at = Some(now);
        }
        let secs = u64::try_from(spec.lease_duration_seconds.unwrap_or(15)).unwrap_or(15);
        self.at
            .is_some_and(|at| now.saturating_duration_since(at) > Duration::from_secs(secs))
    }
}

/// Whether a lease held by someone else has expired at `now` by its own timestamps (the renew
/// time plus the duration). Used only for a lease never renewed; otherwise see [`Observed`].
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renewed.0 + SignedDuration::from_secs(secs) < now
}

/// One attempt to take or keep the lease; `Ok(true)` when we hold it afterwards.
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig, observed: &mut Observed) -> Result<bool, LeaseError> {
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
            } else if holder.is_none_or(str::is_empty)
                || spec.renew_time.is_none() && expired(&spec, now)
                || observed.expired(&spec, Instant::now())
            {
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

/// Waits until this replica holds the lease, and starts its term in `leadership`.
pub async fn acquire(api: &Api<Lease>, cfg: &LeaseConfig, leadership: &Leadership) -> Result<(), LeaseError> {
    let mut observed = Observed::default();
    loop {
        let started = Instant::now();
        match tokio::time::timeout(cfg.renew_deadline, try_acquire(api, cfg, &mut observed)).await {
            Ok(Ok(true)) => {
                leadership.extend(started + cfg.renew_deadline);
                return Ok(());
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "leader election"),
            Err(_) => tracing::warn!(lease = %cfg.name, "leader election: the API server did not answer in time"),
        }
        tokio::time::sleep(cfg.renew_every).await;
    }
}

/// Renews the lease until renewal fails for the renew deadline, or another replica holds it;
/// ends the term in `leadership` and returns why it stopped. Each attempt is cut off at the
/// deadline, so a hung connection cannot keep a replica acting past it.
pub async fn hold(api: &Api<Lease>, cfg: &LeaseConfig, leadership: &Leadership) -> LeaseError {
    let mut observed = Observed::default();
    let err = loop {
        tokio::time::sleep(cfg.renew_every).await;
        let until = leadership.valid_until().unwrap_or_else(Instant::now);
        let started = Instant::now();
        let left = until.saturating_duration_since(started);
        if left.is_zero() {
            // Woken after the deadline (the process was stalled): another replica may hold the
            // lease by now, so no attempt to renew it is made.
            tracing::warn!(lease = %cfg.name, "the leader term ended while this replica was stalled");
            break LeaseError::Lost(cfg.name.clone(), cfg.renew_deadline);
        }
        match tokio::time::timeout(left, try_acquire(api, cfg, &mut observed)).await {
            Ok(Ok(true)) => leadership.extend(started + cfg.renew_deadline),
            Ok(Ok(false)) => break LeaseError::Lost(cfg.name.clone(), cfg.duration),
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the leader lease"),
            Err(_) => {
                tracing::warn!(lease = %cfg.name, "renewing the leader lease: the API server did not answer in time")
            }
        }
        if !leadership.is_valid() {
            break LeaseError::Lost(cfg.name.clone(), cfg.renew_deadline);
        }
    };
    leadership.end();
    err
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

    #[test]
    fn a_lease_expires_a_duration_after_it_was_last_seen_to_change() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let spec = |renewed: i64| LeaseSpec {
            holder_identity: Some("other".into()),
            // Far in the past by this replica's clock: only changes count, not the timestamps.
            renew_time: Some(MicroTime(Timestamp::from_second(1_000_000_000 + renewed).unwrap())),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        let mut seen = Observed::default();
        assert!(!seen.expired(&spec(0), at(0)), "first sight starts the clock");
        assert!(!seen.expired(&spec(0), at(15)));
        // Renewed: the clock starts again.
        assert!(!seen.expired(&spec(2), at(14)));
        assert!(!seen.expired(&spec(2), at(29)));
        assert!(seen.expired(&spec(2), at(30)));
    }

    #[test]
    fn a_term_ends_at_its_deadline() {
        let l = Leadership::pending();
        assert!(!l.is_valid());
        l.extend(Instant::now() + Duration::from_secs(10));
        assert!(l.is_valid());
        // A leader that wakes after its deadline (renewed 11 s ago, deadline 10 s).
        l.extend(Instant::now() - Duration::from_secs(1));
        assert!(!l.is_valid(), "a stalled leader may not act after its deadline");
        l.end();
        assert!(l.valid_until().is_none());
        assert!(Leadership::always().is_valid());
    }
}
