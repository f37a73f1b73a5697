//! Policy errors as a new user meets them, through the real binary (`policy check`,
//! `check-config`, `serve`): every mistake at once, each with its line and entry, near misses
//! suggested, and no follow-on errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

mod common;
use common::{output_text, run_to_exit};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

const GOOD: &str = r#"[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
[inbound]
audiences = ["api://accessgate"]
[credentials]
client_id = "aaaaaaaa-0000-0000-0000-000000000001"
client_secret = "not-printed-either"
"#;

const BAD_POLICY: &str = r#"[packages.payments]
display_name = "Payments run"
[packages.approvals]
display_name = "Approve payments"

[[risks]]
name = "pay-vs-approve"
severity = "criticall"
owner = "risk@contoso.example"
sets = [{ access_packages = ["payments"] }, { access_packages = ["approvals"] }]

[[risks]]
name = "pay-vs-audit"
severity = "high"
sets = [{ access_packages = ["payment"] }, { access_packages = ["approvals"] }]

[checks.sod]

[[rules]]
name = "finance"
stages = ["assignmentRequestCreatd"]
checks = ["sod"]

[[rules]]
name = "legacy"
decision = "continue"
mode = "audt"
"#;

fn assert_bad_policy_errors(t: &str) {
    for want in [
        // line, entry, the key, the suggestion
        "line 8: [[risks]] \"pay-vs-approve\": severity: unknown variant `criticall`; did you mean `critical`?",
        "line 12: [[risks]] \"pay-vs-audit\": missing field `owner`",
        "line 15: [[risks]] \"pay-vs-audit\" set 1: unknown access package \"payment\"",
        "did you mean \"payments\"?",
        "line 21: [[rules]] \"finance\": unknown stage \"assignmentRequestCreatd\"; did you mean \"assignmentRequestCreated\"?",
        "line 27: [[rules]] \"legacy\": mode: unknown variant `audt`; did you mean `audit`?",
    ] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    // No follow-on errors: the sod check does not claim there are no risks.
    assert!(!t.contains("needs [[risks]]"), "follow-on error:\n{t}");
    assert!(!t.contains("unknown check"), "follow-on error:\n{t}");
}

#[test]
fn a_policy_with_many_mistakes_reports_all_of_them_at_once_located() {
    let dir = tempfile::tempdir().unwrap();
    let policy = write(dir.path(), "policy.toml", BAD_POLICY);
    let o = run_to_exit(&["policy", "check", &policy], &[]);
    let t = output_text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert_bad_policy_errors(&t);
    assert!(t.contains("policy.toml line 8"), "{t}");
    assert!(t.contains("has 5 error(s)"), "{t}");

    let cfg = write(
        dir.path(),
        "accessgate.toml",
        &format!("{GOOD}[policy]\nfile = \"policy.toml\"\n"),
    );
    for cmd in ["check-config", "serve"] {
        let o = run_to_exit(&[cmd, "--config", &cfg], &[]);
        let t = output_text(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd}: {t}");
        assert_bad_policy_errors(&t);
        assert!(t.contains("policy.file: "), "{t}");
        assert!(!t.contains("not-printed-either"), "{t}");
    }
}
