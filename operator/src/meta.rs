//! What every object the operator writes carries: the recommended labels, an owner
//! reference to its custom resource, and on pod templates the hash of the rendered
//! configuration.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "sipstack-operator";
/// Pod-template annotation holding the hash of the rendered configuration: a change
/// of the configuration changes the template, so the workload rolls its pods.
pub const CONFIG_HASH_ANNOTATION: &str = "sipstack.io/config-hash";
/// Marks a Secret whose values the operator generates once, in the cluster, and never
/// overwrites afterwards.
pub const GENERATED_SECRET_ANNOTATION: &str = "sipstack.io/generated";
/// Stands for a value the operator generates in the cluster. `manifests` prints it;
/// the controllers replace it with random characters when they create the Secret.
pub const GENERATED_PLACEHOLDER: &str = "GENERATED-IN-CLUSTER-BY-SIPSTACK-OPERATOR";
/// Stands for a 256-bit key the operator generates in the cluster, written as base64
/// (the trunk key: Kamailio's crypto module takes its AES key that way).
pub const GENERATED_KEY_PLACEHOLDER: &str = "GENERATED-256-BIT-KEY-IN-CLUSTER-BY-SIPSTACK-OPERATOR";

/// `app.kubernetes.io/part-of` of every object.
pub const PART_OF: &str = "sipstack";

/// `app.kubernetes.io/name` of the operator's pods: the Helm chart's name
/// (charts/sipstack/templates/_helpers.tpl, "sipstack.selectorLabels"). The network
/// policies admit the operator by this label and [`OPERATOR_COMPONENT`].
pub const OPERATOR_APP: &str = "sipstack";
/// `app.kubernetes.io/component` of the operator's pods (the same chart template).
pub const OPERATOR_COMPONENT: &str = "operator";

/// The program a workload runs and its role in the platform, as the recommended
/// labels name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    /// `app.kubernetes.io/name`: the program (kamailio, freeswitch, patroni, pgbouncer).
    pub app: &'static str,
    /// `app.kubernetes.io/component`: its role (sip-edge, media, database, pooler).
    pub component: &'static str,
}

pub const KAMAILIO: Component = Component {
    app: "kamailio",
    component: "sip-edge",
};
pub const FREESWITCH: Component = Component {
    app: "freeswitch",
    component: "media",
};
pub const PATRONI: Component = Component {
    app: "patroni",
    component: "database",
};
pub const PGBOUNCER: Component = Component {
    app: "pgbouncer",
    component: "pooler",
};

impl Component {
    /// The five recommended labels of an object of this component of `instance`.
    pub fn labels(self, instance: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector_labels(instance);
        labels.insert("app.kubernetes.io/part-of".into(), PART_OF.into());
        labels.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
        labels
    }

    /// The labels a Service or workload selects its pods by: stable for the life of
    /// the object (a selector cannot change).
    pub fn selector_labels(self, instance: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), self.app.to_string()),
            (
                "app.kubernetes.io/instance".to_string(),
                instance.to_string(),
            ),
            (
                "app.kubernetes.io/component".to_string(),
                self.component.to_string(),
            ),
        ])
    }

    /// The labels every pod of this component carries, whatever resource it belongs
    /// to: [`Component::labels`] without the instance.
    pub fn any_instance_labels(self) -> BTreeMap<String, String> {
        let mut labels = self.labels("");
        labels.remove("app.kubernetes.io/instance");
        labels
    }

    pub fn selector(self, instance: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.selector_labels(instance)),
            ..Default::default()
        }
    }
}

/// The labels of the operator's pods that the network policies select them by: the
/// chart's selector labels without the release (any release of the chart).
pub fn operator_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            OPERATOR_APP.to_string(),
        ),
        (
            "app.kubernetes.io/component".to_string(),
            OPERATOR_COMPONENT.to_string(),
        ),
    ])
}

/// The owner reference of an object to the custom resource it was built from, or
/// `None` when the resource has no uid yet (read from a file, not from the API server).
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> Option<OwnerReference> {
    owner.controller_owner_ref(&())
}

/// Metadata of an object named `name` that `owner` owns, in the owner's namespace.
pub fn object_meta<K: Resource<DynamicType = ()>>(
    owner: &K,
    namespace: &str,
    name: impl Into<String>,
    component: Component,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.to_string()),
        labels: Some(component.labels(&owner.name_any())),
        owner_references: owner_reference(owner).map(|r| vec![r]),
        ..Default::default()
    }
}

/// Metadata of a pod template: the labels and the configuration hash.
pub fn pod_meta(component: Component, instance: &str, config_hash: &str) -> ObjectMeta {
    ObjectMeta {
        labels: Some(component.labels(instance)),
        annotations: Some(BTreeMap::from([(
            CONFIG_HASH_ANNOTATION.to_string(),
            config_hash.to_string(),
        )])),
        ..Default::default()
    }
}

/// One hash over several rendered files (path and content), for a workload that
/// mounts them all.
pub fn combined_hash<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut text = String::new();
    for (path, content) in files {
        text.push_str(path);
        text.push('\0');
        text.push_str(content);
        text.push('\0');
    }
    sipstack_render::config_hash(&text)
}
