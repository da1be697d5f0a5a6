//! Fixtures and golden files of the builders' tests.

use std::path::PathBuf;

use sipstack_crds::Platform;

use crate::object::{to_yaml, Object};

fn read(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Gives every resource the uid the API server would, so owner references show.
fn with_uids(mut platform: Platform) -> Platform {
    for c in &mut platform.pg_clusters {
        c.metadata.uid = Some(format!(
            "uid-pgcluster-{}",
            c.metadata.name.clone().unwrap_or_default()
        ));
    }
    for p in &mut platform.media_pools {
        p.metadata.uid = Some(format!(
            "uid-mediapool-{}",
            p.metadata.name.clone().unwrap_or_default()
        ));
    }
    for e in &mut platform.sip_edges {
        e.metadata.uid = Some(format!(
            "uid-sipedge-{}",
            e.metadata.name.clone().unwrap_or_default()
        ));
    }
    platform
}

/// examples/platform.yaml: one PostgreSQL, one media pool, one edge.
pub fn example() -> Platform {
    with_uids(
        Platform::from_yaml(&read("../examples/platform.yaml"))
            .expect("the example platform loads"),
    )
}

/// tests/fixtures/ha-platform.yaml: three PostgreSQL members with PgBouncer, host
/// networking, TLS, a DaemonSet edge.
pub fn ha_fixture() -> Platform {
    with_uids(
        Platform::from_yaml(&read("tests/fixtures/ha-platform.yaml")).expect("the fixture loads"),
    )
}

/// Compares `objects` as YAML with `tests/golden/NAME`;
/// `SIPSTACK_UPDATE_GOLDEN=1 cargo test -p sipstack-operator` rewrites the file.
pub fn golden(name: &str, objects: &[Object]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let yaml = to_yaml(objects).expect("objects serialize");
    if std::env::var_os("SIPSTACK_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("golden files live in a directory"))
            .expect("golden directory");
        std::fs::write(&path, &yaml).expect("golden file written");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == yaml,
        "{} differs from what the builder makes now; check the difference and run \
         SIPSTACK_UPDATE_GOLDEN=1 cargo test -p sipstack-operator\n--- now:\n{yaml}",
        path.display()
    );
}
