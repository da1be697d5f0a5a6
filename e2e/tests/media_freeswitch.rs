//! The media tier on real FreeSWITCH: the local driver runs a MediaPool's replicas
//! as FreeSWITCH processes, the edge sends subscribers' calls to them, audio flows
//! both ways and every call leaves a CDR.
//!
//! FreeSWITCH is not a Debian package. Where it is missing these tests fail when
//! `CI=true` and report themselves skipped otherwise.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use sipstack_e2e::testbed::{PoolSpec, Testbed, TestbedSpec, DOMAIN, EDGE_IP};
use sipstack_e2e::voicecall::{VoiceCall, VoiceCallReport, G711};

/// Whether FreeSWITCH is here; panics in CI, where it must be.
fn freeswitch_present(test: &str) -> bool {
    if sipstack_local::freeswitch::find_freeswitch().is_some() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: FreeSWITCH is required in CI (scripts/install-deps.sh installs it from ../shared/freeswitch)");
    }
    eprintln!("{test}: skipped: FreeSWITCH not found (PATH or SIPSTACK_FREESWITCH)");
    false
}

/// A platform whose default pool is `replicas` FreeSWITCH nodes, with subscriber
/// alice, once the edge has every node as an active member.
async fn platform_with_nodes(replicas: i32) -> Result<Testbed> {
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").freeswitch(replicas)?],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let bed = Testbed::up(&spec).await?;
    bed.add_subscriber("alice", "alice-secret").await?;
    bed.wait_for_destinations(Duration::from_secs(20), |d| {
        d.iter().filter(|x| x.is_active()).count() == replicas as usize
    })
    .await
    .with_context(|| {
        format!(
            "the nodes never became active members: {:?}",
            bed.state.media_nodes
        )
    })?;
    Ok(bed)
}

fn call(bed: &Testbed, callee: &str, offer: Vec<G711>, talk: Duration) -> VoiceCall {
    VoiceCall {
        edge: bed.edge(),
        user: "alice".into(),
        password: "alice-secret".into(),
        domain: DOMAIN.into(),
        callee: callee.into(),
        offer,
        talk,
        local_ip: EDGE_IP,
    }
}

async fn place(call: VoiceCall) -> Result<VoiceCallReport> {
    tokio::task::spawn_blocking(move || call.run()).await?
}

/// The CDR row of a SIP call, once the node has written it.
async fn cdr_of(bed: &Testbed, sip_call_id: &str) -> Result<sipstack_db::cdr::Cdr> {
    let db = bed.db().await?;
    for _ in 0..40 {
        let all = sipstack_db::cdr::list(&db, &Default::default()).await?;
        if let Some(c) = all.into_iter().find(|c| c.sip_call_id == sip_call_id) {
            return Ok(c);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    anyhow::bail!("no CDR for Call-ID {sip_call_id} within 10 s")
}

/// A subscriber's call goes through Kamailio to a FreeSWITCH node that answers and
/// echoes: the phone hears its own audio back (the same bytes, so the path is
/// really both ways), the BYE goes through the edge, and the node writes one CDR
/// with the caller, callee, codec, node and times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribers_call_carries_audio_both_ways_and_leaves_one_cdr() -> Result<()> {
    if !freeswitch_present("a_subscribers_call_carries_audio_both_ways_and_leaves_one_cdr") {
        return Ok(());
    }
    let bed = platform_with_nodes(1).await?;
    let node = &bed.state.media_nodes[0];
    let report = place(call(&bed, "9196", vec![G711::Pcmu], Duration::from_secs(4))).await?;
    eprintln!("{report:?}");
    assert_eq!(report.codec.as_deref(), Some("PCMU"), "{report:?}");
    let node_ip: IpAddr = node
        .uri
        .trim_start_matches("sip:")
        .rsplit_once(':')
        .unwrap()
        .0
        .parse()?;
    assert_eq!(
        report.remote_rtp.map(|a| a.ip()),
        Some(node_ip),
        "RTP comes from the node: {report:?}"
    );
    // 200 packets sent in 4 s; the echo returns those after the greeting tone
    // (about 1.4 s) unchanged
    assert!(
        report.packets_echoed * 2 >= report.packets_sent,
        "echoed {} of {}: {report:?}",
        report.packets_echoed,
        report.packets_sent
    );
    assert!(
        report.received_rms > 0.5 * report.sent_rms,
        "heard {:.3}, sent {:.3}",
        report.received_rms,
        report.sent_rms
    );
    assert_eq!(report.bye_status, Some(200), "{report:?}");

    let cdr = cdr_of(&bed, &report.call_id).await?;
    assert_eq!(cdr.caller_number, "alice", "{cdr:?}");
    assert_eq!(cdr.callee_number, "9196", "{cdr:?}");
    assert_eq!(cdr.codec, "PCMU", "{cdr:?}");
    assert_eq!(cdr.media_node, node_ip.to_string(), "{cdr:?}");
    assert_eq!(cdr.hangup_cause, "NORMAL_CLEARING", "{cdr:?}");
    assert!(
        cdr.answer_time.is_some() && cdr.end_time.is_some(),
        "{cdr:?}"
    );
    assert!(
        (3..=7).contains(&cdr.billsec),
        "billsec {} for a call of about 4 s: {cdr:?}",
        cdr.billsec
    );
    let db = bed.db().await?;
    let rows = db
        .query(
            "SELECT count(*) FROM sipstack_cdr WHERE sip_call_id = $1",
            &[&report.call_id],
        )
        .await?;
    assert_eq!(rows[0].get::<_, i64>(0), 1, "one CDR per call");
    bed.down().await
}

/// The codec is the caller's choice among the pool's: a phone that offers only
/// PCMA gets PCMA, and its CDR says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcma_only_phone_gets_pcma() -> Result<()> {
    if !freeswitch_present("a_pcma_only_phone_gets_pcma") {
        return Ok(());
    }
    let bed = platform_with_nodes(1).await?;
    let report = place(call(&bed, "9197", vec![G711::Pcma], Duration::from_secs(4))).await?;
    assert_eq!(report.codec.as_deref(), Some("PCMA"), "{report:?}");
    assert!(
        report.packets_echoed * 2 >= report.packets_sent,
        "{report:?}"
    );
    assert_eq!(report.bye_status, Some(200), "{report:?}");
    assert_eq!(cdr_of(&bed, &report.call_id).await?.codec, "PCMA");
    bed.down().await
}

/// Two replicas are two FreeSWITCH processes with addresses of their own; round
/// robin gives each of them calls, and each call has audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_calls() -> Result<()> {
    if !freeswitch_present("two_replicas_share_the_calls") {
        return Ok(());
    }
    let bed = platform_with_nodes(2).await?;
    assert_eq!(bed.state.media_nodes.len(), 2);
    assert_ne!(bed.state.media_nodes[0].uri, bed.state.media_nodes[1].uri);
    let mut nodes = std::collections::BTreeSet::new();
    for i in 0..4 {
        let report = place(call(
            &bed,
            &format!("92{i:02}"),
            vec![G711::Pcmu],
            Duration::from_millis(800),
        ))
        .await?;
        assert!(report.packets_received > 0, "{report:?}");
        nodes.insert(report.remote_rtp.context("no RTP address")?.ip());
    }
    assert_eq!(nodes.len(), 2, "calls reached {nodes:?}");
    bed.down().await
}
