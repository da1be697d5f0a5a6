//! The engine: desired members in, table and edges in step out.

use std::time::Duration;

use sipstack_edgerpc::EdgeRpc;
use tokio_postgres::Client;

use crate::edges::{active_on_edges, DisableOutcome, EdgeOptions, EdgeStatus, EdgeSync};
use crate::member::Member;
use crate::plan::{Plan, SetPolicy};
use crate::store::{self, unix_now};
use crate::SyncError;

/// What one [`Engine::sync_set`] did.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    /// The changes committed (in one transaction).
    pub plan: Plan,
    /// The table generation the edges must load to see them; `None` when no
    /// reload is needed (nothing changed, or only disabling, which is done at once).
    pub reload: Option<u64>,
    /// What every edge answered to the immediate disabling of drained and removed members.
    pub disabled: Vec<DisableOutcome>,
}

/// Keeps the dispatcher sets of one database and the memory of its edges in
/// step with the desired members. One engine per control plane: it owns its
/// database session and one reload task for all its edges.
pub struct Engine {
    db: Client,
    edges: EdgeSync,
}

impl Engine {
    /// Needs a Tokio runtime (the reload task starts here).
    pub fn new(db: Client, edges: Vec<EdgeRpc>, options: EdgeOptions) -> Self {
        Self {
            db,
            edges: EdgeSync::new(edges, options),
        }
    }

    /// Makes set `policy.set_id` follow `desired` (see [`crate::plan`] for the
    /// rules): asks the edges which waiting members they found answering, commits
    /// the changes in one transaction, disables drained and removed members on
    /// every edge at once, and asks for a reload when the table changed in a way
    /// the edges must load. Returns after the commit and the disabling; wait for
    /// the reload with [`Engine::wait_applied`].
    pub async fn sync_set(
        &mut self,
        policy: &SetPolicy,
        desired: &[Member],
    ) -> Result<SyncOutcome, SyncError> {
        store::validate(policy, desired)?;
        let active = active_on_edges(&self.edges.reachable_edges(), policy.set_id).await;
        let plan = store::apply(&mut self.db, policy, desired, &active, unix_now()).await?;
        let disabled = self
            .edges
            .disable_now(policy.set_id, &plan.to_disable())
            .await;
        let reload = plan.needs_reload().then(|| self.edges.request_reload());
        Ok(SyncOutcome {
            plan,
            reload,
            disabled,
        })
    }

    /// Waits until every edge confirmed a reload that includes `outcome`'s
    /// changes; at once when it needed none.
    pub async fn wait_applied(
        &self,
        outcome: &SyncOutcome,
        timeout: Duration,
    ) -> Result<Vec<EdgeStatus>, SyncError> {
        match outcome.reload {
            Some(generation) => self.edges.wait_loaded(generation, timeout).await,
            None => Ok(self.edges.status()),
        }
    }

    pub fn edges(&self) -> &EdgeSync {
        &self.edges
    }

    /// The database session, e.g. to read the table.
    pub fn db(&self) -> &Client {
        &self.db
    }
}

/// Syncs `set` once, without an engine: the pool's row, then its members (asking
/// `edges` which waiting members answer, the diff in one transaction, drained and
/// removed members disabled on `edges` at once). The caller reloads the edges.
pub async fn sync_once(
    db: &mut Client,
    edges: &[EdgeRpc],
    set: &crate::pool::DispatcherSet,
) -> Result<crate::plan::Plan, SyncError> {
    store::validate(&set.policy, &set.members)?;
    sipstack_db::media_pool::upsert(&*db, &set.pool, set.policy.set_id, set.algorithm).await?;
    let active = active_on_edges(edges, set.policy.set_id).await;
    let plan = store::apply(db, &set.policy, &set.members, &active, unix_now()).await?;
    crate::edges::disable_on(edges, set.policy.set_id, &plan.to_disable()).await;
    Ok(plan)
}
