//! Key layout 4: the name of a limiter key's hash (the scripts derive its
//! other keys from it, see `lua/common.lua`), and its limits grouped by
//! window as the scripts take them ([`Shape`]).
//!
//! The limits of one window (requests and tokens per minute) form one
//! group, with one set of cursors; a reservation has one entry for all
//! the groups, so that an acquire writes one entry, not one per limit.

use std::time::Duration;

use super::core::{micros, safe, Core};
use super::scripts::Call;
use crate::key::Key;
use crate::rate_limit::{default_arrival_margin, Costs, Dimension, Limits};

/// A key's limits as the scripts take them: grouped by window (shortest
/// first), each group's limits in the order r, t, i, o (so that every
/// process names and packs the groups alike, however its limits were
/// listed), each group with its hold (its window plus the arrival
/// margin). The numbers the scripts need of it are packed once.
#[derive(Debug)]
pub(super) struct Shape {
    groups: Vec<Group>,
    /// The groups' names joined by `,`: the last part of the key's hash
    /// name.
    sig: String,
    /// The limits in the shape's order.
    limits: Vec<ShapeLimit>,
    /// What `acquire` takes of the shape: the groups' names joined by `,`,
    /// a zero byte, then ng, per group its hold and number of limits, then
    /// each limit's configured value.
    acquire_arg: Vec<u8>,
    /// What the other scripts take: ng, then per group its hold and
    /// number of limits.
    group_nums: Vec<u8>,
}

#[derive(Debug)]
struct Group {
    /// `<codes>:<window µs>`, e.g. `rt:60000000`.
    name: String,
    window_us: u64,
    hold_us: u64,
    /// Its limits: `limits[first .. first + k]`.
    first: usize,
    k: usize,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct ShapeLimit {
    pub(super) dimension: Dimension,
    pub(super) window: Duration,
    pub(super) configured: u64,
    /// The limit's index in the key's [`Limits`] (the order of
    /// [`UsedAtAdmission`](crate::rate_limit::UsedAtAdmission)).
    pub(super) index: usize,
}

fn code(d: Dimension) -> char {
    match d {
        Dimension::Requests => 'r',
        Dimension::Tokens => 't',
        Dimension::InputTokens => 'i',
        Dimension::OutputTokens => 'o',
    }
}

fn rank(d: Dimension) -> u8 {
    match d {
        Dimension::Requests => 0,
        Dimension::Tokens => 1,
        Dimension::InputTokens => 2,
        Dimension::OutputTokens => 3,
    }
}

pub(super) fn cost_of(d: Dimension, c: &Costs) -> u64 {
    match d {
        Dimension::Requests => c.requests,
        Dimension::Tokens => c.total_tokens(),
        Dimension::InputTokens => c.input_tokens,
        Dimension::OutputTokens => c.output_tokens,
    }
}

/// Packs `x` as the scripts' little-endian double (exact: every number
/// sent is below 2^53).
pub(super) fn pack(buf: &mut Vec<u8>, x: f64) {
    buf.extend_from_slice(&x.to_le_bytes());
}

impl Shape {
    /// The shape of `limits`, each entry counting `margin(window)` longer
    /// than its window.
    pub(super) fn new(limits: &Limits, margin: impl Fn(Duration) -> Duration) -> Shape {
        let mut all: Vec<ShapeLimit> = limits
            .iter()
            .enumerate()
            .map(|(index, l)| ShapeLimit {
                dimension: l.dimension,
                window: l.window,
                configured: safe(l.limit),
                index,
            })
            .collect();
        all.sort_by_key(|l| (micros(l.window), rank(l.dimension)));
        let mut groups: Vec<Group> = Vec::new();
        for (i, l) in all.iter().enumerate() {
            let w = micros(l.window);
            match groups.last_mut() {
                Some(g) if g.window_us == w => g.k += 1,
                _ => groups.push(Group {
                    name: String::new(),
                    window_us: w,
                    hold_us: micros(l.window.saturating_add(margin(l.window))),
                    first: i,
                    k: 1,
                }),
            }
        }
        let mut acquire_nums = Vec::new();
        let mut group_nums = Vec::new();
        pack(&mut acquire_nums, groups.len() as f64);
        pack(&mut group_nums, groups.len() as f64);
        for g in &mut groups {
            let members = &all[g.first..g.first + g.k];
            let codes: String = members.iter().map(|l| code(l.dimension)).collect();
            g.name = format!("{codes}:{}", g.window_us);
            for nums in [&mut acquire_nums, &mut group_nums] {
                pack(nums, g.hold_us as f64);
                pack(nums, g.k as f64);
            }
            for l in members {
                pack(&mut acquire_nums, l.configured as f64);
            }
        }
        let sig = groups
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut acquire_arg = sig.clone().into_bytes();
        acquire_arg.push(0);
        acquire_arg.extend_from_slice(&acquire_nums);
        Shape {
            groups,
            sig,
            limits: all,
            acquire_arg,
            group_nums,
        }
    }

    /// The limits in the shape's order (the order of `acquire`'s costs
    /// and answers).
    pub(super) fn limits(&self) -> &[ShapeLimit] {
        &self.limits
    }

    /// The longest hold of the shape (how long a reservation counts at
    /// most).
    pub(super) fn longest_hold(&self) -> Duration {
        Duration::from_micros(self.groups.iter().map(|g| g.hold_us).max().unwrap_or(0))
    }

    /// `acquire`'s argument for the shape.
    pub(super) fn acquire_arg(&self) -> &[u8] {
        &self.acquire_arg
    }

    /// The groups' names, in order.
    pub(super) fn names(&self) -> impl Iterator<Item = &str> {
        self.groups.iter().map(|g| g.name.as_str())
    }

    /// The other scripts' group section: the numbers after `nums`, then the
    /// names after the call's arguments so far.
    pub(super) fn add_groups(&self, call: &mut Call, mut nums: Vec<u8>) {
        nums.extend_from_slice(&self.group_nums);
        call.arg(nums);
        for n in self.names() {
            call.arg(n);
        }
    }

    /// The limit of `dimension` over `window`: its index in the shape
    /// (from 1, as the scripts count), the limit, and its window's arrival
    /// margin in µs.
    pub(super) fn find(
        &self,
        dimension: Dimension,
        window: Duration,
    ) -> Option<(usize, ShapeLimit, u64)> {
        let l = self
            .limits
            .iter()
            .position(|l| l.dimension == dimension && l.window == window)?;
        let g = self
            .groups
            .iter()
            .find(|g| (g.first..g.first + g.k).contains(&l))?;
        Some((l + 1, self.limits[l], g.hold_us - g.window_us))
    }
}

impl Core {
    /// The hash of `key` with `shape`, `{<prefix>:<key>}:4:<groups>`
    /// (`{tlr:k}:4:rt:60000000`): every key of the limiter key is under
    /// `{<prefix>:<key>}:4:`, so that no name is one of an older layout's,
    /// named after its limits, so that processes configured otherwise for
    /// the key keep their own; the scripts derive the others from it.
    pub(super) fn hash_key(&self, key: &Key, shape: &Shape) -> String {
        format!("{{{}:{}}}:4:{}", self.prefix, key, shape.sig)
    }

    /// The default arrival margin, or the one set.
    pub(super) fn margin(&self, window: Duration) -> Duration {
        match self.arrival_margin {
            Some(m) => m,
            None => default_arrival_margin(window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &Shape) -> Vec<&str> {
        s.names().collect()
    }

    #[test]
    fn limits_are_grouped_by_window_in_one_order() {
        let a = Limits::new()
            .tokens_per_minute(2)
            .requests_per_day(3)
            .requests_per_minute(1)
            .window(Dimension::OutputTokens, Duration::from_millis(1_500), 4);
        let b = Limits::new()
            .window(Dimension::OutputTokens, Duration::from_millis(1_500), 4)
            .requests_per_minute(1)
            .requests_per_day(3)
            .tokens_per_minute(2);
        for l in [&a, &b] {
            let s = Shape::new(l, |_| Duration::ZERO);
            assert_eq!(names(&s), ["o:1500000", "rt:60000000", "r:86400000000"]);
            let limits: Vec<_> = s.limits().iter().map(|l| l.configured).collect();
            assert_eq!(limits, [4, 1, 2, 3]);
        }
        // Each limit knows its place in the key's own order.
        let s = Shape::new(&a, |_| Duration::ZERO);
        let index: Vec<_> = s.limits().iter().map(|l| l.index).collect();
        assert_eq!(index, [3, 2, 0, 1]);
        assert!(Shape::new(&Limits::new(), |_| Duration::ZERO)
            .names()
            .next()
            .is_none());
    }

    #[test]
    fn each_group_holds_its_window_plus_the_margin() {
        let l = Limits::new().requests_per_minute(1).window(
            Dimension::Tokens,
            Duration::from_secs(2),
            1,
        );
        let s = Shape::new(&l, default_arrival_margin);
        // 2 s: a twentieth, 100 ms; a minute: 250 ms.
        assert_eq!(
            s.find(Dimension::Tokens, Duration::from_secs(2))
                .map(|(l, _, m)| (l, m)),
            Some((1, 100_000))
        );
        assert_eq!(
            s.find(Dimension::Requests, Duration::from_secs(60))
                .map(|(l, limit, m)| (l, limit.index, m)),
            Some((2, 0, 250_000))
        );
        assert_eq!(s.sig, "t:2000000,r:60000000");
        assert_eq!(s.longest_hold(), Duration::from_millis(60_250));
        assert!(s
            .find(Dimension::Requests, Duration::from_secs(2))
            .is_none());
        // An absurd margin cannot overflow.
        let s = Shape::new(&l, |_| Duration::MAX);
        assert_eq!(
            s.longest_hold(),
            Duration::from_micros(super::super::core::MAX_SAFE)
        );
    }
}
