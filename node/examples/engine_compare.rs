//! Storage engine measurement: fjall 3 (the node's engine) against redb 4, in the same run,
//! through the node's own [`Engine`] trait, for the store's access pattern.
//!
//! ```text
//! cargo run --release -p dynamo-node --example engine_compare
//! ```
//!
//! * keys are `partition (u16 BE) ++ user key` (19 bytes: `Q = 256`, the node's key hash),
//!   values are real key records (`encode_record`: version byte + postcard-encoded sibling
//!   set) holding one 1000-byte random value, ~1.03 KiB each;
//! * writes go as the store's writer does them: for each mutation a read of the current
//!   record, then one atomic batch of all mutations plus the `meta/sequence` key, fsynced
//!   once per batch in `fsync` mode (group commit), left to the OS otherwise;
//! * fjall is the node's [`FjallEngine`]; redb is [`RedbEngine`] below, a complete
//!   implementation of the same trait (what switching would take);
//! * each measurement is a fixed count of operations on fresh directories under /tmp, cut
//!   into 8 chunks; the engines take turns chunk by chunk, so both see the same machine
//!   state (this VM's fsync latency varies from ~0.5 ms to ~4 ms over minutes);
//! * the 200k-key data set is loaded by a child process per engine that exits at the end
//!   without closing anything (a crash as far as the engine can tell), so reopening it
//!   measures crash recovery; both loads run before either engine is reopened, so one
//!   engine's recovery and compaction never overlap the other's load; reads, scans and
//!   disk space are then measured on the recovered engines, taking turns.
//!
//! The whole suite runs `ENGINE_RUNS` times (default 3; about 1.5 minutes each on a
//! 2-core VM) and the table shows the median and every run's value. `ENGINE_KEYS=<n>`
//! changes the data set size (default 200000), `ENGINE_SCALE=<f>` scales the write counts
//! (default 1).

use std::fmt::Write as _;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use dynamo::clock::{ActorId, ConflictMode, Object, VersionVector, WriteRequest};
use dynamo::ring::{key_hash, partition_of_hash};
use dynamo::storage::{BatchOp, Engine, FjallEngine, Space, StorageError, data_key, encode_record};
use rand::seq::SliceRandom;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redb::{ReadableDatabase, TableDefinition};

/// Partitions of the simulated ring (the node's default).
const Q: u32 = 256;
/// Block cache of either engine (the node's default `--cache-mb 64`).
const CACHE_BYTES: u64 = 64 << 20;
const VALUE_BYTES: usize = 1000;
/// The store's largest group commit.
const LOAD_BATCH: usize = 512;

// ---------------------------------------------------------------------------------------
// redb behind the node's Engine trait
// ---------------------------------------------------------------------------------------

type Bin = TableDefinition<'static, &'static [u8], &'static [u8]>;
const TABLES: [Bin; 3] = [
    TableDefinition::new("data"),
    TableDefinition::new("hints"),
    TableDefinition::new("meta"),
];

fn table_of(space: Space) -> Bin {
    TABLES[space as usize]
}

fn redb_err(e: impl std::fmt::Display) -> StorageError {
    StorageError::Engine(e.to_string())
}

/// redb: one copy-on-write B+tree file, a table per [`Space`]. A `sync` batch commits with
/// `Durability::Immediate` (one fsync); otherwise with `Durability::None`, which redb keeps
/// only in this process until the next durable commit: unlike fjall's journal, a killed
/// process loses those batches (so `periodic` would lose up to one interval on kill -9).
pub struct RedbEngine {
    db: redb::Database,
    path: PathBuf,
}

impl RedbEngine {
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<RedbEngine, StorageError> {
        std::fs::create_dir_all(dir).map_err(redb_err)?;
        let path = dir.join("engine.redb");
        let db = redb::Database::builder()
            .set_cache_size(cache_bytes as usize)
            .create(&path)
            .map_err(redb_err)?;
        let tx = db.begin_write().map_err(redb_err)?;
        for t in TABLES {
            tx.open_table(t).map_err(redb_err)?;
        }
        tx.commit().map_err(redb_err)?;
        Ok(RedbEngine { db, path })
    }
}

impl Engine for RedbEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let t = tx.open_table(table_of(space)).map_err(redb_err)?;
        Ok(t.get(key).map_err(redb_err)?.map(|v| v.value().to_vec()))
    }

    fn write(&self, ops: &[BatchOp], sync: bool) -> Result<(), StorageError> {
        let mut tx = self.db.begin_write().map_err(redb_err)?;
        tx.set_durability(if sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })
        .map_err(redb_err)?;
        {
            let mut tables = Vec::new();
            for t in TABLES {
                tables.push(tx.open_table(t).map_err(redb_err)?);
            }
            for op in ops {
                let t = &mut tables[op.space as usize];
                match &op.value {
                    Some(v) => {
                        t.insert(op.key.as_slice(), v.as_slice())
                            .map_err(redb_err)?;
                    }
                    None => {
                        t.remove(op.key.as_slice()).map_err(redb_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(redb_err)
    }

    fn scan(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StorageError> {
        let tx = self.db.begin_read().map_err(redb_err)?;
        let t = tx.open_table(table_of(space)).map_err(redb_err)?;
        let range: (Bound<&[u8]>, Bound<&[u8]>) = (
            Bound::Included(start),
            end.map_or(Bound::Unbounded, Bound::Excluded),
        );
        let mut out = Vec::new();
        for item in t.range::<&[u8]>(range).map_err(redb_err)? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(redb_err)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> Result<(), StorageError> {
        // An empty durable commit makes every earlier non-durable commit durable.
        let tx = self.db.begin_write().map_err(redb_err)?;
        tx.commit().map_err(redb_err)
    }

    fn blocking(&self) -> bool {
        true
    }

    fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

// ---------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fjall,
    Redb,
}

impl Kind {
    const BOTH: [Kind; 2] = [Kind::Fjall, Kind::Redb];
    fn name(self) -> &'static str {
        match self {
            Kind::Fjall => "fjall",
            Kind::Redb => "redb",
        }
    }
    fn parse(s: &str) -> Result<Kind> {
        match s {
            "fjall" => Ok(Kind::Fjall),
            "redb" => Ok(Kind::Redb),
            other => bail!("unknown engine {other}"),
        }
    }
    fn open(self, dir: &Path) -> Result<Arc<dyn Engine>> {
        Ok(match self {
            Kind::Fjall => Arc::new(FjallEngine::open(dir, CACHE_BYTES)?),
            Kind::Redb => Arc::new(RedbEngine::open(dir, CACHE_BYTES)?),
        })
    }
}

/// A bijection on u64 (splitmix64's finaliser): distinct indices give distinct keys.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The stored key of user key number `i` of key set `set`: `partition ++ "k" ++ 16 hex`.
fn stored_key(set: u64, i: u64) -> Vec<u8> {
    let user = format!("k{:016x}", mix(set.wrapping_mul(1 << 40) ^ i));
    data_key(
        partition_of_hash(key_hash(user.as_bytes()), Q),
        user.as_bytes(),
    )
}

/// A key record as the store writes it: one sibling with a random 1000-byte value.
fn record(rng: &mut ChaCha8Rng, counter: u64) -> Vec<u8> {
    let mut value = vec![0u8; VALUE_BYTES];
    rng.fill_bytes(&mut value);
    let (obj, _) = Object::default().write(WriteRequest {
        actor: ActorId(0x5eed_0000_0000_0001),
        min_counter: counter,
        context: &VersionVector::new(),
        value: Some(Bytes::from(value)),
        timestamp_ms: 1_760_000_000_000 + counter,
        mode: ConflictMode::Siblings,
    });
    encode_record(&obj)
}

/// One group commit as the store's writer does it: read each key's current record, then
/// write all records and the sequence number in one atomic batch.
fn commit_batch(
    engine: &dyn Engine,
    keys: &[Vec<u8>],
    rng: &mut ChaCha8Rng,
    seq: &mut u64,
    sync: bool,
) -> Result<()> {
    let mut ops = Vec::with_capacity(keys.len() + 1);
    for k in keys {
        let _current = engine.get(Space::Data, k)?;
        *seq += 1;
        ops.push(BatchOp {
            space: Space::Data,
            key: k.clone(),
            value: Some(record(rng, *seq)),
        });
    }
    ops.push(BatchOp {
        space: Space::Meta,
        key: b"sequence".to_vec(),
        value: Some(seq.to_be_bytes().to_vec()),
    });
    engine.write(&ops, sync)?;
    Ok(())
}

struct Timed {
    ops: u64,
    elapsed: Duration,
    /// Per-call latencies (a batch for writes, a get for reads), sorted.
    lat: Vec<Duration>,
}

impl Timed {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        if self.lat.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.lat.len() as f64 * p).ceil() as usize).clamp(1, self.lat.len()) - 1;
        self.lat[i]
    }
}

/// A write stream into one engine that can be advanced chunk by chunk (so two engines can
/// take turns and see the same machine state).
struct WriteStream {
    set: u64,
    rng: ChaCha8Rng,
    seq: u64,
    next: u64,
    elapsed: Duration,
    lat: Vec<Duration>,
}

impl WriteStream {
    fn new(set: u64) -> WriteStream {
        WriteStream {
            set,
            rng: ChaCha8Rng::seed_from_u64(set),
            seq: 0,
            next: 0,
            elapsed: Duration::ZERO,
            lat: Vec::new(),
        }
    }

    /// Writes the next `count` new keys in group commits of `batch`.
    fn run(&mut self, engine: &dyn Engine, count: u64, batch: usize, sync: bool) -> Result<()> {
        let end = self.next + count;
        let start = Instant::now();
        while self.next < end {
            let n = (end - self.next).min(batch as u64);
            let keys: Vec<Vec<u8>> = (self.next..self.next + n)
                .map(|j| stored_key(self.set, j))
                .collect();
            let t = Instant::now();
            commit_batch(engine, &keys, &mut self.rng, &mut self.seq, sync)?;
            self.lat.push(t.elapsed());
            self.next += n;
        }
        self.elapsed += start.elapsed();
        Ok(())
    }

    fn finish(mut self) -> Timed {
        self.lat.sort();
        Timed {
            ops: self.next,
            elapsed: self.elapsed,
            lat: self.lat,
        }
    }
}

/// Chunks each measurement is cut into; the engines alternate chunk by chunk.
const CHUNKS: u64 = 8;

fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                apparent += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

/// Child process: load `keys` records with durable group commits of 512, report, and exit
/// without closing the engine (a crash as far as the engine can tell).
fn child_load(kind: Kind, dir: &Path, keys: u64) -> Result<()> {
    let engine = kind.open(dir)?;
    let mut w = WriteStream::new(1);
    w.run(engine.as_ref(), keys, LOAD_BATCH, true)?;
    println!("LOAD {}", w.finish().elapsed.as_secs_f64());
    // No drop, no close: buffers and background work are abandoned as in a kill -9.
    std::process::exit(0);
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(label: &str) -> Result<Tmp> {
        let d = std::env::temp_dir().join(format!(
            "dynamo-engine-compare-{}-{label}",
            std::process::id()
        ));
        if d.exists() {
            std::fs::remove_dir_all(&d)?;
        }
        std::fs::create_dir_all(&d)?;
        Ok(Tmp(d))
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    what: String,
    unit: &'static str,
    /// Higher is better (throughput) or lower is better (sizes, times).
    higher_better: bool,
    v: [f64; 2],
    note: [String; 2],
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child-load") {
        let kind = Kind::parse(args.get(2).context("engine")?)?;
        let dir = PathBuf::from(args.get(3).context("dir")?);
        let keys: u64 = args.get(4).context("keys")?.parse()?;
        return child_load(kind, &dir, keys);
    }

    let keys = env_f64("ENGINE_KEYS", 200_000.0) as u64;
    let scale = env_f64("ENGINE_SCALE", 1.0);
    let runs = env_f64("ENGINE_RUNS", 3.0).max(1.0) as usize;
    println!(
        "engine_compare: fjall 3 vs redb 4 through dynamo::storage::Engine; Q = {Q}, records {} bytes, cache {} MiB, {runs} runs",
        record(&mut ChaCha8Rng::seed_from_u64(0), 1).len(),
        CACHE_BYTES >> 20
    );
    let mut all: Vec<Vec<Row>> = Vec::new();
    for run in 1..=runs {
        eprintln!("run {run} of {runs}");
        all.push(run_once(keys, scale)?);
    }
    print!("{}", table(&all));
    Ok(())
}

/// Median of each engine's value over the runs, the per-run values, and the latency notes
/// of the median run.
fn table(all: &[Vec<Row>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n| measurement | fjall (median) | redb (median) | redb / fjall | fjall runs | redb runs | fjall detail (median run) | redb detail (median run) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---|---|---|---|");
    let Some(first) = all.first() else {
        return out;
    };
    for (i, r) in first.iter().enumerate() {
        let mut med = [0.0; 2];
        let mut runs_txt: [String; 2] = Default::default();
        let mut notes: [String; 2] = Default::default();
        for e in 0..2 {
            let mut vals: Vec<(f64, usize)> = all
                .iter()
                .enumerate()
                .map(|(k, rows)| (rows[i].v[e], k))
                .collect();
            runs_txt[e] = vals
                .iter()
                .map(|(v, _)| fmt_num(*v))
                .collect::<Vec<_>>()
                .join(" / ");
            vals.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (m, k) = vals[vals.len() / 2];
            med[e] = m;
            notes[e] = all[k][i].note[e].clone();
        }
        let ratio = med[1] / med[0];
        let better = if (ratio > 1.0) == r.higher_better {
            "redb"
        } else {
            "fjall"
        };
        let _ = writeln!(
            out,
            "| {} | {} {} | {} {} | {:.2} ({} better) | {} | {} | {} | {} |",
            r.what,
            fmt_num(med[0]),
            r.unit,
            fmt_num(med[1]),
            r.unit,
            ratio,
            better,
            runs_txt[0],
            runs_txt[1],
            notes[0],
            notes[1]
        );
    }
    out
}

fn row(what: String, unit: &'static str, higher_better: bool) -> Row {
    Row {
        what,
        unit,
        higher_better,
        v: [0.0; 2],
        note: Default::default(),
    }
}

fn run_once(keys: u64, scale: f64) -> Result<Vec<Row>> {
    let count = |n: f64| ((n * scale) as u64).max(CHUNKS);
    let mut rows: Vec<Row> = Vec::new();

    // (a) group-committed writes with fsync, (b) without. Fresh directories per case; the
    // engines take turns in CHUNKS chunks.
    let write_cases: [(&str, usize, bool, u64); 5] = [
        ("fsync, batch 1", 1, true, count(2_000.0)),
        ("fsync, batch 16", 16, true, count(16_000.0)),
        ("fsync, batch 128", 128, true, count(64_000.0)),
        ("no fsync, batch 1", 1, false, count(20_000.0)),
        ("no fsync, batch 128", 128, false, count(64_000.0)),
    ];
    for (label, batch, sync, n) in write_cases {
        let mut r = row(format!("writes/s, {label} ({n} writes)"), "writes/s", true);
        let tmps = [
            Tmp::new(&format!("w-{label}-fjall").replace([' ', ','], ""))?,
            Tmp::new(&format!("w-{label}-redb").replace([' ', ','], ""))?,
        ];
        let engines = [Kind::Fjall.open(&tmps[0].0)?, Kind::Redb.open(&tmps[1].0)?];
        let mut streams = [
            WriteStream::new(100 + batch as u64),
            WriteStream::new(100 + batch as u64),
        ];
        for c in 0..CHUNKS {
            let part = n / CHUNKS + u64::from(c < n % CHUNKS);
            for i in 0..2 {
                streams[i].run(engines[i].as_ref(), part, batch, sync)?;
            }
        }
        for (i, st) in streams.into_iter().enumerate() {
            let t = st.finish();
            r.v[i] = t.rate();
            r.note[i] = format!(
                "batch p50 {:.2} ms, p99 {:.2} ms",
                t.pct(0.5).as_secs_f64() * 1e3,
                t.pct(0.99).as_secs_f64() * 1e3
            );
            eprintln!(
                "  {} {label}: {:.0} writes/s ({})",
                Kind::BOTH[i].name(),
                r.v[i],
                r.note[i]
            );
        }
        rows.push(r);
    }

    // Load `keys` records in a child that then "crashes"; reopen (crash recovery); scan,
    // read and measure disk space on the recovered engines, taking turns.
    let mut load = row(
        format!("load {keys} keys, fsync batch {LOAD_BATCH} (child process)"),
        "writes/s",
        true,
    );
    let mut recover = row(
        "reopen after the child exited without closing (crash recovery)".into(),
        "ms",
        false,
    );
    let mut tmps: Vec<Tmp> = Vec::new();
    let mut engines: Vec<Arc<dyn Engine>> = Vec::new();
    for (i, kind) in Kind::BOTH.into_iter().enumerate() {
        let tmp = Tmp::new(&format!("load-{}", kind.name()))?;
        let out = Command::new(std::env::current_exe()?)
            .args([
                "--child-load",
                kind.name(),
                &tmp.0.display().to_string(),
                &keys.to_string(),
            ])
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(secs) = stdout
            .lines()
            .find_map(|l| l.strip_prefix("LOAD "))
            .and_then(|s| s.trim().parse::<f64>().ok())
        else {
            bail!(
                "child load of {} failed: {}",
                kind.name(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        load.v[i] = keys as f64 / secs;
        eprintln!("  {} load: {:.0} writes/s", kind.name(), load.v[i]);
        tmps.push(tmp);
    }
    // Both loads first, then both recoveries: an engine recovered (and compacting in the
    // background) in this process must not slow down the other engine's load.
    for (i, kind) in Kind::BOTH.into_iter().enumerate() {
        let t = Instant::now();
        engines.push(kind.open(&tmps[i].0)?);
        recover.v[i] = t.elapsed().as_secs_f64() * 1e3;
        eprintln!("  {} recovery: {:.0} ms", kind.name(), recover.v[i]);
    }

    // Scans, partition by partition, engines alternating; also checks that every
    // acknowledged key survived the crash.
    let mut scans = row(
        format!("range scans: each of the {Q} partitions as one range"),
        "keys/s",
        true,
    );
    let mut found = [0u64; 2];
    let mut logical = 0u64;
    let mut scan_time = [Duration::ZERO; 2];
    let mut scan_lat: [Vec<Duration>; 2] = Default::default();
    for p in 0..Q {
        let start = (p as u16).to_be_bytes();
        let end = (p + 1 < Q).then(|| ((p + 1) as u16).to_be_bytes());
        for i in 0..2 {
            let s = Instant::now();
            let kv = engines[i].scan(
                Space::Data,
                &start,
                end.as_ref().map(|e| &e[..]),
                usize::MAX,
            )?;
            let d = s.elapsed();
            scan_time[i] += d;
            scan_lat[i].push(d);
            found[i] += kv.len() as u64;
            if i == 0 {
                logical += kv
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>();
            }
        }
    }
    for i in 0..2 {
        if found[i] != keys {
            bail!(
                "{}: {} of {keys} acknowledged keys after recovery",
                Kind::BOTH[i].name(),
                found[i]
            );
        }
        scan_lat[i].sort();
        scans.v[i] = found[i] as f64 / scan_time[i].as_secs_f64();
        scans.note[i] = format!(
            "one partition ({} keys): p50 {:.2} ms",
            found[i] / u64::from(Q),
            scan_lat[i][scan_lat[i].len() / 2].as_secs_f64() * 1e3
        );
        recover.note[i] = format!("all {} acknowledged keys present", found[i]);
    }

    // Random point reads, engines alternating in chunks.
    let mut reads = row(
        format!("random point reads ({keys} gets over {keys} keys, 1 thread)"),
        "reads/s",
        true,
    );
    let mut order: Vec<u64> = (0..keys).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(7));
    let chunk = order.len().div_ceil(CHUNKS as usize).max(1);
    let mut read_time = [Duration::ZERO; 2];
    let mut read_lat: [Vec<Duration>; 2] = Default::default();
    for part in order.chunks(chunk) {
        for i in 0..2 {
            let t = Instant::now();
            for &j in part {
                let s = Instant::now();
                let v = engines[i].get(Space::Data, &stored_key(1, j))?;
                read_lat[i].push(s.elapsed());
                if v.is_none() {
                    bail!("{}: key {j} missing", Kind::BOTH[i].name());
                }
            }
            read_time[i] += t.elapsed();
        }
    }
    for i in 0..2 {
        read_lat[i].sort();
        let timed = Timed {
            ops: keys,
            elapsed: read_time[i],
            lat: std::mem::take(&mut read_lat[i]),
        };
        reads.v[i] = timed.rate();
        reads.note[i] = format!(
            "p50 {:.1} µs, p99 {:.1} µs",
            timed.pct(0.5).as_secs_f64() * 1e6,
            timed.pct(0.99).as_secs_f64() * 1e6
        );
    }

    let mut disk = row("disk space after load and recovery".into(), "MiB", false);
    let mut reopen = row("reopen after a clean close".into(), "ms", false);
    for (i, engine) in engines.into_iter().enumerate() {
        engine.sync()?;
        let (apparent, allocated) = dir_bytes(&tmps[i].0);
        disk.v[i] = apparent as f64 / f64::from(1 << 20);
        disk.note[i] = format!(
            "{:.2}× the {:.0} MiB of keys+records; allocated {:.0} MiB; size_bytes() {:.0} MiB",
            apparent as f64 / logical as f64,
            logical as f64 / f64::from(1 << 20),
            allocated as f64 / f64::from(1 << 20),
            engine.size_bytes() as f64 / f64::from(1 << 20)
        );
        drop(engine);
        let t = Instant::now();
        let engine = Kind::BOTH[i].open(&tmps[i].0)?;
        reopen.v[i] = t.elapsed().as_secs_f64() * 1e3;
        drop(engine);
        eprintln!(
            "  {}: reads {:.0}/s, scans {:.0} keys/s, disk {:.0} MiB, clean reopen {:.0} ms",
            Kind::BOTH[i].name(),
            reads.v[i],
            scans.v[i],
            disk.v[i],
            reopen.v[i]
        );
    }
    rows.extend([load, recover, reads, scans, disk, reopen]);
    Ok(rows)
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
