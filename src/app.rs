//! Start-up, the composition root: builds the shared [`AppState`] from a validated config and
//! runs one of the two hosts (it imports them; they import only `state`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::auth::Authenticator;
use crate::bridge::Bridge;
use crate::capture::Capture;
use crate::config::Config;
use crate::credentials::Credentials;
use crate::graph::GraphClient;
use crate::queue::azure_backend::{self, AzureJobs};
use crate::queue::sqlite::{DataDirLock, SqliteQueue};
use crate::queue::tickets::TicketLedger;
use crate::queue::verdicts::VerdictLedger;
use crate::queue::{JobStore, Settings as QueueSettings};
use crate::state::AppState;
use crate::worker::{self, WorkerCtx};

/// The one outbound HTTP client: no redirects (a token must never follow one), bounded time.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("accessgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

fn build_state(
    config: Config,
    http: reqwest::Client,
    credentials: Arc<Credentials>,
    queue: Option<Arc<dyn JobStore>>,
    storage: Option<AzureJobs>,
    ledger: Option<Arc<dyn TicketLedger>>,
    verdicts: Option<Arc<dyn VerdictLedger>>,
) -> anyhow::Result<Arc<AppState>> {
    let single_process = matches!(config.queue, QueueSettings::Sqlite);
    let auth = Arc::new(Authenticator::new(
        http.clone(),
        &config.identity.authority,
        &config.identity.tenant_id,
        &config.inbound,
        &config.extensions,
    ));
    let servicenow = config.servicenow.as_ref().map(|s| {
        Arc::new(crate::tickets::servicenow::ServiceNow::new(
            http.clone(),
            s.clone(),
            Some(credentials.clone()),
        ))
    });
    let tickets: Arc<dyn crate::tickets::TicketSystem> = match &servicenow {
        Some(s) => s.clone(),
        None => Arc::new(crate::tickets::NoTickets),
    };
    let bridge = match (&servicenow, ledger) {
        (Some(sn), Some(ledger)) => {
            let specs = std::iter::once(&config.policy)
                .chain(config.extensions.iter().filter_map(|e| e.policy.as_ref()))
                .flat_map(|p| p.ticket_specs())
                .map(|s| (s.name.clone(), s.clone()))
                .collect();
            Some(Arc::new(Bridge {
                servicenow: sn.clone(),
                ledger,
                settings: sn.settings().bridge.clone(),
                specs,
                webhook: Default::default(),
                single_process,
            }))
        }
        _ => None,
    };
    let graph = Arc::new(GraphClient::new(http, config.graph.clone(), credentials));
    let directory: Arc<dyn crate::directory::Directory> = Arc::new(
        crate::directory::graph::GraphDirectory::new(graph.clone(), config.directory.clone()),
    );
    for w in &config.warnings {
        tracing::warn!(setting = %w.setting, "{}", w.message);
    }
    let capture = config
        .capture
        .enabled
        .then(|| Capture::new(config.capture.dir.clone()));
    for w in &config.policy.warnings {
        tracing::warn!(warning = %w, "policy");
    }
    let pim = config.pim.clone().map(|settings| {
        Arc::new(crate::pim::service::PimService {
            settings,
            auth: auth.clone(),
            policy: config.policy.clone(),
            directory: directory.clone(),
            tickets: tickets.clone(),
            ledger: verdicts,
            max_body: config.server.max_body_bytes,
        })
    });
    let worker = Arc::new(WorkerCtx {
        policy: config.policy.clone(),
        extension_policies: config
            .extensions
            .iter()
            .filter_map(|e| Some((e.name.clone(), e.policy.clone()?)))
            .collect(),
        graph,
        directory,
        tickets,
        decision_timeout: config.decision_timeout,
        cfg: config.worker.clone(),
        bridge,
    });
    Ok(Arc::new(AppState {
        config: Arc::new(config),
        auth,
        capture,
        queue,
        storage,
        worker,
        pim,
        readiness: std::sync::Mutex::new(None),
    }))
}

fn prefetch_keys(state: &Arc<AppState>) {
    let s = state.clone();
    tokio::spawn(async move {
        if let Err(e) = s.auth.jwks().prefetch().await {
            tracing::warn!(error = %e, "could not fetch tenant signing keys at start; will retry on the first callout");
        }
    });
}

/// SIGINT or SIGTERM: how the CLI asks either host to stop.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Completes when `shutdown` does (or something cancelled `cancel` already), then cancels
/// `cancel` so the worker pool stops with the listener.
async fn stopping(shutdown: impl Future<Output = ()>, cancel: CancellationToken) {
    tokio::select! {
        _ = shutdown => {},
        _ = cancel.cancelled() => {},
    }
    cancel.cancel();
}

/// The credential chain a configuration asks for (shared by both hosts and `doctor`).
pub fn credentials_for(config: &Config, http: &reqwest::Client) -> Arc<Credentials> {
    Arc::new(Credentials::new(
        http.clone(),
        &config.identity,
        &config.credentials,
        &config.graph,
    ))
}

/// The Storage backend: queues and wait table created if missing. Not fatal when Storage is
/// unreachable: the service still starts and says why on each enqueue (503, Entra retries)
/// until it is back.
async fn connect_storage(
    http: &reqwest::Client,
    q: &crate::queue::settings::AzureStorageSettings,
    credentials: &Arc<Credentials>,
) -> AzureJobs {
    let jobs = AzureJobs::new(
        azure_backend::connect(http.clone(), q, credentials.clone()),
        azure_backend::connect_waits(http.clone(), q, credentials.clone()),
        q,
    );
    if let Err(e) = jobs.ensure().await {
        tracing::error!(error = %e, "cannot create or reach the Azure Storage queues and wait table");
    }
    jobs
}

/// `server.max_connections`, or what fits under the open-file limit; logged.
fn connection_limit(limits: &crate::http_server::Limits) -> usize {
    let nofile = crate::http_server::nofile_limit();
    let (max, warning) = crate::http_server::connection_limit(limits.max_connections, nofile);
    if let Some(w) = warning {
        tracing::warn!(setting = "server.max_connections", "{w}");
    }
    tracing::info!(
        max_connections = max,
        open_file_limit = nofile,
        header_read_timeout_s = limits.header_read_timeout.as_secs(),
        keep_alive_idle_s = limits.keep_alive_idle.as_secs(),
        "connection limits"
    );
    max
}

/// `accessgate serve`: binds `server.listen` and [`run`]s until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    crate::http_server::raise_nofile_limit();
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    run(config, listener, shutdown_signal()).await
}

/// The standalone server on a bound `listener` until `shutdown` completes: axum + a durable
/// queue (SQLite, or a shared Azure Storage queue) + in-process worker pool. Returns once the
/// open requests are answered and the worker pool has stopped.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let http = http_client()?;
    let credentials = credentials_for(&config, &http);
    let cancel = CancellationToken::new();
    let (state, pool, _lock, backend) = match &config.queue {
        QueueSettings::Sqlite => {
            let dir = config.server.data_dir.clone();
            // Name the setting and the path: a bare "Read-only file system" says neither.
            let hint = || {
                format!(
                    "server.data_dir = {}: cannot create or write the job queue there; make the directory writable by this user or set server.data_dir to a writable path",
                    dir.display()
                )
            };
            let lock = DataDirLock::acquire(&dir).with_context(hint)?;
            let queue = SqliteQueue::open(&dir)
                .context("opening the job queue")
                .with_context(hint)?;
            let recovered = queue.recover_running()?;
            if recovered > 0 {
                tracing::warn!(
                    jobs = recovered,
                    "recovered jobs that were running when the previous process stopped"
                );
            }
            let queue = Arc::new(queue);
            let store: Arc<dyn JobStore> = queue.clone();
            let verdicts: Arc<dyn VerdictLedger> = queue.clone();
            let state = build_state(
                config,
                http,
                credentials,
                Some(store.clone()),
                None,
                Some(queue),
                Some(verdicts),
            )?;
            let pool = tokio::spawn(worker::run_pool(
                state.worker.clone(),
                store,
                cancel.clone(),
            ));
            (state, pool, Some(lock), "sqlite")
        }
        QueueSettings::AzureStorage(q) => {
            let jobs = connect_storage(&http, q, &credentials).await;
            let store: Arc<dyn JobStore> = Arc::new(jobs.clone());
            let ledger: Arc<dyn TicketLedger> = Arc::new(jobs.clone());
            let verdicts: Arc<dyn VerdictLedger> = Arc::new(jobs.clone());
            let state = build_state(
                config,
                http,
                credentials,
                Some(store.clone()),
                Some(jobs),
                Some(ledger),
                Some(verdicts),
            )?;
            let pool = tokio::spawn(worker::run_pool(
                state.worker.clone(),
                store,
                cancel.clone(),
            ));
            (state, pool, None, "azure_storage")
        }
    };
    prefetch_keys(&state);
    let poll = match (&state.worker.bridge, &state.queue) {
        (Some(bridge), Some(store)) => Some(tokio::spawn(crate::bridge::poll::run(
            bridge.clone(),
            store.clone(),
            cancel.clone(),
        ))),
        _ => None,
    };
    let addr: SocketAddr = listener.local_addr()?;
    tracing::info!(%addr, queue = backend, "accessgate listening");
    // The callout route bounds its own body read (ingress::BODY_TIMEOUT) so a slow client gets
    // the JSON error format with a correlation id.
    let limits = state.config.server.connections;
    let max = connection_limit(&limits);
    let app = crate::ingress::router(state).layer(tower_http::catch_panic::CatchPanicLayer::new());
    crate::http_server::serve(
        listener,
        app,
        limits,
        max,
        stopping(shutdown, cancel.clone()),
    )
    .await?;
    cancel.cancel();
    let _ = pool.await;
    if let Some(p) = poll {
        let _ = p.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Under Azure Functions: binds `FUNCTIONS_CUSTOMHANDLER_PORT` and [`run_functions`] until
/// SIGINT or SIGTERM.
pub async fn functions(config: Config, port: u16) -> anyhow::Result<()> {
    crate::http_server::raise_nofile_limit();
    // The host always calls 127.0.0.1 (functions.md §1).
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    run_functions(config, listener, shutdown_signal()).await
}

/// The custom-handler invocation protocol on a bound `listener` until `shutdown` completes.
pub async fn run_functions(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let http = http_client()?;
    let credentials = credentials_for(&config, &http);
    // Jobs arrive through the host's queue trigger; the Storage client is only for parking.
    let storage = match &config.queue {
        QueueSettings::AzureStorage(q) => Some(connect_storage(&http, q, &credentials).await),
        QueueSettings::Sqlite => None,
    };
    let ledger = storage
        .clone()
        .map(|s| Arc::new(s) as Arc<dyn TicketLedger>);
    let verdicts = storage
        .clone()
        .map(|s| Arc::new(s) as Arc<dyn VerdictLedger>);
    let state = build_state(config, http, credentials, None, storage, ledger, verdicts)?;
    prefetch_keys(&state);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, mode = "functions", "accessgate listening");
    let limits = state.config.server.connections;
    let max = connection_limit(&limits);
    let app =
        crate::functions::router(state).layer(tower_http::catch_panic::CatchPanicLayer::new());
    crate::http_server::serve(listener, app, limits, max, shutdown).await?;
    Ok(())
}
