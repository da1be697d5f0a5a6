//! Desired members of a pool, from whatever knows them: the static members of a
//! MediaPool, or the EndpointSlices of the pool's Service.

use std::collections::BTreeMap;

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};

/// One media node a pool should have, and whether it may take new calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `sip:IP:port` as the dispatcher table holds it.
    pub uri: String,
    /// The dispatcher set (the MediaPool's setId).
    pub set_id: i32,
    /// Share of calls with the weighted algorithm, 1 to 100.
    pub weight: i32,
    /// Order with the active-failover algorithm.
    pub priority: i32,
    /// Passed its readiness check: it may get calls.
    pub ready: bool,
    /// Shutting down: it finishes its calls and gets no new ones.
    pub terminating: bool,
}

impl Member {
    /// A member that takes calls (a static member, a ready pod).
    pub fn serving(uri: impl Into<String>, set_id: i32, weight: i32, priority: i32) -> Self {
        Self {
            uri: uri.into(),
            set_id,
            weight,
            priority,
            ready: true,
            terminating: false,
        }
    }

    /// Whether new calls may go to it.
    pub fn takes_calls(&self) -> bool {
        self.ready && !self.terminating
    }
}

/// Which port of an EndpointSlice is the media nodes' SIP port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipPort {
    /// The port with this name (e.g. `sip`); slices without it are skipped.
    Named(String),
    /// This port number, whatever the slices list.
    Number(u16),
}

/// How the endpoints of one Service become members of one set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceMapping {
    pub set_id: i32,
    pub port: SipPort,
    pub weight: i32,
    pub priority: i32,
}

/// The members of one Service from all of its EndpointSlices.
///
/// A large or dual-stack Service has several slices, and a pod that moves between
/// slices may briefly be listed in two; every slice adds its endpoints and none
/// replaces another's. When the same address is listed twice, the entry that can
/// take calls wins (ready and not terminating), then a terminating one: a pod is
/// never taken out of service because a stale copy of it says so.
///
/// Conditions follow the Kubernetes API: an unset `ready` means ready, an unset
/// `terminating` means not terminating. `serving` is not needed: a terminating
/// endpoint takes no new calls whether or not it still serves, and a
/// non-terminating one serves exactly when it is ready.
pub fn members_from_slices(slices: &[EndpointSlice], mapping: &SliceMapping) -> Vec<Member> {
    let mut by_uri: BTreeMap<String, Member> = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice_port(slice, &mapping.port) else {
            tracing::debug!(
                slice = ?slice.metadata.name,
                "EndpointSlice has no SIP port; skipped"
            );
            continue;
        };
        let ipv6 = slice.address_type == "IPv6";
        for endpoint in slice.endpoints.iter().flatten() {
            let (ready, terminating) = conditions(endpoint);
            // Kubernetes lists one address per endpoint today; take each anyway
            for address in &endpoint.addresses {
                let uri = if ipv6 {
                    format!("sip:[{address}]:{port}")
                } else {
                    format!("sip:{address}:{port}")
                };
                let candidate = Member {
                    uri: uri.clone(),
                    set_id: mapping.set_id,
                    weight: mapping.weight,
                    priority: mapping.priority,
                    ready,
                    terminating,
                };
                match by_uri.get(&uri) {
                    Some(seen) if rank(seen) >= rank(&candidate) => {}
                    _ => {
                        by_uri.insert(uri, candidate);
                    }
                }
            }
        }
    }
    by_uri.into_values().collect()
}

/// Merges members listed more than once (same set and URI) as
/// [`members_from_slices`] does: the one that takes calls wins.
pub fn merge_members(members: &[Member]) -> Vec<Member> {
    let mut by_key: BTreeMap<(i32, &str), &Member> = BTreeMap::new();
    for m in members {
        let key = (m.set_id, m.uri.as_str());
        match by_key.get(&key) {
            Some(seen) if rank(seen) >= rank(m) => {}
            _ => {
                by_key.insert(key, m);
            }
        }
    }
    by_key.into_values().cloned().collect()
}

/// Which of two listings of one address to believe.
fn rank(m: &Member) -> u8 {
    match (m.takes_calls(), m.terminating) {
        (true, _) => 2,
        (false, true) => 1,
        (false, false) => 0,
    }
}

fn conditions(endpoint: &Endpoint) -> (bool, bool) {
    let c = endpoint.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    (ready, terminating)
}

fn slice_port(slice: &EndpointSlice, wanted: &SipPort) -> Option<u16> {
    match wanted {
        SipPort::Number(n) => Some(*n),
        SipPort::Named(name) => slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    pub(crate) fn endpoint(ip: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready,
                serving: ready,
                terminating,
            }),
            ..Default::default()
        }
    }

    pub(crate) fn slice(name: &str, endpoints: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ports: Some(vec![EndpointPort {
                name: Some("sip".into()),
                port: Some(5080),
                protocol: Some("UDP".into()),
                app_protocol: None,
            }]),
        }
    }

    fn mapping() -> SliceMapping {
        SliceMapping {
            set_id: 1,
            port: SipPort::Named("sip".into()),
            weight: 10,
            priority: 0,
        }
    }

    #[test]
    fn every_slice_adds_its_endpoints() {
        let a = slice(
            "media-abc",
            vec![
                endpoint("10.0.0.1", Some(true), None),
                endpoint("10.0.0.2", None, None),
            ],
        );
        let b = slice(
            "media-def",
            vec![endpoint("10.0.0.3", Some(true), Some(false))],
        );
        let members = members_from_slices(&[a, b], &mapping());
        let uris: Vec<&str> = members.iter().map(|m| m.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "sip:10.0.0.1:5080",
                "sip:10.0.0.2:5080",
                "sip:10.0.0.3:5080"
            ]
        );
        assert!(members.iter().all(Member::takes_calls));
        assert!(members.iter().all(|m| m.set_id == 1 && m.weight == 10));
    }

    #[test]
    fn conditions_are_honoured() {
        let s = slice(
            "media-abc",
            vec![
                endpoint("10.0.0.1", Some(false), None),
                endpoint("10.0.0.2", Some(false), Some(true)),
                endpoint("10.0.0.3", Some(true), Some(false)),
            ],
        );
        let members = members_from_slices(&[s], &mapping());
        let state: Vec<(bool, bool)> = members.iter().map(|m| (m.ready, m.terminating)).collect();
        assert_eq!(state, [(false, false), (false, true), (true, false)]);
        assert_eq!(members.iter().filter(|m| m.takes_calls()).count(), 1);
    }

    #[test]
    fn an_address_in_two_slices_keeps_its_best_listing() {
        // a pod moving between slices: a stale not-ready copy must not win
        let old = slice("media-old", vec![endpoint("10.0.0.1", Some(false), None)]);
        let new = slice("media-new", vec![endpoint("10.0.0.1", Some(true), None)]);
        for order in [[old.clone(), new.clone()], [new, old]] {
            let members = members_from_slices(&order, &mapping());
            assert_eq!(members.len(), 1);
            assert!(members[0].takes_calls());
        }
    }

    #[test]
    fn ports_by_name_or_number_and_ipv6() {
        let mut s = slice("media-v6", vec![endpoint("fd00::1", Some(true), None)]);
        s.address_type = "IPv6".into();
        let members = members_from_slices(std::slice::from_ref(&s), &mapping());
        assert_eq!(members[0].uri, "sip:[fd00::1]:5080");
        let numbered = SliceMapping {
            port: SipPort::Number(5060),
            ..mapping()
        };
        assert_eq!(
            members_from_slices(std::slice::from_ref(&s), &numbered)[0].uri,
            "sip:[fd00::1]:5060"
        );
        let other = SliceMapping {
            port: SipPort::Named("esl".into()),
            ..mapping()
        };
        assert!(members_from_slices(&[s], &other).is_empty());
    }

    #[test]
    fn merged_members_prefer_the_serving_listing() {
        let mut down = Member::serving("sip:10.0.0.1:5080", 1, 1, 0);
        down.ready = false;
        let up = Member::serving("sip:10.0.0.1:5080", 1, 1, 0);
        let merged = merge_members(&[down.clone(), up.clone()]);
        assert_eq!(merged, vec![up.clone()]);
        let merged = merge_members(&[up.clone(), down]);
        assert_eq!(merged, vec![up]);
    }
}
