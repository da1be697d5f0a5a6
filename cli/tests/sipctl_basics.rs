//! sipctl as a whole: `status`, the context `local up` writes, completion and man
//! pages, and the exit codes scripts rely on.

mod common;

use std::process::Command;

use common::{fails, ok, sipctl};
use serde_json::Value;
use sipstack_e2e::testbed::{media_ip, standin, PoolSpec, Ports, Testbed, TestbedSpec};

fn bare_sipctl(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sipctl"))
        .args(args)
        .env("SIPCTL_CONFIG", config)
        .env_remove("SIPCTL_DB_URL")
        .env_remove("SIPCTL_EDGE")
        .env_remove("SIPCTL_CONTEXT")
        .output()
        .expect("sipctl runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_database_edges_and_pools() {
    let (media, _s) = standin(0).unwrap();
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(media, 1, 0)],
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.wait_for_destinations(std::time::Duration::from_secs(10), |d| {
        d.iter().all(|d| d.is_active() && d.is_probing())
    })
    .await
    .unwrap();

    let v: Value = serde_json::from_str(&ok(&sipctl(&tb, &["status", "-o", "json"]))).unwrap();
    assert_eq!(v["database"]["reachable"], true);
    assert_eq!(
        v["database"]["schemaVersion"],
        sipstack_db::latest_version()
    );
    assert!(
        !v["database"]["url"].as_str().unwrap().contains(&tb.db_url),
        "no password in the output"
    );
    assert_eq!(v["edges"][0]["reachable"], true);
    assert_eq!(v["edges"][0]["sets"][0]["pool"], "media");
    assert_eq!(v["edges"][0]["sets"][0]["active"], 1);
    let human = ok(&sipctl(&tb, &["status"]));
    assert!(
        human.contains("DATABASE   ok") && human.contains("1/1 members active"),
        "{human}"
    );

    // an edge that does not answer: reported, exit 5
    let out = sipctl(&tb, &["status", "--edge", "127.0.0.1:1"]);
    let (code, stderr) = fails(&out);
    assert_eq!(code, 5, "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("DOWN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_up_writes_a_context_that_later_commands_use() {
    let dir = sipstack_e2e::testbed::state_dir("sipstack-ctx-").unwrap();
    let config = dir.path().join("config.yaml");
    let state = dir.path().join("state");
    let ip = media_ip(0);
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(
            std::net::SocketAddr::new(ip, 5080),
            1,
            0,
        )],
        ..Default::default()
    };
    let platform = dir.path().join("platform.yaml");
    std::fs::write(&platform, spec.yaml(Ports::free().unwrap())).unwrap();
    let up = bare_sipctl(
        &config,
        &[
            "local",
            "up",
            "-f",
            platform.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--no-standins",
        ],
    );
    let guard = scopeguard(&state);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );

    let contexts =
        String::from_utf8_lossy(&bare_sipctl(&config, &["config", "get-contexts"]).stdout)
            .into_owned();
    assert!(
        contexts.contains("*") && contexts.contains("local"),
        "{contexts}"
    );
    // no --db-url, no --edge: the context says where
    let added = bare_sipctl(
        &config,
        &[
            "add",
            "subscriber",
            "zoe@example.com",
            "--generate-password",
        ],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let listed =
        String::from_utf8_lossy(&bare_sipctl(&config, &["get", "subscribers"]).stdout).into_owned();
    assert!(listed.contains("zoe"), "{listed}");
    let status = bare_sipctl(&config, &["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    drop(guard);
}

/// Stops the local platform under `state` when dropped.
fn scopeguard(state: &std::path::Path) -> impl Drop + '_ {
    struct Down<'a>(&'a std::path::Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let path = self.0.to_path_buf();
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(sipstack_local::down(&path));
                }
            })
            .join();
        }
    }
    Down(state)
}

#[test]
fn completion_and_man_pages_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let bash = bare_sipctl(&config, &["completion", "bash"]);
    assert!(bash.status.success());
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(
        script.contains("sipctl") && script.contains("subscriber") && script.contains("dispatcher")
    );
    let man = dir.path().join("man");
    assert!(bare_sipctl(&config, &["man", man.to_str().unwrap()])
        .status
        .success());
    for page in [
        "sipctl.1",
        "sipctl-add-subscriber.1",
        "sipctl-drain-dispatcher.1",
        "sipctl-test-route.1",
    ] {
        assert!(man.join(page).is_file(), "{page} missing");
    }
}

#[test]
fn exit_codes_scripts_rely_on() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: sipstack.io/v1alpha1\nkind: SipEdge\nmetadata: {name: e}\nspec: {domains: [\"a b\"], database: {pgCluster: pg}}\n").unwrap();
    // invalid input: 3, from `render` and from `local up` alike, naming the field
    for args in [
        vec!["render", "kamailio", "-f"],
        vec![
            "local",
            "up",
            "--state-dir",
            dir.path().join("s").to_str().unwrap(),
            "-f",
        ],
    ] {
        let mut args: Vec<&str> = args;
        args.push(bad.to_str().unwrap());
        let out = bare_sipctl(&config, &args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("spec.domains[0]"));
    }
    // unreachable database: 5, within the connect timeout
    let started = std::time::Instant::now();
    let out = bare_sipctl(
        &config,
        &[
            "get",
            "subscribers",
            "--db-url",
            "postgres://u:pw@127.0.0.1:1/db",
            "--connect-timeout",
            "2",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("pw@"),
        "no password in errors"
    );
    // no database at all: a usable message
    let out = bare_sipctl(&config, &["get", "subscribers"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--db-url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a usage error is clap's 2
    assert_eq!(
        bare_sipctl(&config, &["add", "route", "x"]).status.code(),
        Some(2)
    );
}

#[test]
fn render_prints_what_the_local_driver_and_the_operator_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yaml");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/platform-ha.yaml");
    let state = dir.path().join("state");
    let state = state.to_str().unwrap();

    let out = ok(&bare_sipctl(
        &config,
        &[
            "render",
            "patroni",
            "-f",
            example,
            "--member",
            "2",
            "--state-dir",
            state,
        ],
    ));
    let yml: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(yml["name"].as_str(), Some("pg-2"));
    assert_eq!(
        yml["postgresql"]["listen"].as_str(),
        Some("127.0.0.1:15434")
    );
    assert_eq!(
        yml["etcd3"]["hosts"].as_str(),
        Some("127.0.0.1:2379,127.0.0.1:2381,127.0.0.1:2383")
    );
    let out = ok(&bare_sipctl(
        &config,
        &[
            "render",
            "patroni",
            "-f",
            example,
            "--kubernetes",
            "--namespace",
            "voice",
        ],
    ));
    assert!(out.contains("namespace: \"voice\""), "{out}");
    let (_, err) = fails(&bare_sipctl(
        &config,
        &["render", "patroni", "-f", example, "--member", "3"],
    ));
    assert!(err.contains("members 0 to 2"), "{err}");

    let out = ok(&bare_sipctl(&config, &["render", "haproxy", "-f", example]));
    assert!(
        out.contains("bind 127.0.0.1:5432") && out.contains("uri /primary"),
        "{out}"
    );
    let out = ok(&bare_sipctl(
        &config,
        &["render", "pgbouncer", "-f", example, "--state-dir", state],
    ));
    assert!(
        out.contains("listen_port = 6432") && out.contains("pool_mode = transaction"),
        "{out}"
    );
    let single = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/platform.yaml");
    let (_, err) = fails(&bare_sipctl(
        &config,
        &["render", "pgbouncer", "-f", single],
    ));
    assert!(err.contains("spec.pooler.enabled"), "{err}");

    let out = ok(&bare_sipctl(
        &config,
        &[
            "render",
            "freeswitch",
            "-f",
            example,
            "--only",
            "autoload_configs/sofia.conf.xml",
        ],
    ));
    assert!(out.contains("sip-options-respond-503-on-busy"), "{out}");
    let conf = dir.path().join("fs");
    ok(&bare_sipctl(
        &config,
        &[
            "render",
            "freeswitch",
            "-f",
            example,
            "--out",
            conf.to_str().unwrap(),
        ],
    ));
    assert!(conf.join("vars.xml").is_file() && conf.join("dialplan/sipstack.xml").is_file());
}
