//! The one pass over a response's headers that finds every value this
//! crate reads (wait, `x-should-retry`, `Date`, OpenAI, Anthropic and IETF
//! rate-limit fields) and turns them into a wait and [`ReportedLimits`]. The
//! values themselves are parsed by [`values`](super::values).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

use super::values::{
    count_f64, parse_count, parse_go_duration, parse_retry_after, parse_retry_after_ms,
    parse_rfc3339_reset, secs_f64,
};
use super::{Provider, ReportedLimit, ReportedLimits};

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
    /// A `grpc-status` header is present (a trailers-only gRPC response).
    pub(crate) grpc: bool,
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
                "grpc-status" => {
                    scan.grpc = true;
                    continue;
                }
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
    use crate::classify::MAX_SERVER_WAIT;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(*k, HeaderValue::from_static(v));
        }
        headers
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
