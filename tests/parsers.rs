//! Property tests over the attacker-facing parsers: whatever the bytes, they answer with a value
//! or an error, never a panic; and what they accept is safe to put in a URL path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use accessgate::callout::{Parsed, parse};
use accessgate::graph::GraphClient;
use accessgate::queue::JobMessage;
use proptest::prelude::*;
use serde_json::{Map, Value};

const KEYS: &[&str] = &[
    "Stage",
    "stage",
    "STAGE",
    "CustomExtensionStageInstanceId",
    "customextensionstageinstanceid",
    "AccessPackageAssignmentRequestId",
    "accessPackageAssignmentRequestId",
    "CallbackUriPath",
    "CallbackConfiguration",
    "DurationBeforeTimeout",
    "timeoutDuration",
    "AccessPackage",
    "AccessPackageCatalog",
    "Assignment",
    "Target",
    "Requestor",
    "Answers",
    "data",
    "source",
    "type",
    "@odata.type",
    "Event",
    "Id",
    "DisplayName",
    "ObjectId",
];

const STRINGS: &[&str] = &[
    "assignmentRequestCreated",
    "ASSIGNMENTREQUESTAPPROVED",
    "assignmentOneDayBeforeExpiration",
    "CustomExtensionConnectionTest",
    "PT1H",
    "P14D",
    "P1M",
    "-PT5M",
    "r1",
    "../x",
    "",
    " ",
    "é",
    "/identityGovernance/entitlementManagement/assignmentRequests/r1/resume",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(STRINGS).prop_map(|s| Value::String(s.to_string())),
        "\\PC{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn url_safe(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

proptest! {
    // No regression files written into the tree: CI must not depend on a previous run.
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&bytes);
        let _ = JobMessage::from_queue_text(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn callout_shaped_json_parses_to_safe_ids_or_a_clear_error(
        edits in prop::collection::vec((prop::sample::select(KEYS), json_value()), 0..6),
        ids in ("[A-Za-z0-9._/%-]{0,12}", "[A-Za-z0-9._/%-]{0,12}"),
    ) {
        // Start from a valid callout and corrupt it, so most cases reach the deep checks.
        let mut v = serde_json::json!({
            "Stage": "assignmentRequestCreated",
            "CustomExtensionStageInstanceId": ids.0,
            "AccessPackageAssignmentRequestId": ids.1,
            "CallbackUriPath": format!("/identityGovernance/entitlementManagement/assignmentRequests/{}/resume", ids.1),
            "CallbackConfiguration": {"DurationBeforeTimeout": "PT1H"},
        });
        for (k, val) in edits {
            v[k] = val;
        }
        let text = v.to_string();
        if let Ok(Parsed::Callout(c)) = parse(text.as_bytes()) {
            prop_assert!(url_safe(c.request_id.as_str()));
            prop_assert!(url_safe(c.stage_instance_id.as_str()));
            // What goes into the Graph URL is the request id: one path segment, never `.`/`..`.
            let url = resume_url(&c);
            prop_assert!(url.starts_with("https://graph.microsoft.com/v1.0/identityGovernance/entitlementManagement/assignmentRequests/"));
            prop_assert!(url.ends_with("/resume"));
            prop_assert_eq!(url.matches('/').count(), 8);
        }
    }
}

fn resume_url(c: &accessgate::callout::Callout) -> String {
    use std::collections::BTreeMap;
    let cfg = accessgate::config::from_sources(
        "[identity]\ntenant_id = \"11111111-2222-3333-4444-555555555555\"\n[inbound]\naudiences = [\"a\"]\n[graph]\nclient_id = \"aaaaaaaa-0000-0000-0000-000000000001\"\nclient_secret = \"x\"\n",
        &BTreeMap::new(),
        std::path::Path::new("."),
    )
    .unwrap();
    let g = GraphClient::new(reqwest::Client::new(), &cfg.identity, cfg.graph);
    g.resume_url(c)
}
