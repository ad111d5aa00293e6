//! How many bytes Merkle anti-entropy exchanges to repair differences, as a function of
//! the number of differing keys (not of the data size).
//!
//! Two real members (in this process, over TCP on loopback, in-memory storage) replicate
//! every key (N = 2). Both get the same 1,000,000 keys; then some keys are changed on one
//! member only, and one exchange repairs them. Prints the bytes of every request and
//! response of the exchange.
//!
//!     cargo run --release -p dynamo-node --example antientropy_cost [-- KEYS]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use dynamo::clock::{ActorId, ConflictMode, Object, VersionVector, WriteRequest};
use dynamo::config::{ClusterSettings, NodeConfig};
use dynamo::env::Env;
use dynamo::node::Node;
use dynamo::ring::{key_hash, partition_of_hash};
use dynamo::storage::MemoryEngine;

const Q: u32 = 256;

fn object(actor: u64, value: &[u8]) -> Object {
    Object::default()
        .write(WriteRequest {
            actor: ActorId(actor),
            min_counter: 0,
            context: &VersionVector::new(),
            value: Some(Bytes::copy_from_slice(value)),
            timestamp_ms: 1,
            mode: ConflictMode::Siblings,
        })
        .0
}

fn config(i: u8, base: u16) -> NodeConfig {
    let mut c = NodeConfig::for_local(
        &format!("ae-{i}"),
        base + u16::from(i),
        base + 100 + u16::from(i),
        "/unused".into(),
    );
    c.settings = ClusterSettings {
        partitions: Q,
        n: 2,
        r: 1,
        w: 1,
        ..Default::default()
    };
    c.bootstrap = i == 0;
    c.seeds = vec![format!("127.0.0.1:{}", base + 100)];
    c.gossip_interval = Duration::from_millis(200);
    // Exchanges are started by this program, not by the timer.
    c.anti_entropy_interval = Duration::from_secs(24 * 3600);
    c.transfer_rate_bytes = 0;
    c
}

async fn load(node: &Node, keys: u64, actor: u64) -> Result<()> {
    let mut pending = Vec::with_capacity(1024);
    for i in 0..keys {
        let key = format!("key{i:09}");
        let p = partition_of_hash(key_hash(key.as_bytes()), Q);
        let store = node.store.clone();
        let obj = object(actor, format!("value-{i}").as_bytes());
        pending.push(tokio::spawn(async move {
            store
                .merge(p, Bytes::from(key), obj, ConflictMode::Siblings)
                .await
        }));
        if pending.len() == 1024 {
            for t in pending.drain(..) {
                t.await??;
            }
        }
    }
    for t in pending {
        t.await??;
    }
    Ok(())
}

/// Changes `count` keys on `node` only; returns them.
async fn diverge(node: &Node, count: u64, stride: u64, round: u64) -> Result<()> {
    for j in 0..count {
        let i = j * stride;
        let key = format!("key{i:09}");
        let p = partition_of_hash(key_hash(key.as_bytes()), Q);
        let obj = object(1000 + round, format!("changed-{i}-{round}").as_bytes());
        node.store
            .merge(p, Bytes::from(key), obj, ConflictMode::Siblings)
            .await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let keys: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let base = 19_000;
    let a = Node::start(
        config(0, base),
        Env::production(1),
        Arc::new(MemoryEngine::new()),
    )
    .await?;
    let b = Node::start(
        config(1, base),
        Env::production(2),
        Arc::new(MemoryEngine::new()),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a
        .membership
        .request_join(b.config.id.clone(), 1)
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the second member could not join");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let settled = [&a, &b].iter().all(|n| {
            n.membership
                .view()
                .is_some_and(|v| !v.in_transition() && v.current().members().len() == 2)
        });
        if settled {
            break;
        }
        if Instant::now() > deadline {
            bail!("the ring did not settle");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    load(&a, keys, 1).await?;
    load(&b, keys, 1).await?;
    println!(
        "loaded {keys} keys on both members in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let view = a.membership.view().context("no view")?;
    let partitions: Vec<u32> = (0..Q).collect();
    let in_sync = a
        .antientropy
        .exchange(&b.config.id, &partitions, &view)
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "in sync:            {:>9} bytes, {} partitions differing",
        in_sync.bytes, in_sync.partitions_differing
    );
    println!("differing keys   bytes exchanged   bytes/key   keys repaired   partitions   time");
    for (round, count) in [1u64, 10, 100, 1_000, 10_000].into_iter().enumerate() {
        diverge(&b, count, keys / count.max(1), round as u64).await?;
        let t = Instant::now();
        let r = a
            .antientropy
            .exchange(&b.config.id, &partitions, &view)
            .await
            .map_err(anyhow::Error::msg)?;
        println!(
            "{count:>14} {:>17} {:>11.0} {:>15} {:>12} {:>6.2} s",
            r.bytes,
            r.bytes as f64 / count as f64,
            r.keys_pulled + r.keys_pushed,
            r.partitions_differing,
            t.elapsed().as_secs_f64()
        );
        let check = a
            .antientropy
            .exchange(&b.config.id, &partitions, &view)
            .await
            .map_err(anyhow::Error::msg)?;
        if check.partitions_differing != 0 {
            bail!("replicas still differ after the exchange");
        }
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}
