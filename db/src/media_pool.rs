//! Media pools as routes see them: a name, a dispatcher set and an algorithm.
//! Written by the local driver and the operator from the MediaPool objects.

use std::fmt;
use std::str::FromStr;

use tokio_postgres::error::SqlState;
use tokio_postgres::GenericClient;

use crate::dispatcher::validate_set_id;
use crate::validate::{self, invalid, shown};
use crate::DbError;

/// How a pool spreads calls; the names are MediaPool's `spec.algorithm` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    CallIdHash,
    Weighted,
    ActiveFailover,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::RoundRobin,
        Algorithm::CallIdHash,
        Algorithm::Weighted,
        Algorithm::ActiveFailover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "roundRobin",
            Algorithm::CallIdHash => "callIdHash",
            Algorithm::Weighted => "weighted",
            Algorithm::ActiveFailover => "activeFailover",
        }
    }
}

impl AsRef<str> for Algorithm {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = DbError;

    fn from_str(s: &str) -> Result<Self, DbError> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                invalid(
                    "algorithm",
                    format!("{} is not an algorithm", shown(s)),
                    "use roundRobin, callIdHash, weighted or activeFailover",
                )
            })
    }
}

/// A row of `sipstack_media_pool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPool {
    pub name: String,
    pub set_id: i32,
    pub algorithm: Algorithm,
}

/// Pools [`remove_absent`] left in place because routes still send calls to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferencedPool {
    pub name: String,
    pub routes: Vec<String>,
}

/// What [`remove_absent`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolCleanup {
    pub removed: Vec<String>,
    pub still_referenced: Vec<ReferencedPool>,
}

/// Creates or updates a pool. `algorithm` is an [`Algorithm`] or its name
/// (MediaPool's `spec.algorithm` value, e.g. `"roundRobin"`).
pub async fn upsert(
    client: &impl GenericClient,
    name: &str,
    set_id: i32,
    algorithm: impl AsRef<str>,
) -> Result<(), DbError> {
    validate::name("name", name)?;
    validate_set_id(set_id)?;
    let algorithm: Algorithm = algorithm.as_ref().parse()?;
    let result = client
        .execute(
            "INSERT INTO sipstack_media_pool (name, set_id, algorithm) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET set_id = EXCLUDED.set_id, algorithm = EXCLUDED.algorithm,
                 updated_at = now()
             WHERE (sipstack_media_pool.set_id, sipstack_media_pool.algorithm)
                 IS DISTINCT FROM (EXCLUDED.set_id, EXCLUDED.algorithm)",
            &[&name, &set_id, &algorithm.as_str()],
        )
        .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let owner = client
                .query_opt(
                    "SELECT name FROM sipstack_media_pool WHERE set_id = $1",
                    &[&set_id],
                )
                .await
                .map_err(DbError::query("cannot look up the owner of a set id"))?
                .map(|r| r.get::<_, String>(0))
                .unwrap_or_default();
            Err(DbError::Conflict {
                problem: format!(
                    "media pool {name:?} wants set id {set_id}, which media pool {owner:?} has"
                ),
                fix: "give each media pool its own setId".into(),
            })
        }
        Err(e) => Err(DbError::query(format!("cannot store media pool {name:?}"))(
            e,
        )),
    }
}

/// Every pool, by name.
pub async fn list(client: &impl GenericClient) -> Result<Vec<MediaPool>, DbError> {
    let rows = client
        .query(
            "SELECT name, set_id, algorithm FROM sipstack_media_pool ORDER BY name",
            &[],
        )
        .await
        .map_err(DbError::query("cannot list media pools"))?;
    rows.iter()
        .map(|r| {
            Ok(MediaPool {
                name: r.get(0),
                set_id: r.get(1),
                algorithm: r.get::<_, &str>(2).parse()?,
            })
        })
        .collect()
}

/// Deletes the pools not named in `keep`, except those routes still use: those
/// are reported, so a pool disappearing never breaks a route.
pub async fn remove_absent(
    client: &impl GenericClient,
    keep: &[String],
) -> Result<PoolCleanup, DbError> {
    let rows = client
        .query(
            "WITH absent AS (
                 SELECT name FROM sipstack_media_pool WHERE NOT (name = ANY($1))
             ),
             removed AS (
                 DELETE FROM sipstack_media_pool AS p USING absent AS a
                 WHERE p.name = a.name
                   AND NOT EXISTS (SELECT 1 FROM sipstack_route AS r WHERE r.target_pool = p.name)
                 RETURNING p.name
             )
             SELECT a.name::text,
                    EXISTS (SELECT 1 FROM removed AS d WHERE d.name = a.name),
                    coalesce((SELECT array_agg(r.name::text ORDER BY r.name) FROM sipstack_route AS r
                              WHERE r.target_pool = a.name), '{}')
             FROM absent AS a ORDER BY a.name",
            &[&keep],
        )
        .await
        .map_err(DbError::query("cannot remove media pools"))?;
    let mut cleanup = PoolCleanup::default();
    for row in &rows {
        let (name, removed, routes): (String, bool, Vec<String>) =
            (row.get(0), row.get(1), row.get(2));
        if removed {
            cleanup.removed.push(name);
        } else {
            tracing::warn!(pool = %name, ?routes, "media pool is gone but routes still use it; keeping it");
            cleanup
                .still_referenced
                .push(ReferencedPool { name, routes });
        }
    }
    Ok(cleanup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.as_str().parse::<Algorithm>().unwrap(), a);
        }
        let err = "round-robin".parse::<Algorithm>().unwrap_err().to_string();
        assert!(
            err.contains("roundRobin, callIdHash, weighted or activeFailover"),
            "{err}"
        );
    }
}
