//! `sipctl add|get|delete trunk`, `add|get|delete|import numbers`, routes to and
//! from trunks and `sipctl test route` with numbers first, against a real
//! platform: PostgreSQL and Kamailio from the local driver. sipctl pushes every
//! change to the edge itself; `test route` checks the edge holds it.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{fails, ok, sipctl, sipctl_with_env};
use serde_json::Value;
use sipstack_e2e::sipp::free_udp_port_on;
use sipstack_e2e::testbed::{media_ip, PoolSpec, Testbed, TestbedSpec};

async fn testbed() -> Testbed {
    let member = std::net::SocketAddr::new(media_ip(0), free_udp_port_on(media_ip(0)).unwrap());
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        ..Default::default()
    };
    Testbed::up(&spec).await.unwrap()
}

fn json(out: &Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// A context whose trunk key is the local platform's key file.
fn use_trunk_key_file(tb: &Testbed) {
    let key_file = sipstack_local::state::trunk_key_file(&tb.state_dir());
    assert!(key_file.exists(), "the local driver keeps the trunk key");
    let config = format!(
        "currentContext: tb\ncontexts:\n  - name: tb\n    trunkKeyFile: {}\n",
        key_file.display()
    );
    std::fs::write(tb.state_dir().join("sipctl-config.yaml"), config).unwrap();
}

/// A trunk change, which sipctl pushes to the edge (permissions, htable,
/// dialplan); the edge must take the reload. What the edge then does with the
/// trunks is e2e's edge_trunks.
fn trunk_change(tb: &Testbed, args: &[&str]) -> Output {
    let out = sipctl(tb, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("was not reloaded"), "{args:?}: {stderr}");
    out
}

/// `test route ARGS -o json`, checked to agree with the edge holding the current rules.
fn tested(tb: &Testbed, args: &[&str]) -> Value {
    let mut all = vec!["test", "route"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", "json"]);
    let t = json(&sipctl(tb, &all));
    let edge = &t["edges"][0];
    assert_eq!(edge["reachable"], true, "{t:#}");
    assert_eq!(edge["rulesCurrent"], true, "the edge was reloaded: {t:#}");
    assert_eq!(edge["agrees"], true, "{t:#}");
    t
}

fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is installed");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The clear text of a stored password, decrypted the way Kamailio's crypto
/// module does (`key_derivation` 0): base64, the first 16 bytes the IV, AES-256-CBC.
fn decrypt_with_openssl(key_base64: &str, stored: &str) -> String {
    let key = openssl(&["base64", "-d", "-A"], key_base64.trim().as_bytes());
    assert_eq!(key.len(), 32);
    let raw = openssl(&["base64", "-d", "-A"], stored.as_bytes());
    let (iv, ciphertext) = raw.split_at(16);
    let clear = openssl(
        &[
            "enc",
            "-d",
            "-aes-256-cbc",
            "-K",
            &hex(&key),
            "-iv",
            &hex(iv),
        ],
        ciphertext,
    );
    String::from_utf8(clear).unwrap()
}

async fn numbers_in_db(tb: &Testbed) -> Vec<String> {
    let db = tb.db().await.unwrap();
    db.query(
        "SELECT match_kind || ' ' || number FROM sipstack_number ORDER BY number, match_kind",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunks_and_numbers_are_managed_and_tested_number_first() {
    let tb = testbed().await;
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    tb.add_subscriber("pbx-acme", "pbx-pw").await.unwrap();
    use_trunk_key_file(&tb);
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("carrier-a.pw");
    std::fs::write(&pw_file, "s3cret pass\nnot part of it\n").unwrap();
    let pw_path = pw_file.display().to_string();

    // a carrier: two addresses, two gateways, credentials from a file
    let out = trunk_change(
        &tb,
        &[
            "add",
            "trunk",
            "carrier-a",
            "--address",
            "127.0.0.61",
            "--address",
            "198.51.100.0/24:5060",
            "--transport",
            "udp",
            "--gateway",
            "sip:gw2.carrier.example;transport=tcp,priority=20",
            "--gateway",
            "sip:198.51.100.10:5060,priority=10",
            "--auth-user",
            "acct-1",
            "--auth-password-file",
            &pw_path,
            "--strip",
            "1",
            "--prefix",
            "00",
            "--description",
            "Carrier A",
        ],
    );
    let added = ok(&out);
    assert!(added.contains("trunk carrier-a added"), "{added}");
    // the password is stored encrypted, in the format the edge's crypto module reads
    let db = tb.db().await.unwrap();
    let stored: String = db
        .query_one(
            "SELECT auth_password_enc FROM sipstack_trunk WHERE name = 'carrier-a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!stored.contains("s3cret"));
    let key =
        std::fs::read_to_string(sipstack_local::state::trunk_key_file(&tb.state_dir())).unwrap();
    assert_eq!(decrypt_with_openssl(&key, &stored), "s3cret pass");

    // listings never show it
    let list = sipctl(&tb, &["get", "trunks", "-o", "json"]);
    let text = ok(&list);
    assert!(
        !text.contains(&stored) && !text.contains("s3cret"),
        "{text}"
    );
    assert!(!text.to_ascii_lowercase().contains("password\""), "{text}");
    let list: Value = serde_json::from_str(&text).unwrap();
    let t = &list[0];
    assert_eq!(t["name"], "carrier-a");
    assert_eq!(
        (t["authUser"].as_str(), t["hasCredentials"].as_bool()),
        (Some("acct-1"), Some(true))
    );
    assert_eq!(
        t["addresses"],
        serde_json::json!([
            {"address": "127.0.0.61", "port": 0, "transport": "udp"},
            {"address": "198.51.100.0/24", "port": 5060, "transport": "udp"},
        ])
    );
    let gateways: Vec<&str> = t["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        gateways,
        [
            "sip:198.51.100.10:5060",
            "sip:gw2.carrier.example;transport=tcp"
        ],
        "in priority order"
    );
    let table = ok(&sipctl(&tb, &["get", "trunks", "-o", "wide"]));
    assert!(
        table.contains("carrier-a")
            && table.contains("strip 1, prefix 00")
            && !table.contains("s3cret"),
        "{table}"
    );
    assert!(!ok(&sipctl(&tb, &["get", "trunk", "carrier-a", "-o", "yaml"])).contains("s3cret"));

    // a registration-based PBX, by its subscriber account
    ok(&trunk_change(
        &tb,
        &[
            "add",
            "trunk",
            "acme-pbx",
            "--account",
            "pbx-acme@example.com",
        ],
    ));

    // what is taken or missing is refused, naming it
    for (args, code, message) in [
        (
            vec!["add", "trunk", "carrier-a", "--gateway", "sip:gw.example"],
            6,
            "trunk \"carrier-a\" already exists",
        ),
        (
            vec!["add", "trunk", "carrier-b", "--address", "127.0.0.61"],
            6,
            "address 127.0.0.61 (any port) is already used by trunk carrier-a",
        ),
        (
            vec!["add", "trunk", "carrier-b", "--address", "198.51.100.7:5060"],
            6,
            "overlaps address 198.51.100.0/24 (port 5060) of trunk carrier-a",
        ),
        (
            vec!["add", "trunk", "pbx-2", "--account", "nobody@example.com"],
            3,
            "--account: nobody@example.com is not a subscriber; add it with `sipctl add subscriber nobody@example.com` first",
        ),
        (
            vec!["add", "trunk", "pbx-2", "--account", "pbx-acme@example.com"],
            6,
            "account pbx-acme@example.com is already used by trunk acme-pbx",
        ),
        (
            vec!["add", "trunk", "pbx-2", "--address", "198.51.100.5/24"],
            3,
            "--address: \"198.51.100.5/24\" has host bits set; write the network as 198.51.100.0/24",
        ),
        (
            vec!["add", "trunk", "pbx-2", "--auth-user", "u"],
            3,
            "--auth-user needs its password",
        ),
        (
            vec!["add", "number", "+1", "--trunk", "nope"],
            3,
            "--trunk: trunk \"nope\" does not exist; name one of the trunks: acme-pbx, carrier-a",
        ),
        (
            vec!["add", "number", "+1", "--user", "bob@example.com"],
            3,
            "--user: bob@example.com is not a subscriber",
        ),
        (
            vec!["add", "number", "+1", "--pool", "nope"],
            3,
            "--pool: media pool \"nope\" does not exist; name one of the media pools: media",
        ),
        (
            vec!["add", "route", "r1", "--prefix", "1", "--trunk", "nope"],
            3,
            "--to-trunk: trunk \"nope\" does not exist",
        ),
        (
            vec!["add", "route", "r1", "--prefix", "1", "--trunk", "carrier-a", "--source", "trunk", "--from-domain", "example.com"],
            3,
            "--from-domain: a route for calls from trunks has no caller domain",
        ),
        (vec!["get", "trunk", "nope"], 4, "trunk \"nope\" does not exist"),
        (vec!["delete", "trunk", "nope"], 4, "trunk \"nope\" does not exist"),
        (vec!["delete", "number", "+999"], 4, "number \"+999\" does not exist"),
    ] {
        let (got, err) = fails(&sipctl(&tb, &args));
        assert_eq!(got, code, "sipctl {args:?}: {err}");
        assert!(err.contains(message), "sipctl {args:?}: expected {message:?} in:\n{err}");
    }

    // numbers of each target kind; routes to the carrier, for subscribers
    ok(&sipctl(
        &tb,
        &[
            "add",
            "number",
            "+442071234567",
            "--user",
            "alice@example.com",
        ],
    ));
    ok(&sipctl(
        &tb,
        &[
            "add",
            "number",
            "+4420799",
            "--prefix",
            "--trunk",
            "acme-pbx",
            "--description",
            "ACME block",
        ],
    ));
    ok(&sipctl(
        &tb,
        &[
            "add",
            "number",
            "+442071230000",
            "--pool",
            "media",
            "--service",
            "conference",
        ],
    ));
    ok(&sipctl(
        &tb,
        &["add", "number", "+15551234", "--trunk", "carrier-a"],
    ));
    let (code, err) = fails(&sipctl(
        &tb,
        &["add", "number", "+15551234", "--pool", "media"],
    ));
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("number \"+15551234\" already exists"), "{err}");
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "uk",
            "--prefix",
            "+44",
            "--to-uri",
            "sip:uk@192.0.2.1",
        ],
    ));
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "us",
            "--prefix",
            "+1",
            "--trunk",
            "carrier-a",
        ],
    ));

    let list = json(&sipctl(&tb, &["get", "numbers", "-o", "json"]));
    let kinds: Vec<(&str, &str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["number"].as_str().unwrap(),
                n["match"].as_str().unwrap(),
                n["targetKind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("+15551234", "exact", "trunk"),
            ("+442071230000", "exact", "pool"),
            ("+442071234567", "exact", "user"),
            ("+4420799", "prefix", "trunk"),
        ]
    );
    let table = ok(&sipctl(&tb, &["get", "numbers"]));
    assert!(
        table.contains("user alice@example.com") && table.contains("pool media service conference"),
        "{table}"
    );

    // the number decides before the route that also matches
    let t = tested(&tb, &["+442071234567"]);
    assert_eq!(t["decidedBy"], "number", "{t:#}");
    assert_eq!(t["matchedNumber"]["targetUser"], "alice@example.com");
    assert_eq!(t["route"], Value::Null);
    assert!(
        t["result"].as_str().unwrap().contains("alice@example.com"),
        "{t:#}"
    );
    let uk = t["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "uk")
        .unwrap();
    assert_eq!(uk["outcome"], "not-tried", "{t:#}");
    assert!(
        uk["reason"]
            .as_str()
            .unwrap()
            .contains("decides before any route"),
        "{t:#}"
    );
    let human = ok(&sipctl(&tb, &["test", "route", "+442071234567"]));
    assert!(
        human.contains("platform number") && human.contains("not consulted: the number decides"),
        "{human}"
    );
    // a number of the PBX's block: its registered contact
    let t = tested(&tb, &["+442079912345"]);
    assert_eq!(t["matchedNumber"]["number"], "+4420799");
    assert_eq!(t["trunk"]["name"], "acme-pbx");
    assert!(
        t["result"]
            .as_str()
            .unwrap()
            .contains("registered as pbx-acme@example.com"),
        "{t:#}"
    );
    // no number: the route, and the carrier's gateways in order with its number handling
    let t = tested(&tb, &["+15550001"]);
    assert_eq!(
        (t["decidedBy"].as_str(), t["route"]["name"].as_str()),
        (Some("route"), Some("us"))
    );
    assert_eq!(t["route"]["targetTrunk"], "carrier-a");
    assert_eq!(t["trunk"]["dialledAs"], "0015550001");
    let gws: Vec<&str> = t["trunk"]["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["uri"].as_str().unwrap())
        .collect();
    assert_eq!(
        gws,
        [
            "sip:198.51.100.10:5060",
            "sip:gw2.carrier.example;transport=tcp"
        ]
    );
    let human = ok(&sipctl(&tb, &["test", "route", "+15550001"]));
    let g1 = human.find("gateway 1").expect(&human);
    let g2 = human.find("gateway 2").expect(&human);
    assert!(
        g1 < g2 && human[g1..g2].contains("sip:198.51.100.10:5060"),
        "{human}"
    );
    let t = tested(&tb, &["+442071230000"]);
    assert!(
        t["result"].as_str().unwrap().contains("conference"),
        "{t:#}"
    );

    // from a trunk: the numbers, then only routes for calls from trunks
    let t = tested(&tb, &["+15550001", "--from-trunk", "acme-pbx"]);
    assert_eq!(
        (t["decidedBy"].as_str(), t["ruleSet"].as_i64()),
        (Some("none"), Some(4)),
        "{t:#}"
    );
    assert!(
        t["result"]
            .as_str()
            .unwrap()
            .contains("403 Transit not allowed"),
        "{t:#}"
    );
    let us = t["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "us")
        .unwrap();
    assert_eq!(us["outcome"], "other-source", "{t:#}");
    let t = tested(&tb, &["+442071234567", "--from-trunk", "carrier-a"]);
    assert_eq!(t["decidedBy"], "number", "{t:#}");
    ok(&sipctl(
        &tb,
        &[
            "add",
            "route",
            "transit-us",
            "--prefix",
            "+1",
            "--trunk",
            "carrier-a",
            "--source",
            "trunk",
            "--priority",
            "5",
        ],
    ));
    let t = tested(&tb, &["+15550001", "--from-trunk", "acme-pbx"]);
    assert_eq!(t["route"]["name"], "transit-us", "{t:#}");
    assert_eq!(t["route"]["source"], "trunk");
    assert!(
        t["result"]
            .as_str()
            .unwrap()
            .starts_with("out through trunk carrier-a"),
        "{t:#}"
    );
    // back out to the trunk it came from: a loop
    let t = tested(&tb, &["+15550001", "--from-trunk", "carrier-a"]);
    assert!(
        t["result"].as_str().unwrap().contains("482 Loop Detected"),
        "{t:#}"
    );
    // subscribers do not take the transit route
    assert_eq!(tested(&tb, &["+15550001"])["route"]["name"], "us");
    let routes = ok(&sipctl(&tb, &["get", "routes"]));
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("transit-us") && l.contains("trunks")),
        "{routes}"
    );

    // a trunk that numbers and routes use stays, and the error names them
    let (code, err) = fails(&sipctl(&tb, &["delete", "trunk", "carrier-a"]));
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("trunk carrier-a is still used by number +15551234 and routes transit-us, us"),
        "{err}"
    );
    assert_eq!(
        json(&sipctl(&tb, &["get", "trunks", "-o", "json"]))
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // imports: one bad row refuses the whole file, naming the row and the column
    let before = numbers_in_db(&tb).await;
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        "number,kind,target,service,description\n\
         +442071239001,user,alice@example.com,,Desk 1\n\
         +442071239002,trunk,acme-pbx,,\n\
         +442071239003,trunk,Bad Name,,\n",
    )
    .unwrap();
    let (code, err) = fails(&sipctl(
        &tb,
        &["import", "numbers", &bad.display().to_string()],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("1 of 3 rows are not valid; nothing was imported"),
        "{err}"
    );
    assert!(
        err.contains("line 4: target: \"Bad Name\" is not a valid name"),
        "{err}"
    );
    // rows that are well-formed but name what does not exist: checked in the database
    let unknown = dir.path().join("unknown.csv");
    std::fs::write(
        &unknown,
        "number,kind,target\n+442071239001,user,alice@example.com\n+442071239002,trunk,nope\n",
    )
    .unwrap();
    let (code, err) = fails(&sipctl(
        &tb,
        &["import", "numbers", &unknown.display().to_string()],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("line 3: target: trunk nope does not exist"),
        "{err}"
    );
    let taken = dir.path().join("taken.csv");
    std::fs::write(
        &taken,
        "number,kind,target\n+442071239001,user,alice@example.com\n+15551234,pool,media\n",
    )
    .unwrap();
    let (code, err) = fails(&sipctl(
        &tb,
        &["import", "numbers", &taken.display().to_string()],
    ));
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("line 3: number: exact +15551234 exists already"),
        "{err}"
    );
    assert_eq!(numbers_in_db(&tb).await, before, "nothing was imported");
    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        "number,kind,target,service,description,match\n\
         +442071239001,user,alice@example.com,,\"Desk 1, 2nd floor\",\n\
         +4420712399,trunk,acme-pbx,,,prefix\n\
         +442071239100,pool,media,echo,,exact\n",
    )
    .unwrap();
    let summary = json(&sipctl(
        &tb,
        &[
            "import",
            "numbers",
            &good.display().to_string(),
            "-o",
            "json",
        ],
    ));
    assert_eq!(summary["inserted"], 3, "{summary:#}");
    assert_eq!(numbers_in_db(&tb).await.len(), before.len() + 3);
    assert_eq!(
        tested(&tb, &["+442071239001"])["matchedNumber"]["description"],
        "Desk 1, 2nd floor"
    );
    // the longer prefix wins
    assert_eq!(
        tested(&tb, &["+44207123995"])["matchedNumber"]["number"],
        "+4420712399"
    );

    // limits: set, kept when left out, lifted with none; the edge reloads them
    let t = json(&trunk_change(
        &tb,
        &[
            "set",
            "trunk-limits",
            "carrier-a",
            "--max-calls",
            "30",
            "--max-cps",
            "5",
            "-o",
            "json",
        ],
    ));
    assert_eq!(
        (t["maxCalls"].as_i64(), t["maxCps"].as_i64()),
        (Some(30), Some(5)),
        "{t:#}"
    );
    let text = ok(&trunk_change(
        &tb,
        &["set", "trunk-limits", "carrier-a", "--max-cps", "none"],
    ));
    assert!(text.contains("limits 30 calls"), "{text}");
    let t = json(&sipctl(&tb, &["get", "trunk", "carrier-a", "-o", "json"]));
    assert_eq!(
        (t["maxCalls"].as_i64(), t["maxCps"].as_i64()),
        (Some(30), None),
        "{t:#}"
    );
    let (code, err) = fails(&sipctl(
        &tb,
        &["set", "trunk-limits", "carrier-a", "--max-calls", "0"],
    ));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--max-calls") && err.contains("none"), "{err}");
    let (code, err) = fails(&sipctl(
        &tb,
        &["set", "trunk-limits", "nope", "--max-calls", "3"],
    ));
    assert_eq!(code, 4, "{err}");
    let text = ok(&trunk_change(
        &tb,
        &["set", "call-limit", "alice@example.com", "--max-calls", "2"],
    ));
    assert!(text.contains("may place 2 calls at once"), "{text}");
    let (code, err) = fails(&sipctl(
        &tb,
        &[
            "set",
            "call-limit",
            "nobody@example.com",
            "--max-calls",
            "2",
        ],
    ));
    assert_eq!(code, 4, "{err}");
    ok(&trunk_change(
        &tb,
        &[
            "set",
            "call-limit",
            "alice@example.com",
            "--max-calls",
            "none",
        ],
    ));

    // a subscriber that a number or a PBX trunk names stays until they go
    let (code, err) = fails(&sipctl(&tb, &["delete", "subscriber", "alice@example.com"]));
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("a number goes to it"), "{err}");
    let (code, err) = fails(&sipctl(
        &tb,
        &["delete", "subscriber", "pbx-acme@example.com"],
    ));
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("account of a registration-based PBX trunk"),
        "{err}"
    );

    // clean up: numbers and routes first, then the trunk
    ok(&sipctl(&tb, &["delete", "number", "+15551234"]));
    ok(&sipctl(&tb, &["delete", "route", "us", "transit-us"]));
    ok(&sipctl(&tb, &["delete", "number", "+4420799", "--prefix"]));
    ok(&trunk_change(&tb, &["delete", "trunk", "carrier-a"]));
    assert_eq!(
        json(&sipctl(&tb, &["get", "trunks", "-o", "json"]))[0]["name"],
        "acme-pbx"
    );
    tb.down().await.unwrap();
}

async fn snapshot(tb: &Testbed) -> Vec<(String, String)> {
    sipstack_e2e::testbed::database_snapshot(&tb.db().await.unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_hostile_input_are_refused_by_field() {
    let tb = testbed().await;
    tb.add_subscriber("alice", "alice-pw").await.unwrap();
    let before = snapshot(&tb).await;

    // no key anywhere: nothing to encrypt the password with
    let (code, err) = fails(&sipctl_with_env(
        &tb,
        &[
            "add",
            "trunk",
            "carrier",
            "--gateway",
            "sip:gw.example",
            "--auth-user",
            "u",
            "--auth-password-stdin",
        ],
        Some("pw\n"),
        &[],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("no trunk key")
            && err.contains("SIPSTACK_TRUNK_KEY")
            && err.contains("trunkKeyFile"),
        "{err}"
    );
    let (code, err) = fails(&sipctl_with_env(
        &tb,
        &[
            "add",
            "trunk",
            "carrier",
            "--auth-user",
            "u",
            "--auth-password-stdin",
        ],
        Some("pw\n"),
        &[("SIPSTACK_TRUNK_KEY", "bm90IGEga2V5")],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("SIPSTACK_TRUNK_KEY: trunk key: the trunk key holds 9 bytes"),
        "{err}"
    );
    // the password is never an argument
    let (code, _) = fails(&sipctl(
        &tb,
        &[
            "add",
            "trunk",
            "carrier",
            "--auth-user",
            "u",
            "--auth-password",
            "pw",
        ],
    ));
    assert_eq!(code, 2);
    // an empty password line
    let key =
        std::fs::read_to_string(sipstack_local::state::trunk_key_file(&tb.state_dir())).unwrap();
    let key = key.trim();
    let (code, err) = fails(&sipctl_with_env(
        &tb,
        &[
            "add",
            "trunk",
            "carrier",
            "--auth-user",
            "u",
            "--auth-password-stdin",
        ],
        Some("\n"),
        &[("SIPSTACK_TRUNK_KEY", key)],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("--auth-password: standard input holds no password"),
        "{err}"
    );
    assert_eq!(
        snapshot(&tb).await,
        before,
        "a refused command changed the database"
    );

    // hostile strings in every field: refused by field, nothing written
    let hostile = [
        "x'); DROP TABLE sipstack_trunk; --",
        "a\nb",
        "a;b",
        "$(id)",
        "#!KAMAILIO",
        "a b",
        "a\"b",
    ];
    for h in hostile {
        let gw = format!("sip:gw.example{h}");
        let addr = format!("203.0.113.5{h}");
        let account = format!("{h}@example.com");
        let number = format!("+44{h}");
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (vec!["add", "trunk", h], "NAME: "),
            (vec!["add", "trunk", "t1", "--gateway", &gw], "--gateway: "),
            (
                vec!["add", "trunk", "t1", "--address", &addr],
                "--address: ",
            ),
            (vec!["add", "trunk", "t1", "--prefix", h], "--prefix: "),
            (
                vec!["add", "trunk", "t1", "--account", &account],
                "--account: ",
            ),
            (
                vec![
                    "add",
                    "trunk",
                    "t1",
                    "--auth-user",
                    h,
                    "--auth-password-stdin",
                ],
                "--auth-user: ",
            ),
            (
                vec!["add", "number", &number, "--user", "alice@example.com"],
                "NUMBER: ",
            ),
            (vec!["add", "number", h, "--trunk", "t1"], "NUMBER: "),
            (vec!["add", "number", "+441", "--trunk", h], "--trunk: "),
            (
                vec!["add", "number", "+441", "--pool", "media", "--service", h],
                "--service: ",
            ),
            (
                vec!["add", "number", "+441", "--user", &account],
                "--user: ",
            ),
            (
                vec!["add", "route", "r1", "--prefix", "1", "--trunk", h],
                "--to-trunk: ",
            ),
            (vec!["delete", "trunk", h], "NAME: "),
            (vec!["get", "trunk", h], "NAME: "),
            (vec!["delete", "number", h], "NUMBER: "),
            (
                vec!["test", "route", "1", "--from-trunk", h],
                "--from-trunk: ",
            ),
            (vec!["add", "trunk-gateway", "t1", &gw], "--gateway: "),
            (vec!["delete", "trunk-address", "t1", &addr], "--address: "),
        ];
        for (args, field) in cases {
            let out = sipctl_with_env(&tb, &args, Some("pw\n"), &[("SIPSTACK_TRUNK_KEY", key)]);
            let (code, err) = fails(&out);
            assert_eq!(code, 3, "sipctl {args:?}: {err}");
            assert!(
                err.contains(field),
                "sipctl {args:?}: expected {field:?} in:\n{err}"
            );
        }
    }
    // a hostile description is plain text, stored and shown as it is
    let inj = "x'); DROP TABLE sipstack_trunk; -- $(id) #!";
    ok(&trunk_change(
        &tb,
        &["add", "trunk", "t1", "--description", inj],
    ));
    assert_eq!(
        json(&sipctl(&tb, &["get", "trunk", "t1", "-o", "json"]))["description"],
        inj
    );
    ok(&trunk_change(
        &tb,
        &[
            "add",
            "trunk-address",
            "t1",
            "203.0.113.5:5060",
            "--transport",
            "tcp",
        ],
    ));
    ok(&trunk_change(
        &tb,
        &[
            "add",
            "trunk-gateway",
            "t1",
            "sip:[2001:db8::1]:5060,priority=3",
        ],
    ));
    let t = json(&sipctl(&tb, &["get", "trunk", "t1", "-o", "json"]));
    assert_eq!(t["addresses"][0]["transport"], "tcp");
    assert_eq!(t["gateways"][0]["priority"], 3);
    ok(&trunk_change(
        &tb,
        &["delete", "trunk-address", "t1", "203.0.113.5:5060"],
    ));
    ok(&trunk_change(
        &tb,
        &["delete", "trunk-gateway", "t1", "sip:[2001:db8::1]:5060"],
    ));
    ok(&trunk_change(&tb, &["delete", "trunk", "t1"]));
    assert_eq!(snapshot(&tb).await, before, "every table is as it was");
    tb.down().await.unwrap();
}
