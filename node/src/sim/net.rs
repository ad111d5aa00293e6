//! The simulated environment: turmoil's TCP behind the [`Network`] seam, turmoil's clock
//! as the wall clock, and a minimal HTTP/1.1 client for simulated clients.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::env::WallClock;
use crate::rpc::transport::{BoxConnection, BoxFuture, Listener, Network};

/// Milliseconds since the Unix epoch at which every simulation starts.
pub const SIM_EPOCH_MS: u64 = 1_800_000_000_000;

#[derive(Clone, Copy, Debug, Default)]
pub struct SimNetwork;

struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
        Box::pin(async move {
            let (stream, addr) = self.0.accept().await?;
            Ok((Box::new(stream) as BoxConnection, addr.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        self.0.local_addr().map(|a| a.to_string())
    }
}

impl Network for SimNetwork {
    fn connect(&self, addr: &str) -> BoxFuture<'static, io::Result<BoxConnection>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr.as_str()).await?;
            Ok(Box::new(stream) as BoxConnection)
        })
    }

    fn bind(&self, addr: &str) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        let addr = addr.to_string();
        Box::pin(async move {
            let listener = turmoil::net::TcpListener::bind(addr.as_str()).await?;
            Ok(Box::new(SimListener(listener)) as Box<dyn Listener>)
        })
    }
}

/// Simulated time since the simulation's epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimClock;

impl WallClock for SimClock {
    fn now_ms(&self) -> u64 {
        SIM_EPOCH_MS + turmoil::sim_elapsed().map_or(0, |d| d.as_millis() as u64)
    }
}

/// A response as simulated clients see it.
#[derive(Debug, Clone)]
pub struct SimReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl SimReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP/1.1 request on a fresh simulated connection.
pub async fn http(
    addr: &str,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
    timeout: Duration,
) -> Result<SimReply, String> {
    let work = async {
        let stream = turmoil::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(SimReply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "timed out".to_string())?
}
