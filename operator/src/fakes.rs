//! Test doubles: an in-memory API server behind kube's `tower-test` mock service, and a
//! simulated dynamo cluster behind [`NodeAdmin`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use crate::admin::{
    AdminError, BootstrapOutcome, Endpoint, HandoffsReport, MemberInfo, MembersReport, NodeAdmin,
    RingMember, RingReport,
};

/// One request the fake API server answered.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Logged {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

/// An API server that stores objects by path and answers kube-client's requests: GET,
/// LIST (with equality label selectors), POST, DELETE, and PATCH (apply, merge, JSON).
#[derive(Default)]
pub struct FakeApiServer {
    pub objects: Mutex<BTreeMap<String, Value>>,
    pub log: Mutex<Vec<Logged>>,
    /// Whether discovery serves `monitoring.coreos.com/v1` servicemonitors.
    pub service_monitor_crd: Mutex<bool>,
    next_rv: Mutex<u64>,
}

const COLLECTIONS: &[&str] = &[
    "pods",
    "persistentvolumeclaims",
    "statefulsets",
    "services",
    "configmaps",
    "secrets",
    "poddisruptionbudgets",
    "events",
    "dynamoclusters",
    "servicemonitors",
];

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}

fn selector_matches(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            v.replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

impl FakeApiServer {
    /// A kube client whose requests this fake answers, and the fake.
    pub fn start() -> (kube::Client, Arc<FakeApiServer>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = Arc::new(FakeApiServer::default());
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let response = server.handle(request).await;
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), fake)
    }

    pub fn put(&self, path: &str, mut obj: Value) {
        self.stamp(&mut obj, None);
        self.objects.lock().unwrap().insert(path.to_string(), obj);
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        self.objects.lock().unwrap().get(path).cloned()
    }

    pub fn remove(&self, path: &str) {
        self.objects.lock().unwrap().remove(path);
    }

    pub fn take_log(&self) -> Vec<Logged> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    pub fn events(&self) -> Vec<Value> {
        self.objects
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| k.contains("/events/"))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }

    fn stamp(&self, obj: &mut Value, old: Option<&Value>) {
        let mut rv = self.next_rv.lock().unwrap();
        *rv += 1;
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none_or(Value::is_null) {
            meta["uid"] = old.map_or_else(
                || json!(format!("uid-{rv}")),
                |o| o["metadata"]["uid"].clone(),
            );
        }
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta["creationTimestamp"] = old.map_or_else(
                || json!("2026-01-01T00:00:00Z"),
                |o| o["metadata"]["creationTimestamp"].clone(),
            );
        }
    }

    async fn handle(&self, request: Request<Body>) -> Response<Body> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or("").to_string();
        let content_type = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        self.log.lock().unwrap().push(Logged {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        let (code, out) = self.answer(&method, &path, &query, &content_type, body);
        let mut response = Response::new(Body::from(serde_json::to_vec(&out).unwrap_or_default()));
        *response.status_mut() =
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response
    }

    fn answer(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        if path == "/apis/monitoring.coreos.com/v1" {
            return if *self.service_monitor_crd.lock().unwrap() {
                (
                    200,
                    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "monitoring.coreos.com/v1", "resources": [{"name": "servicemonitors", "singularName": "servicemonitor", "namespaced": true, "kind": "ServiceMonitor", "verbs": ["get", "list", "patch", "delete"]}]}),
                )
            } else {
                (
                    404,
                    status_body(
                        404,
                        "NotFound",
                        "the server could not find the requested resource",
                    ),
                )
            };
        }
        let (object_path, subresource) = match path.strip_suffix("/status") {
            Some(p) => (p.to_string(), Some("status")),
            None => (path.to_string(), None),
        };
        let last = object_path.rsplit('/').next().unwrap_or("");
        let is_collection = COLLECTIONS.contains(&last);
        let mut objects = self.objects.lock().unwrap();
        match *method {
            Method::GET if is_collection => {
                let selector = query_param(query, "labelSelector").unwrap_or_default();
                let prefix = format!("{object_path}/");
                let items: Vec<Value> = objects
                    .iter()
                    .filter(|(k, v)| {
                        k.starts_with(&prefix)
                            && !k[prefix.len()..].contains('/')
                            && selector_matches(v, &selector)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            Method::GET => match objects.get(&object_path) {
                Some(o) => (200, o.clone()),
                None => (
                    404,
                    status_body(404, "NotFound", &format!("{object_path} not found")),
                ),
            },
            Method::POST => {
                let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
                let key = format!("{object_path}/{name}");
                if objects.contains_key(&key) {
                    return (
                        409,
                        status_body(409, "AlreadyExists", &format!("{key} already exists")),
                    );
                }
                let mut obj = body;
                // Secrets: stringData is folded into data, as the API server does.
                if let Some(sd) = obj.get("stringData").cloned().filter(Value::is_object) {
                    use base64::Engine as _;
                    let data: serde_json::Map<String, Value> = sd
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                json!(
                                    base64::engine::general_purpose::STANDARD
                                        .encode(v.as_str().unwrap_or(""))
                                ),
                            )
                        })
                        .collect();
                    obj["data"] = Value::Object(data);
                    obj.as_object_mut().map(|m| m.remove("stringData"));
                }
                drop(objects);
                self.stamp(&mut obj, None);
                self.objects.lock().unwrap().insert(key, obj.clone());
                (201, obj)
            }
            Method::DELETE => match objects.remove(&object_path) {
                Some(o) => (200, o),
                None => (
                    404,
                    status_body(404, "NotFound", &format!("{object_path} not found")),
                ),
            },
            Method::PATCH => {
                let old = objects.get(&object_path).cloned();
                let mut new = if content_type.starts_with("application/apply-patch") {
                    match (subresource, old.clone()) {
                        (Some(_), Some(mut o)) => {
                            o["status"] = body["status"].clone();
                            o
                        }
                        (Some(_), None) => {
                            return (404, status_body(404, "NotFound", "no object for status"));
                        }
                        (None, old) => {
                            let mut n = body;
                            if let Some(o) = &old {
                                n["status"] = o["status"].clone();
                                if n["metadata"].get("finalizers").is_none() {
                                    n["metadata"]["finalizers"] =
                                        o["metadata"]["finalizers"].clone();
                                }
                            }
                            n
                        }
                    }
                } else if content_type.starts_with("application/merge-patch") {
                    let Some(mut o) = old.clone() else {
                        return (404, status_body(404, "NotFound", "not found"));
                    };
                    json_patch::merge(&mut o, &body);
                    o
                } else if content_type.starts_with("application/json-patch") {
                    let Some(mut o) = old.clone() else {
                        return (404, status_body(404, "NotFound", "not found"));
                    };
                    let Ok(mut patch) = serde_json::from_value::<json_patch::Patch>(body) else {
                        return (422, status_body(422, "Invalid", "bad json patch"));
                    };
                    // Like the API server: testing an absent field against null passes.
                    patch.0.retain(|op| !matches!(op, json_patch::PatchOperation::Test(t) if t.value.is_null() && o.pointer(t.path.as_str()).is_none()));
                    if json_patch::patch(&mut o, &patch).is_err() {
                        return (422, status_body(422, "Invalid", "json patch test failed"));
                    }
                    o
                } else {
                    return (415, status_body(415, "UnsupportedMediaType", content_type));
                };
                drop(objects);
                self.stamp(&mut new, old.as_ref());
                // Deleting an object with no finalizers left removes it.
                let gone = new["metadata"]["deletionTimestamp"].is_string()
                    && new["metadata"]["finalizers"]
                        .as_array()
                        .is_none_or(Vec::is_empty);
                let mut objects = self.objects.lock().unwrap();
                if gone {
                    objects.remove(&object_path);
                } else {
                    objects.insert(object_path, new.clone());
                }
                (200, new)
            }
            _ => (405, status_body(405, "MethodNotAllowed", "")),
        }
    }
}

// ----------------------------------------------------------------------------------------

/// A member process of the simulated cluster.
#[derive(Debug, Clone, Default)]
pub struct SimMember {
    /// The process runs (its pod exists and started).
    pub running: bool,
    /// Part of the cluster view: `up`, `leaving`, `removed`; `None` = only gossiping.
    pub status: Option<String>,
    pub alive: bool,
    pub partitions: u32,
    /// The volume holds data of the ring.
    pub data: bool,
}

#[derive(Debug, Default)]
pub struct SimState {
    pub n: usize,
    pub partitions: u32,
    pub bootstrapped: bool,
    pub members: BTreeMap<String, SimMember>,
    pub epoch: u64,
    pub base_epoch: u64,
    pub pending: u64,
    /// Admin calls received, e.g. `join db-3`.
    pub calls: Vec<String>,
    pub unreachable: BTreeSet<String>,
    /// Every endpoint called, in order (to check scheme and CA).
    pub endpoints: Vec<Endpoint>,
}

/// A simulated dynamo cluster answering the admin API: bootstrap, join, leave, and handoffs
/// that progress when [`FakeCluster::tick`] is called.
#[derive(Default)]
pub struct FakeCluster {
    pub state: Mutex<SimState>,
}

impl FakeCluster {
    pub fn new(n: usize, partitions: u32) -> Arc<Self> {
        Arc::new(FakeCluster {
            state: Mutex::new(SimState {
                n,
                partitions,
                ..Default::default()
            }),
        })
    }

    /// A pod started: its process gossips with the cluster.
    pub fn start(&self, id: &str) {
        let mut st = self.state.lock().unwrap();
        let m = st.members.entry(id.to_string()).or_default();
        m.running = true;
        m.alive = true;
    }

    /// A pod stopped.
    pub fn stop(&self, id: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(m) = st.members.get_mut(id) {
            m.running = false;
            m.alive = false;
        }
    }

    /// Its volume was replaced by an empty one.
    pub fn wipe(&self, id: &str) {
        if let Some(m) = self.state.lock().unwrap().members.get_mut(id) {
            m.data = false;
        }
    }

    /// Handoffs progress by `step` partitions; when done, leaving members are removed.
    pub fn tick(&self, step: u64) {
        let mut st = self.state.lock().unwrap();
        st.pending = st.pending.saturating_sub(step);
        if st.pending == 0 && st.base_epoch != st.epoch {
            st.base_epoch = st.epoch;
            for m in st.members.values_mut() {
                if m.status.as_deref() == Some("leaving") {
                    m.status = Some("removed".into());
                    m.partitions = 0;
                }
            }
        }
    }

    fn rebalance(st: &mut SimState) {
        let owners: Vec<String> = st
            .members
            .iter()
            .filter(|(_, m)| m.status.as_deref() == Some("up"))
            .map(|(k, _)| k.clone())
            .collect();
        let count = owners.len().max(1) as u32;
        for (k, m) in st.members.iter_mut() {
            if owners.contains(k) {
                m.partitions = st.partitions / count;
            }
        }
        st.epoch += 1;
        st.pending += u64::from(st.partitions / count);
    }

    fn check(&self, at: &Endpoint) -> Result<(), AdminError> {
        let mut st = self.state.lock().unwrap();
        st.endpoints.push(at.clone());
        if st.unreachable.contains(&at.member)
            || !st.members.get(&at.member).is_some_and(|m| m.running)
        {
            return Err(AdminError::Unreachable {
                member: at.member.clone(),
                message: "connection refused".into(),
            });
        }
        Ok(())
    }

    fn api(member: &str, status: u16, code: &str, message: &str) -> AdminError {
        AdminError::Api {
            member: member.into(),
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

#[async_trait]
impl NodeAdmin for FakeCluster {
    async fn members(&self, at: &Endpoint, _token: &str) -> Result<MembersReport, AdminError> {
        self.check(at)?;
        let st = self.state.lock().unwrap();
        let me = &st.members[&at.member];
        if !st.bootstrapped || me.status.is_none() {
            return Ok(MembersReport {
                member: at.member.clone(),
                claimant: None,
                view_version: 0,
                members: Vec::new(),
            });
        }
        let members = st
            .members
            .iter()
            .map(|(id, m)| MemberInfo {
                id: id.clone(),
                status: m.status.clone().unwrap_or_else(|| "joining".into()),
                alive: m.alive,
                partitions_owned: m.partitions,
                ..Default::default()
            })
            .collect();
        let claimant = st
            .members
            .iter()
            .find(|(_, m)| m.status.as_deref() == Some("up") && m.alive)
            .map(|(k, _)| k.clone());
        Ok(MembersReport {
            member: at.member.clone(),
            claimant,
            view_version: st.epoch,
            members,
        })
    }

    async fn ring(&self, at: &Endpoint, _token: &str) -> Result<RingReport, AdminError> {
        self.check(at)?;
        let st = self.state.lock().unwrap();
        let owners: Vec<&SimMember> = st
            .members
            .values()
            .filter(|m| matches!(m.status.as_deref(), Some("up" | "leaving")))
            .collect();
        let min = owners.iter().map(|m| m.partitions).min().unwrap_or(0);
        let max = owners.iter().map(|m| m.partitions).max().unwrap_or(0);
        Ok(RingReport {
            epoch: st.epoch,
            base_epoch: st.base_epoch,
            in_transition: st.epoch != st.base_epoch,
            balance: [min, max],
            members: st
                .members
                .iter()
                .map(|(id, m)| RingMember {
                    id: id.clone(),
                    weight: 1,
                    partitions: m.partitions,
                })
                .collect(),
        })
    }

    async fn handoffs(&self, at: &Endpoint, _token: &str) -> Result<HandoffsReport, AdminError> {
        self.check(at)?;
        let st = self.state.lock().unwrap();
        Ok(HandoffsReport {
            in_transition: st.epoch != st.base_epoch,
            base_epoch: st.base_epoch,
            epoch: st.epoch,
            pending: st.pending,
            ..Default::default()
        })
    }

    async fn bootstrap(&self, at: &Endpoint, _token: &str) -> Result<BootstrapOutcome, AdminError> {
        self.check(at)?;
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("bootstrap {}", at.member));
        if st.members[&at.member].status.is_some() {
            return Ok(BootstrapOutcome::AlreadyMember);
        }
        st.bootstrapped = true;
        st.epoch = 1;
        st.base_epoch = 1;
        let partitions = st.partitions;
        if let Some(m) = st.members.get_mut(&at.member) {
            m.status = Some("up".into());
            m.partitions = partitions;
            m.data = true;
        }
        Ok(BootstrapOutcome::Created)
    }

    async fn join(&self, at: &Endpoint, _token: &str, member: &str) -> Result<(), AdminError> {
        self.check(at)?;
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("join {member}"));
        match st.members.get(member) {
            None => {
                return Err(Self::api(
                    &at.member,
                    400,
                    "bad_request",
                    "not known to the cluster yet",
                ));
            }
            Some(m) if m.status.as_deref() == Some("up") => return Ok(()),
            Some(m) if m.status.as_deref() == Some("leaving") => {
                return Err(Self::api(&at.member, 409, "refused", "still leaving"));
            }
            Some(m) if !m.alive => return Err(Self::api(&at.member, 409, "refused", "not alive")),
            Some(m) if m.data => {
                panic!("{member} rejoined on a volume with data of a ring it left")
            }
            Some(_) => {}
        }
        if let Some(m) = st.members.get_mut(member) {
            m.status = Some("up".into());
            m.data = true;
        }
        Self::rebalance(&mut st);
        Ok(())
    }

    async fn leave(&self, at: &Endpoint, _token: &str, member: &str) -> Result<(), AdminError> {
        self.check(at)?;
        let mut st = self.state.lock().unwrap();
        st.calls.push(format!("leave {member}"));
        let up = st
            .members
            .values()
            .filter(|m| m.status.as_deref() == Some("up"))
            .count();
        match st.members.get(member).and_then(|m| m.status.clone()) {
            None => return Err(Self::api(&at.member, 400, "bad_member", "not a member")),
            Some(s) if s != "up" => {
                return Err(Self::api(&at.member, 409, "refused", "already leaving"));
            }
            Some(_) if up <= st.n => {
                return Err(Self::api(
                    &at.member,
                    409,
                    "refused",
                    "would leave fewer than n members",
                ));
            }
            Some(_) => {}
        }
        let partitions = st.partitions;
        if let Some(m) = st.members.get_mut(member) {
            m.status = Some("leaving".into());
        }
        st.epoch += 1;
        st.pending += u64::from(partitions / 4);
        Ok(())
    }
}
