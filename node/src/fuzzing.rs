//! Entry points for the fuzz targets in `node/fuzz` and for the regression tests that replay
//! what they found (`node/tests/fuzz_regressions.rs`).
//!
//! Each function takes untrusted bytes the way the node receives them and checks more than
//! "does not panic": what decodes must re-encode to something that decodes to the same
//! value, and a view a peer could send, once accepted, must be usable without panicking.

use crate::api::context::ContextCodec;
use crate::clock::{Object, VersionVector};
use crate::membership::{GossipDelta, GossipDigest, GossipPush};
use crate::rpc::frame::{self, Frame};
use crate::storage::{decode_record, encode_record};

/// A frame as read from a peer connection (after the length prefix).
pub fn rpc_frame(data: &[u8]) {
    let Ok(frame) = frame::decode(data) else {
        return;
    };
    let Ok(encoded) = frame::encode(&frame) else {
        return; // larger than the frame limit once re-encoded: refused on send
    };
    let again: Frame = match frame::decode(&encoded[4..]) {
        Ok(f) => f,
        Err(e) => panic!("a decoded frame does not decode after re-encoding: {e}"),
    };
    assert_eq!(frame, again, "frame round trip changed the frame");
}

/// The token the fuzz targets' contexts are signed with.
pub const FUZZ_CLUSTER_TOKEN: &[u8] = b"fuzz-cluster-token";

/// A causal context from the `x-dynamo-context` header. The input is tried as a header
/// as it came, and its bytes also as the body of a genuinely signed context, so the fuzzer
/// reaches the decoding behind the signature check too.
pub fn context(data: &[u8]) {
    let codec = ContextCodec::new(&[FUZZ_CLUSTER_TOKEN.to_vec()]);
    let key = b"fuzzed-key";
    let mut decoded = Vec::new();
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(vv) = codec.decode(key, text)
    {
        decoded.push(vv);
    }
    if let Ok(vv) = codec.decode(key, &codec.sign_body_for_fuzzing(data)) {
        decoded.push(vv);
    }
    for vv in decoded {
        let again = codec.decode(key, &codec.encode(key, &vv));
        assert_eq!(
            again.ok().as_ref(),
            Some(&vv),
            "context round trip changed it"
        );
        // Contexts are merged into the stored clock: merging must be idempotent.
        assert_eq!(vv.merged(&vv), vv);
    }
}

/// A key record as read from disk.
pub fn record(data: &[u8]) {
    let Ok(object) = decode_record(data) else {
        return;
    };
    let again: Object = match decode_record(&encode_record(&object)) {
        Ok(o) => o,
        Err(e) => panic!("a decoded record does not decode after re-encoding: {e}"),
    };
    assert_eq!(object, again, "record round trip changed the record");
    // What reads do with a record must not panic on anything that passed validation.
    let _ = object.digest();
    let _ = object.latest_timestamp_ms();
    let merged = object.merge(&object, crate::clock::ConflictMode::Siblings);
    assert!(
        merged.covers(&object),
        "merging a record with itself lost a sibling"
    );
}

/// The three gossip messages as a peer sends them (postcard bodies inside RPC frames);
/// a cluster view that passes validation must answer every placement question.
pub fn gossip(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let view = match kind % 3 {
        0 => {
            let _ = postcard::from_bytes::<GossipDigest>(body);
            None
        }
        1 => postcard::from_bytes::<GossipDelta>(body)
            .ok()
            .and_then(|d| d.view),
        _ => postcard::from_bytes::<GossipPush>(body)
            .ok()
            .and_then(|p| p.view),
    };
    let Some(view) = view else { return };
    if view.validate().is_err() {
        return;
    }
    let partitions = view.settings.partitions;
    for p in 0..partitions.min(64) {
        let _ = view.write_sets(p);
        let _ = view.read_set(p);
    }
    for id in view.members.keys() {
        let _ = view.pull_duties(id);
        let _ = view.status_of(id);
    }
    let _ = view.claimant(|_| true);
}

/// One member (in-memory storage, loopback only) that [`http_request`] sends requests to;
/// started once per process.
struct HttpHarness {
    runtime: tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    token: String,
    // Keeps the member running for the life of the process.
    _node: std::sync::Arc<crate::node::Node>,
}

static HARNESS: std::sync::OnceLock<HttpHarness> = std::sync::OnceLock::new();

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

fn harness() -> &'static HttpHarness {
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("tokio runtime: {e}"));
        let (http, peer) = (free_loopback_port(), free_loopback_port());
        let mut config = crate::config::NodeConfig::for_local(
            "fuzz-0",
            http,
            peer,
            std::path::PathBuf::from("/nonexistent-fuzz"),
        );
        config.bootstrap = true;
        config.settings.n = 1;
        config.settings.r = 1;
        config.settings.w = 1;
        config.settings.partitions = 64;
        config.request_timeout = std::time::Duration::from_millis(300);
        config.limits.max_value_bytes = 64 << 10;
        let token = String::from_utf8_lossy(FUZZ_CLUSTER_TOKEN).into_owned();
        config.cluster_token = crate::config::Secret::new(&token);
        let node = runtime.block_on(async {
            let node = crate::node::Node::start(
                config,
                crate::env::Env::production(1),
                std::sync::Arc::new(crate::storage::MemoryEngine::new()),
            )
            .await
            .unwrap_or_else(|e| panic!("starting the fuzz member: {e}"));
            node.bootstrap()
                .await
                .unwrap_or_else(|e| panic!("bootstrapping the fuzz member: {e}"));
            node
        });
        HttpHarness {
            runtime,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], http)),
            token,
            _node: node,
        }
    })
}

/// Builds an HTTP/1.1 request from fuzz bytes. Fields are separated by NUL bytes:
/// `selector \0 path \0 query \0 header \0 ... \0 body`. The selector's first byte picks
/// the method, its second the endpoint family and whether the admin token is sent; path
/// bytes outside printable ASCII are percent-encoded so they reach the key parser.
pub fn http_request_bytes(data: &[u8], token: &str) -> Vec<u8> {
    let fields: Vec<&[u8]> = data.split(|b| *b == 0).collect();
    let selector = fields.first().copied().unwrap_or_default();
    let method = match selector.first().copied().unwrap_or(0) % 7 {
        0 => "GET",
        1 => "PUT",
        2 => "DELETE",
        3 => "POST",
        4 => "HEAD",
        5 => "PATCH",
        _ => "OPTIONS",
    };
    let family = selector.get(1).copied().unwrap_or(0);
    let prefix = match family % 4 {
        0 | 1 => "/v1/kv/",
        2 => "/v1/cluster/",
        _ => "/",
    };
    let mut path = String::from(prefix);
    for &b in fields.get(1).copied().unwrap_or_default() {
        if b.is_ascii_graphic() && b != b'%' && b != b'?' && b != b'#' {
            path.push(b as char);
        } else {
            path.push_str(&format!("%{b:02X}"));
        }
    }
    let query: String = fields
        .get(2)
        .copied()
        .unwrap_or_default()
        .iter()
        .filter(|b| b.is_ascii_graphic() && **b != b'#')
        .map(|&b| b as char)
        .collect();
    let body = if fields.len() > 3 {
        fields.last().copied().unwrap_or_default()
    } else {
        &[]
    };
    let headers = if fields.len() > 4 {
        &fields[3..fields.len() - 1]
    } else {
        &[]
    };
    let mut out = Vec::new();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if !query.is_empty() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n");
    if family & 0x80 != 0 {
        out.extend_from_slice(format!("Authorization: Bearer {token}\r\n").as_bytes());
    }
    for header in headers {
        // A header without a name becomes a causal context, the most parsed header.
        if header.contains(&b':') {
            out.extend_from_slice(header);
        } else {
            out.extend_from_slice(b"X-Dynamo-Context: ");
            out.extend_from_slice(header);
        }
        out.extend_from_slice(b"\r\n");
    }
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with(b"content-length"))
    {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends one request built by [`http_request_bytes`] to a live member over loopback. The
/// member must answer with a status (or close a request it cannot parse), never with a
/// 500, and must go on serving.
pub fn http_request(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness();
    let request = http_request_bytes(data, &h.token);
    let response = h.runtime.block_on(async {
        let mut conn = tokio::net::TcpStream::connect(h.addr)
            .await
            .unwrap_or_else(|e| panic!("the member stopped accepting connections: {e}"));
        // The member may close early on a bad request: a failed write is not a finding.
        let _ = conn.write_all(&request).await;
        let _ = conn.shutdown().await;
        let mut response = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            conn.read_to_end(&mut response),
        )
        .await;
        response
    });
    if let Some(status) = response
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| std::str::from_utf8(s).ok())
    {
        assert!(
            status != "500",
            "the member answered 500 to {:?}",
            String::from_utf8_lossy(&request)
        );
    }
}

/// Valid inputs for each target, written as the fuzzers' starting corpora by
/// `examples/fuzz_seeds.rs` and replayed by the regression tests (so they stay valid).
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    use crate::clock::{ActorId, ConflictMode, WriteRequest};
    use crate::config::ClusterSettings;
    use crate::membership::{ClusterView, DigestEntry, ViewStamp};
    use crate::ring::MemberId;
    use crate::rpc::frame::FrameBody;
    use crate::rpc::messages::Request;

    let mut seeds = Vec::new();
    let a = MemberId::new("m0");
    let digest = GossipDigest {
        from: a.clone(),
        entries: vec![DigestEntry {
            id: a.clone(),
            generation: 3,
            version: 9,
        }],
        view: Some(ViewStamp {
            version: 2,
            author: a.clone(),
        }),
    };
    let frames = [
        Frame {
            id: 1,
            body: FrameBody::Hello {
                member: a.clone(),
                nonce: [7; 32],
            },
        },
        Frame {
            id: 2,
            body: FrameBody::Request(Request::GossipDigest(digest.clone())),
        },
    ];
    for f in &frames {
        if let Ok(bytes) = frame::encode(f) {
            seeds.push(("rpc_frame", bytes[4..].to_vec()));
        }
    }

    let empty = VersionVector::new();
    let write = |object: &Object, actor: u64, value: Option<&'static [u8]>| {
        object
            .write(WriteRequest {
                actor: ActorId(actor),
                min_counter: 0,
                context: &empty,
                value: value.map(bytes::Bytes::from_static),
                timestamp_ms: 1_700_000_000_000,
                mode: ConflictMode::Siblings,
            })
            .0
    };
    let one = write(&Object::default(), 1, Some(b"v1"));
    let two = write(&one, 2, Some(b"v2"));
    let deleted = write(&two, 1, None);
    for object in [&one, &two, &deleted] {
        seeds.push(("record", encode_record(object)));
    }
    let mut vv = VersionVector::new();
    vv.add(crate::clock::Dot {
        actor: ActorId(1),
        counter: 4,
    });
    vv.add(crate::clock::Dot {
        actor: ActorId(u64::MAX),
        counter: 1,
    });
    let codec = ContextCodec::new(&[FUZZ_CLUSTER_TOKEN.to_vec()]);
    seeds.push(("context", codec.encode(b"fuzzed-key", &vv).into_bytes()));

    let settings = ClusterSettings {
        partitions: 16,
        n: 3,
        ..ClusterSettings::default()
    };
    if let Ok(view) = ClusterView::bootstrap(&a, 1, settings, 1) {
        let delta = GossipDelta {
            entries: Vec::new(),
            requests: vec![a.clone()],
            view: Some(view.clone()),
            want_view: false,
        };
        let push = GossipPush {
            entries: Vec::new(),
            view: Some(view),
        };
        for (kind, body) in [
            (0u8, postcard::to_stdvec(&digest)),
            (1, postcard::to_stdvec(&delta)),
            (2, postcard::to_stdvec(&push)),
        ] {
            if let Ok(body) = body {
                let mut input = vec![kind];
                input.extend_from_slice(&body);
                seeds.push(("gossip", input));
            }
        }
    }

    let context = codec.encode(b"greeting", &vv);
    for (selector, path, query, headers, body) in [
        (
            &[1u8, 0][..],
            "greeting",
            "w=1",
            vec![context.as_str()],
            "hello",
        ),
        (&[0, 0], "greeting", "r=1", vec![], ""),
        (&[2, 0], "greeting", "", vec![context.as_str()], ""),
        (&[0, 0x82], "members", "", vec![], ""),
        (
            &[3, 0x82],
            "join",
            "",
            vec!["Content-Type: application/json"],
            "{\"member\":\"x\"}",
        ),
    ] {
        let mut input = selector.to_vec();
        for field in [path, query].into_iter().chain(headers).chain([body]) {
            input.push(0);
            input.extend_from_slice(field.as_bytes());
        }
        seeds.push(("http_request", input));
    }
    seeds
}
