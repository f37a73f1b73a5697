//! A small Azure Table storage client for the wait index of the Storage backend: which job is
//! parked on which key, and when a key was woken. Storage queues cannot look a message up by
//! anything but its id, so parked jobs are indexed here (a table in the same account).
//!
//! Hand-written for the same reasons as the queue client (README "Credentials"): Shared Key for
//! Azurite, `http://` to loopback, one token source. Entities are JSON (`odata=nometadata`).
//! Shared Key for the Table service signs `VERB \n Content-MD5 \n Content-Type \n Date \n
//! CanonicalizedResource` (<https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key>).

use std::fmt;
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Map, Value};

use super::azure::{StorageAuth, TokenSource};
use super::shared_key::AccountKey;
use crate::endpoint::EndpointUrl;

const API_VERSION: &str = "2021-12-02";

/// A table call that failed. No variant holds a key, token or signature.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TableError {
    #[error("Azure Table unreachable: {0}")]
    Unreachable(String),
    #[error("Azure Table refused the credentials: {0}")]
    Auth(String),
    #[error("Azure Table answered HTTP {status} ({code})")]
    Unexpected { status: u16, code: String },
    #[error("Azure Table sent an unreadable answer: {0}")]
    Malformed(String),
}

enum Auth {
    SharedKey {
        account: String,
        key: Option<AccountKey>,
    },
    Bearer(Arc<dyn TokenSource>),
}

/// One table: cheap to clone.
#[derive(Clone)]
pub struct Table {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: EndpointUrl,
    name: String,
    auth: Auth,
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("endpoint", &self.inner.base)
            .field("table", &self.inner.name)
            .finish()
    }
}

/// Characters a key may hold in an entity address and a `$filter` literal without escaping.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
}

impl Table {
    /// `base` is the account's table endpoint (`https://ACCOUNT.table.core.windows.net`, or
    /// path-style `http://127.0.0.1:10002/devstoreaccount1` for Azurite).
    pub fn new(http: reqwest::Client, base: EndpointUrl, name: String, auth: StorageAuth) -> Table {
        let auth = match auth {
            StorageAuth::SharedKey { account, key } => Auth::SharedKey {
                key: AccountKey::from_base64(&key).ok(),
                account,
            },
            StorageAuth::Bearer(t) => Auth::Bearer(t),
        };
        Table {
            inner: Arc::new(Inner {
                http,
                base,
                name,
                auth,
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Creates the table; an existing one is fine.
    pub async fn ensure(&self) -> Result<(), TableError> {
        let body = serde_json::json!({"TableName": self.inner.name}).to_string();
        match self.call(Method::POST, "/Tables", &[], Some(body)).await {
            Ok(_) => Ok(()),
            Err(TableError::Unexpected { status: 409, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn entity_path(&self, pk: &str, rk: &str) -> Result<String, TableError> {
        if !plain(pk) || !plain(rk) {
            return Err(TableError::Malformed(format!(
                "key {pk:?}/{rk:?} holds characters a table key cannot"
            )));
        }
        Ok(format!(
            "/{}(PartitionKey='{pk}',RowKey='{rk}')",
            self.inner.name
        ))
    }

    /// Insert or replace one entity.
    pub async fn upsert(
        &self,
        pk: &str,
        rk: &str,
        mut props: Map<String, Value>,
    ) -> Result<(), TableError> {
        let path = self.entity_path(pk, rk)?;
        props.insert("PartitionKey".into(), pk.into());
        props.insert("RowKey".into(), rk.into());
        self.call(
            Method::PUT,
            &path,
            &[],
            Some(Value::Object(props).to_string()),
        )
        .await
        .map(|_| ())
    }

    /// Inserts one entity; `false` (and nothing changed) when one with these keys exists.
    pub async fn insert(
        &self,
        pk: &str,
        rk: &str,
        mut props: Map<String, Value>,
    ) -> Result<bool, TableError> {
        self.entity_path(pk, rk)?;
        props.insert("PartitionKey".into(), pk.into());
        props.insert("RowKey".into(), rk.into());
        let path = format!("/{}", self.inner.name);
        match self
            .call_with(
                Method::POST,
                &path,
                &[],
                Some(Value::Object(props).to_string()),
                &[("Prefer", "return-no-content")],
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(TableError::Unexpected { status: 409, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One entity with its ETag (for [`Table::replace_if`]), or `None`.
    pub async fn get_tagged(
        &self,
        pk: &str,
        rk: &str,
    ) -> Result<Option<(Map<String, Value>, String)>, TableError> {
        let path = self.entity_path(pk, rk)?;
        match self.call(Method::GET, &path, &[], None).await {
            Ok(resp) => {
                let etag = resp
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .ok_or_else(|| TableError::Malformed("entity answer has no ETag".into()))?;
                let v: Value = resp
                    .json()
                    .await
                    .map_err(|e| TableError::Malformed(e.to_string()))?;
                match v {
                    Value::Object(m) => Ok(Some((m, etag))),
                    _ => Err(TableError::Malformed("entity is not an object".into())),
                }
            }
            Err(TableError::Unexpected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replaces one entity only if it is unchanged since it was read with `etag`; `false` when
    /// someone else changed or deleted it first.
    pub async fn replace_if(
        &self,
        pk: &str,
        rk: &str,
        mut props: Map<String, Value>,
        etag: &str,
    ) -> Result<bool, TableError> {
        let path = self.entity_path(pk, rk)?;
        props.insert("PartitionKey".into(), pk.into());
        props.insert("RowKey".into(), rk.into());
        match self
            .call_with(
                Method::PUT,
                &path,
                &[],
                Some(Value::Object(props).to_string()),
                &[("If-Match", etag)],
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(TableError::Unexpected {
                status: 412 | 404, ..
            }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One entity, or `None`.
    pub async fn get(&self, pk: &str, rk: &str) -> Result<Option<Map<String, Value>>, TableError> {
        let path = self.entity_path(pk, rk)?;
        match self.call(Method::GET, &path, &[], None).await {
            Ok(resp) => {
                let v: Value = resp
                    .json()
                    .await
                    .map_err(|e| TableError::Malformed(e.to_string()))?;
                match v {
                    Value::Object(m) => Ok(Some(m)),
                    _ => Err(TableError::Malformed("entity is not an object".into())),
                }
            }
            Err(TableError::Unexpected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes one entity; a missing one is fine.
    pub async fn delete(&self, pk: &str, rk: &str) -> Result<(), TableError> {
        let path = self.entity_path(pk, rk)?;
        match self
            .call_with(Method::DELETE, &path, &[], None, &[("If-Match", "*")])
            .await
        {
            Ok(_) | Err(TableError::Unexpected { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Entities of partition `pk`, optionally where string property `prop` equals `value`;
    /// at most `limit`, following continuation tokens.
    pub async fn query(
        &self,
        pk: &str,
        prop_eq: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<Map<String, Value>>, TableError> {
        if !plain(pk) || prop_eq.is_some_and(|(p, v)| !plain(p) || !plain(v)) {
            return Err(TableError::Malformed(
                "query value holds characters a filter cannot".into(),
            ));
        }
        let mut filter = format!("PartitionKey eq '{pk}'");
        if let Some((p, v)) = prop_eq {
            filter.push_str(&format!(" and {p} eq '{v}'"));
        }
        let path = format!("/{}()", self.inner.name);
        let mut out = Vec::new();
        let mut next: Option<(String, String)> = None;
        // Bounded: a page holds up to 1,000 entities.
        for _ in 0..100 {
            let top = limit.saturating_sub(out.len()).clamp(1, 1000).to_string();
            let mut query: Vec<(&str, &str)> = vec![("$filter", &filter), ("$top", &top)];
            if let Some((p, r)) = &next {
                query.push(("NextPartitionKey", p));
                query.push(("NextRowKey", r));
            }
            let resp = self.call(Method::GET, &path, &query, None).await?;
            let header = |n: &str| {
                resp.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            next = header("x-ms-continuation-NextPartitionKey")
                .zip(header("x-ms-continuation-NextRowKey"));
            let v: Value = resp
                .json()
                .await
                .map_err(|e| TableError::Malformed(e.to_string()))?;
            let rows = v
                .get("value")
                .and_then(Value::as_array)
                .ok_or_else(|| TableError::Malformed("query answer has no value array".into()))?;
            out.extend(rows.iter().filter_map(|r| r.as_object().cloned()));
            if out.len() >= limit || next.is_none() {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<reqwest::Response, TableError> {
        self.call_with(method, path, query, body, &[]).await
    }

    async fn call_with(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
        extra: &[(&str, &str)],
    ) -> Result<reqwest::Response, TableError> {
        let mut url = url::Url::parse(&self.inner.base.join(path))
            .map_err(|e| TableError::Malformed(format!("table URL: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let date = super::shared_key::request_date().map_err(TableError::Malformed)?;
        let content_type = if body.is_some() {
            "application/json"
        } else {
            ""
        };
        let authorization = match &self.inner.auth {
            Auth::SharedKey { account, key } => {
                let key = key.as_ref().ok_or_else(|| {
                    TableError::Auth("the storage account key is not valid base64".into())
                })?;
                // The resource is the path as sent (path-style endpoints already hold the
                // account once more), without the query.
                let sts = format!(
                    "{}\n\n{content_type}\n{date}\n/{account}{}",
                    method.as_str(),
                    url.path()
                );
                format!("SharedKey {account}:{}", key.sign(&sts))
            }
            Auth::Bearer(source) => {
                let token = source.token().await.map_err(|e| {
                    TableError::Auth(format!("cannot get a token for Azure Storage: {e}"))
                })?;
                format!("Bearer {}", token.expose())
            }
        };
        let auth_value = super::shared_key::authorization_value(&authorization)
            .ok_or_else(|| TableError::Auth("the credential is not a valid header value".into()))?;
        let mut req = self
            .inner
            .http
            .request(method.clone(), url.clone())
            .header("x-ms-date", &date)
            .header("Date", &date)
            .header("x-ms-version", API_VERSION)
            .header("Accept", "application/json;odata=nometadata")
            .header("DataServiceVersion", "3.0;NetFx")
            .header("MaxDataServiceVersion", "3.0;NetFx")
            .header(reqwest::header::AUTHORIZATION, auth_value);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        match body {
            Some(b) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(b);
            }
            None if method == Method::PUT || method == Method::POST => {
                req = req.header(reqwest::header::CONTENT_LENGTH, "0");
            }
            None => {}
        }
        let resp = req.send().await.map_err(|e| {
            TableError::Unreachable(format!(
                "{method} {}{}: {}",
                url.origin().ascii_serialization(),
                url.path(),
                crate::outbound::transport_error(&e)
            ))
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let code = resp
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("no error code")
                    .to_owned()
            });
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => TableError::Auth(format!(
                "{code}; grant the identity Storage Table Data Contributor on the account (or check the account key)"
            )),
            _ => TableError::Unexpected {
                status: status.as_u16(),
                code,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_keys_go_into_an_address_or_filter() {
        assert!(plain("servicenow:INC001"));
        assert!(!plain("a'b"));
        assert!(!plain("a/b"));
        assert!(!plain(""));
    }
}
