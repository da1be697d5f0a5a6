//! Call detail records: `get cdrs`, one line per call, the edge's record and the
//! media node's joined by Call-ID.

use std::str::FromStr;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use clap::Args;
use serde::Serialize;
use sipstack_db::cdr::{self, Call, CdrQuery};

use super::{CliError, Ctx};
use crate::output::Columns;

/// List call detail records, newest first (`-o csv` to export): one per call, with
/// what the edge recorded (where it came from and went, the SIP answer, who hung
/// up) and what the media node recorded (cause, codec), joined by Call-ID.
#[derive(Debug, Args)]
#[command(
    after_help = "Times are RFC 3339 (2026-11-01T08:00:00Z, or with an offset), a date (2026-11-01: \
midnight UTC), or an age before now (90s, 15m, 2h, 7d, 2w).\n\nExamples:\n  sipctl get cdrs --since 1h\n  sipctl get cdrs --since 2026-11-01 --until 2026-12-01 --to +44 --limit 0 -o csv > november.csv"
)]
pub struct GetArgs {
    /// Calls that started at or after this time (RFC 3339, a date, or an age like 15m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Calls that started before this time (same forms).
    #[arg(long)]
    pub until: Option<String>,
    /// Calling number starting with this.
    #[arg(long)]
    pub from: Option<String>,
    /// Called number starting with this.
    #[arg(long)]
    pub to: Option<String>,
    /// At most this many records, the newest (0: all).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub limit: i64,
}

/// One call as sipctl prints it; the JSON/YAML field names are stable.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CdrView {
    /// The media node's record's id, else the edge's.
    id: i64,
    edge_cdr_id: Option<i64>,
    media_cdr_id: Option<i64>,
    call_uuid: String,
    caller_number: String,
    callee_number: String,
    start_time: String,
    answer_time: Option<String>,
    end_time: Option<String>,
    /// Seconds from start to end.
    duration: i32,
    /// Seconds from answer to end.
    billsec: i32,
    hangup_cause: String,
    codec: String,
    sip_call_id: String,
    /// The address the media node saw the call come from.
    edge_node: String,
    media_node: String,
    /// The SipEdge that relayed the call (empty: no record of the edge's).
    sip_edge: String,
    /// subscriber, trunk or media.
    source: Option<String>,
    /// The subscriber (user@domain) or the trunk the call came from.
    source_name: Option<String>,
    /// user, trunk, pool or uri.
    destination_kind: Option<String>,
    /// Where the edge relayed it last (a contact, a gateway, a media node).
    destination: Option<String>,
    destination_trunk: Option<String>,
    /// The final answer to the INVITE as the edge saw it (200: answered).
    sip_code: Option<i32>,
    /// caller, callee or timeout, for an answered call.
    ended_by: Option<String>,
}

impl From<Call> for CdrView {
    fn from(c: Call) -> Self {
        let (duration, billsec) = (c.duration(), c.billsec());
        let media = c.media.unwrap_or(cdr::MediaRecord {
            call_uuid: String::new(),
            edge_node: String::new(),
            media_node: String::new(),
            hangup_cause: String::new(),
            codec: String::new(),
            duration,
            billsec,
        });
        let edge = c.edge;
        // a call the media node did not see: its cause is the edge's SIP answer
        let hangup_cause = match (&edge, media.hangup_cause.is_empty()) {
            (Some(e), true) => match &e.ended_by {
                Some(by) => format!("SIP {}, ended by {by}", e.sip_code),
                None => format!("SIP {}", e.sip_code),
            },
            _ => media.hangup_cause,
        };
        Self {
            id: c.media_cdr_id.or(c.edge_cdr_id).unwrap_or_default(),
            edge_cdr_id: c.edge_cdr_id,
            media_cdr_id: c.media_cdr_id,
            call_uuid: media.call_uuid,
            caller_number: c.caller,
            callee_number: c.callee,
            start_time: rfc3339(c.start_time),
            answer_time: c.answer_time.map(rfc3339),
            end_time: c.end_time.map(rfc3339),
            duration,
            billsec,
            hangup_cause,
            codec: media.codec,
            sip_call_id: c.sip_call_id,
            edge_node: media.edge_node,
            media_node: media.media_node,
            sip_edge: edge.as_ref().map(|e| e.edge.clone()).unwrap_or_default(),
            source: edge.as_ref().map(|e| e.source.clone()),
            source_name: edge.as_ref().and_then(|e| {
                e.source_subscriber
                    .clone()
                    .or_else(|| e.source_trunk.clone())
            }),
            destination_kind: edge.as_ref().map(|e| e.destination_kind.clone()),
            destination: edge.as_ref().map(|e| e.destination.clone()),
            destination_trunk: edge.as_ref().and_then(|e| e.destination_trunk.clone()),
            sip_code: edge.as_ref().map(|e| e.sip_code),
            ended_by: edge.and_then(|e| e.ended_by),
        }
    }
}

const COLUMNS: Columns = Columns {
    headers: &[
        "START",
        "FROM",
        "TO",
        "DURATION",
        "BILLSEC",
        "CAUSE",
        "CODEC",
        "ANSWER",
        "END",
        "CALL-UUID",
        "SIP-CALL-ID",
        "EDGE",
        "SOURCE",
        "DESTINATION",
        "MEDIA",
        "ID",
    ],
    narrow: 7,
};

fn row(c: &CdrView) -> Vec<String> {
    vec![
        c.start_time.clone(),
        c.caller_number.clone(),
        c.callee_number.clone(),
        c.duration.to_string(),
        c.billsec.to_string(),
        c.hangup_cause.clone(),
        c.codec.clone(),
        c.answer_time.clone().unwrap_or_default(),
        c.end_time.clone().unwrap_or_default(),
        c.call_uuid.clone(),
        c.sip_call_id.clone(),
        if c.sip_edge.is_empty() {
            c.edge_node.clone()
        } else {
            c.sip_edge.clone()
        },
        match (&c.source, &c.source_name) {
            (Some(s), Some(n)) if !n.is_empty() => format!("{s} {n}"),
            (Some(s), _) => s.clone(),
            _ => String::new(),
        },
        match (&c.destination_kind, &c.destination) {
            (Some(k), Some(d)) => format!("{k} {d}"),
            _ => String::new(),
        },
        c.media_node.clone(),
        c.id.to_string(),
    ]
}

pub async fn get(ctx: &Ctx, args: GetArgs) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let since = args
        .since
        .as_deref()
        .map(|v| parse_time("--since", v, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|v| parse_time("--until", v, now))
        .transpose()?;
    if args.limit < 0 {
        return Err(CliError::Invalid(format!(
            "--limit: {} is negative; give 0 or more (0: all records)",
            args.limit
        ))
        .into());
    }
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            return Err(CliError::Invalid(format!(
                "--since: {} is after --until {}; give a period whose start comes first",
                rfc3339(s),
                rfc3339(u)
            ))
            .into());
        }
    }
    let query = CdrQuery {
        since,
        until,
        from_prefix: args.from.clone(),
        to_prefix: args.to.clone(),
        limit: (args.limit > 0).then_some(args.limit),
    };
    let db = ctx.db().await?;
    let records = cdr::list_calls(&db, &query).await.map_err(flag_error)?;
    let views: Vec<CdrView> = records.into_iter().map(CdrView::from).collect();
    ctx.output.list(&views, &COLUMNS, row)?;
    if ctx.output.is_human() {
        if views.is_empty() {
            eprintln!("No call detail records match.");
        } else if args.limit > 0 && views.len() as i64 == args.limit {
            eprintln!(
                "note: the newest {} records; --limit 0 lists all",
                args.limit
            );
        }
    }
    Ok(())
}

/// Names the command-line flag in a validation error of the database layer.
fn flag_error(e: sipstack_db::DbError) -> anyhow::Error {
    match e {
        sipstack_db::DbError::Invalid {
            field,
            problem,
            fix,
        } => sipstack_db::DbError::Invalid {
            field: format!("--{field}"),
            problem,
            fix,
        }
        .into(),
        other => other.into(),
    }
}

static AGE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"^([0-9]{1,9})(s|m|h|d|w)$")
        .unwrap_or_else(|e| panic!("built-in pattern: {e}"))
});

/// A point in time as `--since`/`--until` take it: RFC 3339, a date (midnight UTC),
/// or an age before `now` (`90s`, `15m`, `2h`, `7d`, `2w`).
pub(super) fn parse_time(flag: &str, value: &str, now: SystemTime) -> Result<SystemTime, CliError> {
    let value = value.trim();
    let bad = |why: &str| {
        CliError::Invalid(format!(
            "{flag}: {value:?} {why}; give RFC 3339 (2026-11-01T08:00:00Z), a date (2026-11-01) or an age (15m, 2h, 7d)"
        ))
    };
    if let Some(c) = AGE.captures(value) {
        let n: u64 = c[1].parse().map_err(|_| bad("is not a number of units"))?;
        let unit = match &c[2] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => 7 * 86_400,
        };
        return n
            .checked_mul(unit)
            .and_then(|secs| now.checked_sub(Duration::from_secs(secs)))
            .ok_or_else(|| bad("reaches too far back"));
    }
    if value.len() == 10 {
        let date = jiff::civil::Date::from_str(value).map_err(|_| bad("is not a date"))?;
        let ts = date
            .to_datetime(jiff::civil::Time::midnight())
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map_err(|_| bad("is out of range"))?
            .timestamp();
        return Ok(SystemTime::from(ts));
    }
    match jiff::Timestamp::from_str(value) {
        Ok(ts) => Ok(SystemTime::from(ts)),
        Err(_) if jiff::civil::DateTime::from_str(value).is_ok() => Err(bad(
            "has no time zone: add Z for UTC or an offset like +01:00",
        )),
        Err(_) => Err(bad("is not a time")),
    }
}

/// RFC 3339 in UTC, whole seconds.
pub(super) fn rfc3339(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => jiff::Timestamp::from_second(ts.as_second())
            .map(|s| s.to_string())
            .unwrap_or_else(|_| ts.to_string()),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc: &str) -> SystemTime {
        SystemTime::from(jiff::Timestamp::from_str(rfc).unwrap())
    }

    #[test]
    fn times_in_every_form() {
        let now = at("2026-11-26T12:00:00Z");
        assert_eq!(
            parse_time("--since", "15m", now).unwrap(),
            at("2026-11-26T11:45:00Z")
        );
        assert_eq!(
            parse_time("--since", "2h", now).unwrap(),
            at("2026-11-26T10:00:00Z")
        );
        assert_eq!(
            parse_time("--since", "7d", now).unwrap(),
            at("2026-11-19T12:00:00Z")
        );
        assert_eq!(
            parse_time("--since", "1w", now).unwrap(),
            at("2026-11-19T12:00:00Z")
        );
        assert_eq!(
            parse_time("--since", "90s", now).unwrap(),
            at("2026-11-26T11:58:30Z")
        );
        assert_eq!(
            parse_time("--since", "2026-11-01", now).unwrap(),
            at("2026-11-01T00:00:00Z")
        );
        assert_eq!(
            parse_time("--since", "2026-11-01T08:30:00+01:00", now).unwrap(),
            at("2026-11-01T07:30:00Z")
        );
        assert_eq!(
            parse_time("--since", "2026-11-01T08:30:00.5Z", now).unwrap(),
            at("2026-11-01T08:30:00.5Z")
        );
        for bad in [
            "",
            "yesterday",
            "15",
            "15 minutes",
            "-2h",
            "2026-13-01",
            "2026-11-01T08:30:00",
            "'; DROP TABLE x; --",
        ] {
            let err = parse_time("--until", bad, now).unwrap_err().to_string();
            assert!(err.starts_with("--until: "), "{bad}: {err}");
        }
        let err = parse_time("--until", "2026-11-01T08:30:00", now)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no time zone"), "{err}");
    }

    #[test]
    fn times_print_as_rfc3339_utc() {
        assert_eq!(
            rfc3339(at("2026-11-01T08:30:00.75+01:00")),
            "2026-11-01T07:30:00Z"
        );
    }
}
