//! Azure Resource Manager reads: one resource by id, with a managed identity token. Only
//! `doctor` uses it (the relay Logic App's trigger policy, the Function App's always-ready
//! instances); accessgate never writes to ARM.

pub mod settings;

use std::time::Duration;

use serde_json::Value;

use crate::endpoint::EndpointUrl;
use crate::outbound::transport_error;
use crate::secret::Secret;

pub use settings::Settings;

/// GETs `id` (an ARM resource id) at `api_version`: the status and the JSON body.
pub async fn get(
    http: &reqwest::Client,
    base: &EndpointUrl,
    token: &Secret,
    id: &str,
    api_version: &str,
) -> Result<(u16, Value), String> {
    let resp = http
        .get(base.join(id))
        .query(&[("api-version", api_version)])
        .bearer_auth(token.expose())
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| transport_error(&e).to_owned())?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}
