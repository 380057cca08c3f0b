//! Acquire tokens and the guard that cancels by token: an acquire whose
//! answer never reached its caller (timeout, failure, future dropped) may
//! still have reserved on the server, and only its token can find it.

use tokio::time::Instant;

use super::ops::Cancel;
use super::store::Inner;
use crate::key::Key;

/// The splitmix64 finalizer: a bijection of `u64` that scatters counters.
pub(super) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 64 random bits: std's `RandomState` is seeded by the OS, mixed with the
/// process id and the time.
pub(super) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Held while an acquire's script call is in flight: if the call fails or
/// times out, or the future is dropped, before the decision reached its
/// caller, the script may have run (or may still run) on the server, so
/// whatever it reserved under the token is cancelled. A no-op on the
/// server when the script never ran.
pub(super) struct Abandoned<'a> {
    pub(super) inner: &'a Inner,
    pub(super) key: &'a Key,
    pub(super) token: u64,
    pub(super) armed: bool,
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.cancel(Cancel::Token {
                key: self.key.clone(),
                token: self.token,
                issued: Instant::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct() {
        let mut seen: Vec<u64> = (0..10_000u64).map(|n| mix(7u64.wrapping_add(n))).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 10_000);
        assert_ne!(random_u64(), random_u64());
    }
}
