//! `[tickets.NAME]`: what a rule's `ticket = "NAME"` opens in ServiceNow, how its fields are
//! filled, and how its close is read. The policy renders the fields when it decides (it knows
//! the callout, the facts and the checks' explanation); the worker's bridge only sends them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::template::Template;
use super::{Action, parse_duration};

/// `[tickets.NAME]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTicket {
    table: Option<String>,
    catalog_item: Option<String>,
    requested_for: Option<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    fields: BTreeMap<String, String>,
    assignment_group: Option<String>,
    link_field: Option<String>,
    continue_states: Option<Vec<String>>,
    deny_states: Option<Vec<String>>,
    on_deleted: Option<Action>,
    reminder_before: Option<String>,
    wait: Option<bool>,
}

/// How the record is created.
#[derive(Debug, Clone)]
pub enum Create {
    /// `POST /api/now/table/{table}` with the fields.
    Table,
    /// `order_now` of a catalog item (its flows run); the item's RITM then gets the link and the
    /// fields with a `PATCH`, since `order_now` cannot set them.
    CatalogItem {
        item: String,
        requested_for: Option<Template>,
        variables: Vec<(String, Template)>,
    },
}

/// A loaded `[tickets.NAME]`.
#[derive(Debug, Clone)]
pub struct TicketSpec {
    pub name: String,
    /// The table the record lives in (`sc_req_item` for a catalog item).
    pub table: String,
    pub create: Create,
    pub fields: Vec<(String, Template)>,
    /// Where the link `accessgate:<stageInstanceId>` is stored (default `correlation_id`).
    pub link_field: String,
    /// States (stored or display values) that resume with continue.
    pub continue_states: Vec<String>,
    /// States that resume with deny where Entra accepts one (else continue, saying so).
    pub deny_states: Vec<String>,
    /// A record deleted before it closed: deny (where allowed) or continue.
    pub on_deleted: Action,
    /// A work note this long before the deadline; `None` for none.
    pub reminder_before: Option<Duration>,
    /// Entra waits for the close (`None`: at every stage that takes a resume but
    /// `assignmentRequestRemoved`, whose de-provisioning tickets do not hold anything up);
    /// `false` opens and continues at once.
    pub wait: Option<bool>,
}

/// Closed states of the out-of-box tables. The numeric values are ServiceNow's defaults as
/// community sources give them (integrations.md §1), so they are only defaults.
fn default_states(table: &str) -> (Vec<String>, Vec<String>) {
    let v = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match table {
        // Incident: 6 Resolved, 7 Closed → continue; 8 Canceled → deny.
        "incident" => (v(&["6", "7"]), v(&["8"])),
        // Task tables (sc_req_item, sc_task, custom task tables): 3 Closed Complete; 4 Closed
        // Incomplete, 7 Closed Skipped / Cancelled.
        _ => (v(&["3"]), v(&["4", "7"])),
    }
}

fn plain_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 80 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl TicketSpec {
    /// Validates `[tickets.NAME]`; every problem goes to `errors` as `(key, message)`.
    pub(super) fn build(
        name: &str,
        raw: &RawTicket,
        errors: &mut Vec<(String, String)>,
    ) -> Option<TicketSpec> {
        let at = format!("tickets.{name}");
        let before = errors.len();
        let mut err =
            |key: &str, m: String| errors.push((format!("{at}.{key}"), format!("{at}.{key}: {m}")));
        let create = match (&raw.table, &raw.catalog_item) {
            (Some(_), Some(_)) => {
                err(
                    "catalog_item",
                    "give table or catalog_item, not both (a catalog item's record is an sc_req_item)".into(),
                );
                Create::Table
            }
            (_, Some(item)) => {
                if item.len() != 32 || !item.bytes().all(|b| b.is_ascii_hexdigit()) {
                    err(
                        "catalog_item",
                        "the catalog item's sys_id: 32 hex digits".into(),
                    );
                }
                let requested_for =
                    raw.requested_for
                        .as_deref()
                        .and_then(|t| match Template::parse_ticket(t) {
                            Ok(t) => Some(t),
                            Err(e) => {
                                err("requested_for", e.to_string());
                                None
                            }
                        });
                let mut variables = Vec::new();
                for (k, t) in &raw.variables {
                    if !plain_name(k) {
                        err(
                            &format!("variables.{k}"),
                            "a variable name is letters, digits and _".into(),
                        );
                    }
                    match Template::parse_ticket(t) {
                        Ok(t) => variables.push((k.clone(), t)),
                        Err(e) => err(&format!("variables.{k}"), e.to_string()),
                    }
                }
                Create::CatalogItem {
                    item: item.clone(),
                    requested_for,
                    variables,
                }
            }
            (_, None) => {
                if raw.requested_for.is_some() || !raw.variables.is_empty() {
                    err(
                        "variables",
                        "requested_for and variables belong to a catalog_item order".into(),
                    );
                }
                Create::Table
            }
        };
        let table = match (&create, &raw.table) {
            (Create::CatalogItem { .. }, _) => "sc_req_item".to_owned(),
            (_, Some(t)) => t.clone(),
            (_, None) => "sc_req_item".to_owned(),
        };
        if !plain_name(&table) {
            err("table", "a table name is letters, digits and _".into());
        }
        let link_field = raw
            .link_field
            .clone()
            .unwrap_or_else(|| "correlation_id".into());
        if !plain_name(&link_field) {
            err("link_field", "a field name is letters, digits and _".into());
        }
        let mut fields = Vec::new();
        for (k, t) in &raw.fields {
            if !plain_name(k) {
                err(
                    &format!("fields.{k}"),
                    "a field name is letters, digits and _".into(),
                );
            } else if *k == link_field {
                err(
                    &format!("fields.{k}"),
                    format!("{k} is the link field; accessgate writes it"),
                );
            }
            match Template::parse_ticket(t) {
                Ok(t) => fields.push((k.clone(), t)),
                Err(e) => err(&format!("fields.{k}"), e.to_string()),
            }
        }
        if let Some(g) = &raw.assignment_group {
            if raw.fields.contains_key("assignment_group") {
                err(
                    "assignment_group",
                    "given here and in fields.assignment_group; keep one".into(),
                );
            }
            match Template::parse_ticket(g) {
                Ok(t) => fields.push(("assignment_group".into(), t)),
                Err(e) => err("assignment_group", e.to_string()),
            }
        }
        let (dc, dd) = default_states(&table);
        let continue_states = raw.continue_states.clone().unwrap_or(dc);
        let deny_states = raw.deny_states.clone().unwrap_or(dd);
        if continue_states.is_empty() {
            err(
                "continue_states",
                "name at least one state that means done".into(),
            );
        }
        if let Some(s) = continue_states
            .iter()
            .find(|s| deny_states.iter().any(|d| d.eq_ignore_ascii_case(s)))
        {
            err(
                "deny_states",
                format!("state {s:?} is in continue_states too"),
            );
        }
        let reminder_before = match raw.reminder_before.as_deref() {
            None => Some(Duration::from_secs(24 * 3600)),
            Some(t) => match parse_duration(t) {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => {
                    err(
                        "reminder_before",
                        format!(
                            "{t:?} is not a duration such as \"1d\" or \"12h\" (\"0s\" for none)"
                        ),
                    );
                    None
                }
            },
        };
        if errors.len() != before {
            return None;
        }
        Some(TicketSpec {
            name: name.to_owned(),
            table,
            create,
            fields,
            link_field,
            continue_states,
            deny_states,
            on_deleted: raw.on_deleted.unwrap_or(Action::Deny),
            reminder_before,
            wait: raw.wait,
        })
    }

    /// The defaults for a table, for a waiting ticket whose `[tickets.NAME]` is gone from the
    /// policy (renamed while it waited): its close is still read with the table's states.
    pub fn defaults_for(table: &str) -> TicketSpec {
        let (continue_states, deny_states) = default_states(table);
        TicketSpec {
            name: "(removed from the policy)".into(),
            table: table.to_owned(),
            create: Create::Table,
            fields: Vec::new(),
            link_field: "correlation_id".into(),
            continue_states,
            deny_states,
            on_deleted: Action::Deny,
            reminder_before: Some(Duration::from_secs(24 * 3600)),
            wait: None,
        }
    }

    /// Whether Entra is kept waiting for this ticket at `stage`.
    pub fn waits_at(&self, stage: crate::callout::Stage) -> bool {
        self.wait
            .unwrap_or(stage != crate::callout::Stage::AssignmentRequestRemoved)
    }

    /// Whether any template needs the request's justification from Graph.
    pub fn needs_request(&self) -> bool {
        let uses = |t: &Template| t.uses("justification") || t.uses("answers");
        self.fields.iter().any(|(_, t)| uses(t))
            || match &self.create {
                Create::CatalogItem {
                    requested_for,
                    variables,
                    ..
                } => {
                    requested_for.as_ref().is_some_and(uses)
                        || variables.iter().any(|(_, t)| uses(t))
                }
                Create::Table => false,
            }
    }

    /// Whether a state read from the record (stored value, display value) is in `list`.
    pub fn state_in(list: &[String], value: &str, display: Option<&str>) -> bool {
        list.iter().any(|s| {
            s.eq_ignore_ascii_case(value) || display.is_some_and(|d| s.eq_ignore_ascii_case(d))
        })
    }
}

/// A ticket the decision asks the worker to open, with its fields rendered.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketOrder {
    #[serde(rename = "ticket", serialize_with = "spec_name")]
    pub spec: Arc<TicketSpec>,
    /// Fields of the record (the link field is added by the bridge).
    pub fields: Map<String, Value>,
    /// `order_now` variables and the requested-for user, for a catalog item.
    pub variables: Map<String, Value>,
    pub requested_for: Option<String>,
}

fn spec_name<S: serde::Serializer>(spec: &Arc<TicketSpec>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&spec.name)
}

impl PartialEq for TicketOrder {
    fn eq(&self, other: &Self) -> bool {
        self.spec.name == other.spec.name
            && self.fields == other.fields
            && self.variables == other.variables
            && self.requested_for == other.requested_for
    }
}

impl Eq for TicketOrder {}

/// Field values are cut so a long justification cannot make the create fail.
const MAX_FIELD_CHARS: usize = 4000;

impl TicketOrder {
    pub(super) fn render(spec: &Arc<TicketSpec>, value: &dyn Fn(&str) -> String) -> TicketOrder {
        let render = |t: &Template| Value::String(t.render(value, MAX_FIELD_CHARS));
        let fields = spec
            .fields
            .iter()
            .map(|(k, t)| (k.clone(), render(t)))
            .collect();
        let (variables, requested_for) = match &spec.create {
            Create::CatalogItem {
                variables,
                requested_for,
                ..
            } => (
                variables
                    .iter()
                    .map(|(k, t)| (k.clone(), render(t)))
                    .collect(),
                requested_for.as_ref().map(|t| t.render(value, 200)),
            ),
            Create::Table => (Map::new(), None),
        };
        TicketOrder {
            spec: spec.clone(),
            fields,
            variables,
            requested_for,
        }
    }
}
