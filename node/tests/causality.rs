//! What a client observes of causality on a real three-member cluster (issue 32): write
//! contexts cover only what the writer saw, a delete without a context deletes, an
//! overwrite replaces, and contexts this cluster did not issue are refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::collections::BTreeSet;

use base64::Engine as _;
use bytes::Bytes;
use common::{Cluster, Options};
use dynamo::cli::client::{HttpClient, Reply};

/// The values a read shows (one for a 200, every sibling for a 300, none for a 404).
fn values(reply: &Reply) -> BTreeSet<String> {
    match reply.status.as_u16() {
        200 => BTreeSet::from([reply.text()]),
        300 => reply.json().unwrap()["siblings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(s["value"].as_str().unwrap())
                    .unwrap();
                String::from_utf8(raw).unwrap()
            })
            .collect(),
        404 => BTreeSet::new(),
        other => panic!("unexpected read status {other}: {}", reply.text()),
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn context(reply: &Reply) -> String {
    reply
        .header("x-dynamo-context")
        .unwrap_or_else(|| panic!("no context in a {} answer", reply.status))
        .to_string()
}

async fn put(c: &HttpClient, key: &str, value: &str, ctx: Option<&str>, query: &str) -> Reply {
    let r = c
        .put(key, Bytes::from(value.to_string()), ctx, query)
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 204, "put {value}: {}", r.text());
    r
}

async fn read(c: &HttpClient, key: &str) -> Reply {
    // R = 3: every replica answers, so what W = 2 acknowledged is always seen.
    c.get(key, "?r=3").await.unwrap()
}

/// Steps 1-4 of the issue: chaining the context a write returned must not replace a
/// sibling the writer never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_context_covers_only_what_the_writer_saw() {
    let cluster = Cluster::start(3, Options::default()).await;
    let a = cluster.app_client(0);
    let b = cluster.app_client(1);
    put(&a, "k", "a", None, "").await;
    let c1 = context(&read(&a, "k").await);
    put(&b, "k", "b", None, "").await;
    assert_eq!(values(&read(&a, "k").await), set(&["a", "b"]));
    let c2 = context(&put(&a, "k", "c", Some(&c1), "").await);
    assert_eq!(values(&read(&a, "k").await), set(&["b", "c"]));
    put(&a, "k", "d", Some(&c2), "").await;
    assert_eq!(
        values(&read(&a, "k").await),
        set(&["b", "d"]),
        "b was written by another client and never seen by this one"
    );
}

/// Two clients each chain 100 writes with the contexts their writes returned, through
/// different members: exactly one sibling per client at the end, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chaining_writers_keep_one_sibling_each() {
    let cluster = Cluster::start(3, Options::default()).await;
    let clients = [cluster.app_client(0), cluster.app_client(2)];
    let mut contexts: [Option<String>; 2] = [None, None];
    for i in 0..100 {
        for (c, client) in clients.iter().enumerate() {
            let r = put(
                client,
                "chained",
                &format!("c{c}-{i}"),
                contexts[c].as_deref(),
                "",
            )
            .await;
            contexts[c] = Some(context(&r));
        }
    }
    assert_eq!(
        values(&read(&clients[0], "chained").await),
        set(&["c0-99", "c1-99"])
    );
}

/// Step 5: a DELETE without a context deletes what the key holds, and says how much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_without_context_deletes_and_an_overwrite_replaces() {
    let cluster = Cluster::start(3, Options::default()).await;
    let c = cluster.app_client(0);
    put(&c, "k", "a", None, "").await;
    put(&cluster.app_client(1), "k", "b", None, "").await;
    assert_eq!(values(&read(&c, "k").await), set(&["a", "b"]));

    // An overwrite replaces both siblings with one value.
    let r = put(&c, "k", "only", None, "?overwrite=true").await;
    assert_eq!(r.header("x-dynamo-replaced"), Some("2"));
    assert_eq!(values(&read(&c, "k").await), set(&["only"]));
    // Its context chains like any write's.
    let r = put(&c, "k", "next", Some(&context(&r)), "").await;
    assert!(r.header("x-dynamo-replaced").is_none());
    assert_eq!(values(&read(&c, "k").await), set(&["next"]));

    // A blind delete now deletes.
    let r = c.delete("k", None, "").await.unwrap();
    assert_eq!(r.status.as_u16(), 204, "{}", r.text());
    assert_eq!(r.header("x-dynamo-replaced"), Some("1"));
    let after = read(&c, "k").await;
    assert_eq!(after.status.as_u16(), 404, "{}", after.text());
    // Deleting again finds nothing and writes nothing.
    let r = c.delete("k", None, "").await.unwrap();
    assert_eq!(r.status.as_u16(), 404, "{}", r.text());
    assert_eq!(r.header("x-dynamo-replaced"), Some("0"));
    // An overwrite with a context is a contradiction, refused.
    let ctx = context(&put(&c, "k2", "x", None, "").await);
    let r = c
        .put(
            "k2",
            Bytes::from_static(b"y"),
            Some(&ctx),
            "?overwrite=true",
        )
        .await
        .unwrap();
    assert_eq!(r.status.as_u16(), 400);
    assert_eq!(r.json().unwrap()["code"], "bad_query");
    assert_eq!(values(&read(&c, "k2").await), set(&["x"]));
}

/// Step 6: contexts from another cluster, for another key, or altered are refused, and
/// the refused write changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_this_cluster_did_not_issue_are_refused() {
    let cluster = Cluster::start(3, Options::default()).await;
    let other_opts = Options {
        n: 1,
        r: 1,
        w: 1,
        ..Options::default()
    };
    let mut other = Cluster::spawn(1, other_opts);
    other.stop(0);
    other.members[0].token = "another-cluster-token-0123456789".into();
    other.restart(0).await;
    let c = cluster.app_client(0);
    let o = other.app_client(0);

    put(&c, "k", "mine", None, "").await;
    let genuine = context(&read(&c, "k").await);
    put(&o, "k", "theirs", None, "").await;
    let foreign = context(&o.get("k", "").await.unwrap());

    let refused = |r: Reply| {
        assert_eq!(r.status.as_u16(), 400, "{}", r.text());
        assert_eq!(r.json().unwrap()["code"], "bad_context", "{}", r.text());
    };
    refused(
        c.put("k", Bytes::from_static(b"x"), Some(&foreign), "")
            .await
            .unwrap(),
    );
    refused(c.delete("k", Some(&foreign), "").await.unwrap());

    // The same cluster's context for another key.
    put(&c, "other-key", "v", None, "").await;
    let other_key = context(&read(&c, "other-key").await);
    refused(
        c.put("k", Bytes::from_static(b"x"), Some(&other_key), "")
            .await
            .unwrap(),
    );

    // A genuine context with one byte changed (a counter raised, say).
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&genuine)
        .unwrap();
    let last_body_byte = raw.len() - 17;
    raw[last_body_byte] = raw[last_body_byte].wrapping_add(1);
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    refused(
        c.put("k", Bytes::from_static(b"x"), Some(&forged), "")
            .await
            .unwrap(),
    );
    // The unsigned format earlier versions issued.
    let unsigned = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8, 1, 7, 3]);
    refused(
        c.put("k", Bytes::from_static(b"x"), Some(&unsigned), "")
            .await
            .unwrap(),
    );

    assert_eq!(values(&read(&c, "k").await), set(&["mine"]));
    // The genuine context still works, also after a restart of every member.
    let mut cluster = cluster;
    for i in 0..3 {
        cluster.stop(i);
        cluster.restart(i).await;
    }
    cluster.wait_healthy_all().await;
    let c = cluster.app_client(1);
    put(&c, "k", "resolved", Some(&genuine), "").await;
    assert_eq!(values(&read(&c, "k").await), set(&["resolved"]));
}
