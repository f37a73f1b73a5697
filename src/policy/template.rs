//! Detail templates: the text approvers see in `customExtensionStageInstanceDetail`, with
//! `{name}` placeholders. Parsed at load, so an unknown placeholder is a load error rather than a
//! literal `{typo}` in front of an approver. (Hand-written: a dozen lines of substitution do not
//! justify a template engine and its syntax in a security-relevant text.)

use std::fmt;

/// Every placeholder a template may use, with what it becomes.
pub const PLACEHOLDERS: [(&str, &str); 15] = [
    (
        "package",
        "the access package's display name (or id); for a Lifecycle Workflows task, its workflow's",
    ),
    ("catalog", "the catalog's display name (or id)"),
    ("stage", "the callout stage, e.g. assignmentRequestCreated"),
    ("target", "the target user's display name (or object id)"),
    ("rule", "the policy rule that applied"),
    (
        "reasons",
        "the deny reasons of the checks, joined with \"; \"",
    ),
    (
        "errors",
        "the error reasons of the checks, joined with \"; \"",
    ),
    (
        "notes",
        "remarks of allowing checks (e.g. an SoD exception that applied)",
    ),
    (
        "checks",
        "every check's outcome, e.g. \"sod: deny, hr: allow\"",
    ),
    ("outcome", "what accessgate sends: continue or deny"),
    (
        "would",
        "what enforce mode would have sent (for audit and notification texts)",
    ),
    (
        "approval",
        "at dynamic approval: the [approvals.NAME] sent (empty elsewhere)",
    ),
    (
        "approvers",
        "at dynamic approval: its primary approvers, e.g. \"manager, group:<id>\"",
    ),
    (
        "workflow",
        "for a Lifecycle Workflows task: the workflow's display name (or id); empty elsewhere",
    ),
    (
        "task",
        "for a Lifecycle Workflows task: the task's display name (or id); empty elsewhere",
    ),
];

/// Further placeholders of ticket field templates (`[tickets.NAME]`), which describe the
/// request to the people who work the ticket.
pub const TICKET_PLACEHOLDERS: [(&str, &str); 11] = [
    ("requestor", "the requestor's display name (or object id)"),
    ("requestor_id", "the requestor's object id"),
    ("target_id", "the target user's object id"),
    (
        "upn",
        "for a Lifecycle Workflows task: the subject's user principal name",
    ),
    (
        "manager_id",
        "for a Lifecycle Workflows task: the subject's manager's object id",
    ),
    ("request_id", "the assignment request's id"),
    (
        "stage_instance_id",
        "the callout's customExtensionStageInstanceId",
    ),
    (
        "link",
        "the value that links the ticket to Entra: accessgate:<stage instance id>",
    ),
    (
        "justification",
        "the requestor's justification (read from Graph)",
    ),
    (
        "answers",
        "the requestor's answers, \"question: answer; ...\"",
    ),
    (
        "explanation",
        "the checks' explanation: the detail text of the decision",
    ),
];

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{name` without its `}` (`name` is what followed the brace).
    #[error("unclosed {{{0}")]
    Unclosed(String),
    #[error("unknown placeholder {{{0}}} (known: {known})", known = known_names())]
    Unknown(String),
    #[error("unknown placeholder {{{0}}} (known: {known})", known = ticket_names())]
    UnknownInTicket(String),
    #[error("a lone }} (write }}}} for a literal brace)")]
    LoneBrace,
}

fn ticket_names() -> String {
    PLACEHOLDERS
        .iter()
        .chain(TICKET_PLACEHOLDERS.iter())
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn known_names() -> String {
    PLACEHOLDERS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(&'static str),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Template {
    /// Parses `{name}` placeholders; `{{` and `}}` are literal braces.
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        Self::parse_in(source, false)
    }

    /// A ticket field template: the detail placeholders and [`TICKET_PLACEHOLDERS`].
    pub fn parse_ticket(source: &str) -> Result<Template, TemplateError> {
        Self::parse_in(source, true)
    }

    /// Whether the template uses placeholder `name`.
    pub fn uses(&self, name: &str) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Var(v) if *v == name))
    }

    fn parse_in(source: &str, ticket: bool) -> Result<Template, TemplateError> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(TemplateError::Unclosed(name)),
                        }
                    }
                    let extra: &[(&'static str, &str)] =
                        if ticket { &TICKET_PLACEHOLDERS } else { &[] };
                    let known = PLACEHOLDERS
                        .iter()
                        .chain(extra.iter())
                        .find(|(n, _)| *n == name.trim())
                        .map(|(n, _)| *n)
                        .ok_or_else(|| {
                            if ticket {
                                TemplateError::UnknownInTicket(name.clone())
                            } else {
                                TemplateError::Unknown(name.clone())
                            }
                        })?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Var(known));
                }
                '}' => return Err(TemplateError::LoneBrace),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template {
            source: source.to_owned(),
            pieces,
        })
    }

    /// Characters of literal text (what the template costs before any value is filled in).
    pub fn literal_len(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.chars().count(),
                Piece::Var(_) => 0,
            })
            .sum()
    }

    /// Fills the placeholders and cuts the result to `max` characters (ending in "…" when cut).
    pub fn render(&self, value: impl Fn(&str) -> String, max: usize) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => out.push_str(&value(v)),
            }
        }
        // An empty placeholder at either end leaves a stray space.
        cut(out.trim(), max)
    }
}

/// `s` cut to `max` characters, with "…" as the last one when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_fill_and_braces_escape() {
        let t = Template::parse("Denied {package}: {reasons} {{literal}}").unwrap();
        let s = t.render(|v| format!("<{v}>"), 1000);
        assert_eq!(s, "Denied <package>: <reasons> {literal}");
        assert_eq!(t.literal_len(), "Denied :  {literal}".len());
    }

    #[test]
    fn unknown_and_broken_placeholders_are_errors() {
        let text = |s: &str| {
            Template::parse(s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(text("{pakage}").contains("unknown placeholder {pakage} (known: package, catalog"));
        assert_eq!(text("{reasons"), "unclosed {reasons");
        assert_eq!(text("a } b"), "a lone } (write }} for a literal brace)");
    }

    #[test]
    fn long_results_are_cut_with_an_ellipsis() {
        let t = Template::parse("{reasons}").unwrap();
        let s = t.render(|_| "x".repeat(50), 10);
        assert_eq!(s.chars().count(), 10);
        assert!(s.ends_with('…'));
    }
}
