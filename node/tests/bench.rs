//! The load generator against a real three-member cluster: what `dynamo bench` and
//! `bench/compare.sh` rest on.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use common::{Cluster, Options};
use dynamo::bench::{Config, Distribution, DynamoTarget, Workload, key_name};
use dynamo::cli::client::HttpClient;

/// Loads records, then runs workload A closed loop and at a fixed rate: no operation
/// fails, and what it wrote is there to read with the ordinary client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_a_runs_without_errors_and_its_writes_are_readable() {
    let cluster = Cluster::start(3, Options::default()).await;
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.http()).collect();
    let target = DynamoTarget::new(&endpoints, "dynamo", None).unwrap();
    let records = 200;
    dynamo::bench::load(target.clone(), records, 100, 4, |_| {})
        .await
        .unwrap();
    for rate in [None, Some(300)] {
        let config = Config {
            workload: Workload::A,
            distribution: Distribution::Zipfian,
            records,
            value_size: 100,
            concurrency: 6,
            duration: Duration::from_secs(2),
            max_ops: 3_000,
            rate,
            seed: 7,
        };
        let report = dynamo::bench::run(target.clone(), config, |_| {}).await;
        assert_eq!(report.errors, 0, "{rate:?}: {report:?}");
        assert!(
            report.read.count > 0 && report.update.count > 0,
            "{report:?}"
        );
    }
    let client = HttpClient::new(&endpoints[2], None, Duration::from_secs(5));
    for i in [0, records / 2, records - 1] {
        let reply = client.get(&key_name(i), "").await.unwrap();
        match reply.status.as_u16() {
            200 => assert_eq!(reply.body.len(), 100, "{}", key_name(i)),
            // Two workers may update a hot key with the same context at once: siblings.
            300 => assert!(reply.body.len() > 200, "{}", key_name(i)),
            status => panic!("{}: {status} {}", key_name(i), reply.text()),
        }
    }
}
