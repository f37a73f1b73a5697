//! PIM verdicts: `accessgate serve` answering PIM custom extension calls from the emulator
//! acting as PIM, with every verdict needing a Graph read (the principal, for the ticket's
//! requested-by match) and a ServiceNow read (the change), each delayed by the emulator.
//!
//! Phases, one run: open loop at `--rate` verdicts/s for `--secs` with the reads delayed
//! `--read-delay-ms` (the target: p99 ≤ 50 ms at 100/s with 5 ms reads); the same with no
//! delay (what accessgate itself costs); then closed loop over `--connections` for the most
//! verdicts per second. Every call is a fresh activation (its own request id, rotating over
//! the principals), and every answer is checked to be `Approved`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use accessgate_emulator::pim::{PimSendOptions, PimShape, body, default_token};
use accessgate_emulator::{Emulator, FaultSpec, FaultTarget};
use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::process::Command;

use crate::procinfo::Server;
use crate::stats::Summary;

#[derive(Args)]
pub struct PimArgs {
    /// accessgate binary (default: `accessgate` next to this executable).
    #[arg(long)]
    accessgate: Option<std::path::PathBuf>,
    /// Open-loop rate, verdicts per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Length of each open-loop phase.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Delay of each Graph and ServiceNow read in the first phase.
    #[arg(long, default_value_t = 5)]
    read_delay_ms: u64,
    /// Connections of the closed-loop phase.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Length of the closed-loop phase.
    #[arg(long, default_value_t = 5)]
    closed_secs: u64,
    /// Distinct principals (each with a user, a ServiceNow user and an open change).
    #[arg(long, default_value_t = 200)]
    principals: usize,
}

const ROLE: &str = "f2ef992c-3afb-46b9-b7cf-a126ee74c451";

const POLICY: &str = r#"
version = 1
[checks.change]
type = "servicenow_ticket"
table = "change_request"
number_from_answer = "ticketNumber"
allowed_states = ["-1"]
opened_for_target = true
opened_for_field = "requested_by"
window_start_field = "start_date"
window_end_field = "end_date"

[[pim_rules]]
name = "needs-a-change"
checks = ["change"]
"#;

fn principal(i: usize) -> String {
    format!("7a1e0000-0000-4000-8000-{i:012}")
}

fn world(n: usize) -> anyhow::Result<accessgate_emulator::World> {
    let now = jiff::Timestamp::now();
    let t = |h: i64| {
        (now + jiff::SignedDuration::from_hours(h))
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    let users: Vec<Value> = (0..n)
        .map(|i| json!({"id": principal(i), "displayName": format!("User {i}"), "mail": format!("user{i}@contoso.example"), "userPrincipalName": format!("user{i}@contoso.example"), "accountEnabled": true}))
        .collect();
    let sn_users: Vec<Value> = (0..n)
        .map(|i| json!({"sys_id": format!("5e{i:030}"), "user_name": format!("user{i}"), "email": format!("user{i}@contoso.example")}))
        .collect();
    let changes: Vec<Value> = (0..n)
        .map(|i| json!({"sys_id": format!("c0{i:030}"), "number": format!("CHG{:07}", 1_000_000 + i), "state": {"value": "-1", "display_value": "Implement"}, "requested_by": format!("5e{i:030}"), "start_date": t(-1), "end_date": t(4)}))
        .collect();
    serde_json::from_value(json!({"users": users, "servicenow": {"tables": {"sys_user": sn_users, "change_request": changes}}}))
        .context("the benchmark world")
}

fn config(em: &Emulator, dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, POLICY)?;
    let cfg = em.config();
    let path = dir.join("accessgate.toml");
    std::fs::write(
        &path,
        format!(
            r#"[server]
listen = "127.0.0.1:0"
data_dir = "data"
[identity]
authority = "{base}"
tenant_id = "{tenant}"
[inbound]
[extensions.bench]
resource = "{resource}"
[graph]
base_url = "{base}"
scope = "https://graph.microsoft.com/.default"
max_requests_per_second = 10000
[credentials]
client_id = "{client}"
[policy]
file = "policy.toml"
[servicenow]
instance_url = "{base}"
auth = "basic"
username = "{sn_user}"
[pim]
audiences = ["api://accessgate.bench/{client}"]
budget_ms = 5000
[log]
format = "json"
level = "warn,accessgate::app=info"
"#,
            base = em.base_url(),
            tenant = cfg.tenant_id,
            resource = cfg.logic_app_resource,
            client = cfg.graph_client_id,
            sn_user = em.servicenow_credentials().username,
        ),
    )?;
    Ok(path)
}

/// One call: a fresh activation of principal `i`; `Ok(latency)` when it was `Approved`.
async fn call(
    http: &reqwest::Client,
    url: &str,
    auth: &str,
    opts: &PimSendOptions,
    i: usize,
) -> anyhow::Result<()> {
    let o = PimSendOptions {
        request_id: Some(uuid::Uuid::new_v4().to_string()),
        principal_id: Some(principal(i)),
        ticket_number: Some(format!("CHG{:07}", 1_000_000 + i)),
        ..opts.clone()
    };
    let resp = http
        .post(url)
        .header("authorization", auth)
        .json(&body(&o))
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if status != 200 || v["evaluationOutcome"] != "Approved" {
        bail!("HTTP {status}: {v}");
    }
    Ok(())
}

struct Phase {
    name: String,
    done: usize,
    failed: usize,
    first_failure: Option<String>,
    secs: f64,
    lat: Summary,
}

impl Phase {
    fn print(&self) {
        println!(
            "{:<44} {:>8.1} verdicts/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  ({} ok, {} failed{})",
            self.name,
            self.done as f64 / self.secs,
            self.lat.p50_ms,
            self.lat.p99_ms,
            self.lat.max_ms,
            self.done,
            self.failed,
            self.first_failure
                .as_deref()
                .map(|f| format!("; first: {f}"))
                .unwrap_or_default()
        );
    }
}

/// Open loop: call `i` is due at `start + i / rate`; latency counts from the due time.
async fn open_loop(
    name: String,
    ctx: Arc<(reqwest::Client, String, String, PimSendOptions, usize)>,
    rate: u32,
    secs: u64,
) -> Phase {
    let n = (u64::from(rate) * secs) as usize;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let due = start + Duration::from_secs_f64(k as f64 / f64::from(rate));
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let r = call(&ctx.0, &ctx.1, &ctx.2, &ctx.3, k % ctx.4).await;
            (due.elapsed(), r.err().map(|e| e.to_string()))
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let (mut failed, mut first_failure) = (0, None);
    for t in tasks {
        if let Ok((d, err)) = t.await {
            match err {
                None => lat.push(d),
                Some(e) => {
                    failed += 1;
                    first_failure.get_or_insert(e);
                }
            }
        }
    }
    let secs_taken = start.elapsed().as_secs_f64().max(secs as f64);
    Phase {
        name,
        done: lat.len(),
        failed,
        first_failure,
        secs: secs_taken,
        lat: Summary::of(&mut lat),
    }
}

async fn closed_loop(
    ctx: Arc<(reqwest::Client, String, String, PimSendOptions, usize)>,
    connections: usize,
    secs: u64,
) -> Phase {
    let until = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = (Vec::new(), 0usize, None::<String>);
            let mut i = c;
            while Instant::now() < until {
                let t = Instant::now();
                match call(&ctx.0, &ctx.1, &ctx.2, &ctx.3, i % ctx.4).await {
                    Ok(()) => out.0.push(t.elapsed()),
                    Err(e) => {
                        out.1 += 1;
                        out.2.get_or_insert(e.to_string());
                    }
                }
                i += connections;
            }
            out
        }));
    }
    let (mut lat, mut failed, mut first) = (Vec::new(), 0, None);
    for t in tasks {
        if let Ok((l, f, e)) = t.await {
            lat.extend(l);
            failed += f;
            if first.is_none() {
                first = e;
            }
        }
    }
    Phase {
        name: format!("closed loop, {connections} connections, reads 0 ms"),
        done: lat.len(),
        failed,
        first_failure: first,
        secs: started.elapsed().as_secs_f64(),
        lat: Summary::of(&mut lat),
    }
}

pub async fn run(a: PimArgs) -> anyhow::Result<()> {
    let bin = crate::accessgate_binary(a.accessgate.clone())?;
    let em = crate::EmulatorThread::start().await?;
    let emu = em.handle.clone();
    emu.load_world(&world(a.principals)?)?;
    let dir = tempfile::Builder::new()
        .prefix("accessgate-bench-pim-")
        .tempdir()?;
    let cfg_path = config(&emu, dir.path())?;
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()?;
    let mut cmd = Command::new(&bin);
    crate::clean_env(&mut cmd);
    cmd.arg("--config")
        .arg(&cfg_path)
        .arg("serve")
        .current_dir(dir.path())
        .env(
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET",
            &emu.config().graph_client_secret,
        )
        .env(
            "ACCESSGATE_SERVICENOW__PASSWORD",
            &emu.servicenow_credentials().password,
        );
    let server = Server::start(cmd, None, &http)
        .await
        .context("starting accessgate")?;
    let url = format!("http://{}/api/pim", server.addr);
    let opts = PimSendOptions {
        target_url: url.clone(),
        audience: format!("api://accessgate.bench/{}", emu.config().graph_client_id),
        shape: PimShape::EntraRole,
        role_definition_id: Some(ROLE.into()),
        ticket_system: Some("ServiceNow".into()),
        ..PimSendOptions::default()
    };
    // PIM reuses its app token for its lifetime, as any client-credentials caller does.
    let auth = format!("Bearer {}", emu.mint_callout_token(&default_token(&opts))?);
    let ctx = Arc::new((http.clone(), url, auth, opts, a.principals.max(1)));
    // Warm up: keys fetched, Graph and ServiceNow connections open.
    for i in 0..20 {
        call(&ctx.0, &ctx.1, &ctx.2, &ctx.3, i % ctx.4)
            .await
            .context("warm-up")?;
    }
    println!(
        "accessgate PIM verdicts ({} principals, Entra role activations, one Graph $batch + one ServiceNow read per verdict, verdict recorded in SQLite before it is sent)",
        a.principals
    );
    for target in [FaultTarget::Graph, FaultTarget::ServiceNow] {
        emu.set_fault(&FaultSpec {
            target,
            delay_ms: Some(a.read_delay_ms),
            ..Default::default()
        })?;
    }
    let slow = open_loop(
        format!("open loop {}/s, reads {} ms", a.rate, a.read_delay_ms),
        ctx.clone(),
        a.rate,
        a.secs,
    )
    .await;
    slow.print();
    emu.clear_faults();
    let fast = open_loop(
        format!("open loop {}/s, reads 0 ms", a.rate),
        ctx.clone(),
        a.rate,
        a.secs,
    )
    .await;
    fast.print();
    let closed = closed_loop(ctx.clone(), a.connections, a.closed_secs).await;
    closed.print();
    let target_met = slow.lat.p99_ms <= 50.0 && slow.failed == 0;
    println!(
        "target p99 <= 50 ms at {}/s with {} ms reads: {} (p99 {:.1} ms)",
        a.rate,
        a.read_delay_ms,
        if target_met { "met" } else { "NOT met" },
        slow.lat.p99_ms
    );
    Server::stop(server).await?;
    drop(em);
    if slow.failed + fast.failed + closed.failed > 0 {
        bail!("some verdicts were not Approved (see above)");
    }
    Ok(())
}
