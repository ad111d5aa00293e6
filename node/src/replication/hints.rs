//! Hinted handoff: delivering writes held for members that were unreachable.
//!
//! Every interval, for each member this one holds hints for: if gossip shows it alive, the
//! hints are sent to it and deleted once it confirms (a hint that changed meanwhile is
//! kept for the next round). A hint for a partition the member no longer replicates goes
//! to the partition's current replicas instead. Hints older than the tombstone grace
//! period are dropped: by then anti-entropy has spread their data, and delivering them
//! could resurrect a key whose tombstone has been reaped.

use std::sync::Arc;

use tokio::sync::watch;

use super::Replicator;
use super::coordinator::Shipment;
use crate::membership::MemberStatus;
use crate::ring::MemberId;
use crate::storage::Hint;

/// Hints sent per member per round.
const BATCH: usize = 256;

impl Replicator {
    pub async fn run_hint_delivery(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.hint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.deliver_hints_once().await;
        }
    }

    /// One delivery round over every member with hints. Returns hints delivered.
    pub async fn deliver_hints_once(&self) -> usize {
        let counts = self.store.hint_counts();
        self.metrics
            .hints_pending
            .set(counts.values().sum::<u64>() as i64);
        let mut delivered = 0;
        for target in counts.keys() {
            if !self.membership.is_alive(target)
                && self
                    .membership
                    .view()
                    .is_some_and(|v| v.status_of(target) != Some(MemberStatus::Removed))
            {
                continue;
            }
            let hints = match self.store.hints_for(target, BATCH) {
                Ok(h) => h,
                Err(e) => {
                    tracing::error!(peer = %target, error = %e, "reading hints failed");
                    continue;
                }
            };
            for hint in hints {
                if self.deliver_hint(target, &hint).await {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    async fn deliver_hint(&self, target: &MemberId, hint: &Hint) -> bool {
        let Some(view) = self.membership.view() else {
            return false;
        };
        let mode = view.settings.conflicts;
        let digest = hint.object.digest();
        let age_ms = self
            .env
            .clock
            .now_ms()
            .saturating_sub(hint.object.latest_timestamp_ms());
        if age_ms > self.config.tombstone_grace.as_millis() as u64 {
            if let Ok(true) = self
                .store
                .remove_hint(target, hint.partition, hint.key.clone(), digest)
                .await
            {
                self.metrics.hints_expired.inc();
                tracing::warn!(peer = %target, partition = hint.partition, "dropped a hint older than the tombstone grace period");
            }
            return false;
        }
        let shipment = Shipment {
            partition: hint.partition,
            key: &hint.key,
            object: &hint.object,
            mode,
        };
        let ok = if view.replicates(target, hint.partition) {
            self.replicate_to(target, shipment, None).await.is_ok()
        } else {
            // The ring moved on: hand the write to the partition's current replicas.
            let mut acks = 0;
            let sets = view.write_sets(hint.partition);
            let members: std::collections::BTreeSet<&MemberId> = sets.iter().flatten().collect();
            for m in &members {
                if self.membership.is_alive(m) && self.replicate_to(m, shipment, None).await.is_ok()
                {
                    acks += 1;
                }
            }
            acks >= view.settings.w.min(members.len())
        };
        if !ok {
            return false;
        }
        match self
            .store
            .remove_hint(target, hint.partition, hint.key.clone(), digest)
            .await
        {
            Ok(true) => {
                self.metrics.hints_delivered.inc();
                true
            }
            _ => false,
        }
    }
}
