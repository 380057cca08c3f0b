//! Request bodies the service sends: the ones users have, converted
//! without a copy, and any other [`http_body::Body`] through [`AnyBody`].

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{Empty, Full};

use crate::BoxError;

/// A request body that [`ReqwestService`](super::ReqwestService) can send.
///
/// The bodies held in memory (`String`, `Vec<u8>`, `Bytes`, static strings
/// and slices, `Full<Bytes>`, `Empty<Bytes>`) become reqwest's in-memory
/// body by moving their bytes, with no copy and no box; reqwest knows
/// their length. Streamed bodies (`BoxBody`, hyper's `Incoming`, any other
/// [`http_body::Body`] wrapped in [`AnyBody`]) are passed on frame by
/// frame.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tower_llm_resilience::reqwest_client::IntoReqwestBody;
///
/// let body = Full::new(Bytes::from_static(b"{}")).into_reqwest_body();
/// assert_eq!(body.as_bytes(), Some(&b"{}"[..])); // in memory, not a stream
/// ```
pub trait IntoReqwestBody {
    /// The body as reqwest's.
    fn into_reqwest_body(self) -> reqwest::Body;
}

macro_rules! in_memory {
    ($($ty:ty),* $(,)?) => {
        $(impl IntoReqwestBody for $ty {
            fn into_reqwest_body(self) -> reqwest::Body {
                reqwest::Body::from(self)
            }
        })*
    };
}

in_memory!(
    reqwest::Body,
    String,
    Vec<u8>,
    Bytes,
    &'static str,
    &'static [u8]
);

impl IntoReqwestBody for Full<Bytes> {
    /// Takes the bytes out of the `Full` (it holds them as one ready frame).
    fn into_reqwest_body(mut self) -> reqwest::Body {
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut self).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => reqwest::Body::from(data),
                Err(_) => reqwest::Body::default(),
            },
            // An empty `Full` has no frame.
            _ => reqwest::Body::default(),
        }
    }
}

impl IntoReqwestBody for Empty<Bytes> {
    fn into_reqwest_body(self) -> reqwest::Body {
        reqwest::Body::default()
    }
}

impl<E> IntoReqwestBody for BoxBody<Bytes, E>
where
    E: Into<BoxError> + 'static,
{
    fn into_reqwest_body(self) -> reqwest::Body {
        reqwest::Body::wrap(self)
    }
}

impl IntoReqwestBody for hyper::body::Incoming {
    /// Streams a body received by a hyper server (a gateway forwarding its
    /// caller's request), frame by frame.
    fn into_reqwest_body(self) -> reqwest::Body {
        reqwest::Body::wrap(self)
    }
}

/// Any [`http_body::Body`], sent frame by frame (reqwest boxes it once).
///
/// ```
/// use bytes::Bytes;
/// use http_body::Frame;
/// use http_body_util::StreamBody;
/// use tower_llm_resilience::reqwest_client::{AnyBody, IntoReqwestBody};
///
/// let chunks = [r#"{"model":"#, r#""gpt-4o-mini"}"#].map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from(c))));
/// let body = AnyBody(StreamBody::new(futures_util::stream::iter(chunks))).into_reqwest_body();
/// assert_eq!(body.as_bytes(), None); // a stream, sent frame by frame
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct AnyBody<B>(pub B);

impl<B> IntoReqwestBody for AnyBody<B>
where
    B: Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    fn into_reqwest_body(self) -> reqwest::Body {
        reqwest::Body::wrap(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn bytes_of(body: reqwest::Body) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn every_body_keeps_its_bytes() {
        let json = r#"{"model":"gpt-4o-mini"}"#;
        let bodies = [
            String::from(json).into_reqwest_body(),
            json.as_bytes().to_vec().into_reqwest_body(),
            Bytes::from_static(json.as_bytes()).into_reqwest_body(),
            json.into_reqwest_body(),
            json.as_bytes().into_reqwest_body(),
            Full::new(Bytes::from_static(json.as_bytes())).into_reqwest_body(),
        ];
        for body in bodies {
            // in memory: reqwest knows the length and can send it at once
            assert_eq!(body.as_bytes(), Some(json.as_bytes()));
            assert_eq!(bytes_of(body).await, json.as_bytes());
        }
        let streamed = [
            Full::new(Bytes::from_static(json.as_bytes()))
                .map_err(|never| -> BoxError { match never {} })
                .boxed()
                .into_reqwest_body(),
            AnyBody(String::from(json)).into_reqwest_body(),
        ];
        for body in streamed {
            assert_eq!(body.as_bytes(), None);
            assert_eq!(
                http_body::Body::size_hint(&body).exact(),
                Some(json.len() as u64)
            );
            assert_eq!(bytes_of(body).await, json.as_bytes());
        }
        for empty in [
            Full::new(Bytes::new()).into_reqwest_body(),
            Empty::<Bytes>::new().into_reqwest_body(),
        ] {
            assert_eq!(empty.as_bytes(), Some(&b""[..]));
            assert!(bytes_of(empty).await.is_empty());
        }
    }
}
