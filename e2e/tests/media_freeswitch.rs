//! The media tier on real FreeSWITCH: the local driver runs a MediaPool's replicas
//! as FreeSWITCH processes, the edge sends subscribers' calls to them, audio flows
//! both ways and every call leaves a CDR.
//!
//! FreeSWITCH is not a Debian package. Where it is missing these tests fail when
//! `CI=true` and report themselves skipped otherwise.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use sipstack_e2e::freeswitch_present;
use sipstack_e2e::testbed::{PoolSpec, Testbed, TestbedSpec, DOMAIN, EDGE_IP};
use sipstack_e2e::voicecall::{VoiceCall, VoiceCallReport, G711};

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
        offer,
        talk,
        ..VoiceCall::new(bed.edge(), "alice", "alice-secret", DOMAIN, callee)
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

/// The local node of `bed` at `replica`, and its event socket password.
fn node(bed: &Testbed, replica: i32) -> Result<(sipstack_local::freeswitch::MediaNode, String)> {
    let platform = sipstack_crds::Platform::from_yaml(&bed.yaml)?;
    let node = sipstack_local::freeswitch::MediaNode::new(
        &bed.state_dir(),
        &platform.media_pools[0],
        replica,
    )
    .context("replica address")?;
    let password = std::fs::read_to_string(sipstack_local::freeswitch::esl_password_file(
        &bed.state_dir(),
        "media",
    ))?;
    Ok((node, password.trim().to_string()))
}

/// Calls until one is up on `replica` (round robin alternates); returns it running.
async fn long_call_on(
    bed: &Testbed,
    replica: i32,
    talk: Duration,
) -> Result<tokio::task::JoinHandle<Result<VoiceCallReport>>> {
    let (target, password) = node(bed, replica)?;
    for attempt in 0..4 {
        let c = call(bed, &format!("93{attempt:02}"), vec![G711::Pcmu], talk);
        let running = tokio::task::spawn_blocking(move || c.run());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        if target.calls(&password).await.map_err(anyhow::Error::msg)? == 1 {
            return Ok(running);
        }
        running.await??;
    }
    anyhow::bail!("no call reached replica {replica}")
}

/// Scale-in: with a call up on the replica that goes, `up` with one replica less
/// takes it out of the dispatcher set, waits until its call has ended, then stops
/// it. The call completes with its audio and BYE, new calls go to the node that
/// stays, and the removed node's process and directory are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_drains_the_node_before_stopping_it() -> Result<()> {
    if !freeswitch_present("scale_in_drains_the_node_before_stopping_it") {
        return Ok(());
    }
    let bed = platform_with_nodes(2).await?;
    let (leaving, _) = node(&bed, 1)?;
    let (staying, _) = node(&bed, 0)?;
    let running = long_call_on(&bed, 1, Duration::from_secs(6)).await?;

    let smaller = bed.yaml.replace("replicas: 2", "replicas: 1");
    let options = sipstack_local::UpOptions {
        state_dir: bed.state_dir(),
        standins: false,
    };
    let started = std::time::Instant::now();
    let (state, report) = sipstack_local::up(&smaller, &options).await?;
    let took = started.elapsed();
    let call = running.await??;
    eprintln!("{:#?}\nscale-in took {took:?}\n{call:?}", report.lines);
    assert_eq!(
        call.bye_status,
        Some(200),
        "the call on the leaving node completed: {call:?}"
    );
    assert!(call.packets_echoed > 0, "{call:?}");
    assert!(
        report
            .lines
            .iter()
            .any(|l| l.contains("node 1 drained: no calls left")),
        "{:?}",
        report.lines
    );
    // `up` waited for the call (about 4.5 s of it were left)
    assert!(
        took >= Duration::from_secs(3),
        "scale-in returned after {took:?}, before the call ended"
    );
    assert!(
        leaving.running_pid().is_none(),
        "the removed node still runs"
    );
    assert!(!leaving.dir.exists());
    assert_eq!(state.media_nodes.len(), 1);
    let members: Vec<String> = bed
        .destinations()
        .await?
        .into_iter()
        .map(|d| d.uri)
        .collect();
    assert_eq!(members, vec![staying.uri()]);
    for i in 0..2 {
        let after = place(call_to(&bed, &format!("94{i:02}"))).await?;
        assert_eq!(
            after.remote_rtp.map(|a| a.ip()),
            Some(IpAddr::V4(staying.address)),
            "{after:?}"
        );
    }
    bed.down().await
}

fn call_to(bed: &Testbed, callee: &str) -> VoiceCall {
    call(bed, callee, vec![G711::Pcmu], Duration::from_millis(600))
}

/// The event socket of a node the local driver runs: the password it was given
/// works and another does not, `status` answers, and a paused node answers
/// OPTIONS with 503 (what takes it out of the edge's rotation) until resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_event_socket_and_pause() -> Result<()> {
    if !freeswitch_present("a_nodes_event_socket_and_pause") {
        return Ok(());
    }
    let bed = platform_with_nodes(1).await?;
    let (n, password) = node(&bed, 0)?;
    let t = Duration::from_secs(3);
    // no secret of the platform is on a command line (ps shows them to everyone)
    let leaks = sipstack_e2e::testbed::secrets_on_command_lines(&bed.state_dir())?;
    assert!(leaks.is_empty(), "{leaks:#?}");
    let user = sipstack_render::freeswitch::ESL_USER;
    let esl = sipstack_esl::EslClient::connect_as(&n.esl_address(), user, &password, t).await?;
    assert!(esl.api("status").await?.starts_with("UP "));
    assert!(matches!(
        sipstack_esl::EslClient::connect_as(&n.esl_address(), user, "not-the-password", t).await,
        Err(sipstack_esl::EslError::AuthFailed(_))
    ));
    // the socket's own password is not the one the platform keeps: `auth` with it,
    // which could run every command, is refused
    assert!(matches!(
        sipstack_esl::EslClient::connect(&n.esl_address(), &password, t).await,
        Err(sipstack_esl::EslError::AuthFailed(_))
    ));
    // the event socket takes no connection from another address (an edge's, a
    // node's), with or without the password
    let outsider = tokio::net::TcpSocket::new_v4()?;
    outsider.bind(std::net::SocketAddr::new(
        IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 9)),
        0,
    ))?;
    let mut stream = outsider.connect(n.esl_address().parse()?).await?;
    let mut greeting = Vec::new();
    let _ = tokio::time::timeout(t, async {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 512];
        while let Ok(k) = stream.read(&mut b).await {
            if k == 0 {
                break;
            }
            greeting.extend_from_slice(&b[..k]);
        }
    })
    .await;
    let greeting = String::from_utf8_lossy(&greeting);
    assert!(
        greeting.contains("rude-rejection") && !greeting.contains("auth/request"),
        "{greeting}"
    );
    // the platform's user runs no command that starts a process or reads a file
    let marker = bed.state_dir().join("esl-system-ran");
    for command in [
        format!("system touch {}", marker.display()),
        format!("bg_system touch {}", marker.display()),
        format!("spawn touch {}", marker.display()),
        format!("bg_spawn touch {}", marker.display()),
        "eval ${system touch /tmp/x}".to_string(),
        "global_getvar".to_string(),
        "load mod_lua".to_string(),
    ] {
        let answer = esl.api(&command).await;
        assert!(
            answer
                .as_ref()
                .is_err_and(|e| e.to_string().to_lowercase().contains("permission")),
            "{command}: {answer:?}"
        );
        let answer = esl.bgapi(&command).await;
        assert!(answer.is_err(), "bgapi {command}: {answer:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!marker.exists(), "a shell command ran");
    esl.subscribe(sipstack_esl::EventFormat::Json, &["BACKGROUND_JOB"])
        .await?;
    let job = esl.bgapi("show calls count").await?;
    let event = tokio::time::timeout(t, esl.next_event())
        .await?
        .context("no event")?;
    assert_eq!(event.get("Job-UUID"), Some(job.as_str()));
    assert!(
        event.body().is_some_and(|b| b.contains("0 total")),
        "{event:?}"
    );

    // each probe its own transaction: the same branch would only get the first answer again
    let probes = std::sync::atomic::AtomicU32::new(0);
    let options = |sock: &sipstack_e2e::rawsip::SipSocket| -> Result<Option<u16>> {
        let me = sock.local_addr()?;
        let k = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        sock.send(
            std::net::SocketAddr::new(IpAddr::V4(n.address), n.sip_port),
            &format!(
                "OPTIONS sip:{}:{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-o{}-{k}\r\nMax-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p{k}\r\nTo: <sip:{}:{}>\r\nCall-ID: opt-{}-{k}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                n.address, n.sip_port, me.port(), n.address, n.sip_port, me.port()
            ),
        )?;
        Ok(sock.recv(Duration::from_secs(3))?.and_then(|m| m.status()))
    };
    let sock = sipstack_e2e::rawsip::SipSocket::bind(EDGE_IP)?;
    assert_eq!(options(&sock)?, Some(200));
    esl.api("fsctl pause inbound").await?;
    assert_eq!(esl.api("fsctl pause_check inbound").await?.trim(), "true");
    assert_eq!(options(&sock)?, Some(503));
    let health = n.health(&password).await;
    assert!(health.paused && health.error.is_none(), "{health:?}");
    n.resume(&password).await.map_err(anyhow::Error::msg)?;
    assert_eq!(options(&sock)?, Some(200));

    // SIP from anywhere but the edges' addresses: a call straight to the node,
    // around the edge's authentication, is refused by the node's ACL
    let stranger =
        sipstack_e2e::rawsip::SipSocket::bind(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 9)))?;
    let me = stranger.local_addr()?;
    let node_addr = std::net::SocketAddr::new(IpAddr::V4(n.address), n.sip_port);
    stranger.send(
        node_addr,
        &format!(
            "INVITE sip:5550100@{node_addr} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-stranger\r\nMax-Forwards: 70\r\n\
             From: <sip:mallory@{me}>;tag=m\r\nTo: <sip:5550100@{node_addr}>\r\nCall-ID: stranger@test\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:mallory@{me}>\r\nContent-Length: 0\r\n\r\n"
        ),
    )?;
    let mut finals = Vec::new();
    for m in stranger.drain(Duration::from_secs(3))? {
        if let Some(code) = m.status().filter(|c| *c >= 200) {
            finals.push(code);
        }
    }
    assert_eq!(
        finals.first(),
        Some(&403),
        "a call from 127.0.0.9 straight to the node: {finals:?}"
    );
    bed.down().await
}

/// A FreeSWITCH node SIGKILLed under 20 new calls per second: every new call is
/// still set up (the edge moves an INVITE that times out on the dead node to the
/// other one inside its transaction, and marks the dead node inactive), and once
/// it is marked no call reaches it. The only calls allowed to fail are those the
/// dead node had answered and whose BYE found nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_load_loses_no_new_call() -> Result<()> {
    use sipstack_e2e::sipp::{InjectionFile, SippCommand};
    use sipstack_e2e::testbed::users;
    if !freeswitch_present("a_node_killed_under_load_loses_no_new_call") {
        return Ok(());
    }
    const RATE: u32 = 20;
    let bed = platform_with_nodes(2).await?;
    let (victim, _) = node(&bed, 1)?;
    let (survivor, _) = node(&bed, 0)?;
    let victim_addr = format!("{}:{}", victim.address, victim.sip_port);
    let calls = u64::from(RATE) * 10;
    let load = SippCommand::scenario("uac_call")
        .remote(bed.edge())
        .service("5550100")
        .injection(InjectionFile::users(&users(&[("alice", "alice-secret")])))
        .rate(RATE)
        .call_limit(100)
        .max_calls(calls)
        .pause(Duration::ZERO)
        .recv_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(60))
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = victim.running_pid().context("the victim runs")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let marked = bed
        .wait_for_destinations(Duration::from_secs(15), |d| {
            d.iter()
                .any(|x| x.uri == victim.uri() && x.flags.starts_with('I'))
        })
        .await
        .with_context(|| bed.edge_log(30))?;
    let answered_by_victim_at_mark = load
        .log_lines()
        .iter()
        .filter(|l| l.tag == "ANSWERED" && l.get("media") == Some(victim_addr.as_str()))
        .count();
    let out = tokio::task::spawn_blocking(move || load.wait()).await??;
    let stats = out.stats.clone().with_context(|| out.diagnostics())?;
    let answered: Vec<_> = out
        .log_lines
        .iter()
        .filter(|l| l.tag == "ANSWERED")
        .collect();
    let by_victim = answered
        .iter()
        .filter(|l| l.get("media") == Some(victim_addr.as_str()))
        .count();
    let failed_over = bed
        .edge_log(100_000)
        .lines()
        .filter(|l| l.contains(&format!("media node {} failed", victim.uri())))
        .count();
    println!(
        "node loss under load: {} calls at {RATE}/s; {} killed, marked inactive {marked:.1?} after the kill; \
         INVITEs moved inside their transaction: {failed_over}; answered {} of {}; \
         SIPp failed calls: {}; answers per node: {:?}",
        stats.total_created(),
        victim.uri(),
        answered.len(),
        stats.total_created(),
        stats.failed(),
        out.answered_by()
    );
    assert_eq!(stats.total_created(), calls, "{}", out.diagnostics());
    assert_eq!(
        answered.len() as u64,
        calls,
        "every new call was set up: {}",
        out.diagnostics()
    );
    assert_eq!(
        by_victim, answered_by_victim_at_mark,
        "no call reached the node after it was marked"
    );
    assert!(
        out.answered_by()
            .get(&format!("{}:{}", survivor.address, survivor.sip_port))
            .copied()
            .unwrap_or(0)
            > 0,
        "{:?}",
        out.answered_by()
    );
    // with no pause between ACK and BYE, a call is up for milliseconds: at most a
    // few can have been up on the node when it died
    assert!(
        stats.failed() <= 3,
        "{} calls failed: {}",
        stats.failed(),
        out.diagnostics()
    );
    bed.down().await
}

/// Routes choose the media service: a route with `service: conference` puts two
/// callers of the same number in one bridge, and each hears the other (not
/// itself); `service: tone` plays a tone. A caller cannot choose a service: its
/// own X-Sipstack-Service header is removed at the edge, and the default service
/// (which echoes) answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_choose_the_media_service() -> Result<()> {
    use sipstack_db::route::{MatchKind, NewRoute, Target};
    if !freeswitch_present("routes_choose_the_media_service") {
        return Ok(());
    }
    let bed = platform_with_nodes(1).await?;
    let db = bed.db().await?;
    for (name, exp, service) in [
        ("rooms", "^3[0-9]{3}$", "conference"),
        ("tone", "^4000$", "tone"),
    ] {
        sipstack_db::route::add(
            &db,
            &NewRoute {
                name: name.into(),
                priority: 10,
                match_kind: MatchKind::Regex,
                match_value: exp.into(),
                source_domain: None,
                source: Default::default(),
                target: Target::Pool("media".into()),
                service: Some(service.into()),
                description: String::new(),
            },
        )
        .await?;
    }
    bed.reload_routes().await?;

    // two callers in conference 3001, talking at once for 4 s
    let a = tokio::task::spawn_blocking({
        let c = call(&bed, "3001", vec![G711::Pcmu], Duration::from_secs(4));
        move || c.run()
    });
    let b = tokio::task::spawn_blocking({
        let c = call(&bed, "3001", vec![G711::Pcmu], Duration::from_secs(4));
        move || c.run()
    });
    let (a, b) = (a.await??, b.await??);
    eprintln!("{a:?}\n{b:?}");
    for (who, r) in [("a", &a), ("b", &b)] {
        assert_eq!(r.bye_status, Some(200), "{who}: {r:?}");
        assert_eq!(r.packets_echoed, 0, "{who} heard its own audio back: {r:?}");
        // the other caller's noise, mixed: louder than silence by far
        assert!(
            r.received_rms > 0.05,
            "{who} heard {:.3}: {r:?}",
            r.received_rms
        );
    }

    // the tone service: audio from the node, none of it ours
    let tone = place(call(&bed, "4000", vec![G711::Pcmu], Duration::from_secs(2))).await?;
    assert_eq!(tone.packets_echoed, 0, "{tone:?}");
    assert!(
        tone.received_rms > 0.05 && tone.packets_received > 50,
        "{tone:?}"
    );

    // a caller asking for the conference on a number without such a route gets the default
    let mut sneaky = call(&bed, "3999x", vec![G711::Pcmu], Duration::from_secs(3));
    sneaky.extra_headers = vec!["X-Sipstack-Service: conference".into()];
    let r = place(sneaky).await?;
    assert!(
        r.packets_echoed > 20,
        "the caller's header chose the service: {r:?}"
    );
    bed.down().await
}

/// The IVR service: a caller who presses 1 (an RFC 2833 event) is transferred to
/// the conference room "ivr"; two callers who both press 1 hear each other there.
/// A caller who presses 2 gets the echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ivr_transfers_by_key_to_the_conference_and_the_echo() -> Result<()> {
    use sipstack_db::route::{MatchKind, NewRoute, Target};
    if !freeswitch_present("the_ivr_transfers_by_key_to_the_conference_and_the_echo") {
        return Ok(());
    }
    let bed = platform_with_nodes(1).await?;
    let db = bed.db().await?;
    sipstack_db::route::add(
        &db,
        &NewRoute {
            name: "menu".into(),
            priority: 10,
            match_kind: MatchKind::Exact,
            match_value: "5000".into(),
            source_domain: None,
            source: Default::default(),
            target: Target::Pool("media".into()),
            service: Some("ivr".into()),
            description: String::new(),
        },
    )
    .await?;
    bed.reload_routes().await?;
    let pressing = |key: char, talk: u64| {
        let mut c = call(&bed, "5000", vec![G711::Pcmu], Duration::from_secs(talk));
        c.dtmf = vec![(Duration::from_millis(1200), key)];
        c
    };
    let a = tokio::task::spawn_blocking({
        let c = pressing('1', 6);
        move || c.run()
    });
    let b = tokio::task::spawn_blocking({
        let c = pressing('1', 6);
        move || c.run()
    });
    let (a, b) = (a.await??, b.await??);
    eprintln!("{a:?}\n{b:?}");
    for (who, r) in [("a", &a), ("b", &b)] {
        assert_eq!(
            r.bye_status,
            Some(200),
            "{who} was not kept in the call: {r:?}"
        );
        assert_eq!(r.packets_echoed, 0, "{who}: {r:?}");
        // the last second: the other caller, not the menu's beep or silence
        assert!(
            r.received_rms_tail > 0.05,
            "{who} heard {:.3} at the end: {r:?}",
            r.received_rms_tail
        );
    }
    let echo = place(pressing('2', 4)).await?;
    assert!(echo.packets_echoed > 30, "key 2 gives the echo: {echo:?}");
    bed.down().await
}

/// Voicemail on two nodes: a call to a subscriber who is not registered, and one to
/// a subscriber whose phone never answers, each leave a message (a 1200 Hz tone the
/// caller sends). The messages are rows of the database with their audio, so the
/// subscriber hears them through the other node while the one that recorded them
/// takes no calls. A caller who names another subscriber in an X-Sipstack-*
/// header of its own hears only its own (empty) inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_left_through_one_node_is_heard_through_the_other() -> Result<()> {
    use sipstack_db::route::{MatchKind, NewRoute, Target};
    if !freeswitch_present("voicemail_left_through_one_node_is_heard_through_the_other") {
        return Ok(());
    }
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").freeswitch(2)?],
        default_pool: Some("media".into()),
        voicemail: Some(("media".into(), 5)),
        ..Default::default()
    };
    let bed = Testbed::up(&spec).await?;
    bed.add_subscriber("alice", "alice-secret").await?;
    bed.add_subscriber("bob", "bob-secret").await?;
    bed.wait_for_destinations(Duration::from_secs(20), |d| {
        d.iter().filter(|x| x.is_active()).count() == 2
    })
    .await?;
    let db = bed.db().await?;
    sipstack_db::route::add(
        &db,
        &NewRoute {
            name: "inbox".into(),
            priority: 10,
            match_kind: MatchKind::Exact,
            match_value: "*98".into(),
            source_domain: None,
            source: Default::default(),
            target: Target::Pool("media".into()),
            service: Some("voicemail-inbox".into()),
            description: String::new(),
        },
    )
    .await?;
    sipstack_db::route::add(
        &db,
        &NewRoute {
            name: "subscribers".into(),
            priority: 20,
            match_kind: MatchKind::Regex,
            match_value: "^(alice|bob)$".into(),
            source_domain: None,
            source: Default::default(),
            target: Target::User,
            service: None,
            description: String::new(),
        },
    )
    .await?;
    bed.reload_routes().await?;
    let bob = format!("bob@{DOMAIN}");
    let messages_for_bob = |n: usize| {
        let db = &db;
        let bob = &bob;
        async move {
            for _ in 0..40 {
                let all = sipstack_db::voicemail::list(db, Some(bob)).await?;
                if all.len() >= n {
                    return Ok(all);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            anyhow::bail!("bob has fewer than {n} messages after 10 s")
        }
    };
    let leave_message = |talk: u64| VoiceCall {
        tone_hz: Some(1200.0),
        ..call(&bed, "bob", vec![G711::Pcmu], Duration::from_secs(talk))
    };

    // bob is not registered: the call goes to voicemail at once
    let first = place(leave_message(9)).await?;
    eprintln!("{first:?}");
    assert_eq!(first.bye_status, Some(200), "{first:?}");
    let recorded_on = first.remote_rtp.context("no answer SDP")?.ip();
    let left = messages_for_bob(1).await?;
    eprintln!("{left:?}");
    assert_eq!(left[0].media_node, recorded_on.to_string());
    assert!(left[0].caller.contains("alice"), "{left:?}");
    // the prompt and the tone take about 4 s of the 9 s
    assert!((2000..=9000).contains(&left[0].duration_ms), "{left:?}");
    assert!(left[0].audio_bytes > 30_000, "{left:?}");
    assert!(left[0].heard_at.is_none());

    // bob's phone registers at a port where nothing answers: after the 5 s the
    // spec gives a silent phone, the caller gets voicemail
    // (the phone is SIPp, which leaves the port once registered)
    let silent_port = sipstack_e2e::ports::free_udp_and_tcp_port()?;
    sipstack_e2e::testbed::register_phone(bed.edge(), "bob", "bob-secret", silent_port).await?;
    let second = place(leave_message(9)).await?;
    assert_eq!(second.bye_status, Some(200), "{second:?}");
    assert!(second.setup >= Duration::from_secs(4), "{second:?}");
    let left = messages_for_bob(2).await?;

    // the node that recorded the first message takes no new calls
    let (_, password) = node(&bed, 0)?;
    let nodes = [node(&bed, 0)?.0, node(&bed, 1)?.0];
    let recorder = nodes
        .iter()
        .find(|n| n.uri().contains(&recorded_on.to_string()))
        .context("the recording node")?;
    recorder
        .api(&password, "fsctl pause inbound")
        .await
        .map_err(anyhow::Error::msg)?;

    // alice names bob in headers of her own: her inbox is empty, bob's is untouched
    let mut forged = VoiceCall {
        listen_hz: Some(1200.0),
        ..call(&bed, "*98", vec![G711::Pcmu], Duration::from_secs(8))
    };
    forged.extra_headers = vec![
        format!("X-Sipstack-Subscriber: {bob}"),
        format!("x-sipstack-subscriber: {bob}"),
        format!("X-Sipstack-Mailbox: {bob}"),
    ];
    let forged = place(forged).await?;
    eprintln!("forged: {forged:?}");
    assert!(
        forged.tone_share < 0.5,
        "alice heard bob's message: {forged:?}"
    );
    let after_forgery = sipstack_db::voicemail::list(&db, Some(&bob)).await?;
    assert!(
        after_forgery.iter().all(|m| m.heard_at.is_none()),
        "{after_forgery:?}"
    );

    // bob hears his messages through the other node
    let inbox = VoiceCall {
        listen_hz: Some(1200.0),
        ..VoiceCall::new(bed.edge(), "bob", "bob-secret", DOMAIN, "*98")
    };
    let inbox = VoiceCall {
        talk: Duration::from_secs(16),
        ..inbox
    };
    let heard = place(inbox).await?;
    eprintln!("inbox: {heard:?}");
    assert_ne!(
        heard.remote_rtp.map(|a| a.ip()),
        Some(recorded_on),
        "{heard:?}"
    );
    assert!(
        heard.tone_share > 0.8,
        "bob did not hear the tone: {heard:?}"
    );
    let after = sipstack_db::voicemail::list(&db, Some(&bob)).await?;
    assert!(after[0].heard_at.is_some(), "{after:?}");
    assert_eq!(after.len(), left.len());
    bed.down().await
}
