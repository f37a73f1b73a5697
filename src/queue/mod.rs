//! Durable work: the [`JobMessage`] that carries one acknowledged callout from intake to worker.
//!
//! Standalone, jobs live in SQLite ([`sqlite`]); under Azure Functions the same message is a
//! Storage Queue message written by the host's output binding. Either way the message carries its
//! own correlation (request id, stage, stage instance id), so any instance can run it.

pub mod azure;
pub mod azure_backend;
pub mod job;
pub mod settings;
pub mod shared_key;
pub mod sqlite;
pub mod store;
pub mod table;
pub mod tickets;
pub mod verdicts;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::callout::Callout;
pub use job::{Deadline, Outcome, Step, Wait, WaitKey, WokenBy, now_ms};
pub use store::{JobStore, Lease, Settle, Stored, WaitingJob};

pub use settings::Settings;

/// Version of the message format, so an old message in a queue is recognised after an upgrade.
/// v2 carries the callout body verbatim (`body`), parsed again when the job is claimed; v1
/// carried the parsed fields (`callout`) and is still read, and still written for a callout
/// that has no verbatim copy (one too large for a Storage queue message).
pub const MESSAGE_VERSION: u32 = 2;
const PARSED_FIELDS_VERSION: u32 = 1;

/// The longest callback timeout entitlement management allows.
pub const MAX_CALLBACK_TIMEOUT: Duration = job::MAX_WAIT;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "WireJob")]
pub struct JobMessage {
    pub correlation_id: String,
    pub received_at_ms: i64,
    /// Past this instant a resume is pointless (Entra has timed the callout out).
    pub deadline: Deadline,
    /// The extension (`[extensions.NAME]`) a PoP callout came through; selects its policy.
    pub extension: Option<String>,
    pub callout: Callout,
}

/// The message as it is read: either version.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireJob {
    v: u32,
    correlation_id: String,
    received_at_ms: i64,
    #[serde(rename = "deadlineAtMs")]
    deadline: Deadline,
    #[serde(default)]
    extension: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    callout: Option<Callout>,
}

impl TryFrom<WireJob> for JobMessage {
    type Error = String;
    fn try_from(w: WireJob) -> Result<JobMessage, String> {
        if w.v > MESSAGE_VERSION {
            return Err(format!(
                "message version {} is newer than this build reads ({MESSAGE_VERSION})",
                w.v
            ));
        }
        let callout = match (w.body, w.callout) {
            // The body was admitted by the same parser, so it parses again to the same callout.
            (Some(body), _) => match crate::callout::parse(body.as_bytes()) {
                Ok(crate::callout::Parsed::Callout(c)) => *c,
                Ok(_) => return Err("the stored body is no longer a callout".into()),
                Err(e) => return Err(format!("the stored body does not parse: {}", e.code())),
            },
            (None, Some(c)) => c,
            (None, None) => return Err("the message has neither body nor callout".into()),
        };
        Ok(JobMessage {
            correlation_id: w.correlation_id,
            received_at_ms: w.received_at_ms,
            deadline: w.deadline,
            extension: w.extension,
            callout,
        })
    }
}

/// Written by hand so the 202 path copies the verbatim body once (escaped into a JSON string)
/// instead of walking and re-serialising the parsed fields and the whole object tree.
impl Serialize for JobMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("JobMessage", 6)?;
        let body = self.callout.verbatim.as_deref();
        let v = if body.is_some() {
            MESSAGE_VERSION
        } else {
            PARSED_FIELDS_VERSION
        };
        st.serialize_field("v", &v)?;
        st.serialize_field("correlationId", &self.correlation_id)?;
        st.serialize_field("receivedAtMs", &self.received_at_ms)?;
        st.serialize_field("deadlineAtMs", &self.deadline)?;
        match &self.extension {
            Some(e) => st.serialize_field("extension", e)?,
            None => st.skip_field("extension")?,
        }
        match body {
            Some(b) => st.serialize_field("body", b)?,
            None => st.serialize_field("callout", &self.callout)?,
        }
        st.end()
    }
}

impl JobMessage {
    /// Builds the job for a freshly accepted callout. The deadline is the callout's callback
    /// timeout (or the configured default) minus a safety margin.
    pub fn new(
        callout: Callout,
        correlation_id: String,
        extension: Option<String>,
        default_timeout: Duration,
        margin: Duration,
    ) -> Self {
        let now = now_ms();
        // ELM waits at most 14 days (protocol.md §2); a larger value is not Entra's.
        let timeout = callout
            .callback_timeout()
            .unwrap_or(default_timeout)
            .min(MAX_CALLBACK_TIMEOUT);
        // A margin larger than half the timeout would leave too little time to work; cap it there.
        let usable = timeout.saturating_sub(margin).max(timeout / 2);
        JobMessage {
            correlation_id,
            received_at_ms: now,
            deadline: Deadline::from_unix_ms(now).later_by(usable),
            extension,
            callout,
        }
    }

    /// Parses a queue message leniently: the Functions host may hand it over JSON-quoted once more.
    pub fn from_queue_text(text: &str) -> Result<JobMessage, serde_json::Error> {
        let mut s = text.trim().to_owned();
        // Unwrap up to two layers of JSON string quoting (functions.md §2).
        for _ in 0..2 {
            if s.starts_with('"') {
                s = serde_json::from_str::<String>(&s)?;
            }
        }
        serde_json::from_str(&s)
    }
}

/// Result of putting a callout on the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Enqueued,
    /// The same `customExtensionStageInstanceId` is already queued or done.
    Duplicate,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored job is unreadable: {0}")]
    Corrupt(String),
    #[error("the data directory {0} is used by another accessgate process")]
    Locked(String),
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("store task failed")]
    Join,
    /// One failed group commit fails every enqueue in it, so the cause is shared.
    #[error("committing a batch of enqueues failed: {0}")]
    Commit(Arc<rusqlite::Error>),
    #[error("this host has no local queue")]
    NoLocalQueue,
    #[error(transparent)]
    Azure(#[from] azure::QueueError),
    #[error("Azure Table (wait index): {0}")]
    Table(#[from] table::TableError),
    /// A lease handed to a backend that did not issue it (a bug, never a user error).
    #[error("this lease belongs to another job backend")]
    ForeignLease,
    #[error(
        "parking a job needs the Azure Storage queue settings (queue.backend = \"azure_storage\") on this host"
    )]
    WaitNeedsStorage,
    #[error("job message cannot be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl StoreError {
    /// How long the backend asked us to back off, if it throttled.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StoreError::Azure(azure::QueueError::Throttled { retry_after }) => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callout::{Parsed, parse};

    /// An envelope-shaped callout with answers, as Graph documents it.
    const BODY: &str = r#"{"source":"ServiceNow","type":"microsoft.graph.accessPackageCustomExtensionStage.assignmentRequestCreated",
        "data":{"@odata.type":"microsoft.graph.accessPackageAssignmentRequestCallbackData","stage":"assignmentRequestCreated",
        "customExtensionStageInstanceId":"s-1","accessPackageAssignmentRequestId":"r-1",
        "callbackConfiguration":{"durationBeforeTimeout":"PT2H"},"accessPackage":{"id":"ap","displayName":"Sales \"EU\""},
        "answers":[{"value":"RITM1","answeredQuestion":{"id":"q1","text":"Ticket"}}],"somethingNew":[1,2,{"x":null}]}}"#;

    fn job() -> JobMessage {
        let Ok(Parsed::Callout(c)) = parse(BODY.as_bytes()) else {
            panic!("the fixture is a callout")
        };
        JobMessage::new(
            *c,
            "corr".into(),
            Some("prod".into()),
            Duration::from_secs(3600),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn a_job_stores_the_body_verbatim_and_reads_back_equal() {
        let m = job();
        let text = serde_json::to_string(&m).unwrap();
        let wire: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(wire["v"], 2);
        assert_eq!(wire["body"], BODY, "the body is kept byte for byte");
        assert!(wire.get("callout").is_none(), "no parsed copy beside it");
        let back: JobMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        assert_eq!(
            back.callout.raw["somethingNew"][2]["x"],
            serde_json::Value::Null
        );
        assert_eq!(back.callout.answers.parsed()[0].value, "RITM1");
        // The Storage backend flattens the job into its envelope: the same round trip holds.
        let env = azure_backend::Envelope::fresh(m.clone());
        let env_text = serde_json::to_string(&env).unwrap();
        assert_eq!(
            azure_backend::Envelope::from_queue_text(&env_text)
                .unwrap()
                .job,
            m
        );
    }

    #[test]
    fn the_verbatim_form_is_smaller_than_the_parsed_fields() {
        let m = job();
        let compact = serde_json::to_string(&m).unwrap().len();
        let mut legacy = m.clone();
        legacy.callout.verbatim = None;
        let parsed_fields = serde_json::to_string(&legacy).unwrap().len();
        assert!(
            compact * 10 < parsed_fields * 8,
            "v2 {compact} bytes vs v1 {parsed_fields} bytes"
        );
    }

    #[test]
    fn a_version_1_message_is_still_read_and_written_as_version_1() {
        let mut m = job();
        m.callout.verbatim = None;
        let v1 = serde_json::to_string(&m).unwrap();
        let wire: serde_json::Value = serde_json::from_str(&v1).unwrap();
        assert_eq!(wire["v"], 1);
        assert_eq!(wire["callout"]["stageInstanceId"], "s-1");
        assert!(wire.get("body").is_none());
        let back: JobMessage = serde_json::from_str(&v1).unwrap();
        assert_eq!(back, m);
        assert_eq!(serde_json::to_string(&back).unwrap(), v1);
    }

    #[test]
    fn unreadable_messages_say_why() {
        let text = serde_json::to_string(&job()).unwrap();
        let newer = text.replacen(r#""v":2"#, r#""v":3"#, 1);
        let e = serde_json::from_str::<JobMessage>(&newer).unwrap_err();
        assert!(e.to_string().contains("version 3 is newer"), "{e}");

        let mut w: serde_json::Value = serde_json::from_str(&text).unwrap();
        w["body"] = serde_json::Value::String(r#"{"Stage":"assignmentRequestCreated"}"#.into());
        let e = serde_json::from_value::<JobMessage>(w.clone()).unwrap_err();
        assert!(e.to_string().contains("missing_field"), "{e}");

        w["body"] =
            serde_json::Value::String(r#"{"Stage":"CustomExtensionConnectionTest"}"#.into());
        let e = serde_json::from_value::<JobMessage>(w.clone()).unwrap_err();
        assert!(e.to_string().contains("no longer a callout"), "{e}");

        w.as_object_mut().unwrap().remove("body");
        let e = serde_json::from_value::<JobMessage>(w).unwrap_err();
        assert!(e.to_string().contains("neither body nor callout"), "{e}");
    }
}
