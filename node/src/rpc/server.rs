//! Serving other members: accepts connections, authenticates them, and answers requests
//! concurrently through a [`Handler`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{Semaphore, mpsc, watch};

use super::frame::{self, Frame, FrameBody};
use super::messages::{ErrorCode, RemoteError, Request, Response};
use super::transport::{BoxConnection, BoxFuture, Listener};
use crate::config::PeerLimits;
use crate::env::Env;
use crate::metrics::Metrics;
use crate::ring::MemberId;

/// Requests one connection may have in flight; beyond it the connection stops being read
/// (back-pressure on the peer instead of unbounded tasks).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 512;
/// A connection with no request for this long is closed (its client may be gone without a
/// reset); members reconnect on their next call.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

pub trait Handler: Send + Sync + 'static {
    fn handle(&self, peer: MemberId, request: Request) -> BoxFuture<'static, Response>;
}

#[derive(Clone)]
pub struct ServerContext {
    pub env: Env,
    pub me: MemberId,
    /// The first is proven, all are accepted from clients.
    pub secrets: Arc<Vec<Vec<u8>>>,
    pub metrics: Metrics,
    pub tls: Option<super::tls::Tls>,
    pub limits: PeerLimits,
}

/// Counts open peer connections, in total and per source address, so that accepting one
/// more can be refused before anything is read from it.
#[derive(Clone)]
pub struct ConnectionSlots {
    inner: Arc<SlotsInner>,
}

struct SlotsInner {
    max_total: usize,
    max_per_source: usize,
    open: Mutex<SlotCounts>,
}

#[derive(Default)]
struct SlotCounts {
    total: usize,
    by_source: HashMap<String, usize>,
}

/// Why a connection got no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotRefusal {
    Total,
    PerSource,
}

/// One open connection's slot, given back when dropped.
pub struct ConnectionSlot {
    inner: Arc<SlotsInner>,
    source: String,
}

impl ConnectionSlots {
    pub fn new(limits: &PeerLimits) -> ConnectionSlots {
        ConnectionSlots {
            inner: Arc::new(SlotsInner {
                max_total: limits.max_connections.max(1),
                max_per_source: limits.max_connections_per_ip.max(1),
                open: Mutex::new(SlotCounts::default()),
            }),
        }
    }

    /// A slot for a connection from `addr` (`host:port`; the host is what is limited).
    pub fn try_acquire(&self, addr: &str) -> Result<ConnectionSlot, SlotRefusal> {
        let source = source_of(addr).to_string();
        let mut open = self.inner.open.lock();
        if open.total >= self.inner.max_total {
            return Err(SlotRefusal::Total);
        }
        let from_source = open.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.inner.max_per_source {
            return Err(SlotRefusal::PerSource);
        }
        open.total += 1;
        open.by_source.insert(source.clone(), from_source + 1);
        Ok(ConnectionSlot {
            inner: self.inner.clone(),
            source,
        })
    }

    /// Open connections, in total.
    pub fn open(&self) -> usize {
        self.inner.open.lock().total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.inner.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Sources come and go (ephemeral clients): the table keeps only open ones.
                open.by_source.remove(&self.source);
            }
        }
    }
}

/// The host part of `host:port` (`[v6]:port` keeps its brackets); the whole string when
/// it has no port.
fn source_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    }
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    mut listener: Box<dyn Listener>,
    handler: Arc<dyn Handler>,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = ConnectionSlots::new(&ctx.limits);
    loop {
        tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok((conn, addr)) => match slots.try_acquire(&addr) {
                    Ok(slot) => {
                        tokio::spawn(serve_connection(conn, addr, slot, handler.clone(), ctx.clone(), shutdown.clone()));
                    }
                    Err(refusal) => {
                        // Closed unread: a flood of connections costs one accept each.
                        drop(conn);
                        ctx.metrics
                            .rejected
                            .with_label_values(&["peer_connections"])
                            .inc();
                        tracing::warn!(
                            peer_addr = %addr,
                            limit = ?refusal,
                            open = slots.open(),
                            "too many peer connections; closed a new one"
                        );
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return; }
            }
        }
    }
}

async fn serve_connection(
    conn: BoxConnection,
    addr: String,
    // Held for the connection's life.
    _slot: ConnectionSlot,
    handler: Arc<dyn Handler>,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    // One deadline from accept to a proven secret, TLS included: a connection that sends
    // nothing, or trickles, is closed when it passes.
    let handshake_deadline = tokio::time::Instant::now() + ctx.limits.handshake_timeout;
    let conn = match &ctx.tls {
        Some(tls) => match tokio::time::timeout_at(handshake_deadline, tls.accept_peer(conn)).await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                ctx.metrics.rpc_auth_failures.inc();
                tracing::warn!(peer_addr = %addr, error = %e, "TLS handshake with a peer failed");
                return;
            }
            Err(_) => {
                ctx.metrics.rpc_auth_failures.inc();
                tracing::warn!(peer_addr = %addr, "peer did not complete the TLS handshake in time");
                return;
            }
        },
        None => conn,
    };
    let (r, w) = tokio::io::split(conn);
    let mut reader = BufReader::new(r);
    let mut writer = BufWriter::new(w);
    let peer = match tokio::time::timeout_at(
        handshake_deadline,
        handshake(&mut reader, &mut writer, &ctx),
    )
    .await
    {
        Ok(Ok(peer)) => peer,
        Ok(Err(reason)) => {
            ctx.metrics.rpc_auth_failures.inc();
            tracing::warn!(peer_addr = %addr, reason = %reason, "refused peer connection");
            let _ = frame::write_frame(
                &mut writer,
                &Frame {
                    id: 0,
                    body: FrameBody::Refused { reason },
                },
            )
            .await;
            return;
        }
        Err(_) => {
            ctx.metrics.rpc_auth_failures.inc();
            tracing::warn!(peer_addr = %addr, "peer did not complete the handshake in time");
            return;
        }
    };
    tracing::debug!(%peer, peer_addr = %addr, "peer connected");

    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT_PER_CONNECTION);
    let writer_task = tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                return;
            }
            while let Ok(more) = rx.try_recv() {
                if writer.write_all(&more).await.is_err() {
                    return;
                }
            }
            if writer.flush().await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    loop {
        let frame = tokio::select! {
            biased;
            f = tokio::time::timeout(IDLE_TIMEOUT, frame::read_frame(&mut reader)) => match f {
                Ok(f) => f,
                Err(_) => {
                    tracing::debug!(%peer, "closing an idle peer connection");
                    break;
                }
            },
            _ = shutdown.changed() => break,
        };
        match frame {
            Ok(Frame {
                id,
                body: FrameBody::Request(request),
            }) => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let handler = handler.clone();
                let tx = tx.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    let response = handler.handle(peer, request).await;
                    let bytes = frame::encode(&Frame {
                        id,
                        body: FrameBody::Response(response),
                    })
                    .or_else(|e| {
                        let error = Response::Error(RemoteError::new(
                            ErrorCode::Internal,
                            format!("response not encodable: {e}"),
                        ));
                        frame::encode(&Frame {
                            id,
                            body: FrameBody::Response(error),
                        })
                    });
                    if let Ok(bytes) = bytes {
                        let _ = tx.send(bytes).await;
                    }
                    drop(permit);
                });
            }
            Ok(other) => {
                tracing::warn!(%peer, frame = other.body.kind(), "unexpected frame; closing connection");
                break;
            }
            Err(frame::CodecError::Closed) => break,
            Err(e) => {
                ctx.metrics
                    .rpc_errors
                    .with_label_values(&["bad_frame"])
                    .inc();
                tracing::warn!(%peer, error = %e, "bad frame from peer; closing connection");
                break;
            }
        }
    }
    drop(tx);
    let _ = writer_task.await;
}

/// Server side of the mutual challenge-response. Returns the peer's id, or why it was
/// refused.
async fn handshake<R, W>(
    reader: &mut R,
    writer: &mut W,
    ctx: &ServerContext,
) -> Result<MemberId, String>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    // Until the client has proven the secret, its frames get the handshake's small limit.
    let hello = frame::read_frame_limited(reader, frame::MAX_HANDSHAKE_FRAME_BYTES)
        .await
        .map_err(|e| format!("bad hello: {e}"))?;
    let (client, client_nonce) = match hello.body {
        FrameBody::Hello { member, nonce } => (member, nonce),
        other => return Err(format!("expected hello, got {}", other.kind())),
    };
    let nonce: frame::Nonce = ctx.env.random_bytes();
    let primary = ctx.secrets.first().map(Vec::as_slice).unwrap_or_default();
    let proof = frame::proof(
        primary,
        "server",
        (&client, &client_nonce),
        (&ctx.me, &nonce),
    );
    frame::write_frame(
        writer,
        &Frame {
            id: 0,
            body: FrameBody::Challenge {
                member: ctx.me.clone(),
                nonce,
                proof,
            },
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let answer = frame::read_frame_limited(reader, frame::MAX_HANDSHAKE_FRAME_BYTES)
        .await
        .map_err(|e| format!("no proof from {client}: {e}"))?;
    match answer.body {
        FrameBody::Proof { proof }
            if frame::verify_any(
                &ctx.secrets,
                "client",
                (&client, &client_nonce),
                (&ctx.me, &nonce),
                &proof,
            ) =>
        {
            frame::write_frame(
                writer,
                &Frame {
                    id: 0,
                    body: FrameBody::Welcome,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(client)
        }
        FrameBody::Proof { .. } => Err(format!("{client} does not know the cluster secret")),
        other => Err(format!("expected proof, got {}", other.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> PeerLimits {
        PeerLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            ..PeerLimits::default()
        }
    }

    #[test]
    fn slots_cap_each_source_and_the_total() {
        let slots = ConnectionSlots::new(&limits(5, 2));
        let a1 = slots.try_acquire("10.0.0.1:4000").unwrap();
        let a2 = slots.try_acquire("10.0.0.1:4001").unwrap();
        // A third from the same host is refused whatever its port.
        assert_eq!(
            slots.try_acquire("10.0.0.1:4002").err(),
            Some(SlotRefusal::PerSource)
        );
        let b1 = slots.try_acquire("10.0.0.2:4000").unwrap();
        let b2 = slots.try_acquire("10.0.0.2:4001").unwrap();
        let c1 = slots.try_acquire("[::1]:4000").unwrap();
        assert_eq!(slots.open(), 5);
        // The total is reached: even a new source is refused.
        assert_eq!(
            slots.try_acquire("10.0.0.3:4000").err(),
            Some(SlotRefusal::Total)
        );
        // Closing a connection gives its slot back to its source and to the total.
        drop(a1);
        assert_eq!(slots.open(), 4);
        let a3 = slots.try_acquire("10.0.0.1:4003").unwrap();
        drop((a2, a3, b1, b2, c1));
        assert_eq!(slots.open(), 0);
        assert!(slots.inner.open.lock().by_source.is_empty());
    }

    #[test]
    fn source_is_the_host_of_an_address() {
        assert_eq!(source_of("127.0.0.1:7070"), "127.0.0.1");
        assert_eq!(source_of("[::1]:7070"), "[::1]");
        assert_eq!(source_of("dynamo-0"), "dynamo-0");
        assert_eq!(source_of("host:notaport"), "host:notaport");
    }
}
