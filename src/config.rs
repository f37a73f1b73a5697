//! Settings: one TOML file plus `ACCESSGATE_<SECTION>__<KEY>` environment overrides, layered
//! here and handed section by section to the module that owns it (`<module>::Settings::from_raw`,
//! sharing [`crate::settings`]). `accessgate check-config` prints every problem found, not just
//! the first.
//!
//! Invariants: only this module reads the environment for settings; only composition roots
//! (app, cli, doctor) import it, so no module reaches another's settings through here.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::credentials::settings::{Cloud, IdentitySettings, PLATFORM_ENV, RawIdentity};
use crate::lenient;
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
    /// `[pim]`: PIM custom extensions; `None` when not configured.
    pub pim: Option<crate::pim::Settings>,
    /// `[azure]`: ARM and the Function App, for `doctor`.
    pub azure: crate::arm::Settings,
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
    /// Connection limits of the HTTP listener (`crate::http_server`).
    pub connections: crate::http_server::Limits,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: Option<String>,
    data_dir: Option<String>,
    max_body_bytes: Option<u64>,
    header_read_timeout_seconds: Option<u64>,
    keep_alive_idle_seconds: Option<u64>,
    max_connections: Option<u64>,
}

impl ServerSettings {
    /// `data_dir` even when `listen` is unusable: capture's default directory lies in it.
    fn from_raw(
        raw: RawServer,
        base_dir: &Path,
        p: &mut Problems,
    ) -> (
        Option<SocketAddr>,
        PathBuf,
        usize,
        crate::http_server::Limits,
    ) {
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
        let connections = crate::http_server::Limits {
            header_read_timeout: settings::seconds(
                p,
                "server.header_read_timeout_seconds",
                raw.header_read_timeout_seconds,
                5,
                1..=60,
            ),
            keep_alive_idle: settings::seconds(
                p,
                "server.keep_alive_idle_seconds",
                raw.keep_alive_idle_seconds,
                60,
                1..=3600,
            ),
            max_connections: raw.max_connections.map(|_| {
                settings::in_range(
                    p,
                    "server.max_connections",
                    raw.max_connections,
                    0,
                    16..=1_000_000,
                ) as usize
            }),
        };
        (listen, data_dir, max_body_bytes as usize, connections)
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
    "pim",
    "azure",
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
    let label = path.map(|p| p.display().to_string());
    from_sources_in(&text, &env, &base_dir, label.as_deref())
}

/// Parses TOML text plus `ACCESSGATE_*` overrides; relative paths resolve against `base_dir`.
/// Sections are read, then validated, in a fixed order, so problems print in a stable order.
pub fn from_sources(
    toml_text: &str,
    env: &BTreeMap<String, String>,
    base_dir: &Path,
) -> Result<Config, ConfigErrors> {
    from_sources_in(toml_text, env, base_dir, None)
}

/// [`from_sources`] for the file named `file` (shown with line numbers in problems).
pub fn from_sources_in(
    toml_text: &str,
    env: &BTreeMap<String, String>,
    base_dir: &Path,
    file: Option<&str>,
) -> Result<Config, ConfigErrors> {
    let file = file.unwrap_or("config file");
    let (mut root, spans) = match lenient::parse(toml_text) {
        Ok(t) => t,
        Err(errs) => {
            return Err(ConfigErrors(
                errs.iter()
                    .map(|e| ConfigProblem {
                        setting: file.into(),
                        message: e.to_string(),
                    })
                    .collect(),
            ));
        }
    };
    let mut p = Problems::default();
    let from_env = apply_env(&mut root, env, &mut p);
    for key in root.keys() {
        if !SECTIONS.contains(&key.as_str()) {
            let hint = lenient::did_you_mean(key, SECTIONS)
                .map(|s| format!("did you mean [{s}]? "))
                .unwrap_or_default();
            let vars: Vec<&str> = from_env
                .iter()
                .filter(|(s, _)| {
                    s.strip_prefix(key.as_str())
                        .is_some_and(|r| r.starts_with('.'))
                })
                .map(|(_, v)| v.as_str())
                .collect();
            let from = if vars.is_empty() {
                String::new()
            } else {
                format!(" (from {})", vars.join(", "))
            };
            p.push(
                key,
                &format!(
                    "unknown section; {hint}known sections: {}{from}",
                    SECTIONS.join(", ")
                ),
            );
        }
    }

    let server_raw: RawServer = section(&root, "server", &mut p);
    let identity_raw: RawIdentity = section(&root, "identity", &mut p);
    let inbound_raw: auth::settings::Raw = section(&root, "inbound", &mut p);
    let extensions_raw = extensions(&root, &mut p);
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
    let pim_raw: crate::pim::settings::Raw = section(&root, "pim", &mut p);
    let azure_raw: crate::arm::settings::Raw = section(&root, "azure", &mut p);
    // Keys that could not be read: a later check of the same setting (e.g. "is required") would
    // be a follow-on of the one problem already reported.
    let unreadable: BTreeSet<String> = p.settings().map(str::to_owned).collect();

    let (listen, data_dir, max_body_bytes, connections) =
        ServerSettings::from_raw(server_raw, base_dir, &mut p);
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
    // A [servicenow] section with its own errors is not also "missing".
    let servicenow_missing_is_error = servicenow_raw.is_none();
    let servicenow = servicenow_raw
        .and_then(|raw| servicenow::Settings::from_raw(raw, credentials.mode.vault(), &mut p));
    let opens_tickets = policy.policy.opens_tickets()
        || extensions
            .iter()
            .any(|e| e.policy.as_ref().is_some_and(|p| p.opens_tickets()));
    if servicenow.is_none() && opens_tickets && servicenow_missing_is_error {
        p.push(
            "servicenow",
            "the policy opens ServiceNow tickets (a rule with ticket = \"NAME\"), but [servicenow] is not configured",
        );
    }
    if servicenow.is_none() && policy.policy.uses_check_type("servicenow_ticket") {
        p.warn(
            "servicenow",
            "the policy has a servicenow_ticket check but [servicenow] is not configured: that check will error",
        );
    }
    let capture = capture::Settings::from_raw(capture_raw, base_dir, &data_dir);
    let log = telemetry::Settings::from_raw(log_raw, &mut p);
    let pim = crate::pim::Settings::from_raw(pim_raw, &mut p);
    let azure = crate::arm::Settings::from_raw(azure_raw, &cloud, &mut p);

    let (problems, warnings) = p.into_parts();
    let mut reported = BTreeSet::new();
    let problems: Vec<ConfigProblem> = problems
        .into_iter()
        .filter(|q| !unreadable.contains(&q.setting) || reported.insert(q.setting.clone()))
        .map(|q| locate(redact(q, &root), &from_env, &spans, file))
        .collect();
    let warnings: Vec<ConfigProblem> = warnings
        .into_iter()
        .map(|q| locate(redact(q, &root), &from_env, &spans, file))
        .collect();
    match (listen, identity, graph) {
        (Some(listen), Some(identity), Some(graph)) if problems.is_empty() => Ok(Config {
            server: ServerSettings {
                listen,
                data_dir,
                max_body_bytes,
                connections,
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
            pim,
            azure,
            warnings,
        }),
        _ => Err(ConfigErrors(problems)),
    }
}

/// A section as its module's raw type, read key by key ([`lenient`]): a key of the wrong type or
/// an unknown key is a problem named `section.key` (never with its value) and the section's
/// other keys are still read, so they neither hide nor look missing.
fn section<T: DeserializeOwned + Default>(root: &toml::Table, name: &str, p: &mut Problems) -> T {
    match root.get(name) {
        None => T::default(),
        Some(toml::Value::Table(t)) => table(t, name, p),
        Some(other) => {
            p.push(
                name,
                &format!("expected a table, got {}", lenient::kind_of_value(other)),
            );
            T::default()
        }
    }
}

fn table<T: DeserializeOwned + Default>(t: &toml::Table, at: &str, p: &mut Problems) -> T {
    let read = lenient::lenient::<T>(t, &[], false);
    for kp in read.problems {
        let setting = kp
            .key
            .map_or_else(|| at.to_owned(), |k| format!("{at}.{k}"));
        p.push(&setting, &kp.message);
    }
    read.value.unwrap_or_default()
}

/// `[extensions.NAME]`, each read like a section.
fn extensions(
    root: &toml::Table,
    p: &mut Problems,
) -> BTreeMap<String, auth::settings::RawExtension> {
    let mut out = BTreeMap::new();
    match root.get("extensions") {
        None => {}
        Some(toml::Value::Table(all)) => {
            for (name, v) in all {
                let at = format!("extensions.{name}");
                match v {
                    toml::Value::Table(t) => {
                        out.insert(name.clone(), table(t, &at, p));
                    }
                    other => p.push(
                        &at,
                        &format!("expected a table, got {}", lenient::kind_of_value(other)),
                    ),
                }
            }
        }
        Some(other) => p.push(
            "extensions",
            &format!(
                "expected a table of [extensions.NAME], got {}",
                lenient::kind_of_value(other)
            ),
        ),
    }
    out
}

/// Says where a problem's setting came from: its environment variable, or its line in the file.
/// A policy file's problems carry their own location.
fn locate(
    mut q: ConfigProblem,
    from_env: &BTreeMap<String, String>,
    spans: &lenient::Spans,
    file: &str,
) -> ConfigProblem {
    if let Some(var) = from_env.get(&q.setting) {
        q.message = format!("{} (from {var})", q.message);
    } else if !has_line(&q.message)
        && let Some((line, _)) = spans.exact(&q.setting)
    {
        q.message = format!("{} ({file} line {line})", q.message);
    }
    q
}

/// The string values a setting holds (`inbound.allowed_app_ids` → its entries).
fn values_of<'a>(root: &'a toml::Table, setting: &str) -> Vec<&'a str> {
    fn strings<'a>(v: &'a toml::Value, out: &mut Vec<&'a str>) {
        match v {
            toml::Value::String(s) => out.push(s),
            toml::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut v: Option<&toml::Value> = None;
    for part in setting.split('.') {
        v = match v {
            None => root.get(part),
            Some(toml::Value::Table(t)) => t.get(part),
            Some(_) => None,
        };
        if v.is_none() {
            break;
        }
    }
    let mut out = Vec::new();
    if let Some(v) = v {
        strings(v, &mut out);
    }
    out
}

/// The last line of defence for "no value in a problem": a module's message that quotes the
/// setting's own value has it replaced (modules name an entry by its position instead; this
/// catches one that slips). Quoted values always; bare ones when long enough not to be a word of
/// the message.
fn redact(mut q: ConfigProblem, root: &toml::Table) -> ConfigProblem {
    // Paths are no secrets, and their problems must name them (`cannot read ...`).
    if q.setting.ends_with("file") || q.setting.ends_with("dir") {
        return q;
    }
    for v in values_of(root, &q.setting) {
        if v.is_empty() {
            continue;
        }
        q.message = q.message.replace(&format!("{v:?}"), "(value not shown)");
        if v.chars().count() >= 6 {
            q.message = q.message.replace(v, "(value not shown)");
        }
    }
    q
}

/// Whether a message already names a line (`policy.toml line 8: ...`).
fn has_line(msg: &str) -> bool {
    msg.match_indices(" line ").any(|(i, m)| {
        msg[i + m.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

/// Per section, the keys whose values are always strings (each module lists its own): an
/// environment value such as `12345678` for a client secret or `true` for a name must not turn
/// into a number or a boolean.
const STRING_KEYS: &[(&str, &[&str])] = &[
    ("server", &["listen", "data_dir"]),
    ("identity", credentials::settings::IDENTITY_STRING_KEYS),
    ("inbound", auth::settings::STRING_KEYS),
    ("graph", graph::settings::STRING_KEYS),
    ("credentials", credentials::settings::STRING_KEYS),
    ("queue", queue::settings::STRING_KEYS),
    ("worker", worker::settings::STRING_KEYS),
    ("policy", crate::policy::settings::STRING_KEYS),
    ("directory", directory::settings::STRING_KEYS),
    ("servicenow", servicenow::settings::STRING_KEYS),
    ("capture", capture::settings::STRING_KEYS),
    ("log", telemetry::settings::STRING_KEYS),
    ("pim", crate::pim::settings::STRING_KEYS),
    ("azure", crate::arm::settings::STRING_KEYS),
];

fn is_string_key(sec: &str, field: &str) -> bool {
    STRING_KEYS
        .iter()
        .any(|(s, keys)| *s == sec && keys.contains(&field))
}

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
/// Returns which setting each override set (`worker.concurrency` → its variable).
fn apply_env(
    root: &mut toml::Table,
    env: &BTreeMap<String, String>,
    p: &mut Problems,
) -> BTreeMap<String, String> {
    let mut from = BTreeMap::new();
    for (key, raw) in env {
        if is_reserved_env(key) {
            continue;
        }
        let Some(rest) = key.strip_prefix("ACCESSGATE_") else {
            continue;
        };
        let Some((sec, field)) = rest.split_once("__") else {
            // `ACCESSGATE_WORKER_CONCURRENCY`: one underscore where two belong.
            let lower = rest.to_ascii_lowercase();
            let hint = SECTIONS
                .iter()
                .find(|s| lower.starts_with(&format!("{s}_")))
                .map(|s| {
                    format!(
                        " (did you mean ACCESSGATE_{}__{}?)",
                        s.to_ascii_uppercase(),
                        &rest[s.len() + 1..]
                    )
                })
                .unwrap_or_default();
            p.push(
                key,
                &format!(
                    "environment overrides are ACCESSGATE_<SECTION>__<KEY>, e.g. ACCESSGATE_CREDENTIALS__CLIENT_SECRET{hint}"
                ),
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
                    from.insert(format!("extensions.{name}.{ext_key}"), key.clone());
                    t.insert(ext_key.to_owned(), value);
                }
                None => p.push(&format!("extensions.{name}"), "is not a table"),
            }
            continue;
        }
        let value = env_value(raw, is_string_key(&sec, &field));
        let entry = root
            .entry(sec.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(t) => {
                from.insert(format!("{sec}.{field}"), key.clone());
                t.insert(field, value);
            }
            None => p.push(&sec, "is not a table"),
        }
    }
    from
}

#[cfg(test)]
mod tests;
