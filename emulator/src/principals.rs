//! Service principals of the emulated tenant (the Graph app, a system-assigned and a
//! user-assigned managed identity) and their grants: Graph application permissions (the `roles`
//! of Graph tokens), entitlement-management catalog roles and Key Vault RBAC roles.
//!
//! Why: accessgate can run with least privilege (a catalog role instead of
//! `EntitlementManagement.ReadWrite.All`) and reads its credentials from Key Vault with a managed
//! identity; both paths need grants that tests can take away.

use anyhow::bail;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::state::Shared;

/// The Graph application permission that allows resume everywhere.
pub const READ_WRITE_ALL: &str = "EntitlementManagement.ReadWrite.All";
/// The Graph application permission that allows reading requests everywhere.
pub const READ_ALL: &str = "EntitlementManagement.Read.All";
/// What a new principal holds: resume everywhere, and the directory reads accessgate's checks
/// make (users with lifecycle attributes, group memberships, app role assignments, workflows).
/// Not `LifecycleWorkflows.ReadWrite.All`: task resumes are allowed by the extension's
/// `authorizedApps`, the least-privilege way.
pub const DEFAULT_GRAPH_PERMISSIONS: [&str; 6] = [
    READ_WRITE_ALL,
    "LifecycleWorkflows.Read.All",
    "User.Read.All",
    "User-LifeCycleInfo.Read.All",
    "GroupMember.Read.All",
    "Directory.Read.All",
];
/// Key Vault RBAC role that may read secrets.
pub const KV_SECRETS_USER: &str = "Key Vault Secrets User";
/// Key Vault RBAC role that may read certificates.
pub const KV_CERTIFICATE_USER: &str = "Key Vault Certificate User";
/// Key Vault RBAC role that may sign with keys.
pub const KV_CRYPTO_USER: &str = "Key Vault Crypto User";
/// Every Key Vault role the emulator knows.
pub const KEY_VAULT_ROLES: [&str; 3] = [KV_SECRETS_USER, KV_CERTIFICATE_USER, KV_CRYPTO_USER];

/// Entitlement-management catalog roles: display name and role definition id (the ids Entra
/// uses for these built-in roles).
pub const CATALOG_ROLE_DEFINITIONS: [(&str, &str); 5] = [
    ("Catalog owner", "ae79f266-94d4-4dab-b730-feca7e132178"),
    ("Catalog reader", "44272f93-9762-48e8-af59-1b5351b1d6b3"),
    (
        "Access package manager",
        "7f480852-ebdc-47d4-87de-0d8498384a83",
    ),
    (
        "Access package assignment manager",
        "e2182095-804a-4656-ae11-64734e9b7ae5",
    ),
    ("Catalog creator", "ba92d953-d8e0-4e39-a797-0cbedb0a89e8"),
];
/// Catalog roles that may resume requests of their catalog.
pub const RESUME_CATALOG_ROLES: [&str; 3] = [
    "Access package assignment manager",
    "Access package manager",
    "Catalog owner",
];

/// An entitlement-management catalog role held by a principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogRole {
    pub catalog_id: String,
    /// Display name, e.g. `Access package assignment manager`.
    pub role: String,
}

/// Body of `PUT /_emulator/principals/{client_id}` and argument of
/// [`crate::Emulator::set_grants`]: each member present replaces that list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    pub graph_permissions: Option<Vec<String>>,
    pub catalog_roles: Option<Vec<CatalogRole>>,
    pub key_vault_roles: Option<Vec<String>>,
}

/// What kind of service principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PrincipalKind {
    Application,
    SystemAssignedManagedIdentity,
    UserAssignedManagedIdentity,
}

/// A service principal and its grants, as listed by `GET /_emulator/principals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub client_id: String,
    pub object_id: String,
    pub kind: PrincipalKind,
    pub graph_permissions: Vec<String>,
    pub catalog_roles: Vec<CatalogRole>,
    pub key_vault_roles: Vec<String>,
}

impl Principal {
    pub(crate) fn new(client_id: String, object_id: String, kind: PrincipalKind) -> Self {
        let key_vault_roles = match kind {
            PrincipalKind::Application => Vec::new(),
            _ => KEY_VAULT_ROLES.iter().map(|r| (*r).to_owned()).collect(),
        };
        Self {
            client_id,
            object_id,
            kind,
            graph_permissions: DEFAULT_GRAPH_PERMISSIONS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
            catalog_roles: Vec::new(),
            key_vault_roles,
        }
    }

    /// Whether the principal holds one of `roles` on `catalog_id`.
    pub fn has_catalog_role(&self, catalog_id: &str, roles: &[&str]) -> bool {
        self.catalog_roles
            .iter()
            .any(|r| r.catalog_id == catalog_id && roles.contains(&r.role.as_str()))
    }
}

/// Role definition id of a catalog role display name.
pub fn catalog_role_definition_id(role: &str) -> Option<&'static str> {
    CATALOG_ROLE_DEFINITIONS
        .iter()
        .find(|(name, _)| *name == role)
        .map(|(_, id)| *id)
}

/// A stable GUID-shaped id for a role assignment.
pub(crate) fn assignment_id(object_id: &str, role: &CatalogRole) -> String {
    let digest = Sha256::digest(format!("{object_id}|{}|{}", role.catalog_id, role.role));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::from_bytes(bytes).to_string()
}

pub(crate) fn set_grants(state: &Shared, client_id: &str, grants: &Grants) -> anyhow::Result<()> {
    if let Some(roles) = &grants.catalog_roles {
        for role in roles {
            if catalog_role_definition_id(&role.role).is_none() {
                let known: Vec<&str> = CATALOG_ROLE_DEFINITIONS.iter().map(|(n, _)| *n).collect();
                bail!("unknown catalog role {:?} (known: {known:?})", role.role);
            }
        }
    }
    if let Some(roles) = &grants.key_vault_roles {
        for role in roles {
            if !KEY_VAULT_ROLES.contains(&role.as_str()) {
                bail!("unknown Key Vault role {role:?} (known: {KEY_VAULT_ROLES:?})");
            }
        }
    }
    let mut inner = state.lock();
    let Some(principal) = inner.principals.get_mut(client_id) else {
        bail!("unknown principal {client_id}");
    };
    if let Some(v) = &grants.graph_permissions {
        principal.graph_permissions.clone_from(v);
    }
    if let Some(v) = &grants.catalog_roles {
        principal.catalog_roles.clone_from(v);
    }
    if let Some(v) = &grants.key_vault_roles {
        principal.key_vault_roles.clone_from(v);
    }
    tracing::info!(%client_id, "grants changed");
    Ok(())
}

pub(crate) fn list(state: &Shared) -> Vec<Principal> {
    state.lock().principals.values().cloned().collect()
}
