//! The admin API under `/v1/cluster`, behind the cluster token.

use std::collections::BTreeMap;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};

use super::{ApiError, Body, check_bearer, json_response, read_body};
use crate::antientropy::ExchangeReport;
use crate::config::ClusterSettings;
use crate::handoff::HandoffStatus;
use crate::membership::MemberInfo;
use crate::node::Node;
use crate::ring::{MemberId, PartitionId, planner};
use crate::rpc::{ErrorCode, RemoteError};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MembersBody {
    member: MemberId,
    claimant: Option<MemberId>,
    view_version: u64,
    members: Vec<MemberInfo>,
    /// Hinted writes this member holds, per member they are for.
    hints_held: BTreeMap<MemberId, u64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RingMemberBody {
    id: MemberId,
    weight: u32,
    partitions: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RingBody {
    epoch: u64,
    view_version: u64,
    settings: ClusterSettings,
    /// Owner of every partition of the current (newest) ring.
    owners: Vec<MemberId>,
    members: Vec<RingMemberBody>,
    /// Epoch of the ring whose replicas hold all data; differs from `epoch` while
    /// ownership moves.
    base_epoch: u64,
    in_transition: bool,
    /// Smallest and largest partitions owned by one member.
    balance: [u32; 2],
    /// Windows of N consecutive partitions not owned by N distinct members.
    spacing_violations: usize,
    spacing_feasible: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HandoffsBody {
    /// Whether ownership is moving (two live rings).
    in_transition: bool,
    base_epoch: u64,
    epoch: u64,
    /// Partitions still to be received, per member, as gossiped.
    pending_by_member: BTreeMap<MemberId, u32>,
    pending: u32,
    /// This member's own transfers.
    local: HandoffStatus,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AntiEntropyBody {
    last_exchange: Option<ExchangeReport>,
    /// Merkle root of every partition this member holds data for.
    roots: BTreeMap<PartitionId, String>,
    keys: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    member: Option<String>,
    weight: Option<u32>,
}

fn remote_error(e: RemoteError) -> ApiError {
    let (status, code) = match e.code {
        ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorCode::Refused => (StatusCode::CONFLICT, "refused"),
        ErrorCode::NotClaimant | ErrorCode::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        ErrorCode::Storage | ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiError::new(status, code, e.message)
}

fn no_view() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "this member is not part of a cluster yet",
    )
}

pub async fn handle(
    node: &Node,
    req: Request<Incoming>,
    path: &str,
) -> Result<Response<Body>, ApiError> {
    let tokens: Vec<&crate::config::Secret> = std::iter::once(&node.config.cluster_token)
        .chain(&node.config.accepted_cluster_tokens)
        .collect();
    check_bearer(&req, &tokens, node, "admin")?;
    let rest = path.trim_start_matches("/v1/cluster").trim_end_matches('/');
    match (req.method().clone(), rest) {
        (Method::GET, "/members") => {
            let view = node.membership.view();
            Ok(json_response(
                StatusCode::OK,
                &MembersBody {
                    member: node.config.id.clone(),
                    claimant: node.membership.claimant(),
                    view_version: view.as_ref().map_or(0, |v| v.version),
                    members: node.membership.members(),
                    hints_held: node.store.hint_counts(),
                },
            ))
        }
        (Method::GET, "/ring") => {
            let view = node.membership.view().ok_or_else(no_view)?;
            let ring = view.current();
            let counts = ring.ownership_counts();
            let weights: Vec<u32> = ring.members().iter().map(|m| m.weight).collect();
            let body = RingBody {
                epoch: ring.epoch,
                view_version: view.version,
                settings: view.settings.clone(),
                owners: ring.owners(),
                members: counts
                    .iter()
                    .map(|(id, c)| RingMemberBody {
                        id: id.clone(),
                        weight: ring.weight_of(id).unwrap_or(1),
                        partitions: *c,
                    })
                    .collect(),
                base_epoch: view.base().epoch,
                in_transition: view.in_transition(),
                balance: [
                    counts.iter().map(|c| c.1).min().unwrap_or(0),
                    counts.iter().map(|c| c.1).max().unwrap_or(0),
                ],
                spacing_violations: ring.spacing_violations(view.settings.n),
                spacing_feasible: planner::spacing_feasible(
                    ring.partition_count(),
                    view.settings.n,
                    &weights,
                ),
            };
            Ok(json_response(StatusCode::OK, &body))
        }
        (Method::GET, "/handoffs") => {
            let view = node.membership.view().ok_or_else(no_view)?;
            let mut pending_by_member = BTreeMap::new();
            for m in view.current().member_ids() {
                let pending = match node.membership.member_state(m) {
                    _ if !view.in_transition() => 0,
                    Some(s) if s.synced_epoch >= view.current().epoch => 0,
                    Some(s) if s.pulls_pending > 0 => s.pulls_pending,
                    // Not started yet: everything it must receive is pending.
                    _ => view.pull_duties(m).len() as u32,
                };
                pending_by_member.insert(m.clone(), pending);
            }
            let pending = pending_by_member.values().sum();
            Ok(json_response(
                StatusCode::OK,
                &HandoffsBody {
                    in_transition: view.in_transition(),
                    base_epoch: view.base().epoch,
                    epoch: view.current().epoch,
                    pending_by_member,
                    pending,
                    local: node.handoff.status(),
                },
            ))
        }
        (Method::GET, "/antientropy") => {
            let populated = node.store.populated_partitions();
            Ok(json_response(
                StatusCode::OK,
                &AntiEntropyBody {
                    last_exchange: node.antientropy.last_report(),
                    keys: populated.iter().map(|(_, _, k)| k).sum(),
                    roots: populated
                        .into_iter()
                        .map(|(p, root, _)| (p, format!("{root:016x}")))
                        .collect(),
                },
            ))
        }
        (Method::POST, "/join") => {
            let body = read_body(req.into_body(), 4096).await?;
            let join: JoinBody = if body.is_empty() {
                JoinBody::default()
            } else {
                serde_json::from_slice(&body).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        format!("expected {{\"member\": \"id\", \"weight\": 1}}: {e}"),
                    )
                })?
            };
            let member = match join.member {
                Some(m) => crate::config::validate_member_id(&m).map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_member", e.to_string())
                })?,
                None => node.config.id.clone(),
            };
            node.membership
                .request_join(member.clone(), join.weight.unwrap_or(1))
                .await
                .map_err(remote_error)?;
            Ok(json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "member": member, "status": "accepted" }),
            ))
        }
        (Method::POST, leave) if leave.starts_with("/leave/") => {
            let id = leave.trim_start_matches("/leave/");
            let member = crate::config::validate_member_id(id)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_member", e.to_string()))?;
            node.membership
                .request_leave(member.clone())
                .await
                .map_err(remote_error)?;
            Ok(json_response(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "member": member, "status": "leaving" }),
            ))
        }
        (Method::POST, "/bootstrap") => {
            if node.membership.view().is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "already_member",
                    "this member already belongs to a cluster",
                ));
            }
            let view = node.bootstrap().await.map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "bootstrap_failed",
                    e.to_string(),
                )
            })?;
            Ok(json_response(
                StatusCode::CREATED,
                &serde_json::json!({ "epoch": view.current().epoch, "settings": view.settings }),
            ))
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_such_endpoint",
            format!("no admin endpoint {} {path}", req.method()),
        )),
    }
}
