//! `sipctl get registrations` (SIPp phones registering through a real Kamailio,
//! read from the edge's memory and, without an edge, from the database) and
//! `sipctl get cdrs` (records written into PostgreSQL as a media node would).

mod common;

use std::net::SocketAddr;
use std::process::Output;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use common::{fails, ok, sipctl};
use serde_json::Value;
use sipstack_db::cdr::NewCdr;
use sipstack_e2e::sipp::{free_udp_port_on, InjectionFile, SippCommand};
use sipstack_e2e::testbed::{
    free_tcp_port, media_ip, users, PoolSpec, Testbed, TestbedSpec, EDGE_IP,
};

fn json(out: &Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// REGISTER with digest authentication, a User-Agent header and a Contact given
/// by the keys `user_agent` and `contact` (host:port).
const REGISTER_WITH_USER_AGENT: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register_with_user_agent">
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[field1] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[field1]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[field1]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[field0]@[contact]>
      User-Agent: [user_agent]
      Expires: [expires]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="401" auth="true"/>
  <send retrans="500">
    <![CDATA[

      REGISTER sip:[field1] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[field0]@[field1]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[field0]@[field1]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[field0]@[contact]>
      [field2]
      User-Agent: [user_agent]
      Expires: [expires]
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="200"/>
</scenario>
"#;

/// Registers `user` from 127.0.0.1:`port` with Contact `contact`.
async fn register(
    tb: &Testbed,
    scenario: &std::path::Path,
    user: &str,
    port: u16,
    contact: &str,
    user_agent: &str,
) {
    SippCommand::new(scenario)
        .remote(tb.edge())
        .local(EDGE_IP, port)
        .injection(InjectionFile::users(&users(&[(
            user,
            &format!("{user}-pw"),
        )])))
        .key("expires", "600")
        .key("contact", contact)
        .key("user_agent", user_agent)
        .max_calls(1)
        .deadline(Duration::from_secs(15))
        .run_async()
        .await
        .unwrap()
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{user} did not register: {e}\n{}", tb.edge_log(20)));
}

fn aors(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["aor"].as_str().unwrap())
        .collect()
}

fn registration<'a>(list: &'a Value, aor: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|r| r["aor"] == aor)
        .unwrap_or_else(|| panic!("{aor} not in {list:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_from_the_edge_and_without_one_from_the_database() {
    let member = SocketAddr::new(media_ip(0), free_udp_port_on(media_ip(0)).unwrap());
    let mut spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        ..Default::default()
    };
    spec.extra_edge_spec = "  nat: {enabled: true}\n".into();
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("bob", "bob-pw").await.unwrap();
    tb.add_subscriber("carol", "carol-pw").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("register_with_user_agent.xml");
    std::fs::write(&scenario, REGISTER_WITH_USER_AGENT).unwrap();

    // bob's phone says where it is; carol's is behind NAT (a private Contact)
    let bob_port = free_udp_port_on(EDGE_IP).unwrap();
    let carol_port = free_udp_port_on(EDGE_IP).unwrap();
    register(
        &tb,
        &scenario,
        "bob",
        bob_port,
        &format!("127.0.0.1:{bob_port}"),
        "Acme Deskphone 2.1 (bob)",
    )
    .await;
    register(
        &tb,
        &scenario,
        "carol",
        carol_port,
        "192.168.1.50:5060",
        "Acme Softphone 7.0",
    )
    .await;

    let list = json(&sipctl(&tb, &["get", "registrations", "-o", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    let bob = registration(&list, "bob@example.com");
    assert_eq!(bob["contact"], format!("sip:bob@127.0.0.1:{bob_port}"));
    assert_eq!(bob["userAgent"], "Acme Deskphone 2.1 (bob)");
    assert_eq!(bob["received"], Value::Null, "{bob:#}");
    assert_eq!(bob["source"], serde_json::json!(["edge1"]));
    let expires = bob["expiresIn"].as_i64().unwrap();
    assert!((590..=600).contains(&expires), "{bob:#}");
    assert!(
        bob["socket"]
            .as_str()
            .unwrap()
            .starts_with("udp:127.0.0.1:"),
        "{bob:#}"
    );
    assert!(!bob["callId"].as_str().unwrap().is_empty());
    let carol = registration(&list, "carol@example.com");
    assert_eq!(carol["contact"], "sip:carol@192.168.1.50:5060");
    assert_eq!(
        carol["received"],
        format!("sip:127.0.0.1:{carol_port}"),
        "the address it came from"
    );
    assert_eq!(carol["userAgent"], "Acme Softphone 7.0");

    // one user, as a table; wide adds call-id, socket and the rest
    let table = ok(&sipctl(&tb, &["get", "registrations", "bob@example.com"]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(
        lines[0].starts_with("AOR")
            && lines[0].contains("USER-AGENT")
            && lines[0].contains("RECEIVED"),
        "{table}"
    );
    assert!(
        lines[1].contains("Acme Deskphone 2.1 (bob)")
            && lines[1].contains(&format!("127.0.0.1:{bob_port}")),
        "{table}"
    );
    let wide = ok(&sipctl(
        &tb,
        &[
            "get",
            "registrations",
            "carol",
            "--domain",
            "example.com",
            "-o",
            "wide",
        ],
    ));
    assert!(
        wide.contains("CALL-ID")
            && wide.contains("SOCKET")
            && wide.contains("PATH")
            && wide.contains("edge1"),
        "{wide}"
    );
    assert!(
        wide.contains(&format!("sip:127.0.0.1:{carol_port}")),
        "{wide}"
    );
    assert_eq!(
        json(&sipctl(
            &tb,
            &["get", "registrations", "dave@example.com", "-o", "json"]
        )),
        serde_json::json!([])
    );
    // AoRs compare case-insensitively, as usrloc keeps them; a user without a domain is looked up in all
    for user in ["Bob@EXAMPLE.com", "bob"] {
        let one = json(&sipctl(&tb, &["get", "registrations", user, "-o", "json"]));
        assert_eq!(aors(&one), ["bob@example.com"], "{user}");
    }

    // No edge to ask: the location table, which the edge writes every second
    // here (flushIntervalSeconds 1), and a note that says so.
    let nobody = format!("127.0.0.1:{}", free_tcp_port().unwrap());
    let mut from_db = Value::Null;
    for _ in 0..50 {
        let out = sipctl(
            &tb,
            &["get", "registrations", "--edge", &nobody, "-o", "json"],
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("no edge could be asked") && err.contains("flushIntervalSeconds"),
            "{err}"
        );
        from_db = json(&out);
        if from_db.as_array().unwrap().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bob = registration(&from_db, "bob@example.com");
    assert_eq!(bob["source"], serde_json::json!(["database"]));
    assert_eq!(bob["userAgent"], "Acme Deskphone 2.1 (bob)");
    assert!(
        (580..=601).contains(&bob["expiresIn"].as_i64().unwrap()),
        "{bob:#}"
    );
    let carol = registration(&from_db, "carol@example.com");
    assert_eq!(carol["received"], format!("sip:127.0.0.1:{carol_port}"));
    let one = json(&sipctl(
        &tb,
        &[
            "get",
            "registrations",
            "carol@example.com",
            "--edge",
            &nobody,
            "-o",
            "json",
        ],
    ));
    assert_eq!(one.as_array().unwrap().len(), 1, "{one:#}");
}

fn at(rfc3339: &str) -> SystemTime {
    SystemTime::from(jiff::Timestamp::from_str(rfc3339).unwrap())
}

fn record(
    uuid: &str,
    from: &str,
    to: &str,
    start: SystemTime,
    answered: bool,
    cause: &str,
) -> NewCdr {
    NewCdr {
        call_uuid: uuid.into(),
        caller_number: from.into(),
        callee_number: to.into(),
        edge_node: "edge".into(),
        media_node: "sip:127.0.0.2:5080".into(),
        start_time: start,
        answer_time: answered.then(|| start + Duration::from_secs(5)),
        end_time: Some(start + Duration::from_secs(65)),
        duration: 65,
        billsec: if answered { 60 } else { 0 },
        hangup_cause: cause.into(),
    }
}

fn uuids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| c["callUuid"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdrs_are_filtered_and_exported() {
    let member = SocketAddr::new(media_ip(0), free_udp_port_on(media_ip(0)).unwrap());
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    let now = SystemTime::now();
    let ago = |secs: u64| now - Duration::from_secs(secs);
    let db = tb.db().await.unwrap();
    for r in [
        record(
            "c1",
            "+4930111",
            "+4420111",
            ago(3 * 3600),
            true,
            "NORMAL_CLEARING",
        ),
        record(
            "c2",
            "+4930222",
            "5000",
            ago(90 * 60),
            true,
            "NORMAL_CLEARING, \"by caller\"",
        ),
        record(
            "c3",
            "7001",
            "+4420333",
            ago(30 * 60),
            true,
            "NORMAL_CLEARING",
        ),
        record("c4", "7002", "112", ago(5 * 60), false, "NO_ANSWER"),
        record(
            "c5",
            "+4930555",
            "+4420999",
            at("2020-01-15T10:00:00Z"),
            true,
            "NORMAL_CLEARING",
        ),
    ] {
        sipstack_db::cdr::insert(&db, &r).await.unwrap();
    }

    let get = |args: &[&str]| {
        let mut all = vec!["get", "cdrs", "-o", "json"];
        all.extend_from_slice(args);
        json(&sipctl(&tb, &all))
    };
    // newest first
    assert_eq!(uuids(&get(&[])), ["c4", "c3", "c2", "c1", "c5"]);
    // ages, dates, RFC 3339; since is inclusive, until exclusive
    assert_eq!(uuids(&get(&["--since", "2h"])), ["c4", "c3", "c2"]);
    assert_eq!(
        uuids(&get(&["--since", "2h", "--until", "10m"])),
        ["c3", "c2"]
    );
    assert_eq!(
        uuids(&get(&["--since", "2020-01-15", "--until", "2020-01-16"])),
        ["c5"]
    );
    assert_eq!(uuids(&get(&["--since", "2020-01-15T10:00:00Z"])).len(), 5);
    assert!(uuids(&get(&["--until", "2020-01-15T10:00:00Z"])).is_empty());
    assert_eq!(
        uuids(&get(&[
            "--until",
            "2020-01-15T11:00:01+01:00",
            "--since",
            "2020-01-15T09:59:59Z"
        ])),
        ["c5"]
    );
    // numbers by prefix
    assert_eq!(uuids(&get(&["--to", "+44"])), ["c3", "c1", "c5"]);
    assert_eq!(uuids(&get(&["--from", "7"])), ["c4", "c3"]);
    assert_eq!(
        uuids(&get(&["--from", "+49", "--to", "+44", "--since", "1d"])),
        ["c1"]
    );
    // limits
    assert_eq!(uuids(&get(&["--limit", "2"])), ["c4", "c3"]);
    assert_eq!(uuids(&get(&["--limit", "0"])).len(), 5);
    let out = sipctl(&tb, &["get", "cdrs", "--limit", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit 0 lists all"));

    // the stable JSON fields
    let c4 = &get(&["--from", "7002"])[0];
    assert_eq!(c4["answerTime"], Value::Null);
    assert_eq!(
        (c4["billsec"].as_i64(), c4["hangupCause"].as_str()),
        (Some(0), Some("NO_ANSWER"))
    );
    let c5 = &get(&["--since", "2020-01-01", "--until", "2020-02-01"])[0];
    assert_eq!(c5["startTime"], "2020-01-15T10:00:00Z");
    assert_eq!(c5["answerTime"], "2020-01-15T10:00:05Z");
    assert_eq!(c5["mediaNode"], "sip:127.0.0.2:5080");

    // CSV for export: a header row with the wide columns, values quoted as needed
    let text = ok(&sipctl(&tb, &["get", "cdrs", "--to", "5000", "-o", "csv"]));
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        headers,
        [
            "START",
            "FROM",
            "TO",
            "DURATION",
            "BILLSEC",
            "CAUSE",
            "CODEC",
            "ANSWER",
            "END",
            "CALL-UUID",
            "SIP-CALL-ID",
            "EDGE",
            "SOURCE",
            "DESTINATION",
            "MEDIA",
            "ID"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(&rows[0][1], "+4930222");
    assert_eq!(&rows[0][4], "60");
    assert_eq!(&rows[0][5], "NORMAL_CLEARING, \"by caller\"");
    assert_eq!(&rows[0][9], "c2");
    let all = ok(&sipctl(&tb, &["get", "cdrs", "-o", "csv", "--no-headers"]));
    assert_eq!(all.lines().count(), 5, "{all}");
    assert!(all.lines().next().unwrap().contains(",7002,112,"), "{all}");
    let table = ok(&sipctl(&tb, &["get", "cdrs"]));
    assert!(
        table.starts_with("START") && table.contains("NO_ANSWER") && !table.contains("CALL-UUID"),
        "{table}"
    );

    // malformed filters: 3, naming the flag
    for (args, message) in [
        (vec!["get", "cdrs", "--since", "yesterday"], "--since: "),
        (
            vec!["get", "cdrs", "--until", "2020-01-15T10:00:00"],
            "no time zone",
        ),
        (vec!["get", "cdrs", "--limit", "-1"], "--limit: "),
        (
            vec!["get", "cdrs", "--since", "1h", "--until", "2h"],
            "--since: ",
        ),
    ] {
        let (code, err) = fails(&sipctl(&tb, &args));
        assert_eq!(code, 3, "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

/// `sipctl get|export|delete voicemail` on messages stored the way a media node
/// stores them (the recording itself is e2e's media_freeswitch voicemail test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voicemail_is_listed_exported_and_deleted() {
    let member = SocketAddr::new(media_ip(0), free_udp_port_on(media_ip(0)).unwrap());
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        ..Default::default()
    };
    let tb = Testbed::up(&spec).await.unwrap();
    tb.add_subscriber("bob", "bob-pw").await.unwrap();
    tb.add_subscriber("carol", "carol-pw").await.unwrap();
    let db = tb.db().await.unwrap();
    let audio: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    for (user, caller, heard) in [
        ("bob", "alice", false),
        ("bob", "+4930111", true),
        ("carol", "bob", false),
    ] {
        db.execute(
            "INSERT INTO sipstack_voicemail (username, domain, caller, sip_call_id, media_node, duration_ms, audio, heard_at)
             VALUES ($1, 'example.com', $2, $5, '127.1.1.1', 2500, $3, CASE WHEN $4 THEN now() END)",
            &[&user, &caller, &audio, &heard, &format!("c-{caller}")],
        )
        .await
        .unwrap();
    }

    let bob = json(&sipctl(
        &tb,
        &["get", "voicemail", "bob@example.com", "-o", "json"],
    ));
    let bob = bob.as_array().unwrap();
    assert_eq!(bob.len(), 2, "{bob:?}");
    assert_eq!(bob[0]["caller"], "alice");
    assert_eq!(bob[0]["mailbox"], "bob@example.com");
    assert_eq!(bob[0]["durationMs"], 2500);
    assert_eq!(bob[0]["audioBytes"], 4000);
    assert!(bob[0]["heardAt"].is_null());
    assert!(bob[1]["heardAt"].is_string());
    let all = json(&sipctl(&tb, &["get", "vm", "-o", "json"]));
    assert_eq!(all.as_array().unwrap().len(), 3);
    let table = ok(&sipctl(&tb, &["get", "voicemail"]));
    assert!(
        table.contains("MAILBOX") && table.contains("carol@example.com") && table.contains("new"),
        "{table}"
    );

    let id = bob[0]["id"].as_i64().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.wav");
    ok(&sipctl(
        &tb,
        &["export", "voicemail", &id, "--out", file.to_str().unwrap()],
    ));
    assert_eq!(std::fs::read(&file).unwrap(), audio);

    ok(&sipctl(&tb, &["delete", "voicemail", &id]));
    let (_, err) = fails(&sipctl(&tb, &["delete", "voicemail", &id]));
    assert!(
        err.contains("voicemail message \"") && err.contains("does not exist"),
        "{err}"
    );
    let bob = json(&sipctl(
        &tb,
        &["get", "voicemail", "bob@example.com", "-o", "json"],
    ));
    assert_eq!(bob.as_array().unwrap().len(), 1);
    let (_, err) = fails(&sipctl(&tb, &["get", "voicemail", "bob"]));
    assert!(err.contains("user@domain"), "{err}");

    // deleting the subscriber deletes the mailbox
    ok(&sipctl(&tb, &["delete", "subscriber", "carol@example.com"]));
    let all = json(&sipctl(&tb, &["get", "voicemail", "-o", "json"]));
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    tb.down().await.unwrap();
}
