//! The bodies setup sends: the three kinds of custom extension and the assignment policy's
//! PUT, in exactly the schema's names (`timeoutDuration`, not the docs' `durationBeforeTimeout`;
//! no `value` wrapper; `@odata.type` on derived types).

use serde_json::{Value, json};

use super::spec::{ElmSpec, LcwSpec, LogicApp, PimSpec, Spec};
use crate::auth::IngressMode;

/// The two entitlement-management extension types: the request stages run the first, the
/// pre-expiration stages the second.
pub const REQUEST_TYPE: &str = "#microsoft.graph.accessPackageAssignmentRequestWorkflowExtension";
pub const ASSIGNMENT_TYPE: &str = "#microsoft.graph.accessPackageAssignmentWorkflowExtension";
pub const TASK_TYPE: &str = "#microsoft.graph.identityGovernance.customTaskExtension";
pub const PIM_TYPE: &str = "#microsoft.graph.roleManagementCustomCalloutExtension";

pub(super) fn is_expiry_stage(stage: &str) -> bool {
    stage.ends_with("BeforeExpiration")
}

fn logic_app_endpoint(la: &LogicApp, url: Option<&str>) -> Value {
    let mut e = json!({
        "@odata.type": "#microsoft.graph.logicAppTriggerEndpointConfiguration",
        "subscriptionId": la.subscription_id,
        "resourceGroupName": la.resource_group,
        "logicAppWorkflowName": la.name,
    });
    if let Some(u) = url {
        e["url"] = json!(u);
    }
    e
}

/// The extension as the setup file wants it (schema names: `timeoutDuration`, not the docs'
/// `durationBeforeTimeout`; no `value` wrapper).
pub fn elm_body(e: &ElmSpec, spec: &Spec, type_name: &str, display_name: &str) -> Value {
    let d = &spec.deployment;
    let url = match d.mode {
        IngressMode::Relay => d.logic_app_url.clone(),
        IngressMode::Direct => d.url.as_ref().map(|u| u.join("/api/elm")),
    };
    let la = d.logic_app.clone().unwrap_or_else(|| LogicApp {
        resource_id: String::new(),
        subscription_id: String::new(),
        resource_group: String::new(),
        name: String::new(),
    });
    json!({
        "@odata.type": type_name,
        "displayName": display_name,
        "description": e.description,
        "endpointConfiguration": logic_app_endpoint(&la, url.as_deref()),
        "authenticationConfiguration": {
            "@odata.type": "#microsoft.graph.azureAdPopTokenAuthentication"
        },
        "callbackConfiguration": {
            "@odata.type": "#microsoft.graph.customExtensionCallbackConfiguration",
            "timeoutDuration": e.callback_timeout.0,
        }
    })
}

/// The task extension's trigger URL: the setup file's, or accessgate's own in direct mode.
pub(super) fn lcw_url(l: &LcwSpec, spec: &Spec) -> Option<String> {
    l.logic_app_url
        .clone()
        .or_else(|| match spec.deployment.mode {
            IngressMode::Direct => spec.deployment.url.as_ref().map(|u| u.join("/api/elm")),
            IngressMode::Relay => None,
        })
}

pub fn lcw_body(l: &LcwSpec, spec: &Spec) -> Value {
    let url = lcw_url(l, spec);
    json!({
        "@odata.type": TASK_TYPE,
        "displayName": l.display_name,
        "description": l.description,
        "endpointConfiguration": logic_app_endpoint(&l.logic_app, url.as_deref()),
        "authenticationConfiguration": {
            "@odata.type": "#microsoft.graph.azureAdPopTokenAuthentication"
        },
        "clientConfiguration": {
            "@odata.type": "#microsoft.graph.customExtensionClientConfiguration",
            "maximumRetries": 1,
            "timeoutInMilliseconds": 2000
        },
        "callbackConfiguration": {
            "@odata.type": "#microsoft.graph.identityGovernance.customTaskExtensionCallbackConfiguration",
            "timeoutDuration": l.callback_timeout.0,
        }
    })
}

pub fn pim_body(p: &PimSpec, spec: &Spec) -> Value {
    let target = spec
        .deployment
        .url
        .as_ref()
        .map(|u| u.join(&format!("/api/pim/{}", p.name)))
        .unwrap_or_default();
    let mut v = json!({
        "@odata.type": PIM_TYPE,
        "displayName": p.display_name,
        "description": p.description,
        "endpointConfiguration": {
            "@odata.type": "#microsoft.graph.httpRequestEndpoint",
            "targetUrl": target
        },
        "authenticationConfiguration": {
            "@odata.type": "#microsoft.graph.azureAdTokenAuthentication",
            "resourceId": p.audience
        },
        "clientConfiguration": {
            "@odata.type": "#microsoft.graph.customExtensionClientConfiguration",
            "timeoutInMilliseconds": p.timeout_ms,
            "maximumRetries": p.maximum_retries
        },
        "resourceType": p.resource_type,
    });
    if p.post_approval {
        v["type"] = json!("postApproval");
    }
    v
}

/// The writable part of a policy read with its stage settings, with `settings` as its new
/// stage settings (PUT replaces the whole policy; read-only and expanded parts are dropped).
pub(super) fn policy_put_body(policy: &Value, package_id: &str, settings: Vec<Value>) -> Value {
    let mut body = policy.as_object().cloned().unwrap_or_default();
    for k in [
        "@odata.context",
        "@odata.etag",
        "createdDateTime",
        "modifiedDateTime",
        "accessPackage",
        "catalog",
        "customExtensionStageSettings@odata.context",
        "questions@odata.context",
    ] {
        body.remove(k);
    }
    // The docs' PUT examples name the policy's package; the questions (read with
    // $expand=questions) are sent back, or PUT would remove them.
    body.insert("accessPackage".into(), json!({ "id": package_id }));
    body.retain(|k, _| {
        !k.contains("@odata.navigationLink") && !k.ends_with("@odata.associationLink")
    });
    body.insert(
        "customExtensionStageSettings".into(),
        Value::Array(settings),
    );
    Value::Object(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_body_uses_the_schema_names_the_docs_example_does_not() {
        // The docs example (tests/fixtures/setup) says durationBeforeTimeout; the schema says
        // timeoutDuration, and the body is not wrapped in value.
        let example: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/setup/elm-customworkflowextension-create-example-1.json"
        ))
        .unwrap();
        assert!(example["callbackConfiguration"]["durationBeforeTimeout"].is_string());
        let spec = Spec::parse(
            "[deployment]\nlogic_app_resource_id = \"/subscriptions/38ab2ccc-3747-4567-b36b-9478f5602f0d/resourceGroups/test/providers/Microsoft.Logic/workflows/elm-extension-email\"\nlogic_app_url = \"https://prod-31.eastus.logic.azure.com/workflows/8c/triggers/manual/paths/invoke?api-version=2016-10-01\"\nprincipal_id = \"5f2c3b1e-0000-4000-8000-000000000001\"\n[access_packages]\ncatalog = \"General\"\n",
            &Default::default(),
        )
        .unwrap();
        let e = spec.elm.as_ref().unwrap();
        let body = elm_body(e, &spec, REQUEST_TYPE, &e.display_name);
        assert!(body.get("value").is_none());
        assert_eq!(body["@odata.type"], example["@odata.type"]);
        assert_eq!(
            body["endpointConfiguration"]["subscriptionId"],
            example["endpointConfiguration"]["subscriptionId"]
        );
        assert_eq!(
            body["endpointConfiguration"]["logicAppWorkflowName"],
            example["endpointConfiguration"]["logicAppWorkflowName"]
        );
        assert_eq!(
            body["authenticationConfiguration"],
            example["authenticationConfiguration"]
        );
        assert_eq!(body["callbackConfiguration"]["timeoutDuration"], "P1D");
        assert!(
            body["callbackConfiguration"]
                .get("durationBeforeTimeout")
                .is_none()
        );
        assert!(
            body["endpointConfiguration"]["url"]
                .as_str()
                .unwrap()
                .ends_with("api-version=2016-10-01")
        );
    }

    #[test]
    fn the_put_body_drops_read_only_and_expanded_parts() {
        let policy = json!({
            "@odata.context": "x", "id": "p1", "displayName": "Employees",
            "createdDateTime": "2026-01-01T00:00:00Z", "modifiedDateTime": "2026-01-01T00:00:00Z",
            "accessPackage": {"id": "a"}, "allowedTargetScope": "allMemberUsers",
            "customExtensionStageSettings": [{"id": "s", "stage": "assignmentRequestGranted", "customExtension": {"id": "e", "displayName": "x"}}]
        });
        let body = policy_put_body(
            &policy,
            "a",
            vec![json!({"stage": "assignmentRequestCreated", "customExtension": {"id": "n"}})],
        );
        let mut keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "accessPackage",
                "allowedTargetScope",
                "customExtensionStageSettings",
                "displayName",
                "id"
            ]
        );
    }
}
