//! `[approvals.NAME]`: the approval stages a rule can hand Entra at
//! `assignmentRequestDeterminingApprovalRequirements` (dynamic approval). A rule picks one by
//! its checks' outcome (`approval`, `approval_on_deny`, `approval_on_error`); the approvers are
//! subject sets Entra resolves when the stage runs, or the requested package's declared owners.

use std::time::Duration;

use serde::Deserialize;

use super::parse_duration;
use crate::approval::{APPROVER_FORMS, ApprovalStage, Approver, ApproverTerm};

/// Entra's own approval settings allow 1 to 14 days before a request is denied unanswered.
const MAX_DENY_AFTER: Duration = Duration::from_secs(14 * 86_400);
const DEFAULT_DENY_AFTER: Duration = Duration::from_secs(14 * 86_400);

/// `[approvals.NAME]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApproval {
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    fallback_approvers: Vec<String>,
    #[serde(default)]
    escalation_approvers: Vec<String>,
    #[serde(default)]
    fallback_escalation_approvers: Vec<String>,
    escalate_after: Option<String>,
    deny_after: Option<String>,
    justification_required: Option<bool>,
}

/// A loaded `[approvals.NAME]`: approver terms still to be resolved against the request.
#[derive(Debug, Clone)]
pub struct ApprovalSpec {
    pub name: String,
    primary: Vec<ApproverTerm>,
    fallback_primary: Vec<ApproverTerm>,
    escalate_after: Option<Duration>,
    escalation: Vec<ApproverTerm>,
    fallback_escalation: Vec<ApproverTerm>,
    deny_after: Duration,
    justification_required: bool,
}

impl ApprovalSpec {
    /// Every problem goes to `errors` as (key path, message); `None` when any was found.
    pub(super) fn build(
        name: &str,
        raw: &RawApproval,
        errors: &mut Vec<(String, String)>,
    ) -> Option<ApprovalSpec> {
        let at = format!("approvals.{name}");
        let before = errors.len();
        let mut terms = |key: &str, list: &[String]| -> Vec<ApproverTerm> {
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    let t = ApproverTerm::parse(s);
                    if t.is_none() {
                        errors.push((
                            format!("{at}.{key}.{i}"),
                            format!(
                                "{at}.{key}: {s:?} is not an approver (one of: {APPROVER_FORMS}; ids are object ids)"
                            ),
                        ));
                    }
                    t
                })
                .collect()
        };
        let primary = terms("approvers", &raw.approvers);
        let fallback_primary = terms("fallback_approvers", &raw.fallback_approvers);
        let escalation = terms("escalation_approvers", &raw.escalation_approvers);
        let fallback_escalation = terms(
            "fallback_escalation_approvers",
            &raw.fallback_escalation_approvers,
        );
        if raw.approvers.is_empty() {
            errors.push((
                at.clone(),
                format!("{at}: give approvers = [...] (one of: {APPROVER_FORMS})"),
            ));
        }
        let mut duration = |key: &str, v: &Option<String>| -> Option<Duration> {
            let text = v.as_deref()?;
            match parse_duration(text) {
                Some(d) if !d.is_zero() => Some(d),
                _ => {
                    errors.push((
                        format!("{at}.{key}"),
                        format!("{at}.{key}: {text:?} is not a duration such as \"2d\" or \"12h\""),
                    ));
                    None
                }
            }
        };
        let deny_after = duration("deny_after", &raw.deny_after).unwrap_or(DEFAULT_DENY_AFTER);
        let escalate_after = duration("escalate_after", &raw.escalate_after);
        if deny_after > MAX_DENY_AFTER || deny_after.as_secs() % 86_400 != 0 {
            errors.push((
                format!("{at}.deny_after"),
                format!(
                    "{at}.deny_after: Entra counts this in whole days, 1 to 14 (\"1d\" .. \"14d\")"
                ),
            ));
        }
        match escalate_after {
            Some(e) if e >= deny_after => errors.push((
                format!("{at}.escalate_after"),
                format!("{at}.escalate_after: must be shorter than deny_after, or the request is denied before it escalates"),
            )),
            Some(e) if e.as_secs() % 3600 != 0 => errors.push((
                format!("{at}.escalate_after"),
                format!("{at}.escalate_after: Entra counts this in whole hours (\"12h\", \"2d\")"),
            )),
            Some(_) if raw.escalation_approvers.is_empty() => errors.push((
                format!("{at}.escalation_approvers"),
                format!("{at}: escalate_after needs escalation_approvers = [...]"),
            )),
            None if !raw.escalation_approvers.is_empty()
                || !raw.fallback_escalation_approvers.is_empty() =>
            {
                errors.push((
                    format!("{at}.escalate_after"),
                    format!("{at}: escalation approvers are only asked after escalate_after = \"...\""),
                ))
            }
            _ => {}
        }
        (errors.len() == before).then(|| ApprovalSpec {
            name: name.to_owned(),
            primary,
            fallback_primary,
            escalate_after,
            escalation,
            fallback_escalation,
            deny_after,
            justification_required: raw.justification_required.unwrap_or(false),
        })
    }

    /// The stage for one request: `package_owners` becomes `owners` (the requested package's
    /// declared owners; none when it declares none). `Err` names why no primary approver is left.
    pub fn resolve(&self, owners: &[Approver]) -> Result<ApprovalStage, String> {
        let expand = |terms: &[ApproverTerm]| -> Vec<Approver> {
            let mut out: Vec<Approver> = Vec::new();
            for t in terms {
                let add: Vec<Approver> = match t {
                    ApproverTerm::Set(a) => vec![a.clone()],
                    ApproverTerm::PackageOwners => owners.to_vec(),
                };
                for a in add {
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            out
        };
        let primary = expand(&self.primary);
        if primary.is_empty() {
            return Err(format!(
                "approval {:?} has no approver for this request (package_owners: the access package declares no owners in the policy)",
                self.name
            ));
        }
        let escalation = expand(&self.escalation);
        if self.escalate_after.is_some() && escalation.is_empty() {
            return Err(format!(
                "approval {:?} escalates, but has no escalation approver for this request (package_owners: none declared)",
                self.name
            ));
        }
        Ok(ApprovalStage {
            name: self.name.clone(),
            primary,
            fallback_primary: expand(&self.fallback_primary),
            escalate_after: self.escalate_after,
            escalation,
            fallback_escalation: expand(&self.fallback_escalation),
            deny_after: self.deny_after,
            justification_required: self.justification_required,
        })
    }
}

/// `owners = [...]` of a `[packages.NAME]`: users and groups only (a package's resource owners
/// are people, not relations such as a manager).
pub(super) fn package_owners(
    alias: &str,
    owners: &[String],
    errors: &mut Vec<(String, String)>,
) -> Vec<Approver> {
    owners
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match ApproverTerm::parse(s) {
            Some(ApproverTerm::Set(a @ (Approver::User(_) | Approver::Group(_)))) => Some(a),
            _ => {
                errors.push((
                    format!("packages.{alias}.owners.{i}"),
                    format!("packages.{alias}.owners: {s:?} is not user:<object id> or group:<object id>"),
                ));
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str = "11111111-2222-3333-4444-555555555555";

    fn raw(toml_text: &str) -> RawApproval {
        toml::from_str(toml_text).unwrap_or_default()
    }

    #[test]
    fn builds_and_resolves_package_owners() {
        let mut errs = Vec::new();
        let spec = ApprovalSpec::build(
            "strict",
            &raw(&format!(
                "approvers = [\"manager\", \"package_owners\"]\nescalation_approvers = [\"group:{G}\"]\nescalate_after = \"1d\"\ndeny_after = \"3d\"\njustification_required = true"
            )),
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        let spec = spec.unwrap_or_else(|| panic!("built"));
        let owner = Approver::User(G.into());
        let s = spec
            .resolve(std::slice::from_ref(&owner))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.primary, vec![Approver::Manager(1), owner]);
        assert_eq!(s.escalate_after, Some(Duration::from_secs(86_400)));
        assert_eq!(s.deny_after, Duration::from_secs(3 * 86_400));
        assert!(s.justification_required);
        // Without declared owners the manager is still there.
        assert_eq!(spec.resolve(&[]).map(|s| s.primary.len()), Ok(1));
        let only_owners =
            ApprovalSpec::build("o", &raw("approvers = [\"package_owners\"]"), &mut errs)
                .unwrap_or_else(|| panic!("built"));
        assert!(only_owners.resolve(&[]).is_err());
    }

    #[test]
    fn every_mistake_is_named() {
        let mut errs = Vec::new();
        let spec = ApprovalSpec::build(
            "bad",
            &raw(
                "approvers = [\"boss\"]\nescalation_approvers = [\"manager\"]\ndeny_after = \"20d\"",
            ),
            &mut errs,
        );
        assert!(spec.is_none());
        let text = errs
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for want in [
            "\"boss\" is not an approver",
            "whole days, 1 to 14",
            "only asked after escalate_after",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        let mut errs = Vec::new();
        ApprovalSpec::build("none", &raw(""), &mut errs);
        assert!(format!("{errs:?}").contains("give approvers"), "{errs:?}");
        let mut errs = Vec::new();
        ApprovalSpec::build(
            "late",
            &raw(
                "approvers = [\"manager\"]\nescalation_approvers = [\"manager:2\"]\nescalate_after = \"14d\"\ndeny_after = \"14d\"",
            ),
            &mut errs,
        );
        assert!(
            format!("{errs:?}").contains("shorter than deny_after"),
            "{errs:?}"
        );
        let mut errs = Vec::new();
        assert!(package_owners("p", &["manager".into()], &mut errs).is_empty());
        assert_eq!(errs.len(), 1);
    }
}
