//! The status of a resource after a reconcile: `observedGeneration`, the conditions
//! (`Ready`, `Progressing`, `Degraded`) and the kind's own fields, patched only when
//! they changed; and an Event when the resource becomes degraded or recovers, so that
//! `kubectl describe` tells what is wrong and what to do.
//!
//! [`sync_and_report`] is the step every controller's reconcile ends with: the
//! children applied, the outcome published, the next look scheduled.

use std::fmt::Debug;
use std::future::Future;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::schemars::{JsonSchema, SchemaGenerator};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use sipstack_crds::{CommonStatus, MediaPoolStatus, PgClusterStatus, SipEdgeStatus};

use crate::controller::apply::{self, ChildKind, Owner, Synced};
use crate::controller::context::Context;
use crate::controller::error::ReconcileError;
use crate::error::BuildError;
use crate::object::Object;
use crate::status::{apply_observation, Observation, DEGRADED};

/// The typed status of a kind the controllers report on (from `sipstack-crds`).
pub trait KindStatus: Serialize + JsonSchema + Default + Clone {
    /// The part every kind shares: `observedGeneration` and the conditions.
    fn common(&self) -> &CommonStatus;
    fn common_mut(&mut self) -> &mut CommonStatus;
}

macro_rules! kind_status {
    ($($status:ty),*) => {$(
        impl KindStatus for $status {
            fn common(&self) -> &CommonStatus {
                &self.common
            }
            fn common_mut(&mut self) -> &mut CommonStatus {
                &mut self.common
            }
        }
    )*};
}

kind_status!(SipEdgeStatus, MediaPoolStatus, PgClusterStatus);

/// A resource of a kind whose status the controllers write.
pub trait Reported:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + HasStatus<Status: KindStatus>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}

impl<K> Reported for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + HasStatus<Status: KindStatus>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

/// What a reconcile found in the applied children, for the status and the next look.
#[derive(Debug)]
pub struct Report<S> {
    /// Pods ready, of `desired`: the conditions, and how soon to look again.
    pub ready: i32,
    pub desired: i32,
    /// The kind's own fields (`readyReplicas`, …); [`publish`] fills in the common
    /// part. A field left unset is removed from the status, unless `keep` sets it.
    pub status: S,
    /// The fields that `keep` sets (to any value) are left as they are: this reconcile
    /// does not know them (a MediaPool's members while a database fails).
    pub keep: S,
    /// Look again within the pending interval even when everything is ready: a change
    /// whose effect only the next reconcile sees.
    pub recheck_soon: bool,
    /// A failure that left the rest of the status current: published with it, then
    /// returned, so that the object is retried with its backoff.
    pub failure: Option<ReconcileError>,
}

impl<S: KindStatus> Report<S> {
    pub fn new(ready: i32, desired: i32, status: S) -> Self {
        Report {
            ready,
            desired,
            status,
            keep: S::default(),
            recheck_soon: false,
            failure: None,
        }
    }
}

/// The reconcile step every controller shares: applies `desired` as the children of
/// `obj` (of the kinds `kinds`), then publishes what `report` finds in them and looks
/// again after the ready or the pending interval. A spec that cannot be built and a
/// child the API server refuses are published as `Degraded` instead, and looked at
/// again after the degraded interval.
pub async fn sync_and_report<K, F, Fut>(
    ctx: &Context,
    obj: &K,
    namespace: &str,
    kinds: &[ChildKind],
    desired: Result<Vec<Object>, BuildError>,
    report: F,
) -> Result<(Action, &'static str), ReconcileError>
where
    K: Reported,
    F: FnOnce(Synced) -> Fut,
    Fut: Future<Output = Result<Report<K::Status>, ReconcileError>>,
{
    let desired = match desired {
        Ok(objects) => objects,
        Err(error) => {
            tracing::warn!(%error, "the spec cannot be applied");
            return degrade(ctx, obj, Observation::from(&error)).await;
        }
    };
    let owner = Owner::of(obj, namespace);
    let synced = match apply::sync_children(ctx, &owner, kinds, desired).await {
        Ok(synced) => synced,
        Err(ReconcileError::Rejected { object, message }) => {
            let observation = rejected_observation(&owner.reference, &object, &message);
            return degrade(ctx, obj, observation).await;
        }
        Err(e) => return Err(e),
    };
    let report = report(synced).await?;
    publish(ctx, obj, &report).await?;
    if let Some(failure) = report.failure {
        return Err(failure);
    }
    let mut requeue = if report.ready >= report.desired {
        ctx.timing.ready
    } else {
        ctx.timing.pending
    };
    if report.recheck_soon {
        requeue = requeue.min(ctx.timing.pending);
    }
    Ok((Action::requeue(requeue), "applied"))
}

/// Publishes `report`; whether the status was written.
pub async fn publish<K: Reported>(
    ctx: &Context,
    obj: &K,
    report: &Report<K::Status>,
) -> Result<bool, ReconcileError> {
    let serialize = serialize_error(obj);
    let kept = serde_json::to_value(&report.keep).map_err(serialize)?;
    let owned: Vec<String> = field_names::<K::Status>()
        .into_iter()
        .filter(|name| kept.get(name).is_none())
        .collect();
    let observation = Observation::Applied {
        ready: report.ready,
        desired: report.desired,
    };
    write_status(ctx, obj, &observation, report.status.clone(), &owned).await
}

/// Publishes `observation` (a spec that cannot work, or a child the API server
/// refused) and looks at the object again after the degraded interval. The kind's own
/// fields are left as they are.
pub async fn degrade<K: Reported>(
    ctx: &Context,
    obj: &K,
    observation: Observation,
) -> Result<(Action, &'static str), ReconcileError> {
    let common = field_names::<CommonStatus>();
    write_status(ctx, obj, &observation, K::Status::default(), &common).await?;
    Ok((Action::requeue(ctx.timing.degraded), "degraded"))
}

/// The `Degraded` report of a child the API server refused, with the way out.
pub fn rejected_observation(owner: &str, child: &str, message: &str) -> Observation {
    let immutable = message.contains("Forbidden") || message.contains("immutable");
    let (reason, fix) = if immutable {
        (
            "ImmutableField",
            format!(
                "the change of {owner}'s spec needs a field of {child} that cannot be changed in place; \
                 revert the change, or delete {child} (kubectl delete {} --cascade=orphan keeps the pods) so that the operator creates it anew",
                child.to_lowercase().replacen('/', " ", 1)
            ),
        )
    } else {
        (
            "InvalidSpec",
            format!("correct the field of {owner}'s spec that the message names"),
        )
    };
    Observation::Invalid {
        reason: reason.into(),
        message: format!("the API server refused {child}: {message}; {fix}"),
    }
}

/// The JSON names of the fields of `S`, as serde names them (the schema follows the
/// serde attributes, flattened parts included).
fn field_names<S: JsonSchema>() -> Vec<String> {
    let schema = SchemaGenerator::default().into_root_schema_for::<S>();
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default()
}

fn serialize_error<K: Resource<DynamicType = ()>>(
    obj: &K,
) -> impl Fn(serde_json::Error) -> ReconcileError + '_ {
    move |source| ReconcileError::Serialize {
        object: format!("{}/{}", K::kind(&()), obj.name_any()),
        source,
    }
}

/// Each of the fields `owned` with its value in `status`; `null` for one that `status`
/// does not set, which a merge patch takes to remove the field.
fn owned_fields<S: Serialize>(
    status: &S,
    owned: &[String],
) -> Result<Map<String, Value>, serde_json::Error> {
    let mut fields = match serde_json::to_value(status)? {
        Value::Object(fields) => fields,
        _ => Map::new(),
    };
    Ok(owned
        .iter()
        .map(|name| (name.clone(), fields.remove(name).unwrap_or(Value::Null)))
        .collect())
}

/// Writes the fields `owned` of `status`, after the conditions of `observation`, when
/// they differ from the live status.
async fn write_status<K: Reported>(
    ctx: &Context,
    obj: &K,
    observation: &Observation,
    mut status: K::Status,
    owned: &[String],
) -> Result<bool, ReconcileError> {
    let reference = format!("{}/{}", K::kind(&()), obj.name_any());
    let serialize = serialize_error(obj);
    let live = obj.status();
    let before: Vec<Condition> = live
        .map(|s| s.common().conditions.clone())
        .unwrap_or_default();
    let generation = obj.meta().generation;
    let mut conditions = before.clone();
    apply_observation(&mut conditions, observation, generation, Timestamp::now());
    *status.common_mut() = CommonStatus {
        observed_generation: generation,
        conditions,
    };

    let patch = owned_fields(&status, owned).map_err(&serialize)?;

    announce_degradation(ctx, obj, &before, &status.common().conditions).await;

    let live = serde_json::to_value(live).map_err(&serialize)?;
    let unchanged = patch
        .iter()
        .all(|(key, value)| live.get(key).unwrap_or(&Value::Null) == value);
    if unchanged {
        return Ok(false);
    }
    let namespace = obj.namespace().unwrap_or_default();
    Api::<K>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": patch })),
        )
        .await
        .map_err(|e| ReconcileError::kube(format!("update the status of {reference}"), e))?;
    ctx.metrics.wrote(&K::kind(&()), "status");
    Ok(true)
}

fn degraded(conditions: &[Condition]) -> Option<&Condition> {
    conditions
        .iter()
        .find(|c| c.type_ == DEGRADED && c.status == "True")
}

/// An Event when the resource becomes degraded (or degraded for another reason) and
/// when it recovers; none while it stays as it is, so a resource that waits for a fix
/// does not fill the event log.
async fn announce_degradation<K>(ctx: &Context, obj: &K, before: &[Condition], after: &[Condition])
where
    K: Resource<DynamicType = ()>,
{
    let event = match (degraded(before), degraded(after)) {
        (before, Some(now))
            if before.is_none_or(|b| b.reason != now.reason || b.message != now.message) =>
        {
            Event {
                type_: EventType::Warning,
                reason: now.reason.clone(),
                note: Some(truncate(&now.message, 1000)),
                action: "Reconcile".into(),
                secondary: None,
            }
        }
        (Some(_), None) => Event {
            type_: EventType::Normal,
            reason: "Recovered".into(),
            note: Some("the spec is applied".into()),
            action: "Reconcile".into(),
            secondary: None,
        },
        _ => return,
    };
    match ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        Ok(()) => ctx.metrics.wrote("Event", "create"),
        // an event is a courtesy: failing to publish it does not fail the reconcile
        Err(error) => tracing::warn!(%error, reason = %event.reason, "cannot publish an event"),
    }
}

/// Publishes a Warning Event about `obj` (failures a person may have to act on);
/// a failure to publish is logged only.
pub async fn warn<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, reason: &str, note: &str) {
    let event = Event {
        type_: EventType::Warning,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &obj.object_ref(&())).await {
        Ok(()) => ctx.metrics.wrote("Event", "create"),
        Err(error) => tracing::warn!(%error, %reason, "cannot publish an event"),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary (an Event's note is
/// limited to 1 kB).
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Ready pods of a workload status, counting only pods of the current template when the
/// workload controller has seen the current generation.
pub fn ready_of(
    ready: Option<i32>,
    updated: Option<i32>,
    observed: Option<i64>,
    generation: Option<i64>,
) -> i32 {
    let ready = ready.unwrap_or(0);
    if observed.is_some() && observed >= generation {
        ready.min(updated.unwrap_or(ready))
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_field_names_are_those_of_the_typed_statuses() {
        assert_eq!(
            field_names::<CommonStatus>(),
            ["conditions", "observedGeneration"]
        );
        assert_eq!(
            field_names::<SipEdgeStatus>(),
            [
                "conditions",
                "configHash",
                "observedGeneration",
                "readyReplicas"
            ]
        );
        assert_eq!(
            field_names::<MediaPoolStatus>(),
            [
                "activeMembers",
                "conditions",
                "members",
                "observedGeneration",
                "readyReplicas"
            ]
        );
        assert_eq!(
            field_names::<PgClusterStatus>(),
            [
                "conditions",
                "observedGeneration",
                "primary",
                "readyInstances",
                "schemaVersion"
            ]
        );
    }

    #[test]
    fn an_owned_field_the_status_does_not_set_is_removed_and_a_kept_one_is_left_out() {
        let status = MediaPoolStatus {
            ready_replicas: Some(2),
            ..Default::default()
        };
        let keep = MediaPoolStatus {
            members: vec![String::new()],
            ..Default::default()
        };
        let kept = serde_json::to_value(&keep).unwrap();
        let owned: Vec<String> = field_names::<MediaPoolStatus>()
            .into_iter()
            .filter(|name| kept.get(name).is_none())
            .collect();
        assert_eq!(
            Value::Object(owned_fields(&status, &owned).unwrap()),
            json!({
                "activeMembers": null,
                "conditions": null,
                "observedGeneration": null,
                "readyReplicas": 2,
            })
        );
    }
}
