//! Versioned schema migrations, embedded in the binary.

use md5::{Digest, Md5};
use tokio_postgres::{Client, GenericClient};

use crate::DbError;

/// One schema migration: `migrations/NNNN_name.sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// Identifies the migration's text, so an edited migration is noticed.
    /// Line endings are normalised: a checkout with CRLF must not count as a change.
    pub fn checksum(&self) -> String {
        let text = self.sql.replace("\r\n", "\n");
        format!("md5:{:x}", Md5::digest(text.as_bytes()))
    }
}

static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "kamailio_core",
        sql: include_str!("../migrations/0001_kamailio_core.sql"),
    },
    Migration {
        version: 2,
        name: "routing",
        sql: include_str!("../migrations/0002_routing.sql"),
    },
    Migration {
        version: 3,
        name: "subscriber_listing",
        sql: include_str!("../migrations/0003_subscriber_listing.sql"),
    },
    Migration {
        version: 4,
        name: "cdr_codec_call_id",
        sql: include_str!("../migrations/0004_cdr_codec_call_id.sql"),
    },
    Migration {
        version: 5,
        name: "route_service",
        sql: include_str!("../migrations/0005_route_service.sql"),
    },
    Migration {
        version: 6,
        name: "trunks",
        sql: include_str!("../migrations/0006_trunks.sql"),
    },
    Migration {
        version: 7,
        name: "call_limits",
        sql: include_str!("../migrations/0007_call_limits.sql"),
    },
    Migration {
        version: 8,
        name: "edge_cdr",
        sql: include_str!("../migrations/0008_edge_cdr.sql"),
    },
    Migration {
        version: 9,
        name: "voicemail",
        sql: include_str!("../migrations/0009_voicemail.sql"),
    },
];

/// Every migration this binary carries, oldest first.
pub fn known_migrations() -> &'static [Migration] {
    MIGRATIONS
}

/// The newest schema version this binary knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// A migration applied by one [`migrate`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: String,
}

/// What one [`migrate`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Schema version found before migrating (0: empty database).
    pub version_before: i32,
    /// Schema version now, after migrating.
    pub version: i32,
    /// Migrations applied now; empty when the schema was already current.
    pub applied: Vec<AppliedMigration>,
}

/// Arbitrary, fixed: every sipstack binary migrating any database takes this lock.
const MIGRATION_LOCK_KEY: i64 = 0x5349_5053_5441_434b; // "SIPSTACK"

const CREATE_BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS sipstack_schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Brings the schema to [`latest_version`].
///
/// Everything happens in one transaction holding an advisory lock, so migrators
/// started side by side run one after the other and a failed migration leaves
/// the database as it was. Refuses a database migrated by a newer sipstack, and
/// one whose applied migrations differ from this binary's.
pub async fn migrate(client: &mut Client) -> Result<MigrationReport, DbError> {
    let tx = client
        .transaction()
        .await
        .map_err(DbError::query("cannot begin the migration transaction"))?;
    // Waiting for another migrator is expected; waiting forever is not.
    tx.batch_execute("SET LOCAL lock_timeout = '120s'")
        .await
        .map_err(DbError::query("cannot set the migration lock timeout"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(DbError::query(
            "cannot take the migration lock (is another migration stuck?)",
        ))?;
    tx.batch_execute(CREATE_BOOKKEEPING)
        .await
        .map_err(DbError::query("cannot create sipstack_schema_migrations"))?;

    let rows = tx
        .query(
            "SELECT version, name, checksum FROM sipstack_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(DbError::query("cannot read sipstack_schema_migrations"))?;
    let mut applied_versions = Vec::with_capacity(rows.len());
    for row in &rows {
        let version: i32 = row.get(0);
        let name: String = row.get(1);
        let checksum: String = row.get(2);
        check_applied(version, &name, &checksum)?;
        applied_versions.push(version);
    }
    let version_before = applied_versions.iter().copied().max().unwrap_or(0);

    let mut applied = Vec::new();
    for migration in MIGRATIONS
        .iter()
        .filter(|m| !applied_versions.contains(&m.version))
    {
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "applying schema migration"
        );
        tx.batch_execute(migration.sql)
            .await
            .map_err(DbError::query(format!(
                "migration {:04} ({}) failed",
                migration.version, migration.name
            )))?;
        tx.execute(
            "INSERT INTO sipstack_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &migration.checksum()],
        )
        .await
        .map_err(DbError::query("cannot record the applied migration"))?;
        applied.push(AppliedMigration {
            version: migration.version,
            name: migration.name.to_string(),
        });
    }
    tx.commit()
        .await
        .map_err(DbError::query("cannot commit the schema migrations"))?;

    let version = version_before.max(applied.iter().map(|m| m.version).max().unwrap_or(0));
    Ok(MigrationReport {
        version_before,
        version,
        applied,
    })
}

fn check_applied(version: i32, name: &str, checksum: &str) -> Result<(), DbError> {
    let latest = latest_version();
    if version > latest {
        return Err(DbError::SchemaTooNew {
            database: version,
            known: latest,
        });
    }
    let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
        return Err(DbError::UnknownMigration {
            version,
            name: name.to_string(),
        });
    };
    let embedded = known.checksum();
    if checksum != embedded {
        return Err(DbError::ChecksumMismatch {
            version,
            name: known.name.to_string(),
            applied: checksum.to_string(),
            embedded,
        });
    }
    Ok(())
}

/// The highest applied migration; 0 for a database sipstack never migrated.
pub async fn schema_version(client: &impl GenericClient) -> Result<i32, DbError> {
    let row = client
        .query_one(
            "SELECT to_regclass('sipstack_schema_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(DbError::query("cannot look for sipstack_schema_migrations"))?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM sipstack_schema_migrations",
            &[],
        )
        .await
        .map_err(DbError::query("cannot read the schema version"))?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let expected: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(
            files, expected,
            "each file in db/migrations must be listed in MIGRATIONS"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "versions are consecutive from 1");
            let on_disk = std::fs::read_to_string(dir.join(&expected[i])).unwrap();
            assert_eq!(on_disk, m.sql);
        }
    }

    #[test]
    fn migrations_manage_their_own_transaction_boundaries() {
        for m in MIGRATIONS {
            let upper = m.sql.to_uppercase();
            for word in ["BEGIN;", "COMMIT;", "ROLLBACK;"] {
                assert!(
                    !upper.contains(word),
                    "migration {} must not contain {word}",
                    m.name
                );
            }
        }
    }

    #[test]
    fn checksum_ignores_line_endings_but_not_content() {
        let a = Migration {
            version: 1,
            name: "x",
            sql: "CREATE TABLE t (a int);\n",
        };
        let b = Migration {
            version: 1,
            name: "x",
            sql: "CREATE TABLE t (a int);\r\n",
        };
        let c = Migration {
            version: 1,
            name: "x",
            sql: "CREATE TABLE t (b int);\n",
        };
        assert_eq!(a.checksum(), b.checksum());
        assert_ne!(a.checksum(), c.checksum());
        assert!(a.checksum().starts_with("md5:"));
    }

    #[test]
    fn refusals_explain_what_to_do() {
        let too_new = check_applied(latest_version() + 1, "future", "md5:0").unwrap_err();
        assert!(matches!(too_new, DbError::SchemaTooNew { .. }));
        assert!(
            too_new.to_string().contains("upgrade sipstack"),
            "{too_new}"
        );

        let changed = check_applied(1, "kamailio_core", "md5:0").unwrap_err();
        assert!(
            changed.to_string().contains("0001 (kamailio_core)"),
            "{changed}"
        );

        assert!(check_applied(1, "kamailio_core", &MIGRATIONS[0].checksum()).is_ok());
    }
}
