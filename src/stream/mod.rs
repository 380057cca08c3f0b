//! Streams: the real usage and the failures inside a response body.

mod watch;

pub use self::watch::{
    BodyShape, Dialect, StreamFailure, StreamReport, StreamWatcher, DEFAULT_CAPTURE_LIMIT,
    MAX_TOKEN_COUNT,
};

#[cfg(test)]
mod fixtures;
