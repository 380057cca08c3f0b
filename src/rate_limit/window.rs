//! The pure algorithm: an exact sliding-window log over several dimensions,
//! driven by an explicit `now`. No tower, no locks, no timers.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::ReportedLimit;

/// What a limit counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dimension {
    /// Requests (each request costs 1).
    Requests,
    /// Tokens, input plus output (OpenAI's TPM).
    Tokens,
    /// Input (prompt) tokens only (Anthropic's ITPM).
    InputTokens,
    /// Output (completion) tokens only (Anthropic's OTPM).
    OutputTokens,
}

impl Dimension {
    /// The dimension's name in events: `"requests"`, `"tokens"`,
    /// `"input_tokens"`, `"output_tokens"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
            Dimension::InputTokens => "input_tokens",
            Dimension::OutputTokens => "output_tokens",
        }
    }

    fn cost(self, costs: &Costs) -> u64 {
        match self {
            Dimension::Requests => costs.requests,
            Dimension::Tokens => costs.input_tokens.saturating_add(costs.output_tokens),
            Dimension::InputTokens => costs.input_tokens,
            Dimension::OutputTokens => costs.output_tokens,
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one request costs in each dimension.
///
/// `tokens` is always `input_tokens + output_tokens`.
///
/// [`Costs::default()`] is **one request** with no tokens (the same as
/// `Costs::new(0, 0)`), so that an estimator that writes
/// `Costs { input_tokens: n, ..Costs::default() }` is still counted by the
/// request limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Costs {
    /// Requests: 1 for every request.
    pub requests: u64,
    /// Estimated (or, after correction, actual) input tokens.
    pub input_tokens: u64,
    /// Estimated (or actual) output tokens.
    pub output_tokens: u64,
}

impl Default for Costs {
    /// One request, no tokens: every request counts against the request
    /// limits, whatever its estimator forgot to say.
    fn default() -> Self {
        Costs::new(0, 0)
    }
}

impl Costs {
    /// One request with the given token estimates.
    pub const fn new(input_tokens: u64, output_tokens: u64) -> Self {
        Costs {
            requests: 1,
            input_tokens,
            output_tokens,
        }
    }

    /// One request with a total token estimate that is not split into input
    /// and output (counted as input).
    pub const fn tokens(total: u64) -> Self {
        Costs::new(total, 0)
    }

    /// Total tokens.
    pub const fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// One limit: at most `limit` units of `dimension` over any interval of
/// length `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// What is counted.
    pub dimension: Dimension,
    /// The window's length.
    pub window: Duration,
    /// The most that may be admitted in any interval of that length.
    pub limit: u64,
}

/// The set of limits of one key, built with per-minute and per-day
/// shorthands or any window with [`Limits::window`].
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::rate_limit::{Dimension, Limits};
///
/// // OpenAI tier 1 for gpt-4o-mini: 500 RPM, 200k TPM, 10k RPD.
/// let openai = Limits::new()
///     .requests_per_minute(500)
///     .tokens_per_minute(200_000)
///     .requests_per_day(10_000);
/// // Anthropic counts input and output tokens separately.
/// let anthropic = Limits::new()
///     .requests_per_minute(50)
///     .input_tokens_per_minute(30_000)
///     .output_tokens_per_minute(8_000);
/// // Any window: 3 requests per 2 seconds.
/// let short = Limits::new().window(Dimension::Requests, Duration::from_secs(2), 3);
/// # let _ = (openai, anthropic, short);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    limits: Vec<Limit>,
}

const MINUTE: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The longest a learned limit lasts by default: a learned limit expires
/// its limit's window after the provider last said it, but never later
/// than this (10 minutes), so that a per-day limit learned from one odd
/// response does not hold for a day. See [`default_learned_ttl`].
pub const DEFAULT_LEARNED_TTL_CAP: Duration = Duration::from_secs(10 * 60);

/// How long a limit learned for a limit of this window holds by default:
/// the window, at most [`DEFAULT_LEARNED_TTL_CAP`] (60 s for a per-minute
/// limit, 10 minutes for a per-day one).
pub fn default_learned_ttl(window: Duration) -> Duration {
    window.min(DEFAULT_LEARNED_TTL_CAP)
}

impl Limits {
    /// No limits (everything is admitted at once).
    pub const fn new() -> Self {
        Limits { limits: Vec::new() }
    }

    /// Adds (or replaces) the limit of `dimension` over `window`. A zero
    /// window is ignored; a window longer than a year is cut to a year
    /// (so that no instant arithmetic can overflow).
    pub fn window(mut self, dimension: Dimension, window: Duration, limit: u64) -> Self {
        if window.is_zero() {
            return self;
        }
        let window = window.min(MAX_WINDOW);
        match self
            .limits
            .iter_mut()
            .find(|l| l.dimension == dimension && l.window == window)
        {
            Some(l) => l.limit = limit,
            None => self.limits.push(Limit {
                dimension,
                window,
                limit,
            }),
        }
        self
    }

    /// At most `n` requests per minute (RPM).
    pub fn requests_per_minute(self, n: u64) -> Self {
        self.window(Dimension::Requests, MINUTE, n)
    }

    /// At most `n` requests per day (RPD; Groq, Gemini free tiers).
    pub fn requests_per_day(self, n: u64) -> Self {
        self.window(Dimension::Requests, DAY, n)
    }

    /// At most `n` tokens (input + output) per minute (TPM).
    pub fn tokens_per_minute(self, n: u64) -> Self {
        self.window(Dimension::Tokens, MINUTE, n)
    }

    /// At most `n` tokens per day (TPD).
    pub fn tokens_per_day(self, n: u64) -> Self {
        self.window(Dimension::Tokens, DAY, n)
    }

    /// At most `n` input tokens per minute (Anthropic ITPM).
    pub fn input_tokens_per_minute(self, n: u64) -> Self {
        self.window(Dimension::InputTokens, MINUTE, n)
    }

    /// At most `n` output tokens per minute (Anthropic OTPM).
    pub fn output_tokens_per_minute(self, n: u64) -> Self {
        self.window(Dimension::OutputTokens, MINUTE, n)
    }

    /// The limits, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Limit> + '_ {
        self.limits.iter()
    }

    /// Whether any limit counts tokens (so that a request's token cost must
    /// be estimated).
    pub fn counts_tokens(&self) -> bool {
        self.limits
            .iter()
            .any(|l| l.dimension != Dimension::Requests)
    }
}

/// The outcome of asking the window to admit a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Reserved: the request may start at `at` (`now` or later). `id`
    /// names the reservation for [`SlidingWindow::cancel`] and [`SlidingWindow::correct`].
    Reserved {
        /// The reservation's id.
        id: u64,
        /// The admission instant.
        at: Instant,
    },
    /// It would fit only at `at`, later than the caller's deadline; nothing
    /// was reserved.
    TooLate {
        /// The earliest admission instant.
        at: Instant,
    },
    /// The cost exceeds a dimension's whole *configured* capacity: it
    /// never fits. (A cost above a learned, lower limit only waits until
    /// that limit expires.)
    Never {
        /// The cost in the offending dimension.
        cost: u64,
        /// That dimension's configured capacity.
        capacity: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    at: Instant,
    id: u64,
    cost: u64,
}

/// Usage the provider reported that we did not see (another process on the
/// same key, or estimates that were low): it counts until `until`.
#[derive(Clone, Copy, Debug)]
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
    /// Admitted entries in admission order (times never decrease).
    log: VecDeque<Entry>,
    /// Sum of `log`'s costs.
    sum: u64,
    external: Option<External>,
    learned: Option<Learned>,
}

impl DimState {
    fn prune(&mut self, now: Instant) {
        while let Some(e) = self.log.front() {
            if e.at + self.limit.window <= now {
                self.sum = self.sum.saturating_sub(e.cost);
                self.log.pop_front();
            } else {
                break;
            }
        }
        if self.external.is_some_and(|x| x.until <= now) {
            self.external = None;
        }
        if self.learned.is_some_and(|l| l.until <= now) {
            self.learned = None;
        }
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
                    let out = e.at + self.limit.window;
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
            if e.at + self.limit.window > t {
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
/// every limit. Memory: one 24-byte entry per admitted request still inside
/// a window, pruned on every decision.
///
/// See [`SlidingWindow::learn`] for what is learned from a provider, and for how
/// long.
#[derive(Clone, Debug)]
pub struct SlidingWindow {
    dims: Vec<DimState>,
    /// No admission before this instant (the shared Retry-After gate).
    gate: Option<Instant>,
    /// The latest reservation's admission instant (FIFO: nobody overtakes).
    last: Option<Instant>,
    next_id: u64,
    last_used: Instant,
}

impl SlidingWindow {
    /// A fresh window for `limits`.
    pub fn new(limits: &Limits, now: Instant) -> Self {
        SlidingWindow {
            dims: limits
                .iter()
                .map(|&limit| DimState {
                    limit,
                    log: VecDeque::new(),
                    sum: 0,
                    external: None,
                    learned: None,
                })
                .collect(),
            gate: None,
            last: None,
            next_id: 0,
            last_used: now,
        }
    }

    /// Drops everything that no longer counts at `now`, including learned
    /// limits and external usage that expired.
    pub fn prune(&mut self, now: Instant) {
        for d in &mut self.dims {
            d.prune(now);
        }
        if self.gate.is_some_and(|g| g <= now) {
            self.gate = None;
        }
        if self.last.is_some_and(|l| l <= now) {
            self.last = None;
        }
    }

    /// The earliest instant at or after `now` at which `costs` fits, without
    /// reserving; `Err((cost, capacity))` when it never fits (its cost
    /// exceeds a configured capacity).
    pub fn earliest(&self, costs: &Costs, now: Instant) -> Result<Instant, (u64, u64)> {
        self.earliest_by(now, |_, d| d.cost(costs), |k| self.dims[k].cursor())
    }

    /// `earliest` with the cost of each limit (by index) given directly,
    /// searching each log from its cursor.
    fn earliest_by(
        &self,
        now: Instant,
        cost_of: impl Fn(usize, Dimension) -> u64,
        cursor_of: impl Fn(usize) -> Cursor,
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
                match d.earliest_from(cursor_of(k), t, cost) {
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
        self.prune(now);
        self.last_used = now;
        let at = match self.earliest(costs, now) {
            Ok(at) => at,
            Err((cost, capacity)) => return Decision::Never { cost, capacity },
        };
        if deadline.is_some_and(|d| at > d) {
            return Decision::TooLate(at);
        }
        for d in &mut self.dims {
            let cost = d.limit.dimension.cost(costs);
            if cost == 0 {
                continue;
            }
            d.log.push_back(Entry { at, id, cost });
            d.sum = d.sum.saturating_add(cost);
        }
        if at > now {
            self.last = Some(at);
        }
        Decision::Admitted(Booking { id, at })
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
        // The waiting reservations sit at the logs' tails, in id order.
        let mut tails: Vec<VecDeque<Entry>> = Vec::with_capacity(self.dims.len());
        for d in &mut self.dims {
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
        self.last = self.latest().filter(|&l| l > now);
        let mut cursors: Vec<Cursor> = self.dims.iter().map(DimState::cursor).collect();
        let mut moved = false;
        // Merge the tails by id: one waiter at a time, its cost in each
        // limit (0 where it has no entry).
        while let Some(id) = tails.iter().filter_map(|t| t.front().map(|e| e.id)).min() {
            let head = |k: usize| tails[k].front().filter(|e| e.id == id);
            let old = (0..tails.len())
                .find_map(|k| head(k).map(|e| e.at))
                .unwrap_or(now);
            let at =
                match self.earliest_by(now, |k, _| head(k).map_or(0, |e| e.cost), |k| cursors[k]) {
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
            for (k, d) in self.dims.iter().enumerate() {
                d.advance(&mut cursors[k], at);
            }
            if at > now {
                self.last = Some(self.last.map_or(at, |l| l.max(at)));
            }
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
    /// once; a higher one counts from the original admission instant.
    pub fn correct(&mut self, id: u64, actual: &Costs) {
        for d in &mut self.dims {
            if d.limit.dimension == Dimension::Requests {
                continue;
            }
            let cost = d.limit.dimension.cost(actual);
            if let Some(i) = find(&d.log, id) {
                let e = &mut d.log[i];
                d.sum = d.sum.saturating_sub(e.cost).saturating_add(cost);
                e.cost = cost;
            }
        }
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
    /// `state.limit`. Returns the limit now in force when it changed or
    /// usage was added.
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
    /// - **Remaining**: when the provider says less remains than we think,
    ///   the difference counts as external usage until the reset, capped at
    ///   the window (so at most one window); a higher `remaining` never
    ///   loosens.
    pub fn learn(
        &mut self,
        dimension: Dimension,
        window: Duration,
        state: ReportedLimit,
        learn_limits: bool,
        learned_ttl: Option<Duration>,
        now: Instant,
    ) -> Option<u64> {
        self.prune(now);
        let d = self
            .dims
            .iter_mut()
            .find(|d| d.limit.dimension == dimension && d.limit.window == window)?;
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
            let used = d.used_at(now);
            let ours = d.limit_at(now).saturating_sub(used);
            if r < ours {
                let extra = ours - r;
                let until = now + state.reset.unwrap_or(d.limit.window).min(d.limit.window);
                let old = d.external.map_or(0, |x| x.cost);
                d.external = Some(External {
                    cost: old.saturating_add(extra),
                    until: d.external.map_or(until, |x| x.until.max(until)),
                });
                changed = true;
            }
        }
        changed.then_some(d.limit_at(now))
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
                t = t.max(e.at + d.limit.window);
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
                d.log.back().is_none_or(|e| e.at + d.limit.window <= now)
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
        assert_eq!(w.learn(r, MINUTE, state, false, None, t0), Some(100));
        assert!(
            matches!(w.acquire(&Costs::new(0, 0), t0, None), Decision::Admitted(Booking { at, .. }) if at == t0)
        );
        assert!(
            matches!(w.acquire(&Costs::new(0, 0), t0, None), Decision::Admitted(Booking { at, .. }) if at == t0 + Duration::from_secs(10))
        );
        // A higher provider limit does not loosen without opt-in.
        w.learn(r, MINUTE, said(Some(1000), None, None), false, None, t0);
        assert_eq!(w.limit_of(r, MINUTE, t0), Some(100));
        w.learn(r, MINUTE, said(Some(1000), None, None), true, None, t0);
        assert_eq!(w.limit_of(r, MINUTE, t0), Some(1000));
        w.learn(r, MINUTE, said(Some(10), None, None), false, None, t0);
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
        assert_eq!(w.learn(r, MINUTE, limit(0), true, None, t0), None);
        assert_eq!(w.limit_of(r, MINUTE, t0), Some(100));
        // Floor: 100 / 10; 1000 / 10 for the per-day limit.
        assert_eq!(w.learn(r, MINUTE, limit(1), false, None, t0), Some(10));
        assert_eq!(w.learn(r, day, limit(3), false, None, t0), Some(100));
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
            w.learn(r, MINUTE, limit(1), false, None, t1),
            None,
            "no change"
        );
        assert_eq!(w.limit_of(r, MINUTE, t0 + ms(89_999)), Some(10));
        assert_eq!(w.limit_of(r, MINUTE, t0 + ms(90_000)), Some(100));
        // The configured limit said again ends it at once.
        assert_eq!(w.learn(r, MINUTE, limit(100), false, None, t1), Some(100));
        // Bound: at most 100 times the configured limit.
        assert_eq!(
            w.learn(r, MINUTE, limit(u64::MAX), true, None, t1),
            Some(10_000)
        );
        // A chosen ttl.
        let ttl = Some(Duration::from_secs(5));
        assert_eq!(w.learn(r, MINUTE, limit(20), false, ttl, t1), Some(20));
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
            w.learn(tk, MINUTE, limit(2_000), false, None, t0),
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
        assert_eq!(w.learn(r, MINUTE, limit(5), true, None, t0), None);
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
            w.learn(Dimension::Requests, ms(2000), state, true, ttl, t0),
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
            true,
            Some(Duration::MAX),
            t0,
        );
        w.learn(
            Dimension::Tokens,
            MAX_WINDOW,
            said(Some(u64::MAX), Some(u64::MAX), Some(Duration::MAX)),
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
}
