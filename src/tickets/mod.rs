//! Ticket systems as checks see them: find a record by number. [`servicenow::ServiceNow`] talks
//! to the ServiceNow Table API; [`crate::directory::fixtures`] serves records from a world file.

use std::time::Instant;

use serde_json::{Map, Value};

pub mod servicenow;

/// Why a lookup failed. The ticket check turns it into an error verdict with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("no ticket system is configured ([servicenow] in the configuration)")]
    NotConfigured,
    #[error("the ticket system could not be reached: {0}")]
    Unavailable(String),
    /// 429 or 503 with `Retry-After`: the system asked us to wait this long.
    #[error("the ticket system is throttling: {0}")]
    Throttled(String, std::time::Duration),
    /// The system answered, but refused this request (a missing table, a field it rejects):
    /// sending it again will not help.
    #[error("the ticket system refused the request: {0}")]
    Refused(String),
    #[error("the ticket system refused accessgate's credentials: {0}")]
    Unauthorized(String),
    #[error("the ticket system's answer does not parse: {0}")]
    Malformed(String),
    #[error("no ticket-system credentials: {0}")]
    Credential(String),
    #[error("the decision's deadline passed before the ticket system answered")]
    DeadlinePassed,
}

impl TicketError {
    /// How long the ticket system asked us to wait, if it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            TicketError::Throttled(_, d) => Some(*d),
            _ => None,
        }
    }

    /// Whether sending the same request again cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            TicketError::NotConfigured | TicketError::Refused(_) | TicketError::Malformed(_)
        )
    }
}

/// A record as the ticket system returned it. Fields may be plain strings or, with
/// `sysparm_display_value=all`, `{ "value", "display_value" }` objects; [`TicketRecord::field`]
/// reads both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketRecord {
    pub fields: Map<String, Value>,
}

/// One field of a record: its stored value and, when the system sent one, its display value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValue {
    pub value: String,
    pub display: Option<String>,
}

impl FieldValue {
    /// Equal to `want` as stored value or display value (case-insensitive: states and numbers
    /// are compared as people type them).
    pub fn matches(&self, want: &str) -> bool {
        self.value.eq_ignore_ascii_case(want)
            || self
                .display
                .as_deref()
                .is_some_and(|d| d.eq_ignore_ascii_case(want))
    }
}

impl TicketRecord {
    /// A field by name, including dot-walked names such as `opened_for.email` (the Table API
    /// returns those as flat keys).
    pub fn field(&self, name: &str) -> Option<FieldValue> {
        let v = self.fields.get(name)?;
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
        match v {
            Value::Object(o) => Some(FieldValue {
                value: o.get("value").and_then(text).unwrap_or_default(),
                display: o.get("display_value").and_then(text),
            }),
            other => Some(FieldValue {
                value: text(other)?,
                display: None,
            }),
        }
    }
}

/// Finds tickets by number.
#[async_trait::async_trait]
pub trait TicketSystem: Send + Sync {
    /// Records of `table` that the system returns for `number_field = number`, as returned: the
    /// caller re-checks each (the Table API ignores invalid parts of a query, anchors.md §5).
    /// `fields` names the fields to return (dot-walked names allowed).
    async fn find(
        &self,
        table: &str,
        number_field: &str,
        number: &str,
        fields: &[String],
        deadline: Instant,
    ) -> Result<Vec<TicketRecord>, TicketError>;
}

/// The ticket system when none is configured: every lookup errors with [`TicketError::NotConfigured`].
pub struct NoTickets;

#[async_trait::async_trait]
impl TicketSystem for NoTickets {
    async fn find(
        &self,
        _table: &str,
        _number_field: &str,
        _number: &str,
        _fields: &[String],
        _deadline: Instant,
    ) -> Result<Vec<TicketRecord>, TicketError> {
        Err(TicketError::NotConfigured)
    }
}
