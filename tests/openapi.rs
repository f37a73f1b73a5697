//! The OpenAPI description in the repo is true: it names exactly the routes the server has, and
//! the live server answers with statuses and bodies the description allows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use serde_json::Value;

fn spec() -> Value {
    serde_json::from_str(accessgate::ingress::OPENAPI).unwrap()
}

#[test]
fn spec_paths_are_exactly_the_served_routes() {
    let spec = spec();
    let mut documented: Vec<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    documented.sort();
    let mut served: Vec<(String, String)> = accessgate::ingress::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);
}

fn documented_statuses(spec: &Value, method: &str, path: &str) -> Vec<u16> {
    spec["paths"][path][method]["responses"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.parse().unwrap())
        .collect()
}

fn error_codes(spec: &Value) -> Vec<String> {
    spec["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn live_answers_match_the_description() {
    let h = Harness::start("").await;
    let spec = spec();
    let allowed = documented_statuses(&spec, "post", "/api/elm");
    let codes = error_codes(&spec);
    // PoP signed requests are single-use: one per probe.
    let token = || Some(h.pop(PopOptions::default()));
    let good = flat_body("assignmentRequestCreated", "r-oa", "s-oa");
    let probes: Vec<(Option<String>, &str, String)> = vec![
        (token(), "application/json", good.clone()),
        (token(), "application/json", "{".into()),
        (token(), "text/plain", good.clone()),
        (None, "application/json", good.clone()),
        (
            token(),
            "application/json",
            r#"{"Stage":"CustomExtensionConnectionTest"}"#.into(),
        ),
    ];
    for (auth, ct, body) in probes {
        let mut rb = client()
            .post(h.callout_url())
            .header("content-type", ct)
            .body(body);
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        assert!(allowed.contains(&status), "undocumented status {status}");
        assert!(resp.headers().contains_key("x-correlation-id"));
        let v: Value = resp.json().await.unwrap();
        if status == 202 {
            let statuses =
                spec["components"]["schemas"]["Accepted"]["properties"]["status"]["enum"]
                    .as_array()
                    .unwrap();
            assert!(statuses.contains(&v["status"]), "{v}");
        } else {
            assert!(
                codes.contains(&v["error"]["code"].as_str().unwrap().to_string()),
                "undocumented code {v}"
            );
        }
    }
    let health = client().get(h.ag.url("/healthz")).send().await.unwrap();
    assert!(documented_statuses(&spec, "get", "/healthz").contains(&health.status().as_u16()));
    let served: Value = client()
        .get(h.ag.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, spec);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listed_route_is_served() {
    let h = Harness::start("").await;
    for (method, path) in accessgate::ingress::ROUTES {
        let url = h.ag.url(path);
        let resp = match *method {
            "get" => client().get(&url).send().await.unwrap(),
            "post" => client().post(&url).body("{}").send().await.unwrap(),
            other => panic!("unexpected method {other}"),
        };
        let st = resp.status().as_u16();
        assert!(
            st != 404 && st != 405,
            "{method} {path} is listed but answers {st}"
        );
    }
    let st = client()
        .get(h.ag.url("/not-a-route"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert_eq!(st, 404);
}

/// The request schema and the behaviour agree (a schema-driven fuzzer found they did not): a body
/// the description allows is acknowledged, and one it refuses gets a `400`.
#[tokio::test(flavor = "multi_thread")]
async fn the_request_schema_and_the_server_agree_on_every_body() {
    let h = Harness::start("").await;
    let spec = spec();
    let schema = spec["components"]["schemas"]["ElmCallout"].clone();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let base: Value = serde_json::from_str(&flat_body(
        "assignmentRequestCreated",
        "r-schema",
        "s-schema",
    ))
    .unwrap();
    let long = "a".repeat(129);
    let cases: Vec<(&str, &str, Value)> = vec![
        ("as sent", "Stage", base["Stage"].clone()),
        (
            "id with surrounding white space",
            "CustomExtensionStageInstanceId",
            Value::from(" s-ws "),
        ),
        (
            "id with @ and dots",
            "CustomExtensionStageInstanceId",
            Value::from("a.b@c_d-e"),
        ),
        (
            "empty id",
            "CustomExtensionStageInstanceId",
            Value::from(""),
        ),
        (
            "blank id",
            "CustomExtensionStageInstanceId",
            Value::from("   "),
        ),
        ("dot id", "CustomExtensionStageInstanceId", Value::from(".")),
        (
            "dot-dot id",
            "AccessPackageAssignmentRequestId",
            Value::from(".."),
        ),
        (
            "id with a slash",
            "AccessPackageAssignmentRequestId",
            Value::from("a/b"),
        ),
        (
            "id of 129 characters",
            "AccessPackageAssignmentRequestId",
            Value::from(long.as_str()),
        ),
        (
            "numeric id",
            "CustomExtensionStageInstanceId",
            Value::from(42),
        ),
        ("numeric stage", "Stage", Value::from(7)),
        ("object stage", "Stage", serde_json::json!({"x": 1})),
        ("boolean stage", "Stage", Value::from(true)),
    ];
    for (i, (name, field, value)) in cases.into_iter().enumerate() {
        let mut body = base.clone();
        body[field] = value;
        if field != "CustomExtensionStageInstanceId" {
            // Unique ids, so an acknowledged case is a new job and not a duplicate.
            body["CustomExtensionStageInstanceId"] = Value::from(format!("s-schema-{i}"));
        }
        let schema_allows = validator.is_valid(&body);
        let resp = client()
            .post(h.callout_url())
            .header("authorization", h.pop(PopOptions::default()))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if schema_allows {
            assert_eq!(
                status, 202,
                "{name}: the schema allows it, the server refused it"
            );
        } else {
            assert_eq!(
                status, 400,
                "{name}: the schema refuses it, the server answered {status}"
            );
        }
    }

    // Without Content-Type the body is read as JSON (the description says so), and a head too
    // large for the server gets 431, which the description lists.
    let allowed = documented_statuses(&spec, "post", "/api/elm");
    let resp = client()
        .post(h.callout_url())
        .header("authorization", h.pop(PopOptions::default()))
        .body(flat_body("assignmentRequestCreated", "r-noct", "s-noct"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    let resp = client()
        .post(h.callout_url())
        .header("x-filler", "a".repeat(600_000))
        .body("{}")
        .send()
        .await;
    if let Ok(resp) = resp {
        let status = resp.status().as_u16();
        assert_eq!(status, 431, "an oversized head");
        assert!(allowed.contains(&status), "431 is documented");
    }
}
