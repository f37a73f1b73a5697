use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::callout::{Parsed, parse};
use crate::checks::CheckCtx;
use crate::directory::{Facts, Fetched, Held, HeldAppRole};
use crate::tickets::NoTickets;

fn packages() -> BTreeMap<String, PackageRef> {
    ["vendor", "payments", "reporting", "crm"]
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (
                a.to_string(),
                PackageRef {
                    alias: a.to_string(),
                    id: Some(format!("p{i}")),
                    display_name: Some(format!("Pkg {a}")),
                },
            )
        })
        .collect()
}

#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    functions: BTreeMap<String, RawFunction>,
    #[serde(default)]
    risks: Vec<RawRisk>,
    #[serde(default)]
    exceptions: Vec<RawException>,
}

fn build(text: &str) -> Result<SodRules, Vec<String>> {
    let d: Doc = toml::from_str(text).unwrap();
    SodRules::build(&d.functions, &d.risks, &d.exceptions, &packages())
}

fn rules(text: &str) -> SodRules {
    build(text).unwrap()
}

fn named(id: &str) -> Named {
    Named {
        id: Some(id.into()),
        display_name: None,
    }
}

fn held(id: &str, name: &str) -> Held {
    Held {
        id: id.into(),
        display_name: Some(name.into()),
    }
}

fn now() -> jiff::Timestamp {
    "2026-11-23T12:00:00Z".parse().unwrap()
}

const BASE: &str = r#"
[functions.vendor-maint]
access_packages = ["vendor"]
groups = ["Vendor Admins"]
[[risks]]
name = "vendor-fraud"
severity = "critical"
owner = "controls@x"
sets = [{ name = "vendors", functions = ["vendor-maint"] }, { name = "pay", access_packages = ["payments"], app_roles = ["SAP ERP/role-1"], entitlements = ["SAP:F110"] }]
[[risks]]
name = "report-own"
severity = "medium"
owner = "controls@x"
symmetric = false
sets = [{ access_packages = ["reporting"] }, { access_packages = ["payments"] }]
[[risks]]
name = "three-way"
severity = "high"
owner = "o"
sets = [{ access_packages = ["crm"] }, { groups = ["g-a"] }, { entitlements = ["X:1"] }]
[[exceptions]]
user = "alice@x.example"
risk = "vendor-fraud"
expires = "2027-03-31"
approver = "cfo@x"
reason = "sole clerk"
[[exceptions]]
user = "bob@x.example"
risk = "vendor-fraud"
expires = "2026-01-01"
approver = "cfo@x"
reason = "expired"
"#;

fn names(r: &SodReport) -> Vec<&str> {
    r.violations.iter().map(|v| v.risk.as_str()).collect()
}

#[test]
fn holding_one_set_and_requesting_the_other_violates_both_ways() {
    let r = rules(BASE);
    let h = Holdings {
        access_packages: vec![held("p0", "Pkg vendor")],
        ..Holdings::default()
    };
    let rep = r.evaluate(&named("p1"), &["u1"], &h, true, now());
    assert_eq!(names(&rep), vec!["vendor-fraud"]);
    let v = &rep.violations[0];
    assert_eq!(v.sets[0].2, Source::Assignment);
    assert_eq!(v.sets[1].2, Source::ThisRequest);
    assert!(
        v.summary()
            .contains("holds Pkg vendor (assignment) and requests p1"),
        "{}",
        v.summary()
    );
    // Symmetric: holding payments and requesting vendor master is the same risk.
    let h = Holdings {
        access_packages: vec![held("p1", "Pkg payments")],
        ..Holdings::default()
    };
    assert_eq!(
        names(&r.evaluate(&named("p0"), &["u1"], &h, true, now())),
        vec!["vendor-fraud"]
    );
}

#[test]
fn asymmetric_risks_fire_only_from_the_first_set() {
    let r = rules(BASE);
    let pay = Holdings {
        access_packages: vec![held("p1", "Pkg payments")],
        ..Holdings::default()
    };
    assert_eq!(
        names(&r.evaluate(&named("p2"), &[], &pay, true, now())),
        vec!["report-own"]
    );
    let rep = Holdings {
        access_packages: vec![held("p2", "Pkg reporting")],
        ..Holdings::default()
    };
    assert!(!names(&r.evaluate(&named("p1"), &[], &rep, true, now())).contains(&"report-own"));
}

#[test]
fn every_set_must_be_satisfied_and_by_any_kind_of_holding() {
    let r = rules(BASE);
    let mut h = Holdings {
        groups: vec![held("gid", "G-A")],
        ..Holdings::default()
    };
    assert!(
        r.evaluate(&named("p3"), &[], &h, true, now())
            .violations
            .is_empty(),
        "two of three sets"
    );
    h.external_entitlements = vec!["x:1".into()];
    let rep = r.evaluate(&named("p3"), &[], &h, true, now());
    assert_eq!(names(&rep), vec!["three-way"]);
    assert_eq!(rep.violations[0].sets[1].2, Source::Group);
    assert_eq!(rep.violations[0].sets[2].2, Source::External);
    // A transitive group from a function, an app role by resource name, by resource id.
    let g = Holdings {
        groups: vec![held("g9", "Vendor Admins")],
        ..Holdings::default()
    };
    assert_eq!(
        names(&r.evaluate(&named("p1"), &[], &g, true, now())),
        vec!["vendor-fraud"]
    );
    let by_name = Holdings {
        app_roles: vec![HeldAppRole {
            resource_id: "sp-1".into(),
            resource_display_name: Some("SAP ERP".into()),
            app_role_id: "role-1".into(),
        }],
        ..Holdings::default()
    };
    assert_eq!(
        names(&r.evaluate(&named("p0"), &[], &by_name, true, now())),
        vec!["vendor-fraud"]
    );
    let by_id = rules(&BASE.replace("SAP ERP/role-1", "sp-1/role-1"));
    assert_eq!(
        names(&by_id.evaluate(&named("p0"), &[], &by_name, true, now())),
        vec!["vendor-fraud"]
    );
}

#[test]
fn pending_requests_count_unless_told_not_to() {
    let r = rules(BASE);
    let h = Holdings {
        pending_access_packages: vec![held("p0", "Pkg vendor")],
        ..Holdings::default()
    };
    let rep = r.evaluate(&named("p1"), &[], &h, true, now());
    assert_eq!(rep.violations[0].sets[0].2, Source::PendingRequest);
    assert!(
        r.evaluate(&named("p1"), &[], &h, false, now())
            .violations
            .is_empty()
    );
}

#[test]
fn a_violation_the_request_takes_no_part_in_does_not_count() {
    let r = rules(BASE);
    let h = Holdings {
        access_packages: vec![held("p0", "x"), held("p1", "y")],
        ..Holdings::default()
    };
    assert!(
        r.evaluate(&named("p3"), &[], &h, true, now())
            .violations
            .is_empty()
    );
    assert!(
        r.evaluate(&named("unknown"), &[], &h, true, now())
            .violations
            .is_empty()
    );
}

#[test]
fn exceptions_apply_to_their_user_until_they_expire() {
    let r = rules(BASE);
    let h = Holdings {
        access_packages: vec![held("p0", "x")],
        ..Holdings::default()
    };
    let alice = r.evaluate(&named("p1"), &["ALICE@x.example"], &h, true, now());
    assert!(
        alice.violations[0]
            .exception
            .as_ref()
            .is_some_and(|e| e.0 == "cfo@x" && e.1 == "2027-03-31")
    );
    assert!(
        r.evaluate(&named("p1"), &["bob@x.example"], &h, true, now())
            .violations[0]
            .exception
            .is_none(),
        "expired"
    );
    assert!(
        r.evaluate(&named("p1"), &["carol@x.example"], &h, true, now())
            .violations[0]
            .exception
            .is_none()
    );
    assert_eq!(r.warnings(now()).len(), 1);
}

#[test]
fn every_build_error_is_listed_at_once() {
    let errs = build(
        r#"
[functions.a]
includes = ["b"]
[functions.b]
includes = ["a"]
[functions.c]
includes = ["missing"]
access_packages = ["nope"]
[[risks]]
name = "r1"
severity = "low"
owner = ""
sets = [{ access_packages = ["vendor"] }]
[[risks]]
name = "r1"
severity = "low"
owner = "o"
sets = [{ app_roles = ["no-slash"] }, {}, { functions = ["ghost"] }]
[[exceptions]]
user = "u"
risk = "r9"
expires = "someday"
approver = ""
reason = "x"
"#,
    )
    .err()
    .unwrap_or_default();
    let all = errs.join("\n");
    for want in [
        "functions form a cycle: a → b → a",
        "unknown function \"missing\"",
        "unknown access package \"nope\"",
        "owner is empty",
        "needs two or more sets",
        "[[risks]] \"r1\" is defined twice",
        "no-slash",
        "the set is empty",
        "unknown function \"ghost\"",
        "unknown risk \"r9\"",
        "\"someday\" is not a date",
        "approver is empty",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

async fn run_check(settings: &str, h: Holdings, target: &str) -> Finding {
    let body = format!(
        r#"{{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r","AccessPackage":{{"Id":"p1","DisplayName":"Pkg payments"}},"Assignment":{{"Target":{{"ObjectId":"{target}"}}}}}}"#
    );
    let c = match parse(body.as_bytes()) {
        Ok(Parsed::Callout(c)) => *c,
        other => panic!("{other:?}"),
    };
    let mut facts = Facts::none(Some(target.into()));
    facts.holdings = Fetched::Ok(h);
    let s: SodSettings = toml::from_str(settings).unwrap();
    let chk = check("sod", Arc::new(rules(BASE)), s).unwrap();
    let ctx = CheckCtx {
        callout: &c,
        now: now(),
        facts: &facts,
        tickets: &NoTickets,
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(5),
        activation: None,
    };
    chk.evaluate(&ctx).await
}

#[tokio::test]
async fn the_check_denies_notes_exceptions_and_respects_min_severity() {
    let h = Holdings {
        access_packages: vec![held("p0", "Pkg vendor")],
        ..Holdings::default()
    };
    let f = run_check("", h.clone(), "u1").await;
    assert!(
        matches!(&f.verdict, Verdict::Deny { reason } if reason.contains("vendor-fraud") && reason.contains("critical")),
        "{f:?}"
    );
    let f = run_check("", h.clone(), "alice@x.example").await;
    assert_eq!(f.verdict, Verdict::Allow);
    assert!(
        f.note
            .as_deref()
            .is_some_and(|n| n.contains("approved by cfo@x until 2027-03-31")),
        "{f:?}"
    );
    let f = run_check(
        "min_severity = \"critical\"",
        Holdings {
            access_packages: vec![held("p2", "r")],
            ..Holdings::default()
        },
        "u1",
    )
    .await;
    // report-own is asymmetric and the request is in its second set: nothing at all.
    assert_eq!(f.verdict, Verdict::Allow);
    assert!(
        check(
            "sod",
            Arc::new(rules(BASE)),
            toml::from_str("risks = [\"nope\"]").unwrap()
        )
        .is_err()
    );
}

#[tokio::test]
async fn a_failed_read_is_an_error() {
    let body = br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r","AccessPackage":{"Id":"p1"}}"#;
    let c = match parse(body) {
        Ok(Parsed::Callout(c)) => *c,
        other => panic!("{other:?}"),
    };
    let mut facts = Facts::none(None);
    facts.holdings = Fetched::Failed("Graph $batch: HTTP 503".into());
    let chk = check("sod", Arc::new(rules(BASE)), toml::from_str("").unwrap()).unwrap();
    let ctx = CheckCtx {
        callout: &c,
        now: now(),
        facts: &facts,
        tickets: &NoTickets,
        deadline: std::time::Instant::now() + std::time::Duration::from_secs(5),
        activation: None,
    };
    assert_eq!(
        chk.evaluate(&ctx).await.verdict,
        Verdict::error("Graph $batch: HTTP 503")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn the_index_agrees_with_a_scan(
        risks in prop::collection::vec((prop::collection::vec(prop::collection::vec(0u8..12, 1..4), 2..4), any::<bool>()), 1..8),
        held_items in prop::collection::vec(0u8..12, 0..10),
        pending in prop::collection::vec(0u8..12, 0..3),
        requested in 0u8..12,
        count_pending in any::<bool>(),
    ) {
        // Items 0-3 are packages, 4-7 groups, 8-11 external entitlements.
        let mut text = String::new();
        for (n, (sets, symmetric)) in risks.iter().enumerate() {
            let sets: Vec<String> = sets.iter().map(|s| {
                let mut by_kind: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for &i in s {
                    let (k, v) = match i { 0..=3 => ("access_packages", ["vendor", "payments", "reporting", "crm"][usize::from(i)].to_string()), 4..=7 => ("groups", format!("G{i}")), _ => ("entitlements", format!("E{i}")) };
                    by_kind.entry(k).or_default().push(format!("\"{v}\""));
                }
                let parts: Vec<String> = by_kind.iter().map(|(k, v)| format!("{k} = [{}]", v.join(", "))).collect();
                format!("{{ {} }}", parts.join(", "))
            }).collect();
            text.push_str(&format!("[[risks]]\nname = \"r{n}\"\nseverity = \"low\"\nowner = \"o\"\nsymmetric = {symmetric}\nsets = [{}]\n", sets.join(", ")));
        }
        let r = rules(&text);
        let mut h = Holdings::default();
        for &i in &held_items {
            match i {
                0..=3 => h.access_packages.push(held(&format!("p{i}"), "n")),
                4..=7 => h.groups.push(held("gid", &format!("g{i}"))),
                _ => h.external_entitlements.push(format!("e{i}")),
            }
        }
        for &i in &pending {
            if i <= 3 { h.pending_access_packages.push(held(&format!("p{i}"), "n")); }
        }
        let req = if requested <= 3 { named(&format!("p{requested}")) } else { named("other") };
        let mut indexed: Vec<String> = r.evaluate(&req, &[], &h, count_pending, now()).violations.into_iter().map(|v| v.risk).collect();
        let mut scanned = r.evaluate_by_scan(&req, &h, count_pending);
        indexed.sort();
        scanned.sort();
        prop_assert_eq!(indexed, scanned);
    }
}
