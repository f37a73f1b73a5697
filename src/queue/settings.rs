//! `[queue]`: where jobs wait between the `202` and the worker (SQLite or Azure Storage).

use std::time::Duration;

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
    table_endpoint: Option<String>,
    wait_table: Option<String>,
    wait_recheck_seconds: Option<u64>,
}

/// Keys of `[queue]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &[
    "backend",
    "connection_string",
    "account_url",
    "name",
    "poison_name",
    "table_endpoint",
    "wait_table",
];

/// Where jobs wait between the `202` and the worker.
#[derive(Debug, Clone)]
pub enum Settings {
    /// The embedded SQLite queue in `server.data_dir` (one process).
    Sqlite,
    /// An Azure Storage queue shared by several `accessgate serve` instances.
    AzureStorage(Box<AzureStorageSettings>),
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
    /// The account's table endpoint, for the index of parked jobs.
    pub table_endpoint: EndpointUrl,
    pub wait_table: String,
    /// A parked message hides at most this long before it checks for a missed wake.
    pub wait_recheck: Duration,
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
            "azure_storage" => azure_storage(raw, p)
                .map_or(Settings::Sqlite, |s| Settings::AzureStorage(Box::new(s))),
            other => {
                crate::settings::not_one_of(
                    p,
                    "queue.backend",
                    other,
                    "must be sqlite or azure_storage",
                    &["sqlite", "azure_storage"],
                );
                Settings::Sqlite
            }
        }
    }
}

/// Azure Table names: 3-63 letters and digits, starting with a letter.
fn valid_table_name(n: &str) -> bool {
    (3..=63).contains(&n.len())
        && n.starts_with(|c: char| c.is_ascii_alphabetic())
        && n.chars().all(|c| c.is_ascii_alphanumeric())
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
    let wait_table = raw.wait_table.unwrap_or_else(|| "accessgatewaits".into());
    if !valid_table_name(&wait_table) {
        p.push(
            "queue.wait_table",
            "3-63 letters and digits, starting with a letter",
        );
    }
    let recheck = settings::in_range(
        p,
        "queue.wait_recheck_seconds",
        raw.wait_recheck_seconds,
        3600,
        10..=7 * 24 * 3600,
    );
    let mut cs_table = None;
    let (endpoint, auth) = match (raw.connection_string, raw.account_url) {
        (Some(cs), None) => {
            cs_table = super::azure::connection_string_table_endpoint(cs.expose());
            match super::azure::parse_connection_string(cs.expose()) {
                Ok((endpoint, account, key)) => {
                    Some((endpoint, StorageAuthSettings::SharedKey { account, key }))
                }
                Err(e) => {
                    p.push("queue.connection_string", &e.to_string());
                    None
                }
            }
        }
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
    let table_endpoint = match raw.table_endpoint.or(cs_table) {
        Some(t) => settings::endpoint(p, "queue.table_endpoint", &t),
        None => {
            let derived = super::azure::table_endpoint_for(&endpoint);
            if derived.is_none() {
                p.push(
                    "queue.table_endpoint",
                    "cannot be derived from the queue endpoint: set it (https://ACCOUNT.table.core.windows.net)",
                );
            }
            derived
        }
    }?;
    Some(AzureStorageSettings {
        endpoint,
        auth,
        name,
        poison_name,
        max_unhandled_deliveries: max_unhandled_deliveries as u32,
        table_endpoint,
        wait_table,
        wait_recheck: Duration::from_secs(recheck),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_the_storage_rules() {
        assert!(valid_table_name("accessgatewaits"));
        for bad in ["ab", "1waits", "wait-s", &"a".repeat(64)] {
            assert!(!valid_table_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_table_endpoint_is_derived_or_named() {
        let mut p = Problems::default();
        let raw: Raw = toml::from_str(
            "backend = \"azure_storage\"\naccount_url = \"https://acct.queue.core.windows.net\"",
        )
        .unwrap();
        let Settings::AzureStorage(s) = Settings::from_raw(raw, &mut p) else {
            panic!("azure storage")
        };
        assert_eq!(
            s.table_endpoint.base(),
            "https://acct.table.core.windows.net"
        );
        assert_eq!(s.wait_table, "accessgatewaits");
        assert_eq!(s.wait_recheck, Duration::from_secs(3600));
        let raw: Raw = toml::from_str(
            "backend = \"azure_storage\"\naccount_url = \"https://queues.example.com\"",
        )
        .unwrap();
        Settings::from_raw(raw, &mut p);
        let (problems, _) = p.into_parts();
        assert!(
            problems.iter().any(|e| e.setting == "queue.table_endpoint"),
            "{problems:?}"
        );
    }

    #[test]
    fn queue_names_follow_the_storage_rules() {
        assert!(valid_queue_name("accessgate-jobs"));
        for bad in ["ab", "Jobs", "-jobs", "jobs-", "a--b", &"a".repeat(64)] {
            assert!(!valid_queue_name(bad), "{bad}");
        }
    }
}
