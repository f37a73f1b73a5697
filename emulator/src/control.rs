//! The `/_emulator/*` routes that drive and inspect the emulator (key rotation, token minting,
//! request registration, resumes, stats, faults, sending callouts), and the assembly of the
//! whole router.
//!
//! Why: tests and the demo run the emulator as a separate process too, so everything the
//! in-process [`crate::Emulator`] handle can do is also reachable over HTTP.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router, middleware};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Emulator;
use crate::entra::{self, MintOptions};
use crate::faults::{self, FaultSpec};
use crate::graph::{self, RegisterRequest};
use crate::keyvault::{self, CertificateOptions};
use crate::msi;
use crate::principals::{self, Grants};
use crate::sender::{self, SendOptions};
use crate::state::AppState;
use crate::tickets;

/// Everything the emulator serves.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/_emulator/keys/rotate", post(rotate))
        .route("/_emulator/tokens/callout", post(mint_callout))
        .route("/_emulator/tokens/pop", post(mint_pop))
        .route("/_emulator/tokens/graph", post(mint_graph))
        .route("/_emulator/requests", post(register))
        .route("/_emulator/requests/{id}", get(request))
        .route("/_emulator/tasks", post(register_task))
        .route("/_emulator/tasks/{id}", get(task))
        .route("/_emulator/resumes", get(resumes))
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/faults", post(set_fault).delete(clear_faults))
        .route("/_emulator/callouts/send", post(send))
        .route("/_emulator/principals", get(principals_list))
        .route("/_emulator/principals/{client_id}", put(principal_grants))
        .route("/_emulator/workload-identity/token", post(federated_token))
        .route("/_emulator/apps/secret", post(app_secret))
        .route("/_emulator/keyvault/secrets/{name}", put(kv_secret))
        .route(
            "/_emulator/keyvault/certificates/{name}",
            post(kv_certificate),
        )
        .route("/_emulator/graph-calls", get(graph_calls))
        .route("/_emulator/world", post(world))
        .route("/_emulator/arm/resources", put(arm_resource))
        .route("/_emulator/device-user", put(device_user))
        .route("/_emulator/device", get(device_page))
        .route(
            "/_emulator/servicenow/credentials",
            put(sn_credentials).get(sn_credentials_get),
        )
        .route("/_emulator/servicenow/settings", put(sn_settings))
        .route("/_emulator/servicenow/calls", get(sn_calls))
        .route(
            "/_emulator/servicenow/webhook",
            put(sn_webhook).delete(sn_webhook_clear),
        )
        .route("/_emulator/servicenow/webhooks", get(sn_webhooks))
        .route("/_emulator/servicenow/tickets", get(sn_tickets))
        .route(
            "/_emulator/servicenow/tickets/{table}/{sys_id}/close",
            post(sn_close),
        )
        .route("/_emulator/servicenow/catalog-items", post(sn_catalog_item))
        .route("/_emulator/servicenow/closed-states", put(sn_closed_states))
        .nest(
            "/v1.0",
            graph::routes("v1.0").route_layer(middleware::from_fn_with_state(
                state.clone(),
                graph::record_call,
            )),
        )
        .nest(
            "/beta",
            graph::routes("beta").route_layer(middleware::from_fn_with_state(
                state.clone(),
                graph::record_call,
            )),
        )
        .merge(entra::routes())
        .merge(msi::routes())
        .merge(crate::arm::routes())
        .merge(keyvault::routes())
        .merge(crate::servicenow::routes())
        .fallback(not_found)
        .with_state(state)
}

fn control_error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, Json(json!({ "error": message.to_string() }))).into_response()
}

/// Parses an optional JSON body: empty means `T::default()`.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, serde_json::Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
}

fn bad_json(err: &serde_json::Error) -> Response {
    control_error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {err}"))
}

async fn not_found() -> Response {
    control_error(StatusCode::NOT_FOUND, "no such emulator route")
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RotateBody {
    retire_old: bool,
}

async fn rotate(State(state): State<AppState>, body: Bytes) -> Response {
    let opts: RotateBody = match parse_body(&body) {
        Ok(opts) => opts,
        Err(err) => return bad_json(&err),
    };
    match entra::rotate_keys(&state, opts.retire_old).await {
        Ok(kid) => Json(json!({ "kid": kid })).into_response(),
        Err(err) => control_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    }
}

async fn mint_callout(State(state): State<AppState>, body: Bytes) -> Response {
    let opts: MintOptions = match parse_body(&body) {
        Ok(opts) => opts,
        Err(err) => return bad_json(&err),
    };
    match entra::mint_callout_token(&state, &opts) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

/// A PoP signed request (`PopOptions` JSON, empty = defaults) → `{"token": "..."}`.
async fn mint_pop(State(state): State<AppState>, body: Bytes) -> Response {
    let opts: crate::pop::PopOptions = match parse_body(&body) {
        Ok(opts) => opts,
        Err(err) => return bad_json(&err),
    };
    match crate::pop::mint_pop(&state, &opts) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

/// Extension: a Graph token for the configured client without the token endpoint.
async fn mint_graph(State(state): State<AppState>) -> Response {
    match entra::mint_graph_token(&state, &state.cfg.graph_client_id) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(err) => control_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    }
}

/// Wire form of `POST /_emulator/requests`: [`RegisterRequest`] plus `catalog_id`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RegisterBody {
    id: Option<String>,
    stage: Option<String>,
    stage_instance_id: Option<String>,
    timeout: Option<String>,
    request_type: Option<String>,
    catalog_id: Option<String>,
}

async fn register(State(state): State<AppState>, body: Bytes) -> Response {
    let body: RegisterBody = match parse_body(&body) {
        Ok(reg) => reg,
        Err(err) => return bad_json(&err),
    };
    let reg = RegisterRequest {
        id: body.id,
        stage: body.stage,
        stage_instance_id: body.stage_instance_id,
        timeout: body.timeout,
        request_type: body.request_type,
    };
    match graph::register(&state, &reg, body.catalog_id.as_deref()) {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

async fn request(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match graph::view(&state, &id) {
        Some(view) => Json(view).into_response(),
        None => control_error(StatusCode::NOT_FOUND, format!("unknown request {id}")),
    }
}

async fn register_task(State(state): State<AppState>, body: Bytes) -> Response {
    let reg: crate::lifecycle::RegisterTask = match parse_body(&body) {
        Ok(reg) => reg,
        Err(err) => return bad_json(&err),
    };
    match crate::lifecycle::register(&state, &reg) {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

async fn task(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match crate::lifecycle::view(&state, &id) {
        Some(view) => Json(view).into_response(),
        None => control_error(
            StatusCode::NOT_FOUND,
            format!("unknown task processing result {id}"),
        ),
    }
}

async fn resumes(State(state): State<AppState>) -> Response {
    Json(graph::resumes(&state)).into_response()
}

async fn stats(State(state): State<AppState>) -> Response {
    Json(state.lock().stats.clone()).into_response()
}

async fn set_fault(State(state): State<AppState>, body: Bytes) -> Response {
    let spec: FaultSpec = match serde_json::from_slice(&body) {
        Ok(spec) => spec,
        Err(err) => {
            return control_error(StatusCode::BAD_REQUEST, format!("invalid fault: {err}"));
        }
    };
    match faults::set(&state, &spec) {
        Ok(()) => (StatusCode::OK, Json(spec)).into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

async fn clear_faults(State(state): State<AppState>) -> Response {
    faults::clear(&state);
    StatusCode::NO_CONTENT.into_response()
}

async fn send(State(state): State<AppState>, body: Bytes) -> Response {
    let opts: SendOptions = match serde_json::from_slice(&body) {
        Ok(opts) => opts,
        Err(err) => {
            return control_error(
                StatusCode::BAD_REQUEST,
                format!("invalid SendOptions: {err}"),
            );
        }
    };
    let emulator = Emulator { state };
    match sender::send_callout_with(sender::Backend::Local(&emulator), &opts).await {
        Ok(report) => Json(report).into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

async fn principals_list(State(state): State<AppState>) -> Response {
    Json(principals::list(&state)).into_response()
}

async fn principal_grants(
    State(state): State<AppState>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    let grants: Grants = match parse_body(&body) {
        Ok(grants) => grants,
        Err(err) => return bad_json(&err),
    };
    match principals::set_grants(&state, &client_id, &grants) {
        Ok(()) => {
            let principal = principals::list(&state)
                .into_iter()
                .find(|p| p.client_id == client_id);
            Json(principal).into_response()
        }
        Err(err) if err.to_string().starts_with("unknown principal") => {
            control_error(StatusCode::NOT_FOUND, format!("{err:#}"))
        }
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FederatedBody {
    expires_in_secs: Option<i64>,
    subject: Option<String>,
}

async fn federated_token(State(state): State<AppState>, body: Bytes) -> Response {
    let opts: FederatedBody = match parse_body(&body) {
        Ok(opts) => opts,
        Err(err) => return bad_json(&err),
    };
    match entra::mint_federated_token(
        &state,
        opts.expires_in_secs.unwrap_or(3600),
        opts.subject.as_deref(),
    ) {
        Ok(token) => Json(json!({ "token": token })).into_response(),
        Err(err) => control_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretBody {
    secret: String,
}

async fn app_secret(State(state): State<AppState>, body: Bytes) -> Response {
    let body: SecretBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return bad_json(&err),
    };
    match entra::set_client_secret(&state, &body.secret) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KvSecretBody {
    value: String,
    #[serde(default)]
    content_type: Option<String>,
}

async fn kv_secret(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let body: KvSecretBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(err) => return bad_json(&err),
    };
    match keyvault::put_secret(&state, &name, &body.value, body.content_type) {
        Ok(id) => Json(json!({ "id": id })).into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

async fn kv_certificate(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let opts: CertificateOptions = match parse_body(&body) {
        Ok(opts) => opts,
        Err(err) => return bad_json(&err),
    };
    let task_state = state.clone();
    let made = tokio::task::spawn_blocking(move || {
        keyvault::create_certificate(&task_state, &name, &opts)
    })
    .await;
    match made {
        Ok(Ok(info)) => (StatusCode::CREATED, Json(info)).into_response(),
        Ok(Err(err)) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
        Err(err) => control_error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err}")),
    }
}

async fn graph_calls(State(state): State<AppState>) -> Response {
    Json(graph::graph_calls(&state)).into_response()
}

async fn arm_resource(State(state): State<AppState>, body: Bytes) -> Response {
    let r: crate::arm::PutResource = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(err) => return bad_json(&err),
    };
    match crate::arm::put(&state, r) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

async fn world(State(state): State<AppState>, body: Bytes) -> Response {
    let world: crate::directory::World = match serde_json::from_slice(&body) {
        Ok(w) => w,
        Err(err) => return bad_json(&err),
    };
    match crate::governance::load(&state, &world) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

/// Body of `PUT /_emulator/device-user`: the scopes the emulated administrator consents to
/// (`null`: whatever a device code asks for).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceUserBody {
    scopes: Option<Vec<String>>,
}

async fn device_user(State(state): State<AppState>, body: Bytes) -> Response {
    match serde_json::from_slice::<DeviceUserBody>(&body) {
        Ok(b) => {
            entra::set_device_user_scopes(&state, b.scopes);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => bad_json(&err),
    }
}

/// The device code `verification_uri`: nothing to do, the administrator signs in by itself.
async fn device_page() -> Response {
    "The emulated administrator signs in by itself: keep polling the token endpoint.\n"
        .into_response()
}

async fn sn_credentials(State(state): State<AppState>, body: Bytes) -> Response {
    let creds: crate::servicenow::ServiceNowCredentials = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(err) => return bad_json(&err),
    };
    let mut inner = state.lock();
    inner.servicenow.creds = creds;
    inner.servicenow.tokens.clear();
    StatusCode::NO_CONTENT.into_response()
}

async fn sn_credentials_get(State(state): State<AppState>) -> Response {
    Json(state.lock().servicenow.creds.clone()).into_response()
}

#[derive(serde::Deserialize)]
struct SnSettings {
    #[serde(default)]
    invalid_query_returns_no_rows: bool,
    #[serde(default)]
    lose_write_answers: u32,
}

async fn sn_settings(State(state): State<AppState>, body: Bytes) -> Response {
    match serde_json::from_slice::<SnSettings>(&body) {
        Ok(s) => {
            let mut inner = state.lock();
            inner.servicenow.invalid_query_returns_no_rows = s.invalid_query_returns_no_rows;
            inner.servicenow.lose_write_answers = s.lose_write_answers;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(err) => bad_json(&err),
    }
}

async fn sn_calls(State(state): State<AppState>) -> Response {
    Json(state.lock().servicenow.calls.clone()).into_response()
}

async fn sn_webhook(State(state): State<AppState>, body: Bytes) -> Response {
    let settings: tickets::WebhookSettings = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(err) => return bad_json(&err),
    };
    match tickets::set_webhook(&state, &settings) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

async fn sn_webhook_clear(State(state): State<AppState>) -> Response {
    tickets::clear_webhook(&state);
    StatusCode::NO_CONTENT.into_response()
}

async fn sn_webhooks(State(state): State<AppState>) -> Response {
    Json(tickets::deliveries(&state)).into_response()
}

async fn sn_tickets(State(state): State<AppState>) -> Response {
    Json(tickets::tickets(&state)).into_response()
}

async fn sn_close(
    State(state): State<AppState>,
    Path((table, sys_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let close: tickets::CloseTicket = match parse_body(&body) {
        Ok(c) => c,
        Err(err) => return bad_json(&err),
    };
    match tickets::close(&state, &table, &sys_id, &close) {
        Ok(view) => Json(view).into_response(),
        Err(err) if err.to_string().starts_with("no record") => {
            control_error(StatusCode::NOT_FOUND, format!("{err:#}"))
        }
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogItemBody {
    #[serde(default)]
    sys_id: Option<String>,
    name: String,
}

async fn sn_catalog_item(State(state): State<AppState>, body: Bytes) -> Response {
    let item: CatalogItemBody = match serde_json::from_slice(&body) {
        Ok(i) => i,
        Err(err) => return bad_json(&err),
    };
    match tickets::add_catalog_item(&state, item.sys_id.as_deref(), &item.name) {
        Ok(sys_id) => (
            StatusCode::CREATED,
            Json(json!({ "sys_id": sys_id, "name": item.name })),
        )
            .into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosedStatesBody {
    table: String,
    states: Vec<String>,
}

async fn sn_closed_states(State(state): State<AppState>, body: Bytes) -> Response {
    let b: ClosedStatesBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(err) => return bad_json(&err),
    };
    match tickets::set_closed_states(&state, &b.table, &b.states) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(err) => control_error(StatusCode::BAD_REQUEST, format!("{err:#}")),
    }
}
