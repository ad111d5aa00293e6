//! The seam between the store and the embedded engine: a few keyspaces with point reads,
//! range scans and atomic write batches. [`FjallEngine`] is the production engine;
//! [`MemoryEngine`] backs the deterministic simulation, where it outlives simulated
//! crashes the way a disk does.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use fjall::AbstractTree;
use parking_lot::Mutex;

use super::StorageError;

/// The engine's keyspaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Key records: `partition (u16 BE) ++ user key`.
    Data,
    /// Hinted writes held for an unreachable member.
    Hints,
    /// The member's own metadata: identity, generation, ring, sequence, Merkle trees.
    Meta,
}

impl Space {
    pub const ALL: [Space; 3] = [Space::Data, Space::Hints, Space::Meta];

    pub fn name(self) -> &'static str {
        match self {
            Space::Data => "data",
            Space::Hints => "hints",
            Space::Meta => "meta",
        }
    }
}

/// One change in an atomic batch: `value: None` removes the key.
#[derive(Clone, Debug)]
pub struct BatchOp {
    pub space: Space,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

pub trait Engine: Send + Sync + 'static {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Applies all ops atomically; with `sync` the batch is on stable storage on return.
    fn write(&self, ops: &[BatchOp], sync: bool) -> Result<(), StorageError>;
    /// Up to `limit` entries with `start <= key < end` (no end: to the keyspace's end).
    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError>;
    /// Makes every earlier write durable.
    fn sync(&self) -> Result<(), StorageError>;
    /// Like [`Engine::sync`], and writes may go on while it runs (for the periodic sync).
    fn sync_beside_writes(&self) -> Result<(), StorageError> {
        self.sync()
    }
    /// Whether the data memtable has grown to where the store should seal it (with
    /// [`Engine::seal_memtable`], off its own thread). An engine that seals by itself, or
    /// has no memtable, says no.
    fn memtable_seal_due(&self) -> bool {
        false
    }
    /// Seals the data memtable for flushing; with `sync_first`, makes the journal durable
    /// beside writes before, so that the flush finds little to sync while it holds the
    /// journal lock (with every batch fsynced there is nothing to gain).
    fn seal_memtable(&self, _sync_first: bool) -> Result<(), StorageError> {
        Ok(())
    }
    /// Whether calls may block on disk I/O (then the store keeps them off async tasks).
    fn blocking(&self) -> bool;
    /// Bytes on disk (or held in memory), approximately.
    fn size_bytes(&self) -> u64;
    /// How many times the engine reopened itself after a failure (its contents may then
    /// include writes that were reported failed).
    fn reopens(&self) -> u64 {
        0
    }
}

/// fjall: an LSM tree with a write-ahead journal; one keyspace per [`Space`]. Every batch
/// reaches the OS before `write` returns (a killed process loses nothing); `sync` batches
/// are also fsynced (a lost machine loses nothing).
///
/// For the periodic sync the engine fsyncs the journal itself, through a descriptor of its
/// own and outside fjall's journal lock: fjall's `persist(SyncAll)` holds that lock for the
/// whole fsync, so every write waited behind the once-a-second fsync (15–60 ms on the
/// benchmark machine). fsync acts on the file, not on the descriptor.
///
/// fjall refuses all writes after a failed journal write or fsync (a full disk, an I/O
/// error) until the database is reopened. The engine then reopens it, so the member
/// recovers by itself once the cause is gone; a reopen recovers from the journal, which may
/// contain the batch whose write was reported failed.
pub struct FjallEngine {
    dir: std::path::PathBuf,
    cache_bytes: u64,
    background_threads: Option<NonZeroUsize>,
    inner: parking_lot::RwLock<Option<FjallInner>>,
    reopens: std::sync::atomic::AtomicU64,
    /// When the last reopen failed: retries are spaced by [`REOPEN_RETRY`].
    failed_reopen_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// The journal file last fsynced, kept open; its lock also serialises fsyncs.
    journal: parking_lot::Mutex<Option<OpenJournal>>,
    /// The memtable the last seal sealed, held until the next seal has returned, so that
    /// it is freed by us: left to fjall, the next rotation's version cleanup freed it while
    /// holding the lock that every read and commit takes (20 to 60 ms of frees for a
    /// memtable of tens of MiB, the member's longest stalls; docs/benchmarks.md).
    retired_memtable: parking_lot::Mutex<Option<Arc<lsm_tree::Memtable>>>,
    reclaimer: MemtableReclaimer,
}

/// Frees retired memtables on a thread of the lowest priority (nice 19). Freed on the
/// thread that seals, a memtable's 20 to 40 ms of frees ran on one CPU while fjall's
/// flush of the next memtable, which the same seal starts, ran on the other: a two-CPU
/// machine had no CPU left for requests for tens of milliseconds at every seal
/// (docs/benchmarks.md). The frees hold no lock, so they can wait for an idle CPU. At most
/// one memtable waits; when the thread falls behind, the sealing thread frees it itself.
struct MemtableReclaimer {
    queue: Option<std::sync::mpsc::SyncSender<Arc<lsm_tree::Memtable>>>,
    /// The thread's id, once it has lowered its priority (what tests look up).
    #[cfg_attr(not(test), allow(dead_code))]
    thread_id: Arc<std::sync::OnceLock<i32>>,
}

/// The niceness of the reclaimer thread: the lowest priority an unprivileged thread can
/// give itself.
const RECLAIMER_NICE: i32 = 19;

impl MemtableReclaimer {
    fn start() -> MemtableReclaimer {
        let (queue, retired) = std::sync::mpsc::sync_channel::<Arc<lsm_tree::Memtable>>(1);
        let thread_id = Arc::new(std::sync::OnceLock::new());
        let id = thread_id.clone();
        let spawned = std::thread::Builder::new()
            .name("dynamo:reclaim".into())
            .spawn(move || {
                // On Linux, PRIO_PROCESS with a thread id sets that thread's niceness.
                let me = rustix::thread::gettid();
                if let Err(e) = rustix::process::setpriority_process(Some(me), RECLAIMER_NICE) {
                    tracing::warn!(error = %e, "cannot lower the memtable reclaimer's priority");
                }
                let _ = id.set(me.as_raw_nonzero().get());
                // Ends when the engine, and with it the queue's sender, is dropped.
                for memtable in retired {
                    drop(memtable);
                }
            });
        let queue = match spawned {
            Ok(_) => Some(queue),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the memtable reclaimer; seals free memtables themselves");
                None
            }
        };
        MemtableReclaimer { queue, thread_id }
    }

    /// Hands `memtable` to the reclaimer, or frees it here when the reclaimer is busy.
    fn retire(&self, memtable: Arc<lsm_tree::Memtable>) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(memtable) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(m))
            | Err(std::sync::mpsc::TrySendError::Disconnected(m)) => drop(m),
        }
    }
}

struct OpenJournal {
    id: u64,
    file: std::fs::File,
}

/// fjall keeps its journals as `<id>.jnl` in the database directory and appends to the one
/// with the highest id; it fsyncs a journal before moving on to the next, so the newest
/// holds every write not yet on stable storage.
fn newest_journal(dir: &Path) -> std::io::Result<Option<(u64, std::path::PathBuf)>> {
    let mut newest: Option<(u64, std::path::PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(best, _)| id > *best) {
            newest = Some((id, entry.path()));
        }
    }
    Ok(newest)
}

/// fjall's directory inside the member's data directory.
const ENGINE_DIR: &str = "engine";

/// How long after a failed reopen the next operation may try again: often enough to
/// recover within a second of the cause going away, rarely enough that a dead disk does not
/// turn every request into a database recovery.
const REOPEN_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// fjall's memtable size, which the data memtables are spread around.
const MEMTABLE_BYTES: u64 = 64 * 1024 * 1024;

/// The memtable size fjall is given for a data keyspace this code creates: above any
/// size the store draws (see [`staggered_memtable_bytes`]), so the store seals its
/// memtables, not fjall; fjall's own rotation is only the backstop.
const FJALL_DATA_MEMTABLE_CAP: u64 = MEMTABLE_BYTES * 2;

const _: () = assert!(FJALL_DATA_MEMTABLE_CAP >= MEMTABLE_BYTES * 3 / 2);

/// A Meta key saying that the data keyspace was created with [`FJALL_DATA_MEMTABLE_CAP`].
/// fjall keeps a keyspace's size from its creation and does not tell it; without this
/// key the keyspace is older, and fjall seals its memtable somewhere in 32–96 MiB.
const META_DATA_MEMTABLE_CAP: &[u8] = b"engine/data-memtable-cap";

/// The size at which a member seals its data memtable for flushing, drawn each time the
/// engine opens: between half and one and a half times fjall's default. While a memtable
/// is flushed the member's commits and reads wait for a while: fjall fsyncs its journal
/// under the journal lock before it flushes, and installs the new table under the tree's
/// version lock, fsyncing the version file. With as many members as replicas every member
/// receives the same writes, so with one size for all, every member flushed within 0.1 s
/// of the others and every replica of every key stalled at once. Staggered, one member
/// flushes at a time and the others make the quorum.
fn staggered_memtable_bytes() -> u64 {
    rand::random_range(MEMTABLE_BYTES / 2..MEMTABLE_BYTES * 3 / 2)
}

/// The same for a data keyspace created before the store sealed memtables itself, whose
/// fjall size is unknown but at least 32 MiB: below that, so the store still seals first.
fn staggered_memtable_bytes_under_old_cap() -> u64 {
    rand::random_range(MEMTABLE_BYTES / 4..MEMTABLE_BYTES / 2)
}

struct FjallInner {
    db: fjall::Database,
    spaces: Vec<fjall::Keyspace>,
    /// Data memtable bytes at which the store seals it (see [`Engine::memtable_seal_due`]).
    seal_data_memtable_at: u64,
}

fn engine_err(e: fjall::Error) -> StorageError {
    StorageError::Engine(e.to_string())
}

impl FjallInner {
    fn open(
        dir: &Path,
        cache_bytes: u64,
        background_threads: Option<NonZeroUsize>,
    ) -> Result<FjallInner, StorageError> {
        let mut builder = fjall::Database::builder(dir.join(ENGINE_DIR)).cache_size(cache_bytes);
        if let Some(threads) = background_threads {
            builder = builder.worker_threads(threads.get());
        }
        let db = builder.open().map_err(engine_err)?;
        // fjall keeps a keyspace's settings from its creation, so only a data keyspace
        // created now gets the large cap.
        let creating_data = !db.keyspace_exists(Space::Data.name());
        let mut spaces = Vec::new();
        for s in Space::ALL {
            spaces.push(
                db.keyspace(s.name(), || {
                    let options = fjall::KeyspaceCreateOptions::default();
                    match s {
                        Space::Data => options.max_memtable_size(FJALL_DATA_MEMTABLE_CAP),
                        Space::Hints | Space::Meta => options,
                    }
                })
                .map_err(engine_err)?,
            );
        }
        let mut inner = FjallInner {
            db,
            spaces,
            seal_data_memtable_at: 0,
        };
        let meta = inner.ks(Space::Meta);
        if creating_data {
            meta.insert(
                META_DATA_MEMTABLE_CAP,
                FJALL_DATA_MEMTABLE_CAP.to_le_bytes(),
            )
            .map_err(engine_err)?;
        }
        // Lost in a crash before the journal reached the disk, the mark makes an engine
        // seal below the old cap: smaller memtables, nothing worse.
        let marked = meta
            .get(META_DATA_MEMTABLE_CAP)
            .map_err(engine_err)?
            .is_some();
        inner.seal_data_memtable_at = if marked {
            staggered_memtable_bytes()
        } else {
            staggered_memtable_bytes_under_old_cap()
        };
        Ok(inner)
    }

    fn ks(&self, s: Space) -> &fjall::Keyspace {
        &self.spaces[s as usize]
    }
}

impl FjallEngine {
    /// The engine with fjall's own count of flush and compaction threads: one per CPU the
    /// process may use, at most four.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<FjallEngine, StorageError> {
        FjallEngine::open_with_threads(dir, cache_bytes, None)
    }

    /// The engine with `background_threads` threads flushing memtables and compacting
    /// tables, fjall's count when `None`. A member that shares its CPUs with others wants
    /// its share: with one per CPU, a member flushing one memtable while compacting its
    /// tables took both CPUs of a two-CPU machine for 100 to 300 ms, and every member's
    /// requests queued behind them (docs/benchmarks.md).
    pub fn open_with_threads(
        dir: &Path,
        cache_bytes: u64,
        background_threads: Option<NonZeroUsize>,
    ) -> Result<FjallEngine, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Engine(format!("create {}: {e}", dir.display())))?;
        let inner = FjallInner::open(dir, cache_bytes, background_threads)?;
        Ok(FjallEngine {
            dir: dir.to_path_buf(),
            cache_bytes,
            background_threads,
            inner: parking_lot::RwLock::new(Some(inner)),
            reopens: std::sync::atomic::AtomicU64::new(0),
            failed_reopen_at: parking_lot::Mutex::new(None),
            journal: parking_lot::Mutex::new(None),
            retired_memtable: parking_lot::Mutex::new(None),
            reclaimer: MemtableReclaimer::start(),
        })
    }

    /// Test hook: seal the data memtable from this many bytes on.
    #[cfg(test)]
    pub(crate) fn seal_data_memtable_at(&self, bytes: u64) {
        if let Some(inner) = self.inner.write().as_mut() {
            inner.seal_data_memtable_at = bytes;
        }
    }

    /// Test hook: tables of the data keyspace on disk (each flush adds one).
    #[cfg(test)]
    pub(crate) fn data_table_count(&self) -> usize {
        self.inner
            .read()
            .as_ref()
            .map_or(0, |inner| inner.ks(Space::Data).table_count())
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&FjallInner) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if self.inner.read().is_none() {
            // A reopen failed earlier. Any operation retries it, not only writes: a write
            // usually starts with a read, so waiting for a write would wait forever.
            self.retry_reopen();
        }
        match self.inner.read().as_ref() {
            Some(inner) => f(inner),
            None => Err(StorageError::Engine(
                "the storage engine is being reopened".into(),
            )),
        }
    }

    /// After a poisoning failure: drop the database and open it again (recovering from
    /// its journal). Fails while the cause persists; later operations retry it.
    fn reopen(&self) {
        let mut guard = self.inner.write();
        drop(guard.take());
        self.open_into(&mut guard);
    }

    /// Retries a failed reopen, at most once per [`REOPEN_RETRY`].
    fn retry_reopen(&self) {
        let mut guard = self.inner.write();
        if guard.is_some() {
            return; // another operation reopened it meanwhile
        }
        let due = self
            .failed_reopen_at
            .lock()
            .is_none_or(|at| at.elapsed() >= REOPEN_RETRY);
        if due {
            self.open_into(&mut guard);
        }
    }

    fn open_into(&self, slot: &mut Option<FjallInner>) {
        *self.journal.lock() = None;
        match FjallInner::open(&self.dir, self.cache_bytes, self.background_threads) {
            Ok(inner) => {
                *slot = Some(inner);
                *self.failed_reopen_at.lock() = None;
                self.reopens
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::warn!(dir = %self.dir.display(), "storage engine reopened after a write failure");
            }
            Err(e) => {
                *self.failed_reopen_at.lock() = Some(std::time::Instant::now());
                tracing::error!(dir = %self.dir.display(), error = %e, "reopening the storage engine failed; will retry")
            }
        }
    }

    fn write_inner(&self, ops: &[BatchOp], sync: bool) -> Result<(), fjall::Error> {
        if self.inner.read().is_none() {
            self.retry_reopen();
        }
        let guard = self.inner.read();
        let inner = guard.as_ref().ok_or(fjall::Error::Poisoned)?;
        // fjall's default for a batch: its journal bytes reach the OS on commit.
        let mut batch = inner.db.batch();
        if sync {
            batch = batch.durability(Some(fjall::PersistMode::SyncAll));
        }
        for op in ops {
            match &op.value {
                Some(v) => batch.insert(inner.ks(op.space), op.key.as_slice(), v.as_slice()),
                None => batch.remove(inner.ks(op.space), op.key.as_slice()),
            }
        }
        batch.commit()
    }

    /// The journal's buffered bytes go to the OS under fjall's lock (a copy and a
    /// `write`); the fsync happens outside it.
    fn sync_beside_writes_inner(&self) -> Result<(), fjall::Error> {
        {
            let guard = self.inner.read();
            let inner = guard.as_ref().ok_or(fjall::Error::Poisoned)?;
            inner.db.persist(fjall::PersistMode::Buffer)?;
        }
        self.fsync_journal()
    }

    fn fsync_journal(&self) -> Result<(), fjall::Error> {
        let journal_dir = self.dir.join(ENGINE_DIR);
        let mut open = self.journal.lock();
        let Some((id, path)) = newest_journal(&journal_dir)? else {
            // Not fjall's layout as we know it: let fjall fsync, under its lock.
            drop(open);
            let guard = self.inner.read();
            let inner = guard.as_ref().ok_or(fjall::Error::Poisoned)?;
            return inner.db.persist(fjall::PersistMode::SyncAll);
        };
        let file = match open.take() {
            Some(journal) if journal.id == id => journal.file,
            _ => std::fs::File::open(&path)?,
        };
        let synced = file.sync_all();
        *open = Some(OpenJournal { id, file });
        Ok(synced?)
    }
}

impl Engine for FjallEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.with(|inner| {
            Ok(inner
                .ks(space)
                .get(key)
                .map_err(engine_err)?
                .map(|v| v.to_vec()))
        })
    }

    fn write(&self, ops: &[BatchOp], sync: bool) -> Result<(), StorageError> {
        match self.write_inner(ops, sync) {
            Ok(()) => Ok(()),
            Err(e) => {
                // A failed journal write or fsync poisons the database (every later write
                // fails), so any write failure reopens it.
                let err = engine_err(e);
                if self.inner.read().is_some() {
                    self.reopen();
                }
                Err(err)
            }
        }
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.with(|inner| {
            let range: (Bound<&[u8]>, Bound<&[u8]>) = (
                Bound::Included(start),
                end.map_or(Bound::Unbounded, Bound::Excluded),
            );
            let mut out = Vec::new();
            for guard in inner.ks(space).range::<&[u8], _>(range) {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = guard.into_inner().map_err(engine_err)?;
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(out)
        })
    }

    fn sync(&self) -> Result<(), StorageError> {
        let result = self.with(|inner| {
            inner
                .db
                .persist(fjall::PersistMode::SyncAll)
                .map_err(engine_err)
        });
        if result.is_err() && self.inner.read().is_some() {
            self.reopen();
        }
        result
    }

    fn sync_beside_writes(&self) -> Result<(), StorageError> {
        if self.inner.read().is_none() {
            self.retry_reopen();
        }
        let result = self.sync_beside_writes_inner().map_err(engine_err);
        if result.is_err() && self.inner.read().is_some() {
            self.reopen();
        }
        result
    }

    fn memtable_seal_due(&self) -> bool {
        self.inner.read().as_ref().is_some_and(|inner| {
            inner.ks(Space::Data).tree.active_memtable().size() >= inner.seal_data_memtable_at
        })
    }

    fn seal_memtable(&self, sync_first: bool) -> Result<(), StorageError> {
        let started = std::time::Instant::now();
        if sync_first {
            // Twice: the second fsync covers what was written during the first, leaving
            // fjall only the last few milliseconds of writes to sync under its lock.
            self.sync_beside_writes()?;
            self.sync_beside_writes()?;
        }
        let synced_ms = started.elapsed().as_millis() as u64;
        let sealed = self.with(|inner| {
            let data = inner.ks(Space::Data);
            let memtable = data.tree.active_memtable();
            let rotated = data.rotate_memtable().map_err(engine_err)?;
            Ok(rotated.then_some(memtable))
        });
        let sealed_ms = started.elapsed().as_millis() as u64;
        let result = match sealed {
            Ok(Some(memtable)) => {
                // fjall has let go of the previous memtable by now (the rotation cleaned up
                // the versions that held it), so the reclaimer frees it, outside fjall's
                // locks.
                let previous = self.retired_memtable.lock().replace(memtable);
                if let Some(previous) = previous {
                    self.reclaimer.retire(previous);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                if self.inner.read().is_some() {
                    self.reopen();
                }
                Err(e)
            }
        };
        tracing::debug!(
            synced_ms,
            sealed_ms,
            took_ms = started.elapsed().as_millis() as u64,
            "sealed the data memtable for flushing"
        );
        result
    }

    fn blocking(&self) -> bool {
        true
    }

    fn size_bytes(&self) -> u64 {
        self.with(|inner| Ok(inner.db.disk_space().unwrap_or(0)))
            .unwrap_or(0)
    }

    fn reopens(&self) -> u64 {
        self.reopens.load(std::sync::atomic::Ordering::SeqCst)
    }
}

type SpaceMap = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory engine. Clones share the same data, so a simulated member can "crash" and
/// reopen the same disk. Every write is immediately durable.
#[derive(Clone, Default)]
pub struct MemoryEngine {
    spaces: Arc<Mutex<[SpaceMap; 3]>>,
}

impl MemoryEngine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Loses everything, as a replaced disk would.
    pub fn wipe(&self) {
        *self.spaces.lock() = Default::default();
    }
}

impl Engine for MemoryEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.spaces.lock()[space as usize].get(key).cloned())
    }

    fn write(&self, ops: &[BatchOp], _sync: bool) -> Result<(), StorageError> {
        let mut spaces = self.spaces.lock();
        for op in ops {
            let map = &mut spaces[op.space as usize];
            match &op.value {
                Some(v) => {
                    map.insert(op.key.clone(), v.clone());
                }
                None => {
                    map.remove(&op.key);
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let spaces = self.spaces.lock();
        let range: (Bound<&[u8]>, Bound<&[u8]>) = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        Ok(spaces[space as usize]
            .range::<[u8], _>(range)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn sync(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn blocking(&self) -> bool {
        false
    }

    fn size_bytes(&self) -> u64 {
        let spaces = self.spaces.lock();
        spaces
            .iter()
            .flat_map(|m| m.iter())
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn put(engine: &FjallEngine, key: &[u8], value: &[u8], sync: bool) {
        let op = BatchOp {
            space: Space::Data,
            key: key.to_vec(),
            value: Some(value.to_vec()),
        };
        engine.write(&[op], sync).unwrap();
    }

    /// Members flush at different points of the same stream of writes.
    #[test]
    fn members_draw_memtable_sizes_spread_around_fjalls() {
        let sizes: Vec<u64> = (0..200).map(|_| staggered_memtable_bytes()).collect();
        assert!(
            sizes
                .iter()
                .all(|s| (MEMTABLE_BYTES / 2..MEMTABLE_BYTES * 3 / 2).contains(s))
        );
        let (low, high) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        // 200 uniform draws all within a quarter of the range: about 4^-199.
        assert!(high - low > MEMTABLE_BYTES / 4, "{low}..{high}");
    }

    fn seal_size(engine: &FjallEngine) -> u64 {
        engine.inner.read().as_ref().unwrap().seal_data_memtable_at
    }

    /// A data keyspace this code creates gets fjall's large cap and a mark saying so, and
    /// the store seals below the cap; one created before (no mark, a cap of 32 MiB or
    /// more) is sealed below 32 MiB, so the store, not fjall, seals either.
    #[test]
    fn the_store_seals_below_fjalls_cap_for_new_and_old_keyspaces() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), 8 << 20).unwrap();
        assert!((MEMTABLE_BYTES / 2..MEMTABLE_BYTES * 3 / 2).contains(&seal_size(&engine)));
        engine
            .write(
                &[BatchOp {
                    space: Space::Meta,
                    key: META_DATA_MEMTABLE_CAP.to_vec(),
                    value: None,
                }],
                true,
            )
            .unwrap();
        drop(engine);
        let old = FjallEngine::open(dir.path(), 8 << 20).unwrap();
        assert!((MEMTABLE_BYTES / 4..MEMTABLE_BYTES / 2).contains(&seal_size(&old)));
        assert_eq!(old.get(Space::Meta, META_DATA_MEMTABLE_CAP).unwrap(), None);
    }

    /// Sealing syncs the journal, hands the memtable to fjall's flush and leaves every
    /// record readable.
    #[test]
    fn a_sealed_memtable_is_flushed_and_its_records_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), 8 << 20).unwrap();
        engine.seal_data_memtable_at(64 << 10);
        assert!(!engine.memtable_seal_due());
        for i in 0..100u32 {
            put(&engine, &i.to_be_bytes(), &[i as u8; 1024], false);
        }
        assert!(engine.memtable_seal_due());
        assert_eq!(engine.data_table_count(), 0);
        engine.seal_memtable(true).unwrap();
        assert!(!engine.memtable_seal_due());
        assert!(engine.journal.lock().is_some(), "the journal was fsynced");
        wait_for_tables(&engine, 1);
        for i in 0..100u32 {
            assert_eq!(
                engine.get(Space::Data, &i.to_be_bytes()).unwrap(),
                Some(vec![i as u8; 1024])
            );
        }
    }

    fn data_memtable(engine: &FjallEngine) -> Arc<lsm_tree::Memtable> {
        engine
            .inner
            .read()
            .as_ref()
            .unwrap()
            .ks(Space::Data)
            .tree
            .active_memtable()
    }

    /// Polls `done` until it holds, failing with `what` after 20 s.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    fn wait_for_tables(engine: &FjallEngine, tables: usize) {
        wait_until("the memtable was never flushed", || {
            engine.data_table_count() >= tables
        });
    }

    #[test]
    fn the_engine_frees_a_flushed_memtable_itself_after_the_next_seal() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), 8 << 20).unwrap();
        for i in 0..100u32 {
            put(&engine, &i.to_be_bytes(), &[1; 1024], false);
        }
        let first = data_memtable(&engine);
        engine.seal_memtable(false).unwrap();
        let retired_id =
            |engine: &FjallEngine| engine.retired_memtable.lock().as_ref().map(|m| m.id());
        assert_eq!(
            retired_id(&engine),
            Some(first.id()),
            "the engine holds what it sealed"
        );
        wait_for_tables(&engine, 1);
        for i in 0..100u32 {
            put(&engine, &i.to_be_bytes(), &[2; 1024], false);
        }
        let second = data_memtable(&engine);
        // Flushed, the first memtable is still held by fjall's older versions, which its
        // next rotation cleans up under the lock that reads and commits take; and by the
        // engine.
        assert!(Arc::strong_count(&first) >= 3);
        engine.seal_memtable(false).unwrap();
        assert_eq!(retired_id(&engine), Some(second.id()));
        // fjall cleaned up the versions holding the first memtable during the second
        // rotation and the engine handed it to its reclaimer, which let go of it: only
        // this test still holds it, so without the test the reclaimer's drop was the
        // last, outside fjall's locks.
        wait_until("the reclaimer never let go of the memtable", || {
            Arc::strong_count(&first) == 1
        });
        // It runs at the lowest priority, so its frees wait for an idle CPU.
        let tid = *engine
            .reclaimer
            .thread_id
            .get()
            .expect("set before reclaiming");
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // Fields after the command (in parentheses): state is field 3, nice field 19.
        let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
        let nice: i32 = after_comm.split(' ').nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, RECLAIMER_NICE);
        wait_for_tables(&engine, 2);
        for i in 0..100u32 {
            assert_eq!(
                engine.get(Space::Data, &i.to_be_bytes()).unwrap(),
                Some(vec![2; 1024])
            );
        }
    }

    fn journal_holding(engine: &FjallEngine, marker: &[u8]) -> Option<u64> {
        let dir = engine.dir.join(ENGINE_DIR);
        std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                let id = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".jnl")?
                    .parse()
                    .ok()?;
                // fjall deletes a journal in the background once its memtables are
                // flushed; one gone between listing and reading held no latest write.
                let bytes = match std::fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                    Err(e) => panic!("reading {}: {e}", path.display()),
                };
                bytes
                    .windows(marker.len())
                    .any(|w| w == marker)
                    .then_some(id)
            })
            .max()
    }

    /// Periodic durability acknowledges a write once it reaches the OS: it must not stay
    /// in fjall's buffer, where a killed process would lose it.
    #[test]
    fn a_batch_reaches_the_os_before_write_returns() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), 8 << 20).unwrap();
        put(&engine, b"k", b"small-value-marker-1", false);
        assert!(journal_holding(&engine, b"small-value-marker-1").is_some());
    }

    /// The periodic sync fsyncs the journal fjall is appending to, also after fjall moved to a new
    /// one. (That the fsync reaches the disk, and its failure is never acknowledged, is
    /// tests/disk.rs's fsync test.)
    #[test]
    fn sync_picks_the_journal_holding_the_latest_write() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), 8 << 20).unwrap();
        put(&engine, b"a", b"before-rotation-marker", false);
        let first = journal_holding(&engine, b"before-rotation-marker").unwrap();
        // fjall starts a new journal at a flush once the current one holds 64 MB; the
        // values do not compress, so the journal holds them whole.
        let mut x = 0x9E37_79B9_7F4A_7C15_u64;
        for i in 0..66u32 {
            let value: Vec<u8> = (0..(1 << 17))
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect();
            put(&engine, &i.to_be_bytes(), &value, false);
        }
        engine
            .with(|inner| {
                inner
                    .ks(Space::Data)
                    .rotate_memtable_and_wait()
                    .map_err(engine_err)
            })
            .unwrap();
        put(&engine, b"b", b"after-rotation-marker", false);
        let newest = journal_holding(&engine, b"after-rotation-marker").unwrap();
        assert!(newest > first, "fjall moved to a new journal");
        engine.sync_beside_writes().unwrap();
        let synced = engine.journal.lock().as_ref().map(|j| j.id);
        assert_eq!(synced, Some(newest));
    }
}
