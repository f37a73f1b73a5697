//! Ingress benchmark: `accessgate serve` (SQLite queue) against a baseline axum server that only
//! checks the two RSA signatures of a PoP callout, on the same machine in one run.
//!
//! Reports closed-loop throughput (202s per second over N keep-alive connections), open-loop
//! ack latency at a fixed rate (measured from each request's due time), start-to-ready time and
//! idle RSS of both servers, and their ratio. Run order: emulator; baseline and accessgate
//! started `--starts` times each (ready time, RSS; the last start of each is kept); minting; then
//! baseline throughput, baseline latency, accessgate latency, accessgate throughput. accessgate
//! goes last with throughput because its worker keeps resuming the backlog afterwards, which
//! would disturb any phase after it.
#![forbid(unsafe_code)]

mod baseline;
mod e2e;
mod load;
mod pim;
mod procinfo;
mod sod;
mod stats;
mod tokens;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use accessgate_emulator::{Emulator, EmulatorConfig};
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use tokio::process::Command;

use load::{ClosedOutcome, Conn, OpenOutcome, Work};
use procinfo::Server;
use stats::median;

#[derive(Parser)]
#[command(
    name = "accessgate-bench",
    about = "Ingress benchmark: accessgate serve vs a baseline doing only the two RSA checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Time per separation-of-duties decision: the index against a scan, in one run.
    Sod(sod::SodArgs),
    /// PIM verdicts per second and their latency, with delayed Graph and ServiceNow reads.
    Pim(pim::PimArgs),
    /// The baseline server (started by the benchmark itself).
    #[command(hide = true)]
    Baseline {
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[arg(long)]
        jwks_url: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// accessgate binary (default: `accessgate` next to this executable).
    #[arg(long)]
    accessgate: Option<PathBuf>,
    /// Length of each closed-loop throughput phase.
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Keep-alive connections (one task each).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Open-loop rate of the latency phases, callouts per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Length of each latency phase.
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Callouts minted for accessgate's throughput phase; the phase ends early (and says so)
    /// if they run out.
    #[arg(long, default_value_t = 40_000)]
    max_tokens: usize,
    /// Closed-loop requests sent to each server before it is measured.
    #[arg(long, default_value_t = 300)]
    warmup: usize,
    /// Starts per server for the ready time (median) and idle RSS.
    #[arg(long, default_value_t = 3)]
    starts: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Baseline { port, jwks_url }) => baseline::run(port, &jwks_url),
        Some(Cmd::Sod(a)) => sod::run(&a),
        Some(Cmd::Pim(a)) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("building the runtime")
            .and_then(|rt| rt.block_on(pim::run(a))),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("building the runtime")
            .and_then(|rt| rt.block_on(run(cli.run))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accessgate-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The emulator runs on its own thread and runtime, so its work (JWKS, tokens, the resumes of
/// accessgate's worker) does not queue behind the load generator's tasks.
struct EmulatorThread {
    handle: Emulator,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmulatorThread {
    async fn start() -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("emulator".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let addr = ([127, 0, 0, 1], 0).into();
                    match accessgate_emulator::start(EmulatorConfig::default(), addr).await {
                        Ok(running) => {
                            let _ = ready_tx.send(Ok(running.handle()));
                            let _ = stop_rx.await;
                            running.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .context("spawning the emulator thread")?;
        let handle = ready_rx.await.context("emulator thread died")??;
        Ok(EmulatorThread {
            handle,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

impl Drop for EmulatorThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes settings a caller's environment could slip into the child (accessgate reads
/// `ACCESSGATE_*`, switches to Functions mode on `FUNCTIONS_CUSTOMHANDLER_PORT`, and its HTTP
/// client would honour proxies for the loopback emulator).
fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy().to_ascii_uppercase();
        if name.starts_with("ACCESSGATE_")
            || name == "FUNCTIONS_CUSTOMHANDLER_PORT"
            || name.ends_with("_PROXY")
        {
            cmd.env_remove(&k);
        }
    }
}

fn toml_str(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn accessgate_config(em: &Emulator, w: WorkerLoad) -> String {
    let cfg = em.config();
    let base = em.base_url();
    format!(
        r#"[server]
listen = "127.0.0.1:0"
data_dir = "data"
[identity]
authority = {base}
tenant_id = {tenant}
[inbound]
[extensions.bench]
resource = {resource}
[graph]
base_url = {base}
scope = "https://graph.microsoft.com/.default"
max_requests_per_second = {rate}
[credentials]
client_id = {client}
[worker]
concurrency = {concurrency}
[log]
format = "json"
# warn, plus the one info line that names the port.
level = "warn,accessgate::app=info"
"#,
        base = toml_str(&base),
        tenant = toml_str(&cfg.tenant_id),
        resource = toml_str(&cfg.logic_app_resource),
        client = toml_str(&cfg.graph_client_id),
        rate = w.graph_rate,
        concurrency = w.concurrency,
    )
}

/// How hard accessgate's worker may resume.
#[derive(Clone, Copy)]
struct WorkerLoad {
    concurrency: u32,
    graph_rate: u32,
}

impl WorkerLoad {
    /// The ingress phases: one worker at the default Graph rate, mostly out of the way.
    const QUIET: WorkerLoad = WorkerLoad {
        concurrency: 1,
        graph_rate: 20,
    };
    /// The worker-busy phases: resumes as fast as the emulated Graph answers.
    const BUSY: WorkerLoad = WorkerLoad {
        concurrency: 64,
        graph_rate: 10_000,
    };
}

async fn start_accessgate(
    bin: &Path,
    em: &Emulator,
    http: &reqwest::Client,
    w: WorkerLoad,
) -> anyhow::Result<Server> {
    let dir = tempfile::Builder::new()
        .prefix("accessgate-bench-")
        .tempdir()?;
    let cfg_path = dir.path().join("accessgate.toml");
    std::fs::write(&cfg_path, accessgate_config(em, w))?;
    let mut cmd = Command::new(bin);
    clean_env(&mut cmd);
    cmd.arg("--config")
        .arg(&cfg_path)
        .arg("serve")
        .current_dir(dir.path())
        .env(
            "ACCESSGATE_CREDENTIALS__CLIENT_SECRET",
            &em.config().graph_client_secret,
        );
    Server::start(cmd, Some(dir), http)
        .await
        .context("starting accessgate")
}

async fn start_baseline(em: &Emulator, http: &reqwest::Client) -> anyhow::Result<Server> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut cmd = Command::new(exe);
    clean_env(&mut cmd);
    cmd.args(["baseline", "--port", "0", "--jwks-url", &em.jwks_url()]);
    Server::start(cmd, None, http)
        .await
        .context("starting the baseline")
}

/// Starts a server `starts` times (each afresh); returns the last one, the median ready time
/// and the median idle RSS.
async fn measure_starts<F, Fut>(starts: usize, mut start: F) -> anyhow::Result<(Server, f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Server>>,
{
    let (mut ready, mut rss) = (Vec::new(), Vec::new());
    let mut kept = None;
    for _ in 0..starts.max(1) {
        if let Some(prev) = kept.take() {
            Server::stop(prev).await?;
        }
        let s = start().await?;
        ready.push(s.ready.as_secs_f64() * 1e3);
        // Let start-up work that follows readiness (key prefetch, worker start) settle.
        tokio::time::sleep(Duration::from_millis(300)).await;
        rss.push(procinfo::rss_mib(s.pid)?);
        kept = Some(s);
    }
    let server = kept.context("no start")?;
    Ok((server, median(&ready), median(&rss)))
}

/// CPU used during a phase by the server and by this process (load generator + emulator).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    server: Duration,
    bench: Duration,
}

impl Cpu {
    fn start(pid: u32) -> anyhow::Result<(Duration, Duration)> {
        Ok((
            procinfo::cpu_time(pid)?,
            procinfo::cpu_time(std::process::id())?,
        ))
    }

    fn since(pid: u32, (server, bench): (Duration, Duration)) -> anyhow::Result<Cpu> {
        let (s, b) = Cpu::start(pid)?;
        Ok(Cpu {
            server: s.saturating_sub(server),
            bench: b.saturating_sub(bench),
        })
    }

    /// Microseconds of (server, bench) CPU per callout.
    fn per_callout_us(&self, n: u64) -> (f64, f64) {
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
        (per(self.server), per(self.bench))
    }
}

struct Figures {
    throughput: ClosedOutcome,
    throughput_cpu: Cpu,
    latency: OpenOutcome,
    ready_ms: f64,
    rss_mib: f64,
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The accessgate binary: `--accessgate`, or the one next to this executable.
fn accessgate_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let bin = match explicit {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("executable without a directory")?
            .join("accessgate"),
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p accessgate) or pass --accessgate",
            bin.display()
        );
    }
    Ok(bin)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let bin = accessgate_binary(args.accessgate.clone())?;
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "machine: nproc={nproc}, {}; bench build: {profile}; accessgate: {}",
        cpu_model(),
        bin.display()
    );
    println!(
        "load: {} keep-alive HTTP/1.1 connections; closed loop {} s; open loop {}/s for {} s; warm-up {} per server",
        args.connections, args.duration_secs, args.rate, args.latency_secs, args.warmup
    );
    println!(
        "order: baseline throughput, baseline latency, accessgate latency, accessgate throughput with one shared inner token (shape b, Entra's way), then with an inner token per request (shape a); its worker keeps draining afterwards"
    );

    let load_before = procinfo::loadavg();
    let emulator = EmulatorThread::start().await?;
    let em = emulator.handle.clone();
    let http = reqwest::Client::builder().no_proxy().build()?;

    let (base_srv, base_ready, base_rss) =
        measure_starts(args.starts, || start_baseline(&em, &http)).await?;
    let (ag_srv, ag_ready, ag_rss) = measure_starts(args.starts, || {
        start_accessgate(&bin, &em, &http, WorkerLoad::QUIET)
    })
    .await?;
    println!(
        "ready (median of {}): accessgate {ag_ready:.1} ms, baseline {base_ready:.1} ms",
        args.starts
    );

    // Every accessgate callout is unique (it refuses replays); the baseline cycles a pool.
    let latency_count = (args.rate as u64 * args.latency_secs) as usize;
    let ag_count = args.warmup + latency_count + args.max_tokens;
    let base_pool = 2_000;
    // Only the warm-up and latency callouts are registered in the emulated Graph: each
    // registration sweeps every known request there (O(n)), so 40k would take minutes, and the
    // single worker resumes oldest first and does not get past them within the run (the
    // resume counters below show whether it did).
    let registered = args.warmup + latency_count;
    use tokens::Shape;
    let (mut ag_calls, took) =
        tokens::mint(&em, registered, nproc, true, Shape::SharedToken).await?;
    let (tput_calls, took2) =
        tokens::mint(&em, args.max_tokens, nproc, false, Shape::SharedToken).await?;
    // Shape (a): a throughput phase of its own, every request with its own inner token.
    let (tput_own_calls, took3) =
        tokens::mint(&em, args.max_tokens, nproc, false, Shape::OwnToken).await?;
    let (base_calls, _) = tokens::mint(&em, base_pool, nproc, false, Shape::OwnToken).await?;
    let minted_at = Instant::now();
    let took = took + took2 + took3;
    let ag_count = ag_count + args.max_tokens;
    println!(
        "minted {ag_count} unique callouts for accessgate ({registered} registered in the emulator) in {:.1} s ({:.0}/s), {base_pool} for the baseline",
        took.as_secs_f64(),
        ag_count as f64 / took.as_secs_f64()
    );

    let settle = || tokio::time::sleep(Duration::from_millis(500));
    let duration = Some(Duration::from_secs(args.duration_secs));

    // Baseline: warm-up, throughput, latency.
    let work = Work::cycling(base_calls);
    let conns = Conn::open_many(base_srv.addr, args.connections).await?;
    let (conns, _) = load::closed_loop(conns, &work, None, args.warmup).await?;
    let cpu0 = Cpu::start(base_srv.pid)?;
    let (conns, base_tput) = load::closed_loop(conns, &work, duration, usize::MAX).await?;
    let base_cpu = Cpu::since(base_srv.pid, cpu0)?;
    settle().await;
    let (conns, base_lat) = load::open_loop(conns, &work, args.rate as f64, latency_count).await?;
    drop(conns);
    settle().await;

    // accessgate: warm-up, latency, throughput; disjoint slices of its unique callouts.
    let lat_calls = ag_calls.split_off(args.warmup);
    let conns = Conn::open_many(ag_srv.addr, args.connections).await?;
    let (conns, ag_warm) =
        load::closed_loop(conns, &Work::once(ag_calls), None, usize::MAX).await?;
    if ag_warm.tally.accepted() == 0 {
        bail!(
            "accessgate accepted none of {} warm-up callouts: {}\n{}",
            args.warmup,
            ag_warm.tally.failures(),
            ag_srv.output().1.join("\n")
        );
    }
    settle().await;
    let (conns, ag_lat) = load::open_loop(
        conns,
        &Work::once(lat_calls),
        args.rate as f64,
        latency_count,
    )
    .await?;
    settle().await;
    let cpu0 = Cpu::start(ag_srv.pid)?;
    let (conns, ag_tput) =
        load::closed_loop(conns, &Work::once(tput_calls), duration, usize::MAX).await?;
    let ag_cpu = Cpu::since(ag_srv.pid, cpu0)?;
    settle().await;
    let (conns, ag_tput_own) =
        load::closed_loop(conns, &Work::once(tput_own_calls), duration, usize::MAX).await?;
    drop(conns);
    let token_age = minted_at.elapsed();

    // What accessgate's worker made of it (no route tells job counts; the emulator counts).
    let graph = em.stats();
    let accepted_total = ag_warm.tally.accepted()
        + ag_lat.tally.accepted()
        + ag_tput.tally.accepted()
        + ag_tput_own.tally.accepted();
    let (ag_lines, ag_first) = ag_srv.output();
    let (base_lines, base_first) = base_srv.output();
    ag_srv.stop().await?;
    base_srv.stop().await?;
    let busy = worker_busy(&args, &bin, &em, &http, nproc).await?;
    drop(emulator);

    let ag = Figures {
        throughput: ag_tput,
        throughput_cpu: ag_cpu,
        latency: ag_lat,
        ready_ms: ag_ready,
        rss_mib: ag_rss,
    };
    let base = Figures {
        throughput: base_tput,
        throughput_cpu: base_cpu,
        latency: base_lat,
        ready_ms: base_ready,
        rss_mib: base_rss,
    };
    report(&args, &ag, &base);
    let own_ratio = ag_tput_own.rate() / base.throughput.rate();
    println!(
        "shape (a), every request with its own inner token: accessgate {:.0} callouts/s, ratio {own_ratio:.3} (target >= 0.5: {}); shape (b), one shared inner token: ratio {:.3} (target >= 0.7){}",
        ag_tput_own.rate(),
        if own_ratio >= 0.5 { "met" } else { "NOT met" },
        ag.throughput.rate() / base.throughput.rate(),
        if ag_tput_own.tally.failures().is_empty() {
            String::new()
        } else {
            format!("; shape (a) non-202: {}", ag_tput_own.tally.failures())
        }
    );
    println!(
        "emulated Graph: {} resume calls, {} accepted, {} rejected (of {accepted_total} callouts accepted)",
        graph.resume_calls, graph.resume_accepted, graph.resume_rejected
    );
    println!(
        "server output after start: accessgate {ag_lines} lines, baseline {base_lines} lines; oldest token used {:.0} s after minting (lifetime 300 s)",
        token_age.as_secs_f64()
    );
    println!(
        "1-min load average: {load_before} before, {} after (anything else running skews the figures)",
        procinfo::loadavg()
    );
    for l in ag_first.iter().take(3) {
        println!("  accessgate: {l}");
    }
    for l in base_first.iter().take(3) {
        println!("  baseline: {l}");
    }
    busy.report(args.rate);
    let ratio = ag.throughput.rate() / base.throughput.rate();
    println!(
        "RESULT accessgate_rps={:.0} accessgate_own_token_rps={:.0} baseline_rps={:.0} ratio={ratio:.3} own_token_ratio={own_ratio:.3} ag_p50_ms={:.2} ag_p99_ms={:.2} ag_max_ms={:.2} base_p50_ms={:.2} base_p99_ms={:.2} base_max_ms={:.2} ag_ready_ms={:.1} ag_rss_mib={:.1} base_ready_ms={:.1} base_rss_mib={:.1} busy_p50_ms={:.2} busy_p99_ms={:.2} busy_max_ms={:.2} e2e_rps={:.0} e2e_p50_ms={:.1} e2e_p99_ms={:.1} e2e_open_p50_ms={:.1} e2e_open_p99_ms={:.1} nproc={nproc} profile={profile}",
        ag.throughput.rate(),
        ag_tput_own.rate(),
        base.throughput.rate(),
        ag.latency.latency.p50_ms,
        ag.latency.latency.p99_ms,
        ag.latency.latency.max_ms,
        base.latency.latency.p50_ms,
        base.latency.latency.p99_ms,
        base.latency.latency.max_ms,
        ag.ready_ms,
        ag.rss_mib,
        base.ready_ms,
        base.rss_mib,
        busy.ack.latency.p50_ms,
        busy.ack.latency.p99_ms,
        busy.ack.latency.max_ms,
        busy.burst.throughput,
        busy.burst.latency.p50_ms,
        busy.burst.latency.p99_ms,
        busy.open.latency.p50_ms,
        busy.open.latency.p99_ms,
    );
    Ok(())
}

fn report(args: &RunArgs, ag: &Figures, base: &Figures) {
    println!();
    println!(
        "{:<11} {:>11} | {:>24} | {:>18} | {:>8} {:>8}",
        "",
        "callouts/s",
        format!("ack ms @{}/s p50/p99/max", args.rate),
        "service p50/p99",
        "ready ms",
        "RSS MiB"
    );
    for (name, f) in [("accessgate", ag), ("baseline", base)] {
        let l = &f.latency.latency;
        let s = &f.latency.service;
        println!(
            "{name:<11} {:>11.0} | {:>24} | {:>18} | {:>8.1} {:>8.1}",
            f.throughput.rate(),
            format!("{:.2} / {:.2} / {:.2}", l.p50_ms, l.p99_ms, l.max_ms),
            format!("{:.2} / {:.2}", s.p50_ms, s.p99_ms),
            f.ready_ms,
            f.rss_mib,
        );
    }
    let ratio = ag.throughput.rate() / base.throughput.rate();
    println!(
        "ratio accessgate/baseline throughput: {ratio:.3} (target >= 0.7: {}); accessgate p99 {:.2} ms (target <= 5 ms: {})",
        if ratio >= 0.7 { "met" } else { "NOT met" },
        ag.latency.latency.p99_ms,
        if ag.latency.latency.p99_ms <= 5.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    for (name, f) in [("accessgate", ag), ("baseline", base)] {
        let (srv, gen_us) = f
            .throughput_cpu
            .per_callout_us(f.throughput.tally.accepted());
        println!(
            "{name}: CPU per accepted callout in the throughput phase: server {srv:.0} us, load generator + emulator {gen_us:.0} us"
        );
    }
    for (name, f) in [("accessgate", ag), ("baseline", base)] {
        let t = &f.throughput;
        let mut notes = Vec::new();
        if !t.tally.failures().is_empty() {
            notes.push(format!("throughput non-202: {}", t.tally.failures()));
        }
        if t.exhausted {
            notes.push(format!(
                "throughput phase ran out of minted callouts after {:.1} s (raise --max-tokens)",
                t.elapsed.as_secs_f64()
            ));
        }
        if !f.latency.tally.failures().is_empty() {
            notes.push(format!("latency non-202: {}", f.latency.tally.failures()));
        }
        if f.latency.achieved_rate < 0.95 * args.rate as f64 {
            notes.push(format!(
                "latency phase answered only {:.0}/s",
                f.latency.achieved_rate
            ));
        }
        if !notes.is_empty() {
            println!("{name}: {}", notes.join("; "));
        }
    }
}

/// Graph's answer delay in the worker-busy phases.
const GRAPH_DELAY_MS: u64 = 5;

/// The worker-busy figures: ack latency at a fixed rate while the worker resumes what arrives,
/// end to end for that open loop, and end to end for a closed-loop burst.
struct Busy {
    ack: load::OpenOutcome,
    open: e2e::EndToEnd,
    burst: e2e::EndToEnd,
    burst_ingress: load::ClosedOutcome,
    resumes_during_ack: usize,
}

/// A fresh accessgate whose worker resumes at full speed (64 concurrent, the Graph rate bound
/// raised to 10,000/s), the emulated Graph answering every call after `GRAPH_DELAY_MS`. Every
/// callout is unique and registered, so every resume succeeds.
async fn worker_busy(
    args: &RunArgs,
    bin: &Path,
    em: &Emulator,
    http: &reqwest::Client,
    nproc: usize,
) -> anyhow::Result<Busy> {
    use tokens::Shape;
    let count = (args.rate as u64 * args.latency_secs) as usize;
    let (mut calls, _) =
        tokens::mint(em, args.warmup + count, nproc, true, Shape::SharedToken).await?;
    let open_calls = calls.split_off(args.warmup);
    let (burst_calls, _) = tokens::mint(em, count, nproc, true, Shape::SharedToken).await?;
    let srv = start_accessgate(bin, em, http, WorkerLoad::BUSY).await?;
    em.set_fault(&accessgate_emulator::FaultSpec {
        target: accessgate_emulator::FaultTarget::Graph,
        delay_ms: Some(GRAPH_DELAY_MS),
        ..Default::default()
    })?;
    let wait = Duration::from_secs(30);
    let conns = Conn::open_many(srv.addr, args.connections).await?;
    let warm_ids = tokens::request_ids(&calls);
    let (conns, _) = load::closed_loop(conns, &Work::once(calls), None, usize::MAX).await?;
    // The warm-up's resumes finish before the measured load starts.
    let t0 = SystemTime::now();
    e2e::measure(em, &warm_ids, |_| t0, wait).await?;
    let before = em.stats().resume_accepted;
    let open_ids = tokens::request_ids(&open_calls);
    let (conns, ack) =
        load::open_loop(conns, &Work::once(open_calls), args.rate as f64, count).await?;
    let resumes_during_ack = (em.stats().resume_accepted - before) as usize;
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = ack.start_wall;
    let open = e2e::measure(em, &open_ids, |i| start + period.mul_f64(i as f64), wait).await?;
    let burst_ids = tokens::request_ids(&burst_calls);
    let t0 = SystemTime::now();
    let (conns, burst_ingress) =
        load::closed_loop(conns, &Work::once(burst_calls), None, usize::MAX).await?;
    drop(conns);
    // Closed loop: each callout's own send time is not kept; from the burst's start, so the
    // latency includes the time the burst queued behind itself.
    let burst = e2e::measure(em, &burst_ids, |_| t0, wait).await?;
    em.clear_faults();
    srv.stop().await?;
    Ok(Busy {
        ack,
        open,
        burst,
        burst_ingress,
        resumes_during_ack,
    })
}

impl Busy {
    fn report(&self, rate: u32) {
        let l = &self.ack.latency;
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!(
            "worker busy (64 concurrent, Graph answering in {GRAPH_DELAY_MS} ms): ack at {rate}/s p50 / p99 / max {:.2} / {:.2} / {:.2} ms (target p99 <= 5 ms: {}); the worker resumed {} callouts during that phase{}",
            l.p50_ms,
            l.p99_ms,
            l.max_ms,
            met(l.p99_ms <= 5.0),
            self.resumes_during_ack,
            if self.ack.tally.failures().is_empty() {
                String::new()
            } else {
                format!("; non-202: {}", self.ack.tally.failures())
            }
        );
        let o = &self.open;
        println!(
            "end to end at {rate}/s (due time to resume recorded): {}/{} resumed, p50 / p99 / max {:.1} / {:.1} / {:.1} ms (target p50 <= 20 ms: {})",
            o.resumed,
            o.sent,
            o.latency.p50_ms,
            o.latency.p99_ms,
            o.latency.max_ms,
            met(o.latency.p50_ms <= 20.0)
        );
        let b = &self.burst;
        println!(
            "end to end, closed-loop burst of {} (ingress {:.0}/s): {}/{} resumed, {:.0} resumes/s from the first send to the last resume (target >= 1000: {}); from the burst's start p50 / p99 {:.0} / {:.0} ms{}",
            b.sent,
            self.burst_ingress.rate(),
            b.resumed,
            b.sent,
            b.throughput,
            met(b.throughput >= 1000.0),
            b.latency.p50_ms,
            b.latency.p99_ms,
            if self.burst_ingress.tally.failures().is_empty() {
                String::new()
            } else {
                format!("; non-202: {}", self.burst_ingress.tally.failures())
            }
        );
    }
}
