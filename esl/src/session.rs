//! [`EslSession`]: a connection made when first needed and made again after it
//! broke (a node restart, a connection the server closed), with the event
//! subscriptions it was asked for.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{EslClient, EslOptions};
use crate::{EslError, Event, EventFormat};

/// Least time between two connection attempts, when none is given.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Most time between two connection attempts, when none is given.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs commands on one FreeSWITCH over a connection it keeps, reconnecting
/// when that connection broke.
///
/// * It connects on the first call, not in [`new`](Self::new).
/// * A call that fails because the connection is gone ([`EslError::is_connection_lost`])
///   is sent once more on a new connection. A command that reached the server
///   before the connection broke may so run twice: retry only what may.
///   Timeouts are not retried.
/// * Connection attempts are at least the minimum backoff apart; after each
///   failed attempt in a row the wait doubles, up to the maximum.
/// * Every new connection first subscribes again to the events of every
///   successful [`subscribe`](Self::subscribe). Events that came while no
///   connection was up are lost.
pub struct EslSession {
    addr: String,
    password: String,
    options: EslOptions,
    min_backoff: Duration,
    max_backoff: Duration,
    /// The connection in use, if any (maybe closed).
    current: Mutex<Option<Arc<EslClient>>>,
    /// Held while connecting, so that one task connects and the others wait for it.
    connecting: tokio::sync::Mutex<Attempts>,
    subscriptions: Mutex<Vec<(EventFormat, Vec<String>)>>,
}

#[derive(Debug, Default)]
struct Attempts {
    last: Option<Instant>,
    failures: u32,
}

impl EslSession {
    /// A session with `addr` (`host:port`) and `password`; `timeout` bounds each
    /// connection attempt and each call.
    pub fn new(addr: impl Into<String>, password: impl Into<String>, timeout: Duration) -> Self {
        EslSession {
            addr: addr.into(),
            password: password.into(),
            options: EslOptions {
                timeout,
                ..EslOptions::default()
            },
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Attempts::default()),
            subscriptions: Mutex::new(Vec::new()),
        }
    }

    /// Logs in as the directory user `user` (`user@domain`) instead of with the
    /// socket's own password.
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.options.user = Some(user.into());
        self
    }

    /// The same with all the connection's options.
    pub fn with_options(mut self, options: EslOptions) -> Self {
        self.options = options;
        self
    }

    /// The same with other bounds of the wait between connection attempts.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// The server's address.
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// Whether a connection is up now (no attempt is made).
    pub fn is_connected(&self) -> bool {
        self.open_client().is_some()
    }

    /// [`EslClient::api`] on the session's connection, retried once on a new one.
    pub async fn api(&self, command: &str) -> Result<String, EslError> {
        self.retrying(|c| async move { c.api(command).await }).await
    }

    /// [`EslClient::bgapi`] on the session's connection, retried once on a new one.
    /// The job's event comes on the connection the job was started on.
    pub async fn bgapi(&self, command: &str) -> Result<String, EslError> {
        self.retrying(|c| async move { c.bgapi(command).await })
            .await
    }

    /// [`EslClient::subscribe`] now, and again on every later connection. On an
    /// error the subscription is not kept.
    pub async fn subscribe(&self, format: EventFormat, events: &[&str]) -> Result<(), EslError> {
        let entry = (
            format,
            events.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        );
        // Kept before subscribing: a reconnect by another task in between then
        // subscribes the new connection too.
        let added = {
            let mut subs = lock(&self.subscriptions);
            let added = !subs.contains(&entry);
            if added {
                subs.push(entry.clone());
            }
            added
        };
        let result = async {
            let (client, fresh) = self.connection().await?;
            // A new connection subscribed to everything kept, this one included.
            if fresh {
                return Ok(());
            }
            match client.subscribe(format, events).await {
                Err(e) if e.is_connection_lost() => {
                    tracing::debug!(addr = %self.addr, error = %e, "event socket: connection lost, trying once more");
                    self.connection().await.map(|_| ())
                }
                other => other,
            }
        }
        .await;
        if result.is_err() && added {
            lock(&self.subscriptions).retain(|s| s != &entry);
        }
        result
    }

    /// The next event of the subscriptions, connecting (again) as needed. Fails
    /// only when a connection attempt fails; calling again tries again, after the
    /// backoff.
    pub async fn next_event(&self) -> Result<Event, EslError> {
        loop {
            let client = self.client().await?;
            if let Some(event) = client.next_event().await {
                return Ok(event);
            }
            tracing::debug!(addr = %self.addr, "event socket: connection ended, connecting again for events");
        }
    }

    /// The connection in use, made if there is none or it is closed.
    pub async fn client(&self) -> Result<Arc<EslClient>, EslError> {
        self.connection().await.map(|(client, _)| client)
    }

    /// The connection in use, and whether it was made just now.
    async fn connection(&self) -> Result<(Arc<EslClient>, bool), EslError> {
        if let Some(client) = self.open_client() {
            return Ok((client, false));
        }
        let mut attempts = self.connecting.lock().await;
        // Another task may have connected while this one waited for the lock.
        if let Some(client) = self.open_client() {
            return Ok((client, false));
        }
        if let Some(last) = attempts.last {
            let wait = self
                .min_backoff
                .saturating_mul(2u32.saturating_pow(attempts.failures))
                .min(self.max_backoff);
            tokio::time::sleep_until(last + wait).await;
        }
        attempts.last = Some(Instant::now());
        match self.connect().await {
            Ok(client) => {
                attempts.failures = 0;
                *lock(&self.current) = Some(client.clone());
                Ok((client, true))
            }
            Err(e) => {
                attempts.failures = attempts.failures.saturating_add(1);
                tracing::warn!(addr = %self.addr, failures = attempts.failures, error = %e, "event socket: connecting failed");
                Err(e)
            }
        }
    }

    /// Drops the connection; the next call makes a new one.
    pub fn disconnect(&self) {
        lock(&self.current).take();
    }

    async fn connect(&self) -> Result<Arc<EslClient>, EslError> {
        let client =
            EslClient::connect_with(&self.addr, &self.password, self.options.clone()).await?;
        let subscriptions = lock(&self.subscriptions).clone();
        for (format, events) in &subscriptions {
            let events: Vec<&str> = events.iter().map(String::as_str).collect();
            client.subscribe(*format, &events).await?;
        }
        if !subscriptions.is_empty() {
            tracing::debug!(addr = %self.addr, count = subscriptions.len(), "event socket: subscribed again");
        }
        Ok(Arc::new(client))
    }

    fn open_client(&self) -> Option<Arc<EslClient>> {
        lock(&self.current)
            .as_ref()
            .filter(|c| !c.is_closed())
            .cloned()
    }

    async fn retrying<T, F, Fut>(&self, call: F) -> Result<T, EslError>
    where
        F: Fn(Arc<EslClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, EslError>>,
    {
        let client = self.client().await?;
        match call(client).await {
            Err(e) if e.is_connection_lost() => {
                tracing::debug!(addr = %self.addr, error = %e, "event socket: connection lost, trying once more");
                call(self.client().await?).await
            }
            other => other,
        }
    }
}

impl std::fmt::Debug for EslSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the password.
        f.debug_struct("EslSession")
            .field("addr", &self.addr)
            .field("options", &self.options)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
