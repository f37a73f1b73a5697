//! The setup file (docs/setup.md): which custom extensions `accessgate setup` makes the tenant
//! hold, where they point, and which assignment policies run them. Parsed into typed values;
//! every problem names its key, and all of them are reported at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::IngressMode;
use crate::endpoint::EndpointUrl;
use crate::settings::{ConfigErrors, Problems};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSpec {
    deployment: RawDeployment,
    access_packages: Option<RawElm>,
    lifecycle_workflows: Option<RawLcw>,
    pim: Option<RawPim>,
}

/// Values infra's outputs give (`azd env get-values`); each may be set here instead.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct RawDeployment {
    url: Option<String>,
    principal_id: Option<String>,
    logic_app_resource_id: Option<String>,
    logic_app_url: Option<String>,
    ingress_mode: Option<String>,
}

/// The environment names of infra's outputs (infra/main.bicep), in the order of [`RawDeployment`].
pub const OUTPUT_KEYS: [(&str, &str); 5] = [
    ("url", "ACCESSGATE_URL"),
    ("principal_id", "ACCESSGATE_PRINCIPAL_ID"),
    ("logic_app_resource_id", "ACCESSGATE_LOGIC_APP_RESOURCE_ID"),
    ("logic_app_url", "ACCESSGATE_LOGIC_APP_URL"),
    ("ingress_mode", "ACCESSGATE_INGRESS_MODE"),
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawElm {
    name: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    catalog: Option<String>,
    callback_timeout: Option<String>,
    assign_role: Option<bool>,
    policies: Vec<RawLink>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLink {
    access_package: Option<String>,
    policies: Vec<String>,
    stages: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawLcw {
    name: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    callback_timeout: Option<String>,
    logic_app_resource_id: Option<String>,
    logic_app_url: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawPim {
    name: Option<String>,
    display_name: Option<String>,
    description: Option<String>,
    resource_type: Option<String>,
    audience: Option<String>,
    timeout_ms: Option<u32>,
    maximum_retries: Option<u32>,
    post_approval: Option<bool>,
}

/// An object named by id or by display name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ref {
    Id(String),
    Name(String),
}

impl Ref {
    fn parse(s: &str) -> Ref {
        match uuid::Uuid::parse_str(s.trim()) {
            Ok(u) => Ref::Id(u.to_string()),
            Err(_) => Ref::Name(s.trim().to_owned()),
        }
    }
    /// Whether an object with this id and display name is the one named.
    pub fn matches(&self, id: &str, display_name: &str) -> bool {
        match self {
            Ref::Id(i) => i.eq_ignore_ascii_case(id),
            Ref::Name(n) => n.eq_ignore_ascii_case(display_name),
        }
    }
}

impl std::fmt::Display for Ref {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ref::Id(i) => write!(f, "{i}"),
            Ref::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// A Logic App by its ARM resource id: what a `logicAppTriggerEndpointConfiguration` names and
/// what Entra binds its PoP tokens to (`p`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicApp {
    pub resource_id: String,
    pub subscription_id: String,
    pub resource_group: String,
    pub name: String,
}

impl LogicApp {
    pub fn parse(id: &str) -> Option<LogicApp> {
        let parts: Vec<&str> = id.trim().trim_matches('/').split('/').collect();
        match parts.as_slice() {
            [s, sub, r, rg, p, ns, w, name]
                if s.eq_ignore_ascii_case("subscriptions")
                    && r.eq_ignore_ascii_case("resourceGroups")
                    && p.eq_ignore_ascii_case("providers")
                    && ns.eq_ignore_ascii_case("Microsoft.Logic")
                    && w.eq_ignore_ascii_case("workflows")
                    && uuid::Uuid::parse_str(sub).is_ok()
                    && !rg.is_empty()
                    && !name.is_empty() =>
            {
                Some(LogicApp {
                    resource_id: format!("/{}", parts.join("/")),
                    subscription_id: (*sub).to_owned(),
                    resource_group: (*rg).to_owned(),
                    name: (*name).to_owned(),
                })
            }
            _ => None,
        }
    }
}

/// The stages an extension can run at (`accessPackageCustomExtensionStage`, v1.0 and beta).
pub const STAGES: [&str; 6] = [
    "assignmentRequestCreated",
    "assignmentRequestApproved",
    "assignmentRequestGranted",
    "assignmentRequestRemoved",
    "assignmentFourteenDaysBeforeExpiration",
    "assignmentOneDayBeforeExpiration",
];

/// Which policies of one access package run the extension, and at which stages.
#[derive(Debug, Clone)]
pub struct Link {
    pub access_package: Ref,
    /// Empty: every assignment policy of the package.
    pub policies: Vec<Ref>,
    /// Members of [`STAGES`], exactly as Graph spells them.
    pub stages: Vec<&'static str>,
}

#[derive(Debug, Clone)]
pub struct ElmSpec {
    /// `[extensions.NAME]`.
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub catalog: Ref,
    /// `callbackConfiguration.timeoutDuration`, as written and as a duration.
    pub callback_timeout: (String, Duration),
    /// Give accessgate's identity "Access package assignment manager" on the catalog.
    pub assign_role: bool,
    pub links: Vec<Link>,
}

#[derive(Debug, Clone)]
pub struct LcwSpec {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub callback_timeout: (String, Duration),
    pub logic_app: LogicApp,
    pub logic_app_url: Option<String>,
}

/// `resourceType` of a PIM custom extension.
pub const PIM_RESOURCE_TYPES: [&str; 3] = ["entraRoles", "entraGroups", "azureResources"];

#[derive(Debug, Clone)]
pub struct PimSpec {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub resource_type: &'static str,
    /// `azureAdTokenAuthentication.resourceId`: the Application ID URI PIM's tokens carry.
    pub audience: String,
    pub timeout_ms: u32,
    pub maximum_retries: u32,
    pub post_approval: bool,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    /// accessgate's base URL (the Function App's).
    pub url: Option<EndpointUrl>,
    /// accessgate's identity (object id): who gets the catalog role.
    pub principal_id: Option<String>,
    pub logic_app: Option<LogicApp>,
    pub logic_app_url: Option<String>,
    pub mode: IngressMode,
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub deployment: Deployment,
    pub elm: Option<ElmSpec>,
    pub lcw: Option<LcwSpec>,
    pub pim: Option<PimSpec>,
}

/// Reads `KEY=value` / `KEY="value"` lines (the output of `azd env get-values`, or its `.env`).
pub fn read_outputs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("export ").unwrap_or(l);
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

fn duration(
    p: &mut Problems,
    key: &str,
    v: Option<&str>,
    default: &str,
    range: (Duration, Duration),
    range_text: &str,
) -> (String, Duration) {
    let text = v.unwrap_or(default).trim().to_owned();
    match crate::callout::parse_iso_duration(&text) {
        Some(d) if (range.0..=range.1).contains(&d) => (text, d),
        _ => {
            p.push(
                key,
                &format!("must be an ISO 8601 duration from {range_text}"),
            );
            (default.to_owned(), range.1)
        }
    }
}

fn https_url(p: &mut Problems, key: &str, v: &str) -> Option<String> {
    // The trigger URL carries `?api-version=…`, which EndpointUrl refuses: check the rest.
    let (base, query) = v.split_once('?').unwrap_or((v, ""));
    // The portal's "HTTP POST URL" carries a SAS signature: a secret, and useless (SAS is off;
    // Entra signs with PoP). The value is not repeated.
    if query
        .split('&')
        .any(|kv| matches!(kv.split('=').next(), Some("sig" | "sp" | "sv")))
    {
        p.push(
            key,
            "carries a SAS signature (sig, sp, sv): give the trigger URL without it (infra's ACCESSGATE_LOGIC_APP_URL is the basePath with api-version only)",
        );
        return None;
    }
    match EndpointUrl::parse(base) {
        Ok(_) => Some(v.trim().to_owned()),
        Err(e) => {
            p.push(key, &e.to_string());
            None
        }
    }
}

fn logic_app(p: &mut Problems, key: &str, v: Option<&str>) -> Option<LogicApp> {
    let v = v?;
    let la = LogicApp::parse(v);
    if la.is_none() {
        p.push(
            key,
            "must be a Logic App's ARM resource id: /subscriptions/{guid}/resourceGroups/{rg}/providers/Microsoft.Logic/workflows/{name}",
        );
    }
    la
}

const DAY: u64 = 86_400;

impl Spec {
    /// Parses the setup file. `outputs` are infra's outputs (file or environment), used where
    /// `[deployment]` leaves a value out.
    pub fn parse(text: &str, outputs: &BTreeMap<String, String>) -> Result<Spec, ConfigErrors> {
        let mut p = Problems::default();
        let raw: RawSpec = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                p.push("setup file", e.message());
                return Err(ConfigErrors(p.into_parts().0));
            }
        };
        let d = raw.deployment;
        let out = |k: &str, v: &Option<String>| -> Option<String> {
            v.clone()
                .or_else(|| {
                    OUTPUT_KEYS
                        .iter()
                        .find(|(key, _)| *key == k)
                        .and_then(|(_, env)| outputs.get(*env).cloned())
                })
                .filter(|v| !v.trim().is_empty())
        };
        let url = out("url", &d.url).and_then(|u| match EndpointUrl::parse(&u) {
            Ok(u) => Some(u),
            Err(e) => {
                p.push("deployment.url (ACCESSGATE_URL)", &e.to_string());
                None
            }
        });
        let principal_id = out("principal_id", &d.principal_id).and_then(|v| {
            match uuid::Uuid::parse_str(v.trim()) {
                Ok(u) => Some(u.to_string()),
                Err(_) => {
                    p.push(
                        "deployment.principal_id (ACCESSGATE_PRINCIPAL_ID)",
                        "must be the object id (GUID) of accessgate's identity",
                    );
                    None
                }
            }
        });
        let la_key = "deployment.logic_app_resource_id (ACCESSGATE_LOGIC_APP_RESOURCE_ID)";
        let la = logic_app(
            &mut p,
            la_key,
            out("logic_app_resource_id", &d.logic_app_resource_id).as_deref(),
        );
        let la_url = out("logic_app_url", &d.logic_app_url).and_then(|u| {
            https_url(
                &mut p,
                "deployment.logic_app_url (ACCESSGATE_LOGIC_APP_URL)",
                &u,
            )
        });
        let mode = match out("ingress_mode", &d.ingress_mode).as_deref() {
            None | Some("relay") => IngressMode::Relay,
            Some("direct") => IngressMode::Direct,
            Some(_) => {
                p.push(
                    "deployment.ingress_mode (ACCESSGATE_INGRESS_MODE)",
                    "must be relay or direct",
                );
                IngressMode::Relay
            }
        };
        let deployment = Deployment {
            url,
            principal_id,
            logic_app: la,
            logic_app_url: la_url,
            mode,
        };

        let elm = raw.access_packages.map(|e| {
            let catalog = match e.catalog.as_deref() {
                Some(c) if !c.trim().is_empty() => Ref::parse(c),
                _ => {
                    p.push(
                        "access_packages.catalog",
                        "required: the catalog (id or display name) the extension is created in",
                    );
                    Ref::Name(String::new())
                }
            };
            let callback_timeout = duration(
                &mut p,
                "access_packages.callback_timeout",
                e.callback_timeout.as_deref(),
                "P1D",
                (Duration::from_secs(300), Duration::from_secs(14 * DAY)),
                "PT5M to P14D",
            );
            let links = e
                .policies
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let at = format!("access_packages.policies[{}]", i + 1);
                    let access_package = match l.access_package.as_deref() {
                        Some(a) if !a.trim().is_empty() => Ref::parse(a),
                        _ => {
                            p.push(
                                &format!("{at}.access_package"),
                                "required: the access package (id or display name)",
                            );
                            Ref::Name(String::new())
                        }
                    };
                    let mut stages = Vec::new();
                    for s in &l.stages {
                        match STAGES.iter().find(|k| k.eq_ignore_ascii_case(s.trim())) {
                            Some(k) if !stages.contains(k) => stages.push(*k),
                            Some(_) => {}
                            None => p.push(
                                &format!("{at}.stages"),
                                &format!("unknown stage {s:?}: one of {}", STAGES.join(", ")),
                            ),
                        }
                    }
                    if l.stages.is_empty() {
                        p.push(
                            &format!("{at}.stages"),
                            &format!("name at least one stage: {}", STAGES.join(", ")),
                        );
                    }
                    Link {
                        access_package,
                        policies: l.policies.iter().map(|s| Ref::parse(s)).collect(),
                        stages,
                    }
                })
                .collect();
            ElmSpec {
                name: config_name(&mut p, "access_packages.name", e.name, "elm"),
                display_name: e.display_name.unwrap_or_else(|| "accessgate".into()),
                description: e.description.unwrap_or_else(|| {
                    "accessgate: separation-of-duties, HR and ticket checks before access is granted"
                        .into()
                }),
                catalog,
                callback_timeout,
                assign_role: e.assign_role.unwrap_or(true),
                links,
            }
        });
        if let Some(e) = &elm {
            if deployment.logic_app.is_none() {
                p.push(
                    la_key,
                    "required for [access_packages]: the Logic App the extension names (infra's relay Logic App; azd output ACCESSGATE_LOGIC_APP_RESOURCE_ID)",
                );
            }
            match deployment.mode {
                IngressMode::Relay if deployment.logic_app_url.is_none() => p.push(
                    "deployment.logic_app_url (ACCESSGATE_LOGIC_APP_URL)",
                    "required in relay mode: the relay Logic App's trigger URL (azd output)",
                ),
                IngressMode::Direct if deployment.url.is_none() => p.push(
                    "deployment.url (ACCESSGATE_URL)",
                    "required in direct mode: accessgate's base URL (azd output)",
                ),
                _ => {}
            }
            if e.assign_role && deployment.principal_id.is_none() {
                p.push(
                    "deployment.principal_id (ACCESSGATE_PRINCIPAL_ID)",
                    "required to give accessgate's identity its catalog role (or set access_packages.assign_role = false)",
                );
            }
        }

        let lcw = raw.lifecycle_workflows.map(|l| {
            let key = "lifecycle_workflows.logic_app_resource_id";
            let la = logic_app(&mut p, key, l.logic_app_resource_id.as_deref());
            if l.logic_app_resource_id.is_none() {
                p.push(
                    key,
                    "required: the Logic App this custom task extension names (its own: Lifecycle Workflows signs for a different caller than entitlement management)",
                );
            }
            let logic_app_url = l
                .logic_app_url
                .as_deref()
                .and_then(|u| https_url(&mut p, "lifecycle_workflows.logic_app_url", u));
            LcwSpec {
                name: config_name(&mut p, "lifecycle_workflows.name", l.name, "lcw"),
                display_name: l.display_name.unwrap_or_else(|| "accessgate tasks".into()),
                description: l
                    .description
                    .unwrap_or_else(|| "accessgate: checks and tickets for workflow tasks".into()),
                callback_timeout: duration(
                    &mut p,
                    "lifecycle_workflows.callback_timeout",
                    l.callback_timeout.as_deref(),
                    "PT3H",
                    (Duration::from_secs(300), Duration::from_secs(3 * 3600)),
                    "PT5M to PT3H",
                ),
                logic_app: la.unwrap_or_else(|| LogicApp {
                    resource_id: String::new(),
                    subscription_id: String::new(),
                    resource_group: String::new(),
                    name: String::new(),
                }),
                logic_app_url,
            }
        });

        let pim = raw.pim.map(|r| {
            let resource_type = match r.resource_type.as_deref() {
                None => "entraRoles",
                Some(t) => PIM_RESOURCE_TYPES
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(t.trim()))
                    .copied()
                    .unwrap_or_else(|| {
                        p.push(
                            "pim.resource_type",
                            &format!("must be one of {}", PIM_RESOURCE_TYPES.join(", ")),
                        );
                        "entraRoles"
                    }),
            };
            let audience = r.audience.unwrap_or_default();
            if audience.trim().is_empty() {
                p.push(
                    "pim.audience",
                    "required: the Application ID URI of accessgate's API app (PIM's tokens carry it as aud)",
                );
            }
            if deployment.url.is_none() {
                p.push(
                    "deployment.url (ACCESSGATE_URL)",
                    "required for [pim]: PIM calls accessgate's /api/pim directly",
                );
            }
            let timeout_ms = r.timeout_ms.unwrap_or(10_000);
            if !(1000..=30_000).contains(&timeout_ms) {
                p.push("pim.timeout_ms", "must be from 1000 to 30000");
            }
            PimSpec {
                name: config_name(&mut p, "pim.name", r.name, "pim"),
                display_name: r.display_name.unwrap_or_else(|| "accessgate PIM".into()),
                description: r
                    .description
                    .unwrap_or_else(|| "accessgate: ticket and SoD checks before activation".into()),
                resource_type,
                audience: audience.trim().to_owned(),
                timeout_ms,
                maximum_retries: r.maximum_retries.unwrap_or(1).min(3),
                post_approval: r.post_approval.unwrap_or(false),
            }
        });
        if let (Some(e), Some(l)) = (&elm, &lcw)
            && e.name == l.name
        {
            p.push(
                "lifecycle_workflows.name",
                "must differ from access_packages.name: each names its own [extensions.NAME]",
            );
        }
        if elm.is_none() && lcw.is_none() && pim.is_none() {
            p.push(
                "setup file",
                "names nothing to set up: add [access_packages], [lifecycle_workflows] or [pim]",
            );
        }
        if p.is_empty() {
            Ok(Spec {
                deployment,
                elm,
                lcw,
                pim,
            })
        } else {
            Err(ConfigErrors(p.into_parts().0))
        }
    }

    pub fn load(path: &Path, outputs: &BTreeMap<String, String>) -> Result<Spec, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(t) => Spec::parse(&t, outputs),
            Err(e) => {
                let mut p = Problems::default();
                p.push(
                    "setup file",
                    &format!("cannot read {}: {e}", path.display()),
                );
                Err(ConfigErrors(p.into_parts().0))
            }
        }
    }
}

/// A configuration key: `[extensions.NAME]` (letters, digits, `_`, `-`).
fn config_name(p: &mut Problems, key: &str, v: Option<String>, default: &str) -> String {
    let v = v.unwrap_or_else(|| default.into());
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        p.push(
            key,
            "must be letters, digits, _ or - (it names the configuration section)",
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const LA: &str = "/subscriptions/38ab2ccc-3747-4567-b36b-9478f5602f0d/resourceGroups/rg-ag/providers/Microsoft.Logic/workflows/logic-ag";

    fn outputs() -> BTreeMap<String, String> {
        read_outputs(&format!(
            "ACCESSGATE_URL=\"https://func-ag.azurewebsites.net\"\nACCESSGATE_PRINCIPAL_ID=\"5f2c3b1e-0000-4000-8000-000000000001\"\nACCESSGATE_LOGIC_APP_RESOURCE_ID=\"{LA}\"\nACCESSGATE_LOGIC_APP_URL=\"https://prod-1.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=2016-10-01\"\n# comment\n"
        ))
    }

    #[test]
    fn reads_azd_outputs_and_fills_the_deployment() {
        let spec = Spec::parse(
            "[access_packages]\ncatalog = \"General\"\n[[access_packages.policies]]\naccess_package = \"Sales\"\nstages = [\"AssignmentRequestCreated\"]\n",
            &outputs(),
        )
        .unwrap();
        let la = spec.deployment.logic_app.unwrap();
        assert_eq!(la.name, "logic-ag");
        assert_eq!(la.resource_group, "rg-ag");
        assert_eq!(spec.deployment.mode, IngressMode::Relay);
        let elm = spec.elm.unwrap();
        assert_eq!(elm.name, "elm");
        assert_eq!(elm.catalog, Ref::Name("General".into()));
        // Liberal in, exact out: the stage is sent as Graph spells it.
        assert_eq!(elm.links[0].stages, vec!["assignmentRequestCreated"]);
        assert_eq!(elm.callback_timeout.0, "P1D");
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let p = Spec::parse(
            "[access_packages]\ncallback_timeout = \"P30D\"\n[[access_packages.policies]]\nstages = [\"whenever\"]\n[pim]\nresource_type = \"x\"\n",
            &BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        for key in [
            "access_packages.catalog",
            "access_packages.callback_timeout",
            "access_packages.policies[1].access_package",
            "access_packages.policies[1].stages",
            "deployment.logic_app_resource_id",
            "deployment.principal_id",
            "pim.resource_type",
            "pim.audience",
            "deployment.url",
        ] {
            assert!(p.contains(key), "{key} missing from: {p}");
        }
    }

    #[test]
    fn refuses_plain_http_off_loopback_and_bad_resource_ids() {
        let mut o = outputs();
        o.insert("ACCESSGATE_URL".into(), "http://func-ag.example".into());
        o.insert(
            "ACCESSGATE_LOGIC_APP_RESOURCE_ID".into(),
            "/subscriptions/x/logic".into(),
        );
        let p = Spec::parse("[access_packages]\ncatalog = \"c\"\n", &o)
            .unwrap_err()
            .to_string();
        assert!(p.contains("deployment.url"), "{p}");
        assert!(p.contains("deployment.logic_app_resource_id"), "{p}");
        assert!(LogicApp::parse(LA).is_some());
    }

    #[test]
    fn the_example_setup_file_parses() {
        let spec = Spec::parse(include_str!("../../examples/setup.toml"), &outputs()).unwrap();
        let elm = spec.elm.unwrap();
        assert_eq!(elm.links.len(), 2);
        assert_eq!(elm.name, "elm");
    }

    #[test]
    fn a_sas_signed_trigger_url_is_refused_without_repeating_it() {
        let mut o = outputs();
        o.insert(
            "ACCESSGATE_LOGIC_APP_URL".into(),
            "https://prod-1.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?api-version=2016-10-01&sp=%2Ftriggers&sv=1.0&sig=s3cr3tSIGvalue".into(),
        );
        let p = Spec::parse("[access_packages]\ncatalog = \"c\"\n", &o)
            .unwrap_err()
            .to_string();
        assert!(p.contains("SAS signature"), "{p}");
        assert!(!p.contains("s3cr3tSIGvalue"), "{p}");
    }
}
