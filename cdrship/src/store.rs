//! Where the records go: [`Store`], and [`PgStore`], the table
//! `sipstack_edge_cdr` in PostgreSQL.

use std::future::Future;
use std::time::{Duration, SystemTime};

use sipstack_db::DbError;
use tokio_postgres::Client;

use crate::record::EdgeCdr;
use crate::StoreError;

/// Stores records. A record already stored (the same Call-ID and From-tag) is
/// skipped, so a batch may be stored again after a failure that came too late
/// to tell whether it was stored.
pub trait Store {
    /// Stores all `records` of `edge` in one transaction, or none of them.
    /// Returns how many were not stored before.
    fn insert(
        &mut self,
        edge: &str,
        records: &[EdgeCdr],
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long storing one batch may take before the connection is given up
/// (a server that stopped answering would otherwise hold the shipper forever).
pub const INSERT_TIMEOUT: Duration = Duration::from_secs(30);

/// Rows per statement: a batch is one transaction of statements this large.
const ROWS_PER_STATEMENT: usize = 1000;

/// One statement for many rows: the columns go as arrays, the trunk ids become
/// names with a join. Arrays keep it one round trip however many rows.
const INSERT_SQL: &str = "\
INSERT INTO sipstack_edge_cdr (edge, sip_call_id, from_tag, caller, callee, source,
    source_subscriber, source_trunk, destination_kind, destination, destination_trunk,
    start_time, answer_time, end_time, sip_code, ended_by)
SELECT $1::text, r.sip_call_id, r.from_tag, r.caller, r.callee, r.source,
       r.source_subscriber, st.name, r.destination_kind, r.destination, dt.name,
       r.start_time, r.answer_time, r.end_time, r.sip_code, r.ended_by
FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::int8[], $9::text[], $10::text[], $11::int8[],
            $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::int4[], $16::text[])
     WITH ORDINALITY AS r(sip_call_id, from_tag, caller, callee, source,
            source_subscriber, source_trunk_id, destination_kind, destination, destination_trunk_id,
            start_time, answer_time, end_time, sip_code, ended_by, ord)
LEFT JOIN sipstack_trunk AS st ON st.id = r.source_trunk_id
LEFT JOIN sipstack_trunk AS dt ON dt.id = r.destination_trunk_id
ORDER BY r.ord
ON CONFLICT (sip_call_id, from_tag) DO NOTHING";

/// The platform database. It connects when first needed and again after any
/// failure, so an outage delays records and never stops the shipper.
pub struct PgStore {
    url: String,
    connect_timeout: Duration,
    insert_timeout: Duration,
    client: Option<Client>,
}

impl std::fmt::Debug for PgStore {
    // the URL may hold the password: never in logs
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// `url` is a libpq-style URL or key=value string.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: CONNECT_TIMEOUT,
            insert_timeout: INSERT_TIMEOUT,
            client: None,
        }
    }

    /// Changes the time limits of connecting and of storing one batch.
    pub fn with_timeouts(mut self, connect: Duration, insert: Duration) -> Self {
        self.connect_timeout = connect;
        self.insert_timeout = insert;
        self
    }

    async fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        let client = match self.client.take() {
            Some(client) => client,
            None => sipstack_db::connect(&self.url, self.connect_timeout).await?,
        };
        Ok(self.client.insert(client))
    }
}

impl Store for PgStore {
    async fn insert(&mut self, edge: &str, records: &[EdgeCdr]) -> Result<usize, StoreError> {
        let limit = self.insert_timeout;
        let client = self.client().await?;
        let result = tokio::time::timeout(limit, insert_all(client, edge, records)).await;
        match result {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(e)) => {
                // a fresh connection next time: this one may be broken
                self.client = None;
                Err(e)
            }
            Err(_) => {
                self.client = None;
                Err(StoreError::Timeout(limit))
            }
        }
    }
}

fn query_error(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| {
        StoreError::Db(DbError::Query {
            context: context.to_string(),
            source,
        })
    }
}

async fn insert_all(
    client: &mut Client,
    edge: &str,
    records: &[EdgeCdr],
) -> Result<usize, StoreError> {
    let tx = client
        .transaction()
        .await
        .map_err(query_error("cannot begin a transaction"))?;
    let mut stored = 0u64;
    for chunk in records.chunks(ROWS_PER_STATEMENT) {
        let sip_call_id: Vec<&str> = chunk.iter().map(|r| r.sip_call_id.as_str()).collect();
        let from_tag: Vec<&str> = chunk.iter().map(|r| r.from_tag.as_str()).collect();
        let caller: Vec<&str> = chunk.iter().map(|r| r.caller.as_str()).collect();
        let callee: Vec<&str> = chunk.iter().map(|r| r.callee.as_str()).collect();
        let source: Vec<&str> = chunk.iter().map(|r| r.source.as_str()).collect();
        let source_subscriber: Vec<Option<&str>> = chunk
            .iter()
            .map(|r| r.source_subscriber.as_deref())
            .collect();
        let source_trunk_id: Vec<Option<i64>> = chunk.iter().map(|r| r.source_trunk_id).collect();
        let destination_kind: Vec<&str> =
            chunk.iter().map(|r| r.destination_kind.as_str()).collect();
        let destination: Vec<&str> = chunk.iter().map(|r| r.destination.as_str()).collect();
        let destination_trunk_id: Vec<Option<i64>> =
            chunk.iter().map(|r| r.destination_trunk_id).collect();
        let start_time: Vec<SystemTime> = chunk.iter().map(|r| r.start_time).collect();
        let answer_time: Vec<Option<SystemTime>> = chunk.iter().map(|r| r.answer_time).collect();
        let end_time: Vec<SystemTime> = chunk.iter().map(|r| r.end_time).collect();
        let sip_code: Vec<i32> = chunk.iter().map(|r| r.sip_code).collect();
        let ended_by: Vec<Option<&str>> = chunk
            .iter()
            .map(|r| r.ended_by.map(|e| e.as_str()))
            .collect();
        stored += tx
            .execute(
                INSERT_SQL,
                &[
                    &edge,
                    &sip_call_id,
                    &from_tag,
                    &caller,
                    &callee,
                    &source,
                    &source_subscriber,
                    &source_trunk_id,
                    &destination_kind,
                    &destination,
                    &destination_trunk_id,
                    &start_time,
                    &answer_time,
                    &end_time,
                    &sip_code,
                    &ended_by,
                ],
            )
            .await
            .map_err(query_error("cannot store edge call records"))?;
    }
    tx.commit()
        .await
        .map_err(query_error("cannot commit edge call records"))?;
    Ok(usize::try_from(stored).unwrap_or(usize::MAX))
}
