//! `[capture]`: whether accepted callouts are kept, and where.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::settings;

/// `[capture]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    enabled: Option<bool>,
    dir: Option<String>,
}

/// Keys of `[capture]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &["dir"];

/// `[capture]`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub enabled: bool,
    pub dir: PathBuf,
}

impl Settings {
    /// `dir` defaults to `capture` in the data directory; relative paths resolve against
    /// `base_dir`.
    pub fn from_raw(raw: Raw, base_dir: &Path, data_dir: &Path) -> Settings {
        Settings {
            enabled: raw.enabled.unwrap_or(false),
            dir: raw.dir.as_deref().map_or_else(
                || data_dir.join("capture"),
                |d| settings::resolve(base_dir, d),
            ),
        }
    }
}
