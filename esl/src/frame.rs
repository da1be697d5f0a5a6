//! Framing of the event socket protocol: a block of `Name: value` lines ended by an
//! empty line, then `Content-Length` bytes of body when that header is present.

use std::collections::HashMap;

/// One message from the server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Headers in order of arrival.
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl Message {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> &str {
        self.get("Content-Type").unwrap_or("")
    }
}

/// Takes one whole message off the front of `buf`, or `None` while it is incomplete.
/// Content-Length counts bytes, so the body is cut from bytes, not characters.
pub fn parse_message(buf: &mut Vec<u8>) -> Result<Option<Message>, String> {
    // tolerate stray newlines between messages
    let lead = buf
        .iter()
        .take_while(|b| **b == b'\n' || **b == b'\r')
        .count();
    if lead > 0 {
        buf.drain(..lead);
    }
    let Some(end) = find(buf, b"\n\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let headers = parse_headers(&head, false);
    let length = match headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
    {
        Some((_, v)) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("bad Content-Length {v:?}"))?,
        None => 0,
    };
    let body_start = end + 2;
    if buf.len() < body_start + length {
        return Ok(None);
    }
    let body = (length > 0)
        .then(|| String::from_utf8_lossy(&buf[body_start..body_start + length]).into_owned());
    buf.drain(..body_start + length);
    Ok(Some(Message { headers, body }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `Name: value` lines; values of an event-plain body are URL-encoded.
pub fn parse_headers(text: &str, url_encoded: bool) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            let value = value.trim_start();
            let value = if url_encoded {
                url_decode(value)
            } else {
                value.to_string()
            };
            Some((name.trim().to_string(), value))
        })
        .collect()
}

/// Decodes `%XX` escapes (FreeSWITCH encodes spaces as %20, never as '+').
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An event: its headers (decoded) and its own body, if it has one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Event {
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

impl Event {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn name(&self) -> Option<&str> {
        self.get("Event-Name")
    }
    pub fn body(&self) -> Option<&str> {
        self.body.as_deref()
    }
    /// Headers as a map (the last of repeated names wins).
    pub fn to_map(&self) -> HashMap<String, String> {
        self.headers.iter().cloned().collect()
    }

    /// The event a `text/event-plain` message carries: URL-encoded header lines, then
    /// the event's own body after a blank line when it has a Content-Length.
    pub fn from_plain(body: &str) -> Event {
        let (head, rest) = match body.split_once("\n\n") {
            Some((h, r)) => (h, Some(r)),
            None => (body, None),
        };
        let headers = parse_headers(head, true);
        let own = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        let body = match (own, rest) {
            (Some(n), Some(r)) => Some(r.as_bytes()[..n.min(r.len())].to_vec())
                .map(|b| String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        };
        Event { headers, body }
    }

    /// The event a `text/event-json` message carries: an object of strings, the
    /// event's body under `_body`.
    pub fn from_json(body: &str) -> Result<Event, String> {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("event JSON: {e}"))?;
        let object = value.as_object().ok_or("event JSON is not an object")?;
        let mut event = Event::default();
        for (k, v) in object {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if k == "_body" {
                event.body = Some(text);
            } else {
                event.headers.push((k.clone(), text));
            }
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "Content-Type: api/response\nContent-Length: 14\n\nline 1\n\nline2\nContent-Type: command/reply\nReply-Text: +OK accepted\n\n";

    #[test]
    fn messages_split_anywhere_parse_the_same() {
        let whole = TWO.as_bytes();
        for cut in 0..whole.len() {
            let mut buf = whole[..cut].to_vec();
            let mut got = Vec::new();
            while let Some(m) = parse_message(&mut buf).unwrap() {
                got.push(m);
            }
            buf.extend_from_slice(&whole[cut..]);
            while let Some(m) = parse_message(&mut buf).unwrap() {
                got.push(m);
            }
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert_eq!(
                got[0].body.as_deref(),
                Some("line 1\n\nline2\n"),
                "cut at {cut}"
            );
            assert_eq!(got[1].get("Reply-Text"), Some("+OK accepted"));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn content_length_counts_bytes() {
        let body = "Grüße\n";
        let text = format!(
            "Content-Type: api/response\nContent-Length: {}\n\n{body}",
            body.len()
        );
        let mut buf = text.into_bytes();
        assert_eq!(
            parse_message(&mut buf).unwrap().unwrap().body.as_deref(),
            Some(body)
        );
    }

    #[test]
    fn bad_length_is_an_error() {
        let mut buf = b"Content-Length: x\n\n".to_vec();
        assert!(parse_message(&mut buf).is_err());
    }

    #[test]
    fn plain_and_json_events() {
        let plain = "Event-Name: BACKGROUND_JOB\nJob-UUID: 1-2\nJob-Command: status%20now\nContent-Length: 6\n\n+OK x\n";
        let e = Event::from_plain(plain);
        assert_eq!(e.name(), Some("BACKGROUND_JOB"));
        assert_eq!(e.get("job-command"), Some("status now"));
        assert_eq!(e.body(), Some("+OK x\n"));
        let e = Event::from_json(r#"{"Event-Name":"CHANNEL_CREATE","Unique-ID":"u1","_body":"b"}"#)
            .unwrap();
        assert_eq!(e.name(), Some("CHANNEL_CREATE"));
        assert_eq!(e.get("Unique-ID"), Some("u1"));
        assert_eq!(e.body(), Some("b"));
        assert_eq!(url_decode("a%3Ab%2"), "a:b%2");
    }
}
