//! Entry points for fuzzers and property tests: every parser of
//! [`classify`](super) on arbitrary bytes, each checking the promises of the
//! module docs (no panic, no overflow, no wait above [`MAX_SERVER_WAIT`],
//! an integer read as itself).
//!
//! The cargo-fuzz targets in `fuzz/` and the stable property test
//! `tests/parsers_fuzz.rs` call these same functions, so that CI on stable
//! runs what the fuzzer runs. Each function panics when a promise is
//! broken, which is how a fuzzer reports a finding. Not part of the stable
//! API: names and input layouts may change in any release.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::scan::Scan;
use super::values::parse_count;
use super::{
    classify_grpc, parse_error_body, parse_go_duration, parse_retry_after, parse_retry_after_ms,
    parse_rfc3339_reset, Classification, Classifier, ErrorClass, Provider, ReportedLimit,
    ReportedLimits, MAX_SERVER_WAIT,
};

/// The header names the classifier reads, so that a fuzzer reaches them
/// from one byte instead of guessing the spelling.
pub const HEADER_NAMES: &[&str] = &[
    "retry-after",
    "retry-after-ms",
    "x-ms-retry-after-ms",
    "x-should-retry",
    "date",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "anthropic-organization-id",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "openai-processing-ms",
    "x-ms-region",
    "x-groq-region",
    "grpc-status",
    "grpc-message",
    "grpc-retry-pushback-ms",
];

const PROVIDERS: [Provider; 8] = [
    Provider::Auto,
    Provider::OpenAi,
    Provider::AzureOpenAi,
    Provider::Anthropic,
    Provider::Gemini,
    Provider::Groq,
    Provider::OpenRouter,
    Provider::Generic,
];

/// Reads the input front to back; past the end, every read gives zeros.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| n << 8 | u64::from(self.byte()))
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// A wall-clock time between 1970 and about 2970, from eight bytes.
fn wall_time(cursor: &mut Cursor<'_>) -> SystemTime {
    let secs = cursor.u64() % (1000 * 365 * 24 * 60 * 60);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

fn bounded(wait: Option<Duration>, what: &str, input: &str) {
    if let Some(w) = wait {
        assert!(w <= MAX_SERVER_WAIT, "{what}({input:?}) = {w:?}");
    }
}

/// An integer of seconds (or milliseconds) must read as itself, clamped.
fn integer_reads_as_itself(input: &str, got: Option<Duration>, unit: fn(u64) -> Duration) {
    if let Ok(n) = input.trim().parse::<u64>() {
        let expected = unit(n).min(MAX_SERVER_WAIT);
        assert_eq!(got, Some(expected), "{input:?}");
    }
}

/// [`parse_retry_after`]: eight bytes of "now", then the value.
pub fn retry_after(data: &[u8]) {
    let mut cursor = Cursor(data);
    let now = wall_time(&mut cursor);
    let input = text(cursor.0);
    let got = parse_retry_after(&input, now);
    bounded(got, "parse_retry_after", &input);
    integer_reads_as_itself(&input, got, Duration::from_secs);
    // An HTTP-date that `httpdate` reads is a wait until then, or zero.
    if let Ok(date) = httpdate::parse_http_date(input.trim()) {
        let expected = date
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_SERVER_WAIT);
        assert_eq!(got, Some(expected), "{input:?}");
    }
}

/// [`parse_retry_after_ms`] on the value.
pub fn retry_after_ms(data: &[u8]) {
    let input = text(data);
    let got = parse_retry_after_ms(&input);
    bounded(got, "parse_retry_after_ms", &input);
    integer_reads_as_itself(&input, got, Duration::from_millis);
}

/// [`parse_go_duration`] on the value.
pub fn go_duration(data: &[u8]) {
    let input = text(data);
    let got = parse_go_duration(&input);
    bounded(got, "parse_go_duration", &input);
    integer_reads_as_itself(&input, got, Duration::from_secs);
}

/// [`parse_rfc3339_reset`]: eight bytes of "now", then the value.
pub fn rfc3339_reset(data: &[u8]) {
    let mut cursor = Cursor(data);
    let now = wall_time(&mut cursor);
    let input = text(cursor.0);
    let got = parse_rfc3339_reset(&input, now);
    bounded(got, "parse_rfc3339_reset", &input);
    // A UTC timestamp that humantime reads is a wait until then, or zero.
    let trimmed = input.trim();
    if trimmed.ends_with('Z') {
        if let Ok(t) = humantime::parse_rfc3339_weak(trimmed) {
            let expected = t
                .duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(MAX_SERVER_WAIT);
            assert_eq!(got, Some(expected), "{input:?}");
        }
    }
}

fn check_state(state: &ReportedLimit, what: &str) {
    for (part, wait) in [("reset", state.reset), ("window", state.window)] {
        if let Some(w) = wait {
            assert!(w <= MAX_SERVER_WAIT, "{what}.{part} = {w:?}");
        }
    }
}

fn check_limits(limits: &ReportedLimits) {
    for (what, state) in [
        ("requests", limits.requests),
        ("tokens", limits.tokens),
        ("input_tokens", limits.input_tokens),
        ("output_tokens", limits.output_tokens),
    ] {
        if let Some(state) = state {
            check_state(&state, what);
        }
    }
}

/// Splits `data` at its first `sep` byte, or gives the whole and nothing.
fn split(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn header_map(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    headers
}

/// The IETF `RateLimit-Policy` and `RateLimit` structured fields, and the
/// older `RateLimit-Limit` / `-Remaining` / `-Reset` trio: the input holds
/// the five values separated by newlines.
pub fn ratelimit_fields(data: &[u8]) {
    let (policy, rest) = split(data, b'\n');
    let (ratelimit, rest) = split(rest, b'\n');
    let (limit, rest) = split(rest, b'\n');
    let (remaining, reset) = split(rest, b'\n');
    let headers = header_map(&[
        ("ratelimit-policy", policy),
        ("ratelimit", ratelimit),
        ("ratelimit-limit", limit),
        ("ratelimit-remaining", remaining),
        ("ratelimit-reset", reset),
    ]);
    let mut limits = ReportedLimits::default();
    Scan::new(&headers).ietf(&mut limits);
    check_limits(&limits);
    assert!(limits.input_tokens.is_none() && limits.output_tokens.is_none());
}

/// The `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` trio (OpenAI,
/// Azure, Groq) and Anthropic's `anthropic-ratelimit-*` trio: the input
/// holds limit, remaining and reset separated by newlines, given to both.
pub fn x_ratelimit(data: &[u8]) {
    let (limit, rest) = split(data, b'\n');
    let (remaining, reset) = split(rest, b'\n');
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800);
    for names in [
        [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ],
        [
            "anthropic-ratelimit-tokens-limit",
            "anthropic-ratelimit-tokens-remaining",
            "anthropic-ratelimit-tokens-reset",
        ],
    ] {
        let headers = header_map(&[(names[0], limit), (names[1], remaining), (names[2], reset)]);
        let limits = Scan::new(&headers).rate_limits(&|| now);
        check_limits(&limits);
        let state = limits.requests.or(limits.tokens).unwrap_or_default();
        // A count is read as itself; Azure's -1 (or any negative) is unknown.
        for (value, got) in [(limit, state.limit), (remaining, state.remaining)] {
            let Some(v) = headers_value(value) else {
                continue;
            };
            if let Ok(n) = v.trim().parse::<u64>() {
                assert_eq!(got, Some(n), "{v:?}");
            }
            if v.trim().parse::<f64>().is_ok_and(|f| f < 0.0 || f.is_nan()) {
                assert_eq!(got, None, "{v:?}");
            }
            assert_eq!(got, parse_count(v), "{v:?}");
        }
    }
}

/// The value as the header map would hold it, when it is a valid value.
fn headers_value(value: &[u8]) -> Option<&str> {
    HeaderValue::from_bytes(value).ok()?;
    std::str::from_utf8(value)
        .ok()
        .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
}

/// [`parse_error_body`] on arbitrary bytes, whole and cut at a point the
/// first byte chooses (a prefix cut mid-JSON).
pub fn error_body(data: &[u8]) {
    let cut = data.first().map_or(0, |&b| usize::from(b)) % (data.len() + 1);
    for body in [data, &data[..cut]] {
        let parsed = parse_error_body(body);
        if parsed.code.is_some() {
            assert!(parsed.class.is_some(), "a code without a class: {parsed:?}");
        }
        if parsed.per_day_quota {
            assert_eq!(parsed.class, Some(ErrorClass::QuotaExhausted));
        }
        if let Some(d) = parsed.retry_delay {
            assert!(d <= MAX_SERVER_WAIT, "retryDelay {d:?}");
        }
    }
}

/// One response from bytes: two bytes of status, one of provider (its high
/// bit: whether the body was read), eight of wall-clock time, one of header
/// count, then per header one byte of name (an index into
/// [`HEADER_NAMES`], or `x-fuzz-N`), one of length and the value; the rest
/// is the body.
#[derive(Debug)]
pub struct Response {
    /// The status, 100 to 999.
    pub status: StatusCode,
    /// The classifier.
    pub provider: Provider,
    /// The headers whose values were valid.
    pub headers: HeaderMap,
    /// The body, when it was read.
    pub body: Option<Vec<u8>>,
    /// The wall-clock time for absolute dates without a `Date` header.
    pub now: SystemTime,
}

impl Response {
    /// Decodes the layout above; every input gives a response.
    pub fn decode(data: &[u8]) -> Response {
        let mut cursor = Cursor(data);
        let code = 100 + u16::from_be_bytes([cursor.byte(), cursor.byte()]) % 900;
        let status = StatusCode::from_u16(code).expect("100..=999 is a valid status");
        let flags = cursor.byte();
        let provider = PROVIDERS[usize::from(flags & 7)];
        let now = wall_time(&mut cursor);
        let count = cursor.byte() % 40;
        let mut headers = HeaderMap::new();
        for _ in 0..count {
            let selector = cursor.byte();
            let len = usize::from(cursor.byte());
            let value = cursor.take(len);
            let name = match HEADER_NAMES.get(usize::from(selector)) {
                Some(name) => HeaderName::from_static(name),
                None => HeaderName::from_bytes(format!("x-fuzz-{selector}").as_bytes())
                    .expect("a valid name"),
            };
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(name, value);
            }
        }
        let body = (flags & 0x80 != 0).then(|| cursor.0.to_vec());
        Response {
            status,
            provider,
            headers,
            body,
            now,
        }
    }
}

/// [`classify_grpc`]: the input holds `grpc-status`, `grpc-message` and
/// `grpc-retry-pushback-ms` separated by newlines.
pub fn grpc_status(data: &[u8]) {
    let (status, rest) = split(data, b'\n');
    let (message, pushback) = split(rest, b'\n');
    let headers = header_map(&[
        ("grpc-status", status),
        ("grpc-message", message),
        ("grpc-retry-pushback-ms", pushback),
    ]);
    let Some(c) = classify_grpc(&headers) else {
        // No status, or the number 0 (OK): nothing else is a success.
        let number = |v: &HeaderValue| {
            std::str::from_utf8(v.as_bytes())
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        };
        let status = headers.get("grpc-status");
        assert!(status.is_none_or(|v| number(v) == Some(0)), "{status:?}");
        return;
    };
    assert!(c.class.is_some(), "a failure has a class");
    assert!(c.code.is_some(), "a failure names its code");
    bounded(c.retry_after, "grpc-retry-pushback-ms", "");
    assert_ne!(
        c.should_retry,
        Some(true),
        "only a negative pushback speaks"
    );
    assert_eq!(
        classify_grpc(&headers),
        Some(c),
        "the same trailers, the same answer"
    );
}

/// [`Provider::classify_at`] and [`Classifier::classify`] on one response
/// decoded by [`Response::decode`].
pub fn classify(data: &[u8]) {
    let r = Response::decode(data);
    let body = r.body.as_deref();
    let c = r.provider.classify_at(r.status, &r.headers, body, r.now);
    check_classification(&c, &r);
    assert_eq!(
        c,
        r.provider.classify_at(r.status, &r.headers, body, r.now),
        "the same response, the same classification"
    );
    let wall = r.provider.classify(r.status, &r.headers, body);
    check_classification(&wall, &r);
    assert_eq!(
        wall.class, c.class,
        "the class does not depend on the clock"
    );
}

fn check_classification(c: &Classification, r: &Response) {
    assert_eq!(c.status, Some(r.status));
    // A failed gRPC status in the headers is a failure whatever the HTTP
    // status; without one, the status decides.
    let grpc = classify_grpc(&r.headers);
    assert_eq!(
        c.class.is_some(),
        r.status.as_u16() >= 400 || grpc.is_some(),
        "{:?} for {}",
        c.class,
        r.status
    );
    if let Some(g) = grpc {
        assert_eq!(c.class, g.class, "gRPC's status decides");
    }
    if c.class.is_none() {
        assert!(!c.is_retryable(), "a success is not retryable");
    }
    bounded(c.retry_after, "retry_after", "");
    check_limits(&c.limits);
    if r.provider != Provider::Auto {
        assert_eq!(c.provider, Some(r.provider));
    }
}
