//! Property tests over the attacker-facing parsers: whatever the bytes, they answer with a value
//! or an error, never a panic; and what they accept is safe to put in a URL path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use accessgate::callout::{Parsed, parse, sanitize_callback_path};
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
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

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
            if let Some(p) = &c.callback_uri_path
                && let Some(safe) = sanitize_callback_path(p, &c.request_id)
            {
                prop_assert!(safe.starts_with("/identityGovernance/entitlementManagement/"));
                prop_assert!(!safe.contains(".."));
            }
        }
    }
}
