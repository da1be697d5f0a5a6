//! Running the sipctl binary against a testbed platform.

#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use sipstack_e2e::testbed::Testbed;

/// `sipctl ARGS` against the testbed's database and edge, with a config file of
/// its own (so nothing from the user's contexts leaks in).
pub fn sipctl(tb: &Testbed, args: &[&str]) -> Output {
    sipctl_with_stdin(tb, args, None)
}

pub fn sipctl_with_stdin(tb: &Testbed, args: &[&str], stdin: Option<&str>) -> Output {
    sipctl_with_env(tb, args, stdin, &[])
}

/// `sipctl ARGS` with more environment variables (e.g. SIPSTACK_TRUNK_KEY).
pub fn sipctl_with_env(
    tb: &Testbed,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> Output {
    let config = tb.state_dir().join("sipctl-config.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipctl"))
        .args(args)
        // the key only where a test gives it
        .env_remove("SIPSTACK_TRUNK_KEY")
        .env("SIPCTL_CONFIG", &config)
        .env("SIPCTL_DB_URL", &tb.db_url)
        .env("SIPCTL_EDGE", format!("127.0.0.1:{}", tb.ports.rpc))
        .env("SIPSTACK_RPC_TOKEN", tb.rpc_token().unwrap())
        .env_remove("SIPCTL_CONTEXT")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipctl runs");
    if let Some(input) = stdin {
        // sipctl may refuse the input and exit before reading all of it: its exit
        // status and output say so, a broken pipe here does not
        match child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
        {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            Err(e) => panic!("write stdin: {e}"),
        }
    }
    child.wait_with_output().expect("sipctl finishes")
}

/// Stdout of a run that must succeed.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "sipctl failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code and stderr of a run that must fail.
pub fn fails(out: &Output) -> (i32, String) {
    assert!(
        !out.status.success(),
        "sipctl succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
