//! A small REST client for Azure Storage Queues: the queue that several `accessgate serve`
//! instances (and the Azure Functions host) share.
//!
//! Why hand-written rather than the official `azure_storage_queue` crate: that crate has no
//! Shared Key authorization (the only scheme Azurite, the local emulator the tests and CI run
//! against, accepts with an account key) and refuses to send a bearer token over plain http,
//! which rules out Azurite on loopback. The handful of calls needed here (create queue, put, get,
//! peek, update, delete message, queue metadata) is a few hundred lines over `reqwest`.
//!
//! - Authorization: Shared Key ([`super::shared_key`], for Azurite and account keys) or an Entra
//!   bearer token for `https://storage.azure.com/` ([`TokenSource`], managed identity).
//! - Every request carries `x-ms-version` ([`API_VERSION`]) and `x-ms-date`.
//! - Message text travels base64-encoded (the Azure Functions queue trigger's default encoding),
//!   with `messagettl=-1` (never expires: a callout may wait up to 14 days).
//! - The base URL is an [`EndpointUrl`], so a key-signed or token-carrying request only goes over
//!   https, or plain http to loopback (Azurite).
//! - Errors ([`QueueError`]) carry the storage error code, never a key, token or signature.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::shared_key::{AccountKey, KeyError, SignedRequest, string_to_sign};
use crate::credentials::CredentialError;
use crate::endpoint::EndpointUrl;
use crate::secret::Secret;

/// The storage REST API version sent as `x-ms-version` (bearer tokens need 2017-11-09 or later;
/// Azurite 3.37 accepts it).
pub const API_VERSION: &str = "2021-12-02";

/// The longest visibility timeout the service accepts (7 days).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The most messages one receive or peek returns.
pub const MAX_BATCH: u8 = 32;

/// The Azurite endpoint that `UseDevelopmentStorage=true` means.
pub const DEV_QUEUE_ENDPOINT: &str = "http://127.0.0.1:10001/devstoreaccount1";
/// The Azurite account name.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The Azurite account key: public, published in Microsoft's Azurite documentation.
const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Where the queues are.
#[derive(Debug, Clone)]
pub struct AzureQueueSettings {
    /// The account's queue endpoint: `https://ACCOUNT.queue.core.windows.net`, or path-style
    /// `http://127.0.0.1:10001/devstoreaccount1` for Azurite.
    pub queue_url_base: EndpointUrl,
    pub queue: String,
    pub poison_queue: String,
}

/// An Entra access token for `https://storage.azure.com/`.
pub trait TokenSource: Send + Sync {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<Secret, CredentialError>> + Send + '_>>;
}

/// How requests are authorized.
#[derive(Clone)]
pub enum StorageAuth {
    /// Shared Key with the base64 account key.
    SharedKey { account: String, key: Secret },
    /// `Authorization: Bearer` with an Entra token (managed identity).
    Bearer(Arc<dyn TokenSource>),
}

impl fmt::Debug for StorageAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageAuth::SharedKey { account, .. } => f
                .debug_struct("SharedKey")
                .field("account", account)
                .field("key", &"[redacted]")
                .finish(),
            StorageAuth::Bearer(_) => f.write_str("Bearer"),
        }
    }
}

/// A queue call that failed. No variant ever holds a key, token or signature.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// Transport: the service did not answer (timed out, connection refused or reset, TLS).
    #[error("Azure Storage queue unreachable: {0}")]
    Unreachable(String),
    /// 429, or 503 ServerBusy: back off.
    #[error("Azure Storage queue is throttling requests (retry after {retry_after:?})")]
    Throttled { retry_after: Option<Duration> },
    /// 401/403, or no token: the storage error code and what to check.
    #[error("Azure Storage queue refused the credentials: {0}")]
    Auth(String),
    /// QueueNotFound; for delete/update MessageNotFound or PopReceiptMismatch (400): the pop
    /// receipt is stale (the lease expired and another worker took the message) or it is gone.
    #[error("Azure Storage queue: not found: {0}")]
    NotFound(String),
    #[error("Azure Storage queue answered HTTP {status} ({code})")]
    Unexpected { status: u16, code: String },
    /// The service's answer could not be read.
    #[error("Azure Storage queue sent an unreadable answer: {0}")]
    Malformed(String),
}

/// One message as received or peeked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    /// Needed to delete or update the message; empty for a peeked message.
    pub pop_receipt: String,
    pub dequeue_count: u32,
    /// When the message was first put, as Unix milliseconds.
    pub inserted_ms: Option<i64>,
    /// The decoded text; when the message text is not base64 of UTF-8 (someone else wrote it),
    /// the text exactly as stored, so that the caller can still poison it.
    pub text: String,
}

/// The queue client: cheap to clone, shares the HTTP connection pool.
#[derive(Clone)]
pub struct AzureQueue {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    settings: AzureQueueSettings,
    auth: Auth,
}

enum Auth {
    SharedKey {
        account: String,
        key: Result<AccountKey, KeyError>,
    },
    Bearer(Arc<dyn TokenSource>),
}

impl fmt::Debug for AzureQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.inner.auth {
            Auth::SharedKey { .. } => "SharedKey",
            Auth::Bearer(_) => "Bearer",
        };
        f.debug_struct("AzureQueue")
            .field("endpoint", &self.inner.settings.queue_url_base)
            .field("queue", &self.inner.settings.queue)
            .field("poison_queue", &self.inner.settings.poison_queue)
            .field("auth", &auth)
            .finish()
    }
}

/// Which queue a call is about.
#[derive(Clone, Copy)]
enum Which {
    Main,
    Poison,
}

impl AzureQueue {
    /// A client for the two queues. A Shared Key that is not valid base64 is reported by the
    /// first call (as [`QueueError::Auth`]).
    pub fn new(http: reqwest::Client, settings: AzureQueueSettings, auth: StorageAuth) -> Self {
        let auth = match auth {
            StorageAuth::SharedKey { account, key } => Auth::SharedKey {
                key: AccountKey::from_base64(&key),
                account,
            },
            StorageAuth::Bearer(t) => Auth::Bearer(t),
        };
        AzureQueue {
            inner: Arc::new(Inner {
                http,
                settings,
                auth,
            }),
        }
    }

    pub fn settings(&self) -> &AzureQueueSettings {
        &self.inner.settings
    }

    /// Creates the queue and the poison queue; existing queues are fine.
    pub async fn ensure_queues(&self) -> Result<(), QueueError> {
        for which in [Which::Main, Which::Poison] {
            let path = format!("/{}", self.name(which));
            match self.call(Method::PUT, &path, &[], None).await {
                Ok(_) => {}
                // Exists with other metadata: still usable.
                Err(QueueError::Unexpected { status: 409, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Puts a message (base64 text, never expires), visible after `initial_visibility`.
    pub async fn send(
        &self,
        text: &str,
        initial_visibility: Option<Duration>,
    ) -> Result<(), QueueError> {
        self.put_message(Which::Main, text, initial_visibility)
            .await
            .map(|_| ())
    }

    /// Like [`AzureQueue::send`], and returns the message with its id and pop receipt, so it
    /// can be updated (made visible early) without receiving it.
    pub async fn send_returning(
        &self,
        text: &str,
        initial_visibility: Option<Duration>,
    ) -> Result<Received, QueueError> {
        let xml = self
            .put_message(Which::Main, text, initial_visibility)
            .await?;
        let mut got = parse_messages(&xml)?;
        let mut m = got
            .pop()
            .filter(|m| !m.pop_receipt.is_empty())
            .ok_or_else(|| {
                QueueError::Malformed("put message answered without a pop receipt".into())
            })?;
        m.text = text.to_owned();
        Ok(m)
    }

    /// Puts a message on the poison queue.
    pub async fn send_poison(&self, text: &str) -> Result<(), QueueError> {
        self.put_message(Which::Poison, text, None)
            .await
            .map(|_| ())
    }

    /// Up to `max` (1..=32) messages, each hidden from other receivers for `visibility`
    /// (1 s to 7 days).
    pub async fn receive(
        &self,
        max: u8,
        visibility: Duration,
    ) -> Result<Vec<Received>, QueueError> {
        let n = max.clamp(1, MAX_BATCH).to_string();
        let vis = visibility_secs(visibility).max(1).to_string();
        let path = format!("/{}/messages", self.name(Which::Main));
        let resp = self
            .call(
                Method::GET,
                &path,
                &[("numofmessages", &n), ("visibilitytimeout", &vis)],
                None,
            )
            .await?;
        parse_messages(&read_body(resp).await?)
    }

    /// Up to `max` (1..=32) messages without hiding them (no pop receipt).
    pub async fn peek(&self, poison: bool, max: u8) -> Result<Vec<Received>, QueueError> {
        let n = max.clamp(1, MAX_BATCH).to_string();
        let path = format!("/{}/messages", self.name(which(poison)));
        let resp = self
            .call(
                Method::GET,
                &path,
                &[("numofmessages", &n), ("peekonly", "true")],
                None,
            )
            .await?;
        parse_messages(&read_body(resp).await?)
    }

    /// Deletes a received message. [`QueueError::NotFound`]: its pop receipt is no longer valid
    /// (the lease expired and another worker received it) or it is already gone.
    pub async fn delete(&self, r: &Received) -> Result<(), QueueError> {
        let path = format!("/{}/messages/{}", self.name(Which::Main), r.message_id);
        self.call(
            Method::DELETE,
            &path,
            &[("popreceipt", r.pop_receipt.as_str())],
            None,
        )
        .await
        .map(|_| ())
    }

    /// Hides a received message for `visibility` more (0 to 7 days, clamped), optionally with new
    /// text; returns it with its new pop receipt (the old one no longer works).
    pub async fn update(
        &self,
        r: &Received,
        visibility: Duration,
        new_text: Option<&str>,
    ) -> Result<Received, QueueError> {
        let path = format!("/{}/messages/{}", self.name(Which::Main), r.message_id);
        let vis = visibility_secs(visibility).to_string();
        let body = new_text.map(message_xml);
        let resp = self
            .call(
                Method::PUT,
                &path,
                &[
                    ("popreceipt", r.pop_receipt.as_str()),
                    ("visibilitytimeout", &vis),
                ],
                body,
            )
            .await?;
        let receipt = resp
            .headers()
            .get("x-ms-popreceipt")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| QueueError::Malformed("update answered without x-ms-popreceipt".into()))?
            .to_owned();
        Ok(Received {
            message_id: r.message_id.clone(),
            pop_receipt: receipt,
            dequeue_count: r.dequeue_count,
            inserted_ms: r.inserted_ms,
            text: new_text.map_or_else(|| r.text.clone(), str::to_owned),
        })
    }

    /// The service's approximate message count of the queue or the poison queue.
    pub async fn approximate_count(&self, poison: bool) -> Result<u64, QueueError> {
        let path = format!("/{}", self.name(which(poison)));
        let resp = self
            .call(Method::GET, &path, &[("comp", "metadata")], None)
            .await?;
        let raw = resp
            .headers()
            .get("x-ms-approximate-messages-count")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                QueueError::Malformed("no x-ms-approximate-messages-count header".into())
            })?;
        raw.trim()
            .parse()
            .map_err(|_| QueueError::Malformed(format!("message count {raw:?} is not a number")))
    }

    async fn put_message(
        &self,
        which: Which,
        text: &str,
        visibility: Option<Duration>,
    ) -> Result<String, QueueError> {
        let path = format!("/{}/messages", self.name(which));
        let vis = visibility.map(|v| visibility_secs(v).to_string());
        let mut query: Vec<(&str, &str)> = vec![("messagettl", "-1")];
        if let Some(v) = &vis {
            query.push(("visibilitytimeout", v));
        }
        let resp = self
            .call(Method::POST, &path, &query, Some(message_xml(text)))
            .await?;
        read_body(resp).await
    }

    fn name(&self, which: Which) -> &str {
        match which {
            Which::Main => &self.inner.settings.queue,
            Which::Poison => &self.inner.settings.poison_queue,
        }
    }

    /// One authorized request; a non-2xx answer becomes a [`QueueError`].
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<String>,
    ) -> Result<reqwest::Response, QueueError> {
        let mut url = url::Url::parse(&self.inner.settings.queue_url_base.join(path))
            .map_err(|e| QueueError::Malformed(format!("queue URL: {e}")))?;
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        let date = super::shared_key::request_date().map_err(QueueError::Malformed)?;
        let body_len = body.as_ref().map_or(0, String::len);
        let content_type = if body.is_some() {
            "application/xml"
        } else {
            ""
        };
        let authorization = match &self.inner.auth {
            Auth::SharedKey { account, key } => {
                let key = key
                    .as_ref()
                    .map_err(|e| QueueError::Auth(format!("{e}; check the storage account key")))?;
                let sts = string_to_sign(&SignedRequest {
                    verb: method.as_str(),
                    content_length: body_len,
                    content_type,
                    ms_headers: &[("x-ms-date", &date), ("x-ms-version", API_VERSION)],
                    account,
                    path: url.path(),
                    query,
                });
                format!("SharedKey {account}:{}", key.sign(&sts))
            }
            Auth::Bearer(source) => {
                let token = source.token().await.map_err(|e| {
                    QueueError::Auth(format!("cannot get a token for Azure Storage: {e}"))
                })?;
                format!("Bearer {}", token.expose())
            }
        };
        let auth_value = super::shared_key::authorization_value(&authorization)
            .ok_or_else(|| QueueError::Auth("the credential is not a valid header value".into()))?;
        let mut req = self
            .inner
            .http
            .request(method.clone(), url.clone())
            .header("x-ms-date", &date)
            .header("x-ms-version", API_VERSION)
            .header(reqwest::header::AUTHORIZATION, auth_value);
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
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&method, &url, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.error_from(resp).await)
    }

    async fn error_from(&self, resp: reqwest::Response) -> QueueError {
        let status = resp.status();
        let header_code = resp
            .headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let retry_after = crate::outbound::retry_after(resp.headers());
        let body = resp.text().await.unwrap_or_default();
        let parsed = parse_error(&body);
        let code = header_code
            .or_else(|| parsed.as_ref().and_then(|e| e.code.clone()))
            .unwrap_or_else(|| {
                status
                    .canonical_reason()
                    .unwrap_or("no error code")
                    .to_owned()
            });
        // The first line only: the rest is a request id and a timestamp.
        let message = parsed
            .and_then(|e| e.message)
            .and_then(|m| m.lines().next().map(str::to_owned))
            .unwrap_or_default();
        let detail = if message.is_empty() {
            code.clone()
        } else {
            format!("{code}: {message}")
        };
        match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                QueueError::Throttled { retry_after }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let hint = match self.inner.auth {
                    Auth::SharedKey { .. } => "check the account name and key (connection string)",
                    Auth::Bearer(_) => {
                        "grant the identity Storage Queue Data Message Processor and Storage Queue Data Message Sender on the account (or the queues), and check that the token is for https://storage.azure.com/"
                    }
                };
                QueueError::Auth(format!("{detail}; {hint}"))
            }
            StatusCode::NOT_FOUND => QueueError::NotFound(detail),
            // A stale or foreign pop receipt: for the caller the same as a message taken back.
            StatusCode::BAD_REQUEST if code == "PopReceiptMismatch" => QueueError::NotFound(detail),
            _ => QueueError::Unexpected {
                status: status.as_u16(),
                code,
            },
        }
    }
}

fn which(poison: bool) -> Which {
    if poison { Which::Poison } else { Which::Main }
}

/// Whole seconds, rounded up, at most 7 days.
fn visibility_secs(d: Duration) -> u64 {
    let d = d.min(MAX_VISIBILITY);
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn message_xml(text: &str) -> String {
    // Base64 needs no XML escaping.
    format!(
        "<QueueMessage><MessageText>{}</MessageText></QueueMessage>",
        STANDARD.encode(text.as_bytes())
    )
}

/// The text of a message: base64 of UTF-8 decoded, anything else as it is.
pub fn decode_text(raw: &str) -> String {
    STANDARD
        .decode(raw.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| raw.to_owned())
}

/// Base64 of the UTF-8 text, as sent.
pub fn encode_text(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

fn transport_error(method: &Method, url: &url::Url, e: &reqwest::Error) -> QueueError {
    let what = crate::outbound::transport_error(e);
    // The URL is the endpoint and path only (no credentials are ever in it).
    let mut detail = format!(
        "{method} {}{}: {what}",
        url.origin().ascii_serialization(),
        url.path()
    );
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    QueueError::Unreachable(detail)
}

async fn read_body(resp: reqwest::Response) -> Result<String, QueueError> {
    resp.text()
        .await
        .map_err(|e| QueueError::Unreachable(format!("reading the answer: {e}")))
}

#[derive(Deserialize)]
struct MessagesList {
    #[serde(rename = "QueueMessage", default)]
    messages: Vec<XmlMessage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct XmlMessage {
    message_id: String,
    #[serde(default)]
    insertion_time: Option<String>,
    #[serde(default)]
    pop_receipt: Option<String>,
    #[serde(default)]
    dequeue_count: Option<u32>,
    #[serde(default)]
    message_text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct XmlError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

fn parse_error(body: &str) -> Option<XmlError> {
    if body.trim().is_empty() {
        return None;
    }
    quick_xml::de::from_str(body).ok()
}

/// Parses a `QueueMessagesList` (receive or peek answer).
pub fn parse_messages(xml: &str) -> Result<Vec<Received>, QueueError> {
    let list: MessagesList = quick_xml::de::from_str(xml)
        .map_err(|e| QueueError::Malformed(format!("QueueMessagesList: {e}")))?;
    Ok(list
        .messages
        .into_iter()
        .map(|m| Received {
            message_id: m.message_id,
            pop_receipt: m.pop_receipt.unwrap_or_default(),
            dequeue_count: m.dequeue_count.unwrap_or(0),
            inserted_ms: m.insertion_time.as_deref().and_then(http_date_ms),
            text: decode_text(m.message_text.as_deref().unwrap_or("")),
        })
        .collect())
}

fn http_date_ms(s: &str) -> Option<i64> {
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(s.trim())
        .ok()
        .map(|t| t.as_millisecond())
}

/// The `TableEndpoint` of a connection string, or Azurite's table endpoint for
/// `UseDevelopmentStorage=true`; `None` when it names neither.
pub fn connection_string_table_endpoint(s: &str) -> Option<String> {
    let mut dev = false;
    for part in s.split(';') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        if k.trim().eq_ignore_ascii_case("TableEndpoint") && !v.trim().is_empty() {
            return Some(v.trim().trim_end_matches('/').to_owned());
        }
        if k.trim().eq_ignore_ascii_case("UseDevelopmentStorage")
            && v.trim().eq_ignore_ascii_case("true")
        {
            dev = true;
        }
    }
    dev.then(|| "http://127.0.0.1:10002/devstoreaccount1".to_owned())
}

/// The table endpoint of the account a queue endpoint belongs to: `ACCOUNT.queue.SUFFIX` →
/// `ACCOUNT.table.SUFFIX`, and Azurite's default port 10001 → 10002.
pub fn table_endpoint_for(queue: &EndpointUrl) -> Option<EndpointUrl> {
    let mut u = url::Url::parse(queue.base()).ok()?;
    let host = u.host_str()?.to_owned();
    if let Some((account, rest)) = host.split_once(".queue.") {
        u.set_host(Some(&format!("{account}.table.{rest}"))).ok()?;
    } else if u.port() == Some(10001) {
        u.set_port(Some(10002)).ok()?;
    } else {
        return None;
    }
    EndpointUrl::parse(u.as_str().trim_end_matches('/')).ok()
}

/// Parses an Azure Storage connection string into the queue endpoint, account and key.
///
/// `UseDevelopmentStorage=true` is Azurite (`http://127.0.0.1:10001/devstoreaccount1`, the
/// published development key). Otherwise `AccountName` and `AccountKey` are required;
/// `QueueEndpoint` is used when present, else `https://{account}.queue.{EndpointSuffix}`
/// (`core.windows.net` by default, with `DefaultEndpointsProtocol`, https by default). Errors
/// name the missing or bad part and never repeat the string or the key.
/// Why a connection string cannot be used. The text names the part, never its value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionStringError {
    #[error("connection string: every part must be Name=Value")]
    Shape,
    #[error(
        "connection string: SharedAccessSignature is not supported; use AccountKey or managed identity"
    )]
    SharedAccessSignature,
    #[error("connection string: AccountName is missing")]
    NoAccount,
    #[error("connection string: AccountName must be lower-case letters and digits")]
    BadAccount,
    #[error("connection string: AccountKey is missing")]
    NoKey,
    #[error("connection string: AccountKey is not valid base64")]
    BadKey,
    #[error("connection string: queue endpoint: {0}")]
    Endpoint(#[from] crate::endpoint::EndpointError),
}

pub fn parse_connection_string(
    s: &str,
) -> Result<(EndpointUrl, String, Secret), ConnectionStringError> {
    let mut account = None;
    let mut key = None;
    let mut endpoint = None;
    let mut suffix = None;
    let mut protocol = None;
    let mut dev = false;
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(ConnectionStringError::Shape);
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "usedevelopmentstorage" => dev = value.eq_ignore_ascii_case("true"),
            "accountname" => account = Some(value.to_owned()),
            "accountkey" => key = Some(Secret::new(value)),
            "queueendpoint" => endpoint = Some(value.to_owned()),
            "endpointsuffix" => suffix = Some(value.to_owned()),
            "defaultendpointsprotocol" => protocol = Some(value.to_ascii_lowercase()),
            "sharedaccesssignature" => return Err(ConnectionStringError::SharedAccessSignature),
            _ => {}
        }
    }
    if dev {
        let url = EndpointUrl::parse(DEV_QUEUE_ENDPOINT)?;
        return Ok((url, DEV_ACCOUNT.to_owned(), Secret::new(DEV_ACCOUNT_KEY)));
    }
    let account = account
        .filter(|a| !a.is_empty())
        .ok_or(ConnectionStringError::NoAccount)?;
    if !account
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(ConnectionStringError::BadAccount);
    }
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or(ConnectionStringError::NoKey)?;
    if STANDARD.decode(key.expose()).is_err() {
        return Err(ConnectionStringError::BadKey);
    }
    let raw = match endpoint.filter(|e| !e.is_empty()) {
        Some(e) => e,
        None => {
            let protocol = protocol.unwrap_or_else(|| "https".into());
            let suffix = suffix.unwrap_or_else(|| "core.windows.net".into());
            format!("{protocol}://{account}.queue.{suffix}")
        }
    };
    let url = EndpointUrl::parse(&raw)?;
    Ok((url, account, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Azurite 3.37 (two messages received in one call; the second was written by
    /// another client, not base64, and must still come back).
    const RECEIVED: &str = r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><QueueMessagesList><QueueMessage><MessageId>004a648a-4915-4ed0-95c6-6f378d4987a3</MessageId><InsertionTime>Mon, 23 Nov 2026 22:23:00 GMT</InsertionTime><ExpirationTime>Fri, 31 Dec 9999 23:59:59 GMT</ExpirationTime><PopReceipt>MjNOb3YyMDI2MjI6MjM6MDA5YTFj</PopReceipt><TimeNextVisible>Mon, 23 Nov 2026 22:23:30 GMT</TimeNextVisible><DequeueCount>1</DequeueCount><MessageText>aGVsbG8=</MessageText></QueueMessage><QueueMessage><MessageId>2b12a46d-8255-4659-8958-49749e815ab1</MessageId><InsertionTime>Mon, 23 Nov 2026 22:23:00 GMT</InsertionTime><ExpirationTime>Fri, 31 Dec 9999 23:59:59 GMT</ExpirationTime><PopReceipt>MjNOb3YyMDI2MjI6MjM6MDA5YTFj</PopReceipt><TimeNextVisible>Mon, 23 Nov 2026 22:23:30 GMT</TimeNextVisible><DequeueCount>1</DequeueCount><MessageText>not base64 &amp; raw</MessageText></QueueMessage></QueueMessagesList>"#;

    #[test]
    fn parses_a_captured_message_list() {
        let got = parse_messages(RECEIVED).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].message_id, "004a648a-4915-4ed0-95c6-6f378d4987a3");
        assert_eq!(got[0].pop_receipt, "MjNOb3YyMDI2MjI6MjM6MDA5YTFj");
        assert_eq!(got[0].dequeue_count, 1);
        assert_eq!(got[0].text, "hello");
        let inserted = jiff::Timestamp::from_millisecond(got[0].inserted_ms.unwrap()).unwrap();
        assert_eq!(inserted.to_string(), "2026-11-23T22:23:00Z");
        assert_eq!(got[1].text, "not base64 & raw");
    }

    #[test]
    fn parses_empty_lists_and_peeks() {
        let empty =
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><QueueMessagesList/>"#;
        assert!(parse_messages(empty).unwrap().is_empty());
        let peek = "<QueueMessagesList><QueueMessage><MessageId>m</MessageId><DequeueCount>0</DequeueCount><MessageText>eyJ2IjoxfQ==</MessageText></QueueMessage></QueueMessagesList>";
        let got = parse_messages(peek).unwrap();
        assert_eq!(got[0].pop_receipt, "");
        assert_eq!(got[0].text, r#"{"v":1}"#);
        assert!(matches!(
            parse_messages("<Nope"),
            Err(QueueError::Malformed(_))
        ));
    }

    #[test]
    fn parses_a_storage_error() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n  <Code>MessageNotFound</Code>\n  <Message>The specified message does not exist.\nRequestId:7c6f3a15\nTime:2026-11-23T22:23:00.689Z</Message>\n</Error>";
        let e = parse_error(body).unwrap();
        assert_eq!(e.code.as_deref(), Some("MessageNotFound"));
        assert!(e.message.unwrap().starts_with("The specified message"));
        assert!(parse_error("").is_none());
    }

    #[test]
    fn base64_round_trip_and_raw_fallback() {
        for s in ["", "hello", "{\"a\":\"ü €\"}", "line\nbreak <&>"] {
            assert_eq!(decode_text(&encode_text(s)), s);
        }
        assert!(message_xml("<&>").contains("PCY+"));
        // Valid base64 but not UTF-8: returned as it is.
        assert_eq!(decode_text("//79"), "//79");
        assert_eq!(decode_text("plain text"), "plain text");
    }

    #[test]
    fn visibility_is_rounded_up_and_clamped() {
        assert_eq!(visibility_secs(Duration::from_millis(1500)), 2);
        assert_eq!(visibility_secs(Duration::ZERO), 0);
        assert_eq!(
            visibility_secs(Duration::from_secs(30 * 24 * 3600)),
            7 * 24 * 3600
        );
    }

    #[test]
    fn development_storage_connection_string() {
        let (url, account, key) = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        assert_eq!(url.base(), DEV_QUEUE_ENDPOINT);
        assert_eq!(account, "devstoreaccount1");
        assert_eq!(key.expose(), DEV_ACCOUNT_KEY);
    }

    #[test]
    fn full_connection_strings() {
        let (url, account, key) = parse_connection_string(
            "DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey=c2VjcmV0a2V5;EndpointSuffix=core.usgovcloudapi.net",
        )
        .unwrap();
        assert_eq!(url.base(), "https://acct1.queue.core.usgovcloudapi.net");
        assert_eq!(account, "acct1");
        assert_eq!(key.expose(), "c2VjcmV0a2V5");
        let (url, _, _) = parse_connection_string(
            "AccountName=acct1;AccountKey=c2VjcmV0a2V5;QueueEndpoint=http://127.0.0.1:10001/acct1;",
        )
        .unwrap();
        assert_eq!(url.base(), "http://127.0.0.1:10001/acct1");
        let (url, _, _) =
            parse_connection_string("AccountName=acct1;AccountKey=c2VjcmV0a2V5").unwrap();
        assert_eq!(url.base(), "https://acct1.queue.core.windows.net");
    }

    #[test]
    fn bad_connection_strings_never_echo_the_key() {
        let key = "c2VjcmV0a2V5c2VjcmV0";
        for s in [
            "DefaultEndpointsProtocol=https;AccountName=acct1".to_owned(),
            format!("AccountKey={key}"),
            format!("AccountName=Acct_1;AccountKey={key}"),
            format!("AccountName=acct1;AccountKey={key}*!"),
            format!("DefaultEndpointsProtocol=http;AccountName=acct1;AccountKey={key}"),
            format!("AccountName=acct1;AccountKey={key};QueueEndpoint=not a url"),
            format!("AccountName=acct1;AccountKey={key};SharedAccessSignature=sv=1&sig=x"),
            format!("garbage{key}"),
        ] {
            let e = parse_connection_string(&s).unwrap_err().to_string();
            assert!(!e.contains(key), "{e}");
            assert!(!e.contains("c2VjcmV0"), "{e}");
        }
        assert!(
            parse_connection_string("AccountName=acct1")
                .unwrap_err()
                .to_string()
                .contains("AccountKey is missing")
        );
    }

    #[test]
    fn debug_output_is_secret_free() {
        let auth = StorageAuth::SharedKey {
            account: "acct1".into(),
            key: Secret::new("c2VjcmV0a2V5"),
        };
        let q = AzureQueue::new(
            reqwest::Client::new(),
            AzureQueueSettings {
                queue_url_base: EndpointUrl::parse("https://acct1.queue.core.windows.net").unwrap(),
                queue: "jobs".into(),
                poison_queue: "jobs-poison".into(),
            },
            auth.clone(),
        );
        let shown = format!("{auth:?} {q:?}");
        assert!(!shown.contains("c2VjcmV0a2V5"), "{shown}");
        assert!(shown.contains("acct1"), "{shown}");
    }
}
