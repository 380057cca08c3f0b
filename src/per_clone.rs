//! A handle on state that every clone of a service shares, which the
//! response futures of one clone take without touching the shared
//! reference count.
//!
//! A response future that must reach a layer's shared state (the retry
//! policy, a key's breaker) holds an `Arc` to it. Cloning and dropping that
//! `Arc` on every request is an atomic read-modify-write on one cache line
//! that every thread writes: two threads calling clones of one service
//! then take turns owning that line, and each call waits for it. A
//! [`PerClone`] gives each service clone, from its second call on, a
//! private `Arc` around the shared one; futures of that clone count on the
//! private one, which no other thread writes. A clone that makes only one
//! call (the `svc.clone().oneshot(req)` pattern) never allocates: its
//! futures take the shared `Arc`, as before.

use std::ops::Deref;
use std::sync::Arc;

/// What a response future holds: the shared `Arc`, or a clone's private
/// one around it.
pub(crate) enum Handle<T> {
    Shared(Arc<T>),
    Own(Arc<Private<T>>),
}

/// A clone's private reference to the shared state: its own reference
/// count, on its own cache line, around one count of the shared `Arc`.
pub(crate) struct Private<T>(Arc<T>);

impl<T> Deref for Handle<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        match self {
            Handle::Shared(shared) => shared,
            Handle::Own(own) => &own.0,
        }
    }
}

/// Shared state as one service clone holds it (see the module docs).
pub(crate) struct PerClone<T> {
    shared: Arc<T>,
    own: Option<Arc<Private<T>>>,
    /// Whether this clone made a call yet.
    called: bool,
}

impl<T> PerClone<T> {
    pub(crate) fn new(shared: Arc<T>) -> Self {
        PerClone {
            shared,
            own: None,
            called: false,
        }
    }

    /// The shared state.
    pub(crate) fn shared(&self) -> &Arc<T> {
        &self.shared
    }

    /// A handle for one call's future: the shared `Arc` on this clone's
    /// first call, its private one (made once, on the second call) after.
    #[inline]
    pub(crate) fn handle(&mut self) -> Handle<T> {
        match &self.own {
            Some(own) => Handle::Own(Arc::clone(own)),
            None => self.first_handles(),
        }
    }

    #[inline(never)]
    fn first_handles(&mut self) -> Handle<T> {
        if self.called {
            let own = Arc::new(Private(Arc::clone(&self.shared)));
            self.own = Some(Arc::clone(&own));
            Handle::Own(own)
        } else {
            self.called = true;
            Handle::Shared(Arc::clone(&self.shared))
        }
    }
}

impl<T> Clone for PerClone<T> {
    /// A clone shares the state, not the private handle: its futures count
    /// on the shared `Arc` until its own second call.
    fn clone(&self) -> Self {
        PerClone::new(Arc::clone(&self.shared))
    }
}

impl<T> Deref for PerClone<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_the_second_call_futures_leave_the_shared_count_alone() {
        let shared = Arc::new(7);
        let mut clone = PerClone::new(Arc::clone(&shared));
        let first = clone.handle();
        assert!(matches!(first, Handle::Shared(_)));
        drop(first);
        let second = clone.handle();
        assert!(matches!(second, Handle::Own(_)));
        // The clone's private reference holds one count on the shared state;
        // its futures count on the private one only.
        let count = Arc::strong_count(&shared);
        let in_flight: Vec<_> = (0..10).map(|_| clone.handle()).collect();
        assert_eq!(Arc::strong_count(&shared), count);
        assert!(in_flight.iter().all(|h| **h == 7));
        // A clone starts over: its first call takes the shared count.
        let mut other = clone.clone();
        assert!(matches!(other.handle(), Handle::Shared(_)));
        drop((second, in_flight, clone, other));
        assert_eq!(Arc::strong_count(&shared), 1);
    }
}
