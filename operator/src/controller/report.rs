//! The status of a resource after a reconcile: `observedGeneration`, the conditions
//! (`Ready`, `Progressing`, `Degraded`) and the kind's own fields, patched only when
//! they changed; and an Event when the resource becomes degraded or recovers, so that
//! `kubectl describe` tells what is wrong and what to do.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::controller::context::Context;
use crate::controller::error::ReconcileError;
use crate::status::{apply_observation, Observation, DEGRADED};

/// What a reconcile found, for the status.
#[derive(Debug, Clone)]
pub struct Report {
    pub observation: Observation,
    /// Status fields of the kind that the operator owns (`readyReplicas`, …), by their
    /// JSON name; `Null` removes a field. Fields not listed are left to their writers
    /// (a MediaPool's members belong to the dispatcher sync).
    pub fields: Vec<(&'static str, Value)>,
}

/// Whether the status was written.
pub async fn publish<K>(ctx: &Context, obj: &K, report: &Report) -> Result<bool, ReconcileError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let reference = format!("{}/{}", K::kind(&()), obj.name_any());
    let serialize = |source| ReconcileError::Serialize {
        object: reference.clone(),
        source,
    };
    let whole = serde_json::to_value(obj).map_err(serialize)?;
    let live = whole.get("status").cloned().unwrap_or(Value::Null);
    let before: Vec<Condition> = live
        .get("conditions")
        .cloned()
        .and_then(|c| serde_json::from_value(c).ok())
        .unwrap_or_default();
    let mut conditions = before.clone();
    let generation = obj.meta().generation;
    apply_observation(
        &mut conditions,
        &report.observation,
        generation,
        Timestamp::now(),
    );

    let mut patch = Map::new();
    patch.insert(
        "observedGeneration".into(),
        generation.map(Value::from).unwrap_or(Value::Null),
    );
    patch.insert(
        "conditions".into(),
        serde_json::to_value(&conditions).map_err(serialize)?,
    );
    for (key, value) in &report.fields {
        patch.insert((*key).into(), value.clone());
    }

    announce_degradation(ctx, obj, &before, &conditions).await;

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

/// Publishes `observation` (a spec that cannot work, or a child the API server
/// refused) and looks at the object again after the degraded requeue interval.
pub async fn degrade<K>(
    ctx: &Context,
    obj: &K,
    observation: Observation,
) -> Result<(kube::runtime::controller::Action, &'static str), ReconcileError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let report = Report {
        observation,
        fields: Vec::new(),
    };
    publish(ctx, obj, &report).await?;
    Ok((
        kube::runtime::controller::Action::requeue(ctx.timing.degraded),
        "degraded",
    ))
}
