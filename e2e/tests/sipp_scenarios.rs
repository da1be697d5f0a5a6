//! The SIPp scenarios in e2e/scenarios, checked against each other and against
//! a throwaway registrar (see `registrar`), without the product's edge.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use sipstack_e2e::sipp::{free_udp_port, InjectionFile, SippCommand, SippExit, SippProcess};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn alice() -> InjectionFile {
    InjectionFile::users(&[("alice", "example.com", "pw1")])
}

fn standin() -> (SippProcess, String) {
    let port = free_udp_port().unwrap();
    let standin = SippCommand::media_standin(LOCALHOST, port)
        .deadline(Duration::from_secs(60))
        .spawn()
        .unwrap();
    (standin, format!("127.0.0.1:{port}"))
}

fn call_to(remote: &str, calls: u64) -> SippCommand {
    SippCommand::scenario("uac_call")
        .remote(remote)
        .local_port(free_udp_port().unwrap())
        .injection(alice())
        .max_calls(calls)
        .recv_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(30))
}

#[test]
fn calls_to_a_standin_succeed_and_name_it() {
    let (standin, addr) = standin();
    let outcome = call_to(&addr, 20)
        .rate(50)
        .pause(Duration::from_millis(20))
        .run()
        .unwrap();
    outcome.ensure_all_succeeded(20).unwrap();
    assert_eq!(
        outcome.answered_by().into_iter().collect::<Vec<_>>(),
        vec![(addr.clone(), 20)]
    );
    let call_ids: HashSet<_> = outcome
        .lines("ANSWERED")
        .filter_map(|l| l.get("call_id"))
        .collect();
    assert_eq!(call_ids.len(), 20, "{:?}", outcome.log_lines);
    assert_eq!(outcome.lines("CHALLENGED").count(), 0);

    let standin_outcome = standin.stop().unwrap();
    assert_eq!(
        standin_outcome.exit,
        SippExit::AllSucceeded,
        "{}",
        standin_outcome.diagnostics()
    );
    assert_eq!(
        standin_outcome.successful(),
        20,
        "{}",
        standin_outcome.diagnostics()
    );
}

#[test]
fn three_hundred_calls_at_100_per_second_do_not_fail() {
    let (standin, addr) = standin();
    let outcome = call_to(&addr, 300)
        .rate(100)
        .pause(Duration::from_millis(100))
        .run()
        .unwrap();
    outcome.ensure_all_succeeded(300).unwrap();
    assert_eq!(outcome.answered_by().get(&addr), Some(&300));
    drop(standin);
}

#[test]
fn one_call_id_for_every_call_still_makes_whole_dialogs() {
    let (_standin, addr) = standin();
    let outcome = call_to(&addr, 10)
        .rate(100)
        .fixed_call_id("hash-me@sipstack.test")
        .run()
        .unwrap();
    outcome.ensure_all_succeeded(10).unwrap();
    let answered: Vec<_> = outcome.lines("ANSWERED").collect();
    assert_eq!(answered.len(), 10);
    assert!(
        answered
            .iter()
            .all(|l| l.get("call_id") == Some("hash-me@sipstack.test")),
        "{answered:?}"
    );
}

#[test]
fn options_get_200_from_a_standin_and_503_from_a_draining_one() {
    let (_standin, addr) = standin();
    let busy_port = free_udp_port().unwrap();
    let _busy = SippCommand::busy_media_standin(LOCALHOST, busy_port)
        .spawn()
        .unwrap();
    let busy_addr = format!("127.0.0.1:{busy_port}");

    let probe = |remote: &str| {
        SippCommand::scenario("options")
            .remote(remote)
            .max_calls(3)
            .recv_timeout(Duration::from_secs(3))
            .deadline(Duration::from_secs(15))
            .run()
            .unwrap()
    };
    let up = probe(&addr);
    up.ensure_all_succeeded(3).unwrap();
    assert!(
        up.lines("OPTIONS").all(|l| l.get("status") == Some("200")),
        "{:?}",
        up.log_lines
    );

    let draining = probe(&busy_addr);
    draining.ensure_all_succeeded(3).unwrap();
    let statuses: Vec<_> = draining
        .lines("OPTIONS")
        .filter_map(|l| l.get("status"))
        .collect();
    assert_eq!(statuses, ["503", "503", "503"]);

    // A call to the draining node fails on its 503.
    let refused = call_to(&busy_addr, 2).rate(10).run().unwrap();
    assert_eq!(
        refused.exit,
        SippExit::SomeFailed,
        "{}",
        refused.diagnostics()
    );
    assert_eq!(refused.failed(), 2);
    assert_eq!(refused.unexpected_codes, [503, 503]);
}

#[test]
fn a_killed_standin_is_reported_dead_and_calls_to_it_fail() {
    let (mut standin, addr) = standin();
    assert!(standin.is_alive());
    standin.kill().unwrap();
    assert!(!standin.is_alive());

    let outcome = call_to(&addr, 1)
        .recv_timeout(Duration::from_secs(1))
        .run()
        .unwrap();
    assert_eq!(
        outcome.exit,
        SippExit::SomeFailed,
        "{}",
        outcome.diagnostics()
    );
    assert_eq!(outcome.failed(), 1);
    let killed = standin.stop().unwrap();
    assert_eq!(killed.exit, SippExit::Killed);
}

#[test]
fn a_hanging_run_ends_at_its_deadline() {
    // A socket that never answers: the INVITE would be retransmitted for 32 s.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = Instant::now();
    let outcome = call_to(&addr, 1)
        .deadline(Duration::from_secs(2))
        .recv_timeout(Duration::from_secs(60))
        .run()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        outcome.exit,
        SippExit::TimedOut,
        "{}",
        outcome.diagnostics()
    );
    assert_eq!(outcome.successful(), 0);
}

/// A stateless registrar answers a retransmitted REGISTER or INVITE twice,
/// each time with a fresh nonce; on a busy machine the second challenge
/// arrives after the client has sent its retry. A phone ignores it (and ACKs
/// it, for an INVITE); so must the scenarios, and they count what they absorbed.
#[test]
fn a_late_second_challenge_is_absorbed_and_counted() {
    let port = free_udp_port().unwrap();
    let peer = SippCommand::scenario("uas_challenge_twice")
        .local(LOCALHOST, port)
        .max_calls(3)
        .deadline(Duration::from_secs(40))
        .spawn()
        .unwrap();
    let remote = format!("127.0.0.1:{port}");
    let registered = SippCommand::scenario("register")
        .remote(&remote)
        .local_port(free_udp_port().unwrap())
        .injection(alice())
        .key("expires", "60")
        .max_calls(1)
        .deadline(Duration::from_secs(10))
        .run()
        .unwrap();
    registered.ensure_all_succeeded(1).unwrap();
    assert_eq!(registered.absorbed(), 1, "{}", registered.diagnostics());
    assert_eq!(registered.lines("REGISTERED").count(), 1);

    let called = call_to(&remote, 1)
        .service("svc")
        .pause(Duration::from_millis(50))
        .run()
        .unwrap();
    called.ensure_all_succeeded(1).unwrap();
    assert_eq!(called.absorbed(), 1, "{}", called.diagnostics());
    assert_eq!(called.lines("ANSWERED").count(), 1);

    let bench = SippCommand::scenario("bench_register")
        .remote(&remote)
        .local_port(free_udp_port().unwrap())
        .injection(alice())
        .key("expires", "60")
        .max_calls(1)
        .deadline(Duration::from_secs(10))
        .run()
        .unwrap();
    bench.ensure_all_succeeded(1).unwrap();
    assert_eq!(bench.absorbed(), 1, "{}", bench.diagnostics());

    let peer = peer.stop().unwrap();
    assert_eq!(peer.successful(), 3, "{}", peer.diagnostics());
}

#[test]
fn a_scenario_error_is_fatal_not_a_failed_call() {
    // register.xml needs -key expires.
    let outcome = SippCommand::scenario("register")
        .remote("127.0.0.1:9")
        .injection(alice())
        .max_calls(1)
        .deadline(Duration::from_secs(10))
        .run()
        .unwrap();
    assert_eq!(
        outcome.exit,
        SippExit::Fatal(1),
        "{}",
        outcome.diagnostics()
    );
    assert!(outcome.stats.is_none());
    assert!(
        outcome
            .diagnostics()
            .contains("Unsupported keyword 'expires'"),
        "{}",
        outcome.diagnostics()
    );
}

#[test]
fn injection_files_refuse_fields_sipp_would_split() {
    let file = InjectionFile::sequential().line(["a;b", "c"]);
    assert!(file.render().is_err());
    let text = InjectionFile::users(&[("u1", "example.com", "pw1"), ("u2", "example.com", "pw2")])
        .render()
        .unwrap();
    assert_eq!(
        text,
        "SEQUENTIAL\nu1;example.com;[authentication username=u1 password=pw1]\n\
         u2;example.com;[authentication username=u2 password=pw2]\n"
    );
}

/// How many calls per second uac_call → media_standin carries with no failure
/// on this machine. Run with `cargo test -p sipstack-e2e --test sipp_scenarios
/// -- --ignored --nocapture direct_call_rate`.
#[test]
#[ignore = "benchmark: takes about a minute"]
fn direct_call_rate() {
    let (_standin, addr) = standin();
    let mut best = 0;
    for rate in [500u32, 1000, 2000, 4000, 6000, 8000, 10000] {
        let calls = u64::from(rate) * 5;
        let outcome = call_to(&addr, calls)
            .rate(rate)
            .pause(Duration::from_millis(200))
            .deadline(Duration::from_secs(40))
            .run()
            .unwrap();
        let achieved = outcome.successful() as f64 / outcome.elapsed.as_secs_f64();
        println!("rate {rate}/s: {outcome} (≈{achieved:.0} calls/s)");
        if outcome.ensure_all_succeeded(calls).is_err() {
            break;
        }
        best = rate;
    }
    println!("highest rate with 0 failures: {best} calls/s");
    assert!(best >= 500);
}

/// A minimal digest-auth registrar and proxy for checking the register and
/// call scenarios. A test fixture only: it is not the product's edge config.
mod registrar {
    use std::fmt::Write as _;
    use std::fs;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::thread;
    use std::time::{Duration, Instant};

    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    use sipstack_e2e::sipp::{free_udp_port, udp_port_bound};

    pub struct Registrar {
        pub addr: String,
        child: Child,
        dir: tempfile::TempDir,
    }

    /// `users`: (user, password). INVITEs from 127.0.0.1:`trusted_port` are
    /// routed to registered users without a challenge; all other INVITEs must
    /// authenticate and go to the stand-in at `standin_port`.
    pub fn start(users: &[(&str, &str)], standin_port: u16, trusted_port: u16) -> Registrar {
        let port = free_udp_port().unwrap();
        let dir = tempfile::Builder::new()
            .prefix("registrar-")
            .tempdir()
            .unwrap();
        let mut passwords = String::new();
        for (user, password) in users {
            writeln!(
                passwords,
                "    if ($au == \"{user}\") {{ $var(password) = \"{password}\"; }}"
            )
            .unwrap();
        }
        let cfg = CONFIG
            .replace("{PORT}", &port.to_string())
            .replace("{STANDIN_PORT}", &standin_port.to_string())
            .replace("{TRUSTED_PORT}", &trusted_port.to_string())
            .replace("{PASSWORDS}", &passwords);
        let cfg_path = dir.path().join("kamailio.cfg");
        fs::write(&cfg_path, cfg).unwrap();
        let log = fs::File::create(dir.path().join("kamailio.log")).unwrap();
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-Y")
            .arg(dir.path())
            .arg("-w")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Own process group: stopping it takes its worker children too.
            .process_group(0)
            .spawn()
            .expect("kamailio (Debian package kamailio) must be installed");
        let mut registrar = Registrar {
            addr: format!("127.0.0.1:{port}"),
            child,
            dir,
        };
        let ready_by = Instant::now() + Duration::from_secs(10);
        while !udp_port_bound(port) {
            if registrar.child.try_wait().unwrap().is_some() || Instant::now() > ready_by {
                panic!("kamailio did not start:\n{}", registrar.log());
            }
            thread::sleep(Duration::from_millis(20));
        }
        registrar
    }

    impl Registrar {
        pub fn log(&self) -> String {
            fs::read_to_string(self.dir.path().join("kamailio.log")).unwrap_or_default()
        }
    }

    impl Drop for Registrar {
        fn drop(&mut self) {
            let group = Pid::from_raw(self.child.id() as i32);
            let _ = killpg(group, Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < until {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = killpg(group, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }

    const CONFIG: &str = r#"#!KAMAILIO
# Test fixture for the SIPp scenarios, not the product's edge config.
debug=2
log_stderror=yes
children=2
disable_tcp=yes
auto_aliases=no
listen=udp:127.0.0.1:{PORT}
alias="example.com"
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
loadmodule "sanity.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"

modparam("usrloc", "db_mode", 0)

request_route {
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (!sanity_check()) {
        exit;
    }
    if (has_totag()) {
        if (loose_route()) {
            t_relay();
            exit;
        }
        if (is_method("ACK") && t_check_trans()) {
            t_relay();
        }
        exit;
    }
    if (is_method("ACK|CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
    t_check_trans();
    remove_hf("Route");
    if (is_method("OPTIONS")) {
        sl_send_reply("200", "OK");
        exit;
    }
    route(PASSWORD);
    if (is_method("REGISTER")) {
        if (!pv_www_authenticate("$fd", "$var(password)", "0")) {
            www_challenge("$fd", "0");
            exit;
        }
        if (!save("location")) {
            sl_reply_error();
        }
        exit;
    }
    if (!is_method("INVITE")) {
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }
    if ($si == "127.0.0.1" && $sp == {TRUSTED_PORT}) {
        if (!lookup("location")) {
            sl_send_reply("404", "Not Found");
            exit;
        }
    } else {
        if (!pv_proxy_authenticate("$fd", "$var(password)", "0")) {
            proxy_challenge("$fd", "0");
            exit;
        }
        consume_credentials();
        $du = "sip:127.0.0.1:{STANDIN_PORT}";
    }
    record_route();
    t_relay();
}

route[PASSWORD] {
    $var(password) = "";
{PASSWORDS}}
"#;
}

fn register(
    scenario: &str,
    registrar: &str,
    user: &str,
    password: &str,
    local_port: u16,
) -> sipstack_e2e::sipp::SippOutcome {
    SippCommand::scenario(scenario)
        .remote(registrar)
        .local_port(local_port)
        .injection(InjectionFile::users(&[(user, "example.com", password)]))
        .key("expires", "120")
        .max_calls(1)
        .recv_timeout(Duration::from_secs(3))
        .deadline(Duration::from_secs(15))
        .run()
        .unwrap()
}

#[test]
fn register_scenarios_against_a_digest_registrar() {
    let registrar = registrar::start(&[("alice", "pw1")], 9, 9);
    let addr = registrar.addr.clone();

    let challenged = register(
        "register_noauth",
        &addr,
        "alice",
        "unused",
        free_udp_port().unwrap(),
    );
    challenged.ensure_all_succeeded(1).unwrap();
    let challenge: Vec<_> = challenged.lines("CHALLENGED").collect();
    assert_eq!(challenge.len(), 1);
    assert_eq!(challenge[0].get("realm"), Some("example.com"));

    let registered = register("register", &addr, "alice", "pw1", free_udp_port().unwrap());
    registered
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", registrar.log()));
    assert_eq!(registered.lines("REGISTERED").count(), 1);

    // register.xml with a wrong password: the 401 to the retry is not a
    // late challenge; the call fails at once (not at a receive timeout).
    let refused = register(
        "register",
        &addr,
        "alice",
        "wrong",
        free_udp_port().unwrap(),
    );
    assert_eq!(
        refused.exit,
        SippExit::SomeFailed,
        "{}",
        refused.diagnostics()
    );
    let stats = refused.stats.as_ref().unwrap();
    assert_eq!(stats.failed_regexp(), 1, "{}", refused.diagnostics());
    assert_eq!(refused.absorbed(), 0);
    assert_eq!(refused.lines("REGISTERED").count(), 0);

    let rejected = register(
        "register_expect_reject",
        &addr,
        "alice",
        "wrong",
        free_udp_port().unwrap(),
    );
    rejected.ensure_all_succeeded(1).unwrap();
    assert_eq!(rejected.lines("REJECTED").count(), 1);

    // The right password is a failure for the reject scenario.
    let not_rejected = register(
        "register_expect_reject",
        &addr,
        "alice",
        "pw1",
        free_udp_port().unwrap(),
    );
    assert_eq!(
        not_rejected.exit,
        SippExit::SomeFailed,
        "{}",
        not_rejected.diagnostics()
    );
    assert_eq!(not_rejected.unexpected_codes, [200]);
}

#[test]
fn authenticated_call_through_a_proxy_reaches_the_standin() {
    let (standin, standin_addr) = standin();
    let standin_port: u16 = standin_addr.rsplit(':').next().unwrap().parse().unwrap();
    let registrar = registrar::start(&[("alice", "pw1")], standin_port, 9);

    let outcome = call_to(&registrar.addr, 5)
        .rate(20)
        .pause(Duration::from_millis(50))
        .run()
        .unwrap();
    outcome
        .ensure_all_succeeded(5)
        .unwrap_or_else(|e| panic!("{e}\n{}", registrar.log()));
    assert_eq!(outcome.lines("CHALLENGED").count(), 5);
    assert_eq!(outcome.answered_by().get(&standin_addr), Some(&5));

    // A wrong password is challenged again: the call fails on the second 407
    // (a 407 to the retry, CSeq 2, is not a late challenge to absorb).
    let wrong = call_to(&registrar.addr, 1)
        .injection(InjectionFile::users(&[("alice", "example.com", "wrong")]))
        .run()
        .unwrap();
    assert_eq!(wrong.exit, SippExit::SomeFailed, "{}", wrong.diagnostics());
    let stats = wrong.stats.as_ref().unwrap();
    assert_eq!(stats.failed_regexp(), 1, "{}", wrong.diagnostics());
    assert_eq!(wrong.absorbed(), 0);
    drop(standin);
}

#[test]
fn registered_user_receives_a_trusted_call() {
    let trusted_port = free_udp_port().unwrap();
    let registrar = registrar::start(&[("bob", "pw2")], 9, trusted_port);
    let phone_port = free_udp_port().unwrap();

    let registered = register("register", &registrar.addr, "bob", "pw2", phone_port);
    registered
        .ensure_all_succeeded(1)
        .unwrap_or_else(|e| panic!("{e}\n{}", registrar.log()));

    let phone = SippCommand::scenario("uas_user")
        .local(LOCALHOST, phone_port)
        .spawn()
        .unwrap();
    let call = SippCommand::scenario("uac_trusted")
        .remote(&registrar.addr)
        .local_port(trusted_port)
        .service("bob")
        .injection(InjectionFile::sequential().line(["media1", "example.com"]))
        .max_calls(2)
        .rate(10)
        .recv_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(20))
        .run()
        .unwrap();
    call.ensure_all_succeeded(2)
        .unwrap_or_else(|e| panic!("{e}\n{}", registrar.log()));
    assert_eq!(
        call.answered_by().get(&format!("127.0.0.1:{phone_port}")),
        Some(&2)
    );

    let phone = phone.stop().unwrap();
    assert_eq!(phone.successful(), 2, "{}", phone.diagnostics());
    let received: HashSet<_> = phone
        .lines("RECEIVED")
        .filter_map(|l| l.get("call_id"))
        .collect();
    let answered: HashSet<_> = call
        .lines("ANSWERED")
        .filter_map(|l| l.get("call_id"))
        .collect();
    assert_eq!(received, answered);
}
