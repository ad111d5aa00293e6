//! Small things a user meets on one real member: answers to wrong methods and oversized
//! headers, and clear refusals when the data directory or a port is taken.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Options, TOKEN};
use http::{Method, StatusCode};

fn single() -> Options {
    Options {
        n: 1,
        r: 1,
        w: 1,
        ..Default::default()
    }
}

/// `dynamo node` with the given data directory and addresses; its exit status and stderr.
fn run_node(data_dir: &std::path::Path, listen: &str, peer: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dynamo"))
        .arg("node")
        .arg("--id=intruder")
        .arg(format!("--listen={listen}"))
        .arg(format!("--peer-listen={peer}"))
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--cluster-token={TOKEN}"))
        .arg("--bootstrap")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Metric names (`dynamo_…`) in `text`, histogram series folded into their family.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("dynamo_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| base.ends_with("_seconds"))
            .unwrap_or(name);
        names.insert(family.to_string());
        rest = &tail[end..];
    }
    names
}

fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_big_headers_and_taken_resources_get_clear_answers() {
    let cluster = Cluster::start(1, single()).await;
    let client = cluster.app_client(0);

    // Every metric the operations guide and the cluster dashboard name is exported by a
    // member that has served nothing yet, with a sample (a value, 0 for counters).
    let exported = cluster
        .client(0)
        .admin_get("/metrics")
        .await
        .unwrap()
        .text();
    let operations = repo_file("docs/operations.md");
    let metrics_section = operations
        .split("\n## Metrics")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/operations.md has a Metrics section");
    let mut named = metric_names(metrics_section);
    let from_docs = named.len();
    named.extend(metric_names(&repo_file(
        "charts/dynamo-operator/dashboards/dynamo-cluster.json",
    )));
    assert!(from_docs > 25, "{named:?}");
    for name in &named {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "{name} is documented or charted but not exported:\n{exported}"
        );
        assert!(
            exported
                .lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name.as_str())),
            "{name} has no sample yet"
        );
    }
    // The data directory's real size, not the journal's preallocated 64 MiB.
    cluster
        .wait_for(
            "dynamo_storage_bytes measured",
            Duration::from_secs(10),
            || async { cluster.metric(0, "dynamo_storage_bytes").await > 0.0 },
        )
        .await;
    let on_disk = cluster.metric(0, "dynamo_storage_bytes").await;
    assert!(
        on_disk > 0.0 && on_disk < 32.0 * 1024.0 * 1024.0,
        "dynamo_storage_bytes {on_disk}"
    );

    // 405 names the methods /v1/kv serves, in the Allow header and the message.
    let patch = client
        .request(Method::PATCH, "/v1/kv/k", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(patch.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(patch.header("allow"), Some("GET, HEAD, PUT, POST, DELETE"));
    let body = patch.json().expect("a JSON error body");
    assert_eq!(body["code"], "method_not_allowed");
    let message = body["message"].as_str().unwrap();
    for method in ["GET", "HEAD", "PUT", "POST", "DELETE"] {
        assert!(message.contains(method), "{message}");
    }
    // The methods it lists are served.
    let head = client
        .request(Method::HEAD, "/v1/kv/k", &[], Bytes::new())
        .await
        .unwrap();
    assert_ne!(head.status, StatusCode::METHOD_NOT_ALLOWED);

    // 431 carries the JSON error, for too many fields and for too many bytes.
    let many: Vec<(String, String)> = (0..150)
        .map(|i| (format!("x-field-{i}"), "v".to_string()))
        .collect();
    let big = vec![("x-big".to_string(), "v".repeat(40 * 1024))];
    for headers in [many, big] {
        let headers: Vec<(&str, String)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let reply = client
            .request(Method::GET, "/v1/kv/k", &headers, Bytes::new())
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let body = reply.json().expect("a JSON error body");
        assert_eq!(body["code"], "headers_too_large", "{body}");
    }
    // A request within the limits is served as before.
    let fine = client
        .request(
            Method::GET,
            "/v1/kv/k",
            &[("x-one", "v".to_string())],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(fine.status, StatusCode::NOT_FOUND);

    // A second member on the first one's data directory (on free ports) is refused with a
    // message that says so.
    let ip = &cluster.members[0].ip;
    let (code, stderr) = run_node(
        &cluster.members[0].dir,
        &format!("{ip}:18080"),
        &format!("{ip}:17070"),
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "data directory {} is in use by another process",
            cluster.members[0].dir.display()
        )),
        "{stderr}"
    );

    // A busy port is found before the data directory is created.
    let fresh = cluster.dir.path().join("never-created");
    let (code, stderr) = run_node(&fresh, &cluster.members[0].http(), &format!("{ip}:17071"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen for HTTP on"), "{stderr}");
    assert!(!fresh.exists(), "the data directory was created");
}
