//! Managed identity endpoint, App Service / Functions flavour (`IDENTITY_ENDPOINT` =
//! `{base}/msi/token`, `IDENTITY_HEADER` = [`crate::EmulatorConfig::identity_header`]).
//!
//! Why: on the platform accessgate gets its tokens from this local endpoint; its errors (wrong
//! header, unknown identity, unknown resource) and outages must be reproducible.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::entra::{self, GRAPH_TOKEN_LIFETIME_SECS};
use crate::faults::{self, FaultTarget};
use crate::state::AppState;

/// The only `api-version` the App Service endpoint accepts.
pub const API_VERSION: &str = "2019-08-01";

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/msi/token", get(token))
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({
            "statusCode": status.as_u16(),
            "message": message,
            "correlationId": uuid::Uuid::new_v4(),
        })),
    )
        .into_response()
}

async fn token(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    state.lock().stats.managed_identity_requests += 1;
    if let Some(resp) = faults::apply(&state, FaultTarget::ManagedIdentity).await {
        return resp;
    }
    let header_ok = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == state.cfg.identity_header);
    if !header_ok {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"statusCode": 401, "message": "Unauthorized"})),
        )
            .into_response();
    }
    if query.get("api-version").map(String::as_str) != Some(API_VERSION) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("The api-version is missing or not supported: use {API_VERSION}."),
        );
    }
    let selectors: Vec<(&str, &String)> = ["client_id", "principal_id", "object_id", "mi_res_id"]
        .iter()
        .filter_map(|name| query.get(*name).map(|v| (*name, v)))
        .collect();
    let not_found = || {
        error(
            StatusCode::BAD_REQUEST,
            "No User Assigned or Delegated Managed Identity found for specified ClientId/ResourceId/PrincipalId.",
        )
    };
    let client_id = match selectors.as_slice() {
        [] => state.cfg.managed_identity_client_id.clone(),
        [(name, value)] => {
            let inner = state.lock();
            let ua = inner.principals.get(&state.cfg.user_assigned_client_id);
            let matches = ua.is_some_and(|p| match *name {
                "client_id" => p.client_id.eq_ignore_ascii_case(value),
                "principal_id" | "object_id" => p.object_id.eq_ignore_ascii_case(value),
                // The ARM id of the user-assigned identity ends with its name; the emulator
                // names it after its client id.
                _ => value
                    .to_ascii_lowercase()
                    .ends_with(&format!("/{}", p.client_id.to_ascii_lowercase())),
            });
            drop(inner);
            if !matches {
                return not_found();
            }
            state.cfg.user_assigned_client_id.clone()
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "Only one of client_id, principal_id, object_id or mi_res_id may be given.",
            );
        }
    };
    let resource = query.get("resource").cloned().unwrap_or_default();
    let Some(audience) = entra::audience_of_resource(&resource) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "AADSTS500011: The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.",
                state.cfg.tenant_id
            ),
        );
    };
    match entra::mint_access_token(&state, &client_id, audience) {
        Ok(access_token) => {
            tracing::debug!(%client_id, %audience, "managed identity token issued");
            let expires_on = jiff::Timestamp::now().as_second() + GRAPH_TOKEN_LIFETIME_SECS;
            Json(json!({
                "access_token": access_token,
                "expires_on": expires_on.to_string(),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": client_id,
            }))
            .into_response()
        }
        Err(err) => {
            tracing::error!(error = %err, "minting a managed identity token failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error issuing a token.",
            )
        }
    }
}
