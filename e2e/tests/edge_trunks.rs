//! Trunks against the real edge: carriers identified by their address deliver
//! calls to the platform's numbers, subscribers' calls go out through a
//! carrier's gateways (digest credentials towards the carrier, failover to the
//! next gateway), a registration-based PBX gets its numbers and its calls are
//! trunk calls, nothing transits from trunk to trunk without a route, and the
//! call over a trunk's or a subscriber's limit is refused. SIPp
//! plays the carriers, the gateways and the PBX on their own 127.0.0.x addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sipstack_db::number::{NewNumber, NumberMatch, NumberTarget};
use sipstack_db::route::{MatchKind, NewRoute, RouteSource, Target};
use sipstack_db::trunk::{encrypt_password, Gateway, NewTrunk, Transport, TrunkAddress};
use sipstack_e2e::sipp::{free_udp_port_on, InjectionFile, SippCommand, SippOutcome, SippProcess};
use sipstack_e2e::testbed::{
    call_number, free_udp_and_tcp_port, phone, register_phone, Testbed, TestbedSpec, DOMAIN,
};

/// Carriers' and gateways' hosts: far from the media stand-ins (127.0.0.2 and up).
fn host(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 60 + n))
}

fn free_addr(n: u8) -> SocketAddr {
    let ip = host(n);
    SocketAddr::new(ip, free_udp_port_on(ip).unwrap())
}

fn trunk(name: &str) -> NewTrunk {
    NewTrunk {
        name: name.into(),
        auth: None,
        account: None,
        strip_digits: 0,
        prefix: String::new(),
        description: String::new(),
        addresses: Vec::new(),
        gateways: Vec::new(),
        max_calls: None,
        max_cps: None,
    }
}

fn address(ip: IpAddr, port: u16, transport: Transport) -> TrunkAddress {
    TrunkAddress {
        address: ip.to_string(),
        port,
        transport,
    }
}

fn gateway(addr: SocketAddr, priority: i32) -> Gateway {
    Gateway {
        uri: format!("sip:{addr}"),
        priority,
    }
}

fn number(value: &str, target: NumberTarget) -> NewNumber {
    NewNumber {
        match_kind: NumberMatch::Exact,
        number: value.into(),
        target,
        description: String::new(),
    }
}

fn route_to_trunk(name: &str, prefix: &str, trunk: &str, source: RouteSource) -> NewRoute {
    NewRoute {
        name: name.into(),
        priority: 10,
        match_kind: MatchKind::Prefix,
        match_value: prefix.into(),
        source_domain: None,
        source,
        target: Target::Trunk(trunk.into()),
        service: None,
        description: String::new(),
    }
}

/// A call from `from` (a carrier's host: no credentials) to `number`.
async fn call_from(edge: SocketAddr, from: SocketAddr, number: &str) -> SippOutcome {
    SippCommand::scenario("uac_trusted")
        .remote(edge)
        .local(from.ip(), from.port())
        .service(number)
        .injection(InjectionFile::sequential().line(["carrier", "carrier.test"]))
        .max_calls(1)
        .deadline(Duration::from_secs(20))
        .run_async()
        .await
        .unwrap()
}

/// Files under `dir` (configs, logs, state) that hold `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// A gateway that answers every call, on `addr`.
fn answering_gateway(addr: SocketAddr) -> SippProcess {
    SippCommand::scenario("uas_gateway")
        .local(addr.ip(), addr.port())
        .deadline(Duration::from_secs(120))
        .spawn()
        .unwrap()
}

/// The Request-URI users of the calls `gw` received.
fn received_numbers(gw: &SippProcess) -> Vec<String> {
    gw.log_lines()
        .iter()
        .filter(|l| l.tag == "GATEWAY")
        .filter_map(|l| l.get("ruser").map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_on_its_address_reaches_a_number_and_no_one_else_is_let_in() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    // registered from the port the phone then answers on
    let phone_port = free_udp_and_tcp_port().unwrap();
    register_phone(tb.edge(), "alice", "alice-pw", phone_port)
        .await
        .unwrap();
    let _alice = phone(phone_port).unwrap();

    let carrier = free_addr(1);
    let stranger = free_addr(2);
    // a second carrier allowed from one port of its host only
    let port_bound = free_addr(3);
    let mut db = tb.db().await.unwrap();
    let mut a = trunk("carrier-a");
    a.addresses = vec![address(carrier.ip(), 0, Transport::Any)];
    sipstack_db::trunk::add(&mut db, &a).await.unwrap();
    let mut b = trunk("carrier-b");
    b.addresses = vec![address(port_bound.ip(), port_bound.port(), Transport::Udp)];
    sipstack_db::trunk::add(&mut db, &b).await.unwrap();
    sipstack_db::number::add(
        &db,
        &number(
            "+442071230001",
            NumberTarget::User {
                username: "alice".into(),
                domain: DOMAIN.into(),
            },
        ),
    )
    .await
    .unwrap();

    // before the reload the edge knows no trunk: the carrier is a stranger
    let out = call_from(tb.edge(), carrier, "+442071230001").await;
    assert_eq!(out.unexpected_codes, vec![403], "{}", out.diagnostics());

    tb.reload_trunks().await.unwrap();

    // the carrier's call to the number rings alice, without a challenge
    let out = call_from(tb.edge(), carrier, "+442071230001").await;
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(40)));

    // the same INVITE from a host that is no trunk's
    let out = call_from(tb.edge(), stranger, "+442071230001").await;
    assert_eq!(out.successful(), 0);
    assert_eq!(out.unexpected_codes, vec![403], "{}", out.diagnostics());

    // carrier-b's host on the allowed port is let in, on another port it is not
    let out = call_from(tb.edge(), port_bound, "+442071230001").await;
    out.ensure_all_succeeded(1).unwrap();
    let other_port = SocketAddr::new(port_bound.ip(), free_udp_port_on(port_bound.ip()).unwrap());
    let out = call_from(tb.edge(), other_port, "+442071230001").await;
    assert_eq!(out.unexpected_codes, vec![403], "{}", out.diagnostics());

    // a number that is not the platform's: transit, refused without a route
    let out = call_from(tb.edge(), carrier, "+15551234567").await;
    assert_eq!(out.unexpected_codes, vec![403], "{}", out.diagnostics());
    assert!(
        tb.edge_log(200).contains("no route for calls from trunks"),
        "{}",
        tb.edge_log(40)
    );

    tb.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_out_answer_the_carriers_challenge_and_fail_over_to_the_next_gateway() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    let key = tb.trunk_key().unwrap();

    // gateway 1 challenges, checks the credentials and has no capacity (503);
    // gateway 2 answers
    let gw1 = free_addr(11);
    let gw2 = free_addr(12);
    let challenger = SippCommand::scenario("uas_gateway_challenge")
        .local(gw1.ip(), gw1.port())
        .key("gw_user", "acct-7")
        .key("gw_pass", "s3cret pass")
        .deadline(Duration::from_secs(120))
        .spawn()
        .unwrap();
    let answering = answering_gateway(gw2);

    let mut db = tb.db().await.unwrap();
    let mut carrier = trunk("carrier");
    carrier.auth = Some(("acct-7".into(), encrypt_password(&key, "s3cret pass")));
    carrier.gateways = vec![gateway(gw2, 20), gateway(gw1, 10)];
    // E.164 towards a carrier that wants 00 instead of +
    carrier.strip_digits = 1;
    carrier.prefix = "00".into();
    sipstack_db::trunk::add(&mut db, &carrier).await.unwrap();
    // gateway 1 of this one never answers: the timeout moves the call on
    let dead = free_addr(13);
    let gw3 = free_addr(14);
    let answering_3 = answering_gateway(gw3);
    let mut silent = trunk("silent-carrier");
    silent.gateways = vec![gateway(dead, 0), gateway(gw3, 1)];
    sipstack_db::trunk::add(&mut db, &silent).await.unwrap();
    sipstack_db::route::add(
        &db,
        &route_to_trunk("us", "+1", "carrier", RouteSource::Subscriber),
    )
    .await
    .unwrap();
    sipstack_db::route::add(
        &db,
        &route_to_trunk("fr", "+33", "silent-carrier", RouteSource::Subscriber),
    )
    .await
    .unwrap();
    tb.reload_trunks().await.unwrap();

    let out = call_number(tb.edge(), "alice", "alice-pw", "+15551230000")
        .await
        .unwrap();
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(60)));
    // the challenge was answered with the trunk's credentials (gateway 1
    // answers 503 only to those; anything else gets a 403 that ends the call)
    let auth: Vec<_> = challenger
        .log_lines()
        .into_iter()
        .filter(|l| l.tag == "GATEWAY_AUTH")
        .collect();
    assert_eq!(auth.len(), 1, "{:?}", challenger.log_lines());
    assert_eq!(auth[0].get("valid"), Some("true"));
    assert_eq!(auth[0].get("ruser"), Some("0015551230000"));
    assert_eq!(
        received_numbers(&answering),
        vec!["0015551230000".to_string()]
    );
    // the password is in no file the platform rendered, logged or keeps
    assert_eq!(
        files_containing(&tb.state_dir(), b"s3cret"),
        Vec::<String>::new()
    );

    let started = Instant::now();
    let out = call_number(tb.edge(), "alice", "alice-pw", "+33140000000")
        .await
        .unwrap();
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(60)));
    assert_eq!(
        received_numbers(&answering_3),
        vec!["+33140000000".to_string()]
    );
    // the edge's gateway timeout (3 s) passed before the second gateway got it
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    drop(challenger);
    tb.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_pbx_gets_its_numbers_and_its_calls_are_trunk_calls() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("pbx-acme", "pbx-pw").await.unwrap();
    // the PBX registers with its account and answers on the contact it registered
    let pbx_port = free_udp_and_tcp_port().unwrap();
    register_phone(tb.edge(), "pbx-acme", "pbx-pw", pbx_port)
        .await
        .unwrap();
    let pbx = SippCommand::scenario("uas_gateway")
        .local("127.0.0.1".parse().unwrap(), pbx_port)
        .deadline(Duration::from_secs(120))
        .spawn()
        .unwrap();

    let carrier_host = free_addr(21);
    let gw = free_addr(22);
    let carrier_gw = answering_gateway(gw);
    let mut db = tb.db().await.unwrap();
    let mut acme = trunk("acme-pbx");
    acme.account = Some(("pbx-acme".into(), DOMAIN.into()));
    sipstack_db::trunk::add(&mut db, &acme).await.unwrap();
    let mut carrier = trunk("carrier");
    carrier.addresses = vec![address(carrier_host.ip(), 0, Transport::Any)];
    carrier.gateways = vec![gateway(gw, 0)];
    sipstack_db::trunk::add(&mut db, &carrier).await.unwrap();
    let mut block = number("+4420799", NumberTarget::Trunk("acme-pbx".into()));
    block.match_kind = NumberMatch::Prefix;
    sipstack_db::number::add(&db, &block).await.unwrap();
    tb.reload_trunks().await.unwrap();

    // a carrier's call to a number of the PBX's block reaches the PBX's
    // registered contact, with the number as the user part
    let out = call_from(tb.edge(), carrier_host, "+442079912345").await;
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(60)));
    assert_eq!(received_numbers(&pbx), vec!["+442079912345".to_string()]);

    // the PBX's own calls out are trunk calls: a subscribers' route does not
    // take them (transit), a route for calls from trunks does
    sipstack_db::route::add(
        &db,
        &route_to_trunk("out-subscribers", "+1", "carrier", RouteSource::Subscriber),
    )
    .await
    .unwrap();
    tb.reload_routes().await.unwrap();
    let out = call_number(tb.edge(), "pbx-acme", "pbx-pw", "+15550001111")
        .await
        .unwrap();
    assert_eq!(out.unexpected_codes, vec![403], "{}", out.diagnostics());
    assert!(received_numbers(&carrier_gw).is_empty());

    let mut from_trunks = route_to_trunk("out-trunks", "+1", "carrier", RouteSource::Trunk);
    from_trunks.priority = 5;
    sipstack_db::route::add(&db, &from_trunks).await.unwrap();
    tb.reload_routes().await.unwrap();
    let out = call_number(tb.edge(), "pbx-acme", "pbx-pw", "+15550001111")
        .await
        .unwrap();
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(60)));
    assert_eq!(
        received_numbers(&carrier_gw),
        vec!["+15550001111".to_string()]
    );

    // a call from the carrier back out to the carrier is a loop, refused
    let mut transit = route_to_trunk("transit-us", "+1", "carrier", RouteSource::Any);
    transit.priority = 1;
    sipstack_db::route::add(&db, &transit).await.unwrap();
    tb.reload_routes().await.unwrap();
    let out = call_from(tb.edge(), carrier_host, "+15550002222").await;
    assert_eq!(out.unexpected_codes, vec![482], "{}", out.diagnostics());

    tb.down().await.unwrap();
}

/// `calls` calls from `from` (a carrier's host) to `number`, each held `hold`.
fn calls_from(
    edge: SocketAddr,
    from: SocketAddr,
    number: &str,
    calls: u64,
    hold: Duration,
) -> SippCommand {
    SippCommand::scenario("uac_trusted")
        .remote(edge)
        .local(from.ip(), from.port())
        .service(number)
        .injection(InjectionFile::sequential().line(["carrier", "carrier.test"]))
        .max_calls(calls)
        .call_limit(u32::try_from(calls).unwrap_or(u32::MAX))
        .pause(hold)
}

/// Waits until `process` logged `n` answered calls.
async fn until_answered(process: &SippProcess, n: usize, what: &str) {
    let started = Instant::now();
    while process
        .log_lines()
        .iter()
        .filter(|l| l.tag == "ANSWERED")
        .count()
        < n
    {
        // bounds the wait for the call set-up, not the code under test
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: fewer than {n} calls answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_over_a_limit_is_refused_and_the_others_go_on() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    tb.add_subscriber("bob", "bob-pw").await.unwrap();
    let phone_port = free_udp_and_tcp_port().unwrap();
    register_phone(tb.edge(), "alice", "alice-pw", phone_port)
        .await
        .unwrap();
    // answers for the whole test, which holds calls for a while
    let _alice = SippCommand::scenario("uas_user")
        .local("127.0.0.1".parse().unwrap(), phone_port)
        .deadline(Duration::from_secs(180))
        .spawn()
        .unwrap();

    let carrier = free_addr(31);
    let bursty = free_addr(32);
    let mut db = tb.db().await.unwrap();
    let mut a = trunk("carrier-a");
    a.addresses = vec![address(carrier.ip(), 0, Transport::Any)];
    a.max_calls = Some(2);
    sipstack_db::trunk::add(&mut db, &a).await.unwrap();
    let mut b = trunk("carrier-b");
    b.addresses = vec![address(bursty.ip(), 0, Transport::Any)];
    sipstack_db::trunk::add(&mut db, &b).await.unwrap();
    sipstack_db::number::add(
        &db,
        &number(
            "+442071230001",
            NumberTarget::User {
                username: "alice".into(),
                domain: DOMAIN.into(),
            },
        ),
    )
    .await
    .unwrap();
    sipstack_db::limits::set_subscriber_limit(&db, "bob", DOMAIN, Some(1))
        .await
        .unwrap();
    tb.reload_trunks().await.unwrap();

    // carrier-a's two calls are up; its third is one more than it may carry
    let held = calls_from(
        tb.edge(),
        carrier,
        "+442071230001",
        2,
        Duration::from_secs(10),
    )
    .deadline(Duration::from_secs(60))
    .spawn()
    .unwrap();
    until_answered(&held, 2, "carrier-a's held calls").await;
    let third = free_addr(31);
    let out = call_from(tb.edge(), third, "+442071230001").await;
    assert_eq!(out.unexpected_codes, vec![503], "{}", out.diagnostics());
    assert!(
        tb.edge_log(100).contains("concurrent calls of trunk"),
        "{}",
        tb.edge_log(40)
    );
    // another trunk's call and a subscriber's are not the carrier's to count
    let out = call_from(tb.edge(), bursty, "+442071230001").await;
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(40)));
    // bob may place one call at once (to alice's number): the second while the
    // first is up is refused
    let bobs_call = SippCommand::scenario("uac_call")
        .remote(tb.edge())
        .service("+442071230001")
        .injection(InjectionFile::users(&[("bob", DOMAIN, "bob-pw")]))
        .max_calls(1)
        .pause(Duration::from_secs(10))
        .deadline(Duration::from_secs(60))
        .spawn()
        .unwrap();
    until_answered(&bobs_call, 1, "bob's first call").await;
    let out = call_number(tb.edge(), "bob", "bob-pw", "+442071230001")
        .await
        .unwrap();
    assert_eq!(out.unexpected_codes, vec![486], "{}", out.diagnostics());
    // the held calls end normally (their BYEs pass), and the count goes down
    held.wait()
        .unwrap()
        .ensure_all_succeeded(2)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(40)));
    bobs_call.wait().unwrap().ensure_all_succeeded(1).unwrap();
    let out = call_from(tb.edge(), carrier, "+442071230001").await;
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(40)));
    let out = call_number(tb.edge(), "bob", "bob-pw", "+442071230001")
        .await
        .unwrap();
    out.ensure_all_succeeded(1).unwrap();

    // calls per second: carrier-b may start 2 a second. A burst of 8 within a
    // fraction of a second spans at most 3 one-second windows (on a busy machine):
    // 2 to 6 get through, every other one gets a 503.
    sipstack_db::limits::set_trunk_limits(
        &mut db,
        "carrier-b",
        sipstack_db::limits::TrunkLimits {
            max_calls: None,
            max_cps: Some(2),
        },
    )
    .await
    .unwrap();
    tb.reload_trunks().await.unwrap();
    let out = calls_from(
        tb.edge(),
        bursty,
        "+442071230001",
        8,
        Duration::from_millis(0),
    )
    .rate(50)
    .deadline(Duration::from_secs(30))
    .run_async()
    .await
    .unwrap();
    let passed = out.successful();
    assert!(
        (2..=6).contains(&passed),
        "{passed} passed: {}",
        out.diagnostics()
    );
    assert_eq!(
        out.unexpected_codes,
        vec![503; usize::try_from(8 - passed).unwrap()],
        "{}",
        out.diagnostics()
    );
    assert!(tb.edge_log(200).contains("calls per second of trunk"));

    tb.down().await.unwrap();
}
