//! The CRD YAML under crds/generated/ is generated from the Rust types. This test
//! regenerates it and fails on any difference, so the committed files never drift.
//! To update them after changing a type: `SIPSTACK_UPDATE_CRDS=1 cargo test -p sipstack-crds`.

use std::path::PathBuf;

#[test]
fn committed_crds_match_the_types() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // the same files twice: for `kubectl apply` and inside the Helm chart
    let dirs = [root.join("generated"), root.join("../charts/sipstack/crds")];
    let update = std::env::var_os("SIPSTACK_UPDATE_CRDS").is_some();
    let mut stale = Vec::new();
    for (dir, (name, yaml)) in dirs
        .iter()
        .flat_map(|d| sipstack_crds::crd_files().into_iter().map(move |f| (d, f)))
    {
        let path = dir.join(&name);
        if update {
            std::fs::write(&path, &yaml).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(committed) if committed == yaml => {}
            _ => stale.push(path.display().to_string()),
        }
    }
    assert!(
        stale.is_empty(),
        "CRD files are out of date: {stale:?}; regenerate with SIPSTACK_UPDATE_CRDS=1 cargo test -p sipstack-crds --test generated_crds"
    );
}

#[test]
fn every_field_has_a_description() {
    // `kubectl explain` shows these; a field without one is a field nobody can look up.
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                let p = format!("{path}.{k}");
                let standard = matches!(
                    k.as_str(),
                    "apiVersion" | "kind" | "metadata" | "status" | "spec"
                );
                if v.get("description").is_none()
                    && !standard
                    && !p.contains(".resources.")
                    && !p.contains(".conditions")
                {
                    missing.push(p.clone());
                }
                walk(&p, v, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in sipstack_crds::crds() {
        let v = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        walk(&crd.spec.names.kind, &v["openAPIV3Schema"], &mut missing);
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}
