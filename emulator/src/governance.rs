//! Microsoft Graph stand-in for what `accessgate setup` configures: entitlement-management
//! catalogs, access packages and assignment policies (their custom extension stages, `PUT`),
//! catalogs' custom workflow extensions, Lifecycle Workflows custom task extensions, PIM custom
//! extensions (beta), and catalog role assignments (`GET` with `$filter`, `POST`).
//!
//! Why: setup creates the extension and wires it into the policies; a body that passes here has
//! the shape Graph's v1.0 schema gives (`fixtures/graph-v1.0-governance-extract.json`, checked
//! with [`crate::approval::Schemas`]: unknown properties, value types, enum members, duration
//! patterns), names a Logic App that exists, and is sent with a permission that allows it.
//!
//! State: loading a world (`POST /_emulator/world`) resets catalogs, policies and extensions to
//! the world's (docs/world-format.md); objects created through Graph live until the next load.
//! Catalog role assignments are grants of the principals (`principals`) and survive a load.
//!
//! Emulator choices where Graph's docs are silent (emulator/CONTRACT-CHANGES.md lists them):
//! display names compare ignoring case, both for `$filter` and for the 409 on a second extension
//! with the same name (per catalog for entitlement management, per tenant for Lifecycle
//! Workflows and PIM); a catalog that a world access package names but `catalogs` does not list
//! exists without a display name; an extension created without `url` (delegated callers) gets a
//! made-up trigger URL of its Logic App; `PUT` of a policy keeps the display name, description
//! and stages it does not carry, and ignores `accessPackage`, `catalog` and `questions`; beta is
//! checked against the v1.0 schema.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts as _, Query, RawPathParams, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};

use crate::approval::{Rules, Schemas};
use crate::directory::World;
use crate::entra::Caller;
use crate::graph::{
    APPROVAL_STAGE, Rejection, STAGES, graph_caller, graph_error, parse_iso_duration,
};
use crate::principals::{self, CatalogRole};
use crate::state::{AppState, Inner, Shared};

/// The request-workflow extension type (runs at request stages and can wait for a resume).
pub const REQUEST_WORKFLOW_EXTENSION: &str =
    "microsoft.graph.accessPackageAssignmentRequestWorkflowExtension";
/// The assignment-workflow extension type (pre-expiration stages).
pub const ASSIGNMENT_WORKFLOW_EXTENSION: &str =
    "microsoft.graph.accessPackageAssignmentWorkflowExtension";
/// Lifecycle Workflows' custom task extension type.
pub const TASK_EXTENSION: &str = "microsoft.graph.identityGovernance.customTaskExtension";
/// PIM's custom extension type (beta, not in the schema subsets).
pub const PIM_EXTENSION: &str = "microsoft.graph.roleManagementCustomCalloutExtension";
/// The one endpoint type of entitlement-management and Lifecycle Workflows extensions.
pub const LOGIC_APP_ENDPOINT: &str = "microsoft.graph.logicAppTriggerEndpointConfiguration";
/// PIM's endpoint type.
pub const HTTP_ENDPOINT: &str = "microsoft.graph.httpRequestEndpoint";
/// Proof-of-possession authentication.
pub const POP_AUTHENTICATION: &str = "microsoft.graph.azureAdPopTokenAuthentication";
/// Bearer-token authentication (`resourceId` is the token's audience).
pub const TOKEN_AUTHENTICATION: &str = "microsoft.graph.azureAdTokenAuthentication";
/// Callback configuration of entitlement-management extensions.
pub const CALLBACK_CONFIGURATION: &str = "microsoft.graph.customExtensionCallbackConfiguration";
/// Callback configuration of custom task extensions.
pub const TASK_CALLBACK_CONFIGURATION: &str =
    "microsoft.graph.identityGovernance.customTaskExtensionCallbackConfiguration";
/// Client configuration (timeout, retries) of every extension.
pub const CLIENT_CONFIGURATION: &str = "microsoft.graph.customExtensionClientConfiguration";
/// Members of PIM's `resourceType`.
pub const PIM_RESOURCE_TYPES: [&str; 3] = ["entraGroups", "entraRoles", "azureResources"];
/// Members of PIM's `type` (default the first).
pub const PIM_TYPES: [&str; 2] = ["preApproval", "postApproval"];
/// Properties a `PUT`/`PATCH` body may echo that the emulator does not take.
pub const READ_ONLY: [&str; 6] = [
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "modifiedDateTime",
    "createdBy",
    "lastModifiedBy",
];
/// The catalog role that may change a catalog's objects.
pub const CATALOG_OWNER: &str = "Catalog owner";
/// Permissions (roles or scopes) to change custom task extensions.
pub const LCW_WRITE: [&str; 2] = [
    "LifecycleWorkflows-CustomExt.ReadWrite.All",
    "LifecycleWorkflows.ReadWrite.All",
];
/// Permissions to read them.
pub const LCW_READ: [&str; 4] = [
    "LifecycleWorkflows-CustomExt.ReadWrite.All",
    "LifecycleWorkflows.ReadWrite.All",
    "LifecycleWorkflows-CustomExt.Read.All",
    "LifecycleWorkflows.Read.All",
];
/// Delegated scopes to change PIM custom extensions.
pub const PIM_WRITE: [&str; 1] = ["PrivilegedAccess-CustomExt.ReadWrite.All"];
/// Delegated scopes to read them.
pub const PIM_READ: [&str; 2] = [
    "PrivilegedAccess-CustomExt.ReadWrite.All",
    "PrivilegedAccess-CustomExt.Read.All",
];
/// Prefix of a catalog's `appScopeId`.
pub const CATALOG_SCOPE_PREFIX: &str = "/AccessPackageCatalog/";

const ELM_READ: [&str; 2] = [principals::READ_WRITE_ALL, principals::READ_ALL];
const ELM_WRITE: [&str; 1] = [principals::READ_WRITE_ALL];
const STAGE_ENUM: &str = "microsoft.graph.accessPackageCustomExtensionStage";
const POLICY_TYPE: &str = "microsoft.graph.accessPackageAssignmentPolicy";
const ENDPOINT_BASE: &str = "microsoft.graph.customExtensionEndpointConfiguration";
const AUTHENTICATION_BASE: &str = "microsoft.graph.customExtensionAuthenticationConfiguration";
const ROLE_ASSIGNMENT_TYPE: &str = "microsoft.graph.unifiedRoleAssignment";
const WORLD_SUBSCRIPTION: &str = "33333333-4444-5555-6666-777777777777";
const WORLD_RESOURCE_GROUP: &str = "rg-world";

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| {
        Schemas::parse(include_str!(
            "../fixtures/graph-v1.0-governance-extract.json"
        ))
    })
}

/// Catalogs, policies and extensions of the emulated tenant.
#[derive(Debug, Default)]
pub(crate) struct Governance {
    /// When the world was loaded: the creation time of its objects.
    loaded: Option<jiff::Timestamp>,
    catalogs: Vec<Catalog>,
    policies: Vec<Policy>,
    /// Entitlement-management extensions, each with its catalog.
    elm_extensions: Vec<Extension>,
    task_extensions: Vec<Extension>,
    pim_extensions: Vec<Extension>,
}

#[derive(Debug, Clone)]
struct Catalog {
    id: String,
    display_name: Option<String>,
}

#[derive(Debug, Clone)]
struct Policy {
    id: String,
    display_name: Option<String>,
    description: Option<String>,
    access_package_id: String,
    stages: Vec<StageSetting>,
    /// Every other writable property, as the last PUT sent it (PUT replaces the whole policy:
    /// what it leaves out is gone).
    settings: Map<String, Value>,
    /// The requestor's questions (a navigation: served with `$expand=questions`).
    questions: Vec<Value>,
    created: jiff::Timestamp,
    modified: jiff::Timestamp,
}

/// What a world's policy holds besides its name and stages: approval by the requestor's
/// manager and one question, so a PUT that loses parts of a policy shows.
fn world_policy_settings() -> (Map<String, Value>, Vec<Value>) {
    let settings = json!({
        "allowedTargetScope": "allMemberUsers",
        "specificAllowedTargets": [],
        "expiration": {"type": "afterDuration", "endDateTime": Value::Null, "duration": "P365D"},
        "requestorSettings": {
            "enableTargetsToSelfAddAccess": true,
            "enableTargetsToSelfUpdateAccess": false,
            "enableTargetsToSelfRemoveAccess": true,
            "allowCustomAssignmentSchedule": false,
            "enableOnBehalfRequestorsToAddAccess": false,
            "enableOnBehalfRequestorsToUpdateAccess": false,
            "enableOnBehalfRequestorsToRemoveAccess": false,
            "onBehalfRequestors": [],
        },
        "requestApprovalSettings": {
            "isApprovalRequiredForAdd": true,
            "isApprovalRequiredForUpdate": false,
            "isRequestorJustificationRequired": true,
            "stages": [{
                "durationBeforeAutomaticDenial": "P7D",
                "isApproverJustificationRequired": false,
                "isEscalationEnabled": false,
                "durationBeforeEscalation": "PT0S",
                "primaryApprovers": [{"@odata.type": "#microsoft.graph.requestorManager", "managerLevel": 1}],
                "fallbackPrimaryApprovers": [],
                "escalationApprovers": [],
                "fallbackEscalationApprovers": [],
            }],
        },
        "automaticRequestSettings": Value::Null,
    });
    let questions = vec![json!({
        "@odata.type": "#microsoft.graph.accessPackageTextInputQuestion",
        "id": "q0000000-0000-0000-0000-000000000001",
        "sequence": 1,
        "isRequired": true,
        "isAnswerEditable": true,
        "text": "Which ticket asks for this access?",
        "isSingleLineQuestion": true,
        "regexPattern": Value::Null,
    })];
    (settings.as_object().cloned().unwrap_or_default(), questions)
}

#[derive(Debug, Clone)]
struct StageSetting {
    id: String,
    stage: String,
    extension_id: String,
}

/// An extension as Graph serves it (`json`, in Graph's property order), and its catalog.
#[derive(Debug, Clone)]
struct Extension {
    catalog_id: Option<String>,
    json: Map<String, Value>,
}

impl Extension {
    fn id(&self) -> &str {
        self.json.get("id").and_then(Value::as_str).unwrap_or("")
    }

    fn display_name(&self) -> &str {
        self.json
            .get("displayName")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    fn in_catalog(&self, catalog: &str) -> bool {
        self.catalog_id
            .as_deref()
            .is_some_and(|c| c.eq_ignore_ascii_case(catalog))
    }
}

/// Loads a world (docs/world-format.md): the directory and ServiceNow data, and catalogs,
/// policies and entitlement-management extensions, replacing every one created through Graph.
pub(crate) fn load(state: &Shared, world: &World) -> anyhow::Result<()> {
    crate::directory::load(state, world)?;
    let now = jiff::Timestamp::now();
    let mut catalogs: Vec<Catalog> = world
        .catalogs
        .iter()
        .map(|c| Catalog {
            id: c.id.clone(),
            display_name: c.display_name.clone(),
        })
        .collect();
    for p in &world.access_packages {
        if let Some(id) = &p.catalog_id
            && !catalogs.iter().any(|c| c.id.eq_ignore_ascii_case(id))
        {
            catalogs.push(Catalog {
                id: id.clone(),
                display_name: None,
            });
        }
    }
    let elm_extensions = world
        .custom_extensions
        .iter()
        .map(|x| world_extension(x, now))
        .collect();
    let policies = world
        .assignment_policies
        .iter()
        .map(|p| Policy {
            id: p.id.clone(),
            display_name: p.display_name.clone(),
            description: None,
            access_package_id: p.access_package_id.clone(),
            stages: p
                .custom_extension_stage_settings
                .iter()
                .map(|s| StageSetting {
                    id: uuid::Uuid::new_v4().to_string(),
                    stage: s.stage.clone(),
                    extension_id: s.custom_extension_id.clone(),
                })
                .collect(),
            settings: world_policy_settings().0,
            questions: world_policy_settings().1,
            created: now,
            modified: now,
        })
        .collect();
    state.lock().governance = Governance {
        loaded: Some(now),
        catalogs,
        policies,
        elm_extensions,
        task_extensions: Vec::new(),
        pim_extensions: Vec::new(),
    };
    Ok(())
}

/// A world's extension: a request-workflow extension on a made-up Logic App, with PoP
/// authentication and a one-hour callback window.
fn world_extension(x: &accessgate_world::WorldCustomExtension, now: jiff::Timestamp) -> Extension {
    let name = format!("world-{}", x.id);
    let mut json = Map::new();
    json.insert("@odata.type".into(), hashed(REQUEST_WORKFLOW_EXTENSION));
    json.insert("id".into(), json!(x.id));
    json.insert("displayName".into(), json!(x.display_name));
    json.insert("description".into(), Value::Null);
    json.insert("createdDateTime".into(), json!(now.to_string()));
    json.insert("lastModifiedDateTime".into(), json!(now.to_string()));
    json.insert("clientConfiguration".into(), Value::Null);
    json.insert(
        "endpointConfiguration".into(),
        json!({
            "@odata.type": hashed(LOGIC_APP_ENDPOINT),
            "subscriptionId": WORLD_SUBSCRIPTION,
            "resourceGroupName": WORLD_RESOURCE_GROUP,
            "logicAppWorkflowName": name,
            "url": trigger_url(WORLD_SUBSCRIPTION, WORLD_RESOURCE_GROUP, &name),
        }),
    );
    json.insert(
        "authenticationConfiguration".into(),
        json!({"@odata.type": hashed(POP_AUTHENTICATION)}),
    );
    json.insert(
        "callbackConfiguration".into(),
        json!({"@odata.type": hashed(CALLBACK_CONFIGURATION), "timeoutDuration": "PT1H"}),
    );
    Extension {
        catalog_id: Some(x.catalog_id.clone()),
        json,
    }
}

/// `#` + a type name, as Graph writes `@odata.type`.
fn hashed(type_name: &str) -> Value {
    json!(format!("#{type_name}"))
}

/// The `@odata.type` of an object, without its `#`.
fn type_in(o: &Map<String, Value>) -> Option<&str> {
    o.get("@odata.type")
        .and_then(Value::as_str)
        .map(|t| t.strip_prefix('#').unwrap_or(t))
}

/// The `@odata.type` of a value, without its `#`.
fn type_of(v: &Value) -> Option<&str> {
    v.as_object().and_then(type_in)
}

/// The trigger URL Graph reports for a Logic App (made up, stable per resource id).
fn trigger_url(subscription: &str, resource_group: &str, name: &str) -> String {
    let id = format!("{subscription}/{resource_group}/{name}").to_lowercase();
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "https://prod-00.westeurope.logic.azure.com:443/workflows/{hex}/triggers/manual/paths/invoke?api-version=2016-10-01"
    )
}

type Answer = Result<(StatusCode, Value), Rejection>;

fn bad(message: impl Into<String>) -> Rejection {
    (StatusCode::BAD_REQUEST, "BadRequest", message.into())
}

fn denied() -> Rejection {
    (
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.".into(),
    )
}

fn not_found(what: &str, id: &str) -> Rejection {
    (
        StatusCode::NOT_FOUND,
        "ResourceNotFound",
        format!("The {what} '{id}' was not found."),
    )
}

fn conflict(message: String) -> Rejection {
    (StatusCode::CONFLICT, "Conflict", message)
}

/// Whether `caller` may read (or, with `write`, change) entitlement-management objects of
/// `catalog`: a permission as role or scope, or a catalog role there (`Catalog owner` to
/// write). `None`: objects of some catalog (what an unknown id is checked against).
fn may(inner: &Inner, caller: &Caller, catalog: Option<&str>, write: bool) -> bool {
    if caller.holds(if write { &ELM_WRITE } else { &ELM_READ }) {
        return true;
    }
    let Some(principal) = inner.principal_by_oid(&caller.oid) else {
        return false;
    };
    principal.catalog_roles.iter().any(|r| {
        (!write || r.role == CATALOG_OWNER)
            && catalog.is_none_or(|c| r.catalog_id.eq_ignore_ascii_case(c))
    })
}

fn authorize(
    inner: &Inner,
    caller: &Caller,
    catalog: Option<&str>,
    write: bool,
) -> Result<(), Rejection> {
    if may(inner, caller, catalog, write) {
        Ok(())
    } else {
        Err(denied())
    }
}

/// The refusal for an id nothing has: 404 to a caller who could see such an object, else 403.
fn unknown(inner: &Inner, caller: &Caller, write: bool, what: &str, id: &str) -> Rejection {
    if may(inner, caller, None, write) {
        not_found(what, id)
    } else {
        denied()
    }
}

/// A body that must be a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(bad(
            "Invalid request body: the payload must be a JSON object.",
        )),
        Err(e) => Err(bad(format!(
            "Invalid request body: the payload is not valid JSON ({e})."
        ))),
    }
}

fn short(type_name: &str) -> &str {
    type_name.rsplit('.').next().unwrap_or(type_name)
}

/// Checks `body` against `type_name` in the schema extract.
fn check(type_name: &str, body: &Map<String, Value>, rules: &Rules) -> Result<(), Rejection> {
    schemas()
        .check(
            short(type_name),
            type_name,
            &Value::Object(body.clone()),
            rules,
        )
        .map_err(bad)
}

/// `{field} eq '{value}'` with the field ignoring case and `''` for a quote inside the value.
fn eq_clause(clause: &str, field: &str) -> Option<String> {
    let (f, rest) = clause.trim().split_once(char::is_whitespace)?;
    let (op, rest) = rest.trim_start().split_once(char::is_whitespace)?;
    if !f.eq_ignore_ascii_case(field) || !op.eq_ignore_ascii_case("eq") {
        return None;
    }
    let quoted = rest.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    if quoted.replace("''", "").contains('\'') {
        return None;
    }
    Some(quoted.replace("''", "'"))
}

/// The value of the one `$filter` a collection supports (`None` without `$filter`).
fn list_filter(query: &HashMap<String, String>, field: &str) -> Result<Option<String>, Rejection> {
    let Some(filter) = query.get("$filter") else {
        return Ok(None);
    };
    eq_clause(filter, field).map(Some).ok_or_else(|| {
        bad(format!(
            "Invalid filter clause '{filter}': the emulator supports only $filter={field} eq '<value>' here."
        ))
    })
}

/// Top-level items of `$expand`, each with its nested options: `a,b($expand=c)` gives
/// `("a", None)` and `("b", Some("$expand=c"))`.
fn expand_items(
    query: &HashMap<String, String>,
) -> Result<Vec<(String, Option<String>)>, Rejection> {
    let Some(expand) = query.get("$expand") else {
        return Ok(Vec::new());
    };
    let malformed = || {
        bad(format!(
            "Invalid $expand '{expand}': unbalanced parentheses."
        ))
    };
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in expand.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or_else(malformed)?,
            ',' if depth == 0 => {
                items.push(&expand[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(malformed());
    }
    items.push(&expand[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(|item| match item.split_once('(') {
            None => Ok((item.to_owned(), None)),
            Some((name, rest)) => rest
                .strip_suffix(')')
                .map(|inner| (name.trim().to_owned(), Some(inner.trim().to_owned())))
                .ok_or_else(malformed),
        })
        .collect()
}

fn unknown_expand(name: &str, type_name: &str) -> Rejection {
    bad(format!(
        "Parsing OData Select and Expand failed: Could not find a property named '{name}' on type '{type_name}'."
    ))
}

/// `@odata.context` first, then `body`'s members.
fn with_context(state: &Shared, version: &str, what: &str, body: Value) -> Value {
    let mut out = Map::new();
    out.insert(
        "@odata.context".into(),
        json!(format!("{}/{version}/$metadata#{what}", state.base_url)),
    );
    if let Value::Object(o) = body {
        out.extend(o);
    }
    Value::Object(out)
}

/// One extension as an answer, with the `@odata.context` of `what`.
fn entity(state: &Shared, version: &str, what: &str, status: StatusCode, x: &Extension) -> Answer {
    Ok((
        status,
        with_context(state, version, what, Value::Object(x.json.clone())),
    ))
}

/// `GET` of one tenant-wide extension (a task or a PIM extension) by id.
fn get_one(state: &Shared, call: &Call, list: &[Extension], what: &str, set: &str) -> Answer {
    let id = call.id(0);
    let x = list
        .iter()
        .find(|x| x.id().eq_ignore_ascii_case(id))
        .ok_or_else(|| not_found(what, id))?;
    entity(
        state,
        call.version,
        &format!("{set}/$entity"),
        StatusCode::OK,
        x,
    )
}

fn collection(state: &Shared, version: &str, what: &str, value: Vec<Value>) -> Answer {
    Ok((
        StatusCode::OK,
        with_context(state, version, what, json!({ "value": value })),
    ))
}

fn loaded(inner: &Inner) -> String {
    inner
        .governance
        .loaded
        .unwrap_or_else(jiff::Timestamp::now)
        .to_string()
}

fn catalog_json(c: &Catalog, at: &str) -> Value {
    json!({
        "id": c.id,
        "displayName": c.display_name,
        "description": Value::Null,
        "catalogType": "userManaged",
        "state": "published",
        "isExternallyVisible": false,
        "createdDateTime": at,
        "modifiedDateTime": at,
    })
}

fn find_catalog<'a>(inner: &'a Inner, id: &str) -> Option<&'a Catalog> {
    inner
        .governance
        .catalogs
        .iter()
        .find(|c| c.id.eq_ignore_ascii_case(id))
}

fn list_catalogs(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, query) = (call.version, &call.query);
    let name = list_filter(query, "displayName")?;
    let inner = state.lock();
    authorize(&inner, caller, None, false)?;
    let value = inner
        .governance
        .catalogs
        .iter()
        .filter(|c| may(&inner, caller, Some(&c.id), false))
        .filter(|c| name_matches(c.display_name.as_deref(), name.as_deref()))
        .map(|c| catalog_json(c, &loaded(&inner)))
        .collect();
    collection(
        state,
        version,
        "identityGovernance/entitlementManagement/catalogs",
        value,
    )
}

fn name_matches(display_name: Option<&str>, wanted: Option<&str>) -> bool {
    wanted.is_none_or(|w| display_name.is_some_and(|d| d.eq_ignore_ascii_case(w)))
}

fn get_catalog(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, id) = (call.version, call.id(0));
    let inner = state.lock();
    let Some(c) = find_catalog(&inner, id) else {
        return Err(unknown(&inner, caller, false, "catalog", id));
    };
    authorize(&inner, caller, Some(&c.id), false)?;
    let body = catalog_json(c, &loaded(&inner));
    Ok((
        StatusCode::OK,
        with_context(
            state,
            version,
            "identityGovernance/entitlementManagement/catalogs/$entity",
            body,
        ),
    ))
}

fn package_json(inner: &Inner, p: &accessgate_world::WorldPackage, expand_catalog: bool) -> Value {
    let at = loaded(inner);
    let mut v = json!({
        "id": p.id,
        "displayName": p.display_name,
        "description": Value::Null,
        "isHidden": false,
        "createdDateTime": at,
        "modifiedDateTime": at,
    });
    if expand_catalog {
        v["catalog"] = p
            .catalog_id
            .as_deref()
            .and_then(|c| find_catalog(inner, c))
            .map_or(Value::Null, |c| catalog_json(c, &loaded(inner)));
    }
    v
}

/// Whether `$expand` asks for the package's catalog (the only expansion supported).
fn package_expand(query: &HashMap<String, String>) -> Result<bool, Rejection> {
    let mut catalog = false;
    for (name, options) in expand_items(query)? {
        if name != "catalog" || options.is_some() {
            return Err(unknown_expand(&name, "microsoft.graph.accessPackage"));
        }
        catalog = true;
    }
    Ok(catalog)
}

fn list_packages(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, query) = (call.version, &call.query);
    let name = list_filter(query, "displayName")?;
    let expand = package_expand(query)?;
    let inner = state.lock();
    authorize(&inner, caller, None, false)?;
    let value = inner
        .world
        .access_packages
        .iter()
        .filter(|p| {
            p.catalog_id
                .as_deref()
                .is_some_and(|c| may(&inner, caller, Some(c), false))
                || caller.holds(&ELM_READ)
        })
        .filter(|p| name_matches(p.display_name.as_deref(), name.as_deref()))
        .map(|p| package_json(&inner, p, expand))
        .collect();
    collection(
        state,
        version,
        "identityGovernance/entitlementManagement/accessPackages",
        value,
    )
}

fn get_package(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, id, query) = (call.version, call.id(0), &call.query);
    let expand = package_expand(query)?;
    let inner = state.lock();
    let Some(p) = inner.world.package(id) else {
        return Err(unknown(&inner, caller, false, "access package", id));
    };
    authorize(&inner, caller, p.catalog_id.as_deref().or(Some("")), false)?;
    let body = package_json(&inner, p, expand);
    Ok((
        StatusCode::OK,
        with_context(
            state,
            version,
            "identityGovernance/entitlementManagement/accessPackages/$entity",
            body,
        ),
    ))
}

/// The catalog of a policy: its access package's.
fn policy_catalog(inner: &Inner, p: &Policy) -> Option<String> {
    inner
        .world
        .package(&p.access_package_id)
        .and_then(|a| a.catalog_id.clone())
}

/// What a policy `GET` expands.
#[derive(Debug, Default, Clone, Copy)]
struct PolicyExpand {
    access_package: bool,
    stages: bool,
    extensions: bool,
    questions: bool,
}

fn policy_expand(query: &HashMap<String, String>) -> Result<PolicyExpand, Rejection> {
    let mut e = PolicyExpand::default();
    for (name, options) in expand_items(query)? {
        match (name.as_str(), options.as_deref()) {
            ("accessPackage", None) => e.access_package = true,
            ("questions", None) => e.questions = true,
            ("customExtensionStageSettings", None) => e.stages = true,
            ("customExtensionStageSettings", Some(o)) => {
                let nested = o.strip_prefix("$expand=").map(str::trim);
                if nested != Some("customExtension") {
                    return Err(bad(format!(
                        "Invalid $expand option '{o}' of customExtensionStageSettings: the emulator supports $expand=customExtension."
                    )));
                }
                e.stages = true;
                e.extensions = true;
            }
            _ => return Err(unknown_expand(&name, POLICY_TYPE)),
        }
    }
    Ok(e)
}

/// A policy's own properties (only ones the v1.0 schema has).
fn policy_base_json(p: &Policy) -> Value {
    let mut v = json!({
        "id": p.id,
        "displayName": p.display_name,
        "description": p.description,
        "createdDateTime": p.created.to_string(),
        "modifiedDateTime": p.modified.to_string(),
    });
    if let Value::Object(m) = &mut v {
        for (k, val) in &p.settings {
            m.insert(k.clone(), val.clone());
        }
    }
    v
}

fn policy_json(inner: &Inner, p: &Policy, e: PolicyExpand) -> Value {
    let mut v = policy_base_json(p);
    if e.access_package {
        let name = inner
            .world
            .package(&p.access_package_id)
            .and_then(|a| a.display_name.clone());
        v["accessPackage"] = json!({"id": p.access_package_id, "displayName": name});
    }
    if e.questions {
        v["questions"] = Value::Array(p.questions.clone());
    }
    if e.stages {
        v["customExtensionStageSettings"] = p
            .stages
            .iter()
            .map(|s| {
                let mut item = json!({"id": s.id, "stage": s.stage});
                if e.extensions {
                    item["customExtension"] = inner
                        .governance
                        .elm_extensions
                        .iter()
                        .find(|x| x.id().eq_ignore_ascii_case(&s.extension_id))
                        .map_or_else(
                            || json!({"id": s.extension_id}),
                            |x| Value::Object(x.json.clone()),
                        );
                }
                item
            })
            .collect();
    }
    v
}

fn list_policies(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, query) = (call.version, &call.query);
    let package = list_filter(query, "accessPackage/id")?;
    let expand = policy_expand(query)?;
    let inner = state.lock();
    authorize(&inner, caller, None, false)?;
    let value = inner
        .governance
        .policies
        .iter()
        .filter(|p| {
            package
                .as_deref()
                .is_none_or(|id| p.access_package_id.eq_ignore_ascii_case(id))
        })
        .filter(|p| {
            may(
                &inner,
                caller,
                Some(&policy_catalog(&inner, p).unwrap_or_default()),
                false,
            )
        })
        .map(|p| policy_json(&inner, p, expand))
        .collect();
    collection(
        state,
        version,
        "identityGovernance/entitlementManagement/assignmentPolicies",
        value,
    )
}

fn find_policy<'a>(inner: &'a Inner, id: &str) -> Option<&'a Policy> {
    inner
        .governance
        .policies
        .iter()
        .find(|p| p.id.eq_ignore_ascii_case(id))
}

fn get_policy(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, id, query) = (call.version, call.id(0), &call.query);
    let expand = policy_expand(query)?;
    let inner = state.lock();
    let Some(p) = find_policy(&inner, id) else {
        return Err(unknown(&inner, caller, false, "assignment policy", id));
    };
    authorize(
        &inner,
        caller,
        Some(&policy_catalog(&inner, p).unwrap_or_default()),
        false,
    )?;
    let body = policy_json(&inner, p, expand);
    Ok((
        StatusCode::OK,
        with_context(
            state,
            version,
            "identityGovernance/entitlementManagement/assignmentPolicies/$entity",
            body,
        ),
    ))
}

/// `PUT` of a policy: its display name, description and custom extension stages.
fn put_policy(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, id, body) = (call.version, call.id(0), &call.body[..]);
    let mut inner = state.lock();
    let Some(policy) = find_policy(&inner, id).cloned() else {
        return Err(unknown(&inner, caller, true, "assignment policy", id));
    };
    let catalog = policy_catalog(&inner, &policy).unwrap_or_default();
    authorize(&inner, caller, Some(&catalog), true)?;
    let body = object(body)?;
    let rules = Rules {
        ignored: &READ_ONLY,
        extra_members: &[(STAGE_ENUM, APPROVAL_STAGE)],
    };
    check(POLICY_TYPE, &body, &rules)?;
    let stages = match body.get("customExtensionStageSettings") {
        Some(Value::Array(items)) => Some(stage_settings(&inner, &policy, &catalog, items)?),
        _ => None,
    };
    if let Some(pkg) = body
        .get("accessPackage")
        .and_then(|a| a.get("id"))
        .and_then(Value::as_str)
        && !pkg.eq_ignore_ascii_case(&policy.access_package_id)
    {
        return Err(bad(format!(
            "The policy belongs to access package '{}', not '{pkg}': a policy cannot move.",
            policy.access_package_id
        )));
    }
    // PUT replaces the policy: what the body leaves out is gone.
    let mut settings = Map::new();
    for (k, v) in &body {
        let kept_apart = [
            "@odata.type",
            "displayName",
            "description",
            "customExtensionStageSettings",
            "questions",
            "accessPackage",
            "catalog",
        ];
        if !kept_apart.contains(&k.as_str()) && !READ_ONLY.contains(&k.as_str()) {
            settings.insert(k.clone(), v.clone());
        }
    }
    let questions = body
        .get("questions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(record) = inner
        .governance
        .policies
        .iter_mut()
        .find(|p| p.id.eq_ignore_ascii_case(id))
    else {
        return Err(not_found("assignment policy", id));
    };
    record.display_name = text("displayName");
    record.description = text("description");
    record.stages = stages.unwrap_or_default();
    record.settings = settings;
    record.questions = questions;
    record.modified = jiff::Timestamp::now();
    let record = record.clone();
    tracing::info!(policy = %record.id, stages = record.stages.len(), "assignment policy replaced");
    let expand = PolicyExpand {
        access_package: false,
        stages: true,
        extensions: true,
        questions: true,
    };
    let body = policy_json(&inner, &record, expand);
    Ok((
        StatusCode::OK,
        with_context(
            state,
            version,
            "identityGovernance/entitlementManagement/assignmentPolicies/$entity",
            body,
        ),
    ))
}

/// The stage settings of a `PUT` (already checked against the schema): real stages, each
/// once, each naming an extension of the policy's catalog.
fn stage_settings(
    inner: &Inner,
    policy: &Policy,
    catalog: &str,
    items: &[Value],
) -> Result<Vec<StageSetting>, Rejection> {
    let mut out: Vec<StageSetting> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("customExtensionStageSettings[{i}]");
        let stage = item
            .get("stage")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("'{at}.stage' is required.")))?;
        let real =
            (STAGES.contains(&stage) && stage != "unknownFutureValue") || stage == APPROVAL_STAGE;
        if !real {
            return Err(bad(format!(
                "Requested value '{stage}' was not found in enum '{STAGE_ENUM}'."
            )));
        }
        let extension_id = item
            .get("customExtension")
            .and_then(|x| x.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("'{at}.customExtension.id' is required.")))?;
        let Some(extension) = inner
            .governance
            .elm_extensions
            .iter()
            .find(|x| x.id().eq_ignore_ascii_case(extension_id) && x.in_catalog(catalog))
        else {
            return Err(bad(format!(
                "The custom extension '{extension_id}' was not found in catalog '{catalog}'."
            )));
        };
        // The pre-expiration stages run assignment workflow extensions; the request stages
        // (and dynamic approval) run request workflow extensions.
        let wants = if stage.starts_with("assignment") && stage.contains("BeforeExpiration") {
            ASSIGNMENT_WORKFLOW_EXTENSION
        } else {
            REQUEST_WORKFLOW_EXTENSION
        };
        let is = extension
            .json
            .get("@odata.type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim_start_matches('#');
        if is != wants {
            return Err(bad(format!(
                "The custom extension '{extension_id}' is a '{is}': the stage '{stage}' runs a '{wants}'."
            )));
        }
        if out.iter().any(|s| s.stage == stage) {
            return Err(bad(format!(
                "The stage '{stage}' is set more than once in customExtensionStageSettings: a policy runs one custom extension per stage."
            )));
        }
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| {
                policy
                    .stages
                    .iter()
                    .find(|s| s.stage == stage && s.extension_id.eq_ignore_ascii_case(extension_id))
                    .map(|s| s.id.clone())
            })
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        out.push(StageSetting {
            id,
            stage: stage.to_owned(),
            extension_id: extension_id.to_owned(),
        });
    }
    Ok(out)
}

/// Which extensions a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// Entitlement management (a catalog's `customWorkflowExtensions`).
    Elm,
    /// Lifecycle Workflows (`customTaskExtensions`).
    Task,
}

impl Flavour {
    fn callback_type(self) -> &'static str {
        match self {
            Self::Elm => CALLBACK_CONFIGURATION,
            Self::Task => TASK_CALLBACK_CONFIGURATION,
        }
    }

    /// The documented callback window.
    fn window(self) -> (Duration, Duration, &'static str) {
        match self {
            Self::Elm => (
                Duration::from_secs(300),
                Duration::from_secs(14 * 86400),
                "PT5M and P14D",
            ),
            Self::Task => (
                Duration::from_secs(300),
                Duration::from_secs(3 * 3600),
                "PT5M and PT3H",
            ),
        }
    }
}

/// The extension type a body names: for entitlement management one of the two workflow
/// extension types, required (`stored`: the type of the extension a `PATCH` changes); for
/// Lifecycle Workflows the task extension type, optional.
fn extension_type(
    flavour: Flavour,
    body: &Map<String, Value>,
    stored: Option<&str>,
) -> Result<&'static str, Rejection> {
    let named = type_in(body).map(str::to_owned);
    if flavour == Flavour::Task {
        return match named.as_deref() {
            None | Some(TASK_EXTENSION) => Ok(TASK_EXTENSION),
            Some(other) => Err(bad(format!(
                "The type '{other}' is not '{TASK_EXTENSION}' or a type derived from it."
            ))),
        };
    }
    let Some(named) = named else {
        if stored.is_some() {
            return Err(bad(format!(
                "The request body must carry '@odata.type' ('#{REQUEST_WORKFLOW_EXTENSION}' or '#{ASSIGNMENT_WORKFLOW_EXTENSION}'): Graph needs it to update a derived type."
            )));
        }
        // The documentation's example wraps the body in "value": refuse it by its property.
        let known = |k: &str| {
            [REQUEST_WORKFLOW_EXTENSION, ASSIGNMENT_WORKFLOW_EXTENSION]
                .iter()
                .any(|t| schemas().properties(t).contains_key(k))
        };
        if let Some(k) = body.keys().find(|k| !k.starts_with("@odata.") && !known(k)) {
            return Err(bad(format!(
                "Invalid property '{k}'. The property '{k}' does not exist on type '{REQUEST_WORKFLOW_EXTENSION}'. Make sure to only use property names that are defined by the type."
            )));
        }
        return Err(bad(format!(
            "The request body must carry '@odata.type': '#{REQUEST_WORKFLOW_EXTENSION}' or '#{ASSIGNMENT_WORKFLOW_EXTENSION}'."
        )));
    };
    let t = [REQUEST_WORKFLOW_EXTENSION, ASSIGNMENT_WORKFLOW_EXTENSION]
        .into_iter()
        .find(|t| *t == named)
        .ok_or_else(|| {
            bad(format!(
                "The type '{named}' is not an entitlement-management workflow extension ('#{REQUEST_WORKFLOW_EXTENSION}' or '#{ASSIGNMENT_WORKFLOW_EXTENSION}')."
            ))
        })?;
    if let Some(s) = stored
        && s != t
    {
        return Err(bad(format!(
            "The extension is a '{s}'; a PATCH cannot change its type to '{t}'."
        )));
    }
    Ok(t)
}

/// The Logic Apps that exist: the world's and the emulator's own two.
fn logic_app_exists(state: &Shared, inner: &Inner, sub: &str, rg: &str, name: &str) -> bool {
    inner
        .world
        .logic_apps
        .iter()
        .map(String::as_str)
        .chain([
            state.cfg.logic_app_resource.as_str(),
            state.cfg.lcw_logic_app_resource.as_str(),
        ])
        .filter_map(accessgate_world::logic_app_parts)
        .any(|(s, r, n)| {
            s.eq_ignore_ascii_case(sub)
                && r.eq_ignore_ascii_case(rg)
                && n.eq_ignore_ascii_case(name)
        })
}

/// An endpoint URL: https, or http to a loopback host only.
fn check_url(at: &str, url: &str) -> Result<(), Rejection> {
    let parsed =
        reqwest::Url::parse(url).map_err(|_| bad(format!("'{at}' is not an absolute URL.")))?;
    let host = parsed.host_str().unwrap_or("");
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(bad(format!(
            "'{at}' must be an https URL (http only to a loopback address)."
        ))),
    }
}

/// A logic-app endpoint, normalized (`url` filled in for delegated callers that give none).
fn logic_app_endpoint(
    state: &Shared,
    inner: &Inner,
    caller: &Caller,
    v: &Value,
) -> Result<Value, Rejection> {
    if type_of(v) != Some(LOGIC_APP_ENDPOINT) {
        return Err(bad(format!(
            "'endpointConfiguration' must be a '#{LOGIC_APP_ENDPOINT}'."
        )));
    }
    let field = |k: &str| -> Result<String, Rejection> {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("'endpointConfiguration.{k}' is required.")))
    };
    let (sub, rg, name) = (
        field("subscriptionId")?,
        field("resourceGroupName")?,
        field("logicAppWorkflowName")?,
    );
    if !logic_app_exists(state, inner, &sub, &rg, &name) {
        return Err((
            StatusCode::BAD_REQUEST,
            "InvalidLogicApp",
            format!(
                "The logic app '{name}' in resource group '{rg}' of subscription '{sub}' was not found."
            ),
        ));
    }
    let url = match v
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        Some(u) => {
            check_url("endpointConfiguration.url", u)?;
            u.to_owned()
        }
        None if caller.is_app_only() => {
            return Err(bad(
                "'endpointConfiguration.url' is required for app-only calls: Graph cannot read the Logic App's trigger URL without a user.",
            ));
        }
        None => trigger_url(&sub, &rg, &name),
    };
    Ok(json!({
        "@odata.type": hashed(LOGIC_APP_ENDPOINT),
        "subscriptionId": sub,
        "resourceGroupName": rg,
        "logicAppWorkflowName": name,
        "url": url,
    }))
}

/// PoP, or a bearer token for a non-empty `resourceId`; normalized.
fn authentication(v: &Value, allow_pop: bool) -> Result<Value, Rejection> {
    match type_of(v) {
        Some(POP_AUTHENTICATION) if allow_pop => {
            Ok(json!({"@odata.type": hashed(POP_AUTHENTICATION)}))
        }
        Some(TOKEN_AUTHENTICATION) => {
            let resource = v
                .get("resourceId")
                .and_then(Value::as_str)
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| bad("'authenticationConfiguration.resourceId' is required."))?;
            Ok(json!({"@odata.type": hashed(TOKEN_AUTHENTICATION), "resourceId": resource}))
        }
        other => Err(bad(format!(
            "'authenticationConfiguration' must be {}, not '{}'.",
            if allow_pop {
                format!("'#{POP_AUTHENTICATION}' or '#{TOKEN_AUTHENTICATION}'")
            } else {
                format!("'#{TOKEN_AUTHENTICATION}'")
            },
            other.unwrap_or("(no @odata.type)")
        ))),
    }
}

/// The callback configuration of `flavour` with its window; normalized (`@odata.bind`
/// annotations are accepted and not kept).
fn callback(flavour: Flavour, v: &Value) -> Result<Value, Rejection> {
    let want = flavour.callback_type();
    let named = type_of(v).unwrap_or(want);
    if named != want {
        return Err(bad(format!(
            "'callbackConfiguration' must be a '#{want}', not '{named}'."
        )));
    }
    let mut out = Map::new();
    out.insert("@odata.type".into(), hashed(want));
    if let Value::Object(o) = v {
        for (k, val) in o {
            if k != "@odata.type" && !k.contains('@') {
                out.insert(k.clone(), val.clone());
            }
        }
    }
    if let Some(t) = v.get("timeoutDuration").and_then(Value::as_str) {
        let (min, max, range) = flavour.window();
        let d = parse_iso_duration(t)
            .map_err(|e| bad(format!("'callbackConfiguration.timeoutDuration': {e:#}.")))?;
        if d < min || d > max {
            return Err(bad(format!(
                "'callbackConfiguration.timeoutDuration' is '{t}'; it must be between {range}."
            )));
        }
    }
    Ok(Value::Object(out))
}

/// Timeout and retries; normalized. `ranges`: entitlement management's and Lifecycle
/// Workflows' documented ranges, else only positive values (PIM).
fn client_configuration(v: &Value, ranges: bool) -> Result<Value, Rejection> {
    let timeout = v.get("timeoutInMilliseconds").and_then(Value::as_i64);
    let retries = v.get("maximumRetries").and_then(Value::as_i64);
    let (timeout_ok, retries_ok, says) = if ranges {
        (
            timeout.is_none_or(|t| (200..=2000).contains(&t)),
            retries.is_none_or(|r| (0..=1).contains(&r)),
            "timeoutInMilliseconds must be between 200 and 2000, maximumRetries 0 or 1",
        )
    } else {
        (
            timeout.is_none_or(|t| t > 0),
            retries.is_none_or(|r| r >= 0),
            "timeoutInMilliseconds must be positive, maximumRetries not negative",
        )
    };
    if !timeout_ok || !retries_ok {
        return Err(bad(format!("'clientConfiguration': {says}.")));
    }
    Ok(json!({
        "@odata.type": hashed(CLIENT_CONFIGURATION),
        "timeoutInMilliseconds": timeout,
        "maximumRetries": retries,
    }))
}

/// The configuration members of an extension body, checked and normalized in Graph's order;
/// `create`: the members a `POST` needs are required.
fn extension_members(
    state: &Shared,
    inner: &Inner,
    caller: &Caller,
    flavour: Flavour,
    body: &Map<String, Value>,
    create: bool,
) -> Result<Map<String, Value>, Rejection> {
    let mut out = Map::new();
    let present = |k: &str| body.get(k).filter(|v| !v.is_null());
    match present("displayName").and_then(Value::as_str) {
        Some(n) if !n.trim().is_empty() => {
            out.insert("displayName".into(), json!(n));
        }
        _ if create || body.contains_key("displayName") => {
            return Err(bad("'displayName' is required and must not be empty."));
        }
        _ => {}
    }
    if let Some(d) = body.get("description") {
        out.insert("description".into(), d.clone());
    }
    if let Some(c) = body.get("clientConfiguration") {
        let c = if c.is_null() {
            Value::Null
        } else {
            client_configuration(c, true)?
        };
        out.insert("clientConfiguration".into(), c);
    }
    for (key, required) in [
        ("endpointConfiguration", true),
        ("authenticationConfiguration", true),
        ("callbackConfiguration", false),
    ] {
        let Some(v) = present(key) else {
            if required && (create || body.contains_key(key)) {
                return Err(bad(format!("'{key}' is required.")));
            }
            if body.contains_key(key) {
                out.insert(key.into(), Value::Null);
            }
            continue;
        };
        let normalized = match key {
            "endpointConfiguration" => logic_app_endpoint(state, inner, caller, v)?,
            "authenticationConfiguration" => authentication(v, true)?,
            _ => callback(flavour, v)?,
        };
        out.insert(key.into(), normalized);
    }
    Ok(out)
}

/// A new extension's JSON: type, id, timestamps and the members in Graph's order.
fn new_extension_json(type_name: &str, members: Map<String, Value>) -> Map<String, Value> {
    let now = jiff::Timestamp::now().to_string();
    let mut json = Map::new();
    json.insert("@odata.type".into(), hashed(type_name));
    json.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    json.insert("displayName".into(), Value::Null);
    json.insert("description".into(), Value::Null);
    json.insert("createdDateTime".into(), json!(now));
    json.insert("lastModifiedDateTime".into(), json!(now));
    json.insert("clientConfiguration".into(), Value::Null);
    json.insert("endpointConfiguration".into(), Value::Null);
    json.insert("authenticationConfiguration".into(), Value::Null);
    json.insert("callbackConfiguration".into(), Value::Null);
    json.extend(members);
    json
}

fn find_elm<'a>(inner: &'a Inner, catalog: &str, id: &str) -> Option<&'a Extension> {
    inner
        .governance
        .elm_extensions
        .iter()
        .find(|x| x.in_catalog(catalog) && x.id().eq_ignore_ascii_case(id))
}

/// The catalog of an entitlement-management extension route, authorized.
fn elm_catalog(
    inner: &Inner,
    caller: &Caller,
    catalog: &str,
    write: bool,
) -> Result<String, Rejection> {
    let Some(c) = find_catalog(inner, catalog) else {
        return Err(unknown(inner, caller, write, "catalog", catalog));
    };
    authorize(inner, caller, Some(&c.id), write)?;
    Ok(c.id.clone())
}

fn elm_context(catalog: &str, entity: bool) -> String {
    let set = format!(
        "identityGovernance/entitlementManagement/catalogs('{catalog}')/customWorkflowExtensions"
    );
    if entity {
        format!("{set}/$entity")
    } else {
        set
    }
}

fn list_elm(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, catalog) = (call.version, call.id(0));
    let name = list_filter(&call.query, "displayName")?;
    let inner = state.lock();
    let catalog = elm_catalog(&inner, caller, catalog, false)?;
    let value = extension_list(
        inner
            .governance
            .elm_extensions
            .iter()
            .filter(|x| x.in_catalog(&catalog)),
        name.as_deref(),
    );
    collection(state, version, &elm_context(&catalog, false), value)
}

/// The JSON of `extensions` named `name` (ignoring case), or of all without a name.
fn extension_list<'a>(
    extensions: impl Iterator<Item = &'a Extension>,
    name: Option<&str>,
) -> Vec<Value> {
    extensions
        .filter(|x| name_matches(Some(x.display_name()), name))
        .map(|x| Value::Object(x.json.clone()))
        .collect()
}

fn get_elm(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, catalog, id) = (call.version, call.id(0), call.id(1));
    let inner = state.lock();
    let catalog = elm_catalog(&inner, caller, catalog, false)?;
    let x = find_elm(&inner, &catalog, id).ok_or_else(|| not_found("custom extension", id))?;
    entity(
        state,
        version,
        &elm_context(&catalog, true),
        StatusCode::OK,
        x,
    )
}

/// Refuses a second extension named `name` among `others` (by display name, ignoring case).
fn unique_name<'a>(
    mut others: impl Iterator<Item = &'a Extension>,
    name: Option<&str>,
    except: Option<&str>,
    scope: &str,
) -> Result<(), Rejection> {
    let Some(name) = name else {
        return Ok(());
    };
    if others.any(|x| {
        x.display_name().eq_ignore_ascii_case(name)
            && except.is_none_or(|e| !x.id().eq_ignore_ascii_case(e))
    }) {
        return Err(conflict(format!(
            "A custom extension with the display name '{name}' already exists {scope}."
        )));
    }
    Ok(())
}

fn post_elm(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, catalog, body) = (call.version, call.id(0), &call.body[..]);
    let mut inner = state.lock();
    let catalog = elm_catalog(&inner, caller, catalog, true)?;
    let body = object(body)?;
    let type_name = extension_type(Flavour::Elm, &body, None)?;
    check(type_name, &body, &Rules::default())?;
    let members = extension_members(state, &inner, caller, Flavour::Elm, &body, true)?;
    let name = members.get("displayName").and_then(Value::as_str);
    unique_name(
        inner
            .governance
            .elm_extensions
            .iter()
            .filter(|x| x.in_catalog(&catalog)),
        name,
        None,
        &format!("in catalog '{catalog}'"),
    )?;
    let x = Extension {
        catalog_id: Some(catalog.clone()),
        json: new_extension_json(type_name, members),
    };
    tracing::info!(extension = %x.id(), %catalog, "custom workflow extension created");
    let answer = entity(
        state,
        version,
        &elm_context(&catalog, true),
        StatusCode::CREATED,
        &x,
    );
    inner.governance.elm_extensions.push(x);
    answer
}

/// Applies checked members to a stored extension (`PATCH`): each present member replaces the
/// stored one, and `lastModifiedDateTime` moves.
fn merge(json: &mut Map<String, Value>, members: Map<String, Value>) {
    json.extend(members);
    json.insert(
        "lastModifiedDateTime".into(),
        json!(jiff::Timestamp::now().to_string()),
    );
}

fn patch_elm(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, catalog, id, body) = (call.version, call.id(0), call.id(1), &call.body[..]);
    let mut inner = state.lock();
    let catalog = elm_catalog(&inner, caller, catalog, true)?;
    let stored = find_elm(&inner, &catalog, id).ok_or_else(|| not_found("custom extension", id))?;
    let stored_type = type_in(&stored.json)
        .unwrap_or(REQUEST_WORKFLOW_EXTENSION)
        .to_owned();
    let body = object(body)?;
    let type_name = extension_type(Flavour::Elm, &body, Some(&stored_type))?;
    check(
        type_name,
        &body,
        &Rules {
            ignored: &READ_ONLY,
            ..Rules::default()
        },
    )?;
    let members = extension_members(state, &inner, caller, Flavour::Elm, &body, false)?;
    unique_name(
        inner
            .governance
            .elm_extensions
            .iter()
            .filter(|x| x.in_catalog(&catalog)),
        members.get("displayName").and_then(Value::as_str),
        Some(id),
        &format!("in catalog '{catalog}'"),
    )?;
    let x = inner
        .governance
        .elm_extensions
        .iter_mut()
        .find(|x| x.in_catalog(&catalog) && x.id().eq_ignore_ascii_case(id))
        .ok_or_else(|| not_found("custom extension", id))?;
    merge(&mut x.json, members);
    entity(
        state,
        version,
        &elm_context(&catalog, true),
        StatusCode::OK,
        x,
    )
}

const TASK_SET: &str = "identityGovernance/lifecycleWorkflows/customTaskExtensions";

fn lcw_authorize(caller: &Caller, write: bool) -> Result<(), Rejection> {
    let ok = if write {
        caller.holds(&LCW_WRITE)
    } else {
        caller.holds(&LCW_READ)
    };
    if ok { Ok(()) } else { Err(denied()) }
}

fn list_tasks(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    lcw_authorize(caller, false)?;
    let name = list_filter(&call.query, "displayName")?;
    let inner = state.lock();
    let value = extension_list(inner.governance.task_extensions.iter(), name.as_deref());
    collection(state, call.version, TASK_SET, value)
}

fn get_task(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    lcw_authorize(caller, false)?;
    let inner = state.lock();
    let list = &inner.governance.task_extensions;
    get_one(state, call, list, "custom task extension", TASK_SET)
}

fn post_task(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, body) = (call.version, &call.body[..]);
    lcw_authorize(caller, true)?;
    let mut inner = state.lock();
    let body = object(body)?;
    let type_name = extension_type(Flavour::Task, &body, None)?;
    check(type_name, &body, &Rules::default())?;
    let members = extension_members(state, &inner, caller, Flavour::Task, &body, true)?;
    unique_name(
        inner.governance.task_extensions.iter(),
        members.get("displayName").and_then(Value::as_str),
        None,
        "in the tenant",
    )?;
    let x = Extension {
        catalog_id: None,
        json: new_extension_json(type_name, members),
    };
    tracing::info!(extension = %x.id(), "custom task extension created");
    let answer = entity(
        state,
        version,
        &format!("{TASK_SET}/$entity"),
        StatusCode::CREATED,
        &x,
    );
    inner.governance.task_extensions.push(x);
    answer
}

fn patch_task(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, id, body) = (call.version, call.id(0), &call.body[..]);
    lcw_authorize(caller, true)?;
    let mut inner = state.lock();
    if !inner
        .governance
        .task_extensions
        .iter()
        .any(|x| x.id().eq_ignore_ascii_case(id))
    {
        return Err(not_found("custom task extension", id));
    }
    let body = object(body)?;
    let type_name = extension_type(Flavour::Task, &body, None)?;
    check(
        type_name,
        &body,
        &Rules {
            ignored: &READ_ONLY,
            ..Rules::default()
        },
    )?;
    let members = extension_members(state, &inner, caller, Flavour::Task, &body, false)?;
    unique_name(
        inner.governance.task_extensions.iter(),
        members.get("displayName").and_then(Value::as_str),
        Some(id),
        "in the tenant",
    )?;
    let x = inner
        .governance
        .task_extensions
        .iter_mut()
        .find(|x| x.id().eq_ignore_ascii_case(id))
        .ok_or_else(|| not_found("custom task extension", id))?;
    merge(&mut x.json, members);
    entity(
        state,
        version,
        &format!("{TASK_SET}/$entity"),
        StatusCode::OK,
        x,
    )
}

const PIM_SET: &str = "identityGovernance/privilegedAccess/customExtensions";
/// The members of a PIM custom extension (its type is in neither schema subset).
const PIM_MEMBERS: [&str; 10] = [
    "@odata.type",
    "id",
    "displayName",
    "description",
    "endpointConfiguration",
    "authenticationConfiguration",
    "clientConfiguration",
    "resourceType",
    "type",
    "customAttributes",
];

/// PIM's custom extension API takes delegated tokens only.
fn pim_authorize(caller: &Caller, write: bool) -> Result<(), Rejection> {
    if caller.is_app_only() {
        return Err((
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "This API supports delegated permissions only: an app-only token cannot manage PIM custom extensions. Sign in as a user (device code) with PrivilegedAccess-CustomExt.ReadWrite.All.".into(),
        ));
    }
    let ok = if write {
        caller.holds(&PIM_WRITE)
    } else {
        caller.holds(&PIM_READ)
    };
    if ok { Ok(()) } else { Err(denied()) }
}

/// A PIM custom extension body, checked by hand (nested objects against the schema extract)
/// and normalized; `create`: a `POST`, whose required members must be there.
fn pim_members(body: &Map<String, Value>, create: bool) -> Result<Map<String, Value>, Rejection> {
    for k in body.keys() {
        if !PIM_MEMBERS.contains(&k.as_str()) && !k.starts_with("@odata.") {
            return Err(bad(format!(
                "Invalid property '{k}'. The property '{k}' does not exist on type '{PIM_EXTENSION}'. Make sure to only use property names that are defined by the type."
            )));
        }
    }
    match type_in(body) {
        Some(PIM_EXTENSION) => {}
        None if !create => {}
        other => {
            return Err(bad(format!(
                "The request body must carry '@odata.type' = '#{PIM_EXTENSION}', not '{}'.",
                other.unwrap_or("(none)")
            )));
        }
    }
    let mut out = Map::new();
    let present = |k: &str| body.get(k).filter(|v| !v.is_null());
    let required = |k: &str| -> Result<Option<&Value>, Rejection> {
        match present(k) {
            None if create || body.contains_key(k) => Err(bad(format!("'{k}' is required."))),
            v => Ok(v),
        }
    };
    if let Some(n) = required("displayName")? {
        let n = n
            .as_str()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| bad("'displayName' must be a non-empty string."))?;
        out.insert("displayName".into(), json!(n));
    }
    if let Some(d) = body.get("description") {
        if !d.is_null() && !d.is_string() {
            return Err(bad("'description': a string is expected."));
        }
        out.insert("description".into(), d.clone());
    }
    let rules = Rules::default();
    if let Some(e) = required("endpointConfiguration")? {
        schemas()
            .check("endpointConfiguration", ENDPOINT_BASE, e, &rules)
            .map_err(bad)?;
        if type_of(e) != Some(HTTP_ENDPOINT) {
            return Err(bad(format!(
                "'endpointConfiguration' must be a '#{HTTP_ENDPOINT}'."
            )));
        }
        let url = e
            .get("targetUrl")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("'endpointConfiguration.targetUrl' is required."))?;
        check_url("endpointConfiguration.targetUrl", url)?;
        out.insert(
            "endpointConfiguration".into(),
            json!({"@odata.type": hashed(HTTP_ENDPOINT), "targetUrl": url}),
        );
    }
    if let Some(a) = required("authenticationConfiguration")? {
        schemas()
            .check(
                "authenticationConfiguration",
                AUTHENTICATION_BASE,
                a,
                &rules,
            )
            .map_err(bad)?;
        out.insert(
            "authenticationConfiguration".into(),
            authentication(a, false)?,
        );
    }
    if let Some(c) = body.get("clientConfiguration") {
        let c = if c.is_null() {
            Value::Null
        } else {
            schemas()
                .check("clientConfiguration", CLIENT_CONFIGURATION, c, &rules)
                .map_err(bad)?;
            client_configuration(c, false)?
        };
        out.insert("clientConfiguration".into(), c);
    }
    if let Some(r) = required("resourceType")? {
        let r = r
            .as_str()
            .filter(|r| PIM_RESOURCE_TYPES.contains(r))
            .ok_or_else(|| {
                bad(format!(
                    "'resourceType' must be one of {}.",
                    PIM_RESOURCE_TYPES.join(", ")
                ))
            })?;
        out.insert("resourceType".into(), json!(r));
    }
    if let Some(t) = present("type") {
        let t = t
            .as_str()
            .filter(|t| PIM_TYPES.contains(t))
            .ok_or_else(|| bad(format!("'type' must be one of {}.", PIM_TYPES.join(", "))))?;
        out.insert("type".into(), json!(t));
    }
    if let Some(a) = present("customAttributes") {
        if !a.is_array() {
            return Err(bad("'customAttributes': a collection is expected."));
        }
        out.insert("customAttributes".into(), a.clone());
    }
    Ok(out)
}

fn pim_id(body: &Map<String, Value>) -> Result<String, Rejection> {
    body.get("id")
        .and_then(Value::as_str)
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .map(|u| u.to_string())
        .ok_or_else(|| bad("Id property needs to have a GUID value."))
}

fn list_pim(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    pim_authorize(caller, false)?;
    let name = list_filter(&call.query, "displayName")?;
    let inner = state.lock();
    let value = extension_list(inner.governance.pim_extensions.iter(), name.as_deref());
    collection(state, call.version, PIM_SET, value)
}

fn get_pim(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    pim_authorize(caller, false)?;
    let inner = state.lock();
    get_one(
        state,
        call,
        &inner.governance.pim_extensions,
        "custom extension",
        PIM_SET,
    )
}

fn post_pim(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, body) = (call.version, &call.body[..]);
    pim_authorize(caller, true)?;
    let body = object(body)?;
    let members = pim_members(&body, true)?;
    let id = pim_id(&body)?;
    let mut inner = state.lock();
    if inner
        .governance
        .pim_extensions
        .iter()
        .any(|x| x.id().eq_ignore_ascii_case(&id))
    {
        return Err(conflict(format!(
            "A custom extension with the id '{id}' already exists."
        )));
    }
    unique_name(
        inner.governance.pim_extensions.iter(),
        members.get("displayName").and_then(Value::as_str),
        None,
        "in the tenant",
    )?;
    let mut json = Map::new();
    json.insert("@odata.type".into(), hashed(PIM_EXTENSION));
    json.insert("id".into(), json!(id));
    for k in [
        "displayName",
        "description",
        "endpointConfiguration",
        "authenticationConfiguration",
        "clientConfiguration",
        "resourceType",
    ] {
        json.insert(k.into(), Value::Null);
    }
    json.insert("type".into(), json!(PIM_TYPES[0]));
    json.insert("customAttributes".into(), json!([]));
    json.extend(members);
    tracing::info!(extension = %id, "PIM custom extension created");
    let x = Extension {
        catalog_id: None,
        json,
    };
    let answer = entity(
        state,
        version,
        &format!("{PIM_SET}/$entity"),
        StatusCode::CREATED,
        &x,
    );
    inner.governance.pim_extensions.push(x);
    answer
}

fn patch_pim(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, id, body) = (call.version, call.id(0), &call.body[..]);
    pim_authorize(caller, true)?;
    let mut body = object(body)?;
    body.remove("id");
    let members = pim_members(&body, false)?;
    let mut inner = state.lock();
    unique_name(
        inner.governance.pim_extensions.iter(),
        members.get("displayName").and_then(Value::as_str),
        Some(id),
        "in the tenant",
    )?;
    let x = inner
        .governance
        .pim_extensions
        .iter_mut()
        .find(|x| x.id().eq_ignore_ascii_case(id))
        .ok_or_else(|| not_found("custom extension", id))?;
    x.json.extend(members);
    entity(
        state,
        version,
        &format!("{PIM_SET}/$entity"),
        StatusCode::OK,
        x,
    )
}

const ROLE_SET: &str = "roleManagement/entitlementManagement/roleAssignments";

/// The `principalId` and optional catalog of a role assignment `$filter`.
fn role_filter(filter: &str) -> Option<(String, Option<String>)> {
    let and = regex::Regex::new(r"(?i)\s+and\s+").ok()?;
    let mut principal = None;
    let mut catalog = None;
    for clause in and.split(filter.trim()) {
        if let Some(p) = eq_clause(clause, "principalId") {
            uuid::Uuid::parse_str(&p).ok()?;
            principal = Some(p);
        } else if let Some(scope) = eq_clause(clause, "appScopeId") {
            catalog = Some(scope.strip_prefix(CATALOG_SCOPE_PREFIX)?.to_owned());
        } else {
            return None;
        }
    }
    Some((principal?, catalog))
}

fn role_assignment_json(principal_id: &str, role: &CatalogRole) -> Value {
    json!({
        "id": principals::assignment_id(principal_id, role),
        "principalId": principal_id,
        "roleDefinitionId": principals::catalog_role_definition_id(&role.role).unwrap_or(""),
        "appScopeId": format!("{CATALOG_SCOPE_PREFIX}{}", role.catalog_id),
    })
}

/// `GET roleAssignments?$filter=principalId eq '…' [and appScopeId eq '/AccessPackageCatalog/…']`:
/// the caller's own, or anyone's for a caller who may read entitlement management.
fn list_role_assignments(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, query) = (call.version, &call.query);
    let filter = query.get("$filter").map(String::as_str).unwrap_or("");
    let (principal_id, catalog) = role_filter(filter).ok_or_else(|| {
        bad(format!(
            "Invalid filter clause '{filter}': the emulator supports $filter=principalId eq '<guid>', optionally followed by and appScopeId eq '/AccessPackageCatalog/<id>'."
        ))
    })?;
    if !principal_id.eq_ignore_ascii_case(&caller.oid) && !caller.holds(&ELM_READ) {
        return Err(denied());
    }
    let expand = query
        .get("$expand")
        .is_some_and(|e| e.split(',').any(|x| x.trim() == "roleDefinition"));
    let roles = state
        .lock()
        .principals
        .values()
        .find(|p| p.object_id.eq_ignore_ascii_case(&principal_id))
        .map(|p| p.catalog_roles.clone())
        .unwrap_or_default();
    let value = roles
        .iter()
        .filter(|r| {
            catalog
                .as_deref()
                .is_none_or(|c| r.catalog_id.eq_ignore_ascii_case(c))
        })
        .map(|role| {
            let mut item = role_assignment_json(&principal_id, role);
            item["directoryScopeId"] = json!("/");
            if expand {
                item["roleDefinition"] =
                    json!({"id": item["roleDefinitionId"], "displayName": role.role});
            }
            item
        })
        .collect();
    let what = if expand {
        format!("{ROLE_SET}(roleDefinition())")
    } else {
        ROLE_SET.to_owned()
    };
    collection(state, version, &what, value)
}

/// `POST roleAssignments`: a catalog role for a principal.
fn create_role_assignment(state: &Shared, caller: &Caller, call: &Call) -> Answer {
    let (version, body) = (call.version, &call.body[..]);
    let body = object(body)?;
    for k in body.keys() {
        if ![
            "@odata.type",
            "principalId",
            "roleDefinitionId",
            "appScopeId",
        ]
        .contains(&k.as_str())
        {
            return Err(bad(format!(
                "Invalid property '{k}'. The property '{k}' does not exist on type '{ROLE_ASSIGNMENT_TYPE}' as the emulator takes it (principalId, roleDefinitionId, appScopeId)."
            )));
        }
    }
    if let Some(t) = type_in(&body)
        && t != ROLE_ASSIGNMENT_TYPE
    {
        return Err(bad(format!(
            "The type '{t}' is not '{ROLE_ASSIGNMENT_TYPE}'."
        )));
    }
    let text = |k: &str| -> Result<String, Rejection> {
        body.get(k)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("'{k}' is required.")))
    };
    let (principal_id, definition_id, scope) = (
        text("principalId")?,
        text("roleDefinitionId")?,
        text("appScopeId")?,
    );
    let role_name = principals::CATALOG_ROLE_DEFINITIONS
        .iter()
        .find(|(_, id)| id.eq_ignore_ascii_case(&definition_id))
        .map(|(name, _)| *name)
        .ok_or_else(|| bad(format!("The role definition '{definition_id}' is not an entitlement-management catalog role.")))?;
    let catalog = scope
        .strip_prefix(CATALOG_SCOPE_PREFIX)
        .filter(|c| !c.is_empty() && !c.contains('/'))
        .ok_or_else(|| {
            bad(format!(
                "'appScopeId' must be '{CATALOG_SCOPE_PREFIX}{{catalogId}}', not '{scope}'."
            ))
        })?;
    let mut inner = state.lock();
    let catalog = match find_catalog(&inner, catalog) {
        Some(c) => c.id.clone(),
        None => return Err(unknown(&inner, caller, true, "catalog", catalog)),
    };
    authorize(&inner, caller, Some(&catalog), true)?;
    let Some(principal) = inner
        .principals
        .values_mut()
        .find(|p| p.object_id.eq_ignore_ascii_case(&principal_id))
    else {
        return Err(not_found("principal", &principal_id));
    };
    let role = CatalogRole {
        catalog_id: catalog.clone(),
        role: role_name.to_owned(),
    };
    if principal
        .catalog_roles
        .iter()
        .any(|r| r.role == role.role && r.catalog_id.eq_ignore_ascii_case(&catalog))
    {
        return Err((
            StatusCode::CONFLICT,
            "RoleAssignmentExists",
            format!(
                "The principal '{principal_id}' already holds '{role_name}' on catalog '{catalog}'."
            ),
        ));
    }
    let object_id = principal.object_id.clone();
    principal.catalog_roles.push(role.clone());
    drop(inner);
    tracing::info!(principal = %object_id, role = %role_name, %catalog, "catalog role assigned");
    let mut item = role_assignment_json(&object_id, &role);
    item["directoryScopeId"] = Value::Null;
    let mut out = Map::new();
    out.insert("@odata.type".into(), hashed(ROLE_ASSIGNMENT_TYPE));
    if let Value::Object(o) = item {
        out.extend(o);
    }
    Ok((
        StatusCode::CREATED,
        with_context(
            state,
            version,
            &format!("{ROLE_SET}/$entity"),
            Value::Object(out),
        ),
    ))
}

/// What a handler reads from its request.
struct Call {
    /// `v1.0` or `beta`.
    version: &'static str,
    /// Path parameters, in the route's order.
    ids: Vec<String>,
    query: HashMap<String, String>,
    body: Bytes,
}

impl Call {
    fn id(&self, i: usize) -> &str {
        self.ids.get(i).map_or("", String::as_str)
    }
}

type Handler = fn(&Shared, &Caller, &Call) -> Answer;

/// Largest request body taken (axum's default for `Bytes`).
const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The axum handler of `handler`: authenticates (an injected fault first), then answers.
fn on(
    version: &'static str,
    handler: Handler,
) -> impl Fn(State<AppState>, Request) -> BoxFuture<'static, Response> + Clone + Send + Sync + 'static
{
    move |State(state), request| {
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            let ids = match RawPathParams::from_request_parts(&mut parts, &state).await {
                Ok(params) => params.iter().map(|(_, v)| v.to_owned()).collect(),
                Err(rejection) => return rejection.into_response(),
            };
            let query = match Query::<HashMap<String, String>>::from_request_parts(
                &mut parts, &state,
            )
            .await
            {
                Ok(Query(q)) => q,
                Err(rejection) => return rejection.into_response(),
            };
            let headers = parts.headers;
            let caller = match graph_caller(&state, &headers).await {
                Ok(c) => c,
                Err(resp) => return resp,
            };
            let Ok(body) = axum::body::to_bytes(body, BODY_LIMIT).await else {
                return graph_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BadRequest",
                    "The request body could not be read (at most 2 MiB).",
                    &headers,
                );
            };
            let call = Call {
                version,
                ids,
                query,
                body,
            };
            match handler(&state, &caller, &call) {
                Ok((status, body)) => (status, Json(body)).into_response(),
                Err((status, code, message)) => {
                    tracing::info!(%status, %message, "governance call refused");
                    graph_error(status, code, &message, &headers)
                }
            }
        })
    }
}

/// The governance routes of one Graph version (nested under `/{version}` with the call log).
pub(crate) fn routes(version: &'static str) -> Router<AppState> {
    let elm = "/identityGovernance/entitlementManagement";
    let lcw = "/identityGovernance/lifecycleWorkflows/customTaskExtensions";
    let mut r = Router::new()
        .route(&format!("{elm}/catalogs"), get(on(version, list_catalogs)))
        .route(
            &format!("{elm}/catalogs/{{id}}"),
            get(on(version, get_catalog)),
        )
        .route(
            &format!("{elm}/accessPackages"),
            get(on(version, list_packages)),
        )
        .route(
            &format!("{elm}/accessPackages/{{id}}"),
            get(on(version, get_package)),
        )
        .route(
            &format!("{elm}/assignmentPolicies"),
            get(on(version, list_policies)),
        )
        .route(
            &format!("{elm}/assignmentPolicies/{{id}}"),
            get(on(version, get_policy)).put(on(version, put_policy)),
        )
        .route(
            lcw,
            get(on(version, list_tasks)).post(on(version, post_task)),
        )
        .route(
            &format!("{lcw}/{{id}}"),
            get(on(version, get_task)).patch(on(version, patch_task)),
        )
        .route(
            "/roleManagement/entitlementManagement/roleAssignments",
            get(on(version, list_role_assignments)).post(on(version, create_role_assignment)),
        );
    let mut extensions = vec![format!(
        "{elm}/catalogs/{{catalog}}/customWorkflowExtensions"
    )];
    if version == "beta" {
        // The older beta names, still documented.
        extensions.push(format!(
            "{elm}/accessPackageCatalogs/{{catalog}}/accessPackageCustomWorkflowExtensions"
        ));
    }
    for path in extensions {
        r = r
            .route(
                &path,
                get(on(version, list_elm)).post(on(version, post_elm)),
            )
            .route(
                &format!("{path}/{{id}}"),
                get(on(version, get_elm)).patch(on(version, patch_elm)),
            );
    }
    if version == "beta" {
        let pim = "/identityGovernance/privilegedAccess/customExtensions";
        r = r
            .route(pim, get(on(version, list_pim)).post(on(version, post_pim)))
            .route(
                &format!("{pim}/{{id}}"),
                get(on(version, get_pim)).patch(on(version, patch_pim)),
            );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules<'static> {
        Rules {
            ignored: &[],
            extra_members: &[(STAGE_ENUM, APPROVAL_STAGE)],
        }
    }

    #[test]
    fn what_the_emulator_serves_has_only_v1_properties() {
        let now = jiff::Timestamp::now();
        let p = Policy {
            id: "p".into(),
            display_name: Some("Default".into()),
            description: None,
            access_package_id: "a".into(),
            stages: Vec::new(),
            settings: world_policy_settings().0,
            questions: world_policy_settings().1,
            created: now,
            modified: now,
        };
        let mut policy = policy_base_json(&p);
        policy["customExtensionStageSettings"] =
            json!([{"id": "s", "stage": APPROVAL_STAGE, "customExtension": {"id": "x"}}]);
        policy["accessPackage"] = json!({"id": "a", "displayName": "A"});
        assert_eq!(
            schemas().check("policy", POLICY_TYPE, &policy, &rules()),
            Ok(())
        );
        let catalog = catalog_json(
            &Catalog {
                id: "c".into(),
                display_name: None,
            },
            &now.to_string(),
        );
        assert_eq!(
            schemas().check(
                "catalog",
                "microsoft.graph.accessPackageCatalog",
                &catalog,
                &rules()
            ),
            Ok(())
        );
        let x = world_extension(
            &accessgate_world::WorldCustomExtension {
                id: "x".into(),
                catalog_id: "c".into(),
                display_name: Some("gate".into()),
            },
            now,
        );
        assert_eq!(
            schemas().check(
                "extension",
                REQUEST_WORKFLOW_EXTENSION,
                &Value::Object(x.json.clone()),
                &rules()
            ),
            Ok(())
        );
    }

    #[test]
    fn the_world_knows_the_stages_graph_does() {
        let mut graph: Vec<&str> = STAGES
            .iter()
            .copied()
            .filter(|s| *s != "unknownFutureValue")
            .collect();
        graph.push(APPROVAL_STAGE);
        assert_eq!(graph, accessgate_world::POLICY_STAGES);
    }

    #[test]
    fn expand_splits_at_top_level_commas_only() {
        let q = |e: &str| HashMap::from([("$expand".to_owned(), e.to_owned())]);
        assert_eq!(
            expand_items(&q(
                "accessPackage, customExtensionStageSettings($expand=customExtension)"
            ))
            .ok(),
            Some(vec![
                ("accessPackage".to_owned(), None),
                (
                    "customExtensionStageSettings".to_owned(),
                    Some("$expand=customExtension".to_owned())
                ),
            ])
        );
        assert!(expand_items(&q("a(b")).is_err());
        assert!(expand_items(&q("a)b(")).is_err());
    }

    #[test]
    fn filters_take_one_quoted_value() {
        assert_eq!(
            eq_clause("displayName eq 'O''Brien team'", "displayname"),
            Some("O'Brien team".to_owned())
        );
        assert_eq!(eq_clause("displayName ne 'x'", "displayName"), None);
        assert_eq!(eq_clause("displayName eq 'a'b'", "displayName"), None);
        let g = "00000000-0000-0000-0000-000000000001";
        assert_eq!(
            role_filter(&format!(
                "principalId eq '{g}' and appScopeId eq '/AccessPackageCatalog/c1'"
            )),
            Some((g.to_owned(), Some("c1".to_owned())))
        );
        assert_eq!(role_filter("principalId eq 'nope'"), None);
        assert_eq!(
            role_filter(&format!("principalId eq '{g}' and appScopeId eq '/'")),
            None
        );
    }

    #[test]
    fn urls_are_https_or_loopback_http() {
        for ok in [
            "https://example.com/x",
            "http://127.0.0.1:7071/api/elm",
            "http://localhost/x",
            "http://[::1]:80/",
        ] {
            assert!(check_url("u", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/x",
            "ftp://127.0.0.1/",
            "not a url",
            "mailto:a@b",
        ] {
            assert!(check_url("u", bad).is_err(), "{bad}");
        }
    }
}
