//! A media node that dies under load, on real Kamailio with SIPp stand-ins: the
//! edge retries the next node inside the same INVITE transaction
//! (failure_route MEDIA_FAILOVER after `failoverTimeoutMs`), marks the dead node
//! inactive, and takes it back once OPTIONS probing finds it answering again.
//!
//! Timeline: 60 calls/s for 14 s over three stand-ins (round robin); the middle
//! one is SIGKILLed at 3 s and started again on the same ip:port at 7 s.
//!
//! Run with `--nocapture` to see the measured figures.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sipstack_e2e::sipp::{scenario_path, InjectionFile, LogLine, SippCommand};
use sipstack_e2e::testbed::{standin, standin_on, users, PoolSpec, Testbed, TestbedSpec};
use sipstack_edgerpc::LiveDestination;

const USER: &str = "alice";
const PASSWORD: &str = "alice-pw";

/// New calls per second while the node dies (the issue asks for at least 50).
const RATE: u32 = 60;
/// How long every call stays up between ACK and BYE. Zero: the window in which a
/// call is up on a node (answered, BYE not yet answered) is a few milliseconds,
/// so the node that is killed is very unlikely to hold an established call. If
/// it does, that call is counted and reported on its own (see `Tally`). (With
/// 200 ms here, about 4 calls are up on the node when it dies and are reported
/// as lost with it; SIPp's failure count then equals exactly that number.)
const CALL_PAUSE: Duration = Duration::ZERO;

fn uri(addr: SocketAddr) -> String {
    format!("sip:{addr}")
}

/// Inactive (I): the dispatcher no longer selects it. A node in state T (trying,
/// some probes failed but fewer than the threshold) is still selected.
fn is_inactive(d: &LiveDestination) -> bool {
    d.flags.starts_with('I')
}

/// uac_call.xml that also logs `ENDED call_id=…` when its BYE is answered 200,
/// so the outcome of every call's teardown can be told apart from its setup.
/// Derived from uac_call.xml at run time to stay in step with it.
fn uac_call_with_teardown_log(dir: &std::path::Path) -> PathBuf {
    let text = std::fs::read_to_string(scenario_path("uac_call")).unwrap();
    let last_recv = r#"<recv response="200" crlf="true"/>"#;
    assert_eq!(
        text.matches(last_recv).count(),
        1,
        "uac_call.xml changed: its BYE's 200 is not found once"
    );
    let logged = r#"<recv response="200" crlf="true">
    <action>
      <log message="ENDED call_id=[call_id]"/>
    </action>
  </recv>"#;
    let path = dir.join("uac_call_teardown.xml");
    std::fs::write(&path, text.replace(last_recv, logged)).unwrap();
    path
}

/// What happened to each call of a run, from the caller's `<log>` lines.
///
/// "No failed call" in this test means: every call the caller started was
/// answered 200 (set up, on whichever node), and every call answered by a node
/// that stayed up was also torn down with a 200 to its BYE. The only calls
/// allowed to fail are those the killed node itself had answered before it died
/// and whose BYE then had nobody to answer it: their media was on that node, no
/// proxy can save them. They are counted (`lost_with_node`) and printed, SIPp's
/// own failure counter must equal exactly that number, and it must not exceed
/// what the node can have held at the moment it died.
#[derive(Debug)]
struct Tally {
    created: u64,
    /// Call-ID → host:port of the node that answered.
    answered: BTreeMap<String, String>,
    ended: BTreeSet<String>,
}

impl Tally {
    fn new(created: u64, lines: &[LogLine]) -> Self {
        let mut answered = BTreeMap::new();
        let mut ended = BTreeSet::new();
        for line in lines {
            match (line.tag.as_str(), line.get("call_id")) {
                ("ANSWERED", Some(id)) => {
                    answered.insert(
                        id.to_string(),
                        line.get("media").unwrap_or_default().to_string(),
                    );
                }
                ("ENDED", Some(id)) => {
                    ended.insert(id.to_string());
                }
                _ => {}
            }
        }
        Self {
            created,
            answered,
            ended,
        }
    }

    fn answered_by(&self, node: SocketAddr) -> usize {
        let node = node.to_string();
        self.answered.values().filter(|m| **m == node).count()
    }

    /// Answered but not ended, by node.
    fn not_ended(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, node) in &self.answered {
            if !self.ended.contains(id) {
                out.entry(node.clone()).or_default().push(id.clone());
            }
        }
        out
    }
}

/// Count of ANSWERED lines naming `node` among the lines so far.
fn answers_so_far(lines: &[LogLine], node: SocketAddr) -> usize {
    let node = node.to_string();
    lines
        .iter()
        .filter(|l| l.tag == "ANSWERED" && l.get("media") == Some(node.as_str()))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_fails_no_call_and_comes_back() {
    let (nodes, mut standins): (Vec<SocketAddr>, Vec<_>) =
        (0..3).map(|n| standin(n).unwrap()).unzip();
    let victim = nodes[1];
    let spec = TestbedSpec {
        pools: vec![nodes
            .iter()
            .fold(PoolSpec::new("media", 1, "roundRobin"), |p, n| {
                p.member(*n, 1, 0)
            })],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let (interval, threshold, failover_ms) = (
        spec.probe_interval_seconds,
        spec.inactive_threshold,
        spec.failover_timeout_ms,
    );
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber(USER, PASSWORD).await.unwrap();
    tb.wait_for_destinations(Duration::from_secs(10), |d| {
        d.len() == 3 && d.iter().all(|x| x.is_active())
    })
    .await
    .unwrap();

    // Load for 14 s: the node is killed after 3 s, brought back after 7 s.
    let scenario_dir = tempfile::tempdir().unwrap();
    let calls = u64::from(RATE) * 14;
    let load = SippCommand::new(uac_call_with_teardown_log(scenario_dir.path()))
        .remote(tb.edge())
        .service("5550100")
        .injection(InjectionFile::users(&users(&[(USER, PASSWORD)])))
        .rate(RATE)
        .call_limit(300)
        .max_calls(calls)
        .pause(CALL_PAUSE)
        // a BYE towards the dead node fails after this instead of SIPp's long
        // retransmission schedule; an INVITE that fails over needs ~failover_ms
        .recv_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(45))
        .spawn()
        .unwrap();
    let started = Instant::now();

    tokio::time::sleep(Duration::from_secs(3)).await;
    standins[1].kill().unwrap();
    let killed_after = started.elapsed();
    let to_inactive = tb
        .wait_for_destinations(Duration::from_secs(15), |d| {
            d.iter().any(|x| x.uri == uri(victim) && is_inactive(x))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", tb.edge_log(30)));
    let inactive_state = tb.destination(&uri(victim)).await.unwrap().flags;
    // Under load the first INVITE that times out on the dead node marks it
    // (ds_mark_dst in MEDIA_FAILOVER); without load OPTIONS probing does (the
    // active-failover test in edge_dispatch.rs measures that path alone). The
    // issue's bound is probe interval × inactive threshold, plus the time a
    // probe may take to fail (the failover timeout) and polling slack.
    let bound = Duration::from_secs(u64::from(interval * threshold))
        + Duration::from_millis(u64::from(failover_ms))
        + Duration::from_millis(700);
    assert!(
        to_inactive <= bound,
        "{victim} marked inactive after {to_inactive:?}, more than {bound:?}"
    );

    // Back on the same ip:port at 7 s; probing marks it active again. The calls
    // it answers from then on are those the caller logs after this count.
    let until_restart = Duration::from_secs(7).saturating_sub(started.elapsed());
    tokio::time::sleep(until_restart).await;
    let answers_at_restart = answers_so_far(&load.log_lines(), victim);
    standins[1] = standin_on(victim).unwrap();
    let restarted_after = started.elapsed();
    let to_active = tb
        .wait_for_destinations(Duration::from_secs(10), |d| {
            d.iter().any(|x| x.uri == uri(victim) && x.is_active())
        })
        .await
        .unwrap();
    // one answered probe brings it back (activeThreshold defaults to 1)
    let active_bound = Duration::from_secs(u64::from(interval)) + Duration::from_millis(1000);

    let out = tokio::task::spawn_blocking(move || load.wait())
        .await
        .unwrap()
        .unwrap();
    let stats = out
        .stats
        .clone()
        .unwrap_or_else(|| panic!("no statistics: {}", out.diagnostics()));
    let tally = Tally::new(stats.total_created(), &out.log_lines);
    let not_ended = tally.not_ended();
    let lost_with_node = not_ended.get(&victim.to_string()).map_or(0, Vec::len);
    let moved = format!("media node {} failed", uri(victim));
    let failed_over = tb
        .edge_log(100_000)
        .lines()
        .filter(|l| l.contains(&moved))
        .count();
    let after_restart = tally.answered_by(victim) - answers_at_restart;

    println!(
        "failover under load: {} calls at {RATE}/s, pause {CALL_PAUSE:?}; {victim} killed at {killed_after:.1?}, \
         marked inactive after {to_inactive:.1?} (state {inactive_state}; bound {bound:.1?} = probe interval {interval} s \
         × threshold {threshold} + failover timeout {failover_ms} ms + 0.7 s)",
        tally.created
    );
    println!(
        "failover under load: INVITEs the edge moved from the dead node to another inside their transaction: {failed_over}; \
         calls set up {} of {}; calls lost with the dead node (answered by it before the kill, BYE unanswered): {lost_with_node}; \
         SIPp failed calls: {}",
        tally.answered.len(),
        tally.created,
        stats.failed()
    );
    println!(
        "failover under load: {victim} restarted at {restarted_after:.1?}, marked active after {to_active:.1?} \
         (bound {active_bound:.1?}), then answered {after_restart} calls; answers per node: {:?}",
        out.answered_by()
    );

    let diagnostics = || format!("{}\nedge log:\n{}", out.diagnostics(), tb.edge_log(40));
    assert_eq!(
        tally.created,
        calls,
        "the whole load ran: {}",
        diagnostics()
    );
    assert_eq!(
        tally.answered.len() as u64,
        tally.created,
        "a call was not set up: {}",
        diagnostics()
    );
    let others: BTreeMap<_, _> = not_ended
        .iter()
        .filter(|(node, _)| **node != victim.to_string())
        .collect();
    assert!(
        others.is_empty(),
        "calls on surviving nodes failed at teardown: {others:?}\n{}",
        diagnostics()
    );
    assert_eq!(
        stats.failed(),
        lost_with_node as u64,
        "SIPp counts failures other than the excused ones: {}",
        diagnostics()
    );
    // The excuse is bounded by what the dead node can have held: the calls it
    // got during one call's length (a few ms plus the pause), doubled, plus 2.
    let excusable = 2.0 + 2.0 * f64::from(RATE) / 3.0 * (CALL_PAUSE.as_secs_f64() + 0.05);
    assert!(
        lost_with_node as f64 <= excusable,
        "{lost_with_node} calls on {victim} failed at teardown, more than it can have held (~{excusable:.0}): {:?}",
        not_ended.get(&victim.to_string())
    );
    assert!(
        failed_over > 0,
        "no INVITE was retried on another node; edge log:\n{}",
        tb.edge_log(40)
    );
    assert!(
        to_active <= active_bound,
        "{victim} marked active after {to_active:?}, more than {active_bound:?}"
    );
    assert!(
        after_restart > 0,
        "{victim} got no call after it came back: {:?}",
        out.answered_by()
    );
    for node in &nodes {
        assert!(
            tally.answered_by(*node) > 0,
            "{node} answered nothing: {:?}",
            out.answered_by()
        );
    }
}
