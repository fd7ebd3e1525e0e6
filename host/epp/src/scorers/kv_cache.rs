//! KV-cache use (`vllm:kv_cache_usage_perc`, 0..1): the emptier the cache,
//! the more room for this request's tokens without preempting others.

pub fn score(usage: f64) -> f64 {
    if usage.is_finite() {
        1.0 - usage.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn an_empty_cache_scores_one_a_full_one_zero() {
        assert_eq!(score(0.0), 1.0);
        assert_eq!(score(1.0), 0.0);
        assert_eq!(score(0.25), 0.75);
        assert_eq!(score(1.7), 0.0, "over 100% is full");
        assert_eq!(score(f64::NAN), 0.0, "a nonsense figure earns nothing");
    }
}
