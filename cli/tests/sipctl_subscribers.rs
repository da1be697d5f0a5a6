//! `sipctl add|get|delete subscriber`, `set password`, `import|export subscribers`
//! against a real platform: PostgreSQL and Kamailio from the local driver, SIPp
//! phones registering through the edge, and Kamailio's own admin tool kamcli.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fails, ok, sipctl, sipctl_with_stdin};
use sipstack_db::subscriber::{ha1, ha1b};
use sipstack_e2e::sipp::{free_udp_port_on, InjectionFile, SippCommand};
use sipstack_e2e::testbed::{
    media_ip, register_phone, users, PoolSpec, Testbed, TestbedSpec, DOMAIN, EDGE_IP,
};

/// A platform with one media pool (a SipEdge needs one); nothing answers at the
/// member's address, which these tests never call.
async fn testbed() -> Testbed {
    let member = std::net::SocketAddr::new(media_ip(0), free_udp_port_on(media_ip(0)).unwrap());
    let spec = TestbedSpec {
        pools: vec![PoolSpec::new("media", 1, "roundRobin").member(member, 1, 0)],
        ..Default::default()
    };
    Testbed::up(&spec).await.unwrap()
}

async fn registers(tb: &Testbed, user: &str, password: &str) {
    let port = free_udp_port_on(EDGE_IP).unwrap();
    register_phone(tb.edge(), user, password, port)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{user} with {password:?} should register: {e}\nedge log:\n{}",
                tb.edge_log(20)
            )
        });
}

async fn is_refused(tb: &Testbed, user: &str, password: &str) {
    let out = SippCommand::scenario("register_expect_reject")
        .remote(tb.edge())
        .injection(InjectionFile::users(&users(&[(user, password)])))
        .key("expires", "300")
        .max_calls(1)
        .deadline(Duration::from_secs(15))
        .run_async()
        .await
        .unwrap();
    out.ensure_all_succeeded(1).unwrap_or_else(|e| {
        panic!(
            "{user} with {password:?} should be refused: {e}\nedge log:\n{}",
            tb.edge_log(20)
        )
    });
    let status = out
        .lines("REJECTED")
        .next()
        .and_then(|l| l.get("status").map(str::to_string));
    assert_eq!(status.as_deref(), Some("401"), "{user}");
}

/// (username, domain, password, ha1, ha1b) of every subscriber, ordered.
async fn subscribers(db_url: &str) -> Vec<(String, String, String, String, String)> {
    let db = sipstack_db::connect(db_url, Duration::from_secs(10))
        .await
        .unwrap();
    db.query(
        "SELECT username, domain, password, ha1, ha1b FROM subscriber ORDER BY domain, username",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

async fn database_snapshot(tb: &Testbed) -> Vec<(String, String)> {
    sipstack_e2e::testbed::database_snapshot(&tb.db().await.unwrap())
        .await
        .unwrap()
}

fn write_file(tb: &Testbed, name: &str, content: &str) -> String {
    let path = tb.state_dir().join(name);
    std::fs::write(&path, content).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_subscriber_registers_and_a_deleted_one_cannot() {
    let tb = testbed().await;
    let out = sipctl_with_stdin(
        &tb,
        &["add", "subscriber", "alice@example.com", "--password-stdin"],
        Some("alice-pw\n"),
    );
    assert_eq!(ok(&out), "subscriber alice@example.com added\n");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("alice-pw"));

    // only the hashes are stored, with the domain as realm
    let rows = subscribers(&tb.db_url).await;
    assert_eq!(
        rows,
        vec![(
            "alice".into(),
            DOMAIN.into(),
            String::new(),
            ha1("alice", DOMAIN, "alice-pw"),
            ha1b("alice", DOMAIN, DOMAIN, "alice-pw")
        )]
    );

    registers(&tb, "alice", "alice-pw").await;
    is_refused(&tb, "alice", "wrong").await;

    let table = ok(&sipctl(&tb, &["get", "subscriber", "alice@example.com"]));
    assert_eq!(table, "USERNAME   DOMAIN\nalice      example.com\n");

    assert_eq!(
        ok(&sipctl(&tb, &["delete", "subscriber", "alice@example.com"])),
        "subscriber alice@example.com deleted\n"
    );
    // the edge asks the database at every REGISTER: refused at once
    is_refused(&tb, "alice", "alice-pw").await;
    let (code, err) = fails(&sipctl(&tb, &["get", "subscriber", "alice@example.com"]));
    assert_eq!(code, 4, "{err}");
    let (code, err) = fails(&sipctl(&tb, &["delete", "subscriber", "alice@example.com"]));
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains("subscriber alice@example.com does not exist; nothing was deleted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_counts_from_the_next_register() {
    let tb = testbed().await;
    let out = ok(&sipctl(
        &tb,
        &[
            "add",
            "subscriber",
            "bob@example.com",
            "--generate-password",
            "-o",
            "json",
        ],
    ));
    let added: serde_json::Value = serde_json::from_str(&out).unwrap();
    let generated = added["password"].as_str().unwrap().to_string();
    assert_eq!(generated.len(), 24);
    registers(&tb, "bob", &generated).await;

    let out = sipctl_with_stdin(
        &tb,
        &["set", "password", "bob@example.com", "--password-stdin"],
        Some("bob-new-pw\n"),
    );
    assert_eq!(ok(&out), "subscriber bob@example.com password changed\n");
    is_refused(&tb, "bob", &generated).await;
    registers(&tb, "bob", "bob-new-pw").await;

    // a generated one is printed once, in the human output too
    let out = ok(&sipctl(
        &tb,
        &["set", "password", "bob@example.com", "--generate-password"],
    ));
    let generated = out
        .lines()
        .nth(1)
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .to_string();
    assert!(out.contains("shown only now"), "{out}");
    is_refused(&tb, "bob", "bob-new-pw").await;
    registers(&tb, "bob", &generated).await;

    let (code, err) = fails(&sipctl_with_stdin(
        &tb,
        &["set", "password", "nobody@example.com", "--password-stdin"],
        Some("x\n"),
    ));
    assert_eq!(code, 4, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_prompt_does_not_echo_and_needs_a_terminal() {
    let tb = testbed().await;
    // no terminal and no flag: refused before anything is written
    let (code, err) = fails(&sipctl(&tb, &["add", "subscriber", "carol@example.com"]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("--password-stdin") && err.contains("--generate-password"),
        "{err}"
    );
    assert!(subscribers(&tb.db_url).await.is_empty());

    // a terminal (script(1) gives sipctl a pseudo-terminal): asked twice, never echoed
    let config = tb.state_dir().join("sipctl-config.yaml");
    let mut child = Command::new("script")
        .args([
            "-qefc",
            &format!(
                "{} add subscriber carol@example.com",
                env!("CARGO_BIN_EXE_sipctl")
            ),
            "/dev/null",
        ])
        .env("SIPCTL_CONFIG", &config)
        .env("SIPCTL_DB_URL", &tb.db_url)
        .env_remove("SIPCTL_CONTEXT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script(1) from bsdutils runs");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let wait_for = |text: &str| {
        let start = Instant::now();
        while !String::from_utf8_lossy(&seen.lock().unwrap()).contains(text) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "no {text:?} in {:?}",
                String::from_utf8_lossy(&seen.lock().unwrap())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // the terminal's echo is switched off just before the prompt is written
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stdin = child.stdin.take().unwrap();
    wait_for("Password for carol@example.com:");
    stdin.write_all(b"typed-Secret-1\n").unwrap();
    wait_for("Type it again:");
    stdin.write_all(b"typed-Secret-1\n").unwrap();
    wait_for("subscriber carol@example.com added");
    drop(stdin);
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    let screen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert!(
        !screen.contains("typed-Secret-1"),
        "the password was echoed: {screen:?}"
    );
    registers(&tb, "carol", "typed-Secret-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_subscribers_register_and_bad_files_change_nothing() {
    let tb = testbed().await;
    let with_passwords = write_file(
        &tb,
        "passwords.csv",
        "username,domain,password\nimp1,example.com,imp1-pw\nimp2,Example.com,\"imp2,pw\"\n",
    );
    let out = ok(&sipctl(&tb, &["import", "subscribers", &with_passwords]));
    assert!(
        out.starts_with(&format!(
            "imported {with_passwords}: 2 rows, 2 inserted, 0 updated, 0 unchanged in "
        )),
        "{out}"
    );
    assert!(out.trim_end().ends_with("rows/s)"), "{out}");

    // hashes from another Kamailio database (upper-case hex is accepted and stored lower-case)
    let hashes = format!(
        "username,domain,ha1,ha1b\nimp3,example.com,{},{}\n",
        ha1("imp3", DOMAIN, "imp3-pw").to_uppercase(),
        ha1b("imp3", DOMAIN, DOMAIN, "imp3-pw")
    );
    let with_hashes = write_file(&tb, "hashes.csv", &hashes);
    let out = ok(&sipctl(
        &tb,
        &["import", "subscribers", &with_hashes, "-o", "json"],
    ));
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            summary["rows"].as_u64(),
            summary["inserted"].as_u64(),
            summary["updated"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert!(summary["rowsPerSecond"].as_f64().unwrap() > 0.0);
    registers(&tb, "imp1", "imp1-pw").await;
    registers(&tb, "imp3", "imp3-pw").await;
    let rows = subscribers(&tb.db_url).await;
    assert_eq!(
        rows.iter().find(|r| r.0 == "imp2").unwrap().3,
        ha1("imp2", DOMAIN, "imp2,pw")
    );
    assert_eq!(
        rows.iter().find(|r| r.0 == "imp3").unwrap().3,
        ha1("imp3", DOMAIN, "imp3-pw")
    );

    // broken files: every bad line named, nothing written
    let before = subscribers(&tb.db_url).await;
    let broken = write_file(
        &tb,
        "broken.csv",
        "username,domain,password\n\
         new1,example.com,ok-pw\n\
         bad user,example.com,pw\n\
         new2,exa_mple.com,pw\n\
         new3,example.com,\n\
         new4,example.com,pw,extra\n\
         new1,EXAMPLE.COM,again\n\
         new5,example.com,fine\n",
    );
    let (code, err) = fails(&sipctl(&tb, &["import", "subscribers", &broken]));
    assert_eq!(code, 3, "{err}");
    for expected in [
        "5 of 7 rows are not valid; nothing was imported",
        "line 3: username: \"bad user\"",
        "line 4: domain: \"exa_mple.com\"",
        "line 5: password: the password is empty",
        "line 6: 4 fields, but the header names 3",
        "line 7: new1@example.com is on line 2 too",
    ] {
        assert!(err.contains(expected), "{expected:?} missing from:\n{err}");
    }
    assert!(
        !err.contains("line 2:") && !err.contains("line 8:"),
        "{err}"
    );
    let broken_hashes = write_file(
        &tb,
        "broken-hashes.csv",
        &format!(
            "username,domain,ha1,ha1b\nnew6,example.com,{0},{0}\nnew7,example.com,{0}x,zz\n",
            "a".repeat(32)
        ),
    );
    let (code, err) = fails(&sipctl(&tb, &["import", "subscribers", &broken_hashes]));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains(&format!(
            "line 3: ha1: \"{}x\" is not an MD5 digest",
            "a".repeat(32)
        )),
        "{err}"
    );
    assert!(
        err.contains("line 3: ha1b: \"zz\" is not an MD5 digest"),
        "{err}"
    );
    let (code, err) = fails(&sipctl(
        &tb,
        &[
            "import",
            "subscribers",
            &write_file(&tb, "header.csv", "user,domain,password\n"),
        ],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("line 1: the header must name the columns"),
        "{err}"
    );

    // existing subscribers refuse the whole file, naming them
    let update = write_file(
        &tb,
        "update.csv",
        "username,domain,password\nimp1,example.com,imp1-new\nimp4,example.com,imp4-pw\nimp2,example.com,imp2,pw\n",
    );
    let (code, err) = fails(&sipctl(&tb, &["import", "subscribers", &update]));
    assert_eq!(code, 3, "unquoted comma: {err}");
    let update = write_file(
        &tb,
        "update.csv",
        "username,domain,password\nimp1,example.com,imp1-new\nimp4,example.com,imp4-pw\nimp2,example.com,\"imp2,pw\"\n",
    );
    let (code, err) = fails(&sipctl(&tb, &["import", "subscribers", &update]));
    assert_eq!(code, 6, "{err}");
    assert!(
        err.contains("2 of the 3 subscribers exist already (imp1@example.com, imp2@example.com)"),
        "{err}"
    );
    assert!(err.contains("--upsert"), "{err}");
    // a dry run counts and changes nothing
    let out = ok(&sipctl(
        &tb,
        &["import", "subscribers", &update, "--upsert", "--dry-run"],
    ));
    assert!(
        out.contains("1 would be inserted, 1 updated, 1 left unchanged; nothing was changed"),
        "{out}"
    );
    assert_eq!(
        subscribers(&tb.db_url).await,
        before,
        "the refused imports and the dry run changed subscribers"
    );

    let out = ok(&sipctl(
        &tb,
        &["import", "subscribers", &update, "--upsert"],
    ));
    assert!(
        out.contains("3 rows, 1 inserted, 1 updated, 1 unchanged"),
        "{out}"
    );
    is_refused(&tb, "imp1", "imp1-pw").await;
    registers(&tb, "imp1", "imp1-new").await;
    registers(&tb, "imp4", "imp4-pw").await;

    // standard input works as a file
    let out = sipctl_with_stdin(
        &tb,
        &["import", "subscribers", "-"],
        Some("username,domain,password\nimp5,example.com,imp5-pw\n"),
    );
    assert!(ok(&out).starts_with("imported standard input: 1 rows, 1 inserted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_round_trip_into_a_fresh_database() {
    let tb = testbed().await;
    let mut csv = String::from("username,domain,password\n");
    for i in 0..5000 {
        csv.push_str(&format!(
            "user{i:05},{},pw-{i}\n",
            if i % 3 == 0 { "b.example.com" } else { DOMAIN }
        ));
    }
    let file = write_file(&tb, "many.csv", &csv);
    assert!(
        ok(&sipctl(&tb, &["import", "subscribers", &file])).contains("5000 rows, 5000 inserted")
    );
    ok(&sipctl_with_stdin(
        &tb,
        &["add", "subscriber", "alice@example.com", "--password-stdin"],
        Some("a\n"),
    ));

    let exported = tb.state_dir().join("export.csv");
    let out = sipctl(
        &tb,
        &["export", "subscribers", "-f", exported.to_str().unwrap()],
    );
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("exported 5001 subscribers"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&exported).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&exported).unwrap();
    assert!(
        text.starts_with("username,domain,ha1,ha1b\nuser00000,b.example.com,"),
        "{}",
        &text[..200]
    );
    assert_eq!(text.lines().count(), 5002);
    // to standard output, one domain
    let b_only = ok(&sipctl(
        &tb,
        &["export", "subscribers", "--domain", "B.example.com"],
    ));
    assert_eq!(b_only.lines().count(), 1 + 1667);

    // a fresh database in the same server, its schema from sipctl
    let pg = sipstack_local::postgres::LocalPostgres::new(
        tb.state_dir().join("pg-pg"),
        tb.ports.postgres,
        15,
    );
    let fresh_url = pg.ensure_database("sipstack", "fresh").await.unwrap();
    ok(&sipctl(&tb, &["db", "migrate", "--db-url", &fresh_url]));
    let out = ok(&sipctl(
        &tb,
        &[
            "import",
            "subscribers",
            exported.to_str().unwrap(),
            "--db-url",
            &fresh_url,
        ],
    ));
    assert!(out.contains("5001 rows, 5001 inserted"), "{out}");
    assert_eq!(subscribers(&fresh_url).await, subscribers(&tb.db_url).await);
    let again = ok(&sipctl(
        &tb,
        &["export", "subscribers", "--db-url", &fresh_url],
    ));
    assert_eq!(again, text);
}

/// kamcli's config: its database URL is an SQLAlchemy URL.
fn kamcli_config(tb: &Testbed) -> String {
    let url = tb
        .db_url
        .replacen("postgres://", "postgresql+psycopg2://", 1);
    write_file(
        tb,
        "kamcli.ini",
        &format!("[main]\ndomain={DOMAIN}\n\n[db]\nrwurl={url}\nrourl={url}\n"),
    )
}

fn kamcli(config: &str, args: &[&str]) -> String {
    let out = Command::new("kamcli")
        .args(["--no-default-configs", "-c", config])
        .args(args)
        .output()
        .expect("kamcli is installed (scripts/install-deps.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("Traceback"),
        "kamcli {args:?} failed:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// kamcli's `-F json` prints one JSON object per row, separated by blank lines.
fn kamcli_rows(text: &str) -> Vec<serde_json::Value> {
    text.split("\n\n")
        .filter(|c| !c.trim().is_empty())
        .map(|c| serde_json::from_str(c).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kamcli_and_sipctl_share_the_subscriber_table() {
    let python_ok = Command::new("/usr/bin/python3")
        .args(["-c", "import sqlalchemy, psycopg2"])
        .status();
    assert!(
        python_ok.is_ok_and(|s| s.success()),
        "kamcli reaches PostgreSQL through SQLAlchemy and psycopg2: apt-get install python3-psycopg2"
    );
    let tb = testbed().await;
    let config = kamcli_config(&tb);

    // sipctl → kamcli
    ok(&sipctl_with_stdin(
        &tb,
        &["add", "subscriber", "alice@example.com", "--password-stdin"],
        Some("alice-pw\n"),
    ));
    let rows = kamcli_rows(&kamcli(
        &config,
        &["subscriber", "show", "-F", "json", "alice@example.com"],
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["username"], "alice");
    assert_eq!(rows[0]["domain"], DOMAIN);
    assert_eq!(rows[0]["password"], "");
    assert_eq!(rows[0]["ha1"], ha1("alice", DOMAIN, "alice-pw").as_str());
    assert_eq!(
        rows[0]["ha1b"],
        ha1b("alice", DOMAIN, DOMAIN, "alice-pw").as_str()
    );
    assert_eq!(
        kamcli_rows(&kamcli(&config, &["subscriber", "show", "-F", "json"])).len(),
        1
    );

    // kamcli → sipctl: by default kamcli stores the plaintext password next to ha1/ha1b
    kamcli(
        &config,
        &["subscriber", "add", "kam1@example.com", "kam1-pw"],
    );
    kamcli(
        &config,
        &[
            "subscriber",
            "add",
            "--text-password",
            "no",
            "kam2",
            "kam2-pw",
        ],
    );
    let listed: serde_json::Value =
        serde_json::from_str(&ok(&sipctl(&tb, &["get", "subscribers", "-o", "json"]))).unwrap();
    let summary: Vec<(String, bool, bool)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["aor"].as_str().unwrap().to_string(),
                s["digest"].as_bool().unwrap(),
                s["plaintextPassword"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("alice@example.com".to_string(), true, false),
            ("kam1@example.com".to_string(), true, true),
            ("kam2@example.com".to_string(), true, false)
        ]
    );
    let wide = ok(&sipctl(
        &tb,
        &["get", "subscriber", "kam1@example.com", "-o", "wide"],
    ));
    let cells: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        cells[3..],
        ["yes", "yes"],
        "DIGEST and PLAINTEXT-PASSWORD:\n{wide}"
    );
    // kamcli writes ha1 and ha1b with the domain as realm: its subscribers register through the edge
    registers(&tb, "kam1", "kam1-pw").await;
    registers(&tb, "kam2", "kam2-pw").await;
    // sipctl set password leaves no plaintext behind
    ok(&sipctl_with_stdin(
        &tb,
        &["set", "password", "kam1@example.com", "--password-stdin"],
        Some("kam1-new\n"),
    ));
    let rows = kamcli_rows(&kamcli(
        &config,
        &["subscriber", "show", "-F", "json", "kam1@example.com"],
    ));
    assert_eq!(rows[0]["password"], "");
    registers(&tb, "kam1", "kam1-new").await;
    // and kamcli removes what sipctl added
    kamcli(&config, &["subscriber", "rm", "alice@example.com"]);
    assert_eq!(
        fails(&sipctl(&tb, &["get", "subscriber", "alice@example.com"])).0,
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_strings_are_refused_or_stored_verbatim() {
    let tb = testbed().await;
    ok(&sipctl_with_stdin(
        &tb,
        &[
            "add",
            "subscriber",
            "victim@example.com",
            "--password-stdin",
        ],
        Some("v\n"),
    ));
    let before = database_snapshot(&tb).await;
    let hostile = [
        "'; DROP TABLE subscriber; --",
        "\" OR 1=1",
        "\\",
        "$$",
        "$1",
        "%s",
        "a\nb",
        "x' OR '1'='1",
    ];

    // user names and domains: refused, exit 3, naming the field
    for h in hostile {
        for aor in [
            format!("{h}@example.com"),
            format!("eve@{h}"),
            format!("eve@example.com{h}"),
        ] {
            let (code, err) = fails(&sipctl_with_stdin(
                &tb,
                &["add", "subscriber", &aor, "--password-stdin"],
                Some("pw\n"),
            ));
            assert_eq!(code, 3, "{aor:?}: {err}");
            assert!(
                err.contains("username: ") || err.contains("domain: ") || err.contains("aor: "),
                "{err}"
            );
            for args in [
                vec!["get", "subscriber", aor.as_str()],
                vec!["delete", "subscriber", "victim@example.com", aor.as_str()],
                vec!["get", "subscribers", "--after", aor.as_str()],
            ] {
                let (code, err) = fails(&sipctl(&tb, &args));
                assert_eq!(code, 3, "{args:?}: {err}");
            }
        }
        let (code, err) = fails(&sipctl(&tb, &["get", "subscribers", "--domain", h]));
        assert_eq!(code, 3, "{h:?}: {err}");
        let (code, err) = fails(&sipctl(&tb, &["export", "subscribers", "--domain", h]));
        assert_eq!(code, 3, "{h:?}: {err}");
    }
    // the same in CSV cells: every bad line named
    let mut csv = String::from("username,domain,password\n");
    for h in hostile {
        let quoted = format!("\"{}\"", h.replace('"', "\"\""));
        csv.push_str(&format!("{quoted},example.com,pw\neve,{quoted},pw\n"));
    }
    csv.push_str("nul\0user,example.com,pw\nnul,example.com,\"pw\0\"\n");
    let (code, err) = fails(&sipctl(
        &tb,
        &[
            "import",
            "subscribers",
            &write_file(&tb, "hostile.csv", &csv),
        ],
    ));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("18 of 18 rows are not valid"), "{err}");
    assert!(
        err.contains("username: \"nul\\0user\"")
            && err.contains("password: the password contains a control character"),
        "{err}"
    );
    // a NUL from standard input
    let (code, err) = fails(&sipctl_with_stdin(
        &tb,
        &["add", "subscriber", "nul@example.com", "--password-stdin"],
        Some("pw\0x\n"),
    ));
    assert_eq!(code, 3, "{err}");
    assert_eq!(
        database_snapshot(&tb).await,
        before,
        "a refused command changed the database"
    );

    // passwords: any printable text, stored only as its hashes
    let printable: Vec<&str> = hostile
        .iter()
        .copied()
        .filter(|h| !h.contains('\n'))
        .collect();
    for (i, pw) in printable.iter().enumerate() {
        let aor = format!("pw{i}@example.com");
        ok(&sipctl_with_stdin(
            &tb,
            &["add", "subscriber", &aor, "--password-stdin"],
            Some(&format!("{pw}\n")),
        ));
    }
    let mut csv = String::from("username,domain,password\n");
    for (i, pw) in printable.iter().enumerate() {
        csv.push_str(&format!(
            "csv{i},example.com,\"{}\"\n",
            pw.replace('"', "\"\"")
        ));
    }
    ok(&sipctl(
        &tb,
        &[
            "import",
            "subscribers",
            &write_file(&tb, "passwords.csv", &csv),
        ],
    ));
    let rows = subscribers(&tb.db_url).await;
    for (i, pw) in printable.iter().enumerate() {
        for user in [format!("pw{i}"), format!("csv{i}")] {
            let row = rows.iter().find(|r| r.0 == user).unwrap();
            assert_eq!(
                (&row.2, &row.3, &row.4),
                (
                    &String::new(),
                    &ha1(&user, DOMAIN, pw),
                    &ha1b(&user, DOMAIN, DOMAIN, pw)
                ),
                "{user}"
            );
        }
    }
    // every other table as it was, and subscriber only grew by these rows
    let after = database_snapshot(&tb).await;
    let others = |s: &[(String, String)]| {
        s.iter()
            .filter(|(t, _)| t != "subscriber")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(others(&after), others(&before));
    assert_eq!(rows.len(), 1 + 2 * printable.len());
    assert!(rows.iter().any(|r| r.0 == "victim"));
    registers(&tb, "victim", "v").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_page_by_keyset_and_exit_codes_are_stable() {
    let tb = testbed().await;
    let mut csv = String::from("username,domain,password\n");
    for (u, d) in [
        ("zed", "a.example"),
        ("amy", "b.example"),
        ("bob", "a.example"),
        ("cat", "b.example"),
        ("dan", "a.example"),
        ("eve", "c.example"),
        ("fay", "b.example"),
    ] {
        csv.push_str(&format!("{u},{d},pw-{u}\n"));
    }
    ok(&sipctl(
        &tb,
        &["import", "subscribers", &write_file(&tb, "seven.csv", &csv)],
    ));
    let all = ok(&sipctl(
        &tb,
        &["get", "subscribers", "--limit", "0", "--no-headers"],
    ));
    let expected = [
        "bob a.example",
        "dan a.example",
        "zed a.example",
        "amy b.example",
        "cat b.example",
        "fay b.example",
        "eve c.example",
    ];
    let words = |text: &str| {
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(words(&all), expected);

    // pages of 3, each starting after the last of the previous one
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["get", "subscribers", "--limit", "3", "-o", "json"];
        if let Some(a) = &after {
            args.extend(["--after", a.as_str()]);
        }
        let page: Vec<serde_json::Value> = serde_json::from_str(&ok(&sipctl(&tb, &args))).unwrap();
        if page.is_empty() {
            break;
        }
        for item in &page {
            let keys: BTreeSet<&str> = item
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from([
                    "aor",
                    "username",
                    "domain",
                    "id",
                    "digest",
                    "plaintextPassword"
                ])
            );
            paged.push(format!(
                "{} {}",
                item["username"].as_str().unwrap(),
                item["domain"].as_str().unwrap()
            ));
        }
        after = page.last().map(|i| i["aor"].as_str().unwrap().to_string());
    }
    assert_eq!(paged, expected);
    // a full page in a table tells how to get the next
    let out = sipctl(
        &tb,
        &[
            "get",
            "subscribers",
            "--limit",
            "2",
            "--domain",
            "b.example",
            "--after",
            "amy@b.example",
        ],
    );
    assert_eq!(
        words(&ok(&out)),
        ["USERNAME DOMAIN", "cat b.example", "fay b.example"]
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--after fay@b.example"));
    let yaml = ok(&sipctl(
        &tb,
        &[
            "get",
            "subscriber",
            "eve",
            "--domain",
            "c.example",
            "-o",
            "yaml",
        ],
    ));
    assert!(
        yaml.starts_with("aor: eve@c.example\nusername: eve\ndomain: c.example\nid: "),
        "{yaml}"
    );
    let csv_out = ok(&sipctl(
        &tb,
        &["get", "subscriber", "eve@c.example", "-o", "csv"],
    ));
    assert!(
        csv_out.starts_with("USERNAME,DOMAIN,ID,DIGEST,PLAINTEXT-PASSWORD\neve,c.example,"),
        "{csv_out}"
    );

    let before = subscribers(&tb.db_url).await;
    let code = |args: &[&str], stdin: Option<&str>| fails(&sipctl_with_stdin(&tb, args, stdin));
    // 6: exists already
    let (c, err) = code(
        &["add", "subscriber", "bob@a.example", "--password-stdin"],
        Some("x\n"),
    );
    assert_eq!(c, 6, "{err}");
    assert!(
        err.contains("subscriber \"bob@a.example\" already exists"),
        "{err}"
    );
    // 4: does not exist; a delete of several is all or nothing
    assert_eq!(code(&["get", "subscriber", "nobody@a.example"], None).0, 4);
    let (c, err) = code(
        &[
            "delete",
            "subscriber",
            "bob@a.example",
            "nobody@a.example",
            "ghost@a.example",
        ],
        None,
    );
    assert_eq!(c, 4, "{err}");
    assert!(
        err.contains(
            "subscribers nobody@a.example, ghost@a.example do not exist; nothing was deleted"
        ),
        "{err}"
    );
    assert_eq!(
        code(
            &["set", "password", "nobody@a.example", "--generate-password"],
            None
        )
        .0,
        4
    );
    // 3: malformed input
    for args in [
        &["add", "subscriber", "bob", "--generate-password"][..],
        &["add", "subscriber", "bob@a.example"][..],
        &["get", "subscriber", "bob"][..],
        &[
            "get",
            "subscriber",
            "bob@a.example",
            "--domain",
            "b.example",
        ][..],
        &["get", "subscribers", "--limit=-1"][..],
        &["set", "password", "bob@a.example"][..],
    ] {
        let (c, err) = code(args, None);
        assert_eq!(c, 3, "{args:?}: {err}");
    }
    let (c, err) = code(
        &["add", "subscriber", "new@a.example", "--password-stdin"],
        Some("\n"),
    );
    assert_eq!(c, 3, "{err}");
    // 5: unreachable, refused at once or silent until --connect-timeout; nothing written
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed_url = format!("postgres://sipstack:pw@127.0.0.1:{closed}/sipstack");
    let (c, err) = code(
        &[
            "add",
            "subscriber",
            "new@a.example",
            "--password-stdin",
            "--db-url",
            &closed_url,
        ],
        Some("pw\n"),
    );
    assert_eq!(c, 5, "{err}");
    assert!(
        err.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{closed}"
        )) && !err.contains(":pw@"),
        "{err}"
    );
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!(
        "postgres://sipstack:pw@{}/sipstack",
        silent.local_addr().unwrap()
    );
    let started = Instant::now();
    let seven = write_file(
        &tb,
        "again.csv",
        "username,domain,password\nnew,a.example,pw\n",
    );
    let (c, err) = code(
        &[
            "import",
            "subscribers",
            &seven,
            "--db-url",
            &silent_url,
            "--connect-timeout",
            "1",
        ],
        None,
    );
    assert_eq!(c, 5, "{err}");
    assert!(err.contains("no answer within 1s"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    drop(silent);
    assert_eq!(
        subscribers(&tb.db_url).await,
        before,
        "a failed command changed the subscribers"
    );
}

#[test]
fn every_subscriber_command_has_examples_in_its_help() {
    for args in [
        &["add", "subscriber"][..],
        &["get", "subscribers"][..],
        &["delete", "subscriber"][..],
        &["set", "password"][..],
        &["import", "subscribers"][..],
        &["export", "subscribers"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sipctl"))
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && (text.contains("Examples:") || text.contains("Example:")),
            "{args:?}:\n{text}"
        );
        assert!(
            text.contains(&format!("sipctl {} ", args.join(" "))),
            "{args:?}:\n{text}"
        );
    }
    assert!(Path::new(env!("CARGO_BIN_EXE_sipctl")).is_file());
}
