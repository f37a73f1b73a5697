//! The world file served as Graph directory reads and a ServiceNow Table API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use accessgate_emulator::{FaultSpec, FaultTarget, Grants, RunningEmulator, World};
use serde_json::{Value, json};

const ALICE: &str = "7a1e0000-0000-4000-8000-000000000001";
const CHEN: &str = "7a1e0000-0000-4000-8000-000000000003";

async fn start() -> RunningEmulator {
    let emu = common::start().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/world/world.json");
    emu.load_world(&World::from_file(std::path::Path::new(path)).unwrap())
        .unwrap();
    emu
}

async fn graph(emu: &RunningEmulator, path: &str) -> (u16, Value) {
    let token = emu.mint_graph_token().unwrap();
    let resp = common::http()
        .get(format!("{}/v1.0{path}", emu.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn users_manager_sponsors_and_select() {
    let emu = start().await;
    let (s, u) = graph(
        &emu,
        &format!("/users/{ALICE}?$select=employeeType,employeeHireDate,employeeLeaveDateTime"),
    )
    .await;
    assert_eq!(s, 200, "{u}");
    assert_eq!(u["employeeType"], "Employee");
    assert_eq!(u["employeeLeaveDateTime"], Value::Null);
    assert!(
        u.get("department").is_none(),
        "only selected properties: {u}"
    );
    let (s, m) = graph(&emu, &format!("/users/{ALICE}/manager?$select=id")).await;
    assert_eq!(
        (s, m["id"].as_str()),
        (200, Some("7a1e0000-0000-4000-8000-000000000002"))
    );
    let (s, _) = graph(&emu, "/users/7a1e0000-0000-4000-8000-000000000002/manager").await;
    assert_eq!(s, 404);
    let (s, sp) = graph(
        &emu,
        "/users/gita_fabrikam.example%23EXT%23@contoso.example/sponsors",
    )
    .await;
    assert_eq!(
        (s, sp["value"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{sp}"
    );
    let (s, _) = graph(&emu, "/users/nobody").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn transitive_groups_follow_nesting_and_pages_end() {
    let emu = start().await;
    let (s, g) = graph(
        &emu,
        &format!("/users/{ALICE}/transitiveMemberOf/microsoft.graph.group?$top=1"),
    )
    .await;
    assert_eq!(s, 200, "{g}");
    let mut names = vec![g["value"][0]["displayName"].as_str().unwrap().to_owned()];
    let next = g["@odata.nextLink"].as_str().unwrap().to_owned();
    let token = emu.mint_graph_token().unwrap();
    let page2: Value = common::http()
        .get(next)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    names.push(
        page2["value"][0]["displayName"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert!(page2.get("@odata.nextLink").is_none(), "{page2}");
    names.sort();
    assert_eq!(names, ["AP Clerks", "Finance Operations"]);
    let (s, _) = graph(
        &emu,
        &format!("/users/{ALICE}/transitiveMemberOf?$top=1000"),
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn assignments_and_pending_requests_by_filter() {
    let emu = start().await;
    let (s, a) = graph(&emu, &format!("/identityGovernance/entitlementManagement/assignments?$filter=target/objectId eq '{ALICE}'&$expand=accessPackage")).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(
        a["value"][0]["accessPackage"]["displayName"],
        "Vendor master data"
    );
    let (s, p) = graph(&emu, &format!("/identityGovernance/entitlementManagement/assignmentRequests?$filter=(requestor/objectid eq '{CHEN}') and state eq 'pendingApproval'&$expand=accessPackage")).await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["value"].as_array().unwrap().len(), 3);
    let (s, _) = graph(
        &emu,
        "/identityGovernance/entitlementManagement/assignments?$filter=foo eq 'x'",
    )
    .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn batch_answers_each_request_and_counts_once() {
    let emu = start().await;
    let token = emu.mint_graph_token().unwrap();
    let url = format!("{}/v1.0/$batch", emu.base_url());
    let body = json!({"requests": [
        {"id": "u", "method": "GET", "url": format!("/users/{ALICE}?$select=department")},
        {"id": "g", "method": "GET", "url": format!("/users/{ALICE}/transitiveMemberOf/microsoft.graph.group")},
        {"id": "x", "method": "GET", "url": "/users/nobody"},
    ]});
    let before = emu.graph_calls().len();
    let r: Value = common::http()
        .post(&url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_id = |id: &str| {
        r["responses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("u")["body"]["department"], "Finance");
    assert_eq!(by_id("g")["body"]["value"].as_array().unwrap().len(), 2);
    assert_eq!(by_id("x")["status"], 404);
    assert_eq!(emu.graph_calls().len() - before, 1, "the batch is one call");
    assert_eq!(emu.stats().graph_batch_inner_requests, 3);
    let many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": "/users/nobody"}))
        .collect();
    let s = common::http()
        .post(&url)
        .bearer_auth(&token)
        .json(&json!({"requests": many}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 400);
}

#[tokio::test]
async fn permissions_are_enforced() {
    let emu = start().await;
    let app = emu.config().graph_client_id.clone();
    emu.set_grants(
        &app,
        &Grants {
            graph_permissions: Some(vec!["User.Read.All".into()]),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        graph(&emu, &format!("/users/{ALICE}?$select=department"))
            .await
            .0,
        200
    );
    assert_eq!(
        graph(
            &emu,
            &format!("/users/{ALICE}?$select=employeeLeaveDateTime")
        )
        .await
        .0,
        403,
        "lifecycle attributes need their own permission"
    );
    assert_eq!(
        graph(&emu, &format!("/users/{ALICE}/transitiveMemberOf"))
            .await
            .0,
        403
    );
    assert_eq!(graph(&emu, &format!("/identityGovernance/entitlementManagement/assignments?$filter=target/objectId eq '{ALICE}'")).await.0, 403);
}

async fn table(emu: &RunningEmulator, query: &str, auth: Option<(&str, &str)>) -> (u16, Value) {
    let mut req = common::http().get(format!(
        "{}/api/now/table/sc_req_item?{query}",
        emu.base_url()
    ));
    if let Some((u, p)) = auth {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn servicenow_table_api_queries_display_values_and_dot_walks() {
    let emu = start().await;
    let c = emu.servicenow_credentials();
    let auth = Some((c.username.as_str(), c.password.as_str()));
    let (s, r) = table(&emu, "sysparm_query=number=RITM0010001&sysparm_fields=number,state,opened_for.email&sysparm_display_value=all&sysparm_exclude_reference_link=true", auth).await;
    assert_eq!(s, 200, "{r}");
    let rec = &r["result"][0];
    assert_eq!(
        rec["state"],
        json!({"display_value": "Work in Progress", "value": "2"})
    );
    assert_eq!(rec["opened_for.email"]["value"], "chen@contoso.example");
    let (_, r) = table(
        &emu,
        "sysparm_query=number=RITM0010001&sysparm_fields=opened_for",
        auth,
    )
    .await;
    assert!(
        r["result"][0]["opened_for"]["link"]
            .as_str()
            .unwrap()
            .contains("/api/now/table/sys_user/"),
        "{r}"
    );
    let (_, r) = table(
        &emu,
        "sysparm_query=state=2^ORstate=3^numberSTARTSWITHRITM&sysparm_fields=number",
        auth,
    )
    .await;
    assert_eq!(r["result"].as_array().unwrap().len(), 3);
    // The gotcha: an invalid field is ignored, so every row comes back...
    let (_, r) = table(
        &emu,
        "sysparm_query=nmber=RITM0010001&sysparm_fields=number",
        auth,
    )
    .await;
    assert_eq!(r["result"].as_array().unwrap().len(), 3, "{r}");
    // ...unless glide.invalid_query.returns_no_rows is set.
    emu.set_servicenow_invalid_query_returns_no_rows(true);
    let (_, r) = table(&emu, "sysparm_query=nmber=RITM0010001", auth).await;
    assert_eq!(r["result"].as_array().unwrap().len(), 0);
    let (s, r) = table(&emu, "sysparm_query=number=RITM0010001", None).await;
    assert_eq!(
        (s, r["error"]["message"].as_str()),
        (401, Some("User Not Authenticated"))
    );
    let (s, _) = table(&emu, "", Some((c.username.as_str(), "wrong"))).await;
    assert_eq!(s, 401);
    let s = common::http()
        .get(format!("{}/api/now/table/nope", emu.base_url()))
        .basic_auth(&c.username, Some(&c.password))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s.as_u16(), 400);
}

#[tokio::test]
async fn servicenow_oauth_and_faults() {
    let emu = start().await;
    let c = emu.servicenow_credentials();
    let http = common::http();
    let token: Value = http
        .post(format!("{}/oauth_token.do", emu.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", c.client_id.as_str()),
            ("client_secret", c.client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let t = token["access_token"].as_str().unwrap();
    let url = format!(
        "{}/api/now/table/sc_req_item?sysparm_query=number=RITM0010002",
        emu.base_url()
    );
    let r: Value = http
        .get(&url)
        .bearer_auth(t)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["result"][0]["number"], "RITM0010002");
    let bad = http
        .post(format!("{}/oauth_token.do", emu.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "x"),
            ("client_secret", "y"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    emu.set_fault(&FaultSpec {
        target: FaultTarget::ServiceNow,
        status: Some(503),
        count: Some(1),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        http.get(&url)
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        503
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert!(emu.servicenow_calls().len() >= 4);
}

#[test]
fn a_world_naming_unknown_ids_is_refused() {
    let w: World = serde_json::from_value(json!({"users": [{"id": "u1", "manager": "ghost"}], "assignments": [{"accessPackageId": "p9", "targetId": "u1"}]})).unwrap();
    let e = w.validate().unwrap_err().to_string();
    assert!(
        e.contains("manager ghost") && e.contains("assignment package p9"),
        "{e}"
    );
}
