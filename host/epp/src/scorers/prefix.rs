//! Approximate prefix-cache affinity. The picker remembers, per endpoint,
//! the hashes of the prompt blocks it sent there (16 tokens each, chained:
//! `infergate_serving::prompt`; bounded, least recently used first out). A
//! prompt whose leading blocks went to an endpoint is likely still in that
//! server's prefix cache: it scores the share of the prompt's blocks found
//! there, unless that endpoint's queue is longer than the shortest
//! candidate's by more than `max_extra_queue` (a cached prefix is not worth
//! waiting behind a much longer queue than elsewhere).
//!
//! The limit is relative on purpose: when every server is busy, every queue
//! is long, and dropping the affinity then would send each prompt wherever
//! a queue is a little shorter, prefilling its prefix again on every server
//! and losing the capacity the cache gave just when it is needed. A prompt
//! group that outgrows its server spills to the least loaded one, which
//! then holds the prefix too: popular prefixes end up on as many servers as
//! their load needs.

/// `cached`: the prompt's leading blocks remembered for this endpoint, of
/// `blocks` in the prompt; `extra_queue`: how many more requests are queued
/// there than at the candidate with the shortest queue.
pub fn score(cached: usize, blocks: usize, extra_queue: f64, max_extra_queue: f64) -> f64 {
    if blocks == 0 || extra_queue > max_extra_queue {
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
    fn an_endpoint_far_busier_than_the_others_earns_no_affinity() {
        assert_eq!(score(10, 10, 8.0, 8.0), 1.0, "at the limit still counts");
        assert_eq!(score(10, 10, 9.0, 8.0), 0.0);
    }
}
