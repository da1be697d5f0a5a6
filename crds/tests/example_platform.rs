//! examples/platform.yaml (and platform-ha.yaml) are the files a user applies with
//! `kubectl apply -f` and runs with `sipctl local up -f`. Both paths must accept
//! them: the Rust loader, and the OpenAPI schema of the generated CRDs (what the API
//! server validates).

use std::path::PathBuf;

use serde::Deserialize;

const EXAMPLES: [&str; 2] = ["platform.yaml", "platform-ha.yaml"];

fn example_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

fn schema_of(kind: &str) -> serde_json::Value {
    let crd = sipstack_crds::crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    let schema = serde_json::to_value(
        &crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema,
    )
    .unwrap();
    schema
}

#[test]
fn the_example_platforms_load() {
    for name in EXAMPLES {
        let p = sipstack_crds::Platform::from_yaml(&example_file(name)).unwrap();
        assert_eq!(
            (p.pg_clusters.len(), p.media_pools.len(), p.sip_edges.len()),
            (1, 1, 1),
            "{name}"
        );
    }
}

#[test]
fn the_example_platforms_validate_against_the_crd_schemas() {
    for name in EXAMPLES {
        let mut checked = 0;
        for doc in serde_yaml::Deserializer::from_str(&example_file(name)) {
            let value = serde_json::to_value(serde_yaml::Value::deserialize(doc).unwrap()).unwrap();
            let kind = value["kind"].as_str().unwrap().to_string();
            let schema = schema_of(&kind);
            let validator = jsonschema::validator_for(&schema).unwrap();
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| format!("{} at {}", e, e.instance_path))
                .collect();
            assert!(errors.is_empty(), "{name} {kind}: {errors:#?}");
            checked += 1;
        }
        assert_eq!(checked, 3, "{name}");
    }
}

/// The schema check above must be able to fail.
#[test]
fn the_crd_schema_refuses_what_the_api_server_would() {
    let schema = schema_of("SipEdge");
    let validator = jsonschema::validator_for(&schema).unwrap();
    let bad = serde_json::json!({
        "apiVersion": "sipstack.io/v1alpha1", "kind": "SipEdge", "metadata": {"name": "e"},
        "spec": {"domains": ["bad domain\n#!x"], "database": {"pgCluster": "pg"},
                 "registrar": {"maxExpires": 0}, "dispatcher": {"failoverTimeoutMs": 5}}
    });
    let errors: Vec<String> = validator
        .iter_errors(&bad)
        .map(|e| e.instance_path.to_string())
        .collect();
    for path in [
        "/spec/domains/0",
        "/spec/registrar/maxExpires",
        "/spec/dispatcher/failoverTimeoutMs",
    ] {
        assert!(
            errors.iter().any(|e| e == path),
            "{path} not refused: {errors:?}"
        );
    }
}
