use std::sync::Arc;
use std::task::{Context, Poll};

use http::Response;
use http_body::Body;
use tower::Service;

use super::body::ResponseBody;
use super::future::ResponseFuture;
use super::guard::Guard;
use super::shared::{Breakers, Cell};
use crate::classify::{Classifier, Provider};
use crate::events::CircuitState;
use crate::key::{Key, KeyFn, SingleKey};
use crate::per_clone::{Handle, PerClone};
use crate::{BoxError, Error};

/// The service of [`CircuitBreakerLayer`](super::CircuitBreakerLayer): one
/// breaker per key, shared by every clone of the service.
///
/// `poll_ready` only asks the inner service: an open breaker does not make
/// the service unready (which would park every caller, or a `Buffer`'s
/// worker, for the whole open time and hide why), it makes `call` return
/// at once an error that [`is_circuit_open`](crate::Error::is_circuit_open),
/// whose [`class`](crate::Error::class) says why it opened and whose
/// [`retry_after`](crate::Error::retry_after) says when it lets a probe
/// through. The breaker is keyed, so readiness could not know the key
/// anyway.
///
/// Its responses carry their body in a [`ResponseBody`], which judges a
/// 2xx stream at the end of its body rather than at its headers (a stream
/// that breaks midway is a failure); the body's error items become this
/// crate's [`Error`].
///
/// Each clone remembers the breaker of the last key it called, so that a
/// stack with one key (or a run of calls with the same key) skips the map;
/// from its second call of that key on, its futures count on a reference
/// of their own instead of the breaker's shared one, so that two threads
/// calling two clones do not write one cache line per call.
pub struct CircuitBreaker<S, K, C> {
    inner: S,
    key_fn: K,
    breakers: Arc<Breakers<C>>,
    last: Option<PerClone<Cell<C>>>,
}

impl<S> CircuitBreaker<S, SingleKey, Provider> {
    /// Breakers around `inner` with the defaults of
    /// [`CircuitBreakerLayer::new`](super::CircuitBreakerLayer::new): the
    /// same as `CircuitBreakerLayer::new().layer(inner)`.
    pub fn new(inner: S) -> Self {
        tower::Layer::layer(&super::CircuitBreakerLayer::new(), inner)
    }
}

impl<S, K, C> CircuitBreaker<S, K, C> {
    pub(crate) fn from_parts(inner: S, key_fn: K, breakers: Arc<Breakers<C>>) -> Self {
        CircuitBreaker {
            inner,
            key_fn,
            breakers,
            last: None,
        }
    }

    /// The state of `key`'s breaker now ([`CircuitState::Closed`] for a
    /// key not seen yet). An open breaker whose time is up reads open until
    /// the next call of its key turns it half-open.
    pub fn state(&self, key: &Key) -> CircuitState {
        self.breakers.state(key)
    }

    /// How many keys have a breaker now (at most the layer's `max_keys`).
    pub fn keys(&self) -> usize {
        self.breakers.len()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K: Clone, C> Clone for CircuitBreaker<S, K, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            key_fn: self.key_fn.clone(),
            breakers: Arc::clone(&self.breakers),
            last: self.last.clone(),
        }
    }
}

impl<S: std::fmt::Debug, K: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("key_fn", &self.key_fn)
            .field("config", &self.breakers.context().config)
            .field("keys", &self.breakers.len())
            .finish()
    }
}

impl<S, K, C, Req, B> Service<Req> for CircuitBreaker<S, K, C>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body,
    K: KeyFn<Req>,
    C: Classifier,
{
    type Response = Response<ResponseBody<B, C>>;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let classifier = &self.breakers.context().classifier;
        self.inner
            .poll_ready(cx)
            .map_err(|e| Error::from_transport(e, |e| classifier.classify_error(e)))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let key = self.key_fn.key(&request);
        let cell = match &mut self.last {
            Some(cell) if *cell.key() == key => cell.handle(),
            _ => self.cell_of(key),
        };
        match cell.acquire() {
            Ok(permit) => {
                // The guard holds the permit before the inner call: if that
                // call panics, unwinding drops the guard, which gives a
                // half-open probe slot back.
                let guard = Guard::new(cell, permit);
                ResponseFuture::called(self.inner.call(request), guard)
            }
            Err(error) => ResponseFuture::rejected(error),
        }
    }
}

impl<S, K, C> CircuitBreaker<S, K, C> {
    /// The breaker of a key this clone did not call last: from the shared
    /// map, remembered for the next call when the map keeps it.
    #[inline(never)]
    fn cell_of(&mut self, key: Key) -> Handle<Cell<C>> {
        let (cell, kept) = self.breakers.cell(&key);
        if kept {
            let mut cached = PerClone::new(cell);
            let cell = cached.handle();
            self.last = Some(cached);
            cell
        } else {
            self.last = None;
            Handle::Shared(cell)
        }
    }
}
