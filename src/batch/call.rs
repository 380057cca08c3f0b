//! A call in flight: the service's future, with the index of its input and
//! what the batch needs to send it again.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

pin_project! {
    /// A call in flight, the index of its input, and (when the batch is
    /// patient) a copy of the input to send again.
    pub(super) struct Indexed<F, Req> {
        #[pin]
        pub(super) future: F,
        pub(super) index: u64,
        pub(super) copy: Option<Req>,
        pub(super) holds: u32,
    }
}

/// A finished call.
pub(super) struct Done<T, E, Req> {
    pub(super) index: u64,
    pub(super) result: Result<T, E>,
    pub(super) copy: Option<Req>,
    pub(super) holds: u32,
}

impl<F, T, E, Req> Future for Indexed<F, Req>
where
    F: Future<Output = Result<T, E>>,
{
    type Output = Done<T, E, Req>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        Poll::Ready(Done {
            index: *this.index,
            result,
            copy: this.copy.take(),
            holds: *this.holds,
        })
    }
}
