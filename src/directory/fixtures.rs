//! A world file (docs/world-format.md) as a [`Directory`] and a [`TicketSystem`]: what
//! `accessgate explain --fixtures DIR` and `accessgate policy test` decide against, offline.
//!
//! It answers what Graph and ServiceNow would: transitive groups through nesting, held means a
//! delivered (or delivering) assignment, pending means a request in `pendingApproval` other than
//! the one being decided. The emulator loads the same file and serves it over HTTP, which is how
//! the two are held to each other.

use std::path::Path;
use std::time::Instant;

pub use accessgate_world::{
    WORLD_FILE, WorldAnswer, WorldAppRole, WorldAssignment, WorldError, WorldGroup, WorldPackage,
    WorldRequest, WorldServiceNow, WorldUser,
};
use serde_json::{Map, Value};

use super::{
    Answer, Directory, FactError, Facts, Fetched, Held, HeldAppRole, Holdings, Needs, RequestFacts,
    UserFacts, WorkflowFacts,
};
use crate::callout::{Callout, Id};
use crate::tickets::{TicketError, TicketRecord, TicketSystem};

/// Why a fact cannot be read from the world: what Graph would have answered instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FixtureError {
    #[error("user {0} does not exist (Graph would answer 404)")]
    NoSuchUser(String),
    #[error("request {0} does not exist (Graph would answer 404)")]
    NoSuchRequest(String),
    #[error("user {user}: {key} {value:?} is not a date-time")]
    BadDate {
        user: String,
        key: &'static str,
        value: String,
    },
    #[error("user {user}: {key} is {value}, not a date-time")]
    NotADate {
        user: String,
        key: &'static str,
        value: Value,
    },
    #[error("the callout names no target user")]
    NoTarget,
}

/// A world file (docs/world-format.md), the same types the emulator serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct World(pub accessgate_world::World);

impl std::ops::Deref for World {
    type Target = accessgate_world::World;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for World {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<World, D::Error> {
        accessgate_world::World::deserialize(d).map(World)
    }
}

fn held_of(id: &str, p: Option<&WorldPackage>) -> Held {
    Held {
        id: id.to_owned(),
        display_name: p.and_then(|p| p.display_name.clone()),
    }
}

impl World {
    /// Reads and validates `DIR/world.json` (or the file itself when `path` is a file).
    pub fn load(path: &Path) -> Result<World, WorldError> {
        accessgate_world::World::load(path).map(World)
    }

    fn find_user(&self, id: &str) -> Result<&WorldUser, FixtureError> {
        self.user(id)
            .ok_or_else(|| FixtureError::NoSuchUser(id.to_owned()))
    }

    /// A user's facts as Graph would give them.
    pub fn user_facts(&self, id: &str) -> Result<UserFacts, FixtureError> {
        let u = self.find_user(id)?;
        let s = |k: &str| u.str(k).map(str::to_owned);
        let date = |key: &'static str| -> Result<Option<jiff::Timestamp>, FixtureError> {
            match u.properties.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(t)) => {
                    parse_graph_time(t)
                        .map(Some)
                        .ok_or_else(|| FixtureError::BadDate {
                            user: id.to_owned(),
                            key,
                            value: t.clone(),
                        })
                }
                Some(other) => Err(FixtureError::NotADate {
                    user: id.to_owned(),
                    key,
                    value: other.clone(),
                }),
            }
        };
        Ok(UserFacts {
            id: u.id.clone(),
            user_principal_name: s("userPrincipalName"),
            mail: s("mail"),
            display_name: s("displayName"),
            user_type: s("userType"),
            account_enabled: u.properties.get("accountEnabled").and_then(Value::as_bool),
            employee_hire_date: date("employeeHireDate")?,
            employee_leave_date_time: date("employeeLeaveDateTime")?,
            employee_type: s("employeeType"),
            department: s("department"),
            company_name: s("companyName"),
            manager: u.manager.clone(),
            sponsors: u.sponsors.clone(),
        })
    }

    /// A user's holdings; `exclude_request` is the request being decided.
    pub fn holdings(
        &self,
        id: &str,
        exclude_request: &str,
        external_attribute: Option<&str>,
    ) -> Result<Holdings, FixtureError> {
        let u = self.find_user(id)?;
        let uid = u.id.as_str();
        let access_packages = self
            .assignments
            .iter()
            .filter(|a| a.target_id.eq_ignore_ascii_case(uid))
            .filter(|a| a.is_held())
            .map(|a| held_of(&a.access_package_id, self.package(&a.access_package_id)))
            .collect();
        // Graph's documented list filter is on the requestor, so that is what counts here too.
        let pending_access_packages = self
            .requests
            .iter()
            .filter(|r| r.requestor().eq_ignore_ascii_case(uid))
            .filter(|r| r.state.as_deref() == Some(accessgate_world::PENDING_STATE))
            .filter(|r| !r.id.eq_ignore_ascii_case(exclude_request))
            .map(|r| held_of(&r.access_package_id, self.package(&r.access_package_id)))
            .collect();
        let external_entitlements = match external_attribute {
            None => Vec::new(),
            Some(attr) => external_values(u.properties.get(attr)),
        };
        Ok(Holdings {
            directory_roles: u.directory_roles.clone(),
            access_packages,
            pending_access_packages,
            groups: self
                .transitive_groups(uid)
                .into_iter()
                .map(|g| Held {
                    id: g.id.clone(),
                    display_name: g.display_name.clone(),
                })
                .collect(),
            app_roles: u
                .app_role_assignments
                .iter()
                .map(|a| HeldAppRole {
                    resource_id: a.resource_id.clone(),
                    resource_display_name: a.resource_display_name.clone(),
                    app_role_id: a.app_role_id.clone(),
                })
                .collect(),
            external_entitlements,
        })
    }

    pub fn request_facts(&self, id: &str) -> Result<RequestFacts, FixtureError> {
        let r = self
            .request(id)
            .ok_or_else(|| FixtureError::NoSuchRequest(id.to_owned()))?;
        Ok(RequestFacts {
            justification: r.justification.clone(),
            answers: r
                .answers
                .iter()
                .map(|a| Answer {
                    question_id: a.question_id.clone(),
                    question: a.question.clone(),
                    value: a.value.clone(),
                })
                .collect(),
        })
    }
}

/// A multi-valued attribute (a JSON array of strings) or a single comma-separated string.
pub fn external_values(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(s)) => s
            .split([',', ';'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Graph's `DateTimeOffset` ("2024-02-01T00:00:00Z"), also accepting a bare date (some HR
/// connectors write one) as midnight UTC.
pub fn parse_graph_time(t: &str) -> Option<jiff::Timestamp> {
    t.parse::<jiff::Timestamp>().ok().or_else(|| {
        t.parse::<jiff::civil::Date>()
            .ok()
            .and_then(|d| d.to_zoned_datetime(jiff::tz::TimeZone::UTC).ok())
            .map(|z| z.timestamp())
    })
}

fn fetched<T>(r: Result<T, FixtureError>) -> Fetched<T> {
    r.map_or_else(Fetched::failed, Fetched::Ok)
}

/// The world as a directory.
pub struct FixtureDirectory {
    pub world: World,
    pub external_attribute: Option<String>,
}

/// The target's object id from a callout (`ObjectId`, else `Id`).
pub fn target_id(c: &Callout) -> Option<String> {
    c.target.object_id.clone().or_else(|| c.target.id.clone())
}

#[async_trait::async_trait]
impl Directory for FixtureDirectory {
    async fn facts(&self, callout: &Callout, needs: Needs, _deadline: Instant) -> Facts {
        let target = target_id(callout);
        let mut facts = Facts::none(target.clone());
        let no_target = || FixtureError::NoTarget;
        if needs.user {
            facts.user = fetched(
                target
                    .as_deref()
                    .ok_or_else(no_target)
                    .and_then(|t| self.world.user_facts(t)),
            );
        }
        if needs.holdings {
            facts.holdings = fetched(target.as_deref().ok_or_else(no_target).and_then(|t| {
                self.world.holdings(
                    t,
                    callout.request_id.as_str(),
                    self.external_attribute.as_deref(),
                )
            }));
        }
        if needs.request {
            facts.request = if callout.task.is_some() {
                Fetched::failed(super::NO_TASK_REQUEST)
            } else {
                fetched(self.world.request_facts(callout.request_id.as_str()))
            };
        }
        facts
    }

    async fn workflow(&self, id: &Id, _deadline: Instant) -> Result<WorkflowFacts, FactError> {
        let w = self.world.0.workflow(id.as_str()).ok_or_else(|| {
            FactError::Failed(format!(
                "workflow {id} does not exist (Graph would answer 404)"
            ))
        })?;
        Ok(WorkflowFacts {
            id: w.id.clone(),
            display_name: w.display_name.clone(),
            category: w.category.clone(),
        })
    }
}

#[async_trait::async_trait]
impl TicketSystem for World {
    async fn find(
        &self,
        table: &str,
        number_field: &str,
        number: &str,
        fields: &[String],
        _deadline: Instant,
    ) -> Result<Vec<TicketRecord>, TicketError> {
        let rows = self.servicenow.tables.get(table).ok_or_else(|| {
            TicketError::Unavailable(format!(
                "Invalid table {table} (ServiceNow would answer 400)"
            ))
        })?;
        Ok(rows
            .iter()
            .filter(|r| {
                r.get(number_field)
                    .and_then(stored)
                    .is_some_and(|v| v.eq_ignore_ascii_case(number))
            })
            .map(|r| TicketRecord {
                fields: self.project(r, number_field, fields),
            })
            .collect())
    }
}

/// The stored value of a field: a string, or the `value` of a `{value, display_value}` object.
fn stored(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("value").and_then(Value::as_str),
        _ => None,
    }
}

impl World {
    /// The record's fields as the Table API returns them with `sysparm_display_value=all`:
    /// `sys_id`, the number field and each requested field, dot-walking references.
    fn project(
        &self,
        row: &Map<String, Value>,
        number_field: &str,
        fields: &[String],
    ) -> Map<String, Value> {
        let mut out = Map::new();
        let names = ["sys_id", number_field]
            .into_iter()
            .map(str::to_owned)
            .chain(fields.iter().cloned());
        for name in names {
            if let Some(v) = self.walk(row, &name) {
                let v = match v {
                    Value::Object(_) => v.clone(),
                    other => serde_json::json!({ "value": other, "display_value": other }),
                };
                out.insert(name, v);
            }
        }
        out
    }

    fn walk<'a>(&'a self, row: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
        let mut parts = path.split('.');
        let mut v = row.get(parts.next()?)?;
        for part in parts {
            let id = stored(v)?;
            let (_, target) = self.servicenow.by_sys_id(id)?;
            v = target.get(part)?;
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const WORLD: &str = r#"{
      "users": [
        {"id": "u1", "userPrincipalName": "alice@contoso.example", "accountEnabled": true,
         "employeeHireDate": "2024-02-01", "manager": "u2", "ext_ents": ["SAP:FK01"]},
        {"id": "u2", "userPrincipalName": "bob@contoso.example"}
      ],
      "groups": [
        {"id": "g1", "displayName": "AP Clerks", "members": ["u1"]},
        {"id": "g2", "displayName": "Finance Ops", "members": ["g1", "g3"]},
        {"id": "g3", "displayName": "Loop", "members": ["g2"]}
      ],
      "accessPackages": [{"id": "p1", "displayName": "Vendor master"}, {"id": "p2", "displayName": "Payments"}],
      "assignments": [{"accessPackageId": "p1", "targetId": "u1"}, {"accessPackageId": "p2", "targetId": "u1", "state": "expired"}],
      "requests": [
        {"id": "r1", "accessPackageId": "p2", "targetId": "u1", "state": "pendingApproval", "justification": "see RITM0010001"},
        {"id": "r2", "accessPackageId": "p2", "targetId": "u1", "state": "pendingApproval"}
      ],
      "servicenow": {"tables": {
        "sys_user": [{"sys_id": "s1", "email": "alice@contoso.example"}],
        "sc_req_item": [{"sys_id": "t1", "number": "RITM0010001", "state": {"value": "2", "display_value": "Work in Progress"}, "opened_for": "s1"}]
      }}
    }"#;

    fn world() -> World {
        serde_json::from_str(WORLD).unwrap()
    }

    #[test]
    fn holdings_follow_nesting_states_and_pending() {
        let h = world()
            .holdings("alice@contoso.example", "r1", Some("ext_ents"))
            .unwrap();
        assert_eq!(
            h.access_packages.len(),
            1,
            "the expired assignment is not held"
        );
        assert_eq!(
            h.access_packages[0].display_name.as_deref(),
            Some("Vendor master")
        );
        let groups: BTreeSet<_> = h.groups.iter().map(|g| g.id.as_str()).collect();
        assert_eq!(groups, BTreeSet::from(["g1", "g2", "g3"]));
        assert_eq!(
            h.pending_access_packages.len(),
            1,
            "r1 is the request itself"
        );
        assert_eq!(h.external_entitlements, vec!["SAP:FK01"]);
    }

    #[test]
    fn user_facts_parse_dates_and_manager() {
        let u = world().user_facts("u1").unwrap();
        assert_eq!(u.manager.as_deref(), Some("u2"));
        assert_eq!(
            u.employee_hire_date.map(|t| t.to_string()),
            Some("2024-02-01T00:00:00Z".into())
        );
        assert_eq!(
            world().user_facts("nobody").err(),
            Some(FixtureError::NoSuchUser("nobody".into()))
        );
        assert_eq!(
            FixtureError::NoSuchUser("nobody".into()).to_string(),
            "user nobody does not exist (Graph would answer 404)"
        );
        assert_eq!(
            world().request_facts("r9").err().map(|e| e.to_string()),
            Some("request r9 does not exist (Graph would answer 404)".into())
        );
    }

    #[tokio::test]
    async fn tickets_dot_walk_references() {
        let w = world();
        let recs = w
            .find(
                "sc_req_item",
                "number",
                "ritm0010001",
                &["state".into(), "opened_for.email".into()],
                Instant::now(),
            )
            .await
            .unwrap();
        assert_eq!(recs.len(), 1);
        let email = recs[0].field("opened_for.email").map(|f| f.value);
        assert_eq!(email.as_deref(), Some("alice@contoso.example"));
        assert!(
            recs[0]
                .field("state")
                .is_some_and(|s| s.matches("Work in progress"))
        );
        assert!(
            w.find("nope", "number", "x", &[], Instant::now())
                .await
                .is_err()
        );
    }
}
