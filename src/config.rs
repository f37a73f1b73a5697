//! Settings: one TOML file plus `ACCESSGATE_<SECTION>__<KEY>` environment overrides, parsed into
//! validated types. `accessgate check-config` prints every problem found, not just the first.
//!
//! Invariant: only this module reads the environment for settings.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::directory::graph::DirectoryConfig;
use crate::endpoint::EndpointUrl;
use crate::policy::Policy;
use crate::secret::Secret;
use crate::tickets::servicenow::{RawServiceNow, ServiceNowSettings};

/// First-party app id of entitlement management (protocol.md §4.2).
pub const ELM_APP_ID: &str = "810dcf14-1858-4bf2-8134-4c369fa3235b";
/// First-party app id of Lifecycle Workflows (protocol.md §4.2).
pub const LCW_APP_ID: &str = "ce79fdc4-cd1d-4ea5-8139-e74d7dbe0bb7";
/// The host every Entra PoP token for a Logic App extension is bound to (`u`).
pub const ARM_HOST: &str = "management.azure.com";

/// The validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub identity: IdentityConfig,
    pub inbound: InboundConfig,
    pub credentials: CredentialsConfig,
    pub graph: GraphConfig,
    pub queue: QueueConfig,
    pub worker: WorkerConfig,
    pub policy: Policy,
    pub policy_file: Option<PathBuf>,
    /// How long one decision (directory reads + checks) may take, before the callout's deadline
    /// cuts it shorter (`policy.decision_timeout_seconds`).
    pub decision_timeout: Duration,
    pub directory: DirectoryConfig,
    /// `[servicenow]`: the Table API for ticket checks; `None` when not configured.
    pub servicenow: Option<ServiceNowSettings>,
    /// The custom extensions this deployment serves, keyed by the resource id their PoP tokens
    /// are bound to.
    pub extensions: Vec<Extension>,
    pub capture: CaptureConfig,
    pub log: LogConfig,
    /// Things that do not stop the service but will make work wait (e.g. no managed identity
    /// endpoint): printed by `check-config` and logged at start.
    pub warnings: Vec<ConfigProblem>,
}

/// One custom extension (`[extensions.NAME]`): the Logic App identity Entra binds its PoP tokens
/// to, and what callouts through it may concern.
#[derive(Debug, Clone)]
pub struct Extension {
    pub name: String,
    /// `u`: lower case host (optionally `host:port`).
    pub host: String,
    /// `p` as configured (ARM resource id of the Logic App).
    pub resource: String,
    /// `p` normalised for comparison: slashes trimmed, lower case.
    pub resource_key: String,
    /// Catalogs whose callouts this extension accepts (lower-case GUIDs); empty = any.
    pub catalog_ids: Vec<String>,
    pub policy: Option<Policy>,
    pub policy_file: Option<PathBuf>,
}

impl Extension {
    pub fn serves_catalog(&self, catalog_id: Option<&str>) -> bool {
        self.catalog_ids.is_empty()
            || catalog_id
                .is_some_and(|c| self.catalog_ids.iter().any(|k| k.eq_ignore_ascii_case(c)))
    }
}

/// `p` as Entra and IdentityModel compare it: leading and trailing `/` trimmed, case folded.
/// Percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2), nothing else is: an
/// encoded `/` or a dot segment stays different from the configured id.
pub fn normalize_resource(p: &str) -> String {
    let b = p.trim_matches('/').as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let decoded = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|v| v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~'));
            if let Some(v) = decoded {
                out.push(v.to_ascii_lowercase() as char);
                i += 3;
                continue;
            }
        }
        out.push(b[i].to_ascii_lowercase() as char);
        i += 1;
    }
    out
}

/// How Entra reaches this deployment (ARCHITECTURE.md, ingress modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressMode {
    /// Entra calls accessgate with a PoP-signed request (and, for legacy "Regular" extensions,
    /// a bearer token when `inbound.audiences` is set).
    Direct,
    /// A Logic App validates Entra's PoP and forwards with its managed identity's bearer token.
    Relay,
}

/// Signature algorithms a PoP key may sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PopAlgorithm {
    Rs256,
    Ps256,
    Es256,
}

impl PopAlgorithm {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "RS256" => Some(Self::Rs256),
            "PS256" => Some(Self::Ps256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::Es256 => "ES256",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PopConfig {
    /// `aud` of the inner access token.
    pub audiences: Vec<String>,
    pub algorithms: Vec<PopAlgorithm>,
    /// How long after `ts` a signed request is accepted.
    pub lifetime: Duration,
    /// How far `ts` may lie in the future (clock skew between Entra and us).
    pub future_skew: Duration,
    /// Replay cache bound (entries); when full of live entries, callouts get 503 and Entra retries.
    pub replay_cache_entries: usize,
}

#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// `aud` of the relaying Logic App's managed identity token.
    pub audiences: Vec<String>,
    /// Accepted callers: the managed identity's client (app) id or object id, lower case.
    pub caller_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub authority: EndpointUrl,
    pub tenant_id: uuid::Uuid,
}

#[derive(Debug, Clone)]
pub struct InboundConfig {
    pub mode: IngressMode,
    /// Bearer audiences of legacy ("Regular" token) extensions; empty = bearer refused.
    pub audiences: Vec<String>,
    pub allowed_app_ids: Vec<String>,
    pub clock_skew: Duration,
    pub jwks_refresh_min_interval: Duration,
    pub jwks_max_age: Duration,
    pub pop: PopConfig,
    pub relay: RelayConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphApiVersion {
    V1,
    Beta,
}

impl GraphApiVersion {
    pub fn segment(self) -> &'static str {
        match self {
            Self::V1 => "v1.0",
            Self::Beta => "beta",
        }
    }
}

#[derive(Debug, Clone)]
pub struct GraphConfig {
    pub base_url: EndpointUrl,
    pub api_version: GraphApiVersion,
    pub scope: String,
    pub resume_source: String,
    pub timeout: Duration,
    /// Requests per second this process sends to Graph at most (token bucket, burst the same).
    pub max_requests_per_second: u32,
    /// Consecutive transient failures that open the circuit breaker.
    pub circuit_failure_threshold: u32,
    /// How long an open breaker refuses calls before one probe is let through.
    pub circuit_open: Duration,
}

/// How accessgate proves its identity to Entra for Graph (and Storage) tokens.
#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    pub mode: CredentialMode,
    /// User-assigned managed identity (client id) for the managed-identity token requests;
    /// `None` = system-assigned.
    pub managed_identity_client_id: Option<String>,
    /// The Key Vault token audience of the configured cloud (`https://vault.azure.net`).
    pub key_vault_resource: String,
    pub platform: Platform,
}

/// The credential modes (README "Credentials").
#[derive(Debug, Clone)]
pub enum CredentialMode {
    /// An app registration's client secret, from the config or the environment.
    ClientSecret { client_id: String, secret: Secret },
    /// The App Service / Functions managed identity is the Graph identity.
    ManagedIdentity,
    /// Workload identity federation: a projected token file is the client assertion.
    WorkloadIdentity {
        client_id: String,
        token_file: Option<PathBuf>,
    },
    /// An app registration whose client secret lives in Key Vault (read with the managed identity).
    KeyVaultSecret {
        client_id: String,
        vault: EndpointUrl,
        secret_name: String,
    },
    /// An app registration with a certificate in Key Vault: RFC 7523 client assertion.
    KeyVaultCertificate {
        client_id: String,
        vault: EndpointUrl,
        certificate_name: String,
        sign_with: SignWith,
    },
}

impl CredentialMode {
    pub fn name(&self) -> &'static str {
        match self {
            Self::ClientSecret { .. } => "client_secret",
            Self::ManagedIdentity => "managed_identity",
            Self::WorkloadIdentity { .. } => "workload_identity",
            Self::KeyVaultSecret { .. } => "key_vault_secret",
            Self::KeyVaultCertificate { .. } => "key_vault_certificate",
        }
    }
    /// The Key Vault of the Key Vault modes (where other secrets, such as ServiceNow's, live).
    pub fn vault(&self) -> Option<&EndpointUrl> {
        match self {
            Self::KeyVaultSecret { vault, .. } | Self::KeyVaultCertificate { vault, .. } => {
                Some(vault)
            }
            _ => None,
        }
    }
    /// The app registration's client id, for the modes that have one.
    pub fn client_id(&self) -> Option<&str> {
        match self {
            Self::ClientSecret { client_id, .. }
            | Self::WorkloadIdentity { client_id, .. }
            | Self::KeyVaultSecret { client_id, .. }
            | Self::KeyVaultCertificate { client_id, .. } => Some(client_id),
            Self::ManagedIdentity => None,
        }
    }
    pub fn uses_managed_identity(&self) -> bool {
        matches!(
            self,
            Self::ManagedIdentity | Self::KeyVaultSecret { .. } | Self::KeyVaultCertificate { .. }
        )
    }
}

/// Where a client assertion is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignWith {
    /// With the certificate's private key, read from Key Vault (the key must be exportable).
    Local,
    /// By Key Vault's `sign` operation: the private key never leaves the vault.
    KeyVault,
}

/// What the hosting platform tells us through its environment.
#[derive(Debug, Clone, Default)]
pub struct Platform {
    /// `IDENTITY_ENDPOINT` (App Service / Functions managed identity).
    pub identity_endpoint: Option<EndpointUrl>,
    /// `IDENTITY_HEADER`: the managed identity endpoint's shared secret.
    pub identity_header: Option<Secret>,
}

/// Where jobs wait between the `202` and the worker.
#[derive(Debug, Clone)]
pub enum QueueConfig {
    /// The embedded SQLite queue in `server.data_dir` (one process).
    Sqlite,
    /// An Azure Storage queue shared by several `accessgate serve` instances.
    AzureStorage(Box<AzureQueueConfig>),
}

#[derive(Debug, Clone)]
pub struct AzureQueueConfig {
    /// The account's queue endpoint, e.g. `https://acct.queue.core.windows.net`.
    pub endpoint: EndpointUrl,
    pub auth: StorageAuthConfig,
    pub name: String,
    pub poison_name: String,
    /// Deliveries that ended without a recorded attempt (the worker died or could not read the
    /// message) before the message is moved to the poison queue.
    pub max_unhandled_deliveries: u32,
    /// The account's table endpoint, for the index of parked jobs.
    pub table_endpoint: EndpointUrl,
    pub wait_table: String,
    /// A parked message hides at most this long before it checks for a missed wake.
    pub wait_recheck: Duration,
}

#[derive(Debug, Clone)]
pub enum StorageAuthConfig {
    /// Account key from a connection string (Azurite, or where Entra auth is not possible).
    SharedKey { account: String, key: Secret },
    /// An Entra token for `https://storage.azure.com/`: the managed identity's when the host has
    /// one, else the app registration's.
    Entra,
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub deadline_margin: Duration,
    pub default_callback_timeout: Duration,
    pub lease: Duration,
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub enabled: bool,
    pub dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// Everything wrong with a configuration, each with the setting it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub setting: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

// ---- raw, as written ------------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Option<String>,
    data_dir: Option<String>,
    max_body_bytes: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawIdentity {
    cloud: Option<String>,
    authority: Option<String>,
    tenant_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawInbound {
    mode: Option<String>,
    audiences: Option<Vec<String>>,
    allowed_app_ids: Option<Vec<String>>,
    clock_skew_seconds: Option<u64>,
    jwks_refresh_min_interval_seconds: Option<u64>,
    jwks_max_age_seconds: Option<u64>,
    pop_audiences: Option<Vec<String>>,
    pop_algorithms: Option<Vec<String>>,
    pop_lifetime_seconds: Option<u64>,
    pop_future_skew_seconds: Option<u64>,
    replay_cache_entries: Option<u64>,
    relay_audiences: Option<Vec<String>>,
    relay_caller_ids: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawExtension {
    resource: Option<String>,
    host: Option<String>,
    catalog_ids: Option<Vec<String>>,
    policy_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawGraph {
    base_url: Option<String>,
    api_version: Option<String>,
    scope: Option<String>,
    /// Moved to `[credentials]`; kept only to say so.
    client_id: Option<toml::Value>,
    client_secret: Option<toml::Value>,
    resume_source: Option<String>,
    timeout_seconds: Option<u64>,
    max_requests_per_second: Option<u64>,
    circuit_failure_threshold: Option<u64>,
    circuit_open_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCredentials {
    mode: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    managed_identity_client_id: Option<String>,
    federated_token_file: Option<String>,
    key_vault_url: Option<String>,
    secret_name: Option<String>,
    certificate_name: Option<String>,
    sign_with: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    backend: Option<String>,
    connection_string: Option<Secret>,
    account_url: Option<String>,
    name: Option<String>,
    poison_name: Option<String>,
    max_unhandled_deliveries: Option<u64>,
    table_endpoint: Option<String>,
    wait_table: Option<String>,
    wait_recheck_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawWorker {
    concurrency: Option<u64>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    deadline_margin_seconds: Option<u64>,
    default_callback_timeout: Option<String>,
    lease_seconds: Option<u64>,
    poll_interval_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPolicy {
    file: Option<String>,
    decision_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDirectory {
    external_entitlements_attribute: Option<String>,
    max_graph_calls_per_decision: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawCapture {
    enabled: Option<bool>,
    dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

const SECTIONS: &[&str] = &[
    "server",
    "identity",
    "inbound",
    "extensions",
    "credentials",
    "graph",
    "queue",
    "worker",
    "policy",
    "directory",
    "servicenow",
    "capture",
    "log",
];

/// A national cloud: the identity and Graph hosts that belong together.
struct Cloud {
    authority: &'static str,
    graph: &'static str,
    key_vault: &'static str,
}

fn cloud(name: &str) -> Option<Cloud> {
    let c = match name {
        "global" => Cloud {
            authority: "https://login.microsoftonline.com",
            graph: "https://graph.microsoft.com",
            key_vault: "https://vault.azure.net",
        },
        "usgov" => Cloud {
            authority: "https://login.microsoftonline.us",
            graph: "https://graph.microsoft.us",
            key_vault: "https://vault.usgovcloudapi.net",
        },
        "usgov-dod" => Cloud {
            authority: "https://login.microsoftonline.us",
            graph: "https://dod-graph.microsoft.us",
            key_vault: "https://vault.usgovcloudapi.net",
        },
        "china" => Cloud {
            authority: "https://login.chinacloudapi.cn",
            graph: "https://microsoftgraph.chinacloudapi.cn",
            key_vault: "https://vault.azure.cn",
        },
        _ => return None,
    };
    Some(c)
}

/// Loads a config file (optional) and applies environment overrides.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("ACCESSGATE_") || PLATFORM_ENV.contains(&k.as_str()))
        .collect();
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|e| {
            ConfigErrors(vec![ConfigProblem {
                setting: "--config".into(),
                message: format!("cannot read {}: {e}", p.display()),
            }])
        })?,
        None => String::new(),
    };
    let base_dir = path
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    from_sources(&text, &env, &base_dir)
}

/// Parses TOML text plus `ACCESSGATE_*` overrides; relative paths resolve against `base_dir`.
pub fn from_sources(
    toml_text: &str,
    env: &BTreeMap<String, String>,
    base_dir: &Path,
) -> Result<Config, ConfigErrors> {
    let mut problems = Vec::new();
    let mut root: toml::Table = match toml_text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigProblem {
                setting: "config file".into(),
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    apply_env(&mut root, env, &mut problems);
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            problems.push(ConfigProblem {
                setting: key.clone(),
                message: format!("unknown section; known sections: {}", SECTIONS.join(", ")),
            });
        }
    }

    let server: RawServer = section(&root, "server", &mut problems);
    let identity: RawIdentity = section(&root, "identity", &mut problems);
    let inbound: RawInbound = section(&root, "inbound", &mut problems);
    let raw_extensions: BTreeMap<String, RawExtension> =
        section(&root, "extensions", &mut problems);
    let credentials: RawCredentials = section(&root, "credentials", &mut problems);
    let graph: RawGraph = section(&root, "graph", &mut problems);
    let queue: RawQueue = section(&root, "queue", &mut problems);
    let worker: RawWorker = section(&root, "worker", &mut problems);
    let policy: RawPolicy = section(&root, "policy", &mut problems);
    let directory: RawDirectory = section(&root, "directory", &mut problems);
    let servicenow_raw: Option<RawServiceNow> = root
        .contains_key("servicenow")
        .then(|| section(&root, "servicenow", &mut problems));
    let capture: RawCapture = section(&root, "capture", &mut problems);
    let log: RawLog = section(&root, "log", &mut problems);

    let mut warnings = Vec::new();
    let mut p = Problems(&mut problems);

    // server
    let listen = p.check(
        "server.listen",
        server
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:8080")
            .parse::<SocketAddr>()
            .map_err(|e| format!("not an address:port ({e})")),
    );
    let data_dir = resolve(base_dir, server.data_dir.as_deref().unwrap_or("data"));
    let max_body_bytes = server.max_body_bytes.unwrap_or(1024 * 1024);
    if !(1024..=16 * 1024 * 1024).contains(&max_body_bytes) {
        p.push("server.max_body_bytes", "must be between 1024 and 16777216");
    }

    // identity
    let cloud_name = identity.cloud.as_deref().unwrap_or("global");
    let cloud = cloud(cloud_name);
    if cloud.is_none() {
        p.push(
            "identity.cloud",
            "must be one of global, usgov, usgov-dod, china",
        );
    }
    let default_authority = cloud
        .as_ref()
        .map_or("https://login.microsoftonline.com", |c| c.authority);
    let default_graph = cloud
        .as_ref()
        .map_or("https://graph.microsoft.com", |c| c.graph);
    let authority = p.check(
        "identity.authority",
        EndpointUrl::parse(identity.authority.as_deref().unwrap_or(default_authority))
            .map_err(|e| e.to_string()),
    );
    let tenant_id = match identity.tenant_id.as_deref() {
        None | Some("") => {
            p.push(
                "identity.tenant_id",
                "required: the directory (tenant) id that sends the callouts",
            );
            None
        }
        Some(t) => p.check(
            "identity.tenant_id",
            uuid::Uuid::parse_str(t)
                .map_err(|_| "must be a GUID (directory id), not a domain name".to_string()),
        ),
    };

    // inbound
    let mode = match inbound.mode.as_deref().unwrap_or("direct") {
        "direct" => IngressMode::Direct,
        "relay" => IngressMode::Relay,
        _ => {
            p.push("inbound.mode", "must be direct or relay");
            IngressMode::Direct
        }
    };
    let audiences = inbound.audiences.unwrap_or_default();
    if audiences.iter().any(|a| a.trim().is_empty()) {
        p.push("inbound.audiences", "must not contain empty values");
    }
    let allowed_app_ids = inbound
        .allowed_app_ids
        .unwrap_or_else(|| vec![ELM_APP_ID.to_string(), LCW_APP_ID.to_string()]);
    if allowed_app_ids.is_empty() {
        p.push(
            "inbound.allowed_app_ids",
            "must name at least one caller app id",
        );
    }
    for id in &allowed_app_ids {
        if uuid::Uuid::parse_str(id).is_err() {
            p.push("inbound.allowed_app_ids", &format!("{id:?} is not a GUID"));
        }
    }
    let clock_skew = Duration::from_secs(inbound.clock_skew_seconds.unwrap_or(60));
    if clock_skew > Duration::from_secs(300) {
        p.push("inbound.clock_skew_seconds", "at most 300");
    }
    let jwks_refresh_min_interval =
        Duration::from_secs(inbound.jwks_refresh_min_interval_seconds.unwrap_or(60));
    if jwks_refresh_min_interval < Duration::from_secs(10) {
        p.push(
            "inbound.jwks_refresh_min_interval_seconds",
            "at least 10: it bounds how often forged key ids can make us call the identity host",
        );
    }
    let jwks_max_age = Duration::from_secs(inbound.jwks_max_age_seconds.unwrap_or(24 * 3600));
    let pop_audiences = inbound.pop_audiences.unwrap_or_else(|| {
        vec![
            "https://management.azure.com".into(),
            "https://management.azure.com/".into(),
        ]
    });
    if pop_audiences.is_empty() || pop_audiences.iter().any(|a| a.trim().is_empty()) {
        p.push(
            "inbound.pop_audiences",
            "must name at least one audience (Entra uses https://management.azure.com)",
        );
    }
    let mut algorithms = Vec::new();
    for a in inbound
        .pop_algorithms
        .unwrap_or_else(|| vec!["RS256".into(), "PS256".into()])
    {
        match PopAlgorithm::parse(&a) {
            Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
            Some(_) => {}
            None => p.push(
                "inbound.pop_algorithms",
                &format!("{a:?} is not allowed: choose from RS256, PS256, ES256 (none, HMAC and others are never accepted)"),
            ),
        }
    }
    if algorithms.is_empty() {
        p.push("inbound.pop_algorithms", "must name at least one algorithm");
    }
    let pop_lifetime = Duration::from_secs(inbound.pop_lifetime_seconds.unwrap_or(300));
    if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&pop_lifetime) {
        p.push(
            "inbound.pop_lifetime_seconds",
            "must be between 10 and 3600",
        );
    }
    let pop_future_skew = Duration::from_secs(inbound.pop_future_skew_seconds.unwrap_or(60));
    if pop_future_skew > Duration::from_secs(600) {
        p.push("inbound.pop_future_skew_seconds", "at most 600");
    }
    let replay_cache_entries = inbound.replay_cache_entries.unwrap_or(200_000);
    if !(1000..=10_000_000).contains(&replay_cache_entries) {
        p.push(
            "inbound.replay_cache_entries",
            "must be between 1000 and 10000000",
        );
    }
    let relay_audiences = inbound.relay_audiences.unwrap_or_default();
    let relay_caller_ids: Vec<String> = inbound
        .relay_caller_ids
        .unwrap_or_default()
        .iter()
        .map(|s| s.to_ascii_lowercase())
        .collect();
    for id in &relay_caller_ids {
        if uuid::Uuid::parse_str(id).is_err() {
            p.push(
                "inbound.relay_caller_ids",
                &format!(
                    "{id:?} is not a GUID (use the managed identity's client id or object id)"
                ),
            );
        }
    }

    // extensions
    let mut extensions: Vec<Extension> = Vec::new();
    for (name, raw) in &raw_extensions {
        let setting = |k: &str| format!("extensions.{name}.{k}");
        let resource = raw.resource.clone().unwrap_or_default();
        if let Err(m) = check_resource(&resource) {
            p.push(&setting("resource"), &m);
        }
        let host = raw
            .host
            .clone()
            .unwrap_or_else(|| ARM_HOST.into())
            .to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', ' ', '@', '?', '#']) {
            p.push(
                &setting("host"),
                "must be a host name (optionally host:port)",
            );
        }
        let mut catalog_ids = Vec::new();
        for c in raw.catalog_ids.clone().unwrap_or_default() {
            match uuid::Uuid::parse_str(&c) {
                Ok(u) => catalog_ids.push(u.to_string()),
                Err(_) => p.push(&setting("catalog_ids"), &format!("{c:?} is not a GUID")),
            }
        }
        let policy_file = raw.policy_file.as_deref().map(|f| resolve(base_dir, f));
        let policy = match &policy_file {
            None => None,
            Some(f) => match Policy::load(f) {
                Ok(pol) => Some(pol),
                Err(errs) => {
                    for e in errs {
                        p.push(&setting("policy_file"), &e);
                    }
                    None
                }
            },
        };
        let resource_key = normalize_resource(&resource);
        if extensions
            .iter()
            .any(|e| e.resource_key == resource_key && e.host == host)
        {
            p.push(
                &setting("resource"),
                "another extension has the same host and resource: the p claim could not select one",
            );
        }
        extensions.push(Extension {
            name: name.clone(),
            host,
            resource,
            resource_key,
            catalog_ids,
            policy,
            policy_file,
        });
    }
    match mode {
        IngressMode::Direct if extensions.is_empty() && audiences.is_empty() => p.push(
            "extensions",
            "direct mode needs at least one [extensions.NAME] with the resource id of the Logic App that Entra's PoP tokens are bound to (or inbound.audiences for legacy bearer extensions)",
        ),
        IngressMode::Relay if relay_audiences.is_empty() || relay_caller_ids.is_empty() => p.push(
            "inbound.relay_audiences",
            "relay mode needs inbound.relay_audiences (the audience the relaying Logic App requests) and inbound.relay_caller_ids (its managed identity's client or object id)",
        ),
        _ => {}
    }

    // graph
    let base_url = p.check(
        "graph.base_url",
        EndpointUrl::parse(graph.base_url.as_deref().unwrap_or(default_graph))
            .map_err(|e| e.to_string()),
    );
    let api_version = match graph.api_version.as_deref().unwrap_or("v1.0") {
        "v1.0" => GraphApiVersion::V1,
        "beta" => GraphApiVersion::Beta,
        _ => {
            p.push("graph.api_version", "must be v1.0 or beta");
            GraphApiVersion::V1
        }
    };
    let scope = graph
        .scope
        .unwrap_or_else(|| format!("{default_graph}/.default"));
    if !scope.ends_with("/.default") {
        p.push(
            "graph.scope",
            "must end with /.default (client credentials flow)",
        );
    }
    for (moved, value) in [
        ("client_id", &graph.client_id),
        ("client_secret", &graph.client_secret),
    ] {
        if value.is_some() {
            p.push(
                &format!("graph.{moved}"),
                &format!(
                    "moved to credentials.{moved} (with credentials.mode = \"client_secret\")"
                ),
            );
        }
    }
    let max_requests_per_second = graph.max_requests_per_second.unwrap_or(20);
    if !(1..=1000).contains(&max_requests_per_second) {
        p.push(
            "graph.max_requests_per_second",
            "must be between 1 and 1000",
        );
    }
    let circuit_failure_threshold = graph.circuit_failure_threshold.unwrap_or(5);
    if !(1..=1000).contains(&circuit_failure_threshold) {
        p.push(
            "graph.circuit_failure_threshold",
            "must be between 1 and 1000",
        );
    }
    let circuit_open = Duration::from_secs(graph.circuit_open_seconds.unwrap_or(30));
    if circuit_open.is_zero() || circuit_open > Duration::from_secs(600) {
        p.push("graph.circuit_open_seconds", "must be between 1 and 600");
    }
    let resume_source = graph.resume_source.unwrap_or_else(|| "accessgate".into());
    let timeout = Duration::from_secs(graph.timeout_seconds.unwrap_or(10));
    if timeout.is_zero() || timeout > Duration::from_secs(120) {
        p.push("graph.timeout_seconds", "must be between 1 and 120");
    }

    // credentials
    let key_vault_resource = cloud
        .as_ref()
        .map_or("https://vault.azure.net", |c| c.key_vault)
        .to_owned();
    let credentials_cfg = parse_credentials(
        credentials,
        env,
        base_dir,
        key_vault_resource,
        &mut p,
        &mut warnings,
    );

    // queue
    let queue_cfg = parse_queue(queue, &mut p);

    // worker
    let concurrency = worker.concurrency.unwrap_or(4);
    if !(1..=256).contains(&concurrency) {
        p.push("worker.concurrency", "must be between 1 and 256");
    }
    let retry_base = Duration::from_millis(worker.retry_base_ms.unwrap_or(1000));
    let retry_max = Duration::from_millis(worker.retry_max_ms.unwrap_or(300_000));
    if retry_base.is_zero() || retry_base > retry_max {
        p.push(
            "worker.retry_base_ms",
            "must be > 0 and <= worker.retry_max_ms",
        );
    }
    let deadline_margin = Duration::from_secs(worker.deadline_margin_seconds.unwrap_or(60));
    let default_callback_timeout = p
        .check(
            "worker.default_callback_timeout",
            crate::callout::parse_iso_duration(
                worker.default_callback_timeout.as_deref().unwrap_or("PT1H"),
            )
            .ok_or_else(|| "not an ISO 8601 duration such as PT1H or P1D".to_string()),
        )
        .unwrap_or(Duration::from_secs(3600));
    let lease = Duration::from_secs(worker.lease_seconds.unwrap_or(120));
    // One attempt can take a token request, the resume and a status read: a shorter lease would
    // let a second worker take the job while the first still runs it.
    let min_lease = timeout.saturating_mul(3) + Duration::from_secs(5);
    if lease < min_lease {
        p.push(
            "worker.lease_seconds",
            &format!(
                "at least {} s (3 x graph.timeout_seconds + 5)",
                min_lease.as_secs()
            ),
        );
    }
    let poll_interval = Duration::from_millis(worker.poll_interval_ms.unwrap_or(200));
    if poll_interval < Duration::from_millis(10) {
        p.push("worker.poll_interval_ms", "at least 10");
    }

    // policy
    let policy_file = policy.file.as_deref().map(|f| resolve(base_dir, f));
    let loaded_policy = match &policy_file {
        None => Policy::default(),
        Some(f) => match Policy::load(f) {
            Ok(pol) => pol,
            Err(errs) => {
                for e in errs {
                    p.push("policy.file", &e);
                }
                Policy::default()
            }
        },
    };

    let decision_timeout = Duration::from_secs(policy.decision_timeout_seconds.unwrap_or(30));
    if !(1..=600).contains(&decision_timeout.as_secs()) {
        p.push(
            "policy.decision_timeout_seconds",
            "must be between 1 and 600",
        );
    }

    // directory
    let external_entitlements_attribute = directory
        .external_entitlements_attribute
        .filter(|a| !a.trim().is_empty());
    if let Some(a) = &external_entitlements_attribute
        && !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        p.push(
            "directory.external_entitlements_attribute",
            "must be a Graph property name (letters, digits, _), e.g. extension_<appId>_entitlements",
        );
    }
    let max_graph_calls = directory.max_graph_calls_per_decision.unwrap_or(10);
    if !(1..=100).contains(&max_graph_calls) {
        p.push(
            "directory.max_graph_calls_per_decision",
            "must be between 1 and 100",
        );
    }
    let directory_cfg = DirectoryConfig {
        external_entitlements_attribute,
        max_graph_calls_per_decision: max_graph_calls as u32,
    };

    // servicenow
    let servicenow = match servicenow_raw.map(ServiceNowSettings::parse) {
        None => None,
        Some(Ok(s)) => {
            if s.uses_key_vault() && credentials_cfg.mode.vault().is_none() {
                p.push(
                    "servicenow",
                    "a *_secret setting names a Key Vault secret, but there is no vault: use credentials.mode key_vault_secret or key_vault_certificate with credentials.key_vault_url, or set the value through ACCESSGATE_SERVICENOW__PASSWORD / __CLIENT_SECRET",
                );
            }
            Some(s)
        }
        Some(Err(errs)) => {
            for (setting, message) in errs {
                p.push(&setting, &message);
            }
            None
        }
    };
    if servicenow.is_none() && loaded_policy.uses_check_type("servicenow_ticket") {
        warnings.push(ConfigProblem {
            setting: "servicenow".into(),
            message: "the policy has a servicenow_ticket check but [servicenow] is not configured: that check will error".into(),
        });
    }

    // capture
    let capture = CaptureConfig {
        enabled: capture.enabled.unwrap_or(false),
        dir: capture
            .dir
            .as_deref()
            .map_or_else(|| data_dir.join("capture"), |d| resolve(base_dir, d)),
    };

    // log
    let format = match log.format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        _ => {
            p.push("log.format", "must be text or json");
            LogFormat::Text
        }
    };
    let level = log.level.unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        p.push(
            "log.level",
            "not a valid filter such as info or accessgate=debug",
        );
    }

    match (listen, authority, tenant_id, base_url) {
        (Some(listen), Some(authority), Some(tenant_id), Some(base_url)) if problems.is_empty() => {
            Ok(Config {
                server: ServerConfig {
                    listen,
                    data_dir,
                    max_body_bytes: max_body_bytes as usize,
                },
                identity: IdentityConfig {
                    authority,
                    tenant_id,
                },
                inbound: InboundConfig {
                    mode,
                    audiences,
                    allowed_app_ids,
                    clock_skew,
                    jwks_refresh_min_interval,
                    jwks_max_age,
                    pop: PopConfig {
                        audiences: pop_audiences,
                        algorithms,
                        lifetime: pop_lifetime,
                        future_skew: pop_future_skew,
                        replay_cache_entries: replay_cache_entries as usize,
                    },
                    relay: RelayConfig {
                        audiences: relay_audiences,
                        caller_ids: relay_caller_ids,
                    },
                },
                credentials: credentials_cfg,
                graph: GraphConfig {
                    base_url,
                    api_version,
                    scope,
                    resume_source,
                    timeout,
                    max_requests_per_second: max_requests_per_second as u32,
                    circuit_failure_threshold: circuit_failure_threshold as u32,
                    circuit_open,
                },
                queue: queue_cfg,
                worker: WorkerConfig {
                    concurrency: concurrency as usize,
                    retry_base,
                    retry_max,
                    deadline_margin,
                    default_callback_timeout,
                    lease,
                    poll_interval,
                },
                policy: loaded_policy,
                policy_file,
                decision_timeout,
                directory: directory_cfg,
                servicenow,
                extensions,
                capture,
                log: LogConfig { format, level },
                warnings,
            })
        }
        _ => Err(ConfigErrors(problems)),
    }
}

/// Platform variables (set by App Service / Functions / AKS, not by the operator) that the
/// credential modes read.
const PLATFORM_ENV: &[&str] = &[
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_CLIENT_ID",
];

fn guid_setting(
    p: &mut Problems<'_>,
    setting: &str,
    v: Option<&str>,
    what: &str,
) -> Option<String> {
    match v {
        None | Some("") => None,
        Some(v) => match uuid::Uuid::parse_str(v) {
            Ok(u) => Some(u.to_string()),
            Err(_) => {
                p.push(setting, &format!("must be a GUID ({what})"));
                None
            }
        },
    }
}

fn parse_credentials(
    raw: RawCredentials,
    env: &BTreeMap<String, String>,
    base_dir: &Path,
    key_vault_resource: String,
    p: &mut Problems<'_>,
    warnings: &mut Vec<ConfigProblem>,
) -> CredentialsConfig {
    let identity_endpoint = match env.get("IDENTITY_ENDPOINT").map(String::as_str) {
        None | Some("") => None,
        Some(v) => match EndpointUrl::parse(v) {
            Ok(u) => Some(u),
            Err(e) => {
                p.push(
                    "IDENTITY_ENDPOINT",
                    &format!("the managed identity endpoint is not usable: {e}"),
                );
                None
            }
        },
    };
    let platform = Platform {
        identity_endpoint,
        identity_header: env
            .get("IDENTITY_HEADER")
            .filter(|v| !v.is_empty())
            .map(|v| Secret::new(v.clone())),
    };
    let mi_client_id = guid_setting(
        p,
        "credentials.managed_identity_client_id",
        raw.managed_identity_client_id.as_deref(),
        "the client id of a user-assigned managed identity",
    );
    let client_id = || {
        raw.client_id
            .clone()
            .or_else(|| env.get("AZURE_CLIENT_ID").cloned())
    };
    let require_client_id = |p: &mut Problems<'_>| -> String {
        guid_setting(
            p,
            "credentials.client_id",
            client_id().as_deref(),
            "the application (client) id of the app registration accessgate uses for Graph",
        )
        .unwrap_or_else(|| {
            if client_id().unwrap_or_default().is_empty() {
                p.push(
                    "credentials.client_id",
                    "required for this credentials.mode: the application (client) id of the app registration",
                );
            }
            String::new()
        })
    };
    let vault = |p: &mut Problems<'_>| -> Option<EndpointUrl> {
        match raw.key_vault_url.as_deref() {
            None | Some("") => {
                p.push(
                    "credentials.key_vault_url",
                    "required for this credentials.mode: the vault URL, e.g. https://myvault.vault.azure.net",
                );
                None
            }
            Some(v) => p.check(
                "credentials.key_vault_url",
                EndpointUrl::parse(v).map_err(|e| e.to_string()),
            ),
        }
    };
    let name = |p: &mut Problems<'_>, setting: &str, v: &Option<String>| -> String {
        let v = v.clone().unwrap_or_default();
        // Key Vault object names: 1-127 of letters, digits and dashes.
        if v.is_empty()
            || v.len() > 127
            || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            p.push(
                setting,
                "required for this credentials.mode: a Key Vault object name (letters, digits, dashes)",
            );
        }
        v
    };
    let mode_name = raw.mode.as_deref().unwrap_or("client_secret");
    let mode = match mode_name {
        "client_secret" => {
            let client_id = require_client_id(p);
            let secret = raw.client_secret.clone().unwrap_or_default();
            if secret.is_empty() {
                p.push(
                    "credentials.client_secret",
                    "required in client_secret mode: set it with ACCESSGATE_CREDENTIALS__CLIENT_SECRET rather than in the file (or keep it in Key Vault: credentials.mode = \"key_vault_secret\")",
                );
            }
            CredentialMode::ClientSecret { client_id, secret }
        }
        "managed_identity" => CredentialMode::ManagedIdentity,
        "workload_identity" => {
            let client_id = require_client_id(p);
            let token_file = raw
                .federated_token_file
                .clone()
                .or_else(|| env.get("AZURE_FEDERATED_TOKEN_FILE").cloned())
                .filter(|f| !f.is_empty())
                .map(|f| resolve(base_dir, &f));
            if token_file.is_none() {
                warnings.push(ConfigProblem {
                    setting: "credentials.federated_token_file".into(),
                    message: "AZURE_FEDERATED_TOKEN_FILE is not set: enable workload identity on the pod (label azure.workload.identity/use: \"true\") or set this setting; Graph calls wait until then".into(),
                });
            }
            CredentialMode::WorkloadIdentity {
                client_id,
                token_file,
            }
        }
        "key_vault_secret" => {
            let client_id = require_client_id(p);
            let v = vault(p);
            let secret_name = name(p, "credentials.secret_name", &raw.secret_name);
            match v {
                Some(vault) => CredentialMode::KeyVaultSecret {
                    client_id,
                    vault,
                    secret_name,
                },
                None => CredentialMode::ManagedIdentity,
            }
        }
        "key_vault_certificate" => {
            let client_id = require_client_id(p);
            let v = vault(p);
            let certificate_name = name(p, "credentials.certificate_name", &raw.certificate_name);
            let sign_with = match raw.sign_with.as_deref().unwrap_or("key_vault") {
                "key_vault" => SignWith::KeyVault,
                "local" => SignWith::Local,
                _ => {
                    p.push("credentials.sign_with", "must be key_vault or local");
                    SignWith::KeyVault
                }
            };
            match v {
                Some(vault) => CredentialMode::KeyVaultCertificate {
                    client_id,
                    vault,
                    certificate_name,
                    sign_with,
                },
                None => CredentialMode::ManagedIdentity,
            }
        }
        _ => {
            p.push(
                "credentials.mode",
                "must be one of client_secret, managed_identity, workload_identity, key_vault_secret, key_vault_certificate",
            );
            CredentialMode::ManagedIdentity
        }
    };
    if mode_name != "client_secret" && raw.client_secret.is_some() {
        p.push(
            "credentials.client_secret",
            &format!("not used in {mode_name} mode: remove it"),
        );
    }
    if mode.uses_managed_identity() && platform.identity_endpoint.is_none() {
        warnings.push(ConfigProblem {
            setting: "IDENTITY_ENDPOINT".into(),
            message: format!(
                "credentials.mode = {mode_name} needs the managed identity, but IDENTITY_ENDPOINT is not set: turn on the managed identity of the Function App / App Service; callouts are acknowledged and wait in the queue until then"
            ),
        });
    }
    CredentialsConfig {
        mode,
        managed_identity_client_id: mi_client_id,
        key_vault_resource,
        platform,
    }
}

/// Storage queue names: 3-63 lower-case letters, digits and single dashes.
fn valid_queue_name(n: &str) -> bool {
    (3..=63).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

fn valid_table_name(n: &str) -> bool {
    (3..=63).contains(&n.len())
        && n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.chars().all(|c| c.is_ascii_alphanumeric())
}

fn parse_queue(raw: RawQueue, p: &mut Problems<'_>) -> QueueConfig {
    match raw.backend.as_deref().unwrap_or("sqlite") {
        "sqlite" => {
            if raw.connection_string.is_some() || raw.account_url.is_some() {
                p.push(
                    "queue.backend",
                    "queue.connection_string / queue.account_url are set but queue.backend is sqlite: set backend = \"azure_storage\"",
                );
            }
            QueueConfig::Sqlite
        }
        "azure_storage" => {
            let name = raw.name.unwrap_or_else(|| "accessgate-jobs".into());
            if !valid_queue_name(&name) {
                p.push(
                    "queue.name",
                    "3-63 lower-case letters, digits and single dashes",
                );
            }
            let poison_name = raw.poison_name.unwrap_or_else(|| format!("{name}-poison"));
            if !valid_queue_name(&poison_name) || poison_name == name {
                p.push(
                    "queue.poison_name",
                    "3-63 lower-case letters, digits and single dashes, not the queue itself",
                );
            }
            let max_unhandled_deliveries = raw.max_unhandled_deliveries.unwrap_or(5);
            if !(1..=100).contains(&max_unhandled_deliveries) {
                p.push(
                    "queue.max_unhandled_deliveries",
                    "must be between 1 and 100",
                );
            }
            let wait_table = raw.wait_table.unwrap_or_else(|| "accessgatewaits".into());
            if !valid_table_name(&wait_table) {
                p.push(
                    "queue.wait_table",
                    "3-63 letters and digits, starting with a letter",
                );
            }
            let recheck = raw.wait_recheck_seconds.unwrap_or(3600);
            if !(10..=7 * 24 * 3600).contains(&recheck) {
                p.push(
                    "queue.wait_recheck_seconds",
                    "must be between 10 and 604800 (7 days, the longest a message can hide)",
                );
            }
            let mut cs_table = None;
            let target = match (raw.connection_string, raw.account_url) {
                (Some(cs), None) => {
                    cs_table = crate::queue::azure::connection_string_table_endpoint(cs.expose());
                    match crate::queue::azure::parse_connection_string(cs.expose()) {
                        Ok((endpoint, account, key)) => {
                            Some((endpoint, StorageAuthConfig::SharedKey { account, key }))
                        }
                        Err(e) => {
                            p.push("queue.connection_string", &e.to_string());
                            None
                        }
                    }
                }
                (None, Some(url)) => {
                    // Storage tokens come from the managed identity, or without one from the
                    // app registration; a mode that needs the managed identity but has none is
                    // already warned about (IDENTITY_ENDPOINT).
                    p.check(
                        "queue.account_url",
                        EndpointUrl::parse(&url).map_err(|e| e.to_string()),
                    )
                    .map(|u| (u, StorageAuthConfig::Entra))
                }
                (Some(_), Some(_)) => {
                    p.push(
                        "queue.connection_string",
                        "set queue.connection_string or queue.account_url, not both",
                    );
                    None
                }
                (None, None) => {
                    p.push(
                        "queue.account_url",
                        "azure_storage needs queue.account_url (https://ACCOUNT.queue.core.windows.net, managed identity) or queue.connection_string (account key)",
                    );
                    None
                }
            };
            let table = match raw.table_endpoint.or(cs_table) {
                Some(t) => p.check(
                    "queue.table_endpoint",
                    EndpointUrl::parse(&t).map_err(|e| e.to_string()),
                ),
                None => target.as_ref().and_then(|(q, _)| {
                    let derived = crate::queue::azure::table_endpoint_for(q);
                    if derived.is_none() {
                        p.push(
                            "queue.table_endpoint",
                            "cannot be derived from the queue endpoint: set it (https://ACCOUNT.table.core.windows.net)",
                        );
                    }
                    derived
                }),
            };
            match (target, table) {
                (Some((endpoint, auth)), Some(table_endpoint)) => {
                    QueueConfig::AzureStorage(Box::new(AzureQueueConfig {
                        endpoint,
                        auth,
                        name,
                        poison_name,
                        max_unhandled_deliveries: max_unhandled_deliveries as u32,
                        table_endpoint,
                        wait_table,
                        wait_recheck: Duration::from_secs(recheck),
                    }))
                }
                _ => QueueConfig::Sqlite,
            }
        }
        _ => {
            p.push("queue.backend", "must be sqlite or azure_storage");
            QueueConfig::Sqlite
        }
    }
}

/// An ARM resource id as Entra binds it: `/subscriptions/…`, nothing that could make two
/// different texts compare equal after normalisation.
fn check_resource(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("required: the ARM resource id of the extension's Logic App (/subscriptions/{id}/resourceGroups/{rg}/providers/Microsoft.Logic/workflows/{name}), the p claim of Entra's PoP token".into());
    }
    if !r.to_ascii_lowercase().starts_with("/subscriptions/") {
        return Err("must start with /subscriptions/ (the Logic App's ARM resource id)".into());
    }
    if r.contains(['%', '?', '#', '\\', ' ']) || r.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("must be a plain resource id: no percent-encoding, query, fragment, spaces or dot segments".into());
    }
    Ok(())
}

struct Problems<'a>(&'a mut Vec<ConfigProblem>);

impl Problems<'_> {
    fn push(&mut self, setting: &str, message: &str) {
        self.0.push(ConfigProblem {
            setting: setting.into(),
            message: message.into(),
        });
    }
    fn check<T>(&mut self, setting: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.push(setting, &m);
                None
            }
        }
    }
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { base.join(p) }
}

fn section<T: for<'de> Deserialize<'de> + Default>(
    root: &toml::Table,
    name: &str,
    problems: &mut Vec<ConfigProblem>,
) -> T {
    match root.get(name) {
        None => T::default(),
        Some(v) => match v.clone().try_into::<T>() {
            Ok(t) => t,
            Err(e) => {
                problems.push(ConfigProblem {
                    setting: name.into(),
                    message: redact_values(e.message()),
                });
                T::default()
            }
        },
    }
}

/// serde's "invalid type/value" messages quote the offending value (`integer `1234``), which may
/// be a secret; drop it. Other messages quote only field names, which help.
fn redact_values(msg: &str) -> String {
    if !(msg.starts_with("invalid type") || msg.starts_with("invalid value")) {
        return msg.to_owned();
    }
    let mut parts = msg.splitn(3, '`');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(before), Some(_value), Some(after)) => {
            format!("{} (value not shown){after}", before.trim_end())
        }
        _ => msg.to_owned(),
    }
}

/// Keys whose values are always strings: an environment value such as `12345678` for a client
/// secret or `true` for a name must not turn into a number or a boolean.
const STRING_KEYS: &[&str] = &[
    "server.listen",
    "server.data_dir",
    "identity.cloud",
    "identity.authority",
    "identity.tenant_id",
    "inbound.mode",
    "graph.base_url",
    "graph.api_version",
    "graph.scope",
    "graph.resume_source",
    "credentials.mode",
    "credentials.client_id",
    "credentials.client_secret",
    "credentials.managed_identity_client_id",
    "credentials.federated_token_file",
    "credentials.key_vault_url",
    "credentials.secret_name",
    "credentials.certificate_name",
    "credentials.sign_with",
    "queue.backend",
    "queue.connection_string",
    "queue.account_url",
    "queue.name",
    "queue.poison_name",
    "worker.default_callback_timeout",
    "policy.file",
    "directory.external_entitlements_attribute",
    "servicenow.instance_url",
    "servicenow.auth",
    "servicenow.username",
    "servicenow.password",
    "servicenow.password_secret",
    "servicenow.client_id",
    "servicenow.client_secret",
    "servicenow.client_secret_secret",
    "capture.dir",
    "log.format",
    "log.level",
];

/// Variables with the prefix that are not overrides: the config path, the log filter, and the
/// emulator's own settings (often set in the same shell).
fn is_reserved_env(name: &str) -> bool {
    matches!(name, "ACCESSGATE_CONFIG" | "ACCESSGATE_LOG")
        || name.starts_with("ACCESSGATE_EMULATOR_")
}

/// An environment value as TOML: verbatim for string keys, else parsed when it parses (number,
/// bool, array).
fn env_value(raw: &str, string_key: bool) -> toml::Value {
    if string_key {
        return toml::Value::String(raw.to_owned());
    }
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_str() || raw.starts_with('"'))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// `ACCESSGATE_CREDENTIALS__CLIENT_SECRET=x` sets `graph.client_secret`. For keys that are not strings,
/// values that parse as a TOML value (number, bool, array) are taken as such.
fn apply_env(
    root: &mut toml::Table,
    env: &BTreeMap<String, String>,
    problems: &mut Vec<ConfigProblem>,
) {
    for (key, raw) in env {
        if is_reserved_env(key) {
            continue;
        }
        let Some(rest) = key.strip_prefix("ACCESSGATE_") else {
            continue;
        };
        let Some((sec, field)) = rest.split_once("__") else {
            problems.push(ConfigProblem {
                setting: key.clone(),
                message: "environment overrides are ACCESSGATE_<SECTION>__<KEY>, e.g. ACCESSGATE_CREDENTIALS__CLIENT_SECRET".into(),
            });
            continue;
        };
        let sec = sec.to_ascii_lowercase();
        let field = field.to_ascii_lowercase();
        // `ACCESSGATE_EXTENSIONS__<NAME>__<KEY>` sets `extensions.<name>.<key>`.
        if sec == "extensions" {
            let Some((name, ext_key)) = field.split_once("__") else {
                problems.push(ConfigProblem {
                    setting: key.clone(),
                    message: "extension overrides are ACCESSGATE_EXTENSIONS__<NAME>__<KEY>".into(),
                });
                continue;
            };
            let value = env_value(raw, ext_key != "catalog_ids");
            let ext = root
                .entry("extensions")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .map(|t| {
                    t.entry(name.to_owned())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                });
            match ext.and_then(toml::Value::as_table_mut) {
                Some(t) => {
                    t.insert(ext_key.to_owned(), value);
                }
                None => problems.push(ConfigProblem {
                    setting: format!("extensions.{name}"),
                    message: "is not a table".into(),
                }),
            }
            continue;
        }
        let value = env_value(
            raw,
            STRING_KEYS.contains(&format!("{sec}.{field}").as_str()),
        );
        let entry = root
            .entry(sec.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(t) => {
                t.insert(field, value);
            }
            None => problems.push(ConfigProblem {
                setting: sec,
                message: "is not a table".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
[inbound]
audiences = ["api://accessgate"]
[credentials]
client_id = "aaaaaaaa-0000-0000-0000-000000000001"
"#;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn good_config_with_secret_from_env_loads_with_defaults() {
        let c = from_sources(
            GOOD,
            &env(&[("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "s3cret")]),
            Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        match &c.credentials.mode {
            CredentialMode::ClientSecret { secret, .. } => assert_eq!(secret.expose(), "s3cret"),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.graph.base_url.base(), "https://graph.microsoft.com");
        assert_eq!(
            c.identity.authority.base(),
            "https://login.microsoftonline.com"
        );
        assert_eq!(c.inbound.allowed_app_ids, vec![ELM_APP_ID, LCW_APP_ID]);
        assert_eq!(c.server.max_body_bytes, 1024 * 1024);
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn env_overrides_win_and_parse_numbers() {
        let c = from_sources(
            GOOD,
            &env(&[
                ("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x"),
                ("ACCESSGATE_WORKER__CONCURRENCY", "7"),
                ("ACCESSGATE_IDENTITY__CLOUD", "usgov"),
            ]),
            Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.worker.concurrency, 7);
        assert_eq!(c.graph.base_url.base(), "https://graph.microsoft.us");
        assert_eq!(c.graph.scope, "https://graph.microsoft.us/.default");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = r#"
[identity]
tenant_id = "contoso.onmicrosoft.com"
authority = "http://login.example.com"
[graph]
base_url = "http://graph.example.com"
[worker]
default_callback_timeout = "an hour"
[nonsense]
x = 1
"#;
        let errs = from_sources(bad, &env(&[]), Path::new("."))
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        let settings: Vec<&str> = errs.iter().map(|p| p.setting.as_str()).collect();
        for s in [
            "identity.tenant_id",
            "identity.authority",
            "graph.base_url",
            "credentials.client_id",
            "credentials.client_secret",
            "extensions",
            "worker.default_callback_timeout",
            "nonsense",
        ] {
            assert!(settings.contains(&s), "missing {s} in {settings:?}");
        }
    }

    /// GOOD with `lines` added to its `[inbound]` section.
    fn inbound(lines: &str) -> String {
        GOOD.replace("[inbound]\n", &format!("[inbound]\n{lines}\n"))
    }

    const RES: &str = "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg/providers/Microsoft.Logic/workflows/la";

    #[test]
    fn extensions_from_file_and_environment() {
        let text = format!(
            "{GOOD}[extensions.finance]\nresource = \"{RES}\"\ncatalog_ids = [\"C0000000-0000-0000-0000-000000000001\"]\n"
        );
        let c = from_sources(
            &text,
            &env(&[
                ("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x"),
                ("ACCESSGATE_EXTENSIONS__HR__RESOURCE", &format!("{RES}-hr")),
                ("ACCESSGATE_EXTENSIONS__HR__HOST", "Management.Azure.com"),
            ]),
            Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = c.extensions.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["finance", "hr"]);
        let fin = &c.extensions[0];
        assert_eq!(fin.host, "management.azure.com");
        assert_eq!(fin.resource_key, normalize_resource(RES));
        assert!(fin.serves_catalog(Some("c0000000-0000-0000-0000-000000000001")));
        assert!(!fin.serves_catalog(Some("c0000000-0000-0000-0000-000000000002")));
        assert!(!fin.serves_catalog(None));
        assert!(c.extensions[1].serves_catalog(None));
        assert_eq!(c.extensions[1].host, "management.azure.com");
        assert_eq!(c.inbound.mode, IngressMode::Direct);
        assert_eq!(
            c.inbound.pop.algorithms,
            [PopAlgorithm::Rs256, PopAlgorithm::Ps256]
        );
        assert_eq!(c.inbound.pop.lifetime, Duration::from_secs(300));
        assert_eq!(c.inbound.pop.future_skew, Duration::from_secs(60));
    }

    #[test]
    fn bad_extensions_and_pop_settings_are_each_named() {
        let text = format!(
            r#"{}
[extensions.a]
resource = "{RES}"
[extensions.b]
resource = "{RES}/"
[extensions.c]
resource = "/subscriptions/x/../y"
catalog_ids = ["finance"]
[extensions.d]
host = "management.azure.com/x"
"#,
            inbound(
                r#"pop_algorithms = ["RS256", "HS256", "none"]
pop_lifetime_seconds = 5"#
            )
        );
        let errs = from_sources(
            &text,
            &env(&[("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x")]),
            Path::new("."),
        )
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
        let all = format!("{errs:?}");
        for s in [
            "inbound.pop_algorithms",
            "inbound.pop_lifetime_seconds",
            "extensions.b.resource",
            "extensions.c.resource",
            "extensions.c.catalog_ids",
            "extensions.d.resource",
            "extensions.d.host",
        ] {
            assert!(errs.iter().any(|p| p.setting == s), "missing {s} in {all}");
        }
        assert_eq!(
            errs.iter()
                .filter(|p| p.setting == "inbound.pop_algorithms")
                .count(),
            2,
            "{all}"
        );
    }

    #[test]
    fn relay_mode_needs_its_audience_and_caller() {
        let text = inbound("mode = \"relay\"");
        let errs = from_sources(
            &text,
            &env(&[("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x")]),
            Path::new("."),
        )
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
        assert!(
            errs.iter().any(|p| p.setting == "inbound.relay_audiences"),
            "{errs:?}"
        );
        let text = inbound(
            "mode = \"relay\"\nrelay_audiences = [\"api://accessgate\"]\nrelay_caller_ids = [\"0A000000-0000-0000-0000-000000000001\"]",
        );
        let c = from_sources(
            &text,
            &env(&[("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x")]),
            Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.inbound.mode, IngressMode::Relay);
        assert_eq!(
            c.inbound.relay.caller_ids,
            ["0a000000-0000-0000-0000-000000000001"]
        );
    }

    #[test]
    fn resource_normalisation_is_exactly_case_slashes_and_unreserved_escapes() {
        assert_eq!(normalize_resource("/Subscriptions/A/"), "subscriptions/a");
        assert_eq!(normalize_resource("//a//"), "a");
        assert_eq!(normalize_resource("/a%2Db"), "a-b");
        assert_eq!(normalize_resource("/a%41"), "aa");
        // An encoded slash or dot segment is not the same resource.
        assert_eq!(normalize_resource("/a%2Fb"), "a%2fb");
        assert_ne!(normalize_resource("/a/../b"), normalize_resource("/b"));
        assert_eq!(normalize_resource("/a%"), "a%");
        assert_eq!(normalize_resource("/a%4"), "a%4");
    }

    #[test]
    fn unknown_key_in_a_section_is_named() {
        let errs = from_sources("[server]\nlisten_addr = \"x\"\n", &env(&[]), Path::new("."))
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        assert!(
            errs.iter()
                .any(|p| p.setting == "server" && p.message.contains("listen_addr")),
            "{errs:?}"
        );
    }

    #[test]
    fn reserved_variables_are_not_overrides_and_numeric_secrets_stay_strings() {
        let c = from_sources(
            GOOD,
            &env(&[
                ("ACCESSGATE_CONFIG", "x.toml"),
                ("ACCESSGATE_LOG", "debug"),
                ("ACCESSGATE_EMULATOR_PORT", "7700"),
                ("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "12345678"),
            ]),
            Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        match &c.credentials.mode {
            CredentialMode::ClientSecret { secret, .. } => assert_eq!(secret.expose(), "12345678"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn type_errors_never_print_the_value() {
        let text = format!("{GOOD}client_secret = 987654321\n");
        let errs = from_sources(&text, &env(&[]), Path::new("."))
            .err()
            .map(|e| e.0)
            .unwrap_or_default();
        let all = format!("{errs:?}");
        assert!(errs.iter().any(|p| p.setting == "credentials"), "{all}");
        assert!(!all.contains("987654321"), "{all}");
    }

    const BASE: &str = r#"
[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
[inbound]
audiences = ["api://accessgate"]
"#;
    const APP: &str = "aaaaaaaa-0000-0000-0000-000000000001";

    fn creds(lines: &str, vars: &[(&str, &str)]) -> Result<Config, Vec<ConfigProblem>> {
        from_sources(
            &format!("{BASE}[credentials]\n{lines}\n"),
            &env(vars),
            Path::new("/etc/accessgate"),
        )
        .map_err(|e| e.0)
    }

    #[test]
    fn every_credential_mode_parses() {
        let mi = [
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:41741/msi/token"),
            ("IDENTITY_HEADER", "hdr-secret"),
        ];
        let c = creds("mode = \"managed_identity\"", &mi).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(matches!(
            c.credentials.mode,
            CredentialMode::ManagedIdentity
        ));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(!format!("{c:?}").contains("hdr-secret"));

        let c = creds(
            &format!("mode = \"key_vault_certificate\"\nclient_id = \"{APP}\"\nkey_vault_url = \"https://v.vault.azure.net\"\ncertificate_name = \"graph-cert\""),
            &mi,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        match &c.credentials.mode {
            CredentialMode::KeyVaultCertificate {
                sign_with,
                certificate_name,
                ..
            } => {
                assert_eq!(
                    *sign_with,
                    SignWith::KeyVault,
                    "the key stays in the vault by default"
                );
                assert_eq!(certificate_name, "graph-cert");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.credentials.key_vault_resource, "https://vault.azure.net");

        let c = creds(
            "mode = \"workload_identity\"",
            &[
                ("AZURE_CLIENT_ID", APP),
                (
                    "AZURE_FEDERATED_TOKEN_FILE",
                    "/var/run/secrets/azure/tokens/azure-identity-token",
                ),
            ],
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        match &c.credentials.mode {
            CredentialMode::WorkloadIdentity {
                client_id,
                token_file,
            } => {
                assert_eq!(client_id, APP);
                assert!(token_file.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn credential_problems_name_their_setting() {
        let errs = creds("mode = \"key_vault_secret\"", &[])
            .err()
            .unwrap_or_default();
        for s in [
            "credentials.client_id",
            "credentials.key_vault_url",
            "credentials.secret_name",
        ] {
            assert!(
                errs.iter().any(|p| p.setting == s),
                "missing {s} in {errs:?}"
            );
        }
        let errs = creds(
            &format!("mode = \"key_vault_secret\"\nclient_id = \"{APP}\"\nkey_vault_url = \"http://vault.example.com\"\nsecret_name = \"a b\"\nclient_secret = \"x\""),
            &[],
        )
        .err()
        .unwrap_or_default();
        for s in [
            "credentials.key_vault_url",
            "credentials.secret_name",
            "credentials.client_secret",
        ] {
            assert!(
                errs.iter().any(|p| p.setting == s),
                "missing {s} in {errs:?}"
            );
        }
        let errs = creds("mode = \"magic\"", &[]).err().unwrap_or_default();
        assert!(
            errs.iter().any(|p| p.setting == "credentials.mode"),
            "{errs:?}"
        );
        // The old place is named, not just refused.
        let errs = from_sources(
            &format!("{BASE}[graph]\nclient_id = \"{APP}\"\n"),
            &env(&[]),
            Path::new("."),
        )
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
        assert!(
            errs.iter()
                .any(|p| p.setting == "graph.client_id"
                    && p.message.contains("credentials.client_id")),
            "{errs:?}"
        );
    }

    #[test]
    fn a_missing_managed_identity_is_a_warning_not_a_failure() {
        let c = creds("mode = \"managed_identity\"", &[]).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            c.warnings.iter().any(|w| w.setting == "IDENTITY_ENDPOINT"),
            "{:?}",
            c.warnings
        );
        // Plain http off the machine is refused for the identity endpoint too.
        let errs = creds(
            "mode = \"managed_identity\"",
            &[("IDENTITY_ENDPOINT", "http://169.254.169.254/msi/token")],
        )
        .err()
        .unwrap_or_default();
        assert!(
            errs.iter().any(|p| p.setting == "IDENTITY_ENDPOINT"),
            "{errs:?}"
        );
    }

    #[test]
    fn national_clouds_pick_their_key_vault_audience() {
        let c = from_sources(
            &format!("{BASE}[credentials]\nclient_id = \"{APP}\"\n"),
            &env(&[
                ("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x"),
                ("ACCESSGATE_IDENTITY__CLOUD", "china"),
            ]),
            Path::new("."),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.credentials.key_vault_resource, "https://vault.azure.cn");
        assert_eq!(
            c.graph.base_url.base(),
            "https://microsoftgraph.chinacloudapi.cn"
        );
        assert_eq!(
            c.identity.authority.base(),
            "https://login.chinacloudapi.cn"
        );
    }

    #[test]
    fn graph_resilience_settings_have_bounds() {
        let errs = from_sources(
            &format!("{BASE}[credentials]\nclient_id = \"{APP}\"\nclient_secret = \"x\"\n[graph]\nmax_requests_per_second = 0\ncircuit_failure_threshold = 0\ncircuit_open_seconds = 0\n"),
            &env(&[]),
            Path::new("."),
        )
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
        for s in [
            "graph.max_requests_per_second",
            "graph.circuit_failure_threshold",
            "graph.circuit_open_seconds",
        ] {
            assert!(
                errs.iter().any(|p| p.setting == s),
                "missing {s} in {errs:?}"
            );
        }
    }
}
