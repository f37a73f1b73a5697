//! Logging: `tracing` to stdout, text or JSON lines. Spans carry the correlation id, request id,
//! stage and stage instance id; tokens and secrets are never recorded (see `secret::Secret`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt as _;

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
        LogFormat::Text => builder
            .with_ansi(false)
            .fmt_fields(escaped_fields())
            .try_init(),
    };
}

/// Text-format fields with control characters escaped (`\n`, `\u{1b}`, ...), in the message as in
/// every field value, so untrusted input (a callout's stage, an id) cannot forge a log line or
/// send terminal escapes. The JSON format escapes by construction.
pub fn escaped_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        let text = escape_controls(&format!("{value:?}"));
        if field.name() == "message" {
            write!(w, "{text}")
        } else {
            write!(w, "{}={text}", field.name())
        }
    })
    .delimited(" ")
}

/// `s` with every control character written as its escape.
pub fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_controls("a\n2026-01-01 INFO forged\u{1b}[31m"),
            "a\\n2026-01-01 INFO forged\\u{1b}[31m"
        );
        assert_eq!(escape_controls("plain é"), "plain é");
    }
}
