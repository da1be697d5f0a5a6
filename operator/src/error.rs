//! Why the objects of a custom resource could not be built.

use sipstack_render::RenderError;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A resource names another one that does not exist (yet) in its namespace.
    #[error("{object} refers to {kind} {name:?} ({field}), which does not exist in namespace {namespace:?}; create it or correct the name")]
    MissingReference {
        object: String,
        field: String,
        kind: &'static str,
        name: String,
        namespace: String,
    },
    /// The product configuration could not be rendered from the spec.
    #[error("{object}: {source}")]
    Render {
        object: String,
        #[source]
        source: RenderError,
    },
    /// The name of an object built from the resource would be too long for Kubernetes.
    #[error(
        "{object}: the name {name:?} would be longer than {max} characters; shorten metadata.name"
    )]
    NameTooLong {
        object: String,
        name: String,
        max: usize,
    },
    /// The resource has no namespace and none was given.
    #[error("{object} has no namespace")]
    NoNamespace { object: String },
}

impl BuildError {
    /// The reason a status condition gives for this error (CamelCase, as Kubernetes
    /// conditions name reasons).
    pub fn reason(&self) -> &'static str {
        match self {
            BuildError::MissingReference { .. } => "MissingReference",
            BuildError::Render { .. } => "InvalidSpec",
            BuildError::NameTooLong { .. } => "NameTooLong",
            BuildError::NoNamespace { .. } => "NoNamespace",
        }
    }
}
