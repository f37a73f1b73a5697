//! Checks: the questions a policy asks about a callout (separation of duties, HR status, a
//! ticket). Each check is a [`Check`]: it says which directory facts it needs ([`Needs`]), and
//! turns a [`CheckCtx`] into a [`Finding`] (a verdict plus the reasoning, line by line).
//!
//! Checks never call Graph themselves: the engine fetches every fact the selected checks need in
//! one batch before they run ([`crate::directory`]), so a decision's Graph calls are counted and
//! bounded in one place. Ticket lookups go through [`crate::tickets::TicketSystem`].

use std::time::Instant;

use serde::Serialize;

use crate::callout::Callout;
use crate::directory::{Facts, Needs};
use crate::tickets::TicketSystem;

pub mod hr;
pub mod sod;
pub mod ticket;

/// What one check concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny {
        reason: String,
    },
    /// The check could not decide (missing data, a system that failed or answered nonsense, a
    /// timeout). The policy's `on_error` decides what an error means.
    Error {
        reason: String,
    },
}

impl Verdict {
    pub fn deny(reason: impl Into<String>) -> Verdict {
        Verdict::Deny {
            reason: reason.into(),
        }
    }
    pub fn error(reason: impl Into<String>) -> Verdict {
        Verdict::Error {
            reason: reason.into(),
        }
    }
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::Error { .. } => "error",
        }
    }
    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny { reason } | Verdict::Error { reason } => Some(reason),
        }
    }
}

/// A verdict with the reasoning behind it: one line per fact considered, in order. `explain`
/// prints these; the worker logs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub explanation: Vec<String>,
    /// A short approver-facing remark on an allow (e.g. the SoD exception that turned a deny
    /// into an allow); the policy's `{notes}` placeholder shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Finding {
    pub fn new(verdict: Verdict, explanation: Vec<String>) -> Finding {
        Finding {
            verdict,
            explanation,
            note: None,
        }
    }

    /// The same finding with an approver-facing remark.
    pub fn with_note(mut self, note: impl Into<String>) -> Finding {
        self.note = Some(note.into());
        self
    }
}

/// Everything a check may look at. `now` is injected so that `policy test` and `explain` are
/// reproducible.
pub struct CheckCtx<'a> {
    pub callout: &'a Callout,
    pub now: jiff::Timestamp,
    pub facts: &'a Facts,
    pub tickets: &'a dyn TicketSystem,
    /// No outbound call may start after this (the decision's budget).
    pub deadline: Instant,
    /// A PIM verdict: the activation the callout was built from (what is being activated).
    pub activation: Option<&'a crate::activation::Activation>,
}

/// One configured check (a `[checks.NAME]` of the policy).
#[async_trait::async_trait]
pub trait Check: Send + Sync + std::fmt::Debug {
    /// The check's type as written in the policy (`sod`, `hr`, `servicenow_ticket`).
    fn kind(&self) -> &'static str;
    /// The directory facts this check reads.
    fn needs(&self) -> Needs;
    async fn evaluate(&self, ctx: &CheckCtx<'_>) -> Finding;
}
