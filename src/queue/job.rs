//! The job model every host shares: when a job must be done by ([`Deadline`]), what an attempt
//! came to ([`Step`]), how a finished job ended ([`Outcome`]) and what a parked job waits for
//! ([`Wait`], [`WaitKey`]).

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The longest a job may stay parked: entitlement management waits at most 14 days for a resume.
pub const MAX_WAIT: Duration = Duration::from_secs(14 * 24 * 3600);

/// Unix milliseconds now (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A wall-clock instant (Unix milliseconds): stored in messages and rows as a plain integer, so
/// it means the same on every instance and after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Deadline(i64);

impl Deadline {
    pub fn from_unix_ms(ms: i64) -> Deadline {
        Deadline(ms)
    }

    /// `d` from now.
    pub fn in_(d: Duration) -> Deadline {
        Deadline(now_ms().saturating_add(ms(d)))
    }

    pub fn unix_ms(self) -> i64 {
        self.0
    }

    /// Time left (zero once passed).
    pub fn remaining(self) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(now_ms())).unwrap_or(0))
    }

    pub fn has_passed(self) -> bool {
        now_ms() >= self.0
    }

    /// This deadline as a monotonic instant, for timeouts.
    pub fn instant(self) -> Instant {
        Instant::now() + self.remaining()
    }

    /// `d` earlier (saturating).
    pub fn earlier_by(self, d: Duration) -> Deadline {
        Deadline(self.0.saturating_sub(ms(d)))
    }

    /// `d` later (saturating).
    pub fn later_by(self, d: Duration) -> Deadline {
        Deadline(self.0.saturating_add(ms(d)))
    }

    /// Milliseconds from `earlier` to this instant (negative if it is before).
    pub fn millis_since(self, earlier: Deadline) -> i64 {
        self.0.saturating_sub(earlier.0)
    }

    pub fn to_timestamp_string(self) -> String {
        jiff::Timestamp::from_millisecond(self.0)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| self.0.to_string())
    }
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_timestamp_string())
    }
}

/// How a finished job ended (stored with it; `jobs show` prints it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Outcome {
    /// Graph accepted the resume with this action (`continue`, `deny`, …).
    Resumed { action: String },
    /// The request no longer waited for us (Entra timed it out, or a duplicate resumed it).
    NotWaiting { why: String },
    /// A stage that takes no resume: decided and logged only.
    Notified { action: String, stage: String },
    /// The callout's deadline passed while the job waited for something outside (a ticket to
    /// close): nothing was resumed, by design (Entra has stopped waiting).
    Expired { why: String },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Resumed { action } => write!(f, "resumed: {action}"),
            Outcome::NotWaiting { why } => write!(f, "not waiting: {why}"),
            Outcome::Notified { action, stage } => {
                write!(f, "notified ({action}); stage {stage} gets no resume")
            }
            Outcome::Expired { why } => write!(f, "expired: {why}"),
        }
    }
}

/// What a parked job waits for: an external event named by a key (for example a ServiceNow
/// ticket closing), woken through [`crate::queue::store::JobStore::wake`]. Keys are short
/// printable ASCII so they can be logged, stored and used as Azure Table row keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WaitKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitKeyError {
    #[error("a wait key is 1 to 200 characters")]
    Length,
    #[error("a wait key holds letters, digits and . _ - : @ only")]
    Character,
}

impl WaitKey {
    pub fn parse(s: &str) -> Result<WaitKey, WaitKeyError> {
        if s.is_empty() || s.len() > 200 {
            return Err(WaitKeyError::Length);
        }
        // Azure Table row keys refuse / \ # ? and control characters; keep to a safe set.
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@'))
        {
            return Err(WaitKeyError::Character);
        }
        Ok(WaitKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for WaitKey {
    type Error = WaitKeyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        WaitKey::parse(&s)
    }
}

impl From<WaitKey> for String {
    fn from(k: WaitKey) -> String {
        k.0
    }
}

impl fmt::Display for WaitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A job parked until `until`, or earlier when its key (if any) is woken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wait {
    pub until: Deadline,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<WaitKey>,
    /// What the job waits for, in words (shown by `accessgate jobs`).
    pub reason: String,
}

impl Wait {
    /// A wait of at most [`MAX_WAIT`] and never past the job's deadline.
    pub fn new(until: Deadline, key: Option<WaitKey>, reason: String, deadline: Deadline) -> Wait {
        let cap = Deadline::in_(MAX_WAIT).min(deadline);
        Wait {
            until: until.min(cap),
            key,
            reason,
        }
    }
}

/// Why a parked job runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WokenBy {
    /// Its key was woken.
    Event,
    /// Its wake-up time came.
    Timer,
}

/// What one attempt at a job came to; the runner stores it through the job store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(Outcome),
    RetryAt { at: Deadline, reason: String },
    Dead(String),
    Wait(Wait),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_capped_at_fourteen_days_and_at_the_deadline() {
        let far = Deadline::in_(Duration::from_secs(30 * 24 * 3600));
        let w = Wait::new(far, None, "x".into(), far);
        assert!(w.until <= Deadline::in_(MAX_WAIT));
        assert!(w.until >= Deadline::in_(MAX_WAIT).earlier_by(Duration::from_secs(5)));
        let soon = Deadline::in_(Duration::from_secs(60));
        let w = Wait::new(far, None, "x".into(), soon);
        assert_eq!(w.until, soon);
    }

    #[test]
    fn wait_keys_are_a_safe_charset() {
        assert!(WaitKey::parse("servicenow:INC0010001").is_ok());
        assert_eq!(WaitKey::parse(""), Err(WaitKeyError::Length));
        assert_eq!(WaitKey::parse("a/b"), Err(WaitKeyError::Character));
        assert_eq!(WaitKey::parse("a\nb"), Err(WaitKeyError::Character));
        assert_eq!(WaitKey::parse(&"k".repeat(201)), Err(WaitKeyError::Length));
        let k: Result<WaitKey, _> = serde_json::from_str("\"a#b\"");
        assert!(k.is_err());
    }

    #[test]
    fn outcomes_read_as_before() {
        assert_eq!(
            Outcome::Resumed {
                action: "continue".into()
            }
            .to_string(),
            "resumed: continue"
        );
        assert_eq!(
            Outcome::Notified {
                action: "deny".into(),
                stage: "assignmentRequestGranted".into()
            }
            .to_string(),
            "notified (deny); stage assignmentRequestGranted gets no resume"
        );
    }

    #[test]
    fn a_deadline_serializes_as_unix_ms() {
        let d = Deadline::from_unix_ms(1_700_000_000_123);
        assert_eq!(serde_json::to_string(&d).unwrap(), "1700000000123");
        assert!(Deadline::from_unix_ms(0).has_passed());
        assert_eq!(Deadline::from_unix_ms(0).remaining(), Duration::ZERO);
    }
}
