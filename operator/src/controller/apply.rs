//! Bringing the children of a resource to the objects its builder made: server-side
//! apply in the builder's order (ConfigMaps before the workloads that mount them),
//! generated Secrets created once, children that are no longer wanted deleted.
//!
//! A reconcile of an unchanged resource must not write: every write wakes the watchers
//! of the object, the operator's own included. Each applied child carries the hash of
//! the object the operator applied (`sipstack.io/applied-hash`); when the live child
//! has the hash of the desired one there is nothing to apply. (A hand edit of a child
//! that keeps the annotation is therefore not reverted until the desired object
//! changes; removing the annotation makes the operator apply it again.)

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::controller::context::Context;
use crate::controller::error::ReconcileError;
use crate::meta::FIELD_MANAGER;
use crate::object::Object;
use crate::secrets;

/// Annotation of every applied child: the hash of the object as the operator built it.
pub const APPLIED_HASH_ANNOTATION: &str = "sipstack.io/applied-hash";

/// The kinds of objects the builders make. A controller lists the kinds its resource
/// may own, so that a child the spec no longer asks for (a Deployment after the edge
/// became a DaemonSet, PgBouncer turned off) is found and deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildKind {
    ServiceAccount,
    Role,
    RoleBinding,
    Secret,
    ConfigMap,
    Service,
    StatefulSet,
    Deployment,
    DaemonSet,
    PodDisruptionBudget,
    NetworkPolicy,
}

impl ChildKind {
    pub fn of(object: &Object) -> Self {
        match object {
            Object::ServiceAccount(_) => ChildKind::ServiceAccount,
            Object::Role(_) => ChildKind::Role,
            Object::RoleBinding(_) => ChildKind::RoleBinding,
            Object::Secret(_) => ChildKind::Secret,
            Object::ConfigMap(_) => ChildKind::ConfigMap,
            Object::Service(_) => ChildKind::Service,
            Object::StatefulSet(_) => ChildKind::StatefulSet,
            Object::Deployment(_) => ChildKind::Deployment,
            Object::DaemonSet(_) => ChildKind::DaemonSet,
            Object::PodDisruptionBudget(_) => ChildKind::PodDisruptionBudget,
            Object::NetworkPolicy(_) => ChildKind::NetworkPolicy,
        }
    }
}

/// Runs `$body` with `$K` the Kubernetes type of a [`ChildKind`].
macro_rules! with_child_type {
    ($kind:expr, $K:ident => $body:expr) => {
        match $kind {
            ChildKind::ServiceAccount => {
                type $K = ServiceAccount;
                $body
            }
            ChildKind::Role => {
                type $K = Role;
                $body
            }
            ChildKind::RoleBinding => {
                type $K = RoleBinding;
                $body
            }
            ChildKind::Secret => {
                type $K = Secret;
                $body
            }
            ChildKind::ConfigMap => {
                type $K = ConfigMap;
                $body
            }
            ChildKind::Service => {
                type $K = Service;
                $body
            }
            ChildKind::StatefulSet => {
                type $K = StatefulSet;
                $body
            }
            ChildKind::Deployment => {
                type $K = Deployment;
                $body
            }
            ChildKind::DaemonSet => {
                type $K = DaemonSet;
                $body
            }
            ChildKind::PodDisruptionBudget => {
                type $K = PodDisruptionBudget;
                $body
            }
            ChildKind::NetworkPolicy => {
                type $K = NetworkPolicy;
                $body
            }
        }
    };
}

/// Runs `$body` with `$o` the typed object inside an [`Object`]; the body's `Ok`
/// value goes back into an [`Object`].
macro_rules! with_object {
    ($object:expr, $o:ident => $body:expr) => {
        match $object {
            Object::ServiceAccount($o) => $body.map(Object::from),
            Object::Role($o) => $body.map(Object::from),
            Object::RoleBinding($o) => $body.map(Object::from),
            Object::Secret($o) => $body.map(Object::from),
            Object::ConfigMap($o) => $body.map(Object::from),
            Object::Service($o) => $body.map(Object::from),
            Object::StatefulSet($o) => $body.map(Object::from),
            Object::Deployment($o) => $body.map(Object::from),
            Object::DaemonSet($o) => $body.map(Object::from),
            Object::PodDisruptionBudget($o) => $body.map(Object::from),
            Object::NetworkPolicy($o) => $body.map(Object::from),
        }
    };
}

impl ChildKind {
    /// The API group (`""` for the core group) and the resource (plural) of the kind,
    /// as RBAC rules name them.
    pub fn api_resource(self) -> (&'static str, &'static str) {
        with_child_type!(self, K => (
            <K as k8s_openapi::Resource>::GROUP,
            <K as k8s_openapi::Resource>::URL_PATH_SEGMENT,
        ))
    }
}

/// `controller`, also woken by changes to the children of `kinds` (in `namespace`, or
/// in all namespaces) that its resources own.
pub fn owning<K>(
    controller: Controller<K>,
    kinds: &[ChildKind],
    client: &Client,
    namespace: Option<&str>,
    config: &watcher::Config,
) -> Controller<K>
where
    K: Clone + Resource<DynamicType = ()> + DeserializeOwned + Debug + Send + Sync + 'static,
{
    // kube-rs's `owns` takes the child's static type; the kind's match names it
    kinds.iter().fold(controller, |controller, kind| {
        with_child_type!(*kind, C => controller.owns(super::api::<C>(client, namespace), config.clone()))
    })
}

/// The resource whose children are synced.
#[derive(Debug, Clone)]
pub struct Owner {
    /// `Kind/name`, for messages.
    pub reference: String,
    pub namespace: String,
    pub name: String,
    /// The resource's uid: children are recognised by their controller reference to it.
    pub uid: Option<String>,
}

impl Owner {
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K, namespace: &str) -> Self {
        Owner {
            reference: format!("{}/{}", K::kind(&()), obj.name_any()),
            namespace: namespace.to_string(),
            name: obj.name_any(),
            uid: obj.uid(),
        }
    }

    /// The labels every child of the resource carries (see `meta::Component::labels`).
    fn selector(&self) -> String {
        format!(
            "app.kubernetes.io/instance={},app.kubernetes.io/managed-by={FIELD_MANAGER}",
            self.name
        )
    }

    /// Whether `object` is a child of this resource (and not of another kind's resource
    /// of the same name, nor something a person labelled alike).
    fn owns(&self, object: &Object) -> bool {
        let Some(uid) = &self.uid else {
            return false;
        };
        object
            .metadata()
            .owner_references
            .iter()
            .flatten()
            .any(|r| &r.uid == uid && r.controller == Some(true))
    }
}

/// The children after a sync, as they are in the cluster: the live object where it
/// was up to date, the API server's answer where it was written.
#[derive(Debug, Default)]
pub struct Synced {
    pub objects: Vec<Object>,
    /// `Kind/name` of each child written (applied, created or deleted), in order.
    pub written: Vec<String>,
}

impl Synced {
    /// The first child of `kind`.
    pub fn find(&self, kind: ChildKind) -> Option<&Object> {
        self.objects.iter().find(|o| ChildKind::of(o) == kind)
    }
}

/// The hash the applied child carries: of the object as built, before the annotation.
pub fn applied_hash(object: &Object) -> Result<String, ReconcileError> {
    let text = serde_json::to_string(object).map_err(|source| ReconcileError::Serialize {
        object: object.reference(),
        source,
    })?;
    Ok(sipstack_render::config_hash(&text))
}

/// Brings the children of `owner` of the kinds `kinds` to `desired` (in the builder's
/// order): applies what differs, creates missing generated Secrets, deletes the
/// children no longer desired. An API server's refusal of a child as invalid is
/// returned as [`ReconcileError::Rejected`], for the reconcile to report.
pub async fn sync_children(
    ctx: &Context,
    owner: &Owner,
    kinds: &[ChildKind],
    desired: Vec<Object>,
) -> Result<Synced, ReconcileError> {
    let mut live = Vec::new();
    for kind in kinds {
        live.extend(list_owned(&ctx.client, owner, *kind).await?);
    }
    let mut synced = Synced::default();
    for mut object in desired {
        let kind = ChildKind::of(&object);
        let current = live
            .iter()
            .find(|l| ChildKind::of(l) == kind && l.name() == object.name());
        if object.is_generated_secret() {
            let existing = match current {
                Some(c) => Some(c.clone()),
                // a Secret of the same name made by a person (not labelled as ours)
                None => get(&ctx.client, &owner.namespace, kind, &object.name()).await?,
            };
            match existing {
                Some(existing) => synced.objects.push(existing),
                None => {
                    if let Object::Secret(secret) = &mut object {
                        secrets::fill_generated(secret, secrets::random_value)?;
                    }
                    if let Some(created) = create(ctx, &owner.namespace, &object).await? {
                        synced.written.push(object.reference());
                        synced.objects.push(created);
                    }
                }
            }
            continue;
        }
        let hash = applied_hash(&object)?;
        if let Some(current) =
            current.filter(|c| c.annotation(APPLIED_HASH_ANNOTATION) == Some(&hash))
        {
            synced.objects.push(current.clone());
            continue;
        }
        object
            .metadata_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(APPLIED_HASH_ANNOTATION.into(), hash);
        let applied = apply(ctx, &owner.namespace, &object).await?;
        synced.written.push(object.reference());
        synced.objects.push(applied);
    }
    for orphan in live.iter().filter(|l| {
        !synced
            .objects
            .iter()
            .any(|o| ChildKind::of(o) == ChildKind::of(l) && o.name() == l.name())
    }) {
        delete(ctx, &owner.namespace, orphan).await?;
        tracing::info!(object = %orphan.reference(), owner = %owner.reference, "deleted a child the spec no longer asks for");
        synced.written.push(orphan.reference());
    }
    Ok(synced)
}

async fn list_owned(
    client: &Client,
    owner: &Owner,
    kind: ChildKind,
) -> Result<Vec<Object>, ReconcileError> {
    let params = ListParams::default().labels(&owner.selector());
    let objects: Vec<Object> = with_child_type!(kind, K => {
        Api::<K>::namespaced(client.clone(), &owner.namespace)
            .list(&params)
            .await
            .map_err(|e| ReconcileError::kube(format!("list the {kind:?}s of {}", owner.reference), e))?
            .items
            .into_iter()
            .map(Object::from)
            .collect()
    });
    Ok(objects.into_iter().filter(|o| owner.owns(o)).collect())
}

async fn get(
    client: &Client,
    namespace: &str,
    kind: ChildKind,
    name: &str,
) -> Result<Option<Object>, ReconcileError> {
    with_child_type!(kind, K => {
        Ok(Api::<K>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(|e| ReconcileError::kube(format!("get {kind:?}/{name}"), e))?
            .map(Object::from))
    })
}

/// A refusal of the API server that a retry cannot fix (422 Invalid, 400 BadRequest).
fn rejected(object: &Object, error: kube::Error, verb: &str) -> ReconcileError {
    match error {
        kube::Error::Api(status) if status.code == 422 || status.code == 400 => {
            ReconcileError::Rejected {
                object: object.reference(),
                message: status.message,
            }
        }
        other => ReconcileError::kube(format!("{verb} {}", object.reference()), other),
    }
}

async fn apply_typed<K>(client: &Client, namespace: &str, object: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &object.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
}

async fn apply(ctx: &Context, namespace: &str, object: &Object) -> Result<Object, ReconcileError> {
    let applied = with_object!(object, o => apply_typed(&ctx.client, namespace, o).await)
        .map_err(|e| rejected(object, e, "apply"))?;
    ctx.metrics.wrote(object.kind(), "apply");
    tracing::info!(object = %object.reference(), "applied");
    Ok(applied)
}

async fn create_typed<K>(client: &Client, namespace: &str, object: &K) -> Result<K, kube::Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&params, object)
        .await
}

/// Creates `object`; `None` when it exists already.
async fn create(
    ctx: &Context,
    namespace: &str,
    object: &Object,
) -> Result<Option<Object>, ReconcileError> {
    match with_object!(object, o => create_typed(&ctx.client, namespace, o).await) {
        Ok(created) => {
            ctx.metrics.wrote(object.kind(), "create");
            tracing::info!(object = %object.reference(), "created");
            Ok(Some(created))
        }
        // made between the look and the create: it exists, which is all that was wanted
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(e) => Err(rejected(object, e, "create")),
    }
}

async fn delete(ctx: &Context, namespace: &str, object: &Object) -> Result<(), ReconcileError> {
    let name = object.name();
    let kind = ChildKind::of(object);
    let result = with_child_type!(kind, K => {
        Api::<K>::namespaced(ctx.client.clone(), namespace)
            .delete(&name, &DeleteParams::background())
            .await
            .map(|_| ())
    });
    match result {
        Ok(()) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => {
            return Err(ReconcileError::kube(
                format!("delete {}", object.reference()),
                e,
            ))
        }
    }
    ctx.metrics.wrote(object.kind(), "delete");
    Ok(())
}
