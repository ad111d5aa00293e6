//! A YCSB-style load generator: `dynamo bench`, and the engine behind the side-by-side
//! comparison with other stores (`bench/`).
//!
//! Workloads (YCSB's core mixes): `a` 50% reads / 50% updates, `b` 95/5, `c` reads only,
//! `write` updates only; keys chosen uniformly or zipfian (YCSB's scrambled zipfian, so
//! hot keys are spread over the ring). Two loop models:
//! * closed loop: `concurrency` workers each send the next request when the last answers
//!   (measures peak throughput);
//! * fixed rate (open loop): requests are scheduled at `rate` per second regardless of
//!   answers, over at most `concurrency` outstanding requests (wrk2's model), and each
//!   latency is measured from its *scheduled* start, so a stall shows up in the
//!   percentiles instead of silently lowering the load (no coordinated omission).
//!
//! Every run is bounded in time and in operations.

#[cfg(feature = "cassandra")]
mod cassandra;
mod http;
mod peers;
mod target;
mod zipf;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::sync::mpsc;

#[cfg(feature = "cassandra")]
pub use cassandra::CassandraTarget;
pub use peers::{EtcdTarget, NginxTarget};
pub use target::{DynamoTarget, Target, TargetError};
pub use zipf::KeyChooser;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// Reads only.
    C,
    /// Updates only.
    Write,
}

impl Workload {
    fn read_fraction(self) -> f64 {
        match self {
            Workload::A => 0.5,
            Workload::B => 0.95,
            Workload::C => 1.0,
            Workload::Write => 0.0,
        }
    }
}

/// The store a run drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// dynamo-rs over its HTTP API.
    Dynamo,
    /// etcd v3 over its JSON gRPC gateway (linearizable reads).
    Etcd,
    /// Apache Cassandra over CQL, QUORUM reads and writes (needs the `cassandra` feature).
    Cassandra,
    /// nginx serving one static file for every key (reads only: workload c).
    Nginx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipfian,
}

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub workload: Workload,
    pub distribution: Distribution,
    pub records: u64,
    pub value_size: usize,
    pub concurrency: usize,
    pub duration: Duration,
    /// Upper bound on operations (besides the duration).
    pub max_ops: u64,
    /// Fixed rate in operations per second (open loop); `None` = closed loop.
    pub rate: Option<u64>,
    pub seed: u64,
}

/// Latency percentiles of one operation type, in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OpStats {
    pub count: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Operations whose scheduled start fell into one `TIMELINE_WINDOW` of the run: where in
/// time a tail comes from (one stall, or spread out), to lay beside the servers' logs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Window {
    /// The window's start, milliseconds since the Unix epoch.
    pub start_unix_ms: u64,
    pub ops: u64,
    pub errors: u64,
    /// The slowest successful operation scheduled in the window.
    pub max_us: u64,
}

pub const TIMELINE_WINDOW: Duration = Duration::from_millis(10);

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub config: Config,
    pub elapsed_s: f64,
    pub ops: u64,
    pub errors: u64,
    pub throughput_ops_s: f64,
    pub read: OpStats,
    pub update: OpStats,
    pub all: OpStats,
    /// Written only on request (`dynamo bench --timeline`), not with the report.
    #[serde(skip)]
    pub timeline: Vec<Window>,
}

struct Recorder {
    read: Histogram<u64>,
    update: Histogram<u64>,
    read_errors: u64,
    update_errors: u64,
    timeline: Vec<Window>,
}

impl Recorder {
    fn record(&mut self, is_read: bool, ok: bool, micros: u64, window: usize) {
        let (hist, errors) = if is_read {
            (&mut self.read, &mut self.read_errors)
        } else {
            (&mut self.update, &mut self.update_errors)
        };
        if ok {
            let _ = hist.record(micros.min(60_000_000));
        } else {
            *errors += 1;
        }
        if let Some(w) = self.timeline.get_mut(window) {
            w.ops += 1;
            if ok {
                w.max_us = w.max_us.max(micros);
            } else {
                w.errors += 1;
            }
        }
    }
}

/// Empty windows covering `duration` from `start_unix_ms` (plus one for the last partial).
fn timeline(start_unix_ms: u64, duration: Duration) -> Vec<Window> {
    let windows = duration.as_millis() / TIMELINE_WINDOW.as_millis() + 1;
    (0..windows as u64)
        .map(|i| Window {
            start_unix_ms: start_unix_ms + i * TIMELINE_WINDOW.as_millis() as u64,
            ..Window::default()
        })
        .collect()
}

/// The timeline as CSV, one line per window.
pub fn timeline_csv(timeline: &[Window]) -> String {
    let mut out = String::from("start_unix_ms,ops,errors,max_us\n");
    for w in timeline {
        out.push_str(&format!(
            "{},{},{},{}\n",
            w.start_unix_ms, w.ops, w.errors, w.max_us
        ));
    }
    out
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

fn stats(h: &Histogram<u64>, errors: u64) -> OpStats {
    if h.is_empty() {
        return OpStats {
            errors,
            ..Default::default()
        };
    }
    OpStats {
        count: h.len(),
        errors,
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
    }
}

pub fn key_name(i: u64) -> String {
    format!("user{i:012}")
}

fn value_for(rng: &mut ChaCha8Rng, size: usize) -> Bytes {
    let mut v = vec![0u8; size];
    rng.fill(&mut v[..]);
    Bytes::from(v)
}

/// Writes every record once (the YCSB load phase), `concurrency` at a time.
pub async fn load(
    target: Arc<dyn Target>,
    records: u64,
    value_size: usize,
    concurrency: usize,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Result<Duration, TargetError> {
    let next = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency.max(1) {
        let (target, next, progress) = (target.clone(), next.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(w as u64);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= records {
                    return Ok::<(), TargetError>(());
                }
                let mut attempts = 0;
                loop {
                    match target
                        .update(
                            i as usize % target.lanes().max(1),
                            &key_name(i),
                            value_for(&mut rng, value_size),
                        )
                        .await
                    {
                        Ok(()) => break,
                        Err(e) if attempts < 5 => {
                            attempts += 1;
                            tracing::debug!(error = %e, "load write failed; retrying");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                progress(i + 1);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| TargetError::Other(e.to_string()))??;
    }
    Ok(started.elapsed())
}

/// Runs one workload against `target`. `progress` is told the operations done so far.
pub async fn run(
    target: Arc<dyn Target>,
    config: Config,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> Report {
    let start_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let recorder = Arc::new(Mutex::new(Recorder {
        read: histogram(),
        update: histogram(),
        read_errors: 0,
        update_errors: 0,
        timeline: timeline(start_unix_ms, config.duration),
    }));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let chooser = Arc::new(KeyChooser::new(config.distribution, config.records));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let deadline = started + config.duration;
    let lanes = target.lanes().max(1);

    let one = {
        let (target, recorder, chooser, done, progress) = (
            target.clone(),
            recorder.clone(),
            chooser.clone(),
            done.clone(),
            progress.clone(),
        );
        let cfg = config.clone();
        move |rng: &mut ChaCha8Rng, scheduled: Instant, lane: usize| {
            let is_read = rng.random_bool(cfg.workload.read_fraction());
            let key = key_name(chooser.next(rng));
            let value = if is_read {
                Bytes::new()
            } else {
                value_for(rng, cfg.value_size)
            };
            let (target, recorder, done, progress) = (
                target.clone(),
                recorder.clone(),
                done.clone(),
                progress.clone(),
            );
            async move {
                let result = if is_read {
                    target.read(lane, &key).await
                } else {
                    target.update(lane, &key, value).await
                };
                let micros = scheduled.elapsed().as_micros().max(1) as u64;
                let window = (scheduled.saturating_duration_since(started).as_millis()
                    / TIMELINE_WINDOW.as_millis()) as usize;
                recorder
                    .lock()
                    .record(is_read, result.is_ok(), micros, window);
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(n);
            }
        }
    };

    match config.rate {
        None => {
            let next_lane = Arc::new(AtomicU64::new(0));
            let mut workers = Vec::new();
            for w in 0..config.concurrency.max(1) {
                let one = one.clone();
                let (done, stop, next_lane) = (done.clone(), stop.clone(), next_lane.clone());
                let (seed, max_ops) = (config.seed, config.max_ops);
                workers.push(tokio::spawn(async move {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(w as u64 * 7919));
                    while Instant::now() < deadline
                        && done.load(Ordering::Relaxed) < max_ops
                        && !stop.load(Ordering::Relaxed)
                    {
                        let lane =
                            (next_lane.fetch_add(1, Ordering::Relaxed) % lanes as u64) as usize;
                        one(&mut rng, Instant::now(), lane).await;
                    }
                }));
            }
            for w in workers {
                let _ = w.await;
            }
        }
        Some(rate) => {
            // Like wrk2: at most `concurrency` ops are outstanding, so the client holds a
            // fixed set of connections as a pooled application would, and an op whose
            // scheduled time comes while all of its lane's are busy waits for one, the
            // wait counting in its latency. (Starting every op on time with its own
            // connection turned one stall of the server into a burst of hundreds of
            // connects.) The bound is per lane, a pool per member: with one shared pool,
            // the ops due at a member that stalled for 40 ms took every slot, and ops for
            // the healthy members waited behind them, so one member's stall showed as the
            // whole cluster's.
            // Each lane has `per_lane` workers taking the due times from the lane's queue in
            // order. (A task per op waiting on a lane semaphore bounded the requests too,
            // but past capacity it held every op not yet sent, its value included: 300,000
            // tasks after 15 s at 20,000 ops/s, and the generator's churn took CPU from the
            // members on the same machine, so the throughput measured there fell by a third.
            // A due time in a queue is 16 bytes, and the op is built when it is sent.)
            let per_lane = config.concurrency.max(1).div_ceil(lanes);
            let mut lane_queues = Vec::with_capacity(lanes);
            let mut workers = Vec::with_capacity(lanes * per_lane);
            for lane in 0..lanes {
                // Unbounded, so a stalled lane never holds up the dispatcher and with it the
                // other lanes; bounded in practice by the schedule (duration and max_ops).
                let (lane_tx, lane_rx) = mpsc::unbounded_channel::<Instant>();
                let lane_rx = Arc::new(tokio::sync::Mutex::new(lane_rx));
                lane_queues.push(lane_tx);
                for w in 0..per_lane {
                    let (one, lane_rx) = (one.clone(), lane_rx.clone());
                    let seed = config
                        .seed
                        .wrapping_add(((lane * per_lane + w) as u64).wrapping_mul(7919));
                    workers.push(tokio::spawn(async move {
                        let mut rng = ChaCha8Rng::seed_from_u64(seed);
                        loop {
                            // The lock is fair, so the lane's ops are sent in the order due.
                            let due = lane_rx.lock().await.recv().await;
                            let Some(scheduled) = due else { break };
                            one(&mut rng, scheduled, lane).await;
                        }
                    }));
                }
            }
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            // The schedule is paced by a thread of its own: tokio's timers tick in whole
            // milliseconds and fire up to a tick late, and as latency counts from the
            // scheduled time, that lateness was charged to the store (a read that took
            // 0.3 ms measured 2 ms at 300 ops/s). A thread's sleep ends within tens of µs.
            let max_ops = config.max_ops;
            // The pacer hands each due time straight to its lane's queue (an unbounded send
            // never blocks), and the lanes' senders close with it, which ends the workers.
            let pacer = std::thread::spawn(move || {
                let mut i: u64 = 0;
                loop {
                    let scheduled = started + interval.mul_f64(i as f64);
                    if scheduled >= deadline || i >= max_ops {
                        break;
                    }
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    // The times are fixed by `i`, so the schedule does not drift.
                    let lane = (i % lanes as u64) as usize;
                    if lane_queues[lane].send(scheduled).is_err() {
                        break;
                    }
                    i += 1;
                }
            });
            let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
            for w in workers {
                let _ = w.await;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut r = recorder.lock();
    let mut all = r.read.clone();
    let _ = all.add(&r.update);
    let errors = r.read_errors + r.update_errors;
    let ok = all.len();
    Report {
        target: target.name(),
        config,
        elapsed_s: elapsed,
        ops: ok + errors,
        errors,
        throughput_ops_s: ok as f64 / elapsed.max(1e-9),
        read: stats(&r.read, r.read_errors),
        update: stats(&r.update, r.update_errors),
        all: stats(&all, errors),
        timeline: std::mem::take(&mut r.timeline),
    }
}

/// The report as a human-readable table.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "target                     workload  rate       ops/s    p50 ms   p99 ms  p99.9 ms  errors\n",
    );
    for r in reports {
        let rate = r
            .config
            .rate
            .map_or("closed".to_string(), |r| r.to_string());
        out.push_str(&format!(
            "{:<26} {:<8} {:>6} {:>11.0} {:>9.3} {:>8.3} {:>9.3} {:>7}\n",
            r.target,
            format!("{:?}", r.config.workload).to_lowercase(),
            rate,
            r.throughput_ops_s,
            r.all.p50_us as f64 / 1000.0,
            r.all.p99_us as f64 / 1000.0,
            r.all.p999_us as f64 / 1000.0,
            r.errors
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::transport::BoxFuture;

    /// A store whose every operation takes `latency`, recording the most operations it
    /// ever had in progress at once.
    struct SlowStore {
        latency: Duration,
        in_progress: AtomicU64,
        most_in_progress: AtomicU64,
    }

    impl SlowStore {
        fn op(&self) -> BoxFuture<'_, Result<(), TargetError>> {
            Box::pin(async move {
                let now = self.in_progress.fetch_add(1, Ordering::SeqCst) + 1;
                self.most_in_progress.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(self.latency).await;
                self.in_progress.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    impl Target for SlowStore {
        fn name(&self) -> String {
            "slow".into()
        }
        fn read<'a>(
            &'a self,
            _lane: usize,
            _key: &'a str,
        ) -> BoxFuture<'a, Result<(), TargetError>> {
            self.op()
        }
        fn update<'a>(
            &'a self,
            _lane: usize,
            _key: &'a str,
            _value: Bytes,
        ) -> BoxFuture<'a, Result<(), TargetError>> {
            self.op()
        }
    }

    /// 100 operations due over 0.5 s against a store that serves 2 at a time in 20 ms
    /// each, so at most 100 per second: the schedule falls behind, and the i-th operation
    /// cannot finish before 10·i + 20 ms, 5·i + 20 ms after it was due.
    fn falling_behind() -> (Arc<SlowStore>, Config) {
        let store = Arc::new(SlowStore {
            latency: Duration::from_millis(20),
            in_progress: AtomicU64::new(0),
            most_in_progress: AtomicU64::new(0),
        });
        let config = Config {
            workload: Workload::A,
            distribution: Distribution::Uniform,
            records: 100,
            value_size: 16,
            concurrency: 2,
            duration: Duration::from_millis(500),
            max_ops: 1_000,
            rate: Some(200),
            seed: 1,
        };
        (store, config)
    }

    #[tokio::test]
    async fn fixed_rate_keeps_concurrency_outstanding_and_counts_the_queueing_in_latency() {
        let (store, config) = falling_behind();
        let report = run(store.clone(), config, |_| {}).await;
        assert_eq!(report.ops, 100);
        assert_eq!(report.errors, 0);
        assert_eq!(store.most_in_progress.load(Ordering::SeqCst), 2);
        // The last operations waited about half a second for a free slot; measured from
        // when they were sent instead of when they were due, they would show 20 ms.
        assert!(
            report.all.max_us >= 500_000,
            "latency is measured from the scheduled start: max {} µs",
            report.all.max_us
        );
        assert!(report.all.p99_us >= 480_000, "p99 {} µs", report.all.p99_us);
    }

    /// Two lanes (members): lane 0's operations hang until lane 1 has served 20, as if
    /// its member had stalled. Lane 1 must keep being served meanwhile.
    struct OneLaneStalls {
        lane_one_served: AtomicU64,
        released_by_lane_one: AtomicBool,
        open: tokio::sync::watch::Sender<bool>,
        in_progress: [AtomicU64; 2],
        most_in_progress: [AtomicU64; 2],
    }

    impl OneLaneStalls {
        fn op(&self, lane: usize) -> BoxFuture<'_, Result<(), TargetError>> {
            Box::pin(async move {
                let now = self.in_progress[lane].fetch_add(1, Ordering::SeqCst) + 1;
                self.most_in_progress[lane].fetch_max(now, Ordering::SeqCst);
                if lane == 0 {
                    let mut open = self.open.subscribe();
                    // The fallback only keeps a broken generator from hanging the test.
                    if tokio::time::timeout(Duration::from_secs(10), open.wait_for(|o| *o))
                        .await
                        .is_err()
                    {
                        self.open.send_replace(true);
                    }
                } else if self.lane_one_served.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                    self.released_by_lane_one.store(true, Ordering::SeqCst);
                    self.open.send_replace(true);
                }
                self.in_progress[lane].fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
        }
    }

    impl Target for OneLaneStalls {
        fn name(&self) -> String {
            "one lane stalls".into()
        }
        fn lanes(&self) -> usize {
            2
        }
        fn read<'a>(
            &'a self,
            lane: usize,
            _key: &'a str,
        ) -> BoxFuture<'a, Result<(), TargetError>> {
            self.op(lane)
        }
        fn update<'a>(
            &'a self,
            lane: usize,
            _key: &'a str,
            _value: Bytes,
        ) -> BoxFuture<'a, Result<(), TargetError>> {
            self.op(lane)
        }
    }

    #[tokio::test]
    async fn fixed_rate_bounds_each_lane_apart_so_a_stalled_member_does_not_hold_the_others() {
        let store = Arc::new(OneLaneStalls {
            lane_one_served: AtomicU64::new(0),
            released_by_lane_one: AtomicBool::new(false),
            open: tokio::sync::watch::channel(false).0,
            in_progress: [AtomicU64::new(0), AtomicU64::new(0)],
            most_in_progress: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let config = Config {
            concurrency: 4,
            ..falling_behind().1
        };
        let report = run(store.clone(), config, |_| {}).await;
        assert_eq!(report.ops, 100);
        assert_eq!(report.errors, 0);
        // With one pool of 4 shared by both lanes, lane 0's hanging operations took every
        // slot after its first four were due, and lane 1 was never served again.
        assert!(
            store.released_by_lane_one.load(Ordering::SeqCst),
            "lane 1 was held up by lane 0 (served {})",
            store.lane_one_served.load(Ordering::SeqCst)
        );
        assert_eq!(store.most_in_progress[0].load(Ordering::SeqCst), 2);
        assert!(store.most_in_progress[1].load(Ordering::SeqCst) <= 2);
    }

    /// Each operation lands in the 10 ms window it was due in, so a queue that builds up
    /// shows as windows whose slowest operation grows, and the CSV has one line each.
    #[tokio::test]
    async fn the_timeline_puts_each_operation_in_the_window_it_was_due() {
        let (store, config) = falling_behind();
        let report = run(store, config, |_| {}).await;
        let timeline = &report.timeline;
        assert_eq!(
            timeline.len(),
            51,
            "50 windows of 10 ms and the partial one"
        );
        assert_eq!(timeline.iter().map(|w| w.ops).sum::<u64>(), report.ops);
        assert!(timeline.iter().all(|w| w.ops <= 3), "{timeline:?}");
        assert!(
            timeline
                .windows(2)
                .all(|w| w[1].start_unix_ms == w[0].start_unix_ms + 10)
        );
        // The store serves 100 operations a second of the 200 due: the i-th waits about
        // 5·i ms, so the last windows' slowest are hundreds of ms slower than the first's.
        let first = timeline[0].max_us;
        let last = timeline[48].max_us.max(timeline[49].max_us);
        assert!(last > first + 200_000, "first {first} µs, last {last} µs");
        let csv = timeline_csv(timeline);
        assert_eq!(csv.lines().count(), 52);
        assert_eq!(csv.lines().next(), Some("start_unix_ms,ops,errors,max_us"));
    }
}
