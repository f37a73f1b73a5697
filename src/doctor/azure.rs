//! `doctor`'s checks of what lives in Azure Resource Manager: the relay Logic App (relay mode:
//! its trigger admits only entitlement management's PoP-signed calls, SAS is off, and it
//! forwards to accessgate with a managed identity token accessgate accepts) and the Function
//! App's always-ready instances (Entra waits at most 2 s for the `202`). Read with accessgate's
//! managed identity, which needs Reader on both (infra gives it).

use std::sync::Arc;

use serde_json::Value;

use super::Check;
use crate::auth::settings::{ARM_HOST, ELM_APP_ID, ExtensionKind, normalize_resource};
use crate::auth::{Extension, IngressMode};
use crate::config::Config;
use crate::credentials::Credentials;
use crate::endpoint::EndpointUrl;
use crate::secret::Secret;

const LOGIC_API: &str = "2019-05-01";
const SITE_API: &str = "2024-04-01";
const READER_FIX: &str = "give accessgate's managed identity the Reader role on the resource (infra/modules/roles.bicep does)";

fn claim<'a>(policy: &'a Value, name: &str) -> Option<&'a str> {
    policy["claims"]
        .as_array()?
        .iter()
        .find(|c| {
            c["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
        .and_then(|c| c["value"].as_str())
}

/// What is wrong with the relay Logic App (fails, warnings).
fn relay_findings(config: &Config, ext: &Extension, la: &Value) -> (Vec<String>, Vec<String>) {
    let (mut fails, mut warns) = (Vec::new(), Vec::new());
    let props = &la["properties"];
    if !props["state"]
        .as_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("Enabled"))
    {
        fails.push(format!(
            "the Logic App is {:?}, not Enabled: Entra's callouts are refused",
            props["state"].as_str().unwrap_or("unknown")
        ));
    }
    let triggers = &props["accessControl"]["triggers"];
    let issuer = format!("https://sts.windows.net/{}/", config.identity.tenant_id);
    let policies: Vec<&Value> = triggers["openAuthenticationPolicies"]["policies"]
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default();
    let pop = policies.iter().find(|p| {
        p["type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("AADPOP"))
    });
    match pop {
        None => fails.push(
            "its trigger has no AADPOP authorization policy: anyone who learns the trigger URL can start it (deploy Microsoft's policy: iss, appid, m, u, p)".into(),
        ),
        Some(p) => {
            let expect = [
                ("iss", issuer.clone()),
                ("appid", ELM_APP_ID.to_owned()),
                ("m", "POST".to_owned()),
                ("u", ARM_HOST.to_owned()),
            ];
            for (name, want) in expect {
                if !claim(p, name).is_some_and(|v| v.eq_ignore_ascii_case(&want)) {
                    fails.push(format!(
                        "its AADPOP policy's {name} claim is {:?}, not {want:?}",
                        claim(p, name).unwrap_or("missing")
                    ));
                }
            }
            if claim(p, "p").map(normalize_resource).as_deref() != Some(ext.resource_key.as_str()) {
                fails.push(format!(
                    "its AADPOP policy's p claim is {:?}, not the Logic App's own id {:?}",
                    claim(p, "p").unwrap_or("missing"),
                    ext.resource
                ));
            }
        }
    }
    if !triggers["sasAuthenticationPolicy"]["state"]
        .as_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("Disabled"))
    {
        warns.push("SAS is not disabled on its trigger: a URL with its sig can start it without Entra's PoP (set accessControl.triggers.sasAuthenticationPolicy.state = Disabled)".into());
    }
    let actions: Vec<&Value> = props["definition"]["actions"]
        .as_object()
        .map(|m| m.values().collect())
        .unwrap_or_default();
    let forward = actions.iter().find(|a| {
        a["type"]
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case("Http"))
            && a["inputs"]["authentication"]["type"]
                .as_str()
                .is_some_and(|t| t.eq_ignore_ascii_case("ManagedServiceIdentity"))
    });
    match forward {
        None => fails.push(
            "it has no HTTP action with managed identity authentication: nothing forwards the callout to accessgate".into(),
        ),
        Some(a) => {
            let audience = a["inputs"]["authentication"]["audience"].as_str().unwrap_or("");
            let trimmed = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
            if !config
                .inbound
                .relay
                .audiences
                .iter()
                .any(|r| trimmed(r) == trimmed(audience))
            {
                fails.push(format!(
                    "its HTTP action asks for a token for {audience:?}, which inbound.relay_audiences does not accept: accessgate would refuse every forwarded callout"
                ));
            }
            let uri = a["inputs"]["uri"].as_str().unwrap_or("");
            if !uri.trim_end_matches('/').ends_with("/api/elm") {
                warns.push(format!("its HTTP action posts to {uri:?}, not accessgate's /api/elm"));
            }
        }
    }
    (fails, warns)
}

async fn read(
    http: &reqwest::Client,
    base: &EndpointUrl,
    token: &Secret,
    name: &str,
    id: &str,
    api: &str,
) -> Result<Value, Check> {
    match crate::arm::get(http, base, token, id, api).await {
        Ok((200, v)) => Ok(v),
        Ok((403, _)) => Err(Check::warn(
            name,
            format!("cannot read {id}: HTTP 403"),
            READER_FIX,
        )),
        Ok((404, _)) => Err(Check::fail(
            name,
            format!("{id} does not exist (HTTP 404)"),
            "deploy it (azd up), or fix the resource id in the configuration",
        )),
        Ok((status, v)) => Err(Check::warn(
            name,
            format!(
                "cannot read {id}: HTTP {status} {}",
                v["error"]["code"].as_str().unwrap_or_default()
            ),
            "try again; check that Azure Resource Manager is reachable",
        )),
        Err(e) => Err(Check::warn(
            name,
            format!("Azure Resource Manager unreachable: {e}"),
            "allow outbound HTTPS to management.azure.com (azure.management_url)",
        )),
    }
}

fn always_ready(site: &Value) -> Check {
    let name = "always ready";
    let props = &site["properties"];
    let sku = props["sku"].as_str().unwrap_or_default();
    let flex =
        props["functionAppConfig"].is_object() || sku.eq_ignore_ascii_case("FlexConsumption");
    if !flex {
        return if sku.eq_ignore_ascii_case("Dynamic") {
            Check::fail(
                name,
                "the Function App runs on the Consumption plan, which scales from zero: a cold start takes far longer than the 2 s Entra waits for the 202",
                "move it to Flex Consumption with an always-ready instance, or Premium (infra's hostingPlan)",
            )
        } else {
            Check::pass(
                name,
                format!("plan {sku:?} keeps its instances warm (not scale-from-zero)"),
            )
        };
    }
    let ready: i64 = props["functionAppConfig"]["scaleAndConcurrency"]["alwaysReady"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["name"].as_str().is_some_and(|n| {
                n.eq_ignore_ascii_case("http") || n.eq_ignore_ascii_case("function:ElmCallout")
            })
        })
        .filter_map(|r| r["instanceCount"].as_i64())
        .sum();
    if ready >= 1 {
        Check::pass(
            name,
            format!(
                "Flex Consumption with {ready} always-ready instance(s) for the HTTP functions"
            ),
        )
    } else {
        Check::fail(
            name,
            "Flex Consumption with no always-ready instance for the HTTP functions: after idling, a callout waits for a cold start (tens of seconds) and Entra gives up after 2 s",
            "set alwaysReady [{name: http, instanceCount: 1}] (azd env set ACCESSGATE_ALWAYS_READY 1; azd provision)",
        )
    }
}

pub(super) async fn checks(
    config: &Config,
    http: &reqwest::Client,
    creds: &Arc<Credentials>,
) -> Vec<Check> {
    let relays: Vec<&Extension> = match config.inbound.mode {
        IngressMode::Relay => config
            .extensions
            .iter()
            .filter(|e| e.kind == ExtensionKind::EntitlementManagement)
            .collect(),
        IngressMode::Direct => Vec::new(),
    };
    if relays.is_empty() && config.azure.function_app.is_none() {
        return Vec::new();
    }
    let Some(base) = &config.azure.management_url else {
        return Vec::new();
    };
    let token = match creds.managed_identity().token(&config.azure.resource).await {
        Ok(t) => t.token,
        Err(e) => {
            return vec![Check::warn(
                "azure resources",
                format!("skipped: no managed identity token for Azure Resource Manager ({e})"),
                "run doctor where accessgate runs (the Function App's identity reads the relay Logic App and the always-ready setting)",
            )];
        }
    };
    let mut out = Vec::new();
    for ext in relays {
        let name = format!("relay {}", ext.name);
        match read(http, base, &token, &name, &ext.resource, LOGIC_API).await {
            Ok(la) => {
                let (fails, warns) = relay_findings(config, ext, &la);
                let seen = format!("Logic App {}", la["name"].as_str().unwrap_or(&ext.resource));
                out.push(Check::from_findings(
                    &name,
                    &seen,
                    &fails,
                    &warns,
                    ": admits only entitlement management's PoP, forwards with a token accessgate accepts",
                ));
            }
            Err(c) => out.push(c),
        }
    }
    if let Some(site) = &config.azure.function_app {
        match read(http, base, &token, "always ready", site, SITE_API).await {
            Ok(v) => out.push(always_ready(&v)),
            Err(c) => out.push(c),
        }
    }
    out
}
