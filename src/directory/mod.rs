//! The directory as checks see it: facts about the callout's target user, fetched once per
//! decision. [`Directory`] has two implementations: [`graph::GraphDirectory`] (one Graph
//! `$batch`, bounded) and [`fixtures::FixtureDirectory`] (a world file, for `explain`,
//! `policy test` and tests).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::callout::{Callout, Id};

pub mod fixtures;
pub mod graph;
pub mod settings;

pub use settings::Settings;

/// Which facts a check reads. The engine fetches the union of its checks' needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The target's HR attributes, manager and sponsors.
    pub user: bool,
    /// The target's access package assignments, pending requests, transitive groups, app role
    /// assignments and external entitlements.
    pub holdings: bool,
    /// The request's justification and answers (from the request object in Graph).
    pub request: bool,
}

impl Needs {
    pub fn union(self, other: Needs) -> Needs {
        Needs {
            user: self.user || other.user,
            holdings: self.holdings || other.holdings,
            request: self.request || other.request,
        }
    }
    pub fn any(self) -> bool {
        self.user || self.holdings || self.request
    }
}

/// A fact as fetched: present, failed (with the reason), or not asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "value", rename_all = "camelCase")]
pub enum Fetched<T> {
    Ok(T),
    Failed(String),
    NotFetched,
}

impl<T> Fetched<T> {
    /// A failed fact, keeping the error's text (what an error verdict shows).
    pub fn failed(why: impl std::fmt::Display) -> Fetched<T> {
        Fetched::Failed(why.to_string())
    }

    /// The fact, or why it is not there (for a check's error verdict).
    pub fn get(&self) -> Result<&T, FactError> {
        match self {
            Fetched::Ok(t) => Ok(t),
            Fetched::Failed(why) => Err(FactError::Failed(why.clone())),
            Fetched::NotFetched => Err(FactError::NotFetched),
        }
    }
}

/// Why a check has no fact to read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactError {
    /// The read failed; the text says why (Graph's answer, a missing user…).
    #[error("{0}")]
    Failed(String),
    #[error("not fetched (the check did not declare it needs it)")]
    NotFetched,
}

/// Verdicts carry text: a fact's error becomes its message.
impl From<FactError> for String {
    fn from(e: FactError) -> String {
        e.to_string()
    }
}

/// An object known by id and display name (access package, group).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Held {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// One app role assignment of the user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldAppRole {
    /// The resource service principal's object id.
    pub resource_id: String,
    #[serde(default)]
    pub resource_display_name: Option<String>,
    pub app_role_id: String,
}

/// The target user's HR-relevant attributes. `None` means Graph returned no value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserFacts {
    pub id: String,
    pub user_principal_name: Option<String>,
    pub mail: Option<String>,
    pub display_name: Option<String>,
    /// `Member` or `Guest`.
    pub user_type: Option<String>,
    pub account_enabled: Option<bool>,
    pub employee_hire_date: Option<jiff::Timestamp>,
    pub employee_leave_date_time: Option<jiff::Timestamp>,
    pub employee_type: Option<String>,
    pub department: Option<String>,
    pub company_name: Option<String>,
    /// The manager's object id; `None` when the user has no manager.
    pub manager: Option<String>,
    /// Sponsors' object ids.
    pub sponsors: Vec<String>,
}

/// What the target holds or is about to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Holdings {
    /// Access packages with a delivered (or delivering) assignment.
    pub access_packages: Vec<Held>,
    /// Access packages with a request pending approval, other than the request being decided.
    pub pending_access_packages: Vec<Held>,
    /// Groups the user is a member of, directly or through nested groups.
    pub groups: Vec<Held>,
    pub app_roles: Vec<HeldAppRole>,
    /// Entitlements in other systems, from the configured user attribute
    /// (`directory.external_entitlements_attribute`).
    pub external_entitlements: Vec<String>,
    /// Directory roles the user holds (active role assignments' role definition ids), read
    /// for PIM verdicts only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directory_roles: Vec<String>,
}

/// One answer the requestor gave (parsed where callouts are, for both sources).
pub use crate::callout::Answer;

/// The request being decided, as Graph holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestFacts {
    pub justification: Option<String>,
    pub answers: Vec<Answer>,
}

/// Everything fetched for one decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    /// The target's object id, from the callout.
    pub target_id: Option<String>,
    pub user: Fetched<UserFacts>,
    pub holdings: Fetched<Holdings>,
    pub request: Fetched<RequestFacts>,
    /// Graph HTTP calls made to fetch these facts (a `$batch` counts once, each page once).
    pub graph_calls: u32,
}

impl Facts {
    pub fn none(target_id: Option<String>) -> Facts {
        Facts {
            target_id,
            user: Fetched::NotFetched,
            holdings: Fetched::NotFetched,
            request: Fetched::NotFetched,
            graph_calls: 0,
        }
    }
}

/// Reads facts about a callout's target.
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    /// Fetches what `needs` asks for, never starting a call after `deadline`. Failures are
    /// per fact ([`Fetched::Failed`]), so one failed read errors only the checks that need it.
    async fn facts(&self, callout: &Callout, needs: Needs, deadline: Instant) -> Facts;

    /// A Lifecycle Workflows workflow's category (`joiner`, `mover`, `leaver`), for rules keyed
    /// by category: read from the directory, never from the callout.
    async fn workflow(&self, id: &Id, deadline: Instant) -> Result<WorkflowFacts, FactError>;
}

/// Why a task's callout has no request facts.
pub const NO_TASK_REQUEST: &str =
    "a Lifecycle Workflows task has no access package request (no justification or answers)";

/// A Lifecycle Workflows workflow as the directory knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowFacts {
    pub id: String,
    pub display_name: Option<String>,
    /// `lifecycleWorkflowCategory`, as Graph wrote it.
    pub category: String,
}
