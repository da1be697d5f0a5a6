//! An in-memory Kubernetes API server for the controllers' tests and the memory
//! benchmark. It answers the requests the controllers make (get, list with a label
//! selector, create, replace, server-side apply, merge and JSON patches, the status
//! subresource, delete with finalizers) from a map of JSON objects, and records every
//! request, so a test can say which writes a reconcile made and in which order.
//!
//! Like the real API server it assigns uids, resource versions and generations,
//! stores a Secret's `stringData` as base64 `data`, keeps an object with finalizers
//! until they are removed, and refuses a StatefulSet change of a field that cannot
//! change (422).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    /// `plural[/name[/subresource]]`, e.g. `configmaps/edge-kamailio-config`.
    pub target: String,
    pub namespace: Option<String>,
    pub content_type: Option<String>,
    pub body: Option<String>,
}

impl Call {
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }

    /// `METHOD target`, as tests compare them.
    pub fn short(&self) -> String {
        format!("{} {}", self.method, self.target)
    }
}

/// (kind, plural, path prefix)
const KINDS: &[(&str, &str, &str)] = &[
    ("ConfigMap", "configmaps", "api/v1"),
    ("Secret", "secrets", "api/v1"),
    ("Service", "services", "api/v1"),
    ("ServiceAccount", "serviceaccounts", "api/v1"),
    ("Endpoints", "endpoints", "api/v1"),
    ("Pod", "pods", "api/v1"),
    (
        "EndpointSlice",
        "endpointslices",
        "apis/discovery.k8s.io/v1",
    ),
    ("StatefulSet", "statefulsets", "apis/apps/v1"),
    ("Deployment", "deployments", "apis/apps/v1"),
    ("DaemonSet", "daemonsets", "apis/apps/v1"),
    (
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "apis/policy/v1",
    ),
    (
        "NetworkPolicy",
        "networkpolicies",
        "apis/networking.k8s.io/v1",
    ),
    ("Role", "roles", "apis/rbac.authorization.k8s.io/v1"),
    (
        "RoleBinding",
        "rolebindings",
        "apis/rbac.authorization.k8s.io/v1",
    ),
    ("Lease", "leases", "apis/coordination.k8s.io/v1"),
    ("Event", "events", "apis/events.k8s.io/v1"),
    ("SipEdge", "sipedges", "apis/sipstack.io/v1alpha1"),
    ("MediaPool", "mediapools", "apis/sipstack.io/v1alpha1"),
    ("PgCluster", "pgclusters", "apis/sipstack.io/v1alpha1"),
];

fn plural_of(kind: &str) -> Option<&'static str> {
    KINDS.iter().find(|k| k.0 == kind).map(|k| k.1)
}

fn kind_of(plural: &str) -> Option<&'static str> {
    KINDS.iter().find(|k| k.1 == plural).map(|k| k.0)
}

fn api_version_of(prefix: &str) -> String {
    prefix
        .strip_prefix("api/")
        .or_else(|| prefix.strip_prefix("apis/"))
        .unwrap_or(prefix)
        .to_string()
}

/// (plural, namespace, name)
type Key = (String, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    calls: Vec<Call>,
    revision: u64,
    uids: u64,
}

impl State {
    fn next_revision(&mut self) -> String {
        self.revision += 1;
        self.revision.to_string()
    }
}

/// The fake API server; clones share the same objects.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A client whose requests this server answers.
    pub fn client(&self) -> kube::Client {
        let fake = self.clone();
        let service = tower::service_fn(move |request: Request<Body>| {
            let fake = fake.clone();
            async move { Ok::<_, Infallible>(fake.handle(request).await) }
        });
        kube::Client::new(service, "default")
    }

    /// Stores `object` as if it had been created (uid, resourceVersion, generation
    /// assigned) and returns it as stored.
    pub fn insert<T: Serialize + DeserializeOwned>(&self, object: &T) -> T {
        let mut value = serde_json::to_value(object).expect("the object serializes");
        let kind = value["kind"]
            .as_str()
            .expect("the object has a kind")
            .to_string();
        let plural = plural_of(&kind).expect("a kind the fake knows");
        let namespace = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = value["metadata"]["name"]
            .as_str()
            .expect("a name")
            .to_string();
        let mut state = self.lock();
        stamp_new(&mut state, &mut value);
        stored_secret(&mut value);
        state
            .objects
            .insert((plural.into(), namespace, name), value.clone());
        serde_json::from_value(value).expect("the stored object deserializes")
    }

    /// The stored object of `kind` named `name`.
    pub fn get<T: DeserializeOwned>(&self, kind: &str, namespace: &str, name: &str) -> Option<T> {
        let plural = plural_of(kind)?;
        self.lock()
            .objects
            .get(&(plural.into(), namespace.into(), name.into()))
            .map(|v| serde_json::from_value(v.clone()).expect("the stored object deserializes"))
    }

    /// Every stored object of `kind`, as JSON.
    pub fn all(&self, kind: &str) -> Vec<Value> {
        let Some(plural) = plural_of(kind) else {
            return Vec::new();
        };
        self.lock()
            .objects
            .iter()
            .filter(|((p, _, _), _)| p == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Changes a stored object in place (a test standing in for another writer).
    pub fn update(&self, kind: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Value)) {
        let plural = plural_of(kind).expect("a kind the fake knows");
        let mut state = self.lock();
        let revision = state.next_revision();
        let object = state
            .objects
            .get_mut(&(plural.into(), namespace.into(), name.into()))
            .expect("the object exists");
        change(object);
        object["metadata"]["resourceVersion"] = json!(revision);
    }

    /// The requests answered so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The requests answered so far, forgetting them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await.unwrap_or_default();
        let body = String::from_utf8_lossy(&body).to_string();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let query = parse_query(parts.uri.query().unwrap_or(""));
        let Some(route) = Route::parse(parts.uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route {}", parts.uri.path()),
            );
        };
        let mut state = self.lock();
        state.calls.push(Call {
            method: parts.method.to_string(),
            target: route.target(),
            namespace: route.namespace.clone(),
            content_type: content_type.clone(),
            body: (!body.is_empty()).then(|| body.clone()),
        });
        let parsed_body = || serde_json::from_str::<Value>(&body);
        match (&parts.method, &route.name) {
            (&Method::GET, Some(_)) => match state.objects.get(&route.key()) {
                Some(object) => ok(StatusCode::OK, object),
                None => not_found(&route),
            },
            (&Method::GET, None) => {
                let selector = query.get("labelSelector").cloned().unwrap_or_default();
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|((plural, namespace, _), _)| {
                        plural == &route.plural
                            && route.namespace.as_ref().is_none_or(|ns| ns == namespace)
                    })
                    .filter(|(_, object)| matches_selector(object, &selector))
                    .map(|(_, object)| object.clone())
                    .collect();
                let list = json!({
                    "apiVersion": api_version_of(&route.prefix),
                    "kind": format!("{}List", kind_of(&route.plural).unwrap_or("Unknown")),
                    "metadata": { "resourceVersion": state.revision.to_string() },
                    "items": items,
                });
                ok(StatusCode::OK, &list)
            }
            (&Method::POST, None) => {
                let Ok(mut object) = parsed_body() else {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the body is not JSON",
                    );
                };
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut route = route.clone();
                route.name = Some(name);
                if state.objects.contains_key(&route.key()) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("{} already exists", route.target()),
                    );
                }
                if let Some(ns) = &route.namespace {
                    object["metadata"]["namespace"] = json!(ns);
                }
                stamp_new(&mut state, &mut object);
                stored_secret(&mut object);
                state.objects.insert(route.key(), object.clone());
                ok(StatusCode::CREATED, &object)
            }
            (&Method::PUT, Some(_)) => {
                let Ok(mut object) = parsed_body() else {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the body is not JSON",
                    );
                };
                let Some(existing) = state.objects.get(&route.key()).cloned() else {
                    return not_found(&route);
                };
                let sent = object["metadata"]["resourceVersion"]
                    .as_str()
                    .map(String::from);
                if sent.is_some()
                    && sent.as_deref() != existing["metadata"]["resourceVersion"].as_str()
                {
                    return status(StatusCode::CONFLICT, "Conflict", "the object has been modified; please apply your changes to the latest version and try again");
                }
                keep_server_fields(&existing, &mut object);
                object["metadata"]["resourceVersion"] = json!(state.next_revision());
                state.objects.insert(route.key(), object.clone());
                ok(StatusCode::OK, &object)
            }
            (&Method::PATCH, Some(_)) => {
                let Ok(patch) = parsed_body() else {
                    return status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the body is not JSON",
                    );
                };
                let existing = state.objects.get(&route.key()).cloned();
                let kind = content_type.as_deref().unwrap_or_default();
                let mut object = if kind.starts_with("application/apply-patch") {
                    match (&existing, route.subresource.as_deref()) {
                        (Some(existing), Some("status")) => {
                            let mut object = existing.clone();
                            object["status"] = patch["status"].clone();
                            object
                        }
                        (None, Some(_)) => return not_found(&route),
                        (existing, _) => {
                            let mut object = patch.clone();
                            match existing {
                                Some(existing) => {
                                    if let Some(refusal) =
                                        immutable_change(&route, existing, &object)
                                    {
                                        return refusal;
                                    }
                                    keep_server_fields(existing, &mut object);
                                }
                                None => stamp_new(&mut state, &mut object),
                            }
                            stored_secret(&mut object);
                            object
                        }
                    }
                } else {
                    let Some(ref existing) = existing else {
                        return not_found(&route);
                    };
                    let mut object = existing.clone();
                    if kind.starts_with("application/merge-patch") {
                        if route.subresource.as_deref() == Some("status") {
                            merge(&mut object["status"], &patch["status"]);
                        } else {
                            merge(&mut object, &patch);
                        }
                    } else if kind.starts_with("application/json-patch") {
                        let Ok(mut operations) = serde_json::from_value::<json_patch::Patch>(patch)
                        else {
                            return status(
                                StatusCode::BAD_REQUEST,
                                "BadRequest",
                                "not a JSON patch",
                            );
                        };
                        // the API server's JSON patch finds a missing field equal to null
                        operations.0.retain(|op| match op {
                            json_patch::PatchOperation::Test(t) => {
                                !(t.value.is_null() && object.pointer(t.path.as_str()).is_none())
                            }
                            _ => true,
                        });
                        if let Err(e) = json_patch::patch(&mut object, &operations) {
                            return status(
                                StatusCode::UNPROCESSABLE_ENTITY,
                                "Invalid",
                                &e.to_string(),
                            );
                        }
                    } else {
                        return status(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "UnsupportedMediaType",
                            kind,
                        );
                    }
                    object
                };
                if route.subresource.is_none()
                    && existing
                        .as_ref()
                        .is_some_and(|e| e["spec"] != object["spec"])
                {
                    let generation = object["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(generation + 1);
                }
                object["metadata"]["resourceVersion"] = json!(state.next_revision());
                store_or_finish(&mut state, route.key(), object.clone());
                ok(StatusCode::OK, &object)
            }
            (&Method::DELETE, Some(_)) => {
                let Some(mut object) = state.objects.get(&route.key()).cloned() else {
                    return not_found(&route);
                };
                object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                object["metadata"]["resourceVersion"] = json!(state.next_revision());
                store_or_finish(&mut state, route.key(), object);
                ok(
                    StatusCode::OK,
                    &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 200}),
                )
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                parts.method.as_str(),
            ),
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    prefix: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (prefix, rest) = match *segments.first()? {
            "api" if segments.len() >= 2 => (segments[..2].join("/"), &segments[2..]),
            "apis" if segments.len() >= 3 => (segments[..3].join("/"), &segments[3..]),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
            rest => (None, rest),
        };
        let (plural, rest) = rest.split_first()?;
        Some(Route {
            prefix,
            plural: plural.to_string(),
            namespace,
            name: rest.first().map(|s| s.to_string()),
            subresource: rest.get(1).map(|s| s.to_string()),
        })
    }

    fn key(&self) -> Key {
        (
            self.plural.clone(),
            self.namespace.clone().unwrap_or_default(),
            self.name.clone().unwrap_or_default(),
        )
    }

    fn target(&self) -> String {
        let mut t = self.plural.clone();
        for part in [&self.name, &self.subresource].into_iter().flatten() {
            t.push('/');
            t.push_str(part);
        }
        t
    }
}

/// uid, resourceVersion, creationTimestamp and generation of a new object.
fn stamp_new(state: &mut State, object: &mut Value) {
    state.uids += 1;
    let uid = format!("00000000-0000-4000-8000-{:012}", state.uids);
    let revision = state.next_revision();
    let meta = &mut object["metadata"];
    if meta["uid"].is_null() {
        meta["uid"] = json!(uid);
    }
    meta["resourceVersion"] = json!(revision);
    meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    if meta["generation"].is_null() {
        meta["generation"] = json!(1);
    }
}

/// What the client does not send but the server keeps: identity, generation, status,
/// finalizers and a pending deletion.
fn keep_server_fields(existing: &Value, object: &mut Value) {
    for field in [
        "uid",
        "creationTimestamp",
        "generation",
        "deletionTimestamp",
        "finalizers",
    ] {
        if object["metadata"][field].is_null() && !existing["metadata"][field].is_null() {
            object["metadata"][field] = existing["metadata"][field].clone();
        }
    }
    if object.get("status").is_none_or(Value::is_null) && !existing["status"].is_null() {
        object["status"] = existing["status"].clone();
    }
}

/// Stores the object, or removes it when it is being deleted and has no finalizer left.
fn store_or_finish(state: &mut State, key: Key, object: Value) {
    let deleting = !object["metadata"]["deletionTimestamp"].is_null();
    let finalizers = object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if deleting && !finalizers {
        state.objects.remove(&key);
    } else {
        state.objects.insert(key, object);
    }
}

/// A Secret as the API server keeps it: `stringData` moved into base64 `data`.
fn stored_secret(object: &mut Value) {
    if object["kind"] != "Secret" {
        return;
    }
    let Some(Value::Object(strings)) = object.as_object_mut().and_then(|o| o.remove("stringData"))
    else {
        return;
    };
    let mut data = object["data"].as_object().cloned().unwrap_or_default();
    for (key, value) in strings {
        data.insert(
            key,
            json!(base64(value.as_str().unwrap_or_default().as_bytes())),
        );
    }
    object["data"] = Value::Object(data);
}

/// The API server's refusal of a StatefulSet change outside the fields it may change.
fn immutable_change(route: &Route, existing: &Value, object: &Value) -> Option<Response<Body>> {
    if route.plural != "statefulsets" {
        return None;
    }
    let fixed = |v: &Value| {
        let mut spec = v["spec"].as_object().cloned().unwrap_or_default();
        for field in [
            "replicas",
            "ordinals",
            "template",
            "updateStrategy",
            "persistentVolumeClaimRetentionPolicy",
            "minReadySeconds",
        ] {
            spec.remove(field);
        }
        spec
    };
    (fixed(existing) != fixed(object)).then(|| {
        status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "StatefulSet.apps \"{}\" is invalid: spec: Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
                route.name.clone().unwrap_or_default()
            ),
        )
    })
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn matches_selector(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((key, value)) = term.split_once("!=") {
            labels[key.trim()].as_str() != Some(value.trim())
        } else if let Some((key, value)) = term.split_once('=') {
            labels[key.trim()].as_str() == Some(value.trim_start_matches('=').trim())
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn ok(code: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(serde_json::to_vec(value).unwrap_or_default()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    ok(
        code,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn not_found(route: &Route) -> Response<Body> {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} not found", route.target()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(base64(b"keep-me"), "a2VlcC1tZQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(percent_decode("a%2Fb%3Dc"), "a/b=c");
        assert!(matches_selector(
            &json!({"metadata": {"labels": {"a": "1"}}}),
            "a=1"
        ));
    }
}
