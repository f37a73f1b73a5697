//! `accessgate setup`: creates or updates, through Graph, the custom extensions a setup file
//! names (entitlement management, Lifecycle Workflows, PIM), adds the entitlement-management
//! one to assignment policies' stages, gives accessgate's identity its catalog role, and writes
//! the matching configuration. `--plan` prints the diff and stops; a run without it prints the
//! same diff and applies it. A second run finds nothing to change.

pub mod bodies;
pub mod config_file;
pub mod diff;
pub mod graph_admin;
pub mod plan;
pub mod spec;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::config::Config;
use crate::credentials::Audience;
use crate::endpoint::EndpointUrl;
use graph_admin::{AdminGraph, SetupError};
use plan::{Action, Plan};
use spec::Spec;

/// Microsoft Graph Command Line Tools: the public client Graph PowerShell signs in with, so
/// device-code sign-in needs no app registration of ours.
pub const DEFAULT_PUBLIC_CLIENT: &str = "14d82eec-204b-4c2f-b7e8-296a70dab67e";

pub struct Options {
    pub file: PathBuf,
    pub plan_only: bool,
    pub device_code: bool,
    pub client_id: String,
    pub outputs: Option<PathBuf>,
    pub write_config: Option<PathBuf>,
}

/// Infra's outputs: the `--outputs` file (`azd env get-values > file`, or azd's `.env`), then
/// the environment (azd exports them to hooks) for what the file leaves out.
fn outputs(opts: &Options) -> Result<BTreeMap<String, String>, SetupError> {
    let mut out: BTreeMap<String, String> = spec::OUTPUT_KEYS
        .iter()
        .map(|(_, k)| *k)
        .chain(["AZURE_TENANT_ID"])
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect();
    if let Some(path) = &opts.outputs {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SetupError::Input(format!("cannot read --outputs {}: {e}", path.display()))
        })?;
        out.extend(spec::read_outputs(&text));
    }
    Ok(out)
}

/// The delegated scopes a signed-in user needs for what the setup file names.
fn scopes(spec: &Spec, graph_resource: &str) -> Vec<String> {
    let mut s = Vec::new();
    if spec.elm.is_some() {
        s.push("EntitlementManagement.ReadWrite.All");
    }
    if spec.lcw.is_some() {
        s.push("LifecycleWorkflows-CustomExt.ReadWrite.All");
    }
    if spec.pim.is_some() {
        s.push("PrivilegedAccess-CustomExt.ReadWrite.All");
    }
    s.into_iter()
        .map(|p| format!("{graph_resource}/{p}"))
        .collect()
}

/// Where setup signs in and calls Graph: the configuration's, or (a signed-in run without a
/// configuration, e.g. on an administrator's machine after `azd up`) the global cloud's, with
/// the tenant from infra's outputs (`AZURE_TENANT_ID`) and the same environment overrides the
/// configuration reads (`ACCESSGATE_IDENTITY__TENANT_ID`, `…__AUTHORITY`, `ACCESSGATE_GRAPH__BASE_URL`).
pub struct Tenant {
    pub authority: EndpointUrl,
    pub tenant_id: String,
    pub graph_base: EndpointUrl,
    /// `https://graph.microsoft.com`: the resource the scopes are named in.
    pub graph_resource: String,
}

impl Tenant {
    pub fn of(config: &Config) -> Tenant {
        Tenant {
            authority: config.identity.authority.clone(),
            tenant_id: config.identity.tenant_id.to_string(),
            graph_base: config.graph.base_url.clone(),
            graph_resource: config
                .graph
                .scope
                .trim_end_matches(".default")
                .trim_end_matches('/')
                .to_owned(),
        }
    }

    /// Without a configuration: every problem in one message.
    pub fn from_env(outputs: &BTreeMap<String, String>) -> Result<Tenant, SetupError> {
        let cloud = crate::credentials::settings::Cloud::GLOBAL;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let tenant_id = env("ACCESSGATE_IDENTITY__TENANT_ID")
            .or_else(|| outputs.get("AZURE_TENANT_ID").cloned())
            .or_else(|| env("AZURE_TENANT_ID"))
            .filter(|t| uuid::Uuid::parse_str(t.trim()).is_ok())
            .ok_or_else(|| {
                SetupError::Input(
                    "no tenant: give --outputs (azd's AZURE_TENANT_ID), set ACCESSGATE_IDENTITY__TENANT_ID, or pass --config".into(),
                )
            })?;
        let url = |k: &str, default: &str| {
            EndpointUrl::parse(&env(k).unwrap_or_else(|| default.to_owned()))
                .map_err(|e| SetupError::Input(format!("{k}: {e}")))
        };
        Ok(Tenant {
            authority: url("ACCESSGATE_IDENTITY__AUTHORITY", cloud.authority)?,
            tenant_id: tenant_id.trim().to_owned(),
            graph_base: url("ACCESSGATE_GRAPH__BASE_URL", cloud.graph)?,
            graph_resource: cloud.graph.to_owned(),
        })
    }
}

async fn sign_in(
    tenant: &Tenant,
    config: Option<&Config>,
    spec: &Spec,
    opts: &Options,
) -> Result<AdminGraph, SetupError> {
    let http = crate::app::http_client().map_err(|e| SetupError::Config(e.to_string()))?;
    let token = if opts.device_code {
        graph_admin::device_code_token(
            &http,
            &tenant.authority,
            &tenant.tenant_id,
            &opts.client_id,
            &scopes(spec, &tenant.graph_resource),
        )
        .await?
    } else {
        let Some(config) = config else {
            return Err(SetupError::SignIn(
                "an app-only run signs in with the configuration's [credentials]: pass --config, or run with --device-code to sign in as an administrator".into(),
            ));
        };
        let creds = crate::app::credentials_for(config, &http);
        creds
            .fetch(Audience::Graph)
            .await
            .map_err(|e| {
                SetupError::SignIn(format!(
                    "{e} (setup runs app-only with [credentials] of the configuration; or run with --device-code to sign in as an administrator)"
                ))
            })?
            .token
    };
    Ok(AdminGraph::new(http, tenant.graph_base.clone(), token))
}

/// Prints the plan as a diff; returns whether anything would change.
pub fn print_plan(plan: &Plan) -> bool {
    for u in &plan.unchanged {
        println!("= {u}");
    }
    for s in &plan.steps {
        println!("{} {}", s.sign, s.title);
        for l in &s.lines {
            println!("    {l}");
        }
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
    let creates = plan.steps.iter().filter(|s| s.sign == '+').count();
    let changes = plan.steps.len() - creates;
    if plan.steps.is_empty() {
        println!("Nothing to change.");
        false
    } else {
        println!("Plan: {creates} to create, {changes} to change.");
        true
    }
}

/// Replaces the planned placeholders with the ids the creates answered.
fn fill_new_ids(v: &mut Value, ids: &BTreeMap<&'static str, String>) {
    match v {
        Value::String(s) => {
            if let Some(id) = ids.get(s.as_str()) {
                *s = id.clone();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| fill_new_ids(x, ids)),
        Value::Object(m) => m.values_mut().for_each(|x| fill_new_ids(x, ids)),
        _ => {}
    }
}

/// Creating fails on what Graph checks and the plan could not see (the Logic App, the URL).
fn create_fix(status: u16, code: &str, message: &str) -> Option<String> {
    let m = message.to_ascii_lowercase();
    if status == 400 && (m.contains("logic app") || code.eq_ignore_ascii_case("InvalidLogicApp")) {
        Some("the Logic App named by deployment.logic_app_resource_id (azd output ACCESSGATE_LOGIC_APP_RESOURCE_ID) does not exist or is in another subscription: run azd up, or fix the id".into())
    } else if status == 409 {
        Some("an object of that name already exists where setup did not see it: run setup again (it will update it)".into())
    } else {
        None
    }
}

async fn apply(g: &AdminGraph, plan: Plan) -> Result<usize, (usize, SetupError)> {
    let mut new_ids: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut done = 0;
    for step in plan.steps {
        println!("{} {} ...", step.sign, step.title);
        let result = match step.action {
            Action::Create {
                path,
                body,
                remember,
            } => match g
                .expect(
                    reqwest::Method::POST,
                    &path,
                    Some(&body),
                    &step.title,
                    create_fix,
                )
                .await
            {
                Ok(created) => match (remember, created["id"].as_str()) {
                    (Some(placeholder), Some(id)) => {
                        new_ids.insert(placeholder, id.to_owned());
                        Ok(())
                    }
                    // The policies would name a placeholder: stop before them.
                    (Some(_), None) => Err(SetupError::Input(format!(
                        "{}: Graph's answer has no id; run setup again (it finds the extension by name)",
                        step.title
                    ))),
                    (None, _) => Ok(()),
                },
                Err(e) => Err(e),
            },
            Action::Patch { path, body } => g
                .expect(
                    reqwest::Method::PATCH,
                    &path,
                    Some(&body),
                    &step.title,
                    create_fix,
                )
                .await
                .map(drop),
            Action::PutPolicy { path, mut body } => {
                fill_new_ids(&mut body, &new_ids);
                g.expect(reqwest::Method::PUT, &path, Some(&body), &step.title, |s, _, m| {
                    (s == 400).then(|| format!("Graph refused the policy update ({m}): check the stage and that the extension is in the package's catalog"))
                })
                .await
                .map(drop)
            }
            Action::WriteConfig { path, text } => config_file::write(&path, &text),
        };
        match result {
            Ok(()) => {
                println!("  done");
                done += 1;
            }
            Err(e) => return Err((done, e)),
        }
    }
    Ok(done)
}

/// Runs setup; the exit code is 0 when the tenant is (or now is) as the file says.
pub async fn run(config: Option<&Config>, opts: &Options) -> std::process::ExitCode {
    use std::process::ExitCode;
    let loaded = outputs(opts).and_then(|o| {
        let spec = Spec::load(&opts.file, &o).map_err(|e| SetupError::Input(e.to_string()))?;
        let tenant = match config {
            Some(c) => Tenant::of(c),
            None => Tenant::from_env(&o)?,
        };
        Ok((spec, tenant))
    });
    let (spec, tenant) = match loaded {
        Ok(s) => s,
        Err(e) => {
            eprintln!("accessgate setup: {e}");
            return ExitCode::from(2);
        }
    };
    let g = match sign_in(&tenant, config, &spec, opts).await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("accessgate setup: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("accessgate setup as {}", g.caller.describe());
    let plan = match plan::plan(&g, &spec, opts.write_config.as_deref()).await {
        Ok(p) => p,
        Err(problems) => {
            eprintln!(
                "accessgate setup: {} problem(s); nothing was changed:",
                problems.len()
            );
            for p in problems {
                eprintln!("  - {p}");
            }
            return ExitCode::FAILURE;
        }
    };
    if !print_plan(&plan) || opts.plan_only {
        return ExitCode::SUCCESS;
    }
    let total = plan.steps.len();
    match apply(&g, plan).await {
        Ok(n) => {
            println!("Applied {n} of {total} step(s).");
            ExitCode::SUCCESS
        }
        Err((done, e)) => {
            eprintln!("accessgate setup: {e}");
            eprintln!(
                "  {done} of {total} step(s) were applied before this one; fix the cause and run setup again: applied steps show as unchanged"
            );
            ExitCode::FAILURE
        }
    }
}
