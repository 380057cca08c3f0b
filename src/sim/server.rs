use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;

use futures_util::future::{select, Either};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service;

use super::SimProvider;

/// A [`SimProvider`] served over loopback HTTP (HTTP/1.1 and HTTP/2) by
/// hyper-util's server. Made by [`SimProvider::serve`].
///
/// A streamed answer goes out event by event as each is due (HTTP/1.1
/// chunks, no buffering of the whole body); the error that ends a
/// [`Fault::Truncate`](super::Fault::Truncate) stream makes hyper cut the
/// connection (HTTP/2: reset the stream) mid-body, after what was sent
/// before it.
///
/// Dropping it, or [`shutdown`](Self::shutdown), stops accepting and closes
/// every open connection at once.
pub struct SimServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SimProvider {
    /// Serves this provider on `127.0.0.1` at a free port. The returned
    /// server shares this provider's limits, counters and log.
    pub async fn serve(&self) -> io::Result<SimServer> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let sim = self.clone();
        let task = tokio::spawn(accept_loop(listener, sim, stopped));
        Ok(SimServer {
            addr,
            stop,
            task: Some(task),
        })
    }
}

async fn accept_loop(listener: TcpListener, sim: SimProvider, mut stopped: watch::Receiver<bool>) {
    loop {
        let accepted = {
            let accept = pin!(listener.accept());
            let stop = pin!(stopped.changed());
            match select(accept, stop).await {
                Either::Left((accepted, _)) => accepted,
                Either::Right(_) => return,
            }
        };
        let Ok((stream, _)) = accepted else { continue };
        let sim = sim.clone();
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let mut sim = sim.clone();
                // an Err (a simulated connection reset) makes hyper drop
                // the connection without an answer
                Service::call(&mut sim, request)
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
            let stop = pin!(stopped.changed());
            let _ = select(conn, stop).await;
        });
    }
}

impl SimServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, the base URL an OpenAI-compatible client
    /// takes (`{base}/chat/completions`, `{base}/messages`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Stops the server and waits until the accept loop has ended.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl fmt::Debug for SimServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimServer")
            .field("addr", &self.addr)
            .finish()
    }
}
