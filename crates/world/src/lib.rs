//! World files (docs/world-format.md): users, groups, access packages, assignments, requests
//! and ServiceNow tables of a fake tenant, in one JSON file.
//!
//! Two readers hold each other to account through this file: accessgate's offline directory
//! (`explain`, `policy test`) and the emulator, which serves it over Graph and the Table API.
//! So the types, their validation and the lookups whose answers must agree (user by id or UPN,
//! transitive groups, held states) are defined here once.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The file inside a fixtures directory.
pub const WORLD_FILE: &str = "world.json";

/// Assignment states in which the package counts as held (Graph's
/// `accessPackageAssignmentState`); an assignment without a state is `delivered`.
pub const HELD_STATES: [&str; 3] = ["delivered", "delivering", "partiallyDelivered"];

/// The request state that counts as pending.
pub const PENDING_STATE: &str = "pendingApproval";

/// Why a world file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a world file: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("every user needs a unique id")]
    DuplicateUserId,
    /// Relationships naming ids that no user, group or package has, as `"<what> <id>"`.
    #[error("the world names ids that do not exist: {}", .0.join(", "))]
    UnknownIds(Vec<String>),
    /// A world file that does not validate, with the file named.
    #[error("{}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: Box<WorldError>,
    },
}

/// A world file: the directory and ServiceNow data of a fake tenant. Every list may be omitted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct World {
    #[serde(default)]
    pub users: Vec<WorldUser>,
    #[serde(default)]
    pub groups: Vec<WorldGroup>,
    #[serde(default)]
    pub access_packages: Vec<WorldPackage>,
    #[serde(default)]
    pub assignments: Vec<WorldAssignment>,
    #[serde(default)]
    pub requests: Vec<WorldRequest>,
    /// Lifecycle Workflows workflows (for their category and tasks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<WorldWorkflow>,
    #[serde(default)]
    pub servicenow: WorldServiceNow,
}

/// A Lifecycle Workflows workflow: Graph's `workflow` (`id`, `displayName`, `category`) and
/// its tasks (`id`, `displayName`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldWorkflow {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// Graph's `lifecycleWorkflowCategory`: `joiner`, `mover` or `leaver`.
    pub category: String,
    #[serde(default)]
    pub tasks: Vec<WorldTask>,
}

/// A task of a workflow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldTask {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// The members of `lifecycleWorkflowCategory` a workflow may have (v1.0; beta adds
/// `extensibility`).
pub const WORKFLOW_CATEGORIES: [&str; 4] = ["joiner", "mover", "leaver", "extensibility"];

/// A Graph user; `manager`, `sponsors` and `appRoleAssignments` are relationships, every other
/// property is kept as given (and served as Graph would return it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldUser {
    pub id: String,
    /// The manager's user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    /// Sponsors' user (or group) ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sponsors: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub app_role_assignments: Vec<WorldAppRole>,
    /// Directory roles the user holds (role definition ids), served as its active
    /// `roleManagement/directory/roleAssignments`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directory_roles: Vec<String>,
    /// Every other property, as Graph would return it.
    #[serde(flatten)]
    pub properties: Map<String, Value>,
}

impl WorldUser {
    /// A string property (`userPrincipalName`, `department`, …).
    pub fn str(&self, key: &str) -> Option<&str> {
        self.properties.get(key).and_then(Value::as_str)
    }
}

/// One app role assignment of a user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldAppRole {
    /// The resource service principal's object id.
    pub resource_id: String,
    #[serde(default)]
    pub resource_display_name: Option<String>,
    pub app_role_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldGroup {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// User or group ids; a group member makes membership transitive.
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldPackage {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub catalog_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldAssignment {
    #[serde(default)]
    pub id: Option<String>,
    pub access_package_id: String,
    pub target_id: String,
    /// Graph's `accessPackageAssignmentState`; `None` means `delivered`.
    #[serde(default)]
    pub state: Option<String>,
}

impl WorldAssignment {
    /// Whether the package counts as held ([`HELD_STATES`]).
    pub fn is_held(&self) -> bool {
        self.state
            .as_deref()
            .is_none_or(|s| HELD_STATES.iter().any(|h| h.eq_ignore_ascii_case(s)))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldAnswer {
    #[serde(default)]
    pub question_id: Option<String>,
    #[serde(default)]
    pub question: Option<String>,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldRequest {
    pub id: String,
    pub access_package_id: String,
    pub target_id: String,
    /// Default: the target.
    #[serde(default)]
    pub requestor_id: Option<String>,
    /// Graph's `accessPackageRequestState`.
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub justification: Option<String>,
    #[serde(default)]
    pub answers: Vec<WorldAnswer>,
}

impl WorldRequest {
    /// Who asked: the requestor, else the target (what Graph's requestor filter matches).
    pub fn requestor(&self) -> &str {
        self.requestor_id.as_deref().unwrap_or(&self.target_id)
    }
}

/// ServiceNow tables by name; a record is its fields, each a string or
/// `{ "value", "display_value" }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorldServiceNow {
    #[serde(default)]
    pub tables: BTreeMap<String, Vec<Map<String, Value>>>,
}

impl WorldServiceNow {
    /// The record whose `sys_id` is `id`, in any table, with its table's name.
    pub fn by_sys_id(&self, id: &str) -> Option<(&str, &Map<String, Value>)> {
        self.tables.iter().find_map(|(t, rows)| {
            rows.iter()
                .find(|r| r.get("sys_id").and_then(Value::as_str) == Some(id))
                .map(|r| (t.as_str(), r))
        })
    }
}

impl World {
    /// Reads and validates `DIR/world.json`, or the file itself when `path` is a file.
    pub fn load(path: &Path) -> Result<World, WorldError> {
        let file = if path.is_dir() {
            path.join(WORLD_FILE)
        } else {
            path.to_path_buf()
        };
        World::from_file(&file)
    }

    /// Reads and validates one world file.
    pub fn from_file(file: &Path) -> Result<World, WorldError> {
        let text = std::fs::read_to_string(file).map_err(|source| WorldError::Read {
            path: file.to_path_buf(),
            source,
        })?;
        let world: World = serde_json::from_str(&text).map_err(|source| WorldError::Parse {
            path: file.to_path_buf(),
            source,
        })?;
        world.validate().map_err(|e| WorldError::Invalid {
            path: file.to_path_buf(),
            source: Box::new(e),
        })?;
        Ok(world)
    }

    /// Every user id is unique and every id a relationship names exists (ids compare ignoring
    /// case, as Graph's do).
    /// A workflow by id (any case).
    pub fn workflow(&self, id: &str) -> Option<&WorldWorkflow> {
        self.workflows
            .iter()
            .find(|w| w.id.eq_ignore_ascii_case(id))
    }

    pub fn validate(&self) -> Result<(), WorldError> {
        let users: BTreeSet<String> = self.users.iter().map(|u| u.id.to_lowercase()).collect();
        if users.len() != self.users.len() || self.users.iter().any(|u| u.id.is_empty()) {
            return Err(WorldError::DuplicateUserId);
        }
        let groups: BTreeSet<String> = self.groups.iter().map(|g| g.id.to_lowercase()).collect();
        let packages: BTreeSet<String> = self
            .access_packages
            .iter()
            .map(|p| p.id.to_lowercase())
            .collect();
        let mut bad = Vec::new();
        let mut need = |what: &str, id: &str, sets: &[&BTreeSet<String>]| {
            if !sets.iter().any(|s| s.contains(&id.to_lowercase())) {
                bad.push(format!("{what} {id}"));
            }
        };
        for u in &self.users {
            if let Some(m) = &u.manager {
                need("manager", m, &[&users]);
            }
            for s in &u.sponsors {
                need("sponsor", s, &[&users, &groups]);
            }
        }
        for g in &self.groups {
            for m in &g.members {
                need("group member", m, &[&users, &groups]);
            }
        }
        for a in &self.assignments {
            need("assignment package", &a.access_package_id, &[&packages]);
            need("assignment target", &a.target_id, &[&users]);
        }
        for r in &self.requests {
            need("request package", &r.access_package_id, &[&packages]);
            need("request target", &r.target_id, &[&users]);
        }
        for w in &self.workflows {
            if !WORKFLOW_CATEGORIES.contains(&w.category.as_str()) {
                bad.push(format!("workflow category {}", w.category));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(WorldError::UnknownIds(bad))
        }
    }

    /// The user whose id or UPN is `id` (ignoring case), as Graph's `/users/{id}` finds one.
    pub fn user(&self, id: &str) -> Option<&WorldUser> {
        self.users.iter().find(|u| {
            u.id.eq_ignore_ascii_case(id)
                || u.str("userPrincipalName")
                    .is_some_and(|p| p.eq_ignore_ascii_case(id))
        })
    }

    pub fn package(&self, id: &str) -> Option<&WorldPackage> {
        self.access_packages
            .iter()
            .find(|p| p.id.eq_ignore_ascii_case(id))
    }

    pub fn request(&self, id: &str) -> Option<&WorldRequest> {
        self.requests.iter().find(|r| r.id.eq_ignore_ascii_case(id))
    }

    /// Groups `member` belongs to directly or through nesting; a cycle terminates. Order: a
    /// depth-first walk, parents in file order.
    pub fn transitive_groups(&self, member: &str) -> Vec<&WorldGroup> {
        let mut parents: HashMap<String, Vec<&WorldGroup>> = HashMap::new();
        for g in &self.groups {
            for m in &g.members {
                parents.entry(m.to_lowercase()).or_default().push(g);
            }
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut todo = vec![member.to_lowercase()];
        while let Some(m) = todo.pop() {
            for g in parents.get(&m).into_iter().flatten() {
                if seen.insert(g.id.to_lowercase()) {
                    out.push(*g);
                    todo.push(g.id.to_lowercase());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORLD: &str = r#"{
      "users": [
        {"id": "u1", "userPrincipalName": "alice@contoso.example", "manager": "u2",
         "sponsors": ["g1"], "appRoleAssignments": [{"resourceId": "r", "appRoleId": "a"}],
         "extension_0000_entitlements": ["SAP:FK01"]},
        {"id": "u2"}
      ],
      "groups": [
        {"id": "g1", "members": ["u1"]},
        {"id": "g2", "members": ["G1", "g3"]},
        {"id": "g3", "members": ["g2"]}
      ],
      "accessPackages": [{"id": "p1"}],
      "assignments": [{"accessPackageId": "p1", "targetId": "u1"},
                      {"accessPackageId": "p1", "targetId": "u1", "state": "expired"}],
      "requests": [{"id": "r1", "accessPackageId": "p1", "targetId": "u1",
                    "answers": [{"question": "Ticket", "value": "RITM0010001"}]}],
      "servicenow": {"tables": {"sys_user": [{"sys_id": "s1", "email": "a@x"}]}}
    }"#;

    fn world() -> World {
        serde_json::from_str(WORLD).unwrap()
    }

    #[test]
    fn relationships_and_unknown_properties_parse() {
        let w = world();
        assert_eq!(w.validate().ok(), Some(()));
        let u = w
            .user("ALICE@contoso.example")
            .unwrap_or_else(|| panic!("by UPN"));
        assert_eq!(u.manager.as_deref(), Some("u2"));
        assert_eq!(u.app_role_assignments[0].app_role_id, "a");
        assert!(u.properties.contains_key("extension_0000_entitlements"));
        assert!(
            !u.properties.contains_key("manager"),
            "relationships are not properties"
        );
        assert_eq!(w.request("R1").map(|r| r.requestor()), Some("u1"));
        assert_eq!(w.requests[0].answers[0].value, "RITM0010001");
        assert_eq!(
            w.assignments
                .iter()
                .map(WorldAssignment::is_held)
                .collect::<Vec<_>>(),
            [true, false]
        );
        assert_eq!(
            w.servicenow.by_sys_id("s1").map(|(t, _)| t),
            Some("sys_user")
        );
    }

    #[test]
    fn serializing_keeps_the_format() {
        let w = world();
        let text = serde_json::to_string(&w).unwrap_or_default();
        let back: World = serde_json::from_str(&text).unwrap();
        assert_eq!(back, w);
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(v["users"][0]["userPrincipalName"], "alice@contoso.example");
        assert_eq!(v["users"][1].get("manager"), None);
    }

    #[test]
    fn nesting_is_transitive_and_cycles_terminate() {
        let w = world();
        let ids: Vec<&str> = w
            .transitive_groups("U1")
            .iter()
            .map(|g| g.id.as_str())
            .collect();
        assert_eq!(
            ids.iter().copied().collect::<BTreeSet<_>>(),
            BTreeSet::from(["g1", "g2", "g3"])
        );
        assert_eq!(ids.len(), 3);
        assert!(w.transitive_groups("nobody").is_empty());
    }

    #[test]
    fn unknown_ids_are_all_named() {
        let w: World = serde_json::from_str(
            r#"{"users": [{"id": "u1", "manager": "ghost", "sponsors": ["nobody"]}],
                "groups": [{"id": "g", "members": ["x"]}],
                "assignments": [{"accessPackageId": "p9", "targetId": "u1"}],
                "requests": [{"id": "r", "accessPackageId": "p9", "targetId": "u7"}]}"#,
        )
        .unwrap();
        let e = w
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for want in [
            "the world names ids that do not exist: manager ghost",
            "sponsor nobody",
            "group member x",
            "assignment package p9",
            "request package p9",
            "request target u7",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn duplicate_or_missing_user_ids_are_refused() {
        let dup: World = serde_json::from_str(r#"{"users": [{"id": "a"}, {"id": "A"}]}"#).unwrap();
        assert!(matches!(dup.validate(), Err(WorldError::DuplicateUserId)));
        assert!(serde_json::from_str::<World>(r#"{"users": [{"displayName": "x"}]}"#).is_err());
    }

    #[test]
    fn load_reads_a_directory_or_a_file_and_names_it_in_errors() {
        let dir = std::env::temp_dir().join(format!("accessgate-world-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(WORLD_FILE);
        std::fs::write(&file, WORLD).unwrap();
        assert_eq!(World::load(&dir).ok(), Some(world()));
        assert_eq!(World::load(&file).ok(), Some(world()));
        std::fs::write(&file, "{\"users\": 1}").unwrap();
        let e = World::load(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("is not a world file"), "{e}");
        std::fs::write(
            &file,
            r#"{"assignments": [{"accessPackageId": "p", "targetId": "u"}]}"#,
        )
        .unwrap();
        let e = World::load(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains(WORLD_FILE) && e.contains("assignment package p"),
            "{e}"
        );
        let e = World::load(&dir.join("missing.json"))
            .err()
            .map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.starts_with("cannot read")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
