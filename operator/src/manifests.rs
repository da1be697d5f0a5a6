//! Every object the operator would apply for the resources of a platform file, in
//! the order it applies them: PgClusters, then MediaPools, then SipEdges (each kind
//! after the ones it refers to).

use kube::ResourceExt;
use sipstack_crds::Platform;

use crate::error::BuildError;
use crate::object::Object;
use crate::{mediapool, pgcluster, sipedge};

/// The objects of every resource of `platform`. A resource without
/// `metadata.namespace` is placed in `default_namespace`; references are resolved
/// within a resource's namespace, as the API server would.
pub fn build_all(platform: &Platform, default_namespace: &str) -> Result<Vec<Object>, BuildError> {
    let ns = |namespace: Option<String>| namespace.unwrap_or_else(|| default_namespace.to_string());
    let cluster_in = |name: &str, namespace: &str| {
        platform
            .pg_clusters
            .iter()
            .find(|c| c.name_any() == name && ns(c.namespace()) == namespace)
    };
    let mut objects = Vec::new();
    for cluster in &platform.pg_clusters {
        let (name, namespace) = (cluster.name_any(), ns(cluster.namespace()));
        let edges: Vec<_> = platform
            .sip_edges
            .iter()
            .filter(|e| e.spec.database.pg_cluster == name && ns(e.namespace()) == namespace)
            .collect();
        let pools: Vec<_> = platform
            .media_pools
            .iter()
            .filter(|p| {
                p.spec.cdr.enabled
                    && p.spec
                        .cdr
                        .database
                        .as_ref()
                        .is_some_and(|db| db.pg_cluster == name)
                    && ns(p.namespace()) == namespace
            })
            .collect();
        objects.extend(pgcluster::build(cluster, &namespace, &edges, &pools)?);
    }
    for pool in &platform.media_pools {
        let (name, namespace) = (pool.name_any(), ns(pool.namespace()));
        let cdr_cluster = pool
            .spec
            .cdr
            .database
            .as_ref()
            .and_then(|db| cluster_in(&db.pg_cluster, &namespace));
        let edges: Vec<_> = platform
            .sip_edges
            .iter()
            .filter(|e| e.spec.media_pools.contains(&name) && ns(e.namespace()) == namespace)
            .collect();
        objects.extend(mediapool::build(pool, &namespace, cdr_cluster, &edges)?);
    }
    for edge in &platform.sip_edges {
        let namespace = ns(edge.namespace());
        let pools: Vec<_> = platform
            .media_pools
            .iter()
            .filter(|p| {
                edge.spec.media_pools.contains(&p.name_any()) && ns(p.namespace()) == namespace
            })
            .collect();
        let cluster = cluster_in(&edge.spec.database.pg_cluster, &namespace);
        objects.extend(sipedge::build(edge, &namespace, &pools, cluster)?);
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{example, ha_fixture};

    #[test]
    fn kinds_come_in_dependency_order_with_their_namespace() {
        let objects = build_all(&example(), "telephony").unwrap();
        let refs: Vec<String> = objects.iter().map(Object::reference).collect();
        let first = |prefix: &str| {
            refs.iter()
                .position(|r| r == prefix)
                .unwrap_or_else(|| panic!("{prefix} in {refs:?}"))
        };
        assert!(first("StatefulSet/pg") < first("StatefulSet/media-freeswitch"));
        assert!(first("StatefulSet/media-freeswitch") < first("Deployment/edge-kamailio"));
        let yaml = crate::object::to_yaml(&objects).unwrap();
        assert!(yaml.contains("namespace: telephony") && !yaml.contains("namespace: default"));
    }

    #[test]
    fn the_namespace_of_the_resource_wins() {
        let yaml = crate::object::to_yaml(&build_all(&ha_fixture(), "default").unwrap()).unwrap();
        assert!(yaml.contains("namespace: voice") && !yaml.contains("namespace: default"));
    }

    #[test]
    fn every_object_carries_the_recommended_labels_and_an_owner() {
        for object in build_all(&ha_fixture(), "default").unwrap() {
            let value = serde_json::to_value(&object).unwrap();
            let labels = &value["metadata"]["labels"];
            for key in ["name", "instance", "component", "part-of", "managed-by"] {
                assert!(
                    labels[format!("app.kubernetes.io/{key}")].is_string(),
                    "{} lacks {key}",
                    object.reference()
                );
            }
            assert_eq!(labels["app.kubernetes.io/part-of"], "sipstack");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "sipstack-operator");
            let owner = &value["metadata"]["ownerReferences"][0];
            assert_eq!(owner["controller"], true, "{}", object.reference());
            assert!(owner["uid"].as_str().is_some_and(|u| !u.is_empty()));
        }
    }

    #[test]
    fn generated_secrets_hold_placeholders_only() {
        for object in build_all(&ha_fixture(), "default").unwrap() {
            if let Object::Secret(s) = &object {
                assert!(object.is_generated_secret());
                assert!(s.data.is_none());
                let values = s.string_data.as_ref().unwrap();
                assert!(
                    values
                        .iter()
                        .any(|(_, v)| v == crate::meta::GENERATED_PLACEHOLDER
                            || v == crate::meta::GENERATED_KEY_PLACEHOLDER),
                    "{}",
                    object.reference()
                );
            }
        }
    }
}
