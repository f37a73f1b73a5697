//! schema/policy.schema.json is held to the loader: every example policy passes both, and bad
//! policies are refused by both (the schema for editors, the loader for the service).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use accessgate::policy::Policy;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("schema/policy.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

fn as_json(toml_text: &str) -> serde_json::Value {
    let v: toml::Value = toml::from_str(toml_text).unwrap();
    serde_json::to_value(v).unwrap()
}

#[test]
fn every_example_policy_passes_the_schema_and_the_loader() {
    let v = validator();
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("examples/policies")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.extension().is_none_or(|e| e != "toml") || name.ends_with("-tests.toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let errors: Vec<String> = v
            .iter_errors(&as_json(&text))
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name} fails the schema: {errors:#?}");
        if let Err(e) = Policy::parse(&text) {
            panic!("{name} fails to load: {e:#?}");
        }
        seen += 1;
    }
    assert!(seen >= 2, "expected the example policies, found {seen}");
}

#[test]
fn bad_policies_are_refused_by_schema_and_loader() {
    let v = validator();
    for (why, text) in [
        ("unknown top-level key", "colour = \"blue\"\n"),
        ("unknown mode", "[defaults]\nmode = \"maybe\"\n"),
        (
            "rule with checks and a decision",
            "[checks.hr]\n[[rules]]\nname = \"r\"\nchecks = [\"hr\"]\ndecision = \"deny\"\n",
        ),
        ("rule with neither", "[[rules]]\nname = \"r\"\n"),
        (
            "unknown stage",
            "[[rules]]\nname = \"r\"\nstages = [\"later\"]\ndecision = \"deny\"\n",
        ),
        (
            "risk with one set",
            "[packages.a]\nid = \"1\"\n[[risks]]\nname = \"x\"\nseverity = \"low\"\nowner = \"o\"\nsets = [{ access_packages = [\"a\"] }]\n",
        ),
        ("unknown check type", "[checks.x]\ntype = \"astrology\"\n"),
        (
            "unknown hr setting",
            "[checks.hr]\ntype = \"hr\"\nbogus = true\n",
        ),
        (
            "ticket without states",
            "[checks.t]\ntype = \"servicenow_ticket\"\ntable = \"incident\"\n",
        ),
    ] {
        assert!(!v.is_valid(&as_json(text)), "schema accepted: {why}");
        assert!(Policy::parse(text).is_err(), "loader accepted: {why}");
    }
}
