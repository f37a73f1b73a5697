//! `accessgate doctor` against the emulator: a healthy setup passes every check; each broken
//! piece fails its own check with the fix, and the report never shows a secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/azurite.rs"]
mod azurite;
mod common;

use std::process::Command;

use common::*;

struct Report {
    code: Option<i32>,
    out: String,
}

fn doctor(config: &std::path::Path, env: &[(String, String)]) -> Report {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_accessgate"));
    cmd.arg("doctor").arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(leaks(&lines).is_empty(), "doctor printed a secret:\n{text}");
    Report {
        code: out.status.code(),
        out: text,
    }
}

fn line<'a>(r: &'a Report, name: &str) -> &'a str {
    r.out
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no {name} line in:\n{}", r.out))
}

fn cert_config(dir: &std::path::Path, emu: &Emulator, catalog: &str) -> std::path::PathBuf {
    let extra = format!(
        "[credentials]\nmode = \"key_vault_certificate\"\nclient_id = \"{}\"\nkey_vault_url = \"{}\"\ncertificate_name = \"graph-cert\"\n",
        emu.config().graph_client_id,
        emu.key_vault_url()
    );
    let path = write_config_with(dir, emu, "", &extra);
    // Name the catalog the extension serves, so doctor can check the role on it.
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "[extensions.elm]\n",
        &format!("[extensions.elm]\ncatalog_ids = [\"{catalog}\"]\n"),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// What `accessgate setup` does before `doctor` runs: the custom extensions the configuration
/// names exist in the tenant (the elm one in `catalog`, if given), and the configuration names
/// them back (setup writes `cfg`).
async fn set_up_extensions(
    e: &Emulator,
    dir: &std::path::Path,
    cfg: &std::path::Path,
    env: &[(String, String)],
    catalog: Option<&str>,
) {
    // Setup also needs to create the task extension; the grants in force are restored after.
    let before = app_principal(e).graph_permissions;
    let mut permissions = before.clone();
    permissions.push("LifecycleWorkflows-CustomExt.ReadWrite.All".into());
    grant_app(e, permissions);
    let mut text = format!(
        "[deployment]\ningress_mode = \"direct\"\nurl = \"{}\"\nlogic_app_resource_id = \"{}\"\n[lifecycle_workflows]\nlogic_app_resource_id = \"{}\"\n",
        e.base_url(),
        e.config().logic_app_resource,
        e.config().lcw_logic_app_resource
    );
    if let Some(c) = catalog {
        let world = serde_json::json!({"catalogs": [{"id": c, "displayName": "General"}]});
        e.load_world(&serde_json::from_value(world).unwrap())
            .unwrap();
        text.push_str("[access_packages]\ncatalog = \"General\"\nassign_role = false\n");
    }
    let file = dir.join("setup.toml");
    std::fs::write(&file, text).unwrap();
    let args = [
        "setup",
        "--config",
        &cfg.display().to_string(),
        "--file",
        &file.display().to_string(),
    ]
    .map(str::to_owned)
    .to_vec();
    let (code, out) = run_cli(args, env.to_vec()).await;
    assert_eq!(code, Some(0), "{out}");
    grant_app(e, before);
}

#[tokio::test]
async fn a_healthy_setup_passes_every_check() {
    let emu = start_emulator().await;
    let e = emu.handle();
    e.create_certificate("graph-cert", CertificateOptions::default())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cert_config(dir.path(), &e, DEFAULT_CATALOG);
    set_up_extensions(&e, dir.path(), &cfg, &mi_env(&e), Some(DEFAULT_CATALOG)).await;
    let r = tokio::task::spawn_blocking({
        let env = mi_env(&e);
        move || doctor(&cfg, &env)
    })
    .await
    .unwrap();
    assert_eq!(r.code, Some(0), "{}", r.out);
    for name in [
        "configuration",
        "identity host",
        "managed identity",
        "key vault",
        "graph token",
        "resume permission",
        "extension elm",
        "extension lcw",
        "queue",
    ] {
        assert!(line(&r, name).starts_with("PASS"), "{name}:\n{}", r.out);
    }
    assert!(
        line(&r, "key vault").contains("signed by Key Vault"),
        "{}",
        r.out
    );
}

#[tokio::test]
async fn each_broken_piece_fails_with_its_fix() {
    let emu = start_emulator().await;
    let e = emu.handle();
    e.create_certificate("graph-cert", CertificateOptions::default())
        .unwrap();
    // The app has neither the Graph permission nor a catalog role.
    e.set_grants(
        &e.config().graph_client_id,
        &Grants {
            graph_permissions: Some(vec![]),
            ..Default::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = cert_config(dir.path(), &e, DEFAULT_CATALOG);
    let env = mi_env(&e);
    let run = |cfg: std::path::PathBuf, env: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || doctor(&cfg, &env))
    };
    let r = run(cfg.clone(), env.clone()).await.unwrap();
    assert_eq!(r.code, Some(1), "{}", r.out);
    let perm = line(&r, "resume permission");
    assert!(perm.starts_with("FAIL"), "{}", r.out);
    assert!(perm.contains(DEFAULT_CATALOG), "{}", r.out);
    assert!(
        r.out.contains("fix: in Entra ID Governance > Catalogs"),
        "{}",
        r.out
    );

    // Granting the catalog role (least privilege) makes the check pass.
    e.set_grants(
        &e.config().graph_client_id,
        &Grants {
            catalog_roles: Some(vec![CatalogRole {
                catalog_id: DEFAULT_CATALOG.into(),
                role: "Access package assignment manager".into(),
            }]),
            ..Default::default()
        },
    )
    .unwrap();
    let r = run(cfg.clone(), env.clone()).await.unwrap();
    assert!(
        line(&r, "resume permission").starts_with("PASS"),
        "{}",
        r.out
    );

    // The managed identity may not use the key: the Key Vault check names the role.
    e.set_grants(
        &e.config().managed_identity_client_id,
        &Grants {
            key_vault_roles: Some(vec![]),
            ..Default::default()
        },
    )
    .unwrap();
    let r = run(cfg.clone(), env.clone()).await.unwrap();
    let kv = line(&r, "key vault");
    assert!(kv.starts_with("FAIL"), "{}", r.out);
    assert!(kv.contains("Key Vault Certificate User"), "{}", r.out);
    assert!(line(&r, "graph token").starts_with("FAIL"), "{}", r.out);

    // No managed identity at all.
    let r = run(cfg, Vec::new()).await.unwrap();
    let mi = line(&r, "managed identity");
    assert!(
        mi.starts_with("FAIL") && mi.contains("IDENTITY_ENDPOINT"),
        "{}",
        r.out
    );
    assert_eq!(r.code, Some(1));
}

#[tokio::test]
async fn the_storage_queue_is_checked_too() {
    let az = azurite::Azurite::start();
    let emu = start_emulator().await;
    let e = emu.handle();
    let dir = tempfile::tempdir().unwrap();
    let name = azurite::unique_queue_name("ag-doctor");
    let cfg = write_config(
        dir.path(),
        &e,
        &format!("[queue]\nbackend = \"azure_storage\"\nname = \"{name}\"\n"),
    );
    let conn = az.connection_string();
    let env = vec![
        (
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
            e.config().graph_client_secret.clone(),
        ),
        ("ACCESSGATE_QUEUE__CONNECTION_STRING".to_string(), conn),
    ];
    set_up_extensions(&e, dir.path(), &cfg, &env, None).await;
    let r = tokio::task::spawn_blocking(move || doctor(&cfg, &env))
        .await
        .unwrap();
    let q = line(&r, "queue");
    assert!(q.starts_with("PASS") && q.contains(&name), "{}", r.out);
    assert_eq!(r.code, Some(0), "{}", r.out);
}

/// The directory permissions the policy's checks read with, against the Graph token's roles.
#[tokio::test]
async fn the_policys_directory_reads_are_checked_against_the_tokens_permissions() {
    let emu = start_emulator().await;
    let e = emu.handle();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "version = 1\n[checks.hr]\ntype = \"hr\"\n[[rules]]\nname = \"all\"\nchecks = [\"hr\"]\n[[rules]]\nname = \"leavers\"\ncategories = [\"leaver\"]\ndecision = \"continue\"\n",
    )
    .unwrap();
    let cfg = write_config(
        dir.path(),
        &e,
        &format!("[policy]\nfile = \"{}\"\n", policy.display()),
    );
    let env = vec![(
        "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
        e.config().graph_client_secret.clone(),
    )];
    let run = |env: Vec<(String, String)>| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || doctor(&cfg, &env))
    };
    let r = run(env.clone()).await.unwrap();
    let l = line(&r, "directory permissions");
    assert!(l.starts_with("PASS"), "{}", r.out);
    assert!(
        l.contains("User-LifeCycleInfo.Read.All") && l.contains("LifecycleWorkflows.Read.All"),
        "{l}"
    );
    // Only the resume permission: the hr check and the category read would fail at run time.
    e.set_grants(
        &e.config().graph_client_id,
        &Grants {
            graph_permissions: Some(vec!["EntitlementManagement.ReadWrite.All".into()]),
            ..Default::default()
        },
    )
    .unwrap();
    let r = run(env).await.unwrap();
    let l = line(&r, "directory permissions");
    assert!(l.starts_with("FAIL"), "{}", r.out);
    assert!(
        l.contains("User-LifeCycleInfo.Read.All") && l.contains("LifecycleWorkflows.Read.All"),
        "{l}"
    );
    assert!(r.out.contains("Grant admin consent"), "{}", r.out);
    assert_eq!(r.code, Some(1));
}

/// The relay Logic App (relay mode) and the Function App's always-ready instances, read from
/// Azure Resource Manager with the managed identity.
#[tokio::test]
async fn the_relay_logic_app_and_always_ready_are_read_from_arm() {
    let emu = start_emulator().await;
    let e = emu.handle();
    let dir = tempfile::tempdir().unwrap();
    let logic_app = e.config().logic_app_resource.clone();
    let site = "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg-accessgate/providers/Microsoft.Web/sites/func-accessgate";
    let cfg = write_config_with(
        dir.path(),
        &e,
        "mode = \"relay\"\nrelay_audiences = [\"https://management.azure.com/\"]\nrelay_caller_ids = [\"aaaaaaaa-0000-0000-0000-000000000009\"]\n",
        &format!("[azure]\nmanagement_url = \"@EMULATOR_URL@\"\nfunction_app = \"{site}\"\n"),
    );
    let mut env = mi_env(&e);
    env.push((
        "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".into(),
        e.config().graph_client_secret.clone(),
    ));
    // As infra/modules/relay.bicep deploys it, in ARM's GET shape.
    let relay = |appid: &str, sas: &str, audience: &str| {
        serde_json::json!({
            "type": "Microsoft.Logic/workflows",
            "properties": {
                "state": "Enabled",
                "accessControl": {"triggers": {
                    "sasAuthenticationPolicy": {"state": sas},
                    "openAuthenticationPolicies": {"policies": {
                        "AzureADEntitlementManagementPOPAuthPolicy": {"type": "AADPOP", "claims": [
                            {"name": "iss", "value": format!("https://sts.windows.net/{}/", e.config().tenant_id)},
                            {"name": "appid", "value": appid},
                            {"name": "m", "value": "POST"},
                            {"name": "u", "value": "management.azure.com"},
                            {"name": "p", "value": logic_app.clone()}
                        ]}
                    }}
                }},
                "definition": {"actions": {"forward_to_accessgate": {
                    "type": "Http",
                    "inputs": {"method": "POST", "uri": "https://func-accessgate.azurewebsites.net/api/elm",
                               "authentication": {"type": "ManagedServiceIdentity", "audience": audience}}
                }}}
            }
        })
    };
    let flex = |ready: i64| {
        serde_json::json!({"properties": {"sku": "FlexConsumption", "functionAppConfig": {
            "scaleAndConcurrency": {"alwaysReady": [{"name": "http", "instanceCount": ready}]}
        }}})
    };
    let run = |env: Vec<(String, String)>| {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || doctor(&cfg, &env))
    };

    e.put_arm_resource(
        &logic_app,
        relay(
            accessgate_emulator::entra::ELM_APP_ID,
            "Disabled",
            "https://management.azure.com/",
        ),
        vec![],
    )
    .unwrap();
    e.put_arm_resource(site, flex(1), vec![]).unwrap();
    let r = run(env.clone()).await.unwrap();
    assert!(line(&r, "relay elm").starts_with("PASS"), "{}", r.out);
    let ready = line(&r, "always ready");
    assert!(
        ready.starts_with("PASS") && ready.contains("1 always-ready"),
        "{}",
        r.out
    );

    // Another caller admitted, SAS on, a token accessgate refuses; no warm instance.
    e.put_arm_resource(
        &logic_app,
        relay(
            "00000000-0000-0000-0000-000000000001",
            "Enabled",
            "api://other",
        ),
        vec![],
    )
    .unwrap();
    e.put_arm_resource(site, flex(0), vec![]).unwrap();
    let r = run(env.clone()).await.unwrap();
    let l = line(&r, "relay elm");
    assert!(l.starts_with("FAIL"), "{}", r.out);
    for says in [
        "appid claim",
        "SAS is not disabled",
        "inbound.relay_audiences does not accept",
    ] {
        assert!(l.contains(says), "{says:?} missing: {}", r.out);
    }
    assert!(line(&r, "always ready").starts_with("FAIL"), "{}", r.out);
    assert!(r.out.contains("ACCESSGATE_ALWAYS_READY"), "{}", r.out);

    // No read role: a warning naming the role, not a failure of the relay itself.
    e.put_arm_resource(
        site,
        flex(1),
        vec!["00000000-0000-0000-0000-00000000beef".into()],
    )
    .unwrap();
    let r = run(env.clone()).await.unwrap();
    let l = line(&r, "always ready");
    assert!(
        l.starts_with("WARN") && r.out.contains("Reader role"),
        "{}",
        r.out
    );

    // Without a managed identity the ARM checks say why they were skipped.
    let r = run(vec![(
        "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".into(),
        e.config().graph_client_secret.clone(),
    )])
    .await
    .unwrap();
    assert!(line(&r, "azure resources").starts_with("WARN"), "{}", r.out);
}
