//! Moves the edges' call records into the platform database, exactly once.
//!
//! Kamailio's acc module writes one record per call to spool files on the
//! edge's host (db_flatstore, `edge_cdr_<rank>.log`); the shipper reads the
//! files Kamailio no longer writes to and stores their records in
//! `sipstack_edge_cdr`. A database outage delays records and loses none.
//!
//! - [`record`]: a spool line and the row it becomes;
//! - [`Shipper`]: the shipping cycle (see [`shipper`] for why a file is read
//!   only when it is);
//! - [`Store`] / [`PgStore`] and [`Rotator`] / [`RpcRotator`]: the database and
//!   Kamailio's `flatstore.k_rotate`, behind traits;
//! - [`run`] and [`ship_once`]: the shipper with the real database and edge.

use std::future::Future;
use std::time::Duration;

use sipstack_edgerpc::EdgeRpc;

mod error;
pub mod record;
mod rotate;
pub mod shipper;
mod store;

pub use error::{RotateError, ShipError, StoreError};
pub use record::{parse_batch, parse_line, parse_record, EdgeCdr, RecordError};
pub use rotate::{Rotator, RpcRotator, ROTATE_METHOD};
pub use shipper::{
    CycleReport, ShippedFile, Shipper, ShipperSettings, SpoolFile, DEFAULT_GRACE,
    DEFAULT_MIN_ROTATE_INTERVAL, REJECTED_FILE,
};
pub use store::{PgStore, Store, CONNECT_TIMEOUT, INSERT_TIMEOUT};

/// How long the shipper waits between cycles by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(2000);

/// A shipper with its database and edge.
#[derive(Clone)]
pub struct ShipperConfig {
    pub settings: ShipperSettings,
    /// A libpq-style URL or key=value string.
    pub db_url: String,
    /// The edge's JSON-RPC endpoint, e.g. `http://127.0.0.1:5071/RPC`; not
    /// needed when Kamailio is stopped.
    pub rpc_url: Option<String>,
    pub rpc_token: Option<String>,
    /// The pause between cycles of [`run`].
    pub interval: Duration,
}

impl std::fmt::Debug for ShipperConfig {
    // the database URL and the token are credentials: never in logs
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShipperConfig")
            .field("settings", &self.settings)
            .field("db_url", &"<set>")
            .field("rpc_url", &self.rpc_url)
            .field("rpc_token", &self.rpc_token.as_ref().map(|_| "<set>"))
            .field("interval", &self.interval)
            .finish()
    }
}

impl ShipperConfig {
    /// A configuration with the default times and no RPC endpoint.
    pub fn new(settings: ShipperSettings, db_url: impl Into<String>) -> Self {
        Self {
            settings,
            db_url: db_url.into(),
            rpc_url: None,
            rpc_token: None,
            interval: DEFAULT_INTERVAL,
        }
    }

    /// Talks to the edge at `url` with `token` (none if empty).
    pub fn with_rpc(mut self, url: impl Into<String>, token: Option<String>) -> Self {
        self.rpc_url = Some(url.into());
        self.rpc_token = token.filter(|t| !t.is_empty());
        self
    }

    /// The shipper of this configuration, with [`PgStore`] and [`RpcRotator`].
    pub fn shipper(&self) -> Result<Shipper<PgStore, RpcRotator>, ShipError> {
        shipper::check_spool(&self.settings.spool)?;
        if self.db_url.trim().is_empty() {
            return Err(ShipError::Config("the database URL is empty".into()));
        }
        let rotator =
            match (&self.rpc_url, self.settings.kamailio_stopped) {
                (Some(url), _) => {
                    let mut rpc = EdgeRpc::new(url.clone());
                    if let Some(token) = &self.rpc_token {
                        rpc = rpc.with_token(token.clone());
                    }
                    RpcRotator::new(rpc)
                }
                (None, true) => RpcRotator::none(),
                (None, false) => return Err(ShipError::Config(
                    "no edge RPC endpoint: a running Kamailio is told to reopen its spool files \
                     through it (only a shipper of a stopped Kamailio needs none)"
                        .into(),
                )),
            };
        Shipper::new(
            self.settings.clone(),
            PgStore::new(self.db_url.clone()),
            rotator,
        )
    }
}

/// Ships what can be shipped now and returns (see [`Shipper::drain`]): with a
/// running Kamailio everything written before the call, with a stopped one
/// everything. Fails with the first problem if there was any (all are logged);
/// the files concerned stay in the spool.
pub async fn ship_once(config: ShipperConfig) -> Result<CycleReport, ShipError> {
    let mut shipper = config.shipper()?;
    let mut report = shipper.drain().await?;
    if report.errors.is_empty() {
        Ok(report)
    } else {
        Err(report.errors.swap_remove(0))
    }
}

/// Runs cycles every `interval` until `shutdown` completes, then finishes the
/// cycle under way and drains (a last rotation, and the files it sealed).
/// Fails only on a configuration that cannot work; a cycle's problems are
/// logged and its files tried again.
pub async fn run(
    config: ShipperConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ShipError> {
    let mut shipper = config.shipper()?;
    let settings = shipper.settings();
    tracing::info!(
        spool = %settings.spool.display(),
        edge = %settings.edge,
        kamailio_stopped = settings.kamailio_stopped,
        "shipping edge call records"
    );
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = shipper.cycle().await {
            tracing::warn!(error = %e, "shipping cycle failed; trying again");
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(config.interval) => {}
        }
    }
    tracing::info!("stopping: shipping what is written so far");
    match shipper.drain().await {
        Ok(report) => tracing::info!(
            stored = report.stored(),
            rejected = report.rejected(),
            waiting = report.waiting,
            "stopped"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "the last shipping cycle failed; the files stay in the spool")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
