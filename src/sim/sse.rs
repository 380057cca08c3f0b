//! What a streamed answer sends: its server-sent events in the endpoint's
//! shape (OpenAI `chat.completion.chunk`s, Anthropic's message events), as
//! a stream fault ends or cuts them, and when each one is due. Nothing here
//! decides anything; [`decide`](super::decide) does.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::answer::{Completion, Endpoint};
use super::config::Fault;
use super::served::StreamEnd;

/// A stream, rendered: its whole text, one event after the other (each
/// ends with a blank line, but a cut one), when each is due, and how it
/// ends.
pub(super) struct Plan {
    pub(super) text: Bytes,
    pub(super) events: u32,
    pub(super) schedule: Schedule,
    pub(super) end: StreamEnd,
}

/// When each event of a stream is due, after the stream began: the head
/// at once, the first content delta at half the latency, the others evenly
/// after it, the finish and what follows it at the latency; a stall
/// delays every event from its own on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Schedule {
    /// Events sent at once, with the response's head.
    head: u32,
    /// Content deltas; the event after the last (the finish) is due at
    /// `latency`.
    deltas: u32,
    latency: Duration,
    /// A stall of this long before this event.
    stall: Option<(u32, Duration)>,
}

impl Schedule {
    /// When event `event` (from 0) is due, after the stream began.
    pub(super) fn due(&self, event: u32) -> Duration {
        let base = match event.checked_sub(self.head) {
            None => Duration::ZERO,
            Some(j) if j >= self.deltas => self.latency,
            Some(j) => {
                let first = self.latency / 2;
                first + mul_div(self.latency - first, j, self.deltas)
            }
        };
        match self.stall {
            Some((at, stall)) if event >= at => base.saturating_add(stall),
            _ => base,
        }
    }
}

/// `d * num / den`, exact to the nanosecond (`num < den`).
fn mul_div(d: Duration, num: u32, den: u32) -> Duration {
    let nanos = d.as_nanos() * u128::from(num) / u128::from(den.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// The completion's text in pieces of about one token each (four bytes,
/// widened to a character boundary), as the content deltas carry it.
fn pieces(content: &str) -> impl Iterator<Item = &str> {
    let mut rest = content;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(4);
        while !rest.is_char_boundary(end) {
            end += 1;
        }
        let (piece, after) = rest.split_at(end);
        rest = after;
        Some(piece)
    })
}

/// The stream of `completion` for `endpoint`, over `latency`, as `fault`
/// (if a stream fault) changes it. `include_usage` is OpenAI's
/// `stream_options.include_usage`; Anthropic always reports usage.
pub(super) fn plan(
    endpoint: Endpoint,
    wall: SystemTime,
    completion: &Completion<'_>,
    include_usage: bool,
    latency: Duration,
    fault: Option<Fault>,
) -> Plan {
    let created = wall
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut w = Writer {
        shape: Shape {
            endpoint,
            created,
            completion,
            include_usage,
        },
        buf: Vec::with_capacity(512 + 256 * completion.content.len().div_ceil(4)),
        events: 0,
    };
    let deltas = pieces(completion.content).count() as u32;
    if fault == Some(Fault::OverloadedFirstEvent) {
        w.error(true);
        return w.into_plan(1, 0, Duration::ZERO, None, StreamEnd::ErrorEvent);
    }
    let head = w.head();
    // the stream faults strike after the first content delta
    let strike = head + deltas.min(1);
    let mut pieces = pieces(completion.content);
    let cut = matches!(fault, Some(Fault::MidStreamError | Fault::Truncate));
    for piece in pieces.by_ref().take(if cut { 1 } else { usize::MAX }) {
        w.delta(piece);
    }
    let end = match fault {
        Some(Fault::MidStreamError) => {
            w.error(false);
            StreamEnd::ErrorEvent
        }
        Some(Fault::Truncate) => {
            // half of the event that was due next: a partial line
            let start = w.buf.len();
            match pieces.next() {
                Some(piece) => w.delta(piece),
                None => w.finish(),
            }
            let half = start + (w.buf.len() - start) / 2;
            w.buf.truncate(half);
            StreamEnd::Truncated
        }
        _ => {
            w.finish();
            w.tail();
            StreamEnd::Done
        }
    };
    let stall = match fault {
        Some(Fault::Stall(d)) => Some((strike, d)),
        _ => None,
    };
    w.into_plan(head, deltas, latency, stall, end)
}

/// What every event of one stream repeats.
struct Shape<'a> {
    endpoint: Endpoint,
    created: u64,
    completion: &'a Completion<'a>,
    include_usage: bool,
}

/// Writes a stream's events into one buffer.
struct Writer<'a> {
    shape: Shape<'a>,
    buf: Vec<u8>,
    events: u32,
}

impl Writer<'_> {
    fn into_plan(
        self,
        head: u32,
        deltas: u32,
        latency: Duration,
        stall: Option<(u32, Duration)>,
        end: StreamEnd,
    ) -> Plan {
        Plan {
            text: Bytes::from(self.buf),
            events: self.events,
            schedule: Schedule {
                head,
                deltas,
                latency,
                stall,
            },
            end,
        }
    }

    /// One event: `event: NAME` (Anthropic) and `data: ...`, then the blank
    /// line that ends it.
    fn event(&mut self, name: Option<&str>, data: impl FnOnce(&mut Self)) {
        if let Some(name) = name {
            self.raw("event: ");
            self.raw(name);
            self.raw("\n");
        }
        self.raw("data: ");
        data(self);
        self.raw("\n\n");
        self.events += 1;
    }

    fn raw(&mut self, s: &str) {
        self.buf.extend_from_slice(s.as_bytes());
    }

    /// A JSON string, quoted and escaped.
    fn string(&mut self, s: &str) {
        let _ = serde_json::to_writer(&mut self.buf, s);
    }

    fn number(&mut self, n: u64) {
        let _ = write!(self.buf, "{n}");
    }

    /// The start of an OpenAI chunk, up to its `choices`.
    fn chunk_start(&mut self) {
        let c = self.shape.completion;
        self.raw(r#"{"id":"chatcmpl-sim"#);
        self.number(c.seq);
        self.raw(r#"","object":"chat.completion.chunk","created":"#);
        self.number(self.shape.created);
        self.raw(r#","model":"#);
        self.string(c.model);
        self.raw(r#","choices":"#);
    }

    /// An OpenAI chunk with one choice: `delta` is its JSON, `finish` its
    /// finish reason.
    fn chunk(&mut self, delta: impl FnOnce(&mut Self), finish: Option<&str>) {
        self.event(None, |w| {
            w.chunk_start();
            w.raw(r#"[{"index":0,"delta":"#);
            delta(w);
            w.raw(r#","logprobs":null,"finish_reason":"#);
            match finish {
                Some(reason) => w.string(reason),
                None => w.raw("null"),
            }
            w.raw("}]");
            if w.shape.include_usage {
                w.raw(r#","usage":null"#);
            }
            w.raw("}");
        });
    }

    /// The events sent with the head; returns how many.
    fn head(&mut self) -> u32 {
        match self.shape.endpoint {
            Endpoint::Chat => {
                self.chunk(|w| w.raw(r#"{"role":"assistant","content":""}"#), None);
                1
            }
            Endpoint::Messages => {
                let c = self.shape.completion;
                self.event(Some("message_start"), |w| {
                    w.raw(r#"{"type":"message_start","message":{"id":"msg_sim"#);
                    w.number(c.seq);
                    w.raw(r#"","type":"message","role":"assistant","model":"#);
                    w.string(c.model);
                    w.raw(r#","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":"#);
                    w.number(c.prompt_tokens);
                    w.raw(r#","output_tokens":"#);
                    w.number(c.completion_tokens.min(1));
                    w.raw("}}}");
                });
                self.event(Some("content_block_start"), |w| {
                    w.raw(r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#);
                });
                self.event(Some("ping"), |w| w.raw(r#"{"type":"ping"}"#));
                3
            }
        }
    }

    /// A piece of the completion's text.
    fn delta(&mut self, piece: &str) {
        match self.shape.endpoint {
            Endpoint::Chat => self.chunk(
                |w| {
                    w.raw(r#"{"content":"#);
                    w.string(piece);
                    w.raw("}");
                },
                None,
            ),
            Endpoint::Messages => self.event(Some("content_block_delta"), |w| {
                w.raw(r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"#);
                w.string(piece);
                w.raw("}}");
            }),
        }
    }

    /// The event that closes the content: OpenAI's chunk with the finish
    /// reason, Anthropic's `content_block_stop`.
    fn finish(&mut self) {
        match self.shape.endpoint {
            Endpoint::Chat => self.chunk(|w| w.raw("{}"), Some("stop")),
            Endpoint::Messages => self.event(Some("content_block_stop"), |w| {
                w.raw(r#"{"type":"content_block_stop","index":0}"#);
            }),
        }
    }

    /// What follows the finish: OpenAI's usage chunk (when asked for) and
    /// `[DONE]`; Anthropic's `message_delta` (stop reason, output tokens)
    /// and `message_stop`.
    fn tail(&mut self) {
        let c = self.shape.completion;
        match self.shape.endpoint {
            Endpoint::Chat => {
                if self.shape.include_usage {
                    self.event(None, |w| {
                        w.chunk_start();
                        w.raw(r#"[],"usage":{"prompt_tokens":"#);
                        w.number(c.prompt_tokens);
                        w.raw(r#","completion_tokens":"#);
                        w.number(c.completion_tokens);
                        w.raw(r#","total_tokens":"#);
                        w.number(c.prompt_tokens.saturating_add(c.completion_tokens));
                        w.raw("}}");
                    });
                }
                self.event(None, |w| w.raw("[DONE]"));
            }
            Endpoint::Messages => {
                self.event(Some("message_delta"), |w| {
                    w.raw(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":"#);
                    w.number(c.completion_tokens);
                    w.raw("}}");
                });
                self.event(Some("message_stop"), |w| {
                    w.raw(r#"{"type":"message_stop"}"#);
                });
            }
        }
    }

    /// The endpoint's error event: a server error midway, or an overload
    /// (`overloaded`) as the first event.
    fn error(&mut self, overloaded: bool) {
        match self.shape.endpoint {
            Endpoint::Chat => self.event(None, |w| {
                let (message, code) = if overloaded {
                    (
                        "The server is overloaded or not ready yet.",
                        r#""server_is_overloaded""#,
                    )
                } else {
                    (
                        "The server had an error while processing your request. Sorry about that!",
                        "null",
                    )
                };
                w.raw(r#"{"error":{"message":"#);
                w.string(message);
                w.raw(r#","type":"server_error","param":null,"code":"#);
                w.raw(code);
                w.raw("}}");
            }),
            Endpoint::Messages => self.event(Some("error"), |w| {
                w.raw(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_about_a_token_and_keep_characters_whole() {
        assert_eq!(pieces("positive").collect::<Vec<_>>(), ["posi", "tive"]);
        assert_eq!(pieces("neutral").collect::<Vec<_>>(), ["neut", "ral"]);
        assert_eq!(pieces("ééé").collect::<Vec<_>>(), ["éé", "é"]);
        assert_eq!(pieces("").count(), 0);
    }

    #[test]
    fn schedule_spreads_the_latency_and_ends_on_it() {
        let s = Schedule {
            head: 1,
            deltas: 2,
            latency: Duration::from_millis(100),
            stall: None,
        };
        let due: Vec<u64> = (0..6).map(|i| s.due(i).as_millis() as u64).collect();
        assert_eq!(due, [0, 50, 75, 100, 100, 100]);
        let stalled = Schedule {
            stall: Some((2, Duration::from_secs(1))),
            ..s
        };
        assert_eq!(stalled.due(1), Duration::from_millis(50));
        assert_eq!(stalled.due(2), Duration::from_millis(1_075));
        assert_eq!(stalled.due(3), Duration::from_millis(1_100));
        // no deltas: the finish at the latency; zero latency: all at once
        let empty = Schedule { deltas: 0, ..s };
        assert_eq!(empty.due(1), Duration::from_millis(100));
        let instant = Schedule {
            latency: Duration::ZERO,
            ..s
        };
        assert!((0..6).all(|i| instant.due(i).is_zero()));
        // an absurd stall saturates
        let absurd = Schedule {
            stall: Some((0, Duration::MAX)),
            ..s
        };
        assert_eq!(absurd.due(3), Duration::MAX);
    }
}
