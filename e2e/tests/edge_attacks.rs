//! Attacks on the real edge, from nothing but a UDP socket on the same host. Each
//! test sends what an attacker would and checks that the edge refuses it and that
//! nothing reaches the target it named.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sipstack_e2e::rawsip::{HandDrivenNode, SipMessage, SipSocket};
use sipstack_e2e::sipp::{free_udp_port_on, InjectionFile, SippCommand};
use sipstack_e2e::testbed::{
    call_from_media, media_caller, media_ip, phone, register_phone, register_with_contact,
    PoolSpec, Testbed, TestbedSpec, DOMAIN, EDGE_IP,
};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A platform whose default pool has the one member `member`.
fn one_member_pool(member: SocketAddr) -> TestbedSpec {
    TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        default_pool: Some("media".into()),
        ..Default::default()
    }
}

/// A request inside a made-up dialog: tags, Call-ID and the Route are the attacker's.
fn in_dialog_request(
    method: &str,
    target: SocketAddr,
    route: &str,
    attacker: SocketAddr,
    call_id: &str,
    tags: (&str, &str),
) -> String {
    let event = if method == "NOTIFY" {
        "Event: presence\r\nSubscription-State: active;expires=600\r\n"
    } else {
        ""
    };
    format!(
        "{method} sip:victim@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {attacker};branch=z9hG4bK-{call_id};rport\r\n\
         Route: {route}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:mallory@{DOMAIN}>;tag={from_tag}\r\n\
         To: <sip:victim@{target}>;tag={to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 7 {method}\r\n\
         Contact: <sip:mallory@{attacker}>\r\n\
         {event}\
         Content-Length: 0\r\n\r\n",
        from_tag = tags.0,
        to_tag = tags.1,
    )
}

/// The final reply to each of `call_ids` that reaches `attacker` within a few seconds.
fn final_replies(attacker: &SipSocket, call_ids: &[String]) -> Vec<(String, Option<u16>)> {
    let replies = attacker.drain(Duration::from_secs(3)).unwrap();
    call_ids
        .iter()
        .map(|id| {
            let code = replies
                .iter()
                .filter(|m| m.header("Call-ID") == Some(id.as_str()))
                .filter_map(SipMessage::status)
                .find(|c| *c >= 200);
            (id.clone(), code)
        })
        .collect()
}

fn assert_nothing_reached(victim: &SipSocket, what: &str) {
    let reached = victim.drain(Duration::from_secs(2)).unwrap();
    assert!(
        reached.is_empty(),
        "{} {what} reached the victim through the edge, e.g.:\n{}",
        reached.len(),
        reached[0].text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_in_dialog_requests_are_refused_and_nothing_is_forwarded() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    let edge = tb.edge();
    let victim = SipSocket::bind(ip(60)).unwrap();
    let target = victim.local_addr().unwrap();
    let attacker = SipSocket::bind(ip(61)).unwrap();
    let from = attacker.local_addr().unwrap();

    let routes = [
        format!("<sip:{edge};lr>"),
        format!("<sip:{DOMAIN};lr>"),
        format!("<sip:{edge};lr;sig=0123456789abcdef0123456789abcdef>"),
        // a Route that does not name the edge at all
        format!("<sip:{target};lr>"),
    ];
    let mut call_ids = Vec::new();
    for (r, route) in routes.iter().enumerate() {
        for method in ["INVITE", "MESSAGE", "BYE", "OPTIONS", "NOTIFY"] {
            let call_id = format!("forged-{r}-{method}");
            let req = in_dialog_request(method, target, route, from, &call_id, ("f1", "t1"));
            attacker.send(edge, &req).unwrap();
            call_ids.push(call_id);
        }
        // an ACK is never answered, but must not be relayed either
        let req = in_dialog_request(
            "ACK",
            target,
            route,
            from,
            &format!("forged-{r}-ACK"),
            ("f1", "t1"),
        );
        attacker.send(edge, &req).unwrap();
    }

    let replies = final_replies(&attacker, &call_ids);
    for (id, code) in &replies {
        assert!(
            matches!(code, Some(403) | Some(404)),
            "{id}: the edge answered {code:?}, not 403/404\n{}",
            tb.edge_log(30)
        );
    }
    assert_nothing_reached(&victim, "forged in-dialog requests");
    assert!(
        tb.edge_log(200)
            .contains("without this edge's signature: refused"),
        "{}",
        tb.edge_log(30)
    );
}

/// A call through the edge to a media node driven by hand: its ACK and its BYE
/// follow the signed Record-Route, the BYE after the edge was restarted. The
/// signature the media node saw opens no other dialog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_dialog_survives_an_edge_restart_and_its_signature_opens_no_other_dialog() {
    let node = HandDrivenNode::bind(media_ip(0)).unwrap();
    let node_addr = node.local_addr().unwrap();
    let tb = Testbed::up(&one_member_pool(node_addr)).await.unwrap();
    tb.add_subscriber("alice", "alice-secret-1").await.unwrap();
    tb.wait_for_destinations(Duration::from_secs(10), |l| l.iter().all(|d| d.is_active()))
        .await
        .unwrap();

    let caller = SippCommand::scenario("uac_call")
        .remote(tb.edge())
        .service("5000")
        .injection(InjectionFile::users(&[("alice", DOMAIN, "alice-secret-1")]))
        .max_calls(1)
        .pause(Duration::from_secs(10))
        .deadline(Duration::from_secs(45))
        .spawn()
        .unwrap();

    let invite = node
        .expect_request("INVITE", Duration::from_secs(10))
        .unwrap();
    let record_route: Vec<String> = invite.headers("Record-Route").map(str::to_string).collect();
    assert!(
        record_route.iter().any(|rr| rr.contains(";sig=")),
        "the edge's Record-Route is not signed: {record_route:?}"
    );
    let mut extra: Vec<String> = record_route
        .iter()
        .map(|rr| format!("Record-Route: {rr}"))
        .collect();
    extra.push(format!("Contact: <sip:media@{node_addr}>"));
    node.send(
        invite.from,
        &invite.reply(200, "OK", Some("node-tag"), &extra),
    )
    .unwrap();
    node.expect_request("ACK", Duration::from_secs(10)).unwrap();

    // the edge forgets everything; the dialog still holds
    tb.restart_edge().await.unwrap();
    let bye = node.expect_request("BYE", Duration::from_secs(20)).unwrap();
    node.send(bye.from, &bye.reply(200, "OK", None, &[]))
        .unwrap();
    caller.wait().unwrap().ensure_all_succeeded(1).unwrap();

    // the signature of that call, replayed by someone else into other dialogs
    let signed = record_route
        .iter()
        .find(|rr| rr.contains(";sig="))
        .unwrap()
        .clone();
    let call_id = invite.header("Call-ID").unwrap().to_string();
    let caller_tag = invite
        .header("From")
        .and_then(|f| f.split(";tag=").nth(1))
        .unwrap()
        .to_string();
    let victim = SipSocket::bind(ip(62)).unwrap();
    let target = victim.local_addr().unwrap();
    let attacker = SipSocket::bind(ip(63)).unwrap();
    let from = attacker.local_addr().unwrap();
    let forged = [
        (
            "other-call",
            "replay-1".to_string(),
            caller_tag.as_str(),
            "t1",
        ),
        ("other-tags", call_id.clone(), "f-forged", "t-forged"),
    ];
    let mut ids = Vec::new();
    for (what, id, from_tag, to_tag) in &forged {
        for method in ["INVITE", "BYE", "MESSAGE"] {
            let id = format!("{id}-{what}-{method}");
            let req = in_dialog_request(method, target, &signed, from, &id, (from_tag, to_tag));
            // the Call-ID is part of what was signed: keep the real one where asked
            let req = if *what == "other-tags" {
                req.replace(&format!("Call-ID: {id}"), &format!("Call-ID: {call_id}"))
            } else {
                req
            };
            attacker.send(tb.edge(), &req).unwrap();
            ids.push(if *what == "other-tags" {
                call_id.clone()
            } else {
                id
            });
        }
    }
    let replies = attacker.drain(Duration::from_secs(3)).unwrap();
    let finals: Vec<u16> = replies
        .iter()
        .filter_map(SipMessage::status)
        .filter(|c| *c >= 200)
        .collect();
    assert_eq!(
        finals.len(),
        ids.len(),
        "every replayed request gets a final reply: {finals:?}\n{}",
        tb.edge_log(30)
    );
    assert!(finals.iter().all(|c| *c == 403), "replies: {finals:?}");
    assert_nothing_reached(&victim, "replayed requests");
}

/// The edge trusts a media node by address, port and transport, in any state:
/// the same host on another port is challenged like anyone else, a draining
/// member still calls without a challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_media_nodes_host_on_another_port_is_a_stranger_and_a_draining_member_stays_trusted() {
    let member = media_caller(0).unwrap();
    let tb = Testbed::up(&one_member_pool(member)).await.unwrap();
    tb.add_subscriber("bob", "bob-secret").await.unwrap();
    let phone_port = free_udp_port_on(EDGE_IP).unwrap();
    register_phone(tb.edge(), "bob", "bob-secret", phone_port)
        .await
        .unwrap();
    let phone = phone(phone_port).unwrap();

    let stranger = media_caller(0).unwrap();
    assert_ne!(stranger, member);
    let out = call_from_media(tb.edge(), stranger, "bob", 1)
        .await
        .unwrap();
    assert_eq!(out.successful(), 0, "a call from {stranger} was trusted");
    assert_eq!(out.unexpected_codes, vec![407], "{}", out.diagnostics());

    call_from_media(tb.edge(), member, "bob", 1)
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(20)));

    // draining: disabled in the edge's memory, still a member
    let uri = format!("sip:{member}");
    tb.rpc.dispatcher_set_state("d", 1, &uri).await.unwrap();
    assert!(tb.destination(&uri).await.unwrap().flags.starts_with('D'));
    call_from_media(tb.edge(), member, "bob", 1)
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", tb.edge_log(20)));

    assert_eq!(
        phone.stop().unwrap().lines("RECEIVED").count(),
        2,
        "bob's phone got the member's two calls and not the stranger's"
    );
}

/// A subscriber with the right password still may not register a contact on a
/// media node (any port) or on the edge: the platform would then call its own
/// trusted peers on the subscriber's behalf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_with_a_contact_on_the_platform_is_refused() {
    let member = media_caller(0).unwrap();
    let tb = Testbed::up(&one_member_pool(member)).await.unwrap();
    tb.add_subscriber("eve", "eve-secret").await.unwrap();

    let other_port = media_caller(0).unwrap();
    let refused = [
        member.to_string(),
        other_port.to_string(),
        tb.edge().to_string(),
        DOMAIN.to_string(),
        format!("{};transport=tcp", tb.edge()),
    ];
    for contact in &refused {
        let port = free_udp_port_on(EDGE_IP).unwrap();
        let out = register_with_contact(tb.edge(), "eve", "eve-secret", port, contact)
            .run_async()
            .await
            .unwrap();
        assert_eq!(
            out.unexpected_codes,
            vec![403],
            "contact {contact}: {}\n{}",
            out.diagnostics(),
            tb.edge_log(10)
        );
    }
    let db = tb.db().await.unwrap();
    let rows = db
        .query("SELECT contact FROM location WHERE username = 'eve'", &[])
        .await
        .unwrap();
    assert!(rows.is_empty(), "{} contacts were saved", rows.len());

    // a contact elsewhere registers as before
    let port = free_udp_port_on(EDGE_IP).unwrap();
    register_with_contact(tb.edge(), "eve", "eve-secret", port, "192.168.1.10:5060")
        .run_async()
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap();
    assert!(tb.edge_log(100).contains("on the platform itself: refused"));
}

/// From an allowed source, the RPC endpoint still answers only the methods the
/// platform's own clients call, however the method is spelled in the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_answers_only_the_platforms_own_methods() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("dora", "dora-secret").await.unwrap();
    // dora authenticates once, so her ha1 is in the credential cache
    let port = free_udp_port_on(EDGE_IP).unwrap();
    register_phone(tb.edge(), "dora", "dora-secret", port)
        .await
        .unwrap();
    let ha1 = format!(
        "{:x}",
        <md5::Md5 as md5::Digest>::digest(format!("dora:{DOMAIN}:dora-secret").as_bytes())
    );

    let url = format!("http://127.0.0.1:{}/RPC", tb.ports.rpc);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let attacks = [
        r#"{"jsonrpc":"2.0","method":"htable.dump","params":["authcache"],"id":1}"#.to_string(),
        r#"{"jsonrpc":"2.0","method":"htable\u002edump","params":["authcache"],"id":1}"#.to_string(),
        r#"{"jsonrpc":"2.0","method":"core.version","method":"htable.dump","params":["authcache"],"id":1}"#.to_string(),
        r#"{"jsonrpc":"2.0","method":"htable.dump","method":"core.version","params":["authcache"],"id":1}"#.to_string(),
        r#"{"jsonrpc":"2.0","method":"cfg.set","params":["core","debug",3],"id":1}"#.to_string(),
        format!(
            r#"{{"jsonrpc":"2.0","method":"ul.add","params":["location","mallory@{DOMAIN}","sip:mallory@127.0.0.66:5060",3600,1.0,"x",1,0,0],"id":1}}"#
        ),
        r#"{"jsonrpc":"2.0","method":"tm.t_uac_start","params":["OPTIONS","sip:x@127.0.0.66","","","From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.66>\r\n"],"id":1}"#.to_string(),
        r#"{"jsonrpc":"2.0","method":"core.kill","params":[9],"id":1}"#.to_string(),
        r#"[{"jsonrpc":"2.0","method":"htable.dump","params":["authcache"],"id":1}]"#.to_string(),
        "not json".to_string(),
    ];
    let token = tb.rpc_token().unwrap();
    for body in &attacks {
        // without the token, nothing is served whatever the method
        let answer = http.post(&url).body(body.clone()).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 401, "{body} without the token");
        // with it, only the allowlist
        let answer = http
            .post(&url)
            .bearer_auth(&token)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        assert!(
            !text.contains(&ha1) && !text.to_lowercase().contains("authcache"),
            "{body}\nanswered with the credential cache: {text}"
        );
        assert!(
            status == 403 || status == 400 || text.contains("kamailio"),
            "{body}\nanswered {status}: {text}"
        );
    }

    // near-misses of the token are refused: another token, the token with more
    // after it, another scheme, the token in another header
    let version = r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#;
    let wrong = [
        ("Authorization", format!("Bearer {}", "0".repeat(token.len()))),
        ("Authorization", format!("Bearer {token}x")),
        ("Authorization", format!("Bearer  {token}")),
        ("Authorization", format!("Basic {token}")),
        ("Authorization", token.clone()),
        ("X-Sipstack-Token", token.clone()),
    ];
    for (name, value) in &wrong {
        let answer = http
            .post(&url)
            .header(*name, value)
            .body(version)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 401, "{name}: {value}");
    }

    // nothing was planted or changed, and the edge still runs
    let contacts = tb.rpc.ul_dump().await.unwrap();
    assert!(
        contacts.iter().all(|c| !c.address.contains("127.0.0.66")),
        "{contacts:?}"
    );
    assert!(tb.rpc.version().await.unwrap().contains("kamailio"));
    tb.rpc.call("core.uptime", &[]).await.unwrap();
    assert!(tb.edge_log(200).contains("RPC method cfg.set"));
}
