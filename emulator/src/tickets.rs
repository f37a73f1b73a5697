//! ServiceNow as accessgate's ticket bridge uses it: Table API writes (`POST`, `PATCH`/`PUT`,
//! `DELETE` on `/api/now/table/...`), the Service Catalog `order_now` call, journal fields
//! (`work_notes`, `comments`), closed states, and the business rule that posts a signed
//! webhook when a record with an `accessgate:` correlation id becomes inactive.
//!
//! Written records live in the world file's tables, so the read routes of
//! [`crate::servicenow`] see them (queries, `sysparm_fields`, display values).
//!
//! Why: real ServiceNow has no native webhooks; the business rule stands in for the async rule
//! plus `RESTMessageV2` a customer would install, with knobs to drop, delay, duplicate and forge
//! deliveries so that accessgate's verification and idempotency can be tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::servicenow::{admit, failure, record, render};
use crate::state::{AppState, Inner, Shared};

/// Table of the journal entries (`work_notes`, `comments`).
pub const JOURNAL_TABLE: &str = "sys_journal_field";
/// Fields whose writes append a journal entry instead of overwriting.
pub const JOURNAL_FIELDS: [&str; 2] = ["work_notes", "comments"];
/// Bound of the webhook delivery log.
const DELIVERY_LOG_LIMIT: usize = 10_000;
/// Timeout of one webhook post.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(3);

/// Body of `PUT /_emulator/servicenow/webhook`: where the business rule posts and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// For example `http://127.0.0.1:PORT/api/servicenow/events`.
    pub url: String,
    /// HMAC-SHA256 key (its UTF-8 bytes).
    pub secret: String,
    /// Do not post (a lost webhook); the rule still fires and the drop is logged.
    #[serde(default)]
    pub drop: bool,
    /// Wait this long before posting.
    #[serde(default)]
    pub delay_ms: u64,
    /// Post the same signed request twice.
    #[serde(default)]
    pub duplicate: bool,
    /// Sign with a wrong key (with `bearer`: a token whose signature is broken).
    #[serde(default)]
    pub forge: bool,
    /// Authenticate with an Entra access token instead of the HMAC signature, as a ServiceNow
    /// REST message with an OAuth 2.0 profile (client credentials) does.
    #[serde(default)]
    pub bearer: Option<BearerWebhook>,
}

/// The token the bearer webhook carries: a v2 access token minted by the emulated tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerWebhook {
    /// `azp`: the client id of ServiceNow's app registration.
    pub app_id: String,
    /// `aud`: accessgate's Application ID URI.
    pub audience: String,
}

/// One delivery attempt of the webhook (`GET /_emulator/servicenow/webhooks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// RFC 3339 time of the attempt's end.
    pub at: String,
    pub url: String,
    pub table: String,
    pub sys_id: String,
    /// 1, or 2 for the second post of a `duplicate`.
    pub attempt: u32,
    /// `X-Accessgate-Timestamp` sent.
    pub timestamp: String,
    /// Signed with a wrong key (`forge`).
    pub forged: bool,
    /// Not posted (`drop`).
    pub dropped: bool,
    /// Status code answered, if any.
    pub status: Option<u16>,
    /// Transport error (timeout, refused), if any.
    pub error: Option<String>,
}

/// Body of the business rule's post; the field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosedEvent {
    pub table: String,
    pub sys_id: String,
    pub number: String,
    pub state: String,
    pub correlation_id: String,
    pub event: String,
}

/// One journal entry of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// `work_notes` or `comments`.
    pub element: String,
    pub value: String,
    /// ServiceNow format, `YYYY-MM-DD HH:MM:SS` UTC.
    pub created_on: String,
    /// The API user (or `agent` for the control close route).
    pub created_by: String,
}

/// A record as `GET /_emulator/servicenow/tickets` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketView {
    pub table: String,
    pub sys_id: String,
    pub number: String,
    pub state: String,
    pub active: bool,
    pub correlation_id: String,
    /// Every field as stored (strings).
    pub fields: BTreeMap<String, String>,
    /// Catalog variables given to `order_now` (requested items only).
    pub variables: BTreeMap<String, String>,
    /// Oldest first.
    pub journal: Vec<JournalEntry>,
}

/// Body of `POST /_emulator/servicenow/tickets/{table}/{sys_id}/close`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloseTicket {
    /// Absent: the table's first closed state.
    pub state: Option<String>,
    pub close_notes: Option<String>,
    pub close_code: Option<String>,
}

/// Everything the write side keeps besides the records themselves.
#[derive(Default)]
pub(crate) struct TicketBook {
    /// (table, sys_id) of every record created through the API, oldest first.
    created: Vec<(String, String)>,
    webhook: Option<WebhookSettings>,
    deliveries: Vec<WebhookDelivery>,
    /// Records whose close already fired the business rule.
    notified: BTreeSet<String>,
    /// Closed states per table, overriding [`default_closed_states`].
    closed_states: BTreeMap<String, Vec<String>>,
    /// `order_now` variables by requested item sys_id.
    variables: BTreeMap<String, BTreeMap<String, String>>,
}

/// A post the business rule decided on, made after the lock is released.
pub(crate) struct Pending {
    settings: WebhookSettings,
    event: ClosedEvent,
}

/// Out-of-box closed states: `incident` 6 (Resolved), 7 (Closed), 8 (Canceled); every other
/// table 3 (Closed Complete), 4 (Closed Incomplete), 7 (Closed Skipped / Cancelled).
pub fn default_closed_states(table: &str) -> Vec<String> {
    let states: &[&str] = match table {
        "incident" => &["6", "7", "8"],
        _ => &["3", "4", "7"],
    };
    states.iter().map(|s| (*s).to_owned()).collect()
}

/// Number prefix of a table: the out-of-box ones, else the initials of the name's words (a
/// leading `u_` dropped), e.g. `u_access_ticket` → `AT`.
pub fn number_prefix(table: &str) -> String {
    let known = match table {
        "sc_req_item" => Some("RITM"),
        "sc_task" => Some("SCTASK"),
        "sc_request" => Some("REQ"),
        "incident" => Some("INC"),
        "change_request" => Some("CHG"),
        "problem" => Some("PRB"),
        "task" => Some("TASK"),
        _ => None,
    };
    if let Some(p) = known {
        return p.to_owned();
    }
    let name = table.strip_prefix("u_").unwrap_or(table);
    let initials: String = name
        .split('_')
        .filter_map(|w| w.chars().next())
        .collect::<String>()
        .to_uppercase();
    if initials.len() >= 2 {
        initials
    } else {
        name.chars().take(3).collect::<String>().to_uppercase()
    }
}

fn valid_table(table: &str) -> bool {
    !table.is_empty()
        && table
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// ServiceNow's date-time format, UTC.
fn now_sn() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string()
}

fn new_sys_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A JSON value as ServiceNow stores it: a string.
fn as_stored(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) => match o.get("value") {
            Some(Value::String(s)) => s.clone(),
            _ => v.to_string(),
        },
        Value::Array(_) => v.to_string(),
    }
}

fn field(row: &Map<String, Value>, name: &str) -> String {
    row.get(name).map(as_stored).unwrap_or_default()
}

fn truthy(s: &str) -> bool {
    !matches!(s, "false" | "0" | "")
}

fn closed_states(inner: &Inner, table: &str) -> Vec<String> {
    inner
        .servicenow
        .book
        .closed_states
        .get(table)
        .cloned()
        .unwrap_or_else(|| default_closed_states(table))
}

fn find<'a>(inner: &'a Inner, table: &str, sys_id: &str) -> Option<&'a Map<String, Value>> {
    inner
        .world
        .servicenow
        .tables
        .get(table)?
        .iter()
        .find(|r| field(r, "sys_id") == sys_id)
}

fn find_mut<'a>(
    inner: &'a mut Inner,
    table: &str,
    sys_id: &str,
) -> Option<&'a mut Map<String, Value>> {
    inner
        .world
        .servicenow
        .tables
        .get_mut(table)?
        .iter_mut()
        .find(|r| field(r, "sys_id") == sys_id)
}

fn next_number(inner: &Inner, table: &str, prefix: &str) -> String {
    let max = inner
        .world
        .servicenow
        .tables
        .get(table)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            field(r, "number")
                .strip_prefix(prefix)
                .and_then(|n| n.parse::<u64>().ok())
        })
        .max()
        .unwrap_or(10_000);
    format!("{prefix}{:07}", max + 1)
}

fn add_journal(inner: &mut Inner, table: &str, sys_id: &str, element: &str, value: &str, by: &str) {
    let entry = json!({
        "sys_id": new_sys_id(),
        "element": element,
        "element_id": sys_id,
        "name": table,
        "value": value,
        "sys_created_on": now_sn(),
        "sys_created_by": by,
    });
    if let Value::Object(row) = entry {
        inner
            .world
            .servicenow
            .tables
            .entry(JOURNAL_TABLE.to_owned())
            .or_default()
            .push(row);
    }
}

/// Inserts a record as `POST /api/now/table/{table}` does; returns it.
fn insert(
    inner: &mut Inner,
    table: &str,
    given: &Map<String, Value>,
    by: &str,
) -> Map<String, Value> {
    let sys_id = new_sys_id();
    let now = now_sn();
    let mut row = Map::new();
    let mut journal = Vec::new();
    for (name, value) in given {
        let value = as_stored(value);
        if JOURNAL_FIELDS.contains(&name.as_str()) {
            if !value.is_empty() {
                journal.push((name.clone(), value));
            }
            row.insert(name.clone(), Value::String(String::new()));
        } else if !name.starts_with("sys_") {
            row.insert(name.clone(), Value::String(value));
        }
    }
    let number = match row.get("number").map(as_stored) {
        Some(n) if !n.is_empty() => n,
        _ => next_number(inner, table, &number_prefix(table)),
    };
    let state = row.get("state").map(as_stored).filter(|s| !s.is_empty());
    let state = state.unwrap_or_else(|| "1".to_owned());
    let active = match row.get("active").map(as_stored) {
        Some(a) => truthy(&a),
        None => !closed_states(inner, table).contains(&state),
    };
    for (name, value) in [
        ("sys_id", sys_id.clone()),
        ("number", number),
        ("state", state),
        ("active", active.to_string()),
        ("sys_created_on", now.clone()),
        ("sys_updated_on", now),
        ("sys_created_by", by.to_owned()),
        ("sys_updated_by", by.to_owned()),
        ("sys_mod_count", "0".to_owned()),
        ("sys_class_name", table.to_owned()),
    ] {
        row.insert(name.to_owned(), Value::String(value));
    }
    row.entry("correlation_id")
        .or_insert_with(|| Value::String(String::new()));
    inner
        .world
        .servicenow
        .tables
        .entry(table.to_owned())
        .or_default()
        .push(row.clone());
    for (element, value) in journal {
        add_journal(inner, table, &sys_id, &element, &value, by);
    }
    inner
        .servicenow
        .book
        .created
        .push((table.to_owned(), sys_id));
    row
}

/// Applies `given` to a record as `PATCH` does (journal fields append, a closed state or
/// `active=false` deactivates, a non-closed state reactivates); the business rule's post, if
/// the record became inactive. `None`: no such record.
fn update(
    inner: &mut Inner,
    table: &str,
    sys_id: &str,
    given: &Map<String, Value>,
    by: &str,
) -> Option<(Map<String, Value>, Option<Pending>)> {
    let closed = closed_states(inner, table);
    let now = now_sn();
    let row = find_mut(inner, table, sys_id)?;
    let was_active = truthy(&field(row, "active"));
    let mut journal = Vec::new();
    for (name, value) in given {
        let value = as_stored(value);
        if JOURNAL_FIELDS.contains(&name.as_str()) {
            if !value.is_empty() {
                journal.push((name.clone(), value));
            }
            row.insert(name.clone(), Value::String(String::new()));
        } else if !name.starts_with("sys_") {
            row.insert(name.clone(), Value::String(value));
        }
    }
    let active = match (given.get("active"), given.get("state")) {
        (Some(a), _) => truthy(&as_stored(a)),
        (None, Some(s)) => !closed.contains(&as_stored(s)),
        (None, None) => was_active,
    };
    row.insert("active".into(), Value::String(active.to_string()));
    if was_active && !active {
        row.insert("closed_at".into(), Value::String(now.clone()));
    }
    let mods = field(row, "sys_mod_count").parse::<u64>().unwrap_or(0) + 1;
    row.insert("sys_mod_count".into(), Value::String(mods.to_string()));
    row.insert("sys_updated_on".into(), Value::String(now));
    row.insert("sys_updated_by".into(), Value::String(by.to_owned()));
    let after = row.clone();
    for (element, value) in journal {
        add_journal(inner, table, sys_id, &element, &value, by);
    }
    let pending = business_rule(inner, table, was_active, &after);
    Some((after, pending))
}

/// The async business rule: `active` changes to false and `correlation_id` starts with
/// `accessgate:`, once per record.
fn business_rule(
    inner: &mut Inner,
    table: &str,
    was_active: bool,
    after: &Map<String, Value>,
) -> Option<Pending> {
    let correlation_id = field(after, "correlation_id");
    if !was_active || truthy(&field(after, "active")) || !correlation_id.starts_with("accessgate:")
    {
        return None;
    }
    let sys_id = field(after, "sys_id");
    let book = &mut inner.servicenow.book;
    if !book.notified.insert(sys_id.clone()) {
        return None;
    }
    let settings = book.webhook.clone()?;
    Some(Pending {
        settings,
        event: ClosedEvent {
            table: table.to_owned(),
            sys_id,
            number: field(after, "number"),
            state: field(after, "state"),
            correlation_id,
            event: "closed".to_owned(),
        },
    })
}

/// `v1=` + lowercase hex of HMAC-SHA256(key, timestamp + "." + body).
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

fn log_delivery(state: &Shared, delivery: WebhookDelivery) {
    let mut inner = state.lock();
    let log = &mut inner.servicenow.book.deliveries;
    if log.len() < DELIVERY_LOG_LIMIT {
        log.push(delivery);
    }
}

/// Starts the post of `pending` on the current runtime (never blocks the caller).
pub(crate) fn dispatch(state: &AppState, pending: Option<Pending>) {
    let Some(pending) = pending else {
        return;
    };
    let state = state.clone();
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move { deliver(&state, pending).await });
        }
        Err(_) => log_delivery(
            &state,
            WebhookDelivery {
                at: jiff::Timestamp::now().to_string(),
                url: pending.settings.url.clone(),
                table: pending.event.table.clone(),
                sys_id: pending.event.sys_id.clone(),
                attempt: 1,
                timestamp: String::new(),
                forged: pending.settings.forge,
                dropped: false,
                status: None,
                error: Some("no tokio runtime to post from".to_owned()),
            },
        ),
    }
}

/// How one delivery proves itself.
enum Auth {
    Signature(String),
    Bearer(String),
}

async fn deliver(state: &Shared, pending: Pending) {
    let Pending { settings, event } = pending;
    let entry = |attempt: u32, timestamp: &str| WebhookDelivery {
        at: jiff::Timestamp::now().to_string(),
        url: settings.url.clone(),
        table: event.table.clone(),
        sys_id: event.sys_id.clone(),
        attempt,
        timestamp: timestamp.to_owned(),
        forged: settings.forge,
        dropped: false,
        status: None,
        error: None,
    };
    if settings.drop {
        log_delivery(
            state,
            WebhookDelivery {
                dropped: true,
                ..entry(1, "")
            },
        );
        return;
    }
    if settings.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(settings.delay_ms)).await;
    }
    let body = match serde_json::to_vec(&event) {
        Ok(body) => body,
        Err(err) => {
            log_delivery(
                state,
                WebhookDelivery {
                    error: Some(format!("serializing the event: {err}")),
                    ..entry(1, "")
                },
            );
            return;
        }
    };
    let timestamp = jiff::Timestamp::now().as_second().to_string();
    let auth = match &settings.bearer {
        Some(b) => {
            let opts = crate::entra::MintOptions {
                audience: Some(b.audience.clone()),
                app_id: Some(b.app_id.clone()),
                issuer_version: Some(crate::entra::IssuerVersion::V2),
                tamper_signature: settings.forge,
                ..Default::default()
            };
            match crate::entra::mint_callout_token(state, &opts) {
                Ok(token) => Auth::Bearer(format!("Bearer {token}")),
                Err(err) => {
                    log_delivery(
                        state,
                        WebhookDelivery {
                            error: Some(format!("minting the bearer token: {err}")),
                            ..entry(1, "")
                        },
                    );
                    return;
                }
            }
        }
        None => {
            let key = if settings.forge {
                format!("forged-{}", settings.secret)
            } else {
                settings.secret.clone()
            };
            Auth::Signature(signature(key.as_bytes(), &timestamp, &body))
        }
    };
    let client = match reqwest::Client::builder()
        .no_proxy()
        .timeout(WEBHOOK_TIMEOUT)
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            log_delivery(
                state,
                WebhookDelivery {
                    error: Some(format!("building the HTTP client: {err}")),
                    ..entry(1, &timestamp)
                },
            );
            return;
        }
    };
    let attempts = if settings.duplicate { 2 } else { 1 };
    for attempt in 1..=attempts {
        let sent = client
            .post(&settings.url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.clone());
        let sent = match &auth {
            Auth::Signature(sig) => sent
                .header("X-Accessgate-Timestamp", &timestamp)
                .header("X-Accessgate-Signature", sig),
            Auth::Bearer(value) => sent.header(header::AUTHORIZATION, value),
        }
        .send()
        .await;
        let (status, error) = match sent {
            Ok(resp) => (Some(resp.status().as_u16()), None),
            Err(err) => (None, Some(format!("{err}"))),
        };
        tracing::info!(table = %event.table, sys_id = %event.sys_id, attempt, ?status, "servicenow webhook posted");
        log_delivery(
            state,
            WebhookDelivery {
                status,
                error,
                ..entry(attempt, &timestamp)
            },
        );
    }
}

fn view(inner: &Inner, table: &str, sys_id: &str) -> Option<TicketView> {
    let row = find(inner, table, sys_id)?;
    let journal = inner
        .world
        .servicenow
        .tables
        .get(JOURNAL_TABLE)
        .into_iter()
        .flatten()
        .filter(|j| field(j, "element_id") == sys_id)
        .map(|j| JournalEntry {
            element: field(j, "element"),
            value: field(j, "value"),
            created_on: field(j, "sys_created_on"),
            created_by: field(j, "sys_created_by"),
        })
        .collect();
    Some(TicketView {
        table: table.to_owned(),
        sys_id: sys_id.to_owned(),
        number: field(row, "number"),
        state: field(row, "state"),
        active: truthy(&field(row, "active")),
        correlation_id: field(row, "correlation_id"),
        fields: row.iter().map(|(k, v)| (k.clone(), as_stored(v))).collect(),
        variables: inner
            .servicenow
            .book
            .variables
            .get(sys_id)
            .cloned()
            .unwrap_or_default(),
        journal,
    })
}

/// Every record created through the API that still exists, oldest first.
pub(crate) fn tickets(state: &Shared) -> Vec<TicketView> {
    let inner = state.lock();
    inner
        .servicenow
        .book
        .created
        .iter()
        .filter_map(|(table, sys_id)| view(&inner, table, sys_id))
        .collect()
}

/// Closes a record as an agent would, firing the business rule.
pub(crate) fn close(
    state: &AppState,
    table: &str,
    sys_id: &str,
    close: &CloseTicket,
) -> anyhow::Result<TicketView> {
    let (view, pending) = {
        let mut inner = state.lock();
        let closed = closed_states(&inner, table);
        let new_state = match &close.state {
            Some(s) => s.clone(),
            None => closed
                .first()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("table {table} has no closed state"))?,
        };
        let mut given = Map::new();
        given.insert("state".into(), Value::String(new_state));
        given.insert("active".into(), Value::String("false".into()));
        if let Some(notes) = &close.close_notes {
            given.insert("close_notes".into(), Value::String(notes.clone()));
        }
        if let Some(code) = &close.close_code {
            given.insert("close_code".into(), Value::String(code.clone()));
        }
        let Some((_, pending)) = update(&mut inner, table, sys_id, &given, "agent") else {
            anyhow::bail!("no record {sys_id} in table {table}");
        };
        let view = view(&inner, table, sys_id)
            .ok_or_else(|| anyhow::anyhow!("record {sys_id} vanished"))?;
        (view, pending)
    };
    dispatch(state, pending);
    Ok(view)
}

/// Adds a row to `sc_cat_item`; returns its sys_id.
pub(crate) fn add_catalog_item(
    state: &Shared,
    sys_id: Option<&str>,
    name: &str,
) -> anyhow::Result<String> {
    anyhow::ensure!(!name.is_empty(), "a catalog item needs a name");
    let sys_id = sys_id.map_or_else(new_sys_id, str::to_owned);
    anyhow::ensure!(!sys_id.is_empty(), "sys_id must not be empty");
    let mut inner = state.lock();
    anyhow::ensure!(
        find(&inner, "sc_cat_item", &sys_id).is_none(),
        "catalog item {sys_id} exists"
    );
    let now = now_sn();
    let row = json!({
        "sys_id": sys_id,
        "name": name,
        "short_description": name,
        "active": "true",
        "sys_class_name": "sc_cat_item",
        "sys_created_on": now,
        "sys_updated_on": now,
    });
    if let Value::Object(row) = row {
        inner
            .world
            .servicenow
            .tables
            .entry("sc_cat_item".to_owned())
            .or_default()
            .push(row);
    }
    Ok(sys_id)
}

pub(crate) fn set_webhook(state: &Shared, settings: &WebhookSettings) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(&settings.url)
        .map_err(|err| anyhow::anyhow!("invalid webhook url {:?}: {err}", settings.url))?;
    anyhow::ensure!(
        matches!(url.scheme(), "http" | "https"),
        "webhook url must be http(s)"
    );
    anyhow::ensure!(
        !settings.secret.is_empty() || settings.bearer.is_some(),
        "webhook secret must not be empty (or give bearer)"
    );
    if let Some(b) = &settings.bearer {
        anyhow::ensure!(
            !b.app_id.is_empty() && !b.audience.is_empty(),
            "bearer needs app_id and audience"
        );
    }
    state.lock().servicenow.book.webhook = Some(settings.clone());
    Ok(())
}

pub(crate) fn clear_webhook(state: &Shared) {
    state.lock().servicenow.book.webhook = None;
}

pub(crate) fn deliveries(state: &Shared) -> Vec<WebhookDelivery> {
    state.lock().servicenow.book.deliveries.clone()
}

pub(crate) fn set_closed_states(
    state: &Shared,
    table: &str,
    states: &[String],
) -> anyhow::Result<()> {
    anyhow::ensure!(valid_table(table), "invalid table name {table:?}");
    state
        .lock()
        .servicenow
        .book
        .closed_states
        .insert(table.to_owned(), states.to_vec());
    Ok(())
}

/// A request body as a JSON object (empty = no fields); `None` when it is not one.
fn object_body(body: &Bytes) -> Option<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Some(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

/// ServiceNow's answer to a body that is not a JSON object.
fn bad_payload() -> Response {
    failure(
        StatusCode::BAD_REQUEST,
        "Exception while reading request",
        Some("The payload is not valid JSON."),
    )
}

fn not_found() -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "No Record found",
        Some("Record doesn't exist or ACL restricts the record retrieval"),
    )
}

fn invalid_table(table: &str) -> Response {
    failure(
        StatusCode::BAD_REQUEST,
        &format!("Invalid table {table}"),
        None,
    )
}

/// `POST /api/now/table/{table}` → 201 `{"result": record}` with `Location`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Path(table): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let target = uri.to_string();
    if let Some(resp) = admit(&state, &headers, "POST", &target).await {
        return resp;
    }
    let mut inner = state.lock();
    if !valid_table(&table) {
        record(&mut inner, "POST", target, StatusCode::BAD_REQUEST);
        return invalid_table(&table);
    }
    let Some(given) = object_body(&body) else {
        record(&mut inner, "POST", target, StatusCode::BAD_REQUEST);
        return bad_payload();
    };
    let user = inner.servicenow.creds.username.clone();
    let row = insert(&mut inner, &table, &given, &user);
    if let Some(lost) = crate::servicenow::answer_lost(&mut inner, "POST", &target) {
        return lost;
    }
    let sys_id = field(&row, "sys_id");
    let rendered = render(&inner, &state.base_url, &row, &q);
    record(&mut inner, "POST", target, StatusCode::CREATED);
    let mut resp = (StatusCode::CREATED, Json(json!({ "result": rendered }))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!(
        "{}/api/now/table/{table}/{sys_id}",
        state.base_url
    )) {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    resp
}

/// `PATCH`/`PUT /api/now/table/{table}/{sys_id}` → 200 `{"result": record}`, or 404.
pub(crate) async fn update_route(
    State(state): State<AppState>,
    Path((table, sys_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    method: axum::http::Method,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let target = uri.to_string();
    let method = method.as_str().to_owned();
    if let Some(resp) = admit(&state, &headers, &method, &target).await {
        return resp;
    }
    let (resp, pending) = {
        let mut inner = state.lock();
        let Some(given) = object_body(&body) else {
            record(&mut inner, &method, target, StatusCode::BAD_REQUEST);
            return bad_payload();
        };
        let user = inner.servicenow.creds.username.clone();
        match update(&mut inner, &table, &sys_id, &given, &user) {
            Some((row, pending)) => {
                let rendered = render(&inner, &state.base_url, &row, &q);
                record(&mut inner, &method, target, StatusCode::OK);
                (Json(json!({ "result": rendered })).into_response(), pending)
            }
            None => {
                record(&mut inner, &method, target, StatusCode::NOT_FOUND);
                (not_found(), None)
            }
        }
    };
    dispatch(&state, pending);
    resp
}

/// `DELETE /api/now/table/{table}/{sys_id}` → 204, or 404.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path((table, sys_id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let target = uri.to_string();
    if let Some(resp) = admit(&state, &headers, "DELETE", &target).await {
        return resp;
    }
    let mut inner = state.lock();
    let removed = inner
        .world
        .servicenow
        .tables
        .get_mut(&table)
        .and_then(|rows| {
            let at = rows.iter().position(|r| field(r, "sys_id") == sys_id)?;
            Some(rows.remove(at))
        })
        .is_some();
    if removed {
        record(&mut inner, "DELETE", target, StatusCode::NO_CONTENT);
        StatusCode::NO_CONTENT.into_response()
    } else {
        record(&mut inner, "DELETE", target, StatusCode::NOT_FOUND);
        not_found()
    }
}

/// `POST /api/sn_sc/servicecatalog/items/{item}/order_now`: one `sc_request` and one
/// `sc_req_item`; 200 `{"result": {sys_id, number, request_number, request_id, table}}`.
/// Fields other than `sysparm_quantity`, `sysparm_requested_for` and `variables` are ignored,
/// as the real call cannot set item fields (a caller PATCHes the created item afterwards).
pub(crate) async fn order_now(
    State(state): State<AppState>,
    Path(item): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let target = uri.to_string();
    if let Some(resp) = admit(&state, &headers, "POST", &target).await {
        return resp;
    }
    let mut inner = state.lock();
    let Some(given) = object_body(&body) else {
        record(&mut inner, "POST", target, StatusCode::BAD_REQUEST);
        return bad_payload();
    };
    let Some(cat_item) = find(&inner, "sc_cat_item", &item).cloned() else {
        record(&mut inner, "POST", target, StatusCode::NOT_FOUND);
        return failure(
            StatusCode::NOT_FOUND,
            "No Record found",
            Some("Catalog item doesn't exist or ACL restricts the record retrieval"),
        );
    };
    let quantity = given
        .get("sysparm_quantity")
        .map_or_else(|| "1".to_owned(), as_stored);
    if !quantity.parse::<u32>().is_ok_and(|n| n >= 1) {
        record(&mut inner, "POST", target, StatusCode::BAD_REQUEST);
        return failure(
            StatusCode::BAD_REQUEST,
            "Invalid quantity",
            Some("sysparm_quantity must be a positive integer"),
        );
    }
    let variables: BTreeMap<String, String> = match given.get("variables") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(v)) => v.iter().map(|(k, v)| (k.clone(), as_stored(v))).collect(),
        Some(_) => {
            record(&mut inner, "POST", target, StatusCode::BAD_REQUEST);
            return failure(
                StatusCode::BAD_REQUEST,
                "Exception while reading request",
                Some("variables must be an object"),
            );
        }
    };
    let requested_for = given
        .get("sysparm_requested_for")
        .map(as_stored)
        .unwrap_or_default();
    let name = field(&cat_item, "name");
    let user = inner.servicenow.creds.username.clone();
    let mut req_fields = Map::new();
    for (k, v) in [
        ("requested_for", requested_for.clone()),
        ("request_state", "requested".to_owned()),
        ("stage", "requested".to_owned()),
        ("short_description", name.clone()),
    ] {
        req_fields.insert(k.into(), Value::String(v));
    }
    let request = insert(&mut inner, "sc_request", &req_fields, &user);
    let request_id = field(&request, "sys_id");
    let request_number = field(&request, "number");
    let mut item_fields = Map::new();
    for (k, v) in [
        ("request", request_id.clone()),
        ("cat_item", item.clone()),
        ("requested_for", requested_for),
        ("quantity", quantity),
        ("short_description", name),
        ("stage", "request_approved".to_owned()),
    ] {
        item_fields.insert(k.into(), Value::String(v));
    }
    let ritm = insert(&mut inner, "sc_req_item", &item_fields, &user);
    inner
        .servicenow
        .book
        .variables
        .insert(field(&ritm, "sys_id"), variables);
    if let Some(lost) = crate::servicenow::answer_lost(&mut inner, "POST", &target) {
        return lost;
    }
    record(&mut inner, "POST", target, StatusCode::OK);
    Json(json!({"result": {
        "sys_id": request_id,
        "number": request_number,
        "request_number": request_number,
        "request_id": request_id,
        "table": "sc_request",
    }}))
    .into_response()
}
