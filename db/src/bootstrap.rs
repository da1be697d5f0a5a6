//! The platform's role and database, created by the cluster's superuser once a
//! primary is up (Patroni 4 has no `bootstrap.users`; sipstack does it for both
//! Patroni generations, the local driver and the operator alike).

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::validate::check_db_identifier;
use crate::DbError;

/// Makes sure role `owner` (LOGIN, with the given SCRAM verifier as its password)
/// and database `database` owned by it exist. `superuser` is a connection of the
/// cluster's superuser. Only the salted verifier reaches the server, never the
/// password; a role that exists gets the verifier again (the Secret is the truth).
pub async fn ensure_owner_and_database(
    superuser: &Client,
    owner: &str,
    password_verifier: &str,
    database: &str,
) -> Result<(), DbError> {
    check_db_identifier("database.owner", owner)?;
    check_db_identifier("database.name", database)?;
    if owner == "postgres" {
        return Err(DbError::Invalid {
            field: "database.owner".into(),
            problem: "\"postgres\" is the superuser".into(),
            fix: "name an ordinary role, e.g. sipstack".into(),
        });
    }
    let q = |what: &str| {
        DbError::query(format!(
            "cannot set up role {owner} and database {database}: {what}"
        ))
    };
    let role_exists = superuser
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&owner])
        .await
        .map_err(q("looking up the role"))?
        .is_some();
    let role_sql = if role_exists {
        "ALTER ROLE %I LOGIN PASSWORD %L"
    } else {
        "CREATE ROLE %I LOGIN PASSWORD %L"
    };
    // CREATE/ALTER ROLE take no parameters: format() quotes the values server-side.
    let statement: String = superuser
        .query_one(
            "SELECT format($1, $2::text, $3::text)",
            &[&role_sql, &owner, &password_verifier],
        )
        .await
        .map_err(q("quoting"))?
        .get(0);
    match superuser.batch_execute(&statement).await {
        Ok(()) => {}
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {
            // created concurrently: set the password we hold
            let statement: String = superuser
                .query_one(
                    "SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)",
                    &[&owner, &password_verifier],
                )
                .await
                .map_err(q("quoting"))?
                .get(0);
            superuser
                .batch_execute(&statement)
                .await
                .map_err(q("setting the password"))?;
        }
        Err(e) => return Err(q("creating the role")(e)),
    }
    let db_exists = superuser
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(q("looking up the database"))?
        .is_some();
    if !db_exists {
        let statement: String = superuser
            .query_one(
                "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $2::text)",
                &[&database, &owner],
            )
            .await
            .map_err(q("quoting"))?
            .get(0);
        match superuser.batch_execute(&statement).await {
            Ok(()) => tracing::info!(database, owner, "created database"),
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(q("creating the database")(e)),
        }
    }
    Ok(())
}
