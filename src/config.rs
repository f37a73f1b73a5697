//! Settings: one TOML file plus `ACCESSGATE_<SECTION>__<KEY>` environment overrides, layered
//! here and handed section by section to the module that owns it (`<module>::Settings::from_raw`,
//! sharing [`crate::settings`]). `accessgate check-config` prints every problem found, not just
//! the first.
//!
//! Invariants: only this module reads the environment for settings; only composition roots
//! (app, cli, doctor) import it, so no module reaches another's settings through here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::credentials::settings::{Cloud, IdentitySettings, PLATFORM_ENV, RawIdentity};
use crate::policy::Policy;
use crate::settings::{self, Problems};
use crate::tickets::servicenow;
use crate::{auth, capture, credentials, directory, graph, queue, telemetry, worker};

pub use crate::settings::{ConfigErrors, ConfigProblem};

/// The validated configuration the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerSettings,
    pub identity: IdentitySettings,
    pub inbound: auth::Settings,
    pub credentials: credentials::Settings,
    pub graph: graph::Settings,
    pub queue: queue::Settings,
    pub worker: worker::Settings,
    pub policy: Policy,
    pub policy_file: Option<PathBuf>,
    /// How long one decision (directory reads + checks) may take, before the callout's deadline
    /// cuts it shorter (`policy.decision_timeout_seconds`).
    pub decision_timeout: Duration,
    pub directory: directory::Settings,
    /// `[servicenow]`: the Table API for ticket checks; `None` when not configured.
    pub servicenow: Option<servicenow::Settings>,
    /// The custom extensions this deployment serves, keyed by the resource id their PoP tokens
    /// are bound to.
    pub extensions: Vec<auth::Extension>,
    pub capture: capture::Settings,
    pub log: telemetry::Settings,
    /// Things that do not stop the service but will make work wait (e.g. no managed identity
    /// endpoint): printed by `check-config` and logged at start.
    pub warnings: Vec<ConfigProblem>,
}

/// `[server]`. Kept here: its users are the composition roots (app binds `listen` and locks
/// `data_dir`, cli and doctor read them), and a child of `app` would put config in app's cycle.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Option<String>,
    data_dir: Option<String>,
    max_body_bytes: Option<u64>,
}

impl ServerSettings {
    /// `data_dir` even when `listen` is unusable: capture's default directory lies in it.
    fn from_raw(
        raw: RawServer,
        base_dir: &Path,
        p: &mut Problems,
    ) -> (Option<SocketAddr>, PathBuf, usize) {
        let listen = p.check(
            "server.listen",
            raw.listen
                .as_deref()
                .unwrap_or("127.0.0.1:8080")
                .parse::<SocketAddr>()
                .map_err(|e| format!("not an address:port ({e})")),
        );
        let data_dir = settings::resolve(base_dir, raw.data_dir.as_deref().unwrap_or("data"));
        let max_body_bytes = settings::in_range(
            p,
            "server.max_body_bytes",
            raw.max_body_bytes,
            1024 * 1024,
            1024..=16 * 1024 * 1024,
        );
        (listen, data_dir, max_body_bytes as usize)
    }
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
/// Sections are read, then validated, in a fixed order, so problems print in a stable order.
pub fn from_sources(
    toml_text: &str,
    env: &BTreeMap<String, String>,
    base_dir: &Path,
) -> Result<Config, ConfigErrors> {
    let mut root: toml::Table = match toml_text.parse::<toml::Table>() {
        Ok(t) => t,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigProblem {
                setting: "config file".into(),
                message: format!("not valid TOML: {}", e.message()),
            }]));
        }
    };
    let mut p = Problems::default();
    apply_env(&mut root, env, &mut p);
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            p.push(
                key,
                &format!("unknown section; known sections: {}", SECTIONS.join(", ")),
            );
        }
    }

    let server_raw: RawServer = section(&root, "server", &mut p);
    let identity_raw: RawIdentity = section(&root, "identity", &mut p);
    let inbound_raw: auth::settings::Raw = section(&root, "inbound", &mut p);
    let extensions_raw: BTreeMap<String, auth::settings::RawExtension> =
        section(&root, "extensions", &mut p);
    let credentials_raw: credentials::settings::Raw = section(&root, "credentials", &mut p);
    let graph_raw: graph::settings::Raw = section(&root, "graph", &mut p);
    let queue_raw: queue::settings::Raw = section(&root, "queue", &mut p);
    let worker_raw: worker::settings::Raw = section(&root, "worker", &mut p);
    let policy_raw: crate::policy::settings::Raw = section(&root, "policy", &mut p);
    let directory_raw: directory::settings::Raw = section(&root, "directory", &mut p);
    let servicenow_raw: Option<servicenow::settings::Raw> = root
        .contains_key("servicenow")
        .then(|| section(&root, "servicenow", &mut p));
    let capture_raw: capture::settings::Raw = section(&root, "capture", &mut p);
    let log_raw: telemetry::settings::Raw = section(&root, "log", &mut p);

    let (listen, data_dir, max_body_bytes) = ServerSettings::from_raw(server_raw, base_dir, &mut p);
    let cloud = Cloud::from_raw(&identity_raw, &mut p);
    let identity = IdentitySettings::from_raw(identity_raw, &cloud, &mut p);
    let inbound = auth::Settings::from_raw(inbound_raw, &mut p);
    let extensions = auth::Extension::all_from_raw(extensions_raw, &inbound, base_dir, &mut p);
    let graph_timeout = graph_raw.timeout();
    let graph = graph::Settings::from_raw(graph_raw, &cloud, &mut p);
    let credentials =
        credentials::Settings::from_raw(credentials_raw, env, base_dir, &cloud, &mut p);
    let queue = queue::Settings::from_raw(queue_raw, &mut p);
    let worker = worker::Settings::from_raw(worker_raw, graph_timeout, &mut p);
    let policy = crate::policy::Settings::from_raw(policy_raw, base_dir, &mut p);
    let directory = directory::Settings::from_raw(directory_raw, &mut p);
    let servicenow = servicenow_raw
        .and_then(|raw| servicenow::Settings::from_raw(raw, credentials.mode.vault(), &mut p));
    if servicenow.is_none() && policy.policy.uses_check_type("servicenow_ticket") {
        p.warn(
            "servicenow",
            "the policy has a servicenow_ticket check but [servicenow] is not configured: that check will error",
        );
    }
    let capture = capture::Settings::from_raw(capture_raw, base_dir, &data_dir);
    let log = telemetry::Settings::from_raw(log_raw, &mut p);

    let (problems, warnings) = p.into_parts();
    match (listen, identity, graph) {
        (Some(listen), Some(identity), Some(graph)) if problems.is_empty() => Ok(Config {
            server: ServerSettings {
                listen,
                data_dir,
                max_body_bytes,
            },
            identity,
            inbound,
            credentials,
            graph,
            queue,
            worker,
            policy: policy.policy,
            policy_file: policy.file,
            decision_timeout: policy.decision_timeout,
            directory,
            servicenow,
            extensions,
            capture,
            log,
            warnings,
        }),
        _ => Err(ConfigErrors(problems)),
    }
}

/// A section as its module's raw type; a type error or an unknown key is a problem named after
/// the section, with any quoted value redacted.
fn section<T: for<'de> Deserialize<'de> + Default>(
    root: &toml::Table,
    name: &str,
    p: &mut Problems,
) -> T {
    match root.get(name) {
        None => T::default(),
        Some(v) => match v.clone().try_into::<T>() {
            Ok(t) => t,
            Err(e) => {
                p.push(name, &redact_values(e.message()));
                T::default()
            }
        },
    }
}

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
fn apply_env(root: &mut toml::Table, env: &BTreeMap<String, String>, p: &mut Problems) {
    for (key, raw) in env {
        if is_reserved_env(key) {
            continue;
        }
        let Some(rest) = key.strip_prefix("ACCESSGATE_") else {
            continue;
        };
        let Some((sec, field)) = rest.split_once("__") else {
            p.push(
                key,
                "environment overrides are ACCESSGATE_<SECTION>__<KEY>, e.g. ACCESSGATE_CREDENTIALS__CLIENT_SECRET",
            );
            continue;
        };
        let sec = sec.to_ascii_lowercase();
        let field = field.to_ascii_lowercase();
        // `ACCESSGATE_EXTENSIONS__<NAME>__<KEY>` sets `extensions.<name>.<key>`.
        if sec == "extensions" {
            let Some((name, ext_key)) = field.split_once("__") else {
                p.push(
                    key,
                    "extension overrides are ACCESSGATE_EXTENSIONS__<NAME>__<KEY>",
                );
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
                None => p.push(&format!("extensions.{name}"), "is not a table"),
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
            None => p.push(&sec, "is not a table"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::settings::{ELM_APP_ID, LCW_APP_ID, normalize_resource};
    use crate::auth::{IngressMode, PopAlgorithm};
    use crate::credentials::{CredentialMode, SignWith};

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
