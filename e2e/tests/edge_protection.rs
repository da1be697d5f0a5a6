//! The edge's own defences and control plane, on real Kamailio: the RPC endpoint
//! answers only on its socket and only to allowed networks, metrics are served,
//! scanners are dropped, flooding sources are banned, and the TLS listener
//! speaks SIP with the spec's certificate.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use sipstack_e2e::sipp::{InjectionFile, SippCommand, SippOutcome};
use sipstack_e2e::testbed::{free_tcp_port, standin, PoolSpec, Ports, Testbed, TestbedSpec};

fn spec(member: SocketAddr) -> TestbedSpec {
    TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        default_pool: Some("media".into()),
        flood_requests_per_window: Some(10),
        extra_edge_spec: "  scannerFilter: {extraUserAgents: [evil.bot]}\n".into(),
        ..Default::default()
    }
}

async fn keepalive(
    tb: &Testbed,
    from: IpAddr,
    user_agent: &str,
    calls: u64,
    rate: u32,
) -> SippOutcome {
    SippCommand::scenario("options_keepalive")
        .remote(tb.edge())
        .local_ip(from)
        .key("ua", user_agent)
        .injection(InjectionFile::sequential().line(["x"]))
        .max_calls(calls)
        .rate(rate)
        .recv_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(30))
        .run_async()
        .await
        .unwrap()
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_and_metrics_only_for_allowed_sources_on_their_socket() {
    let (media, _s) = standin(0).unwrap();
    let tb = Testbed::up(&spec(media)).await.unwrap();
    let rpc_url = format!("http://127.0.0.1:{}", tb.ports.rpc);

    assert!(tb.rpc.version().await.unwrap().contains("kamailio"));

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let metrics = http.get(format!("{rpc_url}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let body = metrics.text().await.unwrap();
    assert!(
        body.contains("kamailio_core_rcv_requests"),
        "metrics:\n{}",
        &body[..body.len().min(2000)]
    );
    assert!(
        body.contains("kamailio_usrloc_registered_users"),
        "usrloc statistics are exported"
    );

    // a source outside rpc.allowFrom (127.0.0.1/32)
    let outsider = reqwest::Client::builder()
        .local_address(ip(9))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let refused = outsider
        .post(format!("{rpc_url}/RPC"))
        .body(r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let refused = outsider
        .get(format!("{rpc_url}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // an allowed source without the token gets nothing
    let no_token = http
        .post(format!("{rpc_url}/RPC"))
        .body(r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);

    // the credential cache is not readable over RPC, even from an allowed source with the token
    let dump = http
        .post(format!("{rpc_url}/RPC"))
        .bearer_auth(tb.rpc_token().unwrap())
        .body(r#"{"jsonrpc":"2.0","method":"htable.dump","params":["authcache"],"id":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(dump.status(), 403);

    // SIP sent to the RPC socket is not answered
    let mut sip = std::net::TcpStream::connect(("127.0.0.1", tb.ports.rpc)).unwrap();
    sip.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let options = format!(
        "OPTIONS sip:127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-rpc-1\r\nFrom: <sip:probe@example.com>;tag=1\r\nTo: <sip:127.0.0.1:{p}>\r\nCall-ID: rpc-probe-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        p = tb.ports.rpc
    );
    sip.write_all(options.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = sip.read_to_string(&mut answer);
    assert!(
        !answer.contains("SIP/2.0 200"),
        "the RPC socket answered SIP:\n{answer}"
    );

    // HTTP on the SIP TCP listener is not the control plane
    let sip_tcp = http
        .post(format!("http://127.0.0.1:{}/RPC", tb.ports.sip))
        .body(r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(sip_tcp.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanners_are_dropped_and_flooding_sources_banned() {
    let (media, _s) = standin(0).unwrap();
    let tb = Testbed::up(&spec(media)).await.unwrap();

    // scanner filter: built-in and spec-given fragments, matched literally
    keepalive(&tb, ip(40), "Linphone/5.0", 1, 10)
        .await
        .ensure_all_succeeded(1)
        .unwrap();
    for scanner in ["friendly-scanner", "sipvicious 0.3", "Evil.Bot crawler"] {
        let out = keepalive(&tb, ip(41), scanner, 1, 10).await;
        assert_eq!(out.successful(), 0, "{scanner:?} was answered");
    }
    keepalive(&tb, ip(42), "EvilXBot", 1, 10)
        .await
        .ensure_all_succeeded(1)
        .unwrap();

    // flood: 10 requests per 2 s window per source, then a ban
    let flood = keepalive(&tb, ip(50), "Linphone/5.0", 60, 100).await;
    println!("flooding source: {} of 60 answered", flood.successful());
    assert!(
        flood.successful() >= 5 && flood.successful() < 40,
        "{}",
        flood.diagnostics()
    );
    let banned = keepalive(&tb, ip(50), "Linphone/5.0", 1, 1).await;
    assert_eq!(banned.successful(), 0, "the flooding source is banned");
    keepalive(&tb, ip(51), "Linphone/5.0", 1, 1)
        .await
        .ensure_all_succeeded(1)
        .unwrap();
    assert!(
        tb.edge_log(50).contains("flood from 127.0.0.50"),
        "{}",
        tb.edge_log(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_speaks_sip_with_the_spec_certificate() {
    let (media, _s) = standin(0).unwrap();
    let certs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        certs.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=edge.example.com",
        ])
        .arg("-keyout")
        .arg(certs.path().join("tls.key"))
        .arg("-out")
        .arg(certs.path().join("tls.crt"))
        .output()
        .unwrap();
    assert!(out.status.success());

    let ports = Ports::free().unwrap();
    let tls_port = free_tcp_port().unwrap();
    let yaml = spec(media).yaml(ports).replace(
        "  rpc:",
        &format!(
            "  tls: {{certificateFile: {d}/tls.crt, privateKeyFile: {d}/tls.key}}\n  rpc:",
            d = certs.path().display()
        ),
    );
    let yaml = yaml.replace(
        &format!("    - {{transport: tcp, address: 127.0.0.1, port: {}}}\n", ports.sip),
        &format!(
            "    - {{transport: tcp, address: 127.0.0.1, port: {}}}\n    - {{transport: tls, address: 127.0.0.1, port: {tls_port}}}\n",
            ports.sip
        ),
    );
    assert!(yaml.contains("transport: tls"));
    let _tb = Testbed::up_yaml(yaml, ports).await.unwrap();

    let options = format!(
        "OPTIONS sip:127.0.0.1:{tls_port};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-tls-1\r\nFrom: <sip:probe@example.com>;tag=1\r\nTo: <sip:127.0.0.1:{tls_port}>\r\nCall-ID: tls-probe-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let mut client = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-connect",
            &format!("127.0.0.1:{tls_port}"),
            "-servername",
            "edge.example.com",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    client
        .stdin
        .as_mut()
        .unwrap()
        .write_all(options.as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let _ = client.kill();
    let _ = client.wait();
    let mut answer = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut answer)
        .unwrap();
    let mut handshake = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut handshake)
        .unwrap();
    assert!(
        handshake.contains("CN = edge.example.com"),
        "certificate of the spec presented:\n{handshake}"
    );
    assert!(
        answer.starts_with("SIP/2.0 200"),
        "SIP over TLS answered:\n{answer}\n{handshake}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_rpc_have_their_own_allowed_networks() {
    let (media, _s) = standin(0).unwrap();
    let mut spec = spec(media);
    // scrapers in 127.0.0.8/29 see metrics only; RPC stays with 127.0.0.1
    spec.extra_edge_spec
        .push_str("  metrics: {allowFrom: [127.0.0.8/29]}\n");
    let tb = Testbed::up(&spec).await.unwrap();
    let base = format!("http://127.0.0.1:{}", tb.ports.rpc);
    let scraper = reqwest::Client::builder()
        .local_address(ip(9))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert_eq!(
        scraper
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let rpc = scraper
        .post(format!("{base}/RPC"))
        .body(r#"{"jsonrpc":"2.0","method":"core.version","id":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(rpc.status(), 403, "a scraper gets no RPC");
    let local = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert_eq!(
        local
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        403,
        "RPC's network is not a scraper"
    );
    assert!(tb.rpc.version().await.is_ok());
}
