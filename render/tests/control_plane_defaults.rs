//! The control-plane socket's defaults depend on where the edge runs: loopback on
//! one host, the pod's addresses on Kubernetes (the operator calls every pod).
//! A spec that pins it to loopback cannot work under the operator and is refused.

use sipstack_crds::{MediaPool, Runtime, SipEdge};
use sipstack_render::{render_kamailio, KamailioRenderOptions};

fn edge(rpc: &str) -> SipEdge {
    serde_yaml::from_str(&format!(
        r#"
apiVersion: sipstack.io/v1alpha1
kind: SipEdge
metadata: {{name: edge}}
spec:
  domains: [example.com]
  database: {{pgCluster: pg}}
  mediaPools: [media]
  routing: {{defaultMediaPool: media}}
  {rpc}
"#
    ))
    .unwrap()
}

fn pool() -> MediaPool {
    serde_yaml::from_str(
        "apiVersion: sipstack.io/v1alpha1\nkind: MediaPool\nmetadata: {name: media}\nspec: {setId: 1, cdr: {enabled: false}, members: [{uri: 'sip:127.0.0.2:5080'}]}\n",
    )
    .unwrap()
}

fn render(edge: &SipEdge, runtime: Runtime) -> Result<String, String> {
    let options = KamailioRenderOptions {
        runtime,
        ..Default::default()
    };
    render_kamailio(edge, &[&pool()], &options)
        .map(|r| r.text)
        .map_err(|e| e.to_string())
}

#[test]
fn unset_rpc_fields_default_by_runtime() {
    let e = edge("");
    let local = render(&e, Runtime::Local).unwrap();
    assert!(local.contains("listen=tcp:127.0.0.1:5071\n"), "{local}");
    assert!(local.contains(r#"is_in_subnet("$si", "127.0.0.1/32")"#));

    let k8s = render(&e, Runtime::Kubernetes).unwrap();
    assert!(k8s.contains("listen=tcp:0.0.0.0:5071\n"));
    assert!(k8s.contains(r#"is_in_subnet("$si", "0.0.0.0/0,::/0")"#));
    // the token is checked on both
    assert!(local.contains("route(RPC_TOKEN);") && k8s.contains("route(RPC_TOKEN);"));
}

#[test]
fn a_loopback_control_plane_is_refused_on_kubernetes_only() {
    let pinned = edge("rpc: {address: 127.0.0.1}");
    render(&pinned, Runtime::Local).unwrap();
    let err = render(&pinned, Runtime::Kubernetes).unwrap_err();
    assert!(
        err.contains("spec.rpc.address") && err.contains("operator"),
        "{err}"
    );

    let loopback_only = edge("rpc: {allowFrom: [127.0.0.1/32, 127.0.0.0/8]}");
    render(&loopback_only, Runtime::Local).unwrap();
    let err = render(&loopback_only, Runtime::Kubernetes).unwrap_err();
    assert!(err.contains("spec.rpc.allowFrom"), "{err}");

    let explicit = edge("rpc: {address: 0.0.0.0, allowFrom: [10.0.0.0/8]}");
    let k8s = render(&explicit, Runtime::Kubernetes).unwrap();
    assert!(k8s.contains(r#"is_in_subnet("$si", "10.0.0.0/8")"#));
}
