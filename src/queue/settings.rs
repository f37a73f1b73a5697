//! `[queue]`: where jobs wait between the `202` and the worker (SQLite or Azure Storage).

use serde::Deserialize;

use crate::endpoint::EndpointUrl;
use crate::secret::Secret;
use crate::settings::{self, Problems};

/// `[queue]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    backend: Option<String>,
    connection_string: Option<Secret>,
    account_url: Option<String>,
    name: Option<String>,
    poison_name: Option<String>,
    max_unhandled_deliveries: Option<u64>,
}

/// Keys of `[queue]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &[
    "backend",
    "connection_string",
    "account_url",
    "name",
    "poison_name",
];

/// Where jobs wait between the `202` and the worker.
#[derive(Debug, Clone)]
pub enum Settings {
    /// The embedded SQLite queue in `server.data_dir` (one process).
    Sqlite,
    /// An Azure Storage queue shared by several `accessgate serve` instances.
    AzureStorage(AzureStorageSettings),
}

#[derive(Debug, Clone)]
pub struct AzureStorageSettings {
    /// The account's queue endpoint, e.g. `https://acct.queue.core.windows.net`.
    pub endpoint: EndpointUrl,
    pub auth: StorageAuthSettings,
    pub name: String,
    pub poison_name: String,
    /// Deliveries that ended without a recorded attempt (the worker died or could not read the
    /// message) before the message is moved to the poison queue.
    pub max_unhandled_deliveries: u32,
}

#[derive(Debug, Clone)]
pub enum StorageAuthSettings {
    /// Account key from a connection string (Azurite, or where Entra auth is not possible).
    SharedKey { account: String, key: Secret },
    /// An Entra token for `https://storage.azure.com/`: the managed identity's when the host has
    /// one, else the app registration's.
    Entra,
}

/// Storage queue names: 3-63 lower-case letters, digits and single dashes.
fn valid_queue_name(n: &str) -> bool {
    (3..=63).contains(&n.len())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !n.starts_with('-')
        && !n.ends_with('-')
        && !n.contains("--")
}

impl Settings {
    /// Validates `[queue]`; on problems it falls back to SQLite (the problems stop the start).
    pub fn from_raw(raw: Raw, p: &mut Problems) -> Settings {
        match raw.backend.as_deref().unwrap_or("sqlite") {
            "sqlite" => {
                if raw.connection_string.is_some() || raw.account_url.is_some() {
                    p.push(
                        "queue.backend",
                        "queue.connection_string / queue.account_url are set but queue.backend is sqlite: set backend = \"azure_storage\"",
                    );
                }
                Settings::Sqlite
            }
            "azure_storage" => {
                azure_storage(raw, p).map_or(Settings::Sqlite, Settings::AzureStorage)
            }
            _ => {
                p.push("queue.backend", "must be sqlite or azure_storage");
                Settings::Sqlite
            }
        }
    }
}

fn azure_storage(raw: Raw, p: &mut Problems) -> Option<AzureStorageSettings> {
    let name = raw.name.unwrap_or_else(|| "accessgate-jobs".into());
    if !valid_queue_name(&name) {
        p.push(
            "queue.name",
            "3-63 lower-case letters, digits and single dashes",
        );
    }
    let poison_name = raw.poison_name.unwrap_or_else(|| format!("{name}-poison"));
    if !valid_queue_name(&poison_name) || poison_name == name {
        p.push(
            "queue.poison_name",
            "3-63 lower-case letters, digits and single dashes, not the queue itself",
        );
    }
    let max_unhandled_deliveries = settings::in_range(
        p,
        "queue.max_unhandled_deliveries",
        raw.max_unhandled_deliveries,
        5,
        1..=100,
    );
    let (endpoint, auth) = match (raw.connection_string, raw.account_url) {
        (Some(cs), None) => match super::azure::parse_connection_string(cs.expose()) {
            Ok((endpoint, account, key)) => {
                Some((endpoint, StorageAuthSettings::SharedKey { account, key }))
            }
            Err(e) => {
                p.push("queue.connection_string", &e);
                None
            }
        },
        // Storage tokens come from the managed identity, or without one from the app
        // registration; a mode that needs the managed identity but has none is already warned
        // about (IDENTITY_ENDPOINT).
        (None, Some(url)) => settings::endpoint(p, "queue.account_url", &url)
            .map(|u| (u, StorageAuthSettings::Entra)),
        (Some(_), Some(_)) => {
            p.push(
                "queue.connection_string",
                "set queue.connection_string or queue.account_url, not both",
            );
            None
        }
        (None, None) => {
            p.push(
                "queue.account_url",
                "azure_storage needs queue.account_url (https://ACCOUNT.queue.core.windows.net, managed identity) or queue.connection_string (account key)",
            );
            None
        }
    }?;
    Some(AzureStorageSettings {
        endpoint,
        auth,
        name,
        poison_name,
        max_unhandled_deliveries: max_unhandled_deliveries as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_storage_rules() {
        assert!(valid_queue_name("accessgate-jobs"));
        for bad in ["ab", "Jobs", "-jobs", "jobs-", "a--b", &"a".repeat(64)] {
            assert!(!valid_queue_name(bad), "{bad}");
        }
    }
}
