//! What an observed attempt carries (its model, its send time, its span),
//! and the span of a request. Both cost one branch when nobody observes:
//! no listener on the [`Events`] and no `tracing` subscriber that wants
//! the crate's spans (`tracing`'s own check, a load or two).

use std::borrow::Cow;

use tokio::time::Instant;
use tracing::field::{display, Empty};
use tracing::Span;

use super::{Event, Events};
use crate::classify::ErrorClass;
use crate::key::Key;
use crate::rate_limit::TokenUsage;

const T: &str = "tower_llm_resilience";

/// One attempt through the rate limiter, while observed: boxed, so that
/// an attempt nobody observes carries one empty pointer.
pub(crate) struct Attempt {
    key: Key,
    /// The model read from the request, when its key names none.
    model: Option<Key>,
    /// The usage the response carried as an extension, if any (the body's
    /// own report comes first).
    pub(crate) usage: Option<TokenUsage>,
    /// When the attempt was sent (after the limiter's wait).
    pub(crate) sent: Instant,
    /// The failure class of the attempt's response, once it arrived.
    pub(crate) class: Option<ErrorClass>,
    span: Span,
}

impl Attempt {
    /// Starts observing an attempt of `key` at `now`, if anyone observes;
    /// `model` reads the request's model (asked only then, and only when
    /// the key names none).
    #[inline]
    pub(crate) fn start<'r>(
        events: &Events,
        key: &Key,
        model: impl FnOnce() -> Option<Cow<'r, str>>,
    ) -> Option<Box<Attempt>> {
        let span = tracing::info_span!(
            target: T,
            "llm.attempt",
            "llm.key" = Empty,
            "gen_ai.request.model" = Empty,
            "error.type" = Empty,
            "gen_ai.usage.input_tokens" = Empty,
            "gen_ai.usage.output_tokens" = Empty,
        );
        if span.is_disabled() && !events.has_listener() {
            return None;
        }
        let model = match key.model() {
            Some(_) => None,
            None => model().map(|m| events.model_key(&m)),
        };
        Some(Attempt::observed(key, model, span))
    }

    #[cold]
    #[inline(never)]
    fn observed(key: &Key, model: Option<Key>, span: Span) -> Box<Attempt> {
        let attempt = Box::new(Attempt {
            key: key.clone(),
            model,
            usage: None,
            sent: Instant::now(),
            class: None,
            span,
        });
        if !attempt.span.is_disabled() {
            let model = attempt.model();
            // The request's span (the retry layer's, entered around this
            // call) has the same fields; another current span has not,
            // and `record` leaves it alone.
            for span in [&attempt.span, &Span::current()] {
                span.record("llm.key", display(key));
                if let Some(model) = model {
                    span.record("gen_ai.request.model", model);
                }
            }
        }
        attempt
    }

    /// The attempt's span, to enter while its future is polled.
    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// The shared name of the attempt's model, when read from the request.
    pub(crate) fn model_key(&self) -> Option<&Key> {
        self.model.as_ref()
    }

    /// The attempt's model: the one its key names, else the one read from
    /// the request.
    pub(crate) fn model(&self) -> Option<&str> {
        match self.key.model() {
            Some(model) => Some(model),
            None => self.model.as_ref()?.as_str(),
        }
    }

    /// Ends the attempt: records its outcome on its span and reports
    /// [`Event::AttemptEnded`]. `class` is the outcome's failure class, if
    /// any (else the response's, set in [`class`](Self::class)).
    pub(crate) fn end(self, events: &Events, class: Option<ErrorClass>, usage: Option<TokenUsage>) {
        let class = class.or(self.class);
        let usage = usage.or(self.usage);
        if !self.span.is_disabled() {
            if let Some(class) = class {
                self.span.record("error.type", class.as_str());
            }
            if let Some(usage) = usage {
                self.span
                    .record("gen_ai.usage.input_tokens", usage.input_tokens)
                    .record("gen_ai.usage.output_tokens", usage.output_tokens);
            }
        }
        events.emit(Event::AttemptEnded {
            key: &self.key,
            model: self.model(),
            duration: Instant::now().saturating_duration_since(self.sent),
            class,
            usage,
        });
    }
}

/// The model of a request of `key`: the one its key names, else the one
/// read from it while observed.
#[inline]
pub(crate) fn model_of<'a>(attempt: Option<&'a Attempt>, key: &'a Key) -> Option<&'a str> {
    match attempt {
        Some(attempt) => attempt.model(),
        None => key.model(),
    }
}

/// The span of one request through the retry layer, over all its
/// attempts; `None` (no allocation) when no subscriber wants it.
pub(crate) struct RequestSpan(Option<Box<Span>>);

impl RequestSpan {
    /// The request's span, if a subscriber wants it.
    #[inline]
    pub(crate) fn new() -> Self {
        let span = tracing::info_span!(
            target: T,
            "llm.request",
            "llm.key" = Empty,
            "gen_ai.request.model" = Empty,
            "error.type" = Empty,
            "llm.attempts" = Empty,
        );
        if span.is_disabled() {
            RequestSpan(None)
        } else {
            RequestSpan(Some(Box::new(span)))
        }
    }

    /// Enters the span (nothing when there is none).
    #[inline]
    pub(crate) fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        self.0.as_deref().map(Span::enter)
    }

    /// Records how the request ended: after `attempts`, with the failure
    /// `class` or none.
    #[inline]
    pub(crate) fn end(&self, attempts: u32, class: Option<ErrorClass>) {
        if let Some(span) = &self.0 {
            span.record("llm.attempts", attempts);
            if let Some(class) = class {
                span.record("error.type", class.as_str());
            }
        }
    }
}
