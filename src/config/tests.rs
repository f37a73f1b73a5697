//! config's own tests: the layering of file and environment, and the assembled `Config`.
//! Each section's own checks are tested next to its `Settings`.

use super::*;
use crate::auth::settings::{ELM_APP_ID, LCW_APP_ID, normalize_resource};
use crate::auth::{IngressMode, PopAlgorithm};
use crate::credentials::CredentialMode;

const GOOD: &str = r#"
[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
[inbound]
audiences = ["api://accessgate"]
[credentials]
client_id = "aaaaaaaa-0000-0000-0000-000000000001"
"#;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn good_config_with_secret_from_env_loads_with_defaults() {
    let c = from_sources(
        GOOD,
        &env(&[("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "s3cret")]),
        Path::new("."),
    )
    .unwrap();
    match &c.credentials.mode {
        CredentialMode::ClientSecret { secret, .. } => assert_eq!(secret.expose(), "s3cret"),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.graph.base_url.base(), "https://graph.microsoft.com");
    assert_eq!(
        c.identity.authority.base(),
        "https://login.microsoftonline.com"
    );
    assert_eq!(c.inbound.allowed_app_ids, vec![ELM_APP_ID, LCW_APP_ID]);
    assert_eq!(c.server.max_body_bytes, 1024 * 1024);
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn env_overrides_win_and_parse_numbers() {
    let c = from_sources(
        GOOD,
        &env(&[
            ("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x"),
            ("ACCESSGATE_WORKER__CONCURRENCY", "7"),
            ("ACCESSGATE_IDENTITY__CLOUD", "usgov"),
        ]),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.worker.concurrency, 7);
    assert_eq!(c.graph.base_url.base(), "https://graph.microsoft.us");
    assert_eq!(c.graph.scope, "https://graph.microsoft.us/.default");
}

#[test]
fn every_problem_is_reported_at_once() {
    let bad = r#"
[identity]
tenant_id = "contoso.onmicrosoft.com"
authority = "http://login.example.com"
[graph]
base_url = "http://graph.example.com"
[worker]
default_callback_timeout = "an hour"
[nonsense]
x = 1
"#;
    let errs = from_sources(bad, &env(&[]), Path::new("."))
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
    let settings: Vec<&str> = errs.iter().map(|p| p.setting.as_str()).collect();
    for s in [
        "identity.tenant_id",
        "identity.authority",
        "graph.base_url",
        "credentials.client_id",
        "credentials.client_secret",
        "extensions",
        "worker.default_callback_timeout",
        "nonsense",
    ] {
        assert!(settings.contains(&s), "missing {s} in {settings:?}");
    }
}

const RES: &str = "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg/providers/Microsoft.Logic/workflows/la";

#[test]
fn extensions_from_file_and_environment() {
    let text = format!(
        "{GOOD}[extensions.finance]\nresource = \"{RES}\"\ncatalog_ids = [\"C0000000-0000-0000-0000-000000000001\"]\n"
    );
    let c = from_sources(
        &text,
        &env(&[
            ("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x"),
            ("ACCESSGATE_EXTENSIONS__HR__RESOURCE", &format!("{RES}-hr")),
            ("ACCESSGATE_EXTENSIONS__HR__HOST", "Management.Azure.com"),
        ]),
        Path::new("."),
    )
    .unwrap();
    let names: Vec<&str> = c.extensions.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["finance", "hr"]);
    let fin = &c.extensions[0];
    assert_eq!(fin.host, "management.azure.com");
    assert_eq!(fin.resource_key, normalize_resource(RES));
    assert!(fin.serves_catalog(Some("c0000000-0000-0000-0000-000000000001")));
    assert!(!fin.serves_catalog(Some("c0000000-0000-0000-0000-000000000002")));
    assert!(!fin.serves_catalog(None));
    assert!(c.extensions[1].serves_catalog(None));
    assert_eq!(c.extensions[1].host, "management.azure.com");
    assert_eq!(c.inbound.mode, IngressMode::Direct);
    assert_eq!(
        c.inbound.pop.algorithms,
        [PopAlgorithm::Rs256, PopAlgorithm::Ps256]
    );
    assert_eq!(c.inbound.pop.lifetime, Duration::from_secs(300));
    assert_eq!(c.inbound.pop.future_skew, Duration::from_secs(60));
}

#[test]
fn every_string_key_is_a_setting_of_its_section() {
    for (sec, keys) in STRING_KEYS {
        for key in *keys {
            let var = format!("ACCESSGATE_{}__{}", sec.to_uppercase(), key.to_uppercase());
            let errs = from_sources("", &env(&[(&var, "x")]), Path::new("."))
                .err()
                .map(|e| e.0)
                .unwrap_or_default();
            assert!(
                !errs.iter().any(|p| p.message.contains("unknown field")),
                "{var}: {errs:?}"
            );
        }
    }
}

#[test]
fn unknown_key_in_a_section_is_named() {
    let errs = from_sources("[server]\nlisten_addr = \"x\"\n", &env(&[]), Path::new("."))
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
    assert!(
        errs.iter().any(|p| p.setting == "server.listen_addr"
            && p.message.starts_with("unknown key; did you mean `listen`?")),
        "{errs:?}"
    );
}

#[test]
fn reserved_variables_are_not_overrides_and_numeric_secrets_stay_strings() {
    let c = from_sources(
        GOOD,
        &env(&[
            ("ACCESSGATE_CONFIG", "x.toml"),
            ("ACCESSGATE_LOG", "debug"),
            ("ACCESSGATE_EMULATOR_PORT", "7700"),
            ("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "12345678"),
        ]),
        Path::new("."),
    )
    .unwrap();
    match &c.credentials.mode {
        CredentialMode::ClientSecret { secret, .. } => assert_eq!(secret.expose(), "12345678"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn type_errors_never_print_the_value() {
    let text = format!("{GOOD}client_secret = 987654321\n");
    let errs = from_sources(&text, &env(&[]), Path::new("."))
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
    let all = format!("{errs:?}");
    assert!(
        errs.iter().any(|p| p.setting == "credentials.client_secret"
            && p.message.starts_with("expected a string, got an integer")),
        "{all}"
    );
    assert!(!all.contains("987654321"), "{all}");
}

const BASE: &str = r#"
[identity]
tenant_id = "11111111-2222-3333-4444-555555555555"
[inbound]
audiences = ["api://accessgate"]
"#;
const APP: &str = "aaaaaaaa-0000-0000-0000-000000000001";

#[test]
fn national_clouds_pick_their_key_vault_audience() {
    let c = from_sources(
        &format!("{BASE}[credentials]\nclient_id = \"{APP}\"\n"),
        &env(&[
            ("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x"),
            ("ACCESSGATE_IDENTITY__CLOUD", "china"),
        ]),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(c.credentials.key_vault_resource, "https://vault.azure.cn");
    assert_eq!(
        c.graph.base_url.base(),
        "https://microsoftgraph.chinacloudapi.cn"
    );
    assert_eq!(
        c.identity.authority.base(),
        "https://login.chinacloudapi.cn"
    );
}

#[test]
fn near_misses_are_suggested_for_values_sections_and_variables() {
    let errs = from_sources(
        &format!("{GOOD}[log]\nformat = \"jsn\"\n[wroker]\nx = 1\n"),
        &env(&[
            ("ACCESSGATE_WORKER_CONCURRENCY", "4"),
            ("ACCESSGATE_QUEU__BACKEND", "sqlite"),
            ("ACCESSGATE_WORKER__CONCURENCY", "4"),
        ]),
        Path::new("."),
    )
    .err()
    .map(|e| e.0)
    .unwrap_or_default();
    let all: Vec<String> = errs.iter().map(ToString::to_string).collect();
    for want in [
        "log.format: must be text or json (did you mean json?) (config file line 9)",
        "wroker: unknown section; did you mean [worker]?",
        "ACCESSGATE_WORKER_CONCURRENCY: environment overrides are ACCESSGATE_<SECTION>__<KEY>, e.g. ACCESSGATE_CREDENTIALS__CLIENT_SECRET (did you mean ACCESSGATE_WORKER__CONCURRENCY?)",
        "queu: unknown section; did you mean [queue]?",
        "(from ACCESSGATE_QUEU__BACKEND)",
        "worker.concurency: unknown key; did you mean `concurrency`?",
        "(from ACCESSGATE_WORKER__CONCURENCY)",
    ] {
        assert!(
            all.iter().any(|l| l.contains(want)),
            "missing {want:?} in {all:#?}"
        );
    }
}

#[test]
fn a_module_message_that_quotes_its_value_has_it_redacted() {
    let errs = from_sources(
        &GOOD.replace(
            "[inbound]\n",
            "[inbound]\nallowed_app_ids = [\"Zq8-pasted-secret\", \"ab\"]\n",
        ),
        &env(&[(
            "ACCESSGATE_INBOUND__POP_ALGORITHMS",
            "[\"sEcReT-alg-value\"]",
        )]),
        Path::new("."),
    )
    .err()
    .map(|e| e.0)
    .unwrap_or_default();
    let all = format!("{errs:?}");
    assert!(
        errs.iter().any(|p| p.setting == "inbound.allowed_app_ids"),
        "{all}"
    );
    assert!(
        errs.iter().any(|p| p.setting == "inbound.pop_algorithms"),
        "{all}"
    );
    assert!(!all.contains("Zq8-pasted-secret"), "{all}");
    assert!(!all.contains("\"ab\""), "{all}");
    assert!(!all.contains("sEcReT-alg-value"), "{all}");
}

#[test]
fn lifecycle_and_pim_settings_are_checked() {
    let load = |extra: &str| {
        from_sources(
            &format!("{GOOD}{extra}"),
            &env(&[("ACCESSGATE_CREDENTIALS__CLIENT_SECRET", "x")]),
            Path::new("."),
        )
    };
    let c = load(&format!(
        "[extensions.tasks]\nresource = \"{RES}\"\nkind = \"lifecycle_workflows\"\ncallback_timeout = \"PT30M\"\n[pim]\naudiences = [\"api://accessgate/x\"]\n[pim.extensions.post]\npost_approval = true\n"
    ))
    .unwrap();
    assert_eq!(c.extensions[0].callback_timeout, Duration::from_secs(1800));
    let pim = c.pim.expect("pim on");
    assert_eq!(pim.default.budget, Duration::from_millis(5000));
    assert!(pim.callers.contains(crate::pim::settings::PIM_APP_ID));
    assert_eq!(pim.never_auto_approve.len(), 2);
    assert!(pim.extension(Some("post")).is_some_and(|e| e.post_approval));
    // Without [pim], PIM is off.
    assert!(load("").unwrap().pim.is_none());
    let errs = |extra: &str| load(extra).err().map(|e| e.to_string()).unwrap_or_default();
    for (extra, want) in [
        (
            format!("[extensions.t]\nresource = \"{RES}\"\nkind = \"lcw\"\n"),
            "extensions.t.kind",
        ),
        (
            format!(
                "[extensions.t]\nresource = \"{RES}\"\nkind = \"lifecycle_workflows\"\ncallback_timeout = \"PT4H\"\n"
            ),
            "PT5M to PT3H",
        ),
        (
            format!("[extensions.t]\nresource = \"{RES}\"\ncallback_timeout = \"PT1H\"\n"),
            "only for lifecycle_workflows",
        ),
        (
            format!(
                "[extensions.t]\nresource = \"{RES}\"\nkind = \"lifecycle_workflows\"\ncatalog_ids = [\"c0000000-0000-0000-0000-000000000001\"]\n"
            ),
            "has no catalogs",
        ),
        ("[pim]\nbudget_ms = 3000\n".into(), "pim.audiences"),
        (
            "[pim]\naudiences = [\"api://a\"]\nbudget_ms = 50\n".into(),
            "pim.budget_ms",
        ),
        (
            "[pim]\naudiences = [\"api://a\"]\ncaller_app_ids = [\"pim\"]\n".into(),
            "pim.caller_app_ids",
        ),
        (
            "[pim]\naudiences = [\"api://a\"]\n[pim.extensions.\"a/b\"]\n".into(),
            "URL segment",
        ),
    ] {
        let e = errs(&extra);
        assert!(e.contains(want), "{want}: {e}");
    }
}
