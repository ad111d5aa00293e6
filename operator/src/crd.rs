//! The `DynamoCluster` custom resource (`dynamo.dev/v1alpha1`).
//!
//! The schema is generated from these types (`crdgen` writes `crds/dynamocluster.yaml`), so
//! every admission rule lives here: OpenAPI bounds from `#[schemars(...)]` and CEL rules from
//! `#[x_kube(validation = ...)]`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource this operator defines.
pub const GROUP: &str = "dynamo.dev";
pub const VERSION: &str = "v1alpha1";

/// Largest replication factor a node accepts (`dynamo::config::MAX_N`).
pub const MAX_N: i32 = 7;

/// A Dynamo-style key-value store cluster: a StatefulSet of `dynamo node` members, with a
/// ring of `partitions` partitions replicated `replication.n` times.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dynamo.dev",
    version = "v1alpha1",
    kind = "DynamoCluster",
    plural = "dynamoclusters",
    shortname = "dc",
    category = "dynamo",
    namespaced,
    status = "DynamoClusterStatus",
    derive = "PartialEq",
    doc = "A dynamo-rs cluster: members in a StatefulSet, joined into one ring by the operator.",
    scale(spec_replicas_path = ".spec.replicas", status_replicas_path = ".status.replicas", label_selector_path = ".status.selector"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas", description = "Desired members"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyMembers", description = "Members that are up and ready"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.ringEpoch", description = "Ring epoch"),
    printcolumn(name = "Handoffs", type_ = "integer", json_path = ".status.handoffsPending", description = "Partitions still to be handed off"),
    printcolumn(name = "Available", type_ = "string", json_path = ".status.conditions[?(@.type==\"Available\")].status"),
    printcolumn(name = "Rebalancing", type_ = "string", json_path = ".status.conditions[?(@.type==\"Rebalancing\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("size(self.metadata.name) <= 52").message("metadata.name must be at most 52 characters: pod names and revision labels are derived from it")
)]
#[x_kube(
    validation = Rule::new("self.replication.w <= self.replication.n").message("replication.w must not exceed replication.n").field_path(".replication.w"),
    validation = Rule::new("self.replication.r <= self.replication.n").message("replication.r must not exceed replication.n").field_path(".replication.r"),
    validation = Rule::new("self.replicas >= self.replication.n").message("replicas must be at least replication.n: every key needs n distinct members").field_path(".replicas"),
)]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterSpec {
    /// Number of members. Scaling down asks the highest ordinals to leave the ring and waits
    /// until their partitions are handed off before their pods and volumes are removed.
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Container image with the `dynamo` binary (runs `dynamo node`). Changing it rolls the
    /// members one at a time.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Replication settings, fixed when the cluster is bootstrapped (the node adopts them
    /// from the cluster view), hence immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("replication is immutable: it is fixed when the cluster is bootstrapped"))]
    pub replication: Replication,
    /// Number of ring partitions Q: a power of two from 8 to 65536, immutable.
    #[serde(default = "default_partitions")]
    #[x_kube(
        validation = Rule::new("self in [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]").message("partitions must be a power of two from 8 to 65536"),
        validation = Rule::new("self == oldSelf").message("partitions is immutable")
    )]
    pub partitions: i32,
    /// Persistent volume of each member. `size` and `storageClassName` are immutable (a
    /// StatefulSet's volume claim templates cannot change).
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.size == oldSelf.size && has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message("storage.size and storage.storageClassName are immutable"))]
    pub storage: Storage,
    /// Compute resources of the `dynamo` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Gossip period in milliseconds (`DYNAMO_GOSSIP_INTERVAL_MS`).
    #[serde(default = "default_gossip_interval_ms")]
    #[schemars(range(min = 10, max = 60000))]
    pub gossip_interval_ms: i32,
    /// Period of anti-entropy (Merkle tree) exchanges in seconds
    /// (`DYNAMO_ANTI_ENTROPY_INTERVAL_S`).
    #[serde(default = "default_anti_entropy_interval_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub anti_entropy_interval_seconds: i32,
    /// How members serve reads (`DYNAMO_READ_FANOUT`, `DYNAMO_SPECULATIVE_READ_MS`). Members
    /// read it at start, so a change restarts them one at a time.
    #[serde(default)]
    pub reads: Reads,
    /// Log filter of the members, in `RUST_LOG` syntax: a level (`info`, `debug`), or a
    /// level with per-module levels (`info,dynamo::replication=debug`). Members read it
    /// at start, so a change restarts them one at a time.
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[A-Za-z0-9_:=,.-]+$"))]
    pub log_level: String,
    /// Scheduling overrides of the member pods.
    #[serde(default)]
    pub pod: PodOverrides,
    /// The client Service.
    #[serde(default)]
    pub service: ServiceSettings,
    #[serde(default)]
    pub monitoring: Monitoring,
    /// Secret holding the cluster token (members authenticate each other and admin calls with
    /// it; at least 16 characters). When absent the operator creates `<name>-cluster-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_token_secret: Option<SecretKeyRef>,
    /// Secret holding a client token; when set, client API calls need
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token_secret: Option<SecretKeyRef>,
    /// TLS between members: a Secret of type `kubernetes.io/tls` with `tls.crt`, `tls.key`
    /// and `ca.crt` (as cert-manager writes them). The certificate must name every member's
    /// peer host, e.g. `*.<name>-peers.<namespace>.svc`; members present it to each other
    /// and accept only peers whose certificate the CA signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_tls: Option<PeerTls>,
    /// Seconds a change (creation, scale, rolling update, rebalance) may go without
    /// progress before the cluster is reported `Degraded` with reason
    /// `ProgressDeadlineExceeded` and the cause (e.g. a pod in `ImagePullBackOff`).
    /// Progress is any change of what the operator waits for, of the ready or updated
    /// member counts, of the ring epoch or of the pending handoffs. The operator keeps
    /// trying after the deadline; it only reports.
    #[serde(default = "default_progress_deadline_seconds")]
    #[schemars(range(min = 30, max = 604800))]
    pub progress_deadline_seconds: i32,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PeerTls {
    /// Name of the Secret (in the cluster's namespace).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Also serve the client and admin HTTP API over HTTPS with the same certificate (which
    /// must then also name the client Service, `<name>.<namespace>.svc`). The operator
    /// verifies members against `ca.crt`; probes and the ServiceMonitor use HTTPS.
    #[serde(default)]
    pub https: bool,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Replication {
    /// Replicas per key (N).
    #[serde(default = "default_n")]
    #[schemars(range(min = 1, max = 7))]
    pub n: i32,
    /// Default read quorum (R <= N).
    #[serde(default = "default_quorum")]
    #[schemars(range(min = 1, max = 7))]
    pub r: i32,
    /// Default write quorum (W <= N).
    #[serde(default = "default_quorum")]
    #[schemars(range(min = 1, max = 7))]
    pub w: i32,
    /// How concurrent writes are resolved: keep `siblings` for the client, or last-write-wins
    /// (`lww`).
    #[serde(default)]
    pub conflicts: ConflictMode,
}

impl Default for Replication {
    fn default() -> Self {
        Replication {
            n: default_n(),
            r: default_quorum(),
            w: default_quorum(),
            conflicts: ConflictMode::default(),
        }
    }
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConflictMode {
    #[default]
    Siblings,
    Lww,
}

impl ConflictMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictMode::Siblings => "siblings",
            ConflictMode::Lww => "lww",
        }
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Reads {
    /// Replicas a read asks at first: `quorum` asks R (the coordinating member first) and
    /// one more after a failure or `speculativeAfterMs` without R replies; `all` asks all N
    /// and repairs every stale replica from the replies, at N - 1 peer requests a read.
    #[serde(default)]
    pub fanout: ReadFanout,
    /// With `fanout: quorum`: how long a read waits for R replies before asking another
    /// replica (Cassandra's speculative retry).
    #[serde(default = "default_speculative_after_ms")]
    #[schemars(range(min = 1, max = 60000))]
    pub speculative_after_ms: i32,
}

impl Default for Reads {
    fn default() -> Self {
        Reads {
            fanout: ReadFanout::default(),
            speculative_after_ms: default_speculative_after_ms(),
        }
    }
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadFanout {
    #[default]
    Quorum,
    All,
}

impl ReadFanout {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFanout::Quorum => "quorum",
            ReadFanout::All => "all",
        }
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// Size of each member's PersistentVolumeClaim (a Kubernetes quantity).
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the claims; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the members' volumes when the DynamoCluster is deleted: `Retain`
    /// (default) keeps the claims, `Delete` removes them.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            size: default_storage_size(),
            storage_class_name: None,
            reclaim_policy: ReclaimPolicy::default(),
        }
    }
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReclaimPolicy {
    #[default]
    Retain,
    Delete,
}

/// Scheduling overrides copied into the member pod template.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Extra labels of the member pods (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations of the member pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Service account of the member pods (they need no API access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Seconds a member gets to shut down cleanly after SIGTERM.
    #[serde(default = "default_grace_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: i64,
}

impl Default for PodOverrides {
    fn default() -> Self {
        PodOverrides {
            affinity: None,
            tolerations: Vec::new(),
            node_selector: BTreeMap::new(),
            topology_spread_constraints: Vec::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            service_account_name: None,
            termination_grace_period_seconds: default_grace_seconds(),
        }
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// Type of the client Service `<name>` (port 8080).
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Annotations of the client Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    #[serde(default)]
    pub service_monitor: ServiceMonitorSettings,
}

/// A Prometheus Operator `ServiceMonitor` scraping every member's `/metrics`; created only
/// when enabled and the `servicemonitors.monitoring.coreos.com` CRD exists.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSettings {
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Extra labels (e.g. the `release` label a Prometheus selects on).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A key of a Secret in the cluster's namespace.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[serde(default = "default_token_key")]
    pub key: String,
}

/// What the operator last observed.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterStatus {
    /// `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Member pods that exist (the scale subresource's status replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of the member pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Members that are up in the ring and pass `/readyz`.
    #[serde(default)]
    pub ready_members: i32,
    /// Whether the operator has created the cluster (bootstrapped ordinal 0). Never reset:
    /// it keeps the operator from bootstrapping a second cluster.
    #[serde(default)]
    pub bootstrapped: bool,
    /// Epoch of the current ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_epoch: Option<i64>,
    /// Fewest and most partitions owned by one member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_balance: Option<PartitionBalance>,
    /// Partitions still to be handed off (0 when the ring is settled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoffs_pending: Option<i64>,
    /// Member pods running the current pod template (image and configuration).
    #[serde(default)]
    pub updated_members: i32,
    /// Members with their state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub members: Vec<MemberStatus>,
    /// When the operator last saw a change move towards the spec (see
    /// `spec.progressDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// `Available`, `Progressing`, `Degraded`, `Rebalancing`, `MembersHealthy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionBalance {
    pub min: i32,
    pub max: i32,
}

#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member id = pod name.
    pub name: String,
    pub state: MemberState,
    /// The pod passes its readiness probe (`/readyz`).
    #[serde(default)]
    pub ready: bool,
    /// Whether the member answering the operator sees this one alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive: Option<bool>,
    /// Partitions this member owns in the current ring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// The pod runs the StatefulSet's current template.
    #[serde(default)]
    pub updated: bool,
    /// Why Kubernetes cannot run the member, as the kubelet or scheduler reports it:
    /// `ImagePullBackOff`, `ErrImagePull`, `CrashLoopBackOff`,
    /// `CreateContainerConfigError`, `Unschedulable`, `ClaimPending`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The detail of `reason` (the container's waiting message, the scheduler's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Lifecycle of a member as the operator sees it.
#[derive(
    JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum MemberState {
    /// No running pod yet.
    #[default]
    Pending,
    /// The pod runs but the member is not in the ring (waiting to be bootstrapped or joined).
    Starting,
    /// Asked to join; gossip knows it but the ring does not include it yet.
    Joining,
    /// In the ring.
    Up,
    /// Handing its partitions off before leaving.
    Leaving,
    /// Left the ring; its pod and volume are about to be removed.
    Removed,
    /// The cluster could not be asked.
    Unknown,
}

fn default_partitions() -> i32 {
    256
}
fn default_n() -> i32 {
    3
}
fn default_quorum() -> i32 {
    2
}
fn default_gossip_interval_ms() -> i32 {
    1000
}
fn default_anti_entropy_interval_seconds() -> i32 {
    60
}
/// The node's own default (`dynamo::config::DEFAULT_SPECULATIVE_READ_MS`).
fn default_speculative_after_ms() -> i32 {
    10
}
fn default_log_level() -> String {
    "info".into()
}
fn default_storage_size() -> String {
    "1Gi".into()
}
fn default_token_key() -> String {
    "token".into()
}
fn default_grace_seconds() -> i64 {
    60
}
fn default_progress_deadline_seconds() -> i32 {
    600
}

impl Default for DynamoClusterSpec {
    fn default() -> Self {
        DynamoClusterSpec {
            replicas: 3,
            image: String::new(),
            replication: Replication::default(),
            partitions: default_partitions(),
            storage: Storage::default(),
            resources: None,
            gossip_interval_ms: default_gossip_interval_ms(),
            anti_entropy_interval_seconds: default_anti_entropy_interval_seconds(),
            reads: Reads::default(),
            log_level: default_log_level(),
            pod: PodOverrides::default(),
            service: ServiceSettings::default(),
            monitoring: Monitoring::default(),
            cluster_token_secret: None,
            client_token_secret: None,
            peer_tls: None,
            progress_deadline_seconds: default_progress_deadline_seconds(),
        }
    }
}

/// The CRD as YAML, exactly as `crdgen` writes it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = quote_yaml11_boolean_keys(&serde_yaml::to_string(&DynamoCluster::crd())?);
    Ok(format!(
        "# Generated by `cargo run -p dynamo-operator --bin crdgen` from operator/src/crd.rs: do not edit.\n{body}"
    ))
}

/// Quotes mapping keys that YAML 1.1 reads as booleans (`n`, `y`, `no`, `on`, ...).
///
/// serde_yaml writes YAML 1.2, where a bare `n:` is the string "n"; but kubectl and Helm
/// parse manifests as YAML 1.1, where it is the boolean `false` — so `replication.n` would
/// arrive at the API server as a property named "false".
pub fn quote_yaml11_boolean_keys(yaml: &str) -> String {
    const WORDS: [&str; 16] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let mut out = String::with_capacity(yaml.len() + 64);
    for line in yaml.split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        let rest = &line[indent..];
        let (dash, rest) = match rest.strip_prefix("- ") {
            Some(r) => ("- ", r),
            None => ("", rest),
        };
        match rest.split_once(':') {
            Some((key, tail))
                if WORDS.contains(&key) && (tail.is_empty() || tail.starts_with([' ', '\n'])) =>
            {
                out.push_str(&line[..indent]);
                out.push_str(dash);
                out.push('"');
                out.push_str(key);
                out.push('"');
                out.push(':');
                out.push_str(tail);
            }
            _ => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod yaml_tests {
    use super::quote_yaml11_boolean_keys;

    #[test]
    fn boolean_looking_keys_are_quoted_and_nothing_else() {
        let input = "a:\n  n: 3\n  r: 2\n  - n: 1\n  name: n\n  no:\n    x: y\n";
        let want = "a:\n  \"n\": 3\n  r: 2\n  - \"n\": 1\n  name: n\n  \"no\":\n    x: y\n";
        assert_eq!(quote_yaml11_boolean_keys(input), want);
    }
}
