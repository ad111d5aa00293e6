//! Prometheus metrics of one member, in a registry of its own (the simulation runs many
//! members in one process). Names follow Prometheus conventions: base units, `_total` on
//! counters, labels with few values.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Request latency buckets: 100 µs doubling to ~6.5 s; a KV store on a LAN needs
/// sub-millisecond resolution.
fn latency_buckets() -> Vec<f64> {
    (0..17).map(|i| 0.0001 * f64::from(1u32 << i)).collect()
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub quorum_failures: IntCounterVec,
    pub forwarded: IntCounter,
    pub replica_requests: IntCounterVec,
    pub hints_stored: IntCounter,
    pub hints_delivered: IntCounter,
    pub hints_expired: IntCounter,
    pub hints_pending: IntGauge,
    pub read_repairs: IntCounter,
    pub extra_reads: IntCounterVec,
    pub ae_exchanges: IntCounterVec,
    pub ae_keys_repaired: IntCounter,
    pub ae_bytes: IntCounter,
    pub tombstones_reaped: IntCounter,
    pub handoff_partitions_pending: IntGauge,
    pub handoff_bytes: IntCounter,
    pub handoff_keys: IntCounter,
    pub gossip_rounds: IntCounter,
    pub gossip_bytes: IntCounter,
    pub members: IntGaugeVec,
    pub partitions_owned: IntGauge,
    pub partitions_replicated: IntGauge,
    pub storage_bytes: IntGauge,
    pub storage_keys: IntGauge,
    pub ring_epoch: IntGauge,
    pub rpc_auth_failures: IntCounter,
    pub rpc_errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub rejected: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub corrupt_records: IntCounterVec,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, Box::new(c.clone()));
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, Box::new(c.clone()));
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, Box::new(g.clone()));
    g
}

fn register(registry: &Registry, c: Box<dyn prometheus::core::Collector>) {
    // Names are constants of this module; a clash is a programming error caught by tests.
    if let Err(e) = registry.register(c) {
        panic!("registering metric: {e}");
    }
}

impl Metrics {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Metrics {
        let r = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "dynamo_request_duration_seconds",
                "Client request latency at the member that received it.",
            )
            .buckets(latency_buckets()),
            &["op"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        register(&r, Box::new(request_duration.clone()));
        let members = IntGaugeVec::new(
            Opts::new(
                "dynamo_members",
                "Members by state as this member sees them.",
            ),
            &["state"],
        )
        .unwrap_or_else(|e| panic!("gauge: {e}"));
        register(&r, Box::new(members.clone()));
        let corrupt_records = counter_vec(
            &r,
            "dynamo_corrupt_records_total",
            "Stored records that failed to decode, by kind (data, hint, meta, merkle): skipped, moved aside, and restored from the replicas.",
            &["kind"],
        );
        // Exported from the start, so an alert on an increase sees the first one.
        for kind in crate::storage::CorruptKind::ALL {
            corrupt_records.with_label_values(&[kind.as_str()]);
        }
        let metrics = Metrics {
            requests: counter_vec(
                &r,
                "dynamo_requests_total",
                "Client requests by operation and outcome.",
                &["op", "status"],
            ),
            request_duration,
            quorum_failures: counter_vec(
                &r,
                "dynamo_quorum_failures_total",
                "Requests that could not reach their quorum.",
                &["op"],
            ),
            forwarded: counter(
                &r,
                "dynamo_forwarded_requests_total",
                "Client requests forwarded to a primary.",
            ),
            replica_requests: counter_vec(
                &r,
                "dynamo_replica_requests_total",
                "Replica operations served for coordinators.",
                &["op"],
            ),
            hints_stored: counter(
                &r,
                "dynamo_hints_stored_total",
                "Hinted writes stored for unreachable members.",
            ),
            hints_delivered: counter(
                &r,
                "dynamo_hints_delivered_total",
                "Hints delivered to their member.",
            ),
            hints_expired: counter(
                &r,
                "dynamo_hints_expired_total",
                "Hints dropped after the tombstone grace period.",
            ),
            hints_pending: gauge(&r, "dynamo_hints_pending", "Hints held for other members."),
            read_repairs: counter(
                &r,
                "dynamo_read_repairs_total",
                "Stale replicas repaired after a read.",
            ),
            extra_reads: counter_vec(
                &r,
                "dynamo_read_extra_replicas_total",
                "Replicas a quorum read asked beyond R, by reason (failed: a replica refused or was unreachable; slow: R replies had not arrived after the speculative wait).",
                &["reason"],
            ),
            ae_exchanges: counter_vec(
                &r,
                "dynamo_antientropy_exchanges_total",
                "Merkle exchanges by outcome.",
                &["result"],
            ),
            ae_keys_repaired: counter(
                &r,
                "dynamo_antientropy_keys_repaired_total",
                "Keys anti-entropy repaired, on this member or on the peer it exchanged with.",
            ),
            ae_bytes: counter(
                &r,
                "dynamo_antientropy_bytes_total",
                "Bytes received by anti-entropy exchanges.",
            ),
            tombstones_reaped: counter(
                &r,
                "dynamo_tombstones_reaped_total",
                "Tombstones removed after every replica held them.",
            ),
            handoff_partitions_pending: gauge(
                &r,
                "dynamo_handoff_partitions_pending",
                "Partitions this member still has to receive.",
            ),
            handoff_bytes: counter(
                &r,
                "dynamo_handoff_bytes_total",
                "Bytes received by ownership handoff.",
            ),
            handoff_keys: counter(
                &r,
                "dynamo_handoff_keys_total",
                "Keys received by ownership handoff.",
            ),
            gossip_rounds: counter(
                &r,
                "dynamo_gossip_rounds_total",
                "Gossip exchanges started by this member.",
            ),
            gossip_bytes: counter(&r, "dynamo_gossip_bytes_total", "Bytes sent by gossip."),
            members,
            partitions_owned: gauge(
                &r,
                "dynamo_partitions_owned",
                "Partitions this member owns in the current ring.",
            ),
            partitions_replicated: gauge(
                &r,
                "dynamo_partitions_replicated",
                "Partitions this member holds a replica of.",
            ),
            storage_bytes: gauge(
                &r,
                "dynamo_storage_bytes",
                "Bytes the member's data directory takes on disk (allocated blocks, as du counts them).",
            ),
            storage_keys: gauge(
                &r,
                "dynamo_storage_keys",
                "Keys stored (including tombstones).",
            ),
            ring_epoch: gauge(&r, "dynamo_ring_epoch", "Epoch of the current ring."),
            rpc_auth_failures: counter(
                &r,
                "dynamo_rpc_auth_failures_total",
                "Peer connections refused: bad cluster secret or TLS certificate.",
            ),
            rpc_errors: counter_vec(
                &r,
                "dynamo_rpc_errors_total",
                "Failed calls to other members by kind.",
                &["kind"],
            ),
            auth_failures: counter_vec(
                &r,
                "dynamo_http_auth_failures_total",
                "HTTP calls refused for a missing or wrong token.",
                &["api"],
            ),
            rejected: counter_vec(
                &r,
                "dynamo_rejected_requests_total",
                "Requests refused before processing.",
                &["reason"],
            ),
            build_info: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "dynamo_build_info",
                        "Always 1; the label is the version of the running binary.",
                    ),
                    &["version"],
                )
                .unwrap_or_else(|e| panic!("gauge: {e}"));
                register(&r, Box::new(g.clone()));
                g
            },
            corrupt_records,
            registry: r,
        };
        metrics
            .build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics.export_known_labels();
        metrics
    }

    /// Creates every label combination known in advance, at zero, so that a counter is
    /// exported before its first event (a dashboard shows 0, not "no data", and `rate()`
    /// sees the first increment). Error codes and kinds that are rare stay out until they
    /// happen.
    fn export_known_labels(&self) {
        for op in ["get", "put", "delete"] {
            self.request_duration.with_label_values(&[op]);
            self.requests.with_label_values(&[op, "ok"]);
            self.requests.with_label_values(&[op, "unavailable"]);
        }
        for status in ["not_found", "siblings"] {
            self.requests.with_label_values(&["get", status]);
        }
        for op in ["read", "write"] {
            self.quorum_failures.with_label_values(&[op]);
        }
        for op in ["read", "write", "hint"] {
            self.replica_requests.with_label_values(&[op]);
        }
        for reason in ["failed", "slow"] {
            self.extra_reads.with_label_values(&[reason]);
        }
        for result in ["in_sync", "repaired", "failed"] {
            self.ae_exchanges.with_label_values(&[result]);
        }
        for state in ["joining", "up", "leaving", "removed", "down"] {
            self.members.with_label_values(&[state]);
        }
        for kind in [
            "unreachable",
            "timeout",
            "closed",
            "auth",
            "codec",
            "remote",
            "unexpected",
            "bad_frame",
        ] {
            self.rpc_errors.with_label_values(&[kind]);
        }
        for api in ["client", "admin"] {
            self.auth_failures.with_label_values(&[api]);
        }
        for reason in [
            "overload",
            "connections",
            "peer_connections",
            "tls",
            "headers",
        ] {
            self.rejected.with_label_values(&[reason]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_and_renders() {
        let m = Metrics::new();
        m.requests.with_label_values(&["get", "ok"]).inc();
        m.request_duration
            .with_label_values(&["get"])
            .observe(0.00042);
        let text = m.render();
        assert!(text.contains("dynamo_requests_total{op=\"get\",status=\"ok\"} 1"));
        assert!(
            text.contains("dynamo_request_duration_seconds_bucket{op=\"get\",le=\"0.0008\"} 1")
        );
        assert_eq!(latency_buckets().len(), 17);
        for kind in ["data", "hint", "meta", "merkle"] {
            assert!(
                text.contains(&format!(
                    "dynamo_corrupt_records_total{{kind=\"{kind}\"}} 0"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn every_metric_has_a_sample_before_its_first_event() {
        let text = Metrics::new().render();
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert!(families.len() > 25, "{families:?}");
        for family in families {
            assert!(
                text.lines()
                    .any(|l| !l.starts_with('#') && l.starts_with(family)),
                "{family} has no sample:\n{text}"
            );
        }
        assert!(text.contains("dynamo_requests_total{op=\"get\",status=\"ok\"} 0"));
        assert!(text.contains("dynamo_members{state=\"down\"} 0"));
        assert!(text.contains(&format!(
            "dynamo_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
