//! The reconciler: observe → plan → apply desired objects → execute steps → status.
//!
//! Every pass is idempotent: desired objects are server-side applied (an unchanged object is
//! a no-op for the API server), steps are only planned when the observation calls for them,
//! and the status is only written when it changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use poisonless::Mutex;
use serde::Serialize;

use crate::admin::{AddressTemplate, AdminError, BootstrapOutcome, ClusterReports, NodeAdmin};
use crate::builders::{
    self, ANNOTATION_HOLDS_DATA, Inputs, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGER, Names,
};
use crate::crd::{DynamoCluster, DynamoClusterStatus, ReclaimPolicy};
use crate::metrics::Metrics;
use crate::plan::{self, Action as Step, ClusterObs, Observed, Plan, PodObs, PodProblem, PvcObs};
use crate::status::{
    self, AVAILABLE, DEGRADED, MEMBERS_HEALTHY, PROGRESS_DEADLINE_EXCEEDED, REBALANCING,
    StatusInputs,
};

/// Finalizer on every DynamoCluster: lets the operator apply the volume reclaim policy.
pub const FINALIZER: &str = "dynamo.dev/cleanup";

mod poisonless {
    /// `std::sync::Mutex` whose poisoning is ignored (a panic elsewhere must not stop the
    /// controller).
    pub struct Mutex<T>(std::sync::Mutex<T>);
    impl<T> Mutex<T> {
        pub fn new(v: T) -> Self {
            Mutex(std::sync::Mutex::new(v))
        }
        pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("cluster token: {0}")]
    Token(String),
    #[error("HTTPS to the members (spec.peerTls): {0}")]
    Tls(String),
    #[error("the DynamoCluster has no namespace")]
    NoNamespace,
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Label for the error metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.kind(),
                _ => "finalizer",
            },
            Error::Token(_) => "token",
            Error::Tls(_) => "tls",
            Error::NoNamespace => "namespace",
            Error::Json(_) => "json",
        }
    }
}

/// Requeue periods.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// While something is in progress (handoffs, joins, a rollout).
    pub busy: Duration,
    /// When the cluster matches its spec (the cluster is still re-checked this often).
    pub idle: Duration,
    /// First retry after an error; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            busy: Duration::from_secs(5),
            idle: Duration::from_secs(60),
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(300),
        }
    }
}

pub struct Context {
    pub client: Client,
    pub admin: Arc<dyn NodeAdmin>,
    pub address: AddressTemplate,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
    /// Whether the ServiceMonitor CRD is served, checked at most once a minute.
    monitoring: Mutex<Option<(Instant, bool)>>,
    /// Consecutive failures per cluster, for the error backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Seconds added to the wall clock: tests move time past a progress deadline without
    /// waiting for it.
    clock_offset_seconds: Mutex<i64>,
}

impl Context {
    pub fn new(
        client: Client,
        admin: Arc<dyn NodeAdmin>,
        address: AddressTemplate,
        metrics: Arc<Metrics>,
        timing: Timing,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Context {
            client,
            admin,
            address,
            recorder,
            metrics,
            timing,
            monitoring: Mutex::new(None),
            failures: Mutex::new(HashMap::new()),
            clock_offset_seconds: Mutex::new(0),
        }
    }

    /// The time conditions and progress deadlines are computed with.
    pub fn now(&self) -> Time {
        let now = k8s_openapi::jiff::Timestamp::now();
        let offset = *self.clock_offset_seconds.lock();
        Time(
            now.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(offset))
                .unwrap_or(now),
        )
    }

    /// Moves this context's clock forward (tests of deadlines).
    #[cfg(test)]
    pub(crate) fn advance_clock(&self, seconds: i64) {
        *self.clock_offset_seconds.lock() += seconds;
    }

    async fn service_monitor_crd(&self) -> bool {
        if let Some((at, present)) = *self.monitoring.lock()
            && at.elapsed() < Duration::from_secs(60)
        {
            return present;
        }
        let present = match self
            .client
            .list_api_group_resources("monitoring.coreos.com/v1")
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == "servicemonitors"),
            Err(_) => false,
        };
        *self.monitoring.lock() = Some((Instant::now(), present));
        present
    }
}

fn key(dc: &DynamoCluster) -> String {
    format!("{}/{}", dc.namespace().unwrap_or_default(), dc.name_any())
}

/// The controller's reconcile function.
pub async fn reconcile(dc: Arc<DynamoCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = dc.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<DynamoCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let k = key(&dc);
    let result = finalizer(&api, FINALIZER, dc, |event| async {
        match event {
            FinalizerEvent::Apply(dc) => apply(&dc, &ctx).await,
            FinalizerEvent::Cleanup(dc) => cleanup(&dc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .record(started, result.as_ref().err().map(Error::kind));
    if result.is_ok() {
        ctx.failures.lock().remove(&k);
    }
    result
}

/// Exponential backoff per cluster.
pub fn error_policy(dc: Arc<DynamoCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut map = ctx.failures.lock();
        let n = map.entry(key(&dc)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = ctx
        .timing
        .backoff
        .saturating_mul(1u32 << (failures - 1).min(16))
        .min(ctx.timing.max_backoff);
    tracing::warn!(cluster = %key(&dc), %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

fn apply_params() -> PatchParams {
    PatchParams::apply(MANAGER).force()
}

async fn publish(
    ctx: &Context,
    dc: &DynamoCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &dc.object_ref(&())).await {
        tracing::warn!(cluster = %key(dc), reason, error = %e, "could not publish event");
    }
}

/// Reads (or creates) the cluster token.
async fn ensure_token(dc: &DynamoCluster, ctx: &Context, names: &Names) -> Result<String, Error> {
    let r = builders::token_ref(dc);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let secret = match secrets.get_opt(&r.name).await? {
        Some(s) => s,
        None if dc.spec.cluster_token_secret.is_none() => {
            let token = builders::random_token();
            match secrets
                .create(
                    &PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    },
                    &builders::token_secret(dc, names, &token),
                )
                .await
            {
                Ok(_) => {
                    publish(
                        ctx,
                        dc,
                        EventType::Normal,
                        "TokenSecretCreated",
                        "Create",
                        format!("created Secret {} with a random cluster token", r.name),
                    )
                    .await;
                    return Ok(token);
                }
                Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(&r.name).await?,
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            return Err(Error::Token(format!(
                "Secret {} (spec.clusterTokenSecret) not found",
                r.name
            )));
        }
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.trim().to_string())
        })
        .ok_or_else(|| Error::Token(format!("Secret {} has no key {:?}", r.name, r.key)))?;
    if value.len() < 16 {
        return Err(Error::Token(format!(
            "the token in Secret {} is shorter than 16 characters",
            r.name
        )));
    }
    Ok(value)
}

/// With `spec.peerTls.https`: the CA (`ca.crt` of the peer TLS Secret) that the members'
/// HTTPS certificates are verified against.
async fn https_ca(
    dc: &DynamoCluster,
    ctx: &Context,
    names: &Names,
) -> Result<Option<Arc<[u8]>>, Error> {
    let Some(tls) = dc.spec.peer_tls.as_ref().filter(|t| t.https) else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let secret = secrets.get_opt(&tls.secret_name).await?.ok_or_else(|| {
        Error::Tls(format!(
            "Secret {} (spec.peerTls) not found",
            tls.secret_name
        ))
    })?;
    let ca = secret
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .map(|b| b.0.clone())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| Error::Tls(format!("Secret {} has no ca.crt", tls.secret_name)))?;
    Ok(Some(Arc::from(ca)))
}

/// Container waiting reasons that mean the member cannot run until someone acts (a fixed
/// image, a Secret, a working binary); `ContainerCreating` and `PodInitializing` are not.
pub const FAILED_WAITING_REASONS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Why Kubernetes cannot run a pod: a (init) container waiting for one of
/// [`FAILED_WAITING_REASONS`], or the scheduler's `PodScheduled=False`.
pub fn pod_problem(pod: &Pod) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting
            .reason
            .as_deref()
            .filter(|r| FAILED_WAITING_REASONS.contains(r))
        else {
            continue;
        };
        let mut message = format!("container {}", c.name);
        if let Some(m) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
            message.push_str(": ");
            message.push_str(m);
        }
        // A crash loop's own message says only "back-off"; the last exit says why.
        if let Some(last) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
            message.push_str(&format!(" (last exit code {}", last.exit_code));
            if let Some(r) = last.reason.as_deref() {
                message.push_str(&format!(", {r}"));
            }
            message.push(')');
        }
        return Some(PodProblem {
            reason: reason.into(),
            message,
        });
    }
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")?;
    Some(PodProblem {
        reason: unscheduled
            .reason
            .clone()
            .unwrap_or_else(|| "Unschedulable".into()),
        message: unscheduled
            .message
            .clone()
            .unwrap_or_else(|| "the scheduler found no node for the pod".into()),
    })
}

pub fn pod_obs(pod: &Pod, update_revision: Option<&str>) -> PodObs {
    let status = pod.status.as_ref();
    let running = status
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.name == builders::CONTAINER
                    && (c.started == Some(true)
                        || c.state.as_ref().is_some_and(|st| st.running.is_some()))
            })
        });
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let revision = pod
        .labels()
        .get("controller-revision-hash")
        .map(String::as_str);
    PodObs {
        running,
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        updated: match (update_revision, revision) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        },
        problem: pod_problem(pod),
    }
}

/// A member claim as observed.
pub fn pvc_obs(claim: &PersistentVolumeClaim) -> PvcObs {
    let pending = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_none_or(|phase| phase == "Pending");
    PvcObs {
        holds_data: claim.annotations().contains_key(ANNOTATION_HOLDS_DATA),
        terminating: claim.metadata.deletion_timestamp.is_some(),
        pending_since: pending
            .then(|| claim.metadata.creation_timestamp.as_ref().map(|t| t.0))
            .flatten(),
    }
}

/// Asks every running member for its view of the cluster. Returns the cluster as seen from
/// the claimant (or the first member that has a view), the running pods that answered
/// without a cluster, and the members that did not answer.
pub async fn observe_cluster(
    admin: &dyn NodeAdmin,
    address: &AddressTemplate,
    names: &Names,
    token: &str,
    pods: &BTreeMap<i32, PodObs>,
) -> (Option<ClusterObs>, BTreeSet<i32>, Vec<AdminError>) {
    let endpoint =
        |i: i32| address.endpoint(&names.pod(i), &names.peer_service(), &names.namespace);
    let mut views = BTreeMap::new();
    let mut unclustered = BTreeSet::new();
    let mut failures = Vec::new();
    let asks = pods
        .iter()
        .filter(|(_, p)| p.running && !p.terminating)
        .map(|(&i, _)| {
            let at = endpoint(i);
            async move { (i, admin.members(&at, token).await) }
        });
    for (i, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(report) if report.has_cluster() => {
                views.insert(names.pod(i), report);
            }
            Ok(_) => {
                unclustered.insert(i);
            }
            Err(e) => failures.push(e),
        }
    }
    // Prefer the claimant's view: it plans membership changes.
    let claimant = views
        .values()
        .find_map(|v| v.claimant.clone())
        .filter(|c| views.contains_key(c));
    let source = claimant.or_else(|| {
        let ready = views.keys().find(|id| {
            names
                .ordinal_of(id)
                .and_then(|i| pods.get(&i))
                .is_some_and(|p| p.ready)
        });
        ready.or_else(|| views.keys().next()).cloned()
    });
    let Some(source) = source else {
        return (None, unclustered, failures);
    };
    let at = address.endpoint(&source, &names.peer_service(), &names.namespace);
    let ClusterReports { ring, handoffs } = ClusterReports::fetch(admin, &at, token).await;
    let members = views.get(&source).cloned().unwrap_or_default();
    let ring = ring.map_err(|e| failures.push(e)).ok();
    let handoffs = handoffs.map_err(|e| failures.push(e)).ok();
    (
        Some(ClusterObs {
            source,
            members,
            ring,
            handoffs,
            views,
        }),
        unclustered,
        failures,
    )
}

/// What executing the plan's steps produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub bootstrapped: bool,
    /// Unexpected failures (shown in `Degraded`).
    pub problems: Vec<String>,
    /// Expected waits reported by members (e.g. a join before gossip knows the member).
    pub notes: Vec<String>,
}

/// Runs the admin-API steps of a plan (bootstrap, join, leave). Kubernetes steps are left
/// to the caller. Shared by the controller and the state-machine simulation tests.
pub async fn run_admin_steps(
    admin: &dyn NodeAdmin,
    address: &AddressTemplate,
    names: &Names,
    token: &str,
    plan: &Plan,
    cluster: Option<&ClusterObs>,
) -> (Outcome, Vec<(Step, String)>) {
    let mut out = Outcome::default();
    let mut done = Vec::new();
    let endpoint = |id: &str| address.endpoint(id, &names.peer_service(), &names.namespace);
    for step in &plan.actions {
        match step {
            Step::Bootstrap(i) => match admin.bootstrap(&endpoint(&names.pod(*i)), token).await {
                Ok(BootstrapOutcome::Created) => {
                    out.bootstrapped = true;
                    done.push((
                        step.clone(),
                        format!("created the cluster on {}", names.pod(*i)),
                    ));
                }
                Ok(BootstrapOutcome::AlreadyMember) => out.bootstrapped = true,
                Err(e) => out.problems.push(format!("bootstrap: {e}")),
            },
            Step::Join(i) | Step::Leave(i) => {
                let Some(cluster) = cluster else { continue };
                let member = names.pod(*i);
                let at = endpoint(&cluster.source);
                let joining = matches!(step, Step::Join(_));
                let result = if joining {
                    admin.join(&at, token, &member).await
                } else {
                    admin.leave(&at, token, &member).await
                };
                match result {
                    Ok(()) => done.push((
                        step.clone(),
                        if joining {
                            format!("asked the ring to add {member}")
                        } else {
                            format!("asked {member} to leave the ring")
                        },
                    )),
                    // 400: gossip does not know the new member yet; 409 on join: not alive
                    // yet or still leaving. Both resolve by themselves.
                    Err(
                        e @ AdminError::Api {
                            status: 400 | 409 | 503,
                            ..
                        },
                    ) if joining => out.notes.push(format!("join of {member} deferred: {e}")),
                    Err(e @ AdminError::Api { status: 409, .. }) => {
                        out.problems.push(format!("leave of {member} refused: {e}"))
                    }
                    Err(e) => out.problems.push(format!(
                        "{} {member}: {e}",
                        if joining { "join" } else { "leave" }
                    )),
                }
            }
            _ => {}
        }
    }
    (out, done)
}

fn step_name(step: &Step) -> &'static str {
    match step {
        Step::Bootstrap(_) => "bootstrap",
        Step::Join(_) => "join",
        Step::Leave(_) => "leave",
        Step::MarkHoldsData(_) => "mark_volume",
        Step::DeletePvc(_) => "delete_pvc",
        Step::Recycle(_) => "recycle",
        Step::RestartForUpdate(_) => "restart_for_update",
    }
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn ssa<K>(api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(name, &apply_params(), &Patch::Apply(obj)).await
}

/// Applies every desired object. Returns whether the StatefulSet was created now.
async fn apply_desired(
    dc: &DynamoCluster,
    ctx: &Context,
    names: &Names,
    inputs: &Inputs,
) -> Result<(), Error> {
    let client = &ctx.client;
    let ns = &names.namespace;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    ssa(&cms, &names.config_map(), &builders::config_map(dc, names)).await?;
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    ssa(
        &svcs,
        &names.peer_service(),
        &builders::peer_service(dc, names),
    )
    .await?;
    ssa(
        &svcs,
        &names.client_service(),
        &builders::client_service(dc, names),
    )
    .await?;
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    ssa(
        &sts,
        &names.statefulset(),
        &builders::statefulset(dc, names, inputs),
    )
    .await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    ssa(&pdbs, &names.pdb(), &builders::pdb(dc, names)).await?;
    if ctx.service_monitor_crd().await {
        let sms: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &builders::service_monitor_resource());
        if dc.spec.monitoring.service_monitor.enabled {
            sms.patch(
                &names.service_monitor(),
                &apply_params(),
                &Patch::Apply(&builders::service_monitor(dc, names)),
            )
            .await?;
        } else if sms.get_opt(&names.service_monitor()).await?.is_some() {
            delete_ignoring_missing(&sms, &names.service_monitor()).await?;
        }
    }
    Ok(())
}

async fn apply(dc: &DynamoCluster, ctx: &Context) -> Result<Action, Error> {
    match apply_inner(dc, ctx).await {
        Ok(action) => Ok(action),
        Err(e) => {
            // Tell the user in the status, then let the error policy back off.
            let mut status = dc.status.clone().unwrap_or_default();
            let now = ctx.now();
            let message = e.to_string();
            let previous = status
                .conditions
                .iter()
                .find(|c| c.type_ == DEGRADED)
                .cloned();
            status.conditions.retain(|c| c.type_ != DEGRADED);
            let changed = previous.as_ref().is_none_or(|c| {
                c.status != "True" || c.reason != "ReconcileError" || c.message != message
            });
            status
                .conditions
                .push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                    type_: DEGRADED.into(),
                    status: "True".into(),
                    reason: "ReconcileError".into(),
                    message: message.clone(),
                    last_transition_time: previous
                        .filter(|c| c.status == "True")
                        .map_or(now, |c| c.last_transition_time),
                    observed_generation: dc.metadata.generation,
                });
            if changed {
                publish(
                    ctx,
                    dc,
                    EventType::Warning,
                    "ReconcileError",
                    "Reconcile",
                    message,
                )
                .await;
                if let Err(pe) = patch_status(dc, ctx, &status).await {
                    tracing::warn!(cluster = %key(dc), error = %pe, "could not record the error in the status");
                }
            }
            Err(e)
        }
    }
}

async fn patch_status(
    dc: &DynamoCluster,
    ctx: &Context,
    status: &DynamoClusterStatus,
) -> Result<(), Error> {
    let ns = dc.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<DynamoCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": DynamoCluster::api_version(&()),
        "kind": DynamoCluster::kind(&()),
        "status": status,
    });
    api.patch_status(&dc.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(())
}

async fn apply_inner(dc: &DynamoCluster, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(dc);
    let ns = names.namespace.clone();
    let client = &ctx.client;
    let token = ensure_token(dc, ctx, &names).await?;
    let address = match https_ca(dc, ctx, &names).await? {
        Some(ca) => ctx.address.with_https(ca),
        None => ctx.address.clone(),
    };

    // --- observe
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let existing = sts_api.get_opt(&names.statefulset()).await?;
    let update_revision = existing
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.update_revision.clone());
    let selector = ListParams::default().labels(&builders::selector_string(&names));
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pods: BTreeMap<i32, PodObs> = pod_api
        .list(&selector)
        .await?
        .items
        .iter()
        .filter_map(|p| {
            Some((
                names.ordinal_of(&p.name_any())?,
                pod_obs(p, update_revision.as_deref()),
            ))
        })
        .collect();
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let pvcs: BTreeMap<i32, PvcObs> = pvc_api
        .list(&selector)
        .await?
        .items
        .iter()
        .filter_map(|c| Some((names.pvc_ordinal(&c.name_any())?, pvc_obs(c))))
        .collect();
    let (cluster, unclustered, failures) =
        observe_cluster(ctx.admin.as_ref(), &address, &names, &token, &pods).await;
    let previous = dc.status.clone().unwrap_or_default();
    let observed = Observed {
        spec_replicas: dc.spec.replicas,
        n: dc.spec.replication.n,
        sts_replicas: existing
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas),
        pods,
        pvcs,
        bootstrapped: previous.bootstrapped,
        cluster,
        unclustered,
    };

    // --- plan
    let plan = plan::plan(&observed, &names);
    tracing::debug!(cluster = %key(dc), ?plan, "planned");

    // --- apply desired objects
    apply_desired(dc, ctx, &names, &Inputs::for_cluster(dc, plan.sts_replicas)).await?;
    match observed.sts_replicas {
        None => {
            publish(ctx, dc, EventType::Normal, "Created", "Create", format!("created StatefulSet {} with {} members, Services, ConfigMap and PodDisruptionBudget", names.statefulset(), plan.sts_replicas)).await;
        }
        Some(before) if before != plan.sts_replicas => {
            let why = if plan.sts_replicas < before {
                " (departing members have handed off their partitions)"
            } else {
                ""
            };
            publish(
                ctx,
                dc,
                EventType::Normal,
                "StatefulSetScaled",
                "Scale",
                format!(
                    "StatefulSet {} scaled from {before} to {}{why}",
                    names.statefulset(),
                    plan.sts_replicas
                ),
            )
            .await;
        }
        _ => {}
    }

    // --- execute steps
    let (mut outcome, done) = run_admin_steps(
        ctx.admin.as_ref(),
        &address,
        &names,
        &token,
        &plan,
        observed.cluster.as_ref(),
    )
    .await;
    let ring_changes: Vec<String> = done
        .iter()
        .filter_map(|(step, _)| match step {
            Step::Join(i) => Some(format!("{} asked to join", names.pod(*i))),
            Step::Leave(i) => Some(format!("{} asked to leave", names.pod(*i))),
            _ => None,
        })
        .collect();
    for (step, note) in done {
        ctx.metrics
            .actions
            .with_label_values(&[step_name(&step)])
            .inc();
        let (reason, action) = match step {
            Step::Bootstrap(_) => ("Bootstrapped", "Bootstrap"),
            Step::Join(_) => ("MemberJoinRequested", "Join"),
            _ => ("MemberLeaveRequested", "Leave"),
        };
        publish(ctx, dc, EventType::Normal, reason, action, note).await;
    }
    for problem in outcome
        .problems
        .iter()
        .filter(|p| p.starts_with("leave of"))
    {
        publish(
            ctx,
            dc,
            EventType::Warning,
            "LeaveRefused",
            "Leave",
            problem.clone(),
        )
        .await;
    }
    for step in &plan.actions {
        let pvc = |i: i32| names.pvc(i);
        let res: Result<Option<(&str, &str, String)>, kube::Error> = match step {
            Step::MarkHoldsData(i) => {
                let patch = serde_json::json!({ "metadata": { "annotations": { ANNOTATION_HOLDS_DATA: "true" } } });
                pvc_api.patch(&pvc(*i), &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| None)
            }
            Step::DeletePvc(i) => delete_ignoring_missing(&pvc_api, &pvc(*i))
                .await
                .map(|_| Some(("VolumeDeleted", "Delete", format!("deleted PersistentVolumeClaim {} of removed member {}", pvc(*i), names.pod(*i))))),
            Step::Recycle(i) => match delete_ignoring_missing(&pvc_api, &pvc(*i)).await {
                Ok(()) => delete_ignoring_missing(&pod_api, &names.pod(*i)).await.map(|_| {
                    Some(("MemberRecycled", "Recycle", format!("{} left the ring earlier and is wanted again: deleted its volume and pod so it rejoins clean", names.pod(*i))))
                }),
                Err(e) => Err(e),
            },
            Step::RestartForUpdate(i) => delete_ignoring_missing(&pod_api, &names.pod(*i))
                .await
                .map(|_| Some(("RollingUpdate", "Restart", format!("restarting {} onto the new pod template (one member at a time)", names.pod(*i))))),
            _ => Ok(None),
        };
        match res {
            Ok(Some((reason, action, note))) => {
                ctx.metrics
                    .actions
                    .with_label_values(&[step_name(step)])
                    .inc();
                publish(ctx, dc, EventType::Normal, reason, action, note).await;
            }
            Ok(None) => {}
            Err(e) => outcome.problems.push(format!("{}: {e}", step_name(step))),
        }
    }

    // --- status
    let mut problems: Vec<String> = outcome.problems.clone();
    // Members that run and are ready but do not answer are a problem; starting ones are not.
    for f in &failures {
        if matches!(f, AdminError::Tls { .. }) {
            // A configuration problem, not a member still starting.
            problems.push(f.to_string());
        } else if let AdminError::Unreachable { member, .. }
        | AdminError::Api { member, .. }
        | AdminError::Decode { member, .. } = f
            && names
                .ordinal_of(member)
                .and_then(|i| observed.pods.get(&i))
                .is_some_and(|p| p.ready)
        {
            problems.push(f.to_string());
        }
    }
    let mut plan_for_status = plan.clone();
    plan_for_status
        .waiting
        .extend(outcome.notes.iter().cloned());
    if outcome.bootstrapped {
        plan_for_status.bootstrapped = true;
    }
    let now = ctx.now();
    let new_status = status::compute(&StatusInputs {
        dc,
        names: &names,
        observed: &observed,
        plan: &plan_for_status,
        problems: &problems,
        ring_changes: &ring_changes,
        now,
    });
    transition_events(dc, ctx, &previous, &new_status, &plan).await;
    ctx.metrics.observe_cluster(
        &ns,
        &names.cluster,
        dc.spec.replicas,
        &new_status,
        plan.phase,
    );
    if dc.status.as_ref() != Some(&new_status) {
        patch_status(dc, ctx, &new_status).await?;
    }
    Ok(if plan_for_status.converged() && problems.is_empty() {
        Action::requeue(ctx.timing.idle)
    } else {
        Action::requeue(ctx.timing.busy)
    })
}

/// Events for condition changes that matter to a human.
async fn transition_events(
    dc: &DynamoCluster,
    ctx: &Context,
    before: &DynamoClusterStatus,
    after: &DynamoClusterStatus,
    plan: &Plan,
) {
    let get = |s: &DynamoClusterStatus, t: &str| {
        status::condition(s, t).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    let was = |t: &str| get(before, t);
    let now = |t: &str| get(after, t);
    if let Some((s, reason, msg)) = now(AVAILABLE)
        && was(AVAILABLE).map(|c| c.0) != Some(s.clone())
    {
        match s.as_str() {
            "True" => {
                publish(
                    ctx,
                    dc,
                    EventType::Normal,
                    "ClusterAvailable",
                    "Observe",
                    msg,
                )
                .await
            }
            _ if before.bootstrapped => {
                publish(
                    ctx,
                    dc,
                    EventType::Warning,
                    "ClusterUnavailable",
                    "Observe",
                    format!("{reason}: {msg}"),
                )
                .await
            }
            _ => {}
        }
    }
    if let Some((s, _, msg)) = now(REBALANCING)
        && was(REBALANCING).map(|c| c.0) != Some(s.clone())
    {
        match s.as_str() {
            "True" => {
                publish(
                    ctx,
                    dc,
                    EventType::Normal,
                    "RebalanceStarted",
                    "Observe",
                    msg,
                )
                .await
            }
            "False" if was(REBALANCING).is_some_and(|c| c.0 == "True") => {
                publish(
                    ctx,
                    dc,
                    EventType::Normal,
                    "RebalanceFinished",
                    "Observe",
                    msg,
                )
                .await
            }
            _ => {}
        }
    }
    if let Some(refused) = &plan.scale_refused
        && was(DEGRADED).map(|c| c.1) != Some("ScaleRefused".into())
    {
        publish(
            ctx,
            dc,
            EventType::Warning,
            "ScaleRefused",
            "Scale",
            refused.clone(),
        )
        .await;
    }
    // One Warning per member failure as it appears (or changes reason): the event names
    // the pod, its reason is Kubernetes' own (`ImagePullBackOff`, `Unschedulable`, ...).
    for member in &after.members {
        let (Some(reason), Some(message)) = (&member.reason, &member.message) else {
            continue;
        };
        let before_reason = before
            .members
            .iter()
            .find(|m| m.name == member.name)
            .and_then(|m| m.reason.as_ref());
        if before_reason != Some(reason) {
            publish(
                ctx,
                dc,
                EventType::Warning,
                reason,
                "Observe",
                format!("{}: {message}", member.name),
            )
            .await;
        }
    }
    if let Some((s, _, msg)) = now(MEMBERS_HEALTHY)
        && s == "True"
        && was(MEMBERS_HEALTHY).is_some_and(|c| c.0 == "False")
    {
        publish(ctx, dc, EventType::Normal, "MembersHealthy", "Observe", msg).await;
    }
    let member_reason = now(MEMBERS_HEALTHY).filter(|c| c.0 == "False").map(|c| c.1);
    if let Some((s, reason, msg)) = now(DEGRADED)
        && s == "True"
        && reason != "ScaleRefused"
        // A member failure already has its own event, under its own reason.
        && Some(&reason) != member_reason.as_ref()
        && was(DEGRADED).map(|c| (c.0, c.1)) != Some((s.clone(), reason.clone()))
    {
        let event_reason = if reason == PROGRESS_DEADLINE_EXCEEDED {
            PROGRESS_DEADLINE_EXCEEDED
        } else {
            "Degraded"
        };
        publish(
            ctx,
            dc,
            EventType::Warning,
            event_reason,
            "Observe",
            format!("{reason}: {msg}"),
        )
        .await;
    }
}

/// Deletion: owned objects go by garbage collection (owner references); the member volumes
/// follow `spec.storage.reclaimPolicy`.
async fn cleanup(dc: &DynamoCluster, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(dc);
    let pvc_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let claims = pvc_api
        .list(&ListParams::default().labels(&builders::selector_string(&names)))
        .await?;
    let claim_names: Vec<String> = claims
        .items
        .iter()
        .map(ResourceExt::name_any)
        .filter(|n| names.pvc_ordinal(n).is_some())
        .collect();
    match dc.spec.storage.reclaim_policy {
        ReclaimPolicy::Delete => {
            for name in &claim_names {
                delete_ignoring_missing(&pvc_api, name).await?;
            }
            publish(
                ctx,
                dc,
                EventType::Normal,
                "VolumesDeleted",
                "Delete",
                format!(
                    "deleted {} member volume claims (reclaimPolicy Delete)",
                    claim_names.len()
                ),
            )
            .await;
        }
        ReclaimPolicy::Retain => {
            publish(
                ctx,
                dc,
                EventType::Normal,
                "VolumesRetained",
                "Delete",
                format!(
                    "kept {} member volume claims (reclaimPolicy Retain): {}",
                    claim_names.len(),
                    claim_names.join(", ")
                ),
            )
            .await;
        }
    }
    ctx.failures.lock().remove(&key(dc));
    ctx.metrics.forget_cluster(&names.namespace, &names.cluster);
    Ok(Action::await_change())
}

/// Runs the controller until SIGTERM/SIGINT. `namespace` restricts it to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    fn api<K: Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
        client: &Client,
        ns: &Option<String>,
    ) -> Api<K>
    where
        K::DynamicType: Default,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    Controller::new(
        api::<DynamoCluster>(&client, &namespace),
        watcher::Config::default().any_semantic(),
    )
    .owns(api::<StatefulSet>(&client, &namespace), owned.clone())
    .owns(api::<Service>(&client, &namespace), owned.clone())
    .owns(api::<ConfigMap>(&client, &namespace), owned.clone())
    .owns(
        api::<PodDisruptionBudget>(&client, &namespace),
        owned.clone(),
    )
    .watches(api::<Pod>(&client, &namespace), owned, |pod: Pod| {
        let name = pod.labels().get(LABEL_INSTANCE)?.clone();
        Some(ObjectRef::<DynamoCluster>::new(&name).within(&pod.namespace()?))
    })
    .shutdown_on_signal()
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(cluster = %obj.name, "reconciled"),
            Err(e) => tracing::debug!(error = %e, "reconcile loop"),
        }
    })
    .await;
}
