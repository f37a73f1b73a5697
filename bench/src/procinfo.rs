//! Server processes under test: spawn, start-to-ready time, idle RSS, and cleanup.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// How long a server may take to print its address and answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Output lines kept per server for the report (warnings, errors).
const KEPT_LINES: usize = 5;

/// `VmRSS` of a `/proc/PID/status` text, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Resident set size of a live process, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = parse_vm_rss_kib(&text).with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib as f64 / 1024.0)
}

/// User + system CPU time of a process from its `/proc/PID/stat` text, in clock ticks.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // `comm` (field 2) may contain spaces and parentheses: count fields after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime); `rest` starts at field 3.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time a live process (all its threads) has used so far. USER_HZ is 100 on Linux.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let ticks = parse_stat_cpu_ticks(&text).with_context(|| format!("unparsable {path}"))?;
    Ok(Duration::from_millis(ticks * 10))
}

/// The 1-minute load average (other work on the machine skews every figure).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// The address in a JSON log line `{"message":"... listening","addr":"IP:PORT"}` (the fields
/// may also sit under `fields`, as some tracing JSON layouts put them).
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let v: Value = serde_json::from_str(line.trim()).ok()?;
    let field = |k: &str| {
        v.get(k)
            .or_else(|| v.get("fields").and_then(|f| f.get(k)))
            .and_then(Value::as_str)
    };
    if !field("message")?.ends_with("listening") {
        return None;
    }
    field("addr")?.parse().ok()
}

/// Output of a child, kept for the report.
#[derive(Debug, Default)]
pub struct Output {
    pub lines: u64,
    pub first: Vec<String>,
}

fn drain<R: AsyncRead + Unpin + Send + 'static>(reader: R, out: Arc<Mutex<Output>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(mut o) = out.lock() {
                o.lines += 1;
                if o.first.len() < KEPT_LINES {
                    o.first.push(line);
                }
            }
        }
    });
}

/// A running server: killed when dropped; its temporary directory goes with it.
pub struct Server {
    pub addr: SocketAddr,
    pub pid: u32,
    /// Spawn to the first `200` from `/healthz`.
    pub ready: Duration,
    child: Child,
    output: Arc<Mutex<Output>>,
    dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Spawns `cmd` (which must print the listening line on stdout) and waits until `/healthz`
    /// answers 200. `dir` is removed when the server is.
    pub async fn start(
        mut cmd: Command,
        dir: Option<tempfile::TempDir>,
        http: &reqwest::Client,
    ) -> anyhow::Result<Server> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("spawning the server")?;
        let pid = child.id().context("server exited at once")?;
        let output = Arc::new(Mutex::new(Output::default()));
        if let Some(err) = child.stderr.take() {
            drain(err, output.clone());
        }
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = parse_listening(&line) {
                    return Ok(Some(addr));
                }
                if let Ok(mut o) = output.lock() {
                    o.lines += 1;
                    o.first.push(line);
                }
            }
            Ok::<_, anyhow::Error>(None)
        })
        .await
        .context("no listening line within 30 s")??;
        let Some(addr) = addr else {
            // Give stderr a moment to be read so the error says why.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let status = child.try_wait().ok().flatten();
            let out = output
                .lock()
                .map(|o| o.first.join("\n"))
                .unwrap_or_default();
            bail!("server stopped before listening ({status:?}):\n{out}");
        };
        drain(lines.into_inner(), output.clone());

        let url = format!("http://{addr}/healthz");
        let deadline = t0 + READY_TIMEOUT;
        loop {
            let ok = http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status() == reqwest::StatusCode::OK);
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("{url} did not answer 200 within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(Server {
            addr,
            pid,
            ready: t0.elapsed(),
            child,
            output,
            dir,
        })
    }

    /// Lines printed after start (warnings, errors) and the first few of them.
    pub fn output(&self) -> (u64, Vec<String>) {
        self.output
            .lock()
            .map(|o| (o.lines, o.first.clone()))
            .unwrap_or_default()
    }

    /// Kills the process, reaps it, then removes its directory.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("killing the server")?;
        if let Some(dir) = self.dir.take() {
            dir.close().context("removing the server's directory")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_from_proc_status() {
        let status =
            "Name:\taccessgate\nVmPeak:\t  123456 kB\nVmRSS:\t   14336 kB\nRssAnon:\t 9000 kB\n";
        assert_eq!(parse_vm_rss_kib(status), Some(14336));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t kB\n"), None);
    }

    #[test]
    fn cpu_ticks_from_proc_stat() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 150 25 0 0 20 0 4 0 100 1000 200";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("no parenthesis"), None);
    }

    #[test]
    fn own_rss_is_readable() -> anyhow::Result<()> {
        assert!(rss_mib(std::process::id())? > 0.0);
        Ok(())
    }

    #[test]
    fn listening_line() {
        let flat = r#"{"timestamp":"t","level":"INFO","message":"accessgate listening","addr":"127.0.0.1:4321","queue":"sqlite"}"#;
        assert_eq!(parse_listening(flat), "127.0.0.1:4321".parse().ok());
        let nested =
            r#"{"level":"INFO","fields":{"message":"baseline listening","addr":"127.0.0.1:9"}}"#;
        assert_eq!(parse_listening(nested), "127.0.0.1:9".parse().ok());
        assert_eq!(
            parse_listening(r#"{"message":"stopped","addr":"127.0.0.1:9"}"#),
            None
        );
        assert_eq!(parse_listening("accessgate listening 127.0.0.1:9"), None);
    }
}
