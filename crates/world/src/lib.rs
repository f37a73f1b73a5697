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
    /// Entitlement-management objects that contradict each other or Graph's rules (duplicate
    /// ids, an unknown stage, a policy using another catalog's extension, a malformed Logic App
    /// resource id), each named.
    #[error("the world's entitlement-management objects are inconsistent: {}", .0.join("; "))]
    Inconsistent(Vec<String>),
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
    /// Entitlement-management catalogs. A catalog that an access package names but this list
    /// does not is a catalog too (without a display name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub catalogs: Vec<WorldCatalog>,
    /// Assignment policies of the access packages, with their custom extension stages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assignment_policies: Vec<WorldPolicy>,
    /// Entitlement-management custom extensions that exist before anything is created through
    /// Graph.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_extensions: Vec<WorldCustomExtension>,
    /// ARM resource ids of the Logic Apps that exist
    /// (`/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Logic/workflows/{name}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logic_apps: Vec<String>,
}

/// An entitlement-management catalog (Graph's `accessPackageCatalog`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldCatalog {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// An access package's assignment policy (Graph's `accessPackageAssignmentPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldPolicy {
    pub id: String,
    #[serde(default)]
    pub display_name: Option<String>,
    pub access_package_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_extension_stage_settings: Vec<WorldStageSetting>,
}

/// One stage of a policy at which a custom extension runs (Graph's
/// `customExtensionStageSetting`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldStageSetting {
    /// A member of [`POLICY_STAGES`].
    pub stage: String,
    pub custom_extension_id: String,
}

/// An entitlement-management custom extension of a catalog (an
/// `accessPackageAssignmentRequestWorkflowExtension`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldCustomExtension {
    pub id: String,
    pub catalog_id: String,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// The stages a policy can run a custom extension at: the members of Graph's
/// `accessPackageCustomExtensionStage` but `unknownFutureValue`, and dynamic approval's
/// `assignmentRequestDeterminingApprovalRequirements`.
pub const POLICY_STAGES: [&str; 7] = [
    "assignmentRequestCreated",
    "assignmentRequestApproved",
    "assignmentRequestGranted",
    "assignmentRequestRemoved",
    "assignmentFourteenDaysBeforeExpiration",
    "assignmentOneDayBeforeExpiration",
    "assignmentRequestDeterminingApprovalRequirements",
];

/// The parts of a Logic App's ARM resource id: subscription, resource group and workflow name;
/// `None` when `resource_id` is not one (the fixed segments compare ignoring case, as ARM's
/// do).
pub fn logic_app_parts(resource_id: &str) -> Option<(&str, &str, &str)> {
    let segs: Vec<&str> = resource_id.strip_prefix('/')?.split('/').collect();
    match segs.as_slice() {
        [s, sub, r, rg, p, ns, w, name]
            if s.eq_ignore_ascii_case("subscriptions")
                && r.eq_ignore_ascii_case("resourceGroups")
                && p.eq_ignore_ascii_case("providers")
                && ns.eq_ignore_ascii_case("Microsoft.Logic")
                && w.eq_ignore_ascii_case("workflows")
                && ![sub, rg, name].iter().any(|x| x.is_empty()) =>
        {
            Some((sub, rg, name))
        }
        _ => None,
    }
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

    /// A workflow by id (any case).
    pub fn workflow(&self, id: &str) -> Option<&WorldWorkflow> {
        self.workflows
            .iter()
            .find(|w| w.id.eq_ignore_ascii_case(id))
    }

    /// Every user id is unique, every id a relationship names exists (ids compare ignoring
    /// case, as Graph's do), and the entitlement-management objects agree with each other
    /// ([`WorldError::Inconsistent`]).
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
        let catalogs = self.catalog_ids();
        for x in &self.custom_extensions {
            need("custom extension catalog", &x.catalog_id, &[&catalogs]);
        }
        let extensions: BTreeSet<String> = self
            .custom_extensions
            .iter()
            .map(|x| x.id.to_lowercase())
            .collect();
        for p in &self.assignment_policies {
            need("policy package", &p.access_package_id, &[&packages]);
            for s in &p.custom_extension_stage_settings {
                need(
                    "policy custom extension",
                    &s.custom_extension_id,
                    &[&extensions],
                );
            }
        }
        for w in &self.workflows {
            if !WORKFLOW_CATEGORIES.contains(&w.category.as_str()) {
                bad.push(format!("workflow category {}", w.category));
            }
        }
        if !bad.is_empty() {
            return Err(WorldError::UnknownIds(bad));
        }
        let problems = self.governance_problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(WorldError::Inconsistent(problems))
        }
    }

    /// What is wrong with the entitlement-management objects once every id they name exists.
    fn governance_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut unique = |what: &str, ids: &mut dyn Iterator<Item = &String>| {
            let mut seen = BTreeSet::new();
            for id in ids {
                if id.is_empty() {
                    problems.push(format!("a {what} has an empty id"));
                } else if !seen.insert(id.to_lowercase()) {
                    problems.push(format!("two {what}s have the id {id}"));
                }
            }
        };
        unique("catalog", &mut self.catalogs.iter().map(|c| &c.id));
        unique(
            "custom extension",
            &mut self.custom_extensions.iter().map(|x| &x.id),
        );
        unique(
            "assignment policy",
            &mut self.assignment_policies.iter().map(|p| &p.id),
        );
        for p in &self.assignment_policies {
            let catalog = self
                .package(&p.access_package_id)
                .and_then(|a| a.catalog_id.as_deref());
            let mut stages = BTreeSet::new();
            for s in &p.custom_extension_stage_settings {
                if !POLICY_STAGES.contains(&s.stage.as_str()) {
                    problems.push(format!(
                        "policy {} names the stage {}, which is not one of {}",
                        p.id,
                        s.stage,
                        POLICY_STAGES.join(", ")
                    ));
                }
                if !stages.insert(s.stage.as_str()) {
                    problems.push(format!("policy {} names the stage {} twice", p.id, s.stage));
                }
                let extension_catalog = self
                    .custom_extension(&s.custom_extension_id)
                    .map(|x| x.catalog_id.as_str());
                if extension_catalog.map(str::to_lowercase) != catalog.map(str::to_lowercase) {
                    problems.push(format!(
                        "policy {} uses the custom extension {} of catalog {}, but its access package {} is in catalog {}",
                        p.id,
                        s.custom_extension_id,
                        extension_catalog.unwrap_or("(none)"),
                        p.access_package_id,
                        catalog.unwrap_or("(none)")
                    ));
                }
            }
        }
        for l in &self.logic_apps {
            if logic_app_parts(l).is_none() {
                problems.push(format!(
                    "logic app {l} is not /subscriptions/{{sub}}/resourceGroups/{{rg}}/providers/Microsoft.Logic/workflows/{{name}}"
                ));
            }
        }
        problems
    }

    /// Ids of every catalog (lower case): the listed ones and those access packages name.
    pub fn catalog_ids(&self) -> BTreeSet<String> {
        self.catalogs
            .iter()
            .map(|c| c.id.to_lowercase())
            .chain(
                self.access_packages
                    .iter()
                    .filter_map(|p| p.catalog_id.as_deref().map(str::to_lowercase)),
            )
            .collect()
    }

    /// A custom extension by id (any case).
    pub fn custom_extension(&self, id: &str) -> Option<&WorldCustomExtension> {
        self.custom_extensions
            .iter()
            .find(|x| x.id.eq_ignore_ascii_case(id))
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

    #[test]
    fn governance_objects_are_checked_against_each_other() {
        let good: World = serde_json::from_str(
            r#"{"accessPackages": [{"id": "p1", "catalogId": "C1"}, {"id": "p2", "catalogId": "c2"}],
                "catalogs": [{"id": "c1", "displayName": "Finance"}],
                "customExtensions": [{"id": "x1", "catalogId": "c1", "displayName": "gate"}],
                "assignmentPolicies": [{"id": "pol1", "accessPackageId": "p1",
                    "customExtensionStageSettings": [{"stage": "assignmentRequestCreated", "customExtensionId": "X1"}]}],
                "logicApps": ["/subscriptions/s/resourceGroups/rg/providers/Microsoft.Logic/workflows/la"]}"#,
        )
        .unwrap();
        assert_eq!(good.validate().ok(), Some(()));
        assert_eq!(
            good.catalog_ids(),
            BTreeSet::from(["c1".to_owned(), "c2".to_owned()])
        );
        let text = serde_json::to_string(&good).unwrap_or_default();
        assert!(text.contains("\"customExtensionStageSettings\""), "{text}");
        assert_eq!(serde_json::from_str::<World>(&text).ok(), Some(good));

        let unknown: World = serde_json::from_str(
            r#"{"customExtensions": [{"id": "x1", "catalogId": "nope"}],
                "assignmentPolicies": [{"id": "pol1", "accessPackageId": "p9",
                    "customExtensionStageSettings": [{"stage": "assignmentRequestCreated", "customExtensionId": "x7"}]}]}"#,
        )
        .unwrap();
        let e = unknown
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for want in [
            "custom extension catalog nope",
            "policy package p9",
            "policy custom extension x7",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }

        let bad: World = serde_json::from_str(
            r#"{"accessPackages": [{"id": "p1", "catalogId": "c1"}, {"id": "p2", "catalogId": "c2"}],
                "catalogs": [{"id": "c1"}, {"id": "C1"}],
                "customExtensions": [{"id": "x2", "catalogId": "c2"}],
                "assignmentPolicies": [{"id": "pol1", "accessPackageId": "p1",
                    "customExtensionStageSettings": [
                        {"stage": "assignmentRequestCreated", "customExtensionId": "x2"},
                        {"stage": "assignmentRequestCreated", "customExtensionId": "x2"},
                        {"stage": "unknownFutureValue", "customExtensionId": "x2"}]}],
                "logicApps": ["/subscriptions/s/resourceGroups/rg/workflows/la"]}"#,
        )
        .unwrap();
        let e = bad
            .validate()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for want in [
            "inconsistent",
            "two catalogs have the id C1",
            "names the stage assignmentRequestCreated twice",
            "stage unknownFutureValue, which is not one of",
            "custom extension x2 of catalog c2, but its access package p1 is in catalog c1",
            "logic app /subscriptions/s/resourceGroups/rg/workflows/la is not",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn logic_app_resource_ids_split_ignoring_the_case_of_fixed_segments() {
        assert_eq!(
            logic_app_parts(
                "/SUBSCRIPTIONS/s/resourcegroups/rg/providers/microsoft.logic/Workflows/la"
            ),
            Some(("s", "rg", "la"))
        );
        for bad in [
            "",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Logic/workflows/",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/la",
            "subscriptions/s/resourceGroups/rg/providers/Microsoft.Logic/workflows/la",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Logic/workflows/la/x",
        ] {
            assert_eq!(logic_app_parts(bad), None, "{bad}");
        }
    }
}
