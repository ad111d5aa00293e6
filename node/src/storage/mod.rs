//! Durable storage of key records, hints and member metadata.
//!
//! Every mutation goes through one writer task that reads the current record, computes the
//! new one (a coordinated write, a replica merge, a reap), and commits a whole batch of
//! such mutations at once: in `fsync` mode one fsync covers the batch (group commit), and a
//! caller is answered only after its batch is durable. The one exception is a write
//! coordinated here ([`Store::apply_coordinated`]): its new version is answered as soon as
//! the batch reaches the OS, with a [`Durable`] to await, so the coordinator sends it to
//! the other replicas while the local fsync runs instead of after it. Serialising read-modify-write in
//! one place means no two writes to a key can interleave, without per-key locks. The
//! writer also keeps the partitions' Merkle trees in step with every committed change.
//!
//! Key layout: data keys are `partition (u16 BE) ++ user key`, so a partition is one key
//! range (moving or dropping a partition never scans others); hint keys are
//! `target id length (u8) ++ target id ++ partition (u16 BE) ++ user key`.

pub mod engine;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::antientropy::tree::{MerkleForest, MerkleTree};
use crate::clock::{ActorId, ConflictMode, Dot, Object, VersionVector, WriteRequest};
use crate::ring::{MemberId, PartitionId, key_hash};
pub use engine::{BatchOp, Engine, FjallEngine, MemoryEngine, Space};

const RECORD_FORMAT_VERSION: u8 = 1;
/// Most mutations committed in one batch.
const MAX_BATCH: usize = 512;
const WRITE_QUEUE: usize = 4096;
/// A commit taking this long is logged: every write of the member waited behind it.
const SLOW_COMMIT: Duration = Duration::from_millis(100);

const META_SEQUENCE: &[u8] = b"sequence";
const META_CLEAN: &[u8] = b"clean-shutdown";
const META_MERKLE_PREFIX: &[u8] = b"merkle/";
const META_TOMBSTONE_PREFIX: &[u8] = b"tomb/";
/// Records that failed to decode are kept here (`corrupt/<kind>/<original key>`), out of
/// the way of scans, for an operator to inspect.
pub const META_CORRUPT_PREFIX: &[u8] = b"corrupt/";

/// What kind of stored record failed to decode (the label of
/// `dynamo_corrupt_records_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CorruptKind {
    /// A key record.
    Data,
    /// A hinted write held for another member.
    Hint,
    /// Member metadata (the tombstone index, the saved cluster view).
    Meta,
    /// A Merkle tree saved at a clean shutdown.
    Merkle,
}

impl CorruptKind {
    pub const ALL: [CorruptKind; 4] = [
        CorruptKind::Data,
        CorruptKind::Hint,
        CorruptKind::Meta,
        CorruptKind::Merkle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CorruptKind::Data => "data",
            CorruptKind::Hint => "hint",
            CorruptKind::Meta => "meta",
            CorruptKind::Merkle => "merkle",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// What happens to a corrupt record of this kind (for the log line).
    fn remedy(self) -> &'static str {
        match self {
            CorruptKind::Data => {
                "moved aside under corrupt/; anti-entropy restores the key from its replicas"
            }
            CorruptKind::Hint => {
                "moved aside under corrupt/; the key's replicas and anti-entropy hold its data"
            }
            CorruptKind::Meta => "ignored (moved aside where it is an index entry)",
            CorruptKind::Merkle => "the tree is rebuilt from the data",
        }
    }
}

/// Counts the corrupt records the store met, and forwards them to the member's metric
/// once one is attached (records met while opening are counted before it is).
#[derive(Default)]
pub struct CorruptionLog {
    counts: [std::sync::atomic::AtomicU64; 4],
    sink: Mutex<Option<prometheus::IntCounterVec>>,
}

impl CorruptionLog {
    /// Counts one corrupt record and logs it with where it was found.
    pub fn record(&self, kind: CorruptKind, key: &[u8], reason: &str) {
        self.counts[kind.index()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(sink) = self.sink.lock().as_ref() {
            sink.with_label_values(&[kind.as_str()]).inc();
        }
        let partition = match kind {
            CorruptKind::Data => key
                .get(..2)
                .map(|b| u32::from(u16::from_be_bytes([b[0], b[1]]))),
            _ => None,
        };
        tracing::warn!(
            kind = kind.as_str(),
            partition = ?partition,
            key = %String::from_utf8_lossy(key),
            key_hex = %hex(key),
            reason,
            next = kind.remedy(),
            "skipped a corrupt stored record"
        );
    }

    /// Corrupt records of `kind` met so far.
    pub fn count(&self, kind: CorruptKind) -> u64 {
        self.counts[kind.index()].load(std::sync::atomic::Ordering::Relaxed)
    }

    fn attach(&self, counter: prometheus::IntCounterVec) {
        for kind in CorruptKind::ALL {
            counter
                .with_label_values(&[kind.as_str()])
                .inc_by(self.count(kind));
        }
        *self.sink.lock() = Some(counter);
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Where a corrupt record of `space` is kept once moved aside.
fn corrupt_copy_key(kind: CorruptKind, key: &[u8]) -> Vec<u8> {
    let mut k = META_CORRUPT_PREFIX.to_vec();
    k.extend_from_slice(kind.as_str().as_bytes());
    k.push(b'/');
    k.extend_from_slice(key);
    k
}

fn kind_of(space: Space) -> CorruptKind {
    match space {
        Space::Data => CorruptKind::Data,
        Space::Hints => CorruptKind::Hint,
        Space::Meta => CorruptKind::Meta,
    }
}

/// The operations that move a corrupt record aside: a copy under
/// [`META_CORRUPT_PREFIX`], the record removed, and for a key record its tombstone index
/// entry removed (the reaper would otherwise keep finding a key that is gone).
fn quarantine_ops(space: Space, key: &[u8], raw: Vec<u8>) -> Vec<BatchOp> {
    let mut ops = vec![
        BatchOp {
            space: Space::Meta,
            key: corrupt_copy_key(kind_of(space), key),
            value: Some(raw),
        },
        BatchOp {
            space,
            key: key.to_vec(),
            value: None,
        },
    ];
    if space == Space::Data {
        let mut index_key = META_TOMBSTONE_PREFIX.to_vec();
        index_key.extend_from_slice(key);
        ops.push(BatchOp {
            space: Space::Meta,
            key: index_key,
            value: None,
        });
    }
    ops
}

/// A tombstone index entry: `tomb/ ++ data key` → newest tombstone timestamp.
fn parse_tombstone_entry(k: &[u8], v: &[u8]) -> Option<(PartitionId, Bytes, u64)> {
    let dk = k.get(META_TOMBSTONE_PREFIX.len()..)?;
    let p = partition_of(dk)?;
    let ts = u64::from_be_bytes(v.try_into().ok()?);
    Some((p, Bytes::copy_from_slice(dk.get(2..)?), ts))
}

/// The partition of a data key.
fn partition_of(data_key: &[u8]) -> Option<PartitionId> {
    data_key
        .get(..2)
        .map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])))
}

/// The member a hint key is held for.
fn hint_target(hint_key: &[u8]) -> Option<MemberId> {
    let (&len, rest) = hint_key.split_first()?;
    let id = rest.get(..usize::from(len))?;
    Some(MemberId::new(String::from_utf8_lossy(id)))
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("corrupt record under key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("the store is shut down")]
    Closed,
    #[error(
        "key has {count} siblings, more than the limit of {max}; resolve them by writing with the merged context"
    )]
    TooManySiblings { count: usize, max: usize },
    #[error("the partition count is not known yet (the member has no ring)")]
    NotReady,
}

/// When writes reach stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A write is acknowledged only after it is fsynced (batched: group commit).
    #[default]
    Fsync,
    /// Writes reach the OS at once and are fsynced every `sync_interval`: a killed
    /// process loses nothing, a lost machine loses up to one interval.
    Periodic,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "periodic" => Ok(Durability::Periodic),
            other => Err(format!(
                "unknown durability {other:?} (expected fsync or periodic)"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub durability: Durability,
    pub sync_interval: Duration,
    /// With periodic durability, the first fsync comes this long after the store opens
    /// (at most `sync_interval`), then one every interval. Members started together draw
    /// different offsets, so that their fsyncs, and the stall each brings, do not coincide.
    pub first_sync_after: Duration,
}

impl StoreConfig {
    /// A first fsync offset in [0, `sync_interval`), uniform in `random`: members of a
    /// cluster started at once (`dynamo dev`, a StatefulSet's first rollout) would
    /// otherwise all fsync at the same instant, each fsync's stall hitting every replica.
    pub fn with_drawn_sync_offset(mut self, random: u64) -> StoreConfig {
        let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
        self.first_sync_after = self.sync_interval.mul_f64(fraction);
        self
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            durability: Durability::Fsync,
            sync_interval: Duration::from_secs(1),
            first_sync_after: Duration::from_secs(1),
        }
    }
}

/// A page of decoded records (raw key, object) and the last raw key the page covered.
type DecodedPage = (Vec<(Vec<u8>, Object)>, Option<Vec<u8>>);

/// A write coordinated by this member.
#[derive(Clone, Debug)]
pub struct CoordinatedWrite {
    pub actor: ActorId,
    /// The engine epoch ([`Store::epoch`]) `actor` was derived under. A write whose epoch
    /// is no longer current is refused: the engine reopened meanwhile and may have lost
    /// dots that actor issued, so it must not issue more.
    pub epoch: u64,
    pub context: VersionVector,
    /// `None` writes a tombstone.
    pub value: Option<Bytes>,
    pub timestamp_ms: u64,
    pub mode: ConflictMode,
    pub max_siblings: usize,
}

/// Result of merging a replica's object into the local record.
#[derive(Clone, Debug)]
pub struct MergeOutcome {
    pub object: Object,
    pub changed: bool,
}

/// A hinted write held for `target`.
#[derive(Clone, Debug)]
pub struct Hint {
    pub target: MemberId,
    pub partition: PartitionId,
    pub key: Bytes,
    pub object: Object,
}

enum Op {
    Coordinate {
        partition: PartitionId,
        key: Bytes,
        write: CoordinatedWrite,
        /// Told once the write is durable; the reply comes before, once it is applied.
        durable: oneshot::Sender<Result<(), StorageError>>,
    },
    /// A write coordinated by a member that holds no replica of the key: the new version
    /// is minted (its dot durably unique) but not stored here.
    Mint {
        write: CoordinatedWrite,
    },
    Merge {
        partition: PartitionId,
        key: Bytes,
        incoming: Object,
        mode: ConflictMode,
    },
    Reap {
        partition: PartitionId,
        key: Bytes,
        expected_digest: u64,
    },
    RemoveKeys {
        partition: PartitionId,
        keys: Vec<Bytes>,
    },
    HintMerge {
        hint: Hint,
        mode: ConflictMode,
    },
    HintRemove {
        target: MemberId,
        partition: PartitionId,
        key: Bytes,
        expected_digest: u64,
    },
    Meta {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Moves a record that failed to decode aside (if it still fails: it may have been
    /// rewritten since it was read).
    Quarantine {
        space: Space,
        key: Vec<u8>,
    },
    /// Commit what is queued, save the Merkle trees, mark the shutdown clean and stop.
    Close,
}

enum OpResult {
    Written(Object, Dot),
    Merged(MergeOutcome),
    Done(bool),
}

struct Pending {
    op: Op,
    reply: oneshot::Sender<Result<OpResult, StorageError>>,
}

/// State owned by the writer task.
struct Writer {
    engine: Arc<dyn Engine>,
    shared: Arc<Shared>,
    sequence: u64,
    durability: Durability,
    dirty: bool,
    reopens_seen: u64,
}

/// State the writer updates and readers observe.
struct Shared {
    merkle: Mutex<Option<MerkleForest>>,
    hint_counts: Mutex<BTreeMap<MemberId, u64>>,
    /// How many times each partition was dropped in this process (see `tenure`).
    tenure: Mutex<BTreeMap<PartitionId, u32>>,
    corruption: CorruptionLog,
}

/// Resolves once a write applied by [`Store::apply_coordinated`] is as durable as the
/// store's durability mode promises (fsynced in `fsync` mode, handed to the OS in
/// `periodic` mode).
pub struct Durable(oneshot::Receiver<Result<(), StorageError>>);

impl Durable {
    pub async fn wait(self) -> Result<(), StorageError> {
        self.0.await.unwrap_or(Err(StorageError::Closed))
    }
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    tx: mpsc::Sender<Pending>,
    shared: Arc<Shared>,
    writer: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

pub fn data_key(partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&(partition as u16).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn partition_range(partition: PartitionId) -> (Vec<u8>, Option<Vec<u8>>) {
    let start = (partition as u16).to_be_bytes().to_vec();
    let end = partition
        .checked_add(1)
        .filter(|&p| p <= u32::from(u16::MAX))
        .map(|p| (p as u16).to_be_bytes().to_vec());
    (start, end)
}

fn hint_prefix(target: &MemberId) -> Vec<u8> {
    let id = target.as_str().as_bytes();
    let len = id.len().min(255);
    let mut k = Vec::with_capacity(1 + len);
    k.push(len as u8);
    k.extend_from_slice(&id[..len]);
    k
}

fn hint_key(target: &MemberId, partition: PartitionId, key: &[u8]) -> Vec<u8> {
    let mut k = hint_prefix(target);
    k.extend_from_slice(&(partition as u16).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Encodes a key record.
pub fn encode_record(obj: &Object) -> Vec<u8> {
    // Sized first, so that a record is one allocation and its value is copied once.
    // Serialising these types cannot fail.
    let size = postcard::experimental::serialized_size(obj).unwrap_or(0);
    let mut buf = Vec::with_capacity(1 + size);
    buf.push(RECORD_FORMAT_VERSION);
    postcard::to_extend(obj, buf).unwrap_or_else(|_| vec![RECORD_FORMAT_VERSION])
}

/// Decodes a key record, checking its invariants.
pub fn decode_record(bytes: &[u8]) -> Result<Object, String> {
    let (&version, body) = bytes.split_first().ok_or("empty record")?;
    if version != RECORD_FORMAT_VERSION {
        return Err(format!("unknown record format {version}"));
    }
    let (obj, rest): (Object, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing bytes".into());
    }
    obj.validate()?;
    Ok(obj)
}

fn corrupt(key: &[u8], reason: String) -> StorageError {
    StorageError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

fn load(engine: &dyn Engine, space: Space, key: &[u8]) -> Result<Option<Object>, StorageError> {
    match engine.get(space, key)? {
        None => Ok(None),
        Some(bytes) => decode_record(&bytes).map(Some).map_err(|r| corrupt(key, r)),
    }
}

impl Store {
    /// Opens the store over `engine` and starts its writer task (on the current runtime).
    pub fn open(engine: Arc<dyn Engine>, config: StoreConfig) -> Result<Store, StorageError> {
        let sequence = match engine.get(Space::Meta, META_SEQUENCE)? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| corrupt(META_SEQUENCE, "bad length".into()))?,
            ),
            None => 0,
        };
        let mut hint_counts = BTreeMap::new();
        let mut start = Vec::new();
        loop {
            let page = engine.scan(Space::Hints, &start, None, 1024)?;
            let Some((last, _)) = page.last() else { break };
            start = last.clone();
            start.push(0);
            for (k, _) in &page {
                if let Some((&len, rest)) = k.split_first() {
                    let id = rest.get(..usize::from(len)).unwrap_or(rest);
                    *hint_counts
                        .entry(MemberId::new(String::from_utf8_lossy(id)))
                        .or_insert(0) += 1;
                }
            }
        }
        let shared = Arc::new(Shared {
            merkle: Mutex::new(None),
            hint_counts: Mutex::new(hint_counts),
            tenure: Mutex::new(BTreeMap::new()),
            corruption: CorruptionLog::default(),
        });
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            engine: engine.clone(),
            shared: shared.clone(),
            sequence,
            durability: config.durability,
            dirty: false,
            reopens_seen: engine.reopens(),
        };
        let first_sync =
            tokio::time::Instant::now() + config.first_sync_after.min(config.sync_interval);
        let handle = tokio::spawn(writer.run(rx, first_sync, config.sync_interval));
        Ok(Store {
            engine,
            tx,
            shared,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Sets the partition count once the member knows its ring, loading the Merkle trees
    /// saved at the last clean shutdown or rebuilding them by a scan after a crash.
    /// Returns whether a rebuild was needed.
    pub async fn init_partitions(&self, partitions: u32) -> Result<bool, StorageError> {
        if self
            .shared
            .merkle
            .lock()
            .as_ref()
            .is_some_and(|f| f.partitions() == partitions)
        {
            return Ok(false);
        }
        let engine = self.engine.clone();
        let shared = self.shared.clone();
        let work = move || -> Result<bool, StorageError> {
            let clean = engine.get(Space::Meta, META_CLEAN)?.is_some();
            let mut forest = MerkleForest::new(partitions);
            let mut rebuilt = false;
            if clean {
                let saved = engine.scan(
                    Space::Meta,
                    META_MERKLE_PREFIX,
                    prefix_end(META_MERKLE_PREFIX).as_deref(),
                    usize::MAX,
                )?;
                for (k, v) in saved {
                    let p = k
                        .get(META_MERKLE_PREFIX.len()..)
                        .and_then(|b| b.try_into().ok())
                        .map(u32::from_be_bytes);
                    match (p, postcard::from_bytes::<MerkleTree>(&v)) {
                        (Some(p), Ok(tree)) if p < partitions && tree.is_consistent() => {
                            forest.set(p, tree)
                        }
                        // A saved tree is only a cache of the data: the scan below
                        // rebuilds it (and rewrites it at the next clean shutdown).
                        (Some(p), decoded) if p < partitions => {
                            let reason = match decoded {
                                Ok(_) => "inconsistent tree".to_string(),
                                Err(e) => e.to_string(),
                            };
                            shared.corruption.record(CorruptKind::Merkle, &k, &reason);
                            rebuilt = true;
                        }
                        // A tree of a partition count this ring does not have.
                        _ => rebuilt = true,
                    }
                }
            } else {
                rebuilt = true;
            }
            if rebuilt {
                forest = rebuild_forest(engine.as_ref(), partitions, &shared.corruption)?;
            }
            // From now on the saved trees are stale until the next clean shutdown.
            engine.write(
                &[BatchOp {
                    space: Space::Meta,
                    key: META_CLEAN.to_vec(),
                    value: None,
                }],
                true,
            )?;
            *shared.merkle.lock() = Some(forest);
            Ok(rebuilt)
        };
        if self.engine.blocking() {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| StorageError::Engine(e.to_string()))?
        } else {
            work()
        }
    }

    /// Runs `work` (a scan, a decode of many records) off the runtime's worker threads
    /// when the engine blocks on disk; inline on an engine that never blocks (the
    /// in-memory one of tests and the simulation, which must stay deterministic).
    pub async fn run_blocking<T, F>(&self, work: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if self.engine.blocking() {
            tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| StorageError::Engine(e.to_string()))
        } else {
            Ok(work())
        }
    }

    async fn submit(&self, op: Op) -> Result<OpResult, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { op, reply })
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// The local record of a key. A record that fails to decode is an error for this
    /// read (the coordinator asks another replica), counted and moved aside, so the next
    /// exchange restores it from the replicas.
    pub fn get(&self, partition: PartitionId, key: &[u8]) -> Result<Option<Object>, StorageError> {
        let dk = data_key(partition, key);
        match self.engine.get(Space::Data, &dk)? {
            None => Ok(None),
            Some(bytes) => decode_record(&bytes).map(Some).map_err(|reason| {
                self.found_corrupt(Space::Data, &dk, &reason);
                corrupt(&dk, reason)
            }),
        }
    }

    /// Counts a record that failed to decode and asks the writer to move it aside. The
    /// request is not awaited (readers run outside the writer, some on the blocking
    /// pool); if the queue is full it is dropped and the next read finds the record again.
    fn found_corrupt(&self, space: Space, key: &[u8], reason: &str) {
        self.shared.corruption.record(kind_of(space), key, reason);
        let (reply, _) = oneshot::channel();
        let _ = self.tx.try_send(Pending {
            op: Op::Quarantine {
                space,
                key: key.to_vec(),
            },
            reply,
        });
    }

    /// The corrupt records met so far.
    pub fn corruption(&self) -> &CorruptionLog {
        &self.shared.corruption
    }

    /// Counts corrupt records in `counter` (labelled by kind) from now on, and those met
    /// before.
    pub fn report_corruption_to(&self, counter: prometheus::IntCounterVec) {
        self.shared.corruption.attach(counter);
    }

    /// Decodes a page of raw records of `space`, skipping (counting, moving aside) those
    /// that fail. Returns the decoded records and the last raw key, so that a caller
    /// pages on past a corrupt record instead of stopping at it.
    fn decode_page(&self, space: Space, raw: Vec<(Vec<u8>, Vec<u8>)>) -> DecodedPage {
        let last = raw.last().map(|(k, _)| k.clone());
        let decoded = raw
            .into_iter()
            .filter_map(|(k, v)| match decode_record(&v) {
                Ok(obj) => Some((k, obj)),
                Err(reason) => {
                    self.found_corrupt(space, &k, &reason);
                    None
                }
            })
            .collect();
        (decoded, last)
    }

    /// Up to `limit` decodable records of `space` in `[start, end)`; fewer only when the
    /// range is exhausted. Corrupt records are skipped (and moved aside), never returned
    /// as an error: one bad record must not stall every scan of its range.
    fn scan_decoded(
        &self,
        space: Space,
        mut start: Vec<u8>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Object)>, StorageError> {
        let mut out = Vec::new();
        loop {
            let want = limit - out.len();
            let raw = self.engine.scan(space, &start, end, want)?;
            let exhausted = raw.len() < want;
            let (decoded, last) = self.decode_page(space, raw);
            out.extend(decoded);
            match last {
                Some(last) if !exhausted && out.len() < limit => {
                    start = last;
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// Applies a write coordinated here; answers once it is durable, with the new record
    /// and the write's dot.
    pub async fn coordinate(
        &self,
        partition: PartitionId,
        key: Bytes,
        write: CoordinatedWrite,
    ) -> Result<(Object, Dot), StorageError> {
        let (object, dot, durable) = self.apply_coordinated(partition, key, write).await?;
        durable.wait().await?;
        Ok((object, dot))
    }

    /// Applies a write coordinated here and answers with the new record and the write's
    /// dot as soon as its batch reaches the OS, before the batch's fsync: the coordinator
    /// replicates meanwhile and counts this replica's acknowledgement when `Durable`
    /// resolves. Sending a version before it is durable here is safe because its actor
    /// is never reused by a process that could have lost it: a restart changes the
    /// generation, an engine reopen the epoch (see `CoordinatedWrite::epoch`).
    pub async fn apply_coordinated(
        &self,
        partition: PartitionId,
        key: Bytes,
        write: CoordinatedWrite,
    ) -> Result<(Object, Dot, Durable), StorageError> {
        let (durable, durable_rx) = oneshot::channel();
        match self
            .submit(Op::Coordinate {
                partition,
                key,
                write,
                durable,
            })
            .await?
        {
            OpResult::Written(o, d) => Ok((o, d, Durable(durable_rx))),
            _ => Err(StorageError::Engine("unexpected writer reply".into())),
        }
    }

    /// How many times the storage engine reopened after a failure. Clock actors are
    /// derived from it, because a reopen may lose writes that were already replicated.
    pub fn epoch(&self) -> u64 {
        self.engine.reopens()
    }

    /// Mints the version a write creates without storing it (for a coordinator that is not
    /// a replica of the key).
    pub async fn mint(&self, write: CoordinatedWrite) -> Result<(Object, Dot), StorageError> {
        match self.submit(Op::Mint { write }).await? {
            OpResult::Written(o, d) => Ok((o, d)),
            _ => Err(StorageError::Engine("unexpected writer reply".into())),
        }
    }

    /// Merges a replica's version of a key into the local record.
    pub async fn merge(
        &self,
        partition: PartitionId,
        key: Bytes,
        incoming: Object,
        mode: ConflictMode,
    ) -> Result<MergeOutcome, StorageError> {
        match self
            .submit(Op::Merge {
                partition,
                key,
                incoming,
                mode,
            })
            .await?
        {
            OpResult::Merged(m) => Ok(m),
            _ => Err(StorageError::Engine("unexpected writer reply".into())),
        }
    }

    /// Removes a tombstone if the record is still exactly the one with `expected_digest`.
    pub async fn reap(
        &self,
        partition: PartitionId,
        key: Bytes,
        expected_digest: u64,
    ) -> Result<bool, StorageError> {
        match self
            .submit(Op::Reap {
                partition,
                key,
                expected_digest,
            })
            .await?
        {
            OpResult::Done(d) => Ok(d),
            _ => Err(StorageError::Engine("unexpected writer reply".into())),
        }
    }

    /// How many times this process dropped partition `p`: writers derive their clock
    /// actor from it, so data held before a drop and after a later re-acquisition never
    /// share an actor.
    pub fn tenure(&self, p: PartitionId) -> u32 {
        self.shared.tenure.lock().get(&p).copied().unwrap_or(0)
    }

    /// Removes keys of a partition this member no longer replicates (a handoff's end).
    pub async fn drop_keys(
        &self,
        partition: PartitionId,
        keys: Vec<Bytes>,
    ) -> Result<(), StorageError> {
        *self.shared.tenure.lock().entry(partition).or_insert(0) += 1;
        self.remove_keys(partition, keys).await
    }

    /// Removes keys of a partition.
    pub async fn remove_keys(
        &self,
        partition: PartitionId,
        keys: Vec<Bytes>,
    ) -> Result<(), StorageError> {
        self.submit(Op::RemoveKeys { partition, keys })
            .await
            .map(|_| ())
    }

    /// Up to `limit` records of a partition with keys after `after` (exclusive); fewer
    /// only at the partition's end. Records that fail to decode are skipped, counted and
    /// moved aside.
    pub fn scan_partition(
        &self,
        partition: PartitionId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Object)>, StorageError> {
        let (start, end) = partition_range(partition);
        let start = match after {
            Some(k) => {
                let mut s = data_key(partition, k);
                s.push(0);
                s
            }
            None => start,
        };
        Ok(self
            .scan_decoded(Space::Data, start, end.as_deref(), limit)?
            .into_iter()
            .map(|(k, obj)| (Bytes::copy_from_slice(k.get(2..).unwrap_or_default()), obj))
            .collect())
    }

    /// Stores (merging) a hinted write for `target`.
    pub async fn put_hint(&self, hint: Hint, mode: ConflictMode) -> Result<(), StorageError> {
        self.submit(Op::HintMerge { hint, mode }).await.map(|_| ())
    }

    /// Removes a delivered hint unless it changed since it was read.
    pub async fn remove_hint(
        &self,
        target: &MemberId,
        partition: PartitionId,
        key: Bytes,
        expected_digest: u64,
    ) -> Result<bool, StorageError> {
        match self
            .submit(Op::HintRemove {
                target: target.clone(),
                partition,
                key,
                expected_digest,
            })
            .await?
        {
            OpResult::Done(d) => Ok(d),
            _ => Err(StorageError::Engine("unexpected writer reply".into())),
        }
    }

    /// Hints held for `target`, up to `limit`. Hints that fail to decode are skipped,
    /// counted and moved aside (their data lives on the other replicas).
    pub fn hints_for(&self, target: &MemberId, limit: usize) -> Result<Vec<Hint>, StorageError> {
        let prefix = hint_prefix(target);
        let end = prefix_end(&prefix);
        Ok(self
            .scan_decoded(Space::Hints, prefix.clone(), end.as_deref(), limit)?
            .into_iter()
            .map(|(k, object)| {
                let rest = k.get(prefix.len()..).unwrap_or_default();
                let partition = rest
                    .get(..2)
                    .map_or(0, |b| u32::from(u16::from_be_bytes([b[0], b[1]])));
                let key = Bytes::copy_from_slice(rest.get(2..).unwrap_or_default());
                Hint {
                    target: target.clone(),
                    partition,
                    key,
                    object,
                }
            })
            .collect())
    }

    /// A hinted copy of one key held for `target`, if any.
    pub fn hint(
        &self,
        target: &MemberId,
        partition: PartitionId,
        key: &[u8],
    ) -> Result<Option<Object>, StorageError> {
        load(
            self.engine.as_ref(),
            Space::Hints,
            &hint_key(target, partition, key),
        )
    }

    /// Number of hints held, per target.
    pub fn hint_counts(&self) -> BTreeMap<MemberId, u64> {
        self.shared.hint_counts.lock().clone()
    }

    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.engine.get(Space::Meta, key)
    }

    /// Keys whose record holds only tombstones, with the tombstones' newest timestamp, in
    /// key order after `after` (exclusive), up to `limit`.
    pub fn tombstones(
        &self,
        after: Option<(PartitionId, &[u8])>,
        limit: usize,
    ) -> Result<Vec<(PartitionId, Bytes, u64)>, StorageError> {
        let mut start = META_TOMBSTONE_PREFIX.to_vec();
        if let Some((p, key)) = after {
            start.extend_from_slice(&data_key(p, key));
            start.push(0);
        }
        let end = prefix_end(META_TOMBSTONE_PREFIX);
        let entries = self
            .engine
            .scan(Space::Meta, &start, end.as_deref(), limit)?;
        Ok(entries
            .into_iter()
            .filter_map(|(k, v)| {
                let parsed = parse_tombstone_entry(&k, &v);
                if parsed.is_none() {
                    // An index entry only: the record itself is still read (and checked)
                    // where it lives; the entry is moved aside.
                    self.found_corrupt(Space::Meta, &k, "malformed tombstone index entry");
                }
                parsed
            })
            .collect())
    }

    /// Metadata keys starting with `prefix`.
    pub fn meta_keys(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
        Ok(self
            .engine
            .scan(
                Space::Meta,
                prefix,
                prefix_end(prefix).as_deref(),
                usize::MAX,
            )?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// Writes (or with `None` removes) a metadata entry durably.
    pub async fn meta_put(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), StorageError> {
        self.submit(Op::Meta {
            key: key.to_vec(),
            value,
        })
        .await
        .map(|_| ())
    }

    /// The Merkle root of a partition (0 when empty or unknown).
    pub fn merkle_root(&self, partition: PartitionId) -> u64 {
        self.shared
            .merkle
            .lock()
            .as_ref()
            .map_or(0, |f| f.root(partition))
    }

    /// Runs `f` on the Merkle tree of a partition.
    pub fn with_tree<T>(
        &self,
        partition: PartitionId,
        f: impl FnOnce(Option<&MerkleTree>) -> T,
    ) -> T {
        let guard = self.shared.merkle.lock();
        f(guard.as_ref().and_then(|forest| forest.tree(partition)))
    }

    /// Partitions holding at least one key, with their roots and key counts.
    pub fn populated_partitions(&self) -> Vec<(PartitionId, u64, u64)> {
        self.shared
            .merkle
            .lock()
            .as_ref()
            .map_or_else(Vec::new, |f| {
                f.populated()
                    .map(|(p, t)| (p, t.root(), t.keys()))
                    .collect()
            })
    }

    pub fn size_bytes(&self) -> u64 {
        self.engine.size_bytes()
    }

    /// Commits everything queued, saves the Merkle trees and marks the shutdown clean (so
    /// the next start skips the rebuild scan), then stops the writer: later writes fail
    /// with [`StorageError::Closed`].
    pub async fn close(&self) -> Result<(), StorageError> {
        self.submit(Op::Close).await?;
        let handle = self.writer.lock().take();
        if let Some(h) = handle {
            let _ = h.await;
        }
        Ok(())
    }
}

fn rebuild_forest(
    engine: &dyn Engine,
    partitions: u32,
    corruption: &CorruptionLog,
) -> Result<MerkleForest, StorageError> {
    let mut forest = MerkleForest::new(partitions);
    rebuild_range(engine, &mut forest, Vec::new(), None, corruption)?;
    Ok(forest)
}

/// Adds every data record in `[start, end)` to `forest`. A record that fails to decode is
/// counted and moved aside at once (this runs at startup or on the writer, with no write
/// of the key in flight), so one bad record never stops a member from starting.
fn rebuild_range(
    engine: &dyn Engine,
    forest: &mut MerkleForest,
    mut start: Vec<u8>,
    end: Option<&[u8]>,
    corruption: &CorruptionLog,
) -> Result<(), StorageError> {
    loop {
        let page = engine.scan(Space::Data, &start, end, 4096)?;
        let Some((last, _)) = page.last() else { break };
        start = last.clone();
        start.push(0);
        let mut aside = Vec::new();
        for (k, v) in page {
            let (Some(p), Some(user_key)) = (partition_of(&k), k.get(2..)) else {
                continue;
            };
            match decode_record(&v) {
                Ok(obj) => forest.apply(p, user_key, key_hash(user_key), 0, obj.digest()),
                Err(reason) => {
                    corruption.record(CorruptKind::Data, &k, &reason);
                    aside.extend(quarantine_ops(Space::Data, &k, v));
                }
            }
        }
        if !aside.is_empty() {
            engine.write(&aside, true)?;
        }
    }
    Ok(())
}

/// How long after a failed memtable seal the writer tries again (fjall's own rotation is
/// the backstop meanwhile).
const SEAL_RETRY: Duration = Duration::from_secs(1);

/// The writer's seal of the engine's memtable, which runs on the blocking pool beside the
/// writes: it fsyncs the journal first, so fjall's flush, which fsyncs the journal again
/// while holding the lock every commit needs, has little left to sync. Left to fjall, each
/// flush stopped the member's writes, and in periodic mode its runtime thread, for the
/// whole fsync of up to a second of writes (docs/benchmarks.md, "Where the tail comes
/// from").
#[derive(Default)]
struct MemtableSealing {
    running: Option<tokio::task::JoinHandle<Result<(), StorageError>>>,
    retry_at: Option<tokio::time::Instant>,
}

impl MemtableSealing {
    /// `sync_first`: whether batches reach the disk only at the periodic fsync (then the
    /// seal fsyncs the journal first; with an fsync per batch there is nothing to sync).
    fn start_if_due(&mut self, engine: &Arc<dyn Engine>, sync_first: bool) {
        if self.running.is_some()
            || self
                .retry_at
                .is_some_and(|at| tokio::time::Instant::now() < at)
            || !engine.blocking()
            || !engine.memtable_seal_due()
        {
            return;
        }
        let engine = engine.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            engine.seal_memtable(sync_first)
        }));
    }

    /// Collects a seal that has finished, without waiting for one that has not.
    async fn reap(&mut self) {
        if self.running.as_ref().is_some_and(|s| s.is_finished()) {
            self.finish().await;
        }
    }

    async fn finish(&mut self) {
        let Some(handle) = self.running.take() else {
            return;
        };
        match handle.await.unwrap_or(Err(StorageError::Closed)) {
            Ok(()) => self.retry_at = None,
            Err(e) => {
                self.retry_at = Some(tokio::time::Instant::now() + SEAL_RETRY);
                tracing::warn!(error = %e, "sealing the memtable failed; the engine's own rotation remains");
            }
        }
    }
}

/// Buffered effects of one batch before it is committed.
struct BatchState {
    ops: Vec<BatchOp>,
    /// Latest value of each key touched in this batch (`None` = removed).
    overlay: BTreeMap<(Space, Vec<u8>), Option<Object>>,
    /// Merkle changes to apply once the batch is durable: (partition, key, old, new).
    merkle: Vec<(PartitionId, Bytes, u64, u64)>,
    hint_deltas: BTreeMap<MemberId, i64>,
    /// Coordinated writes waiting to hear that the batch is durable.
    durable: Vec<oneshot::Sender<Result<(), StorageError>>>,
    /// Partitions whose tree is rebuilt after the commit (a corrupt record left them).
    rebuild: std::collections::BTreeSet<PartitionId>,
}

impl Writer {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Pending>,
        first_sync: tokio::time::Instant,
        sync_interval: Duration,
    ) {
        // A deadline, not an idle timeout: under a steady stream of writes the queue is
        // never idle for a whole interval, and unsynced writes would pile up unbounded.
        let mut sync_due = first_sync;
        // The periodic fsync runs beside the writer: writes keep reaching the OS while it
        // runs (waiting for it stalled every write of the member for 15–60 ms a second).
        let mut syncing: Option<tokio::task::JoinHandle<Result<(), StorageError>>> = None;
        let mut sealing = MemtableSealing::default();
        loop {
            if syncing.as_ref().is_some_and(|s| s.is_finished()) {
                self.finish_sync(syncing.take()).await;
            }
            sealing.reap().await;
            if tokio::time::Instant::now() >= sync_due {
                if self.dirty && syncing.is_none() {
                    syncing = self.start_sync();
                }
                sync_due = tokio::time::Instant::now() + sync_interval;
            }
            let first = match tokio::time::timeout_at(sync_due, rx.recv()).await {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(_) => continue,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            let close = batch
                .iter()
                .position(|p| matches!(p.op, Op::Close))
                .map(|i| batch.remove(i));
            // An fsync belongs on the blocking pool. A periodic-mode commit only copies
            // the batch into the memtable and the journal's buffer, and handing it to
            // another thread and back cost more than the commit: inline, closed-loop
            // throughput rose 1.18x and CPU per operation fell 8% (docs/benchmarks.md).
            // The price: while fjall rotates its journal (an fsync under its lock) the
            // member's thread waits, as its reads already do while a flush installs.
            if self.engine.blocking() && self.durability == Durability::Fsync {
                let handle = tokio::task::spawn_blocking(move || {
                    self.commit(batch);
                    self
                });
                match handle.await {
                    Ok(w) => self = w,
                    // The writer panicked: every queued caller sees `Closed`.
                    Err(_) => return,
                }
            } else {
                self.commit(batch);
            }
            sealing.start_if_due(&self.engine, self.durability == Durability::Periodic);
            if let Some(close) = close {
                rx.close();
                self.finish_sync(syncing.take()).await;
                sealing.finish().await;
                let result = self.save_trees_and_mark_clean();
                let _ = close.reply.send(result.map(|()| OpResult::Done(true)));
                // Writes queued behind the close are refused.
                while let Ok(p) = rx.try_recv() {
                    let _ = p.reply.send(Err(StorageError::Closed));
                }
                return;
            }
        }
        self.finish_sync(syncing.take()).await;
        sealing.finish().await;
        if self.dirty {
            let _ = self.engine.sync();
        }
    }

    fn rebuild_trees(&mut self) {
        let partitions = self
            .shared
            .merkle
            .lock()
            .as_ref()
            .map(MerkleForest::partitions);
        if let Some(q) = partitions {
            match rebuild_forest(self.engine.as_ref(), q, &self.shared.corruption) {
                Ok(forest) => *self.shared.merkle.lock() = Some(forest),
                Err(e) => {
                    tracing::error!(error = %e, "rebuilding the Merkle trees after an engine reopen failed")
                }
            }
        }
    }

    /// Rebuilds one partition's tree from what is stored (after a corrupt record of it
    /// was moved aside, whose contribution to the tree is unknown). Runs on the writer,
    /// so no write interleaves with the scan.
    fn rebuild_partition_tree(&mut self, p: PartitionId) {
        let Some(q) = self
            .shared
            .merkle
            .lock()
            .as_ref()
            .map(MerkleForest::partitions)
        else {
            return;
        };
        let (start, end) = partition_range(p);
        let mut scratch = MerkleForest::new(q);
        match rebuild_range(
            self.engine.as_ref(),
            &mut scratch,
            start,
            end.as_deref(),
            &self.shared.corruption,
        ) {
            Ok(()) => {
                if let Some(forest) = self.shared.merkle.lock().as_mut() {
                    match scratch.tree(p) {
                        Some(tree) => forest.set(p, tree.clone()),
                        None => forest.clear(p),
                    }
                }
            }
            Err(e) => {
                tracing::error!(partition = p, error = %e, "rebuilding a partition's Merkle tree failed")
            }
        }
    }

    /// Runs on the writer, so no write can slip in between saving and marking.
    fn save_trees_and_mark_clean(&mut self) -> Result<(), StorageError> {
        let mut ops = Vec::new();
        if let Some(forest) = self.shared.merkle.lock().as_ref() {
            for (p, tree) in forest.populated() {
                let mut key = META_MERKLE_PREFIX.to_vec();
                key.extend_from_slice(&p.to_be_bytes());
                ops.push(BatchOp {
                    space: Space::Meta,
                    key,
                    value: postcard::to_stdvec(tree).ok(),
                });
            }
        }
        // Trees of partitions that became empty must not be reloaded.
        let saved = self.engine.scan(
            Space::Meta,
            META_MERKLE_PREFIX,
            prefix_end(META_MERKLE_PREFIX).as_deref(),
            usize::MAX,
        )?;
        for (k, _) in saved {
            if !ops.iter().any(|o| o.key == k) {
                ops.push(BatchOp {
                    space: Space::Meta,
                    key: k,
                    value: None,
                });
            }
        }
        ops.push(BatchOp {
            space: Space::Meta,
            key: META_CLEAN.to_vec(),
            value: Some(b"1".to_vec()),
        });
        self.engine.write(&ops, true)?;
        self.dirty = false;
        Ok(())
    }

    /// Starts the periodic fsync of every write so far; `None` when it already ran (an
    /// engine that never blocks syncs in place).
    fn start_sync(&mut self) -> Option<tokio::task::JoinHandle<Result<(), StorageError>>> {
        // Writes from now on are not covered by this sync.
        self.dirty = false;
        if self.engine.blocking() {
            let engine = self.engine.clone();
            Some(tokio::task::spawn_blocking(move || {
                engine.sync_beside_writes()
            }))
        } else {
            let result = self.engine.sync_beside_writes();
            self.sync_done(result);
            None
        }
    }

    async fn finish_sync(
        &mut self,
        syncing: Option<tokio::task::JoinHandle<Result<(), StorageError>>>,
    ) {
        if let Some(handle) = syncing {
            let result = handle.await.unwrap_or(Err(StorageError::Closed));
            self.sync_done(result);
        }
    }

    fn sync_done(&mut self, result: Result<(), StorageError>) {
        if let Err(e) = result {
            // The writes it covered are still not durable: the next interval retries.
            self.dirty = true;
            tracing::error!(error = %e, "periodic sync failed");
        }
    }

    /// The current record of a key as this batch sees it. A stored record that fails to
    /// decode reads as absent and is moved aside in the same batch: a write or a replica's
    /// merge then replaces it (this is how anti-entropy restores it) instead of failing
    /// on it forever.
    fn read(
        &self,
        state: &mut BatchState,
        space: Space,
        key: &[u8],
    ) -> Result<Option<Object>, StorageError> {
        if let Some(v) = state.overlay.get(&(space, key.to_vec())) {
            return Ok(v.clone());
        }
        let Some(raw) = self.engine.get(space, key)? else {
            return Ok(None);
        };
        match decode_record(&raw) {
            Ok(obj) => Ok(Some(obj)),
            Err(reason) => {
                self.shared.corruption.record(kind_of(space), key, &reason);
                Self::stage_quarantine(state, space, key, raw);
                Ok(None)
            }
        }
    }

    /// Stages moving a corrupt record aside. Its Merkle contribution is unknown (it cannot
    /// be decoded), so a data record's partition tree is rebuilt once the batch commits;
    /// a hint leaves its target's count.
    fn stage_quarantine(state: &mut BatchState, space: Space, key: &[u8], raw: Vec<u8>) {
        state.ops.extend(quarantine_ops(space, key, raw));
        state.overlay.insert((space, key.to_vec()), None);
        match space {
            Space::Data => {
                if let Some(p) = partition_of(key) {
                    state.rebuild.insert(p);
                }
            }
            Space::Hints => {
                if let Some(target) = hint_target(key) {
                    *state.hint_deltas.entry(target).or_insert(0) -= 1;
                }
            }
            Space::Meta => {}
        }
    }

    /// Stages a new record; `was_deleted` tells whether the record it replaces was a
    /// tombstone, to keep the tombstone index (what the reaper scans) in step.
    fn stage(
        state: &mut BatchState,
        space: Space,
        key: Vec<u8>,
        value: Option<Object>,
        was_deleted: bool,
    ) {
        let is_deleted = value.as_ref().is_some_and(Object::is_deleted);
        if space == Space::Data && (is_deleted || was_deleted) {
            let mut index_key = META_TOMBSTONE_PREFIX.to_vec();
            index_key.extend_from_slice(&key);
            let index_value = value
                .as_ref()
                .filter(|o| o.is_deleted())
                .map(|o| o.latest_timestamp_ms().to_be_bytes().to_vec());
            state.ops.push(BatchOp {
                space: Space::Meta,
                key: index_key,
                value: index_value,
            });
        }
        state.ops.push(BatchOp {
            space,
            key: key.clone(),
            value: value.as_ref().map(encode_record),
        });
        state.overlay.insert((space, key), value);
    }

    fn apply(&mut self, state: &mut BatchState, op: Op) -> Result<OpResult, StorageError> {
        match op {
            Op::Coordinate {
                partition,
                key,
                write,
                durable,
            } => {
                if write.epoch != self.engine.reopens() {
                    return Err(StorageError::Engine(
                        "the storage engine reopened while this write was queued; retry it".into(),
                    ));
                }
                let dk = data_key(partition, &key);
                let current = self.read(state, Space::Data, &dk)?.unwrap_or_default();
                let (next, dot) = current.write(WriteRequest {
                    actor: write.actor,
                    min_counter: self.sequence,
                    context: &write.context,
                    value: write.value,
                    timestamp_ms: write.timestamp_ms,
                    mode: write.mode,
                });
                if next.siblings.len() > write.max_siblings {
                    return Err(StorageError::TooManySiblings {
                        count: next.siblings.len(),
                        max: write.max_siblings,
                    });
                }
                self.sequence = self.sequence.max(dot.counter);
                state.durable.push(durable);
                state.merkle.push((
                    partition,
                    key,
                    digest_or_zero(&current),
                    digest_or_zero(&next),
                ));
                Self::stage(
                    state,
                    Space::Data,
                    dk,
                    Some(next.clone()),
                    current.is_deleted(),
                );
                Ok(OpResult::Written(next, dot))
            }
            Op::Mint { write } => {
                let (next, dot) = Object::default().write(WriteRequest {
                    actor: write.actor,
                    min_counter: self.sequence,
                    context: &write.context,
                    value: write.value,
                    timestamp_ms: write.timestamp_ms,
                    mode: write.mode,
                });
                // Only the advanced sequence is written (by `commit`).
                self.sequence = self.sequence.max(dot.counter);
                Ok(OpResult::Written(next, dot))
            }
            Op::Merge {
                partition,
                key,
                incoming,
                mode,
            } => {
                let dk = data_key(partition, &key);
                let current = self.read(state, Space::Data, &dk)?;
                let base = current.clone().unwrap_or_default();
                let merged = base.merge(&incoming, mode);
                let changed = current.as_ref() != Some(&merged)
                    && !(current.is_none() && merged == Object::default());
                if changed {
                    state.merkle.push((
                        partition,
                        key,
                        digest_or_zero(&base),
                        digest_or_zero(&merged),
                    ));
                    Self::stage(
                        state,
                        Space::Data,
                        dk,
                        Some(merged.clone()),
                        base.is_deleted(),
                    );
                }
                Ok(OpResult::Merged(MergeOutcome {
                    object: merged,
                    changed,
                }))
            }
            Op::Reap {
                partition,
                key,
                expected_digest,
            } => {
                let dk = data_key(partition, &key);
                match self.read(state, Space::Data, &dk)? {
                    Some(cur) if cur.is_deleted() && cur.digest() == expected_digest => {
                        state.merkle.push((partition, key, cur.digest(), 0));
                        Self::stage(state, Space::Data, dk, None, true);
                        Ok(OpResult::Done(true))
                    }
                    _ => Ok(OpResult::Done(false)),
                }
            }
            Op::RemoveKeys { partition, keys } => {
                for key in keys {
                    let dk = data_key(partition, &key);
                    if let Some(cur) = self.read(state, Space::Data, &dk)? {
                        state.merkle.push((partition, key, cur.digest(), 0));
                        Self::stage(state, Space::Data, dk, None, cur.is_deleted());
                    }
                }
                Ok(OpResult::Done(true))
            }
            Op::HintMerge { hint, mode } => {
                let hk = hint_key(&hint.target, hint.partition, &hint.key);
                let current = self.read(state, Space::Hints, &hk)?;
                if current.is_none() {
                    *state.hint_deltas.entry(hint.target.clone()).or_insert(0) += 1;
                }
                let merged = current.unwrap_or_default().merge(&hint.object, mode);
                Self::stage(state, Space::Hints, hk, Some(merged), false);
                Ok(OpResult::Done(true))
            }
            Op::HintRemove {
                target,
                partition,
                key,
                expected_digest,
            } => {
                let hk = hint_key(&target, partition, &key);
                match self.read(state, Space::Hints, &hk)? {
                    Some(cur) if cur.digest() == expected_digest => {
                        *state.hint_deltas.entry(target).or_insert(0) -= 1;
                        Self::stage(state, Space::Hints, hk, None, false);
                        Ok(OpResult::Done(true))
                    }
                    _ => Ok(OpResult::Done(false)),
                }
            }
            Op::Meta { key, value } => {
                state.ops.push(BatchOp {
                    space: Space::Meta,
                    key,
                    value,
                });
                Ok(OpResult::Done(true))
            }
            Op::Quarantine { space, key } => {
                if state.overlay.contains_key(&(space, key.clone())) {
                    // Rewritten (or already moved aside) in this batch.
                    return Ok(OpResult::Done(false));
                }
                match self.engine.get(space, &key)? {
                    Some(raw) if space == Space::Meta || decode_record(&raw).is_err() => {
                        Self::stage_quarantine(state, space, &key, raw);
                        Ok(OpResult::Done(true))
                    }
                    // Gone, or rewritten with a good record since it was read.
                    _ => Ok(OpResult::Done(false)),
                }
            }
            Op::Close => Ok(OpResult::Done(true)),
        }
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        let mut state = BatchState {
            ops: Vec::new(),
            overlay: BTreeMap::new(),
            merkle: Vec::new(),
            hint_deltas: BTreeMap::new(),
            durable: Vec::new(),
            rebuild: std::collections::BTreeSet::new(),
        };
        let sequence_before = self.sequence;
        let mut results = Vec::with_capacity(batch.len());
        for p in batch {
            let early = matches!(p.op, Op::Coordinate { .. });
            let r = self.apply(&mut state, p.op);
            results.push((Some(p.reply), r, early));
        }
        if state.ops.is_empty() && self.sequence == sequence_before {
            for (reply, r, _) in results {
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            return;
        }
        if self.sequence != sequence_before {
            state.ops.push(BatchOp {
                space: Space::Meta,
                key: META_SEQUENCE.to_vec(),
                value: Some(self.sequence.to_be_bytes().to_vec()),
            });
        }
        let sync = self.durability == Durability::Fsync;
        let started = std::time::Instant::now();
        let outcome = if sync && !state.durable.is_empty() {
            // Coordinated writes are answered between the write and the fsync, so their
            // coordinators replicate while this replica's fsync runs.
            self.engine.write(&state.ops, false).and_then(|()| {
                for (reply, r, early) in &mut results {
                    if *early
                        && r.is_ok()
                        && let Some(reply) = reply.take()
                    {
                        let _ = reply.send(std::mem::replace(r, Ok(OpResult::Done(true))));
                    }
                }
                self.engine.sync()
            })
        } else {
            self.engine.write(&state.ops, sync)
        };
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            // Every write of the member waited this long: a disk stall (an fsync of the
            // engine's journal, a full write buffer) shows here before it fails requests.
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                ops = state.ops.len(),
                sync,
                "slow storage commit"
            );
        }
        match outcome {
            Ok(()) => {
                self.dirty |= !sync;
                if let Some(forest) = self.shared.merkle.lock().as_mut() {
                    for (p, key, old, new) in &state.merkle {
                        forest.apply(*p, key, key_hash(key), *old, *new);
                    }
                }
                for p in std::mem::take(&mut state.rebuild) {
                    self.rebuild_partition_tree(p);
                }
                let mut counts = self.shared.hint_counts.lock();
                for (target, delta) in state.hint_deltas {
                    let c = counts.entry(target.clone()).or_insert(0);
                    *c = c.saturating_add_signed(delta);
                    if *c == 0 {
                        counts.remove(&target);
                    }
                }
                drop(counts);
                for (reply, r, _) in results {
                    if let Some(reply) = reply {
                        let _ = reply.send(r);
                    }
                }
                for durable in state.durable {
                    let _ = durable.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing of this batch is acknowledged; the sequence may stay advanced,
                // which only skips counters. A reopened engine may hold part of what
                // failed, so the trees are rebuilt from what is actually stored.
                if self.engine.reopens() != self.reopens_seen {
                    self.reopens_seen = self.engine.reopens();
                    self.rebuild_trees();
                }
                tracing::error!(error = %e, ops = state.ops.len(), "write batch failed");
                for (reply, r, _) in results {
                    if let Some(reply) = reply {
                        let _ = reply.send(r.and(Err(e.clone())));
                    }
                }
                for durable in state.durable {
                    let _ = durable.send(Err(e.clone()));
                }
            }
        }
    }
}

fn digest_or_zero(obj: &Object) -> u64 {
    if obj.siblings.is_empty() && obj.context.is_empty() {
        0
    } else {
        obj.digest()
    }
}

#[cfg(test)]
mod tests;
