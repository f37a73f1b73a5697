//! Test harness: the emulator in-process on a random loopback port, and the real `accessgate`
//! binary as a child process with its own data directory, talking HTTP.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub use accessgate_emulator::{
    AuthScheme, CatalogRole, CertificateOptions, DEFAULT_CATALOG, Emulator, EmulatorConfig,
    FaultSpec, FaultTarget, Grants, IssuerVersion, MintOptions, PopKeyKind, PopOptions,
    RunningEmulator, SendOptions, SendReport, Shape, SignWith,
};

/// The platform variables App Service / Functions set when the managed identity is on.
pub fn mi_env(emu: &Emulator) -> Vec<(String, String)> {
    vec![
        ("IDENTITY_ENDPOINT".into(), emu.managed_identity_url()),
        (
            "IDENTITY_HEADER".into(),
            emu.config().identity_header.clone(),
        ),
    ]
}

/// The catalog the emulator's sender puts in callouts unless told otherwise.
pub const SENDER_CATALOG: &str = "c0000000-0000-0000-0000-000000000001";

/// A fault spec to complete with `..graph_fault()`.
pub fn graph_fault() -> FaultSpec {
    FaultSpec::default()
}

pub const AUDIENCE: &str = "api://accessgate";

pub struct Harness {
    pub emu: RunningEmulator,
    pub ag: Accessgate,
    pub dir: tempfile::TempDir,
}

/// A running accessgate process and everything it printed.
pub struct Accessgate {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
    pub env: Vec<(String, String)>,
    /// A command the binary runs under (`prlimit --nofile=… --`), empty for none.
    wrapper: Vec<String>,
}

pub async fn start_emulator() -> RunningEmulator {
    accessgate_emulator::start(EmulatorConfig::default(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("emulator starts")
}

/// A config file for accessgate pointing at the emulator, in direct mode with one extension
/// (`elm`) bound to the emulator's Logic App resource; `extra` is appended TOML.
pub fn write_config(dir: &Path, emu: &Emulator, extra: &str) -> PathBuf {
    write_config_with(dir, emu, "", extra)
}

/// Like [`write_config`], with `inbound` lines added to the `[inbound]` section. `@EMULATOR_URL@`
/// in `extra` becomes the emulator's base URL (known only once it runs).
pub fn write_config_with(dir: &Path, emu: &Emulator, inbound: &str, extra: &str) -> PathBuf {
    let cfg = emu.config();
    let extra = extra.replace("@EMULATOR_URL@", &emu.base_url());
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
data_dir = "data"

[identity]
authority = "{base}"
tenant_id = "{tenant}"

[inbound]
{inbound}

[extensions.elm]
resource = "{resource}"

[extensions.lcw]
resource = "{lcw_resource}"
kind = "lifecycle_workflows"

[graph]
base_url = "{base}"
scope = "https://graph.microsoft.com/.default"
{credentials}

[worker]
retry_base_ms = 100
retry_max_ms = 1000
poll_interval_ms = 50
deadline_margin_seconds = 5

[log]
format = "json"
level = "info,accessgate=debug"
{extra}
"#,
        base = emu.base_url(),
        tenant = cfg.tenant_id,
        resource = cfg.logic_app_resource,
        lcw_resource = cfg.lcw_logic_app_resource,
        // A test that brings its own [credentials] section replaces the default one.
        credentials = if extra.contains("[credentials]") {
            String::new()
        } else {
            format!("[credentials]\nclient_id = \"{}\"", cfg.graph_client_id)
        },
    );
    let path = dir.join("accessgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `text` as a policy file that outlives the caller (tests keep it for the run).
pub fn policy_file(text: &str) -> PathBuf {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, text).unwrap();
    std::mem::forget(dir);
    path
}

impl Harness {
    /// Emulator + accessgate serve with the policy at `policy` (`policy_extra`: more lines of
    /// `[policy]`), `[servicenow]` on the emulator with Basic auth as `accessgate` and
    /// `password` (given through the environment, and accepted by the emulator's ServiceNow),
    /// `servicenow_extra` lines of it, and `extra` TOML after.
    pub async fn start_with_servicenow(
        policy: &Path,
        policy_extra: &str,
        servicenow_extra: &str,
        extra: &str,
        password: &str,
    ) -> Harness {
        let h = Self::start_env(
            "",
            &format!(
                "[policy]\nfile = \"{}\"\n{policy_extra}\n[servicenow]\ninstance_url = \"@EMULATOR_URL@\"\nauth = \"basic\"\nusername = \"accessgate\"\n{servicenow_extra}\n{extra}\n",
                policy.display()
            ),
            vec![("ACCESSGATE_SERVICENOW__PASSWORD".into(), password.into())],
        )
        .await;
        let emu = h.emu();
        let mut creds = emu.servicenow_credentials();
        creds.username = "accessgate".into();
        creds.password = password.into();
        emu.set_servicenow_credentials(&creds).unwrap();
        h
    }

    /// Emulator + accessgate serve (direct mode, PoP) with `extra` TOML appended to the config.
    pub async fn start(extra: &str) -> Harness {
        Self::start_with("", extra).await
    }

    /// Also accepts legacy bearer tokens (`inbound.audiences = [AUDIENCE]`).
    pub async fn start_bearer(extra: &str) -> Harness {
        Self::start_with(&format!("audiences = [\"{AUDIENCE}\"]"), extra).await
    }

    /// Emulator + accessgate serve with `inbound` lines in `[inbound]` and `extra` appended.
    pub async fn start_with(inbound: &str, extra: &str) -> Harness {
        Self::start_env(inbound, extra, Vec::new()).await
    }

    /// Like [`Harness::start_with`], with environment overrides (`ACCESSGATE_GRAPH__…`) added.
    pub async fn start_env(inbound: &str, extra: &str, env: Vec<(String, String)>) -> Harness {
        Self::start_under(Vec::new(), inbound, extra, env).await
    }

    /// Like [`Harness::start_env`], with accessgate's open-file limit (soft and hard, so the
    /// raise at start-up cannot lift it) set to `nofile` by util-linux `prlimit`.
    pub async fn start_nofile(nofile: u64, env: Vec<(String, String)>) -> Harness {
        let wrapper = vec![
            "prlimit".to_string(),
            format!("--nofile={nofile}:{nofile}"),
            "--".to_string(),
        ];
        Self::start_under(wrapper, "", "", env).await
    }

    /// Emulator + accessgate serve run under `wrapper` (see [`Accessgate::spawn_under`]).
    async fn start_under(
        wrapper: Vec<String>,
        inbound: &str,
        extra: &str,
        env: Vec<(String, String)>,
    ) -> Harness {
        let emu = start_emulator().await;
        let dir = tempfile::tempdir().unwrap();
        let config_path = write_config_with(dir.path(), &emu.handle(), inbound, extra);
        let mut all = Vec::new();
        if !extra.contains("[credentials]") {
            all.push((
                "ACCESSGATE_CREDENTIALS__CLIENT_SECRET".to_string(),
                emu.handle().config().graph_client_secret.clone(),
            ));
        }
        all.extend(env);
        let ag = Accessgate::spawn_under(wrapper, &config_path, all, &["serve"]).await;
        Harness { emu, ag, dir }
    }

    pub fn emu(&self) -> Emulator {
        self.emu.handle()
    }

    pub fn callout_url(&self) -> String {
        format!("http://{}/api/elm", self.ag.addr)
    }

    /// Sends a callout the way Entra does (a PoP signed request minted by the emulator, unless
    /// `opts` says otherwise).
    pub async fn send(&self, mut opts: SendOptions) -> SendReport {
        opts.target_url = self.callout_url();
        self.emu().send_callout(&opts).await.expect("send callout")
    }

    /// Mints a callout bearer token (legacy "Regular" extensions, relay mode).
    pub fn token(&self, m: MintOptions) -> String {
        self.emu().mint_callout_token(&m).expect("mint")
    }

    /// A complete `Authorization` value: `PoP <signed request>` minted as Entra does.
    pub fn pop(&self, o: PopOptions) -> String {
        format!("PoP {}", self.emu().mint_pop(&o).expect("mint PoP"))
    }
}

impl Accessgate {
    pub async fn spawn(config: &Path, env: Vec<(String, String)>, args: &[&str]) -> Accessgate {
        Self::spawn_under(Vec::new(), config, env, args).await
    }

    /// Runs the binary as the last argument of `wrapper` (a command that execs it, such as
    /// `prlimit … --`), so the child's pid is accessgate's own.
    pub async fn spawn_under(
        wrapper: Vec<String>,
        config: &Path,
        env: Vec<(String, String)>,
        args: &[&str],
    ) -> Accessgate {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (child, addr) = spawn_child(&wrapper, config, &env, args, logs.clone());
        Accessgate {
            child: Some(child),
            addr,
            logs,
            config_path: config.to_path_buf(),
            env,
            wrapper,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > until {
                let _ = c.kill();
                panic!("accessgate did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the binary again on the same config and data directory.
    pub async fn restart(&mut self) {
        self.kill9();
        let (child, addr) = spawn_child(
            &self.wrapper,
            &self.config_path,
            &self.env,
            &["serve"],
            self.logs.clone(),
        );
        self.child = Some(child);
        self.addr = addr;
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Parsed JSON log lines, with the current span's fields lifted to the top level.
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|mut v| {
                if let Some(span) = v.get("span").and_then(|s| s.as_object()).cloned() {
                    for (k, val) in span {
                        if v.get(&k).is_none() {
                            v[k.as_str()] = val;
                        }
                    }
                }
                v
            })
            .collect()
    }

    /// Waits until a JSON log line satisfies `pred`.
    pub async fn wait_log(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = self.log_json().into_iter().find(|v| pred(v)) {
                return v;
            }
            assert!(
                Instant::now() < until,
                "no log line {what}; logs:\n{}",
                self.log_lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Values no log line, error or panic message may contain: the emulator's secrets (client
/// secret, managed identity header, Key Vault secret values the tests store) and the Azurite
/// account key. Tokens are caught by shape ([`find_jwt`]).
pub const KNOWN_SECRETS: &[&str] = &[
    "emulator-graph-secret",
    "emulator-identity-header",
    "sn-e2e-password-",
    "kv-secret-",
    "rotated-secret-",
    "PRIVATE KEY",
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq",
];

/// The first thing in `line` shaped like a signed JWT (`eyJ….….…`), which in a log is a leak.
pub fn find_jwt(line: &str) -> Option<String> {
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut rest = line;
    while let Some(i) = rest.find("eyJ") {
        let cand = &rest[i..];
        let end = cand
            .find(|c: char| !(b64(c) || c == '.'))
            .unwrap_or(cand.len());
        let tok = &cand[..end];
        let parts: Vec<&str> = tok.split('.').collect();
        if parts.len() >= 3 && parts[..3].iter().all(|p| p.len() >= 8) {
            return Some(tok.chars().take(24).collect());
        }
        rest = &cand[3..];
    }
    None
}

/// Every line that leaks a known secret or a token.
pub fn leaks(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| KNOWN_SECRETS.iter().any(|s| l.contains(s)) || find_jwt(l).is_some())
        .map(|l| l.chars().take(300).collect())
        .collect()
}

impl Drop for Accessgate {
    fn drop(&mut self) {
        self.kill9();
        // The secrets scan of the whole suite: every accessgate process any test starts is
        // checked here, on every outcome of its test.
        let leaked = leaks(&self.log_lines());
        if !leaked.is_empty() && !std::thread::panicking() {
            panic!(
                "accessgate printed a secret or token ({} line(s)):\n{}",
                leaked.len(),
                leaked.join("\n")
            );
        }
    }
}

fn spawn_child(
    wrapper: &[String],
    config: &Path,
    env: &[(String, String)],
    args: &[&str],
    logs: Arc<Mutex<Vec<String>>>,
) -> (Child, SocketAddr) {
    let bin = env!("CARGO_BIN_EXE_accessgate");
    let mut cmd = match wrapper.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("accessgate starts (under {wrapper:?}): {e}"));
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let logs2 = logs.clone();
    let logs_seen = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            logs2.lock().unwrap().push(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["message"] == "accessgate listening"
                && let Some(a) = v["addr"].as_str()
            {
                let _ = tx.send(a.parse::<SocketAddr>().unwrap());
            } else if line.contains("accessgate listening")
                && let Some(a) = line.split("addr=").nth(1).and_then(|r| r.split(' ').next())
                && let Ok(a) = a.parse::<SocketAddr>()
            {
                // The text log format (`[log] format = "text"`).
                let _ = tx.send(a);
            }
            logs.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            std::thread::sleep(Duration::from_millis(200));
            panic!(
                "accessgate did not start listening; it printed:\n{}",
                logs_seen.lock().map(|l| l.join("\n")).unwrap_or_default()
            )
        });
    (child, addr)
}

/// Polls `f` until it returns Some, or fails after `secs`.
pub async fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the emulated Graph has an accepted resume for this stage instance.
pub async fn resumed(emu: &Emulator, stage_instance_id: &str) -> accessgate_emulator::ResumeRecord {
    let sid = stage_instance_id.to_string();
    eventually(20, "the resume", || {
        emu.resumes()
            .into_iter()
            .find(|r| r.stage_instance_id == sid)
    })
    .await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A flat-shape callout body.
pub fn flat_body(stage: &str, request_id: &str, stage_instance_id: &str) -> String {
    serde_json::json!({
        "AccessPackageAssignmentRequestId": request_id,
        "CustomExtensionStageInstanceId": stage_instance_id,
        "Stage": stage,
        "CallbackUriPath": format!("/identityGovernance/entitlementManagement/assignmentRequests/{request_id}/resume"),
        "CallbackConfiguration": {"DurationBeforeTimeout": "PT1H"},
        "AccessPackage": {"Id": "a0000000-0000-0000-0000-000000000001", "DisplayName": "Emulator Access Package"},
        "AccessPackageCatalog": {"Id": "c0000000-0000-0000-0000-000000000001", "DisplayName": "Emulator Catalog"}
    })
    .to_string()
}

/// The answer to a raw POST of a callout.
pub struct Posted {
    pub status: u16,
    pub body: serde_json::Value,
    pub correlation_id: String,
    pub challenge: Option<String>,
}

/// POSTs `body` to `url` with an optional Authorization and Content-Type.
pub async fn post_raw(
    url: &str,
    auth: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Posted {
    let mut rb = client().post(url).body(body);
    if let Some(a) = auth {
        rb = rb.header("authorization", a);
    }
    if let Some(c) = content_type {
        rb = rb.header("content-type", c);
    }
    Posted::read(rb.send().await.unwrap()).await
}

impl Posted {
    /// Status, correlation id, challenge and JSON body of an answer.
    pub async fn read(resp: reqwest::Response) -> Posted {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
        };
        let (correlation_id, challenge) = (
            header("x-correlation-id").unwrap_or_default(),
            header("www-authenticate"),
        );
        Posted {
            status: resp.status().as_u16(),
            correlation_id,
            challenge,
            body: resp.json().await.unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Makes emulated Graph answer 503 to every call until `clear_faults`.
pub fn graph_down(emu: &Emulator, retry_after_secs: Option<u64>) {
    emu.set_fault(&FaultSpec {
        target: FaultTarget::Graph,
        status: Some(503),
        retry_after_secs,
        ..Default::default()
    })
    .unwrap();
}

impl Harness {
    /// Jobs per status in the SQLite queue (`{}` when nothing was ever queued), read from the
    /// database file as `accessgate jobs` does: no route tells job counts without authentication.
    pub async fn job_counts(&self) -> serde_json::Value {
        let db = self.dir.path().join("data").join("queue.db");
        tokio::task::spawn_blocking(move || sqlite_job_counts(&db))
            .await
            .unwrap()
    }
}

/// Jobs per status in the queue database at `db`.
pub fn sqlite_job_counts(db: &Path) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    if !db.exists() {
        return serde_json::Value::Object(out);
    }
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut stmt = c
        .prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    for row in rows {
        let (status, n) = row.unwrap();
        out.insert(status, n.into());
    }
    serde_json::Value::Object(out)
}

/// Runs the binary with `args` and `env` to its exit. Bounded: a command that refuses its
/// configuration exits at once; 60 s is far above that even on a loaded 2-core machine, and a
/// hung `serve` is killed and fails the test.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_accessgate"));
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("accessgate {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`run_to_exit`] off the async runtime (the emulator in this process keeps answering): the
/// exit code and what the command printed, stdout then stderr.
pub async fn run_cli(args: Vec<String>, env: Vec<(String, String)>) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = run_to_exit(&args, &env);
        (out.status.code(), output_text(&out))
    })
    .await
    .unwrap()
}

/// accessgate's app registration in the emulated tenant (its grants and object id).
pub fn app_principal(emu: &Emulator) -> accessgate_emulator::Principal {
    emu.principals()
        .into_iter()
        .find(|p| p.client_id == emu.config().graph_client_id)
        .unwrap()
}

/// Replaces the Graph application permissions of accessgate's app.
pub fn grant_app(emu: &Emulator, permissions: Vec<String>) {
    emu.set_grants(
        &emu.config().graph_client_id,
        &Grants {
            graph_permissions: Some(permissions),
            ..Default::default()
        },
    )
    .unwrap();
}

/// What a finished command printed: stdout, then stderr.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// ServiceNow with an `sc_req_item` table (one unrelated item, so its fields are known).
pub fn seed_servicenow(emu: &Emulator) {
    let world: accessgate_emulator::World = serde_json::from_value(serde_json::json!({
        "servicenow": {"tables": {"sc_req_item": [{
            "sys_id": "5eed0000000000000000000000000001", "number": "RITM0000001",
            "state": {"value": "2", "display_value": "Work in Progress"}, "active": "true",
            "correlation_id": "other:seed", "short_description": "seed", "close_notes": "",
            "assignment_group": "", "description": ""
        }]}}
    }))
    .unwrap();
    emu.load_world(&world).unwrap();
}
