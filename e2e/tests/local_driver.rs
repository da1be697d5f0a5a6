//! The local driver: `up`, `status`, `down` and `up` again, losing nothing.

use std::time::Duration;

use sipstack_e2e::sipp::free_udp_port_on;
use sipstack_e2e::testbed::{
    call_from_media, media_ip, phone, register_phone, PoolSpec, Ports, TestbedSpec, DOMAIN, EDGE_IP,
};
use sipstack_local::{process, UpOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_and_up_again_keeps_subscribers_and_registrations() {
    let dir = sipstack_e2e::testbed::state_dir("sipstack-local-").unwrap();
    let media_port = free_udp_port_on(media_ip(0)).unwrap();
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(
            std::net::SocketAddr::new(media_ip(0), media_port),
            1,
            0,
        )],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let ports = Ports::free().unwrap();
    let yaml = spec.yaml(ports);
    // the driver starts the stand-in for the loopback member itself
    let options = UpOptions {
        state_dir: dir.path().to_path_buf(),
        standins: true,
    };

    let (state, report) = sipstack_local::up(&yaml, &options).await.unwrap();
    let text = report.lines.join("\n");
    assert!(text.contains("stand-in"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{}", ports.sip)), "{text}");
    let db = sipstack_db::connect(&state.db_url().unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    sipstack_db::subscriber::add(&db, "carol", DOMAIN, "carol-pw")
        .await
        .unwrap();

    let edge = std::net::SocketAddr::new(EDGE_IP, ports.sip);
    let phone_port = free_udp_port_on(EDGE_IP).unwrap();
    register_phone(edge, "carol", "carol-pw", phone_port)
        .await
        .unwrap();

    let status = sipstack_local::status(dir.path()).await.unwrap();
    assert!(status.postgres_running);
    assert!(
        status.edges[0].pid.is_some() && status.edges[0].rpc_error.is_none(),
        "{:?}",
        status.edges
    );
    assert_eq!(status.edges[0].destinations.len(), 1);
    assert!(status.standins.iter().all(|(_, alive)| *alive));
    let pids: Vec<i32> = status
        .edges
        .iter()
        .filter_map(|e| e.pid)
        .chain(status.standins.iter().map(|(s, _)| s.pid))
        .collect();

    let report = sipstack_local::down(dir.path()).await.unwrap();
    assert!(
        report.lines.iter().any(|l| l.contains("stopped")),
        "{:?}",
        report.lines
    );
    for pid in &pids {
        assert!(!process::is_alive(*pid), "pid {pid} still runs after down");
    }
    let status = sipstack_local::status(dir.path()).await.unwrap();
    assert!(!status.postgres_running);
    assert!(status.edges[0].pid.is_none());
    drop(db);

    // up again: the subscriber and the registration are still there
    let (state, _) = sipstack_local::up(&yaml, &options).await.unwrap();
    let db = sipstack_db::connect(&state.db_url().unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    let subscribers = sipstack_db::subscriber::list(&db).await.unwrap();
    assert!(
        subscribers.iter().any(|s| s.username == "carol"),
        "{subscribers:?}"
    );

    // carol's phone gets a call without registering again: usrloc reloaded it
    // the test plays the media node on its address (trusted by address and port)
    let stopped = sipstack_local::standin::stop_all(&dir.path().join("media-media"))
        .await
        .unwrap();
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    let phone = phone(phone_port).unwrap();
    let member = std::net::SocketAddr::new(media_ip(0), media_port);
    let out = call_from_media(edge, member, "carol", 1).await.unwrap();
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(phone.stop().unwrap().lines("RECEIVED").count(), 1);

    sipstack_local::down(dir.path()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_platform_file_starts_nothing_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TestbedSpec::default();
    let yaml = spec
        .yaml(Ports::free().unwrap())
        .replace("minExpires: 10", "minExpires: 10, maxExpires: 5");
    let options = UpOptions {
        state_dir: dir.path().to_path_buf(),
        standins: false,
    };
    let err = sipstack_local::up(&yaml, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.registrar.minExpires"), "{err}");
    assert!(!dir.path().join("state.json").exists());
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_cleans_up_after_an_up_that_failed_half_way() {
    let dir = sipstack_e2e::testbed::state_dir("sipstack-local-").unwrap();
    let ports = Ports::free().unwrap();
    // someone else holds the SIP port: PostgreSQL starts, Kamailio cannot
    let _squatter = std::net::UdpSocket::bind(("127.0.0.1", ports.sip)).unwrap();
    let yaml = TestbedSpec::default().yaml(ports);
    let options = UpOptions {
        state_dir: dir.path().to_path_buf(),
        standins: false,
    };
    let err = sipstack_local::up(&yaml, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Kamailio of SipEdge edge"), "{err}");
    let postgres =
        sipstack_local::postgres::LocalPostgres::new(dir.path().join("pg-pg"), ports.postgres, 15);
    assert!(
        postgres.is_running(),
        "PostgreSQL was started before Kamailio failed"
    );

    sipstack_local::down(dir.path()).await.unwrap();
    assert!(
        !postgres.is_running(),
        "down stopped it although up never wrote state.json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_dropped_from_the_file_loses_its_members_and_its_trust() {
    let dir = sipstack_e2e::testbed::state_dir("sipstack-local-").unwrap();
    let a = std::net::SocketAddr::new(media_ip(0), 5080);
    let b = std::net::SocketAddr::new(media_ip(1), 5080);
    let ports = Ports::free().unwrap();
    let both = TestbedSpec {
        pools: vec![
            PoolSpec::new("media", 1, "roundRobin").member(a, 1, 0),
            PoolSpec::new("old", 2, "roundRobin").member(b, 1, 0),
        ],
        ..Default::default()
    };
    let options = UpOptions {
        state_dir: dir.path().to_path_buf(),
        standins: false,
    };
    sipstack_local::up(&both.yaml(ports), &options)
        .await
        .unwrap();
    let one = TestbedSpec {
        pools: vec![both.pools[0].clone()],
        ..Default::default()
    };
    let (state, report) = sipstack_local::up(&one.yaml(ports), &options)
        .await
        .unwrap();
    assert!(
        report
            .lines
            .iter()
            .any(|l| l.contains("MediaPool/old is no longer declared")),
        "{:?}",
        report.lines
    );

    let db = sipstack_db::connect(&state.db_url().unwrap(), Duration::from_secs(5))
        .await
        .unwrap();
    let rows = sipstack_db::dispatcher::list(&db).await.unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r.destination.as_str())
            .collect::<Vec<_>>(),
        [format!("sip:{a}")]
    );
    let live = state.edges[0]
        .rpc()
        .unwrap()
        .dispatcher_list()
        .await
        .unwrap();
    assert!(
        live.iter().all(|d| d.set_id == 1),
        "the edge dropped set 2 too: {live:?}"
    );
    sipstack_local::down(dir.path()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_up_keeps_the_running_platform_and_its_file() {
    let dir = sipstack_e2e::testbed::state_dir("sipstack-local-").unwrap();
    let ports = Ports::free().unwrap();
    let yaml = TestbedSpec::default().yaml(ports);
    let options = UpOptions {
        state_dir: dir.path().to_path_buf(),
        standins: false,
    };
    let (state, _) = sipstack_local::up(&yaml, &options).await.unwrap();
    // the same platform with a three-member database cannot reuse the single server's data
    let ha = yaml.replace("spec: {instances: 1,", "spec: {instances: 3,");
    assert_ne!(ha, yaml);
    let err = sipstack_local::up(&ha, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds the single PostgreSQL server"), "{err}");
    assert_eq!(std::fs::read_to_string(&state.platform_file).unwrap(), yaml);
    let status = sipstack_local::status(dir.path()).await.unwrap();
    assert!(status.postgres_running && status.edges[0].pid.is_some());
    sipstack_local::down(dir.path()).await.unwrap();
}

/// A change to an edge that cannot start (its new port was taken meanwhile) leaves
/// the edge running with the config it had; `up` and `down` exclude each other; an
/// edge dropped from the file is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_edge_change_keeps_the_old_edge_and_a_dropped_edge_stops() {
    let dir = sipstack_e2e::testbed::state_dir("sipstack-local-").unwrap();
    let ports = Ports::free().unwrap();
    let yaml = TestbedSpec::default().yaml(ports);
    let options = UpOptions {
        state_dir: dir.path().to_path_buf(),
        standins: false,
    };
    let (state, _) = sipstack_local::up(&yaml, &options).await.unwrap();
    let config = std::fs::read_to_string(&state.edges[0].config).unwrap();

    // while another `up` or `down` holds the state directory, this one is refused
    let held = sipstack_local::state::StateLock::acquire(dir.path(), "up").unwrap();
    let err = sipstack_local::up(&yaml, &options)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("another sipctl"), "{err}");
    let err = sipstack_local::down(dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("another sipctl"), "{err}");
    drop(held);

    // the SIP port moves to one that something else holds: Kamailio cannot bind it
    let busy = sipstack_e2e::testbed::free_udp_and_tcp_port().unwrap();
    let _udp = std::net::UdpSocket::bind(("127.0.0.1", busy)).unwrap();
    let _tcp = std::net::TcpListener::bind(("127.0.0.1", busy)).unwrap();
    let moved = yaml.replace(
        &format!("port: {}}}", ports.sip),
        &format!("port: {busy}}}"),
    );
    assert_ne!(moved, yaml);
    let err = sipstack_local::up(&moved, &options).await.unwrap_err();
    assert!(
        matches!(err, sipstack_local::LocalError::Start { .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&state.edges[0].config).unwrap(),
        config,
        "the edge's config was not put back"
    );
    let rpc = state.edges[0].rpc().unwrap();
    assert!(rpc.version().await.unwrap().contains("kamailio"));
    let probe = sipstack_e2e::rawsip::SipSocket::bind(EDGE_IP).unwrap();
    let from = probe.local_addr().unwrap();
    probe
        .send(
            std::net::SocketAddr::new(EDGE_IP, ports.sip),
            &format!(
                "OPTIONS sip:{EDGE_IP}:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-keep-1\r\nFrom: <sip:probe@{DOMAIN}>;tag=1\r\nTo: <sip:{EDGE_IP}:{p}>\r\nCall-ID: keep-old-edge\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                p = ports.sip
            ),
        )
        .unwrap();
    let reply = probe.recv(Duration::from_secs(5)).unwrap();
    assert_eq!(
        reply.and_then(|r| r.status()),
        Some(200),
        "the old edge does not answer on its port"
    );

    // a second edge, then the file without it: it is stopped
    let sip2 = sipstack_e2e::testbed::free_udp_and_tcp_port().unwrap();
    let rpc2 = sipstack_e2e::testbed::free_tcp_port().unwrap();
    let edge_doc = &yaml[yaml
        .find("---\napiVersion: sipstack.io/v1alpha1\nkind: SipEdge")
        .unwrap()..];
    let second = edge_doc
        .replace("metadata: {name: edge}", "metadata: {name: edge2}")
        .replace(
            &format!("port: {}}}", ports.sip),
            &format!("port: {sip2}}}"),
        )
        .replace(
            &format!("port: {}}}", ports.rpc),
            &format!("port: {rpc2}}}"),
        );
    let two = format!("{yaml}{second}");
    let (state2, _) = sipstack_local::up(&two, &options).await.unwrap();
    assert_eq!(state2.edges.len(), 2);
    let edge2 = sipstack_local::kamailio::LocalKamailio::new(dir.path(), "edge2");
    let pid2 = edge2.running_pid().expect("edge2 runs");
    let (_, report) = sipstack_local::up(&yaml, &options).await.unwrap();
    assert!(
        report
            .lines
            .iter()
            .any(|l| l.contains("SipEdge/edge2 is no longer declared")),
        "{:?}",
        report.lines
    );
    assert!(edge2.running_pid().is_none() && !process::is_alive(pid2));
    sipstack_local::down(dir.path()).await.unwrap();
}

/// The process-list check of the other tests finds a secret on a command line.
#[test]
fn a_secret_on_a_command_line_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pg/secrets")).unwrap();
    std::fs::write(
        dir.path().join("pg/secrets/db-url"),
        "postgres://u:Zq8secretVALUE@h/db\n",
    )
    .unwrap();
    assert!(sipstack_e2e::testbed::secrets_on_command_lines(dir.path())
        .unwrap()
        .is_empty());
    // a shell that waits, with the secret as an argument it keeps (sleep itself
    // would refuse the extra argument and exit at once)
    let mut child = std::process::Command::new("sh")
        .args(["-c", "sleep 30; : \"$0\"", "Zq8secretVALUE"])
        .spawn()
        .unwrap();
    // the child shows its own command line once it has exec'd the shell
    let mut leaks = Vec::new();
    for _ in 0..50 {
        leaks = sipstack_e2e::testbed::secrets_on_command_lines(dir.path()).unwrap();
        if !leaks.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // the shell, and for a moment the child it forks for sleep
    assert!(
        !leaks.is_empty() && leaks.iter().all(|l| l.contains("secrets/db-url")),
        "{leaks:?}"
    );
}
