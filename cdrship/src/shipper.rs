//! The shipping cycle: which spool files are read, when, and what happens to them.
//!
//! Kamailio appends to `edge_cdr_<rank>.log`, one file per process. A file is
//! read only once nothing can write to it any more ("sealed"):
//!
//! 1. the shipper renames a non-empty active file to
//!    `edge_cdr_<rank>.log.<unix-millis>.ship` (the process keeps writing to it:
//!    it holds the file open);
//! 2. it calls `flatstore.k_rotate`; every process then reopens its file by
//!    name, afresh, before its next write;
//! 3. once the RPC succeeded the renamed file is sealed; it is read `grace`
//!    later, which covers a write that was under way while the RPC ran.
//!
//! A sealed file is stored in one transaction, its bad lines go to
//! `rejected.log`, and then it is deleted. A failure at any step leaves the file
//! for the next cycle; the database skips records it already holds, so a file
//! stored twice (after a crash between commit and delete) is stored once.
//!
//! Kamailio compares the rotation time with its own in whole seconds, so two
//! rotations less than a second apart may count as one: the second one would
//! then seal files Kamailio still writes to. Rotations are therefore at least
//! [`DEFAULT_MIN_ROTATE_INTERVAL`] apart, counting from the shipper's start too
//! (the previous shipper may have rotated just before it exited).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;

use crate::record::{self, RejectedLine, EDGE_MAX_LEN};
use crate::{Rotator, ShipError, Store};

/// How long after a successful rotation a sealed file is read.
pub const DEFAULT_GRACE: Duration = Duration::from_millis(1000);

/// The shortest time between two rotations (see the module documentation).
pub const DEFAULT_MIN_ROTATE_INTERVAL: Duration = Duration::from_millis(1200);

/// Where the lines that are not records go, in the spool directory.
pub const REJECTED_FILE: &str = "rejected.log";

/// Kamailio's files: `<table>_<rank>.log`, the table being `edge_cdr`.
const ACTIVE_PREFIX: &str = "edge_cdr_";
const ACTIVE_SUFFIX: &str = ".log";
const BATCH_SUFFIX: &str = ".ship";

/// A file of the spool the shipper deals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolFile {
    /// `edge_cdr_<rank>.log`: Kamailio writes to it.
    Active { rank: i64 },
    /// `edge_cdr_<rank>.log.<millis>.ship`: renamed by the shipper.
    Batch { rank: i64, millis: u64 },
}

impl SpoolFile {
    /// What a file name is; `None` for files the shipper leaves alone.
    pub fn classify(name: &str) -> Option<SpoolFile> {
        let rest = name.strip_prefix(ACTIVE_PREFIX)?;
        let (rank, rest) = rest.split_once(ACTIVE_SUFFIX)?;
        let digits = rank.strip_prefix('-').unwrap_or(rank);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let rank: i64 = rank.parse().ok()?;
        if rest.is_empty() {
            return Some(SpoolFile::Active { rank });
        }
        let millis = rest.strip_prefix('.')?.strip_suffix(BATCH_SUFFIX)?;
        if millis.is_empty() || !millis.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(SpoolFile::Batch {
            rank,
            millis: millis.parse().ok()?,
        })
    }

    /// The order batches are shipped in: oldest first.
    fn batch_order(name: &str) -> (u64, i64) {
        match SpoolFile::classify(name) {
            Some(SpoolFile::Batch { rank, millis }) => (millis, rank),
            _ => (u64::MAX, 0),
        }
    }
}

/// What the shipper does and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipperSettings {
    /// The directory Kamailio's db_flatstore writes.
    pub spool: PathBuf,
    /// The SipEdge whose records these are (the `edge` column).
    pub edge: String,
    /// How long after a rotation a sealed file is read.
    pub grace: Duration,
    /// The shortest time between two rotations, and from start-up to the first.
    pub min_rotate_interval: Duration,
    /// Kamailio does not run: every file is sealed at once, nothing is rotated.
    pub kamailio_stopped: bool,
}

impl ShipperSettings {
    pub fn new(spool: impl Into<PathBuf>, edge: impl Into<String>) -> Self {
        Self {
            spool: spool.into(),
            edge: edge.into(),
            grace: DEFAULT_GRACE,
            min_rotate_interval: DEFAULT_MIN_ROTATE_INTERVAL,
            kamailio_stopped: false,
        }
    }

    /// Refuses an edge name the table cannot hold.
    pub fn validate(&self) -> Result<(), ShipError> {
        let len = self.edge.chars().count();
        if len == 0 {
            return Err(ShipError::Config(
                "the edge name is empty; give the SipEdge's name".into(),
            ));
        }
        if len > EDGE_MAX_LEN {
            return Err(ShipError::Config(format!(
                "the edge name is {len} characters long; at most {EDGE_MAX_LEN} fit"
            )));
        }
        if self.edge.chars().any(char::is_control) {
            return Err(ShipError::Config(
                "the edge name contains control characters".into(),
            ));
        }
        Ok(())
    }
}

/// One shipped file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedFile {
    pub file: PathBuf,
    /// Good records in the file.
    pub records: usize,
    /// Of those, the ones the database did not hold yet.
    pub stored: usize,
    /// Lines appended to `rejected.log`.
    pub rejected: usize,
}

/// What a cycle did.
#[derive(Debug, Default)]
pub struct CycleReport {
    /// The files stored and deleted, oldest first.
    pub shipped: Vec<ShippedFile>,
    /// Active files renamed into batches.
    pub renamed: usize,
    /// A rotation succeeded (and sealed the renamed files).
    pub rotated: bool,
    /// Batches left for a later cycle: not sealed yet, in their grace time, or
    /// not stored because of an error.
    pub waiting: usize,
    /// What went wrong; each was logged, and its files are kept for a later cycle.
    pub errors: Vec<ShipError>,
}

impl CycleReport {
    /// Records stored by this cycle.
    pub fn stored(&self) -> usize {
        self.shipped.iter().map(|f| f.stored).sum()
    }

    /// Lines rejected by this cycle.
    pub fn rejected(&self) -> usize {
        self.shipped.iter().map(|f| f.rejected).sum()
    }

    /// Nothing went wrong.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A batch file and when it may be read: `None` until a rotation sealed it.
#[derive(Debug, Clone, Copy)]
struct BatchState {
    ready_at: Option<Instant>,
}

/// Moves the records of one spool directory into a [`Store`].
#[derive(Debug)]
pub struct Shipper<S, R> {
    settings: ShipperSettings,
    store: S,
    rotator: R,
    batches: BTreeMap<String, BatchState>,
    /// The last rotation attempt; starts at start-up (see the module documentation).
    last_rotate: Instant,
    /// The time stamp of the last batch name given.
    last_millis: u64,
}

impl<S: Store + Send, R: Rotator + Send> Shipper<S, R> {
    pub fn new(settings: ShipperSettings, store: S, rotator: R) -> Result<Self, ShipError> {
        settings.validate()?;
        Ok(Self {
            settings,
            store,
            rotator,
            batches: BTreeMap::new(),
            last_rotate: Instant::now(),
            last_millis: 0,
        })
    }

    pub fn settings(&self) -> &ShipperSettings {
        &self.settings
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    pub fn rotator(&self) -> &R {
        &self.rotator
    }

    pub fn rotator_mut(&mut self) -> &mut R {
        &mut self.rotator
    }

    /// One cycle: ships the sealed batches whose grace time is over, then
    /// renames the non-empty active files and rotates (when a rotation is due
    /// and there is something to seal). With `kamailio_stopped`, every file is
    /// sealed at once and shipped in this same cycle.
    ///
    /// Fails only when the spool directory cannot be read; any other problem is
    /// in the report, and its files wait for the next cycle.
    pub async fn cycle(&mut self) -> Result<CycleReport, ShipError> {
        let mut report = CycleReport::default();
        let listing = self.scan().await?;
        if self.settings.kamailio_stopped {
            self.rename_active(&listing.active, &mut report).await;
            let now = Instant::now();
            for state in self.batches.values_mut() {
                state.ready_at = Some(now);
            }
            self.ship_ready(&mut report).await;
        } else {
            self.ship_ready(&mut report).await;
            if self.rotate_wait().is_zero() {
                // listed again: files may have been written while the others shipped
                match self.scan().await {
                    Ok(listing) => self.seal(&listing.active, &mut report).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list the spool; rotating next cycle");
                        report.errors.push(e);
                    }
                }
            }
        }
        report.waiting = self.batches.len();
        Ok(report)
    }

    /// Ships all that can be shipped now, for a shipper about to stop: waits
    /// until a rotation is due, runs a cycle (which rotates), waits out the
    /// grace time and ships what that rotation sealed. Records written after
    /// the rotation stay in the active files for the next shipper.
    pub async fn drain(&mut self) -> Result<CycleReport, ShipError> {
        if self.settings.kamailio_stopped {
            return self.cycle().await;
        }
        tokio::time::sleep(self.rotate_wait()).await;
        let mut report = self.cycle().await?;
        let latest = self.batches.values().filter_map(|b| b.ready_at).max();
        if let Some(latest) = latest {
            if !report.errors.iter().any(ShipError::is_store) {
                tokio::time::sleep(latest.saturating_duration_since(Instant::now())).await;
                match self.scan().await {
                    Ok(_) => self.ship_ready(&mut report).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot list the spool");
                        report.errors.push(e);
                    }
                }
            }
        }
        report.waiting = self.batches.len();
        Ok(report)
    }

    /// How long until a rotation is due.
    fn rotate_wait(&self) -> Duration {
        self.settings
            .min_rotate_interval
            .saturating_sub(self.last_rotate.elapsed())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.settings.spool.join(name)
    }

    /// Lists the spool: the non-empty active files, and the batches (which
    /// updates what the shipper knows of them: a batch it did not know, e.g. one
    /// left by an earlier run, is unsealed; a batch that is gone is forgotten).
    async fn scan(&mut self) -> Result<Listing, ShipError> {
        let spool = self.settings.spool.clone();
        let mut dir = tokio::fs::read_dir(&spool)
            .await
            .map_err(ShipError::io("cannot read the spool directory", &spool))?;
        let mut active = Vec::new();
        let mut batches = Vec::new();
        loop {
            let entry = match dir.next_entry().await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(e) => return Err(ShipError::io("cannot read the spool directory", &spool)(e)),
            };
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            match SpoolFile::classify(&name) {
                Some(SpoolFile::Active { .. }) => match entry.metadata().await {
                    Ok(meta) if meta.is_file() && meta.len() > 0 => active.push(name),
                    Ok(_) => {}
                    // gone since the listing
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(ShipError::io("cannot read", spool.join(&name))(e));
                    }
                },
                Some(SpoolFile::Batch { .. }) => batches.push(name),
                None => {}
            }
        }
        self.batches.retain(|name, _| batches.contains(name));
        for name in batches {
            self.batches.entry(name).or_insert_with_key(|name| {
                tracing::info!(file = %spool.join(name).display(), "found a batch of an earlier run; it is shipped after the next rotation");
                BatchState { ready_at: None }
            });
        }
        active.sort();
        Ok(Listing { active })
    }

    /// Renames the active files into batches (unsealed).
    async fn rename_active(&mut self, active: &[String], report: &mut CycleReport) {
        for name in active {
            match self.rename(name).await {
                Ok(Some(batch)) => {
                    tracing::debug!(from = %name, to = %batch, "renamed a spool file for shipping");
                    report.renamed += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot rename a spool file; trying again next cycle");
                    report.errors.push(e);
                }
            }
        }
    }

    /// `edge_cdr_<rank>.log` → `edge_cdr_<rank>.log.<millis>.ship`, a name no
    /// other batch has. `None` if the file is gone.
    async fn rename(&mut self, name: &str) -> Result<Option<String>, ShipError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        // never a name used before, even of a batch shipped since: names tell batches apart in logs
        let mut millis = now.max(self.last_millis.saturating_add(1));
        let target = loop {
            let target = format!("{name}.{millis}{BATCH_SUFFIX}");
            let taken = self.batches.contains_key(&target)
                || tokio::fs::try_exists(self.path(&target))
                    .await
                    .map_err(ShipError::io("cannot check", self.path(&target)))?;
            if !taken {
                break target;
            }
            millis += 1;
        };
        match tokio::fs::rename(self.path(name), self.path(&target)).await {
            Ok(()) => {
                self.last_millis = millis;
                self.batches
                    .insert(target.clone(), BatchState { ready_at: None });
                Ok(Some(target))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ShipError::io("cannot rename", self.path(name))(e)),
        }
    }

    /// Renames the active files and rotates; on success every unsealed batch
    /// (renamed now or before) is sealed.
    async fn seal(&mut self, active: &[String], report: &mut CycleReport) {
        self.rename_active(active, report).await;
        if !self.batches.values().any(|b| b.ready_at.is_none()) {
            return;
        }
        self.last_rotate = Instant::now();
        match self.rotator.rotate().await {
            Ok(()) => {
                let ready_at = Instant::now() + self.settings.grace;
                for state in self.batches.values_mut() {
                    if state.ready_at.is_none() {
                        state.ready_at = Some(ready_at);
                    }
                }
                report.rotated = true;
            }
            Err(e) => {
                let e = ShipError::Rotate(e);
                tracing::warn!(error = %e, "the renamed spool files stay unsealed until a rotation succeeds");
                report.errors.push(e);
            }
        }
    }

    /// Ships every sealed batch whose grace time is over, oldest first. Stops at
    /// the first database failure: the others would fail the same way.
    async fn ship_ready(&mut self, report: &mut CycleReport) {
        let now = Instant::now();
        let mut ready: Vec<String> = self
            .batches
            .iter()
            .filter(|(_, b)| b.ready_at.is_some_and(|t| t <= now))
            .map(|(name, _)| name.clone())
            .collect();
        ready.sort_by_key(|name| SpoolFile::batch_order(name));
        for name in ready {
            match self.ship_file(&name).await {
                Ok(Some(shipped)) => {
                    self.batches.remove(&name);
                    tracing::info!(
                        file = %shipped.file.display(),
                        stored = shipped.stored,
                        already_stored = shipped.records - shipped.stored,
                        rejected = shipped.rejected,
                        "shipped a spool file"
                    );
                    report.shipped.push(shipped);
                }
                Ok(None) => {
                    tracing::warn!(file = %self.path(&name).display(), "a sealed spool file disappeared before it was shipped");
                    self.batches.remove(&name);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the spool file is kept; shipping it again next cycle");
                    let stop = e.is_store();
                    report.errors.push(e);
                    if stop {
                        break;
                    }
                }
            }
        }
    }

    /// Stores one sealed file, appends its bad lines to `rejected.log`, deletes
    /// it. `None` if the file is gone.
    async fn ship_file(&mut self, name: &str) -> Result<Option<ShippedFile>, ShipError> {
        let path = self.path(name);
        let data = match tokio::fs::read(&path).await {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ShipError::io("cannot read", &path)(e)),
        };
        let batch = record::parse_batch(&data);
        let stored = if batch.records.is_empty() {
            0
        } else {
            self.store
                .insert(&self.settings.edge, &batch.records)
                .await
                .map_err(|source| ShipError::Store {
                    file: path.clone(),
                    source,
                })?
        };
        if !batch.rejected.is_empty() {
            self.append_rejected(&batch.rejected).await?;
            for rejected in &batch.rejected {
                tracing::warn!(
                    file = %path.display(),
                    line = rejected.line_number,
                    reason = %rejected.reason,
                    "rejected a line of a spool file; it is in {REJECTED_FILE}"
                );
            }
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ShipError::io("cannot delete the shipped file", &path)(e)),
        }
        Ok(Some(ShippedFile {
            file: path,
            records: batch.records.len(),
            stored,
            rejected: batch.rejected.len(),
        }))
    }

    /// Appends lines as they were, each with its newline, and syncs them: the
    /// batch they came from is deleted next.
    async fn append_rejected(&self, lines: &[RejectedLine]) -> Result<(), ShipError> {
        let path = self.path(REJECTED_FILE);
        let mut text = Vec::new();
        for line in lines {
            text.extend_from_slice(&line.line);
            text.push(b'\n');
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(ShipError::io("cannot open", &path))?;
        file.write_all(&text)
            .await
            .map_err(ShipError::io("cannot write", &path))?;
        file.sync_data()
            .await
            .map_err(ShipError::io("cannot write", &path))?;
        Ok(())
    }
}

struct Listing {
    /// Non-empty active files, by name.
    active: Vec<String>,
}

/// Checks that the spool exists and is a directory (before a shipper starts on it).
pub fn check_spool(spool: &Path) -> Result<(), ShipError> {
    match std::fs::metadata(spool) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(ShipError::Config(format!(
            "the spool {} is not a directory",
            spool.display()
        ))),
        Err(e) => Err(ShipError::io("cannot use the spool directory", spool)(e)),
    }
}
