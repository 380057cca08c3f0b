//! Defensive parsers for the header values providers send (`Retry-After`,
//! `retry-after-ms`, Go durations, RFC 3339 resets, counts). Each takes
//! one value, returns `None` for anything it does not understand and
//! clamps what it does to [`MAX_SERVER_WAIT`]: no panic, no overflow, no
//! endless wait. Which header holds which value is
//! [`scan`](super::scan)'s job.

use std::time::{Duration, SystemTime};

/// The longest wait a server-given value is taken at: one day. A larger
/// `Retry-After` or reset is clamped to it (a per-day quota resets within a
/// day; anything longer is an error on the server's side).
pub const MAX_SERVER_WAIT: Duration = Duration::from_secs(24 * 60 * 60);

pub(crate) fn clamp(wait: Duration) -> Duration {
    wait.min(MAX_SERVER_WAIT)
}

/// A non-negative, finite number of seconds as a clamped duration.
pub(crate) fn secs_f64(secs: f64) -> Option<Duration> {
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

pub(crate) fn count_f64(f: f64) -> Option<u64> {
    (f >= 0.0 && f.is_finite()).then(|| f.min(u64::MAX as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
