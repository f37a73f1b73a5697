//! Offline decisions: `accessgate explain` (one callout, every check's reasoning) and
//! `accessgate policy test` (cases of callout + world → expected decision, like `opa test`).
//! Both decide against a world file (docs/world-format.md) through the same [`Policy::decide`]
//! the worker uses; only the directory and ticket system differ.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Action, DecideEnv, Decision, Policy};
use crate::callout::{Callout, Parsed};
use crate::directory::fixtures::{FixtureDirectory, World, WorldError};

/// Why `explain` or a test case cannot use a callout file or a "now".
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Parsed, but not into a callout of a stage accessgate decides (`parsed` is what it was).
    #[error("{} is not a callout with a stage accessgate decides ({parsed})", path.display())]
    NotDecided { path: PathBuf, parsed: String },
    #[error("{}: {source}", path.display())]
    Callout {
        path: PathBuf,
        source: crate::callout::CalloutError,
    },
    #[error("{0:?} is not a timestamp such as 2026-11-23T12:00:00Z")]
    BadNow(String),
}

/// Why a test file cannot be run at all (each failing case is reported instead).
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    /// One problem of the suite's policy file (`policy` as the suite names it).
    #[error("policy {policy}: {problem}")]
    Policy { policy: String, problem: String },
    #[error(transparent)]
    World(#[from] WorldError),
    #[error("now: {0}")]
    Now(OfflineError),
    #[error("{}: no [[tests]]", .0.display())]
    NoTests(PathBuf),
}

/// Reads a callout body (either wire shape) from a file.
pub fn read_callout(path: &Path) -> Result<Callout, OfflineError> {
    let bytes = std::fs::read(path).map_err(|source| OfflineError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    match crate::callout::parse(&bytes) {
        Ok(Parsed::Callout(c)) => Ok(*c),
        Ok(other) => Err(OfflineError::NotDecided {
            path: path.to_path_buf(),
            parsed: format!("{other:?}"),
        }),
        Err(source) => Err(OfflineError::Callout {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Parses "now" for reproducible decisions: an RFC 3339 timestamp or a date.
pub fn parse_now(s: &str) -> Result<jiff::Timestamp, OfflineError> {
    crate::directory::fixtures::parse_graph_time(s)
        .ok_or_else(|| OfflineError::BadNow(s.to_owned()))
}

/// Decides `c` against a world, offline.
pub async fn decide_offline(
    policy: &Policy,
    c: &Callout,
    world: World,
    external_attribute: Option<String>,
    now: jiff::Timestamp,
) -> Decision {
    let tickets = world.clone();
    let directory = FixtureDirectory {
        world,
        external_attribute,
    };
    let env = DecideEnv {
        directory: &directory,
        tickets: &tickets,
        now,
        deadline: Instant::now() + Duration::from_secs(30),
    };
    policy.decide(c, &env).await
}

/// The human-readable account of a decision that `explain` prints.
pub fn explain_text(c: &Callout, d: &Decision) -> String {
    let mut s = String::new();
    let name = |n: &crate::callout::Named| {
        n.display_name
            .clone()
            .or_else(|| n.id.clone())
            .unwrap_or_else(|| "(unnamed)".into())
    };
    let _ = writeln!(
        s,
        "callout   {} for {} in catalog {}, target {}",
        c.stage,
        name(&c.access_package),
        name(&c.catalog),
        c.target
            .display_name
            .clone()
            .or_else(|| c.target.object_id.clone())
            .unwrap_or_else(|| "(unknown)".into())
    );
    let _ = writeln!(
        s,
        "rule      {}  (mode {}{})",
        d.rule.as_deref().unwrap_or("(none matched)"),
        match d.mode {
            super::Mode::Enforce => "enforce",
            super::Mode::Audit => "audit",
        },
        if d.can_deny {
            ""
        } else {
            "; this stage cannot be denied: checks only report"
        }
    );
    for o in &d.outcomes {
        let _ = writeln!(
            s,
            "check     {} ({}): {}{}  [{} ms]",
            o.check,
            o.kind,
            o.finding.verdict.word().to_uppercase(),
            o.finding
                .verdict
                .reason()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            o.elapsed_ms
        );
        for line in &o.finding.explanation {
            let _ = writeln!(s, "            {line}");
        }
        if let Some(n) = &o.finding.note {
            let _ = writeln!(s, "            note: {n}");
        }
    }
    if let Some(why) = &d.incomplete {
        let _ = writeln!(
            s,
            "retry     the worker retries a decision whose checks errored ({why}) before on_error is final"
        );
    }
    let _ = writeln!(s, "graph     {} call(s) for directory facts", d.graph_calls);
    let _ = writeln!(s, "decision  {}", d.action.word().to_uppercase());
    let _ = writeln!(s, "detail    {}", d.detail);
    s
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    policy: String,
    fixtures: String,
    now: Option<String>,
    external_entitlements_attribute: Option<String>,
    #[serde(default)]
    tests: Vec<RawCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    callout: String,
    now: Option<String>,
    expect: Action,
    expect_rule: Option<String>,
    #[serde(default)]
    expect_detail_contains: Vec<String>,
    #[serde(default)]
    expect_checks: BTreeMap<String, String>,
}

/// One test case's result.
#[derive(Debug)]
pub struct CaseResult {
    pub name: String,
    pub failures: Vec<String>,
    pub decision: Option<Decision>,
}

/// Runs a test file: every case, even after a failure. `Err` when the file itself (or its
/// policy or world) cannot be loaded.
pub async fn run_suite(path: &Path) -> Result<Vec<CaseResult>, Vec<SuiteError>> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        vec![SuiteError::Read {
            path: path.to_path_buf(),
            source,
        }]
    })?;
    let suite: RawSuite = toml::from_str(&text).map_err(|e| {
        vec![SuiteError::Syntax {
            path: path.to_path_buf(),
            message: e.message().trim().to_owned(),
        }]
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let rel = |p: &str| -> PathBuf { base.join(p) };
    let policy = Policy::load(&rel(&suite.policy)).map_err(|errs| {
        errs.into_iter()
            .map(|e| SuiteError::Policy {
                policy: suite.policy.clone(),
                problem: e.to_string(),
            })
            .collect::<Vec<_>>()
    })?;
    let world = World::load(&rel(&suite.fixtures)).map_err(|e| vec![SuiteError::World(e)])?;
    let default_now = match &suite.now {
        Some(n) => parse_now(n).map_err(|e| vec![SuiteError::Now(e)])?,
        None => jiff::Timestamp::now(),
    };
    if suite.tests.is_empty() {
        return Err(vec![SuiteError::NoTests(path.to_path_buf())]);
    }
    let mut results = Vec::new();
    for case in &suite.tests {
        let mut failures = Vec::new();
        let now = match case.now.as_deref().map(parse_now) {
            None => default_now,
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                failures.push(format!("now: {e}"));
                default_now
            }
        };
        let callout = match read_callout(&rel(&case.callout)) {
            Ok(c) => c,
            Err(e) => {
                failures.push(e.to_string());
                results.push(CaseResult {
                    name: case.name.clone(),
                    failures,
                    decision: None,
                });
                continue;
            }
        };
        let d = decide_offline(
            &policy,
            &callout,
            world.clone(),
            suite.external_entitlements_attribute.clone(),
            now,
        )
        .await;
        if d.action != case.expect {
            failures.push(format!(
                "expected {}, got {}",
                case.expect.word(),
                d.action.word()
            ));
        }
        if let Some(r) = &case.expect_rule
            && d.rule.as_deref() != Some(r.as_str())
        {
            failures.push(format!("expected rule {r:?}, got {:?}", d.rule));
        }
        for want in &case.expect_detail_contains {
            if !d.detail.contains(want.as_str()) {
                failures.push(format!("detail does not contain {want:?}"));
            }
        }
        for (check, want) in &case.expect_checks {
            match d.outcomes.iter().find(|o| &o.check == check) {
                None => failures.push(format!("check {check:?} did not run")),
                Some(o) if !o.finding.verdict.word().eq_ignore_ascii_case(want) => {
                    failures.push(format!(
                        "check {check:?}: expected {want}, got {}{}",
                        o.finding.verdict.word(),
                        o.finding
                            .verdict
                            .reason()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default()
                    ))
                }
                Some(_) => {}
            }
        }
        results.push(CaseResult {
            name: case.name.clone(),
            failures,
            decision: Some(d),
        });
    }
    Ok(results)
}
