//! The cluster view: who is in the cluster, with what status, and the live ring versions.
//! Only the claimant writes a new view; gossip spreads it and every member adopts the view
//! with the highest version. Everything here is pure.
//!
//! A view holds one ring, or two while ownership moves: the *base* ring (whose replicas
//! hold all data) and the *target* ring (being filled by handoff). Writes need their quorum
//! in the replica sets of both, reads go to the base ring's replicas until the target is
//! complete, then the base is retired. A further change while a move is in flight replaces
//! the target (planned from it), never the base, so there are never more than two.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::ClusterSettings;
use crate::ring::planner::{self, PlanConfig, PlanError};
use crate::ring::{MemberId, PartitionId, Ring, RingMember};

/// What [`ClusterView::base`] and [`ClusterView::current`] answer for a view without
/// rings (one that failed [`ClusterView::validate`] and is never adopted).
static NO_RING: Ring = Ring::EMPTY;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Owns (or is receiving) partitions and serves requests.
    Up,
    /// Decommissioning: hands its partitions to others, serving until it is done.
    Leaving,
    /// Has handed everything off and is no longer part of the cluster.
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewMember {
    pub status: MemberStatus,
    pub weight: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub version: u64,
    /// The claimant that wrote this version.
    pub author: MemberId,
    pub settings: ClusterSettings,
    pub members: BTreeMap<MemberId, ViewMember>,
    /// Live rings, oldest first: `[base]` or `[base, target]`.
    pub rings: Vec<Ring>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ViewError {
    #[error("{member} is not a member of the cluster")]
    NotMember { member: MemberId },
    #[error("{member} is already leaving or removed")]
    AlreadyLeaving { member: MemberId },
    #[error("removing {leaving} member(s) would leave {remaining} member(s), fewer than N = {n}")]
    BelowReplicationFactor {
        leaving: usize,
        remaining: usize,
        n: usize,
    },
    #[error("planning failed: {0}")]
    Plan(#[from] PlanError),
    #[error("the view is malformed: {0}")]
    Malformed(String),
}

/// A pull a member must complete before the target ring is usable: partition `partition`
/// is new to it; `preferred` is the old replica paired with it (the one whose copy it
/// replaces), `sources` every old replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullDuty {
    pub partition: PartitionId,
    pub preferred: Option<MemberId>,
    pub sources: Vec<MemberId>,
}

impl ClusterView {
    /// A new cluster with `me` as its only member.
    pub fn bootstrap(
        me: &MemberId,
        weight: u32,
        settings: ClusterSettings,
        seed: u64,
    ) -> Result<ClusterView, ViewError> {
        let members = [RingMember {
            id: me.clone(),
            weight,
        }];
        let ring = planner::plan_initial(
            &members,
            settings.partitions,
            &PlanConfig {
                n: settings.n,
                seed,
            },
        )?;
        Ok(ClusterView {
            version: 1,
            author: me.clone(),
            settings,
            members: BTreeMap::from([(
                me.clone(),
                ViewMember {
                    status: MemberStatus::Up,
                    weight,
                },
            )]),
            rings: vec![ring],
        })
    }

    /// Checks a view received from the network.
    pub fn validate(&self) -> Result<(), ViewError> {
        self.settings
            .validate()
            .map_err(|e| ViewError::Malformed(e.to_string()))?;
        if self.rings.is_empty() || self.rings.len() > 2 {
            return Err(ViewError::Malformed(format!(
                "{} live rings",
                self.rings.len()
            )));
        }
        for ring in &self.rings {
            if ring.partition_count() != self.settings.partitions {
                return Err(ViewError::Malformed(
                    "ring size differs from the settings".into(),
                ));
            }
            if let Some(m) = ring.member_ids().find(|m| !self.members.contains_key(*m)) {
                return Err(ViewError::Malformed(format!(
                    "ring member {m} missing from the view"
                )));
            }
        }
        Ok(())
    }

    pub fn base(&self) -> &Ring {
        self.rings.first().unwrap_or(&NO_RING)
    }

    /// The newest ring: where partitions are going.
    pub fn current(&self) -> &Ring {
        self.rings.last().unwrap_or(&NO_RING)
    }

    pub fn in_transition(&self) -> bool {
        self.rings.len() > 1
    }

    pub fn status_of(&self, id: &MemberId) -> Option<MemberStatus> {
        self.members.get(id).map(|m| m.status)
    }

    /// Members that are part of the cluster (not removed).
    pub fn active_members(&self) -> impl Iterator<Item = &MemberId> {
        self.members
            .iter()
            .filter(|(_, m)| m.status != MemberStatus::Removed)
            .map(|(id, _)| id)
    }

    /// Whether `self` supersedes `other`: a higher version, or at equal versions (two
    /// claimants during a partition) the one written by the lower id.
    pub fn supersedes(&self, other: &ClusterView) -> bool {
        (self.version, std::cmp::Reverse(&self.author))
            > (other.version, std::cmp::Reverse(&other.author))
    }

    /// The member allowed to change the view: the lowest-id member that is up and alive.
    pub fn claimant(&self, alive: impl Fn(&MemberId) -> bool) -> Option<MemberId> {
        self.members
            .iter()
            .find(|(id, m)| m.status == MemberStatus::Up && alive(id))
            .map(|(id, _)| id.clone())
    }

    /// Replica sets a write must reach a quorum in: one per live ring.
    pub fn write_sets(&self, p: PartitionId) -> Vec<Vec<MemberId>> {
        let mut sets: Vec<Vec<MemberId>> = self
            .rings
            .iter()
            .map(|r| r.primaries(p, self.settings.n))
            .collect();
        sets.dedup();
        sets
    }

    /// Replicas of the base ring (complete even mid-move): those anti-entropy compares.
    pub fn read_set(&self, p: PartitionId) -> Vec<MemberId> {
        self.base().primaries(p, self.settings.n)
    }

    /// Replicas of `p` in the live ring of epoch `epoch`, the base ring's if none has it.
    pub fn read_set_at(&self, p: PartitionId, epoch: u64) -> Vec<MemberId> {
        let ring = self
            .rings
            .iter()
            .find(|r| r.epoch == epoch)
            .unwrap_or_else(|| self.base());
        ring.primaries(p, self.settings.n)
    }

    /// Members that receive partitions in the target ring (none when not in transition).
    pub fn receivers(&self) -> impl Iterator<Item = &MemberId> {
        self.current()
            .member_ids()
            .filter(|m| !self.pull_duties(m).is_empty())
    }

    /// Whether `id` holds a replica of `p` in any live ring.
    pub fn replicates(&self, id: &MemberId, p: PartitionId) -> bool {
        self.rings
            .iter()
            .any(|r| r.is_primary(p, self.settings.n, id))
    }

    /// Next view with `joins` added and `leaves` decommissioned, planned from the current
    /// ring. The base ring stays; the result's target replaces any earlier target.
    pub fn with_changes(
        &self,
        joins: &[(MemberId, u32)],
        leaves: &[MemberId],
        author: &MemberId,
        seed: u64,
    ) -> Result<ClusterView, ViewError> {
        let mut members = self.members.clone();
        for id in leaves {
            match members.get(id).map(|m| m.status) {
                None => return Err(ViewError::NotMember { member: id.clone() }),
                Some(MemberStatus::Leaving | MemberStatus::Removed) => {
                    return Err(ViewError::AlreadyLeaving { member: id.clone() });
                }
                Some(MemberStatus::Up) => {}
            }
        }
        for (id, weight) in joins {
            members.insert(
                id.clone(),
                ViewMember {
                    status: MemberStatus::Up,
                    weight: *weight,
                },
            );
        }
        for id in leaves {
            if let Some(m) = members.get_mut(id) {
                m.status = MemberStatus::Leaving;
            }
        }
        let remaining = members
            .values()
            .filter(|m| m.status == MemberStatus::Up)
            .count();
        if !leaves.is_empty() && remaining < self.settings.n {
            return Err(ViewError::BelowReplicationFactor {
                leaving: leaves.len(),
                remaining,
                n: self.settings.n,
            });
        }
        let cfg = PlanConfig {
            n: self.settings.n,
            seed,
        };
        let mut ring = self.current().clone();
        for (id, weight) in joins {
            if ring.contains(id) {
                continue;
            }
            ring = planner::plan_join(
                &ring,
                RingMember {
                    id: id.clone(),
                    weight: *weight,
                },
                &cfg,
            )?
            .ring;
        }
        for id in leaves {
            if ring.contains(id) {
                ring = planner::plan_leave(&ring, id, &cfg)?.ring;
            }
        }
        let ring = ring.with_epoch(self.current().epoch + 1);
        let mut rings = vec![self.base().clone()];
        if ring.owners() != self.base().owners() {
            rings.push(ring);
        } else {
            // Nothing moves (e.g. a join undone by a leave): the plan is the base itself.
            rings[0] = ring;
        }
        let mut next = ClusterView {
            version: self.version + 1,
            author: author.clone(),
            settings: self.settings.clone(),
            members,
            rings,
        };
        next.mark_removed();
        Ok(next)
    }

    /// If every member that receives partitions in the target ring has finished its pulls
    /// (`synced(m) >= target epoch`), the next view with the base retired.
    pub fn retire_if_synced(
        &self,
        synced: impl Fn(&MemberId) -> u64,
        author: &MemberId,
    ) -> Option<ClusterView> {
        if !self.in_transition() {
            return None;
        }
        let target = self.current();
        if self.receivers().any(|m| synced(m) < target.epoch) {
            return None;
        }
        let mut next = self.clone();
        next.version += 1;
        next.author = author.clone();
        next.rings = vec![target.clone()];
        next.mark_removed();
        Some(next)
    }

    /// Leaving members that own nothing in any live ring are done.
    fn mark_removed(&mut self) {
        let rings = &self.rings;
        for (id, m) in self.members.iter_mut() {
            if m.status == MemberStatus::Leaving && !rings.iter().any(|r| r.contains(id)) {
                m.status = MemberStatus::Removed;
            }
        }
    }

    /// The partitions `me` must pull before the target ring can replace the base.
    pub fn pull_duties(&self, me: &MemberId) -> Vec<PullDuty> {
        if !self.in_transition() {
            return Vec::new();
        }
        let (base, target, n) = (self.base(), self.current(), self.settings.n);
        let mut duties = Vec::new();
        for p in 0..target.partition_count() {
            let new = target.primaries(p, n);
            if !new.contains(me) {
                continue;
            }
            let old = base.primaries(p, n);
            if old.contains(me) {
                continue;
            }
            // Pair the replicas leaving this partition's set with those joining it, in walk
            // order: each joiner takes over one leaver's copy, so every write held by W old
            // replicas is held by W new ones once all pulls are done.
            let leavers: Vec<&MemberId> = old.iter().filter(|m| !new.contains(m)).collect();
            let joiners: Vec<&MemberId> = new.iter().filter(|m| !old.contains(m)).collect();
            let preferred = joiners
                .iter()
                .position(|j| *j == me)
                .and_then(|i| leavers.get(i))
                .map(|m| (*m).clone());
            duties.push(PullDuty {
                partition: p,
                preferred,
                sources: old,
            });
        }
        duties
    }

    /// Partitions this member holds data for but replicates in no live ring.
    pub fn orphaned_partitions<'a>(
        &self,
        me: &MemberId,
        held: impl Iterator<Item = &'a PartitionId>,
    ) -> Vec<PartitionId> {
        held.copied().filter(|&p| !self.replicates(me, p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClusterSettings {
        ClusterSettings {
            partitions: 64,
            ..Default::default()
        }
    }

    /// A view without rings (decoded from a damaged disk or a hostile peer) is refused by
    /// `validate`, and asking it for its rings answers an empty one instead of panicking.
    #[test]
    fn a_view_without_rings_is_invalid_and_does_not_panic() {
        let mut v = cluster(&["a"]);
        v.rings.clear();
        assert!(matches!(v.validate(), Err(ViewError::Malformed(_))));
        assert_eq!(v.base().partition_count(), 0);
        assert_eq!(v.current().members().len(), 0);
        assert!(!v.in_transition());
        assert!(v.base().walk(3).is_empty());
    }

    fn cluster(ids: &[&str]) -> ClusterView {
        let mut v = ClusterView::bootstrap(&ids[0].into(), 1, settings(), 1).unwrap();
        for id in &ids[1..] {
            v = v
                .with_changes(&[((*id).into(), 1)], &[], &ids[0].into(), 1)
                .unwrap();
            v = v
                .retire_if_synced(|_| u64::MAX, &ids[0].into())
                .unwrap_or(v);
        }
        v
    }

    #[test]
    fn join_creates_target_and_duties_then_retires() {
        let v = cluster(&["a", "b", "c"]);
        assert!(!v.in_transition());
        let v2 = v
            .with_changes(&[("d".into(), 1)], &[], &"a".into(), 7)
            .unwrap();
        assert!(v2.in_transition());
        assert_eq!(v2.version, v.version + 1);
        let duties = v2.pull_duties(&"d".into());
        assert!(!duties.is_empty());
        for d in &duties {
            assert_eq!(d.sources.len(), 3);
            assert!(
                d.preferred.is_some(),
                "a 4th member replaces exactly one replica per partition"
            );
        }
        // Not retired until d has synced.
        assert!(
            v2.retire_if_synced(
                |m| if m.as_str() == "d" { 0 } else { u64::MAX },
                &"a".into()
            )
            .is_none()
        );
        let v3 = v2
            .retire_if_synced(|_| v2.current().epoch, &"a".into())
            .unwrap();
        assert!(!v3.in_transition());
        assert_eq!(v3.base().epoch, v2.current().epoch);
        // During the move a write needs both replica sets; reads use the base.
        let p = duties[0].partition;
        assert_eq!(v2.write_sets(p).len(), 2);
        assert_eq!(v2.read_set(p), v.base().primaries(p, 3));
    }

    #[test]
    fn leave_is_refused_below_n_and_completes_with_removal() {
        let v = cluster(&["a", "b", "c"]);
        let err = v
            .with_changes(&[], &["c".into()], &"a".into(), 1)
            .unwrap_err();
        assert_eq!(
            err,
            ViewError::BelowReplicationFactor {
                leaving: 1,
                remaining: 2,
                n: 3
            }
        );
        let v4 = cluster(&["a", "b", "c", "d"]);
        let leaving = v4.with_changes(&[], &["d".into()], &"a".into(), 1).unwrap();
        assert_eq!(leaving.status_of(&"d".into()), Some(MemberStatus::Leaving));
        assert!(!leaving.current().contains(&"d".into()));
        let done = leaving.retire_if_synced(|_| u64::MAX, &"a".into()).unwrap();
        assert_eq!(done.status_of(&"d".into()), Some(MemberStatus::Removed));
        assert_eq!(
            done.with_changes(&[], &["d".into()], &"a".into(), 1)
                .unwrap_err(),
            ViewError::AlreadyLeaving { member: "d".into() }
        );
    }

    #[test]
    fn claimant_is_lowest_live_up_member_and_ties_prefer_lower_author() {
        let v = cluster(&["a", "b", "c"]);
        assert_eq!(v.claimant(|_| true), Some("a".into()));
        assert_eq!(v.claimant(|m| m.as_str() != "a"), Some("b".into()));
        let mut other = v.clone();
        other.author = "b".into();
        let mut mine = v.clone();
        mine.author = "a".into();
        assert!(mine.supersedes(&other));
        assert!(!other.supersedes(&mine));
    }

    #[test]
    fn superseding_target_keeps_the_base() {
        let v = cluster(&["a", "b", "c", "d"]);
        let t1 = v
            .with_changes(&[("e".into(), 1)], &[], &"a".into(), 1)
            .unwrap();
        let t2 = t1
            .with_changes(&[("f".into(), 1)], &[], &"a".into(), 1)
            .unwrap();
        assert_eq!(t2.rings.len(), 2);
        assert_eq!(t2.base(), v.base());
        assert!(t2.current().contains(&"e".into()) && t2.current().contains(&"f".into()));
        assert!(t2.validate().is_ok());
    }
}
