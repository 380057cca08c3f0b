//! An alert when retries spike.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// What the retry-spike callback is told: at least `retries` retries were
/// scheduled within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetrySpike {
    /// Retries scheduled in the current window when the threshold was met.
    pub retries: u64,
    /// The window the threshold applies to.
    pub window: Duration,
}

type Callback = dyn Fn(RetrySpike) + Send + Sync;

/// Counts scheduled retries in fixed windows and calls back once per window
/// when the count reaches the threshold. Shared by clones.
#[derive(Clone)]
pub(crate) struct SpikeAlert {
    threshold: u64,
    window: Duration,
    state: Arc<Mutex<SpikeState>>,
    callback: Arc<Callback>,
}

struct SpikeState {
    start: Option<Instant>,
    count: u64,
    fired: bool,
}

impl SpikeAlert {
    pub(crate) fn new(
        threshold: u64,
        window: Duration,
        callback: impl Fn(RetrySpike) + Send + Sync + 'static,
    ) -> Self {
        SpikeAlert::new_shared(threshold, window, Arc::new(callback))
    }

    fn new_shared(threshold: u64, window: Duration, callback: Arc<Callback>) -> Self {
        SpikeAlert {
            threshold: threshold.max(1),
            window: window.max(Duration::from_millis(1)),
            state: Arc::new(Mutex::new(SpikeState {
                start: None,
                count: 0,
                fired: false,
            })),
            callback,
        }
    }

    /// The same alert (threshold, window, callback) with a window of its
    /// own, for another service.
    pub(crate) fn fresh(&self) -> Self {
        SpikeAlert::new_shared(self.threshold, self.window, self.callback.clone())
    }

    /// Records one scheduled retry (only on the retry path).
    pub(crate) fn record(&self, now: Instant) {
        let fire = {
            let mut s = match self.state.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            let expired = match s.start {
                None => true,
                Some(start) => now.saturating_duration_since(start) >= self.window,
            };
            if expired {
                s.start = Some(now);
                s.count = 0;
                s.fired = false;
            }
            s.count = s.count.saturating_add(1);
            if s.count >= self.threshold && !s.fired {
                s.fired = true;
                Some(s.count)
            } else {
                None
            }
        };
        // Called outside the lock.
        if let Some(retries) = fire {
            (self.callback)(RetrySpike {
                retries,
                window: self.window,
            });
        }
    }
}

impl fmt::Debug for SpikeAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpikeAlert")
            .field("threshold", &self.threshold)
            .field("window", &self.window)
            .finish()
    }
}
