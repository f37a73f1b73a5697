//! What every settings section shares: the problem collector and the parse helpers. Each module
//! owns its section (`<module>::Settings::from_raw`); `config` only layers the sources and
//! assembles the sections.
//!
//! Invariant: a leaf. It imports nothing from the crate but [`crate::endpoint`] and
//! [`crate::lenient`] (leaves too), so any module can
//! parse its settings without an import cycle through `config`.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::endpoint::EndpointUrl;

/// One thing wrong with a configuration, with the setting it concerns. The message never
/// carries the setting's value (it may be a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub setting: String,
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

/// Everything wrong with a configuration, each with the setting it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{} configuration problem(s):\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

/// Collects every problem of every section, so `check-config` reports them all at once, and the
/// warnings: things that do not stop the service but will make work wait.
#[derive(Debug, Default)]
pub struct Problems {
    errors: Vec<ConfigProblem>,
    warnings: Vec<ConfigProblem>,
}

impl Problems {
    pub fn push(&mut self, setting: &str, message: &str) {
        self.errors.push(ConfigProblem {
            setting: setting.into(),
            message: message.into(),
        });
    }

    /// The value, or `None` with the error recorded against `setting`.
    pub fn check<T>(&mut self, setting: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(m) => {
                self.push(setting, &m);
                None
            }
        }
    }

    pub fn warn(&mut self, setting: &str, message: &str) {
        self.warnings.push(ConfigProblem {
            setting: setting.into(),
            message: message.into(),
        });
    }

    /// Errors so far; a section compares it before and after to know whether it added any.
    pub fn count(&self) -> usize {
        self.errors.len()
    }

    /// The settings that have an error so far.
    pub fn settings(&self) -> impl Iterator<Item = &str> {
        self.errors.iter().map(|e| e.setting.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// (errors, warnings).
    pub fn into_parts(self) -> (Vec<ConfigProblem>, Vec<ConfigProblem>) {
        (self.errors, self.warnings)
    }
}

/// A value outside its choices: `must` ("must be text or json") plus the near miss, if any
/// ("did you mean json?"). The value itself is never shown.
pub fn not_one_of(p: &mut Problems, setting: &str, given: &str, must: &str, choices: &[&str]) {
    let hint = crate::lenient::did_you_mean(given, choices)
        .map(|s| format!(" (did you mean {s}?)"))
        .unwrap_or_default();
    p.push(setting, &format!("{must}{hint}"));
}

/// `v` (or `default`), with "must be between LO and HI" recorded when outside `range`.
pub fn in_range(
    p: &mut Problems,
    setting: &str,
    v: Option<u64>,
    default: u64,
    range: RangeInclusive<u64>,
) -> u64 {
    let v = v.unwrap_or(default);
    if !range.contains(&v) {
        p.push(
            setting,
            &format!("must be between {} and {}", range.start(), range.end()),
        );
    }
    v
}

/// A `*_seconds` setting bounded by `range` ("must be between LO and HI").
pub fn seconds(
    p: &mut Problems,
    setting: &str,
    v: Option<u64>,
    default: u64,
    range: RangeInclusive<u64>,
) -> Duration {
    Duration::from_secs(in_range(p, setting, v, default, range))
}

/// A `*_seconds` setting with only an upper bound ("at most MAX").
pub fn seconds_at_most(
    p: &mut Problems,
    setting: &str,
    v: Option<u64>,
    default: u64,
    max: u64,
) -> Duration {
    let v = v.unwrap_or(default);
    if v > max {
        p.push(setting, &format!("at most {max}"));
    }
    Duration::from_secs(v)
}

/// An optional GUID setting, normalised (lower case, hyphenated); empty counts as unset.
pub fn guid(p: &mut Problems, setting: &str, v: Option<&str>, what: &str) -> Option<String> {
    match v {
        None | Some("") => None,
        Some(v) => match uuid::Uuid::parse_str(v) {
            Ok(u) => Some(u.to_string()),
            Err(_) => {
                p.push(setting, &format!("must be a GUID ({what})"));
                None
            }
        },
    }
}

pub fn is_guid(v: &str) -> bool {
    uuid::Uuid::parse_str(v).is_ok()
}

/// An outbound endpoint (https, or http to loopback only: [`EndpointUrl`]).
pub fn endpoint(p: &mut Problems, setting: &str, v: &str) -> Option<EndpointUrl> {
    p.check(setting, EndpointUrl::parse(v).map_err(|e| e.to_string()))
}

/// A path setting: relative paths resolve against the config file's directory.
pub fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() { p } else { base.join(p) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_name_their_bounds_and_keep_the_value() {
        let mut p = Problems::default();
        assert_eq!(in_range(&mut p, "a.b", None, 5, 1..=10), 5);
        assert!(p.is_empty());
        assert_eq!(in_range(&mut p, "a.b", Some(0), 5, 1..=10), 0);
        assert_eq!(
            seconds_at_most(&mut p, "a.c_seconds", Some(301), 60, 300),
            Duration::from_secs(301)
        );
        p.warn("a.d", "later");
        let (errors, warnings) = p.into_parts();
        assert_eq!(
            errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["a.b: must be between 1 and 10", "a.c_seconds: at most 300"]
        );
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn guids_are_normalised_and_empty_is_unset() {
        let mut p = Problems::default();
        assert_eq!(guid(&mut p, "x", Some(""), "id"), None);
        assert_eq!(
            guid(
                &mut p,
                "x",
                Some("AAAAAAAA-0000-0000-0000-000000000001"),
                "id"
            ),
            Some("aaaaaaaa-0000-0000-0000-000000000001".into())
        );
        assert!(p.is_empty());
        assert_eq!(guid(&mut p, "x", Some("contoso.com"), "the id"), None);
        assert_eq!(p.into_parts().0[0].message, "must be a GUID (the id)");
    }

    #[test]
    fn relative_paths_resolve_against_the_base() {
        assert_eq!(
            resolve(Path::new("/etc/ag"), "p.toml"),
            Path::new("/etc/ag/p.toml")
        );
        assert_eq!(
            resolve(Path::new("/etc/ag"), "/var/p.toml"),
            Path::new("/var/p.toml")
        );
    }
}
