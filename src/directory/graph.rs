//! Directory facts from Microsoft Graph: every read a decision needs goes in one JSON `$batch`
//! (one HTTP call), then `@odata.nextLink` pages are followed within a per-decision call bound
//! (`directory.max_graph_calls_per_decision`). The calls are counted in [`Facts::graph_calls`].
//!
//! Reads and the permissions they need (README lists them):
//! - `/users/{id}?$select=…` (User.Read.All; `employeeLeaveDateTime` also needs
//!   User-LifeCycleInfo.Read.All), `/users/{id}/manager`, `/users/{id}/sponsors`;
//! - `/identityGovernance/entitlementManagement/assignments?$filter=target/objectId eq …` and
//!   `assignmentRequests?$filter=requestor/objectId eq … and state eq 'pendingApproval'`
//!   (EntitlementManagement.Read.All);
//! - `/users/{id}/transitiveMemberOf/microsoft.graph.group` (GroupMember.Read.All);
//! - `/users/{id}/appRoleAssignments` (Directory.Read.All);
//! - `assignmentRequests/{id}?$select=justification,answers` (EntitlementManagement.Read.All).

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::fixtures::{external_values, parse_graph_time, target_id};
use super::{
    Directory, FactError, Facts, Fetched, Held, HeldAppRole, Holdings, Needs, RequestFacts,
    Settings, UserFacts, WorkflowFacts,
};
use crate::callout::{Answer, Callout, Id};
use crate::graph::{BatchAnswer, BatchGet, GraphClient};

pub struct GraphDirectory {
    graph: Arc<GraphClient>,
    cfg: Settings,
}

const USER_SELECT: &str = "id,displayName,userPrincipalName,mail,userType,accountEnabled,employeeHireDate,employeeLeaveDateTime,employeeType,department,companyName";

/// Why a directory fact could not be read from Graph. Its text is what the check's error
/// verdict shows (and what [`Fetched::Failed`] keeps).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphFactError {
    /// Graph answered the read with an error status.
    #[error("{}", answer_text(what, *status, code, message))]
    Answer {
        what: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("Graph {what}: more pages than directory.max_graph_calls_per_decision ({max}) allows")]
    TooManyPages { what: String, max: u32 },
    #[error("Graph {what} (next page): {reason}")]
    NextPage { what: String, reason: String },
    #[error("Graph {0}: the answer has no value array")]
    NoValueArray(String),
    #[error("Graph {0}: the answer has no id")]
    NoId(&'static str),
    #[error("Graph user: {key} {value:?} is not a date-time")]
    BadDate { key: &'static str, value: String },
    #[error("Graph user: {key} is {value}, not a date-time")]
    NotADate { key: &'static str, value: Value },
    #[error("Graph $batch: no answer for {0}")]
    NoAnswer(&'static str),
    #[error("Graph $batch: {0}")]
    Batch(String),
    #[error("the callout names no usable target user id")]
    NoTarget,
}

/// `Graph {what}: HTTP {status} {code} {message}` with a hint for the statuses that have one.
fn answer_text(what: &str, status: u16, code: &str, message: &str) -> String {
    let hint = match status {
        403 => " (the Graph permission for this read is missing; README lists them)",
        429 => " (throttled; the decision is retried)",
        _ => "",
    };
    format!("Graph {what}: HTTP {status} {code} {message}{hint}")
        .trim_end()
        .to_owned()
}

/// The error of a batch answer (or page) that is not a 200, from Graph's `error` body.
fn inner_error(what: &str, a: &BatchAnswer) -> GraphFactError {
    GraphFactError::Answer {
        what: what.to_owned(),
        status: a.status,
        code: a.body["error"]["code"].as_str().unwrap_or("").to_owned(),
        message: a.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect(),
    }
}

impl GraphDirectory {
    pub fn new(graph: Arc<GraphClient>, cfg: Settings) -> Self {
        GraphDirectory { graph, cfg }
    }

    fn requests(&self, target: &Id, request_id: &Id, needs: Needs) -> Vec<BatchGet> {
        let mut gets = Vec::new();
        let mut select = USER_SELECT.to_owned();
        if let Some(a) = &self.cfg.external_entitlements_attribute {
            select.push(',');
            select.push_str(a);
        }
        if needs.user || (needs.holdings && self.cfg.external_entitlements_attribute.is_some()) {
            gets.push(BatchGet {
                id: "user",
                url: format!("/users/{target}?$select={select}"),
            });
        }
        if needs.user {
            gets.push(BatchGet {
                id: "manager",
                url: format!("/users/{target}/manager?$select=id"),
            });
            gets.push(BatchGet {
                id: "sponsors",
                url: format!("/users/{target}/sponsors?$select=id"),
            });
        }
        if needs.holdings {
            let em = "/identityGovernance/entitlementManagement";
            gets.push(BatchGet {
                id: "assignments",
                url: format!(
                    "{em}/assignments?$filter=target/objectId eq '{target}'&$expand=accessPackage"
                ),
            });
            gets.push(BatchGet {
                id: "pending",
                url: format!("{em}/assignmentRequests?$filter=requestor/objectId eq '{target}' and state eq 'pendingApproval'&$expand=accessPackage"),
            });
            gets.push(BatchGet {
                id: "groups",
                url: format!("/users/{target}/transitiveMemberOf/microsoft.graph.group?$select=id,displayName&$top=999"),
            });
            gets.push(BatchGet {
                id: "appRoles",
                url: format!("/users/{target}/appRoleAssignments?$select=resourceId,resourceDisplayName,appRoleId&$top=999"),
            });
        }
        if needs.request {
            gets.push(BatchGet {
                id: "request",
                url: format!("/identityGovernance/entitlementManagement/assignmentRequests/{request_id}?$select=id,justification,answers"),
            });
        }
        gets
    }

    /// A collection answer with all its pages, within the call budget.
    async fn all_pages(
        &self,
        what: &str,
        first: &BatchAnswer,
        calls: &mut u32,
        deadline: Instant,
    ) -> Result<Vec<Value>, GraphFactError> {
        if first.status != 200 {
            return Err(inner_error(what, first));
        }
        let mut items = values(what, &first.body)?;
        let mut next = first.body["@odata.nextLink"].as_str().map(str::to_owned);
        while let Some(link) = next {
            if *calls >= self.cfg.max_graph_calls_per_decision {
                return Err(GraphFactError::TooManyPages {
                    what: what.to_owned(),
                    max: self.cfg.max_graph_calls_per_decision,
                });
            }
            *calls += 1;
            let (status, body) = self.graph.get_page(&link, deadline).await.map_err(|e| {
                GraphFactError::NextPage {
                    what: what.to_owned(),
                    reason: e.to_string(),
                }
            })?;
            if status != 200 {
                return Err(inner_error(
                    what,
                    &BatchAnswer {
                        id: String::new(),
                        status,
                        body,
                    },
                ));
            }
            items.extend(values(what, &body)?);
            next = body["@odata.nextLink"].as_str().map(str::to_owned);
        }
        Ok(items)
    }
}

fn values(what: &str, body: &Value) -> Result<Vec<Value>, GraphFactError> {
    body["value"]
        .as_array()
        .cloned()
        .ok_or_else(|| GraphFactError::NoValueArray(what.to_owned()))
}

fn held(v: &Value) -> Option<Held> {
    Some(Held {
        id: v["id"].as_str()?.to_owned(),
        display_name: v["displayName"].as_str().map(str::to_owned),
    })
}

fn package_of(v: &Value) -> Option<Held> {
    held(&v["accessPackage"])
}

fn user_facts(
    a: &BatchAnswer,
    manager: Option<&BatchAnswer>,
    sponsors: Option<&BatchAnswer>,
) -> Result<UserFacts, GraphFactError> {
    if a.status != 200 {
        return Err(inner_error("user", a));
    }
    let u = &a.body;
    let s = |k: &str| u[k].as_str().map(str::to_owned);
    let date = |key: &'static str| -> Result<Option<jiff::Timestamp>, GraphFactError> {
        match &u[key] {
            Value::Null => Ok(None),
            Value::String(t) => {
                parse_graph_time(t)
                    .map(Some)
                    .ok_or_else(|| GraphFactError::BadDate {
                        key,
                        value: t.clone(),
                    })
            }
            other => Err(GraphFactError::NotADate {
                key,
                value: other.clone(),
            }),
        }
    };
    let id = s("id").ok_or(GraphFactError::NoId("user"))?;
    let manager = match manager {
        None => None,
        Some(m) if m.status == 404 => None,
        Some(m) if m.status == 200 => Some(
            m.body["id"]
                .as_str()
                .ok_or(GraphFactError::NoId("manager"))?
                .to_owned(),
        ),
        Some(m) => return Err(inner_error("manager", m)),
    };
    let sponsors = match sponsors {
        None => Vec::new(),
        Some(sp) if sp.status == 200 => values("sponsors", &sp.body)?
            .iter()
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect(),
        Some(sp) => return Err(inner_error("sponsors", sp)),
    };
    Ok(UserFacts {
        id,
        user_principal_name: s("userPrincipalName"),
        mail: s("mail"),
        display_name: s("displayName"),
        user_type: s("userType"),
        account_enabled: u["accountEnabled"].as_bool(),
        employee_hire_date: date("employeeHireDate")?,
        employee_leave_date_time: date("employeeLeaveDateTime")?,
        employee_type: s("employeeType"),
        department: s("department"),
        company_name: s("companyName"),
        manager,
        sponsors,
    })
}

#[async_trait::async_trait]
impl Directory for GraphDirectory {
    async fn workflow(&self, id: &Id, deadline: Instant) -> Result<WorkflowFacts, FactError> {
        let gets = [BatchGet {
            id: "workflow",
            url: format!(
                "/identityGovernance/lifecycleWorkflows/workflows/{id}?$select=id,displayName,category"
            ),
        }];
        let fail = |e: GraphFactError| FactError::Failed(e.to_string());
        let answers = self
            .graph
            .batch_get(&gets, deadline)
            .await
            .map_err(|e| fail(GraphFactError::Batch(e.to_string())))?;
        let a = answers
            .iter()
            .find(|a| a.id == "workflow")
            .ok_or_else(|| fail(GraphFactError::NoAnswer("workflow")))?;
        if a.status != 200 {
            return Err(fail(inner_error("workflow", a)));
        }
        let category = a.body["category"].as_str().ok_or_else(|| {
            FactError::Failed("Graph workflow: the answer has no category".into())
        })?;
        Ok(WorkflowFacts {
            id: a.body["id"].as_str().unwrap_or(id.as_str()).to_owned(),
            display_name: a.body["displayName"].as_str().map(str::to_owned),
            category: category.to_owned(),
        })
    }

    async fn facts(&self, callout: &Callout, needs: Needs, deadline: Instant) -> Facts {
        let target = target_id(callout);
        let mut facts = Facts::none(target.clone());
        if !needs.any() {
            return facts;
        }
        let fail_all = |facts: &mut Facts, why: GraphFactError| {
            let why = why.to_string();
            if needs.user {
                facts.user = Fetched::Failed(why.clone());
            }
            if needs.holdings {
                facts.holdings = Fetched::Failed(why.clone());
            }
            if needs.request {
                facts.request = Fetched::Failed(why);
            }
        };
        // Only an id that passes the one URL rule goes into the batch's paths and filters.
        let Some(t) = target.as_deref().and_then(Id::parse) else {
            fail_all(&mut facts, GraphFactError::NoTarget);
            return facts;
        };
        if needs.request && callout.task.is_some() {
            facts.request = Fetched::failed(super::NO_TASK_REQUEST);
        }
        let needs = Needs {
            request: needs.request && callout.task.is_none(),
            ..needs
        };
        let mut gets = self.requests(&t, &callout.request_id, needs);
        // A PIM verdict's SoD compares the activated role with the roles already held.
        let roles = needs.holdings && callout.stage == crate::callout::Stage::PimActivation;
        if roles {
            gets.push(BatchGet {
                id: "roles",
                url: format!("/roleManagement/directory/roleAssignments?$filter=principalId eq '{t}'&$select=roleDefinitionId"),
            });
        }
        let mut calls = 1u32;
        let answers = match self.graph.batch_get(&gets, deadline).await {
            Ok(a) => a,
            Err(e) => {
                facts.graph_calls = calls;
                fail_all(&mut facts, GraphFactError::Batch(e.to_string()));
                return facts;
            }
        };
        let find = |id: &str| answers.iter().find(|a| a.id == id);
        let missing = GraphFactError::NoAnswer;

        if needs.user {
            facts.user = match find("user") {
                None => Fetched::failed(missing("user")),
                Some(u) => match user_facts(u, find("manager"), find("sponsors")) {
                    Ok(f) => Fetched::Ok(f),
                    Err(e) => Fetched::failed(e),
                },
            };
        }
        if needs.holdings {
            let mut h = Holdings::default();
            let mut result: Result<(), GraphFactError> = Ok(());
            let role_list = [("roles", "directory role assignments")];
            for (id, what) in [
                ("assignments", "assignments"),
                ("pending", "pending requests"),
                ("groups", "transitive groups"),
                ("appRoles", "app role assignments"),
            ]
            .into_iter()
            .chain(role_list.into_iter().filter(|_| roles))
            {
                let Some(first) = find(id) else {
                    result = Err(missing(id));
                    break;
                };
                match self.all_pages(what, first, &mut calls, deadline).await {
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                    Ok(items) => match id {
                        "assignments" => {
                            h.access_packages = items
                                .iter()
                                .filter(|a| {
                                    a["state"].as_str().is_none_or(|s| {
                                        ["delivered", "delivering", "partiallyDelivered"]
                                            .iter()
                                            .any(|h| h.eq_ignore_ascii_case(s))
                                    })
                                })
                                .filter_map(package_of)
                                .collect()
                        }
                        "pending" => {
                            h.pending_access_packages = items
                                .iter()
                                .filter(|r| {
                                    !r["id"].as_str().is_some_and(|i| {
                                        i.eq_ignore_ascii_case(callout.request_id.as_str())
                                    })
                                })
                                .filter_map(package_of)
                                .collect()
                        }
                        "groups" => h.groups = items.iter().filter_map(held).collect(),
                        "roles" => {
                            h.directory_roles = items
                                .iter()
                                .filter_map(|r| r["roleDefinitionId"].as_str())
                                .map(str::to_ascii_lowercase)
                                .collect()
                        }
                        _ => {
                            h.app_roles = items
                                .iter()
                                .filter_map(|r| {
                                    Some(HeldAppRole {
                                        resource_id: r["resourceId"].as_str()?.to_owned(),
                                        resource_display_name: r["resourceDisplayName"]
                                            .as_str()
                                            .map(str::to_owned),
                                        app_role_id: r["appRoleId"].as_str()?.to_owned(),
                                    })
                                })
                                .collect()
                        }
                    },
                }
            }
            if result.is_ok()
                && let Some(attr) = &self.cfg.external_entitlements_attribute
            {
                match find("user") {
                    Some(u) if u.status == 200 => {
                        h.external_entitlements = external_values(u.body.get(attr));
                    }
                    Some(u) => result = Err(inner_error("user", u)),
                    None => result = Err(missing("user")),
                }
            }
            facts.holdings = match result {
                Ok(()) => Fetched::Ok(h),
                Err(e) => Fetched::failed(e),
            };
        }
        if needs.request {
            facts.request = match find("request") {
                None => Fetched::failed(missing("request")),
                Some(r) if r.status != 200 => Fetched::failed(inner_error("request", r)),
                Some(r) => Fetched::Ok(RequestFacts {
                    justification: r.body["justification"].as_str().map(str::to_owned),
                    answers: r.body["answers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Answer::from_json)
                        .collect(),
                }),
            };
        }
        facts.graph_calls = calls;
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_error_texts_name_the_read_and_hint() {
        let a = BatchAnswer {
            id: "user".into(),
            status: 403,
            body: serde_json::json!({"error": {"code": "Authorization_RequestDenied", "message": "Insufficient privileges"}}),
        };
        assert_eq!(
            inner_error("user", &a).to_string(),
            "Graph user: HTTP 403 Authorization_RequestDenied Insufficient privileges (the Graph permission for this read is missing; README lists them)"
        );
        let bare = BatchAnswer {
            id: String::new(),
            status: 500,
            body: Value::Null,
        };
        assert_eq!(
            inner_error("groups", &bare).to_string(),
            "Graph groups: HTTP 500"
        );
        assert_eq!(
            GraphFactError::NoAnswer("request").to_string(),
            "Graph $batch: no answer for request"
        );
    }

    #[test]
    fn ids_that_could_escape_a_url_are_refused() {
        let safe_id = |s: &str| Id::parse(s).is_some();
        assert!(safe_id("11111111-0000-0000-0000-000000000001"));
        assert!(safe_id("alice@contoso.example"));
        for bad in ["", "a'b", "a/b", "a b", "a?x=1", "a%2f", ".", "..", "a#b"] {
            assert!(!safe_id(bad), "{bad}");
        }
    }
}
