//! Framing of the event socket protocol: a block of `Name: value` header lines
//! ended by an empty line, then, if there is a `Content-Length: N` header, exactly
//! N bytes of body.
//!
//! [`parse_message`] works on a byte buffer that the caller fills from the socket
//! in whatever pieces TCP delivers; it takes one complete message off the front,
//! or leaves the buffer alone until more bytes arrive. It never blocks and never
//! looks at the socket, so framing is testable on its own.

use std::borrow::Cow;

use crate::EslError;

/// Longest header block accepted. FreeSWITCH's are a few hundred bytes; a block
/// that never ends is a broken peer, and waiting on it would grow the buffer
/// without bound.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Largest body accepted. `api show channels` on a busy node is megabytes; this
/// only guards against a corrupt `Content-Length`.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// One framed message: its header lines in order, and its body if it had a
/// `Content-Length`.
///
/// Header values are kept as sent: the outer headers of the protocol are not
/// URL-encoded (only the headers inside a `text/event-plain` body are, see
/// [`Event::from_plain`](crate::Event::from_plain)).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
}

impl Message {
    /// A message from its parts (for tests and fake servers).
    pub fn new(headers: Vec<(String, String)>, body: Option<Vec<u8>>) -> Message {
        Message { headers, body }
    }

    /// The value of the first header of that name; names compare ignoring ASCII case,
    /// as FreeSWITCH does.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers, in the order they came.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// `Content-Type`, which says what kind of message this is
    /// (`command/reply`, `api/response`, `text/event-plain`, ...).
    pub fn content_type(&self) -> Option<&str> {
        self.get("Content-Type")
    }

    /// `Reply-Text` of a `command/reply` (`+OK ...` or `-ERR ...`).
    pub fn reply_text(&self) -> Option<&str> {
        self.get("Reply-Text")
    }

    /// The body's bytes, exactly `Content-Length` of them.
    pub fn body(&self) -> Option<&[u8]> {
        self.body.as_deref()
    }

    /// The body as text; bytes that are not UTF-8 become U+FFFD.
    pub fn body_text(&self) -> Option<Cow<'_, str>> {
        self.body.as_deref().map(String::from_utf8_lossy)
    }

    /// The body, taken out of the message.
    pub fn into_body(self) -> Option<Vec<u8>> {
        self.body
    }
}

/// Takes one complete message off the front of `buf`.
///
/// Returns `Ok(None)`, leaving `buf` untouched, while the message is incomplete
/// (headers not yet ended by an empty line, or fewer body bytes than its
/// `Content-Length`). Blank lines before a message are skipped, and lines may end
/// in `\r\n` as well as `\n`. Header lines without a colon are ignored.
///
/// Fails with [`EslError::Protocol`] when the stream cannot be a valid one: a
/// `Content-Length` that is not a number or is above [`MAX_BODY_BYTES`], or more
/// than [`MAX_HEADER_BYTES`] of headers without an end. The stream cannot be
/// resynchronised after that; the connection should be dropped.
pub fn parse_message(buf: &mut Vec<u8>) -> Result<Option<Message>, EslError> {
    let leading = buf
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .count();
    if leading > 0 {
        buf.drain(..leading);
    }
    let Some((header_len, body_start)) = find_header_end(buf) else {
        if buf.len() > MAX_HEADER_BYTES {
            return Err(EslError::Protocol(format!(
                "no end of headers within {MAX_HEADER_BYTES} bytes"
            )));
        }
        return Ok(None);
    };

    let headers = parse_headers(&buf[..header_len]);
    let content_length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
        .map(|(_, v)| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| EslError::Protocol(format!("bad Content-Length {v:?}")))
        })
        .transpose()?;

    let (end, body) = match content_length {
        None => (body_start, None),
        Some(n) if n > MAX_BODY_BYTES => {
            return Err(EslError::Protocol(format!(
                "Content-Length {n} above the limit of {MAX_BODY_BYTES}"
            )))
        }
        Some(n) => {
            let end = body_start + n;
            if buf.len() < end {
                return Ok(None);
            }
            (end, Some(buf[body_start..end].to_vec()))
        }
    };
    buf.drain(..end);
    Ok(Some(Message { headers, body }))
}

/// Where the header block ends: (length of the header lines, offset of the first
/// body byte). The block ends at the first empty line, `\n\n` or `\n\r\n`.
pub(crate) fn find_header_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        match buf.get(nl + 1..) {
            Some([b'\n', ..]) => return Some((nl, nl + 2)),
            Some([b'\r', b'\n', ..]) => return Some((nl, nl + 3)),
            _ => i = nl + 1,
        }
    }
    None
}

pub(crate) fn parse_headers(block: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(block)
        .split('\n')
        .filter_map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.is_empty() {
                return None;
            }
            let Some((name, value)) = line.split_once(':') else {
                tracing::debug!(line, "event socket: header line without a colon ignored");
                return None;
            };
            Some((name.trim().to_string(), value.trim_start().to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(mut buf: Vec<u8>) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = parse_message(&mut buf).unwrap() {
            out.push(m);
        }
        assert!(
            buf.is_empty(),
            "left over: {:?}",
            String::from_utf8_lossy(&buf)
        );
        out
    }

    /// Feeds `stream` as two reads split at `split`, the way a reader loop would.
    fn parse_split(stream: &[u8], split: usize) -> Vec<Message> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            while let Some(m) = parse_message(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert!(buf.is_empty());
        out
    }

    const API_REPLY: &str =
        "Content-Type: api/response\nContent-Length: 27\n\nline one\n\nline three\n\n\nend\n";

    #[test]
    fn header_only_message() {
        let msgs = parse_all(b"Content-Type: auth/request\n\n".to_vec());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].content_type(), Some("auth/request"));
        assert_eq!(msgs[0].body(), None);
    }

    #[test]
    fn body_with_blank_lines_is_taken_whole() {
        assert_eq!(API_REPLY.len() - API_REPLY.find("\n\n").unwrap() - 2, 27);
        let msgs = parse_all(API_REPLY.as_bytes().to_vec());
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            msgs[0].body_text().unwrap(),
            "line one\n\nline three\n\n\nend\n"
        );
        assert_eq!(msgs[0].get("content-length"), Some("27"));
    }

    #[test]
    fn split_at_every_byte_parses_the_same() {
        let stream = format!(
            "Content-Type: command/reply\nReply-Text: +OK accepted\n\n{API_REPLY}Content-Type: text/disconnect-notice\nContent-Length: 3\n\nbye"
        );
        let whole = parse_all(stream.as_bytes().to_vec());
        assert_eq!(whole.len(), 3);
        for split in 0..=stream.len() {
            assert_eq!(
                parse_split(stream.as_bytes(), split),
                whole,
                "split at {split}"
            );
        }
    }

    #[test]
    fn byte_by_byte_feeding() {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for &b in API_REPLY.as_bytes() {
            buf.push(b);
            if let Some(m) = parse_message(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].body().unwrap().len(), 27);
    }

    #[test]
    fn two_messages_in_one_read() {
        let stream = "Content-Type: command/reply\nReply-Text: +OK a\n\nContent-Type: command/reply\nReply-Text: +OK b\n\n";
        let msgs = parse_all(stream.as_bytes().to_vec());
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].reply_text(), Some("+OK a"));
        assert_eq!(msgs[1].reply_text(), Some("+OK b"));
    }

    #[test]
    fn content_length_counts_bytes_not_chars() {
        let body = "héllo wörld ☎\n";
        assert_ne!(body.len(), body.chars().count());
        let stream = format!(
            "Content-Type: api/response\nContent-Length: {}\n\n{body}Content-Type: command/reply\nReply-Text: +OK\n\n",
            body.len()
        );
        let msgs = parse_all(stream.as_bytes().to_vec());
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].body_text().unwrap(), body);
        assert_eq!(msgs[1].reply_text(), Some("+OK"));
        // Splits inside a multi-byte character too.
        for split in 0..=stream.len() {
            assert_eq!(
                parse_split(stream.as_bytes(), split),
                msgs,
                "split at {split}"
            );
        }
    }

    #[test]
    fn incomplete_body_leaves_buffer_untouched() {
        let mut buf = b"Content-Type: api/response\nContent-Length: 10\n\n12345".to_vec();
        let before = buf.clone();
        assert_eq!(parse_message(&mut buf).unwrap(), None);
        assert_eq!(buf, before);
        buf.extend_from_slice(b"67890Content-Type: x\n");
        let m = parse_message(&mut buf).unwrap().unwrap();
        assert_eq!(m.body(), Some(&b"1234567890"[..]));
        assert_eq!(buf, b"Content-Type: x\n");
        assert_eq!(parse_message(&mut buf).unwrap(), None);
    }

    #[test]
    fn crlf_and_leading_blank_lines() {
        let msgs =
            parse_all(b"\n\r\nContent-Type: command/reply\r\nReply-Text: +OK\r\n\r\n".to_vec());
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].content_type(), Some("command/reply"));
        assert_eq!(msgs[0].reply_text(), Some("+OK"));
    }

    #[test]
    fn header_value_keeps_colons() {
        let msgs = parse_all(b"Reply-Text: +OK Job-UUID: abc\nJob-UUID: abc\n\n".to_vec());
        assert_eq!(msgs[0].reply_text(), Some("+OK Job-UUID: abc"));
        assert_eq!(msgs[0].get("job-uuid"), Some("abc"));
    }

    #[test]
    fn bad_content_length_is_a_protocol_error() {
        let mut buf = b"Content-Type: api/response\nContent-Length: ten\n\n".to_vec();
        assert!(matches!(
            parse_message(&mut buf),
            Err(EslError::Protocol(_))
        ));
        let mut buf = format!("Content-Length: {}\n\n", MAX_BODY_BYTES + 1).into_bytes();
        assert!(matches!(
            parse_message(&mut buf),
            Err(EslError::Protocol(_))
        ));
    }

    #[test]
    fn endless_headers_are_a_protocol_error() {
        let mut buf = vec![b'x'; MAX_HEADER_BYTES];
        assert_eq!(parse_message(&mut buf).unwrap(), None);
        buf.push(b'x');
        assert!(matches!(
            parse_message(&mut buf),
            Err(EslError::Protocol(_))
        ));
    }
}
