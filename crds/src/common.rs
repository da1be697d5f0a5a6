//! Types shared by the three kinds.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::Validator;

/// The API group of every sipstack kind.
pub const GROUP: &str = "sipstack.io";
/// The version of the API types in this crate.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` as written in manifests.
pub const API_VERSION: &str = "sipstack.io/v1alpha1";

/// Status fields every kind reports.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, each with a reason a person can act on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How a PostgreSQL-backed component reaches its database.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRef {
    /// Name of the PgCluster (same namespace) that holds the platform database.
    #[schemars(length(min = 1, max = 63), pattern(crate::validation::NAME_PATTERN))]
    pub pg_cluster: String,
}

impl DatabaseRef {
    pub(crate) fn validate(&self, v: &mut Validator, path: &str) {
        v.name(&format!("{path}.pgCluster"), &self.pg_cluster);
    }
}

/// Settings that only matter when the operator runs the component on Kubernetes.
/// The local driver ignores them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Container image. Each kind documents its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(crate::validation::IMAGE_PATTERN))]
    pub image: Option<String>,
    /// CPU and memory requests and limits of the main container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Run the pods in the node's network namespace (for SIP and RTP on the node's own address).
    #[serde(default)]
    pub host_network: bool,
}

impl PodSettings {
    pub(crate) fn validate(&self, v: &mut Validator, path: &str) {
        if let Some(image) = &self.image {
            v.pattern(
                &format!("{path}.image"),
                image,
                crate::validation::IMAGE_PATTERN,
                "a container image reference",
                "use a reference such as registry.example.com/kamailio:5.6",
            );
        }
    }
}
