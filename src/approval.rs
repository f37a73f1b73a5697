//! Leaf: the approval stage a dynamic-approval callout
//! (`assignmentRequestDeterminingApprovalRequirements`) answers with, as typed values. The
//! policy computes one; `graph` writes it in the v1.0 `accessPackageApprovalStage` shape. Neither
//! knows the other's types, so the stage lives here.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// One approver set, each a v1.0 `subjectSet` type Entra resolves itself when the stage runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Approver {
    /// `requestorManager{managerLevel}`: 1 is the requestor's manager, 2 that manager's manager.
    Manager(u8),
    /// `internalSponsors`: the sponsors of the requestor's connected organization (internal).
    InternalSponsors,
    /// `externalSponsors`: the connected organization's external sponsors.
    ExternalSponsors,
    /// `targetUserSponsors`: the requestor's own sponsors.
    UserSponsors,
    /// `singleUser{userId}`.
    User(String),
    /// `groupMembers{groupId}`.
    Group(String),
}

/// What [`Approver::parse`] accepts, for error messages.
pub const APPROVER_FORMS: &str = "manager, manager:2, internal_sponsors, external_sponsors, user_sponsors, user:<object id>, group:<object id>, package_owners";

/// An approver as written in the policy: a set, or the requested package's declared owners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApproverTerm {
    Set(Approver),
    /// The `owners` of the `[packages.NAME]` that names the requested access package.
    PackageOwners,
}

impl ApproverTerm {
    /// `manager`, `manager:N` (1-2), `internal_sponsors`, `external_sponsors`, `user_sponsors`,
    /// `user:<guid>`, `group:<guid>`, `package_owners`; `None` for anything else.
    pub fn parse(s: &str) -> Option<ApproverTerm> {
        let s = s.trim();
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (s, None),
        };
        let guid = |a: Option<&str>| {
            a.filter(|a| crate::settings::is_guid(a))
                .map(str::to_ascii_lowercase)
        };
        Some(match (kind.to_ascii_lowercase().as_str(), arg) {
            ("manager", None) => ApproverTerm::Set(Approver::Manager(1)),
            ("manager", Some(n)) => match n.parse::<u8>() {
                Ok(l @ 1..=2) => ApproverTerm::Set(Approver::Manager(l)),
                _ => return None,
            },
            ("internal_sponsors", None) => ApproverTerm::Set(Approver::InternalSponsors),
            ("external_sponsors", None) => ApproverTerm::Set(Approver::ExternalSponsors),
            ("user_sponsors", None) => ApproverTerm::Set(Approver::UserSponsors),
            ("user", a) => ApproverTerm::Set(Approver::User(guid(a)?)),
            ("group", a) => ApproverTerm::Set(Approver::Group(guid(a)?)),
            ("package_owners", None) => ApproverTerm::PackageOwners,
            _ => return None,
        })
    }
}

impl fmt::Display for Approver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approver::Manager(1) => f.write_str("manager"),
            Approver::Manager(n) => write!(f, "manager:{n}"),
            Approver::InternalSponsors => f.write_str("internal_sponsors"),
            Approver::ExternalSponsors => f.write_str("external_sponsors"),
            Approver::UserSponsors => f.write_str("user_sponsors"),
            Approver::User(id) => write!(f, "user:{id}"),
            Approver::Group(id) => write!(f, "group:{id}"),
        }
    }
}

/// The approval stage Entra is told to run. Built only by the policy, which guarantees at
/// least one primary approver and escalation approvers whenever escalation is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalStage {
    /// The `[approvals.NAME]` it came from (logs and the detail text).
    pub name: String,
    pub primary: Vec<Approver>,
    pub fallback_primary: Vec<Approver>,
    /// `Some` turns escalation on: after this long the escalation approvers are asked.
    pub escalate_after: Option<Duration>,
    pub escalation: Vec<Approver>,
    pub fallback_escalation: Vec<Approver>,
    /// `durationBeforeAutomaticDenial`.
    pub deny_after: Duration,
    pub justification_required: bool,
}

impl ApprovalStage {
    /// `manager, group:…` for the detail text and logs.
    pub fn describe(list: &[Approver]) -> String {
        list.iter()
            .map(Approver::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// An ISO 8601 duration in the form Graph's `format: duration` pattern accepts
/// (`P2D`, `PT4H`, `P1DT12H30M`, `PT0S`); whole seconds.
pub fn iso_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    if h > 0 || m > 0 || sec > 0 || days == 0 {
        out.push('T');
        if h > 0 {
            out.push_str(&format!("{h}H"));
        }
        if m > 0 {
            out.push_str(&format!("{m}M"));
        }
        if sec > 0 || (days == 0 && h == 0 && m == 0) {
            out.push_str(&format!("{sec}S"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approver_terms() {
        let g = "11111111-2222-3333-4444-555555555555";
        assert_eq!(
            ApproverTerm::parse("manager"),
            Some(ApproverTerm::Set(Approver::Manager(1)))
        );
        assert_eq!(
            ApproverTerm::parse(" Manager:2 "),
            Some(ApproverTerm::Set(Approver::Manager(2)))
        );
        assert_eq!(ApproverTerm::parse("manager:3"), None);
        assert_eq!(
            ApproverTerm::parse(&format!("group:{}", g.to_uppercase())),
            Some(ApproverTerm::Set(Approver::Group(g.into())))
        );
        assert_eq!(ApproverTerm::parse("user:alice@contoso.com"), None);
        assert_eq!(ApproverTerm::parse("user"), None);
        assert_eq!(
            ApproverTerm::parse("package_owners"),
            Some(ApproverTerm::PackageOwners)
        );
        assert_eq!(ApproverTerm::parse("sponsors"), None);
    }

    #[test]
    fn durations_match_graphs_pattern() {
        let d = |s| iso_duration(Duration::from_secs(s));
        assert_eq!(d(2 * 86_400), "P2D");
        assert_eq!(d(4 * 3600), "PT4H");
        assert_eq!(d(86_400 + 12 * 3600 + 30 * 60), "P1DT12H30M");
        assert_eq!(d(0), "PT0S");
        assert_eq!(d(90), "PT1M30S");
    }
}
