//! The pure part: what has to change in one dispatcher set to reach the desired
//! members, given the rows the table holds now and what the edges report.
//!
//! The rules, member by member:
//!
//! * A new member that takes calls is inserted *inactive and probing* (flags 1|8):
//!   the edges send it no call until it answers their OPTIONS probe. The exception
//!   is a set in which no row can take a call (a pool starting up, or a lone node
//!   being replaced): there is no call to protect then, waiting for a probe would
//!   only prolong the outage, and probing and the in-transaction failover still
//!   catch a node that does not answer. Those start active and probing (flags 8).
//! * A member that is not ready is never inserted; one already in the table is
//!   disabled (flag 4), so calls in progress finish and no new call reaches it.
//!   It is enabled again (inactive and probing) when it is ready.
//! * A terminating member is disabled at once and deleted when it leaves the
//!   desired set (its pod is gone, so its calls are done) or when the pool's drain
//!   grace has passed.
//! * A row whose member is no longer desired is disabled on every edge at once and
//!   deleted.
//! * A member that waits for its first probe and that an edge now reports active
//!   is marked active in the table (flags 8), so that the next reload, which
//!   rebuilds the edges' state from the table's flags, does not take it out of
//!   service again until the next probe.
//!
//! Disabling by the engine is recorded in `attrs` (`sipstack_drain=notready` or
//! `=terminating` and `sipstack_drain_since=UNIX_SECONDS`; Kamailio ignores
//! attributes it does not know). A member disabled by a person (`sipctl drain
//! dispatcher`, no such marker) stays disabled: the engine never overrides it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sipstack_db::dispatcher::{
    weight_attrs, Destination, FLAG_DISABLED, FLAG_INACTIVE, FLAG_PROBING, FLAG_TRYING,
};

use crate::member::{merge_members, Member};

/// Flags of a member that must answer a probe before it gets calls.
pub const NEW_MEMBER_FLAGS: i32 = FLAG_INACTIVE | FLAG_PROBING;
/// Flags of a member that takes calls while probing watches it.
pub const ACTIVE_FLAGS: i32 = FLAG_PROBING;

const DRAIN_KEY: &str = "sipstack_drain";
const DRAIN_SINCE_KEY: &str = "sipstack_drain_since";

/// Settings of one pool's set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetPolicy {
    pub set_id: i32,
    /// Written to the rows' description (the MediaPool's name).
    pub description: String,
    /// How long a terminating member may keep its row (MediaPool `drainSeconds`).
    pub drain_grace: Duration,
}

/// Why the engine disabled a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    NotReady,
    Terminating,
}

impl DrainReason {
    fn as_str(self) -> &'static str {
        match self {
            DrainReason::NotReady => "notready",
            DrainReason::Terminating => "terminating",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "notready" => Some(DrainReason::NotReady),
            "terminating" => Some(DrainReason::Terminating),
            _ => None,
        }
    }
}

/// Why a row is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Not among the desired members any more.
    Gone,
    /// Terminating for longer than the drain grace.
    GraceExpired,
}

/// The new content of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub destination: String,
    pub flags: i32,
    pub priority: i32,
    pub attrs: String,
    pub description: String,
}

/// Why a row is updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateReason {
    /// Weight, priority or description changed.
    Settings,
    /// Disabled: no new calls.
    Drain(DrainReason),
    /// Disabled by the engine before, ready again: probing decides when it takes calls.
    Enable,
    /// An edge found it answering: active in the table too.
    Admitted,
}

/// One change to the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert(Row),
    Update {
        id: i32,
        previous_flags: i32,
        row: Row,
        why: UpdateReason,
    },
    Delete {
        id: i32,
        destination: String,
        why: DeleteReason,
    },
}

impl Change {
    pub fn destination(&self) -> &str {
        match self {
            Change::Insert(row) | Change::Update { row, .. } => &row.destination,
            Change::Delete { destination, .. } => destination,
        }
    }
}

/// Everything one sync changes in one set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub set_id: i32,
    pub changes: Vec<Change>,
    /// Members listed but not inserted because they cannot take calls.
    pub skipped: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether the edges must reload the table to see the change: new rows,
    /// deleted rows, changed weights or priorities, enabled members. Disabling is
    /// done in the edges' memory at once (`dispatcher.set_state`) and admitting
    /// only writes down what the edges already know.
    pub fn needs_reload(&self) -> bool {
        self.changes.iter().any(|c| match c {
            Change::Insert(_) | Change::Delete { .. } => true,
            Change::Update { why, .. } => {
                matches!(why, UpdateReason::Settings | UpdateReason::Enable)
            }
        })
    }

    /// Destinations the edges must stop sending new calls to now.
    pub fn to_disable(&self) -> Vec<String> {
        self.changes
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Change::Delete { .. }
                        | Change::Update {
                            why: UpdateReason::Drain(_),
                            ..
                        }
                )
            })
            .map(|c| c.destination().to_string())
            .collect()
    }

    fn of<'a>(&'a self, keep: impl Fn(&Change) -> bool + 'a) -> impl Iterator<Item = &'a str> + 'a {
        self.changes
            .iter()
            .filter(move |c| keep(c))
            .map(Change::destination)
    }

    pub fn inserted(&self) -> Vec<&str> {
        self.of(|c| matches!(c, Change::Insert(_))).collect()
    }
    pub fn deleted(&self) -> Vec<&str> {
        self.of(|c| matches!(c, Change::Delete { .. })).collect()
    }
    pub fn drained(&self) -> Vec<&str> {
        self.of(|c| {
            matches!(
                c,
                Change::Update {
                    why: UpdateReason::Drain(_),
                    ..
                }
            )
        })
        .collect()
    }
    pub fn updated(&self, reason: UpdateReason) -> Vec<&str> {
        self.of(move |c| matches!(c, Change::Update { why, .. } if *why == reason))
            .collect()
    }
}

/// The engine's drain marker of a row, if any: (reason, since unix seconds).
pub fn drain_marker(attrs: &str) -> Option<(DrainReason, Option<u64>)> {
    let mut reason = None;
    let mut since = None;
    for part in attrs.split(';') {
        match part.split_once('=') {
            Some((DRAIN_KEY, v)) => reason = DrainReason::parse(v),
            Some((DRAIN_SINCE_KEY, v)) => since = v.parse().ok(),
            _ => {}
        }
    }
    reason.map(|r| (r, since))
}

fn attrs_for(weight: i32, drain: Option<(DrainReason, u64)>) -> String {
    let mut attrs = weight_attrs(weight);
    if let Some((reason, since)) = drain {
        attrs.push_str(&format!(
            ";{DRAIN_KEY}={};{DRAIN_SINCE_KEY}={since}",
            reason.as_str()
        ));
    }
    attrs
}

/// What the diff needs to know about the edges: destinations of this set that at
/// least one edge reports active now.
pub type ActiveOnEdges = BTreeSet<String>;

/// Computes the changes that take set `policy.set_id` from `current` (its rows)
/// to `desired`. `now` is unix seconds. Members of other sets in `desired` are
/// ignored; a member listed twice counts once, its serving listing first.
pub fn plan(
    policy: &SetPolicy,
    current: &[Destination],
    desired: &[Member],
    active_on_edges: &ActiveOnEdges,
    now: u64,
) -> Plan {
    let desired: Vec<Member> = merge_members(desired)
        .into_iter()
        .filter(|m| m.set_id == policy.set_id)
        .collect();
    let wanted: BTreeMap<&str, &Member> = desired.iter().map(|m| (m.uri.as_str(), m)).collect();
    let rows: BTreeMap<&str, &Destination> = current
        .iter()
        .filter(|d| d.set_id == policy.set_id)
        .map(|d| (d.destination.as_str(), d))
        .collect();
    // a row takes calls when neither disabled nor still waiting for its first probe
    let set_serves = rows
        .values()
        .any(|d| d.flags & (FLAG_DISABLED | FLAG_INACTIVE) == 0);
    let grace = policy.drain_grace.as_secs();

    let mut out = Plan {
        set_id: policy.set_id,
        ..Default::default()
    };
    for m in &desired {
        let Some(row) = rows.get(m.uri.as_str()) else {
            if m.takes_calls() {
                out.changes.push(Change::Insert(Row {
                    destination: m.uri.clone(),
                    flags: if set_serves {
                        NEW_MEMBER_FLAGS
                    } else {
                        ACTIVE_FLAGS
                    },
                    priority: m.priority,
                    attrs: attrs_for(m.weight, None),
                    description: policy.description.clone(),
                }));
            } else {
                out.skipped.push(m.uri.clone());
            }
            continue;
        };
        let disabled = row.flags & FLAG_DISABLED != 0;
        let marker = drain_marker(&row.attrs);
        let update = |flags: i32, attrs: String, why: UpdateReason| Change::Update {
            id: row.id,
            previous_flags: row.flags,
            row: Row {
                destination: row.destination.clone(),
                flags,
                priority: m.priority,
                attrs,
                description: policy.description.clone(),
            },
            why,
        };
        if m.takes_calls() {
            match (disabled, marker) {
                // drained by the engine, ready again: probing decides
                (true, Some(_)) => {
                    let flags =
                        (row.flags & !(FLAG_DISABLED | FLAG_TRYING)) | FLAG_INACTIVE | FLAG_PROBING;
                    out.changes.push(update(
                        flags,
                        attrs_for(m.weight, None),
                        UpdateReason::Enable,
                    ));
                }
                _ => {
                    let attrs = attrs_for(m.weight, None);
                    let waiting = row.flags & (FLAG_DISABLED | FLAG_INACTIVE) == FLAG_INACTIVE;
                    let settings_changed =
                        (row.priority, row.attrs.as_str(), row.description.as_str())
                            != (m.priority, attrs.as_str(), policy.description.as_str());
                    if waiting && active_on_edges.contains(&m.uri) {
                        let flags = row.flags & !(FLAG_INACTIVE | FLAG_TRYING);
                        let why = if settings_changed {
                            UpdateReason::Settings
                        } else {
                            UpdateReason::Admitted
                        };
                        out.changes.push(update(flags, attrs, why));
                    } else if settings_changed {
                        out.changes
                            .push(update(row.flags, attrs, UpdateReason::Settings));
                    }
                }
            }
        } else if m.terminating {
            match marker {
                Some((DrainReason::Terminating, since)) if disabled => {
                    let since = since.unwrap_or(now);
                    if now >= since.saturating_add(grace) {
                        out.changes.push(Change::Delete {
                            id: row.id,
                            destination: row.destination.clone(),
                            why: DeleteReason::GraceExpired,
                        });
                    }
                }
                _ => {
                    let attrs = attrs_for(m.weight, Some((DrainReason::Terminating, now)));
                    out.changes.push(update(
                        row.flags | FLAG_DISABLED,
                        attrs,
                        UpdateReason::Drain(DrainReason::Terminating),
                    ));
                }
            }
        } else if !disabled {
            let attrs = attrs_for(m.weight, Some((DrainReason::NotReady, now)));
            out.changes.push(update(
                row.flags | FLAG_DISABLED,
                attrs,
                UpdateReason::Drain(DrainReason::NotReady),
            ));
        }
    }
    for (uri, row) in &rows {
        if !wanted.contains_key(uri) {
            out.changes.push(Change::Delete {
                id: row.id,
                destination: row.destination.clone(),
                why: DeleteReason::Gone,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::member::{members_from_slices, SipPort, SliceMapping};
    use k8s_openapi::api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    };

    const NOW: u64 = 1_000_000;

    fn policy() -> SetPolicy {
        SetPolicy {
            set_id: 1,
            description: "media".into(),
            drain_grace: Duration::from_secs(300),
        }
    }

    fn uri(n: u8) -> String {
        format!("sip:10.0.0.{n}:5080")
    }

    fn member(n: u8) -> Member {
        Member::serving(uri(n), 1, 1, 0)
    }

    fn row(id: i32, n: u8, flags: i32) -> Destination {
        Destination {
            id,
            set_id: 1,
            destination: uri(n),
            flags,
            priority: 0,
            attrs: weight_attrs(1),
            description: "media".into(),
        }
    }

    /// The table after applying a plan (ids of inserted rows are made up).
    fn applied(current: &[Destination], plan: &Plan) -> Vec<Destination> {
        let mut rows: Vec<Destination> = current.to_vec();
        let mut next = rows.iter().map(|r| r.id).max().unwrap_or(0) + 1;
        for c in &plan.changes {
            match c {
                Change::Insert(r) => {
                    rows.push(Destination {
                        id: next,
                        set_id: plan.set_id,
                        destination: r.destination.clone(),
                        flags: r.flags,
                        priority: r.priority,
                        attrs: r.attrs.clone(),
                        description: r.description.clone(),
                    });
                    next += 1;
                }
                Change::Update { id, row, .. } => {
                    let x = rows.iter_mut().find(|x| x.id == *id).unwrap();
                    x.flags = row.flags;
                    x.priority = row.priority;
                    x.attrs = row.attrs.clone();
                    x.description = row.description.clone();
                }
                Change::Delete { id, .. } => rows.retain(|x| x.id != *id),
            }
        }
        rows
    }

    fn uris(rows: &[Destination]) -> BTreeSet<String> {
        rows.iter().map(|r| r.destination.clone()).collect()
    }

    #[test]
    fn a_new_pool_starts_serving() {
        let p = plan(
            &policy(),
            &[],
            &[member(1), member(2)],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert_eq!(p.inserted(), [uri(1), uri(2)]);
        for c in &p.changes {
            let Change::Insert(r) = c else {
                panic!("{c:?}")
            };
            assert_eq!(
                r.flags, ACTIVE_FLAGS,
                "nothing to protect: active and probing"
            );
            assert_eq!(r.attrs, "weight=1;rweight=1");
            assert_eq!(r.description, "media");
        }
        assert!(p.needs_reload());
        assert!(p.to_disable().is_empty());
    }

    #[test]
    fn scale_out_inserts_inactive_probing_members() {
        let current = [row(1, 1, ACTIVE_FLAGS), row(2, 2, ACTIVE_FLAGS)];
        let desired = [member(1), member(2), member(3), member(4)];
        let p = plan(&policy(), &current, &desired, &ActiveOnEdges::new(), NOW);
        assert_eq!(p.inserted(), [uri(3), uri(4)]);
        for c in &p.changes {
            let Change::Insert(r) = c else {
                panic!("only inserts: {c:?}")
            };
            assert_eq!(
                r.flags, 9,
                "1 inactive | 8 probing: no call before it answers OPTIONS"
            );
        }
        assert!(p.needs_reload());
        // once applied, the same desired set changes nothing
        let after = applied(&current, &p);
        assert!(plan(&policy(), &after, &desired, &ActiveOnEdges::new(), NOW).is_empty());
    }

    #[test]
    fn probed_members_are_admitted_in_the_table() {
        let current = [row(1, 1, ACTIVE_FLAGS), row(2, 2, NEW_MEMBER_FLAGS)];
        let desired = [member(1), member(2)];
        let none = plan(&policy(), &current, &desired, &ActiveOnEdges::new(), NOW);
        assert!(none.is_empty(), "not probed yet: {none:?}");
        let active: ActiveOnEdges = [uri(2)].into();
        let p = plan(&policy(), &current, &desired, &active, NOW);
        assert_eq!(p.updated(UpdateReason::Admitted), [uri(2)]);
        assert!(!p.needs_reload(), "the edges know already");
        assert_eq!(applied(&current, &p)[1].flags, ACTIVE_FLAGS);
    }

    #[test]
    fn scale_in_disables_at_once_and_deletes() {
        let current: Vec<_> = (1..=4)
            .map(|n| row(i32::from(n), n, ACTIVE_FLAGS))
            .collect();
        let p = plan(
            &policy(),
            &current,
            &[member(1), member(2)],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert_eq!(p.deleted(), [uri(3), uri(4)]);
        assert_eq!(p.to_disable(), [uri(3), uri(4)]);
        assert!(p.needs_reload());
        assert_eq!(uris(&applied(&current, &p)), [uri(1), uri(2)].into());
    }

    #[test]
    fn same_size_ip_churn_is_a_replacement() {
        // pod 2 restarted with a new IP: still two members, but not the same two
        let current = [row(1, 1, ACTIVE_FLAGS), row(2, 2, ACTIVE_FLAGS)];
        let p = plan(
            &policy(),
            &current,
            &[member(1), member(7)],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert_eq!(p.inserted(), [uri(7)]);
        assert_eq!(p.deleted(), [uri(2)]);
        assert_eq!(uris(&applied(&current, &p)), [uri(1), uri(7)].into());
        // even when every member changes at once
        let p = plan(
            &policy(),
            &current,
            &[member(8), member(9)],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert_eq!(p.inserted(), [uri(8), uri(9)]);
        assert_eq!(p.deleted(), [uri(1), uri(2)]);
    }

    #[test]
    fn not_ready_members_get_no_calls() {
        let mut unready = member(3);
        unready.ready = false;
        // never inserted
        let current = [row(1, 1, ACTIVE_FLAGS)];
        let p = plan(
            &policy(),
            &current,
            &[member(1), unready.clone()],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(p.skipped, [uri(3)]);
        // disabled when it was in
        let current = [row(1, 1, ACTIVE_FLAGS), row(3, 3, ACTIVE_FLAGS)];
        let p = plan(
            &policy(),
            &current,
            &[member(1), unready.clone()],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert_eq!(p.drained(), [uri(3)]);
        assert_eq!(p.to_disable(), [uri(3)]);
        assert!(!p.needs_reload(), "set_state does it at once");
        let after = applied(&current, &p);
        assert_eq!(after[1].flags & FLAG_DISABLED, FLAG_DISABLED);
        assert_eq!(
            drain_marker(&after[1].attrs),
            Some((DrainReason::NotReady, Some(NOW)))
        );
        // it stays disabled while not ready, without further changes
        assert!(plan(
            &policy(),
            &after,
            &[member(1), unready],
            &ActiveOnEdges::new(),
            NOW + 9999
        )
        .is_empty());
        // ready again: enabled, inactive and probing
        let p = plan(
            &policy(),
            &after,
            &[member(1), member(3)],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert_eq!(p.updated(UpdateReason::Enable), [uri(3)]);
        let again = applied(&after, &p);
        assert_eq!(again[1].flags, NEW_MEMBER_FLAGS);
        assert_eq!(again[1].attrs, "weight=1;rweight=1");
        assert!(p.needs_reload());
    }

    #[test]
    fn a_member_drained_by_a_person_stays_drained() {
        let current = [
            row(1, 1, ACTIVE_FLAGS),
            row(2, 2, ACTIVE_FLAGS | FLAG_DISABLED),
        ];
        let p = plan(
            &policy(),
            &current,
            &[member(1), member(2)],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn terminating_members_drain_then_leave() {
        let mut leaving = member(2);
        leaving.ready = false;
        leaving.terminating = true;
        let current = [row(1, 1, ACTIVE_FLAGS), row(2, 2, ACTIVE_FLAGS)];
        let p = plan(
            &policy(),
            &current,
            &[member(1), leaving.clone()],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert_eq!(p.drained(), [uri(2)]);
        assert!(p.deleted().is_empty(), "calls in progress finish first");
        let draining = applied(&current, &p);
        // within the grace: nothing more
        let later = plan(
            &policy(),
            &draining,
            &[member(1), leaving.clone()],
            &ActiveOnEdges::new(),
            NOW + 299,
        );
        assert!(later.is_empty(), "{later:?}");
        // past the grace: deleted
        let late = plan(
            &policy(),
            &draining,
            &[member(1), leaving],
            &ActiveOnEdges::new(),
            NOW + 300,
        );
        assert_eq!(late.deleted(), [uri(2)]);
        assert!(matches!(
            late.changes[0],
            Change::Delete {
                why: DeleteReason::GraceExpired,
                ..
            }
        ));
        // gone from the Service before that: deleted at once
        let gone = plan(
            &policy(),
            &draining,
            &[member(1)],
            &ActiveOnEdges::new(),
            NOW + 10,
        );
        assert!(matches!(
            gone.changes[0],
            Change::Delete {
                why: DeleteReason::Gone,
                ..
            }
        ));
    }

    #[test]
    fn weights_and_priorities_are_updated_in_place() {
        let current = [
            row(1, 1, ACTIVE_FLAGS | FLAG_DISABLED),
            row(2, 2, ACTIVE_FLAGS),
        ];
        let mut heavier = member(2);
        heavier.weight = 5;
        heavier.priority = 7;
        let mut drained = member(1);
        drained.weight = 3;
        let p = plan(
            &policy(),
            &current,
            &[drained, heavier],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert_eq!(p.updated(UpdateReason::Settings), [uri(1), uri(2)]);
        let after = applied(&current, &p);
        assert_eq!(
            after[0].flags,
            ACTIVE_FLAGS | FLAG_DISABLED,
            "a person's drain is kept"
        );
        assert_eq!(
            (after[1].attrs.as_str(), after[1].priority),
            ("weight=5;rweight=5", 7)
        );
        assert_eq!(after[1].flags, ACTIVE_FLAGS, "state untouched");
    }

    #[test]
    fn a_lone_node_replaced_keeps_the_pool_serving() {
        // the only row is draining: the new node starts active
        let mut leaving = member(1);
        leaving.ready = false;
        leaving.terminating = true;
        let current = [row(1, 1, ACTIVE_FLAGS | FLAG_DISABLED)];
        let p = plan(
            &policy(),
            &current,
            &[leaving, member(2)],
            &ActiveOnEdges::new(),
            NOW,
        );
        let Some(Change::Insert(r)) = p.changes.iter().find(|c| matches!(c, Change::Insert(_)))
        else {
            panic!("{p:?}")
        };
        assert_eq!(r.flags, ACTIVE_FLAGS);
    }

    #[test]
    fn other_sets_are_left_alone() {
        let mut other = row(9, 9, ACTIVE_FLAGS);
        other.set_id = 2;
        let mut stranger = member(5);
        stranger.set_id = 2;
        let p = plan(
            &policy(),
            &[row(1, 1, ACTIVE_FLAGS), other],
            &[member(1), stranger],
            &ActiveOnEdges::new(),
            NOW,
        );
        assert!(p.is_empty(), "{p:?}");
    }

    /// EndpointSlices of one Service, end to end through the diff: all slices
    /// count, readiness is honoured, churn at constant size is seen.
    #[test]
    fn several_endpoint_slices_per_service() {
        fn ep(ip: &str, ready: bool, terminating: bool) -> Endpoint {
            Endpoint {
                addresses: vec![ip.into()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready || terminating),
                    terminating: Some(terminating),
                }),
                ..Default::default()
            }
        }
        fn slice(endpoints: Vec<Endpoint>) -> EndpointSlice {
            EndpointSlice {
                address_type: "IPv4".into(),
                endpoints: Some(endpoints),
                ports: Some(vec![EndpointPort {
                    name: Some("sip".into()),
                    port: Some(5080),
                    ..Default::default()
                }]),
                ..Default::default()
            }
        }
        let mapping = SliceMapping {
            set_id: 1,
            port: SipPort::Named("sip".into()),
            weight: 1,
            priority: 0,
        };
        let step = |current: &[Destination], slices: &[EndpointSlice]| {
            let desired = members_from_slices(slices, &mapping);
            let p = plan(&policy(), current, &desired, &ActiveOnEdges::new(), NOW);
            (applied(current, &p), p)
        };
        // two slices, one not-ready endpoint
        let (t, p) = step(
            &[],
            &[
                slice(vec![
                    ep("10.0.0.1", true, false),
                    ep("10.0.0.2", true, false),
                ]),
                slice(vec![
                    ep("10.0.0.3", true, false),
                    ep("10.0.0.4", false, false),
                ]),
            ],
        );
        assert_eq!(uris(&t), [uri(1), uri(2), uri(3)].into(), "{p:?}");
        // the first slice changes alone: the second's members stay
        let (t, p) = step(
            &t,
            &[
                slice(vec![
                    ep("10.0.0.1", true, false),
                    ep("10.0.0.5", true, false),
                ]),
                slice(vec![
                    ep("10.0.0.3", true, false),
                    ep("10.0.0.4", false, false),
                ]),
            ],
        );
        assert_eq!(p.inserted(), [uri(5)]);
        assert_eq!(p.deleted(), [uri(2)], "same size, new IP");
        assert_eq!(uris(&t), [uri(1), uri(3), uri(5)].into());
        // a pod terminates: disabled, not deleted yet
        let (t, p) = step(
            &t,
            &[
                slice(vec![
                    ep("10.0.0.1", true, false),
                    ep("10.0.0.5", false, true),
                ]),
                slice(vec![
                    ep("10.0.0.3", true, false),
                    ep("10.0.0.4", true, false),
                ]),
            ],
        );
        assert_eq!(p.drained(), [uri(5)]);
        assert_eq!(p.inserted(), [uri(4)], "ready now");
        let five = t.iter().find(|r| r.destination == uri(5)).unwrap();
        assert_ne!(five.flags & FLAG_DISABLED, 0);
    }
}
