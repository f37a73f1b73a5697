//! Logging: `tracing` to stdout, text or JSON lines. Spans carry the correlation id, request id,
//! stage and stage instance id; tokens and secrets are never recorded (see `secret::Secret`).

use tracing_subscriber::EnvFilter;

pub mod settings;
pub use settings::{LogFormat, Settings};

pub fn init(cfg: &Settings) {
    let filter =
        EnvFilter::try_from_env("ACCESSGATE_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    // `try_init`: a second call (tests, CLI helpers) keeps the first subscriber.
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
}
