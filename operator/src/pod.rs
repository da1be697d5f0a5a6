//! Pieces of pods, Services and Secrets the builders share.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ConfigMap, ConfigMapVolumeSource, EnvVar, EnvVarSource, KeyToPath,
    ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, Secret, SecretKeySelector, ServicePort,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::meta::{
    object_meta, Component, GENERATED_KEY_PLACEHOLDER, GENERATED_PLACEHOLDER,
    GENERATED_SECRET_ANNOTATION,
};

/// An environment variable with a literal value (may reference earlier variables as `$(NAME)`).
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// An environment variable read from a key of a Secret.
pub fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An environment variable from a field of the pod (`metadata.name`, `status.podIP`).
pub fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn service_port(name: &str, port: u16, protocol: &str) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: port.into(),
        target_port: Some(IntOrString::Int(port.into())),
        protocol: Some(protocol.into()),
        ..Default::default()
    }
}

/// A Secret whose keys `generated` the operator fills with random values when it
/// creates the Secret (and never changes later); `fixed` keys have known values
/// (user names). Printed with [`GENERATED_PLACEHOLDER`] in place of the values.
pub fn generated_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    namespace: &str,
    name: &str,
    component: Component,
    fixed: &[(&str, &str)],
    generated: &[&str],
) -> Secret {
    let mut meta = object_meta(owner, namespace, name, component);
    meta.annotations = Some(BTreeMap::from([(
        GENERATED_SECRET_ANNOTATION.to_string(),
        generated.join(","),
    )]));
    let mut data: BTreeMap<String, String> = fixed
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    data.extend(
        generated
            .iter()
            .map(|k| (k.to_string(), GENERATED_PLACEHOLDER.to_string())),
    );
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Default::default()
    }
}

/// A Secret holding one 256-bit key (base64) under `field`, generated when the
/// operator creates the Secret and never changed later.
pub fn generated_key_secret<K: Resource<DynamicType = ()>>(
    owner: &K,
    namespace: &str,
    name: &str,
    component: Component,
    field: &str,
) -> Secret {
    let mut secret = generated_secret(owner, namespace, name, component, &[], &[field]);
    if let Some(data) = secret.string_data.as_mut() {
        data.insert(field.to_string(), GENERATED_KEY_PLACEHOLDER.to_string());
    }
    secret
}

/// A ConfigMap holding rendered files. ConfigMap keys cannot hold '/', so a file in a
/// subdirectory is stored under its path with '/' written as `--`; [`config_volume`]
/// maps the keys back to paths.
pub fn config_map_of_files<K: Resource<DynamicType = ()>>(
    owner: &K,
    namespace: &str,
    name: &str,
    component: Component,
    files: &[(String, String)],
) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(owner, namespace, name, component),
        data: Some(
            files
                .iter()
                .map(|(path, text)| (config_map_key(path), text.clone()))
                .collect(),
        ),
        ..Default::default()
    }
}

pub fn config_map_key(path: &str) -> String {
    path.replace('/', "--")
}

/// A volume of the ConfigMap `name` that lays the files out under their paths.
pub fn config_volume(
    name: &str,
    config_map: &str,
    paths: &[&str],
) -> k8s_openapi::api::core::v1::Volume {
    k8s_openapi::api::core::v1::Volume {
        name: name.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map.into(),
            items: Some(
                paths
                    .iter()
                    .map(|p| KeyToPath {
                        key: config_map_key(p),
                        path: p.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Spreads the pods of one workload over nodes. With host networking two pods on one
/// node would fight over the same ports, so spreading is then required; otherwise
/// preferred.
pub fn spread_over_nodes(component: Component, instance: &str, required: bool) -> Affinity {
    let term = PodAffinityTerm {
        label_selector: Some(component.selector(instance)),
        topology_key: "kubernetes.io/hostname".into(),
        ..Default::default()
    };
    let anti = if required {
        PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..Default::default()
        }
    } else {
        PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: term,
                },
            ]),
            ..Default::default()
        }
    };
    Affinity {
        pod_anti_affinity: Some(anti),
        ..Default::default()
    }
}

/// At most one pod of the workload down at a time for voluntary disruptions (node
/// drains): calls, registrations and the database quorum survive a drain.
pub fn one_at_a_time<K: Resource<DynamicType = ()>>(
    owner: &K,
    namespace: &str,
    name: &str,
    component: Component,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: object_meta(owner, namespace, name, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(component.selector(&owner.name_any())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `sh -c SCRIPT`: the scripts below are fixed text; spec values reach them only as
/// numbers or through environment variables.
pub fn shell(script: impl Into<String>) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}
