//! The client against a real FreeSWITCH: a private instance with a minimal
//! configuration in a temporary directory, its event socket on a free port.
//!
//! Runs when `freeswitch` is on PATH. Without it the test is skipped, except in
//! CI (`CI=true`), where it fails: there FreeSWITCH is part of the environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sipstack_esl::{EslClient, EslError, EslSession, Event, EventFormat};

const PASSWORD: &str = "Test1234";
const T: Duration = Duration::from_secs(5);

/// A running FreeSWITCH; stopped (SIGTERM, then SIGKILL) when dropped.
struct FreeSwitch {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl FreeSwitch {
    fn start(program: &Path) -> FreeSwitch {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        write_config(&dir.path().join("conf"), port);
        let sub = |name: &str| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        let mut cmd = Command::new(program);
        cmd.arg("-nonat").arg("-nf").arg("-nc");
        for (flag, name) in [
            ("-conf", "conf"),
            ("-log", "log"),
            ("-db", "db"),
            ("-run", "run"),
            ("-temp", "temp"),
            ("-storage", "storage"),
            ("-cache", "cache"),
        ] {
            cmd.arg(flag).arg(sub(name));
        }
        let out = std::fs::File::create(dir.path().join("stdout.txt")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
        // -nf keeps it in the foreground (-nc alone would fork into the
        // background), so this child is FreeSWITCH itself.
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap();
        FreeSwitch { child, port, dir }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The end of FreeSWITCH's log and output, for failure messages.
    fn logs(&self) -> String {
        let mut out = format!("FreeSWITCH in {}:\n", self.dir.path().display());
        for name in ["log/freeswitch.log", "stdout.txt", "stderr.txt"] {
            let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!("--- {name}\n{tail}\n"));
        }
        out
    }

    /// Waits until the event socket accepts the password.
    async fn wait_ready(&mut self, within: Duration) -> EslClient {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("FreeSWITCH exited with {status}\n{}", self.logs());
            }
            match EslClient::connect(&self.addr(), PASSWORD, Duration::from_secs(1)).await {
                Ok(client) => return client,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "event socket not ready within {within:?}: {e}\n{}",
                        self.logs()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for FreeSwitch {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let termed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while termed && Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    // Released at once: a small race with other programs, acceptable in a test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// The configuration, in the layout of the project's own (templates/freeswitch):
/// freeswitch.xml including autoload_configs/*.xml.
fn write_config(conf: &Path, port: u16) {
    let autoload = conf.join("autoload_configs");
    std::fs::create_dir_all(&autoload).unwrap();
    std::fs::write(
        conf.join("freeswitch.xml"),
        r#"<?xml version="1.0"?>
<document type="freeswitch/xml">
  <section name="configuration" description="Modules">
    <X-PRE-PROCESS cmd="include" data="autoload_configs/*.xml"/>
  </section>
</document>
"#,
    )
    .unwrap();
    let files = [
        (
            "modules.conf.xml",
            r#"<configuration name="modules.conf" description="Modules">
  <modules>
    <load module="mod_console"/>
    <load module="mod_logfile"/>
    <load module="mod_event_socket"/>
    <load module="mod_commands"/>
  </modules>
</configuration>
"#
            .to_string(),
        ),
        (
            "event_socket.conf.xml",
            format!(
                r#"<configuration name="event_socket.conf" description="Event socket (ESL)">
  <settings>
    <param name="nat-map" value="false"/>
    <param name="listen-ip" value="127.0.0.1"/>
    <param name="listen-port" value="{port}"/>
    <param name="password" value="{PASSWORD}"/>
  </settings>
</configuration>
"#
            ),
        ),
        (
            "switch.conf.xml",
            r#"<configuration name="switch.conf" description="Core">
  <settings>
    <param name="colorize-console" value="false"/>
    <param name="dump-cores" value="no"/>
    <param name="loglevel" value="info"/>
    <param name="max-sessions" value="10"/>
    <param name="rtp-start-port" value="40000"/>
    <param name="rtp-end-port" value="40100"/>
  </settings>
</configuration>
"#
            .to_string(),
        ),
        (
            "console.conf.xml",
            r#"<configuration name="console.conf" description="Console logger">
  <mappings>
    <map name="all" value="console,debug,info,notice,warning,err,crit,alert"/>
  </mappings>
  <settings>
    <param name="colorize" value="false"/>
    <param name="loglevel" value="info"/>
  </settings>
</configuration>
"#
            .to_string(),
        ),
        (
            "logfile.conf.xml",
            r#"<configuration name="logfile.conf" description="The log, read when the test fails">
  <profiles>
    <profile name="default">
      <settings>
        <param name="rollover" value="0"/>
      </settings>
      <mappings>
        <map name="all" value="info,notice,warning,err,crit,alert"/>
      </mappings>
    </profile>
  </profiles>
</configuration>
"#
            .to_string(),
        ),
    ];
    for (name, text) in files {
        std::fs::write(autoload.join(name), text).unwrap();
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The next event for that job, skipping any other.
async fn job_event(client: &EslClient, job: &str) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .unwrap_or_else(|_| panic!("no BACKGROUND_JOB event for {job}"))
            .expect("connection ended while waiting for an event");
        if event.job_uuid() == Some(job) {
            return event;
        }
    }
}

#[tokio::test]
async fn against_a_real_freeswitch() {
    let Some(program) = find_on_path("freeswitch") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("FreeSWITCH is required in CI: `freeswitch` is not on PATH");
        }
        eprintln!("skipped: freeswitch not on PATH");
        return;
    };
    let mut fs = FreeSwitch::start(&program);
    let started = Instant::now();
    let esl = fs.wait_ready(Duration::from_secs(30)).await;
    eprintln!("event socket ready after {:?}", started.elapsed());
    let addr = fs.addr();

    // api: multi-line output, as sent (with its newline).
    let status = esl.api("status").await.unwrap();
    assert!(status.starts_with("UP "), "{status:?}");
    assert!(status.lines().count() > 3, "{status:?}");
    assert!(status.contains("is ready"), "{status:?}");
    let version = esl.api("version").await.unwrap();
    assert!(version.starts_with("FreeSWITCH Version"), "{version:?}");
    match esl.api("no_such_command").await {
        Err(EslError::Command(text)) => {
            assert!(text.starts_with("-ERR no_such_command"), "{text:?}")
        }
        other => panic!("{other:?}"),
    }

    // A wrong password.
    match EslClient::connect(&addr, "not-the-password", T).await {
        Err(EslError::AuthFailed(a)) => assert_eq!(a, addr),
        other => panic!("{:?}", other.map(|_| ())),
    }

    // A line break is refused, and the connection still works.
    assert!(matches!(
        esl.api("status\n\napi fsctl shutdown").await,
        Err(EslError::Protocol(_))
    ));
    assert!(esl.api("status").await.unwrap().starts_with("UP "));

    // bgapi, the output in a plain event (header values URL-decoded).
    esl.subscribe(EventFormat::Plain, &["BACKGROUND_JOB"])
        .await
        .unwrap();
    let job = esl.bgapi("status").await.unwrap();
    let event = job_event(&esl, &job).await;
    assert_eq!(event.name(), Some("BACKGROUND_JOB"));
    assert_eq!(event.get("Job-Command"), Some("status"));
    assert!(event.body().unwrap().starts_with("UP "), "{event:?}");
    let date = event.get("Event-Date-Local").unwrap();
    assert!(date.contains(' ') && !date.contains('%'), "{date:?}");

    // The same in JSON.
    esl.subscribe(EventFormat::Json, &["BACKGROUND_JOB"])
        .await
        .unwrap();
    let job = esl.bgapi("version").await.unwrap();
    let event = job_event(&esl, &job).await;
    assert_eq!(event.get("Job-Command"), Some("version"));
    assert_eq!(event.body(), Some(version.as_str()));
    assert!(event.get("Event-Date-Local").unwrap().contains(' '));

    // Only unknown event names: FreeSWITCH refuses.
    match esl.subscribe(EventFormat::Plain, &["NO_SUCH_EVENT"]).await {
        Err(EslError::Command(text)) => assert!(text.starts_with("-ERR"), "{text:?}"),
        other => panic!("{other:?}"),
    }

    // Many callers at once on one connection, each with its own answer.
    let esl = Arc::new(esl);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let esl = esl.clone();
            tokio::spawn(async move { (i, esl.api(&format!("echo caller-{i}")).await.unwrap()) })
        })
        .collect();
    for task in tasks {
        let (i, answer) = task.await.unwrap();
        assert_eq!(answer.trim_end(), format!("caller-{i}"));
    }

    // Draining a node: pause inbound calls, and check.
    assert_eq!(esl.api("fsctl pause inbound").await.unwrap().trim(), "+OK");
    assert_eq!(
        esl.api("fsctl pause_check inbound").await.unwrap().trim(),
        "true"
    );
    assert_eq!(esl.api("fsctl resume inbound").await.unwrap().trim(), "+OK");
    assert_eq!(
        esl.api("fsctl pause_check inbound").await.unwrap().trim(),
        "false"
    );

    // exit: the server says goodbye and the client sees the end.
    esl.close().await;
    assert!(esl.is_closed());
    assert!(esl.next_event().await.is_none());
    assert!(matches!(esl.api("status").await, Err(EslError::Closed(_))));

    // A session: connects on first use, again after its connection ended,
    // subscribed again each time.
    let session = EslSession::new(&addr, PASSWORD, T);
    session
        .subscribe(EventFormat::Json, &["BACKGROUND_JOB"])
        .await
        .unwrap();
    assert!(session.api("status").await.unwrap().starts_with("UP "));
    session.client().await.unwrap().close().await;
    assert!(!session.is_connected());
    assert!(session.api("status").await.unwrap().starts_with("UP "));
    let job = session.bgapi("version").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), session.next_event())
        .await
        .expect("no event on the new connection")
        .unwrap();
    assert_eq!(event.job_uuid(), Some(job.as_str()));
}
