//! What `accessgate setup` calls on Graph, against the emulator over HTTP: catalogs, access
//! packages and assignment policies (with `PUT`), catalogs' custom workflow extensions, custom
//! task extensions, PIM custom extensions, catalog role assignments, and the device code
//! sign-in that gives the delegated token PIM needs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use accessgate_emulator::{
    CatalogRole, FaultSpec, Grants, RegisterRequest, RunningEmulator, World,
};
use serde_json::{Value, json};

const C1: &str = "c1000000-0000-0000-0000-000000000001";
const C2: &str = "c2000000-0000-0000-0000-000000000002";
const P1: &str = "a1000000-0000-0000-0000-000000000001";
const P2: &str = "a2000000-0000-0000-0000-000000000002";
const POL1: &str = "b1000000-0000-0000-0000-000000000001";
const POL2: &str = "b2000000-0000-0000-0000-000000000002";
const X1: &str = "e1000000-0000-0000-0000-000000000001";
const X2: &str = "e2000000-0000-0000-0000-000000000002";
const SUB: &str = "44444444-5555-6666-7777-888888888888";
const ELM: &str = "identityGovernance/entitlementManagement";
const OWNER: &str = "ae79f266-94d4-4dab-b730-feca7e132178";
const ASSIGNMENT_MANAGER: &str = "e2182095-804a-4656-ae11-64734e9b7ae5";

fn world() -> World {
    serde_json::from_value(json!({
        "catalogs": [{"id": C1, "displayName": "Finance"}, {"id": C2, "displayName": "HR"}],
        "accessPackages": [
            {"id": P1, "displayName": "Vendor master data", "catalogId": C1},
            {"id": P2, "displayName": "Payroll", "catalogId": C2}
        ],
        "assignmentPolicies": [
            {"id": POL1, "displayName": "Employees", "accessPackageId": P1,
             "customExtensionStageSettings": [{"stage": "assignmentRequestCreated", "customExtensionId": X1}]},
            {"id": POL2, "displayName": "HR staff", "accessPackageId": P2}
        ],
        "customExtensions": [
            {"id": X1, "catalogId": C1, "displayName": "Existing gate"},
            {"id": X2, "catalogId": C2, "displayName": "HR gate"}
        ],
        "logicApps": [format!("/subscriptions/{SUB}/resourceGroups/rg-gate/providers/Microsoft.Logic/workflows/accessgate-relay")]
    }))
    .unwrap()
}

async fn start() -> RunningEmulator {
    let emu = common::start().await;
    emu.load_world(&world()).unwrap();
    emu
}

/// One Graph call: status and JSON body (`Null` when empty).
async fn call(
    emu: &RunningEmulator,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let url = format!("{}/{path}", emu.base_url());
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = common::http().request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

/// A token of the Graph app after its Graph permissions were replaced by `permissions` (and
/// its catalog roles by `roles`).
async fn token_with(emu: &RunningEmulator, permissions: &[&str], roles: &[(&str, &str)]) -> String {
    let client = emu.config().graph_client_id.clone();
    emu.set_grants(
        &client,
        &Grants {
            graph_permissions: Some(permissions.iter().map(|p| (*p).to_owned()).collect()),
            catalog_roles: Some(
                roles
                    .iter()
                    .map(|(c, r)| CatalogRole {
                        catalog_id: (*c).to_owned(),
                        role: (*r).to_owned(),
                    })
                    .collect(),
            ),
            key_vault_roles: None,
        },
    )
    .unwrap();
    common::graph_token(emu).await
}

fn logic_app_endpoint(name: &str) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.logicAppTriggerEndpointConfiguration",
        "subscriptionId": SUB,
        "resourceGroupName": "rg-gate",
        "logicAppWorkflowName": name,
        "url": "https://prod-31.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-10-01"
    })
}

/// The create body setup sends: app-only, so with the trigger `url`.
fn elm_body(name: &str) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension",
        "displayName": name,
        "description": "accessgate decides",
        "endpointConfiguration": logic_app_endpoint("accessgate-relay"),
        "authenticationConfiguration": {"@odata.type": "#microsoft.graph.azureAdPopTokenAuthentication"},
        "callbackConfiguration": {
            "@odata.type": "#microsoft.graph.customExtensionCallbackConfiguration",
            "timeoutDuration": "PT1H"
        }
    })
}

/// A delegated Graph token of the emulated administrator, by the device code flow.
async fn device_token(emu: &RunningEmulator, scope: &str) -> (String, String) {
    let resp = common::http()
        .post(emu.device_code_url())
        .form(&[
            ("client_id", "04b07795-8ddb-461a-bbee-02f9e1bf7b46"),
            ("scope", scope),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let code: Value = resp.json().await.unwrap();
    let device_code = code["device_code"].as_str().unwrap().to_owned();
    let poll = || async {
        let resp = common::http()
            .post(emu.token_url())
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("client_id", "04b07795-8ddb-461a-bbee-02f9e1bf7b46"),
                ("device_code", device_code.as_str()),
            ])
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    let (status, pending) = poll().await;
    assert_eq!(
        (status, pending["error"].as_str()),
        (400, Some("authorization_pending"))
    );
    let (status, token) = poll().await;
    assert_eq!(status, 200, "{token}");
    (
        token["access_token"].as_str().unwrap().to_owned(),
        token["scope"].as_str().unwrap().to_owned(),
    )
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn catalogs_and_access_packages_come_from_the_world() {
    let emu = start().await;
    let token = common::graph_token(&emu).await;
    for version in ["v1.0", "beta"] {
        let (status, c) = call(
            &emu,
            "GET",
            &format!("{version}/{ELM}/catalogs/{C1}"),
            &token,
            None,
        )
        .await;
        assert_eq!(status, 200, "{c}");
        for (k, v) in [
            ("id", json!(C1)),
            ("displayName", json!("Finance")),
            ("description", Value::Null),
            ("catalogType", json!("userManaged")),
            ("state", json!("published")),
            ("isExternallyVisible", json!(false)),
        ] {
            assert_eq!(c[k], v, "{k}");
        }
        assert!(c["createdDateTime"].is_string() && c["modifiedDateTime"].is_string());
    }
    let (status, list) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs?$filter=displayName eq 'fINANCE'"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["value"].as_array().unwrap().len(), 1);
    assert_eq!(list["value"][0]["id"], C1);
    let (status, none) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs?$filter=displayName eq 'Legal'"),
        &token,
        None,
    )
    .await;
    assert_eq!((status, none["value"].as_array().unwrap().len()), (200, 0));
    let (status, err) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs?$filter=startswith(displayName,'F')"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&err).contains("displayName eq '<value>'"), "{err}");
    let ghost = "c9000000-0000-0000-0000-000000000009";
    let (status, err) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs/{ghost}"),
        &token,
        None,
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("ResourceNotFound"))
    );
    assert!(message(&err).contains(ghost));

    let (status, p) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/accessPackages/{P1}?$expand=catalog"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["displayName"], "Vendor master data");
    assert_eq!(p["isHidden"], false);
    assert_eq!(p["catalog"]["displayName"], "Finance");
    let (status, p) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/accessPackages/{P1}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(p.get("catalog").is_none());
    let (status, list) = call(
        &emu,
        "GET",
        &format!("beta/{ELM}/accessPackages?$filter=displayName eq 'Payroll'&$expand=catalog"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["value"][0]["id"], P2);
    assert_eq!(list["value"][0]["catalog"]["id"], C2);
    let (status, _) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/accessPackages/{P1}?$expand=assignmentPolicies"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Without any permission: refused, whatever the id.
    let none = token_with(&emu, &[], &[]).await;
    let (status, err) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs/{C1}"),
        &none,
        None,
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (403, Some("Authorization_RequestDenied"))
    );
    let (status, _) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs/{ghost}"),
        &none,
        None,
    )
    .await;
    assert_eq!(status, 403);
    // A catalog reader of C2 sees C2 only.
    let reader = token_with(&emu, &[], &[(C2, "Catalog reader")]).await;
    let (status, list) = call(&emu, "GET", &format!("v1.0/{ELM}/catalogs"), &reader, None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [C2]);
    let (status, _) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs/{C1}"),
        &reader,
        None,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn policies_expand_their_stages_and_package() {
    let emu = start().await;
    let token = common::graph_token(&emu).await;
    let (status, list) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/assignmentPolicies?$filter=accessPackage/id eq '{P1}'"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let policies = list["value"].as_array().unwrap();
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(p["id"], POL1);
    assert_eq!(p["allowedTargetScope"], "allMemberUsers");
    assert_eq!(p["expiration"]["type"], "afterDuration");
    assert_eq!(p["requestorSettings"]["enableTargetsToSelfAddAccess"], true);
    assert_eq!(
        p["requestApprovalSettings"]["stages"][0]["primaryApprovers"][0]["@odata.type"],
        "#microsoft.graph.requestorManager"
    );
    assert!(
        p.get("questions").is_none(),
        "questions are a navigation: {p}"
    );
    assert!(p["automaticRequestSettings"].is_null());
    assert!(p.get("customExtensionStageSettings").is_none());

    let (status, p) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/assignmentPolicies/{POL1}?$expand=accessPackage,customExtensionStageSettings($expand=customExtension)"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        p["accessPackage"],
        json!({"id": P1, "displayName": "Vendor master data"})
    );
    let stage = &p["customExtensionStageSettings"][0];
    assert_eq!(stage["stage"], "assignmentRequestCreated");
    assert!(stage["id"].is_string());
    let x = &stage["customExtension"];
    assert_eq!(x["id"], X1);
    assert_eq!(
        x["@odata.type"],
        "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension"
    );
    assert_eq!(
        x["endpointConfiguration"]["@odata.type"],
        "#microsoft.graph.logicAppTriggerEndpointConfiguration"
    );
    assert!(
        x["endpointConfiguration"]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    assert_eq!(
        x["authenticationConfiguration"]["@odata.type"],
        "#microsoft.graph.azureAdPopTokenAuthentication"
    );

    let (status, p) = call(
        &emu,
        "GET",
        &format!("beta/{ELM}/assignmentPolicies/{POL1}?$expand=customExtensionStageSettings"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        p["customExtensionStageSettings"][0]
            .get("customExtension")
            .is_none()
    );
    assert!(p.get("accessPackage").is_none());
    let (status, q) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/assignmentPolicies/{POL1}?$expand=questions"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(
        q["questions"][0]["@odata.type"],
        "#microsoft.graph.accessPackageTextInputQuestion"
    );
    let (status, err) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/assignmentPolicies/{POL1}?$expand=reviewSettings"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&err).contains("'reviewSettings'"), "{err}");
    let (status, _) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/assignmentPolicies?$filter=displayName eq 'x'"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_policy_put_replaces_its_stages_within_its_catalog() {
    let emu = start().await;
    let token = common::graph_token(&emu).await;
    let url = format!("v1.0/{ELM}/assignmentPolicies/{POL1}");
    let (_, before) = call(&emu, "GET", &url, &token, None).await;

    // The GET answer, with new stage settings, is a valid PUT body (read-only members echoed).
    let mut body = before.clone();
    body["displayName"] = json!("Employees (gated)");
    body["customExtensionStageSettings"] = json!([
        {"stage": "assignmentRequestCreated", "customExtension": {"id": X1}},
        {"@odata.type": "#microsoft.graph.customExtensionStageSetting", "stage": "assignmentRequestDeterminingApprovalRequirements", "customExtension": {"id": X1}}
    ]);
    let (status, p) = call(&emu, "PUT", &url, &token, Some(&body)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["displayName"], "Employees (gated)");
    let stages = p["customExtensionStageSettings"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(
        stages[1]["stage"],
        "assignmentRequestDeterminingApprovalRequirements"
    );
    assert_eq!(stages[1]["customExtension"]["displayName"], "Existing gate");
    assert_ne!(p["modifiedDateTime"], before["modifiedDateTime"]);
    assert_eq!(p["createdDateTime"], before["createdDateTime"]);
    let (_, again) = call(
        &emu,
        "GET",
        &format!("{url}?$expand=customExtensionStageSettings"),
        &token,
        None,
    )
    .await;
    assert_eq!(
        again["customExtensionStageSettings"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let put = |settings: Value| json!({"displayName": "Employees", "customExtensionStageSettings": settings});
    let (status, err) = call(
        &emu,
        "PUT",
        &url,
        &token,
        Some(&put(json!([
            {"stage": "assignmentRequestApproved", "customExtension": {"id": X1}},
            {"stage": "assignmentRequestApproved", "customExtension": {"id": X1}}
        ]))),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message(&err).contains("'assignmentRequestApproved' is set more than once"),
        "{err}"
    );
    let (status, err) = call(
        &emu,
        "PUT",
        &url,
        &token,
        Some(&put(json!([
            {"stage": "assignmentRequestCreated", "customExtension": {"id": X2}}
        ]))),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        message(&err),
        format!("The custom extension '{X2}' was not found in catalog '{C1}'.")
    );
    let (status, err) = call(
        &emu,
        "PUT",
        &url,
        &token,
        Some(&put(json!([
            {"stage": "unknownFutureValue", "customExtension": {"id": X1}}
        ]))),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = call(
        &emu,
        "PUT",
        &url,
        &token,
        Some(&put(json!([
            {"stage": "assignmentRequestCreated", "customExtensionId": X1}
        ]))),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message(&err).starts_with("Invalid property 'customExtensionId'"),
        "{err}"
    );
    let (status, err) = call(
        &emu,
        "PUT",
        &url,
        &token,
        Some(&json!({"displayName": "x", "isEnabled": true})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message(&err).contains("Invalid property 'isEnabled'"),
        "{err}"
    );
    let (status, err) = call(
        &emu,
        "PUT",
        &url,
        &token,
        Some(&json!({"expiration": {"type": "never"}})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&err).contains("expirationPatternType"), "{err}");
    // Nothing refused changed the policy.
    let (_, after) = call(
        &emu,
        "GET",
        &format!("{url}?$expand=customExtensionStageSettings"),
        &token,
        None,
    )
    .await;
    assert_eq!(after["displayName"], "Employees (gated)");
    assert_eq!(
        after["customExtensionStageSettings"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    let ghost = "b9000000-0000-0000-0000-000000000009";
    let (status, err) = call(
        &emu,
        "PUT",
        &format!("v1.0/{ELM}/assignmentPolicies/{ghost}"),
        &token,
        Some(&put(json!([]))),
    )
    .await;
    assert_eq!(status, 404);
    assert!(message(&err).contains(ghost));
    // A catalog owner of C2 may change C2's policy, not C1's.
    let owner = token_with(&emu, &[], &[(C2, "Catalog owner")]).await;
    let (status, _) = call(&emu, "PUT", &url, &owner, Some(&put(json!([])))).await;
    assert_eq!(status, 403);
    let (status, p) = call(&emu, "PUT", &format!("v1.0/{ELM}/assignmentPolicies/{POL2}"), &owner, Some(&json!({
        "customExtensionStageSettings": [{"stage": "assignmentRequestGranted", "customExtension": {"id": X2}}]
    }))).await;
    assert_eq!(status, 200, "{p}");
    // PUT replaces the whole policy: what the body leaves out is gone.
    assert!(p["displayName"].is_null(), "{p}");
    assert!(p.get("requestApprovalSettings").is_none(), "{p}");
    assert_eq!(p["questions"], json!([]), "{p}");
    // A catalog reader may read, not write.
    let reader = token_with(&emu, &[], &[(C2, "Catalog reader")]).await;
    let (status, _) = call(
        &emu,
        "PUT",
        &format!("v1.0/{ELM}/assignmentPolicies/{POL2}"),
        &reader,
        Some(&put(json!([]))),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/assignmentPolicies/{POL2}"),
        &reader,
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_custom_workflow_extension_is_created_once_per_name() {
    let emu = start().await;
    let token = common::graph_token(&emu).await;
    let url = format!("v1.0/{ELM}/catalogs/{C1}/customWorkflowExtensions");
    let (status, x) = call(&emu, "POST", &url, &token, Some(&elm_body("accessgate"))).await;
    assert_eq!(status, 201, "{x}");
    let id = x["id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(
        x["@odata.type"],
        "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension"
    );
    assert_eq!(x["displayName"], "accessgate");
    assert_eq!(x["description"], "accessgate decides");
    assert!(x["clientConfiguration"].is_null());
    assert_eq!(
        x["endpointConfiguration"],
        logic_app_endpoint("accessgate-relay")
    );
    assert_eq!(x["callbackConfiguration"]["timeoutDuration"], "PT1H");
    assert!(x["createdDateTime"].is_string());
    assert_eq!(x["createdDateTime"], x["lastModifiedDateTime"]);

    // The same name again (in any case) is a conflict; in another catalog it is not.
    let (status, err) = call(&emu, "POST", &url, &token, Some(&elm_body("AccessGate"))).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("Conflict"))
    );
    assert!(message(&err).contains("'AccessGate'"), "{err}");
    let (status, _) = call(
        &emu,
        "POST",
        &format!("v1.0/{ELM}/catalogs/{C2}/customWorkflowExtensions"),
        &token,
        Some(&elm_body("accessgate")),
    )
    .await;
    assert_eq!(status, 201);

    let (status, list) = call(&emu, "GET", &url, &token, None).await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["displayName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Existing gate", "accessgate"]);
    let (status, named) = call(
        &emu,
        "GET",
        &format!("{url}?$filter=displayName eq 'ACCESSGATE'"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(named["value"].as_array().unwrap().len(), 1);
    assert_eq!(
        call(
            &emu,
            "GET",
            &format!("{url}?$filter=id eq '{id}'"),
            &token,
            None
        )
        .await
        .0,
        400
    );
    let (status, got) = call(&emu, "GET", &format!("{url}/{id}"), &token, None).await;
    assert_eq!(status, 200);
    assert_eq!(got["id"], id.as_str());
    let (status, _) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs/{C2}/customWorkflowExtensions/{id}"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 404);
    // Beta's older names reach the same extensions.
    let (status, got) = call(
        &emu,
        "GET",
        &format!(
            "beta/{ELM}/accessPackageCatalogs/{C1}/accessPackageCustomWorkflowExtensions/{id}"
        ),
        &token,
        None,
    )
    .await;
    assert_eq!(
        (status, got["displayName"].as_str()),
        (200, Some("accessgate"))
    );

    // PATCH: needs the type, merges, moves lastModifiedDateTime.
    let (status, err) = call(
        &emu,
        "PATCH",
        &format!("{url}/{id}"),
        &token,
        Some(&json!({"description": "x"})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message(&err).contains("@odata.type"), "{err}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let patch = json!({
        "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension",
        "description": "patched",
        "clientConfiguration": {"timeoutInMilliseconds": 1500, "maximumRetries": 1},
        "lastModifiedDateTime": "2020-01-01T00:00:00Z"
    });
    let (status, p) = call(&emu, "PATCH", &format!("{url}/{id}"), &token, Some(&patch)).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["description"], "patched");
    assert_eq!(p["displayName"], "accessgate");
    assert_eq!(p["clientConfiguration"]["timeoutInMilliseconds"], 1500);
    assert_ne!(p["lastModifiedDateTime"], x["lastModifiedDateTime"]);
    assert_ne!(p["lastModifiedDateTime"], "2020-01-01T00:00:00Z");
    assert_eq!(p["createdDateTime"], x["createdDateTime"]);
    let (status, _) = call(&emu, "PATCH", &format!("{url}/{id}"), &token, Some(&json!({
        "@odata.type": "#microsoft.graph.accessPackageAssignmentWorkflowExtension", "description": "y"
    }))).await;
    assert_eq!(status, 400);
    let (status, err) = call(&emu, "PATCH", &format!("{url}/{X1}"), &token, Some(&json!({
        "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension", "displayName": "accessgate"
    }))).await;
    assert_eq!(status, 409, "{err}");
    // The new extension can go into a policy of its catalog.
    let (status, p) = call(&emu, "PUT", &format!("v1.0/{ELM}/assignmentPolicies/{POL1}"), &token, Some(&json!({
        "customExtensionStageSettings": [{"stage": "assignmentRequestCreated", "customExtension": {"id": id}}]
    }))).await;
    assert_eq!(status, 200);
    assert_eq!(
        p["customExtensionStageSettings"][0]["customExtension"]["description"],
        "patched"
    );

    // The Graph call log has them, like every Graph route.
    let calls = emu.graph_calls();
    assert!(calls.iter().any(|c| {
        c.method == "POST"
            && c.path
                .ends_with(&format!("/catalogs/{C1}/customWorkflowExtensions"))
            && c.status == 201
    }));
    assert!(calls.iter().any(|c| c.method == "PATCH" && c.status == 400));
}

#[tokio::test]
async fn an_extension_body_is_held_to_the_schema_and_the_logic_app() {
    let emu = start().await;
    let token = common::graph_token(&emu).await;
    let url = format!("v1.0/{ELM}/catalogs/{C1}/customWorkflowExtensions");
    let refused = |edit: fn(&mut Value)| {
        let mut b = elm_body("gate");
        edit(&mut b);
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        // The documentation's create example: `durationBeforeTimeout` is not a property.
        (
            refused(
                |b| b["callbackConfiguration"] = json!({"@odata.type": "microsoft.graph.customExtensionCallbackConfiguration", "durationBeforeTimeout": "PT1H"}),
            ),
            "Invalid property 'durationBeforeTimeout'",
        ),
        // Its second example wraps the body in "value".
        (
            json!({"value": elm_body("gate")}),
            "Invalid property 'value'",
        ),
        (
            refused(|b| b["endpointConfiguration"]["logicAppWorkflowName"] = json!("missing-app")),
            "The logic app 'missing-app' in resource group 'rg-gate' of subscription '44444444-5555-6666-7777-888888888888' was not found",
        ),
        (
            refused(|b| {
                b["endpointConfiguration"]
                    .as_object_mut()
                    .unwrap()
                    .remove("url");
            }),
            "url' is required for app-only calls",
        ),
        (
            refused(|b| b["endpointConfiguration"]["url"] = json!("http://relay.example.com/x")),
            "https",
        ),
        (
            refused(|b| b["endpointConfiguration"]["resourceGroupName"] = json!("")),
            "resourceGroupName' is required",
        ),
        (
            refused(
                |b| b["endpointConfiguration"] = json!({"@odata.type": "#microsoft.graph.httpRequestEndpoint", "targetUrl": "https://x.example"}),
            ),
            "logicAppTriggerEndpointConfiguration",
        ),
        (
            refused(|b| b["callbackConfiguration"]["timeoutDuration"] = json!("P15D")),
            "between PT5M and P14D",
        ),
        (
            refused(|b| b["callbackConfiguration"]["timeoutDuration"] = json!("PT4M")),
            "between PT5M and P14D",
        ),
        (
            refused(|b| b["callbackConfiguration"]["timeoutDuration"] = json!("1 hour")),
            "Edm.Duration",
        ),
        (
            refused(|b| b["clientConfiguration"] = json!({"timeoutInMilliseconds": 5000})),
            "between 200 and 2000",
        ),
        (
            refused(|b| b["clientConfiguration"] = json!({"maximumRetries": 2})),
            "maximumRetries 0 or 1",
        ),
        (
            refused(|b| {
                b["authenticationConfiguration"] =
                    json!({"@odata.type": "#microsoft.graph.azureAdTokenAuthentication"})
            }),
            "resourceId' is required",
        ),
        (
            refused(
                |b| b["authenticationConfiguration"] = json!({"@odata.type": "#microsoft.graph.azureAdPopTokenAuthentication", "resourceId": "x"}),
            ),
            "Invalid property 'resourceId'",
        ),
        (
            refused(|b| b["authenticationConfiguration"] = json!({})),
            "needs an '@odata.type'",
        ),
        (
            refused(|b| {
                b.as_object_mut().unwrap().remove("@odata.type");
            }),
            "must carry '@odata.type'",
        ),
        (
            refused(|b| {
                b["@odata.type"] = json!("#microsoft.graph.identityGovernance.customTaskExtension")
            }),
            "is not an entitlement-management workflow extension",
        ),
        (
            refused(|b| b["displayName"] = json!(7)),
            "a string is expected",
        ),
        (
            refused(|b| {
                b.as_object_mut().unwrap().remove("displayName");
            }),
            "'displayName' is required",
        ),
        (
            refused(|b| {
                b.as_object_mut().unwrap().remove("endpointConfiguration");
            }),
            "'endpointConfiguration' is required",
        ),
    ];
    for (body, want) in cases {
        let (status, err) = call(&emu, "POST", &url, &token, Some(&body)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(message(&err).contains(want), "{want}: {err}");
    }
    let (_, err) = call(
        &emu,
        "POST",
        &url,
        &token,
        Some(&refused(|b| {
            b["endpointConfiguration"]["logicAppWorkflowName"] = json!("missing-app")
        })),
    )
    .await;
    assert_eq!(err["error"]["code"], "InvalidLogicApp");

    // The emulator's own Logic Apps exist, compared ignoring case; a delegated caller may omit
    // `url` and gets the trigger's.
    let elm = emu.config().logic_app_resource.clone();
    let parts: Vec<&str> = elm.split('/').collect();
    let mut body = elm_body("own app");
    body["endpointConfiguration"] = json!({
        "@odata.type": "#microsoft.graph.logicAppTriggerEndpointConfiguration",
        "subscriptionId": parts[2].to_uppercase(),
        "resourceGroupName": parts[4].to_uppercase(),
        "logicAppWorkflowName": parts[8],
    });
    let (status, err) = call(&emu, "POST", &url, &token, Some(&body)).await;
    assert_eq!(status, 400, "app-only without url: {err}");
    let (admin, _) = device_token(&emu, "https://graph.microsoft.com/EntitlementManagement.ReadWrite.All offline_access openid profile").await;
    let (status, x) = call(&emu, "POST", &url, &admin, Some(&body)).await;
    assert_eq!(status, 201, "{x}");
    assert!(
        x["endpointConfiguration"]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    // Loopback http is a valid url (accessgate's direct mode in tests).
    let mut body = elm_body("direct");
    body["endpointConfiguration"]["url"] = json!("http://127.0.0.1:7071/api/elm");
    body["authenticationConfiguration"] = json!({"@odata.type": "#microsoft.graph.azureAdTokenAuthentication", "resourceId": "api://accessgate"});
    let (status, x) = call(&emu, "POST", &url, &token, Some(&body)).await;
    assert_eq!(status, 201, "{x}");
    assert_eq!(
        x["authenticationConfiguration"]["resourceId"],
        "api://accessgate"
    );
}

#[tokio::test]
async fn extension_permissions_follow_the_catalog() {
    let emu = start().await;
    let c1 = format!("v1.0/{ELM}/catalogs/{C1}/customWorkflowExtensions");
    let c2 = format!("v1.0/{ELM}/catalogs/{C2}/customWorkflowExtensions");
    let none = token_with(&emu, &[], &[]).await;
    let (status, err) = call(&emu, "POST", &c1, &none, Some(&elm_body("gate"))).await;
    assert_eq!(status, 403);
    assert_eq!(
        message(&err),
        "Insufficient privileges to complete the operation."
    );
    assert_eq!(call(&emu, "GET", &c1, &none, None).await.0, 403);
    let owner = token_with(&emu, &[], &[(C2, "Catalog owner")]).await;
    assert_eq!(
        call(&emu, "POST", &c1, &owner, Some(&elm_body("gate")))
            .await
            .0,
        403
    );
    assert_eq!(call(&emu, "GET", &c1, &owner, None).await.0, 403);
    let (status, x) = call(&emu, "POST", &c2, &owner, Some(&elm_body("gate"))).await;
    assert_eq!(status, 201, "{x}");
    let manager = token_with(&emu, &[], &[(C2, "Access package manager")]).await;
    assert_eq!(call(&emu, "GET", &c2, &manager, None).await.0, 200);
    assert_eq!(
        call(&emu, "POST", &c2, &manager, Some(&elm_body("other")))
            .await
            .0,
        403
    );
    let reader = token_with(&emu, &["EntitlementManagement.Read.All"], &[]).await;
    assert_eq!(call(&emu, "GET", &c1, &reader, None).await.0, 200);
    assert_eq!(
        call(&emu, "POST", &c1, &reader, Some(&elm_body("other")))
            .await
            .0,
        403
    );
    // A delegated token needs the scope.
    emu.set_device_user_scopes(Some(&["EntitlementManagement.Read.All"]));
    let (admin, scope) = device_token(
        &emu,
        "EntitlementManagement.ReadWrite.All EntitlementManagement.Read.All",
    )
    .await;
    assert_eq!(
        scope,
        "https://graph.microsoft.com/EntitlementManagement.Read.All"
    );
    assert_eq!(call(&emu, "GET", &c1, &admin, None).await.0, 200);
    assert_eq!(
        call(&emu, "POST", &c1, &admin, Some(&elm_body("other")))
            .await
            .0,
        403
    );

    // Injected Graph faults apply to these routes too.
    emu.set_fault(&FaultSpec {
        count: Some(1),
        ..FaultSpec::graph_unavailable()
    })
    .unwrap();
    let token = token_with(&emu, &["EntitlementManagement.ReadWrite.All"], &[]).await;
    assert_eq!(call(&emu, "GET", &c1, &token, None).await.0, 503);
    assert_eq!(call(&emu, "GET", &c1, &token, None).await.0, 200);
}

#[tokio::test]
async fn catalog_role_assignments_are_created_listed_and_used_for_resume() {
    let emu = start().await;
    let token = common::graph_token(&emu).await;
    let mi = emu.config().managed_identity_client_id.clone();
    let mi_oid = emu.principal_object_id(&mi).unwrap();
    // The managed identity has no ELM permission: it cannot resume a request of C1 yet.
    emu.set_grants(
        &mi,
        &Grants {
            graph_permissions: Some(vec![]),
            ..Grants::default()
        },
    )
    .unwrap();
    let request = emu
        .register_request_in_catalog(&RegisterRequest::default(), C1)
        .unwrap();
    let mi_token = emu
        .mint_access_token(&mi, "https://graph.microsoft.com")
        .unwrap();
    let resume = common::resume_body(
        "assignmentRequestCreated",
        &request.callouts[0].stage_instance_id,
    );
    assert_eq!(
        common::post_resume(&emu, &mi_token, &request.id, &resume)
            .await
            .0,
        403
    );

    let url = "v1.0/roleManagement/entitlementManagement/roleAssignments";
    let body = json!({
        "@odata.type": "#microsoft.graph.unifiedRoleAssignment",
        "principalId": mi_oid,
        "roleDefinitionId": ASSIGNMENT_MANAGER,
        "appScopeId": format!("/AccessPackageCatalog/{C1}")
    });
    let (status, a) = call(&emu, "POST", url, &token, Some(&body)).await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["@odata.type"], "#microsoft.graph.unifiedRoleAssignment");
    assert_eq!(a["principalId"], mi_oid.as_str());
    assert_eq!(a["roleDefinitionId"], ASSIGNMENT_MANAGER);
    assert_eq!(a["appScopeId"], format!("/AccessPackageCatalog/{C1}"));
    assert!(a["directoryScopeId"].is_null());
    let (status, err) = call(&emu, "POST", url, &token, Some(&body)).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (409, Some("RoleAssignmentExists"))
    );

    let filter =
        format!("principalId eq '{mi_oid}' and appScopeId eq '/AccessPackageCatalog/{C1}'");
    let (status, list) = call(
        &emu,
        "GET",
        &format!("{url}?$filter={filter}&$expand=roleDefinition"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["value"][0]["id"], a["id"]);
    assert_eq!(
        list["value"][0]["roleDefinition"]["displayName"],
        "Access package assignment manager"
    );
    let (status, list) = call(
        &emu,
        "GET",
        &format!(
            "{url}?$filter=principalId eq '{mi_oid}' and appScopeId eq '/AccessPackageCatalog/{C2}'"
        ),
        &token,
        None,
    )
    .await;
    assert_eq!((status, list["value"].as_array().unwrap().len()), (200, 0));
    // The principal reads its own; another principal without ELM read may not.
    let (status, own) = call(
        &emu,
        "GET",
        &format!("{url}?$filter=principalId eq '{mi_oid}'"),
        &mi_token,
        None,
    )
    .await;
    assert_eq!((status, own["value"].as_array().unwrap().len()), (200, 1));
    let none = token_with(&emu, &[], &[]).await;
    assert_eq!(
        call(
            &emu,
            "GET",
            &format!("{url}?$filter=principalId eq '{mi_oid}'"),
            &none,
            None
        )
        .await
        .0,
        403
    );

    // Now the managed identity may resume requests of C1.
    assert_eq!(
        common::post_resume(&emu, &mi_token, &request.id, &resume)
            .await
            .0,
        204
    );

    // `token` was minted before the app's grants changed: it still carries its roles.
    let mut bad = body.clone();
    bad["principalId"] = json!("0f000000-0000-0000-0000-00000000000f");
    let (status, err) = call(&emu, "POST", url, &token, Some(&bad)).await;
    assert_eq!(status, 404, "{err}");
    let mut bad = body.clone();
    bad["roleDefinitionId"] = json!("62e90394-69f5-4237-9190-012177145e10");
    assert_eq!(call(&emu, "POST", url, &token, Some(&bad)).await.0, 400);
    let mut bad = body.clone();
    bad["appScopeId"] = json!("/AccessPackageCatalog/c9000000-0000-0000-0000-000000000009");
    assert_eq!(call(&emu, "POST", url, &token, Some(&bad)).await.0, 404);
    let mut bad = body.clone();
    bad["directoryScopeId"] = json!("/");
    let (status, err) = call(&emu, "POST", url, &token, Some(&bad)).await;
    assert_eq!(status, 400);
    assert!(
        message(&err).starts_with("Invalid property 'directoryScopeId'"),
        "{err}"
    );
    // A catalog owner of C2 may grant roles on C2 only.
    let owner = token_with(&emu, &[], &[(C2, "Catalog owner")]).await;
    let mut on_c2 = body.clone();
    on_c2["appScopeId"] = json!(format!("/AccessPackageCatalog/{C2}"));
    on_c2["roleDefinitionId"] = json!(OWNER);
    assert_eq!(call(&emu, "POST", url, &owner, Some(&body)).await.0, 403);
    assert_eq!(call(&emu, "POST", url, &owner, Some(&on_c2)).await.0, 201);
}

fn task_body(name: &str, logic_app: &str) -> Value {
    let parts: Vec<&str> = logic_app.split('/').collect();
    json!({
        "displayName": name,
        "description": "accessgate decides tasks",
        "endpointConfiguration": {
            "@odata.type": "#microsoft.graph.logicAppTriggerEndpointConfiguration",
            "subscriptionId": parts[2],
            "resourceGroupName": parts[4],
            "logicAppWorkflowName": parts[8],
            "url": "https://prod-01.westeurope.logic.azure.com/workflows/lcw/triggers/manual/paths/invoke"
        },
        "authenticationConfiguration": {
            "@odata.type": "#microsoft.graph.azureAdTokenAuthentication",
            "resourceId": "542dc01a-0b5d-4edc-b3f9-5cfe6393f557"
        },
        "clientConfiguration": {
            "@odata.type": "#microsoft.graph.customExtensionClientConfiguration",
            "maximumRetries": 1,
            "timeoutInMilliseconds": 1000
        },
        "callbackConfiguration": {
            "@odata.type": "#microsoft.graph.identityGovernance.customTaskExtensionCallbackConfiguration",
            "timeoutDuration": "PT5M"
        }
    })
}

#[tokio::test]
async fn custom_task_extensions_take_the_lifecycle_window() {
    let emu = start().await;
    let lcw = emu.config().lcw_logic_app_resource.clone();
    let url = "v1.0/identityGovernance/lifecycleWorkflows/customTaskExtensions";
    // The default grants read Lifecycle Workflows only.
    let token = common::graph_token(&emu).await;
    assert_eq!(call(&emu, "GET", url, &token, None).await.0, 200);
    let (status, _) = call(&emu, "POST", url, &token, Some(&task_body("gate", &lcw))).await;
    assert_eq!(status, 403);

    let token = token_with(&emu, &["LifecycleWorkflows-CustomExt.ReadWrite.All"], &[]).await;
    let (status, x) = call(&emu, "POST", url, &token, Some(&task_body("gate", &lcw))).await;
    assert_eq!(status, 201, "{x}");
    assert_eq!(
        x["@odata.type"],
        "#microsoft.graph.identityGovernance.customTaskExtension"
    );
    assert_eq!(
        x["callbackConfiguration"]["@odata.type"],
        "#microsoft.graph.identityGovernance.customTaskExtensionCallbackConfiguration"
    );
    assert_eq!(x["clientConfiguration"]["maximumRetries"], 1);
    let id = x["id"].as_str().unwrap().to_owned();
    let (status, err) = call(&emu, "POST", url, &token, Some(&task_body("GATE", &lcw))).await;
    assert_eq!(status, 409, "{err}");

    let mut typed = task_body("typed", &lcw);
    typed["@odata.type"] = json!("#microsoft.graph.identityGovernance.customTaskExtension");
    assert_eq!(call(&emu, "POST", url, &token, Some(&typed)).await.0, 201);
    let cases: Vec<(Value, &str)> = vec![
        (
            {
                let mut b = task_body("t", &lcw);
                b["callbackConfiguration"]["timeoutDuration"] = json!("PT4H");
                b
            },
            "between PT5M and PT3H",
        ),
        (
            {
                let mut b = task_body("t", &lcw);
                b["callbackConfiguration"] = json!({"@odata.type": "#microsoft.graph.customExtensionCallbackConfiguration", "timeoutDuration": "PT1H"});
                b
            },
            "customTaskExtensionCallbackConfiguration",
        ),
        (
            {
                let mut b = task_body("t", &lcw);
                b["callbackConfiguration"]["durationBeforeTimeout"] = json!("PT1H");
                b
            },
            "Invalid property 'durationBeforeTimeout'",
        ),
        (
            {
                let mut b = task_body("t", &lcw);
                b["endpointConfiguration"]["logicAppWorkflowName"] = json!("nowhere");
                b
            },
            "The logic app 'nowhere'",
        ),
        (
            {
                let mut b = task_body("t", &lcw);
                b["@odata.type"] =
                    json!("#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension");
                b
            },
            "customTaskExtension",
        ),
        (
            {
                let mut b = task_body("t", &lcw);
                b["enabled"] = json!(true);
                b
            },
            "Invalid property 'enabled'",
        ),
    ];
    for (body, want) in cases {
        let (status, err) = call(&emu, "POST", url, &token, Some(&body)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(message(&err).contains(want), "{want}: {err}");
    }
    let (status, p) = call(&emu, "PATCH", &format!("{url}/{id}"), &token, Some(&json!({
        "callbackConfiguration": {"@odata.type": "#microsoft.graph.identityGovernance.customTaskExtensionCallbackConfiguration", "timeoutDuration": "PT3H"}
    }))).await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(p["callbackConfiguration"]["timeoutDuration"], "PT3H");
    let (status, got) = call(
        &emu,
        "GET",
        &format!("beta/identityGovernance/lifecycleWorkflows/customTaskExtensions/{id}"),
        &token,
        None,
    )
    .await;
    assert_eq!(
        (
            status,
            got["callbackConfiguration"]["timeoutDuration"].as_str()
        ),
        (200, Some("PT3H"))
    );
    let (status, list) = call(&emu, "GET", url, &token, None).await;
    assert_eq!((status, list["value"].as_array().unwrap().len()), (200, 2));
    assert_eq!(
        call(
            &emu,
            "GET",
            &format!("{url}/f0000000-0000-0000-0000-00000000000f"),
            &token,
            None
        )
        .await
        .0,
        404
    );

    // A world load forgets what Graph created.
    emu.load_world(&world()).unwrap();
    let (_, list) = call(&emu, "GET", url, &token, None).await;
    assert_eq!(list["value"], json!([]));
}

fn pim_body(id: &str) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.roleManagementCustomCalloutExtension",
        "id": id,
        "displayName": "Role Assignment Ticket Validation",
        "description": "Validates ticket info provided by requestor against ServiceNow",
        "endpointConfiguration": {"@odata.type": "#microsoft.graph.httpRequestEndpoint", "targetUrl": "https://accessgate.example/api/pim"},
        "clientConfiguration": {"@odata.type": "#microsoft.graph.customExtensionClientConfiguration", "timeoutInMilliseconds": 10000, "maximumRetries": 3},
        "authenticationConfiguration": {"@odata.type": "#microsoft.graph.azureAdTokenAuthentication", "resourceId": "api://accessgate"},
        "resourceType": "entraGroups",
        "customAttributes": []
    })
}

#[tokio::test]
async fn pim_custom_extensions_need_a_delegated_token() {
    let emu = start().await;
    let url = "beta/identityGovernance/privilegedAccess/customExtensions";
    let id = "9a000000-0000-0000-0000-0000000000aa";
    let app = common::graph_token(&emu).await;
    let (status, err) = call(&emu, "POST", url, &app, Some(&pim_body(id))).await;
    assert_eq!(status, 403);
    assert!(
        message(&err).contains("delegated permissions only"),
        "{err}"
    );
    assert_eq!(call(&emu, "GET", url, &app, None).await.0, 403);
    // Beta only.
    let (admin, scope) = device_token(
        &emu,
        "https://graph.microsoft.com/PrivilegedAccess-CustomExt.ReadWrite.All openid",
    )
    .await;
    assert_eq!(
        scope,
        "https://graph.microsoft.com/PrivilegedAccess-CustomExt.ReadWrite.All"
    );
    assert_eq!(
        call(
            &emu,
            "POST",
            "v1.0/identityGovernance/privilegedAccess/customExtensions",
            &admin,
            Some(&pim_body(id))
        )
        .await
        .0,
        404
    );

    let (status, x) = call(&emu, "POST", url, &admin, Some(&pim_body(id))).await;
    assert_eq!(status, 201, "{x}");
    assert_eq!(x["id"], id);
    assert_eq!(x["type"], "preApproval");
    assert_eq!(x["resourceType"], "entraGroups");
    assert_eq!(
        x["endpointConfiguration"]["targetUrl"],
        "https://accessgate.example/api/pim"
    );
    assert_eq!(
        call(&emu, "POST", url, &admin, Some(&pim_body(id))).await.0,
        409
    );

    let other = "9b000000-0000-0000-0000-0000000000bb";
    let refused = |edit: &dyn Fn(&mut Value)| {
        let mut b = pim_body(other);
        b["displayName"] = json!("other");
        edit(&mut b);
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            refused(&|b| {
                b.as_object_mut().unwrap().remove("id");
            }),
            "Id property needs to have a GUID value",
        ),
        (
            refused(&|b| b["id"] = json!("ticket-check")),
            "Id property needs to have a GUID value",
        ),
        (
            refused(&|b| b["resourceType"] = json!("entraApps")),
            "resourceType",
        ),
        (refused(&|b| b["type"] = json!("duringApproval")), "'type'"),
        (
            refused(&|b| {
                b["endpointConfiguration"]["targetUrl"] = json!("http://accessgate.example/api/pim")
            }),
            "https",
        ),
        (
            refused(&|b| b["endpointConfiguration"]["url"] = json!("https://x.example")),
            "Invalid property 'url'",
        ),
        (
            refused(&|b| b["authenticationConfiguration"]["resourceId"] = json!("")),
            "resourceId' is required",
        ),
        (
            refused(&|b| {
                b["authenticationConfiguration"] =
                    json!({"@odata.type": "#microsoft.graph.azureAdPopTokenAuthentication"})
            }),
            "azureAdTokenAuthentication",
        ),
        (
            refused(&|b| b["clientConfiguration"]["timeoutInMilliseconds"] = json!(0)),
            "positive",
        ),
        (
            refused(&|b| b["callbackConfiguration"] = json!({})),
            "Invalid property 'callbackConfiguration'",
        ),
        (
            refused(&|b| b["@odata.type"] = json!("#microsoft.graph.customCalloutExtension")),
            "roleManagementCustomCalloutExtension",
        ),
    ];
    for (body, want) in cases {
        let (status, err) = call(&emu, "POST", url, &admin, Some(&body)).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert!(message(&err).contains(want), "{want}: {err}");
    }
    let (status, p) = call(
        &emu,
        "PATCH",
        &format!("{url}/{id}"),
        &admin,
        Some(&json!({"type": "postApproval", "resourceType": "entraRoles"})),
    )
    .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        (p["type"].as_str(), p["resourceType"].as_str()),
        (Some("postApproval"), Some("entraRoles"))
    );
    let (status, list) = call(&emu, "GET", url, &admin, None).await;
    assert_eq!((status, list["value"].as_array().unwrap().len()), (200, 1));
    assert_eq!(
        call(&emu, "GET", &format!("{url}/{other}"), &admin, None)
            .await
            .0,
        404
    );

    // Without the scope (the administrator did not consent to it): refused.
    emu.set_device_user_scopes(Some(&["EntitlementManagement.ReadWrite.All"]));
    let (limited, scope) = device_token(&emu, "https://graph.microsoft.com/PrivilegedAccess-CustomExt.ReadWrite.All https://graph.microsoft.com/EntitlementManagement.ReadWrite.All").await;
    assert_eq!(
        scope,
        "https://graph.microsoft.com/EntitlementManagement.ReadWrite.All"
    );
    let (status, err) = call(&emu, "POST", url, &limited, Some(&refused(&|_| {}))).await;
    assert_eq!(
        (status, message(&err)),
        (403, "Insufficient privileges to complete the operation.")
    );
}

#[tokio::test]
async fn the_device_code_flow_polls_then_signs_the_administrator_in() {
    let emu = start().await;
    let resp = common::http()
        .post(emu.device_code_url())
        .form(&[("client_id", "cli-app"), ("scope", "https://graph.microsoft.com/EntitlementManagement.ReadWrite.All Application.ReadWrite.All offline_access")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let code: Value = resp.json().await.unwrap();
    let user_code = code["user_code"].as_str().unwrap();
    assert_eq!(user_code.len(), 8);
    assert!(user_code.chars().all(|c| c.is_ascii_uppercase()));
    assert_eq!(
        code["verification_uri"],
        format!("{}/_emulator/device", emu.base_url())
    );
    assert_eq!(
        (code["expires_in"].as_u64(), code["interval"].as_u64()),
        (Some(900), Some(1))
    );
    let text = code["message"].as_str().unwrap();
    assert!(
        text.starts_with("To sign in, use a web browser to open the page ")
            && text.contains(user_code),
        "{text}"
    );
    let page = common::http()
        .get(code["verification_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);

    let token_url = emu.token_url();
    let poll = |device_code: String| {
        let token_url = token_url.clone();
        async move {
            let resp = common::http()
                .post(token_url)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", "cli-app"),
                    ("device_code", device_code.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let device_code = code["device_code"].as_str().unwrap().to_owned();
    let (status, pending) = poll(device_code.clone()).await;
    assert_eq!(
        (status, pending["error"].as_str()),
        (400, Some("authorization_pending"))
    );
    let (status, token) = poll(device_code.clone()).await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "Bearer");
    assert!(token["expires_in"].as_i64().unwrap() > 0);
    let c = claims(token["access_token"].as_str().unwrap());
    assert_eq!(
        c["scp"],
        "EntitlementManagement.ReadWrite.All Application.ReadWrite.All"
    );
    assert_eq!(c["oid"], accessgate_emulator::entra::DEVICE_USER_OBJECT_ID);
    assert_eq!(c["idtyp"], "user");
    assert_eq!(c["aud"], "https://graph.microsoft.com");
    assert!(c.get("roles").is_none());
    // The token works on Graph: the administrator reads a catalog with the scope.
    let (status, _) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs/{C1}"),
        token["access_token"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // The code is spent; an unknown one is refused.
    let (status, err) = poll(device_code).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("bad_verification_code"))
    );
    let (status, err) = poll("nope".into()).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("bad_verification_code"))
    );
    // Scopes of another resource are not the emulator's to grant.
    let resp = common::http()
        .post(emu.device_code_url())
        .form(&[
            ("client_id", "cli-app"),
            ("scope", "https://management.azure.com/user_impersonation"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // The control route takes a scope away (and null gives everything back).
    let put = |scopes: Value| {
        common::http()
            .put(format!("{}/_emulator/device-user", emu.base_url()))
            .json(&json!({ "scopes": scopes }))
            .send()
    };
    assert_eq!(
        put(json!(["Application.ReadWrite.All"]))
            .await
            .unwrap()
            .status(),
        204
    );
    let (t, scope) = device_token(
        &emu,
        "EntitlementManagement.ReadWrite.All Application.ReadWrite.All",
    )
    .await;
    assert_eq!(
        scope,
        "https://graph.microsoft.com/Application.ReadWrite.All"
    );
    assert_eq!(claims(&t)["scp"], "Application.ReadWrite.All");
    assert_eq!(
        call(&emu, "GET", &format!("v1.0/{ELM}/catalogs/{C1}"), &t, None)
            .await
            .0,
        403
    );
    assert_eq!(put(Value::Null).await.unwrap().status(), 204);
    let (t, _) = device_token(&emu, "EntitlementManagement.ReadWrite.All").await;
    assert_eq!(claims(&t)["scp"], "EntitlementManagement.ReadWrite.All");
}

#[tokio::test]
async fn world_files_with_governance_objects_are_validated_on_load() {
    let emu = common::start().await;
    let bad: World = serde_json::from_value(json!({
        "accessPackages": [{"id": P1, "catalogId": C1}],
        "assignmentPolicies": [{"id": POL1, "accessPackageId": P1,
            "customExtensionStageSettings": [{"stage": "assignmentRequestCreated", "customExtensionId": X1}]}]
    }))
    .unwrap();
    let resp = common::http()
        .post(format!("{}/_emulator/world", emu.base_url()))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.unwrap();
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains(&format!("policy custom extension {X1}")),
        "{err}"
    );
    // A catalog named only by an access package exists, without a display name.
    let implicit: World =
        serde_json::from_value(json!({"accessPackages": [{"id": P1, "catalogId": C1}]})).unwrap();
    emu.load_world(&implicit).unwrap();
    let token = common::graph_token(&emu).await;
    let (status, c) = call(
        &emu,
        "GET",
        &format!("v1.0/{ELM}/catalogs/{C1}"),
        &token,
        None,
    )
    .await;
    assert_eq!((status, c["displayName"].clone()), (200, Value::Null));
}
