//! `[directory]`: what the directory reads may fetch per decision.

use serde::Deserialize;

use crate::settings::{self, Problems};

/// `[directory]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    external_entitlements_attribute: Option<String>,
    max_graph_calls_per_decision: Option<u64>,
}

/// Keys of `[directory]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &["external_entitlements_attribute"];

/// Settings of the directory reads (`[directory]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// A multi-valued user attribute (e.g. a directory extension) listing entitlements held in
    /// other systems, for SoD sets' `entitlements`.
    pub external_entitlements_attribute: Option<String>,
    /// The most Graph HTTP calls one decision may make (the batch plus nextLink pages).
    pub max_graph_calls_per_decision: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            external_entitlements_attribute: None,
            max_graph_calls_per_decision: 10,
        }
    }
}

impl Settings {
    pub fn from_raw(raw: Raw, p: &mut Problems) -> Settings {
        let external_entitlements_attribute = raw
            .external_entitlements_attribute
            .filter(|a| !a.trim().is_empty());
        if let Some(a) = &external_entitlements_attribute
            && !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            p.push(
                "directory.external_entitlements_attribute",
                "must be a Graph property name (letters, digits, _), e.g. extension_<appId>_entitlements",
            );
        }
        let max_graph_calls = settings::in_range(
            p,
            "directory.max_graph_calls_per_decision",
            raw.max_graph_calls_per_decision,
            10,
            1..=100,
        );
        Settings {
            external_entitlements_attribute,
            max_graph_calls_per_decision: max_graph_calls as u32,
        }
    }
}
