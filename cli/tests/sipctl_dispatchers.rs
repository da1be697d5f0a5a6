//! `sipctl get dispatchers`, `drain dispatcher` and `enable dispatcher` against a
//! real platform: Kamailio's dispatcher with OPTIONS probing, SIPp stand-ins as
//! media nodes and SIPp calls through the edge.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use common::{fails, ok, sipctl};
use serde_json::Value;
use sipstack_e2e::sipp::{InjectionFile, SippCommand, SippOutcome};
use sipstack_e2e::testbed::{free_tcp_port, standin, users, PoolSpec, Testbed, TestbedSpec};

fn caller() -> InjectionFile {
    InjectionFile::users(&users(&[("alice", "alice-pw")]))
}

/// `n` calls to the default pool, all of which must succeed; answers per stand-in.
async fn calls(tb: &Testbed, n: u64) -> BTreeMap<String, usize> {
    let out: SippOutcome = SippCommand::scenario("uac_call")
        .remote(tb.edge())
        .service("5550100")
        .injection(caller())
        .rate(20)
        .max_calls(n)
        .deadline(Duration::from_secs(30))
        .run_async()
        .await
        .unwrap();
    out.ensure_all_succeeded(n)
        .unwrap_or_else(|e| panic!("{e}\nedge log:\n{}", tb.edge_log(30)));
    out.answered_by()
}

fn json(out: &Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn uri(addr: SocketAddr) -> String {
    format!("sip:{addr}")
}

/// The member `uri` of `get dispatchers -o json`.
fn member(tb: &Testbed, uri: &str) -> Value {
    let list = json(&sipctl(tb, &["get", "dispatchers", "-o", "json"]));
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["uri"] == uri)
        .cloned()
        .unwrap_or_else(|| panic!("{uri} not in {list:#}"))
}

async fn db_flags(tb: &Testbed, uri: &str) -> i32 {
    let db = tb.db().await.unwrap();
    db.query_one(
        "SELECT flags FROM dispatcher WHERE destination = $1",
        &[&uri],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_new_calls_while_a_running_call_completes() {
    let (a, _sa) = standin(0).unwrap();
    let (b, _sb) = standin(1).unwrap();
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin")
            .member(a, 1, 0)
            .member(b, 1, 0)],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    // active, and probed (Kamailio sets P with the first probe round)
    tb.wait_for_destinations(Duration::from_secs(10), |d| {
        d.len() == 2 && d.iter().all(|x| x.is_active() && x.is_probing())
    })
    .await
    .unwrap();

    // the database rows with the edge's live state and the pool's name
    let list = json(&sipctl(&tb, &["get", "dispatchers", "-o", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    for m in list.as_array().unwrap() {
        assert_eq!(
            (
                m["pool"].as_str(),
                m["setId"].as_i64(),
                m["drained"].as_bool()
            ),
            (Some("media"), Some(1), Some(false))
        );
        assert_eq!(m["edges"][0]["state"], "active", "{m:#}");
        assert_eq!(m["edges"][0]["probing"], true, "{m:#}");
    }
    let table = ok(&sipctl(&tb, &["get", "dispatchers"]));
    assert!(
        table.starts_with("POOL") && table.contains("active+probing") && table.contains("enabled"),
        "{table}"
    );

    // A long call (held 25 s: longer than the new calls below take on a busy machine) to one of the nodes; it is drained while up.
    let long = SippCommand::scenario("uac_call")
        .remote(tb.edge())
        .service("5550100")
        .injection(caller())
        .max_calls(1)
        .pause(Duration::from_secs(25))
        .deadline(Duration::from_secs(70))
        .spawn()
        .unwrap();
    let started = Instant::now();
    let node = loop {
        if let Some(node) = long
            .log_lines()
            .iter()
            .find(|l| l.tag == "ANSWERED")
            .and_then(|l| l.get("media").map(str::to_string))
        {
            break node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the long call was not answered:\n{}",
            tb.edge_log(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (drained, other) = if node == a.to_string() {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(node, drained.to_string());

    let out = sipctl(&tb, &["drain", "dispatcher", &uri(drained)]);
    let text = ok(&out);
    assert!(text.contains("drained: no new calls go to it"), "{text}");
    assert!(text.contains("disabled (DX)"), "{text}");
    assert_eq!(
        db_flags(&tb, &uri(drained)).await & 4,
        4,
        "the disabled flag is in the table"
    );

    // new calls while the long one is still up: none reaches the drained node
    let answered = calls(&tb, 20).await;
    assert_eq!(
        answered.get(&other.to_string()).copied(),
        Some(20),
        "{answered:?}"
    );
    assert!(
        long.is_alive(),
        "the long call is still up while the new calls ran"
    );
    // ... and the long call ends normally: its BYE goes through the edge to the drained node
    let outcome = long.wait().unwrap();
    outcome.ensure_all_succeeded(1).unwrap_or_else(|e| {
        panic!(
            "the call in progress did not finish: {e}\n{}",
            tb.edge_log(30)
        )
    });
    assert!(started.elapsed() >= Duration::from_secs(25));

    // probing does not undo it: the edge neither probes nor selects a disabled member
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = member(&tb, &uri(drained));
    assert_eq!(
        (m["drained"].as_bool(), m["edges"][0]["state"].as_str()),
        (Some(true), Some("disabled")),
        "{m:#}"
    );
    assert_eq!(m["edges"][0]["flags"], "DX", "{m:#}");

    // it survives a restart of the edge, which also runs the local driver's `up`
    // again (the driver keeps members' flags)
    tb.restart_edge().await.unwrap();
    tb.wait_for_destinations(Duration::from_secs(10), |d| {
        d.iter().any(|x| x.uri == uri(other) && x.is_active())
    })
    .await
    .unwrap();
    let live = tb.destination(&uri(drained)).await.unwrap();
    assert!(live.flags.starts_with('D'), "after the restart: {live:?}");
    assert_eq!(db_flags(&tb, &uri(drained)).await & 4, 4);
    let answered = calls(&tb, 10).await;
    assert_eq!(
        answered.get(&other.to_string()).copied(),
        Some(10),
        "{answered:?}"
    );
    // `sipctl local up` on the running platform writes the members again and
    // reloads the edge's dispatcher from the table
    let options = sipstack_local::UpOptions {
        state_dir: tb.state_dir(),
        standins: false,
    };
    sipstack_local::up(&tb.yaml, &options).await.unwrap();
    assert!(tb
        .destination(&uri(drained))
        .await
        .unwrap()
        .flags
        .starts_with('D'));
    assert_eq!(member(&tb, &uri(drained))["drained"], true);

    // draining again says so and changes nothing
    let again = json(&sipctl(
        &tb,
        &["drain", "dispatcher", &uri(drained), "-o", "json"],
    ));
    assert_eq!(
        (again["drained"].as_bool(), again["changed"].as_bool()),
        (Some(true), Some(false)),
        "{again:#}"
    );

    // enable: probing brings it back, then it takes its share again
    let out = json(&sipctl(
        &tb,
        &["enable", "dispatcher", &uri(drained), "-o", "json"],
    ));
    assert_eq!(
        (out["drained"].as_bool(), out["changed"].as_bool()),
        (Some(false), Some(true)),
        "{out:#}"
    );
    assert_eq!(out["edges"][0]["applied"], true, "{out:#}");
    assert_eq!(
        db_flags(&tb, &uri(drained)).await & 7,
        0,
        "no state bits left in the table"
    );
    tb.wait_for_destinations(Duration::from_secs(5), |d| d.iter().all(|x| x.is_active()))
        .await
        .unwrap();
    let answered = calls(&tb, 10).await;
    assert_eq!(
        answered.get(&drained.to_string()).copied(),
        Some(5),
        "round robin again: {answered:?}"
    );
    assert_eq!(member(&tb, &uri(drained))["edges"][0]["state"], "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_named_unambiguously_and_unreachable_edges_are_reported() {
    let (a, _sa) = standin(0).unwrap();
    let (b, _sb) = standin(1).unwrap();
    let spec = TestbedSpec {
        pools: vec![
            PoolSpec::new("media", 1, "roundRobin").member(a, 1, 0),
            PoolSpec::new("premium", 2, "roundRobin").member(b, 1, 0),
        ],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();

    // unknown: 4, and nothing changed
    let (code, err) = fails(&sipctl(&tb, &["drain", "dispatcher", "sip:192.0.2.1:5060"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("is not a dispatcher member"), "{err}");
    let (code, err) = fails(&sipctl(
        &tb,
        &["drain", "dispatcher", &uri(a), "--set", "2"],
    ));
    assert_eq!(code, 4, "{err}");
    let (code, err) = fails(&sipctl(&tb, &["drain", "dispatcher", "not a uri"]));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("URI: "), "{err}");

    // a member of two sets needs --set (the second row is written by hand: the
    // edge does not hold it until a reload)
    let db = tb.db().await.unwrap();
    db.execute(
        "INSERT INTO dispatcher (setid, destination, flags, attrs) VALUES (2, $1, 0, 'weight=1;rweight=1')",
        &[&uri(a)],
    )
    .await
    .unwrap();
    let (code, err) = fails(&sipctl(&tb, &["drain", "dispatcher", &uri(a)]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("--set: ") && err.contains("sets 1, 2"),
        "{err}"
    );
    let flags: Vec<i32> = db
        .query("SELECT flags FROM dispatcher ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        flags.iter().all(|f| f & 4 == 0),
        "nothing drained: {flags:?}"
    );
    let list = json(&sipctl(
        &tb,
        &["get", "dispatchers", "--set", "2", "-o", "json"],
    ));
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["uri"] == uri(a))
        .unwrap();
    assert_eq!(row["edges"][0]["state"], "not-loaded", "{list:#}");
    // draining the member the edge does not hold yet makes the edge load the table
    let out = json(&sipctl(
        &tb,
        &["drain", "dispatcher", &uri(a), "--set", "2", "-o", "json"],
    ));
    assert_eq!(out["setId"], 2);
    assert_eq!(out["edges"][0]["applied"], true, "{out:#}");
    assert_eq!(out["edges"][0]["state"]["state"], "disabled", "{out:#}");
    let live = tb.destinations().await.unwrap();
    assert!(
        live.iter()
            .any(|d| d.set_id == 1 && d.uri == uri(a) && d.flags.starts_with('A')),
        "set 1 untouched: {live:?}"
    );

    // an edge that cannot be reached: the change is committed, a warning, exit 0
    let nobody = format!("127.0.0.1:{}", free_tcp_port().unwrap());
    let out = sipctl(&tb, &["drain", "dispatcher", &uri(b), "--edge", &nobody]);
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: edge edge1") && err.contains("the change is saved"),
        "{err}"
    );
    assert_eq!(db_flags(&tb, &uri(b)).await & 4, 4);
    // and `get dispatchers` shows the unreachable edge's state as unknown
    let out = sipctl(
        &tb,
        &["get", "dispatchers", "--edge", &nobody, "-o", "json"],
    );
    let list = json(&out);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|m| m["edges"][0]["state"] == "unknown"),
        "{list:#}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: edge edge1"));
    // the real edge learns it at its next reload, from the table
    ok(&sipctl(&tb, &["reload", "dispatchers"]));
    assert!(tb
        .destination(&uri(b))
        .await
        .unwrap()
        .flags
        .starts_with('D'));
}
