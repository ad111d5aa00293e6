//! Failure detection from heartbeat arrivals.
//!
//! A member's heartbeat is its gossip version, bumped every gossip interval and spread by
//! gossip; each observer records when it sees a peer's version grow. The phi-accrual
//! detector (Hayashibara et al., as in Cassandra and Akka) turns the time since the last
//! arrival into a suspicion level `phi = -log10(P(a heartbeat this late))`, assuming
//! normally distributed inter-arrival times learned from the recent window; a peer is down
//! above the threshold. A failed connection attempt marks the peer down at once, until a
//! newer heartbeat arrives.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::FailureDetector as Config;

const WINDOW: usize = 100;

#[derive(Clone, Debug)]
pub struct Arrivals {
    last: Instant,
    intervals: VecDeque<f64>,
    /// Set when a connection to the peer failed after `last`.
    unreachable_since: Option<Instant>,
}

impl Arrivals {
    pub fn new(now: Instant) -> Self {
        Arrivals {
            last: now,
            intervals: VecDeque::with_capacity(WINDOW),
            unreachable_since: None,
        }
    }

    pub fn heartbeat(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.last).as_secs_f64();
        if gap > 0.0 {
            if self.intervals.len() == WINDOW {
                self.intervals.pop_front();
            }
            self.intervals.push_back(gap);
        }
        self.last = now;
        self.unreachable_since = None;
    }

    pub fn connection_failed(&mut self, now: Instant) {
        self.unreachable_since.get_or_insert(now);
    }

    pub fn last_heard(&self) -> Instant {
        self.last
    }

    /// Suspicion level now; `expected_interval` seeds the estimate before enough samples.
    pub fn phi(&self, now: Instant, expected_interval: Duration, min_std_dev: Duration) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let (mean, std_dev) = if self.intervals.len() < 3 {
            (
                expected_interval.as_secs_f64(),
                expected_interval.as_secs_f64() / 2.0,
            )
        } else {
            let n = self.intervals.len() as f64;
            let mean = self.intervals.iter().sum::<f64>() / n;
            let var = self
                .intervals
                .iter()
                .map(|x| (x - mean) * (x - mean))
                .sum::<f64>()
                / n;
            (mean, var.sqrt())
        };
        let std_dev = std_dev.max(min_std_dev.as_secs_f64());
        phi_normal(elapsed, mean, std_dev)
    }

    pub fn is_alive(&self, now: Instant, config: &Config, expected_interval: Duration) -> bool {
        if self.unreachable_since.is_some() {
            return false;
        }
        let silence = now.saturating_duration_since(self.last);
        match config {
            Config::Timeout { after } => silence < *after,
            Config::PhiAccrual {
                threshold,
                min_std_dev,
                max_silence,
            } => {
                silence < *max_silence
                    && self.phi(now, expected_interval, *min_std_dev) < *threshold
            }
        }
    }
}

/// `-log10(1 - CDF(t))` for a normal distribution, using the logistic approximation of the
/// CDF (as Akka does), which stays finite far into the tail.
fn phi_normal(t: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (t - mean) / std_dev;
    // ln of e = exp(-y (1.5976 + 0.070566 y^2)), kept in log space so the far tail does
    // not underflow to an infinite phi.
    let ln_e = -y * (1.5976 + 0.070566 * y * y);
    // P(later than t) = 1 - CDF = e / (1 + e); phi = -log10 of it.
    (ln_1p_exp(ln_e) - ln_e) / std::f64::consts::LN_10
}

/// ln(1 + exp(x)) without overflow.
fn ln_1p_exp(x: f64) -> f64 {
    if x > 30.0 { x } else { x.exp().ln_1p() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        Config::PhiAccrual {
            threshold: 8.0,
            min_std_dev: Duration::from_millis(200),
            max_silence: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn regular_heartbeats_stay_alive_and_silence_turns_down() {
        let mut a = Arrivals::new(Instant::now());
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(1)).await;
            a.heartbeat(Instant::now());
        }
        let interval = Duration::from_secs(1);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(a.is_alive(Instant::now(), &cfg(), interval));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(
            !a.is_alive(Instant::now(), &cfg(), interval),
            "phi = {}",
            a.phi(Instant::now(), interval, Duration::from_millis(200))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn connection_failure_is_down_until_next_heartbeat() {
        let mut a = Arrivals::new(Instant::now());
        a.connection_failed(Instant::now());
        assert!(!a.is_alive(Instant::now(), &cfg(), Duration::from_secs(1)));
        a.heartbeat(Instant::now());
        assert!(a.is_alive(Instant::now(), &cfg(), Duration::from_secs(1)));
    }

    #[test]
    fn phi_grows_with_lateness() {
        let early = phi_normal(0.5, 1.0, 0.2);
        let on_time = phi_normal(1.0, 1.0, 0.2);
        let late = phi_normal(2.0, 1.0, 0.2);
        assert!(early < on_time && on_time < late);
        assert!((on_time - 0.301).abs() < 0.01);
        assert!(phi_normal(100.0, 1.0, 0.2).is_finite());
    }
}
