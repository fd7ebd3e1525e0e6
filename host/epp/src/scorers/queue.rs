//! Queue depth: the requests waiting at the model server
//! (`vllm:num_requests_waiting`) plus the picks sent there since its last
//! scrape. The shortest queue among the candidates scores 1, the longest 0
//! when it is [`SPREAD`] or more longer.

/// A queue this much longer than the shortest scores 0; a smaller
/// difference scores in proportion.
pub const SPREAD: f64 = 4.0;

/// `queued` of this candidate; `shortest` and `longest` among the candidates.
pub fn score(queued: f64, shortest: f64, longest: f64) -> f64 {
    super::lower_is_better(queued, shortest, longest, SPREAD)
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn the_shortest_queue_scores_highest() {
        assert_eq!(score(0.0, 0.0, 8.0), 1.0);
        assert_eq!(score(8.0, 0.0, 8.0), 0.0);
        assert!(score(2.0, 0.0, 8.0) > score(6.0, 0.0, 8.0));
        assert_eq!(score(4.0, 4.0, 4.0), 1.0, "equal queues do not decide");
        assert_eq!(
            score(1.0, 0.0, 1.0),
            0.75,
            "one request more is a small difference"
        );
    }
}
