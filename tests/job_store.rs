//! The `JobStore` contract, run against both backends through the trait: the SQLite queue and an
//! Azure Storage queue with its wait table on a real Azurite. Parking (until a time or an event),
//! waking, listing, leases and restarts behave the same on both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/azurite.rs"]
mod azurite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use accessgate::callout::{Parsed, parse};
use accessgate::endpoint::EndpointUrl;
use accessgate::queue::azure::{AzureQueue, AzureQueueSettings, StorageAuth};
use accessgate::queue::azure_backend::AzureJobs;
use accessgate::queue::sqlite::SqliteQueue;
use accessgate::queue::table::Table;
use accessgate::queue::{
    Deadline, EnqueueOutcome, JobMessage, JobStore, Outcome, Settle, Stored, Wait, WaitKey, WokenBy,
};
use accessgate::secret::Secret;

const TEST_LIMIT: Duration = Duration::from_secs(90);
const LEASE: Duration = Duration::from_secs(30);

fn job(sid: &str) -> JobMessage {
    let body = format!(
        r#"{{"Stage":"assignmentRequestApproved","CustomExtensionStageInstanceId":"{sid}","AccessPackageAssignmentRequestId":"req-{sid}","CallbackConfiguration":{{"DurationBeforeTimeout":"P2D"}}}}"#
    );
    let Ok(Parsed::Callout(c)) = parse(body.as_bytes()) else {
        panic!("test callout does not parse")
    };
    JobMessage::new(
        *c,
        format!("corr-{sid}"),
        None,
        Duration::from_secs(3600),
        Duration::from_secs(60),
    )
}

fn key(k: &str) -> WaitKey {
    WaitKey::parse(k).unwrap()
}

fn wait(secs: u64, k: Option<&str>, j: &JobMessage) -> Wait {
    Wait::new(
        Deadline::in_(Duration::from_secs(secs)),
        k.map(key),
        "the ticket to close".into(),
        j.deadline,
    )
}

/// Claims until a job comes (a parked Azure message that is not due is hidden again and yields
/// nothing, so one claim may come back empty), or `within` passes.
async fn claim_within(store: &dyn JobStore, within: Duration) -> Option<accessgate::queue::Lease> {
    let until = std::time::Instant::now() + within;
    loop {
        if let Some(l) = store.claim(LEASE).await.unwrap() {
            return Some(l);
        }
        if std::time::Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The contract. `reopen` gives a second handle on the same storage, as a restarted process
/// would have.
async fn contract(store: Arc<dyn JobStore>, reopen: impl Fn() -> Arc<dyn JobStore>, tag: &str) {
    let (a, b, c) = (
        job(&format!("{tag}-a")),
        job(&format!("{tag}-b")),
        job(&format!("{tag}-c")),
    );
    for j in [&a, &b, &c] {
        assert_eq!(store.enqueue(j).await.unwrap(), EnqueueOutcome::Enqueued);
    }
    // Park every job: a on an event key, b on a short timer, c on an event that fires while
    // its attempt is still running.
    let mut parked = 0;
    let key_a = format!("sn:{tag}-A");
    let key_c = format!("sn:{tag}-C");
    while parked < 3 {
        let l = claim_within(store.as_ref(), Duration::from_secs(10))
            .await
            .expect("three jobs to claim");
        assert_eq!(l.woken_by, None);
        let sid = l.job.callout.stage_instance_id.to_string();
        let w = if sid == a.callout.stage_instance_id.to_string() {
            wait(3600, Some(&key_a), &l.job)
        } else if sid == b.callout.stage_instance_id.to_string() {
            wait(2, None, &l.job)
        } else {
            store.wake(&key(&key_c)).await.unwrap();
            wait(3600, Some(&key_c), &l.job)
        };
        assert_eq!(store.wait(&l, &w).await.unwrap(), Stored::Yes);
        parked += 1;
    }

    // c was woken before it parked: it runs at once, woken by its event.
    let l = claim_within(store.as_ref(), Duration::from_secs(10))
        .await
        .expect("the job woken during its attempt");
    assert_eq!(l.job, c);
    assert_eq!(l.woken_by, Some(WokenBy::Event));
    let done = Outcome::Resumed {
        action: "continue".into(),
    };
    assert_eq!(store.complete(&l, &done).await.unwrap(), Stored::Yes);

    // A restarted process sees the parked jobs and what they wait for.
    let again = reopen();
    let listed = again.waiting(10).await.unwrap();
    let sids: Vec<&str> = listed
        .iter()
        .map(|w| w.stage_instance_id.as_str())
        .collect();
    assert!(sids.contains(&format!("{tag}-a").as_str()), "{listed:?}");
    let wa = listed
        .iter()
        .find(|w| w.stage_instance_id == format!("{tag}-a"))
        .unwrap();
    assert_eq!(wa.key.as_ref().map(WaitKey::as_str), Some(key_a.as_str()));
    assert_eq!(wa.reason, "the ticket to close");
    assert_eq!(wa.correlation_id, format!("corr-{tag}-a"));

    // Nothing is runnable until b's time comes; then b runs, woken by its timer.
    let l = claim_within(again.as_ref(), Duration::from_secs(8))
        .await
        .expect("the timer wake");
    assert_eq!(l.job, b);
    assert_eq!(l.woken_by, Some(WokenBy::Timer));
    assert_eq!(l.attempt, 1, "a wait is not a failed attempt");
    assert_eq!(again.complete(&l, &done).await.unwrap(), Stored::Yes);

    // A wake for another key changes nothing; a's key wakes a.
    again.wake(&key(&format!("sn:{tag}-other"))).await.unwrap();
    assert!(
        claim_within(again.as_ref(), Duration::from_millis(600))
            .await
            .is_none()
    );
    assert!(again.wake(&key(&key_a)).await.unwrap() >= 1);
    let l = claim_within(again.as_ref(), Duration::from_secs(10))
        .await
        .expect("the event wake");
    assert_eq!(l.job, a);
    assert_eq!(l.woken_by, Some(WokenBy::Event));
    // Parked again on the same key: the old event does not wake the new wait.
    assert_eq!(
        again
            .wait(&l, &wait(3600, Some(&key_a), &l.job))
            .await
            .unwrap(),
        Stored::Yes
    );
    assert!(
        claim_within(again.as_ref(), Duration::from_millis(600))
            .await
            .is_none()
    );
    again.wake(&key(&key_a)).await.unwrap();
    let l = claim_within(again.as_ref(), Duration::from_secs(10))
        .await
        .expect("the second event wake");
    assert_eq!(again.dead(&l, "gave up").await.unwrap(), Stored::Yes);
    let left: Vec<_> = again
        .waiting(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.stage_instance_id.starts_with(tag))
        .collect();
    assert!(
        left.is_empty(),
        "finished jobs are no longer listed: {left:?}"
    );
}

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test took longer than its time limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_job_store_contract() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let store: Arc<dyn JobStore> = Arc::new(SqliteQueue::open(&path).unwrap());
        contract(
            store,
            move || Arc::new(SqliteQueue::open(&path).unwrap()),
            "sq",
        )
        .await;
    })
    .await;
}

fn azure_store(
    (endpoint, table_endpoint): (&str, &str),
    queue: &str,
    table: &str,
    recheck: Duration,
) -> AzureJobs {
    let auth = || StorageAuth::SharedKey {
        account: azurite::ACCOUNT.into(),
        key: Secret::new(azurite::ACCOUNT_KEY),
    };
    let http = accessgate::app::http_client().unwrap();
    AzureJobs::from_parts(
        AzureQueue::new(
            http.clone(),
            AzureQueueSettings {
                queue_url_base: EndpointUrl::parse(endpoint).unwrap(),
                queue: queue.into(),
                poison_queue: format!("{queue}-p"),
            },
            auth(),
        ),
        Table::new(
            http,
            EndpointUrl::parse(table_endpoint).unwrap(),
            table.into(),
            auth(),
        ),
        5,
        recheck,
    )
}

fn table_name(queue: &str) -> String {
    format!("w{}", queue.replace('-', ""))
        .chars()
        .take(63)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_storage_keeps_the_job_store_contract() {
    bounded(async {
        let az = tokio::task::spawn_blocking(azurite::Azurite::start)
            .await
            .unwrap();
        let queue = azurite::unique_queue_name("ag-store");
        let table = table_name(&queue);
        let ends = (az.endpoint.clone(), az.table_endpoint.clone());
        let hour = Duration::from_secs(3600);
        let jobs = azure_store((&ends.0, &ends.1), &queue, &table, hour);
        jobs.ensure().await.unwrap();
        let store: Arc<dyn JobStore> = Arc::new(jobs);
        let reopen = move || -> Arc<dyn JobStore> {
            Arc::new(azure_store((&ends.0, &ends.1), &queue, &table, hour))
        };
        contract(store, reopen, "az").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_azure_message_rechecks_and_hides_again_until_it_is_due() {
    bounded(async {
        let az = tokio::task::spawn_blocking(azurite::Azurite::start)
            .await
            .unwrap();
        let queue = azurite::unique_queue_name("ag-recheck");
        // Recheck every 1 s: the message becomes visible, finds it is not due, hides again.
        let ends = (az.endpoint.as_str(), az.table_endpoint.as_str());
        let jobs = azure_store(ends, &queue, &table_name(&queue), Duration::from_secs(1));
        jobs.ensure().await.unwrap();
        let j = job("recheck");
        jobs.enqueue(&j).await.unwrap();
        let l = jobs.claim(LEASE).await.unwrap().unwrap();
        jobs.wait(&l, &wait(4, Some("sn:RE1"), &j)).await.unwrap();
        // Several rechecks come and go without handing the job out.
        assert!(
            claim_within(&jobs, Duration::from_millis(2500))
                .await
                .is_none()
        );
        let l = claim_within(&jobs, Duration::from_secs(6))
            .await
            .expect("due after 4 s");
        assert_eq!(l.woken_by, Some(WokenBy::Timer));
        // Rechecks are not mistaken for deliveries whose workers died (no poisoning).
        assert_eq!(jobs.queue.approximate_count(true).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_lists_and_wakes_parked_jobs_of_the_sqlite_queue() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let q = SqliteQueue::open(&data).unwrap();
        let j = job("cli-1");
        q.enqueue(&j).await.unwrap();
        let l = q.claim(LEASE).await.unwrap().unwrap();
        q.wait(&l, &wait(3600, Some("sn:CLI1"), &j)).await.unwrap();
    }
    let cfg = dir.path().join("accessgate.toml");
    std::fs::write(
        &cfg,
        format!("[server]\ndata_dir = {:?}\n", data.to_str().unwrap()),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_accessgate"))
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = run(&["jobs", "list", "--status", "waiting"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("cli-1") && text.contains("waiting"), "{text}");
    assert!(text.contains("the ticket to close (key sn:CLI1)"), "{text}");
    let (code, text) = run(&["jobs", "waiting"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("cli-1") && text.contains("sn:CLI1"), "{text}");
    let (code, text) = run(&["jobs", "wake", "sn:CLI1"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("woke 1 job(s) waiting for sn:CLI1"), "{text}");
    let (_, text) = run(&["jobs", "list", "--status", "queued"]);
    assert!(text.contains("cli-1"), "woken jobs are queued: {text}");
}
