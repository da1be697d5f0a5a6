//! Call detail records (`sipstack_cdr`): one row per call, written by the media
//! nodes when a call ends, read by `sipctl get cdrs`.

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
    validate_query(query)?;
    // LIMIT NULL is no limit.
    let sql = format!(
        "SELECT {CDR_COLUMNS} FROM sipstack_cdr
         WHERE ($1::timestamptz IS NULL OR start_time >= $1)
           AND ($2::timestamptz IS NULL OR start_time < $2)
           AND ($3::text IS NULL OR starts_with(caller_number, $3))
           AND ($4::text IS NULL OR starts_with(callee_number, $4))
         ORDER BY start_time DESC, id DESC
         LIMIT $5::bigint"
    );
    let rows = client
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
        .map_err(DbError::query("cannot read call detail records"))?;
    Ok(rows.iter().map(cdr_from_row).collect())
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
