//! The platform schema against the real programs: PostgreSQL 15 run by
//! `LocalPostgres`, and Kamailio 5.6 loading the tables and the dialplan view.
//!
//! Each test runs its own server in a temporary directory on a free port, so the
//! tests run side by side. Every process a test starts is stopped by a guard,
//! also when the test fails.

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use sipstack_db::dispatcher::Member;
use sipstack_db::media_pool::Algorithm;
use sipstack_db::route::{self, MatchKind, NewRoute, Target};
use sipstack_db::{DbError, MigrationReport};
use sipstack_local::postgres::{LocalPostgres, PostgresError};
use tempfile::TempDir;
use tokio_postgres::Client;

const PG_MAJOR: u32 = 15;
const OWNER: &str = "sipstack";
const DATABASE: &str = "sipstack";

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free TCP port");
    listener.local_addr().expect("local address").port()
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port");
    socket.local_addr().expect("local address").port()
}

/// A temporary directory the `postgres` system user can enter (when the tests run as root).
fn test_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sipstack-db-")
        .tempdir()
        .expect("create a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temporary directory");
    dir
}

/// A running PostgreSQL with the platform database; stopped when dropped.
struct TestPostgres {
    pg: LocalPostgres,
    url: String,
    dir: TempDir,
}

impl TestPostgres {
    async fn start() -> Self {
        let dir = test_dir();
        let pg = LocalPostgres::new(dir.path().join("pg"), free_tcp_port(), PG_MAJOR)
            .with_start_timeout(Duration::from_secs(60));
        assert!(
            pg.init().await.expect("initdb"),
            "a fresh directory is initialised"
        );
        // From here on the guard stops the server whatever happens.
        let mut guard = TestPostgres {
            pg,
            url: String::new(),
            dir,
        };
        guard.pg.start().await.expect("start PostgreSQL");
        guard.url = guard
            .pg
            .ensure_database(OWNER, DATABASE)
            .await
            .expect("create the platform database");
        guard
    }

    async fn client(&self) -> Client {
        sipstack_db::connect(&self.url, Duration::from_secs(10))
            .await
            .expect("connect as the owner")
    }

    async fn migrated_client(&self) -> Client {
        let mut client = self.client().await;
        sipstack_db::migrate(&mut client).await.expect("migrate");
        client
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime; stop from a thread with its own.
        let pg = self.pg.clone();
        let stopped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(pg.stop()).ok()
        })
        .join();
        if !matches!(stopped, Ok(Some(_))) {
            eprintln!(
                "could not stop PostgreSQL in {}",
                self.pg.data_dir().display()
            );
        }
    }
}

/// Table shapes and indexes, to compare two databases or two moments.
async fn schema_fingerprint(client: &Client, tables: &[&str]) -> (Vec<String>, Vec<String>) {
    let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    let columns = client
        .query(
            "SELECT table_name || '.' || column_name || ' ' || data_type || coalesce('(' || character_maximum_length || ')', '')
                    || ' null=' || is_nullable || ' default=' || coalesce(column_default, '-')
             FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = ANY($1)
             ORDER BY table_name, ordinal_position",
            &[&tables],
        )
        .await
        .expect("read columns")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let indexes = client
        .query(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = ANY($1) ORDER BY indexname",
            &[&tables],
        )
        .await
        .expect("read indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    (columns, indexes)
}

async fn version_rows(client: &Client) -> BTreeMap<String, i32> {
    client
        .query("SELECT table_name::text, table_version FROM version", &[])
        .await
        .expect("read the version table")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn fresh_database_gets_every_migration_and_a_second_run_changes_nothing() {
    let db = TestPostgres::start().await;
    let mut client = db.client().await;
    assert_eq!(sipstack_db::schema_version(&client).await.unwrap(), 0);

    let first = sipstack_db::migrate(&mut client)
        .await
        .expect("first migration");
    let known: Vec<i32> = sipstack_db::known_migrations()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(first.version_before, 0);
    assert_eq!(first.version, sipstack_db::latest_version());
    assert_eq!(
        first.applied.iter().map(|m| m.version).collect::<Vec<_>>(),
        known
    );

    let tables = [
        "version",
        "subscriber",
        "location",
        "location_attrs",
        "dispatcher",
        "sipstack_cdr",
        "sipstack_media_pool",
        "sipstack_route",
        "sipstack_dialplan",
        "sipstack_schema_migrations",
    ];
    let before = schema_fingerprint(&client, &tables).await;
    let bookkeeping_before: Vec<(i32, String)> = client
        .query("SELECT version, checksum || applied_at::text FROM sipstack_schema_migrations ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let versions_before = version_rows(&client).await;

    let second = sipstack_db::migrate(&mut client)
        .await
        .expect("second migration");
    assert_eq!(
        second,
        MigrationReport {
            version_before: first.version,
            version: first.version,
            applied: Vec::new()
        },
        "a second run applies nothing"
    );
    assert_eq!(schema_fingerprint(&client, &tables).await, before);
    let bookkeeping_after: Vec<(i32, String)> = client
        .query("SELECT version, checksum || applied_at::text FROM sipstack_schema_migrations ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(bookkeeping_after, bookkeeping_before);
    assert_eq!(version_rows(&client).await, versions_before);
    assert_eq!(
        sipstack_db::schema_version(&client).await.unwrap(),
        sipstack_db::latest_version()
    );

    let expected: BTreeMap<String, i32> = [
        ("version", 1),
        ("subscriber", 7),
        ("location", 9),
        ("location_attrs", 1),
        ("dispatcher", 4),
        ("sipstack_dialplan", 2),
        // permissions checks the version of its address table, a view here
        ("sipstack_trunk_address_view", 6),
    ]
    .into_iter()
    .map(|(t, v)| (t.to_string(), v))
    .collect();
    assert_eq!(versions_before, expected);
}

/// Kamailio's own schema files, loaded into a second database, have the same
/// columns, defaults and indexes as our migrations (ours add two indexes).
#[tokio::test]
async fn kamailio_tables_match_kamailio_schema_files() {
    let db = TestPostgres::start().await;
    let ours = db.migrated_client().await;

    let admin = db
        .pg
        .connect_superuser()
        .await
        .expect("connect as superuser");
    admin
        .batch_execute("CREATE DATABASE kamailio_reference OWNER sipstack")
        .await
        .expect("create the reference database");
    let base = db
        .url
        .strip_suffix(DATABASE)
        .expect("the URL ends with the database name");
    let reference_url = format!("{base}kamailio_reference");
    let reference = sipstack_db::connect(&reference_url, Duration::from_secs(10))
        .await
        .expect("connect to the reference");
    for file in ["standard", "auth_db", "usrloc", "dispatcher"] {
        let path = format!("/usr/share/kamailio/postgres/{file}-create.sql");
        let sql = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}; install kamailio-postgres-modules"));
        reference
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }

    let tables = [
        "version",
        "subscriber",
        "location",
        "location_attrs",
        "dispatcher",
    ];
    let (our_columns, mut our_indexes) = schema_fingerprint(&ours, &tables).await;
    let (reference_columns, reference_indexes) = schema_fingerprint(&reference, &tables).await;
    assert_eq!(our_columns, reference_columns);
    for extra in [
        "CREATE UNIQUE INDEX dispatcher_set_destination_idx ON public.dispatcher USING btree (setid, destination)",
        "CREATE INDEX subscriber_domain_username_idx ON public.subscriber USING btree (domain, username)",
    ] {
        assert!(our_indexes.iter().any(|i| i == extra), "{extra} missing: {our_indexes:#?}");
        our_indexes.retain(|i| i != extra);
    }
    assert_eq!(our_indexes, reference_indexes);

    let reference_versions = version_rows(&reference).await;
    let mut our_versions = version_rows(&ours).await;
    our_versions.remove("sipstack_dialplan");
    our_versions.remove("sipstack_trunk_address_view");
    assert_eq!(our_versions, reference_versions);
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    let db = TestPostgres::start().await;
    let (mut a, mut b, mut c) = (db.client().await, db.client().await, db.client().await);
    let (ra, rb, rc) = tokio::join!(
        sipstack_db::migrate(&mut a),
        sipstack_db::migrate(&mut b),
        sipstack_db::migrate(&mut c)
    );
    let reports = [
        ra.expect("migrator a"),
        rb.expect("migrator b"),
        rc.expect("migrator c"),
    ];
    let applied: usize = reports.iter().map(|r| r.applied.len()).sum();
    assert_eq!(
        applied,
        sipstack_db::known_migrations().len(),
        "{reports:#?}"
    );
    assert!(reports
        .iter()
        .all(|r| r.version == sipstack_db::latest_version()));
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let db = TestPostgres::start().await;
    let mut client = db.migrated_client().await;
    let future = sipstack_db::latest_version() + 1;
    client
        .execute(
            "INSERT INTO sipstack_schema_migrations (version, name, checksum) VALUES ($1, 'from_the_future', 'md5:0')",
            &[&future],
        )
        .await
        .unwrap();
    let err = sipstack_db::migrate(&mut client)
        .await
        .expect_err("a newer schema must be refused");
    match &err {
        DbError::SchemaTooNew { database, known } => {
            assert_eq!(*database, future);
            assert_eq!(*known, sipstack_db::latest_version());
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(err.to_string().contains("upgrade sipstack"), "{err}");
}

#[tokio::test]
async fn changed_migration_is_refused() {
    let db = TestPostgres::start().await;
    let mut client = db.migrated_client().await;
    client
        .execute(
            "UPDATE sipstack_schema_migrations SET checksum = 'md5:edited' WHERE version = 1",
            &[],
        )
        .await
        .unwrap();
    let err = sipstack_db::migrate(&mut client)
        .await
        .expect_err("a changed migration must be refused");
    assert!(
        matches!(&err, DbError::ChecksumMismatch { version: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("migration 0001 (kamailio_core)"),
        "{err}"
    );
}

#[tokio::test]
async fn repositories_keep_their_promises() {
    let db = TestPostgres::start().await;
    let client = db.migrated_client().await;

    // subscribers: hashes only, realm = domain
    sipstack_db::subscriber::add(&client, "alice", "Acme.Example", "s3cret")
        .await
        .unwrap();
    let dup = sipstack_db::subscriber::add(&client, "alice", "acme.example", "other")
        .await
        .unwrap_err();
    assert!(matches!(dup, DbError::AlreadyExists { .. }), "{dup}");
    let row = client
        .query_one(
            "SELECT domain, password, ha1, ha1b FROM subscriber WHERE username = 'alice'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "acme.example");
    assert_eq!(
        row.get::<_, String>(1),
        "",
        "no plaintext password is stored"
    );
    assert_eq!(
        row.get::<_, String>(2),
        sipstack_db::subscriber::ha1("alice", "acme.example", "s3cret")
    );
    assert_eq!(
        row.get::<_, String>(3),
        sipstack_db::subscriber::ha1b("alice", "acme.example", "acme.example", "s3cret")
    );
    assert!(
        !sipstack_db::subscriber::upsert(&client, "alice", "acme.example", "new")
            .await
            .unwrap()
    );
    assert!(
        sipstack_db::subscriber::upsert(&client, "bob", "acme.example", "pw")
            .await
            .unwrap()
    );
    assert_eq!(
        sipstack_db::subscriber::list(&client).await.unwrap().len(),
        2
    );
    sipstack_db::subscriber::remove(&client, "bob", "acme.example")
        .await
        .unwrap();
    assert!(
        sipstack_db::subscriber::remove(&client, "bob", "acme.example")
            .await
            .is_err()
    );

    // dispatcher: members that stay keep their flags
    let member = |d: &str, w: i32| Member {
        destination: d.into(),
        weight: w,
        priority: 0,
        description: "pool-a".into(),
    };
    let change = sipstack_db::dispatcher::replace_set(
        &client,
        10,
        &[
            member("sip:10.0.0.1:5080", 50),
            member("sip:10.0.0.2:5080", 50),
        ],
    )
    .await
    .unwrap();
    assert_eq!(change.added, ["sip:10.0.0.1:5080", "sip:10.0.0.2:5080"]);
    client
        .execute(
            "UPDATE dispatcher SET flags = 4 WHERE destination = 'sip:10.0.0.1:5080'",
            &[],
        )
        .await
        .unwrap();
    let change = sipstack_db::dispatcher::replace_set(
        &client,
        10,
        &[
            member("sip:10.0.0.1:5080", 70),
            member("sip:10.0.0.3:5080", 30),
        ],
    )
    .await
    .unwrap();
    assert_eq!(change.added, ["sip:10.0.0.3:5080"]);
    assert_eq!(change.removed, ["sip:10.0.0.2:5080"]);
    assert_eq!(change.kept, ["sip:10.0.0.1:5080"]);
    let rows = sipstack_db::dispatcher::list(&client).await.unwrap();
    let kept = rows
        .iter()
        .find(|d| d.destination == "sip:10.0.0.1:5080")
        .unwrap();
    assert_eq!(
        (kept.flags, kept.attrs.as_str()),
        (4, "weight=70;rweight=70"),
        "state kept, weight updated"
    );
    let added = rows
        .iter()
        .find(|d| d.destination == "sip:10.0.0.3:5080")
        .unwrap();
    assert_eq!(
        (added.flags, added.attrs.as_str(), added.set_id),
        (0, "weight=30;rweight=30", 10)
    );
    let again = sipstack_db::dispatcher::replace_set(
        &client,
        10,
        &[
            member("sip:10.0.0.1:5080", 70),
            member("sip:10.0.0.3:5080", 30),
        ],
    )
    .await
    .unwrap();
    assert!(again.is_unchanged());
    assert!(sipstack_db::dispatcher::replace_set(
        &client,
        10,
        &[member("sip:a", 1), member("sip:a", 1)]
    )
    .await
    .is_err());

    // media pools and routes
    sipstack_db::media_pool::upsert(&client, "pool-a", 10, Algorithm::RoundRobin)
        .await
        .unwrap();
    sipstack_db::media_pool::upsert(&client, "pool-b", 20, "weighted")
        .await
        .unwrap();
    sipstack_db::media_pool::upsert(&client, "pool-a", 10, "callIdHash")
        .await
        .unwrap();
    let conflict = sipstack_db::media_pool::upsert(&client, "pool-c", 20, "weighted")
        .await
        .unwrap_err();
    assert!(conflict.to_string().contains("\"pool-b\""), "{conflict}");
    let pools = sipstack_db::media_pool::list(&client).await.unwrap();
    assert_eq!(
        pools
            .iter()
            .map(|p| (p.name.as_str(), p.set_id, p.algorithm))
            .collect::<Vec<_>>(),
        [
            ("pool-a", 10, Algorithm::CallIdHash),
            ("pool-b", 20, Algorithm::Weighted)
        ]
    );

    let new_route = |name: &str, target: Target| NewRoute {
        name: name.into(),
        priority: 100,
        match_kind: MatchKind::Prefix,
        match_value: "+44".into(),
        source_domain: None,
        source: Default::default(),
        target,
        service: None,
        description: "UK".into(),
    };
    let stored = route::add(&client, &new_route("uk", Target::Pool("pool-b".into())))
        .await
        .unwrap();
    assert_eq!(stored.target, Target::Pool("pool-b".into()));
    assert!(stored.created_at.is_some());
    let dup = route::add(&client, &new_route("uk", Target::User))
        .await
        .unwrap_err();
    assert!(matches!(dup, DbError::AlreadyExists { .. }), "{dup}");
    let missing = route::add(
        &client,
        &new_route("nowhere", Target::Pool("pool-x".into())),
    )
    .await
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .starts_with("target_pool: media pool \"pool-x\" does not exist"),
        "{missing}"
    );
    assert_eq!(route::list(&client).await.unwrap().len(), 1);

    // the database enforces the same rules when written to directly
    for (value, target_uri) in [("+44", "sip:$ru"), ("+44", "sip:a\\1"), ("4 4", "sip:a")] {
        let err = client
            .execute(
                "INSERT INTO sipstack_route (name, priority, match_kind, match_value, target_kind, target_uri)
                 VALUES ('raw', 1, 'prefix', $1, 'uri', $2)",
                &[&value, &target_uri],
            )
            .await
            .expect_err("a CHECK constraint refuses it");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION),
            "{err}"
        );
    }

    // pools routes still use are kept and reported
    let cleanup = sipstack_db::media_pool::remove_absent(&client, &[])
        .await
        .unwrap();
    assert_eq!(cleanup.removed, ["pool-a"]);
    assert_eq!(cleanup.still_referenced.len(), 1);
    assert_eq!(cleanup.still_referenced[0].name, "pool-b");
    assert_eq!(cleanup.still_referenced[0].routes, ["uk"]);
    route::delete(&client, "uk").await.unwrap();
    assert!(matches!(
        route::delete(&client, "uk").await,
        Err(DbError::NotFound { .. })
    ));
    let cleanup = sipstack_db::media_pool::remove_absent(&client, &["pool-b".to_string()])
        .await
        .unwrap();
    assert!(cleanup.removed.is_empty() && cleanup.still_referenced.is_empty());
}

#[tokio::test]
async fn stop_and_start_keep_the_data() {
    let db = TestPostgres::start().await;
    let client = db.migrated_client().await;
    sipstack_db::subscriber::add(&client, "carol", "acme.example", "pw")
        .await
        .unwrap();
    drop(client);

    assert!(db.pg.is_running());
    assert!(db.pg.stop().await.unwrap(), "it was running");
    assert!(!db.pg.is_running());
    assert!(
        !db.pg.stop().await.unwrap(),
        "stopping a stopped server is fine"
    );
    assert!(!db.pg.status().await.unwrap());
    assert!(
        !db.pg.init().await.unwrap(),
        "an initialised cluster is kept"
    );
    db.pg.start().await.unwrap();
    db.pg
        .start()
        .await
        .expect("starting a running server is fine");
    assert!(db.pg.status().await.unwrap());

    // the owner's password was generated once and is reused
    let url = db.pg.ensure_database(OWNER, DATABASE).await.unwrap();
    assert_eq!(url, db.url);
    let client = db.client().await;
    let users = sipstack_db::subscriber::list(&client).await.unwrap();
    assert_eq!(users.len(), 1);
    let secret = std::fs::metadata(db.pg.owner_password_file(OWNER)).unwrap();
    assert_eq!(secret.permissions().mode() & 0o777, 0o600);
    let superuser = std::fs::metadata(db.pg.superuser_password_file()).unwrap();
    assert_eq!(superuser.permissions().mode() & 0o777, 0o600);
    assert!(db.dir.path().join("pg/data/PG_VERSION").is_file());
}

#[tokio::test]
async fn unreachable_state_directory_is_explained_when_root() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: PostgreSQL runs as this user, nothing to check");
        return;
    }
    // Like /root: the postgres user cannot enter it.
    let dir = tempfile::Builder::new()
        .prefix("sipstack-db-private-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap();
    let pg = LocalPostgres::new(dir.path().join("pg"), free_tcp_port(), PG_MAJOR);
    let err = pg
        .init()
        .await
        .expect_err("the postgres user cannot reach a 0700 directory");
    match &err {
        PostgresError::Unreachable { blocking, .. } => assert_eq!(blocking, dir.path()),
        other => panic!("unexpected error: {other}"),
    }
    assert!(
        err.to_string()
            .contains(&format!("chmod o+x {}", dir.path().display())),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// Kamailio 5.6 against the schema

/// A Kamailio started in its own process group; the whole group is stopped when dropped.
struct KamailioProcess {
    child: std::process::Child,
    log: PathBuf,
    ctl: String,
}

impl KamailioProcess {
    fn start(dir: &Path, config: &str) -> Self {
        let cfg = dir.join("kamailio.cfg");
        std::fs::write(&cfg, config).expect("write kamailio.cfg");
        let log = dir.join("kamailio.log");
        let log_file = std::fs::File::create(&log).expect("create the Kamailio log");
        let stderr = log_file.try_clone().expect("clone the log handle");
        let child = std::process::Command::new("kamailio")
            .arg("-f")
            .arg(&cfg)
            .arg("-P")
            .arg(dir.join("kamailio.pid"))
            .arg("-w")
            .arg(dir)
            .args(["-m", "64", "-M", "8", "-DD", "-E"])
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("start kamailio (apt-get install kamailio kamailio-postgres-modules)");
        KamailioProcess {
            child,
            log,
            ctl: format!("unix:{}", dir.join("ctl.sock").display()),
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs `kamcmd` against this Kamailio; `Err` carries its output on failure.
    async fn rpc(&self, args: &[&str]) -> Result<String, String> {
        let run = tokio::process::Command::new("kamcmd")
            .arg("-s")
            .arg(&self.ctl)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(10), run).await {
            Ok(Ok(out)) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                if out.status.success() && !text.starts_with("error:") {
                    Ok(text)
                } else {
                    Err(text)
                }
            }
            Ok(Err(e)) => Err(format!("kamcmd: {e}")),
            Err(_) => Err("kamcmd did not answer within 10 s".into()),
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                self.is_running(),
                "Kamailio exited during start-up:\n{}",
                self.log_text()
            );
            if self.rpc(&["core.uptime"]).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Kamailio did not answer RPC within 20 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `dialplan.translate`: (output, attributes), or `None` for no match.
    async fn translate(&self, dpid: i32, input: &str) -> Option<(String, String)> {
        // "s:" keeps kamcmd from sending digits as an integer.
        let text = match self
            .rpc(&[
                "dialplan.translate",
                &dpid.to_string(),
                &format!("s:{input}"),
            ])
            .await
        {
            Ok(text) => text,
            Err(text) if text.contains("No translation") => return None,
            Err(text) => panic!("dialplan.translate {dpid} {input}: {text}"),
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        Some((field("Output:"), field("Attributes:")))
    }
}

impl Drop for KamailioProcess {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Children left behind by the main process, or the main process itself.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn kamailio_config(sip_port: u16, ctl: &str, db_url: &str) -> String {
    // Kamailio's URL scheme is postgres://
    let db_url = db_url.replacen("postgresql://", "postgres://", 1);
    format!(
        r#"#!KAMAILIO
debug=2
log_stderror=yes
children=1
disable_tcp=yes
auto_aliases=no
listen=udp:127.0.0.1:{sip_port}
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"

loadmodule "db_postgres.so"
loadmodule "pv.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "ctl.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "dispatcher.so"
loadmodule "dialplan.so"

modparam("ctl", "binrpc", "{ctl}")
modparam("usrloc", "db_url", "{db_url}")
modparam("usrloc", "db_mode", 2)
modparam("usrloc", "timer_interval", 1)
modparam("usrloc", "use_domain", 1)
modparam("auth_db", "db_url", "{db_url}")
modparam("auth_db", "calculate_ha1", 0)
modparam("auth_db", "load_credentials", "")
modparam("dispatcher", "db_url", "{db_url}")
modparam("dialplan", "db_url", "{db_url}")
modparam("dialplan", "table_name", "sipstack_dialplan")
modparam("dialplan", "reload_delta", 1)

request_route {{
    if ($rm == "REGISTER") {{
        if (!auth_check("$fd", "subscriber", "1")) {{
            auth_challenge("$fd", "0");
            exit;
        }}
        save("location");
        exit;
    }}
    sl_send_reply("404", "Not here");
}}
"#
    )
}

fn md5_hex(text: &str) -> String {
    format!("{:x}", Md5::digest(text.as_bytes()))
}

/// REGISTERs user@domain with digest authentication; returns the final status line.
async fn register(sip_port: u16, user: &str, domain: &str, password: &str) -> String {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a SIP client socket");
    socket
        .connect(("127.0.0.1", sip_port))
        .await
        .expect("connect the SIP client socket");
    let local = socket.local_addr().expect("local address").port();
    let request = |cseq: u32, authorization: &str| {
        format!(
            "REGISTER sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{local};rport;branch=z9hG4bK-reg-{cseq}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{domain}>;tag=reg-test\r\n\
             To: <sip:{user}@{domain}>\r\n\
             Call-ID: reg-test-{local}@127.0.0.1\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{user}@127.0.0.1:{local}>\r\n\
             Expires: 300\r\n\
             {authorization}Content-Length: 0\r\n\r\n"
        )
    };
    let exchange = |message: String| {
        let socket = &socket;
        async move {
            socket
                .send(message.as_bytes())
                .await
                .expect("send REGISTER");
            let mut buf = vec![0u8; 65535];
            let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
                .await
                .expect("Kamailio answers the REGISTER within 5 s")
                .expect("receive the answer");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };

    let challenge = exchange(request(1, "")).await;
    assert!(
        challenge.starts_with("SIP/2.0 401"),
        "expected a challenge:\n{challenge}"
    );
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no nonce in:\n{challenge}"));
    let realm = domain;
    let uri = format!("sip:{domain}");
    let ha1 = sipstack_db::subscriber::ha1(user, realm, password);
    let ha2 = md5_hex(&format!("REGISTER:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
    let authorization = format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=MD5\r\n"
    );
    let answer = exchange(request(2, &authorization)).await;
    answer.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn kamailio_accepts_the_schema_and_routes_by_the_dialplan_view() {
    let db = TestPostgres::start().await;
    let client = db.migrated_client().await;

    // data for every table Kamailio loads
    sipstack_db::subscriber::add(&client, "alice", "acme.example", "wonderland")
        .await
        .unwrap();
    let member = |d: &str| Member {
        destination: d.into(),
        weight: 50,
        priority: 0,
        description: "pstn".into(),
    };
    sipstack_db::dispatcher::replace_set(
        &client,
        10,
        &[member("sip:127.0.0.1:5090"), member("sip:127.0.0.1:5091")],
    )
    .await
    .unwrap();
    sipstack_db::media_pool::upsert(&client, "pstn", 10, Algorithm::RoundRobin)
        .await
        .unwrap();
    sipstack_db::media_pool::upsert(&client, "media", 20, Algorithm::Weighted)
        .await
        .unwrap();
    let routes = [
        (
            "intl",
            10,
            MatchKind::Prefix,
            "+44",
            None,
            Target::Pool("pstn".into()),
        ),
        (
            "star",
            20,
            MatchKind::Prefix,
            "*#9.",
            None,
            Target::Uri("sip:star@10.0.0.1:5080;transport=tcp".into()),
        ),
        (
            "emergency",
            500,
            MatchKind::Exact,
            "112",
            None,
            Target::Pool("media".into()),
        ),
        (
            "block-1",
            100,
            MatchKind::Prefix,
            "1",
            None,
            Target::Reject {
                code: 403,
                reason: "Forbidden Prefix".into(),
            },
        ),
        (
            "four-digits",
            200,
            MatchKind::Regex,
            r"^\d{4}$",
            None,
            Target::User,
        ),
        (
            "acme-2",
            5,
            MatchKind::Prefix,
            "2",
            Some("acme.example"),
            Target::Pool("media".into()),
        ),
        (
            "beta-2000",
            5,
            MatchKind::Exact,
            "2000",
            Some("Beta.Example"),
            Target::Reject {
                code: 486,
                reason: "Busy Here".into(),
            },
        ),
    ];
    let mut ids = BTreeMap::new();
    for (name, priority, match_kind, value, domain, target) in routes {
        let stored = route::add(
            &client,
            &NewRoute {
                name: name.into(),
                priority,
                match_kind,
                match_value: value.into(),
                source_domain: domain.map(str::to_string),
                source: Default::default(),
                target,
                service: None,
                description: String::new(),
            },
        )
        .await
        .unwrap();
        ids.insert(name, stored.id);
    }

    // the view's prefix escaping is the one the Rust side documents
    let rules = route::dialplan_rules(&client).await.unwrap();
    for (name, prefix) in [("intl", "+44"), ("star", "*#9.")] {
        let attrs_prefix = format!("id={};", ids[name]);
        let rule = rules
            .iter()
            .find(|r| r.dpid == route::DEFAULT_DPID && r.attrs.starts_with(&attrs_prefix))
            .unwrap();
        assert_eq!(rule.match_exp, route::prefix_match_exp(prefix));
        assert_eq!((rule.match_op, rule.match_len), (1, 0));
    }

    let dir = db.dir.path().join("kamailio");
    std::fs::create_dir_all(&dir).unwrap();
    let sip_port = free_udp_port();
    let ctl = format!("unix:{}", dir.join("ctl.sock").display());
    let mut kamailio = KamailioProcess::start(&dir, &kamailio_config(sip_port, &ctl, &db.url));
    kamailio.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        kamailio.is_running(),
        "Kamailio stopped:\n{}",
        kamailio.log_text()
    );
    let log = kamailio.log_text();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("CRITICAL") || l.contains("version"))
        .collect();
    assert!(
        problems.is_empty(),
        "Kamailio complained:\n{}",
        problems.join("\n")
    );

    // dispatcher loaded set 10 from the table
    let sets = kamailio
        .rpc(&["dispatcher.list"])
        .await
        .expect("dispatcher.list");
    assert!(
        sets.contains("sip:127.0.0.1:5090") && sets.contains("sip:127.0.0.1:5091"),
        "{sets}"
    );

    // the source-domain map: each domain with routes gets its own dialplan id
    let acme = kamailio
        .translate(route::DOMAIN_MAP_DPID, "acme.example")
        .await
        .expect("acme is mapped")
        .1;
    let beta = kamailio
        .translate(route::DOMAIN_MAP_DPID, "beta.example")
        .await
        .expect("beta is mapped (lower-cased)")
        .1;
    assert_eq!((acme.as_str(), beta.as_str()), ("1001", "1002"));
    assert_eq!(
        kamailio
            .translate(route::DOMAIN_MAP_DPID, "other.example")
            .await,
        None
    );

    let attrs = |name: &str, rest: &str| format!("id={};{rest}", ids[name]);
    // (dialplan id, input, expected (output, attributes) or no match)
    type Expectation<'a> = (i32, &'a str, Option<(&'a str, String)>);
    let expectations: Vec<Expectation> = vec![
        // prefix with an escaped '+'
        (2, "+441234", Some(("", attrs("intl", "t=pool;s=10")))),
        // escaped '*' and '.', literal '#'; the URI is the output
        (
            2,
            "*#9.1",
            Some((
                "sip:star@10.0.0.1:5080;transport=tcp",
                attrs("star", "t=uri"),
            )),
        ),
        // an unescaped '.' would match any character here
        (2, "*#9x1", None),
        // the exact route has priority 500: the prefix route with 100 wins,
        // although the exact rule's length matches the input
        (
            2,
            "112",
            Some(("Forbidden Prefix", attrs("block-1", "t=reject;c=403"))),
        ),
        (2, "5555", Some(("", attrs("four-digits", "t=user")))),
        (2, "55555", None),
        (2, "2000", Some(("", attrs("four-digits", "t=user")))),
        // acme's own route comes first, then the routes for everyone
        (1001, "2000", Some(("", attrs("acme-2", "t=pool;s=20")))),
        (1001, "+4420", Some(("", attrs("intl", "t=pool;s=10")))),
        (
            1002,
            "2000",
            Some(("Busy Here", attrs("beta-2000", "t=reject;c=486"))),
        ),
        (1002, "2001", Some(("", attrs("four-digits", "t=user")))),
    ];
    for (dpid, input, expected) in expectations {
        let got = kamailio.translate(dpid, input).await;
        let expected = expected.map(|(o, a)| (o.to_string(), a));
        assert_eq!(got, expected, "dialplan {dpid}, input {input:?}");
    }

    // the rules are loaded in priority order
    let dump = kamailio
        .rpc(&["dialplan.dump", "2"])
        .await
        .expect("dialplan.dump");
    let order: Vec<&str> = dump
        .lines()
        .filter_map(|l| l.trim().strip_prefix("MATCHEXP:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        order,
        [r"^\+44", r"^\*#9\.", "^1", r"^\d{4}$", "112"],
        "{dump}"
    );

    // a route added later is used after a reload
    route::add(
        &client,
        &NewRoute {
            name: "short-112".into(),
            priority: 1,
            match_kind: MatchKind::Exact,
            match_value: "112".into(),
            source_domain: None,
            source: Default::default(),
            target: Target::Pool("media".into()),
            service: None,
            description: "emergency first".into(),
        },
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match kamailio.rpc(&["dialplan.reload"]).await {
            Ok(_) => break,
            // reload_delta: one reload per second at most
            Err(text) if text.contains("ongoing reload") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(text) => panic!("dialplan.reload: {text}"),
        }
    }
    let (_, got) = kamailio.translate(2, "112").await.expect("112 is routed");
    assert!(
        got.starts_with("id=") && got.ends_with(";t=pool;s=20"),
        "{got}"
    );

    // auth_db checks the digest against our ha1; usrloc writes the contact back to `location`
    let status = register(sip_port, "alice", "acme.example", "wonderland").await;
    assert!(
        status.starts_with("SIP/2.0 200"),
        "REGISTER answered {status}\n{}",
        kamailio.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = client
            .query(
                "SELECT contact FROM location WHERE username = 'alice' AND domain = 'acme.example'",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            assert!(row.get::<_, String>(0).starts_with("sip:alice@127.0.0.1:"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "usrloc did not write the contact within 10 s:\n{}",
            kamailio.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wrong = register(sip_port, "alice", "acme.example", "wrong").await;
    assert!(
        wrong.starts_with("SIP/2.0 401"),
        "a wrong password is refused, got {wrong}"
    );

    assert!(
        kamailio.is_running(),
        "Kamailio stopped:\n{}",
        kamailio.log_text()
    );
    let log = kamailio.log_text();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("CRITICAL"))
        .collect();
    assert!(
        problems.is_empty(),
        "Kamailio complained:\n{}",
        problems.join("\n")
    );
}
