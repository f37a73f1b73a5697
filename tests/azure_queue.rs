//! The Azure Storage queue client against a real Azurite (tools/azurite), through its public API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/azurite.rs"]
mod azurite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use accessgate::credentials::CredentialError;
use accessgate::endpoint::EndpointUrl;
use accessgate::queue::azure::{
    AzureQueue, AzureQueueSettings, QueueError, StorageAuth, TokenSource, parse_connection_string,
};
use accessgate::secret::Secret;
use azurite::{ACCOUNT, ACCOUNT_KEY, Azurite, unique_queue_name};

/// Every test finishes within this, Azurite start included.
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn http() -> reqwest::Client {
    accessgate::app::http_client().unwrap()
}

fn settings(endpoint: &str, prefix: &str) -> AzureQueueSettings {
    let queue = unique_queue_name(prefix);
    AzureQueueSettings {
        queue_url_base: EndpointUrl::parse(endpoint).unwrap(),
        poison_queue: format!("{queue}-p"),
        queue,
    }
}

fn shared_key(key: &str) -> StorageAuth {
    StorageAuth::SharedKey {
        account: ACCOUNT.into(),
        key: Secret::new(key),
    }
}

/// Azurite plus a client with its own two queues, already created.
async fn setup(prefix: &str) -> (Azurite, AzureQueue) {
    let az = tokio::task::spawn_blocking(Azurite::start).await.unwrap();
    let q = AzureQueue::new(
        http(),
        settings(&az.endpoint, prefix),
        shared_key(ACCOUNT_KEY),
    );
    q.ensure_queues().await.unwrap();
    (az, q)
}

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_LIMIT, f)
        .await
        .expect("test took longer than its time limit");
}

#[tokio::test]
async fn ensure_queues_is_idempotent_and_counts_start_at_zero() {
    bounded(async {
        let (_az, q) = setup("ensure").await;
        q.ensure_queues().await.unwrap();
        assert_eq!(q.approximate_count(false).await.unwrap(), 0);
        assert_eq!(q.approximate_count(true).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn send_receive_round_trip_is_base64_and_delete_removes() {
    bounded(async {
        let (_az, q) = setup("roundtrip").await;
        let text = r#"{"v":1,"note":"ü € <&> \"quoted\""}"#;
        q.send(text, None).await.unwrap();
        assert_eq!(q.approximate_count(false).await.unwrap(), 1);

        // Peek sees it without taking it, and shows the base64-decoded text.
        let peeked = q.peek(false, 32).await.unwrap();
        assert_eq!(peeked.len(), 1);
        assert_eq!(peeked[0].text, text);

        let got = q.receive(32, Duration::from_secs(30)).await.unwrap();
        assert_eq!(got.len(), 1);
        let m = &got[0];
        assert_eq!(m.text, text);
        assert_eq!(m.dequeue_count, 1);
        assert!(!m.pop_receipt.is_empty());
        let inserted = m.inserted_ms.expect("insertion time");
        assert!((accessgate::queue::now_ms() - inserted).abs() < 120_000);

        q.delete(m).await.unwrap();
        assert_eq!(q.approximate_count(false).await.unwrap(), 0);
        assert!(
            q.receive(1, Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
        // Deleting again: the message is gone.
        assert!(matches!(q.delete(m).await, Err(QueueError::NotFound(_))));
    })
    .await;
}

#[tokio::test]
async fn visibility_timeout_hides_then_returns_the_message() {
    bounded(async {
        let (_az, q) = setup("visibility").await;
        q.send("lease me", None).await.unwrap();
        let first = q.receive(1, Duration::from_secs(1)).await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].dequeue_count, 1);
        assert!(
            q.receive(1, Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );

        let again = eventually(&q, Duration::from_secs(10)).await;
        assert_eq!(again.message_id, first[0].message_id);
        assert_eq!(again.text, "lease me");
        assert_eq!(again.dequeue_count, 2);
        assert_ne!(again.pop_receipt, first[0].pop_receipt);
        // The first lease is over: its receipt no longer deletes.
        assert!(matches!(
            q.delete(&first[0]).await,
            Err(QueueError::NotFound(_))
        ));
        q.delete(&again).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn initial_visibility_delays_a_message() {
    bounded(async {
        let (_az, q) = setup("delayed").await;
        q.send("later", Some(Duration::from_secs(2))).await.unwrap();
        assert!(
            q.receive(1, Duration::from_secs(5))
                .await
                .unwrap()
                .is_empty()
        );
        let m = eventually(&q, Duration::from_secs(10)).await;
        assert_eq!(m.text, "later");
        assert_eq!(m.dequeue_count, 1);
    })
    .await;
}

#[tokio::test]
async fn update_changes_visibility_and_text_and_retires_the_old_receipt() {
    bounded(async {
        let (_az, q) = setup("update").await;
        q.send("attempt 0", None).await.unwrap();
        let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
        let old = got[0].clone();

        let new = q
            .update(&old, Duration::from_secs(1), Some("attempt 1"))
            .await
            .unwrap();
        assert_eq!(new.message_id, old.message_id);
        assert_eq!(new.text, "attempt 1");
        assert_ne!(new.pop_receipt, old.pop_receipt);
        assert!(matches!(q.delete(&old).await, Err(QueueError::NotFound(_))));
        assert!(matches!(
            q.update(&old, Duration::from_secs(1), None).await,
            Err(QueueError::NotFound(_))
        ));

        // Visible again after the new (1 s) timeout instead of the original 30 s, with the new
        // text.
        let back = eventually(&q, Duration::from_secs(10)).await;
        assert_eq!(back.message_id, old.message_id);
        assert_eq!(back.text, "attempt 1");
        assert_eq!(back.dequeue_count, 2);

        // An update without text keeps it; a visibility beyond 7 days is clamped, not refused.
        let kept = q
            .update(&back, Duration::from_secs(30 * 24 * 3600), None)
            .await
            .unwrap();
        assert_eq!(kept.text, "attempt 1");
        assert!(
            q.receive(1, Duration::from_secs(1))
                .await
                .unwrap()
                .is_empty()
        );
        q.delete(&kept).await.unwrap();
        assert_eq!(q.approximate_count(false).await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn poison_queue_send_count_and_peek() {
    bounded(async {
        let (_az, q) = setup("poison").await;
        q.send_poison("dead one").await.unwrap();
        q.send_poison("dead two").await.unwrap();
        assert_eq!(q.approximate_count(true).await.unwrap(), 2);
        assert_eq!(q.approximate_count(false).await.unwrap(), 0);
        let peeked = q.peek(true, 32).await.unwrap();
        let texts: Vec<_> = peeked.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["dead one", "dead two"]);
        // Peeking does not take them.
        assert_eq!(q.approximate_count(true).await.unwrap(), 2);
        assert!(q.peek(false, 32).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn batches_of_32() {
    bounded(async {
        let (_az, q) = setup("batch").await;
        for i in 0..40 {
            q.send(&format!("m{i}"), None).await.unwrap();
        }
        assert_eq!(q.approximate_count(false).await.unwrap(), 40);
        // More than 32 asked: 32 given (the service maximum).
        let first = q.receive(200, Duration::from_secs(60)).await.unwrap();
        assert_eq!(first.len(), 32);
        let second = q.receive(32, Duration::from_secs(60)).await.unwrap();
        assert_eq!(second.len(), 8);
        let mut texts: Vec<String> = first
            .iter()
            .chain(&second)
            .map(|m| m.text.clone())
            .collect();
        texts.sort();
        let mut want: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        want.sort();
        assert_eq!(texts, want);
        for m in first.iter().chain(&second) {
            q.delete(m).await.unwrap();
        }
        assert_eq!(q.approximate_count(false).await.unwrap(), 0);
        assert_eq!(q.peek(false, 32).await.unwrap().len(), 0);
    })
    .await;
}

#[tokio::test]
async fn missing_queue_is_not_found() {
    bounded(async {
        let az = tokio::task::spawn_blocking(Azurite::start).await.unwrap();
        let q = AzureQueue::new(
            http(),
            settings(&az.endpoint, "absent"),
            shared_key(ACCOUNT_KEY),
        );
        match q.send("x", None).await {
            Err(QueueError::NotFound(m)) => assert!(m.contains("QueueNotFound"), "{m}"),
            other => panic!("expected NotFound, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn wrong_shared_key_is_an_auth_error_without_the_key() {
    bounded(async {
        let az = tokio::task::spawn_blocking(Azurite::start).await.unwrap();
        // Valid base64, wrong key.
        let wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ==";
        let q = AzureQueue::new(
            http(),
            settings(&az.endpoint, "wrongkey"),
            shared_key(wrong),
        );
        let e = q.ensure_queues().await.unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(matches!(e, QueueError::Auth(_)), "{shown}");
        assert!(!shown.contains(wrong), "{shown}");
        assert!(!shown.contains(ACCOUNT_KEY), "{shown}");
        assert!(shown.contains("key"), "the hint names the key: {shown}");

        // A key that is not base64 at all fails before anything is sent, without echoing it.
        let junk = "not*base64*hunter2";
        let q = AzureQueue::new(http(), settings(&az.endpoint, "junkkey"), shared_key(junk));
        let e = q.send("x", None).await.unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(matches!(e, QueueError::Auth(_)), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    })
    .await;
}

struct FailingToken;

impl TokenSource for FailingToken {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<Secret, CredentialError>> + Send + '_>> {
        Box::pin(async {
            Err(CredentialError::Unavailable {
                what: "managed identity",
                detail: "no managed identity endpoint".to_owned(),
                retry_after: None,
            })
        })
    }
}

struct FixedToken;

impl TokenSource for FixedToken {
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<Secret, CredentialError>> + Send + '_>> {
        Box::pin(async { Ok(Secret::new("eyJ0eXAiOiJKV1QifQ.not-a-real-token.sig")) })
    }
}

#[tokio::test]
async fn bearer_token_failures_are_auth_errors() {
    bounded(async {
        let az = tokio::task::spawn_blocking(Azurite::start).await.unwrap();
        let q = AzureQueue::new(
            http(),
            settings(&az.endpoint, "bearer"),
            StorageAuth::Bearer(Arc::new(FailingToken)),
        );
        match q.receive(1, Duration::from_secs(1)).await {
            Err(QueueError::Auth(m)) => assert!(m.contains("no managed identity endpoint"), "{m}"),
            other => panic!("expected Auth, got {other:?}"),
        }
        // Azurite without --oauth does not accept bearer tokens: refused, with the role hint,
        // and the token is not repeated.
        let q = AzureQueue::new(
            http(),
            settings(&az.endpoint, "bearer"),
            StorageAuth::Bearer(Arc::new(FixedToken)),
        );
        match q.ensure_queues().await {
            Err(e @ QueueError::Auth(_)) => {
                let shown = e.to_string();
                assert!(
                    shown.contains("Storage Queue Data Message Processor"),
                    "{shown}"
                );
                assert!(!shown.contains("not-a-real-token"), "{shown}");
            }
            other => panic!("expected Auth, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn refused_connection_is_unreachable() {
    bounded(async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // The listener is dropped: nothing accepts on that port.
        let q = AzureQueue::new(
            http(),
            settings(&format!("http://127.0.0.1:{port}/{ACCOUNT}"), "refused"),
            shared_key(ACCOUNT_KEY),
        );
        match q.send("x", None).await {
            Err(QueueError::Unreachable(m)) => {
                assert!(m.contains("connection failed"), "{m}");
                assert!(!m.contains(ACCOUNT_KEY), "{m}");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn development_storage_connection_string_drives_the_client() {
    bounded(async {
        let az = tokio::task::spawn_blocking(Azurite::start).await.unwrap();
        let (_, account, key) = parse_connection_string("UseDevelopmentStorage=true").unwrap();
        // Same account and key as the dev connection string, at this Azurite's port.
        let q = AzureQueue::new(
            http(),
            settings(&az.endpoint, "connstr"),
            StorageAuth::SharedKey { account, key },
        );
        q.ensure_queues().await.unwrap();
        q.send("via connection string", None).await.unwrap();
        let got = q.receive(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got[0].text, "via connection string");
    })
    .await;
}

/// Receives one message, polling until it is visible (at most `limit`).
async fn eventually(q: &AzureQueue, limit: Duration) -> accessgate::queue::azure::Received {
    let start = tokio::time::Instant::now();
    loop {
        let got = q.receive(1, Duration::from_secs(30)).await.unwrap();
        if let Some(m) = got.into_iter().next() {
            return m;
        }
        assert!(
            start.elapsed() < limit,
            "no message became visible within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
