//! The emulator's Azure Resource Manager: a resource put by a test is read back with a managed
//! identity token for ARM; every refusal ARM documents is there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use serde_json::{Value, json};

const SITE: &str = "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg/providers/Microsoft.Web/sites/func";

async fn arm_token(emu: &accessgate_emulator::RunningEmulator) -> (String, String) {
    let resp = common::http()
        .get(emu.managed_identity_url())
        .header("X-IDENTITY-HEADER", emu.config().identity_header.clone())
        .query(&[
            ("resource", "https://management.azure.com/"),
            ("api-version", "2019-08-01"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    let token = v["access_token"].as_str().unwrap().to_owned();
    let claims: Value = {
        use base64::Engine as _;
        let p = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["aud"], "https://management.azure.com/");
    (token, claims["oid"].as_str().unwrap().to_owned())
}

async fn get(
    emu: &accessgate_emulator::RunningEmulator,
    id: &str,
    token: Option<&str>,
    api: bool,
) -> (u16, Value) {
    let mut req = common::http().get(format!("{}{id}", emu.base_url()));
    if api {
        req = req.query(&[("api-version", "2024-04-01")]);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn resources_are_read_with_an_arm_token_and_refused_as_arm_refuses() {
    let emu = common::start().await;
    let e = emu.handle();
    let (token, oid) = arm_token(&emu).await;
    e.put_arm_resource(
        SITE,
        json!({"properties": {"sku": "FlexConsumption"}}),
        vec![],
    )
    .unwrap();

    let (status, body) = get(&emu, SITE, Some(&token), true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "func");
    assert_eq!(body["id"], SITE);
    assert_eq!(body["properties"]["sku"], "FlexConsumption");
    // Ids compare without case, as ARM's do.
    let (status, _) = get(
        &emu,
        &SITE
            .to_uppercase()
            .replace("/SUBSCRIPTIONS/", "/subscriptions/"),
        Some(&token),
        true,
    )
    .await;
    assert_eq!(status, 200);

    let (status, body) = get(&emu, SITE, Some(&token), false).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("MissingApiVersionParameter"))
    );
    let (status, body) = get(&emu, SITE, None, true).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("InvalidAuthenticationToken"))
    );
    // A Graph token is not an ARM token.
    let graph = common::graph_token(&emu).await;
    let (status, _) = get(&emu, SITE, Some(&graph), true).await;
    assert_eq!(status, 401);
    let (status, body) = get(&emu, &format!("{SITE}-gone"), Some(&token), true).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("ResourceNotFound"))
    );

    // Read access limited to someone else: 403 AuthorizationFailed; to the caller: 200.
    e.put_arm_resource(
        SITE,
        json!({"properties": {}}),
        vec!["00000000-0000-0000-0000-00000000beef".into()],
    )
    .unwrap();
    let (status, body) = get(&emu, SITE, Some(&token), true).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("AuthorizationFailed"))
    );
    e.put_arm_resource(SITE, json!({"properties": {}}), vec![oid])
        .unwrap();
    let (status, _) = get(&emu, SITE, Some(&token), true).await;
    assert_eq!(status, 200);
}
