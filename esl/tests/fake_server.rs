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
            let _ = write.write_all(chunk.as_bytes()).await;
        }
        command.clear();
    }
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
