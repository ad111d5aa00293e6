use super::*;
use crate::clock::Dot;

fn write(value: Option<&str>, ctx: VersionVector) -> CoordinatedWrite {
    CoordinatedWrite {
        actor: ActorId(7),
        epoch: 0,
        context: ctx,
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        timestamp_ms: 1,
        mode: ConflictMode::Siblings,
        max_siblings: 3,
    }
}

/// A first version of a key written by `actor` elsewhere (another replica's), with its dot.
fn fresh_version(actor: u64, value: &'static [u8], timestamp_ms: u64) -> (Object, Dot) {
    Object::default().write(WriteRequest {
        actor: ActorId(actor),
        min_counter: 0,
        context: &VersionVector::new(),
        value: Some(Bytes::from_static(value)),
        timestamp_ms,
        mode: ConflictMode::Siblings,
    })
}

async fn open_memory(engine: &MemoryEngine) -> Store {
    let store = Store::open(Arc::new(engine.clone()), StoreConfig::default()).unwrap();
    store.init_partitions(64).await.unwrap();
    store
}

#[tokio::test]
async fn coordinate_get_and_merge() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    let k = Bytes::from_static(b"k");
    let o1 = store
        .coordinate(3, k.clone(), write(Some("a"), VersionVector::new()))
        .await
        .unwrap()
        .0;
    assert_eq!(store.get(3, b"k").unwrap(), Some(o1.clone()));
    // Another replica's concurrent write merges in as a sibling.
    let (other, _) = fresh_version(9, b"b", 2);
    let m = store
        .merge(3, k.clone(), other.clone(), ConflictMode::Siblings)
        .await
        .unwrap();
    assert!(m.changed);
    assert_eq!(m.object.siblings.len(), 2);
    // Merging the same thing again changes nothing.
    let again = store
        .merge(3, k, other, ConflictMode::Siblings)
        .await
        .unwrap();
    assert!(!again.changed);
}

#[tokio::test]
async fn sibling_limit_refuses_and_writes_nothing() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    let k = Bytes::from_static(b"k");
    for _ in 0..3 {
        store
            .coordinate(1, k.clone(), write(Some("x"), VersionVector::new()))
            .await
            .unwrap();
    }
    let before = store.get(1, b"k").unwrap();
    let root_before = store.merkle_root(1);
    let err = store
        .coordinate(1, k.clone(), write(Some("x"), VersionVector::new()))
        .await
        .unwrap_err();
    assert_eq!(err, StorageError::TooManySiblings { count: 4, max: 3 });
    assert_eq!(store.get(1, b"k").unwrap(), before);
    assert_eq!(store.merkle_root(1), root_before);
    // Writing with the merged context resolves them.
    let ctx = before.unwrap().context;
    let resolved = store
        .coordinate(1, k, write(Some("y"), ctx))
        .await
        .unwrap()
        .0;
    assert_eq!(resolved.siblings.len(), 1);
}

#[tokio::test]
async fn dots_keep_growing_after_reap() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    let k = Bytes::from_static(b"k");
    let o = store
        .coordinate(2, k.clone(), write(Some("v"), VersionVector::new()))
        .await
        .unwrap()
        .0;
    let t = store
        .coordinate(2, k.clone(), write(None, o.context.clone()))
        .await
        .unwrap()
        .0;
    assert!(t.is_deleted());
    assert!(
        !store.reap(2, k.clone(), t.digest() ^ 1).await.unwrap(),
        "reap must check the version"
    );
    assert!(store.reap(2, k.clone(), t.digest()).await.unwrap());
    assert_eq!(store.get(2, b"k").unwrap(), None);
    assert_eq!(store.merkle_root(2), 0);
    let again = store
        .coordinate(2, k, write(Some("w"), VersionVector::new()))
        .await
        .unwrap()
        .0;
    let max_old = t.siblings.iter().map(|s| s.dot.counter).max().unwrap();
    assert!(
        again.siblings[0].dot
            > Dot {
                actor: ActorId(7),
                counter: max_old
            }
    );
    // The sequence survives a restart.
    drop(store);
    let reopened = open_memory(&engine).await;
    let next = reopened
        .coordinate(
            5,
            Bytes::from_static(b"z"),
            write(Some("z"), VersionVector::new()),
        )
        .await
        .unwrap()
        .0;
    assert!(next.siblings[0].dot.counter > again.siblings[0].dot.counter);
}

#[tokio::test]
async fn hints_are_stored_merged_counted_and_removed() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    let target = MemberId::new("m2");
    let (obj, _) = fresh_version(1, b"v", 1);
    for key in [&b"a"[..], b"b", b"a"] {
        let hint = Hint {
            target: target.clone(),
            partition: 4,
            key: Bytes::copy_from_slice(key),
            object: obj.clone(),
        };
        store.put_hint(hint, ConflictMode::Siblings).await.unwrap();
    }
    assert_eq!(store.hint_counts().get(&target), Some(&2));
    let hints = store.hints_for(&target, 10).unwrap();
    assert_eq!(hints.len(), 2);
    assert_eq!(hints[0].key, Bytes::from_static(b"a"));
    assert_eq!(hints[0].partition, 4);
    assert!(
        store.hints_for(&MemberId::new("m"), 10).unwrap().is_empty(),
        "prefix of another id"
    );
    for h in hints {
        assert!(
            store
                .remove_hint(&target, h.partition, h.key, h.object.digest())
                .await
                .unwrap()
        );
    }
    assert!(store.hint_counts().is_empty());
    // Counts are rebuilt on open.
    store
        .put_hint(
            Hint {
                target: target.clone(),
                partition: 1,
                key: Bytes::from_static(b"c"),
                object: obj,
            },
            ConflictMode::Siblings,
        )
        .await
        .unwrap();
    drop(store);
    let reopened = open_memory(&engine).await;
    assert_eq!(reopened.hint_counts().get(&target), Some(&1));
}

#[tokio::test]
async fn scan_partition_pages_within_one_partition() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    for p in [4u32, 5, 6] {
        for i in 0..10 {
            store
                .coordinate(
                    p,
                    Bytes::from(format!("k{i:02}")),
                    write(Some("v"), VersionVector::new()),
                )
                .await
                .unwrap();
        }
    }
    let first = store.scan_partition(5, None, 4).unwrap();
    assert_eq!(first.len(), 4);
    let rest = store.scan_partition(5, Some(&first[3].0), 100).unwrap();
    assert_eq!(rest.len(), 6);
    assert_eq!(rest[0].0, Bytes::from_static(b"k04"));
    store
        .remove_keys(
            5,
            first
                .iter()
                .chain(rest.iter())
                .map(|(k, _)| k.clone())
                .collect(),
        )
        .await
        .unwrap();
    assert!(store.scan_partition(5, None, 100).unwrap().is_empty());
    assert_eq!(store.merkle_root(5), 0);
    assert_eq!(store.scan_partition(6, None, 100).unwrap().len(), 10);
}

/// After a crash (no clean shutdown) the trees are rebuilt by a scan and equal the
/// incrementally maintained ones; after a clean shutdown they are loaded, not rebuilt.
#[tokio::test]
async fn merkle_trees_survive_restart() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    for i in 0..300 {
        let key = Bytes::from(format!("key{i}"));
        let p = crate::ring::partition_of_hash(key_hash(&key), 64);
        store
            .coordinate(p, key, write(Some("v"), VersionVector::new()))
            .await
            .unwrap();
    }
    let roots: Vec<u64> = (0..64).map(|p| store.merkle_root(p)).collect();
    drop(store);
    let crashed = Store::open(Arc::new(engine.clone()), StoreConfig::default()).unwrap();
    assert!(
        crashed.init_partitions(64).await.unwrap(),
        "crash must rebuild"
    );
    assert_eq!(
        (0..64).map(|p| crashed.merkle_root(p)).collect::<Vec<_>>(),
        roots
    );
    crashed.close().await.unwrap();
    drop(crashed);
    let clean = Store::open(Arc::new(engine.clone()), StoreConfig::default()).unwrap();
    assert!(
        !clean.init_partitions(64).await.unwrap(),
        "clean shutdown must not rebuild"
    );
    assert_eq!(
        (0..64).map(|p| clean.merkle_root(p)).collect::<Vec<_>>(),
        roots
    );
    // The clean marker is consumed: a crash now rebuilds again.
    drop(clean);
    let again = Store::open(Arc::new(engine), StoreConfig::default()).unwrap();
    assert!(again.init_partitions(64).await.unwrap());
}

#[tokio::test]
async fn fjall_engine_round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = Arc::new(FjallEngine::open(dir.path(), 8 << 20).unwrap());
        let store = Store::open(engine, StoreConfig::default()).unwrap();
        store.init_partitions(64).await.unwrap();
        store
            .coordinate(
                9,
                Bytes::from_static(b"x"),
                write(Some("1"), VersionVector::new()),
            )
            .await
            .unwrap();
        store.close().await.unwrap();
    }
    let engine = Arc::new(FjallEngine::open(dir.path(), 8 << 20).unwrap());
    let store = Store::open(engine, StoreConfig::default()).unwrap();
    assert!(!store.init_partitions(64).await.unwrap());
    let obj = store.get(9, b"x").unwrap().unwrap();
    assert_eq!(
        obj.values().next().unwrap().value.as_deref(),
        Some(&b"1"[..])
    );
}

/// The writer seals the engine's memtable once it passes the engine's size, well before
/// fjall's own cap, and the flushed records stay readable through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_seals_the_memtable_when_it_is_due() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Arc::new(FjallEngine::open(dir.path(), 8 << 20).unwrap());
    engine.seal_data_memtable_at(256 << 10);
    let config = StoreConfig {
        durability: Durability::Periodic,
        ..StoreConfig::default()
    };
    let store = Store::open(engine.clone(), config).unwrap();
    store.init_partitions(64).await.unwrap();
    let value = "v".repeat(1024);
    for i in 0..400u32 {
        store
            .coordinate(
                i % 64,
                Bytes::from(format!("key-{i}")),
                write(Some(&value), VersionVector::new()),
            )
            .await
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while engine.data_table_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the writer never sealed the memtable");
    assert!(!engine.memtable_seal_due());
    for i in [0u32, 199, 399] {
        let obj = store
            .get(i % 64, format!("key-{i}").as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(
            obj.values().next().unwrap().value.as_deref(),
            Some(value.as_bytes())
        );
    }
    store.close().await.unwrap();
}

#[test]
fn record_decoder_rejects_garbage() {
    assert!(decode_record(&[]).is_err());
    assert!(decode_record(&[9, 0]).is_err());
    assert!(decode_record(&[RECORD_FORMAT_VERSION, 0xff, 0xff]).is_err());
    let mut good = encode_record(&Object::default());
    good.push(0);
    assert!(decode_record(&good).is_err(), "trailing bytes");
}

/// An engine that counts its fsyncs (synced batches and `sync` calls), and whose fsyncs
/// fail while `failing` is set — after applying the batch, as a journal write that reached
/// the OS but not the disk would. With `blocking` set it runs on the blocking pool like
/// fjall, and a `sync` call waits while a test holds `disk` (a slow disk).
#[derive(Default)]
struct WatchedFsync {
    inner: MemoryEngine,
    failing: std::sync::atomic::AtomicBool,
    syncs: std::sync::atomic::AtomicUsize,
    /// `sync` calls begun (before waiting for `disk`).
    syncs_begun: std::sync::atomic::AtomicUsize,
    blocking: bool,
    disk: parking_lot::Mutex<()>,
}

impl Engine for WatchedFsync {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(space, key)
    }
    fn write(&self, ops: &[BatchOp], sync: bool) -> Result<(), StorageError> {
        self.inner.write(ops, sync)?;
        if sync {
            self.syncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if sync && self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::Engine(
                "fsync: Input/output error (os error 5)".into(),
            ));
        }
        Ok(())
    }
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<engine::KeyValue>, StorageError> {
        self.inner.scan(space, start, end, limit)
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.syncs_begun
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(self.disk.lock());
        self.syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StorageError::Engine(
                "fsync: Input/output error (os error 5)".into(),
            ));
        }
        self.inner.sync()
    }
    fn blocking(&self) -> bool {
        self.blocking
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
}

/// In fsync mode a write coordinated here is answered once its batch reaches the engine,
/// before the batch's fsync ends (so the coordinator can replicate meanwhile), and its
/// `Durable` resolves only after the fsync; writes merged from other replicas are
/// answered only once durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::await_holding_lock,
    reason = "the guard is the slow disk: the writer's sync waits on it on a blocking thread"
)]
async fn coordinated_write_is_answered_before_its_fsync_and_durable_after() {
    use std::sync::atomic::Ordering;
    let engine = Arc::new(WatchedFsync {
        blocking: true,
        ..WatchedFsync::default()
    });
    let store = Store::open(engine.clone(), StoreConfig::default()).unwrap();
    store.init_partitions(64).await.unwrap();
    let slow_disk = engine.disk.lock();

    // Bounded, so a store that waits for the held fsync fails here instead of hanging.
    let answer = store.apply_coordinated(
        1,
        Bytes::from_static(b"k"),
        write(Some("v"), VersionVector::new()),
    );
    let (object, _dot, mut durable) = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("not answered while its fsync was held")
        .unwrap();
    assert_eq!(object.siblings.len(), 1);
    assert!(
        store.get(1, b"k").unwrap().is_some(),
        "answered before the batch reached the engine"
    );
    assert!(
        matches!(
            durable.0.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ),
        "durable while the fsync is still running"
    );
    let (replica, _) = fresh_version(9, b"r", 2);
    let merge = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .merge(2, Bytes::from_static(b"m"), replica, ConflictMode::Siblings)
                .await
        }
    });

    drop(slow_disk);
    durable.wait().await.unwrap();
    assert!(engine.syncs.load(Ordering::Relaxed) >= 1);
    assert!(merge.await.unwrap().unwrap().changed);
}

/// A write coordinated under another engine epoch than the current one (the engine reopened after a
/// failure, and may have lost dots its actor issued) is refused, not applied.
#[tokio::test]
async fn coordinated_write_from_another_engine_epoch_is_refused() {
    let engine = MemoryEngine::default();
    let store = open_memory(&engine).await;
    let mut stale = write(Some("v"), VersionVector::new());
    stale.epoch = store.epoch() + 1;
    let err = store
        .coordinate(1, Bytes::from_static(b"k"), stale)
        .await
        .expect_err("a write from another epoch was applied");
    assert!(err.to_string().contains("reopened"), "{err}");
    assert!(store.get(1, b"k").unwrap().is_none());
}

/// A failed fsync fails every write of its group commit (none is acknowledged, whether it
/// coordinates, merges a replica's version or stores a hint), and writes succeed again once
/// fsyncs do.
#[tokio::test]
async fn failed_fsync_fails_the_writes_it_covers_and_then_recovers() {
    use std::sync::atomic::Ordering;
    let engine = Arc::new(WatchedFsync::default());
    let store = Store::open(engine.clone(), StoreConfig::default()).unwrap();
    store.init_partitions(64).await.unwrap();
    store
        .coordinate(
            1,
            Bytes::from_static(b"before"),
            write(Some("v"), VersionVector::new()),
        )
        .await
        .unwrap();

    engine.failing.store(true, Ordering::Relaxed);
    let writes = (0..8).map(|i| {
        store.coordinate(
            2,
            Bytes::from(format!("during-{i}")),
            write(Some("v"), VersionVector::new()),
        )
    });
    for result in futures_util::future::join_all(writes).await {
        let err = result.expect_err("a write whose fsync failed was acknowledged");
        assert!(err.to_string().contains("Input/output error"), "{err}");
    }
    let (replica, _) = fresh_version(9, b"r", 2);
    assert!(
        store
            .merge(
                3,
                Bytes::from_static(b"replica"),
                replica,
                ConflictMode::Siblings
            )
            .await
            .is_err()
    );

    engine.failing.store(false, Ordering::Relaxed);
    store
        .coordinate(
            1,
            Bytes::from_static(b"after"),
            write(Some("v"), VersionVector::new()),
        )
        .await
        .unwrap();
    assert!(store.get(1, b"before").unwrap().is_some());
    assert!(store.get(1, b"after").unwrap().is_some());
}

/// With periodic durability, writes arriving faster than the interval (the queue is never
/// idle for a whole second) are still fsynced once per interval; with nothing written,
/// nothing is fsynced.
#[tokio::test(start_paused = true)]
async fn periodic_durability_syncs_every_interval_under_steady_writes() {
    use std::sync::atomic::Ordering;
    let engine = Arc::new(WatchedFsync::default());
    let config = StoreConfig {
        durability: Durability::Periodic,
        sync_interval: Duration::from_secs(1),
        ..StoreConfig::default()
    };
    let store = Store::open(engine.clone(), config).unwrap();
    store.init_partitions(64).await.unwrap();
    let before = engine.syncs.load(Ordering::Relaxed);
    // 5 s of writes, one every 100 ms.
    for i in 0..50 {
        store
            .coordinate(
                1,
                Bytes::from(format!("k{i}")),
                write(Some("v"), VersionVector::new()),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = engine.syncs.load(Ordering::Relaxed) - before;
    assert!(
        (4..=6).contains(&during),
        "{during} fsyncs in 5 s of steady writes with a 1 s interval"
    );
    // Idle: at most the one sync that covers the last writes, then none.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after_idle = engine.syncs.load(Ordering::Relaxed) - before;
    assert!(
        after_idle <= during + 1,
        "{after_idle} after idling, {during} before"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(engine.syncs.load(Ordering::Relaxed) - before, after_idle);
}

/// The first periodic fsync comes after the drawn offset, not a whole interval after the
/// store opened, and then one per interval; the offset is never more than the interval (a
/// lost machine loses at most one interval of writes). Members opened together draw
/// different offsets, so their fsyncs do not coincide.
#[tokio::test(start_paused = true)]
async fn the_first_periodic_sync_comes_at_the_drawn_offset_within_one_interval() {
    use std::sync::atomic::Ordering;
    let interval = Duration::from_secs(1);
    let config = |random: u64| {
        StoreConfig {
            durability: Durability::Periodic,
            sync_interval: interval,
            ..StoreConfig::default()
        }
        .with_drawn_sync_offset(random)
    };
    let offsets: Vec<Duration> = [0, 1 << 62, 1 << 63, 3 << 62, u64::MAX]
        .into_iter()
        .map(|r| config(r).first_sync_after)
        .collect();
    assert_eq!(offsets[0], Duration::ZERO);
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(offsets.iter().all(|o| *o <= interval), "{offsets:?}");
    assert_eq!(offsets[2], interval / 2);

    // A store of that config over a watched engine, and one write to it: returns the
    // engine and the store (kept open), with the fsyncs counted from before the write.
    let open_and_write = |config: StoreConfig| async move {
        let engine = Arc::new(WatchedFsync::default());
        let store = Store::open(engine.clone(), config).unwrap();
        store.init_partitions(64).await.unwrap();
        let before = engine.syncs.load(Ordering::Relaxed);
        store
            .coordinate(
                1,
                Bytes::from_static(b"k"),
                write(Some("v"), VersionVector::new()),
            )
            .await
            .unwrap();
        (engine, store, before)
    };

    // A quarter of the interval: 250 ms.
    let (engine, store, before) = open_and_write(config(1 << 62)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        engine.syncs.load(Ordering::Relaxed),
        before,
        "synced before the offset"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        engine.syncs.load(Ordering::Relaxed),
        before + 1,
        "no sync at the offset"
    );
    store
        .coordinate(
            1,
            Bytes::from_static(b"k2"),
            write(Some("v"), VersionVector::new()),
        )
        .await
        .unwrap();
    // The next one an interval after the first (at 1.25 s), not at 1 s.
    tokio::time::sleep(Duration::from_millis(850)).await;
    assert_eq!(engine.syncs.load(Ordering::Relaxed), before + 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(engine.syncs.load(Ordering::Relaxed), before + 2);

    // An offset beyond the interval is held to it.
    let (engine, _store, before) = open_and_write(StoreConfig {
        durability: Durability::Periodic,
        sync_interval: interval,
        first_sync_after: Duration::from_secs(60),
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(engine.syncs.load(Ordering::Relaxed), before + 1);
}

/// With periodic durability the writer does not wait for the periodic fsync: while one is
/// held by a slow disk, writes are still applied and answered; once it ends, writes made
/// meanwhile are covered by the next interval's sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::await_holding_lock,
    reason = "the guard is the slow disk: the periodic sync waits on it on a blocking thread"
)]
async fn periodic_sync_does_not_hold_up_writes() {
    use std::sync::atomic::Ordering;
    let engine = Arc::new(WatchedFsync {
        blocking: true,
        ..WatchedFsync::default()
    });
    let config = StoreConfig {
        durability: Durability::Periodic,
        sync_interval: Duration::from_millis(50),
        ..StoreConfig::default()
    };
    let store = Store::open(engine.clone(), config).unwrap();
    store.init_partitions(64).await.unwrap();
    let put = |key: &'static str| {
        let store = store.clone();
        async move {
            store
                .coordinate(
                    1,
                    Bytes::from_static(key.as_bytes()),
                    write(Some("v"), VersionVector::new()),
                )
                .await
        }
    };
    put("first").await.unwrap();
    let slow_disk = engine.disk.lock();
    let begun = engine.syncs_begun.load(Ordering::Relaxed);
    // The interval passes: the periodic sync starts and blocks on the slow disk.
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.syncs_begun.load(Ordering::Relaxed) == begun {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("no periodic sync started");
    for key in ["during-1", "during-2", "during-3"] {
        tokio::time::timeout(Duration::from_secs(10), put(key))
            .await
            .expect("a write waited for the periodic fsync")
            .unwrap();
    }
    let syncs_held = engine.syncs.load(Ordering::Relaxed);
    drop(slow_disk);
    // The held sync ends and the next interval covers the writes made meanwhile.
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.syncs.load(Ordering::Relaxed) < syncs_held + 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the writes made during the held sync were never synced");
    assert!(store.get(1, b"during-3").unwrap().is_some());
}

/// Writes raw bytes under a key, as a damaged disk would leave them.
fn plant(engine: &MemoryEngine, space: Space, key: Vec<u8>, raw: &[u8]) {
    engine
        .write(
            &[BatchOp {
                space,
                key,
                value: Some(raw.to_vec()),
            }],
            false,
        )
        .unwrap();
}

/// Waits until the writer has handled everything queued before this call (a
/// quarantine request is queued without being awaited).
async fn drain_writer(store: &Store) {
    store.meta_put(b"drain", None).await.unwrap();
}

const GARBAGE: &[u8] = &[RECORD_FORMAT_VERSION, 0xff, 0xff, 0xff, 0xff, 0xff, 0x13];

/// One undecodable record in a partition does not fail its scan: the good records are
/// returned (pages stay full, so callers do not take a short page for the end), the bad
/// one is counted, moved aside under `corrupt/data/`, and the partition's tree forgets
/// it, so the tree matches that of a replica holding only the good records and
/// anti-entropy will bring the key back.
#[tokio::test]
async fn corrupt_data_record_is_skipped_counted_and_moved_aside() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    let healthy = open_memory(&MemoryEngine::new()).await;
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        let (obj, _) = fresh_version(10 + i as u64, b"v", 1);
        for s in [&store, &healthy] {
            s.merge(
                3,
                Bytes::from_static(name.as_bytes()),
                obj.clone(),
                ConflictMode::Siblings,
            )
            .await
            .unwrap();
        }
    }
    // "bb" was a good record (the tree counts it), then its bytes rotted on disk.
    let (rotted, _) = fresh_version(99, b"x", 1);
    store
        .merge(3, Bytes::from_static(b"bb"), rotted, ConflictMode::Siblings)
        .await
        .unwrap();
    plant(&engine, Space::Data, data_key(3, b"bb"), GARBAGE);
    assert_ne!(store.merkle_root(3), healthy.merkle_root(3));

    // A page of 2 skips it and still holds 2 records; paging on finds the rest.
    let page = store.scan_partition(3, None, 2).unwrap();
    let keys: Vec<&[u8]> = page.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(keys, vec![&b"a"[..], &b"b"[..]]);
    let rest = store.scan_partition(3, Some(b"b"), 10).unwrap();
    let keys: Vec<&[u8]> = rest.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(keys, vec![&b"c"[..], &b"d"[..]]);
    assert_eq!(store.corruption().count(CorruptKind::Data), 1);

    drain_writer(&store).await;
    assert_eq!(engine.get(Space::Data, &data_key(3, b"bb")).unwrap(), None);
    let aside = corrupt_copy_key(CorruptKind::Data, &data_key(3, b"bb"));
    assert_eq!(
        engine.get(Space::Meta, &aside).unwrap().as_deref(),
        Some(GARBAGE)
    );
    assert_eq!(store.merkle_root(3), healthy.merkle_root(3));
    // Not met again.
    assert_eq!(store.scan_partition(3, None, 10).unwrap().len(), 4);
    assert_eq!(store.corruption().count(CorruptKind::Data), 1);
}

/// A replica's merge over a corrupt record replaces it (this is how anti-entropy and read
/// repair restore the key) instead of failing on it.
#[tokio::test]
async fn merge_replaces_a_corrupt_record() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    plant(&engine, Space::Data, data_key(4, b"k"), GARBAGE);
    assert!(matches!(
        store.get(4, b"k"),
        Err(StorageError::Corrupt { .. })
    ));
    let (obj, _) = fresh_version(3, b"restored", 5);
    let merged = store
        .merge(
            4,
            Bytes::from_static(b"k"),
            obj.clone(),
            ConflictMode::Siblings,
        )
        .await
        .unwrap();
    assert!(merged.changed);
    assert_eq!(store.get(4, b"k").unwrap(), Some(obj));
    assert!(store.corruption().count(CorruptKind::Data) >= 1);
}

/// One undecodable hint does not block its target's queue; it is counted, moved aside and
/// leaves the target's hint count.
#[tokio::test]
async fn corrupt_hint_does_not_block_the_queue() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    let target = MemberId::new("m2");
    for name in ["a", "c"] {
        let (obj, _) = fresh_version(1, b"v", 1);
        store
            .put_hint(
                Hint {
                    target: target.clone(),
                    partition: 2,
                    key: Bytes::from_static(name.as_bytes()),
                    object: obj,
                },
                ConflictMode::Siblings,
            )
            .await
            .unwrap();
    }
    plant(&engine, Space::Hints, hint_key(&target, 2, b"b"), GARBAGE);
    // Reopened so the hint count includes the planted key, as after a restart.
    drop(store);
    let store = Store::open(Arc::new(engine.clone()), StoreConfig::default()).unwrap();
    store.init_partitions(64).await.unwrap();
    assert_eq!(store.hint_counts().get(&target), Some(&3));
    let hints = store.hints_for(&target, 10).unwrap();
    let keys: Vec<&[u8]> = hints.iter().map(|h| h.key.as_ref()).collect();
    assert_eq!(keys, vec![&b"a"[..], &b"c"[..]]);
    assert_eq!(store.corruption().count(CorruptKind::Hint), 1);
    drain_writer(&store).await;
    assert_eq!(store.hint_counts().get(&target), Some(&2));
    assert_eq!(
        engine
            .get(Space::Hints, &hint_key(&target, 2, b"b"))
            .unwrap(),
        None
    );
}

/// After an unclean shutdown the trees are rebuilt by a scan; a corrupt record there is
/// skipped and moved aside instead of stopping the member from starting. A corrupt saved
/// tree after a clean shutdown is counted and rebuilt from the data.
#[tokio::test]
async fn startup_survives_corrupt_records_and_trees() {
    let engine = MemoryEngine::new();
    let store = open_memory(&engine).await;
    for name in ["a", "b"] {
        let (obj, _) = fresh_version(1, b"v", 1);
        store
            .merge(
                7,
                Bytes::from_static(name.as_bytes()),
                obj,
                ConflictMode::Siblings,
            )
            .await
            .unwrap();
    }
    let root = store.merkle_root(7);
    plant(&engine, Space::Data, data_key(7, b"zz"), GARBAGE);
    drop(store);

    let crashed = Store::open(Arc::new(engine.clone()), StoreConfig::default()).unwrap();
    assert!(crashed.init_partitions(64).await.unwrap());
    assert_eq!(crashed.corruption().count(CorruptKind::Data), 1);
    assert_eq!(crashed.merkle_root(7), root);
    assert_eq!(engine.get(Space::Data, &data_key(7, b"zz")).unwrap(), None);
    crashed.close().await.unwrap();
    drop(crashed);

    // A clean shutdown saved the tree of partition 7; its bytes rot.
    let mut tree_key = META_MERKLE_PREFIX.to_vec();
    tree_key.extend_from_slice(&7u32.to_be_bytes());
    assert!(engine.get(Space::Meta, &tree_key).unwrap().is_some());
    plant(&engine, Space::Meta, tree_key, &[0xff; 9]);
    let reopened = Store::open(Arc::new(engine), StoreConfig::default()).unwrap();
    assert!(
        reopened.init_partitions(64).await.unwrap(),
        "a bad tree must be rebuilt"
    );
    assert_eq!(reopened.corruption().count(CorruptKind::Merkle), 1);
    assert_eq!(reopened.merkle_root(7), root);
}

/// The counter attached after the store met corrupt records counts those too.
#[tokio::test]
async fn corruption_counter_includes_records_met_before_it_was_attached() {
    let engine = MemoryEngine::new();
    plant(&engine, Space::Data, data_key(1, b"x"), GARBAGE);
    let store = open_memory(&engine).await;
    let metrics = crate::metrics::Metrics::new();
    store.report_corruption_to(metrics.corrupt_records.clone());
    plant(&engine, Space::Data, data_key(1, b"y"), GARBAGE);
    assert!(store.scan_partition(1, None, 10).unwrap().is_empty());
    let text = metrics.render();
    assert!(
        text.contains("dynamo_corrupt_records_total{kind=\"data\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("dynamo_corrupt_records_total{kind=\"hint\"} 0"),
        "{text}"
    );
}
