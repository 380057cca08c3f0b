//! [`ReqwestService`]: a tower `Service` over a `reqwest::Client`.

use std::fmt;
use std::marker::PhantomData;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::body::IntoReqwestBody;
use super::future::ResponseFuture;

/// A tower [`Service`] of [`http::Request`]s over a [`reqwest::Client`],
/// so that [`LlmLayer`](crate::LlmLayer) (or any tower layer) stacks onto
/// the client as onto hyper-util's.
///
/// The request body is any [`IntoReqwestBody`]: `String`, `Bytes`,
/// `Vec<u8>`, `Full<Bytes>` go as they are, streams frame by frame. The
/// response is reqwest's, as an [`http::Response`] whose
/// [`reqwest::Body`] streams frame by frame; its errors, like the
/// service's, are [`reqwest::Error`]s, which the crate's
/// [`Classifier::classify_error`](crate::Classifier::classify_error)
/// classifies (timeout, connect...).
///
/// The body type `B` is a parameter, as in hyper-util's `Client<C, B>`,
/// so that a stack over the service knows which requests it takes
/// (`stack.ready().await?.call(request)` needs no annotation); it is
/// inferred from the first request, and `String` where the type is named
/// without it.
///
/// Clones share the client (its connection pool), as `reqwest::Client`'s
/// clones do. The client's own settings hold: its timeouts, its default
/// headers, its redirect policy, its TLS backend.
pub struct ReqwestService<B = String> {
    client: reqwest::Client,
    _body: PhantomData<fn(B)>,
}

impl<B> ReqwestService<B> {
    /// Sends requests with `client`.
    pub const fn new(client: reqwest::Client) -> Self {
        ReqwestService {
            client,
            _body: PhantomData,
        }
    }

    /// The client.
    pub const fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }

    /// The client, mutably.
    pub fn get_mut(&mut self) -> &mut reqwest::Client {
        &mut self.client
    }

    /// The client, unwrapped.
    pub fn into_inner(self) -> reqwest::Client {
        self.client
    }
}

impl<B> Clone for ReqwestService<B> {
    fn clone(&self) -> Self {
        ReqwestService::new(self.client.clone())
    }
}

impl<B> fmt::Debug for ReqwestService<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestService")
            .field("client", &self.client)
            .finish()
    }
}

impl<B> From<reqwest::Client> for ReqwestService<B> {
    fn from(client: reqwest::Client) -> Self {
        ReqwestService::new(client)
    }
}

impl<B: IntoReqwestBody> Service<Request<B>> for ReqwestService<B> {
    type Response = Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: reqwest queues in its pool.
        Service::<reqwest::Request>::poll_ready(&mut self.client, cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match reqwest::Request::try_from(request.map(IntoReqwestBody::into_reqwest_body)) {
            Ok(request) => ResponseFuture::pending(self.client.call(request)),
            Err(error) => ResponseFuture::failed(error),
        }
    }
}
