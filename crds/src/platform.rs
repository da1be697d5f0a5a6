//! A whole platform declared in one multi-document YAML file: the same file
//! `kubectl apply -f` takes and the local driver runs.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::common::API_VERSION;
use crate::mediapool::MediaPool;
use crate::pgcluster::PgCluster;
use crate::sipedge::SipEdge;
use crate::validation::{ValidationErrors, Validator};

/// Why a platform file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("document {document}: not valid YAML: {message}")]
    Yaml { document: usize, message: String },
    #[error("document {document}: {message}")]
    Document { document: usize, message: String },
    #[error("document {document} ({object}): unknown field{} {}; check the spelling against `kubectl explain {kind}.spec` or the CRDs in crds/generated/", if .fields.len() > 1 { "s" } else { "" }, .fields.join(", "))]
    UnknownFields {
        document: usize,
        object: String,
        kind: String,
        fields: Vec<String>,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ValidationErrors>),
    #[error("the file declares no SipEdge")]
    NoEdge,
    #[error("no SipEdge named {name:?} in the file (it has: {available})")]
    EdgeNotFound { name: String, available: String },
    #[error("the file declares several SipEdges ({available}); choose one with --name")]
    EdgeAmbiguous { available: String },
}

/// Every sipstack object of one file, in file order per kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Platform {
    pub pg_clusters: Vec<PgCluster>,
    pub media_pools: Vec<MediaPool>,
    pub sip_edges: Vec<SipEdge>,
}

impl Platform {
    /// Parses and validates a multi-document YAML file. Documents of other API groups
    /// (Secrets, Namespaces, ...) are skipped: the file may be a full `kubectl apply` bundle.
    pub fn from_yaml(text: &str) -> Result<Self, PlatformError> {
        let mut platform = Platform::default();
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document = index + 1;
            let value = Value::deserialize(doc).map_err(|e| PlatformError::Yaml {
                document,
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let api_version = value
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let kind = value
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if api_version.is_empty() || kind.is_empty() {
                return Err(PlatformError::Document {
                    document,
                    message: "has no apiVersion or kind; every document needs both (e.g. apiVersion: sipstack.io/v1alpha1, kind: SipEdge)".into(),
                });
            }
            if !api_version.starts_with("sipstack.io/") {
                continue;
            }
            if api_version != API_VERSION {
                return Err(PlatformError::Document {
                    document,
                    message: format!("apiVersion {api_version:?} is not served by this version of sipstack; use {API_VERSION}"),
                });
            }
            match kind.as_str() {
                "PgCluster" => platform.pg_clusters.push(parse(document, &kind, value)?),
                "MediaPool" => platform.media_pools.push(parse(document, &kind, value)?),
                "SipEdge" => platform.sip_edges.push(parse(document, &kind, value)?),
                other => {
                    return Err(PlatformError::Document {
                        document,
                        message: format!("kind {other:?} is not a sipstack kind; use PgCluster, MediaPool or SipEdge"),
                    })
                }
            }
        }
        platform.validate()?;
        Ok(platform)
    }

    /// Checks every object and the references between them.
    pub fn validate(&self) -> Result<(), PlatformError> {
        let mut all = Vec::new();
        let mut names: BTreeMap<(&str, String), usize> = BTreeMap::new();

        for pg in &self.pg_clusters {
            let mut v = Validator::new();
            v.name("metadata.name", &pg.name_any());
            *names.entry(("PgCluster", pg.name_any())).or_default() += 1;
            pg.spec.validate(&mut v);
            collect(&mut all, v, format!("PgCluster/{}", pg.name_any()));
        }
        for pool in &self.media_pools {
            let mut v = Validator::new();
            v.name("metadata.name", &pool.name_any());
            *names.entry(("MediaPool", pool.name_any())).or_default() += 1;
            pool.spec.validate(&mut v);
            if let Some(db) = &pool.spec.cdr.database {
                if self.pg_cluster(&db.pg_cluster).is_none() {
                    v.error(
                        "spec.cdr.database.pgCluster",
                        format!("no PgCluster named {:?} is declared", db.pg_cluster),
                        "declare it in the same file or correct the name",
                    );
                }
            }
            collect(&mut all, v, format!("MediaPool/{}", pool.name_any()));
        }
        for edge in &self.sip_edges {
            let mut v = Validator::new();
            v.name("metadata.name", &edge.name_any());
            *names.entry(("SipEdge", edge.name_any())).or_default() += 1;
            edge.spec.validate(&mut v);
            if self.pg_cluster(&edge.spec.database.pg_cluster).is_none() {
                v.error(
                    "spec.database.pgCluster",
                    format!(
                        "no PgCluster named {:?} is declared",
                        edge.spec.database.pg_cluster
                    ),
                    "declare it in the same file or correct the name",
                );
            }
            let mut set_ids: BTreeMap<i32, &str> = BTreeMap::new();
            for (i, name) in edge.spec.media_pools.iter().enumerate() {
                match self.media_pool(name) {
                    None => v.error(
                        format!("spec.mediaPools[{i}]"),
                        format!("no MediaPool named {name:?} is declared"),
                        "declare it in the same file or correct the name",
                    ),
                    Some(pool) => {
                        if let Some(other) = set_ids.insert(pool.spec.set_id, name) {
                            v.error(
                                format!("spec.mediaPools[{i}]"),
                                format!(
                                    "MediaPools {other:?} and {name:?} both use setId {}",
                                    pool.spec.set_id
                                ),
                                "give each pool of one edge its own spec.setId",
                            );
                        }
                    }
                }
            }
            collect(&mut all, v, format!("SipEdge/{}", edge.name_any()));
        }
        for ((kind, name), count) in names {
            if count > 1 {
                let mut v = Validator::new();
                v.error(
                    "metadata.name",
                    format!("{count} objects are named {name:?}"),
                    "give each object of a kind its own name",
                );
                collect(&mut all, v, format!("{kind}/{name}"));
            }
        }
        if all.is_empty() {
            Ok(())
        } else {
            Err(PlatformError::Invalid(all))
        }
    }

    pub fn pg_cluster(&self, name: &str) -> Option<&PgCluster> {
        self.pg_clusters.iter().find(|p| p.name_any() == name)
    }

    pub fn media_pool(&self, name: &str) -> Option<&MediaPool> {
        self.media_pools.iter().find(|p| p.name_any() == name)
    }

    /// The SipEdge named `name`, or the only one when no name is given.
    pub fn edge(&self, name: Option<&str>) -> Result<&SipEdge, PlatformError> {
        let available = || {
            self.sip_edges
                .iter()
                .map(|e| e.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            Some(n) => self
                .sip_edges
                .iter()
                .find(|e| e.name_any() == n)
                .ok_or_else(|| PlatformError::EdgeNotFound {
                    name: n.to_string(),
                    available: available(),
                }),
            None => match self.sip_edges.as_slice() {
                [] => Err(PlatformError::NoEdge),
                [one] => Ok(one),
                _ => Err(PlatformError::EdgeAmbiguous {
                    available: available(),
                }),
            },
        }
    }

    /// The MediaPools an edge uses, in the edge's order. The platform was validated, so
    /// every name resolves.
    pub fn pools_of(&self, edge: &SipEdge) -> Vec<&MediaPool> {
        edge.spec
            .media_pools
            .iter()
            .filter_map(|n| self.media_pool(n))
            .collect()
    }
}

fn collect(all: &mut Vec<ValidationErrors>, v: Validator, object: String) {
    if let Err(e) = v.finish(object) {
        all.push(e);
    }
}

fn parse<T: DeserializeOwned + Serialize>(
    document: usize,
    kind: &str,
    value: Value,
) -> Result<T, PlatformError> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("(no name)")
        .to_string();
    let object = format!("{kind}/{name}");
    let parsed: T =
        serde_path_to_error::deserialize(value.clone()).map_err(|e| PlatformError::Document {
            document,
            message: format!("{object}: {}: {}", e.path(), e.inner()),
        })?;
    // Anything in the input that does not come back out was not understood.
    let echoed = serde_yaml::to_value(&parsed).map_err(|e| PlatformError::Document {
        document,
        message: format!("{object}: {e}"),
    })?;
    let mut fields = Vec::new();
    unknown_fields(&value, &echoed, "", &mut fields);
    if !fields.is_empty() {
        return Err(PlatformError::UnknownFields {
            document,
            object,
            kind: kind.to_lowercase(),
            fields,
        });
    }
    Ok(parsed)
}

/// Paths of mapping keys present in `input` but absent from `echoed`.
fn unknown_fields(input: &Value, echoed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, echoed) {
        (Value::Mapping(i), Value::Mapping(e)) => {
            for (k, v) in i {
                let key = k
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{k:?}"));
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match e.get(k) {
                    Some(ev) => unknown_fields(v, ev, &child, out),
                    None if v.is_null() => {}
                    None => out.push(child),
                }
            }
        }
        (Value::Sequence(i), Value::Sequence(e)) => {
            for (n, (iv, ev)) in i.iter().zip(e).enumerate() {
                unknown_fields(iv, ev, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
apiVersion: sipstack.io/v1alpha1
kind: PgCluster
metadata: {name: pg}
spec: {instances: 1}
---
apiVersion: sipstack.io/v1alpha1
kind: MediaPool
metadata: {name: media}
spec:
  setId: 1
  cdr: {database: {pgCluster: pg}}
---
apiVersion: sipstack.io/v1alpha1
kind: SipEdge
metadata: {name: edge}
spec:
  domains: [example.com]
  database: {pgCluster: pg}
  mediaPools: [media]
"#;

    #[test]
    fn minimal_platform_parses_with_defaults() {
        let p = Platform::from_yaml(MINIMAL).unwrap();
        assert_eq!(p.sip_edges.len(), 1);
        let edge = p.edge(None).unwrap();
        assert_eq!(edge.spec.listen.len(), 2);
        assert_eq!(edge.spec.registrar.max_expires, 3600);
        assert_eq!(p.pools_of(edge)[0].spec.set_id, 1);
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = MINIMAL.replace(
            "domains: [example.com]",
            "domains: [example.com]\n  registrar: {maxExpire: 10}",
        );
        let err = Platform::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("spec.registrar.maxExpire"), "{err}");
        assert!(err.contains("document 3 (SipEdge/edge)"), "{err}");
    }

    #[test]
    fn unknown_fields_inside_flattened_structs_are_named() {
        let text = MINIMAL.replace("setId: 1", "setId: 1\n  imag: x");
        let err = Platform::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("spec.imag"), "{err}");
    }

    #[test]
    fn dangling_references_are_errors() {
        let text = MINIMAL.replace("mediaPools: [media]", "mediaPools: [medai]");
        let err = Platform::from_yaml(&text).unwrap_err().to_string();
        assert!(
            err.contains("SipEdge/edge")
                && err.contains("spec.mediaPools[0]")
                && err.contains("\"medai\""),
            "{err}"
        );
    }

    #[test]
    fn other_kinds_are_skipped_and_foreign_sipstack_kinds_refused() {
        let text = format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: s}}\n---\n{MINIMAL}");
        assert!(Platform::from_yaml(&text).is_ok());
        let text = format!(
            "{MINIMAL}---\napiVersion: sipstack.io/v1alpha1\nkind: Trunk\nmetadata: {{name: t}}\n"
        );
        assert!(Platform::from_yaml(&text)
            .unwrap_err()
            .to_string()
            .contains("\"Trunk\""));
    }

    #[test]
    fn wrong_types_name_the_object() {
        let text = MINIMAL.replace("setId: 1", "setId: one");
        let err = Platform::from_yaml(&text).unwrap_err().to_string();
        assert!(
            err.contains("document 2") && err.contains("MediaPool/media") && err.contains("setId"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_set_ids_on_one_edge_are_refused() {
        let text = MINIMAL.replace(
            "mediaPools: [media]",
            "mediaPools: [media, media2]",
        ) + "---\napiVersion: sipstack.io/v1alpha1\nkind: MediaPool\nmetadata: {name: media2}\nspec: {setId: 1, cdr: {enabled: false}}\n";
        let err = Platform::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("both use setId 1"), "{err}");
    }
}

#[cfg(test)]
mod listener_tests {
    use super::*;

    fn edge_with(listen: &str) -> String {
        format!(
            "apiVersion: sipstack.io/v1alpha1\nkind: PgCluster\nmetadata: {{name: pg}}\nspec: {{instances: 1}}\n---\napiVersion: sipstack.io/v1alpha1\nkind: SipEdge\nmetadata: {{name: edge}}\nspec:\n  domains: [example.com]\n  database: {{pgCluster: pg}}\n  listen:\n{listen}"
        )
    }

    fn errors(listen: &str) -> String {
        match Platform::from_yaml(&edge_with(listen)) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_wildcard_address_needs_advertise() {
        let err = errors("    - {transport: udp, address: 0.0.0.0, port: 5060}\n");
        assert!(
            err.contains("spec.listen[0].address") && err.contains("advertise"),
            "{err}"
        );
        assert_eq!(errors("    - {transport: udp, address: 0.0.0.0, port: 5060, advertise: {address: 203.0.113.1}}\n"), "");
        assert_eq!(
            errors("    - {transport: udp, address: eth0, port: 5060}\n"),
            ""
        );
    }

    #[test]
    fn a_udp_listener_is_required() {
        let err = errors("    - {transport: tcp, address: 127.0.0.1, port: 5060}\n");
        assert!(err.contains("spec.listen") && err.contains("UDP"), "{err}");
    }

    #[test]
    fn overlapping_sockets_are_refused() {
        for listen in [
            "    - {transport: udp, address: 127.0.0.1, port: 5060}\n    - {transport: tcp, address: 127.0.0.1, port: 5060}\n    - {transport: tls, address: 127.0.0.1, port: 5060}\n",
            "    - {transport: udp, address: 127.0.0.1, port: 5060}\n    - {transport: udp, address: 0.0.0.0, port: 5060, advertise: {address: 203.0.113.1}}\n",
            "    - {transport: udp, address: \"::1\", port: 5060}\n    - {transport: udp, address: \"0:0::1\", port: 5060}\n",
        ] {
            let err = errors(listen);
            assert!(err.contains("overlaps an earlier listener"), "{listen}: {err}");
        }
    }

    #[test]
    fn interface_names_are_checked() {
        let err = errors("    - {transport: udp, address: \"eth0; loadmodule\", port: 5060}\n");
        assert!(err.contains("spec.listen[0].address"), "{err}");
    }
}
