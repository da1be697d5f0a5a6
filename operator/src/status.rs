//! The status conditions every kind reports: `Ready`, `Progressing` and `Degraded`.
//!
//! A condition's `lastTransitionTime` says when its status last changed, so it is
//! kept when a reconcile finds the same status again; otherwise every reconcile would
//! rewrite the status and wake every watcher of the object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::error::BuildError;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

/// What a reconcile found, in the terms the conditions report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// The objects could not be built: nothing was applied.
    Invalid { reason: String, message: String },
    /// The objects are applied; `ready` of `desired` pods are ready.
    Applied { ready: i32, desired: i32 },
}

impl From<&BuildError> for Observation {
    fn from(e: &BuildError) -> Self {
        Observation::Invalid {
            reason: e.reason().into(),
            message: e.to_string(),
        }
    }
}

/// Sets `type_` in `conditions` to `status`. The transition time changes only when the
/// status does; reason, message and generation are always the new ones.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let new = |last_transition_time| Condition {
        type_: type_.into(),
        status: status.clone(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            let time = if existing.status == status {
                existing.last_transition_time.clone()
            } else {
                Time(now)
            };
            *existing = new(time);
        }
        None => conditions.push(new(Time(now))),
    }
}

/// The three conditions after a reconcile that found `observation`.
pub fn apply_observation(
    conditions: &mut Vec<Condition>,
    observation: &Observation,
    generation: Option<i64>,
    now: Timestamp,
) {
    match observation {
        Observation::Invalid { reason, message } => {
            set_condition(conditions, DEGRADED, true, reason, message, generation, now);
            set_condition(
                conditions,
                PROGRESSING,
                false,
                reason,
                "waiting for the problem to be fixed",
                generation,
                now,
            );
            set_condition(conditions, READY, false, reason, message, generation, now);
        }
        Observation::Applied { ready, desired } => {
            let all = ready >= desired;
            let message = format!("{ready} of {desired} pods ready");
            set_condition(
                conditions,
                DEGRADED,
                false,
                "AsExpected",
                "the spec is applied",
                generation,
                now,
            );
            if all {
                set_condition(
                    conditions,
                    PROGRESSING,
                    false,
                    "AllReady",
                    "every pod runs the current configuration",
                    generation,
                    now,
                );
                set_condition(
                    conditions, READY, true, "AllReady", &message, generation, now,
                );
            } else {
                set_condition(
                    conditions,
                    PROGRESSING,
                    true,
                    "RollingOut",
                    &message,
                    generation,
                    now,
                );
                set_condition(
                    conditions,
                    READY,
                    false,
                    "PodsNotReady",
                    &message,
                    generation,
                    now,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn the_transition_time_is_kept_while_the_status_stays() {
        let mut c = Vec::new();
        apply_observation(
            &mut c,
            &Observation::Applied {
                ready: 1,
                desired: 3,
            },
            Some(1),
            at(100),
        );
        apply_observation(
            &mut c,
            &Observation::Applied {
                ready: 2,
                desired: 3,
            },
            Some(1),
            at(200),
        );
        assert_eq!(find(&c, READY).last_transition_time, Time(at(100)));
        assert_eq!(find(&c, READY).message, "2 of 3 pods ready");
        apply_observation(
            &mut c,
            &Observation::Applied {
                ready: 3,
                desired: 3,
            },
            Some(2),
            at(300),
        );
        assert_eq!(find(&c, READY).status, "True");
        assert_eq!(find(&c, READY).last_transition_time, Time(at(300)));
        assert_eq!(find(&c, READY).observed_generation, Some(2));
        assert_eq!(find(&c, DEGRADED).last_transition_time, Time(at(100)));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_missing_reference_degrades() {
        let err = BuildError::MissingReference {
            object: "SipEdge/edge".into(),
            field: "spec.database.pgCluster".into(),
            kind: "PgCluster",
            name: "pg".into(),
            namespace: "voice".into(),
        };
        let mut c = Vec::new();
        apply_observation(&mut c, &Observation::from(&err), Some(1), at(100));
        let degraded = find(&c, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "MissingReference")
        );
        assert!(degraded.message.contains("spec.database.pgCluster"));
        assert_eq!(find(&c, READY).status, "False");
    }
}
