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
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::Emulator;
use crate::entra::{self, MintOptions};
use crate::faults::{self, FaultSpec};
use crate::graph::{self, RegisterRequest};
use crate::sender::{self, SendOptions};
use crate::state::AppState;

/// Everything the emulator serves.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/_emulator/keys/rotate", post(rotate))
        .route("/_emulator/tokens/callout", post(mint_callout))
        .route("/_emulator/tokens/pop", post(mint_pop))
        .route("/_emulator/tokens/graph", post(mint_graph))
        .route("/_emulator/requests", post(register))
        .route("/_emulator/requests/{id}", get(request))
        .route("/_emulator/resumes", get(resumes))
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/faults", post(set_fault).delete(clear_faults))
        .route("/_emulator/callouts/send", post(send))
        .nest("/v1.0", graph::routes("v1.0"))
        .nest("/beta", graph::routes("beta"))
        .merge(entra::routes())
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

async fn register(State(state): State<AppState>, body: Bytes) -> Response {
    let reg: RegisterRequest = match parse_body(&body) {
        Ok(reg) => reg,
        Err(err) => return bad_json(&err),
    };
    match graph::register(&state, &reg) {
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
