//! Capture mode: keeps each accepted callout's raw body and the non-secret parts of its token in
//! the data directory, so an admin can see the exact wire shape their tenant sends (the docs
//! disagree on it; protocol.md open question 1). Never the token, never a signature.

use std::path::PathBuf;

use crate::auth::VerifiedCaller;

pub mod settings;
pub use settings::Settings;

pub struct Capture {
    dir: PathBuf,
}

impl Capture {
    pub fn new(dir: PathBuf) -> Capture {
        Capture { dir }
    }

    pub async fn record(&self, correlation_id: &str, body: &[u8], caller: &VerifiedCaller) {
        let body_json: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
        });
        let record = serde_json::json!({
            "receivedAt": jiff::Timestamp::now().to_string(),
            "correlationId": correlation_id,
            "scheme": caller.scheme(),
            "tokenHash": caller.token_hash(),
            "token": caller.summary(),
            "body": body_json,
        });
        let name = format!(
            "{}-{correlation_id}.json",
            jiff::Timestamp::now().as_millisecond()
        );
        let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
        let write = async {
            tokio::fs::create_dir_all(&self.dir).await?;
            tokio::fs::write(self.dir.join(&name), text).await
        };
        if let Err(e) = write.await {
            tracing::warn!(error = %e, "capture: cannot write record");
        }
    }
}
