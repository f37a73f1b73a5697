//! How setup compares what Graph holds with what the setup file wants, liberally (Graph's
//! answers and its documentation disagree on names and shapes), and prints the difference.

use serde_json::Value;

/// `@odata.type` values compare without the leading `#` and case.
fn same_type(a: &str, b: &str) -> bool {
    a.trim_start_matches('#')
        .eq_ignore_ascii_case(b.trim_start_matches('#'))
}

/// URLs compare as parsed: host case and a default port (`:443`) do not count.
fn same_url(a: &str, b: &str) -> bool {
    match (url::Url::parse(a), url::Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

pub(super) fn same_value(key: &str, current: &Value, desired: &Value) -> bool {
    match (current, desired) {
        // Graph leaves the type out where it is not a derived one (e.g. a task extension in
        // its list): an absent type is no difference.
        (Value::Null, _) if key == "@odata.type" => true,
        (Value::String(c), Value::String(d)) if key == "@odata.type" => same_type(c, d),
        (Value::String(c), Value::String(d)) if key.ends_with("Duration") => {
            crate::callout::parse_iso_duration(c) == crate::callout::parse_iso_duration(d)
        }
        (Value::String(c), Value::String(d)) if key == "subscriptionId" => {
            c.eq_ignore_ascii_case(d)
        }
        (Value::String(c), Value::String(d)) if key == "url" || key == "targetUrl" => {
            same_url(c, d)
        }
        (Value::Object(_), Value::Object(_)) => differences("", current, desired).is_empty(),
        _ => current == desired,
    }
}

/// The current value of `k`: the docs' answers name the callback timeout
/// `durationBeforeTimeout`, the schema `timeoutDuration`; both are read.
fn current_of<'a>(current: &'a Value, k: &str) -> &'a Value {
    match &current[k] {
        Value::Null if k == "timeoutDuration" => &current["durationBeforeTimeout"],
        v => v,
    }
}

/// The fields of `desired` that `current` does not hold (nested objects by their path).
pub(super) fn differences(at: &str, current: &Value, desired: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(d) = desired.as_object() else {
        return out;
    };
    for (k, dv) in d {
        let cv = current_of(current, k);
        let path = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        if dv.is_object() && cv.is_object() {
            // A changed type replaces the whole object.
            if !same_value("@odata.type", &cv["@odata.type"], &dv["@odata.type"]) {
                out.push(format!("~ {path}: {} -> {}", short(cv), short(dv)));
            } else {
                out.extend(differences(&path, cv, dv));
            }
        } else if !same_value(k, cv, dv) {
            if cv.is_null() {
                out.push(format!("+ {path}: {}", short(dv)));
            } else {
                out.push(format!("~ {path}: {} -> {}", short(cv), short(dv)));
            }
        }
    }
    out
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(m) => m
            .get("@odata.type")
            .and_then(Value::as_str)
            .map_or_else(|| v.to_string(), |t| t.trim_start_matches('#').to_owned()),
        other => other.to_string(),
    }
}

/// A PATCH body: the type plus every top-level property that differs.
pub(super) fn patch_body(current: &Value, desired: &Value) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(t) = desired.get("@odata.type") {
        body.insert("@odata.type".into(), t.clone());
    }
    if let Some(d) = desired.as_object() {
        for (k, dv) in d {
            if k != "@odata.type" && k != "id" && !same_value(k, current_of(current, k), dv) {
                body.insert(k.clone(), dv.clone());
            }
        }
    }
    Value::Object(body)
}

/// The diff lines of a create: every property, one per line.
pub(super) fn created_lines(at: &str, v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(m) = v.as_object() {
        for (k, dv) in m {
            if k == "@odata.type" && !at.is_empty() {
                continue;
            }
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if dv.is_object() {
                out.push(format!("+ {path}: {}", short(dv)));
                out.extend(created_lines(&path, dv));
            } else {
                out.push(format!("+ {path}: {}", short(dv)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_read_durations_and_types_liberally() {
        let cur = json!({
            "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension",
            "displayName": "accessgate",
            "authenticationConfiguration": {"@odata.type": "microsoft.graph.azureAdPopTokenAuthentication"},
            "callbackConfiguration": {"@odata.type": "#microsoft.graph.customExtensionCallbackConfiguration", "timeoutDuration": "PT24H"},
            "endpointConfiguration": {"@odata.type": "#microsoft.graph.logicAppTriggerEndpointConfiguration", "subscriptionId": "ABC", "url": null}
        });
        let want = json!({
            "@odata.type": "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension",
            "displayName": "accessgate",
            "authenticationConfiguration": {"@odata.type": "#microsoft.graph.azureAdPopTokenAuthentication"},
            "callbackConfiguration": {"@odata.type": "#microsoft.graph.customExtensionCallbackConfiguration", "timeoutDuration": "P1D"},
            "endpointConfiguration": {"@odata.type": "#microsoft.graph.logicAppTriggerEndpointConfiguration", "subscriptionId": "abc", "url": "https://x"}
        });
        let d = differences("", &cur, &want);
        assert_eq!(d, vec!["+ endpointConfiguration.url: \"https://x\""]);
        let p = patch_body(&cur, &want);
        let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["@odata.type", "endpointConfiguration"]);
    }

    #[test]
    fn a_changed_authentication_type_replaces_the_object() {
        let cur = json!({"authenticationConfiguration": {"@odata.type": "#microsoft.graph.azureAdTokenAuthentication", "resourceId": "x"}});
        let want = json!({"authenticationConfiguration": {"@odata.type": "#microsoft.graph.azureAdPopTokenAuthentication"}});
        assert_eq!(
            differences("", &cur, &want),
            vec![
                "~ authenticationConfiguration: microsoft.graph.azureAdTokenAuthentication -> microsoft.graph.azureAdPopTokenAuthentication"
            ]
        );
    }
}
