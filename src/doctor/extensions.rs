//! `doctor`'s "extension NAME" checks: each `[extensions.NAME]` against the custom extension
//! Entra holds for its Logic App (found by the endpoint's subscription, resource group and
//! workflow name, the `p` its PoP tokens are bound to): authentication type, the `u` host, the
//! endpoint URL for the ingress mode, and the callback timeout against the worker's deadline
//! margin (entitlement management) or against the window accessgate counts (Lifecycle
//! Workflows).

use std::time::{Duration, Instant};

use serde_json::Value;

use super::Check;
use crate::auth::settings::{ARM_HOST, ExtensionKind, normalize_resource};
use crate::auth::{Extension, IngressMode};
use crate::config::Config;
use crate::graph::GraphClient;

/// The `p` a Logic App endpoint configuration binds its tokens to, normalised like
/// `Extension::resource_key`.
fn bound_resource(endpoint: &Value) -> Option<String> {
    let s = |k: &str| endpoint[k].as_str().filter(|v| !v.is_empty());
    Some(normalize_resource(&format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Logic/workflows/{}",
        s("subscriptionId")?,
        s("resourceGroupName")?,
        s("logicAppWorkflowName")?
    )))
}

/// Why a list could not be read: (HTTP status if Graph answered, the text).
async fn list(
    graph: &GraphClient,
    config: &Config,
    path: &str,
) -> Result<Vec<Value>, (Option<u16>, String)> {
    let url = config.graph.base_url.join(&format!("/v1.0{path}"));
    let deadline = Instant::now() + config.graph.timeout * 2;
    match graph.get_page(&url, deadline).await {
        Ok((200, v)) => Ok(v["value"].as_array().cloned().unwrap_or_default()),
        Ok((status, v)) => Err((
            Some(status),
            format!(
                "HTTP {status} {}",
                v["error"]["code"].as_str().unwrap_or_default()
            ),
        )),
        Err(e) => Err((None, e.to_string())),
    }
}

/// The callback timeout: the schema's `timeoutDuration`, or the docs' answers'
/// `durationBeforeTimeout`.
fn timeout_text(v: &Value) -> Option<&str> {
    let c = &v["callbackConfiguration"];
    c["timeoutDuration"]
        .as_str()
        .or_else(|| c["durationBeforeTimeout"].as_str())
}

fn duration_of(v: &Value) -> Option<Duration> {
    timeout_text(v).and_then(crate::callout::parse_iso_duration)
}

/// What is wrong with one matching extension (empty: nothing).
fn findings(config: &Config, ext: &Extension, entra: &Value) -> (Vec<String>, Vec<String>) {
    let (mut fails, mut warns) = (Vec::new(), Vec::new());
    let auth = entra["authenticationConfiguration"]["@odata.type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('#');
    if auth != "microsoft.graph.azureAdPopTokenAuthentication" {
        let bearer_ok = entra["authenticationConfiguration"]["resourceId"]
            .as_str()
            .is_some_and(|r| config.inbound.audiences.iter().any(|a| a == r));
        let msg = format!(
            "authentication is {auth:?}, not Proof of Possession: accessgate checks Entra's PoP-signed calls (a legacy bearer extension cannot be converted: create a new one with accessgate setup)"
        );
        if bearer_ok {
            warns.push(msg)
        } else {
            fails.push(msg)
        }
    }
    if ext.host != ARM_HOST {
        warns.push(format!(
            "extensions.{}.host is {:?}: Entra binds a Logic App extension's tokens to u = {ARM_HOST}",
            ext.name, ext.host
        ));
    }
    let url = entra["endpointConfiguration"]["url"]
        .as_str()
        .unwrap_or_default();
    match config.inbound.mode {
        IngressMode::Direct if !url.contains("/api/elm") => warns.push(format!(
            "inbound.mode is direct, but the extension's endpoint url is {url:?}: Entra calls that, not accessgate's /api/elm (accessgate setup sets it)"
        )),
        IngressMode::Relay if url.contains("/api/elm") => warns.push(format!(
            "inbound.mode is relay, but the extension's endpoint url {url:?} is accessgate itself: set inbound.mode = \"direct\", or point the extension at the relay Logic App"
        )),
        _ => {}
    }
    let timeout = duration_of(entra);
    match ext.kind {
        ExtensionKind::EntitlementManagement => {
            let margin = config.worker.deadline_margin;
            match timeout {
                Some(t) if t <= margin => fails.push(format!(
                    "its callback timeout ({} s) is not above worker.deadline_margin_seconds ({} s): every callout would be past its deadline on arrival; raise the extension's timeout or lower the margin",
                    t.as_secs(),
                    margin.as_secs()
                )),
                Some(t) if t < margin * 2 => warns.push(format!(
                    "its callback timeout ({} s) leaves less than worker.deadline_margin_seconds ({} s) to decide and resume",
                    t.as_secs(),
                    margin.as_secs()
                )),
                Some(_) => {}
                None => warns.push("it names no callbackConfiguration.timeoutDuration".into()),
            }
        }
        ExtensionKind::LifecycleWorkflows => {
            if timeout != Some(ext.callback_timeout) {
                fails.push(format!(
                    "its callback timeout is {:?}, but accessgate counts the task's window from extensions.{}.callback_timeout ({} s): make them equal",
                    timeout_text(entra).unwrap_or("unset"),
                    ext.name,
                    ext.callback_timeout.as_secs()
                ));
            }
        }
    }
    (fails, warns)
}

async fn one(config: &Config, graph: &GraphClient, ext: &Extension) -> Check {
    let name = format!("extension {}", ext.name);
    let (where_, paths): (String, Vec<String>) = match ext.kind {
        ExtensionKind::EntitlementManagement if ext.catalog_ids.is_empty() => {
            return Check::warn(
                &name,
                "names no catalog_ids, so doctor cannot look the extension up in Entra",
                format!("set extensions.{}.catalog_ids (accessgate setup writes it)", ext.name),
            );
        }
        ExtensionKind::EntitlementManagement => (
            format!("catalog(s) {}", ext.catalog_ids.join(", ")),
            ext.catalog_ids
                .iter()
                .map(|c| {
                    format!("/identityGovernance/entitlementManagement/catalogs/{c}/customWorkflowExtensions")
                })
                .collect(),
        ),
        ExtensionKind::LifecycleWorkflows => (
            "Lifecycle Workflows".into(),
            vec!["/identityGovernance/lifecycleWorkflows/customTaskExtensions".into()],
        ),
    };
    let mut found = Vec::new();
    for p in &paths {
        match list(graph, config, p).await {
            Ok(items) => found.extend(items.into_iter().filter(|e| {
                bound_resource(&e["endpointConfiguration"]).as_deref()
                    == Some(ext.resource_key.as_str())
            })),
            Err((Some(404), e)) if ext.kind == ExtensionKind::EntitlementManagement => {
                return Check::fail(
                    &name,
                    format!("a catalog of {where_} does not exist in the tenant ({e})"),
                    format!("fix extensions.{}.catalog_ids", ext.name),
                );
            }
            Err((_, e)) => {
                return Check::warn(
                    &name,
                    format!("cannot read the custom extensions of {where_}: {e}"),
                    match ext.kind {
                        ExtensionKind::EntitlementManagement => {
                            "grant EntitlementManagement.Read.All, or a catalog role on the catalog"
                        }
                        ExtensionKind::LifecycleWorkflows => "grant LifecycleWorkflows.Read.All",
                    },
                );
            }
        }
    }
    if found.is_empty() {
        return Check::fail(
            &name,
            format!(
                "no custom extension in {where_} names the Logic App {} (the p accessgate expects)",
                ext.resource
            ),
            format!(
                "run accessgate setup, or fix extensions.{}.resource",
                ext.name
            ),
        );
    }
    // Every extension bound to the Logic App (a request and a pre-expiration one may share it).
    let (mut fails, mut warns, mut shown) = (Vec::new(), Vec::new(), Vec::new());
    for entra in &found {
        let (f, w) = findings(config, ext, entra);
        fails.extend(f);
        warns.extend(w);
        shown.push(format!(
            "{:?} ({}): {}, callback timeout {}, endpoint {}",
            entra["displayName"].as_str().unwrap_or_default(),
            entra["id"].as_str().unwrap_or_default(),
            entra["authenticationConfiguration"]["@odata.type"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("#microsoft.graph."),
            timeout_text(entra).unwrap_or("unset"),
            entra["endpointConfiguration"]["url"]
                .as_str()
                .unwrap_or("(the Logic App's trigger)")
        ));
    }
    Check::from_findings(
        &name,
        &shown.join("; "),
        &fails,
        &warns,
        "; matches the configuration",
    )
}

pub(super) async fn checks(config: &Config, graph: &GraphClient) -> Vec<super::Check> {
    let mut out = Vec::new();
    for ext in &config.extensions {
        out.push(one(config, graph, ext).await);
    }
    out
}
