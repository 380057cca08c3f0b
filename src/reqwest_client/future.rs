//! The future of [`ReqwestService`](super::ReqwestService).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tower::Service;

/// reqwest's own future for one request (its type is not public; this
/// names it through reqwest's `tower::Service` implementation).
type Pending = <reqwest::Client as Service<reqwest::Request>>::Future;

pin_project! {
    /// The response of [`ReqwestService`](super::ReqwestService): reqwest's
    /// response as an [`http::Response`] whose body streams frame by
    /// frame, or reqwest's error.
    pub struct ResponseFuture {
        #[pin]
        state: State,
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        Pending { #[pin] pending: Pending },
        // The request could not be made (a URI that is not absolute).
        Failed { error: Option<reqwest::Error> },
    }
}

impl ResponseFuture {
    pub(super) fn pending(pending: Pending) -> Self {
        ResponseFuture {
            state: State::Pending { pending },
        }
    }

    pub(super) fn failed(error: reqwest::Error) -> Self {
        ResponseFuture {
            state: State::Failed {
                error: Some(redact(error)),
            },
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<reqwest::Body>, reqwest::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Pending { pending } => pending
                .poll(cx)
                .map(|result| result.map(Response::from).map_err(redact)),
            StateProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// reqwest's errors carry the request's URL, and show it: its query (a
/// Gemini `?key=`) and credentials are removed, so that the crate's
/// errors never show a secret.
fn redact(mut error: reqwest::Error) -> reqwest::Error {
    if let Some(url) = error.url_mut() {
        url.set_query(None);
        url.set_fragment(None);
        // Fails only for URLs that cannot have credentials, which then have none.
        let _ = url.set_password(None);
        let _ = url.set_username("");
    }
    error
}
