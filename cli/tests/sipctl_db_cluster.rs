//! `sipctl status`, `db members`, `db switchover` and `db failover` against a real
//! three-member Patroni cluster brought up by the local driver.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{fails, ok};
use sipstack_e2e::pgha::{up_ha, HaPorts, HaSpec};
use sipstack_e2e::testbed::{Testbed, TestbedSpec};

fn sipctl(tb: &Testbed, hp: HaPorts, args: &[&str]) -> std::process::Output {
    let config = tb.state_dir().join("sipctl-config.yaml");
    Command::new(env!("CARGO_BIN_EXE_sipctl"))
        .args(args)
        .env("SIPCTL_CONFIG", &config)
        .env("SIPCTL_DB_URL", &tb.db_url)
        .env("SIPCTL_EDGE", format!("127.0.0.1:{}", tb.ports.rpc))
        .env("SIPSTACK_RPC_TOKEN", tb.rpc_token().unwrap())
        .env(
            "SIPCTL_PATRONI",
            format!("127.0.0.1:{},127.0.0.1:{}", hp.rest_base, hp.rest_base + 1),
        )
        .env(
            "SIPCTL_PATRONI_PASSWORD",
            std::fs::read_to_string(tb.state_dir().join("pg-pg/secrets/patroni-rest.password"))
                .unwrap_or_default()
                .trim(),
        )
        .env_remove("SIPCTL_CONTEXT")
        .output()
        .expect("sipctl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_members_and_switchover() {
    let (tb, cluster) = up_ha(&TestbedSpec::default(), &HaSpec::default())
        .await
        .unwrap();
    let hp = cluster.hp;
    let c = cluster
        .wait_for_all_running(Duration::from_secs(60))
        .await
        .unwrap();
    let leader = c.leader().unwrap().name.clone();
    let sync = c
        .members
        .iter()
        .find(|m| m.role == sipstack_patroni::Role::SyncStandby)
        .unwrap()
        .name
        .clone();
    let other = c
        .members
        .iter()
        .find(|m| m.name != leader && m.name != sync)
        .unwrap()
        .name
        .clone();

    let status = ok(&sipctl(&tb, hp, &["status"]));
    assert!(
        status.contains(&format!("CLUSTER    ok      primary {leader}, 3 member(s)")),
        "{status}"
    );
    assert!(status.contains("sync standby"), "{status}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&sipctl(&tb, hp, &["db", "members", "-o", "json"]))).unwrap();
    assert_eq!(json["members"].as_array().unwrap().len(), 3, "{json}");

    // patronictl's checks: in synchronous mode only the sync standby may take over
    let (code, err) = fails(&sipctl(&tb, hp, &["db", "switchover", "--to", &other]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not the synchronous standby"), "{err}");
    let (code, err) = fails(&sipctl(&tb, hp, &["db", "switchover", "--to", &leader]));
    assert_eq!(code, 3, "{err}");
    let (code, err) = fails(&sipctl(&tb, hp, &["db", "failover", "--to", &sync]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--force"), "{err}");

    let out = ok(&sipctl(&tb, hp, &["db", "switchover", "--to", &sync]));
    assert!(out.contains("Successfully switched over"), "{out}");
    assert_eq!(
        cluster
            .wait_for_leader(Some(&leader), Duration::from_secs(30))
            .await
            .unwrap(),
        sync
    );
    // the read-write endpoint follows: sipctl writes through it right away
    ok(&sipctl(
        &tb,
        hp,
        &[
            "add",
            "subscriber",
            "after@example.com",
            "--generate-password",
        ],
    ));

    // Patroni unreachable: exit code 5
    let config = tb.state_dir().join("sipctl-config.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_sipctl"))
        .args(["db", "members"])
        .env("SIPCTL_CONFIG", &config)
        .env("SIPCTL_PATRONI", "127.0.0.1:9")
        .env(
            "SIPCTL_PATRONI_PASSWORD",
            std::fs::read_to_string(tb.state_dir().join("pg-pg/secrets/patroni-rest.password"))
                .unwrap_or_default()
                .trim(),
        )
        .env_remove("SIPCTL_CONTEXT")
        .output()
        .unwrap();
    assert_eq!(fails(&out).0, 5);
    tb.down().await.unwrap();
}
