//! `[pim]`: PIM custom extensions (pre-approval verdicts and post-approval notifications).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use crate::policy::Mode;
use crate::settings::{self, Problems};

/// PIM's first-party app id as one stored version of the PIM custom extension doc and one blog
/// post give it (another version shows a placeholder): the default `azp`, configurable.
pub const PIM_APP_ID: &str = "1c67c054-65c8-4f7f-92a1-eb7ba6e48627";
/// Global Administrator and Privileged Role Administrator (built-in role template ids, the same
/// in every tenant): never auto-approved unless the list says otherwise.
pub const NEVER_AUTO_APPROVE: [&str; 2] = [
    "62e90394-69f5-4237-9190-012177145e10",
    "e8611ab8-c189-46e8-94e1-60213ab1f814",
];
/// The default verdict budget: half the docs' example `clientConfiguration.timeoutInMilliseconds`
/// (10000), leaving room for PIM's own network time.
pub const DEFAULT_BUDGET_MS: u64 = 5000;

/// `[pim]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    audiences: Option<Vec<String>>,
    caller_app_ids: Option<Vec<String>>,
    budget_ms: Option<u64>,
    never_auto_approve: Option<Vec<String>>,
    mode: Option<Mode>,
    extensions: BTreeMap<String, RawExtension>,
}

/// `[pim.extensions.NAME]` as written: a PIM custom extension served at `/api/pim/NAME`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawExtension {
    budget_ms: Option<u64>,
    mode: Option<Mode>,
    post_approval: Option<bool>,
}

/// Keys of `[pim]` whose environment values stay strings.
pub const STRING_KEYS: &[&str] = &[];

/// One PIM custom extension's settings (the default one is served at `/api/pim`).
#[derive(Debug, Clone)]
pub struct ExtensionSettings {
    /// The verdict's budget: below the extension's `clientConfiguration.timeoutInMilliseconds`.
    pub budget: Duration,
    pub mode: Mode,
    /// A post-approval extension: its calls are notifications, recorded and answered at once.
    pub post_approval: bool,
}

/// `[pim]`, validated. `None` when PIM is not configured (no `audiences`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `aud` of PIM's tokens: the Application ID URI of accessgate's API app.
    pub audiences: Vec<String>,
    /// `azp` of PIM's tokens (lower case).
    pub callers: HashSet<String>,
    /// Role definition ids (lower case) that are never `AutoApproved`.
    pub never_auto_approve: Vec<String>,
    pub default: ExtensionSettings,
    pub extensions: BTreeMap<String, ExtensionSettings>,
}

impl Settings {
    /// The settings of the extension named in the route (`None`: the default route).
    pub fn extension(&self, name: Option<&str>) -> Option<&ExtensionSettings> {
        match name {
            None => Some(&self.default),
            Some(n) => self.extensions.get(n),
        }
    }

    pub fn from_raw(raw: Raw, p: &mut Problems) -> Option<Settings> {
        let mut audiences = raw.audiences.unwrap_or_default();
        if audiences.iter().any(|a| a.trim().is_empty()) {
            p.push("pim.audiences", "must not contain empty values");
        }
        // Entra writes a v2 access token's `aud` as the API's client id, while the PIM doc
        // names the Application ID URI (which must end with that client id): accept both.
        let client_ids: Vec<String> = audiences
            .iter()
            .filter_map(|a| a.trim_end_matches('/').rsplit('/').next())
            .filter(|last| settings::is_guid(last))
            .map(str::to_ascii_lowercase)
            .collect();
        for id in client_ids {
            if !audiences.iter().any(|a| a.eq_ignore_ascii_case(&id)) {
                audiences.push(id);
            }
        }
        let configured = raw.caller_app_ids.is_some()
            || raw.budget_ms.is_some()
            || raw.never_auto_approve.is_some()
            || !raw.extensions.is_empty();
        if audiences.is_empty() {
            if configured {
                p.push(
                    "pim.audiences",
                    "required for PIM: the Application ID URI of accessgate's API app (the resourceId of the PIM custom extension's azureAdTokenAuthentication), e.g. api://api.contoso.com/<client id>",
                );
            }
            return None;
        }
        let mut callers = HashSet::new();
        for (i, id) in raw
            .caller_app_ids
            .unwrap_or_else(|| vec![PIM_APP_ID.into()])
            .iter()
            .enumerate()
        {
            if settings::is_guid(id) {
                callers.insert(id.to_ascii_lowercase());
            } else {
                p.push(
                    "pim.caller_app_ids",
                    &format!("entry {} is not a GUID", i + 1),
                );
            }
        }
        if callers.is_empty() {
            p.push("pim.caller_app_ids", "must name at least one caller app id");
        }
        let mut never = Vec::new();
        for (i, id) in raw
            .never_auto_approve
            .unwrap_or_else(|| NEVER_AUTO_APPROVE.map(str::to_owned).to_vec())
            .iter()
            .enumerate()
        {
            if settings::is_guid(id) {
                never.push(id.to_ascii_lowercase());
            } else {
                p.push(
                    "pim.never_auto_approve",
                    &format!("entry {} is not a role definition id (a GUID)", i + 1),
                );
            }
        }
        let budget = |p: &mut Problems, key: &str, v: Option<u64>, default: u64| {
            let ms = v.unwrap_or(default);
            if !(100..=60_000).contains(&ms) {
                p.push(
                    key,
                    "must be 100-60000 ms, and below the extension's clientConfiguration.timeoutInMilliseconds",
                );
            }
            Duration::from_millis(ms)
        };
        let default = ExtensionSettings {
            budget: budget(p, "pim.budget_ms", raw.budget_ms, DEFAULT_BUDGET_MS),
            mode: raw.mode.unwrap_or(Mode::Enforce),
            post_approval: false,
        };
        let mut extensions = BTreeMap::new();
        for (name, e) in raw.extensions {
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                p.push(
                    &format!("pim.extensions.{name}"),
                    "the name is a URL segment (/api/pim/NAME): letters, digits, - and _ only",
                );
            }
            let ms = default.budget.as_millis() as u64;
            extensions.insert(
                name.clone(),
                ExtensionSettings {
                    budget: budget(
                        p,
                        &format!("pim.extensions.{name}.budget_ms"),
                        e.budget_ms,
                        ms,
                    ),
                    mode: e.mode.unwrap_or(default.mode),
                    post_approval: e.post_approval.unwrap_or(false),
                },
            );
        }
        Some(Settings {
            audiences,
            callers,
            never_auto_approve: never,
            default,
            extensions,
        })
    }
}
