//! The tenant's signing keys and issuers, from its OpenID metadata (v1 and v2 documents).
//!
//! Keys are cached; an unknown `kid` triggers a refetch, at most once per
//! `jwks_refresh_min_interval`, so a flood of forged `kid`s cannot turn into a flood of fetches.
//! Concurrent misses share one fetch (the refresh lock).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use crate::endpoint::EndpointUrl;

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("fetching {what} failed: {detail}")]
    Fetch { what: &'static str, detail: String },
    #[error("OpenID metadata names an unacceptable jwks_uri: {0}")]
    BadJwksUri(String),
}

#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// One published key: what verifies, and a fingerprint of its material (SHA-256 of `n.e`) so a
/// cached verdict can tell whether the kid still names the same key.
#[derive(Clone)]
pub struct TenantKey {
    pub key: Arc<DecodingKey>,
    pub fingerprint: [u8; 32],
}

/// One snapshot of what the tenant publishes.
#[derive(Clone, Default)]
pub struct KeySet {
    pub keys: HashMap<String, TenantKey>,
    pub issuers: Vec<String>,
}

struct Cached {
    set: KeySet,
    fetched_at: Option<Instant>,
    /// Last refetch caused by an unknown kid; these are the ones an attacker can trigger.
    miss_refresh_at: Option<Instant>,
}

/// OpenID metadata + JWKS cache for one tenant.
pub struct Jwks {
    http: reqwest::Client,
    metadata_urls: [String; 2],
    min_refresh: Duration,
    max_age: Duration,
    cache: RwLock<Cached>,
    refresh: Mutex<()>,
}

/// While no keys could be fetched (or they are past their age), refetch at most this often.
const NO_KEYS_RETRY: Duration = Duration::from_secs(5);

pub enum Lookup {
    Found(TenantKey, Vec<String>),
    UnknownKid,
}

impl Jwks {
    pub fn new(
        http: reqwest::Client,
        authority: &EndpointUrl,
        tenant: &uuid::Uuid,
        min_refresh: Duration,
        max_age: Duration,
    ) -> Self {
        Jwks {
            http,
            metadata_urls: [
                authority.join(&format!("/{tenant}/.well-known/openid-configuration")),
                authority.join(&format!("/{tenant}/v2.0/.well-known/openid-configuration")),
            ],
            min_refresh,
            max_age,
            cache: RwLock::new(Cached {
                set: KeySet::default(),
                fetched_at: None,
                miss_refresh_at: None,
            }),
            refresh: Mutex::new(()),
        }
    }

    /// Whether the key set as held now (no fetch) is fresh and still publishes `kid` with this
    /// key material: a cached verdict on a token signed by a withdrawn key must not stand.
    pub async fn still_publishes(&self, kid: &str, fingerprint: &[u8; 32]) -> bool {
        let c = self.cache.read().await;
        c.fetched_at.is_some_and(|t| t.elapsed() < self.max_age)
            && c.set
                .keys
                .get(kid)
                .is_some_and(|k| k.fingerprint == *fingerprint)
    }

    /// Finds the key for `kid`, refetching when the cache is empty, stale, or lacks the kid (rate
    /// limited). Errors only when there are no keys at all to check against.
    pub async fn lookup(&self, kid: &str) -> Result<Lookup, JwksError> {
        {
            let c = self.cache.read().await;
            let fresh = c.fetched_at.is_some_and(|t| t.elapsed() < self.max_age);
            if fresh && let Some(k) = c.set.keys.get(kid) {
                return Ok(Lookup::Found(k.clone(), c.set.issuers.clone()));
            }
        }
        let _guard = self.refresh.lock().await;
        // Another task may have refreshed while we waited for the lock.
        let may_fetch = {
            let c = self.cache.read().await;
            if let Some(k) = c.set.keys.get(kid)
                && c.fetched_at.is_some_and(|t| t.elapsed() < self.max_age)
            {
                return Ok(Lookup::Found(k.clone(), c.set.issuers.clone()));
            }
            let since_miss = |min: Duration| c.miss_refresh_at.is_none_or(|t| t.elapsed() >= min);
            match c.fetched_at {
                // Never fetched: the identity host may be down; retry, but not on every request.
                None => since_miss(NO_KEYS_RETRY),
                Some(t) if t.elapsed() >= self.max_age => since_miss(NO_KEYS_RETRY),
                Some(_) => since_miss(self.min_refresh),
            }
        };
        if may_fetch {
            match self.fetch().await {
                Ok(set) => {
                    let mut c = self.cache.write().await;
                    c.set = set;
                    c.fetched_at = Some(Instant::now());
                    c.miss_refresh_at = Some(Instant::now());
                }
                Err(e) => {
                    let mut c = self.cache.write().await;
                    c.miss_refresh_at = Some(Instant::now());
                    if c.set.keys.is_empty() {
                        return Err(e);
                    }
                    // Keep serving the keys we have; log why the refresh failed.
                    tracing::warn!(error = %e, "JWKS refresh failed; using cached keys");
                }
            }
        }
        let c = self.cache.read().await;
        if c.set.keys.is_empty() {
            return Err(JwksError::Fetch {
                what: "signing keys",
                detail: "none could be fetched yet".into(),
            });
        }
        Ok(match c.set.keys.get(kid) {
            Some(k) => Lookup::Found(k.clone(), c.set.issuers.clone()),
            None => Lookup::UnknownKid,
        })
    }

    /// Fetches on start so the first callout does not wait for it.
    pub async fn prefetch(&self) -> Result<usize, JwksError> {
        let _guard = self.refresh.lock().await;
        let set = self.fetch().await?;
        let n = set.keys.len();
        let mut c = self.cache.write().await;
        c.set = set;
        c.fetched_at = Some(Instant::now());
        Ok(n)
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let mut set = KeySet::default();
        let mut jwks_uris = Vec::new();
        for url in &self.metadata_urls {
            let md: Metadata = self.get_json(url, "OpenID metadata").await?;
            if !set.issuers.contains(&md.issuer) {
                set.issuers.push(md.issuer);
            }
            // The JWKS location comes from the metadata; it must meet the same bar as our config.
            let uri = EndpointUrl::parse(&md.jwks_uri)
                .map_err(|e| JwksError::BadJwksUri(format!("{}: {e}", md.jwks_uri)))?;
            let uri = uri.base().to_owned();
            if !jwks_uris.contains(&uri) {
                jwks_uris.push(uri);
            }
        }
        for uri in jwks_uris {
            let ks: JwkSet = self.get_json(&uri, "JWKS").await?;
            for k in ks.keys {
                let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) else {
                    continue;
                };
                if k.kty != "RSA" || k.use_.as_deref().is_some_and(|u| u != "sig") {
                    continue;
                }
                match DecodingKey::from_rsa_components(&n, &e) {
                    Ok(dk) => {
                        use sha2::Digest as _;
                        let fingerprint = sha2::Sha256::digest(format!("{n}.{e}")).into();
                        let key = Arc::new(dk);
                        set.keys.insert(kid, TenantKey { key, fingerprint });
                    }
                    Err(err) => tracing::warn!(%kid, error = %err, "skipping unusable JWKS key"),
                }
            }
        }
        tracing::info!(keys = set.keys.len(), issuers = ?set.issuers, "fetched tenant signing keys");
        Ok(set)
    }

    async fn get_json<T: for<'de> Deserialize<'de>>(
        &self,
        url: &str,
        what: &'static str,
    ) -> Result<T, JwksError> {
        let fail = |detail: String| JwksError::Fetch { what, detail };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(fail(format!("{url}: HTTP {}", resp.status())));
        }
        resp.json::<T>()
            .await
            .map_err(|e| fail(format!("{url}: {e}")))
    }
}
