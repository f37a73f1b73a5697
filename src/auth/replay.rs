//! Replay protection for PoP-signed requests: a signed request is accepted once within its
//! lifetime. Keyed on SHA-256 of the whole token, so a re-encoded or re-signed token is a
//! different token (and would have to pass every other check again).
//!
//! Bounded: at most `capacity` live entries. When it is full of entries that have not expired,
//! new requests are refused with a 503 (Entra retries) rather than forgetting an entry, which
//! would reopen the replay window. Only fully validated requests are recorded, so an anonymous
//! client cannot fill it.
//!
//! Capacity is a rate: an entry lives as long as its request is valid (`ts` + the PoP lifetime,
//! 300 s by default), so `capacity / lifetime` signed requests per second can be sustained
//! (1,000,000 / 300 s ≈ 3,333/s by default). An entry is a 128-bit prefix of the digest and its
//! expiry, about 30 bytes with the map's overhead (≈ 30 MB when full at the default).
//! A collision of two prefixes would only refuse a valid request as replayed; finding one needs
//! 2^64 validly signed requests.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Debug, PartialEq, Eq)]
pub enum ReplayError {
    Seen,
    Full,
}

pub struct ReplayCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// token digest prefix → unix second after which the token is expired anyway.
    seen: HashMap<[u8; 16], i64>,
    inserts_since_sweep: usize,
    /// The second of the last sweep forced by a full map: when the map is full of live entries,
    /// sweeping on every insert would cost a scan of the whole map per request, under the lock.
    full_sweep_at: Option<i64>,
}

/// Sweep expired entries at least this often (amortised O(1) per insert).
const SWEEP_EVERY: usize = 4096;

impl ReplayCache {
    pub fn new(capacity: usize) -> Self {
        ReplayCache {
            capacity,
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                inserts_since_sweep: 0,
                full_sweep_at: None,
            }),
        }
    }

    /// Records `key` as used until `expires_at`; refuses it if it is already recorded.
    pub fn check_and_insert(
        &self,
        key: [u8; 32],
        expires_at: i64,
        now: i64,
    ) -> Result<(), ReplayError> {
        // A poisoned lock only means another request panicked mid-insert; the map is still valid.
        let mut key16 = [0u8; 16];
        key16.copy_from_slice(&key[..16]);
        let key = key16;
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.seen.get(&key).is_some_and(|&exp| exp >= now) {
            return Err(ReplayError::Seen);
        }
        g.inserts_since_sweep += 1;
        let full = g.seen.len() >= self.capacity;
        // Full: sweep at most once a second (entries expire by the second); otherwise every
        // SWEEP_EVERY inserts, which keeps the sweep amortised O(1) per insert.
        let sweep_full = full && g.full_sweep_at.is_none_or(|at| at < now);
        if sweep_full || g.inserts_since_sweep >= SWEEP_EVERY {
            g.seen.retain(|_, exp| *exp >= now);
            g.inserts_since_sweep = 0;
            if sweep_full {
                g.full_sweep_at = Some(now);
            }
        }
        if g.seen.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        g.seen.insert(key, expires_at);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.seen.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_use_is_refused_until_expiry() {
        let c = ReplayCache::new(1000);
        assert_eq!(c.check_and_insert([1; 32], 100, 50), Ok(()));
        assert_eq!(c.check_and_insert([1; 32], 100, 60), Err(ReplayError::Seen));
        assert_eq!(c.check_and_insert([2; 32], 100, 60), Ok(()));
        // Past its expiry the token is refused as expired by the caller; the slot is reusable.
        assert_eq!(c.check_and_insert([1; 32], 200, 101), Ok(()));
    }

    #[test]
    fn full_of_live_entries_refuses_instead_of_forgetting() {
        let c = ReplayCache::new(1000);
        for i in 0..1000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            assert_eq!(c.check_and_insert(k, 100, 0), Ok(()));
        }
        assert_eq!(c.check_and_insert([9; 32], 100, 0), Err(ReplayError::Full));
        // Once they expire, room is made by sweeping, not by eviction of live entries.
        assert_eq!(c.check_and_insert([9; 32], 300, 101), Ok(()));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_full_map_makes_room_in_the_second_entries_expire() {
        let c = ReplayCache::new(1000);
        for i in 0..1000u32 {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_be_bytes());
            // Half expire at 10, half at 100.
            let exp = if i % 2 == 0 { 10 } else { 100 };
            assert_eq!(c.check_and_insert(k, exp, 0), Ok(()));
        }
        // Full at second 5: swept once (nothing expired), refused.
        assert_eq!(c.check_and_insert([9; 32], 300, 5), Err(ReplayError::Full));
        // At second 11 the 500 entries that expired at 10 are swept away, and there is room.
        assert_eq!(c.check_and_insert([9; 32], 300, 11), Ok(()));
        assert_eq!(c.len(), 501);
    }

    #[test]
    fn keys_differing_only_after_the_prefix_are_one_entry() {
        // The map keeps 128 bits of the digest; this pins that choice (see the module doc).
        let c = ReplayCache::new(1000);
        let mut a = [7u8; 32];
        assert_eq!(c.check_and_insert(a, 100, 0), Ok(()));
        a[31] = 0;
        assert_eq!(c.check_and_insert(a, 100, 0), Err(ReplayError::Seen));
    }
}
