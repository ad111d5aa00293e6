//! One member: durability across kill -9, and the client API's answers to bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Options};
use dynamo::cli::client::HttpClient;
use http::Method;

fn single() -> Options {
    Options {
        n: 1,
        r: 1,
        w: 1,
        ..Default::default()
    }
}

/// In fsync mode, kill -9 in the middle of a stream of writes from several clients; after
/// a restart every acknowledged write is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_stream_loses_no_acknowledged_write() {
    kill9_mid_stream(single()).await;
}

/// Periodic durability promises the same for a killed process (only a lost machine may
/// lose the last interval): every batch must reach the OS before it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_stream_with_periodic_durability_loses_no_acknowledged_write() {
    kill9_mid_stream(Options {
        extra: vec!["--durability=periodic".into()],
        ..single()
    })
    .await;
}

async fn kill9_mid_stream(opts: Options) {
    let mut cluster = Cluster::start(1, opts).await;
    let endpoint = cluster.members[0].http();
    let acked = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (acked, stop, endpoint) = (acked.clone(), stop.clone(), endpoint.clone());
        tasks.push(tokio::spawn(async move {
            let c = HttpClient::new(&endpoint, None, Duration::from_secs(2));
            for i in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let key = format!("w{w}-{i}");
                match c
                    .put(&key, Bytes::from(format!("value-{w}-{i}")), None, "")
                    .await
                {
                    Ok(r) if r.status.as_u16() == 204 => acked.lock().push(key),
                    // The member died mid-request: the write may or may not have landed.
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill9(0);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() > 100,
        "the stream was running ({} acknowledged)",
        acked.len()
    );
    cluster.restart(0).await;
    let c = cluster.app_client(0);
    cluster
        .wait_for(
            "member ready after restart",
            Duration::from_secs(30),
            || async {
                c.admin_get("/readyz")
                    .await
                    .is_ok_and(|r| r.status.is_success())
            },
        )
        .await;
    let mut missing = Vec::new();
    for key in &acked {
        let r = c.get(key, "").await.unwrap();
        let expected = format!("value-{}", &key[1..]);
        if r.status.as_u16() != 200 || r.body != expected.as_bytes() {
            missing.push(format!("{key}: {} {:?}", r.status, r.text()));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
}

async fn status_and_code(
    c: &HttpClient,
    method: Method,
    path: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> (u16, String) {
    let r = c.request(method, path, headers, body).await.unwrap();
    let code = r
        .json()
        .and_then(|j| j["code"].as_str().map(str::to_string))
        .unwrap_or_default();
    (r.status.as_u16(), code)
}

/// Every kind of bad input gets a clear 4xx with a stable code and leaves stored data
/// exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_and_changes_nothing() {
    let opts = Options {
        extra: vec!["--max-key-bytes=64".into(), "--max-value-bytes=1024".into()],
        ..single()
    };
    let cluster = Cluster::start(1, opts).await;
    let c = cluster.app_client(0);
    let stored = c
        .put("keep", Bytes::from_static(b"original"), None, "")
        .await
        .unwrap();
    assert_eq!(stored.status.as_u16(), 204);
    let ctx = stored.header("x-dynamo-context").unwrap().to_string();

    // (method, path, headers, body, expected status, expected code)
    type Case<'a> = (Method, String, Vec<(&'a str, String)>, Bytes, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            "/v1/kv/".into(),
            vec![],
            Bytes::from_static(b"x"),
            400,
            "empty_key",
        ),
        (
            Method::GET,
            "/v1/kv/".into(),
            vec![],
            Bytes::new(),
            400,
            "empty_key",
        ),
        (
            Method::PUT,
            format!("/v1/kv/{}", "k".repeat(65)),
            vec![],
            Bytes::from_static(b"x"),
            400,
            "key_too_long",
        ),
        (
            Method::PUT,
            "/v1/kv/%ff%fe".into(),
            vec![],
            Bytes::from_static(b"x"),
            400,
            "key_not_utf8",
        ),
        (
            Method::PUT,
            "/v1/kv/bad%zzescape".into(),
            vec![],
            Bytes::from_static(b"x"),
            400,
            "bad_key_encoding",
        ),
        (
            Method::PUT,
            "/v1/kv/keep".into(),
            vec![],
            Bytes::from(vec![b'x'; 1025]),
            413,
            "value_too_large",
        ),
        (
            Method::PUT,
            "/v1/kv/keep".into(),
            vec![("x-dynamo-context", "not*base64".into())],
            Bytes::from_static(b"x"),
            400,
            "bad_context",
        ),
        (
            Method::PUT,
            "/v1/kv/keep".into(),
            vec![("x-dynamo-context", "AQ".into())],
            Bytes::from_static(b"x"),
            400,
            "bad_context",
        ),
        (
            Method::DELETE,
            "/v1/kv/keep".into(),
            vec![("x-dynamo-context", "Zm9v".into())],
            Bytes::new(),
            400,
            "bad_context",
        ),
        (
            Method::PUT,
            "/v1/kv/keep?w=9".into(),
            vec![],
            Bytes::from_static(b"x"),
            400,
            "bad_quorum",
        ),
        (
            Method::GET,
            "/v1/kv/keep?r=0".into(),
            vec![],
            Bytes::new(),
            400,
            "bad_quorum",
        ),
        (
            Method::PATCH,
            "/v1/kv/keep".into(),
            vec![],
            Bytes::new(),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            "/v1/nothing".into(),
            vec![],
            Bytes::new(),
            404,
            "no_such_endpoint",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let (got_status, got_code) =
            status_and_code(&c, method.clone(), &path, &headers, body).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{method} {path}"
        );
    }
    let r = c.get("keep", "").await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body, Bytes::from_static(b"original"));
    assert_eq!(
        r.header("x-dynamo-context"),
        Some(ctx.as_str()),
        "no bad request changed the version"
    );
    // Nothing else was stored either: the member holds exactly one key.
    cluster
        .wait_for(
            "the storage gauge to be refreshed",
            Duration::from_secs(10),
            || async { cluster.metric(0, "dynamo_storage_keys").await == 1.0 },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_put_delete_round_trip_with_contexts() {
    let cluster = Cluster::start(1, single()).await;
    let c = cluster.app_client(0);
    assert_eq!(c.get("k", "").await.unwrap().status.as_u16(), 404);
    let w = c
        .put("k", Bytes::from_static(b"v1"), None, "")
        .await
        .unwrap();
    assert_eq!(w.status.as_u16(), 204);
    assert_eq!(w.header("x-dynamo-acks"), Some("1"));
    let r = c.get("k", "").await.unwrap();
    assert_eq!(r.body, Bytes::from_static(b"v1"));
    let ctx = r.header("x-dynamo-context").unwrap().to_string();
    assert_eq!(
        c.put("k", Bytes::from_static(b"v2"), Some(&ctx), "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    let r = c.get("k", "").await.unwrap();
    assert_eq!(
        r.status.as_u16(),
        200,
        "a write with the read's context replaces it"
    );
    let ctx = r.header("x-dynamo-context").unwrap().to_string();
    let d = c.delete("k", Some(&ctx), "").await.unwrap();
    assert_eq!(d.status.as_u16(), 204);
    let gone = c.get("k", "").await.unwrap();
    assert_eq!(gone.status.as_u16(), 404);
    assert!(
        gone.header("x-dynamo-context").is_some(),
        "a deleted key still has a context to write after"
    );
    // Binary values and odd keys round-trip.
    let value = Bytes::from((0u8..=255).collect::<Vec<u8>>());
    assert_eq!(
        c.put("a b/ü?#", value.clone(), None, "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    assert_eq!(c.get("a b/ü?#", "").await.unwrap().body, value);
    // Health, readiness, metrics.
    assert_eq!(c.admin_get("/healthz").await.unwrap().status.as_u16(), 200);
    assert_eq!(c.admin_get("/readyz").await.unwrap().status.as_u16(), 200);
    let metrics = c.admin_get("/metrics").await.unwrap().text();
    assert!(metrics.contains("dynamo_requests_total{op=\"put\",status=\"ok\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_needs_the_cluster_token() {
    let cluster = Cluster::start(1, single()).await;
    let anonymous = cluster.app_client(0);
    let r = anonymous.admin_get("/v1/cluster/members").await.unwrap();
    assert_eq!(r.status.as_u16(), 401);
    assert_eq!(r.json().unwrap()["code"], "unauthorized");
    let wrong = HttpClient::new(
        &cluster.members[0].http(),
        Some("wrong-token-wrong-token".into()),
        Duration::from_secs(5),
    );
    let r = wrong.admin_get("/v1/cluster/ring").await.unwrap();
    assert_eq!(r.status.as_u16(), 403);
    assert!(cluster.metric(0, "dynamo_http_auth_failures_total").await >= 2.0);
    let ok = cluster
        .client(0)
        .admin_get("/v1/cluster/ring")
        .await
        .unwrap();
    assert_eq!(ok.status.as_u16(), 200);
    assert_eq!(ok.json().unwrap()["settings"]["partitions"], 64);
}

/// A cluster with fewer members than N applies W to the replicas there are, and says so:
/// `x-dynamo-w` is the W the write was held to, not the one configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_smaller_than_n_reports_the_w_it_applied() {
    let cluster = Cluster::start(1, Options::default()).await;
    let w = cluster
        .app_client(0)
        .put("k", Bytes::from_static(b"v"), None, "")
        .await
        .unwrap();
    assert_eq!(w.status.as_u16(), 204, "{}", w.text());
    assert_eq!(w.header("x-dynamo-acks"), Some("1"));
    assert_eq!(w.header("x-dynamo-w"), Some("1"));
}

/// `dynamo get`/`ring`/… write to a reader that may stop reading (`| head -1`): the command
/// ends quietly with status 0 instead of panicking on the closed pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_verb_whose_reader_went_away_ends_quietly() {
    let cluster = Cluster::start(1, single()).await;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // every write to the pipe now fails with EPIPE
    let output = tokio::task::spawn_blocking({
        let endpoint = cluster.members[0].http();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_dynamo"))
                .args(["ring", "--endpoint", &endpoint, "--token", common::TOKEN])
                .stdout(writer)
                .stderr(std::process::Stdio::piped())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "status {:?}, stderr: {stderr}",
        output.status
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// The threads named in `/proc/<pid>/task/*/comm` that are `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// `--engine-threads` sets how many threads flush and compact the member's storage engine
/// (`dynamo dev` gives each member its share of the CPUs this way), and the member writes
/// and reads as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_runs_the_engine_threads_it_is_given() {
    for threads in [1, 3] {
        let opts = Options {
            extra: vec![format!("--engine-threads={threads}")],
            ..single()
        };
        let cluster = Cluster::start(1, opts).await;
        let pid = cluster.members[0].child.as_ref().unwrap().id();
        assert_eq!(threads_named(pid, "fjall:worker"), threads);
        let client = cluster.app_client(0);
        let put = client
            .put("k", Bytes::from_static(b"v"), None, "")
            .await
            .unwrap();
        assert_eq!(put.status.as_u16(), 204, "{}", put.text());
        let got = client.get("k", "").await.unwrap();
        assert_eq!(got.status.as_u16(), 200, "{}", got.text());
        assert_eq!(&got.body[..], b"v");
    }
}
