//! What the benches share: the chat body, the no-op services, a counting
//! allocator and the contention harness.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower::Service;

/// A realistic chat request body of about 1 KiB: a system prompt, a user
/// turn and `max_tokens` at the end (the estimator's worst case: every
/// field name it looks for is searched through the whole body).
pub fn chat_body() -> String {
    let text = "The package arrived two days late and the box was crushed, but the \
                headphones inside work well and the sound is clear. ";
    serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You label the sentiment of short texts. Answer with exactly one word: positive, negative or neutral."},
            {"role": "user", "content": text.repeat(6)},
        ],
        "max_tokens": 5,
    })
    .to_string()
}

/// The no-op inner service: ready at once, answers an empty 200 with a
/// body of type `B` (made by `Default`, which allocates nothing).
pub struct Noop<B>(std::marker::PhantomData<fn() -> B>);

impl<B> Noop<B> {
    pub const fn new() -> Self {
        Noop(std::marker::PhantomData)
    }
}

impl<B> Clone for Noop<B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for Noop<B> {}

impl<B: Default> Service<Request<String>> for Noop<B> {
    type Response = Response<B>;
    type Error = Infallible;
    type Future = Ready<Result<Response<B>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<String>) -> Self::Future {
        ready(Ok(Response::new(B::default())))
    }
}

/// Counts this thread's allocations (install with `#[global_allocator]`).
pub struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts, per thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new)
    }
}

/// Allocations made by this thread so far.
pub fn allocations() -> u64 {
    ALLOCS.with(Cell::get)
}

/// The case named by `CALLGRIND_CASE` and the requests to run it for
/// (`CALLGRIND_ITERS`, default 10,000); `None` when no case is set (a
/// normal criterion run).
pub fn callgrind_case() -> Option<(String, u64)> {
    let case = std::env::var("CALLGRIND_CASE").ok()?;
    let iters = std::env::var("CALLGRIND_ITERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    Some((case, iters))
}

/// `iters` requests made by `make` through `svc` on a current-thread
/// runtime: the region callgrind counts with
/// `--toggle-collect='*count_instructions*'`.
pub fn count_instructions<S, R>(mut svc: S, make: impl Fn() -> R, iters: u64)
where
    S: Service<R>,
{
    rt().block_on(async {
        for _ in 0..iters {
            if let Ok(svc) = tower::ServiceExt::ready(&mut svc).await {
                std::hint::black_box(svc.call(make()).await.is_ok());
            }
        }
    });
}

/// [`count_instructions`] for a service whose responses stream: each
/// response's body is read to its end inside the counted region.
pub fn count_instructions_streamed<S, R, B>(mut svc: S, make: impl Fn() -> R, iters: u64)
where
    S: Service<R, Response = http::Response<B>>,
    B: http_body::Body + Unpin,
{
    use http_body_util::BodyExt;
    rt().block_on(async {
        for _ in 0..iters {
            if let Ok(svc) = tower::ServiceExt::ready(&mut svc).await {
                if let Ok(response) = svc.call(make()).await {
                    let mut body = response.into_body();
                    while let Some(Ok(frame)) = body.frame().await {
                        std::hint::black_box(frame);
                    }
                }
            }
        }
    });
}

/// A streamed body: `n` SSE chunks of static bytes, allocating nothing.
pub struct Chunks(pub u32);

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
        if self.0 == 0 {
            return Poll::Ready(None);
        }
        self.0 -= 1;
        let chunk = bytes::Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"ok\"}}]}\n\n",
        );
        Poll::Ready(Some(Ok(http_body::Frame::data(chunk))))
    }
}

/// Answers every request with a 200 `text/event-stream` of `self.0`
/// chunks (its header map allocates once per response, for both the
/// baseline and the layer under test).
#[derive(Clone, Copy)]
pub struct Sse(pub u32);

impl<R> Service<R> for Sse {
    type Response = Response<Chunks>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Chunks>, Infallible>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: R) -> Self::Future {
        let mut response = Response::new(Chunks(self.0));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        ready(Ok(response))
    }
}

/// A current-thread runtime with timers.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `work(iters)` on `threads` OS threads at once (each with its own
/// state made by `make`), started together, and returns the time per
/// request of the whole group: wall time / (threads * iters). With one
/// thread that is the time of one call; the throughput of n threads
/// relative to one is `t1 / tn`.
pub fn contended<W>(threads: usize, iters: u64, make: impl Fn() -> W) -> Duration
where
    W: FnOnce(u64) + Send + 'static,
{
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let work = make();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                work(iters);
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed() / threads as u32
}
