//! Resident memory of the controllers' reconcile path: 50 MediaPools of 10 members
//! each reconciled against the in-memory API server of the tests (finalizer, children,
//! status, then a second pass that must write nothing), with VmRSS and VmHWM from
//! /proc/self/status printed beside the target of 64 MiB.
//!
//! `cargo run --release -p sipstack-operator --example reconcile_memory`
//!
//! The figure includes the in-memory API server, which holds every object the
//! operator wrote as JSON: a real operator process holds less.

#[path = "../tests/support/fake_api.rs"]
mod fake_api;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use sipstack_crds::{MediaPool, PgCluster, Platform, StaticMember};
use sipstack_operator::controller::context::{Context, Timing};
use sipstack_operator::controller::database::{PlatformDatabase, PlatformDatabaseError};
use sipstack_operator::controller::dispatcher::{DispatcherSet, DispatcherSync, SetSynced};
use sipstack_operator::controller::mediapool::reconcile;
use sipstack_operator::controller::metrics::Metrics;

const POOLS: usize = 50;
const MEMBERS: usize = 10;
const NAMESPACE: &str = "voice";
const TARGET_MIB: f64 = 64.0;

/// The database is not part of the measurement.
struct NoDatabase;

#[async_trait]
impl PlatformDatabase for NoDatabase {
    async fn remove_dispatcher_set(
        &self,
        _: &PgCluster,
        _: i32,
    ) -> Result<(), PlatformDatabaseError> {
        Ok(())
    }

    async fn ensure_schema(&self, _: &PgCluster) -> Result<i32, PlatformDatabaseError> {
        Ok(sipstack_db::latest_version())
    }
}

#[async_trait]
impl DispatcherSync for NoDatabase {
    async fn sync_set(
        &self,
        _: &PgCluster,
        _: &[sipstack_operator::controller::dispatcher::EdgeEndpoint],
        _: &DispatcherSet,
    ) -> Result<SetSynced, PlatformDatabaseError> {
        Ok(SetSynced::default())
    }
}

/// A field of /proc/self/status in MiB (`VmRSS`, `VmHWM`).
fn proc_status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(measure()) {
        Ok(within) if within => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn measure() -> Result<bool, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/platform.yaml"
    ))?;
    let platform = Platform::from_yaml(&text)?;
    let mut cluster = platform.pg_clusters[0].clone();
    cluster.metadata.namespace = Some(NAMESPACE.into());
    let template = platform.media_pools[0].clone();

    let fake = fake_api::FakeApi::new();
    fake.insert(&cluster);
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(
        fake.client(),
        Some("reconcile-memory".into()),
        metrics.clone(),
        Arc::new(NoDatabase),
        Arc::new(NoDatabase),
        Timing::default(),
    ));
    let before = proc_status_mib("VmRSS").unwrap_or(0.0);

    let mut names = Vec::new();
    for i in 0..POOLS {
        let mut pool = template.clone();
        let name = format!("media-{i:02}");
        pool.metadata.name = Some(name.clone());
        pool.metadata.namespace = Some(NAMESPACE.into());
        pool.spec.set_id = i32::try_from(i + 1)?;
        pool.spec.replicas = i32::try_from(MEMBERS)?;
        pool.spec.members = (0..MEMBERS)
            .map(|m| StaticMember {
                uri: format!("sip:10.{}.{}.{}:5080", i / 250, i % 250, m + 1),
                ..template.spec.members[0].clone()
            })
            .collect();
        fake.insert(&pool);
        names.push(name);
    }

    let started = Instant::now();
    // finalizer, then the children and the status
    for _ in 0..2 {
        for name in &names {
            let pool: MediaPool = fake
                .get("MediaPool", NAMESPACE, name)
                .ok_or("pool vanished")?;
            reconcile(Arc::new(pool), ctx.clone()).await?;
        }
    }
    let first = started.elapsed();
    let writes_after_apply = metrics.total_writes();
    fake.take_calls();

    let again = Instant::now();
    for name in &names {
        let pool: MediaPool = fake
            .get("MediaPool", NAMESPACE, name)
            .ok_or("pool vanished")?;
        reconcile(Arc::new(pool), ctx.clone()).await?;
    }
    let second = again.elapsed();
    let rewrites = fake.take_calls().iter().filter(|c| c.is_write()).count();

    let rss = proc_status_mib("VmRSS").unwrap_or(f64::NAN);
    let peak = proc_status_mib("VmHWM").unwrap_or(f64::NAN);
    let objects: usize = [
        "Secret",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    ]
    .iter()
    .map(|k| fake.all(k).len())
    .sum();
    println!("reconciled {POOLS} MediaPools x {MEMBERS} members ({objects} child objects)");
    println!("  first pass (finalizer + apply): {first:.2?}, {writes_after_apply} writes");
    println!("  second pass (unchanged):        {second:.2?}, {rewrites} writes");
    println!("  VmRSS {rss:.1} MiB (before the pools {before:.1} MiB), peak VmHWM {peak:.1} MiB; target {TARGET_MIB:.0} MiB");
    let within = peak <= TARGET_MIB && rewrites == 0;
    println!(
        "  {}",
        if within {
            "within the target"
        } else {
            "OVER THE TARGET"
        }
    );
    Ok(within)
}
