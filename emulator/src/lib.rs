//! Local stand-in for Microsoft Entra ID and Microsoft Graph, so that accessgate runs and is
//! tested without a tenant.
//!
//! Everything listens on one loopback port (`{base}` = `http://127.0.0.1:{port}`); the HTTP
//! contract is `docs/emulator-contract.md` at the workspace root.
//!
//! # Layout
//! - [`entra`]: signing keys, OpenID metadata, JWKS, the client-credentials token endpoint and
//!   minting of the callout tokens Entra would send.
//! - [`graph`]: entitlement-management assignment requests, their callout state machine and the
//!   `resume` action with the validation Graph applies.
//! - [`governance`]: catalogs, access packages, assignment policies, custom extensions
//!   (entitlement management, Lifecycle Workflows, PIM) and catalog role assignments, as
//!   `accessgate setup` configures them.
//! - [`pop`]: proof-of-possession signed requests (`Authorization: PoP`) as Entra sends them
//!   with callouts, their keys and every forgery knob.
//! - [`faults`]: injected failures (status codes with `Retry-After`, delays) for Graph and the
//!   token endpoint.
//! - [`sender`]: an Entra-like callout sender (flat PascalCase body or Graph envelope, PoP or
//!   bearer authorization, 1000 ms client timeout, at most one retry).
//! - `control`: the `/_emulator/*` routes that drive and inspect the emulator.
//! - `state`: the shared in-memory state behind one `std::sync::Mutex`.
//!
//! Architecture invariant: the emulator binds loopback addresses only and never logs token or
//! secret values.
#![forbid(unsafe_code)]

pub mod approval;
pub mod arm;
mod control;
pub mod directory;
pub mod entra;
pub mod faults;
pub mod governance;
pub mod graph;
pub mod keyvault;
pub mod lifecycle;
mod msi;
pub mod pim;
pub mod pop;
pub mod principals;
pub mod sender;
pub mod servicenow;
mod state;
pub mod tickets;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use entra::{IssuerVersion, MintOptions, SignWith};
pub use faults::{FaultSpec, FaultTarget};
pub use graph::{CalloutView, GraphCall, RegisterRequest, RequestView, ResumeRecord};
pub use keyvault::{CertificateInfo, CertificateOptions};
pub use lifecycle::{RegisterTask, TaskView};
pub use pim::{PimReport, PimSendOptions, PimShape};
pub use principals::{CatalogRole, Grants, Principal, PrincipalKind};

/// Catalog of requests registered without one (`cccccccc-0000-0000-0000-000000000001`).
pub const DEFAULT_CATALOG: &str = graph::DEFAULT_CATALOG_ID;
pub use directory::World;
pub use pop::{PopKey, PopKeyKind, PopOptions};
pub use sender::{AuthScheme, SendOptions, SendReport, Shape};
pub use servicenow::{ServiceNowCall, ServiceNowCredentials};
pub use state::Stats;
pub use tickets::{
    BearerWebhook, CloseTicket, ClosedEvent, JournalEntry, TicketView, WebhookDelivery,
    WebhookSettings,
};

use state::{AppState, Shared};

/// Identities the emulated tenant knows about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmulatorConfig {
    /// Directory (tenant) id used in issuers, `tid` claims and Entra routes.
    pub tenant_id: String,
    /// Client id of the app accessgate uses for Graph (client-credentials grant).
    pub graph_client_id: String,
    /// Client secret of that app.
    pub graph_client_secret: String,
    /// `u` of minted PoP tokens.
    #[serde(default = "default_pop_host")]
    pub pop_host: String,
    /// `p` of minted PoP tokens: the ARM id of the Logic App the extension names.
    #[serde(default = "default_logic_app_resource")]
    pub logic_app_resource: String,
    /// `p` of PoP tokens for Lifecycle Workflows callouts: the ARM id of the Logic App the
    /// custom task extension names.
    #[serde(default = "default_lcw_logic_app_resource")]
    pub lcw_logic_app_resource: String,
    /// Client id of the system-assigned managed identity (`GET /msi/token` without selector).
    #[serde(default = "default_managed_identity_client_id")]
    pub managed_identity_client_id: String,
    /// Client id of the user-assigned managed identity (also has a federated credential).
    #[serde(default = "default_user_assigned_client_id")]
    pub user_assigned_client_id: String,
    /// `X-IDENTITY-HEADER` value the managed identity endpoint requires (`IDENTITY_HEADER`).
    #[serde(default = "default_identity_header")]
    pub identity_header: String,
    /// `sub` the federated credentials accept (the Kubernetes service account).
    #[serde(default = "default_federated_subject")]
    pub federated_subject: String,
}

fn default_lcw_logic_app_resource() -> String {
    "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg-accessgate/providers/Microsoft.Logic/workflows/accessgate-lcw".to_owned()
}

fn default_managed_identity_client_id() -> String {
    "aaaaaaaa-0000-0000-0000-000000000002".to_owned()
}

fn default_user_assigned_client_id() -> String {
    "aaaaaaaa-0000-0000-0000-000000000003".to_owned()
}

fn default_identity_header() -> String {
    "emulator-identity-header".to_owned()
}

fn default_federated_subject() -> String {
    "system:serviceaccount:accessgate:accessgate".to_owned()
}

fn default_pop_host() -> String {
    "management.azure.com".to_owned()
}

fn default_logic_app_resource() -> String {
    "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg-accessgate/providers/Microsoft.Logic/workflows/accessgate-elm".to_owned()
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            tenant_id: "11111111-2222-3333-4444-555555555555".to_owned(),
            graph_client_id: "aaaaaaaa-0000-0000-0000-000000000001".to_owned(),
            graph_client_secret: "emulator-graph-secret".to_owned(),
            pop_host: default_pop_host(),
            logic_app_resource: default_logic_app_resource(),
            lcw_logic_app_resource: default_lcw_logic_app_resource(),
            managed_identity_client_id: default_managed_identity_client_id(),
            user_assigned_client_id: default_user_assigned_client_id(),
            identity_header: default_identity_header(),
            federated_subject: default_federated_subject(),
        }
    }
}

/// Starts the emulator on `addr` (a loopback address; port 0 picks a free port).
///
/// The server runs on the current tokio runtime until [`RunningEmulator::shutdown`] is called
/// or the [`RunningEmulator`] is dropped.
pub async fn start(cfg: EmulatorConfig, addr: SocketAddr) -> anyhow::Result<RunningEmulator> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "the emulator binds loopback addresses only, not {addr}"
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    let base_url = format!("http://{local}");

    // Two RSA signing keys (the published one and the "unknown" one that is never published)
    // and the default PoP key, made here so that minting a PoP token costs one signature.
    let (current, unknown, pop_key) = tokio::task::spawn_blocking(|| {
        Ok::<_, anyhow::Error>((
            entra::SigningKey::generate()?,
            entra::SigningKey::generate()?,
            pop::PopKey::generate(PopKeyKind::default())?,
        ))
    })
    .await
    .context("key generation task")??;

    let shared: AppState = Arc::new(Shared::new(cfg, base_url, current, unknown, pop_key));
    let router = control::router(shared.clone());
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                // Either an explicit shutdown or the handle being dropped ends the server.
                let _ = shutdown_rx.await;
            })
            .await
    });
    tracing::info!(base_url = %shared.base_url, "emulator started");
    Ok(RunningEmulator {
        emulator: Emulator { state: shared },
        shutdown_tx: Some(shutdown_tx),
        server: Some(server),
    })
}

/// A started emulator. Dereferences to [`Emulator`] for in-process access; dropping it stops
/// the server.
#[derive(Debug)]
pub struct RunningEmulator {
    emulator: Emulator,
    shutdown_tx: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.emulator.base_url()
    }

    /// A cloneable in-process handle that outlives borrows of `self` (e.g. for spawned tasks).
    pub fn handle(&self) -> Emulator {
        self.emulator.clone()
    }

    /// Stops accepting connections and waits (at most 5 s) for in-flight requests.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            match tokio::time::timeout(Duration::from_secs(5), server).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(err))) => tracing::warn!(error = %err, "emulator server error"),
                Ok(Err(err)) => tracing::warn!(error = %err, "emulator server task failed"),
                Err(_) => tracing::warn!("emulator did not stop within 5 s"),
            }
        }
    }
}

impl Deref for RunningEmulator {
    type Target = Emulator;

    fn deref(&self) -> &Emulator {
        &self.emulator
    }
}

/// In-process handle to a running emulator: the same operations as the HTTP routes, without
/// HTTP. Cheap to clone.
#[derive(Clone)]
pub struct Emulator {
    state: AppState,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("base_url", &self.state.base_url)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// The configuration the emulator was started with.
    pub fn config(&self) -> &EmulatorConfig {
        &self.state.cfg
    }

    /// v1 issuer, `{base}/{tenant}/` (stands in for `https://sts.windows.net/{tid}/`).
    pub fn issuer_v1(&self) -> String {
        self.state.issuer_v1(&self.state.cfg.tenant_id)
    }

    /// v2 issuer, `{base}/{tenant}/v2.0`.
    pub fn issuer_v2(&self) -> String {
        self.state.issuer_v2(&self.state.cfg.tenant_id)
    }

    /// `{base}/{tenant}/.well-known/openid-configuration`.
    pub fn metadata_url_v1(&self) -> String {
        format!(
            "{}/{}/.well-known/openid-configuration",
            self.state.base_url, self.state.cfg.tenant_id
        )
    }

    /// `{base}/{tenant}/v2.0/.well-known/openid-configuration`.
    pub fn metadata_url_v2(&self) -> String {
        format!(
            "{}/{}/v2.0/.well-known/openid-configuration",
            self.state.base_url, self.state.cfg.tenant_id
        )
    }

    /// `{base}/{tenant}/discovery/keys`.
    pub fn jwks_url(&self) -> String {
        format!(
            "{}/{}/discovery/keys",
            self.state.base_url, self.state.cfg.tenant_id
        )
    }

    /// `{base}/{tenant}/oauth2/v2.0/token`.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.state.base_url, self.state.cfg.tenant_id
        )
    }

    /// Graph root without version, i.e. `{base}` (append `/v1.0` or `/beta`).
    pub fn graph_url(&self) -> String {
        self.state.base_url.clone()
    }

    /// Mints a callout bearer token as Entra would send it (see [`MintOptions`]).
    pub fn mint_callout_token(&self, opts: &MintOptions) -> anyhow::Result<String> {
        entra::mint_callout_token(&self.state, opts)
    }

    /// RS256 signature (base64url) of `signing_input` by the tenant's current published signing
    /// key, and that key's kid: for access tokens built by hand (any header, any encoding).
    pub fn sign_as_tenant(&self, signing_input: &str) -> anyhow::Result<(String, String)> {
        entra::sign_as_tenant(&self.state, signing_input)
    }

    /// Mints a PoP signed request as Entra sends it (see [`PopOptions`]); the value after `PoP `.
    pub fn mint_pop(&self, opts: &PopOptions) -> anyhow::Result<String> {
        pop::mint_pop(&self.state, opts)
    }

    /// The public JWK of the default PoP key (`rsa2048`, made at start: this does not fail in
    /// practice; the `Result` stays for callers written against the first version).
    pub fn pop_key_jwk(&self) -> anyhow::Result<serde_json::Value> {
        Ok(self
            .state
            .pop_keys
            .get(PopKeyKind::default(), false)?
            .public_jwk())
    }

    /// Mints a Graph access token as the token endpoint would return it to the configured
    /// Graph client.
    pub fn mint_graph_token(&self) -> anyhow::Result<String> {
        entra::mint_graph_token(&self.state, &self.state.cfg.graph_client_id)
    }

    /// Publishes a new signing key (RSA keygen runs on the blocking pool) and returns its kid.
    /// The previous keys stay published unless `retire_old`.
    pub async fn rotate_keys(&self, retire_old: bool) -> anyhow::Result<String> {
        entra::rotate_keys(&self.state, retire_old).await
    }

    /// Registers (or adds a callout to) an assignment request waiting for a callback.
    pub fn register_request(&self, reg: &RegisterRequest) -> anyhow::Result<RequestView> {
        graph::register(&self.state, reg, None)
    }

    /// Registers a request like [`Emulator::register_request`], in catalog `catalog_id`
    /// (catalog roles authorize resume per catalog).
    pub fn register_request_in_catalog(
        &self,
        reg: &RegisterRequest,
        catalog_id: &str,
    ) -> anyhow::Result<RequestView> {
        graph::register(&self.state, reg, Some(catalog_id))
    }

    /// Every service principal with its object id and grants.
    pub fn principals(&self) -> Vec<Principal> {
        principals::list(&self.state)
    }

    /// Object id of the service principal with `client_id`.
    pub fn principal_object_id(&self, client_id: &str) -> Option<String> {
        self.state
            .lock()
            .principals
            .get(client_id)
            .map(|p| p.object_id.clone())
    }

    /// Replaces the grant lists present in `grants` for the principal `client_id`.
    pub fn set_grants(&self, client_id: &str, grants: &Grants) -> anyhow::Result<()> {
        principals::set_grants(&self.state, client_id, grants)
    }

    /// Replaces the client secret the Graph app accepts (the old one then fails with
    /// AADSTS7000215).
    pub fn set_client_secret(&self, secret: &str) -> anyhow::Result<()> {
        entra::set_client_secret(&self.state, secret)
    }

    /// A projected Kubernetes service-account token (issuer `{base}/workload-identity`, `sub` =
    /// `federated_subject`, `aud` `api://AzureADTokenExchange`), as written to
    /// `AZURE_FEDERATED_TOKEN_FILE`; negative `expires_in_secs` gives an expired one.
    pub fn mint_federated_token(&self, expires_in_secs: i64) -> anyhow::Result<String> {
        entra::mint_federated_token(&self.state, expires_in_secs, None)
    }

    /// An access token as the token endpoint or the managed identity endpoint would issue it to
    /// principal `client_id` for `resource` (Graph, Key Vault or Storage).
    pub fn mint_access_token(&self, client_id: &str, resource: &str) -> anyhow::Result<String> {
        let audience = entra::audience_of_resource(resource)
            .ok_or_else(|| anyhow::anyhow!("no tokens for resource {resource:?}"))?;
        entra::mint_access_token(&self.state, client_id, audience)
    }

    /// `{base}/msi/token` (`IDENTITY_ENDPOINT`).
    pub fn managed_identity_url(&self) -> String {
        format!("{}/msi/token", self.state.base_url)
    }

    /// `{base}/vaults/accessgate`.
    pub fn key_vault_url(&self) -> String {
        keyvault::vault_url(&self.state)
    }

    /// Adds a version of Key Vault secret `name` (the latest wins); returns its id.
    pub fn put_secret(&self, name: &str, value: &str) -> anyhow::Result<String> {
        keyvault::put_secret(&self.state, name, value, None)
    }

    /// Creates a version of Key Vault certificate `name` (RSA-2048, self-signed), its key and
    /// its PEM secret; registers it on the Graph app unless told not to. RSA key generation
    /// takes tens of milliseconds.
    pub fn create_certificate(
        &self,
        name: &str,
        opts: CertificateOptions,
    ) -> anyhow::Result<CertificateInfo> {
        keyvault::create_certificate(&self.state, name, &opts)
    }

    /// Graph calls that arrived and are not answered yet (for example held by a `delay_ms`
    /// fault): lets a test act while a call is in flight.
    pub fn graph_calls_in_flight(&self) -> u64 {
        graph::graph_calls_in_flight(&self.state)
    }

    /// Every Graph call (at most the last 100000), oldest first.
    pub fn graph_calls(&self) -> Vec<GraphCall> {
        graph::graph_calls(&self.state)
    }

    /// State of a request and every callout it received, or `None` when unknown.
    /// Creates a Lifecycle Workflows task processing result waiting for its resume.
    pub fn register_task(&self, reg: &RegisterTask) -> anyhow::Result<TaskView> {
        lifecycle::register(&self.state, reg)
    }

    /// A task processing result (its timeout evaluated now).
    pub fn task(&self, id: &str) -> Option<TaskView> {
        lifecycle::view(&self.state, id)
    }

    pub fn request(&self, id: &str) -> Option<RequestView> {
        graph::view(&self.state, id)
    }

    /// Every accepted resume, oldest first.
    pub fn resumes(&self) -> Vec<ResumeRecord> {
        graph::resumes(&self.state)
    }

    /// Call counters.
    pub fn stats(&self) -> Stats {
        self.state.lock().stats.clone()
    }

    /// Installs a fault (replacing any fault for the same target).
    pub fn set_fault(&self, spec: &FaultSpec) -> anyhow::Result<()> {
        faults::set(&self.state, spec)
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        faults::clear(&self.state);
    }

    /// Replaces the directory and ServiceNow data with a world file's (docs/world-format.md),
    /// and catalogs, policies and custom extensions with the world's (dropping the ones created
    /// through Graph).
    pub fn load_world(&self, world: &World) -> anyhow::Result<()> {
        governance::load(&self.state, world)
    }

    /// Puts an Azure Resource Manager resource (`id`, ARM's JSON); `readers` are the object ids
    /// that may read it (empty: every principal).
    pub fn put_arm_resource(
        &self,
        id: &str,
        resource: serde_json::Value,
        readers: Vec<String>,
    ) -> anyhow::Result<()> {
        arm::put(
            &self.state,
            arm::PutResource {
                id: id.to_owned(),
                resource,
                readers,
            },
        )
    }

    /// `{base}/{tenant}/oauth2/v2.0/devicecode`.
    pub fn device_code_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/devicecode",
            self.state.base_url, self.state.cfg.tenant_id
        )
    }

    /// Limits the scopes the emulated administrator consents to at a device code sign-in (a
    /// delegated token's `scp` is what was asked for and is in `scopes`); `None`: everything
    /// asked for.
    pub fn set_device_user_scopes(&self, scopes: Option<&[&str]>) {
        entra::set_device_user_scopes(
            &self.state,
            scopes.map(|s| s.iter().map(|x| (*x).to_owned()).collect()),
        );
    }

    /// The credentials the emulated ServiceNow accepts (Basic user/password, OAuth client).
    pub fn servicenow_credentials(&self) -> ServiceNowCredentials {
        self.state.lock().servicenow.creds.clone()
    }

    /// Replaces the ServiceNow credentials; issued OAuth tokens are revoked.
    pub fn set_servicenow_credentials(&self, creds: &ServiceNowCredentials) -> anyhow::Result<()> {
        anyhow::ensure!(
            !creds.username.is_empty() && !creds.password.is_empty(),
            "username and password must not be empty"
        );
        let mut inner = self.state.lock();
        inner.servicenow.creds = creds.clone();
        inner.servicenow.tokens.clear();
        Ok(())
    }

    /// ServiceNow's `glide.invalid_query.returns_no_rows`: when set, a query naming an unknown
    /// field returns nothing instead of ignoring that part.
    /// The next `n` creates and `order_now` calls are committed, then answered 504.
    pub fn lose_servicenow_write_answers(&self, n: u32) {
        self.state.lock().servicenow.lose_write_answers = n;
    }

    pub fn set_servicenow_invalid_query_returns_no_rows(&self, on: bool) {
        self.state.lock().servicenow.invalid_query_returns_no_rows = on;
    }

    /// Every ServiceNow call (at most 10000), oldest first.
    pub fn servicenow_calls(&self) -> Vec<ServiceNowCall> {
        self.state.lock().servicenow.calls.clone()
    }

    /// Turns on the ServiceNow business rule's webhook (see [`WebhookSettings`]).
    pub fn set_servicenow_webhook(&self, settings: &WebhookSettings) -> anyhow::Result<()> {
        tickets::set_webhook(&self.state, settings)
    }

    /// Turns the webhook off (the business rule then posts nothing).
    pub fn clear_servicenow_webhook(&self) {
        tickets::clear_webhook(&self.state);
    }

    /// Every webhook delivery attempt (dropped ones included), oldest first.
    pub fn servicenow_webhooks(&self) -> Vec<WebhookDelivery> {
        tickets::deliveries(&self.state)
    }

    /// Every ServiceNow record created through the API that still exists, oldest first.
    pub fn servicenow_tickets(&self) -> Vec<TicketView> {
        tickets::tickets(&self.state)
    }

    /// Closes a ServiceNow record as an agent would (state, close notes, `active` false),
    /// firing the business rule; the webhook post, if any, runs on the current tokio runtime.
    pub fn close_servicenow_ticket(
        &self,
        table: &str,
        sys_id: &str,
        close: &CloseTicket,
    ) -> anyhow::Result<TicketView> {
        tickets::close(&self.state, table, sys_id, close)
    }

    /// Adds a `sc_cat_item` row that `order_now` accepts; returns its sys_id.
    pub fn add_servicenow_catalog_item(&self, name: &str) -> anyhow::Result<String> {
        tickets::add_catalog_item(&self.state, None, name)
    }

    /// Replaces the closed states of `table` (defaults: [`tickets::default_closed_states`]).
    pub fn set_servicenow_closed_states(&self, table: &str, states: &[&str]) -> anyhow::Result<()> {
        let states: Vec<String> = states.iter().map(|s| (*s).to_owned()).collect();
        tickets::set_closed_states(&self.state, table, &states)
    }

    /// Sends a callout like Entra, minting the token and registering the request in-process.
    /// Sends a PIM activation like PIM (see [`pim`]) and returns the verdict.
    pub async fn send_pim(&self, opts: &PimSendOptions) -> anyhow::Result<PimReport> {
        pim::send(self, opts).await
    }

    pub async fn send_callout(&self, opts: &SendOptions) -> anyhow::Result<SendReport> {
        sender::send_callout_with(sender::Backend::Local(self), opts).await
    }
}
