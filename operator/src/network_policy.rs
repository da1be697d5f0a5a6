//! NetworkPolicies of the media nodes, PostgreSQL and PgBouncer: each admits, port by
//! port, the pods that have to connect, and nothing else reaches the selected pods.
//! They restrict ingress only; where the pods connect to is not limited.
//!
//! What a NetworkPolicy cannot restrict, by Kubernetes' definition:
//! * connections within the pod (loopback: fs_cli to the event socket) and from the
//!   node the pod runs on (the kubelet's probes);
//! * pods with `hostNetwork: true`: no policy selects them, so a MediaPool or
//!   PgCluster on the nodes' network is as open as without its policy;
//! * and as clients, pods with `hostNetwork: true` connect from their node's address,
//!   which no pod selector matches on most network plugins. A port such a client
//!   needs is therefore open to every source ([`Source::Anywhere`]): closing it would
//!   cut the client off.
//!
//! A cluster without a network plugin that enforces NetworkPolicy ignores them all.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::meta::{object_meta, operator_labels, Component, FREESWITCH, KAMAILIO};

/// Who may connect to a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// The Kamailio pods of every SipEdge in the policy's namespace.
    Edges,
    /// The FreeSWITCH pods of every MediaPool in the policy's namespace.
    MediaNodes,
    /// The operator's pods, in whichever namespace the chart installed it.
    Operator,
    /// The pods of `component` of the resource named `instance`, in the policy's
    /// namespace (a cluster's own Patroni members, its PgBouncer).
    PodsOf(Component, &'a str),
    /// Every address: what the port is for (RTP from phones and carriers), or a port
    /// that clients on the nodes' network use.
    Anywhere,
}

impl Source<'_> {
    /// The peer of an ingress rule; `None` for [`Source::Anywhere`], which is a rule
    /// without peers.
    fn peer(self) -> Option<NetworkPolicyPeer> {
        let pods = |labels| LabelSelector {
            match_labels: Some(labels),
            ..Default::default()
        };
        match self {
            Source::Edges => Some(NetworkPolicyPeer {
                pod_selector: Some(pods(KAMAILIO.any_instance_labels())),
                ..Default::default()
            }),
            Source::MediaNodes => Some(NetworkPolicyPeer {
                pod_selector: Some(pods(FREESWITCH.any_instance_labels())),
                ..Default::default()
            }),
            Source::Operator => Some(NetworkPolicyPeer {
                // every namespace: the operator is installed in its own
                namespace_selector: Some(LabelSelector::default()),
                pod_selector: Some(pods(operator_labels())),
                ..Default::default()
            }),
            Source::PodsOf(component, instance) => Some(NetworkPolicyPeer {
                pod_selector: Some(component.selector(instance)),
                ..Default::default()
            }),
            Source::Anywhere => None,
        }
    }
}

/// One port of `protocol` (`TCP`, `UDP`).
pub fn port(protocol: &str, port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.into()),
        port: Some(IntOrString::Int(port.into())),
        end_port: None,
    }
}

/// The ports `first` to `last` (both included) of `protocol`.
pub fn port_range(protocol: &str, first: u16, last: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        end_port: (last > first).then_some(last.into()),
        ..port(protocol, first)
    }
}

/// Admits `sources` to `ports`. A rule with [`Source::Anywhere`] among its sources
/// admits every source. `sources` must not be empty: Kubernetes reads an empty `from`
/// as every source too.
pub fn rule(ports: Vec<NetworkPolicyPort>, sources: &[Source<'_>]) -> NetworkPolicyIngressRule {
    debug_assert!(
        !sources.is_empty(),
        "a rule without sources admits everyone"
    );
    let from = sources.iter().map(|s| s.peer()).collect::<Option<Vec<_>>>();
    NetworkPolicyIngressRule {
        ports: Some(ports),
        from,
    }
}

/// The NetworkPolicy `name` of `owner`'s pods of `component`: only what `rules` admit
/// reaches them.
pub fn ingress_policy<K: Resource<DynamicType = ()>>(
    owner: &K,
    namespace: &str,
    name: &str,
    component: Component,
    rules: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: object_meta(owner, namespace, name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(component.selector(&owner.name_any())),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            egress: None,
        }),
    }
}

/// Test views of a built policy: the rules as (ports, sources) in words.
#[cfg(test)]
pub(crate) mod inspect {
    use super::*;
    use crate::object::Object;

    /// The NetworkPolicy `name` among `objects`.
    pub fn find<'a>(objects: &'a [Object], name: &str) -> &'a NetworkPolicy {
        objects
            .iter()
            .find_map(|o| match o {
                Object::NetworkPolicy(p) if o.name() == name => Some(p),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no NetworkPolicy/{name}"))
    }

    /// The labels the policy selects its pods by.
    pub fn selected(policy: &NetworkPolicy) -> Vec<(String, String)> {
        let spec = policy.spec.as_ref().expect("a spec");
        spec.pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// Each rule as `(["UDP 5080", "UDP 16384-32767"], ["kamailio", "operator"])`:
    /// ports, and the sources by `app.kubernetes.io/name` (`*` for every source,
    /// `…@any-namespace` for a peer in every namespace).
    pub fn rules(policy: &NetworkPolicy) -> Vec<(Vec<String>, Vec<String>)> {
        let spec = policy.spec.as_ref().expect("a spec");
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        spec.ingress
            .iter()
            .flatten()
            .map(|rule| {
                let ports = rule
                    .ports
                    .iter()
                    .flatten()
                    .map(|p| {
                        let first = match &p.port {
                            Some(IntOrString::Int(n)) => n.to_string(),
                            other => panic!("a numbered port, not {other:?}"),
                        };
                        let protocol = p.protocol.clone().unwrap_or_default();
                        match p.end_port {
                            Some(last) => format!("{protocol} {first}-{last}"),
                            None => format!("{protocol} {first}"),
                        }
                    })
                    .collect();
                let sources = match &rule.from {
                    None => vec!["*".to_string()],
                    Some(peers) => peers.iter().map(source_name).collect(),
                };
                (ports, sources)
            })
            .collect()
    }

    fn source_name(peer: &NetworkPolicyPeer) -> String {
        assert!(peer.ip_block.is_none());
        let labels = peer
            .pod_selector
            .as_ref()
            .and_then(|s| s.match_labels.clone())
            .unwrap_or_default();
        let mut name = labels
            .get("app.kubernetes.io/name")
            .cloned()
            .unwrap_or_else(|| format!("{labels:?}"));
        if let Some(instance) = labels.get("app.kubernetes.io/instance") {
            name = format!("{name}/{instance}");
        }
        match &peer.namespace_selector {
            Some(all) if *all == LabelSelector::default() => format!("{name}@any-namespace"),
            Some(other) => panic!("a namespace selector other than all: {other:?}"),
            None => name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{OPERATOR_APP, OPERATOR_COMPONENT, PART_OF, PATRONI};

    #[test]
    fn edges_are_the_kamailio_pods_of_any_edge_in_the_namespace() {
        let peer = Source::Edges.peer().unwrap();
        assert!(peer.namespace_selector.is_none() && peer.ip_block.is_none());
        let labels = peer.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "kamailio");
        assert_eq!(labels["app.kubernetes.io/component"], "sip-edge");
        assert_eq!(labels["app.kubernetes.io/part-of"], PART_OF);
        assert!(!labels.contains_key("app.kubernetes.io/instance"));
        // the labels every edge pod carries (meta::pod_meta)
        let pod = KAMAILIO.labels("any-edge");
        assert!(labels.iter().all(|(k, v)| pod.get(k) == Some(v)));
    }

    #[test]
    fn the_operator_is_found_by_the_charts_labels_in_every_namespace() {
        let peer = Source::Operator.peer().unwrap();
        assert_eq!(peer.namespace_selector, Some(LabelSelector::default()));
        assert_eq!(
            serde_json::to_value(&peer.namespace_selector).unwrap(),
            serde_json::json!({})
        );
        let labels = peer.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(labels.len(), 2, "no release instance: {labels:?}");
        assert_eq!(labels["app.kubernetes.io/name"], OPERATOR_APP);
        assert_eq!(labels["app.kubernetes.io/component"], OPERATOR_COMPONENT);
    }

    #[test]
    fn own_pods_are_selected_by_instance() {
        let peer = Source::PodsOf(PATRONI, "pg").peer().unwrap();
        let labels = peer.pod_selector.unwrap().match_labels.unwrap();
        assert_eq!(labels, PATRONI.selector_labels("pg"));
    }

    #[test]
    fn anywhere_among_the_sources_admits_every_source() {
        let open = rule(vec![port("TCP", 5432)], &[Source::Edges, Source::Anywhere]);
        assert!(open.from.is_none());
        let closed = rule(vec![port("TCP", 5432)], &[Source::Edges, Source::Operator]);
        assert_eq!(closed.from.map(|f| f.len()), Some(2));
    }

    #[test]
    fn a_range_of_one_port_has_no_end() {
        assert_eq!(port_range("UDP", 16384, 32767).end_port, Some(32767));
        assert_eq!(port_range("UDP", 20000, 20000).end_port, None);
    }
}
