//! Serving other members: accepts connections, authenticates them, and answers requests
//! concurrently through a [`Handler`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{Semaphore, mpsc, watch};

use super::frame::{self, Frame, FrameBody};
use super::messages::{ErrorCode, RemoteError, Request, Response};
use super::transport::{BoxConnection, BoxFuture, Listener};
use crate::env::Env;
use crate::metrics::Metrics;
use crate::ring::MemberId;

/// Requests one connection may have in flight; beyond it the connection stops being read
/// (back-pressure on the peer instead of unbounded tasks).
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 512;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    mut listener: Box<dyn Listener>,
    handler: Arc<dyn Handler>,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            accepted = listener.accept() => match accepted {
                Ok((conn, addr)) => {
                    tokio::spawn(serve_connection(conn, addr, handler.clone(), ctx.clone(), shutdown.clone()));
                }
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
    handler: Arc<dyn Handler>,
    ctx: ServerContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let conn = match &ctx.tls {
        Some(tls) => match tls.accept_peer(conn).await {
            Ok(c) => c,
            Err(e) => {
                ctx.metrics.rpc_auth_failures.inc();
                tracing::warn!(peer_addr = %addr, error = %e, "TLS handshake with a peer failed");
                return;
            }
        },
        None => conn,
    };
    let (r, w) = tokio::io::split(conn);
    let mut reader = BufReader::new(r);
    let mut writer = BufWriter::new(w);
    let peer =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut reader, &mut writer, &ctx))
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
                tracing::warn!(%peer, frame = ?other.body, "unexpected frame; closing connection");
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
    let hello = frame::read_frame(reader)
        .await
        .map_err(|e| format!("bad hello: {e}"))?;
    let (client, client_nonce) = match hello.body {
        FrameBody::Hello { member, nonce } => (member, nonce),
        other => return Err(format!("expected hello, got {other:?}")),
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
    let answer = frame::read_frame(reader)
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
        other => Err(format!("expected proof, got {other:?}")),
    }
}
