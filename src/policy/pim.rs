//! `[[pim_rules]]`: which checks decide a PIM activation, and what their verdicts mean.
//!
//! A rule matches by resource type (`group`, `entra_role`, `azure_resource`), role definition,
//! group and scope; its checks are the policy's `[checks.NAME]`, run on a callout built from
//! the activation (the principal is the target, `ticketInfo.ticketNumber` is the answer to
//! `ticketNumber`, the justification is the request's). `AutoApproved` needs `auto_approve =
//! true` (or `decision = "auto_approved"`) and is never given for a role on the configured
//! never-auto-approve list.

use serde::Deserialize;

use super::{CheckEntry, Mode, Outcome, read, reasons_of, run_check};
use crate::activation::{Activation, ActivationKind, EvaluationOutcome};
use crate::callout::{Answers, Callout, Id, Named, Stage, Subject, WireShape};
use crate::checks::{CheckCtx, Verdict};
use crate::directory::{Facts, Fetched, Needs, RequestFacts};

/// A fixed outcome as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawOutcome {
    Approved,
    AutoApproved,
    Denied,
}

impl RawOutcome {
    fn outcome(self) -> EvaluationOutcome {
        match self {
            Self::Approved => EvaluationOutcome::Approved,
            Self::AutoApproved => EvaluationOutcome::AutoApproved,
            Self::Denied => EvaluationOutcome::Denied,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPimRule {
    pub name: String,
    #[serde(default)]
    resource_types: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    checks: Vec<String>,
    decision: Option<RawOutcome>,
    #[serde(default)]
    auto_approve: bool,
    mode: Option<Mode>,
    on_error: Option<RawOutcome>,
}

#[derive(Debug, Clone)]
pub(super) struct PimRule {
    name: String,
    kinds: Vec<ActivationKind>,
    roles: Vec<String>,
    groups: Vec<String>,
    scopes: Vec<String>,
    checks: Vec<usize>,
    decision: Option<EvaluationOutcome>,
    auto_approve: bool,
    mode: Option<Mode>,
    on_error: EvaluationOutcome,
}

/// A GUID, lower case, or `None`.
fn guid(s: &str) -> Option<String> {
    uuid::Uuid::parse_str(s.trim()).ok().map(|u| u.to_string())
}

impl PimRule {
    /// Builds a rule; every problem goes to `errors` under the rule's path.
    pub(super) fn build(
        raw: &RawPimRule,
        (path, at): (&str, &str),
        check_index: &std::collections::BTreeMap<String, usize>,
        check_names: &[&str],
        errors: &mut read::Errors<'_>,
    ) -> PimRule {
        let mut kinds = Vec::new();
        for (i, k) in raw.resource_types.iter().enumerate() {
            match ActivationKind::parse(k) {
                Some(kind) => kinds.push(kind),
                None => errors.at(
                    &format!("{path}.resource_types.{i}"),
                    format!("{at}: unknown resource type {k:?} (known: group, entra_role, azure_resource)"),
                ),
            }
        }
        let mut ids = |key: &str, list: &[String]| {
            let mut out = Vec::new();
            for (i, v) in list.iter().enumerate() {
                match guid(v) {
                    Some(g) => out.push(g),
                    None => errors.at(
                        &format!("{path}.{key}.{i}"),
                        format!(
                            "{at}: {key} entry {} is not a GUID (a {} id)",
                            i + 1,
                            if key == "roles" {
                                "role definition"
                            } else {
                                "group object"
                            }
                        ),
                    ),
                }
            }
            out
        };
        let roles = ids("roles", &raw.roles);
        let groups = ids("groups", &raw.groups);
        for (i, s) in raw.scopes.iter().enumerate() {
            if !s.starts_with('/') {
                errors.at(
                    &format!("{path}.scopes.{i}"),
                    format!("{at}: scope {s:?} must start with / (\"/\" for the directory, /subscriptions/… for Azure)"),
                );
            }
        }
        let mut checks = Vec::new();
        for (i, c) in raw.checks.iter().enumerate() {
            match check_index.get(c) {
                Some(ix) => checks.push(*ix),
                None => {
                    let hint = crate::lenient::did_you_mean(c, check_names)
                        .map(|near| format!("; did you mean {near:?}?"))
                        .unwrap_or_else(|| format!(" (define it under [checks.{c}])"));
                    errors.at(
                        &format!("{path}.checks.{i}"),
                        format!("{at}: unknown check {c:?}{hint}"),
                    );
                }
            }
        }
        match (raw.decision, raw.checks.is_empty()) {
            (None, true) => errors.at(
                path,
                format!("{at}: give checks = [...] or a fixed decision = \"approved\" | \"auto_approved\" | \"denied\""),
            ),
            (Some(_), false) => errors.at(
                path,
                format!("{at}: a rule has either checks or a fixed decision, not both"),
            ),
            _ => {}
        }
        if raw.auto_approve && raw.decision.is_some() {
            errors.at(
                &format!("{path}.auto_approve"),
                format!(
                    "{at}: auto_approve is for rules with checks; a fixed decision says it itself"
                ),
            );
        }
        if raw.on_error == Some(RawOutcome::AutoApproved) {
            errors.at(
                &format!("{path}.on_error"),
                format!("{at}: on_error may be denied or approved, never auto_approved"),
            );
        }
        PimRule {
            name: raw.name.clone(),
            kinds,
            roles,
            groups,
            scopes: raw.scopes.clone(),
            checks,
            decision: raw.decision.map(RawOutcome::outcome),
            auto_approve: raw.auto_approve,
            mode: raw.mode,
            on_error: raw
                .on_error
                .map_or(EvaluationOutcome::Denied, RawOutcome::outcome),
        }
    }

    /// Whether the rule names the policy's check `index`.
    pub(super) fn uses_check(&self, index: usize) -> bool {
        self.checks.contains(&index)
    }

    fn matches(&self, a: &Activation) -> bool {
        let any = |want: &[String], have: Option<&str>| {
            want.is_empty() || have.is_some_and(|h| want.iter().any(|w| w.eq_ignore_ascii_case(h)))
        };
        // A scope matches itself and what lies under it, segment-wise.
        let scoped = self.scopes.is_empty()
            || a.scope.as_deref().is_some_and(|s| {
                self.scopes.iter().any(|w| {
                    let w = w.trim_end_matches('/');
                    w.is_empty()
                        || s.eq_ignore_ascii_case(w)
                        || s.to_ascii_lowercase()
                            .starts_with(&format!("{}/", w.to_ascii_lowercase()))
                })
            });
        (self.kinds.is_empty() || self.kinds.contains(&a.kind))
            && any(&self.roles, a.role_definition_id.as_deref())
            && any(&self.groups, a.group_id.as_deref())
            && scoped
    }
}

/// A PIM activation's decision (what enforce mode decided; the caller applies audit mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PimDecision {
    pub outcome: EvaluationOutcome,
    pub reasons: Vec<String>,
    pub rule: Option<String>,
    /// The rule's mode, when it sets one.
    pub mode: Option<Mode>,
    pub outcomes: Vec<Outcome>,
    pub graph_calls: u32,
}

/// The callout the checks read: the principal as target, the ticket as the answer to
/// `ticketNumber`. Its ids are the evaluation id (a GUID, so it passes the id rule).
fn callout_of(a: &Activation) -> Callout {
    let id = Id::parse(&a.evaluation_id()).unwrap_or_else(|| a.principal_id.clone());
    let answers: Vec<serde_json::Value> = a
        .ticket_number
        .iter()
        .map(|t| serde_json::json!({"value": t, "answeredQuestion": {"id": "ticketNumber", "text": "Ticket number"}}))
        .collect();
    Callout {
        request_id: id.clone(),
        stage: Stage::PimActivation,
        stage_instance_id: id,
        callback_timeout_secs: None,
        callback_uri_path: None,
        request_type: a.action.clone(),
        access_package: Named {
            id: a.role_definition_id.clone().or_else(|| a.group_id.clone()),
            display_name: None,
        },
        catalog: Named::default(),
        assignment_policy: Named::default(),
        target: Subject {
            id: Some(a.principal_id.to_string()),
            object_id: Some(a.principal_id.to_string()),
            display_name: None,
        },
        requestor: Subject::default(),
        answers: Answers::from(answers),
        shape: WireShape::Envelope,
        task: None,
        raw: serde_json::Value::Null,
        verbatim: None,
    }
}

impl super::Policy {
    /// Decides a PIM activation within `env.deadline`: the first matching `[[pim_rules]]`, its
    /// checks in parallel, their verdicts combined. `never_auto` are role definition ids that
    /// are never `AutoApproved`.
    pub async fn decide_activation(
        &self,
        a: &Activation,
        never_auto: &[String],
        env: &super::DecideEnv<'_>,
    ) -> PimDecision {
        let Some(rule) = self.pim_rules.iter().find(|r| r.matches(a)) else {
            return PimDecision {
                outcome: EvaluationOutcome::Approved,
                reasons: vec![format!(
                    "accessgate: no policy rule applies to {}; the normal PIM flow continues.",
                    a.target()
                )],
                rule: None,
                mode: None,
                outcomes: Vec::new(),
                graph_calls: 0,
            };
        };
        let entries: Vec<&CheckEntry> = rule
            .checks
            .iter()
            .filter_map(|i| self.checks.get(*i))
            .collect();
        let c = callout_of(a);
        // The request's facts come from the activation itself (there is no request in Graph).
        let needs = entries
            .iter()
            .fold(Needs::default(), |n, e| n.union(e.check.needs()));
        let graph_needs = Needs {
            request: false,
            ..needs
        };
        let mut facts = if graph_needs.any() {
            env.directory.facts(&c, graph_needs, env.deadline).await
        } else {
            Facts::none(Some(a.principal_id.to_string()))
        };
        if needs.request {
            facts.request = Fetched::Ok(RequestFacts {
                justification: a.justification.clone(),
                answers: c.answers.parsed().to_vec(),
            });
        }
        let ctx = CheckCtx {
            callout: &c,
            // The activation's own start, when it is scheduled, is when the checks must hold.
            now: a.start.filter(|s| *s > env.now).unwrap_or(env.now),
            facts: &facts,
            tickets: env.tickets,
            deadline: env.deadline,
            activation: Some(a),
        };
        let outcomes =
            futures_util::future::join_all(entries.iter().map(|e| run_check(e, &ctx))).await;
        let denied = outcomes
            .iter()
            .any(|o| matches!(o.finding.verdict, Verdict::Deny { .. }));
        let errored = outcomes
            .iter()
            .any(|o| matches!(o.finding.verdict, Verdict::Error { .. }));
        let (mut outcome, mut reasons) = match (rule.decision, denied, errored) {
            (Some(d), ..) => (
                d,
                vec![format!("accessgate rule {}: {}", rule.name, d.as_str())],
            ),
            (None, true, _) => (EvaluationOutcome::Denied, reasons_of(&outcomes, "deny")),
            (None, false, true) => (
                rule.on_error,
                vec![format!(
                    "accessgate could not verify this activation in time ({}); by policy it is {}. Try again in a minute; if it keeps failing, contact your identity team.",
                    reasons_of(&outcomes, "error").join("; "),
                    rule.on_error.as_str()
                )],
            ),
            (None, false, false) => (
                if rule.auto_approve {
                    EvaluationOutcome::AutoApproved
                } else {
                    EvaluationOutcome::Approved
                },
                vec![format!(
                    "accessgate: checks passed ({})",
                    outcomes
                        .iter()
                        .map(|o| format!("{}: {}", o.check, o.finding.verdict.word()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )],
            ),
        };
        if outcome == EvaluationOutcome::AutoApproved
            && a.role_definition_id
                .as_deref()
                .is_some_and(|r| never_auto.iter().any(|n| n.eq_ignore_ascii_case(r)))
        {
            outcome = EvaluationOutcome::Approved;
            reasons.push(format!(
                "role {} is never auto-approved: the activation goes through PIM's approval",
                a.role_definition_id.as_deref().unwrap_or_default()
            ));
        }
        if reasons.is_empty() {
            reasons.push(format!("accessgate: {}", outcome.as_str()));
        }
        PimDecision {
            outcome,
            reasons,
            rule: Some(rule.name.clone()),
            mode: rule.mode,
            outcomes,
            graph_calls: facts.graph_calls,
        }
    }
}
