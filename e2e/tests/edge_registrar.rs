//! The registrar and digest authentication of the rendered kamailio.cfg, on real
//! Kamailio and PostgreSQL, with SIPp as the user agents.

use std::time::Duration;

use sipstack_e2e::sipp::{free_udp_port_on, InjectionFile, SippCommand};
use sipstack_e2e::testbed::{
    call_from_media, media_caller, phone, register_command, register_phone, register_with_contact,
    standin, users, PoolSpec, Testbed, TestbedSpec, DOMAIN, EDGE_IP,
};

fn spec_with_pool(member: std::net::SocketAddr) -> TestbedSpec {
    TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        default_pool: Some("media".into()),
        ..Default::default()
    }
}

/// `spec_with_pool` and a second pool whose one member is `caller`: the test
/// calls from there as a media node would (an IVR calling out).
fn spec_with_pool_and_caller(
    member: std::net::SocketAddr,
    caller: std::net::SocketAddr,
) -> TestbedSpec {
    let mut spec = spec_with_pool(member);
    spec.pools
        .push(PoolSpec::new("ivr", 2, "roundRobin").member(caller, 1, 0));
    spec
}

async fn location_rows(tb: &Testbed, user: &str) -> Vec<(String, String)> {
    let db = tb.db().await.unwrap();
    db.query(
        "SELECT contact, user_agent FROM location WHERE username = $1 AND domain = $2",
        &[&user, &DOMAIN],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_needs_the_right_password() {
    let (media, _standin) = standin(0).unwrap();
    let tb = Testbed::up(&spec_with_pool(media)).await.unwrap();
    tb.add_subscriber("alice", "correct-horse").await.unwrap();

    // no credentials: 401 with a digest challenge for the domain
    let out = SippCommand::scenario("register_noauth")
        .remote(tb.edge())
        .injection(InjectionFile::sequential().line(["alice", DOMAIN]))
        .key("expires", "300")
        .max_calls(1)
        .deadline(Duration::from_secs(15))
        .run_async()
        .await
        .unwrap();
    out.ensure_all_succeeded(1).unwrap();
    let challenge = out.lines("CHALLENGED").next().expect("a CHALLENGED line");
    assert_eq!(challenge.get("realm"), Some(DOMAIN));

    // right password: 200, and the contact reaches the location table (write-back)
    let port = free_udp_port_on(EDGE_IP).unwrap();
    let out = SippCommand::scenario("register")
        .remote(tb.edge())
        .local(EDGE_IP, port)
        .injection(InjectionFile::users(&users(&[("alice", "correct-horse")])))
        .key("expires", "300")
        .max_calls(1)
        .deadline(Duration::from_secs(15))
        .run_async()
        .await
        .unwrap();
    out.ensure_all_succeeded(1).unwrap();
    let mut rows = Vec::new();
    for _ in 0..50 {
        rows = location_rows(&tb, "alice").await;
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows.len(),
        1,
        "one binding in location; edge log:\n{}",
        tb.edge_log(20)
    );
    assert!(rows[0].0.contains(&format!("127.0.0.1:{port}")), "{rows:?}");

    // wrong password and unknown user: the same rejection
    let mut rejections = Vec::new();
    for (user, password) in [("alice", "wrong"), ("mallory", "whatever")] {
        let out = SippCommand::scenario("register_expect_reject")
            .remote(tb.edge())
            .injection(InjectionFile::users(&users(&[(user, password)])))
            .key("expires", "300")
            .max_calls(1)
            .deadline(Duration::from_secs(15))
            .run_async()
            .await
            .unwrap();
        out.ensure_all_succeeded(1).unwrap();
        let line = out.lines("REJECTED").next().expect("a REJECTED line");
        rejections.push((
            line.get("status").map(str::to_string),
            line.get("realm").map(str::to_string),
        ));
    }
    assert_eq!(rejections[0], (Some("401".into()), Some(DOMAIN.into())));
    assert_eq!(
        rejections[0], rejections[1],
        "unknown user and wrong password must look the same"
    );
    assert_eq!(location_rows(&tb, "mallory").await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_restart_and_calls_reach_them() {
    let (media, _standin) = standin(0).unwrap();
    let ivr = media_caller(1).unwrap();
    let tb = Testbed::up(&spec_with_pool_and_caller(media, ivr))
        .await
        .unwrap();
    tb.add_subscriber("bob", "bob-secret").await.unwrap();

    let phone_port = free_udp_port_on(EDGE_IP).unwrap();
    register_phone(tb.edge(), "bob", "bob-secret", phone_port)
        .await
        .unwrap();

    tb.restart_edge().await.unwrap();

    // bob's phone answers on the registered address
    let phone = phone(phone_port).unwrap();
    // a media node (trusted, no challenge) calls bob through the edge
    let out = call_from_media(tb.edge(), ivr, "bob", 2).await.unwrap();
    out.ensure_all_succeeded(2)
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", tb.edge_log(30)));
    let received = phone.stop().unwrap();
    assert_eq!(
        received.lines("RECEIVED").count(),
        2,
        "bob's phone got both calls after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_does_not_stop_registrations_or_calls() {
    let (media, _standin) = standin(0).unwrap();
    let tb = Testbed::up(&spec_with_pool(media)).await.unwrap();
    tb.add_subscriber("dave", "dave-pw").await.unwrap();
    tb.add_subscriber("erin", "erin-pw").await.unwrap();
    let dave_port = free_udp_port_on(EDGE_IP).unwrap();
    register_phone(tb.edge(), "dave", "dave-pw", dave_port)
        .await
        .unwrap();
    let before = expiry(&tb, "dave").await;

    tb.stop_postgres().await.unwrap();

    // dave authenticated before the outage: he re-registers and calls
    register_phone(tb.edge(), "dave", "dave-pw", dave_port)
        .await
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", tb.edge_log(20)));
    let out = SippCommand::scenario("uac_call")
        .remote(tb.edge())
        .service("4711")
        .injection(InjectionFile::users(&users(&[("dave", "dave-pw")])))
        .max_calls(2)
        .deadline(Duration::from_secs(20))
        .run_async()
        .await
        .unwrap();
    out.ensure_all_succeeded(2).unwrap();
    // a wrong password is still refused, and erin (never seen) cannot be checked: refused
    for (user, password) in [("dave", "not-daves"), ("erin", "erin-pw")] {
        SippCommand::scenario("register_expect_reject")
            .remote(tb.edge())
            .injection(InjectionFile::users(&users(&[(user, password)])))
            .key("expires", "600")
            .max_calls(1)
            .deadline(Duration::from_secs(15))
            .run_async()
            .await
            .unwrap()
            .ensure_all_succeeded(1)
            .unwrap();
    }

    // the database comes back: the re-registration done meanwhile is written
    tb.start_postgres().await.unwrap();
    let mut after = before;
    for _ in 0..100 {
        if let Ok(Some(t)) = tokio::time::timeout(Duration::from_secs(2), expiry(&tb, "dave")).await
        {
            after = Some(t);
            if after > before {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        after > before,
        "the binding refreshed during the outage reaches the database: {before:?} -> {after:?}"
    );
}

/// A phone whose digest username is `user@domain` (its HA1 is the subscriber's
/// ha1b) keeps registering through a database outage, as one with a plain
/// username does: the credential cache remembers ha1b under the whole name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_username_with_a_domain_is_remembered_through_an_outage() {
    let (media, _standin) = standin(0).unwrap();
    let tb = Testbed::up(&spec_with_pool(media)).await.unwrap();
    tb.add_subscriber("grace", "grace-pw").await.unwrap();
    let port = free_udp_port_on(EDGE_IP).unwrap();
    let full_name = format!("grace@{DOMAIN}");
    let register = |password: &str| {
        register_command(tb.edge(), "grace", password, port).injection(
            InjectionFile::sequential().line([
                "grace".to_string(),
                DOMAIN.to_string(),
                InjectionFile::auth_keyword(&full_name, password),
            ]),
        )
    };
    register("grace-pw")
        .run_async()
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", tb.edge_log(20)));

    tb.stop_postgres().await.unwrap();

    register("grace-pw")
        .run_async()
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", tb.edge_log(20)));
    // the remembered ha1b is not a master key: a wrong password is still refused
    let wrong = register("not-graces").run_async().await.unwrap();
    assert_eq!(wrong.successful(), 0, "{}", wrong.diagnostics());
}

async fn expiry(tb: &Testbed, user: &str) -> Option<std::time::SystemTime> {
    let db = tb.db().await.ok()?;
    let row = db
        .query_opt("SELECT expires FROM location WHERE username = $1", &[&user])
        .await
        .ok()??;
    Some(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_behind_nat_is_reached_at_its_public_address_and_kept_alive() {
    let (media, _standin) = standin(0).unwrap();
    let ivr = media_caller(1).unwrap();
    let mut spec = spec_with_pool_and_caller(media, ivr);
    spec.extra_edge_spec = "  nat: {enabled: true, keepaliveIntervalSeconds: 5}\n".into();
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("frank", "frank-pw").await.unwrap();

    // the phone believes it is 192.168.1.10:5060; its packets come from 127.0.0.1:port
    let port = free_udp_port_on(EDGE_IP).unwrap();
    register_with_contact(tb.edge(), "frank", "frank-pw", port, "192.168.1.10:5060")
        .run_async()
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap();

    // the registrar keeps the private contact and the address it came from
    let mut received = None;
    for _ in 0..50 {
        let db = tb.db().await.unwrap();
        if let Some(row) = db
            .query_opt(
                "SELECT contact, received FROM location WHERE username = 'frank'",
                &[],
            )
            .await
            .unwrap()
        {
            let (contact, rcv): (String, Option<String>) = (row.get(0), row.get(1));
            assert!(contact.contains("192.168.1.10"), "{contact}");
            received = rcv;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        received.as_deref(),
        Some(format!("sip:127.0.0.1:{port}").as_str())
    );

    // keep-alive OPTIONS reach the phone's public address within one interval (5 s)
    let keepalive = SippCommand::scenario("uas_keepalive")
        .local(EDGE_IP, port)
        .max_calls(1)
        .deadline(Duration::from_secs(12))
        .run_async()
        .await
        .unwrap();
    assert_eq!(
        keepalive.lines("KEEPALIVE_RECEIVED").count(),
        1,
        "{}",
        keepalive.diagnostics()
    );

    // a call to frank reaches the public address, not the private one
    let phone = phone(port).unwrap();
    let out = call_from_media(tb.edge(), ivr, "frank", 1).await.unwrap();
    out.ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(20)));
    assert_eq!(phone.stop().unwrap().lines("RECEIVED").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_brief_registrations_get_423_and_domains_match_in_any_case() {
    let (media, _standin) = standin(0).unwrap();
    let tb = Testbed::up(&spec_with_pool(media)).await.unwrap();
    tb.add_subscriber("gina", "gina-pw").await.unwrap();

    // minExpires is 10 in the testbed: 5 s is refused, not silently lengthened
    let out = SippCommand::scenario("register_expect_reject")
        .remote(tb.edge())
        .injection(InjectionFile::users(&users(&[("gina", "gina-pw")])))
        .key("expires", "5")
        .max_calls(1)
        .deadline(Duration::from_secs(15))
        .run_async()
        .await
        .unwrap();
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(
        out.lines("REJECTED").next().and_then(|l| l.get("status")),
        Some("423")
    );

    // the phone writes the domain in capitals; the subscriber's is stored in lower case
    let port = free_udp_port_on(EDGE_IP).unwrap();
    SippCommand::scenario("register")
        .remote(tb.edge())
        .local(EDGE_IP, port)
        .injection(InjectionFile::users(&[("gina", "EXAMPLE.Com", "gina-pw")]))
        .key("expires", "600")
        .max_calls(1)
        .deadline(Duration::from_secs(15))
        .run_async()
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(20)));
}
