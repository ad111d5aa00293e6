//! Calls to other members: one persistent, authenticated, multiplexed connection per peer,
//! (re)established on demand, with a deadline on every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fnv::FnvHashMap;
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::RpcError;
use super::frame::{self, Frame, FrameBody};
use super::messages::{Request, Response};
use super::tls::Tls;
use super::transport::BoxConnection;
use crate::env::Env;
use crate::metrics::Metrics;
use crate::ring::MemberId;

/// After a failed connection attempt, calls to that peer fail at once for this long
/// instead of piling up connection attempts against a dead member.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);
/// Frames queued for one connection's writer.
const WRITE_QUEUE: usize = 1024;

#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

struct Inner {
    env: Env,
    me: MemberId,
    /// The first is proven, all are accepted from servers.
    secrets: Arc<Vec<Vec<u8>>>,
    connect_timeout: Duration,
    /// How long a connection may answer nothing while requests wait on it before it is
    /// taken for half-open and dropped.
    silence_limit: Duration,
    metrics: Metrics,
    peers: Mutex<FnvHashMap<String, Arc<Peer>>>,
    tls: Option<Tls>,
}

/// The connection to one address.
struct Peer {
    addr: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    failed_at: Mutex<Option<Instant>>,
}

struct Conn {
    peer_id: MemberId,
    tx: mpsc::Sender<Vec<u8>>,
    pending: Mutex<FnvHashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// When a frame last arrived: a connection that answers nothing while requests time
    /// out is half-open (the peer restarted or vanished without a reset) and is dropped.
    last_frame: Mutex<Instant>,
    /// When the first request sent since the last frame went out. The connection is
    /// dropped only once this is `silence_limit` old: one short request timing out (a
    /// gossip round) must not fail the longer ones waiting on a peer that is merely slow.
    awaiting_since: Mutex<Option<Instant>>,
}

impl Conn {
    fn fail_all(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders wakes every waiter with an error.
        self.pending.lock().clear();
    }
}

impl RpcClient {
    pub fn new(
        env: Env,
        me: MemberId,
        secrets: Vec<Vec<u8>>,
        connect_timeout: Duration,
        silence_limit: Duration,
        metrics: Metrics,
    ) -> RpcClient {
        RpcClient {
            inner: Arc::new(Inner {
                env,
                me,
                secrets: Arc::new(secrets),
                connect_timeout,
                silence_limit,
                metrics,
                peers: Mutex::new(FnvHashMap::default()),
                tls: None,
            }),
        }
    }

    /// The same client speaking TLS to every peer.
    pub fn with_tls(self, tls: Option<Tls>) -> RpcClient {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            env: shared.env.clone(),
            me: shared.me.clone(),
            secrets: shared.secrets.clone(),
            connect_timeout: shared.connect_timeout,
            silence_limit: shared.silence_limit,
            metrics: shared.metrics.clone(),
            peers: Mutex::new(FnvHashMap::default()),
            tls: None,
        });
        RpcClient {
            inner: Arc::new(Inner { tls, ..inner }),
        }
    }

    /// Sends `request` to the member at `addr` and waits for its answer for `timeout`.
    pub async fn call(
        &self,
        addr: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, RpcError> {
        let kind = request.kind();
        let deadline = Instant::now() + timeout;
        let result = self.call_inner(addr, request, deadline).await;
        if let Err(e) = &result {
            self.inner
                .metrics
                .rpc_errors
                .with_label_values(&[e.kind()])
                .inc();
            tracing::debug!(peer = addr, request = kind, error = %e, "rpc failed");
        }
        result
    }

    /// The member id behind `addr`, if a connection has been made.
    pub fn peer_id(&self, addr: &str) -> Option<MemberId> {
        let peer = self.inner.peers.lock().get(addr).cloned()?;
        let guard = peer.conn.try_lock().ok()?;
        guard.as_ref().map(|c| c.peer_id.clone())
    }

    /// Drops the connection to `addr` (e.g. after the member was removed).
    pub fn forget(&self, addr: &str) {
        if let Some(peer) = self.inner.peers.lock().remove(addr)
            && let Ok(mut guard) = peer.conn.try_lock()
            && let Some(conn) = guard.take()
        {
            conn.fail_all();
        }
    }

    async fn call_inner(
        &self,
        addr: &str,
        request: Request,
        deadline: Instant,
    ) -> Result<Response, RpcError> {
        // No connection means the request was never sent: `Unreachable`, never `Timeout`,
        // so a caller may safely send it elsewhere.
        let conn = tokio::time::timeout_at(deadline, self.connection(addr))
            .await
            .map_err(|_| RpcError::Unreachable(format!("{addr}: no connection in time")))??;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().insert(id, tx);
        let bytes = match frame::encode(&Frame {
            id,
            body: FrameBody::Request(request),
        }) {
            Ok(b) => b,
            Err(e) => {
                conn.pending.lock().remove(&id);
                return Err(RpcError::Codec(e.to_string()));
            }
        };
        // Removes the waiter however this call ends (including being dropped).
        let guard = PendingGuard { conn: &conn, id };
        let sent_at = Instant::now();
        match tokio::time::timeout_at(deadline, conn.tx.send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(RpcError::Closed),
            Err(_) => return Err(RpcError::Timeout),
        }
        conn.awaiting_since.lock().get_or_insert(sent_at);
        let response = match tokio::time::timeout_at(deadline, rx).await {
            Ok(r) => r.map_err(|_| RpcError::Closed),
            Err(_) => {
                let silent_since = *conn.awaiting_since.lock();
                if *conn.last_frame.lock() < sent_at
                    && silent_since.is_some_and(|t| t.elapsed() >= self.inner.silence_limit)
                {
                    tracing::debug!(peer = %conn.peer_id, "no answer on the connection for the silence limit; dropping it");
                    conn.fail_all();
                }
                Err(RpcError::Timeout)
            }
        };
        drop(guard);
        match response? {
            Response::Error(e) => Err(RpcError::Remote(e)),
            other => Ok(other),
        }
    }

    async fn connection(&self, addr: &str) -> Result<Arc<Conn>, RpcError> {
        let peer = {
            let mut peers = self.inner.peers.lock();
            peers
                .entry(addr.to_string())
                .or_insert_with(|| {
                    Arc::new(Peer {
                        addr: addr.to_string(),
                        conn: tokio::sync::Mutex::new(None),
                        failed_at: Mutex::new(None),
                    })
                })
                .clone()
        };
        let mut slot = peer.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.closed.load(Ordering::Acquire)
        {
            return Ok(c.clone());
        }
        if let Some(t) = *peer.failed_at.lock()
            && t.elapsed() < RECONNECT_BACKOFF
        {
            return Err(RpcError::Unreachable(format!(
                "{} (recently failed)",
                peer.addr
            )));
        }
        match tokio::time::timeout(self.inner.connect_timeout, self.connect(&peer.addr))
            .await
            .unwrap_or_else(|_| {
                Err(RpcError::Unreachable(format!(
                    "{}: connect timed out",
                    peer.addr
                )))
            }) {
            Ok(conn) => {
                *peer.failed_at.lock() = None;
                *slot = Some(conn.clone());
                Ok(conn)
            }
            Err(e) => {
                *peer.failed_at.lock() = Some(Instant::now());
                *slot = None;
                Err(e)
            }
        }
    }

    async fn connect(&self, addr: &str) -> Result<Arc<Conn>, RpcError> {
        let stream = self
            .inner
            .env
            .network
            .connect(addr)
            .await
            .map_err(|e| RpcError::Unreachable(format!("{addr}: {e}")))?;
        let stream = match &self.inner.tls {
            Some(tls) => tls.connect(addr, stream).await.map_err(|e| {
                self.inner.metrics.rpc_auth_failures.inc();
                tracing::warn!(peer = %addr, error = %e, "TLS handshake with a peer failed");
                RpcError::Auth(format!("TLS with {addr}: {e}"))
            })?,
            None => stream,
        };
        let (r, w) = tokio::io::split(stream);
        let mut reader = BufReader::new(r);
        let mut writer = BufWriter::new(w);
        let peer_id = self.handshake(&mut reader, &mut writer).await?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let conn = Arc::new(Conn {
            peer_id,
            tx,
            pending: Mutex::new(FnvHashMap::default()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            last_frame: Mutex::new(Instant::now()),
            awaiting_since: Mutex::new(None),
        });
        tokio::spawn(write_loop(writer, rx, conn.clone()));
        tokio::spawn(read_loop(reader, conn.clone()));
        Ok(conn)
    }

    async fn handshake(
        &self,
        reader: &mut BufReader<ReadHalf<BoxConnection>>,
        writer: &mut BufWriter<WriteHalf<BoxConnection>>,
    ) -> Result<MemberId, RpcError> {
        let me = &self.inner.me;
        let nonce: frame::Nonce = self.inner.env.random_bytes();
        frame::write_frame(
            writer,
            &Frame {
                id: 0,
                body: FrameBody::Hello {
                    member: me.clone(),
                    nonce,
                },
            },
        )
        .await?;
        // The server has proven nothing yet: its frames get the handshake's small limit.
        let challenge = frame::read_frame_limited(reader, frame::MAX_HANDSHAKE_FRAME_BYTES).await?;
        let (server, server_nonce, server_proof) = match challenge.body {
            FrameBody::Challenge {
                member,
                nonce,
                proof,
            } => (member, nonce, proof),
            FrameBody::Refused { reason } => return Err(RpcError::Auth(reason)),
            other => {
                return Err(RpcError::Codec(format!(
                    "expected a challenge, got {}",
                    other.kind()
                )));
            }
        };
        if !frame::verify_any(
            &self.inner.secrets,
            "server",
            (me, &nonce),
            (&server, &server_nonce),
            &server_proof,
        ) {
            self.inner.metrics.rpc_auth_failures.inc();
            return Err(RpcError::Auth(format!(
                "{server} did not prove the cluster secret"
            )));
        }
        let primary = self
            .inner
            .secrets
            .first()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let proof = frame::proof(primary, "client", (me, &nonce), (&server, &server_nonce));
        frame::write_frame(
            writer,
            &Frame {
                id: 0,
                body: FrameBody::Proof { proof },
            },
        )
        .await?;
        match frame::read_frame_limited(reader, frame::MAX_HANDSHAKE_FRAME_BYTES)
            .await?
            .body
        {
            FrameBody::Welcome => Ok(server),
            FrameBody::Refused { reason } => Err(RpcError::Auth(reason)),
            other => Err(RpcError::Codec(format!(
                "expected welcome, got {}",
                other.kind()
            ))),
        }
    }
}

struct PendingGuard<'a> {
    conn: &'a Conn,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.conn.pending.lock().remove(&self.id);
    }
}

async fn write_loop(
    mut writer: BufWriter<WriteHalf<BoxConnection>>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    conn: Arc<Conn>,
) {
    while let Some(bytes) = rx.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            break;
        }
        // Coalesce whatever else is queued into one flush.
        let mut ok = true;
        while let Ok(more) = rx.try_recv() {
            if writer.write_all(&more).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok || writer.flush().await.is_err() {
            break;
        }
    }
    conn.fail_all();
    let _ = writer.shutdown().await;
}

async fn read_loop(mut reader: BufReader<ReadHalf<BoxConnection>>, conn: Arc<Conn>) {
    loop {
        match frame::read_frame(&mut reader).await {
            Ok(Frame {
                id,
                body: FrameBody::Response(resp),
            }) => {
                *conn.last_frame.lock() = Instant::now();
                *conn.awaiting_since.lock() = None;
                if let Some(waiter) = conn.pending.lock().remove(&id) {
                    let _ = waiter.send(resp);
                }
            }
            Ok(other) => {
                tracing::warn!(peer = %conn.peer_id, frame = ?other.body, "unexpected frame from peer; closing");
                break;
            }
            Err(e) => {
                if !matches!(e, frame::CodecError::Closed) {
                    tracing::debug!(peer = %conn.peer_id, error = %e, "connection to peer failed");
                }
                break;
            }
        }
    }
    conn.fail_all();
}
