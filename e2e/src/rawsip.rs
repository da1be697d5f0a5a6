//! SIP over a bare UDP socket, for the attack tests: an attacker writes the exact
//! bytes it wants (forged tags, Route headers, signatures), and a victim or a
//! hand-driven media node sees the exact bytes the edge relays.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One SIP message as received, with the address it came from.
#[derive(Debug, Clone)]
pub struct SipMessage {
    pub from: SocketAddr,
    pub text: String,
}

impl SipMessage {
    /// The start line: `INVITE sip:… SIP/2.0` or `SIP/2.0 200 OK`.
    pub fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    /// The method of a request, None for a reply.
    pub fn method(&self) -> Option<&str> {
        let first = self.start_line();
        if first.starts_with("SIP/2.0") {
            None
        } else {
            first.split(' ').next()
        }
    }

    /// The status code of a reply, None for a request.
    pub fn status(&self) -> Option<u16> {
        let first = self.start_line();
        first
            .strip_prefix("SIP/2.0 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
    }

    /// Every value of header `name` (case-insensitive; no compact forms), in order.
    pub fn headers<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_string();
        self.text
            .split("\r\n")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter_map(move |line| {
                let (n, v) = line.split_once(':')?;
                n.trim().eq_ignore_ascii_case(&name).then(|| v.trim())
            })
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).next()
    }

    /// The reply `code reason` to this request, with its Via, From, To (and
    /// `to_tag` added when given), Call-ID and CSeq; `extra` are more header lines.
    pub fn reply(&self, code: u16, reason: &str, to_tag: Option<&str>, extra: &[String]) -> String {
        let mut out = format!("SIP/2.0 {code} {reason}\r\n");
        for via in self.headers("Via") {
            out.push_str(&format!("Via: {via}\r\n"));
        }
        for name in ["From", "Call-ID", "CSeq"] {
            if let Some(v) = self.header(name) {
                out.push_str(&format!("{name}: {v}\r\n"));
            }
        }
        let to = self.header("To").unwrap_or("");
        match to_tag {
            Some(tag) if !to.contains(";tag=") => out.push_str(&format!("To: {to};tag={tag}\r\n")),
            _ => out.push_str(&format!("To: {to}\r\n")),
        }
        for line in extra {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        out
    }
}

/// A UDP socket that sends and receives SIP messages as text.
pub struct SipSocket {
    socket: UdpSocket,
}

impl SipSocket {
    /// A socket on `ip` at a free port.
    pub fn bind(ip: IpAddr) -> Result<Self> {
        let socket = UdpSocket::bind((ip, 0)).with_context(|| format!("bind UDP on {ip}"))?;
        Ok(Self { socket })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    pub fn send(&self, to: SocketAddr, text: &str) -> Result<()> {
        self.socket
            .send_to(text.as_bytes(), to)
            .with_context(|| format!("send to {to}"))?;
        Ok(())
    }

    /// The next message within `timeout`, None when nothing came. A zero timeout
    /// still takes a message that is already waiting.
    pub fn recv(&self, timeout: Duration) -> Result<Option<SipMessage>> {
        let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.socket.set_read_timeout(Some(left))?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    // keepalives (CRLF) are not messages
                    if text.trim().is_empty() {
                        continue;
                    }
                    return Ok(Some(SipMessage { from, text }));
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Everything that arrives within `window`.
    pub fn drain(&self, window: Duration) -> Result<Vec<SipMessage>> {
        let deadline = Instant::now() + window;
        let mut all = Vec::new();
        while let Some(m) = self.recv(deadline.saturating_duration_since(Instant::now()))? {
            all.push(m);
        }
        Ok(all)
    }

    fn try_clone(&self) -> Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
        })
    }
}

/// A media node driven by the test: it answers the dispatcher's OPTIONS probes by
/// itself (so it stays an active member) and hands every other message to the test.
pub struct HandDrivenNode {
    socket: SipSocket,
    inbox: mpsc::Receiver<SipMessage>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HandDrivenNode {
    pub fn bind(ip: IpAddr) -> Result<Self> {
        let socket = SipSocket::bind(ip)?;
        let reader = socket.try_clone()?;
        let (tx, inbox) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok(next) = reader.recv(Duration::from_millis(100)) else {
                    return;
                };
                let Some(msg) = next else { continue };
                if msg.method() == Some("OPTIONS") {
                    let _ = reader.send(msg.from, &msg.reply(200, "OK", Some("probe"), &[]));
                    continue;
                }
                if tx.send(msg).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            socket,
            inbox,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn send(&self, to: SocketAddr, text: &str) -> Result<()> {
        self.socket.send(to, text)
    }

    /// The next request with `method` within `timeout` (others are skipped).
    pub fn expect_request(&self, method: &str, timeout: Duration) -> Result<SipMessage> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(msg) if msg.method() == Some(method) => return Ok(msg),
                Ok(_) => continue,
                Err(_) => anyhow::bail!("no {method} reached the node within {timeout:?}"),
            }
        }
    }
}

impl Drop for HandDrivenNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
