//! Validation of a dynamic-approval resume's `approvalStage` against the Graph v1.0 schema,
//! read from `fixtures/graph-v1.0-approval-stage-extract.json` (an extract of the v1.0 subset
//! in `../shared/data`): every property must exist on its type, every value must have the
//! property's type (string, boolean, int32, the duration pattern, an enum member), and every
//! approver must be a `subjectSet` type the schema derives, with that type's properties only.
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

fn schemas() -> &'static Map<String, Value> {
    static S: OnceLock<Map<String, Value>> = OnceLock::new();
    S.get_or_init(|| {
        let v: Value = serde_json::from_str(include_str!(
            "../fixtures/graph-v1.0-approval-stage-extract.json"
        ))
        .unwrap_or(Value::Null);
        v["components"]["schemas"]
            .as_object()
            .cloned()
            .unwrap_or_default()
    })
}

/// The properties of a type, its bases' included (`allOf`).
pub fn properties(type_name: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(schema) = schemas().get(type_name) else {
        return out;
    };
    let parts: Vec<&Value> = match schema.get("allOf").and_then(Value::as_array) {
        Some(all) => all.iter().collect(),
        None => vec![schema],
    };
    for part in parts {
        if let Some(base) = part
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(REF_PREFIX))
        {
            out.extend(properties(base));
        }
        if let Some(p) = part.get("properties").and_then(Value::as_object) {
            out.extend(p.clone());
        }
    }
    out
}

/// The types the schema derives from `subjectSet` (directly).
pub fn subject_set_types() -> Vec<String> {
    schemas()
        .iter()
        .filter(|(_, v)| {
            v.get("allOf").and_then(Value::as_array).is_some_and(|a| {
                a.iter().any(|p| {
                    p.get("$ref").and_then(Value::as_str)
                        == Some(&format!("{REF_PREFIX}{SUBJECT_SET}"))
                })
            })
        })
        .map(|(k, _)| k.clone())
        .collect()
}

/// Whether `type_name` is in the extract (the callback data type is, in v1.0).
pub fn has_type(type_name: &str) -> bool {
    schemas().contains_key(type_name)
}

fn check_value(at: &str, schema: &Value, v: &Value) -> Result<(), String> {
    if v.is_null() {
        return if schema.get("nullable").and_then(Value::as_bool) == Some(true) {
            Ok(())
        } else {
            Err(format!("'{at}' cannot be null."))
        };
    }
    if let Some(target) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix(REF_PREFIX))
    {
        let target_schema = schemas().get(target).cloned().unwrap_or(Value::Null);
        if let Some(members) = target_schema.get("enum").and_then(Value::as_array) {
            return match v.as_str() {
                Some(s) if members.iter().any(|m| m.as_str() == Some(s)) => Ok(()),
                _ => Err(format!(
                    "Requested value '{}' was not found in enum '{target}'.",
                    v.as_str().unwrap_or("(not a string)")
                )),
            };
        }
        if target == SUBJECT_SET {
            return check_subject_set(at, v);
        }
        return check_object(at, target, v);
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("string") => {
            let s = v
                .as_str()
                .ok_or_else(|| format!("'{at}': a string is expected."))?;
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                let re = regex::Regex::new(p).map_err(|e| format!("schema pattern: {e}"))?;
                if !re.is_match(s) {
                    return Err(format!(
                        "Cannot convert the literal '{s}' to the expected type 'Edm.Duration' ('{at}')."
                    ));
                }
            }
            Ok(())
        }
        Some("boolean") => v
            .is_boolean()
            .then_some(())
            .ok_or_else(|| format!("'{at}': a boolean is expected.")),
        Some("integer") => match v.as_i64() {
            Some(n) if i32::try_from(n).is_ok() => Ok(()),
            _ => Err(format!("'{at}': an Edm.Int32 is expected.")),
        },
        Some("array") => {
            let items = schema.get("items").cloned().unwrap_or(Value::Null);
            let a = v
                .as_array()
                .ok_or_else(|| format!("'{at}': a collection is expected."))?;
            for (i, item) in a.iter().enumerate() {
                check_value(&format!("{at}[{i}]"), &items, item)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_object(at: &str, type_name: &str, v: &Value) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("'{at}': an object of type '{type_name}' is expected."))?;
    let props = properties(type_name);
    for (k, val) in obj {
        if k == "@odata.type" {
            continue;
        }
        let Some(schema) = props.get(k) else {
            return Err(format!(
                "The property '{k}' does not exist on type '{type_name}'. Make sure to only use property names that are defined by the type."
            ));
        };
        check_value(&format!("{at}.{k}"), schema, val)?;
    }
    Ok(())
}

fn check_subject_set(at: &str, v: &Value) -> Result<(), String> {
    let t = v
        .get("@odata.type")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("'{at}' needs an '@odata.type' naming a subjectSet type."))?;
    let name = t.strip_prefix('#').unwrap_or(t);
    if !subject_set_types().iter().any(|s| s == name) {
        return Err(format!(
            "'{at}': '{t}' is not a type derived from '{SUBJECT_SET}'."
        ));
    }
    check_object(at, name, v)
}

/// Checks `approvalStage` as Graph v1.0 types it, plus the emulator's rules in the module doc.
pub fn validate_approval_stage(v: &Value) -> Result<(), String> {
    check_object("approvalStage", STAGE_TYPE, v)?;
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
