//! Graph schema validation of request bodies ([`Schemas`], over any extract in
//! `emulator/fixtures/`), and its first use: a dynamic-approval resume's `approvalStage`
//! checked against `fixtures/graph-v1.0-approval-stage-extract.json` (an extract of the v1.0
//! subset in `../shared/data`): every property must exist on its type, every value must have the
//! property's type (string, boolean, int32, the duration pattern, an enum member), and every
//! approver must be a `subjectSet` type the schema derives, with that type's properties only.
//! `governance` checks its bodies with the same [`Schemas`] over its own extract.
//!
//! Emulator choices where the docs say nothing: `primaryApprovers` must not be empty (an
//! approval with nobody to ask), and escalation on needs escalation approvers and a
//! `durationBeforeEscalation`.

use std::sync::OnceLock;

use serde_json::{Map, Value};

/// The callback data type of a dynamic-approval resume.
pub const APPROVAL_CALLBACK_DATA_TYPE: &str =
    "microsoft.graph.assignmentRequestApprovalStageCallbackData";
const STAGE_TYPE: &str = "microsoft.graph.accessPackageApprovalStage";
const SUBJECT_SET: &str = "microsoft.graph.subjectSet";
const REF_PREFIX: &str = "#/components/schemas/";

/// Instance annotations a body may carry on any object without being a property.
const IGNORED_ANNOTATIONS: [&str; 3] = ["@odata.context", "@odata.etag", "@odata.id"];

/// A set of Graph component schemas (an extract's `components.schemas`) and the check of a
/// request body against them: every property must exist on its type (bases included through
/// `allOf`), every value must have the property's type (string, boolean, integer within its
/// format, number, collection, the pattern of durations and timestamps, an enum member), and an
/// `@odata.type` must name the declared type or one derived from it, whose properties then
/// apply. A type with no properties of its own that other types derive from (`subjectSet`,
/// `customExtensionEndpointConfiguration`) is abstract: its values must name a derived type.
/// A property typed by `$ref` may be `null` (CSDL properties are nullable unless marked
/// otherwise, and the subsets mark none); other values may be `null` only when `nullable`.
#[derive(Debug, Default)]
pub struct Schemas {
    map: Map<String, Value>,
}

/// What a check tolerates beyond the schema.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules<'a> {
    /// Properties of the checked object itself (not of nested ones) that are skipped: the
    /// read-only ones a `PUT`/`PATCH` body may echo.
    pub ignored: &'a [&'a str],
    /// Enum members accepted beyond the schema's, as (enum type, member): evolvable members
    /// the subsets do not list.
    pub extra_members: &'a [(&'a str, &'a str)],
}

impl Schemas {
    /// Reads an extract (`{"components": {"schemas": {...}}}`); anything else gives no types.
    pub fn parse(text: &str) -> Self {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        Self {
            map: v["components"]["schemas"]
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Whether `type_name` is in the set.
    pub fn has_type(&self, type_name: &str) -> bool {
        self.map.contains_key(type_name)
    }

    /// The parts of a type's schema: its `allOf` members, or the schema itself.
    fn parts(&self, type_name: &str) -> Vec<&Value> {
        match self.map.get(type_name) {
            Some(schema) => match schema.get("allOf").and_then(Value::as_array) {
                Some(all) => all.iter().collect(),
                None => vec![schema],
            },
            None => Vec::new(),
        }
    }

    /// The direct bases of a type (`allOf` references).
    fn bases(&self, type_name: &str) -> Vec<&str> {
        self.parts(type_name)
            .into_iter()
            .filter_map(|p| p.get("$ref").and_then(Value::as_str))
            .filter_map(|r| r.strip_prefix(REF_PREFIX))
            .collect()
    }

    /// The properties of a type, its bases' included (`allOf`).
    pub fn properties(&self, type_name: &str) -> Map<String, Value> {
        let mut out = Map::new();
        for part in self.parts(type_name) {
            if let Some(base) = part
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix(REF_PREFIX))
            {
                out.extend(self.properties(base));
            }
            if let Some(p) = part.get("properties").and_then(Value::as_object) {
                out.extend(p.clone());
            }
        }
        out
    }

    /// The types of the set that derive from `base` directly.
    pub fn derived_types(&self, base: &str) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| self.bases(k).contains(&base))
            .cloned()
            .collect()
    }

    /// Whether `type_name` is `base` or derives from it (through any number of bases).
    pub fn derives_from(&self, type_name: &str, base: &str) -> bool {
        type_name == base
            || self
                .bases(type_name)
                .iter()
                .any(|b| self.derives_from(b, base))
    }

    /// Abstract: no properties of its own, and types derive from it.
    fn is_abstract(&self, type_name: &str) -> bool {
        let own = self
            .parts(type_name)
            .iter()
            .filter_map(|p| p.get("properties").and_then(Value::as_object))
            .any(|p| !p.is_empty());
        !own && !self.derived_types(type_name).is_empty()
    }

    /// Checks `v` as a value of `type_name` (`at` names it in messages); the error is Graph's
    /// message.
    pub fn check(&self, at: &str, type_name: &str, v: &Value, rules: &Rules) -> Result<(), String> {
        self.check_object(at, type_name, v, rules, true)
    }

    fn check_object(
        &self,
        at: &str,
        declared: &str,
        v: &Value,
        rules: &Rules,
        top: bool,
    ) -> Result<(), String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("'{at}': an object of type '{declared}' is expected."))?;
        // A stub of the subset (a type it does not carry, e.g. accessPackageQuestion and its
        // derived types): nothing is known of it here, so the object is taken as it is.
        if self
            .map
            .get(declared)
            .and_then(|s| s.get("x-subset-stub"))
            .and_then(Value::as_bool)
            == Some(true)
        {
            return Ok(());
        }
        let type_name = match obj.get("@odata.type") {
            Some(t) => {
                let t = t
                    .as_str()
                    .ok_or_else(|| format!("'{at}.@odata.type' must be a string."))?;
                let name = t.strip_prefix('#').unwrap_or(t);
                if !self.has_type(name)
                    || !self.derives_from(name, declared)
                    || self.is_abstract(name)
                {
                    return Err(format!(
                        "'{at}': '{t}' is not a type derived from '{declared}'."
                    ));
                }
                name
            }
            None if self.is_abstract(declared) => {
                return Err(format!(
                    "'{at}' needs an '@odata.type' naming a type derived from '{declared}'."
                ));
            }
            None => declared,
        };
        let props = self.properties(type_name);
        for (k, val) in obj {
            if k == "@odata.type" || IGNORED_ANNOTATIONS.contains(&k.as_str()) {
                continue;
            }
            if top && rules.ignored.contains(&k.as_str()) {
                continue;
            }
            if let Some(nav) = k.strip_suffix("@odata.bind")
                && props.contains_key(nav)
            {
                let refs_ok = val.is_string()
                    || val
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_string));
                if !refs_ok {
                    return Err(format!(
                        "'{at}.{k}': a reference URL or a collection of them is expected."
                    ));
                }
                continue;
            }
            let Some(schema) = props.get(k) else {
                return Err(format!(
                    "Invalid property '{k}'. The property '{k}' does not exist on type '{type_name}'. Make sure to only use property names that are defined by the type."
                ));
            };
            self.check_value(&format!("{at}.{k}"), schema, val, rules)?;
        }
        Ok(())
    }

    fn check_value(
        &self,
        at: &str,
        schema: &Value,
        v: &Value,
        rules: &Rules,
    ) -> Result<(), String> {
        let target = schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(REF_PREFIX));
        if v.is_null() {
            return if target.is_some()
                || schema.get("nullable").and_then(Value::as_bool) == Some(true)
            {
                Ok(())
            } else {
                Err(format!("'{at}' cannot be null."))
            };
        }
        if let Some(target) = target {
            let target_schema = self.map.get(target).cloned().unwrap_or(Value::Null);
            if let Some(members) = target_schema.get("enum").and_then(Value::as_array) {
                let s = v.as_str();
                let member = s.is_some_and(|s| {
                    members.iter().any(|m| m.as_str() == Some(s))
                        || rules
                            .extra_members
                            .iter()
                            .any(|(e, m)| *e == target && *m == s)
                });
                return if member {
                    Ok(())
                } else {
                    Err(format!(
                        "Requested value '{}' was not found in enum '{target}'.",
                        s.unwrap_or("(not a string)")
                    ))
                };
            }
            return self.check_object(at, target, v, rules, false);
        }
        match schema.get("type").and_then(Value::as_str) {
            Some("string") => {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("'{at}': a string is expected."))?;
                if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                    let re = regex::Regex::new(p).map_err(|e| format!("schema pattern: {e}"))?;
                    if !re.is_match(s) {
                        let edm = match schema.get("format").and_then(Value::as_str) {
                            Some("duration") => "Edm.Duration",
                            Some("date-time") => "Edm.DateTimeOffset",
                            Some("date") => "Edm.Date",
                            Some("uuid") => "Edm.Guid",
                            _ => "Edm.String",
                        };
                        return Err(format!(
                            "Cannot convert the literal '{s}' to the expected type '{edm}' ('{at}')."
                        ));
                    }
                }
                Ok(())
            }
            Some("boolean") => v
                .is_boolean()
                .then_some(())
                .ok_or_else(|| format!("'{at}': a boolean is expected.")),
            Some("integer") => {
                let (edm, fits): (&str, fn(i64) -> bool) =
                    match schema.get("format").and_then(Value::as_str) {
                        Some("int64") => ("Edm.Int64", |_| true),
                        Some("int16") => ("Edm.Int16", |n| i16::try_from(n).is_ok()),
                        _ => ("Edm.Int32", |n| i32::try_from(n).is_ok()),
                    };
                match v.as_i64() {
                    Some(n) if fits(n) => Ok(()),
                    _ => Err(format!("'{at}': an {edm} is expected.")),
                }
            }
            Some("number") => v
                .is_number()
                .then_some(())
                .ok_or_else(|| format!("'{at}': a number is expected.")),
            Some("array") => {
                let items = schema.get("items").cloned().unwrap_or(Value::Null);
                let a = v
                    .as_array()
                    .ok_or_else(|| format!("'{at}': a collection is expected."))?;
                for (i, item) in a.iter().enumerate() {
                    self.check_value(&format!("{at}[{i}]"), &items, item, rules)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn schemas() -> &'static Schemas {
    static S: OnceLock<Schemas> = OnceLock::new();
    S.get_or_init(|| {
        Schemas::parse(include_str!(
            "../fixtures/graph-v1.0-approval-stage-extract.json"
        ))
    })
}

/// The properties of a type of the approval-stage extract, its bases' included (`allOf`).
pub fn properties(type_name: &str) -> Map<String, Value> {
    schemas().properties(type_name)
}

/// The types the approval-stage extract derives from `subjectSet` (directly).
pub fn subject_set_types() -> Vec<String> {
    schemas().derived_types(SUBJECT_SET)
}

/// Whether `type_name` is in the approval-stage extract (the callback data type is, in v1.0).
pub fn has_type(type_name: &str) -> bool {
    schemas().has_type(type_name)
}

/// Checks `approvalStage` as Graph v1.0 types it, plus the emulator's rules in the module doc.
pub fn validate_approval_stage(v: &Value) -> Result<(), String> {
    schemas().check("approvalStage", STAGE_TYPE, v, &Rules::default())?;
    let list = |k: &str| v.get(k).and_then(Value::as_array).map_or(0, Vec::len);
    if list("primaryApprovers") == 0 {
        return Err("'approvalStage.primaryApprovers' must name at least one approver.".into());
    }
    if v.get("isEscalationEnabled").and_then(Value::as_bool) == Some(true)
        && (list("escalationApprovers") == 0 || v.get("durationBeforeEscalation").is_none())
    {
        return Err(
            "'approvalStage.isEscalationEnabled' is true, so 'escalationApprovers' and 'durationBeforeEscalation' are required."
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "durationBeforeAutomaticDenial": "P2D",
            "isApproverJustificationRequired": true,
            "isEscalationEnabled": true,
            "durationBeforeEscalation": "PT12H",
            "primaryApprovers": [
                {"@odata.type": "#microsoft.graph.requestorManager", "managerLevel": 1},
                {"@odata.type": "#microsoft.graph.singleUser", "userId": "u1", "description": "x"}
            ],
            "fallbackPrimaryApprovers": [],
            "escalationApprovers": [{"@odata.type": "#microsoft.graph.groupMembers", "groupId": "g"}],
            "fallbackEscalationApprovers": [{"@odata.type": "#microsoft.graph.internalSponsors"}]
        })
    }

    #[test]
    fn the_v1_shape_passes_and_every_fault_is_named() {
        assert_eq!(validate_approval_stage(&valid()), Ok(()));
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.singleUser", "id": "u", "isBackup": false}]}),
                "'id' does not exist on type 'microsoft.graph.singleUser'",
            ),
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.userSet", "id": "u"}]}),
                "not a type derived",
            ),
            (
                json!({"primaryApprovers": [{"userId": "u"}]}),
                "needs an '@odata.type'",
            ),
            (
                json!({"primaryApprovers": [], "durationBeforeAutomaticDenial": "P2D"}),
                "at least one approver",
            ),
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.internalSponsors"}], "durationBeforeAutomaticDenial": "2 days"}),
                "Edm.Duration",
            ),
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.internalSponsors"}], "durationBeforeAutomaticDenial": "P1W"}),
                "Edm.Duration",
            ),
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.internalSponsors"}], "isEscalationEnabled": "yes"}),
                "a boolean",
            ),
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.requestorManager", "managerLevel": "1"}]}),
                "Edm.Int32",
            ),
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.internalSponsors"}], "approverInformationVisibility": "always"}),
                "not found in enum",
            ),
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.internalSponsors"}], "approvalStageTimeOutInDays": 2}),
                "does not exist on type 'microsoft.graph.accessPackageApprovalStage'",
            ),
            (
                json!({"primaryApprovers": [{"@odata.type": "#microsoft.graph.internalSponsors"}], "isEscalationEnabled": true}),
                "are required",
            ),
        ];
        for (v, want) in cases {
            let e = validate_approval_stage(&v).err().unwrap_or_default();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn the_extract_has_the_types_the_docs_name() {
        let types = subject_set_types();
        for t in [
            "singleUser",
            "groupMembers",
            "requestorManager",
            "internalSponsors",
            "externalSponsors",
            "targetUserSponsors",
        ] {
            assert!(types.contains(&format!("microsoft.graph.{t}")), "{t}");
        }
        assert!(has_type(APPROVAL_CALLBACK_DATA_TYPE));
        let p = properties(APPROVAL_CALLBACK_DATA_TYPE);
        for k in [
            "approvalStage",
            "stage",
            "state",
            "customExtensionStageInstanceId",
            "customExtensionStageInstanceDetail",
        ] {
            assert!(p.contains_key(k), "{k}");
        }
    }
}
