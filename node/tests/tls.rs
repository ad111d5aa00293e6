//! TLS between members and for the HTTP API, with certificates from a test CA.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Options};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

/// Writes a CA and one member certificate valid for `ips`; returns (ca, cert, key) paths.
fn certificates(dir: &Path, name: &str, ips: &[String]) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(ips.to_vec())
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let paths = (
        dir.join(format!("{name}-ca.pem")),
        dir.join(format!("{name}-cert.pem")),
        dir.join(format!("{name}-key.pem")),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Members talk TLS to each other and serve HTTPS; a member with a certificate from
/// another CA is refused; plain HTTP is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_and_clients_use_tls() {
    let certs = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::spawn(0, Options::default());
    for _ in 0..4 {
        cluster.new_member();
    }
    let ips: Vec<String> = cluster.members.iter().map(|m| m.ip.clone()).collect();
    let (ca, cert, key) = certificates(certs.path(), "good", &ips);
    let (_, other_cert, other_key) = certificates(certs.path(), "other", &ips);
    let tls_args = |cert: &Path, key: &Path| {
        vec![
            format!("--tls-cert={}", cert.display()),
            format!("--tls-key={}", key.display()),
            format!("--tls-ca={}", ca.display()),
            "--tls-http".to_string(),
        ]
    };
    for i in 0..3 {
        cluster.members[i].extra = tls_args(&cert, &key);
    }
    cluster.members[3].extra = tls_args(&other_cert, &other_key);
    cluster.opts.https_ca = Some(ca.clone());
    for i in 0..3 {
        cluster.start_member(i);
    }
    cluster.wait_healthy_all().await;
    cluster.join(1).await;
    cluster.join(2).await;
    cluster.wait_settled(3, Duration::from_secs(60)).await;

    let c = cluster.app_client(1);
    assert_eq!(
        c.put("secret-key", Bytes::from_static(b"over tls"), None, "")
            .await
            .unwrap()
            .status
            .as_u16(),
        204
    );
    let r = cluster
        .app_client(2)
        .get("secret-key", "?r=3")
        .await
        .unwrap();
    assert_eq!(r.body, Bytes::from_static(b"over tls"));

    // Plain HTTP gets nothing useful from an HTTPS member.
    let plain = dynamo::cli::client::HttpClient::new(
        &cluster.members[0].http(),
        None,
        Duration::from_secs(3),
    );
    assert!(
        !plain
            .get("secret-key", "")
            .await
            .is_ok_and(|r| r.status.is_success())
    );

    // A member whose certificate another CA signed cannot take part.
    cluster.start_member(3);
    cluster
        .wait_for(
            "the stranger's TLS handshakes refused",
            Duration::from_secs(20),
            || async { cluster.metric(0, "dynamo_rpc_auth_failures_total").await > 0.0 },
        )
        .await;
    let join = cluster
        .client(0)
        .admin_post("/v1/cluster/join", serde_json::json!({"member": "m3"}))
        .await
        .unwrap();
    assert_eq!(join.status.as_u16(), 400, "{}", join.text());
    let log = std::fs::read_to_string(cluster.members[0].log()).unwrap();
    assert!(
        log.contains("TLS handshake with a peer failed"),
        "the refusal is logged"
    );
}
