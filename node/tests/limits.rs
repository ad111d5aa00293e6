//! Hostile and excessive clients and peers: each is cut off with a clear error and a
//! metric, the member keeps serving, and nothing is half-written.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Options};
use dynamo::rpc::frame::{self, FrameBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn single(extra: &[&str]) -> Options {
    Options {
        n: 1,
        r: 1,
        w: 1,
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..Options::default()
    }
}

/// Opens a connection and sends a PUT whose body never completes.
async fn send_slow_body(http: &str) -> TcpStream {
    let mut conn = TcpStream::connect(http).await.unwrap();
    conn.write_all(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    conn
}

/// Reads until the member closes the connection (bounded); returns what it sent.
async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    match tokio::time::timeout(within, conn.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

/// A peer that sends garbage, or speaks a newer protocol, is refused with a reason, counted,
/// and the member goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_garbage_and_newer_protocol_are_refused() {
    let cluster = Cluster::start(1, single(&[])).await;
    cluster.wait_healthy_all().await;
    let peer = cluster.members[0].peer();

    // A well-framed frame of a protocol version this member does not speak.
    let mut newer = Vec::new();
    newer.extend_from_slice(&(9u32 + 3).to_be_bytes());
    newer.push(frame::PROTOCOL_VERSION + 1);
    newer.extend_from_slice(&[0u8; 8]);
    newer.extend_from_slice(&[1, 2, 3]);
    // Random bytes with a plausible length prefix.
    let mut garbage = (64u32).to_be_bytes().to_vec();
    garbage.extend((0..64u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));

    for (what, bytes, expected) in [
        ("newer protocol", newer, "protocol version"),
        ("garbage", garbage, ""),
    ] {
        let mut conn = TcpStream::connect(&peer).await.unwrap();
        conn.write_all(&bytes).await.unwrap();
        let reply = frame::read_frame(&mut conn).await;
        match reply {
            Ok(f) => match f.body {
                FrameBody::Refused { reason } => {
                    assert!(reason.contains(expected), "{what}: refused with {reason:?}")
                }
                other => panic!("{what}: answered {other:?}"),
            },
            Err(e) => panic!("{what}: no refusal frame: {e}"),
        }
        assert!(
            read_until_closed(&mut conn, Duration::from_secs(10))
                .await
                .is_some(),
            "{what}: the connection was not closed"
        );
    }
    assert!(cluster.metric(0, "dynamo_rpc_auth_failures_total").await >= 2.0);
    let c = cluster.app_client(0);
    let put = c
        .put("after", Bytes::from_static(b"v"), None, "")
        .await
        .unwrap();
    assert_eq!(put.status.as_u16(), 204);
}

/// Past the in-flight limit a request gets a retryable 503; past the connection limit a
/// connection is closed at once; a client sending its headers or body too slowly is cut
/// off. Each is counted, and the member serves normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_excess_clients_are_cut_off() {
    let cluster = Cluster::start(
        1,
        single(&["--max-inflight-requests=1", "--max-connections=3"]),
    )
    .await;
    cluster.wait_healthy_all().await;
    let http = cluster.members[0].http();

    // A body that never arrives holds the only request slot, so another request is shed
    // with 503 overloaded and Retry-After. Polled: the member takes the slot when it has read
    // the slow request's headers and gives it back at the request deadline (3 s here); a
    // poll that reaches the member first takes the slot and the slow request is the one
    // shed. Either way a fresh slow body is sent. Every poll is kept so a failure shows what
    // the member answered and when.
    let app = cluster.app_client(0);
    let started = Instant::now();
    let mut slow_body = send_slow_body(&http).await;
    let mut slow_body_sent = Instant::now();
    let mut polls = Vec::new();
    let shed = loop {
        let asked = Instant::now();
        let reply = app.get("any", "").await.unwrap();
        polls.push(format!(
            "at {:?}: {} after {:?}",
            asked - started,
            reply.status.as_u16(),
            asked.elapsed()
        ));
        if reply.status.as_u16() == 503 {
            break reply;
        }
        if started.elapsed() > Duration::from_secs(20) {
            cluster.dump_logs();
            panic!("no request was shed while a slow body held the only slot; polls: {polls:#?}");
        }
        // The slow body lost the race for the slot (the poll took it first and the slow
        // request was the one shed), or the member already gave up on it.
        let mut peeked = [0u8; 1];
        let answered = tokio::time::timeout(Duration::from_millis(5), slow_body.peek(&mut peeked))
            .await
            .is_ok();
        if answered || slow_body_sent.elapsed() > Duration::from_millis(2500) {
            polls.push(format!(
                "at {:?}: a fresh slow body (the last one answered: {answered})",
                started.elapsed()
            ));
            slow_body = send_slow_body(&http).await;
            slow_body_sent = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("shed after {} polls", polls.len());
    assert_eq!(shed.json().unwrap()["code"], "overloaded");
    assert_eq!(shed.headers.get("retry-after").unwrap(), "1");
    // The slow body is given up on with 408 after the request deadline (3 s here).
    let reply = read_until_closed(&mut slow_body, Duration::from_secs(15))
        .await
        .expect("the slow body was not cut off");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("request_timeout"), "{reply}");

    // Headers that never finish are cut off by the header deadline.
    let started = Instant::now();
    let mut slow_headers = TcpStream::connect(&http).await.unwrap();
    slow_headers
        .write_all(b"GET /v1/kv/x HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut slow_headers, Duration::from_secs(30))
            .await
            .is_some(),
        "a client that never finished its headers kept its connection"
    );
    eprintln!("slow headers cut off after {:?}", started.elapsed());
    drop(slow_headers);

    // Connections past the limit are closed without an answer.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(&http).await.unwrap());
    }
    // Polled: the member counts a connection once it has accepted it.
    cluster
        .wait_for(
            "a connection past the limit closed without an answer",
            Duration::from_secs(20),
            || async {
                let Ok(mut excess) = TcpStream::connect(&http).await else {
                    return false;
                };
                let _ = excess
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
                read_until_closed(&mut excess, Duration::from_secs(5))
                    .await
                    .is_some_and(|answer| answer.is_empty())
            },
        )
        .await;
    drop(held);

    // Once the held connections are gone, both refusals show in the metrics.
    let admin = cluster.client(0);
    cluster
        .wait_for(
            "overload and connection refusals counted",
            Duration::from_secs(20),
            || async {
                let Ok(reply) = admin.admin_get("/metrics").await else {
                    return false;
                };
                let text = reply.text();
                ["overload", "connections"].iter().all(|reason| {
                    text.contains(&format!(
                        "dynamo_rejected_requests_total{{reason=\"{reason}\"}}"
                    ))
                })
            },
        )
        .await;
    // Nothing of the cut-off write was stored, and the member serves normally.
    let c = cluster.app_client(0);
    cluster
        .wait_for(
            "the member to serve again",
            Duration::from_secs(10),
            || async {
                c.get("slow", "")
                    .await
                    .is_ok_and(|r| r.status.as_u16() == 404)
            },
        )
        .await;
    let put = c
        .put("fine", Bytes::from_static(b"v"), None, "")
        .await
        .unwrap();
    assert_eq!(put.status.as_u16(), 204);
}

/// `VmHWM` (peak resident set) of a process, in bytes, from /proc.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// A valid Hello frame, as a member opening a connection sends it.
fn hello_bytes() -> Vec<u8> {
    frame::encode(&frame::Frame {
        id: 0,
        body: FrameBody::Hello {
            member: dynamo::ring::MemberId::new("intruder"),
            nonce: [9; 32],
        },
    })
    .unwrap()
}

/// Connects to `peer` from the loopback address `source`.
async fn connect_from(source: &str, peer: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(peer.parse().unwrap()).await.unwrap()
}

/// Whether the member answers a Hello with a Challenge (rather than closing the
/// connection unanswered).
async fn challenged(conn: &mut TcpStream) -> bool {
    if conn.write_all(&hello_bytes()).await.is_err() {
        return false;
    }
    match tokio::time::timeout(
        Duration::from_secs(10),
        frame::read_frame_limited(conn, frame::MAX_HANDSHAKE_FRAME_BYTES),
    )
    .await
    {
        Ok(Ok(f)) => matches!(f.body, FrameBody::Challenge { .. }),
        Ok(Err(_)) => false,
        Err(_) => panic!("the member neither challenged nor closed the connection"),
    }
}

/// 24 connections that never authenticate, each declaring a 64 MiB frame and sending
/// zeros: the member refuses each from its length prefix (frames before the handshake are
/// limited to 4 KiB), its peak RSS stays below 200 MB (it reached 1.3 GB before the limit),
/// it keeps serving clients, and a connection that sends nothing is closed at the
/// handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_cannot_exhaust_memory() {
    const CONNECTIONS: usize = 24;
    const DECLARED: u32 = 64 << 20;
    const CHUNK: usize = 1 << 20;
    const MAX_PEAK_RSS: u64 = 200 << 20;
    let cluster = Cluster::start(1, single(&["--peer-handshake-timeout-ms=1000"])).await;
    cluster.wait_healthy_all().await;
    let peer = cluster.members[0].peer();
    let pid = cluster.members[0].child.as_ref().unwrap().id();
    let before = peak_rss_bytes(pid);

    let mut flood = Vec::new();
    for _ in 0..CONNECTIONS {
        let peer = peer.clone();
        flood.push(tokio::spawn(async move {
            let Ok(mut conn) = TcpStream::connect(&peer).await else {
                return 0usize;
            };
            let zeros = vec![0u8; CHUNK];
            let mut sent = 0usize;
            if conn.write_all(&DECLARED.to_be_bytes()).await.is_err() {
                return sent;
            }
            // At most the declared 63 MiB, and at most 60 s: the member is expected to
            // close the connection long before either.
            let deadline = Instant::now() + Duration::from_secs(60);
            while sent + CHUNK < DECLARED as usize && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(10), conn.write_all(&zeros)).await {
                    Ok(Ok(())) => sent += CHUNK,
                    _ => break,
                }
            }
            sent
        }));
    }
    let mut sent_total = 0;
    for f in flood {
        sent_total += f.await.unwrap();
    }
    let peak = peak_rss_bytes(pid);
    eprintln!(
        "peak RSS before {} MB, after the flood {} MB; {} MB of zeros accepted by the socket",
        before >> 20,
        peak >> 20,
        sent_total >> 20
    );
    assert!(
        peak < MAX_PEAK_RSS,
        "peak RSS {} MB after {CONNECTIONS} unauthenticated 64 MiB frames",
        peak >> 20
    );
    // Each was refused and counted.
    cluster
        .wait_for(
            "the refused connections counted",
            Duration::from_secs(20),
            || async {
                cluster.metric(0, "dynamo_rpc_auth_failures_total").await >= CONNECTIONS as f64
            },
        )
        .await;

    // A connection that sends nothing is closed at the handshake deadline (1 s here).
    let mut silent = TcpStream::connect(&peer).await.unwrap();
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(30))
            .await
            .is_some(),
        "a connection that never said hello was kept open"
    );

    let c = cluster.app_client(0);
    let put = c
        .put("after-flood", Bytes::from_static(b"v"), None, "")
        .await
        .unwrap();
    assert_eq!(put.status.as_u16(), 204);
    let got = c.get("after-flood", "").await.unwrap();
    assert_eq!(got.status.as_u16(), 200);
}

/// Peer connections are capped per source address and in total: one past a cap is closed
/// without a challenge and counted, and a slot is given back when its connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_connections_are_capped_per_source_and_in_total() {
    let cluster = Cluster::start(
        1,
        single(&[
            "--max-peer-connections=4",
            "--max-peer-connections-per-ip=3",
            // Long enough that held connections stay open for the whole test.
            "--peer-handshake-timeout-ms=60000",
        ]),
    )
    .await;
    cluster.wait_healthy_all().await;
    let peer = cluster.members[0].peer();
    let (a, b, c) = ("127.0.0.1", "127.0.0.2", "127.0.0.3");

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = connect_from(a, &peer).await;
        assert!(challenged(&mut conn).await, "a connection within the caps");
        held.push(conn);
    }
    let mut excess = connect_from(a, &peer).await;
    assert!(
        !challenged(&mut excess).await,
        "a fourth connection from one source was served"
    );
    let mut other = connect_from(b, &peer).await;
    assert!(
        challenged(&mut other).await,
        "another source was refused below the total cap"
    );
    held.push(other);
    let mut over_total = connect_from(c, &peer).await;
    assert!(
        !challenged(&mut over_total).await,
        "a fifth connection was served past the total cap"
    );
    assert!(
        cluster
            .metric_where(0, "dynamo_rejected_requests_total", "peer_connections")
            .await
            >= 2.0
    );

    // Closed connections give their slots back (polled: the member sees the close when it
    // next reads).
    drop(held);
    cluster
        .wait_for(
            "a slot freed once the held connections closed",
            Duration::from_secs(20),
            || async {
                let mut conn = connect_from(a, &peer).await;
                challenged(&mut conn).await
            },
        )
        .await;
}
