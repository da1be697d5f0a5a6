//! Every combination of options the SipEdge spec allows renders a kamailio.cfg
//! that Kamailio 5.6 accepts (`kamailio -c`): the four algorithms, TLS on/off,
//! NAT on/off, flood protection on/off (and, alongside, scanner filter and
//! metrics switched with them).

use std::path::Path;
use std::process::Command;

use sipstack_crds::Platform;
use sipstack_render::{render_kamailio, KamailioRenderOptions};

const ALGORITHMS: [&str; 4] = ["roundRobin", "callIdHash", "weighted", "activeFailover"];

fn platform(algorithm: &str, tls: bool, nat: bool, flood: bool, cert_dir: &Path) -> String {
    let tls_listener = if tls {
        "\n    - {transport: tls, address: 127.0.0.1, port: 5061}"
    } else {
        ""
    };
    let tls_spec = if tls {
        format!(
            "\n  tls: {{certificateFile: {d}/tls.crt, privateKeyFile: {d}/tls.key}}",
            d = cert_dir.display()
        )
    } else {
        String::new()
    };
    // voicemail on unanswered calls rides along with NAT traversal: both halves are checked
    let voicemail = if nat {
        ", voicemailMediaPool: media"
    } else {
        ""
    };
    format!(
        r#"apiVersion: sipstack.io/v1alpha1
kind: PgCluster
metadata: {{name: pg}}
spec: {{instances: 1}}
---
apiVersion: sipstack.io/v1alpha1
kind: MediaPool
metadata: {{name: media}}
spec:
  setId: 3
  algorithm: {algorithm}
  cdr: {{enabled: false}}
  members: [{{uri: "sip:10.0.0.5:5080", weight: 3, priority: 10}}, {{uri: "sip:10.0.0.6:5080"}}]
---
apiVersion: sipstack.io/v1alpha1
kind: SipEdge
metadata: {{name: matrix}}
spec:
  domains: [example.com, example.org]
  database: {{pgCluster: pg}}
  mediaPools: [media]
  routing: {{defaultMediaPool: media{voicemail}}}
  listen:
    - {{transport: udp, address: 127.0.0.1, port: 5060, advertise: {{address: 203.0.113.7}}}}
    - {{transport: tcp, address: lo, port: 5060}}{tls_listener}{tls_spec}
  nat: {{enabled: {nat}}}
  floodProtection: {{enabled: {flood}, exemptNetworks: [10.0.0.0/8]}}
  scannerFilter: {{enabled: {flood}, extraUserAgents: [bad.bot]}}
  metrics: {{enabled: {nat}}}
  dispatcher: {{probing: {{extraAliveCodes: [404, 501]}}}}
"#
    )
}

fn kamailio_check(cfg: &Path) -> std::process::Output {
    Command::new("kamailio")
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .env(
            "SIPSTACK_DB_URL",
            "postgres://kamailio:secret@127.0.0.1:5432/sipstack",
        )
        .env("SIPSTACK_AUTH_SECRET", "0123456789abcdef")
        .output()
        .expect("kamailio is installed (apt-get install kamailio)")
}

#[test]
fn every_option_combination_passes_kamailio_check() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=edge.example.com",
        ])
        .arg("-keyout")
        .arg(dir.path().join("tls.key"))
        .arg("-out")
        .arg(dir.path().join("tls.crt"))
        .output()
        .expect("openssl is installed");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    let options = KamailioRenderOptions {
        runtime_dir: dir.path().display().to_string(),
        tls_files: None,
        ..Default::default()
    };
    let mut checked = 0;
    for algorithm in ALGORITHMS {
        for tls in [false, true] {
            for nat in [false, true] {
                for flood in [false, true] {
                    let yaml = platform(algorithm, tls, nat, flood, dir.path());
                    let platform = Platform::from_yaml(&yaml).unwrap();
                    let edge = platform.edge(None).unwrap();
                    let rendered =
                        render_kamailio(edge, &platform.pools_of(edge), &options).unwrap();
                    let cfg = dir
                        .path()
                        .join(format!("{algorithm}-{tls}-{nat}-{flood}.cfg"));
                    std::fs::write(&cfg, &rendered.text).unwrap();
                    let out = kamailio_check(&cfg);
                    assert!(
                        out.status.success(),
                        "kamailio -c refused {algorithm} tls={tls} nat={nat} flood={flood}:\n{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    assert_eq!(rendered.text.contains("#!define WITH_TLS"), tls);
                    assert_eq!(rendered.text.contains("#!define WITH_NAT"), nat);
                    assert_eq!(rendered.text.contains("#!define WITH_ANTIFLOOD"), flood);
                    assert_eq!(rendered.text.contains("route(TO_VOICEMAIL)"), nat);
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 32);
}

/// The check above would pass vacuously if `kamailio -c` accepted anything.
#[test]
fn kamailio_check_does_refuse_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = platform("roundRobin", false, true, true, dir.path());
    let platform = Platform::from_yaml(&yaml).unwrap();
    let edge = platform.edge(None).unwrap();
    let options = KamailioRenderOptions {
        runtime_dir: dir.path().display().to_string(),
        tls_files: None,
        ..Default::default()
    };
    let text = render_kamailio(edge, &platform.pools_of(edge), &options)
        .unwrap()
        .text;
    let broken = text.replace("route(REQINIT);", "route(REQINIT;");
    let cfg = dir.path().join("broken.cfg");
    std::fs::write(&cfg, broken).unwrap();
    assert!(!kamailio_check(&cfg).status.success());
}

#[test]
fn an_edge_without_media_pools_passes_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = "apiVersion: sipstack.io/v1alpha1\nkind: PgCluster\nmetadata: {name: pg}\nspec: {instances: 1}\n---\napiVersion: sipstack.io/v1alpha1\nkind: SipEdge\nmetadata: {name: bare}\nspec:\n  domains: [example.com]\n  database: {pgCluster: pg}\n";
    let platform = Platform::from_yaml(yaml).unwrap();
    let edge = platform.edge(None).unwrap();
    let options = KamailioRenderOptions {
        runtime_dir: dir.path().display().to_string(),
        tls_files: None,
        ..Default::default()
    };
    let text = render_kamailio(edge, &[], &options).unwrap().text;
    let cfg = dir.path().join("bare.cfg");
    std::fs::write(&cfg, text).unwrap();
    let out = kamailio_check(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
