//! Separation of duties (anchors.md §4): named risks, each with two or more conflicting sets of
//! access packages, groups, app roles and external entitlements; severity and owner; symmetric
//! by default; exceptions with expiry, approver and reason. Sets may be built from reusable
//! *functions* (Saviynt's term), which may include each other.
//!
//! Evaluation is indexed: every entitlement key maps to the (risk, set) pairs it appears in. A
//! decision looks up the requested package to find candidate risks, then looks up each holding
//! once; it never scans the risks. A risk fires when every one of its sets is satisfied and the
//! requested package is in one of them (a request is not denied for a conflict it takes no part
//! in).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use super::{Check, CheckCtx, Finding, Verdict};
use crate::callout::Named;
use crate::directory::{Holdings, Needs};

/// An access package the policy names (`[packages.ALIAS]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub alias: String,
    pub id: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Low,
    Medium,
    High,
    Critical,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

/// `[functions.NAME]`: a reusable set of entitlements.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    pub description: Option<String>,
    #[serde(default)]
    pub access_packages: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub app_roles: Vec<String>,
    #[serde(default)]
    pub entitlements: Vec<String>,
    #[serde(default)]
    pub includes: Vec<String>,
}

/// One set of a risk.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSet {
    pub name: Option<String>,
    #[serde(default)]
    pub functions: Vec<String>,
    #[serde(default)]
    pub access_packages: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub app_roles: Vec<String>,
    #[serde(default)]
    pub entitlements: Vec<String>,
}

/// `[[risks]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRisk {
    pub name: String,
    pub description: Option<String>,
    pub severity: Severity,
    pub owner: String,
    pub symmetric: Option<bool>,
    pub correction_advice: Option<String>,
    #[serde(default)]
    pub sets: Vec<RawSet>,
}

/// `[[exceptions]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawException {
    pub user: String,
    pub risk: String,
    pub expires: String,
    pub approver: String,
    pub reason: String,
}

fn yes() -> bool {
    true
}

/// `[checks.NAME]` with `type = "sod"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SodSettings {
    /// Pending requests count as held. Default true.
    #[serde(default = "yes")]
    pub count_pending_requests: bool,
    /// Violations below this severity are reported but allow. Default low.
    #[serde(default)]
    pub min_severity: Severity,
    /// Only these risks. Default: all.
    #[serde(default)]
    pub risks: Option<Vec<String>>,
}

/// Sets per risk are bit positions in a mask.
const MAX_SETS: usize = 64;

#[derive(Debug)]
struct Risk {
    name: String,
    severity: Severity,
    owner: String,
    symmetric: bool,
    advice: Option<String>,
    set_names: Vec<String>,
}

#[derive(Debug)]
struct Exception {
    user: String,
    risk: usize,
    expires: jiff::Timestamp,
    approver: String,
    reason: String,
}

/// The loaded risks with their index.
#[derive(Debug)]
pub struct SodRules {
    risks: Vec<Risk>,
    /// Lower-case key ("p:" package id, "pn:" package name, "g:", "r:", "e:") → (risk, set).
    /// A package with an id is also indexed by its name, so a callout naming the requested
    /// package by display name only still finds its risks.
    index: foldhash::HashMap<String, Vec<(u32, u8)>>,
    /// Per risk, per set: its keys (ids only for packages that have one).
    set_keys: Vec<Vec<Vec<String>>>,
    exceptions: Vec<Exception>,
}

/// How the user holds an item that satisfied a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ThisRequest,
    Assignment,
    PendingRequest,
    Group,
    AppRole,
    External,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::ThisRequest => "this request",
            Source::Assignment => "assignment",
            Source::PendingRequest => "pending request",
            Source::Group => "group membership",
            Source::AppRole => "app role",
            Source::External => "external entitlement",
        })
    }
}

/// A risk this request would complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub risk: String,
    pub severity: Severity,
    pub owner: String,
    pub correction_advice: Option<String>,
    /// Per set: its name and the item (with how it is held) that satisfied it.
    pub sets: Vec<(String, String, Source)>,
    /// The exception that allows it, if any: approver, expiry, reason.
    pub exception: Option<(String, String, String)>,
}

impl Violation {
    /// "holds X (assignment) and requests Y".
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .sets
            .iter()
            .map(|(_, item, how)| match how {
                Source::ThisRequest => format!("requests {item}"),
                how => format!("holds {item} ({how})"),
            })
            .collect();
        format!(
            "SoD risk \"{}\" ({}, owner {}): {}",
            self.risk,
            self.severity,
            self.owner,
            parts.join(" and ")
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SodReport {
    pub violations: Vec<Violation>,
    /// Risks the requested package takes part in.
    pub candidates: usize,
}

/// `prefix` + `s` lower-cased, into a reused buffer (ASCII in place: ids and names nearly
/// always are).
fn lower_into(buf: &mut String, prefix: &str, s: &str) {
    buf.clear();
    buf.push_str(prefix);
    let s = s.trim();
    if s.is_ascii() {
        buf.push_str(s);
        buf.make_ascii_lowercase();
    } else {
        buf.extend(s.chars().flat_map(char::to_lowercase));
    }
}

fn lower_key(prefix: &str, s: &str) -> String {
    let mut k = String::with_capacity(prefix.len() + s.len());
    lower_into(&mut k, prefix, s);
    k
}

/// "2027-03-31" (end of that day, UTC) or an RFC 3339 timestamp.
fn parse_expiry(s: &str) -> Option<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Some(t);
    }
    let d: jiff::civil::Date = s.parse().ok()?;
    let end = d.at(23, 59, 59, 0);
    end.to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// Expands a function's keys (with its includes), reporting unknown names and cycles.
fn expand(
    name: &str,
    functions: &BTreeMap<String, RawFunction>,
    packages: &BTreeMap<String, PackageRef>,
    path: &mut Vec<String>,
    out: &mut BTreeSet<String>,
    errors: &mut BTreeSet<String>,
) {
    if let Some(pos) = path.iter().position(|p| p == name) {
        let mut cycle = path[pos..].to_vec();
        cycle.push(name.to_owned());
        errors.insert(format!("functions form a cycle: {}", cycle.join(" → ")));
        return;
    }
    let Some(f) = functions.get(name) else {
        errors.insert(format!(
            "unknown function {name:?}{}",
            path.last()
                .map(|p| format!(" (included by {p:?})"))
                .unwrap_or_default()
        ));
        return;
    };
    let at = format!("functions.{name}");
    add_items(
        &at,
        &f.access_packages,
        &f.groups,
        &f.app_roles,
        &f.entitlements,
        packages,
        out,
        errors,
    );
    path.push(name.to_owned());
    for inc in &f.includes {
        expand(inc, functions, packages, path, out, errors);
    }
    path.pop();
}

#[allow(clippy::too_many_arguments)]
fn add_items(
    at: &str,
    access_packages: &[String],
    groups: &[String],
    app_roles: &[String],
    entitlements: &[String],
    packages: &BTreeMap<String, PackageRef>,
    out: &mut BTreeSet<String>,
    errors: &mut BTreeSet<String>,
) {
    for a in access_packages {
        match packages.get(a) {
            // Ids are authoritative: a package with an id is matched by id ("p:"), one declared
            // by display name only by name ("pn:").
            Some(p) => match (&p.id, &p.display_name) {
                (Some(id), _) => {
                    out.insert(lower_key("p:", id));
                }
                (None, Some(name)) => {
                    out.insert(lower_key("pn:", name));
                }
                (None, None) => {}
            },
            None => {
                let known: Vec<&str> = packages.keys().map(String::as_str).collect();
                errors.insert(format!(
                    "{at}: unknown access package {a:?}{}",
                    crate::lenient::unknown_package_hint(a, &known)
                ));
            }
        }
    }
    for g in groups {
        out.insert(lower_key("g:", g));
    }
    for r in app_roles {
        match r.split_once('/') {
            Some((res, role))
                if !res.trim().is_empty() && !role.trim().is_empty() && !role.contains('/') =>
            {
                out.insert(lower_key("r:", &format!("{}/{}", res.trim(), role.trim())));
            }
            _ => {
                errors.insert(format!(
                    "{at}: app role {r:?} is not \"<resource id or name>/<appRoleId>\""
                ));
            }
        }
    }
    for e in entitlements {
        out.insert(lower_key("e:", e));
    }
}

impl SodRules {
    /// Builds the rules and their index, listing every error.
    pub fn build(
        functions: &BTreeMap<String, RawFunction>,
        risks: &[RawRisk],
        exceptions: &[RawException],
        packages: &BTreeMap<String, PackageRef>,
    ) -> Result<SodRules, Vec<String>> {
        let mut errors = BTreeSet::new();
        // Every function is checked, used or not, so a cycle is found where it is written.
        for name in functions.keys() {
            let mut sink = BTreeSet::new();
            expand(
                name,
                functions,
                packages,
                &mut Vec::new(),
                &mut sink,
                &mut errors,
            );
        }
        let mut out_risks = Vec::new();
        let mut set_keys = Vec::new();
        let mut index: foldhash::HashMap<String, Vec<(u32, u8)>> = Default::default();
        // "p:<id>" → "pn:<name>" for packages declared with both.
        let pkg_names: BTreeMap<String, String> = packages
            .values()
            .filter_map(|p| {
                Some((
                    lower_key("p:", p.id.as_ref()?),
                    lower_key("pn:", p.display_name.as_ref()?),
                ))
            })
            .collect();
        let mut names = BTreeSet::new();
        for r in risks {
            let at = format!("[[risks]] {:?}", r.name);
            if r.name.trim().is_empty() {
                errors.insert("a risk has an empty name".into());
            }
            if !names.insert(r.name.clone()) {
                errors.insert(format!("{at} is defined twice"));
            }
            if r.owner.trim().is_empty() {
                errors.insert(format!("{at}: owner is empty"));
            }
            if r.sets.len() < 2 {
                errors.insert(format!(
                    "{at}: needs two or more sets to conflict, has {}",
                    r.sets.len()
                ));
            }
            if r.sets.len() > MAX_SETS {
                errors.insert(format!("{at}: at most {MAX_SETS} sets"));
            }
            let risk_idx = out_risks.len() as u32;
            let mut set_names = Vec::new();
            let mut risk_keys = Vec::new();
            for (i, s) in r.sets.iter().enumerate() {
                let set_at = format!("{at} set {}", i + 1);
                let mut keys = BTreeSet::new();
                add_items(
                    &set_at,
                    &s.access_packages,
                    &s.groups,
                    &s.app_roles,
                    &s.entitlements,
                    packages,
                    &mut keys,
                    &mut errors,
                );
                for f in &s.functions {
                    if !functions.contains_key(f) {
                        let known: Vec<&str> = functions.keys().map(String::as_str).collect();
                        let hint = crate::lenient::did_you_mean(f, &known)
                            .map(|near| format!("; did you mean {near:?}?"))
                            .unwrap_or_default();
                        errors.insert(format!("{set_at}: unknown function {f:?}{hint}"));
                        continue;
                    }
                    expand(
                        f,
                        functions,
                        packages,
                        &mut Vec::new(),
                        &mut keys,
                        &mut BTreeSet::new(),
                    );
                }
                let empty = s.access_packages.is_empty()
                    && s.groups.is_empty()
                    && s.app_roles.is_empty()
                    && s.entitlements.is_empty()
                    && s.functions.is_empty();
                if empty {
                    errors.insert(format!("{set_at}: the set is empty"));
                }
                if i < MAX_SETS {
                    for k in &keys {
                        index
                            .entry(k.clone())
                            .or_default()
                            .push((risk_idx, i as u8));
                        if let Some(alias) = pkg_names.get(k) {
                            index
                                .entry(alias.clone())
                                .or_default()
                                .push((risk_idx, i as u8));
                        }
                    }
                }
                risk_keys.push(keys.into_iter().collect::<Vec<_>>());
                set_names.push(s.name.clone().unwrap_or_else(|| format!("set {}", i + 1)));
            }
            set_keys.push(risk_keys);
            out_risks.push(Risk {
                name: r.name.clone(),
                severity: r.severity,
                owner: r.owner.clone(),
                symmetric: r.symmetric.unwrap_or(true),
                advice: r.correction_advice.clone(),
                set_names,
            });
        }
        let mut out_exceptions = Vec::new();
        for (i, e) in exceptions.iter().enumerate() {
            let at = format!(
                "[[exceptions]] entry {} (user {:?}, risk {:?})",
                i + 1,
                e.user,
                e.risk
            );
            let risk = out_risks.iter().position(|r| r.name == e.risk);
            if risk.is_none() {
                let known: Vec<&str> = out_risks.iter().map(|r| r.name.as_str()).collect();
                let hint = crate::lenient::did_you_mean(&e.risk, &known)
                    .map(|near| format!("; did you mean {near:?}?"))
                    .unwrap_or_default();
                errors.insert(format!("{at}: unknown risk {:?}{hint}", e.risk));
            }
            let expires = parse_expiry(&e.expires);
            if expires.is_none() {
                errors.insert(format!(
                    "{at}: expires {:?} is not a date (2027-03-31) or an RFC 3339 timestamp",
                    e.expires
                ));
            }
            for (field, v) in [
                ("user", &e.user),
                ("approver", &e.approver),
                ("reason", &e.reason),
            ] {
                if v.trim().is_empty() {
                    errors.insert(format!("{at}: {field} is empty"));
                }
            }
            if let (Some(risk), Some(expires)) = (risk, expires) {
                out_exceptions.push(Exception {
                    user: e.user.trim().to_lowercase(),
                    risk,
                    expires,
                    approver: e.approver.clone(),
                    reason: e.reason.clone(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors.into_iter().collect());
        }
        Ok(SodRules {
            risks: out_risks,
            index,
            set_keys,
            exceptions: out_exceptions,
        })
    }

    pub fn risk_count(&self) -> usize {
        self.risks.len()
    }

    pub fn has_risk(&self, name: &str) -> bool {
        self.risks.iter().any(|r| r.name == name)
    }

    /// Exceptions that have already expired (they load, but allow nothing).
    pub fn warnings(&self, now: jiff::Timestamp) -> Vec<String> {
        self.exceptions
            .iter()
            .filter(|e| e.expires < now)
            .map(|e| {
                format!(
                    "the exception for {} on risk {:?} expired on {}",
                    e.user, self.risks[e.risk].name, e.expires
                )
            })
            .collect()
    }

    /// The risks this request would complete, with exceptions applied.
    pub fn evaluate(
        &self,
        requested: &Named,
        target_ids: &[&str],
        holdings: &Holdings,
        count_pending: bool,
        now: jiff::Timestamp,
    ) -> SodReport {
        let requested_name = requested
            .display_name
            .clone()
            .or_else(|| requested.id.clone())
            .unwrap_or_default();
        let keys = [
            ("p:", requested.id.as_deref()),
            ("pn:", requested.display_name.as_deref()),
        ];
        self.evaluate_requested(
            &keys,
            requested_name,
            target_ids,
            holdings,
            count_pending,
            now,
        )
    }

    /// Like [`SodRules::evaluate`] for something other than an access package: a PIM
    /// activation requests a directory role (the entitlement `role:<role definition id>`) or a
    /// group's membership (`g:` the group id).
    pub fn evaluate_requested(
        &self,
        requested: &[(&str, Option<&str>)],
        requested_name: String,
        target_ids: &[&str],
        holdings: &Holdings,
        count_pending: bool,
        now: jiff::Timestamp,
    ) -> SodReport {
        // Candidates: risks the requested item is in. (risk, satisfied mask, requested mask)
        let mut cands: Vec<(u32, u64, u64)> = Vec::new();
        let mut buf = String::with_capacity(64);
        for &(prefix, v) in requested {
            let Some(v) = v else { continue };
            lower_into(&mut buf, prefix, v);
            for &(r, s) in self.index.get(buf.as_str()).into_iter().flatten() {
                match cands.iter_mut().find(|c| c.0 == r) {
                    Some(c) => {
                        c.1 |= 1 << s;
                        c.2 |= 1 << s;
                    }
                    None => cands.push((r, 1 << s, 1 << s)),
                }
            }
        }
        let candidates = cands.len();
        if cands.is_empty() {
            return SodReport::default();
        }
        // The keys of the candidates' other sets: the only keys a holding can matter for. A
        // small map per decision, so each holding costs one lookup in it and nothing else.
        // Entries chain through `links` (no allocation per key): key → first link index.
        // One map per kind (p:, pn:, g:, r:, e:), keyed without the prefix, so a holding that is
        // already lower case (Graph's ids are) is looked up without being copied.
        let mut wanted: [foldhash::HashMap<&str, u32>; 5] = Default::default();
        let mut links: Vec<(u16, u8, u32)> = Vec::new();
        let mut kinds = [false; 5];
        for (ci, c) in cands.iter().enumerate() {
            for (si, keys) in self.set_keys[c.0 as usize].iter().enumerate() {
                if c.2 & (1 << si) != 0 {
                    continue;
                }
                for k in keys {
                    let (kind, bare) = match k.as_bytes() {
                        [b'p', b'n', b':', ..] => (1, &k[3..]),
                        [b'p', ..] => (0, &k[2..]),
                        [b'g', ..] => (2, &k[2..]),
                        [b'r', ..] => (3, &k[2..]),
                        _ => (4, &k[2..]),
                    };
                    kinds[kind] = true;
                    let next = wanted[kind].get(bare).copied().unwrap_or(u32::MAX);
                    links.push((ci as u16, si as u8, next));
                    wanted[kind].insert(bare, (links.len() - 1) as u32);
                }
            }
        }
        // Which item satisfied which (candidate, set) first, recorded only on a hit.
        let mut first: Vec<(u16, u8, String, Source)> = Vec::new();
        let mut mark = |kind: usize, key: &str, item: &dyn Fn() -> String, how: Source| {
            let key = key.trim();
            let bare = if key.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
                lower_into(&mut buf, "", key);
                buf.as_str()
            } else {
                key
            };
            let mut at = wanted[kind].get(bare).copied().unwrap_or(u32::MAX);
            while let Some(&(ci, s, next)) = links.get(at as usize) {
                let bit = 1u64 << s;
                let c = &mut cands[usize::from(ci)];
                if c.1 & bit == 0 {
                    c.1 |= bit;
                    first.push((ci, s, item(), how));
                }
                at = next;
            }
        };
        let held =
            |h: &crate::directory::Held| h.display_name.clone().unwrap_or_else(|| h.id.clone());
        for (list, how) in [
            (&holdings.access_packages, Source::Assignment),
            (&holdings.pending_access_packages, Source::PendingRequest),
        ] {
            if how == Source::PendingRequest && !count_pending {
                continue;
            }
            for h in list {
                if kinds[0] {
                    mark(0, &h.id, &|| held(h), how);
                }
                if kinds[1]
                    && let Some(n) = &h.display_name
                {
                    mark(1, n, &|| held(h), how);
                }
            }
        }
        for g in holdings.groups.iter().filter(|_| kinds[2]) {
            mark(2, &g.id, &|| held(g), Source::Group);
            if let Some(n) = &g.display_name {
                mark(2, n, &|| held(g), Source::Group);
            }
        }
        let mut key = String::with_capacity(80);
        for a in holdings.app_roles.iter().filter(|_| kinds[3]) {
            let label = || {
                format!(
                    "{}/{}",
                    a.resource_display_name.as_deref().unwrap_or(&a.resource_id),
                    a.app_role_id
                )
            };
            for res in std::iter::once(&a.resource_id).chain(a.resource_display_name.as_ref()) {
                key.clear();
                key.push_str(res);
                key.push('/');
                key.push_str(&a.app_role_id);
                mark(3, &key, &label, Source::AppRole);
            }
        }
        for e in holdings.external_entitlements.iter().filter(|_| kinds[4]) {
            mark(4, e, &|| e.clone(), Source::External);
        }
        let first: Vec<(u32, u8, String, Source)> = first
            .into_iter()
            .map(|(ci, s, item, how)| (cands[usize::from(ci)].0, s, item, how))
            .collect();
        let mut violations = Vec::new();
        for &(r, mask, req) in &cands {
            let risk = &self.risks[r as usize];
            let n = risk.set_names.len();
            let full = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
            if mask != full || (!risk.symmetric && req & 1 == 0) {
                continue;
            }
            let sets = (0..n)
                .map(|s| {
                    let name = risk.set_names[s].clone();
                    if req & (1 << s) != 0 {
                        (name, requested_name.clone(), Source::ThisRequest)
                    } else {
                        let (item, how) = first
                            .iter()
                            .find(|f| f.0 == r && usize::from(f.1) == s)
                            .map(|f| (f.2.clone(), f.3))
                            .unwrap_or_else(|| ("(unknown)".into(), Source::Assignment));
                        (name, item, how)
                    }
                })
                .collect();
            let exception = self
                .exceptions
                .iter()
                .find(|e| {
                    e.risk == r as usize
                        && e.expires >= now
                        && target_ids
                            .iter()
                            .any(|t| t.trim().eq_ignore_ascii_case(&e.user))
                })
                .map(|e| {
                    (
                        e.approver.clone(),
                        e.expires.strftime("%Y-%m-%d").to_string(),
                        e.reason.clone(),
                    )
                });
            violations.push(Violation {
                risk: risk.name.clone(),
                severity: risk.severity,
                owner: risk.owner.clone(),
                correction_advice: risk.advice.clone(),
                sets,
                exception,
            });
        }
        SodReport {
            violations,
            candidates,
        }
    }

    /// The same answer by scanning every risk: the baseline the benchmark and the property test
    /// compare the index against.
    pub fn evaluate_by_scan(
        &self,
        requested: &Named,
        holdings: &Holdings,
        count_pending: bool,
    ) -> Vec<String> {
        self.scan_model()
            .evaluate(requested, holdings, count_pending)
    }

    /// The rules as a scan would keep them: per risk, per set, its keys (and, for matching the
    /// requested package, its keys with package-name aliases).
    pub fn scan_model(&self) -> ScanModel {
        let mut aliases: Vec<Vec<foldhash::HashSet<String>>> = self
            .set_keys
            .iter()
            .map(|sets| vec![foldhash::HashSet::default(); sets.len()])
            .collect();
        for (k, posts) in &self.index {
            for &(r, s) in posts {
                aliases[r as usize][usize::from(s)].insert(k.clone());
            }
        }
        ScanModel {
            risks: self
                .risks
                .iter()
                .zip(&self.set_keys)
                .zip(aliases)
                .map(|((r, sets), req)| {
                    let sets = sets.iter().map(|k| k.iter().cloned().collect()).collect();
                    (r.name.clone(), r.symmetric, sets, req)
                })
                .collect(),
        }
    }
}

/// A naive evaluator: every risk, every set, against the user's keys (the benchmark baseline).
pub struct ScanModel {
    risks: Vec<ScanRisk>,
}

/// Name, symmetric, each set's keys, each set's keys with package-name aliases.
type ScanRisk = (
    String,
    bool,
    Vec<foldhash::HashSet<String>>,
    Vec<foldhash::HashSet<String>>,
);

impl ScanModel {
    /// Names of the risks this request would complete (exceptions not applied).
    pub fn evaluate(
        &self,
        requested: &Named,
        holdings: &Holdings,
        count_pending: bool,
    ) -> Vec<String> {
        let mut keys: foldhash::HashSet<String> = foldhash::HashSet::default();
        let mut req_keys: foldhash::HashSet<String> = foldhash::HashSet::default();
        if let Some(v) = &requested.id {
            req_keys.insert(lower_key("p:", v));
        }
        if let Some(v) = &requested.display_name {
            req_keys.insert(lower_key("pn:", v));
        }
        let pk = |h: &crate::directory::Held, p: &str, keys: &mut foldhash::HashSet<String>| {
            keys.insert(lower_key(p, &h.id));
            if let Some(n) = &h.display_name {
                keys.insert(lower_key(if p == "p:" { "pn:" } else { p }, n));
            }
        };
        for h in &holdings.access_packages {
            pk(h, "p:", &mut keys);
        }
        if count_pending {
            for h in &holdings.pending_access_packages {
                pk(h, "p:", &mut keys);
            }
        }
        for g in &holdings.groups {
            pk(g, "g:", &mut keys);
        }
        for a in &holdings.app_roles {
            keys.insert(lower_key(
                "r:",
                &format!("{}/{}", a.resource_id, a.app_role_id),
            ));
            if let Some(n) = &a.resource_display_name {
                keys.insert(lower_key("r:", &format!("{n}/{}", a.app_role_id)));
            }
        }
        for e in &holdings.external_entitlements {
            keys.insert(lower_key("e:", e));
        }
        let mut out = Vec::new();
        for (name, symmetric, sets, req_sets) in &self.risks {
            let in_req: Vec<bool> = req_sets
                .iter()
                .map(|set| req_keys.iter().any(|k| set.contains(k)))
                .collect();
            if !in_req.iter().any(|b| *b) || (!symmetric && !in_req[0]) {
                continue;
            }
            let all = sets
                .iter()
                .zip(&in_req)
                .all(|(set, req)| *req || set.iter().any(|k| keys.contains(k)));
            if all {
                out.push(name.clone());
            }
        }
        out
    }
}

/// The configured check.
#[derive(Debug)]
pub struct SodCheck {
    rules: Arc<SodRules>,
    settings: SodSettings,
}

/// Builds the check; `settings.risks` must name known risks.
pub fn check(
    _name: &str,
    rules: Arc<SodRules>,
    settings: SodSettings,
) -> Result<SodCheck, Vec<String>> {
    let unknown: Vec<String> = settings
        .risks
        .iter()
        .flatten()
        .filter(|r| !rules.has_risk(r))
        .map(|r| {
            let known: Vec<&str> = rules.risks.iter().map(|k| k.name.as_str()).collect();
            let hint = crate::lenient::did_you_mean(r, &known)
                .map(|near| format!("; did you mean {near:?}?"))
                .unwrap_or_default();
            format!("risks: unknown risk {r:?}{hint}")
        })
        .collect();
    if unknown.is_empty() {
        Ok(SodCheck { rules, settings })
    } else {
        Err(unknown)
    }
}

#[async_trait::async_trait]
impl Check for SodCheck {
    fn kind(&self) -> &'static str {
        "sod"
    }

    fn needs(&self) -> Needs {
        Needs {
            user: true,
            holdings: true,
            request: false,
        }
    }

    async fn evaluate(&self, ctx: &CheckCtx<'_>) -> Finding {
        let holdings = match ctx.facts.holdings.get() {
            Ok(h) => h,
            Err(why) => return Finding::new(Verdict::error(why), Vec::new()),
        };
        let c = ctx.callout;
        if ctx.activation.is_none()
            && c.access_package.id.is_none()
            && c.access_package.display_name.is_none()
        {
            return Finding::new(
                Verdict::error("the callout names no access package"),
                Vec::new(),
            );
        }
        let mut ids: Vec<&str> = [&c.target.object_id, &c.target.id]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if let Ok(u) = ctx.facts.user.get() {
            ids.extend(
                [&u.user_principal_name, &u.mail]
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
            ids.push(&u.id);
        }
        let report = match ctx.activation {
            // A PIM activation: the role (an entitlement `role:<id>`, against the roles the
            // principal holds) or the group it would make the principal a member of.
            // Azure role assignments are not read: an allow would only mean "not looked".
            Some(a) if a.kind == crate::activation::ActivationKind::AzureResource => {
                return Finding::new(
                    Verdict::error(
                        "separation of duties is not checked for Azure resource roles (accessgate does not read Azure role assignments); leave sod out of azure_resource rules",
                    ),
                    Vec::new(),
                );
            }
            Some(a) => {
                let role = a.role_definition_id.as_ref().map(|r| format!("role:{r}"));
                let mut held = holdings.clone();
                held.external_entitlements
                    .extend(holdings.directory_roles.iter().map(|r| format!("role:{r}")));
                self.rules.evaluate_requested(
                    &[("e:", role.as_deref()), ("g:", a.group_id.as_deref())],
                    a.target(),
                    &ids,
                    &held,
                    self.settings.count_pending_requests,
                    ctx.now,
                )
            }
            None => self.rules.evaluate(
                &c.access_package,
                &ids,
                holdings,
                self.settings.count_pending_requests,
                ctx.now,
            ),
        };
        let mut explanation = vec![format!(
            "considered {} assignment(s), {} pending request(s){}, {} group(s) (transitive), {} app role(s), {} external entitlement(s); the requested package is in {} risk(s)",
            holdings.access_packages.len(),
            holdings.pending_access_packages.len(),
            if self.settings.count_pending_requests {
                ""
            } else {
                " (not counted)"
            },
            holdings.groups.len(),
            holdings.app_roles.len(),
            holdings.external_entitlements.len(),
            report.candidates
        )];
        let (mut denies, mut notes) = (Vec::new(), Vec::new());
        for v in &report.violations {
            if let Some(only) = &self.settings.risks
                && !only.contains(&v.risk)
            {
                continue;
            }
            explanation.push(v.summary());
            for (set, item, how) in &v.sets {
                explanation.push(format!("  set {set:?}: {item} ({how})"));
            }
            if let Some(advice) = &v.correction_advice {
                explanation.push(format!("  advice: {advice}"));
            }
            if let Some((approver, expires, reason)) = &v.exception {
                let note = format!(
                    "exception for risk \"{}\" approved by {approver} until {expires}: {reason}",
                    v.risk
                );
                explanation.push(format!("  allowed by {note}"));
                notes.push(note);
            } else if v.severity < self.settings.min_severity {
                explanation.push(format!(
                    "  below min_severity {}: reported, not denied",
                    self.settings.min_severity
                ));
                notes.push(format!("{} (reported only)", v.summary()));
            } else {
                denies.push(v.summary());
            }
        }
        if report.violations.is_empty() {
            explanation.push("no risk would be completed by this request".into());
        }
        let finding = if denies.is_empty() {
            Finding::new(Verdict::Allow, explanation)
        } else {
            Finding::new(Verdict::deny(denies.join("; ")), explanation)
        };
        if notes.is_empty() {
            finding
        } else {
            finding.with_note(notes.join("; "))
        }
    }
}

#[cfg(test)]
mod tests;
