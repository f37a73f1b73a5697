//! The command line: `serve` (default), `functions`, `check-config`, `doctor`, `explain`,
//! `policy check|test`, `jobs list|show|retry|waiting|wake`, `tickets`, `setup`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::auth::IngressMode;
use crate::config::{self, Config};
use crate::credentials::{CredentialMode, SignWith};
use crate::policy::Policy;
use crate::queue::Settings as QueueSettings;
use crate::queue::settings::StorageAuthSettings;
use crate::queue::sqlite::{JobStatus, MIN_RETRY_WINDOW, Requeue, SqliteQueue};

#[derive(Parser)]
#[command(
    name = "accessgate",
    version,
    about = "Entra ID Governance custom extension endpoint"
)]
struct Cli {
    /// Configuration file (TOML). Settings can also come from ACCESSGATE_<SECTION>__<KEY>.
    #[arg(long, short, global = true, env = "ACCESSGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the standalone server (SQLite queue, in-process workers). Under Azure Functions
    /// (FUNCTIONS_CUSTOMHANDLER_PORT set) this runs the custom handler instead.
    Serve,
    /// Run as an Azure Functions custom handler on FUNCTIONS_CUSTOMHANDLER_PORT.
    Functions,
    /// Check the configuration and the policy, listing every problem.
    CheckConfig,
    /// Check the whole path to a resume (identity host, managed identity, Key Vault, Graph
    /// token and permission, queue) and print a pass/fail report with fixes.
    Doctor,
    /// Create or update the custom extensions a setup file names (docs/setup.md) through Graph,
    /// add them to assignment policies, give accessgate's identity its catalog role and write
    /// the matching [extensions.NAME]. Prints the plan as a diff first; --plan stops there.
    Setup(SetupArgs),
    /// Decide one callout offline against a world file (docs/world-format.md) and print every
    /// check's reasoning, the decision and the detail text approvers would see.
    Explain(ExplainArgs),
    /// Policy tools: check a policy file, run its test cases.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Inspect and retry queued, done and dead jobs of the standalone queue.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// ServiceNow tickets the bridge opened: each one's Entra request and what it waits for.
    Tickets {
        #[command(subcommand)]
        action: TicketsAction,
    },
}

#[derive(Subcommand)]
enum TicketsAction {
    /// Bridged tickets, most recently changed first.
    List {
        /// Only tickets Entra still waits on.
        #[arg(long)]
        open: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One ticket, by stage instance id, sys_id or number, as JSON.
    Show { id: String },
}

#[derive(clap::Args)]
struct SetupArgs {
    /// The setup file (TOML, docs/setup.md).
    #[arg(long, short = 'f', default_value = "setup.toml")]
    file: PathBuf,
    /// Print what would be created or changed, and change nothing.
    #[arg(long)]
    plan: bool,
    /// Sign in as a user with the device-code flow (needed for PIM) instead of app-only with
    /// the configuration's [credentials].
    #[arg(long)]
    device_code: bool,
    /// The public client the device-code sign-in uses (default: Microsoft Graph Command Line
    /// Tools).
    #[arg(long, default_value = crate::setup::DEFAULT_PUBLIC_CLIENT)]
    client_id: String,
    /// infra's outputs: `azd env get-values > outputs.env` (ACCESSGATE_* values in the
    /// environment are read too).
    #[arg(long)]
    outputs: Option<PathBuf>,
    /// The configuration file to write [extensions.NAME] into (default: --config's file).
    #[arg(long)]
    write_config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The callout body (either wire shape), as Entra sends it.
    callout: PathBuf,
    /// A directory holding world.json, or the world file itself.
    #[arg(long)]
    fixtures: PathBuf,
    /// The policy file; default: the configuration's policy.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Use this extension's policy from the configuration.
    #[arg(long)]
    extension: Option<String>,
    /// The clock the checks see (RFC 3339 or a date); default: now.
    #[arg(long)]
    now: Option<String>,
    /// The user attribute that lists external entitlements (default: the configuration's).
    #[arg(long)]
    external_entitlements_attribute: Option<String>,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Load a policy file and list every error and warning.
    Check { file: PathBuf },
    /// Run policy test cases (callout + world -> expected decision), like `opa test`.
    Test {
        file: PathBuf,
        /// Print every case's check outcomes, not only failures'.
        #[arg(long, short)]
        verbose: bool,
    },
}

#[derive(Subcommand)]
enum JobsAction {
    /// List jobs, newest first.
    List {
        /// queued, running, waiting, done or dead
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one job (by id or stage instance id) with its callout.
    Show { id: String },
    /// Send a dead job back to the queue.
    Retry { id: String },
    /// Parked jobs, soonest wake-up first: what each waits for and until when (both backends).
    Waiting {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Wake the jobs parked on KEY now, as the event they wait for would (both backends).
    Wake { key: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let functions_port = std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT").ok();
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => check_config(cli.config),
        Command::Doctor => doctor(cli.config),
        Command::Jobs { action } => jobs(cli.config, action),
        Command::Tickets { action } => tickets(cli.config, action),
        Command::Explain(args) => explain(cli.config, args),
        Command::Setup(args) => setup(cli.config, args),
        Command::Policy {
            action: PolicyAction::Check { file },
        } => policy_check(&file),
        Command::Policy {
            action: PolicyAction::Test { file, verbose },
        } => policy_test(&file, verbose),
        Command::Serve if functions_port.is_none() => run(cli.config, None),
        Command::Serve | Command::Functions => {
            match functions_port.as_deref().map(str::parse::<u16>) {
                Some(Ok(port)) => run(cli.config, Some(port)),
                _ => {
                    eprintln!(
                        "accessgate functions: FUNCTIONS_CUSTOMHANDLER_PORT must be set to a port number"
                    );
                    ExitCode::from(2)
                }
            }
        }
    }
}

fn load_or_report(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    config::load(path.as_deref()).map_err(|e| {
        eprintln!("accessgate: {e}");
        ExitCode::from(2)
    })
}

fn runtime(b: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = b;
    b.enable_all().build().map_err(|e| {
        eprintln!("accessgate: cannot start the runtime: {e}");
        ExitCode::FAILURE
    })
}

fn doctor(path: Option<PathBuf>) -> ExitCode {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let checks = rt.block_on(crate::doctor::run(&cfg));
    if crate::doctor::print(&checks) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn setup(path: Option<PathBuf>, args: SetupArgs) -> ExitCode {
    let write_config = args.write_config.or_else(|| path.clone());
    // A signed-in run needs no configuration (an administrator's machine after `azd up`); one
    // that names a configuration, or runs app-only, needs a valid one.
    let cfg = match config::load(path.as_deref()) {
        Ok(c) => Some(c),
        Err(_) if path.is_none() && args.device_code => None,
        Err(e) => {
            eprintln!("accessgate: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let opts = crate::setup::Options {
        file: args.file,
        plan_only: args.plan,
        device_code: args.device_code,
        client_id: args.client_id,
        outputs: args.outputs,
        write_config,
    };
    rt.block_on(crate::setup::run(cfg.as_ref(), &opts))
}

fn run(path: Option<PathBuf>, functions_port: Option<u16>) -> ExitCode {
    let cfg = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    crate::telemetry::init(&cfg.log);
    let rt = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async move {
        match functions_port {
            Some(port) => crate::app::functions(cfg, port).await,
            None => crate::app::serve(cfg).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "accessgate stopped with an error");
            eprintln!("accessgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: Option<PathBuf>) -> ExitCode {
    match config::load(path.as_deref()) {
        Ok(c) => {
            println!("configuration OK");
            println!("  listen            {}", c.server.listen);
            println!("  data_dir          {}", c.server.data_dir.display());
            println!(
                "  identity          {} tenant {}",
                c.identity.authority, c.identity.tenant_id
            );
            match c.inbound.mode {
                IngressMode::Direct => {
                    println!(
                        "  ingress           direct: PoP ({}; lifetime {} s, future skew {} s, replay cache {} entries)",
                        crate::auth::pop_algorithm_names(&c.inbound.pop.algorithms).join(", "),
                        c.inbound.pop.lifetime.as_secs(),
                        c.inbound.pop.future_skew.as_secs(),
                        c.inbound.pop.replay_cache_entries
                    );
                    println!("  PoP audiences     {:?}", c.inbound.pop.audiences);
                    if c.inbound.audiences.is_empty() {
                        println!("  legacy bearer     refused (inbound.audiences is empty)");
                    } else {
                        println!("  legacy bearer     audiences {:?}", c.inbound.audiences);
                    }
                }
                IngressMode::Relay => {
                    println!(
                        "  ingress           relay: bearer of {:?} for audiences {:?}; PoP refused",
                        c.inbound.relay.caller_ids, c.inbound.relay.audiences
                    );
                }
            }
            println!("  allowed callers   {:?}", c.inbound.allowed_app_ids);
            for e in &c.extensions {
                println!(
                    "  extension {:<8}u={} p={}; catalogs {}; policy {}",
                    e.name,
                    e.host,
                    e.resource,
                    if e.catalog_ids.is_empty() {
                        "any".to_string()
                    } else {
                        e.catalog_ids.join(", ")
                    },
                    e.policy_file
                        .as_ref()
                        .map_or_else(|| "[policy]".to_string(), |p| p.display().to_string())
                );
                for w in e.policy.iter().flat_map(|p| &p.warnings) {
                    println!("  warning ({}): {w}", e.name);
                }
            }
            println!(
                "  graph             {} ({}), at most {} request(s)/s, breaker after {} failures for {} s",
                c.graph.base_url,
                c.graph.api_version.segment(),
                c.graph.max_requests_per_second,
                c.graph.circuit_failure_threshold,
                c.graph.circuit_open.as_secs()
            );
            let who = match &c.credentials.mode {
                CredentialMode::ClientSecret { client_id, .. } => {
                    format!("app {client_id} with a client secret")
                }
                CredentialMode::ManagedIdentity => "the managed identity".into(),
                CredentialMode::WorkloadIdentity { client_id, .. } => {
                    format!("app {client_id} through workload identity federation")
                }
                CredentialMode::KeyVaultSecret {
                    client_id,
                    vault,
                    secret_name,
                } => format!("app {client_id} with secret {secret_name} from {vault}"),
                CredentialMode::KeyVaultCertificate {
                    client_id,
                    vault,
                    certificate_name,
                    sign_with,
                } => format!(
                    "app {client_id} with certificate {certificate_name} from {vault}, signed {}",
                    match sign_with {
                        SignWith::KeyVault => "by Key Vault",
                        SignWith::Local => "locally",
                    }
                ),
            };
            println!(
                "  credentials       {} mode: {who}{}",
                c.credentials.mode.name(),
                c.credentials
                    .managed_identity_client_id
                    .as_deref()
                    .map(|id| format!(" (managed identity {id})"))
                    .unwrap_or_default()
            );
            match &c.queue {
                QueueSettings::Sqlite => {
                    println!(
                        "  queue             sqlite in {}",
                        c.server.data_dir.display()
                    );
                }
                QueueSettings::AzureStorage(q) => println!(
                    "  queue             Azure Storage {}/{} (poison: {}), {}",
                    q.endpoint,
                    q.name,
                    q.poison_name,
                    match q.auth {
                        StorageAuthSettings::SharedKey { .. } => "account key",
                        StorageAuthSettings::Entra => "Entra token",
                    }
                ),
            }
            for w in &c.warnings {
                println!("  warning: {w}");
            }
            println!(
                "  policy            {} rule(s), {} check(s), {} SoD risk(s){}",
                c.policy.rule_count(),
                c.policy.check_count(),
                c.policy.risk_count(),
                c.policy_file
                    .as_ref()
                    .map(|p| format!(" from {}", p.display()))
                    .unwrap_or_default()
            );
            for w in &c.policy.warnings {
                println!("  warning: {w}");
            }
            println!(
                "  servicenow        {}",
                c.servicenow
                    .as_ref()
                    .map_or_else(|| "(not configured)".to_string(), |s| s.describe())
            );
            println!(
                "  directory         max {} Graph call(s) per decision; external entitlements from {}; decision timeout {} s",
                c.directory.max_graph_calls_per_decision,
                c.directory
                    .external_entitlements_attribute
                    .as_deref()
                    .unwrap_or("(none)"),
                c.decision_timeout.as_secs()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `accessgate tickets`: the ticket ledger of either backend.
fn tickets(path: Option<PathBuf>, action: TicketsAction) -> ExitCode {
    use crate::queue::tickets::TicketLedger;
    let c = match config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("accessgate tickets: the configuration has problems:\n{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let ledger: Box<dyn TicketLedger> = match &c.queue {
        QueueSettings::AzureStorage(q) => {
            let http = match crate::app::http_client() {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("accessgate tickets: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let creds = crate::app::credentials_for(&c, &http);
            Box::new(crate::queue::azure_backend::AzureJobs::new(
                crate::queue::azure_backend::connect(http.clone(), q, creds.clone()),
                crate::queue::azure_backend::connect_waits(http, q, creds),
                q,
            ))
        }
        QueueSettings::Sqlite => {
            // The writer thread needs a runtime handle only to answer; open inside it.
            let _guard = rt.enter();
            match SqliteQueue::open(&c.server.data_dir) {
                Ok(q) => Box::new(q),
                Err(e) => {
                    eprintln!("accessgate tickets: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let result = rt.block_on(async {
        match action {
            TicketsAction::List { open, limit, json } => {
                let rows = ledger.list(open, limit).await?;
                if json {
                    for r in rows {
                        println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    }
                    return Ok(true);
                }
                println!(
                    "{:<12} {:<9} {:<40} {:<28} {:<25} note",
                    "ticket", "phase", "stage instance id", "stage", "deadline"
                );
                for r in rows {
                    println!(
                        "{:<12} {:<9} {:<40} {:<28} {:<25} {}",
                        r.number.as_deref().unwrap_or("-"),
                        r.phase.as_str(),
                        r.stage_instance_id,
                        r.stage,
                        r.deadline.to_string(),
                        r.note
                    );
                }
                Ok(true)
            }
            TicketsAction::Show { id } => {
                let mut row = ledger.get(&id).await?;
                if row.is_none() {
                    row = ledger.by_sys_id(&id).await?;
                }
                if row.is_none() {
                    row = ledger.list(false, 100_000).await?.into_iter().find(|r| {
                        r.number
                            .as_deref()
                            .is_some_and(|n| n.eq_ignore_ascii_case(&id))
                    });
                }
                match row {
                    Some(r) => {
                        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
                        Ok(true)
                    }
                    None => {
                        eprintln!("no bridged ticket {id}");
                        Ok(false)
                    }
                }
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            let e: crate::queue::StoreError = e;
            eprintln!("accessgate tickets: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `jobs waiting` and `jobs wake` through the [`crate::queue::JobStore`] of either backend.
fn jobs_store(store: &dyn crate::queue::JobStore, action: JobsAction) -> ExitCode {
    let rt = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        match action {
            JobsAction::Waiting { limit, json } => store.waiting(limit).await.map(|rows| {
                if json {
                    for w in rows {
                        println!("{}", serde_json::to_string(&w).unwrap_or_default());
                    }
                    return;
                }
                println!(
                    "{:<40} {:<28} {:<25} {:<32} reason",
                    "stage instance id", "stage", "until", "key"
                );
                for w in rows {
                    println!(
                        "{:<40} {:<28} {:<25} {:<32} {}",
                        w.stage_instance_id,
                        w.stage,
                        w.until.to_string(),
                        w.key.as_ref().map_or("-", |k| k.as_str()),
                        w.reason
                    );
                }
            }),
            JobsAction::Wake { key } => match crate::queue::WaitKey::parse(&key) {
                Err(e) => {
                    eprintln!("accessgate jobs wake: {e}");
                    return Err(None);
                }
                Ok(k) => store
                    .wake(&k)
                    .await
                    .map(|n| println!("woke {n} job(s) waiting for {k}")),
            },
            _ => Ok(()),
        }
        .map_err(Some)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(None) => ExitCode::from(2),
        Err(Some(e)) => {
            eprintln!("accessgate jobs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn jobs(path: Option<PathBuf>, action: JobsAction) -> ExitCode {
    // Only the data directory matters here; read it without requiring a complete config.
    let data_dir = match config::load(path.as_deref()) {
        Ok(c) if matches!(c.queue, QueueSettings::AzureStorage(_)) => {
            let QueueSettings::AzureStorage(q) = &c.queue else {
                return ExitCode::FAILURE;
            };
            if !matches!(action, JobsAction::Waiting { .. } | JobsAction::Wake { .. }) {
                eprintln!(
                    "accessgate jobs list|show|retry: work on the SQLite queue; with queue.backend = azure_storage, `jobs waiting` and `jobs wake` work, and dead letters are messages in the poison queue (queue.poison_name), each with its reason: read them with Azure Storage Explorer or `az storage message peek`, and send a job back by putting its `message` on the work queue"
                );
                return ExitCode::from(2);
            }
            let http = match crate::app::http_client() {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("accessgate jobs: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let creds = crate::app::credentials_for(&c, &http);
            let jobs = crate::queue::azure_backend::AzureJobs::new(
                crate::queue::azure_backend::connect(http.clone(), q, creds.clone()),
                crate::queue::azure_backend::connect_waits(http, q, creds),
                q,
            );
            return jobs_store(&jobs, action);
        }
        Ok(c) => c.server.data_dir,
        Err(_) => match data_dir_only(path.as_deref()) {
            Some(d) => d,
            None => {
                eprintln!(
                    "accessgate jobs: cannot determine server.data_dir from the configuration"
                );
                return ExitCode::from(2);
            }
        },
    };
    let q = match SqliteQueue::open(&data_dir) {
        Ok(q) => q,
        Err(e) => {
            eprintln!("accessgate jobs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match action {
        JobsAction::List { status, limit } => {
            let st = match status.as_deref().map(JobStatus::parse) {
                Some(None) => {
                    eprintln!("--status must be queued, running, waiting, done or dead");
                    return ExitCode::from(2);
                }
                Some(s) => s,
                None => None,
            };
            q.list(st, limit).map(|rows| {
                println!(
                    "{:>6}  {:<8} {:>3}  {:<40} {:<28} outcome / last error",
                    "id", "status", "try", "stage instance id", "stage"
                );
                for r in rows {
                    let note = match (&r.wait_reason, r.status.as_str()) {
                        (Some(why), "waiting") => format!(
                            "waits until {} for {}{}",
                            crate::queue::Deadline::from_unix_ms(r.visible_at_ms),
                            why,
                            r.wait_key.as_deref().map(|k| format!(" (key {k})")).unwrap_or_default()
                        ),
                        _ => r.outcome.or(r.last_error).unwrap_or_default(),
                    };
                    println!(
                        "{:>6}  {:<8} {:>3}  {:<40} {:<28} {}",
                        r.id, r.status, r.attempts, r.stage_instance_id, r.stage, note
                    );
                }
            })
        }
        JobsAction::Show { id } => q.get(&id).map(|found| match found {
            Some((row, msg)) => {
                let v = serde_json::json!({"job": row, "message": msg});
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            None => println!("no job {id}"),
        }),
        a @ (JobsAction::Waiting { .. } | JobsAction::Wake { .. }) => {
            // The data directory is locked by a running server only against a second server;
            // these reads and the wake are single transactions, safe beside it.
            return jobs_store(&q, a);
        }
        JobsAction::Retry { id } => q.requeue(&id).map(|r| match r {
            Requeue::Queued => println!("job {id} queued again"),
            Requeue::NotFound => println!("no job {id}"),
            Requeue::NotDead(st) => println!("job {id} is {st}, not dead: nothing to retry"),
            Requeue::TooLate(ms) => println!(
                "job {id} was not requeued: its deadline ({}) has passed or is under {} s away, so Entra has timed the callout out or will before a resume; the requestor must request again",
                jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default(),
                MIN_RETRY_WINDOW.as_secs()
            ),
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accessgate jobs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn data_dir_only(path: Option<&std::path::Path>) -> Option<PathBuf> {
    let base = path
        .and_then(|p| p.parent())
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let from_env = std::env::var("ACCESSGATE_SERVER__DATA_DIR").ok();
    let from_file = path
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.parse::<toml::Table>().ok())
        .and_then(|t| {
            t.get("server")?
                .get("data_dir")?
                .as_str()
                .map(str::to_owned)
        });
    let d = PathBuf::from(from_env.or(from_file).unwrap_or_else(|| "data".into()));
    Some(if d.is_absolute() { d } else { base.join(d) })
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, ExitCode> {
    Ok(runtime(tokio::runtime::Builder::new_current_thread())?.block_on(f))
}

/// `accessgate explain`: the policy comes from `--policy`, else from the configuration (the
/// extension's own policy with `--extension`).
fn explain(config_path: Option<PathBuf>, args: ExplainArgs) -> ExitCode {
    use crate::policy::testing;
    let (policy, external) = match &args.policy {
        Some(p) => match Policy::load(p) {
            Ok(pol) => (pol, args.external_entitlements_attribute.clone()),
            Err(errs) => {
                eprintln!("accessgate: policy {} is not valid:", p.display());
                for e in errs {
                    eprintln!("  - {e}");
                }
                return ExitCode::from(2);
            }
        },
        None => {
            let cfg = match load_or_report(config_path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let pol = match &args.extension {
                None => cfg.policy.clone(),
                Some(name) => match cfg.extensions.iter().find(|e| &e.name == name) {
                    Some(e) => e.policy.clone().unwrap_or_else(|| cfg.policy.clone()),
                    None => {
                        eprintln!("accessgate: no extension {name:?} in the configuration");
                        return ExitCode::from(2);
                    }
                },
            };
            let ext = args
                .external_entitlements_attribute
                .clone()
                .or(cfg.directory.external_entitlements_attribute.clone());
            (pol, ext)
        }
    };
    let callout = match testing::read_callout(&args.callout) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("accessgate: {e}");
            return ExitCode::from(2);
        }
    };
    let world = match crate::directory::fixtures::World::load(&args.fixtures) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("accessgate: {e}");
            return ExitCode::from(2);
        }
    };
    let now = match args.now.as_deref().map(testing::parse_now) {
        None => jiff::Timestamp::now(),
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("accessgate: --now {e}");
            return ExitCode::from(2);
        }
    };
    let decision = match block_on(testing::decide_offline(
        &policy, &callout, world, external, now,
    )) {
        Ok(d) => d,
        Err(code) => return code,
    };
    if args.json {
        match serde_json::to_string_pretty(&decision) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("accessgate: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", testing::explain_text(&callout, &decision));
    }
    ExitCode::SUCCESS
}

/// `accessgate policy test FILE`: exit 0 when every case passes, 1 when one fails, 2 when the
/// file (or its policy or world) cannot be loaded.
fn policy_test(file: &std::path::Path, verbose: bool) -> ExitCode {
    use crate::policy::testing;
    let results = match block_on(testing::run_suite(file)) {
        Ok(Ok(r)) => r,
        Ok(Err(errs)) => {
            eprintln!("accessgate policy test: cannot run {}:", file.display());
            for e in errs {
                eprintln!("  - {e}");
            }
            return ExitCode::from(2);
        }
        Err(code) => return code,
    };
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    for r in &results {
        if r.failures.is_empty() {
            println!("PASS  {}", r.name);
        } else {
            println!("FAIL  {}", r.name);
            for f in &r.failures {
                println!("      {f}");
            }
        }
        if (verbose || !r.failures.is_empty())
            && let Some(d) = &r.decision
        {
            for o in &d.outcomes {
                println!(
                    "      {} ({}): {}{}",
                    o.check,
                    o.kind,
                    o.finding.verdict.word(),
                    o.finding
                        .verdict
                        .reason()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
            }
            println!("      detail: {}", d.detail);
        }
    }
    println!(
        "{} passed, {} failed ({} cases)",
        results.len() - failed,
        failed,
        results.len()
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `accessgate policy check FILE`: loads a policy alone and lists every error and warning.
fn policy_check(file: &std::path::Path) -> ExitCode {
    match Policy::load(file) {
        Ok(p) => {
            println!(
                "policy {} is valid: {} rule(s), {} check(s), {} SoD risk(s)",
                file.display(),
                p.rule_count(),
                p.check_count(),
                p.risk_count()
            );
            for w in &p.warnings {
                println!("  warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(errs) => {
            eprintln!("policy {} has {} error(s):", file.display(), errs.len());
            for e in errs {
                eprintln!("  - {e}");
            }
            ExitCode::from(2)
        }
    }
}
