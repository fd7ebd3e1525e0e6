//! LoRA affinity. A request naming an adapter (its `model` is not one of the
//! server's base models) is best served where the adapter is already loaded:
//! loading one costs time and may unload another. From the server's
//! `vllm:lora_requests_info` (`running_lora_adapters`,
//! `waiting_lora_adapters`, `max_lora`): 1 when the adapter is running
//! there, 0.8 when the server has room to load it, 0.6 when it is waiting to
//! be loaded there, else 0. Requests for a base model, or naming no model,
//! score 1 everywhere: this scorer does not decide them.

/// What a server reports of its adapters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Adapters {
    pub running: Vec<String>,
    pub waiting: Vec<String>,
    /// How many adapters it can hold at once.
    pub max: usize,
}

impl Adapters {
    fn loaded(&self) -> usize {
        let mut all: Vec<&String> = self.running.iter().chain(&self.waiting).collect();
        all.sort();
        all.dedup();
        all.len()
    }
}

/// `model`: the request's; `base_models`: the models the server serves
/// (the `model_name` labels of its metrics); `adapters`: its adapter report,
/// if it sent one.
pub fn score(model: Option<&str>, base_models: &[String], adapters: Option<&Adapters>) -> f64 {
    let Some(model) = model else { return 1.0 };
    if base_models.iter().any(|m| m == model) {
        return 1.0;
    }
    let Some(adapters) = adapters else { return 0.0 };
    if adapters.running.iter().any(|a| a == model) {
        1.0
    } else if adapters.loaded() < adapters.max {
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

    #[test]
    fn an_adapter_goes_where_it_is_loaded_then_where_there_is_room() {
        let base = vec!["llama".to_string()];
        let full_with_it = adapters(&["sql", "chat"], &[], 2);
        let room = adapters(&["chat"], &[], 2);
        let full_without = adapters(&["chat", "code"], &[], 2);
        let full_waiting = adapters(&["chat", "code"], &["sql"], 2);
        let sql = Some("sql");
        assert_eq!(score(sql, &base, Some(&full_with_it)), 1.0);
        assert_eq!(score(sql, &base, Some(&room)), 0.8);
        assert_eq!(score(sql, &base, Some(&full_waiting)), 0.6);
        assert_eq!(score(sql, &base, Some(&full_without)), 0.0);
        assert_eq!(score(sql, &base, None), 0.0, "no adapter report");
    }

    #[test]
    fn base_model_requests_are_not_decided_here() {
        let base = vec!["llama".to_string()];
        let full = adapters(&["chat", "code"], &[], 2);
        assert_eq!(score(Some("llama"), &base, Some(&full)), 1.0);
        assert_eq!(score(None, &base, Some(&full)), 1.0);
    }
}
