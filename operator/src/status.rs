//! Status and conditions, computed from the observation and the plan (pure).
//!
//! Conditions follow the Kubernetes API conventions: positive polarity types, `True`,
//! `False` or `Unknown`, a CamelCase reason, a human message, `lastTransitionTime` kept
//! while the status does not change, and `observedGeneration`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::builders::{Names, max_unavailable};
use crate::crd::{DynamoCluster, DynamoClusterStatus, MemberState, MemberStatus, PartitionBalance};
use crate::plan::{Observed, Phase, Plan, PodProblem, unhealthy_members};

pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const REBALANCING: &str = "Rebalancing";
pub const MEMBERS_HEALTHY: &str = "MembersHealthy";

/// Reason of `Degraded` when a change made no progress for `spec.progressDeadlineSeconds`.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// Reason given to a member whose claim stays `Pending` longer than
/// [`CLAIM_PENDING_GRACE_SECONDS`] while its pod does not run.
pub const CLAIM_PENDING: &str = "ClaimPending";
/// A claim is normally `Pending` for a few seconds (provisioning, or until its pod is
/// scheduled with `WaitForFirstConsumer`); only a longer wait is a failure.
pub const CLAIM_PENDING_GRACE_SECONDS: i64 = 60;

/// Why a member cannot run, as Kubernetes reports it: the pod's problem, or its claim
/// pending for longer than the grace period while the pod does not run.
pub fn member_problem(o: &Observed, names: &Names, ordinal: i32, now: &Time) -> Option<PodProblem> {
    let pod = o.pods.get(&ordinal);
    if let Some(problem) = pod.and_then(|p| p.problem.clone()) {
        return Some(problem);
    }
    let since = o.pvcs.get(&ordinal)?.pending_since?;
    let waited = now.0.as_second() - since.as_second();
    (waited > CLAIM_PENDING_GRACE_SECONDS && !pod.is_some_and(|p| p.running)).then(|| PodProblem {
        reason: CLAIM_PENDING.into(),
        message: format!(
            "PersistentVolumeClaim {} has been Pending for {waited} s (see `kubectl describe pvc {}`: no StorageClass, no capacity, or a provisioner error)",
            names.pvc(ordinal),
            names.pvc(ordinal)
        ),
    })
}

/// Everything the status is computed from.
pub struct StatusInputs<'a> {
    pub dc: &'a DynamoCluster,
    pub names: &'a Names,
    pub observed: &'a Observed,
    pub plan: &'a Plan,
    /// Failures of this pass (admin calls refused, unreachable members): shown in messages.
    pub problems: &'a [String],
    /// Joins and leaves the cluster accepted in this pass. Partitions start moving at
    /// once, and a small cluster may finish before the next observation; the status of
    /// this pass says the ring is changing so that `Rebalancing` is never skipped.
    pub ring_changes: &'a [String],
    pub now: Time,
}

fn member_state(o: &Observed, plan: &Plan, names: &Names, ordinal: i32) -> MemberState {
    let pod = o.pods.get(&ordinal);
    let Some(cluster) = &o.cluster else {
        return if plan.bootstrapped {
            MemberState::Unknown
        } else if pod.is_some_and(|p| p.running) {
            MemberState::Starting
        } else {
            MemberState::Pending
        };
    };
    match cluster.status_of(&names.pod(ordinal)) {
        Some("up") => MemberState::Up,
        Some("leaving") => MemberState::Leaving,
        Some("removed") => MemberState::Removed,
        Some("joining") if pod.is_some_and(|p| p.running) => MemberState::Joining,
        _ if pod.is_some_and(|p| p.running) => MemberState::Starting,
        _ => MemberState::Pending,
    }
}

pub fn compute(inp: &StatusInputs<'_>) -> DynamoClusterStatus {
    let StatusInputs {
        dc,
        names,
        observed: o,
        plan,
        problems,
        ring_changes,
        now,
    } = inp;
    let previous = dc.status.clone().unwrap_or_default();
    let generation = dc.metadata.generation;
    let target = plan.sts_replicas.min(dc.spec.replicas.max(o.n));
    let highest = o
        .pods
        .keys()
        .copied()
        .max()
        .map_or(0, |m| m + 1)
        .max(plan.sts_replicas)
        .max(o.sts_replicas.unwrap_or(0));

    let members: Vec<MemberStatus> = (0..highest)
        .filter(|&i| i < plan.sts_replicas || o.pods.contains_key(&i))
        .map(|i| {
            let id = names.pod(i);
            let info = o.cluster.as_ref().and_then(|c| c.members.get(&id));
            let pod = o.pods.get(&i);
            let problem = member_problem(o, names, i, now);
            MemberStatus {
                name: id,
                state: member_state(o, plan, names, i),
                ready: pod.is_some_and(|p| p.ready),
                alive: info.map(|m| m.alive),
                partitions: info
                    .filter(|m| m.status != "joining")
                    .map(|m| m.partitions_owned as i32),
                updated: pod.is_some_and(|p| p.updated),
                reason: problem.as_ref().map(|p| p.reason.clone()),
                message: problem.map(|p| p.message),
            }
        })
        .collect();
    // Failures Kubernetes reports for the members, by ordinal.
    let failing: Vec<(&str, &str, &str)> = members
        .iter()
        .filter_map(|m| Some((m.name.as_str(), m.reason.as_deref()?, m.message.as_deref()?)))
        .collect();
    let failures_text = failing
        .iter()
        .map(|(pod, reason, message)| format!("{pod}: {reason}: {message}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ready = (0..target)
        .filter(|i| o.pods.get(i).is_some_and(|p| p.ready))
        .count() as i32;
    let tolerated = max_unavailable(dc);
    let ring = o.cluster.as_ref().and_then(|c| c.ring.as_ref());
    let handoffs = o.cluster.as_ref().and_then(|c| c.handoffs.as_ref());

    let mut conditions = Vec::new();
    let mut set = |type_: &str, status: &str, reason: &str, message: String| {
        let old = previous.conditions.iter().find(|c| c.type_ == type_);
        let last_transition_time = match old {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => now.clone(),
        };
        conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: generation,
        });
    };

    // Available: every key keeps its default quorum.
    let unavailable = target - ready;
    match (&o.cluster, plan.bootstrapped) {
        (_, false) => set(
            AVAILABLE,
            "False",
            "NotBootstrapped",
            "the cluster has not been created yet".into(),
        ),
        (None, true) => set(
            AVAILABLE,
            "Unknown",
            "ClusterUnreachable",
            "no member answers the admin API".into(),
        ),
        (Some(_), true) if ready > 0 && unavailable <= tolerated => set(
            AVAILABLE,
            "True",
            "QuorumAvailable",
            format!(
                "{ready}/{target} members ready; up to {tolerated} may be down without a key losing its quorum"
            ),
        ),
        (Some(_), true) => set(
            AVAILABLE,
            "False",
            "QuorumAtRisk",
            format!(
                "{ready}/{target} members ready; more than {tolerated} down means some keys miss their read or write quorum"
            ),
        ),
    }

    // Progressing: the operator is moving the cluster towards the spec.
    let waiting = if plan.waiting.is_empty() {
        String::new()
    } else {
        plan.waiting.join("; ")
    };
    let (progressing, progressing_reason, progressing_message) =
        if let Some(refused) = &plan.scale_refused {
            ("False", "ScaleRefused", refused.clone())
        } else if plan.converged() {
            (
                "False",
                "Stable",
                format!("{target} members up, ring settled, all running the current template"),
            )
        } else {
            let reason = match plan.phase {
                Phase::Bootstrapping => "Bootstrapping",
                Phase::ScalingUp => "ScalingUp",
                Phase::ScalingDown => "ScalingDown",
                Phase::RollingUpdate => "RollingUpdate",
                Phase::Unobservable => "WaitingForCluster",
                Phase::Rebalancing => "Rebalancing",
                Phase::Stable => "Reconciling",
            };
            (
                "True",
                reason,
                if waiting.is_empty() {
                    "applying changes".into()
                } else {
                    waiting.clone()
                },
            )
        };
    set(
        PROGRESSING,
        progressing,
        progressing_reason,
        progressing_message.clone(),
    );

    // Progress: anything that shows the change moving. Unchanged while stable, so a
    // settled cluster's status stays byte-for-byte the same between passes.
    let updated_members = o
        .pods
        .iter()
        .filter(|(i, p)| **i < target && p.updated)
        .count() as i32;
    let ring_epoch = ring.map(|r| r.epoch as i64);
    let handoffs_pending = handoffs.map(|h| h.pending as i64);
    let moved = previous
        .conditions
        .iter()
        .find(|c| c.type_ == PROGRESSING)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
        != Some((
            progressing,
            progressing_reason,
            progressing_message.as_str(),
        ))
        || previous.ready_members != ready
        || previous.updated_members != updated_members
        || previous.ring_epoch != ring_epoch
        || previous.handoffs_pending != handoffs_pending;
    let last_progress_time = match &previous.last_progress_time {
        Some(t) if !moved => t.clone(),
        _ => now.clone(),
    };
    let deadline = i64::from(dc.spec.progress_deadline_seconds);
    let stalled_for = now.0.as_second() - last_progress_time.0.as_second();
    let stalled = progressing == "True" && stalled_for > deadline;

    // MembersHealthy: Kubernetes runs every member pod (no pull, crash, config or
    // scheduling failure, no claim stuck Pending).
    match failing.first() {
        None => set(
            MEMBERS_HEALTHY,
            "True",
            "AsExpected",
            "no member pod or claim reports a failure".into(),
        ),
        Some((_, reason, _)) => set(MEMBERS_HEALTHY, "False", reason, failures_text.clone()),
    }

    // Degraded: something is wrong that the operator is not in the middle of changing.
    let mut degraded: Vec<String> = Vec::new();
    let mut reason = "AsExpected";
    if let Some(refused) = &plan.scale_refused {
        degraded.push(refused.clone());
        reason = "ScaleRefused";
    }
    if stalled {
        degraded.push(format!(
            "no progress for {stalled_for} s (spec.progressDeadlineSeconds {deadline}): {progressing_message}"
        ));
        if reason == "AsExpected" {
            reason = PROGRESS_DEADLINE_EXCEEDED;
        }
    }
    if let Some(&(_, first, _)) = failing.first() {
        degraded.push(failures_text.clone());
        if reason == "AsExpected" {
            reason = first;
        }
    }
    if let Some(cluster) = &o.cluster {
        let unhealthy: Vec<String> = unhealthy_members(o, cluster, names, target)
            .into_iter()
            .filter(|&i| {
                cluster.status_of(&names.pod(i)) == Some("up")
                    && !o.pods.get(&i).is_some_and(|p| p.terminating)
            })
            .map(|i| names.pod(i))
            .collect();
        if !unhealthy.is_empty() && plan.phase != Phase::RollingUpdate {
            degraded.push(format!(
                "members in the ring but not ready or not seen alive: {}",
                unhealthy.join(", ")
            ));
            if reason == "AsExpected" {
                reason = "MembersUnavailable";
            }
        }
    } else if plan.bootstrapped {
        degraded.push("no member answers the admin API".into());
        if reason == "AsExpected" {
            reason = "ClusterUnreachable";
        }
    }
    if !problems.is_empty() {
        degraded.push(problems.join("; "));
        if reason == "AsExpected" {
            reason = "ReconcileProblems";
        }
    }
    if degraded.is_empty() {
        set(DEGRADED, "False", "AsExpected", "no problems found".into());
    } else {
        set(DEGRADED, "True", reason, degraded.join("; "));
    }

    // Rebalancing: partitions are moving between members.
    let settled_before_the_changes =
        handoffs.is_some_and(|h| h.settled()) && !ring.is_some_and(|r| r.in_transition);
    match handoffs {
        Some(_) if settled_before_the_changes && !ring_changes.is_empty() => set(
            REBALANCING,
            "True",
            "RingChangeRequested",
            format!("{}; partitions are about to move", ring_changes.join(", ")),
        ),
        Some(h) if !h.settled() || ring.is_some_and(|r| r.in_transition) => set(
            REBALANCING,
            "True",
            "HandoffsInProgress",
            format!(
                "moving from ring epoch {} to {}: {} partitions pending",
                h.base_epoch, h.epoch, h.pending
            ),
        ),
        Some(h) => set(
            REBALANCING,
            "False",
            "RingSettled",
            format!("ring epoch {} settled", h.epoch),
        ),
        None if !plan.bootstrapped => set(
            REBALANCING,
            "False",
            "NotBootstrapped",
            "no ring yet".into(),
        ),
        None => set(
            REBALANCING,
            "Unknown",
            "ClusterUnreachable",
            "handoffs could not be read".into(),
        ),
    }

    DynamoClusterStatus {
        observed_generation: generation,
        replicas: o.pods.values().filter(|p| !p.terminating).count() as i32,
        selector: Some(crate::builders::selector_string(names)),
        ready_members: ready,
        bootstrapped: plan.bootstrapped,
        ring_epoch,
        partition_balance: ring.map(|r| PartitionBalance {
            min: r.balance[0] as i32,
            max: r.balance[1] as i32,
        }),
        handoffs_pending,
        updated_members,
        last_progress_time: Some(last_progress_time),
        members,
        conditions,
    }
}

pub fn condition<'a>(status: &'a DynamoClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::{HandoffsReport, MemberInfo, MembersReport, RingReport};
    use crate::crd::DynamoClusterSpec;
    use crate::plan::{ClusterObs, PodObs, PodProblem, plan};
    use std::collections::BTreeMap;

    fn dc() -> DynamoCluster {
        let mut dc = DynamoCluster::new(
            "db",
            DynamoClusterSpec {
                replicas: 3,
                image: "img".into(),
                ..Default::default()
            },
        );
        dc.metadata.namespace = Some("ns".into());
        dc.metadata.generation = Some(4);
        dc
    }

    fn t(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn healthy() -> Observed {
        let members = MembersReport {
            member: "db-0".into(),
            claimant: Some("db-0".into()),
            view_version: 2,
            members: (0..3)
                .map(|i| MemberInfo {
                    id: format!("db-{i}"),
                    status: "up".into(),
                    alive: true,
                    partitions_owned: 85,
                    ..Default::default()
                })
                .collect(),
        };
        Observed {
            spec_replicas: 3,
            n: 3,
            sts_replicas: Some(3),
            pods: (0..3)
                .map(|i| {
                    (
                        i,
                        PodObs {
                            running: true,
                            ready: true,
                            terminating: false,
                            updated: true,
                            problem: None,
                        },
                    )
                })
                .collect(),
            bootstrapped: true,
            cluster: Some(ClusterObs {
                source: "db-0".into(),
                views: BTreeMap::from([("db-0".into(), members.clone())]),
                members,
                ring: Some(RingReport {
                    epoch: 2,
                    base_epoch: 2,
                    balance: [85, 86],
                    ..Default::default()
                }),
                handoffs: Some(HandoffsReport {
                    epoch: 2,
                    base_epoch: 2,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    fn status_of(
        dc: &DynamoCluster,
        o: &Observed,
        problems: &[String],
        now: &str,
    ) -> DynamoClusterStatus {
        let names = Names::of(dc);
        let p = plan(o, &names);
        compute(&StatusInputs {
            dc,
            names: &names,
            observed: o,
            plan: &p,
            problems,
            ring_changes: &[],
            now: t(now),
        })
    }

    fn cond(s: &DynamoClusterStatus, ty: &str) -> (String, String) {
        let c = condition(s, ty).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn healthy_cluster() {
        let d = dc();
        let s = status_of(&d, &healthy(), &[], "2026-01-01T00:00:00Z");
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.ready_members, 3);
        assert_eq!(s.replicas, 3);
        assert_eq!(s.ring_epoch, Some(2));
        assert_eq!(
            s.partition_balance,
            Some(PartitionBalance { min: 85, max: 86 })
        );
        assert_eq!(s.handoffs_pending, Some(0));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=db,app.kubernetes.io/name=dynamo")
        );
        assert_eq!(
            cond(&s, AVAILABLE),
            ("True".into(), "QuorumAvailable".into())
        );
        assert_eq!(cond(&s, PROGRESSING), ("False".into(), "Stable".into()));
        assert_eq!(cond(&s, DEGRADED), ("False".into(), "AsExpected".into()));
        assert_eq!(
            cond(&s, REBALANCING),
            ("False".into(), "RingSettled".into())
        );
        assert_eq!(s.members.len(), 3);
        assert!(
            s.members
                .iter()
                .all(|m| m.state == MemberState::Up && m.ready && m.partitions == Some(85))
        );
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
    }

    #[test]
    fn transition_times_survive_unchanged_conditions() {
        let mut d = dc();
        let first = status_of(&d, &healthy(), &[], "2026-01-01T00:00:00Z");
        d.status = Some(first.clone());
        let second = status_of(&d, &healthy(), &[], "2026-01-01T01:00:00Z");
        assert_eq!(first, second, "a second pass computes the same status");
        let mut o = healthy();
        o.pods.get_mut(&1).unwrap().ready = false;
        o.pods.get_mut(&2).unwrap().ready = false;
        let third = status_of(&d, &o, &[], "2026-01-01T02:00:00Z");
        assert_eq!(
            cond(&third, AVAILABLE),
            ("False".into(), "QuorumAtRisk".into())
        );
        assert_eq!(
            condition(&third, AVAILABLE).unwrap().last_transition_time,
            t("2026-01-01T02:00:00Z")
        );
        assert_eq!(
            condition(&third, REBALANCING).unwrap().last_transition_time,
            t("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            cond(&third, DEGRADED),
            ("True".into(), "MembersUnavailable".into())
        );
    }

    #[test]
    fn pods_that_never_run() {
        // What a control plane without kubelets shows: pods exist, none runs.
        let d = dc();
        let o = Observed {
            spec_replicas: 3,
            n: 3,
            sts_replicas: Some(3),
            pods: (0..3).map(|i| (i, PodObs::default())).collect(),
            ..Default::default()
        };
        let s = status_of(&d, &o, &[], "2026-01-01T00:00:00Z");
        assert_eq!(
            cond(&s, AVAILABLE),
            ("False".into(), "NotBootstrapped".into())
        );
        assert_eq!(
            cond(&s, PROGRESSING),
            ("True".into(), "Bootstrapping".into())
        );
        assert!(
            condition(&s, PROGRESSING)
                .unwrap()
                .message
                .contains("waiting for pod db-0 to start")
        );
        assert_eq!(cond(&s, DEGRADED), ("False".into(), "AsExpected".into()));
        assert_eq!(
            cond(&s, REBALANCING),
            ("False".into(), "NotBootstrapped".into())
        );
        assert!(s.members.iter().all(|m| m.state == MemberState::Pending));
        assert!(!s.bootstrapped);
        assert_eq!(s.ready_members, 0);
    }

    #[test]
    fn scale_down_shows_rebalancing_and_refusal_shows_degraded() {
        let mut d = dc();
        d.spec.replicas = 2;
        let s = status_of(
            &d,
            &Observed {
                spec_replicas: 2,
                ..healthy()
            },
            &[],
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            cond(&s, PROGRESSING),
            ("False".into(), "ScaleRefused".into())
        );
        assert_eq!(cond(&s, DEGRADED), ("True".into(), "ScaleRefused".into()));

        let mut o = healthy();
        o.cluster.as_mut().unwrap().handoffs = Some(HandoffsReport {
            in_transition: true,
            base_epoch: 2,
            epoch: 3,
            pending: 7,
            ..Default::default()
        });
        let s = status_of(&dc(), &o, &[], "2026-01-01T00:00:00Z");
        assert_eq!(
            cond(&s, REBALANCING),
            ("True".into(), "HandoffsInProgress".into())
        );
        assert!(
            condition(&s, REBALANCING)
                .unwrap()
                .message
                .contains("7 partitions pending")
        );
        assert_eq!(s.handoffs_pending, Some(7));
    }

    /// A join accepted in this pass shows as rebalancing even though the observation
    /// taken before it found the ring settled: a small cluster can finish moving its
    /// partitions before the next pass, and `Rebalancing` must not be skipped.
    #[test]
    fn accepted_join_shows_as_rebalancing() {
        let d = dc();
        let o = healthy();
        let names = Names::of(&d);
        let p = plan(&o, &names);
        let changes = vec!["db-3 asked to join".to_string()];
        let s = compute(&StatusInputs {
            dc: &d,
            names: &names,
            observed: &o,
            plan: &p,
            problems: &[],
            ring_changes: &changes,
            now: t("2026-01-01T00:00:00Z"),
        });
        assert_eq!(
            cond(&s, REBALANCING),
            ("True".into(), "RingChangeRequested".into())
        );
        assert!(
            condition(&s, REBALANCING)
                .unwrap()
                .message
                .contains("db-3 asked to join")
        );
        // The next pass observes the settled ring again.
        let s = status_of(&d, &o, &[], "2026-01-01T00:00:05Z");
        assert_eq!(
            cond(&s, REBALANCING),
            ("False".into(), "RingSettled".into())
        );
    }

    #[test]
    fn unreachable_cluster_is_unknown() {
        let mut o = healthy();
        o.cluster = None;
        let s = status_of(
            &dc(),
            &o,
            &["db-0 is unreachable".into()],
            "2026-01-01T00:00:00Z",
        );
        assert_eq!(
            cond(&s, AVAILABLE),
            ("Unknown".into(), "ClusterUnreachable".into())
        );
        assert_eq!(
            cond(&s, REBALANCING),
            ("Unknown".into(), "ClusterUnreachable".into())
        );
        assert_eq!(
            cond(&s, DEGRADED),
            ("True".into(), "ClusterUnreachable".into())
        );
        assert!(
            condition(&s, DEGRADED)
                .unwrap()
                .message
                .contains("db-0 is unreachable")
        );
        assert!(s.members.iter().all(|m| m.state == MemberState::Unknown));
    }

    #[test]
    fn a_claim_pending_past_the_grace_names_the_member() {
        let d = dc();
        let mut o = healthy();
        o.pods.get_mut(&2).unwrap().running = false;
        o.pods.get_mut(&2).unwrap().ready = false;
        o.pvcs.insert(
            2,
            crate::plan::PvcObs {
                pending_since: Some("2026-01-01T00:00:00Z".parse().unwrap()),
                ..Default::default()
            },
        );
        let s = status_of(&d, &o, &[], "2026-01-01T00:00:30Z");
        assert_eq!(
            cond(&s, MEMBERS_HEALTHY),
            ("True".into(), "AsExpected".into()),
            "within the grace period a claim is just being provisioned"
        );
        let s = status_of(&d, &o, &[], "2026-01-01T00:01:01Z");
        assert_eq!(
            cond(&s, MEMBERS_HEALTHY),
            ("False".into(), "ClaimPending".into())
        );
        let m = condition(&s, MEMBERS_HEALTHY).unwrap().message.clone();
        assert!(
            m.starts_with(
                "db-2: ClaimPending: PersistentVolumeClaim data-db-2 has been Pending for 61 s"
            ),
            "{m}"
        );
        assert_eq!(cond(&s, DEGRADED), ("True".into(), "ClaimPending".into()));
        assert_eq!(s.members[2].reason.as_deref(), Some("ClaimPending"));
        // A pod that runs has its volume: a Pending phase read before binding is stale.
        o.pods.get_mut(&2).unwrap().running = true;
        let s = status_of(&d, &o, &[], "2026-01-01T00:01:01Z");
        assert_eq!(cond(&s, MEMBERS_HEALTHY).0, "True");
    }

    #[test]
    fn unschedulable_pod_is_degraded_with_the_schedulers_message() {
        let d = dc();
        let mut o = healthy();
        *o.pods.get_mut(&1).unwrap() = PodObs {
            problem: Some(PodProblem {
                reason: "Unschedulable".into(),
                message: "0/3 nodes are available: 3 Insufficient cpu.".into(),
            }),
            ..Default::default()
        };
        let s = status_of(&d, &o, &[], "2026-01-01T00:00:00Z");
        assert_eq!(
            cond(&s, MEMBERS_HEALTHY),
            ("False".into(), "Unschedulable".into())
        );
        let deg = condition(&s, DEGRADED).unwrap();
        assert_eq!(deg.reason, "Unschedulable");
        assert!(
            deg.message
                .contains("db-1: Unschedulable: 0/3 nodes are available: 3 Insufficient cpu."),
            "{}",
            deg.message
        );
    }

    /// The deadline counts from the last observed progress, not from the start of the
    /// change: handoffs that keep moving are never "stuck".
    #[test]
    fn progress_deadline_counts_from_the_last_progress() {
        let mut d = dc();
        d.spec.progress_deadline_seconds = 120;
        let mut o = healthy();
        let handoffs = |pending: u64| {
            Some(HandoffsReport {
                in_transition: true,
                base_epoch: 2,
                epoch: 3,
                pending,
                ..Default::default()
            })
        };
        o.cluster.as_mut().unwrap().handoffs = handoffs(50);
        let first = status_of(&d, &o, &[], "2026-01-01T00:00:00Z");
        assert_eq!(
            cond(&first, PROGRESSING),
            ("True".into(), "Rebalancing".into())
        );
        assert_eq!(first.last_progress_time, Some(t("2026-01-01T00:00:00Z")));
        d.status = Some(first);

        // Handoffs moved: progress, whatever the time since the change began.
        o.cluster.as_mut().unwrap().handoffs = handoffs(20);
        let moved = status_of(&d, &o, &[], "2026-01-01T00:03:00Z");
        assert_eq!(moved.last_progress_time, Some(t("2026-01-01T00:03:00Z")));
        assert_eq!(cond(&moved, DEGRADED).0, "False");
        d.status = Some(moved);

        // Stuck at 20: within the deadline, nothing; past it, Degraded with the cause.
        let within = status_of(&d, &o, &[], "2026-01-01T00:05:00Z");
        assert_eq!(within.last_progress_time, Some(t("2026-01-01T00:03:00Z")));
        assert_eq!(cond(&within, DEGRADED).0, "False");
        let past = status_of(&d, &o, &[], "2026-01-01T00:05:01Z");
        assert_eq!(
            cond(&past, DEGRADED),
            ("True".into(), "ProgressDeadlineExceeded".into())
        );
        let msg = &condition(&past, DEGRADED).unwrap().message;
        assert!(
            msg.starts_with("no progress for 121 s (spec.progressDeadlineSeconds 120): waiting for handoffs to finish (20 partitions pending)"),
            "{msg}"
        );
        assert_eq!(cond(&past, PROGRESSING).0, "True");

        // A settled cluster has no deadline, however long it stays settled.
        let mut settled = dc();
        settled.spec.progress_deadline_seconds = 120;
        settled.status = Some(status_of(&settled, &healthy(), &[], "2026-01-01T00:00:00Z"));
        let later = status_of(&settled, &healthy(), &[], "2026-01-02T00:00:00Z");
        assert_eq!(cond(&later, DEGRADED).0, "False");
        assert_eq!(
            Some(&later),
            settled.status.as_ref(),
            "nothing changes while settled"
        );
    }
}
