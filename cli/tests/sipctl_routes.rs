//! `sipctl add|get|delete route` and `sipctl test route` against a real platform:
//! PostgreSQL and Kamailio from the local driver, SIPp calls through the edge and
//! SIPp stand-ins as media nodes. sipctl pushes every change to the edge itself.

mod common;

use std::process::Output;

use common::{fails, ok, sipctl};
use serde_json::Value;
use sipstack_e2e::sipp::SippOutcome;
use sipstack_e2e::testbed::{
    answered_by, call_number, free_tcp_port, media_ip, standin, PoolSpec, Testbed, TestbedSpec,
};

/// One authenticated call from alice to `number`.
async fn call(tb: &Testbed, number: &str) -> SippOutcome {
    call_number(tb.edge(), "alice", "alice-pw", number)
        .await
        .unwrap()
}

fn json(out: &Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `test route NUMBER -o json`, checked to agree with the edge holding the current rules.
fn tested(tb: &Testbed, number: &str) -> Value {
    let t = json(&sipctl(tb, &["test", "route", number, "-o", "json"]));
    let edge = &t["edges"][0];
    assert_eq!(edge["reachable"], true, "{t:#}");
    assert_eq!(
        edge["rulesCurrent"], true,
        "the edge was reloaded by sipctl: {t:#}"
    );
    assert_eq!(edge["agrees"], true, "{t:#}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_added_with_sipctl_are_routed_without_a_restart() {
    let (a, _sa) = standin(0).unwrap();
    let (b, _sb) = standin(1).unwrap();
    let (gw, _sg) = standin(2).unwrap();
    let spec = TestbedSpec {
        pools: vec![
            PoolSpec::new("media", 1, "roundRobin").member(a, 1, 0),
            PoolSpec::new("premium", 2, "roundRobin").member(b, 1, 0),
        ],
        default_pool: Some("media".into()),
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("alice", "alice-pw").await.unwrap();

    // no route: the default pool
    let out = call(&tb, "9001234").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(a.to_string()));

    // a reject route: the next call is rejected, nobody reloaded by hand
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "block-premium",
            "--prefix",
            "900",
            "--reject",
            "403",
            "--reason",
            "Premium Blocked",
            "--priority",
            "10",
        ],
    ));
    let out = call(&tb, "9001234").await;
    assert_eq!(out.unexpected_codes, vec![403], "{}", out.diagnostics());
    let t = tested(&tb, "9001234");
    assert_eq!(t["route"]["name"], "block-premium");
    assert_eq!(t["route"]["rejectCode"], 403);
    assert!(
        t["result"]
            .as_str()
            .unwrap()
            .contains("403 Premium Blocked"),
        "{t:#}"
    );

    // a pool route: answered by that pool's stand-in; the other kinds
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "hotline",
            "--exact",
            "5000",
            "--to-pool",
            "premium",
        ],
    ));
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "desks",
            "--regex",
            "^7[0-9]{3}$",
            "--to-user",
            "--priority",
            "20",
        ],
    ));
    let uri = format!("sip:carrier@{gw}");
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "uk",
            "--prefix",
            "+44",
            "--to-uri",
            &uri,
            "--priority",
            "30",
            "--description",
            "UK carrier",
        ],
    ));
    let out = call(&tb, "5000").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(
        answered_by(&out),
        Some(b.to_string()),
        "5000 goes to pool premium"
    );
    let t = tested(&tb, "5000");
    assert_eq!(
        (
            t["route"]["name"].as_str(),
            t["route"]["targetSetId"].as_i64()
        ),
        (Some("hotline"), Some(2))
    );
    let out = call(&tb, "+4412345").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(gw.to_string()));
    assert_eq!(tested(&tb, "+4412345")["route"]["name"], "uk");
    // nobody registered as 7002: the registrar's 404
    let out = call(&tb, "7002").await;
    assert_eq!(out.unexpected_codes, vec![404], "{}", out.diagnostics());
    let t = tested(&tb, "7002");
    assert_eq!(t["route"]["name"], "desks");
    assert!(
        t["result"].as_str().unwrap().contains("registered"),
        "{t:#}"
    );

    // in the order they are tried
    let list = json(&sipctl(&tb, &["get", "routes", "-o", "json"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["block-premium", "desks", "uk", "hotline"]);
    let table = ok(&sipctl(&tb, &["get", "routes"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("PRIORITY")
            && lines[0].contains("TARGET"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("block-premium") && lines[1].contains("reject 403 Premium Blocked"),
        "{table}"
    );
    assert!(
        lines[4].starts_with("hotline") && lines[4].contains("pool premium (set 2)"),
        "{table}"
    );
    let one = json(&sipctl(&tb, &["get", "route", "uk", "-o", "json"]));
    assert_eq!(
        (one["targetUri"].as_str(), one["description"].as_str()),
        (Some(uri.as_str()), Some("UK carrier"))
    );

    // -o wide says why each route did or did not match
    let wide = ok(&sipctl(&tb, &["test", "route", "9001234", "-o", "wide"]));
    assert!(wide.contains("9001234 starts with 900"), "{wide}");
    assert!(
        wide.contains("not-tried") && wide.contains("route block-premium matched first"),
        "{wide}"
    );
    assert!(wide.contains("agrees (route block-premium)"), "{wide}");

    // delete: the default pool again
    ok(&sipctl(&tb, &["delete", "route", "block-premium"]));
    let out = call(&tb, "9001234").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(a.to_string()));
    let t = tested(&tb, "9001234");
    assert_eq!(t["matched"], false);
    assert!(
        t["result"].as_str().unwrap().contains("default media pool"),
        "{t:#}"
    );

    // a change the edge was not told about: test route says the edge has not
    // reloaded, and the call indeed still takes the old way
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "busy",
            "--prefix",
            "800",
            "--reject",
            "486",
            "--no-reload",
        ],
    ));
    let t = json(&sipctl(&tb, &["test", "route", "8001", "-o", "json"]));
    assert_eq!(t["route"]["name"], "busy");
    assert_eq!(
        (
            t["edges"][0]["agrees"].as_bool(),
            t["edges"][0]["rulesCurrent"].as_bool()
        ),
        (Some(false), Some(false)),
        "{t:#}"
    );
    assert!(
        t["edges"][0]["note"]
            .as_str()
            .unwrap()
            .contains("sipctl reload routes"),
        "{t:#}"
    );
    let out = call(&tb, "8001").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(answered_by(&out), Some(a.to_string()), "not reloaded yet");
    ok(&sipctl(&tb, &["reload", "routes"]));
    tested(&tb, "8001");
    let out = call(&tb, "8001").await;
    assert_eq!(out.unexpected_codes, vec![486], "{}", out.diagnostics());

    // A regular expression the regex crate and PCRE read differently (sipctl
    // refuses to add one; this one is written straight into the table): the edge
    // is asked and its answer is what calls get.
    let db = tb.db().await.unwrap();
    db.execute(
        "INSERT INTO sipstack_route (name, priority, match_kind, match_value, target_kind, reject_code, reject_reason)
         VALUES ('set-ops', 1, 'regex', $1, 'reject', 480, 'Set Operations')",
        &[&"^[0-9&&[^5]]$"],
    )
    .await
    .unwrap();
    ok(&sipctl(&tb, &["reload", "routes"]));
    let t = json(&sipctl(&tb, &["test", "route", "8", "-o", "json"]));
    assert_eq!(
        t["route"]["name"], "set-ops",
        "the regex crate reads a class intersection: {t:#}"
    );
    let edge = &t["edges"][0];
    assert_eq!(
        (edge["agrees"].as_bool(), edge["rulesCurrent"].as_bool()),
        (Some(false), Some(true)),
        "{t:#}"
    );
    assert_eq!(
        edge["route"],
        Value::Null,
        "PCRE reads '&&[' literally: {t:#}"
    );
    assert!(edge["note"].as_str().unwrap().contains("PCRE"), "{t:#}");
    let out = call(&tb, "8").await;
    out.ensure_all_succeeded(1).unwrap();
    assert_eq!(
        answered_by(&out),
        Some(a.to_string()),
        "the call follows the edge's answer"
    );
    let human = ok(&sipctl(&tb, &["test", "route", "8"]));
    assert!(human.contains("differs"), "{human}");
}

async fn snapshot(tb: &Testbed) -> Vec<(String, String)> {
    sipstack_e2e::testbed::database_snapshot(&tb.db().await.unwrap())
        .await
        .unwrap()
}

async fn route_names(tb: &Testbed) -> Vec<String> {
    let db = tb.db().await.unwrap();
    db.query("SELECT name::text FROM sipstack_route ORDER BY name", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_field_and_nothing_is_written() {
    let member = std::net::SocketAddr::new(
        media_ip(0),
        sipstack_e2e::sipp::free_udp_port_on(media_ip(0)).unwrap(),
    );
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    let before = snapshot(&tb).await;

    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["add", "route", "r1", "--prefix", "1", "--to-pool", "nope"],
            3,
            "--to-pool: media pool \"nope\" does not exist; name one of the media pools: media",
        ),
        (
            &["add", "route", "r1", "--regex", "^(1", "--to-user"],
            3,
            "--regex: \"^(1\" is not a valid regular expression",
        ),
        (
            &["add", "route", "r1", "--regex", "^[0-9--5]$", "--to-user"],
            3,
            "--regex: ",
        ),
        // PCRE backtracks exponentially on it: one call to a crafted number would
        // tie up an edge worker for as long as it takes
        (
            &["add", "route", "r1", "--regex", "^([0-9]+)+$", "--to-user"],
            3,
            "--regex: \"^([0-9]+)+$\": a repeated group holds a repetition",
        ),
        (
            &[
                "add",
                "route",
                "r1",
                "--prefix",
                "1",
                "--priority",
                "10000",
                "--to-user",
            ],
            3,
            "--priority: 10000 is out of range",
        ),
        (
            &[
                "add",
                "route",
                "r1",
                "--prefix",
                "1",
                "--priority",
                "-1",
                "--to-user",
            ],
            3,
            "--priority: -1 is out of range",
        ),
        (
            &["add", "route", "r1", "--prefix", "1", "--to-uri", "sip:a b"],
            3,
            "--to-uri: ",
        ),
        (
            &[
                "add",
                "route",
                "r1",
                "--prefix",
                "1",
                "--to-uri",
                "tel:+4412",
            ],
            3,
            "--to-uri: ",
        ),
        (
            &["add", "route", "r1", "--prefix", "1", "--reject", "700"],
            3,
            "--reject: 700 is not an error status",
        ),
        (
            &["add", "route", "r1", "--prefix", "1", "--reject", "399"],
            3,
            "--reject: 399",
        ),
        (
            &[
                "add", "route", "r1", "--prefix", "1", "--reject", "403", "--reason", "Not-OK",
            ],
            3,
            "--reason: ",
        ),
        (
            &["add", "route", "Bad_Name", "--prefix", "1", "--to-user"],
            3,
            "NAME: \"Bad_Name\" is not a valid name",
        ),
        (
            &["add", "route", "r1", "--prefix", "1 2", "--to-user"],
            3,
            "--prefix: ",
        ),
        (
            &["add", "route", "r1", "--exact", "1$", "--to-user"],
            3,
            "--exact: ",
        ),
        (
            &[
                "add",
                "route",
                "r1",
                "--prefix",
                "1",
                "--to-user",
                "--from-domain",
                "a b",
            ],
            3,
            "--from-domain: ",
        ),
        (
            &[
                "add",
                "route",
                "r1",
                "--prefix",
                "1",
                "--to-user",
                "--description",
                "two\nlines",
            ],
            3,
            "--description: ",
        ),
        (
            &["delete", "route", "nope"],
            4,
            "route \"nope\" does not exist",
        ),
        (
            &["get", "route", "nope"],
            4,
            "route \"nope\" does not exist",
        ),
        (&["test", "route", ""], 3, "NUMBER: "),
        (
            &["test", "route", "1", "--from-domain", "a..b"],
            3,
            "--from-domain: ",
        ),
    ];
    for (args, code, message) in cases {
        let (got, err) = fails(&sipctl(&tb, args));
        assert_eq!(got, *code, "sipctl {args:?}: {err}");
        assert!(
            err.contains(message),
            "sipctl {args:?}: expected {message:?} in:\n{err}"
        );
    }
    assert_eq!(
        snapshot(&tb).await,
        before,
        "a refused command changed the database"
    );

    // a duplicate name: 6; deleting a known and an unknown route deletes neither
    ok(&sipctl(
        &tb,
        &["add", "route", "r1", "--prefix", "1", "--to-user"],
    ));
    let (code, err) = fails(&sipctl(
        &tb,
        &["add", "route", "r1", "--prefix", "2", "--to-user"],
    ));
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("route \"r1\" already exists"), "{err}");
    let (code, err) = fails(&sipctl(&tb, &["delete", "route", "r1", "nope"]));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("nothing was deleted"), "{err}");
    assert_eq!(route_names(&tb).await, ["r1"]);
    ok(&sipctl(&tb, &["delete", "route", "r1"]));
    assert_eq!(snapshot(&tb).await, before);

    // Hostile strings in every free-text field: refused by field (3), or stored
    // and matched as the plain text they are; no statement is built from them.
    let inj = "x'); DROP TABLE sipstack_route; --";
    let quoted = "'; DELETE FROM subscriber; SELECT '";
    for (args, code) in [
        (vec!["add", "route", inj, "--prefix", "1", "--to-user"], 3),
        (vec!["add", "route", "r2", "--prefix", inj, "--to-user"], 3),
        (vec!["add", "route", "r2", "--exact", inj, "--to-user"], 3),
        (
            vec![
                "add", "route", "r2", "--prefix", "1", "--reject", "403", "--reason", inj,
            ],
            3,
        ),
        (
            vec![
                "add",
                "route",
                "r2",
                "--prefix",
                "1",
                "--to-uri",
                &format!("sip:a@b;x={inj}"),
            ],
            3,
        ),
        (
            vec![
                "add",
                "route",
                "r2",
                "--prefix",
                "1",
                "--to-uri",
                "sip:a'--@b",
            ],
            3,
        ),
        (
            vec![
                "add",
                "route",
                "r2",
                "--prefix",
                "1",
                "--to-user",
                "--from-domain",
                inj,
            ],
            3,
        ),
        (
            vec!["add", "route", "r2", "--prefix", "1", "--to-pool", inj],
            3,
        ),
        (vec!["get", "route", inj], 3),
        (vec!["delete", "route", inj], 3),
        (vec!["test", "route", "1", "--from-domain", inj], 3),
        (vec!["drain", "dispatcher", inj], 3),
        (vec!["enable", "dispatcher", &format!("sip:{inj}")], 3),
        (vec!["get", "cdrs", "--since", inj], 3),
        (vec!["get", "cdrs", "--until", quoted], 3),
        (
            vec!["get", "registrations", &format!("{inj}@example.com")],
            3,
        ),
        (vec!["get", "registrations", "alice", "--domain", inj], 3),
    ] {
        let (got, err) = fails(&sipctl(&tb, &args));
        assert_eq!(got, code, "sipctl {args:?}: {err}");
    }
    // filters that are plain text: nothing matches, nothing breaks
    for args in [
        vec!["get", "cdrs", "--from", inj, "--to", quoted, "-o", "json"],
        vec![
            "get",
            "registrations",
            "-o",
            "json",
            "--domain",
            "example.com",
        ],
    ] {
        assert_eq!(
            json(&sipctl(&tb, &args)),
            serde_json::json!([]),
            "sipctl {args:?}"
        );
    }
    assert_eq!(
        snapshot(&tb).await,
        before,
        "a hostile string changed the database"
    );

    // free text that is allowed is stored and shown verbatim
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "r2",
            "--regex",
            quoted,
            "--to-user",
            "--description",
            inj,
        ],
    ));
    let r = json(&sipctl(&tb, &["get", "route", "r2", "-o", "json"]));
    assert_eq!(
        (r["matchValue"].as_str(), r["description"].as_str()),
        (Some(quoted), Some(inj))
    );
    let t = json(&sipctl(&tb, &["test", "route", quoted, "-o", "json"]));
    assert_eq!(t["route"]["name"], "r2", "{t:#}");
    assert_eq!(t["edges"][0]["agrees"], true, "{t:#}");
    ok(&sipctl(&tb, &["delete", "route", "r2"]));
    assert_eq!(snapshot(&tb).await, before, "every table is as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_edge_is_reported_and_the_change_is_kept() {
    let member = std::net::SocketAddr::new(
        media_ip(0),
        sipstack_e2e::sipp::free_udp_port_on(media_ip(0)).unwrap(),
    );
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    let nobody = format!("127.0.0.1:{}", free_tcp_port().unwrap());

    let out = sipctl(
        &tb,
        &[
            "add", "route", "r1", "--prefix", "1", "--reject", "403", "--edge", &nobody,
        ],
    );
    ok(&out);
    let err = stderr(&out);
    assert!(
        err.contains("warning: edge edge1 was not reloaded") && err.contains("the change is saved"),
        "{err}"
    );
    assert_eq!(route_names(&tb).await, ["r1"]);

    // test route still answers, from the database, and says the edge was not asked
    let out = sipctl(
        &tb,
        &["test", "route", "123", "--edge", &nobody, "-o", "json"],
    );
    let t = json(&out);
    assert_eq!(t["route"]["name"], "r1");
    assert_eq!(t["edges"][0]["reachable"], false, "{t:#}");
    assert!(
        t["edges"][0]["note"]
            .as_str()
            .unwrap()
            .contains("database's only"),
        "{t:#}"
    );

    // the real edge has not seen r1 yet; sipctl says so
    let t = json(&sipctl(&tb, &["test", "route", "123", "-o", "json"]));
    assert_eq!(
        (
            t["edges"][0]["agrees"].as_bool(),
            t["edges"][0]["rulesCurrent"].as_bool()
        ),
        (Some(false), Some(false))
    );

    let out = sipctl(&tb, &["delete", "route", "r1", "--edge", &nobody]);
    ok(&out);
    assert!(
        stderr(&out).contains("warning: edge edge1 was not reloaded"),
        "{}",
        stderr(&out)
    );
    assert!(route_names(&tb).await.is_empty());
}
