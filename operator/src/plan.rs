//! The membership state machine: from what the operator observed (pods, claims, the ring as
//! the members report it) to the StatefulSet size and the next steps. Pure: no client, no
//! clock, so every transition is unit-tested.
//!
//! Safety rules it keeps:
//! * the StatefulSet never shrinks below a member that is still in the ring (`up` or
//!   `leaving`), and only once the ring has settled (no transition, no pending handoff);
//! * a claim is deleted only when its pod is gone and its member owns nothing;
//! * a member that left the ring never comes back on its old volume (it is recycled: claim
//!   and pod deleted, a clean one joins);
//! * while the ring cannot be observed, nothing shrinks;
//! * at most one member restarts for an update, and only when every member is up, alive,
//!   ready and seen alive by every other, and the ring has settled.

use std::collections::{BTreeMap, BTreeSet};

use crate::admin::{HandoffsReport, MembersReport, RingReport};
use crate::builders::Names;

/// A member pod as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodObs {
    /// Its container has started (the node process may answer the admin API).
    pub running: bool,
    /// It passes `/readyz`: an up (or leaving) member of the ring.
    pub ready: bool,
    pub terminating: bool,
    /// It runs the StatefulSet's update revision.
    pub updated: bool,
    /// Why Kubernetes cannot run it (a container waiting in `ImagePullBackOff`,
    /// `CrashLoopBackOff`, ..., or the pod not scheduled), as the kubelet or the scheduler
    /// reported it.
    pub problem: Option<PodProblem>,
}

/// A failure Kubernetes reports for a member pod or its claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodProblem {
    /// CamelCase, as Kubernetes spells it: `ImagePullBackOff`, `Unschedulable`, ...
    pub reason: String,
    pub message: String,
}

/// A member's PersistentVolumeClaim as observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PvcObs {
    /// Annotated once its member was in the ring: the volume holds cluster data.
    pub holds_data: bool,
    pub terminating: bool,
    /// Creation time of a claim in phase `Pending` (not bound to a volume yet).
    pub pending_since: Option<k8s_openapi::jiff::Timestamp>,
}

/// The ring as the members report it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterObs {
    /// The member whose reports these are (admin calls go to it).
    pub source: String,
    pub members: MembersReport,
    pub ring: Option<RingReport>,
    pub handoffs: Option<HandoffsReport>,
    /// `/v1/cluster/members` as each reachable member of the cluster sees it.
    pub views: BTreeMap<String, MembersReport>,
}

impl ClusterObs {
    pub fn status_of(&self, member: &str) -> Option<&str> {
        self.members.get(member).map(|m| m.status.as_str())
    }

    /// Whether the ring has settled: no ownership transition and no pending handoff.
    pub fn settled(&self) -> bool {
        self.handoffs.as_ref().is_some_and(HandoffsReport::settled)
            && !self.ring.as_ref().is_some_and(|r| r.in_transition)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub spec_replicas: i32,
    pub n: i32,
    /// `spec.replicas` of the existing StatefulSet, if there is one.
    pub sts_replicas: Option<i32>,
    pub pods: BTreeMap<i32, PodObs>,
    pub pvcs: BTreeMap<i32, PvcObs>,
    /// `status.bootstrapped`: the operator created the cluster earlier.
    pub bootstrapped: bool,
    pub cluster: Option<ClusterObs>,
    /// Running pods that answered the admin API without belonging to a cluster.
    pub unclustered: BTreeSet<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// `POST /v1/cluster/bootstrap` on this ordinal.
    Bootstrap(i32),
    /// Ask the cluster to add this member.
    Join(i32),
    /// Ask this member to leave (hand its partitions off).
    Leave(i32),
    /// Annotate the member's claim: it holds cluster data from now on.
    MarkHoldsData(i32),
    /// Delete the claim of a removed member whose pod is gone.
    DeletePvc(i32),
    /// A removed member is wanted again: delete its claim and pod so it starts clean.
    Recycle(i32),
    /// Delete the pod so the StatefulSet recreates it from the new template.
    RestartForUpdate(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No cluster yet: pods start, ordinal 0 is bootstrapped.
    Bootstrapping,
    /// Members are being added (or re-added).
    ScalingUp,
    /// Highest ordinals are leaving; the StatefulSet shrinks once their handoffs finish.
    ScalingDown,
    /// Members restart one at a time onto a new template.
    RollingUpdate,
    /// Bootstrapped, but no member answers.
    Unobservable,
    /// Partitions move between members (after a join or a leave).
    Rebalancing,
    /// Nothing to do.
    Stable,
}

impl Phase {
    /// The name used in the `phase` label of the per-cluster metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Bootstrapping => "Bootstrapping",
            Phase::ScalingUp => "ScalingUp",
            Phase::ScalingDown => "ScalingDown",
            Phase::RollingUpdate => "RollingUpdate",
            Phase::Unobservable => "Unobservable",
            Phase::Rebalancing => "Rebalancing",
            Phase::Stable => "Stable",
        }
    }

    pub const ALL: [Phase; 7] = [
        Phase::Bootstrapping,
        Phase::ScalingUp,
        Phase::ScalingDown,
        Phase::RollingUpdate,
        Phase::Unobservable,
        Phase::Rebalancing,
        Phase::Stable,
    ];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub sts_replicas: i32,
    pub actions: Vec<Action>,
    pub bootstrapped: bool,
    pub phase: Phase,
    /// Why `spec.replicas` is not acted on.
    pub scale_refused: Option<String>,
    /// What the operator waits for, for the `Progressing` message.
    pub waiting: Vec<String>,
}

impl Plan {
    pub fn converged(&self) -> bool {
        self.actions.is_empty() && self.waiting.is_empty() && self.phase == Phase::Stable
    }
}

/// Decides the next step. `names` maps ordinals to member ids.
pub fn plan(o: &Observed, names: &Names) -> Plan {
    let current = o.sts_replicas.unwrap_or(0);
    let mut p = Plan {
        sts_replicas: current,
        actions: Vec::new(),
        bootstrapped: false,
        phase: Phase::Stable,
        scale_refused: None,
        waiting: Vec::new(),
    };
    let target = if o.spec_replicas < o.n {
        p.scale_refused = Some(format!(
            "replicas {} is below replication.n {}: every key needs n distinct members; keeping {} members",
            o.spec_replicas,
            o.n,
            current.max(o.n)
        ));
        current.max(o.n)
    } else {
        o.spec_replicas
    };
    let pod_running = |i: i32| o.pods.get(&i).is_some_and(|p| p.running && !p.terminating);
    let pod_absent = |i: i32| !o.pods.contains_key(&i);

    p.bootstrapped = o.bootstrapped || o.cluster.is_some() || o.pvcs.values().any(|v| v.holds_data);
    if !p.bootstrapped {
        // No member has data: the StatefulSet takes the target size directly.
        p.phase = Phase::Bootstrapping;
        p.sts_replicas = target;
        for (&i, pvc) in &o.pvcs {
            if i >= target && i >= current && pod_absent(i) && !pvc.terminating {
                p.actions.push(Action::DeletePvc(i));
            }
        }
        if o.unclustered.contains(&0) && pod_running(0) {
            p.actions.push(Action::Bootstrap(0));
        } else if pod_running(0) {
            p.waiting.push(format!(
                "waiting for {} to answer its admin API",
                names.pod(0)
            ));
        } else {
            p.waiting
                .push(format!("waiting for pod {} to start", names.pod(0)));
        }
        return p;
    }

    let Some(cluster) = &o.cluster else {
        // Blind: only growing is safe.
        p.phase = Phase::Unobservable;
        p.sts_replicas = current.max(target);
        p.waiting
            .push("no member of the cluster answers the admin API".into());
        return p;
    };
    let status = |i: i32| cluster.status_of(&names.pod(i));
    let in_ring = |i: i32| matches!(status(i), Some("up" | "leaving"));

    // --- scale down: the highest ordinals leave first, the StatefulSet shrinks after.
    if current > target {
        p.phase = Phase::ScalingDown;
        let mut still_in_ring = Vec::new();
        for i in (target..current).rev() {
            match status(i) {
                Some("up") => {
                    p.actions.push(Action::Leave(i));
                    still_in_ring.push(i);
                }
                Some("leaving") => still_in_ring.push(i),
                _ => {}
            }
        }
        if !still_in_ring.is_empty() {
            let list: Vec<String> = still_in_ring.iter().map(|&i| names.pod(i)).collect();
            p.waiting.push(format!(
                "waiting for {} to hand off their partitions and leave",
                list.join(", ")
            ));
        } else if !cluster.settled() {
            let pending = cluster.handoffs.as_ref().map_or(0, |h| h.pending);
            p.waiting.push(format!(
                "waiting for the ring to settle ({pending} partitions pending) before shrinking"
            ));
        } else {
            p.sts_replicas = target;
        }
    } else {
        if target > current {
            p.phase = Phase::ScalingUp;
        }
        p.sts_replicas = target;
    }

    // --- members that should be in the ring.
    for i in 0..target {
        let id = names.pod(i);
        match status(i) {
            Some("up") => {
                if o.pvcs
                    .get(&i)
                    .is_some_and(|v| !v.holds_data && !v.terminating)
                {
                    p.actions.push(Action::MarkHoldsData(i));
                }
            }
            Some("leaving") => p.waiting.push(format!(
                "{id} is leaving; it will be re-added on a clean volume once removed"
            )),
            Some("removed")
                if o.pvcs.get(&i).is_some_and(|v| v.holds_data)
                    || o.pods.get(&i).is_some_and(|p| p.terminating) =>
            {
                // Its volume has data of a ring it left; deleted and tombstoned keys could
                // come back from it. Start it over.
                if o.pvcs.get(&i).is_some_and(|v| !v.terminating) {
                    p.actions.push(Action::Recycle(i));
                }
                p.waiting.push(format!(
                    "{id} left the ring earlier; restarting it on a clean volume"
                ));
            }
            _ if pod_running(i) => {
                p.actions.push(Action::Join(i));
                p.waiting.push(format!("{id} is joining the ring"));
                if p.phase == Phase::Stable {
                    p.phase = Phase::ScalingUp;
                }
            }
            _ => {
                p.waiting.push(format!("waiting for pod {id} to start"));
                if p.phase == Phase::Stable {
                    p.phase = Phase::ScalingUp;
                }
            }
        }
    }

    // --- claims of members that are gone for good.
    for (&i, pvc) in &o.pvcs {
        if i >= target && i >= current && pod_absent(i) && !pvc.terminating && !in_ring(i) {
            p.actions.push(Action::DeletePvc(i));
        }
    }

    // --- partitions still moving (after a join or a leave).
    if p.waiting.is_empty() && !cluster.settled() {
        let pending = cluster.handoffs.as_ref().map_or(0, |h| h.pending);
        p.waiting.push(format!(
            "waiting for handoffs to finish ({pending} partitions pending)"
        ));
        if p.phase == Phase::Stable {
            p.phase = Phase::Rebalancing;
        }
    }

    // --- rolling update, one member at a time.
    if p.actions.is_empty() && p.waiting.is_empty() && current <= target {
        let outdated: Vec<i32> = (0..target)
            .rev()
            .filter(|i| o.pods.get(i).is_some_and(|p| !p.updated))
            .collect();
        if let Some(&first) = outdated.first() {
            p.phase = Phase::RollingUpdate;
            let unhealthy = unhealthy_members(o, cluster, names, target);
            if o.pods.values().any(|p| p.terminating) {
                p.waiting
                    .push("rolling update: waiting for the restarted member to come back".into());
            } else if unhealthy.is_empty() && cluster.settled() {
                p.actions.push(Action::RestartForUpdate(first));
                p.waiting
                    .push(format!("rolling update: restarting {}", names.pod(first)));
            } else if unhealthy.len() == 1
                && outdated.contains(&unhealthy[0])
                && !o.pods.get(&unhealthy[0]).is_some_and(|p| p.ready)
            {
                // It is down already: replacing it costs no availability (and a broken
                // template is how it may have gone down).
                p.actions.push(Action::RestartForUpdate(unhealthy[0]));
                p.waiting.push(format!(
                    "rolling update: replacing unhealthy {}",
                    names.pod(unhealthy[0])
                ));
            } else {
                let list: Vec<String> = unhealthy.iter().map(|&i| names.pod(i)).collect();
                p.waiting.push(if list.is_empty() {
                    "rolling update: waiting for the ring to settle".into()
                } else {
                    format!(
                        "rolling update: waiting for {} to be up, ready and seen alive",
                        list.join(", ")
                    )
                });
            }
        }
    }
    p.actions.sort();
    p.actions.dedup();
    p
}

/// Desired members that are not up, ready and seen alive by every member that answered.
pub fn unhealthy_members(
    o: &Observed,
    cluster: &ClusterObs,
    names: &Names,
    target: i32,
) -> Vec<i32> {
    (0..target)
        .filter(|&i| {
            let id = names.pod(i);
            let pod_ok = o
                .pods
                .get(&i)
                .is_some_and(|p| p.running && p.ready && !p.terminating);
            let member_ok = cluster
                .members
                .get(&id)
                .is_some_and(|m| m.status == "up" && m.alive);
            let seen_by_all = cluster
                .views
                .values()
                .all(|v| v.get(&id).is_some_and(|m| m.status == "up" && m.alive));
            !(pod_ok && member_ok && seen_by_all)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::MemberInfo;

    fn names() -> Names {
        Names {
            cluster: "db".into(),
            namespace: "ns".into(),
        }
    }

    fn member(i: i32, status: &str, partitions: u32) -> MemberInfo {
        MemberInfo {
            id: format!("db-{i}"),
            status: status.into(),
            alive: true,
            partitions_owned: partitions,
            ..Default::default()
        }
    }

    fn running(ready: bool) -> PodObs {
        PodObs {
            running: true,
            ready,
            terminating: false,
            updated: true,
            problem: None,
        }
    }

    /// A settled cluster of `count` up members, with pods and claims.
    fn settled(count: i32, spec: i32) -> Observed {
        let members = MembersReport {
            member: "db-0".into(),
            claimant: Some("db-0".into()),
            view_version: 3,
            members: (0..count).map(|i| member(i, "up", 10)).collect(),
        };
        Observed {
            spec_replicas: spec,
            n: 3,
            sts_replicas: Some(count),
            pods: (0..count).map(|i| (i, running(true))).collect(),
            pvcs: (0..count)
                .map(|i| {
                    (
                        i,
                        PvcObs {
                            holds_data: true,
                            terminating: false,
                            pending_since: None,
                        },
                    )
                })
                .collect(),
            bootstrapped: true,
            cluster: Some(ClusterObs {
                source: "db-0".into(),
                views: BTreeMap::from([("db-0".to_string(), members.clone())]),
                members,
                ring: Some(RingReport {
                    epoch: 2,
                    base_epoch: 2,
                    ..Default::default()
                }),
                handoffs: Some(HandoffsReport {
                    epoch: 2,
                    base_epoch: 2,
                    ..Default::default()
                }),
            }),
            unclustered: BTreeSet::new(),
        }
    }

    fn set_status(o: &mut Observed, i: i32, status: &str, partitions: u32) {
        let c = o.cluster.as_mut().unwrap();
        c.members.members.retain(|m| m.id != format!("db-{i}"));
        c.members.members.push(member(i, status, partitions));
        c.views.insert("db-0".into(), c.members.clone());
    }

    fn unsettle(o: &mut Observed, pending: u64) {
        let c = o.cluster.as_mut().unwrap();
        c.handoffs = Some(HandoffsReport {
            in_transition: true,
            pending,
            ..Default::default()
        });
    }

    #[test]
    fn fresh_cluster_creates_pods_then_bootstraps_ordinal_zero() {
        let mut o = Observed {
            spec_replicas: 3,
            n: 3,
            ..Default::default()
        };
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 3);
        assert_eq!(p.phase, Phase::Bootstrapping);
        assert!(p.actions.is_empty());
        assert_eq!(p.waiting, vec!["waiting for pod db-0 to start"]);
        assert!(!p.bootstrapped);

        o.sts_replicas = Some(3);
        o.pods = (0..3).map(|i| (i, running(false))).collect();
        let p = plan(&o, &names());
        assert!(p.actions.is_empty(), "pod 0 has not answered yet");
        o.unclustered = BTreeSet::from([0, 1, 2]);
        let p = plan(&o, &names());
        assert_eq!(p.actions, vec![Action::Bootstrap(0)]);
    }

    #[test]
    fn after_bootstrap_the_others_join() {
        let mut o = settled(1, 3);
        o.sts_replicas = Some(3);
        o.pods.insert(1, running(false));
        o.pods.insert(2, PodObs::default());
        set_status(&mut o, 1, "joining", 0);
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 3);
        assert_eq!(p.actions, vec![Action::Join(1)]);
        assert_eq!(p.phase, Phase::ScalingUp);
        assert!(p.waiting.iter().any(|w| w.contains("db-2")));
    }

    #[test]
    fn steady_state_is_converged_and_idempotent() {
        let o = settled(3, 3);
        let p = plan(&o, &names());
        assert!(p.converged(), "{p:?}");
        assert_eq!(p.sts_replicas, 3);
        assert_eq!(plan(&o, &names()), p);
    }

    #[test]
    fn new_members_claims_are_marked_once_up() {
        let mut o = settled(3, 3);
        o.pvcs.get_mut(&2).unwrap().holds_data = false;
        assert_eq!(plan(&o, &names()).actions, vec![Action::MarkHoldsData(2)]);
    }

    #[test]
    fn scale_up_grows_the_statefulset_and_joins() {
        let mut o = settled(3, 5);
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 5);
        assert_eq!(p.phase, Phase::ScalingUp);
        o.sts_replicas = Some(5);
        o.pods.insert(3, running(false));
        o.pods.insert(4, running(false));
        let p = plan(&o, &names());
        assert_eq!(p.actions, vec![Action::Join(3), Action::Join(4)]);
    }

    #[test]
    fn scale_down_state_machine() {
        // 5 -> 3: ask 4 and 3 to leave, keep the StatefulSet at 5.
        let mut o = settled(5, 3);
        let p = plan(&o, &names());
        assert_eq!(p.phase, Phase::ScalingDown);
        assert_eq!(p.sts_replicas, 5);
        assert_eq!(p.actions, vec![Action::Leave(3), Action::Leave(4)]);

        // Leaving, handing off: wait, ask nothing again.
        set_status(&mut o, 3, "leaving", 10);
        set_status(&mut o, 4, "leaving", 10);
        unsettle(&mut o, 12);
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 5);
        assert!(p.actions.is_empty(), "{:?}", p.actions);

        // One is removed, the other still owns partitions: still 5.
        set_status(&mut o, 4, "removed", 0);
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 5);

        // Both removed but handoffs still pending: still 5.
        set_status(&mut o, 3, "removed", 0);
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 5, "never shrink before the ring settles");
        assert!(p.waiting[0].contains("12 partitions pending"));

        // Settled: shrink. Claims stay until the pods are gone.
        o.cluster.as_mut().unwrap().handoffs = Some(HandoffsReport::default());
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 3);
        assert!(p.actions.is_empty());

        // The StatefulSet shrank, pods terminate: claims still kept.
        o.sts_replicas = Some(3);
        o.pods.get_mut(&3).unwrap().terminating = true;
        o.pods.remove(&4);
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 3);
        assert_eq!(p.actions, vec![Action::DeletePvc(4)]);

        o.pods.remove(&3);
        let p = plan(&o, &names());
        assert_eq!(p.actions, vec![Action::DeletePvc(3), Action::DeletePvc(4)]);

        o.pvcs.remove(&3);
        o.pvcs.remove(&4);
        let p = plan(&o, &names());
        assert!(p.converged(), "{p:?}");
    }

    #[test]
    fn scale_down_never_shrinks_while_blind() {
        let mut o = settled(5, 3);
        o.cluster = None;
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 5);
        assert_eq!(p.phase, Phase::Unobservable);
        assert!(p.actions.is_empty());
        // Growing is still fine.
        o.spec_replicas = 7;
        assert_eq!(plan(&o, &names()).sts_replicas, 7);
    }

    #[test]
    fn claims_of_members_in_the_ring_are_never_deleted() {
        // Someone shrank the StatefulSet behind the operator's back: member 4 is still up.
        let mut o = settled(5, 4);
        o.sts_replicas = Some(4);
        o.pods.remove(&4);
        let p = plan(&o, &names());
        assert!(!p.actions.contains(&Action::DeletePvc(4)));
    }

    #[test]
    fn scale_below_n_is_refused() {
        let o = settled(3, 2);
        let p = plan(&o, &names());
        assert!(
            p.scale_refused
                .as_deref()
                .unwrap()
                .contains("below replication.n 3")
        );
        assert_eq!(p.sts_replicas, 3);
        assert!(p.actions.is_empty());
        let mut five = settled(5, 1);
        five.spec_replicas = 1;
        let p = plan(&five, &names());
        assert_eq!(p.sts_replicas, 5, "refused entirely, not clamped to n");
    }

    #[test]
    fn refused_leave_keeps_waiting() {
        let o = settled(4, 3);
        let p = plan(&o, &names());
        assert_eq!(p.actions, vec![Action::Leave(3)]);
        assert_eq!(p.sts_replicas, 4);
    }

    #[test]
    fn removed_member_wanted_again_is_recycled_then_joins() {
        // Scale-down 4 -> 3 finished leaving, then the user went back to 4 before the
        // StatefulSet shrank: db-3's volume holds data of a ring it left.
        let mut o = settled(4, 4);
        set_status(&mut o, 3, "removed", 0);
        let p = plan(&o, &names());
        assert_eq!(p.actions, vec![Action::Recycle(3)]);
        // Pod and claim deleted; the StatefulSet recreates both: a clean volume joins.
        o.pvcs.insert(
            3,
            PvcObs {
                holds_data: false,
                terminating: false,
                pending_since: None,
            },
        );
        o.pods.insert(3, running(false));
        let p = plan(&o, &names());
        assert_eq!(p.actions, vec![Action::Join(3)]);
    }

    #[test]
    fn re_added_ordinal_on_a_fresh_volume_joins() {
        // 5 -> 3 completed long ago (claims deleted); now 3 -> 4: db-3 is `removed` in the
        // view but runs on a new, empty volume.
        let mut o = settled(3, 4);
        set_status(&mut o, 3, "removed", 0);
        set_status(&mut o, 4, "removed", 0);
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 4);
        assert!(p.actions.is_empty());
        o.sts_replicas = Some(4);
        o.pods.insert(3, running(false));
        o.pvcs.insert(3, PvcObs::default());
        let p = plan(&o, &names());
        assert_eq!(p.actions, vec![Action::Join(3)]);
    }

    #[test]
    fn rolling_update_one_at_a_time_highest_first() {
        let mut o = settled(3, 3);
        for p in o.pods.values_mut() {
            p.updated = false;
        }
        let p = plan(&o, &names());
        assert_eq!(p.phase, Phase::RollingUpdate);
        assert_eq!(p.actions, vec![Action::RestartForUpdate(2)]);

        // db-2 restarting: nothing else happens.
        o.pods.get_mut(&2).unwrap().terminating = true;
        assert!(plan(&o, &names()).actions.is_empty());

        // Back, updated, but not yet seen alive by the others: wait.
        *o.pods.get_mut(&2).unwrap() = running(false);
        let c = o.cluster.as_mut().unwrap();
        c.members
            .members
            .iter_mut()
            .find(|m| m.id == "db-2")
            .unwrap()
            .alive = false;
        c.views.insert("db-0".into(), c.members.clone());
        let p = plan(&o, &names());
        assert!(p.actions.is_empty(), "{p:?}");
        assert!(p.waiting[0].contains("db-2"));

        // Healthy again: next one.
        *o.pods.get_mut(&2).unwrap() = running(true);
        set_status(&mut o, 2, "up", 10);
        assert_eq!(
            plan(&o, &names()).actions,
            vec![Action::RestartForUpdate(1)]
        );

        // A view where another member does not see db-1 alive blocks the step.
        let mut other = o.cluster.as_ref().unwrap().members.clone();
        other
            .members
            .iter_mut()
            .find(|m| m.id == "db-1")
            .unwrap()
            .alive = false;
        o.cluster
            .as_mut()
            .unwrap()
            .views
            .insert("db-2".into(), other);
        assert!(plan(&o, &names()).actions.is_empty());
    }

    #[test]
    fn rolling_update_waits_for_settled_ring() {
        let mut o = settled(3, 3);
        o.pods.get_mut(&0).unwrap().updated = false;
        unsettle(&mut o, 3);
        let p = plan(&o, &names());
        assert!(p.actions.is_empty());
        assert_eq!(p.phase, Phase::Rebalancing);
        assert!(p.waiting[0].contains("3 partitions pending"));
    }

    #[test]
    fn rolling_update_replaces_a_broken_outdated_member() {
        let mut o = settled(3, 3);
        for p in o.pods.values_mut() {
            p.updated = false;
        }
        o.pods.get_mut(&1).unwrap().ready = false; // crash-looping on the old template
        assert_eq!(
            plan(&o, &names()).actions,
            vec![Action::RestartForUpdate(1)]
        );
        o.pods.get_mut(&2).unwrap().ready = false; // two down: wait
        assert!(plan(&o, &names()).actions.is_empty());
    }

    #[test]
    fn unbootstrapped_cluster_resizes_freely_and_drops_empty_claims() {
        let mut o = Observed {
            spec_replicas: 3,
            n: 3,
            sts_replicas: Some(4),
            ..Default::default()
        };
        o.pods = (0..4).map(|i| (i, PodObs::default())).collect();
        o.pvcs = (0..4).map(|i| (i, PvcObs::default())).collect();
        let p = plan(&o, &names());
        assert_eq!(p.sts_replicas, 3);
        assert!(p.actions.is_empty(), "pod db-3 still exists");
        o.sts_replicas = Some(3);
        o.pods.remove(&3);
        assert_eq!(plan(&o, &names()).actions, vec![Action::DeletePvc(3)]);
    }

    #[test]
    fn data_on_a_claim_means_bootstrapped() {
        // Status lost, no member answers, but a volume holds data: never bootstrap again.
        let mut o = Observed {
            spec_replicas: 3,
            n: 3,
            sts_replicas: Some(3),
            ..Default::default()
        };
        o.pods = (0..3).map(|i| (i, running(false))).collect();
        o.pvcs.insert(
            1,
            PvcObs {
                holds_data: true,
                terminating: false,
                pending_since: None,
            },
        );
        o.unclustered = BTreeSet::from([0]);
        let p = plan(&o, &names());
        assert!(p.bootstrapped);
        assert!(!p.actions.contains(&Action::Bootstrap(0)));
    }
}
