//! One edge call record: the line Kamailio's acc module writes to a spool file
//! through db_flatstore, and the row of `sipstack_edge_cdr` it becomes.
//!
//! A line has [`FIELD_COUNT`] fields separated by `|`; a `|` inside a value is
//! written as `%7C`, and a missing value as `<null>`. Fields 0-2 are acc's own
//! start time, end time and duration: they are garbage for failed calls, so the
//! record carries its own times (fields 14-17) and those are used instead.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Fields in a record line.
pub const FIELD_COUNT: usize = 21;

/// The record layout this shipper reads (field 3).
pub const RECORD_VERSION: &str = "1";

/// How db_flatstore writes a missing value.
const NULL: &str = "<null>";

/// What each field holds, for error messages.
const FIELD_NAMES: [&str; FIELD_COUNT] = [
    "acc start time",
    "acc end time",
    "acc duration",
    "record version",
    "sip_call_id",
    "from_tag",
    "caller",
    "callee",
    "source",
    "source_subscriber",
    "source trunk id",
    "destination_kind",
    "destination",
    "destination trunk id",
    "start time",
    "answer time",
    "failure time",
    "end time",
    "sip_code",
    "From of the ending message",
    "CSeq of the ending message",
];

/// Column lengths of `sipstack_edge_cdr` (migration 0008), in characters.
pub const EDGE_MAX_LEN: usize = 63;
const CALL_ID_MAX_LEN: usize = 255;
const FROM_TAG_MAX_LEN: usize = 128;
const USER_MAX_LEN: usize = 128;
const DESTINATION_MAX_LEN: usize = 255;

/// The latest time a record may carry (9999-12-31T23:59:59Z): PostgreSQL and
/// the driver refuse far larger ones, and one such record would fail its whole batch.
const MAX_UNIX_SECONDS: u64 = 253_402_300_799;

/// Where a call came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An authenticated subscriber.
    Subscriber,
    /// A trunk, by address or by a PBX's account.
    Trunk,
    /// A media node.
    Media,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Subscriber => "subscriber",
            Source::Trunk => "trunk",
            Source::Media => "media",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "subscriber" => Some(Source::Subscriber),
            "trunk" => Some(Source::Trunk),
            "media" => Some(Source::Media),
            _ => None,
        }
    }
}

/// Where the edge sent a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    /// A subscriber's contacts.
    User,
    Trunk,
    /// A media pool.
    Pool,
    Uri,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::User => "user",
            DestinationKind::Trunk => "trunk",
            DestinationKind::Pool => "pool",
            DestinationKind::Uri => "uri",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(DestinationKind::User),
            "trunk" => Some(DestinationKind::Trunk),
            "pool" => Some(DestinationKind::Pool),
            "uri" => Some(DestinationKind::Uri),
            _ => None,
        }
    }
}

/// Who ended an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    Caller,
    Callee,
    /// The dialog expired without a BYE.
    Timeout,
}

impl EndedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Caller => "caller",
            EndedBy::Callee => "callee",
            EndedBy::Timeout => "timeout",
        }
    }
}

/// One call as it is stored. The trunks are still ids here: the store looks
/// their names up, so a record names a trunk as it was called when shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeCdr {
    pub sip_call_id: String,
    pub from_tag: String,
    pub caller: String,
    pub callee: String,
    pub source: Source,
    pub source_subscriber: Option<String>,
    pub source_trunk_id: Option<i64>,
    pub destination_kind: DestinationKind,
    pub destination: String,
    pub destination_trunk_id: Option<i64>,
    pub start_time: SystemTime,
    pub answer_time: Option<SystemTime>,
    pub end_time: SystemTime,
    pub sip_code: i32,
    pub ended_by: Option<EndedBy>,
}

/// Why a line is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the line is not UTF-8")]
    NotUtf8,
    #[error("the line contains a NUL byte")]
    Nul,
    #[error("the last line of the file has no newline: the record was cut off")]
    Incomplete,
    #[error("the line has {found} fields, a record has {FIELD_COUNT}")]
    FieldCount { found: usize },
    #[error("record version {found:?}, this shipper reads version {RECORD_VERSION}")]
    Version { found: String },
    #[error("field {field} ({}) is empty", name(*.field))]
    Empty { field: usize },
    #[error("field {field} ({}) is {len} characters long, at most {max} fit", name(*.field))]
    TooLong {
        field: usize,
        len: usize,
        max: usize,
    },
    #[error("field {field} ({}) {value:?} is not {expected}", name(*.field))]
    Invalid {
        field: usize,
        value: String,
        expected: &'static str,
    },
}

fn name(field: usize) -> &'static str {
    FIELD_NAMES.get(field).copied().unwrap_or("?")
}

/// A value for an error message: bad lines come from outside, so at most a few
/// dozen characters of one go into a log.
fn shown(value: &str) -> String {
    const SHOWN: usize = 40;
    if value.chars().count() <= SHOWN {
        value.to_string()
    } else {
        let mut s: String = value.chars().take(SHOWN).collect();
        s.push('…');
        s
    }
}

/// Undoes db_flatstore's escaping of the delimiter. Other `%` sequences are
/// left alone: flatstore writes them as they came.
pub fn decode_value(raw: &str) -> Cow<'_, str> {
    if raw == NULL {
        return Cow::Borrowed("");
    }
    if !raw.contains("%7C") && !raw.contains("%7c") {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if tail.starts_with("%7C") || tail.starts_with("%7c") {
            out.push('|');
            rest = &tail[3..];
        } else {
            out.push('%');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Reads `SECONDS[.FRACTION]` (a fraction of up to 9 digits) as a time.
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let (seconds, fraction) = match s.split_once('.') {
        Some((seconds, fraction)) => (seconds, fraction),
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if seconds.is_empty() || seconds.len() > 12 || !digits(seconds) {
        return None;
    }
    if fraction.len() > 9 || !digits(fraction) {
        return None;
    }
    let seconds: u64 = seconds.parse().ok()?;
    if seconds > MAX_UNIX_SECONDS {
        return None;
    }
    // the fraction's digits, padded to nanoseconds
    let nanos = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(9)
        .fold(0u32, |n, b| n * 10 + u32::from(b - b'0'));
    UNIX_EPOCH.checked_add(Duration::new(seconds, nanos))
}

/// The fields of one line, decoded.
struct Fields<'a>(Vec<Cow<'a, str>>);

impl Fields<'_> {
    fn get(&self, field: usize) -> &str {
        self.0.get(field).map(|v| v.as_ref()).unwrap_or("")
    }

    fn limited(&self, field: usize, max: usize) -> Result<&str, RecordError> {
        let value = self.get(field);
        let len = value.chars().count();
        if len > max {
            return Err(RecordError::TooLong { field, len, max });
        }
        Ok(value)
    }

    fn required(&self, field: usize, max: usize) -> Result<&str, RecordError> {
        let value = self.limited(field, max)?;
        if value.is_empty() {
            return Err(RecordError::Empty { field });
        }
        Ok(value)
    }

    fn invalid(&self, field: usize, expected: &'static str) -> RecordError {
        RecordError::Invalid {
            field,
            value: shown(self.get(field)),
            expected,
        }
    }

    fn time(&self, field: usize) -> Result<Option<SystemTime>, RecordError> {
        let value = self.get(field);
        if value.is_empty() {
            return Ok(None);
        }
        parse_time(value)
            .map(Some)
            .ok_or_else(|| self.invalid(field, "a time (unix seconds with a fraction)"))
    }

    /// A trunk id; empty and 0 mean none.
    fn trunk_id(&self, field: usize) -> Result<Option<i64>, RecordError> {
        let value = self.get(field);
        if value.is_empty() {
            return Ok(None);
        }
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(self.invalid(field, "a trunk id"));
        }
        let id: i64 = value
            .parse()
            .map_err(|_| self.invalid(field, "a trunk id"))?;
        Ok((id != 0).then_some(id))
    }
}

/// Reads one line of a spool file (without its newline).
pub fn parse_line(line: &[u8]) -> Result<EdgeCdr, RecordError> {
    // PostgreSQL refuses NUL in text: one such value would fail its whole batch
    if line.contains(&0) {
        return Err(RecordError::Nul);
    }
    let line = std::str::from_utf8(line).map_err(|_| RecordError::NotUtf8)?;
    parse_record(line)
}

/// Reads one record line (without its newline).
pub fn parse_record(line: &str) -> Result<EdgeCdr, RecordError> {
    let raw: Vec<&str> = line.split('|').collect();
    if raw.len() != FIELD_COUNT {
        return Err(RecordError::FieldCount { found: raw.len() });
    }
    let f = Fields(raw.into_iter().map(decode_value).collect());

    if f.get(3) != RECORD_VERSION {
        return Err(RecordError::Version {
            found: shown(f.get(3)),
        });
    }
    let sip_call_id = f.required(4, CALL_ID_MAX_LEN)?;
    let from_tag = f.required(5, FROM_TAG_MAX_LEN)?;
    let caller = f.limited(6, USER_MAX_LEN)?;
    let callee = f.limited(7, USER_MAX_LEN)?;
    let source =
        Source::parse(f.get(8)).ok_or_else(|| f.invalid(8, "subscriber, trunk or media"))?;
    let source_subscriber = f.limited(9, USER_MAX_LEN)?;
    let source_trunk_id = f.trunk_id(10)?;
    let destination_kind = DestinationKind::parse(f.get(11))
        .ok_or_else(|| f.invalid(11, "user, trunk, pool or uri"))?;
    let destination = f.limited(12, DESTINATION_MAX_LEN)?;
    let destination_trunk_id = f.trunk_id(13)?;

    let start_time = f.time(14)?.ok_or(RecordError::Empty { field: 14 })?;
    // The clocks are the edge's; a step backwards must not lose the call, so
    // the times are kept at or after the start (as the table requires).
    let answer_time = f.time(15)?.map(|t| t.max(start_time));
    let failure_time = f.time(16)?;
    let end_time = f.time(17)?;
    // a call does not end before it was answered either
    let end_time = end_time
        .or(failure_time)
        .unwrap_or(start_time)
        .max(answer_time.unwrap_or(start_time));

    let answered = answer_time.is_some();
    let sip_code = match f.get(18) {
        "" if answered => 200,
        "" => 0,
        code => code
            .parse::<i32>()
            .ok()
            .filter(|c| (100..=699).contains(c) && code.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| f.invalid(18, "a SIP status code (100-699)"))?,
    };
    let ended_by = answered.then(|| {
        if cseq_method(f.get(20)).is_empty() {
            // the dialog expired: no BYE, no other request ended it
            EndedBy::Timeout
        } else if from_tag_of(f.get(19)) == from_tag {
            EndedBy::Caller
        } else {
            EndedBy::Callee
        }
    });

    Ok(EdgeCdr {
        sip_call_id: sip_call_id.to_string(),
        from_tag: from_tag.to_string(),
        caller: caller.to_string(),
        callee: callee.to_string(),
        source,
        source_subscriber: (!source_subscriber.is_empty()).then(|| source_subscriber.to_string()),
        source_trunk_id,
        destination_kind,
        destination: destination.to_string(),
        destination_trunk_id,
        start_time,
        answer_time,
        end_time,
        sip_code,
        ended_by,
    })
}

/// The tag of a From header value (`<sip:a@b>;tag=X;...`), or the value itself
/// when it is a bare tag.
pub fn from_tag_of(from: &str) -> &str {
    for param in from.split(';').skip(1) {
        let param = param.trim();
        if let Some((name, value)) = param.split_once('=') {
            if name.trim().eq_ignore_ascii_case("tag") {
                return value.trim();
            }
        }
    }
    if from.contains(['<', ':', ';']) {
        ""
    } else {
        from.trim()
    }
}

/// The method of a CSeq header value (`2 BYE`), or the value itself when it is
/// a bare method.
pub fn cseq_method(cseq: &str) -> &str {
    cseq.split_whitespace().last().unwrap_or("")
}

/// A line of a spool file that is not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedLine {
    /// 1-based.
    pub line_number: usize,
    /// The line as it was, without its newline.
    pub line: Vec<u8>,
    pub reason: RecordError,
}

/// The contents of a sealed spool file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub records: Vec<EdgeCdr>,
    pub rejected: Vec<RejectedLine>,
}

/// Reads a whole sealed file. Nothing writes to it any more, so a last line
/// without its newline is a record that was cut off (Kamailio was killed while
/// writing it), not one still being written.
pub fn parse_batch(data: &[u8]) -> Batch {
    let mut batch = Batch::default();
    if data.is_empty() {
        return batch;
    }
    let complete = data.ends_with(b"\n");
    let body = if complete {
        &data[..data.len() - 1]
    } else {
        data
    };
    let lines: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let last = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        let line_number = i + 1;
        let parsed = if !complete && line_number == last {
            Err(RecordError::Incomplete)
        } else {
            parse_line(line)
        };
        match parsed {
            Ok(record) => batch.records.push(record),
            Err(reason) => batch.rejected.push(RejectedLine {
                line_number,
                line: line.to_vec(),
                reason,
            }),
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64, micros: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(seconds, micros * 1000)
    }

    /// A line with `fields` replaced, from an answered subscriber call to a pool.
    fn line(fields: &[(usize, &str)]) -> String {
        let mut v: Vec<String> = [
            "1733600000",
            "1733600060",
            "60",
            "1",
            "call-1@host",
            "tag-a",
            "alice",
            "+15551234",
            "subscriber",
            "alice@example.com",
            "",
            "pool",
            "sip:10.0.0.5:5080",
            "",
            "1733600000.123456",
            "1733600002.5",
            "",
            "1733600060.250",
            "200",
            "tag-a",
            "BYE",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (i, value) in fields {
            v[*i] = value.to_string();
        }
        v.join("|")
    }

    #[test]
    fn answered_call_maps_to_a_row() {
        let r = parse_record(&line(&[])).unwrap();
        assert_eq!(r.sip_call_id, "call-1@host");
        assert_eq!(r.from_tag, "tag-a");
        assert_eq!(r.caller, "alice");
        assert_eq!(r.callee, "+15551234");
        assert_eq!(r.source, Source::Subscriber);
        assert_eq!(r.source_subscriber.as_deref(), Some("alice@example.com"));
        assert_eq!(r.source_trunk_id, None);
        assert_eq!(r.destination_kind, DestinationKind::Pool);
        assert_eq!(r.destination, "sip:10.0.0.5:5080");
        assert_eq!(r.destination_trunk_id, None);
        assert_eq!(r.start_time, at(1_733_600_000, 123_456));
        assert_eq!(r.answer_time, Some(at(1_733_600_002, 500_000)));
        assert_eq!(r.end_time, at(1_733_600_060, 250_000));
        assert_eq!(r.sip_code, 200);
        assert_eq!(r.ended_by, Some(EndedBy::Caller));
    }

    #[test]
    fn failed_call_ends_at_its_failure() {
        let r = parse_record(&line(&[
            (0, "garbage"),
            (1, ""),
            (2, "-1"),
            (15, ""),
            (16, "1733600003.000001"),
            (17, ""),
            (18, "486"),
            (19, ""),
            (20, ""),
        ]))
        .unwrap();
        assert_eq!(r.answer_time, None);
        assert_eq!(r.end_time, at(1_733_600_003, 1));
        assert_eq!(r.sip_code, 486);
        assert_eq!(r.ended_by, None);
    }

    #[test]
    fn call_without_any_answer_has_code_0_and_ends_at_start() {
        let r = parse_record(&line(&[(15, ""), (16, ""), (17, ""), (18, ""), (20, "")])).unwrap();
        assert_eq!(r.sip_code, 0);
        assert_eq!(r.end_time, r.start_time);
        assert_eq!(r.ended_by, None);
    }

    #[test]
    fn answered_call_without_code_has_200() {
        let r = parse_record(&line(&[(18, "")])).unwrap();
        assert_eq!(r.sip_code, 200);
        let r = parse_record(&line(&[(18, "<null>")])).unwrap();
        assert_eq!(r.sip_code, 200);
    }

    #[test]
    fn end_time_prefers_end_then_failure_then_start_and_never_precedes_start() {
        let r = parse_record(&line(&[(16, "1733600070"), (17, "1733600080.000")])).unwrap();
        assert_eq!(r.end_time, at(1_733_600_080, 0));
        let r = parse_record(&line(&[(16, "1733600070"), (17, "")])).unwrap();
        assert_eq!(r.end_time, at(1_733_600_070, 0));
        // the clock stepped back: clamped to the start
        let r = parse_record(&line(&[(15, ""), (17, "1733599990.000")])).unwrap();
        assert_eq!(r.end_time, r.start_time);
        let r = parse_record(&line(&[(15, ""), (16, "1733599990.000"), (17, "")])).unwrap();
        assert_eq!(r.end_time, r.start_time);
        let r = parse_record(&line(&[(15, "1733599999"), (17, "")])).unwrap();
        assert_eq!(r.answer_time, Some(r.start_time));
        assert_eq!(r.end_time, r.start_time);
        // nor before the answer
        let r = parse_record(&line(&[(15, "1733600005"), (17, "1733600004.000")])).unwrap();
        assert_eq!(r.end_time, at(1_733_600_005, 0));
    }

    #[test]
    fn ended_by_follows_the_tag_and_method_of_the_last_message() {
        let ended = |tag: &str, method: &str| {
            parse_record(&line(&[(19, tag), (20, method)]))
                .unwrap()
                .ended_by
        };
        assert_eq!(ended("tag-a", "BYE"), Some(EndedBy::Caller));
        assert_eq!(ended("tag-b", "BYE"), Some(EndedBy::Callee));
        assert_eq!(ended("", "BYE"), Some(EndedBy::Callee));
        assert_eq!(ended("", ""), Some(EndedBy::Timeout));
        assert_eq!(ended("tag-a", ""), Some(EndedBy::Timeout));
        assert_eq!(ended("<null>", "<null>"), Some(EndedBy::Timeout));
        assert_eq!(ended("tag-b", "INVITE"), Some(EndedBy::Callee));
        assert_eq!(ended("tag-a", "CANCEL"), Some(EndedBy::Caller));
        // as acc writes them: the From and CSeq headers of the message
        assert_eq!(
            ended("<sip:alice@example.com>;tag=tag-a", "2 BYE"),
            Some(EndedBy::Caller)
        );
        assert_eq!(
            ended(
                "\"Bob\" <sip:+442071230002@example.com>;x=1;TAG = tag-b",
                "7 BYE"
            ),
            Some(EndedBy::Callee)
        );
        assert_eq!(
            ended("<sip:alice@example.com>", "3 BYE"),
            Some(EndedBy::Callee)
        );
    }

    #[test]
    fn null_is_empty() {
        let r = parse_record(&line(&[
            (6, "<null>"),
            (9, "<null>"),
            (10, "<null>"),
            (13, "<null>"),
            (16, "<null>"),
        ]))
        .unwrap();
        assert_eq!(r.caller, "");
        assert_eq!(r.source_subscriber, None);
        assert_eq!(r.source_trunk_id, None);
        assert_eq!(r.destination_trunk_id, None);
        assert_eq!(
            parse_record(&line(&[(4, "<null>")])),
            Err(RecordError::Empty { field: 4 })
        );
        assert_eq!(
            parse_record(&line(&[(14, "<null>")])),
            Err(RecordError::Empty { field: 14 })
        );
    }

    #[test]
    fn trunks_are_ids_and_0_is_none() {
        let r = parse_record(&line(&[
            (8, "trunk"),
            (9, ""),
            (10, "7"),
            (11, "trunk"),
            (13, "0"),
        ]))
        .unwrap();
        assert_eq!(r.source, Source::Trunk);
        assert_eq!(r.source_subscriber, None);
        assert_eq!(r.source_trunk_id, Some(7));
        assert_eq!(r.destination_kind, DestinationKind::Trunk);
        assert_eq!(r.destination_trunk_id, None);
        let r = parse_record(&line(&[(8, "media"), (11, "user"), (13, "12")])).unwrap();
        assert_eq!(r.source, Source::Media);
        assert_eq!(r.destination_kind, DestinationKind::User);
        assert_eq!(r.destination_trunk_id, Some(12));
        for bad in ["-1", "x", "1.5", " 3", "99999999999999999999"] {
            assert!(
                matches!(
                    parse_record(&line(&[(10, bad)])),
                    Err(RecordError::Invalid { field: 10, .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn pipe_is_decoded_and_other_escapes_are_kept() {
        let r = parse_record(&line(&[
            (6, "a%7Cb%7cc"),
            (12, "sip:x@y;p=%41%7"),
            (7, "%%7C%"),
        ]))
        .unwrap();
        assert_eq!(r.caller, "a|b|c");
        assert_eq!(r.destination, "sip:x@y;p=%41%7");
        assert_eq!(r.callee, "%|%");
        assert_eq!(decode_value("plain"), "plain");
        assert_eq!(decode_value("<null>"), "");
    }

    #[test]
    fn too_long_values_are_refused_not_truncated() {
        let call_id = "c".repeat(256);
        assert_eq!(
            parse_record(&line(&[(4, &call_id)])),
            Err(RecordError::TooLong {
                field: 4,
                len: 256,
                max: 255
            })
        );
        assert!(parse_record(&line(&[(4, &"c".repeat(255))])).is_ok());
        let tag = "t".repeat(129);
        assert!(matches!(
            parse_record(&line(&[(5, &tag)])),
            Err(RecordError::TooLong { field: 5, .. })
        ));
        for field in [6, 7, 9] {
            let v = "u".repeat(129);
            assert!(matches!(
                parse_record(&line(&[(field, &v)])),
                Err(RecordError::TooLong { field: f, .. }) if f == field
            ));
            // characters, not bytes, as VARCHAR counts
            assert!(parse_record(&line(&[(field, &"ü".repeat(128))])).is_ok());
        }
        assert!(matches!(
            parse_record(&line(&[(12, &"d".repeat(256))])),
            Err(RecordError::TooLong { field: 12, .. })
        ));
        // an escaped pipe counts as one character
        assert!(parse_record(&line(&[(6, &"%7C".repeat(128))])).is_ok());
    }

    #[test]
    fn bad_lines_are_refused() {
        assert_eq!(
            parse_record("a|b|c"),
            Err(RecordError::FieldCount { found: 3 })
        );
        assert_eq!(parse_record(""), Err(RecordError::FieldCount { found: 1 }));
        assert!(matches!(
            parse_record(&format!("{}|x", line(&[]))),
            Err(RecordError::FieldCount { found: 22 })
        ));
        assert!(matches!(
            parse_record(&line(&[(3, "2")])),
            Err(RecordError::Version { .. })
        ));
        assert!(matches!(
            parse_record(&line(&[(3, "<null>")])),
            Err(RecordError::Version { .. })
        ));
        assert_eq!(
            parse_record(&line(&[(5, "")])),
            Err(RecordError::Empty { field: 5 })
        );
        assert!(matches!(
            parse_record(&line(&[(8, "pbx")])),
            Err(RecordError::Invalid { field: 8, .. })
        ));
        assert!(matches!(
            parse_record(&line(&[(8, "")])),
            Err(RecordError::Invalid { field: 8, .. })
        ));
        assert!(matches!(
            parse_record(&line(&[(11, "Pool")])),
            Err(RecordError::Invalid { field: 11, .. })
        ));
        for (field, bad) in [
            (14, "1733600000,5"),
            (14, "-1733600000"),
            (15, "1733600000.1234567890"),
            (16, "abc"),
            (17, "1e9"),
            (14, "99999999999999"),
            (14, ".5"),
        ] {
            assert!(
                matches!(
                    parse_record(&line(&[(field, bad)])),
                    Err(RecordError::Invalid { field: f, .. }) if f == field
                ),
                "{field} {bad}"
            );
        }
        for bad in ["99", "700", "2OO", "+200", "-1"] {
            assert!(
                matches!(
                    parse_record(&line(&[(18, bad)])),
                    Err(RecordError::Invalid { field: 18, .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(parse_line(b"a\0b"), Err(RecordError::Nul));
        assert_eq!(parse_line(b"\xff\xfe"), Err(RecordError::NotUtf8));
    }

    #[test]
    fn times_take_any_fraction() {
        assert_eq!(parse_time("1733600000"), Some(at(1_733_600_000, 0)));
        assert_eq!(parse_time("1733600000."), Some(at(1_733_600_000, 0)));
        assert_eq!(parse_time("1733600000.1"), Some(at(1_733_600_000, 100_000)));
        assert_eq!(
            parse_time("1733600000.123456789"),
            Some(UNIX_EPOCH + Duration::new(1_733_600_000, 123_456_789))
        );
        assert_eq!(parse_time(""), None);
        assert_eq!(parse_time("1.2.3"), None);
    }

    #[test]
    fn error_messages_name_the_field_and_shorten_the_value() {
        let e = parse_record(&line(&[(16, &"x".repeat(300))])).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("field 16 (failure time)"), "{text}");
        assert!(text.len() < 150, "{text}");
    }

    #[test]
    fn batch_keeps_good_records_and_rejects_bad_lines() {
        let good = line(&[]);
        let other = line(&[(4, "call-2")]);
        let data = format!("{good}\nnot a record\n\n{other}\n{}", &good[..20]);
        let batch = parse_batch(data.as_bytes());
        assert_eq!(batch.records.len(), 2);
        assert_eq!(batch.records[1].sip_call_id, "call-2");
        let rejected: Vec<(usize, &[u8])> = batch
            .rejected
            .iter()
            .map(|r| (r.line_number, r.line.as_slice()))
            .collect();
        assert_eq!(
            rejected,
            vec![
                (2, b"not a record".as_slice()),
                (3, b"".as_slice()),
                (5, &good.as_bytes()[..20])
            ]
        );
        assert_eq!(batch.rejected[2].reason, RecordError::Incomplete);

        // a complete record without its newline is cut off too: its last field may be
        let batch = parse_batch(good.as_bytes());
        assert!(batch.records.is_empty());
        assert_eq!(batch.rejected[0].reason, RecordError::Incomplete);

        assert_eq!(parse_batch(b""), Batch::default());
        assert_eq!(parse_batch(format!("{good}\n").as_bytes()).records.len(), 1);
    }
}
