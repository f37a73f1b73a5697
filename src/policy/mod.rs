//! Policy: which checks run for which catalog / access package / stage, in which mode, what an
//! error means, and the text approvers see. The file format is documented in docs/policy.md
//! and described by schema/policy.schema.json; examples live in examples/policies/.
//!
//! Loading is all-or-nothing and lists every problem at once (unknown check, package, risk or
//! placeholder, invalid pattern, a cycle in SoD functions). Deciding is [`Policy::decide`]:
//! it picks the first matching rule, fetches the directory facts its checks need in one go,
//! runs the checks in parallel under per-check timeouts, and combines their verdicts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::callout::{Callout, LifecycleTask, Named, Stage};
use crate::checks::sod::{PackageRef, RawException, RawFunction, RawRisk, SodRules};
use crate::checks::{Check, CheckCtx, Finding, Verdict};
use crate::directory::{Directory, Facts, Needs};
use crate::tickets::TicketSystem;

pub mod approval;
pub mod pim;
mod read;
mod registry;
pub mod settings;
pub mod template;
pub mod testing;
pub mod ticket;

use crate::approval::ApprovalStage;
pub use settings::Settings;
use template::Template;

/// Graph documents no length for `customExtensionStageInstanceDetail`; approvers read it in My
/// Access, so it is kept to a paragraph. Rendered texts are cut to this many characters.
pub const MAX_DETAIL_CHARS: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Continue,
    Deny,
}

impl Action {
    pub fn word(self) -> &'static str {
        match self {
            Action::Continue => "continue",
            Action::Deny => "deny",
        }
    }
}

/// `enforce`: the checks decide. `audit`: every check runs and what it would have decided is
/// logged and shown, but the request continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

/// What a check error (or a check still running when the deadline nears) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Deny,
    Continue,
}

/// One check's outcome within a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub check: String,
    pub kind: String,
    #[serde(flatten)]
    pub finding: Finding,
    pub elapsed_ms: u64,
}

/// What the worker tells Entra, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub action: Action,
    pub detail: String,
    /// The rule that applied, or `None` when none matched.
    pub rule: Option<String>,
    pub mode: Mode,
    /// Every check's outcome, in the rule's order.
    pub outcomes: Vec<Outcome>,
    /// Set when a check errored and the outcome depended on it: the worker may retry the
    /// decision before the policy's `on_error` becomes final.
    pub incomplete: Option<String>,
    /// Graph calls made for this decision's directory facts.
    pub graph_calls: u32,
    /// Whether the stage lets Entra deny; when not, checks are notifications only.
    pub can_deny: bool,
    /// The ticket to open instead of resuming now: set when the rule names one and the
    /// decision is to continue (a request the checks deny gets no ticket).
    pub ticket: Option<ticket::TicketOrder>,
    /// Dynamic approval: the approval stage a continue sends (always set on a continue at
    /// that stage; never elsewhere).
    pub approval: Option<crate::approval::ApprovalStage>,
}

/// What a policy reads from Graph ([`Policy::graph_reads`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphReads {
    pub needs: Needs,
    /// A task rule keyed by workflow category.
    pub categories: bool,
    /// A PIM rule's separation of duties (the principal's directory roles).
    pub directory_roles: bool,
}

/// Where a decision gets its facts, and when.
pub struct DecideEnv<'a> {
    pub directory: &'a dyn Directory,
    pub tickets: &'a dyn TicketSystem,
    pub now: jiff::Timestamp,
    /// The decision's own budget (before the callout's deadline).
    pub deadline: Instant,
}

// ---------------------------------------------------------------------------------------------
// The file format

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetail {
    allow: Option<String>,
    deny: Option<String>,
    error: Option<String>,
    audit: Option<String>,
    notify: Option<String>,
    route: Option<String>,
}

/// `detail = "text"` (one text for every outcome) or a table per outcome.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawDetailField {
    One(String),
    Each(RawDetail),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    mode: Option<Mode>,
    on_error: Option<OnError>,
    check_timeout: Option<String>,
    check_attempts: Option<u32>,
    detail: Option<RawDetail>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    id: Option<String>,
    display_name: Option<String>,
    /// The package's resource owners (`user:<id>`, `group:<id>`), for `package_owners`.
    #[serde(default)]
    owners: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    catalogs: Vec<String>,
    #[serde(default)]
    access_packages: Vec<String>,
    stages: Option<Vec<String>>,
    #[serde(default)]
    checks: Vec<String>,
    decision: Option<Action>,
    mode: Option<Mode>,
    on_error: Option<OnError>,
    detail: Option<RawDetailField>,
    ticket: Option<String>,
    approval: Option<String>,
    approval_on_deny: Option<String>,
    approval_on_error: Option<String>,
    /// Lifecycle Workflows: workflows by id or display name.
    #[serde(default)]
    workflows: Vec<String>,
    /// Lifecycle Workflows: tasks by id or display name.
    #[serde(default)]
    tasks: Vec<String>,
    /// Lifecycle Workflows: workflow categories (joiner, mover, leaver), read from Graph.
    #[serde(default)]
    categories: Vec<String>,
}

/// The file as read by [`read`]: every entry that could be read (rules are kept apart, with
/// the keys that could not be read).
#[derive(Debug, Clone, Default)]
struct RawPolicy {
    version: Option<u32>,
    defaults: RawDefaults,
    packages: BTreeMap<String, RawPackage>,
    checks: BTreeMap<String, toml::Table>,
    functions: BTreeMap<String, RawFunction>,
    risks: Vec<RawRisk>,
    exceptions: Vec<RawException>,
    /// `[tickets.NAME]`, each with whether a key of it could not be read.
    tickets: BTreeMap<String, (ticket::RawTicket, bool)>,
    /// `[approvals.NAME]`, each with whether a key of it could not be read.
    approvals: BTreeMap<String, (approval::RawApproval, bool)>,
}

// ---------------------------------------------------------------------------------------------
// The loaded policy

/// The five texts of a rule (or of the defaults).
#[derive(Debug, Clone)]
struct Texts {
    allow: Template,
    deny: Template,
    error: Template,
    audit: Template,
    notify: Template,
    /// Dynamic approval: the checks found something, and the rule routes the request to a
    /// stricter approval instead of denying it.
    route: Template,
}

const DEFAULT_ALLOW: &str = "accessgate: checks passed ({checks}). {notes}";
const DEFAULT_DENY: &str = "accessgate denied this request: {reasons}";
const DEFAULT_ERROR: &str =
    "accessgate could not complete its checks ({errors}); by policy the request is {outcome}.";
const DEFAULT_AUDIT: &str =
    "accessgate audit mode (no effect): enforce mode would {would}. {reasons} {errors}";
const DEFAULT_NOTIFY: &str =
    "accessgate report ({stage} cannot be denied): enforce mode would {would}. {reasons} {errors}";
const DEFAULT_ROUTE: &str =
    "accessgate sent this request to the {approval} approval ({approvers}): {reasons} {errors}";
const NO_APPROVAL: &str = "accessgate: no policy rule gives {package} an approval stage, so the request is denied rather than sent on without approvers.";
const NO_RULE: &str = "Checked by accessgate: no policy rule applies to {package} at {stage}.";
const NO_TASK_RULE: &str =
    "Checked by accessgate: no policy rule applies to task {task} of workflow {workflow}.";

impl Texts {
    fn defaults() -> Texts {
        let t = |s: &str| Template::parse(s).unwrap_or_else(|_| unreachable_template());
        Texts {
            allow: t(DEFAULT_ALLOW),
            deny: t(DEFAULT_DENY),
            error: t(DEFAULT_ERROR),
            audit: t(DEFAULT_AUDIT),
            notify: t(DEFAULT_NOTIFY),
            route: t(DEFAULT_ROUTE),
        }
    }
}

/// The built-in templates are tested to parse; this keeps `decide` free of panics anyway.
fn unreachable_template() -> Template {
    Template::parse("accessgate").unwrap_or_else(|_| unreachable_template())
}

/// A configured check with its name and timeout.
#[derive(Debug, Clone)]
pub struct CheckEntry {
    pub name: String,
    pub timeout: Duration,
    pub check: Arc<dyn Check>,
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    catalogs: Vec<String>,
    packages: Vec<PackageRef>,
    stages: Option<Vec<Stage>>,
    checks: Vec<usize>,
    decision: Option<Action>,
    mode: Mode,
    on_error: OnError,
    texts: Texts,
    /// The ticket a continuing decision opens (`ticket = "NAME"`).
    ticket: Option<Arc<ticket::TicketSpec>>,
    /// Dynamic approval: the stage sent when the request continues, and the ones sent instead
    /// of a deny when a check denies or errors.
    approvals: RuleApprovals,
    /// Set for a rule about Lifecycle Workflows tasks (it names workflows, tasks or categories,
    /// or the `lifecycleWorkflowTask` stage); such a rule applies to tasks only, the others to
    /// entitlement-management stages only.
    tasks: Option<TaskScope>,
}

/// Which Lifecycle Workflows tasks a rule applies to; an empty list means any.
#[derive(Debug, Clone, Default)]
struct TaskScope {
    workflows: Vec<String>,
    tasks: Vec<String>,
    categories: Vec<String>,
}

impl TaskScope {
    /// `category` is the workflow's, read from the directory (`None`: not read).
    fn matches(&self, t: &crate::callout::LifecycleTask, category: Option<&str>) -> bool {
        let named = |want: &[String], id: &crate::callout::Id, name: &Option<String>| {
            want.is_empty()
                || want.iter().any(|w| {
                    w.eq_ignore_ascii_case(id.as_str())
                        || name.as_deref().is_some_and(|n| w.eq_ignore_ascii_case(n))
                })
        };
        named(&self.workflows, &t.workflow_id, &t.workflow_name)
            && named(&self.tasks, &t.task_id, &t.task_name)
            && (self.categories.is_empty()
                || category
                    .is_some_and(|c| self.categories.iter().any(|w| w.eq_ignore_ascii_case(c))))
    }
}

/// The workflow categories a rule may name (`lifecycleWorkflowCategory`).
const CATEGORIES: [&str; 4] = ["joiner", "mover", "leaver", "extensibility"];

#[derive(Debug, Clone, Default)]
struct RuleApprovals {
    allow: Option<Arc<approval::ApprovalSpec>>,
    on_deny: Option<Arc<approval::ApprovalSpec>>,
    on_error: Option<Arc<approval::ApprovalSpec>>,
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    checks: Vec<CheckEntry>,
    no_rule: Template,
    no_task_rule: Template,
    /// Attempts at a decision whose checks errored before `on_error` is final.
    pub check_attempts: u32,
    /// Things that load but act differently than one might read them (a check that can only
    /// report at a stage that cannot deny, an unused check, an expired exception).
    pub warnings: Vec<String>,
    sod_risks: usize,
    tickets: BTreeMap<String, Arc<ticket::TicketSpec>>,
    /// Declared owners per package, for `package_owners`.
    package_owners: Vec<(PackageRef, Vec<crate::approval::Approver>)>,
    /// `[[pim_rules]]`, in file order.
    pim_rules: Vec<pim::PimRule>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            checks: Vec::new(),
            no_rule: Template::parse(NO_RULE).unwrap_or_else(|_| unreachable_template()),
            no_task_rule: Template::parse(NO_TASK_RULE).unwrap_or_else(|_| unreachable_template()),
            check_attempts: 3,
            warnings: Vec::new(),
            sod_risks: 0,
            tickets: BTreeMap::new(),
            package_owners: Vec::new(),
            pim_rules: Vec::new(),
        }
    }
}

/// "5s", "1500ms", "2m": the durations the policy file uses.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" | "min" => Some(Duration::from_secs(n.checked_mul(60)?)),
        "h" => Some(Duration::from_secs(n.checked_mul(3600)?)),
        "d" => Some(Duration::from_secs(n.checked_mul(24 * 3600)?)),
        _ => None,
    }
}

/// Matches by id or display name, case-insensitively (ids are GUIDs, names are what admins know).
fn named_is(want: &str, have: &Named) -> bool {
    [&have.id, &have.display_name]
        .into_iter()
        .flatten()
        .any(|h| h.eq_ignore_ascii_case(want))
}

fn package_is(p: &PackageRef, have: &Named) -> bool {
    [&p.id, &p.display_name]
        .into_iter()
        .flatten()
        .any(|w| named_is(w, have))
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, Vec<String>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![format!("cannot read {}: {e}", path.display())])?;
        // "line 12: ..." becomes "policy.toml line 12: ...": the file is named where it is read.
        Policy::parse(&text).map_err(|errs| {
            errs.into_iter()
                .map(|e| match e.strip_prefix("line ") {
                    Some(rest) => format!("{} line {rest}", path.display()),
                    None => format!("{}: {e}", path.display()),
                })
                .collect()
        })
    }

    /// Parses a policy, reporting every error at once, each with its line and entry
    /// (`line 12: [[risks]] "pay-vs-approve": severity: unknown variant ...`), in file order.
    pub fn parse(text: &str) -> Result<Policy, Vec<String>> {
        let (root, spans) = crate::lenient::parse(text).map_err(|errs| {
            errs.iter()
                .map(|e| {
                    format!(
                        "line {}, column {}: not valid TOML: {}",
                        e.line, e.column, e.message
                    )
                })
                .collect::<Vec<_>>()
        })?;
        let mut errors = read::Errors::new(&spans);
        let read = read::read(&root, &mut errors);
        let raw = &read.raw;
        let mut warnings = Vec::new();
        if let Some(v) = raw.version
            && v != 1
        {
            errors.at(
                "version",
                format!("version {v} is not supported (this accessgate reads version 1)"),
            );
        }

        // Packages: aliases that rules and SoD sets refer to.
        let mut packages = BTreeMap::new();
        let mut package_owners = Vec::new();
        for (alias, p) in &raw.packages {
            let mut errs = Vec::new();
            let owners = approval::package_owners(alias, &p.owners, &mut errs);
            for (key, m) in errs {
                errors.at(&key, m);
            }
            if !owners.is_empty() {
                package_owners.push((
                    PackageRef {
                        alias: alias.clone(),
                        id: p.id.clone(),
                        display_name: p.display_name.clone(),
                    },
                    owners,
                ));
            }
            if p.id.is_none() && p.display_name.is_none() {
                let m = format!("packages.{alias}: give id or display_name (or both)");
                if !read.quiet.iter().any(|q| m.starts_with(q.as_str())) {
                    errors.at(&format!("packages.{alias}"), m);
                }
            }
            packages.insert(
                alias.clone(),
                PackageRef {
                    alias: alias.clone(),
                    id: p.id.clone(),
                    display_name: p.display_name.clone(),
                },
            );
        }

        // SoD rules, when there are any risks or functions.
        let mut sod_invalid = false;
        let sod = if raw.risks.is_empty()
            && raw.functions.is_empty()
            && raw.exceptions.is_empty()
            && !read.risks_written
        {
            None
        } else {
            match SodRules::build(&raw.functions, &raw.risks, &raw.exceptions, &packages) {
                Ok(rules) => {
                    warnings.extend(rules.warnings(jiff::Timestamp::now()));
                    Some(Arc::new(rules))
                }
                Err(e) => {
                    sod_invalid = true;
                    for m in e {
                        if read.quiet.iter().any(|q| m.starts_with(q.as_str()))
                            || read::about_stand_in(&m)
                        {
                            continue;
                        }
                        let path = read::sod_error_path(&m, &read);
                        errors.at(&path, m);
                    }
                    None
                }
            }
        };
        // Risks that could not be read are reported; they are not "no risks".
        sod_invalid |= read.risks_written && sod.is_none();
        let sod_risks = sod.as_ref().map_or(0, |s| s.risk_count());

        // Defaults.
        let d = &raw.defaults;
        let mut default_timeout = Duration::from_secs(5);
        if let Some(t) = &d.check_timeout {
            match parse_duration(t) {
                Some(v) if !v.is_zero() => default_timeout = v,
                _ => errors.at(
                    "defaults.check_timeout",
                    format!(
                        "defaults.check_timeout {t:?} is not a duration such as \"5s\" or \"1500ms\""
                    ),
                ),
            }
        }
        let check_attempts = d.check_attempts.unwrap_or(3);
        if check_attempts == 0 {
            errors.at(
                "defaults.check_attempts",
                "defaults.check_attempts must be at least 1".into(),
            );
        }
        let default_texts = texts(
            "defaults.detail",
            "defaults.detail",
            d.detail.as_ref(),
            &Texts::defaults(),
            &mut errors,
        );

        // Checks.
        let mut checks = Vec::new();
        let mut index = BTreeMap::new();
        for (name, table) in &raw.checks {
            match registry::build(name, table, sod.as_ref(), sod_invalid, default_timeout) {
                Ok(entry) => {
                    index.insert(name.clone(), checks.len());
                    checks.push(entry);
                }
                Err(e) => {
                    for m in e {
                        // `checks.hr.timeout ...` or `checks.hr: unknown key `x``: that key.
                        let key = m
                            .strip_prefix(&format!("checks.{name}."))
                            .and_then(|r| r.split([' ', ':']).next())
                            .or_else(|| {
                                m.split_once("unknown key `")
                                    .and_then(|(_, r)| r.split('`').next())
                            })
                            .or_else(|| {
                                // `checks.sod: risks: unknown risk ...`: a key of the table.
                                m.strip_prefix(&format!("checks.{name}: "))
                                    .and_then(|r| r.split(':').next())
                                    .filter(|k| table.contains_key(*k))
                            })
                            .map(|k| format!(".{k}"))
                            .unwrap_or_default();
                        errors.at(&format!("checks.{name}{key}"), m);
                    }
                }
            }
        }
        // Tickets and approval stages.
        let tickets = build_named(&raw.tickets, ticket::TicketSpec::build, &mut errors);
        let approvals = build_named(&raw.approvals, approval::ApprovalSpec::build, &mut errors);
        let approval_names: Vec<&str> = raw.approvals.keys().map(String::as_str).collect();
        let mut used_approvals = BTreeSet::new();
        let ticket_names: Vec<&str> = raw.tickets.keys().map(String::as_str).collect();
        let mut used_tickets = BTreeSet::new();
        let check_names: Vec<&str> = raw.checks.keys().map(String::as_str).collect();
        let package_names: Vec<&str> = packages.keys().map(String::as_str).collect();
        let stage_names: Vec<&str> = Stage::ALL
            .iter()
            .chain([&Stage::LifecycleWorkflowTask])
            .map(|s| s.as_graph())
            .collect();

        // Rules.
        let mut rules = Vec::new();
        let mut names = BTreeSet::new();
        let mut used = BTreeSet::new();
        for rr in &read.rules {
            let r = &rr.raw;
            let path = format!("rules.{}", rr.index);
            let at = rr.label.clone();
            if !names.insert(r.name.clone()) {
                errors.at(&path, format!("{at} is defined twice"));
            }
            let stages = r.stages.as_ref().map(|list| {
                list.iter()
                    .enumerate()
                    .filter_map(|(i, s)| {
                        let st = Stage::parse_in_policy(s);
                        if st.is_none() {
                            let hint = match crate::lenient::did_you_mean(s, &stage_names) {
                                Some(near) => format!("; did you mean {near:?}?"),
                                None => format!(" (known: {})", stage_names.join(", ")),
                            };
                            errors.at(
                                &format!("{path}.stages.{i}"),
                                format!("{at}: unknown stage {s:?}{hint}"),
                            );
                        }
                        st
                    })
                    .collect::<Vec<_>>()
            });
            let mut rule_packages = Vec::new();
            for (i, a) in r.access_packages.iter().enumerate() {
                match packages.get(a) {
                    Some(p) => rule_packages.push(p.clone()),
                    None => errors.at(
                        &format!("{path}.access_packages.{i}"),
                        format!(
                            "{at}: unknown access package {a:?}{}",
                            crate::lenient::unknown_package_hint(a, &package_names)
                        ),
                    ),
                }
            }
            let mut rule_checks = Vec::new();
            for (i, c) in r.checks.iter().enumerate() {
                match index.get(c) {
                    Some(i) => {
                        used.insert(c.clone());
                        rule_checks.push(*i);
                    }
                    None if raw.checks.contains_key(c) => {} // its own error is already listed
                    None => {
                        let hint = crate::lenient::did_you_mean(c, &check_names)
                            .map(|near| format!("; did you mean {near:?}?"))
                            .unwrap_or_else(|| format!(" (define it under [checks.{c}])"));
                        errors.at(
                            &format!("{path}.checks.{i}"),
                            format!("{at}: unknown check {c:?}{hint}"),
                        );
                    }
                }
            }
            // A key that could not be read is already reported; judging the rule without it
            // would only repeat that.
            let unsure = rr.bad.contains("decision")
                || rr.bad.contains("checks")
                || rr.bad.contains("ticket");
            let rule_ticket = named_ref(
                r.ticket.as_deref(),
                ("tickets", "ticket", &tickets, &ticket_names),
                &mut used_tickets,
                (&format!("{path}.ticket"), &at),
                &mut errors,
            );
            let mut approval_ref = |key: &str, name: &Option<String>| {
                named_ref(
                    name.as_deref(),
                    ("approvals", "approval", &approvals, &approval_names),
                    &mut used_approvals,
                    (&format!("{path}.{key}"), &at),
                    &mut errors,
                )
            };
            let rule_approvals = RuleApprovals {
                allow: approval_ref("approval", &r.approval),
                on_deny: approval_ref("approval_on_deny", &r.approval_on_deny),
                on_error: approval_ref("approval_on_error", &r.approval_on_error),
            };
            let approval_stage = Stage::AssignmentRequestDeterminingApprovalRequirements;
            if r.approval.is_none() {
                if r.approval_on_deny.is_some() || r.approval_on_error.is_some() {
                    errors.at(
                        &path,
                        format!("{at}: approval_on_deny and approval_on_error need approval = \"NAME\" (the stage sent when the checks pass)"),
                    );
                }
                if stages.as_ref().is_some_and(|s| s.contains(&approval_stage)) {
                    errors.at(
                        &format!("{path}.approval"),
                        format!("{at}: at {approval_stage} the resume must carry an approval stage: give approval = \"NAME\" (an [approvals.NAME])"),
                    );
                }
            } else {
                if stages
                    .as_ref()
                    .is_some_and(|s| !s.contains(&approval_stage))
                {
                    errors.at(
                        &format!("{path}.approval"),
                        format!("{at}: an approval is only sent at {approval_stage}; add that stage to stages"),
                    );
                }
                if r.ticket.is_some() {
                    errors.at(
                        &format!("{path}.ticket"),
                        format!(
                            "{at}: a rule that picks an approval stage cannot also open a ticket"
                        ),
                    );
                }
                if r.decision == Some(Action::Deny) {
                    errors.at(
                        &format!("{path}.approval"),
                        format!("{at}: a rule that always denies never sends its approval"),
                    );
                }
            }
            if r.ticket.is_some() && r.decision == Some(Action::Deny) {
                errors.at(
                    &format!("{path}.ticket"),
                    format!("{at}: a rule that always denies never opens its ticket"),
                );
            }
            match (r.decision, r.checks.is_empty()) {
                _ if unsure => {}
                // A ticket rule without checks opens its ticket for every request it matches.
                (None, true) if r.ticket.is_some() || r.approval.is_some() => {}
                (None, true) => errors.at(
                    &path,
                    format!(
                        "{at}: give checks = [...] or a fixed decision = \"continue\" | \"deny\" (or a ticket = \"NAME\")"
                    ),
                ),
                (Some(_), false) => errors.at(
                    &path,
                    format!("{at}: a rule has either checks or a fixed decision, not both"),
                ),
                _ => {}
            }
            let rule_tasks = task_scope(r, stages.as_deref(), &path, &at, &mut errors);
            let detail_at = format!("{at} detail");
            let detail_path = format!("{path}.detail");
            let rule_texts = match &r.detail {
                None => default_texts.clone(),
                Some(RawDetailField::Each(each)) => texts(
                    &detail_at,
                    &detail_path,
                    Some(each),
                    &default_texts,
                    &mut errors,
                ),
                Some(RawDetailField::One(one)) => {
                    let all = RawDetail {
                        allow: Some(one.clone()),
                        deny: Some(one.clone()),
                        error: Some(one.clone()),
                        audit: Some(one.clone()),
                        notify: Some(one.clone()),
                        route: Some(one.clone()),
                    };
                    texts(
                        &detail_at,
                        &detail_path,
                        Some(&all),
                        &default_texts,
                        &mut errors,
                    )
                }
            };
            let mode = r.mode.or(d.mode).unwrap_or(Mode::Enforce);
            let on_error = r.on_error.or(d.on_error).unwrap_or(OnError::Deny);
            let reported: Vec<&str> = stages
                .as_deref()
                .unwrap_or(if rule_tasks.is_some() {
                    &[Stage::LifecycleWorkflowTask]
                } else {
                    &Stage::ALL
                })
                .iter()
                .filter(|s| !s.can_deny())
                .map(|s| s.as_graph())
                .collect();
            if !reported.is_empty() && (r.decision == Some(Action::Deny) || !r.checks.is_empty()) {
                warnings.push(format!(
                    "rule {:?}: at {} Entra cannot deny, so its checks run as notifications only (the request continues; the detail reports what they found)",
                    r.name,
                    reported.join(", ")
                ));
            }
            rules.push(Rule {
                name: r.name.clone(),
                catalogs: r.catalogs.clone(),
                packages: rule_packages,
                stages,
                checks: rule_checks,
                decision: r.decision,
                mode,
                on_error,
                texts: rule_texts,
                ticket: rule_ticket,
                approvals: rule_approvals,
                tasks: rule_tasks,
            });
        }
        let mut pim_rules = Vec::new();
        let mut pim_names = BTreeSet::new();
        for (i, label, raw_rule) in &read.pim_rules {
            let path = format!("pim_rules.{i}");
            if !pim_names.insert(raw_rule.name.clone()) {
                errors.at(&path, format!("{label} is defined twice"));
            }
            let rule =
                pim::PimRule::build(raw_rule, (&path, label), &index, &check_names, &mut errors);
            for (name, ix) in &index {
                if rule.uses_check(*ix) {
                    used.insert(name.clone());
                }
            }
            pim_rules.push(rule);
        }
        for name in approvals.keys() {
            if !used_approvals.contains(name) {
                warnings.push(format!("approval {name:?} is defined but no rule uses it"));
            }
        }
        for name in tickets.keys() {
            if !used_tickets.contains(name) {
                warnings.push(format!("ticket {name:?} is defined but no rule uses it"));
            }
        }
        for name in raw.checks.keys() {
            if !used.contains(name) && index.contains_key(name) {
                warnings.push(format!("check {name:?} is defined but no rule uses it"));
            }
        }
        if !errors.is_empty() {
            return Err(errors.into_sorted());
        }
        Ok(Policy {
            rules,
            checks,
            check_attempts,
            warnings,
            sod_risks,
            tickets,
            package_owners,
            pim_rules,
            ..Policy::default()
        })
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    pub fn check_count(&self) -> usize {
        self.checks.len()
    }

    /// What the policy's rules will read from Graph (for `doctor`'s permission check): the
    /// union of their checks' needs, whether a task rule reads workflow categories, and
    /// whether a PIM rule's `sod` reads the principal's directory roles.
    pub fn graph_reads(&self) -> GraphReads {
        let needs_of = |ix: &[usize]| {
            ix.iter()
                .filter_map(|i| self.checks.get(*i))
                .fold(Needs::default(), |n, e| n.union(e.check.needs()))
        };
        let mut r = GraphReads::default();
        for rule in &self.rules {
            let n = needs_of(&rule.checks);
            r.needs = r.needs.union(if rule.tasks.is_some() {
                Needs {
                    request: false,
                    ..n
                }
            } else {
                n
            });
            r.categories |= rule
                .tasks
                .as_ref()
                .is_some_and(|t| !t.categories.is_empty());
        }
        for (i, c) in self.checks.iter().enumerate() {
            if self.pim_rules.iter().any(|p| p.uses_check(i)) {
                let n = c.check.needs();
                // A PIM verdict's request facts come from the activation itself.
                r.needs = r.needs.union(Needs {
                    request: false,
                    ..n
                });
                r.directory_roles |= c.check.kind() == "sod";
            }
        }
        r
    }

    /// Whether any configured check is of this type (e.g. to warn that its system is missing).
    pub fn uses_check_type(&self, kind: &str) -> bool {
        self.checks.iter().any(|c| c.check.kind() == kind)
    }

    pub fn risk_count(&self) -> usize {
        self.sod_risks
    }

    /// The first rule that matches the callout (a task's rules keyed by category never match
    /// here: `task_rule` reads the category).
    fn rule_for(&self, c: &Callout) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| match (c.task.as_deref(), &r.tasks) {
                (Some(t), Some(scope)) => scope.matches(t, None),
                (None, None) => {
                    (r.catalogs.is_empty() || r.catalogs.iter().any(|w| named_is(w, &c.catalog)))
                    && (r.packages.is_empty()
                        || r.packages.iter().any(|p| package_is(p, &c.access_package)))
                    && r.stages.as_ref().is_none_or(|s| s.contains(&c.stage))
                    // Dynamic approval needs an approval stage: rules without one do not apply
                    // there, and rules with one apply nowhere else.
                    && c.stage.is_approval() == r.approvals.allow.is_some()
                }
                _ => false,
            })
    }

    /// The first task rule that matches `t`, in file order. The workflow's category is read
    /// (once) only when the first rule that could still match is keyed by it, so a Graph
    /// error cannot fail a task that an earlier rule decides. `Err`: the category could not
    /// be read, with the mode of the rule that needed it.
    async fn task_rule(
        &self,
        t: &crate::callout::LifecycleTask,
        env: &DecideEnv<'_>,
    ) -> Result<Option<&Rule>, (String, Mode)> {
        let mut category: Option<String> = None;
        for r in &self.rules {
            let Some(scope) = &r.tasks else { continue };
            if scope.categories.is_empty() {
                if scope.matches(t, None) {
                    return Ok(Some(r));
                }
                continue;
            }
            let without = TaskScope {
                categories: Vec::new(),
                ..scope.clone()
            };
            if !without.matches(t, None) {
                continue;
            }
            if category.is_none() {
                match env.directory.workflow(&t.workflow_id, env.deadline).await {
                    Ok(w) => category = Some(w.category),
                    Err(e) => return Err((e.to_string(), r.mode)),
                }
            }
            if scope.matches(t, category.as_deref()) {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The facts the matching rule's checks need (for callers that want to know before deciding).
    pub fn needs(&self, c: &Callout) -> Needs {
        self.rule_for(c)
            .map(|r| {
                r.checks
                    .iter()
                    .filter_map(|i| self.checks.get(*i))
                    .fold(Needs::default(), |n, e| n.union(e.check.needs()))
            })
            .unwrap_or_default()
    }

    /// Decides a callout: rule, facts, checks in parallel, verdicts combined.
    pub async fn decide(&self, c: &Callout, env: &DecideEnv<'_>) -> Decision {
        let can_deny = c.stage.can_deny();
        let found = match c.task.as_deref() {
            Some(t) => match self.task_rule(t, env).await {
                Ok(r) => r,
                Err((why, mode)) => return no_category(c, &why, mode),
            },
            None => self.rule_for(c),
        };
        let Some(rule) = found else {
            if c.stage.is_approval() {
                return self.no_approval(c);
            }
            let no_rule = if c.task.is_some() {
                &self.no_task_rule
            } else {
                &self.no_rule
            };
            return Decision {
                action: Action::Continue,
                detail: no_rule.render(
                    |v| value(v, c, None, &[], Action::Continue, Action::Continue),
                    MAX_DETAIL_CHARS,
                ),
                rule: None,
                mode: Mode::Enforce,
                outcomes: Vec::new(),
                incomplete: None,
                graph_calls: 0,
                can_deny,
                ticket: None,
                approval: None,
            };
        };
        let entries: Vec<&CheckEntry> = rule
            .checks
            .iter()
            .filter_map(|i| self.checks.get(*i))
            .collect();
        let mut needs = entries
            .iter()
            .fold(Needs::default(), |n, e| n.union(e.check.needs()));
        if rule.ticket.as_ref().is_some_and(|t| t.needs_request()) {
            needs = needs.union(Needs {
                request: true,
                ..Needs::default()
            });
        }
        let facts = if needs.any() {
            env.directory.facts(c, needs, env.deadline).await
        } else {
            Facts::none(None)
        };
        let ctx = CheckCtx {
            callout: c,
            now: env.now,
            facts: &facts,
            tickets: env.tickets,
            deadline: env.deadline,
            activation: None,
        };
        let outcomes =
            futures_util::future::join_all(entries.iter().map(|e| run_check(e, &ctx))).await;
        // Dynamic approval: the requested package's declared owners, for `package_owners`.
        let owners = c.stage.is_approval().then(|| {
            self.package_owners
                .iter()
                .filter(|(p, _)| package_is(p, &c.access_package))
                .flat_map(|(_, o)| o.iter().cloned())
                .collect::<Vec<_>>()
        });
        let mut d = combine(
            rule,
            c,
            outcomes,
            facts.graph_calls,
            can_deny,
            owners.as_deref(),
        );
        if let Some(spec) = &rule.ticket
            && d.action == Action::Continue
        {
            let value = |v: &str| {
                ticket_value(v, c, &facts, &d.detail).unwrap_or_else(|| {
                    value(v, c, Some(&rule.name), &d.outcomes, d.action, d.action)
                })
            };
            d.ticket = Some(ticket::TicketOrder::render(spec, &value));
        }
        d
    }

    /// Dynamic approval with no rule that gives an approval stage: deny, saying so.
    fn no_approval(&self, c: &Callout) -> Decision {
        let text = Template::parse(NO_APPROVAL).unwrap_or_else(|_| unreachable_template());
        Decision {
            action: Action::Deny,
            detail: text.render(
                |v| value(v, c, None, &[], Action::Deny, Action::Deny),
                MAX_DETAIL_CHARS,
            ),
            rule: None,
            mode: Mode::Enforce,
            outcomes: Vec::new(),
            incomplete: None,
            graph_calls: 0,
            can_deny: true,
            ticket: None,
            approval: None,
        }
    }

    /// A `[tickets.NAME]` by name (a waiting job's ticket, read again after a restart).
    pub fn ticket_spec(&self, name: &str) -> Option<Arc<ticket::TicketSpec>> {
        self.tickets.get(name).cloned()
    }

    /// Every `[tickets.NAME]`.
    pub fn ticket_specs(&self) -> impl Iterator<Item = &Arc<ticket::TicketSpec>> {
        self.tickets.values()
    }

    /// Whether any rule opens a ticket (so the bridge must be configured).
    pub fn opens_tickets(&self) -> bool {
        self.rules.iter().any(|r| r.ticket.is_some())
    }
}

/// One check under its timeout (cut to the decision's deadline).
async fn run_check(e: &CheckEntry, ctx: &CheckCtx<'_>) -> Outcome {
    let started = Instant::now();
    let budget = e
        .timeout
        .min(ctx.deadline.saturating_duration_since(started));
    let finding = match tokio::time::timeout(budget, e.check.evaluate(ctx)).await {
        Ok(f) => f,
        Err(_) => Finding::new(
            Verdict::error(format!(
                "no answer within {} ms (check timeout {} ms, or the decision's deadline)",
                budget.as_millis(),
                e.timeout.as_millis()
            )),
            Vec::new(),
        ),
    };
    Outcome {
        check: e.name.clone(),
        kind: e.check.kind().to_owned(),
        finding,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// The reasons of the checks whose verdict is `word`, each as `check: reason`.
fn reasons_of(outcomes: &[Outcome], word: &str) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| o.finding.verdict.word() == word)
        .filter_map(|o| {
            o.finding
                .verdict
                .reason()
                .map(|r| format!("{}: {r}", o.check))
        })
        .collect()
}

fn join_reasons(outcomes: &[Outcome], word: &str) -> String {
    reasons_of(outcomes, word).join("; ")
}

/// A placeholder's value.
fn value(
    name: &str,
    c: &Callout,
    rule: Option<&str>,
    outcomes: &[Outcome],
    outcome: Action,
    would: Action,
) -> String {
    let shown = |n: &Named| {
        n.display_name
            .clone()
            .or_else(|| n.id.clone())
            .unwrap_or_else(|| "(unnamed)".into())
    };
    match name {
        // A task has no access package: its workflow stands in, so texts read the same.
        "package" => match c.task.as_deref() {
            Some(t) => t.workflow_shown(),
            None => shown(&c.access_package),
        },
        "catalog" => shown(&c.catalog),
        "stage" => c.stage.as_graph().to_owned(),
        "target" => c
            .target
            .display_name
            .clone()
            .or_else(|| c.target.object_id.clone())
            .or_else(|| c.target.id.clone())
            .unwrap_or_else(|| "(unknown)".into()),
        "rule" => rule.unwrap_or("(none)").to_owned(),
        "reasons" => join_reasons(outcomes, "deny"),
        "errors" => join_reasons(outcomes, "error"),
        "notes" => {
            let notes: Vec<String> = outcomes
                .iter()
                .filter_map(|o| o.finding.note.as_ref().map(|n| format!("{}: {n}", o.check)))
                .collect();
            notes.join("; ")
        }
        "checks" => outcomes
            .iter()
            .map(|o| format!("{}: {}", o.check, o.finding.verdict.word()))
            .collect::<Vec<_>>()
            .join(", "),
        "outcome" => outcome.word().to_owned(),
        "would" => would.word().to_owned(),
        "workflow" => c
            .task
            .as_deref()
            .map(LifecycleTask::workflow_shown)
            .unwrap_or_default(),
        "task" => c
            .task
            .as_deref()
            .map(LifecycleTask::task_shown)
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// A rule's Lifecycle Workflows scope: `Some` when it names workflows, tasks or categories, or
/// the `lifecycleWorkflowTask` stage. Such a rule may name nothing of entitlement management.
fn task_scope(
    r: &RawRule,
    stages: Option<&[Stage]>,
    path: &str,
    at: &str,
    errors: &mut read::Errors<'_>,
) -> Option<TaskScope> {
    let keyed = !(r.workflows.is_empty() && r.tasks.is_empty() && r.categories.is_empty());
    let task_stage = stages.is_some_and(|s| s.contains(&Stage::LifecycleWorkflowTask));
    if !keyed && !task_stage {
        return None;
    }
    if stages.is_some_and(|s| s.iter().any(|st| !st.is_lifecycle())) {
        errors.at(
            &format!("{path}.stages"),
            format!("{at}: a rule about Lifecycle Workflows tasks (workflows, tasks, categories or the lifecycleWorkflowTask stage) cannot also name entitlement-management stages: write two rules"),
        );
    }
    for (key, set) in [
        ("catalogs", !r.catalogs.is_empty()),
        ("access_packages", !r.access_packages.is_empty()),
        ("approval", r.approval.is_some()),
    ] {
        if set {
            errors.at(
                &format!("{path}.{key}"),
                format!("{at}: {key} does not apply to a Lifecycle Workflows task (it has no access package)"),
            );
        }
    }
    for (i, c) in r.categories.iter().enumerate() {
        if !CATEGORIES.contains(&c.as_str()) {
            let hint = crate::lenient::did_you_mean(c, &CATEGORIES)
                .map(|near| format!("; did you mean {near:?}?"))
                .unwrap_or_else(|| format!(" (known: {})", CATEGORIES.join(", ")));
            errors.at(
                &format!("{path}.categories.{i}"),
                format!("{at}: unknown workflow category {c:?}{hint}"),
            );
        }
    }
    Some(TaskScope {
        workflows: r.workflows.clone(),
        tasks: r.tasks.clone(),
        categories: r.categories.clone(),
    })
}

/// A task whose rule depends on its workflow's category, which could not be read: the task
/// fails (in audit mode, that rule's or the defaults', it completes and says so), and the
/// worker decides again (`incomplete`) before that is final.
fn no_category(c: &Callout, why: &str, mode: Mode) -> Decision {
    let (action, outcome) = match mode {
        Mode::Enforce => (Action::Deny, "the task fails"),
        Mode::Audit => (Action::Continue, "audit mode: the task completes"),
    };
    let detail = template::cut(
        &format!(
            "accessgate could not read the workflow's category to choose a policy rule ({why}); {outcome}."
        ),
        MAX_DETAIL_CHARS,
    );
    Decision {
        action,
        detail,
        rule: None,
        mode,
        outcomes: Vec::new(),
        incomplete: Some(format!("workflow category: {why}")),
        graph_calls: 1,
        can_deny: c.stage.can_deny(),
        ticket: None,
        approval: None,
    }
}

/// `[SECTION.NAME]` entries (tickets, approvals) built one by one: every problem goes to
/// `errors`, and an entry with a key that could not be read is left out (its error is listed).
fn build_named<R, T>(
    raw: &BTreeMap<String, (R, bool)>,
    build: impl Fn(&str, &R, &mut Vec<(String, String)>) -> Option<T>,
    errors: &mut read::Errors<'_>,
) -> BTreeMap<String, Arc<T>> {
    let mut out = BTreeMap::new();
    for (name, (r, unreadable)) in raw {
        let mut errs = Vec::new();
        if let Some(spec) = build(name, r, &mut errs)
            && !unreadable
        {
            out.insert(name.clone(), Arc::new(spec));
        }
        for (key, m) in errs {
            errors.at(&key, m);
        }
    }
    out
}

/// A rule's reference to a `[SECTION.NAME]`, marked used: the loaded entry, or `None` with an
/// error naming a near miss. An entry that is written but did not load has its own error.
/// `section` is (section, what it is called, loaded entries, written names); `at` is (key
/// path, rule label).
fn named_ref<T>(
    name: Option<&str>,
    (section, what, loaded, written): (&str, &str, &BTreeMap<String, Arc<T>>, &[&str]),
    used: &mut BTreeSet<String>,
    (key, at): (&str, &str),
    errors: &mut read::Errors<'_>,
) -> Option<Arc<T>> {
    let n = name?;
    used.insert(n.to_owned());
    if let Some(spec) = loaded.get(n) {
        return Some(Arc::clone(spec));
    }
    if !written.contains(&n) {
        let hint = crate::lenient::did_you_mean(n, written)
            .map(|near| format!("; did you mean {near:?}?"))
            .unwrap_or_else(|| format!(" (define it under [{section}.{n}])"));
        errors.at(key, format!("{at}: unknown {what} {n:?}{hint}"));
    }
    None
}

/// Verdicts → decision. Enforce: any deny denies; else any error applies `on_error`; else
/// continue. Audit and stages that cannot deny always continue and say what enforce would do.
///
/// Dynamic approval (`owners` is `Some`: the requested package's declared owners): a continue
/// carries the rule's `approval`; a deny is routed to `approval_on_deny` / `approval_on_error`
/// when the rule names one, with the `route` text (a check error still sets `incomplete`, so
/// the worker decides again before the route is final, as before `on_error`). A stage that
/// resolves to no approver denies: an approval with nobody in it is never sent.
fn combine(
    rule: &Rule,
    c: &Callout,
    outcomes: Vec<Outcome>,
    graph_calls: u32,
    can_deny: bool,
    owners: Option<&[crate::approval::Approver]>,
) -> Decision {
    let denied = outcomes
        .iter()
        .any(|o| matches!(o.finding.verdict, Verdict::Deny { .. }));
    let errored = outcomes
        .iter()
        .any(|o| matches!(o.finding.verdict, Verdict::Error { .. }));
    let (would, template) = match (rule.decision, denied, errored) {
        (Some(Action::Deny), ..) => (Action::Deny, &rule.texts.deny),
        (Some(Action::Continue), ..) => (Action::Continue, &rule.texts.allow),
        (None, true, _) => (Action::Deny, &rule.texts.deny),
        (None, false, true) => (
            match rule.on_error {
                OnError::Deny => Action::Deny,
                OnError::Continue => Action::Continue,
            },
            &rule.texts.error,
        ),
        (None, false, false) => (Action::Continue, &rule.texts.allow),
    };
    // A retry can only change the outcome if no check denied outright.
    let incomplete = (errored && !denied && rule.mode == Mode::Enforce && can_deny)
        .then(|| join_reasons(&outcomes, "error"));
    let (mut action, mut template) = if !can_deny {
        (Action::Continue, &rule.texts.notify)
    } else if rule.mode == Mode::Audit {
        (Action::Continue, &rule.texts.audit)
    } else {
        (would, template)
    };
    let mut approval = None;
    let mut unresolved = None;
    if let Some(owners) = owners {
        let spec = match action {
            Action::Continue => rule.approvals.allow.as_ref(),
            Action::Deny if denied => rule.approvals.on_deny.as_ref(),
            Action::Deny => rule.approvals.on_error.as_ref(),
        };
        match spec.map(|s| s.resolve(owners)) {
            None => {} // a plain deny
            Some(Ok(stage)) => {
                if action == Action::Deny {
                    (action, template) = (Action::Continue, &rule.texts.route);
                }
                approval = Some(stage);
            }
            Some(Err(why)) => unresolved = Some(why),
        }
    }
    let detail = match &unresolved {
        Some(why) => {
            action = Action::Deny;
            template::cut(
                &format!("accessgate denied this request: {why}."),
                MAX_DETAIL_CHARS,
            )
        }
        None => {
            let approvers = approval
                .as_ref()
                .map(|a: &ApprovalStage| ApprovalStage::describe(&a.primary));
            template.render(
                |v| match (v, &approval, &approvers) {
                    ("approval", Some(a), _) => a.name.clone(),
                    ("approvers", _, Some(names)) => names.clone(),
                    _ => value(v, c, Some(&rule.name), &outcomes, action, would),
                },
                MAX_DETAIL_CHARS,
            )
        }
    };
    Decision {
        action,
        detail,
        rule: Some(rule.name.clone()),
        mode: rule.mode,
        outcomes,
        // An approval that resolves to nobody is the policy's own answer: nothing to retry.
        incomplete: incomplete.filter(|_| unresolved.is_none()),
        graph_calls,
        can_deny,
        ticket: None,
        approval,
    }
}

/// A ticket-only placeholder's value (`None` for the detail placeholders).
fn ticket_value(name: &str, c: &Callout, facts: &Facts, explanation: &str) -> Option<String> {
    let subject_id = |s: &crate::callout::Subject| {
        s.object_id
            .clone()
            .or_else(|| s.id.clone())
            .unwrap_or_default()
    };
    let request = match &facts.request {
        crate::directory::Fetched::Ok(r) => Some(r),
        _ => None,
    };
    Some(match name {
        "requestor" => c
            .requestor
            .display_name
            .clone()
            .unwrap_or_else(|| subject_id(&c.requestor)),
        "requestor_id" => subject_id(&c.requestor),
        "target_id" => subject_id(&c.target),
        "upn" => c
            .task
            .as_deref()
            .and_then(|t| t.subject_upn.clone())
            .unwrap_or_default(),
        "manager_id" => c
            .task
            .as_deref()
            .and_then(|t| t.manager.id.clone())
            .unwrap_or_default(),
        "request_id" => c.request_id.to_string(),
        "stage_instance_id" => c.stage_instance_id.to_string(),
        "link" => format!("accessgate:{}", c.stage_instance_id),
        "justification" => request
            .and_then(|r| r.justification.clone())
            .unwrap_or_default(),
        "answers" => {
            let from_callout = c.answers.parsed();
            let list = if from_callout.is_empty() {
                request.map(|r| r.answers.as_slice()).unwrap_or(&[])
            } else {
                from_callout
            };
            list.iter()
                .map(|a| match &a.question {
                    Some(q) => format!("{q}: {}", a.value),
                    None => a.value.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        }
        "explanation" => explanation.to_owned(),
        _ => return None,
    })
}

/// Parses a set of detail templates over `base`, checking each fits [`MAX_DETAIL_CHARS`];
/// `at` names them in errors, `path` locates them.
fn texts(
    at: &str,
    path: &str,
    raw: Option<&RawDetail>,
    base: &Texts,
    errors: &mut read::Errors<'_>,
) -> Texts {
    let mut out = base.clone();
    let Some(raw) = raw else {
        return out;
    };
    for (name, src, slot) in [
        ("allow", &raw.allow, &mut out.allow),
        ("deny", &raw.deny, &mut out.deny),
        ("error", &raw.error, &mut out.error),
        ("audit", &raw.audit, &mut out.audit),
        ("notify", &raw.notify, &mut out.notify),
        ("route", &raw.route, &mut out.route),
    ] {
        let Some(src) = src else { continue };
        let key = format!("{path}.{name}");
        match Template::parse(src) {
            Ok(t) if t.literal_len() > MAX_DETAIL_CHARS => errors.at(
                &key,
                format!("{at}.{name}: the text alone is longer than {MAX_DETAIL_CHARS} characters"),
            ),
            Ok(t) => *slot = t,
            Err(e) => errors.at(&key, format!("{at}.{name}: {e}")),
        }
    }
    out
}

/// `; did you mean "payments"?` for a near miss, else how to declare the package.
#[cfg(test)]
mod tests;
