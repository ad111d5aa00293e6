//! Against a real kube-apiserver and kube-controller-manager (no kubelet: pods stay
//! Pending). Runs only with `DYNAMO_E2E_APISERVER=1` and a `KUBECONFIG`;
//! `e2e/apiserver/operator-test.sh` brings the control plane up and runs it.
//!
//! Checks: the generated CRD is accepted; invalid specs are rejected by the schema and the
//! CEL rules (on create and on update); the operator, started as a process, creates the
//! objects with owner references and reports a sensible status for pods that never run;
//! resizing an unbootstrapped cluster; deletion through the finalizer and garbage
//! collection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};

use dynamo_operator::crd::DynamoCluster;

fn enabled() -> bool {
    std::env::var("DYNAMO_E2E_APISERVER").is_ok_and(|v| v == "1")
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

struct Operator {
    child: tokio::process::Child,
    log: PathBuf,
    port: u16,
}

impl Operator {
    async fn start(namespace: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log =
            std::env::temp_dir().join(format!("dynamo-operator-e2e-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dynamo-operator"));
        // Run as the operator's ServiceAccount (operator/deploy/rbac.yaml) when the script
        // provides its kubeconfig, so missing RBAC rules fail the test.
        if let Ok(kubeconfig) = std::env::var("OPERATOR_KUBECONFIG") {
            eprintln!("running the operator with {kubeconfig}");
            command.env("KUBECONFIG", kubeconfig);
        }
        let child = command
            .args([
                "--namespace",
                namespace,
                "--http-addr",
                &format!("127.0.0.1:{port}"),
                "--busy-requeue-s",
                "1",
                "--admin-timeout-ms",
                "500",
            ])
            .env("RUST_LOG", "info,dynamo_operator=debug")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start dynamo-operator");
        Operator { child, log, port }
    }

    fn dump(&self) {
        eprintln!(
            "----- operator log -----\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }
}

fn dc_resource() -> ApiResource {
    ApiResource::erase::<DynamoCluster>(&())
}

fn manifest(name: &str, spec: Value) -> DynamicObject {
    let mut obj = DynamicObject::new(name, &dc_resource());
    obj.data = json!({ "spec": spec });
    obj
}

async fn expect_rejected(api: &Api<DynamicObject>, name: &str, spec: Value, needle: &str) {
    match api
        .create(&PostParams::default(), &manifest(name, spec.clone()))
        .await
    {
        Ok(_) => panic!("{spec} was accepted; expected a rejection mentioning {needle:?}"),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            assert!(
                e.message.contains(needle),
                "rejection of {spec} says {:?}, expected {needle:?}",
                e.message
            );
            eprintln!("ok: rejected {spec}: {}", e.message);
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn condition(dc: &DynamicObject, type_: &str) -> Option<(String, String, String)> {
    dc.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
}

#[tokio::test]
async fn operator_against_a_real_apiserver() {
    if !enabled() {
        eprintln!(
            "skipped: set DYNAMO_E2E_APISERVER=1 and KUBECONFIG (e2e/apiserver/operator-test.sh does)"
        );
        return;
    }
    let client = Client::try_default()
        .await
        .expect("KUBECONFIG points at the e2e control plane");

    // --- the CRD, from the committed file
    let crd_yaml = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../crds/dynamocluster.yaml"),
    )
    .unwrap();
    let crd: CustomResourceDefinition = serde_yaml::from_str(&crd_yaml).unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "dynamoclusters.dynamo.dev",
        &PatchParams::apply("dynamo-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API server accepts the generated CRD");
    wait_for("CRD Established", Duration::from_secs(30), || async {
        let c = crds.get("dynamoclusters.dynamo.dev").await.ok()?;
        c.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await;
    eprintln!("ok: CRD established");

    let ns = format!("dynamo-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut nso = Namespace::default();
    nso.metadata.name = Some(ns.clone());
    namespaces
        .create(&PostParams::default(), &nso)
        .await
        .unwrap();
    let dcs: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &dc_resource());

    // --- admission: schema and CEL
    let base = json!({"replicas": 3, "image": "dynamo:e2e"});
    let with = |patch: Value| {
        let mut s = base.clone();
        json_merge(&mut s, &patch);
        s
    };
    // Creating a resource right after its CRD is established can race discovery; retry once.
    let _ = wait_for("CRD served", Duration::from_secs(30), || async {
        dcs.list(&ListParams::default()).await.ok()
    })
    .await;
    expect_rejected(
        &dcs,
        "bad-w",
        with(json!({"replication": {"n": 3, "r": 2, "w": 4}})),
        "replication.w must not exceed replication.n",
    )
    .await;
    expect_rejected(
        &dcs,
        "bad-r",
        with(json!({"replication": {"n": 3, "r": 4, "w": 2}})),
        "replication.r must not exceed replication.n",
    )
    .await;
    expect_rejected(
        &dcs,
        "bad-replicas",
        with(json!({"replicas": 2})),
        "replicas must be at least replication.n",
    )
    .await;
    expect_rejected(
        &dcs,
        "bad-partitions",
        with(json!({"partitions": 100})),
        "partitions must be a power of two",
    )
    .await;
    expect_rejected(
        &dcs,
        "big-partitions",
        with(json!({"partitions": 131072})),
        "partitions must be a power of two",
    )
    .await;
    expect_rejected(
        &dcs,
        "bad-n",
        with(json!({"replicas": 9, "replication": {"n": 8, "r": 2, "w": 2}})),
        "spec.replication.n",
    )
    .await;
    expect_rejected(
        &dcs,
        "bad-conflicts",
        with(json!({"replication": {"conflicts": "merge"}})),
        "spec.replication.conflicts",
    )
    .await;
    expect_rejected(&dcs, "no-image", json!({"replicas": 3}), "spec.image").await;
    expect_rejected(
        &dcs,
        &"x".repeat(53),
        base.clone(),
        "metadata.name must be at most 52 characters",
    )
    .await;
    expect_rejected(
        &dcs,
        "bad-service",
        with(json!({"service": {"type": "ExternalName"}})),
        "spec.service.type",
    )
    .await;

    // --- the operator
    let mut op = Operator::start(&ns).await;
    let result =
        tokio::time::timeout(Duration::from_secs(240), scenario(&client, &ns, &dcs, &op)).await;
    let ok = matches!(result, Ok(Ok(())));
    if !ok {
        op.dump();
    }
    let _ = op.child.kill().await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    match result {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("the scenario timed out"),
    }
}

fn json_merge(a: &mut Value, b: &Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

async fn scenario(
    client: &Client,
    ns: &str,
    dcs: &Api<DynamicObject>,
    op: &Operator,
) -> Result<(), Box<dyn std::any::Any + Send>> {
    let client = client.clone();
    let ns = ns.to_string();
    let dcs = dcs.clone();
    let port = op.port;
    // Run in a task so a failed assertion is caught and the operator log can be dumped.
    tokio::spawn(async move { run_scenario(client, ns, dcs, port).await })
        .await
        .map_err(|e| e.into_panic())
}

async fn run_scenario(client: Client, ns: String, dcs: Api<DynamicObject>, port: u16) {
    let op = OperatorHttp { port };
    wait_for("operator /readyz", Duration::from_secs(60), || async {
        (op.get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(op.get("/healthz").await.unwrap().0, 200);
    eprintln!("ok: operator ready (found the CRD through discovery)");

    let spec = json!({"replicas": 3, "image": "dynamo:e2e", "storage": {"size": "1Gi", "reclaimPolicy": "Delete"}, "pod": {"nodeSelector": {"disk": "ssd"}}});
    dcs.create(&PostParams::default(), &manifest("db", spec))
        .await
        .expect("a valid DynamoCluster is accepted");
    let created = dcs.get("db").await.unwrap();
    assert_eq!(created.data["spec"]["partitions"], 256, "defaults applied");
    assert_eq!(
        created.data["spec"]["replication"],
        json!({"n": 3, "r": 2, "w": 2, "conflicts": "siblings"})
    );
    let uid = created.uid().unwrap();

    // Immutable fields (transition rules).
    for (patch, needle) in [
        (
            json!({"spec": {"partitions": 512}}),
            "partitions is immutable",
        ),
        (
            json!({"spec": {"replication": {"n": 3, "r": 1, "w": 2, "conflicts": "siblings"}}}),
            "replication is immutable",
        ),
        (
            json!({"spec": {"storage": {"size": "2Gi"}}}),
            "storage.size and storage.storageClassName are immutable",
        ),
    ] {
        match dcs
            .patch("db", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => panic!("{patch} was accepted"),
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422);
                assert!(e.message.contains(needle), "{}", e.message);
                eprintln!("ok: rejected update {patch}: {}", e.message);
            }
            Err(e) => panic!("{e}"),
        }
    }

    // --- objects, owned by the DynamoCluster
    let owned_by_db = |refs: Option<
        &Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    >| {
        refs.is_some_and(|r| {
            r.iter()
                .any(|o| o.uid == uid && o.kind == "DynamoCluster" && o.controller == Some(true))
        })
    };
    let stss: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts = wait_for("StatefulSet db", Duration::from_secs(30), || async {
        stss.get_opt("db").await.ok().flatten()
    })
    .await;
    assert!(owned_by_db(sts.metadata.owner_references.as_ref()));
    let spec = sts.spec.clone().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("db-peers"));
    assert_eq!(
        spec.update_strategy.as_ref().unwrap().type_.as_deref(),
        Some("OnDelete")
    );
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    let pod_spec = spec.template.spec.unwrap();
    assert_eq!(pod_spec.node_selector.unwrap()["disk"], "ssd");
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let peers = svcs.get("db-peers").await.unwrap();
    assert!(owned_by_db(peers.metadata.owner_references.as_ref()));
    assert_eq!(
        peers.spec.as_ref().unwrap().cluster_ip.as_deref(),
        Some("None")
    );
    assert_eq!(
        peers.spec.as_ref().unwrap().publish_not_ready_addresses,
        Some(true)
    );
    let client_svc = svcs.get("db").await.unwrap();
    assert!(owned_by_db(client_svc.metadata.owner_references.as_ref()));
    assert_eq!(
        client_svc.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP")
    );
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get("db")
        .await
        .unwrap();
    assert!(owned_by_db(pdb.metadata.owner_references.as_ref()));
    assert_eq!(
        pdb.spec.unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("db-config")
        .await
        .unwrap();
    assert!(owned_by_db(cm.metadata.owner_references.as_ref()));
    assert_eq!(
        cm.data.as_ref().unwrap()["DYNAMO_SEEDS"],
        format!(
            "db-0.db-peers.{ns}.svc:7070,db-1.db-peers.{ns}.svc:7070,db-2.db-peers.{ns}.svc:7070"
        )
    );
    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("db-cluster-token")
        .await
        .unwrap();
    assert!(owned_by_db(secret.metadata.owner_references.as_ref()));
    assert!(secret.data.unwrap()["token"].0.len() >= 32);
    let dc = dcs.get("db").await.unwrap();
    assert_eq!(dc.finalizers(), ["dynamo.dev/cleanup"]);
    eprintln!("ok: StatefulSet, Services, PDB, ConfigMap, Secret created with owner references");

    // --- pods exist (kube-controller-manager) but never run (no kubelet)
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    wait_for(
        "3 pods created by the StatefulSet controller",
        Duration::from_secs(60),
        || async {
            (pods
                .list(&ListParams::default().labels("app.kubernetes.io/instance=db"))
                .await
                .ok()?
                .items
                .len()
                == 3)
                .then_some(())
        },
    )
    .await;
    let dc = wait_for(
        "status for pods that never run",
        Duration::from_secs(60),
        || async {
            let dc = dcs.get("db").await.ok()?;
            (dc.data["status"]["replicas"] == 3 && dc.data["status"]["observedGeneration"] == 1)
                .then_some(dc)
        },
    )
    .await;
    let (status, reason, message) = condition(&dc, "Progressing").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "Bootstrapping")
    );
    assert!(
        message.contains("waiting for pod db-0 to start"),
        "{message}"
    );
    assert_eq!(condition(&dc, "Available").unwrap().1, "NotBootstrapped");
    assert_eq!(condition(&dc, "Degraded").unwrap().0, "False");
    assert_eq!(condition(&dc, "Rebalancing").unwrap().1, "NotBootstrapped");
    assert_eq!(dc.data["status"]["readyMembers"], 0);
    assert_eq!(dc.data["status"]["bootstrapped"], false);
    let states: Vec<&str> = dc.data["status"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["Pending", "Pending", "Pending"]);
    assert_eq!(
        dc.data["status"]["selector"],
        "app.kubernetes.io/instance=db,app.kubernetes.io/name=dynamo"
    );
    eprintln!(
        "ok: status with pods that never run: Progressing=True/Bootstrapping, Available=False/NotBootstrapped"
    );

    // --- idempotence on a real API server: further passes change no object.
    let reconciliations = || async {
        let (_, body) = op.get("/metrics").await?;
        body.lines()
            .find(|l| l.starts_with("dynamo_operator_reconciliations_total{result=\"ok\"}"))?
            .rsplit(' ')
            .next()?
            .parse::<f64>()
            .ok()
    };
    let versions = || async {
        let sts = stss.get("db").await.ok()?.resource_version()?;
        let peers = svcs.get("db-peers").await.ok()?.resource_version()?;
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .get("db-config")
            .await
            .ok()?
            .resource_version()?;
        let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
            .get("db")
            .await
            .ok()?
            .resource_version()?;
        let dc = dcs.get("db").await.ok()?.resource_version()?;
        Some((sts, peers, cm, pdb, dc))
    };
    let before = versions().await.unwrap();
    let start = reconciliations().await.unwrap();
    wait_for(
        "3 more reconciliations",
        Duration::from_secs(30),
        || async { (reconciliations().await? >= start + 3.0).then_some(()) },
    )
    .await;
    assert_eq!(
        versions().await.unwrap(),
        before,
        "a pass over an unchanged cluster changed an object"
    );
    eprintln!(
        "ok: 3 further passes changed no object (StatefulSet, Service, ConfigMap, PDB, DynamoCluster resourceVersions unchanged)"
    );

    // --- resize through the scale subresource (before bootstrap nothing holds data)
    let scale = |n: i64| json!({"spec": {"replicas": n}});
    dcs.patch_scale("db", &PatchParams::default(), &Patch::Merge(&scale(4)))
        .await
        .expect("scale to 4");
    wait_for(
        "StatefulSet at 4 and claim data-db-3",
        Duration::from_secs(60),
        || async {
            let sts = stss.get("db").await.ok()?;
            let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                .get_opt("data-db-3")
                .await
                .ok()??;
            (sts.spec?.replicas == Some(4)).then_some(pvc)
        },
    )
    .await;
    dcs.patch_scale("db", &PatchParams::default(), &Patch::Merge(&scale(3)))
        .await
        .expect("scale to 3");
    wait_for(
        "StatefulSet back at 3 and claim data-db-3 deleted",
        Duration::from_secs(90),
        || async {
            let sts = stss.get("db").await.ok()?;
            let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                .get_opt("data-db-3")
                .await
                .ok()?;
            (sts.spec?.replicas == Some(3) && pvc.is_none()).then_some(())
        },
    )
    .await;
    eprintln!(
        "ok: scale 3 -> 4 -> 3 through the scale subresource; the removed ordinal's claim deleted"
    );

    // Below n through the scale subresource: rejected at admission, or refused by the operator.
    match dcs
        .patch_scale("db", &PatchParams::default(), &Patch::Merge(&scale(1)))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            eprintln!("ok: scale to 1 rejected at admission: {}", e.message);
        }
        Ok(_) => {
            let dc = wait_for("ScaleRefused", Duration::from_secs(30), || async {
                let dc = dcs.get("db").await.ok()?;
                (condition(&dc, "Progressing")?.1 == "ScaleRefused").then_some(dc)
            })
            .await;
            assert_eq!(
                stss.get("db").await.unwrap().spec.unwrap().replicas,
                Some(3)
            );
            eprintln!(
                "ok: scale to 1 accepted by the scale subresource, refused by the operator: {:?}",
                condition(&dc, "Progressing")
            );
            dcs.patch_scale("db", &PatchParams::default(), &Patch::Merge(&scale(3)))
                .await
                .unwrap();
        }
        Err(e) => panic!("{e}"),
    }

    // --- events
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    for r in ["TokenSecretCreated", "Created", "StatefulSetScaled"] {
        assert!(
            reasons.contains(&r.to_string()),
            "event {r} missing from {reasons:?}"
        );
    }

    // --- metrics
    let (code, body) = op.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("dynamo_operator_reconciliations_total{result=\"ok\"}"),
        "{body}"
    );
    assert!(body.contains("dynamo_operator_reconcile_duration_seconds_bucket"));

    // --- deletion: finalizer (claims, reclaimPolicy Delete), then garbage collection
    dcs.delete("db", &DeleteParams::default()).await.unwrap();
    wait_for("DynamoCluster gone", Duration::from_secs(60), || async {
        dcs.get_opt("db").await.ok()?.is_none().then_some(())
    })
    .await;
    wait_for(
        "StatefulSet and Services garbage-collected",
        Duration::from_secs(90),
        || async {
            let sts_gone = stss.get_opt("db").await.ok()?.is_none();
            let svc_gone = svcs.get_opt("db-peers").await.ok()?.is_none()
                && svcs.get_opt("db").await.ok()?.is_none();
            (sts_gone && svc_gone).then_some(())
        },
    )
    .await;
    wait_for("claims deleted", Duration::from_secs(90), || async {
        Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    eprintln!(
        "ok: deletion ran the finalizer (claims deleted) and garbage collection removed the owned objects"
    );
    let _ = DynamoCluster::kind(&());
}

struct OperatorHttp {
    port: u16,
}

impl OperatorHttp {
    /// GET on the operator's own HTTP server: (status, whole response).
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, buf))
    }
}
