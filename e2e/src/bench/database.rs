//! Subscribers in bulk and the tables between runs.

#[allow(unused_imports)]
use super::*;

/// Inserts subscribers `bench1..=benchN` and the callees, each with ha1/ha1b
/// (what our config reads) and the plaintext password (what the stock config
/// reads) in the same row. Returns how many rows the table holds.
pub async fn seed_subscribers(db: &Client, users: u32) -> Result<i64> {
    db.execute(
        "INSERT INTO subscriber (username, domain, password, ha1, ha1b)
         SELECT 'bench' || i, $2::text, 'pw' || i,
                md5('bench' || i || ':' || $2 || ':pw' || i),
                md5('bench' || i || '@' || $2 || ':' || $2 || ':pw' || i)
         FROM generate_series(1, $1::int) AS i
         ON CONFLICT (username, domain) DO UPDATE
             SET password = EXCLUDED.password, ha1 = EXCLUDED.ha1, ha1b = EXCLUDED.ha1b",
        &[&(users as i32), &DOMAIN],
    )
    .await
    .context("inserting the bench subscribers")?;
    for callee in CALLEES {
        db.execute(
            "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (username, domain) DO UPDATE
                 SET password = EXCLUDED.password, ha1 = EXCLUDED.ha1, ha1b = EXCLUDED.ha1b",
            &[
                &callee,
                &DOMAIN,
                &CALLEE_PASSWORD,
                &sipstack_db::subscriber::ha1(callee, DOMAIN, CALLEE_PASSWORD),
                &sipstack_db::subscriber::ha1b(callee, DOMAIN, DOMAIN, CALLEE_PASSWORD),
            ],
        )
        .await
        .context("inserting the callees")?;
    }
    let row = db.query_one("SELECT count(*) FROM subscriber", &[]).await?;
    Ok(row.get(0))
}

/// Empties `location` and vacuums the tables the configs use (between the two
/// configs, so that both start alike and neither meets autovacuum cleaning up
/// after the other).
pub async fn clear_location(db: &Client) -> Result<()> {
    db.batch_execute("TRUNCATE location; TRUNCATE location_attrs")
        .await
        .context("emptying location")?;
    vacuum(db).await
}

/// `VACUUM (ANALYZE)` of subscriber, location and location_attrs (one statement
/// each: VACUUM does not run inside a transaction block).
pub async fn vacuum(db: &Client) -> Result<()> {
    for table in ["subscriber", "location", "location_attrs"] {
        db.batch_execute(&format!("VACUUM (ANALYZE) {table}"))
            .await
            .with_context(|| format!("vacuuming {table}"))?;
    }
    Ok(())
}

pub async fn location_rows(db: &Client) -> Result<i64> {
    Ok(db
        .query_one("SELECT count(*) FROM location", &[])
        .await?
        .get(0))
}
