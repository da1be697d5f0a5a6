//! Leader election on a `coordination.k8s.io` Lease, so that of several operator
//! replicas exactly one runs the controllers and the others wait to take over.
//!
//! The holder renews the Lease every `renew_every`; a replica takes the Lease over
//! only when its `renewTime` is older than `leaseDurationSeconds`. Every write is a
//! replace carrying the `resourceVersion` that was read, so of two replicas that try at
//! once the API server lets one win. A holder that could not renew for
//! `lease_duration - renew_every` stops acting (the process exits) before any other
//! replica may consider the Lease expired.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};

/// Where the Lease is and who this replica is.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in `holderIdentity` (the pod's name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaseSettings {
    /// The Lease `sipstack-operator` held for 15 s and renewed every 5 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: "sipstack-operator".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

/// Why this replica is no longer the leader.
#[derive(Debug, thiserror::Error)]
pub enum LeadershipLost {
    #[error("Lease {namespace}/{name} is held by {holder:?} now")]
    TakenOver {
        namespace: String,
        name: String,
        holder: Option<String>,
    },
    #[error("Lease {namespace}/{name} could not be renewed for {elapsed:?}: {last_error}")]
    NotRenewed {
        namespace: String,
        name: String,
        elapsed: Duration,
        last_error: String,
    },
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    /// One try: takes the Lease when it is free or expired, renews it when held.
    /// `Ok(true)` while this replica holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let s = &self.settings;
        let duration_seconds = i32::try_from(s.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(s.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(s.identity.as_str());
        if !mine && !expired(&spec, now) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(s.identity.clone()),
            lease_duration_seconds: Some(duration_seconds),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if mine { transitions } else { transitions + 1 }),
            ..spec
        });
        // replace carries the resourceVersion read above: a concurrent writer wins or loses as a whole
        match self
            .api
            .replace(&s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.settings.identity, lease = %self.settings.name, "became the leader");
                    return;
                }
                Ok(false) => tracing::debug!("another replica leads; waiting"),
                Err(error) => tracing::warn!(%error, "cannot read or write the leader Lease"),
            }
            tokio::time::sleep(self.settings.renew_every).await;
        }
    }

    /// Renews the Lease until that fails for too long or another replica holds it;
    /// returns why. The caller must stop acting at once.
    pub async fn hold(&self) -> LeadershipLost {
        let s = &self.settings;
        let deadline = s.lease_duration.saturating_sub(s.renew_every);
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(s.renew_every).await;
            let attempt = Instant::now();
            let last_error =
                match tokio::time::timeout(s.renew_every, self.try_acquire_or_renew()).await {
                    Ok(Ok(true)) => {
                        last_renewed = attempt;
                        continue;
                    }
                    Ok(Ok(false)) => {
                        let holder = self
                            .api
                            .get_opt(&s.name)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|l| l.spec?.holder_identity);
                        return LeadershipLost::TakenOver {
                            namespace: s.namespace.clone(),
                            name: s.name.clone(),
                            holder,
                        };
                    }
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "no answer from the API server".to_string(),
                };
            let elapsed = last_renewed.elapsed();
            tracing::warn!(error = %last_error, ?elapsed, "cannot renew the leader Lease");
            if elapsed >= deadline {
                return LeadershipLost::NotRenewed {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    elapsed,
                    last_error,
                };
            }
        }
    }

    /// Gives the Lease up (on shutdown), so that another replica takes over at once
    /// rather than after the Lease expires.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let s = &self.settings;
        let Some(mut lease) = self.api.get_opt(&s.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A Lease without a holder, or whose holder has not renewed it in time.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref().is_none_or(str::is_empty) {
        return true;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed.0.checked_add(duration).is_ok_and(|end| end < now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_at: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_at).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_or_without_a_holder() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert!(!expired(&spec(Some("a"), 990), now));
        assert!(expired(&spec(Some("a"), 980), now));
        assert!(expired(&spec(None, 999), now));
        assert!(expired(&spec(Some(""), 999), now));
    }
}
