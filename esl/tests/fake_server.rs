//! The client against a fake event socket that speaks the protocol as FreeSWITCH
//! does: greeting, auth, replies in order, events in between, disconnects.

use std::time::Duration;

use sipstack_esl::{EslClient, EslError, EslSession, EventFormat};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PASSWORD: &str = "Secret42";

/// One fake server connection: reads commands (up to the blank line), and lets
/// the test script the answers. Commands seen are reported on `seen`.
async fn serve(
    stream: TcpStream,
    seen: mpsc::UnboundedSender<String>,
    mut answer: impl FnMut(&str) -> Vec<String> + Send,
) {
    // Small scripted writes go out at once, as FreeSWITCH's do.
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"Content-Type: auth/request\n\n").await;
    let mut command = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        if !line.is_empty() {
            command.push_str(&line);
            continue;
        }
        if command.is_empty() {
            continue;
        }
        let _ = seen.send(command.clone());
        for chunk in answer(&command) {
            if chunk == "CLOSE" {
                return;
            }
            if let Some(ms) = chunk.strip_prefix("SLEEP:") {
                tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                continue;
            }
            let _ = write.write_all(chunk.as_bytes()).await;
        }
        command.clear();
    }
    // The client closed its side.
    let _ = seen.send("<eof>".to_string());
}

fn reply(text: &str) -> String {
    format!("Content-Type: command/reply\nReply-Text: {text}\n\n")
}

fn api_response(body: &str) -> String {
    format!(
        "Content-Type: api/response\nContent-Length: {}\n\n{body}",
        body.len()
    )
}

fn plain_event(name: &str, extra: &str, body: Option<&str>) -> String {
    let mut inner = format!("Event-Name: {name}\n{extra}");
    if let Some(b) = body {
        inner.push_str(&format!("Content-Length: {}\n\n{b}", b.len()));
    } else {
        inner.push('\n');
    }
    format!(
        "Content-Type: text/event-plain\nContent-Length: {}\n\n{inner}",
        inner.len()
    )
}

/// The default behaviour of a FreeSWITCH with the right password.
fn freeswitch_like(command: &str) -> Vec<String> {
    if let Some(p) = command.strip_prefix("auth ") {
        return if p == PASSWORD {
            vec![reply("+OK accepted")]
        } else {
            vec![
                reply("-ERR invalid"),
                "Content-Type: text/disconnect-notice\nContent-Length: 0\n\n".into(),
                "CLOSE".into(),
            ]
        };
    }
    if let Some(cmd) = command.strip_prefix("api ") {
        return match cmd {
            "status" => vec![api_response("UP 0 years\n\n2 session(s) - peak 3\n")],
            "silence" => vec![],
            "bad" => vec![api_response("-ERR no such command\n")],
            // an event arrives before the reply
            "busy" => vec![
                plain_event("HEARTBEAT", "Up-Time: 0%20years\n", None),
                api_response("done\n"),
            ],
            other => vec![api_response(&format!("echo {other}\n"))],
        };
    }
    if let Some(cmd) = command.strip_prefix("bgapi ") {
        return vec![
            format!(
                "Content-Type: command/reply\nReply-Text: +OK Job-UUID: j-1\nJob-UUID: j-1\n\n"
            ),
            plain_event(
                "BACKGROUND_JOB",
                &format!("Job-UUID: j-1\nJob-Command: {}\n", cmd.replace(' ', "%20")),
                Some("+OK result\nsecond line\n"),
            ),
        ];
    }
    if command.starts_with("event ") {
        return vec![reply("+OK event listener enabled plain")];
    }
    vec![reply("-ERR command not found")]
}

/// A fake server accepting connections one after another, each served by `answer`.
async fn fake(answer: fn(&str) -> Vec<String>) -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, tx.clone(), answer));
        }
    });
    (addr, rx)
}

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn auth_and_a_multi_line_api_body() {
    let (addr, _) = fake(freeswitch_like).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    assert_eq!(
        c.api("status").await.unwrap(),
        "UP 0 years\n\n2 session(s) - peak 3\n"
    );
    match c.api("bad").await {
        Err(EslError::Command(text)) => assert_eq!(text, "-ERR no such command"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused() {
    let (addr, _) = fake(freeswitch_like).await;
    match EslClient::connect(&addr, "wrong", T).await {
        Err(EslError::AuthFailed(_)) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn an_event_before_a_reply_goes_to_the_events_and_the_reply_to_its_caller() {
    let (addr, _) = fake(freeswitch_like).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    assert_eq!(c.api("busy").await.unwrap(), "done\n");
    let e = tokio::time::timeout(T, c.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.name(), Some("HEARTBEAT"));
    assert_eq!(e.get("Up-Time"), Some("0 years"));
}

#[tokio::test]
async fn bgapi_output_comes_as_a_background_job_event() {
    let (addr, _) = fake(freeswitch_like).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    c.subscribe(EventFormat::Plain, &["BACKGROUND_JOB"])
        .await
        .unwrap();
    let job = c.bgapi("status now").await.unwrap();
    assert_eq!(job, "j-1");
    let e = tokio::time::timeout(T, c.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.get("Job-UUID"), Some("j-1"));
    assert_eq!(e.get("Job-Command"), Some("status now"));
    assert_eq!(e.body(), Some("+OK result\nsecond line\n"));
}

#[tokio::test]
async fn concurrent_commands_get_their_own_replies() {
    let (addr, _) = fake(freeswitch_like).await;
    let c = std::sync::Arc::new(EslClient::connect(&addr, PASSWORD, T).await.unwrap());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            (i, c.api(&format!("x{i}")).await.unwrap())
        }));
    }
    for t in tasks {
        let (i, answer) = t.await.unwrap();
        assert_eq!(answer, format!("echo x{i}\n"));
    }
}

#[tokio::test]
async fn a_line_break_never_reaches_the_socket() {
    let (addr, mut seen) = fake(freeswitch_like).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    for bad in ["status\n\napi fsctl shutdown", "status\rx"] {
        assert!(
            matches!(c.api(bad).await, Err(EslError::Protocol(_))),
            "{bad:?}"
        );
    }
    assert!(matches!(
        EslClient::connect(&addr, "pw\n\napi x", T).await,
        Err(EslError::Protocol(_))
    ));
    c.api("last").await.unwrap();
    let mut commands = Vec::new();
    while let Ok(cmd) = seen.try_recv() {
        commands.push(cmd);
    }
    assert_eq!(
        commands,
        vec![format!("auth {PASSWORD}"), "api last".to_string()]
    );
}

#[tokio::test]
async fn no_reply_is_a_timeout_and_a_disconnect_closes_everything() {
    let (addr, _) = fake(freeswitch_like).await;
    let c = EslClient::connect(&addr, PASSWORD, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(matches!(c.api("silence").await, Err(EslError::Timeout(..))));

    fn closing(command: &str) -> Vec<String> {
        if command.starts_with("auth ") {
            return freeswitch_like(command);
        }
        vec!["CLOSE".into()]
    }
    let (addr, _) = fake(closing).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    assert!(matches!(c.api("status").await, Err(EslError::Closed(_))));
    assert!(c.next_event().await.is_none());
    assert!(c.is_closed());
}

#[tokio::test]
async fn a_session_connects_again_after_the_connection_broke() {
    fn once(command: &str) -> Vec<String> {
        // every connection answers one api command, then hangs up
        let mut out = freeswitch_like(command);
        if command.starts_with("api ") {
            out.push("CLOSE".into());
        }
        out
    }
    let (addr, mut seen) = fake(once).await;
    let s = EslSession::new(addr, PASSWORD, T);
    for i in 0..3 {
        assert_eq!(
            s.api(&format!("n{i}")).await.unwrap(),
            format!("echo n{i}\n")
        );
        // let the server's close reach the client
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut auths = 0;
    while let Ok(cmd) = seen.try_recv() {
        auths += usize::from(cmd.starts_with("auth "));
    }
    assert_eq!(auths, 3, "one connection per command");
}

// ---- Timing, framing in odd pieces, the event queue, closing, re-subscribing ----

fn disconnect_notice() -> String {
    let body = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n";
    format!(
        "Content-Type: text/disconnect-notice\nContent-Length: {}\n\n{body}",
        body.len()
    )
}

fn json_event(fields: serde_json::Value) -> String {
    let body = fields.to_string();
    format!(
        "Content-Type: text/event-json\nContent-Length: {}\n\n{body}",
        body.len()
    )
}

/// [`freeswitch_like`] plus commands whose answers test one thing each.
fn scripted(command: &str) -> Vec<String> {
    match command {
        // The answer comes after the client gave up.
        "api slow" => vec!["SLEEP:400".into(), api_response("slow\n")],
        // An event and the reply, written a few bytes at a time.
        "api pieces" => {
            let all = plain_event(
                "CUSTOM",
                "Event-Subclass: test%3A%3Apieces\n",
                Some("a\n\nb"),
            ) + &api_response("in pieces\n\nstill the body\n");
            let bytes = all.as_bytes();
            let mut out = Vec::new();
            for (i, chunk) in bytes.chunks(3).enumerate() {
                out.push(String::from_utf8(chunk.to_vec()).unwrap());
                if i % 10 == 0 {
                    out.push("SLEEP:1".into());
                }
            }
            out
        }
        // Two events and the reply in one write.
        "api joined" => vec![format!(
            "{}{}{}",
            plain_event("HEARTBEAT", "Event-Sequence: 1\n", None),
            json_event(serde_json::json!({"Event-Name": "HEARTBEAT", "Event-Sequence": "2"})),
            api_response("joined\n")
        )],
        "api flood" => {
            let mut out: Vec<String> = (1..=5)
                .map(|i| plain_event("HEARTBEAT", &format!("Event-Sequence: {i}\n"), None))
                .collect();
            out.push(api_response("flooded\n"));
            out
        }
        // The server says goodbye but keeps the socket open a while: the notice
        // alone must end the connection.
        "api bye" => vec![
            plain_event("HEARTBEAT", "Event-Sequence: 9\n", None),
            disconnect_notice(),
            "SLEEP:1000".into(),
            "CLOSE".into(),
        ],
        "api usage" => vec![api_response("-USAGE: <uuid>\n")],
        "bgapi json" => vec![
            "Content-Type: command/reply\nReply-Text: +OK Job-UUID: j-2\nJob-UUID: j-2\n\n".into(),
            json_event(serde_json::json!({
                "Event-Name": "BACKGROUND_JOB",
                "Job-UUID": "j-2",
                "Job-Command": "json",
                "FreeSWITCH-IPv6": "fd00::2",
                "Content-Length": "14",
                "_body": "line 1\nline 2\n",
            })),
        ],
        "event json BACKGROUND_JOB" => vec![reply("+OK event listener enabled json")],
        "event plain NOSUCH" => vec![reply("-ERR no keywords supplied")],
        "exit" => vec![reply("+OK bye"), disconnect_notice(), "CLOSE".into()],
        _ => {
            // `api ev-N`: an event, then the reply, for the concurrency test.
            if let Some(n) = command.strip_prefix("api ev-") {
                return vec![
                    plain_event("CUSTOM", &format!("Seq: {n}\n"), None),
                    api_response(&format!("reply {n}\n")),
                ];
            }
            freeswitch_like(command)
        }
    }
}

fn drain(seen: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(cmd) = seen.try_recv() {
        out.push(cmd);
    }
    out
}

#[tokio::test]
async fn a_late_reply_after_a_timeout_does_not_go_to_the_next_call() {
    let (addr, _) = fake(scripted).await;
    let c = EslClient::connect(&addr, PASSWORD, Duration::from_millis(300))
        .await
        .unwrap();
    match c.api("slow").await {
        Err(EslError::Timeout(a, d)) => {
            assert_eq!(a, addr);
            assert_eq!(d, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }
    // "slow" answers at 400 ms, then this one: it must get its own reply.
    assert_eq!(
        c.api("status").await.unwrap(),
        "UP 0 years\n\n2 session(s) - peak 3\n"
    );
    assert!(!c.is_closed());
}

#[tokio::test]
async fn messages_in_small_pieces_and_many_in_one_write() {
    let (addr, _) = fake(scripted).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    assert_eq!(
        c.api("pieces").await.unwrap(),
        "in pieces\n\nstill the body\n"
    );
    let e = c.try_next_event().expect("the event came before the reply");
    assert_eq!(e.subclass(), Some("test::pieces"));
    assert_eq!(e.body(), Some("a\n\nb"));

    assert_eq!(c.api("joined").await.unwrap(), "joined\n");
    let seqs: Vec<String> = std::iter::from_fn(|| c.try_next_event())
        .map(|e| e.get("Event-Sequence").unwrap().to_string())
        .collect();
    assert_eq!(seqs, ["1", "2"], "a plain and a JSON event, in order");
}

#[tokio::test]
async fn json_events_carry_their_body() {
    let (addr, mut seen) = fake(scripted).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    c.subscribe(EventFormat::Json, &["BACKGROUND_JOB"])
        .await
        .unwrap();
    assert_eq!(c.bgapi("json").await.unwrap(), "j-2");
    let e = tokio::time::timeout(T, c.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.name(), Some("BACKGROUND_JOB"));
    assert_eq!(e.job_uuid(), Some("j-2"));
    assert_eq!(e.get("FreeSWITCH-IPv6"), Some("fd00::2"));
    assert_eq!(e.body(), Some("line 1\nline 2\n"));
    assert_eq!(
        drain(&mut seen),
        [
            format!("auth {PASSWORD}"),
            "event json BACKGROUND_JOB".into(),
            "bgapi json".into()
        ]
    );
}

#[tokio::test]
async fn refusals_come_back_as_command_errors() {
    let (addr, mut seen) = fake(scripted).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    match c.api("usage").await {
        Err(EslError::Command(t)) => assert_eq!(t, "-USAGE: <uuid>"),
        other => panic!("{other:?}"),
    }
    match c.subscribe(EventFormat::Plain, &["NOSUCH"]).await {
        Err(EslError::Command(t)) => assert_eq!(t, "-ERR no keywords supplied"),
        other => panic!("{other:?}"),
    }
    // Refused here, never sent: no names, a name with a space or a line break.
    for names in [&[][..], &["A B"][..], &["A\n\napi x"][..], &[""][..]] {
        assert!(
            matches!(
                c.subscribe(EventFormat::Plain, names).await,
                Err(EslError::Protocol(_))
            ),
            "{names:?}"
        );
    }
    assert!(matches!(c.bgapi("x\ny").await, Err(EslError::Protocol(_))));
    assert!(matches!(c.command("").await, Err(EslError::Protocol(_))));
    let sent = drain(&mut seen);
    assert_eq!(
        sent,
        [
            format!("auth {PASSWORD}"),
            "api usage".into(),
            "event plain NOSUCH".into()
        ]
    );
}

#[tokio::test]
async fn concurrent_commands_with_events_between_the_replies() {
    let (addr, _) = fake(scripted).await;
    let c = std::sync::Arc::new(EslClient::connect(&addr, PASSWORD, T).await.unwrap());
    let tasks: Vec<_> = (0..25)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { (i, c.api(&format!("ev-{i}")).await.unwrap()) })
        })
        .collect();
    for t in tasks {
        let (i, answer) = t.await.unwrap();
        assert_eq!(answer, format!("reply {i}\n"));
    }
    let mut seqs: Vec<u32> = std::iter::from_fn(|| c.try_next_event())
        .map(|e| e.get("Seq").unwrap().parse().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, (0..25).collect::<Vec<_>>());
    assert_eq!(c.dropped_events(), 0);
}

#[tokio::test]
async fn a_full_event_queue_drops_the_oldest_events() {
    let (addr, _) = fake(scripted).await;
    let options = sipstack_esl::EslOptions {
        timeout: T,
        event_capacity: 2,
        user: None,
    };
    let c = EslClient::connect_with(&addr, PASSWORD, options)
        .await
        .unwrap();
    assert_eq!(c.api("flood").await.unwrap(), "flooded\n");
    let seqs: Vec<String> = std::iter::from_fn(|| c.try_next_event())
        .map(|e| e.get("Event-Sequence").unwrap().to_string())
        .collect();
    assert_eq!(seqs, ["4", "5"]);
    assert_eq!(c.dropped_events(), 3);
}

#[tokio::test]
async fn a_disconnect_notice_ends_the_connection_after_the_events_before_it() {
    let (addr, _) = fake(scripted).await;
    let c = EslClient::connect(&addr, PASSWORD, Duration::from_secs(5))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(matches!(c.api("bye").await, Err(EslError::Closed(_))));
    // The server keeps the socket open for a second: the notice itself closed it.
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(c.is_closed());
    let e = c.next_event().await.expect("the event before the notice");
    assert_eq!(e.get("Event-Sequence"), Some("9"));
    assert!(c.next_event().await.is_none());
    assert!(matches!(c.api("status").await, Err(EslError::Closed(_))));
}

#[tokio::test]
async fn a_waiting_next_event_wakes_up_at_the_end() {
    fn closing_on_api(command: &str) -> Vec<String> {
        if command.starts_with("api ") {
            return vec!["SLEEP:100".into(), "CLOSE".into()];
        }
        freeswitch_like(command)
    }
    let (addr, _) = fake(closing_on_api).await;
    let c = std::sync::Arc::new(EslClient::connect(&addr, PASSWORD, T).await.unwrap());
    let waiter = tokio::spawn({
        let c = c.clone();
        async move { c.next_event().await }
    });
    assert!(matches!(c.api("status").await, Err(EslError::Closed(_))));
    let got = tokio::time::timeout(T, waiter).await.unwrap().unwrap();
    assert!(got.is_none());
}

#[tokio::test]
async fn dropping_or_closing_the_client_closes_the_socket() {
    let (addr, mut seen) = fake(scripted).await;
    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    drop(c);
    let got = tokio::time::timeout(T, async {
        loop {
            if seen.recv().await.unwrap() == "<eof>" {
                break;
            }
        }
    })
    .await;
    assert!(
        got.is_ok(),
        "the server never saw the end of the connection"
    );

    let c = EslClient::connect(&addr, PASSWORD, T).await.unwrap();
    c.close().await;
    assert!(c.is_closed());
    assert!(drain(&mut seen).contains(&"exit".to_string()));
}

#[tokio::test]
async fn a_session_subscribes_again_on_each_new_connection() {
    fn once(command: &str) -> Vec<String> {
        // every connection answers one api command, then hangs up
        let mut out = freeswitch_like(command);
        if command.starts_with("api ") {
            out.push("CLOSE".into());
        }
        out
    }
    let (addr, mut seen) = fake(once).await;
    let s = EslSession::new(addr, PASSWORD, T)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50));
    s.subscribe(EventFormat::Plain, &["BACKGROUND_JOB"])
        .await
        .unwrap();
    // The same subscription twice is kept once.
    s.subscribe(EventFormat::Plain, &["BACKGROUND_JOB"])
        .await
        .unwrap();
    assert_eq!(s.bgapi("status").await.unwrap(), "j-1");
    assert_eq!(s.next_event().await.unwrap().job_uuid(), Some("j-1"));
    assert_eq!(s.api("a").await.unwrap(), "echo a\n");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A new connection: subscribed again before the command, and its events come.
    assert_eq!(s.api("b").await.unwrap(), "echo b\n");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(s.bgapi("status").await.unwrap(), "j-1");
    let e = tokio::time::timeout(T, s.next_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.job_uuid(), Some("j-1"));

    let sub = "event plain BACKGROUND_JOB".to_string();
    let auth = format!("auth {PASSWORD}");
    assert_eq!(
        drain(&mut seen),
        [
            auth.clone(),
            sub.clone(),
            sub.clone(),
            "bgapi status".into(),
            "api a".into(),
            auth.clone(),
            sub.clone(),
            "api b".into(),
            auth,
            sub,
            "bgapi status".into(),
        ]
    );
}

#[tokio::test]
async fn a_session_retries_a_lost_call_once_only() {
    fn hang_up(command: &str) -> Vec<String> {
        if command.starts_with("api ") {
            return vec!["CLOSE".into()];
        }
        freeswitch_like(command)
    }
    let (addr, mut seen) = fake(hang_up).await;
    let s = EslSession::new(addr, PASSWORD, T)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(50));
    assert!(matches!(s.api("x").await, Err(EslError::Closed(_))));
    let auth = format!("auth {PASSWORD}");
    assert_eq!(
        drain(&mut seen),
        [auth.clone(), "api x".into(), auth, "api x".into()]
    );
}

#[tokio::test]
async fn a_session_backs_off_between_failed_connections() {
    // A port nobody listens on.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let s = EslSession::new(&addr, PASSWORD, T)
        .with_backoff(Duration::from_millis(100), Duration::from_millis(250));
    let started = std::time::Instant::now();
    for _ in 0..4 {
        assert!(matches!(s.api("x").await, Err(EslError::Io { .. })));
    }
    // Waits of 200 ms (100 doubled once) and then the 250 ms cap, twice.
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(700), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(!s.is_connected());
}
