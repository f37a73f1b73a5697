//! Each credential mode against the emulator (managed identity, workload identity, Key Vault
//! secret with rotation, Key Vault certificate signed locally or by the vault), and what happens
//! when a piece is missing, slow, malformed or not permitted: a clear error naming the setting,
//! and callouts still acknowledged, waiting in the queue.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

/// Emulator + accessgate with `credentials` as the `[credentials]` section and `env`; the
/// emulator is started first so that the section can name its URLs.
async fn start(
    credentials: impl FnOnce(&Emulator) -> String,
    env: impl FnOnce(&Emulator) -> Vec<(String, String)>,
) -> Harness {
    let emu = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = emu.handle();
    let extra = format!("[credentials]\n{}\n", credentials(&handle));
    let config = write_config_with(dir.path(), &handle, "", &extra);
    let env = env(&handle);
    let ag = Accessgate::spawn(&config, env, &["serve"]).await;
    Harness { emu, ag, dir }
}

/// `[credentials]` lines: the emulator's app with its client secret in Key Vault secret
/// `graph-secret`.
fn key_vault_secret_section(e: &Emulator) -> String {
    format!(
        "mode = \"key_vault_secret\"\nclient_id = \"{}\"\nkey_vault_url = \"{}\"\nsecret_name = \"graph-secret\"",
        e.config().graph_client_id,
        e.key_vault_url()
    )
}

/// `[credentials]` lines: the emulator's app with Key Vault certificate `graph-cert`.
fn key_vault_certificate_section(e: &Emulator, sign_with: &str) -> String {
    format!(
        "mode = \"key_vault_certificate\"\nclient_id = \"{}\"\nkey_vault_url = \"{}\"\ncertificate_name = \"graph-cert\"\nsign_with = \"{sign_with}\"",
        e.config().graph_client_id,
        e.key_vault_url()
    )
}

fn with_timeout(mut env: Vec<(String, String)>) -> Vec<(String, String)> {
    env.push(("ACCESSGATE_GRAPH__TIMEOUT_SECONDS".into(), "1".into()));
    env
}

/// Waits for a "will retry" log line whose reason contains `needle`.
async fn retry_reason(h: &Harness, needle: &str) -> String {
    let v =
        h.ag.wait_log(needle, |l| {
            l["message"] == "attempt failed; will retry"
                && l["reason"].as_str().unwrap_or("").contains(needle)
        })
        .await;
    v["reason"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn system_assigned_managed_identity_resumes() {
    let h = start(|_| "mode = \"managed_identity\"".into(), mi_env).await;
    let r = h.send(SendOptions::default()).await;
    assert_eq!(r.status, Some(202));
    let rec = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(rec.client_id, h.emu().config().managed_identity_client_id);
}

#[tokio::test]
async fn user_assigned_managed_identity_resumes_as_itself() {
    let h = start(
        |e| {
            format!(
                "mode = \"managed_identity\"\nmanaged_identity_client_id = \"{}\"",
                e.config().user_assigned_client_id
            )
        },
        mi_env,
    )
    .await;
    let r = h.send(SendOptions::default()).await;
    let rec = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(rec.client_id, h.emu().config().user_assigned_client_id);
}

#[tokio::test]
async fn workload_identity_federation_reads_the_projected_token_each_time() {
    let emu = start_emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, emu.mint_federated_token(3600).unwrap()).unwrap();
    let handle = emu.handle();
    let extra = format!(
        "[credentials]\nmode = \"workload_identity\"\nclient_id = \"{}\"\n",
        handle.config().graph_client_id
    );
    let config = write_config_with(dir.path(), &handle, "", &extra);
    let env = vec![(
        "AZURE_FEDERATED_TOKEN_FILE".to_string(),
        file.display().to_string(),
    )];
    let ag = Accessgate::spawn(&config, env, &["serve"]).await;
    let h = Harness { emu, ag, dir };
    let r = h.send(SendOptions::default()).await;
    let rec = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(rec.client_id, h.emu().config().graph_client_id);
}

#[tokio::test]
async fn key_vault_secret_is_read_with_the_managed_identity_and_refetched_after_rotation() {
    let h = start(
        |e| {
            e.put_secret("graph-secret", "kv-secret-1").unwrap();
            e.set_client_secret("kv-secret-1").unwrap();
            key_vault_secret_section(e)
        },
        mi_env,
    )
    .await;
    let emu = h.emu();
    let first = h.send(SendOptions::default()).await;
    resumed(&emu, &first.stage_instance_id).await;

    // Rotation: the app accepts only the new secret, and the vault holds it. Graph's next 401
    // makes accessgate fetch a token again; the cached secret is refused, so it reads the vault.
    emu.set_client_secret("rotated-secret-2").unwrap();
    emu.put_secret("graph-secret", "rotated-secret-2").unwrap();
    emu.set_fault(&FaultSpec {
        status: Some(401),
        count: Some(1),
        ..graph_fault()
    })
    .unwrap();
    let second = h.send(SendOptions::default()).await;
    assert_eq!(second.status, Some(202));
    resumed(&emu, &second.stage_instance_id).await;
    h.ag.wait_log("secret re-read", |l| {
        l["message"]
            .as_str()
            .unwrap_or("")
            .contains("reading it from Key Vault again")
    })
    .await;
}

async fn certificate_mode_resumes(sign_with: &str) {
    let h = start(
        |e| {
            e.create_certificate("graph-cert", CertificateOptions::default())
                .unwrap();
            key_vault_certificate_section(e, sign_with)
        },
        mi_env,
    )
    .await;
    let r = h.send(SendOptions::default()).await;
    let rec = resumed(&h.emu(), &r.stage_instance_id).await;
    assert_eq!(rec.client_id, h.emu().config().graph_client_id);
}

#[tokio::test]
async fn certificate_assertion_signed_by_key_vault_resumes() {
    certificate_mode_resumes("key_vault").await;
}

#[tokio::test]
async fn certificate_assertion_signed_locally_resumes() {
    certificate_mode_resumes("local").await;
}

#[tokio::test]
async fn an_expired_certificate_names_the_setting_and_callouts_wait() {
    let h = start(
        |e| {
            e.create_certificate(
                "graph-cert",
                CertificateOptions {
                    valid_days: -1,
                    ..Default::default()
                },
            )
            .unwrap();
            key_vault_certificate_section(e, "key_vault")
        },
        mi_env,
    )
    .await;
    let r = h.send(SendOptions::default()).await;
    assert_eq!(
        r.status,
        Some(202),
        "acknowledged although no token can be had"
    );
    let reason = retry_reason(&h, "expired").await;
    assert!(reason.contains("credentials.certificate_name"), "{reason}");
    let again = h.send(SendOptions::default()).await;
    assert_eq!(again.status, Some(202), "the service keeps acknowledging");
    let counts = h.job_counts().await;
    assert!(counts.get("dead").is_none(), "{counts}");
    assert!(h.emu().resumes().is_empty());
}

#[tokio::test]
async fn no_managed_identity_endpoint_names_identity_endpoint_and_callouts_wait() {
    let h = start(|_| "mode = \"managed_identity\"".into(), |_| Vec::new()).await;
    h.ag.wait_log("start-up warning", |l| {
        l["setting"] == "IDENTITY_ENDPOINT" && l["level"] == "WARN"
    })
    .await;
    let r = h.send(SendOptions::default()).await;
    assert_eq!(r.status, Some(202));
    retry_reason(&h, "IDENTITY_ENDPOINT").await;
}

#[tokio::test]
async fn a_slow_managed_identity_endpoint_times_out_then_recovers() {
    let h = start(
        |_| "mode = \"managed_identity\"".into(),
        |e| with_timeout(mi_env(e)),
    )
    .await;
    let emu = h.emu();
    emu.set_fault(&FaultSpec {
        target: FaultTarget::ManagedIdentity,
        delay_ms: Some(3000),
        ..graph_fault()
    })
    .unwrap();
    let r = h.send(SendOptions::default()).await;
    assert_eq!(r.status, Some(202));
    retry_reason(&h, "managed identity endpoint unavailable: timed out").await;
    emu.clear_faults();
    resumed(&emu, &r.stage_instance_id).await;
}

#[tokio::test]
async fn a_malformed_key_vault_answer_names_the_setting_then_recovers() {
    let h = start(
        |e| {
            e.put_secret("graph-secret", "kv-secret-3").unwrap();
            e.set_client_secret("kv-secret-3").unwrap();
            e.set_fault(&FaultSpec {
                target: FaultTarget::Keyvault,
                malformed: true,
                ..graph_fault()
            })
            .unwrap();
            key_vault_secret_section(e)
        },
        mi_env,
    )
    .await;
    let r = h.send(SendOptions::default()).await;
    assert_eq!(r.status, Some(202));
    let reason = retry_reason(&h, "credentials.secret_name").await;
    assert!(reason.contains("unreadable"), "{reason}");
    h.emu().clear_faults();
    resumed(&h.emu(), &r.stage_instance_id).await;
}

#[tokio::test]
async fn a_managed_identity_without_the_key_vault_role_is_told_which_role() {
    let h = start(
        |e| {
            e.put_secret("graph-secret", "kv-secret-4").unwrap();
            e.set_grants(
                &e.config().managed_identity_client_id,
                &Grants {
                    key_vault_roles: Some(vec![]),
                    ..Default::default()
                },
            )
            .unwrap();
            key_vault_secret_section(e)
        },
        mi_env,
    )
    .await;
    h.send(SendOptions::default()).await;
    let reason = retry_reason(&h, "Key Vault Secrets User").await;
    assert!(reason.contains("credentials.key_vault_url"), "{reason}");
}

#[tokio::test]
async fn graph_403_explains_the_catalog_role_and_the_callout_waits() {
    let h = Harness::start("").await;
    let emu = h.emu();
    emu.set_grants(
        &emu.config().graph_client_id,
        &Grants {
            graph_permissions: Some(vec![]),
            ..Default::default()
        },
    )
    .unwrap();
    let r = h.send(SendOptions::default()).await;
    assert_eq!(r.status, Some(202));
    let reason = retry_reason(&h, "Access package assignment manager role on catalog").await;
    assert!(reason.contains(&emu.config().graph_client_id), "{reason}");
    // Granting the catalog role (least privilege) lets the waiting callout through.
    emu.set_grants(
        &emu.config().graph_client_id,
        &Grants {
            catalog_roles: Some(vec![CatalogRole {
                // The catalog the callout names (the sender's default), where Graph has the request.
                catalog_id: SENDER_CATALOG.into(),
                role: "Access package assignment manager".into(),
            }]),
            ..Default::default()
        },
    )
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), resumed(&emu, &r.stage_instance_id))
        .await
        .expect("resumed once the role is granted");
}
