//! Azurite (the Azure Storage emulator) for queue tests: the one CI started
//! (`AZURITE_QUEUE_ENDPOINT` and `AZURITE_TABLE_ENDPOINT`), or a private `azurite` child (queue,
//! table and blob services) on free loopback ports, killed on drop. Tests share one account; give each its own queues ([`unique_queue_name`]).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The emulator's account (public, documented by Microsoft).
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    /// `http://127.0.0.1:PORT/devstoreaccount1`
    pub endpoint: String,
    /// The table service (the wait index of parked jobs), same form.
    pub table_endpoint: String,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = tempfile::tempdir().expect("temp dir for Azurite");
        if let (Ok(endpoint), Ok(table)) = (
            std::env::var("AZURITE_QUEUE_ENDPOINT"),
            std::env::var("AZURITE_TABLE_ENDPOINT"),
        ) && !endpoint.trim().is_empty()
            && !table.trim().is_empty()
        {
            return Azurite {
                endpoint: endpoint.trim().trim_end_matches('/').to_owned(),
                table_endpoint: table.trim().trim_end_matches('/').to_owned(),
                child: None,
                dir,
            };
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let exe = root.join("tools/azurite/node_modules/.bin/azurite");
        if !exe.exists() {
            panic!(
                "Azurite is not installed: run `npm ci --prefix tools/azurite` (bash .ci/run does it)"
            );
        }
        let (port, table_port, blob_port) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("azurite.log")).expect("Azurite log");
        let child = Command::new(&exe)
            .args(["--queueHost", "127.0.0.1", "--queuePort"])
            .arg(port.to_string())
            .args(["--tableHost", "127.0.0.1", "--tablePort"])
            .arg(table_port.to_string())
            .args(["--blobHost", "127.0.0.1", "--blobPort"])
            .arg(blob_port.to_string())
            .arg("--location")
            .arg(dir.path())
            .args(["--silent", "--skipApiVersionCheck", "--loose"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut az = Azurite {
            endpoint: format!("http://127.0.0.1:{port}/{ACCOUNT}"),
            table_endpoint: format!("http://127.0.0.1:{table_port}/{ACCOUNT}"),
            child: Some(child),
            dir,
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let table_addr: SocketAddr = ([127, 0, 0, 1], table_port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && TcpStream::connect_timeout(&table_addr, Duration::from_millis(200)).is_ok()
            {
                return az;
            }
            if let Some(status) = az.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("Azurite exited ({status}): {}", az.log());
            }
            if Instant::now() > deadline {
                panic!("Azurite did not listen on {addr} within 20 s: {}", az.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A Shared Key connection string naming both services.
    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};QueueEndpoint={};TableEndpoint={};",
            self.endpoint, self.table_endpoint
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A queue name no other test (or test run against a shared Azurite) uses: lower case letters,
/// digits and single dashes, 3 to 63 characters, starting with a letter or digit.
pub fn unique_queue_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let mut clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while clean.contains("--") {
        clean = clean.replace("--", "-");
    }
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "q" } else { clean };
    let suffix = format!(
        "{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let room = 63 - suffix.len() - 1;
    let head: String = clean.chars().take(room).collect();
    format!("{}-{suffix}", head.trim_end_matches('-'))
}
