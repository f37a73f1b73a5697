//! HR status from Graph user attributes (anchors.md §6): account enabled, hire date, leave date,
//! employee type / department / company, manager, sponsors for guests. What an absent attribute
//! means is set per attribute, because most tenants fill only some of them.

use serde::Deserialize;

use super::{Check, CheckCtx, Finding, Verdict};
use crate::directory::{Needs, UserFacts};

/// The Graph application permissions this check needs, and why (README lists them).
pub const GRAPH_PERMISSIONS: &[(&str, &str)] = &[
    ("User.Read.All", "user attributes, manager and sponsors"),
    (
        "User-LifeCycleInfo.Read.All",
        "employeeLeaveDateTime (and the other lifecycle attributes)",
    ),
];

/// What an absent attribute means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfMissing {
    Allow,
    Deny,
    Error,
}

/// `[checks.NAME.missing]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Missing {
    /// Default `error`: Graph always returns it, so its absence means a permission problem.
    pub account_enabled: IfMissing,
    /// Default `allow`: many tenants do not fill it.
    pub employee_hire_date: IfMissing,
    /// Default `allow`: no leave date means not leaving.
    pub employee_leave_date_time: IfMissing,
    /// Default `deny`; consulted only when `allowed_employee_types` is set.
    pub employee_type: IfMissing,
    /// Default `deny`; consulted only when `allowed_departments` is set.
    pub department: IfMissing,
    /// Default `deny`; consulted only when `allowed_companies` is set.
    pub company_name: IfMissing,
}

impl Default for Missing {
    fn default() -> Self {
        Missing {
            account_enabled: IfMissing::Error,
            employee_hire_date: IfMissing::Allow,
            employee_leave_date_time: IfMissing::Allow,
            employee_type: IfMissing::Deny,
            department: IfMissing::Deny,
            company_name: IfMissing::Deny,
        }
    }
}

fn yes() -> bool {
    true
}

/// `[checks.NAME]` with `type = "hr"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HrSettings {
    /// Deny a disabled account. Default true.
    #[serde(default = "yes")]
    pub require_account_enabled: bool,
    /// Deny before `employeeHireDate` (less `allow_days_before_hire`). Default true.
    #[serde(default = "yes")]
    pub deny_before_hire_date: bool,
    /// Days before the hire date from which access is allowed. Default 0.
    #[serde(default)]
    pub allow_days_before_hire: u32,
    /// Deny when `employeeLeaveDateTime` is within this many days (or past). Default: unchecked.
    #[serde(default)]
    pub deny_leaving_within_days: Option<u32>,
    /// Deny a user without a manager. Default false.
    #[serde(default)]
    pub require_manager: bool,
    /// Deny a guest without sponsors. Default false.
    #[serde(default)]
    pub require_sponsor_for_guests: bool,
    /// `employeeType` must be one of these (case-insensitive). Default: any.
    #[serde(default)]
    pub allowed_employee_types: Vec<String>,
    /// `department` must be one of these. Default: any.
    #[serde(default)]
    pub allowed_departments: Vec<String>,
    /// `companyName` must be one of these. Default: any.
    #[serde(default)]
    pub allowed_companies: Vec<String>,
    #[serde(default)]
    pub missing: Missing,
}

#[derive(Debug)]
pub struct HrCheck {
    settings: HrSettings,
}

/// Builds the check; every problem is listed.
pub fn check(_name: &str, settings: HrSettings) -> Result<HrCheck, Vec<String>> {
    let mut errors = Vec::new();
    for (field, list) in [
        ("allowed_employee_types", &settings.allowed_employee_types),
        ("allowed_departments", &settings.allowed_departments),
        ("allowed_companies", &settings.allowed_companies),
    ] {
        if list.iter().any(|v| v.trim().is_empty()) {
            errors.push(format!("{field}: an empty value matches nothing"));
        }
    }
    if settings.deny_leaving_within_days.is_some_and(|d| d > 3650) {
        errors.push("deny_leaving_within_days: at most 3650".into());
    }
    if errors.is_empty() {
        Ok(HrCheck { settings })
    } else {
        Err(errors)
    }
}

/// One rule's result.
enum Rule {
    Ok(String),
    Deny(String, String),
    Error(String, String),
}

fn missing(what: &str, mode: IfMissing) -> Rule {
    match mode {
        IfMissing::Allow => Rule::Ok(format!("{what}: not set; allowed by missing policy")),
        IfMissing::Deny => Rule::Deny(
            format!("{what} is not set"),
            format!("{what}: not set; denied by missing policy"),
        ),
        IfMissing::Error => Rule::Error(
            format!("{what} is not set (is the Graph permission missing?)"),
            format!("{what}: not set; an error by missing policy"),
        ),
    }
}

fn day(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%d").to_string()
}

fn one_of(what: &str, value: Option<&str>, allowed: &[String], mode: IfMissing) -> Option<Rule> {
    if allowed.is_empty() {
        return None;
    }
    Some(match value {
        None => missing(what, mode),
        Some(v) if allowed.iter().any(|a| a.eq_ignore_ascii_case(v)) => {
            Rule::Ok(format!("{what} {v:?}: allowed"))
        }
        Some(v) => Rule::Deny(
            format!(
                "{what} {v:?} is not allowed (allowed: {})",
                allowed.join(", ")
            ),
            format!("{what} {v:?}: not one of {}", allowed.join(", ")),
        ),
    })
}

impl HrCheck {
    fn rules(&self, u: &UserFacts, now: jiff::Timestamp) -> Vec<Rule> {
        let s = &self.settings;
        let m = &s.missing;
        let mut out = Vec::new();
        if s.require_account_enabled {
            out.push(match u.account_enabled {
                None => missing("accountEnabled", m.account_enabled),
                Some(true) => Rule::Ok("accountEnabled: true".into()),
                Some(false) => Rule::Deny(
                    "the account is disabled".into(),
                    "accountEnabled: false".into(),
                ),
            });
        }
        if s.deny_before_hire_date {
            out.push(match u.employee_hire_date {
                None => missing("employeeHireDate", m.employee_hire_date),
                Some(hire) => {
                    let from = hire
                        .checked_sub(jiff::SignedDuration::from_hours(
                            24 * i64::from(s.allow_days_before_hire),
                        ))
                        .unwrap_or(hire);
                    if now >= from {
                        Rule::Ok(format!(
                            "employeeHireDate {}: started (now {}), ok",
                            day(hire),
                            day(now)
                        ))
                    } else {
                        Rule::Deny(
                            format!("starts on {}", day(hire)),
                            format!(
                                "employeeHireDate {}: access from {} at the earliest",
                                day(hire),
                                day(from)
                            ),
                        )
                    }
                }
            });
        }
        if let Some(days) = s.deny_leaving_within_days {
            out.push(match u.employee_leave_date_time {
                None => missing("employeeLeaveDateTime", m.employee_leave_date_time),
                Some(leave) => {
                    let horizon = now
                        .checked_add(jiff::SignedDuration::from_hours(24 * i64::from(days)))
                        .unwrap_or(now);
                    if leave <= horizon {
                        Rule::Deny(
                            format!("leaves on {}", day(leave)),
                            format!(
                                "employeeLeaveDateTime {}: within {days} days of {}",
                                day(leave),
                                day(now)
                            ),
                        )
                    } else {
                        Rule::Ok(format!(
                            "employeeLeaveDateTime {}: more than {days} days away, ok",
                            day(leave)
                        ))
                    }
                }
            });
        }
        if s.require_manager {
            out.push(match &u.manager {
                Some(id) => Rule::Ok(format!("manager: {id}")),
                None => Rule::Deny("has no manager".into(), "manager: none".into()),
            });
        }
        if s.require_sponsor_for_guests {
            let guest = u
                .user_type
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case("Guest"));
            out.push(if !guest {
                Rule::Ok("not a guest: no sponsor needed".into())
            } else if u.sponsors.is_empty() {
                Rule::Deny(
                    "is a guest without a sponsor".into(),
                    "userType Guest, sponsors: none".into(),
                )
            } else {
                Rule::Ok(format!("userType Guest, {} sponsor(s)", u.sponsors.len()))
            });
        }
        out.extend(one_of(
            "employeeType",
            u.employee_type.as_deref(),
            &s.allowed_employee_types,
            m.employee_type,
        ));
        out.extend(one_of(
            "department",
            u.department.as_deref(),
            &s.allowed_departments,
            m.department,
        ));
        out.extend(one_of(
            "companyName",
            u.company_name.as_deref(),
            &s.allowed_companies,
            m.company_name,
        ));
        out
    }
}

#[async_trait::async_trait]
impl Check for HrCheck {
    fn kind(&self) -> &'static str {
        "hr"
    }

    fn needs(&self) -> Needs {
        Needs {
            user: true,
            ..Needs::default()
        }
    }

    async fn evaluate(&self, ctx: &CheckCtx<'_>) -> Finding {
        let user = match ctx.facts.user.get() {
            Ok(u) => u,
            Err(why) => return Finding::new(Verdict::error(why), Vec::new()),
        };
        let who = user
            .user_principal_name
            .clone()
            .unwrap_or_else(|| user.id.clone());
        let mut explanation = vec![format!("user {who}")];
        let (mut denies, mut errors) = (Vec::new(), Vec::new());
        for r in self.rules(user, ctx.now) {
            match r {
                Rule::Ok(line) => explanation.push(line),
                Rule::Deny(reason, line) => {
                    explanation.push(format!("{line} -> deny"));
                    denies.push(reason);
                }
                Rule::Error(reason, line) => {
                    explanation.push(format!("{line} -> error"));
                    errors.push(reason);
                }
            }
        }
        let verdict = if !denies.is_empty() {
            Verdict::deny(format!("{who} {}", denies.join("; ")))
        } else if !errors.is_empty() {
            Verdict::error(format!("{who}: {}", errors.join("; ")))
        } else {
            Verdict::Allow
        };
        Finding::new(verdict, explanation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::{Parsed, parse};
    use crate::directory::{Facts, Fetched};
    use crate::tickets::NoTickets;

    fn settings(toml_text: &str) -> HrSettings {
        toml::from_str(toml_text).unwrap()
    }

    fn now() -> jiff::Timestamp {
        "2026-11-23T12:00:00Z".parse().unwrap()
    }

    fn user() -> UserFacts {
        UserFacts {
            id: "u1".into(),
            user_principal_name: Some("alice@contoso.example".into()),
            account_enabled: Some(true),
            employee_hire_date: "2024-02-01T00:00:00Z".parse().ok(),
            employee_type: Some("Employee".into()),
            department: Some("Finance".into()),
            manager: Some("m1".into()),
            user_type: Some("Member".into()),
            ..UserFacts::default()
        }
    }

    async fn run(s: &str, u: Fetched<UserFacts>) -> Finding {
        let c = match parse(br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r"}"#) {
            Ok(Parsed::Callout(c)) => *c,
            other => panic!("{other:?}"),
        };
        let mut facts = Facts::none(Some("u1".into()));
        facts.user = u;
        let check = check("hr", settings(s)).unwrap();
        let ctx = CheckCtx {
            callout: &c,
            now: now(),
            facts: &facts,
            tickets: &NoTickets,
            deadline: std::time::Instant::now() + std::time::Duration::from_secs(5),
            activation: None,
        };
        check.evaluate(&ctx).await
    }

    #[tokio::test]
    async fn a_regular_employee_passes_every_rule() {
        let f = run(
            "deny_leaving_within_days = 30\nrequire_manager = true\nallowed_employee_types = [\"employee\"]\nallowed_departments = [\"Finance\"]",
            Fetched::Ok(user()),
        )
        .await;
        assert_eq!(f.verdict, Verdict::Allow, "{:?}", f.explanation);
        assert!(
            f.explanation
                .iter()
                .any(|l| l.contains("employeeHireDate 2024-02-01"))
        );
    }

    #[tokio::test]
    async fn each_rule_denies_with_its_reason() {
        type Change = Box<dyn Fn(&mut UserFacts)>;
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "",
                Box::new(|u| u.account_enabled = Some(false)),
                "disabled",
            ),
            (
                "",
                Box::new(|u| u.employee_hire_date = "2027-06-01T00:00:00Z".parse().ok()),
                "starts on 2027-06-01",
            ),
            (
                "deny_leaving_within_days = 30",
                Box::new(|u| u.employee_leave_date_time = "2026-12-01T00:00:00Z".parse().ok()),
                "leaves on 2026-12-01",
            ),
            (
                "deny_leaving_within_days = 30",
                Box::new(|u| u.employee_leave_date_time = "2026-01-01T00:00:00Z".parse().ok()),
                "leaves on 2026-01-01",
            ),
            (
                "require_manager = true",
                Box::new(|u| u.manager = None),
                "no manager",
            ),
            (
                "require_sponsor_for_guests = true",
                Box::new(|u| u.user_type = Some("Guest".into())),
                "guest without a sponsor",
            ),
            (
                "allowed_employee_types = [\"Employee\"]",
                Box::new(|u| u.employee_type = Some("Contractor".into())),
                "\"Contractor\" is not allowed",
            ),
            (
                "allowed_companies = [\"Contoso\"]",
                Box::new(|u| u.company_name = Some("Fabrikam".into())),
                "companyName",
            ),
        ];
        for (s, change, want) in cases {
            let mut u = user();
            change(&mut u);
            let f = run(s, Fetched::Ok(u)).await;
            match &f.verdict {
                Verdict::Deny { reason } => assert!(reason.contains(want), "{s}: {reason}"),
                other => panic!("{s}: expected deny with {want:?}, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn hiring_early_is_allowed_within_the_grace_days() {
        let mut u = user();
        u.employee_hire_date = "2026-11-25T00:00:00Z".parse().ok();
        assert!(matches!(
            run("", Fetched::Ok(u.clone())).await.verdict,
            Verdict::Deny { .. }
        ));
        assert_eq!(
            run("allow_days_before_hire = 3", Fetched::Ok(u))
                .await
                .verdict,
            Verdict::Allow
        );
    }

    #[tokio::test]
    async fn missing_attributes_follow_their_setting() {
        let mut u = user();
        u.account_enabled = None;
        u.employee_hire_date = None;
        u.employee_type = None;
        // Defaults: accountEnabled error, hire date allow, employee type deny (deny wins).
        let f = run(
            "allowed_employee_types = [\"Employee\"]",
            Fetched::Ok(u.clone()),
        )
        .await;
        assert!(
            matches!(&f.verdict, Verdict::Deny { reason } if reason.contains("employeeType is not set")),
            "{f:?}"
        );
        let f = run("", Fetched::Ok(u.clone())).await;
        assert!(
            matches!(&f.verdict, Verdict::Error { reason } if reason.contains("accountEnabled")),
            "{f:?}"
        );
        let f = run(
            "[missing]\naccount_enabled = \"allow\"\nemployee_hire_date = \"deny\"",
            Fetched::Ok(u),
        )
        .await;
        assert!(
            matches!(&f.verdict, Verdict::Deny { reason } if reason.contains("employeeHireDate")),
            "{f:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_read_is_an_error_with_its_reason() {
        let f = run("", Fetched::Failed("Graph user: HTTP 403".into())).await;
        assert_eq!(f.verdict, Verdict::error("Graph user: HTTP 403"));
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(toml::from_str::<HrSettings>("bogus = 1").is_err());
        assert!(toml::from_str::<HrSettings>("[missing]\nemployee_type = \"maybe\"").is_err());
        assert!(check("hr", settings("allowed_departments = [\" \"]")).is_err());
    }
}
