//! A MediaPool as a dispatcher set: the one conversion of algorithm, weights and
//! members that the operator and the local driver share.

use std::time::Duration;

use kube::ResourceExt;
use sipstack_crds::{Algorithm, MediaPool};
use sipstack_db::media_pool::Algorithm as PoolAlgorithm;

use crate::member::{Member, SipPort, SliceMapping};
use crate::plan::SetPolicy;

/// One pool's set as it should be in every database its edges read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatcherSet {
    /// The MediaPool's name: routes name the pool by it (`sipstack_media_pool`).
    pub pool: String,
    pub algorithm: PoolAlgorithm,
    pub policy: SetPolicy,
    pub members: Vec<Member>,
}

/// The pool row's algorithm for a MediaPool's.
pub fn algorithm(a: Algorithm) -> PoolAlgorithm {
    match a {
        Algorithm::RoundRobin => PoolAlgorithm::RoundRobin,
        Algorithm::CallIdHash => PoolAlgorithm::CallIdHash,
        Algorithm::Weighted => PoolAlgorithm::Weighted,
        Algorithm::ActiveFailover => PoolAlgorithm::ActiveFailover,
    }
}

/// Weights are validated to a small range; one out of `i32` is left for the
/// database's validation to refuse with the field's name.
pub fn member_weight(w: u32) -> i32 {
    i32::try_from(w).unwrap_or(i32::MAX)
}

/// The spec's static members.
pub fn static_members(pool: &MediaPool) -> Vec<Member> {
    let spec = &pool.spec;
    spec.members
        .iter()
        .map(|m| Member::serving(&m.uri, spec.set_id, member_weight(m.weight), m.priority))
        .collect()
}

/// A node the pool runs (a pod, a local replica) at `uri`: the pool's weight.
pub fn node_member(pool: &MediaPool, uri: &str) -> Member {
    Member::serving(uri, pool.spec.set_id, member_weight(pool.spec.weight), 0)
}

/// How the addresses of a pool's Service's EndpointSlices become its nodes.
pub fn node_mapping(pool: &MediaPool) -> SliceMapping {
    SliceMapping {
        set_id: pool.spec.set_id,
        // the Service's ports are named by transport (sip-udp, sip-tcp), both on sipPort
        port: SipPort::Number(pool.spec.sip_port),
        weight: member_weight(pool.spec.weight),
        priority: 0,
    }
}

/// The set `pool` should have, with `members`.
pub fn dispatcher_set(pool: &MediaPool, members: Vec<Member>) -> DispatcherSet {
    DispatcherSet {
        pool: pool.name_any(),
        algorithm: algorithm(pool.spec.algorithm),
        policy: SetPolicy {
            set_id: pool.spec.set_id,
            description: pool.name_any(),
            drain_grace: Duration::from_secs(pool.spec.drain_seconds.into()),
        },
        members,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_keeps_its_name() {
        for (a, name) in [
            (Algorithm::RoundRobin, "roundRobin"),
            (Algorithm::CallIdHash, "callIdHash"),
            (Algorithm::Weighted, "weighted"),
            (Algorithm::ActiveFailover, "activeFailover"),
        ] {
            assert_eq!(algorithm(a).as_str(), name);
        }
        assert_eq!(member_weight(u32::MAX), i32::MAX);
    }
}
