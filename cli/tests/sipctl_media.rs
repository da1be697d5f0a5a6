//! `sipctl drain dispatcher`, `enable dispatcher` and `local status` with the
//! FreeSWITCH nodes the local driver runs: draining pauses the node itself, its
//! call in progress completes, new calls go to the other node.
//!
//! Needs FreeSWITCH: fails when `CI=true` without it, skipped otherwise.

mod common;

use std::net::IpAddr;
use std::process::{Command, Output};
use std::time::Duration;

use common::ok;
use sipstack_e2e::freeswitch_present;
use sipstack_e2e::testbed::{PoolSpec, Testbed, TestbedSpec, DOMAIN};
use sipstack_e2e::voicecall::{VoiceCall, VoiceCallReport};
use sipstack_local::freeswitch::MediaNode;

/// sipctl with a config file of the testbed's own, through the context that
/// `sipctl local up` writes (database, edges and media nodes).
fn sipctl(tb: &Testbed, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipctl"))
        .args(args)
        .env("SIPCTL_CONFIG", tb.state_dir().join("sipctl-context.yaml"))
        .env_remove("SIPCTL_CONTEXT")
        .env_remove("SIPCTL_DB_URL")
        .env_remove("SIPCTL_EDGE")
        .output()
        .expect("sipctl runs")
}

fn call(tb: &Testbed, callee: &str, talk: Duration) -> VoiceCall {
    VoiceCall {
        talk,
        ..VoiceCall::new(tb.edge(), "alice", "alice-pw", DOMAIN, callee)
    }
}

async fn place(c: VoiceCall) -> VoiceCallReport {
    tokio::task::spawn_blocking(move || c.run())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_pauses_the_freeswitch_node_and_its_call_completes() {
    if !freeswitch_present(module_path!()) {
        return;
    }
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin")
            .freeswitch(2)
            .unwrap()],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    tb.wait_for_destinations(Duration::from_secs(20), |d| {
        d.iter().filter(|x| x.is_active()).count() == 2
    })
    .await
    .unwrap();
    // the same `up` again through sipctl: nothing restarts, and the context is written
    let file = tb.state_dir().join("platform-under-test.yaml");
    std::fs::write(&file, &tb.yaml).unwrap();
    let up = ok(&sipctl(
        &tb,
        &[
            "local",
            "up",
            "-f",
            file.to_str().unwrap(),
            "--state-dir",
            tb.state_dir().to_str().unwrap(),
        ],
    ));
    assert!(
        up.contains("node 0 runs") && up.contains("node 1 runs"),
        "{up}"
    );

    let platform = sipstack_crds::Platform::from_yaml(&tb.yaml).unwrap();
    let nodes: Vec<MediaNode> = (0..2)
        .map(|r| MediaNode::new(&tb.state_dir(), &platform.media_pools[0], r).unwrap())
        .collect();
    let password = std::fs::read_to_string(sipstack_local::freeswitch::esl_password_file(
        &tb.state_dir(),
        "media",
    ))
    .unwrap();
    let password = password.trim();

    // a long call, and the node that carries it
    let long = {
        let c = call(&tb, "5550100", Duration::from_secs(7));
        tokio::task::spawn_blocking(move || c.run())
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut busy = None;
    for (i, n) in nodes.iter().enumerate() {
        if n.calls(password).await.unwrap() == 1 {
            busy = Some(i);
        }
    }
    let busy = busy.expect("the long call is up on one node");
    let (drained, other) = (&nodes[busy], &nodes[1 - busy]);

    let text = ok(&sipctl(&tb, &["drain", "dispatcher", &drained.uri()]));
    assert!(text.contains("drained: no new calls go to it"), "{text}");
    assert!(
        text.contains("inbound calls paused; 1 call(s) in progress"),
        "{text}"
    );
    let status = ok(&sipctl(
        &tb,
        &[
            "local",
            "status",
            "--state-dir",
            tb.state_dir().to_str().unwrap(),
        ],
    ));
    let line = status
        .lines()
        .find(|l| l.contains(&drained.uri()) && l.contains("FreeSWITCH"))
        .unwrap_or("");
    assert!(line.contains("paused (draining), 1 call(s)"), "{status}");

    // new calls while the long one runs: all on the other node, all with audio
    for i in 0..4 {
        let r = place(call(
            &tb,
            &format!("55502{i:02}"),
            Duration::from_millis(500),
        ))
        .await;
        assert_eq!(
            r.remote_rtp.map(|a| a.ip()),
            Some(IpAddr::V4(other.address)),
            "{r:?}"
        );
        assert!(r.packets_received > 0, "{r:?}");
    }
    let long = long.await.unwrap().unwrap();
    assert_eq!(
        long.bye_status,
        Some(200),
        "the call in progress completed: {long:?}"
    );
    assert_eq!(
        long.remote_rtp.map(|a| a.ip()),
        Some(IpAddr::V4(drained.address))
    );
    assert!(long.packets_echoed > 100, "{long:?}");
    // the channel is gone once its hangup (and CDR) is through, shortly after the BYE's 200
    let mut left = 1;
    for _ in 0..40 {
        left = drained.calls(password).await.unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "the drained node reports 0 calls");

    let text = ok(&sipctl(&tb, &["enable", "dispatcher", &drained.uri()]));
    assert!(text.contains("inbound calls resumed"), "{text}");
    let status = ok(&sipctl(
        &tb,
        &[
            "local",
            "status",
            "--state-dir",
            tb.state_dir().to_str().unwrap(),
        ],
    ));
    let line = status
        .lines()
        .find(|l| l.contains(&drained.uri()) && l.contains("FreeSWITCH"))
        .unwrap_or("");
    assert!(line.contains("serving, 0 call(s)"), "{status}");
    tb.down().await.unwrap();
}

/// `sipctl scale mediapool` on the local platform: out to two FreeSWITCH nodes that
/// both take calls, and back in to one, the second node stopped and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_mediapool_out_and_in() {
    if !freeswitch_present(module_path!()) {
        return;
    }
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin")
            .freeswitch(2)
            .unwrap()],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    // one node first, on the first of the two addresses found free
    let mut one = spec.clone();
    one.pools[0].replicas = 1;
    let tb = Testbed::up(&one).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    let dir = tb.state_dir();
    let dir = dir.to_str().unwrap();

    let out = ok(&sipctl(
        &tb,
        &[
            "scale",
            "mediapool",
            "media",
            "--replicas",
            "2",
            "--state-dir",
            dir,
        ],
    ));
    assert!(
        out.contains("node 1 started") && out.contains("runs 2 replica(s)"),
        "{out}"
    );
    tb.wait_for_destinations(Duration::from_secs(20), |d| {
        d.iter().filter(|x| x.is_active()).count() == 2
    })
    .await
    .unwrap();
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..4 {
        let r = place(call(
            &tb,
            &format!("55503{i:02}"),
            Duration::from_millis(400),
        ))
        .await;
        nodes.insert(r.remote_rtp.unwrap().ip());
    }
    assert_eq!(nodes.len(), 2, "{nodes:?}");

    let out = ok(&sipctl(
        &tb,
        &[
            "scale",
            "mpool",
            "media",
            "--replicas",
            "1",
            "--state-dir",
            dir,
        ],
    ));
    assert!(
        out.contains("node 1 drained") && out.contains("node 1 removed"),
        "{out}"
    );
    let members = tb.destinations().await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    let status = ok(&sipctl(&tb, &["local", "status", "--state-dir", dir]));
    assert_eq!(
        status.lines().filter(|l| l.contains("FreeSWITCH")).count(),
        1,
        "{status}"
    );
    let err = sipctl(
        &tb,
        &[
            "scale",
            "mediapool",
            "nope",
            "--replicas",
            "1",
            "--state-dir",
            dir,
        ],
    );
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("no MediaPool named \"nope\""));
    tb.down().await.unwrap();
}
