//! The tenant's directory as Graph serves it, from a world file (docs/world-format.md): users
//! with `$select`, manager, sponsors, transitive group memberships (nesting, cycle-safe), app
//! role assignments, access package assignments and pending requests with their `$filter`s,
//! paging with `$top` / `@odata.nextLink`, and JSON batching (`POST /$batch`).
//!
//! Emulator choices where Graph is silent or varies: `employeeLeaveDateTime` in `$select`
//! without `User-LifeCycleInfo.Read.All` is a 403 (Graph documents the permission, not the
//! failure); a `$batch` is one entry in the call log, its inner requests are counted in
//! `graph_batch_inner_requests`; faults apply to the outer HTTP call.

use std::collections::{BTreeSet, HashMap};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use crate::entra::Caller;
use crate::graph::{graph_caller, graph_error};
use crate::state::{AppState, Inner, Shared};

pub use accessgate_world::{
    World, WorldAnswer, WorldAssignment, WorldError, WorldGroup, WorldPackage, WorldRequest,
    WorldServiceNow, WorldUser,
};

/// An access package as `$expand=accessPackage` shows it (the id alone when it is unknown).
fn package_json(w: &World, id: &str) -> Value {
    let p = w.package(id);
    json!({"id": id, "displayName": p.and_then(|p| p.display_name.clone())})
}

/// Graph's JSON for a world answer.
pub(crate) fn answer_json(a: &WorldAnswer) -> Value {
    json!({
        "@odata.type": "#microsoft.graph.accessPackageAnswerString",
        "value": a.value,
        "displayValue": a.value,
        "answeredQuestion": {
            "@odata.type": "#microsoft.graph.accessPackageTextInputQuestion",
            "id": a.question_id,
            "text": a.question,
        }
    })
}

pub(crate) fn load(state: &Shared, world: &World) -> anyhow::Result<()> {
    world.validate()?;
    state.lock().world = world.clone();
    tracing::info!(
        users = world.users.len(),
        groups = world.groups.len(),
        requests = world.requests.len(),
        "world loaded"
    );
    Ok(())
}

type GraphResult = Result<Value, (StatusCode, &'static str, String)>;

fn not_found(what: &str) -> (StatusCode, &'static str, String) {
    (
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        format!(
            "Resource '{what}' does not exist or one of its queried reference-property objects are not present."
        ),
    )
}

fn denied() -> (StatusCode, &'static str, String) {
    (
        StatusCode::FORBIDDEN,
        "Authorization_RequestDenied",
        "Insufficient privileges to complete the operation.".into(),
    )
}

fn bad_request(msg: String) -> (StatusCode, &'static str, String) {
    (StatusCode::BAD_REQUEST, "BadRequest", msg)
}

fn has(caller: &Caller, any: &[&str]) -> bool {
    caller.roles.iter().any(|r| any.contains(&r.as_str()))
}

const USER_READ: [&str; 3] = ["User.Read.All", "User.ReadWrite.All", "Directory.Read.All"];
const GROUP_READ: [&str; 3] = [
    "GroupMember.Read.All",
    "Group.Read.All",
    "Directory.Read.All",
];
const APP_ROLE_READ: [&str; 2] = ["Directory.Read.All", "AppRoleAssignment.ReadWrite.All"];
const EM_READ: [&str; 2] = [
    "EntitlementManagement.Read.All",
    "EntitlementManagement.ReadWrite.All",
];

/// A user object with `$select` applied (Graph's default set without it).
fn project(u: &WorldUser, query: &HashMap<String, String>) -> Value {
    let select: Vec<String> = match query.get("$select") {
        Some(s) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        None => ["id", "displayName", "userPrincipalName", "mail"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    };
    let mut out = Map::new();
    out.insert("@odata.type".into(), json!("#microsoft.graph.user"));
    out.insert("id".into(), json!(u.id));
    for k in select {
        if ["id", "manager", "sponsors", "appRoleAssignments"].contains(&k.as_str()) {
            continue;
        }
        out.insert(
            k.clone(),
            u.properties.get(&k).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

/// One page of a collection: `$top` (default 100, at most 999) and `$skiptoken` (an offset).
fn page(items: Vec<Value>, query: &HashMap<String, String>, next_base: &str) -> GraphResult {
    let top: usize = match query.get("$top") {
        None => 100,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=999).contains(&n) => n,
            _ => {
                return Err(bad_request(format!(
                    "Invalid page size specified: '{t}'. Must be between 1 and 999 inclusive."
                )));
            }
        },
    };
    let skip: usize = query
        .get("$skiptoken")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let total = items.len();
    let value: Vec<Value> = items.into_iter().skip(skip).take(top).collect();
    let mut body = json!({ "value": value });
    if skip + top < total {
        let mut params: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k.as_str() != "$skiptoken")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push(("$skiptoken".into(), (skip + top).to_string()));
        if let Ok(url) = reqwest::Url::parse_with_params(next_base, &params) {
            body["@odata.nextLink"] = json!(url.to_string());
        }
    }
    Ok(body)
}

/// `field eq 'value'` clauses joined by `and`, parentheses allowed; field names lower-cased.
fn filter_clauses(filter: &str) -> Option<Vec<(String, String)>> {
    let cleaned = filter.replace(['(', ')'], " ");
    let mut out = Vec::new();
    for clause in cleaned.split(" and ").flat_map(|c| c.split(" AND ")) {
        let parts: Vec<&str> = clause.split_whitespace().collect();
        match parts.as_slice() {
            [field, op, value @ ..] if op.eq_ignore_ascii_case("eq") && !value.is_empty() => {
                let v = value.join(" ");
                let v = v.trim().strip_prefix('\'')?.strip_suffix('\'')?.to_owned();
                out.push((field.to_lowercase(), v));
            }
            _ => return None,
        }
    }
    Some(out)
}

fn transitive_groups(w: &World, member: &str) -> Vec<Value> {
    w.transitive_groups(member)
        .into_iter()
        .map(|g| json!({"@odata.type": "#microsoft.graph.group", "id": g.id, "displayName": g.display_name}))
        .collect()
}

/// One Graph GET against the world (an HTTP route or an inner `$batch` request).
fn read(
    inner: &Inner,
    base_url: &str,
    version: &str,
    caller: &Caller,
    path: &str,
    query: &HashMap<String, String>,
) -> GraphResult {
    let w = &inner.world;
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let next_base = format!("{base_url}/{version}/{}", path.trim_matches('/'));
    match segs.as_slice() {
        ["users", id, rest @ ..] => {
            let needs_group = matches!(rest, ["transitiveMemberOf", ..]);
            let needs_app = matches!(rest, ["appRoleAssignments"]);
            let allowed = if needs_group {
                has(caller, &GROUP_READ)
            } else if needs_app {
                has(caller, &APP_ROLE_READ)
            } else {
                has(caller, &USER_READ)
            };
            if !allowed {
                return Err(denied());
            }
            let u = w.user(id).ok_or_else(|| not_found(id))?;
            let uid = u.id.clone();
            match rest {
                [] => {
                    let lifecycle = query.get("$select").is_some_and(|s| {
                        s.split(',')
                            .any(|p| p.trim().eq_ignore_ascii_case("employeeLeaveDateTime"))
                    });
                    if lifecycle
                        && !has(
                            caller,
                            &[
                                "User-LifeCycleInfo.Read.All",
                                "User-LifeCycleInfo.ReadWrite.All",
                            ],
                        )
                    {
                        return Err(denied());
                    }
                    Ok(project(u, query))
                }
                ["manager"] => {
                    let m = u.manager.as_deref().ok_or_else(|| not_found("manager"))?;
                    let mu = w.user(m).ok_or_else(|| not_found(m))?;
                    Ok(project(mu, query))
                }
                ["sponsors"] => {
                    let items = u
                        .sponsors
                        .iter()
                        .filter_map(|s| w.user(s))
                        .map(|s| project(s, query))
                        .collect();
                    page(items, query, &next_base)
                }
                ["transitiveMemberOf"] | ["transitiveMemberOf", "microsoft.graph.group"] => {
                    page(transitive_groups(w, &uid), query, &next_base)
                }
                ["appRoleAssignments"] => {
                    let items = u
                        .app_role_assignments
                        .iter()
                        .map(|a| {
                            json!({
                                "id": uuid::Uuid::new_v4().to_string(),
                                "appRoleId": a.app_role_id,
                                "principalId": uid,
                                "principalType": "User",
                                "resourceId": a.resource_id,
                                "resourceDisplayName": a.resource_display_name,
                            })
                        })
                        .collect();
                    page(items, query, &next_base)
                }
                _ => Err(not_found(path)),
            }
        }
        ["roleManagement", "directory", "roleAssignments"] => {
            if !has(
                caller,
                &[
                    "RoleManagement.Read.Directory",
                    "RoleManagement.Read.All",
                    "Directory.Read.All",
                ],
            ) {
                return Err(denied());
            }
            let filter = query.get("$filter").map(String::as_str).unwrap_or("");
            let clauses = filter_clauses(filter)
                .ok_or_else(|| bad_request(format!("Invalid filter clause: {filter}")))?;
            let who = clauses
                .iter()
                .find(|(f, _)| f == "principalid")
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    bad_request("this emulator needs $filter=principalId eq '<id>'".into())
                })?;
            let items: Vec<Value> = w
                .user(&who)
                .map(|u| {
                    u.directory_roles
                        .iter()
                        .map(|r| json!({"id": format!("{r}-{}", u.id), "principalId": u.id, "roleDefinitionId": r, "directoryScopeId": "/"}))
                        .collect()
                })
                .unwrap_or_default();
            page(items, query, &next_base)
        }
        ["identityGovernance", "lifecycleWorkflows", "workflows", id] => {
            if !has(caller, &crate::lifecycle::READ_PERMISSIONS) {
                return Err(denied());
            }
            let wf = w.workflow(id).ok_or_else(|| not_found(id))?;
            let full = json!({
                "@odata.type": "#microsoft.graph.identityGovernance.workflow",
                "id": wf.id,
                "displayName": wf.display_name,
                "category": wf.category,
                "isEnabled": true,
            });
            Ok(match query.get("$select") {
                None => full,
                Some(s) => {
                    let mut out = serde_json::Map::new();
                    for p in s.split(',').map(str::trim) {
                        if let Some(v) = full.get(p) {
                            out.insert(p.to_owned(), v.clone());
                        }
                    }
                    Value::Object(out)
                }
            })
        }
        [
            "identityGovernance",
            "entitlementManagement",
            collection @ ("assignments" | "assignmentRequests"),
        ] => {
            if !has(caller, &EM_READ) {
                return Err(denied());
            }
            let filter = query.get("$filter").map(String::as_str).unwrap_or("");
            let clauses = filter_clauses(filter)
                .ok_or_else(|| bad_request(format!("Invalid filter clause: {filter}")))?;
            let expand = query.get("$expand").is_some_and(|e| {
                e.split(',')
                    .any(|x| x.trim().eq_ignore_ascii_case("accessPackage"))
            });
            let field = if *collection == "assignments" {
                "target/objectid"
            } else {
                "requestor/objectid"
            };
            let mut who = None;
            let mut state_eq = None;
            for (f, v) in clauses {
                match f.as_str() {
                    f2 if f2 == field => who = Some(v),
                    "state" => state_eq = Some(v),
                    other => {
                        return Err(bad_request(format!(
                            "Invalid filter clause: unsupported property {other}"
                        )));
                    }
                }
            }
            let who = who.ok_or_else(|| {
                bad_request(format!("this emulator needs $filter={field} eq '<id>'"))
            })?;
            let items: Vec<Value> = if *collection == "assignments" {
                w.assignments
                    .iter()
                    .filter(|a| a.target_id.eq_ignore_ascii_case(&who))
                    .map(|a| {
                        let state = a.state.clone().unwrap_or_else(|| "delivered".into());
                        let mut v = json!({"id": a.id.clone().unwrap_or_else(|| format!("{}-{}", a.target_id, a.access_package_id)),
                            "state": state, "status": "Delivered", "target": {"objectId": a.target_id}});
                        if expand {
                            v["accessPackage"] = package_json(w, &a.access_package_id);
                        }
                        v
                    })
                    .filter(|v| state_eq.as_deref().is_none_or(|s| v["state"].as_str() == Some(s)))
                    .collect()
            } else {
                w.requests
                    .iter()
                    .filter(|r| r.requestor().eq_ignore_ascii_case(&who))
                    .map(|r| {
                        let mut v = json!({"id": r.id, "state": r.state.clone().unwrap_or_else(|| "pendingApproval".into()),
                            "status": "Accepted", "justification": r.justification, "requestType": "userAdd"});
                        if expand {
                            v["accessPackage"] = package_json(w, &r.access_package_id);
                        }
                        v
                    })
                    .filter(|v| state_eq.as_deref().is_none_or(|s| v["state"].as_str() == Some(s)))
                    .collect()
            };
            page(items, query, &next_base)
        }
        _ => Err(not_found(path)),
    }
}

/// `%XX` escapes decoded (a guest's UPN carries `#EXT#` as `%23EXT%23` in a path).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(r: GraphResult, headers: &HeaderMap) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err((status, code, msg)) => graph_error(status, code, &msg, headers),
    }
}

async fn http_get(
    state: AppState,
    version: &'static str,
    uri: Uri,
    query: HashMap<String, String>,
    headers: HeaderMap,
) -> Response {
    let caller = match graph_caller(&state, &headers).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let inner = state.lock();
    let r = read(
        &inner,
        &state.base_url,
        version,
        &caller,
        &percent_decode(uri.path()),
        &query,
    );
    drop(inner);
    respond(r, &headers)
}

/// `POST /$batch`: up to 20 GETs, each answered as its own route would.
async fn batch(
    state: AppState,
    version: &'static str,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match graph_caller(&state, &headers).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Invalid batch payload format.",
            &headers,
        );
    };
    let Some(requests) = v["requests"].as_array() else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Invalid batch payload format.",
            &headers,
        );
    };
    if requests.len() > 20 {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Too many requests. The number of requests in a batch is limited to 20.",
            &headers,
        );
    }
    let ids: BTreeSet<&str> = requests.iter().filter_map(|r| r["id"].as_str()).collect();
    if ids.len() != requests.len() {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Every batch request needs a unique id.",
            &headers,
        );
    }
    let mut responses = Vec::new();
    for r in requests {
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        let url = r["url"].as_str().unwrap_or_default();
        let method = r["method"].as_str().unwrap_or_default();
        let (path, qs) = url.split_once('?').unwrap_or((url, ""));
        let query: HashMap<String, String> = qs
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.replace("%20", " ").replace("%27", "'")))
            })
            .collect();
        let (status, body) = if !method.eq_ignore_ascii_case("GET") {
            (
                405,
                json!({"error": {"code": "BadRequest", "message": "this emulator batches GETs only"}}),
            )
        } else if let Some(req_id) = path
            .strip_prefix("/identityGovernance/entitlementManagement/assignmentRequests/")
            .filter(|r| !r.contains('/'))
        {
            let resp = crate::graph::get_request_inner(&state, req_id, &caller, version);
            (resp.0.as_u16(), resp.1)
        } else {
            let inner = state.lock();
            let r = read(&inner, &state.base_url, version, &caller, path, &query);
            drop(inner);
            match r {
                Ok(v) => (200, v),
                Err((s, code, msg)) => {
                    (s.as_u16(), json!({"error": {"code": code, "message": msg}}))
                }
            }
        };
        responses.push(json!({"id": id, "status": status, "headers": {"Content-Type": "application/json"}, "body": body}));
    }
    state.lock().stats.graph_batch_inner_requests += requests.len() as u64;
    Json(json!({"responses": responses})).into_response()
}

/// The directory routes of one Graph version (nested under `/{version}` with the call log).
pub(crate) fn routes(version: &'static str) -> Router<AppState> {
    let reader =
        move |State(state): State<AppState>,
              uri: Uri,
              Query(q): Query<HashMap<String, String>>,
              headers: HeaderMap| async move { http_get(state, version, uri, q, headers).await };
    let mut r = Router::new();
    for path in [
        "/users/{id}",
        "/users/{id}/manager",
        "/users/{id}/sponsors",
        "/users/{id}/transitiveMemberOf",
        "/users/{id}/transitiveMemberOf/microsoft.graph.group",
        "/users/{id}/appRoleAssignments",
        "/identityGovernance/entitlementManagement/assignments",
        "/identityGovernance/entitlementManagement/assignmentRequests",
        "/identityGovernance/lifecycleWorkflows/workflows/{id}",
        "/roleManagement/directory/roleAssignments",
    ] {
        r = r.route(path, get(reader));
    }
    r.route(
        "/$batch",
        post(
            move |State(state): State<AppState>, headers: HeaderMap, body: Bytes| async move {
                batch(state, version, headers, body).await
            },
        ),
    )
}
