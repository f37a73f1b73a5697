//! What both hosts share while they run: the configuration, the authenticator, the queue and
//! the worker context. Its own module so that the hosts (`ingress`, `functions`) and the
//! start-up code (`app`) that builds them import it without importing each other.

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::capture::Capture;
use crate::config::Config;
use crate::queue::JobStore;
use crate::queue::azure_backend::AzureJobs;
use crate::worker::WorkerCtx;

pub struct AppState {
    pub config: Arc<Config>,
    pub auth: Authenticator,
    pub capture: Option<Capture>,
    /// The standalone queue; `None` under Functions, where the host's queue binding carries jobs.
    pub queue: Option<Arc<dyn JobStore>>,
    /// Under Functions with `queue.backend = "azure_storage"`: where a queue-trigger job parks
    /// (the host's own queue, reached directly).
    pub storage: Option<AzureJobs>,
    pub worker: Arc<WorkerCtx>,
}

impl AppState {
    /// Jobs per status (off the async threads: SQLite calls block).
    pub async fn queue_counts(&self) -> serde_json::Value {
        let Some(q) = &self.queue else {
            return serde_json::Value::Null;
        };
        match q.counts().await {
            Ok(rows) => {
                serde_json::Value::Object(rows.into_iter().map(|(k, v)| (k, v.into())).collect())
            }
            Err(_) => serde_json::Value::Null,
        }
    }
}
