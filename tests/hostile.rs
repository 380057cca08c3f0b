//! The hostile suite's fault matrix over loopback HTTP: a small server of
//! our own (hyper 1 for well-formed answers, raw bytes on the socket for
//! broken ones) answers each request by a scenario the test chooses, and
//! the whole stack (`LlmLayer` over hyper-util's client) runs against it,
//! one call at a time and through `batch::Batch`.
//!
//! Every scenario checks that each request ends exactly once, with a
//! response whose body can be read (or fails with an error), or with a
//! typed `Error` of the expected class, within a bound on real time (real
//! sockets do not follow tokio's paused clock), and that the server saw no
//! more attempts than the retry policy allows.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceExt};
use tower_llm_resilience::batch::{Batch, Patience};
use tower_llm_resilience::retry::Backoff;
use tower_llm_resilience::{Error, ErrorClass, LlmBody, LlmLayer, LlmService, Provider};

mod support;

// ---------------------------------------------------------------------------
// The hostile server
// ---------------------------------------------------------------------------

/// How the server ends a raw answer.
#[derive(Clone, Copy, Debug)]
enum End {
    /// A TCP reset (zero linger): the client's next read fails.
    Reset,
    /// A clean close (FIN) after what was written.
    Close,
}

/// What the server does with one request (one connection: the server
/// never keeps a connection alive, so that each answer is chosen anew).
#[derive(Clone, Debug)]
enum Answer {
    /// A well-formed response from hyper's server.
    Status {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Waits before the response headers.
    SlowFirstByte(Duration, Box<Answer>),
    /// A 200 whose body arrives in `chunks` pieces, one every `every`.
    SlowBody { chunks: usize, every: Duration },
    /// Raw bytes written on the socket after the request was read, then a
    /// reset or a close.
    Raw {
        bytes: Vec<u8>,
        pause: Duration,
        end: End,
    },
}

const COMPLETION: &str = r#"{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"positive"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":1,"total_tokens":10}}"#;

fn ok() -> Answer {
    ok_with(Vec::new())
}

fn ok_with(headers: Vec<(String, String)>) -> Answer {
    Answer::Status {
        status: 200,
        headers,
        body: COMPLETION.to_owned(),
    }
}

fn status(status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
    Answer::Status {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_owned(),
    }
}

/// A response head and the first bytes of a body whose `Content-Length`
/// promises more, then `end`.
fn cut(code: u16, length: usize, sent: &str, end: End) -> Answer {
    let head = format!(
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
    );
    Answer::Raw {
        bytes: [head.as_bytes(), sent.as_bytes()].concat(),
        // Lets the client read the head before the reset discards it; a
        // reset that wins the race is a connect error, which the tests
        // accept too.
        pause: Duration::from_millis(50),
        end,
    }
}

type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

/// The most connections one server accepts: it stops by itself after.
const MAX_CONNECTIONS: usize = 400;
/// The longest one connection is served.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);

/// A server on `127.0.0.1:0` answering the `n`-th connection with
/// `script(n)`. Dropping it stops it and every connection it serves.
struct Hostile {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Hostile {
    async fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let script: Script = Arc::new(script);
        let counter = hits.clone();
        let task = tokio::spawn(async move {
            // Aborting this task drops the set, which aborts every
            // connection still served.
            let mut connections = JoinSet::new();
            for _ in 0..MAX_CONNECTIONS {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let answer = script(n);
                connections.spawn(async move {
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, serve(stream, answer)).await;
                });
            }
            while connections.join_next().await.is_some() {}
        });
        Hostile { addr, hits, task }
    }

    fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    /// Connections accepted so far: one per attempt.
    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: TcpStream, answer: Answer) {
    match answer {
        Answer::Raw { bytes, pause, end } => raw(stream, &bytes, pause, end).await,
        answer => {
            let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(respond(answer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    }
}

type ServerBody = BoxBody<Bytes, Infallible>;

fn respond(answer: Answer) -> std::pin::Pin<Box<dyn Future<Output = Response<ServerBody>> + Send>> {
    Box::pin(async move {
        match answer {
            Answer::Status {
                status,
                headers,
                body,
            } => {
                let mut response = Response::builder().status(status);
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                response.body(Full::new(Bytes::from(body)).boxed()).unwrap()
            }
            Answer::SlowFirstByte(wait, then) => {
                tokio::time::sleep(wait).await;
                respond(*then).await
            }
            Answer::SlowBody { chunks, every } => {
                let stream = futures::stream::unfold(0, move |i| async move {
                    if i == chunks {
                        return None;
                    }
                    tokio::time::sleep(every).await;
                    let frame = Frame::data(Bytes::from(format!("chunk {i};")));
                    Some((Ok::<_, Infallible>(frame), i + 1))
                });
                Response::new(StreamBody::new(stream).boxed())
            }
            Answer::Raw { .. } => unreachable!("raw answers bypass hyper"),
        }
    })
}

/// Reads the request (head and `Content-Length` body), writes `bytes`,
/// waits `pause`, then resets or closes.
async fn raw(mut stream: TcpStream, bytes: &[u8], pause: Duration, end: End) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let body_start = loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..body_start]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < body_start + length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let _ = stream.write_all(bytes).await;
    let _ = stream.flush().await;
    tokio::time::sleep(pause).await;
    match end {
        End::Reset => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        End::Close => {
            let _ = stream.shutdown().await;
        }
    }
}

// ---------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------

type Stack = LlmService<Client<HttpConnector, String>>;
type Reply = Result<Response<LlmBody<Incoming>>, Error>;

const ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);
/// Generous, on real time: loopback answers take milliseconds.
const BOUND: Duration = Duration::from_secs(20);

fn layer() -> LlmLayer {
    LlmLayer::new(Provider::OpenAi)
        .requests_per_minute(100_000)
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .retry(|r| {
            r.max_attempts(ATTEMPTS)
                .max_attempts_for(ErrorClass::RateLimited, ATTEMPTS)
                .backoff(Backoff::new(
                    Duration::from_millis(5),
                    Duration::from_millis(20),
                ))
                .no_budget()
        })
}

fn stack() -> Stack {
    layer().layer(Client::builder(TokioExecutor::new()).build_http::<String>())
}

fn request(url: &str, i: usize) -> Request<String> {
    Request::post(url)
        .header("content-type", "application/json")
        .header("x-request-id", i.to_string())
        .body(
            r#"{"model":"gpt-4o-mini","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#
                .to_owned(),
        )
        .unwrap()
}

async fn within<T>(what: impl std::fmt::Display, f: impl Future<Output = T>) -> T {
    support::within(BOUND, what, f).await
}

/// One call through the stack, bounded.
async fn call(stack: &mut Stack, url: &str, i: usize) -> Reply {
    within(format_args!("call {i}"), async {
        stack.ready().await.unwrap().call(request(url, i)).await
    })
    .await
}

/// How a request ended, once its body (for a response) was read to the end
/// or failed.
#[derive(Debug)]
enum Ended {
    /// A response whose body was read whole.
    Body(u16, Bytes),
    /// A response whose body failed midway.
    BodyError(u16),
    /// A typed error.
    Error(Error),
}

async fn end(reply: Reply) -> Ended {
    match reply {
        Err(e) => Ended::Error(e),
        Ok(response) => {
            let status = response.status().as_u16();
            within("reading a body", async {
                match response.into_body().collect().await {
                    Ok(body) => Ended::Body(status, body.to_bytes()),
                    Err(_) => Ended::BodyError(status),
                }
            })
            .await
        }
    }
}

/// `n` requests through a fail-fast `Batch` (what is checked is the
/// stack's own answer to each request; `patient_batches_*` below check the
/// batch's patience): exactly one result each, bounded.
async fn batch(stack: Stack, url: &str, n: usize) -> Vec<Ended> {
    let requests: Vec<_> = (0..n).map(|i| request(url, 1000 + i)).collect();
    let results = within(
        "a batch",
        Batch::new(stack)
            .concurrency(4)
            .patience(Patience::fail_fast())
            .run(requests),
    )
    .await;
    assert_eq!(results.len(), n, "one result per request");
    let mut ended = Vec::new();
    for r in results {
        ended.push(end(r).await);
    }
    ended
}

/// Runs `script` once through a single call and through a batch of
/// `BATCH` requests, checks every outcome with `check` and that the server
/// saw at most `ATTEMPTS` attempts per request. Returns the outcomes.
async fn matrix(
    script: impl Fn(usize) -> Answer + Send + Sync + 'static,
    check: impl Fn(&Ended),
) -> Vec<Ended> {
    const BATCH: usize = 8;
    let server = Hostile::start(script).await;
    let mut single = stack();
    let mut all = vec![end(call(&mut single, &server.url(), 0).await).await];
    all.extend(batch(stack(), &server.url(), BATCH).await);
    for e in &all {
        check(e);
    }
    let hits = server.hits();
    assert!(
        hits <= (1 + BATCH) * ATTEMPTS as usize,
        "{hits} attempts for {} requests",
        1 + BATCH
    );
    all
}

fn is_completion(e: &Ended) -> bool {
    matches!(e, Ended::Body(200, body) if body == COMPLETION)
}

#[track_caller]
fn expect_error(e: &Ended, what: &str, predicate: impl Fn(&Error) -> bool) {
    match e {
        Ended::Error(error) => assert!(predicate(error), "{what}: got {error} ({error:?})"),
        other => panic!("{what}: expected an error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reset_before_headers_is_a_connect_error_after_the_retries() {
    let reset = || Answer::Raw {
        bytes: Vec::new(),
        pause: Duration::ZERO,
        end: End::Reset,
    };
    let all = matrix(
        move |_| reset(),
        |e| {
            expect_error(e, "reset", |e| e.is_connect() && e.is_transport());
        },
    )
    .await;
    assert_eq!(all.len(), 9);

    // A reset on the first attempt only: the retry delivers the answer.
    let server = Hostile::start(move |n| if n == 0 { reset() } else { ok() }).await;
    let reply = end(call(&mut stack(), &server.url(), 0).await).await;
    assert!(is_completion(&reply), "{reply:?}");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn reset_after_headers_fails_the_body_not_the_call() {
    matrix(
        |_| cut(200, 1000, r#"{"id":"c","choices":[{"mess"#, End::Reset),
        |e| match e {
            Ended::BodyError(200) => {}
            // The reset overtook the head: nothing was received.
            Ended::Error(error) => assert!(error.is_connect(), "{error}"),
            other => panic!("reset mid-body: {other:?}"),
        },
    )
    .await;
}

#[tokio::test]
async fn truncated_body_fails_the_body_not_the_call() {
    let all = matrix(
        |_| cut(200, 1000, r#"{"id":"c","choices":[{"mess"#, End::Close),
        |e| assert!(matches!(e, Ended::BodyError(200)), "truncated: {e:?}"),
    )
    .await;
    assert_eq!(all.len(), 9);
}

#[tokio::test]
async fn garbage_json_on_a_200_is_a_readable_success() {
    matrix(
        |_| {
            status(
                200,
                &[("content-type", "application/json")],
                "{not json]]\u{0}",
            )
        },
        |e| {
            assert!(
                matches!(e, Ended::Body(200, b) if &b[..] == "{not json]]\u{0}".as_bytes()),
                "{e:?}"
            )
        },
    )
    .await;
}

#[tokio::test]
async fn an_error_object_on_a_200_is_a_readable_success() {
    // A 2xx is a success for every `Provider` (`is_error_status`); a server
    // that reports failures with a 2xx needs a classifier of its own.
    let body = r#"{"error":{"message":"Internal error","type":"server_error","code":"insufficient_quota"}}"#;
    matrix(
        move |_| status(200, &[("content-type", "application/json")], body),
        |e| assert!(matches!(e, Ended::Body(200, b) if b == body), "{e:?}"),
    )
    .await;
}

#[tokio::test]
async fn huge_headers_are_read_and_ignored() {
    let junk = || {
        let mut headers: Vec<(String, String)> = (0..80)
            .map(|i| (format!("x-ratelimit-junk-{i}"), "j".repeat(512)))
            .collect();
        for name in [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-reset-tokens",
        ] {
            headers.push((name.to_owned(), "9".repeat(4000)));
        }
        headers.push(("x-huge".to_owned(), "h".repeat(60 * 1024)));
        headers
    };
    let all = matrix(
        move |_| ok_with(junk()),
        |e| assert!(is_completion(e), "{e:?}"),
    )
    .await;
    assert_eq!(all.len(), 9);
}

#[tokio::test]
async fn more_headers_than_the_client_takes_is_a_typed_error() {
    // hyper's client reads at most 100 headers: more is a parse error,
    // classified as the server's fault and retried.
    let many = || {
        (0..150)
            .map(|i| (format!("x-ratelimit-junk-{i}"), "1".to_owned()))
            .collect()
    };
    matrix(
        move |_| ok_with(many()),
        |e| {
            expect_error(e, "too many headers", |e| {
                e.is_transport() && e.is_retryable()
            });
        },
    )
    .await;
}

/// A 429 asking for an absurd wait: the stack must answer at once with a
/// typed error (the wait is above the retry cap), and the next request of
/// the key must still be answered within the bound.
async fn absurd_wait(name: &'static str, value: &'static str) {
    let server = Hostile::start(move |n| {
        if n == 0 {
            status(
                429,
                &[(name, value)],
                r#"{"error":{"type":"requests","code":"rate_limit_exceeded"}}"#,
            )
        } else {
            ok()
        }
    })
    .await;
    let mut stack = stack();
    let first = end(call(&mut stack, &server.url(), 0).await).await;
    expect_error(&first, name, |e| {
        e.is_rate_limited()
            && e.is_retry_after_too_long()
            && e.retry_after()
                .is_some_and(|w| w <= tower_llm_resilience::classify::MAX_SERVER_WAIT)
    });
    assert_eq!(
        server.hits(),
        1,
        "a wait above the cap is not slept through"
    );
    // The key is not locked for the absurd wait: the next request ends at
    // once, with a typed error that carries the (clamped) wait, refused by
    // the limiter's gate bound (and so, above the retry cap, by the retry
    // layer), without reaching the server.
    let next = end(call(&mut stack, &server.url(), 1).await).await;
    assert!(
        is_completion(&next)
            || matches!(&next, Ended::Error(e)
                if (e.is_rate_limit_timeout() || e.is_retry_after_too_long())
                    && e.is_rate_limited()
                    && e.retry_after().is_some_and(|w| w <= tower_llm_resilience::classify::MAX_SERVER_WAIT)),
        "{next:?}"
    );
}

#[tokio::test]
async fn retry_after_99999999999_does_not_lock_the_key() {
    absurd_wait("retry-after", "99999999999").await;
}

#[tokio::test]
async fn retry_after_ms_1e308_does_not_lock_the_key() {
    absurd_wait("retry-after-ms", "1e308").await;
}

#[tokio::test]
async fn retry_after_in_year_9999_does_not_lock_the_key() {
    absurd_wait("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT").await;
}

/// A 429 whose wait is not a wait: it is ignored, the stack backs off on
/// its own and the retry succeeds.
async fn ignored_wait(name: &'static str, value: &'static str) {
    let server = Hostile::start(move |n| {
        if n == 0 {
            status(429, &[(name, value)], "")
        } else {
            ok()
        }
    })
    .await;
    let reply = end(call(&mut stack(), &server.url(), 0).await).await;
    assert!(is_completion(&reply), "{name}: {value}: {reply:?}");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn retry_after_minus_5_is_ignored() {
    ignored_wait("retry-after", "-5").await;
}

#[tokio::test]
async fn retry_after_nan_is_ignored() {
    ignored_wait("retry-after", "NaN").await;
    ignored_wait("retry-after-ms", "NaN").await;
    ignored_wait("retry-after-ms", "-inf").await;
}

#[tokio::test]
async fn remaining_requests_minus_1_is_unknown() {
    let headers = || {
        vec![
            ("x-ratelimit-remaining-requests".to_owned(), "-1".to_owned()),
            ("x-ratelimit-remaining-tokens".to_owned(), "-1".to_owned()),
        ]
    };
    matrix(
        move |_| ok_with(headers()),
        |e| assert!(is_completion(e), "{e:?}"),
    )
    .await;
}

#[tokio::test]
async fn limit_requests_0_does_not_lock_the_key() {
    let headers = || {
        vec![
            ("x-ratelimit-limit-requests".to_owned(), "0".to_owned()),
            ("x-ratelimit-remaining-requests".to_owned(), "0".to_owned()),
            ("x-ratelimit-reset-requests".to_owned(), "1s".to_owned()),
        ]
    };
    let server = Hostile::start(move |_| ok_with(headers())).await;
    let mut stack = stack();
    for i in 0..3 {
        let reply = end(call(&mut stack, &server.url(), i).await).await;
        assert!(is_completion(&reply), "request {i}: {reply:?}");
    }
}

#[tokio::test]
async fn remaining_0_with_an_absurd_reset_does_not_lock_the_key() {
    // A 200 that says nothing remains until a reset in 3 years (clamped
    // to a day): the next request must still end within the bound.
    let headers = || {
        vec![
            ("x-ratelimit-limit-requests".to_owned(), "100".to_owned()),
            ("x-ratelimit-remaining-requests".to_owned(), "0".to_owned()),
            (
                "x-ratelimit-reset-requests".to_owned(),
                "99999999s".to_owned(),
            ),
        ]
    };
    let server = Hostile::start(move |_| ok_with(headers())).await;
    // The reset is bounded by the limit's window (60 s): with a short
    // `max_wait`, the next request says so at once instead of waiting it
    // out, and its wait is the window's at most, not a day's.
    let mut stack = layer()
        .max_wait(Duration::from_secs(2))
        .retry(|r| r.max_attempts_for(ErrorClass::RateLimited, 1))
        .layer(Client::builder(TokioExecutor::new()).build_http::<String>());
    for i in 0..3 {
        let reply = end(call(&mut stack, &server.url(), i).await).await;
        assert!(
            is_completion(&reply)
                || matches!(&reply, Ended::Error(e)
                    if e.is_rate_limit_timeout()
                        && e.retry_after().is_some_and(|w| w <= Duration::from_secs(61))),
            "request {i}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn a_slow_first_byte_times_out_each_attempt() {
    let slow = || Answer::SlowFirstByte(Duration::from_secs(3), Box::new(ok()));
    let server = Hostile::start(move |_| slow()).await;
    let start = std::time::Instant::now();
    let reply = end(call(&mut stack(), &server.url(), 0).await).await;
    expect_error(&reply, "slow first byte", |e| {
        e.is_timeout() && e.is_retryable()
    });
    assert_eq!(server.hits(), ATTEMPTS as usize);
    // Each attempt waited its timeout, not the server's 3 s.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // Slow once, then fast: the retry delivers.
    let server = Hostile::start(move |n| if n == 0 { slow() } else { ok() }).await;
    let reply = end(call(&mut stack(), &server.url(), 0).await).await;
    assert!(is_completion(&reply), "{reply:?}");
}

#[tokio::test]
async fn a_slow_body_is_read_whole() {
    // The body takes longer than the attempt timeout: that timeout is for
    // the response headers, not for a streamed body.
    let chunks = 8;
    let every = ATTEMPT_TIMEOUT / 4;
    let all = matrix(
        move |_| Answer::SlowBody { chunks, every },
        |e| {
            let expected: String = (0..chunks).map(|i| format!("chunk {i};")).collect();
            assert!(matches!(e, Ended::Body(200, b) if b == &expected), "{e:?}");
        },
    )
    .await;
    assert_eq!(all.len(), 9);
}

#[tokio::test]
async fn a_429_cut_mid_json_is_classified_from_its_prefix() {
    // The quota code arrived before the cut: not retried, and the breaker
    // opens at once (the batch's later requests fail fast, same class).
    let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insuff"#;
    matrix(
        move |_| cut(429, 400, quota, End::Close),
        |e| {
            expect_error(e, "cut quota 429", |e| {
                e.is_quota_exhausted() && !e.is_retryable()
            })
        },
    )
    .await;

    // A rate-limit code cut before its closing quote says nothing: the 429
    // is retried as a rate limit, and the next answer is delivered.
    let rpm = r#"{"error":{"type":"requests","code":"rate_limit_exc"#;
    let server = Hostile::start(move |n| {
        if n == 0 {
            cut(429, 400, rpm, End::Close)
        } else {
            ok()
        }
    })
    .await;
    let reply = end(call(&mut stack(), &server.url(), 0).await).await;
    assert!(is_completion(&reply), "{reply:?}");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn every_scenario_at_once_through_a_batch() {
    // One batch, a different hostile answer for each attempt in turn:
    // every request ends exactly once, in order, within the bound.
    let answers = move |n: usize| match n % 9 {
        0 => Answer::Raw {
            bytes: Vec::new(),
            pause: Duration::ZERO,
            end: End::Reset,
        },
        1 => cut(200, 1000, "{\"id\"", End::Close),
        2 => status(200, &[], "garbage"),
        3 => status(500, &[], r#"{"error":{"type":"server_error"}}"#),
        4 => status(503, &[("retry-after", "0")], ""),
        5 => status(429, &[("retry-after", "-5")], ""),
        6 => Answer::SlowFirstByte(Duration::from_secs(2), Box::new(ok())),
        7 => Answer::SlowBody {
            chunks: 3,
            every: Duration::from_millis(20),
        },
        _ => ok(),
    };
    let server = Hostile::start(answers).await;
    let n = 36;
    let ended = batch(stack(), &server.url(), n).await;
    assert_eq!(ended.len(), n);
    for e in &ended {
        match e {
            Ended::Body(200, _) | Ended::BodyError(200) => {}
            Ended::Error(error) => assert!(
                error.is_connect()
                    || error.is_timeout()
                    || error.is_server_error()
                    || error.is_overloaded()
                    || error.is_rate_limited(),
                "{error}"
            ),
            other => panic!("{other:?}"),
        }
    }
    assert!(server.hits() <= n * ATTEMPTS as usize);
}

/// A patient batch against a server that resets every connection for a
/// while, then answers: every request ends with a completion.
#[tokio::test]
async fn patient_batches_ride_out_resets() {
    let reset = || Answer::Raw {
        bytes: Vec::new(),
        pause: Duration::ZERO,
        end: End::Reset,
    };
    let server = Hostile::start(move |n| if n < 30 { reset() } else { ok() }).await;
    let requests: Vec<_> = (0..8).map(|i| request(&server.url(), i)).collect();
    let results = within(
        "a patient batch",
        Batch::new(stack()).concurrency(4).run(requests),
    )
    .await;
    assert_eq!(results.len(), 8);
    for r in results {
        let reply = end(r).await;
        assert!(is_completion(&reply), "{reply:?}");
    }
}

/// A patient batch against a server that never answers well ends every
/// request by its `give_up_after`, with a typed error that says so.
#[tokio::test]
async fn patient_batches_give_up_on_a_server_that_never_answers() {
    let reset = || Answer::Raw {
        bytes: Vec::new(),
        pause: Duration::ZERO,
        end: End::Reset,
    };
    let server = Hostile::start(move |_| reset()).await;
    let requests: Vec<_> = (0..8).map(|i| request(&server.url(), i)).collect();
    let results = within(
        "a patient batch",
        Batch::new(stack())
            .concurrency(4)
            .patience(Patience::new().give_up_after(Duration::from_secs(2)))
            .run(requests),
    )
    .await;
    assert_eq!(results.len(), 8);
    for r in results {
        expect_error(&end(r).await, "gave up", |e| {
            e.is_gave_up() && e.is_connect()
        });
    }
}
