//! Applies a set's changes to the dispatcher table in one PostgreSQL transaction.

use std::time::{SystemTime, UNIX_EPOCH};

use sipstack_db::dispatcher::{validate_member, validate_set_id, Destination, Member as DbMember};
use tokio_postgres::Client;

use crate::member::Member;
use crate::plan::{plan, ActiveOnEdges, Change, Plan, SetPolicy};
use crate::SyncError;

/// Two engines, an engine and `sipctl local up`, or an engine and `sipctl drain`
/// never compute a diff from rows the other is about to change.
use sipstack_db::dispatcher::SET_LOCK_CLASS as LOCK_CLASS;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Checks the desired members of a set before anything is written.
pub fn validate(policy: &SetPolicy, desired: &[Member]) -> Result<(), SyncError> {
    validate_set_id(policy.set_id)?;
    for (i, m) in desired.iter().enumerate() {
        validate_member(
            i,
            &DbMember {
                destination: m.uri.clone(),
                weight: m.weight,
                priority: m.priority,
                description: policy.description.clone(),
            },
        )?;
    }
    Ok(())
}

/// Reads the set's rows, computes the plan and applies it, all in one
/// transaction under the set's advisory lock; returns what was changed.
///
/// `active_on_edges` are the set's destinations some edge reports active now
/// (see [`crate::plan`]); empty when no edge was asked.
pub async fn apply(
    client: &mut Client,
    policy: &SetPolicy,
    desired: &[Member],
    active_on_edges: &ActiveOnEdges,
    now: u64,
) -> Result<Plan, SyncError> {
    validate(policy, desired)?;
    let set_id = policy.set_id;
    let query = |what: &'static str| {
        move |source| SyncError::Query {
            what,
            set_id,
            source,
        }
    };
    let tx = client
        .transaction()
        .await
        .map_err(query("cannot begin a transaction"))?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&LOCK_CLASS, &set_id],
    )
    .await
    .map_err(query("cannot lock the set"))?;
    let rows = tx
        .query(
            "SELECT id, setid, destination::text, flags, priority, attrs::text, description::text
             FROM dispatcher WHERE setid = $1 ORDER BY id",
            &[&set_id],
        )
        .await
        .map_err(query("cannot read the set"))?;
    let current: Vec<Destination> = rows.iter().map(Destination::from_row).collect();
    let plan = plan(policy, &current, desired, active_on_edges, now);
    for change in &plan.changes {
        match change {
            Change::Insert(row) => {
                tx.execute(
                    "INSERT INTO dispatcher (setid, destination, flags, priority, attrs, description)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&set_id, &row.destination, &row.flags, &row.priority, &row.attrs, &row.description],
                )
                .await
                .map_err(query("cannot insert a member"))?;
            }
            Change::Update { id, row, .. } => {
                tx.execute(
                    "UPDATE dispatcher SET flags = $2, priority = $3, attrs = $4, description = $5 WHERE id = $1",
                    &[id, &row.flags, &row.priority, &row.attrs, &row.description],
                )
                .await
                .map_err(query("cannot update a member"))?;
            }
            Change::Delete { id, .. } => {
                tx.execute("DELETE FROM dispatcher WHERE id = $1", &[id])
                    .await
                    .map_err(query("cannot delete a member"))?;
            }
        }
    }
    tx.commit().await.map_err(query("cannot commit"))?;
    if !plan.is_empty() {
        tracing::info!(
            set_id,
            inserted = ?plan.inserted(),
            deleted = ?plan.deleted(),
            drained = ?plan.drained(),
            changes = plan.changes.len(),
            "dispatcher set changed"
        );
    }
    Ok(plan)
}
