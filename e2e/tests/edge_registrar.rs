//! The registrar and digest authentication of the rendered kamailio.cfg, on real
//! Kamailio and PostgreSQL, with SIPp as the user agents.

use std::time::Duration;

use sipstack_e2e::sipp::{free_udp_port_on, InjectionFile, SippCommand};
use sipstack_e2e::testbed::{media_ip, standin, users, PoolSpec, Testbed, TestbedSpec, DOMAIN, EDGE_IP};

fn spec_with_pool(member: std::net::SocketAddr) -> TestbedSpec {
    TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        default_pool: Some("media".into()),
        ..Default::default()
    }
}

async fn location_rows(tb: &Testbed, user: &str) -> Vec<(String, String)> {
    let db = tb.db().await.unwrap();
    db.query("SELECT contact, user_agent FROM location WHERE username = $1 AND domain = $2", &[&user, &DOMAIN])
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
    assert_eq!(rows.len(), 1, "one binding in location; edge log:\n{}", tb.edge_log(20));
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
        rejections.push((line.get("status").map(str::to_string), line.get("realm").map(str::to_string)));
    }
    assert_eq!(rejections[0], (Some("401".into()), Some(DOMAIN.into())));
    assert_eq!(rejections[0], rejections[1], "unknown user and wrong password must look the same");
    assert_eq!(location_rows(&tb, "mallory").await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_restart_and_calls_reach_them() {
    let (media, _standin) = standin(0).unwrap();
    let tb = Testbed::up(&spec_with_pool(media)).await.unwrap();
    tb.add_subscriber("bob", "bob-secret").await.unwrap();

    let phone_port = free_udp_port_on(EDGE_IP).unwrap();
    SippCommand::scenario("register")
        .remote(tb.edge())
        .local(EDGE_IP, phone_port)
        .injection(InjectionFile::users(&users(&[("bob", "bob-secret")])))
        .key("expires", "600")
        .max_calls(1)
        .deadline(Duration::from_secs(15))
        .run_async()
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap();

    tb.restart_edge().await.unwrap();

    // bob's phone answers on the registered address
    let phone = SippCommand::scenario("uas_user").local(EDGE_IP, phone_port).deadline(Duration::from_secs(60)).spawn().unwrap();
    // a media node (trusted, no challenge) calls bob through the edge
    let out = SippCommand::scenario("uac_trusted")
        .remote(tb.edge())
        .local_ip(media_ip(0))
        .service("bob")
        .injection(InjectionFile::sequential().line(["ivr", DOMAIN]))
        .max_calls(2)
        .deadline(Duration::from_secs(20))
        .run_async()
        .await
        .unwrap();
    out.ensure_all_succeeded(2).unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", tb.edge_log(30)));
    let received = phone.stop().unwrap();
    assert_eq!(received.lines("RECEIVED").count(), 2, "bob's phone got both calls after the restart");
}
