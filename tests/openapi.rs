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
