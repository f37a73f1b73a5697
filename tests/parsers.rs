//! Property tests over the attacker-facing parsers (callout bodies, queue text, PoP tokens and
//! their JSON): whatever the bytes, they answer with a value or an error, never a panic; what
//! the callout parser accepts is safe to put in a URL path, and what the PoP parser accepts is
//! bound to a configured extension with an allowed algorithm.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use accessgate::auth::pop;
use accessgate::callout::{Parsed, parse};
use accessgate::graph::GraphClient;
use accessgate::queue::JobMessage;
use accessgate::strict_json;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
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

/// One path segment: unreserved characters and `@` (an RFC 3986 `pchar`, for UPNs); no `/`,
/// `%`, `?`, `#`, and never `.` or `..`.
fn url_safe(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
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
        ids in ("[A-Za-z0-9._/%@-]{0,12}", "[A-Za-z0-9._/%@-]{0,12}"),
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

const RESOURCE: &str = "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg/providers/Microsoft.Logic/workflows/la";

fn pop_config() -> accessgate::config::Config {
    accessgate::config::from_sources(
        &format!("[identity]\ntenant_id = \"11111111-2222-3333-4444-555555555555\"\n[extensions.x]\nresource = \"{RESOURCE}\"\n[credentials]\nclient_id = \"aaaaaaaa-0000-0000-0000-000000000001\"\nclient_secret = \"x\"\n"),
        &std::collections::BTreeMap::new(),
        std::path::Path::new("."),
    )
    .unwrap()
}

const POP_KEYS: &[&str] = &[
    "alg", "typ", "kid", "jku", "x5u", "jwk", "x5c", "crit", "at", "ts", "m", "u", "p", "nonce",
    "cnf", "b", "q", "h", "kty", "n", "e", "crv", "x", "y", "d",
];

const POP_STRINGS: &[&str] = &[
    "RS256",
    "PS256",
    "ES256",
    "HS256",
    "none",
    "pop",
    "PoP",
    "JWT",
    "POST",
    "post",
    "GET",
    "management.azure.com",
    "management.azure.com:443",
    "RSA",
    "EC",
    "oct",
    "P-256",
    "AQAB",
    "a.b.c",
    "",
    "1700000000",
    "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg/providers/Microsoft.Logic/workflows/la",
];

fn pop_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(POP_STRINGS).prop_map(|s| Value::String(s.to_string())),
        "\\PC{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(POP_KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pop_tokens_of_arbitrary_text_never_panic(text in "\\PC{0,300}", bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let cfg = pop_config();
        let now = 1_700_000_000;
        let _ = pop::parse(&text, &cfg.inbound.pop, &cfg.extensions, now);
        let _ = strict_json::parse_object(&bytes);
        // Three base64url segments of arbitrary bytes reach the JSON parsers.
        let third = bytes.len() / 3;
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(&bytes[..third]),
            URL_SAFE_NO_PAD.encode(&bytes[third..2 * third]),
            URL_SAFE_NO_PAD.encode(&bytes[2 * third..])
        );
        let _ = pop::parse(&token, &cfg.inbound.pop, &cfg.extensions, now);
    }

    #[test]
    fn pop_shaped_tokens_parse_only_into_allowed_bound_requests(
        header_edits in prop::collection::vec((prop::sample::select(POP_KEYS), pop_value()), 0..4),
        claim_edits in prop::collection::vec((prop::sample::select(POP_KEYS), pop_value()), 0..5),
        sig in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let cfg = pop_config();
        let now = 1_700_000_000;
        // Start from a well-formed request and corrupt it, so most cases reach the deep checks.
        let mut header = serde_json::json!({"typ": "pop", "alg": "RS256"});
        let mut claims = serde_json::json!({
            "at": "a.b.c", "ts": now, "m": "POST", "u": "management.azure.com", "p": RESOURCE,
            "nonce": "n", "cnf": {"jwk": {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 256]), "e": "AQAB"}},
        });
        for (k, v) in header_edits {
            header[k] = v;
        }
        for (k, v) in claim_edits {
            claims[k] = v;
        }
        let token = format!("{}.{}.{}", b64(&header), b64(&claims), URL_SAFE_NO_PAD.encode(&sig));
        if let Ok(u) = pop::parse(&token, &cfg.inbound.pop, &cfg.extensions, now) {
            prop_assert!(cfg.inbound.pop.algorithms.contains(&u.alg));
            prop_assert!(u.extension < cfg.extensions.len());
            prop_assert!(!u.at.is_empty());
            prop_assert!(u.ts <= now + 60 && u.ts >= now - 300);
            prop_assert!(u.signing_input.len() < token.len());
        }
    }
}

fn resume_url(c: &accessgate::callout::Callout) -> String {
    use std::collections::BTreeMap;
    let cfg = accessgate::config::from_sources(
        "[identity]\ntenant_id = \"11111111-2222-3333-4444-555555555555\"\n[inbound]\naudiences = [\"a\"]\n[credentials]\nclient_id = \"aaaaaaaa-0000-0000-0000-000000000001\"\nclient_secret = \"x\"\n",
        &BTreeMap::new(),
        std::path::Path::new("."),
    )
    .unwrap();
    let http = reqwest::Client::new();
    let creds = std::sync::Arc::new(accessgate::credentials::Credentials::new(
        http.clone(),
        &cfg.identity,
        &cfg.credentials,
        &cfg.graph,
    ));
    let g = GraphClient::new(http, cfg.graph, creds);
    g.resume_url(c)
}
