//! [`Gates`]: the Retry-After gates this process closed, kept locally so
//! that [`Store::watch`](crate::rate_limit::Store::watch) can hold a
//! reservation booked before the gate closed (Redis cannot tell a waiting
//! request in this process about it without a round trip).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::time::Instant;

use crate::key::Key;

/// At most this many keys' gates are remembered for `watch`.
pub(super) const MAX_GATES: usize = 10_000;

/// The Retry-After gates this process closed (it saw the 429), by key:
/// bounded ([`MAX_GATES`]) and expiring, so that `watch` can hold a
/// reservation booked before the gate closed until the gate's end.
#[derive(Default)]
pub(super) struct Gates {
    map: Mutex<HashMap<Key, Instant, foldhash::fast::RandomState>>,
}

impl Gates {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Key, Instant, foldhash::fast::RandomState>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes `key`'s gate until `until`; a later gate extends it, an
    /// earlier one never shortens it.
    pub(super) fn close(&self, key: &Key, until: Instant) {
        let now = Instant::now();
        if until <= now {
            return;
        }
        let mut map = self.lock();
        if let Some(end) = map.get_mut(key) {
            *end = (*end).max(until);
            return;
        }
        if map.len() >= MAX_GATES {
            map.retain(|_, end| *end > now);
        }
        if map.len() >= MAX_GATES {
            // Forget the gate that opens first: it matters least.
            if let Some(k) = map
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
        map.insert(key.clone(), until);
    }

    /// The end of `key`'s gate, if it is closed at `now`.
    pub(super) fn end(&self, key: &Key, now: Instant) -> Option<Instant> {
        let mut map = self.lock();
        match map.get(key) {
            Some(end) if *end > now => Some(*end),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn gates_are_bounded_and_expire() {
        let g = Gates::default();
        let now = Instant::now();
        let key = |i: usize| Key::new(format!("k{i}"));
        for i in 0..MAX_GATES + 5 {
            g.close(&key(i), now + Duration::from_secs(1 + i as u64));
        }
        assert_eq!(g.lock().len(), MAX_GATES);
        assert_eq!(g.end(&key(0), now), None, "the first to open is forgotten");
        assert_eq!(
            g.end(&key(MAX_GATES + 4), now),
            Some(now + Duration::from_secs(MAX_GATES as u64 + 5))
        );
        // An earlier gate never shortens one.
        g.close(&key(MAX_GATES + 4), now + Duration::from_secs(1));
        assert_eq!(
            g.end(&key(MAX_GATES + 4), now),
            Some(now + Duration::from_secs(MAX_GATES as u64 + 5))
        );
        tokio::time::advance(Duration::from_secs(MAX_GATES as u64 + 10)).await;
        let now = Instant::now();
        assert_eq!(g.end(&key(MAX_GATES + 4), now), None, "expired");
        g.close(&Key::new("new"), now + Duration::from_secs(1));
        assert_eq!(g.lock().len(), MAX_GATES, "room is made only when full");
        g.close(&Key::new("newer"), now + Duration::from_secs(1));
        assert_eq!(g.lock().len(), 2, "the expired ones are dropped when full");
    }
}
