//! host.json and function-app/*/function.json agree with the handler: function names, binding
//! names, queue names, the route Entra calls, and the payload protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use accessgate::functions::{OUT_DEAD_LETTER, OUT_HTTP, OUT_JOB};
use serde_json::Value;

fn read(path: &str) -> Value {
    let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}")))
        .unwrap()
}

fn binding<'a>(f: &'a Value, direction: &str, kind: &str) -> &'a Value {
    f["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["direction"] == direction && b["type"] == kind)
        .unwrap_or_else(|| panic!("no {direction} {kind} binding in {f}"))
}

#[test]
fn host_json_runs_this_binary_with_the_payload_protocol() {
    let host = read("host.json");
    let ch = &host["customHandler"];
    assert_eq!(ch["description"]["defaultExecutablePath"], "accessgate");
    assert_eq!(
        ch["description"]["arguments"],
        serde_json::json!(["functions"])
    );
    // An HTTP trigger with a queue output cannot be forwarded (functions.md §3).
    assert_eq!(ch["enableForwardingHttpRequest"], false);
    assert_eq!(
        host["extensionBundle"]["id"],
        "Microsoft.Azure.Functions.ExtensionBundle"
    );
    assert!(
        host["extensions"]["queues"]["maxDequeueCount"]
            .as_u64()
            .unwrap()
            >= 5
    );
}

#[test]
fn functions_bind_the_names_the_handler_uses() {
    let host = read("host.json");
    let http = read("function-app/ElmCallout/function.json");
    let trigger = binding(&http, "in", "httpTrigger");
    assert_eq!(trigger["name"], "req");
    assert_eq!(
        trigger["authLevel"], "anonymous",
        "Entra sends its own token; no function key"
    );
    assert_eq!(trigger["methods"], serde_json::json!(["post"]));
    // The Functions URL is the same path as the standalone server's.
    let url = format!(
        "/{}/{}",
        host["extensions"]["http"]["routePrefix"].as_str().unwrap(),
        trigger["route"].as_str().unwrap()
    );
    assert!(
        accessgate::ingress::ROUTES.contains(&("post", url.as_str())),
        "{url}"
    );
    assert_eq!(binding(&http, "out", "http")["name"], OUT_HTTP);
    let out = binding(&http, "out", "queue");
    assert_eq!(out["name"], OUT_JOB);
    let queue = out["queueName"].as_str().unwrap();

    let worker = read("function-app/ProcessJob/function.json");
    let t = binding(&worker, "in", "queueTrigger");
    assert_eq!(
        (t["name"].as_str(), t["queueName"].as_str()),
        (Some("job"), Some(queue))
    );
    assert_eq!(binding(&worker, "out", "blob")["name"], OUT_DEAD_LETTER);

    let poison = read("function-app/PoisonJob/function.json");
    let t = binding(&poison, "in", "queueTrigger");
    let poison_queue = format!("{queue}-poison");
    assert_eq!(
        (t["name"].as_str(), t["queueName"].as_str()),
        (Some("poison"), Some(poison_queue.as_str()))
    );
    assert_eq!(binding(&poison, "out", "blob")["name"], OUT_DEAD_LETTER);
}
