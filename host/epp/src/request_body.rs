//! What the picker changes in an OpenAI request body before it goes on:
//! the model, when the pool serves it under another name; and, for a
//! streamed completion or chat completion that did not ask for the usage,
//! `stream_options.include_usage`, so that the per-model metrics can count
//! tokens (the response then loses the usage chunk the client did not ask
//! for, `response_body`).

use serde_json::Value;

/// What the picker needs to know of a request body.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestFacts {
    pub model: String,
    pub stream: bool,
    /// A completion or chat completion (`prompt` or `messages`): the APIs
    /// with `stream_options`.
    pub has_stream_options: bool,
    /// `stream_options.include_usage` is set.
    pub include_usage: bool,
}

impl RequestFacts {
    pub fn of(json: &Value) -> Option<RequestFacts> {
        let model = json.get("model")?.as_str()?.to_string();
        Some(RequestFacts {
            model,
            stream: json.get("stream").and_then(Value::as_bool).unwrap_or(false),
            has_stream_options: json.get("prompt").is_some() || json.get("messages").is_some(),
            include_usage: json
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The usage must be asked for on the client's behalf (and its chunk
    /// taken out of the response).
    pub fn needs_usage_asked(&self) -> bool {
        self.stream && self.has_stream_options && !self.include_usage
    }
}

/// The body to send on instead of `raw` (parsed: `json`), or None when it
/// goes on as it is: with `served` as its model when given, and
/// `stream_options.include_usage` when `ask_usage`.
pub fn prepare(raw: &[u8], json: &Value, served: Option<&str>, ask_usage: bool) -> Option<Vec<u8>> {
    match (served, ask_usage) {
        (None, false) => None,
        // The common case, a streamed chat that did not ask for the usage,
        // without parsing again or writing the (possibly long) prompt anew:
        // the option goes first in the object.
        (None, true) if json.get("stream_options").is_none() => {
            let start = raw.iter().position(|&b| b == b'{')?;
            let mut out = Vec::with_capacity(raw.len() + 48);
            out.extend_from_slice(&raw[..=start]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&raw[start + 1..]);
            Some(out)
        }
        _ => {
            let mut json = json.clone();
            let object = json.as_object_mut()?;
            if let Some(model) = served {
                object.insert("model".into(), Value::String(model.to_string()));
            }
            if ask_usage {
                let options = object
                    .entry("stream_options")
                    .or_insert_with(|| Value::Object(Default::default()));
                if !options.is_object() {
                    *options = Value::Object(Default::default());
                }
                options
                    .as_object_mut()?
                    .insert("include_usage".into(), Value::Bool(true));
            }
            serde_json::to_vec(&json).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(body: &str) -> RequestFacts {
        RequestFacts::of(&serde_json::from_str(body).unwrap()).unwrap()
    }

    fn prepared(body: &str, served: Option<&str>, ask: bool) -> Option<Value> {
        let json: Value = serde_json::from_str(body).unwrap();
        prepare(body.as_bytes(), &json, served, ask)
            .map(|b| serde_json::from_slice(&b).expect("still JSON"))
    }

    #[test]
    fn only_streamed_completions_and_chats_without_the_usage_need_it_asked() {
        assert!(facts(r#"{"model": "m", "messages": [], "stream": true}"#).needs_usage_asked());
        assert!(facts(r#"{"model": "m", "prompt": "x", "stream": true}"#).needs_usage_asked());
        assert!(
            !facts(r#"{"model": "m", "prompt": "x", "stream": true, "stream_options": {"include_usage": true}}"#)
                .needs_usage_asked()
        );
        assert!(!facts(r#"{"model": "m", "prompt": "x"}"#).needs_usage_asked());
        assert!(!facts(r#"{"model": "m", "input": "x", "stream": true}"#).needs_usage_asked());
    }

    #[test]
    fn the_body_changes_only_as_asked_and_stays_json() {
        let body = r#" {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": true}"#;
        assert_eq!(prepared(body, None, false), None);
        let asked = prepared(body, None, true).unwrap();
        assert_eq!(asked["stream_options"]["include_usage"], true);
        assert_eq!(asked["messages"][0]["content"], "hi");
        let renamed = prepared(body, Some("llama-3-70b"), true).unwrap();
        assert_eq!(renamed["model"], "llama-3-70b");
        assert_eq!(renamed["stream_options"]["include_usage"], true);
        // Other stream options are kept.
        let with_options = r#"{"model": "m", "prompt": "x", "stream": true, "stream_options": {"continuous_usage_stats": true}}"#;
        let asked = prepared(with_options, None, true).unwrap();
        assert_eq!(asked["stream_options"]["continuous_usage_stats"], true);
        assert_eq!(asked["stream_options"]["include_usage"], true);
    }
}
