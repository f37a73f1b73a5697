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
    pub auth: Arc<Authenticator>,
    pub capture: Option<Capture>,
    /// The standalone queue; `None` under Functions, where the host's queue binding carries jobs.
    pub queue: Option<Arc<dyn JobStore>>,
    /// Under Functions with `queue.backend = "azure_storage"`: where a queue-trigger job parks
    /// (the host's own queue, reached directly).
    pub storage: Option<AzureJobs>,
    pub worker: Arc<WorkerCtx>,
    /// PIM custom extensions' verdicts (`[pim]`); `None` when not configured.
    pub pim: Option<Arc<crate::pim::service::PimService>>,
    /// The last readiness probe and when it ran: `/readyz` probes at most once a second, so a
    /// flood of probes costs no more than one commit a second.
    pub readiness: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

/// How often `/readyz` really probes the queue, and how long a probe may take.
const READY_PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl AppState {
    /// Whether a callout would be acknowledged now: the queue commits. Under Functions the
    /// host's queue binding carries jobs, so a running handler is ready.
    pub async fn ready(&self) -> bool {
        let Some(q) = &self.queue else {
            return true;
        };
        let cached = self.readiness.lock().ok().and_then(|g| *g);
        if let Some((at, ok)) = cached
            && at.elapsed() < READY_PROBE_EVERY
        {
            return ok;
        }
        let ok = match tokio::time::timeout(READY_PROBE_TIMEOUT, q.ready()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "not ready: the queue cannot commit");
                false
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = READY_PROBE_TIMEOUT.as_millis() as u64,
                    "not ready: the queue did not commit in time"
                );
                false
            }
        };
        if let Ok(mut g) = self.readiness.lock() {
            *g = Some((std::time::Instant::now(), ok));
        }
        ok
    }
}
