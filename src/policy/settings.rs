//! `[policy]`: the policy file and how long one decision may take. Extensions name their own
//! policy files (`extensions.NAME.policy_file`) and load them with [`load_file`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Policy;
use crate::settings::{self, Problems};

/// `[policy]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    file: Option<String>,
    decision_timeout_seconds: Option<u64>,
}

/// Keys of `[policy]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &["file"];

/// `[policy]`, validated: the loaded policy (the default policy when no file is set).
#[derive(Debug, Clone)]
pub struct Settings {
    pub policy: Policy,
    pub file: Option<PathBuf>,
    /// How long one decision (directory reads + checks) may take, before the callout's deadline
    /// cuts it shorter (`policy.decision_timeout_seconds`).
    pub decision_timeout: Duration,
}

/// Loads a policy file; each of its problems is recorded against `setting`.
pub fn load_file(path: &Path, setting: &str, p: &mut Problems) -> Option<Policy> {
    match Policy::load(path) {
        Ok(pol) => Some(pol),
        Err(errs) => {
            for e in errs {
                p.push(setting, &e);
            }
            None
        }
    }
}

impl Settings {
    /// Validates `[policy]` and loads its file; relative paths resolve against `base_dir`.
    pub fn from_raw(raw: Raw, base_dir: &Path, p: &mut Problems) -> Settings {
        let file = raw.file.as_deref().map(|f| settings::resolve(base_dir, f));
        let policy = file
            .as_deref()
            .and_then(|f| load_file(f, "policy.file", p))
            .unwrap_or_default();
        let decision_timeout = settings::seconds(
            p,
            "policy.decision_timeout_seconds",
            raw.decision_timeout_seconds,
            30,
            1..=600,
        );
        Settings {
            policy,
            file,
            decision_timeout,
        }
    }
}
