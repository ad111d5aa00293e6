//! Desired state: pure functions from a `DynamoCluster` (and the few facts the planner
//! decided, such as the StatefulSet's replica count) to the objects the operator applies.
//! Nothing here talks to the API server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource,
    EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Service,
    ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};

use crate::crd::{DynamoCluster, SecretKeyRef};

pub const HTTP_PORT: i32 = 8080;
pub const PEER_PORT: i32 = 7070;
pub const DATA_DIR: &str = "/data";
pub const TOKEN_DIR: &str = "/etc/dynamo/token";
pub const CLIENT_TOKEN_DIR: &str = "/etc/dynamo/client-token";
pub const PEER_TLS_DIR: &str = "/etc/dynamo/peer-tls";
/// The user and group the node image runs as (see the Dockerfile).
pub const MEMBER_UID: i64 = 65532;
pub const CONTAINER: &str = "dynamo";
/// Name of the volume claim template; PVCs are `data-<name>-<ordinal>`.
pub const DATA_VOLUME: &str = "data";
pub const TOKEN_KEY: &str = "token";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const APP_NAME: &str = "dynamo";
pub const MANAGER: &str = "dynamo-operator";
/// Pod template annotation: hash of the member configuration, so a change rolls the pods.
pub const ANNOTATION_CONFIG_HASH: &str = "dynamo.dev/config-hash";
/// PVC annotation set once the member on it has been in the ring: the volume holds cluster
/// data, and a member that was removed from the ring must not come back on it.
pub const ANNOTATION_HOLDS_DATA: &str = "dynamo.dev/holds-data";

/// Names of everything a cluster owns, derived from its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub cluster: String,
    pub namespace: String,
}

impl Names {
    pub fn of(dc: &DynamoCluster) -> Self {
        Names {
            cluster: dc.name_any(),
            namespace: dc.namespace().unwrap_or_else(|| "default".into()),
        }
    }
    /// The StatefulSet (pods are `<name>-<ordinal>`).
    pub fn statefulset(&self) -> String {
        self.cluster.clone()
    }
    /// Headless Service giving every member a stable DNS name.
    pub fn peer_service(&self) -> String {
        format!("{}-peers", self.cluster)
    }
    /// Client Service (ready members only).
    pub fn client_service(&self) -> String {
        self.cluster.clone()
    }
    pub fn config_map(&self) -> String {
        format!("{}-config", self.cluster)
    }
    pub fn generated_token_secret(&self) -> String {
        format!("{}-cluster-token", self.cluster)
    }
    pub fn pdb(&self) -> String {
        self.cluster.clone()
    }
    pub fn service_monitor(&self) -> String {
        self.cluster.clone()
    }
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }
    pub fn pvc(&self, ordinal: i32) -> String {
        format!("{DATA_VOLUME}-{}-{ordinal}", self.cluster)
    }
    /// Ordinal of a pod (or member id) of this cluster: `<name>-<n>`.
    pub fn ordinal_of(&self, pod: &str) -> Option<i32> {
        let rest = pod.strip_prefix(&self.cluster)?.strip_prefix('-')?;
        if rest.is_empty()
            || !rest.bytes().all(|b| b.is_ascii_digit())
            || (rest.len() > 1 && rest.starts_with('0'))
        {
            return None;
        }
        rest.parse().ok()
    }
    /// Ordinal of a PVC `data-<name>-<n>`.
    pub fn pvc_ordinal(&self, pvc: &str) -> Option<i32> {
        self.ordinal_of(pvc.strip_prefix(DATA_VOLUME)?.strip_prefix('-')?)
    }
    /// DNS name of a member inside the cluster.
    pub fn member_host(&self, ordinal: i32) -> String {
        format!(
            "{}.{}.{}.svc",
            self.pod(ordinal),
            self.peer_service(),
            self.namespace
        )
    }
}

/// Labels that select a cluster's pods (also on everything else it owns).
pub fn selector_labels(names: &Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), APP_NAME.to_string()),
        (LABEL_INSTANCE.to_string(), names.cluster.clone()),
    ])
}

pub fn labels(names: &Names) -> BTreeMap<String, String> {
    let mut l = selector_labels(names);
    l.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    l.insert(LABEL_COMPONENT.into(), "node".into());
    l
}

/// `app.kubernetes.io/name=dynamo,app.kubernetes.io/instance=<name>`.
pub fn selector_string(names: &Names) -> String {
    selector_labels(names)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn owner_ref(dc: &DynamoCluster) -> Vec<OwnerReference> {
    // controller_owner_ref is None only without a name or uid; objects applied for such a
    // cluster (tests) simply have no owner.
    dc.controller_owner_ref(&()).into_iter().collect()
}

fn meta(dc: &DynamoCluster, names: &Names, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(names.namespace.clone()),
        labels: Some(labels(names)),
        owner_references: Some(owner_ref(dc)),
        ..Default::default()
    }
}

/// Facts the builders need beyond the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs {
    /// StatefulSet replicas decided by the planner (differs from `spec.replicas` while a
    /// scale-down waits for handoffs).
    pub sts_replicas: i32,
    /// Where the cluster token is (the referenced Secret, or the generated one).
    pub token: SecretKeyRef,
}

impl Inputs {
    pub fn for_cluster(dc: &DynamoCluster, sts_replicas: i32) -> Self {
        Inputs {
            sts_replicas,
            token: token_ref(dc),
        }
    }
}

/// The Secret key holding the cluster token: the one referenced, or the generated one.
pub fn token_ref(dc: &DynamoCluster) -> SecretKeyRef {
    dc.spec
        .cluster_token_secret
        .clone()
        .unwrap_or_else(|| SecretKeyRef {
            name: Names::of(dc).generated_token_secret(),
            key: TOKEN_KEY.into(),
        })
}

/// Seeds: the first `n` members (stable: `n` is immutable and `replicas >= n`).
pub fn seeds(dc: &DynamoCluster, names: &Names) -> String {
    let count = dc.spec.replication.n.clamp(1, dc.spec.replicas.max(1));
    (0..count)
        .map(|i| format!("{}:{PEER_PORT}", names.member_host(i)))
        .collect::<Vec<_>>()
        .join(",")
}

/// The member configuration (non-secret, shared by every member) as environment variables.
pub fn config_data(dc: &DynamoCluster, names: &Names) -> BTreeMap<String, String> {
    let s = &dc.spec;
    let mut d = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        d.insert(k.to_string(), v);
    };
    put("DYNAMO_LISTEN", format!("0.0.0.0:{HTTP_PORT}"));
    put("DYNAMO_PEER_LISTEN", format!("0.0.0.0:{PEER_PORT}"));
    put("DYNAMO_DATA_DIR", DATA_DIR.into());
    put("DYNAMO_SEEDS", seeds(dc, names));
    put(
        "DYNAMO_CLUSTER_TOKEN_FILE",
        format!("{TOKEN_DIR}/{TOKEN_KEY}"),
    );
    if s.client_token_secret.is_some() {
        put(
            "DYNAMO_CLIENT_TOKEN_FILE",
            format!("{CLIENT_TOKEN_DIR}/{TOKEN_KEY}"),
        );
    }
    if s.peer_tls.is_some() {
        put("DYNAMO_TLS_CERT", format!("{PEER_TLS_DIR}/tls.crt"));
        put("DYNAMO_TLS_KEY", format!("{PEER_TLS_DIR}/tls.key"));
        put("DYNAMO_TLS_CA", format!("{PEER_TLS_DIR}/ca.crt"));
    }
    if serves_https(dc) {
        put("DYNAMO_TLS_HTTP", "true".into());
    }
    put("DYNAMO_PARTITIONS", s.partitions.to_string());
    put("DYNAMO_N", s.replication.n.to_string());
    put("DYNAMO_R", s.replication.r.to_string());
    put("DYNAMO_W", s.replication.w.to_string());
    put("DYNAMO_CONFLICTS", s.replication.conflicts.as_str().into());
    put(
        "DYNAMO_GOSSIP_INTERVAL_MS",
        s.gossip_interval_ms.to_string(),
    );
    put(
        "DYNAMO_ANTI_ENTROPY_INTERVAL_S",
        s.anti_entropy_interval_seconds.to_string(),
    );
    put("DYNAMO_READ_FANOUT", s.reads.fanout.as_str().into());
    put(
        "DYNAMO_SPECULATIVE_READ_MS",
        s.reads.speculative_after_ms.to_string(),
    );
    put("DYNAMO_LOG_FORMAT", "json".into());
    put("RUST_LOG", s.log_level.clone());
    d
}

/// FNV-1a over the sorted configuration: stable across processes and releases.
pub fn config_hash(data: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in data {
        for b in k.bytes().chain([0u8]).chain(v.bytes()).chain([0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

pub fn config_map(dc: &DynamoCluster, names: &Names) -> ConfigMap {
    ConfigMap {
        metadata: meta(dc, names, names.config_map()),
        data: Some(config_data(dc, names)),
        ..Default::default()
    }
}

/// The generated cluster token Secret (only when the spec references none). Created once,
/// never re-applied: the token must not change under a running cluster.
pub fn token_secret(dc: &DynamoCluster, names: &Names, token: &str) -> Secret {
    Secret {
        metadata: meta(dc, names, names.generated_token_secret()),
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), token.to_string())])),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// A fresh random token: 32 bytes, hex.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Headless Service: stable DNS for every member, published before members are ready
/// (they gossip before they are in the ring).
pub fn peer_service(dc: &DynamoCluster, names: &Names) -> Service {
    Service {
        metadata: meta(dc, names, names.peer_service()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names)),
            ports: Some(vec![port("peer", PEER_PORT), port("http", HTTP_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Client Service: the HTTP API of ready members.
pub fn client_service(dc: &DynamoCluster, names: &Names) -> Service {
    let mut metadata = meta(dc, names, names.client_service());
    if !dc.spec.service.annotations.is_empty() {
        metadata.annotations = Some(dc.spec.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(dc.spec.service.type_.as_str().into()),
            selector: Some(selector_labels(names)),
            ports: Some(vec![port("http", HTTP_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Members that may be down at once without any key losing its default quorum: a key has
/// `n` replicas on distinct members; with `k` members down, in the worst case all `k` hold
/// that key, leaving `n - k`. Reads need `r` and writes `w`, so `k <= n - max(r, w)`.
pub fn max_unavailable(dc: &DynamoCluster) -> i32 {
    let r = &dc.spec.replication;
    (r.n - r.r.max(r.w)).max(0)
}

pub fn pdb(dc: &DynamoCluster, names: &Names) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(dc, names, names.pdb()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable(dc))),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..Default::default()
            }),
            // A pod that is already unhealthy may be evicted: it is down either way, and
            // keeping it would block node drains.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env_value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    }
}

fn default_affinity(names: &Names) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(names)),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Whether members serve their client and admin API over HTTPS (`spec.peerTls.https`).
pub fn serves_https(dc: &DynamoCluster) -> bool {
    dc.spec.peer_tls.as_ref().is_some_and(|t| t.https)
}

/// The URL scheme of the members' HTTP API, for probes and scrapers.
fn http_scheme(dc: &DynamoCluster) -> &'static str {
    if serves_https(dc) { "HTTPS" } else { "HTTP" }
}

fn http_probe(dc: &DynamoCluster, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            // The kubelet does not verify certificates of HTTPS probes: the scheme is enough.
            scheme: Some(http_scheme(dc).into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The member pod template.
pub fn pod_template(dc: &DynamoCluster, names: &Names, inputs: &Inputs) -> PodTemplateSpec {
    let s = &dc.spec;
    let mut pod_labels = s.pod.labels.clone();
    pod_labels.extend(labels(names));
    let mut annotations = s.pod.annotations.clone();
    annotations.insert(
        ANNOTATION_CONFIG_HASH.into(),
        config_hash(&config_data(dc, names)),
    );
    let host_suffix = format!("{}.{}.svc", names.peer_service(), names.namespace);
    let env = vec![
        EnvVar {
            name: "DYNAMO_ID".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        env_value(
            "DYNAMO_ADVERTISE",
            format!("$(DYNAMO_ID).{host_suffix}:{HTTP_PORT}"),
        ),
        env_value(
            "DYNAMO_ADVERTISE_PEER",
            format!("$(DYNAMO_ID).{host_suffix}:{PEER_PORT}"),
        ),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "cluster-token".into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    let secret_volume = |volume: &str, r: &SecretKeyRef| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(r.name.clone()),
            items: Some(vec![KeyToPath {
                key: r.key.clone(),
                path: TOKEN_KEY.into(),
                ..Default::default()
            }]),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut volumes = vec![secret_volume("cluster-token", &inputs.token)];
    if let Some(client) = &s.client_token_secret {
        mounts.push(VolumeMount {
            name: "client-token".into(),
            mount_path: CLIENT_TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(secret_volume("client-token", client));
    }
    if let Some(tls) = &s.peer_tls {
        mounts.push(VolumeMount {
            name: "peer-tls".into(),
            mount_path: PEER_TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "peer-tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(tls.secret_name.clone()),
                items: Some(
                    ["tls.crt", "tls.key", "ca.crt"]
                        .into_iter()
                        .map(|k| KeyToPath {
                            key: k.into(),
                            path: k.into(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                default_mode: Some(0o440),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(s.image.clone()),
        command: Some(vec!["dynamo".into()]),
        args: Some(vec!["node".into()]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("peer".into()),
                container_port: PEER_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: names.config_map(),
                ..Default::default()
            }),
            ..Default::default()
        }]),
        env: Some(env),
        // Ready = an up (or leaving) member of the ring, not merely listening.
        readiness_probe: Some(http_probe(dc, "/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(10),
            ..http_probe(dc, "/healthz", 10, 6)
        }),
        resources: s.resources.clone(),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            affinity: Some(
                s.pod
                    .affinity
                    .clone()
                    .unwrap_or_else(|| default_affinity(names)),
            ),
            tolerations: (!s.pod.tolerations.is_empty()).then(|| s.pod.tolerations.clone()),
            node_selector: (!s.pod.node_selector.is_empty()).then(|| s.pod.node_selector.clone()),
            topology_spread_constraints: (!s.pod.topology_spread_constraints.is_empty())
                .then(|| s.pod.topology_spread_constraints.clone()),
            service_account_name: s.pod.service_account_name.clone(),
            termination_grace_period_seconds: Some(s.pod.termination_grace_period_seconds),
            enable_service_links: Some(false),
            // The image runs as 65532; fsGroup makes a fresh volume (root-owned on most
            // cloud disks) writable for it.
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(MEMBER_UID),
                run_as_group: Some(MEMBER_UID),
                fs_group: Some(MEMBER_UID),
                fs_group_change_policy: Some("OnRootMismatch".into()),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The StatefulSet: stable identities, a PVC per member, pods started in parallel (members
/// wait for the operator to bootstrap or join them) and `OnDelete` updates: the operator
/// restarts members one at a time, gated on the ring (see `plan`).
pub fn statefulset(dc: &DynamoCluster, names: &Names, inputs: &Inputs) -> StatefulSet {
    let s = &dc.spec;
    let mut requests = BTreeMap::new();
    requests.insert("storage".to_string(), Quantity(s.storage.size.clone()));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(labels(names)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: s.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(requests),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(dc, names, names.statefulset()),
        spec: Some(StatefulSetSpec {
            replicas: Some(inputs.sts_replicas),
            service_name: Some(names.peer_service()),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names)),
                ..Default::default()
            },
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            // The operator deletes a removed member's claim itself, after its handoff.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            revision_history_limit: Some(5),
            template: pod_template(dc, names, inputs),
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn service_monitor_resource() -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: "ServiceMonitor".into(),
        plural: "servicemonitors".into(),
    }
}

/// A Prometheus Operator ServiceMonitor scraping every member through the headless Service.
pub fn service_monitor(dc: &DynamoCluster, names: &Names) -> DynamicObject {
    let settings = &dc.spec.monitoring.service_monitor;
    let mut metadata = meta(dc, names, names.service_monitor());
    let mut l = labels(names);
    l.extend(settings.labels.clone());
    metadata.labels = Some(l);
    let mut endpoint = serde_json::json!({ "port": "http", "path": "/metrics", "scheme": "http" });
    if let Some(tls) = dc.spec.peer_tls.as_ref().filter(|t| t.https) {
        endpoint["scheme"] = "https".into();
        // Verify members against the cluster's CA. Any name under the headless Service
        // matches the certificate the members must present (`*.<name>-peers.<ns>.svc`).
        endpoint["tlsConfig"] = serde_json::json!({
            "ca": { "secret": { "name": tls.secret_name, "key": "ca.crt" } },
            "serverName": format!("{}.{}.{}.svc", names.pod(0), names.peer_service(), names.namespace),
        });
    }
    if let Some(interval) = &settings.interval {
        endpoint["interval"] = interval.clone().into();
    }
    let mut obj = DynamicObject::new(&names.service_monitor(), &service_monitor_resource())
        .within(&names.namespace);
    obj.metadata = metadata;
    let mut selector = selector_labels(names);
    selector.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    obj.data = serde_json::json!({
        "spec": {
            "selector": { "matchLabels": selector },
            "namespaceSelector": { "matchNames": [names.namespace] },
            "endpoints": [endpoint],
        }
    });
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{DynamoClusterSpec, Replication, ServiceType};
    use kube::CustomResourceExt;

    pub(crate) fn cluster(replicas: i32) -> DynamoCluster {
        let mut dc = DynamoCluster::new(
            "db",
            DynamoClusterSpec {
                replicas,
                image: "dynamo:1".into(),
                ..Default::default()
            },
        );
        dc.metadata.namespace = Some("prod".into());
        dc.metadata.uid = Some("uid-1".into());
        dc.metadata.generation = Some(1);
        dc
    }

    #[test]
    fn names_and_ordinals() {
        let n = Names::of(&cluster(3));
        assert_eq!(n.pod(2), "db-2");
        assert_eq!(n.pvc(2), "data-db-2");
        assert_eq!(n.ordinal_of("db-12"), Some(12));
        assert_eq!(n.ordinal_of("db-"), None);
        assert_eq!(n.ordinal_of("db-01"), None);
        assert_eq!(n.ordinal_of("dbx-1"), None);
        assert_eq!(n.ordinal_of("db-peers"), None);
        assert_eq!(n.pvc_ordinal("data-db-4"), Some(4));
        assert_eq!(n.pvc_ordinal("data-other-4"), None);
        assert_eq!(n.member_host(0), "db-0.db-peers.prod.svc");
    }

    #[test]
    fn config_carries_the_node_contract() {
        let dc = cluster(5);
        let names = Names::of(&dc);
        let d = config_data(&dc, &names);
        assert_eq!(d["DYNAMO_LISTEN"], "0.0.0.0:8080");
        assert_eq!(d["DYNAMO_PEER_LISTEN"], "0.0.0.0:7070");
        assert_eq!(d["DYNAMO_DATA_DIR"], "/data");
        assert_eq!(
            d["DYNAMO_SEEDS"],
            "db-0.db-peers.prod.svc:7070,db-1.db-peers.prod.svc:7070,db-2.db-peers.prod.svc:7070"
        );
        assert_eq!(d["DYNAMO_CLUSTER_TOKEN_FILE"], "/etc/dynamo/token/token");
        assert_eq!(d["DYNAMO_PARTITIONS"], "256");
        assert_eq!(
            (
                d["DYNAMO_N"].as_str(),
                d["DYNAMO_R"].as_str(),
                d["DYNAMO_W"].as_str()
            ),
            ("3", "2", "2")
        );
        assert_eq!(d["DYNAMO_CONFLICTS"], "siblings");
        assert_eq!(d["DYNAMO_READ_FANOUT"], "quorum");
        assert_eq!(d["DYNAMO_SPECULATIVE_READ_MS"], "10");
        assert_eq!(d["DYNAMO_LOG_FORMAT"], "json");
        assert_eq!(d["RUST_LOG"], "info");
        assert!(!d.contains_key("DYNAMO_CLIENT_TOKEN_FILE"));
        // Seeds do not depend on replicas, so scaling does not roll the pods.
        assert_eq!(
            config_hash(&d),
            config_hash(&config_data(&cluster(9), &names))
        );
    }

    #[test]
    fn reads_settings_reach_the_members_and_an_unknown_fanout_is_refused() {
        let spec: DynamoClusterSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3,
            "image": "dynamo:1",
            "reads": {"fanout": "all", "speculativeAfterMs": 25}
        }))
        .unwrap();
        let mut dc = cluster(3);
        let before = config_data(&dc, &Names::of(&dc));
        dc.spec = spec;
        let names = Names::of(&dc);
        let d = config_data(&dc, &names);
        assert_eq!(d["DYNAMO_READ_FANOUT"], "all");
        assert_eq!(d["DYNAMO_SPECULATIVE_READ_MS"], "25");
        // A change rolls the members, which read it at start.
        assert_ne!(config_hash(&d), config_hash(&before));

        let bad = serde_json::from_value::<DynamoClusterSpec>(serde_json::json!({
            "replicas": 3,
            "image": "dynamo:1",
            "reads": {"fanout": "one"}
        }))
        .unwrap_err()
        .to_string();
        assert!(bad.contains("unknown variant `one`"), "{bad}");
        assert!(bad.contains("quorum") && bad.contains("all"), "{bad}");

        // The API server refuses what serde would: the schema lists the variants and bounds
        // the wait.
        let crd = serde_json::to_value(DynamoCluster::crd()).unwrap();
        let reads = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["reads"]["properties"];
        assert_eq!(
            reads["fanout"]["enum"],
            serde_json::json!(["quorum", "all"])
        );
        assert_eq!(reads["speculativeAfterMs"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(
            reads["speculativeAfterMs"]["maximum"].as_f64(),
            Some(60000.0)
        );
    }

    #[test]
    fn config_change_changes_the_template_hash() {
        let a = cluster(3);
        let mut b = cluster(3);
        b.spec.gossip_interval_ms = 500;
        let names = Names::of(&a);
        let hash = |dc: &DynamoCluster| {
            statefulset(dc, &names, &Inputs::for_cluster(dc, 3))
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[ANNOTATION_CONFIG_HASH]
                .clone()
        };
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&cluster(3)));
    }

    #[test]
    fn statefulset_shape() {
        let mut dc = cluster(3);
        dc.spec.storage.storage_class_name = Some("fast".into());
        dc.spec
            .pod
            .node_selector
            .insert("disk".into(), "ssd".into());
        let names = Names::of(&dc);
        let sts = statefulset(&dc, &names, &Inputs::for_cluster(&dc, 4));
        let owner = &sts.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("DynamoCluster", "db", Some(true))
        );
        let spec = sts.spec.unwrap();
        assert_eq!(
            spec.replicas,
            Some(4),
            "replicas come from the planner, not the spec"
        );
        assert_eq!(spec.service_name.as_deref(), Some("db-peers"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        let claim = &spec.volume_claim_templates.unwrap()[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("data"));
        let cs = claim.spec.as_ref().unwrap();
        assert_eq!(cs.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            cs.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
            Quantity("1Gi".into())
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.node_selector.unwrap()["disk"], "ssd");
        assert!(
            pod.affinity.unwrap().pod_anti_affinity.is_some(),
            "default anti-affinity spreads members over nodes"
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("dynamo:1"));
        assert_eq!(c.args.as_deref(), Some(&["node".to_string()][..]));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/readyz")
        );
        let env = c.env.as_ref().unwrap();
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        assert_eq!(
            env[1].value.as_deref(),
            Some("$(DYNAMO_ID).db-peers.prod.svc:8080")
        );
        assert_eq!(
            env[2].value.as_deref(),
            Some("$(DYNAMO_ID).db-peers.prod.svc:7070")
        );
        let token = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "cluster-token")
            .unwrap()
            .secret
            .unwrap();
        assert_eq!(token.secret_name.as_deref(), Some("db-cluster-token"));
    }

    #[test]
    fn referenced_secrets_are_mounted() {
        let mut dc = cluster(3);
        dc.spec.cluster_token_secret = Some(SecretKeyRef {
            name: "mine".into(),
            key: "tok".into(),
        });
        dc.spec.client_token_secret = Some(SecretKeyRef {
            name: "clients".into(),
            key: "t".into(),
        });
        let names = Names::of(&dc);
        assert_eq!(
            config_data(&dc, &names)["DYNAMO_CLIENT_TOKEN_FILE"],
            "/etc/dynamo/client-token/token"
        );
        let sts = statefulset(&dc, &names, &Inputs::for_cluster(&dc, 3));
        let vols = sts.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        let cluster_vol = vols
            .iter()
            .find(|v| v.name == "cluster-token")
            .unwrap()
            .secret
            .clone()
            .unwrap();
        assert_eq!(cluster_vol.secret_name.as_deref(), Some("mine"));
        assert_eq!(cluster_vol.items.unwrap()[0].key, "tok");
        assert!(vols.iter().any(|v| v.name == "client-token"));
        assert!(!vols.iter().any(|v| v.name == "peer-tls"));
        assert!(!config_data(&dc, &names).contains_key("DYNAMO_TLS_CERT"));
    }

    #[test]
    fn members_run_hardened_with_a_writable_volume() {
        let dc = cluster(3);
        let names = Names::of(&dc);
        let sts = statefulset(&dc, &names, &Inputs::for_cluster(&dc, 3));
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.fs_group, Some(65532));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let csc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(csc.read_only_root_filesystem, Some(true));
        assert_eq!(csc.allow_privilege_escalation, Some(false));
        assert_eq!(csc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
    }

    #[test]
    fn peer_tls_secret_is_mounted_and_configured() {
        let mut dc = cluster(3);
        dc.spec.peer_tls = Some(crate::crd::PeerTls {
            secret_name: "db-peer-cert".into(),
            https: false,
        });
        let names = Names::of(&dc);
        let config = config_data(&dc, &names);
        assert_eq!(config["DYNAMO_TLS_CERT"], "/etc/dynamo/peer-tls/tls.crt");
        assert_eq!(config["DYNAMO_TLS_KEY"], "/etc/dynamo/peer-tls/tls.key");
        assert_eq!(config["DYNAMO_TLS_CA"], "/etc/dynamo/peer-tls/ca.crt");
        assert!(
            !config.contains_key("DYNAMO_TLS_HTTP"),
            "the HTTP API stays plain"
        );
        let sts = statefulset(&dc, &names, &Inputs::for_cluster(&dc, 3));
        let pod = sts.spec.unwrap().template.spec.unwrap();
        let secret = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "peer-tls")
            .unwrap()
            .secret
            .unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("db-peer-cert"));
        let keys: Vec<String> = secret.items.unwrap().into_iter().map(|i| i.key).collect();
        assert_eq!(keys, ["tls.crt", "tls.key", "ca.crt"]);
        let mounts = pod.containers[0].volume_mounts.clone().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.name == "peer-tls" && m.mount_path == "/etc/dynamo/peer-tls")
        );
    }

    #[test]
    fn https_api_uses_the_peer_certificate_for_probes_and_scrapes() {
        let mut dc = cluster(3);
        let names = Names::of(&dc);
        let probe_schemes = |dc: &DynamoCluster| {
            let sts = statefulset(dc, &names, &Inputs::for_cluster(dc, 3));
            let c = sts.spec.unwrap().template.spec.unwrap().containers[0].clone();
            [c.readiness_probe, c.liveness_probe]
                .map(|p| p.unwrap().http_get.unwrap().scheme.unwrap())
        };
        assert_eq!(probe_schemes(&dc), ["HTTP", "HTTP"]);
        assert_eq!(
            service_monitor(&dc, &names).data["spec"]["endpoints"][0]["scheme"],
            "http"
        );

        dc.spec.peer_tls = Some(crate::crd::PeerTls {
            secret_name: "db-cert".into(),
            https: true,
        });
        assert!(serves_https(&dc));
        assert_eq!(config_data(&dc, &names)["DYNAMO_TLS_HTTP"], "true");
        assert_eq!(probe_schemes(&dc), ["HTTPS", "HTTPS"]);
        let endpoint = service_monitor(&dc, &names).data["spec"]["endpoints"][0].clone();
        assert_eq!(endpoint["scheme"], "https");
        assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["name"], "db-cert");
        assert_eq!(endpoint["tlsConfig"]["ca"]["secret"]["key"], "ca.crt");
        assert_eq!(
            endpoint["tlsConfig"]["serverName"],
            "db-0.db-peers.prod.svc"
        );
    }

    #[test]
    fn services() {
        let mut dc = cluster(3);
        dc.spec.service.type_ = ServiceType::LoadBalancer;
        let names = Names::of(&dc);
        let peers = peer_service(&dc, &names).spec.unwrap();
        assert_eq!(peers.cluster_ip.as_deref(), Some("None"));
        assert_eq!(peers.publish_not_ready_addresses, Some(true));
        let client = client_service(&dc, &names).spec.unwrap();
        assert_eq!(client.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(client.ports.unwrap()[0].port, 8080);
    }

    #[test]
    fn pdb_follows_the_quorum() {
        let mut dc = cluster(5);
        let names = Names::of(&dc);
        let max = |dc: &DynamoCluster| pdb(dc, &names).spec.unwrap().max_unavailable;
        assert_eq!(max(&dc), Some(IntOrString::Int(1)), "n=3, r=w=2");
        dc.spec.replication = Replication {
            n: 5,
            r: 2,
            w: 3,
            ..Default::default()
        };
        assert_eq!(max(&dc), Some(IntOrString::Int(2)), "max(r, w) decides");
        dc.spec.replication = Replication {
            n: 3,
            r: 1,
            w: 1,
            ..Default::default()
        };
        assert_eq!(max(&dc), Some(IntOrString::Int(2)));
        dc.spec.replication = Replication {
            n: 3,
            r: 3,
            w: 1,
            ..Default::default()
        };
        assert_eq!(
            max(&dc),
            Some(IntOrString::Int(0)),
            "no slack: no voluntary disruption"
        );
    }

    #[test]
    fn service_monitor_shape() {
        let mut dc = cluster(3);
        dc.spec.monitoring.service_monitor.enabled = true;
        dc.spec.monitoring.service_monitor.interval = Some("15s".into());
        dc.spec
            .monitoring
            .service_monitor
            .labels
            .insert("release".into(), "prom".into());
        let names = Names::of(&dc);
        let sm = service_monitor(&dc, &names);
        assert_eq!(sm.metadata.labels.as_ref().unwrap()["release"], "prom");
        assert_eq!(sm.data["spec"]["endpoints"][0]["interval"], "15s");
        assert_eq!(sm.data["spec"]["endpoints"][0]["path"], "/metrics");
        assert_eq!(
            sm.data["spec"]["selector"]["matchLabels"][LABEL_INSTANCE],
            "db"
        );
    }

    #[test]
    fn tokens_are_random_and_long() {
        let a = random_token();
        assert_eq!(a.len(), 64);
        assert_ne!(a, random_token());
    }
}
