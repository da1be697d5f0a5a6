//! [`EslClient`]: one authenticated inbound connection to FreeSWITCH's event socket.
//!
//! Two background tasks own the socket:
//!
//! * the reader takes messages off the socket and hands each reply
//!   (`command/reply`, `api/response`) to the oldest call still waiting for one,
//!   and each event to the event queue;
//! * the writer writes the commands, in the order they were queued.
//!
//! FreeSWITCH answers the commands of one connection in the order it got them, so
//! queueing a command and registering its waiter under one lock is all the
//! matching there is. A call that times out keeps its place in that queue: its
//! late reply is taken by nobody instead of going to the next call. Writes
//! happen in the writer task, so a call cancelled by its timeout (or by its
//! caller) never leaves half a command on the socket.
//!
//! Events wait in a bounded queue until [`EslClient::next_event`] takes them.
//! When the queue is full the oldest event is dropped (and counted, see
//! [`EslClient::dropped_events`]): blocking the reader instead would also hold
//! back the replies of every call behind the events nobody reads.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::frame::{parse_message, Message};
use crate::{EslError, Event, EventFormat};

/// Timeout of connecting and of each call when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Events kept for [`EslClient::next_event`] when none is given.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// How a connection behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EslOptions {
    /// Limit of connecting plus authenticating, and of each call's wait for its reply.
    pub timeout: Duration,
    /// Events kept until read; beyond it the oldest are dropped.
    pub event_capacity: usize,
    /// Log in as this directory user (`user@domain`, FreeSWITCH's `userauth`), who
    /// may run only the API commands its `esl-allowed-api` lists; None: the
    /// socket's own password (`auth`), which may run everything.
    pub user: Option<String>,
}

impl Default for EslOptions {
    fn default() -> Self {
        EslOptions {
            timeout: DEFAULT_TIMEOUT,
            event_capacity: DEFAULT_EVENT_CAPACITY,
            user: None,
        }
    }
}

/// One authenticated connection to FreeSWITCH's event socket (inbound mode).
///
/// Calls take `&self` and may run concurrently from many tasks (share the client
/// in an `Arc`); each gets its own reply. Dropping the client closes the
/// connection. It does not reconnect: see [`EslSession`](crate::EslSession) for that.
pub struct EslClient {
    shared: Arc<Shared>,
    timeout: Duration,
}

impl EslClient {
    /// Connects to `addr` (`host:port`), authenticates with `password`, and uses
    /// `timeout` for the whole of that and then for every call.
    pub async fn connect(
        addr: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<EslClient, EslError> {
        let options = EslOptions {
            timeout,
            ..EslOptions::default()
        };
        EslClient::connect_with(addr, password, options).await
    }

    /// [`connect`](Self::connect) as the directory user `user` (`user@domain`).
    pub async fn connect_as(
        addr: &str,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<EslClient, EslError> {
        let options = EslOptions {
            timeout,
            user: Some(user.to_string()),
            ..EslOptions::default()
        };
        EslClient::connect_with(addr, password, options).await
    }

    /// [`connect`](Self::connect) with all the options.
    ///
    /// Fails with [`EslError::AuthFailed`] when the password is refused,
    /// [`EslError::Timeout`] when connecting and authenticating take longer than
    /// `options.timeout`, and [`EslError::Protocol`] when the password has a line
    /// break or the server does not greet with `auth/request` (its ACL rejecting
    /// the client, for one).
    pub async fn connect_with(
        addr: &str,
        password: &str,
        options: EslOptions,
    ) -> Result<EslClient, EslError> {
        check_single_line("password", password)?;
        let login = match &options.user {
            Some(user) => {
                check_single_line("user", user)?;
                if !user.contains('@') || user.contains([':', ' ']) {
                    return Err(EslError::Protocol(format!(
                        "the event socket user {user:?} is not of the form user@domain"
                    )));
                }
                format!("userauth {user}:{password}")
            }
            None => format!("auth {password}"),
        };
        let timeout = options.timeout;
        let (stream, leftover) = tokio::time::timeout(timeout, handshake(addr, &login))
            .await
            .map_err(|_| EslError::Timeout(addr.to_string(), timeout))??;
        tracing::debug!(addr, "event socket: authenticated");

        let (read_half, write_half) = stream.into_split();
        let (writer_tx, writer_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            conn: Mutex::new(ConnState {
                pending: VecDeque::new(),
                writer: Some(writer_tx),
            }),
            closed: AtomicBool::new(false),
            events: Mutex::new(VecDeque::new()),
            event_capacity: options.event_capacity.max(1),
            events_ready: Notify::new(),
            dropped_events: AtomicU64::new(0),
            shutdown,
        });
        tokio::spawn(read_loop(shared.clone(), read_half, leftover));
        tokio::spawn(write_loop(shared.clone(), write_half, writer_rx));
        Ok(EslClient { shared, timeout })
    }

    /// Runs `api COMMAND` and returns its output (the body of the
    /// `api/response`, as FreeSWITCH sent it, usually ending in a newline).
    ///
    /// Output starting with `-ERR` or `-USAGE` is returned as
    /// [`EslError::Command`] with that text. A command with a line break is
    /// refused with [`EslError::Protocol`] and never sent.
    pub async fn api(&self, command: &str) -> Result<String, EslError> {
        self.api_with_timeout(command, self.timeout).await
    }

    /// [`api`](Self::api) with its own timeout, for commands that take long.
    pub async fn api_with_timeout(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, EslError> {
        check_single_line("command", command)?;
        let reply = self.request(format!("api {command}"), timeout).await?;
        match reply.content_type() {
            Some("api/response") => {
                let body = reply.body_text().unwrap_or_default().into_owned();
                if body.starts_with("-ERR") || body.starts_with("-USAGE") {
                    Err(EslError::Command(body.trim_end().to_string()))
                } else {
                    Ok(body)
                }
            }
            // FreeSWITCH refuses some commands before running them this way.
            Some("command/reply") => Err(reply_error(&reply)),
            other => Err(unexpected_reply("api", other)),
        }
    }

    /// Starts `bgapi COMMAND` and returns its Job-UUID. The output comes later
    /// as the body of a `BACKGROUND_JOB` event with that `Job-UUID`, if the
    /// connection [subscribed](Self::subscribe) to `BACKGROUND_JOB`.
    pub async fn bgapi(&self, command: &str) -> Result<String, EslError> {
        check_single_line("command", command)?;
        let reply = self
            .request(format!("bgapi {command}"), self.timeout)
            .await?;
        if reply.content_type() != Some("command/reply") {
            return Err(unexpected_reply("bgapi", reply.content_type()));
        }
        let text = reply.reply_text().unwrap_or_default();
        if !text.starts_with("+OK") {
            return Err(reply_error(&reply));
        }
        let uuid = reply
            .get("Job-UUID")
            .or_else(|| text.split_once("Job-UUID:").map(|(_, u)| u.trim()))
            .filter(|u| !u.is_empty());
        uuid.map(str::to_string)
            .ok_or_else(|| EslError::Protocol(format!("bgapi reply without a Job-UUID: {text:?}")))
    }

    /// Listens to `events` (names such as `CHANNEL_CREATE`, `BACKGROUND_JOB`,
    /// `ALL`; `CUSTOM` followed by subclass names) in `format`. Subscriptions
    /// add up; the format of the last one applies to all of them.
    ///
    /// FreeSWITCH ignores unknown names next to known ones, and answers
    /// `-ERR no keywords supplied` (an [`EslError::Command`]) when none is known.
    pub async fn subscribe(&self, format: EventFormat, events: &[&str]) -> Result<(), EslError> {
        if events.is_empty() {
            return Err(EslError::Protocol("subscribe: no event names".to_string()));
        }
        if let Some(bad) = events
            .iter()
            .find(|e| e.is_empty() || e.contains(char::is_whitespace))
        {
            return Err(EslError::Protocol(format!(
                "subscribe: bad event name {bad:?}"
            )));
        }
        let reply = self
            .command(&format!("event {format} {}", events.join(" ")))
            .await?;
        match reply.reply_text() {
            Some(t) if t.starts_with("+OK") => Ok(()),
            _ => Err(reply_error(&reply)),
        }
    }

    /// Sends one command of the protocol as it is (`noevents`, `filter ...`,
    /// `nixevent ...`) and returns the reply, whatever it says.
    pub async fn command(&self, command: &str) -> Result<Message, EslError> {
        check_single_line("command", command)?;
        if command.trim().is_empty() {
            return Err(EslError::Protocol("empty command".to_string()));
        }
        self.request(command.to_string(), self.timeout).await
    }

    /// The next event, waiting for one; `None` once the connection has ended and
    /// every event that came before the end has been taken.
    pub async fn next_event(&self) -> Option<Event> {
        loop {
            // Registered before looking, so that an event (or the end) arriving
            // between the look and the wait still wakes this task.
            let ready = self.shared.events_ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(event) = self.try_next_event() {
                return Some(event);
            }
            if self.is_closed() {
                return None;
            }
            ready.await;
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_next_event(&self) -> Option<Event> {
        lock(&self.shared.events).pop_front()
    }

    /// Events dropped because the queue was full since the connection began.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped_events.load(Ordering::Relaxed)
    }

    /// Whether the connection has ended; every call then fails with [`EslError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The timeout of each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Says `exit` to the server, waits (at most the timeout) for it to agree,
    /// and closes the connection.
    pub async fn close(&self) {
        if let Err(e) = self.request("exit".to_string(), self.timeout).await {
            tracing::debug!(error = %e, "event socket: exit not answered");
        }
        self.shared.close("closed by the client");
    }

    /// Queues `command` and waits for its reply.
    async fn request(&self, command: String, timeout: Duration) -> Result<Message, EslError> {
        let mut bytes = command.into_bytes();
        bytes.extend_from_slice(b"\n\n");
        let reply = self.shared.enqueue(bytes)?;
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(message)) => Ok(message),
            // The waiter was dropped: the connection ended before the reply.
            Ok(Err(_)) => Err(EslError::Closed(self.shared.addr.clone())),
            Err(_) => Err(EslError::Timeout(self.shared.addr.clone(), timeout)),
        }
    }
}

impl std::fmt::Debug for EslClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EslClient")
            .field("addr", &self.shared.addr)
            .field("timeout", &self.timeout)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Drop for EslClient {
    fn drop(&mut self) {
        self.shared.close("client dropped");
    }
}

/// What the client, the reader and the writer share.
struct Shared {
    addr: String,
    conn: Mutex<ConnState>,
    /// Set once, under `conn`'s lock; read without it.
    closed: AtomicBool,
    events: Mutex<VecDeque<Event>>,
    event_capacity: usize,
    events_ready: Notify,
    dropped_events: AtomicU64,
    /// Turns true when the connection closes, to stop both tasks.
    shutdown: watch::Sender<bool>,
}

struct ConnState {
    /// Waiters for replies, oldest first: the order the commands were written in.
    pending: VecDeque<oneshot::Sender<Message>>,
    /// Commands for the writer task; `None` once closed.
    writer: Option<mpsc::UnboundedSender<Vec<u8>>>,
}

impl Shared {
    /// Queues a command for writing and a waiter for its reply, both under one
    /// lock so that waiters are in the order of the socket.
    fn enqueue(&self, bytes: Vec<u8>) -> Result<oneshot::Receiver<Message>, EslError> {
        let mut conn = lock(&self.conn);
        let closed = || EslError::Closed(self.addr.clone());
        let writer = conn.writer.as_ref().ok_or_else(closed)?;
        writer.send(bytes).map_err(|_| closed())?;
        let (tx, rx) = oneshot::channel();
        conn.pending.push_back(tx);
        Ok(rx)
    }

    /// Hands a reply to the oldest waiter.
    fn deliver_reply(&self, reply: Message) {
        let waiter = lock(&self.conn).pending.pop_front();
        match waiter {
            // A send error means the call gave up (timeout): the reply is theirs to lose.
            Some(waiter) => {
                if waiter.send(reply).is_err() {
                    tracing::debug!(addr = %self.addr, "event socket: reply after its call gave up");
                }
            }
            None => tracing::warn!(
                addr = %self.addr,
                reply = ?reply.reply_text(),
                "event socket: reply to no command, ignored"
            ),
        }
    }

    fn push_event(&self, event: Event) {
        {
            let mut events = lock(&self.events);
            if events.len() >= self.event_capacity {
                events.pop_front();
                let dropped = self.dropped_events.fetch_add(1, Ordering::Relaxed) + 1;
                // At the 1st, 2nd, 4th, 8th... drop: a stalled consumer must not flood the log.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        addr = %self.addr,
                        dropped,
                        capacity = self.event_capacity,
                        "event socket: event queue full, dropped the oldest event"
                    );
                }
            }
            events.push_back(event);
        }
        self.events_ready.notify_waiters();
    }

    /// Ends the connection: waiting calls get [`EslError::Closed`] (their
    /// senders are dropped), new calls are refused, both tasks stop, event
    /// readers get `None` once the queue is empty. Idempotent.
    fn close(&self, reason: &str) {
        let pending = {
            let mut conn = lock(&self.conn);
            if self.closed.swap(true, Ordering::SeqCst) {
                return;
            }
            conn.writer = None;
            std::mem::take(&mut conn.pending)
        };
        tracing::debug!(addr = %self.addr, reason, waiting = pending.len(), "event socket: connection closed");
        drop(pending);
        self.shutdown.send_replace(true);
        self.events_ready.notify_waiters();
    }
}

/// Connects, waits for `auth/request`, authenticates with `login` (the `auth` or
/// `userauth` command). Returns the stream and any bytes already read past the
/// auth reply.
async fn handshake(addr: &str, login: &str) -> Result<(TcpStream, Vec<u8>), EslError> {
    let io = |source| EslError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    // Commands are small and each waits for its reply: no point in Nagle's delay.
    stream.set_nodelay(true).map_err(io)?;
    let mut buf = Vec::with_capacity(4096);

    let greeting = read_message(&mut stream, &mut buf, addr).await?;
    match greeting.content_type() {
        Some("auth/request") => {}
        // Sent instead of auth/request when the client's address is not in the ACL.
        Some("text/rude-rejection") => {
            let text = greeting.body_text().unwrap_or_default().trim().to_string();
            return Err(EslError::Protocol(format!(
                "{addr} rejected the connection: {text}"
            )));
        }
        Some("text/disconnect-notice") => return Err(EslError::Closed(addr.to_string())),
        other => {
            return Err(EslError::Protocol(format!(
                "{addr} greeted with {other:?}, not auth/request"
            )))
        }
    }

    stream
        .write_all(format!("{login}\n\n").as_bytes())
        .await
        .map_err(io)?;
    let reply = read_message(&mut stream, &mut buf, addr).await?;
    match reply.reply_text() {
        Some(t) if t.starts_with("+OK") => Ok((stream, buf)),
        Some(t) if t.starts_with("-ERR") => Err(EslError::AuthFailed(addr.to_string())),
        _ => Err(EslError::Protocol(format!(
            "{addr} answered auth with {:?} {:?}",
            reply.content_type(),
            reply.reply_text()
        ))),
    }
}

/// Reads until one whole message is in `buf`, and takes it.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    addr: &str,
) -> Result<Message, EslError> {
    loop {
        if let Some(message) = parse_message(buf)? {
            return Ok(message);
        }
        buf.reserve(4096);
        let read = stream.read_buf(buf).await.map_err(|source| EslError::Io {
            addr: addr.to_string(),
            source,
        })?;
        if read == 0 {
            return Err(EslError::Closed(addr.to_string()));
        }
    }
}

async fn read_loop(shared: Arc<Shared>, mut half: OwnedReadHalf, mut buf: Vec<u8>) {
    let mut shutdown = shared.shutdown.subscribe();
    let reason = 'conn: loop {
        loop {
            match parse_message(&mut buf) {
                Ok(Some(message)) => {
                    if let Some(reason) = dispatch(&shared, message) {
                        break 'conn reason;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(addr = %shared.addr, error = %e, "event socket: bad stream, closing");
                    break 'conn e.to_string();
                }
            }
        }
        buf.reserve(8192);
        tokio::select! {
            read = half.read_buf(&mut buf) => match read {
                Ok(0) => break "end of stream".to_string(),
                Ok(_) => {}
                Err(e) => break format!("read failed: {e}"),
            },
            _ = shutdown.wait_for(|&closed| closed) => break "closed".to_string(),
        }
    };
    shared.close(&reason);
}

/// Routes one message; returns why to stop reading, if it ends the connection.
fn dispatch(shared: &Shared, message: Message) -> Option<String> {
    match message.content_type() {
        Some("command/reply" | "api/response") => shared.deliver_reply(message),
        Some(kind @ ("text/event-plain" | "text/event-json")) => {
            let body = message.body().unwrap_or_default();
            let event = if kind == "text/event-plain" {
                Event::from_plain(body)
            } else {
                Event::from_json(body)
            };
            match event {
                Ok(event) => shared.push_event(event),
                // The framing is intact, so one bad event need not end the connection.
                Err(e) => {
                    tracing::warn!(addr = %shared.addr, error = %e, "event socket: undecodable event dropped")
                }
            }
        }
        Some("text/disconnect-notice" | "text/rude-rejection") => {
            let text = message.body_text().unwrap_or_default().trim().to_string();
            tracing::info!(addr = %shared.addr, notice = %text, "event socket: server disconnects");
            return Some(format!("server disconnects: {text}"));
        }
        other => {
            tracing::debug!(addr = %shared.addr, content_type = ?other, "event socket: message ignored")
        }
    }
    None
}

async fn write_loop(
    shared: Arc<Shared>,
    mut half: OwnedWriteHalf,
    mut commands: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let bytes = tokio::select! {
            bytes = commands.recv() => match bytes {
                Some(bytes) => bytes,
                None => break,
            },
            _ = shutdown.wait_for(|&closed| closed) => break,
        };
        tokio::select! {
            written = half.write_all(&bytes) => if let Err(e) = written {
                tracing::warn!(addr = %shared.addr, error = %e, "event socket: write failed, closing");
                shared.close(&format!("write failed: {e}"));
                break;
            },
            // The peer stopped reading; closing must not wait for it.
            _ = shutdown.wait_for(|&closed| closed) => break,
        }
    }
    // Dropping the half shuts down our direction of the socket.
}

/// Refuses text that would end the command early and start another one.
fn check_single_line(what: &str, text: &str) -> Result<(), EslError> {
    if text.contains(['\n', '\r']) {
        return Err(EslError::Protocol(format!("{what} contains a line break")));
    }
    Ok(())
}

/// The error a refusing `command/reply` stands for.
fn reply_error(reply: &Message) -> EslError {
    match reply.reply_text() {
        Some(t) if t.starts_with('-') => EslError::Command(t.to_string()),
        Some(t) => EslError::Protocol(format!("unexpected reply {t:?}")),
        None => EslError::Protocol("reply without Reply-Text".to_string()),
    }
}

fn unexpected_reply(what: &str, content_type: Option<&str>) -> EslError {
    EslError::Protocol(format!("{what}: unexpected reply of type {content_type:?}"))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; recover the data rather than
    // turn one panic into many.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
