//! Policy: which decision a callout gets, per catalog / access package / stage.
//!
//! This is the walking-skeleton policy (a static `continue` or `deny` with a detail text); real
//! checks plug in behind it later. Pure: no IO besides loading the file.

use std::path::Path;

use serde::Deserialize;

use crate::callout::{Callout, Named, Stage};

/// Graph shows `customExtensionStageInstanceDetail` to approvers; keep it short.
pub const MAX_DETAIL_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Continue,
    Deny,
}

/// What the worker tells Entra.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    pub detail: String,
    /// The rule that decided, or `None` for the default.
    pub rule: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    catalog: Option<String>,
    access_package: Option<String>,
    stages: Option<Vec<String>>,
    decision: Action,
    detail: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default_detail: Option<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    catalog: Option<String>,
    access_package: Option<String>,
    stages: Option<Vec<Stage>>,
    action: Action,
    detail: String,
}

/// A loaded policy: rules in file order, first match wins, else continue.
#[derive(Debug, Clone)]
pub struct Policy {
    default_detail: String,
    rules: Vec<Rule>,
    /// Things that load but will not act as written (e.g. deny on a stage that cannot deny).
    pub warnings: Vec<String>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_detail: "Checked by accessgate: no rule objects.".into(),
            rules: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

/// Matches by id or display name, case-insensitively (ids are GUIDs, names are what admins know).
fn matches(want: &Option<String>, have: &Named) -> bool {
    match want {
        None => true,
        Some(w) => [&have.id, &have.display_name]
            .into_iter()
            .flatten()
            .any(|h| h.eq_ignore_ascii_case(w)),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(MAX_DETAIL_CHARS).collect()
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        Policy::parse(&text)
    }

    /// Parses policy TOML, reporting every error at once.
    pub fn parse(text: &str) -> Result<Policy, Vec<String>> {
        let raw: RawPolicy = toml::from_str(text)
            .map_err(|e| vec![format!("not a valid policy: {}", e.message())])?;
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut rules = Vec::new();
        let mut names = std::collections::HashSet::new();
        for r in raw.rules {
            if !names.insert(r.name.clone()) {
                errors.push(format!("rule {:?} is defined twice", r.name));
            }
            let stages = match &r.stages {
                None => None,
                Some(list) => {
                    let mut out = Vec::new();
                    for s in list {
                        match Stage::parse(s) {
                            Some(st) => out.push(st),
                            None => errors.push(format!("rule {:?}: unknown stage {s:?}", r.name)),
                        }
                    }
                    Some(out)
                }
            };
            if r.action_is_deny() {
                let cannot: Vec<&str> = stages
                    .as_deref()
                    .unwrap_or(&Stage::ALL)
                    .iter()
                    .filter(|s| !s.can_deny())
                    .map(|s| s.as_graph())
                    .collect();
                if !cannot.is_empty() {
                    warnings.push(format!(
                        "rule {:?} denies, but Entra cannot deny at {}: there it continues and only reports",
                        r.name,
                        cannot.join(", ")
                    ));
                }
            }
            let detail = r.detail.clone().unwrap_or_else(|| match r.decision {
                Action::Continue => format!("Approved by accessgate rule {}.", r.name),
                Action::Deny => format!("Denied by accessgate rule {}.", r.name),
            });
            if detail.chars().count() > MAX_DETAIL_CHARS {
                errors.push(format!(
                    "rule {:?}: detail is longer than {MAX_DETAIL_CHARS} characters",
                    r.name
                ));
            }
            rules.push(Rule {
                name: r.name,
                catalog: r.catalog,
                access_package: r.access_package,
                stages,
                action: r.decision,
                detail,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Policy {
            default_detail: raw
                .default_detail
                .unwrap_or_else(|| Policy::default().default_detail),
            rules,
            warnings,
        })
    }

    /// Decides a callout. A deny on a stage that cannot be denied becomes a continue whose detail
    /// says so, because Entra would reject the resume otherwise.
    pub fn decide(&self, c: &Callout) -> Decision {
        let rule = self.rules.iter().find(|r| {
            matches(&r.catalog, &c.catalog)
                && matches(&r.access_package, &c.access_package)
                && r.stages.as_ref().is_none_or(|s| s.contains(&c.stage))
        });
        match rule {
            None => Decision {
                action: Action::Continue,
                detail: truncate(&self.default_detail),
                rule: None,
            },
            Some(r) if r.action == Action::Deny && !c.stage.can_deny() => Decision {
                action: Action::Continue,
                detail: truncate(&format!(
                    "{} (reported only: {} cannot be denied)",
                    r.detail, c.stage
                )),
                rule: Some(r.name.clone()),
            },
            Some(r) => Decision {
                action: r.action,
                detail: truncate(&r.detail),
                rule: Some(r.name.clone()),
            },
        }
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

impl RawRule {
    fn action_is_deny(&self) -> bool {
        self.decision == Action::Deny
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::{Parsed, parse};

    fn callout(stage: &str, catalog: &str, package: &str) -> Callout {
        let body = format!(
            r#"{{"Stage":"{stage}","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r",
            "AccessPackageCatalog":{{"Id":"{catalog}","DisplayName":"Catalog {catalog}"}},"AccessPackage":{{"Id":"{package}","DisplayName":"Package {package}"}}}}"#
        );
        match parse(body.as_bytes()) {
            Ok(Parsed::Callout(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    const POLICY: &str = r#"
default_detail = "ok"
[[rules]]
name = "no-finance"
catalog = "Catalog fin"
stages = ["assignmentRequestCreated", "assignmentRequestGranted"]
decision = "deny"
detail = "Finance access needs a ticket."
[[rules]]
name = "sales"
access_package = "sales-id"
decision = "continue"
"#;

    #[test]
    fn first_matching_rule_decides_by_name_or_id() {
        let p = Policy::parse(POLICY).unwrap_or_else(|e| panic!("{e:?}"));
        let d = p.decide(&callout("assignmentRequestCreated", "fin", "x"));
        assert_eq!(d.action, Action::Deny);
        assert_eq!(d.detail, "Finance access needs a ticket.");
        let d = p.decide(&callout("assignmentRequestCreated", "other", "sales-id"));
        assert_eq!(
            (d.action, d.rule.as_deref()),
            (Action::Continue, Some("sales"))
        );
        let d = p.decide(&callout("assignmentRequestApproved", "fin", "x"));
        assert_eq!(
            (d.action, d.rule, d.detail.as_str()),
            (Action::Continue, None, "ok")
        );
    }

    #[test]
    fn deny_on_a_stage_that_cannot_deny_continues_and_warns() {
        let p = Policy::parse(POLICY).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("assignmentRequestGranted")),
            "{:?}",
            p.warnings
        );
        let d = p.decide(&callout("assignmentRequestGranted", "fin", "x"));
        assert_eq!(d.action, Action::Continue);
        assert!(d.detail.contains("cannot be denied"));
    }

    #[test]
    fn bad_policies_list_every_error() {
        let errs = Policy::parse(
            r#"
[[rules]]
name = "a"
stages = ["nope"]
decision = "deny"
[[rules]]
name = "a"
decision = "continue"
"#,
        )
        .err()
        .unwrap_or_default();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(Policy::parse("[[rules]]\nname='x'\ndecision='maybe'\n").is_err());
    }
}
