//! The cluster token rotates one member at a time, with no moment where members refuse
//! each other: (1) every member accepts the new token, (2) every member proves with the
//! new token and still accepts the old, (3) the old token is dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Options, TOKEN};
use dynamo::cli::client::HttpClient;

const NEW_TOKEN: &str = "rotated-cluster-token-9876543210";

/// Writes through `via` with W = 3, which needs every member to take the write from it;
/// returns the key acknowledged. Each attempt writes a fresh key: a blind retry of the same
/// key after a partly applied attempt would rightly leave two siblings.
async fn write_everywhere(cluster: &Cluster, via: usize, key: &str) -> String {
    let c = cluster.app_client(via);
    let acked = std::sync::Mutex::new(None);
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    cluster
        .wait_for(
            &format!("{key} written to all 3 replicas through m{via}"),
            Duration::from_secs(30),
            || async {
                let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let k = format!("{key}-try{n}");
                let ok = c
                    .put(&k, Bytes::from(k.clone()), None, "?w=3")
                    .await
                    .is_ok_and(|r| r.status.as_u16() == 204);
                if ok {
                    *acked.lock().unwrap() = Some(k);
                }
                ok
            },
        )
        .await;
    acked.into_inner().unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_token_rotates_one_member_at_a_time() {
    let mut cluster = Cluster::start(3, Options::default()).await;
    cluster.wait_settled(3, Duration::from_secs(60)).await;
    let before = write_everywhere(&cluster, 0, "before").await;

    let phases: [(&str, Vec<String>); 3] = [
        (TOKEN, vec![format!("--accept-cluster-tokens={NEW_TOKEN}")]),
        (NEW_TOKEN, vec![format!("--accept-cluster-tokens={TOKEN}")]),
        (NEW_TOKEN, vec![]),
    ];
    let mut written = vec![before];
    for (phase, (token, extra)) in phases.iter().enumerate() {
        for i in 0..3 {
            cluster.stop(i);
            cluster.members[i].token = token.to_string();
            cluster.members[i].extra = extra.clone();
            cluster.restart(i).await;
            // Mixed tokens: the restarted member and the others still reach each other.
            for via in [i, (i + 1) % 3] {
                let key = format!("phase{phase}-m{i}-via{via}");
                written.push(write_everywhere(&cluster, via, &key).await);
            }
        }
    }

    // The old token opens nothing any more; the new one does.
    let old = cluster
        .client(0)
        .admin_get("/v1/cluster/ring")
        .await
        .unwrap();
    assert_eq!(old.status.as_u16(), 403);
    let new = HttpClient::new(
        &cluster.members[0].http(),
        Some(NEW_TOKEN.to_string()),
        Duration::from_secs(10),
    );
    assert_eq!(
        new.admin_get("/v1/cluster/ring")
            .await
            .unwrap()
            .status
            .as_u16(),
        200
    );
    for key in &written {
        let r = cluster.app_client(2).get(key, "?r=3").await.unwrap();
        assert_eq!(r.status.as_u16(), 200, "{key}");
        assert_eq!(r.body, Bytes::from(key.clone()));
    }
}
