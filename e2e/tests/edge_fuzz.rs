//! A fuzz run against the real edge: more than 10 000 malformed SIP messages over
//! UDP and a few hundred over TCP, each derived from a valid request (REGISTER,
//! INVITE with SDP, OPTIONS, BYE inside a dialog, MESSAGE; some of them carrying a
//! subscriber's correct digest credentials, so that they get past authentication
//! into the registrar and the routing) and then mutated: truncated at a random
//! byte, given a 60 KB header or hundreds of headers, invalid UTF-8 and NULs,
//! duplicated and missing mandatory headers, numbers out of range, malformed start
//! lines and URIs, folded headers and odd line endings, random byte flips.
//!
//! It proves that Kamailio does not crash: the same main process and the same
//! workers run before and after, none is reported killed by a signal in its log,
//! none is left spinning, its RPC still answers. And that it keeps serving: a
//! subscriber registers and calls a media node before the run, during it (from a
//! concurrent task, all along) and after it, her registration still reaches the
//! database, and a valid OPTIONS sent after every burst of mutated messages (and
//! first on every TCP connection) is answered.
//!
//! The mutations come from a seeded generator written here, so a run is repeatable:
//! message number `n` depends only on the seed (`SIPSTACK_FUZZ_SEED`, decimal or
//! 0x-hex; the default is below), on `n` and on the addresses of the run. A failure
//! names the seed and the numbers and bytes of the last messages sent.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use sipstack_db::route::{MatchKind, NewRoute, Target};
use sipstack_e2e::rawsip::SipMessage;
use sipstack_e2e::sipp::{free_udp_port_on, SippExit};
use sipstack_e2e::testbed::{
    answered_by, call_number, register_command, standin, PoolSpec, Testbed, TestbedSpec, DOMAIN,
    EDGE_IP,
};
use sipstack_local::kamailio::LocalKamailio;

const DEFAULT_SEED: u64 = 0x5eed_0ff0_2200_01f2;

/// Mutated messages over UDP (the canaries come on top).
const UDP_MESSAGES: usize = 10_240;
/// TCP batches and messages per batch. A batch has a connection of its own, and
/// a new one when the edge closes it (five at most).
const TCP_BATCHES: usize = 16;
const TCP_BATCH: usize = 20;
/// A TCP batch after every this many UDP bursts.
const TCP_EVERY: usize = 16;
/// A burst ends after this many messages or bytes, whichever comes first; the
/// bytes keep a burst inside the edge's socket buffer.
const BURST_MESSAGES: usize = 40;
const BURST_BYTES: usize = 256_000;
/// A burst starts this long after the one before at the earliest: at most
/// about 570 messages a second, some 350 on average.
const BURST_PERIOD: Duration = Duration::from_millis(70);
/// How long the canary after a burst is waited for before the next burst goes
/// (one answered later still counts as answered, and as slow).
const CANARY_WAIT: Duration = Duration::from_secs(10);
/// This many canaries in a row not answered in time end the run: the edge is wedged.
const CANARY_MISSES_IN_A_ROW: usize = 3;
/// The whole fuzz run ends here at the latest (it takes about 20 s, three or
/// four times that on a machine busy with other work).
const FUZZ_DEADLINE: Duration = Duration::from_secs(90);
/// Every datagram stays below this (UDP carries 65 507 bytes at most).
const MAX_DATAGRAM: usize = 64_000;
/// Size of a huge header value.
const HUGE: usize = 60_000;
/// Bound of the legitimate subscriber's rounds during the run.
const MAX_LEGIT_ROUNDS: usize = 500;

/// The legitimate subscriber, and the number her calls go to (the media pool).
const USER: &str = "alice";
const PASSWORD: &str = "alice-fuzz-pw";
const LEGIT_NUMBER: &str = "5000";
/// The subscriber whose credentials the fuzzer uses, and the number it calls:
/// a route that rejects, so that nothing it sends is relayed anywhere.
const FUZZ_USER: &str = "mallory";
const FUZZ_PASSWORD: &str = "mallory-fuzz-pw";
const FUZZ_NUMBER: &str = "6666";

// ---------------------------------------------------------------- generator

/// splitmix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    /// The generator of message `n` of a run with `seed`.
    fn for_message(seed: u64, n: usize) -> Self {
        let mut rng = Rng(seed ^ (n as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        rng
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n (0 when n is 0).
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// lo..=hi
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Truncated,
    HugeHeader,
    ManyHeaders,
    BadEncoding,
    Nul,
    DuplicateMandatory,
    MissingMandatory,
    BadNumber,
    BadStartLine,
    Folding,
    ByteFlips,
}

/// Message `n` is mutated the way `SCHEDULE[n % len]` says: every kind in every
/// stretch of 16 messages, the cheap ones twice, a huge one once.
const SCHEDULE: [Kind; 16] = [
    Kind::Truncated,
    Kind::HugeHeader,
    Kind::DuplicateMandatory,
    Kind::BadEncoding,
    Kind::MissingMandatory,
    Kind::Nul,
    Kind::BadNumber,
    Kind::ByteFlips,
    Kind::ManyHeaders,
    Kind::Truncated,
    Kind::BadStartLine,
    Kind::DuplicateMandatory,
    Kind::Folding,
    Kind::MissingMandatory,
    Kind::BadNumber,
    Kind::ByteFlips,
];

/// The valid requests the mutations start from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Register,
    RegisterAuth,
    Invite,
    InviteAuth,
    Options,
    OptionsUser,
    Bye,
    MessageAuth,
}

const BASES: [Base; 8] = [
    Base::Register,
    Base::RegisterAuth,
    Base::Invite,
    Base::InviteAuth,
    Base::Options,
    Base::OptionsUser,
    Base::Bye,
    Base::MessageAuth,
];

impl Base {
    /// The edge's final answer to the request as it is, before any mutation.
    fn expected(self) -> u16 {
        match self {
            Base::Register => 401,
            Base::RegisterAuth => 200,
            Base::Invite | Base::OptionsUser => 407,
            Base::InviteAuth | Base::MessageAuth => 486,
            Base::Options => 200,
            Base::Bye => 403,
        }
    }
}

/// What the requests are built from.
#[derive(Debug, Clone)]
struct Ctx {
    edge: SocketAddr,
    /// The fuzzer's address, in Via and Contact.
    via: SocketAddr,
    /// A nonce of the edge's, from a challenge, and whether it asked for qop=auth.
    nonce: String,
    qop: bool,
}

/// A request as lines, so that mutations can work on headers.
#[derive(Debug, Clone)]
struct Msg {
    start: Vec<u8>,
    headers: Vec<Vec<u8>>,
    body: Vec<u8>,
}

impl Msg {
    fn parse(text: &str) -> Self {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .expect("a header/body separator");
        let mut lines = head.split("\r\n");
        let start = lines.next().unwrap_or_default().as_bytes().to_vec();
        Self {
            start,
            headers: lines.map(|l| l.as_bytes().to_vec()).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.start.clone();
        for h in &self.headers {
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(h);
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Indices of the headers called `name` (full form, any case).
    fn positions(&self, name: &str) -> Vec<usize> {
        self.headers
            .iter()
            .enumerate()
            .filter(|(_, h)| header_name(h).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(i, _)| i)
            .collect()
    }

    fn value(&self, name: &str) -> Option<String> {
        let i = *self.positions(name).first()?;
        let line = &self.headers[i];
        let colon = line.iter().position(|b| *b == b':')?;
        Some(
            String::from_utf8_lossy(&line[colon + 1..])
                .trim()
                .to_string(),
        )
    }

    /// Sets the value of the first header `name`, or adds one at a random place.
    fn set(&mut self, name: &str, value: &[u8], rng: &mut Rng) {
        let mut line = format!("{name}: ").into_bytes();
        line.extend_from_slice(value);
        match self.positions(name).first() {
            Some(i) => self.headers[*i] = line,
            None => {
                let at = rng.below(self.headers.len() + 1);
                self.headers.insert(at, line);
            }
        }
    }

    fn remove_all(&mut self, name: &str) {
        let keep: Vec<Vec<u8>> = self
            .headers
            .iter()
            .filter(|h| !header_name(h).eq_ignore_ascii_case(name.as_bytes()))
            .cloned()
            .collect();
        self.headers = keep;
    }

    /// Line `i` counting the start line as 0.
    fn line_mut(&mut self, i: usize) -> &mut Vec<u8> {
        if i == 0 {
            &mut self.start
        } else {
            &mut self.headers[i - 1]
        }
    }

    fn line_count(&self) -> usize {
        self.headers.len() + 1
    }
}

fn header_name(line: &[u8]) -> &[u8] {
    let end = line.iter().position(|b| *b == b':').unwrap_or(line.len());
    line[..end].trim_ascii()
}

fn md5_hex(text: &str) -> String {
    format!("{:x}", <md5::Md5 as md5::Digest>::digest(text.as_bytes()))
}

/// The fuzz subscriber's correct digest credentials for `method` on `uri`.
fn credentials(header: &str, method: &str, uri: &str, ctx: &Ctx) -> String {
    let ha1 = md5_hex(&format!("{FUZZ_USER}:{DOMAIN}:{FUZZ_PASSWORD}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let nonce = &ctx.nonce;
    if ctx.qop {
        let cnonce = "0a4f113b";
        let response = md5_hex(&format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        format!(
            "{header}: Digest username=\"{FUZZ_USER}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5, cnonce=\"{cnonce}\", qop=auth, nc=00000001"
        )
    } else {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        format!(
            "{header}: Digest username=\"{FUZZ_USER}\", realm=\"{DOMAIN}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", algorithm=MD5"
        )
    }
}

/// The valid request `base`, number `n`, over `transport` (UDP or TCP).
fn base_message(base: Base, ctx: &Ctx, transport: &str, n: usize) -> Msg {
    let via = format!(
        "Via: SIP/2.0/{transport} {};branch=z9hG4bK-fz{n};rport",
        ctx.via
    );
    let call_id = format!("Call-ID: fuzz-{n}@{}", ctx.via.ip());
    let contact = format!("Contact: <sip:{FUZZ_USER}@{}>", ctx.via);
    let from = format!("From: <sip:{FUZZ_USER}@{DOMAIN}>;tag=fz{n}");
    let mf = "Max-Forwards: 70".to_string();
    let ua = "User-Agent: sipstack-fuzz".to_string();
    let (start, mut headers, body) = match base {
        Base::Register | Base::RegisterAuth => {
            let uri = format!("sip:{DOMAIN}");
            let mut h = vec![
                via,
                mf,
                from,
                format!("To: <sip:{FUZZ_USER}@{DOMAIN}>"),
                call_id,
                "CSeq: 1 REGISTER".to_string(),
                contact,
                "Expires: 300".to_string(),
                ua,
            ];
            if base == Base::RegisterAuth {
                h.push(credentials("Authorization", "REGISTER", &uri, ctx));
            }
            (format!("REGISTER {uri} SIP/2.0"), h, String::new())
        }
        Base::Invite | Base::InviteAuth => {
            let uri = format!("sip:{FUZZ_NUMBER}@{DOMAIN}");
            let sdp = format!(
                "v=0\r\no=fuzz {n} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio 40000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
                 a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
            );
            let mut h = vec![
                via,
                mf,
                from,
                format!("To: <{uri}>"),
                call_id,
                "CSeq: 1 INVITE".to_string(),
                contact,
                "Subject: fuzz".to_string(),
                ua,
                "Content-Type: application/sdp".to_string(),
            ];
            if base == Base::InviteAuth {
                h.push(credentials("Proxy-Authorization", "INVITE", &uri, ctx));
            }
            (format!("INVITE {uri} SIP/2.0"), h, sdp)
        }
        Base::Options => {
            let uri = format!("sip:{}", ctx.edge);
            let h = vec![
                via,
                mf,
                from,
                format!("To: <{uri}>"),
                call_id,
                "CSeq: 1 OPTIONS".to_string(),
                ua,
            ];
            (format!("OPTIONS {uri} SIP/2.0"), h, String::new())
        }
        Base::OptionsUser => {
            let uri = format!("sip:{FUZZ_NUMBER}@{DOMAIN}");
            let h = vec![
                via,
                mf,
                from,
                format!("To: <{uri}>"),
                call_id,
                "CSeq: 1 OPTIONS".to_string(),
                contact,
                "Accept: application/sdp".to_string(),
                ua,
            ];
            (format!("OPTIONS {uri} SIP/2.0"), h, String::new())
        }
        Base::Bye => {
            let h = vec![
                via,
                format!(
                    "Route: <sip:{};lr;sig=0123456789abcdef0123456789abcdef>",
                    ctx.edge
                ),
                mf,
                format!("From: <sip:{FUZZ_NUMBER}@{DOMAIN}>;tag=fzf{n}"),
                format!("To: <sip:{FUZZ_USER}@{DOMAIN}>;tag=fzt{n}"),
                call_id,
                "CSeq: 2 BYE".to_string(),
                ua,
            ];
            (
                format!("BYE sip:{FUZZ_USER}@{} SIP/2.0", ctx.via),
                h,
                String::new(),
            )
        }
        Base::MessageAuth => {
            let uri = format!("sip:{FUZZ_NUMBER}@{DOMAIN}");
            let h = vec![
                via,
                mf,
                from,
                format!("To: <{uri}>"),
                call_id,
                "CSeq: 1 MESSAGE".to_string(),
                ua,
                "Content-Type: text/plain;charset=utf-8".to_string(),
                credentials("Proxy-Authorization", "MESSAGE", &uri, ctx),
            ];
            (
                format!("MESSAGE {uri} SIP/2.0"),
                h,
                format!("message {n} from the fuzzer, \u{e9}t\u{e9} \u{2603}"),
            )
        }
    };
    headers.push(format!("Content-Length: {}", body.len()));
    Msg::parse(&format!(
        "{start}\r\n{}\r\n\r\n{body}",
        headers.join("\r\n")
    ))
}

/// Message `n`: its kind, its base and its bytes.
fn fuzz_message(seed: u64, n: usize, ctx: &Ctx, transport: &str) -> (Kind, Base, Vec<u8>) {
    let mut rng = Rng::for_message(seed, n);
    let kind = SCHEDULE[n % SCHEDULE.len()];
    let base = *rng.pick(&BASES);
    let msg = base_message(base, ctx, transport, n);
    let mut bytes = mutate(kind, &msg, ctx, &mut rng, n);
    bytes.truncate(MAX_DATAGRAM);
    (kind, base, bytes)
}

const BAD_BYTES: &[&[u8]] = &[
    b"\xc0\x80",
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xbf\xbf\xbf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe0\x80\xaf",
    b"\xf8\x88\x80\x80\x80",
    b"\xc3",
    b"%00",
    b"%zz",
    b"%",
    b"\xe9t\xe9",
    b"\x1b[31m",
    b"\x7f\x01\x02",
];

const BAD_URIS: &[&str] = &[
    "sip:",
    "sip:@",
    "sip:user@",
    "sip:@{d}",
    "sip:[::1",
    "sip:[zz::1]:5060",
    "sip:u@{d}:99999",
    "sip:u@{d}:-1",
    "sip:u@{d}:",
    "sip:u@{d};;;;;",
    "sip:u@{d};lr=;=;==",
    "sips:%zz%00@{d}",
    "sip:%",
    "tel:",
    "tel:+",
    "<sip:u@{d}>",
    "*",
    "sip:u:p:q@{d}",
    "sip:u@{d}?Route=%3Csip:10.0.0.1%3E&&&",
    "sip:u@256.256.256.256",
    "sip:u@1.2.3.4.5",
    "sip:\"quoted\"@{d}",
    "sip:u@host name",
    "http://{d}/",
    "sip:u@{e}:5060",
    "sip:u@{e};transport=sctp;maddr=",
    "sip:;;@{d}",
    "sip:u@[::ffff:127.0.0.1]:0",
];

fn mutate(kind: Kind, msg: &Msg, ctx: &Ctx, rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut m = msg.clone();
    match kind {
        Kind::Truncated => {
            let bytes = m.bytes();
            let cut = rng.range(1, bytes.len() - 1);
            bytes[..cut].to_vec()
        }
        Kind::HugeHeader => {
            let names = [
                "Subject",
                "X-Fuzz-Padding",
                "Via",
                "Call-ID",
                "From",
                "To",
                "Contact",
                "User-Agent",
                "CSeq",
                "Route",
                "Authorization",
                "Proxy-Authorization",
                "Content-Type",
                "Expires",
            ];
            let name = *rng.pick(&names);
            let size = HUGE.min(MAX_DATAGRAM.saturating_sub(m.len() + 300));
            let filler: Vec<u8> = match rng.below(5) {
                0 => vec![b'a'; size],
                1 => (0..size).map(|_| 0x21 + rng.byte() % 94).collect(),
                2 => format!("<sip:{}@{DOMAIN}>", "u".repeat(size)).into_bytes(),
                3 => format!("<sip:x@{DOMAIN}>{}", ";p=v".repeat(size / 4)).into_bytes(),
                _ => "\"".repeat(size).into_bytes(),
            };
            let mut value = if rng.chance(50) {
                m.value(name).unwrap_or_default().into_bytes()
            } else {
                Vec::new()
            };
            value.extend_from_slice(&filler);
            m.set(name, &value, rng);
            m.bytes()
        }
        Kind::ManyHeaders => {
            // from a hundred headers or so up to as many as fit in a datagram
            let budget = rng.range(4_000, MAX_DATAGRAM.saturating_sub(m.len() + 200));
            let first_via = m.positions("Via").first().copied().unwrap_or(0);
            match rng.below(4) {
                0 => {
                    // hundreds of Via headers above or below the real one
                    let above = rng.chance(50);
                    let mut used = 0;
                    let mut i = 0;
                    while used < budget && i < 3000 {
                        let line = format!(
                            "Via: SIP/2.0/UDP 10.{}.{}.{}:5060;branch=z9hG4bK-m{i}",
                            i % 250,
                            (i / 250) % 250,
                            1 + i % 200
                        );
                        used += line.len() + 2;
                        let at = if above { first_via } else { first_via + 1 };
                        m.headers.insert(at, line.into_bytes());
                        i += 1;
                    }
                }
                1 => {
                    let name = *rng.pick(&["Route", "Record-Route", "Contact", "Path"]);
                    let mut used = 0;
                    let mut i = 0;
                    while used < budget && i < 3000 {
                        let line = format!("{name}: <sip:10.0.{}.{};lr>", i / 250, i % 250);
                        used += line.len() + 2;
                        let at = rng.below(m.headers.len() + 1);
                        m.headers.insert(at, line.into_bytes());
                        i += 1;
                    }
                }
                2 => {
                    let mut used = 0;
                    let mut i = 0;
                    while used < budget && i < 5000 {
                        let line = format!("X-F{i}: {i}");
                        used += line.len() + 2;
                        m.headers.push(line.into_bytes());
                        i += 1;
                    }
                }
                _ => {
                    // one header with thousands of comma-separated values
                    let name = *rng.pick(&["Contact", "Via", "Route", "Allow", "Supported"]);
                    let mut value = m.value(name).unwrap_or_else(|| "x".into());
                    let mut i = 0;
                    while value.len() < budget && i < 5000 {
                        value.push_str(&match name {
                            "Contact" | "Route" => format!(", <sip:c{i}@10.0.0.{}>", i % 250),
                            "Via" => {
                                format!(", SIP/2.0/UDP 10.0.0.{};branch=z9hG4bK-c{i}", i % 250)
                            }
                            _ => format!(", t{i}"),
                        });
                        i += 1;
                    }
                    m.set(name, value.as_bytes(), rng);
                }
            }
            m.bytes()
        }
        Kind::BadEncoding => {
            for _ in 0..rng.range(1, 4) {
                let bad = *rng.pick(BAD_BYTES);
                if !m.body.is_empty() && rng.chance(20) {
                    let at = rng.below(m.body.len() + 1);
                    m.body.splice(at..at, bad.iter().copied());
                } else {
                    let line = rng.below(m.line_count());
                    let target = m.line_mut(line);
                    let at = rng.below(target.len() + 1);
                    target.splice(at..at, bad.iter().copied());
                }
            }
            m.bytes()
        }
        Kind::Nul => match rng.below(4) {
            0 => {
                for _ in 0..rng.range(1, 5) {
                    let line = rng.below(m.line_count());
                    let target = m.line_mut(line);
                    let at = rng.below(target.len() + 1);
                    target.insert(at, 0);
                }
                m.bytes()
            }
            1 => {
                // a NUL in place of one byte of a line break
                let mut bytes = m.bytes();
                let breaks: Vec<usize> = bytes
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| w == b"\r\n")
                    .map(|(i, _)| i)
                    .collect();
                let at = *rng.pick(&breaks) + rng.below(2);
                bytes[at] = 0;
                bytes
            }
            2 => {
                let mut bytes = vec![0u8; rng.range(1, 64)];
                bytes.extend_from_slice(&m.bytes());
                bytes
            }
            _ => {
                m.body = vec![0u8; rng.range(1, 2000)];
                let len = m.body.len().to_string();
                m.set("Content-Length", len.as_bytes(), rng);
                m.bytes()
            }
        },
        Kind::DuplicateMandatory => {
            let names = [
                "Call-ID",
                "CSeq",
                "From",
                "To",
                "Content-Length",
                "Via",
                "Max-Forwards",
                "Contact",
                "Expires",
            ];
            let name = *rng.pick(&names);
            let original = m.value(name);
            let body_len = m.body.len();
            for _ in 0..rng.range(1, 3) {
                let conflicting = match name {
                    "Call-ID" => format!("other-{n}-{}@elsewhere", rng.below(1000)),
                    "CSeq" => rng
                        .pick(&[
                            "99 BYE",
                            "1 REGISTER",
                            "2 INVITE",
                            "1 ACK",
                            "4294967295 OPTIONS",
                        ])
                        .to_string(),
                    "From" => format!("<sip:someone@evil.example>;tag=dup{n}"),
                    "To" => format!("<sip:other@{DOMAIN}>;tag=dup{n}"),
                    "Content-Length" => {
                        let more = body_len + rng.range(1, 50);
                        rng.pick(&[0, more, body_len / 2, 1]).to_string()
                    }
                    "Via" => format!("SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK-dup{n}"),
                    "Max-Forwards" => rng.pick(&["0", "70", "1"]).to_string(),
                    "Contact" => rng
                        .pick(&["*".to_string(), "<sip:dup@10.9.9.9>".to_string()])
                        .clone(),
                    _ => "0".to_string(),
                };
                let value = match &original {
                    Some(same) if rng.chance(20) => same.clone(),
                    _ => conflicting,
                };
                let compact = match name {
                    "Call-ID" => "i",
                    "From" => "f",
                    "To" => "t",
                    "Content-Length" => "l",
                    "Via" => "v",
                    "Contact" => "m",
                    other => other,
                };
                let written = if rng.chance(30) { compact } else { name };
                let line = format!("{written}: {value}").into_bytes();
                let near = m.positions(name).first().copied();
                let at = match near {
                    Some(i) if rng.chance(70) => i + rng.below(2),
                    _ => rng.below(m.headers.len() + 1),
                };
                m.headers.insert(at, line);
            }
            m.bytes()
        }
        Kind::MissingMandatory => {
            let names = [
                "Via",
                "From",
                "To",
                "Call-ID",
                "CSeq",
                "Max-Forwards",
                "Content-Length",
                "Contact",
            ];
            if rng.chance(5) {
                m.headers.clear();
            } else {
                for _ in 0..rng.range(1, 3) {
                    let name = rng.pick::<&str>(&names);
                    m.remove_all(name);
                }
            }
            m.bytes()
        }
        Kind::BadNumber => {
            match rng.below(6) {
                0 | 1 => {
                    let method = m
                        .value("CSeq")
                        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
                        .unwrap_or_else(|| "INVITE".into());
                    let number = *rng.pick(&[
                        "4294967296",
                        "4294967295",
                        "2147483648",
                        "18446744073709551616",
                        "-1",
                        "0",
                        "99999999999999999999999999999999",
                        "1.5",
                        "0x1F",
                        "",
                        "+1",
                        "1 1",
                        "\u{ff12}",
                    ]);
                    let value = match rng.below(4) {
                        0 => format!("{number}{method}"),
                        1 => format!("{number} {method}X"),
                        _ => format!("{number} {method}"),
                    };
                    m.set("CSeq", value.as_bytes(), rng);
                }
                2 => {
                    let larger = (m.body.len() + rng.range(1, 5000)).to_string();
                    let value = rng
                        .pick(&[
                            "-1",
                            "-65536",
                            larger.as_str(),
                            larger.as_str(),
                            "4294967296",
                            "18446744073709551615",
                            "99999999999999999999",
                            "abc",
                            "",
                            "1e3",
                            "0 0",
                            "0",
                            "+5",
                        ])
                        .to_string();
                    m.set("Content-Length", value.as_bytes(), rng);
                }
                3 => {
                    let value =
                        *rng.pick(&["-1", "256", "4294967296", "abc", "", "0", "255", "70 70"]);
                    m.set("Max-Forwards", value.as_bytes(), rng);
                }
                4 => {
                    let value = *rng.pick(&[
                        "-1",
                        "4294967296",
                        "99999999999999999999",
                        "abc",
                        "",
                        "0x10",
                        "3600;expires=-5",
                    ]);
                    m.set("Expires", value.as_bytes(), rng);
                }
                _ => {
                    let port = *rng.pick(&["0", "65536", "99999", "-1", "abc", "", "4294967297"]);
                    let from = ctx.via.to_string();
                    let to = format!("{}:{port}", ctx.via.ip());
                    for h in m.headers.iter_mut() {
                        let text = String::from_utf8_lossy(h).replace(&from, &to);
                        *h = text.into_bytes();
                    }
                }
            }
            m.bytes()
        }
        Kind::BadStartLine => {
            let start = String::from_utf8_lossy(&m.start).into_owned();
            let mut parts = start.splitn(3, ' ');
            let method = parts.next().unwrap_or("INVITE").to_string();
            let uri = parts.next().unwrap_or("sip:x").to_string();
            let version = parts.next().unwrap_or("SIP/2.0").to_string();
            let edge = ctx.edge.to_string();
            let line = match rng.below(8) {
                0 => format!("{} {uri} {version}", method.to_lowercase()),
                1 => {
                    let long = "X".repeat(rng.range(100, 4000));
                    let garbage = *rng.pick(&[
                        "INV ITE",
                        "",
                        "INVITE INVITE",
                        "I\tNVITE",
                        long.as_str(),
                        "SIP/2.0",
                        "\u{c4}\u{d6}\u{dc}",
                        "REGISTER:",
                        "ACK",
                        "CANCEL",
                        "PRACK",
                        "UPDATE",
                    ]);
                    format!("{garbage} {uri} {version}")
                }
                2 => {
                    let v = *rng.pick(&[
                        "SIP/3.0",
                        "SIP/2",
                        "SIP/2.0.1",
                        "HTTP/1.1",
                        "sip/2.0",
                        "",
                        "SIP/99999999999.0",
                        "SIP/2.0 SIP/2.0",
                    ]);
                    format!("{method} {uri} {v}")
                }
                3 => {
                    let bad = rng
                        .pick(BAD_URIS)
                        .replace("{d}", DOMAIN)
                        .replace("{e}", &edge);
                    format!("{method} {bad} {version}")
                }
                4 => {
                    let user = "a".repeat(rng.range(1025, 8000));
                    format!("{method} sip:{user}@{DOMAIN} {version}")
                }
                5 => match rng.below(5) {
                    0 => format!("{method}  {uri}  {version}"),
                    1 => format!("{method}\t{uri}\t{version}"),
                    2 => format!(" {method} {uri} {version} "),
                    3 => format!("{method}{uri}{version}"),
                    _ => format!("{method} {uri}"),
                },
                6 => {
                    // no start line at all: the first header takes its place
                    m.start = m.headers.remove(0);
                    return m.bytes();
                }
                _ => rng
                    .pick(&[
                        "SIP/2.0 200 OK",
                        "SIP/2.0 99999 Odd",
                        "SIP/2.0 abc",
                        "SIP/2.0 100",
                        "SIP/2.0",
                    ])
                    .to_string(),
            };
            m.start = line.into_bytes();
            m.bytes()
        }
        Kind::Folding => {
            match rng.below(9) {
                0 | 1 => {
                    let folds = if rng.chance(50) { 1 } else { rng.range(2, 10) };
                    for _ in 0..folds {
                        let i = rng.below(m.headers.len());
                        let line = &mut m.headers[i];
                        if let Some(colon) = line.iter().position(|b| *b == b':') {
                            let at = rng.range(colon + 1, line.len());
                            let ws: &[u8] = rng.pick::<&[u8]>(&[b" ", b"\t", b"  \t", b"\t\t\t"]);
                            let mut fold = b"\r\n".to_vec();
                            fold.extend_from_slice(ws);
                            line.splice(at..at, fold);
                        }
                    }
                }
                2 => {
                    let i = rng.below(m.headers.len());
                    let line = &mut m.headers[i];
                    if let Some(colon) = line.iter().position(|b| *b == b':') {
                        line.splice(colon + 1..colon + 1, b"\r\n\t".iter().copied());
                    }
                }
                3 => m.headers[0].insert(0, b' '),
                4 => {
                    if let Some(space) = m.start.iter().rposition(|b| *b == b' ') {
                        m.start.splice(space..space + 1, b"\r\n ".iter().copied());
                    }
                }
                5 => {
                    let at = rng.below(m.headers.len() + 1);
                    let line: &[u8] = rng.pick::<&[u8]>(&[b" \t", b" ", b"\t"]);
                    m.headers.insert(at, line.to_vec());
                }
                6 => {
                    let i = rng.below(m.headers.len());
                    let line = &mut m.headers[i];
                    if let Some(colon) = line.iter().position(|b| *b == b':') {
                        match rng.below(3) {
                            0 => {
                                line.splice(colon..colon, b" \t ".iter().copied());
                            }
                            1 => {
                                line.drain(colon + 1..(colon + 2).min(line.len()));
                            }
                            _ => {
                                line.splice(0..0, b"\t".iter().copied());
                            }
                        }
                    }
                }
                _ => {
                    // other line endings: LF only, CR only, or a mix
                    let style = rng.below(3);
                    let mut out = m.start.clone();
                    let ending = |rng: &mut Rng| -> &'static [u8] {
                        match style {
                            0 => &b"\n"[..],
                            1 => &b"\r"[..],
                            _ => rng.pick::<&[u8]>(&[b"\n", b"\r", b"\r\n", b"\n\r"]),
                        }
                    };
                    for h in &m.headers {
                        out.extend_from_slice(ending(rng));
                        out.extend_from_slice(h);
                    }
                    let e1 = ending(rng);
                    let e2 = ending(rng);
                    out.extend_from_slice(e1);
                    out.extend_from_slice(e2);
                    out.extend_from_slice(&m.body);
                    return out;
                }
            }
            m.bytes()
        }
        Kind::ByteFlips => {
            let mut bytes = m.bytes();
            for _ in 0..rng.range(1, 16) {
                let at = rng.below(bytes.len());
                if rng.chance(50) {
                    bytes[at] = rng.byte();
                } else {
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            bytes
        }
    }
}

/// `bytes` readable in a failure message: printable ASCII as it is, the rest escaped.
fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for b in bytes.iter().take(max) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(*b as char),
            other => out.push_str(&format!("\\x{other:02x}")),
        }
    }
    if bytes.len() > max {
        out.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    out
}

// ---------------------------------------------------------------- the edge's health

/// The processes Kamailio's main process `pid` forked (its workers), from /proc.
fn workers_of(pid: i32) -> BTreeSet<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// CPU time (clock ticks, user and system) process `pid` has used so far.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // after the name: state is field 3 of stat, utime 14 and stime 15
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Workers that kept a CPU busy over `window` with no traffic: one spinning in a
/// loop a message sent it into. Returns (pid, ticks used).
fn spinning_workers(workers: &BTreeSet<i32>, window: Duration) -> Vec<(i32, u64)> {
    let before: Vec<(i32, Option<u64>)> = workers.iter().map(|p| (*p, cpu_ticks(*p))).collect();
    std::thread::sleep(window);
    // clock ticks are 1/100 s on Linux; a quarter of the window is far above what
    // an idle worker's timers use
    let limit = window.as_millis() as u64 / 10 / 4;
    before
        .into_iter()
        .filter_map(|(pid, t0)| {
            let used = cpu_ticks(pid)?.saturating_sub(t0?);
            (used > limit).then_some((pid, used))
        })
        .collect()
}

/// Datagrams the kernel dropped because the socket on 127.0.0.1:`port` was full.
fn udp_drops(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// Lines of the edge's log after byte `offset` that tell of a crash.
fn crash_lines(log: &std::path::Path, offset: u64) -> Vec<String> {
    let bytes = std::fs::read(log).unwrap_or_default();
    let from = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[from..]);
    const SIGNS: [&str; 8] = [
        "exited by a signal",
        "core was generated",
        "core was not generated",
        "segfault",
        "core dump",
        "sigsegv",
        "sigabrt",
        "terminating due to",
    ];
    text.lines()
        .filter(|l| {
            let l = l.to_lowercase();
            SIGNS.iter().any(|s| l.contains(s))
        })
        .map(|l| l.chars().take(300).collect())
        .collect()
}

// ---------------------------------------------------------------- legitimate traffic

#[derive(Debug)]
enum Attempt {
    Ok(Duration),
    /// The test machine, not the edge: SIPp could not bind its port (another
    /// process took it meanwhile) and exited before it sent anything, so the
    /// edge never saw the attempt. Reported, and not a failure of the edge.
    Machine(String),
    Failed(String),
}

/// One authenticated REGISTER of the legitimate subscriber's phone at `port`.
async fn register_once(edge: SocketAddr, port: u16) -> Attempt {
    let started = Instant::now();
    match register_command(edge, USER, PASSWORD, port)
        .run_async()
        .await
    {
        Err(e) => Attempt::Failed(format!("register: sipp did not run: {e:#}")),
        Ok(out) if out.ensure_all_succeeded(1).is_ok() => Attempt::Ok(started.elapsed()),
        Ok(out) if out.exit == SippExit::BindFailed => {
            Attempt::Machine(format!("register: port {port} taken: {out}"))
        }
        Ok(out) => Attempt::Failed(format!("register: {}", out.diagnostics())),
    }
}

/// One authenticated call of the legitimate subscriber, answered by `member`.
async fn call_once(edge: SocketAddr, member: SocketAddr) -> Attempt {
    let started = Instant::now();
    match call_number(edge, USER, PASSWORD, LEGIT_NUMBER).await {
        Err(e) => Attempt::Failed(format!("call: sipp did not run: {e:#}")),
        Ok(out) if out.ensure_all_succeeded(1).is_ok() => {
            if answered_by(&out) == Some(member.to_string()) {
                Attempt::Ok(started.elapsed())
            } else {
                Attempt::Failed(format!(
                    "call: answered by {:?}, not {member}",
                    answered_by(&out)
                ))
            }
        }
        Ok(out) if out.exit == SippExit::BindFailed => {
            Attempt::Machine(format!("call: sipp could not bind: {out}"))
        }
        Ok(out) => Attempt::Failed(format!("call: {}", out.diagnostics())),
    }
}

/// `attempt` again (three times at most) while the machine was in the way.
async fn retried<F, Fut>(what: &str, tb: &Testbed, mut attempt: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    for _ in 0..3 {
        match attempt().await {
            Attempt::Ok(took) => return took,
            Attempt::Machine(why) => eprintln!("{what}: {why}; again"),
            Attempt::Failed(why) => panic!("{what} failed: {why}\n{}", tb.edge_log(30)),
        }
    }
    panic!("{what}: SIPp could not bind three times")
}

#[derive(Debug, Default)]
struct Legit {
    rounds: usize,
    registers: usize,
    calls: usize,
    slowest: Duration,
    machine: Vec<String>,
    failures: Vec<String>,
}

impl Legit {
    fn count(&mut self, attempt: Attempt, register: bool) {
        match attempt {
            Attempt::Ok(took) => {
                if register {
                    self.registers += 1;
                } else {
                    self.calls += 1;
                }
                self.slowest = self.slowest.max(took);
            }
            Attempt::Machine(why) => self.machine.push(why),
            Attempt::Failed(why) => self.failures.push(why),
        }
    }
}

/// The legitimate subscriber registers and calls, one after the other, until the
/// fuzz run is over; every round it starts is counted as during the run.
async fn legit_during(
    edge: SocketAddr,
    phone_port: u16,
    member: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Legit {
    let mut legit = Legit::default();
    for _ in 0..MAX_LEGIT_ROUNDS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        legit.rounds += 1;
        let attempt = register_once(edge, phone_port).await;
        legit.count(attempt, true);
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let attempt = call_once(edge, member).await;
        legit.count(attempt, false);
    }
    legit
}

// ---------------------------------------------------------------- the fuzz run

#[derive(Debug, Default)]
struct FuzzRun {
    udp_sent: BTreeMap<Kind, usize>,
    udp_by_base: BTreeMap<String, usize>,
    udp_bytes: usize,
    udp_send_errors: usize,
    tcp_sent: BTreeMap<Kind, usize>,
    tcp_connections: usize,
    tcp_canaries_answered: usize,
    tcp_connect_failures: usize,
    tcp_closed_by_edge: usize,
    tcp_replies: usize,
    replies: BTreeMap<u16, usize>,
    /// Start lines of the 5xx replies.
    server_errors: BTreeMap<String, usize>,
    bursts: usize,
    canaries_answered: usize,
    /// Canaries answered, but only after CANARY_WAIT.
    slow_canaries: usize,
    /// Canaries never answered (UDP), or not within CANARY_WAIT (TCP).
    canary_misses: Vec<String>,
    slowest_canary: Duration,
    /// UDP canaries sent and not answered yet: when sent, and after what.
    outstanding: BTreeMap<String, (Instant, String)>,
    /// Replies the kernel dropped at the fuzzer's own socket.
    fuzzer_drops: Option<u64>,
    elapsed: Duration,
    /// Why the run stopped early: the edge died or stopped answering.
    aborted: Option<String>,
}

impl FuzzRun {
    fn udp_total(&self) -> usize {
        self.udp_sent.values().sum()
    }
    fn tcp_total(&self) -> usize {
        self.tcp_sent.values().sum()
    }
}

/// A valid OPTIONS the edge answers itself (200 Keepalive).
fn canary(ctx: &Ctx, transport: &str, id: &str) -> String {
    format!(
        "OPTIONS sip:{edge} SIP/2.0\r\nVia: SIP/2.0/{transport} {via};branch=z9hG4bK-{id};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:canary@{DOMAIN}>;tag={id}\r\nTo: <sip:{edge}>\r\n\
         Call-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        edge = ctx.edge,
        via = ctx.via
    )
}

/// Counts a reply by its code, and 5xx by start line.
fn count_reply(
    msg: &SipMessage,
    replies: &mut BTreeMap<u16, usize>,
    server_errors: &mut BTreeMap<String, usize>,
) {
    if let Some(code) = msg.status() {
        *replies.entry(code).or_insert(0) += 1;
        if code >= 500 {
            *server_errors
                .entry(msg.start_line().to_string())
                .or_insert(0) += 1;
        }
    }
}

/// Everything that comes back to the fuzzer's UDP socket, read all along by a
/// thread of its own: the replies to huge messages are huge too, and unread they
/// would fill the socket's buffer and be dropped uncounted.
struct ReplyReader {
    inbox: mpsc::Receiver<SipMessage>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReplyReader {
    fn start(socket: &UdpSocket) -> Self {
        let socket = socket.try_clone().expect("a second handle of the socket");
        let (tx, inbox) = mpsc::channel();
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
            while !finished.load(Ordering::Relaxed) {
                // errors: a timeout, or an ICMP error of an earlier send
                if let Ok((len, from)) = socket.recv_from(&mut buf) {
                    let msg = SipMessage {
                        from,
                        text: String::from_utf8_lossy(&buf[..len]).into_owned(),
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            inbox,
            done,
            thread: Some(thread),
        }
    }

    /// Counts the replies that came within `wait`.
    fn count(&self, wait: Duration, run: &mut FuzzRun) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(msg) = self.inbox.recv_timeout(left) else {
                return;
            };
            count_reply(&msg, &mut run.replies, &mut run.server_errors);
        }
    }
}

/// Waits for the answer to canary `id` on `socket` (the canaries' own, so that
/// no reply to a mutated message can crowd it out), counting the answers to
/// earlier canaries that come meanwhile. Whether `id`'s came within `wait`.
fn canary_answered(socket: &UdpSocket, id: &str, wait: Duration, run: &mut FuzzRun) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero()
            || (id.is_empty() && run.outstanding.is_empty())
            || socket.set_read_timeout(Some(left)).is_err()
        {
            return false;
        }
        let Ok((len, from)) = socket.recv_from(&mut buf) else {
            // a timeout, or an ICMP error of an earlier send
            continue;
        };
        let msg = SipMessage {
            from,
            text: String::from_utf8_lossy(&buf[..len]).into_owned(),
        };
        let Some(call_id) = msg.header("Call-ID") else {
            continue;
        };
        if let Some((sent, _)) = run.outstanding.remove(call_id) {
            let took = sent.elapsed();
            run.canaries_answered += 1;
            run.slowest_canary = run.slowest_canary.max(took);
            if took > CANARY_WAIT {
                run.slow_canaries += 1;
            }
        }
        if call_id == id {
            return true;
        }
    }
}

impl Drop for ReplyReader {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The final reply with Call-ID `call_id` that reaches `socket` within `wait`.
fn final_reply(socket: &UdpSocket, call_id: &str, wait: Duration) -> Option<SipMessage> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        socket.set_read_timeout(Some(left)).ok()?;
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                let msg = SipMessage {
                    from,
                    text: String::from_utf8_lossy(&buf[..len]).into_owned(),
                };
                if msg.header("Call-ID") == Some(call_id) && msg.status().is_some_and(|c| c >= 200)
                {
                    return Some(msg);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            // an ICMP error of an earlier send
            Err(_) => {}
        }
    }
}

/// Reads from `stream` until `needle` came or `wait` passed; returns all read.
fn read_until(stream: &mut TcpStream, needle: &str, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 16_384];
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        if stream
            .set_read_timeout(Some(
                left.clamp(Duration::from_millis(1), Duration::from_millis(100)),
            ))
            .is_err()
        {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                got.extend_from_slice(&buf[..k]);
                if !needle.is_empty() && String::from_utf8_lossy(&got).contains(needle) {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// One TCP batch: a connection that starts with a valid OPTIONS (it must be
/// answered) and then carries mutated messages. When the edge closes it, the rest
/// of the batch goes on a new connection, five at most.
fn tcp_batch(seed: u64, n: &mut usize, ctx: &Ctx, run: &mut FuzzRun) {
    let mut written = 0;
    for _ in 0..5 {
        if written >= TCP_BATCH {
            break;
        }
        let Ok(mut stream) = TcpStream::connect_timeout(&ctx.edge, Duration::from_secs(3)) else {
            run.tcp_connect_failures += 1;
            continue;
        };
        run.tcp_connections += 1;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(Duration::from_secs(3)));
        let id = format!("canary-tcp-{}", run.tcp_connections);
        let answered = stream.write_all(canary(ctx, "TCP", &id).as_bytes()).is_ok()
            && read_until(&mut stream, &format!("Call-ID: {id}"), CANARY_WAIT)
                .starts_with("SIP/2.0 200");
        if answered {
            run.tcp_canaries_answered += 1;
        } else {
            run.canary_misses.push(format!(
                "TCP canary {id} (before message #{n}) unanswered within {CANARY_WAIT:?}"
            ));
            continue;
        }
        let mut closed = false;
        while written < TCP_BATCH {
            let (kind, _, bytes) = fuzz_message(seed, *n, ctx, "TCP");
            *n += 1;
            if stream.write_all(&bytes).is_err() {
                run.tcp_closed_by_edge += 1;
                closed = true;
                break;
            }
            written += 1;
            *run.tcp_sent.entry(kind).or_insert(0) += 1;
        }
        if !closed {
            let replies = read_until(&mut stream, "", Duration::from_millis(300));
            run.tcp_replies += replies.matches("SIP/2.0 ").count();
        }
    }
}

/// The whole run: bursts of mutated messages over UDP, each followed by a canary
/// whose answer paces the next burst, and TCP batches in between. Stops early
/// when Kamailio is gone or does not answer canaries any more.
fn fuzz(
    socket: UdpSocket,
    ctx: Ctx,
    seed: u64,
    kam: LocalKamailio,
    stop: Arc<AtomicBool>,
) -> FuzzRun {
    let started = Instant::now();
    let mut run = FuzzRun::default();
    let fuzzer_drops = udp_drops(ctx.via.port());
    let reader = ReplyReader::start(&socket);
    let canaries = UdpSocket::bind((EDGE_IP, 0)).expect("the canaries' socket");
    let canary_ctx = Ctx {
        via: canaries.local_addr().expect("its address"),
        ..ctx.clone()
    };
    let mut n = 0usize;
    let mut misses_in_a_row = 0;
    let mut tcp_done = 0;
    let mut burst: Vec<(usize, Kind, Base, Vec<u8>)> = Vec::new();
    let describe = |burst: &[(usize, Kind, Base, Vec<u8>)]| -> String {
        burst
            .iter()
            .map(|(n, kind, base, bytes)| {
                format!("  #{n} {kind:?} of {base:?}: {}", escape(bytes, 240))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    while run.udp_total() < UDP_MESSAGES {
        if started.elapsed() > FUZZ_DEADLINE {
            run.aborted = Some(format!(
                "the run did not end within {FUZZ_DEADLINE:?} ({} messages sent)",
                run.udp_total()
            ));
            break;
        }
        let burst_started = Instant::now();
        burst.clear();
        let mut bytes = 0;
        while burst.len() < BURST_MESSAGES && bytes < BURST_BYTES && run.udp_total() < UDP_MESSAGES
        {
            let (kind, base, data) = fuzz_message(seed, n, &ctx, "UDP");
            match socket.send_to(&data, ctx.edge) {
                Ok(_) => {
                    *run.udp_sent.entry(kind).or_insert(0) += 1;
                    *run.udp_by_base.entry(format!("{base:?}")).or_insert(0) += 1;
                    run.udp_bytes += data.len();
                }
                Err(_) => run.udp_send_errors += 1,
            }
            bytes += data.len();
            burst.push((n, kind, base, data));
            n += 1;
            if run.udp_send_errors > 100 {
                break;
            }
        }
        if run.udp_send_errors > 100 {
            run.aborted = Some(format!(
                "{} sends to the edge failed; last burst:\n{}",
                run.udp_send_errors,
                describe(&burst)
            ));
            break;
        }

        let id = format!("canary-{}", run.bursts);
        let after = format!(
            "the canary after burst {} (messages #{}..#{})",
            run.bursts,
            burst.first().map_or(0, |b| b.0),
            burst.last().map_or(0, |b| b.0)
        );
        run.outstanding.insert(id.clone(), (Instant::now(), after));
        let _ = canaries.send_to(canary(&canary_ctx, "UDP", &id).as_bytes(), ctx.edge);
        reader.count(Duration::ZERO, &mut run);
        if canary_answered(&canaries, &id, CANARY_WAIT, &mut run) {
            misses_in_a_row = 0;
        } else {
            misses_in_a_row += 1;
        }
        run.bursts += 1;
        if kam.running_pid().is_none() {
            run.aborted = Some(format!(
                "Kamailio is gone after burst {} (seed {seed:#x}); that burst:\n{}",
                run.bursts - 1,
                describe(&burst)
            ));
            break;
        }
        if misses_in_a_row >= CANARY_MISSES_IN_A_ROW {
            run.aborted = Some(format!(
                "{misses_in_a_row} canaries in a row not answered within {CANARY_WAIT:?}: the edge is wedged (seed {seed:#x}); last burst:\n{}",
                describe(&burst)
            ));
            break;
        }
        if run.bursts % TCP_EVERY == 0 && tcp_done < TCP_BATCHES {
            tcp_batch(seed, &mut n, &ctx, &mut run);
            tcp_done += 1;
        }
        let next = burst_started + BURST_PERIOD;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    while run.aborted.is_none() && tcp_done < TCP_BATCHES {
        tcp_batch(seed, &mut n, &ctx, &mut run);
        tcp_done += 1;
    }
    // the replies still on their way
    if !run.outstanding.is_empty() {
        canary_answered(&canaries, "", CANARY_WAIT, &mut run);
    }
    reader.count(Duration::from_secs(1), &mut run);
    drop(reader);
    let lost = std::mem::take(&mut run.outstanding);
    run.canary_misses.extend(
        lost.into_values()
            .map(|(_, after)| format!("{after} was never answered")),
    );
    run.fuzzer_drops = udp_drops(ctx.via.port())
        .zip(fuzzer_drops)
        .map(|(a, b)| a.saturating_sub(b));
    run.elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    run
}

/// The edge's challenge to a REGISTER of the fuzz subscriber: (nonce, qop=auth asked).
fn challenge(socket: &UdpSocket, ctx: &Ctx) -> (String, bool) {
    let msg = base_message(Base::Register, ctx, "UDP", 9_000_000).bytes();
    socket.send_to(&msg, ctx.edge).unwrap();
    let reply = final_reply(
        socket,
        &format!("fuzz-9000000@{}", ctx.via.ip()),
        Duration::from_secs(5),
    )
    .expect("the edge answers a REGISTER");
    assert_eq!(reply.status(), Some(401), "{}", reply.text);
    let auth = reply
        .header("WWW-Authenticate")
        .expect("a challenge")
        .to_string();
    let nonce = auth
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a nonce in the challenge")
        .to_string();
    (nonce, auth.contains("qop="))
}

fn route(name: &str, number: &str, target: Target) -> NewRoute {
    NewRoute {
        name: name.into(),
        priority: 10,
        match_kind: MatchKind::Exact,
        match_value: number.into(),
        source_domain: None,
        source: Default::default(),
        target,
        service: None,
        description: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mutated_messages_neither_crash_the_edge_nor_stop_authenticated_calls() {
    let seed = std::env::var("SIPSTACK_FUZZ_SEED")
        .ok()
        .and_then(|s| match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        })
        .unwrap_or(DEFAULT_SEED);
    let (member, _standin) = standin(0).unwrap();
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber(USER, PASSWORD).await.unwrap();
    tb.add_subscriber(FUZZ_USER, FUZZ_PASSWORD).await.unwrap();
    let db = tb.db().await.unwrap();
    for r in [
        route("legit", LEGIT_NUMBER, Target::Pool("media".into())),
        route(
            "fuzz-sink",
            FUZZ_NUMBER,
            Target::Reject {
                code: 486,
                reason: "Busy Here".into(),
            },
        ),
    ] {
        sipstack_db::route::add(&db, &r).await.unwrap();
    }
    tb.reload_routes().await.unwrap();
    tb.wait_for_destinations(Duration::from_secs(10), |l| l.iter().all(|d| d.is_active()))
        .await
        .unwrap();
    let edge = tb.edge();
    let phone_port = free_udp_port_on(EDGE_IP).unwrap();

    // before
    let before_register = retried("register before the run", &tb, || {
        register_once(edge, phone_port)
    })
    .await;
    let before_call = retried("call before the run", &tb, || call_once(edge, member)).await;

    let kam = LocalKamailio::new(&tb.state_dir(), &tb.state.edges[0].name);
    let pid = kam.running_pid().expect("Kamailio runs");
    let workers = workers_of(pid);
    assert!(!workers.is_empty(), "Kamailio {pid} has no workers");
    let log = tb.state.edges[0].log.clone();
    let log_offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let drops_before = udp_drops(edge.port());
    let kamailio_ticks = |workers: &BTreeSet<i32>| -> u64 {
        std::iter::once(pid)
            .chain(workers.iter().copied())
            .filter_map(cpu_ticks)
            .sum()
    };
    let ticks_before = kamailio_ticks(&workers);

    // the fuzzer's socket, a nonce for its credentials, and its bases as they are
    let socket = UdpSocket::bind((EDGE_IP, 0)).unwrap();
    let mut ctx = Ctx {
        edge,
        via: socket.local_addr().unwrap(),
        nonce: String::new(),
        qop: false,
    };
    (ctx.nonce, ctx.qop) = challenge(&socket, &ctx);
    for (i, base) in BASES.iter().enumerate() {
        let n = 9_000_001 + i;
        socket
            .send_to(&base_message(*base, &ctx, "UDP", n).bytes(), edge)
            .unwrap();
        let id = format!("fuzz-{n}@{}", ctx.via.ip());
        let last = final_reply(&socket, &id, Duration::from_secs(5)).and_then(|m| m.status());
        assert_eq!(
            last,
            Some(base.expected()),
            "the valid {base:?} is answered {}: {}\n{}",
            base.expected(),
            escape(&base_message(*base, &ctx, "UDP", n).bytes(), 2000),
            tb.edge_log(20)
        );
    }

    // during: the fuzz run and the legitimate subscriber at the same time
    let stop = Arc::new(AtomicBool::new(false));
    let legit = tokio::spawn(legit_during(edge, phone_port, member, stop.clone()));
    let fuzz_run = tokio::task::spawn_blocking({
        let (ctx, kam, stop) = (ctx.clone(), kam.clone(), stop.clone());
        move || fuzz(socket, ctx, seed, kam, stop)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let run = fuzz_run.expect("the fuzz thread");
    let legit = legit.await.expect("the legitimate subscriber's task");
    let drops_after = udp_drops(edge.port());
    let kamailio_cpu =
        Duration::from_millis(kamailio_ticks(&workers).saturating_sub(ticks_before) * 10);

    // Kamailio did not crash: the same process and workers, no signal in its log
    let alive_after = kam.running_pid();
    let workers_after = alive_after.map(workers_of).unwrap_or_default();
    let crashes = crash_lines(&log, log_offset);
    let sent: Vec<String> = run
        .udp_sent
        .iter()
        .map(|(k, c)| format!("{k:?} {c}+{}", run.tcp_sent.get(k).copied().unwrap_or(0)))
        .collect();
    println!(
        "edge fuzz (seed {seed:#x}): {} UDP messages ({} MB) and {} TCP messages on {} connections in {:.1?}, \
         {} bursts; per kind (UDP+TCP): {}; per base: {:?}; replies by code {:?} ({} in all; 5xx: {:?}), {} TCP replies, \
         {} TCP connections closed by the edge mid-batch, {} refused; canaries answered: UDP {}/{} ({} after more than {CANARY_WAIT:?}, slowest {:.0?}), \
         TCP {}/{}; kernel drops on the edge's UDP socket: {:?}, on the fuzzer's: {:?}; Kamailio's CPU time meanwhile {:.1?}; legitimate during the run: {} rounds, \
         {} registrations and {} calls succeeded, {} failed, {} machine hiccups, slowest {:.0?}; \
         before: register {:.0?}, call {:.0?}",
        run.udp_total(),
        run.udp_bytes / 1_000_000,
        run.tcp_total(),
        run.tcp_connections,
        run.elapsed,
        run.bursts,
        sent.join(", "),
        run.udp_by_base,
        run.replies,
        run.replies.values().sum::<usize>(),
        run.server_errors,
        run.tcp_replies,
        run.tcp_closed_by_edge,
        run.tcp_connect_failures,
        run.canaries_answered,
        run.bursts,
        run.slow_canaries,
        run.slowest_canary,
        run.tcp_canaries_answered,
        run.tcp_connections,
        drops_after.zip(drops_before).map(|(a, b)| a.saturating_sub(b)),
        run.fuzzer_drops,
        kamailio_cpu,
        legit.rounds,
        legit.registers,
        legit.calls,
        legit.failures.len(),
        legit.machine.len(),
        legit.slowest,
        before_register,
        before_call,
    );
    assert!(
        crashes.is_empty(),
        "the edge's log tells of a crash (seed {seed:#x}):\n{}\n{}",
        crashes.join("\n"),
        run.aborted.as_deref().unwrap_or_default()
    );
    assert_eq!(
        alive_after,
        Some(pid),
        "Kamailio's main process {pid} is gone: {}\n{}",
        run.aborted.as_deref().unwrap_or_default(),
        tb.edge_log(40)
    );
    assert_eq!(
        workers_after,
        workers,
        "Kamailio's workers changed: a worker died\n{}",
        tb.edge_log(40)
    );
    assert!(
        run.aborted.is_none(),
        "{}\n{}",
        run.aborted.as_deref().unwrap_or_default(),
        tb.edge_log(40)
    );
    // none is left spinning in a loop a message sent it into
    let spinning = tokio::task::spawn_blocking({
        let workers = workers_after.clone();
        move || spinning_workers(&workers, Duration::from_secs(2))
    })
    .await
    .unwrap();
    assert!(
        spinning.is_empty(),
        "workers busy (clock ticks in 2 s) with no traffic: {spinning:?}\n{}",
        tb.edge_log(40)
    );

    // everything was sent
    assert!(
        run.udp_total() >= 10_000,
        "{} UDP messages sent",
        run.udp_total()
    );
    assert!(
        run.tcp_total() >= 200,
        "{} TCP messages sent",
        run.tcp_total()
    );
    assert_eq!(run.udp_send_errors, 0);
    assert_eq!(
        run.tcp_connect_failures, 0,
        "the edge refused TCP connections"
    );

    // the edge kept serving during the run: every canary answered, and the
    // legitimate subscriber registered and called all along
    assert!(
        run.canary_misses.is_empty(),
        "{} canaries unanswered (seed {seed:#x}):\n{}",
        run.canary_misses.len(),
        run.canary_misses.join("\n")
    );
    assert!(
        legit.failures.is_empty(),
        "{} legitimate registrations or calls failed during the run:\n{}\n{}",
        legit.failures.len(),
        legit.failures.join("\n---\n"),
        tb.edge_log(30)
    );
    assert!(
        legit.registers >= 3 && legit.calls >= 3,
        "too few legitimate rounds ran during the run to measure it: {legit:?}"
    );

    // and after it
    let after_register = retried("register after the run", &tb, || {
        register_once(edge, phone_port)
    })
    .await;
    let after_call = retried("call after the run", &tb, || call_once(edge, member)).await;
    println!("after the run: register {after_register:.0?}, call {after_call:.0?}");
    assert!(
        tb.rpc.version().await.is_ok_and(|v| v.contains("kamailio")),
        "RPC after the run"
    );
    let contacts = tb
        .rpc
        .ul_lookup("location", &format!("{USER}@{DOMAIN}"))
        .await
        .unwrap_or_default();
    assert!(
        contacts
            .iter()
            .any(|c| c.address.contains(&format!(":{phone_port}"))),
        "the phone's registration is in the edge's memory: {contacts:?}"
    );
    // the phone's registration also reaches the database (usrloc writes back
    // every second), whatever the fuzzer got saved meanwhile
    let mut persisted = false;
    for _ in 0..50 {
        let rows = db
            .query("SELECT contact FROM location WHERE username = $1", &[&USER])
            .await
            .unwrap();
        if rows
            .iter()
            .any(|r| r.get::<_, String>(0).contains(&format!(":{phone_port}")))
        {
            persisted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        persisted,
        "the phone's registration was not written to the database"
    );
    // a canary over a fresh UDP socket and a fresh TCP connection
    let probe = UdpSocket::bind((EDGE_IP, 0)).unwrap();
    let probe_ctx = Ctx {
        via: probe.local_addr().unwrap(),
        ..ctx.clone()
    };
    probe
        .send_to(canary(&probe_ctx, "UDP", "canary-after").as_bytes(), edge)
        .unwrap();
    let udp_after =
        final_reply(&probe, "canary-after", Duration::from_secs(5)).and_then(|m| m.status());
    assert_eq!(
        udp_after,
        Some(200),
        "a valid OPTIONS over UDP after the run"
    );
    let mut stream = TcpStream::connect_timeout(&edge, Duration::from_secs(5)).unwrap();
    stream
        .write_all(canary(&probe_ctx, "TCP", "canary-after-tcp").as_bytes())
        .unwrap();
    let tcp_after = read_until(&mut stream, "Call-ID: canary-after-tcp", CANARY_WAIT);
    assert!(
        tcp_after.starts_with("SIP/2.0 200"),
        "a valid OPTIONS over TCP after the run: {tcp_after:?}"
    );
    assert_eq!(
        kam.running_pid(),
        Some(pid),
        "Kamailio still runs at the end"
    );
}
