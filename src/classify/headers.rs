//! Defensive parsers for the header values providers send. Each returns
//! `None` for anything it does not understand and clamps what it does to
//! [`MAX_SERVER_WAIT`]: no panic, no overflow, no endless wait.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

use super::{Provider, ReportedLimit, ReportedLimits};

/// The longest wait a server-given value is taken at: one day. A larger
/// `Retry-After` or reset is clamped to it (a per-day quota resets within a
/// day; anything longer is an error on the server's side).
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

pub(crate) fn clamp(wait: Duration) -> Duration {
    wait.min(MAX_SERVER_WAIT)
}

/// A non-negative, finite number of seconds as a clamped duration.
fn secs_f64(secs: f64) -> Option<Duration> {
    if secs.is_nan() || secs < 0.0 {
        return None; // negative or NaN
    }
    let capped = secs.min(MAX_SERVER_WAIT.as_secs_f64());
    Duration::try_from_secs_f64(capped).ok()
}

/// `Retry-After` (RFC 9110): delay-seconds or an HTTP-date, measured from
/// `now`. Fractional seconds, which some servers send, are accepted; a date
/// in the past is a zero wait.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_llm_resilience::classify::parse_retry_after;
///
/// let now = SystemTime::UNIX_EPOCH;
/// assert_eq!(parse_retry_after("20", now), Some(Duration::from_secs(20)));
/// assert_eq!(
///     parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now),
///     Some(Duration::from_secs(60))
/// );
/// assert_eq!(parse_retry_after("soon", now), None);
/// ```
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-' || c == '+') {
        return value.parse::<f64>().ok().and_then(secs_f64);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(clamp(date.duration_since(now).unwrap_or(Duration::ZERO)))
}

/// `retry-after-ms` and `x-ms-retry-after-ms`: milliseconds, possibly
/// fractional.
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::classify::parse_retry_after_ms;
///
/// assert_eq!(parse_retry_after_ms("1500"), Some(Duration::from_millis(1500)));
/// assert_eq!(parse_retry_after_ms("-5"), None);
/// ```
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms = value.trim().parse::<f64>().ok()?;
    secs_f64(ms / 1000.0)
}

/// A Go-style duration as OpenAI and Groq send in `x-ratelimit-reset-*`:
/// `1s`, `6m0s`, `12ms`, `1m30.5s`, `2h0m0s`, `0s`, `250us`. A bare number
/// is taken as seconds (some OpenAI-compatible servers send that).
///
/// ```
/// use std::time::Duration;
/// use tower_llm_resilience::classify::parse_go_duration;
///
/// assert_eq!(parse_go_duration("6m0s"), Some(Duration::from_secs(360)));
/// assert_eq!(parse_go_duration("1m30.5s"), Some(Duration::from_millis(90_500)));
/// assert_eq!(parse_go_duration("12ms"), Some(Duration::from_millis(12)));
/// assert_eq!(parse_go_duration("abc"), None);
/// ```
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(secs) = value.parse::<f64>() {
        return secs_f64(secs);
    }
    let mut rest = value;
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    secs_f64(total)
}

/// An RFC 3339 timestamp (Anthropic's `anthropic-ratelimit-*-reset`) as the
/// time from `now` until it; a past timestamp is a zero wait. Accepts `Z`
/// and numeric offsets, with or without fractional seconds.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_llm_resilience::classify::parse_rfc3339_reset;
///
/// let now = SystemTime::UNIX_EPOCH;
/// assert_eq!(
///     parse_rfc3339_reset("1970-01-01T00:00:30Z", now),
///     Some(Duration::from_secs(30))
/// );
/// assert_eq!(
///     parse_rfc3339_reset("1970-01-01T01:00:30+01:00", now),
///     Some(Duration::from_secs(30))
/// );
/// ```
pub fn parse_rfc3339_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_ascii() || value.len() < 20 {
        return None;
    }
    // humantime reads UTC (`Z`) timestamps; fold a numeric offset in by hand.
    let (utc, offset_secs) = match value.as_bytes()[value.len() - 6] {
        sign @ (b'+' | b'-') if value.as_bytes()[value.len() - 3] == b':' => {
            let hours: i64 = value[value.len() - 5..value.len() - 3].parse().ok()?;
            let minutes: i64 = value[value.len() - 2..].parse().ok()?;
            let secs = hours * 3600 + minutes * 60;
            let secs = if sign == b'+' { secs } else { -secs };
            (&value[..value.len() - 6], secs)
        }
        _ => (value.strip_suffix(['Z', 'z'])?, 0),
    };
    let mut buf = [0u8; 40];
    let utc_z = utc.len().checked_add(1).filter(|&n| n <= buf.len())?;
    buf[..utc.len()].copy_from_slice(utc.as_bytes());
    buf[utc.len()] = b'Z';
    let text = std::str::from_utf8(&buf[..utc_z]).ok()?;
    let local = humantime::parse_rfc3339_weak(text).ok()?;
    let instant = if offset_secs >= 0 {
        local.checked_sub(Duration::from_secs(offset_secs.unsigned_abs()))?
    } else {
        local.checked_add(Duration::from_secs(offset_secs.unsigned_abs()))?
    };
    Some(clamp(instant.duration_since(now).unwrap_or(Duration::ZERO)))
}

/// A non-negative integer count; Azure's `-1` and anything else that is not
/// a count is `None`.
pub(crate) fn parse_count(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(n) = value.parse::<u64>() {
        return Some(n);
    }
    // Some servers send "100.0".
    count_f64(value.parse::<f64>().ok()?)
}

fn count_f64(f: f64) -> Option<u64> {
    (f >= 0.0 && f.is_finite()).then(|| f.min(u64::MAX as f64) as u64)
}

/// The values of every header this crate reads, found in one pass over the
/// map: a response carries 10-30 headers, and one pass with a `match` on
/// each name costs less than twenty-odd hashed look-ups.
#[derive(Debug, Default)]
pub(crate) struct Scan<'a> {
    retry_after: Option<&'a str>,
    retry_after_ms: Option<&'a str>,
    ms_retry_after_ms: Option<&'a str>,
    should_retry: Option<&'a str>,
    date: Option<&'a str>,
    /// requests, tokens × limit, remaining, reset
    openai: [[Option<&'a str>; 3]; 2],
    /// requests, tokens, input tokens, output tokens × limit, remaining, reset
    anthropic: [[Option<&'a str>; 3]; 4],
    ratelimit: Option<&'a HeaderValue>,
    ratelimit_policy: Option<&'a HeaderValue>,
    /// The older IETF draft's limit, remaining, reset.
    legacy: [Option<&'a str>; 3],
    seen: Seen,
}

/// Which provider-identifying headers a scan saw.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    anthropic: bool,
    azure: bool,
    groq: bool,
    openai: bool,
}

impl<'a> Scan<'a> {
    pub(crate) fn new(headers: &'a HeaderMap) -> Self {
        let mut scan = Scan::default();
        for (name, value) in headers {
            let name = name.as_str();
            let slot: &mut Option<&'a str> = match name {
                "retry-after" => &mut scan.retry_after,
                "retry-after-ms" => &mut scan.retry_after_ms,
                "x-ms-retry-after-ms" => {
                    scan.seen.azure = true;
                    &mut scan.ms_retry_after_ms
                }
                "x-should-retry" => &mut scan.should_retry,
                "date" => &mut scan.date,
                "ratelimit" => {
                    scan.ratelimit.get_or_insert(value);
                    continue;
                }
                "ratelimit-policy" => {
                    scan.ratelimit_policy.get_or_insert(value);
                    continue;
                }
                "ratelimit-limit" => &mut scan.legacy[0],
                "ratelimit-remaining" => &mut scan.legacy[1],
                "ratelimit-reset" => &mut scan.legacy[2],
                "x-ms-region" | "apim-request-id" | "azureml-model-session" => {
                    scan.seen.azure = true;
                    continue;
                }
                "x-groq-region" => {
                    scan.seen.groq = true;
                    continue;
                }
                "openai-processing-ms"
                | "openai-version"
                | "openai-organization"
                | "openai-project" => {
                    scan.seen.openai = true;
                    continue;
                }
                "anthropic-organization-id" => {
                    scan.seen.anthropic = true;
                    continue;
                }
                _ => {
                    if let Some(rest) = name.strip_prefix("x-ratelimit-") {
                        match openai_slot(rest) {
                            Some((dim, part)) => &mut scan.openai[dim][part],
                            None => continue,
                        }
                    } else if let Some(rest) = name.strip_prefix("anthropic-ratelimit-") {
                        scan.seen.anthropic = true;
                        match anthropic_slot(rest) {
                            Some((dim, part)) => &mut scan.anthropic[dim][part],
                            None => continue,
                        }
                    } else {
                        continue;
                    }
                }
            };
            if slot.is_none() {
                *slot = value.to_str().ok();
            }
        }
        scan
    }

    /// The provider the headers name, when they are unambiguous.
    pub(crate) fn detected(&self) -> Option<Provider> {
        let seen = self.seen;
        if seen.anthropic {
            Some(Provider::Anthropic)
        } else if seen.azure {
            Some(Provider::AzureOpenAi)
        } else if seen.groq {
            Some(Provider::Groq)
        } else if seen.openai {
            Some(Provider::OpenAi)
        } else {
            None
        }
    }

    /// The reference time for absolute dates: the response's `Date` when
    /// present (so the client's clock skew does not matter), else `fallback`.
    pub(crate) fn now(&self, fallback: impl FnOnce() -> SystemTime) -> SystemTime {
        self.date
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .unwrap_or_else(fallback)
    }

    /// The server-given wait: `retry-after-ms`, then `x-ms-retry-after-ms`,
    /// then `Retry-After`.
    pub(crate) fn retry_after(&self, now: &dyn Fn() -> SystemTime) -> Option<Duration> {
        self.retry_after_ms
            .and_then(parse_retry_after_ms)
            .or_else(|| self.ms_retry_after_ms.and_then(parse_retry_after_ms))
            .or_else(|| self.rfc_retry_after(now))
    }

    /// `Retry-After` alone (RFC 9110).
    pub(crate) fn rfc_retry_after(&self, now: &dyn Fn() -> SystemTime) -> Option<Duration> {
        self.retry_after.and_then(|v| parse_retry_after(v, now()))
    }

    /// `x-should-retry: true|false`.
    pub(crate) fn should_retry(&self) -> Option<bool> {
        let value = self.should_retry?.trim();
        if value.eq_ignore_ascii_case("true") {
            Some(true)
        } else if value.eq_ignore_ascii_case("false") {
            Some(false)
        } else {
            None
        }
    }

    /// Every rate-limit header style at once: OpenAI/Groq/Azure
    /// `x-ratelimit-*`, Anthropic `anthropic-ratelimit-*`, then the IETF
    /// `RateLimit` fields for dimensions still unknown. Header names do not
    /// collide between providers, so reading all of them is safe.
    pub(crate) fn rate_limits(&self, now: &dyn Fn() -> SystemTime) -> ReportedLimits {
        let openai = |[limit, remaining, reset]: [Option<&str>; 3]| {
            ReportedLimit::new(
                limit.and_then(parse_count),
                remaining.and_then(parse_count),
                reset.and_then(parse_go_duration),
            )
            .non_empty()
        };
        let anthropic = |[limit, remaining, reset]: [Option<&str>; 3]| {
            ReportedLimit::new(
                limit.and_then(parse_count),
                remaining.and_then(parse_count),
                reset.and_then(|v| parse_rfc3339_reset(v, now())),
            )
            .non_empty()
        };
        let mut limits = ReportedLimits {
            requests: openai(self.openai[0]).or_else(|| anthropic(self.anthropic[0])),
            tokens: openai(self.openai[1]).or_else(|| anthropic(self.anthropic[1])),
            input_tokens: anthropic(self.anthropic[2]),
            output_tokens: anthropic(self.anthropic[3]),
        };
        self.ietf(&mut limits);
        limits
    }

    /// The IETF draft's fields (draft-ietf-httpapi-ratelimit-headers):
    /// `RateLimit-Policy: "default";q=100;w=60` and
    /// `RateLimit: "default";r=50;t=30`, plus the older
    /// `RateLimit-Limit` / `RateLimit-Remaining` / `RateLimit-Reset` trio. The
    /// first policy fills `requests`, or `tokens` when its name mentions
    /// tokens; a dimension already known from provider headers is kept.
    pub(crate) fn ietf(&self, limits: &mut ReportedLimits) {
        if limits.requests.is_some() && limits.tokens.is_some() {
            return;
        }
        let mut found: [ReportedLimit; 2] = Default::default();
        if let Some(value) = self.ratelimit_policy {
            ietf_field(value, true, &mut found);
        }
        if let Some(value) = self.ratelimit {
            ietf_field(value, false, &mut found);
        }
        let [limit, remaining, reset] = self.legacy;
        let legacy = &mut found[0];
        if legacy.limit.is_none() {
            // "10, 10;w=1": the first number is the limit.
            legacy.limit = limit.and_then(|v| parse_count(v.split([',', ';']).next().unwrap_or(v)));
        }
        if legacy.remaining.is_none() {
            legacy.remaining = remaining.and_then(parse_count);
        }
        if legacy.reset.is_none() {
            legacy.reset = reset
                .and_then(|v| v.trim().parse::<f64>().ok())
                .and_then(secs_f64);
        }
        let [requests, tokens] = found;
        if limits.requests.is_none() {
            limits.requests = requests.non_empty();
        }
        if limits.tokens.is_none() {
            limits.tokens = tokens.non_empty();
        }
    }
}

/// limit, remaining, reset: the three parts of every rate-limit header.
fn part_slot(part: &str) -> Option<usize> {
    match part {
        "limit" => Some(0),
        "remaining" => Some(1),
        "reset" => Some(2),
        _ => None,
    }
}

fn openai_slot(rest: &str) -> Option<(usize, usize)> {
    let (part, dim) = rest.split_once('-')?;
    let part = part_slot(part)?;
    let dim = match dim {
        "requests" => 0,
        "tokens" => 1,
        _ => return None,
    };
    Some((dim, part))
}

fn anthropic_slot(rest: &str) -> Option<(usize, usize)> {
    let (dim, part) = rest.rsplit_once('-')?;
    let part = part_slot(part)?;
    let dim = match dim {
        "requests" => 0,
        "tokens" => 1,
        "input-tokens" => 2,
        "output-tokens" => 3,
        _ => return None,
    };
    Some((dim, part))
}

/// One `RateLimit` or `RateLimit-Policy` field into `found` (requests,
/// tokens); the first entry of each kind wins.
fn ietf_field(value: &HeaderValue, is_policy: bool, found: &mut [ReportedLimit; 2]) {
    use sfv::{BareItem, ListEntry, Parser};

    let Ok(list) = Parser::new(value.as_bytes()).parse::<sfv::List>() else {
        return;
    };
    let number = |item: &BareItem| -> Option<f64> {
        match item {
            BareItem::Integer(i) => Some(i64::from(*i) as f64),
            BareItem::Decimal(d) => Some(f64::from(*d)),
            _ => None,
        }
    };
    let mut done = [false; 2];
    for entry in list {
        let ListEntry::Item(item) = entry else {
            continue;
        };
        let name = match &item.bare_item {
            BareItem::String(s) => s.as_str(),
            BareItem::Token(t) => t.as_str(),
            _ => continue,
        };
        let slot = usize::from(name.to_ascii_lowercase().contains("token"));
        if std::mem::replace(&mut done[slot], true) {
            continue;
        }
        let state = &mut found[slot];
        for (key, value) in &item.params {
            let Some(n) = number(value) else { continue };
            match (is_policy, key.as_str()) {
                (true, "q") => state.limit = count_f64(n),
                (true, "w") => state.window = secs_f64(n),
                (false, "r") => state.remaining = count_f64(n),
                (false, "t") => state.reset = secs_f64(n),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn go_durations() {
        let cases = [
            ("1s", Some(1000)),
            ("6m0s", Some(360_000)),
            ("12ms", Some(12)),
            ("1m30.5s", Some(90_500)),
            ("0s", Some(0)),
            ("2h0m0s", Some(7_200_000)),
            ("7.66s", Some(7_660)),
            ("60", Some(60_000)),
            ("", None),
            ("s", None),
            ("5x", None),
            ("-1s", None),
            ("1.2.3s", None),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_go_duration(input),
                ms.map(Duration::from_millis),
                "{input:?}"
            );
        }
        assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration("99999h"), Some(MAX_SERVER_WAIT));
    }

    #[test]
    fn retry_after_values() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_retry_after("99999999999", now), Some(MAX_SERVER_WAIT));
        assert_eq!(parse_retry_after("1e309", now), Some(MAX_SERVER_WAIT));
        assert_eq!(parse_retry_after("-3", now), None);
        assert_eq!(parse_retry_after("NaN", now), None);
        assert_eq!(parse_retry_after("", now), None);
        let past = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(parse_retry_after(past, now), Some(Duration::ZERO));
        let future = "Fri, 31 Dec 9999 23:59:59 GMT";
        assert_eq!(parse_retry_after(future, now), Some(MAX_SERVER_WAIT));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(42));
        assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(42)));
    }

    #[test]
    fn retry_after_precedence() {
        let now = SystemTime::UNIX_EPOCH;
        let h = map(&[("retry-after", "20"), ("retry-after-ms", "1500")]);
        assert_eq!(
            Scan::new(&h).retry_after(&|| now),
            Some(Duration::from_millis(1500))
        );
        let h = map(&[("retry-after", "20"), ("x-ms-retry-after-ms", "250.5")]);
        assert_eq!(
            Scan::new(&h).retry_after(&|| now),
            Some(Duration::from_micros(250_500))
        );
        let h = map(&[("retry-after", "20"), ("retry-after-ms", "junk")]);
        assert_eq!(
            Scan::new(&h).retry_after(&|| now),
            Some(Duration::from_secs(20))
        );
    }

    #[test]
    fn rfc3339() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800); // 2024-05-01T12:00:00Z
        let p = |v| parse_rfc3339_reset(v, now);
        assert_eq!(p("2024-05-01T12:00:05Z"), Some(Duration::from_secs(5)));
        assert_eq!(
            p("2024-05-01T12:00:05.250Z"),
            Some(Duration::from_millis(5250))
        );
        assert_eq!(p("2024-05-01T14:00:05+02:00"), Some(Duration::from_secs(5)));
        assert_eq!(p("2024-05-01T11:00:05-01:00"), Some(Duration::from_secs(5)));
        assert_eq!(p("2024-05-01T11:00:00Z"), Some(Duration::ZERO));
        assert_eq!(p("9999-12-31T23:59:59Z"), Some(MAX_SERVER_WAIT));
        assert_eq!(p("2024-05-01 12:00:05"), None);
        assert_eq!(p("not a date at all, really"), None);
        assert_eq!(p("2024-05-01T12:00:05ü"), None);
    }

    #[test]
    fn openai_headers() {
        let h = map(&[
            ("x-ratelimit-limit-requests", "10000"),
            ("x-ratelimit-remaining-requests", "9999"),
            ("x-ratelimit-reset-requests", "6ms"),
            ("x-ratelimit-limit-tokens", "2000000"),
            ("x-ratelimit-remaining-tokens", "1999000"),
            ("x-ratelimit-reset-tokens", "30ms"),
        ]);
        let limits = Scan::new(&h).rate_limits(&|| SystemTime::UNIX_EPOCH);
        assert_eq!(
            limits.requests,
            Some(ReportedLimit::new(
                Some(10_000),
                Some(9_999),
                Some(Duration::from_millis(6))
            ))
        );
        assert_eq!(
            limits.tokens,
            Some(ReportedLimit::new(
                Some(2_000_000),
                Some(1_999_000),
                Some(Duration::from_millis(30))
            ))
        );
        assert_eq!(limits.input_tokens, None);
    }

    #[test]
    fn azure_minus_one_is_unknown() {
        let h = map(&[
            ("x-ratelimit-remaining-requests", "-1"),
            ("x-ratelimit-remaining-tokens", "-1"),
        ]);
        assert!(Scan::new(&h)
            .rate_limits(&|| SystemTime::UNIX_EPOCH)
            .is_empty());
    }

    #[test]
    fn anthropic_headers() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
        let h = map(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2024-05-01T12:00:01Z"),
            ("anthropic-ratelimit-input-tokens-limit", "40000"),
            ("anthropic-ratelimit-input-tokens-remaining", "39000"),
            (
                "anthropic-ratelimit-input-tokens-reset",
                "2024-05-01T12:00:02Z",
            ),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "7000"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2024-05-01T12:00:09Z",
            ),
        ]);
        let limits = Scan::new(&h).rate_limits(&|| now);
        assert_eq!(
            limits.requests,
            Some(ReportedLimit::new(
                Some(50),
                Some(49),
                Some(Duration::from_secs(1))
            ))
        );
        assert_eq!(limits.tokens, None);
        assert_eq!(
            limits.input_tokens,
            Some(ReportedLimit::new(
                Some(40_000),
                Some(39_000),
                Some(Duration::from_secs(2))
            ))
        );
        assert_eq!(
            limits.output_tokens,
            Some(ReportedLimit::new(
                Some(8_000),
                Some(7_000),
                Some(Duration::from_secs(9))
            ))
        );
    }

    #[test]
    fn ietf_fields() {
        let h = map(&[
            (
                "ratelimit-policy",
                "\"default\";q=100;w=60, \"tokens\";q=5000;w=60",
            ),
            ("ratelimit", "\"default\";r=50;t=30, \"tokens\";r=4000;t=12"),
        ]);
        let limits = Scan::new(&h).rate_limits(&|| SystemTime::UNIX_EPOCH);
        let mut requests = ReportedLimit::new(Some(100), Some(50), Some(Duration::from_secs(30)));
        requests.window = Some(Duration::from_secs(60));
        assert_eq!(limits.requests, Some(requests));
        let mut tokens = ReportedLimit::new(Some(5000), Some(4000), Some(Duration::from_secs(12)));
        tokens.window = Some(Duration::from_secs(60));
        assert_eq!(limits.tokens, Some(tokens));

        let legacy = map(&[
            ("ratelimit-limit", "10, 10;w=1"),
            ("ratelimit-remaining", "3"),
            ("ratelimit-reset", "7"),
        ]);
        assert_eq!(
            Scan::new(&legacy)
                .rate_limits(&|| SystemTime::UNIX_EPOCH)
                .requests,
            Some(ReportedLimit::new(
                Some(10),
                Some(3),
                Some(Duration::from_secs(7))
            ))
        );
        let garbage = map(&[
            ("ratelimit", "\"a\";r=-5;t=NaN"),
            ("ratelimit-policy", "(((("),
        ]);
        assert!(Scan::new(&garbage)
            .rate_limits(&|| SystemTime::UNIX_EPOCH)
            .is_empty());
    }

    #[test]
    fn should_retry_header() {
        let says = |v: &'static str| Scan::new(&map(&[("x-should-retry", v)])).should_retry();
        assert_eq!(says("true"), Some(true));
        assert_eq!(says("FALSE"), Some(false));
        assert_eq!(says("maybe"), None);
        assert_eq!(Scan::new(&HeaderMap::new()).should_retry(), None);
    }
}
