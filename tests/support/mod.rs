//! What the integration tests share (`mod support;` in a test file): the
//! no-op and counting services, a counting allocator, response builders,
//! hang guards for paused time, and the labelling workload that the stack
//! and batch tests send to the simulated provider.
//!
//! Every test binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::fmt::Display;
use std::future::{ready, Future, Ready};
use std::sync::atomic::{AtomicIsize, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use tower::Service;
use tower_llm_resilience::rate_limit::TokenEstimate;

// ---------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------

/// Answers every request at once with an empty 200, allocating nothing:
/// the baseline of the overhead and allocation tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noop;

impl Service<Request<String>> for Noop {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        Answer(StatusCode::OK).call(request)
    }
}

/// Answers every request at once with this status and an empty body,
/// allocating nothing.
#[derive(Clone, Copy, Debug)]
pub struct Answer(pub StatusCode);

impl Service<Request<String>> for Answer {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<String>) -> Self::Future {
        let mut response = Response::new(String::new());
        *response.status_mut() = self.0;
        ready(Ok(response))
    }
}

/// How many calls reached a service made by [`counting`]; clones share
/// the count.
#[derive(Clone, Debug, Default)]
pub struct Calls(Arc<AtomicU32>);

impl Calls {
    /// The calls so far.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A service that answers its n-th call (from 0) with `answer(n)`, and
/// the count of its calls.
pub fn counting<Req, F, Fut, T, E>(
    answer: F,
) -> (
    Calls,
    impl Service<Req, Response = T, Error = E, Future = Fut> + Clone + Send,
)
where
    F: Fn(u32) -> Fut + Clone + Send,
    Fut: Future<Output = Result<T, E>>,
{
    let calls = Calls::default();
    let seen = calls.clone();
    let service = tower::service_fn(move |_: Req| answer(seen.0.fetch_add(1, Ordering::SeqCst)));
    (calls, service)
}

// ---------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------

/// `n` milliseconds.
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` seconds.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A request with an empty body whose token cost is `tokens` (a
/// [`TokenEstimate`]).
pub fn req(tokens: u32) -> Request<String> {
    let mut r = Request::new(String::new());
    r.extensions_mut()
        .insert(TokenEstimate::total(tokens.into()));
    r
}

/// A response with this status (a `u16` or a `StatusCode`), these headers
/// and an empty body.
pub fn response<S>(status: S, headers: &[(&str, &str)]) -> Response<String>
where
    StatusCode: TryFrom<S>,
    <StatusCode as TryFrom<S>>::Error: Into<http::Error>,
{
    answer(status, headers, "")
}

/// A response with this status, these headers and this body.
pub fn answer<S>(status: S, headers: &[(&str, &str)], body: &str) -> Response<String>
where
    StatusCode: TryFrom<S>,
    <StatusCode as TryFrom<S>>::Error: Into<http::Error>,
{
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body.to_owned()).unwrap()
}

// ---------------------------------------------------------------------------
// Hang guards
// ---------------------------------------------------------------------------

/// Runs `f`, or fails the test when it is still pending after `limit`
/// (tokio's clock: paused time jumps there at once when nothing else can
/// run), naming `what`.
pub async fn within<T>(limit: Duration, what: impl Display, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(t) => t,
        Err(_) => panic!("{what}: still pending after {limit:?}: a hang"),
    }
}

/// Runs `f` with a bound of an hour of paused time: a call that never
/// resolves is a hang, reported as such.
pub async fn bounded<T>(f: impl Future<Output = T>) -> T {
    within(Duration::from_secs(3600), "a call", f).await
}

// ---------------------------------------------------------------------------
// A counting allocator
// ---------------------------------------------------------------------------

/// A global allocator that counts, on top of the system's: allocations
/// and live bytes per thread ([`ALLOCS`], [`LIVE`]: the requests of an
/// allocation test run on one thread while the harness's own may
/// allocate), and live bytes in the whole process ([`live_bytes`]). A test
/// binary installs it with
/// `#[global_allocator] static GLOBAL: support::Counting = support::Counting;`.
pub struct Counting;

thread_local! {
    /// Allocations (a reallocation counts as one) made by this thread.
    pub static ALLOCS: Cell<u64> = const { Cell::new(0) };
    /// Bytes this thread allocated minus those it freed.
    pub static LIVE: Cell<i64> = const { Cell::new(0) };
}

static LIVE_IN_PROCESS: AtomicIsize = AtomicIsize::new(0);

fn count(allocations: u64, bytes: isize) {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + allocations));
    let _ = LIVE.try_with(|c| c.set(c.get() + bytes as i64));
    LIVE_IN_PROCESS.fetch_add(bytes, Ordering::Relaxed);
}

// SAFETY: forwards every call to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(1, layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(0, -(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(1, new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

/// Allocations made by this thread so far.
pub fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Bytes live on the heap of the whole process.
pub fn live_bytes() -> isize {
    LIVE_IN_PROCESS.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// The labelling workload against the simulated provider
// ---------------------------------------------------------------------------

/// Words of known sentiment (and neutral ones) for the texts to label.
pub const WORDS: &[&str] = &[
    "love", "awful", "chair", "great", "broken", "table", "best", "rude",
];

/// `n` texts of two words each, of every sentiment, each one unique.
pub fn texts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{} {} item {i}", WORDS[i % 8], WORDS[(i * 3 + 1) % 8]))
        .collect()
}

/// The message content of a chat completion's body.
pub fn content(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}
