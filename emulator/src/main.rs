//! `accessgate-emulator`: runs the local Entra ID / Microsoft Graph stand-in (`serve`) or sends
//! one Entra-like callout through a running emulator (`send`).
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;

mod demo;

use accessgate_emulator::{EmulatorConfig, MintOptions, SendOptions, Shape};
use clap::{Parser, Subcommand, ValueEnum};

/// Default port of `serve` and of `send --emulator`.
const DEFAULT_PORT: u16 = 7700;

#[derive(Debug, Parser)]
#[command(
    name = "accessgate-emulator",
    version,
    about = "Local Entra ID and Microsoft Graph emulator for accessgate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Entra (metadata, JWKS, token endpoint) and Graph (resume) on 127.0.0.1.
    Serve {
        #[arg(long, default_value_t = DEFAULT_PORT, env = "ACCESSGATE_EMULATOR_PORT")]
        port: u16,
        #[arg(long, env = "ACCESSGATE_EMULATOR_TENANT_ID")]
        tenant_id: Option<String>,
        #[arg(long, env = "ACCESSGATE_EMULATOR_GRAPH_CLIENT_ID")]
        graph_client_id: Option<String>,
        #[arg(
            long,
            env = "ACCESSGATE_EMULATOR_GRAPH_CLIENT_SECRET",
            hide_env_values = true
        )]
        graph_client_secret: Option<String>,
    },
    /// Send one callout like Entra, minting its token through a running emulator.
    Send {
        /// URL of the custom-extension endpoint.
        #[arg(long)]
        target: String,
        #[arg(long, default_value = "assignmentRequestCreated")]
        stage: String,
        #[arg(long, value_enum, default_value_t = ShapeArg::Flat)]
        shape: ShapeArg,
        /// Base URL of the running emulator.
        #[arg(long, env = "ACCESSGATE_EMULATOR_URL", default_value_t = format!("http://127.0.0.1:{DEFAULT_PORT}"))]
        emulator: String,
        #[arg(long)]
        request_id: Option<String>,
        /// Callback timeout (ISO 8601).
        #[arg(long)]
        timeout: Option<String>,
        /// Send a legacy bearer token instead of a PoP signed request.
        #[arg(long)]
        bearer: bool,
        /// Bearer token audience (with --bearer).
        #[arg(long)]
        audience: Option<String>,
    },
    /// End-to-end demo: the emulator plus the real `accessgate serve`, and a scripted story.
    Demo {
        /// Path of the accessgate binary (default: next to this executable).
        #[arg(long)]
        accessgate: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ShapeArg {
    Flat,
    Envelope,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; the emulator's request log would drown it.
    let default_level = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            port,
            tenant_id,
            graph_client_id,
            graph_client_secret,
        } => {
            let defaults = EmulatorConfig::default();
            let cfg = EmulatorConfig {
                tenant_id: tenant_id.unwrap_or(defaults.tenant_id),
                graph_client_id: graph_client_id.unwrap_or(defaults.graph_client_id),
                graph_client_secret: graph_client_secret.unwrap_or(defaults.graph_client_secret),
                ..defaults
            };
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let emulator = accessgate_emulator::start(cfg, addr).await?;
            println!("emulator listening on {}", emulator.base_url());
            shutdown_signal().await;
            emulator.shutdown().await;
            Ok(())
        }
        Command::Send {
            target,
            stage,
            shape,
            emulator,
            request_id,
            timeout,
            bearer,
            audience,
        } => {
            let opts = SendOptions {
                target_url: target,
                shape: match shape {
                    ShapeArg::Flat => Shape::Flat,
                    ShapeArg::Envelope => Shape::Envelope,
                },
                stage: Some(stage),
                request_id,
                timeout,
                auth: if bearer {
                    accessgate_emulator::AuthScheme::Bearer
                } else {
                    accessgate_emulator::AuthScheme::Pop
                },
                token: Some(MintOptions {
                    audience,
                    ..MintOptions::default()
                }),
                emulator_url: Some(emulator),
                ..SendOptions::default()
            };
            let report = accessgate_emulator::sender::send_callout(&opts).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::Demo { accessgate } => demo::run(accessgate).await,
    }
}

/// Resolves on ctrl-c or (on Unix) SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
