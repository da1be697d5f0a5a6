//! One authenticated event socket connection.
//!
//! A reader task owns the socket's read half and sorts what arrives: replies to
//! commands (`command/reply`, `api/response`) go to the callers in the order the
//! commands were sent (the server answers in order), events go to a bounded queue.
//! When that queue is full, new events are dropped and counted rather than
//! stalling the reader, which would also stall every command's reply.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::frame::{parse_message, Event, Message};

/// Events kept for [`EslClient::next_event`] before new ones are dropped.
const EVENT_QUEUE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EslError {
    #[error("event socket {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("event socket {0}: no answer within {1:?}")]
    Timeout(String, Duration),
    #[error("event socket {0}: the password was refused")]
    AuthFailed(String),
    #[error("event socket: {0}")]
    Protocol(String),
    /// The command ran and answered `-ERR …`.
    #[error("{0}")]
    Command(String),
    #[error("event socket {0}: the connection is closed")]
    Closed(String),
}

/// Event formats the server can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventFormat {
    Plain,
    Json,
}

type Waiters = Arc<std::sync::Mutex<VecDeque<oneshot::Sender<Message>>>>;

/// An authenticated connection to one FreeSWITCH.
pub struct EslClient {
    addr: String,
    timeout: Duration,
    writer: Mutex<OwnedWriteHalf>,
    waiters: Waiters,
    events: Mutex<mpsc::Receiver<Event>>,
    closed: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for EslClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Refuses text that would end the command and start another one.
fn one_line(what: &str, text: &str) -> Result<(), EslError> {
    if text.contains(['\n', '\r']) {
        return Err(EslError::Protocol(format!(
            "{what} contains a line break; refused (it would send a second command)"
        )));
    }
    Ok(())
}

impl EslClient {
    /// Connects to `addr` (`host:port`) and authenticates; `timeout` bounds the
    /// connection and every later command.
    pub async fn connect(addr: &str, password: &str, timeout: Duration) -> Result<Self, EslError> {
        one_line("the password", password)?;
        let io = |source| EslError::Io {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| EslError::Timeout(addr.to_string(), timeout))?
            .map_err(io)?;
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let mut buf = Vec::new();
        // the greeting, then the answer to auth, read here before the reader task starts
        let greeting = tokio::time::timeout(timeout, read_one(&mut read, &mut buf, addr))
            .await
            .map_err(|_| EslError::Timeout(addr.to_string(), timeout))??
            .ok_or_else(|| EslError::Closed(addr.to_string()))?;
        if greeting.content_type() != "auth/request" {
            return Err(EslError::Protocol(format!(
                "{addr} greeted with {:?}, not auth/request (an ACL may refuse this address)",
                greeting.content_type()
            )));
        }
        write
            .write_all(format!("auth {password}\n\n").as_bytes())
            .await
            .map_err(io)?;
        let reply = tokio::time::timeout(timeout, read_one(&mut read, &mut buf, addr))
            .await
            .map_err(|_| EslError::Timeout(addr.to_string(), timeout))??;
        match reply {
            Some(m) if m.get("Reply-Text").is_some_and(|t| t.starts_with("+OK")) => {}
            _ => return Err(EslError::AuthFailed(addr.to_string())),
        }

        let waiters: Waiters = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let reader = tokio::spawn(read_loop(
            read,
            buf,
            waiters.clone(),
            tx,
            closed.clone(),
            dropped.clone(),
            addr.to_string(),
        ));
        Ok(Self {
            addr: addr.to_string(),
            timeout,
            writer: Mutex::new(write),
            waiters,
            events: Mutex::new(rx),
            closed,
            dropped,
            reader,
        })
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Events dropped because nobody read them fast enough.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends one command and waits for its reply.
    async fn send(&self, command: &str) -> Result<Message, EslError> {
        one_line("the command", command)?;
        if self.is_closed() {
            return Err(EslError::Closed(self.addr.clone()));
        }
        let (tx, rx) = oneshot::channel();
        {
            // the waiter joins the queue under the writer's lock: replies come back
            // in the order commands were written
            let mut writer = self.writer.lock().await;
            if let Ok(mut w) = self.waiters.lock() {
                w.push_back(tx);
            }
            writer
                .write_all(format!("{command}\n\n").as_bytes())
                .await
                .map_err(|source| EslError::Io {
                    addr: self.addr.clone(),
                    source,
                })?;
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(_)) => Err(EslError::Closed(self.addr.clone())),
            Err(_) => Err(EslError::Timeout(self.addr.clone(), self.timeout)),
        }
    }

    /// Runs an API command and returns its output; an output of `-ERR …` is an error.
    pub async fn api(&self, command: &str) -> Result<String, EslError> {
        let reply = self.send(&format!("api {command}")).await?;
        let body = reply.body.unwrap_or_default();
        if body.starts_with("-ERR") {
            return Err(EslError::Command(body.trim_end().to_string()));
        }
        Ok(body)
    }

    /// Starts an API command in the background; returns its Job-UUID. Its output
    /// comes as the body of a BACKGROUND_JOB event (subscribe to it first).
    pub async fn bgapi(&self, command: &str) -> Result<String, EslError> {
        let reply = self.send(&format!("bgapi {command}")).await?;
        let text = reply.get("Reply-Text").unwrap_or("");
        if !text.starts_with("+OK") {
            return Err(EslError::Command(text.to_string()));
        }
        reply
            .get("Job-UUID")
            .map(str::to_string)
            .or_else(|| {
                text.strip_prefix("+OK Job-UUID: ")
                    .map(|s| s.trim().to_string())
            })
            .ok_or_else(|| EslError::Protocol(format!("bgapi reply without a Job-UUID: {text:?}")))
    }

    /// Subscribes to events by name (`ALL`, `CHANNEL_CREATE`, `BACKGROUND_JOB`, …).
    pub async fn subscribe(&self, format: EventFormat, events: &[&str]) -> Result<(), EslError> {
        let format = match format {
            EventFormat::Plain => "plain",
            EventFormat::Json => "json",
        };
        let reply = self
            .send(&format!("event {format} {}", events.join(" ")))
            .await?;
        match reply.get("Reply-Text") {
            Some(t) if t.starts_with("+OK") => Ok(()),
            other => Err(EslError::Command(
                other.unwrap_or("no Reply-Text").to_string(),
            )),
        }
    }

    /// The next event; `None` once the connection has ended and every event was read.
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }
}

/// Reads until one whole message is in `buf`; `None` at end of stream.
async fn read_one(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
    addr: &str,
) -> Result<Option<Message>, EslError> {
    loop {
        if let Some(m) = parse_message(buf).map_err(EslError::Protocol)? {
            return Ok(Some(m));
        }
        let mut chunk = [0u8; 4096];
        let n = read.read(&mut chunk).await.map_err(|source| EslError::Io {
            addr: addr.to_string(),
            source,
        })?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn read_loop(
    mut read: tokio::net::tcp::OwnedReadHalf,
    mut buf: Vec<u8>,
    waiters: Waiters,
    events: mpsc::Sender<Event>,
    closed: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    addr: String,
) {
    let mut chunk = vec![0u8; 16 * 1024];
    'conn: loop {
        loop {
            let message = match parse_message(&mut buf) {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%addr, "event socket framing error: {e}; closing");
                    break 'conn;
                }
            };
            match message.content_type() {
                "command/reply" | "api/response" => {
                    let waiter = waiters.lock().ok().and_then(|mut w| w.pop_front());
                    match waiter {
                        Some(w) => {
                            let _ = w.send(message);
                        }
                        None => tracing::warn!(%addr, "a reply nobody waited for"),
                    }
                }
                "text/event-plain" | "text/event-json" => {
                    let body = message.body.as_deref().unwrap_or("");
                    let event = if message.content_type() == "text/event-plain" {
                        Ok(Event::from_plain(body))
                    } else {
                        Event::from_json(body)
                    };
                    match event {
                        Ok(e) => {
                            if events.try_send(e).is_err() {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => tracing::warn!(%addr, "unreadable event: {e}"),
                    }
                }
                "text/disconnect-notice" => break 'conn,
                other => tracing::debug!(%addr, "ignored a {other:?} message"),
            }
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    closed.store(true, Ordering::Relaxed);
    // pending callers learn at once that no reply will come
    if let Ok(mut w) = waiters.lock() {
        w.clear();
    }
}
