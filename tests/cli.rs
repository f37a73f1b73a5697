//! The command line: `check-config` lists every problem at once (and passes a good config), and
//! a secret given to accessgate never shows up in anything it prints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use std::process::Command;

fn accessgate(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_accessgate"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn check_config_lists_every_problem_and_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
[identity]
tenant_id = "contoso.onmicrosoft.com"
authority = "http://login.example.com"
[graph]
base_url = "http://graph.example.com"
[policy]
file = "missing-policy.toml"
[worker]
concurrency = 0
"#,
    )
    .unwrap();
    let out = accessgate(&["check-config", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for s in [
        "identity.tenant_id",
        "identity.authority: plain http:// is only allowed to a loopback host",
        "graph.base_url",
        "credentials.client_id",
        "credentials.client_secret",
        "inbound.audiences",
        "policy.file",
        "worker.concurrency",
    ] {
        assert!(err.contains(s), "missing {s:?} in:\n{err}");
    }
}

#[test]
fn check_config_accepts_a_good_config_and_reports_policy_warnings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.toml"),
        "[[rules]]\nname = \"x\"\ndecision = \"deny\"\n",
    )
    .unwrap();
    let cfg = dir.path().join("good.toml");
    std::fs::write(
        &cfg,
        r#"
[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
[inbound]
audiences = ["api://accessgate"]
[credentials]
client_id = "aaaaaaaa-0000-0000-0000-000000000001"
[policy]
file = "policy.toml"
"#,
    )
    .unwrap();
    let out = accessgate(
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "not-printed-7f3a")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK") && stdout.contains("1 rule(s)"));
    assert!(
        stdout.contains("warning: rule \"x\": at assignmentRequestGranted"),
        "{stdout}"
    );
    assert!(!stdout.contains("not-printed-7f3a"));
}

/// The `at` claim of a PoP signed request.
fn inner_at(shr: &str) -> String {
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(shr.split('.').nth(1).unwrap())
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    v["at"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_and_tokens_never_appear_in_logs() {
    // Run a whole story, including failures (a wrong client secret makes the token endpoint
    // refuse), and look for the secret and every token in everything the process printed.
    let h = Harness::start("").await;
    let secret = h.emu().config().graph_client_secret.clone();
    let mut tokens = Vec::new();
    for o in [
        PopOptions::default(),
        PopOptions {
            tamper_signature: true,
            ..Default::default()
        },
        PopOptions {
            ts_offset_secs: Some(-600),
            ..Default::default()
        },
        PopOptions {
            at: Some(MintOptions {
                expires_in_secs: Some(-600),
                ..Default::default()
            }),
            ..Default::default()
        },
    ] {
        let auth = h.pop(o);
        let t = auth.trim_start_matches("PoP ").to_string();
        // The inner access token must not leak either.
        tokens.push(inner_at(&t));
        let _ = client()
            .post(h.callout_url())
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(flat_body(
                "assignmentRequestCreated",
                &uuid::Uuid::new_v4().to_string(),
                &uuid::Uuid::new_v4().to_string(),
            ))
            .send()
            .await
            .unwrap();
        tokens.push(t);
    }
    let r = h.send(SendOptions::default()).await;
    resumed(&h.emu(), &r.stage_instance_id).await;

    // Second process with a wrong secret: the failure path must not print it either.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &h.emu(), "");
    let wrong = "wrong-secret-d41d8cd98f00";
    let bad = Accessgate::spawn(
        &cfg,
        vec![("ACCESSGATE_CREDENTIALS__CLIENT_SECRET".into(), wrong.into())],
        &["serve"],
    )
    .await;
    let auth = h.pop(PopOptions::default());
    let t = auth.trim_start_matches("PoP ").to_string();
    tokens.push(inner_at(&t));
    let sid = uuid::Uuid::new_v4().to_string();
    let _ = client()
        .post(bad.url("/api/elm"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(flat_body("assignmentRequestCreated", "r-wrong", &sid))
        .send()
        .await
        .unwrap();
    bad.wait_log("token refused", |l| {
        l["message"] == "attempt failed; will retry"
            && l["reason"]
                .as_str()
                .unwrap_or("")
                .contains("invalid_client")
    })
    .await;
    tokens.push(t);

    let graph_token = h.emu().mint_graph_token().unwrap();
    let all = [h.ag.log_lines(), bad.log_lines()].concat().join("\n");
    assert!(!all.contains(&secret), "client secret leaked");
    assert!(!all.contains(wrong), "wrong client secret leaked");
    for t in &tokens {
        assert!(!all.contains(t.as_str()), "a callout token leaked");
        assert!(
            !all.contains(t.rsplit('.').next().unwrap()),
            "a token signature leaked"
        );
    }
    // Graph tokens are minted per request; their common header prefix must not show either.
    assert!(
        !all.contains(&graph_token[..40]),
        "a Graph access token leaked"
    );
}

/// The suite-wide secrets scan (every accessgate process's output, checked when it ends) must be
/// able to fail: it finds tokens by shape and the known secret values.
#[test]
fn the_secrets_scan_finds_tokens_and_known_secrets() {
    let token_line =
        "error: refused eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJhcGk6Ly94In0.c2lnbmF0dXJlLWJ5dGVz"
            .to_string();
    let secret_line = format!("client secret {}", KNOWN_SECRETS[0]);
    let clean = "callout accepted token=5f1c2a9b kid=abc eyJ short".to_string();
    assert_eq!(leaks(std::slice::from_ref(&token_line)).len(), 1);
    assert_eq!(leaks(&[secret_line]).len(), 1);
    assert!(leaks(&[clean]).is_empty());
    assert!(find_jwt(&token_line).is_some());
}

#[test]
fn check_config_shows_the_credentials_and_warns_about_a_missing_managed_identity() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mi.toml");
    std::fs::write(
        &cfg,
        r#"
[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
[inbound]
audiences = ["api://accessgate"]
[credentials]
mode = "key_vault_certificate"
client_id = "aaaaaaaa-0000-0000-0000-000000000001"
key_vault_url = "https://contoso-ag.vault.azure.net"
certificate_name = "accessgate-graph"
[queue]
backend = "azure_storage"
account_url = "https://contosoag.queue.core.windows.net"
"#,
    )
    .unwrap();
    let out = accessgate(
        &["check-config", "--config", cfg.to_str().unwrap()],
        &[("IDENTITY_ENDPOINT", ""), ("IDENTITY_HEADER", "")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a warning is not a failure:\n{text}"
    );
    assert!(
        text.contains("key_vault_certificate mode: app aaaaaaaa-0000-0000-0000-000000000001 with certificate accessgate-graph from https://contoso-ag.vault.azure.net, signed by Key Vault"),
        "{text}"
    );
    assert!(text.contains("Azure Storage https://contosoag.queue.core.windows.net/accessgate-jobs (poison: accessgate-jobs-poison), Entra token"), "{text}");
    assert!(text.contains("warning: IDENTITY_ENDPOINT"), "{text}");
}
