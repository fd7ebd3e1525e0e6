//! Running requests: the requests the model server is decoding
//! (`vllm:num_requests_running`). A fuller batch decodes every one of its
//! requests more slowly, so among servers with equal queues the one running
//! fewest scores 1, the one running most 0 (when it runs [`SPREAD`] or more
//! more).

/// A batch this much fuller than the emptiest scores 0; a smaller
/// difference scores in proportion.
pub const SPREAD: f64 = 4.0;

/// `running` on this candidate; `fewest` and `most` among the candidates.
pub fn score(running: f64, fewest: f64, most: f64) -> f64 {
    super::lower_is_better(running, fewest, most, SPREAD)
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn the_emptiest_batch_scores_highest() {
        assert_eq!(score(1.0, 1.0, 9.0), 1.0);
        assert_eq!(score(9.0, 1.0, 9.0), 0.0);
        assert!(score(3.0, 1.0, 9.0) > score(7.0, 1.0, 9.0));
        assert_eq!(score(5.0, 5.0, 5.0), 1.0);
        assert_eq!(score(2.0, 1.0, 2.0), 0.75);
    }
}
