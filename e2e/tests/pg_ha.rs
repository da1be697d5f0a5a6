//! PostgreSQL HA against the real programs: a PgCluster of three Patroni members,
//! three etcd members, HAProxy and PgBouncer, brought up by the local driver, with
//! Kamailio in front. Members are killed, switched over and cut off from etcd
//! while a writer records every acknowledged row and SIPp keeps REGISTERing.

use std::time::{Duration, Instant};

use sipstack_e2e::pgha::{
    add_register_users, check_no_loss, register_load, success_rate, up_ha, ClusterHandle, HaSpec,
    Writer,
};
use sipstack_e2e::sipp::free_udp_port_on;
use sipstack_e2e::testbed::{register_phone, Testbed, TestbedSpec, EDGE_IP};
use sipstack_patroni::{Role, SwitchoverRequest};

struct HaBed {
    bed: Testbed,
    cluster: ClusterHandle,
}

async fn ha_testbed(ha: HaSpec) -> HaBed {
    let (bed, cluster) = up_ha(&TestbedSpec::default(), &ha).await.unwrap();
    HaBed { bed, cluster }
}

/// Superuser connection straight to one member (not through HAProxy).
async fn member_db(h: &HaBed, member: &str) -> tokio_postgres::Client {
    let password =
        std::fs::read_to_string(h.bed.state_dir().join("pg-pg/secrets/postgres.password")).unwrap();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(h.cluster.member_port(member).unwrap())
        .user("postgres")
        .password(password.trim())
        .dbname("sipstack");
    sipstack_db::connect_with(config, Duration::from_secs(10))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_forms_and_the_edge_registers_through_it() {
    let h = ha_testbed(HaSpec {
        pooler: true,
        ..HaSpec::default()
    })
    .await;
    let cluster = h.cluster.cluster().await.unwrap();
    let leaders: Vec<_> = cluster
        .members
        .iter()
        .filter(|m| m.role.is_leader())
        .collect();
    assert_eq!(leaders.len(), 1, "{cluster:?}");
    assert_eq!(
        cluster
            .members
            .iter()
            .filter(|m| m.role == Role::SyncStandby)
            .count(),
        1,
        "{cluster:?}"
    );
    let leader = leaders[0].name.clone();

    // two streaming replicas, seen by the primary itself
    let primary = member_db(&h, &leader).await;
    let streaming: i64 = primary
        .query_one(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(streaming, 2);

    // the schema was applied once, on the primary, and reached the replicas
    let db = h.bed.db().await.unwrap();
    let versions: Vec<i32> = db
        .query(
            "SELECT version FROM sipstack_schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        versions,
        (1..=sipstack_db::latest_version()).collect::<Vec<_>>()
    );
    let replica = cluster
        .members
        .iter()
        .find(|m| !m.role.is_leader())
        .unwrap()
        .name
        .clone();
    let replica_db = member_db(&h, &replica).await;
    let in_recovery: bool = replica_db
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery);
    // a second `up` changes nothing and applies no migration
    let report = h.bed.up_again().await.unwrap();
    assert!(
        report
            .lines
            .iter()
            .any(|l| l.contains("0 migration(s) applied")),
        "{:?}",
        report.lines
    );
    assert_eq!(
        h.cluster.leader().await.unwrap(),
        leader,
        "a second up must not move the primary"
    );

    // the read-only endpoint lands on a replica
    let ro_url = h.bed.db_url.replace(
        &format!(":{}/", h.bed.ports.postgres),
        &format!(":{}/", h.cluster.hp.read_only),
    );
    let ro = sipstack_db::connect(&ro_url, Duration::from_secs(10))
        .await
        .unwrap();
    let ro_recovery: bool = ro
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(ro_recovery, "the read-only endpoint reached the primary");

    // Kamailio (through PgBouncer and HAProxy) authenticates and stores a registration
    h.bed.add_subscriber("alice", "alice-pw").await.unwrap();
    let port = free_udp_port_on(EDGE_IP).unwrap();
    register_phone(h.bed.edge(), "alice", "alice-pw", port)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = replica_db
            .query_one(
                "SELECT count(*) FROM location WHERE username = 'alice'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the registration never reached the replica's location table"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = sipstack_local::status(&h.bed.state_dir()).await.unwrap();
    let seen = status.cluster.unwrap().unwrap();
    assert_eq!(seen.members.len(), 3);

    // Patroni, etcd, HAProxy, PgBouncer, Kamailio: no secret is on a command line
    let leaks = sipstack_e2e::testbed::secrets_on_command_lines(&h.bed.state_dir()).unwrap();
    assert!(leaks.is_empty(), "{leaks:#?}");

    // `down` stops the replicas before the leader, so none of them takes over
    let promotions = |dir: &std::path::Path| {
        (0..3)
            .map(|n| {
                std::fs::read_to_string(dir.join(format!("pg-pg/member-{n}/patroni.log")))
                    .unwrap_or_default()
                    .matches("promoted self to leader")
                    .count()
            })
            .sum::<usize>()
    };
    let dir = h.bed.state_dir();
    let before = promotions(&dir);
    sipstack_local::down(&dir).await.unwrap();
    assert_eq!(
        promotions(&dir),
        before,
        "a replica was promoted while the cluster was being stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_primary_loses_no_acknowledged_write() {
    let h = ha_testbed(HaSpec::default()).await;
    let url = h.bed.db_url.clone();
    Writer::prepare(&url).await.unwrap();
    add_register_users(&url, 20).await.unwrap();
    let old = h.cluster.leader().await.unwrap();

    let load = register_load(h.bed.edge(), 20, 20, Duration::from_secs(35))
        .unwrap()
        .run_async();
    let load = tokio::spawn(load);
    let writer = Writer::start(&url, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(5)).await;

    let killed_at = Instant::now();
    h.cluster.kill_member(&old).unwrap();
    let new = h
        .cluster
        .wait_for_leader(Some(&old), Duration::from_secs(40))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = writer.finish().await;
    let old_port = h.cluster.member_port(&old).unwrap();
    let gap = log
        .first_ack_elsewhere(killed_at, old_port)
        .expect("no write succeeded on the new primary after the kill");
    // nothing was acknowledged by the killed primary once its commits in flight returned
    assert!(
        log.acks
            .iter()
            .filter(|a| a.server_port == i32::from(old_port))
            .all(|a| a.at < killed_at + Duration::from_millis(500)),
        "the killed primary acknowledged writes after the kill"
    );
    let out = load.await.unwrap().unwrap();
    let rate = success_rate(&out);
    println!(
        "SIGKILL of {old}: {new} took over; first write {:.1} s after the kill; {} rows acknowledged, {} attempts failed; REGISTER success {rate:.1}% ({} of {})",
        gap.as_secs_f64(),
        log.acks.len(),
        log.failed.len(),
        out.successful(),
        out.successful() + out.failed()
    );
    // ttl + loop_wait bounds it (10 + 2 s with these settings), plus HAProxy's check
    assert!(gap < Duration::from_secs(15), "write gap {gap:?}");
    let report = check_no_loss(&url, &log).await.unwrap();
    assert!(
        report.lost.is_empty(),
        "acknowledged rows lost in synchronous mode: {:?}",
        report.lost
    );
    assert!(
        report.duplicated.is_empty(),
        "duplicated rows: {:?}",
        report.duplicated
    );
    // the edge keeps registering through the outage (usrloc write-back, cached credentials)
    assert!(rate >= 90.0, "REGISTER success {rate:.1}%");

    // the old primary comes back as a replica of the new one (pg_rewind when needed)
    h.bed.up_again().await.unwrap();
    let cluster = h
        .cluster
        .wait_for_all_running(Duration::from_secs(60))
        .await
        .unwrap();
    let rejoined = cluster.member(&old).unwrap();
    assert!(!rejoined.role.is_leader(), "{cluster:?}");
    assert_eq!(cluster.leader().unwrap().name, new);
    let old_db = member_db(&h, &old).await;
    let in_recovery: bool = old_db
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the old primary did not rejoin as a replica");
    h.bed.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_load_loses_nothing_and_no_client_stays_on_the_old_primary() {
    let h = ha_testbed(HaSpec {
        pooler: true,
        ..HaSpec::default()
    })
    .await;
    let url = h.bed.db_url.clone();
    Writer::prepare(&url).await.unwrap();
    add_register_users(&url, 20).await.unwrap();
    let old = h.cluster.leader().await.unwrap();
    let state = sipstack_local::state::LocalState::load(&h.bed.state_dir()).unwrap();
    let pooler_port = state.postgres.ha.as_ref().unwrap().pooler_port.unwrap();
    let pooled_url = url.replace(
        &format!(":{}/", h.bed.ports.postgres),
        &format!(":{pooler_port}/"),
    );

    // clients that were connected before: one through HAProxy, one through PgBouncer
    let mut direct = sipstack_db::connect(&url, Duration::from_secs(10))
        .await
        .unwrap();
    let mut pooled = sipstack_db::connect(&pooled_url, Duration::from_secs(10))
        .await
        .unwrap();

    let load = tokio::spawn(
        register_load(h.bed.edge(), 20, 20, Duration::from_secs(20))
            .unwrap()
            .run_async(),
    );
    let writer = Writer::start(&url, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    let answer = h
        .cluster
        .patroni
        .switchover(&SwitchoverRequest::default())
        .await
        .unwrap();
    let new = h
        .cluster
        .wait_for_leader(Some(&old), Duration::from_secs(30))
        .await
        .unwrap();
    println!("switchover: {answer}");

    // every answer the clients get comes from a primary; an error ends a session
    // and the client connects again, as applications do
    let deadline = Instant::now() + Duration::from_secs(8);
    let (mut direct_errors, mut pooled_errors, mut pooled_ok) = (0, 0, 0);
    while Instant::now() < deadline {
        match direct.query_one("SELECT pg_is_in_recovery()", &[]).await {
            Ok(row) => assert!(
                !row.get::<_, bool>(0),
                "a client stayed on the demoted primary (HAProxy)"
            ),
            Err(_) => {
                direct_errors += 1;
                if let Ok(c) = sipstack_db::connect(&url, Duration::from_secs(2)).await {
                    direct = c;
                }
            }
        }
        // simple_query: no prepared statement, as a transaction-pooled client must
        match pooled.simple_query("SELECT pg_is_in_recovery()").await {
            Ok(msgs) => {
                for m in msgs {
                    if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                        assert_eq!(
                            r.get(0),
                            Some("f"),
                            "a PgBouncer client was served by the demoted primary"
                        );
                        pooled_ok += 1;
                    }
                }
            }
            Err(_) => {
                pooled_errors += 1;
                if let Ok(c) = sipstack_db::connect(&pooled_url, Duration::from_secs(2)).await {
                    pooled = c;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("after the switchover: {direct_errors} error(s) through HAProxy, {pooled_errors} through PgBouncer, {pooled_ok} pooled answer(s), all from the primary");
    assert!(
        direct_errors > 0,
        "HAProxy did not cut the session to the old primary"
    );
    assert!(
        pooled_ok > 0,
        "the PgBouncer client never got an answer after the switchover"
    );

    let log = writer.finish().await;
    let gap = log.first_ack_after(started).unwrap();
    let longest = log.longest_gap();
    let out = load.await.unwrap().unwrap();
    println!(
        "switchover {old} -> {new}: longest write gap {:.2} s; {} rows acknowledged; REGISTER success {:.1}%",
        longest.as_secs_f64(),
        log.acks.len(),
        success_rate(&out)
    );
    assert!(gap < Duration::from_secs(10), "{gap:?}");
    assert!(
        longest < Duration::from_secs(5),
        "switchover write gap {longest:?}"
    );
    let report = check_no_loss(&url, &log).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(
        success_rate(&out) >= 95.0,
        "REGISTER success {:.1}%",
        success_rate(&out)
    );
    h.bed.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_etcd_member_causes_no_failover_and_no_interruption() {
    let h = ha_testbed(HaSpec::default()).await;
    let url = h.bed.db_url.clone();
    Writer::prepare(&url).await.unwrap();
    let leader = h.cluster.leader().await.unwrap();
    let writer = Writer::start(&url, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    h.cluster.kill_etcd(0).unwrap();
    // several Patroni cycles and more than one ttl
    tokio::time::sleep(Duration::from_secs(14)).await;
    let log = writer.finish().await;
    if !log.failed.is_empty() {
        for n in 0..3 {
            let path = h
                .bed
                .state_dir()
                .join(format!("pg-pg/member-{n}/patroni.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(" INFO: ") || l.contains(" ERROR: "))
                .collect();
            println!(
                "--- {}:\n{}",
                path.display(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
    }
    assert_eq!(
        h.cluster.leader().await.unwrap(),
        leader,
        "a failover happened"
    );
    assert!(
        log.failed.is_empty(),
        "writes failed: {:?}",
        &log.failed[..log.failed.len().min(5)]
    );
    assert!(
        log.longest_gap() < Duration::from_secs(2),
        "writes paused for {:?}",
        log.longest_gap()
    );
    let report = check_no_loss(&url, &log).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    h.bed.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_primary_demotes_itself_and_there_is_no_split_brain() {
    let h = ha_testbed(HaSpec::default()).await;
    let url = h.bed.db_url.clone();
    Writer::prepare(&url).await.unwrap();
    let old = h.cluster.leader().await.unwrap();
    let others: Vec<String> = h
        .cluster
        .cluster()
        .await
        .unwrap()
        .members
        .iter()
        .filter(|m| m.name != old)
        .map(|m| m.name.clone())
        .collect();
    let old_port = i32::from(h.cluster.member_port(&old).unwrap());
    // one writer through HAProxy, one on the old primary's side of the partition
    let direct_url = url.replace(
        &format!(":{}/", h.bed.ports.postgres),
        &format!(":{old_port}/"),
    );
    let through_proxy = Writer::start(&url, Duration::from_millis(20));
    let on_old_side = Writer::start_at(&direct_url, Duration::from_millis(20), 1_000_000);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let etcd_ports: Vec<u16> = (0..3).map(|n| h.cluster.hp.etcd_base + 2 * n).collect();
    let other_names: Vec<&str> = others.iter().map(String::as_str).collect();
    let partitioned_at = Instant::now();
    let mut partition =
        sipstack_e2e::pgha::Partition::isolate(&h.cluster, &old, &other_names, &etcd_ports)
            .unwrap();
    let new = h
        .cluster
        .wait_for_leader(Some(&old), Duration::from_secs(60))
        .await
        .unwrap();
    let elected_after = partitioned_at.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let a = through_proxy.finish().await;
    let b = on_old_side.finish().await;

    let new_port = i32::from(h.cluster.member_port(&new).unwrap());
    let acks: Vec<_> = a.acks.iter().chain(b.acks.iter()).copied().collect();
    let old_last = acks
        .iter()
        .filter(|x| x.server_port == old_port)
        .map(|x| x.at)
        .max()
        .unwrap();
    let new_first = acks
        .iter()
        .filter(|x| x.server_port == new_port)
        .map(|x| x.at)
        .min()
        .expect("the new primary took no write");
    println!(
        "partition of {old}: {new} elected {:.1} s later; last write on {old} {:.1} s after the cut, first on {new} {:.1} s after it",
        elected_after.as_secs_f64(),
        (old_last - partitioned_at).as_secs_f64(),
        (new_first - partitioned_at).as_secs_f64()
    );
    assert!(
        old_last < new_first,
        "two primaries acknowledged writes in the same period"
    );
    // the old primary took no write once cut off: in synchronous mode its commits wait
    // for a standby it cannot reach, and it demotes itself when the leader key is lost
    assert!(
        old_last < partitioned_at + Duration::from_millis(500),
        "the isolated primary kept acknowledging writes"
    );
    let old_db = member_db(&h, &old).await;
    let read_only: bool = old_db
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(read_only, "the isolated primary did not demote itself");
    let mut all = a.clone();
    all.acks = acks;
    let report = check_no_loss(&url, &all).await.unwrap();
    assert!(report.is_clean(), "{report:?}");

    // healed: the old primary follows the new one
    partition.heal();
    let cluster = h
        .cluster
        .wait_for_all_running(Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(cluster.leader().unwrap().name, new);
    drop(partition);
    h.bed.down().await.unwrap();
}

/// Kills both replicas and counts the writes acknowledged in the next 10 s.
async fn writes_without_standbys(h: &HaBed) -> (usize, sipstack_e2e::pgha::WriterLog) {
    let url = h.bed.db_url.clone();
    Writer::prepare(&url).await.unwrap();
    let leader = h.cluster.leader().await.unwrap();
    let writer = Writer::start(&url, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let replicas: Vec<String> = h
        .cluster
        .cluster()
        .await
        .unwrap()
        .members
        .iter()
        .filter(|m| m.name != leader)
        .map(|m| m.name.clone())
        .collect();
    for r in &replicas {
        h.cluster.kill_member(r).unwrap();
    }
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let log = writer.finish().await;
    // commits in flight when the standbys died may still return within a second
    let after = log
        .acks
        .iter()
        .filter(|a| a.at > killed_at + Duration::from_secs(2))
        .count();
    (after, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_synchronous_mode_blocks_writes_when_no_standby_is_left() {
    let h = ha_testbed(HaSpec {
        synchronous_mode: "strict",
        ..HaSpec::default()
    })
    .await;
    let (acknowledged_without_standby, log) = writes_without_standbys(&h).await;
    println!("strict: {acknowledged_without_standby} write(s) acknowledged with no standby left, {} before", log.acks.len());
    assert_eq!(
        acknowledged_without_standby, 0,
        "strict synchronous mode acknowledged writes no standby holds"
    );

    // a standby comes back: writes go on, and nothing acknowledged was lost
    h.bed.up_again().await.unwrap();
    let writer = Writer::start_at(&h.bed.db_url, Duration::from_millis(20), 1_000_000);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resumed = writer.finish().await;
    assert!(
        !resumed.acks.is_empty(),
        "writes did not resume once a standby was back"
    );
    let report = check_no_loss(&h.bed.db_url, &log).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    h.bed.down().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_synchronous_mode_keeps_writing_when_no_standby_is_left() {
    // the trade-off of `synchronousMode: enabled`: availability over the guarantee
    let h = ha_testbed(HaSpec::default()).await;
    let (acknowledged_without_standby, _) = writes_without_standbys(&h).await;
    println!("on: {acknowledged_without_standby} write(s) acknowledged with no standby left");
    assert!(
        acknowledged_without_standby > 0,
        "synchronous mode `on` stopped writes without standbys"
    );
    h.bed.down().await.unwrap();
}

/// Patroni's REST API changes nothing for a caller without the password: no
/// pg_hba rewritten to `trust` through PATCH /config, no restart, no switchover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_changes_nothing_without_the_password() {
    let h = ha_testbed(HaSpec::default()).await;
    let leader = h.cluster.leader().await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for n in 0..3 {
        let base = format!("http://127.0.0.1:{}", h.cluster.hp.rest_base + n);
        let attacks = [
            (
                reqwest::Method::PATCH,
                "config",
                r#"{"postgresql":{"pg_hba":["host all all 0.0.0.0/0 trust"]}}"#.to_string(),
            ),
            (reqwest::Method::POST, "restart", "{}".to_string()),
            (reqwest::Method::POST, "reload", "{}".to_string()),
            (
                reqwest::Method::POST,
                "switchover",
                format!(r#"{{"leader":"{leader}"}}"#),
            ),
            (reqwest::Method::DELETE, "switchover", String::new()),
        ];
        for (method, path, body) in attacks {
            let answer = http
                .request(method.clone(), format!("{base}/{path}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(
                answer.status(),
                401,
                "{method} {base}/{path} was not refused"
            );
        }
        // wrong credentials are no better
        let answer = http
            .post(format!("{base}/restart"))
            .basic_auth(sipstack_patroni::REST_API_USER, Some("guess"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 401);
    }
    let config = http
        .get(format!(
            "http://127.0.0.1:{}/config",
            h.cluster.hp.rest_base
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!config.contains("trust"), "{config}");
    assert_eq!(h.cluster.leader().await.unwrap(), leader);

    // etcd holds the leader key: without the password it neither reads nor writes,
    // so no local process can hand the leadership to itself
    let b64 = |s: &str| base64(s.as_bytes());
    let leader_key = "/sipstack/pg/leader";
    for n in 0..3u16 {
        let etcd = format!("http://127.0.0.1:{}", h.cluster.hp.etcd_base + 2 * n);
        let read = http
            .post(format!("{etcd}/v3/kv/range"))
            .body(format!(r#"{{"key":"{}"}}"#, b64(leader_key)))
            .send()
            .await
            .unwrap();
        let text = read.text().await.unwrap();
        assert!(
            text.contains("user name is empty") || text.contains("permission denied"),
            "etcd {n} answered a read: {text}"
        );
        assert!(!text.contains(&b64(&leader)), "{text}");
        let write = http
            .post(format!("{etcd}/v3/kv/put"))
            .body(format!(
                r#"{{"key":"{}","value":"{}"}}"#,
                b64(leader_key),
                b64("mallory")
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !write.contains("header") || write.contains("error"),
            "etcd {n} took a write: {write}"
        );
        let guess = http
            .post(format!("{etcd}/v3/auth/authenticate"))
            .body(r#"{"name":"root","password":"guess"}"#)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!guess.contains("token"), "{guess}");
    }
    assert_eq!(h.cluster.leader().await.unwrap(), leader);
    h.bed.down().await.unwrap();
}

/// Standard base64 with padding (etcd's JSON gateway takes keys and values so).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_rfc_examples() {
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}
