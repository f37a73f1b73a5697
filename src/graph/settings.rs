//! `[graph]`: where and how fast accessgate calls Microsoft Graph.

use std::time::Duration;

use serde::Deserialize;

use crate::credentials::GraphTokenSettings;
use crate::credentials::settings::Cloud;
use crate::endpoint::EndpointUrl;
use crate::settings::{self, Problems};

/// `graph.timeout_seconds` when unset.
const DEFAULT_TIMEOUT_SECONDS: u64 = 10;

/// `[graph]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    base_url: Option<String>,
    api_version: Option<String>,
    scope: Option<String>,
    /// Moved to `[credentials]`; kept only to say so.
    client_id: Option<toml::Value>,
    client_secret: Option<toml::Value>,
    resume_source: Option<String>,
    timeout_seconds: Option<u64>,
    max_requests_per_second: Option<u64>,
    circuit_failure_threshold: Option<u64>,
    circuit_open_seconds: Option<u64>,
}

/// Keys of `[graph]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &["base_url", "api_version", "scope", "resume_source"];

impl Raw {
    /// `graph.timeout_seconds` as configured, unchecked: the worker's lease is bounded by it even
    /// when `[graph]` has other problems.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphApiVersion {
    V1,
    Beta,
}

impl GraphApiVersion {
    pub fn segment(self) -> &'static str {
        match self {
            Self::V1 => "v1.0",
            Self::Beta => "beta",
        }
    }
}

/// `[graph]`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub base_url: EndpointUrl,
    pub api_version: GraphApiVersion,
    pub scope: String,
    pub resume_source: String,
    pub timeout: Duration,
    /// Requests per second this process sends to Graph at most (token bucket, burst the same).
    pub max_requests_per_second: u32,
    /// Consecutive transient failures that open the circuit breaker.
    pub circuit_failure_threshold: u32,
    /// The longest an open breaker refuses calls before one probe is let through: the first
    /// open period is 1 s, each failed probe doubles it up to this.
    pub circuit_open: Duration,
}

impl GraphTokenSettings for Settings {
    fn scope(&self) -> &str {
        &self.scope
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Settings {
    /// `None` when `graph.base_url` is unusable; `cloud` gives the default host and scope.
    pub fn from_raw(raw: Raw, cloud: &Cloud, p: &mut Problems) -> Option<Settings> {
        let timeout = raw.timeout();
        let base_url = settings::endpoint(
            p,
            "graph.base_url",
            raw.base_url.as_deref().unwrap_or(cloud.graph),
        );
        let api_version = match raw.api_version.as_deref().unwrap_or("v1.0") {
            "v1.0" => GraphApiVersion::V1,
            "beta" => GraphApiVersion::Beta,
            other => {
                crate::settings::not_one_of(
                    p,
                    "graph.api_version",
                    other,
                    "must be v1.0 or beta",
                    &["v1.0", "beta"],
                );
                GraphApiVersion::V1
            }
        };
        let scope = raw
            .scope
            .unwrap_or_else(|| format!("{}/.default", cloud.graph));
        if !scope.ends_with("/.default") {
            p.push(
                "graph.scope",
                "must end with /.default (client credentials flow)",
            );
        }
        for (moved, value) in [
            ("client_id", &raw.client_id),
            ("client_secret", &raw.client_secret),
        ] {
            if value.is_some() {
                p.push(
                    &format!("graph.{moved}"),
                    &format!(
                        "moved to credentials.{moved} (with credentials.mode = \"client_secret\")"
                    ),
                );
            }
        }
        let max_requests_per_second = settings::in_range(
            p,
            "graph.max_requests_per_second",
            raw.max_requests_per_second,
            20,
            1..=10_000,
        );
        let circuit_failure_threshold = settings::in_range(
            p,
            "graph.circuit_failure_threshold",
            raw.circuit_failure_threshold,
            5,
            1..=10_000,
        );
        let circuit_open = settings::seconds(
            p,
            "graph.circuit_open_seconds",
            raw.circuit_open_seconds,
            // A probe is one request: probing every 5 s costs nothing and keeps the time from
            // Graph's return to the first resume short.
            5,
            1..=600,
        );
        let resume_source = raw.resume_source.unwrap_or_else(|| "accessgate".into());
        if !(1..=120).contains(&timeout.as_secs()) {
            p.push("graph.timeout_seconds", "must be between 1 and 120");
        }
        Some(Settings {
            base_url: base_url?,
            api_version,
            scope,
            resume_source,
            timeout,
            max_requests_per_second: max_requests_per_second as u32,
            circuit_failure_threshold: circuit_failure_threshold as u32,
            circuit_open,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ConfigProblem;

    fn problems(text: &str) -> Vec<ConfigProblem> {
        let raw: Raw = toml::from_str(text).unwrap();
        let mut p = Problems::default();
        Settings::from_raw(raw, &Cloud::GLOBAL, &mut p);
        p.into_parts().0
    }

    /// The token's audience is the cloud's Graph resource: a proxy or emulator in
    /// `graph.base_url` does not change it (README, `graph.scope`).
    #[test]
    fn the_default_scope_follows_the_cloud_not_the_base_url() {
        for (cloud, scope) in [
            ("global", "https://graph.microsoft.com/.default"),
            ("usgov", "https://graph.microsoft.us/.default"),
            ("usgov-dod", "https://dod-graph.microsoft.us/.default"),
            ("china", "https://microsoftgraph.chinacloudapi.cn/.default"),
        ] {
            let cloud = Cloud::named(cloud).unwrap();
            for base in ["", "base_url = \"https://graph-proxy.contoso.example\"\n"] {
                let raw: Raw = toml::from_str(base).unwrap();
                let mut p = Problems::default();
                let s = Settings::from_raw(raw, &cloud, &mut p).unwrap();
                assert_eq!(s.scope, scope, "{base}");
            }
        }
    }

    #[test]
    fn graph_resilience_settings_have_bounds() {
        let errs = problems(
            "max_requests_per_second = 0\ncircuit_failure_threshold = 0\ncircuit_open_seconds = 0\n",
        );
        for s in [
            "graph.max_requests_per_second",
            "graph.circuit_failure_threshold",
            "graph.circuit_open_seconds",
        ] {
            assert!(
                errs.iter().any(|p| p.setting == s),
                "missing {s} in {errs:?}"
            );
        }
    }

    #[test]
    fn moved_credentials_name_their_new_place() {
        // The old place is named, not just refused.
        let errs = problems("client_id = \"aaaaaaaa-0000-0000-0000-000000000001\"\n");
        assert!(
            errs.iter()
                .any(|p| p.setting == "graph.client_id"
                    && p.message.contains("credentials.client_id")),
            "{errs:?}"
        );
    }
}
