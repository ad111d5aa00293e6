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
            let listener = tokio::net::TcpListener::bind(&addr).await?;
            Ok(Box::new(TcpListenerAdapter(listener)) as Box<dyn Listener>)
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
