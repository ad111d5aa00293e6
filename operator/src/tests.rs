//! Reconciler tests against a mocked API server (kube's `tower-test` pattern, with an
//! in-memory object store) and a simulated dynamo cluster behind `NodeAdmin`.
//!
//! The harness plays the parts that are missing: the StatefulSet controller and kubelet
//! (pods and claims follow the StatefulSet, pods are ready when their member is in the
//! ring) and time (handoffs progress between passes).

use std::sync::Arc;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use crate::admin::AddressTemplate;
use crate::builders::{self, ANNOTATION_HOLDS_DATA, Names};
use crate::controller::{Context, FINALIZER, Timing, reconcile};
use crate::crd::{
    DynamoCluster, DynamoClusterSpec, DynamoClusterStatus, MemberState, ReclaimPolicy,
};
use crate::fakes::{FakeApiServer, FakeCluster, Logged};
use crate::metrics::Metrics;
use crate::status::{AVAILABLE, DEGRADED, MEMBERS_HEALTHY, PROGRESSING, REBALANCING, condition};

const NS: &str = "prod";
const DC_PATH: &str = "/apis/dynamo.dev/v1alpha1/namespaces/prod/dynamoclusters/db";
const STS_PATH: &str = "/apis/apps/v1/namespaces/prod/statefulsets/db";
const PODS: &str = "/api/v1/namespaces/prod/pods";
const PVCS: &str = "/api/v1/namespaces/prod/persistentvolumeclaims";

struct Harness {
    api: Arc<FakeApiServer>,
    cluster: Arc<FakeCluster>,
    ctx: Arc<Context>,
    /// An image the kubelet cannot pull: pods created with it stay in `ImagePullBackOff`.
    broken_image: std::sync::Mutex<Option<String>>,
}

fn spec(replicas: i32) -> DynamoClusterSpec {
    DynamoClusterSpec {
        replicas,
        image: "dynamo:1".into(),
        ..Default::default()
    }
}

impl Harness {
    fn new(spec: DynamoClusterSpec) -> Self {
        let (client, api) = FakeApiServer::start();
        let cluster = FakeCluster::new(spec.replication.n as usize, spec.partitions as u32);
        let ctx = Arc::new(Context::new(
            client,
            cluster.clone(),
            AddressTemplate::default(),
            Arc::new(Metrics::new().unwrap()),
            Timing::default(),
        ));
        let mut dc = DynamoCluster::new("db", spec);
        dc.metadata.namespace = Some(NS.into());
        dc.metadata.generation = Some(1);
        api.put(DC_PATH, serde_json::to_value(&dc).unwrap());
        Harness {
            api,
            cluster,
            ctx,
            broken_image: std::sync::Mutex::new(None),
        }
    }

    fn dc(&self) -> DynamoCluster {
        serde_json::from_value(self.api.get(DC_PATH).expect("the DynamoCluster exists")).unwrap()
    }

    fn status(&self) -> DynamoClusterStatus {
        self.dc().status.unwrap_or_default()
    }

    fn edit(&self, f: impl FnOnce(&mut DynamoCluster)) {
        let mut dc = self.dc();
        f(&mut dc);
        dc.metadata.generation = Some(dc.metadata.generation.unwrap_or(1) + 1);
        let mut v = serde_json::to_value(&dc).unwrap();
        v["metadata"]["resourceVersion"] = Value::Null;
        self.api.put(DC_PATH, v);
    }

    async fn reconcile(&self) -> Action {
        reconcile(Arc::new(self.dc()), self.ctx.clone())
            .await
            .expect("reconcile succeeds")
    }

    fn sts(&self) -> Value {
        self.api.get(STS_PATH).expect("StatefulSet applied")
    }

    fn sts_replicas(&self) -> i64 {
        self.sts()["spec"]["replicas"].as_i64().unwrap()
    }

    fn pods(&self) -> Vec<String> {
        self.names_under(PODS)
    }

    fn pvcs(&self) -> Vec<String> {
        self.names_under(PVCS)
    }

    fn names_under(&self, prefix: &str) -> Vec<String> {
        let objects = self.api.objects.lock().unwrap();
        objects
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{prefix}/")).map(str::to_string))
            .collect()
    }

    /// Plays the StatefulSet controller and kubelet: pods and claims for every ordinal below
    /// `spec.replicas`, none above; pods ready iff their member is in the ring.
    fn kubelet(&self) {
        let Some(mut sts) = self.api.get(STS_PATH) else {
            return;
        };
        let revision = format!(
            "db-{}",
            builders::config_hash(&[("t".to_string(), sts["spec"]["template"].to_string())].into())
        );
        if sts["status"]["updateRevision"].as_str() != Some(revision.as_str()) {
            sts["status"] = json!({ "replicas": 0, "updateRevision": revision });
            self.api.put(STS_PATH, sts.clone());
        }
        let replicas = sts["spec"]["replicas"].as_i64().unwrap() as i32;
        let names = Names {
            cluster: "db".into(),
            namespace: NS.into(),
        };
        for pod in self.pods() {
            let i = names.ordinal_of(&pod).unwrap();
            if i >= replicas {
                self.api.remove(&format!("{PODS}/{pod}"));
                self.cluster.stop(&pod);
            }
        }
        for i in 0..replicas {
            let pod = names.pod(i);
            let pvc_path = format!("{PVCS}/{}", names.pvc(i));
            if self.api.get(&pvc_path).is_none() {
                // Provisioned and bound at once, from the StatefulSet's claim template.
                let template = &sts["spec"]["volumeClaimTemplates"][0]["spec"];
                self.api.put(&pvc_path, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": names.pvc(i), "namespace": NS, "labels": builders::labels(&names)}, "spec": template, "status": {"phase": "Bound", "capacity": template["resources"]["requests"]}}));
                self.cluster.wipe(&pod);
            }
            let path = format!("{PODS}/{pod}");
            let existing = self.api.get(&path);
            // A pod keeps the image of the template it was created from.
            let image = existing
                .as_ref()
                .map_or(
                    &sts["spec"]["template"]["spec"]["containers"][0]["image"],
                    |p| &p["spec"]["containers"][0]["image"],
                )
                .as_str()
                .unwrap_or("")
                .to_string();
            let pulls = self.broken_image.lock().unwrap().as_deref() != Some(image.as_str());
            if existing.is_none() && pulls {
                self.cluster.start(&pod);
            }
            let pod_revision = existing
                .as_ref()
                .and_then(|p| {
                    p["metadata"]["labels"]["controller-revision-hash"]
                        .as_str()
                        .map(str::to_string)
                })
                .unwrap_or(revision.clone());
            let ready = {
                let st = self.cluster.state.lock().unwrap();
                st.members.get(&pod).is_some_and(|m| {
                    m.running && matches!(m.status.as_deref(), Some("up" | "leaving"))
                })
            };
            let mut labels = builders::labels(&names);
            labels.insert("controller-revision-hash".into(), pod_revision);
            let status = if pulls {
                json!({
                    "phase": "Running",
                    "containerStatuses": [{"name": "dynamo", "started": true, "ready": ready, "restartCount": 0, "image": image, "imageID": "", "state": {"running": {}}}],
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                })
            } else {
                json!({
                    "phase": "Pending",
                    "containerStatuses": [{"name": "dynamo", "started": false, "ready": false, "restartCount": 0, "image": image, "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\"")}}}],
                    "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
                })
            };
            let obj = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": NS, "labels": labels},
                "spec": {"containers": [{"name": "dynamo", "image": image}]},
                "status": status,
            });
            if existing
                .as_ref()
                .map(|e| (&e["status"], &e["metadata"]["labels"]))
                != Some((&obj["status"], &obj["metadata"]["labels"]))
            {
                self.api.put(&path, obj);
            }
        }
    }

    /// Reconcile passes (with the kubelet and handoffs progressing in between) until the
    /// cluster is converged or `max` passes ran.
    async fn settle(&self, max: usize) -> usize {
        for pass in 0..max {
            self.reconcile().await;
            self.kubelet();
            self.cluster.tick(64);
            let s = self.status();
            let stable = condition(&s, PROGRESSING).is_some_and(|c| c.reason == "Stable")
                && condition(&s, AVAILABLE).is_some_and(|c| c.status == "True");
            if stable {
                return pass + 1;
            }
        }
        panic!(
            "did not converge in {max} passes: {:#?}\nevents: {:?}",
            self.status().conditions,
            self.api.event_reasons()
        );
    }

    /// Creates the cluster and brings it to a stable state.
    async fn running(spec: DynamoClusterSpec) -> Self {
        let h = Harness::new(spec);
        h.settle(20).await;
        h
    }
}

fn writes(log: &[Logged]) -> Vec<String> {
    log.iter()
        .filter(|l| l.is_write())
        .map(|l| format!("{} {}", l.method, l.path))
        .collect()
}

#[tokio::test]
async fn create_adds_finalizer_then_applies_every_object_with_owner_references() {
    let h = Harness::new(spec(3));
    // First pass: only the finalizer.
    let action = h.reconcile().await;
    assert_eq!(action, Action::await_change());
    assert_eq!(
        h.dc().metadata.finalizers,
        Some(vec![FINALIZER.to_string()])
    );
    h.api.take_log();

    h.reconcile().await;
    let log = h.api.take_log();
    let w = writes(&log);
    assert!(
        w.contains(&"POST /api/v1/namespaces/prod/secrets".to_string()),
        "{w:?}"
    );
    for path in [
        "/api/v1/namespaces/prod/configmaps/db-config",
        "/api/v1/namespaces/prod/services/db-peers",
        "/api/v1/namespaces/prod/services/db",
        STS_PATH,
        "/apis/policy/v1/namespaces/prod/poddisruptionbudgets/db",
    ] {
        let applied = log
            .iter()
            .find(|l| l.method == Method::PATCH && l.path == path)
            .unwrap_or_else(|| panic!("{path} not applied: {w:?}"));
        assert!(
            applied.content_type.starts_with("application/apply-patch"),
            "server-side apply"
        );
        assert!(
            applied.query.contains("fieldManager=dynamo-operator")
                && applied.query.contains("force=true"),
            "{}",
            applied.query
        );
        let obj = h.api.get(path).unwrap();
        let owner = &obj["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "DynamoCluster");
        assert_eq!(owner["name"], "db");
        assert_eq!(owner["controller"], true);
        assert_eq!(owner["uid"], h.dc().metadata.uid.unwrap());
    }
    let secret = h
        .api
        .get("/api/v1/namespaces/prod/secrets/db-cluster-token")
        .unwrap();
    assert_eq!(secret["metadata"]["ownerReferences"][0]["name"], "db");
    assert_eq!(h.sts_replicas(), 3);
    assert_eq!(
        h.api
            .get("/api/v1/namespaces/prod/services/db-peers")
            .unwrap()["spec"]["publishNotReadyAddresses"],
        true
    );
    assert_eq!(
        h.api
            .get("/apis/policy/v1/namespaces/prod/poddisruptionbudgets/db")
            .unwrap()["spec"]["maxUnavailable"],
        1
    );
    assert!(
        h.api
            .get("/apis/monitoring.coreos.com/v1/namespaces/prod/servicemonitors/db")
            .is_none()
    );
    let reasons = h.api.event_reasons();
    assert!(
        reasons.contains(&"TokenSecretCreated".into()) && reasons.contains(&"Created".into()),
        "{reasons:?}"
    );

    // No pods run yet: the status says so.
    let s = h.status();
    assert_eq!(s.observed_generation, Some(1));
    assert!(!s.bootstrapped);
    assert_eq!(condition(&s, PROGRESSING).unwrap().reason, "Bootstrapping");
    assert_eq!(condition(&s, AVAILABLE).unwrap().reason, "NotBootstrapped");
    assert!(s.members.iter().all(|m| m.state == MemberState::Pending));
}

#[tokio::test]
async fn second_pass_changes_nothing() {
    let h = Harness::running(spec(3)).await;
    h.api.take_log();
    h.reconcile().await;
    let first = h.api.take_log();
    let rv_before = h.api.get(STS_PATH).unwrap()["metadata"]["resourceVersion"].clone();
    h.reconcile().await;
    let second = h.api.take_log();
    let kinds = |log: &[Logged]| {
        log.iter()
            .filter(|l| l.is_write())
            .map(|l| (l.method.clone(), l.path.clone(), l.body.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        kinds(&first),
        kinds(&second),
        "identical applies on both passes"
    );
    assert!(
        second
            .iter()
            .all(|l| l.method == Method::GET || l.method == Method::PATCH),
        "no creates or deletes: {:?}",
        writes(&second)
    );
    assert!(
        !second.iter().any(|l| l.path.ends_with("/status")),
        "unchanged status is not written"
    );
    assert!(
        !second.iter().any(|l| l.path.contains("/events")),
        "no events"
    );
    assert_eq!(h.api.get(STS_PATH).unwrap()["spec"], h.sts()["spec"]);
    let _ = rv_before;
    assert!(
        h.cluster
            .state
            .lock()
            .unwrap()
            .calls
            .iter()
            .all(|c| !c.starts_with("leave"))
    );
}

#[tokio::test]
async fn bootstrap_then_join_through_the_admin_api() {
    let h = Harness::new(spec(3));
    let passes = h.settle(20).await;
    let calls = h.cluster.state.lock().unwrap().calls.clone();
    assert_eq!(
        calls.iter().filter(|c| c.starts_with("bootstrap")).count(),
        1,
        "{calls:?}"
    );
    assert_eq!(calls[0], "bootstrap db-0");
    assert!(
        calls.contains(&"join db-1".into()) && calls.contains(&"join db-2".into()),
        "{calls:?}"
    );
    let s = h.status();
    assert!(s.bootstrapped);
    assert_eq!(s.ready_members, 3);
    assert_eq!(
        s.members.iter().map(|m| m.state).collect::<Vec<_>>(),
        vec![MemberState::Up; 3]
    );
    assert_eq!(condition(&s, AVAILABLE).unwrap().status, "True");
    assert_eq!(condition(&s, DEGRADED).unwrap().status, "False");
    assert_eq!(condition(&s, REBALANCING).unwrap().status, "False");
    assert!(s.ring_epoch.is_some() && s.partition_balance.is_some());
    let reasons = h.api.event_reasons();
    for r in ["Bootstrapped", "MemberJoinRequested", "ClusterAvailable"] {
        assert!(
            reasons.contains(&r.to_string()),
            "{r} missing from {reasons:?}"
        );
    }
    // Every claim is marked as holding data once its member is up.
    for pvc in h.pvcs() {
        assert_eq!(
            h.api.get(&format!("{PVCS}/{pvc}")).unwrap()["metadata"]["annotations"]
                [ANNOTATION_HOLDS_DATA],
            "true",
            "{pvc}"
        );
    }
    assert!(passes <= 10, "took {passes} passes");
    // A converged cluster is re-checked slowly.
    assert_eq!(h.reconcile().await, Action::requeue(Timing::default().idle));
}

#[tokio::test]
async fn scale_up_joins_new_members_and_reports_rebalancing() {
    let h = Harness::running(spec(3)).await;
    h.edit(|dc| dc.spec.replicas = 5);
    h.reconcile().await;
    assert_eq!(h.sts_replicas(), 5);
    h.kubelet();
    h.reconcile().await; // joins 3 and 4
    let calls = h.cluster.state.lock().unwrap().calls.clone();
    assert!(
        calls.contains(&"join db-3".into()) && calls.contains(&"join db-4".into()),
        "{calls:?}"
    );
    h.kubelet();
    h.reconcile().await;
    let s = h.status();
    assert_eq!(
        condition(&s, REBALANCING).unwrap().status,
        "True",
        "{:?}",
        s.conditions
    );
    assert!(s.handoffs_pending.unwrap() > 0);
    h.settle(20).await;
    let s = h.status();
    assert_eq!(s.ready_members, 5);
    assert_eq!(condition(&s, REBALANCING).unwrap().status, "False");
    let reasons = h.api.event_reasons();
    assert!(
        reasons.contains(&"RebalanceStarted".into())
            && reasons.contains(&"RebalanceFinished".into()),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn scale_down_leaves_first_shrinks_after_handoffs_then_deletes_claims() {
    let h = Harness::running(spec(5)).await;
    h.edit(|dc| dc.spec.replicas = 3);
    h.reconcile().await;
    {
        let st = h.cluster.state.lock().unwrap();
        assert!(
            st.calls.contains(&"leave db-4".into()) && st.calls.contains(&"leave db-3".into()),
            "{:?}",
            st.calls
        );
        assert_eq!(st.members["db-4"].status.as_deref(), Some("leaving"));
    }
    assert_eq!(
        h.sts_replicas(),
        5,
        "the StatefulSet keeps the leaving members"
    );
    assert_eq!(
        condition(&h.status(), PROGRESSING).unwrap().reason,
        "ScalingDown"
    );

    // Handoffs progress slowly: the StatefulSet never shrinks while a member owns data.
    let mut shrunk_at = None;
    for pass in 0..30 {
        h.kubelet();
        h.cluster.tick(8);
        h.reconcile().await;
        let replicas = h.sts_replicas();
        let st = h.cluster.state.lock().unwrap();
        for (id, m) in &st.members {
            let i: i64 = id.trim_start_matches("db-").parse().unwrap();
            if matches!(m.status.as_deref(), Some("up" | "leaving")) {
                assert!(
                    i < replicas,
                    "{id} is {:?} but the StatefulSet has {replicas} replicas",
                    m.status
                );
            }
        }
        if replicas == 3 && shrunk_at.is_none() {
            shrunk_at = Some(pass);
            assert!(
                st.members["db-3"].status.as_deref() == Some("removed")
                    && st.members["db-4"].status.as_deref() == Some("removed")
            );
            assert_eq!(st.pending, 0);
        }
        drop(st);
        if shrunk_at.is_some() && h.pvcs().len() == 3 {
            break;
        }
    }
    assert!(shrunk_at.unwrap() > 0, "handoffs took more than one pass");
    assert_eq!(h.pvcs(), vec!["data-db-0", "data-db-1", "data-db-2"]);
    assert_eq!(h.pods(), vec!["db-0", "db-1", "db-2"]);
    h.settle(10).await;
    let s = h.status();
    assert_eq!(s.members.len(), 3);
    let reasons = h.api.event_reasons();
    for r in ["MemberLeaveRequested", "StatefulSetScaled", "VolumeDeleted"] {
        assert!(
            reasons.contains(&r.to_string()),
            "{r} missing from {reasons:?}"
        );
    }

    // Scaling up again re-adds ordinal 3 on a fresh volume; it joins without recycling.
    h.edit(|dc| dc.spec.replicas = 4);
    h.settle(20).await;
    let st = h.cluster.state.lock().unwrap();
    assert_eq!(st.members["db-3"].status.as_deref(), Some("up"));
    assert!(
        st.calls.iter().filter(|c| *c == "join db-3").count() >= 2,
        "{:?}",
        st.calls
    );
}

#[tokio::test]
async fn scale_down_cancelled_after_leave_recycles_the_member() {
    let h = Harness::running(spec(4)).await;
    h.edit(|dc| dc.spec.replicas = 3);
    h.reconcile().await;
    h.cluster.tick(1000);
    assert_eq!(
        h.cluster.state.lock().unwrap().members["db-3"]
            .status
            .as_deref(),
        Some("removed")
    );
    // Back to 4 before the StatefulSet shrank: db-3's volume has data of a ring it left.
    h.edit(|dc| dc.spec.replicas = 4);
    h.reconcile().await;
    assert!(h.api.event_reasons().contains(&"MemberRecycled".into()));
    assert!(!h.pvcs().contains(&"data-db-3".into()));
    // The fake cluster panics if a member rejoins on a volume with data.
    h.settle(20).await;
    assert_eq!(
        h.cluster.state.lock().unwrap().members["db-3"]
            .status
            .as_deref(),
        Some("up")
    );
}

#[tokio::test]
async fn scale_below_n_is_refused_in_status_with_an_event() {
    let h = Harness::running(spec(3)).await;
    h.edit(|dc| dc.spec.replicas = 2); // what CEL rejects; the operator refuses it too
    h.reconcile().await;
    assert_eq!(h.sts_replicas(), 3);
    let s = h.status();
    let p = condition(&s, PROGRESSING).unwrap();
    assert_eq!(
        (p.status.as_str(), p.reason.as_str()),
        ("False", "ScaleRefused")
    );
    assert_eq!(condition(&s, DEGRADED).unwrap().reason, "ScaleRefused");
    assert!(h.api.event_reasons().contains(&"ScaleRefused".into()));
    assert!(
        h.cluster
            .state
            .lock()
            .unwrap()
            .calls
            .iter()
            .all(|c| !c.starts_with("leave"))
    );
}

#[tokio::test]
async fn image_change_rolls_one_member_at_a_time() {
    let h = Harness::running(spec(3)).await;
    h.edit(|dc| dc.spec.image = "dynamo:2".into());
    let mut deleted_order = Vec::new();
    for _ in 0..30 {
        let before = h.pods();
        h.reconcile().await;
        let after = h.pods();
        let gone: Vec<String> = before
            .iter()
            .filter(|p| !after.contains(p))
            .cloned()
            .collect();
        assert!(
            gone.len() <= 1,
            "more than one member restarted at once: {gone:?}"
        );
        deleted_order.extend(gone.iter().cloned());
        for p in &gone {
            h.cluster.stop(p);
        }
        h.kubelet();
        h.cluster.tick(64);
        if deleted_order.len() == 3
            && condition(&h.status(), PROGRESSING).is_some_and(|c| c.reason == "Stable")
        {
            break;
        }
    }
    assert_eq!(deleted_order, vec!["db-2", "db-1", "db-0"]);
    let sts = h.sts();
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "dynamo:2"
    );
    assert_eq!(sts["spec"]["updateStrategy"]["type"], "OnDelete");
    assert_eq!(h.status().updated_members, 3);
    assert!(h.api.event_reasons().contains(&"RollingUpdate".into()));
}

#[tokio::test]
async fn rollout_waits_while_a_member_is_down() {
    let h = Harness::running(spec(3)).await;
    h.edit(|dc| dc.spec.image = "dynamo:2".into());
    h.reconcile().await; // applies the new template
    h.kubelet(); // the StatefulSet controller computes the new revision
    h.reconcile().await; // restarts db-2
    assert!(!h.pods().contains(&"db-2".to_string()));
    h.cluster.stop("db-2");
    h.kubelet(); // db-2 recreated on the new template...
    {
        // ...but another member is not alive: the rollout must not touch anything else.
        let mut st = h.cluster.state.lock().unwrap();
        st.members.get_mut("db-1").unwrap().alive = false;
    }
    for _ in 0..3 {
        h.reconcile().await;
        assert_eq!(h.pods().len(), 3, "no pod deleted while db-1 is not alive");
    }
}

#[tokio::test]
async fn deletion_runs_the_finalizer_and_applies_the_reclaim_policy() {
    let mut s = spec(3);
    s.storage.reclaim_policy = ReclaimPolicy::Delete;
    let h = Harness::running(s).await;
    assert_eq!(h.pvcs().len(), 3);
    let mut dc = serde_json::to_value(h.dc()).unwrap();
    dc["metadata"]["deletionTimestamp"] = json!("2026-02-01T00:00:00Z");
    h.api.put(DC_PATH, dc);
    h.reconcile().await;
    assert!(h.pvcs().is_empty(), "claims deleted");
    assert!(
        h.api.get(DC_PATH).is_none(),
        "finalizer removed, object gone"
    );
    assert!(h.api.event_reasons().contains(&"VolumesDeleted".into()));
}

#[tokio::test]
async fn deletion_with_retain_keeps_the_claims() {
    let h = Harness::running(spec(3)).await;
    let mut dc = serde_json::to_value(h.dc()).unwrap();
    dc["metadata"]["deletionTimestamp"] = json!("2026-02-01T00:00:00Z");
    h.api.put(DC_PATH, dc);
    h.reconcile().await;
    assert_eq!(h.pvcs().len(), 3);
    assert!(h.api.get(DC_PATH).is_none());
    assert!(h.api.event_reasons().contains(&"VolumesRetained".into()));
}

#[tokio::test]
async fn missing_token_secret_is_reported_and_backs_off() {
    let mut s = spec(3);
    s.cluster_token_secret = Some(crate::crd::SecretKeyRef {
        name: "nope".into(),
        key: "token".into(),
    });
    let h = Harness::new(s);
    h.reconcile().await; // finalizer
    let dc = Arc::new(h.dc());
    let err = reconcile(dc.clone(), h.ctx.clone()).await.unwrap_err();
    assert_eq!(err.kind(), "token");
    let d = condition(&h.status(), DEGRADED).cloned().unwrap();
    assert_eq!(
        (d.status.as_str(), d.reason.as_str()),
        ("True", "ReconcileError")
    );
    assert!(d.message.contains("nope"));
    let first = crate::controller::error_policy(dc.clone(), &err, h.ctx.clone());
    let second = crate::controller::error_policy(dc, &err, h.ctx.clone());
    assert_eq!(first, Action::requeue(std::time::Duration::from_secs(2)));
    assert_eq!(second, Action::requeue(std::time::Duration::from_secs(4)));
    assert!(
        h.ctx
            .metrics
            .render()
            .contains("dynamo_operator_reconcile_errors_total{error=\"token\"}")
    );
}

#[tokio::test]
async fn https_members_are_called_over_https_with_the_secrets_ca() {
    use base64::Engine as _;
    let mut s = spec(3);
    s.peer_tls = Some(crate::crd::PeerTls {
        secret_name: "db-cert".into(),
        https: true,
    });
    let h = Harness::new(s);
    h.reconcile().await; // finalizer
    // The Secret is missing: reported, no plain-HTTP fallback.
    let err = reconcile(Arc::new(h.dc()), h.ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "tls");
    let d = condition(&h.status(), DEGRADED).cloned().unwrap();
    assert!(d.message.contains("db-cert"), "{}", d.message);
    assert!(h.cluster.state.lock().unwrap().endpoints.is_empty());

    let ca = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    h.api.put(
        &format!("/api/v1/namespaces/{NS}/secrets/db-cert"),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": { "name": "db-cert", "namespace": NS },
            "data": { "ca.crt": base64::engine::general_purpose::STANDARD.encode(ca) },
        }),
    );
    h.settle(30).await;
    let st = h.cluster.state.lock().unwrap();
    assert!(st.bootstrapped);
    assert!(!st.endpoints.is_empty());
    for e in &st.endpoints {
        assert!(
            e.base_url.starts_with("https://") && e.base_url.ends_with(".db-peers.prod.svc:8080"),
            "{}",
            e.base_url
        );
        assert_eq!(e.https_ca.as_deref(), Some(&ca[..]));
    }
}

#[tokio::test]
async fn service_monitor_only_when_its_crd_is_served() {
    let mut s = spec(3);
    s.monitoring.service_monitor.enabled = true;
    let h = Harness::new(s.clone());
    h.reconcile().await;
    h.reconcile().await;
    assert!(
        h.api
            .get("/apis/monitoring.coreos.com/v1/namespaces/prod/servicemonitors/db")
            .is_none()
    );

    let h = Harness::new(s);
    *h.api.service_monitor_crd.lock().unwrap() = true;
    h.reconcile().await;
    h.reconcile().await;
    let sm = h
        .api
        .get("/apis/monitoring.coreos.com/v1/namespaces/prod/servicemonitors/db")
        .expect("ServiceMonitor applied");
    assert_eq!(sm["kind"], "ServiceMonitor");
    assert_eq!(sm["metadata"]["ownerReferences"][0]["name"], "db");
}

#[tokio::test]
async fn unreachable_cluster_never_shrinks() {
    let h = Harness::running(spec(5)).await;
    {
        let mut st = h.cluster.state.lock().unwrap();
        st.unreachable = (0..5).map(|i| format!("db-{i}")).collect();
    }
    h.edit(|dc| dc.spec.replicas = 3);
    for _ in 0..3 {
        h.reconcile().await;
        h.kubelet();
    }
    assert_eq!(h.sts_replicas(), 5);
    assert_eq!(h.pvcs().len(), 5);
    let s = h.status();
    assert_eq!(condition(&s, AVAILABLE).unwrap().status, "Unknown");
    assert_eq!(
        condition(&s, PROGRESSING).unwrap().reason,
        "WaitingForCluster"
    );
}

/// A rollout to an image that cannot be pulled: the failure shows in the member, in
/// `MembersHealthy` and `Degraded` (with the pod named) and as an Event; the rollout stops
/// at the broken member; the progress deadline turns it into `ProgressDeadlineExceeded`;
/// rolling the image back repairs the member and clears everything.
#[tokio::test]
async fn broken_image_is_reported_stops_the_rollout_and_rolls_back() {
    let h = Harness::running(spec(3)).await;
    *h.broken_image.lock().unwrap() = Some("dynamo:bad".into());
    h.edit(|dc| dc.spec.image = "dynamo:bad".into());
    let mut restarted = Vec::new();
    for _ in 0..8 {
        let before = h.pods();
        h.reconcile().await;
        for p in before.iter().filter(|p| !h.pods().contains(p)) {
            h.cluster.stop(p);
            restarted.push(p.clone());
        }
        h.kubelet();
        h.cluster.tick(64);
    }
    assert_eq!(
        restarted,
        ["db-2"],
        "the rollout stops at the broken member"
    );
    let s = h.status();
    let db2 = s.members.iter().find(|m| m.name == "db-2").unwrap();
    assert_eq!(db2.reason.as_deref(), Some("ImagePullBackOff"));
    assert!(
        db2.message.as_deref().unwrap().contains("dynamo:bad"),
        "{db2:?}"
    );
    assert!(
        s.members
            .iter()
            .filter(|m| m.name != "db-2")
            .all(|m| m.reason.is_none())
    );
    let healthy = condition(&s, MEMBERS_HEALTHY).unwrap();
    assert_eq!(
        (healthy.status.as_str(), healthy.reason.as_str()),
        ("False", "ImagePullBackOff")
    );
    assert!(
        healthy
            .message
            .starts_with("db-2: ImagePullBackOff: container dynamo")
    );
    let degraded = condition(&s, DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ImagePullBackOff")
    );
    assert!(degraded.message.contains("db-2"), "{}", degraded.message);
    let pull_events: Vec<Value> = h
        .api
        .events()
        .into_iter()
        .filter(|e| e["reason"] == "ImagePullBackOff")
        .collect();
    assert_eq!(
        pull_events.len(),
        1,
        "one event per new failure, not per pass"
    );
    assert_eq!(pull_events[0]["type"], "Warning");
    assert!(
        pull_events[0]["note"]
            .as_str()
            .unwrap()
            .starts_with("db-2: container dynamo: Back-off pulling image")
    );
    let metrics = h.ctx.metrics.render();
    assert!(
        metrics
            .contains("dynamo_operator_cluster_members_failing{name=\"db\",namespace=\"prod\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(
        "dynamo_operator_cluster_phase{name=\"db\",namespace=\"prod\",phase=\"RollingUpdate\"} 1"
    ));
    assert!(
        !h.api
            .event_reasons()
            .contains(&"ProgressDeadlineExceeded".into())
    );

    // Ten minutes without progress.
    h.ctx.advance_clock(601);
    h.reconcile().await;
    let s = h.status();
    let degraded = condition(&s, DEGRADED).unwrap();
    assert_eq!(degraded.reason, "ProgressDeadlineExceeded");
    assert!(
        degraded
            .message
            .contains("spec.progressDeadlineSeconds 600")
            && degraded.message.contains("waiting for db-2")
            && degraded.message.contains("db-2: ImagePullBackOff"),
        "{}",
        degraded.message
    );
    assert_eq!(
        condition(&s, PROGRESSING).unwrap().status,
        "True",
        "the operator keeps trying"
    );
    assert!(
        h.api
            .event_reasons()
            .contains(&"ProgressDeadlineExceeded".into())
    );

    // Roll back: the broken member is replaced first, then everything settles.
    h.edit(|dc| dc.spec.image = "dynamo:1".into());
    h.settle(30).await;
    let s = h.status();
    assert!(s.members.iter().all(|m| m.reason.is_none() && m.ready));
    assert_eq!(condition(&s, MEMBERS_HEALTHY).unwrap().status, "True");
    assert_eq!(condition(&s, DEGRADED).unwrap().status, "False");
    assert!(h.api.event_reasons().contains(&"MembersHealthy".into()));
    assert!(
        h.ctx
            .metrics
            .render()
            .contains("dynamo_operator_cluster_members_failing{name=\"db\",namespace=\"prod\"} 0")
    );
}

#[tokio::test]
async fn per_cluster_gauges_follow_the_status_and_go_with_the_cluster() {
    let h = Harness::running(spec(3)).await;
    h.reconcile().await;
    let m = h.ctx.metrics.render();
    for line in [
        "dynamo_operator_cluster_members_desired{name=\"db\",namespace=\"prod\"} 3",
        "dynamo_operator_cluster_members_ready{name=\"db\",namespace=\"prod\"} 3",
        "dynamo_operator_cluster_members_updated{name=\"db\",namespace=\"prod\"} 3",
        "dynamo_operator_cluster_handoffs_pending{name=\"db\",namespace=\"prod\"} 0",
        "dynamo_operator_cluster_phase{name=\"db\",namespace=\"prod\",phase=\"Stable\"} 1",
        "dynamo_operator_cluster_phase{name=\"db\",namespace=\"prod\",phase=\"ScalingUp\"} 0",
        "dynamo_operator_cluster_condition{name=\"db\",namespace=\"prod\",type=\"Available\"} 1",
        "dynamo_operator_cluster_condition{name=\"db\",namespace=\"prod\",type=\"Degraded\"} 0",
    ] {
        assert!(m.contains(line), "{line} missing from\n{m}");
    }
    h.edit(|dc| dc.spec.replicas = 5);
    h.reconcile().await;
    let m = h.ctx.metrics.render();
    assert!(
        m.contains("dynamo_operator_cluster_members_desired{name=\"db\",namespace=\"prod\"} 5")
    );
    assert!(m.contains(
        "dynamo_operator_cluster_phase{name=\"db\",namespace=\"prod\",phase=\"ScalingUp\"} 1"
    ));

    let mut dc = serde_json::to_value(h.dc()).unwrap();
    dc["metadata"]["deletionTimestamp"] = json!("2026-02-01T00:00:00Z");
    h.api.put(DC_PATH, dc);
    h.reconcile().await;
    let m = h.ctx.metrics.render();
    assert!(
        !m.contains("namespace=\"prod\""),
        "series of a deleted cluster remain:\n{m}"
    );
}

fn pod(status: Value) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db-1", "namespace": NS},
        "spec": {"containers": [{"name": "dynamo"}]},
        "status": status,
    }))
    .unwrap()
}

#[test]
fn pod_problems_are_read_from_container_states_and_scheduling() {
    use crate::controller::pod_problem;
    let crash = pod(json!({"containerStatuses": [{
        "name": "dynamo", "ready": false, "restartCount": 5, "image": "", "imageID": "",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m0s restarting failed container=dynamo"}},
        "lastState": {"terminated": {"exitCode": 101, "reason": "Error"}},
    }]}));
    let p = pod_problem(&crash).unwrap();
    assert_eq!(p.reason, "CrashLoopBackOff");
    assert_eq!(
        p.message,
        "container dynamo: back-off 5m0s restarting failed container=dynamo (last exit code 101, Error)"
    );

    let config = pod(json!({"containerStatuses": [{
        "name": "dynamo", "ready": false, "restartCount": 0, "image": "", "imageID": "",
        "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"db-token\" not found"}},
    }]}));
    assert_eq!(
        pod_problem(&config).unwrap().message,
        "container dynamo: secret \"db-token\" not found"
    );

    let unschedulable = pod(json!({"phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory.",
    }]}));
    let p = pod_problem(&unschedulable).unwrap();
    assert_eq!(
        (p.reason.as_str(), p.message.as_str()),
        (
            "Unschedulable",
            "0/3 nodes are available: 3 Insufficient memory."
        )
    );

    // Starting normally is not a problem.
    let creating = pod(json!({"phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "containerStatuses": [{"name": "dynamo", "ready": false, "restartCount": 0, "image": "", "imageID": "",
            "state": {"waiting": {"reason": "ContainerCreating"}}}]}));
    assert_eq!(pod_problem(&creating), None);
    assert_eq!(pod_problem(&pod(json!({}))), None);
}

#[test]
fn a_claim_is_pending_only_until_bound() {
    use crate::controller::pvc_obs;
    let claim = |phase: &str| -> k8s_openapi::api::core::v1::PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": "data-db-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": phase},
        }))
        .unwrap()
    };
    assert_eq!(
        pvc_obs(&claim("Pending")).pending_since,
        Some("2026-01-01T00:00:00Z".parse().unwrap())
    );
    assert_eq!(pvc_obs(&claim("Bound")).pending_since, None);
}
