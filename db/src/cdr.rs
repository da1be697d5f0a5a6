//! Call detail records. The media nodes write theirs (`sipstack_cdr`) when a call
//! ends; the edges' records (`sipstack_edge_cdr`) come through the call-record
//! shipper. `sipctl get cdrs` reads both joined by Call-ID (the view
//! `sipstack_call`): one call through an edge and a media node is one [`Call`].

use std::time::SystemTime;

use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row};

use crate::validate::{self, invalid, shown};
use crate::DbError;

/// A stored call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cdr {
    pub id: i64,
    pub call_uuid: String,
    pub caller_number: String,
    pub callee_number: String,
    pub edge_node: String,
    pub media_node: String,
    pub start_time: SystemTime,
    pub answer_time: Option<SystemTime>,
    pub end_time: Option<SystemTime>,
    /// Seconds from start to end.
    pub duration: i32,
    /// Seconds from answer to end.
    pub billsec: i32,
    pub hangup_cause: String,
    /// Codec of the caller's leg (e.g. PCMU), empty when the node did not say.
    pub codec: String,
    /// SIP Call-ID of the caller's leg.
    pub sip_call_id: String,
}

/// A call to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCdr {
    pub call_uuid: String,
    pub caller_number: String,
    pub callee_number: String,
    pub edge_node: String,
    pub media_node: String,
    pub start_time: SystemTime,
    pub answer_time: Option<SystemTime>,
    pub end_time: Option<SystemTime>,
    pub duration: i32,
    pub billsec: i32,
    pub hangup_cause: String,
}

/// Which records to list. Every filter is optional; the newest come first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CdrQuery {
    /// Calls that started at or after this time.
    pub since: Option<SystemTime>,
    /// Calls that started before this time.
    pub until: Option<SystemTime>,
    /// Calling number starting with this.
    pub from_prefix: Option<String>,
    /// Called number starting with this.
    pub to_prefix: Option<String>,
    /// At most this many; `None`: all.
    pub limit: Option<i64>,
}

/// Longest number prefix a filter may hold.
const MAX_FILTER_LEN: usize = 128;

fn validate_query(query: &CdrQuery) -> Result<(), DbError> {
    if let (Some(since), Some(until)) = (query.since, query.until) {
        if since > until {
            return Err(invalid(
                "since",
                "the start of the period is after its end (until)",
                "give a since before until",
            ));
        }
    }
    for (field, value) in [("from", &query.from_prefix), ("to", &query.to_prefix)] {
        if let Some(v) = value {
            validate::one_line_text(field, v, MAX_FILTER_LEN)?;
        }
    }
    if let Some(limit) = query.limit {
        if limit < 0 {
            return Err(invalid(
                "limit",
                format!("{limit} is negative"),
                "give 0 or more (0: all records)",
            ));
        }
    }
    Ok(())
}

const CDR_COLUMNS: &str =
    "id, call_uuid, caller_number, callee_number, edge_node, media_node, start_time, \
     answer_time, end_time, duration, billsec, hangup_cause, codec, sip_call_id";

fn cdr_from_row(row: &Row) -> Cdr {
    Cdr {
        id: row.get(0),
        call_uuid: row.get(1),
        caller_number: row.get(2),
        callee_number: row.get(3),
        edge_node: row.get(4),
        media_node: row.get(5),
        start_time: row.get(6),
        answer_time: row.get(7),
        end_time: row.get(8),
        duration: row.get(9),
        billsec: row.get(10),
        hangup_cause: row.get(11),
        codec: row.get(12),
        sip_call_id: row.get(13),
    }
}

/// The records `query` asks for, newest first.
pub async fn list(client: &impl GenericClient, query: &CdrQuery) -> Result<Vec<Cdr>, DbError> {
    let rows = filtered(
        client,
        &format!("SELECT {CDR_COLUMNS} FROM sipstack_cdr"),
        ("caller_number", "callee_number"),
        "start_time DESC, id DESC",
        query,
    )
    .await?;
    Ok(rows.iter().map(cdr_from_row).collect())
}

/// A call as the edge and the media node recorded it (either may be missing):
/// one row of the view `sipstack_call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub edge_cdr_id: Option<i64>,
    pub media_cdr_id: Option<i64>,
    pub sip_call_id: String,
    pub start_time: SystemTime,
    pub answer_time: Option<SystemTime>,
    pub end_time: Option<SystemTime>,
    pub caller: String,
    pub callee: String,
    /// The edge's record: the SipEdge, where the call came from and went.
    pub edge: Option<EdgeRecord>,
    /// The media node's record.
    pub media: Option<MediaRecord>,
}

/// What the edge recorded of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRecord {
    pub edge: String,
    /// subscriber, trunk or media
    pub source: String,
    pub source_subscriber: Option<String>,
    pub source_trunk: Option<String>,
    /// user, trunk, pool or uri
    pub destination_kind: String,
    pub destination: String,
    pub destination_trunk: Option<String>,
    /// The final answer to the INVITE (200 answered), 0 if none came.
    pub sip_code: i32,
    /// caller, callee or timeout, for an answered call.
    pub ended_by: Option<String>,
}

/// What the media node recorded of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRecord {
    pub call_uuid: String,
    /// The address the call came from, as the node saw it (an edge's).
    pub edge_node: String,
    pub media_node: String,
    pub hangup_cause: String,
    pub codec: String,
    pub duration: i32,
    pub billsec: i32,
}

impl Call {
    /// Seconds from start to end: the media node's count when it has one.
    pub fn duration(&self) -> i32 {
        match &self.media {
            Some(m) => m.duration,
            None => seconds_between(Some(self.start_time), self.end_time),
        }
    }

    /// Seconds from answer to end.
    pub fn billsec(&self) -> i32 {
        match &self.media {
            Some(m) => m.billsec,
            None => seconds_between(self.answer_time, self.end_time),
        }
    }
}

fn seconds_between(from: Option<SystemTime>, to: Option<SystemTime>) -> i32 {
    match (from, to) {
        (Some(f), Some(t)) => t
            .duration_since(f)
            .map(|d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX))
            .unwrap_or(0),
        _ => 0,
    }
}

const CALL_COLUMNS: &str = "edge_cdr_id, media_cdr_id, COALESCE(sip_call_id, ''), start_time, \
     answer_time, end_time, caller, callee, edge, source, source_subscriber, source_trunk, \
     destination_kind, destination, destination_trunk, sip_code, ended_by, call_uuid, media_node, \
     hangup_cause, codec, media_duration, media_billsec, edge_node";

fn call_from_row(row: &Row) -> Call {
    let edge_cdr_id: Option<i64> = row.get(0);
    let media_cdr_id: Option<i64> = row.get(1);
    let edge = edge_cdr_id.map(|_| EdgeRecord {
        edge: row.get(8),
        source: row.get(9),
        source_subscriber: row.get(10),
        source_trunk: row.get(11),
        destination_kind: row.get(12),
        destination: row.get(13),
        destination_trunk: row.get(14),
        sip_code: row.get(15),
        ended_by: row.get(16),
    });
    let media = media_cdr_id.map(|_| MediaRecord {
        call_uuid: row.get(17),
        media_node: row.get(18),
        hangup_cause: row.get(19),
        codec: row.get(20),
        duration: row.get(21),
        billsec: row.get(22),
        edge_node: row.get(23),
    });
    Call {
        edge_cdr_id,
        media_cdr_id,
        sip_call_id: row.get(2),
        start_time: row.get(3),
        answer_time: row.get(4),
        end_time: row.get(5),
        caller: row.get(6),
        callee: row.get(7),
        edge,
        media,
    }
}

/// The calls `query` asks for, newest first: the edges' and the media nodes'
/// records joined by Call-ID.
pub async fn list_calls(
    client: &impl GenericClient,
    query: &CdrQuery,
) -> Result<Vec<Call>, DbError> {
    let rows = filtered(
        client,
        &format!("SELECT {CALL_COLUMNS} FROM sipstack_call"),
        ("caller", "callee"),
        "start_time DESC, COALESCE(media_cdr_id, edge_cdr_id) DESC",
        query,
    )
    .await?;
    Ok(rows.iter().map(call_from_row).collect())
}

/// The rows of `select` that `query` asks for, in `order`; `numbers` names the
/// caller and callee columns the prefixes filter. The names are this module's
/// constants, never input.
async fn filtered(
    client: &impl GenericClient,
    select: &str,
    numbers: (&str, &str),
    order: &str,
    query: &CdrQuery,
) -> Result<Vec<Row>, DbError> {
    validate_query(query)?;
    let (caller, callee) = numbers;
    // LIMIT NULL is no limit.
    let sql = format!(
        "{select}
         WHERE ($1::timestamptz IS NULL OR start_time >= $1)
           AND ($2::timestamptz IS NULL OR start_time < $2)
           AND ($3::text IS NULL OR starts_with({caller}, $3))
           AND ($4::text IS NULL OR starts_with({callee}, $4))
         ORDER BY {order}
         LIMIT $5::bigint"
    );
    client
        .query(
            &sql,
            &[
                &query.since,
                &query.until,
                &query.from_prefix,
                &query.to_prefix,
                &query.limit,
            ],
        )
        .await
        .map_err(DbError::query("cannot read call detail records"))
}

/// Records one call.
pub async fn insert(client: &impl GenericClient, cdr: &NewCdr) -> Result<Cdr, DbError> {
    if cdr.call_uuid.is_empty() {
        return Err(invalid(
            "call_uuid",
            "the call UUID is empty",
            "give the call's UUID",
        ));
    }
    validate::one_line_text("call_uuid", &cdr.call_uuid, 255)?;
    for (field, value) in [
        ("caller_number", &cdr.caller_number),
        ("callee_number", &cdr.callee_number),
        ("edge_node", &cdr.edge_node),
        ("media_node", &cdr.media_node),
        ("hangup_cause", &cdr.hangup_cause),
    ] {
        validate::one_line_text(field, value, 255)?;
    }
    for (field, value) in [("duration", cdr.duration), ("billsec", cdr.billsec)] {
        if value < 0 {
            return Err(invalid(
                field,
                format!("{value} is negative"),
                "give seconds, 0 or more",
            ));
        }
    }
    let sql = format!(
        "INSERT INTO sipstack_cdr (call_uuid, caller_number, callee_number, edge_node, media_node, start_time,
             answer_time, end_time, duration, billsec, hangup_cause)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING {CDR_COLUMNS}"
    );
    let result = client
        .query_one(
            &sql,
            &[
                &cdr.call_uuid,
                &cdr.caller_number,
                &cdr.callee_number,
                &cdr.edge_node,
                &cdr.media_node,
                &cdr.start_time,
                &cdr.answer_time,
                &cdr.end_time,
                &cdr.duration,
                &cdr.billsec,
                &cdr.hangup_cause,
            ],
        )
        .await;
    match result {
        Ok(row) => Ok(cdr_from_row(&row)),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(DbError::AlreadyExists {
            kind: "call detail record",
            name: cdr.call_uuid.clone(),
        }),
        Err(e) => Err(DbError::query(format!(
            "cannot record call {}",
            shown(&cdr.call_uuid)
        ))(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn field_of(err: DbError) -> String {
        match err {
            DbError::Invalid { field, .. } => field,
            other => panic!("not a validation error: {other}"),
        }
    }

    #[test]
    fn queries_are_checked() {
        assert!(validate_query(&CdrQuery::default()).is_ok());
        let now = SystemTime::now();
        let q = CdrQuery {
            since: Some(now),
            until: Some(now - Duration::from_secs(1)),
            ..Default::default()
        };
        assert_eq!(field_of(validate_query(&q).unwrap_err()), "since");
        let q = CdrQuery {
            limit: Some(-1),
            ..Default::default()
        };
        assert_eq!(field_of(validate_query(&q).unwrap_err()), "limit");
        let q = CdrQuery {
            to_prefix: Some("44\n".into()),
            ..Default::default()
        };
        assert_eq!(field_of(validate_query(&q).unwrap_err()), "to");
        // quotes are just characters of a prefix
        let q = CdrQuery {
            from_prefix: Some("'; DROP TABLE sipstack_cdr; --".into()),
            ..Default::default()
        };
        assert!(validate_query(&q).is_ok());
    }
}
