//! The scorers. Each rates one candidate endpoint for one request from 0
//! (worst) to 1 (best), from what the picker knows: the endpoint's last
//! scrape, what the picker sent it lately, and the request. The scheduler
//! weighs them ([`crate::scheduler::Weights`]); the highest total wins.

pub mod kv_cache;
pub mod lora;
pub mod prefix;
pub mod queue;
pub mod running;

/// A scorer, named as in the debug log, the `scorer` label of
/// `infergate_epp_picks_decided_total` and the weight flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scorer {
    Queue,
    KvCache,
    Running,
    Prefix,
    Lora,
}

impl Scorer {
    pub const ALL: [Scorer; 5] = [
        Scorer::Queue,
        Scorer::KvCache,
        Scorer::Running,
        Scorer::Prefix,
        Scorer::Lora,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scorer::Queue => "queue",
            Scorer::KvCache => "kv_cache",
            Scorer::Running => "running",
            Scorer::Prefix => "prefix",
            Scorer::Lora => "lora",
        }
    }
}

/// Every scorer's score of one candidate, indexed like [`Scorer::ALL`].
pub type Scores = [f64; 5];

/// `1 - (value - min) / max(max - min, spread)` among the candidates: 1 for
/// the lowest value, 0 for the highest when the values are at least
/// `spread` apart, 1 for all when they are equal. Below `spread` a difference counts
/// in proportion: one request more in a queue is a small difference, not
/// the whole of the scorer's weight (which would outweigh a cached prefix
/// whenever a pick was sent and not yet scraped).
pub fn lower_is_better(value: f64, min: f64, max: f64, spread: f64) -> f64 {
    if max > min {
        (1.0 - (value - min) / (max - min).max(spread)).clamp(0.0, 1.0)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_value_scores_one_the_highest_zero_and_equals_one() {
        assert_eq!(lower_is_better(2.0, 2.0, 6.0, 4.0), 1.0);
        assert_eq!(lower_is_better(6.0, 2.0, 6.0, 4.0), 0.0);
        assert_eq!(lower_is_better(4.0, 2.0, 6.0, 4.0), 0.5);
        assert_eq!(lower_is_better(3.0, 3.0, 3.0, 4.0), 1.0);
        // Closer than the spread: in proportion.
        assert_eq!(lower_is_better(1.0, 0.0, 1.0, 4.0), 0.75);
    }

    #[test]
    fn scorer_names_are_distinct_label_values() {
        let names: std::collections::BTreeSet<_> = Scorer::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), Scorer::ALL.len());
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }
}
