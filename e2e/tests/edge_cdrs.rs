//! The edge's call records against the real programs: Kamailio's acc module
//! spools a record for every call the edge relays, sipstack-cdr-shipper (started
//! by the local driver) moves it into PostgreSQL, and a call that also went
//! through a media node is one line with the node's record. A database outage
//! delays records and loses none.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use sipstack_db::cdr::{Call, CdrQuery, NewCdr};
use sipstack_db::number::{NewNumber, NumberMatch, NumberTarget};
use sipstack_db::route::{MatchKind, NewRoute, RouteSource, Target};
use sipstack_db::trunk::{Gateway, NewTrunk};
use sipstack_e2e::sipp::{free_udp_port_on, SippCommand, SippOutcome, SippProcess};
use sipstack_e2e::testbed::{
    call_number, free_udp_and_tcp_port, register_phone, standin, PoolSpec, Testbed, TestbedSpec,
    DOMAIN,
};

fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 80 + n))
}

fn to_user(number: &str, user: &str) -> NewNumber {
    NewNumber {
        match_kind: NumberMatch::Exact,
        number: number.into(),
        target: NumberTarget::User {
            username: user.into(),
            domain: DOMAIN.into(),
        },
        description: String::new(),
    }
}

/// A phone of `user` registered from 127.0.0.1:PORT that runs `scenario` there.
async fn phone_of(tb: &Testbed, user: &str, password: &str, scenario: &str) -> SippProcess {
    let port = free_udp_and_tcp_port().unwrap();
    register_phone(tb.edge(), user, password, port)
        .await
        .unwrap();
    SippCommand::scenario(scenario)
        .local("127.0.0.1".parse().unwrap(), port)
        .deadline(Duration::from_secs(120))
        .spawn()
        .unwrap()
}

/// The Call-ID of the (only) call a uac_call run placed.
fn call_id(out: &SippOutcome) -> String {
    out.lines("ANSWERED")
        .chain(out.lines("CHALLENGED"))
        .find_map(|l| l.get("call_id").map(str::to_string))
        .unwrap_or_else(|| panic!("no call id logged: {}", out.diagnostics()))
}

/// Every call record, waiting until there are at least `n` edge records (the
/// shipper moves them every couple of seconds; the bound is for a busy machine).
async fn calls_once_shipped(tb: &Testbed, n: usize, within: Duration) -> Vec<Call> {
    let db = tb.db().await.unwrap();
    let started = Instant::now();
    loop {
        let calls = sipstack_db::cdr::list_calls(&db, &CdrQuery::default())
            .await
            .unwrap();
        if calls.iter().filter(|c| c.edge.is_some()).count() >= n {
            return calls;
        }
        assert!(
            started.elapsed() < within,
            "{} of {n} edge records after {within:?}: {calls:#?}\nshipper log:\n{}",
            calls.iter().filter(|c| c.edge.is_some()).count(),
            std::fs::read_to_string(tb.state_dir().join("edge-edge/cdr-shipper.log"))
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn the_call<'a>(calls: &'a [Call], call_id: &str) -> &'a Call {
    let matching: Vec<&Call> = calls.iter().filter(|c| c.sip_call_id == call_id).collect();
    assert_eq!(matching.len(), 1, "one line for call {call_id}: {calls:#?}");
    matching[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_the_edge_relays_leaves_one_record_joined_with_the_media_nodes() {
    let (node, _standin) = standin(0).unwrap();
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(node, 1, 0)],
        default_pool: Some("media".into()),
        ..TestbedSpec::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.wait_for_destinations(Duration::from_secs(10), |l| l.iter().all(|d| d.is_active()))
        .await
        .unwrap();
    for (user, pw) in [
        ("alice", "alice-pw"),
        ("bob", "bob-pw"),
        ("carol", "carol-pw"),
    ] {
        tb.add_subscriber(user, pw).await.unwrap();
    }
    let _bob = phone_of(&tb, "bob", "bob-pw", "uas_user").await;
    // carol's phone refuses every call with 503 (which the edge, a proxy, passes
    // on as 500; the record keeps the phone's answer)
    let _carol = phone_of(&tb, "carol", "carol-pw", "media_standin_busy").await;

    let gw = SocketAddr::new(host(1), free_udp_port_on(host(1)).unwrap());
    let _gateway = SippCommand::scenario("uas_gateway")
        .local(gw.ip(), gw.port())
        .deadline(Duration::from_secs(120))
        .spawn()
        .unwrap();
    let mut db = tb.db().await.unwrap();
    sipstack_db::number::add(&db, &to_user("+442071230002", "bob"))
        .await
        .unwrap();
    sipstack_db::number::add(&db, &to_user("+442071230003", "carol"))
        .await
        .unwrap();
    sipstack_db::trunk::add(
        &mut db,
        &NewTrunk {
            name: "carrier".into(),
            gateways: vec![Gateway {
                uri: format!("sip:{gw}"),
                priority: 0,
            }],
            ..NewTrunk::default()
        },
    )
    .await
    .unwrap();
    sipstack_db::route::add(
        &db,
        &NewRoute {
            name: "us".into(),
            priority: 10,
            match_kind: MatchKind::Prefix,
            match_value: "+1".into(),
            source_domain: None,
            source: RouteSource::Subscriber,
            target: Target::Trunk("carrier".into()),
            service: None,
            description: String::new(),
        },
    )
    .await
    .unwrap();
    tb.reload_trunks().await.unwrap();
    tb.reload_routes().await.unwrap();

    let before = SystemTime::now();
    // a subscriber calls a subscriber, and hangs up
    let out = call_number(tb.edge(), "alice", "alice-pw", "+442071230002")
        .await
        .unwrap();
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(40)));
    let to_bob = call_id(&out);
    // ... an external number, out through the carrier's gateway
    let out = call_number(tb.edge(), "alice", "alice-pw", "+15551230000")
        .await
        .unwrap();
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(40)));
    let external = call_id(&out);
    // ... the media pool (the default route)
    let out = call_number(tb.edge(), "alice", "alice-pw", "5550100")
        .await
        .unwrap();
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(40)));
    let to_media = call_id(&out);
    // ... and a subscriber whose phone refuses
    let out = call_number(tb.edge(), "alice", "alice-pw", "+442071230003")
        .await
        .unwrap();
    assert_eq!(out.unexpected_codes, vec![500], "{}", out.diagnostics());
    let refused = call_id(&out);
    let after = SystemTime::now();
    // the media node's record of its call, as FreeSWITCH writes it
    sipstack_db::cdr::insert(
        &db,
        &NewCdr {
            call_uuid: "media-uuid-1".into(),
            caller_number: "alice".into(),
            callee_number: "5550100".into(),
            edge_node: "127.0.0.1".into(),
            media_node: node.to_string(),
            start_time: before,
            answer_time: Some(before),
            end_time: Some(after),
            duration: 1,
            billsec: 1,
            hangup_cause: "NORMAL_CLEARING".into(),
        },
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE sipstack_cdr SET sip_call_id = $1 WHERE call_uuid = 'media-uuid-1'",
        &[&to_media],
    )
    .await
    .unwrap();

    let calls = calls_once_shipped(&tb, 4, Duration::from_secs(30)).await;
    assert_eq!(calls.len(), 4, "four calls, four lines: {calls:#?}");

    let c = the_call(&calls, &to_bob);
    let e = c.edge.as_ref().unwrap();
    assert_eq!(
        (
            e.edge.as_str(),
            e.source.as_str(),
            e.source_subscriber.as_deref(),
            e.destination_kind.as_str(),
            e.sip_code,
            e.ended_by.as_deref()
        ),
        (
            "edge",
            "subscriber",
            Some("alice@example.com"),
            "user",
            200,
            Some("caller")
        ),
        "{c:#?}"
    );
    assert_eq!(
        (c.caller.as_str(), c.callee.as_str()),
        ("alice", "+442071230002")
    );
    let (answer, end) = (c.answer_time.unwrap(), c.end_time.unwrap());
    assert!(
        before <= c.start_time && c.start_time <= answer && answer <= end && end <= after,
        "{c:#?}"
    );
    assert!(c.media.is_none());

    let c = the_call(&calls, &external);
    let e = c.edge.as_ref().unwrap();
    assert_eq!(
        (
            e.destination_kind.as_str(),
            e.destination_trunk.as_deref(),
            e.sip_code
        ),
        ("trunk", Some("carrier"), 200),
        "{c:#?}"
    );
    assert_eq!(e.destination, format!("sip:{gw}"), "{c:#?}");

    let c = the_call(&calls, &to_media);
    let (e, m) = (c.edge.as_ref().unwrap(), c.media.as_ref().unwrap());
    assert_eq!(
        (e.destination_kind.as_str(), e.sip_code),
        ("pool", 200),
        "{c:#?}"
    );
    assert_eq!(e.destination, format!("sip:{node}"), "{c:#?}");
    assert_eq!(
        (m.call_uuid.as_str(), m.hangup_cause.as_str()),
        ("media-uuid-1", "NORMAL_CLEARING")
    );

    let c = the_call(&calls, &refused);
    let e = c.edge.as_ref().unwrap();
    assert_eq!((e.sip_code, e.ended_by.as_deref()), (503, None), "{c:#?}");
    assert!(c.answer_time.is_none(), "{c:#?}");

    // nothing was refused by the shipper, and the spool holds nothing more
    let spool = tb.state_dir().join("edge-edge/cdr-spool");
    assert!(!spool.join("rejected.log").exists());
    tb.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_delays_the_records_and_loses_none() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    tb.add_subscriber("bob", "bob-pw").await.unwrap();
    let _bob = phone_of(&tb, "bob", "bob-pw", "uas_user").await;
    let db = tb.db().await.unwrap();
    sipstack_db::number::add(&db, &to_user("+442071230002", "bob"))
        .await
        .unwrap();
    drop(db);
    tb.reload_routes().await.unwrap();
    // a call before the outage; alice's credentials are remembered by the edge
    let out = call_number(tb.edge(), "alice", "alice-pw", "+442071230002")
        .await
        .unwrap();
    out.ensure_all_succeeded(1).unwrap();
    let first = call_id(&out);
    calls_once_shipped(&tb, 1, Duration::from_secs(30)).await;

    tb.stop_postgres().await.unwrap();
    let mut during = Vec::new();
    for _ in 0..3 {
        let out = call_number(tb.edge(), "alice", "alice-pw", "+442071230002")
            .await
            .unwrap();
        out.ensure_all_succeeded(1)
            .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(40)));
        during.push(call_id(&out));
    }
    // the shipper tries and keeps them meanwhile
    tokio::time::sleep(Duration::from_secs(5)).await;
    tb.start_postgres().await.unwrap();

    let calls = calls_once_shipped(&tb, 4, Duration::from_secs(60)).await;
    assert_eq!(calls.len(), 4, "{calls:#?}");
    for id in std::iter::once(&first).chain(&during) {
        let c = the_call(&calls, id);
        assert_eq!(c.edge.as_ref().map(|e| e.sip_code), Some(200), "{c:#?}");
    }
    tb.down().await.unwrap();
}
