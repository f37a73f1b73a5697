//! `accessgate setup` against the emulator's Graph: plan, apply, re-run, and every refusal the
//! issue names (missing catalog, package of another catalog, stage taken by another extension,
//! missing permission, missing Logic App), each with nothing half-applied; Lifecycle Workflows
//! and PIM (device-code sign-in) extensions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

const CATALOG: &str = "c0000000-0000-0000-0000-0000000000aa";
const OTHER_CATALOG: &str = "c0000000-0000-0000-0000-0000000000bb";
const PACKAGE: &str = "a0000000-0000-0000-0000-0000000000aa";
const LEDGER: &str = "a0000000-0000-0000-0000-0000000000bb";
const EMPLOYEES: &str = "p0000000-0000-0000-0000-0000000000a1";
const CONTRACTORS: &str = "p0000000-0000-0000-0000-0000000000a2";
const OTHER_EXTENSION: &str = "e0000000-0000-0000-0000-0000000000ee";
const LCW_LOGIC_APP: &str = "/subscriptions/38ab2ccc-3747-4567-b36b-9478f5602f0d/resourceGroups/rg-tasks/providers/Microsoft.Logic/workflows/logic-tasks";

fn world() -> Value {
    json!({
        "users": [],
        "catalogs": [
            {"id": CATALOG, "displayName": "General"},
            {"id": OTHER_CATALOG, "displayName": "Finance"}
        ],
        "accessPackages": [
            {"id": PACKAGE, "displayName": "Sales tools", "catalogId": CATALOG},
            {"id": LEDGER, "displayName": "Ledger", "catalogId": OTHER_CATALOG}
        ],
        "assignmentPolicies": [
            {"id": EMPLOYEES, "displayName": "Employees", "accessPackageId": PACKAGE},
            {"id": CONTRACTORS, "displayName": "Contractors", "accessPackageId": PACKAGE,
             "customExtensionStageSettings": [{"stage": "assignmentRequestGranted", "customExtensionId": OTHER_EXTENSION}]}
        ],
        "customExtensions": [
            {"id": OTHER_EXTENSION, "catalogId": CATALOG, "displayName": "Ticket bot"}
        ],
        "logicApps": [LCW_LOGIC_APP]
    })
}

struct Setup {
    emu: RunningEmulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    outputs: PathBuf,
}

impl Setup {
    async fn start() -> Setup {
        let emu = start_emulator().await;
        let e = emu.handle();
        e.load_world(&serde_json::from_value(world()).unwrap())
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &e, "");
        // The config the harness writes has its own [extensions.elm]: setup's target here is a
        // fresh file, so what it writes is all there is to compare.
        let fresh = dir.path().join("written.toml");
        std::fs::write(&fresh, "# written by setup\n").unwrap();
        let principal = app_principal(&e).object_id;
        let outputs = dir.path().join("outputs.env");
        std::fs::write(
            &outputs,
            format!(
                "ACCESSGATE_URL=\"{base}\"\nACCESSGATE_PRINCIPAL_ID=\"{principal}\"\nACCESSGATE_LOGIC_APP_RESOURCE_ID=\"{la}\"\nACCESSGATE_LOGIC_APP_URL=\"{base}/workflows/relay/triggers/manual/paths/invoke?api-version=2016-10-01\"\nACCESSGATE_INGRESS_MODE=\"relay\"\n",
                base = e.base_url(),
                la = e.config().logic_app_resource,
            ),
        )
        .unwrap();
        Setup {
            emu,
            dir,
            config,
            outputs,
        }
    }

    fn written(&self) -> PathBuf {
        self.dir.path().join("written.toml")
    }

    fn file(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("setup.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    async fn run(&self, file: &Path, extra: &[&str]) -> (Option<i32>, String) {
        let mut args: Vec<String> = vec![
            "setup".into(),
            "--config".into(),
            self.config.display().to_string(),
            "--file".into(),
            file.display().to_string(),
            "--outputs".into(),
            self.outputs.display().to_string(),
        ];
        if !extra.contains(&"--write-config") {
            args.extend([
                "--write-config".into(),
                self.written().display().to_string(),
            ]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let e = self.emu.handle();
        let env: Vec<(String, String)> = vec![(
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".into(),
            e.config().graph_client_secret.clone(),
        )];
        let (code, text) = run_cli(args, env).await;
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        assert!(leaks(&lines).is_empty(), "setup printed a secret:\n{text}");
        (code, text)
    }

    /// Graph writes (POST, PUT, PATCH) the emulator has seen.
    fn writes(&self) -> Vec<String> {
        self.emu
            .handle()
            .graph_calls()
            .into_iter()
            .filter(|c| matches!(c.method.as_str(), "POST" | "PUT" | "PATCH"))
            .map(|c| format!("{} {} {}", c.method, c.path, c.status))
            .collect()
    }

    async fn graph_get(&self, path: &str) -> Value {
        graph_get(&self.emu.handle(), path).await
    }
}

/// A v1.0 Graph GET as accessgate's app: what Entra holds.
async fn graph_get(emu: &Emulator, path: &str) -> Value {
    let token = emu.mint_graph_token().unwrap();
    client()
        .get(format!("{}/v1.0{path}", emu.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

const ELM: &str = r#"
[access_packages]
catalog = "General"
callback_timeout = "PT12H"

[[access_packages.policies]]
access_package = "Sales tools"
policies = ["Employees"]
stages = ["assignmentRequestCreated", "assignmentRequestApproved"]
"#;

#[tokio::test]
async fn plan_then_apply_then_nothing_to_change() {
    let s = Setup::start().await;
    let file = s.file(ELM);

    // --plan: the diff, and nothing written.
    let (code, out) = s.run(&file, &["--plan"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("+ create access package custom extension \"accessgate\""),
        "{out}"
    );
    assert!(
        out.contains("+ callbackConfiguration.timeoutDuration: \"PT12H\""),
        "{out}"
    );
    assert!(
        out.contains("+ customExtensionStageSettings: assignmentRequestCreated -> \"accessgate\""),
        "{out}"
    );
    assert!(out.contains("Access package assignment manager"), "{out}");
    assert!(out.contains("Plan: 2 to create, 2 to change."), "{out}");
    assert!(s.writes().is_empty(), "--plan wrote: {:?}", s.writes());
    assert_eq!(
        std::fs::read_to_string(s.written()).unwrap(),
        "# written by setup\n"
    );

    // Apply.
    let (code, out) = s.run(&file, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Applied 4 of 4 step(s)."), "{out}");

    // The extension as Graph now has it: schema names, PoP, the relay's trigger URL.
    let list = s
        .graph_get(&format!(
            "/identityGovernance/entitlementManagement/catalogs/{CATALOG}/customWorkflowExtensions"
        ))
        .await;
    let ext = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["displayName"] == "accessgate")
        .unwrap_or_else(|| panic!("no extension in {list}"))
        .clone();
    assert_eq!(
        ext["authenticationConfiguration"]["@odata.type"],
        "#microsoft.graph.azureAdPopTokenAuthentication"
    );
    assert_eq!(ext["callbackConfiguration"]["timeoutDuration"], "PT12H");
    let la = s.emu.handle().config().logic_app_resource.clone();
    assert!(
        la.ends_with(
            ext["endpointConfiguration"]["logicAppWorkflowName"]
                .as_str()
                .unwrap()
        )
    );
    assert!(
        ext["endpointConfiguration"]["url"]
            .as_str()
            .unwrap()
            .contains("/triggers/manual/paths/invoke")
    );
    let ext_id = ext["id"].as_str().unwrap().to_owned();

    // The policy runs it at both stages; the other policy is untouched.
    let policy = s
        .graph_get(&format!(
            "/identityGovernance/entitlementManagement/assignmentPolicies/{EMPLOYEES}?$expand=customExtensionStageSettings($expand=customExtension)"
        ))
        .await;
    let stages: Vec<(String, String)> = policy["customExtensionStageSettings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_owned(),
                s["customExtension"]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        vec![
            ("assignmentRequestCreated".to_owned(), ext_id.clone()),
            ("assignmentRequestApproved".to_owned(), ext_id.clone())
        ]
    );

    // accessgate's identity holds the least catalog role that resumes.
    let principal = app_principal(&s.emu.handle());
    assert!(
        principal
            .catalog_roles
            .iter()
            .any(|r| r.catalog_id == CATALOG && r.role == "Access package assignment manager"),
        "{:?}",
        principal.catalog_roles
    );

    // The configuration names the extension, and accessgate accepts it.
    let written = std::fs::read_to_string(s.written()).unwrap();
    assert!(written.contains("# written by setup\n"), "{written}");
    assert!(written.contains("[extensions.elm]"), "{written}");
    assert!(
        written.contains(&format!("resource = \"{la}\"")),
        "{written}"
    );
    assert!(
        written.contains(&format!("catalog_ids = [\"{CATALOG}\"]")),
        "{written}"
    );

    // Second run: nothing to change, nothing written.
    let before = s.writes().len();
    let (code, out) = s.run(&file, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Nothing to change."), "{out}");
    assert_eq!(s.writes().len(), before, "{:?}", s.writes());

    // A changed timeout is an update of that one property.
    let file = s.file(&ELM.replace("PT12H", "P2D"));
    let (code, out) = s.run(&file, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("~ callbackConfiguration.timeoutDuration: \"PT12H\" -> \"P2D\""),
        "{out}"
    );
    assert!(out.contains("Applied 1 of 1 step(s)."), "{out}");
}

/// Every refusal names its fix, and a run that finds one writes nothing.
#[tokio::test]
async fn bad_input_is_refused_before_anything_is_written() {
    let s = Setup::start().await;
    let cases: [(&str, &[&str]); 4] = [
        (
            "[access_packages]\ncatalog = \"Nope\"\n",
            &["catalog \"Nope\" does not exist", "access_packages.catalog"],
        ),
        (
            "[access_packages]\ncatalog = \"General\"\n[[access_packages.policies]]\naccess_package = \"Ledger\"\nstages = [\"assignmentRequestCreated\"]\n",
            &[
                "access package \"Ledger\" is in catalog \"Finance\"",
                "not in \"General\"",
            ],
        ),
        (
            "[access_packages]\ncatalog = \"General\"\n[[access_packages.policies]]\naccess_package = \"Sales tools\"\npolicies = [\"Contractors\"]\nstages = [\"assignmentRequestGranted\"]\n",
            &[
                "already runs extension \"Ticket bot\"",
                "Remove it from the policy",
            ],
        ),
        (
            "[access_packages]\ncatalog = \"General\"\n[[access_packages.policies]]\naccess_package = \"Sales tools\"\npolicies = [\"Interns\"]\nstages = [\"assignmentRequestGranted\"]\n",
            &[
                "has no assignment policy \"Interns\"",
                "\"Employees\", \"Contractors\"",
            ],
        ),
    ];
    for (text, says) in cases {
        let (code, out) = s.run(&s.file(text), &[]).await;
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("nothing was changed"), "{out}");
        for w in says {
            assert!(out.contains(w), "{w:?} missing from:\n{out}");
        }
    }
    // The setup file itself: every problem at once, exit 2.
    let (code, out) = s
        .run(
            &s.file("[access_packages]\ncallback_timeout = \"P30D\"\n"),
            &[],
        )
        .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("access_packages.catalog"), "{out}");
    assert!(out.contains("PT5M to P14D"), "{out}");
    assert!(s.writes().is_empty(), "{:?}", s.writes());
}

#[tokio::test]
async fn a_missing_permission_is_named_with_its_fix() {
    let s = Setup::start().await;
    let e = s.emu.handle();
    grant_app(&e, vec!["User.Read.All".into()]);
    let (code, out) = s.run(&s.file(ELM), &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("EntitlementManagement.ReadWrite.All"), "{out}");
    assert!(out.contains("admin consent"), "{out}");
    assert!(s.writes().is_empty(), "{:?}", s.writes());
}

/// The Logic App is checked by Graph at create: the first step fails, so nothing else (the
/// role, the policies, the file) is applied.
#[tokio::test]
async fn a_logic_app_that_does_not_exist_stops_at_the_first_step() {
    let s = Setup::start().await;
    let missing = "/subscriptions/38ab2ccc-3747-4567-b36b-9478f5602f0d/resourceGroups/rg-x/providers/Microsoft.Logic/workflows/not-deployed";
    let text = format!("[deployment]\nlogic_app_resource_id = \"{missing}\"\n{ELM}");
    let (code, out) = s.run(&s.file(&text), &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not-deployed"), "{out}");
    assert!(out.contains("ACCESSGATE_LOGIC_APP_RESOURCE_ID"), "{out}");
    assert!(out.contains("0 of 4 step(s) were applied"), "{out}");
    let writes = s.writes();
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert!(
        writes[0].starts_with("POST ") && writes[0].ends_with(" 400"),
        "{writes:?}"
    );
    assert_eq!(
        std::fs::read_to_string(s.written()).unwrap(),
        "# written by setup\n"
    );
}

#[tokio::test]
async fn lifecycle_workflows_and_pim_extensions() {
    let s = Setup::start().await;
    let e = s.emu.handle();
    grant_app(
        &e,
        vec!["LifecycleWorkflows-CustomExt.ReadWrite.All".into()],
    );
    let lcw = format!(
        "[lifecycle_workflows]\nlogic_app_resource_id = \"{LCW_LOGIC_APP}\"\nlogic_app_url = \"{}/workflows/tasks/triggers/manual/paths/invoke?api-version=2016-10-01\"\ncallback_timeout = \"PT1H\"\n",
        e.base_url()
    );
    let (code, out) = s.run(&s.file(&lcw), &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("+ create custom task extension \"accessgate tasks\""),
        "{out}"
    );
    let list = s
        .graph_get("/identityGovernance/lifecycleWorkflows/customTaskExtensions")
        .await;
    let ext = &list["value"][0];
    assert_eq!(ext["callbackConfiguration"]["timeoutDuration"], "PT1H");
    assert_eq!(
        ext["authenticationConfiguration"]["@odata.type"],
        "#microsoft.graph.azureAdPopTokenAuthentication"
    );
    let written = std::fs::read_to_string(s.written()).unwrap();
    assert!(written.contains("[extensions.lcw]"), "{written}");
    assert!(
        written.contains("kind = \"lifecycle_workflows\""),
        "{written}"
    );
    assert!(written.contains("callback_timeout = \"PT1H\""), "{written}");
    let (code, out) = s.run(&s.file(&lcw), &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Nothing to change."), "{out}");

    // PIM: app-only is refused with the way out; the device-code user creates it.
    let pim = "[pim]\naudience = \"api://accessgate.example/5f2c3b1e-0000-4000-8000-000000000009\"\nresource_type = \"entraRoles\"\n";
    let (code, out) = s.run(&s.file(pim), &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--device-code"), "{out}");
    let (code, out) = s.run(&s.file(pim), &["--device-code"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("To sign in"), "{out}");
    assert!(
        out.contains("+ create PIM custom extension \"accessgate PIM\""),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "+ endpointConfiguration.targetUrl: \"{}/api/pim/pim\"",
            e.base_url()
        )),
        "{out}"
    );
    let written = std::fs::read_to_string(s.written()).unwrap();
    assert!(written.contains("[pim.extensions.pim]"), "{written}");
    assert!(written.contains("budget_ms = 6000"), "{written}");
    let (code, out) = s.run(&s.file(pim), &["--device-code"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Nothing to change."), "{out}");
    // Post-approval on, then off again: both ways reach Entra and the configuration.
    let post = format!("{pim}post_approval = true\n");
    let (code, out) = s.run(&s.file(&post), &["--device-code"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("~ type: \"preApproval\" -> \"postApproval\""),
        "{out}"
    );
    assert!(out.contains("post_approval = true"), "{out}");
    let (code, out) = s.run(&s.file(pim), &["--device-code"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("~ type: \"postApproval\" -> \"preApproval\""),
        "{out}"
    );
    assert!(out.contains("post_approval = false"), "{out}");
    let (code, out) = s.run(&s.file(pim), &["--device-code"]).await;
    assert!(
        code == Some(0) && out.contains("Nothing to change."),
        "{out}"
    );
}

/// The three commands' last two: setup writes the configuration, doctor then finds each
/// extension as Entra holds it and compares it with that configuration.
#[tokio::test]
async fn doctor_checks_the_extensions_setup_made() {
    let s = Setup::start().await;
    let e = s.emu.handle();
    grant_app(
        &e,
        vec![
            "EntitlementManagement.ReadWrite.All".into(),
            "LifecycleWorkflows-CustomExt.ReadWrite.All".into(),
            "LifecycleWorkflows.Read.All".into(),
        ],
    );
    // The harness's configuration is in direct mode: the extensions point at /api/elm.
    let text = format!(
        "[deployment]\ningress_mode = \"direct\"\n{ELM}\n[lifecycle_workflows]\nlogic_app_resource_id = \"{}\"\ncallback_timeout = \"PT2H\"\n",
        e.config().lcw_logic_app_resource,
    );
    let file = s.file(&text);
    let config = s.config.display().to_string();
    let (code, out) = s.run(&file, &["--write-config", &config]).await;
    assert_eq!(code, Some(0), "{out}");
    let doctor = |config: PathBuf| {
        let env = vec![(
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
            e.config().graph_client_secret.clone(),
        )];
        let args = vec![
            "doctor".into(),
            "--config".into(),
            config.display().to_string(),
        ];
        async move { run_cli(args, env).await.1 }
    };
    let out = doctor(s.config.clone()).await;
    let line = |name: &str| {
        out.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
            .to_owned()
    };
    assert!(line("extension elm").starts_with("PASS"), "{out}");
    assert!(line("extension elm").contains("PT12H"), "{out}");
    assert!(line("extension lcw").starts_with("PASS"), "{out}");

    // The window accessgate counts must be the extension's: a mismatch fails with the fix.
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let mismatched = s.dir.path().join("mismatched.toml");
    std::fs::write(
        &mismatched,
        cfg.replace("callback_timeout = \"PT2H\"", "callback_timeout = \"PT1H\"")
            .replace(
                "deadline_margin_seconds = 5",
                "deadline_margin_seconds = 86400",
            ),
    )
    .unwrap();
    let out = doctor(mismatched).await;
    let lcw = out.lines().find(|l| l.contains("extension lcw")).unwrap();
    assert!(
        lcw.starts_with("FAIL") && lcw.contains("make them equal"),
        "{out}"
    );
    let elm = out.lines().find(|l| l.contains("extension elm")).unwrap();
    assert!(
        elm.starts_with("FAIL") && elm.contains("worker.deadline_margin_seconds"),
        "{out}"
    );
}

/// A policy keeps what setup does not touch: another extension's stage, its approval stages and
/// its questions (PUT replaces the whole policy, and the emulator's PUT drops what it is not
/// sent). Two links to one policy make one update; a pre-expiration stage gets an extension of
/// the type those stages run.
#[tokio::test]
async fn a_policy_keeps_what_setup_does_not_touch() {
    let s = Setup::start().await;
    let url = format!(
        "/identityGovernance/entitlementManagement/assignmentPolicies/{CONTRACTORS}?$expand=questions,customExtensionStageSettings($expand=customExtension)"
    );
    let before = s.graph_get(&url).await;
    let text = r#"
[access_packages]
catalog = "General"

[[access_packages.policies]]
access_package = "Sales tools"
policies = ["Contractors"]
stages = ["assignmentRequestCreated"]

[[access_packages.policies]]
access_package = "Sales tools"
policies = ["Contractors"]
stages = ["assignmentOneDayBeforeExpiration"]
"#;
    let (code, out) = s.run(&s.file(text), &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("+ create pre-expiration custom extension \"accessgate (pre-expiration)\""),
        "{out}"
    );
    assert_eq!(
        out.matches("~ update policy \"Contractors\"").count(),
        2,
        "one update, printed in the plan and when applied:\n{out}"
    );
    let after = s.graph_get(&url).await;
    for kept in [
        "requestApprovalSettings",
        "questions",
        "expiration",
        "requestorSettings",
    ] {
        assert_eq!(
            after[kept], before[kept],
            "{kept} changed:\n{before}\n{after}"
        );
    }
    let stages: Vec<(String, String, String)> = after["customExtensionStageSettings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            (
                st["stage"].as_str().unwrap().to_owned(),
                st["customExtension"]["displayName"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                st["customExtension"]["@odata.type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        vec![
            (
                "assignmentRequestGranted".into(),
                "Ticket bot".into(),
                "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension".into()
            ),
            (
                "assignmentRequestCreated".into(),
                "accessgate".into(),
                "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension".into()
            ),
            (
                "assignmentOneDayBeforeExpiration".into(),
                "accessgate (pre-expiration)".into(),
                "#microsoft.graph.accessPackageAssignmentWorkflowExtension".into()
            ),
        ]
    );
    let (code, out) = s.run(&s.file(text), &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("Nothing to change."), "{out}");
}

/// A run that stops past its first step (here: the catalog role, for a principal the tenant
/// does not have) is finished by the next run: done steps show as unchanged.
#[tokio::test]
async fn a_stopped_run_is_finished_by_the_next() {
    let s = Setup::start().await;
    let ghost = "0f000000-0000-4000-8000-0000000000ff";
    let text = format!("[deployment]\nprincipal_id = \"{ghost}\"\n{ELM}");
    let (code, out) = s.run(&s.file(&text), &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("1 of 4 step(s) were applied"), "{out}");
    // The right identity: the extension is there, the rest is applied.
    let (code, out) = s.run(&s.file(ELM), &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("= access package custom extension \"accessgate\""),
        "{out}"
    );
    assert!(out.contains("Applied 3 of 3 step(s)."), "{out}");
    let (code, out) = s.run(&s.file(ELM), &[]).await;
    assert_eq!(
        (code, out.contains("Nothing to change.")),
        (Some(0), true),
        "{out}"
    );
}

/// An administrator's machine after `azd up`: no accessgate configuration, a device-code
/// sign-in, the tenant from infra's outputs.
#[tokio::test]
async fn an_administrator_runs_it_without_a_configuration() {
    let s = Setup::start().await;
    let e = s.emu.handle();
    let mut outputs = std::fs::read_to_string(&s.outputs).unwrap();
    outputs.push_str(&format!("AZURE_TENANT_ID=\"{}\"\n", e.config().tenant_id));
    std::fs::write(&s.outputs, outputs).unwrap();
    let file = s.file(ELM);
    let args: Vec<String> = vec![
        "setup".into(),
        "--file".into(),
        file.display().to_string(),
        "--outputs".into(),
        s.outputs.display().to_string(),
        "--write-config".into(),
        s.written().display().to_string(),
        "--device-code".into(),
    ];
    let env = vec![
        ("ACCESSGATE_IDENTITY__AUTHORITY".to_string(), e.base_url()),
        ("ACCESSGATE_GRAPH__BASE_URL".to_string(), e.base_url()),
    ];
    let (_, out) = run_cli(args.clone(), env.clone()).await;
    assert!(out.contains("To sign in"), "{out}");
    assert!(out.contains("accessgate setup as user"), "{out}");
    assert!(out.contains("Applied 4 of 4 step(s)."), "{out}");
    // Without the device code, there is nothing to sign in with: said, and nothing written.
    let before = s.writes().len();
    let app_only: Vec<String> = args.into_iter().filter(|a| a != "--device-code").collect();
    let (_, out) = run_cli(app_only, env).await;
    assert!(
        out.contains("configuration problem") || out.contains("--device-code"),
        "{out}"
    );
    assert_eq!(s.writes().len(), before);
}

/// The extension setup made takes a callout: sent, as Entra would, to the URL setup registered,
/// signed with a PoP token bound to the Logic App the extension names, it is accepted by
/// accessgate and resumed.
#[tokio::test]
async fn the_extension_setup_made_takes_a_callout() {
    let h = Harness::start("").await;
    let e = h.emu();
    e.load_world(&serde_json::from_value(world()).unwrap())
        .unwrap();
    let principal = app_principal(&e).object_id;
    let file = h.dir.path().join("setup.toml");
    std::fs::write(
        &file,
        format!(
            "[deployment]\ningress_mode = \"direct\"\nurl = \"http://{}\"\nprincipal_id = \"{principal}\"\nlogic_app_resource_id = \"{}\"\n{ELM}",
            h.ag.addr,
            e.config().logic_app_resource
        ),
    )
    .unwrap();
    let args: Vec<String> = vec![
        "setup".into(),
        "--config".into(),
        h.ag.config_path.display().to_string(),
        "--file".into(),
        file.display().to_string(),
        "--write-config".into(),
        h.dir.path().join("written.toml").display().to_string(),
    ];
    let env = vec![(
        "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
        e.config().graph_client_secret.clone(),
    )];
    let (code, out) = run_cli(args, env).await;
    assert_eq!(code, Some(0), "{out}");

    // What Entra holds now.
    let list = graph_get(
        &e,
        &format!(
            "/identityGovernance/entitlementManagement/catalogs/{CATALOG}/customWorkflowExtensions"
        ),
    )
    .await;
    let ext = list["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["displayName"] == "accessgate")
        .unwrap()
        .clone();
    let ep = &ext["endpointConfiguration"];
    let url = ep["url"].as_str().unwrap().to_owned();
    assert_eq!(url, h.callout_url());
    let p = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Logic/workflows/{}",
        ep["subscriptionId"].as_str().unwrap(),
        ep["resourceGroupName"].as_str().unwrap(),
        ep["logicAppWorkflowName"].as_str().unwrap()
    );

    // Entra calls it.
    let sid = uuid::Uuid::new_v4().to_string();
    let report = e
        .send_callout(&SendOptions {
            target_url: url,
            stage_instance_id: Some(sid.clone()),
            pop: Some(PopOptions {
                p: Some(json!(p)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(report.status, Some(202), "{report:?}");
    let r = resumed(&e, &sid).await;
    assert_eq!(r.stage_instance_id, sid);
}
