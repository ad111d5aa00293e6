//! Key choice: uniform, or YCSB's scrambled zipfian (popularity by rank follows a zipf law
//! with exponent 0.99, and ranks are scattered over the key space by a hash so the hottest
//! keys do not sit next to each other).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::Distribution;

const ZIPF_EXPONENT: f64 = 0.99;

pub struct KeyChooser {
    records: u64,
    /// Cumulative weights by rank (zipfian only).
    cdf: Vec<f64>,
}

impl KeyChooser {
    pub fn new(distribution: Distribution, records: u64) -> KeyChooser {
        let records = records.max(1);
        let cdf = match distribution {
            Distribution::Uniform => Vec::new(),
            Distribution::Zipfian => {
                let mut acc = 0.0;
                let mut cdf = Vec::with_capacity(records as usize);
                for rank in 1..=records {
                    acc += 1.0 / (rank as f64).powf(ZIPF_EXPONENT);
                    cdf.push(acc);
                }
                cdf
            }
        };
        KeyChooser { records, cdf }
    }

    /// The next record index, in `0..records`.
    pub fn next(&self, rng: &mut ChaCha8Rng) -> u64 {
        if self.cdf.is_empty() {
            return rng.random_range(0..self.records);
        }
        let total = self.cdf[self.cdf.len() - 1];
        let x = rng.random_range(0.0..total);
        let rank = self.cdf.partition_point(|&c| c < x) as u64;
        // Scatter ranks so popular records are not adjacent.
        xxhash_rust::xxh3::xxh3_64(&rank.to_le_bytes()) % self.records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn zipfian_is_skewed_and_uniform_is_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let z = KeyChooser::new(Distribution::Zipfian, 10_000);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..100_000 {
            counts[z.next(&mut rng) as usize] += 1;
        }
        let max = *counts.iter().max().unwrap();
        assert!(max > 3_000, "the hottest key gets a large share: {max}");
        let u = KeyChooser::new(Distribution::Uniform, 10_000);
        let mut counts = vec![0u32; 10_000];
        for _ in 0..100_000 {
            counts[u.next(&mut rng) as usize] += 1;
        }
        assert!(*counts.iter().max().unwrap() < 40);
    }
}
