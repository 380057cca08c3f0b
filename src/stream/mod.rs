//! Streams: the real usage and the failures inside a response body.

mod body;
mod idle;
mod watch;

pub use self::body::{Ending, OnEnd, StreamEnd, StreamHook, WatchedBody};
pub use self::idle::{IdleTimeout, IdleTimeoutBody, IdleTimeoutFuture, IdleTimeoutLayer};
pub use self::watch::{
    BodyShape, Dialect, StreamFailure, StreamReport, StreamWatcher, DEFAULT_CAPTURE_LIMIT,
    MAX_TOKEN_COUNT,
};

#[cfg(test)]
mod fixtures;
