//! The network seam. Members reach each other (and serve HTTP) through [`Network`], so the
//! same node code runs over real TCP ([`TcpNetwork`]) or over a simulated network in the
//! deterministic simulation, which implements this trait with turmoil's sockets.

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to or from a peer.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

pub type BoxConnection = Box<dyn Connection>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Listener: Send + 'static {
    /// The next inbound connection and a printable peer address.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>>;
    /// The bound address (useful when binding port 0).
    fn local_addr(&self) -> io::Result<String>;
}

pub trait Network: Send + Sync + 'static {
    /// Connects to `addr` (`host:port`, host may be a DNS name).
    fn connect(&self, addr: &str) -> BoxFuture<'static, io::Result<BoxConnection>>;
    fn bind(&self, addr: &str) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
    /// Whether `addr`'s host resolves now (a network without names: always).
    fn resolve(&self, addr: &str) -> BoxFuture<'static, io::Result<()>> {
        let _ = addr;
        Box::pin(async { Ok(()) })
    }
}

/// Real TCP with `TCP_NODELAY` (requests are small and latency-bound).
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpNetwork;

/// Connections the kernel queues for a listener before it accepts them. tokio's `bind`
/// asks for 128 (std's value); a burst of clients connecting at once (a restart, a
/// failover, a pool warming up) while the accept task waits for a busy worker overflows
/// that, and each dropped SYN costs its client a one-second retransmission timeout. The
/// kernel caps this at `net.core.somaxconn` (4096 on current kernels).
pub const LISTEN_BACKLOG: u32 = 1024;

fn bind_with_backlog(addr: std::net::SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own `bind`: a restarted member can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

struct TcpListenerAdapter(tokio::net::TcpListener);

impl Listener for TcpListenerAdapter {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
        Box::pin(async move {
            let (stream, addr) = self.0.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxConnection, addr.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        self.0.local_addr().map(|a| a.to_string())
    }
}

impl Network for TcpNetwork {
    fn connect(&self, addr: &str) -> BoxFuture<'static, io::Result<BoxConnection>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxConnection)
        })
    }

    fn bind(&self, addr: &str) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let mut last_error = None;
            for candidate in tokio::net::lookup_host(&addr).await? {
                match bind_with_backlog(candidate) {
                    Ok(listener) => {
                        return Ok(Box::new(TcpListenerAdapter(listener)) as Box<dyn Listener>);
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            Err(last_error.unwrap_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{addr} resolves to no address"),
                )
            }))
        })
    }

    fn resolve(&self, addr: &str) -> BoxFuture<'static, io::Result<()>> {
        let addr = addr.to_string();
        Box::pin(async move {
            match tokio::net::lookup_host(&addr).await?.next() {
                Some(_) => Ok(()),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{addr} resolves to no address"),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A burst of connections larger than tokio's default backlog (128) is queued by the
    /// kernel while nothing accepts, instead of having SYNs dropped (a client whose SYN is
    /// dropped retries only after a second, longer than the timeout here).
    #[tokio::test]
    async fn listener_queues_a_burst_of_connections_beyond_128() {
        let listener = TcpNetwork.bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let burst = 300;
        let connects = (0..burst).map(|_| {
            let addr = addr.clone();
            tokio::time::timeout(
                Duration::from_millis(700),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = futures_util::future::join_all(connects).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(connected, burst, "connections queued before any accept");
        drop(listener);
    }
}
