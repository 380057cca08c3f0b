//! The pure algorithm: an exact sliding-window log over several dimensions,
//! driven by an explicit `now`. No tower, no locks, no timers.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::limits::{default_learned_ttl, Costs, Dimension, Limit, Limits, MAX_WINDOW};
use super::store::{Decision, UsedAtAdmission};
use crate::classify::ReportedLimit;

#[cfg(test)]
use super::limits::MINUTE;

/// What [`SlidingWindow::correct`] changed: whether some token charge went
/// down, up, or (both false) nothing changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Correction {
    /// A charge went down: room was freed.
    pub lowered: bool,
    /// A charge went up.
    pub raised: bool,
}

/// What a [`SlidingWindow`] reserved: the request may start at `at` (`now`
/// or later); `id` names the reservation for [`SlidingWindow::cancel`],
/// [`SlidingWindow::correct`] and [`SlidingWindow::learn`]. A store turns
/// it into a [`Reservation`] (which adds the key and the costs).
///
/// [`Reservation`]: super::Reservation
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Booking {
    /// The reservation's id.
    pub id: u64,
    /// The admission instant.
    pub at: Instant,
    /// What each limit held as of `at`, this reservation included.
    pub used: UsedAtAdmission,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    at: Instant,
    id: u64,
    cost: u64,
    /// What the limit held as of `at`, this entry included (kept up to
    /// date when the entry is booked again).
    used: u64,
}

/// Usage the provider reported that we did not see (another process on the
/// same key, or estimates that were low): it counts until `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct External {
    cost: u64,
    until: Instant,
}

/// A limit the provider reported, in force instead of the configured one
/// until `until`.
#[derive(Clone, Copy, Debug)]
struct Learned {
    limit: u64,
    until: Instant,
}

#[cfg(test)]
thread_local! {
    /// Log entries visited by the searches (finding 6's proof of cost).
    static STEPS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[inline]
fn step() {
    #[cfg(test)]
    STEPS.with(|s| s.set(s.get() + 1));
}

/// A position in one dimension's log for a search: the entries before
/// `index` are out of the window at every instant the search still
/// considers; `sum` is the sum of the costs from `index` on.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    index: usize,
    sum: u64,
}

#[derive(Clone, Debug)]
struct DimState {
    /// The configured limit (`limit.limit` is the configured capacity).
    limit: Limit,
    /// How long an entry counts: the window plus the arrival margin.
    hold: Duration,
    /// Admitted entries in admission order (times never decrease).
    log: VecDeque<Entry>,
    /// Sum of `log`'s costs.
    sum: u64,
    external: Option<External>,
    /// The newest reservation whose `remaining` was compared as of its
    /// admission (0 before any): an older one's view is stale.
    heard: u64,
    learned: Option<Learned>,
    /// Where a search that starts at or after `skip_from` may start: the
    /// entries before `skip.index` are out of the window from `skip_from`
    /// on, and `skip.sum` is the sum from `skip.index` on (when
    /// `skip.index` is 0 it is unused: the search starts at the front).
    /// A burst of waiters books each one from where the one before it
    /// stopped, so that the walk over the log is shared by the burst.
    skip: Cursor,
    skip_from: Instant,
}

/// A log whose capacity is this many entries or fewer is never shrunk
/// (so that a key whose window empties between requests does not
/// allocate on each).
const MIN_LOG_CAPACITY: usize = 4;

impl DimState {
    fn prune(&mut self, now: Instant) {
        // `at + hold <= now`, with one subtraction instead of an addition
        // per entry; before `hold` has passed since the clock's origin,
        // nothing can have left.
        if let Some(cutoff) = now.checked_sub(self.hold) {
            while let Some(e) = self.log.front() {
                if e.at <= cutoff {
                    self.sum = self.sum.saturating_sub(e.cost);
                    self.log.pop_front();
                    self.skip.index = self.skip.index.saturating_sub(1);
                } else {
                    break;
                }
            }
        }
        // Give a burst's buffer back once the log is far smaller: memory
        // stays within 8 times the live entries (and a few entries when
        // the window emptied).
        let cap = self.log.capacity();
        if cap > MIN_LOG_CAPACITY && self.log.len() * 8 < cap {
            if self.log.is_empty() {
                self.log = VecDeque::new();
            } else {
                self.log.shrink_to(self.log.len() * 2);
            }
        }
        if self.external.is_some_and(|x| x.until <= now) {
            self.external = None;
        }
        if self.learned.is_some_and(|l| l.until <= now) {
            self.learned = None;
        }
    }

    /// `remaining` as of the admission of reservation `id` at `at`, when
    /// the limit held `used` (see [`SlidingWindow::learn`]): the external
    /// usage is replaced by what the provider counted beyond `used`, until
    /// `at + reset` plus the margin. Returns whether it changed.
    fn learn_as_of(
        &mut self,
        id: u64,
        at: Instant,
        used: u64,
        remaining: u64,
        reset: Duration,
        now: Instant,
    ) -> bool {
        let margin = self.hold.saturating_sub(self.limit.window);
        let Some(until) = at.checked_add(reset.saturating_add(margin)) else {
            return false;
        };
        if until <= now || id < self.heard {
            return false;
        }
        self.heard = id;
        let ours = self.limit_at(now).saturating_sub(used);
        let external = ours
            .checked_sub(remaining)
            .filter(|&cost| cost > 0)
            .map(|cost| External { cost, until });
        let changed = external != self.external;
        self.external = external;
        changed
    }

    /// `remaining` as of `now` (no admission to compare with): a lower one
    /// than the limit leaves adds the difference to the external usage,
    /// until `now + reset`. Returns whether it changed.
    fn learn_as_of_now(&mut self, remaining: u64, reset: Duration, now: Instant) -> bool {
        let ours = self.limit_at(now).saturating_sub(self.used_at(now));
        if remaining >= ours {
            return false;
        }
        let until = now + reset;
        let old = self.external.map_or(0, |x| x.cost);
        self.external = Some(External {
            cost: old.saturating_add(ours - remaining),
            until: self.external.map_or(until, |x| x.until.max(until)),
        });
        true
    }

    /// The limit in force at `t` (learned or configured), before external
    /// usage.
    fn limit_at(&self, t: Instant) -> u64 {
        match self.learned {
            Some(l) if t < l.until => l.limit,
            _ => self.limit.limit,
        }
    }

    /// What may be admitted in a window ending at `t`: the limit in force
    /// minus the external usage still counting.
    fn capacity_at(&self, t: Instant) -> u64 {
        let limit = self.limit_at(t);
        match self.external {
            Some(x) if t < x.until => limit.saturating_sub(x.cost),
            _ => limit,
        }
    }

    fn cursor(&self) -> Cursor {
        Cursor {
            index: 0,
            sum: self.sum,
        }
    }

    /// Where a search starting at `t` may start (see `skip`).
    fn cursor_at(&self, t: Instant) -> Cursor {
        if self.skip.index > 0 && t >= self.skip_from {
            self.skip
        } else {
            self.cursor()
        }
    }

    /// Appends an entry (at or after every other).
    fn push(&mut self, entry: Entry) {
        self.log.push_back(entry);
        self.sum = self.sum.saturating_add(entry.cost);
        if self.skip.index > 0 {
            self.skip.sum = self.skip.sum.saturating_add(entry.cost);
        }
    }

    /// Moves `skip` past the entries out of the window at `t` (searches
    /// never start before `t` again until the log is re-booked).
    fn skip_to(&mut self, t: Instant) {
        let mut c = self.cursor_at(t);
        self.advance(&mut c, t);
        self.skip = c;
        self.skip_from = t;
    }

    /// Forgets `skip` (the log changed in the middle).
    fn reset_skip(&mut self) {
        self.skip.index = 0;
    }

    /// The earliest `t >= base` (with `base` at or after every entry) at
    /// which the entries in `(t - window, t]` leave room for `cost` under
    /// the capacity in force at `t`, searching the log from `c`; `None`
    /// when `cost` exceeds the configured capacity (it never fits).
    ///
    /// The capacity is a step function of time (a learned limit and
    /// external usage each end at an instant); within each step the
    /// entries' sum only falls as `t` grows, so the first instant of each
    /// step that fits is found by one walk from the front, and the walk
    /// goes on from where the previous step stopped. Every entry it walks
    /// over leaves the window no later than the answer.
    fn earliest_from(&self, c: Cursor, base: Instant, cost: u64) -> Option<Instant> {
        if cost > self.limit.limit {
            return None;
        }
        let mut ends = [
            self.learned.map(|l| l.until).filter(|&u| u > base),
            self.external.map(|x| x.until).filter(|&u| u > base),
        ];
        if let [Some(a), Some(b)] = ends {
            if b < a {
                ends = [Some(b), Some(a)];
            }
        }
        // Steps [base, end0), [end0, end1), [end1, forever); missing ends
        // are skipped.
        let mut i = c.index;
        let mut sum = c.sum;
        let mut start = base;
        for end in ends.into_iter().flatten().map(Some).chain([None]) {
            if end.is_some_and(|e| e <= start) {
                continue;
            }
            let capacity = self.capacity_at(start);
            if cost <= capacity {
                let allowed = capacity - cost;
                let mut t = start;
                loop {
                    if sum <= allowed {
                        return Some(t);
                    }
                    let Some(e) = self.log.get(i) else {
                        // Only a saturated sum gets here.
                        return Some(t);
                    };
                    step();
                    let out = e.at + self.hold;
                    if end.is_some_and(|end| out >= end) {
                        break;
                    }
                    sum = sum.saturating_sub(e.cost);
                    i += 1;
                    t = t.max(out);
                }
            }
            if let Some(end) = end {
                start = end;
            }
        }
        // The last step has the configured capacity and no end: the walk
        // returned from it.
        Some(start)
    }

    /// Moves `c` past the entries out of the window at `t`.
    fn advance(&self, c: &mut Cursor, t: Instant) {
        while let Some(e) = self.log.get(c.index) {
            if e.at + self.hold > t {
                break;
            }
            step();
            c.sum = c.sum.saturating_sub(e.cost);
            c.index += 1;
        }
    }

    /// What counts at `now` (after `prune(now)`): the entries admitted at
    /// or before `now`, plus external usage.
    fn used_at(&self, now: Instant) -> u64 {
        let waiting: u64 = self
            .log
            .iter()
            .rev()
            .take_while(|e| e.at > now)
            .map(|e| e.cost)
            .sum();
        let ext = self
            .external
            .filter(|x| x.until > now)
            .map_or(0, |x| x.cost);
        self.sum.saturating_sub(waiting).saturating_add(ext)
    }
}

/// The limiter state of one key: an exact sliding-window log per limit, a
/// shared gate, and the learned view of the provider's budget.
///
/// Exactness: over any half-open interval `[a, a + window)`, the costs
/// admitted in it never exceed the limit in force (before
/// [`SlidingWindow::correct`] changes a charge after the fact). Admission is
/// first-come first-served: a request is admitted at the earliest instant,
/// not before any earlier reservation of this key, at which it fits in
/// every limit. Memory: one 40-byte entry per admitted request still inside
/// a window, pruned on every decision.
///
/// See [`SlidingWindow::learn`] for what is learned from a provider, and for how
/// long.
#[derive(Clone, Debug)]
pub struct SlidingWindow {
    dims: Vec<DimState>,
    /// No admission before this instant (the shared Retry-After gate).
    gate: Option<Instant>,
    /// The latest reservation's admission instant (FIFO: nobody overtakes,
    /// not even a caller with an older `now`).
    last: Option<Instant>,
    /// The latest instant pruned to: the entries that left by then are
    /// gone, so nothing is booked before it (a caller whose `now` is
    /// older would otherwise be admitted beside an entry it no longer
    /// sees).
    pruned: Instant,
    next_id: u64,
    last_used: Instant,
}

impl SlidingWindow {
    /// A fresh window for `limits`, with no arrival margin (each entry
    /// counts for exactly its window).
    pub fn new(limits: &Limits, now: Instant) -> Self {
        SlidingWindow {
            dims: limits
                .iter()
                .map(|&limit| DimState {
                    limit,
                    hold: limit.window,
                    log: VecDeque::new(),
                    sum: 0,
                    external: None,
                    heard: 0,
                    learned: None,
                    skip: Cursor { index: 0, sum: 0 },
                    skip_from: now,
                })
                .collect(),
            gate: None,
            last: None,
            pruned: now,
            next_id: 0,
            last_used: now,
        }
    }

    /// Holds every entry `margin` longer than its window (at most a year
    /// longer). The provider counts a request when it arrives, the limiter
    /// when it sends it: a request slower to reach the provider than one
    /// sent a window after it would otherwise be counted with it there. It
    /// costs `margin / window` of the throughput. External usage learned
    /// from a `remaining` header counts `margin` longer too (see
    /// [`learn`](Self::learn)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokio::time::Instant;
    /// use tower_llm_resilience::rate_limit::{Costs, Dimension, Limits, SlidingWindow};
    ///
    /// let t0 = Instant::now();
    /// let second = Duration::from_secs(1);
    /// let limits = Limits::new().window(Dimension::Requests, second, 1);
    /// let margin = Duration::from_millis(50);
    /// let mut w = SlidingWindow::new(&limits, t0).arrival_margin(margin);
    /// let one = Costs::new(0, 0);
    /// w.acquire(&one, t0, None);
    /// // The next request fits 1.05 s later, not 1 s.
    /// assert_eq!(w.earliest(&one, t0), Ok(t0 + second + margin));
    /// ```
    pub fn arrival_margin(self, margin: Duration) -> Self {
        self.arrival_margins(|_| margin)
    }

    /// [`arrival_margin`](Self::arrival_margin) by window length.
    pub(crate) fn arrival_margins(mut self, margin_of: impl Fn(Duration) -> Duration) -> Self {
        for d in &mut self.dims {
            d.hold = d.limit.window + margin_of(d.limit.window).min(MAX_WINDOW);
        }
        self
    }

    /// Drops everything that no longer counts at `now`, including learned
    /// limits and external usage that expired.
    pub fn prune(&mut self, now: Instant) {
        if now > self.pruned {
            self.pruned = now;
        }
        for d in &mut self.dims {
            d.prune(now);
        }
        if self.gate.is_some_and(|g| g <= now) {
            self.gate = None;
        }
    }

    /// The earliest instant at or after `now` at which `costs` fits, without
    /// reserving; `Err((cost, capacity))` when it never fits (its cost
    /// exceeds a configured capacity).
    pub fn earliest(&self, costs: &Costs, now: Instant) -> Result<Instant, (u64, u64)> {
        self.earliest_by(now, |_, d| d.cost(costs), |k, t| self.dims[k].cursor_at(t))
    }

    /// `earliest` with the cost of each limit (by index) given directly,
    /// searching each log from its cursor.
    fn earliest_by(
        &self,
        now: Instant,
        cost_of: impl Fn(usize, Dimension) -> u64,
        cursor_of: impl Fn(usize, Instant) -> Cursor,
    ) -> Result<Instant, (u64, u64)> {
        let mut t = now;
        if let Some(g) = self.gate {
            t = t.max(g);
        }
        if let Some(l) = self.last {
            t = t.max(l);
        }
        // Each limit's earliest instant from `t`; their maximum fits every
        // limit unless a capacity fell at a step in between (a raised
        // learned limit expiring): then search again from there. Each
        // round either ends or passes a step, so it ends within
        // 2 * (steps + 1) rounds.
        loop {
            let mut next = t;
            for (k, d) in self.dims.iter().enumerate() {
                let cost = cost_of(k, d.limit.dimension);
                if cost == 0 {
                    continue;
                }
                match d.earliest_from(cursor_of(k, t), t, cost) {
                    Some(at) => next = next.max(at),
                    None => return Err((cost, d.limit.limit)),
                }
            }
            if next == t {
                return Ok(t);
            }
            t = next;
        }
    }

    /// Whether `costs` fits at `now` itself (after `prune(now)`), with
    /// nothing ahead of it: the common case, decided in O(1) per limit
    /// from the running sums; the same answer as `earliest` would give.
    #[inline]
    fn fits_now(&self, costs: &Costs, now: Instant) -> bool {
        self.gate.is_none_or(|g| g <= now)
            && self.last.is_none_or(|l| l <= now)
            && self.dims.iter().all(|d| {
                let cost = d.limit.dimension.cost(costs);
                cost == 0
                    || (cost <= d.limit.limit
                        && d.sum
                            .checked_add(cost)
                            .is_some_and(|s| s <= d.capacity_at(now)))
            })
    }

    /// Reserves `costs` at the earliest instant it fits, unless that is
    /// after `deadline`.
    pub fn acquire(
        &mut self,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Decision<Booking> {
        let id = self.next_id;
        let admission = self.acquire_as(id, costs, now, deadline);
        if matches!(admission, Decision::Admitted(Booking { .. })) {
            self.next_id = id.wrapping_add(1);
        }
        admission
    }

    /// [`acquire`](Self::acquire) with the id chosen by the caller (the
    /// store numbers reservations store-wide so that an id never repeats,
    /// even after a key's window was dropped). Ids must grow with every
    /// reservation of the window.
    pub(crate) fn acquire_as(
        &mut self,
        id: u64,
        costs: &Costs,
        now: Instant,
        deadline: Option<Instant>,
    ) -> Decision<Booking> {
        // Not before what a prune already dropped (see `pruned`).
        let now = now.max(self.pruned);
        self.prune(now);
        self.last_used = now;
        let at = match self.fits_now(costs, now) {
            true => Ok(now),
            false => self.earliest(costs, now),
        };
        let at = match at {
            Ok(at) => at,
            Err((cost, capacity)) => return Decision::Never { cost, capacity },
        };
        if deadline.is_some_and(|d| at > d) {
            return Decision::TooLate(at);
        }
        let mut used = UsedAtAdmission::UNKNOWN;
        let later = at > now;
        for (k, d) in self.dims.iter_mut().enumerate() {
            let cost = d.limit.dimension.cost(costs);
            if later {
                // Searches never start before `at` again (FIFO).
                d.skip_to(at);
            }
            // What the limit holds as of `at` with this request: admitted
            // now, the running sum (nothing is booked later than now);
            // booked later, the sum from the cursor at `at`. O(1).
            let before = if later && d.skip.index > 0 {
                d.skip.sum
            } else {
                d.sum
            };
            let held = before.saturating_add(cost);
            if cost > 0 {
                d.push(Entry {
                    at,
                    id,
                    cost,
                    used: held,
                });
            }
            used.set(k, held);
        }
        // Kept even when `at` is `now`: a caller whose `now` is older (it
        // read the clock before another caller that locked first) is
        // admitted at or after it, so that the log stays in time order.
        self.last = Some(at);
        Decision::Admitted(Booking { id, at, used })
    }

    /// Takes back reservation `id` entirely (a request that was never sent:
    /// its future was dropped while waiting), then books every reservation
    /// made after it and still waiting again, in order, at the earliest
    /// instant it now fits (never later than before). Returns whether any
    /// of them moved, so that their waiters can be woken.
    ///
    /// Cost: one pass over the log and the waiters, O(entries + waiters)
    /// per limit (the searches share one cursor per log, since re-booked
    /// instants never decrease).
    pub fn cancel(&mut self, id: u64, now: Instant) -> bool {
        let mut found = false;
        for d in &mut self.dims {
            if let Some(i) = find(&d.log, id) {
                d.reset_skip();
                if let Some(e) = d.log.remove(i) {
                    d.sum = d.sum.saturating_sub(e.cost);
                    found = true;
                }
            }
        }
        // A reservation already gone (pruned, or cancelled before) frees
        // nothing: nobody can move.
        found && self.rebook(now, Some(id), true)
    }

    /// Books the waiting reservations (admission after `now`, and made
    /// after reservation `after` if given) again, in order, each at the
    /// earliest instant it fits after the ones before it (with
    /// `never_later`, at most its old instant). One forward sweep: each
    /// log has one cursor that only moves forward.
    fn rebook(&mut self, now: Instant, after: Option<u64>, never_later: bool) -> bool {
        let now = now.max(self.pruned);
        // The waiting reservations sit at the logs' tails, in id order.
        let mut tails: Vec<VecDeque<Entry>> = Vec::with_capacity(self.dims.len());
        for d in &mut self.dims {
            d.reset_skip();
            let mut tail = VecDeque::new();
            while let Some(&e) = d.log.back() {
                if e.at <= now || after.is_some_and(|a| e.id <= a) {
                    break;
                }
                d.log.pop_back();
                d.sum = d.sum.saturating_sub(e.cost);
                tail.push_front(e);
            }
            tails.push(tail);
        }
        self.last = self.latest();
        let mut cursors: Vec<Cursor> = self.dims.iter().map(DimState::cursor).collect();
        let mut moved = false;
        // Merge the tails by id: one waiter at a time, its cost in each
        // limit (0 where it has no entry).
        while let Some(id) = tails.iter().filter_map(|t| t.front().map(|e| e.id)).min() {
            let head = |k: usize| tails[k].front().filter(|e| e.id == id);
            let old = (0..tails.len())
                .find_map(|k| head(k).map(|e| e.at))
                .unwrap_or(now);
            let at = match self.earliest_by(
                now,
                |k, _| head(k).map_or(0, |e| e.cost),
                |k, _| cursors[k],
            ) {
                Ok(t) if never_later => t.min(old),
                Ok(t) => t,
                Err(_) => old,
            };
            for (k, d) in self.dims.iter_mut().enumerate() {
                if tails[k].front().is_some_and(|e| e.id == id) {
                    let e = tails[k].pop_front().expect("checked");
                    d.log.push_back(Entry { at, ..e });
                    d.sum = d.sum.saturating_add(e.cost);
                    cursors[k].sum = cursors[k].sum.saturating_add(e.cost);
                }
            }
            for (k, d) in self.dims.iter_mut().enumerate() {
                d.advance(&mut cursors[k], at);
                // Its snapshot as of where it now stands.
                if let Some(e) = d.log.back_mut().filter(|e| e.id == id) {
                    e.used = cursors[k].sum;
                }
            }
            self.last = Some(self.last.map_or(at, |l| l.max(at)));
            moved |= at != old;
        }
        moved
    }

    fn latest(&self) -> Option<Instant> {
        self.dims
            .iter()
            .filter_map(|d| d.log.back())
            .map(|e| e.at)
            .max()
    }

    /// The instant reservation `id` is booked at, if it is still held.
    pub fn booked_at(&self, id: u64) -> Option<Instant> {
        self.dims
            .iter()
            .find_map(|d| find(&d.log, id).map(|i| d.log[i].at))
    }

    /// Replaces the token charge of reservation `id` with what the request
    /// really used. The request charge stays. A lower charge frees room at
    /// once for a new request; a higher one counts from the original
    /// admission instant. The reservations already waiting keep their
    /// instants: [`correct_and_move_waiters`](Self::correct_and_move_waiters)
    /// books them again. Returns whether a charge changed, and how.
    pub fn correct(&mut self, id: u64, actual: &Costs) -> Correction {
        let mut change = Correction::default();
        for d in &mut self.dims {
            if d.limit.dimension == Dimension::Requests {
                continue;
            }
            let cost = d.limit.dimension.cost(actual);
            if let Some(i) = find(&d.log, id) {
                let e = &mut d.log[i];
                if e.cost == cost {
                    continue;
                }
                change.lowered |= cost < e.cost;
                change.raised |= cost > e.cost;
                d.sum = d.sum.saturating_sub(e.cost).saturating_add(cost);
                if d.skip.index > 0 && i >= d.skip.index {
                    d.skip.sum = d.skip.sum.saturating_sub(e.cost).saturating_add(cost);
                }
                e.cost = cost;
            }
        }
        change
    }

    /// [`correct`](Self::correct), then books the reservations waiting at
    /// `now` again when a charge changed: a lower charge moves them earlier
    /// (the room it frees is used at once, not when their old instants
    /// come: an estimate 3x too high would otherwise hold every waiter to
    /// the instant it was first given), a higher one may move them later
    /// (the window stays exact). Returns whether any moved, so that their
    /// waiters can be woken.
    ///
    /// Cost: that of `correct` when nothing changed or nothing waits; else
    /// one sweep over the waiters, as [`cancel`](Self::cancel) makes.
    pub fn correct_and_move_waiters(&mut self, id: u64, actual: &Costs, now: Instant) -> bool {
        let change = self.correct(id, actual);
        if !(change.lowered || change.raised) {
            return false;
        }
        let now = now.max(self.pruned);
        let waiting = self
            .dims
            .iter()
            .any(|d| d.log.back().is_some_and(|e| e.at > now));
        waiting && self.rebook(now, None, !change.raised)
    }

    /// Closes the gate: nothing is admitted before `until`. A later gate
    /// extends, an earlier one never shortens.
    ///
    /// The reservations already waiting (admission after `now`) are booked
    /// again behind the gate, in order, each at the earliest instant at or
    /// after `until` that fits (re-booking them all, not only moving those
    /// before `until`, keeps the window exact). Returns whether any moved,
    /// so that their waiters can be woken: a waiter then finds a *later*
    /// instant than it was first given.
    pub fn gate(&mut self, until: Instant, now: Instant) -> bool {
        if self.gate.is_some_and(|g| g >= until) {
            return false;
        }
        self.gate = Some(until);
        // Only a waiter booked before `until` must move (the first
        // waiting entry of each log is the earliest).
        let waits_before_gate = self.dims.iter().any(|d| {
            let i = d.log.partition_point(|e| e.at <= now);
            d.log.get(i).is_some_and(|e| e.at < until)
        });
        waits_before_gate && self.rebook(now, None, false)
    }

    /// The gate, if closed at `now`.
    pub fn gate_until(&self, now: Instant) -> Option<Instant> {
        self.gate.filter(|g| *g > now)
    }

    /// Takes in what the provider said about one dimension over `window`:
    /// `state.remaining` units left until `state.reset`, out of
    /// `state.limit`, in the response to the request booked as `admission`
    /// (`None`: a caller that has no booking). Returns the limit now in
    /// force when it changed or the external usage did.
    ///
    /// # What `remaining` is compared with
    ///
    /// The provider computed `remaining` when the request arrived, the
    /// request itself counted. So it is compared with what the limit held
    /// **as of the request's admission**, the request and every reservation
    /// booked ahead of it included: its log entry's snapshot (which follows
    /// the entry when a cancellation ahead of it or a gate books it again),
    /// else the booking's [`UsedAtAdmission`]. The requests admitted since,
    /// and the entries that left the window since, are not in it. When the
    /// provider says less remains than `limit − used as of admission` (the
    /// limit in force), the difference is **external usage** the provider
    /// counted in its window then (another process on the key, or
    /// estimates below the provider's count). It counts until the
    /// provider's reset measured from the admission (at most one window),
    /// plus the [arrival margin](Self::arrival_margin).
    ///
    /// - It is all the external usage as of that admission, not an
    ///   increment: it **replaces** what an earlier admission's response
    ///   taught (the newer view covers whatever of it still counts), higher
    ///   or lower, so usage that two responses report counts once.
    /// - A response whose admission is older than one already compared
    ///   (responses come back out of order) is **stale**: its `remaining`
    ///   is ignored.
    /// - A response admitted longer ago than that reset teaches nothing:
    ///   what the provider counted then has left its window.
    /// - A correction made after the admission (a lower actual usage that
    ///   freed room meanwhile) is not in the comparison, as it was not in
    ///   the provider's count: the freed room stays free, and whatever of
    ///   it the provider still counts shows in the next responses. (The
    ///   snapshot of a request that waited is taken when it was booked, or
    ///   booked again: a correction made while it waited is not in it.)
    /// - A booking the window can no longer place teaches nothing from
    ///   `remaining`: its entries have all left the log (it left the
    ///   window, perhaps after a move), or it has no entry in this limit (it
    ///   cost nothing here) and either moved or holds no snapshot of it (a
    ///   limit past [`UsedAtAdmission::CAPACITY`]).
    ///
    /// Without a booking (`None`), `remaining` is compared with the usage
    /// **as of `now`**, external usage included: a lower one adds the
    /// difference, counting until `now` plus the reset (at most one
    /// window); a higher one never loosens.
    ///
    /// # What is learned, and for how long
    ///
    /// Nothing learned is sticky: each part has a floor, a bound and an
    /// expiry. With `configured` the limit's configured capacity:
    ///
    /// - **A learned limit of 0 is ignored** (no change): a provider that
    ///   says 0 is wrong or mid-change, and a capacity of 0 would shut the
    ///   key with nothing left to correct it.
    /// - **Floor**: a learned limit never goes below
    ///   `max(1, configured / 10)` (integer division).
    /// - **Bound**: without `learn_limits` a learned limit only tightens
    ///   (at most `configured`); with it, it may raise the configured one
    ///   up to `configured * 100` (saturating); values above are clamped.
    ///   A configured limit of 0 learns nothing.
    /// - **Expiry**: a learned limit holds for `learned_ttl` after the
    ///   provider last said it (default [`default_learned_ttl`]: the
    ///   limit's window, at most 10 minutes), then the configured limit is
    ///   back in force; a repeated header refreshes it. A header that says
    ///   the configured limit ends it at once.
    /// - A request whose cost exceeds the limit in force but not the
    ///   configured one is not "never fits": it waits until the learned
    ///   limit expires or room frees (so at most `learned_ttl`).
    /// - **Remaining**: external usage is at least 0 and at most what the
    ///   limit in force leaves (a capacity never goes below 0), and it
    ///   expires at the provider's reset, at most one window (plus the
    ///   arrival margin) after the admission it was computed at, or after
    ///   `now` without a booking.
    #[allow(clippy::too_many_arguments)] // the response's four facts, the store's two rules, the clock
    pub fn learn(
        &mut self,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        admission: Option<&Booking>,
        learn_limits: bool,
        learned_ttl: Option<Duration>,
        now: Instant,
    ) -> Option<u64> {
        self.prune(now);
        let k = self
            .dims
            .iter()
            .position(|d| d.limit.dimension == dimension && d.limit.window == window)?;
        let admitted = admission.map(|b| (b.id, self.admitted(k, b)));
        let d = &mut self.dims[k];
        let before = d.limit_at(now);
        let mut changed = false;
        let configured = d.limit.limit;
        if let Some(l) = state.limit.filter(|&l| l > 0 && configured > 0) {
            let floor = (configured / 10).max(1);
            let ceiling = if learn_limits {
                configured.saturating_mul(100)
            } else {
                configured
            };
            let new = l.clamp(floor, ceiling);
            d.learned = if new == configured {
                None
            } else {
                let ttl = learned_ttl
                    .unwrap_or_else(|| default_learned_ttl(d.limit.window))
                    .min(MAX_WINDOW);
                Some(Learned {
                    limit: new,
                    until: now + ttl,
                })
            };
            changed = d.limit_at(now) != before;
        }
        if let Some(r) = state.remaining {
            let reset = state.reset.unwrap_or(d.limit.window).min(d.limit.window);
            changed |= match admitted {
                None => d.learn_as_of_now(r, reset, now),
                Some((id, Some((at, used)))) => d.learn_as_of(id, at, used, r, reset, now),
                Some((_, None)) => false,
            };
        }
        changed.then_some(d.limit_at(now))
    }

    /// Where booking `b` stands and what limit `k` held as of then: its
    /// log entry's own record (which follows a re-booking), else (it cost
    /// nothing in this limit) the booking's snapshot if its entries in the
    /// other limits show it where it was booked. `None` when neither can
    /// be trusted: its entries are gone (left the window, or moved there
    /// first), or it moved and this limit has no entry of it.
    fn admitted(&self, k: usize, b: &Booking) -> Option<(Instant, u64)> {
        let d = &self.dims[k];
        if let Some(i) = find(&d.log, b.id) {
            let e = &d.log[i];
            return Some((e.at, e.used));
        }
        if self.booked_at(b.id)? != b.at {
            return None;
        }
        Some((b.at, b.used.get(k)?))
    }

    /// The limit in force at `now` for `dimension` over `window`: a
    /// learned one until it expires, else the configured one.
    pub fn limit_of(&self, dimension: Dimension, window: Duration, now: Instant) -> Option<u64> {
        self.dims
            .iter()
            .find(|d| d.limit.dimension == dimension && d.limit.window == window)
            .map(|d| d.limit_at(now))
    }

    /// The instant from which the window holds nothing that still counts
    /// (its gate, its entries and external usage all expired), if nothing
    /// new happens; at or before `last_used` when nothing counts now.
    /// Learned limits do not count: they come back with the next response.
    pub fn idle_at(&self) -> Instant {
        let mut t = self.last_used;
        if let Some(g) = self.gate {
            t = t.max(g);
        }
        for d in &self.dims {
            if let Some(e) = d.log.back() {
                t = t.max(e.at + d.hold);
            }
            if let Some(x) = d.external {
                t = t.max(x.until);
            }
        }
        t
    }

    /// Whether the window holds nothing that matters at `now`: dropping it
    /// would lose no usage (its limits aside, which come back from
    /// configuration, and learned limits, which come back from the next
    /// response).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.gate.is_none_or(|g| g <= now)
            && self.dims.iter().all(|d| {
                d.log.back().is_none_or(|e| e.at + d.hold <= now)
                    && d.external.is_none_or(|x| x.until <= now)
            })
    }

    /// When the window was last asked for a decision.
    pub fn last_used(&self) -> Instant {
        self.last_used
    }

    /// Entries held (for memory accounting and tests).
    pub fn entries(&self) -> usize {
        self.dims.iter().map(|d| d.log.len()).sum()
    }
}

fn find(log: &VecDeque<Entry>, id: u64) -> Option<usize> {
    // Ids grow with admission order, which is the log's order (ids wrap
    // only after 2^64 reservations of one store).
    let i = log.partition_point(|e| e.id < id);
    (i < log.len() && log[i].id == id).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn admits_at_the_exact_instant_room_frees() {
        let t0 = Instant::now();
        let limits = Limits::new().window(Dimension::Requests, ms(1000), 2);
        let mut w = SlidingWindow::new(&limits, t0);
        let one = Costs::new(0, 0);
        assert!(
            matches!(w.acquire(&one, t0, None), Decision::Admitted(Booking { at, .. }) if at == t0)
        );
        let t1 = t0 + ms(300);
        assert!(
            matches!(w.acquire(&one, t1, None), Decision::Admitted(Booking { at, .. }) if at == t1)
        );
        // Third: room frees when the first leaves the window at t0 + 1000.
        assert!(
            matches!(w.acquire(&one, t1, None), Decision::Admitted(Booking { at, .. }) if at == t0 + ms(1000))
        );
        // Fourth (FIFO after it): the second leaves at t1 + 1000.
        assert!(
            matches!(w.acquire(&one, t1, None), Decision::Admitted(Booking { at, .. }) if at == t1 + ms(1000))
        );
    }

    #[test]
    fn oversize_never_fits() {
        let t0 = Instant::now();
        let limits = Limits::new().tokens_per_minute(100);
        let mut w = SlidingWindow::new(&limits, t0);
        assert_eq!(
            w.acquire(&Costs::tokens(101), t0, None),
            Decision::Never {
                cost: 101,
                capacity: 100
            }
        );
    }

    #[test]
    fn deadline_reserves_nothing() {
        let t0 = Instant::now();
        let limits = Limits::new().tokens_per_minute(100);
        let mut w = SlidingWindow::new(&limits, t0);
        assert!(matches!(
            w.acquire(&Costs::tokens(80), t0, None),
            Decision::Admitted(Booking { .. })
        ));
        assert_eq!(
            w.acquire(&Costs::tokens(80), t0, Some(t0 + ms(10))),
            Decision::TooLate(t0 + MINUTE)
        );
        assert_eq!(w.entries(), 1);
    }

    #[test]
    fn cancel_and_correct_free_room() {
        let t0 = Instant::now();
        let limits = Limits::new().tokens_per_minute(100);
        let mut w = SlidingWindow::new(&limits, t0);
        let Decision::Admitted(Booking { id, .. }) = w.acquire(&Costs::tokens(90), t0, None) else {
            panic!()
        };
        assert_eq!(w.earliest(&Costs::tokens(20), t0), Ok(t0 + MINUTE));
        w.correct(id, &Costs::tokens(50));
        assert_eq!(w.earliest(&Costs::tokens(20), t0), Ok(t0));
        w.cancel(id, t0);
        assert_eq!(w.earliest(&Costs::tokens(100), t0), Ok(t0));
    }

    fn said(limit: Option<u64>, remaining: Option<u64>, reset: Option<Duration>) -> ReportedLimit {
        ReportedLimit::new(limit, remaining, reset)
    }

    #[test]
    fn learning_tightens_until_reset_and_never_loosens() {
        let t0 = Instant::now();
        let limits = Limits::new().requests_per_minute(100);
        let mut w = SlidingWindow::new(&limits, t0);
        let r = Dimension::Requests;
        // Provider says only 1 remains, resetting in 10 s.
        let state = said(Some(100), Some(1), Some(Duration::from_secs(10)));
        assert_eq!(w.learn(r, MINUTE, state, None, false, None, t0), Some(100));
        assert!(
            matches!(w.acquire(&Costs::new(0, 0), t0, None), Decision::Admitted(Booking { at, .. }) if at == t0)
        );
        assert!(
            matches!(w.acquire(&Costs::new(0, 0), t0, None), Decision::Admitted(Booking { at, .. }) if at == t0 + Duration::from_secs(10))
        );
        // A higher provider limit does not loosen without opt-in.
        w.learn(
            r,
            MINUTE,
            said(Some(1000), None, None),
            None,
            false,
            None,
            t0,
        );
        assert_eq!(w.limit_of(r, MINUTE, t0), Some(100));
        w.learn(
            r,
            MINUTE,
            said(Some(1000), None, None),
            None,
            true,
            None,
            t0,
        );
        assert_eq!(w.limit_of(r, MINUTE, t0), Some(1000));
        w.learn(r, MINUTE, said(Some(10), None, None), None, false, None, t0);
        assert_eq!(w.limit_of(r, MINUTE, t0), Some(10));
    }

    /// Finding 1, the rule itself: zero ignored, floor, bound, expiry,
    /// refresh, and the configured capacity alone decides "never fits".
    #[test]
    fn one_odd_header_shuts_a_key_for_good() {
        let t0 = Instant::now();
        let r = Dimension::Requests;
        let day = Duration::from_secs(86_400);
        let limits = Limits::new()
            .requests_per_minute(100)
            .requests_per_day(1000);
        let mut w = SlidingWindow::new(&limits, t0);
        let limit = |l| said(Some(l), None, None);
        // 0 is ignored.
        assert_eq!(w.learn(r, MINUTE, limit(0), None, true, None, t0), None);
        assert_eq!(w.limit_of(r, MINUTE, t0), Some(100));
        // Floor: 100 / 10; 1000 / 10 for the per-day limit.
        assert_eq!(
            w.learn(r, MINUTE, limit(1), None, false, None, t0),
            Some(10)
        );
        assert_eq!(w.learn(r, day, limit(3), None, false, None, t0), Some(100));
        // Expiry: the window (60 s), at most 10 min (per day).
        assert_eq!(w.limit_of(r, MINUTE, t0 + ms(59_999)), Some(10));
        assert_eq!(w.limit_of(r, MINUTE, t0 + MINUTE), Some(100));
        assert_eq!(w.limit_of(r, day, t0 + ms(599_999)), Some(100));
        assert_eq!(
            w.limit_of(r, day, t0 + Duration::from_secs(600)),
            Some(1000)
        );
        // A request above the learned limit but within the configured one
        // waits for the expiry; only the configured one decides "never".
        let eleven = |w: &mut SlidingWindow| {
            let mut at = t0;
            for _ in 0..11 {
                match w.acquire(&Costs::new(0, 0), t0, None) {
                    Decision::Admitted(Booking { at: a, .. }) => at = a,
                    other => panic!("{other:?}"),
                }
            }
            at
        };
        assert_eq!(eleven(&mut w.clone()), t0 + MINUTE);
        // A repeated header refreshes it.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            w.learn(r, MINUTE, limit(1), None, false, None, t1),
            None,
            "no change"
        );
        assert_eq!(w.limit_of(r, MINUTE, t0 + ms(89_999)), Some(10));
        assert_eq!(w.limit_of(r, MINUTE, t0 + ms(90_000)), Some(100));
        // The configured limit said again ends it at once.
        assert_eq!(
            w.learn(r, MINUTE, limit(100), None, false, None, t1),
            Some(100)
        );
        // Bound: at most 100 times the configured limit.
        assert_eq!(
            w.learn(r, MINUTE, limit(u64::MAX), None, true, None, t1),
            Some(10_000)
        );
        // A chosen ttl.
        let ttl = Some(Duration::from_secs(5));
        assert_eq!(
            w.learn(r, MINUTE, limit(20), None, false, ttl, t1),
            Some(20)
        );
        assert_eq!(
            w.limit_of(r, MINUTE, t1 + Duration::from_secs(5)),
            Some(100)
        );
        // Tokens: a cost above the learned limit waits, above the
        // configured one never fits.
        let limits = Limits::new().tokens_per_minute(10_000);
        let mut w = SlidingWindow::new(&limits, t0);
        let tk = Dimension::Tokens;
        assert_eq!(
            w.learn(tk, MINUTE, limit(2_000), None, false, None, t0),
            Some(2_000)
        );
        assert_eq!(w.earliest(&Costs::tokens(5_000), t0), Ok(t0 + MINUTE));
        assert_eq!(w.earliest(&Costs::tokens(2_000), t0), Ok(t0));
        assert_eq!(
            w.earliest(&Costs::tokens(10_001), t0),
            Err((10_001, 10_000))
        );
        // A configured limit of 0 learns nothing (and cannot panic).
        let mut w = SlidingWindow::new(&Limits::new().requests_per_minute(0), t0);
        assert_eq!(w.learn(r, MINUTE, limit(5), None, true, None, t0), None);
        assert_eq!(w.limit_of(r, MINUTE, t0), Some(0));
    }

    /// A raised learned limit that expires lowers the capacity: a request
    /// of several limits is admitted only where every one of them fits.
    #[test]
    fn a_raised_limit_expiring_is_searched_again() {
        let t0 = Instant::now();
        let limits = Limits::new()
            .window(Dimension::Requests, ms(2000), 1)
            .window(Dimension::Tokens, ms(1000), 100);
        let mut w = SlidingWindow::new(&limits, t0);
        let ttl = Some(ms(500));
        let state = said(Some(3), None, None);
        assert_eq!(
            w.learn(Dimension::Requests, ms(2000), state, None, true, ttl, t0),
            Some(3)
        );
        let at = |w: &mut SlidingWindow, tokens| match w.acquire(&Costs::tokens(tokens), t0, None) {
            Decision::Admitted(Booking { at, .. }) => at,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(&mut w, 90), t0);
        // Tokens fit only at 1 s; by then the raised request limit (3) has
        // expired, and the first request counts until 2 s: admitted at 2 s,
        // not at 1 s (two requests in 2 s under a limit of 1).
        assert_eq!(at(&mut w, 90), t0 + ms(2000));
    }

    #[test]
    fn absurd_inputs_do_not_panic() {
        let t0 = Instant::now();
        let limits = Limits::new()
            .window(Dimension::Tokens, Duration::MAX, u64::MAX)
            .window(Dimension::Requests, Duration::from_nanos(1), 0);
        let mut w = SlidingWindow::new(&limits, t0);
        assert!(matches!(
            w.acquire(&Costs::tokens(u64::MAX), t0, None),
            Decision::Never { .. }
        ));
        let limits = Limits::new().window(Dimension::Tokens, Duration::MAX, u64::MAX);
        let mut w = SlidingWindow::new(&limits, t0);
        assert!(matches!(
            w.acquire(&Costs::new(u64::MAX, u64::MAX), t0, None),
            Decision::Admitted(Booking { .. })
        ));
        assert!(matches!(
            w.acquire(&Costs::tokens(1), t0, Some(t0)),
            Decision::TooLate(_)
        ));
        w.learn(
            Dimension::Tokens,
            MAX_WINDOW,
            said(Some(0), Some(0), Some(Duration::MAX)),
            None,
            true,
            Some(Duration::MAX),
            t0,
        );
        w.learn(
            Dimension::Tokens,
            MAX_WINDOW,
            said(Some(u64::MAX), Some(u64::MAX), Some(Duration::MAX)),
            None,
            true,
            Some(Duration::MAX),
            t0,
        );
        assert!(w.gate(t0 + MAX_WINDOW, t0) || w.gate_until(t0).is_some());
        w.prune(t0 + Duration::from_secs(1));
    }

    #[test]
    fn gate_holds_everything() {
        let t0 = Instant::now();
        let limits = Limits::new().requests_per_minute(100);
        let mut w = SlidingWindow::new(&limits, t0);
        assert!(!w.gate(t0 + ms(500), t0), "nobody waits");
        assert!(
            matches!(w.acquire(&Costs::new(0, 0), t0, None), Decision::Admitted(Booking { at, .. }) if at == t0 + ms(500))
        );
    }

    /// Finding 3: a gate closed after reservations were booked moves them
    /// behind it, re-booked in order so that the window stays exact.
    #[test]
    fn waiters_already_queued_ignore_a_gate_closed_after_they_were_booked() {
        let t0 = Instant::now();
        let limits = Limits::new().window(Dimension::Requests, ms(1000), 1);
        let mut w = SlidingWindow::new(&limits, t0);
        let mut ids = Vec::new();
        for _ in 0..3 {
            let Decision::Admitted(Booking { id, .. }) = w.acquire(&Costs::new(0, 0), t0, None)
            else {
                panic!()
            };
            ids.push(id);
        }
        // Booked at 0, 1 s, 2 s. At 0.1 s a gate closes until 1.5 s.
        let now = t0 + ms(100);
        assert!(w.gate(t0 + ms(1500), now));
        assert_eq!(w.booked_at(ids[0]), Some(t0), "already admitted");
        assert_eq!(w.booked_at(ids[1]), Some(t0 + ms(1500)));
        // Not 2 s: (1.5 s, 2.5 s] would hold two.
        assert_eq!(w.booked_at(ids[2]), Some(t0 + ms(2500)));
        // An earlier gate changes nothing.
        assert!(!w.gate(t0 + ms(1200), now));
    }
    /// Finding 6: a cancel re-books every later waiter in one forward
    /// sweep, not with one scan of the log each (O(n) per cancel, not
    /// O(n^2)), and the result is exactly a fresh booking of the others in
    /// order.
    #[test]
    fn a_cancel_rebooks_every_later_waiter_with_a_linear_scan_each() {
        let t0 = Instant::now();
        let limits = Limits::new()
            .window(Dimension::Requests, ms(1000), 10)
            .window(Dimension::Tokens, ms(1000), 1000);
        let costs = |i: u64| Costs::tokens(20 + (i * 37) % 90);
        let n = 2_000u64;
        let mut w = SlidingWindow::new(&limits, t0);
        let mut ids = Vec::new();
        for i in 0..n {
            let Decision::Admitted(Booking { id, .. }) = w.acquire(&costs(i), t0, None) else {
                panic!("no deadline")
            };
            ids.push(id);
        }
        let cancelled = 15;
        assert!(w.booked_at(ids[cancelled]).unwrap() > t0, "it waits");
        STEPS.with(|s| s.set(0));
        assert!(w.cancel(ids[cancelled], t0));
        let steps = STEPS.with(|s| s.get());
        assert!(
            steps <= 20 * n,
            "{steps} log entries visited for {n} waiters"
        );
        // Exact: the same as booking the others afresh, in order.
        let mut fresh = SlidingWindow::new(&limits, t0);
        for i in 0..n {
            if i as usize == cancelled {
                continue;
            }
            let Decision::Admitted(Booking { at, .. }) = fresh.acquire(&costs(i), t0, None) else {
                panic!("no deadline")
            };
            assert_eq!(w.booked_at(ids[i as usize]), Some(at), "waiter {i}");
        }
    }

    /// A burst of waiters books each one with a walk from where the one
    /// before it stopped, not from the log's front: O(1) amortised per
    /// request, so a burst of n is O(n), not O(n^2).
    #[test]
    fn a_burst_of_waiters_walks_the_whole_log_for_each() {
        let t0 = Instant::now();
        let limits = Limits::new()
            .window(Dimension::Requests, ms(1000), 10)
            .window(Dimension::Tokens, ms(1000), 1000);
        let costs = |i: u64| Costs::tokens(20 + (i * 37) % 90);
        let n = 4_000u64;
        let mut w = SlidingWindow::new(&limits, t0);
        STEPS.with(|s| s.set(0));
        let mut last = t0;
        for i in 0..n {
            // Time moves a little between arrivals, as it does.
            let now = t0 + Duration::from_micros(i);
            let Decision::Admitted(Booking { at, .. }) = w.acquire(&costs(i), now, None) else {
                panic!("no deadline")
            };
            assert!(at >= last, "first come, first served");
            last = at;
        }
        let steps = STEPS.with(|s| s.get());
        assert!(
            steps <= 8 * n,
            "{steps} log entries visited to book {n} waiters"
        );
    }

    /// Two threads read the clock, and the later reader locks first: the
    /// earlier `now` must not be admitted before the reservation already
    /// made (the log would leave time order, and FIFO would break).
    #[test]
    fn a_caller_with_an_older_now_overtakes_an_admitted_request() {
        let t0 = Instant::now();
        let limits = Limits::new().window(Dimension::Requests, ms(1000), 10);
        let mut w = SlidingWindow::new(&limits, t0);
        let one = Costs::new(0, 0);
        let Decision::Admitted(Booking { at: first, .. }) = w.acquire(&one, t0 + ms(1), None)
        else {
            panic!()
        };
        let Decision::Admitted(Booking { at: second, .. }) = w.acquire(&one, t0, None) else {
            panic!()
        };
        assert_eq!(first, t0 + ms(1));
        assert!(
            second >= first,
            "admitted at {:?}, before {:?}",
            second - t0,
            first - t0
        );
    }

    fn booked(d: Decision<Booking>) -> Booking {
        match d {
            Decision::Admitted(b) => b,
            other => panic!("not admitted: {other:?}"),
        }
    }

    /// `remaining` out of `limit` tokens, with a reset.
    fn tokens_left(limit: u64, remaining: u64, reset: Duration) -> ReportedLimit {
        said(Some(limit), Some(remaining), Some(reset))
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// The snapshot a booking carries: from the running sums (admitted
    /// now) or the cursor at its instant (booked later), its own cost and
    /// every booking ahead of it included, for a limit it costs nothing in
    /// too.
    #[test]
    fn a_booking_records_what_each_limit_held_as_of_its_admission() {
        let t0 = Instant::now();
        let limits = Limits::new()
            .window(Dimension::Requests, ms(1000), 3)
            .window(Dimension::Tokens, ms(1000), 100);
        let mut w = SlidingWindow::new(&limits, t0);
        let b1 = booked(w.acquire(&Costs::tokens(40), t0, None));
        assert_eq!(b1.used, UsedAtAdmission::from_slice(&[1, 40]));
        let b2 = booked(w.acquire(&Costs::tokens(50), t0 + ms(100), None));
        assert_eq!(b2.used, UsedAtAdmission::from_slice(&[2, 90]));
        // Fits when the first leaves, at 1 s: the second and itself.
        let b3 = booked(w.acquire(&Costs::tokens(30), t0 + ms(200), None));
        assert_eq!(b3.at, t0 + ms(1000));
        assert_eq!(b3.used, UsedAtAdmission::from_slice(&[2, 80]));
        // No tokens: the token window as of its instant, without it.
        let b4 = booked(w.acquire(&Costs::new(0, 0), t0 + ms(300), None));
        assert_eq!(b4.at, t0 + ms(1000));
        assert_eq!(b4.used, UsedAtAdmission::from_slice(&[3, 80]));
    }

    /// The two ways the window at the response differs from the window
    /// at the admission, neither of which the provider had counted: old
    /// entries left since (which made phantom external usage), and
    /// requests admitted since (which hid real external usage).
    #[test]
    fn remaining_is_compared_as_of_the_admission_not_the_response() {
        let t0 = Instant::now();
        let tk = Dimension::Tokens;
        let window = secs(10);
        let limits = Limits::new().window(tk, window, 1000);

        // Left since: the first leaves at 10 s, the response of the second
        // (admitted at 5 s, when 500 were used) comes back at 11 s.
        let mut w = SlidingWindow::new(&limits, t0);
        booked(w.acquire(&Costs::tokens(300), t0, None));
        let b = booked(w.acquire(&Costs::tokens(200), t0 + secs(5), None));
        let honest = tokens_left(1000, 500, window);
        let late = t0 + secs(11);
        let mut as_of_now = w.clone();
        assert_eq!(
            as_of_now.learn(tk, window, honest, None, false, None, late),
            Some(1000),
            "the rule as of now sees 300 phantom tokens"
        );
        assert_eq!(
            w.learn(tk, window, honest, Some(&b), false, None, late),
            None
        );
        assert_eq!(w.earliest(&Costs::tokens(800), late), Ok(late));
        assert!(as_of_now.earliest(&Costs::tokens(800), late).unwrap() > late);

        // Admitted since: another process used 100 tokens; the provider
        // said so at the first admission, the response comes back after
        // 500 more tokens were admitted.
        let mut w = SlidingWindow::new(&limits, t0);
        let b = booked(w.acquire(&Costs::tokens(200), t0, None));
        booked(w.acquire(&Costs::tokens(500), t0 + secs(1), None));
        let said = tokens_left(1000, 700, window);
        let now = t0 + secs(2);
        assert_eq!(
            w.clone().learn(tk, window, said, None, false, None, now),
            None,
            "the rule as of now misses them"
        );
        assert_eq!(
            w.learn(tk, window, said, Some(&b), false, None, now),
            Some(1000)
        );
        // 700 of ours and 100 of theirs: 200 left.
        assert_eq!(w.earliest(&Costs::tokens(200), now), Ok(now));
        // Theirs counts until the reset from the admission, 10 s, when the
        // first of ours leaves too.
        assert_eq!(w.earliest(&Costs::tokens(201), now), Ok(t0 + window));
    }

    /// The same external usage reported by two responses counts once; a
    /// response older than one already heard is stale.
    #[test]
    fn a_stale_or_repeated_header_does_not_count_external_usage_twice() {
        let t0 = Instant::now();
        let tk = Dimension::Tokens;
        let window = secs(10);
        let mut w = SlidingWindow::new(&Limits::new().window(tk, window, 1000), t0);
        // Another process holds 100 all along.
        let b1 = booked(w.acquire(&Costs::tokens(100), t0, None));
        let b2 = booked(w.acquire(&Costs::tokens(100), t0 + secs(1), None));
        let now = t0 + secs(2);
        let learn = |w: &mut SlidingWindow, b: &Booking, remaining| {
            w.learn(
                tk,
                window,
                tokens_left(1000, remaining, window),
                Some(b),
                false,
                None,
                now,
            )
        };
        // The newer response comes back first.
        assert_eq!(learn(&mut w, &b2, 700), Some(1000));
        assert_eq!(learn(&mut w, &b2, 700), None, "the same again");
        // The older one's view (it saw 100 external too) is stale, and so
        // is a bogus one.
        assert_eq!(learn(&mut w, &b1, 800), None);
        assert_eq!(learn(&mut w, &b1, 0), None);
        // Ours 200, theirs 100: 700 left, not 600.
        assert_eq!(w.earliest(&Costs::tokens(700), now), Ok(now));
        assert!(w.earliest(&Costs::tokens(701), now).unwrap() > now);
        // Two bookings at one instant: the later one's view replaces.
        let b3 = booked(w.acquire(&Costs::tokens(100), now, None));
        let b4 = booked(w.acquire(&Costs::tokens(100), now, None));
        assert_eq!(b3.at, b4.at);
        // Still 100 external (now until 10 s after its admission).
        assert_eq!(learn(&mut w, &b4, 500), Some(1000));
        assert_eq!(learn(&mut w, &b3, 0), None, "stale");
        assert_eq!(w.earliest(&Costs::tokens(500), now), Ok(now));
        assert!(w.earliest(&Costs::tokens(501), now).unwrap() > now);
        // A newer view with less external usage lowers it (it left).
        let b5 = booked(w.acquire(&Costs::tokens(100), now, None));
        assert_eq!(learn(&mut w, &b5, 500), Some(1000), "none left");
        assert_eq!(w.earliest(&Costs::tokens(500), now), Ok(now));
    }

    /// External usage counts until the provider's reset measured from the
    /// admission, at most one window, plus the margin; a response admitted
    /// longer ago teaches nothing.
    #[test]
    fn external_usage_expires_at_the_reset_measured_from_the_admission() {
        let t0 = Instant::now();
        let tk = Dimension::Tokens;
        let window = secs(10);
        let limits = Limits::new().window(tk, window, 1000);
        for margin in [Duration::ZERO, ms(50)] {
            let mut w = SlidingWindow::new(&limits, t0).arrival_margin(margin);
            let b = booked(w.acquire(&Costs::tokens(100), t0, None));
            let now = t0 + secs(4);
            // 400 external, until 6 s after the admission (not the response).
            let said = tokens_left(1000, 500, secs(6));
            assert_eq!(
                w.learn(tk, window, said, Some(&b), false, None, now),
                Some(1000)
            );
            assert_eq!(w.earliest(&Costs::tokens(500), now), Ok(now));
            assert_eq!(
                w.earliest(&Costs::tokens(501), now),
                Ok(t0 + secs(6) + margin)
            );
            // Expired: the key can be dropped once its entry leaves.
            assert!(!w.is_idle(t0 + secs(6) + margin));
            assert!(w.is_idle(t0 + window + margin));
            // A reset past the window is cut to one window.
            let mut w2 = SlidingWindow::new(&limits, t0).arrival_margin(margin);
            let b = booked(w2.acquire(&Costs::tokens(100), t0, None));
            let said = tokens_left(1000, 500, secs(60));
            assert_eq!(
                w2.learn(tk, window, said, Some(&b), false, None, now),
                Some(1000)
            );
            assert_eq!(w2.idle_at(), t0 + window + margin);
            // Past the reset from its admission, a response teaches nothing.
            let mut w3 = SlidingWindow::new(&limits, t0).arrival_margin(margin);
            let b = booked(w3.acquire(&Costs::tokens(100), t0, None));
            let said = tokens_left(1000, 0, secs(6));
            let late = t0 + secs(6) + margin;
            assert_eq!(
                w3.learn(tk, window, said, Some(&b), false, None, late),
                None
            );
            assert_eq!(w3.earliest(&Costs::tokens(900), late), Ok(late));
        }
    }

    /// An estimate far above the real usage: the waiter booked behind it
    /// moves to the instant the real usage leaves room for, and is told.
    #[test]
    fn a_lower_correction_moves_the_waiters_earlier() {
        let t0 = Instant::now();
        let limits = Limits::new().tokens_per_minute(100);
        let mut w = SlidingWindow::new(&limits, t0);
        let first = booked(w.acquire(&Costs::tokens(90), t0, None));
        let second = booked(w.acquire(&Costs::tokens(30), t0 + secs(1), None));
        assert_eq!(second.at, t0 + MINUTE, "waits for the first to leave");
        let third = booked(w.acquire(&Costs::tokens(30), t0 + secs(1), None));
        assert_eq!(third.at, t0 + MINUTE);
        // The first really used 20: both waiters fit at once.
        let now = t0 + secs(2);
        assert!(w.correct_and_move_waiters(first.id, &Costs::tokens(20), now));
        assert_eq!(w.booked_at(second.id), Some(now));
        assert_eq!(w.booked_at(third.id), Some(now));
        // The same charge again changes nothing and moves nobody.
        assert!(!w.correct_and_move_waiters(first.id, &Costs::tokens(20), now));
        // 20 + 30 + 30 + 30 does not fit: the fourth waits for the first.
        let fourth = booked(w.acquire(&Costs::tokens(30), now, None));
        assert_eq!(fourth.at, t0 + MINUTE);
        // The second used more than its estimate: the fourth moves later,
        // to when the second leaves (50 + 30 + 30 at t0 + 60 s is over),
        // keeping the window exact.
        assert!(w.correct_and_move_waiters(second.id, &Costs::tokens(50), now));
        assert_eq!(w.booked_at(fourth.id), Some(now + MINUTE));
    }

    /// A correction made after the admission (a lower actual usage) is not
    /// in the provider's count as of then: the room it freed stays free.
    /// What the provider still counts of it (it charges its estimate)
    /// shows in a later admission's response.
    #[test]
    fn a_correction_after_the_admission_is_not_external_usage() {
        let t0 = Instant::now();
        let tk = Dimension::Tokens;
        let window = secs(10);
        let mut w = SlidingWindow::new(&Limits::new().window(tk, window, 1000), t0);
        let b1 = booked(w.acquire(&Costs::tokens(600), t0, None));
        let b2 = booked(w.acquire(&Costs::tokens(300), t0 + secs(1), None));
        // The first used 100 of its 600.
        w.correct(b1.id, &Costs::tokens(100));
        let now = t0 + secs(3);
        let said = tokens_left(1000, 100, window);
        assert_eq!(
            w.clone().learn(tk, window, said, None, false, None, now),
            Some(1000),
            "the rule as of now sees the 500 freed as external"
        );
        assert_eq!(w.learn(tk, window, said, Some(&b2), false, None, now), None);
        assert_eq!(w.earliest(&Costs::tokens(600), now), Ok(now), "freed");
        // Admitted after the correction: we count 100 + 300 + 100, a
        // provider that charges its estimates 600 + 300 + 100.
        let b3 = booked(w.acquire(&Costs::tokens(100), now, None));
        assert_eq!(b3.used, UsedAtAdmission::from_slice(&[500]));
        let said = tokens_left(1000, 0, window);
        assert_eq!(
            w.learn(tk, window, said, Some(&b3), false, None, now),
            Some(1000)
        );
        assert_eq!(w.earliest(&Costs::tokens(1), now), Ok(t0 + window));
    }

    /// A booking moved earlier by a cancellation ahead of it is compared
    /// as of where it went (its entry's snapshot), not where it was first
    /// booked.
    #[test]
    fn a_booking_moved_by_a_cancellation_is_compared_where_it_went() {
        let t0 = Instant::now();
        let r = Dimension::Requests;
        let window = ms(1000);
        let mut w = SlidingWindow::new(&Limits::new().window(r, window, 2), t0);
        let one = Costs::new(0, 0);
        booked(w.acquire(&one, t0, None));
        let b2 = booked(w.acquire(&one, t0, None));
        let b3 = booked(w.acquire(&one, t0, None));
        assert_eq!((b3.at, b3.used.get(0)), (t0 + window, Some(1)));
        // The second is refunded (the provider refused it): the third
        // moves to 100 ms, beside the first.
        assert!(w.cancel(b2.id, t0 + ms(100)));
        assert_eq!(w.booked_at(b3.id), Some(t0 + ms(100)));
        // The provider counted the first and the third: nothing remains.
        let now = t0 + ms(200);
        let said = said(Some(2), Some(0), Some(window));
        assert_eq!(w.learn(r, window, said, Some(&b3), false, None, now), None);
        assert_eq!(w.earliest(&one, now), Ok(t0 + window));
    }

    /// Each entry counts its window plus the margin; so does what a
    /// search walks over, and the key's idle instant.
    #[test]
    fn an_arrival_margin_holds_each_admission_longer() {
        let t0 = Instant::now();
        let limits = Limits::new()
            .window(Dimension::Requests, ms(1000), 1)
            .window(Dimension::Tokens, secs(60), 1_000);
        let m = ms(250);
        let mut w = SlidingWindow::new(&limits, t0).arrival_margin(m);
        let b1 = booked(w.acquire(&Costs::tokens(600), t0, None));
        let b2 = booked(w.acquire(&Costs::tokens(400), t0, None));
        assert_eq!((b1.at, b2.at), (t0, t0 + ms(1250)));
        let b3 = booked(w.acquire(&Costs::tokens(600), t0, None));
        assert_eq!(b3.at, t0 + secs(60) + m);
        assert_eq!(b3.used, UsedAtAdmission::from_slice(&[1, 1_000]));
        assert_eq!(w.idle_at(), t0 + secs(120) + m * 2);
        assert!(!w.is_idle(t0 + secs(120) + m));
        // An absurd margin is cut to the longest window, and cannot panic.
        let mut w = SlidingWindow::new(&limits, t0).arrival_margin(Duration::MAX);
        booked(w.acquire(&Costs::tokens(600), t0, None));
        assert_eq!(
            w.earliest(&Costs::tokens(600), t0),
            Ok(t0 + secs(60) + MAX_WINDOW)
        );
    }
}
