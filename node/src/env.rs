//! What a member takes from its surroundings: the network, the wall clock and randomness.
//! Production uses TCP, the system clock and an OS-seeded generator; the deterministic
//! simulation substitutes a simulated network and clock and a fixed seed, and the same
//! node code runs unchanged.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::rpc::transport::{Network, TcpNetwork};

pub trait WallClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

pub type SharedRng = Arc<Mutex<ChaCha8Rng>>;

#[derive(Clone)]
pub struct Env {
    pub network: Arc<dyn Network>,
    pub clock: Arc<dyn WallClock>,
    pub rng: SharedRng,
}

impl Env {
    /// Real network and clock; randomness seeded from `seed`, or from the OS when 0.
    pub fn production(seed: u64) -> Env {
        let rng = if seed == 0 {
            ChaCha8Rng::from_os_rng()
        } else {
            ChaCha8Rng::seed_from_u64(seed)
        };
        Env {
            network: Arc::new(TcpNetwork),
            clock: Arc::new(SystemClock),
            rng: Arc::new(Mutex::new(rng)),
        }
    }

    pub fn random_u64(&self) -> u64 {
        use rand::RngCore;
        self.rng.lock().next_u64()
    }

    pub fn random_bytes<const N: usize>(&self) -> [u8; N] {
        use rand::RngCore;
        let mut b = [0u8; N];
        self.rng.lock().fill_bytes(&mut b);
        b
    }
}
