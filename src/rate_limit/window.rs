//! The pure algorithm: an exact sliding-window log over several dimensions,
//! driven by an explicit `now`. No tower, no locks, no timers.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Costs {
    /// Requests: 1 for every request.
    pub requests: u64,
    /// Estimated (or, after correction, actual) input tokens.
    pub input_tokens: u64,
    /// Estimated (or actual) output tokens.
    pub output_tokens: u64,
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
    /// names the reservation for [`Window::cancel`] and [`Window::correct`].
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
    /// The cost exceeds a dimension's whole capacity: it never fits.
    Never {
        /// The cost in the offending dimension.
        cost: u64,
        /// That dimension's capacity.
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

#[derive(Clone, Debug)]
struct DimState {
    limit: Limit,
    configured: u64,
    /// Admitted entries in admission order (times never decrease).
    log: VecDeque<Entry>,
    /// Sum of `log`'s costs.
    sum: u64,
    external: Option<External>,
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
        if let Some(x) = self.external {
            if x.until <= now {
                self.external = None;
            }
        }
    }

    /// The earliest `t >= base` (with `base` at or after every entry) at
    /// which the entries in `(t - window, t]` leave room for `cost` within
    /// `budget`, or `None` if `cost > budget`.
    fn earliest_with(&self, base: Instant, cost: u64, budget: u64) -> Option<Instant> {
        if cost > budget {
            return None;
        }
        let allowed = budget - cost;
        let mut sum = self.sum;
        let mut t = base;
        for e in &self.log {
            if sum <= allowed {
                break;
            }
            sum = sum.saturating_sub(e.cost);
            t = t.max(e.at + self.limit.window);
        }
        Some(t)
    }

    fn earliest(&self, base: Instant, cost: u64) -> Option<Instant> {
        let capacity = self.limit.limit;
        let plain = self.earliest_with(base, cost, capacity)?;
        match self.external {
            Some(x) if plain < x.until => {
                match self.earliest_with(base, cost, capacity.saturating_sub(x.cost)) {
                    Some(t) if t < x.until => Some(t),
                    _ => Some(x.until),
                }
            }
            _ => Some(plain),
        }
    }

    fn used_at(&self, now: Instant) -> u64 {
        let window_start = now.checked_sub(self.limit.window);
        let seen: u64 = self
            .log
            .iter()
            .filter(|e| e.at <= now && window_start.is_none_or(|s| e.at > s))
            .map(|e| e.cost)
            .sum();
        let ext = self
            .external
            .filter(|x| x.until > now)
            .map_or(0, |x| x.cost);
        seen.saturating_add(ext)
    }
}

/// The limiter state of one key: an exact sliding-window log per limit, a
/// shared gate, and the learned view of the provider's budget.
///
/// Exactness: over any half-open interval `[a, a + window)`, the costs
/// admitted in it never exceed the limit (before [`Window::correct`] changes
/// a charge after the fact). Admission is first-come first-served: a
/// request is admitted at the earliest instant, not before any earlier
/// reservation of this key, at which it fits in every limit. Memory: one
/// 24-byte entry per admitted request still inside a window, pruned on
/// every decision.
#[derive(Clone, Debug)]
pub struct Window {
    dims: Vec<DimState>,
    /// No admission before this instant (the shared Retry-After gate).
    gate: Option<Instant>,
    /// The latest reservation's admission instant (FIFO: nobody overtakes).
    last: Option<Instant>,
    next_id: u64,
    last_used: Instant,
}

impl Window {
    /// A fresh window for `limits`.
    pub fn new(limits: &Limits, now: Instant) -> Self {
        Window {
            dims: limits
                .iter()
                .map(|&limit| DimState {
                    limit,
                    configured: limit.limit,
                    log: VecDeque::new(),
                    sum: 0,
                    external: None,
                })
                .collect(),
            gate: None,
            last: None,
            next_id: 0,
            last_used: now,
        }
    }

    /// Drops everything that no longer counts at `now`.
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
    /// reserving; `Err((cost, capacity))` when it never fits.
    pub fn earliest(&self, costs: &Costs, now: Instant) -> Result<Instant, (u64, u64)> {
        self.earliest_by(now, |_, d| d.cost(costs))
    }

    /// `earliest` with the cost of each limit (by index) given directly.
    fn earliest_by(
        &self,
        now: Instant,
        cost_of: impl Fn(usize, Dimension) -> u64,
    ) -> Result<Instant, (u64, u64)> {
        let mut t = now;
        if let Some(g) = self.gate {
            t = t.max(g);
        }
        if let Some(l) = self.last {
            t = t.max(l);
        }
        let base = t;
        for (k, d) in self.dims.iter().enumerate() {
            let cost = cost_of(k, d.limit.dimension);
            if cost == 0 {
                continue;
            }
            match d.earliest(base, cost) {
                Some(at) => t = t.max(at),
                None => return Err((cost, d.limit.limit)),
            }
        }
        Ok(t)
    }

    /// Reserves `costs` at the earliest instant it fits, unless that is
    /// after `deadline`.
    pub fn acquire(&mut self, costs: &Costs, now: Instant, deadline: Option<Instant>) -> Admission {
        self.prune(now);
        self.last_used = now;
        let at = match self.earliest(costs, now) {
            Ok(at) => at,
            Err((cost, capacity)) => return Admission::Never { cost, capacity },
        };
        if deadline.is_some_and(|d| at > d) {
            return Admission::TooLate { at };
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
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
        Admission::Reserved { id, at }
    }

    /// Takes back reservation `id` entirely (a request that was never sent:
    /// its future was dropped while waiting), then books every reservation
    /// made after it again, in order, at the earliest instant it now fits
    /// (never later than before). Returns whether any of them moved, so
    /// that their waiters can be woken early.
    pub fn cancel(&mut self, id: u64, now: Instant) -> bool {
        for d in &mut self.dims {
            if let Some(i) = find(&d.log, id) {
                if let Some(e) = d.log.remove(i) {
                    d.sum = d.sum.saturating_sub(e.cost);
                }
            }
        }
        // Reservations booked after it and still waiting sit at the logs' tails.
        let n = self.dims.len();
        let mut later: Vec<(u64, Instant, Vec<u64>)> = Vec::new();
        for (k, d) in self.dims.iter_mut().enumerate() {
            while let Some(&e) = d.log.back() {
                if e.id <= id || e.at <= now {
                    break;
                }
                d.log.pop_back();
                d.sum = d.sum.saturating_sub(e.cost);
                match later.iter_mut().find(|x| x.0 == e.id) {
                    Some(x) => x.2[k] = e.cost,
                    None => {
                        let mut costs = vec![0; n];
                        costs[k] = e.cost;
                        later.push((e.id, e.at, costs));
                    }
                }
            }
        }
        self.last = self.latest();
        later.sort_unstable_by_key(|x| x.0);
        let mut moved = false;
        for (eid, old, costs) in later {
            // Never later than before: it fitted there with more booked.
            let at = self
                .earliest_by(now, |k, _| costs[k])
                .map_or(old, |t| t.min(old));
            for (k, d) in self.dims.iter_mut().enumerate() {
                if costs[k] > 0 {
                    d.log.push_back(Entry {
                        at,
                        id: eid,
                        cost: costs[k],
                    });
                    d.sum = d.sum.saturating_add(costs[k]);
                }
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
    pub fn gate(&mut self, until: Instant) {
        self.gate = Some(self.gate.map_or(until, |g| g.max(until)));
    }

    /// The gate, if closed at `now`.
    pub fn gate_until(&self, now: Instant) -> Option<Instant> {
        self.gate.filter(|g| *g > now)
    }

    /// Takes in what the provider said about one dimension over `window`:
    /// `remaining` units left until `reset`, out of `limit`.
    ///
    /// - When the provider says less remains than we think, the difference
    ///   counts as external usage until the reset (never loosens).
    /// - A provider `limit` below the configured one lowers ours; above it
    ///   raises ours only if `learn_limits` (never above the provider's).
    ///
    /// Returns the limit now in force when it changed or usage was added.
    #[allow(clippy::too_many_arguments)]
    pub fn learn(
        &mut self,
        dimension: Dimension,
        window: Duration,
        limit: Option<u64>,
        remaining: Option<u64>,
        reset: Option<Duration>,
        learn_limits: bool,
        now: Instant,
    ) -> Option<u64> {
        self.prune(now);
        let d = self
            .dims
            .iter_mut()
            .find(|d| d.limit.dimension == dimension && d.limit.window == window)?;
        let mut changed = false;
        if let Some(l) = limit {
            let new = if learn_limits { l } else { l.min(d.configured) };
            if new != d.limit.limit {
                d.limit.limit = new;
                changed = true;
            }
        }
        if let Some(r) = remaining {
            let used = d.used_at(now);
            let ours = d.limit.limit.saturating_sub(used);
            if r < ours {
                let extra = ours - r;
                let until = now + reset.unwrap_or(d.limit.window).min(d.limit.window);
                let old = d.external.map_or(0, |x| x.cost);
                d.external = Some(External {
                    cost: old.saturating_add(extra),
                    until: d.external.map_or(until, |x| x.until.max(until)),
                });
                changed = true;
            }
        }
        changed.then_some(d.limit.limit)
    }

    /// The limit in force for `dimension` over `window`.
    pub fn limit_of(&self, dimension: Dimension, window: Duration) -> Option<u64> {
        self.dims
            .iter()
            .find(|d| d.limit.dimension == dimension && d.limit.window == window)
            .map(|d| d.limit.limit)
    }

    /// Whether the window holds nothing that matters at `now`: dropping it
    /// would lose no information (its limits aside, which come back from
    /// configuration).
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
    // only after 2^64 reservations of one key).
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
        let mut w = Window::new(&limits, t0);
        let one = Costs::new(0, 0);
        assert!(matches!(w.acquire(&one, t0, None), Admission::Reserved { at, .. } if at == t0));
        let t1 = t0 + ms(300);
        assert!(matches!(w.acquire(&one, t1, None), Admission::Reserved { at, .. } if at == t1));
        // Third: room frees when the first leaves the window at t0 + 1000.
        assert!(
            matches!(w.acquire(&one, t1, None), Admission::Reserved { at, .. } if at == t0 + ms(1000))
        );
        // Fourth (FIFO after it): the second leaves at t1 + 1000.
        assert!(
            matches!(w.acquire(&one, t1, None), Admission::Reserved { at, .. } if at == t1 + ms(1000))
        );
    }

    #[test]
    fn oversize_never_fits() {
        let t0 = Instant::now();
        let limits = Limits::new().tokens_per_minute(100);
        let mut w = Window::new(&limits, t0);
        assert_eq!(
            w.acquire(&Costs::tokens(101), t0, None),
            Admission::Never {
                cost: 101,
                capacity: 100
            }
        );
    }

    #[test]
    fn deadline_reserves_nothing() {
        let t0 = Instant::now();
        let limits = Limits::new().tokens_per_minute(100);
        let mut w = Window::new(&limits, t0);
        assert!(matches!(
            w.acquire(&Costs::tokens(80), t0, None),
            Admission::Reserved { .. }
        ));
        assert_eq!(
            w.acquire(&Costs::tokens(80), t0, Some(t0 + ms(10))),
            Admission::TooLate { at: t0 + MINUTE }
        );
        assert_eq!(w.entries(), 1);
    }

    #[test]
    fn cancel_and_correct_free_room() {
        let t0 = Instant::now();
        let limits = Limits::new().tokens_per_minute(100);
        let mut w = Window::new(&limits, t0);
        let Admission::Reserved { id, .. } = w.acquire(&Costs::tokens(90), t0, None) else {
            panic!()
        };
        assert_eq!(w.earliest(&Costs::tokens(20), t0), Ok(t0 + MINUTE));
        w.correct(id, &Costs::tokens(50));
        assert_eq!(w.earliest(&Costs::tokens(20), t0), Ok(t0));
        w.cancel(id, t0);
        assert_eq!(w.earliest(&Costs::tokens(100), t0), Ok(t0));
    }

    #[test]
    fn learning_tightens_until_reset_and_never_loosens() {
        let t0 = Instant::now();
        let limits = Limits::new().requests_per_minute(100);
        let mut w = Window::new(&limits, t0);
        // Provider says only 1 remains, resetting in 10 s.
        assert_eq!(
            w.learn(
                Dimension::Requests,
                MINUTE,
                Some(100),
                Some(1),
                Some(Duration::from_secs(10)),
                false,
                t0
            ),
            Some(100)
        );
        assert!(
            matches!(w.acquire(&Costs::new(0, 0), t0, None), Admission::Reserved { at, .. } if at == t0)
        );
        assert!(
            matches!(w.acquire(&Costs::new(0, 0), t0, None), Admission::Reserved { at, .. } if at == t0 + Duration::from_secs(10))
        );
        // A higher provider limit does not loosen without opt-in.
        w.learn(
            Dimension::Requests,
            MINUTE,
            Some(1000),
            None,
            None,
            false,
            t0,
        );
        assert_eq!(w.limit_of(Dimension::Requests, MINUTE), Some(100));
        w.learn(
            Dimension::Requests,
            MINUTE,
            Some(1000),
            None,
            None,
            true,
            t0,
        );
        assert_eq!(w.limit_of(Dimension::Requests, MINUTE), Some(1000));
        w.learn(Dimension::Requests, MINUTE, Some(10), None, None, false, t0);
        assert_eq!(w.limit_of(Dimension::Requests, MINUTE), Some(10));
    }

    #[test]
    fn absurd_inputs_do_not_panic() {
        let t0 = Instant::now();
        let limits = Limits::new()
            .window(Dimension::Tokens, Duration::MAX, u64::MAX)
            .window(Dimension::Requests, Duration::from_nanos(1), 0);
        let mut w = Window::new(&limits, t0);
        assert!(matches!(
            w.acquire(&Costs::tokens(u64::MAX), t0, None),
            Admission::Never { .. }
        ));
        let limits = Limits::new().window(Dimension::Tokens, Duration::MAX, u64::MAX);
        let mut w = Window::new(&limits, t0);
        assert!(matches!(
            w.acquire(&Costs::new(u64::MAX, u64::MAX), t0, None),
            Admission::Reserved { .. }
        ));
        assert!(matches!(
            w.acquire(&Costs::tokens(1), t0, Some(t0)),
            Admission::TooLate { .. }
        ));
        w.learn(
            Dimension::Tokens,
            MAX_WINDOW,
            Some(0),
            Some(0),
            Some(Duration::MAX),
            false,
            t0,
        );
        w.prune(t0 + Duration::from_secs(1));
    }

    #[test]
    fn gate_holds_everything() {
        let t0 = Instant::now();
        let limits = Limits::new().requests_per_minute(100);
        let mut w = Window::new(&limits, t0);
        w.gate(t0 + ms(500));
        assert!(
            matches!(w.acquire(&Costs::new(0, 0), t0, None), Admission::Reserved { at, .. } if at == t0 + ms(500))
        );
    }
}
