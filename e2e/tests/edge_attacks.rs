//! Attacks on the real edge, from nothing but a UDP socket on the same host. Each
//! test sends what an attacker would and checks that the edge refuses it and that
//! nothing reaches the target it named.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use sipstack_e2e::rawsip::{HandDrivenNode, SipMessage, SipSocket};
use sipstack_e2e::sipp::{free_udp_port_on, InjectionFile, SippCommand};
use sipstack_e2e::testbed::{
    call_from_media, media_caller, media_ip, phone, register_command, register_phone,
    register_with_contact, PoolSpec, Ports, Testbed, TestbedSpec, DOMAIN, EDGE_IP,
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

/// A request from `local` with `headers` (From, To, credentials and the like).
fn request(
    method: &str,
    ruri: &str,
    local: SocketAddr,
    call_id: &str,
    cseq: u32,
    headers: &[String],
) -> String {
    let mut text = format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-{call_id}-{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n"
    );
    for h in headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text.push_str("Content-Length: 0\r\n\r\n");
    text
}

/// Sends `text` (a request with `call_id` and `cseq`) to the edge and returns
/// its final reply, None when none came within `wait`.
fn exchange(
    sock: &SipSocket,
    edge: SocketAddr,
    text: &str,
    call_id: &str,
    cseq: u32,
    wait: Duration,
) -> Option<SipMessage> {
    sock.send(edge, text).unwrap();
    let deadline = std::time::Instant::now() + wait;
    let cseq = format!("{cseq} ");
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let msg = sock.recv(left).unwrap()?;
        if msg.header("Call-ID") == Some(call_id)
            && msg.header("CSeq").is_some_and(|c| c.starts_with(&cseq))
            && msg.status().is_some_and(|c| c >= 200)
        {
            return Some(msg);
        }
    }
}

fn md5_hex(text: &str) -> String {
    format!("{:x}", <md5::Md5 as md5::Digest>::digest(text.as_bytes()))
}

/// A digest challenge of the edge (401 or 407), answered with any credentials:
/// the attacks need wrong passwords and other users' names.
#[derive(Clone)]
struct Challenge {
    realm: String,
    nonce: String,
    opaque: Option<String>,
    qop_auth: bool,
    proxy: bool,
}

impl Challenge {
    fn of(reply: &SipMessage) -> Option<Self> {
        let (value, proxy) = match reply.header("WWW-Authenticate") {
            Some(v) => (v, false),
            None => (reply.header("Proxy-Authenticate")?, true),
        };
        let params = value.trim().strip_prefix("Digest")?;
        let param = |name: &str| {
            params.split(',').find_map(|p| {
                let (k, v) = p.split_once('=')?;
                (k.trim().eq_ignore_ascii_case(name))
                    .then(|| v.trim().trim_matches('"').to_string())
            })
        };
        Some(Self {
            realm: param("realm")?,
            nonce: param("nonce")?,
            opaque: param("opaque"),
            qop_auth: param("qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth")),
            proxy,
        })
    }

    /// The (Proxy-)Authorization header line answering this challenge.
    fn answer(&self, user: &str, password: &str, method: &str, uri: &str) -> String {
        let ha1 = md5_hex(&format!("{user}:{}:{password}", self.realm));
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let name = if self.proxy {
            "Proxy-Authorization"
        } else {
            "Authorization"
        };
        let mut line = format!(
            "{name}: Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", algorithm=MD5",
            self.realm, self.nonce
        );
        let (cnonce, nc) = ("0a4f113b", "00000001");
        let response = if self.qop_auth {
            line.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
            md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            md5_hex(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        line.push_str(&format!(", response=\"{response}\""));
        if let Some(o) = &self.opaque {
            line.push_str(&format!(", opaque=\"{o}\""));
        }
        line
    }
}

/// The headers of a REGISTER of `to_user` (From `from_user`), Contact at `local`.
fn register_headers(from_user: &str, to_user: &str, local: SocketAddr, tag: &str) -> Vec<String> {
    vec![
        format!("From: <sip:{from_user}@{DOMAIN}>;tag={tag}"),
        format!("To: <sip:{to_user}@{DOMAIN}>"),
        format!("Contact: <sip:{to_user}@{local}>"),
        "Expires: 600".to_string(),
    ]
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
        .deadline(Duration::from_secs(75))
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

    // the edge forgets everything; the dialog still holds (the wait bounds a
    // restart and the caller's BYE retransmissions on a busy machine)
    tb.restart_edge().await.unwrap();
    let bye = node.expect_request("BYE", Duration::from_secs(40)).unwrap();
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

    // htable.reload is allowed for the trunk table only: reloading the credential
    // cache would empty it (it has no table), and so would the cache's protection
    // through a database outage
    for params in [
        r#"["authcache"]"#,
        r#"[ "authcache" ]"#,
        r#"["trunk","authcache"]"#,
        r#"{"name":"authcache"}"#,
    ] {
        let body =
            format!(r#"{{"jsonrpc":"2.0","method":"htable.reload","params":{params},"id":1}}"#);
        let answer = http
            .post(&url)
            .bearer_auth(&token)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 403, "{body}");
    }
    let answer = http
        .post(&url)
        .bearer_auth(&token)
        .body(r#"{"jsonrpc":"2.0","method":"htable.reload","params":["trunk"],"id":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "{}",
        answer.text().await.unwrap()
    );

    // near-misses of the token are refused: another token, the token with more
    // after it, another scheme, the token in another header
    let version = r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#;
    let wrong = [
        (
            "Authorization",
            format!("Bearer {}", "0".repeat(token.len())),
        ),
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

/// The edge is no open relay: an INVITE or MESSAGE for a URI elsewhere is refused
/// from a foreign domain, challenged without credentials, challenged again with
/// wrong ones, and even a subscriber's is not sent there; nothing reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_for_a_foreign_uri_are_relayed_for_no_one() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("alice", "alice-secret").await.unwrap();
    let edge = tb.edge();
    let victim = SipSocket::bind(ip(77)).unwrap();
    let ruri = format!("sip:victim@{}", victim.local_addr().unwrap());
    let attacker = SipSocket::bind(ip(70)).unwrap();
    let local = attacker.local_addr().unwrap();
    let wait = Duration::from_secs(3);

    for method in ["INVITE", "MESSAGE"] {
        let headers = |from: &str, auth: Option<String>| {
            let mut h = vec![
                format!("From: <sip:{from}>;tag=relay-{method}"),
                format!("To: <{ruri}>"),
                format!("Contact: <sip:mallory@{local}>"),
            ];
            h.extend(auth);
            h
        };
        let ask = |call_id: &str, cseq: u32, h: &[String]| {
            let text = request(method, &ruri, local, call_id, cseq, h);
            exchange(&attacker, edge, &text, call_id, cseq, wait)
        };
        let code = |reply: &Option<SipMessage>| reply.as_ref().and_then(SipMessage::status);

        // a foreign From domain: nothing to authenticate against
        let foreign = ask(
            &format!("relay-foreign-{method}"),
            1,
            &headers("mallory@evil.example.net", None),
        );
        assert_eq!(
            code(&foreign),
            Some(403),
            "{method} from a foreign domain\n{}",
            tb.edge_log(20)
        );

        // this edge's domain: a challenge, and again for wrong credentials
        let call_id = format!("relay-own-{method}");
        let first = ask(&call_id, 1, &headers(&format!("alice@{DOMAIN}"), None));
        assert_eq!(
            code(&first),
            Some(407),
            "{method} without credentials\n{}",
            tb.edge_log(20)
        );
        let challenge = Challenge::of(first.as_ref().unwrap()).expect("a digest challenge");
        for (cseq, user, password) in [(2, "alice", "guessed"), (3, "mallory", "guessed")] {
            let auth = challenge.answer(user, password, method, &ruri);
            let reply = ask(
                &call_id,
                cseq,
                &headers(&format!("{user}@{DOMAIN}"), Some(auth)),
            );
            assert!(
                matches!(code(&reply), Some(407) | Some(403)),
                "{method} as {user} with a wrong password: {:?}\n{}",
                code(&reply),
                tb.edge_log(20)
            );
        }
        // alice's right credentials pass (so the wrong ones above were checked
        // as such), and still nothing goes to the URI she named
        let auth = challenge.answer("alice", "alice-secret", method, &ruri);
        let reply = ask(
            &call_id,
            4,
            &headers(&format!("alice@{DOMAIN}"), Some(auth)),
        );
        assert!(
            code(&reply).is_some_and(|c| c >= 400 && c != 401 && c != 407),
            "{method} from alice to {ruri}: {:?}\n{}",
            code(&reply),
            tb.edge_log(20)
        );
    }
    assert_nothing_reached(&victim, "relay attempts");
}

/// Alice's right credentials do not register a contact for bob: the digest
/// username must be the user of To and From.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_credentials_do_not_register_another_user() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("alice", "alice-secret").await.unwrap();
    tb.add_subscriber("bob", "bob-secret").await.unwrap();
    let edge = tb.edge();
    let ua = SipSocket::bind(ip(71)).unwrap();
    let local = ua.local_addr().unwrap();
    let ruri = format!("sip:{DOMAIN}");
    let wait = Duration::from_secs(3);

    let register = |call_id: &str, from_user: &str, to_user: &str| -> Option<u16> {
        let headers = register_headers(from_user, to_user, local, call_id);
        let first = exchange(
            &ua,
            edge,
            &request("REGISTER", &ruri, local, call_id, 1, &headers),
            call_id,
            1,
            wait,
        );
        assert_eq!(
            first.as_ref().and_then(SipMessage::status),
            Some(401),
            "{call_id}\n{}",
            tb.edge_log(20)
        );
        let challenge = Challenge::of(first.as_ref().unwrap()).expect("a digest challenge");
        let mut headers = headers;
        headers.push(challenge.answer("alice", "alice-secret", "REGISTER", &ruri));
        exchange(
            &ua,
            edge,
            &request("REGISTER", &ruri, local, call_id, 2, &headers),
            call_id,
            2,
            wait,
        )
        .and_then(|m| m.status())
    };

    for (call_id, from_user) in [("a-for-b-1", "bob"), ("a-for-b-2", "alice")] {
        let code = register(call_id, from_user, "bob");
        assert!(
            matches!(code, Some(401) | Some(403)),
            "REGISTER of bob (From {from_user}) with alice's credentials: {code:?}\n{}",
            tb.edge_log(20)
        );
    }
    // the same credentials register alice herself
    assert_eq!(
        register("a-for-a", "alice", "alice"),
        Some(200),
        "{}",
        tb.edge_log(20)
    );

    let bob = tb
        .rpc
        .ul_lookup("location", &format!("bob@{DOMAIN}"))
        .await
        .unwrap();
    assert!(bob.is_empty(), "bob got contacts: {bob:?}");
    let all = tb.rpc.ul_dump().await.unwrap();
    assert!(all.iter().all(|c| !c.aor.starts_with("bob@")), "{all:?}");
    assert!(
        all.iter()
            .any(|c| c.aor == format!("alice@{DOMAIN}") && c.address.contains(&local.to_string())),
        "{all:?}"
    );
}

/// A platform whose edge bans a source after `limit` failed authentications.
async fn guessing_testbed(limit: usize) -> Testbed {
    let spec = TestbedSpec {
        flood_requests_per_window: Some(500),
        ..Default::default()
    };
    let ports = Ports::free().unwrap();
    let flood = "floodProtection: {enabled: true, requestsPerWindow: 500}";
    let yaml = spec.yaml(ports);
    assert!(yaml.contains(flood), "{yaml}");
    let yaml = yaml.replace(
        flood,
        &format!("floodProtection: {{enabled: true, requestsPerWindow: 500, authFailures: {{limit: {limit}, windowSeconds: 60}}}}"),
    );
    Testbed::up_yaml(yaml, ports).await.unwrap()
}

/// A phone on a bare socket that REGISTERs with whatever credentials it is given.
struct RawPhone {
    sock: SipSocket,
    local: SocketAddr,
    edge: SocketAddr,
}

impl RawPhone {
    fn bind(from: IpAddr, edge: SocketAddr) -> Self {
        let sock = SipSocket::bind(from).unwrap();
        let local = sock.local_addr().unwrap();
        Self { sock, local, edge }
    }

    fn register(&self, call_id: &str, cseq: u32, user: &str, auth: Option<String>) -> String {
        let mut headers = register_headers(user, user, self.local, call_id);
        headers.extend(auth);
        request(
            "REGISTER",
            &format!("sip:{DOMAIN}"),
            self.local,
            call_id,
            cseq,
            &headers,
        )
    }

    /// The edge's challenge to a REGISTER of `user` without credentials; None
    /// when nothing came back.
    fn challenge(&self, call_id: &str, user: &str) -> Option<Challenge> {
        let text = self.register(call_id, 1, user, None);
        let reply = exchange(
            &self.sock,
            self.edge,
            &text,
            call_id,
            1,
            Duration::from_secs(3),
        )?;
        assert_eq!(reply.status(), Some(401), "{}", reply.text);
        Some(Challenge::of(&reply).expect("a digest challenge"))
    }

    /// The final reply to a REGISTER of `user` answering `challenge` with
    /// `password`, None when none came within `wait`.
    fn answer(
        &self,
        call_id: &str,
        user: &str,
        password: &str,
        challenge: &Challenge,
        wait: Duration,
    ) -> Option<u16> {
        let auth = challenge.answer(user, password, "REGISTER", &format!("sip:{DOMAIN}"));
        let text = self.register(call_id, 2, user, Some(auth));
        exchange(&self.sock, self.edge, &text, call_id, 2, wait).and_then(|m| m.status())
    }
}

/// Password guessing: a source whose REGISTERs fail digest authentication
/// `limit` times is banned (no reply at all, not even to the right password),
/// and the ban is logged. First requests without credentials do not count, and
/// a user elsewhere registers all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_guessing_source_is_banned_and_others_still_register() {
    const LIMIT: usize = 5;
    let tb = guessing_testbed(LIMIT).await;
    tb.add_subscriber("carol", "carol-secret").await.unwrap();
    tb.add_subscriber("dave", "dave-secret").await.unwrap();
    // a reply comes in milliseconds; 10 s only measures a machine busy with other work
    let answered = Duration::from_secs(10);
    let silent = Duration::from_secs(2);
    let attacker = RawPhone::bind(ip(50), tb.edge());

    // a nonce for carol, kept for a right answer once the source is banned
    let kept = attacker
        .challenge("guess-kept", "carol")
        .expect("a challenge before the attack");
    // first requests without credentials are no failures, however many
    for i in 0..LIMIT + 2 {
        assert!(
            attacker
                .challenge(&format!("no-credentials-{i}"), "carol")
                .is_some(),
            "request {i} without credentials went unanswered\n{}",
            tb.edge_log(20)
        );
    }

    // wrong passwords for carol and a user who does not exist count alike
    let mut refused = Vec::new();
    let mut challenge = kept.clone();
    for i in 0..LIMIT + 2 {
        let user = if i % 2 == 0 { "carol" } else { "nobody" };
        let call_id = format!("guess-{i}");
        if let Some(c) = attacker.challenge(&call_id, user) {
            challenge = c;
        }
        let wait = if refused.len() < LIMIT - 1 {
            answered
        } else {
            silent
        };
        refused.push(attacker.answer(&call_id, user, &format!("guess-{i}"), &challenge, wait));
        if i == 1 {
            // meanwhile, elsewhere
            register_elsewhere(&tb, "dave", "dave-secret", ip(51)).await;
        }
        if refused.last() == Some(&None) {
            break;
        }
    }
    let expected: Vec<Option<u16>> = (0..LIMIT).map(|i| (i < LIMIT - 1).then_some(401)).collect();
    assert_eq!(
        refused,
        expected,
        "replies to the wrong passwords (None: no reply)\n{}",
        tb.edge_log(30)
    );

    // banned: no reply at all, neither a challenge nor to the right password
    assert!(
        attacker.challenge("after-ban", "carol").is_none(),
        "a banned source was challenged"
    );
    let right = attacker.answer("guess-right", "carol", "carol-secret", &kept, silent);
    assert_eq!(right, None, "the banned source got an answer");
    // the same right answer from another address registers carol: the ban, not
    // the answer, kept the banned source out
    let other = RawPhone::bind(ip(52), tb.edge());
    assert_eq!(
        other.answer("right-elsewhere", "carol", "carol-secret", &kept, answered),
        Some(200),
        "{}",
        tb.edge_log(20)
    );

    register_elsewhere(&tb, "dave", "dave-secret", ip(51)).await;
    let dave = tb
        .rpc
        .ul_lookup("location", &format!("dave@{DOMAIN}"))
        .await
        .unwrap();
    assert!(
        dave.iter().any(|c| c.address.contains("127.0.0.51")),
        "{dave:?}"
    );
    assert_eq!(
        tb.edge_log(5000)
            .matches("password guessing from 127.0.0.50")
            .count(),
        1,
        "one ALERT line for the ban:\n{}",
        tb.edge_log(30)
    );
}

/// While the database is down a password can only be checked against the
/// credential cache: a subscriber who cannot be checked is no guesser (the
/// source stays unbanned and registers a cached user), a wrong password
/// checked against the cache still counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_not_taken_for_password_guessing() {
    const LIMIT: usize = 3;
    let tb = guessing_testbed(LIMIT).await;
    tb.add_subscriber("carol", "carol-secret").await.unwrap();
    tb.add_subscriber("erin", "erin-secret").await.unwrap();
    // carol authenticates once: her ha1 is remembered
    register_elsewhere(&tb, "carol", "carol-secret", ip(53)).await;
    tb.stop_postgres().await.unwrap();

    let answered = Duration::from_secs(5);
    let phone = RawPhone::bind(ip(54), tb.edge());
    for i in 0..LIMIT + 2 {
        let call_id = format!("outage-erin-{i}");
        let challenge = phone
            .challenge(&call_id, "erin")
            .unwrap_or_else(|| panic!("attempt {i} unanswered\n{}", tb.edge_log(20)));
        assert_eq!(
            phone.answer(&call_id, "erin", "erin-secret", &challenge, answered),
            Some(401),
            "erin cannot be checked during the outage\n{}",
            tb.edge_log(20)
        );
    }
    let challenge = phone.challenge("outage-carol", "carol").unwrap();
    assert_eq!(
        phone.answer(
            "outage-carol",
            "carol",
            "carol-secret",
            &challenge,
            answered
        ),
        Some(200),
        "the source was banned or the cache failed\n{}",
        tb.edge_log(20)
    );

    let guesser = RawPhone::bind(ip(55), tb.edge());
    let mut refused = Vec::new();
    for i in 0..LIMIT + 1 {
        let call_id = format!("outage-guess-{i}");
        let Some(challenge) = guesser.challenge(&call_id, "carol") else {
            break;
        };
        refused.push(guesser.answer(
            &call_id,
            "carol",
            "guessed",
            &challenge,
            Duration::from_secs(2),
        ));
    }
    let expected: Vec<Option<u16>> = (0..LIMIT).map(|i| (i < LIMIT - 1).then_some(401)).collect();
    assert_eq!(refused, expected, "{}", tb.edge_log(20));
    assert!(
        tb.edge_log(5000)
            .contains("password guessing from 127.0.0.55"),
        "{}",
        tb.edge_log(20)
    );
    assert!(!tb
        .edge_log(5000)
        .contains("password guessing from 127.0.0.54"));
}

/// Registers `user` from a phone on `from` (not the edge's own address).
async fn register_elsewhere(tb: &Testbed, user: &str, password: &str, from: IpAddr) {
    let port = free_udp_port_on(from).unwrap();
    register_command(tb.edge(), user, password, port)
        .local(from, port)
        .run_async()
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| {
            panic!(
                "{user} could not register from {from}: {e}\n{}",
                tb.edge_log(20)
            )
        });
}

/// A TCP connection to the edge from `ip`.
async fn tcp_from(ip: IpAddr, edge: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(edge).await
}

/// Sends `text` on `stream` and returns the status of the first reply, None when
/// the edge closed the connection or said nothing within 3 s.
async fn tcp_exchange(stream: &mut tokio::net::TcpStream, text: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(text.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if text.contains("\r\n\r\n") {
            let status = text.split_whitespace().nth(1)?.parse().ok()?;
            return Some((status, text));
        }
    }
}

/// Whether the edge has closed `stream` (it reads EOF or a reset at once).
async fn closed_by_edge(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(50), stream.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn tcp_options(edge: SocketAddr, local: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:{edge} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcp-{n}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{DOMAIN}>;tag=t{n}\r\nTo: <sip:{edge}>\r\nCall-ID: tcp-limit-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Idle and unauthenticated TCP connections cannot use up the edge: a source may
/// send on a few connections at once (the next is closed), a connection that has
/// not authenticated is closed after a short lifetime without messages, and one
/// that authenticated (a REGISTER) stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_unauthenticated_tcp_connections_cannot_use_up_the_edge() {
    let spec = TestbedSpec {
        extra_edge_spec:
            "  tcp: {maxConnections: 64, maxConnectionsPerSource: 4, unauthenticatedLifetimeSeconds: 3}\n"
                .into(),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("erin", "erin-secret").await.unwrap();
    let edge = tb.edge();
    let mut seq = 0;
    let mut next = || {
        seq += 1;
        seq
    };

    // one source: four connections that send requests, not a fifth
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = tcp_from(ip(60), edge).await.unwrap();
        let local = c.local_addr().unwrap();
        let answer = tcp_exchange(&mut c, &tcp_options(edge, local, next())).await;
        assert_eq!(answer.map(|a| a.0), Some(200));
        held.push(c);
    }
    let mut fifth = tcp_from(ip(60), edge).await.unwrap();
    let local = fifth.local_addr().unwrap();
    assert_eq!(
        tcp_exchange(&mut fifth, &tcp_options(edge, local, next()))
            .await
            .map(|a| a.0),
        None,
        "a fifth connection from one source was served"
    );
    assert!(tb
        .edge_log(50)
        .contains("is one more than 4 from that source"));
    // another source is not affected, and a closed connection frees its place
    let mut other = tcp_from(ip(61), edge).await.unwrap();
    let local = other.local_addr().unwrap();
    assert_eq!(
        tcp_exchange(&mut other, &tcp_options(edge, local, next()))
            .await
            .map(|a| a.0),
        Some(200)
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = tcp_from(ip(60), edge).await.unwrap();
    let local = again.local_addr().unwrap();
    assert_eq!(
        tcp_exchange(&mut again, &tcp_options(edge, local, next()))
            .await
            .map(|a| a.0),
        Some(200),
        "the closed connection's place was not freed"
    );
    drop(held);
    drop(again);
    drop(other);

    // a REGISTER over TCP that authenticates keeps its connection open
    let mut phone = tcp_from(ip(64), edge).await.unwrap();
    let local = phone.local_addr().unwrap();
    let register = |cseq: u32, auth: Option<String>| {
        let mut text = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-tcpreg-{cseq}\r\nMax-Forwards: 70\r\nFrom: <sip:erin@{DOMAIN}>;tag=erin\r\nTo: <sip:erin@{DOMAIN}>\r\nCall-ID: tcp-register\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:erin@{local};transport=tcp>\r\nExpires: 600\r\n"
        );
        if let Some(a) = auth {
            text.push_str(&a);
            text.push_str("\r\n");
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text
    };
    let (status, text) = tcp_exchange(&mut phone, &register(1, None)).await.unwrap();
    assert_eq!(status, 401);
    let challenge = Challenge::of(&SipMessage { from: edge, text }).unwrap();
    let auth = challenge.answer("erin", "erin-secret", "REGISTER", &format!("sip:{DOMAIN}"));
    let (status, _) = tcp_exchange(&mut phone, &register(2, Some(auth)))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let mut anonymous = tcp_from(ip(65), edge).await.unwrap();
    let local = anonymous.local_addr().unwrap();
    assert_eq!(
        tcp_exchange(&mut anonymous, &tcp_options(edge, local, next()))
            .await
            .map(|a| a.0),
        Some(200)
    );

    // an idle flood from one source: connections that never send a byte
    let mut flood = Vec::new();
    for _ in 0..40 {
        if let Ok(c) = tcp_from(ip(62), edge).await {
            flood.push(c);
        }
    }
    assert!(
        flood.len() >= 30,
        "only {} flood connections opened",
        flood.len()
    );
    let started = std::time::Instant::now();
    let mut open = flood.len();
    while open > 0 && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        open = 0;
        for c in flood.iter_mut() {
            if !closed_by_edge(c).await {
                open += 1;
            }
        }
    }
    let took = started.elapsed();
    println!(
        "idle flood of {} connections closed by the edge after {took:?}",
        flood.len()
    );
    // the lifetime is 3 s; Kamailio's TCP timer runs about every second
    assert_eq!(open, 0, "{open} idle connections still open after {took:?}");
    // a connection that sent a request is idle in a TCP worker first, which hands
    // it back to the main process after a few seconds: it may close a little later
    let mut anonymous_closed = false;
    while !anonymous_closed && started.elapsed() < Duration::from_secs(25) {
        anonymous_closed = closed_by_edge(&mut anonymous).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "the unauthenticated connection was closed after {:?}",
        started.elapsed()
    );
    assert!(
        anonymous_closed,
        "the unauthenticated connection stayed open"
    );
    assert!(
        !closed_by_edge(&mut phone).await,
        "the authenticated connection was closed"
    );
    let local = phone.local_addr().unwrap();
    assert_eq!(
        tcp_exchange(&mut phone, &tcp_options(edge, local, next()))
            .await
            .map(|a| a.0),
        Some(200),
        "the registered phone's connection no longer works"
    );
    let mut after = tcp_from(ip(63), edge).await.unwrap();
    let local = after.local_addr().unwrap();
    assert_eq!(
        tcp_exchange(&mut after, &tcp_options(edge, local, next()))
            .await
            .map(|a| a.0),
        Some(200)
    );
}

/// A registration with bytes PostgreSQL cannot store (invalid UTF-8, control
/// characters) is refused before it is saved: otherwise it would live in memory
/// only, fail every flush to the database and be lost at a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_with_bytes_the_database_cannot_store_is_refused() {
    let tb = Testbed::up(&TestbedSpec::default()).await.unwrap();
    tb.add_subscriber("fern", "fern-secret").await.unwrap();
    let phone = RawPhone::bind(ip(66), tb.edge());
    let udp = std::net::UdpSocket::bind(SocketAddr::new(ip(67), 0)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let local = udp.local_addr().unwrap();
    for (n, contact) in [
        b"<sip:fe\xc3rn@127.0.0.67:5060>".to_vec(),
        b"<sip:fern@127.0.0.67:5060>\r\x00x".to_vec(),
        b"<sip:fern@127.0.0.67:5060>;x=\x1b[31m".to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let call_id = format!("bad-bytes-{n}");
        let challenge = phone.challenge(&call_id, "fern").unwrap();
        let auth = challenge.answer("fern", "fern-secret", "REGISTER", &format!("sip:{DOMAIN}"));
        let mut text = format!(
            "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:fern@{DOMAIN}>;tag={call_id}\r\nTo: <sip:fern@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 2 REGISTER\r\nExpires: 600\r\n{auth}\r\nContact: "
        )
        .into_bytes();
        text.extend_from_slice(&contact);
        text.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        udp.send_to(&text, tb.edge()).unwrap();
        let mut buf = [0u8; 4096];
        let (len, _) = udp.recv_from(&mut buf).unwrap();
        let reply = String::from_utf8_lossy(&buf[..len]).into_owned();
        assert!(reply.starts_with("SIP/2.0 400"), "{contact:?}: {reply}");
    }
    let contacts = tb.rpc.ul_dump().await.unwrap();
    assert!(
        contacts.iter().all(|c| !c.aor.contains("fern")),
        "{contacts:?}"
    );
}
