//! `[inbound]` (how callers prove who they are: PoP, bearer, relay) and `[extensions.NAME]` (the
//! custom extensions whose PoP tokens this deployment accepts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::Policy;
use crate::settings::{self, Problems};

/// First-party app id of entitlement management (protocol.md §4.2).
pub const ELM_APP_ID: &str = "810dcf14-1858-4bf2-8134-4c369fa3235b";
/// First-party app id of Lifecycle Workflows (protocol.md §4.2).
pub const LCW_APP_ID: &str = "ce79fdc4-cd1d-4ea5-8139-e74d7dbe0bb7";
/// The host every Entra PoP token for a Logic App extension is bound to (`u`).
pub const ARM_HOST: &str = "management.azure.com";

/// `[inbound]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
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
    token_cache_entries: Option<u64>,
    relay_audiences: Option<Vec<String>>,
    relay_caller_ids: Option<Vec<String>>,
}

/// Keys of `[inbound]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &["mode"];

/// `[extensions.NAME]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawExtension {
    resource: Option<String>,
    host: Option<String>,
    catalog_ids: Option<Vec<String>>,
    policy_file: Option<String>,
    kind: Option<String>,
    callback_timeout: Option<String>,
}

/// Which product calls through an extension: its callouts' shape and caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionKind {
    /// An entitlement-management custom extension (`accessPackageAssignmentRequestWorkflowExtension`).
    EntitlementManagement,
    /// A Lifecycle Workflows custom task extension (`customTaskExtension`).
    LifecycleWorkflows,
}

impl ExtensionKind {
    pub fn name(self) -> &'static str {
        match self {
            ExtensionKind::EntitlementManagement => "entitlement_management",
            ExtensionKind::LifecycleWorkflows => "lifecycle_workflows",
        }
    }

    /// The first-party app that calls through this kind of extension.
    pub fn caller(self) -> &'static str {
        match self {
            ExtensionKind::EntitlementManagement => ELM_APP_ID,
            ExtensionKind::LifecycleWorkflows => LCW_APP_ID,
        }
    }

    /// The kind a first-party caller app id belongs to, if it is one of the two.
    pub fn of_caller(app_id: &str) -> Option<ExtensionKind> {
        [Self::EntitlementManagement, Self::LifecycleWorkflows]
            .into_iter()
            .find(|k| k.caller().eq_ignore_ascii_case(app_id))
    }
}

/// The Lifecycle Workflows callback window (`customTaskExtensionCallbackConfiguration.timeoutDuration`):
/// 5 minutes to 3 hours (integrations.md §1).
pub const TASK_TIMEOUT_MIN: Duration = Duration::from_secs(5 * 60);
pub const TASK_TIMEOUT_MAX: Duration = Duration::from_secs(3 * 3600);

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
pub struct PopSettings {
    /// `aud` of the inner access token.
    pub audiences: Vec<String>,
    pub algorithms: Vec<PopAlgorithm>,
    /// How long after `ts` a signed request is accepted.
    pub lifetime: Duration,
    /// How far `ts` may lie in the future (clock skew between Entra and us).
    pub future_skew: Duration,
    /// Replay cache bound (entries); when full of live entries, callouts get 503 and Entra retries.
    pub replay_cache_entries: usize,
    /// Bound of the validated-access-token cache (entries); 0 turns it off.
    pub token_cache_entries: usize,
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// `aud` of the relaying Logic App's managed identity token.
    pub audiences: Vec<String>,
    /// Accepted callers: the managed identity's client (app) id or object id, lower case.
    pub caller_ids: Vec<String>,
}

/// `[inbound]`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: IngressMode,
    /// Bearer audiences of legacy ("Regular" token) extensions; empty = bearer refused.
    pub audiences: Vec<String>,
    pub allowed_app_ids: Vec<String>,
    pub clock_skew: Duration,
    pub jwks_refresh_min_interval: Duration,
    pub jwks_max_age: Duration,
    pub pop: PopSettings,
    pub relay: RelaySettings,
}

impl Settings {
    pub fn from_raw(raw: Raw, p: &mut Problems) -> Settings {
        let mode = match raw.mode.as_deref().unwrap_or("direct") {
            "direct" => IngressMode::Direct,
            "relay" => IngressMode::Relay,
            _ => {
                p.push("inbound.mode", "must be direct or relay");
                IngressMode::Direct
            }
        };
        let audiences = raw.audiences.unwrap_or_default();
        if audiences.iter().any(|a| a.trim().is_empty()) {
            p.push("inbound.audiences", "must not contain empty values");
        }
        let allowed_app_ids = raw
            .allowed_app_ids
            .unwrap_or_else(|| vec![ELM_APP_ID.to_string(), LCW_APP_ID.to_string()]);
        if allowed_app_ids.is_empty() {
            p.push(
                "inbound.allowed_app_ids",
                "must name at least one caller app id",
            );
        }
        // Problems name the entry, never its value (a secret pasted into the wrong setting).
        for (i, id) in allowed_app_ids.iter().enumerate() {
            if !settings::is_guid(id) {
                p.push(
                    "inbound.allowed_app_ids",
                    &format!("entry {} is not a GUID", i + 1),
                );
            }
        }
        let clock_skew = settings::seconds_at_most(
            p,
            "inbound.clock_skew_seconds",
            raw.clock_skew_seconds,
            60,
            300,
        );
        let jwks_refresh_min_interval =
            Duration::from_secs(raw.jwks_refresh_min_interval_seconds.unwrap_or(60));
        if jwks_refresh_min_interval < Duration::from_secs(10) {
            p.push(
                "inbound.jwks_refresh_min_interval_seconds",
                "at least 10: it bounds how often forged key ids can make us call the identity host",
            );
        }
        let jwks_max_age = Duration::from_secs(raw.jwks_max_age_seconds.unwrap_or(24 * 3600));
        let pop_audiences = raw.pop_audiences.unwrap_or_else(|| {
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
        for (i, a) in raw
            .pop_algorithms
            .unwrap_or_else(|| vec!["RS256".into(), "PS256".into()])
            .into_iter()
            .enumerate()
        {
            match PopAlgorithm::parse(&a) {
                Some(alg) if !algorithms.contains(&alg) => algorithms.push(alg),
                Some(_) => {}
                None => p.push(
                    "inbound.pop_algorithms",
                    &format!("entry {} is not allowed: choose from RS256, PS256, ES256 (none, HMAC and others are never accepted)", i + 1),
                ),
            }
        }
        if algorithms.is_empty() {
            p.push("inbound.pop_algorithms", "must name at least one algorithm");
        }
        let lifetime = settings::seconds(
            p,
            "inbound.pop_lifetime_seconds",
            raw.pop_lifetime_seconds,
            300,
            10..=3600,
        );
        let future_skew = settings::seconds_at_most(
            p,
            "inbound.pop_future_skew_seconds",
            raw.pop_future_skew_seconds,
            60,
            600,
        );
        let replay_cache_entries = settings::in_range(
            p,
            "inbound.replay_cache_entries",
            raw.replay_cache_entries,
            1_000_000,
            1000..=10_000_000,
        );
        let token_cache_entries = settings::in_range(
            p,
            "inbound.token_cache_entries",
            raw.token_cache_entries,
            10_000,
            0..=1_000_000,
        );
        let relay_audiences = raw.relay_audiences.unwrap_or_default();
        let relay_caller_ids: Vec<String> = raw
            .relay_caller_ids
            .unwrap_or_default()
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        for (i, id) in relay_caller_ids.iter().enumerate() {
            if !settings::is_guid(id) {
                p.push(
                    "inbound.relay_caller_ids",
                    &format!(
                        "entry {} is not a GUID (use the managed identity's client id or object id)",
                        i + 1
                    ),
                );
            }
        }
        Settings {
            mode,
            audiences,
            allowed_app_ids,
            clock_skew,
            jwks_refresh_min_interval,
            jwks_max_age,
            pop: PopSettings {
                audiences: pop_audiences,
                algorithms,
                lifetime,
                future_skew,
                replay_cache_entries: replay_cache_entries as usize,
                token_cache_entries: token_cache_entries as usize,
            },
            relay: RelaySettings {
                audiences: relay_audiences,
                caller_ids: relay_caller_ids,
            },
        }
    }
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
    pub kind: ExtensionKind,
    /// Lifecycle Workflows: the extension's callback window (its callout does not carry it).
    pub callback_timeout: Duration,
    pub policy: Option<Policy>,
    pub policy_file: Option<PathBuf>,
}

impl Extension {
    pub fn serves_catalog(&self, catalog_id: Option<&str>) -> bool {
        self.catalog_ids.is_empty()
            || catalog_id
                .is_some_and(|c| self.catalog_ids.iter().any(|k| k.eq_ignore_ascii_case(c)))
    }

    /// Validates every `[extensions.NAME]` (in name order) and loads their policy files; then
    /// checks that `inbound`'s mode has what it needs (extensions, or the relay's caller).
    pub fn all_from_raw(
        raw: BTreeMap<String, RawExtension>,
        inbound: &Settings,
        base_dir: &Path,
        p: &mut Problems,
    ) -> Vec<Extension> {
        let mut extensions: Vec<Extension> = Vec::new();
        for (name, raw) in raw {
            let setting = |k: &str| format!("extensions.{name}.{k}");
            let resource = raw.resource.unwrap_or_default();
            if let Err(m) = check_resource(&resource) {
                p.push(&setting("resource"), &m);
            }
            let host = raw
                .host
                .unwrap_or_else(|| ARM_HOST.into())
                .to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ' ', '@', '?', '#']) {
                p.push(
                    &setting("host"),
                    "must be a host name (optionally host:port)",
                );
            }
            let mut catalog_ids = Vec::new();
            for (i, c) in raw.catalog_ids.unwrap_or_default().iter().enumerate() {
                match uuid::Uuid::parse_str(c) {
                    Ok(u) => catalog_ids.push(u.to_string()),
                    Err(_) => p.push(
                        &setting("catalog_ids"),
                        &format!("entry {} is not a GUID", i + 1),
                    ),
                }
            }
            let kind = match raw.kind.as_deref().unwrap_or("entitlement_management") {
                "entitlement_management" => ExtensionKind::EntitlementManagement,
                "lifecycle_workflows" => ExtensionKind::LifecycleWorkflows,
                _ => {
                    p.push(
                        &setting("kind"),
                        "must be entitlement_management or lifecycle_workflows",
                    );
                    ExtensionKind::EntitlementManagement
                }
            };
            if kind == ExtensionKind::LifecycleWorkflows && !catalog_ids.is_empty() {
                p.push(
                    &setting("catalog_ids"),
                    "a lifecycle_workflows extension has no catalogs: select tasks with the policy's workflows, tasks and categories",
                );
            }
            let callback_timeout = match raw.callback_timeout.as_deref() {
                None => TASK_TIMEOUT_MAX,
                Some(_) if kind == ExtensionKind::EntitlementManagement => {
                    p.push(
                        &setting("callback_timeout"),
                        "only for lifecycle_workflows extensions: entitlement management sends its timeout in every callout",
                    );
                    TASK_TIMEOUT_MAX
                }
                Some(t) => match crate::callout::parse_iso_duration(t) {
                    Some(d) if (TASK_TIMEOUT_MIN..=TASK_TIMEOUT_MAX).contains(&d) => d,
                    _ => {
                        p.push(
                            &setting("callback_timeout"),
                            "must be an ISO 8601 duration from PT5M to PT3H (the custom task extension's timeoutDuration)",
                        );
                        TASK_TIMEOUT_MAX
                    }
                },
            };
            let policy_file = raw
                .policy_file
                .as_deref()
                .map(|f| settings::resolve(base_dir, f));
            let policy = policy_file
                .as_deref()
                .and_then(|f| crate::policy::settings::load_file(f, &setting("policy_file"), p));
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
                name,
                host,
                resource,
                resource_key,
                catalog_ids,
                kind,
                callback_timeout,
                policy,
                policy_file,
            });
        }
        match inbound.mode {
            IngressMode::Direct if extensions.is_empty() && inbound.audiences.is_empty() => p.push(
                "extensions",
                "direct mode needs at least one [extensions.NAME] with the resource id of the Logic App that Entra's PoP tokens are bound to (or inbound.audiences for legacy bearer extensions)",
            ),
            IngressMode::Relay
                if inbound.relay.audiences.is_empty() || inbound.relay.caller_ids.is_empty() =>
            {
                p.push(
                    "inbound.relay_audiences",
                    "relay mode needs inbound.relay_audiences (the audience the relaying Logic App requests) and inbound.relay_caller_ids (its managed identity's client or object id)",
                )
            }
            _ => {}
        }
        extensions
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ConfigProblem;

    const RES: &str = "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg/providers/Microsoft.Logic/workflows/la";

    /// `[inbound]` (with a legacy audience, as config's tests have) plus `lines`, and the
    /// `[extensions.*]` tables in `extensions`.
    fn parse(lines: &str, extensions: &str) -> (Settings, Vec<Extension>, Vec<ConfigProblem>) {
        let raw: Raw =
            toml::from_str(&format!("audiences = [\"api://accessgate\"]\n{lines}\n")).unwrap();
        let exts: BTreeMap<String, RawExtension> = toml::from_str(extensions).unwrap();
        let mut p = Problems::default();
        let s = Settings::from_raw(raw, &mut p);
        let e = Extension::all_from_raw(exts, &s, Path::new("."), &mut p);
        (s, e, p.into_parts().0)
    }

    #[test]
    fn bad_extensions_and_pop_settings_are_each_named() {
        let (_, _, errs) = parse(
            r#"pop_algorithms = ["RS256", "HS256", "none"]
pop_lifetime_seconds = 5"#,
            &format!(
                r#"
[a]
resource = "{RES}"
[b]
resource = "{RES}/"
[c]
resource = "/subscriptions/x/../y"
catalog_ids = ["finance"]
[d]
host = "management.azure.com/x"
"#
            ),
        );
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
        let (_, _, errs) = parse("mode = \"relay\"", "");
        assert!(
            errs.iter().any(|p| p.setting == "inbound.relay_audiences"),
            "{errs:?}"
        );
        let (s, _, errs) = parse(
            "mode = \"relay\"\nrelay_audiences = [\"api://accessgate\"]\nrelay_caller_ids = [\"0A000000-0000-0000-0000-000000000001\"]",
            "",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(s.mode, IngressMode::Relay);
        assert_eq!(s.relay.caller_ids, ["0a000000-0000-0000-0000-000000000001"]);
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
}
