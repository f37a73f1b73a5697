//! `accessgate explain`, `policy test` and `policy check` through the real binary, against the
//! world in tests/fixtures/policy (no network).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/policy")
}

fn accessgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_accessgate"))
        .args(args)
        .env_remove("ACCESSGATE_CONFIG")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn policy_test_passes_the_fixture_suite() {
    let suite = fixtures().join("tests.toml");
    let o = accessgate(&["policy", "test", suite.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert_eq!(t.matches("PASS").count(), 4, "{t}");
    assert!(t.contains("4 passed, 0 failed"), "{t}");
}

#[test]
fn policy_test_fails_with_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let suite = dir.path().join("wrong.toml");
    std::fs::write(
        &suite,
        format!(
            r#"policy = "{p}"
fixtures = "{w}"
now = "2026-11-23T12:00:00Z"
[[tests]]
name = "wrongly expects payments to continue"
callout = "{c}"
expect = "continue"
expect_checks = {{ sod = "allow" }}
"#,
            p = f.join("policy.toml").display(),
            w = f.display(),
            c = f.join("callouts/alice-payments.json").display()
        ),
    )
    .unwrap();
    let o = accessgate(&["policy", "test", suite.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("FAIL  wrongly expects payments to continue"),
        "{t}"
    );
    assert!(t.contains("expected continue, got deny"), "{t}");
    assert!(t.contains("check \"sod\": expected allow, got deny"), "{t}");
    assert!(t.contains("0 passed, 1 failed"), "{t}");
}

#[test]
fn explain_prints_every_check_and_the_detail() {
    let f = fixtures();
    let o = accessgate(&[
        "explain",
        f.join("callouts/alice-payments.json").to_str().unwrap(),
        "--fixtures",
        f.to_str().unwrap(),
        "--policy",
        f.join("policy.toml").to_str().unwrap(),
        "--now",
        "2026-11-23T12:00:00Z",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    for want in [
        "rule      finance",
        "check     sod (sod): DENY",
        "vendor-fraud",
        "Vendor Admins",
        "check     hr (hr): ALLOW",
        "decision  DENY",
        "detail    accessgate denied this request: sod:",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    // The same decision as JSON, for tooling.
    let o = accessgate(&[
        "explain",
        f.join("callouts/bob-sales-closed.json").to_str().unwrap(),
        "--fixtures",
        f.join("world.json").to_str().unwrap(),
        "--policy",
        f.join("policy.toml").to_str().unwrap(),
        "--now",
        "2026-11-23",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["action"], "deny", "{v}");
    let ticket = v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["check"] == "ticket")
        .unwrap();
    assert_eq!(ticket["verdict"], "deny", "{ticket}");
    assert!(
        ticket["reason"]
            .as_str()
            .unwrap()
            .contains("Closed Complete"),
        "{ticket}"
    );
}

#[test]
fn a_bad_policy_is_refused_with_every_error_by_policy_check_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.toml");
    std::fs::write(
        &policy,
        r#"
[packages.pay]
display_name = "Payments run"
[functions.a]
includes = ["b"]
[functions.b]
includes = ["a"]
[checks.ticket]
type = "servicenow_ticket"
table = "sc_req_item"
allowed_states = ["2"]
number_pattern = "RITM(\\d{7"
[[risks]]
name = "r"
severity = "high"
owner = "o@x.example"
sets = [{ access_packages = ["pay"] }, { access_packages = ["nope"] }]
[[exceptions]]
user = "u"
risk = "no-such-risk"
expires = "2027-01-01"
approver = "a"
reason = "b"
[[rules]]
name = "x"
checks = ["ticket", "sod-missing"]
"#,
    )
    .unwrap();
    let o = accessgate(&["policy", "check", policy.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for want in [
        "number_pattern",
        "nope",
        "no-such-risk",
        "sod-missing",
        "a → b → a",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    let cfg = dir.path().join("accessgate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[identity]\ntenant_id = \"11111111-2222-3333-4444-555555555555\"\n[credentials]\nclient_id = \"11111111-2222-3333-4444-555555555556\"\nclient_secret = \"not-printed\"\n[policy]\nfile = \"{}\"\n",
            policy.display()
        ),
    )
    .unwrap();
    let o = accessgate(&["check-config", "--config", cfg.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    for want in [
        "policy.file",
        "number_pattern",
        "no-such-risk",
        "sod-missing",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
}

#[test]
fn the_example_policy_passes_its_own_tests() {
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policies/contoso-tests.toml");
    let o = accessgate(&["policy", "test", suite.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("6 passed, 0 failed"), "{t}");
}
