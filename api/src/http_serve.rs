//! Serving a router on a listener with limits `axum::serve` does not have:
//! a time limit on each request's headers (which hyper also applies to a
//! kept-alive connection waiting for its next request, so it is the idle
//! limit too), and a cap on open connections, in total and per client
//! address. Without them a few hosts opening connections and sending
//! nothing (or a byte a minute) hold sockets and memory for ever.
//!
//! Every request carries its connection's address as
//! `ConnectInfo<SocketAddr>`, as `into_make_service_with_connect_info`
//! would give it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tower::ServiceExt;

#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A request's headers must arrive within this; an idle kept-alive
    /// connection is closed after it.
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
}

/// Open connections, in total and per client address.
#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// One open connection's place; given back when the connection ends.
struct Slot {
    open: Arc<Mutex<Open>>,
    client: IpAddr,
    face: &'static str,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("connection count lock");
        open.total -= 1;
        if let Some(n) = open.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.client);
            }
        }
        metrics::gauge!("slipway_http_connections", "face" => self.face).decrement(1.0);
    }
}

fn take_slot(open: &Arc<Mutex<Open>>, client: IpAddr, limits: &HttpLimits, face: &'static str) -> Option<Slot> {
    let mut counts = open.lock().expect("connection count lock");
    let mine = counts.per_client.get(&client).copied().unwrap_or(0);
    if counts.total >= limits.max_connections || mine >= limits.max_connections_per_client {
        return None;
    }
    counts.total += 1;
    *counts.per_client.entry(client).or_default() += 1;
    metrics::gauge!("slipway_http_connections", "face" => face).increment(1.0);
    Some(Slot { open: open.clone(), client, face })
}

/// Serves `router` on `listener` until the process ends. `face` names the
/// listener in metrics (`operator`, `boot`).
pub async fn serve<L>(mut listener: L, router: Router, face: &'static str, limits: HttpLimits) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let open = Arc::new(Mutex::new(Open::default()));
    loop {
        let (io, peer) = listener.accept().await;
        let Some(slot) = take_slot(&open, peer.ip(), &limits, face) else {
            metrics::counter!("slipway_http_connections_refused_total", "face" => face).increment(1);
            tracing::debug!(%peer, face, "connection refused: too many open");
            drop(io);
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request.map(axum::body::Body::new))
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(io), service)
                .await;
            if let Err(err) = served {
                if err.is_timeout() {
                    metrics::counter!("slipway_http_header_timeouts_total", "face" => face).increment(1);
                }
                tracing::debug!(%peer, face, error = %err, "connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn serving(limits: HttpLimits) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/peer",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        );
        tokio::spawn(serve(listener, router, "test", limits));
        addr
    }

    async fn get(stream: &mut TcpStream) -> String {
        stream.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Whether the server closed `stream` (read gives EOF or a reset) within `within`.
    async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0; 64];
        matches!(tokio::time::timeout(within, stream.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    #[tokio::test]
    async fn a_client_that_sends_half_a_request_or_nothing_more_is_cut_off() {
        let limits = HttpLimits {
            header_timeout: Duration::from_millis(300),
            max_connections: 8,
            max_connections_per_client: 8,
        };
        let addr = serving(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /peer HTTP/1.1\r\nhost:").await.unwrap();
        assert!(closed(&mut slow, Duration::from_secs(3)).await, "half-sent headers hold the connection");

        // A kept-alive connection is answered (with its address), then closed when idle.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let answer = get(&mut idle).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("127.0.0.1"), "{answer}");
        assert!(closed(&mut idle, Duration::from_secs(3)).await, "an idle connection is kept for ever");
    }

    #[tokio::test]
    async fn connections_are_capped_per_client_and_freed_when_closed() {
        let limits =
            HttpLimits { header_timeout: Duration::from_secs(30), max_connections: 8, max_connections_per_client: 2 };
        let addr = serving(limits).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut first).await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut second).await.starts_with("HTTP/1.1 200"));
        let mut third = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut third, Duration::from_secs(3)).await, "a third connection from one client is refused");

        drop(first);
        // The slot comes back once the server sees the close.
        let mut again = None;
        for _ in 0..50 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let mut buf = vec![0; 256];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
                if n > 0 {
                    again = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(again.is_some_and(|a| a.starts_with("HTTP/1.1 200")), "the freed slot is not given back");
    }
}
