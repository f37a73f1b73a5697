//! Principals and grants, managed identity, workload identity, client assertions, secret
//! rotation, Key Vault, new fault kinds, catalog-role authorization, role assignments, the Graph
//! call log and many registrations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use accessgate_emulator::{
    CatalogRole, CertificateOptions, DEFAULT_CATALOG, FaultSpec, FaultTarget, Grants,
    RegisterRequest, RunningEmulator,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

async fn msi(emu: &RunningEmulator, header: Option<&str>, query: &[(&str, &str)]) -> (u16, Value) {
    let mut req = common::http().get(emu.managed_identity_url()).query(query);
    if let Some(h) = header {
        req = req.header("X-IDENTITY-HEADER", h);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

async fn mi_token(emu: &RunningEmulator, client_id: Option<&str>, resource: &str) -> String {
    let hdr = emu.config().identity_header.clone();
    let mut q = vec![("resource", resource), ("api-version", "2019-08-01")];
    if let Some(c) = client_id {
        q.push(("client_id", c));
    }
    let (status, body) = msi(emu, Some(&hdr), &q).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn managed_identity_endpoint() {
    let emu = common::start().await;
    let cfg = emu.config().clone();
    let hdr = cfg.identity_header.as_str();
    let v = "2019-08-01";

    let (status, body) = msi(
        &emu,
        Some(hdr),
        &[
            ("resource", "https://graph.microsoft.com"),
            ("api-version", v),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_on"].is_string(), "expires_on is a string");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["client_id"], cfg.managed_identity_client_id.as_str());
    let claims = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["appid"], cfg.managed_identity_client_id.as_str());
    assert_eq!(
        claims["oid"].as_str(),
        emu.principal_object_id(&cfg.managed_identity_client_id)
            .as_deref()
    );
    assert_eq!(
        claims["roles"],
        json!(accessgate_emulator::principals::DEFAULT_GRAPH_PERMISSIONS)
    );

    // User-assigned by client_id and by principal_id.
    let ua_oid = emu
        .principal_object_id(&cfg.user_assigned_client_id)
        .unwrap();
    for (sel, val) in [
        ("client_id", cfg.user_assigned_client_id.as_str()),
        ("principal_id", ua_oid.as_str()),
    ] {
        let (status, body) = msi(
            &emu,
            Some(hdr),
            &[
                ("resource", "https://vault.azure.net"),
                ("api-version", v),
                (sel, val),
            ],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["client_id"], cfg.user_assigned_client_id.as_str());
        let claims = claims_of(body["access_token"].as_str().unwrap());
        assert_eq!(claims["aud"], "https://vault.azure.net");
        assert!(claims.get("roles").is_none());
    }

    // Wrong or missing header.
    let q = [
        ("resource", "https://graph.microsoft.com"),
        ("api-version", v),
    ];
    let (status, body) = msi(&emu, Some("nope"), &q).await;
    assert_eq!(status, 401);
    assert_eq!(body["message"], "Unauthorized");
    let (status, _) = msi(&emu, None, &q).await;
    assert_eq!(status, 401);

    // Unknown id, two selectors, bad resource, bad api-version.
    let (status, body) = msi(
        &emu,
        Some(hdr),
        &[
            ("resource", "https://graph.microsoft.com"),
            ("api-version", v),
            ("client_id", "99999999-0000-0000-0000-000000000000"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("No User Assigned or Delegated Managed Identity found")
    );
    assert!(body["correlationId"].is_string());
    let (status, _) = msi(
        &emu,
        Some(hdr),
        &[
            ("resource", "https://graph.microsoft.com"),
            ("api-version", v),
            ("client_id", cfg.user_assigned_client_id.as_str()),
            ("object_id", ua_oid.as_str()),
        ],
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = msi(
        &emu,
        Some(hdr),
        &[("resource", "https://example.com"), ("api-version", v)],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("AADSTS500011"));
    let (status, _) = msi(
        &emu,
        Some(hdr),
        &[
            ("resource", "https://graph.microsoft.com"),
            ("api-version", "2017-09-01"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(emu.stats().managed_identity_requests, 9);
}

async fn token_with(emu: &RunningEmulator, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = common::http()
        .post(emu.token_url())
        .form(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn assertion_token(emu: &RunningEmulator, client_id: &str, assertion: &str) -> (u16, Value) {
    token_with(
        emu,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_assertion_type", ASSERTION_TYPE),
            ("client_assertion", assertion),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await
}

fn description(body: &Value) -> &str {
    body["error_description"].as_str().unwrap_or("")
}

/// The PEM private key of the latest version of certificate `name`, via the vault with a
/// managed identity token.
async fn pem_key(emu: &RunningEmulator, name: &str) -> String {
    let token = mi_token(emu, None, "https://vault.azure.net").await;
    let (status, body) = kv_get(emu, &token, &format!("secrets/{name}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["contentType"], "application/x-pem-file");
    let value = body["value"].as_str().unwrap();
    assert!(value.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(value.contains("-----BEGIN CERTIFICATE-----"));
    value.to_owned()
}

/// PKCS#8 DER of the first `PRIVATE KEY` block of `pem`.
fn pkcs8_of(pem: &str) -> Vec<u8> {
    let body: String = pem
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)
        .unwrap()
        .split("-----END PRIVATE KEY-----")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    STANDARD.decode(body).unwrap()
}

/// A client assertion signed locally with the PEM key (RS256, header `x5t#S256`).
fn assertion(
    emu: &RunningEmulator,
    pem: &str,
    x5t_s256: &str,
    aud: &str,
    exp_offset: i64,
) -> String {
    let client_id = emu.config().graph_client_id.clone();
    let now = jiff::Timestamp::now().as_second();
    let header = json!({"alg": "RS256", "typ": "JWT", "x5t#S256": x5t_s256});
    let claims = json!({
        "aud": aud, "iss": client_id, "sub": client_id,
        "exp": now + exp_offset, "nbf": now - 60, "iat": now - 60,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8_of(pem)).unwrap();
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig))
}

#[tokio::test]
async fn client_assertion_with_a_key_vault_certificate() {
    let emu = common::start().await;
    let client_id = emu.config().graph_client_id.clone();
    let info = emu
        .create_certificate("graph-cert", CertificateOptions::default())
        .unwrap();
    let pem = pem_key(&emu, "graph-cert").await;
    let aud = emu.token_url();

    let (status, body) = assertion_token(
        &emu,
        &client_id,
        &assertion(&emu, &pem, &info.x5t_s256, &aud, 600),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap();
    assert_eq!(claims_of(token)["appid"], client_id.as_str());

    // Wrong audience.
    let (status, body) = assertion_token(
        &emu,
        &client_id,
        &assertion(&emu, &pem, &info.x5t_s256, "https://example.com/token", 600),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "invalid_client");
    assert!(description(&body).starts_with("AADSTS700021"), "{body}");

    // Expired assertion.
    let (status, body) = assertion_token(
        &emu,
        &client_id,
        &assertion(&emu, &pem, &info.x5t_s256, &aud, -3600),
    )
    .await;
    assert_eq!(status, 401);
    assert!(description(&body).starts_with("AADSTS700024"), "{body}");

    // A certificate in the vault but not registered on the app.
    let other = emu
        .create_certificate(
            "other-cert",
            CertificateOptions {
                register_with_app: false,
                ..Default::default()
            },
        )
        .unwrap();
    let other_pem = pem_key(&emu, "other-cert").await;
    let (status, body) = assertion_token(
        &emu,
        &client_id,
        &assertion(&emu, &other_pem, &other.x5t_s256, &aud, 600),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        description(&body).contains("not registered on application"),
        "{body}"
    );

    // Registered thumbprint, wrong key: signature validation fails.
    let (status, body) = assertion_token(
        &emu,
        &client_id,
        &assertion(&emu, &other_pem, &info.x5t_s256, &aud, 600),
    )
    .await;
    assert_eq!(status, 401);
    assert!(
        description(&body).contains("Client assertion failed signature validation"),
        "{body}"
    );

    // Expired certificate.
    let expired = emu
        .create_certificate(
            "old-cert",
            CertificateOptions {
                valid_days: -1,
                ..Default::default()
            },
        )
        .unwrap();
    let expired_pem = pem_key(&emu, "old-cert").await;
    let (status, body) = assertion_token(
        &emu,
        &client_id,
        &assertion(&emu, &expired_pem, &expired.x5t_s256, &aud, 600),
    )
    .await;
    assert_eq!(status, 401);
    assert!(description(&body).starts_with("AADSTS700027"), "{body}");
    assert!(
        description(&body).contains("certificate has expired"),
        "{body}"
    );
}

async fn kv_get(emu: &RunningEmulator, token: &str, path: &str) -> (u16, Value) {
    let resp = common::http()
        .get(format!("{}/{path}?api-version=7.4", emu.key_vault_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

async fn kv_sign(emu: &RunningEmulator, token: &str, key: &str, digest: &[u8]) -> (u16, Value) {
    let resp = common::http()
        .post(format!(
            "{}/keys/{key}/sign?api-version=7.4",
            emu.key_vault_url()
        ))
        .bearer_auth(token)
        .json(&json!({"alg": "RS256", "value": URL_SAFE_NO_PAD.encode(digest)}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn client_assertion_signed_by_the_vault() {
    let emu = common::start().await;
    let client_id = emu.config().graph_client_id.clone();
    let info = emu
        .create_certificate(
            "graph-cert",
            CertificateOptions {
                exportable: false,
                ..Default::default()
            },
        )
        .unwrap();
    let token = mi_token(&emu, None, "https://vault.azure.net").await;
    // Non-exportable: the secret holds the certificate only.
    let (_, secret) = kv_get(&emu, &token, "secrets/graph-cert").await;
    assert!(!secret["value"].as_str().unwrap().contains("PRIVATE KEY"));
    let (status, cert) = kv_get(&emu, &token, "certificates/graph-cert").await;
    assert_eq!(status, 200, "{cert}");
    let der = STANDARD.decode(cert["cer"].as_str().unwrap()).unwrap();
    assert_eq!(URL_SAFE_NO_PAD.encode(Sha256::digest(&der)), info.x5t_s256);
    assert_eq!(cert["x5t"], info.x5t.as_str());
    assert_eq!(cert["kid"], info.kid.as_str());

    let now = jiff::Timestamp::now().as_second();
    let header = json!({"alg": "RS256", "typ": "JWT", "x5t#S256": info.x5t_s256});
    let claims = json!({
        "aud": emu.token_url(), "iss": client_id, "sub": client_id,
        "exp": now + 600, "nbf": now - 60, "jti": uuid::Uuid::new_v4().to_string(),
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let (status, signed) = kv_sign(
        &emu,
        &token,
        "graph-cert",
        &Sha256::digest(input.as_bytes()),
    )
    .await;
    assert_eq!(status, 200, "{signed}");
    assert!(
        signed["kid"]
            .as_str()
            .unwrap()
            .starts_with(&emu.key_vault_url())
    );
    let jws = format!("{input}.{}", signed["value"].as_str().unwrap());
    let (status, body) = assertion_token(&emu, &client_id, &jws).await;
    assert_eq!(status, 200, "{body}");

    // Wrong digest length, unknown key.
    let (status, body) = kv_sign(&emu, &token, "graph-cert", &[1u8; 20]).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "BadParameter");
    let (status, body) = kv_sign(&emu, &token, "nope", &[1u8; 32]).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "KeyNotFound");
}

#[tokio::test]
async fn workload_identity_federation() {
    let emu = common::start().await;
    let cfg = emu.config().clone();
    let fed = emu.mint_federated_token(3600).unwrap();
    for client in [&cfg.graph_client_id, &cfg.user_assigned_client_id] {
        let (status, body) = assertion_token(&emu, client, &fed).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            claims_of(body["access_token"].as_str().unwrap())["appid"],
            client.as_str()
        );
    }
    // The system-assigned identity has no federated credential.
    let (status, _) = assertion_token(&emu, &cfg.managed_identity_client_id, &fed).await;
    assert_eq!(status, 401);

    // Wrong subject, via the control route.
    let resp = common::http()
        .post(format!(
            "{}/_emulator/workload-identity/token",
            emu.base_url()
        ))
        .json(&json!({"expires_in_secs": 600, "subject": "system:serviceaccount:other:other"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let wrong = resp.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = assertion_token(&emu, &cfg.graph_client_id, &wrong).await;
    assert_eq!(status, 401);
    assert!(description(&body).starts_with("AADSTS70021"), "{body}");

    let expired = emu.mint_federated_token(-60).unwrap();
    let (status, body) = assertion_token(&emu, &cfg.graph_client_id, &expired).await;
    assert_eq!(status, 401);
    assert!(description(&body).starts_with("AADSTS700024"), "{body}");
}

#[tokio::test]
async fn client_secret_rotation() {
    let emu = common::start().await;
    let cfg = emu.config().clone();
    let secret_form = |secret: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "aaaaaaaa-0000-0000-0000-000000000001"),
            ("client_secret", secret),
            ("scope", "https://vault.azure.net/.default"),
        ]
    };
    assert_eq!(cfg.graph_client_secret, "emulator-graph-secret");
    let (status, body) = token_with(&emu, &secret_form("emulator-graph-secret")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["aud"],
        "https://vault.azure.net"
    );
    let resp = common::http()
        .post(format!("{}/_emulator/apps/secret", emu.base_url()))
        .json(&json!({"secret": "rotated"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let (status, body) = token_with(&emu, &secret_form("emulator-graph-secret")).await;
    assert_eq!(status, 401);
    assert!(description(&body).starts_with("AADSTS7000215"));
    let (status, _) = token_with(&emu, &secret_form("rotated")).await;
    assert_eq!(status, 200);
    emu.set_client_secret("again").unwrap();
    let (status, _) = token_with(&emu, &secret_form("again")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn key_vault_secrets_rbac_and_challenge() {
    let emu = common::start().await;
    let cfg = emu.config().clone();
    emu.put_secret("graph-secret", "v1").unwrap();
    let resp = common::http()
        .put(format!(
            "{}/_emulator/keyvault/secrets/graph-secret",
            emu.base_url()
        ))
        .json(&json!({"value": "v2", "content_type": "text/plain"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let token = mi_token(&emu, None, "https://vault.azure.net").await;
    let (status, body) = kv_get(&emu, &token, "secrets/graph-secret").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["value"], "v2");
    assert_eq!(body["contentType"], "text/plain");
    assert_eq!(body["attributes"]["recoveryLevel"], "Recoverable+Purgeable");
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with(&format!("{}/secrets/graph-secret/", emu.key_vault_url())));
    let version = id.rsplit('/').next().unwrap();
    let (status, body) = kv_get(&emu, &token, &format!("secrets/graph-secret/{version}")).await;
    assert_eq!((status, body["value"].as_str()), (200, Some("v2")));

    let (status, body) = kv_get(&emu, &token, "secrets/missing").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "SecretNotFound");
    let (status, body) = kv_get(&emu, &token, "certificates/missing").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "CertificateNotFound");

    // No api-version.
    let resp = common::http()
        .get(format!("{}/secrets/graph-secret", emu.key_vault_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "BadParameter");

    // No token: 401 with the challenge.
    let resp = common::http()
        .get(format!(
            "{}/secrets/graph-secret?api-version=7.5",
            emu.key_vault_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        challenge,
        format!(
            "Bearer authorization=\"{}/{}\", resource=\"https://vault.azure.net\"",
            emu.base_url(),
            cfg.tenant_id
        )
    );
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("AKV10000")
    );

    // A Graph token is not a vault token.
    let graph = emu.mint_graph_token().unwrap();
    let (status, _) = kv_get(&emu, &graph, "secrets/graph-secret").await;
    assert_eq!(status, 401);

    // The Graph app has no Key Vault role by default: 403 ForbiddenByRbac.
    let app_token = emu
        .mint_access_token(&cfg.graph_client_id, "https://vault.azure.net")
        .unwrap();
    let (status, body) = kv_get(&emu, &app_token, "secrets/graph-secret").await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "Forbidden");
    assert_eq!(body["error"]["innererror"]["code"], "ForbiddenByRbac");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("appid={}", cfg.graph_client_id)));
    assert!(message.contains("Microsoft.KeyVault/vaults/secrets/getSecret/action"));

    // Taking the role away from the managed identity.
    emu.set_grants(
        &cfg.managed_identity_client_id,
        &Grants {
            key_vault_roles: Some(vec!["Key Vault Certificate User".into()]),
            ..Default::default()
        },
    )
    .unwrap();
    let (status, _) = kv_get(&emu, &token, "secrets/graph-secret").await;
    assert_eq!(status, 403);
    let (status, _) = kv_sign(&emu, &token, "nope", &[0u8; 32]).await;
    assert_eq!(status, 403);
    let (status, _) = kv_get(&emu, &token, "certificates/missing").await;
    assert_eq!(status, 404);
    assert!(emu.stats().key_vault_requests >= 10);
}

#[tokio::test]
async fn faults_reset_malformed_and_ratio() {
    let emu = common::start().await;
    emu.put_secret("s", "v").unwrap();
    let token = mi_token(&emu, None, "https://vault.azure.net").await;

    emu.set_fault(&FaultSpec {
        target: FaultTarget::Keyvault,
        reset: true,
        count: Some(1),
        ..FaultSpec::default()
    })
    .unwrap();
    let url = format!("{}/secrets/s?api-version=7.4", emu.key_vault_url());
    let outcome = match common::http().get(&url).bearer_auth(&token).send().await {
        Err(_) => Err(()),
        Ok(resp) => resp.bytes().await.map(|_| ()).map_err(|_| ()),
    };
    assert!(outcome.is_err(), "a reset is a transport error");

    emu.set_fault(&FaultSpec {
        target: FaultTarget::Keyvault,
        malformed: true,
        count: Some(1),
        ..FaultSpec::default()
    })
    .unwrap();
    let resp = common::http()
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.json::<Value>().await.is_err(), "malformed JSON");
    let (status, body) = kv_get(&emu, &token, "secrets/s").await;
    assert_eq!((status, body["value"].as_str()), (200, Some("v")));

    // Graph reset, recorded with status 0.
    let graph = common::graph_token(&emu).await;
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Graph,
        reset: true,
        count: Some(1),
        ..FaultSpec::default()
    })
    .unwrap();
    let get_url = format!(
        "{}/v1.0/identityGovernance/entitlementManagement/assignmentRequests/x",
        emu.base_url()
    );
    let outcome = match common::http()
        .get(&get_url)
        .bearer_auth(&graph)
        .send()
        .await
    {
        Err(_) => Err(()),
        Ok(resp) => resp.bytes().await.map(|_| ()).map_err(|_| ()),
    };
    assert!(outcome.is_err());
    assert_eq!(emu.graph_calls().last().unwrap().status, 0);

    // Ratio 0: never applies; ratio 1: always; a ratio of 0.5 faults some of 200 calls.
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Graph,
        status: Some(503),
        ratio: Some(0.0),
        ..FaultSpec::default()
    })
    .unwrap();
    let resp = common::http()
        .get(&get_url)
        .bearer_auth(&graph)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    emu.set_fault(&FaultSpec {
        ratio: Some(0.5),
        ..FaultSpec::graph_unavailable()
    })
    .unwrap();
    let mut faulted = 0;
    let client = common::http();
    for _ in 0..200 {
        let resp = client
            .get(&get_url)
            .bearer_auth(&graph)
            .send()
            .await
            .unwrap();
        if resp.status() == 503 {
            faulted += 1;
        }
    }
    assert!((20..=180).contains(&faulted), "{faulted} of 200");
    assert!(
        emu.set_fault(&FaultSpec {
            ratio: Some(1.5),
            ..FaultSpec::graph_unavailable()
        })
        .is_err()
    );
    assert!(
        emu.set_fault(&FaultSpec {
            target: FaultTarget::ManagedIdentity,
            ..FaultSpec::default()
        })
        .is_err(),
        "a fault needs something to do"
    );
    emu.clear_faults();
    emu.set_fault(&FaultSpec {
        target: FaultTarget::ManagedIdentity,
        status: Some(500),
        count: Some(1),
        ..FaultSpec::default()
    })
    .unwrap();
    let hdr = emu.config().identity_header.clone();
    let (status, _) = msi(
        &emu,
        Some(&hdr),
        &[
            ("resource", "https://vault.azure.net"),
            ("api-version", "2019-08-01"),
        ],
    )
    .await;
    assert_eq!(status, 500);
}

#[tokio::test]
async fn catalog_roles_authorize_resume_per_catalog() {
    let emu = common::start().await;
    let app = emu.config().graph_client_id.clone();
    let other_catalog = "dddddddd-0000-0000-0000-000000000002";
    let reg = |id: &str, sii: &str| RegisterRequest {
        id: Some(id.into()),
        stage_instance_id: Some(sii.into()),
        ..RegisterRequest::default()
    };
    let a = emu
        .register_request(&reg(
            "00000000-0000-0000-0000-0000000000a1",
            "11111111-0000-0000-0000-0000000000a1",
        ))
        .unwrap();
    assert_eq!(a.catalog_id, DEFAULT_CATALOG);
    // The other one over HTTP, with catalog_id.
    let resp = common::http()
        .post(format!("{}/_emulator/requests", emu.base_url()))
        .json(&json!({
            "id": "00000000-0000-0000-0000-0000000000b1",
            "stage_instance_id": "11111111-0000-0000-0000-0000000000b1",
            "catalog_id": other_catalog,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["catalog_id"], other_catalog);

    emu.set_grants(
        &app,
        &Grants {
            graph_permissions: Some(vec![]),
            catalog_roles: Some(vec![CatalogRole {
                catalog_id: DEFAULT_CATALOG.into(),
                role: "Access package assignment manager".into(),
            }]),
            ..Default::default()
        },
    )
    .unwrap();
    let token = common::graph_token(&emu).await;
    assert!(claims_of(&token).get("roles").is_none());
    let (status, err) = common::post_resume(
        &emu,
        &token,
        "00000000-0000-0000-0000-0000000000b1",
        &common::resume_body(
            "assignmentRequestCreated",
            "11111111-0000-0000-0000-0000000000b1",
        ),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(err["error"]["code"], "Authorization_RequestDenied");
    assert_eq!(
        err["error"]["message"],
        "Insufficient privileges to complete the operation."
    );
    let (status, _) = common::post_resume(
        &emu,
        &token,
        "00000000-0000-0000-0000-0000000000a1",
        &common::resume_body(
            "assignmentRequestCreated",
            "11111111-0000-0000-0000-0000000000a1",
        ),
    )
    .await;
    assert_eq!(status, 204);
    let rec = emu.resumes().pop().unwrap();
    assert_eq!(rec.client_id, app);

    // Role assignments: own ones readable, another principal's not.
    let oid = emu.principal_object_id(&app).unwrap();
    let url = format!(
        "{}/beta/roleManagement/entitlementManagement/roleAssignments",
        emu.base_url()
    );
    let resp = common::http()
        .get(&url)
        .query(&[
            ("$filter", format!("principalId eq '{oid}'")),
            ("$expand", "roleDefinition".into()),
        ])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let item = &body["value"][0];
    assert_eq!(item["principalId"], oid.as_str());
    assert_eq!(
        item["appScopeId"],
        format!("/AccessPackageCatalog/{DEFAULT_CATALOG}")
    );
    assert_eq!(item["directoryScopeId"], "/");
    assert_eq!(
        item["roleDefinition"]["displayName"],
        "Access package assignment manager"
    );
    assert_eq!(item["roleDefinitionId"], item["roleDefinition"]["id"]);
    assert!(body["@odata.context"].is_string());

    let mi_oid = emu
        .principal_object_id(&emu.config().managed_identity_client_id)
        .unwrap();
    let resp = common::http()
        .get(&url)
        .query(&[("$filter", format!("principalId eq '{mi_oid}'"))])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = common::http()
        .get(&url)
        .query(&[("$filter", "displayName eq 'x'")])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // Principals over HTTP, and PUT of grants.
    let resp = common::http()
        .put(format!("{}/_emulator/principals/{app}", emu.base_url()))
        .json(&json!({"graph_permissions": ["EntitlementManagement.ReadWrite.All"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let list: Value = common::http()
        .get(format!("{}/_emulator/principals", emu.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 3);
    let resp = common::http()
        .put(format!("{}/_emulator/principals/unknown", emu.base_url()))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let token = common::graph_token(&emu).await;
    let (status, _) = common::post_resume(
        &emu,
        &token,
        "00000000-0000-0000-0000-0000000000b1",
        &common::resume_body(
            "assignmentRequestCreated",
            "11111111-0000-0000-0000-0000000000b1",
        ),
    )
    .await;
    assert_eq!(status, 204);

    // The call log saw every Graph call.
    let calls: Value = common::http()
        .get(format!("{}/_emulator/graph-calls", emu.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let statuses: Vec<u64> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [403, 204, 200, 403, 400, 204]);
    assert_eq!(calls[0]["method"], "POST");
    assert!(calls[0]["at_ms"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(emu.graph_calls().len(), 6);
}

#[tokio::test]
async fn ten_thousand_registrations() {
    let emu = common::start().await;
    let token = emu.mint_graph_token().unwrap();
    for i in 0..10_000u32 {
        emu.register_request(&RegisterRequest {
            id: Some(format!("req-{i}")),
            stage_instance_id: Some(format!("sii-{i}")),
            timeout: Some(if i % 2 == 0 { "PT1H" } else { "PT0S" }.into()),
            ..RegisterRequest::default()
        })
        .unwrap();
    }
    for i in (0..200u32).step_by(2) {
        let (status, err) = common::post_resume(
            &emu,
            &token,
            &format!("req-{i}"),
            &common::resume_body("assignmentRequestCreated", &format!("sii-{i}")),
        )
        .await;
        assert_eq!(status, 204, "{err}");
    }
    assert_eq!(emu.resumes().len(), 100);
    assert_eq!(emu.request("req-1").unwrap().status, "CallbackTimedOut");
    assert_eq!(emu.request("req-9999").unwrap().status, "CallbackTimedOut");
    assert_eq!(emu.request("req-2").unwrap().status, "PendingApproval");
    assert_eq!(
        emu.request("req-9998").unwrap().status,
        "WaitingForCallback"
    );
}
