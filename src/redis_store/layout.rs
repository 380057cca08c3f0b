//! Key layout 3: the names of a limiter key's Redis keys, and its limits
//! grouped by window as the scripts take them (see `lua/common.lua`).
//!
//! The limits of one window (requests and tokens per minute) form one
//! group: one entry per reservation, one set of cursors, one field of
//! state, so that an acquire writes one entry, not one per limit.

use super::core::{micros, Core};
use super::scripts::Call;
use crate::key::Key;
use crate::rate_limit::{Costs, Dimension, Limit, Limits};

/// The limits of one window, in the order r, t, i, o (so that every
/// process names and packs the group alike, however its limits were
/// listed).
pub(super) struct Group<'a> {
    /// `<codes>:<window µs>`, e.g. `rt:60000000`.
    pub(super) name: String,
    pub(super) window_us: u64,
    pub(super) limits: Vec<&'a Limit>,
}

impl Group<'_> {
    /// The group's field in the state hash.
    pub(super) fn field(&self) -> String {
        format!("g:{}", self.name)
    }
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

/// A limit's tag: `<code>:<window µs>` (its learned fields are named by
/// it).
pub(super) fn tag(l: &Limit) -> String {
    format!("{}:{}", code(l.dimension), micros(l.window))
}

/// The limits grouped by window (shortest first), each group's limits in
/// the order r, t, i, o.
pub(super) fn groups(limits: &Limits) -> Vec<Group<'_>> {
    let mut all: Vec<&Limit> = limits.iter().collect();
    all.sort_by_key(|l| (micros(l.window), rank(l.dimension)));
    let mut out: Vec<Group<'_>> = Vec::new();
    for l in all {
        let w = micros(l.window);
        match out.last_mut() {
            Some(g) if g.window_us == w => g.limits.push(l),
            _ => out.push(Group {
                name: String::new(),
                window_us: w,
                limits: vec![l],
            }),
        }
    }
    for g in &mut out {
        let codes: String = g.limits.iter().map(|l| code(l.dimension)).collect();
        g.name = format!("{codes}:{}", g.window_us);
    }
    out
}

impl Core {
    /// A key of layout 3: every one is under `{<prefix>:<key>}:3:`, so
    /// that no name is one of an older layout's.
    fn named(&self, key: &Key, suffix: &str) -> String {
        format!("{{{}:{}}}:3:{suffix}", self.prefix, key)
    }

    /// The state hash.
    pub(super) fn hash_key(&self, key: &Key) -> String {
        self.named(key, "s")
    }

    /// The state hashes of layouts 1 and 2 (`:s`, `:s2`), only ever
    /// tested for existence.
    pub(super) fn old_hash_keys(&self, key: &Key) -> [String; 2] {
        [
            format!("{{{}:{}}}:s", self.prefix, key),
            format!("{{{}:{}}}:s2", self.prefix, key),
        ]
    }

    pub(super) fn queue_key(&self, key: &Key) -> String {
        self.named(key, "q")
    }

    pub(super) fn entries_key(&self, key: &Key, group: &Group<'_>) -> String {
        format!("{{{}:{}}}:3:e:{}", self.prefix, key, group.name)
    }

    /// The two token generations.
    pub(super) fn token_keys(&self, key: &Key) -> [String; 2] {
        [self.named(key, "t0"), self.named(key, "t1")]
    }

    /// The token's own key: a tombstone, or the record of an acquire
    /// booked far ahead.
    pub(super) fn tombstone_key(&self, key: &Key, token: u64) -> String {
        format!("{{{}:{}}}:3:k:{:016x}", self.prefix, key, token)
    }

    /// The hash and the queue of `key`, then per group its entries key
    /// and, in the arguments, their count and each group's (see
    /// [`add_group_args`]): the common head of every script but `acquire`,
    /// `learn` and `gate`.
    pub(super) fn add_groups(&self, call: &mut Call, key: &Key, groups: &[Group<'_>]) {
        call.key(self.hash_key(key)).key(self.queue_key(key));
        for g in groups {
            call.key(self.entries_key(key, g));
        }
        call.arg(groups.len());
        add_group_args(call, groups);
    }
}

/// Per group its state field, window and number of limits, then per limit
/// its tag.
pub(super) fn add_group_args(call: &mut Call, groups: &[Group<'_>]) {
    for g in groups {
        call.arg(g.field()).arg(g.window_us).arg(g.limits.len());
        for l in &g.limits {
            call.arg(tag(l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tags_name_dimension_and_window_in_microseconds() {
        let l = Limits::new()
            .requests_per_minute(1)
            .input_tokens_per_minute(1)
            .window(Dimension::OutputTokens, Duration::from_millis(1_500), 1)
            .tokens_per_day(1);
        let tags: Vec<_> = l.iter().map(tag).collect();
        assert_eq!(
            tags,
            ["r:60000000", "i:60000000", "o:1500000", "t:86400000000"]
        );
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
        for l in [a, b] {
            let g = groups(&l);
            let names: Vec<_> = g.iter().map(|g| g.name.as_str()).collect();
            assert_eq!(names, ["o:1500000", "rt:60000000", "r:86400000000"]);
            let limits: Vec<_> = g[1].limits.iter().map(|l| l.limit).collect();
            assert_eq!(limits, [1, 2]);
        }
        assert!(groups(&Limits::new()).is_empty());
    }
}
