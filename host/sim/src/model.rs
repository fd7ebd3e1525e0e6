//! The simulator's latency model, each part small and deterministic:
//!
//! - the tokenizer the picker shares (`infergate_serving::prompt`): a token
//!   is four bytes of the prompt, a block [`BLOCK_TOKENS`] tokens, block
//!   hashes chained so that prompts share them as far as they share a
//!   prefix;
//! - a prefix cache of block hashes with a capacity in blocks and LRU
//!   eviction: a prompt's leading blocks found there need no prefill;
//! - loaded LoRA adapters, at most so many, least recently used unloaded;
//! - latency histograms in Prometheus' text format;
//! - Gaussian jitter from a seeded generator.

use std::collections::BTreeMap;
use std::time::Duration;

pub use infergate_serving::prompt::{
    BLOCK_TOKENS, BlockCache as PrefixCache, TOKEN_BYTES, block_hashes, count_tokens,
};

/// The LoRA adapters loaded, at most `capacity`, least recently used
/// unloaded first.
#[derive(Debug, Default)]
pub struct LoadedAdapters {
    capacity: usize,
    tick: u64,
    loaded: BTreeMap<String, u64>,
}

impl LoadedAdapters {
    pub fn new(capacity: usize) -> Self {
        LoadedAdapters {
            capacity: capacity.max(1),
            ..Default::default()
        }
    }

    /// Use `adapter`: true if it had to be loaded.
    pub fn use_adapter(&mut self, adapter: &str) -> bool {
        self.tick += 1;
        let fresh = self.loaded.insert(adapter.to_string(), self.tick).is_none();
        while self.loaded.len() > self.capacity {
            let oldest = self
                .loaded
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(a, _)| a.clone())
                .expect("not empty");
            self.loaded.remove(&oldest);
        }
        fresh
    }

    pub fn loaded(&self) -> Vec<String> {
        self.loaded.keys().cloned().collect()
    }
}

/// A Prometheus histogram of seconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// vLLM's time-to-first-token buckets.
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's inter-token latency buckets.
pub const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's request-latency buckets (queue time, end to end).
pub const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&mut self.counts) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The histogram's lines (buckets are cumulative, as Prometheus wants).
    pub fn render(&self, name: &str, help: &str, labels: &str) -> String {
        let mut out = format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            out.push_str(&format!(
                "{name}_bucket{{{labels},le=\"{bound}\"}} {count}\n"
            ));
        }
        out.push_str(&format!(
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}\n{name}_sum{{{labels}}} {}\n{name}_count{{{labels}}} {}\n",
            self.count, self.sum, self.count
        ));
        out
    }
}

/// A seeded generator (xorshift64*) with Gaussian samples (Box-Muller):
/// the same seed gives the same jitter.
#[derive(Debug)]
pub struct Jitter {
    state: u64,
    /// Standard deviation as a fraction of the value jittered.
    fraction: f64,
}

impl Jitter {
    pub fn new(seed: u64, fraction: f64) -> Self {
        Jitter {
            // Zero is xorshift's one fixed point.
            state: seed.wrapping_mul(0x9E3779B97F4A7C15) | 1,
            fraction: fraction.max(0.0),
        }
    }

    fn next_unit(&mut self) -> f64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let x = self.state.wrapping_mul(0x2545F4914F6CDD1D);
        // 53 bits in (0, 1].
        ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// `value` with Gaussian noise (standard deviation `fraction` of it),
    /// never below zero.
    pub fn apply(&mut self, value: Duration) -> Duration {
        if self.fraction == 0.0 || value.is_zero() {
            return value;
        }
        let (u1, u2) = (self.next_unit(), self.next_unit());
        let gaussian = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let factor = (1.0 + self.fraction * gaussian).max(0.0);
        value.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapters_beyond_the_limit_unload_the_least_recently_used() {
        let mut loras = LoadedAdapters::new(2);
        assert!(loras.use_adapter("a"));
        assert!(loras.use_adapter("b"));
        assert!(!loras.use_adapter("a"));
        assert!(loras.use_adapter("c")); // b goes
        assert_eq!(loras.loaded(), ["a", "c"]);
        assert!(loras.use_adapter("b"));
    }

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let text = h.render("x", "help", "m=\"a\"");
        assert!(text.contains("x_bucket{m=\"a\",le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("x_bucket{m=\"a\",le=\"1\"} 2\n"), "{text}");
        assert!(text.contains("x_bucket{m=\"a\",le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("x_count{m=\"a\"} 3\n"), "{text}");
    }

    #[test]
    fn jitter_is_gaussian_around_the_value_and_repeats_with_its_seed() {
        let base = Duration::from_millis(100);
        let samples = |seed| {
            let mut j = Jitter::new(seed, 0.1);
            (0..2000)
                .map(|_| j.apply(base).as_secs_f64())
                .collect::<Vec<_>>()
        };
        let a = samples(7);
        assert_eq!(a, samples(7));
        assert_ne!(a, samples(8));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let sd = (a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
        assert!((mean - 0.1).abs() < 0.002, "mean {mean}");
        assert!((sd - 0.01).abs() < 0.002, "standard deviation {sd}");
        assert_eq!(Jitter::new(1, 0.0).apply(base), base);
    }
}
