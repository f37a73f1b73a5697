//! `accessgate doctor`: walks the path a resume takes (configuration, identity host, managed
//! identity, Key Vault, Graph token, the permission resume needs, the queue) and prints a
//! pass/fail report with the fix for each failure. Never prints a secret or token.

use std::sync::Arc;

use base64::Engine as _;

use crate::config::Config;
use crate::credentials::{Audience, Certificate, CredentialError, Credentials, STORAGE_RESOURCE};
use crate::credentials::{CredentialMode, SignWith};
use crate::graph::GraphClient;
use crate::queue::Settings as QueueSettings;

mod azure;
mod extensions;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: &str, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            verdict: Verdict::Pass,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            verdict: Verdict::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            verdict: Verdict::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    /// A check from what a comparison found: failures, then warnings, after what was seen;
    /// `ok` is added when nothing was found.
    fn from_findings(name: &str, seen: &str, fails: &[String], warns: &[String], ok: &str) -> Self {
        let all: Vec<&str> = fails.iter().chain(warns).map(String::as_str).collect();
        if !fails.is_empty() {
            Check::fail(
                name,
                format!("{seen}: {}", all.join("; ")),
                "see the message",
            )
        } else if !warns.is_empty() {
            Check::warn(
                name,
                format!("{seen}: {}", all.join("; ")),
                "see the message",
            )
        } else {
            Check::pass(name, format!("{seen}{ok}"))
        }
    }
    fn from_credential(name: &str, e: &CredentialError) -> Self {
        match e {
            CredentialError::Misconfigured { setting, .. } => Check::fail(
                name,
                e.to_string(),
                format!("fix {setting} (see the message)"),
            ),
            CredentialError::Unavailable { .. } => Check::fail(
                name,
                e.to_string(),
                "the service is unreachable or throttling: check network access from this host and try again",
            ),
        }
    }
}

/// Roles on a catalog that allow `resume` (protocol.md §3.6).
const RESUME_ROLES: &[&str] = &[
    "Access package assignment manager",
    "Access package manager",
    "Catalog owner",
];
const RESUME_PERMISSION: &str = "EntitlementManagement.ReadWrite.All";

/// The claims of our own token that the report shows (decoded, not verified: it is only shown).
fn token_claims(token: &str) -> serde_json::Value {
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

pub async fn run(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(Check::pass(
        "configuration",
        format!(
            "valid; credentials mode {}, {} extension(s)",
            config.credentials.mode.name(),
            config.extensions.len()
        ),
    ));
    for w in &config.warnings {
        out.push(Check::warn(
            "configuration",
            w.message.clone(),
            format!("fix {}", w.setting),
        ));
    }
    let http = match crate::app::http_client() {
        Ok(h) => h,
        Err(e) => {
            out.push(Check::fail(
                "http client",
                e.to_string(),
                "report this as a bug",
            ));
            return out;
        }
    };

    // Identity host: OpenID metadata and signing keys (needed to validate every callout).
    let meta_url = config.identity.authority.join(&format!(
        "/{}/v2.0/.well-known/openid-configuration",
        config.identity.tenant_id
    ));
    match http.get(&meta_url).send().await {
        Ok(r) if r.status().is_success() => out.push(Check::pass(
            "identity host",
            format!("{} answers", config.identity.authority),
        )),
        Ok(r) => out.push(Check::fail(
            "identity host",
            format!("OpenID metadata: HTTP {}", r.status()),
            "check identity.tenant_id and identity.authority / identity.cloud",
        )),
        Err(e) => out.push(Check::fail(
            "identity host",
            format!(
                "{} unreachable: {}",
                config.identity.authority,
                crate::outbound::transport_error(&e)
            ),
            "allow outbound HTTPS to the identity host (login.microsoftonline.com or your cloud's)",
        )),
    }

    let creds = crate::app::credentials_for(config, &http);
    let mode = &config.credentials.mode;
    let needs_mi = mode.uses_managed_identity()
        || matches!(&config.queue, QueueSettings::AzureStorage(q)
            if matches!(q.auth, crate::queue::settings::StorageAuthSettings::Entra)
                && config.credentials.platform.identity_endpoint.is_some());

    // Managed identity.
    let mut mi_ok = true;
    if needs_mi {
        let resource = match mode {
            CredentialMode::KeyVaultSecret { .. } | CredentialMode::KeyVaultCertificate { .. } => {
                config.credentials.key_vault_resource.clone()
            }
            CredentialMode::ManagedIdentity => config
                .graph
                .scope
                .trim_end_matches(".default")
                .trim_end_matches('/')
                .to_owned(),
            _ => STORAGE_RESOURCE.to_owned(),
        };
        match creds.managed_identity().token(&resource).await {
            Ok(t) => {
                let c = token_claims(t.token.expose());
                out.push(Check::pass(
                    "managed identity",
                    format!(
                        "{}: token for {resource} (appid {}, object id {})",
                        creds.managed_identity().describe(),
                        c["appid"].as_str().unwrap_or("?"),
                        c["oid"].as_str().unwrap_or("?")
                    ),
                ));
            }
            Err(e) => {
                mi_ok = false;
                out.push(Check::from_credential("managed identity", &e));
            }
        }
    }

    // Key Vault.
    if let Some(kv) = creds.key_vault() {
        if !mi_ok {
            out.push(Check::fail(
                "key vault",
                "skipped: the managed identity has no token",
                "fix the managed identity first",
            ));
        } else {
            match mode {
                CredentialMode::KeyVaultSecret { secret_name, .. } => {
                    match kv.secret(creds.managed_identity(), secret_name).await {
                        Ok(s) if !s.value.is_empty() => out.push(Check::pass(
                            "key vault",
                            format!("read secret {secret_name} from {}", kv.url()),
                        )),
                        Ok(_) => out.push(Check::fail(
                            "key vault",
                            format!("secret {secret_name} is empty"),
                            "store the app registration's client secret value in it",
                        )),
                        Err(e) => out.push(Check::from_credential("key vault", &e)),
                    }
                }
                CredentialMode::KeyVaultCertificate {
                    certificate_name,
                    sign_with,
                    ..
                } => {
                    let loaded = Certificate::load(
                        kv,
                        creds.managed_identity(),
                        certificate_name,
                        *sign_with,
                    )
                    .await
                    .and_then(|c| c.check_validity(certificate_name).map(|()| c));
                    match loaded {
                        Ok(c) => {
                            let signed = c
                                .client_assertion(
                                    kv,
                                    creds.managed_identity(),
                                    mode.client_id().unwrap_or_default(),
                                    creds.token_url(),
                                )
                                .await;
                            let how = match sign_with {
                                SignWith::KeyVault => "signed by Key Vault",
                                SignWith::Local => "signed locally",
                            };
                            match signed {
                                Ok(_) => out.push(Check::pass(
                                    "key vault",
                                    format!(
                                        "certificate {certificate_name} (x5t#S256 {}), valid until {}, assertion {how}",
                                        c.x5t_s256,
                                        c.expires
                                            .and_then(|t| jiff::Timestamp::from_second(t).ok())
                                            .map_or_else(|| "?".into(), |t| t.to_string())
                                    ),
                                )),
                                Err(e) => out.push(Check::from_credential("key vault", &e)),
                            }
                        }
                        Err(e) => out.push(Check::from_credential("key vault", &e)),
                    }
                }
                _ => {}
            }
        }
    }

    // Graph token.
    let graph_token = match creds.fetch(Audience::Graph).await {
        Ok(t) => {
            let c = token_claims(t.token.expose());
            out.push(Check::pass(
                "graph token",
                format!(
                    "acquired for {} (appid {}, object id {})",
                    config.graph.scope,
                    c["appid"].as_str().or(c["azp"].as_str()).unwrap_or("?"),
                    c["oid"].as_str().unwrap_or("?")
                ),
            ));
            Some(c)
        }
        Err(e) => {
            out.push(Check::from_credential("graph token", &e));
            None
        }
    };

    // The permission resume needs, and the directory reads the policies' checks make.
    if let Some(claims) = graph_token {
        let graph = GraphClient::new(http.clone(), config.graph.clone(), creds.clone());
        out.push(resume_permission(config, &graph, &claims).await);
        if let Some(c) = directory_permissions(config, &claims) {
            out.push(c);
        }
        // The extensions as Entra holds them, against [extensions.NAME].
        out.extend(extensions::checks(config, &graph).await);
    }

    // The relay Logic App and the always-ready instances, in Azure Resource Manager.
    out.extend(azure::checks(config, &http, &creds).await);

    // Queue.
    out.push(queue_check(config, &http, &creds).await);
    // ServiceNow: the connection, every table a ticket rule writes, and the webhook secret.
    if let Some(sn) = &config.servicenow {
        out.extend(servicenow_checks(config, sn, &http, &creds).await);
    }
    out
}

/// One application permission of a set is enough; `what` says which checks need it.
struct Need {
    any_of: &'static [&'static str],
    what: &'static str,
    /// A catalog role can stand in (entitlement-management reads in the catalog it is on).
    catalog_role_may_do: bool,
}

/// The Graph application permissions the configured policies' checks read with, against the
/// `roles` of accessgate's Graph token. `None` when no check reads the directory.
fn directory_permissions(config: &Config, claims: &serde_json::Value) -> Option<Check> {
    let reads = std::iter::once(&config.policy)
        .chain(config.extensions.iter().filter_map(|e| e.policy.as_ref()))
        .map(crate::policy::Policy::graph_reads)
        .fold(crate::policy::GraphReads::default(), |a, b| {
            crate::policy::GraphReads {
                needs: a.needs.union(b.needs),
                categories: a.categories || b.categories,
                directory_roles: a.directory_roles || b.directory_roles,
            }
        });
    let mut needs = Vec::new();
    if reads.needs.user {
        needs.push(Need {
            any_of: &["User.Read.All", "User.ReadWrite.All", "Directory.Read.All"],
            what: "hr, sod and ticket checks (the user, manager, sponsors)",
            catalog_role_may_do: false,
        });
        needs.push(Need {
            any_of: &[
                "User-LifeCycleInfo.Read.All",
                "User-LifeCycleInfo.ReadWrite.All",
            ],
            what: "hr (employeeLeaveDateTime and the other lifecycle attributes)",
            catalog_role_may_do: false,
        });
    }
    if reads.needs.holdings {
        needs.push(Need {
            any_of: &[
                "GroupMember.Read.All",
                "Group.Read.All",
                "Directory.Read.All",
            ],
            what: "sod (transitive group memberships)",
            catalog_role_may_do: false,
        });
        needs.push(Need {
            any_of: &["Directory.Read.All", "AppRoleAssignment.ReadWrite.All"],
            what: "sod (app role assignments)",
            catalog_role_may_do: false,
        });
        needs.push(Need {
            any_of: &[
                "EntitlementManagement.Read.All",
                "EntitlementManagement.ReadWrite.All",
            ],
            what: "sod (assignments and pending requests)",
            catalog_role_may_do: true,
        });
    }
    if reads.needs.request {
        needs.push(Need {
            any_of: &[
                "EntitlementManagement.Read.All",
                "EntitlementManagement.ReadWrite.All",
            ],
            what: "ticket checks and ticket fields (the request's justification and answers)",
            catalog_role_may_do: true,
        });
    }
    if reads.categories {
        needs.push(Need {
            any_of: &[
                "LifecycleWorkflows.Read.All",
                "LifecycleWorkflows.ReadWrite.All",
            ],
            what: "Lifecycle Workflows rules with categories (the workflow's category)",
            catalog_role_may_do: false,
        });
    }
    if reads.directory_roles {
        needs.push(Need {
            any_of: &[
                "RoleManagement.Read.Directory",
                "RoleManagement.Read.All",
                "Directory.Read.All",
            ],
            what: "sod in PIM rules (the directory roles already held)",
            catalog_role_may_do: false,
        });
    }
    if needs.is_empty() {
        return None;
    }
    let held: Vec<&str> = claims["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(serde_json::Value::as_str)
        .collect();
    let missing: Vec<&Need> = needs
        .iter()
        .filter(|n| !n.any_of.iter().any(|p| held.contains(p)))
        .collect();
    let name = "directory permissions";
    if missing.is_empty() {
        let mut used: Vec<&str> = needs
            .iter()
            .filter_map(|n| n.any_of.iter().find(|p| held.contains(p)).copied())
            .collect();
        used.sort_unstable();
        used.dedup();
        return Some(Check::pass(
            name,
            format!(
                "the token holds what the policies' checks read with: {}",
                used.join(", ")
            ),
        ));
    }
    let text = missing
        .iter()
        .map(|n| format!("{} for {}", n.any_of.join(" or "), n.what))
        .collect::<Vec<_>>()
        .join("; ");
    let fix = "grant the application permission (Entra ID > App registrations > API permissions > Microsoft Graph > Application permissions, then Grant admin consent; for a managed identity: New-MgServicePrincipalAppRoleAssignment)";
    if missing.iter().all(|n| n.catalog_role_may_do) {
        Some(Check::warn(
            name,
            format!("missing {text} (a catalog role covers reads in its own catalog only)"),
            fix,
        ))
    } else {
        Some(Check::fail(name, format!("missing {text}"), fix))
    }
}

async fn servicenow_checks(
    config: &Config,
    sn: &crate::tickets::servicenow::Settings,
    http: &reqwest::Client,
    creds: &Arc<Credentials>,
) -> Vec<Check> {
    use crate::tickets::servicenow::ServiceNow;
    let mut out = Vec::new();
    let client = ServiceNow::new(http.clone(), sn.clone(), Some(creds.clone()));
    let mut tables: Vec<String> = std::iter::once(&config.policy)
        .chain(config.extensions.iter().filter_map(|e| e.policy.as_ref()))
        .flat_map(|p| p.ticket_specs())
        .map(|s| s.table.clone())
        .collect();
    tables.sort();
    tables.dedup();
    let opens = !tables.is_empty();
    if tables.is_empty() {
        tables.push("sys_user".into());
    }
    for table in &tables {
        let by = std::time::Instant::now() + std::time::Duration::from_secs(15);
        // A read of one record with the bridge's own link query: proves the connection, the
        // credentials and read access to the table.
        match client
            .find_linked(table, "correlation_id", "accessgate:doctor", &[], by)
            .await
        {
            Ok(_) => out.push(Check::pass(
                "servicenow",
                format!("{} answers; table {table} is readable", sn.instance.base()),
            )),
            Err(e) => out.push(Check::fail(
                "servicenow",
                format!("table {table}: {e}"),
                "check servicenow.instance_url and the account's roles (read and write on the table, e.g. itil; catalog ordering for catalog_item)",
            )),
        }
    }
    if let Some(b) = &sn.bridge.webhook_bearer {
        out.push(Check::pass(
            "servicenow webhook bearer",
            format!(
                "Entra bearer tokens for {} from {} caller(s) are accepted",
                b.audiences.join(", "),
                b.callers.len()
            ),
        ));
    }
    match &sn.bridge.webhook_secret {
        None if opens && sn.bridge.webhook_bearer.is_some() => {}
        None if opens => out.push(Check::warn(
            "servicenow webhook",
            "servicenow.webhook_secret is not set: every close webhook is refused; only the poll closes tickets",
            "set servicenow.webhook_secret_secret (Key Vault) or ACCESSGATE_SERVICENOW__WEBHOOK_SECRET, and the same value in ServiceNow's x_accessgate.webhook_secret",
        )),
        None => {}
        Some(src) => match client.secret(src, true).await {
            Ok(s) if s.expose().len() < 16 => out.push(Check::warn(
                "servicenow webhook",
                "the webhook secret is shorter than 16 characters",
                "use a random secret of 32 characters or more",
            )),
            Ok(_) => out.push(Check::pass("servicenow webhook", "the webhook secret is readable")),
            Err(e) => out.push(Check::fail(
                "servicenow webhook",
                e.to_string(),
                "grant the managed identity Key Vault Secrets User, and check servicenow.webhook_secret_secret",
            )),
        },
    }
    if opens && sn.bridge.poll_interval.is_none() {
        out.push(Check::warn(
            "servicenow poll",
            "servicenow.poll_interval_seconds = 0: a lost webhook leaves its request waiting until the deadline",
            "set servicenow.poll_interval_seconds (default 60)",
        ));
    }
    out
}

async fn resume_permission(
    config: &Config,
    graph: &GraphClient,
    claims: &serde_json::Value,
) -> Check {
    let name = "resume permission";
    let has_permission = claims["roles"]
        .as_array()
        .is_some_and(|r| r.iter().any(|r| r.as_str() == Some(RESUME_PERMISSION)));
    let oid = claims["oid"].as_str().unwrap_or_default();
    let catalogs: Vec<&str> = config
        .extensions
        .iter()
        .flat_map(|e| e.catalog_ids.iter().map(String::as_str))
        .collect();
    let assignments = graph.role_assignments(oid).await;
    if has_permission {
        return match assignments {
            Err(e) if !matches!(e, crate::graph::GraphError::Rejected { .. }) => Check::fail(
                name,
                format!("the token has {RESUME_PERMISSION}, but Graph is not reachable: {e}"),
                "allow outbound HTTPS to graph.base_url",
            ),
            _ => Check::pass(
                name,
                format!(
                    "application permission {RESUME_PERMISSION} (every catalog); Graph reachable"
                ),
            ),
        };
    }
    let fix = format!(
        "in Entra ID Governance > Catalogs > (catalog) > Roles and administrators, add {} as Access package assignment manager (least privilege), or grant the application permission {RESUME_PERMISSION} with admin consent",
        graph.identity().to_lowercase().trim_start_matches("the ")
    );
    let list = match assignments {
        Ok(l) => l,
        Err(e) => {
            return Check::fail(
                name,
                format!(
                    "the token has no {RESUME_PERMISSION} and the catalog roles cannot be read: {e}"
                ),
                fix,
            );
        }
    };
    let granted = |catalog: &str| {
        list.iter().any(|(role, scope)| {
            RESUME_ROLES.iter().any(|r| r.eq_ignore_ascii_case(role))
                && (scope == "/"
                    || scope.eq_ignore_ascii_case(&format!("/AccessPackageCatalog/{catalog}")))
        })
    };
    if catalogs.is_empty() {
        let with_role: Vec<String> = list
            .iter()
            .filter(|(role, _)| RESUME_ROLES.iter().any(|r| r.eq_ignore_ascii_case(role)))
            .map(|(role, scope)| format!("{role} on {scope}"))
            .collect();
        return if with_role.is_empty() {
            Check::fail(name, "no resume permission and no catalog role", fix)
        } else {
            Check::warn(
                name,
                format!(
                    "catalog roles: {}; no extension lists catalog_ids, so they cannot be matched to your catalogs",
                    with_role.join(", ")
                ),
                "set extensions.NAME.catalog_ids so doctor (and intake) know the catalogs",
            )
        };
    }
    let missing: Vec<&str> = catalogs.iter().copied().filter(|c| !granted(c)).collect();
    if missing.is_empty() {
        Check::pass(
            name,
            format!(
                "catalog role on every configured catalog ({})",
                catalogs.join(", ")
            ),
        )
    } else {
        Check::fail(
            name,
            format!(
                "no role that allows resume on catalog(s) {}",
                missing.join(", ")
            ),
            fix,
        )
    }
}

async fn queue_check(config: &Config, http: &reqwest::Client, creds: &Arc<Credentials>) -> Check {
    match &config.queue {
        QueueSettings::Sqlite => {
            let dir = &config.server.data_dir;
            match std::fs::create_dir_all(dir).and_then(|()| {
                let probe = dir.join(".doctor-probe");
                std::fs::write(&probe, b"ok")?;
                std::fs::remove_file(&probe)
            }) {
                Ok(()) => Check::pass("queue", format!("sqlite in {} (writable)", dir.display())),
                Err(e) => Check::fail(
                    "queue",
                    format!("{} is not writable: {e}", dir.display()),
                    "fix server.data_dir (a local disk: SQLite WAL does not work on network shares)",
                ),
            }
        }
        QueueSettings::AzureStorage(q) => {
            let queue = crate::queue::azure_backend::connect(http.clone(), q, creds.clone());
            match queue.ensure_queues().await {
                Ok(()) => match queue.approximate_count(false).await {
                    Ok(n) => Check::pass(
                        "queue",
                        format!(
                            "Azure Storage queue {}/{} reachable, about {n} message(s) waiting",
                            q.endpoint, q.name
                        ),
                    ),
                    Err(e) => Check::fail("queue", e.to_string(), "see the message"),
                },
                Err(e) => Check::fail(
                    "queue",
                    e.to_string(),
                    "grant the identity Storage Queue Data Contributor on the account (or check queue.connection_string)",
                ),
            }
        }
    }
}

/// Prints the report; the exit code is 1 when any check failed.
pub fn print(checks: &[Check]) -> bool {
    let mut ok = true;
    for c in checks {
        let tag = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => {
                ok = false;
                "FAIL"
            }
        };
        println!("{tag}  {:<18} {}", c.name, c.detail);
        if let Some(f) = &c.fix
            && c.verdict != Verdict::Pass
        {
            println!("      fix: {f}");
        }
    }
    println!(
        "{}",
        if ok {
            "doctor: every check passed"
        } else {
            "doctor: some checks failed (see fix: lines)"
        }
    );
    ok
}
