//! The keyed breakers shared by a service's clones.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use tokio::time::Instant;

use super::circuit::{generation_of, is_closed, is_closed_and_clean, Circuit, Permit, Transition};
use super::config::Config;
use super::outcome::CallOutcome;
use crate::classify::ErrorClass;
use crate::events::{CircuitState, Event, Events};
use crate::key::Key;
use crate::Error;

/// What every breaker of a service shares: the policy, where events go,
/// and the classifier.
#[derive(Debug)]
pub(crate) struct Context<C> {
    pub(crate) config: Config,
    pub(crate) events: Events,
    pub(crate) classifier: C,
}

/// The breaker of one key: its state machine behind a short std mutex, and
/// its state and generation in one atomic word so that a closed breaker
/// admits a call without the lock.
#[derive(Debug)]
pub(crate) struct Cell<C> {
    key: Key,
    word: AtomicU64,
    circuit: Mutex<Circuit>,
    pub(crate) context: Arc<Context<C>>,
}

impl<C> Cell<C> {
    pub(crate) fn key(&self) -> &Key {
        &self.key
    }

    fn new(key: Key, context: Arc<Context<C>>, now: Instant) -> Self {
        let circuit = Circuit::new(context.config, now);
        Cell {
            key,
            word: AtomicU64::new(circuit.packed()),
            circuit: Mutex::new(circuit),
            context,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn state(&self) -> CircuitState {
        match self.word.load(Ordering::Acquire) & 3 {
            0 => CircuitState::Closed,
            1 => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }

    /// Leave to call, or the error that says why not and until when. A
    /// closed breaker answers with one atomic load, inline.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Permit, Error> {
        let word = self.word.load(Ordering::Acquire);
        if is_closed(word) {
            return Ok(Permit::closed(generation_of(word)));
        }
        self.acquire_locked()
    }

    #[inline(never)]
    fn acquire_locked(&self) -> Result<Permit, Error> {
        let now = Instant::now();
        let (result, transition) = {
            let mut circuit = self.lock();
            let step = circuit.try_acquire(now);
            if step.1.is_some() {
                self.word.store(circuit.packed(), Ordering::Release);
            }
            step
        };
        self.emit(transition);
        result.map_err(|r| Error::circuit_open(r.class(), r.retry_after()))
    }

    /// Records the outcome of the call `permit` allowed. A plain success in
    /// a healthy breaker is one atomic load, inline.
    #[inline]
    pub(crate) fn record(&self, permit: Permit, outcome: CallOutcome) {
        if !permit.is_probe() {
            if outcome == CallOutcome::ignored() {
                return;
            }
            // A healthy breaker: a plain success changes nothing.
            let word = self.word.load(Ordering::Acquire);
            if is_closed_and_clean(word, permit.generation())
                && outcome.is_plain_success(&self.context.config)
            {
                return;
            }
        }
        self.record_locked(permit, outcome);
    }

    #[inline(never)]
    fn record_locked(&self, permit: Permit, outcome: CallOutcome) {
        let transition = {
            let mut circuit = self.lock();
            let t = circuit.record(permit, outcome, Instant::now);
            let packed = circuit.packed();
            if self.word.load(Ordering::Relaxed) != packed {
                self.word.store(packed, Ordering::Release);
            }
            t
        };
        self.emit(transition);
    }

    /// Gives back a probe slot whose call was dropped (nothing to do for
    /// any other permit).
    #[inline]
    pub(crate) fn release(&self, permit: Permit) {
        if permit.is_probe() {
            self.release_locked(permit);
        }
    }

    #[inline(never)]
    fn release_locked(&self, permit: Permit) {
        self.lock().release(permit);
    }

    fn emit(&self, transition: Option<Transition>) {
        let Some(t) = transition else { return };
        let events = &self.context.events;
        events.emit(Event::CircuitTransition {
            key: &self.key,
            model: self.key.model(),
            from: t.from,
            to: t.to,
            class: t.class,
        });
        if t.class == Some(ErrorClass::QuotaExhausted) {
            events.emit(Event::QuotaExhausted {
                key: &self.key,
                model: self.key.model(),
                until: t.open_for,
            });
        }
    }
}

/// The breakers of every key, bounded.
#[derive(Debug)]
pub(crate) struct Breakers<C> {
    context: Arc<Context<C>>,
    max_keys: usize,
    cells: RwLock<HashMap<Key, Arc<Cell<C>>>>,
}

impl<C> Breakers<C> {
    pub(crate) fn new(context: Context<C>, max_keys: usize) -> Self {
        Breakers {
            context: Arc::new(context),
            max_keys: max_keys.max(1),
            cells: RwLock::new(HashMap::new()),
        }
    }

    /// The breaker of `key`, made on first use. When `max_keys` breakers
    /// exist, the idle closed ones (no call in flight) are forgotten first;
    /// if all are busy or open, the new key gets a breaker that is not
    /// kept (its calls pass and are judged alone), so memory stays bounded.
    ///
    /// The second value says whether the breaker is kept (so that a caller
    /// may cache it: a cached breaker is never forgotten, as it is not idle).
    pub(crate) fn cell(&self, key: &Key) -> (Arc<Cell<C>>, bool) {
        {
            let cells = self.cells.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(cell) = cells.get(key) {
                return (Arc::clone(cell), true);
            }
        }
        let mut cells = self.cells.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(cell) = cells.get(key) {
            return (Arc::clone(cell), true);
        }
        if cells.len() >= self.max_keys {
            cells.retain(|_, cell| {
                Arc::strong_count(cell) > 1 || cell.state() != CircuitState::Closed
            });
        }
        let cell = Arc::new(Cell::new(
            key.clone(),
            Arc::clone(&self.context),
            Instant::now(),
        ));
        let kept = cells.len() < self.max_keys;
        if kept {
            cells.insert(key.clone(), Arc::clone(&cell));
        }
        (cell, kept)
    }

    /// The state of `key`'s breaker (closed when it has none).
    pub(crate) fn state(&self, key: &Key) -> CircuitState {
        let cells = self.cells.read().unwrap_or_else(PoisonError::into_inner);
        cells.get(key).map_or(CircuitState::Closed, |c| c.state())
    }

    /// How many keys have a breaker.
    pub(crate) fn len(&self) -> usize {
        self.cells
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub(crate) fn context(&self) -> &Context<C> {
        &self.context
    }
}
