//! Events: the bodies of `text/event-plain` and `text/event-json` messages,
//! decoded into one [`Event`] type whatever format they came in.

use std::fmt;

use crate::frame::{find_header_end, parse_headers};
use crate::EslError;

/// The format FreeSWITCH sends events in, chosen by `event plain ...` or
/// `event json ...`.
///
/// FreeSWITCH keeps one format per connection: the last `event` command sets it
/// for every event the connection listens to, including those subscribed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventFormat {
    /// `text/event-plain`: header lines with URL-encoded values.
    Plain,
    /// `text/event-json`: one JSON object.
    Json,
}

impl EventFormat {
    /// The word of the `event` command.
    pub fn as_str(self) -> &'static str {
        match self {
            EventFormat::Plain => "plain",
            EventFormat::Json => "json",
        }
    }
}

impl fmt::Display for EventFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One FreeSWITCH event: its headers, decoded, and its body if it has one (the
/// output of the job of a `BACKGROUND_JOB`, for one).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    headers: Vec<(String, String)>,
    body: Option<String>,
}

impl Event {
    /// An event from its parts (for tests and fake servers).
    pub fn new(headers: Vec<(String, String)>, body: Option<String>) -> Event {
        Event { headers, body }
    }

    /// Decodes the body of a `text/event-plain` message: `Name: value` lines with
    /// URL-encoded values, an empty line, then, if the event has a
    /// `Content-Length`, the event's own body of that many bytes.
    pub fn from_plain(bytes: &[u8]) -> Result<Event, EslError> {
        let Some((header_len, body_start)) = find_header_end(bytes) else {
            // No empty line: all of it is headers.
            return Ok(Event {
                headers: decode_values(parse_headers(bytes)),
                body: None,
            });
        };
        let headers = decode_values(parse_headers(&bytes[..header_len]));
        let rest = &bytes[body_start..];
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
            .map(|(_, v)| v.trim().parse::<usize>());
        let body = match length {
            Some(Ok(n)) if n <= rest.len() => Some(&rest[..n]),
            Some(Ok(n)) => {
                return Err(EslError::Protocol(format!(
                    "event body has {} bytes, its Content-Length says {n}",
                    rest.len()
                )))
            }
            Some(Err(_)) => {
                return Err(EslError::Protocol(
                    "event has a bad Content-Length".to_string(),
                ))
            }
            None if rest.is_empty() => None,
            // Not sent so by FreeSWITCH; keep the bytes rather than lose them.
            None => Some(rest),
        };
        Ok(Event {
            headers,
            body: body.map(|b| String::from_utf8_lossy(b).into_owned()),
        })
    }

    /// Decodes the body of a `text/event-json` message: one JSON object whose
    /// values are strings; the event's own body, if any, is under `_body`.
    ///
    /// JSON objects have no order, and the headers of the event come sorted by
    /// name. Values that are not strings (FreeSWITCH sends arrays for array
    /// headers) are kept as their JSON text, arrays of strings in FreeSWITCH's
    /// plain form `ARRAY::a|:b`.
    pub fn from_json(bytes: &[u8]) -> Result<Event, EslError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| EslError::Protocol(format!("event JSON: {e}")))?;
        let serde_json::Value::Object(map) = value else {
            return Err(EslError::Protocol(
                "event JSON is not an object".to_string(),
            ));
        };
        let mut headers = Vec::with_capacity(map.len());
        let mut body = None;
        for (name, value) in map {
            let value = json_to_string(value);
            if name == "_body" {
                body = Some(value);
            } else {
                headers.push((name, value));
            }
        }
        Ok(Event { headers, body })
    }

    /// `Event-Name` (`CHANNEL_CREATE`, `BACKGROUND_JOB`, `CUSTOM`, ...).
    pub fn name(&self) -> Option<&str> {
        self.get("Event-Name")
    }

    /// `Event-Subclass` of a `CUSTOM` event (`sofia::register`, ...).
    pub fn subclass(&self) -> Option<&str> {
        self.get("Event-Subclass")
    }

    /// `Job-UUID` of a `BACKGROUND_JOB`: the id [`bgapi`](crate::EslClient::bgapi) returned.
    pub fn job_uuid(&self) -> Option<&str> {
        self.get("Job-UUID")
    }

    /// The value of the first header of that name (names compare ignoring ASCII case).
    pub fn get(&self, header: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(header))
            .map(|(_, v)| v.as_str())
    }

    /// All headers, decoded: in the order sent for plain events, sorted by name
    /// for JSON events.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The event's own body.
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }
}

fn decode_values(headers: Vec<(String, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(n, v)| (n, url_decode(&v)))
        .collect()
}

fn json_to_string(value: serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            let items: Vec<String> = items.into_iter().map(json_to_string).collect();
            format!("ARRAY::{}", items.join("|:"))
        }
        other => other.to_string(),
    }
}

/// Decodes `%XX` escapes, as FreeSWITCH writes event-plain header values. `+`
/// stays `+` (FreeSWITCH escapes a plus as `%2B` and a space as `%20`); a `%`
/// not followed by two hex digits stays as it is. Decoded bytes that are not
/// UTF-8 become U+FFFD.
pub fn url_decode(value: &str) -> String {
    if !value.contains('%') {
        return value.to_string();
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_decoding() {
        assert_eq!(url_decode("plain"), "plain");
        assert_eq!(url_decode("Mon,%2007%20Dec"), "Mon, 07 Dec");
        assert_eq!(url_decode("fd00%3A%3A2"), "fd00::2");
        assert_eq!(url_decode("1.10%2Bgit+x"), "1.10+git+x");
        assert_eq!(url_decode("caf%C3%A9"), "café");
        assert_eq!(url_decode("100%"), "100%");
        assert_eq!(url_decode("%zz%4"), "%zz%4");
        assert_eq!(url_decode("%41%61"), "Aa");
    }

    #[test]
    fn plain_event_without_body() {
        let body = b"Event-Name: HEARTBEAT\nCore-UUID: 2b33\nEvent-Info: System%20Ready\nFreeSWITCH-IPv6: fd00%3A%3A2\n\n";
        let ev = Event::from_plain(body).unwrap();
        assert_eq!(ev.name(), Some("HEARTBEAT"));
        assert_eq!(ev.get("event-info"), Some("System Ready"));
        assert_eq!(ev.get("FreeSWITCH-IPv6"), Some("fd00::2"));
        assert_eq!(ev.body(), None);
        let names: Vec<&str> = ev.headers().iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["Event-Name", "Core-UUID", "Event-Info", "FreeSWITCH-IPv6"]
        );
    }

    #[test]
    fn plain_event_with_nested_body() {
        let output = "UP 0 years\n\nFreeSWITCH is ready\n";
        let body = format!(
            "Event-Name: BACKGROUND_JOB\nJob-UUID: 52c9\nJob-Command: status\nJob-Command-Arg: a%20b\nContent-Length: {}\n\n{output}",
            output.len()
        );
        let ev = Event::from_plain(body.as_bytes()).unwrap();
        assert_eq!(ev.name(), Some("BACKGROUND_JOB"));
        assert_eq!(ev.job_uuid(), Some("52c9"));
        assert_eq!(ev.get("Job-Command-Arg"), Some("a b"));
        // The body is not URL-decoded and keeps its blank lines.
        assert_eq!(ev.body(), Some(output));
    }

    #[test]
    fn plain_event_body_shorter_than_its_length_is_an_error() {
        let body = b"Event-Name: BACKGROUND_JOB\nContent-Length: 50\n\nshort";
        assert!(matches!(
            Event::from_plain(body),
            Err(EslError::Protocol(_))
        ));
    }

    #[test]
    fn plain_event_without_trailing_blank_line() {
        let ev = Event::from_plain(b"Event-Name: CUSTOM\nEvent-Subclass: foo%3A%3Abar\n").unwrap();
        assert_eq!(ev.name(), Some("CUSTOM"));
        assert_eq!(ev.subclass(), Some("foo::bar"));
    }

    #[test]
    fn json_event_with_body() {
        let json = br#"{"Event-Name":"BACKGROUND_JOB","Job-UUID":"2f1e","FreeSWITCH-IPv6":"fd00::2","Content-Length":"12","_body":"line 1\nline 2"}"#;
        let ev = Event::from_json(json).unwrap();
        assert_eq!(ev.name(), Some("BACKGROUND_JOB"));
        assert_eq!(ev.job_uuid(), Some("2f1e"));
        // JSON values are not URL-encoded.
        assert_eq!(ev.get("FreeSWITCH-IPv6"), Some("fd00::2"));
        assert_eq!(ev.body(), Some("line 1\nline 2"));
        assert!(ev.get("_body").is_none());
    }

    #[test]
    fn json_event_non_string_values() {
        let json = br#"{"Event-Name":"CUSTOM","n":5,"flag":true,"none":null,"arr":["a","b"]}"#;
        let ev = Event::from_json(json).unwrap();
        assert_eq!(ev.get("n"), Some("5"));
        assert_eq!(ev.get("flag"), Some("true"));
        assert_eq!(ev.get("none"), Some(""));
        assert_eq!(ev.get("arr"), Some("ARRAY::a|:b"));
        assert_eq!(ev.body(), None);
    }

    #[test]
    fn json_event_errors() {
        assert!(matches!(
            Event::from_json(b"[1]"),
            Err(EslError::Protocol(_))
        ));
        assert!(matches!(
            Event::from_json(b"{\"a\":"),
            Err(EslError::Protocol(_))
        ));
    }
}
