//! Azure Resource Manager, as far as accessgate's `doctor` reads it: `GET` of a resource by id
//! (a Logic App workflow, a Function App) with `api-version`, behind an access token for the
//! ARM audience, and `403` for a principal without a read role on it. Tests put resources with
//! `PUT /_emulator/arm/resources` (or [`crate::Emulator::put_arm_resource`]).
//!
//! Emulator choices: error bodies are ARM's `{"error":{"code","message"}}` with the codes ARM
//! documents (`MissingApiVersionParameter`, `AuthorizationFailed`, `ResourceNotFound`,
//! `InvalidAuthenticationToken`); a resource without `readers` is readable by every principal.

use std::collections::HashMap;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::entra;
use crate::state::{AppState, Shared};

/// What ARM's tokens carry as `aud` (the managed identity `resource` is `https://management.azure.com/`).
pub const ARM_AUDIENCE: &str = "https://management.azure.com/";

/// One resource: its JSON as ARM answers it, and who may read it (object ids; empty = all).
#[derive(Debug, Clone, Default)]
pub struct ArmResource {
    pub body: Value,
    pub readers: Vec<String>,
}

/// Body of `PUT /_emulator/arm/resources`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutResource {
    pub id: String,
    pub resource: Value,
    #[serde(default)]
    pub readers: Vec<String>,
}

fn arm_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Stores a resource under its id (compared without case, as ARM does).
pub(crate) fn put(state: &Shared, r: PutResource) -> anyhow::Result<()> {
    if !r.id.to_ascii_lowercase().starts_with("/subscriptions/") {
        anyhow::bail!("an ARM resource id starts with /subscriptions/");
    }
    let mut body = r.resource;
    if let Value::Object(m) = &mut body {
        m.entry("id").or_insert_with(|| json!(r.id));
        let name = r.id.rsplit('/').next().unwrap_or_default().to_owned();
        m.entry("name").or_insert_with(|| json!(name));
    }
    state.lock().arm.insert(
        r.id.to_ascii_lowercase(),
        ArmResource {
            body,
            readers: r.readers.iter().map(|o| o.to_ascii_lowercase()).collect(),
        },
    );
    Ok(())
}

async fn get_resource(
    State(state): State<AppState>,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let id = format!("/subscriptions/{rest}");
    if query.get("api-version").is_none_or(String::is_empty) {
        return arm_error(
            StatusCode::BAD_REQUEST,
            "MissingApiVersionParameter",
            "The api-version query parameter (?api-version=) is required for all requests.",
        );
    }
    let caller = match entra::verify_access_token(
        &state,
        &headers,
        &[ARM_AUDIENCE, ARM_AUDIENCE.trim_end_matches('/')],
    ) {
        Ok(c) => c,
        Err(e) => {
            return arm_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                &e.to_string(),
            );
        }
    };
    let found = state.lock().arm.get(&id.to_ascii_lowercase()).cloned();
    match found {
        None => arm_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            &format!("The Resource '{id}' was not found."),
        ),
        Some(r)
            if !r.readers.is_empty() && !r.readers.contains(&caller.oid.to_ascii_lowercase()) =>
        {
            arm_error(
                StatusCode::FORBIDDEN,
                "AuthorizationFailed",
                &format!(
                    "The client with object id '{}' does not have authorization to perform action 'read' over scope '{id}' or the scope is invalid.",
                    caller.oid
                ),
            )
        }
        Some(r) => Json(r.body).into_response(),
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/subscriptions/{*rest}", get(get_resource))
}
