//! A hostile spec must never add a directive, route or module to kamailio.cfg.
//! Every string field that reaches the config gets each hostile value; the
//! renderer must refuse it with an error that names the field.

use sipstack_crds::{MediaPool, SipEdge};
use sipstack_render::{render_kamailio, KamailioRenderOptions, RenderError};

const HOSTILE: &[&str] = &[
    "example.com\"\n#!define WITH_DEBUG",
    "a\nloadmodule \"exec.so\"",
    "#!substdef \"/x/y/\"",
    "x; exec(\"id\")",
    "\"",
    "$(id)",
    "${IFS}",
    "a\r\nroute[X]{}",
    "a'b",
    "a\tb",
    "a\\nb",
];

fn edge_yaml() -> serde_yaml::Value {
    serde_yaml::from_str(
        r#"
apiVersion: sipstack.io/v1alpha1
kind: SipEdge
metadata: {name: edge}
spec:
  domains: [example.com]
  database: {pgCluster: pg}
  mediaPools: [media]
  routing: {defaultMediaPool: media}
  listen:
    - {transport: udp, address: 127.0.0.1, port: 5060, advertise: {address: 203.0.113.1}}
    - {transport: tls, address: 127.0.0.1, port: 5061}
  tls: {certificateFile: /etc/tls/tls.crt, privateKeyFile: /etc/tls/tls.key, caFile: /etc/tls/ca.crt, secretName: edge-tls}
  floodProtection: {exemptNetworks: [10.0.0.0/8]}
  scannerFilter: {extraUserAgents: [badbot]}
  rpc: {address: 127.0.0.1, allowFrom: [127.0.0.1/32]}
"#,
    )
    .unwrap()
}

fn pool() -> MediaPool {
    serde_yaml::from_str(
        "apiVersion: sipstack.io/v1alpha1\nkind: MediaPool\nmetadata: {name: media}\nspec: {setId: 1, cdr: {enabled: false}, members: [{uri: 'sip:127.0.0.2:5080'}]}\n",
    )
    .unwrap()
}

/// (YAML path to set, field path the error must name)
const FIELDS: &[(&[&str], &str)] = &[
    (&["metadata", "name"], "metadata.name"),
    (&["spec", "domains", "0"], "spec.domains[0]"),
    (&["spec", "mediaPools", "0"], "spec.mediaPools[0]"),
    (
        &["spec", "routing", "defaultMediaPool"],
        "spec.routing.defaultMediaPool",
    ),
    (
        &["spec", "listen", "0", "address"],
        "spec.listen[0].address",
    ),
    (
        &["spec", "listen", "0", "advertise", "address"],
        "spec.listen[0].advertise.address",
    ),
    (
        &["spec", "tls", "certificateFile"],
        "spec.tls.certificateFile",
    ),
    (
        &["spec", "tls", "privateKeyFile"],
        "spec.tls.privateKeyFile",
    ),
    (&["spec", "tls", "caFile"], "spec.tls.caFile"),
    (&["spec", "tls", "secretName"], "spec.tls.secretName"),
    (
        &["spec", "floodProtection", "exemptNetworks", "0"],
        "spec.floodProtection.exemptNetworks[0]",
    ),
    (
        &["spec", "scannerFilter", "extraUserAgents", "0"],
        "spec.scannerFilter.extraUserAgents[0]",
    ),
    (&["spec", "rpc", "address"], "spec.rpc.address"),
    (&["spec", "rpc", "allowFrom", "0"], "spec.rpc.allowFrom[0]"),
    (
        &["spec", "database", "pgCluster"],
        "spec.database.pgCluster",
    ),
];

fn set(value: &mut serde_yaml::Value, path: &[&str], new: &str) {
    let mut v = value;
    for key in path {
        v = match key.parse::<usize>() {
            Ok(i) => &mut v.as_sequence_mut().unwrap()[i],
            Err(_) => v
                .get_mut(*key)
                .unwrap_or_else(|| panic!("no {key} in fixture")),
        };
    }
    *v = serde_yaml::Value::String(new.to_string());
}

#[test]
fn the_fixture_renders() {
    let edge: SipEdge = serde_yaml::from_value(edge_yaml()).unwrap();
    let pool = pool();
    render_kamailio(&edge, &[&pool], &KamailioRenderOptions::default()).unwrap();
}

#[test]
fn hostile_values_are_refused_naming_the_field() {
    let pool = pool();
    let mut checked = 0;
    for (path, field) in FIELDS {
        for hostile in HOSTILE {
            let mut yaml = edge_yaml();
            set(&mut yaml, path, hostile);
            // The pool reference must keep resolving for the pool-name fields to be tested alone.
            let edge: SipEdge = serde_yaml::from_value(yaml).unwrap();
            match render_kamailio(&edge, &[&pool], &KamailioRenderOptions::default()) {
                Ok(r) => panic!("{field} = {hostile:?} was rendered:\n{}", r.text),
                Err(RenderError::Invalid(e)) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(field),
                        "{field} = {hostile:?}: the error does not name the field:\n{text}"
                    );
                    assert!(!text.contains('\n') || text.lines().count() >= 2, "{text}");
                }
                Err(other) => {
                    panic!("{field} = {hostile:?}: refused, but not as invalid input: {other}")
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, FIELDS.len() * HOSTILE.len());
}

#[test]
fn path_traversal_is_refused_in_file_paths() {
    let pool = pool();
    for (path, field) in FIELDS.iter().filter(|(_, f)| f.ends_with("File")) {
        let mut yaml = edge_yaml();
        set(&mut yaml, path, "/etc/tls/../../root/.ssh/id_rsa");
        let edge: SipEdge = serde_yaml::from_value(yaml).unwrap();
        let err = render_kamailio(&edge, &[&pool], &KamailioRenderOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
}

#[test]
fn render_options_are_checked_too() {
    let edge: SipEdge = serde_yaml::from_value(edge_yaml()).unwrap();
    let pool = pool();
    for hostile in HOSTILE {
        let options = KamailioRenderOptions {
            runtime_dir: hostile.to_string(),
            tls_files: None,
            ..Default::default()
        };
        let err = render_kamailio(&edge, &[&pool], &options)
            .unwrap_err()
            .to_string();
        assert!(err.contains("runtimeDir"), "{hostile:?}: {err}");
    }
}
