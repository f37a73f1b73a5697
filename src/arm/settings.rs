//! `[azure]`: where Azure Resource Manager is, and which Function App accessgate runs as; what
//! `doctor` reads the relay Logic App's policy and the always-ready setting from.

use serde::Deserialize;

use crate::credentials::settings::Cloud;
use crate::endpoint::EndpointUrl;
use crate::settings::{self, Problems};

/// `[azure]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    management_url: Option<String>,
    function_app: Option<String>,
}

/// Keys of `[azure]` whose environment values stay strings.
pub const STRING_KEYS: &[&str] = &["management_url", "function_app"];

/// `[azure]`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub management_url: Option<EndpointUrl>,
    /// The managed identity `resource` of ARM in the configured cloud (its audience, which
    /// stays the cloud's when `management_url` points elsewhere, e.g. at the emulator).
    pub resource: String,
    /// The Function App's ARM resource id (infra sets `ACCESSGATE_AZURE__FUNCTION_APP`).
    pub function_app: Option<String>,
}

impl Settings {
    pub fn from_raw(raw: Raw, cloud: &Cloud, p: &mut Problems) -> Settings {
        let management_url = settings::endpoint(
            p,
            "azure.management_url",
            raw.management_url.as_deref().unwrap_or(cloud.management),
        );
        let function_app = raw.function_app.filter(|f| !f.trim().is_empty());
        if let Some(f) = &function_app {
            let parts: Vec<&str> = f.trim_matches('/').split('/').collect();
            let ok = matches!(parts.as_slice(),
                [s, sub, r, _, p, ns, sites, name]
                    if s.eq_ignore_ascii_case("subscriptions")
                        && settings::is_guid(sub)
                        && r.eq_ignore_ascii_case("resourceGroups")
                        && p.eq_ignore_ascii_case("providers")
                        && ns.eq_ignore_ascii_case("Microsoft.Web")
                        && sites.eq_ignore_ascii_case("sites")
                        && !name.is_empty());
            if !ok {
                p.push(
                    "azure.function_app",
                    "must be the Function App's ARM resource id: /subscriptions/{guid}/resourceGroups/{rg}/providers/Microsoft.Web/sites/{name}",
                );
            }
        }
        Settings {
            management_url,
            resource: format!("{}/", cloud.management),
            function_app,
        }
    }
}
