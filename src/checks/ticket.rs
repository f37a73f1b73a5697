//! A ServiceNow ticket named by the requestor: the number comes from a requestor answer or the
//! justification (a pattern), the record must exist in the configured table, be in an allowed
//! state, and optionally be opened for the target user. Every returned record is re-checked:
//! the Table API ignores an invalid part of a query (anchors.md §5), so a filter that did not
//! apply must not let another ticket through.

use regex::Regex;
use serde::Deserialize;

use super::{Check, CheckCtx, Finding, Verdict};
use crate::directory::{FactError, Needs};
use crate::tickets::TicketRecord;

/// Numbers of the common task tables (incident, requested item, request, change, task).
pub const DEFAULT_PATTERN: &str = r"(?i)\b(?:INC|RITM|REQ|CHG|SCTASK|TASK)\d{7}\b";

fn yes() -> bool {
    true
}

fn number_field() -> String {
    "number".into()
}

fn opened_for() -> String {
    "opened_for".into()
}

/// `[checks.NAME]` with `type = "servicenow_ticket"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketSettings {
    /// The table, e.g. `sc_req_item`. Required.
    pub table: String,
    /// The field holding the number. Default `number`.
    #[serde(default = "number_field")]
    pub number_field: String,
    /// The question (text or id) whose answer holds the number. Default: none.
    #[serde(default)]
    pub number_from_answer: Option<String>,
    /// The pattern that finds a number; the first capture group if any. Default [`DEFAULT_PATTERN`].
    #[serde(default)]
    pub number_pattern: Option<String>,
    /// Look for the pattern in the justification. Default true.
    #[serde(default = "yes")]
    pub search_justification: bool,
    /// `state` stored values or display values that are acceptable. Required.
    pub allowed_states: Vec<String>,
    /// The record's `active` must be true. Default false.
    #[serde(default)]
    pub require_active: bool,
    /// The record must be opened for the target user. Default false.
    #[serde(default)]
    pub opened_for_target: bool,
    /// The reference field naming whom the ticket is for. Default `opened_for`.
    #[serde(default = "opened_for")]
    pub opened_for_field: String,
    /// More reference fields that may name the target instead (e.g. a change's `requested_by`
    /// and `assigned_to`): any one matching is enough. Default none.
    #[serde(default)]
    pub also_for_fields: Vec<String>,
    /// A window the check time must fall in (a change's `start_date` and `end_date`): both
    /// fields or neither. The time is now, or a PIM activation's scheduled start.
    #[serde(default)]
    pub window_start_field: Option<String>,
    #[serde(default)]
    pub window_end_field: Option<String>,
}

/// Why a found record cannot be judged: the check's verdict is then an error, not a deny.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RecordError {
    #[error("{0}")]
    Fact(#[from] FactError),
    #[error("the record has no {0}.email or {0}.user_name")]
    NoOpenedFor(String),
    #[error("field {field} is {value}")]
    BadField {
        field: String,
        value: serde_json::Value,
    },
}

#[derive(Debug)]
pub struct TicketCheck {
    s: TicketSettings,
    pattern: Regex,
}

fn name_ok(s: &str, dots: bool) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || (dots && c == '.'))
}

/// Builds the check; every problem is listed.
pub fn check(_name: &str, s: TicketSettings) -> Result<TicketCheck, Vec<String>> {
    let mut errors = Vec::new();
    if !name_ok(&s.table, false) {
        errors.push(format!("table {:?}: letters, digits and _ only", s.table));
    }
    if !name_ok(&s.number_field, true) {
        errors.push(format!(
            "number_field {:?}: letters, digits, _ and . only",
            s.number_field
        ));
    }
    if !name_ok(&s.opened_for_field, false) {
        errors.push(format!(
            "opened_for_field {:?}: letters, digits and _ only",
            s.opened_for_field
        ));
    }
    for f in s
        .also_for_fields
        .iter()
        .chain(s.window_start_field.iter())
        .chain(s.window_end_field.iter())
    {
        if !name_ok(f, false) {
            errors.push(format!("field {f:?}: letters, digits and _ only"));
        }
    }
    if s.window_start_field.is_some() != s.window_end_field.is_some() {
        errors.push("window_start_field and window_end_field go together".into());
    }
    if s.allowed_states.is_empty() {
        errors.push("allowed_states: name at least one state".into());
    }
    if !s.search_justification && s.number_from_answer.is_none() {
        errors.push("set number_from_answer, or leave search_justification on: there is nowhere to find a number".into());
    }
    let pattern = match Regex::new(s.number_pattern.as_deref().unwrap_or(DEFAULT_PATTERN)) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.push(format!(
                "number_pattern is not a valid regular expression: {e}"
            ));
            None
        }
    };
    match pattern {
        Some(pattern) if errors.is_empty() => Ok(TicketCheck { s, pattern }),
        _ => Err(errors),
    }
}

impl TicketCheck {
    fn find_number(&self, text: &str) -> Option<String> {
        let caps = self.pattern.captures(text)?;
        caps.get(1)
            .or_else(|| caps.get(0))
            .map(|m| m.as_str().trim().to_owned())
    }

    /// The number and where it came from.
    fn number(&self, ctx: &CheckCtx<'_>) -> (Option<(String, String)>, Vec<String>) {
        let mut lines = Vec::new();
        let request = ctx.facts.request.get().ok();
        if let Some(q) = &self.s.number_from_answer {
            // The callout's answers first, then the request's as Graph holds it.
            let answer = ctx
                .callout
                .answers
                .parsed()
                .iter()
                .chain(request.iter().flat_map(|r| r.answers.iter()))
                .find(|a| a.answers(q));
            match answer {
                Some(a) => {
                    // The answer may be the bare number or a sentence around it.
                    let n = self
                        .find_number(&a.value)
                        .unwrap_or_else(|| a.value.trim().to_owned());
                    if !n.is_empty() {
                        return (Some((n, format!("the answer to {q:?}"))), lines);
                    }
                    lines.push(format!("the answer to {q:?} is empty"));
                }
                None => lines.push(format!("no answer to {q:?}")),
            }
        }
        if self.s.search_justification {
            match (request, ctx.facts.request.get()) {
                (Some(r), _) => {
                    match r.justification.as_deref().and_then(|j| self.find_number(j)) {
                        Some(n) => return (Some((n, "the justification".into())), lines),
                        None => lines.push(format!(
                            "no number matching {} in the justification",
                            self.pattern.as_str()
                        )),
                    }
                }
                (None, Err(why)) => {
                    lines.push(format!("the justification could not be read: {why}"))
                }
                (None, Ok(_)) => {}
            }
        }
        (None, lines)
    }

    fn person_fields(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.s.opened_for_field).chain(self.s.also_for_fields.iter())
    }

    fn fields(&self) -> Vec<String> {
        let mut f = vec!["state".to_owned(), "active".to_owned()];
        if self.s.opened_for_target {
            for of in self.person_fields() {
                f.extend([format!("{of}.email"), format!("{of}.user_name")]);
            }
        }
        f.extend(self.s.window_start_field.iter().cloned());
        f.extend(self.s.window_end_field.iter().cloned());
        f
    }

    /// The window check: `Ok(None)` when none is configured or the checked span lies in it,
    /// `Ok(Some)` with the deny reason when not, `Err` when a bound is missing or unreadable.
    /// The span is `now`, or for a PIM activation its whole schedule (start to end).
    fn outside_window(
        &self,
        rec: &TicketRecord,
        number: &str,
        ctx: &CheckCtx<'_>,
    ) -> Result<Option<String>, String> {
        let (Some(sf), Some(ef)) = (&self.s.window_start_field, &self.s.window_end_field) else {
            return Ok(None);
        };
        let bound = |f: &str| -> Result<jiff::Timestamp, String> {
            let v = rec
                .field(f)
                .map(|x| x.value)
                .filter(|v| !v.trim().is_empty())
                .ok_or_else(|| format!("ticket {number} has no {f}"))?;
            servicenow_time(&v)
                .ok_or_else(|| format!("ticket {number}: {f} {v:?} is not a date and time"))
        };
        let (start, end) = (bound(sf)?, bound(ef)?);
        let from = ctx.now;
        let until = match ctx.activation {
            None => from,
            Some(a) => match a.duration_secs.and_then(|d| i64::try_from(d).ok()) {
                Some(d) => from + jiff::SignedDuration::from_secs(d),
                None => {
                    return Ok(Some(format!(
                        "the activation has no end, so it cannot be checked against ticket {number}'s window"
                    )));
                }
            },
        };
        if from < start || until > end {
            let what = if until == from {
                format!("{from} is outside it")
            } else {
                format!("the activation, {from} to {until}, does not lie wholly in it")
            };
            return Ok(Some(format!(
                "ticket {number}'s window is {start} to {end}; {what}"
            )));
        }
        Ok(None)
    }

    /// The opened-for rule against the target's mail / UPN: any of the person fields.
    fn opened_for_matches(
        &self,
        rec: &TicketRecord,
        ctx: &CheckCtx<'_>,
    ) -> Result<bool, RecordError> {
        let mut named_someone = false;
        for of in self.person_fields() {
            match self.person_matches(rec, ctx, of) {
                Ok(true) => return Ok(true),
                Ok(false) => named_someone = true,
                // An empty field names nobody; only if all are empty the check cannot judge.
                Err(RecordError::NoOpenedFor(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if named_someone {
            Ok(false)
        } else {
            Err(RecordError::NoOpenedFor(
                self.person_fields()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" / "),
            ))
        }
    }

    fn person_matches(
        &self,
        rec: &TicketRecord,
        ctx: &CheckCtx<'_>,
        of: &str,
    ) -> Result<bool, RecordError> {
        let user = ctx.facts.user.get()?;
        let email = rec.field(&format!("{of}.email")).map(|f| f.value);
        let uname = rec.field(&format!("{of}.user_name")).map(|f| f.value);
        if email.as_deref().is_none_or(str::is_empty) && uname.as_deref().is_none_or(str::is_empty)
        {
            return Err(RecordError::NoOpenedFor(of.to_owned()));
        }
        let ids: Vec<&str> = [&user.mail, &user.user_principal_name]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let upn_local = user
            .user_principal_name
            .as_deref()
            .and_then(|u| u.split('@').next());
        let email_ok = email
            .as_deref()
            .is_some_and(|e| ids.iter().any(|i| i.eq_ignore_ascii_case(e)));
        let name_ok = uname.as_deref().is_some_and(|n| {
            ids.iter().any(|i| i.eq_ignore_ascii_case(n))
                || upn_local.is_some_and(|l| l.eq_ignore_ascii_case(n))
        });
        Ok(email_ok || name_ok)
    }
}

/// A ServiceNow date-time: `YYYY-MM-DD HH:MM:SS` (the Table API's UTC form) or ISO 8601.
fn servicenow_time(v: &str) -> Option<jiff::Timestamp> {
    let v = v.trim();
    v.parse::<jiff::Timestamp>().ok().or_else(|| {
        // The Table API's form is UTC without a zone: read it as such.
        let (date, time) = v.split_once(' ')?;
        format!("{date}T{time}Z").parse().ok()
    })
}

/// Every field we read must be a string or a `{value, display_value}` object.
fn parses(rec: &TicketRecord) -> Result<(), RecordError> {
    for (k, v) in &rec.fields {
        let ok = match v {
            serde_json::Value::String(_) | serde_json::Value::Null => true,
            serde_json::Value::Object(o) => o
                .get("value")
                .is_none_or(|v| v.is_string() || v.is_null() || v.is_number() || v.is_boolean()),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => true,
            serde_json::Value::Array(_) => false,
        };
        if !ok {
            return Err(RecordError::BadField {
                field: k.clone(),
                value: v.clone(),
            });
        }
    }
    Ok(())
}

#[async_trait::async_trait]
impl Check for TicketCheck {
    fn kind(&self) -> &'static str {
        "servicenow_ticket"
    }

    fn needs(&self) -> Needs {
        Needs {
            user: self.s.opened_for_target,
            holdings: false,
            request: self.s.search_justification || self.s.number_from_answer.is_some(),
        }
    }

    async fn evaluate(&self, ctx: &CheckCtx<'_>) -> Finding {
        let (found, mut lines) = self.number(ctx);
        // Without the request's answers and justification, "no number" would be a guess.
        if found.is_none()
            && let Err(why) = ctx.facts.request.get()
        {
            return Finding::new(Verdict::error(why), lines);
        }
        let Some((number, from)) = found else {
            let place = match &self.s.number_from_answer {
                Some(q) if self.s.search_justification => {
                    format!("the answer to {q:?} or the justification")
                }
                Some(q) => format!("the answer to {q:?}"),
                None => "the justification".into(),
            };
            return Finding::new(
                Verdict::deny(format!("no ServiceNow ticket number in {place}")),
                lines,
            );
        };
        lines.push(format!("ticket number {number} from {from}"));
        let table = &self.s.table;
        let records = match ctx
            .tickets
            .find(
                table,
                &self.s.number_field,
                &number,
                &self.fields(),
                ctx.deadline,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return Finding::new(Verdict::error(e.to_string()), lines),
        };
        let (matching, others): (Vec<_>, Vec<_>) = records.into_iter().partition(|r| {
            r.field(&self.s.number_field)
                .is_some_and(|f| f.value.trim().eq_ignore_ascii_case(&number))
        });
        if !others.is_empty() {
            lines.push(format!(
                "ServiceNow returned {} record(s) that do not match {number}; the query filter was not applied as written, they are ignored",
                others.len()
            ));
        }
        let rec = match matching.as_slice() {
            [] => {
                return Finding::new(
                    Verdict::deny(format!("ticket {number} not found in {table}")),
                    lines,
                );
            }
            [one] => one,
            many => {
                return Finding::new(
                    Verdict::error(format!(
                        "{} records in {table} have number {number}",
                        many.len()
                    )),
                    lines,
                );
            }
        };
        if let Err(e) = parses(rec) {
            return Finding::new(
                Verdict::error(format!("ServiceNow answer does not parse: {e}")),
                lines,
            );
        }
        let sys_id = rec.field("sys_id").map(|f| f.value).unwrap_or_default();
        let Some(state) = rec.field("state") else {
            return Finding::new(
                Verdict::error(format!("ticket {number} has no state field")),
                lines,
            );
        };
        let shown = state.display.clone().unwrap_or_else(|| state.value.clone());
        lines.push(format!("record {sys_id}: state {} ({shown})", state.value));
        if !self
            .s
            .allowed_states
            .iter()
            .any(|a| state.matches(a.trim()))
        {
            return Finding::new(
                Verdict::deny(format!(
                    "ticket {number} is {shown} (allowed: {})",
                    self.s.allowed_states.join(", ")
                )),
                lines,
            );
        }
        if self.s.require_active {
            let active = rec
                .field("active")
                .is_some_and(|a| a.value.eq_ignore_ascii_case("true"));
            lines.push(format!("active: {active}"));
            if !active {
                return Finding::new(
                    Verdict::deny(format!("ticket {number} is not active")),
                    lines,
                );
            }
        }
        if self.s.opened_for_target {
            match self.opened_for_matches(rec, ctx) {
                Err(e) => return Finding::new(Verdict::error(e.to_string()), lines),
                Ok(false) => {
                    return Finding::new(
                        Verdict::deny(format!("ticket {number} was opened for someone else")),
                        lines,
                    );
                }
                Ok(true) => lines.push(format!("{}: the target user", self.s.opened_for_field)),
            }
        }
        match self.outside_window(rec, &number, ctx) {
            Err(e) => return Finding::new(Verdict::error(e), lines),
            Ok(Some(why)) => return Finding::new(Verdict::deny(why), lines),
            Ok(None) => {}
        }
        Finding::new(Verdict::Allow, lines).with_note(format!("ticket {number} ({shown})"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::callout::{Parsed, parse};
    use crate::directory::{Answer, Facts, Fetched, RequestFacts, UserFacts};
    use crate::tickets::{TicketError, TicketSystem};

    /// Returns fixed records whatever is asked (like a Table API whose filter was ignored).
    struct Fixed(Result<Vec<serde_json::Value>, TicketError>);

    #[async_trait::async_trait]
    impl TicketSystem for Fixed {
        async fn find(
            &self,
            _t: &str,
            _f: &str,
            _n: &str,
            _fs: &[String],
            _d: Instant,
        ) -> Result<Vec<TicketRecord>, TicketError> {
            self.0.clone().map(|v| {
                v.into_iter()
                    .map(|r| TicketRecord {
                        fields: r.as_object().cloned().unwrap_or_default(),
                    })
                    .collect()
            })
        }
    }

    fn rec(number: &str, state: &str, display: &str, email: &str) -> serde_json::Value {
        json!({"sys_id": format!("id-{number}"), "number": {"value": number, "display_value": number},
               "state": {"value": state, "display_value": display}, "active": {"value": "true", "display_value": "true"},
               "opened_for.email": {"value": email, "display_value": email}})
    }

    async fn run(
        settings: &str,
        answers: &str,
        justification: Option<&str>,
        records: Result<Vec<serde_json::Value>, TicketError>,
    ) -> Finding {
        let body = format!(
            r#"{{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r","Answers":{answers}}}"#
        );
        let c = match parse(body.as_bytes()) {
            Ok(Parsed::Callout(c)) => *c,
            other => panic!("{other:?}"),
        };
        let mut facts = Facts::none(Some("u1".into()));
        facts.request = Fetched::Ok(RequestFacts {
            justification: justification.map(str::to_owned),
            answers: vec![Answer {
                question_id: Some("q-9".into()),
                question: Some("Change".into()),
                value: "CHG0000009".into(),
            }],
        });
        facts.user = Fetched::Ok(UserFacts {
            id: "u1".into(),
            mail: Some("chen@contoso.example".into()),
            user_principal_name: Some("chen@contoso.example".into()),
            ..UserFacts::default()
        });
        let s: TicketSettings = toml::from_str(&format!(
            "table = \"sc_req_item\"\nallowed_states = [\"2\", \"New\"]\n{settings}"
        ))
        .unwrap();
        let chk = check("t", s).unwrap();
        let tickets = Fixed(records);
        let ctx = CheckCtx {
            callout: &c,
            now: jiff::Timestamp::now(),
            facts: &facts,
            tickets: &tickets,
            deadline: Instant::now() + Duration::from_secs(5),
            activation: None,
        };
        chk.evaluate(&ctx).await
    }

    fn denied(f: &Finding, want: &str) {
        assert!(
            matches!(&f.verdict, Verdict::Deny { reason } if reason.contains(want)),
            "want deny {want:?}: {f:?}"
        );
    }

    #[tokio::test]
    async fn numbers_come_from_answers_in_either_casing_or_the_justification() {
        let ok = Ok(vec![rec(
            "RITM0010001",
            "2",
            "Work in Progress",
            "chen@contoso.example",
        )]);
        let camel = r#"[{"value":"RITM0010001","answeredQuestion":{"id":"q1","text":"ServiceNow ticket"}}]"#;
        let pascal = r#"[{"Value":"ritm0010001","AnsweredQuestion":{"Id":"q1","Text":"ServiceNow ticket"}}]"#;
        for answers in [camel, pascal] {
            let f = run(
                "number_from_answer = \"ServiceNow ticket\"",
                answers,
                None,
                ok.clone(),
            )
            .await;
            assert_eq!(f.verdict, Verdict::Allow, "{f:?}");
            assert!(
                f.note
                    .as_deref()
                    .is_some_and(|n| n.contains("Work in Progress"))
            );
        }
        let f = run("number_from_answer = \"q1\"", camel, None, ok.clone()).await;
        assert_eq!(f.verdict, Verdict::Allow, "by question id: {f:?}");
        let f = run(
            "",
            "[]",
            Some("Month end, see RITM0010001 please"),
            ok.clone(),
        )
        .await;
        assert_eq!(f.verdict, Verdict::Allow, "{f:?}");
        let f = run(
            "number_pattern = 'ticket #(\\d+)'",
            "[]",
            Some("ticket #RITM0010001"),
            ok.clone(),
        )
        .await;
        denied(&f, "no ServiceNow ticket number");
        // An answer held in Graph's request object (not the callout) counts too.
        let f = run(
            "number_from_answer = \"Change\"\nsearch_justification = false",
            "[]",
            None,
            Ok(vec![rec("CHG0000009", "2", "x", "chen@contoso.example")]),
        )
        .await;
        assert_eq!(f.verdict, Verdict::Allow, "{f:?}");
        let f = run("", "[]", Some("no number here"), ok).await;
        denied(&f, "no ServiceNow ticket number in the justification");
    }

    #[tokio::test]
    async fn records_that_do_not_match_are_ignored_not_trusted() {
        // The filter was ignored: ServiceNow returned other tickets only.
        let f = run(
            "",
            "[]",
            Some("RITM0010001"),
            Ok(vec![
                rec("RITM0099999", "2", "Open", "chen@contoso.example"),
                rec("INC0000001", "2", "Open", "x"),
            ]),
        )
        .await;
        denied(&f, "ticket RITM0010001 not found in sc_req_item");
        assert!(
            f.explanation
                .iter()
                .any(|l| l.contains("2 record(s) that do not match")),
            "{f:?}"
        );
        let two = Ok(vec![
            rec("RITM0010001", "2", "a", "x"),
            rec("RITM0010001", "2", "b", "x"),
        ]);
        assert!(matches!(
            run("", "[]", Some("RITM0010001"), two).await.verdict,
            Verdict::Error { .. }
        ));
    }

    #[tokio::test]
    async fn state_activity_and_opened_for_decide() {
        let closed = Ok(vec![rec(
            "RITM0010002",
            "3",
            "Closed Complete",
            "chen@contoso.example",
        )]);
        denied(
            &run("", "[]", Some("RITM0010002"), closed).await,
            "is Closed Complete (allowed: 2, New)",
        );
        let by_display = Ok(vec![rec("RITM0010002", "1", "New", "chen@contoso.example")]);
        assert_eq!(
            run("", "[]", Some("RITM0010002"), by_display).await.verdict,
            Verdict::Allow
        );
        let other = Ok(vec![rec(
            "RITM0010003",
            "2",
            "WIP",
            "alice@contoso.example",
        )]);
        denied(
            &run("opened_for_target = true", "[]", Some("RITM0010003"), other).await,
            "opened for someone else",
        );
        let mut inactive = rec("RITM0010004", "2", "WIP", "x");
        inactive["active"] = json!("false");
        denied(
            &run(
                "require_active = true",
                "[]",
                Some("RITM0010004"),
                Ok(vec![inactive]),
            )
            .await,
            "not active",
        );
        let mut no_of = rec("RITM0010005", "2", "WIP", "x");
        no_of.as_object_mut().map(|o| o.remove("opened_for.email"));
        assert!(matches!(
            run(
                "opened_for_target = true",
                "[]",
                Some("RITM0010005"),
                Ok(vec![no_of])
            )
            .await
            .verdict,
            Verdict::Error { .. }
        ));
    }

    #[tokio::test]
    async fn a_request_that_could_not_be_read_is_an_error_not_a_missing_number() {
        let body = br#"{"Stage":"assignmentRequestCreated","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r"}"#;
        let c = match parse(body) {
            Ok(Parsed::Callout(c)) => *c,
            other => panic!("{other:?}"),
        };
        let mut facts = Facts::none(None);
        facts.request = Fetched::Failed("Graph $batch: HTTP 503".into());
        let s: TicketSettings =
            toml::from_str("table = \"sc_req_item\"\nallowed_states = [\"2\"]").unwrap();
        let chk = check("t", s).unwrap();
        let tickets = Fixed(Ok(vec![]));
        let ctx = CheckCtx {
            callout: &c,
            now: jiff::Timestamp::now(),
            facts: &facts,
            tickets: &tickets,
            deadline: Instant::now() + Duration::from_secs(5),
            activation: None,
        };
        assert_eq!(
            chk.evaluate(&ctx).await.verdict,
            Verdict::error("Graph $batch: HTTP 503")
        );
    }

    #[tokio::test]
    async fn lookup_failures_and_odd_answers_are_errors() {
        let f = run(
            "",
            "[]",
            Some("RITM0010001"),
            Err(TicketError::Unavailable("HTTP 503".into())),
        )
        .await;
        assert!(
            matches!(&f.verdict, Verdict::Error { reason } if reason.contains("503")),
            "{f:?}"
        );
        let mut odd = rec("RITM0010001", "2", "x", "x");
        odd["state"] = json!([1, 2]);
        let f = run("", "[]", Some("RITM0010001"), Ok(vec![odd])).await;
        assert!(
            matches!(&f.verdict, Verdict::Error { reason } if reason.contains("does not parse")),
            "{f:?}"
        );
    }

    #[test]
    fn bad_settings_list_every_error() {
        let s: TicketSettings = toml::from_str("table = \"a b\"\nallowed_states = []\nnumber_pattern = \"(\"\nsearch_justification = false").unwrap();
        let errs = check("t", s).err().unwrap_or_default().join("\n");
        for want in [
            "table",
            "allowed_states",
            "number_pattern",
            "nowhere to find a number",
        ] {
            assert!(errs.contains(want), "{want}: {errs}");
        }
    }
}
