//! A voice call with real RTP, placed by a test the way a phone would: an INVITE
//! with SDP through the edge, the digest challenge answered, the 200 acknowledged
//! along the Record-Route set, G.711 audio sent and received for a while, and a BYE.
//!
//! The audio sent is noise with a fixed seed, so every packet's payload is unique:
//! what comes back unchanged is counted as echoed (a media node that echoes the
//! caller in the same codec returns the bytes it got). Decoded audio gives the
//! level (RMS) of what was heard.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};

use crate::rawsip::{SipMessage, SipSocket};

/// A G.711 codec and its static RTP payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum G711 {
    Pcmu,
    Pcma,
}

impl G711 {
    pub fn payload_type(self) -> u8 {
        match self {
            G711::Pcmu => 0,
            G711::Pcma => 8,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            G711::Pcmu => "PCMU",
            G711::Pcma => "PCMA",
        }
    }
    fn from_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(G711::Pcmu),
            8 => Some(G711::Pcma),
            _ => None,
        }
    }
    fn encode(self, sample: i16) -> u8 {
        match self {
            G711::Pcmu => linear_to_ulaw(sample),
            G711::Pcma => linear_to_alaw(sample),
        }
    }
    fn decode(self, byte: u8) -> i16 {
        match self {
            G711::Pcmu => ulaw_to_linear(byte),
            G711::Pcma => alaw_to_linear(byte),
        }
    }
}

/// The call to place.
#[derive(Debug, Clone)]
pub struct VoiceCall {
    pub edge: SocketAddr,
    pub user: String,
    pub password: String,
    pub domain: String,
    /// The number or user called (the Request-URI's user part).
    pub callee: String,
    /// Codecs offered, in order.
    pub offer: Vec<G711>,
    /// How long audio is sent once the call is answered.
    pub talk: Duration,
    /// Address of the phone's SIP and RTP sockets.
    pub local_ip: IpAddr,
    /// More header lines of the INVITE (e.g. one a hostile phone adds).
    pub extra_headers: Vec<String>,
    /// Keys pressed (RFC 2833 events, 100 ms each) this long after the answer.
    pub dtmf: Vec<(Duration, char)>,
    /// Send a sine at this frequency instead of noise (a voice a test can recognise
    /// when it is played back later).
    pub tone_hz: Option<f64>,
    /// Measure how much of what is heard is a sine at this frequency
    /// ([`VoiceCallReport::tone_share`]).
    pub listen_hz: Option<f64>,
}

/// What the call did.
#[derive(Debug, Clone, Default)]
pub struct VoiceCallReport {
    pub call_id: String,
    /// The codec of the answer's SDP.
    pub codec: Option<String>,
    /// Where the answer's SDP sends RTP.
    pub remote_rtp: Option<SocketAddr>,
    pub packets_sent: usize,
    pub packets_received: usize,
    /// Received packets whose payload is one the phone sent.
    pub packets_echoed: usize,
    /// Level of the received audio (full scale 1.0).
    pub received_rms: f64,
    /// Level of the last second of received audio.
    pub received_rms_tail: f64,
    /// Level of the sent audio.
    pub sent_rms: f64,
    /// The final status of the BYE.
    pub bye_status: Option<u16>,
    /// The far end sent a BYE before the phone had done talking (answered 200).
    pub far_end_hung_up: bool,
    /// Time from the (authenticated) INVITE to its 200.
    pub setup: Duration,
    /// With [`VoiceCall::listen_hz`]: in the half second of audio that holds most
    /// of it, the share of the energy at that frequency (1.0 a pure tone, near 0
    /// noise, speech or silence).
    pub tone_share: f64,
}

impl VoiceCall {
    /// A call from `user` at 127.0.0.1 through `edge` to `callee`, offering PCMU
    /// and talking for one second; change the fields for anything else.
    pub fn new(edge: SocketAddr, user: &str, password: &str, domain: &str, callee: &str) -> Self {
        Self {
            edge,
            user: user.into(),
            password: password.into(),
            domain: domain.into(),
            callee: callee.into(),
            offer: vec![G711::Pcmu],
            talk: Duration::from_secs(1),
            local_ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            extra_headers: Vec::new(),
            dtmf: Vec::new(),
            tone_hz: None,
            listen_hz: None,
        }
    }
}

struct Dialog {
    call_id: String,
    from_tag: String,
    to: String,
    request_uri: String,
    route: Vec<String>,
    cseq: u32,
}

impl VoiceCall {
    /// Places the call; fails when it is not answered or its BYE gets no answer.
    /// Blocking: run it on a blocking thread from async tests.
    pub fn run(&self) -> Result<VoiceCallReport> {
        let sip = SipSocket::bind(self.local_ip)?;
        let rtp = UdpSocket::bind((self.local_ip, 0)).context("bind the RTP socket")?;
        let local = sip.local_addr()?;
        let rtp_port = rtp.local_addr()?.port();
        let seed = std::process::id() as u64 ^ u64::from(rtp_port) << 20 ^ now_nanos();
        let call_id = format!("voice-{seed:x}@{}", self.local_ip);
        let from_tag = format!("t{:x}", seed & 0xffff_ffff);
        let target = format!("sip:{}@{}", self.callee, self.domain);
        let sdp = self.sdp(rtp_port);
        let mut report = VoiceCallReport {
            call_id: call_id.clone(),
            ..Default::default()
        };

        // INVITE, the challenge, INVITE again with credentials
        let mut cseq = 1;
        let mut auth: Option<String> = None;
        let mut started;
        let answer = loop {
            let branch = format!("z9hG4bK-{seed:x}-{cseq}");
            let invite = self.request(
                "INVITE",
                &target,
                local,
                &branch,
                &from_tag,
                &format!("<{target}>"),
                &call_id,
                cseq,
                &[],
                extra_lines(&self.extra_headers, auth.as_deref()).as_deref(),
                Some(&sdp),
            );
            started = Instant::now();
            let reply = self.final_reply(&sip, &invite, &call_id, cseq)?;
            let code = reply.status().unwrap_or(0);
            if code >= 300 {
                // the ACK of a failed INVITE is hop by hop, on the INVITE's branch
                let ack = self.request(
                    "ACK",
                    &target,
                    local,
                    &branch,
                    &from_tag,
                    reply.header("To").unwrap_or(""),
                    &call_id,
                    cseq,
                    &[],
                    None,
                    None,
                );
                sip.send(self.edge, &ack)?;
            }
            match code {
                401 | 407 if auth.is_none() => {
                    let header = if code == 407 {
                        "Proxy-Authenticate"
                    } else {
                        "WWW-Authenticate"
                    };
                    let challenge = reply
                        .header(header)
                        .with_context(|| format!("{code} without {header}"))?;
                    let name = if code == 407 {
                        "Proxy-Authorization"
                    } else {
                        "Authorization"
                    };
                    auth = Some(format!(
                        "{name}: {}",
                        digest_response(challenge, &self.user, &self.password, "INVITE", &target)?
                    ));
                    cseq += 1;
                }
                200..=299 => break reply,
                _ => bail!("the call to {target} failed: {}", reply.start_line()),
            }
        };
        report.setup = started.elapsed();
        let body = body(&answer);
        let (remote, pt) = parse_sdp(body).context("the 200's SDP has no audio")?;
        report.remote_rtp = Some(remote);
        let codec = G711::from_payload_type(pt)
            .with_context(|| format!("the answer chose payload type {pt}, not G.711"))?;
        report.codec = Some(codec.name().to_string());
        let mut route: Vec<String> = answer
            .headers("Record-Route")
            .flat_map(split_header_list)
            .collect();
        route.reverse();
        let contact = answer
            .header("Contact")
            .and_then(uri_of)
            .context("the 200 has no Contact")?;
        let mut dialog = Dialog {
            call_id: call_id.clone(),
            from_tag: from_tag.clone(),
            to: answer.header("To").unwrap_or("").to_string(),
            request_uri: contact,
            route,
            cseq,
        };
        let ack = self.in_dialog(&dialog, "ACK", local, &format!("z9hG4bK-{seed:x}-ack"));
        sip.send(self.edge, &ack)?;

        // audio both ways
        let stop = Arc::new(AtomicBool::new(false));
        let receiver = {
            let rtp = rtp.try_clone()?;
            let stop = stop.clone();
            std::thread::spawn(move || -> Vec<(u8, Vec<u8>)> {
                let mut got = Vec::new();
                let mut buf = [0u8; 2048];
                let _ = rtp.set_read_timeout(Some(Duration::from_millis(100)));
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = rtp.recv_from(&mut buf) {
                        if n > 12 && buf[0] >> 6 == 2 {
                            let header = 12 + 4 * usize::from(buf[0] & 0x0f);
                            if n > header {
                                got.push((buf[1] & 0x7f, buf[header..n].to_vec()));
                            }
                        }
                    }
                }
                got
            })
        };
        let mut noise = Lcg(seed | 1);
        let mut sent: HashSet<Vec<u8>> = HashSet::new();
        let ssrc = (seed >> 8) as u32;
        let packets = (self.talk.as_millis() / 20).max(1) as u32;
        let mut sum_sq = 0f64;
        let t0 = Instant::now();
        let mut sent_packets = 0u32;
        // packet index → (event, packets into the event)
        let dtmf_at: Vec<(u32, u8)> = self
            .dtmf
            .iter()
            .filter_map(|(at, key)| Some(((at.as_millis() / 20) as u32, dtmf_event(*key)?)))
            .collect();
        for i in 0..packets {
            if let Some((start, event)) = dtmf_at
                .iter()
                .find(|(start, _)| (*start..*start + 8).contains(&i))
            {
                // 5 packets of a growing event, then its end three times (RFC 4733)
                let k = i - start;
                let end = k >= 5;
                let duration = ((k.min(4) + 1) * 160) as u16;
                let mut packet = Vec::with_capacity(16);
                packet.push(0x80);
                packet.push(if k == 0 {
                    0x80 | TELEPHONE_EVENT
                } else {
                    TELEPHONE_EVENT
                });
                packet.extend_from_slice(&(i as u16).to_be_bytes());
                packet.extend_from_slice(&(start * 160).to_be_bytes());
                packet.extend_from_slice(&ssrc.to_be_bytes());
                packet.push(*event);
                packet.push(if end { 0x80 | 10 } else { 10 });
                packet.extend_from_slice(&duration.to_be_bytes());
                rtp.send_to(&packet, remote)?;
                let next = t0 + Duration::from_millis(20 * u64::from(i + 1));
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                continue;
            }
            let payload: Vec<u8> = (0..160u32)
                .map(|k| {
                    let s = match self.tone_hz {
                        Some(hz) => {
                            let t = f64::from(i * 160 + k) / 8000.0;
                            (0.3 * 32767.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
                        }
                        None => noise.sample(0.3),
                    };
                    sum_sq += (f64::from(s) / 32768.0).powi(2);
                    codec.encode(s)
                })
                .collect();
            let mut packet = Vec::with_capacity(172);
            packet.push(0x80);
            packet.push(pt);
            packet.extend_from_slice(&(i as u16).to_be_bytes());
            packet.extend_from_slice(&(i * 160).to_be_bytes());
            packet.extend_from_slice(&ssrc.to_be_bytes());
            packet.extend_from_slice(&payload);
            rtp.send_to(&packet, remote)?;
            sent.insert(payload);
            sent_packets += 1;
            // while audio flows, answer retransmitted 200s (our ACK may have been lost),
            // and a BYE: the far end may end the call
            if let Ok(Some(m)) = sip.recv(Duration::ZERO) {
                if m.status() == Some(200)
                    && m.header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
                {
                    sip.send(self.edge, &ack)?;
                } else if m.method() == Some("BYE") {
                    sip.send(self.edge, &m.reply(200, "OK", None, &[]))?;
                    report.far_end_hung_up = true;
                    break;
                }
            }
            let next = t0 + Duration::from_millis(20 * u64::from(i + 1));
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        // what is still on its way back
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let received = receiver
            .join()
            .map_err(|_| anyhow::anyhow!("RTP receiver panicked"))?;
        report.packets_sent = sent_packets as usize;
        report.sent_rms = (sum_sq / f64::from(sent_packets.max(1) * 160)).sqrt();
        report.packets_received = received.len();
        let mut heard_sq = 0f64;
        let mut heard_n = 0usize;
        for (rpt, payload) in &received {
            if sent.contains(payload) {
                report.packets_echoed += 1;
            }
            if let Some(c) = G711::from_payload_type(*rpt) {
                for b in payload {
                    heard_sq += (f64::from(c.decode(*b)) / 32768.0).powi(2);
                    heard_n += 1;
                }
            }
        }
        if heard_n > 0 {
            report.received_rms = (heard_sq / heard_n as f64).sqrt();
        }
        let audio: Vec<(G711, &Vec<u8>)> = received
            .iter()
            .filter_map(|(rpt, p)| Some((G711::from_payload_type(*rpt)?, p)))
            .collect();
        if let Some(hz) = self.listen_hz {
            report.tone_share = audio
                .chunks(25)
                .filter(|w| w.len() == 25)
                .map(|w| {
                    let samples: Vec<f64> = w
                        .iter()
                        .flat_map(|(c, p)| p.iter().map(|b| f64::from(c.decode(*b)) / 32768.0))
                        .collect();
                    tone_share(&samples, hz, 8000.0)
                })
                .fold(0.0, f64::max);
        }
        let tail = &audio[audio.len().saturating_sub(50)..];
        let (mut sq, mut n) = (0f64, 0usize);
        for (c, p) in tail {
            for b in p.iter() {
                sq += (f64::from(c.decode(*b)) / 32768.0).powi(2);
                n += 1;
            }
        }
        if n > 0 {
            report.received_rms_tail = (sq / n as f64).sqrt();
        }

        if report.far_end_hung_up {
            return Ok(report);
        }
        // BYE along the route set, retransmitted like UDP wants
        dialog.cseq += 1;
        let bye = self.in_dialog(&dialog, "BYE", local, &format!("z9hG4bK-{seed:x}-bye"));
        for _ in 0..4 {
            sip.send(self.edge, &bye)?;
            let deadline = Instant::now() + Duration::from_secs(2);
            while let Some(m) = sip.recv(deadline.saturating_duration_since(Instant::now()))? {
                let is_bye = m.header("CSeq").is_some_and(|c| c.ends_with("BYE"));
                match m.status() {
                    Some(code) if is_bye && code >= 200 => {
                        report.bye_status = Some(code);
                        return Ok(report);
                    }
                    Some(200) => sip.send(self.edge, &ack)?,
                    _ => {}
                }
            }
        }
        bail!("the BYE of call {call_id} got no final reply: {report:?}")
    }

    fn sdp(&self, port: u16) -> String {
        let pts: Vec<String> = self
            .offer
            .iter()
            .map(|c| c.payload_type().to_string())
            .collect();
        let mut sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=sipstack-test\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {} 101\r\n",
            pts.join(" "),
            ip = self.local_ip
        );
        for c in &self.offer {
            sdp.push_str(&format!(
                "a=rtpmap:{} {}/8000\r\n",
                c.payload_type(),
                c.name()
            ));
        }
        sdp.push_str(
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        );
        sdp
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        method: &str,
        uri: &str,
        local: SocketAddr,
        branch: &str,
        from_tag: &str,
        to: &str,
        call_id: &str,
        cseq: u32,
        route: &[String],
        auth: Option<&str>,
        sdp: Option<&str>,
    ) -> String {
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag={from_tag}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             User-Agent: sipstack-voicecall\r\n",
            user = self.user,
            domain = self.domain,
        );
        for r in route {
            m.push_str(&format!("Route: {r}\r\n"));
        }
        if let Some(a) = auth {
            m.push_str(a);
            m.push_str("\r\n");
        }
        match sdp {
            Some(body) => m.push_str(&format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )),
            None => m.push_str("Content-Length: 0\r\n\r\n"),
        }
        m
    }

    fn in_dialog(&self, d: &Dialog, method: &str, local: SocketAddr, branch: &str) -> String {
        let cseq = d.cseq;
        self.request(
            method,
            &d.request_uri,
            local,
            branch,
            &d.from_tag,
            &d.to,
            &d.call_id,
            cseq,
            &d.route,
            None,
            None,
        )
    }

    /// Sends `request` until a final reply to it comes (UDP: retransmitted on timer A).
    fn final_reply(
        &self,
        sip: &SipSocket,
        request: &str,
        call_id: &str,
        cseq: u32,
    ) -> Result<SipMessage> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut interval = Duration::from_millis(500);
        let mut provisional = false;
        sip.send(self.edge, request)?;
        let mut next_send = Instant::now() + interval;
        while Instant::now() < deadline {
            let wait = next_send
                .min(deadline)
                .saturating_duration_since(Instant::now());
            match sip.recv(wait)? {
                Some(m) => {
                    let mine = m.header("Call-ID") == Some(call_id)
                        && m.header("CSeq")
                            .is_some_and(|c| c.starts_with(&format!("{cseq} ")));
                    match m.status() {
                        Some(code) if mine && code >= 200 => return Ok(m),
                        Some(_) if mine => provisional = true,
                        _ => {}
                    }
                }
                None if !provisional && Instant::now() >= next_send => {
                    sip.send(self.edge, request)?;
                    interval = (interval * 2).min(Duration::from_secs(4));
                    next_send = Instant::now() + interval;
                }
                None => next_send = Instant::now() + interval,
            }
        }
        bail!("no final reply to INVITE (CSeq {cseq}) of {call_id} within 20 s")
    }
}

/// `Digest …` credentials answering `challenge` (qop=auth when offered).
pub fn digest_response(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> Result<String> {
    let param = |name: &str| -> Option<String> {
        let rest = challenge.split_once(&format!("{name}="))?.1;
        Some(match rest.strip_prefix('"') {
            Some(q) => q.split('"').next()?.to_string(),
            None => rest.split(',').next()?.trim().to_string(),
        })
    };
    let realm = param("realm").context("challenge without realm")?;
    let nonce = param("nonce").context("challenge without nonce")?;
    let hex = |s: String| format!("{:x}", Md5::digest(s.as_bytes()));
    let ha1 = hex(format!("{user}:{realm}:{password}"));
    let ha2 = hex(format!("{method}:{uri}"));
    let mut out = format!(
        r#"Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", algorithm=MD5"#
    );
    if param("qop").is_some_and(|q| q.split(',').any(|x| x.trim() == "auth")) {
        let cnonce = format!("{:x}", now_nanos());
        let response = hex(format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}"));
        out.push_str(&format!(
            r#", qop=auth, nc=00000001, cnonce="{cnonce}", response="{response}""#
        ));
    } else {
        out.push_str(&format!(
            r#", response="{}""#,
            hex(format!("{ha1}:{nonce}:{ha2}"))
        ));
    }
    if let Some(opaque) = param("opaque") {
        out.push_str(&format!(r#", opaque="{opaque}""#));
    }
    Ok(out)
}

/// RTP payload type of telephone-event in the offer.
const TELEPHONE_EVENT: u8 = 101;

/// The RFC 4733 event of a key.
fn dtmf_event(key: char) -> Option<u8> {
    match key {
        '0'..='9' => Some(key as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        _ => None,
    }
}

/// The INVITE's extra header lines and its credentials, as one block of lines.
fn extra_lines(extra: &[String], auth: Option<&str>) -> Option<String> {
    let lines: Vec<&str> = extra.iter().map(String::as_str).chain(auth).collect();
    (!lines.is_empty()).then(|| lines.join("\r\n"))
}

fn body(m: &SipMessage) -> &str {
    m.text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// The RTP address and first payload type of the audio stream of an SDP.
pub fn parse_sdp(sdp: &str) -> Option<(SocketAddr, u8)> {
    let mut ip: Option<IpAddr> = None;
    let mut audio: Option<(u16, u8)> = None;
    for line in sdp.lines().map(str::trim) {
        if let Some(c) = line
            .strip_prefix("c=IN IP4 ")
            .or_else(|| line.strip_prefix("c=IN IP6 "))
        {
            ip = c.trim().parse().ok().or(ip);
        }
        if let Some(m) = line.strip_prefix("m=audio ") {
            let mut parts = m.split_whitespace();
            let port = parts.next()?.parse().ok()?;
            let pt = parts.nth(1)?.parse().ok()?;
            audio = Some((port, pt));
        }
    }
    let (port, pt) = audio?;
    Some((SocketAddr::new(ip?, port), pt))
}

fn split_header_list(v: &str) -> Vec<String> {
    // Record-Route values are <uri;params>, comma separated
    v.split(">,")
        .map(|p| {
            let p = p.trim();
            if p.ends_with('>') {
                p.to_string()
            } else {
                format!("{p}>")
            }
        })
        .collect()
}

fn uri_of(header: &str) -> Option<String> {
    let start = header.find('<')? + 1;
    let end = header[start..].find('>')? + start;
    Some(header[start..end].to_string())
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Reproducible noise.
/// The share of the energy of `samples` that is a sine at `hz` (Goertzel): 1.0
/// for a pure tone, near 0 for anything else. Near-silence counts as 0.
pub fn tone_share(samples: &[f64], hz: f64, rate: f64) -> f64 {
    let energy: f64 = samples.iter().map(|x| x * x).sum();
    let n = samples.len() as f64;
    if n == 0.0 || (energy / n).sqrt() < 0.01 {
        return 0.0;
    }
    let coeff = 2.0 * (2.0 * std::f64::consts::PI * hz / rate).cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    power / (n / 2.0 * energy)
}

struct Lcg(u64);

impl Lcg {
    fn sample(&mut self, level: f64) -> i16 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let unit = ((self.0 >> 33) as f64 / f64::from(1u32 << 31)) * 2.0 - 1.0;
        (unit * level * 32767.0) as i16
    }
}

// G.711 (ITU-T), the classic bit-exact formulations.

fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    if s < 0 {
        s = -s;
    }
    s = s.min(CLIP) + BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) | mantissa) as u8
}

fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = (u >> 4) & 0x07;
    let mantissa = u & 0x0f;
    let magnitude = (((i32::from(mantissa) << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

fn linear_to_alaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];
    let mut pcm = i32::from(sample) >> 3;
    let mask = if pcm >= 0 {
        0xd5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    let Some(seg) = SEG_END.iter().position(|end| pcm <= *end) else {
        return (0x7f ^ mask) as u8;
    };
    let shift = if seg < 2 { 1 } else { seg };
    let aval = ((seg as i32) << 4) | ((pcm >> shift) & 0x0f);
    (aval ^ mask) as u8
}

fn alaw_to_linear(byte: u8) -> i16 {
    let a = i32::from(byte ^ 0x55);
    let mut t = (a & 0x0f) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (seg - 1),
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_round_trips_within_its_quantisation() {
        for codec in [G711::Pcmu, G711::Pcma] {
            for s in [-32000i16, -5000, -100, 0, 100, 5000, 32000] {
                let back = codec.decode(codec.encode(s));
                let err = (i32::from(back) - i32::from(s)).abs();
                assert!(
                    err <= i32::from(s).abs() / 16 + 16,
                    "{codec:?} {s} -> {back}"
                );
            }
        }
    }

    #[test]
    fn a_tone_is_told_from_another_tone_and_from_noise() {
        let sine = |hz: f64| -> Vec<f64> {
            (0..4000)
                .map(|k| 0.3 * (2.0 * std::f64::consts::PI * hz * f64::from(k) / 8000.0).sin())
                .collect()
        };
        assert!(tone_share(&sine(1200.0), 1200.0, 8000.0) > 0.95);
        assert!(tone_share(&sine(440.0), 1200.0, 8000.0) < 0.01);
        let mut noise = Lcg(7);
        let n: Vec<f64> = (0..4000)
            .map(|_| f64::from(noise.sample(0.3)) / 32768.0)
            .collect();
        assert!(tone_share(&n, 1200.0, 8000.0) < 0.01);
        assert_eq!(tone_share(&[0.0; 4000], 1200.0, 8000.0), 0.0);
    }

    #[test]
    fn sdp_and_digest() {
        let sdp = "v=0\r\nc=IN IP4 127.1.1.1\r\nm=audio 16400 RTP/AVP 8 101\r\n";
        assert_eq!(
            parse_sdp(sdp),
            Some(("127.1.1.1:16400".parse().unwrap(), 8))
        );
        let auth = digest_response(
            r#"Digest realm="example.com", nonce="abc", qop="auth""#,
            "u",
            "p",
            "INVITE",
            "sip:x@example.com",
        )
        .unwrap();
        assert!(
            auth.contains("qop=auth") && auth.contains(r#"nonce="abc""#),
            "{auth}"
        );
    }
}
