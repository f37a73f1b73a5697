//! `accessgate-emulator demo`: the whole flow on one machine. Starts the emulator, starts the
//! real `accessgate serve` (SQLite queue) against it, plays a short story of callouts as Entra
//! would send them (PoP signed requests), and prints what happened in plain words with each callout's ack latency.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use accessgate_emulator::{
    Emulator, EmulatorConfig, MintOptions, PopOptions, SendOptions, SendReport, Shape, SignWith,
};

/// The demo tenant's policy and directory (also the repository's examples).
const POLICY: &str = include_str!("../../examples/policies/contoso.toml");
const WORLD: &str = include_str!("../../examples/world/world.json");

/// Looks up the demo world's ids by display name, so the story reads in names.
struct Names(serde_json::Value);

impl Names {
    fn find(&self, list: &str, name: &str) -> anyhow::Result<serde_json::Value> {
        self.0[list]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["displayName"].as_str() == Some(name))
            .cloned()
            .with_context(|| format!("the demo world has no {list} entry {name:?}"))
    }

    fn id(&self, list: &str, name: &str) -> anyhow::Result<String> {
        Ok(self.find(list, name)?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// A callout for `user`'s request of `package` (the world's request when there is one).
    fn callout(&self, user: &str, package: &str, stage: &str) -> anyhow::Result<SendOptions> {
        let uid = self.id("users", user)?;
        let pkg = self.find("accessPackages", package)?;
        let pid = pkg["id"].as_str().unwrap_or_default().to_owned();
        let request = self.0["requests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["targetId"].as_str() == Some(uid.as_str())
                    && r["accessPackageId"].as_str() == Some(pid.as_str())
            })
            .and_then(|r| r["id"].as_str().map(str::to_owned));
        Ok(SendOptions {
            stage: Some(stage.into()),
            request_id: request,
            target_object_id: Some(uid),
            target_display_name: Some(user.into()),
            access_package_id: Some(pid),
            access_package_name: Some(package.into()),
            catalog_id: pkg["catalogId"].as_str().map(str::to_owned),
            ..Default::default()
        })
    }
}

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where `accessgate` is: the given path, or next to this executable (same cargo profile).
fn find_accessgate(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let sibling = me.with_file_name(format!("accessgate{}", std::env::consts::EXE_SUFFIX));
    if sibling.is_file() {
        Ok(sibling)
    } else {
        bail!(
            "accessgate binary not found at {}; build it first (cargo build --workspace) or pass --accessgate PATH",
            sibling.display()
        )
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_files(dir: &Path, emu: &Emulator, port: u16) -> anyhow::Result<PathBuf> {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let cfg = emu.config();
    let config = dir.join("accessgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{port}"
data_dir = "data"

[identity]
authority = "{base}"
tenant_id = "{tenant}"

[inbound]
# direct mode: Entra's PoP signed requests, bound to the extension's Logic App resource id

[extensions.demo]
resource = "{resource}"

# The Lifecycle Workflows custom task extension: its own Logic App resource id, and its
# callbackConfiguration.timeoutDuration.
[extensions.tasks]
resource = "{lcw_resource}"
kind = "lifecycle_workflows"
callback_timeout = "PT1H"

[graph]
base_url = "{base}"
scope = "https://graph.microsoft.com/.default"

# accessgate signs in as its app registration with a certificate kept in Key Vault: the
# managed identity reads the certificate and Key Vault signs the client assertion.
[credentials]
mode = "key_vault_certificate"
client_id = "{client}"
key_vault_url = "{vault}"
certificate_name = "accessgate-graph"

[policy]
file = "policy.toml"

# The ticket check reads ServiceNow's Table API; its password is a Key Vault secret, read with
# the managed identity like the Graph certificate.
[servicenow]
instance_url = "{base}"
auth = "basic"
username = "{sn_user}"
password_secret = "servicenow-password"
# Ticket bridging: ServiceNow's business rule signs its close webhook with this Key Vault
# secret; the poll finds closes whose webhook was lost.
webhook_secret_secret = "servicenow-webhook"
poll_interval_seconds = 2

# PIM custom extension (pre-approval): PIM's v2 tokens for accessgate's API app.
[pim]
audiences = ["api://accessgate.demo/{client}"]
budget_ms = 5000

[log]
format = "text"
"#,
            base = emu.base_url(),
            tenant = cfg.tenant_id,
            client = cfg.graph_client_id,
            vault = emu.key_vault_url(),
            resource = cfg.logic_app_resource,
            lcw_resource = cfg.lcw_logic_app_resource,
            sn_user = emu.servicenow_credentials().username,
        ),
    )?;
    Ok(config)
}

/// The ServiceNow bridge: an approved request opens a ticket, Entra waits, the ticket's close
/// resumes it (by webhook, or by the poll when the webhook is lost).
async fn bridge_story(
    emu: &Emulator,
    target: &str,
    webhook: &accessgate_emulator::WebhookSettings,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    println!(
        "\nServiceNow ticket bridging (rule badge-ticket: an approved \"Data center badge\" opens a facilities ticket)"
    );
    let stories = [
        ("Frank", "3", "Badge printed and handed over", false, None),
        (
            "Grace",
            "4",
            "No data center access for this role",
            false,
            Some("denied"),
        ),
        ("Heidi", "3", "Badge issued", true, None),
    ];
    for (n, (who, state, notes, lost, expect)) in stories.into_iter().enumerate() {
        let sid = uuid::Uuid::new_v4().to_string();
        let opts = SendOptions {
            target_url: target.to_owned(),
            stage: Some("assignmentRequestApproved".into()),
            stage_instance_id: Some(sid.clone()),
            access_package_name: Some("Data center badge".into()),
            target_display_name: Some(who.into()),
            ..Default::default()
        };
        let report = emu.send_callout(&opts).await?;
        println!(
            "{}. {who}'s \"Data center badge\" request is approved -> HTTP {}",
            n + 1,
            report.status.map_or("no answer".into(), |s| s.to_string())
        );
        let link = format!("accessgate:{sid}");
        let ticket = wait_ticket(emu, &link).await;
        let Some(ticket) = ticket else {
            failures.push(format!("bridge {who}: no ticket opened"));
            continue;
        };
        println!(
            "   -> accessgate opened ServiceNow {} (\"{}\"); Entra waits",
            ticket.number,
            ticket
                .fields
                .get("short_description")
                .cloned()
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        if emu.resumes().iter().any(|r| r.stage_instance_id == sid) {
            failures.push(format!("bridge {who}: resumed while the ticket was open"));
        }
        emu.set_servicenow_webhook(&accessgate_emulator::WebhookSettings {
            drop: lost,
            ..webhook.clone()
        })?;
        let closed_at = Instant::now();
        emu.close_servicenow_ticket(
            &ticket.table,
            &ticket.sys_id,
            &accessgate_emulator::CloseTicket {
                state: Some(state.into()),
                close_notes: Some(notes.into()),
                close_code: None,
            },
        )?;
        println!(
            "   -> an agent closes {} as {}{}",
            ticket.number,
            if state == "3" {
                "Closed Complete"
            } else {
                "Closed Incomplete"
            },
            if lost {
                "; ServiceNow's webhook is lost on the way"
            } else {
                ""
            }
        );
        match wait_resume(emu, &sid).await {
            Some(r) => {
                println!(
                    "   -> Graph resume {} {:.0} ms after the close ({}): \"{}\"",
                    if r.state.is_some() {
                        "DENY"
                    } else {
                        "CONTINUE"
                    },
                    closed_at.elapsed().as_secs_f64() * 1000.0,
                    if lost {
                        "found by the poll"
                    } else {
                        "woken by the webhook"
                    },
                    r.detail.clone().unwrap_or_default()
                );
                if r.state.as_deref() != expect {
                    failures.push(format!(
                        "bridge {who}: unexpected resume state {:?}",
                        r.state
                    ));
                }
            }
            None => failures.push(format!("bridge {who}: no resume")),
        }
    }
    emu.set_servicenow_webhook(webhook)?;
    Ok(())
}

/// Lifecycle Workflows: a joiner's task completes (manager present) or fails (none); a
/// leaver's task waits for its offboarding ticket and completes when the ticket closes.
async fn lifecycle_story(
    emu: &Emulator,
    target: &str,
    names: &Names,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    println!(
        "\nLifecycle Workflows custom task extension (rules joiners-need-a-manager, leavers-are-offboarded)"
    );
    let joiner = names.id("workflows", "Onboard new hires")?;
    let leaver = names.id("workflows", "Offboard leavers")?;
    let task_of = |wf: &str| -> anyhow::Result<String> {
        names.0["workflows"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["id"] == wf)
            .and_then(|w| w["tasks"][0]["id"].as_str())
            .map(str::to_owned)
            .context("a workflow without a task in the demo world")
    };
    let stories = [
        ("Hugo", &joiner, "Onboard new hires", "completed"),
        ("Dan", &joiner, "Onboard new hires", "failed"),
        ("Lena", &leaver, "Offboard leavers", "completed"),
    ];
    for (n, (who, wf, wf_name, expect)) in stories.into_iter().enumerate() {
        let user = names.find("users", who)?;
        let result = uuid::Uuid::new_v4().to_string();
        let opts = SendOptions {
            target_url: target.to_owned(),
            shape: accessgate_emulator::Shape::Lifecycle,
            request_id: Some(result.clone()),
            workflow_id: Some(wf.clone()),
            workflow_name: Some(wf_name.into()),
            task_id: Some(task_of(wf)?),
            target_object_id: user["id"].as_str().map(str::to_owned),
            target_display_name: Some(who.into()),
            subject_upn: user["userPrincipalName"].as_str().map(str::to_owned),
            manager_id: user["manager"].as_str().map(str::to_owned),
            timeout: Some("PT1H".into()),
            ..Default::default()
        };
        let report = emu.send_callout(&opts).await?;
        println!(
            "{}. \"{wf_name}\" runs its accessgate task for {who} -> HTTP {}",
            n + 1,
            report.status.map_or("no answer".into(), |s| s.to_string())
        );
        if wf == &leaver {
            let link = format!("accessgate:{result}");
            let ticket = wait_ticket(emu, &link).await;
            let Some(ticket) = ticket else {
                failures.push(format!("lifecycle {who}: no offboarding ticket"));
                continue;
            };
            println!(
                "   -> accessgate opened ServiceNow {} (\"{}\"); the task waits",
                ticket.number,
                ticket
                    .fields
                    .get("short_description")
                    .cloned()
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            if emu
                .task(&result)
                .is_some_and(|t| t.processing_status != "inProgress")
            {
                failures.push(format!(
                    "lifecycle {who}: resumed while the ticket was open"
                ));
            }
            emu.close_servicenow_ticket(
                &ticket.table,
                &ticket.sys_id,
                &accessgate_emulator::CloseTicket {
                    state: Some("3".into()),
                    close_notes: Some("Accounts disabled, access removed".into()),
                    close_code: None,
                },
            )?;
            println!(
                "   -> Identity Ops closes {} as Closed Complete",
                ticket.number
            );
        }
        let until = Instant::now() + Duration::from_secs(15);
        let done = loop {
            match emu.task(&result) {
                Some(t) if t.processing_status != "inProgress" => break Some(t),
                _ if Instant::now() > until => break None,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        match done {
            Some(t) => {
                println!(
                    "   -> Graph task resume: operationStatus {}",
                    t.resume
                        .as_ref()
                        .and_then(|b| b["data"]["operationStatus"].as_str())
                        .unwrap_or("(none)")
                );
                if t.processing_status != expect {
                    failures.push(format!(
                        "lifecycle {who}: task {}, expected {expect}",
                        t.processing_status
                    ));
                }
            }
            None => failures.push(format!("lifecycle {who}: no task resume")),
        }
    }
    Ok(())
}

/// PIM: activations answered synchronously from the policy's `[[pim_rules]]`.
async fn pim_story(
    emu: &Emulator,
    url: &str,
    names: &Names,
    failures: &mut Vec<String>,
) -> anyhow::Result<()> {
    use accessgate_emulator::{PimSendOptions, PimShape};
    println!(
        "\nPIM custom extension (pre-approval verdicts; rules privileged-roles-need-a-change, readers-auto-approved)"
    );
    const GA: &str = "62e90394-69f5-4237-9190-012177145e10";
    const SECURITY_ADMIN: &str = "194ae4cb-b126-40b2-bd5b-6091b380977d";
    const GLOBAL_READER: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";
    let base = PimSendOptions {
        target_url: url.to_owned(),
        audience: format!("api://accessgate.demo/{}", emu.config().graph_client_id),
        shape: PimShape::EntraRole,
        ..Default::default()
    };
    let stories = [
        (
            "Bob",
            "Global Administrator",
            GA,
            Some("CHG0040001"),
            "Approved",
        ),
        (
            "Chen",
            "Security Administrator",
            SECURITY_ADMIN,
            None,
            "Denied",
        ),
        (
            "Alice",
            "Global Reader",
            GLOBAL_READER,
            None,
            "AutoApproved",
        ),
    ];
    let mut first = None;
    for (n, (who, role_name, role, ticket, expect)) in stories.into_iter().enumerate() {
        let opts = PimSendOptions {
            principal_id: Some(names.id("users", who)?),
            role_definition_id: Some(role.into()),
            ticket_number: ticket.map(str::to_owned),
            ticket_system: ticket.map(|_| "ServiceNow".to_owned()),
            justification: Some(match ticket {
                Some(t) => format!("Working on {t}"),
                None => "Routine check".into(),
            }),
            ..base.clone()
        };
        let r = emu.send_pim(&opts).await?;
        let body = r.body.clone().unwrap_or_default();
        let outcome = body["evaluationOutcome"].as_str().unwrap_or("(none)");
        println!(
            "{}. {who} activates {role_name}{} -> HTTP {} in {:.0} ms: {outcome}",
            n + 1,
            ticket
                .map(|t| format!(" citing {t}"))
                .unwrap_or_else(|| " without a ticket".into()),
            r.status.map_or("no answer".into(), |s| s.to_string()),
            r.latency_ms
        );
        for reason in body["reason"].as_array().into_iter().flatten() {
            println!("   -> reason: {}", reason.as_str().unwrap_or_default());
        }
        if outcome != expect {
            failures.push(format!("pim {who}: {outcome}, expected {expect}"));
        }
        if first.is_none() {
            first = Some((opts, r));
        }
    }
    // PIM retries the same request (its client timeout passed, say): the recorded verdict.
    if let Some((opts, r)) = first {
        let again = emu
            .send_pim(&PimSendOptions {
                body: Some(r.sent.to_string()),
                ..opts
            })
            .await?;
        let (a, b) = (
            &r.body.unwrap_or_default()["evaluationId"],
            &again.body.unwrap_or_default()["evaluationId"],
        );
        println!("4. PIM re-delivers Bob's request -> the same verdict, evaluationId {b}");
        if a != b {
            failures.push(format!("pim re-delivery: evaluationId {b}, expected {a}"));
        }
    }
    Ok(())
}

/// The ServiceNow ticket linked to `link` (`accessgate:<id>`), within 15 s.
async fn wait_ticket(emu: &Emulator, link: &str) -> Option<accessgate_emulator::TicketView> {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(t) = emu
            .servicenow_tickets()
            .into_iter()
            .find(|t| t.correlation_id == link)
        {
            return Some(t);
        }
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_ready(addr: SocketAddr, child: &mut Child) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("accessgate exited during start-up ({status}); see its log above");
        }
        if let Ok(r) = http.get(format!("http://{addr}/healthz")).send().await
            && r.status().is_success()
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("accessgate did not become ready within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Step {
    title: &'static str,
    opts: SendOptions,
    expect_status: u16,
    /// `Some(None)` = a continue resume, `Some(Some("denied"))` = a deny, `None` = no resume.
    expect_resume: Option<Option<&'static str>>,
    note: &'static str,
}

async fn wait_resume(emu: &Emulator, sid: &str) -> Option<accessgate_emulator::ResumeRecord> {
    let until = Instant::now() + Duration::from_secs(15);
    while Instant::now() < until {
        if let Some(r) = emu
            .resumes()
            .into_iter()
            .find(|r| r.stage_instance_id == sid)
        {
            return Some(r);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// The tenant side, as a user does it after `azd up`: `accessgate setup` plans, then creates
/// the custom extension in the catalog, gives accessgate's identity its catalog role and puts the
/// extension on the Sales CRM policy's stages; a second run has nothing to change.
async fn setup_story(
    binary: &Path,
    config: &Path,
    dir: &Path,
    emu: &Emulator,
    port: u16,
) -> anyhow::Result<()> {
    let principal = emu
        .principals()
        .into_iter()
        .find(|p| p.client_id == emu.config().graph_client_id)
        .map(|p| p.object_id)
        .context("the emulator has no principal for accessgate's app")?;
    let file = dir.join("setup.toml");
    std::fs::write(
        &file,
        format!(
            r#"# What `azd up` outputs, given here (a real run reads `azd env get-values`).
[deployment]
ingress_mode = "direct"
url = "http://127.0.0.1:{port}"
principal_id = "{principal}"
logic_app_resource_id = "{resource}"

[access_packages]
name = "demo"
catalog = "Contoso"
callback_timeout = "P1D"

[[access_packages.policies]]
access_package = "Sales CRM"
stages = ["assignmentRequestCreated", "assignmentRequestApproved"]
"#,
            resource = emu.config().logic_app_resource
        ),
    )?;
    // A file of its own: the demo's configuration serves every catalog of the story.
    let written = dir.join("extensions-from-setup.toml");
    println!("accessgate setup (the custom extension, through the emulated Graph)");
    for (label, plan) in [("--plan", true), ("apply", false), ("again", false)] {
        let mut cmd = tokio::process::Command::new(binary);
        cmd.arg("setup")
            .arg("--config")
            .arg(config)
            .arg("--file")
            .arg(&file)
            .arg("--write-config")
            .arg(&written)
            .env("IDENTITY_ENDPOINT", emu.managed_identity_url())
            .env("IDENTITY_HEADER", &emu.config().identity_header);
        if plan {
            cmd.arg("--plan");
        }
        let out = cmd.output().await.context("running accessgate setup")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "accessgate setup ({label}) failed:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("  $ accessgate setup {}", if plan { "--plan" } else { "" });
        for line in text
            .lines()
            .filter(|l| !l.starts_with("accessgate setup as"))
        {
            println!("    {line}");
        }
    }
    println!();
    Ok(())
}

pub async fn run(accessgate: Option<PathBuf>) -> anyhow::Result<()> {
    let binary = find_accessgate(accessgate)?;
    let emu_running =
        accessgate_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse()?).await?;
    let emu = emu_running.handle();
    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let config = write_files(dir.path(), &emu, port)?;
    let log_path = dir.path().join("accessgate.log");
    let log = std::fs::File::create(&log_path)?;
    // The certificate registered on the app, in the emulated vault.
    let cert = emu.create_certificate("accessgate-graph", Default::default())?;
    // The directory and ServiceNow of the demo tenant, plus one request that cites a closed ticket.
    let mut world: serde_json::Value =
        serde_json::from_str(WORLD).context("examples/world/world.json")?;
    let names = Names(world.clone());
    let chen = names.id("users", "Chen")?;
    let crm = names.id("accessPackages", "Sales CRM")?;
    let closed_request = uuid::Uuid::new_v4().to_string();
    if let Some(list) = world["requests"].as_array_mut() {
        list.push(serde_json::json!({
            "id": closed_request, "accessPackageId": crm, "targetId": chen,
            "state": "pendingApproval", "justification": "Still needed, see RITM0010002"
        }));
    }
    // A change being implemented, assigned to Bob, whose window covers the demo (for PIM).
    let bob_sn = "5e000000000000000000000000000002";
    let window = |h: i64| {
        (jiff::Timestamp::now() + jiff::SignedDuration::from_hours(h))
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    if let Some(tables) = world["servicenow"]["tables"].as_object_mut() {
        tables.insert(
            "change_request".into(),
            serde_json::json!([{"sys_id": "c4000000000000000000000000000001", "number": "CHG0040001",
                "state": {"value": "-1", "display_value": "Implement"}, "short_description": "Rotate the tenant's break-glass credentials",
                "requested_by": "5e000000000000000000000000000001", "assigned_to": bob_sn,
                "start_date": window(-1), "end_date": window(3)}]),
        );
    }
    // The tenant's catalog and the Sales CRM package's assignment policy, for `setup`.
    let catalog = world["accessPackages"][0]["catalogId"].clone();
    world["catalogs"] = serde_json::json!([{"id": catalog, "displayName": "Contoso"}]);
    world["assignmentPolicies"] = serde_json::json!([{
        "id": uuid::Uuid::new_v4().to_string(), "displayName": "Employees", "accessPackageId": crm
    }]);
    emu.load_world(&serde_json::from_value(world)?)?;
    setup_story(&binary, &config, dir.path(), &emu, port).await?;
    emu.put_secret(
        "servicenow-password",
        &emu.servicenow_credentials().password,
    )?;
    let webhook_secret = uuid::Uuid::new_v4().simple().to_string();
    emu.put_secret("servicenow-webhook", &webhook_secret)?;
    println!(
        "accessgate calls Graph as app {} with Key Vault certificate accessgate-graph (x5t#S256 {}), read through the managed identity\n",
        emu.config().graph_client_id,
        cert.x5t_s256
    );
    let mut child = Command::new(&binary)
        .args(["serve", "--config"])
        .arg(&config)
        // What App Service / Functions set when the managed identity is on.
        .env("IDENTITY_ENDPOINT", emu.managed_identity_url())
        .env("IDENTITY_HEADER", &emu.config().identity_header)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let ready = match wait_ready(addr, &mut child).await {
        Ok(d) => d,
        Err(e) => {
            let _ = child.kill();
            eprintln!("{}", std::fs::read_to_string(&log_path).unwrap_or_default());
            return Err(e);
        }
    };
    let _guard = Guard(child);
    let target = format!("http://{addr}/api/elm");
    // ServiceNow's business rule posts to accessgate when a bridged ticket closes.
    let webhook = accessgate_emulator::WebhookSettings {
        url: format!("http://{addr}/api/servicenow/events"),
        secret: webhook_secret.clone(),
        ..Default::default()
    };
    emu.set_servicenow_webhook(&webhook)?;

    println!("accessgate demo");
    println!(
        "  emulated Entra ID + Microsoft Graph at {}",
        emu.base_url()
    );
    println!(
        "  accessgate serve (SQLite queue) at http://{addr}, ready {:.0} ms after start",
        ready.as_secs_f64() * 1000.0
    );
    println!(
        "  policy: examples/policies/contoso.toml (SoD, HR and ServiceNow checks; \"Finance Reports\" always denied at request created/approved)"
    );
    println!("  directory and ServiceNow: examples/world/world.json, served by the emulator\n");

    let captured = format!("PoP {}", emu.mint_pop(&PopOptions::default())?);
    let sales = uuid::Uuid::new_v4().to_string();
    let sales_sid = uuid::Uuid::new_v4().to_string();
    let base = |title, opts: SendOptions, status, resume, note| Step {
        title,
        opts,
        expect_status: status,
        expect_resume: resume,
        note,
    };
    let steps = vec![
        base(
            "Entra checks the endpoint while an admin saves the custom extension (connection test)",
            SendOptions {
                stage: Some("CustomExtensionConnectionTest".into()),
                ..Default::default()
            },
            202,
            None,
            "acknowledged; nothing to decide",
        ),
        base(
            "Ada requests \"Sales Dashboard\" (request created, flat Logic App payload)",
            SendOptions {
                request_id: Some(sales.clone()),
                stage_instance_id: Some(sales_sid.clone()),
                access_package_name: Some("Sales Dashboard".into()),
                ..Default::default()
            },
            202,
            Some(None),
            "",
        ),
        base(
            "Bob requests \"Finance Reports\" (request created)",
            SendOptions {
                access_package_name: Some("Finance Reports".into()),
                ..Default::default()
            },
            202,
            Some(Some("denied")),
            "",
        ),
        base(
            "Carol's request for \"Sales Dashboard\" is approved (Graph {source,type,data} envelope)",
            SendOptions {
                shape: Shape::Envelope,
                stage: Some("assignmentRequestApproved".into()),
                access_package_name: Some("Sales Dashboard".into()),
                ..Default::default()
            },
            202,
            Some(None),
            "",
        ),
        base(
            "Dave's \"Finance Reports\" assignment expires in 14 days (pre-expiration notice)",
            SendOptions {
                stage: Some("assignmentFourteenDaysBeforeExpiration".into()),
                access_package_name: Some("Finance Reports".into()),
                ..Default::default()
            },
            202,
            None,
            "notification only: Entra does not wait for pre-expiration callouts",
        ),
        base(
            "Entra retries Ada's callout (same stage instance id)",
            SendOptions {
                request_id: Some(sales.clone()),
                stage_instance_id: Some(sales_sid.clone()),
                access_package_name: Some("Sales Dashboard".into()),
                ..Default::default()
            },
            202,
            None,
            "duplicate: acknowledged, not queued again, no second resume",
        ),
        base(
            "Someone posts a forged callout: its inner token is signed with a key the tenant never published",
            SendOptions {
                pop: Some(PopOptions {
                    at: Some(MintOptions {
                        sign_with: Some(SignWith::Unknown),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                access_package_name: Some("Finance Reports".into()),
                ..Default::default()
            },
            401,
            None,
            "refused before the body is even read; nothing queued",
        ),
        base(
            "A genuine signed request, but bound to another Logic App (another extension's token)",
            SendOptions {
                pop: Some(PopOptions {
                    p: Some(serde_json::json!(
                        "/subscriptions/22222222-3333-4444-5555-666666666666/resourceGroups/rg-other/providers/Microsoft.Logic/workflows/other"
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            },
            401,
            None,
            "refused: the PoP token's p claim names no configured extension",
        ),
        base(
            "Erin requests \"Sales Dashboard\" (the signed request is captured on the way)",
            SendOptions {
                authorization: Some(captured.clone()),
                access_package_name: Some("Sales Dashboard".into()),
                ..Default::default()
            },
            202,
            Some(None),
            "",
        ),
        base(
            "An attacker replays Erin's captured signed request with a request of their own",
            SendOptions {
                authorization: Some(captured),
                access_package_name: Some("Finance Reports".into()),
                maximum_retries: Some(0),
                ..Default::default()
            },
            401,
            None,
            "refused: each signed request is accepted once",
        ),
        base(
            "Alice, who maintains vendors, requests \"Payments run\" (separation of duties)",
            names.callout("Alice", "Payments run", "assignmentRequestCreated")?,
            202,
            Some(Some("denied")),
            "",
        ),
        base(
            "Chen, a contractor with a pending request for \"Vendor master data\", requests \"Payments run\" (HR status and SoD)",
            names.callout("Chen", "Payments run", "assignmentRequestCreated")?,
            202,
            Some(Some("denied")),
            "",
        ),
        base(
            "Chen requests \"Sales CRM\" and answers \"ServiceNow ticket\" with RITM0010001 (open, opened for Chen)",
            names.callout("Chen", "Sales CRM", "assignmentRequestCreated")?,
            202,
            Some(None),
            "",
        ),
        base(
            "Chen requests \"Sales CRM\" again, citing RITM0010002 in the justification (a closed ticket)",
            SendOptions {
                request_id: Some(closed_request.clone()),
                ..names.callout("Chen", "Sales CRM", "assignmentRequestCreated")?
            },
            202,
            Some(Some("denied")),
            "",
        ),
        base(
            "Lena, who leaves on 1 December, requests \"Finance reporting\" (rule in audit mode)",
            names.callout("Lena", "Finance reporting", "assignmentRequestCreated")?,
            202,
            Some(None),
            "",
        ),
        base(
            "Alice's \"Payments run\" reaches its approval stage (dynamic approval: accessgate picks the approvers)",
            names.callout(
                "Alice",
                "Payments run",
                "assignmentRequestDeterminingApprovalRequirements",
            )?,
            202,
            Some(None),
            "",
        ),
        base(
            "Alice's \"Payments run\" is granted anyway by an admin (granted: checks only report)",
            names.callout("Alice", "Payments run", "assignmentRequestGranted")?,
            202,
            Some(None),
            "",
        ),
    ];
    let expected_resumes = steps.iter().filter(|s| s.expect_resume.is_some()).count();

    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let mut opts = step.opts;
        opts.target_url = target.clone();
        let report: SendReport = emu.send_callout(&opts).await?;
        println!("{}. {}", i + 1, step.title);
        let status = report
            .status
            .map_or("no answer".to_string(), |s| s.to_string());
        let ms = report
            .attempt_latencies_ms
            .first()
            .copied()
            .unwrap_or(report.latency_ms);
        latencies.push(ms);
        println!("   -> HTTP {status} in {ms:.1} ms");
        if report.status != Some(step.expect_status) {
            failures.push(format!(
                "step {}: expected HTTP {}, got {status}",
                i + 1,
                step.expect_status
            ));
        }
        match step.expect_resume {
            Some(expected_state) => match wait_resume(&emu, &report.stage_instance_id).await {
                Some(r) => {
                    let verdict = if r.state.as_deref() == Some("denied") {
                        "DENY"
                    } else {
                        "CONTINUE"
                    };
                    println!(
                        "   -> Graph resume: {verdict}, approvers see: \"{}\"",
                        r.detail.clone().unwrap_or_default()
                    );
                    if let Some(stage) = &r.approval_stage {
                        let approvers: Vec<String> = stage["primaryApprovers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| {
                                let kind = a["@odata.type"].as_str().unwrap_or("");
                                let kind = kind.trim_start_matches("#microsoft.graph.");
                                match (a.get("userId"), a.get("groupId"), a.get("managerLevel")) {
                                    (Some(id), ..) => {
                                        format!("{kind} {}", id.as_str().unwrap_or(""))
                                    }
                                    (_, Some(id), _) => {
                                        format!("{kind} {}", id.as_str().unwrap_or(""))
                                    }
                                    (.., Some(l)) => format!("{kind} level {l}"),
                                    _ => kind.to_owned(),
                                }
                            })
                            .collect();
                        println!(
                            "   -> approval stage: {}; escalation {}",
                            approvers.join(", "),
                            if stage["isEscalationEnabled"] == true {
                                "on"
                            } else {
                                "off"
                            }
                        );
                    } else if r.stage == "assignmentRequestDeterminingApprovalRequirements"
                        && r.state.is_none()
                    {
                        failures.push(format!(
                            "step {}: a continue without an approval stage",
                            i + 1
                        ));
                    }
                    if r.state.as_deref() != expected_state {
                        failures.push(format!(
                            "step {}: unexpected resume state {:?}",
                            i + 1,
                            r.state
                        ));
                    }
                }
                None => {
                    println!("   -> no resume arrived within 15 s");
                    failures.push(format!("step {}: no resume", i + 1));
                }
            },
            None => println!("   -> {}", step.note),
        }
    }
    // Give a wrongly queued job a moment to show up as an extra resume.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resumes = emu.resumes();
    let dupes = resumes
        .iter()
        .filter(|r| r.stage_instance_id == sales_sid)
        .count();
    if dupes != 1 {
        failures.push(format!(
            "Ada's request was resumed {dupes} times, expected once"
        ));
    }
    if resumes.len() != expected_resumes {
        failures.push(format!(
            "expected {expected_resumes} resumes in Graph, saw {}",
            resumes.len()
        ));
    }

    bridge_story(&emu, &target, &webhook, &mut failures).await?;
    lifecycle_story(&emu, &target, &names, &mut failures).await?;
    pim_story(
        &emu,
        &format!("http://{addr}/api/pim"),
        &names,
        &mut failures,
    )
    .await?;

    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted[sorted.len() / 2];
    let max = sorted.last().copied().unwrap_or_default();
    println!(
        "\nAck latency over {} callouts: median {p50:.1} ms, max {max:.1} ms (Entra gives up after 1000 ms by default).",
        sorted.len()
    );
    println!(
        "Graph saw {} resume(s) and {} resume call(s) in all.",
        resumes.len(),
        emu.stats().resume_calls
    );
    if failures.is_empty() {
        println!("Every step behaved as expected.");
        Ok(())
    } else {
        eprintln!(
            "\n--- accessgate log ---\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        bail!("demo failed:\n  {}", failures.join("\n  "))
    }
}
