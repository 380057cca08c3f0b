//! [`RetryPolicy`]: the retry rules as a `tower::retry::Policy`, for
//! tower's own `Retry`.

use std::fmt;
use std::sync::Arc;

use http::{Request, Response};
use tokio::time::{Instant, Sleep};

use super::config::Config;
use super::decision::{Attempts, Decision};
use super::ClassifiableError;
use crate::classify::Classifier;
use crate::error::Origin;
#[cfg(doc)]
use crate::Error;

/// The retry rules as a [`tower::retry::Policy`], for tower's own
/// [`tower::retry::Retry`].
///
/// It makes the same decisions as [`Retry`](super::Retry) (classes,
/// backoff, `Retry-After` with its cap, attempts, deadline, budget,
/// events), but tower's `Retry` can only hand back the last result as it
/// is: when the policy gives up on a 429 the caller gets that 429
/// response, not a typed [`Error`] such as
/// [`is_retry_after_too_long`](Error::is_retry_after_too_long). Use
/// [`RetryLayer`](super::RetryLayer) for the typed errors.
///
/// tower clones the policy for each request; the clone keeps that request's
/// attempts and start time, and shares everything else (budget, RNG,
/// events) with the original.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
/// use tower::retry::RetryLayer as TowerRetryLayer;
/// use tower::{Layer, Service, ServiceExt};
/// use tower_llm_resilience::retry::RetryLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let policy = RetryLayer::new().max_attempts(3).seed(7).policy();
/// let layer = TowerRetryLayer::new(policy);
/// // A provider that is overloaded once, then answers.
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let mut svc = layer.layer(tower::service_fn(move |_req: http::Request<String>| {
///     let status = if seen.fetch_add(1, Ordering::Relaxed) == 0 { 503 } else { 200 };
///     let response = http::Response::builder().status(status).body(String::new());
///     async move { Ok::<_, std::convert::Infallible>(response.unwrap()) }
/// }));
/// let response = svc.ready().await.unwrap().call(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(response.status(), 200);
/// assert_eq!(calls.load(Ordering::Relaxed), 2);
/// # }
/// ```
pub struct RetryPolicy<C = crate::Provider> {
    config: Arc<Config<C>>,
    attempts: Attempts,
}

impl<C> RetryPolicy<C> {
    pub(crate) fn from_config(config: Arc<Config<C>>) -> Self {
        RetryPolicy {
            config,
            attempts: Attempts::default(),
        }
    }
}

impl<C> Clone for RetryPolicy<C> {
    fn clone(&self) -> Self {
        RetryPolicy {
            config: self.config.clone(),
            attempts: self.attempts,
        }
    }
}

impl<C: fmt::Debug> fmt::Debug for RetryPolicy<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("config", &self.config)
            .field("attempts", &self.attempts.made)
            .finish()
    }
}

impl<C, B, ResB, E> tower::retry::Policy<Request<B>, Response<ResB>, E> for RetryPolicy<C>
where
    C: Classifier,
    B: Clone,
    E: ClassifiableError,
{
    type Future = Sleep;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        let (c, retryable, origin) = match result {
            Ok(response) => {
                let c = self.config.classifier.failure_of(response)?;
                (c, c.is_retryable(), response.extensions().get::<Origin>())
            }
            Err(error) => {
                let (c, retryable) = error.classify_with(&self.config.classifier);
                (c, retryable, None)
            }
        };
        let now = Instant::now();
        match self
            .config
            .decide_for(&c, retryable, &mut self.attempts, now, origin)
        {
            Decision::Retry { wait, .. } => Some(tokio::time::sleep(wait)),
            Decision::GiveUp(_) => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        // tower calls this on the service's policy before each first
        // attempt (then clones the policy into the request's future), and on
        // the future's clone before each retry.
        if self.attempts.made == 0 {
            self.attempts = self.config.first_attempt();
            if self.config.most_attempts <= 1 {
                // Never sent again: no copy to make (and to drop).
                return None;
            }
        }
        Some(request.clone())
    }
}
