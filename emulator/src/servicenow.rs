//! A ServiceNow instance's Table API (anchors.md §5), serving the world file's tables:
//! `GET /api/now/table/{table}` with `sysparm_query` (`^`, `^OR`, `=`, `!=`, `STARTSWITH`,
//! `LIKE`, `IN`), `sysparm_fields` (dot-walking references), `sysparm_limit`,
//! `sysparm_display_value` (`false` / `true` / `all`) and `sysparm_exclude_reference_link`;
//! `GET /api/now/table/{table}/{sys_id}`; Basic auth or a bearer from `POST /oauth_token.do`.
//!
//! The documented gotcha is reproduced: a condition on a field the table does not have is
//! ignored and the rest of the query applies, unless `invalid_query_returns_no_rows` is set
//! (ServiceNow's `glide.invalid_query.returns_no_rows`).

use std::collections::{BTreeSet, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::faults::{self, FaultTarget};
use crate::state::{AppState, Inner};

/// The credentials the emulated instance accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNowCredentials {
    pub username: String,
    pub password: String,
    pub client_id: String,
    pub client_secret: String,
}

/// One call to the ServiceNow routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceNowCall {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub status: u16,
}

pub(crate) struct ServiceNowState {
    pub creds: ServiceNowCredentials,
    pub invalid_query_returns_no_rows: bool,
    /// The next this many creates and `order_now` calls are committed, then answered 504 (a
    /// proxy timing out after ServiceNow wrote the record): the answer is lost, the write is not.
    pub lose_write_answers: u32,
    pub tokens: BTreeSet<String>,
    pub calls: Vec<ServiceNowCall>,
    /// Records written through the API, journal, business rule and webhook (`tickets`).
    pub book: crate::tickets::TicketBook,
}

impl ServiceNowState {
    pub fn new() -> Self {
        let r = || uuid::Uuid::new_v4().simple().to_string();
        ServiceNowState {
            creds: ServiceNowCredentials {
                username: "accessgate".into(),
                password: format!("sn-{}", r()),
                client_id: r(),
                client_secret: format!("sncs-{}", r()),
            },
            invalid_query_returns_no_rows: false,
            lose_write_answers: 0,
            tokens: BTreeSet::new(),
            calls: Vec::new(),
            book: crate::tickets::TicketBook::default(),
        }
    }
}

/// Whether this committed write's answer is lost (see `lose_write_answers`); records the call.
pub(crate) fn answer_lost(
    inner: &mut crate::state::Inner,
    method: &str,
    target: &str,
) -> Option<Response> {
    if inner.servicenow.lose_write_answers == 0 {
        return None;
    }
    inner.servicenow.lose_write_answers -= 1;
    record(
        inner,
        method,
        target.to_owned(),
        StatusCode::GATEWAY_TIMEOUT,
    );
    Some(failure(
        StatusCode::GATEWAY_TIMEOUT,
        "Gateway Timeout",
        Some("the write was committed; this answer is an injected loss"),
    ))
}

pub(crate) fn failure(status: StatusCode, message: &str, detail: Option<&str>) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "detail": detail}, "status": "failure"})),
    )
        .into_response()
}

pub(crate) fn record(inner: &mut Inner, method: &str, target: String, status: StatusCode) {
    inner.stats.servicenow_calls += 1;
    if inner.servicenow.calls.len() < 10_000 {
        inner.servicenow.calls.push(ServiceNowCall {
            method: method.into(),
            target,
            status: status.as_u16(),
        });
    }
}

fn authenticated(inner: &Inner, headers: &HeaderMap) -> bool {
    let Some(h) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(b) = h.strip_prefix("Basic ") {
        let c = &inner.servicenow.creds;
        return base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .is_some_and(|s| s == format!("{}:{}", c.username, c.password));
    }
    h.strip_prefix("Bearer ")
        .is_some_and(|t| inner.servicenow.tokens.contains(t.trim()))
}

fn stored(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("value").and_then(Value::as_str).map(str::to_owned),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn display(v: &Value) -> Option<String> {
    match v {
        Value::Object(o) => o
            .get("display_value")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or_else(|| stored(v)),
        other => stored(other),
    }
}

/// The record whose `sys_id` is `id`, in any table, with its table name.
fn by_sys_id<'a>(inner: &'a Inner, id: &str) -> Option<(&'a str, &'a Map<String, Value>)> {
    inner.world.servicenow.by_sys_id(id)
}

/// A field, following references for dot-walked names; with the referenced table, if any.
fn walk<'a>(
    inner: &'a Inner,
    row: &'a Map<String, Value>,
    path: &str,
) -> Option<(&'a Value, Option<&'a str>)> {
    let mut parts = path.split('.');
    let mut v = row.get(parts.next()?)?;
    for part in parts {
        let (_, target) = by_sys_id(inner, &stored(v)?)?;
        v = target.get(part)?;
    }
    let reference = if path != "sys_id" {
        stored(v).and_then(|s| by_sys_id(inner, &s)).map(|(t, _)| t)
    } else {
        None
    };
    Some((v, reference))
}

#[derive(Debug)]
enum Op {
    Eq,
    Ne,
    StartsWith,
    Like,
    In,
}

struct Cond {
    field: String,
    op: Op,
    value: String,
}

fn parse_cond(t: &str) -> Option<Cond> {
    for (tok, op) in [
        ("!=", Op::Ne),
        ("STARTSWITH", Op::StartsWith),
        ("LIKE", Op::Like),
        ("IN", Op::In),
        ("=", Op::Eq),
    ] {
        if let Some(i) = t.find(tok) {
            return Some(Cond {
                field: t[..i].to_owned(),
                op,
                value: t[i + tok.len()..].to_owned(),
            });
        }
    }
    None
}

impl Cond {
    fn holds(&self, inner: &Inner, row: &Map<String, Value>) -> bool {
        let have = walk(inner, row, &self.field)
            .and_then(|(v, _)| stored(v))
            .unwrap_or_default();
        match self.op {
            Op::Eq => have == self.value,
            Op::Ne => have != self.value,
            Op::StartsWith => have.starts_with(&self.value),
            Op::Like => have.to_lowercase().contains(&self.value.to_lowercase()),
            Op::In => self.value.split(',').any(|v| v == have),
        }
    }
}

/// `sysparm_query` → AND of OR-groups; conditions on unknown fields dropped (or, with the
/// strict setting, `None`: no rows).
fn parse_query(q: &str, fields: &BTreeSet<String>, strict: bool) -> Option<Vec<Vec<Cond>>> {
    let mut groups: Vec<Vec<Cond>> = Vec::new();
    for (i, raw) in q.split('^').enumerate() {
        if raw.is_empty() || raw.starts_with("ORDERBY") || raw == "EQ" {
            continue;
        }
        let (or, text) = match raw.strip_prefix("OR") {
            Some(rest) if i > 0 => (true, rest),
            _ => (false, raw),
        };
        let Some(cond) = parse_cond(text) else {
            if strict {
                return None;
            }
            continue;
        };
        let root = cond.field.split('.').next().unwrap_or("");
        if !fields.contains(root) {
            // The documented behaviour: the invalid part is ignored.
            if strict {
                return None;
            }
            continue;
        }
        match groups.last_mut() {
            Some(g) if or => g.push(cond),
            _ => groups.push(vec![cond]),
        }
    }
    Some(groups)
}

pub(crate) fn render(
    inner: &Inner,
    base: &str,
    row: &Map<String, Value>,
    q: &HashMap<String, String>,
) -> Value {
    let mode = q
        .get("sysparm_display_value")
        .map(String::as_str)
        .unwrap_or("false");
    let no_links = q
        .get("sysparm_exclude_reference_link")
        .is_some_and(|v| v == "true");
    let names: Vec<String> = match q.get("sysparm_fields") {
        Some(f) if !f.is_empty() => f.split(',').map(|s| s.trim().to_owned()).collect(),
        _ => row.keys().cloned().collect(),
    };
    let mut out = Map::new();
    for name in names {
        let Some((v, reference)) = walk(inner, row, &name) else {
            continue;
        };
        let value = stored(v).unwrap_or_default();
        let shown = display(v).unwrap_or_default();
        let link = reference.map(|t| format!("{base}/api/now/table/{t}/{value}"));
        let rendered = match (mode, &link) {
            ("true", _) => json!(shown),
            ("all", Some(l)) if !no_links => {
                json!({"display_value": shown, "link": l, "value": value})
            }
            ("all", _) => json!({"display_value": shown, "value": value}),
            (_, Some(l)) if !no_links => json!({"link": l, "value": value}),
            _ => json!(value),
        };
        out.insert(name, rendered);
    }
    Value::Object(out)
}

/// Faults, then authentication: the answer to send instead, if any (recorded in the call log).
pub(crate) async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    method: &str,
    target: &str,
) -> Option<Response> {
    if let Some(resp) = faults::apply(state, FaultTarget::ServiceNow).await {
        record(&mut state.lock(), method, target.to_owned(), resp.status());
        return Some(resp);
    }
    let mut inner = state.lock();
    if authenticated(&inner, headers) {
        return None;
    }
    record(
        &mut inner,
        method,
        target.to_owned(),
        StatusCode::UNAUTHORIZED,
    );
    Some(failure(
        StatusCode::UNAUTHORIZED,
        "User Not Authenticated",
        Some("Required to provide Auth information"),
    ))
}

async fn table(
    State(state): State<AppState>,
    Path(table): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let target = uri.to_string();
    if let Some(resp) = admit(&state, &headers, "GET", &target).await {
        return resp;
    }
    let mut inner = state.lock();
    let Some(rows) = inner.world.servicenow.tables.get(&table) else {
        record(&mut inner, "GET", target, StatusCode::BAD_REQUEST);
        return failure(
            StatusCode::BAD_REQUEST,
            &format!("Invalid table {table}"),
            None,
        );
    };
    let fields: BTreeSet<String> = rows.iter().flat_map(|r| r.keys().cloned()).collect();
    let strict = inner.servicenow.invalid_query_returns_no_rows;
    let groups = parse_query(
        q.get("sysparm_query").map(String::as_str).unwrap_or(""),
        &fields,
        strict,
    );
    let limit: usize = q
        .get("sysparm_limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(10_000);
    let result: Vec<Value> = match groups {
        None => Vec::new(),
        Some(groups) => rows
            .iter()
            .filter(|r| groups.iter().all(|g| g.iter().any(|c| c.holds(&inner, r))))
            .take(limit)
            .map(|r| render(&inner, &state.base_url, r, &q))
            .collect(),
    };
    record(&mut inner, "GET", target, StatusCode::OK);
    let total = result.len();
    (
        [("X-Total-Count", total.to_string())],
        Json(json!({ "result": result })),
    )
        .into_response()
}

async fn record_by_id(
    State(state): State<AppState>,
    Path((table, sys_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let target = uri.to_string();
    if let Some(resp) = admit(&state, &headers, "GET", &target).await {
        return resp;
    }
    let mut inner = state.lock();
    let found = inner
        .world
        .servicenow
        .tables
        .get(&table)
        .and_then(|rows| {
            rows.iter()
                .find(|r| r.get("sys_id").and_then(Value::as_str) == Some(sys_id.as_str()))
        })
        .map(|r| render(&inner, &state.base_url, r, &q));
    match found {
        Some(v) => {
            record(&mut inner, "GET", target, StatusCode::OK);
            Json(json!({ "result": v })).into_response()
        }
        None => {
            record(&mut inner, "GET", target, StatusCode::NOT_FOUND);
            failure(
                StatusCode::NOT_FOUND,
                "No Record found",
                Some("Record doesn't exist or ACL restricts the record retrieval"),
            )
        }
    }
}

async fn oauth_token(
    State(state): State<AppState>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Some(resp) = faults::apply(&state, FaultTarget::ServiceNow).await {
        return resp;
    }
    let mut inner = state.lock();
    let c = inner.servicenow.creds.clone();
    let client_ok = form.get("client_id") == Some(&c.client_id)
        && form.get("client_secret") == Some(&c.client_secret);
    let grant_ok = match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => true,
        Some("password") => {
            form.get("username") == Some(&c.username) && form.get("password") == Some(&c.password)
        }
        _ => false,
    };
    if !(client_ok && grant_ok) {
        record(
            &mut inner,
            "POST",
            "/oauth_token.do".into(),
            StatusCode::UNAUTHORIZED,
        );
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "access_denied", "error_description": "access_denied"})),
        )
            .into_response();
    }
    let token = uuid::Uuid::new_v4().simple().to_string();
    inner.servicenow.tokens.insert(token.clone());
    record(&mut inner, "POST", "/oauth_token.do".into(), StatusCode::OK);
    Json(json!({"access_token": token, "scope": "useraccount", "token_type": "Bearer", "expires_in": 1799})).into_response()
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/now/table/{table}",
            get(table).post(crate::tickets::create),
        )
        .route(
            "/api/now/table/{table}/{sys_id}",
            get(record_by_id)
                .patch(crate::tickets::update_route)
                .put(crate::tickets::update_route)
                .delete(crate::tickets::delete),
        )
        .route(
            "/api/sn_sc/servicecatalog/items/{item}/order_now",
            post(crate::tickets::order_now),
        )
        .route("/oauth_token.do", post(oauth_token))
}
