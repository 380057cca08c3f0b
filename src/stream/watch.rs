//! The pure stream watcher: an incremental scanner of response bodies that
//! finds the usage, the error events and the terminator without buffering.

use std::fmt;
use std::io::IoSlice;

use bytes::Buf;
use http::HeaderMap;
use memchr::{memchr2, memchr3};
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::classify::{code_class, parse_error_body, ErrorClass};
use crate::rate_limit::TokenUsage;

/// How many bytes of a `usage` or `error` object the watcher keeps to parse
/// it: real ones are 50 to 500 bytes. A longer usage object is dropped; a
/// longer error object is classified from its first bytes.
pub const DEFAULT_CAPTURE_LIMIT: usize = 4 * 1024;

/// The largest token count believed: a count above it (`1e30`, 2^40) is
/// absurd for any model's context or output and is ignored like a
/// negative or non-numeric one.
pub const MAX_TOKEN_COUNT: u64 = u32::MAX as u64;

/// What kind of body the watcher reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BodyShape {
    /// Server-sent events (`text/event-stream`): `event:` and `data:`
    /// lines, one JSON value per event.
    EventStream,
    /// One whole JSON value (or a JSON array of values, as Gemini's
    /// `streamGenerateContent` without `alt=sse` sends).
    #[default]
    Json,
}

impl BodyShape {
    /// [`EventStream`](Self::EventStream) when the `content-type` is
    /// `text/event-stream` (any case, with or without parameters), else
    /// [`Json`](Self::Json).
    pub fn of(headers: &HeaderMap) -> Self {
        let event_stream = headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes().trim_ascii_start())
            .and_then(|v| v.get(..17))
            .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"));
        if event_stream {
            BodyShape::EventStream
        } else {
            BodyShape::Json
        }
    }
}

/// Whose stream format the watcher recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// OpenAI chat completions and compatible servers: `choices`, ends
    /// with `data: [DONE]`.
    OpenAiChat,
    /// OpenAI's Responses API: `response.*` events, ends with
    /// `response.completed` (or `response.incomplete`).
    OpenAiResponses,
    /// Anthropic messages: `message_*` and `content_block_*` events, ends
    /// with `message_stop`.
    Anthropic,
    /// Gemini: `candidates` and `usageMetadata`, ends with a record that
    /// carries a `finishReason` (or a `blockReason`).
    Gemini,
}

/// An error the provider reported inside a successful (2xx) event stream:
/// an error event, or a record holding an error object. (A whole JSON
/// body is judged by its status, as every layer judges it.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamFailure {
    /// The class of the error, from its code ([`ErrorClass::ServerError`]
    /// when the code is unknown or missing).
    pub class: ErrorClass,
    /// The recognised code (`"overloaded_error"`, `"server_error"`...).
    pub code: Option<&'static str>,
}

/// What the watcher saw of a body so far (at the end: of the whole body).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct StreamReport {
    /// The provider's token usage: the latest input and output counts
    /// seen, each kept separately (a missing one is 0). `None` when the
    /// body carried no usage.
    pub usage: Option<TokenUsage>,
    /// The first error the provider reported inside the event stream.
    pub failure: Option<StreamFailure>,
    /// The body's terminator was seen: `data: [DONE]`, `message_stop`,
    /// `response.completed`, a Gemini record with a `finishReason`; for a
    /// JSON body, its top-level value closed.
    pub complete: bool,
    /// Bytes of data the watcher was fed.
    pub delivered: u64,
    /// Whose format the body is in, when recognised.
    pub dialect: Option<Dialect>,
    /// Server-sent events that ended (a blank line after at least one
    /// `data:` line).
    pub events: u64,
    /// The shape the watcher read the body as.
    pub shape: BodyShape,
}

impl StreamReport {
    /// Whether the body, ended here, was cut short: an event stream in a
    /// recognised format whose terminator never came and that reported no
    /// error. An unrecognised stream is never called truncated.
    pub fn is_truncated(&self) -> bool {
        self.shape == BodyShape::EventStream
            && self.dialect.is_some()
            && !self.complete
            && self.failure.is_none()
    }
}

/// An incremental scanner of a response body: fed the body's frames as
/// they pass, it finds the token usage, the errors reported inside a 2xx
/// body and the terminator, for every provider shape (see the
/// [module docs](super)).
///
/// It is a plain value with no I/O and no clock. It never buffers the
/// body: it keeps a few small fixed buffers for what a frame boundary can
/// split (a line's field name, a key, the first bytes of a `data:` line)
/// and captures at most [`DEFAULT_CAPTURE_LIMIT`] bytes of a `usage` or
/// `error` object in one buffer allocated the first time it is needed.
/// Keys are recognised only as keys (a quoted name followed by `:`), never
/// inside a JSON string, so a completion that talks about `"usage"` is
/// not mistaken for one. Any bytes are accepted; garbage gives an empty
/// report, never a panic.
///
/// The scanner's state (about 340 bytes) is boxed when the first byte
/// comes, so that a response body carrying a watcher stays small while it
/// moves through the layers: one allocation per body with data (and one
/// more for a captured usage or error object), none per frame, none for an
/// empty body.
#[derive(Clone)]
pub struct StreamWatcher {
    shape: BodyShape,
    watch_usage: bool,
    capture_limit: usize,
    scanner: Option<Box<Scanner>>,
}

/// The scanner behind a [`StreamWatcher`], made at its first byte.
#[derive(Clone)]
struct Scanner {
    shape: BodyShape,
    watch_usage: bool,
    capture_limit: usize,
    delivered: u64,
    input: Option<u64>,
    output: Option<u64>,
    failure: Option<StreamFailure>,
    complete: bool,
    dialect: Option<Dialect>,
    events: u64,
    sse: Sse,
    json: Json,
    event: EventFacts,
    capture: Vec<u8>,
    capturing: Option<Capture>,
}

impl fmt::Debug for StreamWatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamWatcher")
            .field("shape", &self.shape)
            .field("report", &self.report())
            .finish()
    }
}

/// The SSE line layer's state, carried across frames.
#[derive(Clone, Debug, Default)]
struct Sse {
    line: Line,
    /// A `\r` ended the last line: a `\n` right after it is part of it.
    skip_lf: bool,
    /// The field's value may start with one space, which is not part of it.
    skip_space: bool,
    name: Small<8>,
    value: Small<32>,
    /// What the current event's `event:` line named.
    name_kind: Option<EventKind>,
    data_lines: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Line {
    #[default]
    Start,
    Name,
    Data,
    Event,
    Ignore,
}

/// The JSON scanner's state, carried across frames (and across the `data:`
/// lines of one event).
#[derive(Clone, Debug, Default)]
struct Json {
    depth: u32,
    /// 1 when the outermost value is an array whose elements are the
    /// records (Gemini), else 0.
    base: u32,
    in_string: bool,
    escape: bool,
    string: Small<48>,
    role: Role,
    /// A string just closed outside any capture: a key if `:` follows.
    maybe_key: Option<(Key, u32)>,
    /// A key and `:` were seen: the next value is that key's.
    expect: Option<(Key, u32)>,
    /// Inside a value nothing is wanted from, at this depth: only its
    /// strings and nesting are followed, to find its end.
    skip: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default)]
enum Role {
    #[default]
    MaybeKey,
    Value(Key, u32),
}

/// The keys the watcher cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Key {
    Usage,
    UsageMetadata,
    Error,
    Type,
    Code,
    Choices,
    Candidates,
    FinishReason,
    BlockReason,
    /// A value with nothing of interest inside (message text, deltas,
    /// output items, tool schemas, embedding vectors): skipped quickly.
    Skip,
    Other,
}

impl Key {
    fn of(name: Option<&[u8]>) -> Key {
        match name {
            Some(b"usage") => Key::Usage,
            Some(b"usageMetadata") => Key::UsageMetadata,
            Some(b"error") => Key::Error,
            Some(b"type") => Key::Type,
            Some(b"code") => Key::Code,
            Some(b"choices") => Key::Choices,
            Some(b"candidates") => Key::Candidates,
            Some(b"finishReason") => Key::FinishReason,
            Some(b"blockReason") => Key::BlockReason,
            Some(
                b"delta" | b"content_block" | b"content" | b"output" | b"tools" | b"embedding",
            ) => Key::Skip,
            _ => Key::Other,
        }
    }
}

/// What an event is, from its `event:` name or its data's `type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EventKind {
    Error,
    MessageStop,
    ResponseDone,
    ResponseFailed,
    Anthropic,
    Responses,
    Other,
}

impl EventKind {
    fn of(name: Option<&[u8]>) -> EventKind {
        match name {
            Some(b"error") => EventKind::Error,
            Some(b"message_stop") => EventKind::MessageStop,
            Some(b"response.completed" | b"response.incomplete") => EventKind::ResponseDone,
            Some(b"response.failed") => EventKind::ResponseFailed,
            Some(n) if n.starts_with(b"message_") || n.starts_with(b"content_block_") => {
                EventKind::Anthropic
            }
            Some(n) if n.starts_with(b"response.") => EventKind::Responses,
            _ => EventKind::Other,
        }
    }

    fn dialect(self) -> Option<Dialect> {
        match self {
            EventKind::MessageStop | EventKind::Anthropic => Some(Dialect::Anthropic),
            EventKind::ResponseDone | EventKind::ResponseFailed | EventKind::Responses => {
                Some(Dialect::OpenAiResponses)
            }
            EventKind::Error | EventKind::Other => None,
        }
    }
}

/// What one record (an event's data, or a JSON body) said so far.
#[derive(Clone, Copy, Debug, Default)]
struct EventFacts {
    kind: Option<EventKind>,
    /// An `error` key with an object or a string value at the top level.
    has_error: bool,
    /// The class and code of a captured error object.
    error: Option<(Option<ErrorClass>, Option<&'static str>)>,
    /// A bare code (`"code":"server_error"`, `"error":"rate_limit_exceeded"`).
    code: Option<(&'static str, ErrorClass)>,
    /// Gemini's `finishReason` or `blockReason`.
    finished: bool,
}

#[derive(Clone, Copy, Debug)]
struct Capture {
    what: Captured,
    /// The depth inside the captured object.
    depth: u32,
    overflow: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Captured {
    Usage,
    Error { top: bool },
}

/// The first `N` bytes of something split across frames, and its whole
/// length (saturating); tainted by an escape.
#[derive(Clone, Copy, Debug)]
struct Small<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Small<N> {
    fn default() -> Self {
        Small {
            bytes: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Small<N> {
    fn clear(&mut self) {
        self.len = 0;
    }

    fn extend(&mut self, more: &[u8]) {
        if let Some(room) = self.bytes.get_mut(self.len..) {
            let n = room.len().min(more.len());
            room[..n].copy_from_slice(&more[..n]);
        }
        self.len = self.len.saturating_add(more.len());
    }

    /// Marks the content as matching nothing (an escaped character).
    fn taint(&mut self) {
        self.len = usize::MAX;
    }

    /// The whole content, when it fit.
    fn get(&self) -> Option<&[u8]> {
        self.bytes.get(..self.len)
    }
}

impl StreamWatcher {
    /// A watcher for a body of this shape, capturing up to
    /// [`DEFAULT_CAPTURE_LIMIT`] bytes of a usage or error object.
    pub fn new(shape: BodyShape) -> Self {
        StreamWatcher {
            shape,
            watch_usage: true,
            capture_limit: DEFAULT_CAPTURE_LIMIT,
            scanner: None,
        }
    }

    /// A watcher for a response with these headers (see [`BodyShape::of`]).
    pub fn for_response(headers: &HeaderMap) -> Self {
        StreamWatcher::new(BodyShape::of(headers))
    }

    /// How many bytes of a usage or error object to keep at most (default
    /// [`DEFAULT_CAPTURE_LIMIT`]; 0 keeps none: no usage is read, and an
    /// error event is classified only by a code outside an error object,
    /// else as a [`ServerError`](ErrorClass::ServerError)).
    pub fn capture_limit(mut self, bytes: usize) -> Self {
        self.capture_limit = bytes;
        if let Some(scanner) = &mut self.scanner {
            scanner.capture_limit = bytes;
        }
        self
    }

    /// Watches for errors and the terminator only, not for usage: nothing
    /// is captured on a success, so nothing is allocated.
    pub(crate) fn without_usage(mut self) -> Self {
        self.watch_usage = false;
        if let Some(scanner) = &mut self.scanner {
            scanner.watch_usage = false;
        }
        self
    }

    /// The shape the watcher reads.
    pub fn shape(&self) -> BodyShape {
        self.shape
    }

    /// The scanner, made at the first byte.
    fn scanner(&mut self) -> &mut Scanner {
        let (shape, watch_usage, limit) = (self.shape, self.watch_usage, self.capture_limit);
        self.scanner
            .get_or_insert_with(|| Box::new(Scanner::new(shape, watch_usage, limit)))
    }

    /// Reads the next bytes of the body. Any split of a body into chunks
    /// gives the same report as the body in one chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        if !chunk.is_empty() {
            self.scanner().feed(chunk);
        }
    }

    /// Reads a frame's data: every contiguous part of it (up to 16; the
    /// bytes of a buffer in more parts than that are counted, not read).
    pub(crate) fn feed_buf<D: Buf>(&mut self, data: &D) {
        if data.has_remaining() {
            self.scanner().feed_buf(data);
        }
    }

    /// Server-sent events that ended so far (the report's `events`).
    pub(crate) fn events(&self) -> u64 {
        self.scanner.as_ref().map_or(0, |s| s.events())
    }

    /// The first error the body reported, if any (the report's `failure`).
    pub fn failure(&self) -> Option<StreamFailure> {
        self.scanner.as_ref().and_then(|s| s.failure())
    }

    /// Bytes fed so far (the report's `delivered`).
    pub fn delivered(&self) -> u64 {
        self.scanner.as_ref().map_or(0, |s| s.delivered())
    }

    /// What the body said so far.
    pub fn report(&self) -> StreamReport {
        match &self.scanner {
            Some(scanner) => scanner.report(),
            None => StreamReport {
                usage: None,
                failure: None,
                complete: false,
                delivered: 0,
                dialect: None,
                events: 0,
                shape: self.shape,
            },
        }
    }
}

impl Scanner {
    /// A watcher for a body of this shape, capturing up to
    /// [`DEFAULT_CAPTURE_LIMIT`] bytes of a usage or error object.
    fn new(shape: BodyShape, watch_usage: bool, capture_limit: usize) -> Self {
        Scanner {
            shape,
            watch_usage,
            capture_limit,
            delivered: 0,
            input: None,
            output: None,
            failure: None,
            complete: false,
            dialect: None,
            events: 0,
            sse: Sse::default(),
            json: Json::default(),
            event: EventFacts::default(),
            capture: Vec::new(),
            capturing: None,
        }
    }

    /// Reads the next bytes of the body. Any split of a body into chunks
    /// gives the same report as the body in one chunk.
    fn feed(&mut self, chunk: &[u8]) {
        self.delivered = self.delivered.saturating_add(chunk.len() as u64);
        match self.shape {
            BodyShape::EventStream => self.feed_sse(chunk),
            BodyShape::Json => self.scan_json(chunk),
        }
    }

    /// Reads a frame's data: every contiguous part of it (up to 16; the
    /// bytes of a buffer in more parts than that are counted, not read).
    fn feed_buf<D: Buf>(&mut self, data: &D) {
        let mut parts = [IoSlice::new(&[]); 16];
        let n = data.chunks_vectored(&mut parts);
        let mut fed = 0;
        for part in &parts[..n] {
            self.feed(part);
            fed += part.len();
        }
        let skipped = data.remaining().saturating_sub(fed) as u64;
        self.delivered = self.delivered.saturating_add(skipped);
    }

    /// Server-sent events that ended so far (the report's `events`).
    fn events(&self) -> u64 {
        self.events
    }

    /// The first error the body reported, if any (the report's `failure`).
    fn failure(&self) -> Option<StreamFailure> {
        self.failure
    }

    /// Bytes fed so far (the report's `delivered`).
    fn delivered(&self) -> u64 {
        self.delivered
    }

    /// What the body said so far.
    fn report(&self) -> StreamReport {
        let usage = (self.input.is_some() || self.output.is_some()).then(|| TokenUsage {
            input_tokens: self.input.unwrap_or(0),
            output_tokens: self.output.unwrap_or(0),
        });
        // `data: [DONE]` whose line has not ended yet (the body's last bytes).
        let done_pending = self.shape == BodyShape::EventStream
            && self.sse.line == Line::Data
            && is_done(&self.sse.value);
        StreamReport {
            usage,
            failure: self.failure,
            complete: self.complete || done_pending,
            delivered: self.delivered,
            dialect: self.dialect.or(done_pending.then_some(Dialect::OpenAiChat)),
            events: self.events,
            shape: self.shape,
        }
    }

    // ---- the SSE line layer ----

    fn feed_sse(&mut self, mut chunk: &[u8]) {
        while let Some(&first) = chunk.first() {
            if self.sse.skip_lf {
                self.sse.skip_lf = false;
                if first == b'\n' {
                    chunk = &chunk[1..];
                    continue;
                }
            }
            match self.sse.line {
                Line::Start => match first {
                    b'\r' | b'\n' => {
                        self.sse.skip_lf = first == b'\r';
                        chunk = &chunk[1..];
                        self.end_event();
                    }
                    b':' => {
                        self.sse.line = Line::Ignore;
                        chunk = &chunk[1..];
                    }
                    _ => {
                        self.sse.line = Line::Name;
                        self.sse.name.clear();
                    }
                },
                Line::Name => match memchr3(b':', b'\r', b'\n', chunk) {
                    None => {
                        self.sse.name.extend(chunk);
                        chunk = &[];
                    }
                    Some(at) => {
                        self.sse.name.extend(&chunk[..at]);
                        self.start_value();
                        if chunk[at] == b':' {
                            chunk = &chunk[at + 1..];
                        } else {
                            // A field name alone: its value is empty.
                            chunk = &chunk[at..];
                        }
                    }
                },
                Line::Data | Line::Event | Line::Ignore => {
                    if self.sse.skip_space {
                        self.sse.skip_space = false;
                        if first == b' ' {
                            chunk = &chunk[1..];
                            continue;
                        }
                    }
                    let end = memchr2(b'\r', b'\n', chunk);
                    let value = &chunk[..end.unwrap_or(chunk.len())];
                    match self.sse.line {
                        Line::Data => {
                            self.sse.value.extend(value);
                            self.scan_json(value);
                        }
                        Line::Event => self.sse.value.extend(value),
                        _ => {}
                    }
                    match end {
                        None => chunk = &[],
                        Some(at) => {
                            self.sse.skip_lf = chunk[at] == b'\r';
                            chunk = &chunk[at + 1..];
                            self.end_line();
                        }
                    }
                }
            }
        }
    }

    /// The field name ended: what its value is for.
    fn start_value(&mut self) {
        // A byte-order mark may open the stream.
        let name = self
            .sse
            .name
            .get()
            .map(|n| n.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(n));
        self.sse.line = match name {
            Some(b"data") => Line::Data,
            Some(b"event") => Line::Event,
            _ => Line::Ignore,
        };
        self.sse.skip_space = true;
        self.sse.value.clear();
    }

    fn end_line(&mut self) {
        match self.sse.line {
            Line::Data => {
                self.sse.data_lines = self.sse.data_lines.saturating_add(1);
                if is_done(&self.sse.value) {
                    self.complete = true;
                    self.dialect.get_or_insert(Dialect::OpenAiChat);
                }
            }
            Line::Event => {
                let kind = EventKind::of(self.sse.value.get());
                if let Some(dialect) = kind.dialect() {
                    self.dialect.get_or_insert(dialect);
                }
                self.sse.name_kind = Some(kind);
            }
            Line::Start | Line::Name | Line::Ignore => {}
        }
        self.sse.line = Line::Start;
    }

    /// A blank line: the event ends.
    fn end_event(&mut self) {
        if self.sse.data_lines > 0 {
            self.events = self.events.saturating_add(1);
        }
        // `event: error` whose data was not a JSON object that said more.
        if self.sse.name_kind == Some(EventKind::Error) && self.failure.is_none() {
            self.event.kind = Some(EventKind::Error);
            self.conclude_record();
        }
        self.sse.name_kind = None;
        self.sse.data_lines = 0;
        self.json = Json::default();
        self.event = EventFacts::default();
        self.capturing = None;
    }

    // ---- the JSON scanner ----

    fn scan_json(&mut self, data: &[u8]) {
        // Where this chunk's part of the object being captured begins: the
        // capture takes whole slices, not byte after byte.
        let mut captured_from = self.capturing.map(|_| 0);
        let mut i = 0;
        if self.json.in_string && self.json.skip.is_none() {
            i = self.rest_of_string(data, 0);
        }
        while let Some(&byte) = data.get(i) {
            if self.json.skip.is_some() {
                i = self.skip_value(data, i);
                continue;
            }
            match byte {
                b'"' => {
                    self.begin_string();
                    let rest = &data[i + 1..];
                    match find_string_end(rest) {
                        // Whole in this chunk and without escapes (most
                        // strings): matched in place, nothing copied.
                        Some(at) if rest[at] == b'"' => {
                            self.end_string(Some(&rest[..at]));
                            i += at + 2;
                        }
                        _ => {
                            self.json.in_string = true;
                            self.json.string.clear();
                            i = self.rest_of_string(data, i + 1);
                        }
                    }
                    continue;
                }
                b'{' | b'[' => {
                    let was_capturing = self.capturing.is_some();
                    self.open(byte);
                    if !was_capturing && self.capturing.is_some() {
                        captured_from = Some(i);
                    }
                }
                b'}' | b']' => {
                    if let (Some(capture), Some(from)) = (self.capturing, captured_from) {
                        if capture.depth == self.json.depth {
                            self.capture_push(&data[from..=i]);
                            captured_from = None;
                        }
                    }
                    self.close();
                }
                b':' => {
                    let key = self.json.maybe_key.take();
                    if let Some((key, rel)) = key {
                        self.key_seen(key, rel);
                    }
                    self.json.expect = key;
                }
                b' ' | b'\t' | b'\r' | b'\n' | b',' => {}
                // A scalar (null, a number, true): its key's value, nothing
                // to keep; the rest of it is skipped at once.
                _ => {
                    self.json.maybe_key = None;
                    self.json.expect = None;
                    i += 1;
                    while data.get(i).is_some_and(|b| SCALAR[usize::from(*b)]) {
                        i += 1;
                    }
                    continue;
                }
            }
            i += 1;
        }
        if let (Some(_), Some(from)) = (self.capturing, captured_from) {
            self.capture_push(&data[from..]);
        }
    }

    /// Reads on in a string begun before `data[from..]` (carried over from
    /// an earlier chunk, or holding an escape), keeping its first bytes to
    /// be matched; returns where the scan goes on.
    fn rest_of_string(&mut self, data: &[u8], mut from: usize) -> usize {
        while let Some(rest) = data.get(from..).filter(|r| !r.is_empty()) {
            if self.json.escape {
                self.json.escape = false;
                self.json.string.taint();
                from += 1;
                continue;
            }
            let Some(at) = find_string_end(rest) else {
                self.json.string.extend(rest);
                return data.len();
            };
            self.json.string.extend(&rest[..at]);
            from += at + 1;
            if rest[at] == b'\\' {
                self.json.escape = true;
            } else {
                self.json.in_string = false;
                let string = self.json.string;
                self.end_string(string.get());
                return from;
            }
        }
        data.len()
    }

    /// Follows a value nothing is wanted from (see [`Key::Skip`]): only its
    /// strings and nesting, until the byte that closes it (left to the
    /// caller) or the end of `data`.
    fn skip_value(&mut self, data: &[u8], mut i: usize) -> usize {
        let Some(inside) = self.json.skip else {
            return i;
        };
        loop {
            if self.json.in_string {
                i = self.skip_string(data, i);
                if self.json.in_string {
                    return data.len();
                }
            }
            let Some(at) = data
                .get(i..)
                .and_then(|rest| rest.iter().position(|&b| NESTING[usize::from(b)]))
            else {
                return data.len();
            };
            i += at;
            match data[i] {
                b'"' => self.json.in_string = true,
                b'{' | b'[' => self.json.depth = self.json.depth.saturating_add(1),
                _ if self.json.depth <= inside => {
                    self.json.skip = None;
                    return i;
                }
                _ => self.json.depth -= 1,
            }
            i += 1;
        }
    }

    /// Reads on in a string of a skipped value; returns where the scan goes
    /// on (the end of `data` when the string goes on past it).
    fn skip_string(&mut self, data: &[u8], mut i: usize) -> usize {
        while let Some(rest) = data.get(i..).filter(|r| !r.is_empty()) {
            if self.json.escape {
                self.json.escape = false;
                i += 1;
                continue;
            }
            let Some(at) = find_string_end(rest) else {
                return data.len();
            };
            i += at + 1;
            if rest[at] == b'\\' {
                self.json.escape = true;
            } else {
                self.json.in_string = false;
                return i;
            }
        }
        data.len()
    }

    fn rel_depth(&self) -> u32 {
        self.json.depth.saturating_sub(self.json.base)
    }

    /// A string opens: a value when a key and `:` came before it, else
    /// perhaps a key.
    fn begin_string(&mut self) {
        self.json.maybe_key = None;
        self.json.role = match self.json.expect.take() {
            Some((key, rel)) => Role::Value(key, rel),
            None => Role::MaybeKey,
        };
    }

    /// A string closed; `content` is `None` when it was too long to keep or
    /// had an escape (it then matches nothing).
    fn end_string(&mut self, content: Option<&[u8]>) {
        if self.capturing.is_some() {
            return;
        }
        match self.json.role {
            Role::MaybeKey => {
                self.json.maybe_key = Some((Key::of(content), self.rel_depth()));
            }
            Role::Value(key, rel) => self.string_value(key, rel, content),
        }
    }

    /// A key of interest and its `:`: what it says of the format.
    fn key_seen(&mut self, key: Key, rel: u32) {
        let dialect = match (key, rel) {
            (Key::Choices, 1) => Dialect::OpenAiChat,
            (Key::Candidates | Key::UsageMetadata, 1) => Dialect::Gemini,
            _ => return,
        };
        self.dialect.get_or_insert(dialect);
    }

    fn string_value(&mut self, key: Key, rel: u32, value: Option<&[u8]>) {
        match (key, rel) {
            (Key::Type, 1) => {
                let kind = EventKind::of(value);
                if let Some(dialect) = kind.dialect() {
                    self.dialect.get_or_insert(dialect);
                }
                self.event.kind = Some(kind);
            }
            (Key::Code, 1) => self.event.code = value.and_then(code_class),
            (Key::Error, 1) => {
                self.event.has_error = true;
                self.event.code = value.and_then(code_class);
            }
            (Key::FinishReason | Key::BlockReason, _) => self.event.finished = true,
            _ => {}
        }
    }

    fn open(&mut self, byte: u8) {
        self.json.maybe_key = None;
        let expect = self.json.expect.take();
        if self.json.depth == 0 {
            self.json.base = u32::from(byte == b'[');
        }
        self.json.depth = self.json.depth.saturating_add(1);
        if let (Some((Key::Skip | Key::Choices, _)), None) = (expect, self.capturing) {
            // OpenAI's `choices` hold nothing the watcher reads either.
            self.json.skip = Some(self.json.depth);
            return;
        }
        let (Some((key, rel)), b'{', None) = (expect, byte, self.capturing) else {
            return;
        };
        let what = match key {
            Key::Usage | Key::UsageMetadata if self.watch_usage => Captured::Usage,
            Key::Error if rel == 1 => Captured::Error { top: true },
            // OpenAI Responses' `response.failed` holds `response.error`.
            Key::Error if rel == 2 && self.event.kind == Some(EventKind::ResponseFailed) => {
                Captured::Error { top: false }
            }
            _ => return,
        };
        if self.capture.capacity() < self.capture_limit {
            self.capture.reserve_exact(self.capture_limit);
        }
        self.capture.clear();
        self.capturing = Some(Capture {
            what,
            depth: self.json.depth,
            overflow: false,
        });
    }

    fn close(&mut self) {
        self.json.maybe_key = None;
        self.json.expect = None;
        let Some(depth) = self.json.depth.checked_sub(1) else {
            return; // a stray close
        };
        self.json.depth = depth;
        if let Some(capture) = self.capturing.filter(|c| c.depth == depth + 1) {
            self.capturing = None;
            self.captured(capture);
        }
        if depth == self.json.base {
            self.conclude_record();
        }
        if depth == 0 && self.shape == BodyShape::Json {
            self.complete = true;
        }
    }

    fn capture_push(&mut self, bytes: &[u8]) {
        if let Some(capture) = &mut self.capturing {
            let room = self.capture_limit.saturating_sub(self.capture.len());
            if bytes.len() > room {
                capture.overflow = true;
            }
            self.capture
                .extend_from_slice(&bytes[..bytes.len().min(room)]);
        }
    }

    fn captured(&mut self, capture: Capture) {
        match capture.what {
            Captured::Usage => {
                if capture.overflow {
                    return;
                }
                if let Ok(usage) = serde_json::from_slice::<UsageObject>(&self.capture) {
                    let (input, output) = usage.counts();
                    self.input = input.or(self.input);
                    self.output = output.or(self.output);
                }
            }
            Captured::Error { top } => {
                // A cut error object is still classified from its prefix.
                let body = parse_error_body(&self.capture);
                self.event.error = Some((body.class, body.code));
                self.event.has_error |= top;
            }
        }
    }

    /// A record (an event's data, or the JSON body) closed: what it said.
    fn conclude_record(&mut self) {
        let facts = std::mem::take(&mut self.event);
        let kind = facts.kind.or(self.sse.name_kind);
        // A whole JSON body with a 2xx status is a success, whatever it
        // holds: a server that reports failures so needs a classifier of
        // its own (`Classifier::is_error_status`), as for every layer.
        let failed = self.shape == BodyShape::EventStream
            && (facts.has_error
                || matches!(kind, Some(EventKind::Error | EventKind::ResponseFailed)));
        if failed && self.failure.is_none() {
            let (class, code) = match (facts.error, facts.code) {
                (Some((Some(class), code)), _) => (class, code),
                (_, Some((code, class))) => (class, Some(code)),
                _ => (ErrorClass::ServerError, None),
            };
            self.failure = Some(StreamFailure { class, code });
        }
        if facts.finished || matches!(kind, Some(EventKind::MessageStop | EventKind::ResponseDone))
        {
            self.complete = true;
        }
    }
}

/// The index of the `"` that ends a JSON string, or of the `\\` of an
/// escape inside it.
fn find_string_end(bytes: &[u8]) -> Option<usize> {
    // Most strings are short: eight bytes at a time (a word compared with
    // both bytes at once) beats a SIMD search's set-up; long ones go to
    // memchr.
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut at = 0;
    while at < 64 {
        let Some(word) = bytes.get(at..at + 8) else {
            return bytes[at..]
                .iter()
                .position(|&b| b == b'"' || b == b'\\')
                .map(|n| at + n);
        };
        let mut eight = [0; 8];
        eight.copy_from_slice(word);
        let word = u64::from_le_bytes(eight);
        let quote = word ^ (ONES * u64::from(b'"'));
        let slash = word ^ (ONES * u64::from(b'\\'));
        // The lowest high bit set marks the first byte equal to either.
        let found = (quote.wrapping_sub(ONES) & !quote | slash.wrapping_sub(ONES) & !slash) & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    memchr2(b'"', b'\\', &bytes[at..]).map(|n| at + n)
}

/// The bytes that matter inside a skipped value.
static NESTING: [bool; 256] = {
    let mut table = [false; 256];
    table[b'"' as usize] = true;
    table[b'{' as usize] = true;
    table[b'}' as usize] = true;
    table[b'[' as usize] = true;
    table[b']' as usize] = true;
    table
};

/// The bytes that go on a scalar (`null`, `true`, `-1.5e3`).
static SCALAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8, b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z' | b'.' | b'-' | b'+');
        b += 1;
    }
    table
};

fn is_done(value: &Small<32>) -> bool {
    value.get().is_some_and(|v| v.trim_ascii_end() == b"[DONE]")
}

/// A `usage` (OpenAI chat, Responses, embeddings, Anthropic) or
/// `usageMetadata` (Gemini) object: every field any of them uses.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UsageObject {
    prompt_tokens: Count,
    completion_tokens: Count,
    input_tokens: Count,
    output_tokens: Count,
    cache_creation_input_tokens: Count,
    #[serde(rename = "promptTokenCount")]
    prompt_token_count: Count,
    #[serde(rename = "candidatesTokenCount")]
    candidates_token_count: Count,
    #[serde(rename = "thoughtsTokenCount")]
    thoughts_token_count: Count,
}

impl UsageObject {
    /// Input and output tokens, as the provider counts them against its
    /// limits.
    fn counts(&self) -> (Option<u64>, Option<u64>) {
        // Anthropic: writing the cache counts toward the input-token limit,
        // reading it does not (`cache_read_input_tokens` is left out).
        let anthropic_input = self
            .input_tokens
            .0
            .map(|n| n.saturating_add(self.cache_creation_input_tokens.0.unwrap_or(0)));
        let input = self
            .prompt_tokens
            .0
            .or(anthropic_input)
            .or(self.prompt_token_count.0);
        // Gemini bills thinking as output.
        let gemini_output = match (self.candidates_token_count.0, self.thoughts_token_count.0) {
            (None, None) => None,
            (c, t) => Some(c.unwrap_or(0).saturating_add(t.unwrap_or(0))),
        };
        let output = self
            .completion_tokens
            .0
            .or(self.output_tokens.0)
            .or(gemini_output);
        (input, output)
    }
}

/// A token count: a whole number up to [`MAX_TOKEN_COUNT`], else nothing
/// (negative, fractional, too large, a string, null, an object).
#[derive(Clone, Copy, Debug, Default)]
struct Count(Option<u64>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CountVisitor)
    }
}

struct CountVisitor;

impl<'de> Visitor<'de> for CountVisitor {
    type Value = Count;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Count, E> {
        Ok(Count((n <= MAX_TOKEN_COUNT).then_some(n)))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Count, E> {
        Ok(u64::try_from(n).map_or(Count(None), |n| Count((n <= MAX_TOKEN_COUNT).then_some(n))))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_none<E: de::Error>(self) -> Result<Count, E> {
        Ok(Count(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Count, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Count, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Count(None))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use proptest::prelude::*;

    fn watch(shape: BodyShape, body: &[u8]) -> StreamReport {
        let mut w = StreamWatcher::new(shape);
        w.feed(body);
        w.report()
    }

    fn sse(body: &str) -> StreamReport {
        watch(BodyShape::EventStream, body.as_bytes())
    }

    fn json(body: &str) -> StreamReport {
        watch(BodyShape::Json, body.as_bytes())
    }

    fn usage(input_tokens: u64, output_tokens: u64) -> Option<TokenUsage> {
        Some(TokenUsage {
            input_tokens,
            output_tokens,
        })
    }

    fn failure(class: ErrorClass, code: Option<&'static str>) -> Option<StreamFailure> {
        Some(StreamFailure { class, code })
    }

    #[test]
    fn shape_from_content_type() {
        let mut headers = HeaderMap::new();
        assert_eq!(BodyShape::of(&headers), BodyShape::Json);
        headers.insert(
            "content-type",
            "Text/Event-Stream; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(BodyShape::of(&headers), BodyShape::EventStream);
        headers.insert("content-type", "application/json".parse().unwrap());
        assert_eq!(
            StreamWatcher::for_response(&headers).shape(),
            BodyShape::Json
        );
        headers.insert("content-type", "text/event".parse().unwrap());
        assert_eq!(BodyShape::of(&headers), BodyShape::Json);
    }

    #[test]
    fn openai_chat_stream_usage_from_the_last_chunk_only() {
        let r = sse(OPENAI_CHAT_SSE);
        // The 999 inside the second chunk's text is not a usage.
        assert_eq!(r.usage, usage(12, 7));
        assert_eq!(r.failure, None);
        assert!(r.complete && !r.is_truncated());
        assert_eq!(r.dialect, Some(Dialect::OpenAiChat));
        assert_eq!(r.events, 5);
        assert_eq!(r.delivered, OPENAI_CHAT_SSE.len() as u64);

        let r = sse(OPENAI_CHAT_SSE_NO_USAGE);
        assert_eq!(r.usage, None);
        assert!(r.complete);
    }

    #[test]
    fn whole_json_bodies() {
        let r = json(OPENAI_CHAT_JSON);
        assert_eq!((r.usage, r.complete, r.failure), (usage(50, 1), true, None));
        assert_eq!(json(OPENAI_EMBEDDINGS_JSON).usage, usage(8, 0));
        assert_eq!(json(OPENAI_RESPONSES_JSON).usage, usage(10, 20));
        assert_eq!(json(ANTHROPIC_JSON).usage, usage(10, 3));
        assert_eq!(json(GEMINI_JSON).usage, usage(4, 6));
        let r = json(GEMINI_JSON_ARRAY);
        assert_eq!((r.usage, r.complete), (usage(4, 3), true));
        // Not closed yet: not complete, and a JSON body is never "truncated".
        let cut = json(&OPENAI_CHAT_JSON[..OPENAI_CHAT_JSON.len() - 1]);
        assert!(!cut.complete && !cut.is_truncated());
    }

    #[test]
    fn responses_stream_usage_in_completed() {
        let r = sse(OPENAI_RESPONSES_SSE);
        assert_eq!(r.usage, usage(36, 87));
        assert!(r.complete);
        assert_eq!(r.dialect, Some(Dialect::OpenAiResponses));
    }

    #[test]
    fn anthropic_input_from_start_output_from_last_delta() {
        let r = sse(ANTHROPIC_SSE);
        // 25 uncached + 5 written to the cache; the 100 read are not counted.
        assert_eq!(r.usage, usage(30, 15));
        assert!(r.complete);
        assert_eq!(r.dialect, Some(Dialect::Anthropic));
        // Cut before message_delta: what was seen, and truncated.
        let cut = ANTHROPIC_SSE.find("event: message_delta").unwrap();
        let r = sse(&ANTHROPIC_SSE[..cut]);
        assert_eq!(r.usage, usage(30, 1));
        assert!(r.is_truncated());
    }

    #[test]
    fn gemini_cumulative_usage_and_finish_reason() {
        let r = sse(GEMINI_SSE);
        assert_eq!(r.usage, usage(8, 16)); // candidates 12 + thoughts 4
        assert!(r.complete);
        assert_eq!(r.dialect, Some(Dialect::Gemini));
        assert_eq!(r.events, 2);
        let first = GEMINI_SSE.find("\r\n\r\n").unwrap() + 4;
        let r = sse(&GEMINI_SSE[..first]);
        assert_eq!(r.usage, usage(8, 1));
        assert!(r.is_truncated());
    }

    #[test]
    fn error_events() {
        let r = sse(OPENAI_ERROR_SSE);
        assert_eq!(
            r.failure,
            failure(ErrorClass::ServerError, Some("server_error"))
        );
        assert!(!r.complete && !r.is_truncated());

        let r = sse(ANTHROPIC_OVERLOADED_SSE);
        assert_eq!(
            r.failure,
            failure(ErrorClass::Overloaded, Some("overloaded_error"))
        );
        assert_eq!(r.usage, usage(40, 1));

        let r = sse(OPENAI_RESPONSES_ERROR_SSE);
        assert_eq!(
            r.failure,
            failure(ErrorClass::RateLimited, Some("rate_limit_exceeded"))
        );

        let r = sse(OPENAI_RESPONSES_FAILED_SSE);
        assert_eq!(
            r.failure,
            failure(ErrorClass::ServerError, Some("server_error"))
        );

        // Unknown code, no code, not even JSON: a server error.
        let r = sse("data: {\"error\":{\"code\":\"something_new\"}}\n\n");
        assert_eq!(r.failure, failure(ErrorClass::ServerError, None));
        let r = sse("event: error\ndata: upstream went away\n\n");
        assert_eq!(r.failure, failure(ErrorClass::ServerError, None));
        let r = sse("data: {\"error\":\"rate_limit_exceeded\"}\n\n");
        assert_eq!(
            r.failure,
            failure(ErrorClass::RateLimited, Some("rate_limit_exceeded"))
        );
        // The first error wins.
        let two = format!("{OPENAI_ERROR_SSE}{ANTHROPIC_OVERLOADED_FIRST_SSE}");
        assert_eq!(sse(&two).failure.unwrap().class, ErrorClass::ServerError);
        // `"error": null` is no error.
        assert_eq!(
            sse("data: {\"error\":null,\"choices\":[]}\n\n").failure,
            None
        );
        // A whole JSON body is judged by its status, as every layer does:
        // an error object in a 2xx JSON body is not a stream failure.
        let r = json("{\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}");
        assert_eq!((r.failure, r.complete), (None, true));
    }

    #[test]
    fn keys_only_count_as_keys() {
        // As values, in strings, nested where they mean nothing, or escaped.
        let body = concat!(
            "data: {\"note\":\"usage\",\"x\":[\"usage\",{\"a\":\"\\\"usage\\\":{\\\"prompt_tokens\\\":5}\"}],",
            "\"us\\u0061ge\":{\"prompt_tokens\":6},\"choices\":[{\"error\":{\"type\":\"overloaded_error\"}}]}\n\n",
            "data: {\"type\":\"note\",\"text\":\"event: error\\ndata: [DONE]\"}\n\n",
        );
        let r = sse(body);
        assert_eq!((r.usage, r.failure, r.complete), (None, None, false));
        // A usage that is not an object is nothing.
        assert_eq!(json("{\"usage\":42}").usage, None);
    }

    #[test]
    fn absurd_counts_are_ignored() {
        let r = json("{\"usage\":{\"prompt_tokens\":-5,\"completion_tokens\":\"7\"}}");
        assert_eq!(r.usage, None);
        let r =
            json("{\"usage\":{\"prompt_tokens\":99999999999999999999999,\"completion_tokens\":3}}");
        assert_eq!(r.usage, usage(0, 3));
        let r = json("{\"usage\":{\"prompt_tokens\":4294967296,\"completion_tokens\":2.5}}");
        assert_eq!(r.usage, None);
        let r = json("{\"usage\":{\"prompt_tokens\":{\"n\":1},\"completion_tokens\":[1],\"input_tokens\":9}}");
        assert_eq!(r.usage, usage(9, 0));
        let max = u32::MAX;
        let r = json(&format!(
            "{{\"usage\":{{\"input_tokens\":{max},\"cache_creation_input_tokens\":{max}}}}}"
        ));
        assert_eq!(r.usage, usage(2 * u64::from(max), 0));
        // Not JSON at all inside the braces.
        assert_eq!(json("{\"usage\":{prompt_tokens: 5}}").usage, None);
    }

    #[test]
    fn latest_usage_wins_per_dimension() {
        let body = concat!(
            "data: {\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}\n\n",
            "data: {\"usage\":{\"output_tokens\":5}}\n\n",
            "data: {\"usage\":{\"output_tokens\":9,\"input_tokens\":null}}\n\n",
        );
        assert_eq!(sse(body).usage, usage(10, 9));
    }

    #[test]
    fn captures_are_bounded() {
        let long = "x".repeat(5000);
        let body = format!("{{\"usage\":{{\"prompt_tokens\":3,\"pad\":\"{long}\"}}}}");
        assert_eq!(json(&body).usage, None);
        // An over-long error object is classified from its first bytes.
        let body = format!(
            "data: {{\"error\":{{\"type\":\"overloaded_error\",\"message\":\"{long}\"}}}}\n\n"
        );
        assert_eq!(sse(&body).failure.unwrap().class, ErrorClass::Overloaded);
        // A smaller limit, and none at all.
        let mut w = StreamWatcher::new(BodyShape::Json).capture_limit(16);
        w.feed(OPENAI_CHAT_JSON.as_bytes());
        assert_eq!(w.report().usage, None);
        let mut w = StreamWatcher::new(BodyShape::EventStream).capture_limit(0);
        w.feed(OPENAI_RESPONSES_ERROR_SSE.as_bytes());
        assert_eq!(w.report().failure.unwrap().class, ErrorClass::RateLimited);
        // Allocated once for the whole response, never grown.
        let mut w = StreamWatcher::new(BodyShape::EventStream);
        w.feed(GEMINI_SSE.as_bytes());
        assert_eq!(
            w.scanner.as_ref().unwrap().capture.capacity(),
            DEFAULT_CAPTURE_LIMIT
        );
        // Without usage watching, a success captures nothing.
        let mut w = StreamWatcher::new(BodyShape::EventStream).without_usage();
        w.feed(ANTHROPIC_SSE.as_bytes());
        let capacity = w.scanner.as_ref().unwrap().capture.capacity();
        assert_eq!((w.report().usage, capacity), (None, 0));
        // An empty body makes no scanner at all, and reports nothing.
        let mut w = StreamWatcher::new(BodyShape::Json);
        w.feed(b"");
        w.feed_buf(&bytes::Bytes::new());
        assert!(w.scanner.is_none());
        let fresh = StreamWatcher::new(BodyShape::Json);
        let fed = {
            let mut w = fresh.clone();
            w.feed(b"{");
            w
        };
        assert_eq!(
            w.report(),
            StreamReport {
                delivered: 0,
                ..fed.report()
            }
        );
    }

    #[test]
    fn line_ends_comments_and_odd_fields() {
        // CR only, CRLF, comments, `id:` and `retry:`, no space after the colon,
        // a byte-order mark, a field name alone.
        let body = "\u{feff}: keep-alive\r\rid: 7\rretry: 100\revent:message_start\rdata:{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\r\rdata\r\revent: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n";
        let r = sse(body);
        assert_eq!(r.usage, usage(3, 1));
        assert!(r.complete);
        assert_eq!(r.events, 3);
        // A JSON value over several data lines of one event.
        let r = sse(
            "data: {\"usage\":\ndata: {\"prompt_tokens\":2,\ndata: \"completion_tokens\":1}}\n\n",
        );
        assert_eq!(r.usage, usage(2, 1));
        // `[DONE]` as the body's last bytes, with no line end.
        let r = sse("data: {\"choices\":[]}\n\ndata: [DONE]");
        assert!(r.complete);
        assert!(!sse("data: [DONE]x").complete);
    }

    #[test]
    fn unrecognised_streams_are_never_truncated() {
        let r = sse("data: hello\n\ndata: world\n\n");
        assert_eq!(
            (r.dialect, r.complete, r.is_truncated()),
            (None, false, false)
        );
        assert_eq!(r.events, 2);
        assert!(!sse("").is_truncated());
        assert!(sse(&OPENAI_CHAT_SSE[..OPENAI_CHAT_SSE.len() - 16]).is_truncated());
    }

    const BODIES: &[(BodyShape, &str)] = &[
        (BodyShape::EventStream, OPENAI_CHAT_SSE),
        (BodyShape::EventStream, OPENAI_RESPONSES_SSE),
        (BodyShape::EventStream, ANTHROPIC_SSE),
        (BodyShape::EventStream, GEMINI_SSE),
        (BodyShape::EventStream, OPENAI_ERROR_SSE),
        (BodyShape::EventStream, ANTHROPIC_OVERLOADED_SSE),
        (BodyShape::EventStream, OPENAI_RESPONSES_ERROR_SSE),
        (BodyShape::EventStream, OPENAI_RESPONSES_FAILED_SSE),
        (BodyShape::Json, OPENAI_CHAT_JSON),
        (BodyShape::Json, ANTHROPIC_JSON),
        (BodyShape::Json, GEMINI_JSON_ARRAY),
        (BodyShape::Json, OPENAI_EMBEDDINGS_JSON),
    ];

    fn split_feed(shape: BodyShape, body: &[u8], cuts: &[usize]) -> StreamReport {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut w = StreamWatcher::new(shape);
        let mut at = 0;
        for cut in cuts {
            w.feed(&body[at..cut]);
            at = cut;
        }
        w.feed(&body[at..]);
        w.report()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any split, down to single bytes, gives the one-frame report.
        #[test]
        fn splits_never_change_the_report(
            which in 0..BODIES.len(),
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
        ) {
            let (shape, body) = BODIES[which];
            let whole = watch(shape, body.as_bytes());
            prop_assert_eq!(split_feed(shape, body.as_bytes(), &cuts), whole);
        }

        /// Garbage never panics, and is split-invariant too.
        #[test]
        fn garbage_never_panics(
            body in proptest::collection::vec(
                prop_oneof![
                    any::<u8>(),
                    Just(b'"'), Just(b'{'), Just(b'}'), Just(b'['), Just(b']'),
                    Just(b':'), Just(b'\\'), Just(b'\n'), Just(b'\r'),
                ],
                0..600,
            ),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            event_stream in any::<bool>(),
        ) {
            let shape = if event_stream { BodyShape::EventStream } else { BodyShape::Json };
            let whole = watch(shape, &body);
            prop_assert_eq!(split_feed(shape, &body, &cuts), whole);
            prop_assert_eq!(whole.delivered, body.len() as u64);
            prop_assert!(whole.usage.is_none_or(|u| u.input_tokens <= 2 * MAX_TOKEN_COUNT
                && u.output_tokens <= 2 * MAX_TOKEN_COUNT));
        }

        /// The word-at-a-time search finds what a byte loop finds.
        #[test]
        fn string_end_as_a_byte_loop_finds_it(
            bytes in proptest::collection::vec(
                prop_oneof![8 => any::<u8>(), 1 => Just(b'"'), 1 => Just(b'\\')],
                0..200,
            ),
        ) {
            let naive = bytes.iter().position(|&b| b == b'"' || b == b'\\');
            prop_assert_eq!(find_string_end(&bytes), naive);
        }

        /// Real bodies with bytes spliced in: no panic, still split-invariant.
        #[test]
        fn mangled_bodies(
            which in 0..BODIES.len(),
            at in any::<usize>(),
            junk in proptest::collection::vec(any::<u8>(), 0..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let (shape, body) = BODIES[which];
            let at = at % (body.len() + 1);
            let mut mangled = body.as_bytes()[..at].to_vec();
            mangled.extend_from_slice(&junk);
            mangled.extend_from_slice(&body.as_bytes()[at..]);
            let whole = watch(shape, &mangled);
            prop_assert_eq!(split_feed(shape, &mangled, &cuts), whole);
        }
    }
}
