//! `[log]`: the log format and the default filter.

use serde::Deserialize;

use crate::settings::Problems;

/// `[log]` as written.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Raw {
    format: Option<String>,
    level: Option<String>,
}

/// Keys of `[log]` whose environment values stay strings (`config` layers them verbatim).
pub const STRING_KEYS: &[&str] = &["format", "level"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]`, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub format: LogFormat,
    pub level: String,
}

impl Settings {
    pub fn from_raw(raw: Raw, p: &mut Problems) -> Settings {
        let format = match raw.format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                crate::settings::not_one_of(
                    p,
                    "log.format",
                    other,
                    "must be text or json",
                    &["text", "json"],
                );
                LogFormat::Text
            }
        };
        let level = raw.level.unwrap_or_else(|| "info".into());
        if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
            p.push(
                "log.level",
                "not a valid filter such as info or accessgate=debug",
            );
        }
        Settings { format, level }
    }
}
