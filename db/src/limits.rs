//! Call limits: concurrent calls per trunk (both directions) and per subscriber
//! (the calls it places), and new calls per second per trunk. The edge enforces
//! them (dialog profiles and pipelimit) from its `trunk` htable, so a change holds
//! after the next trunk reload.

use tokio_postgres::GenericClient;

use crate::subscriber::validate_username;
use crate::trunk::{self, Trunk};
use crate::validate::{self, invalid};
use crate::DbError;

/// Most concurrent calls a limit may allow (the tables' CHECK).
pub const MAX_CALLS: i32 = 1_000_000;
/// Most new calls per second a limit may allow (the table's CHECK).
pub const MAX_CPS: i32 = 100_000;

fn in_range(field: &str, value: Option<i32>, max: i32, what: &str) -> Result<(), DbError> {
    match value {
        Some(n) if !(1..=max).contains(&n) => Err(invalid(
            field,
            format!("{n} is out of range"),
            format!("allow 1 to {max} {what}, or give none for no limit"),
        )),
        _ => Ok(()),
    }
}

/// A concurrent-call limit as the tables take it.
pub fn validate_max_calls(field: &str, value: Option<i32>) -> Result<(), DbError> {
    in_range(field, value, MAX_CALLS, "calls at once")
}

/// A calls-per-second limit as the table takes it.
pub fn validate_max_cps(field: &str, value: Option<i32>) -> Result<(), DbError> {
    in_range(field, value, MAX_CPS, "new calls per second")
}

/// A trunk's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrunkLimits {
    pub max_calls: Option<i32>,
    pub max_cps: Option<i32>,
}

/// Sets (or with `None`, lifts) a trunk's limits; returns the trunk.
pub async fn set_trunk_limits(
    client: &mut impl GenericClient,
    name: &str,
    limits: TrunkLimits,
) -> Result<Trunk, DbError> {
    validate_max_calls("--max-calls", limits.max_calls)?;
    validate_max_cps("--max-cps", limits.max_cps)?;
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin a transaction"))?;
    let id = trunk::lock_trunk(&tx, name).await?;
    tx.execute(
        "UPDATE sipstack_trunk SET max_calls = $2, max_cps = $3 WHERE id = $1",
        &[&id, &limits.max_calls, &limits.max_cps],
    )
    .await
    .map_err(DbError::query(format!(
        "cannot set the limits of trunk {name:?}"
    )))?;
    let stored = trunk::get(&tx, name).await?;
    tx.commit()
        .await
        .map_err(DbError::query(format!("cannot commit trunk {name:?}")))?;
    Ok(stored)
}

/// Sets (or with `None`, lifts) how many calls a subscriber may place at once.
pub async fn set_subscriber_limit(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
    max_calls: Option<i32>,
) -> Result<(), DbError> {
    validate_username(username)?;
    let domain = validate::domain("domain", domain)?;
    validate_max_calls("--max-calls", max_calls)?;
    let aor = format!("{username}@{domain}");
    let exists = client
        .query_opt(
            "SELECT 1 FROM subscriber WHERE username = $1 AND domain = $2",
            &[&username, &domain],
        )
        .await
        .map_err(DbError::query(format!("cannot read subscriber {aor}")))?
        .is_some();
    if !exists {
        return Err(DbError::NotFound {
            kind: "subscriber",
            name: aor,
        });
    }
    let result = match max_calls {
        Some(n) => {
            client
                .execute(
                    "INSERT INTO sipstack_subscriber_limit (username, domain, max_calls)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (username, domain) DO UPDATE SET max_calls = EXCLUDED.max_calls",
                    &[&username, &domain, &n],
                )
                .await
        }
        None => {
            client
                .execute(
                    "DELETE FROM sipstack_subscriber_limit WHERE username = $1 AND domain = $2",
                    &[&username, &domain],
                )
                .await
        }
    };
    result.map_err(DbError::query(format!(
        "cannot set the call limit of {aor}"
    )))?;
    Ok(())
}

/// How many calls a subscriber may place at once (`None`: no limit).
pub async fn subscriber_limit(
    client: &impl GenericClient,
    username: &str,
    domain: &str,
) -> Result<Option<i32>, DbError> {
    validate_username(username)?;
    let domain = validate::domain("domain", domain)?;
    let row = client
        .query_opt(
            "SELECT max_calls FROM sipstack_subscriber_limit WHERE username = $1 AND domain = $2",
            &[&username, &domain],
        )
        .await
        .map_err(DbError::query(format!(
            "cannot read the call limit of {username}@{domain}"
        )))?;
    Ok(row.map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_out_of_range_are_refused_naming_the_flag() {
        for bad in [0, -1, MAX_CALLS + 1] {
            let e = validate_max_calls("--max-calls", Some(bad)).unwrap_err();
            assert!(e.to_string().contains("--max-calls"), "{e}");
        }
        let e = validate_max_cps("--max-cps", Some(MAX_CPS + 1)).unwrap_err();
        assert!(e.to_string().contains("--max-cps"), "{e}");
        validate_max_calls("--max-calls", None).unwrap();
        validate_max_calls("--max-calls", Some(1)).unwrap();
        validate_max_cps("--max-cps", Some(MAX_CPS)).unwrap();
    }
}
