//! Configuration and policy errors as a user meets them, through the real binary (`check-config`,
//! `serve`, `policy check`): every problem at once, each located (file line, section.key or
//! policy entry), near misses suggested, no follow-on errors, and never a value printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

mod common;
use common::{output_text, run_to_exit};

const SECRET: &str = "Zq8~sEcReT-7f3a9b.pasted";

const GOOD: &str = r#"[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
[inbound]
audiences = ["api://accessgate"]
[credentials]
client_id = "aaaaaaaa-0000-0000-0000-000000000001"
client_secret = "not-printed-either"
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

/// `check-config` and `serve` both refuse the configuration with exit code 2 and say the same.
fn both(cfg: &str, env: &[(&str, &str)]) -> Vec<String> {
    let mut out = Vec::new();
    for cmd in ["check-config", "serve"] {
        let o = run_to_exit(&[cmd, "--config", cfg], env);
        let t = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {t}");
        assert!(!t.contains(SECRET), "{cmd} printed the value:\n{t}");
        assert!(
            !t.contains("sEcReT"),
            "{cmd} printed part of the value:\n{t}"
        );
        out.push(t);
    }
    out
}

#[test]
fn a_secret_in_a_numeric_key_is_never_printed_from_file_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    // From the file: the key is named in full with its line, the other keys still count.
    let cfg = write(
        dir.path(),
        "a.toml",
        &format!("{GOOD}[worker]\nconcurrency = \"{SECRET}\"\nlease_seconds = 1\n"),
    );
    for t in both(&cfg, &[]) {
        assert!(
            t.contains("worker.concurrency: expected a non-negative integer, got a string"),
            "{t}"
        );
        assert!(t.contains("a.toml line 9"), "{t}");
        // lease_seconds is still read and checked although concurrency is wrong.
        assert!(t.contains("worker.lease_seconds: at least"), "{t}");
    }
    // From the environment (a secret pasted into the wrong variable), and a boolean key too.
    let cfg = write(dir.path(), "b.toml", GOOD);
    for t in both(
        &cfg,
        &[
            ("ACCESSGATE_WORKER__CONCURRENCY", SECRET),
            ("ACCESSGATE_CAPTURE__ENABLED", SECRET),
        ],
    ) {
        assert!(
            t.contains("worker.concurrency: expected a non-negative integer, got a string (from ACCESSGATE_WORKER__CONCURRENCY)"),
            "{t}"
        );
        assert!(
            t.contains("capture.enabled: expected a boolean, got a string (from ACCESSGATE_CAPTURE__ENABLED)"),
            "{t}"
        );
    }
}

#[test]
fn a_toml_syntax_error_gives_line_and_column_but_not_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!("{GOOD}[worker]\nconcurrency = {SECRET}\n"),
    );
    for t in both(&cfg, &[]) {
        assert!(t.contains("line 9, column"), "{t}");
    }
}

#[test]
fn an_unknown_key_is_named_with_a_suggestion_and_adds_no_required_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "d.toml",
        r#"[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
tenant = "x"
[inbound]
audiences = ["api://accessgate"]
[credentials]
client_id = "aaaaaaaa-0000-0000-0000-000000000001"
client_secret = "not-printed"
clientsecret = "also-not-printed"
[log]
formt = "json"
"#,
    );
    for t in both(&cfg, &[]) {
        assert!(
            t.contains("identity.tenant: unknown key; did you mean `tenant_id`?"),
            "{t}"
        );
        assert!(
            t.contains("credentials.clientsecret: unknown key; did you mean `client_secret`?"),
            "{t}"
        );
        assert!(
            t.contains("log.formt: unknown key; did you mean `format`?"),
            "{t}"
        );
        assert!(t.contains("d.toml line 11"), "{t}");
        assert!(!t.contains("required"), "spurious required error:\n{t}");
        assert!(!t.contains("not-printed"), "{t}");
        assert!(t.contains("3 configuration problem(s)"), "{t}");
    }
}
