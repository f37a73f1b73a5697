//! Shared in-memory state of the emulated tenant: signing keys, assignment requests, accepted
//! resumes, counters and faults.
//!
//! One `std::sync::Mutex` guards it all: every operation is short and synchronous, and the lock
//! is never held across an `.await` (handlers copy what they need out, then await).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::EmulatorConfig;
use crate::entra::SigningKey;
use crate::faults::Faults;
use crate::graph::{GraphCall, RequestRecord, ResumeRecord};
use crate::keyvault::{CertVersion, Vault};
use crate::pop::{PopKey, PopKeys};
use crate::principals::{Principal, PrincipalKind};

pub(crate) type AppState = Arc<Shared>;

/// Immutable facts plus the mutable [`Inner`].
pub(crate) struct Shared {
    pub cfg: EmulatorConfig,
    /// `http://127.0.0.1:PORT`, fixed once bound.
    pub base_url: String,
    /// Object id of the entitlement-management service principal in this tenant (`oid`/`sub`
    /// of callout tokens).
    pub elm_object_id: String,
    /// A key that signs tokens but is never published (`sign_with: "unknown"`).
    pub unknown_key: Arc<SigningKey>,
    /// PoP keys: the default one made at start, the others on first use.
    pub pop_keys: PopKeys,
    inner: Mutex<Inner>,
}

pub(crate) struct Inner {
    /// Every key ever generated, oldest first; the last one signs.
    pub keys: Vec<KeySlot>,
    pub requests: BTreeMap<String, RequestRecord>,
    pub resumes: Vec<ResumeRecord>,
    pub stats: Stats,
    pub faults: Faults,
    /// Service principals by client id.
    pub principals: BTreeMap<String, Principal>,
    /// The client secret the Graph app accepts (rotatable).
    pub client_secret: String,
    /// Certificates registered on the Graph app (keyCredentials), oldest first.
    pub app_certs: Vec<Arc<CertVersion>>,
    /// The one emulated Key Vault.
    pub vault: Vault,
    /// Every Graph call, oldest first, bounded to [`crate::graph::GRAPH_CALL_LOG_LIMIT`].
    pub graph_calls: VecDeque<GraphCall>,
    /// Graph calls that arrived and are not answered yet (a delay fault holds them).
    pub graph_in_flight: u64,
    /// Deadlines of waiting callouts: (deadline, request id, stage instance id).
    pub deadlines: BTreeSet<(Instant, String, String)>,
    /// Directory and ServiceNow data (`load_world`).
    pub world: crate::directory::World,
    pub servicenow: crate::servicenow::ServiceNowState,
    /// Lifecycle Workflows task processing results by id.
    pub tasks: BTreeMap<String, crate::lifecycle::TaskRecord>,
    /// Catalogs, policies and custom extensions (`governance`): the world's, plus what Graph
    /// calls created since it was loaded.
    pub governance: crate::governance::Governance,
    /// Azure Resource Manager resources, by lower-case id.
    pub arm: BTreeMap<String, crate::arm::ArmResource>,
    /// Device codes issued and not yet redeemed, by code.
    pub device_codes: BTreeMap<String, crate::entra::DeviceCode>,
    /// The scopes the emulated administrator consents to (`None`: whatever is asked for).
    pub device_user_scopes: Option<Vec<String>>,
}

pub(crate) struct KeySlot {
    pub key: Arc<SigningKey>,
    /// Retired keys stay here (so tests can reason about them) but leave the JWKS.
    pub published: bool,
}

/// Call counters, as served by `GET /_emulator/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub jwks_fetches: u64,
    pub metadata_fetches: u64,
    pub token_requests: u64,
    /// Every call to a resume route, including faulted, unauthenticated and rejected ones.
    pub resume_calls: u64,
    pub resume_accepted: u64,
    /// Calls answered 4xx by validation or authentication (not injected faults).
    pub resume_rejected: u64,
    /// Calls to the managed identity endpoint (`GET /msi/token`).
    #[serde(default)]
    pub managed_identity_requests: u64,
    /// Calls to the Key Vault routes (`/vaults/accessgate/...`).
    #[serde(default)]
    pub key_vault_requests: u64,
    /// Requests inside `$batch` calls (the batch itself is one Graph call).
    #[serde(default)]
    pub graph_batch_inner_requests: u64,
    /// Calls to the ServiceNow routes (Table API and token).
    #[serde(default)]
    pub servicenow_calls: u64,
}

impl Shared {
    pub fn new(
        cfg: EmulatorConfig,
        base_url: String,
        current: SigningKey,
        unknown: SigningKey,
        pop_key: PopKey,
    ) -> Self {
        let mut principals = BTreeMap::new();
        for (client_id, object_id, kind) in [
            (
                cfg.graph_client_id.clone(),
                uuid::Uuid::new_v4().to_string(),
                PrincipalKind::Application,
            ),
            (
                cfg.managed_identity_client_id.clone(),
                uuid::Uuid::new_v4().to_string(),
                PrincipalKind::SystemAssignedManagedIdentity,
            ),
            (
                cfg.user_assigned_client_id.clone(),
                uuid::Uuid::new_v4().to_string(),
                PrincipalKind::UserAssignedManagedIdentity,
            ),
        ] {
            principals
                .entry(client_id.clone())
                .or_insert_with(|| Principal::new(client_id, object_id, kind));
        }
        let client_secret = cfg.graph_client_secret.clone();
        Self {
            cfg,
            base_url,
            elm_object_id: uuid::Uuid::new_v4().to_string(),
            unknown_key: Arc::new(unknown),
            pop_keys: PopKeys::new(pop_key),
            inner: Mutex::new(Inner {
                keys: vec![KeySlot {
                    key: Arc::new(current),
                    published: true,
                }],
                requests: BTreeMap::new(),
                resumes: Vec::new(),
                stats: Stats::default(),
                faults: Faults::default(),
                principals,
                client_secret,
                app_certs: Vec::new(),
                vault: Vault::default(),
                graph_calls: VecDeque::new(),
                graph_in_flight: 0,
                deadlines: BTreeSet::new(),
                world: crate::directory::World::default(),
                servicenow: crate::servicenow::ServiceNowState::new(),
                tasks: BTreeMap::new(),
                governance: crate::governance::Governance::default(),
                arm: BTreeMap::new(),
                device_codes: BTreeMap::new(),
                device_user_scopes: None,
            }),
        }
    }

    /// Locks the state. A panic while holding the lock cannot leave it logically broken (every
    /// mutation is a single assignment or push), so a poisoned lock is recovered.
    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn issuer_v1(&self, tenant: &str) -> String {
        format!("{}/{}/", self.base_url, tenant)
    }

    pub fn issuer_v2(&self, tenant: &str) -> String {
        format!("{}/{}/v2.0", self.base_url, tenant)
    }
}

impl Inner {
    /// The key that signs new tokens.
    pub fn current_key(&self) -> Option<Arc<SigningKey>> {
        self.keys.last().map(|slot| slot.key.clone())
    }

    /// The principal whose object id is `oid`.
    pub fn principal_by_oid(&self, oid: &str) -> Option<&Principal> {
        self.principals.values().find(|p| p.object_id == oid)
    }

    pub fn published_keys(&self) -> Vec<Arc<SigningKey>> {
        self.keys
            .iter()
            .filter(|slot| slot.published)
            .map(|slot| slot.key.clone())
            .collect()
    }
}
