//! Bringing every edge's memory in step with the table.
//!
//! Kamailio reads the dispatcher table only at start and on `dispatcher.reload`,
//! and refuses a reload within `reload_delta` (5 s) of the previous one with fault
//! 500 "Ongoing reload". [`EdgeSync`] keeps, per edge, the generation of the table
//! it has confirmed loading; a change bumps the wanted generation, and one task
//! reloads every edge that is behind, so any number of changes inside one window
//! become one reload after it. A refused reload is retried, never dropped: the
//! generation is taken before the request is sent, so an edge is only counted up
//! to date by a reload that started after the change was committed. An
//! unreachable edge is retried with backoff; an edge that comes back, or that
//! restarted (its `up_since` changed), is reloaded again, so whatever it missed
//! while away is re-sent.
//!
//! Disabling a member does not wait for the window: `dispatcher.set_state d` goes
//! to every edge at once ([`EdgeSync::disable_now`]), beside the disabled flag
//! written in the table, which every later reload or restart loads.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use sipstack_edgerpc::{EdgeRpc, RpcError};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::plan::ActiveOnEdges;
use crate::SyncError;

/// Timing of [`EdgeSync`].
#[derive(Debug, Clone)]
pub struct EdgeOptions {
    /// Kamailio's `reload_delta`. After a reload this engine sent, the next one is
    /// not tried before `reload_delta` minus one second (Kamailio counts whole
    /// seconds), instead of being refused over and over.
    pub reload_delta: Duration,
    /// How soon a reload refused with "Ongoing reload" is tried again.
    pub retry_interval: Duration,
    /// First wait before trying an unreachable edge again; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How often idle edges are asked whether they restarted or came back.
    pub health_interval: Duration,
}

impl Default for EdgeOptions {
    fn default() -> Self {
        Self {
            reload_delta: Duration::from_secs(5),
            retry_interval: Duration::from_millis(100),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            health_interval: Duration::from_secs(1),
        }
    }
}

/// What is known of one edge.
#[derive(Debug, Clone)]
pub struct EdgeStatus {
    pub url: String,
    /// The newest table generation this edge confirmed loading.
    pub loaded: u64,
    /// Reloads it accepted.
    pub reloads: u64,
    /// Reloads it refused with "Ongoing reload" (each retried).
    pub refused: u64,
    /// Requests that failed otherwise (unreachable, HTTP errors).
    pub failures: u64,
    /// Restarts or reconnections noticed (each followed by a reload).
    pub resyncs: u64,
    pub reachable: bool,
    pub last_error: Option<String>,
    up_since: Option<String>,
    last_reload: Option<Instant>,
    resync: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What one edge answered to `dispatcher.set_state d`.
#[derive(Debug, Clone)]
pub struct DisableOutcome {
    pub edge: String,
    pub uri: String,
    /// `Ok(true)` disabled, `Ok(false)` the edge did not hold it (nothing to do).
    pub result: Result<bool, String>,
}

struct Shared {
    edges: Vec<EdgeRpc>,
    options: EdgeOptions,
    state: Mutex<State>,
    wake: Notify,
    progress: watch::Sender<u64>,
}

struct State {
    wanted: u64,
    edges: Vec<EdgeStatus>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn changed(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Reloads every edge after changes, coalesced, until each confirms; see the module docs.
/// The background task stops when this is dropped.
pub struct EdgeSync {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for EdgeSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EdgeSync {
    /// Starts the task (needs a Tokio runtime).
    pub fn new(edges: Vec<EdgeRpc>, options: EdgeOptions) -> Self {
        let statuses = edges
            .iter()
            .map(|e| EdgeStatus {
                url: e.url().to_string(),
                loaded: 0,
                reloads: 0,
                refused: 0,
                failures: 0,
                resyncs: 0,
                reachable: true,
                last_error: None,
                up_since: None,
                last_reload: None,
                resync: false,
                retry_at: None,
                backoff: options.min_backoff,
            })
            .collect();
        let (progress, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            edges,
            options,
            state: Mutex::new(State {
                wanted: 0,
                edges: statuses,
            }),
            wake: Notify::new(),
            progress,
        });
        let task = tokio::spawn(run(shared.clone()));
        Self { shared, task }
    }

    pub fn edges(&self) -> &[EdgeRpc] {
        &self.shared.edges
    }

    /// Records that the table changed (call it after the commit); returns the
    /// generation to wait for.
    pub fn request_reload(&self) -> u64 {
        let generation = {
            let mut state = self.shared.lock();
            state.wanted += 1;
            state.wanted
        };
        self.shared.wake.notify_one();
        generation
    }

    /// Every edge's status now.
    pub fn status(&self) -> Vec<EdgeStatus> {
        self.shared.lock().edges.clone()
    }

    /// The edges that answered their last request.
    pub fn reachable_edges(&self) -> Vec<EdgeRpc> {
        let state = self.shared.lock();
        self.shared
            .edges
            .iter()
            .zip(&state.edges)
            .filter(|(_, s)| s.reachable)
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// Waits until every edge confirmed loading `generation` (or a later one).
    pub async fn wait_loaded(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> Result<Vec<EdgeStatus>, SyncError> {
        let mut progress = self.shared.progress.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = self.status();
            if statuses.iter().all(|s| s.loaded >= generation) {
                return Ok(statuses);
            }
            let late = tokio::time::timeout_at(deadline, progress.changed()).await;
            if late.is_err() || matches!(late, Ok(Err(_))) {
                let behind = self
                    .status()
                    .into_iter()
                    .filter(|s| s.loaded < generation)
                    .map(|s| match s.last_error {
                        Some(e) => format!("{} ({e})", s.url),
                        None => s.url,
                    })
                    .collect();
                return Err(SyncError::NotConfirmed {
                    generation,
                    waited: timeout,
                    edges: behind,
                });
            }
        }
    }

    /// Tells every edge to send no new call to `uris` of set `set_id` now
    /// (`dispatcher.set_state d`). Calls in progress are not touched. An edge that
    /// cannot be reached is reloaded when it answers again, which loads the
    /// disabled flag from the table.
    pub async fn disable_now(&self, set_id: i32, uris: &[String]) -> Vec<DisableOutcome> {
        if uris.is_empty() {
            return Vec::new();
        }
        let results = set_disabled(&self.shared.edges, set_id, uris).await;
        let mut out = Vec::with_capacity(results.len());
        let mut missed = false;
        {
            let mut state = self.shared.lock();
            for (i, uri, r) in results {
                let result = match r {
                    Ok(()) => Ok(true),
                    Err(e) if e.is_unknown_destination() => Ok(false),
                    Err(e) => {
                        let edge = &mut state.edges[i];
                        edge.failures += 1;
                        edge.last_error = Some(e.to_string());
                        if is_unreachable(&e) {
                            edge.reachable = false;
                        }
                        edge.resync = true;
                        missed = true;
                        Err(e.to_string())
                    }
                };
                if let Err(e) = &result {
                    tracing::warn!(edge = %state.edges[i].url, %uri, error = %e, "cannot disable a member on an edge; it is reloaded when it answers");
                }
                out.push(DisableOutcome {
                    edge: state.edges[i].url.clone(),
                    uri,
                    result,
                });
            }
        }
        if missed {
            self.shared.wake.notify_one();
        }
        self.shared.changed();
        out
    }
}

/// `dispatcher.set_state d` for every destination on every edge, all at once;
/// answers by edge index.
async fn set_disabled(
    edges: &[EdgeRpc],
    set_id: i32,
    uris: &[String],
) -> Vec<(usize, String, Result<(), RpcError>)> {
    let calls = edges.iter().enumerate().flat_map(|(i, edge)| {
        uris.iter().map(move |uri| async move {
            let r = edge.dispatcher_set_state("d", i64::from(set_id), uri).await;
            (i, uri.clone(), r)
        })
    });
    join_all(calls).await
}

/// Disables `uris` of set `set_id` on `edges` now, without an [`EdgeSync`]: for a
/// one-shot sync (the local driver) that reloads the edges itself afterwards.
/// An edge that does not answer loads the disabled flag (or the deletion) from
/// the table when it starts or reloads.
pub async fn disable_on(edges: &[EdgeRpc], set_id: i32, uris: &[String]) -> Vec<DisableOutcome> {
    if uris.is_empty() {
        return Vec::new();
    }
    set_disabled(edges, set_id, uris)
        .await
        .into_iter()
        .map(|(i, uri, r)| DisableOutcome {
            edge: edges[i].url().to_string(),
            uri,
            result: match r {
                Ok(()) => Ok(true),
                Err(e) if e.is_unknown_destination() => Ok(false),
                Err(e) => Err(e.to_string()),
            },
        })
        .collect()
}

/// Destinations of `set_id` that at least one of `edges` reports active now;
/// edges that do not answer are left out.
pub async fn active_on_edges(edges: &[EdgeRpc], set_id: i32) -> ActiveOnEdges {
    let lists = join_all(edges.iter().map(EdgeRpc::dispatcher_list)).await;
    lists
        .into_iter()
        .filter_map(Result::ok)
        .flatten()
        .filter(|d| d.set_id == i64::from(set_id) && d.is_active())
        .map(|d| d.uri)
        .collect()
}

fn is_unreachable(e: &RpcError) -> bool {
    matches!(e, RpcError::Unreachable { .. } | RpcError::Http { .. })
}

async fn run(shared: Arc<Shared>) {
    let options = shared.options.clone();
    let mut next_health = Instant::now() + options.health_interval;
    loop {
        let now = Instant::now();
        let (wanted, due): (u64, Vec<usize>) = {
            let state = shared.lock();
            let due = state
                .edges
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    (e.loaded < state.wanted || e.resync) && e.retry_at.is_none_or(|t| t <= now)
                })
                .map(|(i, _)| i)
                .collect();
            (state.wanted, due)
        };
        if !due.is_empty() {
            // the generation is read before the requests go out: a reload that
            // succeeds reads a table that holds at least that generation
            let results = join_all(due.iter().map(|&i| {
                let edge = shared.edges[i].clone();
                async move { (i, edge.call("dispatcher.reload", &[]).await) }
            }))
            .await;
            let now = Instant::now();
            {
                let mut state = shared.lock();
                for (i, result) in results {
                    let edge = &mut state.edges[i];
                    match result {
                        Ok(_) => {
                            edge.loaded = edge.loaded.max(wanted);
                            edge.reloads += 1;
                            edge.last_reload = Some(now);
                            edge.resync = false;
                            edge.reachable = true;
                            edge.retry_at = None;
                            edge.backoff = options.min_backoff;
                            edge.last_error = None;
                            tracing::debug!(edge = %edge.url, generation = wanted, "dispatcher reloaded");
                        }
                        Err(e) if e.is_ongoing_reload() => {
                            edge.refused += 1;
                            edge.reachable = true;
                            // someone else's reload, or ours: Kamailio counts whole seconds
                            let window_ends = edge.last_reload.map(|t| {
                                t + options.reload_delta.saturating_sub(Duration::from_secs(1))
                            });
                            let soonest = now + options.retry_interval;
                            edge.retry_at = Some(window_ends.map_or(soonest, |w| w.max(soonest)));
                        }
                        Err(e) => {
                            edge.failures += 1;
                            edge.reachable = !is_unreachable(&e);
                            edge.retry_at = Some(now + edge.backoff);
                            edge.backoff = (edge.backoff * 2).min(options.max_backoff);
                            tracing::warn!(edge = %edge.url, error = %e, "dispatcher reload failed; retrying");
                            edge.last_error = Some(e.to_string());
                        }
                    }
                }
            }
            shared.changed();
            continue;
        }
        if now >= next_health {
            health_check(&shared).await;
            next_health = Instant::now() + options.health_interval;
            continue;
        }
        let until = {
            let state = shared.lock();
            state
                .edges
                .iter()
                .filter(|e| e.loaded < state.wanted || e.resync)
                .filter_map(|e| e.retry_at)
                .fold(next_health, Instant::min)
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Asks every edge when it started: one that restarted or came back is reloaded
/// (its memory may be older than the table).
async fn health_check(shared: &Shared) {
    let answers = join_all(shared.edges.iter().map(|e| e.call("core.uptime", &[]))).await;
    let mut wake = false;
    {
        let mut state = shared.lock();
        for (edge, answer) in state.edges.iter_mut().zip(answers) {
            match answer {
                Ok(v) => {
                    let up_since = v
                        .get("up_since")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    let restarted =
                        edge.up_since.is_some() && up_since.is_some() && edge.up_since != up_since;
                    if restarted || !edge.reachable {
                        tracing::info!(edge = %edge.url, restarted, "edge back; re-sending the dispatcher state");
                        edge.resync = true;
                        edge.resyncs += 1;
                        edge.retry_at = None;
                        edge.backoff = shared.options.min_backoff;
                        wake = true;
                    }
                    edge.reachable = true;
                    edge.up_since = up_since;
                }
                Err(e) => {
                    if edge.reachable {
                        tracing::warn!(edge = %edge.url, error = %e, "edge unreachable");
                    }
                    edge.reachable = false;
                    edge.last_error = Some(e.to_string());
                }
            }
        }
    }
    if wake {
        shared.changed();
    }
}
