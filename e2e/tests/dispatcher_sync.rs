//! The dispatcher sync engine against real Kamailio, PostgreSQL and SIPp
//! stand-ins: pools scaled out and in under call load, rapid changes inside
//! Kamailio's reload window, drains, and an edge that is down while the pool
//! changes.
//!
//! Every platform has one pool `media` (set 1, round robin) as the default route;
//! the edge probes members every second. The engine talks to the platform's
//! database and edge like a control plane would; the local driver brought them up.
//!
//! Run with `--nocapture` to see the measured figures.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sipstack_dispatch::{EdgeOptions, Engine, Member, SetPolicy, SyncError, SyncOutcome};
use sipstack_e2e::sipp::{InjectionFile, SippCommand, SippProcess};
use sipstack_e2e::testbed::{standin, users, PoolSpec, Testbed, TestbedSpec};

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";
const SET: i32 = 1;

fn uri(addr: SocketAddr) -> String {
    format!("sip:{addr}")
}

fn policy() -> SetPolicy {
    SetPolicy {
        set_id: SET,
        description: "media".into(),
        drain_grace: Duration::from_secs(300),
    }
}

fn serving(nodes: &[SocketAddr]) -> Vec<Member> {
    nodes
        .iter()
        .map(|n| Member::serving(uri(*n), SET, 1, 0))
        .collect()
}

/// A platform with `total` stand-ins running, the first `initial` of them
/// declared as the pool's members, and an engine on its database and edge.
struct Platform {
    tb: Testbed,
    engine: Engine,
    nodes: Vec<SocketAddr>,
    standins: Vec<SippProcess>,
}

async fn platform(total: u8, initial: usize) -> Platform {
    let (nodes, standins): (Vec<SocketAddr>, Vec<SippProcess>) =
        (0..total).map(|n| standin(n).unwrap()).unzip();
    let pool = nodes[..initial]
        .iter()
        .fold(PoolSpec::new("media", SET, "roundRobin"), |p, n| {
            p.member(*n, 1, 0)
        });
    let spec = TestbedSpec {
        pools: vec![pool],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber(USER, PASSWORD).await.unwrap();
    tb.wait_for_destinations(Duration::from_secs(10), |d| {
        d.len() == initial && d.iter().all(|x| x.is_active())
    })
    .await
    .unwrap();
    let engine = Engine::new(
        tb.db().await.unwrap(),
        vec![tb.rpc.clone()],
        EdgeOptions::default(),
    );
    Platform {
        tb,
        engine,
        nodes,
        standins,
    }
}

/// Calls through the edge at `rate`/s for `seconds`, each up for `pause`.
fn load(tb: &Testbed, rate: u32, seconds: u64, pause: Duration) -> SippProcess {
    SippCommand::scenario("uac_call")
        .remote(tb.edge())
        .service("5550100")
        .injection(InjectionFile::users(&users(&[(USER, PASSWORD)])))
        .rate(rate)
        .call_limit(400)
        .max_calls(u64::from(rate) * seconds)
        .pause(pause)
        .recv_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(seconds + 30))
        .spawn()
        .unwrap()
}

fn answers(load: &SippProcess, node: SocketAddr) -> usize {
    let node = node.to_string();
    load.log_lines()
        .iter()
        .filter(|l| l.tag == "ANSWERED" && l.get("media") == Some(node.as_str()))
        .count()
}

async fn live_uris(tb: &Testbed) -> BTreeSet<String> {
    tb.destinations()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.set_id == i64::from(SET))
        .map(|d| d.uri)
        .collect()
}

async fn table(tb: &Testbed) -> Vec<(String, i32, String)> {
    let db = tb.db().await.unwrap();
    sipstack_db::dispatcher::list(&db)
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.set_id == SET)
        .map(|d| (d.destination, d.flags, d.attrs))
        .collect()
}

async fn sync(p: &mut Platform, desired: &[Member]) -> SyncOutcome {
    let outcome = p.engine.sync_set(&policy(), desired).await.unwrap();
    p.engine
        .wait_applied(&outcome, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", p.tb.edge_log(30)));
    outcome
}

/// (a) 2 → 4 members under a steady load: the new members are inserted inactive
/// and probing, and take calls within 2 s of the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_out_under_load_new_members_take_calls_within_two_seconds() {
    let mut p = platform(4, 2).await;
    let calls = load(&p.tb, 30, 16, Duration::ZERO);
    // past the reload window of the platform's start, so the reload goes at once
    tokio::time::sleep(Duration::from_secs(6)).await;
    let new = [p.nodes[2], p.nodes[3]];
    assert_eq!((answers(&calls, new[0]), answers(&calls, new[1])), (0, 0));

    let started = Instant::now();
    let all = serving(&p.nodes);
    let outcome = sync(&mut p, &all).await;
    let confirmed = started.elapsed();
    let inserted: Vec<i32> = outcome
        .plan
        .changes
        .iter()
        .filter_map(|c| match c {
            sipstack_dispatch::Change::Insert(r) => Some(r.flags),
            _ => None,
        })
        .collect();
    assert_eq!(inserted, [9, 9], "new members: inactive | probing");

    let mut first_call = [None, None];
    while started.elapsed() < Duration::from_secs(5) && first_call.iter().any(Option::is_none) {
        for (i, node) in new.iter().enumerate() {
            if first_call[i].is_none() && answers(&calls, *node) > 0 {
                first_call[i] = Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "scale out 2 → 4 at 30 calls/s: reload confirmed after {confirmed:.2?}, first call on the new members after {:?} (probe interval 1 s)",
        first_call
    );
    for (node, t) in new.iter().zip(first_call) {
        let t = t.unwrap_or_else(|| {
            panic!(
                "{node} took no call within 5 s; edge log:\n{}",
                p.tb.edge_log(30)
            )
        });
        assert!(
            t <= Duration::from_secs(2),
            "{node} took its first call after {t:?}"
        );
    }

    let out = tokio::task::spawn_blocking(move || calls.wait())
        .await
        .unwrap()
        .unwrap();
    out.ensure_all_succeeded(30 * 16)
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", p.tb.edge_log(30)));
    println!("scale out: answers per node {:?}", out.answered_by());

    // the next sync writes down that the edge found them answering (flags 8), so
    // a later reload does not take them out of service again
    let again = sync(&mut p, &all).await;
    assert!(!again.plan.needs_reload(), "{:?}", again.plan);
    let flags: Vec<i32> = table(&p.tb).await.iter().map(|r| r.1).collect();
    assert_eq!(flags, [8, 8, 8, 8], "{:?}", table(&p.tb).await);
}

/// (b) 4 → 2 under a load of calls that last 1.5 s: after the sync no new call
/// reaches a removed member, the calls they hold complete, no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_under_load_no_new_call_reaches_a_removed_member() {
    let mut p = platform(4, 4).await;
    let calls = load(&p.tb, 30, 12, Duration::from_millis(1500));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let removed = [p.nodes[2], p.nodes[3]];
    let keep = [p.nodes[0], p.nodes[1]];

    let started = Instant::now();
    let outcome = p.engine.sync_set(&policy(), &serving(&keep)).await.unwrap();
    let disabled_after = started.elapsed();
    assert!(
        outcome.disabled.iter().all(|d| d.result == Ok(true)),
        "disabled at once on the edge: {:?}",
        outcome.disabled
    );
    // INVITEs already on their way when the edge disabled them may still be answered
    tokio::time::sleep(Duration::from_millis(200)).await;
    let at_sync: Vec<usize> = removed.iter().map(|n| answers(&calls, *n)).collect();
    p.engine
        .wait_applied(&outcome, Duration::from_secs(15))
        .await
        .unwrap();
    let confirmed_after = started.elapsed();
    assert_eq!(
        live_uris(&p.tb).await,
        keep.iter().map(|n| uri(*n)).collect(),
        "the edge holds exactly the remaining members"
    );

    let out = tokio::task::spawn_blocking(move || calls.wait())
        .await
        .unwrap()
        .unwrap();
    let after: Vec<usize> = removed
        .iter()
        .map(|n| out.answered_by().get(&n.to_string()).copied().unwrap_or(0))
        .collect();
    println!(
        "scale in 4 → 2: disabled on the edge {disabled_after:.2?} after the sync started, reload confirmed after {confirmed_after:.2?}; \
         calls answered by the removed members at the sync {at_sync:?}, at the end {after:?}; answers per node {:?}",
        out.answered_by()
    );
    assert!(
        at_sync.iter().all(|n| *n > 0),
        "the removed members had calls before"
    );
    assert_eq!(at_sync, after, "a removed member got a call after the sync");
    // every call, including those up on the removed members, completed
    out.ensure_all_succeeded(30 * 12)
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", p.tb.edge_log(30)));
    drop(p.standins);
}

/// (c) 20 changes in 5 s, most inside Kamailio's reload window: no change is
/// lost to "Ongoing reload", the reloads are coalesced, and the edge ends with
/// exactly the last desired set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rapid_changes_end_in_the_last_desired_set() {
    let mut p = platform(6, 2).await;
    let mut last = Vec::new();
    let mut outcomes = Vec::new();
    let started = Instant::now();
    for i in 0..20u32 {
        // a different subset each time (never empty); pseudo-random but repeatable
        let pick = (i.wrapping_mul(37) + 11) % 63 + 1;
        let nodes: Vec<SocketAddr> = (0..6)
            .filter(|b| pick & (1 << b) != 0)
            .map(|b| p.nodes[b])
            .collect();
        last = serving(&nodes);
        outcomes.push(p.engine.sync_set(&policy(), &last).await.unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let changes_took = started.elapsed();
    let final_outcome = outcomes
        .iter()
        .rev()
        .find(|o| o.reload.is_some())
        .cloned()
        .expect("some change needed a reload");
    let statuses = p
        .engine
        .wait_applied(&final_outcome, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = &statuses[0];
    let want: BTreeSet<String> = last.iter().map(|m| m.uri.clone()).collect();
    let live = live_uris(&p.tb).await;
    let in_table: BTreeSet<String> = table(&p.tb).await.into_iter().map(|r| r.0).collect();
    println!(
        "20 changes in {changes_took:.1?}: {} reload(s) accepted, {} refused with \"Ongoing reload\" and retried, confirmed {:.1?} after the first change",
        status.reloads,
        status.refused,
        started.elapsed()
    );
    assert_eq!(in_table, want, "the table holds the last desired set");
    assert_eq!(live, want, "the edge holds the last desired set");
    assert!(
        status.refused > 0,
        "the changes hit the reload window: {status:?}"
    );
    assert!(
        status.reloads <= 4,
        "reloads were not coalesced: {} for 20 changes",
        status.reloads
    );
    assert!(status.last_error.is_none(), "{status:?}");
}

/// Drain without a reload (and without Kamailio's help): a terminating member is
/// disabled on the edge at once, even inside the reload window, gets no new
/// call, and leaves the table when it is gone; a not-ready member likewise gets
/// no call and comes back through probing when it is ready again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminating_and_not_ready_members_get_no_new_calls() {
    let mut p = platform(3, 3).await;
    let [a, b, c] = [p.nodes[0], p.nodes[1], p.nodes[2]];
    let members = |b_ready: bool, c_state: Option<(bool, bool)>| {
        let mut m = vec![Member::serving(uri(a), SET, 1, 0)];
        let mut mb = Member::serving(uri(b), SET, 1, 0);
        mb.ready = b_ready;
        m.push(mb);
        if let Some((ready, terminating)) = c_state {
            let mut mc = Member::serving(uri(c), SET, 1, 0);
            mc.ready = ready;
            mc.terminating = terminating;
            m.push(mc);
        }
        m
    };
    // inside the reload window of the platform's start: only set_state can do it now
    let started = Instant::now();
    let out = p
        .engine
        .sync_set(&policy(), &members(true, Some((false, true))))
        .await
        .unwrap();
    assert_eq!(out.plan.drained(), [uri(c)]);
    assert!(out.reload.is_none(), "draining needs no reload");
    let flags = p.tb.destination(&uri(c)).await.unwrap().flags;
    println!(
        "terminating member disabled on the edge after {:.0?}: {flags}",
        started.elapsed()
    );
    assert!(flags.starts_with('D'), "{flags}");
    let row = table(&p.tb)
        .await
        .into_iter()
        .find(|r| r.0 == uri(c))
        .unwrap();
    assert_eq!(
        row.1 & 4,
        4,
        "the disabled flag is in the table too: {row:?}"
    );

    let calls = |tb: &Testbed, n: u64| {
        SippCommand::scenario("uac_call")
            .remote(tb.edge())
            .service("5550100")
            .injection(InjectionFile::users(&users(&[(USER, PASSWORD)])))
            .rate(50)
            .max_calls(n)
            .deadline(Duration::from_secs(30))
            .run_async()
    };
    let out1 = calls(&p.tb, 40).await.unwrap();
    out1.ensure_all_succeeded(40).unwrap();
    assert!(
        !out1.answered_by().contains_key(&c.to_string()),
        "{:?}",
        out1.answered_by()
    );

    // b is not ready; c is gone from the Service
    let out = p
        .engine
        .sync_set(&policy(), &members(false, None))
        .await
        .unwrap();
    assert_eq!(out.plan.drained(), [uri(b)]);
    assert_eq!(out.plan.deleted(), [uri(c)]);
    assert!(p
        .tb
        .destination(&uri(b))
        .await
        .unwrap()
        .flags
        .starts_with('D'));
    let out2 = calls(&p.tb, 40).await.unwrap();
    out2.ensure_all_succeeded(40).unwrap();
    assert_eq!(
        out2.answered_by().keys().collect::<Vec<_>>(),
        [&a.to_string()]
    );
    p.engine
        .wait_applied(&out, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(live_uris(&p.tb).await, [uri(a), uri(b)].into());

    // b ready again: enabled through probing, takes calls again
    let out = sync(&mut p, &members(true, None)).await;
    assert_eq!(
        out.plan.updated(sipstack_dispatch::UpdateReason::Enable),
        [uri(b)]
    );
    let back =
        p.tb.wait_for_destinations(Duration::from_secs(5), |d| {
            d.iter().any(|x| x.uri == uri(b) && x.is_active())
        })
        .await
        .unwrap();
    println!("not-ready member back in service {back:.1?} after its reload");
    let out3 = calls(&p.tb, 40).await.unwrap();
    out3.ensure_all_succeeded(40).unwrap();
    assert!(
        out3.answered_by().contains_key(&b.to_string()),
        "{:?}",
        out3.answered_by()
    );
}

/// The argv and environment of a running process, to start it again the same way.
fn command_of(pid: i32) -> (Vec<String>, Vec<(String, String)>) {
    let split = |file: &str| -> Vec<String> {
        std::fs::read(format!("/proc/{pid}/{file}"))
            .unwrap()
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    let env = split("environ")
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    (split("cmdline"), env)
}

/// An edge that is down while the pool changes is not counted as up to date;
/// once it is back, the engine brings it up to date without another sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_was_down_is_brought_up_to_date() {
    let mut p = platform(3, 2).await;
    let kam = sipstack_local::kamailio::LocalKamailio::new(&p.tb.state_dir(), "edge");
    let pid = kam.running_pid().expect("kamailio runs");
    let (argv, env) = command_of(pid);
    let two = serving(&p.nodes[..2]);
    let first = sync(&mut p, &two).await;
    assert!(first.plan.is_empty());

    kam.stop().await.unwrap();
    let out = p
        .engine
        .sync_set(&policy(), &serving(&p.nodes))
        .await
        .unwrap();
    assert_eq!(out.plan.inserted(), [uri(p.nodes[2])]);
    let err = p
        .engine
        .wait_applied(&out, Duration::from_secs(2))
        .await
        .expect_err("a stopped edge cannot confirm");
    assert!(matches!(err, SyncError::NotConfirmed { .. }), "{err}");
    println!("while the edge is down: {err}");

    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(kam.log_path())
        .unwrap();
    let status = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .status()
        .unwrap();
    assert!(status.success(), "kamailio restarted: {status}");
    let started = Instant::now();
    let statuses = p
        .engine
        .wait_applied(&out, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", p.tb.edge_log(30)));
    println!(
        "edge back: confirmed {:.1?} after its restart ({} resync(s), {} failed request(s) while it was down)",
        started.elapsed(),
        statuses[0].resyncs,
        statuses[0].failures
    );
    assert!(statuses[0].failures > 0);
    assert_eq!(
        live_uris(&p.tb).await,
        p.nodes.iter().map(|n| uri(*n)).collect()
    );
    // and it follows the next change like any other
    let tail = serving(&p.nodes[1..]);
    let last = sync(&mut p, &tail).await;
    assert_eq!(last.plan.deleted(), [uri(p.nodes[0])]);
    assert_eq!(
        live_uris(&p.tb).await,
        p.nodes[1..].iter().map(|n| uri(*n)).collect()
    );
}

/// A drain that arrives while a sync holds the set (it has read the rows and is
/// about to write the flags it computed) waits for it and applies on top of what
/// the sync wrote: the drain is never overwritten by a plan made before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_during_a_sync_is_not_lost() {
    use sipstack_db::dispatcher::{self, FLAG_DISABLED, SET_LOCK_CLASS};
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    let member = "sip:127.0.0.61:5080";
    let mut sync = tb.db().await.unwrap();
    dispatcher::replace_set(
        &sync,
        7,
        &[dispatcher::Member {
            destination: member.into(),
            weight: 1,
            priority: 0,
            description: "race".into(),
        }],
    )
    .await
    .unwrap();

    // the sync's transaction: lock, read, and (later) write absolute flags
    let tx = sync.transaction().await.unwrap();
    tx.execute("SELECT pg_advisory_xact_lock($1, 7)", &[&SET_LOCK_CLASS])
        .await
        .unwrap();
    let flags: i32 = tx
        .query_one("SELECT flags FROM dispatcher WHERE setid = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(flags & FLAG_DISABLED, 0);

    let mut operator = tb.db().await.unwrap();
    let drain =
        tokio::spawn(
            async move { dispatcher::set_drained(&mut operator, member, Some(7), true).await },
        );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !drain.is_finished(),
        "the drain did not wait for the sync's lock"
    );

    tx.execute(
        "UPDATE dispatcher SET flags = $1 WHERE setid = 7",
        &[&flags],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let change = drain.await.unwrap().unwrap();
    assert_ne!(change.destination.flags & FLAG_DISABLED, 0);
    let now: i32 = tb
        .db()
        .await
        .unwrap()
        .query_one("SELECT flags FROM dispatcher WHERE setid = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(now & FLAG_DISABLED, 0, "the drain was lost");
}
