//! Dispatcher sync: keeps Kamailio's dispatcher table, and the memory of every
//! edge, in step with a media pool's members as they come and go, whatever knows
//! the members (a MediaPool's static members, a Service's EndpointSlices).
//!
//! * [`member`]: the desired members, and the merge of all EndpointSlices of a Service.
//! * [`plan`]: the pure diff of the table's rows against the desired members
//!   (new members inactive until probed, drains before deletes).
//! * [`store`]: the diff applied in one PostgreSQL transaction.
//! * [`edges`]: coalesced `dispatcher.reload` on every edge until each confirms,
//!   immediate `dispatcher.set_state d` for drains, resync of edges that come back.
//! * [`engine`]: all of it behind [`Engine::sync_set`], and [`sync_once`] for a
//!   caller that syncs once and reloads the edges itself (the local driver).
//! * [`pool`]: a MediaPool as a dispatcher set.

pub mod edges;
pub mod engine;
pub mod member;
pub mod plan;
pub mod pool;
pub mod store;

use std::time::Duration;

pub use edges::{active_on_edges, disable_on, DisableOutcome, EdgeOptions, EdgeStatus, EdgeSync};
pub use engine::{sync_once, Engine, SyncOutcome};
pub use member::{members_from_slices, merge_members, Member, SipPort, SliceMapping};
pub use plan::{Change, DeleteReason, DrainReason, Plan, SetPolicy, UpdateReason};
pub use pool::DispatcherSet;

/// Why a sync did not happen, or was not confirmed by every edge.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// A desired member or the set id is not valid; nothing was changed.
    #[error("{0}")]
    Invalid(#[from] sipstack_db::DbError),
    #[error("dispatcher set {set_id}: {what}: {source}")]
    Query {
        what: &'static str,
        set_id: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The change is committed; these edges did not confirm loading it yet (they
    /// keep being retried).
    #[error("table generation {generation} not confirmed within {waited:?} by: {}", edges.join(", "))]
    NotConfirmed {
        generation: u64,
        waited: Duration,
        edges: Vec<String>,
    },
}
