//! PIM custom extensions: a **synchronous** verdict on a role or group activation in the
//! response body (`{evaluationId, evaluationOutcome, reason}`); there is no resume and no
//! queue. `service` is the one answer both hosts give; `settings` is `[pim]`.

pub mod service;
pub mod settings;

pub use settings::Settings;
