//! Reading a policy file entry by entry: each `[[risks]]`, `[[rules]]`, `[packages.X]`, ... is
//! read on its own and key by key ([`crate::lenient`]), so one mistake is one error, located
//! (line, entry by name), and the rest of the file is still checked. An entry with a mistake is
//! kept as far as it can be read (a missing owner does not hide an unknown package in its
//! sets), and the checks its mistake would mislead are skipped (no follow-on errors).

use std::collections::{BTreeMap, BTreeSet};

use serde::de::DeserializeOwned;

use super::{RawDefaults, RawDetail, RawPackage, RawPolicy, RawRule};
use crate::checks::sod::{RawException, RawFunction, RawRisk, RawSet, Severity};
use crate::lenient::{self, Spans};

/// Errors, each with the line it points at; printed in file order.
pub(super) struct Errors<'a> {
    pub spans: &'a Spans,
    list: Vec<(Option<usize>, String)>,
}

impl<'a> Errors<'a> {
    pub fn new(spans: &'a Spans) -> Errors<'a> {
        Errors {
            spans,
            list: Vec::new(),
        }
    }

    /// An error about the key or entry at `path` (`rules.2.stages`, `checks.hr`).
    pub fn at(&mut self, path: &str, msg: String) {
        let line = self.spans.line(path);
        self.list.push((line, msg));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// `line N: message`, in file order.
    pub fn into_sorted(mut self) -> Vec<String> {
        self.list.sort_by_key(|(l, _)| l.unwrap_or(0));
        self.list
            .into_iter()
            .map(|(l, m)| match l {
                Some(l) => format!("line {l}: {m}"),
                None => m,
            })
            .collect()
    }
}

/// How a `[[risks]]` or `[[rules]]` entry is named in errors: by its name, else by its place.
fn label(section: &str, t: &toml::Table, i: usize) -> String {
    match t.get("name").and_then(toml::Value::as_str) {
        Some(name) => format!("[[{section}]] {name:?}"),
        None => format!("[[{section}]] entry {}", i + 1),
    }
}

/// A `[[rules]]` entry as read, with the keys that could not be read.
pub(super) struct ReadRule {
    pub index: usize,
    /// How errors name it (`[[rules]] "finance"`, or `[[rules]] entry 3` without a name).
    pub label: String,
    pub raw: RawRule,
    pub bad: BTreeSet<String>,
}

/// The policy as far as it could be read, and what to keep quiet about.
pub(super) struct Read {
    pub raw: RawPolicy,
    pub rules: Vec<ReadRule>,
    /// Index in the file of each risk passed on (the n-th of `raw.risks`).
    pub risk_index: Vec<usize>,
    /// Index in the file of each exception passed on.
    pub exception_index: Vec<usize>,
    /// Whether the file has `[[risks]]` entries at all (some may not have been readable).
    pub risks_written: bool,
    /// SoD errors that would only repeat a mistake already reported (prefixes).
    pub quiet: Vec<String>,
    /// `[[pim_rules]]` entries that could be read: (index in the file, label, rule).
    pub pim_rules: Vec<(usize, String, super::pim::RawPimRule)>,
}

const EXCEPTION_FIELDS: [&str; 5] = ["user", "risk", "expires", "approver", "reason"];

/// The stand-in for an exception field that is missing or wrong.
const NOT_GIVEN: &str = "(not given)";

/// Whether a SoD error is only about a stand-in.
pub(super) fn about_stand_in(msg: &str) -> bool {
    msg.ends_with(&format!("unknown risk {NOT_GIVEN:?}"))
        || msg.contains(&format!("expires {NOT_GIVEN:?} is not"))
}

const TOP: [&str; 11] = [
    "version",
    "defaults",
    "packages",
    "checks",
    "functions",
    "risks",
    "exceptions",
    "tickets",
    "approvals",
    "rules",
    "pim_rules",
];

fn report(e: &mut Errors<'_>, path: &str, label: &str, problems: Vec<lenient::KeyProblem>) {
    for p in problems {
        match p.key {
            Some(k) => e.at(
                &format!("{path}.{k}"),
                format!("{label}: {k}: {}", p.message),
            ),
            None => e.at(path, format!("{label}: {}", p.message)),
        }
    }
}

/// `[NAME.KEY]` tables (packages, functions, checks): each read on its own.
fn named_tables<T: DeserializeOwned>(
    root: &toml::Table,
    section: &str,
    e: &mut Errors<'_>,
) -> BTreeMap<String, (T, BTreeSet<String>)> {
    let mut out = BTreeMap::new();
    match root.get(section) {
        None => {}
        Some(toml::Value::Table(all)) => {
            for (name, v) in all {
                let path = format!("{section}.{name}");
                let Some(t) = v.as_table() else {
                    e.at(
                        &path,
                        format!(
                            "{path}: expected a table, got {}",
                            lenient::kind_of_value(v)
                        ),
                    );
                    continue;
                };
                let r = lenient::lenient::<T>(t, &[], true);
                report(e, &path, &path, r.problems);
                if let Some(v) = r.value {
                    out.insert(name.clone(), (v, r.bad_keys));
                }
            }
        }
        Some(other) => e.at(
            section,
            format!(
                "{section}: expected a table of [{section}.NAME], got {}",
                lenient::kind_of_value(other)
            ),
        ),
    }
    out
}

/// `[[NAME]]` entries as tables, each with its index.
fn entries<'t>(
    root: &'t toml::Table,
    section: &str,
    e: &mut Errors<'_>,
) -> Vec<(usize, &'t toml::Table)> {
    match root.get(section) {
        None => Vec::new(),
        Some(toml::Value::Array(a)) => a
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match v.as_table() {
                Some(t) => Some((i, t)),
                None => {
                    e.at(
                        &format!("{section}.{i}"),
                        format!(
                            "[[{section}]] entry {}: expected a table, got {}",
                            i + 1,
                            lenient::kind_of_value(v)
                        ),
                    );
                    None
                }
            })
            .collect(),
        Some(other) => {
            e.at(
                section,
                format!(
                    "{section}: expected [[{section}]] entries, got {}",
                    lenient::kind_of_value(other)
                ),
            );
            Vec::new()
        }
    }
}

fn entry_name(t: &toml::Table, i: usize) -> String {
    t.get("name")
        .and_then(toml::Value::as_str)
        .map_or_else(|| format!("#{}", i + 1), str::to_owned)
}

pub(super) fn read(root: &toml::Table, e: &mut Errors<'_>) -> Read {
    for key in root.keys() {
        if !TOP.contains(&key.as_str()) {
            let hint = lenient::did_you_mean(key, &TOP)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            e.at(
                key,
                format!(
                    "{key}: unknown key{hint} (expected one of {})",
                    TOP.join(", ")
                ),
            );
        }
    }
    let version = match root.get("version") {
        None => None,
        Some(toml::Value::Integer(v)) => Some(u32::try_from(*v).unwrap_or(u32::MAX)),
        Some(other) => {
            e.at(
                "version",
                format!(
                    "version: expected an integer, got {}",
                    lenient::kind_of_value(other)
                ),
            );
            None
        }
    };
    let defaults = match root.get("defaults") {
        None => RawDefaults::default(),
        Some(toml::Value::Table(t)) => {
            let r = lenient::lenient::<RawDefaults>(t, &[], true);
            report(e, "defaults", "[defaults]", r.problems);
            r.value.unwrap_or_default()
        }
        Some(other) => {
            e.at(
                "defaults",
                format!(
                    "defaults: expected a table, got {}",
                    lenient::kind_of_value(other)
                ),
            );
            RawDefaults::default()
        }
    };
    let mut quiet = Vec::new();
    let packages: BTreeMap<String, RawPackage> = named_tables::<RawPackage>(root, "packages", e)
        .into_iter()
        .map(|(k, (v, bad))| {
            if !bad.is_empty() {
                quiet.push(format!("packages.{k}: give id"));
            }
            (k, v)
        })
        .collect();
    let functions: BTreeMap<String, RawFunction> =
        named_tables::<RawFunction>(root, "functions", e)
            .into_iter()
            .map(|(k, (v, _))| (k, v))
            .collect();
    let checks: BTreeMap<String, toml::Table> = named_tables::<toml::Table>(root, "checks", e)
        .into_iter()
        .map(|(k, (v, _))| (k, v))
        .collect();
    let tickets = named_tables::<super::ticket::RawTicket>(root, "tickets", e)
        .into_iter()
        .map(|(k, (v, bad))| (k, (v, !bad.is_empty())))
        .collect();
    let approvals = named_tables::<super::approval::RawApproval>(root, "approvals", e)
        .into_iter()
        .map(|(k, (v, bad))| (k, (v, !bad.is_empty())))
        .collect();

    // Risks: read even when a field is wrong, with a stand-in for it, so their sets are still
    // checked; the stand-ins' own complaints are kept quiet.
    let mut risks = Vec::new();
    let mut risk_index = Vec::new();
    let risk_entries = entries(root, "risks", e);
    let risks_written = !risk_entries.is_empty() || root.contains_key("risks");
    for (i, t) in risk_entries {
        let name = entry_name(t, i);
        let label = label("risks", t, i);
        let path = format!("risks.{i}");
        let mut head = t.clone();
        let sets_value = head.remove("sets");
        let r = lenient::lenient::<RawRisk>(&head, &["name", "severity", "owner"], true);
        report(e, &path, &label, r.problems);
        let mut sets = Vec::new();
        match sets_value {
            None => {}
            Some(toml::Value::Array(a)) => {
                for (j, s) in a.iter().enumerate() {
                    let set_path = format!("{path}.sets.{j}");
                    let set_label = format!("{label} set {}", j + 1);
                    let Some(st) = s.as_table() else {
                        e.at(
                            &set_path,
                            format!(
                                "{set_label}: expected a table, got {}",
                                lenient::kind_of_value(s)
                            ),
                        );
                        quiet.push(format!("{label}: needs two or more sets"));
                        continue;
                    };
                    let rs = lenient::lenient::<RawSet>(st, &[], true);
                    if !rs.problems.is_empty() {
                        quiet.push(format!("{set_label}: the set is empty"));
                    }
                    report(e, &set_path, &set_label, rs.problems);
                    sets.push(rs.value.unwrap_or_default());
                }
            }
            Some(other) => {
                e.at(
                    &format!("{path}.sets"),
                    format!(
                        "{label}: sets: expected an array of tables, got {}",
                        lenient::kind_of_value(&other)
                    ),
                );
                quiet.push(format!("{label}: needs two or more sets"));
            }
        }
        // A stand-in for each field that is missing or wrong (both already reported).
        let read = r.value;
        let ok = |k: &str| !r.bad_keys.contains(k) && t.contains_key(k);
        if !ok("name") {
            quiet.push("a risk has an empty name".into());
        }
        let severity = read
            .as_ref()
            .map(|v| v.severity)
            .or_else(|| {
                t.get("severity")
                    .cloned()
                    .and_then(|v| v.try_into::<Severity>().ok())
            })
            .unwrap_or_default();
        let text = |k: &str| t.get(k).and_then(toml::Value::as_str).map(str::to_owned);
        risks.push(RawRisk {
            name: name.clone(),
            description: read.as_ref().and_then(|v| v.description.clone()),
            severity,
            owner: if ok("owner") {
                text("owner").unwrap_or_default()
            } else {
                "(not given)".into()
            },
            symmetric: read.as_ref().and_then(|v| v.symmetric),
            correction_advice: read.as_ref().and_then(|v| v.correction_advice.clone()),
            sets,
        });
        risk_index.push(i);
    }

    let mut exceptions = Vec::new();
    let mut exception_index = Vec::new();
    for (i, t) in entries(root, "exceptions", e) {
        let label = format!("[[exceptions]] entry {}", i + 1);
        let path = format!("exceptions.{i}");
        let mut t = t.clone();
        // Liberal in: `expires = 2027-03-31` (a TOML date) means the same as the string.
        if let Some(toml::Value::Datetime(d)) = t.get("expires") {
            let s = d.to_string();
            t.insert("expires".into(), toml::Value::String(s));
        }
        let r = lenient::lenient::<RawException>(&t, &EXCEPTION_FIELDS, true);
        report(e, &path, &label, r.problems);
        // Stand-ins for missing or wrong fields (already reported), so the rest is still
        // checked (an unknown risk, a bad date); their own complaints are kept quiet.
        let field = |k: &str| match t.get(k) {
            Some(toml::Value::String(s)) if !r.bad_keys.contains(k) => s.clone(),
            _ => NOT_GIVEN.to_owned(),
        };
        exceptions.push(r.value.unwrap_or_else(|| RawException {
            user: field("user"),
            risk: field("risk"),
            expires: field("expires"),
            approver: field("approver"),
            reason: field("reason"),
        }));
        exception_index.push(i);
    }

    let mut rules = Vec::new();
    for (i, t) in entries(root, "rules", e) {
        let label = label("rules", t, i);
        // Without a usable name the rule is still checked, under a stand-in name.
        let mut t = t.clone();
        if !t.get("name").is_some_and(toml::Value::is_str) {
            match t.get("name") {
                None => e.at(
                    &format!("rules.{i}"),
                    format!("{label}: missing field `name`"),
                ),
                Some(v) => e.at(
                    &format!("rules.{i}.name"),
                    format!(
                        "{label}: name: expected a string, got {}",
                        lenient::kind_of_value(v)
                    ),
                ),
            }
            t.insert("name".into(), toml::Value::String(entry_name(&t, i)));
        }
        let t = &t;
        let mut r = lenient::lenient::<RawRule>(t, &["name"], true);
        for p in &mut r.problems {
            // `detail` is a text or a table: serde's untagged error says neither, so ask the table.
            if p.key.as_deref() == Some("detail") && p.message.starts_with("data did not match") {
                p.message = match t.get("detail") {
                    Some(v @ toml::Value::Table(_)) => match v.clone().try_into::<RawDetail>() {
                        Err(err) => lenient::describe(err.message(), true, false),
                        Ok(_) => p.message.clone(),
                    },
                    Some(v) => format!(
                        "expected a text or a table of allow/deny/error/audit/notify texts, got {}",
                        lenient::kind_of_value(v)
                    ),
                    None => p.message.clone(),
                };
            }
        }
        report(e, &format!("rules.{i}"), &label, r.problems);
        if let Some(raw) = r.value {
            rules.push(ReadRule {
                index: i,
                label,
                raw,
                bad: r.bad_keys,
            });
        }
    }

    let mut pim_rules = Vec::new();
    for (i, t) in entries(root, "pim_rules", e) {
        let label = label("pim_rules", t, i);
        if !t.get("name").is_some_and(toml::Value::is_str) {
            e.at(
                &format!("pim_rules.{i}"),
                format!("{label}: missing field `name` (a text)"),
            );
            continue;
        }
        let r = lenient::lenient::<super::pim::RawPimRule>(t, &["name"], true);
        report(e, &format!("pim_rules.{i}"), &label, r.problems);
        if let Some(raw) = r.value {
            pim_rules.push((i, label, raw));
        }
    }

    Read {
        raw: RawPolicy {
            version,
            defaults,
            packages,
            checks,
            functions,
            risks,
            exceptions,
            tickets,
            approvals,
        },
        rules,
        risk_index,
        exception_index,
        risks_written,
        quiet,
        pim_rules,
    }
}

/// Where an error of [`crate::checks::sod::SodRules::build`] points, from how it names its
/// subject (`[[risks]] "x" set 2: ...`, `functions.f: ...`, `[[exceptions]] entry 3 ...`).
pub(super) fn sod_error_path(msg: &str, read: &Read) -> String {
    if let Some(rest) = msg.strip_prefix("[[risks]] \"") {
        let name_end = rest.find('"').unwrap_or(rest.len());
        let name = &rest[..name_end];
        let after = &rest[name_end..];
        let i = read
            .raw
            .risks
            .iter()
            .position(|r| r.name == name)
            .and_then(|n| read.risk_index.get(n).copied());
        let Some(i) = i else {
            return "risks".into();
        };
        if let Some(set) = after
            .strip_prefix("\" set ")
            .and_then(|s| s.split(':').next())
            .and_then(|n| n.trim().parse::<usize>().ok())
        {
            return format!("risks.{i}.sets.{}", set.saturating_sub(1));
        }
        if after.starts_with("\": owner") {
            return format!("risks.{i}.owner");
        }
        return format!("risks.{i}");
    }
    if let Some(rest) = msg.strip_prefix("[[exceptions]] entry ") {
        let n: usize = rest
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        let i = read
            .exception_index
            .get(n.saturating_sub(1))
            .copied()
            .unwrap_or(0);
        let key = if msg.contains("): expires ") {
            ".expires"
        } else if msg.contains("): unknown risk ") {
            ".risk"
        } else {
            ""
        };
        return format!("exceptions.{i}{key}");
    }
    if let Some(rest) = msg.strip_prefix("functions form a cycle: ") {
        let first = rest.split(" → ").next().unwrap_or("");
        return format!("functions.{first}");
    }
    if let Some(rest) = msg.strip_prefix("functions.") {
        let name = rest.split(':').next().unwrap_or("");
        return format!("functions.{name}");
    }
    if let Some((_, by)) = msg.split_once("(included by \"") {
        let name = by.split('"').next().unwrap_or("");
        return format!("functions.{name}.includes");
    }
    String::new()
}
