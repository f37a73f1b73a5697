//! Helpers shared by the emulator's integration tests: start an emulator on 127.0.0.1:0, get
//! Graph tokens, build resume bodies, and run small callout targets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use accessgate_emulator::{EmulatorConfig, RunningEmulator};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

pub async fn start() -> RunningEmulator {
    accessgate_emulator::start(
        EmulatorConfig::default(),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
    .await
    .expect("emulator starts")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A Graph token from the token endpoint (client credentials).
pub async fn graph_token(emu: &RunningEmulator) -> String {
    let cfg = EmulatorConfig::default();
    let resp = http()
        .post(emu.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", cfg.graph_client_id.as_str()),
            ("client_secret", cfg.graph_client_secret.as_str()),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

pub fn resume_body(stage: &str, stage_instance_id: &str) -> Value {
    json!({
        "source": "accessgate-tests",
        "type": format!("microsoft.graph.accessPackageCustomExtensionStage.{stage}"),
        "data": {
            "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestCallbackData",
            "stage": stage,
            "customExtensionStageInstanceId": stage_instance_id,
            "customExtensionStageInstanceDetail": "checked by tests",
        }
    })
}

pub fn resume_url(emu: &RunningEmulator, request_id: &str) -> String {
    format!(
        "{}/v1.0/identityGovernance/entitlementManagement/assignmentRequests/{request_id}/resume",
        emu.base_url()
    )
}

pub async fn post_resume(
    emu: &RunningEmulator,
    token: &str,
    request_id: &str,
    body: &Value,
) -> (u16, Value) {
    let resp = http()
        .post(resume_url(emu, request_id))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, value)
}

/// One request received by a [`Target`].
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A callout target on 127.0.0.1:0 that answers `status` after `delay`.
pub struct Target {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
}

impl Target {
    pub async fn start(status: u16, delay: Duration) -> Self {
        Self::start_with(&[status], delay).await
    }

    /// Answers `statuses[i]` to the i-th request, the last one to every later request.
    pub async fn start_with(statuses: &[u16], delay: Duration) -> Self {
        let statuses = statuses.to_vec();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let app = Router::new().route(
            "/callout",
            post(move |headers: HeaderMap, body: Bytes| {
                let log = log.clone();
                let statuses = statuses.clone();
                async move {
                    let index = {
                        let mut log = log.lock().unwrap();
                        log.push(Received { headers, body });
                        log.len() - 1
                    };
                    tokio::time::sleep(delay).await;
                    let status = statuses[index.min(statuses.len() - 1)];
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/callout"),
            received,
        }
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn body(&self, index: usize) -> Value {
        serde_json::from_slice(&self.received.lock().unwrap()[index].body).unwrap()
    }

    pub fn header(&self, index: usize, name: &str) -> Option<String> {
        self.received.lock().unwrap()[index]
            .headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
}
