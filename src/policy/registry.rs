//! Check types by name: `[checks.NAME]` tables become [`CheckEntry`]s. Adding a check type is
//! one arm here plus its module under `checks/`.

use std::sync::Arc;
use std::time::Duration;

use super::{CheckEntry, parse_duration};
use crate::checks::sod::SodRules;
use crate::checks::{Check, hr, sod, ticket};

/// The check types a policy may name, with what they do (for errors and docs).
pub const TYPES: [(&str, &str); 3] = [
    ("sod", "separation of duties against [[risks]]"),
    ("hr", "HR status from Graph user attributes"),
    (
        "servicenow_ticket",
        "a ServiceNow ticket named in an answer or the justification",
    ),
];

/// Builds `[checks.NAME]`: its `type` (default: the name itself when that is a type), its
/// `timeout`, and the type's own settings. Every error is returned.
pub(super) fn build(
    name: &str,
    table: &toml::Table,
    sod_rules: Option<&Arc<SodRules>>,
    sod_invalid: bool,
    default_timeout: Duration,
) -> Result<CheckEntry, Vec<String>> {
    let at = format!("checks.{name}");
    let mut settings = table.clone();
    let kind = match settings.remove("type") {
        Some(toml::Value::String(t)) => t,
        Some(other) => return Err(vec![format!("{at}.type must be a string, not {other}")]),
        None if TYPES.iter().any(|(t, _)| *t == name) => name.to_owned(),
        None => {
            return Err(vec![format!(
                "{at}: give type = one of {}",
                TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
            )]);
        }
    };
    let mut errors = Vec::new();
    let timeout = match settings.remove("timeout") {
        None => default_timeout,
        Some(toml::Value::String(t)) => match parse_duration(&t) {
            Some(d) if !d.is_zero() => d,
            _ => {
                errors.push(format!(
                    "{at}.timeout {t:?} is not a duration such as \"5s\""
                ));
                default_timeout
            }
        },
        Some(other) => {
            errors.push(format!(
                "{at}.timeout must be a string such as \"5s\", not {other}"
            ));
            default_timeout
        }
    };
    let prefix = |e: Vec<String>| {
        e.into_iter()
            .map(|m| format!("{at}: {m}"))
            .collect::<Vec<_>>()
    };
    let check: Result<Arc<dyn Check>, Vec<String>> = match kind.as_str() {
        "sod" => match sod_rules {
            // The risks have errors of their own: "no risks" would be a follow-on. The check's
            // own settings are still checked.
            None if sod_invalid => Err(type_settings::<sod::SodSettings>(&at, &settings)
                .err()
                .unwrap_or_default()),
            None => Err(vec![format!(
                "{at}: a sod check needs [[risks]] in the policy"
            )]),
            Some(rules) => type_settings::<sod::SodSettings>(&at, &settings)
                .and_then(|s| sod::check(name, rules.clone(), s).map_err(prefix))
                .map(|c| Arc::new(c) as Arc<dyn Check>),
        },
        "hr" => type_settings::<hr::HrSettings>(&at, &settings)
            .and_then(|s| hr::check(name, s).map_err(prefix))
            .map(|c| Arc::new(c) as Arc<dyn Check>),
        "servicenow_ticket" => type_settings::<ticket::TicketSettings>(&at, &settings)
            .and_then(|s| ticket::check(name, s).map_err(prefix))
            .map(|c| Arc::new(c) as Arc<dyn Check>),
        other => Err(vec![format!(
            "{at}: unknown check type {other:?} (known: {})",
            TYPES.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
        )]),
    };
    match check {
        Ok(check) if errors.is_empty() => Ok(CheckEntry {
            name: name.to_owned(),
            timeout,
            check,
        }),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.extend(e);
            Err(errors)
        }
    }
}

/// A check type's own settings, key by key: every wrong key is named (`checks.hr.bogus: ...`).
fn type_settings<T: serde::de::DeserializeOwned>(
    at: &str,
    table: &toml::Table,
) -> Result<T, Vec<String>> {
    let r = crate::lenient::lenient::<T>(table, &[], true);
    match r.value {
        Some(v) if r.problems.is_empty() => Ok(v),
        _ => Err(r
            .problems
            .into_iter()
            .map(|p| match p.key {
                Some(k) => format!("{at}.{k}: {}", p.message),
                None => format!("{at}: {}", p.message),
            })
            .collect()),
    }
}
