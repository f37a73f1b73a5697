//! Case-insensitive property lookup in JSON objects. Entra, Graph and the Functions host vary
//! the casing of the same property (`Answers` / `answers`, `Data` / `data`), so every reader of
//! their JSON goes through here rather than through its own copy of the loop.

use serde_json::{Map, Value};

/// `key` in `obj`: the exact name first (the common case, and the tie-break when two spellings
/// are present), else the first name equal to `key` ignoring ASCII case.
pub fn get_ci<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Removes and returns what [`get_ci`] would find (the object's order may change).
pub fn take_ci(obj: &mut Map<String, Value>, key: &str) -> Option<Value> {
    if let Some(v) = obj.remove(key) {
        return Some(v);
    }
    let name = obj.keys().find(|k| k.eq_ignore_ascii_case(key))?.clone();
    obj.remove(&name)
}

/// [`get_ci`] on a value that may not be an object (then `None`).
pub fn get_ci_value<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    get_ci(v.as_object()?, key)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn exact_name_wins_then_any_casing() {
        let v = json!({"Value": 1, "value": 2, "OTHER": 3});
        assert_eq!(get_ci_value(&v, "value"), Some(&json!(2)));
        assert_eq!(get_ci_value(&v, "Value"), Some(&json!(1)));
        assert_eq!(get_ci_value(&v, "other"), Some(&json!(3)));
        assert_eq!(get_ci_value(&v, "missing"), None);
    }

    #[test]
    fn non_objects_and_null_values() {
        assert_eq!(get_ci_value(&json!([1]), "a"), None);
        assert_eq!(get_ci_value(&json!("a"), "a"), None);
        // A null is a value like any other here; callers that treat null as absent filter it.
        assert_eq!(get_ci_value(&json!({"A": null}), "a"), Some(&Value::Null));
    }

    #[test]
    fn only_ascii_case_is_folded() {
        let v = json!({"STRASSE": 1});
        assert_eq!(get_ci_value(&v, "straße"), None);
        assert_eq!(get_ci_value(&v, "strasse"), Some(&json!(1)));
    }
}
