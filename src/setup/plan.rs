//! What `accessgate setup` would change: reads the tenant (catalog, access packages, their
//! policies, the extensions, accessgate's catalog roles), compares it with the setup file and
//! returns the steps, in an order that can be re-run: extensions first (nothing refers to
//! them yet), then the catalog role, then the policies that name the extension, then the
//! configuration file. Every problem found while reading is reported before anything is
//! written.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::bodies::{
    ASSIGNMENT_TYPE, PIM_TYPE, REQUEST_TYPE, TASK_TYPE, elm_body, is_expiry_stage, lcw_body,
    lcw_url, pim_body, policy_put_body,
};
use super::config_file::{self, Desired};
use super::diff::{created_lines, differences, patch_body, same_value};
use super::graph_admin::{AdminGraph, SetupError};
use super::spec::{ElmSpec, Ref, Spec};

/// Role definition id of "Access package assignment manager": the least catalog role that
/// may resume requests (protocol.md §3.6).
pub const ASSIGNMENT_MANAGER: (&str, &str) = (
    "Access package assignment manager",
    "e2182095-804a-4656-ae11-64734e9b7ae5",
);
/// Catalog roles that include resume: holding one of them is enough.
const RESUME_ROLE_IDS: [(&str, &str); 3] = [
    ASSIGNMENT_MANAGER,
    (
        "Access package manager",
        "7f480852-ebdc-47d4-87de-0d8498384a83",
    ),
    ("Catalog owner", "ae79f266-94d4-4dab-b730-feca7e132178"),
];
const CATALOG_OWNER_ID: &str = "ae79f266-94d4-4dab-b730-feca7e132178";

/// Stand for the ids of the extensions this run creates, in policy bodies planned before they
/// exist; replaced when the steps are applied.
pub const NEW_REQUEST_EXTENSION: &str = "(the request workflow extension this run creates)";
pub const NEW_ASSIGNMENT_EXTENSION: &str = "(the pre-expiration extension this run creates)";

const EM: &str = "/v1.0/identityGovernance/entitlementManagement";
const LCW_EXTENSIONS: &str = "/v1.0/identityGovernance/lifecycleWorkflows/customTaskExtensions";
const PIM_EXTENSIONS: &str = "/beta/identityGovernance/privilegedAccess/customExtensions";

/// One Graph write or file write.
#[derive(Debug, Clone)]
pub enum Action {
    /// POST to a collection; `remember`: the placeholder its answer's id replaces.
    Create {
        path: String,
        body: Value,
        remember: Option<&'static str>,
    },
    Patch {
        path: String,
        body: Value,
    },
    /// PUT of a whole assignment policy (the only way v1.0 updates its stage settings).
    PutPolicy {
        path: String,
        body: Value,
    },
    WriteConfig {
        path: PathBuf,
        text: String,
    },
}

#[derive(Debug, Clone)]
pub struct Step {
    pub phase: Phase,
    /// `+` create, `~` change.
    pub sign: char,
    pub title: String,
    /// The diff: `+ key: value`, `- key: value`, `~ key: old -> new`.
    pub lines: Vec<String>,
    pub action: Action,
}

/// The order steps are applied in: nothing refers to an extension before it exists, and a
/// failing extension create (what Graph alone can check: the Logic App, the URL) comes before
/// any other write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Extensions,
    Role,
    Policies,
    Config,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// What already is as the setup file says.
    pub unchanged: Vec<String>,
    /// Things worth knowing that change nothing.
    pub notes: Vec<String>,
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An OData string literal (quotes doubled).
fn lit(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

fn query(path: &str, params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return path.to_owned();
    }
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    format!("{path}?{}", q.join("&"))
}

fn s(v: &Value, k: &str) -> String {
    v[k].as_str().unwrap_or_default().to_owned()
}

fn no_fix(_: u16, _: &str, _: &str) -> Option<String> {
    None
}

/// The permissions each part needs, checked against the token before anything is read, so a
/// missing one is named with its fix instead of surfacing as a 403 halfway.
fn permission_problems(g: &AdminGraph, spec: &Spec, catalog_owner: bool) -> Vec<SetupError> {
    let c = &g.caller;
    let who = c.describe();
    let mut out = Vec::new();
    if spec.elm.is_some() && !c.holds(&["EntitlementManagement.ReadWrite.All"]) && !catalog_owner {
        out.push(SetupError::Input(format!(
            "{who} may not create entitlement-management extensions or update assignment policies: grant EntitlementManagement.ReadWrite.All ({}), or make it Catalog owner of the catalog",
            if c.delegated() {
                "consent to the delegated scope; the user also needs Identity Governance Administrator"
            } else {
                "application permission with admin consent"
            }
        )));
    }
    if spec.lcw.is_some()
        && !c.holds(&[
            "LifecycleWorkflows-CustomExt.ReadWrite.All",
            "LifecycleWorkflows.ReadWrite.All",
        ])
    {
        out.push(SetupError::Input(format!(
            "{who} may not create custom task extensions: grant LifecycleWorkflows-CustomExt.ReadWrite.All (least privilege; LifecycleWorkflows.ReadWrite.All also works)"
        )));
    }
    if let Some(l) = &spec.lcw
        && !c.delegated()
        && lcw_url(l, spec).is_none()
    {
        out.push(SetupError::Input(
            "an app-only run must name the custom task extension's trigger URL (Graph needs url for app-only calls): set lifecycle_workflows.logic_app_url, or run with --device-code".into(),
        ));
    }
    if spec.pim.is_some() {
        if !c.delegated() {
            out.push(SetupError::Input(
                "PIM custom extensions can only be created by a signed-in user (Graph offers no application permission): run setup with --device-code as a Privileged Role Administrator".into(),
            ));
        } else if !c.holds(&["PrivilegedAccess-CustomExt.ReadWrite.All"]) {
            out.push(SetupError::Input(format!(
                "{who} did not consent to PrivilegedAccess-CustomExt.ReadWrite.All: sign in again and accept it (an administrator may have to grant consent for the tenant)"
            )));
        }
    }
    out
}

/// Entitlement-management role assignments of a principal on one catalog: role definition ids.
async fn catalog_roles(
    g: &AdminGraph,
    principal: &str,
    catalog_id: &str,
) -> Result<Vec<String>, SetupError> {
    // Graph documents the principalId filter; the catalog is chosen from the answer.
    let filter = format!("principalId eq {}", lit(principal));
    let list = g
        .list(
            &query(
                "/v1.0/roleManagement/entitlementManagement/roleAssignments",
                &[("$filter", &filter)],
            ),
            "reading catalog role assignments",
            no_fix,
        )
        .await?;
    Ok(list
        .iter()
        .filter(|a| {
            s(a, "appScopeId").eq_ignore_ascii_case(&format!("/AccessPackageCatalog/{catalog_id}"))
        })
        .map(|a| s(a, "roleDefinitionId").to_ascii_lowercase())
        .collect())
}

/// The one object of a collection named by `r` (id, or display name), `$expand` as given;
/// `kind` and `at` (the setup file's key) say what to fix when there is none or several.
async fn find_one(
    g: &AdminGraph,
    collection: &str,
    r: &Ref,
    expand: &[(&str, &str)],
    kind: &str,
    at: &str,
) -> Result<Value, SetupError> {
    let what = format!("finding {kind} {r}");
    let fix = |status: u16, _: &str, _: &str| {
        (status == 404).then(|| format!("name an existing {kind} in {at}"))
    };
    match r {
        Ref::Id(id) => {
            g.get(&query(&format!("{collection}/{id}"), expand), &what, fix)
                .await
        }
        Ref::Name(n) => {
            let filter = format!("displayName eq {}", lit(n));
            let mut params = vec![("$filter", filter.as_str())];
            params.extend_from_slice(expand);
            let found = g.list(&query(collection, &params), &what, fix).await?;
            match found.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(SetupError::Input(format!(
                    "{kind} {r} does not exist: fix {at}"
                ))),
                _ => Err(SetupError::Input(format!(
                    "{} {kind}s are named {r}: name it by id in {at}",
                    found.len()
                ))),
            }
        }
    }
}

async fn find_catalog(g: &AdminGraph, r: &Ref) -> Result<Value, SetupError> {
    let at = "access_packages.catalog (its id or its display name)";
    find_one(g, &format!("{EM}/catalogs"), r, &[], "catalog", at).await
}

async fn find_package(g: &AdminGraph, r: &Ref, at: &str) -> Result<Value, SetupError> {
    let expand = [("$expand", "catalog")];
    find_one(
        g,
        &format!("{EM}/accessPackages"),
        r,
        &expand,
        "access package",
        at,
    )
    .await
}

/// The one extension of a list with this display name and type (an answer without a type
/// matches), if any.
fn by_name<'a>(
    list: &'a [Value],
    name: &str,
    type_name: &str,
    what: &str,
) -> Result<Option<&'a Value>, SetupError> {
    let same: Vec<&Value> = list
        .iter()
        .filter(|e| s(e, "displayName").eq_ignore_ascii_case(name))
        .filter(|e| same_value("@odata.type", &e["@odata.type"], &json!(type_name)))
        .collect();
    match same.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(SetupError::Input(format!(
            "{} {what}s are named {name:?}: rename or delete the extra ones in the portal, or choose another display_name",
            same.len()
        ))),
    }
}

/// Create or update one extension: a step, or "unchanged".
fn extension_step(
    plan: &mut Plan,
    kind: &str,
    collection: &str,
    current: Option<&Value>,
    desired: Value,
    remember: Option<&'static str>,
) -> Option<String> {
    let name = s(&desired, "displayName");
    match current {
        None => {
            plan.steps.push(Step {
                phase: Phase::Extensions,
                sign: '+',
                title: format!("create {kind} {name:?}"),
                lines: created_lines("", &desired),
                action: Action::Create {
                    path: collection.to_owned(),
                    body: desired,
                    remember,
                },
            });
            None
        }
        Some(cur) => {
            let id = s(cur, "id");
            let lines = differences("", cur, &desired);
            if lines.is_empty() {
                plan.unchanged
                    .push(format!("{kind} {name:?} ({id}) is as the setup file says"));
            } else {
                plan.steps.push(Step {
                    phase: Phase::Extensions,
                    sign: '~',
                    title: format!("update {kind} {name:?} ({id})"),
                    lines,
                    action: Action::Patch {
                        path: format!("{collection}/{id}"),
                        body: patch_body(cur, &desired),
                    },
                });
            }
            Some(id)
        }
    }
}

/// The extensions this run's policies name: (request workflow, pre-expiration), each the id
/// Graph has or the placeholder of this run's create.
struct Targets {
    request: (String, String),
    assignment: Option<(String, String)>,
}

impl Targets {
    /// The (id, display name) of the extension a stage runs.
    fn for_stage(&self, stage: &str) -> Option<&(String, String)> {
        if is_expiry_stage(stage) {
            self.assignment.as_ref()
        } else {
            Some(&self.request)
        }
    }
}

/// One policy the setup file names, with every stage any link asks of it (two links that
/// reach one policy make one PUT, not two that overwrite each other).
struct PolicyWant {
    id: String,
    display_name: String,
    package_id: String,
    package_name: String,
    stages: Vec<&'static str>,
    at: String,
}

/// Resolves every link to its policies, merged per policy.
async fn policy_wants(
    g: &AdminGraph,
    e: &ElmSpec,
    catalog: &Value,
    problems: &mut Vec<SetupError>,
) -> Result<Vec<PolicyWant>, SetupError> {
    let catalog_id = s(catalog, "id");
    let mut wants: Vec<PolicyWant> = Vec::new();
    for (i, link) in e.links.iter().enumerate() {
        let at = format!("access_packages.policies[{}]", i + 1);
        let package =
            find_package(g, &link.access_package, &format!("{at}.access_package")).await?;
        let pkg_name = s(&package, "displayName");
        let pkg_catalog = s(&package["catalog"], "id");
        if !pkg_catalog.eq_ignore_ascii_case(&catalog_id) {
            problems.push(SetupError::Input(format!(
                "access package {pkg_name:?} is in catalog {:?} ({pkg_catalog}), not in {:?}: an extension serves only its own catalog's packages. Set up a second [access_packages] run with catalog = {pkg_catalog:?}, or move the package",
                s(&package["catalog"], "displayName"),
                s(catalog, "displayName")
            )));
            continue;
        }
        let filter = format!("accessPackage/id eq {}", lit(&s(&package, "id")));
        let policies = g
            .list(
                &query(&format!("{EM}/assignmentPolicies"), &[("$filter", &filter)]),
                &format!("reading the assignment policies of {pkg_name:?}"),
                no_fix,
            )
            .await?;
        let chosen: Vec<&Value> = if link.policies.is_empty() {
            if policies.is_empty() {
                problems.push(SetupError::Input(format!(
                    "access package {pkg_name:?} has no assignment policy yet: create one in the portal, then run setup again"
                )));
            }
            policies.iter().collect()
        } else {
            let mut chosen = Vec::new();
            for r in &link.policies {
                match policies
                    .iter()
                    .find(|p| r.matches(&s(p, "id"), &s(p, "displayName")))
                {
                    Some(p) => chosen.push(p),
                    None => problems.push(SetupError::Input(format!(
                        "access package {pkg_name:?} has no assignment policy {r} (it has: {}): fix {at}.policies",
                        policies
                            .iter()
                            .map(|p| format!("{:?}", s(p, "displayName")))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))),
                }
            }
            chosen
        };
        for p in chosen {
            let id = s(p, "id");
            let want = match wants.iter_mut().find(|w| w.id.eq_ignore_ascii_case(&id)) {
                Some(w) => w,
                None => {
                    wants.push(PolicyWant {
                        id,
                        display_name: s(p, "displayName"),
                        package_id: s(&package, "id"),
                        package_name: pkg_name.clone(),
                        stages: Vec::new(),
                        at: at.clone(),
                    });
                    let last = wants.len() - 1;
                    &mut wants[last]
                }
            };
            for st in &link.stages {
                if !want.stages.contains(st) {
                    want.stages.push(st);
                }
            }
        }
    }
    Ok(wants)
}

/// The policy steps: each policy read by id with its stage settings and questions, the new
/// stages added, the other extensions' stages kept.
async fn policy_steps(
    g: &AdminGraph,
    plan: &mut Plan,
    problems: &mut Vec<SetupError>,
    wants: Vec<PolicyWant>,
    targets: &Targets,
) -> Result<(), SetupError> {
    for want in wants {
        let (pname, pkg_name) = (&want.display_name, &want.package_name);
        let policy = g
            .get(
                &query(
                    &format!("{EM}/assignmentPolicies/{}", want.id),
                    &[(
                        "$expand",
                        "questions,customExtensionStageSettings($expand=customExtension)",
                    )],
                ),
                &format!("reading policy {pname:?} of {pkg_name:?}"),
                no_fix,
            )
            .await?;
        // Without its stage settings the PUT would replace them all: refuse rather than guess.
        let Some(existing) = policy["customExtensionStageSettings"].as_array().cloned() else {
            problems.push(SetupError::Input(format!(
                "Graph did not return the stage settings of policy {pname:?} of {pkg_name:?}; setup will not replace them blind: add the extension to the policy in the portal"
            )));
            continue;
        };
        let setting = |stage: &Value, id: &Value, type_name: &Value| {
            let mut ext = json!({ "id": id });
            if type_name.is_string() {
                ext["@odata.type"] = type_name.clone();
            }
            json!({ "stage": stage, "customExtension": ext })
        };
        let mut settings: Vec<Value> = existing
            .iter()
            .map(|st| {
                setting(
                    &st["stage"],
                    &st["customExtension"]["id"],
                    &st["customExtension"]["@odata.type"],
                )
            })
            .collect();
        let mut lines = Vec::new();
        for stage in &want.stages {
            let Some((target_id, target_name)) = targets.for_stage(stage) else {
                continue;
            };
            match existing
                .iter()
                .find(|st| s(st, "stage").eq_ignore_ascii_case(stage))
            {
                Some(st) if s(&st["customExtension"], "id").eq_ignore_ascii_case(target_id) => {}
                Some(st) => problems.push(SetupError::Input(format!(
                    "policy {pname:?} of {pkg_name:?} already runs extension {:?} ({}) at {stage}: Entra runs one extension per stage. Remove it from the policy in the portal, or leave {stage} out of {}.stages",
                    s(&st["customExtension"], "displayName"),
                    s(&st["customExtension"], "id"),
                    want.at
                ))),
                None => {
                    lines.push(format!(
                        "+ customExtensionStageSettings: {stage} -> {target_name:?}"
                    ));
                    let type_name = if is_expiry_stage(stage) {
                        ASSIGNMENT_TYPE
                    } else {
                        REQUEST_TYPE
                    };
                    settings.push(setting(&json!(stage), &json!(target_id), &json!(type_name)));
                }
            }
        }
        if lines.is_empty() {
            plan.unchanged.push(format!(
                "policy {pname:?} of {pkg_name:?} runs the extension at {}",
                want.stages.join(", ")
            ));
        } else {
            plan.steps.push(Step {
                phase: Phase::Policies,
                sign: '~',
                title: format!("update policy {pname:?} of access package {pkg_name:?}"),
                lines,
                action: Action::PutPolicy {
                    path: format!("{EM}/assignmentPolicies/{}", want.id),
                    body: policy_put_body(&policy, &want.package_id, settings),
                },
            });
        }
    }
    Ok(())
}

async fn elm_steps(
    g: &AdminGraph,
    spec: &Spec,
    e: &ElmSpec,
    plan: &mut Plan,
    problems: &mut Vec<SetupError>,
    desired: &mut Desired,
) -> Result<(), SetupError> {
    let has_em = g.caller.holds(&["EntitlementManagement.ReadWrite.All"]);
    let catalog = match find_catalog(g, &e.catalog).await {
        Ok(c) => c,
        // No permission to read the catalog: say which one is missing rather than the 403.
        Err(err) if err.status() == Some(403) && !has_em => {
            problems.extend(permission_problems(g, spec, false));
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let catalog_id = s(&catalog, "id");
    let catalog_name = s(&catalog, "displayName");
    let owner = !g.caller.object_id.is_empty()
        && catalog_roles(g, &g.caller.object_id, &catalog_id)
            .await
            .unwrap_or_default()
            .iter()
            .any(|r| r == CATALOG_OWNER_ID);
    let missing = permission_problems(g, spec, owner);
    if !missing.is_empty() {
        problems.extend(missing);
        return Ok(());
    }
    let collection = format!("{EM}/catalogs/{catalog_id}/customWorkflowExtensions");
    let list = g
        .list(
            &collection,
            &format!("listing the custom extensions of catalog {catalog_name:?}"),
            no_fix,
        )
        .await?;
    let current = by_name(&list, &e.display_name, REQUEST_TYPE, "custom extension")?;
    let request_id = extension_step(
        plan,
        "access package custom extension",
        &collection,
        current,
        elm_body(e, spec, REQUEST_TYPE, &e.display_name),
        Some(NEW_REQUEST_EXTENSION),
    );
    // The pre-expiration stages run an extension of the other type, made alongside.
    let assignment_name = format!("{} (pre-expiration)", e.display_name);
    let assignment_id = if e
        .links
        .iter()
        .any(|l| l.stages.iter().any(|st| is_expiry_stage(st)))
    {
        let current = by_name(&list, &assignment_name, ASSIGNMENT_TYPE, "custom extension")?;
        Some(
            extension_step(
                plan,
                "pre-expiration custom extension",
                &collection,
                current,
                elm_body(e, spec, ASSIGNMENT_TYPE, &assignment_name),
                Some(NEW_ASSIGNMENT_EXTENSION),
            )
            .unwrap_or_else(|| NEW_ASSIGNMENT_EXTENSION.to_owned()),
        )
    } else {
        None
    };
    let targets = Targets {
        request: (
            request_id.unwrap_or_else(|| NEW_REQUEST_EXTENSION.to_owned()),
            e.display_name.clone(),
        ),
        assignment: assignment_id.map(|id| (id, assignment_name)),
    };

    if e.assign_role
        && let Some(principal) = &spec.deployment.principal_id
    {
        let held = catalog_roles(g, principal, &catalog_id).await?;
        match RESUME_ROLE_IDS
            .iter()
            .find(|(_, rid)| held.iter().any(|h| h == rid))
        {
            Some((name, _)) => {
                plan.unchanged.push(format!(
                    "accessgate's identity {principal} holds {name} on catalog {catalog_name:?}"
                ));
                if *name != ASSIGNMENT_MANAGER.0 {
                    plan.notes.push(format!(
                        "accessgate's identity holds {name} on the catalog: more than resume needs ({} is enough); setup does not remove roles",
                        ASSIGNMENT_MANAGER.0
                    ));
                }
            }
            None => plan.steps.push(Step {
                phase: Phase::Role,
                sign: '+',
                title: format!(
                    "give accessgate's identity {principal} the catalog role {} on {catalog_name:?}",
                    ASSIGNMENT_MANAGER.0,
                ),
                lines: vec![
                    format!("+ roleDefinitionId: {:?}", ASSIGNMENT_MANAGER.1),
                    format!("+ appScopeId: \"/AccessPackageCatalog/{catalog_id}\""),
                ],
                action: Action::Create {
                    path: "/v1.0/roleManagement/entitlementManagement/roleAssignments".into(),
                    body: json!({
                        "@odata.type": "#microsoft.graph.unifiedRoleAssignment",
                        "principalId": principal,
                        "roleDefinitionId": ASSIGNMENT_MANAGER.1,
                        "appScopeId": format!("/AccessPackageCatalog/{catalog_id}"),
                    }),
                    remember: None,
                },
            }),
        }
    }
    let wants = policy_wants(g, e, &catalog, problems).await?;
    policy_steps(g, plan, problems, wants, &targets).await?;
    if let Some(la) = &spec.deployment.logic_app {
        desired.extensions.push(config_file::DesiredExtension {
            name: e.name.clone(),
            resource: la.resource_id.clone(),
            catalog_id: Some(catalog_id),
            lifecycle: None,
        });
    }
    Ok(())
}

/// Reads the tenant and plans. `Err` lists every problem found; nothing has been written.
pub async fn plan(
    g: &AdminGraph,
    spec: &Spec,
    config_path: Option<&Path>,
) -> Result<Plan, Vec<SetupError>> {
    let mut plan = Plan::default();
    let mut problems = Vec::new();
    let mut desired = Desired::default();
    if spec.elm.is_none() {
        problems.extend(permission_problems(g, spec, false));
        if !problems.is_empty() {
            return Err(problems);
        }
    }
    if let Some(e) = &spec.elm
        && let Err(err) = elm_steps(g, spec, e, &mut plan, &mut problems, &mut desired).await
    {
        problems.push(err);
    }
    if spec.elm.is_some() && !problems.is_empty() {
        // Permission problems of the other parts were already reported with the ELM check.
        return Err(problems);
    }
    if let Some(l) = &spec.lcw {
        match g
            .list(LCW_EXTENSIONS, "listing the custom task extensions", no_fix)
            .await
            .and_then(|list| {
                by_name(&list, &l.display_name, TASK_TYPE, "custom task extension")
                    .map(|c| c.cloned())
            }) {
            Ok(current) => {
                extension_step(
                    &mut plan,
                    "custom task extension",
                    LCW_EXTENSIONS,
                    current.as_ref(),
                    lcw_body(l, spec),
                    None,
                );
                desired.extensions.push(config_file::DesiredExtension {
                    name: l.name.clone(),
                    resource: l.logic_app.resource_id.clone(),
                    catalog_id: None,
                    lifecycle: Some(l.callback_timeout.0.clone()),
                });
            }
            Err(e) => problems.push(e),
        }
    }
    if let Some(p) = &spec.pim {
        match g
            .list(PIM_EXTENSIONS, "listing the PIM custom extensions", no_fix)
            .await
            .and_then(|list| {
                by_name(&list, &p.display_name, PIM_TYPE, "PIM custom extension")
                    .map(|c| c.cloned())
            }) {
            Ok(current) => {
                let mut body = pim_body(p, spec);
                match &current {
                    // PIM wants a client-generated id (integrations.md §2).
                    None => body["id"] = json!(uuid::Uuid::new_v4().to_string()),
                    // `type` is sent only when not the default; turning post-approval off
                    // must say so.
                    Some(c) if !p.post_approval && c["type"] == "postApproval" => {
                        body["type"] = json!("preApproval");
                    }
                    Some(_) => {}
                }
                extension_step(
                    &mut plan,
                    "PIM custom extension",
                    PIM_EXTENSIONS,
                    current.as_ref(),
                    body,
                    None,
                );
                desired.pim = Some(config_file::DesiredPim {
                    name: p.name.clone(),
                    audience: p.audience.clone(),
                    budget_ms: u64::from(p.timeout_ms) * 6 / 10,
                    post_approval: p.post_approval,
                });
            }
            Err(e) => problems.push(e),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    match config_path {
        Some(path) => match config_file::step(path, &desired) {
            Ok(Some(step)) => plan.steps.push(step),
            Ok(None) => plan
                .unchanged
                .push(format!("{} already names these extensions", path.display())),
            Err(e) => return Err(vec![e]),
        },
        None => plan.notes.push(format!(
            "no configuration file given (--write-config): the sections to add are\n{}",
            config_file::snippet(&desired)
        )),
    }
    // Extensions of every product first, then the role, the policies, the file.
    plan.steps.sort_by_key(|s| s.phase);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query("/x", &[("$filter", "displayName eq 'Sales & Co'")]),
            "/x?$filter=displayName%20eq%20%27Sales%20%26%20Co%27"
        );
        assert_eq!(lit("O'Brien"), "'O''Brien'");
    }
}
