//! Operator metrics and its own small HTTP server (`/healthz`, `/readyz`, `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::crd::DynamoClusterStatus;
use crate::plan::Phase;

/// Labels of the per-cluster gauges.
const CLUSTER_LABELS: &[&str] = &["namespace", "name"];

pub struct Metrics {
    pub registry: Registry,
    /// Reconciliations by result (`ok`, `error`).
    pub reconciliations: IntCounterVec,
    /// Failed reconciliations by error kind.
    pub errors: IntCounterVec,
    pub duration: Histogram,
    /// Steps taken on clusters (`bootstrap`, `join`, `leave`, `delete_pvc`, ...).
    pub actions: IntCounterVec,
    /// 1 once the CRD is served and the controller runs.
    pub ready: IntGauge,
    /// Per cluster: `spec.replicas`.
    pub cluster_members_desired: IntGaugeVec,
    /// Per cluster: `status.readyMembers`.
    pub cluster_members_ready: IntGaugeVec,
    /// Per cluster: `status.updatedMembers`.
    pub cluster_members_updated: IntGaugeVec,
    /// Per cluster: members Kubernetes cannot run (`status.members[].reason` set).
    pub cluster_members_failing: IntGaugeVec,
    /// Per cluster: `status.handoffsPending` (absent while the ring cannot be read).
    pub cluster_handoffs_pending: IntGaugeVec,
    /// Per cluster and phase: 1 for the phase the planner is in, 0 for the others.
    pub cluster_phase: IntGaugeVec,
    /// Per cluster and condition type: 1 True, 0 False, -1 Unknown.
    pub cluster_condition: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("dynamo_operator".into()), None)?;
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "reconciliations_total",
                "Reconciliations of DynamoClusters by result",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Failed reconciliations by error kind",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "reconcile_duration_seconds",
                "Time one reconciliation takes",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let actions = IntCounterVec::new(
            Opts::new("actions_total", "Membership and lifecycle steps taken"),
            &["action"],
        )?;
        let ready = IntGauge::new("ready", "1 once the CRD is served and the controller runs")?;
        let gauge = |name: &str, help: &str, extra: &[&str]| {
            let labels: Vec<&str> = CLUSTER_LABELS.iter().chain(extra).copied().collect();
            IntGaugeVec::new(Opts::new(name, help), &labels)
        };
        let cluster_members_desired = gauge(
            "cluster_members_desired",
            "Members a DynamoCluster asks for (spec.replicas)",
            &[],
        )?;
        let cluster_members_ready = gauge(
            "cluster_members_ready",
            "Desired members whose pod is ready (status.readyMembers)",
            &[],
        )?;
        let cluster_members_updated = gauge(
            "cluster_members_updated",
            "Desired members running the current pod template (status.updatedMembers)",
            &[],
        )?;
        let cluster_members_failing = gauge(
            "cluster_members_failing",
            "Members Kubernetes cannot run (image pull, crash loop, config, scheduling, claim)",
            &[],
        )?;
        let cluster_handoffs_pending = gauge(
            "cluster_handoffs_pending",
            "Partitions still to be handed off (status.handoffsPending)",
            &[],
        )?;
        let cluster_phase = gauge(
            "cluster_phase",
            "1 for the phase the operator is in for a DynamoCluster, 0 for the others",
            &["phase"],
        )?;
        let cluster_condition = gauge(
            "cluster_condition",
            "Status conditions of a DynamoCluster: 1 True, 0 False, -1 Unknown",
            &["type"],
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(actions.clone()))?;
        registry.register(Box::new(ready.clone()))?;
        for g in [
            &cluster_members_desired,
            &cluster_members_ready,
            &cluster_members_updated,
            &cluster_members_failing,
            &cluster_handoffs_pending,
            &cluster_phase,
            &cluster_condition,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        Ok(Metrics {
            registry,
            reconciliations,
            errors,
            duration,
            actions,
            ready,
            cluster_members_desired,
            cluster_members_ready,
            cluster_members_updated,
            cluster_members_failing,
            cluster_handoffs_pending,
            cluster_phase,
            cluster_condition,
        })
    }

    /// Sets the per-cluster gauges from a freshly computed status.
    pub fn observe_cluster(
        &self,
        namespace: &str,
        name: &str,
        desired: i32,
        status: &DynamoClusterStatus,
        phase: Phase,
    ) {
        let l = [namespace, name];
        self.cluster_members_desired
            .with_label_values(&l)
            .set(i64::from(desired));
        self.cluster_members_ready
            .with_label_values(&l)
            .set(i64::from(status.ready_members));
        self.cluster_members_updated
            .with_label_values(&l)
            .set(i64::from(status.updated_members));
        self.cluster_members_failing
            .with_label_values(&l)
            .set(status.members.iter().filter(|m| m.reason.is_some()).count() as i64);
        match status.handoffs_pending {
            Some(pending) => self
                .cluster_handoffs_pending
                .with_label_values(&l)
                .set(pending),
            // Unknown is not zero: drop the series rather than claim a settled ring.
            None => {
                let _ = self.cluster_handoffs_pending.remove_label_values(&l);
            }
        }
        for p in Phase::ALL {
            self.cluster_phase
                .with_label_values(&[namespace, name, p.as_str()])
                .set(i64::from(p == phase));
        }
        for c in &status.conditions {
            let value = match c.status.as_str() {
                "True" => 1,
                "False" => 0,
                _ => -1,
            };
            self.cluster_condition
                .with_label_values(&[namespace, name, c.type_.as_str()])
                .set(value);
        }
    }

    /// Drops every series of a deleted cluster.
    pub fn forget_cluster(&self, namespace: &str, name: &str) {
        let l = [namespace, name];
        for g in [
            &self.cluster_members_desired,
            &self.cluster_members_ready,
            &self.cluster_members_updated,
            &self.cluster_members_failing,
            &self.cluster_handoffs_pending,
        ] {
            let _ = g.remove_label_values(&l);
        }
        for p in Phase::ALL {
            let _ = self
                .cluster_phase
                .remove_label_values(&[namespace, name, p.as_str()]);
        }
        for t in [
            crate::status::AVAILABLE,
            crate::status::PROGRESSING,
            crate::status::DEGRADED,
            crate::status::REBALANCING,
            crate::status::MEMBERS_HEALTHY,
        ] {
            let _ = self
                .cluster_condition
                .remove_label_values(&[namespace, name, t]);
        }
    }

    pub fn record(&self, started: Instant, error: Option<&str>) {
        self.duration.observe(started.elapsed().as_secs_f64());
        match error {
            None => self.reconciliations.with_label_values(&["ok"]).inc(),
            Some(kind) => {
                self.reconciliations.with_label_values(&["error"]).inc();
                self.errors.with_label_values(&[kind]).inc();
            }
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Readiness shared between the controller and the HTTP server.
#[derive(Default)]
pub struct Health {
    pub ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

pub fn route(path: &str, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" if health.ready.load(Ordering::SeqCst) => {
            text(StatusCode::OK, "ready\n".into(), "text/plain")
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the DynamoCluster CRD\n".into(),
            "text/plain",
        ),
        "/metrics" => text(
            StatusCode::OK,
            metrics.render(),
            "text/plain; version=0.0.4",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into(), "text/plain"),
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let response = route(req.uri().path(), &metrics, &health);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn routes() {
        let m = Metrics::new().unwrap();
        let h = Health::default();
        assert_eq!(route("/healthz", &m, &h).status(), StatusCode::OK);
        assert_eq!(
            route("/readyz", &m, &h).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.set_ready(true);
        assert_eq!(route("/readyz", &m, &h).status(), StatusCode::OK);
        m.record(Instant::now(), None);
        m.record(Instant::now(), Some("kube"));
        let body = route("/metrics", &m, &h)
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            body.contains("dynamo_operator_reconciliations_total{result=\"ok\"} 1"),
            "{body}"
        );
        assert!(body.contains("dynamo_operator_reconcile_errors_total{error=\"kube\"} 1"));
        assert!(body.contains("dynamo_operator_reconcile_duration_seconds_count 2"));
        assert_eq!(route("/nope", &m, &h).status(), StatusCode::NOT_FOUND);
    }
}
