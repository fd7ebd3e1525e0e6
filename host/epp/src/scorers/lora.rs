//! LoRA affinity. A request naming an adapter (its `model` is not one of the
//! server's base models) is best served where the adapter is already loaded:
//! loading one costs time and may unload another.
//!
//! What a server reports (`vllm:lora_requests_info`: `running_lora_adapters`,
//! `waiting_lora_adapters`, `max_lora`) names only the adapters of requests
//! running or waiting now; an adapter stays loaded after its last request
//! ends, until `max_lora` others have been used since. So the picker also
//! remembers which adapters it sent where, most recent first: a server is
//! taken to hold its running adapters and then the most recent of those
//! sent there, up to its `max_lora`, as its least-recently-used unloading
//! would leave them.
//!
//! Scores: 1 where the adapter is loaded (running, or remembered as above),
//! 0.8 where there is room to load it without unloading another, 0.6 where
//! it is waiting to be loaded, else 0; and 0 wherever the queue is longer
//! than the shortest candidate's by more than `max_extra_queue` (as for
//! prefix affinity: each adapter has a home, and an adapter busier than its
//! home can serve spills over to the least loaded server instead of
//! queueing there without bound). Requests for a base model, or naming no
//! model, score 1 everywhere: this scorer does not decide them.

/// What a server reports of its adapters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Adapters {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
    /// How many adapters it can hold at once.
    pub max: usize,
}

impl Adapters {
    /// The adapters the server most likely holds: those running, then the
    /// most recently `sent` there, at most `max` in all.
    fn likely_loaded<'a>(&'a self, sent: &'a [String]) -> Vec<&'a String> {
        let mut loaded: Vec<&String> = Vec::with_capacity(self.max);
        for adapter in self.running.iter().chain(sent) {
            if !loaded.contains(&adapter) {
                if loaded.len() >= self.max.max(self.running.len()) {
                    break;
                }
                loaded.push(adapter);
            }
        }
        loaded
    }
}

/// `model`: the request's; `base_models`: the models the server serves
/// (the `model_name` labels of its metrics); `adapters`: its adapter report,
/// if it sent one; `sent`: the adapters the picker sent there, most recent
/// first; `extra_queue`: how many more requests are queued there than at
/// the candidate with the shortest queue.
pub fn score(
    model: Option<&str>,
    base_models: &[String],
    adapters: Option<&Adapters>,
    sent: &[String],
    extra_queue: f64,
    max_extra_queue: f64,
) -> f64 {
    let Some(model) = model else { return 1.0 };
    if base_models.iter().any(|m| m == model) {
        return 1.0;
    }
    let Some(adapters) = adapters else { return 0.0 };
    if extra_queue > max_extra_queue {
        return 0.0;
    }
    let loaded = adapters.likely_loaded(sent);
    let mut held = loaded.clone();
    for adapter in &adapters.waiting {
        if !held.contains(&adapter) {
            held.push(adapter);
        }
    }
    if loaded.iter().any(|a| *a == model) {
        1.0
    } else if held.len() < adapters.max {
        0.8
    } else if adapters.waiting.iter().any(|a| a == model) {
        0.6
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapters(running: &[&str], waiting: &[&str], max: usize) -> Adapters {
        Adapters {
            running: running.iter().map(|s| s.to_string()).collect(),
            waiting: waiting.iter().map(|s| s.to_string()).collect(),
            max,
        }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_adapter_goes_where_it_is_loaded_then_where_there_is_room() {
        let base = vec!["llama".to_string()];
        let full_with_it = adapters(&["sql", "chat"], &[], 2);
        let room = adapters(&["chat"], &[], 2);
        let full_without = adapters(&["chat", "code"], &[], 2);
        let full_waiting = adapters(&["chat", "code"], &["sql"], 2);
        let sql = Some("sql");
        assert_eq!(score(sql, &base, Some(&full_with_it), &[], 0.0, 4.0), 1.0);
        assert_eq!(score(sql, &base, Some(&room), &[], 0.0, 4.0), 0.8);
        assert_eq!(score(sql, &base, Some(&full_waiting), &[], 0.0, 4.0), 0.6);
        assert_eq!(score(sql, &base, Some(&full_without), &[], 0.0, 4.0), 0.0);
        assert_eq!(
            score(sql, &base, None, &[], 0.0, 4.0),
            0.0,
            "no adapter report"
        );
    }

    #[test]
    fn an_adapter_sent_lately_is_taken_as_still_loaded() {
        let base = vec!["llama".to_string()];
        let idle = adapters(&[], &[], 2);
        let sql = Some("sql");
        // Nothing running: the report alone says there is room everywhere.
        assert_eq!(score(sql, &base, Some(&idle), &[], 0.0, 4.0), 0.8);
        // sql went there and finished: still loaded.
        assert_eq!(
            score(sql, &base, Some(&idle), &names(&["sql"]), 0.0, 4.0),
            1.0
        );
        assert_eq!(
            score(sql, &base, Some(&idle), &names(&["chat", "sql"]), 0.0, 4.0),
            1.0
        );
        // Two others used since: sql was unloaded, and no room is left.
        assert_eq!(
            score(
                sql,
                &base,
                Some(&idle),
                &names(&["chat", "code", "sql"]),
                0.0,
                4.0
            ),
            0.0
        );
        // A running adapter is loaded, and counts before those remembered.
        let busy = adapters(&["code"], &[], 2);
        assert_eq!(
            score(sql, &base, Some(&busy), &names(&["chat", "sql"]), 0.0, 4.0),
            0.0
        );
        assert_eq!(
            score(sql, &base, Some(&busy), &names(&["sql"]), 0.0, 4.0),
            1.0
        );
        // One remembered, one slot free.
        assert_eq!(
            score(Some("x"), &base, Some(&idle), &names(&["sql"]), 0.0, 4.0),
            0.8
        );
    }

    #[test]
    fn a_home_far_busier_than_the_others_earns_no_affinity() {
        let base = vec!["llama".to_string()];
        let home = adapters(&["sql"], &[], 2);
        let sql = Some("sql");
        assert_eq!(score(sql, &base, Some(&home), &[], 4.0, 4.0), 1.0);
        assert_eq!(score(sql, &base, Some(&home), &[], 5.0, 4.0), 0.0);
        assert_eq!(
            score(Some("llama"), &base, Some(&home), &[], 9.0, 4.0),
            1.0,
            "base-model requests are not this scorer's business"
        );
    }

    #[test]
    fn base_model_requests_are_not_decided_here() {
        let base = vec!["llama".to_string()];
        let full = adapters(&["chat", "code"], &[], 2);
        assert_eq!(score(Some("llama"), &base, Some(&full), &[], 0.0, 4.0), 1.0);
        assert_eq!(score(None, &base, Some(&full), &[], 0.0, 4.0), 1.0);
    }
}
