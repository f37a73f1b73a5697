//! Inner access tokens of PoP callouts that passed full validation, so the next signed request
//! around the same token (Entra reuses its access token for about an hour) skips the RSA verify
//! and the claim checks. Everything per request (the outer signature with the `cnf` key, `ts`,
//! `u`/`m`/`p`, nonce, replay) still runs on every callout.
//!
//! - Keyed by SHA-256 of the token's exact bytes: another encoding is another token.
//! - An entry lives until the token's own `exp`, never longer (no clock-skew leeway, no sliding
//!   renewal on use), and is not used before `nbf` (minus the leeway full validation grants).
//! - Key rollover: an entry remembers the fingerprint of the tenant key that verified it; a hit
//!   counts only while the key set currently holds that kid with that same key and is fresh.
//!   When the key is withdrawn (or the set is stale) the entry is dropped and the token takes
//!   the full path again, which refuses it or refreshes the keys.
//! - Bounded: at most `capacity` entries. When full, dead entries are swept (at most once a
//!   second) and, if it is still full, the new token is simply not cached: it was fully
//!   validated anyway. Entra uses a handful of tokens an hour, so a full cache means a load of
//!   distinct tokens, where scanning the map on every insert (to evict) would cost more than
//!   the verify it saves. `capacity` 0 turns the cache off.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::access_token::Checked;

pub type Digest = [u8; 32];

struct Entry {
    checked: Arc<Checked>,
    /// Usable from this unix second (the token's `nbf` minus the leeway, or 0).
    valid_from: i64,
    /// Dead at this unix second (the token's `exp`).
    expires_at: i64,
}

pub struct TokenCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    map: HashMap<Digest, Entry>,
    /// The second of the last sweep of a full map.
    swept_at: Option<i64>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            capacity,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                swept_at: None,
            }),
        }
    }

    /// The validated token for `digest`, if its entry is alive at `now` (a dead one is removed).
    /// The caller still asks the key set whether the key that verified it is published
    /// ([`Checked::kid`], [`Checked::key_fingerprint`]) and [`TokenCache::remove`]s it if not.
    pub fn get(&self, digest: &Digest, now: i64) -> Option<Arc<Checked>> {
        if self.capacity == 0 {
            return None;
        }
        // A poisoned lock only means another request panicked mid-insert; the map is valid.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = g.map.get(digest)?;
        if now >= e.expires_at {
            g.map.remove(digest);
            return None;
        }
        if now < e.valid_from {
            return None;
        }
        Some(e.checked.clone())
    }

    /// Records a token that just passed full validation. Not recorded without an integer `exp`
    /// still ahead of `now`.
    pub fn insert(&self, digest: Digest, checked: Arc<Checked>, leeway_secs: i64, now: i64) {
        if self.capacity == 0 {
            return;
        }
        let time = |k: &str| checked.claims.get(k).and_then(serde_json::Value::as_i64);
        let Some(expires_at) = time("exp").filter(|exp| *exp > now) else {
            return;
        };
        let valid_from = time("nbf").map_or(0, |nbf| nbf.saturating_sub(leeway_secs));
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.map.len() >= self.capacity && !g.map.contains_key(&digest) {
            if g.swept_at.is_none_or(|at| at < now) {
                g.map.retain(|_, e| e.expires_at > now);
                g.swept_at = Some(now);
            }
            if g.map.len() >= self.capacity {
                return;
            }
        }
        g.map.insert(
            digest,
            Entry {
                checked,
                valid_from,
                expires_at,
            },
        );
    }

    pub fn remove(&self, digest: &Digest) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.map.remove(digest);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.map.len()).unwrap_or(0)
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    fn checked(exp: i64, nbf: Option<i64>) -> Arc<Checked> {
        let mut claims = Map::new();
        claims.insert("exp".into(), json!(exp));
        if let Some(n) = nbf {
            claims.insert("nbf".into(), json!(n));
        }
        Arc::new(Checked {
            claims,
            kid: "k1".into(),
            key_fingerprint: FP,
            typ: None,
            caller: "app".into(),
            tenant_id: "t".into(),
        })
    }

    fn key(i: u32) -> Digest {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_be_bytes());
        k
    }

    const FP: Digest = [7; 32];

    #[test]
    fn an_entry_is_dead_at_exp_however_recently_used() {
        let c = TokenCache::new(10);
        c.insert(key(1), checked(100, Some(0)), 60, 50);
        assert!(c.get(&key(1), 98).is_some());
        assert!(c.get(&key(1), 99).is_some());
        // Used a second ago; dead anyway, and no leeway beyond exp.
        assert!(c.get(&key(1), 100).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn not_before_nbf_minus_leeway() {
        let c = TokenCache::new(10);
        c.insert(key(1), checked(1000, Some(200)), 60, 150);
        assert!(c.get(&key(1), 139).is_none());
        assert!(c.get(&key(1), 140).is_some());
    }

    #[test]
    fn expired_or_exp_less_tokens_are_not_recorded() {
        let c = TokenCache::new(10);
        c.insert(key(1), checked(100, None), 60, 100);
        assert!(c.is_empty());
        let mut no_exp = checked(0, None).claims.clone();
        no_exp.remove("exp");
        let t = Arc::new(Checked {
            claims: no_exp,
            kid: "k1".into(),
            key_fingerprint: FP,
            typ: None,
            caller: "a".into(),
            tenant_id: "t".into(),
        });
        c.insert(key(2), t, 60, 1);
        assert!(c.is_empty());
    }

    #[test]
    fn removed_entries_are_gone() {
        let c = TokenCache::new(10);
        c.insert(key(1), checked(1000, None), 0, 1);
        assert_eq!(c.get(&key(1), 2).map(|t| t.key_fingerprint), Some(FP));
        c.remove(&key(1));
        assert!(c.get(&key(1), 2).is_none());
    }

    #[test]
    fn bounded_a_full_cache_sweeps_the_dead_and_otherwise_caches_nothing_new() {
        let c = TokenCache::new(3);
        c.insert(key(1), checked(50, None), 0, 1);
        c.insert(key(2), checked(500, None), 0, 1);
        c.insert(key(3), checked(300, None), 0, 1);
        // Full of live entries: the new token is not cached, and none is evicted.
        c.insert(key(4), checked(400, None), 0, 10);
        assert_eq!(c.len(), 3);
        assert!(c.get(&key(4), 11).is_none());
        assert!(c.get(&key(1), 11).is_some());
        // At 60 key 1 is dead: swept, and there is room.
        c.insert(key(5), checked(600, None), 0, 60);
        assert_eq!(c.len(), 3);
        assert!(c.get(&key(1), 61).is_none());
        for k in [2, 3, 5] {
            assert!(c.get(&key(k), 61).is_some(), "key {k}");
        }
        for i in 10..1000 {
            c.insert(key(i), checked(10_000, None), 0, 61);
        }
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn capacity_zero_is_off() {
        let c = TokenCache::new(0);
        c.insert(key(1), checked(1000, None), 0, 1);
        assert!(c.get(&key(1), 2).is_none());
        assert!(c.is_empty());
    }
}
