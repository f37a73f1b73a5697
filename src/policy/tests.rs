//! Engine tests with stand-in checks: how verdicts combine, timeouts, modes, stages, texts; and
//! load errors of the format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::callout::{Parsed, parse};
use crate::checks::{Check, CheckCtx, Finding, Verdict};
use crate::directory::fixtures::{FixtureDirectory, World};
use crate::tickets::NoTickets;

#[derive(Debug)]
struct Fixed {
    verdict: Verdict,
    delay: Duration,
    needs: Needs,
    note: Option<&'static str>,
}

#[async_trait::async_trait]
impl Check for Fixed {
    fn kind(&self) -> &'static str {
        "fixed"
    }
    fn needs(&self) -> Needs {
        self.needs
    }
    async fn evaluate(&self, _ctx: &CheckCtx<'_>) -> Finding {
        tokio::time::sleep(self.delay).await;
        let f = Finding::new(self.verdict.clone(), vec!["stand-in".into()]);
        match self.note {
            Some(n) => f.with_note(n),
            None => f,
        }
    }
}

fn entry(name: &str, verdict: Verdict, delay_ms: u64) -> CheckEntry {
    CheckEntry {
        name: name.into(),
        timeout: Duration::from_millis(200),
        check: Arc::new(Fixed {
            verdict,
            delay: Duration::from_millis(delay_ms),
            needs: Needs::default(),
            note: None,
        }),
    }
}

fn callout(stage: &str) -> Callout {
    let body = format!(
        r#"{{"Stage":"{stage}","CustomExtensionStageInstanceId":"s","AccessPackageAssignmentRequestId":"r",
        "AccessPackageCatalog":{{"Id":"c1","DisplayName":"Finance"}},"AccessPackage":{{"Id":"p1","DisplayName":"Payments run"}},
        "Assignment":{{"Target":{{"ObjectId":"u1","DisplayName":"Alice"}}}}}}"#
    );
    match parse(body.as_bytes()) {
        Ok(Parsed::Callout(c)) => *c,
        other => panic!("{other:?}"),
    }
}

fn policy_with(checks: Vec<CheckEntry>, mode: Mode, on_error: OnError) -> Policy {
    let n = checks.len();
    Policy {
        rules: vec![Rule {
            name: "r".into(),
            catalogs: vec![],
            packages: vec![],
            stages: None,
            checks: (0..n).collect(),
            decision: None,
            mode,
            on_error,
            texts: Texts::defaults(),
            ticket: None,
            approvals: RuleApprovals::default(),
            tasks: None,
        }],
        checks,
        ..Policy::default()
    }
}

async fn decide(p: &Policy, c: &Callout) -> Decision {
    let dir = FixtureDirectory {
        world: World::default(),
        external_attribute: None,
    };
    let env = DecideEnv {
        directory: &dir,
        tickets: &NoTickets,
        now: jiff::Timestamp::now(),
        deadline: Instant::now() + Duration::from_secs(5),
    };
    p.decide(c, &env).await
}

#[test]
fn built_in_texts_parse() {
    for t in [
        DEFAULT_ALLOW,
        DEFAULT_DENY,
        DEFAULT_ERROR,
        DEFAULT_AUDIT,
        DEFAULT_NOTIFY,
        NO_RULE,
    ] {
        assert!(Template::parse(t).is_ok(), "{t}");
    }
}

#[tokio::test]
async fn any_deny_denies_and_every_outcome_is_listed() {
    let p = policy_with(
        vec![
            entry("a", Verdict::Allow, 0),
            entry("b", Verdict::deny("holds X"), 0),
            entry("c", Verdict::error("down"), 0),
        ],
        Mode::Enforce,
        OnError::Continue,
    );
    let d = decide(&p, &callout("assignmentRequestCreated")).await;
    assert_eq!(d.action, Action::Deny);
    assert_eq!(d.outcomes.len(), 3);
    assert_eq!(d.detail, "accessgate denied this request: b: holds X");
    assert!(
        d.incomplete.is_none(),
        "a deny is final whatever the error would say"
    );
}

#[tokio::test]
async fn errors_follow_on_error_and_mark_the_decision_incomplete() {
    for (on_error, want) in [
        (OnError::Deny, Action::Deny),
        (OnError::Continue, Action::Continue),
    ] {
        let p = policy_with(
            vec![
                entry("a", Verdict::Allow, 0),
                entry("c", Verdict::error("down"), 0),
            ],
            Mode::Enforce,
            on_error,
        );
        let d = decide(&p, &callout("assignmentRequestCreated")).await;
        assert_eq!(d.action, want);
        assert_eq!(d.incomplete.as_deref(), Some("c: down"));
        assert!(
            d.detail
                .contains(&format!("the request is {}", want.word())),
            "{}",
            d.detail
        );
    }
}

#[tokio::test]
async fn checks_run_in_parallel_and_a_slow_one_times_out_as_an_error() {
    let p = policy_with(
        vec![
            entry("slow1", Verdict::Allow, 150),
            entry("slow2", Verdict::Allow, 150),
            entry("stuck", Verdict::Allow, 10_000),
        ],
        Mode::Enforce,
        OnError::Deny,
    );
    let started = Instant::now();
    let d = decide(&p, &callout("assignmentRequestCreated")).await;
    // Bounded by the 200 ms timeout, not the sum of the checks (310 ms) or the stuck one.
    assert!(started.elapsed() < Duration::from_secs(2));
    let stuck = d
        .outcomes
        .iter()
        .find(|o| o.check == "stuck")
        .map(|o| o.finding.verdict.clone());
    assert!(matches!(stuck, Some(Verdict::Error { .. })), "{stuck:?}");
    assert_eq!(d.action, Action::Deny);
    assert!(
        d.outcomes
            .iter()
            .filter(|o| o.finding.verdict == Verdict::Allow)
            .count()
            == 2
    );
}

#[tokio::test]
async fn audit_mode_continues_and_says_what_enforce_would_do() {
    let p = policy_with(
        vec![entry("b", Verdict::deny("holds X"), 0)],
        Mode::Audit,
        OnError::Deny,
    );
    let d = decide(&p, &callout("assignmentRequestCreated")).await;
    assert_eq!((d.action, d.mode), (Action::Continue, Mode::Audit));
    assert!(d.detail.contains("would deny"), "{}", d.detail);
    assert!(d.detail.contains("holds X"), "{}", d.detail);
}

#[tokio::test]
async fn stages_that_cannot_deny_only_report() {
    let p = policy_with(
        vec![entry("b", Verdict::deny("holds X"), 0)],
        Mode::Enforce,
        OnError::Deny,
    );
    let d = decide(&p, &callout("assignmentRequestGranted")).await;
    assert_eq!(d.action, Action::Continue);
    assert!(!d.can_deny);
    assert!(
        d.detail.contains("cannot be denied") && d.detail.contains("would deny"),
        "{}",
        d.detail
    );
}

#[tokio::test]
async fn allow_texts_carry_notes() {
    let mut e = entry("sod", Verdict::Allow, 0);
    e.check = Arc::new(Fixed {
        verdict: Verdict::Allow,
        delay: Duration::ZERO,
        needs: Needs::default(),
        note: Some("exception EX-1 by cfo@contoso.example applies"),
    });
    let p = policy_with(vec![e], Mode::Enforce, OnError::Deny);
    let d = decide(&p, &callout("assignmentRequestCreated")).await;
    assert_eq!(d.action, Action::Continue);
    assert!(
        d.detail
            .ends_with(". sod: exception EX-1 by cfo@contoso.example applies"),
        "{}",
        d.detail
    );
}

#[tokio::test]
async fn no_rule_continues_and_says_so() {
    let p = Policy::default();
    let d = decide(&p, &callout("assignmentRequestCreated")).await;
    assert_eq!((d.action, d.rule.as_deref()), (Action::Continue, None));
    assert!(
        d.detail.contains("no policy rule applies to Payments run"),
        "{}",
        d.detail
    );
}

#[tokio::test]
async fn first_matching_rule_by_alias_catalog_and_stage() {
    let p = Policy::parse(
        r#"
[packages.pay]
display_name = "Payments run"
[packages.other]
id = "p9"
[[rules]]
name = "other"
access_packages = ["other"]
decision = "deny"
[[rules]]
name = "fin-created"
catalogs = ["finance"]
access_packages = ["pay"]
stages = ["assignmentRequestCreated"]
decision = "deny"
detail = "No payments for {target} at {stage}."
[[rules]]
name = "rest"
decision = "continue"
"#,
    )
    .unwrap();
    let d = decide(&p, &callout("assignmentRequestCreated")).await;
    assert_eq!(
        (d.action, d.rule.as_deref()),
        (Action::Deny, Some("fin-created"))
    );
    assert_eq!(
        d.detail,
        "No payments for Alice at assignmentRequestCreated."
    );
    let d = decide(&p, &callout("assignmentRequestApproved")).await;
    assert_eq!(
        (d.action, d.rule.as_deref()),
        (Action::Continue, Some("rest"))
    );
}

#[test]
fn a_bad_policy_lists_every_error() {
    let errs = Policy::parse(
        r#"
version = 2
[defaults]
check_timeout = "soon"
[defaults.detail]
deny = "Denied: {reasonz}"
[packages.empty]
[checks.hr]
type = "hr"
bogus_setting = 1
[checks.mystery]
type = "astrology"
[[rules]]
name = "a"
access_packages = ["nope"]
stages = ["someday"]
checks = ["missing-check"]
[[rules]]
name = "a"
[[rules]]
name = "b"
checks = ["hr"]
decision = "deny"
"#,
    )
    .err()
    .unwrap_or_default();
    let all = errs.join("\n");
    for want in [
        "version 2",
        "check_timeout",
        "unknown placeholder {reasonz}",
        "packages.empty",
        "checks.hr",
        "bogus_setting",
        "unknown check type \"astrology\"",
        "unknown access package \"nope\"",
        "unknown stage \"someday\"",
        "unknown check \"missing-check\"",
        "[[rules]] \"a\" is defined twice",
        "give checks = [...] or a fixed decision",
        "either checks or a fixed decision",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn stages_that_cannot_deny_are_named_at_load() {
    let p = Policy::parse(
        "[[rules]]\nname = \"x\"\nstages = [\"assignmentRequestCreated\", \"assignmentRequestGranted\"]\ndecision = \"deny\"\n",
    )
    .unwrap();
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("assignmentRequestGranted") && w.contains("notifications only")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("soon"), None);
    assert_eq!(parse_duration("5"), None);
}

#[test]
fn mistakes_are_reported_once_each_with_line_and_suggestion_and_no_follow_on() {
    let errs = Policy::parse(
        r#"[packages.a]
id = "1"
[[risks]]
name = "r"
severity = "hgh"
owner = "o"
sets = [{ acess_packages = ["a"] }, { access_packages = ["a"] }]
[[exceptions]]
user = "u"
risk = "r"
expires = "2099-01-01"
approver = "a"
reason = "b"
[checks.sod]
risks = ["r"]
[[rules]]
name = "x"
checks = ["sod"]
desicion = "deny"
[[rules]]
name = "y"
decision = "deny"
detail = { denny = "no" }
"#,
    )
    .err()
    .unwrap_or_default();
    assert_eq!(
        errs,
        [
            "line 5: [[risks]] \"r\": severity: unknown variant `hgh`; did you mean `high`? (expected one of `low`, `medium`, `high`, `critical`)",
            "line 7: [[risks]] \"r\" set 1: acess_packages: unknown key; did you mean `access_packages`? (expected one of `name`, `functions`, `access_packages`, `groups`, `app_roles`, `entitlements`)",
            "line 19: [[rules]] \"x\": desicion: unknown key; did you mean `decision`? (expected one of `name`, `catalogs`, `access_packages`, `stages`, `checks`, `decision`, `mode`, `on_error`, `detail`, `ticket`, `approval`, `approval_on_deny`, `approval_on_error`, `workflows`, `tasks`, `categories`)",
            "line 23: [[rules]] \"y\": detail: unknown key `denny`; did you mean `deny`? (expected one of `allow`, `deny`, `error`, `audit`, `notify`, `route`)",
        ]
    );
}

#[test]
fn a_nameless_rule_and_a_check_setting_are_still_checked_and_located() {
    let errs = Policy::parse("[checks.hr]\nrequire_manger = true\n[[rules]]\nchecks = [\"hrr\"]\n")
        .err()
        .unwrap_or_default();
    let all = errs.join("\n");
    for want in [
        "line 2: checks.hr.require_manger: unknown key; did you mean `require_manager`?",
        "line 3: [[rules]] entry 1: missing field `name`",
        "line 4: [[rules]] entry 1: unknown check \"hrr\"; did you mean \"hr\"?",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn an_exception_with_missing_fields_is_still_checked() {
    let errs = Policy::parse(
        "[packages.a]\nid = \"1\"\n[packages.b]\nid = \"2\"\n[[risks]]\nname = \"r1\"\nseverity = \"high\"\nowner = \"o\"\nsets = [{ access_packages = [\"a\"] }, { access_packages = [\"b\"] }]\n[[exceptions]]\nuser = \"u\"\nrisk = \"r2\"\nexpires = 2099-01-01\n",
    )
    .err()
    .unwrap_or_default();
    assert_eq!(
        errs,
        [
            "line 10: [[exceptions]] entry 1: missing field `approver`",
            "line 10: [[exceptions]] entry 1: missing field `reason`",
            "line 12: [[exceptions]] entry 1 (user \"u\", risk \"r2\"): unknown risk \"r2\"; did you mean \"r1\"?",
        ]
    );
}

#[test]
fn an_unknown_risk_in_a_sod_check_is_located_with_its_near_miss() {
    let errs = Policy::parse(
        "[packages.a]\nid=\"1\"\n[packages.b]\nid=\"2\"\n[[risks]]\nname=\"pay-vs-approve\"\nseverity=\"low\"\nowner=\"o\"\nsets=[{access_packages=[\"a\"]},{access_packages=[\"b\"]}]\n[checks.sod]\nrisks=[\"pay-vs-aprove\"]\n[[rules]]\nname=\"x\"\nchecks=[\"sod\"]\n",
    )
    .err()
    .unwrap_or_default();
    assert_eq!(
        errs,
        [
            "line 11: checks.sod: risks: unknown risk \"pay-vs-aprove\"; did you mean \"pay-vs-approve\"?"
        ]
    );
}

const TICKET_POLICY: &str = r#"
version = 1
[tickets.provision]
table = "sc_req_item"
assignment_group = "Identity Ops"
fields = { short_description = "Access: {package} for {target}", description = "{explanation} link {link}" }

[[rules]]
name = "approved"
stages = ["assignmentRequestApproved"]
ticket = "provision"
"#;

#[test]
fn ticket_rules_load_and_name_their_mistakes() {
    let p = Policy::parse(TICKET_POLICY).unwrap();
    assert!(p.opens_tickets());
    let spec = p.ticket_spec("provision").unwrap();
    assert_eq!(spec.table, "sc_req_item");
    assert_eq!(spec.continue_states, vec!["3".to_string()]);
    assert_eq!(spec.deny_states, vec!["4".to_string(), "7".to_string()]);
    assert!(spec.waits_at(Stage::AssignmentRequestApproved));
    assert!(!spec.waits_at(Stage::AssignmentRequestRemoved));

    let bad = TICKET_POLICY
        .replace("ticket = \"provision\"", "ticket = \"provison\"")
        .replace("{target}", "{targte}")
        .replace("table = \"sc_req_item\"", "table = \"sc_req_item\"\ncatalog_item = \"nothex\"\ncontinue_states = [\"3\"]\ndeny_states = [\"3\"]\nreminder_before = \"soon\"");
    let errs = Policy::parse(&bad).unwrap_err().join("\n");
    for want in [
        "unknown ticket \"provison\"; did you mean \"provision\"?",
        "unknown placeholder {targte}",
        "give table or catalog_item, not both",
        "state \"3\" is in continue_states too",
        "reminder_before: \"soon\" is not a duration",
    ] {
        assert!(errs.contains(want), "{want}: {errs}");
    }
}

#[tokio::test]
async fn a_continuing_decision_renders_its_ticket_and_a_deny_gets_none() {
    let p = Policy::parse(TICKET_POLICY).unwrap();
    let mut c = callout("assignmentRequestApproved");
    c.access_package.display_name = Some("Payments".into());
    let d = decide(&p, &c).await;
    let t = d.ticket.expect("a ticket order");
    assert_eq!(t.fields["assignment_group"], "Identity Ops");
    assert!(
        t.fields["short_description"]
            .as_str()
            .unwrap()
            .starts_with("Access: Payments for ")
    );
    let desc = t.fields["description"].as_str().unwrap();
    assert!(
        desc.contains(&format!("link accessgate:{}", c.stage_instance_id)),
        "{desc}"
    );
    // A rule that denies opens nothing.
    let deny = Policy::parse(&TICKET_POLICY.replace(
        "ticket = \"provision\"",
        "ticket = \"provision\"\ndecision = \"deny\"",
    ))
    .unwrap_err();
    assert!(
        deny.join(" ").contains("never opens its ticket"),
        "{deny:?}"
    );
}

#[test]
fn approval_rules_are_checked_at_load() {
    let base = r#"
[approvals.standard]
approvers = ["manager"]
[tickets.t]
table = "incident"
"#;
    let cases = [
        (
            "[[rules]]\nname = \"a\"\nstages = [\"assignmentRequestDeterminingApprovalRequirements\"]\napproval = \"standrd\"",
            "unknown approval \"standrd\"; did you mean \"standard\"?",
        ),
        (
            "[[rules]]\nname = \"a\"\nstages = [\"assignmentRequestDeterminingApprovalRequirements\"]\ndecision = \"continue\"",
            "must carry an approval stage",
        ),
        (
            "[[rules]]\nname = \"a\"\nstages = [\"assignmentRequestCreated\"]\napproval = \"standard\"",
            "only sent at assignmentRequestDeterminingApprovalRequirements",
        ),
        (
            "[[rules]]\nname = \"a\"\napproval = \"standard\"\nticket = \"t\"",
            "cannot also open a ticket",
        ),
        (
            "[[rules]]\nname = \"a\"\ndecision = \"continue\"\napproval_on_deny = \"standard\"",
            "need approval = \"NAME\"",
        ),
    ];
    for (rule, want) in cases {
        let errs = Policy::parse(&format!("{base}{rule}"))
            .err()
            .unwrap_or_default();
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
    // A rule without stages but with an approval applies at the approval stage only.
    let ok = Policy::parse(&format!(
        "{base}[[rules]]\nname = \"a\"\napproval = \"standard\"\n"
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn an_errored_check_is_retried_before_its_approval_route_is_final() {
    let spec = |name: &str, approvers: &str| {
        let raw: approval::RawApproval =
            toml::from_str(&format!("approvers = [{approvers}]")).unwrap_or_default();
        approval::ApprovalSpec::build(name, &raw, &mut Vec::new()).map(Arc::new)
    };
    let with = |verdict: Verdict| {
        let mut p = policy_with(vec![entry("c", verdict, 0)], Mode::Enforce, OnError::Deny);
        p.rules[0].approvals = RuleApprovals {
            allow: spec("standard", "\"manager\""),
            on_deny: spec("strict", "\"manager:2\""),
            on_error: spec("careful", "\"internal_sponsors\""),
        };
        p
    };
    let c = callout("assignmentRequestDeterminingApprovalRequirements");
    let d = decide(&with(Verdict::error("directory down")), &c).await;
    assert_eq!(d.action, Action::Continue);
    assert_eq!(
        d.approval.as_ref().map(|a| a.name.as_str()),
        Some("careful")
    );
    assert!(d.incomplete.is_some(), "an error is decided again first");
    let d = decide(&with(Verdict::deny("conflict")), &c).await;
    assert_eq!(d.approval.as_ref().map(|a| a.name.as_str()), Some("strict"));
    assert!(
        d.incomplete.is_none() && d.detail.contains("conflict"),
        "{d:?}"
    );
    // The rule applies at the approval stage only; elsewhere no rule matches.
    let d = decide(
        &with(Verdict::deny("conflict")),
        &callout("assignmentRequestCreated"),
    )
    .await;
    assert_eq!((d.rule, d.approval), (None, None));
}

fn task_callout(workflow: &str) -> Callout {
    let body = format!(
        r#"{{"type":"lifecycleEvent","source":"s","data":{{"subject":{{"id":"u1"}},"task":{{"id":"t1","displayName":"Notify"}},
        "taskProcessingResult":{{"id":"r1"}},"workflow":{{"id":"{workflow}","displayName":"Offboard"}}}}}}"#
    );
    match parse(body.as_bytes()) {
        Ok(Parsed::Callout(c)) => *c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn task_rules_are_checked_at_load() {
    let cases = [
        (
            "[[rules]]\nname = \"a\"\ncategories = [\"leavr\"]\ndecision = \"continue\"",
            "unknown workflow category \"leavr\"; did you mean \"leaver\"?",
        ),
        (
            "[[rules]]\nname = \"a\"\ncategories = [\"leaver\"]\ncatalogs = [\"c\"]\ndecision = \"continue\"",
            "catalogs does not apply to a Lifecycle Workflows task",
        ),
        (
            "[[rules]]\nname = \"a\"\nworkflows = [\"w\"]\nstages = [\"assignmentRequestCreated\"]\ndecision = \"continue\"",
            "cannot also name entitlement-management stages",
        ),
        (
            "[[rules]]\nname = \"a\"\nstages = [\"lifecycleWorkflowTsk\"]\ndecision = \"continue\"",
            "did you mean \"lifecycleWorkflowTask\"?",
        ),
    ];
    for (rule, want) in cases {
        let errs = Policy::parse(rule).err().unwrap_or_default();
        assert!(errs.iter().any(|e| e.contains(want)), "{want}: {errs:?}");
    }
}

#[tokio::test]
async fn task_rules_and_access_package_rules_never_match_each_others_callouts() {
    let p = Policy::parse(
        "[[rules]]\nname = \"requests\"\ndecision = \"deny\"\n[[rules]]\nname = \"offboard\"\nworkflows = [\"offboard\"]\ndecision = \"deny\"\n[[rules]]\nname = \"any-task\"\nstages = [\"lifecycleWorkflowTask\"]\ndecision = \"continue\"\n",
    )
    .unwrap();
    // The catch-all access package rule does not apply to a task, whose workflow is matched by
    // display name, any case.
    let d = decide(&p, &task_callout("w1")).await;
    assert_eq!(
        (d.rule.as_deref(), d.action),
        (Some("offboard"), Action::Deny)
    );
    assert!(d.can_deny);
    let p2 = Policy::parse(
        "[[rules]]\nname = \"other\"\nworkflows = [\"Onboard\"]\ndecision = \"deny\"\n",
    )
    .unwrap();
    let d = decide(&p2, &task_callout("w1")).await;
    assert_eq!((d.rule, d.action), (None, Action::Continue));
    assert!(
        d.detail.contains("task Notify of workflow Offboard"),
        "{}",
        d.detail
    );
    // And a task rule does not apply to an access package callout.
    let d = decide(&p2, &callout("assignmentRequestCreated")).await;
    assert_eq!(d.rule, None);
}

#[tokio::test]
async fn a_category_that_cannot_be_read_fails_the_task_after_retries() {
    let p = Policy::parse(
        "[[rules]]\nname = \"leavers\"\ncategories = [\"leaver\"]\ndecision = \"continue\"\n",
    )
    .unwrap();
    // The fixture world has no such workflow: the read fails, the decision says so and is
    // marked incomplete (decided again before it is final).
    let d = decide(&p, &task_callout("w-unknown")).await;
    assert_eq!(d.action, Action::Deny);
    assert!(d.incomplete.is_some(), "{d:?}");
    assert!(d.detail.contains("category"), "{}", d.detail);
    let mut world = accessgate_world::World::default();
    world.workflows.push(accessgate_world::WorldWorkflow {
        id: "w-known".into(),
        display_name: None,
        category: "leaver".into(),
        tasks: Vec::new(),
    });
    let dir = FixtureDirectory {
        world: World(world),
        external_attribute: None,
    };
    let env = DecideEnv {
        directory: &dir,
        tickets: &NoTickets,
        now: jiff::Timestamp::now(),
        deadline: Instant::now() + Duration::from_secs(5),
    };
    let d = p.decide(&task_callout("w-known"), &env).await;
    assert_eq!(
        (d.rule.as_deref(), d.action),
        (Some("leavers"), Action::Continue)
    );
}

#[tokio::test]
async fn a_category_is_read_only_when_the_first_rule_that_could_match_needs_it() {
    // The first rule matches by workflow and decides: the unreadable category is never asked.
    let p = Policy::parse("[[rules]]\nname = \"by-name\"\nworkflows = [\"Offboard\"]\ndecision = \"continue\"\n[[rules]]\nname = \"leavers\"\ncategories = [\"leaver\"]\ndecision = \"deny\"\n").unwrap();
    let d = decide(&p, &task_callout("w-unknown")).await;
    assert_eq!(
        (d.rule.as_deref(), d.action),
        (Some("by-name"), Action::Continue)
    );
    // In audit mode a category that cannot be read completes the task, saying so.
    let p = Policy::parse("[[rules]]\nname = \"leavers\"\ncategories = [\"leaver\"]\nmode = \"audit\"\ndecision = \"deny\"\n").unwrap();
    let d = decide(&p, &task_callout("w-unknown")).await;
    assert_eq!((d.action, d.mode), (Action::Continue, Mode::Audit));
    assert!(d.detail.contains("audit mode"), "{}", d.detail);
}
