//! Outbound endpoint URLs (identity host, Graph, Key Vault).
//!
//! Invariant: an `EndpointUrl` is `https://`, or `http://` only when the host is a loopback
//! address, so a token or secret can never be sent in clear text off this machine.

use std::fmt;
use std::net::IpAddr;

/// A base URL that may carry credentials: https, or http to loopback only.
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointUrl(url::Url);

/// Why a string is not an acceptable endpoint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EndpointError {
    #[error("not a valid absolute URL: {0}")]
    Invalid(String),
    #[error(
        "plain http:// is only allowed to a loopback host (127.0.0.1, ::1, localhost); use https://"
    )]
    InsecureScheme,
    #[error("unsupported scheme{}; use https://", known_scheme(.0))]
    Scheme(String),
    #[error("URL must not carry user info, a query or a fragment")]
    Extra,
}

/// ` "ftp"` for a well-known scheme. Anything else is not repeated: `abc:def` parses as a URL
/// of scheme `abc`, and a secret pasted into a URL setting must not be echoed, even in part.
fn known_scheme(s: &str) -> String {
    const KNOWN: [&str; 8] = ["ftp", "ftps", "ws", "wss", "file", "data", "mailto", "sftp"];
    if KNOWN.contains(&s) {
        format!(" {s:?}")
    } else {
        String::new()
    }
}

impl EndpointUrl {
    pub fn parse(raw: &str) -> Result<Self, EndpointError> {
        let url = url::Url::parse(raw.trim()).map_err(|e| EndpointError::Invalid(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" => {
                if !is_loopback(&url) {
                    return Err(EndpointError::InsecureScheme);
                }
            }
            other => return Err(EndpointError::Scheme(other.to_owned())),
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(EndpointError::Extra);
        }
        if url.host().is_none() {
            return Err(EndpointError::Invalid("no host".into()));
        }
        Ok(Self(url))
    }

    /// The URL without a trailing slash, ready for `format!("{base}/path")`.
    pub fn base(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }

    /// Joins a path (which should start with `/`) to the base.
    pub fn join(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{}", self.base(), path)
        } else {
            format!("{}/{}", self.base(), path)
        }
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base())
    }
}

impl fmt::Debug for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointUrl({})", self.base())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_and_http_only_on_loopback() {
        assert!(EndpointUrl::parse("https://graph.microsoft.com").is_ok());
        assert!(EndpointUrl::parse("https://graph.microsoft.us/").is_ok());
        assert!(EndpointUrl::parse("http://127.0.0.1:9999").is_ok());
        assert!(EndpointUrl::parse("http://127.5.0.1:9999").is_ok());
        assert!(EndpointUrl::parse("http://[::1]:9999").is_ok());
        assert!(EndpointUrl::parse("http://localhost:9999").is_ok());
        assert_eq!(
            EndpointUrl::parse("http://graph.microsoft.com"),
            Err(EndpointError::InsecureScheme)
        );
        assert_eq!(
            EndpointUrl::parse("http://10.0.0.1"),
            Err(EndpointError::InsecureScheme)
        );
        assert_eq!(
            EndpointUrl::parse("http://127.0.0.1.evil.example"),
            Err(EndpointError::InsecureScheme)
        );
        assert!(matches!(
            EndpointUrl::parse("ftp://x"),
            Err(EndpointError::Scheme(_))
        ));
        assert_eq!(
            EndpointUrl::parse("ftp://x").unwrap_err().to_string(),
            "unsupported scheme \"ftp\"; use https://"
        );
        // A pasted secret with a colon parses as a scheme: not echoed.
        let e = EndpointUrl::parse("sEcReT7f3a:rest")
            .unwrap_err()
            .to_string();
        assert!(!e.to_lowercase().contains("secret7f3a"), "{e}");
        assert_eq!(
            EndpointUrl::parse("https://u:p@graph.microsoft.com"),
            Err(EndpointError::Extra)
        );
    }

    #[test]
    fn join_handles_slashes() {
        let u = EndpointUrl::parse("https://graph.microsoft.com/").unwrap();
        assert_eq!(u.join("/v1.0/x"), "https://graph.microsoft.com/v1.0/x");
        assert_eq!(u.join("v1.0/x"), "https://graph.microsoft.com/v1.0/x");
    }
}
