//! How the command line reports a failure: the message and its causes on
//! stderr, a failing exit status, and never a stack backtrace, whatever
//! RUST_BACKTRACE says.

use std::process::Command;

fn funnel_failing(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .output()
        .expect("run funnel");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "funnel {args:?} succeeded: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    err
}

#[test]
fn an_error_prints_its_message_and_causes_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-bundle");
    let err = funnel_failing(&["bundle", "inspect", missing.to_str().unwrap()]);
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    for noise in ["backtrace", "Backtrace", "Stack", "Caused by"] {
        assert!(!err.contains(noise), "{noise:?} in {err}");
    }
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");

    let config = dir.path().join("missing.toml");
    let err = funnel_failing(&["serve", "--config", config.to_str().unwrap()]);
    assert!(
        err.starts_with("error: ") && err.contains("missing.toml"),
        "{err}"
    );
    assert!(!err.contains("backtrace"), "{err}");
    // the cause the message already quotes is not repeated after it
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
