//! Approximate prefix-cache affinity. The picker remembers, per endpoint,
//! the hashes of the prompt blocks it sent there (16 tokens each, chained:
//! `infergate_serving::prompt`; bounded, least recently used first out). A
//! prompt whose leading blocks went to an endpoint is likely still in that
//! server's prefix cache: it scores the share of the prompt's blocks found
//! there, unless that endpoint's queue is longer than `max_queue` (a cached
//! prefix is not worth waiting behind a long queue).

/// `cached`: the prompt's leading blocks remembered for this endpoint, of
/// `blocks` in the prompt; `queued` there.
pub fn score(cached: usize, blocks: usize, queued: f64, max_queue: f64) -> f64 {
    if blocks == 0 || queued > max_queue {
        return 0.0;
    }
    (cached.min(blocks) as f64) / (blocks as f64)
}

#[cfg(test)]
mod tests {
    use super::score;

    #[test]
    fn the_share_of_leading_blocks_cached_there() {
        assert_eq!(score(10, 10, 0.0, 8.0), 1.0);
        assert_eq!(score(5, 10, 0.0, 8.0), 0.5);
        assert_eq!(score(0, 10, 0.0, 8.0), 0.0);
        assert_eq!(score(0, 0, 0.0, 8.0), 0.0, "no prompt, no affinity");
    }

    #[test]
    fn an_overloaded_endpoint_earns_no_affinity() {
        assert_eq!(score(10, 10, 8.0, 8.0), 1.0, "at the limit still counts");
        assert_eq!(score(10, 10, 9.0, 8.0), 0.0);
    }
}
