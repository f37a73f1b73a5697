//! The ServiceNow Table API (anchors.md §5): `GET /api/now/table/{table}?sysparm_query=…` with
//! Basic auth or an OAuth bearer from `/oauth_token.do`. Passwords and client secrets come from
//! Key Vault (read with the managed identity, cached, re-read once after a 401 so a rotation
//! needs no restart) or, for local runs, from the environment.
//!
//! Hand-written: there is no maintained Rust ServiceNow client, and the three calls used here
//! (query, token) are plain REST.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

use super::{TicketError, TicketRecord, TicketSystem};
use crate::credentials::Credentials;
use crate::outbound::{retry_after, transport_error};
use crate::secret::Secret;

pub mod settings;
pub use settings::{Auth, BridgeSettings, SecretSource, Settings};

/// The client.
pub struct ServiceNow {
    http: reqwest::Client,
    s: Settings,
    credentials: Option<Arc<Credentials>>,
    /// Secrets read from Key Vault, by name.
    secrets: Mutex<std::collections::HashMap<String, Secret>>,
    token: Mutex<Option<(Secret, Instant)>>,
    calls: AtomicU64,
}

impl ServiceNow {
    pub fn new(
        http: reqwest::Client,
        s: Settings,
        credentials: Option<Arc<Credentials>>,
    ) -> ServiceNow {
        ServiceNow {
            http,
            s,
            credentials,
            secrets: Mutex::default(),
            token: Mutex::new(None),
            calls: AtomicU64::new(0),
        }
    }

    /// Table API and token calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// A secret named by a setting: the value itself, or read from Key Vault (cached; `fresh`
    /// reads it again).
    pub async fn secret(&self, src: &SecretSource, fresh: bool) -> Result<Secret, TicketError> {
        let name = match src {
            SecretSource::Value(v) => return Ok(v.clone()),
            SecretSource::KeyVault(n) => n,
        };
        if !fresh && let Some(s) = self.secrets.lock().await.get(name) {
            return Ok(s.clone());
        }
        let (Some(creds), Some(vault)) = (
            self.credentials.as_ref(),
            self.credentials.as_ref().and_then(|c| c.key_vault()),
        ) else {
            return Err(TicketError::Credential(format!(
                "Key Vault secret {name} is named, but credentials.key_vault_url is not set"
            )));
        };
        let v = vault
            .secret(creds.managed_identity(), name)
            .await
            .map_err(|e| TicketError::Credential(e.to_string()))?;
        self.secrets
            .lock()
            .await
            .insert(name.clone(), v.value.clone());
        Ok(v.value)
    }

    fn left(deadline: Instant) -> Result<Duration, TicketError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(TicketError::DeadlinePassed)
        } else {
            Ok(left)
        }
    }

    async fn oauth_token(&self, fresh: bool, deadline: Instant) -> Result<Secret, TicketError> {
        let Auth::OAuth {
            client_id,
            client_secret,
            user,
        } = &self.s.auth
        else {
            return Err(TicketError::Credential("not in oauth mode".into()));
        };
        if !fresh
            && let Some((t, until)) = self.token.lock().await.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let secret = self.secret(client_secret, fresh).await?;
        let mut form: Vec<(&str, String)> = vec![
            ("client_id", client_id.clone()),
            ("client_secret", secret.expose().to_owned()),
        ];
        match user {
            None => form.push(("grant_type", "client_credentials".into())),
            Some((u, pw)) => {
                let pw = self.secret(pw, fresh).await?;
                form.extend([
                    ("grant_type", "password".into()),
                    ("username", u.clone()),
                    ("password", pw.expose().to_owned()),
                ]);
            }
        }
        let left = Self::left(deadline)?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        let resp = self
            .http
            .post(self.s.instance.join("/oauth_token.do"))
            .form(&form)
            .timeout(self.s.timeout.min(left))
            .send()
            .await
            .map_err(|e| {
                TicketError::Unavailable(format!("OAuth token request {}", transport_error(&e)))
            })?;
        let status = resp.status().as_u16();
        if status == 401 || status == 400 {
            return Err(TicketError::Unauthorized(format!(
                "the OAuth token endpoint answered HTTP {status}: check servicenow.client_id and the client secret"
            )));
        }
        if status != 200 {
            return Err(TicketError::Unavailable(format!(
                "the OAuth token endpoint answered HTTP {status}"
            )));
        }
        let v: Value = resp
            .json()
            .await
            .map_err(|_| TicketError::Malformed("the OAuth token answer is not JSON".into()))?;
        let token = v["access_token"].as_str().ok_or_else(|| {
            TicketError::Malformed("the OAuth token answer has no access_token".into())
        })?;
        let life = v["expires_in"]
            .as_u64()
            .unwrap_or(300)
            .saturating_sub(60)
            .max(30);
        let t = Secret::new(token);
        *self.token.lock().await = Some((t.clone(), Instant::now() + Duration::from_secs(life)));
        Ok(t)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        fresh: bool,
        deadline: Instant,
    ) -> Result<reqwest::Response, TicketError> {
        let mut req = self.http.request(method, url).query(query);
        if let Some(b) = body {
            req = req.json(b);
        }
        let req = match &self.s.auth {
            Auth::Basic { username, password } => {
                let pw = self.secret(password, fresh).await?;
                req.basic_auth(username, Some(pw.expose()))
            }
            Auth::OAuth { .. } => {
                req.bearer_auth(self.oauth_token(fresh, deadline).await?.expose())
            }
        };
        let left = Self::left(deadline)?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        req.header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.s.timeout.min(left))
            .send()
            .await
            .map_err(|e| TicketError::Unavailable(format!("ServiceNow {}", transport_error(&e))))
    }

    /// One call, sent again once with fresh credentials after a 401 (a rotated secret or an
    /// expired token). Returns the status and the parsed body (`Null` when it is empty).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        deadline: Instant,
    ) -> Result<(u16, Value), TicketError> {
        let url = self.s.instance.join(path);
        let started = Instant::now();
        let mut resp = self
            .send(method.clone(), &url, query, body, false, deadline)
            .await?;
        if resp.status().as_u16() == 401 {
            resp = self
                .send(method.clone(), &url, query, body, true, deadline)
                .await?;
        }
        let status = resp.status().as_u16();
        tracing::debug!(
            method = %method,
            path,
            status,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "servicenow"
        );
        let auth_hint = || match &self.s.auth {
            Auth::Basic { .. } => "basic auth: check servicenow.username and the password",
            Auth::OAuth { .. } => "OAuth: check the client, and the user's roles on the table",
        };
        match status {
            200..=299 => {}
            401 | 403 => {
                return Err(TicketError::Unauthorized(format!(
                    "HTTP {status} ({})",
                    auth_hint()
                )));
            }
            404 => return Ok((404, Value::Null)),
            400 => {
                let msg = error_message(&resp.text().await.unwrap_or_default());
                return Err(TicketError::Refused(format!("HTTP 400 {msg}")));
            }
            _ => {
                return Err(match retry_after(resp.headers()) {
                    Some(d) => TicketError::Throttled(
                        format!("HTTP {status}, Retry-After {} s", d.as_secs()),
                        d,
                    ),
                    None => TicketError::Unavailable(format!("HTTP {status}")),
                });
            }
        }
        let text = resp
            .text()
            .await
            .map_err(|e| TicketError::Unavailable(format!("ServiceNow {}", transport_error(&e))))?;
        if text.trim().is_empty() {
            return Ok((status, Value::Null));
        }
        let v = serde_json::from_str(&text)
            .map_err(|_| TicketError::Malformed("the Table API answer is not JSON".into()))?;
        Ok((status, v))
    }

    /// `{"result": [...]}` as records.
    fn records(v: &Value) -> Result<Vec<TicketRecord>, TicketError> {
        let rows = v["result"].as_array().ok_or_else(|| {
            TicketError::Malformed("the Table API answer has no result array".into())
        })?;
        rows.iter()
            .map(|r| {
                r.as_object()
                    .map(|o| TicketRecord { fields: o.clone() })
                    .ok_or_else(|| TicketError::Malformed("a result entry is not an object".into()))
            })
            .collect()
    }

    /// `{"result": {...}}` as a record.
    fn one(v: &Value) -> Result<TicketRecord, TicketError> {
        v["result"]
            .as_object()
            .map(|o| TicketRecord { fields: o.clone() })
            .ok_or_else(|| {
                TicketError::Malformed("the Table API answer has no result object".into())
            })
    }

    fn check_table(table: &str, fields: &[String]) -> Result<(), TicketError> {
        if !safe_name(table) || table.contains('.') || fields.iter().any(|f| !safe_name(f)) {
            return Err(TicketError::Malformed(format!(
                "refusing table or field names that are not [A-Za-z0-9_.]: {table}"
            )));
        }
        Ok(())
    }

    fn read_query(fields: &[String]) -> Vec<(&'static str, String)> {
        let mut want = vec!["sys_id".to_owned()];
        want.extend(fields.iter().filter(|f| *f != "sys_id").cloned());
        vec![
            ("sysparm_fields", want.join(",")),
            ("sysparm_display_value", "all".to_owned()),
            ("sysparm_exclude_reference_link", "true".to_owned()),
        ]
    }

    /// `GET /api/now/table/{table}` with `query`: its records; a missing table is a refusal.
    async fn query_table(
        &self,
        table: &str,
        query: &[(&str, String)],
        deadline: Instant,
    ) -> Result<Vec<TicketRecord>, TicketError> {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/now/table/{table}"),
                query,
                None,
                deadline,
            )
            .await?;
        if status == 404 {
            return Err(TicketError::Refused(format!(
                "table {table} does not exist (HTTP 404)"
            )));
        }
        Self::records(&v)
    }

    /// The records of `table` whose `field` equals `value` (at most 10), for the bridge's
    /// look-up before it creates (the value is a link such as `accessgate:<id>`).
    pub async fn find_linked(
        &self,
        table: &str,
        field: &str,
        value: &str,
        fields: &[String],
        deadline: Instant,
    ) -> Result<Vec<TicketRecord>, TicketError> {
        Self::check_table(table, fields)?;
        if !safe_name(field) || !safe_link(value) {
            return Err(TicketError::Malformed(format!(
                "refusing link field or value outside [A-Za-z0-9_.:-]: {field}"
            )));
        }
        let mut query = Self::read_query(fields);
        query.push(("sysparm_query", format!("{field}={value}")));
        query.push(("sysparm_limit", "10".to_owned()));
        // The Table API ignores query parts it cannot apply (anchors.md §5): re-check.
        Ok(self
            .query_table(table, &query, deadline)
            .await?
            .into_iter()
            .filter(|r| r.field(field).is_some_and(|f| f.value == value))
            .collect())
    }

    /// Requested items of catalog item `item` that no link claims yet, ordered for
    /// `requested_for` (when given), created at or after `since_ms` (Unix ms), newest first:
    /// where an order whose answer was lost is found again. The Table API ignores query parts
    /// it cannot apply, so every condition is checked again on the answer.
    pub async fn find_unlinked_items(
        &self,
        item: &str,
        link_field: &str,
        requested_for: Option<&str>,
        since_ms: i64,
        fields: &[String],
        deadline: Instant,
    ) -> Result<Vec<TicketRecord>, TicketError> {
        let extra = ["cat_item", "requested_for", "sys_created_on", link_field];
        let fields: Vec<String> = fields
            .iter()
            .cloned()
            .chain(extra.iter().map(|f| (*f).to_owned()))
            .collect();
        Self::check_table("sc_req_item", &fields)?;
        if !safe_link(item) || requested_for.is_some_and(|r| !safe_link(r)) {
            return Err(TicketError::Malformed(
                "refusing a catalog item or user outside [A-Za-z0-9_.:-@]".into(),
            ));
        }
        let since = jiff::Timestamp::from_millisecond(since_ms)
            .map_err(|_| TicketError::Malformed("reservation time out of range".into()))?
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        let mut q = format!("cat_item={item}^{link_field}ISEMPTY^sys_created_on>={since}");
        if let Some(r) = requested_for {
            q.push_str(&format!("^requested_for={r}"));
        }
        q.push_str("^ORDERBYDESCsys_created_on");
        let mut query = Self::read_query(&fields);
        query.push(("sysparm_query", q));
        query.push(("sysparm_limit", "20".to_owned()));
        let value = |r: &TicketRecord, f: &str| r.field(f).map(|x| x.value).unwrap_or_default();
        let mut found: Vec<TicketRecord> = self
            .query_table("sc_req_item", &query, deadline)
            .await?
            .into_iter()
            .filter(|r| {
                value(r, "cat_item") == item
                    && value(r, link_field).is_empty()
                    && requested_for.is_none_or(|u| value(r, "requested_for") == u)
                    && value(r, "sys_created_on") >= since
            })
            .collect();
        found.sort_by_key(|r| std::cmp::Reverse(value(r, "sys_created_on")));
        Ok(found)
    }

    /// One record by `sys_id`; `None` when ServiceNow has no such record (deleted, or the
    /// account may no longer read it).
    pub async fn read(
        &self,
        table: &str,
        sys_id: &str,
        fields: &[String],
        deadline: Instant,
    ) -> Result<Option<TicketRecord>, TicketError> {
        Self::check_table(table, fields)?;
        check_sys_id(sys_id)?;
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/now/table/{table}/{sys_id}"),
                &Self::read_query(fields),
                None,
                deadline,
            )
            .await?;
        if status == 404 {
            return Ok(None);
        }
        Self::one(&v).map(Some)
    }

    /// Records of `table` among `sys_ids`, in one call (`sys_idIN…`); a missing one is absent
    /// from the answer.
    pub async fn read_many(
        &self,
        table: &str,
        sys_ids: &[String],
        fields: &[String],
        deadline: Instant,
    ) -> Result<Vec<TicketRecord>, TicketError> {
        Self::check_table(table, fields)?;
        for s in sys_ids {
            check_sys_id(s)?;
        }
        if sys_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = Self::read_query(fields);
        query.push(("sysparm_query", format!("sys_idIN{}", sys_ids.join(","))));
        query.push(("sysparm_limit", sys_ids.len().to_string()));
        Ok(self
            .query_table(table, &query, deadline)
            .await?
            .into_iter()
            .filter(|r| {
                r.field("sys_id")
                    .is_some_and(|f| sys_ids.contains(&f.value))
            })
            .collect())
    }

    /// Creates a record; ServiceNow answers 201 with it (`sys_id`, `number`).
    pub async fn create(
        &self,
        table: &str,
        fields: &serde_json::Map<String, Value>,
        deadline: Instant,
    ) -> Result<TicketRecord, TicketError> {
        Self::check_table(table, &[])?;
        let query = [
            ("sysparm_display_value", "all".to_owned()),
            ("sysparm_exclude_reference_link", "true".to_owned()),
        ];
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/now/table/{table}"),
                &query,
                Some(&Value::Object(fields.clone())),
                deadline,
            )
            .await?;
        if status == 404 {
            return Err(TicketError::Refused(format!(
                "table {table} does not exist (HTTP 404)"
            )));
        }
        Self::one(&v)
    }

    /// Changes fields of a record (`PATCH`); writing `work_notes` adds a work note. `Ok(false)`
    /// when the record does not exist.
    pub async fn update(
        &self,
        table: &str,
        sys_id: &str,
        fields: &serde_json::Map<String, Value>,
        deadline: Instant,
    ) -> Result<bool, TicketError> {
        Self::check_table(table, &[])?;
        check_sys_id(sys_id)?;
        let (status, _) = self
            .call(
                reqwest::Method::PATCH,
                &format!("/api/now/table/{table}/{sys_id}"),
                &[],
                Some(&Value::Object(fields.clone())),
                deadline,
            )
            .await?;
        Ok(status != 404)
    }

    /// Orders a catalog item (`order_now`): ServiceNow makes a request (REQ) and its item
    /// (RITM) and runs the item's flows. Returns the request's `sys_id` and number.
    pub async fn order_now(
        &self,
        item: &str,
        requested_for: Option<&str>,
        variables: &serde_json::Map<String, Value>,
        deadline: Instant,
    ) -> Result<(String, String), TicketError> {
        check_sys_id(item)?;
        let mut body = serde_json::Map::new();
        body.insert("sysparm_quantity".into(), "1".into());
        if let Some(u) = requested_for {
            body.insert("sysparm_requested_for".into(), u.into());
        }
        body.insert("variables".into(), Value::Object(variables.clone()));
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                &format!("/api/sn_sc/servicecatalog/items/{item}/order_now"),
                &[],
                Some(&Value::Object(body)),
                deadline,
            )
            .await?;
        if status == 404 {
            return Err(TicketError::Refused(format!(
                "catalog item {item} does not exist (HTTP 404)"
            )));
        }
        let r = &v["result"];
        let text = |k: &str| r[k].as_str().map(str::to_owned);
        match (
            text("sys_id").or_else(|| text("request_id")),
            text("number").or_else(|| text("request_number")),
        ) {
            (Some(id), Some(n)) => Ok((id, n)),
            _ => Err(TicketError::Malformed(
                "the order_now answer has no request sys_id and number".into(),
            )),
        }
    }

    /// `[servicenow]` as configured.
    pub fn settings(&self) -> &Settings {
        &self.s
    }
}

/// A `sys_id`: 32 hex digits (letters and digits accepted, so a test instance's ids work).
fn check_sys_id(s: &str) -> Result<(), TicketError> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(TicketError::Malformed(
            "refusing a sys_id that is not letters and digits".into(),
        ));
    }
    Ok(())
}

/// A link value written into and queried from a field: no query operators (`^`, `=`).
fn safe_link(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-' | b'@'))
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// ServiceNow's `{"error":{"message"}}`.
fn error_message(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    v["error"]["message"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

#[async_trait::async_trait]
impl TicketSystem for ServiceNow {
    async fn find(
        &self,
        table: &str,
        number_field: &str,
        number: &str,
        fields: &[String],
        deadline: Instant,
    ) -> Result<Vec<TicketRecord>, TicketError> {
        // Query injection guard: `^` joins conditions, so nothing but a plain number goes in.
        if !safe_name(table)
            || table.contains('.')
            || !safe_name(number_field)
            || fields.iter().any(|f| !safe_name(f))
        {
            return Err(TicketError::Malformed(format!(
                "refusing table or field names that are not [A-Za-z0-9_.]: {table}, {number_field}"
            )));
        }
        if number.is_empty()
            || !number
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(TicketError::Malformed(format!(
                "refusing ticket number {number:?}: letters, digits, - and _ only"
            )));
        }
        let mut want = vec![number_field.to_owned(), "sys_id".to_owned()];
        want.extend(fields.iter().cloned());
        let query = [
            ("sysparm_query", format!("{number_field}={number}")),
            ("sysparm_fields", want.join(",")),
            ("sysparm_limit", "10".to_owned()),
            ("sysparm_display_value", "all".to_owned()),
            ("sysparm_exclude_reference_link", "true".to_owned()),
        ];
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/now/table/{table}"),
                &query,
                None,
                deadline,
            )
            .await
            .map_err(|e| match e {
                // A lookup treats a refused query as the system being unavailable, as before.
                TicketError::Refused(m) => TicketError::Unavailable(m),
                e => e,
            })?;
        if status == 404 {
            return Err(TicketError::Unavailable("HTTP 404".into()));
        }
        Self::records(&v)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use axum::extract::{Query, State};
    use axum::http::HeaderMap;
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use serde_json::json;

    use crate::endpoint::EndpointUrl;

    use super::*;

    #[derive(Default)]
    struct Seen {
        tokens: AtomicUsize,
        gets: AtomicUsize,
        last_query: std::sync::Mutex<String>,
        last_auth: std::sync::Mutex<String>,
    }

    async fn stub(fail_first: bool, body: Value) -> (String, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let s2 = seen.clone();
        let app = Router::new()
            .route("/oauth_token.do", post(|State(s): State<Arc<Seen>>| async move {
                s.tokens.fetch_add(1, Ordering::SeqCst);
                Json(json!({"access_token": "tok-123", "token_type": "Bearer", "expires_in": 1799}))
            }))
            .route("/api/now/table/{table}", get(move |State(s): State<Arc<Seen>>, Query(q): Query<Vec<(String, String)>>, h: HeaderMap| {
                let body = body.clone();
                async move {
                    let n = s.gets.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut l) = s.last_query.lock() { *l = format!("{q:?}"); }
                    if let Ok(mut l) = s.last_auth.lock() { *l = h.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned(); }
                    if fail_first && n == 0 {
                        return (axum::http::StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "User Not Authenticated"}, "status": "failure"})));
                    }
                    (axum::http::StatusCode::OK, Json(body))
                }
            }))
            .with_state(s2);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        (format!("http://{addr}"), seen)
    }

    /// `[servicenow]` from TOML, with a vault configured (as credentials' Key Vault modes do).
    fn settings(toml_text: &str) -> Result<Settings, Vec<(String, String)>> {
        let vault = EndpointUrl::parse("https://v.vault.azure.net").unwrap();
        let mut p = crate::settings::Problems::default();
        let raw = toml::from_str(toml_text).unwrap();
        let s = Settings::from_raw(raw, Some(&vault), &mut p);
        let (errors, _) = p.into_parts();
        match s {
            Some(s) if errors.is_empty() => Ok(s),
            _ => Err(errors.into_iter().map(|e| (e.setting, e.message)).collect()),
        }
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn basic_auth_query_shape_and_records() {
        let (url, seen) = stub(
            false,
            json!({"result": [{"number": "RITM0010001", "sys_id": "s1"}]}),
        )
        .await;
        let s = settings(&format!(
            "instance_url = \"{url}\"\nusername = \"ag\"\npassword = \"pw-not-printed\""
        ))
        .unwrap();
        let sn = ServiceNow::new(reqwest::Client::new(), s, None);
        let recs = sn
            .find(
                "sc_req_item",
                "number",
                "RITM0010001",
                &["state".into(), "opened_for.email".into()],
                deadline(),
            )
            .await
            .unwrap();
        assert_eq!(recs.len(), 1);
        let q = seen
            .last_query
            .lock()
            .map(|q| q.clone())
            .unwrap_or_default();
        for want in [
            "number=RITM0010001",
            "number,sys_id,state,opened_for.email",
            "sysparm_display_value\", \"all",
            "sysparm_exclude_reference_link",
        ] {
            assert!(q.contains(want), "{want}: {q}");
        }
        assert!(
            seen.last_auth
                .lock()
                .map(|a| a.starts_with("Basic "))
                .unwrap_or(false)
        );
    }

    #[tokio::test]
    async fn oauth_tokens_are_cached_and_a_401_retries_once() {
        let (url, seen) = stub(true, json!({"result": []})).await;
        let s = settings(&format!("instance_url = \"{url}\"\nauth = \"oauth\"\nclient_id = \"c\"\nclient_secret = \"cs-not-printed\"")).unwrap();
        let sn = ServiceNow::new(reqwest::Client::new(), s, None);
        for _ in 0..2 {
            sn.find("incident", "number", "INC0000001", &[], deadline())
                .await
                .unwrap();
        }
        // First find: token, 401, fresh token, retry; second find: the cached token.
        assert_eq!(seen.tokens.load(Ordering::SeqCst), 2);
        assert_eq!(seen.gets.load(Ordering::SeqCst), 3);
        assert_eq!(
            seen.last_auth.lock().map(|a| a.clone()).unwrap_or_default(),
            "Bearer tok-123"
        );
    }

    #[tokio::test]
    async fn failures_map_to_clear_errors() {
        let (url, _) = stub(false, json!({"oops": 1})).await;
        let s = settings(&format!(
            "instance_url = \"{url}\"\nusername = \"ag\"\npassword = \"pw-not-printed\""
        ))
        .unwrap();
        let sn = ServiceNow::new(reqwest::Client::new(), s.clone(), None);
        assert!(matches!(
            sn.find("t", "number", "X1", &[], deadline()).await,
            Err(TicketError::Malformed(_))
        ));
        assert!(
            matches!(
                sn.find("t", "number", "X1^ORactive=true", &[], deadline())
                    .await,
                Err(TicketError::Malformed(_))
            ),
            "injection guard"
        );
        assert!(matches!(
            sn.find("t;drop", "number", "X1", &[], deadline()).await,
            Err(TicketError::Malformed(_))
        ));
        assert!(matches!(
            sn.find("t", "number", "X1", &[], Instant::now()).await,
            Err(TicketError::DeadlinePassed)
        ));
        let (down, _) = ("http://127.0.0.1:9".to_owned(), ());
        let s = settings(&format!(
            "instance_url = \"{down}\"\nusername = \"ag\"\npassword = \"pw-not-printed\""
        ))
        .unwrap();
        let e = ServiceNow::new(reqwest::Client::new(), s.clone(), None)
            .find("t", "number", "X1", &[], deadline())
            .await
            .err();
        assert!(matches!(e, Some(TicketError::Unavailable(_))), "{e:?}");
        let printed = format!("{s:?} {} {e:?}", s.describe());
        assert!(!printed.contains("pw-not-printed"), "{printed}");
    }

    #[test]
    fn settings_are_checked() {
        let errs = settings("instance_url = \"http://servicenow.example.com\"\nauth = \"oauth\"")
            .err()
            .unwrap_or_default();
        let all = format!("{errs:?}");
        for want in [
            "servicenow.instance_url",
            "servicenow.client_id",
            "client_secret_secret",
        ] {
            assert!(all.contains(want), "{want}: {all}");
        }
        let s = settings("instance_url = \"https://x.service-now.com\"\nusername = \"u\"\npassword_secret = \"sn-pw\"").unwrap();
        assert!(s.uses_key_vault());
        assert!(s.describe().contains("Key Vault secret sn-pw"));
        assert!(settings("instance_url = \"https://x\"\nusername = \"u\"\npassword = \"a\"\npassword_secret = \"b\"").is_err());
    }
}
